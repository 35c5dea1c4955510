//! Supervision, through the test-only fault-injection routes: a panicking
//! handler costs one connection a 500; a dead shard is restarted with
//! back-off while the others serve; with no shard alive, connections are
//! refused rather than queued.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::util::{get, is_closed, Reader, Server};

/// Keep asking until `f` holds, for at most 10 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_panicking_handler_gets_500_and_harms_nobody_else() {
    let server = Server::start(&["--shards", "1"]);
    let mut bystander = server.connect();
    let mut reader = Reader::new(&bystander);
    bystander
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(reader.next(false).status, 200);

    let text = server.exchange(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /__fault/panic HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    // The request before it in the pipeline keeps its answer.
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains("HTTP/1.1 500 Internal Server Error"),
        "{text}"
    );
    server.wait_for_log("shard 0: a request handler panicked: fault injection");

    bystander
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(reader.next(false).status, 200);
    assert!(!server.log().contains("died"));
    // The 200 sent with the 500 is counted too: three 2xx, one 5xx.
    eventually("the statuses counted", || {
        let scraped = crate::metrics::scrape(&server);
        let classes = crate::metrics::values(&scraped, "coreserve_requests_total");
        classes.get("class=2xx,shard=all") == Some(&3.0)
            && classes.get("class=5xx,shard=all") == Some(&1.0)
    });
}

