//! The `[[route]]` tables: the keys every route takes (`path`, `handler`,
//! `methods`, `host`), then the keys of its handler kind, read by that
//! kind's reader from `handlers::KINDS`.

use super::handlers::{self, Kind};
use super::values::Sent;
use super::{Field, Walker};
use crate::config::{route_key, HandlerConfig, RouteConfig};

impl Walker<'_> {
    /// Every `[[route]]`, in file order; they replace the built-in route.
    pub(super) fn routes(&mut self, routes: &toml_edit::ArrayOfTables) {
        self.config.routes.clear();
        for (i, t) in routes.iter().enumerate() {
            self.route(i, t);
        }
    }

    fn route(&mut self, i: usize, t: &toml_edit::Table) {
        let prefix = route_key(i);
        self.table_line(&prefix, t);
        let fields = self.fields(t, &prefix);
        let get = |name: &str| {
            let key = format!("{prefix}.{name}");
            fields.iter().find(|f| f.key == key)
        };
        let mut route = RouteConfig {
            path: String::new(),
            methods: None,
            host: None,
            scheme: None,
            max_body_bytes: None,
            headers: Vec::new(),
            // What a route whose handler could not be read holds in the
            // partial configuration; never served.
            handler: HandlerConfig::Respond {
                status: 200,
                body: String::new(),
                content_type: "text/plain; charset=utf-8".into(),
            },
        };
        let kind = self.route_kind(&prefix, get("handler"));
        match get("path") {
            Some(f) => {
                let path = self.string(f).unwrap_or_default();
                // As requests are routed: decoded and normalized, written
                // back escaped (`/café/` is `/caf%C3%A9/`, `/a/../b` is
                // `/b`), so the route matches every spelling of its path.
                let query = path.chars().find(|c| matches!(c, '?' | '#'));
                route.path = if !path.starts_with('/') {
                    // `validate` says it must.
                    path
                } else if let Some(c) = query {
                    // A request's `?` begins its query, which no route
                    // matches (and a client never sends its `#`): escaped
                    // as it would be, only a `%3F` in a path reached it.
                    self.error(
                        f,
                        format!("{path:?}: a route matches the path alone, which never holds a {c:?} (the query after ? is not matched)"),
                    );
                    path
                } else {
                    match crate::http::path::canonical(&path) {
                        Ok(canonical) => canonical.into_owned(),
                        Err(e) => {
                            self.error(f, format!("{path:?} {e}"));
                            path
                        }
                    }
                };
            }
            None => self.missing(
                &prefix,
                "path",
                "is required (a path prefix like \"/\" or \"/static/\")".into(),
            ),
        }
        let mut reader = kind.map(|k| (k.reader)());
        let keys = kind.map_or(&[][..], |k| k.keys);
        for f in &fields {
            let name = &f.key[prefix.len() + 1..];
            match name {
                "handler" | "path" => {}
                "methods" => route.methods = self.string_list(f),
                "host" => route.host = self.route_host(f),
                "scheme" => route.scheme = self.route_scheme(f),
                "max-body-bytes" => route.max_body_bytes = self.size(f),
                "headers" => route.headers = self.route_headers(f, kind.map(|k| k.name)),
                n if keys.contains(&n) => {
                    if let Some(r) = reader.as_mut() {
                        r.read(self, n, f);
                    }
                }
                // Without a handler (missing, or not one there is) a key
                // some handler takes is not the fault: the handler's error
                // says what is, once, not a line for each of its keys.
                n if kind.is_none() && handlers::KINDS.iter().any(|k| k.keys.contains(&n)) => {}
                _ => {
                    let every = [
                        "path",
                        "handler",
                        "methods",
                        "host",
                        "scheme",
                        "max-body-bytes",
                        "headers",
                    ];
                    let known = [&every[..], keys].concat();
                    let rule = match (elsewhere(name, kind), super::closest(name, &known), kind) {
                        (Some(hint), _, _) => hint,
                        (None, Some(meant), _) => format!("unknown key (did you mean {meant}?)"),
                        // Its own keys, and those every route takes: the
                        // handler's alone read as all there are.
                        (None, None, Some(k)) if !k.keys.is_empty() => format!(
                            "unknown key for handler {:?} (it takes {}; every route takes {})",
                            k.name,
                            k.keys.join(", "),
                            every.join(", ")
                        ),
                        _ => "unknown key".to_string(),
                    };
                    self.error(f, rule);
                }
            }
        }
        if let Some(r) = reader {
            route.handler = r.finish(self, &prefix);
        }
        self.config.routes.push(route);
    }

    /// The route's `handler`: a name in `handlers::KINDS`. A missing,
    /// malformed or unknown one is reported (with the name it most likely
    /// meant) and gives `None`; the route's keys no handler takes are then
    /// unknown.
    fn route_kind(&mut self, prefix: &str, f: Option<&Field>) -> Option<&'static Kind> {
        let Some(f) = f else {
            let rule = format!("is required: {}", handlers::names());
            self.missing(prefix, "handler", rule);
            return None;
        };
        let name = self.string(f)?;
        let kind = handlers::find(&name);
        if kind.is_none() {
            let kinds: Vec<&str> = handlers::KINDS.iter().map(|k| k.name).collect();
            let meant = super::closest(&name, &kinds)
                .map_or(String::new(), |m| format!(" (did you mean {m:?}?)"));
            let rule = format!("must be {}, got {name:?}{meant}", handlers::names());
            self.error(f, rule);
        }
        kind
    }

    /// A route's `headers`: fields added to its responses, none that
    /// coreserve writes itself for a route of this `kind`.
    fn route_headers(&mut self, f: &Field, kind: Option<&str>) -> Vec<(String, String)> {
        self.header_fields(f, |name| written_by_coreserve(name, kind), Sent::Client)
    }

    /// A route's host: a name or address as the request's Host is compared
    /// (lower case, no port, IPv6 without brackets and in its shortest
    /// form, no trailing dot), or a name's wildcard as nginx's
    /// `server_name` has them: `*.example.com` (every name under it) or
    /// `.example.com` (that name and every name under it).
    fn route_host(&mut self, f: &Field) -> Option<String> {
        let host = self.string(f)?.to_ascii_lowercase();
        if host.trim_end_matches('.') == "_" {
            // nginx's `server_name _;` of a default server: here it would
            // match only a request whose Host is `_`.
            let rule = "\"_\" is nginx's catch-all server_name, a name no client sends: leave host out: a route without host answers every host that no route for its name takes";
            self.error(f, rule.into());
            return None;
        }
        let (wildcard, name) = match (host.strip_prefix("*."), host.strip_prefix('.')) {
            (Some(name), _) => ("*.", name),
            (_, Some(name)) => (".", name),
            _ => ("", host.as_str()),
        };
        let bare = match name.strip_prefix('[') {
            // As a request names it: `[0:0::1]` is `[::1]`.
            Some(v6) if wildcard.is_empty() => v6
                .strip_suffix(']')
                .and_then(|a| a.parse::<std::net::Ipv6Addr>().ok())
                .map(|a| a.to_string()),
            // No empty label (`a..b`, `a.b..`): a request naming one is
            // refused (400), so the route would never match; and no
            // wildcard but the first label (nginx's `www.example.*` is not
            // taken).
            // A DNS name's limits (253 bytes, labels of 63): a longer one
            // no client could send, and a wildcard's suffix bounds what a
            // request's host is looked up by.
            _ => Some(name.strip_suffix('.').unwrap_or(name))
                .filter(|h| {
                    h.len() <= crate::config::MAX_NAME
                        && h.split('.').all(|label| {
                            (1..=63).contains(&label.len())
                                && label
                                    .bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                        })
                })
                .map(|h| format!("{wildcard}{h}")),
        };
        if bare.is_none() {
            self.error(
                f,
                format!(
                    "must be a host name or address without a port (\"example.com\", \"[::1]\"), or a name's wildcard (\"*.example.com\": the names under it; \".example.com\": it and the names under it), got {host:?}"
                ),
            );
        }
        bare
    }
}

