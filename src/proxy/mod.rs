//! The reverse proxy's asynchronous half: one client request forwarded to a
//! server of an upstream group and its response streamed back.
//!
//! The handler (`handlers::proxy`) has already copied the request head; the
//! connection runs `serve` with the session's body decoder. The request body
//! goes up and the response body comes down as they arrive, re-framed, one
//! buffer at a time: a slow client slows the upstream read and a slow
//! upstream the client read, and nothing is held whole. Each shard keeps
//! its own connections to each server (`pool`).
//!
//! Failures (nginx's `proxy_next_upstream error timeout` with its rules for
//! non-idempotent requests): no connection → the next server, whatever the
//! method; a reset or close after the request went out but before any byte
//! of a response → the next server for idempotent methods whose body was
//! not consumed; never after a response byte. 502 for a failed or bad
//! upstream, 504 for a timeout, 503 when no server is usable.

mod buffers;
mod pool;
mod request;
mod response;
mod tunnel;

pub use pool::{Server, Upstreams};

use std::io;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::UpstreamConfig;
use crate::handlers::proxy::ProxyJob;
use crate::http::body::BodyDecoder;
use crate::http::date::DATE_LEN;
use crate::http::encode::BodyEncoder;
use crate::http::error::{status_for, ParseError};
use crate::http::parse::{BodyFraming, Method, Version};
use crate::http::response::{Persistence, ResponseWriter};
use crate::http::session::InputBuffer;
use crate::http::status::Status;
use crate::http::upstream::{parse_response, Asked, ResponseFraming};
use crate::readiness::Readiness;
use crate::transport::Socket;

/// Upstream response bytes read at once, and how much of the client's
/// response is gathered before it is written.
const CHUNK: usize = 16 << 10;
/// Most header fields accepted in an upstream's response head.
const MAX_RESPONSE_FIELDS: usize = 128;
/// Most servers one request is tried on.
const MAX_TRIES: usize = 8;

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
}

/// What the session decided for this exchange, and the limits that apply.
pub struct Exchange {
    /// What the response says about the connection.
    pub persistence: Persistence,
    /// The request body still to read, if there is one.
    pub body: Option<BodyDecoder>,
    /// The shard's current `Date`.
    pub date: [u8; DATE_LEN],
    /// Longest wait between two reads of the request body.
    pub body_timeout: Duration,
    /// Longest stall writing to the client.
    pub send_timeout: Duration,
    /// Largest head accepted, also from an upstream.
    pub max_head: usize,
}

/// How the exchange went, for the connection, the log and the metrics.
#[derive(Default)]
pub struct Served {
    /// Status sent to the client; 499 when the client went away first
    /// (nginx's convention), 0 when nothing was sent.
    pub status: u16,
    /// Body bytes sent to the client.
    pub body_bytes: u64,
    /// Bytes written to the client.
    pub bytes_out: u64,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// The client connection can take its next request.
    pub keep_alive: bool,
    /// Close with a lingering close (the client may still be sending).
    pub linger: bool,
    /// The last server tried, its status (0: none) and the time taken.
    pub upstream: Option<(Rc<Server>, u16, Duration)>,
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
    /// An invalid or oversized response head, or one cut short.
    Bad,
}

