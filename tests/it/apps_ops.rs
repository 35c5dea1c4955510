//! App workers in operation: start-up failures (an instance that never
//! listens, one that exits, a missing program), a killed instance restarted
//! while traffic goes to the others, a crash loop backing off, a rolling
//! reload under load with no failed request, a long request on a replaced
//! instance answered before it is stopped, a replacement that never
//! comes up, a stop that finds a replacement still starting, an app
//! renamed under load with no failed request, a new app
//! that never comes up refusing its reload, a changed number of instances,
//! an instance replaced past `max-memory`, and an output flood. The
//! harness is in `apps.rs`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::apps::{
    alive, all_gone, app, have_node, node_app, proxied, started_pids, AppServer, Conn, Load,
    ECHO_JS, OK_ROUTE,
};
use crate::config::Scratch;
use crate::util::{command, get, run_to_exit, Server, WAIT};

/// Send SIGKILL to one process.
fn kill(pid: u32) {
    // SAFETY: kill(2) on a process this test's coreserve started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// `coreserve_upstream_requests_total` of app `web`'s server `server`.
fn requests_to(s: &AppServer, server: &str) -> f64 {
    let scrape = crate::metrics::scrape(&s.server);
    crate::proxy_ops::group_sample(&scrape, "coreserve_upstream_requests_total", "web", server)
}

/// Every line of `log` that contains `needle`, from byte `from` on.
fn lines_with<'a>(log: &'a str, from: usize, needle: &str) -> Vec<&'a str> {
    log[from..].lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn a_killed_instance_is_restarted_while_the_other_serves() {
    if !have_node() {
        return;
    }
    let s = AppServer::start(
        "apps-restart",
        &(node_app("web", 2, "") + &proxied("/", "web")),
    );
    let old = s.ready_pids("web", 2);
    let load = Load::start(s.server.addr, "/whoami", 1, 1);
    load.wait_ok(20);
    let addr = s.instances()[0].server.clone();
    let before = requests_to(&s, &addr);
    assert!(before > 0.0, "{addr}: {before}");
    kill(old[0]);
    let is = s.wait_instances("web", "restarted", |is| {
        is.len() == 2 && is[0].state == "ready" && is[0].pid.is_some_and(|p| p != old[0])
    });
    assert_eq!(is[0].restarts, 1.0, "{is:?}");
    assert_eq!((is[1].pid, is[1].restarts), (Some(old[1]), 0.0), "{is:?}");
    // On its slot's address again, where its series goes on: never back
    // to 0 beside a `removed` series that took its counts.
    assert_eq!(is[0].server, addr, "{is:?}");
    let new = is[0].pid.unwrap();
    // The load reaches the new instance too.
    let deadline = Instant::now() + WAIT;
    while !s.whoamis("/whoami", 2).iter().any(|w| w.pid == new) {
        assert!(Instant::now() < deadline, "{new} never answers");
    }
    load.wait_ok(20);
    assert!(requests_to(&s, &addr) > before, "{addr}");
    assert_eq!(requests_to(&s, "removed"), 0.0);
    let t = load.stop();
    assert_eq!(t.failed, 0, "{:?}", t.errors);
    let log = s.server.log();
    assert!(
        log.contains(&format!(
            "app web[0] (pid {}) exited: signal: 9 (SIGKILL); starting it again ",
            old[0]
        )),
        "{log}"
    );
    assert_eq!(started_pids(&log, "app web[0]"), [old[0], new]);
    assert!(!alive(old[0]));
}

/// The processes whose command line is `sleep ARG` (a test's marker).
fn sleeping(arg: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c == format!("sleep\0{arg}\0").as_bytes())
        })
        .collect()
}

/// An instance that dies by itself leaving a `detached` child holding its
/// output: the child is ended with it (a stop would have ended it too), not
/// left running with two of coreserve's output threads waiting on it, one
/// pair more at each crash of a crash-looping app.
#[test]
fn a_detached_child_left_holding_a_dead_instances_output_is_ended() {
    if !have_node() {
        return;
    }
    let dir = Scratch::new("apps-detached-files");
    let marker = format!("{}.5", 3000 + std::process::id() % 1000);
    let script = dir.write(
        "app.sh",
        format!("setsid sleep {marker} &\nexec node {ECHO_JS}\n"),
    );
    let toml = app("web", &["sh", &script.display().to_string()], 1, "") + &proxied("/", "web");
    let s = AppServer::start("apps-detached-output", &toml);
    let pid = s.ready_pids("web", 1)[0];
    let left = sleeping(&marker);
    assert_eq!(left.len(), 1, "{left:?}");
    kill(pid);
    s.server
        .wait_for_log("which it started and left behind holding its output, killed");
    assert!(all_gone(&left, Duration::from_secs(2)), "{left:?}");
    // The restarted instance started its own, which the stop ends.
    s.ready_pids("web", 1);
    drop(s);
    for p in sleeping(&marker) {
        kill(p);
    }
}

/// One request crashed an app's only instance: the next request waits
/// for its restart (at most connect-timeout) rather than getting a 503 for
/// the moment the instance takes to start, as cluster's master holds its
/// connections while it forks a worker anew.
#[test]
fn a_request_waits_for_an_app_whose_instances_are_all_restarting() {
    if !have_node() {
        return;
    }
    let dir = Scratch::new("apps-all-down-script");
    let marker = dir.path("started");
    // A restart listens a second late, long after every shard knew the
    // instance was gone.
    let script = dir.write(
        "app.js",
        format!(
            "const fs = require('fs');\nconst http = require('http');\n\
             const late = fs.existsSync({marker:?});\nfs.writeFileSync({marker:?}, '');\n\
             setTimeout(() => http.createServer((req, res) => {{\n\
               if (req.url === '/crash') process.exit(1);\n\
               res.end('up ' + process.pid);\n\
             }}).listen(process.env.PORT, '127.0.0.1'), late ? 1000 : 0);\n"
        ),
    );
    let toml = app("web", &["node", &script.display().to_string()], 1, "") + &proxied("/", "web");
    let s = AppServer::start("apps-all-down", &toml);
    let old = s.ready_pids("web", 1)[0];
    // Served long enough to be started again at once.
    std::thread::sleep(Duration::from_millis(2100));
    let _ = Conn::open(s.server.addr).unwrap().get("/crash");
    s.server.wait_for_log("starting it again now");
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    let got = Conn::open(s.server.addr).unwrap().get("/");
    let (status, body) = got.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("up ") && body != format!("up {old}"),
        "{body}"
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "it did not wait"
    );
}

