//! One executor's share of the connections: sending on schedule (open loop)
//! or as fast as responses come back (closed loop), reading responses, and
//! recording what happened.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use coreserve::readiness::{Interest, Readiness, WaitError};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::schedule::Schedule;
use crate::stats::Stats;
use crate::{Plan, Progress};

/// Why a response was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// No response within the timeout.
    Timeout,
    /// The connection ended or failed.
    Io,
    /// The response could not be parsed (or uses framing this tool skips).
    Parse,
}

/// A connection to the server, read as the executor's readiness ring says
/// (the server's own mechanism: one recv per response and no io_uring
/// submission, where glommio's read arms a poll after every short read).
pub struct Conn {
    /// Declared first so that it drops first: the poll goes before the socket.
    interest: Option<Interest>,
    stream: TcpStream,
    timeout: Duration,
    /// An `https://` target: the TLS client state.
    tls: Option<Box<rustls::ClientConnection>>,
    /// TLS records waiting to be written (reused).
    sealed: Vec<u8>,
    /// Bytes read from the socket that rustls has not taken yet.
    unread: Vec<u8>,
}

impl Conn {
    /// Write all of `buf` (encrypted on TLS).
    async fn send(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self.tls.as_mut() {
            None => self.stream.write_all(buf).await,
            Some(tls) => {
                crate::tls::seal(tls, buf, &mut self.sealed)?;
                let wrote = self.stream.write_all(&self.sealed).await;
                self.sealed.clear();
                wrote
            }
        }
    }
}

/// Reads responses off one connection, keeping bytes of the next.
pub struct ResponseReader {
    buf: Vec<u8>,
    chunk: Box<[u8]>,
}

impl Default for ResponseReader {
    fn default() -> Self {
        ResponseReader {
            buf: Vec::with_capacity(16 << 10),
            chunk: vec![0; 64 << 10].into_boxed_slice(),
        }
    }
}

impl ResponseReader {
    /// Read one response; its status and the bytes it took. The body is
    /// counted and discarded, never kept whole.
    pub async fn next(&mut self, s: &mut Conn, head_only: bool) -> Result<(u16, u64), ReadError> {
        let (status, head_len, body_len) = loop {
            match parse_head(&self.buf, head_only) {
                Some(Ok(Head::Interim(n))) => {
                    self.buf.drain(..n);
                }
                Some(Ok(Head::Final { status, head, body })) => break (status, head, body),
                Some(Err(e)) => return Err(e),
                None => self.fill(s).await?,
            }
        };
        // The body: what is buffered, then straight from the socket.
        let buffered = (self.buf.len() - head_len) as u64;
        if buffered >= body_len {
            self.buf.drain(..head_len + body_len as usize);
        } else {
            self.buf.clear();
            let mut left = body_len - buffered;
            while left > 0 {
                let n = read(s, &mut self.chunk).await?;
                let used = (n as u64).min(left);
                left -= used;
                if (n as u64) > used {
                    // The next response started in this read.
                    self.buf.extend_from_slice(&self.chunk[used as usize..n]);
                }
            }
        }
        Ok((status, head_len as u64 + body_len))
    }

    /// The next response if it is entirely in the buffer already: lets the
    /// closed loop take a whole batch of pipelined answers per read.
    pub fn try_next(&mut self, head_only: bool) -> Option<Result<(u16, u64), ReadError>> {
        match parse_head(&self.buf, head_only)? {
            Err(e) => Some(Err(e)),
            Ok(Head::Interim(_)) => None,
            Ok(Head::Final { status, head, body }) => {
                let total = head + body as usize;
                if self.buf.len() < total {
                    return None;
                }
                self.buf.drain(..total);
                Some(Ok((status, total as u64)))
            }
        }
    }

    async fn fill(&mut self, s: &mut Conn) -> Result<(), ReadError> {
        let n = read(s, &mut self.chunk).await?;
        self.buf.extend_from_slice(&self.chunk[..n]);
        Ok(())
    }
}

