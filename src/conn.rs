//! One connection on a shard: moves bytes between the socket and the HTTP
//! session, applies the timeouts the session asks for, and closes cleanly.
//!
//! Everything HTTP lives in `http::session`; this file must stay a thin
//! driver: read, process, write what is committed, repeat.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::access_log::AccessLogger;
use crate::handlers::static_files::{self, ReplyContext};
use crate::handlers::Job;
use crate::http::log::Entry;
use crate::http::response::{write_error, Persistence};
use crate::http::session::{Context, InputBuffer, Next, RequestLog, Session, Wait, INITIAL_INPUT};
use crate::http::status::Status;
use crate::readiness::Interest;
use crate::recheck;
use crate::state::{ConnKey, Shard, Site};
use std::net::IpAddr;

/// How long a closing connection keeps reading what the client still sends,
/// so that unread data does not turn our FIN into a reset that destroys the
/// response in flight (nginx's lingering close).
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes discarded while lingering.
pub const LINGER_BYTES: usize = 1 << 20;

/// Output buffer capacity a waiting connection keeps; a pipelined burst may
/// have grown it to `MAX_BATCH` and more.
pub const IDLE_OUTPUT: usize = 4096;

/// Serve one accepted connection until it closes.
pub async fn serve(mut stream: TcpStream, shard: Rc<Shard>) {
    let limits = shard.site().limits;
    // TCP_NODELAY comes with the socket, from its listener (`listener::prepare`).
    // Every way in makes it non-blocking too: the direct recv could do
    // without (MSG_DONTWAIT), a static file's sendfile could not.
    debug_assert!(
        // SAFETY: the stream's descriptor, open for as long as the borrow.
        socket2::SockRef::from(&unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) })
            .nonblocking()
            .unwrap_or(false),
        "a blocking connection socket"
    );
    let _ = stream.set_write_timeout(Some(limits.send_timeout));

    if shard.at_capacity() {
        shard.count(|s| s.refused += 1);
        let mut out = Vec::new();
        write_error(&mut out, shard.date(), Status::SERVICE_UNAVAILABLE, false);
        if stream.write_all(&out).await.is_ok() {
            // The client's request is unread: linger so the 503 is not reset away.
            linger_close(&mut stream, &mut InputBuffer::new(INITIAL_INPUT)).await;
        }
        return;
    }
    let key = shard.register(&stream);
    let _registration = Registration { shard: &shard, key };
    // Dropped before the stream: the socket's poll is removed before it closes.
    let mut interest = shard.readiness().map(|r| r.register(stream.as_raw_fd()));

    let conn_log = shard.access_log().map(|logger| ConnLog {
        logger,
        remote: stream.peer_addr().ok().map(|a| a.ip()),
    });
    let log = conn_log.as_ref().map(|l| l as &dyn RequestLog);
    let mut session = Session::default();
    let mut input = InputBuffer::new(limits.max_header_bytes as usize);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    let mut head_deadline: Option<Instant> = None;
    let mut served = 0;
    // When the bytes being processed arrived: service time runs from there
    // to the response written.
    let mut arrived = Instant::now();
    let mut bytes_in = 0;
    // Whether a read has been tried on this connection yet.
    let mut read_once = false;
    loop {
        // The site of this step: a reload takes effect for the next request.
        let site = shard.site();
        let limits = site.limits;
        let cx = context(&shard, &site, log);
        // A panic in a handler ends this connection, with a 500 if its
        // response was not sent yet; the shard and its other connections go on.
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            session.process(&mut input, &mut out, &cx)
        }));
        let next = match step {
            Ok(next) => next,
            Err(panic) => {
                log::error!(
                    "shard {}: a request handler panicked: {}",
                    shard.id(),
                    crate::panics::message(&*panic)
                );
                out.truncate(session.committed());
                write_error(&mut out, shard.date(), Status::INTERNAL_SERVER_ERROR, false);
                let _ = stream.write_all(&out).await;
                shard.count(|s| s.count_status(500));
                linger_close(&mut stream, &mut input).await;
                return;
            }
        };
        let Ok(written) = flush(&mut stream, &mut out, &mut session).await else {
            return;
        };
        let answered = session.served() - served;
        if answered > 0 {
            served = session.served();
            head_deadline = None;
            // A file request is timed when it has been sent, below.
            let now_done = answered - u64::from(next == Next::Serve);
            if now_done > 0 {
                let us = arrived.elapsed().as_micros() as u64;
                shard.metrics().record_latency(us, now_done);
            }
        }
        let statuses = session.take_statuses();
        shard.count(|s| {
            s.requests += answered;
            s.bytes_in += std::mem::take(&mut bytes_in);
            s.bytes_out += written;
            for (total, n) in s.status.iter_mut().zip(statuses) {
                *total += n;
            }
            if let (Next::Close { .. }, Some(e)) = (next, session.error()) {
                s.count_error(e);
            }
        });
        let wait = match next {
            Next::Serve => {
                let Some(p) = session.take_pending() else {
                    return;
                };
                let rc = ReplyContext {
                    persistence: p.persistence,
                    head_only: p.head_only,
                    date: shard.date(),
                };
                // Boxed, so that the connection future (what every idle
                // connection keeps) is not as large as a file transfer.
                let result = Box::pin(static_files::serve(p.job, rc, &mut out, &mut stream)).await;
                let (status, bytes, total) = result.as_ref().copied().unwrap_or((0, 0, 0));
                if let (Some(l), Some(req)) = (&conn_log, &p.log) {
                    l.record(req.entry(None, status, bytes));
                }
                // From the bytes' arrival, like every other request.
                shard
                    .metrics()
                    .record_latency(arrived.elapsed().as_micros() as u64, 1);
                shard.count(|s| {
                    s.count_status(status);
                    s.bytes_out += total;
                });
                if result.is_err() {
                    return;
                }
                if p.persistence == Persistence::Close {
                    if !input.data().is_empty() {
                        linger_close(&mut stream, &mut input).await;
                    }
                    return;
                }
                continue;
            }
            Next::Close { linger } => {
                if linger {
                    linger_close(&mut stream, &mut input).await;
                }
                return;
            }
            Next::Write => continue,
            Next::Read(wait) => wait,
        };
        let now = Instant::now();
        let deadline = match wait {
            Wait::Idle => now + limits.keepalive_timeout,
            Wait::Body => now + limits.body_timeout,
            Wait::Head => *head_deadline.get_or_insert(now + limits.header_timeout),
        };
        // Nothing of a request is here: between requests, or before the
        // first byte of one (a browser's preconnect, a client that connected
        // and went quiet). Nothing is in flight, so shutdown may close it at
        // once rather than wait out the drain deadline for it.
        let idle = wait == Wait::Idle;
        let quiet = idle || (wait == Wait::Head && input.data().is_empty());
        // A fresh connection is read once first: its request may be there.
        if quiet && (idle || read_once) && shard.is_draining() {
            return;
        }
        shard.set_idle(key, quiet);
        let read = if deadline <= now {
            Err(std::io::ErrorKind::TimedOut.into())
        } else {
            match interest.as_mut() {
                Some(interest) => {
                    read_ready(&stream, interest, &mut input, &mut out, idle, deadline).await
                }
                None => read_some(&mut stream, &mut input, &mut out, idle, deadline).await,
            }
        };
        shard.set_idle(key, false);
        read_once = true;
        match read {
            Ok(0) => return,
            Ok(n) => {
                input.filled(n);
                bytes_in += n as u64;
                arrived = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                let cx = context(&shard, &site, log);
                session.timed_out(wait, !input.data().is_empty(), &mut out, &cx);
                let written = flush(&mut stream, &mut out, &mut session)
                    .await
                    .unwrap_or(0);
                let statuses = session.take_statuses();
                shard.count(|s| {
                    if let Some(e) = session.error() {
                        s.count_error(e);
                    }
                    s.bytes_out += written;
                    for (total, n) in s.status.iter_mut().zip(statuses) {
                        *total += n;
                    }
                });
                return;
            }
            Err(_) => return,
        }
    }
}

