//! What a file response is: 200, 206, 304, 412 or 416, decided from the
//! request's conditional and range headers (RFC 9110 §13, §14). Pure: no I/O.

use std::time::SystemTime;

use super::fs::FileInfo;

/// The request headers that shape a file response, copied out of the head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// If-Match.
    pub if_match: Option<String>,
    /// If-Unmodified-Since.
    pub if_unmodified_since: Option<String>,
    /// If-None-Match.
    pub if_none_match: Option<String>,
    /// If-Modified-Since.
    pub if_modified_since: Option<String>,
    /// Range.
    pub range: Option<String>,
    /// If-Range.
    pub if_range: Option<String>,
}

/// The response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// 304: the client's copy is current.
    NotModified,
    /// 200 with the whole file.
    Full,
    /// 206 with bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// 206 with these ranges (`start`, `end` inclusive; two or more, in
    /// the order asked, together no longer than the file) as a
    /// `multipart/byteranges` body.
    Parts(Vec<(u64, u64)>),
    /// 416: the range lies outside the file.
    Unsatisfiable,
    /// 412: the client's If-Match or If-Unmodified-Since is not met (it
    /// holds another version than this one).
    PreconditionFailed,
}

/// Decide the response for `info`. `get_or_head` is false for other methods,
/// which never reach here today but must not get 304s.
pub fn decide(info: &FileInfo, c: &Conditions, get_or_head: bool) -> Decision {
    let etag = info.etag();
    // RFC 9110 §13.2.2: If-Match first (strong; `*` is any version), then
    // If-Unmodified-Since only without it (an unparsable date is ignored).
    if let Some(im) = &c.if_match {
        if !etag_list_matches(im, &etag, true) && im.trim() != "*" {
            return Decision::PreconditionFailed;
        }
    } else if let Some(ius) = c.if_unmodified_since.as_deref().and_then(parse_date) {
        if info.modified() > ius {
            return Decision::PreconditionFailed;
        }
    }
    // Then If-None-Match; If-Modified-Since only without it.
    if get_or_head {
        if let Some(inm) = &c.if_none_match {
            if etag_list_matches(inm, &etag, false) {
                return Decision::NotModified;
            }
        } else if let Some(ims) = c.if_modified_since.as_deref().and_then(parse_date) {
            // The date must be this version's own, as nginx's default
            // `if_modified_since exact`: a client's copy is the Last-Modified
            // it was sent. §13.1.3's "not newer" would keep a copy newer
            // than a file rolled back to an older build (its mtime went
            // back), or any copy against a date in the future.
            if info.modified() == ims {
                return Decision::NotModified;
            }
        }
    }
    let Some(range) = &c.range else {
        return Decision::Full;
    };
    if let Some(ir) = &c.if_range {
        // §13.1.5: one entity tag, which must match strongly (a list is no
        // valid If-Range, so no match); a date exactly.
        let ir = ir.trim();
        let current = if ir.starts_with('"') || ir.starts_with("W/") {
            ir == etag && !etag.starts_with("W/")
        } else {
            parse_date(ir).is_some_and(|d| d == info.modified())
        };
        if !current {
            return Decision::Full;
        }
    }
    parse_range(range, info.size)
}

/// Most ranges one request is given parts for; a longer list gets the
/// whole file (a list of many tiny ranges costs more to frame than it
/// saves).
const MAX_RANGES: usize = 64;

/// A `bytes=` range set against `size`: one range, or several as parts.
/// Syntax the server does not understand is ignored (a full 200), as
/// §14.2 allows; so is a list whose ranges add up to more than the file
/// (overlaps: as nginx) or that is longer than `MAX_RANGES`. Of several,
/// those the file cannot satisfy are left out (§14.1.1), and 416 comes
/// only when none is left.
pub fn parse_range(value: &str, size: u64) -> Decision {
    // The unit is compared without regard to case (§14.1).
    let value = value.trim();
    let Some(spec) = value
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| &value[6..])
    else {
        return Decision::Full;
    };
    // A list's empty elements are no ranges (RFC 9110 §5.6.1.2: a
    // recipient ignores them): `bytes=0-1,` is the one range.
    let mut ranges = spec.split(',').map(str::trim).filter(|r| !r.is_empty());
    let (first, second) = match (ranges.next(), ranges.next()) {
        (Some(first), None) => return one_range(first, size),
        (Some(first), Some(second)) => (first, second),
        (None, _) => return Decision::Full,
    };
    let mut parts = Vec::new();
    for spec in [first, second].into_iter().chain(ranges) {
        match one_range(spec, size) {
            Decision::Partial { start, end } => parts.push((start, end)),
            Decision::Unsatisfiable => {}
            _ => return Decision::Full,
        }
        if parts.len() > MAX_RANGES {
            return Decision::Full;
        }
    }
    // Saturating: 64 ranges of a sparse file of an exabyte add up past 64
    // bits, which is more than the file all the same.
    let total = parts.iter().fold(0u64, |total, (start, end)| {
        total.saturating_add(end - start + 1)
    });
    match parts.as_slice() {
        [] => Decision::Unsatisfiable,
        // One left: sent as one, never as a multipart of one part (§14.6).
        [(start, end)] => Decision::Partial {
            start: *start,
            end: *end,
        },
        _ if total > size => Decision::Full,
        _ => Decision::Parts(parts),
    }
}

