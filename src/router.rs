//! Routing: the longest matching path prefix wins, optionally narrowed by
//! host and method. A shard owns its router; a reload replaces it whole.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::rc::Rc;

use rustc_hash::FxHashMap;

use crate::config::{narrowness, wildcard, HandlerConfig, RouteConfig, MAX_NAME};
use crate::handlers::proxy::{Proxy, ProxyRoute};
use crate::handlers::static_files::StaticSite;
use crate::handlers::{DynHandler, FixedResponse, Handler, Job, Outcome, Redirect};
use crate::http::error::ParseError;
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

    /// Whether `host` (bare: no port, no trailing dot) is one of them: the
    /// rule the router's tables keep (`tables_for`), and the tests'
    /// reference.
    #[cfg(test)]
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

    /// Whether it takes a request for `host` and `path`: the rule the
    /// router's tables keep (`tables_for`, `prefixes`), and the tests'
    /// reference.
    #[cfg(test)]
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
///
/// A request is matched through its host's tables (its name's, its
/// wildcards', any host's: `HostTables`) by the prefixes of its path that
/// a route could have, longest first (`prefixes`): a hash lookup each, so
/// a table of thousands of routes, or of sites, costs what a few do.
pub struct Router {
    /// Longest prefix first; then the narrowest host (`narrowness`); then
    /// with `scheme` before without; then with `methods` before without;
    /// then in the file's order. A route's position here is its rank.
    routes: Vec<Route>,
    /// For each route, the next of its table and prefix (`NONE` if it is
    /// the last): routes that differ by `scheme` or `methods` alone.
    next: Vec<u32>,
    /// The position of the first route of each table and prefix (by their
    /// numbers), the others chained from it (`next`). A table is the
    /// routes of one host pattern (a name, a wildcard; `ANY`: any host).
    /// One map for every table, not a map each (with thousands of sites,
    /// a map each cost a fifth more memory).
    first: FxHashMap<(u32, u32), u32>,
    /// The position of the first route of each table whose prefix ends in
    /// `/`, by the number of the prefix without it (`/site` for `/site/`):
    /// where that path is redirected.
    slashed: FxHashMap<(u32, u32), u32>,
    /// A number for each prefix routes have, and for each without its
    /// trailing slash (`/site` of `/site/`): tables are keyed by them, so
    /// that thousands of sites' tables hold no copy of `/` each, and a
    /// path's prefix is hashed once, not once per table.
    ids: FxHashMap<Box<str>, u32>,
    /// The tables of each name a route's host names (`example.com` of
    /// `example.com`, `.example.com` and `*.example.com`). Empty when no
    /// route names a host.
    names: FxHashMap<Box<str>, NameTables>,
    /// The longest suffix a wildcard names, in bytes: a host's longer
    /// suffixes are never looked up (one lookup per label of a host of
    /// thousands of labels, each hashing the rest, made a request cost
    /// seconds).
    longest_suffix: usize,
    /// The lengths route prefixes have: a path's prefix of another length
    /// is never hashed (a path of thousands of `/` costs what its few
    /// prefixes of those lengths do).
    lengths: Lengths,
    /// What is left of the maps' keys as the router is shed.
    leftovers: Vec<Box<str>>,
}

/// A set of lengths, as bits.
#[derive(Default)]
struct Lengths(Vec<u64>);

impl Lengths {
    fn insert(&mut self, n: usize) {
        if self.0.len() <= n / 64 {
            self.0.resize(n / 64 + 1, 0);
        }
        self.0[n / 64] |= 1 << (n % 64);
    }

    fn has(&self, n: usize) -> bool {
        self.0
            .get(n / 64)
            .is_some_and(|bits| bits & (1 << (n % 64)) != 0)
    }

    /// One more than the longest (0 when empty).
    fn end(&self) -> usize {
        self.0
            .iter()
            .rposition(|&bits| bits != 0)
            .map_or(0, |i| i * 64 + 64 - self.0[i].leading_zeros() as usize)
    }
}

/// The table of the routes for any host.
const ANY: u32 = 0;

/// The end of a `Router::next` chain.
const NONE: u32 = u32::MAX;

