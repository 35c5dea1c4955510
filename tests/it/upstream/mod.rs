//! Upstream servers for the reverse-proxy tests: an in-test HTTP/1.1 server
//! (std::net and a thread per connection) that records every byte it gets
//! and answers as the test says, and the Node app in `apps/echo.js`.
//!
//! The fixture parses what it receives strictly (httparse for heads; the
//! body by Content-Length or chunked, written here), so a test can ask
//! whether the proxy sent exactly the messages it should: `requests()`,
//! `errors()`, the raw `received()` bytes, per connection or all together.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::util::WAIT;

mod node;
mod parse;
mod reply;
#[cfg(test)]
mod selftest;

pub use node::NodeApp;
use parse::{parse, Parsed};
use reply::Step;
pub use reply::{chunk, Reply};

/// Bytes for a failure message: text, escaped, cut after 300 bytes.
pub fn show(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(300)];
    let more = if bytes.len() > cut.len() {
        format!("…({} bytes in all)", bytes.len())
    } else {
        String::new()
    };
    format!("{:?}{more}", String::from_utf8_lossy(cut))
}

/// How often a blocked fixture thread looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// One request as the upstream received it.
#[derive(Clone)]
pub struct Request {
    /// Arrival order across the whole fixture, from 0.
    pub n: usize,
    /// The accepted connection it came on (index into `connections()`).
    pub conn: usize,
    /// Its place on that connection, from 0.
    pub seq: usize,
    /// The local port it came in on (a fixture may listen on several).
    pub port: u16,
    /// Method, target and minor version (`1` for HTTP/1.1).
    pub method: String,
    pub target: String,
    pub version: u8,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
    /// Whether any chunk carried an extension (`;name=value`).
    pub chunk_extensions: bool,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// The exact bytes of this message, head and framed body.
    pub raw: Vec<u8>,
}

impl Request {
    /// The first value of a field (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// Every value of a field, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether any field has this name.
    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{} (conn {} #{}) {}",
            self.n,
            self.conn,
            self.seq,
            show(&self.raw)
        )
    }
}

/// What happened on one accepted connection.
#[derive(Clone, Default)]
pub struct Conn {
    /// The local port it was accepted on.
    pub port: u16,
    /// Every byte received, in order (a tunnel's too).
    pub bytes: Vec<u8>,
    /// The complete requests parsed from it.
    pub requests: Vec<Request>,
    /// Why the fixture refused what it got (a malformed message).
    pub error: Option<String>,
    /// Whether the peer ended the connection (end of file or reset).
    pub peer_closed: bool,
    /// Whether the peer closed it in the middle of a message.
    pub partial: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let targets: Vec<String> = self
            .requests
            .iter()
            .map(|q| format!("{} {}", q.method, q.target))
            .collect();
        write!(
            f,
            "Conn {{ port {}, requests {targets:?}, {} bytes{}{}{} }}",
            self.port,
            self.bytes.len(),
            if self.peer_closed {
                ", closed by the peer"
            } else {
                ""
            },
            if self.partial {
                ", ended inside a message"
            } else {
                ""
            },
            match &self.error {
                Some(e) => format!(", refused: {e}"),
                None => String::new(),
            }
        )
    }
}

/// How the fixture answers: called for every complete request.
pub type Behaviour = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Canned behaviour: 200 `body` to everything (the head alone to HEAD).
pub fn ok(body: &str) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    let body = body.to_string();
    move |req| Reply::ok_to(req, &body)
}

/// Canned behaviour: every request echoed back (`Reply::echo_request`).
pub fn echo() -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    Reply::echo_request
}

/// A latch a test opens to let held replies go on.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Open it: every reply waiting on it goes on, and later ones pass.
    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    /// Wait until it is open or `stop` is set, at most three WAITs.
    fn pass(&self, stop: &AtomicBool) {
        let deadline = Instant::now() + 3 * WAIT;
        let mut open = self.0 .0.lock().unwrap();
        while !*open && !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            open = self.0 .1.wait_timeout(open, POLL).unwrap().0;
        }
    }
}

