//! The typed readers every section shares: a string, a list, a flag, a
//! count, a size, a duration, a path. Each reports a value of the wrong
//! shape at its key's line and returns `None`, so the walk goes on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::Value;

use super::{Field, Walker};
use crate::config::Cidr;
use crate::units;

/// Overwrite a default with a value that was read; one that was not (and
/// was reported) leaves the default.
pub(super) fn set<T>(default: &mut T, read: Option<T>) {
    if let Some(v) = read {
        *default = v;
    }
}

/// Most fields a table of header fields may set.
pub(super) const MAX_HEADER_FIELDS: usize = 64;
/// Most bytes a table of header fields may add to a head, as lines
/// (`Name: value` and CRLF): well under what clients take (curl 300 KiB,
/// browsers 256 KiB) and what servers read (nginx's 8 KiB per line).
pub(super) const MAX_HEADER_BLOCK: usize = 8 << 10;

/// nginx's variables that its `add_header` and `proxy_set_header` lines
/// use, by name, and the families it names by prefix (`$http_x_api_key`):
/// written into a header value here, they would go out as text.
const NGINX_VARIABLES: &[&str] = &[
    "args",
    "binary_remote_addr",
    "connection",
    "content_length",
    "content_type",
    "document_root",
    "document_uri",
    "host",
    "hostname",
    "https",
    "is_args",
    "msec",
    "nginx_version",
    "proxy_add_x_forwarded_for",
    "proxy_host",
    "proxy_port",
    "query_string",
    "realip_remote_addr",
    "realpath_root",
    "remote_addr",
    "remote_port",
    "remote_user",
    "request",
    "request_id",
    "request_method",
    "request_time",
    "request_uri",
    "scheme",
    "server_addr",
    "server_name",
    "server_port",
    "server_protocol",
    "status",
    "time_iso8601",
    "time_local",
    "uri",
];
/// nginx's variables named by a prefix and what follows (`$http_x_api_key`,
/// `$cookie_session`).
const NGINX_VARIABLE_FAMILIES: &[&str] = &[
    "arg_",
    "cookie_",
    "http_",
    "sent_http_",
    "ssl_",
    "upstream_",
];

/// Whether `name` (after its `$`) is one of nginx's variables.
fn is_nginx_variable(name: &str) -> bool {
    NGINX_VARIABLES.contains(&name) || NGINX_VARIABLE_FAMILIES.iter().any(|f| name.starts_with(f))
}

/// Where a table of header fields goes, which decides its rules.
#[derive(Debug, Clone, Copy)]
pub(super) enum Sent {
    /// To clients, with responses: every value says something.
    Client,
    /// Upstream, with requests: an empty value removes the field; the
    /// function says what is wrong with a field's value, if anything.
    Upstream(fn(&str, &str) -> Option<String>),
}