#[test]
fn a_crash_loop_backs_off_while_the_rest_keeps_serving() {
    if !have_node() {
        return;
    }
    let dir = Scratch::new("apps-crash-files");
    let crash = dir.path("crash");
    // Instance 0 crashes at once while the file exists; 1 never does.
    let script = dir.write(
        "app.sh",
        format!(
            "if [ -e {crash} ] && [ \"$CORESERVE_INSTANCE\" = 0 ]; then\n\
             echo \"crashing on purpose\"; exit 3\nfi\nexec node {ECHO_JS}\n"
        ),
    );
    let toml =
        app("web", &["sh", &script.display().to_string()], 2, "") + OK_ROUTE + &proxied("/", "web");
    let s = AppServer::start("apps-crash", &toml);
    let pids = s.ready_pids("web", 2);
    // Served long enough (`child::SERVED_LONG`) to be started again at
    // once: it is the crashes at start that back off.
    std::thread::sleep(Duration::from_millis(2100));
    dir.write("crash", "");
    let from = s.server.log().len();
    let load = Load::start(s.server.addr, "/whoami", 1, 1);
    kill(pids[0]);
    let killed = Instant::now();
    // Deaths at about 0 (started again at once), 0, 1 and 3 s, then a
    // wait of 4 s: the loop is seen up to 5 s in, then the file goes and
    // the start at about 7 s works.
    while killed.elapsed() < Duration::from_millis(5200) {
        let mut c = Conn::open(s.server.addr).unwrap();
        assert_eq!(c.get("/ok"), Ok((200, "ok".to_string())));
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = s.server.log();
    let deaths = lines_with(&log, from, "app web[0] (pid ");
    let deaths: Vec<&&str> = deaths.iter().filter(|l| l.contains(" exited")).collect();
    assert!(
        (3..=5).contains(&deaths.len()),
        "{} deaths in 5 s:\n{log}",
        deaths.len()
    );
    let delays: Vec<&str> = deaths
        .iter()
        .filter_map(|l| l.split("starting it again ").nth(1))
        .map(|rest| rest.trim_start_matches("in "))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_alphanumeric()).next())
        .collect();
    assert_eq!(delays, ["now", "1s", "2s", "4s"][..delays.len()], "{log}");
    assert!(
        log[from..].contains("exited before it was ready: exit status: 3; starting it again in 2s"),
        "{log}"
    );
    assert!(
        log[from..].contains("app web[0]: crashing on purpose"),
        "{log}"
    );
    let is = s.instances();
    assert_eq!(is[0].state, "restarting", "{is:?}");
    assert!(is[0].restarts >= 2.0, "{is:?}");
    assert_eq!((is[1].pid, is[1].state.as_str()), (Some(pids[1]), "ready"));
    // `coreserve status` says how it last ended and when it starts again,
    // as `pm2 ls`/`pm2 describe` would; instance 1 never ended.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coreserve"))
        .args([
            "status",
            "--interval",
            "100ms",
            "--url",
            &s.server.metrics_url(),
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |i: &str| -> Vec<&str> {
        table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|r| r.len() > 2 && r[0] == "web" && r[1] == i)
            .unwrap_or_else(|| panic!("no row {i}:\n{table}"))
    };
    let (crashing, fine) = (row("0"), row("1"));
    assert!(crashing[3].starts_with("restarting("), "{table}");
    assert_eq!(
        crashing[crashing.len() - 4..crashing.len() - 2],
        ["exit", "3,"],
        "{table}"
    );
    assert_eq!(crashing.last(), Some(&"ago"), "{table}");
    assert_eq!(fine.last(), Some(&"-"), "{table}");
    let t = load.stop();
    assert_eq!(t.failed, 0, "{:?}", t.errors);
    // Instance 1 took the traffic: nothing failed, and no incarnation of
    // the crashing one ever answered.
    assert!(t.seen.iter().any(|w| w.pid == pids[1]), "{t:?}");
    assert!(t.seen.iter().all(|w| pids.contains(&w.pid)), "{t:?}");

    // Fixed: the next start (about 7 s in) comes up and serves again.
    std::fs::remove_file(&crash).unwrap();
    let is = s.wait_instances("web", "recovered", |is| {
        is[0].state == "ready" && is[0].pid.is_some_and(|p| p != pids[0])
    });
    let back = is[0].pid.unwrap();
    let deadline = Instant::now() + WAIT;
    while !s.whoamis("/whoami", 2).iter().any(|w| w.pid == back) {
        assert!(Instant::now() < deadline, "{back} never answers");
    }
}

/// App `web` of `instances` echo.js instances at `version`, proxied at
/// `/`. Its instances die at once on SIGTERM, as a Node app without a
/// handler does: the requests still going to an old instance must have
/// ended before it is stopped.
fn abrupt_web(instances: usize, version: u32) -> String {
    let env = format!("env = {{ VERSION = \"{version}\", ABRUPT = \"1\" }}");
    node_app("web", instances, &env) + &proxied("/", "web")
}

