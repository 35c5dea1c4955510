//! `Config::validate`: the rules the whole configuration must follow,
//! checked once the file and the flags are both applied, and a unit test
//! per rule. It looks at the values only: what the file system must hold
//! (static roots, the access log's directory, an app's program and working
//! directory) is `files::preflight`. What proxy routes send requests to
//! (`[[upstream]]` and `[[app]]`) is checked in `upstreams`.

mod shadows;
mod upstreams;

use super::{route_key, Config, ConfigError, HandlerConfig, RouteConfig, Scheme};
use crate::http::parse::MAX_HEADERS_LIMIT;
use crate::http::status::Status;
use std::collections::HashMap;
use std::net::SocketAddr;

impl Config {
    /// Check every rule; return every error found, not just the first, each
    /// with the line of its key when it came from the file.
    ///
    /// Pure: it reads nothing but `self` (no file system, no environment),
    /// so it gives the same answer anywhere. The checks against the file
    /// system are `files::preflight`, which `Cli::apply` runs with it.
    pub fn validate(self) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut err = |key: &str, rule: String| errors.push(ConfigError::new(key, rule));
        let l = &self.limits;
        if self.listen.is_empty() && self.tls.listen.is_empty() {
            err(
                "server.listen",
                "at least one address is needed (here, or in tls.listen for HTTPS alone)".into(),
            );
        }
        for (i, a) in self.listen.iter().enumerate() {
            if let Some(b) = self.listen[..i].iter().find(|b| clash(a, b)) {
                err(
                    &super::element_key("server.listen", i),
                    clash_message(a, b, "listed"),
                );
            }
        }
        if let Some(n) = self.shards.filter(|n| !(1..=MAX_SHARDS).contains(n)) {
            err(
                "server.shards",
                format!("must be between 1 and {MAX_SHARDS}, got {n}"),
            );
        }
        if self.idle_wait > MAX_IDLE_WAIT {
            // The executor's timers wait that long.
            err(
                "server.idle-wait",
                format!(
                    "must be at most {:?}, got {:?}",
                    MAX_IDLE_WAIT, self.idle_wait
                ),
            );
        }
        if matches!(&self.cpus, Some(c) if c.is_empty()) {
            err("server.cpus", "must name at least one CPU".into());
        }
        // The request line alone needs room for a method, a target and a version.
        if !(256..=1 << 20).contains(&l.max_header_bytes) {
            err(
                "limits.max-header-bytes",
                format!("must be between 256 and 1m, got {}", l.max_header_bytes),
            );
        }
        if l.max_uri_bytes < 16 {
            err(
                "limits.max-uri-bytes",
                format!("must be at least 16, got {}", l.max_uri_bytes),
            );
        }
        if !(1..=MAX_HEADERS_LIMIT).contains(&l.max_headers) {
            err(
                "limits.max-headers",
                format!(
                    "must be between 1 and {MAX_HEADERS_LIMIT}, got {}",
                    l.max_headers
                ),
            );
        }
        for (key, d) in [
            ("limits.header-timeout", l.header_timeout),
            ("limits.body-timeout", l.body_timeout),
            ("limits.send-timeout", l.send_timeout),
            ("server.drain-timeout", self.drain_timeout),
        ] {
            if d.is_zero() {
                err(key, "must be longer than 0, got 0".into());
            }
        }
        if l.max_connections == 0 {
            err("limits.max-connections", "must be at least 1, got 0".into());
        }
        // The first route of each path, host, methods and scheme; and the
        // methods the routes of a path, host and scheme with `methods`
        // take, in the order the router tries them (the file's).
        let mut routed = HashMap::new();
        let mut taken: HashMap<_, Vec<(usize, &str)>> = HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            // `.example.com` takes what `*.example.com` does (and
            // `example.com`, where a route for that name comes first): of
            // two such routes, the second would answer no name under it.
            let host = r.host.as_deref().map(|h| h.strip_prefix('*').unwrap_or(h));
            let first = *routed
                .entry((&r.path, host, &r.methods, r.scheme))
                .or_insert(i);
            let dup = (first != i).then(|| (first, &self.routes[first]));
            validate_route(i, r, dup, &mut err);
            let (Some(methods), None) = (&r.methods, dup) else {
                continue;
            };
            let earlier = taken.entry((&r.path, host, r.scheme)).or_default();
            // GET takes HEAD too.
            let by = |m: &str| {
                earlier
                    .iter()
                    .find(|(_, t)| *t == m || (m == "HEAD" && *t == "GET"))
                    .map(|&(j, _)| j)
            };
            let shadowed: Option<Vec<usize>> = methods.iter().map(|m| by(m)).collect();
            if let Some(by) = shadowed.and_then(|by| by.into_iter().max()) {
                err(
                    &format!("{}.methods", route_key(i)),
                    format!(
                        "{:?} is never reached: {} (or one before it) takes {} first",
                        r.path,
                        route_key(by),
                        methods.join(", ")
                    ),
                );
            }
            earlier.extend(methods.iter().map(|m| (i, m.as_str())));
        }
        upstreams::validate_upstreams(&self.upstreams, &self.apps, &self.routes, &mut err);
        if let Some(why) = bad_metrics_path(&self.metrics.path) {
            err("metrics.path", why);
        }
        // A route for HTTPS with no HTTPS listener would never be reached
        // (plain ones may come from systemd's socket activation).
        for (i, r) in self.routes.iter().enumerate() {
            if r.scheme == Some(Scheme::Https) && self.tls.listen.is_empty() {
                err(
                    &format!("{}.scheme", route_key(i)),
                    "is never reached: no [tls] listen address speaks HTTPS".into(),
                );
            }
        }
        if let Some(m) = self.metrics.listen {
            for (list, name) in [
                (&self.listen, "server.listen"),
                (&self.tls.listen, "tls.listen"),
            ] {
                if let Some(b) = list.iter().find(|b| clash(&m, b)) {
                    err("metrics.listen", clash_message(&m, b, name));
                }
            }
        }
        self.tls.validate(&self.listen, &mut errors);
        if errors.is_empty() {
            Ok(self)
        } else {
            for e in &mut errors {
                self.locate(e);
            }
            Err(errors)
        }
    }
}