/// `affinity` as `--affinity` takes it; the log names where the shard runs.
fn restart(dispatch: &str, affinity: &str) {
    let server = Server::start(&[
        "--shards",
        "2",
        "--dispatch",
        dispatch,
        "--affinity",
        affinity,
    ]);
    // Kill whichever shard takes this connection.
    let r = get(
        server.addr,
        "GET /__fault/kill-shard HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    server.wait_for_log("died");
    // After 1 s if it served less than 2 s (`child::SERVED_LONG`), else at
    // once.
    let log = server.log();
    assert!(
        log.contains("restarting it in 1s") || log.contains("restarting it now"),
        "{log}"
    );
    let dead: usize = server
        .log()
        .lines()
        .find_map(|l| l.split("ERROR shard ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    // Meanwhile the other shard takes every connection.
    let started = Instant::now();
    for _ in 0..10 {
        let r = get(server.addr, "GET / HTTP/1.0\r\n\r\n");
        assert_eq!(r.status, 200);
    }
    // Back after about a second, where it ran before: its CPU, or the
    // CPUs it floated over.
    let prefix = format!("shard {dead} started on ");
    let place = server
        .log()
        .lines()
        .find_map(|l| l.split_once(&prefix).map(|(_, rest)| rest.to_string()))
        .unwrap();
    if affinity == "pinned" {
        assert_eq!(place, format!("CPU {dead}"));
    }
    server.wait_for_log(&format!("shard {dead} restarted on {place}"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The metrics say it died once and serves again; the other never died.
    let scraped = crate::metrics::scrape(&server);
    let restarts = crate::metrics::values(&scraped, "coreserve_shard_restarts_total");
    let up = crate::metrics::values(&scraped, "coreserve_shard_up");
    let other = 1 - dead;
    assert_eq!(restarts[&format!("shard={dead}")], 1.0, "{restarts:?}");
    assert_eq!(restarts[&format!("shard={other}")], 0.0, "{restarts:?}");
    assert_eq!(up[&format!("shard={dead}")], 1.0, "{up:?}");
    assert_eq!(up[&format!("shard={other}")], 1.0, "{up:?}");
    // And it takes connections again.
    let mut served_by_new = 0;
    for _ in 0..20 {
        get(server.addr, "GET / HTTP/1.0\r\n\r\n");
    }
    let log = server.stop();
    for s in crate::util::stopped_stats(&log) {
        if s.shard == dead {
            served_by_new = s.connections;
        }
    }
    assert!(served_by_new > 0, "{log}");
}

#[test]
fn a_dead_shard_is_restarted_master_dispatch() {
    restart("master", "pinned");
}

#[test]
fn a_dead_shard_is_restarted_reuseport_dispatch() {
    restart("reuseport", "floating");
}

fn none_alive(dispatch: &str) {
    let server = Server::start(&["--shards", "1", "--dispatch", dispatch]);
    get(
        server.addr,
        "GET /__fault/kill-shard HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    server.wait_for_log("no shard is alive");
    // Refused, or accepted and closed at once: never left waiting.
    let start = Instant::now();
    match std::net::TcpStream::connect(server.addr) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        Ok(mut s) => {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(
                is_closed(&mut s),
                "a connection got an answer with no shard alive"
            );
        }
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    server.wait_for_log("shard 0 restarted");
    eventually("serving again", || {
        std::net::TcpStream::connect(server.addr).is_ok()
            && get(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
    });
}

#[test]
fn with_no_shard_alive_connections_are_refused_master_dispatch() {
    none_alive("master");
}

#[test]
fn with_no_shard_alive_connections_are_refused_reuseport_dispatch() {
    none_alive("reuseport");
}

/// A log nobody reads (stderr a pipe whose reader stopped: a stalled
/// journald) never stops a shard: each panic logs two lines and each
/// request an access-log line, and after the pipe's 64 KiB the shard
/// blocked on its next log line (every request after it hanging), or its
/// blocking thread on the access log (every static file hanging, and a
/// graceful stop never ending). Lines past the logs' queues are dropped
/// instead.
#[test]
fn a_log_nobody_reads_never_stops_a_shard() {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let dir = crate::config::Scratch::new("log-unread");
    dir.write("www/small.txt", "small\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.write(
        "c.toml",
        format!(
            "[log]\naccess = \"stderr\"\n[[route]]\npath = \"/static/\"\nhandler = \"static\"\nroot = \"{}\"\n\
             [[route]]\npath = \"/\"\nhandler = \"respond\"\nbody = \"hi\"\n",
            dir.path("www")
        ),
    );
    let mut ends = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors, then owned here.
    assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
    let (_unread, write) =
        unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    /// Killed however the test ends (a stuck server ignores SIGTERM).
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Killed(
        crate::util::command()
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--shards",
                "1",
                "--config",
            ])
            .arg(&conf)
            .stderr(std::process::Stdio::from(write))
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually("it listens", || std::net::TcpStream::connect(addr).is_ok());
    let ask = |target: &str| -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    };
    for i in 0..3000 {
        let (target, status) = match i % 10 {
            0 => ("/static/small.txt", "HTTP/1.1 200"),
            _ => ("/__fault/panic", "HTTP/1.1 500"),
        };
        let text = ask(target);
        assert!(
            text.starts_with(status),
            "request {i} for {target} got {text:?}: the shard is stuck on its log"
        );
    }
    // SAFETY: kill(2) on the child's pid.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "a graceful stop never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An access log "file" that is a pipe nobody reads (`/dev/stdout` in a
/// container whose log reader stalled, a named pipe) never stops a shard:
/// it was written on the shard's blocking thread, and every static file
/// hung once the pipe was full.
#[test]
fn an_access_log_pipe_nobody_reads_never_stops_static_files() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = crate::config::Scratch::new("log-fifo");
    dir.write("www/small.txt", "small\n");
    let fifo = dir.fifo("access.fifo");
    // Held open, never read: the server's open for writing does not wait.
    let _unread = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let conf = dir.write(
        "c.toml",
        format!(
            "[log]\naccess = \"{}\"\n[[route]]\npath = \"/\"\nhandler = \"static\"\nroot = \"{}\"\n",
            fifo.display(),
            dir.path("www")
        ),
    );
    let server = Server::start(&["--config", &conf.display().to_string(), "--shards", "1"]);
    for i in 0..3000 {
        let r = get(server.addr, "GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
}
