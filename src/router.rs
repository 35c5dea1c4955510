//! Routing: the longest matching path prefix wins, optionally narrowed by
//! host and method. A shard owns its router; a reload replaces it whole.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::rc::Rc;

use crate::config::{HandlerConfig, RouteConfig};
use crate::handlers::proxy::{Proxy, ProxyRoute};
use crate::handlers::static_files::StaticSite;
use crate::handlers::{DynHandler, FixedResponse, Handler, Job, Outcome, Redirect};
use crate::http::parse::{Method, Request};
use crate::http::response::{AddedHeaders, ResponseWriter};
use crate::http::status::Status;
use crate::http::upstream::max_forwards;

/// The `Allow` of what takes every method coreserve knows but TRACE: the
/// server itself (`OPTIONS *`), a route without `methods` whose handler
/// takes any. TRACE is taken only where `methods` lists it, as nginx
/// refuses it everywhere: an app that echoes it back would show a script
/// the client's cookies and credentials (cross-site tracing).
const ALLOW_ALL: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";

/// What a route does.
enum Action {
    Respond(FixedResponse),
    Redirect(Redirect),
    Static(StaticSite),
    Proxy(Proxy),
}

impl Action {
    fn handler(&self) -> &DynHandler {
        match self {
            Action::Respond(h) => h,
            Action::Redirect(h) => h,
            Action::Static(h) => h,
            Action::Proxy(h) => h,
        }
    }

    /// Methods the handler itself serves, for 405 `Allow`; `None` is all.
    fn methods(&self) -> Option<&'static str> {
        match self {
            Action::Static(_) => Some("GET, HEAD"),
            _ => None,
        }
    }
}

/// The names a route is for (`RouteConfig::host`), lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hosts {
    /// One name (or address).
    Name(Box<str>),
    /// Every name under `suffix` (`*.example.com`, which nginx's
    /// `server_name` takes to any depth: `a.b.example.com` too), and
    /// `suffix` itself if `itself` (`.example.com`).
    Under { suffix: Box<str>, itself: bool },
}

impl Hosts {
    /// As a route's `host` setting writes it.
    fn of(host: &str) -> Hosts {
        match wildcard(host) {
            Some((suffix, itself)) => Hosts::Under {
                suffix: suffix.into(),
                itself,
            },
            None => Hosts::Name(host.into()),
        }
    }

    /// Whether `host` (bare: no port, no trailing dot) is one of them.
    fn take(&self, host: &str) -> bool {
        match self {
            Hosts::Name(name) => host.eq_ignore_ascii_case(name),
            Hosts::Under { suffix, itself } => match host.len().checked_sub(suffix.len()) {
                Some(0) => *itself && host.eq_ignore_ascii_case(suffix),
                // A label and its dot before the suffix at least.
                Some(2..) => {
                    let (below, tail) = host.split_at(host.len() - suffix.len());
                    below.ends_with('.') && tail.eq_ignore_ascii_case(suffix)
                }
                _ => false,
            },
        }
    }
}

/// How narrowly routes name their hosts, the narrowest highest: at one
/// prefix a route for the request's name wins over a wildcard's, the
/// longer of two wildcards over the shorter (nginx's choice among
/// `server_name`s), and any of them over a route for any host.
fn narrowness(host: Option<&str>) -> usize {
    match host.map(wildcard) {
        None => 0,
        Some(Some((suffix, _))) => 1 + suffix.len(),
        Some(None) => usize::MAX,
    }
}

/// A route `host` that is a wildcard, as its suffix and whether it takes
/// the suffix itself (`.example.com`) or only the names under it
/// (`*.example.com`); None for one name.
fn wildcard(host: &str) -> Option<(&str, bool)> {
    match (host.strip_prefix("*."), host.strip_prefix('.')) {
        (Some(suffix), _) => Some((suffix, false)),
        (_, Some(suffix)) => Some((suffix, true)),
        _ => None,
    }
}

struct Route {
    prefix: String,
    host: Option<Hosts>,
    /// `narrowness` of its host.
    narrowness: usize,
    methods: Option<Vec<String>>,
    /// Its `Allow`: its `methods` and what its handler serves (a static
    /// route's GET and HEAD), both when both say; `ALLOW_ALL` when neither
    /// limits it.
    allow: String,
    /// The route's own body limit, if it has one.
    max_body: Option<u64>,
    /// The fields it adds to each response its handler gives.
    added: Option<Rc<AddedHeaders>>,
    action: Action,
}

