//! The path routes are matched on and handlers see.
//!
//! SECURITY: a route must not be reachable, or avoidable, by spelling its
//! path another way. `//private/key`, `/%70rivate/key`, `/./private/key`,
//! `/pub/../private/key` and `/private%2fkey` all name `/private/key`, as
//! nginx's normalized URI does: percent-escapes decoded once, `.` and empty
//! segments dropped, `..` resolved. The result is written back in a form
//! that decodes to the same bytes — `%`, `?`, `#`, controls, space,
//! non-ASCII and every other byte RFC 3986 allows in no path segment
//! (`\`, `"`, `<`, `{`, …) stay escaped, as nginx escapes what it
//! forwards, so that it can go into a Location or upstream as it is — so
//! a handler that decodes once (the static files') sees exactly these
//! segments and no double decoding can happen. An upstream is never sent
//! a `\` that it could take for `/` (`/pub%5C..%5Cadmin` is one segment).

use std::borrow::Cow;

/// A path that climbs above `/` (`/../x`, `/a/%2e%2e/%2e%2e/x`): 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClimbsAboveRoot;

/// Why a path has no canonical form: a request's is answered 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// It climbs above `/`.
    #[error("climbs above /")]
    ClimbsAboveRoot,
    /// A `%` that does not begin two hex digits (`/100%`, `/%zz`): no URI
    /// holds one (RFC 3986 §2.1), and taking it as itself would give one
    /// path two readings. nginx answers 400 too.
    #[error("has a % that is not followed by two hex digits (a % itself is written %25)")]
    BadEscape,
    /// A `%00`: a NUL byte, which no file name holds and which C strings
    /// in an upstream app would cut the path at (a path checked as
    /// `/admin%00.png` but opened as `/admin`). nginx answers 400 too.
    #[error("has %00 (a NUL byte), which no path may hold")]
    Nul,
}

impl From<ClimbsAboveRoot> for PathError {
    fn from(_: ClimbsAboveRoot) -> PathError {
        PathError::ClimbsAboveRoot
    }
}

/// The canonical form of an origin-form `path` (it starts with `/`). Borrows
/// when the path is already canonical, which is the common case and costs
/// one scan.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, PathError> {
    if is_canonical(path) {
        return Ok(Cow::Borrowed(path));
    }
    if !escapes_are_whole(path.as_bytes()) {
        return Err(PathError::BadEscape);
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
    if decoded.contains(&0) {
        return Err(PathError::Nul);
    }
    let segments = resolve_dots(&decoded)?;
    let directory = matches!(
        decoded.rsplit(|&b| b == b'/').next(),
        Some(b"" | b"." | b"..")
    );
    let mut out = String::with_capacity(path.len());
    for seg in &segments {
        out.push('/');
        for &b in *seg {
            if ESCAPED[usize::from(b)] {
                out.extend(escape(b).map(char::from));
            } else {
                out.push(char::from(b));
            }
        }
    }
    if directory || out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Append `path`, a target's path as the client sent it, with every byte
/// no path may hold raw (`\`, `"`, `<`, space, non-ASCII, …) escaped and its
/// own escapes kept as they are: it names what it named, and no reader
/// can take a `\` in it for a `/` (browsers do, in a Location).
pub fn write_as_sent(path: &str, out: &mut Vec<u8>) {
    for &b in path.as_bytes() {
        if b == b'%' || !ESCAPED[usize::from(b)] {
            out.push(b);
        } else {
            out.extend_from_slice(&escape(b));
        }
    }
}

/// `b` as a percent-escape, upper-case hex.
fn escape(b: u8) -> [u8; 3] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    [b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]
}

/// Whether every `%` in `path` begins two hex digits.
fn escapes_are_whole(path: &[u8]) -> bool {
    let mut at = 0;
    while let Some(i) = path[at..].iter().position(|&b| b == b'%') {
        let escape = &path[at + i..];
        if escape.len() < 3 || !escape[1].is_ascii_hexdigit() || !escape[2].is_ascii_hexdigit() {
            return false;
        }
        at += i + 3;
    }
    true
}

/// The names of a decoded path, split on `/`: empty and `.` segments
/// dropped, each `..` taking the name before it away. Shared with the static
/// files' own decoding (`resolve`), which does not rely on having been given
/// a canonical path.
pub fn resolve_dots(decoded: &[u8]) -> Result<Vec<&[u8]>, ClimbsAboveRoot> {
    let mut segments = Vec::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                segments.pop().ok_or(ClimbsAboveRoot)?;
            }
            name => segments.push(name),
        }
    }
    Ok(segments)
}

