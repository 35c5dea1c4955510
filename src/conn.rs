//! One connection on a shard: moves bytes between the socket and the HTTP
//! session, applies the timeouts the session asks for, and closes cleanly.
//! A connection to an HTTPS address first completes its TLS handshake
//! (`accept_tls`) within `header-timeout`.
//!
//! Everything HTTP lives in `http::session`; this file must stay a thin
//! driver: read, process, write what is committed, repeat. A job a handler
//! left (a file, a proxied exchange) runs through `job::run`, whatever its
//! kind. Every exchange, whoever answered it, ends in `finish`: its
//! access-log line and its counts.

use std::cell::Cell;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::access_log::AccessLogger;
use crate::handlers::Job;
use crate::http::exchange::{After, Record, Tally};
use crate::http::log::Entry;
use crate::http::response::write_error;
use crate::http::session::{
    Context, InputBuffer, Next, Pending, RequestLog, Session, Wait, INITIAL_INPUT,
};
use crate::http::status::Status;
use crate::job::{self, JobConn};
use crate::listener::Scheme;
use crate::metrics::TlsFailure;
use crate::proxy_protocol;
use crate::state::{ConnKey, Shard, Site, Starting};
use crate::tls::{self, TlsSite};
use crate::transport::{Room, Socket};

/// How long a closing connection keeps reading what the client still sends,
/// so that unread data does not turn our FIN into a reset that destroys the
/// response in flight (nginx's lingering close).
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// The longest a closing connection lingers while the client has not taken
/// all of its response yet, and the longest a body whose response went
/// first is read past (nginx's `lingering_time`, which bounds both).
pub const LINGER_MOST: Duration = Duration::from_secs(30);

/// The longest a connection refused at `max-connections` waits for its
/// request's first bytes before its 503 (a HEAD's has no body): short, as
/// it holds one of the few refusals' places.
const REFUSAL_READ: Duration = Duration::from_secs(1);

/// Output buffer capacity a waiting connection keeps; a pipelined burst may
/// have grown it to `MAX_BATCH` and more.
pub const IDLE_OUTPUT: usize = 4096;

