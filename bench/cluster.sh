#!/usr/bin/env bash
# What a Node cluster user compares: the same hello-world Node app run on
# every core three ways, rounds interleaved, under wrk with every core busy
# (the servers, the apps and wrk share the CPUs; nothing pinned):
#   coreserve   coreserve with N shards running N app instances ([[app]])
#               and proxying to them;
#   cluster     Node's cluster module, N workers (bench/peers/cluster.js);
#   nginx       nginx with N workers proxying (keep-alive pool) to N app
#               processes started by hand.
# N = the number of CPUs. Per setup: req/s, p50 and p99 (wrk), and the CPU
# per request of everything it runs (proxy and app processes, every thread,
# from /proc), with the system calls per request of all of it.
#
#   bench/cluster.sh [ROUNDS]               # 3 rounds of 5 s
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

cat > "$work/coreserve.toml" <<TOML
[[app]]
name = "hello"
command = ["node", "$APP"]
instances = $N

[[route]]
path = "/"
handler = "proxy"
upstream = "hello"
TOML

# nginx in front of N app processes on ports 3011..: bench/peers/nginx-proxy.conf
# (its keep-alive pool and headers) with N workers and N servers.
servers=""
for i in $(seq "$N"); do servers+="        server 127.0.0.1:$((3010 + i));\\n"; done
mkdir -p "$work/px/logs"
sed -e "s/worker_processes 1;/worker_processes $N;/" \
    -e "s/^        server 127.0.0.1:3003;\$/${servers%\\n}/" "$PEERS/nginx-proxy.conf" > "$work/px.conf"

results=$work/results
: > "$results"
echo "all-cores: $N app processes behind each, $CONNS connections, $DURATION per run, $ROUNDS rounds"
# one SETUP: start it, measure it, stop it.
one() {
    local pid apps=() i
    case $1 in
    coreserve)
        "$BIN" --config "$work/coreserve.toml" --listen 127.0.0.1:3100 --shards "$N" \
            --metrics-listen off > /dev/null 2> "$work/coreserve.log" &
        pid=$!; wait_port 3100
        # shellcheck disable=SC2046
        run_one coreserve 3100 $(descendants "$pid") | tee -a "$results"
        stop TERM "$pid"
        ;;
    cluster)
        PORT=3001 WORKERS=$N node "$PEERS/cluster.js" > /dev/null &
        pid=$!; wait_port 3001
        # shellcheck disable=SC2046
        run_one cluster 3001 $(descendants "$pid") | tee -a "$results"
        stop TERM "$pid"
        ;;
    nginx)
        for i in $(seq "$N"); do
            PORT=$((3010 + i)) node "$APP" &
            apps+=($!)
        done
        for i in $(seq "$N"); do wait_port $((3010 + i)); done
        nginx -p "$work/px/" -c "$work/px.conf" -g 'daemon off;' &
        pid=$!; wait_port 3002
        # shellcheck disable=SC2046
        run_one nginx 3002 $(descendants "$pid") "${apps[@]}" | tee -a "$results"
        stop QUIT "$pid"
        for i in "${apps[@]}"; do stop TERM "$i"; done
        ;;
    esac
}

for round in $(seq "$ROUNDS"); do
    for setup in $(rotated $((round - 1)) coreserve cluster nginx); do
        one "$setup"
    done
done

python3 - "$results" "$N" "$ROUNDS" "${OUT:-}" <<'PYEOF'
import os, re, statistics, sys
path, n, rounds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
names = ["coreserve", "cluster", "nginx"]
label = {"coreserve": f"coreserve, {n} shards, {n} app instances",
         "cluster": f"Node cluster, {n} workers",
         "nginx": f"nginx, {n} workers, in front of {n} app processes"}
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
table = ["| setup | req/s | p50 | p99 | CPU µs/request (everything) | vs nginx |",
         "|---|---|---|---|---|---|"]
for k in names:
    if k in med:
        m = med[k]
        table.append(f"| {label[k]} | {m['rps']:,.0f} | {m['p50']:.2f} ms | {m['p99']:.2f} ms "
                     f"| {m['us']:.2f} | {m['us'] / med['nginx']['us']:.2f}× |")
print(f"medians over {rounds} rounds:")
print("\n".join(table))
if not out:
    sys.exit()
os.makedirs(out, exist_ok=True)
# Three bar charts side by side: req/s, CPU per request, p99.
W, H, pad = 780, 300, 40
panels = [("requests/s", "rps", "{:,.0f}"), ("CPU µs per request", "us", "{:.1f}"),
          ("p99 latency, ms", "p99", "{:.2f}")]
colors = {"coreserve": "#1f77b4", "cluster": "#2ca02c", "nginx": "#d62728"}
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
        svg.append(f'<text x="{x + bw / 2:.1f}" y="{H - 44}" text-anchor="middle">{k}</text>')
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