/// nginx's directives of a `location` or `server` block that a migrating
/// user writes into a route, with what to write instead (matched in any
/// case, `-` for `_`).
const NGINX_KEYS: &[(&str, &str)] = &[
    (
        "client_max_body_size",
        "write max-body-bytes = \"10m\" on the route, or in [limits] for every route",
    ),
    (
        "alias",
        "a static route's root is what nginx's alias is (/static/a.css under path = \"/static/\" and root = \"/srv/www\" is /srv/www/a.css)",
    ),
    (
        "expires",
        "write cache-control = \"max-age=2592000\" (expires 30d) on a static route",
    ),
    (
        "add_header",
        "write headers = { X-Frame-Options = \"DENY\" }",
    ),
    (
        "proxy_pass",
        "write handler = \"proxy\" and upstream = the name of an [[upstream]] group or [[app]]",
    ),
    (
        "proxy_set_header",
        "write request-headers = { X-Name = \"value\" }; the client's Host is kept (keep-host) and X-Forwarded-* are set by coreserve (see trusted-proxies)",
    ),
    (
        "try_files",
        "a static route's fallback = \"/index.html\" is try_files $uri $uri/ /index.html",
    ),
    (
        "server_name",
        "write host = \"example.com\", or leave host out for every host",
    ),
    (
        "return",
        "write handler = \"redirect\" with status and location, or handler = \"respond\" with status and body",
    ),
    (
        "rewrite",
        "write handler = \"redirect\" with location; routes match by path prefix, not by regular expressions",
    ),
    (
        "error_page",
        "there are no error pages to set: coreserve's own answers (404, 405, 413…) are short plain text, and an app behind a proxy route sends its own",
    ),
    (
        "proxy_http_version",
        "none is needed: coreserve speaks HTTP/1.1 with keep-alive to every upstream",
    ),
    (
        "proxy_redirect",
        "none is needed: a redirect naming the upstream's address is rewritten as nginx's proxy_redirect default does (see keep-host)",
    ),
    (
        "listen",
        "addresses are [server] listen and [tls] listen; a route is narrowed to plain HTTP or HTTPS with scheme",
    ),
    (
        "proxy_read_timeout",
        "write read-timeout = \"300s\" on a proxy route (its group's read-timeout, 60 s by default, is the others')",
    ),
    (
        "ssl_certificate",
        "certificates are [[tls.certificate]] tables, with chain and key",
    ),
    (
        "ssl_certificate_key",
        "certificates are [[tls.certificate]] tables, with chain and key",
    ),
];

