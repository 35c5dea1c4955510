#!/usr/bin/env bash
# Rolling reload of an app under load: coreserve runs the Node app
# tests/it/apps/echo.js as an [[app]] of INSTANCES instances; two wrk
# clients keep it busy for DURATION (40 keep-alive connections, and 10 that
# open a new connection per request) while the app's `env` changes and
# SIGHUP is sent every EVERY seconds, so that each reload replaces every
# instance one at a time. The app dies at once on SIGTERM (ABRUPT), as a
# Node app without a handler does. Prints wrk's totals and what coreserve
# logged; non-2xx responses and socket errors must be 0 (the script exits
# 1 otherwise).
#
#   bench/app-reload-under-load.sh      # needs node, wrk and a release build
#   BIN=target/debug/coreserve DURATION=10 bench/app-reload-under-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-30}
EVERY=${EVERY:-3}
INSTANCES=${INSTANCES:-2}
SHARDS=${SHARDS:-1}
PORT=${PORT:-3111}
BIN=${BIN:-target/release/coreserve}
APP=$PWD/tests/it/apps/echo.js
URL=http://127.0.0.1:$PORT/whoami
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

conf() {
    cat > "$work/c.toml" <<EOF
[[app]]
name = "web"
command = ["node", "$APP"]
instances = $INSTANCES
env = { VERSION = "$1", ABRUPT = "1" }

[[route]]
path = "/"
handler = "proxy"
upstream = "web"
EOF
}
conf 0
"$BIN" --config "$work/c.toml" --listen "127.0.0.1:$PORT" --shards "$SHARDS" \
    --metrics-listen off 2> "$work/log" &
pid=$!
up=
for _ in $(seq 200); do
    if curl -sf -o /dev/null "$URL"; then up=1; break; fi
    sleep 0.05
done
if [ -z "$up" ]; then
    echo "coreserve did not start:" >&2
    cat "$work/log" >&2
    exit 1
fi

taskset -c 0 wrk -t1 -c40 -d"${DURATION}s" "$URL" > "$work/wrk-keepalive" &
wrk_keepalive=$!
taskset -c 0 wrk -t1 -c10 -d"${DURATION}s" -H "Connection: close" "$URL" > "$work/wrk-close" &
wrk_close=$!
reloads=0
for i in $(seq $(((DURATION - 1) / EVERY))); do
    sleep "$EVERY"
    conf "$i"
    kill -HUP "$pid"
    reloads=$((reloads + 1))
done
wait "$wrk_keepalive" "$wrk_close"
# Let the last roll finish: every old instance stopped.
stopped() { grep -c 'app web\[[0-9]*\] (pid [0-9]*) stopped: ' "$work/log" || true; }
for _ in $(seq 100); do
    [ "$(stopped)" -ge $((reloads * INSTANCES)) ] && break
    sleep 0.1
done
replaced=$(stopped)
served=$(curl -s "$URL" || true)
kill -TERM "$pid"
wait "$pid" || true

requests=0
errors=0
for kind in keepalive close; do
    echo "== wrk, $kind connections"
    cat "$work/wrk-$kind"
    n=$(awk '/requests in/ {print $1}' "$work/wrk-$kind")
    requests=$((requests + ${n:-0}))
    non2xx=$(awk '/Non-2xx/ {print $5}' "$work/wrk-$kind")
    sock=$(grep -o 'Socket errors:.*' "$work/wrk-$kind" | grep -o '[0-9]\+' | paste -sd+ | bc || true)
    errors=$((errors + ${non2xx:-0} + ${sock:-0}))
done
echo "== coreserve"
echo "SIGHUPs sent: $reloads"
echo "rolling reloads begun: $(grep -c 'app web: changed; replacing its instances' "$work/log" || true)"
echo "old instances stopped: $replaced (of $((reloads * INSTANCES)))"
echo "instances that exited on their own: $(grep -c ') exited' "$work/log" || true)"
echo "replacements that failed: $(grep -c 'the replacement (pid' "$work/log" || true)"
echo "last answer (pid instance version): $served"
echo "requests: $requests"
echo "non-2xx responses and socket errors: $errors"
if [ "$errors" -ne 0 ]; then
    echo "FAILED: requests were lost during the rolling reloads" >&2
    exit 1
fi
