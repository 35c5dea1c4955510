//! The fields an access-log line is made of. The protocol fills them in
//! (through the record of an exchange, `exchange::Record`); the access log
//! (`access_log`) formats and writes them. Kept here so the protocol layer
//! depends on nothing above it.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use super::parse::{Request, Version};

/// What a log line says about one request.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Client address.
    pub remote: Option<IpAddr>,
    /// Method, target and protocol (`HTTP/1.1`), when the request line
    /// could be read: the protocol may be one this server does not speak
    /// (a 505's `HTTP/2.0`).
    pub request: Option<(&'a str, &'a str, &'a str)>,
    /// A refused head's first line as sent (as far as it came), when it is
    /// no whole request line (`request` is None): logged escaped in its
    /// place, as nginx logs what a malformed request began with (a
    /// scanner's probe, TLS sent to a plain port, a target too long).
    pub line: Option<&'a [u8]>,
    /// Status sent.
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// Referer header.
    pub referer: Option<&'a [u8]>,
    /// User-Agent header.
    pub user_agent: Option<&'a [u8]>,
    /// The host the request named (its absolute-form target's authority,
    /// else its Host field; as sent, port included): which site, when
    /// routes match on `host` (nginx's `$host` in a `log_format`).
    pub host: Option<&'a [u8]>,
    /// For a proxied request: the upstream that answered (or failed).
    pub upstream: Option<&'a UpstreamLog>,
    /// From the request's first byte read (or, when it came with the end
    /// of the request before it, from that one's end) to its line written
    /// (nginx's `$request_time`); filled in by the connection that writes
    /// the line.
    pub request_time: Option<Duration>,
}

/// What the access log says of a proxied request's upstream side (nginx's
/// `$upstream_addr`, `$upstream_status`, `$upstream_response_time`).
/// Owned, so that it outlives the proxy's exchange; the address is the
/// server's own label, shared, not copied.
#[derive(Debug, Clone)]
pub struct UpstreamLog {
    /// The last server tried.
    pub addr: Rc<str>,
    /// Its response's status; 0 when none came (refused, reset, timeout).
    pub status: u16,
    /// From its attempt's start to the response read whole (or the
    /// failure).
    pub time: Duration,
    /// The servers tried before it, which failed, in order, each with the
    /// time its attempt took (nginx lists them the same way).
    pub failed: Vec<(Rc<str>, Duration)>,
}

impl<'a> Entry<'a> {
    /// The request-dependent fields of an entry for `req`.
    pub fn for_request(remote: Option<IpAddr>, req: &Request<'a>, status: u16, bytes: u64) -> Self {
        Entry {
            remote,
            request: Some((req.method_str, req.target, req.version.as_str())),
            line: None,
            status,
            bytes,
            referer: req.header("referer"),
            user_agent: req.header("user-agent"),
            host: req.host.map(str::as_bytes),
            upstream: None,
            request_time: None,
        }
    }

    /// An entry for a request refused for its head (a 400 for a missing
    /// Host, a 501 for an unknown transfer coding): its request line, as
    /// nginx logs it, when the head's first line is one; else that line as
    /// sent (`line`), as far as it came (a target too long, a head cut
    /// short), its first `LOGGED_LINE` bytes; else (nothing came) as `bare`.
    pub fn refused(head: &'a [u8], status: u16, bytes: u64) -> Self {
        let request = request_line(head);
        let line = match request {
            Some(_) => None,
            None => match head.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let line = &head[..end];
                    Some(line.strip_suffix(b"\r").unwrap_or(line))
                }
                // The line so far: a target too long (414), a head cut
                // short or timed out, TLS on a plain port (no line end in
                // sight), as nginx logs what came of it.
                None => {
                    let line = head.strip_suffix(b"\r").unwrap_or(head);
                    (!line.is_empty()).then_some(line)
                }
            },
        }
        .map(|line| &line[..line.len().min(LOGGED_LINE)]);
        // Its Referer and User-Agent too, as far as its lines say them
        // (the head broke a rule: each line is taken only if it reads as
        // `name: value`).
        let field = |name: &str| {
            request?;
            head.split(|&b| b == b'\n').skip(1).find_map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let colon = line.iter().position(|&b| b == b':')?;
                let (n, v) = line.split_at(colon);
                n.eq_ignore_ascii_case(name.as_bytes())
                    .then(|| v[1..].trim_ascii())
            })
        };
        Entry {
            request,
            line,
            referer: field("referer"),
            user_agent: field("user-agent"),
            // As a request's: an absolute-form target's authority (when
            // it is a host), else the Host field.
            host: request
                .and_then(|(_, target, _)| super::parse::split_absolute(target))
                .map(|(authority, _)| authority.as_bytes())
                .filter(|a| !a.is_empty() && super::parse::valid_host(a))
                .or_else(|| field("host")),
            ..Entry::bare(status, bytes)
        }
    }

    /// An entry for a response with no request to name (one that did not
    /// parse, or was never read): `"-"` in its place.
    pub fn bare(status: u16, bytes: u64) -> Self {
        Entry {
            remote: None,
            request: None,
            line: None,
            status,
            bytes,
            referer: None,
            user_agent: None,
            host: None,
            upstream: None,
            request_time: None,
        }
    }
}

