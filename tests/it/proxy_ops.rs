//! The reverse proxy in operation: connection pooling and idle timeouts
//! (against the fixture and a real Node app), balancing, clients that
//! abort, per-upstream metrics, the access log's upstream fields, and
//! SIGHUP with new servers.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::config::Scratch;
use crate::proxy::{contains, simple, Proxy};
use crate::upstream::{dead_addr, ok, Gate, NodeApp, Reply, Request, Upstream};
use crate::util::{connect, connect_from, open_fds, Reader, WAIT};

const GET: &str = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// Send a request on an idle keep-alive connection to `up` just as a
/// drain (SIGTERM) shuts that connection: the one shard stops for two
/// seconds, the drain's word and then the request wait for it, and the
/// drain, first, shuts the idle connection the request has come on (the
/// shard reads what came before the shutdown). Reuseport: its drain shuts
/// the idle connections at once (master dispatch's first lets the shard
/// take what the master sent). The proxy (in scratch directory `name`),
/// the client, and its reader.
fn overtake_a_drains_close(
    name: &str,
    up: &Upstream,
    flags: &[&str],
) -> (Proxy, TcpStream, Reader) {
    let mut args = vec!["--shards", "1", "--dispatch", "reuseport"];
    args.extend_from_slice(flags);
    let proxy = Proxy::start_with(name, &simple(&[up.server()], "", ""), &args);
    let mut a = connect(proxy.addr());
    let mut r = Reader::new(&a);
    a.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(r.next(false).status, 200);
    let mut stall = connect(proxy.addr());
    stall
        .write_all(b"GET /__fault/stall/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    proxy.server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    a.write_all(GET.as_bytes()).unwrap();
    (proxy, a, r)
}

/// A request on its way as a drain shut its idle keep-alive connection:
/// served, as a static one is. The proxy took the end of stream the
/// shutdown made for its client's leaving, and answered nothing, logged
/// 499, though the upstream ran the request (10 to 45 a stop under load).
#[test]
fn a_request_that_overtakes_a_drains_close_is_proxied_and_answered() {
    let up = Upstream::start(|_| Reply::slow(Duration::from_millis(100), "served"));
    let (_proxy, _a, mut r) = overtake_a_drains_close("proxy-overtakes-drain", &up, &[]);
    let res = r.next(false);
    assert_eq!((res.status, res.text().as_str()), (200, "served"));
    assert_eq!(res.header("connection"), Some("close"));
    assert_eq!(up.requests().len(), 2);
}

/// Such a request is still cut at the drain's deadline, when its upstream
/// has not answered by then: its watch for the client's end, which can no
/// longer take an end of stream for one, sees the cut.
#[test]
fn a_request_that_overtook_a_drains_close_is_cut_at_its_deadline() {
    let up = Upstream::start(|req| {
        if req.target == "/first" {
            Reply::ok("first")
        } else {
            Reply::slow(Duration::from_secs(30), "late")
        }
    });
    let (mut proxy, _a, _r) =
        overtake_a_drains_close("proxy-overtook-drain", &up, &["--drain-timeout", "1s"]);
    up.wait_for_requests(2);
    // At its deadline (1 s after the stall), not its upstream's answer.
    let status = proxy.server.wait(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[test]
fn keepalive_reuses_one_upstream_connection() {
    let up = Upstream::start(ok("pooled"));
    let proxy = Proxy::start("proxy-pool", &simple(&[up.server()], "keepalive = 32", ""));
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    for _ in 0..10 {
        s.write_all(GET.as_bytes()).unwrap();
        assert_eq!(r.next(false).text(), "pooled");
    }
    // Other client connections, one after another, on the same shard.
    for _ in 0..5 {
        assert_eq!(proxy.get(GET).text(), "pooled");
    }
    assert_eq!(up.accepted(), 1, "{:?}", up.connections());
    assert_eq!(up.connections()[0].requests.len(), 15);
}

/// More requests in flight than `keepalive` open more connections; they
/// are kept for the next burst (`OVERFLOW_GRACE`, 1 s), then all but
/// `keepalive` of them are closed.
#[test]
fn a_burst_beyond_keepalive_keeps_its_connections_for_the_next_then_lets_them_go() {
    // Replies wait for the gate: the first burst's six requests are all in
    // flight at once, on six connections.
    let gate = Gate::new();
    let held = gate.clone();
    let up = Upstream::start(move |_| Reply::new().wait(&held).then(Reply::ok("late")));
    let proxy = Proxy::start(
        "proxy-overflow",
        &simple(&[up.server()], "keepalive = 2", ""),
    );
    let addr = proxy.addr();
    let burst = || -> Vec<_> {
        (0..6)
            .map(|_| std::thread::spawn(move || crate::util::get(addr, GET).text()))
            .collect()
    };
    let first = burst();
    up.wait_for_requests(6);
    gate.open();
    for c in first {
        assert_eq!(c.join().unwrap(), "late");
    }
    assert_eq!(up.accepted(), 6, "six requests in flight, six connections");
    // At once again: the six connections came back to the pool and serve.
    for c in burst() {
        assert_eq!(c.join().unwrap(), "late");
    }
    assert_eq!(up.accepted(), 6, "the second burst made connections again");
    // Past the grace (and the shard's sweep, once a second), four go.
    let open = |u: &Upstream| u.connections().iter().filter(|c| !c.peer_closed).count();
    assert!(
        up.wait_until(|u| open(u) == 2),
        "{} upstream connections open, keepalive 2",
        open(&up)
    );
    assert_eq!(proxy.get(GET).text(), "late");
}

#[test]
fn keepalive_zero_opens_a_connection_per_request() {
    let up = Upstream::start(ok("fresh"));
    let proxy = Proxy::start(
        "proxy-no-pool",
        &simple(&[up.server()], "keepalive = 0", ""),
    );
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    for _ in 0..10 {
        s.write_all(GET.as_bytes()).unwrap();
        assert_eq!(r.next(false).text(), "fresh");
    }
    assert_eq!(up.accepted(), 10);
    assert!(up.connections().iter().all(|c| c.requests.len() == 1));
    // Each is closed after its response.
    assert!(
        up.wait_until(|u| u.connections().iter().all(|c| c.peer_closed)),
        "{:?}",
        up.connections()
    );
}

#[test]
fn an_idle_pooled_connection_is_closed_after_idle_timeout() {
    let up = Upstream::start(ok("idle"));
    let proxy = Proxy::start(
        "proxy-idle",
        &simple(&[up.server()], "idle-timeout = \"300ms\"", ""),
    );
    assert_eq!(proxy.get(GET).text(), "idle");
    assert!(
        up.wait_until(|u| u.connections()[0].peer_closed),
        "the idle connection stayed open"
    );
    assert_eq!(proxy.get(GET).text(), "idle");
    assert_eq!(up.accepted(), 2);
}

/// Node closes an idle keep-alive connection after its keepAliveTimeout
/// (5 s by default; Node 20 closes it at 6 s, a second after the timeout).
/// Requests spaced around that must never meet a connection Node is
/// closing: the pool's idle-timeout (4 s by default) drops it first. The
/// gaps straddle both 5 and 6 s: a pool that keeps the connection gets a
/// dead one at the last gaps (and races Node at the others). POST, so that
/// a proxy cannot hide the race by retrying.
#[test]
fn node_requests_spaced_around_its_keepalive_timeout_never_fail() {
    let Some(app) = NodeApp::tcp() else { return };
    let proxy = Proxy::start("proxy-node-idle", &simple(&[app.server()], "", ""));
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    for (i, gap) in [0, 5000, 5500, 6000, 6500].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(gap));
        s.write_all(
            format!("POST /race/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
                .as_bytes(),
        )
        .unwrap();
        let resp = r.next(false);
        assert_eq!(resp.status, 200, "request {i} after {gap} ms: {resp:?}");
        let json = resp.text();
        assert!(json.contains("\"method\":\"POST\""), "{json}");
        assert!(json.contains(&format!("\"url\":\"/race/{i}\"")), "{json}");
        assert!(json.contains("\"bodyLength\":3"), "{json}");
    }
}

#[test]
fn a_node_app_over_tcp_and_a_unix_socket_with_server_sent_events() {
    let Some(app) = NodeApp::tcp() else { return };
    let dir = Scratch::new("proxy-node-unix");
    let sock = dir.path("app.sock");
    let Some(_unix) = NodeApp::unix(&sock) else {
        return;
    };
    let toml = crate::proxy::group("tcp", &[app.server()], "")
        + &crate::proxy::group("unix", &[format!("unix:{sock}")], "")
        + &crate::proxy::route("/", "tcp", "")
        + &crate::proxy::route("/u/", "unix", "");
    let proxy = Proxy::start("proxy-node", &toml);

    let r = proxy.get("GET /hello HTTP/1.1\r\nHost: node.test\r\nX-Test: 1\r\n\r\n");
    let json = r.text();
    assert_eq!(r.header("content-type"), Some("application/json"));
    for part in [
        "\"url\":\"/hello\"",
        "\"host\":\"node.test\"",
        "\"x-test\":\"1\"",
        "\"x-forwarded-for\":\"127.0.0.1\"",
    ] {
        assert!(json.contains(part), "{part} not in {json}");
    }
    let r = proxy.get("GET /u/sock HTTP/1.1\r\nHost: node.test\r\n\r\n");
    assert!(r.text().contains("\"url\":\"/u/sock\""), "{}", r.text());

    // Five events 100 ms apart: the first is here well before the last
    // was even sent (a proxy that buffers delivers them all at once).
    let s = connect(proxy.addr());
    (&s).write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = Reader::new(&s);
    assert_eq!(r.head().header("content-type"), Some("text/event-stream"));
    let mut got = Vec::new();
    while !contains(&got, b"data: 1\n\n") {
        got.extend(r.chunk().expect("the stream ended early"));
    }
    let first = Instant::now();
    while let Some(c) = r.chunk() {
        got.extend(c);
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        "data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\ndata: 5\n\n"
    );
    assert!(
        first.elapsed() >= Duration::from_millis(250),
        "the events came together, {:?} apart",
        first.elapsed()
    );
}

#[test]
fn ten_thousand_aborted_clients_leak_no_descriptors() {
    let up = Upstream::start(|_| Reply::slow(Duration::from_millis(50), "late"));
    let keepalive = 8;
    let proxy = Proxy::start(
        "proxy-abort",
        &simple(
            &[up.server()],
            &format!("keepalive = {keepalive}\nidle-timeout = \"1s\""),
            "",
        ),
    );
    assert_eq!(proxy.get(GET).text(), "late");
    let pid = proxy.server.pid();
    let baseline = open_fds(pid);
    let addr = proxy.addr();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..625 {
                    let s = TcpStream::connect(addr).expect("connect");
                    let _ = (&s).write_all(
                        format!("GET /abort/{t}/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                    );
                    // Half close (FIN), half abort (RST); none waits.
                    if i % 2 == 1 {
                        crate::upstream::reset(&s);
                    }
                    drop(s);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // It still serves, and its descriptors come back (pooled upstream
    // connections allowed for).
    assert_eq!(proxy.get(GET).text(), "late");
    let deadline = Instant::now() + WAIT;
    let mut now = open_fds(pid);
    while now > baseline + keepalive && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        now = open_fds(pid);
    }
    assert!(
        now <= baseline + keepalive,
        "{now} descriptors open, {baseline} before the aborted clients"
    );
    // And the upstream sees every connection closed once the pool's
    // idle-timeout has passed.
    assert!(
        up.wait_until(|u| u.connections().iter().all(|c| c.peer_closed)),
        "{} upstream connections still open",
        up.connections().iter().filter(|c| !c.peer_closed).count()
    );
}

/// 200 `name`; `/hold` waits for the gate first.
fn named(
    name: &'static str,
    gate: &Gate,
) -> impl Fn(&crate::upstream::Request) -> Reply + Send + Sync {
    let gate = gate.clone();
    move |req| {
        if req.target == "/hold" {
            Reply::new().wait(&gate).then(Reply::ok(name))
        } else {
            Reply::ok(name)
        }
    }
}

#[test]
fn round_robin_alternates_and_least_conn_avoids_a_busy_server() {
    let gate = Gate::new();
    let a = Upstream::start(named("A", &gate));
    let b = Upstream::start(named("B", &gate));
    let servers = [a.server(), b.server()];
    let rr = Proxy::start(
        "proxy-rr",
        &simple(&servers, "balance = \"round-robin\"", ""),
    );
    let got: Vec<String> = (0..6).map(|_| rr.get(GET).text()).collect();
    assert_eq!(got.iter().filter(|n| *n == "A").count(), 3, "{got:?}");
    assert!(got.windows(2).all(|w| w[0] != w[1]), "{got:?}");

    let lc = Proxy::start(
        "proxy-least-conn",
        &simple(&servers, "balance = \"least-conn\"", ""),
    );
    let held = connect(lc.addr());
    (&held)
        .write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let busy = |u: &Upstream| u.requests().iter().any(|q| q.target == "/hold");
    assert!(a.wait_until(|_| busy(&a) || busy(&b)));
    let idle = if busy(&a) { "B" } else { "A" };
    for _ in 0..4 {
        assert_eq!(lc.get(GET).text(), idle, "sent to the busy server");
    }
    gate.open();
    let other = if idle == "A" { "B" } else { "A" };
    assert_eq!(Reader::new(&held).next(false).text(), other);
}

/// nginx's `server` parameters: a server of `weight=3` gets three requests
/// for each the other gets, in smooth turns; a `backup` gets none while
/// another server can take them, and all of them once none can.
#[test]
fn weights_share_the_requests_and_a_backup_waits_for_the_others() {
    let a = Upstream::start(ok("A"));
    let b = Upstream::start(ok("B"));
    let spare = Upstream::start(ok("S"));
    let servers = [
        format!("{} weight=3", a.server()),
        b.server(),
        format!("{}  backup", spare.server()),
    ];
    let proxy = Proxy::start(
        "proxy-weights",
        // No pooled connection outlives its server's listener.
        &simple(&servers, "keepalive = 0\nfail-timeout = \"10s\"", ""),
    );
    let got: Vec<String> = (0..8).map(|_| proxy.get(GET).text()).collect();
    assert_eq!(got, ["A", "A", "B", "A", "A", "A", "B", "A"]);
    assert_eq!(spare.accepted(), 0);
    // Both others gone: the backup answers, the first request too.
    drop((a, b));
    for _ in 0..4 {
        assert_eq!(proxy.get(GET).text(), "S");
    }
    // A backup alone is no group.
    let dir = Scratch::new("proxy-weights-check");
    let conf = dir.write(
        "all-backups.toml",
        simple(&[format!("{} backup", spare.server())], "", ""),
    );
    let out = crate::util::command()
        .args(["--check", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("upstream[1].servers: are all backups"),
        "{err}"
    );
}

/// `ip-hash` (nginx's `ip_hash`): every request from one client goes to
/// one server, on both shards (the connections alternate between them),
/// and the clients of one IPv4 network with it; networks spread over the
/// servers; clients of a server that went away go to the other.
#[test]
fn ip_hash_sends_a_clients_requests_to_one_server_from_every_shard() {
    let a = Upstream::start(ok("A"));
    let b = Upstream::start(ok("B"));
    let servers = [a.server(), b.server()];
    let hashed = |name: &str, servers: &[String]| {
        Proxy::start_with(
            name,
            &simple(servers, "balance = \"ip-hash\"\nkeepalive = 0", ""),
            &["--shards", "2"],
        )
    };
    let proxy = hashed("proxy-ip-hash", &servers);
    // A request to `proxy` on a new connection from `source` (127/8 is all
    // loopback).
    let send = |proxy: &Proxy, source: &str| {
        let mut s = connect_from(proxy.addr(), source.parse().unwrap());
        s.write_all(GET.as_bytes()).unwrap();
        Reader::new(&s).next(false).text()
    };
    let from = |source: &str| send(&proxy, source);
    let mut seen = Vec::new();
    for net in 1..=24 {
        let first = from(&format!("127.0.{net}.1"));
        for host in [1, 2, 77, 1, 254] {
            assert_eq!(
                from(&format!("127.0.{net}.{host}")),
                first,
                "127.0.{net}.{host}"
            );
        }
        seen.push(first);
    }
    assert!(seen.contains(&"A".to_string()), "{seen:?}");
    assert!(seen.contains(&"B".to_string()), "{seen:?}");
    // The same group with A's place taken by an address nothing listens
    // on: A's clients go to B (a connection refused is tried again).
    let dead = dead_addr().to_string();
    let without_a = hashed("proxy-ip-hash-dead", &[dead, b.server()]);
    for net in 1..=24 {
        assert_eq!(
            send(&without_a, &format!("127.0.{net}.9")),
            "B",
            "127.0.{net}.9"
        );
    }
    drop(a);
}

/// A server one shard takes out is skipped by the other too: a client of
/// `ip-hash` whose server failed a request goes to its next best from
/// both shards, not back and forth between the two for `fail-timeout`.
#[test]
fn a_server_one_shard_takes_out_is_skipped_by_every_shard() {
    let a = Upstream::start(|req: &Request| match req.target.as_str() {
        "/fail" => Reply::new().reset(),
        _ => Reply::ok_to(req, "A"),
    });
    let b = Upstream::start(ok("B"));
    let proxy = Proxy::start_with(
        "proxy-shared-rest",
        &simple(
            &[a.server(), b.server()],
            "balance = \"ip-hash\"\nkeepalive = 0\nmax-fails = 1\nfail-timeout = \"30s\"",
            "",
        ),
        &["--shards", "2"],
    );
    let ask = |source: std::net::IpAddr, path: &str| {
        let mut s = connect_from(proxy.addr(), source);
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        Reader::new(&s).next(false).text()
    };
    // A client whose server is A, from both shards (connections alternate).
    let client = (1..=64)
        .map(|n| std::net::IpAddr::from([127, 0, n, 1]))
        .find(|&c| (0..4).all(|_| ask(c, "/") == "A"))
        .expect("some network's server is A");
    // A resets it: tried again on B, and A taken out by that shard.
    assert_eq!(ask(client, "/fail"), "B");
    // The other shard hears of it through the master, well within this.
    std::thread::sleep(Duration::from_millis(300));
    let now: Vec<String> = (0..8).map(|_| ask(client, "/")).collect();
    assert!(now.iter().all(|s| s == "B"), "{now:?}");
}

/// A request in flight to a server when it fails, which then ends well (a
/// long poll), does not bring the server back before `fail-timeout`: only
/// one sent after the failure would.
#[test]
fn a_request_older_than_a_failure_does_not_end_the_servers_rest() {
    let a = Upstream::start(|req: &Request| match req.target.as_str() {
        "/fail" => Reply::new().reset(),
        "/poll" => Reply::new()
            .sleep(Duration::from_millis(500))
            .then(Reply::ok_to(req, "A")),
        _ => Reply::ok_to(req, "A"),
    });
    let b = Upstream::start(ok("B"));
    let proxy = Proxy::start(
        "proxy-old-success",
        &simple(
            &[a.server(), b.server()],
            "balance = \"ip-hash\"\nkeepalive = 0\nfail-timeout = \"30s\"",
            "",
        ),
    );
    let send = |source: std::net::IpAddr, path: &str| {
        let mut s = connect_from(proxy.addr(), source);
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s
    };
    let ask = |source, path| Reader::new(&send(source, path)).next(false).text();
    let client = (1..=64)
        .map(|n| std::net::IpAddr::from([127, 0, n, 1]))
        .find(|&c| ask(c, "/") == "A")
        .expect("some network's server is A");
    let poll = send(client, "/poll");
    a.wait_until(|u| u.requests().iter().any(|r| r.target == "/poll"));
    assert_eq!(ask(client, "/fail"), "B");
    assert_eq!(Reader::new(&poll).next(false).text(), "A");
    let now: Vec<String> = (0..4).map(|_| ask(client, "/")).collect();
    assert!(now.iter().all(|s| s == "B"), "{now:?}");
}

/// One per-upstream-server sample of group `app`: see `group_sample`.
fn upstream_sample(s: &prometheus_parse::Scrape, name: &str, server: &str) -> f64 {
    group_sample(s, name, "app", server)
}

/// One per-upstream-server sample: labels `upstream` and `server`, merged
/// over shards (`shard="all"`) if there is a shard label; 0 if absent.
pub(crate) fn group_sample(
    s: &prometheus_parse::Scrape,
    name: &str,
    group: &str,
    server: &str,
) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| {
            x.metric == name
                && x.labels.get("upstream") == Some(group)
                && x.labels.get("server") == Some(server)
                && x.labels.get("shard").is_none_or(|s| s == "all")
        })
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .collect();
    assert!(found.len() <= 1, "{name}{{server={server}}}: {found:?}");
    found.first().copied().unwrap_or(0.0)
}

#[test]
fn upstream_metrics_count_requests_failures_and_retries() {
    let live = Upstream::start(ok("m"));
    let dead = dead_addr().to_string();
    let proxy = Proxy::start(
        "proxy-metrics",
        &simple(
            &[dead.clone(), live.server()],
            "max-fails = 1\nfail-timeout = \"10s\"",
            "",
        ),
    );
    for _ in 0..5 {
        assert_eq!(proxy.get(GET).status, 200);
    }
    let s = crate::metrics::scrape(&proxy.server);
    let live = live.server();
    assert_eq!(
        upstream_sample(&s, "coreserve_upstream_requests_total", &live),
        5.0
    );
    assert_eq!(
        upstream_sample(&s, "coreserve_upstream_failures_total", &dead),
        1.0
    );
    // The attempt that could not connect is a request too: failures are
    // never more than requests.
    assert_eq!(
        upstream_sample(&s, "coreserve_upstream_requests_total", &dead),
        1.0
    );
    assert_eq!(
        upstream_sample(&s, "coreserve_upstream_failures_total", &live),
        0.0
    );
    let retries = upstream_sample(&s, "coreserve_upstream_retries_total", &dead)
        + upstream_sample(&s, "coreserve_upstream_retries_total", &live);
    assert_eq!(retries, 1.0);
    // Every request found a server to try.
    assert_eq!(
        crate::metrics::values(&s, "coreserve_upstream_unavailable_total").get("upstream=app"),
        Some(&0.0)
    );
    assert!(
        s.samples
            .iter()
            .any(|x| x.metric.starts_with("coreserve_upstream_")
                && x.labels.get("server") == Some(dead.as_str())),
        "no series for the dead server"
    );
}

#[test]
fn the_access_log_records_the_upstream() {
    let up = Upstream::start(ok("logged"));
    let dead = dead_addr().to_string();
    let logs = Scratch::new("proxy-access-log");
    let log = logs.0.join("access.log");
    let toml = format!(
        "[log]\naccess = \"{}\"\nformat = \"json\"\n\n[[route]]\npath = \"/plain\"\nhandler = \"respond\"\nbody = \"plain\"\n\n",
        log.display()
    ) + &simple(&[dead.clone(), up.server()], "", "");
    let proxy = Proxy::start("proxy-log", &toml);
    // Round robin (each shard its own): one of the first two at least
    // goes to the dead server first.
    for target in ["/proxied", "/again"] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(proxy.get(&req).status, 200);
    }
    assert_eq!(
        proxy.get("GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );
    // A client that leaves in the middle of its body: the request went up.
    let mut left = connect(proxy.addr());
    left.write_all(b"POST /left HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        .unwrap();
    assert!(up.wait_until(|u| u
        .connections()
        .iter()
        .any(|c| contains(&c.bytes, b"0123456789"))));
    drop(left);
    std::thread::sleep(Duration::from_millis(200));
    proxy.server.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let line = |target: &str| line_for(&text, target);
    let gone = line("/left");
    assert!(gone.contains("\"status\":499,"), "{gone}");
    assert!(
        gone.contains(&format!("\"upstream_addr\":\"{}\"", up.server())),
        "{gone}"
    );
    assert!(gone.contains("\"upstream_status\":null"), "{gone}");
    let proxied = line("/proxied");
    assert!(
        proxied.contains(&format!("\"upstream_addr\":\"{}\"", up.server())),
        "{proxied}"
    );
    assert!(proxied.contains("\"upstream_status\":200"), "{proxied}");
    assert!(
        (0.0..60.0).contains(&seconds(&proxied, "upstream_time")),
        "{proxied}"
    );
    // The request tried on the dead server first says so, as nginx lists
    // each server in `$upstream_addr`.
    let failed = format!("\"upstream_failed\":[{{\"addr\":\"{dead}\",\"time\":");
    let retried: Vec<_> = ["/proxied", "/again"]
        .into_iter()
        .map(line)
        .filter(|l| l.contains(&failed))
        .collect();
    assert!(!retried.is_empty(), "{text}");
    for l in retried {
        assert!(
            l.contains(&format!("\"upstream_addr\":\"{}\"", up.server())),
            "{l}"
        );
    }
    let plain = line("/plain");
    assert!(
        !plain.contains("\"upstream_addr\":\""),
        "a request that was not proxied names an upstream: {plain}"
    );
}

/// The JSON line of the request for `target` in the log's `text`.
fn line_for(text: &str, target: &str) -> String {
    text.lines()
        .find(|l| l.contains(&format!("\"target\":\"{target}\"")))
        .unwrap_or_else(|| panic!("no line for {target}:\n{text}"))
        .to_string()
}

/// The seconds a JSON line gives `key`.
fn seconds(line: &str, key: &str) -> f64 {
    let text = line
        .split(&format!("\"{key}\":"))
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    text.parse()
        .unwrap_or_else(|_| panic!("{key} {text:?} is not a number of seconds"))
}

/// `request_time` runs from a request's first byte to its answer (nginx's
/// `$request_time`): a client slow to send its head shows in it and not in
/// `upstream_time`; a kept-alive connection's quiet wait before the next
/// request shows in neither.
#[test]
fn request_time_runs_from_the_first_byte_to_the_answer() {
    let up = Upstream::start(ok("timed"));
    let logs = Scratch::new("proxy-request-time");
    let log = logs.0.join("access.log");
    let toml = format!(
        "[log]\naccess = \"{}\"\nformat = \"json\"\n\n[[route]]\npath = \"/plain\"\nhandler = \"respond\"\nbody = \"plain\"\n\n",
        log.display()
    ) + &simple(&[up.server()], "", "");
    let proxy = Proxy::start("proxy-request-time", &toml);
    let pause = Duration::from_millis(400);
    let mut s = connect(proxy.addr());
    let mut r = Reader::new(&s);
    for target in ["/slow", "/plain-slow"] {
        let (first, rest) = match target {
            "/slow" => ("GET /slow HTTP/1.1\r\nHo", "st: x\r\n\r\n"),
            _ => (
                "GET /plain HTTP/1.1\r\nX-Which: slow\r\nHo",
                "st: x\r\n\r\n",
            ),
        };
        s.write_all(first.as_bytes()).unwrap();
        std::thread::sleep(pause);
        s.write_all(rest.as_bytes()).unwrap();
        assert_eq!(r.next(false).status, 200);
    }
    // A head in two reads, the second with the body: timed from the
    // first.
    s.write_all(b"POST /post-slow HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(pause);
    s.write_all(b"st: x\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    assert_eq!(r.next(false).status, 200);
    // A body slow to come, the next request with its end: that one begins
    // when the body ended, not with its request.
    s.write_all(b"POST /plain?body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        .unwrap();
    std::thread::sleep(pause);
    s.write_all(b"67890GET /plain?after-body HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(r.next(false).status, 200);
    assert_eq!(r.next(false).status, 200);
    // Quiet on the kept-alive connection, then a request, then two sent
    // at once.
    std::thread::sleep(pause);
    s.write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(r.next(false).status, 200);
    std::thread::sleep(pause);
    s.write_all(
        b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /plain?quick HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.next(false).status, 200);
    assert_eq!(r.next(false).status, 200);
    drop(s);
    proxy.server.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let line = |target: &str| line_for(&text, target);
    // Each slow head's own wait, not the connection's age.
    let slow = line("/slow");
    assert!(
        (0.4..0.8).contains(&seconds(&slow, "request_time")),
        "{slow}"
    );
    assert!(seconds(&slow, "upstream_time") < 0.4, "{slow}");
    let plain = line("/plain");
    assert!(
        (0.4..0.8).contains(&seconds(&plain, "request_time")),
        "{plain}"
    );
    let slow = line("/post-slow");
    assert!(
        (0.4..0.8).contains(&seconds(&slow, "request_time")),
        "{slow}"
    );
    // A fixed answer goes (and is logged) before its body is read.
    for quick in [
        line("/plain?body"),
        line("/next"),
        line("/first"),
        line("/plain?quick"),
        line("/plain?after-body"),
    ] {
        assert!(seconds(&quick, "request_time") < 0.4, "{quick}");
    }
}

/// A request for `/hold` sent through `proxy` and taken by `held_by`, then
/// `toml` applied by SIGHUP: the client's connection, its answer to come.
fn hold_then_reload(proxy: &Proxy, held_by: &Upstream, toml: &str) -> TcpStream {
    let held = connect(proxy.addr());
    (&held)
        .write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(held_by.wait_until(|u| u.requests().iter().any(|q| q.target == "/hold")));
    std::fs::write(proxy.conf(), toml).unwrap();
    proxy.server.signal(libc::SIGHUP);
    proxy
        .server
        .wait_for_log("configuration reloaded on every shard");
    held
}

#[test]
fn sighup_switches_servers_and_a_request_in_flight_completes() {
    let gate = Gate::new();
    let a = Upstream::start(named("A", &gate));
    let b = Upstream::start(ok("B"));
    let proxy = Proxy::start_with(
        "proxy-reload",
        &simple(&[a.server()], "", ""),
        &["--shards", "2"],
    );
    assert_eq!(proxy.get(GET).text(), "A");
    let held = hold_then_reload(&proxy, &a, &simple(&[b.server()], "", ""));
    for _ in 0..4 {
        assert_eq!(proxy.get(GET).text(), "B");
    }
    // The request in flight finishes from the old server.
    gate.open();
    let mut r = Reader::new(&held);
    assert_eq!(r.next(false).text(), "A");
    // Its connection's next request follows the new configuration.
    (&held).write_all(GET.as_bytes()).unwrap();
    assert_eq!(r.next(false).text(), "B");
    assert_eq!(
        a.requests().iter().filter(|q| q.target == "/").count(),
        1,
        "new requests went to the old server"
    );
}

/// A request whose server drops it after a reload (an app instance a
/// rolling reload stopped at its drain-timeout, the request still open) is
/// tried again on the group as it is now, not on a server of the old list
/// (the instance's old sibling, stopped by the same reload: refused, 502).
#[test]
fn a_retry_after_a_reload_goes_to_the_servers_listed_now() {
    let gate = Gate::new();
    let a = Upstream::start({
        let gate = gate.clone();
        move |req: &Request| {
            if req.target == "/hold" {
                Reply::new().wait(&gate).then(Reply::new().reset())
            } else {
                Reply::ok("A")
            }
        }
    });
    let gone = dead_addr().to_string();
    let c = Upstream::start(ok("C"));
    let proxy = Proxy::start_with(
        "proxy-retry-reloaded",
        &simple(&[a.server(), gone.clone()], "", ""),
        &["--shards", "1"],
    );
    let held = hold_then_reload(&proxy, &a, &simple(&[c.server()], "", ""));
    // A drops the request: tried again, on C.
    gate.open();
    let mut r = Reader::new(&held);
    let answer = r.next(false);
    assert_eq!((answer.status, answer.text()), (200, "C".to_string()));
    assert!(c.requests().iter().any(|q| q.target == "/hold"));
    assert!(
        !proxy.server.log().contains(&gone),
        "a server of the old list was tried: {}",
        proxy.server.log()
    );
}

/// A server a reload removed keeps no pooled connection, even while a
/// request of the old configuration still runs on the shard: an app
/// instance being replaced waits for its connections to close before it
/// is stopped (see apps_ops).
#[test]
fn a_server_a_reload_removed_has_its_idle_connections_closed_at_once() {
    let gate = Gate::new();
    let a = Upstream::start(named("A", &gate));
    let b = Upstream::start(ok("B"));
    let proxy = Proxy::start_with(
        "proxy-reload-removed",
        &simple(&[a.server()], "", ""),
        &["--shards", "1"],
    );
    // One connection to A busy with /hold, a second idle in the pool.
    let held = connect(proxy.addr());
    (&held)
        .write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(a.wait_until(|u| u.requests().iter().any(|q| q.target == "/hold")));
    assert_eq!(proxy.get(GET).text(), "A");
    assert_eq!(a.accepted(), 2);

    std::fs::write(proxy.conf(), simple(&[b.server()], "", "")).unwrap();
    proxy.server.signal(libc::SIGHUP);
    proxy
        .server
        .wait_for_log("configuration reloaded on every shard");
    assert!(
        a.wait_until(|u| u.connections().iter().filter(|c| c.peer_closed).count() == 1),
        "the idle connection to the removed server stayed open: {:?}",
        a.connections()
    );
    // The request in flight finishes there, and its connection is not kept.
    gate.open();
    assert_eq!(Reader::new(&held).next(false).text(), "A");
    assert!(
        a.wait_until(|u| u.connections().iter().all(|c| c.peer_closed)),
        "{:?}",
        a.connections()
    );
    assert_eq!(proxy.get(GET).text(), "B");
}
