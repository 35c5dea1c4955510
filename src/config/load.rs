//! Reading `coreserve.toml`: environment substitution, TOML parsing with
//! positions, and one walk over the document that checks every key and value
//! and collects every error with its line, instead of stopping at the first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item, TableLike, Value};

use super::env;
use super::{
    route_key, AccessLog, Config, ConfigError, Dispatch, HandlerConfig, LogFormat, RouteConfig,
    StaticConfig,
};
use crate::cpus;
use crate::units;

/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_PATH: &str = "/etc/coreserve/coreserve.toml";

/// A file that did not load: every error, and the configuration as far as it
/// could be read (`None` when the file could not be read or parsed at all).
#[derive(Debug)]
pub struct LoadFailure {
    /// What was read despite the errors.
    pub partial: Option<Box<Config>>,
    /// Every error, with file and line.
    pub errors: Vec<ConfigError>,
}

impl LoadFailure {
    fn new(partial: Option<Config>, errors: Vec<ConfigError>) -> Self {
        LoadFailure {
            partial: partial.map(Box::new),
            errors,
        }
    }
}

/// Read and check a configuration file over the built-in defaults.
/// Cross-key rules are checked later by `Config::validate`, after flags.
/// On errors, returns them with the configuration as far as it could be read
/// (so validation can still report the rest).
pub fn load_file(path: &Path) -> Result<Config, LoadFailure> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let err = ConfigError {
            file: Some(name.clone()),
            line: None,
            key: String::new(),
            rule: format!("cannot read the configuration: {e}"),
        };
        LoadFailure::new(None, vec![err])
    })?;
    parse_str(&text, path)
}

/// Parse configuration text as if read from `path`.
pub fn parse_str(text: &str, path: &Path) -> Result<Config, LoadFailure> {
    let name = path.display().to_string();
    let at = |line: Option<usize>, key: &str, rule: String| ConfigError {
        file: Some(name.clone()),
        line,
        key: key.to_string(),
        rule,
    };
    let text = env::substitute(text, |v| std::env::var(v).ok()).map_err(|unset| {
        let unset = unset
            .into_iter()
            .map(|u| {
                at(
                    Some(u.line),
                    "",
                    format!(
                        "environment variable {} is not set (write ${{{}:-default}} to give a default)",
                        u.name, u.name
                    ),
                )
            })
            .collect::<Vec<_>>();
        LoadFailure::new(None, unset)
    })?;
    let doc = ImDocument::parse(text.clone()).map_err(|e| {
        let line = e.span().map(|s| line_of(&text, s.start));
        let msg = e.message().trim().replace('\n', " ");
        LoadFailure::new(None, vec![at(line, "", format!("not valid TOML: {msg}"))])
    })?;

    let mut w = Walker {
        text: &text,
        config: Config {
            source: Some(PathBuf::from(path)),
            ..Config::default()
        },
        errors: Vec::new(),
    };
    w.document(doc.as_table());
    if w.errors.is_empty() {
        Ok(w.config)
    } else {
        let mut errors = w.errors;
        for e in &mut errors {
            e.file = Some(name.clone());
        }
        Err(LoadFailure::new(Some(w.config), errors))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// One pass over the document, filling `config` and `errors`.
struct Walker<'t> {
    text: &'t str,
    config: Config,
    errors: Vec<ConfigError>,
}

/// A value of a key, with where it is.
struct Field<'a> {
    key: String,
    line: Option<usize>,
    item: &'a Item,
    /// The value as written, for messages.
    raw: String,
}

impl<'t> Walker<'t> {
    fn error(&mut self, f: &Field, rule: String) {
        self.errors.push(ConfigError {
            file: None,
            line: f.line,
            key: f.key.clone(),
            rule,
        });
    }

