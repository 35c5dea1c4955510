//! The way back: the upstream's response head, then its body, re-framed
//! for the client as it arrives; or the tunnel of an accepted upgrade.

use std::io;
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use super::buffers::OnDemand;
use super::{response, tunnel, Client, Exchange, Failure, CHUNK, MAX_RESPONSE_FIELDS};
use crate::config::UpstreamConfig;
use crate::http::body::BodyDecoder;
use crate::http::coding::GzipStream;
use crate::http::encode::BodyEncoder;
use crate::http::parse::{has_token, list_items};
use crate::http::response::Persistence;
use crate::http::upstream::{parse_response, Asked, ResponseFraming, UpstreamError};
use crate::transport::Socket;

/// Why no response head came.
pub(super) enum HeadEnd {
    /// The client went away while waiting.
    ClientGone,
    /// The upstream failed.
    Failed(Failure),
}

/// What the start of an upstream's response buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Heard {
    /// A complete final response head.
    Final,
    /// Not a complete head yet; `interim` when what is there can only be
    /// the start of a 1xx response (or is too short to tell).
    Partial { interim: bool },
    /// Not a response head, or one too large.
    Bad(BadHead),
}

/// Why an upstream's response head could not be taken, as the log says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BadHead {
    /// It does not begin with `HTTP/1.`.
    NotHttp1,
    /// Longer than `max-header-bytes` without ending.
    TooLarge,
    /// Whole, but wrong in a way the parse says.
    Invalid(UpstreamError),
    /// The upstream closed before it ended.
    CutShort,
    /// The connection failed before it ended.
    Failed,
    /// The upstream closed, or the connection failed, after an interim
    /// (1xx) response, before a final one began.
    AfterInterim,
}

impl BadHead {
    /// Whether a client may have made it so, and it is not held against
    /// the server's health: a head too large or with too many fields may
    /// be a client's own bytes an app sends back (a cookie, a query
    /// value), and two such requests took every server of a group out.
    pub(super) fn may_be_the_clients(self) -> bool {
        match self {
            BadHead::TooLarge => true,
            BadHead::Invalid(e) => too_much(e),
            _ => false,
        }
    }
}

/// A response head's error that is one of size: too large, too many fields.
fn too_much(e: UpstreamError) -> bool {
    matches!(
        e,
        UpstreamError::HeadTooLarge | UpstreamError::TooManyHeaders
    )
}

impl std::fmt::Display for BadHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadHead::NotHttp1 => f.write_str("a response that is not HTTP/1.x"),
            BadHead::TooLarge => f.write_str("a response head larger than max-header-bytes"),
            BadHead::Invalid(e) => write!(f, "an invalid response head ({e})"),
            BadHead::CutShort => {
                f.write_str("the connection closed in the middle of the response head")
            }
            BadHead::Failed => {
                f.write_str("the connection failed in the middle of the response head")
            }
            BadHead::AfterInterim => f.write_str(
                "the connection ended after an interim (1xx) response, before the final one",
            ),
        }
    }
}

/// Most interim responses passed on to the client per request: an
/// upstream that sends thousands does not make the proxy send them all.
const MAX_FORWARDED_INTERIM: u32 = 16;

/// Where the interim responses a request gets go: to the client's output
/// (`out`), up to `MAX_FORWARDED_INTERIM` of them; `sent` counts them.
pub(super) struct Interim<'a> {
    pub(super) out: &'a mut Vec<u8>,
    pub(super) sent: &'a mut u32,
}

/// Take the complete interim (1xx) responses off the start of
/// `rbuf[..*filled]` and say what is left. Each but a `100 Continue` (the
/// client had its own from us) goes into `interim`'s output when there is
/// one: RFC 9110 §15.2 has a proxy pass on what it did not ask for (a
/// `103 Early Hints` lets a browser fetch a page's resources while the app
/// works on it). A final head is only seen to end here: `relay` parses
/// it, once (a parse reads the whole head again).
pub(super) fn heard(
    rbuf: &mut [u8],
    filled: &mut usize,
    max_head: usize,
    mut interim: Option<Interim<'_>>,
) -> Heard {
    loop {
        // Empty lines before a status line (a stray CRLF after a body or
        // an interim response): dropped, as httparse skips them, so that
        // what follows sees the status line at the start (as interim
        // responses are taken off, however many come).
        let blank = rbuf[..*filled]
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if blank > 0 {
            rbuf.copy_within(blank..*filled, 0);
            *filled -= blank;
        }
        if *filled >= 8
            && rbuf.starts_with(b"HTTP/1.")
            && matches!(rbuf[7], b'2'..=b'9')
            && (*filled == 8 || rbuf[8] == b' ')
        {
            // RFC 9110 §2.5: a later HTTP/1 minor version is read as the
            // latest this proxy speaks (as a client's is).
            rbuf[7] = b'1';
        }
        let start = &rbuf[..*filled];
        // "HTTP/1.1 1": the status's first digit is the tenth byte.
        if start.len() >= 10 && start[9] != b'1' {
            return if !start.starts_with(b"HTTP/1.") {
                Heard::Bad(BadHead::NotHttp1)
            } else if head_ended(start) {
                Heard::Final
            } else if start.len() >= max_head {
                Heard::Bad(BadHead::TooLarge)
            } else if let Some(e) = refused_early(start, max_head) {
                Heard::Bad(BadHead::Invalid(e))
            } else {
                Heard::Partial { interim: false }
            };
        }
        let mut fields = [const { MaybeUninit::uninit() }; MAX_RESPONSE_FIELDS];
        // Whether the request was a HEAD changes only a final response's
        // framing, which is not read here.
        let asked = Asked { head: false };
        let len = match parse_response(start, &mut fields, max_head, asked) {
            Err(UpstreamError::HeadTooLarge) => return Heard::Bad(BadHead::TooLarge),
            Err(_) if !start.starts_with(b"HTTP/1.") => return Heard::Bad(BadHead::NotHttp1),
            Err(e) => return Heard::Bad(BadHead::Invalid(e)),
            Ok(None) => return Heard::Partial { interim: true },
            Ok(Some(res)) if res.is_interim() => {
                if let Some(i) = interim.as_mut() {
                    if res.status != 100 && *i.sent < MAX_FORWARDED_INTERIM {
                        *i.sent += 1;
                        response::write_interim(i.out, &res);
                    }
                }
                res.head_len
            }
            Ok(Some(_)) => return Heard::Final,
        };
        rbuf.copy_within(len..*filled, 0);
        *filled -= len;
    }
}

