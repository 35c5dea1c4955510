//! Zero heap allocations per request on a warm keep-alive connection.
//!
//! The server runs in this process (its own test binary, so that the
//! counting allocator below sees every thread of it): one shard, one
//! connection. Requests arrive in batches of `BATCH`, so the shard finds
//! each next request already there: parsing, routing, answering and
//! writing must allocate nothing, or the count would reach one per request.
//! What is left is what glommio allocates when the shard does wait for the
//! next batch (an io_uring source, its timers: a few per wait), which is
//! printed per wait beside a one-request-at-a-time run for the record.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coreserve::config::{Config, MetricsConfig};

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: alloc-test\r\n\r\n";
const BATCH: usize = 500;
const BATCHES: usize = 40;
const SINGLES: u64 = 2_000;

/// `n` requests in one write, then their `n` responses of `len` bytes each
/// into `buf` (nothing allocated on this side).
fn exchange(s: &mut TcpStream, batch: &[u8], n: usize, len: usize, buf: &mut [u8]) {
    s.write_all(&batch[..n * REQUEST.len()]).unwrap();
    s.read_exact(&mut buf[..n * len]).unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(buf[..n * len].ends_with(b"Hello World"));
}

#[test]
fn a_warm_keep_alive_request_allocates_nothing() {
    // A free port, handed to the in-process server.
    let addr: SocketAddr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let config = Config {
        listen: vec![addr],
        shards: Some(1),
        metrics: MetricsConfig {
            listen: None,
            ..MetricsConfig::default()
        },
        ..Config::default()
    };
    let server =
        std::thread::spawn(move || coreserve::master::run(config, Box::new(|| Err(Vec::new()))));

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("the server did not start: {e}"),
        }
    };
    s.set_nodelay(true).unwrap();
    // The response's length, from one exchange read by hand.
    s.write_all(REQUEST).unwrap();
    let mut buf = vec![0u8; BATCH * 1024];
    let mut got = 0;
    while !buf[..got].ends_with(b"Hello World") {
        got += s.read(&mut buf[got..]).unwrap();
    }
    let len = got;
    let batch = REQUEST.repeat(BATCH);
    // Warm up: buffers grown, caches filled, the Date header rendered.
    for _ in 0..4 {
        exchange(&mut s, &batch, BATCH, len, &mut buf);
    }

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..BATCHES {
        exchange(&mut s, &batch, BATCH, len, &mut buf);
    }
    let batched = ALLOCATIONS.load(Ordering::Relaxed) - before;
    let requests = (BATCH * BATCHES) as u64;

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..SINGLES {
        exchange(&mut s, &batch, 1, len, &mut buf);
    }
    let single = ALLOCATIONS.load(Ordering::Relaxed) - before;
    eprintln!(
        "{batched} allocations in the whole process over {requests} requests in {BATCHES} batches \
         ({:.2} per batch: its read and the wait for the next); one request at a time: {:.2} per request, all inside \
         glommio's wait",
        batched as f64 / BATCHES as f64,
        single as f64 / SINGLES as f64
    );

    drop(s);
    // SAFETY: kill(2) to our own process: SIGTERM is the server's drain signal.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    server.join().unwrap().unwrap();

    // A wait for the next batch costs glommio a few allocations; one per
    // request would be `requests` at least.
    assert!(
        batched < requests / 20,
        "{batched} allocations over {requests} requests: the request path allocates"
    );
}
