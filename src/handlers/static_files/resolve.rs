//! From a request path to a file under the root, without ever leaving it.
//!
//! SECURITY: the defence against path traversal, in order:
//! 1. The path below the route's prefix is percent-decoded exactly once; a `%`
//!    left after that is a literal character, so double encoding
//!    (`%252e%252e`) names a file called `%2e%2e`, never `..`.
//! 2. The decoded bytes must be valid UTF-8: overlong encodings of `.` or `/`
//!    (`%c0%ae`, `%c0%af`) are invalid UTF-8 and refused.
//! 3. NUL bytes and backslashes are refused outright.
//! 4. Segments are split on `/`; empty and `.` segments are dropped, `..` pops
//!    a segment and is refused when there is none left to pop, so the result
//!    is a relative path of plain names that cannot climb above the root.
//! 5. Names starting with `.` are hidden unless the route sets `dotfiles`
//!    (`hidden`), but for `.well-known` (RFC 8615: ACME challenges,
//!    security.txt), whose own dotted names stay hidden.
//! 6. On disk (see `fs.rs`), the candidate is canonicalized and must still lie
//!    under the canonical root unless `follow-symlinks` is set, so a symlink
//!    cannot lead outside.
//! 7. `fs::open_checked` then opens it below the root one name at a time with
//!    `O_NOFOLLOW`, so what opens is what step 6 approved: a directory swapped
//!    for a link in between is refused, and the bytes served come from that
//!    open file, never from the path opened again.

use percent_encoding::percent_decode_str;

/// Why a path was refused before touching the file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Malformed or hostile (bad encoding, NUL, backslash, climbing out): 400.
    BadPath,
    /// A hidden name: 404, as if it did not exist.
    Hidden,
}

/// A safe relative path below the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    /// Plain names joined by `/`; empty for the root itself.
    pub path: String,
    /// The request named a directory (`…/`).
    pub trailing_slash: bool,
}

/// Whether a route without `dotfiles` hides the file or directory `name`:
/// a dotted name (`.env`, `.git`), but for `.well-known`, the place of
/// RFC 8615's public files (nginx's usual `location ~ /\.(?!well-known)`).
pub fn hidden(name: &[u8]) -> bool {
    name.starts_with(b".") && name != b".well-known"
}

/// Decode and normalize the part of the request path below the prefix.
pub fn decode(raw: &str, dotfiles: bool) -> Result<RelPath, Reject> {
    let bytes: Vec<u8> = percent_decode_str(raw).collect();
    if bytes.contains(&0) || bytes.contains(&b'\\') {
        return Err(Reject::BadPath);
    }
    let decoded = std::str::from_utf8(&bytes).map_err(|_| Reject::BadPath)?;
    let segments = crate::http::path::resolve_dots(&bytes).map_err(|_| Reject::BadPath)?;
    if !dotfiles && segments.iter().any(|s| hidden(s)) {
        return Err(Reject::Hidden);
    }
    let trailing_slash = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.is_empty();
    Ok(RelPath {
        // Whole names of valid UTF-8 joined by "/": valid UTF-8 again.
        path: String::from_utf8(segments.join(&b'/')).map_err(|_| Reject::BadPath)?,
        trailing_slash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        decode(raw, false).unwrap().path
    }

    #[test]
    fn plain_paths() {
        assert_eq!(ok("a/b.txt"), "a/b.txt");
        assert_eq!(ok("/a//./b/"), "a/b");
        assert_eq!(ok("a/../b"), "b");
        assert_eq!(ok("hello%20world.txt"), "hello world.txt");
        assert_eq!(ok(""), "");
        assert!(decode("dir/", false).unwrap().trailing_slash);
        assert!(!decode("dir", false).unwrap().trailing_slash);
    }

    #[test]
    fn traversal_is_refused() {
        for bad in [
            "..",
            "../etc/passwd",
            "a/../../etc/passwd",
            "%2e%2e/etc/passwd",
            "%2E%2E%2Fetc%2Fpasswd",
            "a/%2e%2e/%2e%2e/x",
            "%c0%ae%c0%ae/etc/passwd",
            "%c0%af",
            "..%5c..%5cwindows",
            "a\\b",
            "file%00.txt",
        ] {
            assert_eq!(decode(bad, false), Err(Reject::BadPath), "{bad}");
        }
    }

    #[test]
    fn double_encoding_stays_literal() {
        // %252e decodes once to the three characters "%2e": a name, not a dot.
        assert_eq!(ok("%252e%252e/x"), "%2e%2e/x");
    }

    #[test]
    fn dotfiles_are_hidden_unless_allowed() {
        assert_eq!(decode(".env", false), Err(Reject::Hidden));
        assert_eq!(decode("a/.git/config", false), Err(Reject::Hidden));
        assert_eq!(decode(".env", true).unwrap().path, ".env");
        // RFC 8615's files are public; dotted names below it are not.
        assert_eq!(
            decode(".well-known/acme-challenge/t0k3n", false)
                .unwrap()
                .path,
            ".well-known/acme-challenge/t0k3n"
        );
        assert_eq!(decode(".well-known/.htpasswd", false), Err(Reject::Hidden));
        assert_eq!(decode(".well-knownx/a", false), Err(Reject::Hidden));
    }
}
