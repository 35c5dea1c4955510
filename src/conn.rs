//! One connection on a shard: moves bytes between the socket and the HTTP
//! session, applies the timeouts the session asks for, and closes cleanly.
//!
//! Everything HTTP lives in `http::session`; this file must stay a thin
//! driver: read, process, write what is committed, repeat.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::access_log::{AccessLogger, Entry};
use crate::handlers::static_files::{self, ReplyContext};
use crate::http::response::{write_error, Persistence};
use crate::http::session::{Context, InputBuffer, Next, RequestLog, Session, Wait, INITIAL_INPUT};
use crate::http::status::Status;
use crate::shard::{ConnKey, Shard, Site};
use std::net::IpAddr;

/// How long a closing connection keeps reading what the client still sends,
/// so that unread data does not turn our FIN into a reset that destroys the
/// response in flight (nginx's lingering close).
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes discarded while lingering.
pub const LINGER_BYTES: usize = 1 << 20;

/// Output buffer capacity an idle connection keeps; a pipelined burst may
/// have grown it to `MAX_BATCH` and more.
pub const IDLE_OUTPUT: usize = 4096;

/// Serve one accepted connection until it closes.
pub async fn serve(mut stream: TcpStream, shard: Rc<Shard>) {
    let limits = shard.site().limits;
    // Responses are written whole; Nagle would only delay the last segment.
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(limits.send_timeout));

    if shard.at_capacity() {
        shard.count_refused();
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
    loop {
        // The site of this step: a reload takes effect for the next request.
        let site = shard.site();
        let limits = site.limits;
        let cx = context(&shard, &site, log);
        let next = session.process(&mut input, &mut out, &cx);
        if session.served() != served {
            shard.count_requests(session.served() - served);
            served = session.served();
            head_deadline = None;
        }
        if flush(&mut stream, &mut out, &mut session).await.is_err() {
            return;
        }
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
                let served = static_files::serve(p.job, rc, &mut out, &mut stream).await;
                if let (Some(l), Some(req)) = (&conn_log, &p.log) {
                    let (status, bytes) = served.as_ref().copied().unwrap_or((0, 0));
                    l.record(req.entry(None, status, bytes));
                }
                if served.is_err() {
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
                if let Some(e) = session.error() {
                    shard.count_error(e);
                }
                if linger {
                    linger_close(&mut stream, &mut input).await;
                }
                return;
            }
            Next::Write => continue,
            Next::Read(wait) => wait,
        };
        let timeout = match wait {
            Wait::Idle => limits.keepalive_timeout,
            Wait::Body => limits.body_timeout,
            Wait::Head => {
                let deadline =
                    *head_deadline.get_or_insert_with(|| Instant::now() + limits.header_timeout);
                deadline.saturating_duration_since(Instant::now())
            }
        };
        // Between requests: shutdown may close this one at once, and it
        // should not hold on to buffers a burst made large.
        let idle = wait == Wait::Idle;
        if idle {
            if shard.is_draining() {
                return;
            }
            input.shrink();
            if out.capacity() > IDLE_OUTPUT {
                out.shrink_to(IDLE_OUTPUT);
            }
        }
        shard.set_idle(key, idle);
        let read = if timeout.is_zero() {
            Err(std::io::ErrorKind::TimedOut.into())
        } else {
            let _ = stream.set_read_timeout(Some(timeout));
            stream.read(input.spare()).await
        };
        shard.set_idle(key, false);
        match read {
            Ok(0) => return,
            Ok(n) => input.filled(n),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                let cx = context(&shard, &site, log);
                session.timed_out(wait, !input.data().is_empty(), &mut out, &cx);
                if let Some(e) = session.error() {
                    shard.count_error(e);
                }
                let _ = flush(&mut stream, &mut out, &mut session).await;
                return;
            }
            Err(_) => return,
        }
    }
}

/// Write the committed part of `out` and drop it from the buffer.
async fn flush(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    session: &mut Session,
) -> std::io::Result<()> {
    let n = session.committed();
    if n == 0 {
        return Ok(());
    }
    stream.write_all(&out[..n]).await?;
    out.drain(..n);
    session.written(n);
    Ok(())
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
fn context<'a>(shard: &Shard, site: &'a Site, log: Option<&'a dyn RequestLog>) -> Context<'a> {
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
