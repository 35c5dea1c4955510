//! Request heads: finding where a head ends, parsing it with httparse, and
//! checking its framing (RFC 9112 §3, §6) before any handler sees it.
//!
//! Nothing here does I/O or allocates (except `Request::list` joining a
//! field sent as several lines): the caller owns the bytes and the header
//! array, and `Request` borrows from both.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use super::error::ParseError;

/// The largest `max-headers` accepted; the header array lives on the stack.
pub const MAX_HEADERS_LIMIT: usize = 256;

/// Size limits applied while the head is read and parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Bytes of the whole head (request line, fields, blank line).
    pub max_header_bytes: usize,
    /// Bytes of the request target.
    pub max_uri_bytes: usize,
    /// Number of header fields, at most `MAX_HEADERS_LIMIT`.
    pub max_headers: usize,
}

/// The protocol versions this server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: close after the response unless the client asks to keep alive.
    Http10,
    /// HTTP/1.1: persistent unless `Connection: close`.
    Http11,
}

impl Version {
    /// As a request line spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// Where the minor digit of `head`'s request line version is, when that
/// version is HTTP/1 with a minor above 1 (`HTTP/1.2`): a client of a later
/// HTTP/1 that this server answers as HTTP/1.1 (RFC 9110 §2.5).
pub fn later_minor(head: &[u8]) -> Option<usize> {
    let line_end = memchr::memchr(b'\n', head)?;
    let line = &head[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.get(line.len().checked_sub(9)?..)? {
        [b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'] => Some(line.len() - 1),
        _ => None,
    }
}

/// Whether `v` is an HTTP version as RFC 9112 §2.3 writes one (`HTTP/1.1`,
/// `HTTP/2.0`), or as HTTP/2 and 3 name themselves (`HTTP/2`): a version
/// this server may not speak, but a client speaking HTTP. `HTTP/1` alone
/// is no version (HTTP/1 always has its minor digit): a bad request line.
pub fn is_version_text(v: &[u8]) -> bool {
    match v {
        [b'H', b'T', b'T', b'P', b'/', major, rest @ ..] if major.is_ascii_digit() => match rest {
            [] => *major >= b'2',
            rest => matches!(rest, [b'.', b'0'..=b'9']),
        },
        _ => false,
    }
}

/// Request methods, recognised once so handlers can match on an enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD: answered like GET, without the body.
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
    /// PATCH
    Patch,
    /// TRACE
    Trace,
    /// Any other token; `Request::method_str` has it.
    Other,
}

impl Method {
    fn parse(s: &str) -> Method {
        // RFC 9110 §9.1: method names are case-sensitive.
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            "TRACE" => Method::Trace,
            _ => Method::Other,
        }
    }
}

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// A parsed, validated request head. Borrows the connection's input buffer.
#[derive(Debug)]
pub struct Request<'a> {
    /// The method, recognised.
    pub method: Method,
    /// The method as sent.
    pub method_str: &'a str,
    /// The request target exactly as sent.
    pub target: &'a str,
    /// The path of the target, without query; `*` for asterisk-form and `/`
    /// for an absolute-form target with no path.
    pub path: &'a str,
    /// The query, without the `?`.
    pub query: Option<&'a str>,
    /// The authority: from an absolute-form target when there is one (RFC 9112
    /// §3.2.2), otherwise from the Host header.
    pub host: Option<&'a str>,
    /// The protocol version.
    pub version: Version,
    /// Every header field, in order.
    pub headers: &'a [httparse::Header<'a>],
    /// How the body is framed.
    pub body: BodyFraming,
    /// Whether the client allows the connection to stay open after this response.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

impl<'a> Request<'a> {
    /// The value of the first header field with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// A list-valued field (`If-None-Match`, `Accept-Encoding`): every
    /// line of it joined with commas, which is what several field lines
    /// mean (RFC 9110 §5.3). Borrowed when there is one line; lines that
    /// are not UTF-8 are left out.
    pub fn list(&self, name: &str) -> Option<Cow<'a, str>> {
        let mut lines = self
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok());
        let mut all = Cow::Borrowed(lines.next()?);
        for line in lines {
            let all = all.to_mut();
            all.push_str(", ");
            all.push_str(line);
        }
        Some(all)
    }

    /// Whether the response must omit its body (HEAD).
    pub fn is_head(&self) -> bool {
        self.method == Method::Head
    }

    /// The target's path as the client sent it, escapes and dot segments
    /// and all (`path` is what routing made of it, once a route saw it):
    /// an absolute-form target's without its scheme and authority, `*` for
    /// asterisk-form.
    pub fn path_as_sent(&self) -> &'a str {
        split_target(self.target, self.method).map_or(self.path, |t| t.path)
    }
}

