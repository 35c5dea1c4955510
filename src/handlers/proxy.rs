//! `handler = "proxy"`: the synchronous half of the reverse proxy. It copies
//! the request head out of the input buffer and hands the exchange over to
//! the connection (`Outcome::Takeover`), which runs `proxy::serve` with the
//! shard's upstream pools: that half streams the body up, the response
//! down, and lives above the handlers (it needs the shard's I/O).

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

use super::{Handler, Job, Outcome};
use crate::config::ProxyConfig;
use crate::http::coding::accepts_gzip;
use crate::http::head::RequestHead;
use crate::http::parse::{has_token, list_items, Request, Version};
use crate::http::response::{AddedHeaders, ResponseWriter};

/// A proxy route as a shard's router holds it.
#[derive(Debug)]
pub struct ProxyRoute {
    /// The route's settings.
    pub config: Rc<ProxyConfig>,
    /// The route's path prefix (for `strip-prefix`).
    pub prefix: String,
}

/// One request to forward: what the connection needs to run it.
#[derive(Debug)]
pub struct ProxyJob {
    /// The request head, owned: it lives across the awaits of the exchange.
    pub head: RequestHead,
    /// The route it came through.
    pub route: Rc<ProxyRoute>,
    /// The fields the route adds to its responses (an application's own
    /// field of the same name is kept instead).
    pub added: Option<Rc<AddedHeaders>>,
    /// The route compresses (`gzip`), and this request takes it: the
    /// client accepts gzip, speaks HTTP/1.1 (HTTP/1.0 caches do not read
    /// `Vary`; nginx's `gzip_http_version 1.1`) and did not ask that the
    /// content not be transformed (RFC 9111 §5.2.1.6). A HEAD too: its
    /// head is the one its GET would get (RFC 9110 §9.3.2).
    pub gzip: bool,
    /// `gzip`, and the request revalidates with a weak tag
    /// (`If-None-Match: W/"…"`): see `proxy::Compression`.
    pub weak_validator: bool,
}

impl ProxyRoute {
    /// The request target to send upstream: as the client sent it (an
    /// absolute-form target becomes origin-form: what follows its
    /// authority, unchanged), or with `strip-prefix`
    /// the canonical path below the route's prefix, as nginx's `proxy_pass
    /// http://app/;` does.
    pub fn upstream_target<'h>(&self, head: &'h RequestHead) -> Cow<'h, str> {
        // An OPTIONS of an absolute-form target with an empty path and no
        // query asks about the server itself: `*`, prefix or not (RFC 9112
        // §3.2.4).
        if head.method_str() == "OPTIONS" {
            let target = head.target();
            if let Some((_, authority)) = target.split_once("://") {
                if !authority.contains(['/', '?']) {
                    return Cow::Borrowed("*");
                }
            }
        }
        let query = head.query().map_or(0, |q| q.len() + 1);
        let path = if self.config.strip_prefix {
            let prefix = self.prefix.trim_end_matches('/');
            let below = head.path().strip_prefix(prefix).unwrap_or(head.path());
            if below.starts_with('/') {
                below
            } else {
                // `/api` itself, under route `/api` or `/api/`.
                "/"
            }
        } else {
            // Without a fragment, which is no part of a request target (RFC
            // 9112 §3.2) and was dropped when the request was parsed.
            let target = head.target();
            let target = target.split_once('#').map_or(target, |(t, _)| t);
            if target.starts_with('/') {
                return Cow::Borrowed(target);
            }
            // Absolute-form: what follows the authority, as sent, as
            // origin-form would have it (`%2F` in a segment stays so).
            if let Some((_, rest)) = target.split_once("://") {
                return match rest.find(['/', '?']) {
                    Some(i) if rest.as_bytes()[i] == b'/' => Cow::Borrowed(&rest[i..]),
                    Some(i) => Cow::Owned(format!("/{}", &rest[i..])),
                    None => Cow::Borrowed("/"),
                };
            }
            head.path()
        };
        let mut target = String::with_capacity(path.len() + query);
        target.push_str(path);
        if let Some(q) = head.query() {
            target.push('?');
            target.push_str(q);
        }
        Cow::Owned(target)
    }
}

/// Most finished jobs a shard keeps for reuse: about the requests one
/// shard has in flight at once; beyond that they are freed.
const SPARE_JOBS: usize = 64;

/// A job whose head buffers grew beyond this (a rare large head) is freed
/// rather than kept: the spares stay small whatever passed through.
const SPARE_HEAD_BYTES: usize = 8 << 10;

