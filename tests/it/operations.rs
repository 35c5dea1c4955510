//! Running it: SIGHUP reload (valid, invalid, under load), systemd
//! notifications in order, the watchdog, and socket activation.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Scratch;
use crate::util::{command, connect, get, Reader, Server};

fn route(body: &str) -> String {
    format!("[[route]]\npath = \"/\"\nhandler = \"respond\"\nbody = \"{body}\"\n")
}

#[test]
fn sighup_applies_a_valid_file_and_keeps_the_old_one_on_errors() {
    let dir = Scratch::new("reload");
    let conf = dir.write("c.toml", route("one"));
    let server = Server::start(&["--config", &conf.display().to_string()]);
    let body = || get(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").text();
    assert_eq!(body(), "one");

    dir.write("c.toml", route("two"));
    server.signal(libc::SIGHUP);
    // Said at once (a read may wait on a slow resolver), then its end.
    server.wait_for_log("SIGHUP: reading the configuration");
    server.wait_for_log("configuration reloaded on every shard");
    assert_eq!(body(), "two");

    dir.write("c.toml", "[limits]\nmax-headers = \"many\"\n");
    server.signal(libc::SIGHUP);
    server.wait_for_log("still serving the previous one");
    assert!(
        server
            .log()
            .contains("c.toml:2: limits.max-headers: must be a number"),
        "{}",
        server.log()
    );
    assert_eq!(body(), "two");

    // --listen from the command line still wins over the file; shards do not.
    dir.write(
        "c.toml",
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\nshards = 7\n[log]\nformat = \"json\"\n{}",
            route("three")
        ),
    );
    server.signal(libc::SIGHUP);
    server.wait_for_log(&format!(
        "SIGHUP: {}:3: server.shards: changed; that takes a restart",
        conf.display()
    ));
    // A table's at its header.
    server.wait_for_log(&format!(
        "SIGHUP: {}:4: [log]: changed; that takes a restart",
        conf.display()
    ));
    assert!(!server.log().contains("server.listen: changed"));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(body(), "three");

    // Emptied, or cut short before its first route (valid TOML either
    // way): refused, rather than Hello World on every path.
    dir.write("c.toml", "[server]\nshards = 7\n");
    server.signal(libc::SIGHUP);
    server.wait_for_log("no [[route]] (an empty or cut-short file?)");
    assert_eq!(body(), "three");
}

