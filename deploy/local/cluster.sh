#!/bin/sh
# A local 3-node tally cluster in two regions on loopback, behind one issuer:
#   front door    http://127.0.0.1:8080  the cluster's one issuer URL (tally front)
#   node1 (east)  http://127.0.0.1:8081  cluster port 127.0.0.1:7101
#   node2 (east)  http://127.0.0.1:8082  cluster port 127.0.0.1:7102
#   node3 (west)  http://127.0.0.1:8083  cluster port 127.0.0.1:7103
# Each node runs an embedded NATS server (clients nats://127.0.0.1:4231-4233,
# routes 127.0.0.1:6231-6233); the three form one NATS cluster and the
# TALLY_EVENTS stream has three replicas. NATS requires authentication:
# resource servers connect with a confidential client's id and secret.
#
# Every node runs with --issuer http://127.0.0.1:8080: a token any node
# issued is honoured by every node, at its own port or through the front
# door, which spreads requests over the ready nodes (the local stand-in for
# GeoDNS or a load balancer).
#
#   deploy/local/cluster.sh start   build, create CA, certificates and shared
#                                   secrets on first start, start the nodes and
#                                   the front door, wait until all are ready,
#                                   print exports
#   deploy/local/cluster.sh stop    stop the front door and the nodes (state is
#                                   kept)
#   deploy/local/cluster.sh clean   stop and delete the cluster directory
#
# TALLY_CLUSTER_BIN=PATH starts the cluster with that tally binary instead
# of building one (e.g. to compare two builds).
#
# State, logs and pids live in $TALLY_CLUSTER_DIR (default
# ${TMPDIR:-/tmp}/tally-cluster). TALLY_CLUSTER_PORT_OFFSET=N moves every
# port above by N (e.g. 10000: front door on 18080, nodes on 18081-18083)
# when the defaults are taken. Run it from the repository root (make
# cluster does).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
dir=${TALLY_CLUSTER_DIR:-${TMPDIR:-/tmp}/tally-cluster}
off=${TALLY_CLUSTER_PORT_OFFSET:-0}
bin=$dir/tally
nodes="1 2 3"
go=${GO:-go}
front_port=$((8080 + off))
issuer=http://127.0.0.1:$front_port

running() { # name: node1, node2, node3 or front
	[ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null
}

stop_one() {
	if running "$1"; then
		kill -TERM "$(cat "$dir/$1.pid")"
	fi
}

wait_stopped() {
	i=0
	while running "$1"; do
		i=$((i + 1))
		if [ "$i" -gt 150 ]; then
			echo "$1 did not stop in 15s; killing it" >&2
			kill -KILL "$(cat "$dir/$1.pid")" 2>/dev/null || true
			break
		fi
		sleep 0.1
	done
	rm -f "$dir/$1.pid"
}

stop() {
	stop_one front
	wait_stopped front
	for n in $nodes; do
		stop_one "node$n"
	done
	for n in $nodes; do
		wait_stopped "node$n"
	done
}

secret() { # file: 32 random bytes as base64url text, mode 0600, kept if present
	if [ ! -s "$1" ]; then
		(umask 077 && head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$1")
	fi
}

# shift_ports FILE: FILE with every 127.0.0.1:PORT moved by the offset.
shift_ports() {
	awk -v off="$off" '{
		out = ""; s = $0
		while (match(s, /127\.0\.0\.1:[0-9]+/)) {
			out = out substr(s, 1, RSTART - 1) "127.0.0.1:" (substr(s, RSTART + 10, RLENGTH - 10) + off)
			s = substr(s, RSTART + RLENGTH)
		}
		print out s
	}' "$1"
}

# wait_ready NAME URL [PATH]: poll URL/PATH (default /readyz) until it
# answers 200.
wait_ready() {
	i=0
	until curl -fsS "$2${3:-/readyz}" >/dev/null 2>&1; do
		i=$((i + 1))
		if [ "$i" -gt 600 ] || ! running "$1"; then
			echo "$1 is not ready; see $dir/$1.log" >&2
			tail -n 20 "$dir/$1.log" >&2 || true
			stop
			exit 1
		fi
		sleep 0.1
	done
}

start() {
	for p in front $(for n in $nodes; do echo "node$n"; done); do
		if running "$p"; then
			echo "$p is already running (pid $(cat "$dir/$p.pid")); run make cluster-stop first" >&2
			exit 1
		fi
	done
	mkdir -p "$dir"
	[ -n "${TALLY_CLUSTER_BIN:-}" ] && cp "$TALLY_CLUSTER_BIN" "$bin" || "$go" build -o "$bin" ./cmd/tally
	if [ ! -f "$dir/ca/ca-key.pem" ]; then
		"$bin" admin cluster ca init --out "$dir/ca" >/dev/null
	fi
	for n in $nodes; do
		if [ ! -f "$dir/node$n/tls/node.pem" ]; then
			"$bin" admin cluster node-cert --ca "$dir/ca" --node-id "node$n" --ip 127.0.0.1 --out "$dir/node$n/tls" >/dev/null
		fi
	done
	secret "$dir/kek"
	secret "$dir/admin-token"
	backends=""
	for n in $nodes; do
		mkdir -p "$dir/node$n/data"
		shift_ports "$here/node$n.json" >"$dir/node$n.json"
		"$bin" serve --config "$dir/node$n.json" --issuer "$issuer" \
			--data-dir "$dir/node$n/data" --tls-dir "$dir/node$n/tls" \
			--kek-file "$dir/kek" --admin-token-file "$dir/admin-token" \
			>>"$dir/node$n.log" 2>&1 &
		echo $! >"$dir/node$n.pid"
		backends="$backends --backend http://127.0.0.1:$((8080 + off + n))"
	done
	# shellcheck disable=SC2086 # one --backend flag per node
	"$bin" front --listen "127.0.0.1:$front_port" $backends >>"$dir/front.log" 2>&1 &
	echo $! >"$dir/front.pid"
	for n in $nodes; do
		wait_ready "node$n" "http://127.0.0.1:$((8080 + off + n))"
	done
	wait_ready front "$issuer"
	# The leader creates the default tenant once elected: wait until every
	# node serves it.
	for n in $nodes; do
		wait_ready "node$n" "http://127.0.0.1:$((8080 + off + n))" /t/default/.well-known/openid-configuration
	done
	echo "tally cluster ready: 3 nodes (east: node1 node2, west: node3) behind the front door $issuer; logs and pids in $dir"
	echo "export TALLY_SERVER=$issuer TALLY_ADMIN_TOKEN=$(cat "$dir/admin-token")"
	echo "export TALLY_ISSUER_BASE=$issuer"
	echo "export TALLY_NATS_URL=nats://127.0.0.1:$((4231 + off)),nats://127.0.0.1:$((4232 + off)),nats://127.0.0.1:$((4233 + off))"
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
clean)
	stop
	rm -rf "$dir"
	;;
*)
	echo "usage: $0 start|stop|clean" >&2
	exit 2
	;;
esac