/// A response head found at the start of a buffer.
enum Head {
    /// A 1xx interim response of this many bytes: skip it.
    Interim(usize),
    /// The final response: status, head bytes, body bytes.
    Final { status: u16, head: usize, body: u64 },
}

/// Parse the head at the start of `buf`; `None` while it is incomplete.
/// Only Content-Length framing is read (what the servers measured send);
/// chunked responses count as parse errors rather than being misread.
fn parse_head(buf: &[u8], head_only: bool) -> Option<Result<Head, ReadError>> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Err(ReadError::Parse)),
    };
    let status = r.code.unwrap_or(0);
    if (100..200).contains(&status) {
        return Some(Ok(Head::Interim(n)));
    }
    let mut len = None;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Some(Err(ReadError::Parse));
        }
    }
    let body = if head_only || status == 204 || status == 304 {
        0
    } else {
        match len {
            Some(l) => l,
            None => return Some(Err(ReadError::Parse)),
        }
    };
    Some(Ok(Head::Final {
        status,
        head: n,
        body,
    }))
}

/// Read response bytes: decrypted ones on TLS (the socket's bytes pass
/// through `into` on their way to rustls).
async fn read(s: &mut Conn, into: &mut [u8]) -> Result<usize, ReadError> {
    if s.tls.is_none() {
        return read_raw(s, into).await;
    }
    loop {
        let tls = s.tls.as_mut().expect("checked above");
        match crate::tls::plaintext(tls, into) {
            Ok(Some(0)) | Err(_) => return Err(ReadError::Io),
            Ok(Some(n)) => return Ok(n),
            Ok(None) => {}
        }
        if s.unread.is_empty() {
            let n = read_raw(s, into).await?;
            s.unread.extend_from_slice(&into[..n]);
        }
        let tls = s.tls.as_mut().expect("checked above");
        crate::tls::absorb(tls, &mut s.unread).map_err(|_| ReadError::Io)?;
        if tls.wants_write() {
            s.send(&[]).await.map_err(|_| ReadError::Io)?;
        }
    }
}

async fn read_raw(s: &mut Conn, into: &mut [u8]) -> Result<usize, ReadError> {
    let got = match s.interest.as_mut() {
        Some(interest) => {
            let fd = s.stream.as_raw_fd();
            let deadline = Instant::now() + s.timeout;
            loop {
                if let Some(read) = interest.try_recv(fd, into) {
                    break read;
                }
                match interest.readable(Some(deadline)).await {
                    Ok(()) => {}
                    Err(WaitError::TimedOut) => return Err(ReadError::Timeout),
                    Err(WaitError::Ring(_)) => return Err(ReadError::Io),
                }
            }
        }
        None => s.stream.read(into).await,
    };
    match got {
        Ok(0) => Err(ReadError::Io),
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(ReadError::Timeout),
        Err(_) => Err(ReadError::Io),
    }
}

/// Drive connections `mine` of the plan until the run ends; return what
/// they measured.
pub async fn drive(plan: Plan, mine: Vec<usize>, start: Instant, progress: Arc<Progress>) -> Stats {
    let plan = Rc::new(plan);
    let stats = Rc::new(RefCell::new(Stats::new()));
    // Without the ring (an old kernel) connections read through glommio.
    // While the ring's driver waits before parking, glommio's own
    // completions wait too: the open loop's send timers and every connect
    // go through glommio, so those runs park at once rather than send late.
    // Fixed, not the server's default: the generator's own cost must not
    // change between sessions when that does.
    let idle_wait = if plan.rate.is_some() || plan.new_connection {
        Duration::ZERO
    } else {
        Duration::from_millis(1)
    };
    let readiness = Readiness::new(idle_wait).ok();
    let driver = readiness.clone().map(|r| glommio::spawn_local(r.drive()));
    // Publish this executor's p99 for the progress line.
    let (s2, p2) = (stats.clone(), progress.clone());
    let reporter = glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(Duration::from_millis(500)).await;
            let p99 = s2.borrow().corrected.value_at_quantile(0.99);
            p2.p99_us.fetch_max(p99, Ordering::Relaxed);
        }
    });
    let tasks: Vec<_> = mine
        .into_iter()
        .map(|c| {
            glommio::spawn_local(connection(
                plan.clone(),
                readiness.clone(),
                c,
                start,
                stats.clone(),
                progress.clone(),
            ))
        })
        .collect();
    for t in tasks {
        t.await;
    }
    drop(reporter);
    drop(driver);
    let s = stats.borrow().clone();
    s
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