/// The error a final response head not yet whole already earns: what its
/// whole lines, or a bare CR (which no byte to come makes a line end),
/// show wrong. Answered now (502), as nginx does, not at `read-timeout`
/// (504, a minute by default, its cause unsaid). Looked at only while a
/// head comes in pieces, which a healthy app's rarely does.
fn refused_early(start: &[u8], max_head: usize) -> Option<UpstreamError> {
    let end = crate::http::parse::judgeable(start)?;
    let mut fields = [const { MaybeUninit::uninit() }; MAX_RESPONSE_FIELDS];
    parse_response(&start[..end], &mut fields, max_head, Asked { head: false }).err()
}

/// Whether `head` holds the empty line that ends a head (CRLF or, as
/// httparse also takes it, a bare LF).
fn head_ended(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head)
        .any(|i| matches!(&head[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

/// Read until `rbuf` holds a complete final response head, starting with
/// the `filled` bytes already there (an answer that came while the body
/// went up; `any`: the upstream had sent something); returns how much of
/// `rbuf` is filled. Each read waits at most `wait` (`read-timeout`; none
/// after `send-timeout`); the wait ends early if the client closes. With
/// `pass_interim` (the send-timeout), the interim responses on the way are
/// passed on to the client (`heard`), written before the next read: for an
/// HTTP/1.1 client (HTTP/1.0 has no 1xx, RFC 9110 §15.2); `interim_bytes`
/// counts what they took.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_head(
    c: &mut Client<'_>,
    up: &mut Socket,
    rbuf: &mut OnDemand,
    mut filled: usize,
    mut any: bool,
    wait: Duration,
    max_head: usize,
    pass_interim: Option<Duration>,
    interim_bytes: &mut u64,
) -> Result<usize, HeadEnd> {
    let mut sent = 0;
    // Nothing of this response has gone to the client's output yet.
    c.out.clear();
    loop {
        let pass = pass_interim.is_some().then_some(Interim {
            out: c.out,
            sent: &mut sent,
        });
        let heard = heard(rbuf.held(), &mut filled, max_head, pass);
        if let Some(send_timeout) = pass_interim.filter(|_| !c.out.is_empty()) {
            if c.socket.write_all(c.out, send_timeout).await.is_err() {
                c.out.clear();
                return Err(HeadEnd::ClientGone);
            }
            *interim_bytes += c.out.len() as u64;
            c.out.clear();
        }
        match heard {
            Heard::Final => return Ok(filled),
            Heard::Bad(why) => return Err(HeadEnd::Failed(Failure::Bad(why))),
            Heard::Partial { .. } => {}
        }
        let deadline = Instant::now() + wait;
        let read = c
            .socket
            .unless_closed(up.read(&mut rbuf.window(filled, max_head), deadline))
            .await;
        let n = match read {
            None => return Err(HeadEnd::ClientGone),
            // Only interim responses came: nothing of a final head yet.
            Some(Ok(0)) if any && filled == 0 => {
                return Err(HeadEnd::Failed(Failure::Bad(BadHead::AfterInterim)))
            }
            Some(Ok(0)) if any => return Err(HeadEnd::Failed(Failure::Bad(BadHead::CutShort))),
            Some(Ok(0)) => return Err(HeadEnd::Failed(Failure::Reset)),
            Some(Ok(n)) => n,
            Some(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(HeadEnd::Failed(Failure::Timeout))
            }
            Some(Err(_)) if any && filled == 0 => {
                return Err(HeadEnd::Failed(Failure::Bad(BadHead::AfterInterim)))
            }
            Some(Err(_)) if any => return Err(HeadEnd::Failed(Failure::Bad(BadHead::Failed))),
            Some(Err(_)) => return Err(HeadEnd::Failed(Failure::Reset)),
        };
        any = true;
        filled += n;
    }
}

/// What went wrong with an upstream's response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    /// Its head does not hold together.
    InvalidHead(UpstreamError),
    /// A 101 the client did not ask for (`asked`: it did, and the 101
    /// names another protocol; `named`: it names one at all).
    UnaskedSwitch { asked: bool, named: bool },
    /// Its body's framing is broken (a bad chunk), or its gzip stream
    /// could not be ended.
    InvalidBody,
    /// It closed before its body ended.
    Closed,
    /// It reset the connection.
    Reset,
    /// Silent for `read-timeout` within its body.
    TimedOut,
    /// The request's body could not be sent (said where it happens).
    RequestBody,
}

impl Fault {
    /// Whether it holds against the server's health (`max-fails`): a head
    /// that does not hold together is the server's; what befalls a body
    /// after a good head is not, nor a head too large (`BadHead::
    /// may_be_the_clients`), since a client may be able to make the app
    /// cut it short or send its bytes back, and would then take every
    /// server out in turn.
    pub(super) fn is_the_servers(self) -> bool {
        match self {
            Fault::InvalidHead(e) => !too_much(e),
            Fault::UnaskedSwitch { .. } => true,
            _ => false,
        }
    }
}

impl std::fmt::Display for Fault {
    /// What the log says of it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::InvalidHead(e) => return write!(f, "an invalid response head ({e})"),
            Fault::UnaskedSwitch { asked: false, .. } => {
                "a 101 (switching protocols) to a request that did not ask to upgrade"
            }
            Fault::UnaskedSwitch { named: false, .. } => {
                "a 101 (switching protocols) that names no protocol (no Upgrade field)"
            }
            Fault::UnaskedSwitch { .. } => {
                "a 101 (switching protocols) to a protocol the request did not offer"
            }
            Fault::InvalidBody => "an invalid response body (its framing is broken)",
            Fault::Closed => "it closed the connection before the response ended",
            Fault::Reset => "it reset the connection before the response ended",
            Fault::TimedOut => "nothing came for read-timeout before the response ended",
            Fault::RequestBody => "the request body could not be sent",
        })
    }
}

