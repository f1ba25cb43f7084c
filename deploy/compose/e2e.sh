#!/bin/sh
# End-to-end check of the compose cluster, as a user would run it
# (make e2e; needs Docker and the images of `make image`):
#
#   1. start the three-region cluster (cluster.sh up)
#   2. a token issued in east (node1) introspects active in west (node3) and
#      at orders-api; revoked in central (node2), it is inactive on every
#      node and refused by orders-api within 1 s
#   3. tally drill failover, the leader killed with docker kill: PASS, no
#      client-credentials error on the survivors
#   4. tally drill partition, node3 disconnected from its region network:
#      PASS (node3 fails closed within max-stale, the others keep writing,
#      every node converges after the heal)
#   5. tally drill rolling-restart (docker stop/start, followers first):
#      PASS, no client-credentials error, no lost acknowledged write
#   throughout 3-5: every 2 s a token is revoked and orders-api must
#   refuse it within 1 s (deploy/compose/rscheck)
#
# E2E_RS_MAX_MS (default 1000) is the bound on orders-api's refusal of a
# revoked token, E2E_RS_INTERVAL (default 2s) the pause between two
# revocation rounds; E2E_ROLLING_RESTARTS (default 1) repeats the rolling
# restart (E2E_RS_INTERVAL=300ms E2E_ROLLING_RESTARTS=3 hunts rare delays). Everything is torn down at the end, also on failure (E2E_KEEP=1 keeps the
# cluster). Reports (JSON and HTML) go to $E2E_OUT (default
# ${TMPDIR:-/tmp}/tally-e2e).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${E2E_OUT:-${TMPDIR:-/tmp}/tally-e2e}
tally=${TALLY_BIN:-$root/bin/tally-linux}
rscheck=${RSCHECK_BIN:-$root/bin/rscheck}
export TALLY_COMPOSE_DIR=${TALLY_COMPOSE_DIR:-$out/compose}
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.html "$out"/*.log "$out"/checker "$out"/propagation "$out"/exports
start=$(date +%s)

log() { printf '%s e2e: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

checker_pid=
teardown() {
	code=$?
	if [ -n "$checker_pid" ]; then
		kill "$checker_pid" 2>/dev/null || true
	fi
	if [ "$code" -ne 0 ]; then
		log "FAILED; node logs:"
		for c in node1 node2 node3 front orders-api; do
			echo "--- $c" >&2
			docker logs --tail 20 "$c" >&2 2>&1 || true
		done
	fi
	if [ "${E2E_KEEP:-}" = 1 ]; then
		log "cluster kept (E2E_KEEP=1); make compose-down removes it"
	else
		"$here/cluster.sh" down >/dev/null 2>&1 || true
	fi
	log "done in $(($(date +%s) - start))s, exit $code; reports in $out"
	exit "$code"
}
trap teardown EXIT
trap 'exit 130' INT TERM

fail() {
	log "FAIL: $*"
	exit 1
}

# 1. The cluster.
log "starting the compose cluster"
"$here/cluster.sh" down >/dev/null 2>&1 || true
"$here/cluster.sh" up >"$out/exports"
. "$out/exports"
export TALLY_SERVER TALLY_ADMIN_TOKEN TALLY_NODES
orders=$TALLY_COMPOSE_DIR/orders-api.json
field() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" "$orders" | head -n 1; }
id=$(field client_id)
secret=$(field client_secret)
node_url() { case $1 in node1) echo http://127.0.0.1:8081 ;; node2) echo http://127.0.0.1:8082 ;; node3) echo http://127.0.0.1:8083 ;; esac; }

# 2. One issuer across regions.
# (rscheck --propagation: the four waits run at once, each timed from the
# end of the revocation's response, over keep-alive connections.)
log "token from east (node1), introspected in west (node3); revoked in central (node2): inactive everywhere and refused by orders-api within 1 s"
RSCHECK_CLIENT_SECRET=$secret "$rscheck" --propagation --client-id "$id" --rs http://127.0.0.1:9090/orders \
	--node node1="$(node_url node1)" --node node2="$(node_url node2)" --node node3="$(node_url node3)" \
	--max 1s >"$out/propagation" 2>&1 || {
	cat "$out/propagation" >&2
	fail "the revocation did not reach every node and orders-api within 1 s"
}
sed 's/^/  /' "$out/propagation" >&2

# Throughout the drills: revoke a token every ~2 s through the next node;
# orders-api must refuse it within E2E_RS_MAX_MS (deploy/compose/rscheck:
# from the end of the revocation's response to the end of orders-api's
# first 401, polled every 10 ms over one keep-alive connection, so no
# process start-up is counted). A round whose token or revocation could
# not be obtained (its node just died) is skipped, not judged.
: >"$out/checker"
RSCHECK_CLIENT_SECRET=$secret "$rscheck" --client-id "$id" --rs http://127.0.0.1:9090/orders \
	--node node1="$(node_url node1)" --node node2="$(node_url node2)" --node node3="$(node_url node3)" \
	--max "${E2E_RS_MAX_MS:-1000}ms" --interval "${E2E_RS_INTERVAL:-2s}" >"$out/checker" 2>&1 &
checker_pid=$!

. "$root/deploy/drill/compose.env"
drill() { # name, args… : the drill must PASS with no client-credentials error
	name=$1
	shift
	log "tally drill $name $*"
	if ! "$tally" drill "$@" --server "$TALLY_SERVER" --max-stale "${TALLY_MAX_STALE:-5s}" --output json --report "$out/$name.html" >"$out/$name.json" 2>"$out/$name.log"; then
		cat "$out/$name.log" >&2
		cat "$out/$name.json" >&2
		fail "drill $name did not pass"
	fi
	grep -q '"pass": true' "$out/$name.json" || fail "drill $name: no PASS in its report"
	grep -q '"issue_errors": {}' "$out/$name.json" || fail "drill $name: client-credentials errors on serving nodes"
	sed -n 's/.*"\(write_window_ms\|recovery_ms\|fail_closed_after_ms\|converged_ms\|writes_acked\|issued\)": \([0-9.]*\).*/  \1=\2/p' "$out/$name.json" | tr '\n' ' ' >&2
	echo >&2
}

# 3-5. The drills.
drill failover failover --kill-cmd "$KILL_CMD" --restart-cmd "$RESTART_CMD"
drill partition partition --isolate node3 --fault-for 8s --after 5s \
	--partition-cmd "$PARTITION_CMD" --heal-cmd "$HEAL_CMD"
for r in $(seq "${E2E_ROLLING_RESTARTS:-1}"); do
	drill rolling-restart rolling-restart --kill-cmd "$STOP_CMD" --restart-cmd "$RESTART_CMD" --fault-for 2s
done

kill "$checker_pid" 2>/dev/null || true
wait "$checker_pid" 2>/dev/null || true
checker_pid=
ok=$(grep -c '^ok' "$out/checker" || true)
slowest=$(sed -n 's/^ok round .* \([0-9][0-9]*\) ms$/\1/p' "$out/checker" | sort -n | tail -n 1)
log "revocation checker: $ok rounds refused within ${E2E_RS_MAX_MS:-1000} ms (slowest ${slowest:-none} ms), $(grep -c '^skip' "$out/checker" || true) skipped"
if grep -q '^FAIL' "$out/checker"; then
	grep '^FAIL' "$out/checker" >&2
	fail "orders-api accepted a revoked token for more than ${E2E_RS_MAX_MS:-1000} ms"
fi
[ "$ok" -gt 0 ] || fail "the revocation checker completed no round"
log "PASS"
