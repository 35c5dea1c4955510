//! The client side of HTTP/1.1, for talking to an upstream server: writing
//! a request head, parsing a response head, and deciding how the response
//! body is framed (RFC 9112 §6.3) and whether the connection can be used
//! again. Like the rest of `http`, no I/O: the proxy above feeds bytes in
//! and writes what comes out.
//!
//! SECURITY: an upstream's message is never forwarded as it came. Its
//! framing is decided here, strictly (two Content-Length fields, a
//! Content-Length with Transfer-Encoding, a transfer coding other than
//! chunked: all refused), the body is decoded with `body::BodyDecoder`, and
//! the client gets the payload re-framed by `encode::BodyEncoder`; the
//! hop-by-hop fields of either side never cross (`is_hop_by_hop`).

use std::mem::MaybeUninit;

use super::body::BodyDecoder;
use super::error::ParseError;
use super::parse::{
    has_token, is_connection_field, list_items, parse_content_length, trim, Codings, Transfer,
    Version,
};

/// Why an upstream's response head was refused (the client gets 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Not an HTTP/1.x status line and header fields.
    #[error("malformed response head")]
    Malformed,
    /// A response head larger than the limit.
    #[error("response head too large")]
    HeadTooLarge,
    /// More header fields than the limit.
    #[error("too many header fields in the response")]
    TooManyHeaders,
    /// An invalid or repeated Content-Length.
    #[error("invalid Content-Length in the response")]
    ContentLength,
    /// Content-Length and Transfer-Encoding together.
    #[error("Content-Length together with Transfer-Encoding in the response")]
    LengthAndTransferEncoding,
    /// A transfer coding other than chunked, or chunked not last.
    #[error("unsupported transfer coding in the response")]
    TransferCoding,
}

impl From<ParseError> for UpstreamError {
    fn from(e: ParseError) -> UpstreamError {
        match e {
            ParseError::ContentLength => UpstreamError::ContentLength,
            ParseError::UnsupportedTransferCoding | ParseError::ChunkedNotLast => {
                UpstreamError::TransferCoding
            }
            _ => UpstreamError::Malformed,
        }
    }
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body: a response to HEAD, 1xx, 204, 304.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

impl ResponseFraming {
    /// A decoder for this body (None for no body, or one read until the
    /// connection closes: every byte until then is payload).
    pub fn decoder(self, max_trailer: usize) -> Option<BodyDecoder> {
        use super::parse::BodyFraming;
        match self {
            ResponseFraming::Length(n) => {
                BodyDecoder::new(BodyFraming::Length(n), u64::MAX, max_trailer)
            }
            ResponseFraming::Chunked => {
                BodyDecoder::new(BodyFraming::Chunked, u64::MAX, max_trailer)
            }
            ResponseFraming::None | ResponseFraming::UntilClose => None,
        }
    }
}

/// A parsed response head. Borrows the buffer it was parsed from.
#[derive(Debug)]
pub struct Response<'a> {
    /// The status code.
    pub status: u16,
    /// The reason phrase as sent.
    pub reason: &'a str,
    /// The protocol version.
    pub version: Version,
    /// Every header field, in order.
    pub headers: &'a [httparse::Header<'a>],
    /// Bytes of the head, its blank line included: the body starts there.
    pub head_len: usize,
    /// How the body is delimited.
    pub framing: ResponseFraming,
    /// Whether the connection may carry another request after this
    /// response's body (HTTP/1.1 without `Connection: close`, HTTP/1.0 with
    /// `keep-alive`, and a body that ends by itself).
    pub reusable: bool,
}

impl Response<'_> {
    /// An interim response (1xx other than 101): the final one follows on
    /// the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// The value of the first field named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// What the response answers: it decides whether a body can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    /// The request was HEAD: the response has no body whatever it says.
    pub head: bool,
}