/// One range of a set against `size`: `Partial`, `Unsatisfiable`, or
/// `Full` for what is not understood (and a suffix or start range of an
/// empty file).
fn one_range(spec: &str, size: u64) -> Decision {
    let Some((a, b)) = spec.split_once('-') else {
        return Decision::Full;
    };
    // Digits past what a u64 holds are a position past any file: the
    // range is then clipped to its end (or unsatisfiable), as a smaller
    // one past the end would be, not ignored.
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().unwrap_or(u64::MAX))
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            // The last n bytes of an empty file are the whole of it
            // (§14.1.1), which no Content-Range can say: a 200, as nginx
            // (`bytes=-0` too).
            Some(_) if size == 0 => Decision::Full,
            Some(0) => Decision::Unsatisfiable,
            Some(n) => Decision::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            None => Decision::Full,
        },
        (first, last) => {
            let Some(start) = num(first) else {
                return Decision::Full;
            };
            let end = if last.is_empty() {
                None
            } else {
                match num(last) {
                    Some(e) if e >= start => Some(e),
                    _ => return Decision::Full,
                }
            };
            if start >= size {
                // From its start, an empty file is the whole of it, as a
                // suffix: a 200, as nginx (a client testing for range
                // support with `bytes=0-` must not see an error).
                return if size == 0 && start == 0 {
                    Decision::Full
                } else {
                    Decision::Unsatisfiable
                };
            }
            Decision::Partial {
                start,
                end: end.map_or(size - 1, |e| e.min(size - 1)),
            }
        }
    }
}

/// The framing of a `multipart/byteranges` body (RFC 9110 §14.6): each
/// part's head, to go before its bytes, and the closing delimiter.
#[derive(Debug)]
pub struct Multipart {
    /// The response's Content-Type, which names the boundary.
    pub content_type: String,
    /// Each part's head, in the order of the parts.
    pub heads: Vec<Vec<u8>>,
    /// The closing delimiter, after the last part's bytes.
    pub close: Vec<u8>,
    /// The whole body's length: heads, parts and close.
    pub len: u64,
}