impl Config {
    /// The server's own address the default metrics address (nobody asked
    /// for it) would take: `listen = "127.0.0.1:9464"`.
    pub fn default_metrics_taken(&self) -> Option<SocketAddr> {
        let m = self
            .metrics
            .listen
            .filter(|_| self.metrics.listen_is_default)?;
        let mut served = self.listen.iter().chain(&self.tls.listen);
        served.find(|b| clash(&m, b)).copied()
    }

    /// Where the default metrics address is taken by the server's own
    /// (`default_metrics_taken`): no metrics, and a warning, as when
    /// another process has that port, not an error about a key the file
    /// never set. `Cli::apply` runs it before `validate`; `coreserve
    /// status` finds the metrics off alike.
    pub fn metrics_off_where_served(&mut self) {
        let (Some(m), Some(b)) = (self.metrics.listen, self.default_metrics_taken()) else {
            return;
        };
        let by = if b == m {
            "is also one this server listens on".to_string()
        } else {
            format!("is taken by {b}, where this server listens")
        };
        log::warn!(
            "metrics: the default address {m} {by}, so it serves no metrics; set [metrics] \
             listen (or --metrics-listen) to another address, 127.0.0.1:0 for any free port, \
             or \"off\""
        );
        self.metrics.listen = None;
    }
}

/// Most shards: each is a thread with its own rings and buffers (about 2 MB),
/// and a start-up that builds them all.
pub const MAX_SHARDS: usize = 1024;