struct Shared {
    behaviour: Behaviour,
    conns: Mutex<Vec<Conn>>,
    arrivals: Mutex<usize>,
    stop: AtomicBool,
}

/// An HTTP/1.1 server on 127.0.0.1 (one or more ports) that records what
/// it receives and answers with its behaviour. Stopped when dropped.
pub struct Upstream {
    /// The first address it listens on.
    pub addr: SocketAddr,
    /// Every address it listens on.
    pub addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    acceptors: Vec<JoinHandle<()>>,
}

impl Upstream {
    /// Listen on one port of 127.0.0.1.
    pub fn start(behaviour: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Upstream {
        Upstream::start_many(1, behaviour)
    }

    /// Listen on `ports` ports of 127.0.0.1 sharing one record and one
    /// behaviour (two "servers" that are one fixture).
    pub fn start_many(
        ports: usize,
        behaviour: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        let shared = Arc::new(Shared {
            behaviour: Arc::new(behaviour),
            conns: Mutex::new(Vec::new()),
            arrivals: Mutex::new(0),
            stop: AtomicBool::new(false),
        });
        let mut addrs = Vec::new();
        let mut acceptors = Vec::new();
        for _ in 0..ports {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
            let addr = listener.local_addr().unwrap();
            addrs.push(addr);
            let shared = shared.clone();
            acceptors.push(std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if shared.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let idx = {
                        let mut conns = shared.conns.lock().unwrap();
                        conns.push(Conn {
                            port: addr.port(),
                            ..Conn::default()
                        });
                        conns.len() - 1
                    };
                    let shared = shared.clone();
                    std::thread::Builder::new()
                        .stack_size(256 * 1024)
                        .spawn(move || serve(stream, idx, addr.port(), &shared))
                        .expect("spawn a connection thread");
                }
            }));
        }
        Upstream {
            addr: addrs[0],
            addrs,
            shared,
            acceptors,
        }
    }

    /// `127.0.0.1:PORT` of the first port, as a configuration names it.
    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    /// Every port's `127.0.0.1:PORT`.
    pub fn servers(&self) -> Vec<String> {
        self.addrs.iter().map(|a| a.to_string()).collect()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// What happened on each connection so far, in accept order.
    pub fn connections(&self) -> Vec<Conn> {
        self.shared.conns.lock().unwrap().clone()
    }

    /// Every complete request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        let mut all: Vec<Request> = self
            .connections()
            .into_iter()
            .flat_map(|c| c.requests)
            .collect();
        all.sort_by_key(|r| r.n);
        all
    }

    /// Every byte received, connection after connection in accept order.
    pub fn received(&self) -> Vec<u8> {
        self.connections()
            .into_iter()
            .flat_map(|c| c.bytes)
            .collect()
    }

    /// The malformed messages the fixture refused, with their connection.
    pub fn errors(&self) -> Vec<(usize, String)> {
        self.connections()
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| c.error.map(|e| (i, e)))
            .collect()
    }

    /// Wait until `check` holds (at most WAIT); false if it never did.
    pub fn wait_until(&self, check: impl Fn(&Upstream) -> bool) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            if check(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait until at least `n` requests arrived; panics after WAIT.
    pub fn wait_for_requests(&self, n: usize) -> Vec<Request> {
        assert!(
            self.wait_until(|u| u.requests().len() >= n),
            "the upstream got {} requests, not {n}; its connections: {:?}",
            self.requests().len(),
            self.connections()
        );
        self.requests()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for a in &self.addrs {
            // Wake the acceptor; it sees the flag.
            let _ = TcpStream::connect_timeout(a, Duration::from_secs(1));
        }
        for t in self.acceptors.drain(..) {
            let _ = t.join();
        }
    }
}