#[test]
fn a_rolling_reload_under_load_fails_no_request() {
    if !have_node() {
        return;
    }
    let toml = |version| abrupt_web(2, version);
    let s = AppServer::start("apps-roll", &toml(1));
    let old = s.ready_pids("web", 2);
    // Quick GETs, and POSTs (never retried once sent) that take 150 ms.
    let load = Load::start(s.server.addr, "/whoami", 1, 1);
    let slow = Load::requests(s.server.addr, "POST", "/whoami?ms=150", 2, 2);
    load.wait_ok(50);
    slow.wait_ok(10);
    let from = s.server.log().len();
    s.reload(&toml(2));
    s.wait_for_count("app web: changed; replacing its instances one at a time", 1);
    for (i, pid) in old.iter().enumerate() {
        s.wait_for_count(&format!("app web[{i}] (pid {pid}) stopped: "), 1);
    }
    let new = s.ready_pids("web", 2);
    load.wait_ok(50);
    slow.wait_ok(10);
    let mut t = load.stop();
    let posts = slow.stop();
    assert_eq!(
        (t.failed, posts.failed),
        (0, 0),
        "{:?} {:?}",
        t.errors,
        posts.errors
    );
    assert!(t.ok > 100 && posts.ok > 20, "{t:?} {posts:?}");
    t.seen.extend(posts.seen);
    assert!(new.iter().all(|p| !old.contains(p)), "{old:?} {new:?}");
    assert!(all_gone(&old, Duration::ZERO));
    // Both versions served during the load, and only the new one now.
    let versions: BTreeSet<&str> = t.seen.iter().map(|w| w.version.as_str()).collect();
    assert_eq!(versions, BTreeSet::from(["1", "2"]), "{t:?}");
    for w in s.whoamis("/whoami", 6) {
        assert!(new.contains(&w.pid) && w.version == "2", "{w:?}");
    }
    // One at a time: the second replacement started once the first was
    // ready, and each old instance stopped after its replacement was.
    let log = s.server.log();
    let events: Vec<String> = log[from..]
        .lines()
        .filter_map(|l| {
            let who = l.split("app web[").nth(1)?;
            let index = who.chars().next()?;
            let what = if who.contains("] started: pid") {
                "start"
            } else if who.contains("] is ready") {
                "ready"
            } else if who.contains(") stopped: ") {
                "stop"
            } else {
                return None;
            };
            Some(format!("{what}{index}"))
        })
        .collect();
    let at = |e: &str| {
        events
            .iter()
            .position(|x| x == e)
            .unwrap_or_else(|| panic!("no {e} in {events:?}"))
    };
    assert!(
        at("start0") < at("ready0") && at("ready0") < at("start1"),
        "{events:?}"
    );
    assert!(
        at("ready0") < at("stop0") && at("ready1") < at("stop1"),
        "{events:?}"
    );
}

/// A request still running on an instance that a reload replaces, well
/// past the second the shards need to stop sending it new ones: the old
/// instance (dying at once on SIGTERM, as a Node app without a handler
/// does) is asked to stop only once it has answered, and the answer (to a
/// POST, which is never retried) reaches the client.
#[test]
fn a_replaced_instance_finishes_its_long_request_before_it_is_stopped() {
    if !have_node() {
        return;
    }
    let toml = |version| abrupt_web(1, version);
    let s = AppServer::start("apps-long", &toml(1));
    let old = s.ready_pids("web", 1);
    let addr = s.server.addr;
    let slow = std::thread::spawn(move || {
        let raw = "POST /whoami?ms=6000 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n";
        get(addr, raw)
    });
    // The request is at the instance once the shard counts it busy.
    let deadline = Instant::now() + WAIT;
    while crate::metrics::values(
        &crate::metrics::scrape(&s.server),
        "coreserve_upstream_busy_connections",
    )
    .values()
    .sum::<f64>()
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the request never reached the app"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s.reload(&toml(2));
    // While the request runs, the metrics (and `coreserve status`) show
    // the old instance draining, and what it waits for.
    let draining = |scrape: &prometheus_parse::Scrape| {
        crate::metrics::values(scrape, "coreserve_app_instance_leaving_connections")
            .into_iter()
            .any(|(labels, open)| {
                labels.contains(&format!("pid={}", old[0]))
                    && labels.contains("state=draining")
                    && open == 1.0
            })
    };
    let deadline = Instant::now() + WAIT;
    while !draining(&crate::metrics::scrape(&s.server)) {
        assert!(Instant::now() < deadline, "never shown as draining");
        std::thread::sleep(Duration::from_millis(20));
    }
    let answer = slow.join().unwrap();
    assert_eq!(answer.status, 200, "{}", s.server.log());
    assert_eq!(
        answer.text(),
        format!("{} 0 1", old[0]),
        "answered by the old instance"
    );
    s.server.wait_for_log(&format!(
        "app web[0] (pid {}): out of service; waiting for its 1 open connection(s) to end",
        old[0]
    ));
    s.wait_for_count(&format!("app web[0] (pid {}) stopped: ", old[0]), 1);
    let new = s.ready_pids("web", 1);
    assert_ne!(new, old);
    assert!(!s.server.log().contains("still open after drain-timeout"));
}

/// `ip-hash` with an app: a client's instance is known by its slot, so a
/// rolling reload hands each slot's clients to that slot's replacement
/// (at another port) and moves no client to another slot's instance,
/// before, during or after the roll.
#[test]
fn ip_hash_keeps_each_client_in_its_slot_through_a_rolling_reload() {
    if !have_node() {
        return;
    }
    let toml = |version: u32| {
        let settings = format!(
            "balance = \"ip-hash\"\nmax-fails = 0\nmin-uptime = \"300ms\"\n\
             env = {{ VERSION = \"{version}\" }}"
        );
        node_app("web", 3, &settings) + &proxied("/", "web")
    };
    let s = AppServer::start("apps-ip-hash-roll", &toml(1));
    let old = s.ready_pids("web", 3);
    let clients: Vec<std::net::IpAddr> = (1..=30).map(|n| [127, 0, n, 1].into()).collect();
    let homes: Vec<String> = clients
        .iter()
        .map(|&c| s.whoami_from("/whoami", c).instance)
        .collect();
    let slots: BTreeSet<&String> = homes.iter().collect();
    assert!(slots.len() > 1, "30 networks all in one slot: {homes:?}");
    let in_their_slots = |round: &str| {
        for (&c, home) in clients.iter().zip(&homes) {
            let who = s.whoami_from("/whoami", c);
            assert_eq!(&who.instance, home, "{c} {round}: {who:?}");
        }
    };
    s.reload(&toml(2));
    let deadline = Instant::now() + WAIT * 3;
    let mut rounds = 0;
    while old.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "the roll never ended:\n{}",
            s.server.log()
        );
        rounds += 1;
        in_their_slots(&format!("in round {rounds} of the roll"));
    }
    let new = s.ready_pids("web", 3);
    assert!(new.iter().all(|p| !old.contains(p)), "{old:?} {new:?}");
    in_their_slots("after the roll");
    assert!(
        rounds > 3,
        "the roll was over before it was looked at: {rounds} rounds"
    );
}

