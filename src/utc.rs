//! UTC calendar time, for the timestamps of the access log and of the
//! server's own lines: no time zone database, no allocation but the text.

use std::time::{SystemTime, UNIX_EPOCH};

/// A second since the epoch as a UTC calendar date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    /// The year (1970 and on).
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    /// 0 to 23.
    pub hour: u32,
    /// 0 to 59.
    pub minute: u32,
    /// 0 to 59 (no leap second: the system clock has none).
    pub second: u32,
}

impl Civil {
    /// The date and time `secs` seconds after the epoch (Howard Hinnant's
    /// days-to-civil algorithm).
    pub fn of(secs: u64) -> Civil {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Civil {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }
}

/// A time shown as RFC 3339 in UTC to the millisecond
/// (`2026-12-05T18:04:09.123Z`), as a log line's first word: it sorts as
/// text sorts, and reads the same wherever the log is read. Written
/// straight into the line, nothing allocated. A time before the epoch
/// reads as the epoch.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339Millis(pub SystemTime);

impl std::fmt::Display for Rfc3339Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let c = Civil::of(since.as_secs());
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            c.year,
            c.month,
            c.day,
            c.hour,
            c.minute,
            c.second,
            since.subsec_millis()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ymdhms(c: Civil) -> (i64, u32, u32, u32, u32, u32) {
        (c.year, c.month, c.day, c.hour, c.minute, c.second)
    }

    #[test]
    fn civil_dates() {
        assert_eq!(ymdhms(Civil::of(0)), (1970, 1, 1, 0, 0, 0));
        assert_eq!(ymdhms(Civil::of(951_782_400)), (2000, 2, 29, 0, 0, 0));
        assert_eq!(ymdhms(Civil::of(1_795_615_269)), (2026, 11, 25, 14, 1, 9));
        // The last second of a year.
        assert_eq!(ymdhms(Civil::of(1_798_761_599)), (2026, 12, 31, 23, 59, 59));
    }

    #[test]
    fn timestamps_carry_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_615_269_007);
        assert_eq!(Rfc3339Millis(t).to_string(), "2026-11-25T14:01:09.007Z");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(
            Rfc3339Millis(before).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
