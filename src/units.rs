//! Sizes and durations as an operator writes them (`8k`, `1m`, `75s`, `500ms`,
//! `1h 30m`),
//! the nginx way, for flags and configuration alike.

use std::time::Duration;

/// A value that is not a size or duration; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Not a size.
    #[error("must be a size like 8k, 1m or 1048576, got {0:?}")]
    Size(String),
    /// Not a duration.
    #[error("must be a duration like 500ms, 60s, 1.5s, 5m, 1h 30m or 1d, got {0:?}")]
    Duration(String),
    /// A duration past `MAX_DURATION`.
    #[error("must be at most 365 days (8760h), got {0:?}")]
    DurationTooLong(String),
}

/// The longest duration taken: past it no timeout means anything, and
/// a deadline far enough out overflows the clock's `Instant`.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parse a byte size: a decimal number with an optional `k`, `m` or `g`
/// suffix (powers of 1024, case-insensitive, a trailing `b` or `ib` allowed).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(s.to_string());
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let stripped = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match stripped.as_bytes().last() {
        Some(b'k') => (&stripped[..stripped.len() - 1], 10),
        Some(b'm') => (&stripped[..stripped.len() - 1], 20),
        Some(b'g') => (&stripped[..stripped.len() - 1], 30),
        _ => (stripped, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let n: u64 = digits.parse().map_err(|_| err())?;
    n.checked_mul(1 << shift).ok_or_else(err)
}

/// Parse a duration, nginx's way: one or more terms of a number and a unit
/// (`us`, `ms`, `s`, `m`, `h`, `d`, `w`), summed, written together or apart
/// (`1h30m`, `1h 30m`); a bare number means seconds. A term's number may
/// have a fraction (`0.2s`, `1.5h`, and a bare `2.5`, which nginx does not
/// take), cut to the microsecond.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(s.to_string());
    // All digits: too many of them is too long, not malformed.
    let too_long = || UnitError::DurationTooLong(s.to_string());
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = t.parse().map_err(|_| too_long())?;
        return seconds(n).map_err(|_| too_long());
    }
    if t.is_empty() {
        return Err(err());
    }
    // A bare number with a fraction is seconds as a whole one is (TOML's
    // `drain-timeout = 2.5` reads as this).
    if let Some((whole, fraction)) = t.split_once('.') {
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        if digits(whole) && digits(fraction) {
            return parse_duration(&format!("{t}s")).map_err(|e| match e {
                UnitError::DurationTooLong(_) => too_long(),
                _ => err(),
            });
        }
    }
    let mut micros: u128 = 0;
    for word in t.split_ascii_whitespace() {
        let mut rest = word;
        while !rest.is_empty() {
            let (value, unit, after) = term(rest).ok_or_else(err)?;
            let per: u128 = match unit {
                "us" => 1,
                "ms" => 1_000,
                "s" => 1_000_000,
                "m" => 60_000_000,
                "h" => 3_600_000_000,
                "d" => 86_400_000_000,
                "w" => 604_800_000_000,
                _ => return Err(err()),
            };
            let (whole, fraction) = value;
            let whole: u128 = whole.parse().map_err(|_| too_long())?;
            // The fraction's digits past the microsecond change nothing.
            let digits = &fraction[..fraction.len().min(12)];
            let part = match digits {
                "" => 0,
                d => d.parse::<u128>().map_err(|_| err())? * per / 10u128.pow(d.len() as u32),
            };
            // A fraction below the microsecond is one: a value written
            // non-zero never reads as 0 (which some keys take as "none").
            let nonzero = fraction.bytes().any(|b| b != b'0');
            let part = if part == 0 && nonzero { 1 } else { part };
            micros = whole
                .checked_mul(per)
                .and_then(|w| w.checked_add(part))
                .and_then(|v| v.checked_add(micros))
                .ok_or_else(too_long)?;
            rest = after;
        }
    }
    if micros > MAX_DURATION.as_micros() {
        return Err(too_long());
    }
    Ok(Duration::from_micros(micros as u64))
}

/// The first term of `s`: its number's whole and fraction digits, its unit
/// (letters) and what follows; `None` if it does not start with a digit, a
/// fraction point has no digit after it, or it has no unit.
fn term(s: &str) -> Option<((&str, &str), &str, &str)> {
    let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let w = digits(s);
    if w == 0 {
        return None;
    }
    let (whole, rest) = s.split_at(w);
    let (fraction, rest) = match rest.strip_prefix('.') {
        Some(r) => {
            let f = digits(r);
            if f == 0 {
                return None;
            }
            r.split_at(f)
        }
        None => ("", rest),
    };
    let u = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    if u == 0 {
        return None;
    }
    let (unit, after) = rest.split_at(u);
    Some(((whole, fraction), unit, after))
}

/// A number of seconds as a duration, within `MAX_DURATION` (a bare
/// integer in the configuration file).
pub fn seconds(n: u64) -> Result<Duration, UnitError> {
    let d = Duration::from_secs(n);
    if d > MAX_DURATION {
        return Err(UnitError::DurationTooLong(n.to_string()));
    }
    Ok(d)
}

/// Format a size the way `parse_size` reads it, for logs and help.
pub fn format_size(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n % (1 << 30) == 0 => format!("{}g", n >> 30),
        n if n % (1 << 20) == 0 => format!("{}m", n >> 20),
        n if n % (1 << 10) == 0 => format!("{}k", n >> 10),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("8k"), Ok(8192));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("16kb"), Ok(16 << 10));
        for bad in ["", "lots", "-1", "1.5m", "k", "99999999999999999999g"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("75"), Ok(Duration::from_secs(75)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        for long in ["8761h", "31536001", "9223372036854775807"] {
            assert_eq!(
                parse_duration(long),
                Err(UnitError::DurationTooLong(long.into()))
            );
        }
        // nginx's longer units and sums of terms, apart or together.
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("1m 500ms"),
            Ok(Duration::from_millis(60_500))
        );
        // Fractions, to the microsecond.
        assert_eq!(parse_duration("0.2s"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0.0000019s"), Ok(Duration::from_micros(1)));
        // Never 0 when written non-zero.
        assert_eq!(parse_duration("0.0000001s"), Ok(Duration::from_micros(1)));
        assert_eq!(parse_duration("0.0s"), Ok(Duration::ZERO));
        // A bare fraction is seconds, as a bare whole number is.
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration(" 0.25 "), Ok(Duration::from_millis(250)));
        assert_eq!(
            parse_duration("31536000.5"),
            Err(UnitError::DurationTooLong("31536000.5".into()))
        );
        assert_eq!(parse_duration("52w 1d"), Ok(MAX_DURATION));
        assert_eq!(
            parse_duration("52w 2d"),
            Err(UnitError::DurationTooLong("52w 2d".into()))
        );
        for bad in [
            "", " ", "s", "1 s", "-1s", "1µs", "1.s", ".5s", "1x", "1h 30", "1h,30m", "1..5s",
        ] {
            assert_eq!(
                parse_duration(bad),
                Err(UnitError::Duration(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn sizes_format_back() {
        for n in [0, 1, 1000, 8192, 1 << 20, 3 << 30] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
    }
}
