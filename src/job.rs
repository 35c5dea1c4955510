//! Running the job a handler left to its connection (`handlers::Job`: a
//! file to serve, a request to forward) with what the connection lends it.
//!
//! The one place where the kinds of job meet: `conn.rs` runs any job the
//! same way and gets back the same `Ended` (the exchange's record, and
//! whether the connection stays open, closes or lingers). What each kind
//! does lives with it (`handlers::static_files::run`, `proxy::serve`); here
//! is only the lending: which of the connection's parts each kind takes.
//!
//! Must never count or log: the connection finishes the record a job
//! returns, like every other (`conn::finish`).

use std::cell::Cell;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use crate::config::Limits;
use crate::handlers::static_files::{self, ReplyContext, Sink};
use crate::handlers::Job;
use crate::http::body::BodyDecoder;
use crate::http::date::DateCache;
use crate::http::exchange::Ended;
use crate::http::response::Persistence;
use crate::http::session::InputBuffer;
use crate::proxy::{self, Upstreams};
use crate::readiness::Readiness;
use crate::recycled::Recycled;
use crate::transport::Socket;

/// What a connection lends the job it runs: what the session decided about
/// the exchange (from its `Pending`), the socket and buffers, and the
/// shard's parts a job may need. Borrowed for the job's run only.
pub struct JobConn<'a> {
    /// What the response says about the connection.
    pub persistence: Persistence,
    /// HEAD: the response has no body.
    pub head_only: bool,
    /// For a takeover, the request body still to be read from `input`;
    /// None for a deferred job (the session read and dropped it).
    pub body: Option<BodyDecoder>,
    /// The client's socket.
    pub socket: &'a mut Socket,
    /// What was read and not yet used: a takeover job's request body starts
    /// here; pipelined requests behind it stay for the connection.
    pub input: &'a mut InputBuffer,
    /// The output buffer, empty at the start.
    pub out: &'a mut Vec<u8>,
    /// Header lines every response of the connection carries (HSTS).
    pub headers: &'a [u8],
    /// The shard's `Date`, read when a response head is written.
    pub date: &'a DateCache,
    /// The limits of the site the request came in under.
    pub limits: &'a Limits,
    /// Largest head accepted (the session's limit), also from an upstream.
    pub max_head: usize,
    /// The client's address: None until a job first needs it (where accept
    /// gave none, it costs a system call), then kept for the connection's
    /// later jobs.
    pub remote: &'a mut Option<Option<IpAddr>>,
    /// The shard's upstream groups and their pools.
    pub upstreams: &'a Upstreams,
    /// The shard's readiness ring, when it has one.
    pub readiness: Option<&'a Rc<Readiness>>,
    /// The shard's shutdown flag (`Shard::draining_flag`).
    pub draining: &'a Cell<bool>,
}

/// Run `job` to the end of its exchange.
pub async fn run(job: Job, c: JobConn<'_>) -> Ended {
    let JobConn {
        persistence,
        head_only,
        body,
        ..
    } = c;
    // Each kind's future lives off the connection's (`Recycled`, a box
    // whose block the shard reuses), so that a job takes only its own
    // kind's size (a file's 1.3 KB, a proxied exchange's 2.1 KB, release
    // build) and the connection future, which every idle connection keeps,
    // holds only this one (230 bytes).
    match job {
        Job::File(job) => {
            let rc = ReplyContext {
                persistence,
                head_only,
                date: c.date.get(),
                headers: c.headers,
            };
            let unread = !c.input.data().is_empty();
            let mut sink = SocketSink {
                socket: c.socket,
                timeout: c.limits.send_timeout,
            };
            Recycled::new(static_files::run(job, rc, c.out, &mut sink, unread)).await
        }
        Job::Proxy(job) => {
            let remote = *c
                .remote
                .get_or_insert_with(|| c.socket.peer_addr().map(|a| a.ip()));
            let ex = proxy::Exchange {
                persistence,
                body,
                body_timeout: c.limits.body_timeout,
                send_timeout: c.limits.send_timeout,
                max_head: c.max_head,
                read_timeout: job.route.config.read_timeout,
            };
            let client = proxy::Client {
                draining: c.draining,
                date: c.date,
                https: c.socket.is_tls(),
                headers: c.headers,
                added: job.added.as_ref(),
                gzip: job
                    .route
                    .config
                    .gzip
                    .as_ref()
                    .map(|config| proxy::Compression {
                        config,
                        accepted: job.gzip,
                        weak_validator: job.weak_validator,
                    }),
                socket: c.socket,
                input: c.input,
                out: c.out,
                remote,
            };
            let ended =
                Recycled::new(proxy::serve(&job, client, ex, c.upstreams, c.readiness)).await;
            // Its buffers serve the shard's next proxied request.
            crate::handlers::proxy::recycle(job);
            ended
        }
    }
}

/// The client socket as a file response's sink: sendfile on plain TCP,
/// `Socket::write_all` (encrypting) on TLS.
struct SocketSink<'a> {
    socket: &'a mut Socket,
    /// Longest stall writing (send-timeout).
    timeout: Duration,
}

impl Sink for SocketSink<'_> {
    fn sendfile_fd(&mut self) -> Option<RawFd> {
        self.socket.sendfile_fd()
    }

    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.socket.write_all(buf, self.timeout).await
    }

    async fn room(&mut self, stalled: std::time::Instant) -> Option<std::io::Result<()>> {
        if !self.socket.non_blocking() {
            return None;
        }
        Some(self.socket.ready(false, true, stalled + self.timeout).await)
    }
}
