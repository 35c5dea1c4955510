//! The response head sent to the client: the upstream's status and
//! end-to-end fields, our own `Date`, `Server`, `Connection` and framing.
//! The upstream's `Server` is dropped, as nginx hides it by default: the
//! app behind (and its version) is not told to every client.
//!
//! SECURITY: the upstream's framing never reaches the client as it came.
//! Its body is decoded (`http::upstream` decided the framing strictly) and
//! written again with `Content-Length` or chunked, so an upstream cannot
//! make the client see a second response, and its `Connection: close`
//! closes only the upstream connection.

use crate::config::GzipConfig;
use crate::http::date::DATE_LEN;
use crate::http::encode::BodyEncoder;
use crate::http::parse::{has_token, strip_prefix_ignore_case};
use crate::http::response::Persistence;
use crate::http::status::Status;
use crate::http::upstream::{is_hop_by_hop, write_field, Response, ResponseFraming};

/// How the client's side of a response goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downstream {
    /// The body's framing toward the client.
    pub encoder: BodyEncoder,
    /// The client connection stays open after it.
    pub keep_alive: bool,
    /// The body goes gzip-compressed (its head says so).
    pub gzip: bool,
}

/// What the client's request decided about its response.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide<'a> {
    /// What the session decided (the client's wish, shutdown).
    pub persistence: Persistence,
    /// The client speaks HTTP/1.0: no chunked coding.
    pub http10: bool,
    /// The connection can take another request after this one (its body
    /// was read whole).
    pub reusable: bool,
    /// Redirects naming the server to map back to the client's origin.
    pub redirect: Option<Redirect<'a>>,
}

/// What a `Location` (or `Refresh`) naming the server by its own address
/// becomes, as nginx's `proxy_redirect default` has it: an app that builds
/// absolute URLs from the `Host` it got (`keep-host = false` sends the
/// server's address) or from its own address would send clients to an
/// address they cannot reach (an app instance's port, loopback).
#[derive(Debug, Clone, Copy)]
pub struct Redirect<'a> {
    /// The server's address as it goes in `Host` (`Server::host`).
    pub upstream: &'a str,
    /// The client's scheme: `http` or `https`.
    pub scheme: &'a str,
    /// The client's `Host`, if it sent one (else the URL goes relative).
    pub host: Option<&'a str>,
    /// What `strip-prefix` took off the path (no trailing `/`), put back;
    /// empty without it.
    pub prefix: &'a str,
}