/// Serve one accepted connection until it closes; `scheme` says whether it
/// came to an HTTPS address; `starting` counted it as taken until its task
/// ran.
pub async fn serve(mut client: Socket, scheme: Scheme, shard: Rc<Shard>, starting: Starting) {
    // Counted as taken until here; from here by its registration (or not
    // at all, refused).
    drop(starting);
    let first_site = shard.site();
    let limits = first_site.limits;
    // TCP_NODELAY comes with the socket, from its listener (`listener::prepare`).
    // Every way in makes it non-blocking too: the direct recv could do
    // without (MSG_DONTWAIT), a static file's sendfile could not.
    debug_assert!(
        socket2::SockRef::from(&client)
            .nonblocking()
            .unwrap_or(false),
        "a blocking connection socket"
    );

    if shard.at_capacity() && !shard.reclaim_idle() {
        shard.count(|s| s.refused += 1);
        if let Some(held) = shard.refusal_lines().admit(Instant::now()) {
            log::warn!(
                "shard {}: max-connections ({}) reached, none of them idle to close: a new connection refused (503, or closed over HTTPS){held}",
                shard.id(),
                limits.max_connections
            );
        }
        // A TLS client could not read a plain 503: it is only closed; so is
        // one past the 503s under way (each holds a descriptor).
        let Some(_refusal) = (scheme == Scheme::Http).then(|| shard.refusal()).flatten() else {
            return;
        };
        // The request's first bytes, waited for briefly (they most often
        // came with the connection): a HEAD gets the 503 without a body,
        // and the log line names the request.
        let mut scratch = InputBuffer::new(INITIAL_INPUT);
        let first = scratch.spare();
        let wait = limits.header_timeout.min(REFUSAL_READ);
        let seen = client
            .read(&mut *first, Instant::now() + wait)
            .await
            .unwrap_or(0);
        // Behind a balancer that speaks the PROXY protocol, its header
        // comes first: the request follows it, and the client is the one
        // it names (when the balancer is trusted).
        let (head, known) = match proxy_protocol::parse(&first[..seen]) {
            Ok(Some(h)) if !first_site.proxy_protocol.is_empty() => {
                let trusted = client
                    .peer_addr()
                    .is_some_and(|a| first_site.proxy_protocol.iter().any(|n| n.contains(a.ip())));
                (
                    &first[h.len..seen],
                    trusted.then(|| h.source.map(|a| a.ip())),
                )
            }
            _ => (&first[..seen], None),
        };
        let mut out = Vec::new();
        let head_only = head.starts_with(b"HEAD ");
        write_error(
            &mut out,
            shard.date(),
            Status::SERVICE_UNAVAILABLE,
            head_only,
        );
        if client.write_all(&out, limits.send_timeout).await.is_ok() {
            // Counted and logged as any response, its request as far as
            // it was read (a line without one when nothing was, as for a
            // request that did not parse).
            let log = ConnLog::of(&shard, &client, known);
            finish(
                &shard,
                log.as_ref(),
                &Record::refusal(head, &out, seen as u64),
            );
            // The rest of the request is unread: linger so the 503 is not
            // reset away; not past LINGER_TIME, as refusals are bounded in
            // number.
            Box::pin(client.linger_close(scratch.spare(), LINGER_TIME, LINGER_TIME)).await;
        }
        return;
    }
    let key = shard.register(client.fd());
    let _registration = Registration { shard: &shard, key };
    let mut input = InputBuffer::new(limits.max_header_bytes as usize);
    let mut head_deadline: Option<Instant> = None;
    // The end of the reading of a body whose response went already (a
    // route that does not read it), at most `LINGER_MOST` after it began,
    // as nginx's `lingering_time` bounds its discard: a byte each
    // body-timeout held the connection for as long as the client liked,
    // and `max-connections` could not close it for room (probe D).
    let mut discard_deadline: Option<Instant> = None;
    // The client's address, once known (`Some`): read for the PROXY
    // protocol's test, or named by the load balancer that passed the
    // connection on (`Some(None)`: the balancer's own check).
    let asked = !first_site.proxy_protocol.is_empty();
    let peer = asked.then(|| client.peer_addr().map(|a| a.ip())).flatten();
    let balanced = peer.is_some_and(|ip| first_site.proxy_protocol.iter().any(|n| n.contains(ip)));
    // Only that test holds the site: a connection must not keep a
    // reloaded-away site (its routes, its router) alive for its lifetime.
    drop(first_site);
    let mut known: Option<Option<IpAddr>> = asked.then_some(peer);
    if balanced {
        // The header, the handshake and the first request's head share
        // header-timeout.
        let deadline = Instant::now() + limits.header_timeout;
        let header = Box::pin(read_proxy_header(
            &shard,
            key,
            &mut client,
            &mut input,
            deadline,
        ));
        let Some(source) = header.await else { return };
        known = Some(source.or(peer));
        head_deadline = Some(deadline);
    }
    // As accept gave it; where it gave none (glommio's accept, on a shard
    // without a ring), a system call: made when the log needs it, else when
    // the first proxied request does (`Some` once known).
    let conn_log = ConnLog::of(&shard, &client, known);
    let mut remote: Option<Option<IpAddr>> = conn_log.as_ref().map(|l| l.remote).or(known);
    let log = conn_log.as_ref().map(|l| l as &dyn RequestLog);
    let mut session = Session::default();
    let mut out: Vec<u8> = Vec::with_capacity(512);
    // The TLS settings this connection started with: a reload gives new
    // connections new certificates, this one keeps its HSTS header too.
    let mut tls_site: Option<Rc<TlsSite>> = None;
    if scheme == Scheme::Https {
        // No certificates (a reload dropped them): nothing to offer.
        let Some(site) = shard.tls() else { return };
        // The handshake and the first request's head share header-timeout.
        let deadline = head_deadline.unwrap_or_else(|| Instant::now() + limits.header_timeout);
        // Boxed, as every lingering close below: the connection's future,
        // which each idle connection keeps, is as large as the largest
        // future it awaits in place (the handshake's was 960 bytes of its
        // 2 280; bench/RESULTS.md).
        client = match Box::pin(accept_tls(
            &shard, key, client, &site, &mut input, deadline, known,
        ))
        .await
        {
            Some(c) => c,
            None => return,
        };
        head_deadline = Some(deadline);
        tls_site = Some(site);
    }
    let headers: &[u8] = tls_site.as_deref().map_or(b"", |t| &t.hsts);
    let mut served = 0;
    // When the bytes being processed arrived: service time runs from there
    // to the response written.
    let mut arrived = Instant::now();
    // What came after a PROXY protocol header in its read (a TLS start
    // took its own bytes in): the first request's, not counted yet.
    let mut bytes_in = input.data().len() as u64;
    // Whether a read has been tried on this connection yet.
    let mut read_once = false;
    // The client sent a request before it had its previous one's response
    // (nginx's `c->pipeline`): it may send more while a closing response
    // is still on its way to it.
    let mut pipelined = false;
    loop {
        // The site of this step: a reload takes effect for the next request.
        let site = shard.site();
        let limits = site.limits;
        let cx = context(&shard, key, &site, log, headers, scheme);
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
                let wrote = client.write_all(&out, limits.send_timeout).await.is_ok();
                // The responses committed before the panic went out with
                // the 500: the batch is counted with it.
                let mut panicked = Tally {
                    bytes_in: std::mem::take(&mut bytes_in),
                    bytes_out: if wrote { out.len() as u64 } else { 0 },
                    ..session.take_tally()
                };
                panicked.count_status(500);
                finish(&shard, None, &Record::counts(panicked, Some(arrived)));
                Box::pin(linger_close(&mut client, &mut input)).await;
                return;
            }
        };
        let Ok(written) = flush(&mut client, &mut out, &mut session, &limits).await else {
            return;
        };
        if session.served() != served {
            if served == 0 {
                shard.answered(key);
            }
            // Two answered in one pass, or one with the next one's bytes
            // already here (not a body being read, nor a job's body).
            let body = matches!(next, Next::Read(Wait::Body) | Next::Serve);
            let more = holds_request(input.data()) && !body;
            pipelined |= session.served() > served + 1 || more;
            served = session.served();
            head_deadline = None;
            discard_deadline = None;
        }
        // The batch just written: its responses' lines went as the session
        // wrote them; a job's request is left to the job's own record.
        let batch = Tally {
            bytes_in: std::mem::take(&mut bytes_in),
            bytes_out: written,
            ..session.take_tally()
        };
        finish(&shard, None, &Record::counts(batch, Some(arrived)));
        let wait = match next {
            Next::Serve => {
                // Not held while the job runs (a tunnel for hours): a
                // reload's old site is then let go by the shard, a few
                // routes at a time, not whole by the last holder.
                let max_head = site.session_limits.head.max_header_bytes;
                drop(site);
                // In a block of its own, and taken apart rather than
                // borrowed, so that nothing of the job outlives its run in
                // this future (what every idle connection keeps).
                let after = {
                    let Some(Pending {
                        job,
                        persistence,
                        head_only,
                        log: request,
                        body,
                        ..
                    }) = session.take_pending()
                    else {
                        return;
                    };
                    let lent = JobConn {
                        persistence,
                        head_only,
                        body,
                        socket: &mut client,
                        input: &mut input,
                        out: &mut out,
                        headers,
                        date: shard.date_cache(),
                        limits: &limits,
                        max_head,
                        remote: &mut remote,
                        upstreams: shard.upstreams(),
                        readiness: shard.readiness(),
                        draining: shard.draining_flag(),
                    };
                    let ended = job::run(job, lent).await;
                    // Timed from the bytes' arrival, like every other request.
                    let record = ended.record(request.as_ref(), arrived);
                    finish(&shard, conn_log.as_ref(), &record);
                    ended.after
                };
                match after {
                    After::Open => {
                        pipelined |= holds_request(input.data());
                        continue;
                    }
                    After::Close => {
                        close_after_response(&mut client, &mut input, pipelined).await;
                        return;
                    }
                    After::Abort => return,
                    After::Linger => {
                        Box::pin(linger_close(&mut client, &mut input)).await;
                        return;
                    }
                }
            }
            Next::Close { linger } => {
                if linger {
                    Box::pin(linger_close(&mut client, &mut input)).await;
                } else {
                    close_after_response(&mut client, &mut input, pipelined).await;
                }
                return;
            }
            Next::Write => continue,
            Next::Read(wait) => wait,
        };
        let now = Instant::now();
        let deadline = match wait {
            Wait::Idle => now + limits.keepalive_timeout,
            Wait::Body if session.body_answered() => {
                let most = *discard_deadline.get_or_insert(now + LINGER_MOST);
                most.min(now + limits.body_timeout)
            }
            Wait::Body => now + limits.body_timeout,
            Wait::Head => *head_deadline.get_or_insert(now + limits.header_timeout),
        };
        // Nothing of a request is here: between requests, or before the
        // first byte of one (a browser's preconnect, a client that connected
        // and went quiet). Nothing is in flight, so shutdown may close it at
        // once rather than wait out the drain deadline for it.
        let idle = wait == Wait::Idle;
        let quiet = idle || (wait == Wait::Head && input.data().is_empty());
        // A fresh connection is read once first: its request may be there
        // (and in an upgrade's drain, it has a grace to bring it).
        if quiet && shard.is_draining() && (idle || (read_once && shard.fresh_may_close())) {
            // A client that pipelined may send again before it has read
            // what it was sent, and meet a closed socket's reset.
            if pipelined && client.unacknowledged() > 0 {
                Box::pin(linger_close(&mut client, &mut input)).await;
            } else {
                finish_tls(&mut client).await;
            }
            return;
        }
        shard.set_idle(key, quiet);
        // Nor while it waits for a request.
        drop(site);
        let read = if deadline <= now {
            Err(std::io::ErrorKind::TimedOut.into())
        } else {
            let mut room = Reading {
                input: &mut input,
                out: &mut out,
                idle,
                body: wait == Wait::Body,
            };
            client.read(&mut room, deadline).await
        };
        shard.set_idle(key, false);
        read_once = true;
        match read {
            // The shard ended it while it waited (to make room, or a
            // drain): the end of the stream is its own (over TLS an
            // unexpected one), and it closes cleanly, as nginx does.
            Ok(0) | Err(_) if shard.was_shut(key) => {
                // What it left of a head is no fault of the client's.
                session.client_left(&[], log);
                // A drain's: a client that pipelined may send again before
                // it has read what it was sent; the close's reset must not
                // drop what is still on its way (its reading side is shut,
                // so no linger: what it sends stays unread).
                if let Some(until) = shard.drain_deadline().filter(|_| pipelined) {
                    let until = until.min(Instant::now() + LINGER_MOST);
                    Box::pin(client.until_acknowledged(LINGER_TIME, until)).await;
                }
                finish_tls(&mut client).await;
                return;
            }
            Ok(0) => {
                left(&shard, &mut session, input.data(), log);
                // Over TLS, its close_notify gets ours (a client that only
                // closed its sending side reads it as the clean end).
                finish_tls(&mut client).await;
                return;
            }
            Ok(n) => {
                input.filled(n);
                bytes_in += n as u64;
                arrived = Instant::now();
                shard.overtook_its_close(key);
                // A request on its way as the shard shut the connection:
                // served (its answer says `Connection: close`), and its
                // proxied exchange is not ended by the shutdown's end of
                // stream, as if its client had left (a 499 for a request
                // the app ran).
                if quiet && shard.was_shut(key) {
                    client.reading_was_shut();
                }
                // The first bytes of a request (none of it was here, nor
                // is its body being read), or more of a body answered and
                // logged already: what comes after it begins no sooner.
                if let Some(log) = &conn_log {
                    let begins = match wait {
                        Wait::Body => session.body_answered(),
                        _ => input.data().len() == n,
                    };
                    if begins {
                        log.begin(arrived);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                let site = shard.site();
                let cx = context(&shard, key, &site, log, headers, scheme);
                let next = session.timed_out(wait, input.data(), &mut out, &cx);
                let written = flush(&mut client, &mut out, &mut session, &limits)
                    .await
                    .unwrap_or(0);
                // The 408's line went as the session wrote it.
                let tally = Tally {
                    bytes_out: written,
                    ..session.take_tally()
                };
                finish(&shard, None, &Record::counts(tally, None));
                // Idle past keepalive-timeout, or silent since it came: a
                // clean end. A 408 lingers as any error does: a client
                // still sending would otherwise get a reset, which can
                // destroy the 408 before it is read.
                match next {
                    Next::Close { linger: true } => {
                        Box::pin(linger_close(&mut client, &mut input)).await;
                    }
                    _ => finish_tls(&mut client).await,
                }
                return;
            }
            Err(_) => {
                left(&shard, &mut session, input.data(), log);
                return;
            }
        }
    }
}

