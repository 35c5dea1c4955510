# Settings and helpers shared by the shell benchmarks in bench/ (sourced from
# the repository's top, not run).

# The server's CPU and the load's, connections, the peers' configurations.
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
CONNS=${CONNS:-50}
PEERS=${PEERS:-bench/peers}
BIN=target/release/coreserve
# Scratch space for configurations and logs, and every server started in
# the background stopped, whatever way the script ends.
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

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

# ticks PID...: total utime+stime (clock ticks) of these processes, every
# thread included (fields 14 and 15 of /proc/PID/stat; comm has no spaces here).
ticks() {
    local total=0 pid
    for pid in "$@"; do
        read -r -a f < "/proc/$pid/stat"
        total=$((total + f[13] + f[14]))
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
