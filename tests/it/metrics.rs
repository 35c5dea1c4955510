//! Metrics: valid Prometheus text whose per-shard series add up to the merged
//! ones and to what the test sent; round-robin spread visible per shard.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use crate::util::{get, succeeds, Reader, Server};

/// Scrape and parse; every sample by name and labels.
pub(crate) fn scrape(server: &Server) -> prometheus_parse::Scrape {
    let url = server.metrics_url();
    let out = succeeds(std::process::Command::new("curl").args([
        "-sS",
        "--max-time",
        "10",
        "-D",
        "/dev/stderr",
        &url,
    ]));
    let headers = String::from_utf8_lossy(&out.stderr);
    assert!(
        headers.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{headers}"
    );
    let lines = out.stdout.lines();
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text")
}

/// The value of a counter or gauge by label set.
pub(crate) fn values(s: &prometheus_parse::Scrape, name: &str) -> HashMap<String, f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .map(|x| {
            let mut labels: Vec<String> =
                x.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let v = match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (labels.join(","), v)
        })
        .collect()
}

#[test]
fn counters_add_up_and_round_robin_spreads_evenly() {
    let server = Server::start(&["--shards", "2"]);
    // 100 keep-alive connections, opened one after another (each answered
    // once before the next opens, so no burst makes the master skip a busy
    // shard), then 4 more requests on each.
    let mut conns = Vec::new();
    for _ in 0..100 {
        let c = server.connect();
        let mut w = c.try_clone().unwrap();
        w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(Reader::new(&c).next(false).status, 200);
        conns.push(c);
    }
    for c in &conns {
        let mut w = c.try_clone().unwrap();
        let mut r = Reader::new(c);
        for _ in 0..4 {
            w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            assert_eq!(r.next(false).status, 200);
        }
    }
    // Two refused requests as well.
    server.exchange(b"BAD\r\n\r\n");
    server.exchange(b"GET / HTTP/2.0\r\n\r\n");
    let s = scrape(&server);

    let per_shard = values(&s, "coreserve_shard_requests_total");
    let (a, b, all) = (
        per_shard["shard=0"],
        per_shard["shard=1"],
        per_shard["shard=all"],
    );
    assert_eq!(a + b, all);
    assert_eq!(all, 500.0);
    assert!((a - b).abs() / all <= 0.10, "spread {a} / {b}");

    let classes = values(&s, "coreserve_requests_total");
    assert_eq!(classes["class=2xx,shard=all"], 500.0);
    assert_eq!(classes["class=4xx,shard=all"], 1.0);
    assert_eq!(classes["class=5xx,shard=all"], 1.0);
    let bad = values(&s, "coreserve_bad_requests_total");
    assert_eq!(bad["shard=all"], 2.0);
    let errors = values(&s, "coreserve_parse_errors_total");
    assert_eq!(errors["kind=version,shard=all"], 1.0);
    assert_eq!(errors["kind=request_line,shard=all"], 1.0);
    let accepted = values(&s, "coreserve_connections_accepted_total");
    assert_eq!(accepted["shard=all"], 102.0);
    assert_eq!(accepted["shard=0"] + accepted["shard=1"], 102.0);
    let active = values(&s, "coreserve_connections_active");
    assert_eq!(active["shard=all"], 100.0);
    assert!(values(&s, "coreserve_sent_bytes_total")["shard=all"] > 500.0 * 100.0);

    // The latency summary: quantiles, count and sum, merged and per shard.
    let summary = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "coreserve_request_duration_seconds" && x.labels.get("shard") == Some("all")
        })
        .expect("a merged summary");
    match &summary.value {
        prometheus_parse::Value::Summary(qs) => {
            let qs: Vec<f64> = qs.iter().map(|q| q.quantile).collect();
            assert_eq!(qs, vec![0.5, 0.9, 0.99, 0.999]);
        }
        other => panic!("not a summary: {other:?}"),
    }
    let count = values(&s, "coreserve_request_duration_seconds_count");
    assert_eq!(count["shard=all"], 500.0);
    drop(conns);
}

