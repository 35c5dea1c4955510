//! Reading `coreserve.toml`: environment substitution, TOML parsing with
//! positions, and one walk over the document that checks every key and value
//! and collects every error with its line, instead of stopping at the first.
//!
//! This module owns the walk: the `Walker`, the top level of the document,
//! and how a key's line is recorded. Each section is read in a file of its
//! own (`server`, `limits`, `log`, `metrics`, `routes`, `upstreams`, `apps`), each
//! handler kind in `handlers/`, and the typed readers they share (`string`,
//! `size`, …) are in `values`. Nothing here looks at the file system beyond
//! reading the file itself: that is `files::preflight`. The one lookup made
//! is resolving an upstream server's host name, through `Resolve`, which
//! tests replace.

mod apps;
mod handlers;
mod limits;
mod log;
mod metrics;
mod routes;
mod server;
mod tls;
mod upstreams;
mod values;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item, TableLike};

use super::env;
use super::{Config, ConfigError};

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

/// The largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Read and check a configuration file over the built-in defaults.
/// Cross-key rules are checked later by `Config::validate`, after flags.
/// On errors, returns them with the configuration as far as it could be read
/// (so validation can still report the rest).
pub fn load_file(path: &Path) -> Result<Config, LoadFailure> {
    load_file_with(path, UnsetVars::Refused)
}

/// What a `${VAR}` without a default whose variable is not set becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsetVars {
    /// An error at its key: the server and `--check`.
    Refused,
    /// `""` (an empty string where the reference is bare): for `coreserve
    /// status`, which reads `[metrics]` alone and runs where the
    /// service's environment is not; what else the file says is not used.
    Placeholder,
}

/// `load_file`, with unset variables taken as `unset` says.
pub fn load_file_with(path: &Path, unset: UnsetVars) -> Result<Config, LoadFailure> {
    let name = path.display().to_string();
    let bytes = super::files::read_small(path, MAX_CONFIG_BYTES);
    // Where the bytes stop being UTF-8, as a line an editor can go to.
    if let Ok(b) = &bytes {
        if let Err(e) = std::str::from_utf8(b) {
            let at = e.valid_up_to();
            let line = 1 + b[..at].iter().filter(|&&c| c == b'\n').count();
            let err = ConfigError {
                file: Some(name),
                line: Some(line),
                key: String::new(),
                rule: "not UTF-8 text: a configuration must be UTF-8 (a file saved in Latin-1?)"
                    .into(),
            };
            return Err(LoadFailure::new(None, vec![err]));
        }
    }
    let text = bytes
        .and_then(|b| {
            String::from_utf8(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        })
        .and_then(|text| {
            // Empty is a valid file (every default, as /dev/null gives);
            // from a named pipe, more likely nobody wrote to it.
            if text.is_empty()
                && std::fs::metadata(path).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_fifo()
                })
            {
                return Err(io::Error::other("nothing was written to this pipe"));
            }
            Ok(text)
        })
        .map_err(|e| {
            let err = ConfigError {
                file: Some(name.clone()),
                line: None,
                key: String::new(),
                rule: format!("cannot read the configuration: {e}"),
            };
            LoadFailure::new(None, vec![err])
        })?;
    parse_with(&text, path, &resolve_host, unset)
}

/// Whether `path` is a pipe, a socket or a terminal (following links:
/// `/dev/stdin`): what is read once, to its end, and cannot be read again
/// on a reload (a terminal would wait for its end), unlike a file or
/// `/dev/null`.
pub fn is_pipe(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let Ok(m) = std::fs::metadata(path) else {
        return false;
    };
    let t = m.file_type();
    let null = std::fs::canonicalize(path).is_ok_and(|p| p == Path::new("/dev/null"));
    t.is_fifo() || t.is_socket() || (t.is_char_device() && !null)
}

/// How the loader turns an upstream server's host name and port into
/// addresses: the system's resolver (`resolve_host`), or a fixed table in
/// tests, which then need no DNS.
type Resolve<'r> = &'r dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

/// The system's resolver: every address getaddrinfo(3) gives for `host`
/// (`/etc/hosts`, DNS, …), in its order. It blocks while it looks.
fn resolve_host(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    (host, port).to_socket_addrs().map(Iterator::collect)
}

