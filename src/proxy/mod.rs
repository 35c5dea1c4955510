//! The reverse proxy's asynchronous half: one client request forwarded to a
//! server of an upstream group and its response streamed back.
//!
//! The handler (`handlers::proxy`) has already copied the request head; the
//! connection runs the job (`job::run`), which calls `serve` with the
//! session's body decoder, and records the `Ended` it returns like any
//! other exchange's. The request body
//! goes up and the response body comes down as they arrive, re-framed, one
//! buffer at a time: a slow client slows the upstream read and a slow
//! upstream the client read, and nothing is held whole. Each shard keeps
//! its own connections to each server (`pool`).
//!
//! Failures (nginx's `proxy_next_upstream error timeout` with its rules for
//! non-idempotent requests, but for read timeouts): no connection (refused,
//! or none within connect-timeout) → the next server, whatever the method;
//! a reset or close after the request went out but before any byte of a
//! response → the next server for idempotent methods whose body was not
//! consumed, unless it is the second such close (`MAX_DROPPED`: a request
//! that crashes app processes takes down two of them, not each in turn: a
//! pooled connection's close, maybe the keep-alive race's, is tried again
//! on the same server, and counts when that server then refuses); never
//! after a
//! response byte. A server silent for read-timeout
//! is not tried again on another (504): the request may be what makes it
//! slow, and a retry would double the client's wait. 502 for a failed or
//! bad upstream, 504 for a timeout, 503 when no server is usable.

pub mod buffers;
mod pool;
mod relay;
mod request;
mod response;
mod send;
mod tunnel;
mod upload;

pub use pool::{Rest, Server, Upstreams};
pub use response::Compression;

use relay::{read_head, relay, Fault, HeadEnd};
use send::{send_request, Back};

use std::cell::Cell;
use std::io;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::handlers::proxy::ProxyJob;
use crate::http::body::BodyDecoder;
use crate::http::date::DateCache;
use crate::http::error::{status_for, ParseError};
use crate::http::exchange::{After, Ended, Tally};
use crate::http::log::UpstreamLog;
use crate::http::parse::{Method, Version};
use crate::http::response::{AddedHeaders, Persistence, ResponseWriter};
use crate::http::session::InputBuffer;
use crate::http::status::Status;
use crate::http::upstream::Asked;
use crate::readiness::Readiness;
use crate::transport::Socket;

/// Upstream response bytes read at once, and how much of the client's
/// response is gathered before it is written.
const CHUNK: usize = 16 << 10;
/// Most header fields accepted in an upstream's response head (more is a
/// 502): as many as `max-headers` may allow a request.
const MAX_RESPONSE_FIELDS: usize = crate::http::parse::MAX_HEADERS_LIMIT;
/// Most servers one request is tried on.
const MAX_TRIES: usize = 8;
/// Most servers one request reaches that close on it without an answer:
/// past two, the request is most likely what ends them (an app process
/// that crashes on it), and each retry would take another instance down.
/// A pooled connection's close that gets the keep-alive race's own try
/// does not count, unless that try finds the server refusing.
const MAX_DROPPED: usize = 2;

/// How long a request an app's instance dropped twice waits for that
/// instance's exit to be heard (`Upstreams::until_unlisted`): its process
/// reaped, its group awaited (200 ms at least), the manager and the master
/// told; a loaded machine, or an app behind `npm start`, takes longer.
const EXIT_NOTICE: Duration = Duration::from_secs(2);
/// Most body bytes read off the socket to discard a body no server took
/// (`discard_if_here`): a small form's or JSON's rest, not an upload.
const DISCARD_MOST: u64 = 64 << 10;
/// How soon after an attempt on a pooled connection began its close must
/// come to be the keep-alive race's (the server closed it idle as the
/// request went, which shows within a round trip): later, the server died
/// or dropped the request while it had it, a failure like any other.
const RACE_WINDOW: Duration = Duration::from_millis(500);

/// The client's side of the exchange, lent by its connection.
pub struct Client<'a> {
    /// The client's socket.
    pub socket: &'a mut Socket,
    /// What was read from it and not yet used: the start of the body, and
    /// maybe pipelined requests after it (left for the connection).
    pub input: &'a mut InputBuffer,
    /// Output buffer, empty at the start.
    pub out: &'a mut Vec<u8>,
    /// The client's address.
    pub remote: Option<IpAddr>,
    /// The client came over TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// Header lines every response to this client carries
    /// (`Strict-Transport-Security` over TLS), unless the upstream sent its
    /// own; usually empty.
    pub headers: &'a [u8],
    /// The fields the route adds to each response, each unless the
    /// upstream sent a field of its name.
    pub added: Option<&'a Rc<AddedHeaders>>,
    /// The route's compression (`gzip`), and whether this request takes
    /// it: a response it covers says `Vary`, and is compressed if so.
    pub gzip: Option<Compression<'a>>,
    /// The shard's shutdown flag: a response that begins once it is set
    /// says `Connection: close` (the connection will not serve another).
    pub draining: &'a Cell<bool>,
    /// The shard's `Date`, read as each response head is written: an
    /// upstream may answer long after the request came (RFC 9110 §6.6.1:
    /// the time the message was made; a cache ages it from there).
    pub date: &'a DateCache,
}