impl Walker<'_> {
    /// A string written into a response head as one field's value (a
    /// respond route's `content-type`, a redirect's `location`, a static
    /// route's `cache-control`, `tls.hsts`): at most `MAX_HEADER_BLOCK`
    /// bytes, as a route's `headers` in all. A 200 KB one passed `--check`
    /// and went out whole, past what clients read.
    pub(super) fn head_value(&mut self, f: &Field) -> Option<String> {
        let value = self.string(f)?;
        self.head_sized(f, value)
    }

    /// `head_value` for a value that must not be empty either.
    pub(super) fn non_empty_head_value(&mut self, f: &Field) -> Option<String> {
        let value = self.non_empty_string(f)?;
        self.head_sized(f, value)
    }

    fn head_sized(&mut self, f: &Field, value: String) -> Option<String> {
        if value.len() > MAX_HEADER_BLOCK {
            let rule = format!(
                "is {} bytes: at most {} KiB, as a route's headers in all (a head that large is refused by clients and servers alike)",
                value.len(),
                MAX_HEADER_BLOCK >> 10
            );
            self.error(f, rule);
            return None;
        }
        Some(value)
    }

    pub(super) fn string(&mut self, f: &Field) -> Option<String> {
        match f.item.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.error(f, "must be a string".into());
                None
            }
        }
    }

    /// A string that means nothing when empty (a path, a header's value):
    /// its value, or an error.
    pub(super) fn non_empty_string(&mut self, f: &Field) -> Option<String> {
        let s = self.string(f)?;
        if s.trim().is_empty() {
            self.error(f, "must not be empty".into());
            return None;
        }
        Some(s)
    }

    /// A string that must be one of `choices`' names: its value, or an
    /// error listing the names ("must be \"a\" or \"b\", got \"c\"").
    pub(super) fn one_of<T: Copy>(&mut self, f: &Field, choices: &[(&str, T)]) -> Option<T> {
        let given = self.string(f)?;
        if let Some(&(_, v)) = choices.iter().find(|(name, _)| *name == given) {
            return Some(v);
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
        let list = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        let known: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let meant = match super::closest(&given, &known) {
            Some(meant) => format!(" (did you mean {meant:?}?)"),
            None => String::new(),
        };
        self.error(f, format!("must be {list}, got {given:?}{meant}"));
        None
    }

    pub(super) fn string_list(&mut self, f: &Field) -> Option<Vec<String>> {
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

    /// A list of networks (`"10.0.0.0/8"`, `"::1"`): every one that
    /// parses is kept, and each that does not is reported, so that one
    /// typo does not hide the others.
    pub(super) fn networks(&mut self, f: &Field) -> Vec<Cidr> {
        let mut out = Vec::new();
        for (i, s) in self.string_list(f).unwrap_or_default().iter().enumerate() {
            match s.parse::<Cidr>() {
                Ok(net) => out.push(net),
                Err(e) => self.element_error(f, i, e),
            }
        }
        out
    }

    pub(super) fn flag(&mut self, f: &Field) -> Option<bool> {
        let v = f.item.as_bool();
        if v.is_none() {
            self.error(f, "must be true or false".into());
        }
        v
    }

    /// A non-negative integer; `what` names it in the message.
    pub(super) fn count(&mut self, f: &Field, what: &str) -> Option<usize> {
        match f.item.as_integer() {
            Some(n) if n >= 0 => Some(n as usize),
            _ => {
                self.error(f, format!("must be {what}, got {}", f.raw));
                None
            }
        }
    }

    /// An HTTP status code: a number that fits one (which codes a handler
    /// takes is for `validate` to say).
    pub(super) fn status(&mut self, f: &Field) -> Option<u16> {
        let n = self.count(f, "an HTTP status code")?;
        u16::try_from(n)
            .map_err(|_| self.error(f, format!("must be an HTTP status code, got {}", f.raw)))
            .ok()
    }

    /// Bytes: an integer, or a string with a unit (`8k`, `1m`).
    pub(super) fn size(&mut self, f: &Field) -> Option<u64> {
        let parsed = match f.item.as_value() {
            Some(Value::Integer(n)) if *n.value() >= 0 => Ok(*n.value() as u64),
            Some(Value::String(s)) => units::parse_size(s.value()),
            _ => units::parse_size(&f.raw),
        };
        parsed.map_err(|e| self.error(f, e.to_string())).ok()
    }

    /// Seconds as an integer, or a string with a unit (`500ms`, `5m`).
    pub(super) fn duration(&mut self, f: &Field) -> Option<Duration> {
        let parsed = match f.item.as_value() {
            Some(Value::Integer(n)) if *n.value() >= 0 => units::seconds(*n.value() as u64),
            Some(Value::String(s)) => units::parse_duration(s.value()),
            _ => units::parse_duration(&f.raw),
        };
        parsed.map_err(|e| self.error(f, e.to_string())).ok()
    }

    /// A table of header fields (`{ X-Frame-Options = "DENY" }`): each name
    /// a token no other name of the table spells too (in any case; for
    /// `Sent::Upstream`, with `_` for `-` as well, which CGI-style apps read
    /// alike), and none that `refused` gives a reason against; each value
    /// visible ASCII, spaces and tabs inside, or empty for `Sent::Upstream`
    /// (a field removed); at most `MAX_HEADER_FIELDS` fields of
    /// `MAX_HEADER_BLOCK` bytes in all, as lines. Read once, at load: what
    /// uses them writes them as they are.
    pub(super) fn header_fields(
        &mut self,
        f: &Field,
        refused: impl Fn(&str) -> Option<&'static str>,
        sent: Sent,
    ) -> Vec<(String, String)> {
        let Some(table) = f.item.as_table_like() else {
            let rule = "must be a table of header fields, like { \"X-Frame-Options\" = \"DENY\" }";
            self.error(f, rule.into());
            return Vec::new();
        };
        let upstream = matches!(sent, Sent::Upstream(_));
        let same = |a: &str, b: &str| {
            if upstream {
                crate::http::parse::same_field(a, b)
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut bytes = 0;
        for v in self.fields(table, &f.key) {
            let name = &v.key[f.key.len() + 1..];
            if name.is_empty() || !name.bytes().all(crate::http::parse::is_token_byte) {
                let rule = format!(
                    "{name:?} is not a header field name (letters, digits and !#$%&'*+-.^_`|~)"
                );
                self.error(&v, rule);
                continue;
            }
            if let Some(why) = refused(name) {
                self.error(&v, format!("{name} cannot be set: {why}"));
                continue;
            }
            if let Some((first, _)) = headers.iter().find(|(n, _)| same(n, name)) {
                let how = if upstream {
                    "field names are not case-sensitive, and apps read _ as -"
                } else {
                    "field names are not case-sensitive"
                };
                self.error(&v, format!("{first} is already set ({how})"));
                continue;
            }
            let Some(value) = self.string(&v) else {
                continue;
            };
            let visible = |b: u8| (b' '..=b'~').contains(&b) || b == b'\t';
            let fits = value.bytes().all(visible)
                && value.trim_matches([' ', '\t']).len() == value.len()
                && (upstream || !value.is_empty());
            if !fits {
                let what = if upstream { "" } else { ", not empty" };
                let rule = format!(
                    "must be a header value: visible ASCII, spaces and tabs only inside{what}; got {value:?}"
                );
                self.error(&v, rule);
                continue;
            }
            // nginx's `proxy_set_header Host $host` and `add_header …
            // $hostname` copied over went out as the text `$host`. Only
            // nginx's names: a `$` is a value's own otherwise (a token, a
            // cookie's `$Version`), and there is no escape for it.
            if let Some(var) = crate::config::variables(&value).find(|v| is_nginx_variable(v)) {
                let instead = if upstream && name.eq_ignore_ascii_case("host") {
                    " (keep-host = true, the default, sends the client's Host on)"
                } else {
                    ""
                };
                let rule = format!(
                    "${var} is nginx's variable, which coreserve does not expand: it would be sent as the text ${var}{instead}"
                );
                self.error(&v, rule);
                continue;
            }
            if let Some(rule) = match sent {
                Sent::Upstream(rule) => rule(name, &value),
                Sent::Client => None,
            } {
                self.error(&v, rule);
                continue;
            }
            bytes += name.len() + value.len() + 4;
            headers.push((name.to_string(), value));
        }
        if headers.len() > MAX_HEADER_FIELDS || bytes > MAX_HEADER_BLOCK {
            let rule = format!(
                "{} fields of {bytes} bytes: at most {MAX_HEADER_FIELDS} fields of {} KiB in all (a head that large is refused by clients and servers alike)",
                headers.len(),
                MAX_HEADER_BLOCK >> 10
            );
            self.error(f, rule);
        }
        headers
    }

    /// A path from the file: a relative one is relative to the file's
    /// directory, so a configuration, its site and its logs can move
    /// together (a static `root` and the access log alike). Made absolute
    /// (the file named relative to where coreserve started): the same
    /// file gives the same paths however `--config` spells it, so a limit
    /// on a path's length (a Unix socket's) is met or not alike by
    /// `cd conf && coreserve --check --config f.toml` and by the service
    /// that runs it as `/etc/…/f.toml`, and the log names where it looked.
    pub(super) fn relative_to_file(&self, p: &str) -> PathBuf {
        let source = self.config.source.as_deref();
        let cwd = || std::env::current_dir().unwrap_or_default();
        // Read from a pipe or a standard stream (`--config /dev/stdin`,
        // `/dev/fd/3`, a file redirected to it alike): no directory of its
        // own (`/dev` is none to mean), so the one coreserve started in.
        let stream = |s: &Path| {
            let fd = |dir: &str| s.parent() == Some(Path::new(dir));
            super::is_pipe(s)
                || s == Path::new("/dev/stdin")
                || fd("/dev/fd")
                || fd("/proc/self/fd")
        };
        if source.is_some_and(stream) {
            return cwd().join(p);
        }
        let dir = source.and_then(Path::parent).unwrap_or(Path::new(""));
        let dir = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            cwd().join(dir)
        };
        // `./f.toml`'s `.`, or `cwd = "."`: not kept in the path (nor in
        // an app's `$PWD`, or the log's messages).
        dir.join(p).components().collect()
    }
}
