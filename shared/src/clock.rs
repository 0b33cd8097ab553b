//! Time as the gateway sees it: absolute epoch milliseconds.
//!
//! Shared state (limiter windows, breaker timeouts, ledger leases) is read and written by Lambda
//! instances on different machines, so every timestamp that leaves a process is an absolute UTC
//! epoch-millisecond value. Pure code never asks for the time: it is handed `now`. Only the
//! adapters and the pipeline hold a [`Clock`]; tests hold a [`ManualClock`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, UTC.
pub type EpochMillis = i64;

/// Milliseconds in one UTC hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds in one UTC day.
pub const DAY_MS: i64 = 86_400_000;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time in epoch milliseconds.
    fn now_ms(&self) -> EpochMillis;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> EpochMillis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; shared between a test and the code under test.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    /// A clock showing `now`.
    pub fn new(now: EpochMillis) -> Self {
        Self {
            now: AtomicI64::new(now),
        }
    }

    /// Sets the time to `now` (it may go backwards; tests of clock skew rely on that).
    pub fn set(&self, now: EpochMillis) {
        self.now.store(now, Ordering::SeqCst);
    }

    /// Moves the time forward by `ms` milliseconds.
    pub fn advance(&self, ms: i64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> EpochMillis {
        self.now.load(Ordering::SeqCst)
    }
}

/// The UTC calendar day of `t` as days since the epoch (window id of daily limits).
pub fn utc_day(t: EpochMillis) -> i64 {
    t.div_euclid(DAY_MS)
}

/// The UTC hour of `t` as hours since the epoch (window id of hourly limits).
pub fn utc_hour(t: EpochMillis) -> i64 {
    t.div_euclid(HOUR_MS)
}

/// `YYYYMMDD` of the UTC day containing `t`, for keys and reports that humans read.
pub fn utc_date_string(t: EpochMillis) -> String {
    let (y, m, d) = civil_from_days(utc_day(t));
    format!("{y:04}{m:02}{d:02}")
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `t` as an RFC 3339 UTC timestamp to the second, such as `2026-12-04T03:07:35Z` (for people
/// reading CLI output and logs).
pub fn format_rfc3339(t: EpochMillis) -> String {
    let (y, mo, d) = civil_from_days(utc_day(t));
    let secs = t.rem_euclid(DAY_MS) / 1000;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Epoch milliseconds of an RFC 3339 timestamp such as `2017-08-05T00:41:02.669Z` or
/// `2022-07-28T21:23:58+02:00` (fractions beyond milliseconds are cut). `None` when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<EpochMillis> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mo = u32::try_from(mo).ok().filter(|m| (1..=12).contains(m))?;
    let d = u32::try_from(d).ok().filter(|d| (1..=31).contains(d))?;
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let ms: String = frac[..digits].chars().chain("00".chars()).take(3).collect();
        millis = ms.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    let seconds = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(seconds * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_timestamps_parse_back_to_the_second() {
        for t in [
            0,
            1_795_910_400_000,
            1_795_910_400_000 + 86_399_999,
            951_782_400_000,
        ] {
            let text = format_rfc3339(t);
            assert_eq!(parse_rfc3339(&text), Some(t - t.rem_euclid(1000)), "{text}");
        }
        assert_eq!(format_rfc3339(1_795_910_400_000), "2026-11-29T00:00:00Z");
    }

    #[test]
    fn rfc3339_timestamps_parse_to_epoch_milliseconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2017-08-05T00:41:02.669Z"),
            Some(1_501_893_662_669)
        );
        assert_eq!(
            parse_rfc3339("2026-11-28T10:00:00.5Z"),
            Some(1_795_860_000_500)
        );
        assert_eq!(
            parse_rfc3339("2026-11-28T12:00:00+02:00"),
            Some(1_795_860_000_000)
        );
        for bad in [
            "",
            "2017-08-05",
            "2017-13-05T00:00:00Z",
            "2017-08-05T00:00:00",
            "2017-08-05T00:00:00.Z",
            "yyyy-08-05T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        for day in [-1000, 0, 19_000, 20_420] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn windows_follow_utc_boundaries() {
        // 2026-11-28T23:59:59.999Z and the next millisecond.
        let last = 1_795_910_399_999;
        assert_eq!(utc_date_string(last), "20261128");
        assert_eq!(utc_date_string(last + 1), "20261129");
        assert_eq!(utc_day(last) + 1, utc_day(last + 1));
        assert_eq!(utc_hour(last) + 1, utc_hour(last + 1));
        assert_eq!(utc_date_string(0), "19700101");
        assert_eq!(utc_date_string(951_782_400_000), "20000229");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(500);
        assert_eq!(c.now_ms(), 1_500);
        c.set(10);
        assert_eq!(c.now_ms(), 10);
    }
}