/// What a fault meant for the client, as the log says it: a 502 when
/// nothing had gone to it, else a response cut short.
pub(super) struct Aftermath {
    pub(super) bytes_out: u64,
    pub(super) body_bytes: u64,
}

impl std::fmt::Display for Aftermath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.bytes_out {
            0 => f.write_str("answered 502"),
            _ => write!(
                f,
                "the response was cut short after {} byte(s) of body",
                self.body_bytes
            ),
        }
    }
}

/// How relaying the response went.
#[derive(Default)]
pub(super) struct Relayed {
    pub(super) status: u16,
    pub(super) upstream_status: u16,
    pub(super) body_bytes: u64,
    pub(super) bytes_out: u64,
    /// Bytes read from the client past the request (a tunnel's).
    pub(super) bytes_in: u64,
    /// When the tunnel began, if the response switched to one.
    pub(super) switched: Option<Instant>,
    pub(super) client_keep_alive: bool,
    pub(super) upstream_reusable: bool,
    /// Bytes the upstream sent past the response's end (a body to a HEAD,
    /// 204 or 304; more than its length), which nobody asked for: its
    /// connection is not reused, and the log says why.
    pub(super) overran: u64,
    /// What went wrong on the upstream's side, if anything: the response
    /// is cut short (or, with nothing sent yet, a 502).
    pub(super) upstream_fault: Option<Fault>,
    /// The client took no more of it (gone, or nothing taken for
    /// send-timeout): the response is cut short on its side.
    pub(super) client_failed: bool,
}

/// A response whose head went into the client's output: its body,
/// re-framed for the client as it arrives.
pub(super) struct Outgoing {
    framing: ResponseFraming,
    decoder: Option<BodyDecoder>,
    encoder: BodyEncoder,
    /// The body is compressed on its way (`gzip`); boxed, as few
    /// responses are, to keep every proxied exchange's future small.
    gzip: Option<Box<GzipStream>>,
    /// The whole body came.
    complete: bool,
    /// Its end (a chunked body's last chunk) went into the client's output.
    ended: bool,
    /// The upstream's connection may carry another request after it.
    reusable: bool,
    /// The client's connection stays open after it.
    keep_alive: bool,
    /// Bytes that came past its end (`Relayed::overran`).
    overran: u64,
}

/// The start of a response: the final head at the start of `rbuf`, parsed
/// and written into the client's output.
pub(super) struct Begun {
    pub(super) out: Outgoing,
    /// Where the body starts in `rbuf`.
    pub(super) head_len: usize,
    /// An accepted upgrade: the connections are tunnelled from here.
    pub(super) tunnel: bool,
}

/// Whether a 101's `Upgrade` value (`switched`) names only protocols that
/// the request's (`asked`) offered: it must name at least one (RFC 9110
/// §7.8), compared as tokens in any case.
fn switch_asked(asked: &[u8], switched: Option<&[u8]>) -> bool {
    let Some(switched) = switched else {
        return false;
    };
    let mut named = list_items(switched).peekable();
    named.peek().is_some() && named.all(|p| has_token(asked, p))
}

