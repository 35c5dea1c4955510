//! Many connections at once, all answered.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::proxy::{simple, Proxy};
use crate::upstream::{Gate, Reply, Upstream};
use crate::util::{connect, rss_kib, Reader, Server};

#[test]
fn a_thousand_concurrent_keep_alive_connections() {
    let server = Server::start(&["--shards", "2"]);
    let mut conns: Vec<_> = (0..1000).map(|_| server.connect()).collect();
    for round in 0..2 {
        for s in &mut conns {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        }
        for s in &conns {
            let r = Reader::new(s).next(false);
            assert_eq!(r.status, 200, "round {round}");
        }
    }
    let log = server.stop();
    let stats = crate::util::stopped_stats(&log);
    assert_eq!(stats.iter().map(|s| s.requests).sum::<u64>(), 2000);
}

/// How long a flood lasts at most: the other connections' requests must
/// be answered within it (they were answered in milliseconds; starved,
/// they took seconds, one behind each pause of the flood).
const FLOOD: std::time::Duration = std::time::Duration::from_secs(5);

/// A connection that sends without pause (`batch` over and over, for
/// at most `FLOOD`) and reads whatever comes back, until stopped.
struct Flood {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writer: std::thread::JoinHandle<()>,
    reader: std::thread::JoinHandle<u64>,
    conn: std::net::TcpStream,
}

impl Flood {
    fn start(server: &Server, batch: Vec<u8>) -> Flood {
        use std::sync::atomic::Ordering;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conn = server.connect();
        conn.set_write_timeout(Some(FLOOD)).unwrap();
        let mut drain = conn.try_clone().unwrap();
        let mut send = conn.try_clone().unwrap();
        let stop = done.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match std::io::Read::read(&mut drain, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n as u64,
                }
            }
            got
        });
        let stop = done.clone();
        let writer = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < FLOOD {
                if send.write_all(&batch).is_err() {
                    break;
                }
            }
        });
        Flood {
            done,
            writer,
            reader,
            conn,
        }
    }

    /// Whether it is still sending.
    fn flooding(&self) -> bool {
        !self.writer.is_finished()
    }

    /// Stop it; how much of it was answered.
    fn stop(self) -> u64 {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.writer.join();
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        self.reader.join().unwrap()
    }
}

/// A client that never pauses (requests pipelined back to back, or
/// uploads one after the other, read as fast as they are answered) does
/// not keep its shard from the others: requests on other connections are
/// answered while the floods go on. Its reads always found data at once,
/// so its task never waited and the shard ran nothing else for as long as
/// it kept sending.
#[test]
fn a_client_that_never_pauses_does_not_starve_the_shards_other_connections() {
    let server = Server::start(&["--shards", "2", "--max-body-bytes", "2m"]);
    let mut upload = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        900_000
    )
    .into_bytes();
    upload.resize(upload.len() + 900_000, b'x');
    let pipelined = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    // Connections are dealt round-robin: one flood of each kind per shard.
    let floods: Vec<Flood> = [upload.clone(), upload, pipelined.clone(), pipelined]
        .into_iter()
        .map(|batch| Flood::start(&server, batch))
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Several: a starved one waited behind a pause of its shard's flood,
    // which came sooner or later.
    for i in 0..12 {
        let r = crate::util::get(
            server.addr,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status, 200, "request {i}");
    }
    // Every flood was still going when the last of them was answered.
    let flooding: Vec<bool> = floods.iter().map(Flood::flooding).collect();
    for (i, f) in floods.into_iter().enumerate() {
        assert!(f.stop() > 0, "flood {i} was not answered");
    }
    assert!(
        flooding.iter().all(|f| *f),
        "answered only once floods had stopped: {flooding:?}"
    );
}

/// After a burst of proxied requests, once most of its connections have
/// gone, the memory they held goes back to the system: the allocator kept
/// it (2 000 requests waiting on a slow app left a 20 MB process at
/// 108 MB for good), and the spare buffers the burst made go with it.
/// While they wait, they hold little.
#[test]
fn a_burst_s_memory_goes_back_once_it_has_gone() {
    crate::util::raise_nofile();
    let gate = Gate::new();
    let g = gate.clone();
    let up = Upstream::start(move |req| match req.target.as_str() {
        "/held" => Reply::new()
            .wait(&g)
            .write("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"),
        _ => Reply::ok("warm"),
    });
    let proxy = Proxy::start("proxy-burst-memory", &simple(&[up.server()], "", ""));
    let pid = proxy.server.pid();
    // Warm: a request's own allocations are not the burst's.
    assert_eq!(proxy.get("GET / HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
    let base = rss_kib(pid);
    // Enough that what the burst holds stands above the floor a shard
    // keeps (its spares, the allocator's own): a waiting request holds
    // ~12 KB, its response buffer taken only when the answer comes.
    const BURST: usize = 2000;
    let conns: Vec<TcpStream> = (0..BURST)
        .map(|_| {
            let mut s = connect(proxy.addr());
            s.write_all(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    up.wait_for_requests(BURST + 1);
    let peak = rss_kib(pid);
    assert!(
        peak > base + 8 * 1024,
        "the burst held little: {base} KiB, then {peak} KiB"
    );
    // Waiting, a request holds its connections, its head and what its
    // tasks need, not a response buffer (16 KiB) it has nothing to put in
    // yet: ~12 KB each, where it was ~44 KB (nginx: ~10 KB).
    let each = (peak - base) * 1024 / BURST as u64;
    assert!(
        each < 24 << 10,
        "{each} bytes held by each waiting request ({base} KiB, then {peak} KiB)"
    );
    gate.open();
    for s in &conns {
        assert_eq!(Reader::new(s).next(false).status, 200);
    }
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(10);
    let back = base + (peak - base) / 3;
    while rss_kib(pid) > back {
        assert!(
            Instant::now() < deadline,
            "{base} KiB before the burst, {peak} KiB in it, {} KiB after",
            rss_kib(pid)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