/// What the session decided for this exchange, and the limits that apply.
pub struct Exchange {
    /// What the response says about the connection.
    pub persistence: Persistence,
    /// The request body still to read, if there is one.
    pub body: Option<BodyDecoder>,
    /// Longest wait between two reads of the request body.
    pub body_timeout: Duration,
    /// Longest stall writing to the client.
    pub send_timeout: Duration,
    /// Largest head accepted, also from an upstream.
    pub max_head: usize,
    /// The route's own `read-timeout`, over the group's; None: the group's.
    pub read_timeout: Option<Duration>,
}

impl Exchange {
    /// Longest silence while waiting for the response: the route's, else
    /// the group's.
    pub fn read_timeout(&self, cfg: &crate::config::UpstreamConfig) -> Duration {
        self.read_timeout.unwrap_or(cfg.read_timeout)
    }
}

/// How the exchange went, as it is worked out along the way; `ended` makes
/// the `Ended` every job reports.
#[derive(Default)]
struct Served {
    /// Status sent to the client; 499 when the client went away first
    /// (nginx's convention), 0 when nothing was sent.
    pub status: u16,
    /// Body bytes sent to the client.
    pub body_bytes: u64,
    /// Bytes written to the client.
    pub bytes_out: u64,
    /// Bytes the exchange read from the client's socket (the connection
    /// counted those it read before).
    pub bytes_in: u64,
    /// The rule the client's body broke, if it broke one (a 400, 408, 413).
    pub error: Option<ParseError>,
    /// When the exchange became a tunnel, if it did.
    pub switched: Option<Instant>,
    /// The client connection can take its next request.
    pub keep_alive: bool,
    /// Close with a lingering close (the client may still be sending).
    pub linger: bool,
    /// The response was cut short after it began: the connection ends
    /// without TLS's close_notify (`After::Abort`).
    pub cut: bool,
    /// The last server tried, its status (0: none) and the time its
    /// attempt took.
    pub upstream: Option<(Rc<Server>, u16, Duration)>,
    /// The servers that failed before it, with the time each attempt took
    /// (empty, unallocated, unless the request was tried again).
    pub failed: Vec<(Rc<str>, Duration)>,
    /// No server of the group could be tried (a 503): its name, which the
    /// access log gives as the upstream, as nginx's "no live upstreams"
    /// line gives the upstream's.
    pub unavailable: Option<Rc<str>>,
}

/// How one attempt at a server failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No connection: nothing was sent.
    Connect,
    /// Connecting or waiting for the response took too long.
    Timeout,
    /// Closed or reset after the request went out, before any response byte.
    Reset,
    /// An invalid or oversized response head, or one cut short: why.
    Bad(relay::BadHead),
    /// This process could not make a connection at all (out of
    /// descriptors or memory): nothing the server did, so not held
    /// against it, and no other server is tried (each would fail alike).
    Local,
}

impl std::fmt::Display for Failure {
    /// As the log says it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Failure::Connect => "no connection",
            Failure::Timeout => "no response in time",
            Failure::Reset => "closed or reset before any response",
            Failure::Bad(why) => return write!(f, "{why}"),
            Failure::Local => "no connection could be made here",
        })
    }
}

impl Failure {
    fn status(self) -> Status {
        match self {
            Failure::Timeout => Status::GATEWAY_TIMEOUT,
            // As nginx answers a socket(2) that failed.
            Failure::Local => Status::INTERNAL_SERVER_ERROR,
            _ => Status::BAD_GATEWAY,
        }
    }
}

/// Why an exchange ended early on the client's side.
enum ClientEnd {
    /// The client closed or its socket failed.
    Gone,
    /// Its body broke a rule or timed out: answer with this and close.
    Refused(ParseError),
}

/// What one read of the request body off the client's socket came to: its
/// bytes, now in the client's input, or how the client's side ended (it
/// closed or failed; or it was silent for `body-timeout`, a 408).
fn body_read(c: &mut Client<'_>, read: io::Result<usize>) -> Result<usize, ClientEnd> {
    match read {
        Ok(0) => Err(ClientEnd::Gone),
        Ok(n) => {
            c.input.filled(n);
            Ok(n)
        }
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            Err(ClientEnd::Refused(ParseError::BodyTimeout))
        }
        Err(_) => Err(ClientEnd::Gone),
    }
}

/// Forward `job` to its upstream group and stream the answer back: a job's
/// run (see `job`), reported as every job reports its exchange.
pub async fn serve(
    job: &ProxyJob,
    c: Client<'_>,
    ex: Exchange,
    upstreams: &Upstreams,
    readiness: Option<&Rc<Readiness>>,
) -> Ended {
    forward(job, c, ex, upstreams, readiness).await.ended()
}