/// Parse the final head at the start of `rbuf` and write the client's head
/// into `c.out` (emptied first). `upgrade`: the request's `Upgrade` value,
/// when the route tunnels it. None when it is invalid, or a switch
/// nobody asked for (`r.upstream_fault` says so).
pub(super) fn begin(
    c: &mut Client<'_>,
    rbuf: &[u8],
    ex: &Exchange,
    asked: Asked,
    client: response::ClientSide<'_>,
    upgrade: Option<&[u8]>,
    r: &mut Relayed,
) -> Option<Begun> {
    c.out.clear();
    // Shutdown began since the request came: this is the connection's last.
    let client = if c.draining.get() {
        response::ClientSide {
            persistence: Persistence::Close,
            ..client
        }
    } else {
        client
    };
    let mut fields = [const { MaybeUninit::uninit() }; MAX_RESPONSE_FIELDS];
    let res = match parse_response(rbuf, &mut fields, ex.max_head, asked) {
        Ok(Some(res)) => res,
        // `read_head` saw where the head ends; whether it holds together
        // shows here: a bad upstream, answered with a 502.
        Err(e) => {
            r.upstream_fault = Some(Fault::InvalidHead(e));
            return None;
        }
        Ok(None) => {
            r.upstream_fault = Some(Fault::InvalidHead(UpstreamError::Malformed));
            return None;
        }
    };
    r.upstream_status = res.status;
    let tunnel = res.status == 101;
    if tunnel && !upgrade.is_some_and(|asked| switch_asked(asked, res.header("upgrade"))) {
        // A switch nobody asked for, or to a protocol the client did not
        // offer (RFC 9110 §7.8: the server must not; its 101 names the
        // protocol): the upstream is confused, and the client would be
        // tunnelled into something it does not speak.
        r.upstream_fault = Some(Fault::UnaskedSwitch {
            asked: upgrade.is_some(),
            named: res.header("upgrade").is_some(),
        });
        return None;
    }
    // Past the shard's cap on streams under way, this one goes as it is.
    let gzip = c.gzip.map(|g| response::Compression {
        accepted: g.accepted && GzipStream::available(),
        ..g
    });
    let down = response::write_head(c.out, &res, c.date.get(), client, tunnel, gzip);
    // Before the head's final empty line: the connection's HSTS, then the
    // route's fields, each unless the application sent its own.
    let end = c.out.len() - 2;
    c.out.truncate(end);
    if !c.headers.is_empty() && !response::sends_own(&res, "strict-transport-security") {
        c.out.extend_from_slice(c.headers);
    }
    for (name, line) in c.added.iter().flat_map(|a| a.lines()) {
        let dropped = down.gzip && response::drops_when_compressed(name);
        if !dropped && !response::sends_own(&res, name) {
            c.out.extend_from_slice(line);
        }
    }
    c.out.extend_from_slice(b"\r\n");
    r.status = r.upstream_status;
    let framing = res.framing;
    Some(Begun {
        out: Outgoing {
            framing,
            // Trailers are read past and dropped, never held: however many
            // there are costs only their reading, as the body's bytes do
            // (nginx reads past any number too). Bounded by the head's
            // limit, a response the server finished was cut short.
            decoder: framing.decoder(usize::MAX),
            encoder: down.encoder,
            // A length of nothing is complete with its head: no read
            // would ever bring the bytes that end it (Express's
            // `res.status(201).end()`).
            complete: matches!(framing, ResponseFraming::None | ResponseFraming::Length(0)),
            // A HEAD's answer says it is compressed, but has no body to.
            gzip: gzip
                .filter(|_| down.gzip && framing != ResponseFraming::None)
                .map(|g| Box::new(GzipStream::new(g.config.level))),
            ended: false,
            reusable: res.reusable,
            keep_alive: down.keep_alive,
            overran: 0,
        },
        head_len: res.head_len,
        tunnel,
    })
}

impl Outgoing {
    /// What a complete response says of both connections, into `r`.
    fn finish(&self, r: &mut Relayed) {
        r.client_keep_alive = self.keep_alive;
        r.upstream_reusable = self.reusable;
        r.overran = self.overran;
    }