/// Read what has arrived, waiting until `deadline` at most for something to,
/// as the shard's readiness ring tells: a socket is read when a completion
/// said data arrived (or it may hold more than the last read took), so a
/// keep-alive request costs one recv and no submission.
async fn read_ready(
    stream: &TcpStream,
    interest: &mut Interest,
    input: &mut InputBuffer,
    out: &mut Vec<u8>,
    idle: bool,
    deadline: Instant,
) -> std::io::Result<usize> {
    let fd = stream.as_raw_fd();
    let mut shrunk = !idle;
    loop {
        if let Some(read) = interest.try_recv(fd, input.spare()) {
            return read;
        }
        if !shrunk {
            shrunk = true;
            shrink_idle(input, out);
        }
        interest.readable(Some(deadline)).await?;
    }
}

/// Give back what a burst made an idle connection's buffers grow to: idle
/// connections are the many, and they should cost little (the buffers grow
/// again with the next burst).
fn shrink_idle(input: &mut InputBuffer, out: &mut Vec<u8>) {
    input.shrink();
    if out.capacity() > IDLE_OUTPUT {
        out.shrink_to(IDLE_OUTPUT);
    }
}

/// Read what has arrived, waiting until `deadline` at most for something to,
/// on a shard without a readiness ring.
///
/// The socket is read directly first, and again after the shard's other
/// tasks ran, within the shard's budget (`recheck`); only a connection still
/// silent then arms glommio's poll and timer. An idle connection pays a few
/// non-blocking recv calls per wait.
///
/// A connection that does wait between requests first gives back what a
/// burst made its buffers grow to (`shrink_idle`).
async fn read_some(
    stream: &mut TcpStream,
    input: &mut InputBuffer,
    out: &mut Vec<u8>,
    idle: bool,
    deadline: Instant,
) -> std::io::Result<usize> {
    let fd = stream.as_raw_fd();
    let direct = recheck::direct(|| {
        let buf = input.spare();
        // SAFETY: recv(2) into `buf`, which is valid for `buf.len()` bytes;
        // MSG_DONTWAIT keeps it from blocking the shard.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    });
    if let Some(read) = direct.await {
        return read;
    }
    if idle {
        shrink_idle(input, out);
    }
    // Measured now: stepping aside took time.
    let timeout = deadline.saturating_duration_since(Instant::now());
    if timeout.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    let _ = stream.set_read_timeout(Some(timeout));
    recheck::wait(stream.read(input.spare())).await
}

/// Write the committed part of `out` and drop it from the buffer; returns
/// the bytes written.
async fn flush(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    session: &mut Session<Job>,
) -> std::io::Result<u64> {
    let n = session.committed();
    if n == 0 {
        return Ok(0);
    }
    stream.write_all(&out[..n]).await?;
    out.drain(..n);
    session.written(n);
    Ok(n as u64)
}

/// Half-close, then read and discard until the client closes too, for at most
/// `LINGER_TIME` and `LINGER_BYTES`.
async fn linger_close(stream: &mut TcpStream, input: &mut InputBuffer) {
    if stream.shutdown(std::net::Shutdown::Write).await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut discarded = 0;
    input.consume(input.data().len());
    while discarded < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(input.spare()).await {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

/// Removes the connection from the shard's registry however the task ends.
struct Registration<'a> {
    shard: &'a Shard,
    key: ConnKey,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shard.deregister(self.key);
    }
}

/// The session context from a shard; kept here so `Context` stays free of
/// shard types.
fn context<'a>(shard: &Shard, site: &'a Site, log: Option<&'a dyn RequestLog>) -> Context<'a, Job> {
    Context {
        limits: &site.session_limits,
        date: shard.date(),
        draining: shard.is_draining(),
        handler: &site.router,
        log,
    }
}

/// The access log as one connection writes to it: the shard's logger and
/// the client's address.
struct ConnLog {
    logger: Rc<AccessLogger>,
    remote: Option<IpAddr>,
}

impl RequestLog for ConnLog {
    fn record(&self, mut entry: Entry<'_>) {
        entry.remote = self.remote;
        self.logger.record(&entry);
    }
}