impl Route {
    /// Whether it serves the request's method: its `methods` (without
    /// them, anything but TRACE), and what its handler serves (a static
    /// route only GET and HEAD).
    fn takes(&self, req: &Request<'_>) -> bool {
        self.methods
            .as_deref()
            .map_or(req.method != Method::Trace, |m| allows(m, req))
            && (self.action.methods().is_none() || matches!(req.method, Method::Get | Method::Head))
    }

    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(want) = &self.host {
            // Host without port or a trailing dot (the root label: same
            // name, as nginx treats it), compared case-insensitively
            // (RFC 9110 §4.2.3).
            if !want.take(host.map(bare_host).unwrap_or("")) {
                return false;
            }
        }
        // `/api` takes `/api` and `/api/…` but not `/apix`; `/static/` takes
        // everything below it.
        path.starts_with(&self.prefix)
            && (self.prefix.ends_with('/')
                || path.len() == self.prefix.len()
                || path.as_bytes()[self.prefix.len()] == b'/')
    }
}

/// A request's `Host` as a route's `host` is written: without its port or
/// a trailing dot (the root label: same name, as nginx treats it); its
/// case is still the client's (RFC 9110 §4.2.3 makes it irrelevant).
fn bare_host(host: &str) -> &str {
    let host = strip_port(host);
    host.strip_suffix('.').unwrap_or(host)
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// A shard's routing table.
pub struct Router {
    /// Longest prefix first; then the narrowest host (`narrowness`); then
    /// with `scheme` before without; then with `methods` before without;
    /// then in the file's order.
    routes: Vec<Route>,
    /// For each name some route's `host` takes by name (`.example.com`
    /// takes `example.com` so), the positions in `routes` of those routes,
    /// ascending: a request is matched against these, `under`'s and
    /// `any_host` alone, so a config of thousands of sites costs a lookup,
    /// not a scan of every site's routes. Empty when no route names a host.
    by_host: HashMap<Box<str>, Vec<usize>>,
    /// For each suffix a wildcard names (`example.com` of `*.example.com`),
    /// the positions of the routes for the names under it: its wildcards'
    /// and those of every shorter suffix of it (`*.com`'s), ascending. A
    /// name is looked up by its suffixes, longest first.
    under: HashMap<Box<str>, Vec<usize>>,
    /// The longest suffix in `under`, in bytes: a name's longer suffixes
    /// are never looked up (one lookup per label of a host of thousands of
    /// labels, each hashing the rest, made a request cost seconds).
    longest_under: usize,
    /// The positions of the routes for any host: what a request whose
    /// host no route names is matched against.
    any_host: Vec<usize>,
}

impl Router {
    /// Build from validated route settings, in the file's order (which
    /// breaks ties of precedence), in one go (shards use `builder`).
    #[cfg(test)]
    fn new<'c>(configs: impl IntoIterator<Item = &'c RouteConfig>) -> Router {
        let mut building = Router::builder(configs);
        while building.step(usize::MAX) {}
        building.finish()
    }

    /// A router built a few routes at a time (`RouterBuilder::step`), so
    /// that a shard serves between them while it builds thousands.
    pub fn builder<'c>(configs: impl IntoIterator<Item = &'c RouteConfig>) -> RouterBuilder<'c> {
        // Sorted as references: moving built routes costs more.
        let mut configs: Vec<&RouteConfig> = configs.into_iter().collect();
        configs.sort_by_cached_key(|c| {
            precedence(
                &c.path,
                narrowness(c.host.as_deref()),
                c.scheme.is_some(),
                c.methods.is_some(),
            )
        });
        RouterBuilder {
            routes: Vec::with_capacity(configs.len()),
            pending: configs.into_iter(),
            by_host: HashMap::new(),
            under: HashMap::new(),
            any_host: Vec::new(),
        }
    }

    /// The table of `routes` (none of them for a scheme), in their order
    /// of precedence.
    #[cfg(test)]
    fn of(mut routes: Vec<Route>) -> Router {
        routes.sort_by_key(|r| precedence(&r.prefix, r.narrowness, false, r.methods.is_some()));
        let mut building = RouterBuilder {
            pending: Vec::new().into_iter(),
            routes: Vec::with_capacity(routes.len()),
            by_host: HashMap::new(),
            under: HashMap::new(),
            any_host: Vec::new(),
        };
        for r in routes {
            building.push(r);
        }
        building.finish()
    }

    /// Drop up to `n` of the routes, the last first; whether any are left.
    /// A shard lets go of a replaced router of thousands of routes a few
    /// at a time, as it builds one.
    pub fn shed(&mut self, n: usize) -> bool {
        self.routes.truncate(self.routes.len().saturating_sub(n));
        !self.routes.is_empty()
    }

    /// The positions in `routes` of those a request for `host` may take,
    /// in order: its name's, its wildcards' and those for any host.
    fn candidates(&self, host: Option<&str>) -> Merged<'_> {
        let mut lists = [&[][..], &[][..], &self.any_host[..]];
        match host.map(bare_host) {
            Some(host) if !self.by_host.is_empty() || !self.under.is_empty() => {
                // Route hosts are kept in lower case; clients send theirs
                // so, and only another spelling costs a copy.
                let lower;
                let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
                    lower = host.to_ascii_lowercase();
                    &lower
                } else {
                    host
                };
                lists[0] = self.by_host.get(host).map_or(&[], Vec::as_slice);
                if !self.under.is_empty() {
                    // The longest suffix: its list has the shorter ones'.
                    lists[1] = self
                        .wildcard_suffixes(host)
                        .find_map(|suffix| self.under.get(suffix))
                        .map_or(&[], Vec::as_slice);
                }
            }
            _ => {}
        }
        Merged(lists)
    }

    /// The suffixes of `host` a wildcard could name, longest first: those
    /// after each of its dots, no longer than the longest wildcard's.
    fn wildcard_suffixes<'h>(&self, host: &'h str) -> impl Iterator<Item = &'h str> + 'h {
        let longest = self.longest_under;
        host.match_indices('.')
            .map(move |(dot, _)| &host[dot + 1..])
            .skip_while(move |suffix| suffix.len() > longest)
    }

    /// The route `path` is redirected to, if it is a route's prefix without
    /// its trailing slash (`/site` for a `/site/` route) that no route of
    /// at least that length takes: it is then redirected to add the slash,
    /// as nginx does, rather than answered by a shorter route (`/`) the
    /// user never meant for it.
    /// `candidates` are the request's (`candidates`).
    fn wants_slash(
        &self,
        candidates: Merged<'_>,
        host: Option<&str>,
        path: &str,
        found: Option<&Route>,
    ) -> Option<&Route> {
        if found.is_some_and(|r| r.prefix.len() >= path.len()) {
            return None;
        }
        // Longest prefix first: those longer than the path and its slash
        // are passed, the shorter ones never looked at.
        candidates
            .map(|i| &self.routes[i])
            .take_while(|r| r.prefix.len() > path.len())
            .find(|r| {
                r.prefix.len() == path.len() + 1
                    && r.prefix.ends_with('/')
                    && r.prefix.starts_with(path)
                    && r.matches(host, &r.prefix)
            })
    }

    /// `best` among the request's `candidates` for `host`.
    #[cfg(test)]
    fn best<'r>(
        &'r self,
        host: Option<&'r str>,
        path: &'r str,
    ) -> impl Iterator<Item = &'r Route> + Clone + 'r {
        self.best_among(self.candidates(host), host, path)
    }

    /// The routes that take `path` (for `host`, whose `candidates` they
    /// are) best: the longest prefix, for the narrowest host; several when
    /// they differ by `scheme` or `methods`, in the order `routes` keeps.
    /// Empty when no route takes it.
    fn best_among<'r>(
        &'r self,
        candidates: Merged<'r>,
        host: Option<&'r str>,
        path: &'r str,
    ) -> impl Iterator<Item = &'r Route> + Clone + 'r {
        let mut rest = candidates;
        let mut level = None;
        loop {
            let here = rest.clone();
            let Some(i) = rest.next() else { break };
            let r = &self.routes[i];
            if r.matches(host, path) {
                level = Some((r.prefix.len(), r.narrowness));
                rest = here;
                break;
            }
        }
        rest.map(move |i| &self.routes[i])
            .take_while(move |r| Some((r.prefix.len(), r.narrowness)) == level)
            .filter(move |r| r.matches(host, path))
    }
}