    /// Re-frame the body bytes `bytes` into `out`, and the body's end once
    /// it is complete. Returns the bytes taken: all of them, unless the
    /// body ended before their end. An error when they break its framing.
    pub(super) fn feed(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<u8>,
        r: &mut Relayed,
    ) -> Result<usize, ()> {
        let mut pos = 0;
        let mut fed = false;
        while pos < bytes.len() && !self.complete {
            let payload = match &mut self.decoder {
                Some(d) => {
                    let piece = d.next_payload(&bytes[pos..]).map_err(drop)?;
                    let payload = pos + piece.payload.start..pos + piece.payload.end;
                    pos += piece.consumed;
                    self.complete = piece.done;
                    payload
                }
                None => {
                    let payload = pos..bytes.len();
                    pos = bytes.len();
                    payload
                }
            };
            let payload = &bytes[payload];
            fed |= !payload.is_empty();
            match &mut self.gzip {
                Some(g) => g.write(payload).map_err(drop)?,
                None => {
                    let _ = self.encoder.write(out, payload);
                    r.body_bytes += payload.len() as u64;
                }
            }
        }
        if self.complete {
            self.end(out, r)?;
        } else if let Some(g) = &mut self.gzip {
            if fed && !matches!(self.framing, ResponseFraming::Length(_)) {
                // What came in this read reaches the client now, decodable:
                // a streamed response (events, a long page: no length) is
                // not held back until the compressor's window fills. One
                // with a length is not a stream: no flush's few bytes per
                // read.
                g.flush().map_err(drop)?;
            }
            // Whatever the compressor has made goes on now: held here, a
            // large body would be held whole.
            if !g.output().is_empty() {
                Self::send_compressed(g, &mut self.encoder, out, r);
            }
        }
        if pos < bytes.len() {
            // Bytes past the response's end were never asked for.
            self.reusable = false;
            self.overran += (bytes.len() - pos) as u64;
        }
        Ok(pos)
    }

    /// The body is whole (`complete`), or ends with the connection: its
    /// end goes into `out`, once (for a compressed body, the end of the
    /// gzip stream first).
    fn end(&mut self, out: &mut Vec<u8>, r: &mut Relayed) -> Result<(), ()> {
        self.complete = true;
        if !self.ended {
            self.ended = true;
            if let Some(g) = &mut self.gzip {
                g.finish().map_err(drop)?;
                Self::send_compressed(g, &mut self.encoder, out, r);
            }
            let _ = self.encoder.finish(out);
        }
        Ok(())
    }

    /// Frame what the compressor wrote into `out`, and count it as body
    /// bytes sent (as nginx's `$body_bytes_sent`, compressed).
    fn send_compressed(
        g: &mut GzipStream,
        encoder: &mut BodyEncoder,
        out: &mut Vec<u8>,
        r: &mut Relayed,
    ) {
        let _ = encoder.write(out, g.output());
        r.body_bytes += g.output().len() as u64;
        g.clear();
    }

    /// The whole body went into the client's output.
    pub(super) fn complete(&self) -> bool {
        self.complete
    }

    /// The upstream's connection may carry another request after it.
    pub(super) fn reusable(&self) -> bool {
        self.reusable
    }

    /// Its body ends where the upstream closes (no length, not chunked).
    pub(super) fn ends_at_close(&self) -> bool {
        self.framing == ResponseFraming::UntilClose
    }
}

/// Send the response whose head is at the start of `rbuf[..filled]` to the
/// client, and its body as it arrives; or tunnel an accepted upgrade.
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay(
    c: &mut Client<'_>,
    up: &mut Socket,
    rbuf: &mut OnDemand,
    filled: usize,
    ex: &Exchange,
    cfg: &UpstreamConfig,
    asked: Asked,
    client: response::ClientSide<'_>,
    upgrade: Option<&[u8]>,
    tunnel_idle: Duration,
) -> Relayed {
    let mut r = Relayed::default();
    let Some(begun) = begin(c, rbuf.bytes(0..filled), ex, asked, client, upgrade, &mut r) else {
        return r;
    };
    let head_len = begun.head_len;
    if begun.tunnel {
        // The head, then bytes both ways as they come; the client's
        // connection is the tunnel's until it ends.
        if c.socket.write_all(c.out, ex.send_timeout).await.is_err() {
            r.client_failed = true;
            return r;
        }
        r.bytes_out += c.out.len() as u64;
        r.switched = Some(Instant::now());
        c.out.clear();
        let early: Vec<u8> = c.input.data().to_vec();
        c.input.consume(early.len());
        // A tunnel may stay open for hours, mostly quiet: what the
        // exchange grew goes back (the response buffer to the shard's
        // spares), and it holds buffers only while bytes pass.
        c.input.shrink();
        let upstream_early = rbuf.bytes(head_len..filled).to_vec();
        rbuf.give_back();
        let tunnelled = tunnel::run(
            c.socket,
            up,
            &early,
            &upstream_early,
            tunnel_idle,
            ex.send_timeout,
        )
        .await;
        // What went through the tunnel is the 101's body for the access
        // log, as nginx's `$body_bytes_sent` counts it.
        r.bytes_out += tunnelled.to_client;
        r.body_bytes = tunnelled.to_client;
        r.bytes_in = tunnelled.from_client;
        return r;
    }
    stream(c, up, rbuf, head_len, filled, ex, cfg, begun.out, r).await
}

