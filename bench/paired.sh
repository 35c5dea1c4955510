#!/usr/bin/env bash
# Two coreserve builds measured at the same time, for an A/B that this
# VM's slow mode cannot skew: both servers (one shard each) on SERVER_CPU,
# one wrk against each on LOAD_CPU, so whatever slows the machine slows
# both alike. Prints the server CPU per request of each (user+sys from
# /proc) and B/A for each pair; the order of the two swaps every other pair.
#
#   bench/paired.sh OLD_BIN NEW_BIN [PAIRS]
#   NEWCONN=1 bench/paired.sh /tmp/coreserve-old target/release/coreserve 6
#   PROXY=1 bench/paired.sh OLD_BIN NEW_BIN      # both proxy to one nginx worker on LOAD_CPU
#
# Needs wrk (apt-get install -y wrk), nginx for PROXY=1, and two release
# builds.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
if [ $# -lt 2 ]; then
    echo "usage: bench/paired.sh OLD_BIN NEW_BIN [PAIRS]" >&2
    exit 2
fi
A=$1 B=$2 PAIRS=${3:-8}
DURATION=${DURATION:-4s}
NEWCONN=${NEWCONN:-0}
HALF=$((CONNS / 2))
wrk_args=(-t1 "-c$HALF" "-d$DURATION")
if [ "$NEWCONN" = 1 ]; then
    cat > "$work/close.lua" <<'LUA'
request = function() return wrk.format(nil, nil, {["Connection"] = "close"}) end
LUA
    wrk_args+=(-s "$work/close.lua")
fi
if [ "${PROXY:-0}" = 1 ]; then
    mkdir -p "$work/up/logs"
    sed -e "s/listen 127.0.0.1:3002/listen 127.0.0.1:3013/" "$PEERS/nginx.conf" > "$work/up.conf"
    taskset -c "$LOAD_CPU" nginx -p "$work/up/" -c "$work/up.conf" -g 'daemon off;' &
    wait_port 3013
    cat > "$work/hello.toml" <<TOML
[[upstream]]
name = "app"
servers = ["127.0.0.1:3013"]

[[route]]
path = "/"
handler = "proxy"
upstream = "app"
TOML
else
    hello_config "$work/hello.toml"
fi
tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# pair FIRST SECOND: one run of both at once; prints "us_first us_second".
# It runs in a subshell (`$(pair …)`), which lib.sh's trap does not
# cover: its own trap stops its servers however it ends.
pair() {
    local c1 c2 r1 r2
    # Not local: the trap runs after the function has returned.
    p1='' p2=''
    trap 'kill $p1 $p2 2>/dev/null || true' EXIT
    taskset -c "$SERVER_CPU" "$1" --config "$work/hello.toml" --listen 127.0.0.1:3011 \
        --shards 1 --cpus "$SERVER_CPU" --metrics-listen off 2>/dev/null &
    p1=$!
    taskset -c "$SERVER_CPU" "$2" --config "$work/hello.toml" --listen 127.0.0.1:3012 \
        --shards 1 --cpus "$SERVER_CPU" --metrics-listen off 2>/dev/null &
    p2=$!
    if ! wait_port 3011 || ! wait_port 3012; then
        echo "a server did not start: $1 or $2" >&2
        return 1
    fi
    c1=$(cpu_ticks "$p1"); c2=$(cpu_ticks "$p2")
    taskset -c "$LOAD_CPU" wrk "${wrk_args[@]}" http://127.0.0.1:3012/ > "$work/w2" &
    taskset -c "$LOAD_CPU" wrk "${wrk_args[@]}" http://127.0.0.1:3011/ > "$work/w1"
    wait "$!"
    c1=$(( $(cpu_ticks "$p1") - c1 )); c2=$(( $(cpu_ticks "$p2") - c2 ))
    r1=$(awk '/requests in/ {print $1}' "$work/w1"); r2=$(awk '/requests in/ {print $1}' "$work/w2")
    stop TERM "$p1"; stop TERM "$p2"
    if [ "${r1:-0}" = 0 ] || [ "${r2:-0}" = 0 ]; then
        echo "a server answered no request (wrk: $(cat "$work/w1" "$work/w2"))" >&2
        return 1
    fi
    awk -v c1="$c1" -v c2="$c2" -v r1="$r1" -v r2="$r2" -v t="$tck" \
        'BEGIN { printf "%.3f %.3f\n", c1 / t * 1e6 / r1, c2 / t * 1e6 / r2 }'
}

ratios=()
for i in $(seq "$PAIRS"); do
    if [ $((i % 2)) = 1 ]; then
        out=$(pair "$A" "$B") || exit 1
        read -r a b <<< "$out"
    else
        out=$(pair "$B" "$A") || exit 1
        read -r b a <<< "$out"
    fi
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
    ratios+=("$ratio")
    echo "pair $i: A $a us/req, B $b us/req, B/A $ratio"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END {
    m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "median B/A over %d pairs: %.3f\n", NR, m }'
