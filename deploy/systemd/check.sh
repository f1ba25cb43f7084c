#!/usr/bin/env bash
# make systemd-check: verify the unit with systemd-analyze (syntax, the
# binary it starts, the exposure score of its sandbox), and check that the
# example settings are accepted by `tally serve --check-config` with the
# unit's own environment. Skips (exit 0) where systemd-analyze is absent.
set -euo pipefail
cd "$(dirname "$0")"
GO=${GO:-go}
if ! command -v systemd-analyze >/dev/null; then
  echo "systemd-check: systemd-analyze not found, skipped (apt-get install systemd)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd ../.. && $GO build -o "$tmp/tally" ./cmd/tally)

# The unit, pointing at the binary just built.
sed "s#/usr/local/bin/tally#$tmp/tally#g" tally.service >"$tmp/tally.service"
systemd-analyze verify "$tmp/tally.service"
# Exposure score (0 best, 10 worst): fail above 2.5.
systemd-analyze security --offline=true --threshold=25 --no-pager "$tmp/tally.service" | tail -1

# The example settings with the unit's Environment= lines, stand-in secrets
# and a certificate for node1's name.
"$tmp/tally" admin cluster ca init --out "$tmp/ca" >/dev/null
"$tmp/tally" admin cluster node-cert --ca "$tmp/ca" --node-id node1 --dns tally1.example.internal --out "$tmp/tls" >/dev/null
head -c 32 /dev/urandom | base64 >"$tmp/kek"
head -c 32 /dev/urandom | base64 | tr -d '/+=' >"$tmp/admin-token"
mapfile -t unitenv < <(sed -n 's/^Environment=//p' tally.service | sed "s#%d/#$tmp/#")
mapfile -t fileenv < <(grep -Ev '^\s*(#|$)' tally.env.example)
out=$(env -i PATH=/usr/bin:/bin "${unitenv[@]}" "${fileenv[@]}" \
  TALLY_TLS_DIR="$tmp/tls" TALLY_DATA_DIR="$tmp/data" \
  "$tmp/tally" serve --check-config 2>&1) || { echo "$out"; exit 1; }
echo "$out"
if grep -q 'warning:' <<<"$out"; then exit 1; fi
echo "systemd-check: ok"