/// Parse a response head at the start of `buf`, its fields into `headers`
/// (whose length is the most fields accepted). `Ok(None)` while it is
/// incomplete (unless `buf` already holds `max_head` bytes: then it is too
/// large).
pub fn parse_response<'a>(
    buf: &'a [u8],
    headers: &'a mut [MaybeUninit<httparse::Header<'a>>],
    max_head: usize,
    asked: Asked,
) -> Result<Option<Response<'a>>, UpstreamError> {
    let mut res = httparse::Response::new(&mut []);
    // Uninitialised: zeroing a field array costs more than most parses.
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, headers);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(UpstreamError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(UpstreamError::TooManyHeaders),
        Err(_) => return Err(UpstreamError::Malformed),
    };
    if head_len > max_head {
        return Err(UpstreamError::HeadTooLarge);
    }
    let httparse::Response {
        version,
        code,
        reason,
        headers,
    } = res;
    let (Some(version), Some(status)) = (version, code) else {
        return Err(UpstreamError::Malformed);
    };
    // httparse takes any three digits; below 100 is no status (RFC 9110
    // §15), and would be relayed as a two-digit one.
    if status < 100 {
        return Err(UpstreamError::Malformed);
    }
    let version = if version == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    let mut content_length = None;
    let mut codings = Codings::default();
    let mut te = false;
    let (mut close, mut keep_alive) = (false, false);
    for h in headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(UpstreamError::ContentLength);
            }
            content_length = Some(parse_content_length(h.value)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            codings.add(h.value)?;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in list_items(h.value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    // RFC 9112 §6.3, in its order.
    let no_body = asked.head || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if no_body {
        ResponseFraming::None
    } else if te {
        if content_length.is_some() {
            return Err(UpstreamError::LengthAndTransferEncoding);
        }
        match codings.framing() {
            Transfer::Chunked => ResponseFraming::Chunked,
            _ => return Err(UpstreamError::TransferCoding),
        }
    } else {
        match content_length {
            Some(n) => ResponseFraming::Length(n),
            None => ResponseFraming::UntilClose,
        }
    };
    let persistent = match version {
        Version::Http11 => !close,
        // Transfer-Encoding in an HTTP/1.0 message may be framing a 1.0
        // hop did not understand: the connection ends after it (RFC 9112
        // §6.1).
        Version::Http10 => keep_alive && !close && !te,
    };
    Ok(Some(Response {
        status,
        reason: reason.unwrap_or(""),
        version,
        headers,
        head_len,
        framing,
        // A switch of protocols hands the connection over for good.
        reusable: persistent && framing != ResponseFraming::UntilClose && status != 101,
    }))
}

/// Whether a field is hop-by-hop (RFC 9110 §7.6.1): it concerns one
/// connection and is never forwarded. `connection` is the message's
/// Connection field values, whose tokens name more such fields.
pub fn is_hop_by_hop<'v>(name: &str, connection: impl IntoIterator<Item = &'v [u8]>) -> bool {
    if is_connection_field(name) {
        return true;
    }
    connection
        .into_iter()
        .any(|v| has_token(v, name.as_bytes()))
}

/// Whether the field `name` is the one named `lower` (lowercase), in any
/// case and with `_` taken for `-`. CGI-style servers (PHP-FPM, WSGI,
/// Rack) read `X_Forwarded_For` and `X-Forwarded-For` as one variable, so
/// a field the proxy removes or writes itself must go in both spellings:
/// else a client could forge, beside the proxy's value, one the
/// application takes for it.
pub fn is_field(name: &str, lower: &str) -> bool {
    name.len() == lower.len()
        && name
            .bytes()
            .zip(lower.bytes())
            .all(|(n, l)| n.to_ascii_lowercase() == l || n == b'_' && l == b'-')
}

/// A `Max-Forwards` value (RFC 9110 §7.6.2: `1*DIGIT`), or `None` for one
/// that is not a number (such a field is passed on as it came).
pub fn max_forwards(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Past u64, as good as unlimited.
    Some(std::str::from_utf8(value).ok()?.parse().unwrap_or(u64::MAX))
}