/// Finds the end of a request head as bytes arrive, without rescanning what
/// it has already seen (a client sending one byte at a time costs O(n), not
/// O(n²) re-parses).
#[derive(Debug, Default)]
pub struct HeadScanner {
    scanned: usize,
}

impl HeadScanner {
    /// The length of the head (through its blank line) if `buf` holds all of it.
    /// `buf` must start at the request line and only grow between calls.
    pub fn find_end(&mut self, buf: &[u8]) -> Option<usize> {
        let from = self.scanned;
        self.scanned = buf.len();
        for i in memchr::memchr_iter(b'\n', &buf[from..]).map(|i| i + from) {
            // A blank line is LF LF or LF CR LF (RFC 9112 §2.2 lets a recipient
            // accept a bare LF as a line terminator; httparse does).
            if (i >= 1 && buf[i - 1] == b'\n') || (i >= 2 && &buf[i - 2..i] == b"\n\r") {
                self.scanned = 0;
                return Some(i + 1);
            }
        }
        None
    }

    /// How much of the current head has been scanned: the bytes after it
    /// are what arrived since.
    pub fn scanned(&self) -> usize {
        self.scanned
    }

    /// Whether nothing of the current head has been scanned yet.
    pub fn is_fresh(&self) -> bool {
        self.scanned == 0
    }

    /// Forget progress: the next head starts fresh.
    pub fn reset(&mut self) {
        self.scanned = 0;
    }
}

/// The error a head not yet whole already earns: what httparse refuses in
/// its whole lines (through the last line feed: a request line or a field
/// that cannot be one, a CR inside a line, a version that is not HTTP/1),
/// as the whole head would get it (`parse`), so that it is answered at
/// once, as nginx does, rather than after `header-timeout`. Whole lines
/// only, so the answer is the same however the bytes arrived. None while it
/// may still become a good head (a later HTTP/1 minor version is one: the
/// session reads it as 1.1).
pub fn refused_early(buf: &[u8], limits: &HeadLimits) -> Option<ParseError> {
    let buf = &buf[..judgeable(buf)?];
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS_LIMIT];
    let max = limits.max_headers.min(MAX_HEADERS_LIMIT);
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers[..max]) {
        Ok(_) => None,
        Err(httparse::Error::Version) if later_minor(buf).is_some() => None,
        Err(e) => Some(map_httparse_error(e, buf)),
    }
}

/// How much of a head not yet whole can be judged now (a request's or an
/// upstream's response's): through its last line feed, or through a bare
/// CR and the byte after it, which no byte to come makes a line end (RFC
/// 9112 §2.2), so that the line is refused now, as httparse refuses it in
/// a whole head. None while no line has ended.
pub fn judgeable(buf: &[u8]) -> Option<usize> {
    match bare_cr(buf, 0) {
        Some(cr) => Some(cr + 2),
        None => Some(memchr::memrchr(b'\n', buf)? + 1),
    }
}

/// Where in `buf` the first CR at or after `from` is that a byte other
/// than LF follows: a bare CR, which ends no line.
pub fn bare_cr(buf: &[u8], from: usize) -> Option<usize> {
    memchr::memchr_iter(b'\r', buf.get(from..)?)
        .map(|i| i + from)
        .find(|&i| buf.get(i + 1).is_some_and(|&b| b != b'\n'))
}

/// Which error a head that outgrew `max-header-bytes` gets: still inside the
/// request line means the target is too long (414), otherwise the fields are (431).
pub fn overflow_error(buf: &[u8]) -> ParseError {
    if memchr::memchr(b'\n', buf).is_none() {
        ParseError::UriTooLong
    } else {
        ParseError::HeadersTooLarge
    }
}

/// Whether the start of a head (whole or not) holds a request target
/// longer than `max_uri` after a well-formed method: a 414 whatever
/// follows, judged on the length alone and before anything else of the
/// head, so that the answer is the same however the bytes arrive, and
/// comes as soon as they show it (nginx's too), not at `header-timeout`.
pub fn target_outgrew(start: &[u8], max_uri: usize) -> bool {
    let line = memchr::memchr(b'\n', start).map_or(start, |end| &start[..end]);
    if line.len() <= max_uri {
        return false;
    }
    let Some(sp) = memchr::memchr(b' ', line) else {
        return false;
    };
    let target = &line[sp + 1..];
    let len = target
        .iter()
        .position(|&b| b == b' ' || b == b'\r')
        .unwrap_or(target.len());
    len > max_uri && line[..sp].iter().all(|&b| is_token_byte(b))
}

