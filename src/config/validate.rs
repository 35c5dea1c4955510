//! `Config::validate`: the rules the whole configuration must follow,
//! checked once the file and the flags are both applied, and a unit test
//! per rule. It looks at the values only: what the file system must hold
//! (static roots, the access log's directory) is `files::preflight`.

use super::{
    route_key, upstream_key, Config, ConfigError, HandlerConfig, RouteConfig, UpstreamConfig,
    MAX_UPSTREAM_KEEPALIVE,
};
use crate::http::parse::MAX_HEADERS_LIMIT;
use crate::http::status::Status;

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
        if self.listen.is_empty() {
            err("server.listen", "at least one address is needed".into());
        }
        if self.shards == Some(0) {
            err("server.shards", "must be at least 1".into());
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
            ("limits.keepalive-timeout", l.keepalive_timeout),
            ("server.drain-timeout", self.drain_timeout),
        ] {
            if d.is_zero() {
                err(key, "must be longer than 0".into());
            }
        }
        if l.max_connections == 0 {
            err("limits.max-connections", "must be at least 1".into());
        }
        for (i, r) in self.routes.iter().enumerate() {
            validate_route(i, r, &self.routes[..i], &mut err);
        }
        validate_upstreams(&self.upstreams, &self.routes, &mut err);
        if !self.metrics.path.starts_with('/') {
            err(
                "metrics.path",
                format!("must start with /, got {:?}", self.metrics.path),
            );
        }
        if let (Some(m), true) = (
            self.metrics.listen,
            self.listen.iter().any(|l| Some(*l) == self.metrics.listen),
        ) {
            if m.port() != 0 {
                err(
                    "metrics.listen",
                    format!("{m} is also a server.listen address"),
                );
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

fn validate_route(
    i: usize,
    r: &RouteConfig,
    earlier: &[RouteConfig],
    err: &mut impl FnMut(&str, String),
) {
    let key = |k: &str| format!("{}.{k}", route_key(i));
    if !r.path.starts_with('/') {
        err(&key("path"), format!("must start with /, got {:?}", r.path));
    }
    if let Some(dup) = earlier.iter().position(|e| {
        e.path == r.path && e.host == r.host && e.methods == r.methods && e.scheme == r.scheme
    }) {
        err(
            &key("path"),
            format!(
                "{:?} is already routed by {} with the same host and methods",
                r.path,
                route_key(dup)
            ),
        );
    }
    if let Some(methods) = &r.methods {
        if methods.is_empty() {
            err(&key("methods"), "must list at least one method".into());
        }
        for m in methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
                err(
                    &key("methods"),
                    format!("must be upper-case method names like \"GET\", got {m:?}"),
                );
            }
        }
    }
    match &r.handler {
        HandlerConfig::Respond {
            status,
            content_type,
            ..
        } => {
            if Status::from_code(*status).is_none() {
                err(
                    &key("status"),
                    format!("must be a known HTTP status between 200 and 599, got {status}"),
                );
            } else if *status < 200 {
                err(&key("status"), format!("must be 200 or more, got {status}"));
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
            if location.is_empty() || !is_header_value(location) {
                err(
                    &key("location"),
                    format!("must be a URL or path, got {location:?}"),
                );
            }
        }
        // Its group is checked in `validate_upstreams`.
        HandlerConfig::Proxy(p) => {
            if p.tunnel_idle_timeout.is_zero() {
                err(&key("tunnel-idle-timeout"), "must be longer than 0".into());
            }
        }
        HandlerConfig::Static(s) => {
            for name in &s.index {
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    err(
                        &key("index"),
                        format!("must be plain file names, got {name:?}"),
                    );
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

/// The groups' own rules (a name, unique; at least one server, none
/// twice; the keep-alive pool's size; timeouts), then that every proxy
/// route names a group. A group no route names is allowed: it may be
/// waiting for its route.
fn validate_upstreams(
    groups: &[UpstreamConfig],
    routes: &[RouteConfig],
    err: &mut impl FnMut(&str, String),
) {
    for (i, g) in groups.iter().enumerate() {
        let key = |k: &str| format!("{}.{k}", upstream_key(i));
        if !is_group_name(&g.name) {
            err(
                &key("name"),
                format!(
                    "must be letters, digits, \"-\", \"_\" and \".\", got {:?}",
                    g.name
                ),
            );
        } else if let Some(first) = groups[..i].iter().position(|e| e.name == g.name) {
            err(
                &key("name"),
                format!(
                    "{:?} is already the name of {}",
                    g.name,
                    upstream_key(first)
                ),
            );
        }
        if g.servers.is_empty() {
            err(&key("servers"), "must list at least one server".into());
        }
        for (j, s) in g.servers.iter().enumerate() {
            // Once per address, at its second appearance.
            if g.servers[..j].iter().filter(|e| *e == s).count() == 1 {
                err(
                    &key("servers"),
                    format!(
                        "{s} is listed twice (a host name stands for every address it resolves to)"
                    ),
                );
            }
        }
        if g.keepalive > MAX_UPSTREAM_KEEPALIVE {
            err(
                &key("keepalive"),
                format!("must be 0 to {MAX_UPSTREAM_KEEPALIVE}, got {}", g.keepalive),
            );
        }
        for (k, d) in [
            ("idle-timeout", g.idle_timeout),
            ("connect-timeout", g.connect_timeout),
            ("read-timeout", g.read_timeout),
            ("send-timeout", g.send_timeout),
            ("fail-timeout", g.fail_timeout),
        ] {
            if d.is_zero() {
                err(&key(k), "must be longer than 0".into());
            }
        }
    }
    for (i, r) in routes.iter().enumerate() {
        let HandlerConfig::Proxy(p) = &r.handler else {
            continue;
        };
        if !groups.iter().any(|g| g.name == p.upstream) {
            let mut names: Vec<String> = Vec::new();
            for g in groups.iter().filter(|g| !g.name.is_empty()) {
                let quoted = format!("{:?}", g.name);
                if !names.contains(&quoted) {
                    names.push(quoted);
                }
            }
            let known = if names.is_empty() {
                "there is no [[upstream]] group".to_string()
            } else {
                format!("the groups are {}", names.join(", "))
            };
            err(
                &format!("{}.upstream", route_key(i)),
                format!("no [[upstream]] group is named {:?} ({known})", p.upstream),
            );
        }
    }
}

/// A group's name: letters, digits, `-`, `_` and `.`, so that it needs no
/// quoting wherever it is written (messages, logs).
fn is_group_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Visible ASCII and spaces: what may go into a header we send.
fn is_header_value(v: &str) -> bool {
    v.bytes()
        .all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccessLog, ProxyConfig, ServerAddr, StaticConfig};
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
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let mut c = Config::default();
        c.listen.clear();
        c.shards = Some(0);
        c.limits.max_header_bytes = 10;
        c.limits.max_headers = 0;
        c.limits.keepalive_timeout = Duration::ZERO;
        c.limits.max_connections = 0;
        assert_eq!(
            failing_keys(c),
            [
                "server.listen",
                "server.shards",
                "limits.max-header-bytes",
                "limits.max-headers",
                "limits.keepalive-timeout",
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

    /// A proxy route from `path` to the group `upstream`.
    fn proxy_route(path: &str, upstream: &str) -> RouteConfig {
        RouteConfig {
            path: path.into(),
            handler: HandlerConfig::Proxy(ProxyConfig::new(upstream)),
            ..RouteConfig::hello_world()
        }
    }

    fn group(name: &str, servers: &[&str]) -> UpstreamConfig {
        let servers = servers
            .iter()
            .map(|s| match s.strip_prefix("unix:") {
                Some(p) => ServerAddr::Unix(p.into()),
                None => ServerAddr::Tcp(s.parse().unwrap()),
            })
            .collect();
        UpstreamConfig::new(name, servers)
    }

    fn messages(c: Config) -> Vec<String> {
        c.validate()
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn a_proxy_route_must_name_a_group() {
        let mut c = Config::default();
        c.routes.push(proxy_route("/api/", "app"));
        assert_eq!(
            messages(c.clone()),
            ["route[2].upstream: no [[upstream]] group is named \"app\" (there is no [[upstream]] group)"]
        );
        c.upstreams.push(group("web", &["127.0.0.1:3000"]));
        c.upstreams.push(group("api.v2", &["unix:/run/api.sock"]));
        assert_eq!(
            messages(c.clone()),
            ["route[2].upstream: no [[upstream]] group is named \"app\" (the groups are \"web\", \"api.v2\")"]
        );
        c.routes[1] = proxy_route("/api/", "api.v2");
        // "web" is named by no route, which is allowed.
        assert!(c.validate().is_ok());
    }

    #[test]
    fn group_names_are_unique_and_plain() {
        let mut c = Config {
            source: Some("conf/x.toml".into()),
            ..Config::default()
        };
        c.upstreams.push(group("app", &["127.0.0.1:3000"]));
        c.upstreams.push(group("app b", &["127.0.0.1:3001"]));
        c.upstreams.push(group("app", &["127.0.0.1:3002"]));
        c.lines.insert("upstream[3]]".into(), 20);
        c.lines.insert("upstream[3].name".into(), 21);
        assert_eq!(
            messages(c),
            [
                "conf/x.toml: upstream[2].name: must be letters, digits, \"-\", \"_\" and \".\", got \"app b\"",
                "conf/x.toml:21: upstream[3].name: \"app\" is already the name of upstream[1]",
            ]
        );
    }

    #[test]
    fn group_rules() {
        let mut c = Config {
            source: Some("conf/x.toml".into()),
            ..Config::default()
        };
        let mut g = group(
            "app",
            &[
                "127.0.0.1:3000",
                "[::1]:3000",
                "127.0.0.1:3000",
                "unix:/a",
                "unix:/a",
                "127.0.0.1:3000",
            ],
        );
        g.keepalive = MAX_UPSTREAM_KEEPALIVE + 1;
        g.idle_timeout = Duration::ZERO;
        g.fail_timeout = Duration::ZERO;
        c.upstreams.push(g);
        c.upstreams.push(group("empty", &[]));
        let mut tunnel = proxy_route("/ws/", "app");
        if let HandlerConfig::Proxy(p) = &mut tunnel.handler {
            p.tunnel_idle_timeout = Duration::ZERO;
        }
        c.routes.push(tunnel);
        // A key the group did not set points at the group's table.
        c.lines.insert("upstream[1]]".into(), 9);
        c.lines.insert("upstream[1].keepalive".into(), 12);
        assert_eq!(
            messages(c),
            [
                "conf/x.toml: route[2].tunnel-idle-timeout: must be longer than 0",
                "conf/x.toml:9: upstream[1].servers: 127.0.0.1:3000 is listed twice (a host name stands for every address it resolves to)",
                "conf/x.toml:9: upstream[1].servers: unix:/a is listed twice (a host name stands for every address it resolves to)",
                "conf/x.toml:12: upstream[1].keepalive: must be 0 to 4096, got 4097",
                "conf/x.toml:9: upstream[1].idle-timeout: must be longer than 0",
                "conf/x.toml:9: upstream[1].fail-timeout: must be longer than 0",
                "conf/x.toml: upstream[2].servers: must list at least one server",
            ]
        );
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
            "conf/x.toml:7: server.shards: must be at least 1"
        );
    }
}