    /// The fields of a table, keyed `prefix.name`, with their lines recorded.
    fn fields<'a>(&mut self, table: &'a dyn TableLike, prefix: &str) -> Vec<Field<'a>> {
        table
            .iter()
            .map(|(name, item)| {
                let span = table
                    .key(name)
                    .and_then(|k| k.span())
                    .or_else(|| item.span());
                let line = span.map(|s| line_of(self.text, s.start));
                let key = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}.{name}")
                };
                if let Some(l) = line {
                    self.config.lines.insert(key.clone(), l);
                }
                let raw = item
                    .span()
                    .and_then(|s| self.text.get(s))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                Field {
                    key,
                    line,
                    item,
                    raw,
                }
            })
            .collect()
    }

    fn document(&mut self, root: &toml_edit::Table) {
        for f in self.fields(root, "") {
            match f.key.as_str() {
                "server" | "limits" | "log" | "metrics" => match f.item.as_table_like() {
                    Some(t) => match f.key.as_str() {
                        "server" => self.server(t),
                        "limits" => self.limits(t),
                        "log" => self.log(t),
                        _ => self.metrics(t),
                    },
                    None => self.error(&f, "must be a table".into()),
                },
                "route" => match f.item.as_array_of_tables() {
                    Some(routes) => {
                        self.config.routes.clear();
                        for (i, t) in routes.iter().enumerate() {
                            self.route(i, t);
                        }
                    }
                    None => self.error(&f, "must be written as [[route]] tables".into()),
                },
                _ => self.error(
                    &f,
                    "unknown key (sections are server, limits, route, log, metrics)".into(),
                ),
            }
        }
    }

    fn server(&mut self, t: &dyn TableLike) {
        for f in self.fields(t, "server") {
            match f.key.as_str() {
                "server.listen" => {
                    if let Some(v) = self.listen(&f) {
                        self.config.listen = v;
                    }
                }
                "server.shards" => match f.item.as_value() {
                    Some(Value::String(s)) if s.value() == "auto" => self.config.shards = None,
                    _ => {
                        if let Some(n) = self.count(&f, "a number of shards or \"auto\"") {
                            self.config.shards = Some(n);
                        }
                    }
                },
                "server.cpus" => match f.item.as_value() {
                    Some(Value::String(s)) if s.value() == "all" => self.config.cpus = None,
                    Some(Value::String(s)) => match cpus::parse_cpu_list(s.value()) {
                        Ok(list) => self.config.cpus = Some(list),
                        Err(e) => self.error(&f, e.to_string()),
                    },
                    _ => self.error(&f, "must be a CPU list like \"0,2-3\" or \"all\"".into()),
                },
                "server.dispatch" => match self.string(&f).as_deref() {
                    Some("master") => self.config.dispatch = Dispatch::Master,
                    Some("reuseport") => self.config.dispatch = Dispatch::Reuseport,
                    Some(other) => self.error(
                        &f,
                        format!("must be \"master\" or \"reuseport\", got {other:?}"),
                    ),
                    None => {}
                },
                "server.drain-timeout" => {
                    if let Some(d) = self.duration(&f) {
                        self.config.drain_timeout = d;
                    }
                }
                "server.defer-accept" => {
                    if let Some(v) = self.flag(&f) {
                        self.config.defer_accept = v;
                    }
                }
                _ => self.error(&f, "unknown key".into()),
            }
        }
    }

    fn limits(&mut self, t: &dyn TableLike) {
        for f in self.fields(t, "limits") {
            let l = &mut self.config.limits;
            match f.key.as_str() {
                "limits.max-header-bytes" => {
                    if let Some(v) = self.size(&f) {
                        self.config.limits.max_header_bytes = v;
                    }
                }
                "limits.max-uri-bytes" => {
                    if let Some(v) = self.size(&f) {
                        self.config.limits.max_uri_bytes = v;
                    }
                }
                "limits.max-body-bytes" => {
                    if let Some(v) = self.size(&f) {
                        self.config.limits.max_body_bytes = v;
                    }
                }
                "limits.max-headers" => {
                    if let Some(v) = self.count(&f, "a number") {
                        self.config.limits.max_headers = v;
                    }
                }
                "limits.max-connections" => {
                    if let Some(v) = self.count(&f, "a number") {
                        self.config.limits.max_connections = v;
                    }
                }
                "limits.header-timeout"
                | "limits.body-timeout"
                | "limits.send-timeout"
                | "limits.keepalive-timeout" => {
                    let _ = l;
                    if let Some(d) = self.duration(&f) {
                        let l = &mut self.config.limits;
                        match f.key.as_str() {
                            "limits.header-timeout" => l.header_timeout = d,
                            "limits.body-timeout" => l.body_timeout = d,
                            "limits.send-timeout" => l.send_timeout = d,
                            _ => l.keepalive_timeout = d,
                        }
                    }
                }
                _ => self.error(&f, "unknown key".into()),
            }
        }
    }

    /// A path from the file: a relative one is relative to the file's
    /// directory, so a configuration, its site and its logs can move
    /// together (a static `root` and the access log alike).
    fn relative_to_file(&self, p: &str) -> PathBuf {
        let dir = self
            .config
            .source
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new(""));
        dir.join(p)
    }

    fn log(&mut self, t: &dyn TableLike) {
        for f in self.fields(t, "log") {
            match f.key.as_str() {
                "log.access" => match self.string(&f).as_deref() {
                    Some("off") => self.config.log.access = AccessLog::Off,
                    Some("stderr") => self.config.log.access = AccessLog::Stderr,
                    Some("") => self.error(
                        &f,
                        "must be \"off\", \"stderr\" or a file path, got \"\"".into(),
                    ),
                    Some(p) => self.config.log.access = AccessLog::File(self.relative_to_file(p)),
                    None => {}
                },
                "log.format" => match self.string(&f).as_deref() {
                    Some("combined") => self.config.log.format = LogFormat::Combined,
                    Some("json") => self.config.log.format = LogFormat::Json,
                    Some(o) => {
                        self.error(&f, format!("must be \"combined\" or \"json\", got {o:?}"))
                    }
                    None => {}
                },
                _ => self.error(&f, "unknown key".into()),
            }
        }
    }

    fn metrics(&mut self, t: &dyn TableLike) {
        for f in self.fields(t, "metrics") {
            match f.key.as_str() {
                "metrics.listen" => match self.string(&f).as_deref() {
                    Some("off") => {
                        self.config.metrics.listen = None;
                        self.config.metrics.listen_is_default = false;
                    }
                    Some(a) => match a.parse() {
                        Ok(addr) => {
                            self.config.metrics.listen = Some(addr);
                            self.config.metrics.listen_is_default = false;
                        }
                        Err(_) => self.error(
                            &f,
                            format!(
                                "must be an address like \"127.0.0.1:9464\" or \"off\", got {a:?}"
                            ),
                        ),
                    },
                    None => {}
                },
                "metrics.path" => {
                    if let Some(p) = self.string(&f) {
                        self.config.metrics.path = p;
                    }
                }
                _ => self.error(&f, "unknown key".into()),
            }
        }
    }

    fn route(&mut self, i: usize, t: &toml_edit::Table) {
        let prefix = route_key(i);
        if let Some(s) = t.span() {
            let line = line_of(self.text, s.start);
            self.config.lines.insert(format!("{prefix}]"), line);
        }
        let fields = self.fields(t, &prefix);
        let get = |name: &str| {
            let key = format!("{prefix}.{name}");
            fields.iter().find(|f| f.key == key)
        };
        let mut route = RouteConfig {
            path: String::new(),
            methods: None,
            host: None,
            handler: HandlerConfig::Respond {
                status: 200,
                body: String::new(),
                content_type: "text/plain; charset=utf-8".into(),
            },
        };
        let handler = match get("handler") {
            Some(f) => self.string(f),
            None => {
                self.errors.push(ConfigError {
                    file: None,
                    line: self.config.lines.get(&format!("{prefix}]")).copied(),
                    key: format!("{prefix}.handler"),
                    rule: "is required: \"respond\", \"static\" or \"redirect\"".into(),
                });
                None
            }
        };
        let allowed: &[&str] = match handler.as_deref() {
            Some("respond") => &["status", "body", "content-type"],
            Some("static") => &[
                "root",
                "index",
                "autoindex",
                "follow-symlinks",
                "dotfiles",
                "precompressed",
                "cache-control",
                "cache-valid",
            ],
            Some("redirect") => &["status", "location"],
            Some(other) => {
                let f = get("handler").expect("handler was read");
                self.error(
                    f,
                    format!("must be \"respond\", \"static\" or \"redirect\", got {other:?}"),
                );
                &[]
            }
            None => &[],
        };
        match get("path") {
            Some(f) => route.path = self.string(f).unwrap_or_default(),
            None => self.errors.push(ConfigError {
                file: None,
                line: self.config.lines.get(&format!("{prefix}]")).copied(),
                key: format!("{prefix}.path"),
                rule: "is required (a path prefix like \"/\" or \"/static/\")".into(),
            }),
        }
        let mut status = None;
        let mut static_cfg = StaticConfig::new(PathBuf::new());
        let mut root_set = false;
        let mut location = None;
        let (mut body, mut content_type) = (String::new(), "text/plain; charset=utf-8".to_string());
        for f in &fields {
            let name = &f.key[prefix.len() + 1..];
            match name {
                "handler" | "path" => {}
                "methods" => route.methods = self.string_list(f),
                "host" => route.host = self.route_host(f),
                n if !allowed.contains(&n) => {
                    let known = if handler.is_some() && !allowed.is_empty() {
                        format!(
                            "unknown key for handler {:?} (it takes {})",
                            handler.as_deref().unwrap_or(""),
                            allowed.join(", ")
                        )
                    } else {
                        "unknown key".to_string()
                    };
                    self.error(f, known);
                }
                "status" => {
                    status = self.count(f, "an HTTP status code").map(|n| n as u16);
                }
                "body" => body = self.string(f).unwrap_or_default(),
                "content-type" => content_type = self.string(f).unwrap_or_default(),
                "location" => location = self.string(f),
                "root" => {
                    if let Some(r) = self.string(f) {
                        static_cfg.root = self.relative_to_file(&r);
                        root_set = true;
                    }
                }
                "index" => {
                    if let Some(v) = self.string_list(f) {
                        static_cfg.index = v;
                    }
                }
                "autoindex" => static_cfg.autoindex = self.flag(f).unwrap_or(false),
                "follow-symlinks" => static_cfg.follow_symlinks = self.flag(f).unwrap_or(false),
                "dotfiles" => static_cfg.dotfiles = self.flag(f).unwrap_or(false),
                "precompressed" => static_cfg.precompressed = self.flag(f).unwrap_or(false),
                "cache-control" => static_cfg.cache_control = self.string(f),
                "cache-valid" => {
                    if let Some(d) = self.duration(f) {
                        static_cfg.cache_valid = d;
                    }
                }
                _ => self.error(f, "unknown key".into()),
            }
        }
        let missing = |w: &mut Self, what: &str, rule: &str| {
            w.errors.push(ConfigError {
                file: None,
                line: w.config.lines.get(&format!("{prefix}]")).copied(),
                key: format!("{prefix}.{what}"),
                rule: rule.into(),
            })
        };
        route.handler = match handler.as_deref() {
            Some("static") => {
                if !root_set {
                    missing(
                        self,
                        "root",
                        "is required for a static route (the directory served)",
                    );
                }
                HandlerConfig::Static(static_cfg)
            }
            Some("redirect") => {
                if location.is_none() {
                    missing(self, "location", "is required for a redirect route");
                }
                HandlerConfig::Redirect {
                    status: status.unwrap_or(301),
                    location: location.unwrap_or_default(),
                }
            }
            _ => HandlerConfig::Respond {
                status: status.unwrap_or(200),
                body,
                content_type,
            },
        };
        self.config.routes.push(route);
    }

    fn string(&mut self, f: &Field) -> Option<String> {
        match f.item.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.error(f, "must be a string".into());
                None
            }
        }
    }

    /// A route's host: a name or address as the request's Host is compared
    /// (lower case, no port, IPv6 without brackets, no trailing dot).
    fn route_host(&mut self, f: &Field) -> Option<String> {
        let host = self.string(f)?.to_ascii_lowercase();
        let bare = match host.strip_prefix('[') {
            Some(v6) => v6
                .strip_suffix(']')
                .filter(|a| a.parse::<std::net::Ipv6Addr>().is_ok()),
            None => Some(host.strip_suffix('.').unwrap_or(&host)).filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            }),
        };
        match bare {
            Some(bare) => Some(bare.to_string()),
            None => {
                self.error(
                    f,
                    format!(
                        "must be a host name or address without a port (\"example.com\", \"[::1]\"), got {host:?}"
                    ),
                );
                None
            }
        }
    }

    fn string_list(&mut self, f: &Field) -> Option<Vec<String>> {
        let list = f.item.as_array().and_then(|a| {
            a.iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        });
        if list.is_none() {
            self.error(f, "must be a list of strings like [\"a\", \"b\"]".into());
        }
        list
    }

    fn flag(&mut self, f: &Field) -> Option<bool> {
        let v = f.item.as_bool();
        if v.is_none() {
            self.error(f, "must be true or false".into());
        }
        v
    }

    fn count(&mut self, f: &Field, what: &str) -> Option<usize> {
        match f.item.as_integer() {
            Some(n) if n >= 0 => Some(n as usize),
            _ => {
                self.error(f, format!("must be {what}, got {}", f.raw));
                None
            }
        }
    }

    fn size(&mut self, f: &Field) -> Option<u64> {
        let parsed = match f.item.as_value() {
            Some(Value::Integer(n)) if *n.value() >= 0 => Ok(*n.value() as u64),
            Some(Value::String(s)) => units::parse_size(s.value()),
            _ => units::parse_size(&f.raw),
        };
        parsed.map_err(|e| self.error(f, e.to_string())).ok()
    }

    fn duration(&mut self, f: &Field) -> Option<std::time::Duration> {
        let parsed = match f.item.as_value() {
            Some(Value::Integer(n)) if *n.value() >= 0 => {
                Ok(std::time::Duration::from_secs(*n.value() as u64))
            }
            Some(Value::String(s)) => units::parse_duration(s.value()),
            _ => units::parse_duration(&f.raw),
        };
        parsed.map_err(|e| self.error(f, e.to_string())).ok()
    }

    fn listen(&mut self, f: &Field) -> Option<Vec<SocketAddr>> {
        let strings: Option<Vec<String>> = match f.item.as_value() {
            Some(Value::String(s)) => Some(vec![s.value().clone()]),
            Some(Value::Array(a)) => a.iter().map(|v| v.as_str().map(str::to_string)).collect(),
            _ => None,
        };
        let Some(strings) = strings else {
            self.error(
                f,
                "must be an address like \"0.0.0.0:80\" or a list of them".into(),
            );
            return None;
        };
        let mut out = Vec::new();
        for s in strings {
            match s.parse() {
                Ok(a) => out.push(a),
                Err(_) => self.error(
                    f,
                    format!("must be an address like \"0.0.0.0:80\" or \"[::]:80\", got {s:?}"),
                ),
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        parse_str(text, Path::new("t.toml"))
            .map_err(|f| f.errors)
            .and_then(|c| c.validate())
            .map_err(|errs| errs.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.routes, vec![RouteConfig::hello_world()]);
        assert_eq!(c.listen, Config::default().listen);
    }

    #[test]
    fn every_section() {
        let c = parse(
            r#"
[server]
listen = ["127.0.0.1:8080", "[::1]:8080"]
shards = 2
cpus = "0-1"
dispatch = "reuseport"
drain-timeout = "5s"
defer-accept = false

[limits]
max-body-bytes = "2m"
max-header-bytes = 16384
keepalive-timeout = 30

[log]
access = "stderr"
format = "json"

[[route]]
path = "/"
handler = "respond"
body = "hi"

[[route]]
path = "/old"
handler = "redirect"
status = 308
location = "/new"
methods = ["GET", "HEAD"]
host = "Example.com"
"#,
        )
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.shards, Some(2));
        assert_eq!(c.cpus, Some(vec![0, 1]));
        assert_eq!(c.dispatch, Dispatch::Reuseport);
        assert_eq!(c.limits.max_body_bytes, 2 << 20);
        assert_eq!(c.limits.max_header_bytes, 16384);
        assert_eq!(c.limits.keepalive_timeout.as_secs(), 30);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].host.as_deref(), Some("example.com"));
        assert!(!c.defer_accept);
        assert_eq!(c.lines["limits.max-body-bytes"], 11);
    }

    #[test]
    fn every_error_with_file_line_and_key() {
        let errs = parse(
            r#"[server]
shards = "many"
colour = "blue"
defer-accept = "yes"

[limits]
max-body-bytes = "lots"
header-timeout = "soon"

[[route]]
path = "/x"
handler = "static"

[[route]]
path = "/y"
handler = "respond"
root = "/srv"
"#,
        )
        .unwrap_err();
        assert_eq!(
            errs,
            vec![
                "t.toml:2: server.shards: must be a number of shards or \"auto\", got \"many\"",
                "t.toml:3: server.colour: unknown key",
                "t.toml:4: server.defer-accept: must be true or false",
                "t.toml:7: limits.max-body-bytes: must be a size like 8k, 1m or 1048576, got \"lots\"",
                "t.toml:8: limits.header-timeout: must be a duration like 500ms, 60s, 5m or 1h, got \"soon\"",
                "t.toml:10: route[1].root: is required for a static route (the directory served)",
                "t.toml:17: route[2].root: unknown key for handler \"respond\" (it takes status, body, content-type)",
            ]
        );
    }

    #[test]
    fn route_hosts_are_stored_as_requests_are_compared() {
        let route = |host: &str| {
            format!("[[route]]\npath = \"/\"\nhandler = \"respond\"\nhost = \"{host}\"\n")
        };
        for (given, stored) in [
            ("Example.COM", "example.com"),
            ("example.com.", "example.com"),
            ("[::2]", "::2"),
            ("127.0.0.1", "127.0.0.1"),
        ] {
            let c = parse(&route(given)).unwrap();
            assert_eq!(c.routes[0].host.as_deref(), Some(stored), "{given}");
        }
        for bad in ["port.example:8080", "[::2]:80", "[nope]", "", "a b"] {
            let errs = parse(&route(bad)).unwrap_err();
            assert!(
                errs[0].starts_with(
                    "t.toml:4: route[1].host: must be a host name or address without a port"
                ),
                "{bad}: {errs:?}"
            );
        }
    }

    #[test]
    fn toml_syntax_errors_have_a_line() {
        let errs = parse("[server]\nshards = = 2\n").unwrap_err();
        assert!(errs[0].starts_with("t.toml:2: not valid TOML"), "{errs:?}");
    }

    #[test]
    fn environment_is_substituted() {
        std::env::set_var("CORESERVE_TEST_PORT", "9123");
        let c = parse("[server]\nlisten = \"127.0.0.1:${CORESERVE_TEST_PORT}\"\ndrain-timeout = \"${CORESERVE_UNSET:-3s}\"\n").unwrap();
        assert_eq!(c.listen[0].port(), 9123);
        assert_eq!(c.drain_timeout.as_secs(), 3);
        let errs = parse("\n[server]\nlisten = \"${CORESERVE_UNSET_TOO}\"\n").unwrap_err();
        assert_eq!(
            errs,
            vec!["t.toml:3: environment variable CORESERVE_UNSET_TOO is not set (write ${CORESERVE_UNSET_TOO:-default} to give a default)"]
        );
    }

    #[test]
    fn post_parse_rules_point_at_lines() {
        let errs = parse("[limits]\n\nmax-header-bytes = 10\n").unwrap_err();
        assert_eq!(
            errs,
            vec!["t.toml:3: limits.max-header-bytes: must be between 256 and 1m, got 10"]
        );
    }
}