impl Redirect<'_> {
    /// Write `url` mapped back into `out`, if it names the server: scheme
    /// `http` or `https`, then its address (in any case), then the end or a
    /// path, query or fragment.
    fn rewrite(&self, url: &[u8], out: &mut Vec<u8>) -> bool {
        // Not text, it names no address of ours.
        let Ok(url) = std::str::from_utf8(url) else {
            return false;
        };
        // An app that says https (it believes a balancer in front that
        // terminates TLS) keeps it; one that says http gets the client's.
        let (scheme, rest) = match strip_prefix_ignore_case(url, "https://") {
            Some(rest) => ("https", rest),
            None => (
                self.scheme,
                strip_prefix_ignore_case(url, "http://").unwrap_or(""),
            ),
        };
        let named = strip_prefix_ignore_case(rest, self.upstream).or_else(|| self.by_alias(rest));
        let Some(rest) = named.map(str::as_bytes) else {
            return false;
        };
        if !matches!(rest.first(), None | Some(b'/' | b'?' | b'#')) {
            return false;
        }
        // Relative, a path starting `//` or `/\` would name another host
        // (browsers drop tabs and line breaks from a URL first).
        let mut path = rest
            .iter()
            .filter(|&&b| !matches!(b, b'\t' | b'\r' | b'\n'));
        let other_host = matches!((path.next(), path.next()), (Some(b'/'), Some(b'/' | b'\\')));
        if self.host.is_none() && self.prefix.is_empty() && other_host {
            return false;
        }
        if let Some(host) = self.host {
            out.extend_from_slice(scheme.as_bytes());
            out.extend_from_slice(b"://");
            out.extend_from_slice(host.as_bytes());
        }
        out.extend_from_slice(self.prefix.as_bytes());
        if !rest.starts_with(b"/") {
            out.push(b'/');
        }
        out.extend_from_slice(rest);
        true
    }

    /// `rest` after the server's address as another name of it, for a
    /// server on loopback: `localhost`, `127.0.0.1`, `[::1]` or the
    /// all-interfaces `0.0.0.0`, `[::]`, with its port. An app builds its
    /// own URL as `http://localhost:${PORT}` (or from the address it
    /// listens on), and an `[[app]]` instance's port is coreserve's
    /// choice, new at each replacement: no `proxy_redirect` could name it.
    fn by_alias<'u>(&self, rest: &'u str) -> Option<&'u str> {
        const ALIASES: [&str; 5] = ["localhost", "127.0.0.1", "[::1]", "0.0.0.0", "[::]"];
        let (ip, port) = self.upstream.rsplit_once(':')?;
        if !matches!(ip, "127.0.0.1" | "[::1]") {
            return None;
        }
        ALIASES.iter().find_map(|alias| {
            strip_prefix_ignore_case(rest, alias)?
                .strip_prefix(':')?
                .strip_prefix(port)
        })
    }

    /// Write the field `name: value` into `out` with its URL mapped back,
    /// if it is a `Location` or a `Refresh` (`5; url=…`) naming the server.
    fn write_field(&self, out: &mut Vec<u8>, name: &str, value: &[u8]) -> bool {
        let start = if name.eq_ignore_ascii_case("location") {
            0
        } else if name.eq_ignore_ascii_case("refresh") {
            let lower = value.to_ascii_lowercase();
            match memchr::memmem::find(&lower, b"url=") {
                // A quoted URL (`url='…'`) keeps its quotes around it.
                Some(i) => i + 4 + usize::from(matches!(value.get(i + 4), Some(b'\'' | b'"'))),
                None => return false,
            }
        } else {
            return false;
        };
        let mark = out.len();
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&value[..start]);
        if !self.rewrite(&value[start..], out) {
            out.truncate(mark);
            return false;
        }
        out.extend_from_slice(b"\r\n");
        true
    }
}

/// A route's compression as it applies to one request.
#[derive(Debug, Clone, Copy)]
pub struct Compression<'a> {
    /// The route's settings.
    pub config: &'a GzipConfig,
    /// The response may be compressed: the client takes gzip, speaks
    /// HTTP/1.1 (nginx's `gzip_http_version 1.1`: HTTP/1.0 caches do not
    /// read `Vary`) and did not ask for `no-transform`, and the shard has
    /// room for another stream. (A HEAD gets the compressed response's
    /// head, without a body.)
    pub accepted: bool,
    /// The client takes gzip and revalidates with a weak entity tag
    /// (`If-None-Match: W/"…"`), as a copy of a compressed response has: a
    /// 304 then says what that response said (its tag weak, `Vary`), RFC
    /// 9110 §15.4.5.
    pub weak_validator: bool,
}