/// Longest `idle-wait`: a shard waiting in its ring does not run its
/// executor's timers meanwhile (the master's messages ring it).
const MAX_IDLE_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Whether two listening addresses cannot both be bound: the same port,
/// and the same address or one of them the wildcard of its family (an IPv6
/// socket is IPv6-only, `listener`, so `[::]` leaves IPv4 alone). Port 0
/// is a new port each time.
pub(super) fn clash(a: &SocketAddr, b: &SocketAddr) -> bool {
    let (x, y) = (a.ip(), b.ip());
    a.port() == b.port()
        && a.port() != 0
        && x.is_ipv4() == y.is_ipv4()
        && (x == y || x.is_unspecified() || y.is_unspecified())
}

/// The error for `a` clashing with `b`, an address of `list`.
pub(super) fn clash_message(a: &SocketAddr, b: &SocketAddr, list: &str) -> String {
    match (a == b, list) {
        (true, "listed") => format!("{a} is listed twice"),
        (true, _) => format!("{a} is also a {list} address"),
        (false, "listed") => {
            format!("{a} and {b} cannot both be bound: one takes the other's port")
        }
        (false, _) => {
            format!("{a} cannot be bound beside {b}, a {list} address: one takes the other's port")
        }
    }
}

/// The rules on route `i`; `dup`: an earlier route (its index) with the
/// same path, methods, scheme and host, or the other wildcard for the
/// names under the same one.
fn validate_route(
    i: usize,
    r: &RouteConfig,
    dup: Option<(usize, &RouteConfig)>,
    err: &mut impl FnMut(&str, String),
) {
    let key = |k: &str| format!("{}.{k}", route_key(i));
    // A rule about one element of a list, at that element's line.
    let element = |k: &str, n: usize| crate::config::element_key(&key(k), n);
    if !r.path.starts_with('/') {
        err(&key("path"), format!("must start with /, got {:?}", r.path));
    }
    if let Some((n, dup)) = dup {
        let rule = match (&dup.host, &r.host) {
            (Some(a), Some(b)) if a != b => format!(
                "{:?} is already routed by {} with the same methods for the names under {} ({a:?} takes them as {b:?} does)",
                r.path,
                route_key(n),
                &b[b.find('.').unwrap_or(0) + 1..]
            ),
            _ => format!(
                "{:?} is already routed by {} with the same host and methods",
                r.path,
                route_key(n)
            ),
        };
        err(&key("path"), rule);
    }
    if let Some(methods) = &r.methods {
        if methods.is_empty() {
            err(&key("methods"), "must list at least one method".into());
        }
        for (n, m) in methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
                err(
                    &element("methods", n),
                    format!("must be upper-case method names like \"GET\", got {m:?}"),
                );
            } else if m == "CONNECT" {
                // Refused before routing (a forward proxy's method): the
                // route would never see one.
                err(
                    &element("methods", n),
                    "CONNECT is never routed: coreserve is not a forward proxy, and answers it 501"
                        .into(),
                );
            } else if methods[..n].contains(m) {
                err(&element("methods", n), format!("{m:?} is listed twice"));
            }
        }
        let serves_get = methods.iter().any(|m| m == "GET" || m == "HEAD");
        if matches!(r.handler, HandlerConfig::Static(_)) && !methods.is_empty() && !serves_get {
            err(
                &key("methods"),
                format!(
                    "a static route serves GET and HEAD only: [{}] leaves it nothing to serve",
                    methods.join(", ")
                ),
            );
        }
    }
    match &r.handler {
        HandlerConfig::Respond {
            status,
            content_type,
            body,
        } => {
            if Status::from_code(*status).is_none() {
                err(
                    &key("status"),
                    format!("must be a known HTTP status between 200 and 599, got {status}"),
                );
            } else if *status < 200 {
                err(&key("status"), format!("must be 200 or more, got {status}"));
            } else if matches!(status, 204 | 205 | 304) && !body.is_empty() {
                // RFC 9110 §15.3.5, §15.3.6, §15.4.5: it ends at its head
                // (a 205 may not carry content either).
                err(
                    &key("body"),
                    format!("a {status} response has no body: leave body out, or use 200"),
                );
            }
            if !is_header_value(content_type) {
                err(
                    &key("content-type"),
                    format!("is not a valid header value: {content_type:?}"),
                );
            }
        }
        HandlerConfig::Redirect { status, location } => {
            if ![301, 302, 303, 307, 308].contains(status) {
                err(
                    &key("status"),
                    format!("must be 301, 302, 303, 307 or 308, got {status}"),
                );
            }
            if location.trim().is_empty() || !is_header_value(location) {
                err(
                    &key("location"),
                    format!("must be a URL or path, got {location:?}"),
                );
            } else if let Err(e) = crate::config::Location::parse(location) {
                err(&key("location"), e.to_string());
            }
        }
        // Its group (or app) is checked in `upstreams::validate_upstreams`.
        HandlerConfig::Proxy(p) => {
            if p.tunnel_idle_timeout.is_zero() {
                err(&key("tunnel-idle-timeout"), "must be longer than 0".into());
            }
            if p.read_timeout.is_some_and(|t| t.is_zero()) {
                err(&key("read-timeout"), "must be longer than 0".into());
            }
        }
        HandlerConfig::Static(s) => {
            for (n, name) in s.index.iter().enumerate() {
                if name.is_empty() || name.contains(['/', '\0']) || name == "." || name == ".." {
                    err(
                        &element("index", n),
                        format!("must be plain file names, got {name:?}"),
                    );
                } else if !s.dotfiles && name.starts_with('.') {
                    // Hidden names are not served here, as `fallback`'s
                    // (a plain `.index.html` would never be found).
                    err(
                        &element("index", n),
                        format!("{name:?} is a hidden name, which this route does not serve (dotfiles = false)"),
                    );
                }
            }
            if let Some(fallback) = &s.fallback {
                if let Some(why) = fallback_fault(fallback, s.dotfiles) {
                    err(&key("fallback"), why);
                }
            }
            if let Some(cc) = &s.cache_control {
                if !is_header_value(cc) {
                    err(
                        &key("cache-control"),
                        format!("is not a valid header value: {cc:?}"),
                    );
                }
            }
        }
    }
}