async fn connect(plan: &Plan, readiness: Option<&Rc<Readiness>>) -> std::io::Result<Conn> {
    let s = TcpStream::connect(plan.addr)
        .await
        .map_err(std::io::Error::from)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(plan.timeout))?;
    s.set_write_timeout(Some(plan.timeout))?;
    let mut conn = Conn {
        interest: readiness.map(|r| r.register(s.as_raw_fd())),
        stream: s,
        timeout: plan.timeout,
        tls: None,
        sealed: Vec::new(),
        unread: Vec::new(),
    };
    if let Some(tls) = &plan.tls {
        conn.tls = Some(Box::new(tls.connection()?));
        handshake(&mut conn).await?;
    }
    Ok(conn)
}

impl Conn {
    /// Over TLS: whether its handshake resumed a session; `None` for plain
    /// HTTP.
    fn resumed(&self) -> Option<bool> {
        let kind = self.tls.as_ref()?.handshake_kind();
        Some(kind == Some(rustls::HandshakeKind::Resumed))
    }
}

/// Complete a TLS handshake: a connection that fails it counts as a
/// connect error.
async fn handshake(conn: &mut Conn) -> std::io::Result<()> {
    let mut raw = vec![0u8; 16 << 10];
    loop {
        conn.send(&[]).await?;
        if !conn.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
            return Ok(());
        }
        let n = read_raw(conn, &mut raw)
            .await
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        conn.unread.extend_from_slice(&raw[..n]);
        let tls = conn.tls.as_mut().expect("a TLS connection");
        crate::tls::absorb(tls, &mut conn.unread)?;
    }
}

async fn connection(
    plan: Rc<Plan>,
    readiness: Option<Rc<Readiness>>,
    index: usize,
    start: Instant,
    stats: Rc<RefCell<Stats>>,
    progress: Arc<Progress>,
) {
    let measure_from = start + plan.warmup;
    let window = Window {
        measure_from,
        end: measure_from + plan.duration,
    };
    let now = Instant::now();
    if start > now {
        glommio::timer::sleep(start - now).await;
    }
    match plan.rate {
        Some(rate) => {
            open_loop(
                &plan,
                readiness.as_ref(),
                index,
                Schedule::new(start, rate, plan.connections, index),
                window,
                &stats,
                &progress,
            )
            .await
        }
        None => closed_loop(&plan, readiness.as_ref(), index, window, &stats, &progress).await,
    }
}

/// The part of a run that is measured: requests sent from `measure_from`
/// (after the warm-up) until `end`.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

fn count_error(stats: &RefCell<Stats>, e: ReadError) {
    let mut s = stats.borrow_mut();
    match e {
        ReadError::Timeout => s.errors.timeout += 1,
        ReadError::Io => s.errors.io += 1,
        ReadError::Parse => s.errors.parse += 1,
    }
}