/// Append a request line and the given header fields to `out`, ending the
/// head: `method target HTTP/1.1`. Values are written as given (they come
/// from a parsed message or from the configuration, both already checked).
pub fn write_request_head<'h>(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        write_field(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Append one header field line.
pub fn write_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(trim(value));
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: Asked = Asked { head: false };

    fn parse(
        buf: &[u8],
        asked: Asked,
    ) -> Result<Option<(u16, ResponseFraming, bool, usize)>, UpstreamError> {
        let mut headers = [const { MaybeUninit::uninit() }; 32];
        parse_response(buf, &mut headers, 8192, asked)
            .map(|r| r.map(|r| (r.status, r.framing, r.reusable, r.head_len)))
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        let ok = |buf: &[u8], asked| parse(buf, asked).unwrap().unwrap();
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", GET),
            (200, ResponseFraming::Length(5), true, 38)
        );
        assert_eq!(
            ok(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                GET
            )
            .1,
            ResponseFraming::Chunked
        );
        // No length, no chunking: the body ends when the connection does.
        let until_close = ok(b"HTTP/1.1 200 OK\r\n\r\n", GET);
        assert_eq!(
            (until_close.1, until_close.2),
            (ResponseFraming::UntilClose, false)
        );
        // Whatever they say, these have no body.
        for head in [
            &b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"[..],
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
        ] {
            assert_eq!(ok(head, GET).1, ResponseFraming::None);
        }
        let head = Asked { head: true };
        let r = ok(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", head);
        assert_eq!((r.1, r.2), (ResponseFraming::None, true));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let err = |buf: &[u8]| parse(buf, GET).unwrap_err();
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            UpstreamError::ContentLength
        );
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"),
            UpstreamError::ContentLength
        );
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            UpstreamError::ContentLength
        );
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            UpstreamError::LengthAndTransferEncoding
        );
        for te in [
            "gzip",
            "chunked, gzip",
            "chunked, chunked",
            "chunked;x=1",
            "",
        ] {
            let head = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(
                err(head.as_bytes()),
                UpstreamError::TransferCoding,
                "{te:?}"
            );
        }
        assert_eq!(err(b"HTTP/2 200\r\n\r\n"), UpstreamError::Malformed);
        assert_eq!(err(b"garbage\r\n\r\n"), UpstreamError::Malformed);
        assert_eq!(
            err(b"HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\n"),
            UpstreamError::Malformed
        );
    }

    #[test]
    fn incomplete_heads_wait_until_the_limit() {
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nContent-Le", GET), Ok(None));
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(8192, b'a');
        assert_eq!(parse(&big, GET), Err(UpstreamError::HeadTooLarge));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..40 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many, GET), Err(UpstreamError::TooManyHeaders));
    }

    #[test]
    fn persistence_and_interim_responses() {
        let reusable = |buf: &[u8]| parse(buf, GET).unwrap().unwrap().2;
        assert!(!reusable(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!reusable(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(reusable(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
        // Chunked in an HTTP/1.0 message: read as chunked, then closed.
        assert!(!reusable(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!reusable(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
        ));
        let mut headers = [const { MaybeUninit::uninit() }; 8];
        let r = parse_response(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            &mut headers,
            8192,
            GET,
        )
        .unwrap()
        .unwrap();
        assert!(r.is_interim());
        assert_eq!(r.header("link"), Some(&b"</a>"[..]));
        let mut headers = [const { MaybeUninit::uninit() }; 8];
        let r = parse_response(
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            &mut headers,
            8192,
            GET,
        )
        .unwrap()
        .unwrap();
        assert!(!r.is_interim());
    }

    #[test]
    fn hop_by_hop_fields_include_those_connection_names() {
        let connection: [&[u8]; 2] = [b"keep-alive, X-Secret", b" close "];
        for name in [
            "Connection",
            "keep-alive",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "Proxy-Authorization",
            "proxy-connection",
            "x-secret",
            "Close",
            "Keep_Alive",
            "Transfer_Encoding",
            "Proxy_Authorization",
        ] {
            assert!(is_hop_by_hop(name, connection), "{name}");
        }
        for name in [
            "Host",
            "Content-Length",
            "X-Forwarded-For",
            "Proxy",
            "Cookie",
            "Keep_Alive_X",
            "X_Secret",
        ] {
            assert!(!is_hop_by_hop(name, connection), "{name}");
        }
    }

    #[test]
    fn field_names_match_in_any_case_and_with_underscores() {
        assert!(is_field("X-Forwarded-For", "x-forwarded-for"));
        assert!(is_field("x_FORWARDED_for", "x-forwarded-for"));
        assert!(!is_field("X-Forwarded-Fo", "x-forwarded-for"));
        assert!(!is_field("X-Forwarded_Forr", "x-forwarded-for"));
        // Only `_` stands for `-`, not the other way round.
        assert!(!is_field("x-real-ip", "x_real_ip"));
    }

    #[test]
    fn a_written_request_head_parses_back() {
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            "POST",
            "/api?x=1",
            [("Host", &b"app"[..]), ("Content-Length", &b" 3 "[..])],
        );
        assert_eq!(
            out,
            b"POST /api?x=1 HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\n\r\n"
        );
        let mut headers = [const { MaybeUninit::uninit() }; 8];
        let limits = crate::http::parse::HeadLimits {
            max_header_bytes: 1024,
            max_uri_bytes: 1024,
            max_headers: 8,
        };
        let req = crate::http::parse::parse(&out, &mut headers, &limits).unwrap();
        assert_eq!(
            (req.method_str, req.target, req.body),
            (
                "POST",
                "/api?x=1",
                crate::http::parse::BodyFraming::Length(3)
            )
        );
    }

    #[test]
    fn a_response_body_decodes_by_its_framing() {
        let body = b"4\r\nwiki\r\n0\r\n\r\nNEXT";
        let mut d = ResponseFraming::Chunked.decoder(1024).unwrap();
        let p = d.decode(body).unwrap();
        assert!(p.done);
        assert_eq!((p.payload, &body[p.consumed..]), (4, &b"NEXT"[..]));
        assert!(ResponseFraming::UntilClose.decoder(1024).is_none());
        assert!(ResponseFraming::None.decoder(1024).is_none());
    }
}