/// An instance whose memory passes `max-memory` (a leak) is replaced as a
/// rolling reload replaces one, as PM2's `max_memory_restart` restarts it
/// but without failing a request: a replacement starts and serves, then
/// the instance leaves; the other instance is left alone.
#[test]
fn an_instance_past_max_memory_is_replaced_without_failing_a_request() {
    if !have_node() {
        return;
    }
    let toml =
        node_app("web", 2, "max-memory = \"200m\"\nmin-uptime = \"0s\"") + &proxied("/", "web");
    let s = AppServer::start("apps-max-memory", &toml);
    let old = s.ready_pids("web", 2);
    let load = Load::start(s.server.addr, "/whoami", 2, 1);
    load.wait_ok(20);
    // Whichever instance takes it grows past the limit.
    let mut c = Conn::open(s.server.addr).unwrap();
    let (status, grown) = c.get("/grow?mb=300").unwrap();
    assert_eq!(status, 200);
    let grown: u32 = grown.parse().unwrap();
    let kept = old.iter().copied().find(|&p| p != grown).unwrap();
    let is = s.wait_instances("web", "replaced", |is| {
        is.len() == 2
            && is.iter().all(|i| i.state == "ready")
            && !is.iter().any(|i| i.pid == Some(grown))
    });
    assert!(is.iter().any(|i| i.pid == Some(kept)), "{is:?}");
    // Counted as its slot's restart, as PM2 counts it, and said why.
    let replaced = is.iter().find(|i| i.pid != Some(kept)).unwrap();
    assert_eq!(replaced.restarts, 1.0, "{is:?}");
    assert!(all_gone(&[grown], WAIT), "{grown} still runs");
    load.wait_ok(20);
    let t = load.stop();
    assert_eq!(t.failed, 0, "{:?}", t.errors);
    let log = s.server.log();
    assert!(
        log.contains(&format!("(pid {grown}): ")) && log.contains("over max-memory (200 MiB)"),
        "{log}"
    );
    // By how much, to a tenth of a MiB: more than the limit.
    let used: f64 = log
        .split(&format!("(pid {grown}): "))
        .nth(1)
        .and_then(|rest| rest.split(" MiB resident").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resident size in {log}"));
    assert!(used > 200.0, "{log}");
    let exits = crate::metrics::scrape(&s.server).samples;
    let said = exits.iter().any(|x| {
        x.metric == "coreserve_app_instance_last_exit_seconds"
            && x.labels.get("how") == Some("max-memory")
    });
    assert!(said, "no last exit of max-memory");
}

/// An app that needs more than its `max-memory` from its start is replaced
/// after 1 s, then 2, then 4 (a crash loop's back-off), not every few
/// seconds for ever: each replacement would be past the limit too.
#[test]
fn an_app_past_max_memory_from_its_start_is_replaced_ever_more_slowly() {
    if !have_node() {
        return;
    }
    let toml = node_app(
        "big",
        1,
        "max-memory = \"100m\"\nmin-uptime = \"0s\"\nenv = { BOOT_MB = \"150\" }",
    ) + &proxied("/", "big");
    let s = AppServer::start("apps-max-memory-boot", &toml);
    s.wait_for_count("replacing it in 4s", 1);
    let log = s.server.log();
    let delays: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("replacing it in ").nth(1))
        .collect();
    assert_eq!(delays, ["1s", "2s", "4s"], "{log}");
}

/// A reload to a command that exits at once: the roll must not start
/// replacements as fast as they die, and the old instance keeps serving.
#[test]
fn a_replacement_that_never_comes_up_backs_off_and_the_old_instance_serves() {
    if !have_node() {
        return;
    }
    let dir = Scratch::new("apps-bad-roll-files");
    let broken = dir.write("broken.sh", "echo \"broken build\"\nexit 1\n");
    let good = node_app("web", 1, "") + &proxied("/", "web");
    let bad = app("web", &["sh", &broken.display().to_string()], 1, "") + &proxied("/", "web");
    let s = AppServer::start("apps-bad-roll", &good);
    let old = s.ready_pids("web", 1);
    let load = Load::start(s.server.addr, "/whoami", 1, 1);
    let from = s.server.log().len();
    s.reload(&bad);
    s.wait_for_count("app web: changed; replacing its instances one at a time", 1);
    std::thread::sleep(Duration::from_millis(3500));
    let log = s.server.log();
    let tries = lines_with(&log, from, "the replacement (pid ").len();
    // At 0, 1 and 3 s with the back-off; hundreds without.
    assert!((1..=4).contains(&tries), "{tries} tries:\n{log}");
    // (A replacement's line, beside the instance it was to replace.)
    assert!(
        log[from..].contains("app web[0] (new): broken build"),
        "{log}"
    );
    let t = load.stop();
    assert_eq!(t.failed, 0, "{:?}", t.errors);
    assert_eq!(t.seen.iter().map(|w| w.pid).collect::<Vec<_>>(), old);
    // Serving, and shown as running the settings the reload replaced.
    let shown = s.wait_instances("web", "ready-old", |is| {
        is.len() == 1 && is[0].state == "ready-old" && is[0].up == 1.0
    });
    assert_eq!(shown[0].pid, Some(old[0]));

    // Back to the good command: the tries stop, and the instance that
    // runs it already is kept.
    s.reload(&good);
    s.wait_for_count(
        "app web: changed back to the settings its instances run; none is replaced",
        1,
    );
    let restored = s.server.log().len();
    std::thread::sleep(Duration::from_millis(2000));
    let log = s.server.log();
    // One broken replacement may have been on its way.
    assert!(
        lines_with(&log, restored, "the replacement (pid ").len() <= 1,
        "still trying:\n{log}"
    );
    assert_eq!(s.ready_pids("web", 1), old);
    assert_eq!(s.whoami("/whoami").pid, old[0]);
}