/// A file emptied (or cut short) has lost its `listen` too: the refusal
/// says what happened to the file, not that the default address it falls
/// back to would take a restart.
#[test]
fn an_emptied_file_is_refused_as_such_whatever_it_listened_on() {
    let dir = Scratch::new("reload-emptied");
    let conf = dir.write(
        "c.toml",
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{}", route("one")),
    );
    let mut cmd = command();
    cmd.args(["--config", &conf.display().to_string()]);
    let server = Server::spawn(cmd);
    dir.write("c.toml", "");
    server.signal(libc::SIGHUP);
    server.wait_for_log("still serving the previous one");
    let log = server.log();
    assert!(
        log.contains(&format!(
            "SIGHUP: {}: no [[route]] (an empty or cut-short file?)",
            conf.display()
        )),
        "{log}"
    );
    assert!(!log.contains("adds 0.0.0.0:3000"), "{log}");
    // Said once, as the refusal: not a warning that every request gets
    // Hello World first (which it does not).
    assert!(
        !log.contains("every request gets the built-in Hello World"),
        "{log}"
    );
    assert_eq!(
        get(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").text(),
        "one"
    );
}

/// Routes given by a reload, the server having started without any: an
/// emptied file after that is refused too (the check read the start's
/// file, which had none, and let Hello World in place of every route).
#[test]
fn an_emptied_file_is_refused_after_a_reload_gave_the_routes() {
    let dir = Scratch::new("reload-emptied-later");
    let conf = dir.write("c.toml", "[server]\nlisten = \"127.0.0.1:0\"\n");
    let server = Server::start(&["--config", &conf.display().to_string()]);
    let body = || get(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").text();
    dir.write(
        "c.toml",
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{}", route("one")),
    );
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while body() != "one" {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    dir.write("c.toml", "[server]\nlisten = \"127.0.0.1:0\"\n");
    server.signal(libc::SIGHUP);
    server.wait_for_log("no [[route]] (an empty or cut-short file?)");
    assert_eq!(body(), "one");
}

#[test]
fn a_request_in_flight_finishes_under_the_old_configuration() {
    let dir = Scratch::new("reload-inflight");
    let conf = dir.write("c.toml", route("old"));
    let server = Server::start(&["--config", &conf.display().to_string(), "--shards", "1"]);
    // The head is answered at once; its body keeps the request open.
    let mut s = connect(server.addr);
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    dir.write("c.toml", route("new"));
    server.signal(libc::SIGHUP);
    server.wait_for_log("configuration reloaded");
    s.write_all(b"cdGET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = Reader::new(&s);
    assert_eq!(r.next(false).text(), "old");
    assert_eq!(r.next(false).text(), "new");
}

#[test]
fn reloading_valid_and_broken_files_under_load_loses_no_request() {
    let dir = Scratch::new("reload-load");
    let conf = dir.write("c.toml", route("a"));
    let server = Server::start(&["--config", &conf.display().to_string()]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Half keep-alive, half a new connection per request.
                    let mut s = connect(addr);
                    let mut r = Reader::new(&s);
                    for _ in 0..if i % 2 == 0 { 50 } else { 1 } {
                        if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
                            failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        let resp = r.next(false);
                        if resp.status == 200 && (resp.text() == "a" || resp.text() == "b") {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for i in 0..20 {
        // Valid files alternate with broken ones, which must change nothing.
        match i % 3 {
            0 => dir.write("c.toml", route("b")),
            1 => dir.write("c.toml", "[limits]\nmax-headers = 0\n"),
            _ => dir.write("c.toml", route("a")),
        };
        server.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);
}

/// Notifications a started server sends to a test NOTIFY_SOCKET.
struct Listener {
    socket: UnixDatagram,
    _dir: Scratch,
    path: String,
}

impl Listener {
    fn new(name: &str) -> Listener {
        let dir = Scratch::new(name);
        let path = dir.path("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Listener {
            socket,
            _dir: dir,
            path,
        }
    }

    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

#[test]
fn systemd_notifications_come_in_order() {
    let notify = Listener::new("notify");
    let mut cmd = command();
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &notify.path);
    let mut server = Server::spawn(cmd);
    let ready = notify.next();
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving http://127.0.0.1:"),
        "{ready}"
    );
    server.signal(libc::SIGHUP);
    let reloading = notify.next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(notify.next().starts_with("READY=1"));
    server.signal(libc::SIGTERM);
    assert!(notify.next().starts_with("STOPPING=1"));
    assert!(server.wait(Duration::from_secs(10)).success());
}

#[test]
fn the_watchdog_is_petted_while_shards_answer() {
    let notify = Listener::new("watchdog");
    let mut cmd = command();
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000");
    let _server = Server::spawn(cmd);
    assert!(notify.next().starts_with("READY=1"));
    let start = Instant::now();
    let mut pets = 0;
    while pets < 3 {
        if notify.next() == "WATCHDOG=1" {
            pets += 1;
        }
    }
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn socket_activation_uses_the_passed_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let dir = Scratch::new("activation");
    // The file's `listen` is not used: nothing binds it, and a reload
    // that changes it is no new address to refuse.
    let file =
        |port: u16, body: &str| format!("[server]\nlisten = \"127.0.0.1:{port}\"\n{}", route(body));
    for dispatch in ["master", "reuseport"] {
        let conf = dir.write("c.toml", file(1, "Hello World"));
        // The shell's pid is the pid coreserve runs as after exec.
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "LISTEN_PID=$$ LISTEN_FDS=1 exec {} --metrics-listen 127.0.0.1:0 --dispatch {dispatch} --config {}",
                env!("CARGO_BIN_EXE_coreserve"),
                conf.display()
            ))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // SAFETY: dup2 and fcntl are async-signal-safe; they run in the child
        // before exec. When the listener already is fd 3, dup2 would be a
        // no-op that leaves close-on-exec set.
        unsafe {
            cmd.pre_exec(move || {
                let r = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let server = Server::spawn(cmd);
        assert_eq!(server.addr, addr, "{}", server.log());
        assert!(server
            .log()
            .contains("socket activation: 1 listening sockets"));
        for _ in 0..4 {
            let r = get(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(r.text(), "Hello World");
        }
        dir.write("c.toml", file(2, "two"));
        server.signal(libc::SIGHUP);
        server.wait_for_log("configuration reloaded on every shard");
        assert_eq!(get(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").text(), "two");
        assert!(!server.log().contains("server.listen"), "{}", server.log());
        // The socket outlives the server: the next one takes it over.
        drop(server);
    }
}

/// Kills a process by pid when dropped: the new process of a binary
/// upgrade, which no `Server` owns.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a pid this test saw started.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// SIGUSR2, nginx's binary upgrade: the binary is started on the running
/// process's listening sockets (the metrics listener too); once it serves,
/// the old process drains (its request in flight completes) and exits, and
/// no connection in between is refused or dropped. A new process that
/// cannot start (a file it refuses) leaves the old one serving.
#[test]
fn sigusr2_upgrades_the_binary_without_refusing_a_connection() {
    use crate::upstream::{Gate, Reply, Upstream};
    let gate = Gate::new();
    let held = gate.clone();
    let up = Upstream::start(move |req| match req.target.as_str() {
        "/hold" => Reply::new().wait(&held).then(Reply::ok("held")),
        _ => Reply::ok("up"),
    });
    let dir = Scratch::new("upgrade");
    let good = crate::proxy::simple(&[up.server()], "", "");
    let conf = dir.write("c.toml", &good);
    // Without deferred accept: a connection that sends nothing yet is the
    // old process's, not left in the queue the new one takes from.
    let mut server = Server::start(&[
        "--config",
        &conf.display().to_string(),
        "--defer-accept",
        "false",
    ]);
    let addr = server.addr;
    let metrics: std::net::SocketAddr = server
        .metrics_url()
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();

    // A new process that refuses the file ends; the old serves on.
    dir.write("c.toml", format!("{good}bogus = 1\n"));
    server.signal(libc::SIGUSR2);
    server.wait_for_log("ended before it served (exit status: 2); still serving");
    dir.write("c.toml", &good);
    assert_eq!(get(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").text(), "up");

    // A request in flight, and a client connecting all along.
    let mut slow = connect(addr);
    slow.write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(up.wait_until(|u| u.requests().iter().any(|q| q.target == "/hold")));
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, served) = (stop.clone(), served.clone());
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let answer = std::panic::catch_unwind(|| {
                    get(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").text()
                });
                match answer {
                    Ok(text) if text == "up" => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            failures
        })
    };
    // A connection made just before the handover, its request not sent
    // yet (a TLS handshake on its way, say).
    let fresh = connect(addr);
    std::thread::sleep(Duration::from_millis(100));
    let from = server.log().len();
    server.signal(libc::SIGUSR2);
    // Its pid at once, so that a failure below leaves no server behind.
    let started = "SIGUSR2: upgrade: started ";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log()[from..].contains(started) {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = server.log();
    let pid: i32 = log[from..]
        .split(started)
        .nth(1)
        .and_then(|rest| rest.split("(pid ").nth(1))
        .and_then(|rest| rest.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {log}"));
    let _new = KillOnDrop(pid);
    server.wait_for_log(&format!("(pid {pid}) serves; this one drains and exits"));
    // It brings its request within the old one's grace: answered.
    std::thread::sleep(Duration::from_millis(200));
    (&fresh)
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(Reader::new(&fresh).next(false).text(), "up");
    // The old one waits for its request in flight, then exits; the stop
    // signal nginx's procedure sends it now (QUIT) stops nothing sooner.
    std::thread::sleep(Duration::from_millis(200));
    server.signal(libc::SIGQUIT);
    server.wait_for_log("SIGQUIT: draining already, the new process serving");
    std::thread::sleep(Duration::from_millis(100));
    gate.open();
    assert_eq!(Reader::new(&slow).next(false).text(), "held");
    let status = server.wait(Duration::from_secs(10));
    assert!(status.success(), "{status}\n{}", server.log());
    // The new one serves on the same sockets, its metrics too.
    let before = served.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while served.load(Ordering::Relaxed) < before + 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let failures = client.join().unwrap();
    assert!(failures.is_empty(), "{failures:?}\n{}", server.log());
    assert!(served.load(Ordering::Relaxed) >= before + 20);
    let scraped = get(metrics, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(scraped.status, 200);
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    // SAFETY: kill(2) on the new process, which this test saw started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
}