/// The tables of the routes for one name.
#[derive(Default, Clone, Copy)]
struct NameTables {
    /// For it alone (`example.com`).
    exact: Option<u32>,
    /// For it and the names under it (`.example.com`).
    dotted: Option<u32>,
    /// For the names under it (`*.example.com`).
    starred: Option<u32>,
}

/// The tables a request's host is matched against: its name's, its
/// wildcards', any host's. Held inline: a host matches more than a few
/// only under wildcards nested many deep.
struct HostTables {
    /// The first ones.
    inline: [u32; 8],
    /// How many of `inline` are.
    len: usize,
    /// Those past `inline`.
    more: Vec<u32>,
}

impl HostTables {
    fn new() -> HostTables {
        HostTables {
            inline: [ANY; 8],
            len: 0,
            more: Vec::new(),
        }
    }

    fn push(&mut self, table: u32) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = table;
                self.len += 1;
            }
            None => self.more.push(table),
        }
    }

    fn extend_with(&mut self, tables: [Option<u32>; 2]) {
        for t in tables.into_iter().flatten() {
            self.push(t);
        }
    }

    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.inline[..self.len].iter().chain(&self.more).copied()
    }
}

/// The prefixes a route could have that takes `path`, longest first, of
/// the `lengths` routes' prefixes have: the path itself, then at each `/`
/// from the end the path up to and with it (`/a/` for `/a/b`), and without
/// it (`/a`). Only the path's first bytes, up to the longest length, are
/// searched.
fn prefixes<'p>(path: &'p str, lengths: &'p Lengths) -> impl Iterator<Item = &'p str> {
    let searched = &path.as_bytes()[..path.len().min(lengths.end())];
    let slashes = memchr::memrchr_iter(b'/', searched).flat_map(move |i| {
        let with = (i + 1 < path.len()).then(|| &path[..=i]);
        let without = (i > 0).then(|| &path[..i]);
        with.into_iter().chain(without)
    });
    std::iter::once(path)
        .chain(slashes)
        .filter(|p| lengths.has(p.len()))
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
            router: Router {
                routes: Vec::with_capacity(configs.len()),
                next: Vec::with_capacity(configs.len()),
                first: FxHashMap::default(),
                slashed: FxHashMap::default(),
                ids: FxHashMap::default(),
                names: FxHashMap::default(),
                longest_suffix: 0,
                lengths: Lengths::default(),
                leftovers: Vec::new(),
            },
            pending: configs.into_iter(),
            tables: 1,
        }
    }

    /// The table of `routes` (none of them for a scheme), in their order
    /// of precedence.
    #[cfg(test)]
    fn of(mut routes: Vec<Route>) -> Router {
        routes.sort_by_key(|r| precedence(&r.prefix, r.narrowness, false, r.methods.is_some()));
        let mut building = Router::builder(std::iter::empty());
        for r in routes {
            building.push(r);
        }
        building.finish()
    }

    /// Drop up to `n` of the routes, the last first; whether any are left.
    /// A shard lets go of a replaced router of thousands of routes a few
    /// at a time, as it builds one; it is looked up no more.
    pub fn shed(&mut self, n: usize) -> bool {
        if !self.routes.is_empty() {
            self.routes.truncate(self.routes.len().saturating_sub(n));
        } else if self.leftovers.is_empty() {
            // Then the maps' keys (a prefix, a name each), out of their
            // maps at once (their tables are a few large blocks).
            self.leftovers
                .extend(self.ids.drain().map(|(prefix, _)| prefix));
            self.leftovers
                .extend(self.names.drain().map(|(name, _)| name));
        } else {
            self.leftovers
                .truncate(self.leftovers.len().saturating_sub(n));
        }
        !(self.routes.is_empty()
            && self.leftovers.is_empty()
            && self.ids.is_empty()
            && self.names.is_empty())
    }

    /// The position of the route at `at`'s table and prefix that comes
    /// after it, if any.
    fn after(&self, at: u32) -> Option<u32> {
        Some(self.next[at as usize]).filter(|&n| n != NONE)
    }

    /// The tables a request for `host` is matched against.
    fn tables_for(&self, host: Option<&str>) -> HostTables {
        let mut tables = HostTables::new();
        match host.map(bare_host) {
            Some(host) if !self.names.is_empty() => {
                // No route's name is longer than a DNS name, nor any
                // wildcard's suffix than the longest: only the end of a
                // longer host is looked at (a Host of 30 KB costs what a
                // short one does).
                let keep = MAX_NAME.max(self.longest_suffix + 1);
                let tail = host.get(host.len().saturating_sub(keep)..).unwrap_or(host);
                // Route hosts are kept in lower case; clients send theirs
                // so, and only another spelling costs a copy.
                let lower;
                let tail = if tail.bytes().any(|b| b.is_ascii_uppercase()) {
                    lower = tail.to_ascii_lowercase();
                    &lower
                } else {
                    tail
                };
                if tail.len() == host.len() {
                    if let Some(name) = self.names.get(tail) {
                        tables.extend_with([name.exact, name.dotted]);
                    }
                }
                for suffix in self.wildcard_suffixes(tail) {
                    if let Some(name) = self.names.get(suffix) {
                        tables.extend_with([name.starred, name.dotted]);
                    }
                }
            }
            _ => {}
        }
        tables.push(ANY);
        tables
    }

    /// The suffixes of `host` a wildcard could name, longest first: those
    /// after each of its dots, no longer than the longest wildcard's.
    fn wildcard_suffixes<'h>(&self, host: &'h str) -> impl Iterator<Item = &'h str> + 'h {
        let longest = self.longest_suffix;
        host.match_indices('.')
            .map(move |(dot, _)| &host[dot + 1..])
            .skip_while(move |suffix| suffix.len() > longest)
    }

    /// The route `path` is redirected to, if it is a route's prefix without
    /// its trailing slash (`/site` for a `/site/` route) that no route of
    /// at least that length takes: it is then redirected to add the slash,
    /// as nginx does, rather than answered by a shorter route (`/`) the
    /// user never meant for it. `tables` are the request's.
    fn wants_slash(
        &self,
        tables: &HostTables,
        path: &str,
        found: Option<&Route>,
    ) -> Option<&Route> {
        if found.is_some_and(|r| r.prefix.len() >= path.len()) || !self.lengths.has(path.len() + 1)
        {
            return None;
        }
        let id = self.ids.get(path)?;
        tables
            .iter()
            .filter_map(|t| self.slashed.get(&(t, *id)))
            .min()
            .map(|&at| &self.routes[at as usize])
    }

    /// `best` among the request's tables for `host`.
    #[cfg(test)]
    fn best<'r>(
        &'r self,
        host: Option<&str>,
        path: &str,
    ) -> impl Iterator<Item = &'r Route> + Clone + 'r {
        self.best_among(&self.tables_for(host), path)
    }

    /// The routes that take `path` best (for the host whose `tables` they
    /// are): the longest prefix, for the narrowest host; several when they
    /// differ by `scheme` or `methods`, in the order `routes` keeps.
    /// Empty when no route takes it.
    fn best_among<'r>(
        &'r self,
        tables: &HostTables,
        path: &str,
    ) -> impl Iterator<Item = &'r Route> + Clone + 'r {
        let mut level = Level {
            router: self,
            heads: [NONE, NONE],
        };
        for prefix in prefixes(path, &self.lengths) {
            let Some(id) = self.ids.get(prefix) else {
                continue;
            };
            let found = |t: u32| self.first.get(&(t, *id)).copied();
            let Some(first) = tables.iter().filter_map(found).min() else {
                continue;
            };
            // Of this prefix, the routes as narrow as the first: those of
            // one table, or of `.x` and `*.x` for a name under x (no other
            // two tables of a host are as narrow: its suffixes differ in
            // length, and a name is narrower than any).
            let narrowness = self.routes[first as usize].narrowness;
            let mut heads = level.heads.iter_mut();
            for at in tables.iter().filter_map(found) {
                if self.routes[at as usize].narrowness == narrowness {
                    let head = heads.next();
                    debug_assert!(head.is_some(), "three tables as narrow");
                    if let Some(head) = head {
                        *head = at;
                    }
                }
            }
            break;
        }
        level
    }
}