impl Served {
    /// The exchange as the connection records it.
    fn ended(self) -> Ended {
        let mut tally = Tally {
            requests: 1,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            error: self.error,
            ..Tally::default()
        };
        // A client that left got no response: its 499 is the log's, not a
        // status sent.
        if self.status != 499 {
            tally.count_status(self.status);
        }
        Ended {
            status: self.status,
            body_bytes: self.body_bytes,
            upstream: match (self.upstream, self.unavailable) {
                (Some((server, status, time)), _) => Some(UpstreamLog {
                    addr: server.label.clone(),
                    status,
                    time,
                    failed: self.failed,
                }),
                (None, Some(group)) => Some(UpstreamLog {
                    addr: group,
                    status: 0,
                    time: Duration::ZERO,
                    failed: Vec::new(),
                }),
                (None, None) => None,
            },
            tally,
            after: match (self.keep_alive, self.linger, self.cut) {
                (_, _, true) => After::Abort,
                (true, _, _) => After::Open,
                (false, true, _) => After::Linger,
                (false, false, _) => After::Close,
            },
            switched: self.switched,
        }
    }
}

/// The exchange itself: servers tried in turn, the answer relayed.
async fn forward(
    job: &ProxyJob,
    mut c: Client<'_>,
    ex: Exchange,
    upstreams: &Upstreams,
    readiness: Option<&Rc<Readiness>>,
) -> Served {
    let ProxyJob { head, route, .. } = job;
    let mut served = Served::default();
    let Some(mut group) = upstreams.group(&route.config.upstream) else {
        // Only when a reload removed the group under a request of the
        // previous routes. As for any 503: a body not read whole closes
        // the connection, lingering so that the answer is not lost.
        upstreams.unavailable(&route.config.upstream, None, Instant::now());
        served.unavailable = Some(route.config.upstream.as_str().into());
        let mut body = ex.body.clone();
        served.bytes_in += discard_if_here(&mut body, &mut c);
        served.keep_alive = body.as_ref().is_none_or(BodyDecoder::is_done);
        served.linger = !served.keep_alive;
        reply(
            &mut c,
            &ex,
            &mut served,
            head.is_head(),
            Status::SERVICE_UNAVAILABLE,
        )
        .await;
        return served;
    };
    if group.servers.is_empty() && !c.draining.get() {
        // An app with no instance ready: each is starting again (one
        // request crashed them all, or the only one). The request waits
        // for one, at most connect-timeout (a connect to a server slow to
        // accept waits as long), as cluster's master holds its connections
        // while it forks workers anew, rather than a 503 for the moment
        // they take to start. Not in a drain: none starts again then.
        let until = Instant::now() + group.config.connect_timeout;
        let listed = upstreams.until_listed(&route.config.upstream, until);
        match c.socket.unless_closed(listed).await {
            None => return client_gone(served, None),
            Some(Some(g)) => group = g,
            // None in time, or the group gone with a reload: its 503.
            Some(None) => {}
        }
    }
    let cfg = &group.config;
    let client = match cfg.balance {
        crate::config::Balance::IpHash => request::hashed_client(head, &route.config, c.remote),
        _ => c.remote,
    };
    let target = route.upstream_target(head);
    let upgrade = request::upgrade_wanted(head).filter(|_| route.config.upgrade);
    let idempotent = matches!(
        head.method,
        Method::Get | Method::Head | Method::Put | Method::Delete | Method::Options | Method::Trace
    );
    let asked = Asked {
        head: head.is_head(),
    };
    let mut body = ex.body.clone();
    let (read, held) = upload::hold(
        &mut c,
        &body,
        head.body,
        cfg.request_buffer,
        ex.body_timeout,
    )
    .await;
    served.bytes_in += read;
    let framing = match held {
        Ok(framing) => framing,
        Err(ClientEnd::Gone) => return client_gone(served, None),
        Err(ClientEnd::Refused(e)) => {
            served.error = Some(e);
            served.linger = true;
            served.keep_alive = false;
            c.added = None;
            reply(&mut c, &ex, &mut served, asked.head, status_for(e)).await;
            return served;
        }
    };
    let mut body_started = false;
    // Servers tried, up to `MAX_TRIES` (nginx tries each server once).
    let mut tried = [usize::MAX; MAX_TRIES];
    let mut attempts = 0;
    let mut last: Option<(Rc<Server>, Failure)> = None;
    // The server of the last attempt `served.failed` lists: the log's own
    // entry at the end, whatever `last` says (a keep-alive race's attempt
    // is listed but is no failure).
    let mut listed: Option<Rc<Server>> = None;
    // A pooled connection the server had closed (its keep-alive timeout
    // racing our request) is no failure of the server's: an idempotent
    // request gets one more try, which goes to the same server, on a
    // new connection (nginx gives a cached connection's error a try of
    // its own too). Once per request: `stale` is the server whose pooled
    // connection that was (its pool is passed by) and the attempt that
    // tries again (no retry after a failure).
    let mut stale: Option<(usize, usize)> = None;
    // That try on the same server was given: never twice, even once the
    // server has left the group (which forgets `stale`).
    let mut same_spent = false;
    // Servers that took the request and closed without a word.
    let mut dropped = 0;
    let mut up_out = buffers::take(0);
    let mut now = Instant::now();
    let began = now;
    let mut first = true;
    // The last try was refused by an app's instance, most likely exiting:
    // the request may wait for its successor once no server is left.
    let mut exiting = false;
    // The last try was dropped by an app's instance whose own try on a new
    // connection is spent: exiting, if its exit is heard soon.
    let mut dropped_by: Option<Rc<Server>> = None;
    // The servers a try is picked from: the group as the request found it,
    // or as it is at a retry, when an update came meanwhile (the settings
    // stay the request's own, `cfg`).
    let mut servers = group.clone();

    while attempts < MAX_TRIES {
        // The clock is read once per attempt and once at its end: a dozen
        // reads per proxied request were 2.7 % of its CPU
        // (bench/RESULTS.md).
        if !first {
            now = Instant::now();
            // A retry goes to the group as it is now: an app's rolling
            // reload that stopped the server that failed (at its
            // drain-timeout, the request still open) may have stopped its
            // siblings of the request's time too, and started the servers
            // the request can go to. The servers tried stay tried.
            if let Some(current) = upstreams
                .group(&route.config.upstream)
                .filter(|g| !Rc::ptr_eq(g, &servers))
            {
                let same = |i: usize| {
                    let old = servers.servers.get(i)?;
                    current.servers.iter().position(|s| Rc::ptr_eq(s, old))
                };
                for t in &mut tried[..attempts] {
                    *t = same(*t).unwrap_or(usize::MAX);
                }
                stale = stale.and_then(|(s, at)| Some((same(s)?, at)));
                servers = current;
            }
        }
        first = false;
        // The keep-alive race's own try goes to the same server, on a new
        // connection: a server that closed an idle connection is well, and
        // one that refuses the new one died with the request (its close
        // was no race: counted as a drop below), so that a request that
        // crashes app processes does not take a third down.
        let again = stale
            .filter(|&(_, at)| at == attempts)
            .and_then(|(s, _)| Some((s, servers.servers.get(s)?.clone())));
        let raced = again.is_some();
        let Some((index, server)) = again.or_else(|| servers.pick(now, &tried[..attempts], client))
        else {
            // Waits for the instance started in its place, or another, as
            // a request that finds none ready waits (at most
            // connect-timeout from its start), rather than a 502 for each
            // request of the moment an instance takes to exit (hundreds
            // under load). Not in a drain, when none starts again.
            if let Some(gone) = dropped_by.take().filter(|_| !c.draining.get()) {
                // A drop is an exit only if one is heard within moments
                // (an instance killed under it: about a millisecond);
                // else the instance runs on, and dropped it on purpose.
                let until = Instant::now() + EXIT_NOTICE;
                let unlisted = upstreams.until_unlisted(&route.config.upstream, &gone, until);
                match c.socket.unless_closed(unlisted).await {
                    None => return client_gone(served, None),
                    // Round again, for the group as it is now (without
                    // it): then the wait for its successor.
                    Some(true) => {
                        exiting = true;
                        continue;
                    }
                    Some(false) => {}
                }
            }
            if std::mem::take(&mut exiting) && !c.draining.get() {
                let until = began + cfg.connect_timeout;
                let name = &route.config.upstream;
                let relisted = upstreams.until_relisted(name, &servers.servers, until);
                match c.socket.unless_closed(relisted).await {
                    None => return client_gone(served, None),
                    Some(Some(_)) => {
                        // The group is listed anew: what was tried may be
                        // a new instance at the same address (a restarted
                        // one takes its port again).
                        tried[..attempts].fill(usize::MAX);
                        continue;
                    }
                    Some(None) => {}
                }
            }
            break;
        };
        exiting = false;
        dropped_by = None;
        match (&last, stale) {
            (Some(_), Some((_, again))) if again == attempts => {}
            (Some((previous, _)), _) => previous.count(|s| s.retries += 1),
            (None, _) => {}
        }
        tried[attempts] = index;
        attempts += 1;
        let _busy = server.busy();
        let pooled = if stale.is_some_and(|(s, _)| s == index) {
            None
        } else {
            server.checkout(cfg.idle_timeout, now)
        };
        let reused = pooled.is_some();
        let connected = match pooled {
            Some(s) => Some(Ok(s)),
            // A client that leaves while the server is slow to accept (its
            // backlog full) takes its request with it, as one that leaves
            // while the answer is awaited does: sent later, it would run
            // for nobody (nginx too gives up the connect).
            None => {
                let connecting = server.connect(cfg.connect_timeout, readiness);
                c.socket.unless_closed(connecting).await
            }
        };
        let Some(connected) = connected else {
            return client_gone(served, Some((server, now)));
        };
        let mut up = match connected {
            Ok(s) => s,
            Err(e) if crate::host::out_of_resources(&e) => {
                server.log(
                    log::Level::Error,
                    Instant::now(),
                    format_args!(
                        "upstream {} ({}): connect: {e} (a limit of this process, not the server's fault)",
                        cfg.name, server.label
                    ),
                );
                served.failed.push((server.label.clone(), now.elapsed()));
                listed = Some(server.clone());
                last = Some((server, Failure::Local));
                break;
            }
            Err(e) => {
                if raced {
                    dropped += 1;
                }
                // A request to it too: failures over requests is its
                // error rate (not one this process could not make).
                server.count(|st| st.requests += 1);
                let at = Instant::now();
                // An app's instance that refuses (or resets a connection
                // its closing listener held) is most likely exiting: its
                // supervisor starts another, often on the same address,
                // within moments, which a rest would keep from requests
                // for fail-timeout (every instance of an app that crashed
                // whole rested, and its requests 503'd while it was back).
                let refused = cfg.is_apps()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::NotFound
                            | io::ErrorKind::ConnectionReset
                    );
                exiting = refused;
                upstreams.failed(cfg, &server, at, !refused);
                served.failed.push((server.label.clone(), at - now));
                listed = Some(server.clone());
                let kind = if e.kind() == io::ErrorKind::TimedOut {
                    Failure::Timeout
                } else {
                    Failure::Connect
                };
                server.log(
                    log::Level::Warn,
                    at,
                    format_args!("upstream {} ({}): connect: {e}", cfg.name, server.label),
                );
                last = Some((server, kind));
                continue;
            }
        };
        server.count(|st| st.requests += 1);
        up_out.clear();
        request::write_head(
            &mut up_out,
            head,
            &target,
            &route.config,
            &request::Forwarding {
                framing,
                remote: c.remote,
                server_host: &server.host,
                upgrade,
                close: cfg.keepalive == 0,
                https: c.https,
            },
        );
        let mut rbuf = buffers::OnDemand::new(CHUNK.max(ex.max_head));
        let back = Back {
            asked,
            client: response::ClientSide {
                persistence: ex.persistence,
                http10: head.version == Version::Http10,
                reusable: true,
                redirect: Some(response::Redirect {
                    upstream: &server.host,
                    scheme: request::client_scheme(head, &route.config, c.remote, c.https),
                    host: head.host().filter(|h| !h.is_empty()),
                    prefix: if route.config.strip_prefix {
                        route.prefix.trim_end_matches('/')
                    } else {
                        ""
                    },
                }),
            },
        };
        let mut sent = send_request(
            &mut c,
            &mut up,
            &mut up_out,
            &mut body,
            framing,
            &ex,
            cfg,
            &mut rbuf,
            back,
        )
        .await;
        if up_out.capacity() > buffers::KEPT_CAPACITY {
            // A body held whole (`request-buffer`) went up in it: its copy
            // is not kept through the response (a retry makes it again
            // from the client's input, which holds the body until then).
            up_out = buffers::none();
        }
        body_started |= sent.consumed;
        // Bytes off the client's socket count however the attempt ends.
        served.bytes_in += sent.read;
        let replay = sent.replay.take();
        // The body goes for good: what a retry could not send again.
        let commit = |c: &mut Client<'_>, body: &mut Option<BodyDecoder>| {
            if let Some((done, taken)) = &replay {
                *body = Some(done.clone());
                c.input.consume(*taken);
            }
        };
        if let Err(end) = sent.client {
            // The upstream saw part of a request: that connection is done.
            let begun = sent.begun.take();
            // The response went out whole before the client left: an early
            // answer (a refused upload, whose client stops sending and
            // goes), which its client had.
            let delivered = c.out.is_empty()
                && begun
                    .as_ref()
                    .is_some_and(|(out, r)| out.complete() && r.bytes_out > 0);
            // Logged with the server it went to, its status `-` when it had
            // not answered (as nginx logs a 499 whose request was sent).
            let status = begun.as_ref().map_or(0, |(_, r)| r.upstream_status);
            served.upstream = Some((server.clone(), status, now.elapsed()));
            if let Some((_, r)) = &begun {
                c.out.clear();
                served.bytes_out += r.bytes_out;
                served.body_bytes = r.body_bytes;
            }
            match end {
                // Logged with its status, as nginx logs it, not 499.
                ClientEnd::Gone if delivered => {
                    served.status = begun.map_or(0, |(_, r)| r.status);
                }
                ClientEnd::Gone => {
                    served.status = 499;
                    served.cut = true;
                }
                // A response already under way is cut short instead:
                // nothing else can follow its start.
                ClientEnd::Refused(e) if begun.as_ref().is_some_and(|(_, r)| r.bytes_out > 0) => {
                    served.error = Some(e);
                    served.cut = true;
                    served.status = begun.map_or(0, |(_, r)| r.status);
                }
                ClientEnd::Refused(e) => {
                    // Counted with the refusals of the session's own bodies.
                    served.error = Some(e);
                    served.linger = true;
                    // As the session's own refusals of a body: without the
                    // route's fields, which are for what the route answers.
                    c.added = None;
                    reply(&mut c, &ex, &mut served, asked.head, status_for(e)).await;
                }
            }
            served.keep_alive = false;
            return served;
        }
        let relayed = if let Some((out, mut r)) = sent.begun.take() {
            // The response began while the body went up (an early
            // success), and flows on, unless the upstream already broke
            // it or stopped taking the body before it ended (its answer
            // would then run on without the request it answers): it ends
            // here (a 502 if nothing of it went out).
            commit(&mut c, &mut body);
            // A body that ends at the close is whole only once the close
            // is read: an upstream that answered in full and closed fails
            // the body's write first, and `relay::stream` reads the rest.
            if sent.send_failed && !out.complete() && !out.ends_at_close() {
                server.log(
                    log::Level::Warn,
                    Instant::now(),
                    format_args!(
                        "upstream {} ({}): {} {target}: the request body could not be sent (nothing taken for send-timeout, or a failed write); the response is cut short",
                        cfg.name,
                        server.label,
                        head.method_str()
                    ),
                );
                r.upstream_fault = Some(Fault::RequestBody);
            } else if sent.send_timed_out && out.complete() {
                // The client had its answer at once, but its upload waited
                // send-timeout on a server that took none of the rest
                // (stuck, or its request paused): nothing else says why.
                server.log(
                    log::Level::Warn,
                    Instant::now(),
                    format_args!(
                        "upstream {} ({}): {} {target}: it answered in full, then took nothing more of the request body for send-timeout (the client's upload waited as long); the client's connection closes",
                        cfg.name,
                        server.label,
                        head.method_str()
                    ),
                );
            }
            let mut relayed = if r.upstream_fault.is_some() {
                c.out.clear();
                r
            } else {
                relay::stream(&mut c, &mut up, &mut rbuf, 0, 0, &ex, cfg, out, r).await
            };
            // Its head said the connection stays open on the belief that
            // the body would go up whole.
            relayed.client_keep_alive &=
                body.as_ref().is_none_or(BodyDecoder::is_done) && sent.upstream_ok;
            relayed
        } else {
            // Even when sending failed or stopped, an answer may be waiting
            // (an early 413); after a send-timeout, when nothing of one came
            // meanwhile, only one already there.
            let wait = if sent.send_timed_out && !sent.any {
                Duration::ZERO
            } else {
                ex.read_timeout(cfg)
            };
            let got = read_head(
                &mut c,
                &mut up,
                &mut rbuf,
                sent.heard,
                sent.any,
                wait,
                ex.max_head,
                (route.config.early_hints && !back.client.http10).then_some(ex.send_timeout),
                &mut served.bytes_out,
            )
            .await;
            let reset = matches!(got, Err(HeadEnd::Failed(Failure::Reset)));
            // A pooled connection's first close, soon after the request
            // went, is the keep-alive race's (its own try follows): the
            // request most likely never reached the app, and a killed
            // instance's backlog may drop the next. (The clock is read only
            // for a close.)
            let race = reset && reused && !same_spent && now.elapsed() < RACE_WINDOW;
            dropped += usize::from(reset && !race);
            let retry = reset && idempotent && !body_started && dropped < MAX_DROPPED;
            if !retry {
                commit(&mut c, &mut body);
            }
            let filled = match got {
                Ok(filled) => filled,
                Err(HeadEnd::ClientGone) => return client_gone(served, Some((server, now))),
                Err(HeadEnd::Failed(_)) if retry && race => {
                    // Listed in the access log all the same, as nginx
                    // lists each attempt, with its own time.
                    served.failed.push((server.label.clone(), now.elapsed()));
                    listed = Some(server.clone());
                    server.log(
                        log::Level::Info,
                        Instant::now(),
                        format_args!(
                            "upstream {} ({}): {} {target}: a pooled connection was closed under it; trying again on a new one",
                            cfg.name,
                            server.label,
                            head.method_str()
                        ),
                    );
                    // Neither a failure nor a retry after one: `last` stays
                    // as it was (a 503 if no server is left to pick).
                    attempts -= 1;
                    stale = Some((tried[attempts], attempts));
                    same_spent = true;
                    tried[attempts] = usize::MAX;
                    continue;
                }
                Err(HeadEnd::Failed(f)) => {
                    let at = Instant::now();
                    let clients = matches!(f, Failure::Bad(b) if b.may_be_the_clients());
                    // An app's instance that closed or reset a connection
                    // before any response is most likely exiting (its
                    // idle connections closed as it stops), as one that
                    // refuses one: not rested, and a request tried again
                    // may wait for its successor.
                    let exits = reset && cfg.is_apps();
                    // The keep-alive race, for a request that may not be
                    // sent again (a POST): a 502, but the server is most
                    // likely well, and is not taken out for it; nor for a
                    // head a client may have made too large.
                    upstreams.failed(cfg, &server, at, !(race || clients || exits));
                    served.failed.push((server.label.clone(), at - now));
                    listed = Some(server.clone());
                    // Told apart from a server that fails on the request:
                    // the operator can do nothing for the race but lower
                    // `idle-timeout` below the app's keep-alive timeout.
                    let why = match (race, idempotent, body_started) {
                        (false, ..) => "",
                        (true, false, _) => " (a pooled connection the server closed as the request went: the keep-alive race, unless the server was going away (an app instance killed under it); not sent again, as the method is not idempotent, and the server is not taken out)",
                        // (Idempotent and no body sent: tried again, but
                        // past `MAX_DROPPED`, which a race does not reach.)
                        (true, true, _) => " (a pooled connection the server closed as the request went: the keep-alive race, unless the server was going away (an app instance killed under it); not sent again, as its body is gone, and the server is not taken out)",
                    };
                    server.log(
                        log::Level::Warn,
                        at,
                        format_args!(
                            "upstream {} ({}): {} {target}: {f}{why}",
                            cfg.name,
                            server.label,
                            head.method_str()
                        ),
                    );
                    // Dropped again on the new connection to the same
                    // instance: one that runs on destroyed it (its 502), or
                    // one that dies took it into its backlog as it went
                    // (a crash under load: every request queued on it).
                    // Its exit, heard soon, tells: then both drops were
                    // that exit, which counts as one, and the request goes
                    // to another instance, or waits for its successor.
                    // (A request that crashes instances still takes two
                    // down at most.)
                    // (Only past the drops allowed: before, the request
                    // goes to another instance anyway.)
                    let gone = !retry
                        && raced
                        && exits
                        && idempotent
                        && body.is_none()
                        && !c.draining.get();
                    if gone {
                        let until = Instant::now() + EXIT_NOTICE;
                        let unlisted =
                            upstreams.until_unlisted(&route.config.upstream, &server, until);
                        match c.socket.unless_closed(unlisted).await {
                            None => return client_gone(served, None),
                            Some(true) => {
                                dropped -= 1;
                                exiting = true;
                                last = Some((server, f));
                                continue;
                            }
                            Some(false) => {}
                        }
                    }
                    last = Some((server, f));
                    if retry && exits && !same_spent {
                        // Tried again at once on a new connection to the
                        // same instance, which tells an exiting one (its
                        // listener closed with the connection in its
                        // backlog: refused now, and the request waits for
                        // its successor) from one that closed it on
                        // purpose and runs on (dropped twice: its 502).
                        stale = Some((tried[attempts - 1], attempts));
                        same_spent = true;
                        continue;
                    }
                    if retry {
                        // An app's instance that dropped it again (its try
                        // on a new connection spent after a pooled one's,
                        // the race's: a killed process drops what its
                        // backlog took too): with no other server to try,
                        // the request waits for its successor once its
                        // exit is heard, as after a refusal.
                        dropped_by = last
                            .as_ref()
                            .filter(|_| exits && body.is_none())
                            .map(|(s, _)| s.clone());
                        continue;
                    }
                    break;
                }
            };
            let client = response::ClientSide {
                reusable: body.as_ref().is_none_or(BodyDecoder::is_done) && sent.upstream_ok,
                ..back.client
            };
            relay(
                &mut c,
                &mut up,
                &mut rbuf,
                filled,
                &ex,
                cfg,
                asked,
                client,
                upgrade,
                route.config.tunnel_idle_timeout,
            )
            .await
        };
        // Said as nginx says it (a request body that could not be sent was
        // said where it failed).
        if let Some(fault) = relayed.upstream_fault.filter(|&f| f != Fault::RequestBody) {
            let then = relay::Aftermath {
                bytes_out: relayed.bytes_out,
                body_bytes: relayed.body_bytes,
            };
            server.log(
                log::Level::Warn,
                Instant::now(),
                format_args!(
                    "upstream {} ({}): {} {target}: {}; {then}",
                    cfg.name,
                    server.label,
                    head.method_str(),
                    fault
                ),
            );
        }
        if let (Some(fault), 0) = (relayed.upstream_fault, relayed.bytes_out) {
            // Nothing went to the client yet: it gets a 502 rather than a
            // connection closed on it.
            let at = Instant::now();
            // However the bytes of a bad body arrived (with its head, or
            // after it was sent), the server's health is the same.
            upstreams.failed(cfg, &server, at, fault.is_the_servers());
            server.count(|s| s.count_status(relayed.upstream_status));
            served.keep_alive = body.as_ref().is_none_or(BodyDecoder::is_done) && sent.upstream_ok;
            // Its body may still be coming (the upstream answered early).
            served.linger = !served.keep_alive && !body.as_ref().is_none_or(BodyDecoder::is_done);
            reply(&mut c, &ex, &mut served, asked.head, Status::BAD_GATEWAY).await;
            served.upstream = Some((server, relayed.upstream_status, now.elapsed()));
            return served;
        }
        served.status = relayed.status;
        served.body_bytes = relayed.body_bytes;
        served.bytes_out += relayed.bytes_out;
        served.bytes_in += relayed.bytes_in;
        served.switched = relayed.switched;
        served.keep_alive = relayed.client_keep_alive;
        // An upstream that answered before it took the whole body (an
        // early 413): the client may still be sending it.
        served.linger = !served.keep_alive && !body.as_ref().is_none_or(BodyDecoder::is_done);
        server.count(|s| s.count_status(relayed.upstream_status));
        let ended = Instant::now();
        let took = ended.saturating_duration_since(now);
        served.cut = relayed.upstream_fault.is_some() || relayed.client_failed;
        if relayed.upstream_fault.is_some() {
            // Counted, but not held against its health (as nginx): it
            // answered, and a response a client can make the app cut
            // short would otherwise take every server of the group out
            // in turn, then answer everyone 503 for fail-timeout.
            server.count(|s| s.failures += 1);
        } else {
            // A tunnel's response time is its switch's.
            let answered = relayed.switched.unwrap_or(ended);
            server.succeeded(now, answered.saturating_duration_since(now));
        }
        // Not kept while the shard drains (nginx keeps none while it
        // exits): an app asked to stop closes its server once its
        // connections are gone, and one kept here would hold it until
        // its SIGKILL.
        if relayed.overran > 0 {
            // As nginx says "upstream sent more data than specified": the
            // app's error costs a connection each time, which only this
            // line shows.
            server.log(
                log::Level::Warn,
                ended,
                format_args!(
                    "upstream {} ({}): {} {target}: {} byte(s) came past the response's end (a body to a HEAD, 204 or 304, or more than its Content-Length or last chunk); dropped, and the connection closed",
                    cfg.name,
                    server.label,
                    head.method_str(),
                    relayed.overran
                ),
            );
        }
        // A connection an upgrade was asked on and refused (a 200, a 426)
        // is not pooled: an app that took the request for a tunnel anyway
        // would read the next client's requests as its tunnel's (probe D;
        // nginx pools it).
        let reusable = relayed.upstream_reusable && upgrade.is_none();
        if reusable && sent.upstream_ok && cfg.keepalive > 0 && !c.draining.get() {
            server.checkin(up, cfg.keepalive, ended);
        } else {
            drop(up);
        }
        served.upstream = Some((server, relayed.upstream_status, took));
        // The end of a response read ahead of a slow client (`buffer`):
        // its server is free already, and its time is the upstream's.
        if !relayed.client_failed && (!c.out.is_empty() || c.socket.unsent()) {
            if relay::write_rest(c.socket, c.out, ex.send_timeout)
                .await
                .is_ok()
            {
                served.bytes_out += c.out.len() as u64;
            } else {
                // Not known to have gone: not counted as sent.
                served.body_bytes = served.body_bytes.saturating_sub(c.out.len() as u64);
                served.cut = true;
                served.keep_alive = false;
                served.linger = false;
            }
            c.out.clear();
        }
        return served;
    }
    let status = match &last {
        None => {
            upstreams.unavailable(&route.config.upstream, Some(&group), now);
            served.unavailable = Some(route.config.upstream.as_str().into());
            Status::SERVICE_UNAVAILABLE
        }
        Some((_, f)) => f.status(),
    };
    // The body may not have been read whole: then the connection closes,
    // unless the rest of it is here already.
    served.bytes_in += discard_if_here(&mut body, &mut c);
    served.keep_alive = body.as_ref().is_none_or(BodyDecoder::is_done);
    served.linger = !served.keep_alive;
    reply(&mut c, &ex, &mut served, asked.head, status).await;
    // The last attempt is the entry's own, not one before it.
    served.upstream = listed.and_then(|s| {
        let (_, took) = served.failed.pop()?;
        Some((s, 0, took))
    });
    served
}

