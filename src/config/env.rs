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
    /// It sits in more than `MAX_NESTING` nested defaults (references nest
    /// more than 8 deep, the outermost counted).
    TooDeep,
    /// Its value is not UTF-8 (a configuration is text).
    NotUtf8,
    /// With it replaced, the text is longer than this many bytes.
    TooLarge(usize),
}

impl Unset {
    /// The error's text, without its place (the caller names the file,
    /// line and key).
    pub fn rule(&self) -> String {
        let name = &self.name;
        match self.why {
            // The variables coreserve sets for each app instance are not
            // the file's to replace: a shell in the command reads them.
            Why::NotSet if name == "PORT" || name == "SOCKET" => format!(
                "environment variable {name} is not set: ${{{name}}} is replaced when the file is read, while each [[app]] instance gets its own {name} when it starts; for a command that needs it, write it for a shell without braces, [\"sh\", \"-c\", \"exec node app.js --port ${name}\"]"
            ),
            Why::NotSet => format!(
                "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
            ),
            Why::Unfit(what) => format!(
                "environment variable {name} holds {what}, which cannot be written here: put ${{{name}}} inside a \"…\" string"
            ),
            Why::TooLarge(limit) => format!(
                "with ${{{name}}} replaced the file is larger than {} MiB, the most a configuration may be",
                limit >> 20
            ),
            Why::NotUtf8 => format!("environment variable {name} is not valid UTF-8"),
            Why::TooDeep => format!(
                "${{{name}}} is nested in more than {MAX_NESTING} defaults (${{A:-${{B:-x}}}} is 2)"
            ),
        }
    }
}

/// A variable as the environment holds it: `Ok(None)` when it is not set,
/// `Err` when its value is not UTF-8.
pub type Lookup = Result<Option<String>, std::ffi::OsString>;

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
/// about it with its line). With `placeholder`, that is written for a
/// reference whose variable is not set and that has no default, rather than
/// refusing it (one with a default still gets its default).
pub fn substitute(
    text: &str,
    lookup: impl Fn(&str) -> Lookup,
    limit: usize,
    placeholder: Option<&str>,
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
            let vars = Vars {
                lookup: &lookup,
                placeholder,
            };
            expand(&line[range.clone()], q, &vars, &mut out, &mut problem, 0);
            from = range.end;
            // Values can make a small file huge: stop at the first that
            // makes it larger than a file may be.
            if out.len() > limit {
                let name = line[range.start + 2..range.end - 1]
                    .split(":-")
                    .next()
                    .unwrap_or_default();
                unset.push(Unset {
                    line: i + 1,
                    name: name.to_string(),
                    key: at.key(),
                    why: Why::TooLarge(limit),
                });
                return Err(unset);
            }
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

/// Where references find their values: the environment, and what stands
/// for one it does not set (`substitute_with`).
struct Vars<'a, L> {
    lookup: &'a L,
    placeholder: Option<&'a str>,
}

