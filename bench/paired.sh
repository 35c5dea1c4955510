#!/usr/bin/env bash
# Two servers measured at the same time, for an A/B that this VM's slow
# mode cannot skew: both (one shard / one worker each) on SERVER_CPU, one
# wrk against each on LOAD_CPU, so whatever slows the machine slows both
# alike. Each side is a coreserve binary, or `nginx` (bench/peers'
# configuration, one worker). Prints the server CPU per request of each
# (user+sys of all its processes, from /proc) and B/A for each pair; the
# order of the two swaps every other pair.
#
#   bench/paired.sh OLD_BIN NEW_BIN [PAIRS]
#   NEWCONN=1 bench/paired.sh /tmp/coreserve-old target/release/coreserve 6
#   PROXY=1 bench/paired.sh OLD_BIN NEW_BIN      # both proxy to one nginx worker on LOAD_CPU
#   bench/paired.sh nginx target/release/coreserve   # coreserve against nginx
#   PROXY=1 NGINX_KEEPALIVE=64 bench/paired.sh nginx target/release/coreserve
#
# DURATION (default 4s) is each pair's run, CONNS (default 50) the clients
# shared by the two wrks; SERVER_CPU and LOAD_CPU as in bench/lib.sh.
# CONFIG (a coreserve configuration in place of the hello-world one),
# TARGET (the path asked, default /) and HOST (a Host header) measure a
# router of many routes or sites, coreserve against coreserve:
#   CONFIG=routes.toml TARGET=/other/x bench/paired.sh OLD_BIN NEW_BIN 4
#
# Sharing one CPU, each server gets about half of it: a figure here is not
# the pinned layout's, but the ratio of the two is steady. Needs wrk
# (apt-get install -y wrk), nginx for PROXY=1 or an `nginx` side, and
# release builds.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
if [ $# -lt 2 ]; then
    echo "usage: bench/paired.sh A_BIN|nginx B_BIN|nginx [PAIRS]" >&2
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
    start_upstream 3013 taskset -c "$LOAD_CPU"
    proxy_config "$work/hello.toml" 3013
    nginx_conf=$PEERS/nginx-proxy.conf
else
    hello_config "$work/hello.toml"
    nginx_conf=$PEERS/nginx.conf
fi
if [ -n "${CONFIG:-}" ]; then
    cp "$CONFIG" "$work/hello.toml"
fi
TARGET=${TARGET:-/}
if [ -n "${HOST:-}" ]; then
    wrk_args+=(-H "Host: $HOST")
fi
tck=$(getconf CLK_TCK)

# start SIDE PORT: start a server on 127.0.0.1:PORT on SERVER_CPU; sets
# `pids` to its processes (nginx: master and worker).
start() {
    local pid
    pids=''
    if curl -s -o /dev/null "http://127.0.0.1:$2/"; then
        echo "127.0.0.1:$2 is taken by another server" >&2
        return 1
    fi
    if [ "$1" = nginx ]; then
        mkdir -p "$work/nginx$2/logs"
        nginx_conf_for "$nginx_conf" 1 3013 \
            | sed -e "s/listen 127.0.0.1:3002/listen 127.0.0.1:$2/" > "$work/nginx$2.conf"
        taskset -c "$SERVER_CPU" nginx -p "$work/nginx$2/" -c "$work/nginx$2.conf" \
            -g 'daemon off;' 2>/dev/null &
    else
        taskset -c "$SERVER_CPU" "$1" --config "$work/hello.toml" --listen "127.0.0.1:$2" \
            --shards 1 --cpus "$SERVER_CPU" --metrics-listen off 2>/dev/null &
    fi
    pid=$!
    pids=$pid
    wait_port "$2" || return 1
    pids="$pid $(pgrep -P "$pid" | tr '\n' ' ' || true)"
}

# pair FIRST SECOND: one run of both at once; prints "us_first us_second".
# It runs in a subshell (`$(pair …)`), which lib.sh's trap does not
# cover: its own trap stops its servers however it ends.
pair() {
    local c1 c2 r1 r2
    # Not local: the trap runs after the function has returned.
    p1='' p2=''
    trap 'kill $p1 $p2 2>/dev/null || true' EXIT
    start "$1" 3011 || { p1=$pids; echo "$1 did not start" >&2; return 1; }
    p1=$pids
    start "$2" 3012 || { p2=$pids; echo "$2 did not start" >&2; return 1; }
    p2=$pids
    # shellcheck disable=SC2086
    c1=$(ticks $p1); c2=$(ticks $p2)
    taskset -c "$LOAD_CPU" wrk "${wrk_args[@]}" "http://127.0.0.1:3012$TARGET" > "$work/w2" &
    taskset -c "$LOAD_CPU" wrk "${wrk_args[@]}" "http://127.0.0.1:3011$TARGET" > "$work/w1"
    wait "$!"
    # shellcheck disable=SC2086
    c1=$(( $(ticks $p1) - c1 )); c2=$(( $(ticks $p2) - c2 ))
    r1=$(awk '/requests in/ {print $1}' "$work/w1"); r2=$(awk '/requests in/ {print $1}' "$work/w2")
    # The first pid of each is the one started: nginx's master, coreserve.
    stop TERM "${p1%% *}"; stop TERM "${p2%% *}"
    if [ "${r1:-0}" = 0 ] || [ "${r2:-0}" = 0 ]; then
        echo "a server answered no request (wrk: $(cat "$work/w1" "$work/w2"))" >&2
        return 1
    fi
    if grep -q "Non-2xx" "$work/w1" "$work/w2"; then
        echo "responses that were not 2xx/3xx: the pair is void (wrk: $(cat "$work/w1" "$work/w2"))" >&2
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