/// nginx's per-location proxy directives, with the group key each is.
const NGINX_GROUP_KEYS: &[(&str, &str)] = &[
    ("proxy_connect_timeout", "connect-timeout"),
    ("proxy_send_timeout", "send-timeout"),
    ("proxy_buffering", "buffer"),
    ("proxy_request_buffering", "request-buffer"),
];

/// Where a key that no route takes belongs, if it is one of an upstream
/// group's or nginx's (nginx sets `proxy_read_timeout` per location: a
/// migrating user writes it on the route, and "unknown key" alone does not
/// say where it goes).
fn elsewhere(name: &str, kind: Option<&Kind>) -> Option<String> {
    let same = |k: &str| crate::http::parse::same_field(k, name);
    let group = |key: &str| {
        format!(
            "{key} is a key of the [[upstream]] group (or [[app]]) a proxy route names, not of a route: a route that needs its own names a group of its own with the same servers"
        )
    };
    // On a proxy route, its own key in another spelling: a typo of it,
    // which "did you mean" says.
    if same("read-timeout") {
        let rule = "is a proxy route's (over its group's read-timeout), not this route's";
        return kind.is_none_or(|k| k.name != "proxy").then(|| rule.into());
    }
    // nginx's send_timeout is the client's; ours of that name the server's.
    if same("send-timeout") {
        let rule = "the client's is [limits] send-timeout (nginx's send_timeout); the server's, nginx's proxy_send_timeout, is the [[upstream]] group's (or [[app]]'s) send-timeout; neither is a route's";
        return Some(rule.into());
    }
    if same("servers") {
        let rule =
            "servers are an [[upstream]] group's, which a proxy route names (upstream = \"NAME\")";
        return Some(rule.into());
    }
    if let Some(key) = super::upstreams::PROXY_KEYS.iter().find(|k| same(k)) {
        return Some(group(key));
    }
    if let Some((n, key)) = NGINX_GROUP_KEYS.iter().find(|(n, _)| same(n)) {
        return Some(format!("is nginx's {n}: {}", group(key)));
    }
    NGINX_KEYS
        .iter()
        .find(|(n, _)| same(n))
        .map(|(n, instead)| format!("is nginx's {n}: {instead}"))
}

