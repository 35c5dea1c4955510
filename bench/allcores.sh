#!/usr/bin/env bash
# The all-cores layout (or the pinned one) under wrk: every server with as many shards/workers as
# CPUs, wrk on the same CPUs (nothing pinned by hand), rounds interleaved.
# Per server: req/s, server CPU per request (user+sys of every thread and
# process, from /proc) and system calls per request (perf's syscall
# tracepoints on the server's threads).
#
#   bench/allcores.sh [ROUNDS]                       # coreserve and nginx
#   BINS="old=/tmp/coreserve-old new=target/release/coreserve" bench/allcores.sh 3
#   CONNS=1000 DURATION=5s bench/allcores.sh 3       # many connections
#   PIPELINE=16 bench/allcores.sh 3                  # 16 requests in flight per connection
#   NEWCONN=1 bench/allcores.sh 3                    # a new connection per request
#   LAYOUT=pinned bench/allcores.sh 3                # one shard / worker on CPU 1, wrk on CPU 0
#   URLPATH=/static/1m.bin bench/allcores.sh 3       # a 1 MiB file (also /static/4k.bin)
#   GZIP=1 bench/allcores.sh 3                       # an 8 KiB JSON file, gzipped for a client
#                                                    # sending Accept-Encoding: gzip: coreserve's
#                                                    # static `gzip = true` (level 2), nginx's
#                                                    # `gzip on` (level 1: the same output size)
#
# BINS names the coreserve binaries to compare (NAME=PATH, default
# coreserve=target/release/coreserve); DISPATCH=reuseport picks the other
# dispatch mode. Needs wrk, nginx and perf (apt-get install -y wrk nginx
# linux-perf) and a release build. Prints a line per run, then medians.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROUNDS=${1:-3}
DURATION=${DURATION:-5s}
BINS=${BINS:-coreserve=$BIN}
DISPATCH=${DISPATCH:-master}
PIPELINE=${PIPELINE:-1}
NEWCONN=${NEWCONN:-0}
URLPATH=${URLPATH:-/}
LAYOUT=${LAYOUT:-all-cores}
NCPU=$(nproc)
# pinned: the server alone on SERVER_CPU with one shard/worker, wrk on LOAD_CPU.
on_server=() on_load=()
if [ "$LAYOUT" = pinned ]; then
    NCPU=1
    on_server=(taskset -c "$SERVER_CPU")
    on_load=(taskset -c "$LOAD_CPU")
fi
SYSCALLS="recvfrom sendto read write writev io_uring_enter membarrier futex epoll_wait epoll_pwait accept4 close"

# wrk's Lua: pipelining, or a new connection per request.
cat > "$work/pipeline.lua" <<LUA
init = function(args)
  local r = {}
  for i = 1, $PIPELINE do r[i] = wrk.format() end
  req = table.concat(r)
end
request = function() return req end
LUA
wrk_args=()
if [ "$PIPELINE" -gt 1 ]; then wrk_args=(-s "$work/pipeline.lua"); fi
if [ "$NEWCONN" = 1 ]; then wrk_args=(-H "Connection: close"); fi
if [ -n "${GZIP:-}" ]; then
    wrk_args+=(-H "Accept-Encoding: gzip")
    URLPATH=/static/data.json
fi

# load URL: wrk's report.
load() {
    "${on_load[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "${wrk_args[@]}" "$1"
}

run_one() { # name port pids...
    local name=$1 port=$2; shift 2
    local url="http://127.0.0.1:$port$URLPATH"
    "${on_load[@]}" wrk -t1 -c"$CONNS" -d2s "${wrk_args[@]}" "$url" > /dev/null  # warm-up
    if [ -n "${GZIP:-}" ]; then
        # What the client gets, so that both are seen to compress.
        curl -s -H "Accept-Encoding: gzip" -o "$work/got" -D "$work/got.head" "$url"
        echo "$name: $(grep -ci '^content-encoding: gzip' "$work/got.head" || true) gzip, $(wc -c < "$work/got") body bytes" >&2
    fi
    measured "$name" load "$url" "$@"
}

mkdir -p "$work/nginx/logs" "$work/www"
chmod 755 "$work"  # nginx workers run as www-data and must read the files
head -c 4096 /dev/urandom > "$work/www/4k.bin"
head -c 1048576 /dev/urandom > "$work/www/1m.bin"
sed -e '/worker_cpu_affinity/d' -e "s/worker_processes 1;/worker_processes $NCPU;/" \
    -e "s|/tmp/nginx-anchor/www/|$work/www/|" "$PEERS/nginx.conf" > "$work/nginx.conf"
hello_config "$work/coreserve.toml" "$work/www"
if [ -n "${GZIP:-}" ]; then
    # An app's JSON, as bench/proxy.sh's GZIP mode serves it through the proxy.
    python3 -c 'import json; print(json.dumps([{"id": i, "name": f"item {i}", "price": i * 3 % 97, "tags": ["a", "b"]} for i in range(150)]))' > "$work/www/data.json"
    chmod a+r "$work/www/data.json"
    sed -i -e 's|^http {|http {\n    types { application/json json; } gzip on; gzip_comp_level 1; gzip_min_length 256; gzip_types application/json; gzip_vary on;|' "$work/nginx.conf"
    printf 'gzip = true\n' >> "$work/coreserve.toml"
fi
if [ "$CONNS" -gt 1000 ]; then ulimit -n 65536; fi

results=$work/results
: > "$results"
echo "$LAYOUT: $NCPU shards/workers, wrk -t1 -c$CONNS, pipeline $PIPELINE, new connection $NEWCONN, $DURATION per run"
cpus=()
if [ "$LAYOUT" = pinned ]; then cpus=(--cpus "$SERVER_CPU"); fi
interleaved "$ROUNDS" "$work/nginx/" "$work/nginx.conf" "${cpus[@]}" --dispatch "$DISPATCH"

echo "medians over $ROUNDS rounds:"
names=()
for spec in $BINS nginx; do names+=("${spec%%=*}"); done
medians "$results" "${names[@]}"