/// An app whose only instance is down for longer than connect-timeout
/// answers 503 once that is over, and the log says why (its group lists no
/// server), not that servers rest after failures.
#[test]
fn an_app_with_no_instance_ready_says_so_with_its_503() {
    if !have_node() {
        return;
    }
    let dir = Scratch::new("apps-none-ready-mark");
    let mark = dir.path("started");
    // Its restart takes 10 s to listen.
    let command = format!(
        "if [ -e {m} ]; then sleep 10; fi; touch {m}; exec node {ECHO_JS}",
        m = mark
    );
    let s = AppServer::start(
        "apps-none-ready",
        &(app(
            "web",
            &["sh", "-c", &command],
            1,
            "connect-timeout = \"300ms\"",
        ) + &proxied("/", "web")),
    );
    let pid = s.ready_pids("web", 1)[0];
    kill(pid);
    // A 503 once a request waited connect-timeout for the restart (the
    // exit takes a moment to reach the shards).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        let status = Conn::open(s.server.addr)
            .and_then(|mut c| c.get("/whoami"))
            .map(|r| r.0);
        got.push(status);
        if got.last() == Some(&Ok(503)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(got.last(), Some(&Ok(503)), "{got:?}");
    s.server
        .wait_for_log("upstream web: no server can be tried: it lists none (an app with no instance ready); answering 503");
}

/// A stop while a rolling reload's replacement is still starting: the
/// replacement is stopped at once rather than waited for, and the old
/// instance serves until the stop.
#[test]
fn a_stop_during_a_rolling_reload_stops_the_starting_replacement() {
    if !have_node() {
        return;
    }
    let good = node_app("web", 1, "") + &proxied("/", "web");
    // Still loading when the stop comes.
    let command = format!("sleep 60; exec node {ECHO_JS}");
    let slow = app("web", &["sh", "-c", &command], 1, "") + &proxied("/", "web");
    let s = AppServer::start("apps-stop-mid-roll", &good);
    let old = s.ready_pids("web", 1);
    s.reload(&slow);
    s.wait_for_count("app web[0] started: pid", 2);
    let replacement = started_pids(&s.server.log(), "app web[0]")[1];
    let from = s.server.log().len();
    let log = s.server.stop();
    assert_eq!(
        lines_with(&log, from, "is stopped before it was ready").len(),
        1,
        "{log}"
    );
    assert!(all_gone(&[old[0], replacement], WAIT), "{log}");
}

/// App `name` of `instances` echo.js instances at `version`, proxied at
/// `/`, that take a second to listen (a Node app loading its bundle).
fn slow_starting(name: &str, instances: usize, version: u32) -> String {
    let command = format!("sleep 1; exec node {ECHO_JS}");
    let env = format!("env = {{ VERSION = \"{version}\" }}");
    app(name, &["sh", "-c", &command], instances, &env) + &proxied("/", name)
}

/// A reload that renames the app (`web` to `web2`, in its `[[app]]` and
/// in the route) is a new app and a route to it: the shards keep routing
/// to `web` until every instance of `web2` is ready, and `web` stops only
/// after the switch. Before, the route went to `web2` at once and every
/// request was a 503 until its instances were up.
#[test]
fn renaming_an_app_under_load_fails_no_request() {
    if !have_node() {
        return;
    }
    let s = AppServer::start("apps-rename", &slow_starting("web", 2, 1));
    let old = s.ready_pids("web", 2);
    let load = Load::start(s.server.addr, "/whoami", 1, 1);
    load.wait_ok(50);
    let from = s.server.log().len();
    s.reload(&slow_starting("web2", 2, 2));
    s.wait_for_count("app web2: new; starting 2 instances", 1);
    let new = s.ready_pids("web2", 2);
    s.wait_for_count("SIGHUP: configuration reloaded on every shard", 1);
    for (i, pid) in old.iter().enumerate() {
        s.wait_for_count(&format!("app web[{i}] (pid {pid}) stopped: "), 1);
    }
    load.wait_ok(50);
    let t = load.stop();
    let log = s.server.log();
    assert_eq!(t.failed, 0, "{:?}\n{log}", t.errors);
    assert!(new.iter().all(|p| !old.contains(p)), "{old:?} {new:?}");
    assert!(all_gone(&old, Duration::ZERO));
    // Both apps served during the load, and only the new one now.
    let versions: BTreeSet<&str> = t.seen.iter().map(|w| w.version.as_str()).collect();
    assert_eq!(versions, BTreeSet::from(["1", "2"]), "{t:?}");
    for w in s.whoamis("/whoami", 4) {
        assert!(new.contains(&w.pid) && w.version == "2", "{w:?}");
    }
    // In order: web2's instances ready, the switch, then web leaves.
    let at = |needle: &str| {
        log[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{log}"))
    };
    let switched = at("SIGHUP: app(s) web2 ready; the new configuration applies");
    assert!(at("app web2[0] is ready") < switched, "{log}");
    assert!(at("app web2[1] is ready") < switched, "{log}");
    assert!(
        switched < at("app web: removed; stopping its instances"),
        "{log}"
    );
    assert!(switched < at("SIGHUP: configuration reloaded on every shard"));
}

/// A reload that renames the app to one whose program exits at once: the
/// shards never route to it, the reload is refused as its first instance
/// exits (not at its start-timeout, 30 s here: start-up fails at once on
/// it too), its instances stop, and the old app serves throughout. The
/// same rename, fixed, then applies.
#[test]
fn a_reload_adding_an_app_that_never_comes_up_is_refused() {
    if !have_node() {
        return;
    }
    let dir = Scratch::new("apps-bad-new-files");
    let broken = dir.write("broken.sh", "echo \"broken build\"\nexit 1\n");
    let good = node_app("web", 1, "") + &proxied("/", "web");
    let timeout = "start-timeout = \"30s\"";
    let bad =
        app("web2", &["sh", &broken.display().to_string()], 1, timeout) + &proxied("/", "web2");
    let s = AppServer::start("apps-bad-new", &good);
    let old = s.ready_pids("web", 1);
    let load = Load::start(s.server.addr, "/whoami", 1, 1);
    load.wait_ok(20);
    let from = s.server.log().len();
    s.reload(&bad);
    s.wait_for_count("the reload is refused, still serving the previous", 1);
    load.wait_ok(20);
    let t = load.stop();
    let log = s.server.log();
    assert_eq!(t.failed, 0, "{:?}\n{log}", t.errors);
    assert_eq!(t.seen.iter().map(|w| w.pid).collect::<Vec<_>>(), old);
    assert!(
        log[from..].contains("SIGHUP: app web2[0] (pid ")
            && log[from..].contains(" exited before it was ready: exit status: 1"),
        "{log}"
    );
    assert!(log[from..].contains("app web2[0]: broken build"), "{log}");
    assert!(!log[from..].contains("configuration reloaded"), "{log}");
    assert!(!log[from..].contains("app web: removed"), "{log}");
    s.wait_instances("web2", "gone", |is| is.is_empty());
    assert_eq!(s.ready_pids("web", 1), old);

    // Fixed: the rename applies, and web leaves.
    s.reload(&(node_app("web2", 1, "") + &proxied("/", "web2")));
    let new = s.ready_pids("web2", 1);
    s.wait_for_count("SIGHUP: configuration reloaded on every shard", 1);
    assert_eq!(s.whoami("/whoami").pid, new[0]);
    s.wait_for_count(&format!("app web[0] (pid {}) stopped: ", old[0]), 1);
}

#[test]
fn the_serving_set_follows_a_changed_number_of_instances() {
    if !have_node() {
        return;
    }
    let toml = |n: usize| node_app("web", n, "") + &proxied("/", "web");
    let s = AppServer::start("apps-count", &toml(2));
    let two = s.ready_pids("web", 2);
    let seen = |n: usize| -> BTreeSet<(u32, String)> {
        s.whoamis("/whoami", n)
            .into_iter()
            .map(|w| (w.pid, w.instance))
            .collect()
    };
    assert_eq!(seen(4).len(), 2);

    s.reload(&toml(3));
    let three = s.ready_pids("web", 3);
    assert_eq!(three[..2], two[..], "the first two were kept");
    let expected: BTreeSet<(u32, String)> = three
        .iter()
        .enumerate()
        .map(|(i, &p)| (p, i.to_string()))
        .collect();
    // Round-robin over the three, once the shard has the new list.
    let deadline = Instant::now() + WAIT;
    while seen(6) != expected {
        assert!(Instant::now() < deadline, "never served by {expected:?}");
    }

    s.reload(&toml(1));
    for (i, pid) in three.iter().enumerate().skip(1) {
        s.wait_for_count(&format!("app web[{i}] (pid {pid}) stopped: "), 1);
    }
    assert_eq!(s.ready_pids("web", 1), [two[0]]);
    assert_eq!(seen(4), BTreeSet::from([(two[0], "0".to_string())]));
    assert!(all_gone(&three[1..], Duration::ZERO));
    let log = s.server.log();
    assert!(!log.contains("replacing its instances"), "{log}");
    // Said as what it is (probe B: only "nothing ... changed, so they run
    // on" was logged).
    assert!(
        log.contains("app web: instances 2 -> 3; starting instance 2"),
        "{log}"
    );
    assert!(
        log.contains(
            "app web: instances 3 -> 1; stopping instances 1 to 2 once their requests are done"
        ),
        "{log}"
    );
}

#[test]
fn an_instance_that_never_listens_fails_start_up_with_its_last_output() {
    let dir = Scratch::new("apps-never-ready");
    let script = dir.write(
        "slow.sh",
        "echo \"loading the bundle\"\necho \"still loading\" >&2\n\
         printf \"connecting to the database... \"\nexec sleep 30\n",
    );
    let toml = app(
        "slow",
        &["sh", &script.display().to_string()],
        2,
        "start-timeout = \"1s\"",
    ) + &proxied("/", "slow");
    let conf = dir.write("app.toml", toml).display().to_string();
    let (status, log, took) = run_to_exit(&["--config", &conf], Duration::from_secs(8));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(took >= Duration::from_secs(1), "{took:?}\n{log}");
    assert!(
        log.contains("app slow[0] did not accept connections within 1s (start-timeout)"),
        "{log}"
    );
    let error = log
        .lines()
        .position(|l| l.contains("did not accept connections"))
        .unwrap();
    let after: Vec<&str> = log.lines().skip(error + 1).take(3).collect();
    assert!(after.contains(&"    loading the bundle"), "{log}");
    assert!(after.contains(&"    still loading"), "{log}");
    // A line it had not ended yet: what it hung on.
    assert!(
        after
            .iter()
            .any(|l| l.starts_with("    connecting to the database...")),
        "{log}"
    );
    assert!(!log.contains("listening on"), "{log}");
    // Both instances (`sleep`, exec'd by the script) are gone.
    let pids: Vec<u32> = ["app slow[0]", "app slow[1]"]
        .iter()
        .flat_map(|w| started_pids(&log, w))
        .collect();
    assert_eq!(pids.len(), 2, "{log}");
    assert!(all_gone(&pids, Duration::from_secs(1)), "{pids:?}\n{log}");
}

#[test]
fn an_instance_that_exits_at_start_up_fails_it_with_its_last_output() {
    let dir = Scratch::new("apps-exits");
    // Node's report of an uncaught error, as long as its real one (28
    // lines), the error itself near the top: a tail of 20 lines left it out.
    let frames: String = (0..17)
        .map(|i| format!("echo '    at frame{i} (node:net:{i}:16)'\n"))
        .collect();
    let script = dir.write(
        "bad.sh",
        format!(
            "echo 'node:events:497'\necho '      throw er; // Unhandled error event'\n\
             echo \"Error: listen EADDRINUSE: address already in use :::3000\"\n{frames}\
             echo '{{'\necho \"  code: 'EADDRINUSE',\"\necho '}}'\necho\n\
             echo 'Node.js v20.19.2'\nexit 3\n"
        ),
    );
    let toml = app("bad", &["sh", &script.display().to_string()], 1, "") + &proxied("/", "bad");
    let conf = dir.write("app.toml", toml).display().to_string();
    let (status, log, _) = run_to_exit(&["--config", &conf], Duration::from_secs(8));
    assert_eq!(status.code(), Some(1), "{log}");
    let (_, report) = log
        .split_once("app bad[0] exited during start-up (exit status: 3); its last output:\n")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        report.starts_with(
            "    node:events:497\n          throw er; // Unhandled error event\n    \
             Error: listen EADDRINUSE: address already in use :::3000\n"
        ),
        "{log}"
    );
    assert!(report.contains("    Node.js v20.19.2\n"), "{log}");
}

#[test]
fn a_missing_program_is_a_configuration_error() {
    let dir = Scratch::new("apps-missing");
    let toml = app("gone", &["no-such-program-for-coreserve"], 1, "") + &proxied("/", "gone");
    let conf = dir.write("app.toml", toml).display().to_string();
    for flags in [
        &["--check", "--config", &conf][..],
        &["--config", &conf][..],
    ] {
        let (status, log, _) = run_to_exit(flags, Duration::from_secs(8));
        assert_eq!(status.code(), Some(2), "{flags:?}: {log}");
        assert!(
            log.contains(
                "app.toml:3: app[1].command: \"no-such-program-for-coreserve\" is not found on PATH"
            ),
            "{flags:?}: {log}"
        );
    }
}

#[test]
fn an_output_flood_does_not_hold_up_other_routes() {
    if !have_node() {
        return;
    }
    const FLOOD: &str = "]: flood xxxx";
    let dir = Scratch::new("apps-flood");
    let toml = node_app("loud", 1, "env = { FLOOD = \"1\" }") + OK_ROUTE + &proxied("/", "loud");
    let conf = dir.write("app.toml", toml).display().to_string();
    let mut cmd = command();
    cmd.args([
        "--config",
        &conf,
        "--shards",
        "1",
        "--listen",
        "127.0.0.1:0",
    ]);
    let server = Server::spawn_skipping(cmd, Some(FLOOD));
    let flooding = |more: u64| {
        let from = server.skipped();
        let deadline = Instant::now() + WAIT;
        while server.skipped() < from + more {
            assert!(Instant::now() < deadline, "no flood: {}", server.log());
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    flooding(10_000);
    for i in 0..20 {
        let started = Instant::now();
        let mut c = Conn::open(server.addr).unwrap();
        let r = c.get("/ok");
        assert_eq!(r, Ok((200, "ok".to_string())), "request {i}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "request {i} took {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still flooding: the requests were answered during it.
    flooding(1_000);
    let log = server.stop();
    assert!(log.contains("app loud[0]: listening"), "{log}");
}

/// A SIGHUP that changes nothing of an app (the default `reload =
/// "changed"`) keeps its instances, and says so and how new code would
/// start: an operator who deployed code and reloaded, as with `pm2
/// reload`, learns why the old code still answers.
#[test]
fn a_reload_that_changes_nothing_of_an_app_says_its_instances_run_on() {
    if !have_node() {
        return;
    }
    let toml = node_app("web", 1, "") + &proxied("/", "web");
    let s = AppServer::start("apps-reload-unchanged", &toml);
    let pids = s.ready_pids("web", 1);
    s.reload(&toml);
    s.server
        .wait_for_log("configuration reloaded on every shard");
    s.server.wait_for_log(
        "app web: nothing that replaces its instances changed, so they run on (to start new code at every reload, set reload = \"always\"",
    );
    assert_eq!(s.whoami("/whoami").pid, pids[0]);
}

/// An app with a second server on a port fixed in the code: a rolling
/// reload's replacement, beside the instance it replaces, dies of
/// EADDRINUSE on it; the log says the instance it was to replace holds it,
/// and why that cannot work (the first words of the advice told it to
/// give each instance its own port, which a replacement shares).
#[test]
fn a_replacement_that_cannot_take_a_second_port_says_who_holds_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = Scratch::new("apps-second-port-script");
    let script = dir.write(
        "two.py",
        format!(
            "import os, socket, time\n\
             t = socket.socket()\nt.bind(('127.0.0.1', {port}))\nt.listen(8)\n\
             s = socket.socket()\ns.bind(('127.0.0.1', int(os.environ['PORT'])))\ns.listen(8)\n\
             time.sleep(600)\n"
        ),
    );
    let script = script.display().to_string();
    let toml = |v: &str| {
        app(
            "web",
            &["python3", &script],
            1,
            &format!("env = {{ V = \"{v}\" }}"),
        ) + &proxied("/", "web")
    };
    let s = AppServer::start("apps-second-port", &toml("1"));
    s.ready_pids("web", 1);
    s.reload(&toml("2"));
    s.server.wait_for_log(&format!(
        "app web[0], which it was to replace, listens on 127.0.0.1:{port} besides where it was told (PORT="
    ));
    assert!(s.server.log().contains("Address already in use"));
}

/// A Capistrano-style deploy: `cwd` names a `current` link to the release
/// directory; the link moved to a new release and a reload rolls it out,
/// as a changed `cwd` would (probe B: "nothing ... changed", and a crashed
/// instance later restarted on the new code beside the old ones).
#[test]
fn a_reload_after_the_cwd_link_moved_rolls_out_the_release_it_names() {
    if !have_node() {
        return;
    }
    let dir = Scratch::new("apps-cwd-link-releases");
    dir.write("r1/release", "1");
    dir.write("r2/release", "2");
    std::os::unix::fs::symlink("r1", dir.0.join("current")).unwrap();
    let command = format!("VERSION=$(cat release) exec node {ECHO_JS}");
    let toml = app(
        "web",
        &["sh", "-c", &command],
        1,
        &format!("cwd = \"{}\"", dir.path("current")),
    ) + &proxied("/", "web");
    let s = AppServer::start("apps-cwd-link", &toml);
    let old = s.ready_pids("web", 1);
    assert_eq!(s.whoami("/whoami").version, "1");
    // Unchanged, a reload leaves it be.
    s.reload(&toml);
    s.wait_for_count("app web: nothing that replaces its instances changed", 1);
    // The link moved (as `ln -sfn r2 current` does: a new link renamed
    // over the old one).
    std::os::unix::fs::symlink("r2", dir.0.join("next")).unwrap();
    std::fs::rename(dir.0.join("next"), dir.0.join("current")).unwrap();
    // Before the reload, an instance that dies starts again in the release
    // it ran, not the one the link names now: no two versions side by side.
    kill(old[0]);
    s.wait_for_count(
        &format!("app web[0] (pid {}) exited: signal: 9 (SIGKILL)", old[0]),
        1,
    );
    let deadline = Instant::now() + WAIT;
    let restarted = loop {
        let pids = s.ready_pids("web", 1);
        if pids != old {
            break pids;
        }
        assert!(Instant::now() < deadline, "never restarted");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(s.whoami("/whoami").version, "1");
    s.reload(&toml);
    s.wait_for_count(
        &format!(
            "app web: its cwd now leads to {} (was {}); replacing its instances one at a time",
            dir.path("r2"),
            dir.path("r1")
        ),
        1,
    );
    s.wait_for_count(&format!("app web[0] (pid {}) stopped: ", restarted[0]), 1);
    let new = s.ready_pids("web", 1);
    assert_ne!(new, restarted);
    assert_eq!(s.whoami("/whoami").version, "2");
    // Its release deleted under it (old releases cleaned up, the link
    // moved back), then killed: its restart fails, and says which
    // directory is gone (it named the link, which is there).
    std::fs::rename(dir.0.join("r2"), dir.0.join("r2-deleted")).unwrap();
    std::os::unix::fs::symlink("r1", dir.0.join("next")).unwrap();
    std::fs::rename(dir.0.join("next"), dir.0.join("current")).unwrap();
    kill(new[0]);
    s.server.wait_for_log(&format!(
        "in {} (where {} led when the file was read: gone; a reload starts it where the link leads now)",
        dir.path("r2"),
        dir.path("current")
    ));
}

/// `reload = "always"`: a SIGHUP with the same settings replaces the
/// instances one at a time all the same, as `pm2 reload` does: new code
/// deployed (here a release file the app reads at start) goes live with
/// `systemctl reload`, and no request fails.
#[test]
fn reload_always_rolls_out_new_code_under_the_same_settings() {
    if !have_node() {
        return;
    }
    let dir = Scratch::new("apps-reload-always-code");
    dir.write("release", "1");
    let command = format!("VERSION=$(cat release) exec node {ECHO_JS}");
    let toml = app(
        "web",
        &["sh", "-c", &command],
        2,
        &format!("cwd = \"{}\"\nreload = \"always\"", dir.path("")),
    ) + &proxied("/", "web");
    let s = AppServer::start("apps-reload-always", &toml);
    let old = s.ready_pids("web", 2);
    let load = Load::start(s.server.addr, "/whoami", 1, 1);
    load.wait_ok(50);
    dir.write("release", "2");
    s.reload(&toml);
    s.wait_for_count(
        "app web: reload = \"always\"; replacing its instances one at a time",
        1,
    );
    for (i, pid) in old.iter().enumerate() {
        s.wait_for_count(&format!("app web[{i}] (pid {pid}) stopped: "), 1);
    }
    let new = s.ready_pids("web", 2);
    load.wait_ok(50);
    let t = load.stop();
    assert_eq!(t.failed, 0, "{:?}", t.errors);
    assert!(new.iter().all(|p| !old.contains(p)), "{old:?} {new:?}");
    for w in s.whoamis("/whoami", 4) {
        assert!(new.contains(&w.pid) && w.version == "2", "{w:?}");
    }
    // The replacements wrote beside the instances they replaced, told
    // apart (probe B: both were `app web[0]:`).
    let log = s.server.log();
    for i in 0..2 {
        assert!(
            log.contains(&format!("app web[{i}] (new): listening ")),
            "{log}"
        );
        assert!(
            log.contains(&format!("app web[{i}] (stopping): SIGTERM: closing")),
            "{log}"
        );
    }
    // A reload that changes the settings too says what changed.
    let extra = format!(
        "cwd = \"{}\"\nreload = \"always\"\nenv = {{ X = \"1\" }}",
        dir.path("")
    );
    s.reload(&(app("web", &["sh", "-c", &command], 2, &extra) + &proxied("/", "web")));
    s.wait_for_count("app web: changed; replacing its instances one at a time", 1);
    let log = s.server.log();
    assert_eq!(
        log.matches("reload = \"always\"; replacing").count(),
        1,
        "{log}"
    );
}

/// An instance that exits while coreserve is out of descriptors is tried
/// again every second, not after a back-off that grows meanwhile (1, 2, 4,
/// 8 … s): the failures are this process's limit, not the app's fault,
/// and the app is up as soon as descriptors come back.
#[test]
fn a_start_that_fails_for_want_of_descriptors_does_not_back_off() {
    if !have_node() {
        return;
    }
    let dir = Scratch::new("apps-emfile");
    let conf = dir.write("app.toml", node_app("web", 1, "") + &proxied("/", "web"));
    let mut cmd = command();
    cmd.args(["--listen", "127.0.0.1:0", "--shards", "1", "--config"])
        .arg(&conf);
    crate::util::with_rlimit(&mut cmd, libc::RLIMIT_NOFILE, 64);
    let server = Server::spawn(cmd);
    server.wait_for_log("app web[0] is ready");
    let log = server.log();
    let pid: i32 = log
        .split("app web[0] started: pid ")
        .nth(1)
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{log}"));
    // Connections until coreserve takes no more: the rest wait in the
    // backlog, and each one it can take takes a descriptor.
    let conns: Vec<std::net::TcpStream> = (0..80).map(|_| server.connect()).collect();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) of the instance this server started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let tried = "(a limit of this process, not the app's fault); trying again in 1s";
    let deadline = Instant::now() + WAIT;
    while server.log().matches(tried).count() < 3 {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = server.log();
    assert!(!log.contains("trying again in 2s"), "{log}");
    drop(conns);
    let deadline = Instant::now() + WAIT;
    while server.log().matches("app web[0] is ready").count() < 2 {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}