thread_local! {
    /// A shard's multipart responses so far: each gets its own boundary.
    static BOUNDARIES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Multipart {
    /// The framing of `parts` (from `Decision::Parts`) of a file of `size`
    /// bytes whose parts are `part_type`.
    pub fn new(parts: &[(u64, u64)], size: u64, part_type: &str) -> Multipart {
        // No byte of the file may read as the boundary: one from the clock
        // and a count, which a file would have to hold by chance (nginx's
        // is a count alone).
        let n = BOUNDARIES.with(|b| {
            b.set(b.get().wrapping_add(1));
            b.get()
        });
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let boundary = format!(
            "{:016x}{n:08x}",
            nanos.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15
        );
        let heads: Vec<Vec<u8>> = parts
            .iter()
            .map(|(start, end)| {
                format!(
                    "\r\n--{boundary}\r\nContent-Type: {part_type}\r\nContent-Range: bytes {start}-{end}/{size}\r\n\r\n"
                )
                .into_bytes()
            })
            .collect();
        let close = format!("\r\n--{boundary}--\r\n").into_bytes();
        let framing = heads.iter().map(Vec::len).sum::<usize>() + close.len();
        let bytes = parts.iter().fold(0u64, |total, (start, end)| {
            total.saturating_add(end - start + 1)
        });
        Multipart {
            content_type: format!("multipart/byteranges; boundary={boundary}"),
            heads,
            close,
            len: bytes.saturating_add(framing as u64),
        }
    }

    /// The whole body of `parts` of `file` (all of its bytes), to send at
    /// once: for a small file the shard holds.
    pub fn assemble(&self, parts: &[(u64, u64)], file: &[u8]) -> Vec<u8> {
        let mut whole = Vec::with_capacity(self.len as usize);
        for (head, &(start, end)) in self.heads.iter().zip(parts) {
            whole.extend_from_slice(head);
            whole.extend_from_slice(&file[start as usize..=end as usize]);
        }
        whole.extend_from_slice(&self.close);
        whole
    }
}

/// Whether a list of entity tags (or `*`) matches `etag`.
/// `strong`: the strong comparison (RFC 9110 §8.8.3.2: both tags strong
/// and the same), else the weak one (the same without `W/`).
fn etag_list_matches(list: &str, etag: &str, strong: bool) -> bool {
    let (ours, ours_weak) = match etag.strip_prefix("W/") {
        Some(tag) => (tag, true),
        None => (etag, false),
    };
    list.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return !strong;
        }
        let (theirs, theirs_weak) = match t.strip_prefix("W/") {
            Some(tag) => (tag, true),
            None => (t, false),
        };
        theirs == ours && !(strong && (ours_weak || theirs_weak))
    })
}

/// An HTTP date, read as nginx reads one: what follows a `;` (old
/// browsers' `; length=…`) is no part of it; a date httpdate refuses is
/// read for its day, month, year and time alone, whatever its weekday, its
/// spacing, its zone (`UTC`, `+0000`, none: GMT) or the text after it.
fn parse_date(s: &str) -> Option<SystemTime> {
    let s = s.split(';').next().unwrap_or(s).trim();
    if let Ok(t) = httpdate::parse_http_date(s) {
        return Some(t);
    }
    let words: Vec<&str> = s
        .split_whitespace()
        .map(|w| w.trim_end_matches(','))
        .collect();
    let at = words.iter().position(|w| is_time_of_day(w))?;
    // One date: two (a field sent twice, its lines joined) are no date
    // (RFC 9110 §13.1.3).
    if words[at + 1..].iter().any(|w| is_time_of_day(w)) {
        return None;
    }
    let [day, month, year] = words.get(at.checked_sub(3)?..at)? else {
        return None;
    };
    let time = words[at];
    // The weekday httpdate insists on is the date's own: whichever of the
    // seven it takes.
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        .iter()
        .find_map(|weekday| {
            let date = format!("{weekday}, {day:0>2} {month} {year} {time} GMT");
            httpdate::parse_http_date(&date).ok()
        })
}

