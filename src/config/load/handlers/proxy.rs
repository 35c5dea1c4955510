//! `handler = "proxy"`: requests go on to an `[[upstream]]` group. That
//! the group exists is `Config::validate`'s rule (groups may come after the
//! route in the file).

use super::super::values::Sent;
use super::gzip::GzipKeys;
use super::{Field, Kind, KindReader, Walker};
use crate::config::{HandlerConfig, ProxyConfig};

pub(super) const KIND: Kind = Kind {
    name: "proxy",
    keys: &[
        "upstream",
        "keep-host",
        "strip-prefix",
        "trusted-proxies",
        "upgrade",
        "tunnel-idle-timeout",
        "read-timeout",
        "early-hints",
        "request-headers",
        "gzip",
        "gzip-level",
        "gzip-min-length",
        "gzip-types",
    ],
    reader: || {
        Box::new(Proxy {
            config: ProxyConfig::new(String::new()),
            upstream_set: false,
            gzip: GzipKeys::default(),
        })
    },
};

/// What a proxy route set, over `ProxyConfig`'s defaults.
struct Proxy {
    /// The settings read so far.
    config: ProxyConfig,
    /// Whether `upstream` was set: it has no default.
    upstream_set: bool,
    /// `gzip` and its settings.
    gzip: GzipKeys,
}

impl KindReader for Proxy {
    fn read(&mut self, w: &mut Walker<'_>, name: &str, f: &Field<'_>) {
        let c = &mut self.config;
        match name {
            "upstream" => {
                self.upstream_set = true;
                c.upstream = w.string(f).unwrap_or_default();
            }
            "keep-host" => c.keep_host = w.flag(f).unwrap_or(c.keep_host),
            "strip-prefix" => c.strip_prefix = w.flag(f).unwrap_or(c.strip_prefix),
            "upgrade" => c.upgrade = w.flag(f).unwrap_or(c.upgrade),
            "early-hints" => c.early_hints = w.flag(f).unwrap_or(c.early_hints),
            "trusted-proxies" => c.trusted_proxies = w.networks(f),
            "tunnel-idle-timeout" => {
                if let Some(d) = w.duration(f) {
                    c.tunnel_idle_timeout = d;
                }
            }
            "read-timeout" => c.read_timeout = w.duration(f),
            "request-headers" => {
                c.request_headers = w.header_fields(f, set_by_coreserve, Sent::Upstream(host_rule));
            }
            "gzip" | "gzip-level" | "gzip-min-length" | "gzip-types" => self.gzip.read(w, name, f),
            _ => w.error(f, "unknown key".into()),
        }
    }

    fn finish(mut self: Box<Self>, w: &mut Walker<'_>, route: &str) -> HandlerConfig {
        if !self.upstream_set {
            let rule = "is required for a proxy route: the name of an [[upstream]] group";
            w.missing(route, "upstream", rule.into());
        }
        self.config.gzip = self.gzip.finish(w);
        HandlerConfig::Proxy(self.config)
    }
}

/// What is wrong with a value of `request-headers`' `name`, if anything:
/// a Host is held to what a client's is held to.
fn host_rule(name: &str, value: &str) -> Option<String> {
    let bad = name.eq_ignore_ascii_case("host")
        && (value.is_empty() || !crate::http::parse::valid_host(value.as_bytes()));
    bad.then(|| {
        format!(
            "must be a host and an optional port, like \"api.internal:8080\", got {value:?} (keep-host = false sends the server's address)"
        )
    })
}