/// Parse and validate a complete head (`buf` ends with its blank line).
pub fn parse<'a>(
    buf: &'a [u8],
    headers: &'a mut [MaybeUninit<httparse::Header<'a>>],
    limits: &HeadLimits,
) -> Result<Request<'a>, ParseError> {
    let max = limits.max_headers.min(headers.len());
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers[..max]) {
        Ok(httparse::Status::Complete(_)) => {}
        // The scanner saw a blank line, so a partial parse means the blank line
        // came before a request line: nothing but leading line breaks.
        Ok(httparse::Status::Partial) => return Err(ParseError::RequestLine),
        Err(e) => return Err(map_httparse_error(e, buf)),
    }
    let httparse::Request {
        method,
        path,
        version,
        headers,
    } = req;
    let (Some(method_str), Some(target), Some(version)) = (method, path, version) else {
        return Err(ParseError::RequestLine);
    };
    let version = if version == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    if target.len() > limits.max_uri_bytes {
        return Err(ParseError::UriTooLong);
    }
    let method = Method::parse(method_str);
    if method_str == "CONNECT" {
        return Err(ParseError::MethodNotImplemented);
    }
    let target_parts = split_target(target, method)?;
    let fields = scan_fields(headers).map_err(|e| match e {
        // Any Transfer-Encoding in HTTP/1.0 is a 400, whatever it names.
        ParseError::UnsupportedTransferCoding | ParseError::ChunkedNotLast
            if version == Version::Http10 =>
        {
            ParseError::TransferEncodingInHttp10
        }
        e => e,
    })?;

    // RFC 9112 §3.2: a 1.1 request without exactly one Host is a 400.
    if version == Version::Http11 && fields.host.is_none() {
        return Err(ParseError::MissingHost);
    }
    let host = target_parts.authority.or(fields.host);
    // An empty Host names no host: the target URI it makes has none, which
    // a recipient must refuse (RFC 9110 §4.2.1). Beside an absolute-form
    // target, whose authority counts, it is what a client sends (§7.2).
    if host == Some("") {
        return Err(ParseError::Target);
    }

    if version == Version::Http10 && fields.transfer != Transfer::None {
        return Err(ParseError::TransferEncodingInHttp10);
    }
    let body = match (fields.content_length, fields.transfer) {
        (Some(_), Transfer::Chunked | Transfer::Unsupported) => {
            return Err(ParseError::LengthAndTransferEncoding)
        }
        (_, Transfer::Unsupported) => return Err(ParseError::UnsupportedTransferCoding),
        (None, Transfer::Chunked) => BodyFraming::Chunked,
        (Some(0), Transfer::None) | (None, Transfer::None) => BodyFraming::None,
        (Some(n), Transfer::None) => BodyFraming::Length(n),
    };

    let keep_alive = match version {
        Version::Http11 => !fields.conn_close,
        Version::Http10 => fields.conn_keep_alive && !fields.conn_close,
    };
    // RFC 9110 §10.1.1: a server must not send 100 Continue to an HTTP/1.0 client.
    let expect_continue = fields.expect_continue && version == Version::Http11;

    Ok(Request {
        method,
        method_str,
        target,
        path: target_parts.path,
        query: target_parts.query,
        host,
        version,
        headers,
        body,
        keep_alive,
        expect_continue,
    })
}

fn map_httparse_error(e: httparse::Error, buf: &[u8]) -> ParseError {
    match e {
        httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
        httparse::Error::HeaderName | httparse::Error::HeaderValue => ParseError::HeaderField,
        httparse::Error::Version | httparse::Error::NewLine => match request_line_version(buf) {
            VersionSeen::Supported if e == httparse::Error::NewLine => ParseError::HeaderField,
            VersionSeen::Unsupported => ParseError::Version,
            _ => ParseError::RequestLine,
        },
        _ => ParseError::RequestLine,
    }
}

/// What the request line's last word says about the version.
enum VersionSeen {
    /// `HTTP/1.0` or `HTTP/1.1`: the request line is fine, so a line-ending
    /// error is in a header line (a bare CR, say): 400.
    Supported,
    /// Well formed but another version (`HTTP/2.0`, the h2 preface's
    /// `PRI * HTTP/2.0`, `HTTP/3`): 505 rather than 400, the client speaks
    /// HTTP, just not this one. (`HTTP/1.2` is one too, which the session
    /// answers as HTTP/1.1: `later_minor`.)
    Unsupported,
    /// Not an HTTP version at all.
    Malformed,
}