/// Write what `reference` (`${…}`, closed) stands for to `out`, as the
/// string it is in wants it; `depth`: the defaults it is nested in.
fn expand<L: Fn(&str) -> Lookup>(
    reference: &str,
    quote: Quote,
    vars: &Vars<'_, L>,
    out: &mut String,
    problem: &mut impl FnMut(&str, Why),
    depth: usize,
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
    // `depth` counts the defaults around this reference: the outermost
    // reference is at 0, so the ninth nested one is at 8.
    if depth >= MAX_NESTING {
        return problem(name, Why::TooDeep);
    }
    let Ok(found) = (vars.lookup)(name) else {
        return problem(name, Why::NotUtf8);
    };
    // `${VAR}` with VAR set to "" is a value; `${VAR:-d}` gives d for it.
    let value = match (found, default) {
        (Some(v), Some(_)) if !v.is_empty() => v,
        (Some(v), None) => v,
        (_, Some(d)) => {
            // The default is the file's own text: written as it stands,
            // but for references of its own.
            let closed = closings(d);
            let (mut from, mut at) = (0, 0);
            while let Some(start) = d[at..].find("${").map(|s| at + s) {
                match closed.get(&start) {
                    Some(&end) => {
                        out.push_str(&d[from..start]);
                        expand(&d[start..end], quote, vars, out, problem, depth + 1);
                        (from, at) = (end, end);
                    }
                    None => at = start + 2,
                }
            }
            out.push_str(&d[from..]);
            return;
        }
        (None, None) => match vars.placeholder {
            Some(p) => p.to_string(),
            None => return problem(name, Why::NotSet),
        },
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

/// How deep references may nest in defaults (`${A:-${B:-x}}` is 2): the
/// expansion recurses once a level, and a file is not to decide how deep
/// a thread's stack goes.
pub const MAX_NESTING: usize = 8;

/// Where each closed reference in `text` ends: for the byte offset of a
/// `${`, the offset just past its own `}` (the references nested in its
/// default closed inside it). One pass, so a line of thousands of `${`
/// costs no more than its length.
fn closings(text: &str) -> std::collections::HashMap<usize, usize> {
    let bytes = text.as_bytes();
    let mut open = Vec::new();
    let mut closed = std::collections::HashMap::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"${") {
            open.push(i);
            i += 2;
            continue;
        }
        if bytes[i] == b'}' {
            if let Some(start) = open.pop() {
                closed.insert(start, i + 1);
            }
        }
        i += 1;
    }
    closed
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
    let closed = closings(line);
    let mut references = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if let Some(&end) = closed.get(&i) {
            references.push((i..end, *quote));
            i = end;
            continue;
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
            // A run of up to five quotes ends the string with its last
            // three (`"""a""""` is `a"`).
            (Quote::Basic { multi: true }, q @ b'"')
            | (Quote::Literal { multi: true }, q @ b'\'')
                if rest.starts_with(&[q; 3]) =>
            {
                *quote = Quote::Bare;
                i += rest.iter().take(5).take_while(|&&b| b == q).count();
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
            // `[app.env]` after `[[app]]` is that entry's table: `app[2].env`.
            self.table = match name.split_once('.') {
                Some((array, rest)) if self.entries.contains_key(array) => {
                    format!("{array}[{}].{rest}", self.entries[array])
                }
                _ => name,
            };
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

    fn ok(f: impl Fn(&str) -> Option<String>) -> impl Fn(&str) -> Lookup {
        move |name| Ok(f(name))
    }

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
            substitute(t, ok(env), 1 << 20, None).unwrap(),
            "listen = \"0.0.0.0:8080\"\nroot = \"/srv/www\"\nx = \"d\"\n"
        );
    }

    /// `coreserve status`'s reading: an unset variable without a default
    /// becomes the placeholder, quoted as its place wants; a default still
    /// wins.
    #[test]
    fn a_placeholder_stands_for_what_is_unset_without_a_default() {
        let t = "n = ${NOPE}\ns = \"a${NOPE}\"\nl = 'b${NOPE}'\nd = \"${NOPE:-x}\"\n";
        assert_eq!(
            substitute(t, ok(env), 1 << 20, Some("\"\"")).unwrap(),
            "n = \"\"\ns = \"a\\\"\\\"\"\nl = 'b\"\"'\nd = \"x\"\n"
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
            substitute(t, ok(env), 1 << 20, None).unwrap(),
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
        let errs = substitute(t, ok(env), 1 << 20, None).unwrap_err();
        assert_eq!(
            errs,
            vec![Unset {
                line: 2,
                name: "NOPE".into(),
                key: "b".into(),
                why: Why::NotSet,
            }]
        );
        // A table of an array's entry is named after the entry.
        let t = "[[app]]\nname = \"a\"\n[[app]]\nname = \"b\"\n[app.env]\nA = \"${NOPE}\"\n";
        let errs = substitute(t, ok(env), 1 << 20, None).unwrap_err();
        assert_eq!(errs[0].key, "app[2].env.A");
        // An app's own PORT is not the file's: said so, with what works.
        let why = Unset {
            line: 1,
            name: "PORT".into(),
            key: "app[1].command".into(),
            why: Why::NotSet,
        };
        assert!(
            why.rule().contains("write it for a shell without braces"),
            "{}",
            why.rule()
        );
    }

    #[test]
    fn defaults_may_hold_references() {
        let t = "a = \"${NOPE:-${PORT}}\"\nb = \"${NOPE:-x${ALSO:-${EMPTY:-y}}z}\"\n";
        assert_eq!(
            substitute(t, ok(env), 1 << 20, None).unwrap(),
            "a = \"8080\"\nb = \"xyz\"\n"
        );
        let errs = substitute("a = \"${NOPE:-${ALSO}}\"\n", ok(env), 1 << 20, None).unwrap_err();
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
        let text = substitute(t, ok(odd), 1 << 20, None).unwrap();
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
        let errs = substitute(t, ok(odd), 1 << 20, None).unwrap_err();
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

    #[test]
    fn deep_or_unclosed_references_cost_their_length_and_no_stack() {
        // 40 000 nested defaults: an error, not a stack overflow.
        let deep = format!("a = {}1{}\n", "${A:-".repeat(40_000), "}".repeat(40_000));
        let errs = substitute(&deep, ok(env), 1 << 20, None).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].why, Why::TooDeep);
        assert!(
            errs[0].rule().contains("more than 8 defaults"),
            "{}",
            errs[0].rule()
        );
        // Eight are fine.
        let eight = format!("a = {}1{}\n", "${A:-".repeat(8), "}".repeat(8));
        assert_eq!(
            substitute(&eight, ok(env), 1 << 20, None).unwrap(),
            "a = 1\n"
        );
        let nine = format!("a = {}1{}\n", "${A:-".repeat(9), "}".repeat(9));
        let errs = substitute(&nine, ok(env), 1 << 20, None).unwrap_err();
        assert_eq!(errs[0].why, Why::TooDeep);
        // 200 000 references never closed: left as written, at once.
        let open = format!("x = \"{}\"\n", "${A".repeat(200_000));
        let started = std::time::Instant::now();
        assert_eq!(substitute(&open, ok(env), 1 << 20, None).unwrap(), open);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // A small file that values make larger than a file may be.
        let big = |_: &str| Some("x".repeat(100_000));
        let many = "a = \"${BIG}\"\n".repeat(20);
        let errs = substitute(&many, ok(big), 1 << 20, None).unwrap_err();
        assert_eq!((errs[0].line, errs[0].why), (11, Why::TooLarge(1 << 20)));
        assert!(
            errs[0].rule().contains("larger than 1 MiB"),
            "{}",
            errs[0].rule()
        );
    }

    #[test]
    fn a_multi_line_string_may_end_in_more_than_three_quotes() {
        // `"""a""""` is `a"`: what follows is a comment.
        for t in [
            "x = \"\"\"a\"\"\"\"  # ${NOPE}\ny = \"${PORT}\"\n",
            "x = '''a''''  # ${NOPE}\ny = \"${PORT}\"\n",
        ] {
            let text = substitute(t, ok(env), 1 << 20, None).unwrap();
            assert!(text.ends_with("# ${NOPE}\ny = \"8080\"\n"), "{text}");
        }
    }
}