/// Relay the rest of a response whose head is in the client's output:
/// `rbuf[pos..filled]` first, then what the upstream sends. What the client
/// does not take at once is held, and the upstream read on meanwhile, up to
/// `cfg.buffer` bytes held (nginx's `proxy_buffering`, in memory): a
/// response that fits is read whole however slowly its client reads, and
/// its server is free for the next request. Past that, or with `buffer`
/// 0, or a socket the ring does not watch, each read is written to the
/// client before the next is waited for.
///
/// Returning with the body complete, `c.out` may still hold its end: the
/// caller writes it (`write_rest`) once the upstream connection is let
/// go. Otherwise `c.out` is empty: a response the upstream cut short gets
/// what was held for it first (it is cut short all the same), unless
/// nothing of it went out yet (then it is a 502).
#[allow(clippy::too_many_arguments)]
pub(super) async fn stream(
    c: &mut Client<'_>,
    up: &mut Socket,
    rbuf: &mut OnDemand,
    pos: usize,
    filled: usize,
    ex: &Exchange,
    cfg: &UpstreamConfig,
    mut out: Outgoing,
    mut r: Relayed,
) -> Relayed {
    // Most responses came whole with their head: done here, without the
    // relay's loop.
    if out.feed(rbuf.bytes(pos..filled), c.out, &mut r).is_err() {
        r.upstream_fault = Some(Fault::InvalidBody);
        c.out.clear();
        return r;
    }
    if out.complete {
        out.finish(&mut r);
        return r;
    }
    let ahead = if c.socket.non_blocking() && up.non_blocking() {
        cfg.buffer
    } else {
        0
    };
    let mut relay = Ahead {
        out,
        r,
        sent: 0,
        stall: None,
        client_full: false,
    };
    let r = relay.run(c, up, rbuf, filled..filled, ex, cfg, ahead).await;
    if r.upstream_fault.is_some() && r.bytes_out > 0 && relay.sent < c.out.len() {
        // Cut short by the upstream after it began: what was read for the
        // client still goes to it (a download resumed from there loses
        // nothing), within send-timeout.
        let mut r = r;
        let held = &c.out[relay.sent..];
        if c.socket.write_all(held, ex.send_timeout).await.is_ok() {
            r.bytes_out += held.len() as u64;
        } else {
            r.body_bytes = r.body_bytes.saturating_sub(held.len() as u64);
            r.client_failed = true;
        }
        c.out.clear();
        return r;
    }
    let mut r = r;
    if r.client_failed {
        // What was read ahead and never went is no body sent (nginx's
        // `$body_bytes_sent`); for a chunked body its chunk lines are taken
        // off too, a few bytes per read.
        let held = c.out.len().saturating_sub(relay.sent) as u64;
        r.body_bytes = r.body_bytes.saturating_sub(held);
    }
    if !relay.out.complete || r.client_failed || r.upstream_fault.is_some() {
        c.out.clear();
    }
    r
}

/// Reads in a row, without a wait, after which the relay steps aside for
/// the shard's other tasks (as `Socket::read` does for its own).
const READS_IN_A_ROW: u32 = 8;

/// A response's body on its way: re-framed into the client's output, and
/// what of that went out.
struct Ahead {
    out: Outgoing,
    r: Relayed,
    /// `c.out[..sent]` went to the client already.
    sent: usize,
    /// When a client that takes nothing more fails (`send-timeout` after
    /// its last progress), while bytes are held for it.
    stall: Option<Instant>,
    /// The client took less than it was given, and has not said it has
    /// room since: no write is tried (each would fail, a system call each).
    client_full: bool,
}

