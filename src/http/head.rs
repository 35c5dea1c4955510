//! A request head that owns its bytes: what a handler keeps across awaits
//! (a proxy waiting for an upstream connection), where `parse::Request`
//! borrows the connection's input buffer and must be done with before the
//! next read. One copy of the head's text and one list of field positions;
//! made only by handlers that need it, so the fixed-response path stays
//! free of allocation.

use std::ops::Range;

use super::parse::{BodyFraming, Method, Request, Version};

/// Where a piece of text is in the head's buffer.
type Span = Range<u32>;

/// An owned copy of a parsed, validated request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    text: String,
    method_str: Span,
    target: Span,
    path: Span,
    query: Option<Span>,
    host: Option<Span>,
    /// Field names (spans of `text`) and values (spans of `values`), in
    /// order.
    fields: Vec<(Span, Span)>,
    /// Field values as they came: bytes, not necessarily UTF-8.
    values: Vec<u8>,
    /// The method, recognised.
    pub method: Method,
    /// The protocol version.
    pub version: Version,
    /// How the body is framed.
    pub body: BodyFraming,
    /// Whether the client allows the connection to stay open.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

fn push(text: &mut String, s: &str) -> Span {
    let start = text.len() as u32;
    text.push_str(s);
    start..text.len() as u32
}

impl RequestHead {
    /// Copy `req` (its fields in order) out of the input buffer.
    pub fn new(req: &Request<'_>) -> RequestHead {
        let mut head = RequestHead {
            text: String::new(),
            method_str: 0..0,
            target: 0..0,
            path: 0..0,
            query: None,
            host: None,
            fields: Vec::new(),
            values: Vec::new(),
            method: req.method,
            version: req.version,
            body: req.body,
            keep_alive: req.keep_alive,
            expect_continue: req.expect_continue,
        };
        head.refill(req);
        head
    }

    /// Make this head a copy of `req`, keeping its buffers: a head reused
    /// for the next request of its size allocates nothing.
    pub fn refill(&mut self, req: &Request<'_>) {
        let names: usize = req.headers.iter().map(|h| h.name.len()).sum();
        let text = &mut self.text;
        text.clear();
        text.reserve(req.method_str.len() + 2 * req.target.len() + names + 64);
        self.method_str = push(text, req.method_str);
        self.target = push(text, req.target);
        self.path = push(text, req.path);
        self.query = req.query.map(|q| push(text, q));
        self.host = req.host.map(|h| push(text, h));
        self.values.clear();
        self.values
            .reserve(req.headers.iter().map(|h| h.value.len()).sum());
        self.fields.clear();
        self.fields.reserve(req.headers.len());
        for h in req.headers.iter() {
            let name = push(text, h.name);
            let start = self.values.len() as u32;
            self.values.extend_from_slice(h.value);
            self.fields.push((name, start..self.values.len() as u32));
        }
        self.method = req.method;
        self.version = req.version;
        self.body = req.body;
        self.keep_alive = req.keep_alive;
        self.expect_continue = req.expect_continue;
    }

    /// Bytes its buffers hold on to (what a reused head keeps).
    pub fn capacity(&self) -> usize {
        self.text.capacity()
            + self.values.capacity()
            + self.fields.capacity() * std::mem::size_of::<(Span, Span)>()
    }

    fn str(&self, s: &Span) -> &str {
        &self.text[s.start as usize..s.end as usize]
    }

    /// The method as sent.
    pub fn method_str(&self) -> &str {
        self.str(&self.method_str)
    }

    /// The request target exactly as sent.
    pub fn target(&self) -> &str {
        self.str(&self.target)
    }

    /// The path of the target, without the query.
    pub fn path(&self) -> &str {
        self.str(&self.path)
    }

    /// The query, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_ref().map(|q| self.str(q))
    }

    /// The authority (absolute-form target, else Host).
    pub fn host(&self) -> Option<&str> {
        self.host.as_ref().map(|h| self.str(h))
    }

    /// Every field, in order: name and value.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields
            .iter()
            .map(|(n, v)| (self.str(n), &self.values[v.start as usize..v.end as usize]))
    }

    /// The value of the first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The values of every field named `name`, in order (a list field may
    /// come as several lines: RFC 9110 §5.3).
    pub fn headers<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.fields()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether the request is HEAD (its response carries no body).
    pub fn is_head(&self) -> bool {
        self.method == Method::Head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{parse, HeadLimits};
    use std::mem::MaybeUninit;

    /// The head's method, target, path, query and host.
    fn texts(h: &RequestHead) -> (&str, &str, &str, Option<&str>, Option<&str>) {
        (h.method_str(), h.target(), h.path(), h.query(), h.host())
    }

    #[test]
    fn a_head_outlives_the_buffer_it_was_parsed_from() {
        let limits = HeadLimits {
            max_header_bytes: 4096,
            max_uri_bytes: 1024,
            max_headers: 16,
        };
        let head = {
            let buf =
                b"POST /api/items?page=2 HTTP/1.1\r\nHost: example.com\r\nX-Bin: \xff\xfe\r\n\
                        Accept: a\r\nAccept: b\r\nContent-Length: 3\r\n\r\n"
                    .to_vec();
            let mut headers = [const { MaybeUninit::uninit() }; 16];
            let req = parse(&buf, &mut headers, &limits).unwrap();
            RequestHead::new(&req)
        };
        assert_eq!(
            texts(&head),
            (
                "POST",
                "/api/items?page=2",
                "/api/items",
                Some("page=2"),
                Some("example.com")
            )
        );
        assert_eq!(
            (head.method, head.version, head.body),
            (Method::Post, Version::Http11, BodyFraming::Length(3))
        );
        assert!(head.keep_alive && !head.expect_continue && !head.is_head());
        assert_eq!(head.header("x-bin"), Some(&b"\xff\xfe"[..]));
        assert_eq!(
            head.headers("ACCEPT").collect::<Vec<_>>(),
            [&b"a"[..], b"b"]
        );
        let names: Vec<&str> = head.fields().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["Host", "X-Bin", "Accept", "Accept", "Content-Length"]
        );
    }

    #[test]
    fn a_refilled_head_is_the_new_request_and_keeps_its_buffers() {
        let limits = HeadLimits {
            max_header_bytes: 4096,
            max_uri_bytes: 1024,
            max_headers: 16,
        };
        let mut fields = [const { MaybeUninit::uninit() }; 16];
        let big = b"POST /a/long/path?with=query HTTP/1.1\r\nHost: one.example\r\n\
                    X-A: 1\r\nX-B: 2\r\nContent-Length: 0\r\n\r\n";
        let mut head = RequestHead::new(&parse(big, &mut fields, &limits).unwrap());
        let small = b"GET /x HTTP/1.0\r\nAccept: b\r\n\r\n";
        let capacity = (
            head.text.capacity(),
            head.values.capacity(),
            head.fields.capacity(),
        );
        let mut fields2 = [const { MaybeUninit::uninit() }; 16];
        head.refill(&parse(small, &mut fields2, &limits).unwrap());
        // Nothing of the first request is left, and nothing grew.
        assert_eq!(texts(&head), ("GET", "/x", "/x", None, None));
        assert_eq!(head.fields().collect::<Vec<_>>(), [("Accept", &b"b"[..])]);
        assert_eq!((head.method, head.version), (Method::Get, Version::Http10));
        assert_eq!(
            (
                head.text.capacity(),
                head.values.capacity(),
                head.fields.capacity()
            ),
            capacity
        );
    }
}