/// Parse configuration text as if read from `path`.
pub fn parse_str(text: &str, path: &Path) -> Result<Config, LoadFailure> {
    parse_with(text, path, &resolve_host, UnsetVars::Refused)
}

/// `parse_str` with the resolver and the way with unset variables given.
fn parse_with(
    text: &str,
    path: &Path,
    resolve: Resolve<'_>,
    unset: UnsetVars,
) -> Result<Config, LoadFailure> {
    let name = path.display().to_string();
    let at = |line: Option<usize>, key: &str, rule: String| ConfigError {
        file: Some(name.clone()),
        line,
        key: key.to_string(),
        rule,
    };
    let text = env::substitute(
        text,
        |v| match std::env::var(v) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(raw)) => Err(raw),
        },
        MAX_CONFIG_BYTES as usize,
        // `""`: an empty string where the reference is bare (`shards =
        // ${N}`), two quote marks inside a string; so the text parses
        // either way.
        (unset == UnsetVars::Placeholder).then_some("\"\""),
    )
    .map_err(|unset| {
        let unset = unset
            .into_iter()
            .map(|u| at(Some(u.line), &u.key, u.rule()))
            .collect::<Vec<_>>();
        LoadFailure::new(None, unset)
    })?;
    let doc = ImDocument::parse(text.clone()).map_err(|e| {
        let line = e.span().map(|s| line_of(&text, s.start));
        let msg = match e.message().trim() {
            // What toml_edit says of a file that ends after `key =`.
            "" if e
                .span()
                .is_some_and(|s| text.get(s.start..).is_some_and(|t| t.trim().is_empty())) =>
            {
                "the file ends where a value should be".to_string()
            }
            "" => "unexpected text".to_string(),
            m => m.replace('\n', " "),
        };
        let key = line.and_then(|l| key_on_line(&text, l)).unwrap_or_default();
        LoadFailure::new(None, vec![at(line, &key, format!("not valid TOML: {msg}"))])
    })?;

    let mut w = Walker {
        text: &text,
        lines: LineEnds::of(&text),
        config: Config {
            source: Some(PathBuf::from(path)),
            ..Config::default()
        },
        errors: Vec::new(),
        resolve,
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

/// The key that line `line` (from 1) of a file TOML cannot read assigns,
/// named as the other errors name keys (`server.shards`, `route[2].path`,
/// `app[1].env.PORT`), when the line is a plain `key = …` under plain
/// table headers, every value before it on one line: a value TOML refuses
/// (a number past 64 bits) is then put to its key, not to a line alone.
/// `None` when that cannot be told.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let plain = |name: &str| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    let mut table = String::new();
    // Each array table's count so far, and its latest entry's name.
    let mut arrays: Vec<(String, usize)> = Vec::new();
    // TOML takes a byte order mark before the first line; `trim` does not.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        if raw.contains("\"\"\"") || raw.contains("\'\'\'") {
            // A string over several lines: what follows may be inside it.
            return None;
        }
        let l = raw.split('#').next().unwrap_or("").trim();
        if i + 1 == line {
            let key = l.split_once('=')?.0.trim();
            return plain(key).then(|| {
                if table.is_empty() {
                    key.to_string()
                } else {
                    format!("{table}.{key}")
                }
            });
        }
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let name = name.trim();
            if !plain(name) {
                return None;
            }
            let n = match arrays.iter_mut().find(|(t, _)| t == name) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    arrays.push((name.to_string(), 1));
                    1
                }
            };
            table = format!("{name}[{n}]");
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let name = name.trim();
            if !plain(name) {
                return None;
            }
            // A table under an array table's entry (`[app.env]` after
            // `[[app]]`) belongs to that entry.
            table = match arrays
                .iter()
                .filter(|(t, _)| name.starts_with(&format!("{t}.")))
                .max_by_key(|(t, _)| t.len())
            {
                Some((t, n)) => format!("{t}[{n}]{}", &name[t.len()..]),
                None => name.to_string(),
            };
        } else if l.contains('=') && l.matches('[').count() != l.matches(']').count() {
            // An array over several lines: its lines are no keys.
            return None;
        }
    }
    None
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Where each line of a text ends, to find a key's line without counting
/// from the start each time (a file of thousands of routes has tens of
/// thousands of keys).
struct LineEnds(Vec<usize>);

