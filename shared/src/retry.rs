//! Capped exponential backoff with full jitter, for the adapters that retry their own requests
//! (the DynamoDB store, the SSM parameter reader) because the AWS SDK's retries are off or not
//! in play.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How throttled and transient requests are retried: attempt `i` (from 0) waits a uniformly
/// random time in `[0, min(max_delay, base_delay · 2^i)]` (full jitter, so a fleet that was
/// throttled together does not retry together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests sent in total before giving up (at least 1).
    pub max_attempts: u32,
    /// Backoff ceiling of the first retry.
    pub base_delay: Duration,
    /// Largest backoff ceiling of any retry.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 25 ms doubling to at most 1 s: about 2 s worst case, well inside an
    /// invocation, after which the message is deferred rather than the invocation stalled.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(25),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// How long to wait before retry `retry` (0 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(2_u32.saturating_pow(retry.min(20)))
            .min(self.max_delay);
        let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(random_below(ceiling_us.saturating_add(1)))
    }
}

/// A random number in `0..bound` (`bound` > 0) for backoff jitter; not for anything that
/// needs unpredictability.
pub(crate) fn random_below(bound: u64) -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    h.finish() % bound.max(1)
}
