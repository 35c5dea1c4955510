//! `${VAR}` and `${VAR:-default}` in the configuration text, replaced from
//! the environment before parsing (what nginx users do with envsubst).

/// A reference to a variable that is not set and has no default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unset {
    /// 1-based line of the reference.
    pub line: usize,
    /// The variable's name.
    pub name: String,
    /// The key whose value holds it, as errors name keys (`server.listen`,
    /// `app[2].env`), as far as the lines around it say: empty when none
    /// does.
    pub key: String,
}

/// Replace every `${NAME}` / `${NAME:-default}` outside comments (a `#`
/// outside a string, to the end of its line).
/// A reference that is not closed, or whose name is not
/// `[A-Za-z_][A-Za-z0-9_]*`, is left as written (TOML will then complain
/// about it with its line).
pub fn substitute(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Unset>> {
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    let mut at = KeyTracker::default();
    let mut open = None;
    for (i, whole) in text.split_inclusive('\n').enumerate() {
        // Past the first unquoted `#`: a comment, kept as written.
        let (line, comment) = whole.split_at(comment_start(whole, &mut open));
        if line.trim().is_empty() {
            out.push_str(whole);
            continue;
        }
        at.line(line);
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !valid_name(name) {
                out.push_str(&rest[start..start + 2 + end + 1]);
            } else {
                match (lookup(name).filter(|v| !v.is_empty()), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => {
                        // `${VAR}` with VAR set to "" is a value, not an error.
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => unset.push(Unset {
                                line: i + 1,
                                name: name.to_string(),
                                key: at.key(),
                            }),
                        }
                    }
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    if unset.is_empty() {
        Ok(out)
    } else {
        Err(unset)
    }
}

/// Where the comment of `line` starts (its length when it has none): the
/// first `#` outside a string. `open` carries a multi-line string (`"""` or
/// `'''`) from one line to the next.
fn comment_start(line: &str, open: &mut Option<&'static [u8]>) -> usize {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if let Some(close) = *open {
            match bytes[i..].windows(3).position(|w| w == close) {
                Some(at) => {
                    i += at + 3;
                    *open = None;
                    continue;
                }
                None => return line.len(),
            }
        }
        let rest = &bytes[i..];
        match bytes[i] {
            b'#' => return i,
            _ if rest.starts_with(b"\"\"\"") || rest.starts_with(b"'''") => {
                *open = Some(if rest[0] == b'"' { b"\"\"\"" } else { b"'''" });
                i += 3;
            }
            quote @ (b'"' | b'\'') => {
                // To the closing quote on this line; `\` escapes in "…".
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += if quote == b'"' && bytes[i] == b'\\' {
                        2
                    } else {
                        1
                    };
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    line.len()
}

/// Which key a line belongs to, from the table headers and assignments
/// before it: enough to name the key of a reference in an error, without
/// parsing text that cannot be parsed yet.
#[derive(Default)]
struct KeyTracker {
    /// `server`, or `app[2]` (entries of an array of tables counted from 1).
    table: String,
    /// Entries seen of each array of tables.
    entries: std::collections::HashMap<String, usize>,
    /// The last key assigned in the table (a value may span lines).
    key: String,
}

impl KeyTracker {
    fn line(&mut self, line: &str) {
        let t = line.trim();
        // A header names a table in bare-key characters: a line of an
        // array value (`["a", "b"],`) is none.
        let header = |inner: &str| {
            let inner = inner.trim();
            (!inner.is_empty()
                && inner
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-. ".contains(c)))
            .then(|| inner.to_string())
        };
        if let Some(name) = t
            .strip_prefix("[[")
            .and_then(|r| r.strip_suffix("]]"))
            .and_then(header)
        {
            let n = self.entries.entry(name.clone()).or_default();
            *n += 1;
            self.table = format!("{name}[{n}]");
            self.key.clear();
        } else if let Some(name) = t
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .and_then(header)
        {
            self.table = name;
            self.key.clear();
        } else if let Some((key, _)) = t.split_once('=') {
            // A key, bare or quoted whole: not the start of a string in an
            // array (`"--opt=${X}",`).
            let key = key.trim();
            let quoted = key.len() >= 2 && key.starts_with('"') && key.ends_with('"');
            let bare = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if quoted || bare {
                self.key = key.trim_matches('"').to_string();
            }
        }
    }

    fn key(&self) -> String {
        match (self.table.is_empty(), self.key.is_empty()) {
            (_, true) => self.table.clone(),
            (true, false) => self.key.clone(),
            (false, false) => format!("{}.{}", self.table, self.key),
        }
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8080".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_and_defaults() {
        let t = "listen = \"0.0.0.0:${PORT}\"\nroot = \"${ROOT:-/srv/www}\"\nx = \"${EMPTY:-d}${EMPTY}\"\n";
        assert_eq!(
            substitute(t, env).unwrap(),
            "listen = \"0.0.0.0:8080\"\nroot = \"/srv/www\"\nx = \"d\"\n"
        );
    }

    #[test]
    fn comments_after_values_are_left_alone() {
        let t = "a = \"${PORT}\" # not ${NOPE}\n\
                 b = \"#${PORT}\" # \"${NOPE}\"\n\
                 c = 'x#${PORT}' # '${NOPE}'\n\
                 d = \"\"\"\nline # ${PORT}\n\"\"\" # ${NOPE}\n\
                 e = \"q\\\"#${PORT}\" # ${NOPE}\n";
        assert_eq!(
            substitute(t, env).unwrap(),
            "a = \"8080\" # not ${NOPE}\n\
             b = \"#8080\" # \"${NOPE}\"\n\
             c = 'x#8080' # '${NOPE}'\n\
             d = \"\"\"\nline # 8080\n\"\"\" # ${NOPE}\n\
             e = \"q\\\"#8080\" # ${NOPE}\n"
        );
    }

    #[test]
    fn unset_variables_are_reported_by_line() {
        let t = "a = 1\nb = \"${NOPE}\"\n# c = \"${ALSO_NOPE}\"\nd = \"${X-1}\"\n";
        let errs = substitute(t, env).unwrap_err();
        assert_eq!(
            errs,
            vec![Unset {
                line: 2,
                name: "NOPE".into(),
                key: "b".into(),
            }]
        );
    }
}
