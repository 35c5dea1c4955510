//! `${VAR}` and `${VAR:-default}` in the configuration text, replaced from
//! the environment before parsing (what nginx users do with envsubst).

/// A reference that could not be replaced.
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
    /// Why it could not be.
    pub why: Why,
}

/// Why a reference could not be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The variable is not set and the reference has no default.
    NotSet,
    /// The value holds a character its place cannot take: a line break or
    /// another control character outside a `"…"` string, or a `'` in a
    /// `'…'` string (nothing can be escaped there).
    Unfit(&'static str),
}

impl Unset {
    /// The error's text, without its place (the caller names the file,
    /// line and key).
    pub fn rule(&self) -> String {
        let name = &self.name;
        match self.why {
            Why::NotSet => format!(
                "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
            ),
            Why::Unfit(what) => format!(
                "environment variable {name} holds {what}, which cannot be written here: put ${{{name}}} inside a \"…\" string"
            ),
        }
    }
}

/// The kind of string a place in the text is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    /// Outside any string: a value goes in as written (`shards = ${N}`).
    Bare,
    /// `"…"` or `"""…"""`: a value is escaped, so that it reads back as the
    /// variable's exact text and cannot end the string.
    Basic { multi: bool },
    /// `'…'` or `'''…'''`: nothing can be escaped.
    Literal { multi: bool },
}

/// Replace every `${NAME}` / `${NAME:-default}` outside comments (a `#`
/// outside a string, to the end of its line). Inside a `"…"` string the
/// value is escaped as TOML wants (`"`, `\`, line breaks), so that it reads
/// back exactly as the environment holds it, never ends the string early
/// and never shifts the lines after it; outside strings it goes in as
/// written (numbers, booleans). A default may hold references of its own
/// (`${A:-${B:-x}}`).
/// A reference that is not closed on its line, or whose name is not
/// `[A-Za-z_][A-Za-z0-9_]*`, is left as written (TOML will then complain
/// about it with its line).
pub fn substitute(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Unset>> {
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    let mut at = KeyTracker::default();
    let mut quote = Quote::Bare;
    for (i, whole) in text.split_inclusive('\n').enumerate() {
        let lexed = lex(whole, &mut quote);
        // Past the first unquoted `#`: a comment, kept as written.
        let (line, comment) = whole.split_at(lexed.comment);
        if line.trim().is_empty() {
            out.push_str(whole);
            continue;
        }
        at.line(line);
        let mut from = 0;
        for (range, q) in lexed.references {
            out.push_str(&line[from..range.start]);
            let mut problem = |name: &str, why| {
                unset.push(Unset {
                    line: i + 1,
                    name: name.to_string(),
                    key: at.key(),
                    why,
                })
            };
            expand(&line[range.clone()], q, &lookup, &mut out, &mut problem);
            from = range.end;
        }
        out.push_str(&line[from..]);
        out.push_str(comment);
    }
    if unset.is_empty() {
        Ok(out)
    } else {
        Err(unset)
    }
}

/// Write what `reference` (`${…}`, closed) stands for to `out`, as the
/// string it is in wants it.
fn expand(
    reference: &str,
    quote: Quote,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
    problem: &mut impl FnMut(&str, Why),
) {
    let inner = &reference[2..reference.len() - 1];
    let (name, default) = match inner.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (inner, None),
    };
    if !valid_name(name) {
        out.push_str(reference);
        return;
    }
    // `${VAR}` with VAR set to "" is a value; `${VAR:-d}` gives d for it.
    let value = match (lookup(name), default) {
        (Some(v), Some(_)) if !v.is_empty() => v,
        (Some(v), None) => v,
        (_, Some(d)) => {
            // The default is the file's own text: written as it stands,
            // but for references of its own.
            let mut from = 0;
            while let Some((start, end)) = d[from..].find("${").and_then(|s| {
                let s = from + s;
                closing(&d[s..]).map(|len| (s, s + len))
            }) {
                out.push_str(&d[from..start]);
                expand(&d[start..end], quote, lookup, out, problem);
                from = end;
            }
            out.push_str(&d[from..]);
            return;
        }
        (None, None) => return problem(name, Why::NotSet),
    };
    if let Quote::Basic { .. } = quote {
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push('\t'),
                c if c.is_control() => {
                    use std::fmt::Write;
                    let _ = write!(out, "\\u{:04X}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        return;
    }
    let unfit = if value.contains('\n') {
        Some("a line break")
    } else if value.chars().any(|c| c.is_control() && c != '\t') {
        Some("a control character")
    } else if matches!(quote, Quote::Literal { .. }) && value.contains('\'') {
        Some("a '")
    } else {
        None
    };
    match unfit {
        Some(what) => problem(name, Why::Unfit(what)),
        None => out.push_str(&value),
    }
}

/// The length of the reference `text` starts with (`${` to its own `}`,
/// past the references nested in its default), if it is closed.
fn closing(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"${") {
            depth += 1;
            i += 2;
            continue;
        }
        if bytes[i] == b'}' {
            depth -= 1;
            if depth == 0 {
                return Some(i + 1);
            }
        }
        i += 1;
    }
    None
}