/// A `Router` being built: see `Router::builder`.
pub struct RouterBuilder<'c> {
    /// What is left to build, in order of precedence.
    pending: std::vec::IntoIter<&'c RouteConfig>,
    routes: Vec<Route>,
    by_host: HashMap<Box<str>, Vec<usize>>,
    /// Each wildcard suffix's own routes (`Router::under` adds its
    /// shorter suffixes' when finished).
    under: HashMap<Box<str>, Vec<usize>>,
    any_host: Vec<usize>,
}

impl RouterBuilder<'_> {
    /// Build up to `n` more routes; whether any are left.
    pub fn step(&mut self, n: usize) -> bool {
        for _ in 0..n {
            let Some(c) = self.pending.next() else { break };
            self.push(route(c));
        }
        self.pending.len() > 0
    }

    /// Add `r`, which comes after every route added before it.
    fn push(&mut self, mut r: Route) {
        let listed = r.methods.as_deref().map(allow_header);
        r.allow = match (r.action.methods(), listed) {
            (Some(served), Some(listed)) => listed
                .split(", ")
                .filter(|m| served.split(", ").any(|s| s == *m))
                .collect::<Vec<_>>()
                .join(", "),
            (Some(served), None) => served.into(),
            // Every method: this route never answers 405, but its
            // `Allow` joins others' (`allow_of`).
            (None, None) => ALLOW_ALL.into(),
            (None, Some(listed)) => listed,
        };
        let at = self.routes.len();
        let list = |map: &mut HashMap<Box<str>, Vec<usize>>, name: &str| {
            map.entry(name.into()).or_default().push(at)
        };
        match &r.host {
            Some(Hosts::Name(name)) => list(&mut self.by_host, name),
            Some(Hosts::Under { suffix, itself }) => {
                list(&mut self.under, suffix);
                if *itself {
                    list(&mut self.by_host, suffix);
                }
            }
            None => self.any_host.push(at),
        }
        self.routes.push(r);
    }

    /// The router of the routes built (all of them, once `step` said none
    /// are left).
    pub fn finish(self) -> Router {
        // Each suffix's list takes in those of its shorter suffixes (of
        // `*.com` for `*.example.com`), so that a name is matched against
        // one list of wildcards: its longest suffix's.
        let mut under = HashMap::with_capacity(self.under.len());
        for (suffix, own) in &self.under {
            let mut all = own.clone();
            for (dot, _) in suffix.match_indices('.') {
                if let Some(shorter) = self.under.get(&suffix[dot + 1..]) {
                    all.extend_from_slice(shorter);
                }
            }
            all.sort_unstable();
            under.insert(suffix.clone(), all);
        }
        Router {
            routes: self.routes,
            by_host: self.by_host,
            longest_under: under.keys().map(|s| s.len()).max().unwrap_or(0),
            under,
            any_host: self.any_host,
        }
    }
}