/// A `Router` being built: see `Router::builder`.
pub struct RouterBuilder<'c> {
    /// What is left to build, in order of precedence.
    pending: std::vec::IntoIter<&'c RouteConfig>,
    /// The router so far (`longest_suffix` set when finished).
    router: Router,
    /// How many tables there are.
    tables: u32,
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
        let table = match &r.host {
            None => ANY,
            Some(hosts) => {
                let (name, slot) = match hosts {
                    Hosts::Name(name) => (name, Slot::Exact),
                    Hosts::Under { suffix, itself } => {
                        (suffix, if *itself { Slot::Dotted } else { Slot::Starred })
                    }
                };
                let tables = self.router.names.entry(name.clone()).or_default();
                let id = match slot {
                    Slot::Exact => &mut tables.exact,
                    Slot::Dotted => &mut tables.dotted,
                    Slot::Starred => &mut tables.starred,
                };
                *id.get_or_insert_with(|| {
                    self.tables += 1;
                    self.tables - 1
                })
            }
        };
        let at = u32::try_from(self.router.routes.len())
            .ok()
            .filter(|&at| at != NONE)
            .expect("fewer than 4 billion routes");
        let id = self.id(&r.prefix);
        self.router.lengths.insert(r.prefix.len());
        match self.router.first.entry((table, id)) {
            Entry::Vacant(v) => {
                v.insert(at);
            }
            Entry::Occupied(o) => {
                // Appended to its chain: a few routes that differ by
                // `scheme` or `methods`.
                let mut last = *o.get() as usize;
                while self.router.next[last] != NONE {
                    last = self.router.next[last] as usize;
                }
                self.router.next[last] = at;
            }
        }
        self.router.next.push(NONE);
        // `/` has none: no path is empty.
        if let Some(slashless) = r.prefix.strip_suffix('/').filter(|s| !s.is_empty()) {
            let id = self.id(slashless);
            self.router.slashed.entry((table, id)).or_insert(at);
        }
        self.router.routes.push(r);
    }

    /// The number of `prefix` (`Router::ids`).
    fn id(&mut self, prefix: &str) -> u32 {
        let n = u32::try_from(self.router.ids.len()).expect("fewer than 4 billion prefixes");
        *self.router.ids.entry(prefix.into()).or_insert(n)
    }

    /// The router of the routes built (all of them, once `step` said none
    /// are left).
    pub fn finish(mut self) -> Router {
        let r = &mut self.router;
        r.longest_suffix = r
            .names
            .iter()
            .filter(|(_, t)| t.dotted.is_some() || t.starred.is_some())
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0);
        self.router
    }
}

