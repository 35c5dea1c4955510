//! A redirect route's `location`: text with nginx's `$host` and
//! `$request_uri` in it (`https://$host$request_uri`, the usual way to send
//! plain HTTP to HTTPS), read once at load and filled in per request
//! without allocating.

use thiserror::Error;

/// A `location` as the configuration wrote it, cut into its literal text
/// and its variables.
///
/// Invariant: every variable it holds is one of `VARIABLES` (`parse`
/// refuses any other name; `literal` holds none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    parts: Box<[Part]>,
    /// Whether some part is `$host` (a request without a host cannot fill it).
    needs_host: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(Box<str>),
    /// The request's host, lower case, without its port or a trailing dot
    /// (nginx's `$host`).
    Host,
    /// The request's path and query as sent (nginx's `$request_uri`):
    /// an absolute-form target's without its scheme and authority.
    RequestUri,
}

/// Why a `location` cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LocationError {
    /// A `$name` that is none of the variables a location takes.
    #[error("unknown variable ${0}: a location takes $host and $request_uri, as nginx's")]
    Unknown(String),
    /// `$1` and the like: a `rewrite`'s capture, which a route matched by
    /// its path prefix has none of.
    #[error("${0} is a rewrite's capture, and a route matches by path prefix, not by a regular expression: a location has none (it takes $host and $request_uri; %24 is a literal $)")]
    Capture(String),
}

/// The variables, by name.
const VARIABLES: [(&str, Part); 2] = [("host", Part::Host), ("request_uri", Part::RequestUri)];

impl Location {
    /// Read `text`: `$` then a letter or `_` starts a variable's name, which
    /// runs over letters, digits and `_` (so `$host.example` is `$host`,
    /// then `.example`); `$` then a digit is a capture (refused: nginx's
    /// `rewrite … /new/$1` copied over would send `$1` as written); any
    /// other `$` is itself.
    pub fn parse(text: &str) -> Result<Location, LocationError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            // nginx writes a capture `$1` or `${1}`.
            let braced = after.strip_prefix('{').unwrap_or(after);
            let digits = braced.len()
                - braced
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .len();
            if digits > 0 {
                return Err(LocationError::Capture(braced[..digits].into()));
            }
            let Some(name) = variable_name(after) else {
                literal.push('$');
                rest = after;
                continue;
            };
            let len = name.len();
            let Some((_, part)) = VARIABLES.iter().find(|(n, _)| *n == name) else {
                return Err(LocationError::Unknown(name.into()));
            };
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal).into()));
            }
            parts.push(part.clone());
            rest = &after[len..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal.into()));
        }
        let needs_host = parts.contains(&Part::Host);
        Ok(Location {
            parts: parts.into(),
            needs_host,
        })
    }

    /// `text` as it stands, every `$` in it text.
    pub fn literal(text: &str) -> Location {
        Location {
            parts: Box::new([Part::Text(text.into())]),
            needs_host: false,
        }
    }

    /// Whether the location names `$host`.
    pub fn needs_host(&self) -> bool {
        self.needs_host
    }

    /// Append the location for a request to `out`: `host` its authority
    /// (`Host`, or an absolute-form target's, already checked to be a host
    /// and an optional port), `path` and `query` its target's as the parser
    /// split them (`*` for asterisk-form, written `/`).
    pub fn write(&self, host: &str, path: &str, query: Option<&str>, out: &mut Vec<u8>) {
        let start = out.len();
        let path = if path == "*" { "/" } else { path };
        for part in self.parts.iter() {
            // A location that begins with the path (or with `/` and then
            // the path) would make `//evil.test/x` a scheme-relative
            // redirect to another host: one slash.
            let path = match &out[start..] {
                [] => one_leading_slash(path),
                [b'/'] => path.trim_start_matches('/'),
                _ => path,
            };
            match part {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Host => {
                    out.extend(without_port(host).bytes().map(|b| b.to_ascii_lowercase()));
                }
                Part::RequestUri => {
                    crate::http::path::write_as_sent(path, out);
                    if let Some(q) = query {
                        out.push(b'?');
                        out.extend_from_slice(q.as_bytes());
                    }
                }
            }
        }
    }
}

/// The name of the variable that `after`, the text after a `$`, starts
/// with, if any: a letter or `_`, then letters, digits and `_`, as nginx
/// reads `$name`.
fn variable_name(after: &str) -> Option<&str> {
    let first = after.bytes().next()?;
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return None;
    }
    let len = after
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(after.len());
    Some(&after[..len])
}

/// The names of the `$name`s in `text`, as nginx would read them.
pub fn variables(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices('$')
        .filter_map(|(at, _)| variable_name(&text[at + 1..]))
}

