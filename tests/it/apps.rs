//! App workers (`[[app]]`, issue #17) with real processes: the Node app
//! `apps/echo.js` and small shell scripts each test writes. Here: the
//! harness the app tests share, start-up and readiness (TCP and Unix
//! sockets, metrics, `coreserve status`), a graceful stop, and no orphan
//! after a SIGKILL of coreserve. Failures, restarts, reloads and output are
//! in `apps_ops.rs`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Scratch;
use crate::util::{command, connect_from, Reader, Server, WAIT};

/// The Node app every app test runs.
pub const ECHO_JS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/apps/echo.js");

/// Whether `node` runs here; says the test is skipped when not.
pub fn have_node() -> bool {
    let ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok();
    if !ok {
        eprintln!("SKIPPED: `node` is not installed; .ci/run installs nodejs");
    }
    ok
}

/// An `[[app]]` running `echo.js`; `extra` holds more `key = value` lines.
pub fn node_app(name: &str, instances: usize, extra: &str) -> String {
    app(name, &["node", ECHO_JS], instances, extra)
}

/// An `[[app]]` running this command.
pub fn app(name: &str, command: &[&str], instances: usize, extra: &str) -> String {
    let list: Vec<String> = command.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[app]]\nname = \"{name}\"\ncommand = [{}]\ninstances = {instances}\n\
         stop-timeout = \"3s\"\n{extra}\n",
        list.join(", ")
    )
}

/// A proxy route at `path` to `upstream`, its prefix stripped.
pub fn proxied(path: &str, upstream: &str) -> String {
    crate::proxy::route(path, upstream, "strip-prefix = true")
}

/// A `respond` route at `/ok` that answers `ok`.
pub const OK_ROUTE: &str = "[[route]]\npath = \"/ok\"\nhandler = \"respond\"\nbody = \"ok\"\n\n";

/// What `/whoami` says: which process answered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Who {
    pub pid: u32,
    pub instance: String,
    pub version: String,
}

impl Who {
    fn parse(body: &str) -> Option<Who> {
        let mut parts = body.split(' ');
        let pid = parts.next()?.parse().ok()?;
        let instance = parts.next()?.to_string();
        let version = parts.next()?.to_string();
        Some(Who {
            pid,
            instance,
            version,
        })
    }
}

/// One app instance as the metrics show it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub app: String,
    pub index: usize,
    pub pid: Option<u32>,
    pub state: String,
    pub server: String,
    pub up: f64,
    pub restarts: f64,
}

/// A coreserve running apps, with its configuration file.
pub struct AppServer {
    pub server: Server,
    pub dir: Scratch,
}