/// Most bytes of a line that is no request line the log keeps: what the
/// client meant shows in them, and a line of a megabyte of escaped bytes
/// (four times its size) is not written for one request.
pub const LOGGED_LINE: usize = 512;

/// The method, target and version of `head`'s first line, if it is a
/// whole request line (a token, a target without spaces or controls, an
/// HTTP version, one space apart, its line ended: a head cut at the size
/// limit may have only part of one).
fn request_line(head: &[u8]) -> Option<(&str, &str, &str)> {
    let line = &head[..head.iter().position(|&b| b == b'\n')?];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let token = |b: &u8| super::parse::is_token_byte(*b);
    let visible = |b: &u8| *b > b' ' && *b != 0x7f;
    if parts.next().is_some()
        || method.is_empty()
        || !method.iter().all(token)
        || target.is_empty()
        || !target.iter().all(visible)
    {
        return None;
    }
    if !super::parse::is_version_text(version) {
        return None;
    }
    Some((
        std::str::from_utf8(method).ok()?,
        std::str::from_utf8(target).ok()?,
        std::str::from_utf8(version).ok()?,
    ))
}

/// An owned copy of the request fields, kept while a job (a file, a
/// proxied exchange) runs: its log line is written when it ends.
#[derive(Debug, Clone)]
pub struct OwnedRequest {
    /// The method, the target and the host, one after the other: one
    /// allocation for the three.
    text: String,
    /// Where the method ends in `text`, then the target.
    ends: (usize, usize),
    has_host: bool,
    version: Version,
    referer: Option<Vec<u8>>,
    user_agent: Option<Vec<u8>>,
}

impl OwnedRequest {
    /// Copy what the log needs out of a request.
    pub fn new(req: &Request<'_>) -> Self {
        let host = req.host.unwrap_or("");
        let mut text = String::with_capacity(req.method_str.len() + req.target.len() + host.len());
        text.push_str(req.method_str);
        text.push_str(req.target);
        text.push_str(host);
        OwnedRequest {
            ends: (
                req.method_str.len(),
                req.method_str.len() + req.target.len(),
            ),
            text,
            has_host: req.host.is_some(),
            version: req.version,
            referer: req.header("referer").map(<[u8]>::to_vec),
            user_agent: req.header("user-agent").map(<[u8]>::to_vec),
        }
    }