#[test]
fn the_admin_listener_answers_only_its_path_and_can_be_off() {
    let server = Server::start(&[]);
    let addr = admin_addr(&server);
    assert_eq!(
        get(addr, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").status,
        404
    );
    let r = get(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut s, b"HEAD /other HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let text = crate::util::read_to_close(&mut s);
    assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "a body after HEAD: {text:?}");
    assert_eq!(
        get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").status,
        200
    );

    let r = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.header("date").is_some_and(|d| d.ends_with(" GMT")));

    let mut cmd = crate::util::command();
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"]);
    let out = cmd.arg("--check").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a flag given twice is refused");
}

#[test]
fn status_prints_a_table_of_shards() {
    // Pinned, so that each shard's CPU is known: the column says where a
    // shard ran (a floating one, wherever the kernel put it).
    let server = Server::start(&["--shards", "2", "--affinity", "pinned"]);
    for _ in 0..10 {
        get(server.addr, "GET / HTTP/1.0\r\n\r\n");
    }
    let out = succeeds(crate::util::command().args([
        "status",
        "--url",
        &server.metrics_url(),
        "--interval",
        "200ms",
    ]));
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("shard") && lines[0].contains("p99"),
        "{table}"
    );
    let row = |name: &str| {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no row {name}:\n{table}"))
    };
    assert_eq!(row("0")[1], "0");
    assert_eq!(row("1")[1], "1");
    assert_eq!(row("all")[3], "10");
    assert!(
        table.contains("spread of requests over shards since start (max/min): 1.00"),
        "{table}"
    );
    // By name, as an operator types it.
    let by_name = server.metrics_url().replace("127.0.0.1", "localhost");
    let out = succeeds(crate::util::command().args(["status", "--url", &by_name]));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("shard"));
    // Not a URL: a usage error, as a bad flag.
    for bad in ["localhost:9090", "http://localhost/metrics", "ftp://x:1/"] {
        let out = crate::util::command()
            .args(["status", "--url", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not an http://HOST:PORT/PATH URL"), "{err}");
    }

    let out = crate::util::command()
        .args(["status", "--url", "http://127.0.0.1:1/metrics"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is coreserve running"));
    // An address that answers 200, but is not the metrics endpoint: an
    // error, not an empty table.
    let out = crate::util::command()
        .args([
            "status",
            "--url",
            &format!("http://{}/metrics", server.addr),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not with coreserve's metrics"), "{err}");
}

/// `coreserve status` reads only `[metrics]` from the file: a log or a
/// static root its user cannot open (the packaged service's, under a
/// dynamic user) must not stop it, while a broken `[metrics]` does.
#[test]
fn status_needs_only_the_metrics_section_of_the_file() {
    let server = Server::start(&[]);
    let url = server.metrics_url();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let dir = crate::config::Scratch::new("status-metrics-only");
    let conf = dir.write(
        "coreserve.toml",
        format!(
            "[log]\naccess = \"/no/such/dir/access.log\"\n\n\
             [metrics]\nlisten = \"{addr}\"\n\n\
             [[route]]\npath = \"/\"\nhandler = \"static\"\nroot = \"/no/such/root\"\n"
        ),
    );
    let check = crate::util::command()
        .args(["--check", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2), "the file is not servable");
    // Not util::command(): its --metrics-listen would win over the file.
    let bare = || std::process::Command::new(env!("CARGO_BIN_EXE_coreserve"));
    assert_status_table(
        bare()
            .arg("--config")
            .arg(&conf)
            .args(["status", "--interval", "100ms"]),
    );

    // Issue 15, item 4: --config after `status` works too.
    assert_status_table(
        bare()
            .args(["status", "--interval", "100ms", "--config"])
            .arg(&conf),
    );

    // `coreserve --config FILE status`: its exit code and its stderr.
    let status_of = |file: &std::path::Path| {
        let out = bare()
            .arg("--config")
            .arg(file)
            .arg("status")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err)
    };
    let bad = dir.write("bad.toml", "[metrics]\nlisten = \"nowhere\"\n");
    let (code, err) = status_of(&bad);
    assert_eq!(code, Some(2));
    assert!(err.contains("bad.toml:2: metrics.listen"), "{err}");

    // A path no URL can end with: the file's line, not a URL never typed.
    for path in ["metrics", "/metrics?x", "/a b"] {
        let bad = dir.write(
            "bad-path.toml",
            format!("[metrics]\nlisten = \"{addr}\"\npath = \"{path}\"\n"),
        );
        let (code, err) = status_of(&bad);
        assert_eq!(code, Some(2), "{path}: {err}");
        assert!(
            err.contains("bad-path.toml:3: metrics.path: must be a path"),
            "{err}"
        );
    }

    // Port 0 (any free port, as the tests run servers) names no server.
    let out = crate::util::command().arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("on any free port ([metrics] listen = \"127.0.0.1:0\"): pass --url"),
        "{err}"
    );

    // An unset variable in [metrics] is said, not an empty error.
    let unset = dir.write(
        "unset.toml",
        "[metrics]\nlisten = \"${CORESERVE_TEST_SURELY_UNSET}\"\n",
    );
    let (code, err) = status_of(&unset);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("environment variable CORESERVE_TEST_SURELY_UNSET is not set")
            && err.contains("pass --url"),
        "{err}"
    );

    // One the service's environment sets (systemd's `Environment=`), in a
    // string outside `[metrics]`: status runs without it.
    let elsewhere = dir.write(
        "elsewhere.toml",
        format!(
            "[metrics]\nlisten = \"${{CORESERVE_TEST_SURELY_UNSET:-{addr}}}\"\n\n\
             [[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:9\"]\n\n\
             [[route]]\npath = \"/\"\nhandler = \"proxy\"\nupstream = \"a\"\n\
             request-headers = {{ X-Token = \"${{CORESERVE_TEST_SURELY_UNSET}}\" }}\n\n\
             [server]\nshards = ${{CORESERVE_TEST_SURELY_UNSET}}\n"
        ),
    );
    assert_status_table(bare().arg("--config").arg(&elsewhere).args([
        "status",
        "--interval",
        "100ms",
    ]));
}

/// The admin listener's address.
fn admin_addr(server: &Server) -> std::net::SocketAddr {
    server
        .metrics_url()
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_admin_listener_bounds_slow_and_piled_up_clients() {
    let server = Server::start(&[]);
    let addr = admin_addr(&server);
    // A request trickled a byte at a time is cut off by the exchange's
    // 5 s deadline; before, each byte renewed a per-read timeout.
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    let mut reader = slow.try_clone().unwrap();
    let start = std::time::Instant::now();
    let trickle = std::thread::spawn(move || {
        for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: yyyyyyyyyyyyyyyyyyyyyyyyyyy" {
            if slow.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    });
    assert_eq!(crate::util::read_to_close(&mut reader), "");
    let took = start.elapsed();
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
    trickle.join().unwrap();

    // 64 connections at once are served (here: held open, silent); the
    // next one gets 503 rather than another task in the master.
    let held: Vec<_> = (0..64)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let r = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 503);
    drop(held);
    // Once they are gone, scrapes are answered again.
    let mut status = 0;
    for _ in 0..50 {
        status = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").status;
        if status == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(status, 200);
}

/// A command for the binary without util::command's `--metrics-listen`, so
/// the metrics address is the built-in default.
fn with_default_metrics() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_coreserve"));
    cmd.env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// Issue 15, item 2: two instances on `--port 0` both start. The second
/// finds the default metrics address taken, warns how to set another, and
/// serves without metrics. (If something else holds the default port, the
/// first warns too; the second must warn either way.)
#[test]
fn a_busy_default_metrics_port_is_only_a_warning() {
    let first = Server::spawn({
        let mut c = with_default_metrics();
        c.args(["--listen", "127.0.0.1:0"]);
        c
    });
    let second = Server::spawn({
        let mut c = with_default_metrics();
        c.args(["--listen", "127.0.0.1:0"]);
        c
    });
    let log = second.log();
    assert!(
        log.contains("metrics: the default address 127.0.0.1:9464 is in use, so this instance serves no metrics; set [metrics] listen (or --metrics-listen)"),
        "{log}"
    );
    assert!(!log.contains("metrics on "), "{log}");
    for s in [&first, &second] {
        let r = get(s.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.text(), "Hello World");
    }
}

/// A busy metrics address the user chose, by flag or in the file, still
/// stops start-up.
#[test]
fn a_busy_metrics_address_the_user_chose_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = crate::config::Scratch::new("metrics-busy");
    let conf = dir.write(
        "coreserve.toml",
        format!("[metrics]\nlisten = \"{addr}\"\n"),
    );
    for args in [
        vec!["--metrics-listen", addr.as_str()],
        vec!["--config", conf.to_str().unwrap()],
    ] {
        let out = with_default_metrics()
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "metrics.listen (--metrics-listen): cannot listen on {addr}: Address already in use"
            )),
            "{args:?}: {err}"
        );
        assert!(!err.contains("listening on"), "{err}");
    }
}