/// wrk2's model: each request is due at its scheduled time; one in flight
/// per connection; a late one is sent at once and its lateness counted.
async fn open_loop(
    plan: &Plan,
    readiness: Option<&Rc<Readiness>>,
    index: usize,
    mut schedule: Schedule,
    Window { measure_from, end }: Window,
    stats: &RefCell<Stats>,
    progress: &Progress,
) {
    let mut conn: Option<Conn> = None;
    let mut reader = ResponseReader::default();
    let mut n = index;
    let head_only = plan.method == "HEAD";
    let requests = plan.render();
    loop {
        let due = schedule.next_due();
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            glommio::timer::sleep(due - now).await;
        }
        let measured = due >= measure_from;
        if conn.is_none() {
            match connect(plan, readiness).await {
                Ok(s) => {
                    if measured {
                        stats.borrow_mut().connected(s.resumed());
                    }
                    conn = Some(s);
                    reader = ResponseReader::default();
                }
                Err(_) => {
                    if measured {
                        stats.borrow_mut().errors.connect += 1;
                    }
                    continue;
                }
            }
        }
        let s = conn.as_mut().expect("connected above");
        let request = &requests[n % requests.len()];
        n += plan.connections;
        let sent = Instant::now();
        let result = match s.send(request).await {
            Ok(()) => reader.next(s, head_only).await,
            Err(_) => Err(ReadError::Io),
        };
        let done = Instant::now();
        progress.completed.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok((status, bytes)) => {
                if measured {
                    let mut st = stats.borrow_mut();
                    st.record(status, micros(done - due), micros(done - sent));
                    st.bytes += bytes;
                }
                if plan.new_connection {
                    conn = None;
                }
            }
            Err(e) => {
                if measured {
                    count_error(stats, e);
                }
                conn = None;
            }
        }
    }
}

/// As fast as the server answers, `pipeline` requests in flight.
async fn closed_loop(
    plan: &Plan,
    readiness: Option<&Rc<Readiness>>,
    index: usize,
    Window { measure_from, end }: Window,
    stats: &RefCell<Stats>,
    progress: &Progress,
) {
    let head_only = plan.method == "HEAD";
    let requests = plan.render();
    let depth = if plan.new_connection {
        1
    } else {
        plan.pipeline.max(1)
    };
    let mut n = index;
    let mut out = Vec::with_capacity(4096);
    while Instant::now() < end {
        let mut s = match connect(plan, readiness).await {
            Ok(s) => {
                if Instant::now() >= measure_from {
                    stats.borrow_mut().connected(s.resumed());
                }
                s
            }
            Err(_) => {
                if Instant::now() >= measure_from {
                    stats.borrow_mut().errors.connect += 1;
                }
                // Do not spin on a server that refuses.
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut reader = ResponseReader::default();
        let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(depth);
        'conn: loop {
            // Refill the pipeline in one write.
            let now = Instant::now();
            while in_flight.len() < depth && now < end {
                out.extend_from_slice(&requests[n % requests.len()]);
                n += plan.connections;
                in_flight.push_back(now);
                if plan.new_connection {
                    break;
                }
            }
            if !out.is_empty() {
                let wrote = s.send(&out).await;
                out.clear();
                if wrote.is_err() {
                    if Instant::now() >= measure_from && !in_flight.is_empty() {
                        stats.borrow_mut().errors.io += 1;
                    }
                    break;
                }
            }
            if in_flight.is_empty() {
                break;
            }
            // One response (waiting for it), then every one already buffered.
            let mut result = reader.next(&mut s, head_only).await;
            let mut done_here = 0;
            while let Some(sent) = in_flight.front().copied() {
                match result {
                    Ok((status, bytes)) => {
                        in_flight.pop_front();
                        done_here += 1;
                        let done = Instant::now();
                        if sent >= measure_from && done <= end + plan.timeout {
                            let mut st = stats.borrow_mut();
                            let us = micros(done - sent);
                            st.record(status, us, us);
                            st.bytes += bytes;
                        }
                        if plan.new_connection {
                            progress.completed.fetch_add(done_here, Ordering::Relaxed);
                            break 'conn;
                        }
                    }
                    Err(e) => {
                        if sent >= measure_from {
                            count_error(stats, e);
                        }
                        progress.completed.fetch_add(done_here, Ordering::Relaxed);
                        break 'conn;
                    }
                }
                match reader.try_next(head_only) {
                    Some(r) => result = r,
                    None => break,
                }
            }
            progress.completed.fetch_add(done_here, Ordering::Relaxed);
        }
        let Conn {
            interest,
            mut stream,
            tls,
            ..
        } = s;
        drop(tls);
        drop(interest);
        let _ = stream.close().await;
    }
}