/// A TCP address nothing listens on, nor will for the rest of the run.
pub fn dead_addr() -> SocketAddr {
    // Bound and never listening, and kept for the rest of the run: a
    // connection is refused, and no other test's listener can take the
    // port meanwhile (one freed at once was, by a metrics listener: its 404
    // answered a request meant to find nobody).
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    std::mem::forget(s);
    addr
}

enum Fill {
    Data,
    Eof,
    Stop,
}

/// One connection: parse requests, answer each, until it ends.
fn serve(mut s: TcpStream, idx: usize, port: u16, shared: &Shared) {
    let _ = s.set_read_timeout(Some(POLL));
    let _ = s.set_write_timeout(Some(WAIT));
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut seq = 0;
    let mut sent_continue = false;
    loop {
        match parse(&buf) {
            Parsed::Bad(e) => {
                shared.conns.lock().unwrap()[idx].error = Some(e);
                let _ = s.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                let _ = s.shutdown(Shutdown::Both);
                return;
            }
            Parsed::Partial { wants_continue } => {
                if wants_continue && !sent_continue {
                    sent_continue = true;
                    if s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                        return;
                    }
                }
                match fill(&mut s, &mut buf, idx, shared) {
                    Fill::Data => continue,
                    Fill::Stop => return,
                    Fill::Eof => {
                        if !buf.is_empty() {
                            shared.conns.lock().unwrap()[idx].partial = true;
                        }
                        return;
                    }
                }
            }
            Parsed::Done(mut req, len) => {
                sent_continue = false;
                req.conn = idx;
                req.seq = seq;
                req.port = port;
                seq += 1;
                buf.drain(..len);
                {
                    let mut n = shared.arrivals.lock().unwrap();
                    req.n = *n;
                    *n += 1;
                    shared.conns.lock().unwrap()[idx].requests.push(req.clone());
                }
                let reply = (shared.behaviour)(&req);
                if !act(&mut s, reply, &mut buf, idx, shared) {
                    return;
                }
            }
        }
    }
}

/// Read once more into `buf`, recording the bytes.
fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, idx: usize, shared: &Shared) -> Fill {
    let mut chunk = [0u8; 65536];
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Fill::Stop;
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                shared.conns.lock().unwrap()[idx].peer_closed = true;
                return Fill::Eof;
            }
            Ok(n) => {
                shared.conns.lock().unwrap()[idx]
                    .bytes
                    .extend_from_slice(&chunk[..n]);
                buf.extend_from_slice(&chunk[..n]);
                return Fill::Data;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                shared.conns.lock().unwrap()[idx].peer_closed = true;
                return Fill::Eof;
            }
        }
    }
}

/// Carry out a reply; false once the connection is over.
fn act(s: &mut TcpStream, reply: Reply, buf: &mut Vec<u8>, idx: usize, shared: &Shared) -> bool {
    for step in reply.steps {
        match step {
            Step::Write(bytes) => {
                if s.write_all(&bytes).is_err() {
                    return false;
                }
            }
            Step::Sleep(d) => {
                let end = Instant::now() + d;
                while Instant::now() < end && !shared.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(POLL.min(end.saturating_duration_since(Instant::now())));
                }
            }
            Step::Wait(gate) => gate.pass(&shared.stop),
            Step::Close => {
                let _ = s.shutdown(Shutdown::Both);
                return false;
            }
            Step::Reset => {
                reset(s);
                return false;
            }
            Step::Hold => {
                buf.clear();
                while let Fill::Data = fill(s, buf, idx, shared) {
                    buf.clear();
                }
                return false;
            }
            Step::Echo => {
                loop {
                    if !buf.is_empty() && s.write_all(buf).is_err() {
                        return false;
                    }
                    buf.clear();
                    if !matches!(fill(s, buf, idx, shared), Fill::Data) {
                        break;
                    }
                }
                let _ = s.shutdown(Shutdown::Both);
                return false;
            }
        }
    }
    !shared.stop.load(Ordering::Relaxed)
}

/// Close with SO_LINGER 0, so the peer gets a reset.
pub fn reset(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a valid linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Read);
}