thread_local! {
    /// This shard's finished jobs, their head buffers kept: a warm proxied
    /// request takes one instead of allocating a box, a head text and two
    /// field lists.
    // Boxes, not jobs: the box is one of the allocations saved.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<ProxyJob>>> = const { RefCell::new(Vec::new()) };
}

/// Give a job back when its exchange is over, for the shard's next proxied
/// request.
pub fn recycle(job: Box<ProxyJob>) {
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARE_JOBS && job.head.capacity() <= SPARE_HEAD_BYTES {
            spare.push(job);
        }
    });
}

/// The handler in a route: shares its `ProxyRoute` with the jobs it makes.
#[derive(Debug)]
pub struct Proxy(pub Rc<ProxyRoute>);

impl Handler for Proxy {
    type Job = Job;

    fn handle(&self, req: &Request<'_>, res: ResponseWriter<'_>) -> Outcome {
        let gzip = self.0.config.gzip.is_some()
            && req.version == Version::Http11
            && req
                .list("accept-encoding")
                .is_some_and(|v| accepts_gzip(&v))
            && !req
                .list("cache-control")
                .is_some_and(|v| has_token(v.as_bytes(), b"no-transform"));
        let weak_validator = gzip
            && req
                .list("if-none-match")
                .is_some_and(|v| list_items(v.as_bytes()).any(|t| t.starts_with(b"W/")));
        let job = match SPARE.with(|s| s.borrow_mut().pop()) {
            Some(mut job) => {
                job.head.refill(req);
                job.route = self.0.clone();
                job.added = res.added().cloned();
                job.gzip = gzip;
                job.weak_validator = weak_validator;
                job
            }
            None => Box::new(ProxyJob {
                head: RequestHead::new(req),
                route: self.0.clone(),
                added: res.added().cloned(),
                gzip,
                weak_validator,
            }),
        };
        Outcome::Takeover(Job::Proxy(job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::MaybeUninit;

    fn head(raw: &str) -> RequestHead {
        let mut fields = [const { MaybeUninit::uninit() }; 16];
        let limits = crate::http::parse::HeadLimits {
            max_header_bytes: 4096,
            max_uri_bytes: 1024,
            max_headers: 16,
        };
        let req = crate::http::parse::parse(raw.as_bytes(), &mut fields, &limits).unwrap();
        RequestHead::new(&req)
    }

    fn route(prefix: &str, strip: bool) -> ProxyRoute {
        let mut config = ProxyConfig::new("app");
        config.strip_prefix = strip;
        ProxyRoute {
            config: Rc::new(config),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn targets_go_up_as_sent_or_below_the_prefix() {
        let h = head("GET /api/users?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(route("/api/", false).upstream_target(&h), "/api/users?x=1");
        assert_eq!(route("/api/", true).upstream_target(&h), "/users?x=1");
        assert_eq!(route("/api", true).upstream_target(&h), "/users?x=1");
        let bare = head("GET /api HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(route("/api", true).upstream_target(&bare), "/");
        let absolute = head("GET http://a/x/y?q HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(route("/", false).upstream_target(&absolute), "/x/y?q");
        let fragment = head("GET /api/x?q#frag HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(route("/", false).upstream_target(&fragment), "/api/x?q");
        let odd = head("GET /%61pi/%2e/x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(route("/", false).upstream_target(&odd), "/%61pi/%2e/x");
        // Absolute-form goes up as origin-form would, unchanged: a `%2F` in
        // a segment (RabbitMQ's vhost "/") is no slash to the app.
        for (sent, up) in [
            (
                "http://a/api/queues/%2F/q1/../q2//x",
                "/api/queues/%2F/q1/../q2//x",
            ),
            ("http://a:8080/a%2Fb?q=%2F#f", "/a%2Fb?q=%2F"),
            ("http://a?q", "/?q"),
            ("http://a", "/"),
        ] {
            let h = head(&format!("GET {sent} HTTP/1.1\r\nHost: a\r\n\r\n"));
            assert_eq!(route("/", false).upstream_target(&h), up, "{sent}");
        }
        // OPTIONS of an empty path asks about the server (RFC 9112
        // §3.2.4); with a path or a query it asks about that resource.
        for (sent, up) in [("http://a", "*"), ("http://a/", "/"), ("http://a?q", "/?q")] {
            let h = head(&format!("OPTIONS {sent} HTTP/1.1\r\nHost: a\r\n\r\n"));
            assert_eq!(route("/", false).upstream_target(&h), up, "{sent}");
            assert_eq!(route("/", true).upstream_target(&h), up, "{sent}");
        }
    }
}