/// Where a connection reads its requests: the input buffer, which gives
/// back what a burst made it (and the output) grow to when an idle
/// connection has to wait.
struct Reading<'a> {
    input: &'a mut InputBuffer,
    out: &'a mut Vec<u8>,
    idle: bool,
    /// A request body is being read: a buffer's worth at a time.
    body: bool,
}

impl Room for Reading<'_> {
    fn room(&mut self) -> &mut [u8] {
        if self.body {
            self.input.body_room()
        } else {
            self.input.spare()
        }
    }

    /// Idle connections are the many, and they should cost little (the
    /// buffers grow again with the next burst).
    fn before_wait(&mut self) {
        if self.idle {
            self.input.shrink();
            if self.out.capacity() > IDLE_OUTPUT {
                self.out.shrink_to(IDLE_OUTPUT);
            }
        }
    }
}

/// Write the committed part of `out` and drop it from the buffer; returns
/// the bytes written.
async fn flush(
    client: &mut Socket,
    out: &mut Vec<u8>,
    session: &mut Session<Job>,
    limits: &crate::config::Limits,
) -> std::io::Result<u64> {
    let n = session.committed();
    if n == 0 {
        return Ok(0);
    }
    client.write_all(&out[..n], limits.send_timeout).await?;
    out.drain(..n);
    session.written(n);
    Ok(n as u64)
}