fn request_line_version(buf: &[u8]) -> VersionSeen {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let line = &line[..memchr::memchr(b'\n', line).unwrap_or(line.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(sp) = memchr::memrchr(b' ', line) else {
        return VersionSeen::Malformed;
    };
    match &line[sp + 1..] {
        b"HTTP/1.0" | b"HTTP/1.1" => VersionSeen::Supported,
        v if is_version_text(v) => VersionSeen::Unsupported,
        _ => VersionSeen::Malformed,
    }
}

struct TargetParts<'a> {
    path: &'a str,
    query: Option<&'a str>,
    authority: Option<&'a str>,
}

/// Split a request target into path, query and authority (RFC 9112 §3.2).
fn split_target(target: &str, method: Method) -> Result<TargetParts<'_>, ParseError> {
    let (authority, rest) = if target.starts_with('/') {
        (None, target)
    } else if target == "*" {
        if method != Method::Options {
            return Err(ParseError::Target);
        }
        return Ok(TargetParts {
            path: "*",
            query: None,
            authority: None,
        });
    } else {
        let (authority, rest) = split_absolute(target).ok_or(ParseError::Target)?;
        if authority.is_empty() || authority.contains('@') || !valid_host(authority.as_bytes()) {
            return Err(ParseError::Target);
        }
        (Some(authority), rest)
    };
    // A fragment is never sent by a conforming client; drop it if one is.
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    Ok(TargetParts {
        path,
        query,
        authority,
    })
}

/// An absolute-form target (`http://` or `https://`, in any case) split
/// into its authority, unchecked, and what follows it.
pub fn split_absolute(target: &str) -> Option<(&str, &str)> {
    let after_scheme = strip_prefix_ignore_case(target, "http://")
        .or_else(|| strip_prefix_ignore_case(target, "https://"))?;
    let end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    Some(after_scheme.split_at(end))
}

