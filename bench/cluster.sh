#!/usr/bin/env bash
# What a Node cluster user compares: the same hello-world Node app run on
# every core three ways, rounds interleaved, under wrk with every core busy
# (the servers, the apps and wrk share the CPUs; nothing pinned):
#   coreserve   coreserve with N shards running N app instances ([[app]])
#               and proxying to them over TCP (listen = "port", the default);
#   coreserve-unix  the same with the instances on Unix sockets (listen = "unix");
#   cluster     Node's cluster module, N workers (bench/peers/cluster.js);
#   nginx       nginx with N workers proxying (keep-alive pool) to N app
#               processes started by hand, on TCP ports;
#   nginx-unix  the same with the app processes on Unix sockets.
# N = the number of CPUs. Per setup: req/s, p50 and p99 (wrk), and the CPU
# per request of everything it runs (proxy and app processes, every thread,
# from /proc), with the system calls per request of all of it.
#
#   bench/cluster.sh [ROUNDS]               # 3 rounds of 5 s
#   SETUPS="coreserve nginx" bench/cluster.sh   # only some of the setups
#   OUT=bench/results/DIR bench/cluster.sh  # also README.md (table) and cluster.svg (plot)
#
# Needs node, wrk, nginx and perf (apt-get install -y nodejs wrk nginx
# linux-perf) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROUNDS=${1:-3}
DURATION=${DURATION:-5s}
N=${N:-$(nproc)}
SETUPS=${SETUPS:-coreserve coreserve-unix cluster nginx nginx-unix}
SYSCALLS="recvfrom sendto read write writev readv io_uring_enter membarrier epoll_wait epoll_pwait futex"
APP=$PWD/$PEERS/hello.js

load() { wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$1"; }

# run_one NAME PORT PID...: warm up, then measure with every PID counted.
run_one() {
    local name=$1 port=$2; shift 2
    local url="http://127.0.0.1:$port/"
    wrk -t1 -c"$CONNS" -d2s "$url" > /dev/null
    measured "$name" load "$url" "$@"
}

# descendants PID: the process and every process below it.
descendants() {
    local p
    echo "$1"
    for p in $(pgrep -P "$1"); do descendants "$p"; done
}

# coreserve_conf LISTEN: coreserve's config with the apps on LISTEN ("port" or "unix").
coreserve_conf() {
    cat <<TOML
[[app]]
name = "hello"
command = ["node", "$APP"]
instances = $N
listen = "$1"

[[route]]
path = "/"
handler = "proxy"
upstream = "hello"
TOML
}
coreserve_conf port > "$work/coreserve.toml"
coreserve_conf unix > "$work/coreserve-unix.toml"

# nginx in front of N app processes: bench/peers/nginx-proxy.conf (its
# keep-alive pool and headers) with N workers and N servers, on ports 3011..
# (nginx) or Unix sockets app-1.sock.. in $work (nginx-unix).
# nginx_conf SERVER...: that config with these upstream servers.
nginx_conf() {
    local servers="" s
    for s in "$@"; do servers+="        server ${s//\//\\/};\\n"; done
    sed -e "s/worker_processes 1;/worker_processes $N;/" \
        -e "s/^        server 127.0.0.1:3003;\$/${servers%\\n}/" "$PEERS/nginx-proxy.conf"
}
mkdir -p "$work/px/logs"
# shellcheck disable=SC2046
nginx_conf $(for i in $(seq "$N"); do echo "127.0.0.1:$((3010 + i))"; done) > "$work/nginx.conf"
# shellcheck disable=SC2046
nginx_conf $(for i in $(seq "$N"); do echo "unix:$work/app-$i.sock"; done) > "$work/nginx-unix.conf"

results=$work/results
: > "$results"
echo "all-cores: $N app processes behind each, $CONNS connections, $DURATION per run, $ROUNDS rounds"
# one SETUP: start it, measure it, stop it.
one() {
    local pid apps=() i
    case $1 in
    coreserve | coreserve-unix)
        "$BIN" --config "$work/$1.toml" --listen 127.0.0.1:3100 --shards "$N" \
            --metrics-listen off > /dev/null 2> "$work/$1.log" &
        pid=$!; wait_port 3100
        # shellcheck disable=SC2046
        run_one "$1" 3100 $(descendants "$pid") | tee -a "$results"
        stop TERM "$pid"
        ;;
    cluster)
        PORT=3001 WORKERS=$N node "$PEERS/cluster.js" > /dev/null &
        pid=$!; wait_port 3001
        # shellcheck disable=SC2046
        run_one cluster 3001 $(descendants "$pid") | tee -a "$results"
        stop TERM "$pid"
        ;;
    nginx | nginx-unix)
        for i in $(seq "$N"); do
            if [ "$1" = nginx ]; then
                PORT=$((3010 + i)) node "$APP" &
            else
                # nginx's workers run as another user (nobody, when started
                # as root): the socket and its directory must let them in.
                chmod 755 "$work"
                rm -f "$work/app-$i.sock"
                (umask 0 && SOCKET=$work/app-$i.sock exec node "$APP") &
            fi
            apps+=($!)
        done
        for i in $(seq "$N"); do
            if [ "$1" = nginx ]; then
                wait_port $((3010 + i))
            else
                for _ in $(seq 100); do [ -S "$work/app-$i.sock" ] && break; sleep 0.05; done
            fi
        done
        nginx -p "$work/px/" -c "$work/$1.conf" -g 'daemon off;' &
        pid=$!; wait_port 3002
        # shellcheck disable=SC2046
        run_one "$1" 3002 $(descendants "$pid") "${apps[@]}" | tee -a "$results"
        stop QUIT "$pid"
        for i in "${apps[@]}"; do stop TERM "$i"; done
        ;;
    esac
}