/// What is wrong with a static route's `fallback` (its leading slash
/// already removed), if anything: it must name a file below the root by a
/// plain path, which the route would serve (no hidden name without
/// `dotfiles`).
pub(super) fn fallback_fault(path: &str, dotfiles: bool) -> Option<String> {
    let names: Vec<&str> = path.split('/').collect();
    if path.contains(['\0', '\\'])
        || names
            .iter()
            .any(|n| n.is_empty() || *n == "." || *n == "..")
    {
        return Some(format!(
            "must be a file below the root, like \"/index.html\", got {path:?}"
        ));
    }
    if !dotfiles && names.iter().any(|n| n.starts_with('.')) {
        return Some(format!(
            "{path:?} is a hidden name, which this route does not serve (dotfiles = false)"
        ));
    }
    None
}

/// Visible ASCII and spaces: what may go into a header we send.
fn is_header_value(v: &str) -> bool {
    v.bytes()
        .all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
}

/// Why `path` cannot be `[metrics] path`, if it cannot: it must be what a
/// request target's path can be (from `/`, no query, fragment or space).
/// `coreserve status` asks it too, before it builds a URL of it.
pub fn bad_metrics_path(path: &str) -> Option<String> {
    let bad = !path.starts_with('/')
        || path
            .bytes()
            .any(|b| b"?# ".contains(&b) || !b.is_ascii_graphic());
    bad.then(|| {
        format!("must be a path like \"/metrics\" (from /, without ?, # or spaces), got {path:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccessLog, ProxyConfig, ServerAddr, StaticConfig, UpstreamConfig};
    use std::time::Duration;

    /// The keys `validate` reports, in order.
    fn failing_keys(c: Config) -> Vec<String> {
        c.validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.key)
            .collect()
    }

    #[test]
    fn a_static_route_without_get_or_head_is_refused() {
        let route = |methods: &[&str]| RouteConfig {
            path: "/s/".into(),
            methods: Some(methods.iter().map(|m| m.to_string()).collect()),
            handler: HandlerConfig::Static(crate::config::StaticConfig::new("/srv".into())),
            ..RouteConfig::hello_world()
        };
        assert_eq!(
            route_errors(vec![route(&["POST"])]),
            ["route[1].methods: a static route serves GET and HEAD only: [POST] leaves it nothing to serve"]
        );
        assert!(route_errors(vec![route(&["HEAD", "POST"])]).is_empty());
    }

    /// What `validate` says of a configuration of these routes.
    fn route_errors(routes: Vec<RouteConfig>) -> Vec<String> {
        let c = Config {
            routes,
            ..Config::default()
        };
        c.validate()
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_route_whose_methods_earlier_routes_take_is_refused() {
        let route = |methods: &[&str]| RouteConfig {
            path: "/up/".into(),
            methods: Some(methods.iter().map(|m| m.to_string()).collect()),
            ..RouteConfig::hello_world()
        };
        let text = route_errors;
        // Different methods: each answers its own.
        assert!(text(vec![route(&["GET"]), route(&["POST"])]).is_empty());
        assert_eq!(
            text(vec![route(&["GET", "POST"]), route(&["POST"]), route(&["HEAD"])]),
            [
                "route[2].methods: \"/up/\" is never reached: route[1] (or one before it) takes POST first",
                "route[3].methods: \"/up/\" is never reached: route[1] (or one before it) takes HEAD first",
            ]
        );
        // Partly taken: it still answers the rest.
        assert!(text(vec![route(&["GET"]), route(&["GET", "PUT"])]).is_empty());
    }

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn an_address_is_bound_once() {
        let mut c = Config::default();
        let a: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let tls: std::net::SocketAddr = "127.0.0.1:8443".parse().unwrap();
        // Port 0 twice is two ports.
        c.listen = vec![a, any, a, any];
        c.tls.listen = vec![tls];
        c.metrics.listen = Some(tls);
        c.metrics.listen_is_default = false;
        let errors = c.validate().unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"server.listen: 127.0.0.1:8080 is listed twice".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(
                &"metrics.listen: 127.0.0.1:8443 is also a tls.listen address".to_string()
            ),
            "{text:?}"
        );
        assert!(!text.iter().any(|t| t.contains("127.0.0.1:0")), "{text:?}");
    }

    #[test]
    fn the_default_metrics_address_gives_way_to_the_servers_own() {
        for served in ["127.0.0.1:9464", "0.0.0.0:9464"] {
            let mut c = Config {
                listen: vec![served.parse().unwrap()],
                ..Config::default()
            };
            c.metrics_off_where_served();
            assert_eq!(c.validate().unwrap().metrics.listen, None, "{served}");
        }
        let mut c = Config::default();
        c.tls.listen = vec!["127.0.0.1:9464".parse().unwrap()];
        c.metrics_off_where_served();
        let errors = c.validate().unwrap_err();
        assert!(
            !errors.iter().any(|e| e.key == "metrics.listen"),
            "{errors:?}"
        );
        // Set by the file (or a flag): an error, as any address twice.
        let mut c = Config {
            listen: vec!["127.0.0.1:9464".parse().unwrap()],
            ..Config::default()
        };
        c.metrics.listen_is_default = false;
        c.metrics_off_where_served();
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_wildcard_takes_its_port_on_every_address() {
        let at = |s: &str| -> std::net::SocketAddr { s.parse().unwrap() };
        assert!(clash(&at("0.0.0.0:80"), &at("127.0.0.1:80")));
        assert!(clash(&at("127.0.0.1:80"), &at("0.0.0.0:80")));
        assert!(clash(&at("[::]:80"), &at("[::1]:80")));
        // IPv6 sockets are IPv6-only.
        assert!(!clash(&at("[::]:80"), &at("10.0.0.1:80")));
        assert!(!clash(&at("0.0.0.0:80"), &at("[::]:80")));
        assert!(!clash(&at("0.0.0.0:80"), &at("[::1]:80")));
        assert!(!clash(&at("0.0.0.0:80"), &at("127.0.0.1:81")));
        assert!(!clash(&at("127.0.0.2:80"), &at("127.0.0.1:80")));
        assert!(!clash(&at("0.0.0.0:0"), &at("127.0.0.1:0")));
        let mut c = Config {
            listen: vec![at("127.0.0.1:8080"), at("0.0.0.0:8080")],
            ..Config::default()
        };
        c.metrics.listen = Some(at("0.0.0.0:8080"));
        c.metrics.listen_is_default = false;
        let text = messages(c);
        assert!(
            text.contains(&"server.listen: 0.0.0.0:8080 and 127.0.0.1:8080 cannot both be bound: one takes the other's port".to_string()),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t
                .starts_with("metrics.listen: 0.0.0.0:8080 cannot be bound beside 127.0.0.1:8080")),
            "{text:?}"
        );
    }

    #[test]
    fn shards_and_idle_wait_have_a_ceiling() {
        let c = Config {
            shards: Some(MAX_SHARDS + 1),
            idle_wait: Duration::from_millis(11),
            ..Config::default()
        };
        let text = messages(c);
        assert_eq!(
            text,
            [
                "server.shards: must be between 1 and 1024, got 1025",
                "server.idle-wait: must be at most 10ms, got 11ms"
            ]
        );
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let mut c = Config::default();
        c.listen.clear();
        c.shards = Some(0);
        c.limits.max_header_bytes = 10;
        c.limits.max_headers = 0;
        c.limits.max_connections = 0;
        assert_eq!(
            failing_keys(c),
            [
                "server.listen",
                "server.shards",
                "limits.max-header-bytes",
                "limits.max-headers",
                "limits.max-connections"
            ]
        );
    }

    #[test]
    fn route_rules() {
        let mut c = Config::default();
        let mut bad = RouteConfig::hello_world();
        bad.path = "nope".into();
        bad.methods = Some(vec!["get".into()]);
        bad.handler = HandlerConfig::Redirect {
            status: 200,
            location: String::new(),
        };
        c.routes.push(bad);
        c.routes.push(RouteConfig::hello_world());
        let mut s = RouteConfig::hello_world();
        s.path = "/s/".into();
        s.handler = HandlerConfig::Static(StaticConfig::new("/definitely/not/here".into()));
        c.routes.push(s);
        assert_eq!(
            failing_keys(c),
            [
                "route[2].path",
                "route[2].methods",
                "route[2].status",
                "route[2].location",
                "route[3].path",
            ]
        );
    }

    /// `.example.com` and `*.example.com` both take the names under
    /// example.com: two routes of one path with them, the second would
    /// answer none of those. Beside a route for `example.com` itself, or
    /// for another wildcard, either is a route of its own.
    #[test]
    fn two_wildcards_for_the_same_names_are_one_route_too_many() {
        let at = |host: &str| RouteConfig {
            host: Some(host.into()),
            ..RouteConfig::hello_world()
        };
        assert_eq!(
            route_errors(vec![at(".example.com"), at("*.example.com")]),
            ["route[2].path: \"/\" is already routed by route[1] with the same methods for the names under example.com (\".example.com\" takes them as \"*.example.com\" does)"]
        );
        assert_eq!(
            route_errors(vec![at("*.example.com"), at("*.example.com")]),
            ["route[2].path: \"/\" is already routed by route[1] with the same host and methods"]
        );
        assert!(route_errors(vec![
            at("example.com"),
            at("*.example.com"),
            at("*.a.example.com"),
            at(".example.org"),
        ])
        .is_empty());
    }

    /// Values that parse but could never work: a blank redirect, one to
    /// a variable nothing fills in, a body
    /// on a 204, a metrics path no request can name, a route for a scheme
    /// no listener speaks.
    #[test]
    fn values_that_could_never_work_are_refused() {
        let mut c = Config::default();
        let route = |handler| RouteConfig {
            handler,
            ..RouteConfig::hello_world()
        };
        c.routes = vec![
            route(HandlerConfig::Redirect {
                status: 301,
                location: "  ".into(),
            }),
            route(HandlerConfig::Respond {
                status: 204,
                content_type: "text/plain".into(),
                body: "gone".into(),
            }),
            RouteConfig {
                scheme: Some(Scheme::Https),
                ..RouteConfig::hello_world()
            },
            route(HandlerConfig::Respond {
                status: 205,
                content_type: "text/plain".into(),
                body: "reset".into(),
            }),
            route(HandlerConfig::Respond {
                status: 299,
                content_type: "text/plain".into(),
                body: String::new(),
            }),
            route(HandlerConfig::Redirect {
                status: 301,
                location: "https://$server_name$request_uri".into(),
            }),
        ];
        c.routes[5].path = "/f".into();
        c.routes[1].path = "/b".into();
        c.routes[2].path = "/c".into();
        c.routes[3].path = "/d".into();
        c.routes[4].path = "/e".into();
        c.metrics.path = "/m?x".into();
        assert_eq!(
            messages(c),
            [
                "route[1].location: must be a URL or path, got \"  \"",
                "route[2].body: a 204 response has no body: leave body out, or use 200",
                "route[4].body: a 205 response has no body: leave body out, or use 200",
                "route[5].status: must be a known HTTP status between 200 and 599, got 299",
                "route[6].location: unknown variable $server_name: a location takes $host and $request_uri, as nginx's",
                "metrics.path: must be a path like \"/metrics\" (from /, without ?, # or spaces), got \"/m?x\"",
                "route[3].scheme: is never reached: no [tls] listen address speaks HTTPS",
            ]
        );
    }

    /// A proxy route from `path` to the group `upstream`.
    pub(super) fn proxy_route(path: &str, upstream: &str) -> RouteConfig {
        RouteConfig {
            path: path.into(),
            handler: HandlerConfig::Proxy(ProxyConfig::new(upstream)),
            ..RouteConfig::hello_world()
        }
    }

    /// A group of these servers (`unix:/path` or an address), defaults otherwise.
    pub(super) fn group(name: &str, servers: &[&str]) -> UpstreamConfig {
        let servers = servers
            .iter()
            .map(|s| match s.strip_prefix("unix:") {
                Some(p) => ServerAddr::Unix(p.into()),
                None => ServerAddr::Tcp(s.parse().unwrap()),
            })
            .collect();
        UpstreamConfig::new(name, servers)
    }

    /// `validate`'s errors, as printed.
    pub(super) fn messages(c: Config) -> Vec<String> {
        c.validate()
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn validate_does_not_look_at_the_file_system() {
        let mut c = Config::default();
        let mut s = RouteConfig::hello_world();
        s.path = "/s/".into();
        s.handler = HandlerConfig::Static(StaticConfig::new("/definitely/not/here".into()));
        c.routes.push(s);
        c.log.access = AccessLog::File("/definitely/not/here/access.log".into());
        c.upstreams
            .push(group("app", &["unix:/definitely/not/here/app.sock"]));
        c.routes.push(proxy_route("/app/", "app"));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn errors_point_at_the_file_line() {
        let mut c = Config {
            source: Some("conf/x.toml".into()),
            ..Config::default()
        };
        c.lines.insert("server.shards".into(), 7);
        c.shards = Some(0);
        let e = &c.validate().unwrap_err()[0];
        assert_eq!(
            e.to_string(),
            "conf/x.toml:7: server.shards: must be between 1 and 1024, got 0"
        );
    }
}