    /// The entry, once the response is known.
    pub fn entry(&self, remote: Option<IpAddr>, status: u16, bytes: u64) -> Entry<'_> {
        let (method, target) = self.ends;
        Entry {
            remote,
            request: Some((
                &self.text[..method],
                &self.text[method..target],
                self.version.as_str(),
            )),
            line: None,
            status,
            bytes,
            referer: self.referer.as_deref(),
            user_agent: self.user_agent.as_deref(),
            host: self.has_host.then(|| &self.text.as_bytes()[target..]),
            upstream: None,
            request_time: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::MaybeUninit;

    /// A job's copy names what the request did: its method, target and
    /// host (an absolute-form target's authority over the Host field).
    #[test]
    fn an_owned_request_keeps_the_method_target_and_host() {
        let limits = super::super::parse::HeadLimits {
            max_header_bytes: 4096,
            max_uri_bytes: 1024,
            max_headers: 16,
        };
        for (raw, host) in [
            (
                "GET /a?b HTTP/1.1\r\nHost: Example.com:8080\r\n\r\n",
                Some("Example.com:8080"),
            ),
            (
                "GET http://b.example/x HTTP/1.1\r\nHost: a\r\n\r\n",
                Some("b.example"),
            ),
            ("GET /a?b HTTP/1.0\r\n\r\n", None),
        ] {
            let mut fields = [const { MaybeUninit::uninit() }; 16];
            let req = super::super::parse::parse(raw.as_bytes(), &mut fields, &limits).unwrap();
            let owned = OwnedRequest::new(&req);
            let entry = owned.entry(None, 200, 1);
            assert_eq!(entry.host, host.map(str::as_bytes), "{raw}");
            assert_eq!(
                entry.request,
                Some(("GET", req.target, req.version.as_str())),
                "{raw}"
            );
        }
    }

    #[test]
    fn a_refused_head_names_its_request_line_when_it_has_one() {
        let head = b"GET /a?b=1 HTTP/1.1\r\nBad Header\r\nUser-Agent:  curl/8 \r\n\r\n";
        let entry = Entry::refused(head, 400, 0);
        assert_eq!(entry.request, Some(("GET", "/a?b=1", "HTTP/1.1")));
        // A version this server does not speak is still the request's (a 505).
        let h2 = Entry::refused(b"GET / HTTP/2.0\r\n\r\n", 505, 0);
        assert_eq!(h2.request, Some(("GET", "/", "HTTP/2.0")));
        assert_eq!(entry.user_agent, Some(&b"curl/8"[..]));
        assert_eq!(entry.referer, None);
        // No Host line: none, not the one a later line would give.
        assert_eq!(entry.host, None);
        let named = Entry::refused(b"GET / HTTP/1.1\r\nHost: a.example\r\nX\r\n\r\n", 400, 0);
        assert_eq!(named.host, Some(&b"a.example"[..]));
        let absolute = b"POST HTTP://b.example:8080/x HTTP/1.1\r\nHost: a\r\nX\r\n\r\n";
        let absolute = Entry::refused(absolute, 400, 0);
        assert_eq!(absolute.host, Some(&b"b.example:8080"[..]));
        let empty = Entry::refused(b"GET http:///x HTTP/1.1\r\nHost: a\r\nX\r\n\r\n", 400, 0);
        assert_eq!(empty.host, Some(&b"a"[..]));
        for not_one in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/2.x\r\n\r\n",
            b"GET / HTTPS/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"G\x01T / HTTP/1.1\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1",
        ] {
            assert_eq!(Entry::refused(not_one, 400, 0).request, None, "{not_one:?}");
        }
        // Logged as sent when its line ended, or as far as it came (TLS:
        // no line end in sight; a target too long; a head cut short); a
        // long one is cut.
        let garbage = Entry::refused(b"\x16\x03\x01\x00\x05hello\r\n\r\n", 400, 0);
        assert_eq!(garbage.line, Some(&b"\x16\x03\x01\x00\x05hello"[..]));
        let hello = Entry::refused(b"\x16\x03\x01\x02\x00\x01", 400, 0);
        assert_eq!(hello.line, Some(&b"\x16\x03\x01\x02\x00\x01"[..]));
        for cut in [&b"GET /u"[..], b"GET /u\r"] {
            let cut = Entry::refused(cut, 400, 0);
            assert_eq!((cut.request, cut.line), (None, Some(&b"GET /u"[..])));
        }
        assert_eq!(Entry::refused(b"", 400, 0).line, None);
        assert_eq!(entry.line, None);
        let long = [b"A".as_slice(), &[0xff; 30_000], b"\r\n\r\n"].concat();
        assert_eq!(
            Entry::refused(&long, 400, 0).line.map(<[u8]>::len),
            Some(LOGGED_LINE)
        );
    }
}
