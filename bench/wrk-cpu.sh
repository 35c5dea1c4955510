#!/usr/bin/env bash
# Server CPU per request under wrk: the server pinned to one CPU, wrk to
# another, CPU time (user+sys of every process and thread of the server, from
# /proc) divided by requests completed.
#
#   bench/wrk-cpu.sh [ROUNDS]     # coreserve (both dispatch modes) and nginx, interleaved
#   PATHS="/ /static/4k.bin /static/1m.bin" bench/wrk-cpu.sh 3
#
# PATHS are the request paths measured (default "/": hello world); the
# /static/ files 4k.bin and 1m.bin are created, served by coreserve's static
# route and by nginx's `location /static/` (the anchor config: sendfile off).
# Needs: wrk and nginx (apt-get install -y wrk nginx), a release build
# (cargo build --release), and two CPUs. Prints one line per run and the
# medians. Until coreserve-bench and bench/compare exist, this is how the
# figures in bench/RESULTS.md are taken.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROUNDS=${1:-3}
DURATION=${DURATION:-10s}
PATHS=${PATHS:-/}
chmod 755 "$work"  # nginx workers run as www-data and must read the files

run_one() { # name port pids...
    local name=$1 port=$2; shift 2
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d3s "http://127.0.0.1:$port$path" > /dev/null  # warm-up
    local t0 t1 out reqs hz
    t0=$(ticks "$@")
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$port$path")
    t1=$(ticks "$@")
    reqs=$(awk '/requests in/ {print $1}' <<< "$out")
    local bad
    bad=$(awk '/Non-2xx/ {print $5}' <<< "$out")
    if [ -n "$bad" ]; then
        echo "$name: $bad of $reqs responses were not 2xx/3xx; the figures below are void" >&2
    fi
    hz=$(getconf CLK_TCK)
    awk -v n="$name" -v r="$reqs" -v t=$((t1 - t0)) -v hz="$hz" \
        -v rps="$(awk '/Requests\/sec/ {print $2}' <<< "$out")" \
        -v p50="$(awk '$1=="50%" {print $2}' <<< "$out")" \
        -v p99="$(awk '$1=="99%" {print $2}' <<< "$out")" \
        'BEGIN { printf "%-20s %10.0f req/s %7.2f us/req  p50 %-8s p99 %s\n", n, rps, t / hz * 1e6 / r, p50, p99 }'
}

start_coreserve() { # dispatch port
    taskset -c "$SERVER_CPU" "$BIN" --config "$work/coreserve.toml" \
        --listen "127.0.0.1:$2" --cpus "$SERVER_CPU" --dispatch "$1" \
        > /dev/null 2> "$work/coreserve-$1.log" &
    echo $!
}

mkdir -p "$work/nginx/logs" "$work/www"
sed -e '/worker_cpu_affinity/d' -e "s|/tmp/nginx-anchor/www/|$work/www/|" \
    "$PEERS/nginx.conf" > "$work/nginx.conf"
head -c 4096 /dev/urandom > "$work/www/4k.bin"
head -c 1048576 /dev/urandom > "$work/www/1m.bin"
hello_config "$work/coreserve.toml" "$work/www"

results=$work/results
for path in $PATHS; do
echo "== $path"
: > "$results"
for round in $(seq "$ROUNDS"); do
    pid=$(start_coreserve master 3100); wait_port 3100
    run_one "coreserve master" 3100 "$pid" | tee -a "$results"
    stop TERM "$pid"

    pid=$(start_coreserve reuseport 3101); wait_port 3101
    run_one "coreserve reuseport" 3101 "$pid" | tee -a "$results"
    stop TERM "$pid"

    taskset -c "$SERVER_CPU" nginx -p "$work/nginx/" -c "$work/nginx.conf" -g 'daemon off;' &
    pid=$!; wait_port 3002
    run_one "nginx" 3002 "$pid" $(pgrep -P "$pid") | tee -a "$results"
    stop QUIT "$pid"
done

echo "medians over $ROUNDS rounds, $path:"
medians "$results" "coreserve master" "coreserve reuseport" "nginx"
done