impl LineEnds {
    fn of(text: &str) -> LineEnds {
        LineEnds(memchr::memchr_iter(b'\n', text.as_bytes()).collect())
    }

    /// The 1-based line of the byte at `offset`.
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&end| end < offset) + 1
    }
}

/// One pass over the document, filling `config` and `errors`.
struct Walker<'t> {
    /// The text after substitution, for values as written.
    text: &'t str,
    /// Its lines.
    lines: LineEnds,
    /// The defaults, overwritten by every value that reads correctly.
    config: Config,
    /// Every error so far, in the order of the document.
    errors: Vec<ConfigError>,
    /// Resolves the host names of upstream servers.
    resolve: Resolve<'t>,
}

/// A value of a key, with where it is.
struct Field<'a> {
    /// `section.name`, or `route[2].name`, as errors name it.
    key: String,
    /// The key's 1-based line, when toml_edit kept its position.
    line: Option<usize>,
    /// The value.
    item: &'a Item,
    /// The value as written, for messages.
    raw: String,
}

impl Walker<'_> {
    /// An error about the value of `f`, at its line.
    fn error(&mut self, f: &Field, rule: String) {
        self.error_at(f.key.clone(), f.line, rule);
    }

    /// An error about the `i`th element of the list `f`, at that
    /// element's line: in a list written one element a line (a long
    /// `servers`), the line to fix, not the one the list opens on.
    fn element_error(&mut self, f: &Field, i: usize, rule: String) {
        let element = crate::config::element_key(&f.key, i);
        let line = self.config.element_lines.get(&element).copied().or(f.line);
        self.error_at(f.key.clone(), line, rule);
    }

    /// `f`'s key (the last part of it, `name`) is none of `known`, the
    /// keys its table takes: the error names the closest when it looks
    /// like a typo of one, else lists them, as `who` ("it", "an app")
    /// takes them.
    fn unknown(&mut self, f: &Field, name: &str, known: &[&str], who: &str) {
        let rule = match closest(name, known) {
            Some(meant) => format!("unknown key (did you mean {meant}?)"),
            None => format!("unknown key ({who} takes {})", known.join(", ")),
        };
        self.error(f, rule);
    }

    /// An error about the key `key`, at `line`: for a rule that can only
    /// be checked once its table is read whole.
    fn error_at(&mut self, key: String, line: Option<usize>, rule: String) {
        self.errors.push(ConfigError {
            file: None,
            line,
            key,
            rule,
        });
    }

    /// A key that `table` (`route[2]`) should have set and did not: the
    /// error points at the table's own line.
    fn missing(&mut self, table: &str, name: &str, rule: String) {
        let key = format!("{table}.{name}");
        // Written, but wrongly (`location = 0`): that error says it all.
        if self.errors.iter().any(|e| e.key == key) {
            return;
        }
        self.errors.push(ConfigError {
            file: None,
            line: self.config.lines.get(&format!("{table}]")).copied(),
            key,
            rule,
        });
    }

    /// Record the line of an array-of-tables entry (`route[1]]`, `app[2]]`),
    /// where an error about a key it did not set points.
    fn table_line(&mut self, prefix: &str, t: &toml_edit::Table) {
        if let Some(s) = t.span() {
            let line = self.lines.line(s.start);
            self.config.lines.insert(format!("{prefix}]"), line);
        }
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
                let line = span.map(|s| self.lines.line(s.start));
                let key = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}.{name}")
                };
                if let Some(l) = line {
                    self.config.lines.insert(key.clone(), l);
                }
                // A list's elements too, as `key[i]` (0-based): a rule
                // checked after loading (a route's `methods`) can then
                // point at the element of a list written one a line.
                for (i, v) in item.as_array().into_iter().flatten().enumerate() {
                    if let Some(s) = v.span() {
                        let l = self.lines.line(s.start);
                        let element = crate::config::element_key(&key, i);
                        self.config.element_lines.insert(element, l);
                    }
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

    /// The top level: each section goes to its own reader.
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
                    Some(routes) => self.routes(routes),
                    None => self.error(&f, "must be written as [[route]] tables".into()),
                },
                "tls" => match f.item.as_table_like() {
                    Some(t) => self.tls(t),
                    None => self.error(&f, "must be a table".into()),
                },
                "upstream" => match f.item.as_array_of_tables() {
                    Some(groups) => self.upstreams(groups),
                    None => self.error(&f, "must be written as [[upstream]] tables".into()),
                },
                "app" => match f.item.as_array_of_tables() {
                    Some(apps) => self.apps(apps),
                    None => self.error(&f, "must be written as [[app]] tables".into()),
                },
                other => {
                    let sections = [
                        "server", "limits", "tls", "route", "upstream", "app", "log", "metrics",
                    ];
                    let rule = match closest(other, &sections) {
                        Some(meant) => format!("unknown key (did you mean {meant}?)"),
                        None => format!("unknown key (sections are {})", sections.join(", ")),
                    };
                    self.error(&f, rule);
                }
            }
        }
    }
}