/// Append the head for `res` to `out`; `tunnel`: a 101 that switches the
/// client's connection over to the upstream; `compression`: the route's
/// gzip. A response it covers (`compresses`) says `Vary:
/// Accept-Encoding`, and is compressed if the request `accepted` it.
pub fn write_head(
    out: &mut Vec<u8>,
    res: &Response<'_>,
    date: [u8; DATE_LEN],
    client: ClientSide,
    tunnel: bool,
    compression: Option<Compression<'_>>,
) -> Downstream {
    // Which of the body's forms this client gets depends on its
    // Accept-Encoding: a cache must know it (RFC 9110 §12.5.5), whichever
    // form this one is.
    let compressible = !tunnel && compression.is_some_and(|g| compresses(res, g.config));
    let gzip = compressible && compression.is_some_and(|g| g.accepted) && !client.http10;
    // A 304 to the copy of a compressed response stands for that response.
    let revalidated =
        res.status == 304 && compression.is_some_and(|g| g.accepted && g.weak_validator);
    // A 304 says the `Vary` its 200 would (RFC 9110 §15.4.5); it has no
    // type to tell whether that one was compressible, so on a route that
    // compresses it always does (a cache then keys an image's copies by
    // Accept-Encoding too: more copies, never a wrong one).
    let varies = compressible || (res.status == 304 && compression.is_some());
    let weakens = gzip || revalidated;
    let mut code = itoa::Buffer::new();
    write_status_line(out, res);
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(&date);
    out.extend_from_slice(b"\r\nServer: coreserve\r\n");
    let connection = connection_of(res);
    let mut length = None;
    let mut vary_sent = false;
    for h in res.headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(h.value);
            continue;
        }
        if !passes(h.name, connection.clone()) {
            continue;
        }
        // Ranges and digests of the compressed body are not what the
        // app's fields describe; a strong validator names the bytes the
        // app sent, which these are not (as nginx: made weak).
        if gzip && drops_when_compressed(h.name) {
            continue;
        }
        if weakens && h.name.eq_ignore_ascii_case("etag") && !h.value.starts_with(b"W/") {
            // A tag that is neither strong nor weak (unquoted, `w/`) cannot
            // be made weak: it would name both bodies, so it goes (as
            // nginx's does).
            if h.value.starts_with(b"\"") {
                out.extend_from_slice(h.name.as_bytes());
                out.extend_from_slice(b": W/");
                out.extend_from_slice(h.value);
                out.extend_from_slice(b"\r\n");
            }
            continue;
        }
        vary_sent |= varies
            && h.name.eq_ignore_ascii_case("vary")
            && (has_token(h.value, b"*") || has_token(h.value, b"accept-encoding"));
        if client
            .redirect
            .is_some_and(|r| r.write_field(out, h.name, h.value))
        {
            continue;
        }
        write_field(out, h.name, h.value);
    }
    if gzip {
        write_field(out, "Content-Encoding", b"gzip");
    }
    if varies && !vary_sent {
        write_field(out, "Vary", b"Accept-Encoding");
    }
    // A 426 must say what to upgrade to (RFC 9110 §15.5.22): the one hop-
    // by-hop field that goes on, named in `Connection` as its sender must
    // (§7.8), so that the next hop does not pass it on in turn.
    let offers = if res.status == 426 {
        res.header("upgrade")
    } else {
        None
    };
    if let Some(u) = offers {
        write_field(out, "Upgrade", u);
    }
    if tunnel {
        write_field(out, "Connection", b"upgrade");
        if let Some(u) = res.header("upgrade") {
            write_field(out, "Upgrade", u);
        }
        out.extend_from_slice(b"\r\n");
        return Downstream {
            encoder: BodyEncoder::None,
            keep_alive: false,
            gzip: false,
        };
    }
    let encoder = match res.framing {
        ResponseFraming::None => {
            // A HEAD's or 304's length describes the representation: pass
            // it, unless it is the one compression replaces (a HEAD's
            // head is its GET's: compressed, its length unknown), or a
            // Transfer-Encoding beside it says it is no length at all
            // (RFC 9112 §6.3: a proxy removes it).
            let framed_otherwise = res.header("transfer-encoding").is_some();
            let passed = res.status != 204 && res.status >= 200 && !gzip && !framed_otherwise;
            if let Some(n) = length.filter(|_| passed) {
                write_field(out, "Content-Length", n);
            }
            BodyEncoder::None
        }
        // The compressed length is known only at the end.
        _ if gzip => {
            write_field(out, "Transfer-Encoding", b"chunked");
            BodyEncoder::Chunked
        }
        ResponseFraming::Length(n) => {
            write_field(out, "Content-Length", code.format(n).as_bytes());
            BodyEncoder::Length(n)
        }
        ResponseFraming::Chunked | ResponseFraming::UntilClose if client.http10 => {
            BodyEncoder::Close
        }
        ResponseFraming::Chunked | ResponseFraming::UntilClose => {
            write_field(out, "Transfer-Encoding", b"chunked");
            BodyEncoder::Chunked
        }
    };
    let keep_alive =
        client.persistence != Persistence::Close && client.reusable && encoder.self_delimited();
    let connection: &[u8] = if !keep_alive {
        b"close"
    } else if client.persistence == Persistence::KeepAliveHttp10 {
        b"keep-alive"
    } else {
        b""
    };
    match (connection, offers.is_some()) {
        (b"", false) => {}
        (b"", true) => write_field(out, "Connection", b"upgrade"),
        (c, false) => write_field(out, "Connection", c),
        (c, true) => {
            out.extend_from_slice(b"Connection: ");
            out.extend_from_slice(c);
            out.extend_from_slice(b", upgrade\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Downstream {
        encoder,
        keep_alive,
        gzip,
    }
}

/// The fields that describe the app's bytes as they were, not compressed:
/// left out of a compressed response (a route may not add them either,
/// see `relay::begin`).
pub fn drops_when_compressed(name: &str) -> bool {
    [
        "accept-ranges",
        "content-md5",
        "digest",
        "content-digest",
        "repr-digest",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// Whether `res` is compressed under `g`: a 200, 403 or 404 (the statuses
/// nginx compresses) with a body, of a type `g` lists, not encoded
/// already, not a range, not shorter than `min-length`, and not marked
/// `no-transform` (RFC 9110 §7.7: a proxy must not change such content).
pub fn compresses(res: &Response<'_>, g: &GzipConfig) -> bool {
    let declared = |n: u64| n > 0 && n >= g.min_length;
    let long_enough = match res.framing {
        ResponseFraming::Length(n) => declared(n),
        ResponseFraming::Chunked | ResponseFraming::UntilClose => true,
        // No body: a 200, 403 or 404 without one answers a HEAD, whose head
        // is its GET's; the length it declares is the GET's body's.
        ResponseFraming::None => res
            .header("content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
            .is_none_or(declared),
    };
    matches!(res.status, 200 | 403 | 404)
        && long_enough
        && res.header("content-encoding").is_none()
        && res.header("content-range").is_none()
        && g.compresses_type(res.header("content-type"))
        && !res.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("cache-control") && has_token(h.value, b"no-transform")
        })
}

/// Append an interim (1xx) response head for the client: its status and
/// end-to-end fields (a `103`'s `Link`s), without hop-by-hop fields or
/// anything about a body.
pub fn write_interim(out: &mut Vec<u8>, res: &Response<'_>) {
    write_status_line(out, res);
    let connection = connection_of(res);
    for h in res.headers {
        // Not `Content-Length` nor `Transfer-Encoding` (hop-by-hop) either.
        if passes(h.name, connection.clone()) {
            write_field(out, h.name, h.value);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// `HTTP/1.1`, the status and its reason (the standard one when the
/// upstream gave none), and the line's end.
fn write_status_line(out: &mut Vec<u8>, res: &Response<'_>) {
    let mut code = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.format(res.status).as_bytes());
    out.push(b' ');
    let reason = match res.reason {
        "" => Status::from_code(res.status).map_or("", Status::reason),
        r => r,
    };
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The values of the response's `Connection` fields.
fn connection_of<'r>(res: &'r Response<'_>) -> impl Iterator<Item = &'r [u8]> + Clone {
    res.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value)
}

/// Whether an upstream's field named `name` goes on to the client as it
/// came: not its framing, `Date` or `Server` (ours are sent), nor a
/// hop-by-hop field (fixed, or named by `connection`, its response's).
fn passes<'v>(name: &str, connection: impl IntoIterator<Item = &'v [u8]>) -> bool {
    !(name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("date")
        || name.eq_ignore_ascii_case("server")
        || is_hop_by_hop(name, connection))
}

/// Whether the client gets the upstream's own field named `name`: one it
/// sent that passes. A field coreserve adds (HSTS, a route's `headers`)
/// gives way only to that.
pub fn sends_own(res: &Response<'_>, name: &str) -> bool {
    res.header(name).is_some() && passes(name, connection_of(res))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::upstream::{parse_response, Asked};
    use std::mem::MaybeUninit;

    const DATE: [u8; DATE_LEN] = *b"Sun, 06 Nov 1994 08:49:37 GMT";
    const KEEP: ClientSide = ClientSide {
        persistence: Persistence::KeepAlive,
        http10: false,
        reusable: true,
        redirect: None,
    };

    fn convert(raw: &str, head: bool, client: ClientSide) -> (String, Downstream) {
        convert_with(raw, head, client, None)
    }

    /// A Location or Refresh naming the server by the address it was sent
    /// as goes back as the client's origin, with the stripped prefix put
    /// back (nginx's `proxy_redirect default`); any other stays as it is.
    #[test]
    fn redirects_naming_the_server_are_mapped_back() {
        let redirect = Redirect {
            upstream: "127.0.0.1:3001",
            scheme: "https",
            host: Some("shop.example"),
            prefix: "/api",
        };
        let client = ClientSide {
            redirect: Some(redirect),
            ..KEEP
        };
        let field = |name: &str, value: &str| {
            let raw = format!("HTTP/1.1 302 Found\r\n{name}: {value}\r\nContent-Length: 0\r\n\r\n");
            let (head, _) = convert(&raw, false, client);
            let line = head
                .lines()
                .find(|l| {
                    l.to_ascii_lowercase()
                        .starts_with(&name.to_ascii_lowercase())
                })
                .unwrap()
                .to_string();
            line[name.len() + 2..].to_string()
        };
        for (sent, got) in [
            ("http://127.0.0.1:3001/pid", "https://shop.example/api/pid"),
            ("HTTP://127.0.0.1:3001", "https://shop.example/api/"),
            ("http://127.0.0.1:3001?a=1", "https://shop.example/api/?a=1"),
            (
                "https://127.0.0.1:3001/x#top",
                "https://shop.example/api/x#top",
            ),
            // Not the server: another port, a longer name, elsewhere, relative.
            ("http://127.0.0.1:30011/x", "http://127.0.0.1:30011/x"),
            (
                "http://127.0.0.1:3001.evil/x",
                "http://127.0.0.1:3001.evil/x",
            ),
            ("https://login.example/x", "https://login.example/x"),
            ("/pid", "/pid"),
            // Its other names on loopback, with its port (an app's own
            // `http://localhost:${PORT}`); not with another port.
            ("http://localhost:3001/x", "https://shop.example/api/x"),
            ("http://LOCALHOST:3001", "https://shop.example/api/"),
            ("http://[::1]:3001/x", "https://shop.example/api/x"),
            ("http://0.0.0.0:3001/x", "https://shop.example/api/x"),
            ("http://localhost:3002/x", "http://localhost:3002/x"),
            ("http://localhost:30011/x", "http://localhost:30011/x"),
            ("http://localhost/x", "http://localhost/x"),
        ] {
            assert_eq!(field("Location", sent), got, "{sent}");
        }
        // A server elsewhere has no other names here.
        let remote = Redirect {
            upstream: "10.0.0.5:3001",
            ..redirect
        };
        assert!(!remote.rewrite(b"http://localhost:3001/x", &mut Vec::new()));
        assert_eq!(
            field("Refresh", "5; url='http://127.0.0.1:3001/next'"),
            "5; url='https://shop.example/api/next'"
        );
        assert_eq!(field("Refresh", "5"), "5");
        // No Host from the client (HTTP/1.0): a relative reference.
        let relative = ClientSide {
            redirect: Some(Redirect {
                host: None,
                ..redirect
            }),
            ..KEEP
        };
        let raw =
            "HTTP/1.1 301 Moved\r\nLocation: http://127.0.0.1:3001/a\r\nContent-Length: 0\r\n\r\n";
        let (head, _) = convert(raw, false, relative);
        assert!(head.contains("\r\nLocation: /api/a\r\n"), "{head}");
        // Relative without a prefix, a path of `//` would name a host:
        // left as the app sent it.
        let bare = ClientSide {
            redirect: Some(Redirect {
                host: None,
                prefix: "",
                ..redirect
            }),
            ..KEEP
        };
        for path in ["//login", "/\\evil", "/\t/evil"] {
            let raw = format!("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:3001{path}\r\nContent-Length: 0\r\n\r\n");
            let (head, _) = convert(&raw, false, bare);
            let kept = format!("\r\nLocation: http://127.0.0.1:3001{path}\r\n");
            assert!(head.contains(&kept), "{head}");
        }
        // An app that says https keeps it, whatever the client's scheme.
        let plain = ClientSide {
            redirect: Some(Redirect {
                scheme: "http",
                ..redirect
            }),
            ..KEEP
        };
        let raw =
            "HTTP/1.1 302 Found\r\nLocation: https://127.0.0.1:3001/a\r\nContent-Length: 0\r\n\r\n";
        let (head, _) = convert(raw, false, plain);
        assert!(
            head.contains("\r\nLocation: https://shop.example/api/a\r\n"),
            "{head}"
        );
    }

    fn convert_with(
        raw: &str,
        head: bool,
        client: ClientSide,
        gzip: Option<&GzipConfig>,
    ) -> (String, Downstream) {
        let mut fields = [const { MaybeUninit::uninit() }; 32];
        let res = parse_response(raw.as_bytes(), &mut fields, 4096, Asked { head })
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let gzip = gzip.map(|config| Compression {
            config,
            accepted: true,
            weak_validator: false,
        });
        let d = write_head(&mut out, &res, DATE, client, false, gzip);
        (String::from_utf8(out).unwrap(), d)
    }

    #[test]
    fn a_compressed_response_says_so_and_loses_what_named_the_plain_bytes() {
        let g = GzipConfig::default();
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n\
                   Content-Length: 1000\r\nETag: \"abc\"\r\nAccept-Ranges: bytes\r\n\
                   Content-Digest: sha-256=:x:\r\nVary: Origin\r\n\r\n";
        let (head, d) = convert_with(raw, false, KEEP, Some(&g));
        assert!(d.gzip && d.keep_alive);
        assert_eq!(d.encoder, BodyEncoder::Chunked);
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: coreserve\r\n\
             Content-Type: application/json; charset=utf-8\r\nETag: W/\"abc\"\r\nVary: Origin\r\n\
             Content-Encoding: gzip\r\nVary: Accept-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        // A tag that is not one (unquoted, a lower-case `w/`) cannot be
        // made weak: it is dropped rather than name both bodies.
        for tag in ["abc", "w/\"abc\""] {
            let raw = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1000\r\n\
                 ETag: {tag}\r\n\r\n"
            );
            let (head, d) = convert_with(&raw, false, KEEP, Some(&g));
            assert!(d.gzip && !head.contains("ETag"), "{head}");
        }
        // A weak validator stays as it is; a Vary that covers it, too.
        let raw = "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nETag: W/\"x\"\r\n\
                   Vary: accept-encoding\r\n\r\n";
        let (head, d) = convert_with(raw, false, KEEP, Some(&g));
        assert!(d.gzip);
        assert!(head.contains("ETag: W/\"x\"\r\n"), "{head}");
        assert_eq!(head.matches("Vary").count(), 1, "{head}");
        // Not to HTTP/1.0 (its caches do not read Vary), nor to a client
        // that did not take it: the app's bytes, and the Vary that says
        // they depend on Accept-Encoding.
        let old = ClientSide {
            persistence: Persistence::KeepAliveHttp10,
            http10: true,
            ..KEEP
        };
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 300\r\n\
                   ETag: \"x\"\r\n\r\n";
        let (head, d) = convert_with(raw, false, old, Some(&g));
        assert_eq!((d.gzip, d.encoder), (false, BodyEncoder::Length(300)));
        assert!(head.contains("Vary: Accept-Encoding\r\n"), "{head}");
        assert!(head.contains("ETag: \"x\"\r\n"), "{head}");
        let mut fields = [const { MaybeUninit::uninit() }; 32];
        let res = parse_response(raw.as_bytes(), &mut fields, 4096, Asked { head: false })
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        let refused = Compression {
            config: &g,
            accepted: false,
            weak_validator: false,
        };
        let d = write_head(&mut out, &res, DATE, KEEP, false, Some(refused));
        let head = String::from_utf8(out).unwrap();
        assert_eq!((d.gzip, d.encoder), (false, BodyEncoder::Length(300)));
        assert!(
            head.contains("Vary: Accept-Encoding\r\n") && !head.contains("gzip"),
            "{head}"
        );
    }

    #[test]
    fn a_head_gets_the_head_its_get_would() {
        let g = GzipConfig::default();
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5000\r\n\
                   ETag: \"a\"\r\n\r\n";
        let (head, d) = convert_with(raw, true, KEEP, Some(&g));
        assert_eq!((d.gzip, d.encoder), (true, BodyEncoder::None));
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: coreserve\r\n\
             Content-Type: text/html\r\nETag: W/\"a\"\r\nContent-Encoding: gzip\r\n\
             Vary: Accept-Encoding\r\n\r\n"
        );
        // Too short, or of a type not compressed, as its GET.
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100\r\n\r\n";
        let (head, d) = convert_with(raw, true, KEEP, Some(&g));
        assert!(
            !d.gzip && head.contains("Content-Length: 100\r\n"),
            "{head}"
        );
        // `*` takes a response without a type.
        let all = GzipConfig {
            types: vec!["*".into()],
            ..GzipConfig::default()
        };
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n";
        assert!(convert_with(raw, false, KEEP, Some(&all)).1.gzip);
        assert!(!convert_with(raw, false, KEEP, Some(&g)).1.gzip);
    }

    #[test]
    fn a_304_to_a_compressed_copy_says_what_that_copy_said() {
        let g = GzipConfig::default();
        let raw = "HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\n\r\n";
        let mut fields = [const { MaybeUninit::uninit() }; 32];
        let res = parse_response(raw.as_bytes(), &mut fields, 4096, Asked { head: false })
            .unwrap()
            .unwrap();
        let head = |weak_validator: bool, accepted: bool| {
            let mut out = Vec::new();
            let c = Compression {
                config: &g,
                accepted,
                weak_validator,
            };
            let d = write_head(&mut out, &res, DATE, KEEP, false, Some(c));
            assert!(!d.gzip);
            String::from_utf8(out).unwrap()
        };
        // The client's copy came compressed (its tag is weak).
        let h = head(true, true);
        assert!(
            h.contains("ETag: W/\"abc\"\r\n") && h.contains("Vary: Accept-Encoding\r\n"),
            "{h}"
        );
        assert!(!h.contains("Content-Encoding"), "{h}");
        // A strong copy, or a client that does not take gzip: its tag as it
        // came, and the `Vary` its 200 says on this route.
        for h in [head(false, true), head(true, false)] {
            assert!(
                h.contains("ETag: \"abc\"\r\n") && h.contains("Vary: Accept-Encoding\r\n"),
                "{h}"
            );
        }
    }

    #[test]
    fn what_is_not_compressed() {
        let mut g = GzipConfig::default();
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 300\r\n";
        for (raw, why) in [
            (format!("{ok}\r\n"), ""),
            (format!("{ok}Content-Encoding: br\r\n\r\n"), "encoded already"),
            (format!("{ok}Content-Encoding: identity\r\n\r\n"), "encoded already"),
            (format!("{ok}Cache-Control: public, No-Transform\r\n\r\n"), "no-transform"),
            (format!("{ok}Content-Range: bytes 0-299/900\r\n\r\n"), "a range"),
            ("HTTP/1.1 206 Partial Content\r\nContent-Type: text/plain\r\nContent-Length: 300\r\n\r\n".into(), "206"),
            ("HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 300\r\n\r\n".into(), "201"),
            ("HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 300\r\n\r\n".into(), "a type not listed"),
            ("HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n".into(), "no type"),
            ("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 255\r\n\r\n".into(), "too short"),
            ("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n".into(), "empty"),
            ("HTTP/1.1 304 Not Modified\r\nContent-Type: text/plain\r\n\r\n".into(), "304"),
        ] {
            let (head, d) = convert_with(&raw, false, KEEP, Some(&g));
            assert_eq!(d.gzip, why.is_empty(), "{why}: {head}");
            assert_eq!(head.contains("gzip"), why.is_empty(), "{why}: {head}");
        }
        // Without a length, compressed whatever its size; `*` takes any type.
        let (_, d) = convert_with(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            KEEP,
            Some(&g),
        );
        assert!(d.gzip);
        g.types = vec!["*".into()];
        let raw =
            "HTTP/1.1 200 OK\r\nContent-Type: image/x-anything\r\nContent-Length: 300\r\n\r\n";
        assert!(convert_with(raw, false, KEEP, Some(&g)).1.gzip);
        // Never a tunnel's 101.
        let mut fields = [const { MaybeUninit::uninit() }; 32];
        let raw = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nContent-Type: text/plain\r\n\r\n";
        let res = parse_response(raw.as_bytes(), &mut fields, 4096, Asked { head: false })
            .unwrap()
            .unwrap();
        let gzip = Some(Compression {
            config: &g,
            accepted: true,
            weak_validator: false,
        });
        assert!(!write_head(&mut Vec::new(), &res, DATE, KEEP, true, gzip).gzip);
    }

    #[test]
    fn a_426_keeps_its_upgrade_named_in_connection_and_nothing_else_does() {
        let (head, _) = convert(
            "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Content-Length: 0\r\n\r\n",
            false,
            KEEP,
        );
        assert!(head.contains("\r\nUpgrade: websocket\r\n"), "{head}");
        assert!(head.contains("\r\nConnection: upgrade\r\n"), "{head}");
        let closing = ClientSide {
            persistence: Persistence::Close,
            ..KEEP
        };
        let (head, _) = convert(
            "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
            false,
            closing,
        );
        assert!(
            head.contains("\r\nConnection: close, upgrade\r\n"),
            "{head}"
        );
        let (head, _) = convert(
            "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n",
            false,
            KEEP,
        );
        assert!(!head.contains("Upgrade"), "{head}");
    }

    #[test]
    fn an_upstream_close_stays_upstream() {
        let (head, d) = convert(
            "HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nDate: x\r\n\
             Content-Length: 2\r\nServer: node\r\n\r\nok",
            false,
            KEEP,
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: coreserve\r\n\
             Content-Length: 2\r\n\r\n"
        );
        assert_eq!(d.encoder, BodyEncoder::Length(2));
        assert!(d.keep_alive);
    }

    #[test]
    fn unframed_bodies_go_out_chunked_or_close_delimited() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
        let (head, d) = convert(raw, false, KEEP);
        assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
        assert_eq!(d.encoder, BodyEncoder::Chunked);
        let old = ClientSide {
            persistence: Persistence::KeepAliveHttp10,
            http10: true,
            ..KEEP
        };
        let (head, d) = convert(raw, false, old);
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert!(!d.keep_alive);
    }

    #[test]
    fn bodiless_responses_keep_their_length_information() {
        let (head, d) = convert("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", true, KEEP);
        assert!(head.contains("Content-Length: 99\r\n"));
        assert_eq!(d.encoder, BodyEncoder::None);
        // Beside a Transfer-Encoding it is no length (RFC 9112 §6.3).
        for both in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n",
        ] {
            let (head, _) = convert(both, true, KEEP);
            assert!(!head.contains("Content-Length"), "{head}");
            assert!(!head.contains("Transfer-Encoding"), "{head}");
        }
        let (head, _) = convert("HTTP/1.1 204 No Content\r\n\r\n", false, KEEP);
        assert!(!head.contains("Content-Length"), "{head}");
        let (head, d) = convert(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            false,
            ClientSide {
                reusable: false,
                ..KEEP
            },
        );
        assert!(head.contains("Connection: close\r\n") && !d.keep_alive);
    }
}