impl Ahead {
    /// The relay's loop (`stream`); returns how it went, `c.out` as it is.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &mut self,
        c: &mut Client<'_>,
        up: &mut Socket,
        rbuf: &mut OnDemand,
        first: std::ops::Range<usize>,
        ex: &Exchange,
        cfg: &UpstreamConfig,
        ahead: usize,
    ) -> Relayed {
        let mut piece = first;
        // Since when the upstream owes a byte (reset while no room is
        // left: it is not read then, so its silence does not count).
        let mut quiet_since: Option<Instant> = None;
        let mut in_a_row = 0;
        loop {
            if self
                .out
                .feed(rbuf.bytes(piece), c.out, &mut self.r)
                .is_err()
            {
                self.r.upstream_fault = Some(Fault::InvalidBody);
                return std::mem::take(&mut self.r);
            }
            if self.out.complete {
                self.out.finish(&mut self.r);
                c.out.drain(..self.sent);
                self.sent = 0;
                return std::mem::take(&mut self.r);
            }
            if ahead == 0 {
                if !c.out.is_empty() {
                    if c.socket.write_all(c.out, ex.send_timeout).await.is_err() {
                        self.r.client_failed = true;
                        return std::mem::take(&mut self.r);
                    }
                    self.r.bytes_out += c.out.len() as u64;
                    c.out.clear();
                }
            } else if !self.client_full && self.push(c).is_err() {
                self.r.client_failed = true;
                return std::mem::take(&mut self.r);
            }
            let held = c.out.len() - self.sent;
            let read = if ahead == 0 || held == 0 && !c.socket.unsent() {
                // Nothing held: the upstream is waited on alone, and a
                // client that leaves meanwhile ends it.
                self.stall = None;
                in_a_row = 0;
                let deadline = Instant::now() + ex.read_timeout(cfg);
                match c
                    .socket
                    .unless_closed(up.read(&mut rbuf.window(0, CHUNK), deadline))
                    .await
                {
                    Some(read) => read,
                    None => {
                        self.r.client_failed = true;
                        return std::mem::take(&mut self.r);
                    }
                }
            } else {
                // Against the whole buffer, what went included until it is let
                // go of: it holds `buffer` and a read at most.
                let room = c.out.len() < ahead;
                let now = Instant::now();
                let quiet_at = *quiet_since.get_or_insert(now) + ex.read_timeout(cfg);
                if !room {
                    quiet_since = None;
                }
                let tried = room
                    .then(|| up.try_read(&mut rbuf.get()[..CHUNK]))
                    .flatten();
                if let Some(read) = tried {
                    in_a_row += 1;
                    if in_a_row >= READS_IN_A_ROW {
                        in_a_row = 0;
                        futures_lite::future::yield_now().await;
                    }
                    read
                } else {
                    in_a_row = 0;
                    let stall_at = *self.stall.get_or_insert(now + ex.send_timeout);
                    let deadline = if room {
                        stall_at.min(quiet_at)
                    } else {
                        stall_at
                    };
                    // Nothing is in it between reads: held bytes are
                    // the client's output's.
                    rbuf.give_back();
                    // Whether the client woke it (else the upstream).
                    let woke = futures_lite::future::or(
                        async { c.socket.ready(false, true, deadline).await.map(|_| true) },
                        async {
                            if room {
                                up.ready(true, false, deadline).await.map(|_| false)
                            } else {
                                std::future::pending().await
                            }
                        },
                    )
                    .await;
                    match woke {
                        Ok(client) => self.client_full &= !client,
                        Err(_) if !room || Instant::now() >= stall_at => {
                            self.r.client_failed = true;
                            return std::mem::take(&mut self.r);
                        }
                        Err(_) => {
                            self.r.upstream_fault = Some(Fault::TimedOut);
                            return std::mem::take(&mut self.r);
                        }
                    }
                    piece = 0..0;
                    continue;
                }
            };
            quiet_since = None;
            piece = 0..match read {
                Ok(0) if self.out.framing == ResponseFraming::UntilClose => {
                    if self.out.end(c.out, &mut self.r).is_err() {
                        self.r.upstream_fault = Some(Fault::InvalidBody);
                        return std::mem::take(&mut self.r);
                    }
                    0
                }
                Ok(n) if n > 0 => n,
                // Cut short or silent: the client's response is cut short
                // too (its framing shows it), and the connection closes.
                Ok(_) => {
                    self.r.upstream_fault = Some(Fault::Closed);
                    return std::mem::take(&mut self.r);
                }
                Err(e) => {
                    self.r.upstream_fault = Some(match e.kind() {
                        std::io::ErrorKind::TimedOut => Fault::TimedOut,
                        _ => Fault::Reset,
                    });
                    return std::mem::take(&mut self.r);
                }
            };
        }
    }

    /// Write what the client takes of what is held now, and TLS records
    /// waiting to go, never waiting; what went is counted as sent, and let
    /// go of once it is half the buffer (so that a client that keeps up
    /// only in part does not make the buffer grow with the response).
    fn push(&mut self, c: &mut Client<'_>) -> io::Result<()> {
        let mut progress = c.socket.unsent() && c.socket.try_flush()? > 0;
        while self.sent < c.out.len() {
            match c.socket.try_write(&c.out[self.sent..]) {
                None => break,
                Some(Ok(n)) => {
                    self.sent += n;
                    self.r.bytes_out += n as u64;
                    progress = true;
                }
                Some(Err(e)) => return Err(e),
            }
        }
        if progress {
            self.stall = None;
        }
        self.client_full = self.sent < c.out.len() || c.socket.unsent();
        if self.sent == c.out.len() {
            c.out.clear();
            self.sent = 0;
        } else if self.sent >= c.out.len() - self.sent {
            c.out.drain(..self.sent);
            self.sent = 0;
        }
        Ok(())
    }
}