/// The route a validated route setting describes.
fn route(c: &RouteConfig) -> Route {
    Route {
        prefix: c.path.clone(),
        host: c.host.as_deref().map(Hosts::of),
        narrowness: narrowness(c.host.as_deref()),
        allow: String::new(),
        methods: c.methods.clone(),
        max_body: c.max_body_bytes,
        added: AddedHeaders::new(&c.headers),
        action: match &c.handler {
            HandlerConfig::Respond {
                status,
                body,
                content_type,
            } => Action::Respond(FixedResponse {
                status: Status::from_code(*status).unwrap_or(Status::OK),
                content_type: content_type.clone(),
                body: body.as_bytes().to_vec(),
            }),
            HandlerConfig::Redirect { status, location } => Action::Redirect(Redirect {
                status: Status::from_code(*status).unwrap_or(Status::MOVED_PERMANENTLY),
                location: location.clone(),
            }),
            HandlerConfig::Static(s) => {
                Action::Static(StaticSite::new(c.path.clone(), Rc::new(s.clone())))
            }
            HandlerConfig::Proxy(p) => Action::Proxy(Proxy(Rc::new(ProxyRoute {
                config: Rc::new(p.clone()),
                prefix: c.path.clone(),
            }))),
        },
    }
}

/// The sort key of a route of `path`, host `narrowness`, with a scheme or
/// not and `methods` or not, the first first: the longer prefix; then the
/// narrower host; then the one for a scheme; then the one with methods;
/// else neither (a stable sort keeps the file's order).
fn precedence(
    path: &str,
    narrowness: usize,
    scheme: bool,
    methods: bool,
) -> (Reverse<usize>, Reverse<usize>, bool, bool) {
    (Reverse(path.len()), Reverse(narrowness), !scheme, !methods)
}