/// `s` without `prefix`, compared in any (ASCII) case.
pub fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Host is `uri-host [":" port]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a
/// reg-name or IPv4 address, or an IPv6 address in brackets, then digits
/// after a colon. Anything else (spaces, slashes, controls, a port that is
/// no number, a bare or unclosed IPv6 literal, an empty label as in `a..b`,
/// `..`, `.` or `.example.com`) is refused (RFC 9112 §3.2: 400), so
/// that host matching, logging and the `Host` an upstream gets see only a
/// host.
pub fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.strip_prefix(b"[") {
        Some(rest) => {
            let Some(close) = rest.iter().position(|&b| b == b']') else {
                return false;
            };
            let literal = std::str::from_utf8(&rest[..close]).ok();
            if literal
                .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
                .is_none()
            {
                return false;
            }
            (&b""[..], &rest[close + 1..])
        }
        None => match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &b""[..]),
        },
    };
    let port_ok = match port {
        [] => true,
        // A port needs a host (RFC 9110 §4.2.1: `:80` names nothing).
        [b':', digits @ ..] => {
            (!host.is_empty() || value.starts_with(b"[")) && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    port_ok
        && !host.starts_with(b".")
        && !host.windows(2).any(|w| w == b"..")
        && host
            .iter()
            .all(|&b| crate::http::path::is_unreserved_or_sub_delim(b) || b == b'%')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Transfer {
    #[default]
    None,
    Chunked,
    Unsupported,
}

#[derive(Default)]
struct Fields<'a> {
    host: Option<&'a str>,
    content_length: Option<u64>,
    transfer: Transfer,
    conn_close: bool,
    conn_keep_alive: bool,
    expect_continue: bool,
}

/// One pass over the fields for everything that decides framing and
/// persistence; every rule broken is a typed error.
fn scan_fields<'a>(headers: &[httparse::Header<'a>]) -> Result<Fields<'a>, ParseError> {
    let mut f = Fields::default();
    let mut hosts = 0;
    let mut codings = Codings::default();
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if hosts > 1 {
                return Err(ParseError::DuplicateHost);
            }
            let v = trim(h.value);
            if !valid_host(v) {
                return Err(ParseError::Target);
            }
            // valid_host admits only ASCII.
            f.host = std::str::from_utf8(v).ok();
        } else if name.eq_ignore_ascii_case("content-length") {
            // RFC 9112 §6.3: several Content-Length fields, or a list in one,
            // are framing errors we refuse rather than guess at.
            if f.content_length.is_some() {
                return Err(ParseError::ContentLength);
            }
            f.content_length = Some(parse_content_length(h.value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.add(h.value)?;
            f.transfer = codings.framing();
        } else if name.eq_ignore_ascii_case("connection") {
            for token in list_items(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    f.conn_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    f.conn_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            // A list (RFC 9110 §10.1.1): an empty one expects nothing.
            for item in list_items(h.value) {
                if item.eq_ignore_ascii_case(b"100-continue") {
                    f.expect_continue = true;
                } else {
                    return Err(ParseError::Expectation);
                }
            }
        }
    }
    Ok(f)
}

/// The transfer codings seen so far across every Transfer-Encoding field.
#[derive(Default)]
pub(super) struct Codings {
    chunked_seen: bool,
    last_is_chunked: bool,
    other: bool,
}

impl Codings {
    pub(super) fn add(&mut self, value: &[u8]) -> Result<(), ParseError> {
        let mut any = false;
        for coding in list_items(value) {
            any = true;
            // A coding may carry parameters (`gzip;q=1` is not valid here, but
            // transfer-parameters are): only the name decides.
            let name = trim(coding.split(|&b| b == b';').next().unwrap_or(coding));
            if name.eq_ignore_ascii_case(b"chunked") && name.len() != coding.len() {
                // chunked takes no parameters (RFC 9112 §7); a front end that
                // ignores `chunked;x` would frame the body differently.
                return Err(ParseError::UnsupportedTransferCoding);
            }
            if name.eq_ignore_ascii_case(b"chunked") {
                if self.chunked_seen {
                    return Err(ParseError::ChunkedNotLast);
                }
                self.chunked_seen = true;
                self.last_is_chunked = true;
            } else {
                if self.chunked_seen {
                    return Err(ParseError::ChunkedNotLast);
                }
                self.other = true;
                self.last_is_chunked = false;
            }
        }
        if !any {
            // An empty Transfer-Encoding names no coding at all.
            return Err(ParseError::UnsupportedTransferCoding);
        }
        Ok(())
    }

    pub(super) fn framing(&self) -> Transfer {
        if self.other {
            Transfer::Unsupported
        } else if self.last_is_chunked {
            Transfer::Chunked
        } else {
            Transfer::None
        }
    }
}

/// The largest Content-Length taken: a signed 64-bit size's, nginx's
/// (`off_t`) and most clients' limit (curl refuses more, so a larger length
/// passed on would break the response at the client).
pub(super) const MAX_CONTENT_LENGTH: u64 = i64::MAX as u64;

/// A Content-Length value: one or more digits, nothing else (no sign, no
/// list), at most `MAX_CONTENT_LENGTH`.
pub(super) fn parse_content_length(value: &[u8]) -> Result<u64, ParseError> {
    let v = trim(value);
    if v.is_empty() {
        return Err(ParseError::ContentLength);
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(ParseError::ContentLength);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .filter(|&n| n <= MAX_CONTENT_LENGTH)
            .ok_or(ParseError::ContentLength)?;
    }
    Ok(n)
}

/// Whether the comma-separated field value `value` has `token` among its
/// elements, in any case (`Connection: Upgrade`, `Cache-Control:
/// no-transform`, `Vary: accept-encoding`).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    list_items(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// The non-empty elements of a comma-separated field value (RFC 9110 §5.6.1).
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|s| !s.is_empty())
}

pub(super) fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Whether `b` is an RFC 9110 token character: what a method is made of
/// (so a request's first byte must be one).
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether two field names are one field to every application: equal in
/// any case, with `_` and `-` taken as the same (CGI-style servers such as
/// PHP-FPM, WSGI and Rack read both as one `HTTP_` variable).
pub fn same_field(a: &str, b: &str) -> bool {
    let norm = |c: u8| match c {
        b'_' => b'-',
        c => c.to_ascii_lowercase(),
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| norm(x) == norm(y))
}

/// Whether `name` is a field about one connection whatever the message
/// says (RFC 9110 §7.6.1): `Connection`, `Keep-Alive`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`, `Proxy-Connection`, every other
/// `Proxy-*` and `HTTP2-Settings`, in any spelling `same_field` takes for
/// them.
pub fn is_connection_field(name: &str) -> bool {
    const FIXED: [&str; 8] = [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        // The h2c upgrade's settings, for one connection only (RFC 9113
        // §3.2.1 has the client name it in Connection; not all do).
        "http2-settings",
    ];
    FIXED.iter().any(|f| same_field(name, f))
        || name.len() > 6 && name.get(..6).is_some_and(|p| same_field(p, "proxy-"))
}

#[cfg(test)]
mod tests;
