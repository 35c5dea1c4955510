#!/usr/bin/env bash
# Live reload under load: wrk keeps 50 keep-alive connections busy for
# DURATION while the configuration is rewritten and SIGHUP sent every second
# (alternating two valid routing tables and, every third time, a broken
# file). Prints wrk's totals, its socket errors and non-2xx count: a reload
# that loses requests shows there.
#
#   bench/reload-under-load.sh          # needs wrk and a release build
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-32}
BIN=target/release/coreserve
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

conf() { printf '[[route]]\npath = "/"\nhandler = "respond"\nbody = "%s"\n' "$1" > "$work/c.toml"; }
conf one
"$BIN" --config "$work/c.toml" --listen 127.0.0.1:3110 --metrics-listen off 2> "$work/log" &
pid=$!
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:3110/ && break; sleep 0.05; done

taskset -c 0 wrk -t1 -c50 -d"${DURATION}s" http://127.0.0.1:3110/ > "$work/wrk" &
wrk_pid=$!
reloads=0
for i in $(seq $((DURATION - 1))); do
    sleep 1
    case $((i % 3)) in
        0) printf '[limits]\nmax-headers = 0\n' > "$work/c.toml" ;;
        1) conf two ;;
        2) conf one ;;
    esac
    kill -HUP "$pid"
    reloads=$((reloads + 1))
done
wait "$wrk_pid"
kill -TERM "$pid"; wait "$pid" || true
cat "$work/wrk"
echo "SIGHUPs sent: $reloads"
echo "reloads applied: $(grep -c 'configuration reloaded on every shard' "$work/log")"
echo "broken files refused: $(grep -c 'still serving the previous one' "$work/log")"
echo "socket errors: $(grep -o 'Socket errors:.*' "$work/wrk" || echo none)"
echo "non-2xx responses: $(awk '/Non-2xx/ {print $5}' "$work/wrk" | grep . || echo 0)"
