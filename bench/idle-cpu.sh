#!/usr/bin/env bash
# CPU an idle server uses: after a 1-second wrk burst and 2 s of quiet, the
# run time and the time slices of each of its threads (schedstat, exact on
# this kernel, where /proc/PID/stat's ticks are not) over DURATION, every
# CPU free. Rounds interleaved, every server with as many shards/workers as
# CPUs, the default configuration otherwise (coreserve's hello world, the
# nginx anchor).
#
#   bench/idle-cpu.sh [ROUNDS]                            # coreserve and nginx
#   BINS="old=/tmp/coreserve-old new=target/release/coreserve" bench/idle-cpu.sh 3
#   DURATION=60 bench/idle-cpu.sh 3                       # seconds of quiet measured
#
# Prints per run the CPU used (ms per second of quiet, and % of one CPU),
# the slices (each one a wake-up), and each thread that ran; then medians.
# Needs wrk and nginx (apt-get install -y wrk nginx) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROUNDS=${1:-3}
DURATION=${DURATION:-30}
BINS=${BINS:-coreserve=$BIN}
NCPU=$(nproc)
on_server=()  # every CPU free (nginx_run starts nginx under it)

# threads PID...: "name run_ns slices" for every thread of the PIDs.
threads() {
    local pid t
    for pid in "$@"; do
        for t in /proc/"$pid"/task/*; do
            # comm may hold spaces: it goes last, whole.
            printf '%s %s\n' "$(cut -d' ' -f1,3 "$t/schedstat")" "$(cat "$t/comm")" 2> /dev/null || true
        done
    done
}

run_one() { # name port pids...
    local name=$1 port=$2; shift 2
    wrk -t1 -c4 -d1s "http://127.0.0.1:$port/" > /dev/null
    sleep 2
    threads "$@" | sort -k3 > "$work/before"
    sleep "$DURATION"
    threads "$@" | sort -k3 > "$work/after"
    # Threads by name (two of a name, such as glommio's blocking thread and
    # its executor's, add up).
    awk -v n="$name" -v d="$DURATION" '
        NR == FNR { run[$3] -= $1; sl[$3] -= $2; next }
        { run[$3] += $1; sl[$3] += $2 }
        END {
            for (t in run) { total += run[t]; slices += sl[t]
                if (sl[t] > 0) detail = detail sprintf(" %s=%.1fms/%d", t, run[t] / 1e6, sl[t]) }
            printf "%-22s %6.2f ms/s %5.2f %% slices %4d |%s\n", n, total / 1e6 / d, total / 1e7 / d, slices, detail
        }' "$work/before" "$work/after"
}

mkdir -p "$work/nginx/logs"
sed -e '/worker_cpu_affinity/d' -e "s/worker_processes 1;/worker_processes $NCPU;/" \
    "$PEERS/nginx.conf" > "$work/nginx.conf"
hello_config "$work/coreserve.toml"

results=$work/results
: > "$results"
echo "idle: $NCPU shards/workers, ${DURATION}s of quiet after a 1 s burst"
interleaved "$ROUNDS" "$work/nginx/" "$work/nginx.conf"

echo "medians over $ROUNDS rounds:"
for spec in $BINS nginx; do
    name=${spec%%=*}
    rows=$(grep "^$name " "$results")
    m=$(( ($(wc -l <<< "$rows") + 1) / 2 ))
    printf "%-22s %6s ms/s %5s %% slices %4s\n" "$name" \
        "$(awk '{print $2}' <<< "$rows" | sort -n | sed -n "${m}p")" \
        "$(awk '{print $4}' <<< "$rows" | sort -n | sed -n "${m}p")" \
        "$(awk '{print $7}' <<< "$rows" | sort -n | sed -n "${m}p")"
done