/// What is left of a body no server took (none could be reached, or the
/// request failed before its body went), when all of it has arrived
/// already (it came with the head, as a small form's does; what the head's
/// read left in the socket is read now, without waiting, up to
/// `DISCARD_MOST`): read away, so that the connection can stay open for the
/// next request, as nginx's does (it reads a body before it proxies). A
/// body still on its way, or one that breaks a rule, is left: the
/// connection then closes. The bytes read off the socket.
fn discard_if_here(body: &mut Option<BodyDecoder>, c: &mut Client<'_>) -> u64 {
    let Some(d) = body.as_mut() else {
        return 0;
    };
    let mut read = 0;
    while !d.is_done() {
        match d.decode(c.input.data()) {
            Ok(p) => c.input.consume(p.consumed),
            Err(_) => return read,
        }
        if d.is_done() || read >= DISCARD_MOST {
            break;
        }
        match c.socket.try_read(c.input.body_room()) {
            Some(Ok(n)) if n > 0 => {
                c.input.filled(n);
                read += n as u64;
            }
            _ => break,
        }
    }
    read
}

/// The exchange of a client that left before its server answered (the
/// attempt to a server, if one was made, and when it began): logged 499,
/// as nginx logs it.
fn client_gone(mut served: Served, attempt: Option<(Rc<Server>, Instant)>) -> Served {
    served.status = 499;
    served.cut = true;
    served.upstream = attempt.map(|(server, began)| (server, 0, began.elapsed()));
    served
}

