#!/bin/sh
# The three-region compose cluster (deploy/compose/docker-compose.yml).
#
#   deploy/compose/cluster.sh up     start it (images from `make image`), wait
#                                    until every node is ready, create the
#                                    orders-api client and start orders-api,
#                                    print the exports
#   deploy/compose/cluster.sh down   remove containers, networks and volumes
#   deploy/compose/cluster.sh ps     what runs
#
# make compose-up / make compose-down run it from the repository root. The
# admin token and the orders-api client are copied to $TALLY_COMPOSE_DIR
# (default ${TMPDIR:-/tmp}/tally-compose), mode 0600. Works with
# docker-compose v1.29 and with the `docker compose` plugin.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
state=${TALLY_COMPOSE_DIR:-${TMPDIR:-/tmp}/tally-compose}
project=${TALLY_COMPOSE_PROJECT:-tally}
tally=${TALLY_BIN:-$root/bin/tally-linux}
files="-f $here/docker-compose.yml"
for f in ${TALLY_COMPOSE_OVERRIDE:-}; do files="$files -f $f"; done

if docker compose version >/dev/null 2>&1; then
	compose() { docker compose -p "$project" $files "$@"; }
else
	compose() { docker-compose -p "$project" $files "$@"; }
fi

nodes="node1 node2 node3"
port() { # node → host port
	case $1 in node1) echo 8081 ;; node2) echo 8082 ;; node3) echo 8083 ;; esac
}

# wait_http URL SECONDS: until URL answers 200.
wait_http() {
	i=0
	until curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; do
		i=$((i + 1))
		if [ "$i" -gt $(($2 * 5)) ]; then
			return 1
		fi
		sleep 0.2
	done
}

fail() {
	echo "compose cluster: $*" >&2
	compose ps >&2 || true
	for c in tally-init $nodes front orders-api; do
		echo "--- $c (last lines)" >&2
		docker logs --tail 15 "$c" >&2 2>&1 || true
	done
	exit 1
}

field() { # json key → value of "key": "value" (no jq needed)
	sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p" "$1" | head -n 1
}

up() {
	mkdir -p "$state"
	chmod 700 "$state"
	compose up -d --remove-orphans >&2
	for n in $nodes; do
		wait_http "http://127.0.0.1:$(port "$n")/readyz" 120 || fail "$n is not ready after 120s"
	done
	wait_http "http://127.0.0.1:8080/t/default/.well-known/openid-configuration" 60 || fail "the front door does not answer"
	(umask 077 && docker cp tally-init:/data/admin-token "$state/admin-token") || fail "cannot copy the admin token"
	token=$(cat "$state/admin-token")

	# The resource server's client: created once, kept while the volumes live.
	orders=$state/orders-api.json
	if [ ! -s "$orders" ] || ! curl -fsS -o /dev/null -u "$(field "$orders" client_id):$(field "$orders" client_secret)" \
		-d grant_type=client_credentials http://127.0.0.1:8081/t/default/oauth2/token; then
		(umask 077 && TALLY_SERVER=http://127.0.0.1:8081 TALLY_ADMIN_TOKEN=$token "$tally" admin client create \
			--tenant default --name orders-api --scope read:orders --audience https://orders.example \
			--output json >"$orders") || fail "cannot create the orders-api client"
	fi
	ORDERS_CLIENT_ID=$(field "$orders" client_id) ORDERS_CLIENT_SECRET=$(field "$orders" client_secret) \
		compose --profile rs up -d orders-api >&2
	wait_http http://127.0.0.1:9090/healthz 60 || fail "orders-api is not healthy"
	# Ready means the event path works end to end (the replicated stream
	# exists and orders-api follows it): a token revoked now is refused.
	id=$(field "$orders" client_id)
	sec=$(field "$orders" client_secret)
	tok=$(curl -fsS -u "$id:$sec" -d grant_type=client_credentials http://127.0.0.1:8081/t/default/oauth2/token |
		sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
	[ -n "$tok" ] || fail "no token for the orders-api client"
	curl -fsS -o /dev/null -u "$id:$sec" -d "token=$tok" http://127.0.0.1:8081/t/default/oauth2/revoke || fail "cannot revoke a token"
	i=0
	until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" http://127.0.0.1:9090/orders)" = 401 ]; do
		i=$((i + 1))
		[ "$i" -le 300 ] || fail "orders-api does not follow revocations after 60s"
		sleep 0.2
	done

	echo "tally compose cluster ready: node1 (east) node2 (central) node3 (west), front door http://localhost:8080, orders-api http://127.0.0.1:9090" >&2
	echo "export TALLY_SERVER=http://127.0.0.1:8080 TALLY_ADMIN_TOKEN=$token TALLY_ISSUER_BASE=http://localhost:8080"
	echo "export TALLY_NODES=\"http://127.0.0.1:8081 http://127.0.0.1:8082 http://127.0.0.1:8083\""
}

down() {
	compose --profile rs down -v --remove-orphans >&2
	rm -rf "$state"
}

case "${1:-up}" in
up) up ;;
down) down ;;
ps) compose --profile rs ps ;;
*)
	echo "usage: $0 up|down|ps" >&2
	exit 2
	;;
esac