/// Whether `input` holds the start of a request: more than the blank lines
/// some clients send after a body (which the next request's parse skips).
fn holds_request(input: &[u8]) -> bool {
    input.iter().any(|&b| b != b'\r' && b != b'\n')
}

/// Half-close, then read and discard until the client closes too: for
/// `LINGER_TIME`, and on while it has not taken all of the response, up to
/// `LINGER_MOST` (`Socket::linger_close`).
async fn linger_close(client: &mut Socket, input: &mut InputBuffer) {
    input.consume(input.data().len());
    client
        .linger_close(input.spare(), LINGER_TIME, LINGER_MOST)
        .await;
}

/// End a connection after its last response, as the server decided (HTTP/1.0,
/// `Connection: close`, an error, a drain): lingering if the client sent
/// more while the response went (a pipelined request, its TLS close_notify
/// once it had sent its request), or has pipelined on this connection
/// (`pipelined`: it may send the next request before it reads this
/// response, as apt does), which a plain close would turn into a reset
/// that destroys the response's unread end at the client; else cleanly.
/// nginx's `lingering_close on` decides the same way, when it closes.
async fn close_after_response(client: &mut Socket, input: &mut InputBuffer, pipelined: bool) {
    // Read already or not, what it sent says it may send more.
    if pipelined || !input.data().is_empty() || client.unread_in_kernel() {
        Box::pin(linger_close(client, input)).await;
    } else {
        finish_tls(client).await;
    }
}

