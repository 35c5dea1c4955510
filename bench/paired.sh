#!/usr/bin/env bash
# Two coreserve builds measured at the same time, for an A/B that this
# VM's slow mode cannot skew: both servers (one shard each) on SERVER_CPU,
# one wrk against each on LOAD_CPU, so whatever slows the machine slows
# both alike. Prints the server CPU per request of each (user+sys from
# /proc) and B/A for each pair; the order of the two swaps every other pair.
#
#   bench/paired.sh OLD_BIN NEW_BIN [PAIRS]
#   NEWCONN=1 bench/paired.sh /tmp/coreserve-old target/release/coreserve 6
#
# Needs wrk (apt-get install -y wrk) and two release builds.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
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
hello_config "$work/hello.toml"
tck=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# pair FIRST SECOND: one run of both at once; prints "us_first us_second".
pair() {
    local p1 p2 c1 c2 r1 r2
    taskset -c "$SERVER_CPU" "$1" --config "$work/hello.toml" --listen 127.0.0.1:3011 \
        --shards 1 --cpus "$SERVER_CPU" --metrics-listen off 2>/dev/null &
    p1=$!
    taskset -c "$SERVER_CPU" "$2" --config "$work/hello.toml" --listen 127.0.0.1:3012 \
        --shards 1 --cpus "$SERVER_CPU" --metrics-listen off 2>/dev/null &
    p2=$!
    wait_port 3011; wait_port 3012
    c1=$(cpu_ticks "$p1"); c2=$(cpu_ticks "$p2")
    taskset -c "$LOAD_CPU" wrk "${wrk_args[@]}" http://127.0.0.1:3011/ > "$work/w1" &
    taskset -c "$LOAD_CPU" wrk "${wrk_args[@]}" http://127.0.0.1:3012/ > "$work/w2"
    wait %3
    c1=$(( $(cpu_ticks "$p1") - c1 )); c2=$(( $(cpu_ticks "$p2") - c2 ))
    r1=$(awk '/requests in/ {print $1}' "$work/w1"); r2=$(awk '/requests in/ {print $1}' "$work/w2")
    stop TERM "$p1"; stop TERM "$p2"
    awk -v c1="$c1" -v c2="$c2" -v r1="$r1" -v r2="$r2" -v t="$tck" \
        'BEGIN { printf "%.3f %.3f\n", c1 / t * 1e6 / r1, c2 / t * 1e6 / r2 }'
}

ratios=()
for i in $(seq "$PAIRS"); do
    if [ $((i % 2)) = 1 ]; then
        read -r a b < <(pair "$A" "$B")
    else
        read -r b a < <(pair "$B" "$A")
    fi
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
    ratios+=("$ratio")
    echo "pair $i: A $a us/req, B $b us/req, B/A $ratio"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END {
    m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "median B/A over %d pairs: %.3f\n", NR, m }'