/// Answer the client with an error status of our own; its head alone to
/// HEAD (a body there would be read as the start of the next response).
async fn reply(
    c: &mut Client<'_>,
    ex: &Exchange,
    served: &mut Served,
    head_only: bool,
    status: Status,
) {
    let persistence = if served.keep_alive && !c.draining.get() {
        ex.persistence
    } else {
        Persistence::Close
    };
    served.keep_alive &= persistence != Persistence::Close;
    c.out.clear();
    let mut w = ResponseWriter::new(c.out, c.date.get(), persistence, head_only)
        .with_headers(c.headers)
        .with_added(c.added);
    w.begin(status);
    let mut body = [0u8; 64];
    let reason = status.reason().as_bytes();
    body[..reason.len()].copy_from_slice(reason);
    body[reason.len()] = b'\n';
    w.body("text/plain; charset=utf-8", &body[..=reason.len()]);
    served.status = status.code();
    served.body_bytes = if head_only {
        0
    } else {
        reason.len() as u64 + 1
    };
    if c.socket.write_all(c.out, ex.send_timeout).await.is_ok() {
        served.bytes_out += c.out.len() as u64;
    } else {
        // Nothing reached the client: logged as nginx does (499), and not
        // counted as a status sent.
        served.status = 499;
        served.body_bytes = 0;
        served.keep_alive = false;
        served.linger = false;
        served.cut = true;
    }
    c.out.clear();
}