/// Positions from three ascending lists (a name's routes, its wildcards'
/// and those for any host), in ascending order: the routes in order of
/// precedence.
#[derive(Clone)]
struct Merged<'a>([&'a [usize]; 3]);

impl Iterator for Merged<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let list = self
            .0
            .iter_mut()
            .filter(|l| !l.is_empty())
            .min_by_key(|l| l[0])?;
        let (&first, rest) = list.split_first()?;
        *list = rest;
        Some(first)
    }
}

/// What answers a request among the best routes: the first that takes its
/// method, or the `Allow` of them all when none does (a 405).
fn by_method<'r>(
    best: impl Iterator<Item = &'r Route> + Clone,
    req: &Request<'_>,
) -> Result<&'r Route, String> {
    if let Some(route) = best.clone().find(|r| r.takes(req)) {
        return Ok(route);
    }
    Err(allow_of(best))
}

/// The methods `routes` take together, for `Allow`.
fn allow_of<'r>(routes: impl Iterator<Item = &'r Route>) -> String {
    let mut allow: Vec<&str> = Vec::new();
    for r in routes {
        for m in r.allow.split(", ").filter(|m| !m.is_empty()) {
            if !allow.contains(&m) {
                allow.push(m);
            }
        }
    }
    allow.join(", ")
}

/// Whether `req` is an OPTIONS or TRACE that may go no further (RFC 9110
/// §7.6.2: `Max-Forwards: 0`): a proxy route answers it as the final
/// recipient would.
fn goes_no_further(req: &Request<'_>) -> bool {
    matches!(req.method, Method::Options | Method::Trace)
        && req.header("max-forwards").and_then(max_forwards) == Some(0)
}

/// The final recipient's answer: what the route takes to an OPTIONS, and
/// a TRACE refused, as nginx refuses it (a reflected request would show a
/// script the client's cookies).
fn answer_here(mut res: ResponseWriter<'_>, req: &Request<'_>, allow: &str) -> Outcome {
    if req.method == Method::Options {
        res.begin(Status::OK);
        res.header("Allow", allow.as_bytes());
        res.empty();
    } else {
        let allow: Vec<&str> = allow.split(", ").filter(|m| *m != "TRACE").collect();
        res.begin(Status::METHOD_NOT_ALLOWED);
        res.header("Allow", allow.join(", ").as_bytes());
        res.body("text/plain; charset=utf-8", b"Method Not Allowed\n");
    }
    Outcome::Done
}

/// Whether a route's `methods` take this request: GET implies HEAD, as
/// nginx's `limit_except GET` does, since a HEAD is a GET without the body
/// (RFC 9110 §9.3.2).
fn allows(methods: &[String], req: &Request<'_>) -> bool {
    methods
        .iter()
        .any(|m| m == req.method_str || (req.method == Method::Head && m == "GET"))
}

/// The `Allow` value for a route's `methods`: HEAD is added after GET when
/// it is not listed, since GET takes it too.
fn allow_header(methods: &[String]) -> String {
    let mut allow: Vec<&str> = Vec::with_capacity(methods.len() + 1);
    for m in methods {
        allow.push(m);
        if m == "GET" && !methods.iter().any(|h| h == "HEAD") {
            allow.push("HEAD");
        }
    }
    allow.join(", ")
}

impl Handler for Router {
    type Job = Job;