/// Why a route of `kind` cannot add field `name`, if it cannot: coreserve
/// writes it itself on every response, or the handler does from its keys.
fn written_by_coreserve(name: &str, kind: Option<&str>) -> Option<&'static str> {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    if ["content-length", "transfer-encoding"].into_iter().any(is) {
        return Some("coreserve frames every response itself");
    }
    if crate::http::parse::is_connection_field(name) {
        return Some("it is about the connection, which coreserve manages");
    }
    if is("date") || is("server") {
        return Some("coreserve writes its own");
    }
    if is("allow") {
        return Some("coreserve writes it with its 405 and OPTIONS answers");
    }
    if is("strict-transport-security") {
        return Some("set it with tls.hsts, which sends it over HTTPS only");
    }
    if is("content-type") {
        return Some("the handler sets it (a respond route from its content-type)");
    }
    if is("content-encoding") || is("content-range") {
        return Some("it describes a body the route does not transform");
    }
    match kind {
        Some("redirect") if is("location") => Some("it is the route's location"),
        Some("static") if is("location") => {
            Some("the static handler sends its own (a directory's added slash)")
        }
        Some("static") if is("cache-control") => Some("use the route's cache-control"),
        Some("static")
            if ["etag", "last-modified", "accept-ranges"]
                .into_iter()
                .any(is) =>
        {
            Some("the static handler writes it for each file")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn errors(text: &str) -> Vec<String> {
        match crate::config::parse_str(text, Path::new("t.toml")) {
            Ok(_) => Vec::new(),
            Err(f) => f.errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    /// A 200 KB one passed `--check` and went out whole, a head curl
    /// cuts short, where `headers` refuses the same.
    #[test]
    fn a_content_type_or_location_longer_than_a_head_is_an_error() {
        let long = "a".repeat(9000);
        let rule = "bytes: at most 8 KiB, as a route's headers in all (a head that large is refused by clients and servers alike)";
        let respond =
            format!("[[route]]\npath = \"/\"\nhandler = \"respond\"\ncontent-type = \"{long}\"\n");
        assert_eq!(
            errors(&respond),
            [format!("t.toml:4: route[1].content-type: is 9000 {rule}")]
        );
        let redirect = format!(
            "[[route]]\npath = \"/\"\nhandler = \"redirect\"\nlocation = \"https://example.com/{long}\"\n"
        );
        assert_eq!(
            errors(&redirect)[0],
            format!("t.toml:4: route[1].location: is 9020 {rule}")
        );
        // A static route's Cache-Control and HSTS too (probe C: 200 KB
        // ones passed, and curl could read no response).
        let cache = format!(
            "[[route]]\npath = \"/\"\nhandler = \"static\"\nroot = \"/srv\"\ncache-control = \"max-age=60, {long}\"\n"
        );
        assert_eq!(
            errors(&cache),
            [format!("t.toml:5: route[1].cache-control: is 9012 {rule}")]
        );
        let hsts = format!("[tls]\nhsts = \"max-age=60; {long}\"\n");
        assert_eq!(
            errors(&hsts),
            [format!("t.toml:2: tls.hsts: is 9012 {rule}")]
        );
        // At the limit: taken.
        let fits = "a".repeat(8 << 10);
        assert!(errors(&format!(
            "[[route]]\npath = \"/\"\nhandler = \"respond\"\ncontent-type = \"{fits}\"\n"
        ))
        .is_empty());
    }

    #[test]
    fn a_routes_errors_come_in_file_order_with_missing_keys_last() {
        let errs = errors(
            "[[route]]\nhandler = \"redirect\"\nstatus = \"soon\"\nhost = \"a b\"\nbody = \"x\"\n",
        );
        assert_eq!(
            errs,
            [
                "t.toml:1: route[1].path: is required (a path prefix like \"/\" or \"/static/\")",
                "t.toml:3: route[1].status: must be an HTTP status code, got \"soon\"",
                "t.toml:4: route[1].host: must be a host name or address without a port (\"example.com\", \"[::1]\"), or a name's wildcard (\"*.example.com\": the names under it; \".example.com\": it and the names under it), got \"a b\"",
                "t.toml:5: route[1].body: unknown key for handler \"redirect\" (it takes status, location; every route takes path, handler, methods, host, scheme, max-body-bytes, headers)",
                "t.toml:1: route[1].location: is required for a redirect route",
            ]
        );
    }

    /// Probe A (an nginx site moved over): each of these passed `--check`
    /// and did nothing, or something else than nginx's, at run time.
    #[test]
    fn what_nginx_would_expand_or_match_is_refused_with_what_to_write() {
        let route = |keys: &str| {
            errors(&format!(
                "[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:3000\"]\n\
                 [[route]]\npath = \"/\"\nhandler = \"proxy\"\nupstream = \"app\"\n{keys}"
            ))
        };
        // `proxy_set_header Host $host`: the app was sent `Host: $host`.
        let e = route("request-headers = { Host = \"$host\", X-Request-Id = \"$request_id\" }\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            e[0],
            "t.toml:8: route[1].request-headers.Host: $host is nginx's variable, which coreserve does not expand: it would be sent as the text $host (keep-host = true, the default, sends the client's Host on)"
        );
        assert!(
            e[1].starts_with(
                "t.toml:8: route[1].request-headers.X-Request-Id: $request_id is nginx's variable"
            ),
            "{e:?}"
        );
        // A `$` of the value's own (a token, a cookie's `$Version`) is
        // kept: there is no escape for it.
        let e = route(
            "headers = { X-Served-By = \"$hostname\", X-Price = \"5$ or $5\", Set-Cookie = \"$Version=1; t=a$bc\" }\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("headers.X-Served-By: $hostname is nginx's variable"),
            "{e:?}"
        );
        // The proxy route's own key, spelled with `_`, is a typo of it.
        assert_eq!(
            route("read_timeout = \"5m\"\n"),
            ["t.toml:8: route[1].read_timeout: unknown key (did you mean read-timeout?)"]
        );
        // `server_name _;` matched only a Host of `_`.
        assert_eq!(route("host = \"_.\"\n").len(), 1);
        let e = route("host = \"_\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:8: route[1].host: \"_\" is nginx's catch-all server_name"),
            "{e:?}"
        );
        // `rewrite … /articles/$1` sent `Location: /articles/$1`.
        let text =
            "[[route]]\npath = \"/blog/\"\nhandler = \"redirect\"\nlocation = \"/articles/$1\"\n";
        let c = crate::config::parse_str(text, Path::new("t.toml")).unwrap();
        let e: Vec<String> = c
            .validate()
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:4: route[1].location: $1 is a rewrite's capture"),
            "{e:?}"
        );
        // A group's key, or nginx's name for it, on the route says where
        // it goes (it said only "unknown key for handler").
        let e = route("send-timeout = \"300s\"\nproxy_buffering = \"off\"\nservers = []\nproxy_read_timeout = \"300s\"\n");
        assert_eq!(
            e,
            [
                "t.toml:8: route[1].send-timeout: the client's is [limits] send-timeout (nginx's send_timeout); the server's, nginx's proxy_send_timeout, is the [[upstream]] group's (or [[app]]'s) send-timeout; neither is a route's",
                "t.toml:9: route[1].proxy_buffering: is nginx's proxy_buffering: buffer is a key of the [[upstream]] group (or [[app]]) a proxy route names, not of a route: a route that needs its own names a group of its own with the same servers",
                "t.toml:10: route[1].servers: servers are an [[upstream]] group's, which a proxy route names (upstream = \"NAME\")",
                "t.toml:11: route[1].proxy_read_timeout: is nginx's proxy_read_timeout: write read-timeout = \"300s\" on a proxy route (its group's read-timeout, 60 s by default, is the others')",
            ]
        );
        let e = errors(
            "[[route]]\npath = \"/\"\nhandler = \"static\"\nroot = \".\"\n\
             client_max_body_size = \"10m\"\nAlias = \"/srv\"\ntry-files = \"$uri\"\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("t.toml:5: route[1].client_max_body_size: is nginx's client_max_body_size: write max-body-bytes"), "{e:?}");
        assert!(
            e[1].contains("route[1].Alias: is nginx's alias: a static route's root is what"),
            "{e:?}"
        );
        assert!(
            e[2].contains("route[1].try-files: is nginx's try_files: a static route's fallback"),
            "{e:?}"
        );
    }

    /// Read from the file as written: made canonical first, a `?` became
    /// `%3F` and passed every check (a unit test of `validate` did not see).
    #[test]
    fn a_route_path_holds_no_query_or_fragment() {
        for path in ["/search?q=1", "/a#top", "/x/?"] {
            let errs = errors(&format!(
                "[[route]]\npath = \"{path}\"\nhandler = \"respond\"\n"
            ));
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].starts_with("t.toml:2: route[1].path: "), "{errs:?}");
            assert!(errs[0].contains("matches the path alone"), "{errs:?}");
        }
        assert!(errors("[[route]]\npath = \"/a%3Fb\"\nhandler = \"respond\"\n").is_empty());
    }

    #[test]
    fn a_host_that_no_request_could_name_is_an_error() {
        let route = |host: &str| {
            format!("[[route]]\npath = \"/\"\nhost = \"{host}\"\nhandler = \"respond\"\n")
        };
        for bad in [
            "a..b",
            "example.com..",
            ".",
            "",
            "[::1",
            "[nope]",
            "*.",
            "*",
            "*.[::1]",
            "..example.com",
            "*.*.example.com",
            "www.example.*",
            "a.*.example.com",
            &format!("*.{}example.com", "a.".repeat(9000)),
            &format!("{}.example.com", "a".repeat(64)),
        ] {
            let errs = errors(&route(bad));
            let rule = format!("must be a host name or address without a port (\"example.com\", \"[::1]\"), or a name's wildcard (\"*.example.com\": the names under it; \".example.com\": it and the names under it), got {bad:?}");
            // As an error shows it: an overlong value cut.
            let shown = crate::config::ConfigError::new("route[1].host", rule).to_string();
            assert_eq!(errs, [format!("t.toml:3: {shown}")], "{bad}");
        }
        for good in [
            "example.com",
            "Example.COM.",
            "[0:0::1]",
            "_dmarc.example",
            "10.0.0.1",
            ".example.com",
            "*.example.com",
            "*.Example.com.",
        ] {
            assert!(errors(&route(good)).is_empty(), "{good}");
        }
    }

    /// A handler missing or not one there is is said once, with the name
    /// it most likely meant: the keys a handler takes are not reported one
    /// by one as unknown (a typo in `handler` made a line of each); a key
    /// no handler takes still is.
    #[test]
    fn an_unknown_or_missing_kind_is_said_once() {
        let errs = errors(
            "[[route]]\npath = \"/\"\nhandler = \"fastcgi\"\nstatus = 200\n\n\
             [[route]]\npath = \"/b\"\nbody = \"x\"\nbogus = 1\n\n\
             [[route]]\npath = \"/c\"\nhandler = 1\nroot = \"/srv\"\n\n\
             [[route]]\npath = \"/d\"\nhandler = \"statc\"\nroot = \"/srv\"\nindex = [\"a\"]\n",
        );
        assert_eq!(
            errs,
            [
                "t.toml:3: route[1].handler: must be \"respond\", \"static\", \"redirect\" or \"proxy\", got \"fastcgi\"",
                "t.toml:6: route[2].handler: is required: \"respond\", \"static\", \"redirect\" or \"proxy\"",
                "t.toml:9: route[2].bogus: unknown key",
                "t.toml:13: route[3].handler: must be a string",
                "t.toml:18: route[4].handler: must be \"respond\", \"static\", \"redirect\" or \"proxy\", got \"statc\" (did you mean \"static\"?)",
            ]
        );
    }

    #[test]
    fn each_kind_reads_its_own_keys() {
        let c = crate::config::parse_str(
            "[[route]]\npath = \"/\"\nhandler = \"respond\"\nstatus = 404\nbody = \"no\"\n\n\
             [[route]]\npath = \"/old\"\nhandler = \"redirect\"\nlocation = \"/new\"\n\n\
             [[route]]\npath = \"/s/\"\nhandler = \"static\"\nroot = \"www\"\nautoindex = true\ncache-valid = \"5s\"\n",
            Path::new("/etc/x/t.toml"),
        )
        .unwrap();
        use crate::config::{HandlerConfig, StaticConfig};
        assert_eq!(
            c.routes[0].handler,
            HandlerConfig::Respond {
                status: 404,
                body: "no".into(),
                content_type: "text/plain; charset=utf-8".into()
            }
        );
        assert_eq!(
            c.routes[1].handler,
            HandlerConfig::Redirect {
                status: 301,
                location: "/new".into()
            }
        );
        let mut s = StaticConfig::new("/etc/x/www".into());
        s.autoindex = true;
        s.cache_valid = std::time::Duration::from_secs(5);
        assert_eq!(c.routes[2].handler, HandlerConfig::Static(s));
    }

    #[test]
    fn headers_are_read_in_order_and_checked() {
        let c = crate::config::parse_str(
            "[[route]]\npath = \"/\"\nhandler = \"respond\"\n\
             headers = { \"X-Frame-Options\" = \"DENY\", \"Access-Control-Allow-Origin\" = \"*\" }\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(
            c.routes[0].headers,
            [
                ("X-Frame-Options".to_string(), "DENY".to_string()),
                ("Access-Control-Allow-Origin".to_string(), "*".to_string()),
            ]
        );
        let errs = errors(
            "[[route]]\npath = \"/s/\"\nhandler = \"static\"\nroot = \"www\"\n\
             [route.headers]\n\
             \"X A\" = \"1\"\n\
             Content-Length = \"1\"\n\
             connection = \"close\"\n\
             ETag = \"x\"\n\
             X-B = \"1\"\n\
             x-b = \"2\"\n\
             X-C = \"a\\nb\"\n\
             X-D = \" padded\"\n\
             X-E = \"\"\n\
             X-F = 1\n\
             Vary = \"Origin\"\n\n\
             [[route]]\npath = \"/r\"\nhandler = \"redirect\"\nlocation = \"/\"\nheaders = { Location = \"/x\", ETag = \"ok\" }\n\
             [[route]]\npath = \"/f\"\nhandler = \"respond\"\nheaders = \"X-A: 1\"\n",
        );
        assert_eq!(
            errs,
            [
                "t.toml:6: route[1].headers.X A: \"X A\" is not a header field name (letters, digits and !#$%&'*+-.^_`|~)",
                "t.toml:7: route[1].headers.Content-Length: Content-Length cannot be set: coreserve frames every response itself",
                "t.toml:8: route[1].headers.connection: connection cannot be set: it is about the connection, which coreserve manages",
                "t.toml:9: route[1].headers.ETag: ETag cannot be set: the static handler writes it for each file",
                "t.toml:11: route[1].headers.x-b: X-B is already set (field names are not case-sensitive)",
                "t.toml:12: route[1].headers.X-C: must be a header value: visible ASCII, spaces and tabs only inside, not empty; got \"a\\nb\"",
                "t.toml:13: route[1].headers.X-D: must be a header value: visible ASCII, spaces and tabs only inside, not empty; got \" padded\"",
                "t.toml:14: route[1].headers.X-E: must be a header value: visible ASCII, spaces and tabs only inside, not empty; got \"\"",
                "t.toml:15: route[1].headers.X-F: must be a string",
                "t.toml:22: route[2].headers.Location: Location cannot be set: it is the route's location",
                "t.toml:26: route[3].headers: must be a table of header fields, like { \"X-Frame-Options\" = \"DENY\" }",
            ]
        );
        let errs = errors(
            "[[route]]\npath = \"/\"\nhandler = \"respond\"\n\
             headers = { Content-Encoding = \"gzip\", Proxy-Authenticate = \"Basic\", X-A = \"1\", X_A = \"2\" }\n",
        );
        assert_eq!(
            errs,
            [
                "t.toml:4: route[1].headers.Content-Encoding: Content-Encoding cannot be set: it describes a body the route does not transform",
                "t.toml:4: route[1].headers.Proxy-Authenticate: Proxy-Authenticate cannot be set: it is about the connection, which coreserve manages",
            ],
            "X-A and X_A are two fields to a client"
        );
        let many: String = (0..65).map(|i| format!("X-{i} = \"v\"\n")).collect();
        let errs = errors(&format!(
            "[[route]]\npath = \"/\"\nhandler = \"respond\"\n[route.headers]\n{many}"
        ));
        assert_eq!(
            errs,
            ["t.toml:4: route[1].headers: 65 fields of 575 bytes: at most 64 fields of 8 KiB in all (a head that large is refused by clients and servers alike)"]
        );
        let big = "v".repeat(9000);
        let errs = errors(&format!(
            "[[route]]\npath = \"/\"\nhandler = \"respond\"\nheaders = {{ X-Big = \"{big}\" }}\n"
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("1 fields of 9009 bytes"), "{errs:?}");
        let errs = errors(
            "[[route]]\npath = \"/s/\"\nhandler = \"static\"\nroot = \"www\"\nheaders = { Location = \"/x\" }\n",
        );
        assert_eq!(
            errs,
            ["t.toml:5: route[1].headers.Location: Location cannot be set: the static handler sends its own (a directory's added slash)"]
        );
    }
}