/// End a connection that closes cleanly: over TLS, close_notify first
/// (within `CLOSE_NOTIFY_TIME`), so that a client tells a body that ends at
/// the close from one cut short, as nginx's clients can; plain TCP's FIN
/// says it already. Boxed, as the lingering close, to keep it off the
/// future every idle connection keeps.
async fn finish_tls(client: &mut Socket) {
    if client.is_tls() {
        let _ = Box::pin(client.shutdown_write()).await;
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
fn context<'a>(
    shard: &Shard,
    key: ConnKey,
    site: &'a Site,
    log: Option<&'a dyn RequestLog>,
    headers: &'a [u8],
    scheme: Scheme,
) -> Context<'a, Job> {
    Context {
        limits: &site.session_limits,
        date: shard.date(),
        // A connection the shard shut while its request was on the way
        // (to make room, or a drain) says it closes after it.
        draining: shard.is_draining() || shard.was_shut(key),
        handler: site.router(scheme),
        log,
        headers,
    }
}

/// The start of a connection to an HTTPS address, by `deadline`: its first
/// bytes must begin a TLS handshake record — plain HTTP gets nginx's 400
/// and a close — then the handshake. None: the connection is over (a
/// malformed or truncated hello, a timeout, a client that left), and only
/// this one.
async fn accept_tls(
    shard: &Shard,
    key: ConnKey,
    mut client: Socket,
    site: &TlsSite,
    input: &mut InputBuffer,
    deadline: Instant,
    known: Option<Option<IpAddr>>,
) -> Option<Socket> {
    // Nothing has arrived yet (but a PROXY protocol header): a drain may
    // close it at once.
    let read = if input.data().is_empty() {
        shard.set_idle(key, true);
        let read = client.read(input, deadline).await;
        shard.set_idle(key, false);
        read.inspect(|&n| input.filled(n))
    } else {
        Ok(input.data().len())
    };
    let n = match read {
        Ok(n @ 1..) => n,
        // A client that never said hello: one silent until the timeout is
        // counted; one that closed at once is not (a load balancer's TCP
        // check, a browser's unused preconnect), nor what a drain closes.
        Err(e) => {
            let why = TlsFailure::of(&e);
            if why == TlsFailure::Timeout && !shard.is_draining() {
                shard.count(|s| s.tls_failures[why as usize] += 1);
            }
            return None;
        }
        Ok(_) => return None,
    };
    // The handshake's bytes are not counted (received bytes are what the
    // requests carried, as sent bytes are what the responses did).
    if !tls::is_tls_record(input.data()[0]) {
        let out = tls::plain_http_refusal(&shard.date());
        let limits = shard.site().limits;
        let bytes_in = n as u64;
        if client.write_all(&out, limits.send_timeout).await.is_err() {
            let gone = Tally {
                bytes_in,
                ..Tally::default()
            };
            finish(shard, None, &Record::counts(gone, None));
            return None;
        }
        // Logged as nginx logs it: its request line, when what came
        // begins with one, to find the client that has the wrong scheme.
        let refusal = Record::refusal(input.data(), &out, bytes_in);
        finish(shard, ConnLog::of(shard, &client, known).as_ref(), &refusal);
        linger_close(&mut client, input).await;
        return None;
    }
    // Only for the debug line a failure gets: a getpeername(2), where
    // accept gave no address, saved on every handshake otherwise.
    let peer = log::log_enabled!(log::Level::Debug)
        .then(|| client.peer_addr())
        .flatten();
    // What arrived with the first read (often the whole hello) is read
    // at the start: a malformed hello fails there.
    let done = match client.start_tls(site.config.clone(), input.data()) {
        Ok(mut client) => {
            input.consume(input.data().len());
            client.handshake(deadline).await.map(|()| client)
        }
        Err(e) => Err(e),
    };
    done.inspect_err(|e| {
        // Counted, and for who looks closer (RUST_LOG=debug) said with its
        // cause: nginx logs these at its info level, below the default.
        let why = TlsFailure::of(e);
        shard.count(|s| s.tls_failures[why as usize] += 1);
        let peer = peer.map_or_else(|| "?".into(), |a| a.to_string());
        log::debug!("TLS handshake with {peer} failed ({}): {e}", why.name());
    })
    .ok()
}