impl AppServer {
    /// `GET path` on a connection of its own, closed after the response.
    pub fn get(&self, path: &str) -> crate::util::Response {
        crate::util::get(
            self.server.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
    }

    /// Start with this configuration and one shard.
    pub fn start(name: &str, toml: &str) -> AppServer {
        let dir = Scratch::new(name);
        let conf = dir.write("app.toml", toml).display().to_string();
        let server = Server::start(&["--config", &conf, "--shards", "1"]);
        AppServer { server, dir }
    }

    /// The configuration file.
    pub fn conf(&self) -> String {
        self.dir.path("app.toml")
    }

    /// Write a new configuration and send SIGHUP.
    pub fn reload(&self, toml: &str) {
        self.dir.write("app.toml", toml);
        self.server.signal(libc::SIGHUP);
    }

    /// Which process answers `path` (a `/whoami` of echo.js), on a fresh
    /// connection.
    pub fn whoami(&self, path: &str) -> Who {
        Self::who(Conn::open(self.server.addr).expect("connect"), path)
    }

    /// Which process answers `path` for a client at `source` (in 127/8).
    pub fn whoami_from(&self, path: &str, source: std::net::IpAddr) -> Who {
        Self::who(Conn::on(connect_from(self.server.addr, source)), path)
    }

    fn who(mut conn: Conn, path: &str) -> Who {
        let (status, body) = conn.get(path).expect("a response");
        assert_eq!(status, 200, "{path}: {body}");
        Who::parse(&body).unwrap_or_else(|| panic!("{path} said {body:?}"))
    }

    /// Who answers `n` requests in a row.
    pub fn whoamis(&self, path: &str, n: usize) -> Vec<Who> {
        (0..n).map(|_| self.whoami(path)).collect()
    }

    /// Every app instance, from the metrics.
    pub fn instances(&self) -> Vec<Instance> {
        let scrape = crate::metrics::scrape(&self.server);
        let value = |s: &prometheus_parse::Sample| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        };
        let mut out: Vec<Instance> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "coreserve_app_instance_up")
            .map(|s| Instance {
                app: s.labels.get("app").unwrap_or("").to_string(),
                index: s.labels.get("instance").unwrap().parse().unwrap(),
                pid: s.labels.get("pid").and_then(|p| p.parse().ok()),
                state: s.labels.get("state").unwrap_or("").to_string(),
                server: s.labels.get("server").unwrap_or("").to_string(),
                up: value(s),
                restarts: f64::NAN,
            })
            .collect();
        for s in scrape
            .samples
            .iter()
            .filter(|s| s.metric == "coreserve_app_instance_restarts_total")
        {
            let (app, index) = (
                s.labels.get("app").unwrap_or(""),
                s.labels.get("instance").unwrap().parse::<usize>().unwrap(),
            );
            for i in out.iter_mut().filter(|i| i.app == app && i.index == index) {
                i.restarts = value(s);
            }
        }
        out.sort_by(|a, b| (&a.app, a.index).cmp(&(&b.app, b.index)));
        out
    }

    /// The instances of `app`, once `check` holds for them.
    pub fn wait_instances(
        &self,
        app: &str,
        what: &str,
        check: impl Fn(&[Instance]) -> bool,
    ) -> Vec<Instance> {
        let deadline = Instant::now() + WAIT;
        loop {
            let mine: Vec<Instance> = self
                .instances()
                .into_iter()
                .filter(|i| i.app == app)
                .collect();
            if check(&mine) {
                return mine;
            }
            assert!(
                Instant::now() < deadline,
                "instances of {app} never {what}: {mine:#?}\n{}",
                self.server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pids of `app`'s ready instances, in slot order, once there are `n`.
    pub fn ready_pids(&self, app: &str, n: usize) -> Vec<u32> {
        let ready =
            |is: &[Instance]| is.len() == n && is.iter().all(|i| i.state == "ready" && i.up == 1.0);
        self.wait_instances(app, &format!("{n} ready"), ready)
            .iter()
            .map(|i| i.pid.expect("a ready instance has a pid"))
            .collect()
    }

    /// Wait until the log says `needle` at least `n` times.
    pub fn wait_for_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.server.log().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?} {n} times:\n{}",
                self.server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether process `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Wait until none of `pids` runs; false if one still does after `within`.
pub fn all_gone(pids: &[u32], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while pids.iter().any(|&p| alive(p)) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The pids a log's `app NAME[I] started: pid N` lines give, in order.
pub fn started_pids(log: &str, who: &str) -> Vec<u32> {
    let prefix = format!("{who} started: pid ");
    log.lines()
        .filter_map(|l| l.split_once(&prefix).map(|(_, rest)| rest))
        .filter_map(|rest| rest.split(',').next()?.parse().ok())
        .collect()
}

/// A client connection that never panics: every failure is a value.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Result<Conn, String> {
        let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        Ok(Conn::on(s))
    }

    /// A connection already made.
    pub fn on(s: TcpStream) -> Conn {
        Conn {
            reader: BufReader::new(s),
        }
    }

    /// One GET; its status and body.
    pub fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        self.send("GET", path)
    }

    /// One request (a POST with a small body); its status and body.
    pub fn send(&mut self, method: &str, path: &str) -> Result<(u16, String), String> {
        let req = match method {
            "POST" => format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"),
            _ => format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
        };
        self.reader
            .get_mut()
            .write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut status = 0;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return Err("closed before a response".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
            if status == 0 {
                status = line
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| format!("bad status line {line:?}"))?;
            } else if line == "\r\n" {
                break;
            } else if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(|_| format!("bad {line:?}"))?;
                }
            }
        }
        let mut body = vec![0; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| format!("body: {e}"))?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// What the load's clients saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    /// The first failures, described.
    pub errors: Vec<String>,
    /// Every process that answered.
    pub seen: BTreeSet<Who>,
}

/// Clients sending requests to a `/whoami` path until stopped: some over
/// one keep-alive connection each, some on a new connection per request.
/// Anything but a 200 with a `/whoami` body is a failure.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    workers: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// GETs from `keepalive` + `fresh` clients.
    pub fn start(addr: SocketAddr, path: &str, keepalive: usize, fresh: usize) -> Load {
        Load::requests(addr, "GET", path, keepalive, fresh)
    }

    /// Requests of `method` from `keepalive` + `fresh` clients.
    pub fn requests(
        addr: SocketAddr,
        method: &'static str,
        path: &str,
        keepalive: usize,
        fresh: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let workers = (0..keepalive + fresh)
            .map(|i| {
                let (stop, ok, path) = (stop.clone(), ok.clone(), path.to_string());
                let reuse = i < keepalive;
                std::thread::spawn(move || {
                    let mut t = Tally::default();
                    let mut conn = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.take() {
                            Some(c) => Ok(c),
                            None => Conn::open(addr),
                        };
                        let answer = c.and_then(|mut c| {
                            let r = c.send(method, &path);
                            if reuse {
                                conn = Some(c);
                            }
                            r
                        });
                        match answer {
                            Ok((200, body)) if Who::parse(&body).is_some() => {
                                t.ok += 1;
                                ok.fetch_add(1, Ordering::Relaxed);
                                t.seen.insert(Who::parse(&body).unwrap());
                            }
                            other => {
                                conn = None;
                                t.failed += 1;
                                if t.errors.len() < 5 {
                                    t.errors.push(format!("{other:?}"));
                                }
                            }
                        }
                    }
                    t
                })
            })
            .collect();
        Load { stop, ok, workers }
    }

    /// Wait until `n` more requests have succeeded.
    pub fn wait_ok(&self, n: u64) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + WAIT;
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the load makes no progress");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Tally::default();
        for w in self.workers {
            let t = w.join().expect("a load client panicked");
            all.ok += t.ok;
            all.failed += t.failed;
            all.errors.extend(t.errors);
            all.seen.extend(t.seen);
        }
        all
    }
}

#[test]
fn instances_start_over_tcp_and_unix_sockets_and_show_in_metrics_and_status() {
    if !have_node() {
        return;
    }
    let toml = node_app("web", 2, "env = { VERSION = \"1\" }")
        + &node_app("sock", 2, "listen = \"unix\"")
        + OK_ROUTE
        + &proxied("/u/", "sock")
        + &proxied("/", "web");
    let s = AppServer::start("apps-start", &toml);
    let log = s.server.log();
    // Every instance was ready before coreserve listened.
    let listening = log.find("listening on").unwrap();
    for who in ["web[0]", "web[1]", "sock[0]", "sock[1]"] {
        let ready = log
            .find(&format!("app {who} is ready"))
            .unwrap_or_else(|| panic!("{who} never ready:\n{log}"));
        assert!(ready < listening, "{log}");
    }
    assert!(log.contains("app sock[1] started: pid "), "{log}");
    assert!(log.contains(", SOCKET = /"), "{log}");
    // The app's own output, prefixed with app and instance.
    for who in ["web[0]", "web[1]"] {
        let port = log
            .split(&format!("app {who} started: pid "))
            .nth(1)
            .and_then(|rest| rest.split("PORT = ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no start line for {who}:\n{log}"));
        assert!(
            log.contains(&format!("app {who}: listening {port}\n")),
            "{log}"
        );
    }
    assert!(log.contains("app sock[0]: listening /"), "{log}");

    let web = s.ready_pids("web", 2);
    let sock = s.ready_pids("sock", 2);
    assert_eq!(started_pids(&log, "app web[0]"), [web[0]]);
    assert_eq!(started_pids(&log, "app web[1]"), [web[1]]);
    for (app, pids) in [("web", &web), ("sock", &sock)] {
        let is = s.wait_instances(app, "listed", |is| is.len() == 2);
        for (i, inst) in is.iter().enumerate() {
            assert_eq!(inst.index, i);
            assert_eq!(inst.pid, Some(pids[i]));
            assert_eq!((inst.state.as_str(), inst.up), ("ready", 1.0), "{inst:?}");
            assert_eq!(inst.restarts, 0.0, "{inst:?}");
            let unix = inst.server.starts_with("unix:");
            assert_eq!(unix, app == "sock", "{inst:?}");
        }
    }

    // Both instances answer, each with its own pid, instance and env.
    let answers: BTreeSet<Who> = s.whoamis("/whoami", 10).into_iter().collect();
    let expected: BTreeSet<Who> = (0..2)
        .map(|i| Who {
            pid: web[i],
            instance: i.to_string(),
            version: "1".into(),
        })
        .collect();
    assert_eq!(answers, expected);
    let answers: BTreeSet<u32> = s
        .whoamis("/u/whoami", 10)
        .into_iter()
        .map(|w| w.pid)
        .collect();
    assert_eq!(answers, sock.iter().copied().collect());

    // `coreserve status --config FILE`: the operator's file names the
    // metrics address this server listens on.
    let metrics = s.server.metrics_url();
    let addr = metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    s.dir.write(
        "app.toml",
        format!("{toml}\n[metrics]\nlisten = \"{addr}\"\n"),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coreserve"))
        .args(["status", "--interval", "200ms", "--config", &s.conf()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = table
        .lines()
        .find(|l| l.starts_with("app "))
        .unwrap_or_else(|| panic!("no apps table:\n{table}"));
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        [
            "app", "instance", "pid", "state", "restarts", "uptime", "memory", "requests", "last",
            "exit"
        ]
    );
    for (app, pids) in [("web", &web), ("sock", &sock)] {
        for (i, pid) in pids.iter().enumerate() {
            let row: Vec<&str> = table
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|r| r.len() == 9 && r[0] == app && r[1] == i.to_string())
                .unwrap_or_else(|| panic!("no row {app} {i}:\n{table}"));
            assert_eq!(row[2], pid.to_string(), "{table}");
            assert_eq!(&row[3..5], ["ready", "0"], "{table}");
            assert!(row[5].ends_with('s'), "{table}");
            // A Node process's few tens of MiB.
            let mib: u64 = row[6]
                .strip_suffix('M')
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            assert!((10..1000).contains(&mib), "{table}");
            // Round-robin: half of the ten requests each.
            assert_eq!(row[7], "5", "{table}");
            // Never ended.
            assert_eq!(row[8], "-", "{table}");
        }
    }
    let _ = s.server.stop();
}

#[test]
fn sigterm_stops_every_instance_after_the_drain() {
    if !have_node() {
        return;
    }
    // An app that forks a worker of its own: the stop signal goes to the
    // instance's process group, so the worker goes too.
    let dir = Scratch::new("apps-stop-scripts");
    let script = dir.write(
        "forks.sh",
        format!("sleep 300 &\necho \"worker $!\"\nexec node {ECHO_JS}\n"),
    );
    let toml = node_app("web", 2, "")
        + &app("forks", &["sh", &script.display().to_string()], 1, "")
        + &proxied("/", "web");
    let s = AppServer::start("apps-stop", &toml);
    let mut pids = s.ready_pids("web", 2);
    let forks = s.ready_pids("forks", 1)[0];
    assert_eq!(s.whoami("/whoami").version, "-");
    s.server.wait_for_log("app forks[0]: worker ");
    let worker: u32 = s
        .server
        .log()
        .split("app forks[0]: worker ")
        .nth(1)
        .and_then(|rest| rest.lines().next()?.parse().ok())
        .unwrap();
    assert!(alive(worker));
    let log = s.server.stop();
    pids.extend([forks, worker]);
    assert!(all_gone(&pids, Duration::ZERO), "{pids:?}\n{log}");
    // coreserve's own requests first, then the apps.
    let drained = log.find("shard 0 (CPU").expect("the shard's stop line");
    let stopping = log
        .find("stopping 3 app instance(s)")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(drained < stopping, "{log}");
    // Each instance got SIGTERM (echo.js says so) and exited on its own.
    for (who, pid) in [
        ("web[0]", pids[0]),
        ("web[1]", pids[1]),
        ("forks[0]", forks),
    ] {
        assert!(
            log.contains(&format!("app {who} (stopping): SIGTERM: closing")),
            "{log}"
        );
        assert!(
            log.contains(&format!("app {who} (pid {pid}) stopped: exit status: 0")),
            "{log}"
        );
    }
    assert!(!log.contains("did not stop in time"), "{log}");
    assert!(log.contains("every app instance has stopped"), "{log}");
}

/// One Node instance ("web", its stop-timeout 3 s) behind a 1 s
/// drain-timeout, and a connection that asked for `target`: the server,
/// the instance's pid and the connection.
fn short_drain_with(name: &str, target: &str) -> (AppServer, u32, TcpStream) {
    let toml = "[server]\ndrain-timeout = \"1s\"\n\n".to_string()
        + &node_app("web", 1, "")
        + &proxied("/", "web");
    let s = AppServer::start(name, &toml);
    let pid = s.ready_pids("web", 1)[0];
    let c = s.server.connect();
    (&c).write_all(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    (s, pid, c)
}

/// What is still open at drain-timeout is not cut then: the apps are
/// asked to stop first, and what they send in answer (an event stream's
/// goodbye and its end) reaches the client, as in a rolling reload.
#[test]
fn at_the_drain_deadline_an_app_ends_its_own_streams() {
    if !have_node() {
        return;
    }
    let (mut s, pid, c) = short_drain_with("apps-last-call", "/stream");
    let mut r = Reader::new(&c);
    let head = r.head();
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.chunk().as_deref(), Some(&b"data: open\n\n"[..]));
    s.server.signal(libc::SIGTERM);
    // The goodbye, then the last chunk: the response ended whole.
    assert_eq!(r.chunk().as_deref(), Some(&b"data: bye\n\n"[..]));
    assert_eq!(r.chunk(), None);
    assert!(s.server.wait(WAIT).success());
    let log = s.server.log();
    assert!(
        log.contains(
            "drain-timeout passed with connections open: 1 app instance(s) asked to stop now"
        ),
        "{log}"
    );
    assert!(
        log.contains(&format!("app web[0] (pid {pid}) stopped: exit status: 0")),
        "{log}"
    );
    assert!(!log.contains("did not stop in time"), "{log}");
    assert!(!log.contains("drain deadline passed"), "{log}");
}

/// A request that ends during the grace after drain-timeout leaves no
/// pooled connection behind: the app's `server.close()` then ends, and it
/// exits by itself, not at its stop-timeout's SIGKILL.
#[test]
fn a_request_ending_in_the_grace_lets_the_app_exit_by_itself() {
    if !have_node() {
        return;
    }
    // A stop-timeout (3 s, `app`'s) below Node's keepAliveTimeout (5 s): a
    // pooled connection left open would be closed by neither before the
    // SIGKILL.
    let (mut s, pid, c) = short_drain_with("apps-grace-pool", "/whoami?ms=1500");
    std::thread::sleep(Duration::from_millis(100));
    s.server.signal(libc::SIGTERM);
    let r = Reader::new(&c).next(false);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(s.server.wait(WAIT).success());
    let log = s.server.log();
    assert!(
        log.contains(&format!("app web[0] (pid {pid}) stopped: exit status: 0")),
        "{log}"
    );
    assert!(!log.contains("did not stop in time"), "{log}");
}

/// Once the apps asked at drain-timeout are gone, what is still open (here
/// a request to a server outside that never answers) is cut then, not
/// after their whole stop-timeout.
#[test]
fn once_the_apps_are_gone_the_drain_cuts_what_is_left() {
    if !have_node() {
        return;
    }
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let toml = "[server]\ndrain-timeout = \"1s\"\n\n".to_string()
        + &node_app("web", 1, "").replace("stop-timeout = \"3s\"", "stop-timeout = \"30s\"")
        + &crate::proxy::group("silent", &[silent.local_addr().unwrap().to_string()], "")
        + &crate::proxy::route("/hang", "silent", "")
        + &proxied("/", "web");
    let mut s = AppServer::start("apps-gone-cut", &toml);
    s.ready_pids("web", 1);
    let c = s.server.connect();
    (&c).write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (_held, _) = silent.accept().unwrap();
    let began = Instant::now();
    s.server.signal(libc::SIGTERM);
    assert!(s.server.wait(WAIT).success());
    // Not the 31 s a grace of the app's whole stop-timeout would take.
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
    let log = s.server.log();
    assert!(log.contains("app web[0] (pid "), "{log}");
    assert!(
        log.contains("drain deadline passed; closed 1 connections still open"),
        "{log}"
    );
}

/// The kernel kills each instance when coreserve dies (its parent-death
/// signal). Not tested: a process an instance forks itself survives a
/// SIGKILL of coreserve, unless systemd's cgroup (`KillMode`) catches it.
#[test]
fn no_instance_outlives_a_killed_coreserve() {
    if !have_node() {
        return;
    }
    let mut s = AppServer::start(
        "apps-kill9",
        &(node_app("web", 2, "") + &proxied("/", "web")),
    );
    let pids = s.ready_pids("web", 2);
    assert!(pids.iter().all(|&p| alive(p)));
    s.server.signal(libc::SIGKILL);
    s.server.wait(WAIT);
    assert!(
        all_gone(&pids, Duration::from_secs(1)),
        "still running after coreserve was killed: {:?}",
        pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );
}

/// An instance that listens on `$PORT` and ignores SIGTERM.
const DEAF: &str = "import os, signal, socket, time\n\
signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
s = socket.socket()\n\
s.bind(('127.0.0.1', int(os.environ['PORT'])))\n\
s.listen(8)\n\
print('listening', flush=True)\n\
time.sleep(600)\n";

#[test]
fn a_stop_signal_while_the_apps_start_stops_at_once() {
    // An instance that never listens, with a start-timeout far away, and
    // that takes a moment to exit on SIGTERM.
    let dir = Scratch::new("apps-stop-at-start");
    let conf = dir.write(
        "app.toml",
        app(
            "slow",
            &[
                "sh",
                "-c",
                "trap 'sleep 0.3; exit 0' TERM; echo started $$; while true; do sleep 0.1; done",
            ],
            1,
            "start-timeout = \"2m\"",
        ),
    );
    let mut cmd = crate::util::command();
    cmd.args(["--listen", "127.0.0.1:0", "--config"]).arg(&conf);
    let mut child = cmd.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    while !log.contains("app slow[0]: started ") || !log.ends_with('\n') {
        assert!(err.read_line(&mut log).unwrap() > 0, "{log}");
    }
    let sleeper: u32 = log
        .split("app slow[0]: started ")
        .nth(1)
        .and_then(|rest| rest.lines().next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{log}"));
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    err.read_to_string(&mut log).unwrap();
    assert!(sent.elapsed() < WAIT, "{:?}\n{log}", sent.elapsed());
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.contains("SIGTERM: stopped while the apps started"),
        "{log}"
    );
    assert!(!log.contains("listening on"), "{log}");
    assert!(all_gone(&[sleeper], Duration::from_secs(2)), "{log}");
}

#[test]
fn a_second_stop_signal_kills_the_instances_at_once() {
    let dir = Scratch::new("apps-second-signal-script");
    let script = dir.write("deaf.py", DEAF).display().to_string();
    let toml = app("deaf", &["python3", &script], 1, "") + &proxied("/", "deaf");
    // Far beyond the test's patience.
    let toml = toml.replace("stop-timeout = \"3s\"", "stop-timeout = \"2m\"");
    let mut s = AppServer::start("apps-second-signal", &toml);
    let pid = s.ready_pids("deaf", 1)[0];
    s.server.signal(libc::SIGTERM);
    s.server.wait_for_log("stopping 1 app instance(s)");
    // Neither a reload nor a reopen now: said, not dropped.
    s.server.signal(libc::SIGHUP);
    s.server
        .wait_for_log("SIGHUP: ignored: stopping (the app instances are being stopped)");
    s.server.signal(libc::SIGUSR1);
    s.server
        .wait_for_log("SIGUSR1: ignored: stopping (the app instances are being stopped)");
    // Past the moment in which a repeat is the same stop.
    std::thread::sleep(Duration::from_millis(700));
    let second = Instant::now();
    s.server.signal(libc::SIGTERM);
    s.server.wait(WAIT);
    let log = s.server.log();
    assert!(second.elapsed() < WAIT, "{log}");
    assert!(
        log.contains("a second stop signal: killing the app instances now"),
        "{log}"
    );
    assert!(
        log.contains(&format!("app deaf[0] (pid {pid}) killed at once")),
        "{log}"
    );
    assert!(all_gone(&[pid], Duration::from_secs(2)), "{log}");
}

/// A wrapper that died of the stop's SIGTERM, its app not: the second stop
/// signal kills what it started, said as such; the instance's own exit was
/// the signal's (before, "killed at once" was followed by "stopped: signal:
/// 15").
#[test]
fn a_second_stop_signal_says_what_it_killed_of_a_wrapped_app() {
    let dir = Scratch::new("apps-second-signal-wrapper-script");
    let script = dir.write("deaf.py", DEAF).display().to_string();
    let start = format!("python3 {script}; true");
    let toml = app("deaf", &["sh", "-c", &start], 1, "") + &proxied("/", "deaf");
    let toml = toml.replace("stop-timeout = \"3s\"", "stop-timeout = \"2m\"");
    let mut s = AppServer::start("apps-second-signal-wrapper", &toml);
    let pid = s.ready_pids("deaf", 1)[0];
    s.server.signal(libc::SIGTERM);
    s.server.wait_for_log("stopping 1 app instance(s)");
    // Past the moment in which a repeat is the same stop.
    std::thread::sleep(Duration::from_millis(700));
    s.server.signal(libc::SIGTERM);
    s.server.wait(WAIT);
    let log = s.server.log();
    assert!(
        log.contains(&format!(
            "app deaf[0] (pid {pid}): what it started was still running; killed at once (a second stop signal)"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("app deaf[0] (pid {pid}) stopped: signal: 15")),
        "{log}"
    );
    assert!(
        !log.contains(&format!("app deaf[0] (pid {pid}) killed at once")),
        "{log}"
    );
}

/// A stop signal sent twice at once (GNU `timeout`: to coreserve, then to
/// its process group) is one stop, also once the shards are done and the
/// apps stop: they get their stop signal and time, not a SIGKILL.
#[test]
fn a_stop_signal_sent_twice_at_once_stops_the_apps_gracefully() {
    let dir = Scratch::new("apps-twice-script");
    let script = dir.write("deaf.py", DEAF).display().to_string();
    let toml = app("deaf", &["python3", &script], 1, "") + &proxied("/", "deaf");
    let toml = toml.replace("stop-timeout = \"3s\"", "stop-timeout = \"1s\"");
    let mut s = AppServer::start("apps-twice", &toml);
    let pid = s.ready_pids("deaf", 1)[0];
    s.server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(20));
    s.server.signal(libc::SIGTERM);
    s.server.wait(WAIT);
    let log = s.server.log();
    assert!(!log.contains("a second stop signal"), "{log}");
    assert!(!log.contains("killed at once"), "{log}");
    assert!(all_gone(&[pid], Duration::from_secs(2)), "{log}");
}

/// An instance that ends at its stop signal, but leaves in its group a
/// child that ignores it (a wrapper's app), or one it started in a session
/// of its own (Node's `detached`, found as a stray): the SIGKILL at
/// `stop-timeout` is said of what it started, not of the instance, which
/// stopped at once.
#[test]
fn a_stop_timeout_reached_by_what_an_instance_started_names_that() {
    for (name, session) in [("wrap", "False"), ("detach", "True")] {
        let dir = Scratch::new(&format!("apps-stop-{name}-script"));
        let script = dir.write(
            "wrapper.py",
            format!(
                "import os, socket, subprocess, time\n\
                 subprocess.Popen(['sh', '-c', \"trap '' TERM; echo child $$; sleep 300\"], start_new_session={session})\n\
                 s = socket.socket()\n\
                 s.bind(('127.0.0.1', int(os.environ['PORT'])))\n\
                 s.listen(8)\n\
                 time.sleep(600)\n"
            ),
        );
        let toml = app(name, &["python3", &script.display().to_string()], 1, "")
            .replace("stop-timeout = \"3s\"", "stop-timeout = \"1s\"")
            + &proxied("/", name);
        let s = AppServer::start(&format!("apps-stop-{name}"), &toml);
        let pid = s.ready_pids(name, 1)[0];
        s.server.wait_for_log(&format!("app {name}[0]: child "));
        let child: u32 = s
            .server
            .log()
            .split(&format!("app {name}[0]: child "))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap();
        let log = s.server.stop();
        assert!(
            log.contains(&format!(
                "app {name}[0] (pid {pid}): what it started was still running at stop-timeout; killed"
            )),
            "{log}"
        );
        assert!(!log.contains("did not stop in time"), "{log}");
        assert!(all_gone(&[child], Duration::from_secs(2)), "{name}: {log}");
    }
}

/// An app's output goes to the log whatever level quiets coreserve's own
/// lines (`RUST_LOG=warn`: every `console.log` of the app was dropped),
/// unless RUST_LOG names it (`app_output=off`); so does the "listening on"
/// line, the only way to learn a port chosen by the system.
#[test]
fn an_apps_output_is_logged_whatever_level_quiets_coreserves_own() {
    let program = "import os, socket, sys, time; \
                   print('hello from stdout', flush=True); \
                   print('hello from stderr', file=sys.stderr, flush=True); \
                   s = socket.socket(); \
                   s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); \
                   s.bind(('127.0.0.1', int(os.environ['PORT']))); \
                   s.listen(); \
                   time.sleep(600)";
    let dir = Scratch::new("app-output-level");
    let conf = dir.write("app.toml", app("web", &["python3", "-c", program], 1, ""));
    for (filter, shown) in [("warn", true), ("warn,app_output=off", false)] {
        let mut cmd = command();
        // The "listening on" line, which the test waits for, stays too.
        cmd.env("RUST_LOG", filter)
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&conf);
        let server = Server::spawn(cmd);
        if shown {
            server.wait_for_log("app web[0]: hello from stdout");
            server.wait_for_log("app web[0]: hello from stderr");
        } else {
            std::thread::sleep(Duration::from_millis(300));
            assert!(!server.log().contains("hello from"), "{}", server.log());
        }
        // coreserve's own info lines stay out either way.
        assert!(!server.log().contains("is ready"), "{}", server.log());
    }
}

/// An app of `listen = "unix"` whose socket paths would not fit a Unix
/// socket address (a deep runtime directory), or whose sockets' directory
/// cannot be made (`TMPDIR` names none), is an error of `--check`, at its
/// `listen`, before anything starts; a short directory passes.
#[test]
fn unix_socket_paths_too_long_or_without_a_directory_are_found_by_check() {
    let dir = Scratch::new("app-socket-path");
    let conf = dir.write(
        "app.toml",
        app("web", &["true"], 1, "listen = \"unix\"") + &proxied("/", "web"),
    );
    let deep = dir.path(&"d".repeat(60));
    let deep = format!("{deep}/{}", "e".repeat(40));
    std::fs::create_dir_all(&deep).unwrap();
    let check = |runtime: &str| {
        command()
            .env("RUNTIME_DIRECTORY", runtime)
            .arg("--check")
            .arg("--config")
            .arg(&conf)
            .output()
            .unwrap()
    };
    let out = check(&deep);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("app.toml:6: app[1].listen: its socket paths (up to ")
            && err.contains("would be longer than the 107 bytes a Unix socket address holds"),
        "{err}"
    );
    let out = check(&dir.path(""));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Neither runtime variable: the temporary directory, which is not one.
    let missing = dir.path("no-such-dir");
    dir.write("a-file", "");
    let file = dir.path("a-file");
    for tmp in [missing.as_str(), file.as_str()] {
        let out = command()
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("XDG_RUNTIME_DIR")
            .env("TMPDIR", tmp)
            .arg("--check")
            .arg("--config")
            .arg(&conf)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tmp}: {err}");
        assert!(
            err.contains(&format!(
                "app.toml:6: app[1].listen: its sockets go in a directory made in {tmp}, which is not a directory this user can write to"
            )),
            "{tmp}: {err}"
        );
    }
}

/// An instance starts with standard input, output and error and nothing
/// else of coreserve's: an inherited descriptor would let an app read the
/// signals meant for coreserve, or keep its sockets and rings open; nor
/// what coreserve was itself given open (a shell's pipe, kept open by the
/// app for as long as it runs). The first instance starts before the
/// shards run, a reload's after.
#[test]
fn instances_inherit_no_descriptor_of_coreserves() {
    if !have_node() {
        return;
    }
    let out = Scratch::new("apps-fds-out");
    // Python lists what it was started with (fstat and readlink open
    // nothing), then becomes the app.
    let lister = out.write(
        "list/fds.py",
        "import os, sys\n\
         fds = []\n\
         for fd in range(4096):\n    \
             try:\n        \
                 os.fstat(fd)\n        \
                 fds.append(f'{fd} {os.readlink(f\"/proc/self/fd/{fd}\")}')\n    \
             except OSError:\n        \
                 pass\n\
         open(f'{sys.argv[1]}/fds.{os.getpid()}', 'w').write('\\n'.join(fds))\n\
         os.execvp('node', ['node', sys.argv[2]])\n",
    );
    let (lister, dir) = (lister.display().to_string(), out.0.display().to_string());
    let toml = |version: &str| {
        app(
            "web",
            &["python3", &lister, &dir, ECHO_JS],
            1,
            &format!("env = {{ VERSION = \"{version}\" }}"),
        ) + &proxied("/", "web")
    };
    // coreserve itself given a descriptor open across exec, as a shell's
    // pipe is: not passed on either.
    let dir = Scratch::new("apps-fds");
    let conf = dir.write("app.toml", toml("1"));
    let server = Server::spawn({
        let mut cmd = command();
        cmd.args(["--listen", "127.0.0.1:0", "--shards", "1", "--config"])
            .arg(&conf);
        // SAFETY: dup2 is async-signal-safe; runs in the child before exec,
        // after `command()`'s own close-on-exec marking.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::dup2(2, 50) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    });
    let s = AppServer { server, dir };
    let first = s.ready_pids("web", 1);
    s.reload(&toml("2"));
    s.wait_instances("web", "replaced", |is| {
        is.len() == 1 && is[0].state == "ready" && is[0].pid != Some(first[0])
    });
    let lists: Vec<String> = std::fs::read_dir(&out.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(lists.len(), 2, "{lists:?}");
    for list in &lists {
        for line in list.lines() {
            let (fd, target) = line.split_once(' ').unwrap();
            assert!(
                ["0", "1", "2"].contains(&fd),
                "an instance inherited fd {fd} ({target}) from coreserve:\n{list}"
            );
        }
    }
}

/// The processes whose parent is `pid`, as the host sees them.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// As a container's pid 1 (here a pid namespace of its own), coreserve
/// reaps the orphans it inherits, a shell's background jobs here, as tini
/// does: they piled up as zombies until the container's pids.max refused
/// the app's next fork. An instance's own exit is still its wait thread's,
/// reported as ever.
#[test]
fn as_pid_one_ended_orphans_are_reaped_and_instances_reported() {
    if !have_node() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return eprintln!("skipped: needs root for a pid namespace");
    }
    // Twenty background jobs, each an orphan once its subshell exits,
    // ending a moment later; then the app.
    let start = "for i in $(seq 20); do (sleep 0.3 &); done; exec node $0";
    let dir = Scratch::new("apps-pid-one");
    let conf = dir.write(
        "app.toml",
        app("web", &["sh", "-c", start, ECHO_JS], 1, "") + &proxied("/", "web"),
    );
    // Killed with unshare (the test's end, or its failure).
    let cmd = crate::util::wrapped(
        "unshare",
        &["--pid", "--fork", "--kill-child", "--mount-proc"],
        &conf,
    );
    let server = Server::spawn(cmd);
    let s = AppServer { server, dir };
    s.ready_pids("web", 1);
    let coreserve = children_of(s.server.pid());
    assert_eq!(coreserve.len(), 1, "{coreserve:?}");
    let coreserve = coreserve[0];
    let zombies = || {
        children_of(coreserve)
            .into_iter()
            .filter(|&p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .is_ok_and(|l| l.rsplit_once(')').is_some_and(|(_, f)| f.starts_with(" Z")))
            })
            .count()
    };
    // Every job has ended by now (0.3 s); each is reaped within a second.
    let deadline = Instant::now() + WAIT;
    let mut seen = 0;
    loop {
        let left = zombies();
        seen = seen.max(left);
        if left == 0 && children_of(coreserve).len() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} zombies left (most {seen}), children {:?}",
            children_of(coreserve)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The instance (the one child left) killed: its exit still reported.
    let instance = children_of(coreserve)[0];
    // SAFETY: kill(2) on the instance's pid, just read.
    unsafe { libc::kill(instance as libc::pid_t, libc::SIGKILL) };
    // At once, or after 1 s if it served less than 2 s (`child::SERVED_LONG`).
    s.wait_for_count("exited: signal: 9 (SIGKILL); starting it again ", 1);
    s.wait_for_count("app web[0] is ready", 2);
    // The shards hear of it a message later.
    let deadline = Instant::now() + WAIT;
    loop {
        let r = crate::util::get(s.server.addr, "GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n");
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.status);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An app started in its `cwd` is told so by `$PWD` too (shells and
/// `process.env.PWD` readers take it for the directory): it named
/// coreserve's own.
#[test]
fn an_apps_pwd_is_its_cwd() {
    if !have_node() {
        return;
    }
    let dir = Scratch::new("apps-pwd");
    dir.write("site/keep", "");
    let start = format!("console.log('pwd=' + process.env.PWD); require('{ECHO_JS}')");
    let toml = app(
        "web",
        &["node", "-e", &start],
        1,
        &format!("cwd = \"{}\"", dir.path("site")),
    ) + &proxied("/", "web");
    let s = AppServer::start("apps-pwd-server", &toml);
    s.ready_pids("web", 1);
    s.server.wait_for_log(&format!("pwd={}", dir.path("site")));
}

/// An instance that listens on every interface (Node's
/// `listen(process.env.PORT)` without a host) is reachable around
/// coreserve: the log says so, once for the app (probe B: nothing did);
/// one on 127.0.0.1 is not warned of.
#[test]
fn an_instance_listening_on_every_interface_is_warned_of_once() {
    let serve = |host: &str| {
        format!(
            "import http.server, os; http.server.HTTPServer(('{host}', int(os.environ['PORT'])), http.server.BaseHTTPRequestHandler).serve_forever()"
        )
    };
    let toml = app("open", &["python3", "-c", &serve("0.0.0.0")], 2, "")
        + &app("shut", &["python3", "-c", &serve("127.0.0.1")], 1, "")
        + &proxied("/", "open");
    let s = AppServer::start("apps-every-interface", &toml);
    for who in ["open[0]", "open[1]", "shut[0]"] {
        s.server.wait_for_log(&format!("app {who} is ready"));
    }
    let log = s.server.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("every interface"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("] listens on 0.0.0.0:")
            && warned[0].contains("listen on 127.0.0.1 alone (server.listen(process.env.PORT, \"127.0.0.1\") in Node)"),
        "{log}"
    );
    assert!(!warned[0].contains("app shut"), "{log}");
}

/// An app gets none of coreserve's privileges: run as the packaged unit
/// runs it (an unprivileged user with CAP_NET_BIND_SERVICE ambient, its
/// TLS key in systemd's credentials directory), an instance has no
/// ambient capability (it could bind :80 or :443 elsewhere) and is not
/// told where the credentials are, unless its `env` says so.
#[test]
fn an_app_gets_neither_coreserves_capabilities_nor_its_credentials() {
    // SAFETY: geteuid cannot fail.
    let reachable = [env!("CARGO_BIN_EXE_coreserve"), ECHO_JS]
        .iter()
        .all(|p| crate::util::others_may_read(std::path::Path::new(p)));
    if !have_node() || unsafe { libc::geteuid() } != 0 || !reachable {
        // Raising an ambient capability for another user takes root.
        eprintln!("skipped: needs node, root, and a checkout others may read");
        return;
    }
    let dir = Scratch::new("apps-privileges");
    let say = format!(
        "const caps = require('fs').readFileSync('/proc/self/status', 'utf8')\
         .split('CapAmb:')[1].trim().slice(0, 16);\
         console.log(process.env.CORESERVE_APP + ' ambient=' + caps + \
         ' credentials=' + process.env.CREDENTIALS_DIRECTORY);\
         require('{ECHO_JS}')"
    );
    let toml = app("plain", &["node", "-e", &say], 1, "")
        + &app(
            "told",
            &["node", "-e", &say],
            1,
            "env = { CREDENTIALS_DIRECTORY = \"/run/credentials/told\" }",
        )
        + &proxied("/", "plain");
    let conf = dir.write("app.toml", toml);
    let mut cmd = crate::util::wrapped(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+net_bind_service",
            "--ambient-caps=+net_bind_service",
        ],
        &conf,
    );
    cmd.env(
        "CREDENTIALS_DIRECTORY",
        "/run/credentials/coreserve.service",
    );
    let server = Server::spawn(cmd);
    // coreserve itself has it (else the test proves nothing).
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    assert!(
        status.contains("CapAmb:\t0000000000000400"),
        "coreserve runs without the capability:\n{status}"
    );
    server.wait_for_log("plain ambient=");
    server.wait_for_log("told ambient=");
    let log = server.log();
    assert!(
        log.contains("plain ambient=0000000000000000 credentials=undefined"),
        "{log}"
    );
    assert!(
        log.contains("told ambient=0000000000000000 credentials=/run/credentials/told"),
        "{log}"
    );
}

/// A node app that answers its pid, and to `/exit` says `bye!`, closes its
/// listener and exits 700 ms later; to `/vanish` the same without a word
/// (the request's connection destroyed), once: while the file `$MARK`
/// names is not there, which it makes.
const EXITING_APP: &str = "const http = require('http');\
                let doomed = false;\
                const s = http.createServer((q, r) => {\
                  if (q.url === '/exit') {\
                    r.writeHead(200, { 'Connection': 'close', 'Content-Length': 4 });\
                    r.end('bye!');\
                    s.close();\
                    setTimeout(() => process.exit(0), 700);\
                    return;\
                  }\
                  if (q.url === '/doom') {\
                    doomed = true;\
                    r.end(String(process.pid));\
                    return;\
                  }\
                  if (doomed) {\
                    q.socket.destroy();\
                    setTimeout(() => process.exit(1), 100);\
                    return;\
                  }\
                  if (q.url === '/close') {\
                    r.writeHead(200, { 'Connection': 'close', 'Content-Length': 6 });\
                    r.end('closed');\
                    s.close();\
                    setInterval(() => {}, 1000);\
                    return;\
                  }\
                  if (q.url === '/vanish' && !require('fs').existsSync(process.env.MARK)) {\
                    require('fs').writeFileSync(process.env.MARK, '');\
                    s.close();\
                    q.socket.destroy();\
                    setTimeout(() => process.exit(0), 700);\
                    return;\
                  }\
                  const b = String(process.pid);\
                  r.writeHead(200, { 'Content-Length': b.length });\
                  r.end(b);\
                });\
                s.listen(+process.env.PORT, '127.0.0.1');";

/// A request that meets an app's only instance as it exits (its listener
/// closed, the process not yet ended: refused) waits for the instance
/// started in its place, as one that finds none ready does, rather than a
/// 502 (hundreds of them a second under load for each exit).
#[test]
fn a_request_refused_by_an_exiting_instance_waits_for_its_successor() {
    if !have_node() {
        return;
    }
    let code = EXITING_APP;
    let s = AppServer::start(
        "apps-exiting",
        // Its restart waits 1 s (it served less than 2 s): the request's
        // wait is bounded by connect-timeout, raised for a slow machine.
        &(app("web", &["node", "-e", code], 1, "connect-timeout = \"30s\"") + &proxied("/", "web")),
    );
    let first = s.ready_pids("web", 1)[0];
    let get = |path: &str| s.get(path);
    assert_eq!(get("/exit").text(), "bye!");
    // Within the 700 ms its listener is closed and it still runs.
    let r = get("/");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.server.log());
    assert_ne!(r.text(), first.to_string(), "answered by the exiting one");
}

/// Every instance of an app exiting at once (a request that crashes each,
/// a bad release): the refusals meanwhile rest none of them, so a request
/// that comes after another was refused by all waits for them as that one
/// does, rather than a 503 for fail-timeout ("each rests after failures")
/// while they are back within moments.
#[test]
fn requests_wait_for_an_app_whose_instances_all_exit() {
    if !have_node() {
        return;
    }
    let s = AppServer::start(
        "apps-all-exiting",
        &(app(
            "web",
            &["node", "-e", EXITING_APP],
            2,
            "connect-timeout = \"30s\"",
        ) + &proxied("/", "web")),
    );
    s.ready_pids("web", 2);
    let get = |path: &str| s.get(path);
    // Round-robin: each instance gets one.
    assert_eq!(get("/exit").text(), "bye!");
    assert_eq!(get("/exit").text(), "bye!");
    std::thread::scope(|scope| {
        let first = scope.spawn(|| get("/"));
        std::thread::sleep(Duration::from_millis(100));
        let second = get("/");
        let first = first.join().unwrap();
        for r in [first, second] {
            assert_eq!(r.status, 200, "{r:?}\n{}", s.server.log());
        }
    });
}

/// What an instance started and left (`setsid`, forked twice: its parent
/// is another now) still holding its output gets the instance's stop
/// signal with it, as PM2 kills the whole tree: a reload that replaced the
/// instance left it running (on the old port, its lines logged as the
/// stopped instance's), where an instance's crash had it killed.
#[test]
fn a_reload_stops_what_an_instance_left_holding_its_output() {
    if !have_node() {
        return;
    }
    let toml = |version: &str| {
        app(
            "web",
            &[
                "sh",
                "-c",
                &format!(
                    "(setsid sh -c 'while :; do echo left $$; sleep 0.2; done' &); exec node {ECHO_JS}"
                ),
            ],
            1,
            &format!("env = {{ VERSION = \"{version}\" }}\nmin-uptime = \"0s\""),
        ) + &proxied("/", "web")
    };
    let s = AppServer::start("apps-left-holding", &toml("1"));
    let first = s.ready_pids("web", 1)[0];
    s.server.wait_for_log("app web[0]: left ");
    let left: u32 = s
        .server
        .log()
        .lines()
        .find_map(|l| l.split_once("app web[0]: left ")?.1.trim().parse().ok())
        .unwrap();
    assert!(alive(left));
    s.reload(&toml("2"));
    s.wait_instances("web", "replaced", |is| {
        is.len() == 1 && is[0].state == "ready" && is[0].pid != Some(first)
    });
    assert!(
        all_gone(&[first, left], Duration::from_secs(5)),
        "left running by the reload:\n{}",
        s.server.log()
    );
}

/// An instance that destroys a request's socket on purpose and runs on
/// (no exit follows) gets its 502 soon: the wait for a successor that a
/// close before any response starts ends when no exit is heard within
/// moments, not at connect-timeout.
#[test]
fn a_socket_an_instance_destroys_on_purpose_is_a_502_soon() {
    if !have_node() {
        return;
    }
    let code = "require('http').createServer((q, r) => {\
                  if (q.url === '/destroy') { q.socket.destroy(); return; }\
                  r.end('alive');\
                }).listen(+process.env.PORT, '127.0.0.1');";
    let s = AppServer::start(
        "apps-destroys",
        &(app("web", &["node", "-e", code], 1, "connect-timeout = \"60s\"") + &proxied("/", "web")),
    );
    s.ready_pids("web", 1);
    let mut conn = Conn::open(s.server.addr).unwrap();
    // Far below connect-timeout: the wait did not run to it.
    conn.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(conn.get("/destroy").map(|(status, _)| status), Ok(502));
    assert_eq!(conn.get("/"), Ok((200, "alive".into())));
    // Again on the connection that request left in the pool: its drop is
    // the keep-alive race's, tried again on a new one and dropped there,
    // and no exit follows: a 502 as soon.
    assert_eq!(conn.get("/destroy").map(|(status, _)| status), Ok(502));
    assert_eq!(conn.get("/"), Ok((200, "alive".into())));
}

/// One instance of the Node app `code`, proxied at `/`, with 30 s to
/// connect and `MARK`, a path that it creates for what it does once: the
/// scratch directory that holds the path (kept while the app runs) and the
/// server.
fn marked_app(name: &str, code: &str) -> (Scratch, AppServer) {
    let marks = Scratch::new(&format!("{name}-mark"));
    let mark = marks.path("done");
    let extra = format!("connect-timeout = \"30s\"\nenv = {{ MARK = \"{mark}\" }}");
    let s = AppServer::start(
        name,
        &(app("web", &["node", "-e", code], 1, &extra) + &proxied("/", "web")),
    );
    (marks, s)
}

/// A request whose connection an instance drops without a word as it
/// stops listening and exits (a crash on that request, its listener gone
/// first) is tried once more on a new connection to it: refused, it
/// waits for the instance started in its place, not a 502.
#[test]
fn a_request_an_exiting_instance_drops_waits_for_its_successor() {
    if !have_node() {
        return;
    }
    let (_marks, s) = marked_app("apps-vanishing", EXITING_APP);
    let first = s.ready_pids("web", 1)[0];
    let r = crate::util::get(
        s.server.addr,
        "GET /vanish HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    // Tried again on the successor, which answers it (`/vanish` vanishes
    // once): its pid.
    assert_eq!(r.status, 200, "{r:?}\n{}", s.server.log());
    assert_ne!(r.text(), first.to_string());
}

/// An instance killed with a connection of the pool to it (a SIGKILL, an
/// out-of-memory kill): the request on that connection is dropped, then,
/// tried again on a new one, dropped too by the dying process, which took
/// it into its backlog. The first drop being the keep-alive race's try
/// (not counted), the second left a retry allowed but no other server to
/// go to, and the request got a 502 at once, not the wait for the
/// instance's successor that a refused connection gets (about 8 a kill
/// under load, with one instance).
#[test]
fn a_pooled_request_to_an_instance_killed_under_it_waits_for_its_successor() {
    if !have_node() {
        return;
    }
    // `/crash`, once: every request from then on, on any connection, is
    // dropped, and the process ends 300 ms later, its listener open until
    // then (as a killed process's is while the kernel tears it down).
    let code = "const fs = require('fs'); let dying = false;\
                require('http').createServer((q, r) => {\
                  if (dying) { q.socket.destroy(); return; }\
                  if (q.url === '/crash' && !fs.existsSync(process.env.MARK)) {\
                    fs.writeFileSync(process.env.MARK, '');\
                    dying = true;\
                    q.socket.destroy();\
                    setTimeout(() => process.exit(0), 300);\
                    return;\
                  }\
                  const b = String(process.pid);\
                  r.writeHead(200, { 'Content-Length': b.length });\
                  r.end(b);\
                }).listen(+process.env.PORT, '127.0.0.1');";
    let (_marks, s) = marked_app("apps-killed-pooled", code);
    let first = s.ready_pids("web", 1)[0];
    // Leaves a connection to the instance in the shard's pool.
    assert_eq!(s.get("/").text(), first.to_string());
    let r = s.get("/crash");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.server.log());
    assert_ne!(r.text(), first.to_string());
}

/// An instance that closes its listener and runs on (`server.close()` in
/// an error handler) is out of service at the next look, shown
/// `not-listening`, and replaced once it has refused connections for its
/// start-timeout: a request meanwhile waits for its successor, where it
/// got a 502 after connect-timeout for as long as the instance lived.
#[test]
fn an_instance_that_stops_listening_is_replaced() {
    if !have_node() {
        return;
    }
    let extra = "connect-timeout = \"30s\"\nstart-timeout = \"2s\"";
    let s = AppServer::start(
        "apps-deaf",
        &(app("web", &["node", "-e", EXITING_APP], 1, extra) + &proxied("/", "web")),
    );
    let first = s.ready_pids("web", 1)[0];
    let get = |path: &str| s.get(path);
    assert_eq!(get("/close").text(), "closed");
    s.wait_instances("web", "out of service", |is| {
        is.len() == 1 && is[0].state == "not-listening" && is[0].up == 0.0
    });
    assert!(alive(first));
    let r = get("/");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.server.log());
    assert_ne!(
        r.text(),
        first.to_string(),
        "answered by the one not listening"
    );
    let log = s.server.log();
    assert!(
        log.contains(&format!("app web[0] (pid {first}) refuses connections at")),
        "{log}"
    );
    assert!(log.contains("(start-timeout); replacing it"), "{log}");
    assert!(all_gone(&[first], Duration::from_secs(10)), "{log}");
}

/// An instance that dies with requests in its backlog (a crash under
/// load) resets the connection a request was tried again on, as one that
/// destroys it on purpose does: once its exit is heard, the request goes
/// to another instance, where it got a 502 (about one request in 200
/// under load for each crash).
#[test]
fn a_request_an_instance_drops_twice_as_it_dies_goes_to_another() {
    if !have_node() {
        return;
    }
    let s = AppServer::start(
        "apps-dies-dropping",
        &(app(
            "web",
            &["node", "-e", EXITING_APP],
            2,
            // No pooled connection: a close on one would be taken for
            // the keep-alive race, and its own try on a new connection
            // would be the first drop, not the second.
            "balance = \"ip-hash\"\nkeepalive = 0\nconnect-timeout = \"30s\"",
        ) + &proxied("/", "web")),
    );
    s.ready_pids("web", 2);
    let get = |path: &str| s.get(path);
    // Every request goes to this client's instance (ip-hash): from now on
    // it drops each and dies.
    let doomed = get("/doom").text();
    let r = get("/");
    assert_eq!(r.status, 200, "{r:?}\n{}", s.server.log());
    assert_ne!(r.text(), doomed, "answered by the one that died");
}
