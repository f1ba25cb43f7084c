#!/bin/sh
# A local 3-node tally cluster in two regions on loopback:
#   node1 (east)  http://127.0.0.1:8081  cluster port 127.0.0.1:7101
#   node2 (east)  http://127.0.0.1:8082  cluster port 127.0.0.1:7102
#   node3 (west)  http://127.0.0.1:8083  cluster port 127.0.0.1:7103
# Each node runs an embedded NATS server (clients nats://127.0.0.1:4231-4233,
# routes 127.0.0.1:6231-6233); the three form one NATS cluster and the
# TALLY_EVENTS stream has three replicas. NATS requires authentication:
# resource servers connect with a confidential client's id and secret.
#
#   deploy/local/cluster.sh start   build, create CA, certificates and shared
#                                   secrets on first start, start the nodes,
#                                   wait until all are ready, print exports
#   deploy/local/cluster.sh stop    stop the nodes (state is kept)
#   deploy/local/cluster.sh clean   stop and delete the cluster directory
#
# State, logs and pids live in $TALLY_CLUSTER_DIR (default
# ${TMPDIR:-/tmp}/tally-cluster). Run it from the repository root (make
# cluster does).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
dir=${TALLY_CLUSTER_DIR:-${TMPDIR:-/tmp}/tally-cluster}
bin=$dir/tally
nodes="1 2 3"
go=${GO:-go}

running() {
	[ -f "$dir/node$1.pid" ] && kill -0 "$(cat "$dir/node$1.pid")" 2>/dev/null
}

stop() {
	for n in $nodes; do
		if running "$n"; then
			kill -TERM "$(cat "$dir/node$n.pid")"
		fi
	done
	for n in $nodes; do
		i=0
		while running "$n"; do
			i=$((i + 1))
			if [ "$i" -gt 150 ]; then
				echo "node$n did not stop in 15s; killing it" >&2
				kill -KILL "$(cat "$dir/node$n.pid")" 2>/dev/null || true
				break
			fi
			sleep 0.1
		done
		rm -f "$dir/node$n.pid"
	done
}

secret() { # file: 32 random bytes as base64url text, mode 0600, kept if present
	if [ ! -s "$1" ]; then
		(umask 077 && head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$1")
	fi
}

start() {
	for n in $nodes; do
		if running "$n"; then
			echo "node$n is already running (pid $(cat "$dir/node$n.pid")); run make cluster-stop first" >&2
			exit 1
		fi
	done
	mkdir -p "$dir"
	"$go" build -o "$bin" ./cmd/tally
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
	for n in $nodes; do
		mkdir -p "$dir/node$n/data"
		"$bin" serve --config "$here/node$n.json" \
			--data-dir "$dir/node$n/data" --tls-dir "$dir/node$n/tls" \
			--kek-file "$dir/kek" --admin-token-file "$dir/admin-token" \
			>>"$dir/node$n.log" 2>&1 &
		echo $! >"$dir/node$n.pid"
	done
	i=0
	for n in $nodes; do
		until curl -fsS "http://127.0.0.1:808$n/readyz" >/dev/null 2>&1; do
			i=$((i + 1))
			if [ "$i" -gt 600 ] || ! running "$n"; then
				echo "node$n is not ready; see $dir/node$n.log" >&2
				tail -n 20 "$dir/node$n.log" >&2 || true
				stop
				exit 1
			fi
			sleep 0.1
		done
	done
	echo "tally cluster ready: 3 nodes (east: node1 node2, west: node3); logs and pids in $dir"
	echo "export TALLY_SERVER=http://127.0.0.1:8081 TALLY_ADMIN_TOKEN=$(cat "$dir/admin-token")"
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
