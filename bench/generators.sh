#!/usr/bin/env bash
# Which side a load generator saturates: wrk and coreserve-bench against the
# same server (nginx with the anchor config, then coreserve), the server
# pinned to one CPU and the generator to the other. For every run it prints
# the requests/s the generator reached and how busy each CPU was (user,
# system, irq and softirq time from /proc/stat over the middle of the run):
# a generator that measures the server leaves its own CPU idle time while
# the server's CPU is at 100 %. Busy time over requests gives each side's CPU
# microseconds per request (the generator's includes the kernel's work for
# its sockets, softirq included).
#
#   bench/generators.sh [ROUNDS]
#
# Needs: wrk and nginx (apt-get install -y wrk nginx), a release build of the
# workspace (cargo build --release --workspace), and two CPUs. Interleaved
# rounds; medians at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROUNDS=${1:-3}
SECONDS_RUN=${SECONDS_RUN:-6}
BENCH=target/release/coreserve-bench

busy() { # cpu: busy and idle ticks so far
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat
}

# run_one target generator port: one generator against the running server;
# prints target, generator, req/s, each CPU's busy % and µs per request.
run_one() {
    local target=$1 gen=$2 port=$3 out=$work/out
    case $gen in
    wrk) cmd=(wrk -t1 -c"$CONNS" -d"$((SECONDS_RUN + 1))s") ;;
    bench) cmd=("$BENCH" --cpus "$LOAD_CPU" -c "$CONNS" -w 1s -d "${SECONDS_RUN}s") ;;
    bench-p16) cmd=("$BENCH" --cpus "$LOAD_CPU" -c "$CONNS" -p 16 -w 1s -d "${SECONDS_RUN}s") ;;
    esac
    taskset -c "$LOAD_CPU" "${cmd[@]}" "http://127.0.0.1:$port/" > "$out" 2>&1 &
    local pid=$! l0 li0 s0 si0 l1 li1 s1 si1
    sleep 1.5
    read -r l0 li0 < <(busy "$LOAD_CPU")
    read -r s0 si0 < <(busy "$SERVER_CPU")
    sleep "$((SECONDS_RUN - 1))"
    read -r l1 li1 < <(busy "$LOAD_CPU")
    read -r s1 si1 < <(busy "$SERVER_CPU")
    wait "$pid"
    local rps
    rps=$(awk '/Requests\/sec:/ { print int($2) } /^requests\/s/ { print $2 }' "$out")
    # wrk names errors and non-2xx answers only when there were some;
    # coreserve-bench always prints "errors N (...), non-2xx M".
    if grep -qE 'Non-2xx|Socket errors' "$out" || awk '/^errors/ && ($2 != 0 || $NF != 0) { bad = 1 } END { exit !bad }' "$out"; then
        echo "$target $gen: errors or non-2xx answers; this row is void:" >&2
        cat "$out" >&2
    fi
    awk -v t="$target" -v g="$gen" -v r="$rps" -v lb=$((l1 - l0)) -v li=$((li1 - li0)) \
        -v sb=$((s1 - s0)) -v si=$((si1 - si0)) 'BEGIN {
            lf = lb / (lb + li); sf = sb / (sb + si)
            printf "%-10s %-10s %8d %5.0f %5.0f %7.2f %7.2f\n", t, g, r, 100 * lf, 100 * sf, lf * 1e6 / r, sf * 1e6 / r
        }'
}

mkdir -p "$work/nginx/logs"
sed -e '/worker_cpu_affinity/d' "$PEERS/nginx.conf" > "$work/nginx.conf"
hello_config "$work/coreserve.toml"

results=$work/results
header() { printf '%-10s %-10s %8s %5s %5s %7s %7s\n' target generator req/s load% server% load-us server-us; }
header
for _ in $(seq "$ROUNDS"); do
    taskset -c "$SERVER_CPU" nginx -p "$work/nginx/" -c "$work/nginx.conf" -g 'daemon off;' &
    pid=$!
    wait_port 3002
    for gen in wrk bench bench-p16; do run_one nginx "$gen" 3002 | tee -a "$results"; done
    stop QUIT "$pid"

    taskset -c "$SERVER_CPU" "$BIN" --config "$work/coreserve.toml" --listen 127.0.0.1:3100 \
        --cpus "$SERVER_CPU" > /dev/null 2> "$work/coreserve.log" &
    pid=$!
    wait_port 3100
    for gen in wrk bench bench-p16; do run_one coreserve "$gen" 3100 | tee -a "$results"; done
    stop TERM "$pid"
done

echo "medians over $ROUNDS rounds (each column on its own):"
header
for target in nginx coreserve; do
    for gen in wrk bench bench-p16; do
        rows=$(awk -v t="$target" -v g="$gen" '$1 == t && $2 == g' "$results")
        m=$((($(wc -l <<< "$rows") + 1) / 2))
        med() { awk -v c="$1" '{ print $c }' <<< "$rows" | sort -n | sed -n "${m}p"; }
        printf '%-10s %-10s %8s %5s %5s %7s %7s\n' "$target" "$gen" "$(med 3)" "$(med 4)" "$(med 5)" "$(med 6)" "$(med 7)"
    done
done