impl Failure {
    fn status(self) -> Status {
        match self {
            Failure::Timeout => Status::GATEWAY_TIMEOUT,
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

/// Forward `job` to its upstream group and stream the answer back.
pub async fn serve(
    job: ProxyJob,
    mut c: Client<'_>,
    ex: Exchange,
    upstreams: &Upstreams,
    readiness: Option<&Rc<Readiness>>,
) -> Served {
    let ProxyJob { head, route } = job;
    let mut served = Served::default();
    let Some(group) = upstreams.group(&route.config.upstream) else {
        // Only when a reload removed the group under a request of the
        // previous routes.
        reply(&mut c, &ex, &mut served, Status::SERVICE_UNAVAILABLE).await;
        return served;
    };
    let cfg = &group.config;
    let target = route.upstream_target(&head);
    let upgrade = request::upgrade_wanted(&head).filter(|_| route.config.upgrade);
    let idempotent = matches!(
        head.method,
        Method::Get | Method::Head | Method::Put | Method::Delete | Method::Options | Method::Trace
    );
    let asked = Asked {
        head: head.is_head(),
    };
    let mut body = ex.body.clone();
    let mut body_started = false;
    // Servers tried, up to `MAX_TRIES` (nginx tries each server once).
    let mut tried = [usize::MAX; MAX_TRIES];
    let mut attempts = 0;
    let mut last: Option<(Rc<Server>, Failure)> = None;
    let mut up_out = buffers::take(0);
    let started = Instant::now();

    while attempts < MAX_TRIES {
        let Some((index, server)) = group.pick(Instant::now(), &tried[..attempts]) else {
            break;
        };
        if let Some((previous, _)) = &last {
            previous.count(|s| s.retries += 1);
        }
        tried[attempts] = index;
        attempts += 1;
        let _busy = server.busy();
        let mut up = match server.checkout(cfg.idle_timeout, Instant::now()) {
            Some(s) => s,
            None => match server.connect(cfg.connect_timeout, readiness).await {
                Ok(s) => s,
                Err(e) => {
                    server.failed(cfg, Instant::now());
                    let kind = if e.kind() == io::ErrorKind::TimedOut {
                        Failure::Timeout
                    } else {
                        Failure::Connect
                    };
                    log::warn!("upstream {} ({}): connect: {e}", cfg.name, server.label);
                    last = Some((server, kind));
                    continue;
                }
            },
        };
        server.count(|s| s.requests += 1);
        up_out.clear();
        request::write_head(
            &mut up_out,
            &head,
            &target,
            &route.config,
            &request::Forwarding {
                remote: c.remote,
                server_host: &server.host,
                upgrade,
                close: cfg.keepalive == 0,
                https: c.https,
            },
        );
        let sent = send_request(&mut c, &mut up, &mut up_out, &mut body, head.body, &ex, cfg).await;
        served.bytes_in += sent.body_bytes;
        body_started |= sent.body_bytes > 0 || sent.consumed;
        if let Err(end) = sent.client {
            // The upstream saw part of a request: that connection is done.
            match end {
                ClientEnd::Gone => served.status = 499,
                ClientEnd::Refused(e) => {
                    served.linger = true;
                    reply(&mut c, &ex, &mut served, status_for(e)).await;
                }
            }
            served.keep_alive = false;
            return served;
        }
        // Even when sending failed, an answer may be waiting (an early 413).
        let mut rbuf = buffers::take(CHUNK.max(ex.max_head));
        let got = read_head(&mut c, &mut up, &mut rbuf, cfg, ex.max_head, asked).await;
        let filled = match got {
            Ok(filled) => filled,
            Err(HeadEnd::ClientGone) => {
                served.status = 499;
                served.upstream = Some((server, 0, started.elapsed()));
                return served;
            }
            Err(HeadEnd::Failed(f)) => {
                server.failed(cfg, Instant::now());
                log::warn!(
                    "upstream {} ({}): {} {target}: {f:?}",
                    cfg.name,
                    server.label,
                    head.method_str()
                );
                let retry = f == Failure::Reset && idempotent && !body_started;
                last = Some((server, f));
                if retry {
                    continue;
                }
                break;
            }
        };
        let client = response::ClientSide {
            persistence: ex.persistence,
            http10: head.version == Version::Http10,
            reusable: body.as_ref().is_none_or(BodyDecoder::is_done) && sent.upstream_ok,
        };
        let relayed = relay(
            &mut c,
            &mut up,
            &mut rbuf,
            filled,
            &ex,
            cfg,
            asked,
            client,
            upgrade.is_some(),
            route.config.tunnel_idle_timeout,
        )
        .await;
        served.status = relayed.status;
        served.body_bytes = relayed.body_bytes;
        served.bytes_out += relayed.bytes_out;
        served.keep_alive = relayed.client_keep_alive;
        server.count(|s| s.count_status(relayed.upstream_status));
        if relayed.upstream_failed {
            server.failed(cfg, Instant::now());
        } else {
            server.succeeded(started.elapsed());
        }
        if relayed.upstream_reusable && sent.upstream_ok && cfg.keepalive > 0 {
            server.checkin(up, cfg.keepalive, Instant::now());
        }
        served.upstream = Some((server, relayed.upstream_status, started.elapsed()));
        return served;
    }
    let status = match &last {
        None => Status::SERVICE_UNAVAILABLE,
        Some((_, f)) => f.status(),
    };
    // The body may not have been read whole: then the connection closes.
    served.keep_alive = body.as_ref().is_none_or(BodyDecoder::is_done);
    served.linger = !served.keep_alive;
    reply(&mut c, &ex, &mut served, status).await;
    served.upstream = last.map(|(s, _)| (s, 0, started.elapsed()));
    served
}

/// Answer the client with an error status of our own.
async fn reply(c: &mut Client<'_>, ex: &Exchange, served: &mut Served, status: Status) {
    let persistence = if served.keep_alive {
        ex.persistence
    } else {
        Persistence::Close
    };
    served.keep_alive &= persistence != Persistence::Close;
    c.out.clear();
    let mut w = ResponseWriter::new(c.out, ex.date, persistence, false).with_headers(c.headers);
    w.begin(status);
    let mut body = [0u8; 64];
    let reason = status.reason().as_bytes();
    body[..reason.len()].copy_from_slice(reason);
    body[reason.len()] = b'\n';
    w.body("text/plain; charset=utf-8", &body[..=reason.len()]);
    served.status = status.code();
    served.body_bytes = reason.len() as u64 + 1;
    if c.socket.write_all(c.out, ex.send_timeout).await.is_ok() {
        served.bytes_out += c.out.len() as u64;
    } else {
        served.keep_alive = false;
        served.linger = false;
    }
    c.out.clear();
}

/// How sending the request went.
struct Sent {
    /// Request body bytes read from the client.
    body_bytes: u64,
    /// Some client input was consumed (the body cannot be sent again).
    consumed: bool,
    /// The client's side ended the exchange.
    client: Result<(), ClientEnd>,
    /// The whole request reached the upstream's socket.
    upstream_ok: bool,
}

/// Write the head in `up_out` and the request body to `up`, reading the
/// body from the client as the upstream takes it. What was already read
/// goes up with the head in one write, and is consumed from the client's
/// input only once written, so a failed first write leaves the request
/// whole for the next server.
async fn send_request(
    c: &mut Client<'_>,
    up: &mut Socket,
    up_out: &mut Vec<u8>,
    body: &mut Option<BodyDecoder>,
    framing: BodyFraming,
    ex: &Exchange,
    cfg: &UpstreamConfig,
) -> Sent {
    let mut sent = Sent {
        body_bytes: 0,
        consumed: false,
        client: Ok(()),
        upstream_ok: false,
    };
    let Some(decoder) = body.as_mut() else {
        sent.upstream_ok = up.write_all(up_out, cfg.send_timeout).await.is_ok();
        return sent;
    };
    let mut encoder = match framing {
        BodyFraming::Length(n) => BodyEncoder::Length(n),
        _ => BodyEncoder::Chunked,
    };
    loop {
        // Encode what is here on a copy; commit once it is written.
        let mut trial = decoder.clone();
        let mut taken = 0;
        let mut payload = 0;
        while taken < c.input.data().len() && !trial.is_done() && up_out.len() < CHUNK * 4 {
            let data = &c.input.data()[taken..];
            match trial.next_payload(data) {
                Ok(piece) => {
                    let _ = encoder.write(up_out, &data[piece.payload.clone()]);
                    payload += piece.payload.len() as u64;
                    taken += piece.consumed;
                    if piece.consumed == 0 {
                        break;
                    }
                }
                Err(e) => {
                    sent.client = Err(ClientEnd::Refused(e));
                    return sent;
                }
            }
        }
        if trial.is_done() {
            let _ = encoder.finish(up_out);
        }
        if !up_out.is_empty() {
            if up.write_all(up_out, cfg.send_timeout).await.is_err() {
                return sent;
            }
            up_out.clear();
        }
        *decoder = trial;
        c.input.consume(taken);
        sent.consumed |= taken > 0;
        sent.body_bytes += payload;
        if decoder.is_done() {
            sent.upstream_ok = true;
            return sent;
        }
        if taken > 0 && !c.input.data().is_empty() {
            continue;
        }
        match c
            .socket
            .read(&mut *c.input, Instant::now() + ex.body_timeout)
            .await
        {
            Ok(0) => {
                sent.client = Err(ClientEnd::Gone);
                return sent;
            }
            Ok(n) => c.input.filled(n),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                sent.client = Err(ClientEnd::Refused(ParseError::BodyTimeout));
                return sent;
            }
            Err(_) => {
                sent.client = Err(ClientEnd::Gone);
                return sent;
            }
        }
    }
}

/// Why no response head came.
enum HeadEnd {
    /// The client went away while waiting.
    ClientGone,
    /// The upstream failed.
    Failed(Failure),
}

/// Read until `rbuf` holds a complete final response head (interim 1xx
/// responses are dropped: the client had its 100 Continue from us); returns
/// how much of `rbuf` is filled. The wait ends early if the client closes.
async fn read_head(
    c: &mut Client<'_>,
    up: &mut Socket,
    rbuf: &mut [u8],
    cfg: &UpstreamConfig,
    max_head: usize,
    asked: Asked,
) -> Result<usize, HeadEnd> {
    let mut filled = 0;
    let mut any = false;
    loop {
        let deadline = Instant::now() + cfg.read_timeout;
        let read = futures_lite::future::or(
            async { Some(up.read(&mut rbuf[filled..max_head], deadline).await) },
            async {
                c.socket.closed().await;
                None
            },
        )
        .await;
        let n = match read {
            None => return Err(HeadEnd::ClientGone),
            Some(Ok(0)) if any => return Err(HeadEnd::Failed(Failure::Bad)),
            Some(Ok(0)) => return Err(HeadEnd::Failed(Failure::Reset)),
            Some(Ok(n)) => n,
            Some(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(HeadEnd::Failed(Failure::Timeout))
            }
            Some(Err(_)) if any => return Err(HeadEnd::Failed(Failure::Bad)),
            Some(Err(_)) => return Err(HeadEnd::Failed(Failure::Reset)),
        };
        any = true;
        filled += n;
        loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
            let interim = match parse_response(&rbuf[..filled], &mut fields, max_head, asked) {
                Err(_) => return Err(HeadEnd::Failed(Failure::Bad)),
                Ok(None) => break,
                Ok(Some(res)) if res.is_interim() => res.head_len,
                Ok(Some(_)) => return Ok(filled),
            };
            rbuf.copy_within(interim..filled, 0);
            filled -= interim;
        }
    }
}

/// How relaying the response went.
struct Relayed {
    status: u16,
    upstream_status: u16,
    body_bytes: u64,
    bytes_out: u64,
    client_keep_alive: bool,
    upstream_reusable: bool,
    upstream_failed: bool,
}

/// Send the response whose head is at the start of `rbuf[..filled]` to the
/// client, and its body as it arrives; or tunnel an accepted upgrade.
#[allow(clippy::too_many_arguments)]
async fn relay(
    c: &mut Client<'_>,
    up: &mut Socket,
    rbuf: &mut [u8],
    mut filled: usize,
    ex: &Exchange,
    cfg: &UpstreamConfig,
    asked: Asked,
    client: response::ClientSide,
    upgrade: bool,
    tunnel_idle: Duration,
) -> Relayed {
    let mut r = Relayed {
        status: 0,
        upstream_status: 0,
        body_bytes: 0,
        bytes_out: 0,
        client_keep_alive: false,
        upstream_reusable: false,
        upstream_failed: false,
    };
    c.out.clear();
    let (framing, reusable, head_len, tunnel, down) = {
        let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
        let Ok(Some(res)) = parse_response(&rbuf[..filled], &mut fields, ex.max_head, asked) else {
            unreachable!("read_head returned a complete head");
        };
        r.upstream_status = res.status;
        let tunnel = res.status == 101 && upgrade;
        if res.status == 101 && !upgrade {
            // A switch nobody asked for: the upstream is confused.
            r.upstream_failed = true;
            return r;
        }
        let down = response::write_head(c.out, &res, ex.date, client, tunnel);
        if !c.headers.is_empty() && res.header("strict-transport-security").is_none() {
            // Before the head's final empty line.
            let end = c.out.len() - 2;
            c.out.splice(end..end, c.headers.iter().copied());
        }
        (res.framing, res.reusable, res.head_len, tunnel, down)
    };
    r.status = r.upstream_status;
    let mut encoder = down.encoder;
    if tunnel {
        if c.socket.write_all(c.out, ex.send_timeout).await.is_err() {
            return r;
        }
        r.bytes_out += c.out.len() as u64;
        c.out.clear();
        let early: Vec<u8> = c.input.data().to_vec();
        c.input.consume(early.len());
        r.bytes_out += tunnel::run(
            c.socket,
            up,
            &early,
            &rbuf[head_len..filled],
            tunnel_idle,
            ex.send_timeout,
        )
        .await;
        return r;
    }
    let mut decoder = framing.decoder(ex.max_head);
    let mut pos = head_len;
    let mut complete = framing == ResponseFraming::None;
    loop {
        // What is in the buffer goes into the client's output, re-framed.
        while pos < filled && !complete {
            match (&mut decoder, framing) {
                (Some(d), _) => match d.next_payload(&rbuf[pos..filled]) {
                    Ok(piece) => {
                        let payload = &rbuf[pos + piece.payload.start..pos + piece.payload.end];
                        let _ = encoder.write(c.out, payload);
                        r.body_bytes += payload.len() as u64;
                        pos += piece.consumed;
                        complete = piece.done;
                    }
                    Err(_) => {
                        r.upstream_failed = true;
                        return r;
                    }
                },
                (None, _) => {
                    let _ = encoder.write(c.out, &rbuf[pos..filled]);
                    r.body_bytes += (filled - pos) as u64;
                    pos = filled;
                }
            }
        }
        if complete {
            let _ = encoder.finish(c.out);
        }
        if !c.out.is_empty() {
            if c.socket.write_all(c.out, ex.send_timeout).await.is_err() {
                return r;
            }
            r.bytes_out += c.out.len() as u64;
            c.out.clear();
        }
        if complete {
            r.client_keep_alive = down.keep_alive;
            // Bytes past the response's end were never asked for.
            r.upstream_reusable = reusable && pos == filled;
            return r;
        }
        pos = 0;
        let deadline = Instant::now() + cfg.read_timeout;
        let read = futures_lite::future::or(
            async { Some(up.read(&mut rbuf[..CHUNK], deadline).await) },
            async {
                c.socket.closed().await;
                None
            },
        )
        .await;
        filled = match read {
            None => return r,
            Some(Ok(0)) if framing == ResponseFraming::UntilClose => {
                complete = true;
                0
            }
            Some(Ok(n)) if n > 0 => n,
            // Cut short or silent: the client's response is cut short too
            // (its framing shows it), and the connection closes.
            Some(_) => {
                r.upstream_failed = true;
                return r;
            }
        };
    }
}