/// Write `out` to the client, and TLS records still waiting to go: the end
/// of a response `stream` returned with, its upstream connection let go.
/// Fails when nothing goes for `send_timeout`.
pub(super) async fn write_rest(
    socket: &mut Socket,
    out: &[u8],
    send_timeout: Duration,
) -> io::Result<()> {
    if !out.is_empty() {
        socket.write_all(out, send_timeout).await?;
    }
    // The clock is read only while TLS records wait: a proxied response's
    // end costs none (a clock read is about 1 % of a proxied request).
    let mut deadline = None;
    while socket.unsent() {
        if socket.try_flush()? > 0 {
            deadline = None;
            continue;
        }
        let now = Instant::now();
        let until = *deadline.get_or_insert(now + send_timeout);
        if now >= until {
            return Err(io::ErrorKind::TimedOut.into());
        }
        socket.ready(false, true, until).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hear(bytes: &[u8]) -> (Heard, Vec<u8>) {
        let mut buf = vec![0u8; 256];
        buf[..bytes.len()].copy_from_slice(bytes);
        let mut filled = bytes.len();
        let heard = heard(&mut buf, &mut filled, 256, None);
        (heard, buf[..filled].to_vec())
    }

    #[test]
    fn a_switch_must_be_to_a_protocol_the_client_offered() {
        assert!(switch_asked(b"websocket", Some(b"WebSocket")));
        assert!(switch_asked(b"h2c, websocket", Some(b"websocket")));
        assert!(!switch_asked(b"websocket", Some(b"foo")));
        assert!(!switch_asked(b"websocket", Some(b"websocket, h2c")));
        assert!(!switch_asked(b"websocket", Some(b"")));
        assert!(!switch_asked(b"websocket", None));
    }

    /// A final head not yet whole is refused as soon as its whole lines,
    /// or a bare CR, show it bad, not at read-timeout; one that may still
    /// end well waits.
    #[test]
    fn a_head_in_pieces_is_refused_as_soon_as_it_shows_bad() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\rok"[..],
            b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Le",
            b"HTTP/1.1 200 OK\r\nBad Name: a\r\nContent-Le",
            b"HTTP/1.1 200 OK\rX",
        ] {
            assert!(
                matches!(hear(bad).0, Heard::Bad(BadHead::Invalid(_))),
                "{bad:?}"
            );
        }
        for partial in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r",
            b"HTTP/1.1 200 OK\r\nX-A: a",
        ] {
            assert_eq!(
                hear(partial).0,
                Heard::Partial { interim: false },
                "{partial:?}"
            );
        }
    }

    #[test]
    fn interim_responses_are_dropped_and_what_follows_is_kept() {
        let (h, left) = hear(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 413 Too");
        assert_eq!(h, Heard::Partial { interim: false });
        assert_eq!(left, b"HTTP/1.1 413 Too");
        let (h, left) = hear(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h, Heard::Final);
        assert_eq!(left, b"HTTP/1.1 200 OK\r\n\r\n");
        let (h, left) = hear(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(h, Heard::Partial { interim: true });
        assert!(left.is_empty());
    }

    #[test]
    fn interim_responses_but_100_are_passed_on_up_to_the_cap() {
        let mut raw = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        for _ in 0..20 {
            raw.extend_from_slice(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nKeep-Alive: 5\r\n\r\n",
            );
        }
        raw.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        let mut buf = vec![0u8; 4096];
        buf[..raw.len()].copy_from_slice(&raw);
        let mut filled = raw.len();
        let (mut out, mut sent) = (Vec::new(), 0);
        let pass = Interim {
            out: &mut out,
            sent: &mut sent,
        };
        assert_eq!(heard(&mut buf, &mut filled, 4096, Some(pass)), Heard::Final);
        assert_eq!(&buf[..filled], b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(sent, MAX_FORWARDED_INTERIM);
        let one = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
        assert_eq!(out, one.repeat(MAX_FORWARDED_INTERIM as usize));
    }

    #[test]
    fn a_later_http1_minor_is_read_as_11() {
        let (h, left) = hear(b"HTTP/1.2 103 Early Hints\r\n\r\nHTTP/1.9 200 OK\r\n\r\n");
        assert_eq!(h, Heard::Final);
        assert_eq!(left, b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(hear(b"HTTP/1.22 200 OK\r\n\r\n").0, Heard::Final);
        // Cut right after the version, as a read may leave it.
        let (h, left) = hear(b"HTTP/1.2");
        assert_eq!(
            (h, left.as_slice()),
            (Heard::Partial { interim: true }, &b"HTTP/1.1"[..])
        );
        let mut fields = [const { MaybeUninit::uninit() }; 4];
        let asked = Asked { head: false };
        assert!(parse_response(b"HTTP/1.22 200 OK\r\n\r\n", &mut fields, 256, asked).is_err());
    }

    #[test]
    fn a_start_too_short_to_tell_or_of_a_1xx_does_not_stop_the_body() {
        assert_eq!(hear(b"HTTP/1.").0, Heard::Partial { interim: true });
        assert_eq!(hear(b"HTTP/1.1 10").0, Heard::Partial { interim: true });
        assert_eq!(hear(b"HTTP/1.1 2").0, Heard::Partial { interim: false });
        assert_eq!(hear(b"garbage!\r\n\r\n").0, Heard::Bad(BadHead::NotHttp1));
        assert_eq!(hear(b"HTTP/1.1 200 OK\nA: b\n\n").0, Heard::Final);
        assert_eq!(
            hear(b"HTTP/1.1 200 OK\r\nA: b\r\n").0,
            Heard::Partial { interim: false }
        );
        assert_eq!(hear(&[b'x'; 256]).0, Heard::Bad(BadHead::NotHttp1));
        // Empty lines before the status line are skipped, as httparse
        // does, whatever they are and whatever the status.
        for stray in [&b"\r\n"[..], b"\n", b"\r\n\r\n"] {
            for (head, heard) in [
                (&b"HTTP/1.0 200 OK\r\n\r\n"[..], Heard::Final),
                (b"HTTP/1.1 200 OK\r\n\r\n", Heard::Final),
                (b"HTTP/1.1 2", Heard::Partial { interim: false }),
                (
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                    Heard::Final,
                ),
            ] {
                let (h, left) = hear(&[stray, head].concat());
                assert_eq!((h, &left[..]), (heard, head), "{stray:?} {head:?}");
            }
        }
        assert_eq!(hear(b"\r\n").0, Heard::Partial { interim: true });
    }
}