/// Read the PROXY protocol header a load balancer sends first: the client's
/// address it gives (`Some(None)` for the balancer's own connection), the
/// bytes after it left in `input`. `None` when the connection is to close:
/// it sent something else, or nothing whole by `deadline` (nginx closes
/// such a connection too, and says so in its error log).
async fn read_proxy_header(
    shard: &Shard,
    key: ConnKey,
    client: &mut Socket,
    input: &mut InputBuffer,
    deadline: Instant,
) -> Option<Option<IpAddr>> {
    loop {
        let why = match proxy_protocol::parse(input.data()) {
            Ok(Some(header)) => {
                input.consume(header.len);
                return Some(header.source.map(|a| a.ip()));
            }
            // At most `V2_MAX` bytes are waited for: a longer header is
            // refused by its parse.
            Ok(None) => {
                // Nothing of it yet: a drain may close it at once.
                let idle = input.data().is_empty();
                shard.set_idle(key, idle);
                let read = client.read(input, deadline).await;
                shard.set_idle(key, false);
                match read {
                    Ok(n @ 1..) => {
                        input.filled(n);
                        continue;
                    }
                    // Closed at once (a TCP health check): nothing to say.
                    Ok(_) if idle => return None,
                    Ok(_) => "closed before the header ended".to_string(),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        "no whole header within header-timeout".to_string()
                    }
                    Err(_) => return None,
                }
            }
            Err(e) => e.to_string(),
        };
        // A drain that closed it mid-header: nothing the balancer did.
        if shard.is_draining() {
            return None;
        }
        shard.count(|s| s.proxy_protocol_failures += 1);
        if let Some(held) = shard.proxy_protocol_lines().admit(Instant::now()) {
            let peer = client
                .peer_addr()
                .map_or_else(|| "?".into(), |a| a.to_string());
            log::warn!(
                "shard {}: connection from {peer} (listed in server.proxy-protocol) closed: {why}{held}",
                shard.id()
            );
        }
        return None;
    }
}