/// A line's comment and references, as `lex` finds them.
struct Lexed {
    /// Where the comment starts (the line's length when it has none).
    comment: usize,
    /// Each closed reference, with the kind of string it is in.
    references: Vec<(std::ops::Range<usize>, Quote)>,
}

/// Find `line`'s comment (the first `#` outside a string) and references.
/// `quote` carries a multi-line string (`"""` or `'''`) from one line to
/// the next.
fn lex(line: &str, quote: &mut Quote) -> Lexed {
    let bytes = line.as_bytes();
    let mut references = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"${") {
            if let Some(len) = closing(&line[i..]) {
                references.push((i..i + len, *quote));
                i += len;
                continue;
            }
        }
        match (*quote, bytes[i]) {
            (Quote::Bare, b'#') => {
                return Lexed {
                    comment: i,
                    references,
                }
            }
            (Quote::Bare, b'"') => {
                let multi = rest.starts_with(b"\"\"\"");
                *quote = Quote::Basic { multi };
                i += if multi { 3 } else { 1 };
            }
            (Quote::Bare, b'\'') => {
                let multi = rest.starts_with(b"'''");
                *quote = Quote::Literal { multi };
                i += if multi { 3 } else { 1 };
            }
            // `\` escapes the next byte in "…" strings.
            (Quote::Basic { .. }, b'\\') => i += 2,
            (Quote::Basic { multi: false }, b'"') | (Quote::Literal { multi: false }, b'\'') => {
                *quote = Quote::Bare;
                i += 1;
            }
            (Quote::Basic { multi: true }, b'"') if rest.starts_with(b"\"\"\"") => {
                *quote = Quote::Bare;
                i += 3;
            }
            (Quote::Literal { multi: true }, b'\'') if rest.starts_with(b"'''") => {
                *quote = Quote::Bare;
                i += 3;
            }
            _ => i += 1,
        }
    }
    // A one-line string left open ends with its line (TOML reports it).
    if let Quote::Basic { multi: false } | Quote::Literal { multi: false } = *quote {
        *quote = Quote::Bare;
    }
    Lexed {
        comment: line.len(),
        references,
    }
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
                why: Why::NotSet,
            }]
        );
    }

    #[test]
    fn defaults_may_hold_references() {
        let t = "a = \"${NOPE:-${PORT}}\"\nb = \"${NOPE:-x${ALSO:-${EMPTY:-y}}z}\"\n";
        assert_eq!(substitute(t, env).unwrap(), "a = \"8080\"\nb = \"xyz\"\n");
        let errs = substitute("a = \"${NOPE:-${ALSO}}\"\n", env).unwrap_err();
        assert_eq!(errs[0].name, "ALSO");
    }

    #[test]
    fn values_read_back_as_the_environment_holds_them() {
        let odd = |name: &str| match name {
            "ODD" => Some("a \"quoted\" C:\\dir\nline two\u{1}".into()),
            "LINES" => Some("1\n2".into()),
            "APOS" => Some("it's".into()),
            "N" => Some("4".into()),
            _ => None,
        };
        let t = "a = \"${ODD}\"\nm = \"\"\"\n${ODD}\n\"\"\"\nn = ${N}\nbad = nope\n";
        let text = substitute(t, odd).unwrap();
        // The lines after a value with a line break are where they were.
        assert_eq!(text.lines().nth(5), Some("bad = nope"));
        let doc = toml_edit::ImDocument::parse(text.replace("bad = nope", "")).unwrap();
        let doc = doc.as_table();
        assert_eq!(
            doc["a"].as_str(),
            Some("a \"quoted\" C:\\dir\nline two\u{1}")
        );
        assert_eq!(
            doc["m"].as_str(),
            Some("a \"quoted\" C:\\dir\nline two\u{1}\n")
        );
        assert_eq!(doc["n"].as_integer(), Some(4));
        // Where nothing can be escaped, such a value is an error.
        let t = "a = 'x${APOS}'\nb = ${LINES}\nc = '${N}'\n";
        let errs = substitute(t, odd).unwrap_err();
        let got: Vec<_> = errs
            .iter()
            .map(|u| (u.line, u.name.as_str(), u.why))
            .collect();
        assert_eq!(
            got,
            [
                (1, "APOS", Why::Unfit("a '")),
                (2, "LINES", Why::Unfit("a line break"))
            ]
        );
        assert!(errs[1]
            .rule()
            .contains("put ${LINES} inside a \"…\" string"));
    }
}