/// `path` with the slashes it begins with made one.
fn one_leading_slash(path: &str) -> &str {
    let rest = path.trim_start_matches('/');
    if rest.len() + 1 < path.len() {
        &path[path.len() - rest.len() - 1..]
    } else {
        path
    }
}

/// `host[:port]` or `[v6][:port]` without the port, and without the
/// root's trailing dot (`example.com.` is `example.com`, as nginx takes it).
fn without_port(authority: &str) -> &str {
    let host = match authority.find(']') {
        Some(close) if authority.starts_with('[') => &authority[..=close],
        _ => authority.split(':').next().unwrap_or(authority),
    };
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `location` for a request for `host` with `target` (origin-form, or
    /// `*`), split as the parser splits it.
    fn fill(location: &str, host: &str, target: &str) -> String {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let mut out = Vec::new();
        Location::parse(location)
            .unwrap()
            .write(host, path, query, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn variables_take_the_requests_host_and_target() {
        let https = "https://$host$request_uri";
        assert_eq!(
            fill(https, "Example.COM:8080", "/a/b?x=1&y"),
            "https://example.com/a/b?x=1&y"
        );
        assert_eq!(fill(https, "[::1]:80", "/"), "https://[::1]/");
        assert_eq!(fill(https, "10.0.0.1", "/p"), "https://10.0.0.1/p");
        assert_eq!(fill(https, "a.test.:443", "/"), "https://a.test/");
        assert_eq!(fill(https, "a.test", "/?"), "https://a.test/?");
        assert_eq!(fill(https, "a.test", "*"), "https://a.test/");
        // Around text, and next to characters that end a name.
        assert_eq!(
            fill("https://new.$host.example/old$request_uri", "a", "/z"),
            "https://new.a.example/old/z"
        );
    }

    #[test]
    fn plain_text_and_lone_dollars_stay_as_written() {
        assert_eq!(fill("/new", "a", "/x"), "/new");
        // Never a scheme-relative `//other.host/…` of the client's making.
        assert_eq!(fill("$request_uri", "a", "//evil.test/x"), "/evil.test/x");
        assert_eq!(fill("$request_uri", "a", "///x//y"), "/x//y");
        assert_eq!(fill("/a$request_uri", "a", "//x"), "/a//x");
        assert_eq!(fill("/$request_uri", "a", "//evil.test/x"), "/evil.test/x");
        assert_eq!(fill("/$request_uri", "a", "/"), "/");
        assert_eq!(fill("/$request_uri", "a", "*"), "/");
        // Browsers take a `\` for a `/`: `/\evil.test/x` would be
        // `//evil.test/x`. Escaped, it is a name.
        assert_eq!(
            fill("$request_uri", "a", "/\\evil.test/x"),
            "/%5Cevil.test/x"
        );
        assert_eq!(
            fill("$request_uri", "a", "/caf\u{e9} <a>%2F?q=\\"),
            "/caf%C3%A9%20%3Ca%3E%2F?q=\\"
        );
        assert_eq!(fill("/price$/$", "a", "/x"), "/price$/$");
        assert!(!Location::parse("/new").unwrap().needs_host());
        assert!(Location::parse("//$host/").unwrap().needs_host());
    }

    #[test]
    fn unknown_variables_are_named() {
        let err = Location::parse("https://$server_name$uri").unwrap_err();
        assert_eq!(err, LocationError::Unknown("server_name".into()));
        assert_eq!(
            err.to_string(),
            "unknown variable $server_name: a location takes $host and $request_uri, as nginx's"
        );
        assert!(Location::parse("https://$hostname/").is_err());
    }

    /// nginx's `rewrite ^/blog/(.*)$ /articles/$1 permanent;` copied over
    /// sent `Location: /articles/$1`.
    #[test]
    fn a_rewrites_capture_is_refused() {
        let err = Location::parse("/articles/$1").unwrap_err();
        assert_eq!(err, LocationError::Capture("1".into()));
        assert!(
            err.to_string().starts_with("$1 is a rewrite's capture"),
            "{err}"
        );
        assert_eq!(
            Location::parse("https://$host/a/$12x").unwrap_err(),
            LocationError::Capture("12".into())
        );
        assert_eq!(
            Location::parse("/articles/${1}").unwrap_err(),
            LocationError::Capture("1".into())
        );
        assert_eq!(
            variables("a $ b $_x1-y $z").collect::<Vec<_>>(),
            ["_x1", "z"]
        );
        assert_eq!(variables("$9 and $").next(), None);
    }
}