/// Why a proxy route cannot set request field `name`, if it cannot: the
/// proxy writes it from the request's framing or the connection, or never
/// sends it on.
fn set_by_coreserve(name: &str) -> Option<&'static str> {
    // In any case, and with `_` for `-`: CGI-style apps read both alike.
    let is = |n: &str| crate::http::parse::same_field(name, n);
    if is("content-length") || is("transfer-encoding") {
        return Some("coreserve frames what it forwards");
    }
    if crate::http::parse::is_connection_field(name) {
        return Some("it is about a connection, which coreserve manages");
    }
    if is("expect") {
        return Some("coreserve answers it itself");
    }
    if is("max-forwards") {
        return Some("coreserve lowers the client's (RFC 9110 §7.6.2)");
    }
    let forwarded = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
        "forwarded",
    ];
    if forwarded.into_iter().any(is) {
        return Some("coreserve sets it from the connection (see trusted-proxies)");
    }
    if is("proxy") {
        return Some("it is never forwarded (\"httpoxy\")");
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{parse_str, GzipConfig, HandlerConfig, ProxyConfig};

    fn load(route: &str) -> Result<HandlerConfig, Vec<String>> {
        let text = format!("[[route]]\npath = \"/api/\"\nhandler = \"proxy\"\n{route}");
        parse_str(&text, Path::new("t.toml"))
            .map(|c| c.routes[0].handler.clone())
            .map_err(|f| f.errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn defaults() {
        assert_eq!(
            load("upstream = \"app\"\n").unwrap(),
            HandlerConfig::Proxy(ProxyConfig::new("app"))
        );
        let p = ProxyConfig::new("app");
        assert!(p.keep_host && !p.strip_prefix && p.upgrade);
        assert!(p.trusted_proxies.is_empty());
        assert_eq!(p.tunnel_idle_timeout, Duration::from_secs(600));
    }

    #[test]
    fn every_key() {
        let h = load(
            "upstream = \"app\"\nkeep-host = false\nstrip-prefix = true\n\
             trusted-proxies = [\"10.0.0.0/8\", \"::1\"]\nupgrade = false\n\
             tunnel-idle-timeout = \"90s\"\nearly-hints = true\nread-timeout = \"5m\"\n",
        )
        .unwrap();
        let mut p = ProxyConfig::new("app");
        p.keep_host = false;
        p.strip_prefix = true;
        p.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        p.upgrade = false;
        p.tunnel_idle_timeout = Duration::from_secs(90);
        p.early_hints = true;
        p.read_timeout = Some(Duration::from_secs(300));
        assert_eq!(h, HandlerConfig::Proxy(p));
    }

    #[test]
    fn gzip_is_off_unless_asked_and_its_settings_checked() {
        let HandlerConfig::Proxy(p) = load("upstream = \"app\"\ngzip = true\n").unwrap() else {
            panic!()
        };
        assert_eq!(p.gzip, Some(GzipConfig::default()));
        let h = load(
            "upstream = \"app\"\ngzip-level = 6\ngzip = true\ngzip-min-length = \"1k\"\n\
             gzip-types = [\"Text/HTML\", \"application/json\"]\n",
        )
        .unwrap();
        let HandlerConfig::Proxy(p) = h else { panic!() };
        assert_eq!(
            p.gzip,
            Some(GzipConfig {
                level: 6,
                min_length: 1024,
                types: vec!["text/html".into(), "application/json".into()],
            })
        );
        // nginx's gzip_types always takes text/html (a list copied from
        // nginx left every page uncompressed); a wider type covers it.
        let types = |list: &str| match load(&format!(
            "upstream = \"app\"\ngzip = true\ngzip-types = {list}\n"
        )) {
            Ok(HandlerConfig::Proxy(p)) => p.gzip.unwrap().types,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            types("[\"application/json\"]"),
            ["application/json", "text/html"]
        );
        assert_eq!(types("[\"TEXT/*\"]"), ["text/*"]);
        assert_eq!(types("[\"*\"]"), ["*"]);
        let errs = load(
            "upstream = \"app\"\ngzip = true\ngzip-level = 0\ngzip-types = [\"json\", \"text/html; charset=utf-8\", \"*/html\", \"text/*\", \"*\"]\n\
             gzip-min-length = \"big\"\n",
        )
        .unwrap_err();
        assert_eq!(
            errs,
            [
                "t.toml:6: route[1].gzip-level: must be a level from 1 (fastest) to 9 (smallest), got 0",
                "t.toml:7: route[1].gzip-types: \"json\" is not a media type like \"application/json\" or \"text/*\" (without parameters), or \"*\" for all",
                "t.toml:7: route[1].gzip-types: \"text/html; charset=utf-8\" is not a media type like \"application/json\" or \"text/*\" (without parameters), or \"*\" for all",
                "t.toml:7: route[1].gzip-types: \"*/html\" is not a media type like \"application/json\" or \"text/*\" (without parameters), or \"*\" for all",
                "t.toml:8: route[1].gzip-min-length: must be a size like 8k, 1m or 1048576, got \"big\"",
            ]
        );
        let errs = load("upstream = \"app\"\ngzip = true\ngzip-types = []\n").unwrap_err();
        assert_eq!(
            errs,
            ["t.toml:6: route[1].gzip-types: lists no type, so nothing would be compressed: list some, or leave gzip off"]
        );
        let errs =
            load("upstream = \"app\"\ngzip = false\ngzip-types = [\"text/html\"]\n").unwrap_err();
        assert_eq!(
            errs,
            ["t.toml:6: route[1].gzip-types: does nothing without gzip = true on the route"]
        );
    }

    #[test]
    fn request_headers_are_read_and_checked() {
        let h = load(
            "upstream = \"app\"\nrequest-headers = { Host = \"api.internal\", X-Api-Key = \"k\", Cookie = \"\" }\n",
        )
        .unwrap();
        let HandlerConfig::Proxy(p) = h else {
            panic!("{h:?}")
        };
        let want: Vec<(String, String)> =
            [("Host", "api.internal"), ("X-Api-Key", "k"), ("Cookie", "")]
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
        assert_eq!(p.request_headers, want);
        let errs = load(
            "upstream = \"app\"\n[route.request-headers]\nX_Forwarded_For = \"1.2.3.4\"\n\
             Transfer-Encoding = \"chunked\"\nExpect = \"100-continue\"\nX-A = \"a\\r\\nX-B: b\"\n",
        )
        .unwrap_err();
        assert_eq!(
            errs,
            [
                "t.toml:6: route[1].request-headers.X_Forwarded_For: X_Forwarded_For cannot be set: coreserve sets it from the connection (see trusted-proxies)",
                "t.toml:7: route[1].request-headers.Transfer-Encoding: Transfer-Encoding cannot be set: coreserve frames what it forwards",
                "t.toml:8: route[1].request-headers.Expect: Expect cannot be set: coreserve answers it itself",
                "t.toml:9: route[1].request-headers.X-A: must be a header value: visible ASCII, spaces and tabs only inside; got \"a\\r\\nX-B: b\"",
            ]
        );
        let errs = load(
            "upstream = \"app\"\nrequest-headers = { X-A = \"1\", X_A = \"2\", Host = \"a b\" }\n",
        )
        .unwrap_err();
        assert_eq!(
            errs,
            [
                "t.toml:5: route[1].request-headers.X_A: X-A is already set (field names are not case-sensitive, and apps read _ as -)",
                "t.toml:5: route[1].request-headers.Host: must be a host and an optional port, like \"api.internal:8080\", got \"a b\" (keep-host = false sends the server's address)",
            ]
        );
        let errs = load("upstream = \"app\"\nrequest-headers = { host = \"\" }\n").unwrap_err();
        assert_eq!(
            errs,
            ["t.toml:5: route[1].request-headers.host: must be a host and an optional port, like \"api.internal:8080\", got \"\" (keep-host = false sends the server's address)"]
        );
    }

    #[test]
    fn each_bad_value_with_its_line() {
        let errs = load(
            "keep-host = \"yes\"\nstrip-prefix = 1\ntrusted-proxies = [\"10.0.0.1/8\", \"10.0.0.0/8\", \"nowhere\"]\n\
             upgrade = \"no\"\ntunnel-idle-timeout = \"forever\"\nroot = \"/srv\"\n",
        )
        .unwrap_err();
        assert_eq!(
            errs,
            [
                "t.toml:4: route[1].keep-host: must be true or false",
                "t.toml:5: route[1].strip-prefix: must be true or false",
                "t.toml:6: route[1].trusted-proxies: \"10.0.0.1/8\" has bits set past its prefix length",
                "t.toml:6: route[1].trusted-proxies: \"nowhere\" is not an IP address or network (10.0.0.0/8)",
                "t.toml:7: route[1].upgrade: must be true or false",
                "t.toml:8: route[1].tunnel-idle-timeout: must be a duration like 500ms, 60s, 1.5s, 5m, 1h 30m or 1d, got \"forever\"",
                "t.toml:9: route[1].root: unknown key for handler \"proxy\" (it takes upstream, keep-host, strip-prefix, trusted-proxies, upgrade, tunnel-idle-timeout, read-timeout, early-hints, request-headers, gzip, gzip-level, gzip-min-length, gzip-types; every route takes path, handler, methods, host, scheme, max-body-bytes, headers)",
                "t.toml:1: route[1].upstream: is required for a proxy route: the name of an [[upstream]] group",
            ]
        );
        let errs = load("upstream = 3\ntrusted-proxies = \"10.0.0.0/8\"\n").unwrap_err();
        assert_eq!(
            errs,
            [
                "t.toml:4: route[1].upstream: must be a string",
                "t.toml:5: route[1].trusted-proxies: must be a list of strings like [\"a\", \"b\"]",
            ]
        );
    }
}
