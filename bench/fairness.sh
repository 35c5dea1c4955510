#!/usr/bin/env bash
# Whether one client that never pauses keeps its shard from the others:
# while a flood runs, fresh connections each ask for `/` once and their
# answer times are taken (p50 and worst). Two floods: one connection
# pipelining `GET /` without pause (2000 requests per write, every answer
# read as it comes), and two connections uploading 900 KB bodies back to
# back to a route that answers them. coreserve (2 shards) and nginx (2
# workers, keepalive_requests raised so it does not end the flood's
# connection) in turn, each on all CPUs.
#
#   bench/fairness.sh                       # target/release/coreserve and nginx
#   BASE=/tmp/old bench/fairness.sh         # another build too, first
#   CORESERVE_BIN=/tmp/new bench/fairness.sh
#
# Needs python3 and nginx. A benchmark, not a test: it prints figures.
set -euo pipefail
. bench/lib.sh
FLOOD_SECS=${FLOOD_SECS:-4}

cat > "$work/flood.py" <<'PY'
import socket, sys, threading, time
port, kind, secs = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
if kind == "pipelined":
    batch = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 2000
else:
    body = b"x" * 900_000
    batch = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
def one():
    s = socket.create_connection(("127.0.0.1", port))
    end = time.time() + secs
    def drain():
        while time.time() < end and s.recv(1 << 20):
            pass
    threading.Thread(target=drain, daemon=True).start()
    while time.time() < end:
        s.sendall(batch)
threads = [threading.Thread(target=one) for _ in range(1 if kind == "pipelined" else 2)]
[t.start() for t in threads]; [t.join() for t in threads]
PY
cat > "$work/probe.py" <<'PY'
import socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
took = []; end = time.time() + secs
while time.time() < end:
    s = socket.create_connection(("127.0.0.1", port)); s.settimeout(30)
    t = time.time()
    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    s.recv(4096); took.append(time.time() - t); s.close()
    time.sleep(0.02)
took.sort()
print(f"{len(took):4d} answered, p50 {took[len(took)//2]*1000:8.1f} ms, worst {took[-1]*1000:8.1f} ms")
PY
cat > "$work/cs.toml" <<'TOML'
[limits]
max-body-bytes = "2m"
[[route]]
path = "/"
handler = "respond"
body = "hello"
TOML
mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 2;
pid nginx.pid;
error_log logs/error.log warn;
events { worker_connections 10240; }
http {
    access_log off;
    keepalive_requests 10000000;
    client_max_body_size 2m;
    client_body_temp_path cb; proxy_temp_path p; fastcgi_temp_path f; uwsgi_temp_path u; scgi_temp_path s;
    server { listen 127.0.0.1:18198; location / { default_type text/plain; return 200 'hello'; } }
}
NGINX

# measure NAME PORT: both floods against the server on PORT.
measure() {
    for kind in pipelined upload; do
        python3 "$work/flood.py" "$2" "$kind" "$FLOOD_SECS" & local flood=$!
        sleep 1
        printf '%-30s %-10s' "$1" "$kind"
        python3 "$work/probe.py" "$2" "$((FLOOD_SECS - 2))"
        wait "$flood"
    done
}

for bin in ${BASE:-} "$BIN"; do
    "$bin" -c "$work/cs.toml" --listen 127.0.0.1:18197 --shards 2 --metrics-listen off \
        > "$work/cs.log" 2>&1 & pid=$!
    wait_port 18197 || { cat "$work/cs.log"; exit 1; }
    measure "$bin" 18197
    stop TERM "$pid"
done
nginx -p "$work/nginx/" -c "$work/nginx/nginx.conf" -g 'daemon off;' & pid=$!
wait_port 18198
measure nginx 18198
stop QUIT "$pid"