    fn handle(&self, req: &Request<'_>, mut res: ResponseWriter<'_>) -> Outcome {
        #[cfg(feature = "fault-injection")]
        if let Some(fault) = req.path.strip_prefix("/__fault/") {
            return inject_fault(fault, res);
        }
        if req.path == "*" {
            // `OPTIONS *` asks about the server, not a resource (RFC 9110 §9.3.7).
            res.begin(Status::OK);
            res.header("Allow", ALLOW_ALL.as_bytes());
            res.empty();
            return Outcome::Done;
        }
        // Routes see the canonical path, so no spelling of a path reaches
        // a route other than the one its plain form does (see http::path).
        let path = match crate::http::path::canonical(req.path) {
            Ok(path) => path,
            Err(_) => {
                res.begin(Status::BAD_REQUEST);
                res.body("text/plain; charset=utf-8", b"Bad Request\n");
                return Outcome::Done;
            }
        };
        let canonical_req;
        let req = match path {
            std::borrow::Cow::Borrowed(_) => req,
            std::borrow::Cow::Owned(ref path) => {
                canonical_req = Request { path, ..*req };
                &canonical_req
            }
        };
        // Found once: a lookup for each of the host's labels when routes
        // name wildcards.
        let candidates = self.candidates(req.host);
        let best = self.best_among(candidates.clone(), req.host, req.path);
        let first = best.clone().next();
        if self
            .wants_slash(candidates, req.host, req.path, first)
            .is_some()
        {
            res.redirect_adding_slash(req.path, req.query);
            return Outcome::Done;
        }
        if first.is_none() {
            res.begin(Status::NOT_FOUND);
            res.body("text/plain; charset=utf-8", b"Not Found\n");
            return Outcome::Done;
        }
        match by_method(best.clone(), req) {
            Ok(route) if matches!(route.action, Action::Proxy(_)) && goes_no_further(req) => {
                answer_here(res.with_added(route.added.as_ref()), req, &allow_of(best))
            }
            Ok(route) => route
                .action
                .handler()
                .handle(req, res.with_added(route.added.as_ref())),
            Err(allow) => method_not_allowed(res, &allow),
        }
    }

    fn max_body(&self, req: &Request<'_>) -> Option<u64> {
        // Found as `handle` finds it (a path that is no path gets a 400
        // there, whatever its body); a path redirected to add its slash
        // has the limit of the route it is sent to, as nginx does.
        let path = crate::http::path::canonical(req.path).ok()?;
        let candidates = self.candidates(req.host);
        let best = self.best_among(candidates.clone(), req.host, &path);
        if let Some(to) = self.wants_slash(candidates.clone(), req.host, &path, best.clone().next())
        {
            return by_method(self.best_among(candidates, req.host, &to.prefix), req)
                .ok()?
                .max_body;
        }
        by_method(best, req).ok()?.max_body
    }
}

/// Test-only faults: `panic` panics in this request's handler; `kill-shard`
/// panics a task of the shard itself, which ends its executor.
#[cfg(feature = "fault-injection")]
fn inject_fault(fault: &str, mut res: ResponseWriter<'_>) -> Outcome {
    match fault {
        "panic" => panic!("fault injection: a request handler panicked"),
        "kill-shard" => {
            // Outside this request's catch_unwind: after a tick, from the
            // executor's own loop.
            glommio::spawn_local(async {
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                panic!("fault injection: the shard was killed");
            })
            .detach();
            res.begin(Status::OK);
            res.body("text/plain", b"killing this shard\n");
        }
        _ => {
            res.begin(Status::NOT_FOUND);
            res.body("text/plain", b"unknown fault\n");
        }
    }
    Outcome::Done
}

