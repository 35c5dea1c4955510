#!/usr/bin/env bash
# HTTPS: coreserve (rustls) against nginx (OpenSSL) with the same
# certificate, protocols (TLS 1.2 and 1.3) and a hello world, rounds
# interleaved. Pinned layout: the server alone on CPU 1 (one shard, one
# worker), coreserve-bench on CPU 0. Per key type (ECDSA P-256, RSA-2048):
#   keepalive   50 connections, one request in flight each
#   full        a new connection per request, a full handshake each (--no-resume)
#   resumed     a new connection per request, resuming the session (tickets)
#   file1m      a 1 MiB file over 10 keep-alive connections (bytes/s)
# Per run: req/s (handshakes/s for full and resumed), the server's CPU per
# request (every thread and process, from /proc), MB/s for file1m.
#
#   bench/tls.sh [ROUNDS]          # both key types, every workload
#   KEYS=ecdsa WORKLOADS="full resumed" bench/tls.sh 3
#   LAYOUT=all-cores bench/tls.sh 3   # shards = workers = CPUs, the load on the same CPUs
#
# Needs nginx, openssl and a release build of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROUNDS=${1:-3}
DURATION=${DURATION:-5s}
KEYS=${KEYS:-ecdsa rsa}
WORKLOADS=${WORKLOADS:-keepalive full resumed file1m}
LOADGEN=target/release/coreserve-bench
LAYOUT=${LAYOUT:-pinned}
# pinned: one shard / worker on SERVER_CPU, the load on LOAD_CPU. all-cores:
# as many as CPUs, the load spread over the same CPUs, nothing pinned by hand.
NCPU=1 on_server=(taskset -c "$SERVER_CPU") on_load=(taskset -c "$LOAD_CPU") load_cpus=$LOAD_CPU
cpus=(--cpus "$SERVER_CPU")
if [ "$LAYOUT" = all-cores ]; then
    NCPU=$(nproc) on_server=() on_load=() load_cpus=0-$(($(nproc) - 1)) cpus=()
fi

mkdir -p "$work/nginx/logs" "$work/www"
chmod 755 "$work"
head -c 1048576 /dev/urandom > "$work/www/1m.bin"
for k in $KEYS; do
    case $k in
        ecdsa) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
        rsa) newkey=(-newkey rsa:2048) ;;
    esac
    openssl req -x509 "${newkey[@]}" -nodes -days 7 -subj /CN=bench.test \
        -addext subjectAltName=DNS:bench.test -keyout "$work/$k.key" -out "$work/$k.pem" 2> /dev/null
done

# cfg KEY: the two servers' configurations for that certificate.
cfg() {
    cat > "$work/coreserve.toml" <<TOML
[server]
listen = ["127.0.0.1:3480"]

[tls]
listen = ["127.0.0.1:3443"]

[[tls.certificate]]
chain = "$work/$1.pem"
key = "$work/$1.key"

[[route]]
path = "/"
handler = "respond"
body = "Hello World"
content-type = "text/plain"

[[route]]
path = "/static/"
handler = "static"
root = "$work/www"
TOML
    cat > "$work/nginx.conf" <<NGINX
worker_processes $NCPU;
pid nginx.pid;
error_log logs/error.log warn;
events { worker_connections 10240; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path cb;
    proxy_temp_path p;
    fastcgi_temp_path f;
    uwsgi_temp_path u;
    scgi_temp_path s;
    server {
        listen 127.0.0.1:3444 ssl;
        ssl_certificate $work/$1.pem;
        ssl_certificate_key $work/$1.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        location = / { default_type text/plain; return 200 'Hello World'; }
        location /static/ { alias $work/www/; }
    }
}
NGINX
}

# one NAME PORT WORKLOAD PID...: a run of coreserve-bench; prints the row.
one() {
    local name=$1 port=$2 w=$3; shift 3
    local args=(-c 50 -d "$DURATION" -w 0s --cpus "$load_cpus" --json "$work/run.json")
    local url="https://127.0.0.1:$port/"
    case $w in
        full) args+=(--new-connection --no-resume) ;;
        resumed) args+=(--new-connection) ;;
        file1m) args=(-c 10 -d "$DURATION" -w 0s --cpus "$load_cpus" --json "$work/run.json")
                url="https://127.0.0.1:$port/static/1m.bin" ;;
    esac
    # warm-up, not measured
    "${on_load[@]}" "$LOADGEN" "$url" "${args[@]:0:2}" -d 1s -w 0s --cpus "$load_cpus" \
        $( [ "$w" = full ] && echo --new-connection --no-resume ) > /dev/null 2>&1 || true
    local t0 t1
    t0=$(ticks "$@")
    "${on_load[@]}" "$LOADGEN" "$url" "${args[@]}" > /dev/null 2>&1 || true
    t1=$(ticks "$@")
    python3 - "$work/run.json" "$name" "$w" $((t1 - t0)) "$(getconf CLK_TCK)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
name, w, ticks, hz = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
n = max(r["responses"], 1)
errors = sum(v for v in r["errors"].values()) if isinstance(r["errors"], dict) else 0
print(f"{w:<10} {name:<10} {r['requests_per_s']:9.0f} req/s {ticks / hz * 1e6 / n:8.2f} us/req "
      f"{r['bytes_per_s'] / 1e6:8.1f} MB/s p99 {dict(r['latency']['percentiles'])[99.0]:.2f}ms"
      + (f" errors {errors}" if errors else ""))
PY
}

echo "$LAYOUT: $NCPU shards/workers, coreserve-bench on CPUs $load_cpus, $DURATION per run, $ROUNDS rounds"
for k in $KEYS; do
    cfg "$k"
    : > "$work/results"
    for round in $(seq "$ROUNDS"); do
        for w in $WORKLOADS; do
            # Each round starts with the other server (lib.sh, `rotated`).
            for server in $(rotated $((round - 1)) coreserve nginx); do
                if [ "$server" = coreserve ]; then
                    "${on_server[@]}" "$BIN" --config "$work/coreserve.toml" --shards "$NCPU" "${cpus[@]}" \
                        --metrics-listen off > /dev/null 2> "$work/coreserve.log" &
                    pid=$!; wait_port 3480
                    one coreserve 3443 "$w" "$pid" | tee -a "$work/results"
                    stop TERM "$pid"
                else
                    "${on_server[@]}" nginx -p "$work/nginx/" -c "$work/nginx.conf" -g 'daemon off;' &
                    pid=$!; sleep 0.3
                    # shellcheck disable=SC2046
                    one nginx 3444 "$w" "$pid" $(pgrep -P "$pid") | tee -a "$work/results"
                    stop QUIT "$pid"
                fi
            done
        done
    done
    echo "$k: medians over $ROUNDS rounds"
    python3 - "$work/results" $WORKLOADS <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for w in sys.argv[2:]:
    for s in ("coreserve", "nginx"):
        mine = [r for r in rows if r[0] == w and r[1] == s]
        if mine:
            med = lambda i: statistics.median(float(r[i]) for r in mine)
            print(f"  {w:<10} {s:<10} {med(2):9.0f} req/s {med(4):8.2f} us/req {med(6):8.1f} MB/s")
PY
done