/// A metrics endpoint on the IPv6 wildcard (`[::]`, which may take IPv6
/// alone) is asked on `::1` by `coreserve status`, not on 127.0.0.1.
#[test]
fn status_asks_an_ipv6_wildcard_on_its_loopback() {
    // A loopback to ask on, not only a wildcard to bind (a container can
    // have the one without the other).
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this host has no IPv6 loopback");
        return;
    }
    let Ok(free) = std::net::TcpListener::bind("[::]:0") else {
        eprintln!("skipped: this host has no IPv6");
        return;
    };
    let port = free.local_addr().unwrap().port();
    drop(free);
    let dir = crate::config::Scratch::new("status-ipv6");
    let conf = dir.write(
        "coreserve.toml",
        format!(
            "[metrics]\nlisten = \"[::]:{port}\"\n{}",
            crate::apps::OK_ROUTE
        ),
    );
    let bare = || std::process::Command::new(env!("CARGO_BIN_EXE_coreserve"));
    let mut cmd = bare();
    cmd.arg("--config")
        .arg(&conf)
        .args(["--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped());
    let server = Server::spawn(cmd);
    server.wait_for_log("metrics on");
    assert_status_table(
        bare()
            .arg("--config")
            .arg(&conf)
            .args(["status", "--interval", "100ms"]),
    );
}

/// Run `coreserve status` as `cmd` says: it must succeed and print the
/// table of shards.
fn assert_status_table(cmd: &mut std::process::Command) {
    let out = succeeds(cmd);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("shard"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `coreserve status --config FILE` with another instance answering at
/// that file's metrics address says so under the table, rather than
/// showing the other's table as this file's.
#[test]
fn status_says_when_another_files_server_answers() {
    let dir = crate::config::Scratch::new("status-other-file");
    let running = dir.write("running.toml", "[server]\nlisten = [\"127.0.0.1:0\"]\n");
    let server = Server::start(&["--config", &running.display().to_string()]);
    let addr = server
        .metrics_url()
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let metrics = format!("[metrics]\nlisten = \"{addr}\"\n");
    let other = dir.write("other.toml", &metrics);
    let status = |file: &std::path::Path| {
        let out = succeeds(
            std::process::Command::new(env!("CARGO_BIN_EXE_coreserve")).args([
                "status",
                "--interval",
                "100ms",
                "--config",
                &file.display().to_string(),
            ]),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = status(&other);
    let running = std::fs::canonicalize(&running).unwrap();
    assert!(table.starts_with("shard"), "{table}");
    assert!(
        table.contains(&format!(
            "(pid {}) runs {}, not ",
            server.pid(),
            running.display()
        )),
        "{table}"
    );
    // Its own file, with the address written in: no note.
    dir.write(
        "running.toml",
        format!("[server]\nlisten = [\"127.0.0.1:0\"]\n{metrics}"),
    );
    let table = status(&running);
    assert!(!table.contains("note:"), "{table}");
}