fn method_not_allowed(mut res: ResponseWriter<'_>, allow: &str) -> Outcome {
    res.begin(Status::METHOD_NOT_ALLOWED);
    res.header("Allow", allow.as_bytes());
    res.body("text/plain; charset=utf-8", b"Method Not Allowed\n");
    Outcome::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, host: Option<&str>) -> Route {
        Route {
            prefix: prefix.into(),
            host: host.map(Hosts::of),
            narrowness: narrowness(host),
            methods: None,
            allow: String::new(),
            max_body: None,
            added: None,
            action: Action::Respond(FixedResponse::hello_world()),
        }
    }

    #[test]
    fn prefixes_respect_segments() {
        assert!(route("/api", None).matches(None, "/api"));
        assert!(route("/api", None).matches(None, "/api/x"));
        assert!(!route("/api", None).matches(None, "/apix"));
        assert!(route("/static/", None).matches(None, "/static/a.css"));
        assert!(!route("/static/", None).matches(None, "/static"));
        assert!(route("/", None).matches(None, "/anything"));
    }

    #[test]
    fn get_brings_head_into_allow() {
        let list = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(allow_header(&list(&["GET"])), "GET, HEAD");
        assert_eq!(allow_header(&list(&["GET", "POST"])), "GET, HEAD, POST");
        assert_eq!(allow_header(&list(&["HEAD", "GET"])), "HEAD, GET");
        assert_eq!(allow_header(&list(&["POST"])), "POST");
    }

    #[test]
    fn a_prefix_without_its_slash_is_redirected() {
        let r = Router::of(vec![route("/site/", None), route("/", None)]);
        let found = |p: &str| r.routes.iter().find(|x| x.matches(None, p));
        assert!(r
            .wants_slash(r.candidates(None), None, "/site", found("/site"))
            .is_some());
        assert!(r
            .wants_slash(r.candidates(None), None, "/site/", found("/site/"))
            .is_none());
        assert!(r
            .wants_slash(r.candidates(None), None, "/sit", found("/sit"))
            .is_none());
        assert!(r
            .wants_slash(r.candidates(None), None, "/", found("/"))
            .is_none());
        // A route of its own for `/site` wins over the redirect.
        let r = Router::of(vec![
            route("/site/", None),
            route("/site", None),
            route("/", None),
        ]);
        let found = r.routes.iter().find(|x| x.matches(None, "/site"));
        assert!(r
            .wants_slash(r.candidates(None), None, "/site", found)
            .is_none());
        // Only for the host the route is for.
        let r = Router::of(vec![route("/site/", Some("a.test")), route("/", None)]);
        let found = r.routes.iter().find(|x| x.matches(None, "/site"));
        assert!(r
            .wants_slash(r.candidates(Some("a.test")), Some("a.test"), "/site", found)
            .is_some());
        assert!(r
            .wants_slash(r.candidates(Some("b.test")), Some("b.test"), "/site", found)
            .is_none());
    }

    #[test]
    fn a_route_for_one_scheme_comes_before_one_with_methods() {
        // What `state` gives the plain listener's router: a redirect to
        // HTTPS for plain requests, and a GET route for both schemes.
        let redirect = RouteConfig {
            scheme: Some(crate::config::Scheme::Http),
            handler: HandlerConfig::Redirect {
                status: 301,
                location: "https://example.com/".into(),
            },
            ..RouteConfig::hello_world()
        };
        let get = RouteConfig {
            methods: Some(vec!["GET".into()]),
            ..RouteConfig::hello_world()
        };
        let r = Router::new(&[redirect, get]);
        let first = r.best(None, "/").next().unwrap();
        assert!(matches!(first.action, Action::Redirect(_)));
    }

    #[test]
    fn a_request_meets_its_hosts_routes_and_those_for_any_host() {
        let mut routes: Vec<Route> = (0..500)
            .map(|n| route("/", Some(&format!("site{n}.test"))))
            .collect();
        routes.push(route("/api/", Some("site7.test")));
        routes.push(route("/api/v2/", None));
        routes.push(route("/", None));
        let r = Router::of(routes);
        let best = |host: Option<&str>, path: &str| {
            let found = r.best(host, path).next().unwrap();
            (
                found.prefix.clone(),
                found.host.clone().map(|h| match h {
                    Hosts::Name(name) => name.to_string(),
                    Hosts::Under { .. } => unreachable!(),
                }),
            )
        };
        let site7 = Some("site7.test".to_string());
        assert_eq!(best(Some("site7.test"), "/x"), ("/".into(), site7.clone()));
        assert_eq!(
            best(Some("SITE7.Test.:80"), "/api/x"),
            ("/api/".into(), site7.clone())
        );
        // A longer prefix for any host still wins over the host's shorter one.
        assert_eq!(
            best(Some("site7.test"), "/api/v2/x"),
            ("/api/v2/".into(), None)
        );
        assert_eq!(
            best(Some("site499.test"), "/api/x"),
            ("/".into(), Some("site499.test".into()))
        );
        assert_eq!(best(Some("elsewhere.test"), "/x"), ("/".into(), None));
        assert_eq!(best(None, "/api/x"), ("/".into(), None));
        assert_eq!(r.candidates(Some("site7.test")).count(), 4);
        assert_eq!(r.candidates(Some("Site7.test")).count(), 4);
        assert_eq!(r.candidates(Some("elsewhere.test")).count(), 2);
        let r = Router::of(vec![route("/", Some("only.test"))]);
        assert!(r.best(Some("other.test"), "/").next().is_none());
        assert!(r.best(Some("Only.Test"), "/").next().is_some());
    }

    /// nginx's `server_name` wildcards: `*.example.com` takes the names
    /// under it at any depth, `.example.com` it too; at one prefix a
    /// route for the name wins over a wildcard, the longer wildcard over
    /// the shorter, and a wildcard over a route for any host.
    #[test]
    fn wildcards_take_the_names_under_them_narrowest_first() {
        let r = Router::of(vec![
            route("/", Some("*.example.com")),
            route("/", Some("*.a.example.com")),
            route("/", Some("x.example.com")),
            route("/api/", Some("*.example.com")),
            route("/", Some(".example.org")),
            route("/", Some("*.com")),
            route("/", None),
        ]);
        let best = |host: &str, path: &str| {
            let found = r.best(Some(host), path).next().unwrap();
            let host = match &found.host {
                None => "any".to_string(),
                Some(Hosts::Name(name)) => name.to_string(),
                Some(Hosts::Under { suffix, itself }) => {
                    format!("{}{suffix}", if *itself { "." } else { "*." })
                }
            };
            format!("{} {host}", found.prefix)
        };
        assert_eq!(best("x.example.com", "/"), "/ x.example.com");
        assert_eq!(best("x.example.com", "/api/v"), "/api/ *.example.com");
        assert_eq!(best("y.example.com", "/"), "/ *.example.com");
        assert_eq!(best("Y.Example.COM.:8080", "/"), "/ *.example.com");
        assert_eq!(best("a.example.com", "/"), "/ *.example.com");
        assert_eq!(best("b.a.example.com", "/"), "/ *.a.example.com");
        assert_eq!(best("c.b.a.example.com", "/"), "/ *.a.example.com");
        assert_eq!(best("example.com", "/"), "/ *.com");
        assert_eq!(best("notexample.com", "/"), "/ *.com");
        assert_eq!(best("com", "/"), "/ any");
        assert_eq!(best("example.org", "/"), "/ .example.org");
        assert_eq!(best("deep.sub.example.org", "/"), "/ .example.org");
        assert_eq!(best("example.org.uk", "/"), "/ any");
        // Its name's, its wildcards' (of both suffixes), any host's.
        assert_eq!(r.candidates(Some("x.example.com")).count(), 5);
        assert_eq!(r.candidates(Some("b.a.example.com")).count(), 5);
        assert_eq!(r.candidates(Some("example.org")).count(), 2);
        assert_eq!(r.candidates(None).count(), 1);
        let positions: Vec<usize> = r.candidates(Some("b.a.example.com")).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    }

    /// A host of thousands of labels is looked up by its suffixes that a
    /// wildcard could name, not by each (each lookup hashing the rest of
    /// it: a 32 KiB host took 80 ms).
    #[test]
    fn a_long_host_is_looked_up_by_the_suffixes_wildcards_could_name() {
        let r = Router::of(vec![route("/", Some("*.example.com")), route("/", None)]);
        let host = format!("{}x.example.com", "a.".repeat(16 << 10));
        assert_eq!(
            r.wildcard_suffixes(&host).collect::<Vec<_>>(),
            ["example.com", "com"]
        );
        assert_eq!(r.best(Some(&host), "/").next().unwrap().narrowness, 12);
        let bare = Router::of(vec![route("/", None)]);
        assert_eq!(bare.wildcard_suffixes(&host).count(), 0);
    }

    #[test]
    fn a_wildcard_takes_whole_labels() {
        let under = Hosts::of("*.example.com");
        assert!(under.take("a.example.com"));
        assert!(under.take("a.b.EXAMPLE.com"));
        assert!(!under.take("example.com"));
        assert!(!under.take("aexample.com"));
        assert!(!under.take(".example.com.x"));
        assert!(!under.take(""));
        let itself = Hosts::of(".example.com");
        assert!(itself.take("example.com"));
        assert!(itself.take("a.example.com"));
        assert!(!itself.take("xample.com"));
        assert!(Hosts::of("example.com").take("Example.Com"));
    }

    #[test]
    fn hosts_ignore_port_and_case() {
        let r = route("/", Some("example.com"));
        assert!(r.matches(Some("Example.COM:8080"), "/"));
        assert!(r.matches(Some("example.com."), "/"));
        assert!(r.matches(Some("example.com.:80"), "/"));
        assert!(!r.matches(Some("example.com.."), "/"));
        assert!(!r.matches(Some("other.com"), "/"));
        assert!(!r.matches(None, "/"));
        assert_eq!(strip_port("[::1]:80"), "::1");
    }
}