for round in $(seq "$ROUNDS"); do
    # shellcheck disable=SC2086
    for setup in $(rotated $((round - 1)) $SETUPS); do
        one "$setup"
    done
done

python3 - "$results" "$N" "$ROUNDS" "${OUT:-}" <<'PYEOF'
import os, re, statistics, sys
path, n, rounds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
names = ["coreserve", "coreserve-unix", "cluster", "nginx", "nginx-unix"]
label = {"coreserve": f"coreserve, {n} shards, {n} app instances (TCP)",
         "coreserve-unix": f"coreserve, {n} shards, {n} app instances (Unix sockets)",
         "cluster": f"Node cluster, {n} workers",
         "nginx": f"nginx, {n} workers, in front of {n} app processes (TCP)",
         "nginx-unix": f"nginx, {n} workers, in front of {n} app processes (Unix sockets)"}
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v or "")
    if not m:
        return float("nan")
    return float(m[1]) * {"us": 1e-3, "ms": 1, "s": 1e3}[m[2]]
rows = {k: [] for k in names}
for line in open(path):
    f = line.split()
    if f and f[0] in rows:
        rows[f[0]].append({"rps": float(f[1]), "us": float(f[3]),
                           "p99": ms(f[6]), "p50": ms(f[-1])})
med = {k: {m: statistics.median(r[m] for r in v) for m in ("rps", "us", "p50", "p99")}
       for k, v in rows.items() if v}
def vs(us):
    return f"{us / med['nginx']['us']:.2f}×" if "nginx" in med else "–"
table = ["| setup | req/s | p50 | p99 | CPU µs/request (everything) | vs nginx |",
         "|---|---|---|---|---|---|"]
for k in names:
    if k in med:
        m = med[k]
        table.append(f"| {label[k]} | {m['rps']:,.0f} | {m['p50']:.2f} ms | {m['p99']:.2f} ms "
                     f"| {m['us']:.2f} | {vs(m['us'])} |")
print(f"medians over {rounds} rounds:")
print("\n".join(table))
if not out:
    sys.exit()
os.makedirs(out, exist_ok=True)
# Three bar charts side by side: req/s, CPU per request, p99.
W, H, pad = 1050, 300, 30
panels = [("requests/s", "rps", "{:,.0f}"), ("CPU µs per request", "us", "{:.1f}"),
          ("p99 latency, ms", "p99", "{:.2f}")]
short = {"coreserve": "cs TCP", "coreserve-unix": "cs unix", "nginx": "nginx TCP",
         "nginx-unix": "nginx unix"}
colors = {"coreserve": "#1f77b4", "coreserve-unix": "#9467bd", "cluster": "#2ca02c",
          "nginx": "#d62728", "nginx-unix": "#ff9896"}
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
       'font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>']
pw = W / len(panels)
for i, (title, key, fmt) in enumerate(panels):
    x0 = i * pw
    top = max(med[k][key] for k in med) or 1
    svg.append(f'<text x="{x0 + pw / 2}" y="20" text-anchor="middle" font-weight="bold">{title}</text>')
    bw = (pw - 2 * pad) / len(med)
    for j, k in enumerate(k for k in names if k in med):
        v = med[k][key]
        h = (H - 100) * v / top
        x = x0 + pad + j * bw
        y = H - 60 - h
        svg.append(f'<rect x="{x + 4:.1f}" y="{y:.1f}" width="{bw - 8:.1f}" height="{h:.1f}" fill="{colors[k]}"/>')
        svg.append(f'<text x="{x + bw / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle">{fmt.format(v)}</text>')
        svg.append(f'<text x="{x + bw / 2:.1f}" y="{H - 44}" text-anchor="middle" font-size="10">{short.get(k, k)}</text>')
svg.append(f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle" fill="#555">'
           f'hello-world Node app on {n} cores; medians of {rounds} interleaved rounds (bench/cluster.sh)</text>')
svg.append("</svg>")
with open(os.path.join(out, "cluster.svg"), "w") as f:
    f.write("\n".join(svg) + "\n")
with open(os.path.join(out, "README.md"), "w") as f:
    f.write(f"# bench/cluster.sh: {rounds} rounds, medians\n\n" + "\n".join(table)
            + "\n\n![req/s, CPU per request and p99](cluster.svg)\n\nEvery run:\n\n```\n"
            + open(path).read() + "```\n")
PYEOF