/// Whether `b` is one of RFC 3986's `unreserved` or `sub-delims`: what a
/// path segment and a host name both take as they are.
pub const fn is_unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// The bytes the canonical form escapes: `%` and every byte RFC 3986's
/// `pchar` leaves out (`?`, `#`, `[`, `]`, `"`, `<`, `>`, `\`, `^`, `` ` ``,
/// `{`, `|`, `}`, space, controls, non-ASCII); `/` only separates.
const ESCAPED: [bool; 256] = {
    let mut t = [true; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        t[b] = !(is_unreserved_or_sub_delim(byte) || matches!(byte, b':' | b'@' | b'/'));
        b += 1;
    }
    t
};

/// No escapes, no byte the canonical form escapes (`ESCAPED`), no empty,
/// `.` or `..` segment (a trailing slash is fine).
fn is_canonical(path: &str) -> bool {
    // Bytes the canonical form escapes: a request may carry raw UTF-8
    // (curl sends it so), which must meet its escaped spelling, and a
    // route's path may hold any of them.
    !path.bytes().any(|b| ESCAPED[usize::from(b)])
        && !path.contains("//")
        && !path.split('/').any(|s| s == "." || s == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(p: &str) -> String {
        canonical(p).unwrap().into_owned()
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in ["/", "/a", "/a/b.txt", "/static/", "/a.b/c..d/.e"] {
            assert!(matches!(canonical(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn spellings_of_the_same_path_meet() {
        for p in [
            "//private/key.txt",
            "/%70rivate/key.txt",
            "/./private/key.txt",
            "/pub/../private/key.txt",
            "/private%2fkey.txt",
            "/private//key.txt",
            "/private/./key.txt",
        ] {
            assert_eq!(c(p), "/private/key.txt", "{p}");
        }
        assert_eq!(c("/private/x/.."), "/private/");
        assert_eq!(c("/private/."), "/private/");
        assert_eq!(c("//"), "/");
        assert_eq!(c("/a//"), "/a/");
    }

    #[test]
    fn what_a_second_decoding_would_change_stays_escaped() {
        assert_eq!(c("/%252e%252e/x"), "/%252e%252e/x");
        assert_eq!(c("/a%20b/%01/%C3%A9"), "/a%20b/%01/%C3%A9");
        assert_eq!(c("/%c0%ae"), "/%C0%AE");
        assert_eq!(c("/a%3Fb%23c/"), "/a%3Fb%23c/");
        // Raw, as curl sends UTF-8, it meets the escaped spelling.
        assert_eq!(c("/café/"), "/caf%C3%A9/");
        assert_eq!(c("/a b"), "/a%20b");
    }

    #[test]
    fn bytes_no_path_may_hold_are_escaped() {
        // Decoded, then written back escaped: an upstream never sees a
        // `\` it may take for `/`, nor a `"` or `{` it may refuse.
        assert_eq!(c("/pub%5C..%5Cadmin/x"), "/pub%5C..%5Cadmin/x");
        assert_eq!(
            c("/a%7Bb%7D%22%3C%3E%5E%60%7C%5B%5D"),
            "/a%7Bb%7D%22%3C%3E%5E%60%7C%5B%5D"
        );
        // Raw, they meet their escaped spelling.
        assert_eq!(c("/a\\b{c}"), "/a%5Cb%7Bc%7D");
        // What a path segment may hold stays as it is.
        let allowed = "/az-AZ09._~!$&'()*+,;=:@";
        assert!(matches!(canonical(allowed), Ok(Cow::Borrowed(_))));
        assert_eq!(c("/%41%2D%7E%40"), "/A-~@");
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for p in [
            "/..",
            "/../x",
            "/a/../../x",
            "/%2e%2e/x",
            "/a/%2E%2E%2f..%2Fx",
        ] {
            assert_eq!(canonical(p), Err(PathError::ClimbsAboveRoot), "{p}");
        }
    }

    #[test]
    fn a_percent_that_begins_no_escape_is_refused() {
        for p in [
            "/100%",
            "/100%.txt",
            "/%zz",
            "/a%2",
            "/a%2/b",
            "/%%41",
            "/%G0",
        ] {
            assert_eq!(canonical(p), Err(PathError::BadEscape), "{p}");
        }
        assert_eq!(c("/100%25.txt"), "/100%25.txt");
        for p in ["/%00", "/a%00.png", "/a/%2e%2e/%00"] {
            assert_eq!(canonical(p), Err(PathError::Nul), "{p}");
        }
        assert_eq!(c("/%41%2f%aB"), "/A/%AB");
    }
}
