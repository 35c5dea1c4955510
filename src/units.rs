//! Sizes and durations as an operator writes them (`8k`, `1m`, `75s`, `500ms`),
//! the nginx way, for flags and configuration alike.

use std::time::Duration;

/// A value that is not a size or duration; the message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Not a size.
    #[error("must be a size like 8k, 1m or 1048576, got {0:?}")]
    Size(String),
    /// Not a duration.
    #[error("must be a duration like 500ms, 60s, 5m or 1h, got {0:?}")]
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

/// Parse a duration: a decimal number with `us`, `ms`, `s`, `m` or `h`; a
/// bare number means seconds, as in nginx.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(s.to_string());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(err());
    }
    let micros_per = match unit {
        "us" => 1,
        "ms" => 1000,
        "" | "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        _ => return Err(err()),
    };
    // All digits: too many of them is too long, not malformed.
    let too_long = || UnitError::DurationTooLong(s.to_string());
    let n: u64 = digits.parse().map_err(|_| too_long())?;
    let us = n.checked_mul(micros_per).ok_or_else(too_long)?;
    let d = Duration::from_micros(us);
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
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
        for bad in ["", "s", "1 s", "1d", "-1s", "1.5s", "1µs"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_format_back() {
        for n in [0, 1, 1000, 8192, 1 << 20, 3 << 30] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
    }
}
