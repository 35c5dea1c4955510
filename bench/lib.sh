# Settings and helpers shared by the shell benchmarks in bench/ (sourced from
# the repository's top, not run).

# The server's CPU and the load's, connections, the peers' configurations.
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
CONNS=${CONNS:-50}
PEERS=${PEERS:-bench/peers}
# The coreserve binary measured (CORESERVE_BIN=PATH measures another build).
BIN=${CORESERVE_BIN:-target/release/coreserve}
# Scratch space for configurations and logs, and every server started in
# the background stopped, whatever way the script ends.
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# port_free PORT: fails, saying so, when a server already answers on
# 127.0.0.1:PORT: wait_port would take it for the one about to start, and
# the run would measure it instead.
port_free() {
    if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$1/"; then
        echo "127.0.0.1:$1 is taken by another server: stop it first" >&2
        return 1
    fi
}

# seconds DURATION: wrk's duration (`5`, `5s`, `2m`, `1h`) in seconds, for
# the rates measured over it; anything else (wrk takes no `500ms`) fails.
seconds() {
    local bad="DURATION=$1: give whole seconds, minutes or hours (5s, 2m, 1h), as wrk takes"
    case $1 in
        # Digits, then at most one unit; base 10 (`08s` is no octal).
        "" | [hms] | *[!0-9]*[hms] | *[!0-9hms]*) echo "$bad" >&2; return 1 ;;
        *h) echo $((10#${1%h} * 3600)) ;;
        *m) echo $((10#${1%m} * 60)) ;;
        *s) echo $((10#${1%s})) ;;
        *) echo $((10#$1)) ;;
    esac
}

# wait_port PORT: until a server answers on 127.0.0.1:PORT (5 s at most).
wait_port() {
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.05
    done
    return 1
}

# stop SIGNAL PID: signal a server and wait until it is gone.
stop() {
    kill "-$1" "$2" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$2" 2>/dev/null || return 0; sleep 0.05; done
}

# hello_config FILE [STATIC_ROOT]: a coreserve configuration answering "/"
# with the anchors' hello world (and /static/ from STATIC_ROOT if given).
hello_config() {
    cat > "$1" <<TOML
[[route]]
path = "/"
handler = "respond"
body = "Hello World"
content-type = "text/plain"
TOML
    if [ -n "${2:-}" ]; then
        cat >> "$1" <<TOML

[[route]]
path = "/static/"
handler = "static"
root = "$2"
TOML
    fi
}

# start_upstream PORT [PREFIX...]: the proxies' upstream, one nginx worker
# answering the hello world on 127.0.0.1:PORT, started in the background
# (run under PREFIX, a taskset say) and stopped with the script.
start_upstream() {
    local port=$1; shift
    port_free "$port" || return 1
    mkdir -p "$work/up/logs"
    sed -e "s/listen 127.0.0.1:3002/listen 127.0.0.1:$port/" "${UPSTREAM_CONF:-$PEERS/nginx.conf}" > "$work/up.conf"
    "$@" nginx -p "$work/up/" -c "$work/up.conf" -g 'daemon off;' &
    wait_port "$port"
}

# nginx_conf_for CONF WORKERS UPSTREAM_PORT: a bench/peers nginx
# configuration on stdout with WORKERS workers, its upstream (if it has one)
# on 127.0.0.1:UPSTREAM_PORT and keeping NGINX_KEEPALIVE (default 32, as
# coreserve's `keepalive`) idle upstream connections.
nginx_conf_for() {
    sed -e "s/worker_processes 1;/worker_processes $2;/" \
        -e "s/server 127.0.0.1:3003;/server 127.0.0.1:$3;/" \
        -e "s/keepalive 32;/keepalive ${NGINX_KEEPALIVE:-32};/" "$1"
}

# proxy_config FILE PORT: a coreserve configuration proxying every request
# to 127.0.0.1:PORT.
proxy_config() {
    cat > "$1" <<TOML
[[upstream]]
name = "app"
servers = ["127.0.0.1:$2"]

[[route]]
path = "/"
handler = "proxy"
upstream = "app"
TOML
}

# nginx_run PREFIX CONF: start nginx from CONF (prefix PREFIX, listening on
# 3002), measure it with the script's `run_one` (master and workers
# counted), stop it.
nginx_run() {
    local pid
    port_free 3002 || return 1
    "${on_server[@]}" nginx -p "$1" -c "$2" -g 'daemon off;' &
    pid=$!; wait_port 3002
    # shellcheck disable=SC2046
    run_one "nginx" 3002 "$pid" $(pgrep -P "$pid") | tee -a "$results"
    stop QUIT "$pid"
}

# interleaved ROUNDS NGINX_PREFIX NGINX_CONF [FLAG...]: ROUNDS rounds of
# every coreserve of $BINS (NAME=PATH; started under $on_server on
# 127.0.0.1:3100 with $work/coreserve.toml, $NCPU shards and FLAGS) and of
# nginx (`nginx_run`), each in every place of a round in turn; each run
# measured by the script's `run_one NAME PORT PID...`, its row appended to
# $results.
interleaved() {
    local rounds=$1 prefix=$2 conf=$3 round spec name bin pid
    shift 3
    for round in $(seq "$rounds"); do
        # shellcheck disable=SC2086
        for spec in $(rotated $((round - 1)) $BINS nginx); do
            if [ "$spec" = nginx ]; then
                nginx_run "$prefix" "$conf"
                continue
            fi
            name=${spec%%=*}; bin=${spec#*=}
            port_free 3100 || return 1
            "${on_server[@]}" "$bin" --config "$work/coreserve.toml" --listen 127.0.0.1:3100 \
                --shards "$NCPU" --metrics-listen off "$@" > /dev/null 2> "$work/coreserve.log" &
            pid=$!; wait_port 3100
            run_one "$name" 3100 "$pid" | tee -a "$results"
            stop TERM "$pid"
        done
    done
}

# rotated N WORD...: the words, rotated left by N. A round's first place is
# favoured by a few per cent on this VM, so interleaved scripts give each
# server every place in turn (round r starts at its r-th server).
rotated() {
    local n=$1; shift
    local words=("$@") i
    for ((i = 0; i < ${#words[@]}; i++)); do
        printf '%s\n' "${words[$(((i + n) % ${#words[@]}))]}"
    done
}

# ticks PID...: total utime+stime (clock ticks) of these processes, every
# thread included (fields 14 and 15 of /proc/PID/stat; comm has no spaces here).
ticks() { stat_ticks 13 "$@"; }

# sys_ticks PID...: the kernel's part of `ticks` (stime, field 15).
sys_ticks() { stat_ticks 14 "$@"; }

# stat_ticks FIRST PID...: the sum over the PIDs of the stat fields from
# index FIRST (0-based) to stime.
stat_ticks() {
    local first=$1 total=0 pid i
    shift
    for pid in "$@"; do
        read -r -a f < "/proc/$pid/stat"
        for ((i = first; i <= 14; i++)); do total=$((total + f[i])); done
    done
    echo "$total"
}

# medians RESULTS NAME...: per NAME, the median req/s and µs/req of its rows
# in RESULTS (lines "NAME  <req/s> req/s <us> us/req ...").
medians() {
    local results=$1 name rows m rps us
    shift
    for name in "$@"; do
        rows=$(grep "^$name " "$results" | sed "s/^$name *//")
        m=$(( ($(wc -l <<< "$rows") + 1) / 2 ))
        rps=$(awk '{print $1}' <<< "$rows" | sort -n | sed -n "${m}p")
        us=$(awk '{print $3}' <<< "$rows" | sort -n | sed -n "${m}p")
        printf "%-22s %9s req/s %7s us/req\n" "$name" "$rps" "$us"
    done
}

# measured NAME LOAD URL PID...: runs `LOAD URL` (a function that prints
# wrk's report, or a report in its words: "N requests in", "50% P50", "99%
# P99") while perf counts the system calls named in $SYSCALLS on the PIDs and
# /proc their CPU time; prints "NAME <req/s> req/s <us> us/req p99 <p99>
# kernel <its share of the CPU time> <calls per request> p50 <p50>".
# $DURATION is the load's length; $work holds perf's output.
measured() {
    local name=$1 load=$2 url=$3; shift 3
    local events="" s pidlist secs
    secs=$(seconds "$DURATION") || return 1
    for s in $SYSCALLS; do events+="syscalls:sys_enter_$s,"; done
    pidlist=$(IFS=,; echo "$*")
    perf stat -x, -e "${events%,}" -p "$pidlist" -o "$work/perf.txt" &
    local perf=$!
    sleep 0.2
    local t0 t1 k0 k1 out reqs calls bad
    t0=$(ticks "$@") k0=$(sys_ticks "$@")
    out=$("$load" "$url")
    t1=$(ticks "$@") k1=$(sys_ticks "$@")
    kill -INT "$perf"; wait "$perf" 2>/dev/null || true
    reqs=$(awk '/requests in/ {print $1}' <<< "$out")
    bad=$(awk '/Non-2xx/ {print $5}' <<< "$out")
    [ -z "$bad" ] || echo "$name: $bad responses were not 2xx/3xx; the figures below are void" >&2
    calls=$(awk -F, -v r="$reqs" '$3 ~ /sys_enter_/ { sub(/.*sys_enter_/, "", $3); if ($1 > 0) printf " %s=%.3f", $3, $1 / r }' "$work/perf.txt")
    awk -v n="$name" -v r="$reqs" -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v d="$secs" \
        -v p99="$(awk '$1=="99%" {print $2}' <<< "$out")" -v c="$calls" \
        -v p50="$(awk '$1=="50%" {print $2}' <<< "$out")" -v k=$((k1 - k0)) \
        'BEGIN { printf "%-22s %9.0f req/s %7.2f us/req p99 %-8s kernel %2.0f%%%s p50 %s\n", n, r / d, t / hz * 1e6 / r, p99, t ? 100 * k / t : 0, c, p50 }'
}
