//! When a deferred message comes back.
//!
//! Two cases. When something named a time (a provider's `Retry-After`, a limit window's reset,
//! the end of another invocation's lease, a breaker's open period), the message returns then,
//! plus a small spread so that thousands of messages deferred to the same window reset do not
//! all return in the same second. Otherwise the delay grows exponentially with the number of
//! deliveries, with "equal jitter" (half fixed, half random) so retries of a burst of failures
//! spread out while still growing. Both are capped at [`MAX_DEFERRAL`] (11 h 40 min): SQS refuses
//! a visibility ending more than 12 hours after the receive, and the sender may be deciding up to
//! 20 minutes after it. A longer wait (a daily limit used up in the morning) comes back once per
//! `MAX_DEFERRAL` and is deferred again: a one-day wait takes 3 receives before the one that
//! sends, a seven-day wait 15 (`receives_to_wait` below, and docs/RELIABILITY.md).
//!
//! The randomness is derived from the message id and the delivery count, not from a random
//! generator: a retry of the same delivery computes the same delay, and tests are exact.

use std::time::Duration;

use crate::clock::EpochMillis;
use crate::queue::MAX_DEFERRAL;

/// Exponential backoff for deferrals without a known retry time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first delivery (before jitter); doubles with each further delivery.
    pub base: Duration,
    /// Largest delay (at most [`MAX_DEFERRAL`], which the delays are held to whatever this says).
    pub cap: Duration,
    /// Largest spread added to a known retry time.
    pub spread: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(30),
            cap: MAX_DEFERRAL,
            spread: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay after delivery number `receive_count` (1 for the first) of `message_id` when
    /// nothing said when to retry: `min(cap, base · 2^(receive_count-1))`, of which the upper
    /// half is jittered. Never less than one second.
    pub fn delay(&self, message_id: &str, receive_count: u32) -> Duration {
        let exponent = receive_count.saturating_sub(1).min(31);
        let full = self
            .base
            .saturating_mul(1u32 << exponent)
            .min(self.cap.min(MAX_DEFERRAL));
        let half = full / 2;
        let jitter = half.mul_f64(jitter_fraction(message_id, receive_count));
        (half + jitter).max(Duration::from_secs(1))
    }

    /// The delay until `retry_at` (epoch ms) seen at `now`, plus a spread of up to
    /// `min(spread, 10 % of the wait)`, capped at `cap`. At least one second.
    pub fn until(
        &self,
        retry_at: EpochMillis,
        now: EpochMillis,
        message_id: &str,
        receive_count: u32,
    ) -> Duration {
        let wait = Duration::from_millis(u64::try_from(retry_at.saturating_sub(now)).unwrap_or(0));
        let spread = self
            .spread
            .min(wait / 10)
            .mul_f64(jitter_fraction(message_id, receive_count));
        (wait + spread)
            .min(self.cap.min(MAX_DEFERRAL))
            .max(Duration::from_secs(1))
    }
}

/// How many receives a wait of `wait` takes before the receive that can send: each deferral
/// is at most [`MAX_DEFERRAL`]. The template's `OutboundMaxReceiveCount` must exceed this for
/// the longest wait a limit can cause, plus the retries of provider failures.
pub fn receives_to_wait(wait: Duration) -> u32 {
    let per = MAX_DEFERRAL.as_millis();
    u32::try_from(wait.as_millis().div_ceil(per)).unwrap_or(u32::MAX)
}

/// A number in `[0, 1)` derived from `message_id` and `receive_count` (FNV-1a, then a
/// splitmix64 finaliser): stable for one delivery, spread across messages.
pub fn jitter_fraction(message_id: &str, receive_count: u32) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in message_id.bytes().chain(receive_count.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // 53 high bits give a uniformly spaced double in [0, 1).
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_each_delivery_within_their_jitter_band() {
        let b = Backoff::default();
        for n in 1..=8u32 {
            let full = Duration::from_secs(30 * (1 << (n - 1)));
            let d = b.delay("msg-1", n);
            assert!(
                d >= full / 2 && d < full,
                "delivery {n}: {d:?} outside [{:?}, {full:?})",
                full / 2
            );
        }
    }

    #[test]
    fn delays_never_exceed_the_longest_deferral_sqs_accepts() {
        let b = Backoff::default();
        for n in [12, 20, 31, 32, 1000, u32::MAX] {
            assert!(b.delay("m", n) <= MAX_DEFERRAL, "delivery {n}");
        }
        let far = 10 * 24 * 3_600_000;
        assert_eq!(b.until(far, 0, "m", 1), MAX_DEFERRAL);
        // A configured cap above it does not lift the bound.
        let loose = Backoff {
            cap: Duration::from_secs(48 * 3600),
            ..b
        };
        assert_eq!(loose.until(far, 0, "m", 1), MAX_DEFERRAL);
        assert!(loose.delay("m", 40) <= MAX_DEFERRAL);
    }

    #[test]
    fn a_day_takes_three_receives_and_a_week_fifteen() {
        let hour = Duration::from_secs(3600);
        assert_eq!(receives_to_wait(Duration::ZERO), 0);
        assert_eq!(receives_to_wait(MAX_DEFERRAL), 1);
        assert_eq!(receives_to_wait(MAX_DEFERRAL + Duration::from_millis(1)), 2);
        // A daily limit used up at 01:00 UTC waits 23 h: two receives, then the one that sends.
        assert_eq!(receives_to_wait(23 * hour), 2);
        assert_eq!(receives_to_wait(24 * hour), 3);
        assert_eq!(receives_to_wait(7 * 24 * hour), 15);
    }

    #[test]
    fn a_known_retry_time_is_honoured_with_a_bounded_spread() {
        let b = Backoff::default();
        let d = b.until(1_000_000 + 600_000, 1_000_000, "m", 1);
        assert!(
            d >= Duration::from_secs(600) && d <= Duration::from_secs(630),
            "{d:?}"
        );
        // A retry time already past still waits a second.
        assert_eq!(b.until(5, 10, "m", 1), Duration::from_secs(1));
    }

    #[test]
    fn jitter_is_stable_per_delivery_and_spread_across_messages() {
        assert_eq!(jitter_fraction("a", 1), jitter_fraction("a", 1));
        let values: Vec<f64> = (0..1000)
            .map(|i| jitter_fraction(&format!("m-{i}"), 1))
            .collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let low = values.iter().filter(|v| **v < 0.5).count();
        assert!((400..=600).contains(&low), "{low} of 1000 below 0.5");
    }
}