/// Whether `w` is a time of day as a date writes it, `08:49:37`.
fn is_time_of_day(w: &str) -> bool {
    let b = w.as_bytes();
    b.len() == 8
        && b[2] == b':'
        && b[5] == b':'
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(size: u64) -> FileInfo {
        FileInfo {
            size,
            mtime: 1_000_000,
            stamp: Default::default(),
            content_type: "text/plain",
            encoding: None,
            compressed_from: None,
            body: None,
            file: None,
        }
    }

    /// A file gzipped here has a weak tag: it revalidates (If-None-Match
    /// compares weakly, in either spelling) but meets no If-Match (which
    /// compares strongly, even against itself).
    #[test]
    fn a_weak_tag_of_ours_compares_weakly_only() {
        let mut i = info(100);
        i.compressed_from = Some(300);
        let tag = i.etag();
        assert!(tag.starts_with("W/\""), "{tag}");
        let strong_spelling = tag.strip_prefix("W/").unwrap();
        for inm in [tag.as_str(), strong_spelling] {
            let c = Conditions {
                if_none_match: Some(inm.into()),
                ..Conditions::default()
            };
            assert_eq!(decide(&i, &c, true), Decision::NotModified, "{inm}");
        }
        let c = Conditions {
            if_match: Some(tag.clone()),
            ..Conditions::default()
        };
        assert_eq!(decide(&i, &c, true), Decision::PreconditionFailed);
    }

    #[test]
    fn ranges() {
        let p = |s, e| Decision::Partial { start: s, end: e };
        assert_eq!(parse_range("bytes=0-9", 100), p(0, 9));
        assert_eq!(parse_range("BYTES=0-9", 100), p(0, 9));
        assert_eq!(parse_range("Bytes=-10", 100), p(90, 99));
        assert_eq!(parse_range("bytes=90-", 100), p(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), p(90, 99));
        assert_eq!(parse_range("bytes=-500", 100), p(0, 99));
        assert_eq!(parse_range("bytes=50-500", 100), p(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), Decision::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Decision::Unsatisfiable);
        // Several: parts, in the order asked, those past the end left out;
        // one left is a single range, none a 416.
        let parts = |v: &[(u64, u64)]| Decision::Parts(v.to_vec());
        assert_eq!(parse_range("bytes=0-1,5-6", 100), parts(&[(0, 1), (5, 6)]));
        assert_eq!(
            parse_range("bytes=50-, -10, 0-0", 100),
            parts(&[(50, 99), (90, 99), (0, 0)])
        );
        assert_eq!(parse_range("bytes=0-1,200-300", 100), p(0, 1));
        assert_eq!(parse_range("bytes=100-,200-", 100), Decision::Unsatisfiable);
        // Not understood anywhere, overlapping past the file's length, or
        // too many: the whole file.
        assert_eq!(parse_range("bytes=0-1,x-2", 100), Decision::Full);
        assert_eq!(parse_range("bytes=0-1,9-1", 100), Decision::Full);
        assert_eq!(parse_range("bytes=0-60,40-99", 100), Decision::Full);
        assert_eq!(
            parse_range("bytes=0-49,0-49", 100),
            parts(&[(0, 49), (0, 49)])
        );
        let many = (0..=MAX_RANGES)
            .map(|i| format!("{i}-{i}"))
            .collect::<Vec<_>>();
        assert_eq!(
            parse_range(&format!("bytes={}", many.join(",")), 100),
            Decision::Full
        );
        let most = &many[..MAX_RANGES];
        assert!(matches!(
            parse_range(&format!("bytes={}", most.join(",")), 100),
            Decision::Parts(p) if p.len() == MAX_RANGES
        ));
        // An empty file: nothing to give parts of.
        assert_eq!(parse_range("bytes=0-,-5", 0), Decision::Full);
        assert_eq!(parse_range("bytes=1-,2-", 0), Decision::Unsatisfiable);
        for empties in ["bytes=0-1,", "bytes=, 0-1", "bytes= ,0-1 , ,"] {
            assert_eq!(parse_range(empties, 100), p(0, 1), "{empties}");
        }
        assert_eq!(parse_range("bytes=,", 100), Decision::Full);
        assert_eq!(parse_range("bytes=9-1", 100), Decision::Full);
        assert_eq!(parse_range("items=0-1", 100), Decision::Full);
        assert_eq!(parse_range("bytes=x-1", 100), Decision::Full);
        assert_eq!(parse_range("bytes=-5", 0), Decision::Full);
        assert_eq!(parse_range("bytes=0-", 0), Decision::Full);
        assert_eq!(parse_range("bytes=0-9", 0), Decision::Full);
        assert_eq!(parse_range("bytes=5-9", 0), Decision::Unsatisfiable);
        assert_eq!(parse_range("bytes=1-", 0), Decision::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 0), Decision::Full);
        // Positions past what 64 bits hold.
        let huge = "99999999999999999999999";
        assert_eq!(parse_range(&format!("bytes=0-{huge}"), 100), p(0, 99));
        assert_eq!(parse_range(&format!("bytes=-{huge}"), 100), p(0, 99));
        assert_eq!(
            parse_range(&format!("bytes={huge}-"), 100),
            Decision::Unsatisfiable
        );
    }

    #[test]
    fn preconditions() {
        let i = info(100);
        let etag = i.etag();
        let lm = httpdate::fmt_http_date(i.modified());
        let earlier = httpdate::fmt_http_date(i.modified() - std::time::Duration::from_secs(5));
        let c = |im: Option<&str>, ius: Option<&str>| Conditions {
            if_match: im.map(Into::into),
            if_unmodified_since: ius.map(Into::into),
            range: Some("bytes=0-1".into()),
            ..Conditions::default()
        };
        let part = Decision::Partial { start: 0, end: 1 };
        let failed = Decision::PreconditionFailed;
        assert_eq!(decide(&i, &c(Some(&etag), None), true), part);
        assert_eq!(
            decide(&i, &c(Some(&format!("\"x\", {etag}")), None), true),
            part
        );
        assert_eq!(decide(&i, &c(Some("*"), None), true), part);
        assert_eq!(decide(&i, &c(Some("\"x\""), None), true), failed);
        // If-Match compares strongly.
        assert_eq!(
            decide(&i, &c(Some(&format!("W/{etag}")), None), true),
            failed
        );
        assert_eq!(decide(&i, &c(None, Some(&lm)), true), part);
        assert_eq!(decide(&i, &c(None, Some(&earlier)), true), failed);
        assert_eq!(decide(&i, &c(None, Some("not a date")), true), part);
        // If-Unmodified-Since is not looked at beside If-Match.
        assert_eq!(decide(&i, &c(Some(&etag), Some(&earlier)), true), part);
        // A failed precondition wins over a 304.
        let both = Conditions {
            if_none_match: Some(etag.clone()),
            ..c(Some("\"x\""), None)
        };
        assert_eq!(decide(&i, &both, true), failed);
    }

    #[test]
    fn conditionals() {
        let i = info(100);
        let etag = i.etag();
        let lm = httpdate::fmt_http_date(i.modified());
        let c = |inm: Option<&str>, ims: Option<&str>| Conditions {
            if_none_match: inm.map(Into::into),
            if_modified_since: ims.map(Into::into),
            ..Conditions::default()
        };
        assert_eq!(
            decide(&i, &c(Some(&etag), None), true),
            Decision::NotModified
        );
        assert_eq!(
            decide(&i, &c(Some(&format!("W/{etag}")), None), true),
            Decision::NotModified
        );
        assert_eq!(
            decide(&i, &c(Some("\"other\", *"), None), true),
            Decision::NotModified
        );
        assert_eq!(
            decide(&i, &c(Some("\"other\""), Some(&lm)), true),
            Decision::Full
        );
        assert_eq!(decide(&i, &c(None, Some(&lm)), true), Decision::NotModified);
        // As nginx reads it: an old browser's `; length=`, `UTC` for GMT,
        // no zone, two spaces, text after it, another weekday.
        let (weekday, rest) = lm.split_once(", ").unwrap();
        let other_day = if weekday == "Mon" { "Tue" } else { "Mon" };
        let no_zone = lm.trim_end_matches(" GMT").to_string();
        for old_style in [
            format!("{lm}; length=100"),
            format!("{lm};length=3"),
            lm.replace("GMT", "UTC"),
            lm.replace("GMT", "+0000"),
            no_zone.clone(),
            format!("{weekday},  {rest}"),
            format!("{lm} junk"),
            format!("{other_day}, {rest}"),
            no_zone[5..].to_string(),
        ] {
            let c = c(None, Some(&old_style));
            assert_eq!(decide(&i, &c, true), Decision::NotModified, "{old_style}");
        }
        // Sent twice, its lines joined: no date, however each is spelled.
        for twice in [format!("{lm}, {lm}"), format!("{no_zone}, {no_zone}")] {
            assert_eq!(
                decide(&i, &c(None, Some(&twice)), true),
                Decision::Full,
                "{twice}"
            );
        }
        let earlier = httpdate::fmt_http_date(i.modified() - std::time::Duration::from_secs(5));
        assert_eq!(decide(&i, &c(None, Some(&earlier)), true), Decision::Full);
        // A later date is not this version's: a file rolled back to an
        // older mtime is sent again.
        let later = httpdate::fmt_http_date(i.modified() + std::time::Duration::from_secs(5));
        assert_eq!(decide(&i, &c(None, Some(&later)), true), Decision::Full);
    }

    #[test]
    fn if_range() {
        let i = info(100);
        let r = |ir: &str| Conditions {
            range: Some("bytes=0-0".into()),
            if_range: Some(ir.into()),
            ..Conditions::default()
        };
        let part = Decision::Partial { start: 0, end: 0 };
        assert_eq!(decide(&i, &r(&i.etag()), true), part);
        assert_eq!(decide(&i, &r("\"stale\""), true), Decision::Full);
        // One validator only: a list holding the current tag is no match.
        let listed = format!("\"stale\", {}", i.etag());
        assert_eq!(decide(&i, &r(&listed), true), Decision::Full);
        assert_eq!(
            decide(&i, &r(&format!("W/{}", i.etag())), true),
            Decision::Full
        );
        assert_eq!(
            decide(&i, &r(&httpdate::fmt_http_date(i.modified())), true),
            part
        );
    }
}