/// The one of `known` that `name` most likely misspells: at most two
/// edits (one for a short name) away, in any case.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    // `min_uptime` is `min-uptime` as PM2 and other tools spell it.
    let name = name.to_ascii_lowercase().replace('_', "-");
    let limit = if name.len() <= 4 { 1 } else { 2 };
    known
        .iter()
        // Lengths further apart than the limit are more edits apart: a
        // made-up 1 MB key built a 1 MB by N table for each known one.
        .filter(|k| name.len().abs_diff(k.len()) <= limit)
        .map(|k| (edits(&name, k), *k))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// Edits between `a` and `b`, by bytes: insertions, deletions,
/// substitutions and swaps of two neighbours, each one (the optimal
/// string alignment distance: `tsl` is one edit from `tls`).
fn edits(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A required key written with the wrong type is said once, as that:
    /// not also as missing (probe C: `location = 0` gave both).
    #[test]
    fn a_required_key_of_the_wrong_type_is_not_also_missing() {
        let errs: Vec<String> = parse_str(
            "[[route]]\npath = \"/\"\nhandler = \"redirect\"\nlocation = 0\n\n\
             [[upstream]]\nname = 7\nservers = [\"127.0.0.1:1\"]\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .errors
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            errs,
            [
                "t.toml:4: route[1].location: must be a string",
                "t.toml:7: upstream[1].name: must be a string",
            ]
        );
    }

    /// A key one or two letters off a known one is named as the typo it
    /// likely is, in any table; one far from every key gets the list.
    #[test]
    fn a_misspelt_key_names_the_key_it_likely_means() {
        let errs = parse_str(
            "[limit]\nx = 1\n[limits]\nmax-body-byte = \"1m\"\n[server]\nShards = 2\n\
             [[route]]\npath = \"/\"\nhandlr = \"respond\"\n\
             [[app]]\nname = \"a\"\ncommand = [\"a\"]\nstart-timout = \"1s\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .errors
        .iter()
        .map(ToString::to_string)
        .filter(|e| e.contains("unknown key"))
        .collect::<Vec<_>>();
        assert_eq!(
            errs,
            [
                "t.toml:1: limit: unknown key (did you mean limits?)",
                "t.toml:4: limits.max-body-byte: unknown key (did you mean max-body-bytes?)",
                "t.toml:6: server.Shards: unknown key (did you mean shards?)",
                "t.toml:9: route[1].handlr: unknown key (did you mean handler?)",
                "t.toml:13: app[1].start-timout: unknown key (did you mean start-timeout?)",
            ]
        );
        assert_eq!(edits("kitten", "sitting"), 3);
        assert_eq!(edits("tsl", "tls"), 1);
        assert_eq!(closest("lgo", &["log", "app"]), Some("log"));
        assert_eq!(closest("pth", &["path", "host"]), Some("path"));
        assert_eq!(closest("colour", &["listen", "shards"]), None);
    }
    use crate::config::{Affinity, Dispatch, LogFormat, RouteConfig};

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
affinity = "pinned"
drain-timeout = "5s"
defer-accept = false
idle-wait = "50us"
proxy-protocol = ["10.0.0.0/8", "::1"]

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
        assert_eq!(c.affinity, Affinity::Pinned);
        assert_eq!(c.limits.max_body_bytes, 2 << 20);
        assert_eq!(c.limits.max_header_bytes, 16384);
        assert_eq!(c.limits.keepalive_timeout.as_secs(), 30);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].host.as_deref(), Some("example.com"));
        assert!(!c.defer_accept);
        assert_eq!(c.idle_wait, std::time::Duration::from_micros(50));
        assert_eq!(c.proxy_protocol.len(), 2);
        assert!(c.proxy_protocol[0].contains("10.1.2.3".parse().unwrap()));
        assert_eq!(c.lines["limits.max-body-bytes"], 14);
    }

    #[test]
    fn every_error_with_file_line_and_key() {
        let errs = parse(
            r#"[server]
shards = "many"
colour = "blue"
defer-accept = "yes"
idle-wait = "a while"
affinity = "loose"

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

[[route]]
path = "/z"
handler = "respond"
status = 65736

[[upstream]]
name = "u"
servers = ["127.0.0.1:1"]
read-timeout = 9223372036854775807
"#,
        )
        .unwrap_err();
        assert_eq!(
            errs,
            vec![
                "t.toml:2: server.shards: must be a number of shards or \"auto\", got \"many\"",
                "t.toml:3: server.colour: unknown key (it takes listen, shards, cpus, dispatch, affinity, drain-timeout, defer-accept, idle-wait, proxy-protocol)",
                "t.toml:4: server.defer-accept: must be true or false",
                "t.toml:5: server.idle-wait: must be a duration like 500ms, 60s, 1.5s, 5m, 1h 30m or 1d, got \"a while\"",
                "t.toml:6: server.affinity: must be \"pinned\" or \"floating\", got \"loose\"",
                "t.toml:9: limits.max-body-bytes: must be a size like 8k, 1m or 1048576, got \"lots\"",
                "t.toml:10: limits.header-timeout: must be a duration like 500ms, 60s, 1.5s, 5m, 1h 30m or 1d, got \"soon\"",
                "t.toml:12: route[1].root: is required for a static route (the directory served)",
                "t.toml:19: route[2].root: unknown key for handler \"respond\" (it takes status, body, content-type; every route takes path, handler, methods, host, scheme, max-body-bytes, headers)",
                "t.toml:24: route[3].status: must be an HTTP status code, got 65736",
                "t.toml:29: upstream[1].read-timeout: must be at most 365 days (8760h), got \"9223372036854775807\"",
            ]
        );
    }

    #[test]
    fn route_paths_are_stored_as_requests_are_routed() {
        let path_of = |path: &str| {
            let toml = format!("[[route]]\npath = \"{path}\"\nhandler = \"respond\"\n");
            parse(&toml).map(|c| c.routes[0].path.clone())
        };
        for (written, stored) in [
            ("/", "/"),
            ("/api", "/api"),
            ("/static/", "/static/"),
            ("/.well-known/", "/.well-known/"),
            ("/café/", "/caf%C3%A9/"),
            ("/caf%c3%a9/", "/caf%C3%A9/"),
            ("/my docs/", "/my%20docs/"),
            ("/%70rivate/", "/private/"),
            ("//a/./b/../c", "/a/c"),
        ] {
            assert_eq!(path_of(written), Ok(stored.to_string()), "{written}");
        }
        let errs = path_of("/../x").unwrap_err();
        assert_eq!(errs, ["t.toml:2: route[1].path: \"/../x\" climbs above /"]);
        let errs = path_of("/100%/").unwrap_err();
        assert_eq!(
            errs,
            ["t.toml:2: route[1].path: \"/100%/\" has a % that is not followed by two hex digits (a % itself is written %25)"]
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
            ("*.Example.COM.", "*.example.com"),
            (".example.com", ".example.com"),
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
        assert!(
            errs[0].starts_with("t.toml:2: server.shards: not valid TOML"),
            "{errs:?}"
        );
        let errs = parse("[server\nshards = 2\n").unwrap_err();
        assert!(errs[0].starts_with("t.toml:1: not valid TOML"), "{errs:?}");
        // toml_edit says nothing of a value cut by the end of the file.
        let errs = parse("[server]\nlisten =").unwrap_err();
        assert_eq!(
            errs,
            ["t.toml:2: server.listen: not valid TOML: the file ends where a value should be"]
        );
    }

    /// A value TOML itself refuses is put to its key, as a value the
    /// configuration refuses is.
    #[test]
    fn a_number_past_64_bits_names_its_key() {
        let errs = parse("[server]\nshards = 99999999999999999999\n").unwrap_err();
        assert!(
            errs[0].starts_with("t.toml:2: server.shards: not valid TOML: "),
            "{errs:?}"
        );
        let text = "[[route]]\npath = \"/\"\n[[route]] # two\npath = \"/b\"\nmax-body-bytes = 99999999999999999999\n";
        let errs = parse(text).unwrap_err();
        assert!(
            errs[0].starts_with("t.toml:5: route[2].max-body-bytes: not valid TOML: "),
            "{errs:?}"
        );
        // A table of an array table's entry, as its keys are named; after
        // a byte order mark too.
        let text = "\u{feff}[[app]]\nname = \"a\"\n[app.env]\nN = 99999999999999999999\n";
        let errs = parse(text).unwrap_err();
        assert!(
            errs[0].starts_with("t.toml:4: app[1].env.N: not valid TOML: "),
            "{errs:?}"
        );
        // Where lines may be inside a value, or the table is not plain,
        // no key is guessed.
        for text in [
            "[server]\nx = \"\"\"\na = b\n\"\"\"\nshards = 99999999999999999999\n",
            "[server]\nlisten = [\n\"a\",\n]\nshards = 99999999999999999999\n",
            "[\"server\"]\nshards = 99999999999999999999\n",
        ] {
            let errs = parse(text).unwrap_err();
            assert!(
                errs[0].contains(": not valid TOML: ") && !errs[0].contains("shards"),
                "{text:?}: {errs:?}"
            );
        }
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
            vec!["t.toml:3: server.listen: environment variable CORESERVE_UNSET_TOO is not set (write ${CORESERVE_UNSET_TOO:-default} to give a default)"]
        );
        let errs = parse("[[app]]\nname = \"a\"\n\n[[app]]\nname = \"b\"\nenv = { A = \"${CORESERVE_UNSET_TOO}\" }\ncommand = [\n  \"--opt=${CORESERVE_UNSET_TOO}\",\n  [\"x\"],\n  \"${CORESERVE_UNSET_TOO}\",\n]\n").unwrap_err();
        assert!(
            errs[0].starts_with("t.toml:6: app[2].env: environment"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("t.toml:8: app[2].command: environment"),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("t.toml:10: app[2].command: environment"),
            "{errs:?}"
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

    /// Rules checked after loading about one element of a list written an
    /// element a line point at that element's line, under the list's key.
    #[test]
    fn post_parse_rules_on_an_element_point_at_its_line() {
        let errs = parse(
            "[[route]]\npath = \"/\"\nhandler = \"static\"\nroot = \"/srv\"\nmethods = [\n  \"GET\",\n  \"get\",\n  \"GET\",\n]\nindex = [\n  \"index.html\",\n  \"a/b.html\",\n]\n",
        )
        .unwrap_err();
        assert_eq!(
            errs,
            vec![
                "t.toml:7: route[1].methods: must be upper-case method names like \"GET\", got \"get\"",
                "t.toml:8: route[1].methods: \"GET\" is listed twice",
                "t.toml:12: route[1].index: must be plain file names, got \"a/b.html\"",
            ]
        );
        // A key of the file's that only looks like an element keeps its
        // name and line.
        let errs = parse("[[app]]\nname = \"web\"\ncommand = [\"node\"]\n\n[app.env]\nOK = \"1\"\n\"A[0]\" = \"1\"\n")
            .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("t.toml:7: app[1].env.A[0]: \"A[0]\" "),
            "{errs:?}"
        );
        // On one line, the line is the list's.
        let errs = parse(
            "[[route]]\npath = \"/\"\nhandler = \"respond\"\nmethods = [\"GET\", \"CONNECT\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            errs,
            vec!["t.toml:4: route[1].methods: CONNECT is never routed: coreserve is not a forward proxy, and answers it 501"]
        );
    }
}