/// The client closed or reset the connection while it was read: the
/// request it left unfinished is logged and counted (`Session::client_left`).
fn left(shard: &Shard, session: &mut Session<Job>, unread: &[u8], log: Option<&dyn RequestLog>) {
    session.client_left(unread, log);
    let tally = session.take_tally();
    if tally.error.is_some() {
        finish(shard, None, &Record::counts(tally, None));
    }
}

/// Where every exchange of a connection ends, whoever answered it (the
/// session, a job, the connection itself): the record's access-log line,
/// when it has one and logging is on, and its counts and service time on
/// the shard. The one place a connection logs or counts an exchange.
fn finish(shard: &Shard, log: Option<&ConnLog>, record: &Record<'_>) {
    if let (Some(log), Some(entry)) = (log, record.entry) {
        log.write(entry);
    }
    let tally = &record.tally;
    if let (Some(arrived), n @ 1..) = (record.arrived, tally.requests) {
        let ended = record.switched.unwrap_or_else(Instant::now);
        let us = ended.saturating_duration_since(arrived).as_micros() as u64;
        shard.metrics().record_latency(us, n);
    }
    // A log line alone (a fixed response's: its counts come with the batch).
    if *tally != Tally::default() {
        shard.count(|s| s.add_tally(tally));
    }
}

/// The access log as one connection writes to it: the shard's logger and
/// the client's address.
struct ConnLog<'a> {
    /// The shard the session's own lines are finished on.
    shard: &'a Shard,
    logger: Rc<AccessLogger>,
    remote: Option<IpAddr>,
    /// When the request being answered began: its first byte read, or
    /// the end of the request before it when it came with that one's bytes
    /// (its line written; the last read of its body, when it was answered
    /// and logged before its body came): nginx starts a pipelined
    /// request's clock there too. Its line's `request_time` runs from here.
    began: Cell<Instant>,
}

impl<'a> ConnLog<'a> {
    /// The log as `client`'s connection writes to it, when logging is on
    /// (the client's address, where accept gave none, costs a system call,
    /// made only then).
    fn of(shard: &'a Shard, client: &Socket, known: Option<Option<IpAddr>>) -> Option<ConnLog<'a>> {
        let logger = shard.access_log()?;
        Some(ConnLog {
            shard,
            logger,
            remote: known.unwrap_or_else(|| client.peer_addr().map(|a| a.ip())),
            began: Cell::new(Instant::now()),
        })
    }

    /// Write one line, with the client's address and how long its
    /// request took.
    fn write(&self, mut entry: Entry<'_>) {
        entry.remote = self.remote;
        let now = Instant::now();
        entry.request_time = Some(now.saturating_duration_since(self.began.get()));
        self.logger.record(&entry);
        // What comes next and is here already begins now; a read that
        // brings the first byte of one begins it then (`begin`).
        self.began.set(now);
    }

    /// The next request begins at `at`.
    fn begin(&self, at: Instant) {
        self.began.set(at);
    }
}

impl RequestLog for ConnLog<'_> {
    /// A line the session wrote with its response: finished like every
    /// record (its counts come with the batch).
    fn record(&self, entry: Entry<'_>) {
        finish(self.shard, Some(self), &Record::line(entry));
    }
}
