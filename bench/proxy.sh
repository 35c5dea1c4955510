#!/usr/bin/env bash
# The reverse proxy's cost: coreserve's `proxy` route and nginx's
# `proxy_pass` with a keep-alive upstream pool, in front of the same fast
# upstream (an nginx worker answering "Hello World"), under wrk, rounds
# interleaved. Per proxy: req/s, the proxy's own CPU per request
# (user+sys of every thread and process, from /proc; the upstream's CPU is
# not counted), system calls per request and wrk's p99.
#
#   bench/proxy.sh [ROUNDS]                  # all-cores: shards/workers = CPUs
#   LAYOUT=pinned bench/proxy.sh 3           # proxy alone on CPU 1; wrk and upstream on CPU 0
#   RATE=20000 bench/proxy.sh 3              # open loop at this rate (coreserve-bench, corrected p99)
#   NGINX_KEEPALIVE=64 bench/proxy.sh 3      # nginx's upstream keepalive (default 32, coreserve's too)
#   GZIP=1 bench/proxy.sh 3                  # the upstream answers an 8 KiB JSON file, both proxies
#                                            # gzip it for a client sending Accept-Encoding: gzip:
#                                            # coreserve `gzip = true` at its default level 2, nginx
#                                            # `gzip on` at its default 1 (the same output size);
#                                            # CS_GZIP_LEVEL sets coreserve's
#
# BINS names coreserve binaries to compare (NAME=PATH). Needs wrk, nginx and
# perf (apt-get install -y wrk nginx linux-perf) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROUNDS=${1:-3}
DURATION=${DURATION:-5s}
BINS=${BINS:-coreserve=$BIN}
LAYOUT=${LAYOUT:-all-cores}
NCPU=$(nproc)
on_server=() on_load=()
if [ "$LAYOUT" = pinned ]; then
    NCPU=1
    on_server=(taskset -c "$SERVER_CPU")
    on_load=(taskset -c "$LOAD_CPU")
fi
SYSCALLS="recvfrom sendto read write writev readv io_uring_enter membarrier epoll_wait connect close"

# load URL: wrk's report, or with RATE coreserve-bench's in the same words
# ("N requests in", "99% P99MS"), from its JSON.
wrk_args=()
[ -z "${GZIP:-}" ] || wrk_args=(-H "Accept-Encoding: gzip")
load() {
    if [ -z "${RATE:-}" ]; then
        "${on_load[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "${wrk_args[@]}" "$1"
        return
    fi
    local cpu=${LOAD_CPU}
    [ "$LAYOUT" = pinned ] || cpu=0-$((NCPU - 1))
    "${on_load[@]}" target/release/coreserve-bench "$1" -c "$CONNS" --rate "$RATE" \
        -d "$DURATION" -w 0s --cpus "$cpu" --json "$work/bench.json" > /dev/null || true
    python3 - "$work/bench.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['responses']} requests in")
print(f"99% {dict(r['latency']['percentiles'])[99.0]:.2f}ms")
if r["non_2xx"]:
    print(f"Non-2xx or 3xx responses: {r['non_2xx']}")
PY
}

run_one() { # name port pids...
    local name=$1 port=$2; shift 2
    local url="http://127.0.0.1:$port/"
    "${on_load[@]}" wrk -t1 -c"$CONNS" -d2s "${wrk_args[@]}" "$url" > /dev/null  # warm-up
    if [ -n "${GZIP:-}" ]; then
        # What the client gets, so that both are seen to compress.
        curl -s -H "Accept-Encoding: gzip" -o "$work/got" -D "$work/got.head" "$url"
        echo "$name: $(grep -ci '^content-encoding: gzip' "$work/got.head" || true) gzip, $(wc -c < "$work/got") body bytes" >&2
    fi
    measured "$name" load "$url" "$@"
}

mkdir -p "$work/px/logs"
# The upstream: one nginx worker with the hello world (GZIP: a JSON file), on the load's CPU
# when pinned.
if [ -n "${GZIP:-}" ]; then
    # An app's JSON answer: 8 KiB of records, a file the upstream serves
    # with its length and a strong ETag (run as root, nginx reads it as
    # nobody: the work directory must let it through).
    chmod 711 "$work"
    mkdir -p "$work/app"
    python3 -c 'import json; print(json.dumps([{"id": i, "name": f"item {i}", "price": i * 3 % 97, "tags": ["a", "b"]} for i in range(150)]))' > "$work/app/data.json"
    chmod -R a+rX "$work/app"
    sed -e "s|location = / { default_type text/plain; return 200 'Hello World'; }|location = / { default_type application/json; root $work/app; try_files /data.json =404; }|" \
        "$PEERS/nginx.conf" > "$work/up-template.conf"
    export UPSTREAM_CONF=$work/up-template.conf
fi
start_upstream 3003 "${on_load[@]}"
nginx_conf_for "$PEERS/nginx-proxy.conf" "$NCPU" 3003 > "$work/px.conf"
proxy_config "$work/coreserve.toml" 3003
if [ -n "${GZIP:-}" ]; then
    sed -i -e 's|^http {|http {\n    gzip on; gzip_comp_level 1; gzip_min_length 256; gzip_types application/json; gzip_vary on;|' "$work/px.conf"
    printf 'gzip = true\ngzip-level = %s\n' "${CS_GZIP_LEVEL:-2}" >> "$work/coreserve.toml"
fi

results=$work/results
: > "$results"
echo "$LAYOUT: $NCPU shards/workers proxying to one nginx worker, ${GZIP:+an 8 KiB JSON gzipped, }${RATE:+open loop at $RATE req/s, }$CONNS connections, $DURATION per run"
cpus=()
if [ "$LAYOUT" = pinned ]; then cpus=(--cpus "$SERVER_CPU"); fi
interleaved "$ROUNDS" "$work/px/" "$work/px.conf" "${cpus[@]}"

echo "medians over $ROUNDS rounds:"
names=()
for spec in $BINS nginx; do names+=("${spec%%=*}"); done
medians "$results" "${names[@]}"
