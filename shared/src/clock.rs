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

#[cfg(test)]
mod tests {
    use super::*;

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