/// Which of a name's tables a route goes to.
enum Slot {
    Exact,
    Dotted,
    Starred,
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
            HandlerConfig::Redirect { status, location } => Action::Redirect(Redirect::new(
                Status::from_code(*status).unwrap_or(Status::MOVED_PERMANENTLY),
                location,
            )),
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

/// The routes of one level (a prefix and a host's narrowness) in order of
/// precedence: one table's chain, or two merged (`.x`'s and `*.x`'s, for a
/// name under x).
#[derive(Clone)]
struct Level<'r> {
    /// Whose routes and chains.
    router: &'r Router,
    /// The next route of each chain (`NONE`: none).
    heads: [u32; 2],
}

impl<'r> Iterator for Level<'r> {
    type Item = &'r Route;

    fn next(&mut self) -> Option<&'r Route> {
        // NONE is the largest: the smaller head is the next route.
        let [a, b] = &mut self.heads;
        let head = if *b < *a { b } else { a };
        if *head == NONE {
            return None;
        }
        let at = *head;
        *head = self.router.after(at).unwrap_or(NONE);
        Some(&self.router.routes[at as usize])
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
            Err(_) => return Outcome::Refused(ParseError::Target),
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
        let tables = self.tables_for(req.host);
        let best = self.best_among(&tables, req.path);
        let first = best.clone().next();
        if self.wants_slash(&tables, req.path, first).is_some() {
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
        let tables = self.tables_for(req.host);
        let best = self.best_among(&tables, &path);
        if let Some(to) = self.wants_slash(&tables, &path, best.clone().next()) {
            return by_method(self.best_among(&tables, &to.prefix), req)
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
    // `stall/N`: a stall of N seconds.
    let (fault, secs) = match fault.split_once('/') {
        Some(("stall", n)) => ("stall", n.parse().unwrap_or(3)),
        _ => (fault, 3),
    };
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
        "stall" => {
            // The shard's thread stops for 3 s (or `stall/N`'s N) after
            // answering (a long computation that never yields, or a
            // stopped thread), its tasks and its queue of new connections
            // with it.
            glommio::spawn_local(async move {
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                std::thread::sleep(std::time::Duration::from_secs(secs));
            })
            .detach();
            res.begin(Status::OK);
            res.body("text/plain", b"stalling this shard\n");
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
            .wants_slash(&r.tables_for(None), "/site", found("/site"))
            .is_some());
        assert!(r
            .wants_slash(&r.tables_for(None), "/site/", found("/site/"))
            .is_none());
        assert!(r
            .wants_slash(&r.tables_for(None), "/sit", found("/sit"))
            .is_none());
        assert!(r
            .wants_slash(&r.tables_for(None), "/", found("/"))
            .is_none());
        // A route of its own for `/site` wins over the redirect.
        let r = Router::of(vec![
            route("/site/", None),
            route("/site", None),
            route("/", None),
        ]);
        let found = r.routes.iter().find(|x| x.matches(None, "/site"));
        assert!(r.wants_slash(&r.tables_for(None), "/site", found).is_none());
        // Only for the host the route is for.
        let r = Router::of(vec![route("/site/", Some("a.test")), route("/", None)]);
        let found = r.routes.iter().find(|x| x.matches(None, "/site"));
        assert!(r
            .wants_slash(&r.tables_for(Some("a.test")), "/site", found)
            .is_some());
        assert!(r
            .wants_slash(&r.tables_for(Some("b.test")), "/site", found)
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
        // Its name's table and any host's.
        assert_eq!(r.tables_for(Some("site7.test")).iter().count(), 2);
        assert_eq!(r.tables_for(Some("Site7.test")).iter().count(), 2);
        assert_eq!(r.tables_for(Some("elsewhere.test")).iter().count(), 1);
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
        // Its name's, its wildcards' (of each suffix), any host's.
        assert_eq!(r.tables_for(Some("x.example.com")).iter().count(), 4);
        assert_eq!(r.tables_for(Some("b.a.example.com")).iter().count(), 4);
        assert_eq!(r.tables_for(Some("example.org")).iter().count(), 2);
        assert_eq!(r.tables_for(None).iter().count(), 1);
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

    /// The tables find what a scan of every route in order finds by the
    /// rule (`Route::matches`): the best routes and the slash redirect,
    /// for any mix of prefixes, names, wildcards and host spellings.
    #[test]
    fn the_tables_find_what_a_scan_by_the_rule_finds() {
        use proptest::prelude::*;
        const PREFIXES: [&str; 9] = [
            "/", "/a", "/a/", "/a/b", "/a/b/", "/ab", "/b/", "/b", "/a/b/c",
        ];
        const HOSTS: [Option<&str>; 11] = [
            None,
            Some("x.test"),
            Some("a.x.test"),
            Some("*.x.test"),
            Some(".x.test"),
            Some("*.test"),
            Some("*.a.x.test"),
            Some(".a.x.test"),
            Some("*.b.a.x.test"),
            Some(".c.b.a.x.test"),
            Some("::1"),
        ];
        const METHODS: [Option<&str>; 3] = [None, Some("GET"), Some("POST")];
        const PATHS: [&str; 14] = [
            "/", "/a", "/a/", "/a/b", "/a/b/", "/a/bc", "/ab", "/abc", "/b", "/b/x", "/a/b/c/d",
            "/c", "/a/é/b", "/é",
        ];
        const ASKED: [Option<&str>; 13] = [
            None,
            Some(""),
            Some("x.test"),
            Some("X.Test:80"),
            Some("a.x.test."),
            Some("b.a.x.test"),
            Some("c.b.a.x.test"),
            Some("d.c.b.a.x.test"),
            Some("y.test"),
            Some("test"),
            Some("x.testy"),
            Some("[::1]:80"),
            Some("::1"),
        ];
        let configs =
            proptest::collection::vec((0..PREFIXES.len(), 0..HOSTS.len(), 0..METHODS.len()), 1..14);
        proptest!(ProptestConfig::with_cases(400), |(picked in configs)| {
            let r = Router::of(
                picked
                    .iter()
                    .map(|&(p, h, m)| Route {
                        methods: METHODS[m].map(|m| vec![m.to_string()]),
                        ..route(PREFIXES[p], HOSTS[h])
                    })
                    .collect(),
            );
            for path in PATHS {
                for host in ASKED {
                    let tables = r.tables_for(host);
                    let got: Vec<*const Route> =
                        r.best_among(&tables, path).map(|x| x as *const Route).collect();
                    let first = r.routes.iter().find(|x| x.matches(host, path));
                    let level = first.map(|x| (x.prefix.len(), x.narrowness));
                    let want: Vec<*const Route> = r
                        .routes
                        .iter()
                        .filter(|x| {
                            x.matches(host, path) && Some((x.prefix.len(), x.narrowness)) == level
                        })
                        .map(|x| x as *const Route)
                        .collect();
                    prop_assert_eq!(&got, &want, "{:?} {:?}", host, path);
                    let slash = r.wants_slash(&tables, path, first).map(|x| x as *const Route);
                    let want_slash = if first.is_some_and(|x| x.prefix.len() >= path.len()) {
                        None
                    } else {
                        r.routes
                            .iter()
                            .find(|x| {
                                x.prefix.len() == path.len() + 1
                                    && x.prefix.ends_with('/')
                                    && x.prefix.starts_with(path)
                                    && x.matches(host, &x.prefix)
                            })
                            .map(|x| x as *const Route)
                    };
                    prop_assert_eq!(slash, want_slash, "slash {:?} {:?}", host, path);
                }
            }
        });
    }

    /// Only a path's prefixes of lengths routes' prefixes have are looked
    /// up, and only its first bytes searched for them; only a long host's
    /// end: a path of thousands of `/`, or a Host of 30 KB, costs what a
    /// short one does.
    #[test]
    fn long_paths_and_hosts_are_looked_at_as_far_as_routes_reach() {
        let r = Router::of(vec![
            route("/", None),
            route("/b/b/", None),
            route("/", Some("*.example.com")),
        ]);
        let path = "/b".repeat(15_000);
        assert_eq!(
            prefixes(&path, &r.lengths).collect::<Vec<_>>(),
            ["/b/b/", "/"]
        );
        assert_eq!(r.best(None, &path).next().unwrap().prefix, "/b/b/");
        let host = format!("{}example.com", "A.".repeat(15_000));
        assert_eq!(r.best(Some(&host), "/x").next().unwrap().narrowness, 12);
        let mut lengths = Lengths::default();
        assert_eq!(lengths.end(), 0);
        for n in [1, 63, 64, 200] {
            lengths.insert(n);
        }
        assert!(lengths.has(64) && lengths.has(200) && !lengths.has(65) && !lengths.has(9999));
        assert_eq!(lengths.end(), 201);
    }

    /// A replaced router is let go of a few routes, then a few keys, at a
    /// time.
    #[test]
    fn a_router_is_shed_in_steps() {
        let routes = (0..100).map(|n| route(&format!("/r{n}/"), Some(&format!("h{n}.test"))));
        let mut r = Router::of(routes.collect());
        let mut steps = 0;
        while r.shed(32) {
            steps += 1;
        }
        // 100 routes 32 at a time (4 steps); their 100 prefixes, 100
        // without their slash and 100 names taken out of their maps (1);
        // those 300, 32 at a time (9 steps, and the last, which says
        // nothing is left).
        assert_eq!(steps, 14);
        assert!(r.routes.is_empty() && r.ids.is_empty() && r.names.is_empty());
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
