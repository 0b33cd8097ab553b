//! Per-gateway activity read back from the record of delivery, for the status API's metrics and
//! the status page: what each gateway did in a time window and hour by hour.
//!
//! Every figure comes from the raw rows (`send_attempts`, `delivery_events`,
//! `breaker_transitions`), so a window can be any range (the rolling last hour, the UTC day so
//! far) and both adapters compute the same thing:
//!
//! | figure | counted from |
//! |---|---|
//! | `attempts` | provider calls started in the window |
//! | `sent` / `failed` / `deferred` | calls accepted / refused permanently / failed transiently (throttled, unavailable, auth, ambiguous) |
//! | `rate_limit_hits` | calls answered as throttled |
//! | `failovers` | transient failures after which the same message was tried on another gateway |
//! | `bounced` | hard and soft bounce events in the window, for messages this gateway sent |
//! | `breaker_trips` | breaker transitions to open |
//! | `latencies` | call latencies, as (milliseconds, calls) pairs, for exact percentiles |

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;

use super::{MessageRecord, MessageStatus, RecordError};
use crate::breaker::Phase;
use crate::clock::EpochMillis;
use crate::events::{BreakerEvent, DeliveryKind, OutcomeClass};

/// One hour, in milliseconds.
pub const HOUR_MS: EpochMillis = 3_600_000;

/// What one gateway did in a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GatewayActivity {
    /// Provider calls.
    pub attempts: u64,
    /// Calls accepted.
    pub sent: u64,
    /// Calls refused permanently.
    pub failed: u64,
    /// Calls that failed transiently.
    pub deferred: u64,
    /// Hard and soft bounces of messages it sent.
    pub bounced: u64,
    /// Calls answered as throttled.
    pub rate_limit_hits: u64,
    /// Transient failures followed by an attempt on another gateway.
    pub failovers: u64,
    /// Transitions of its breaker to open.
    pub breaker_trips: u64,
    /// Call latency histogram: milliseconds → calls.
    #[serde(skip)]
    pub latencies: BTreeMap<u64, u64>,
}

impl GatewayActivity {
    /// `sent / attempts`, `None` without attempts.
    pub fn success_rate(&self) -> Option<f64> {
        (self.attempts > 0).then(|| self.sent as f64 / self.attempts as f64)
    }

    /// The latency (ms) at or below which `p` (0 < p ≤ 1) of the calls fall: the nearest-rank
    /// percentile of the histogram, `None` without calls.
    pub fn latency_percentile(&self, p: f64) -> Option<u64> {
        let total: u64 = self.latencies.values().sum();
        if total == 0 {
            return None;
        }
        // Nearest rank: the smallest value with at least ceil(p * n) calls at or below it.
        let rank = ((p.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (&ms, &n) in &self.latencies {
            seen += n;
            if seen >= rank {
                return Some(ms);
            }
        }
        self.latencies.keys().next_back().copied()
    }
}

/// Sent and failed calls of one gateway in one UTC hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HourActivity {
    /// Start of the hour (epoch ms).
    pub hour: EpochMillis,
    /// Calls accepted.
    pub sent: u64,
    /// Calls not accepted (permanent or transient).
    pub failed: u64,
}

/// Reads activity from the record of delivery.
#[async_trait]
pub trait ActivityReader: Send + Sync + std::fmt::Debug {
    /// Each gateway's activity in `[from, to)`, by gateway id (gateways without any are absent).
    async fn activity(
        &self,
        from: EpochMillis,
        to: EpochMillis,
    ) -> Result<BTreeMap<String, GatewayActivity>, RecordError>;

    /// Each gateway's sent and failed calls per UTC hour, for the hours starting at or after
    /// `from` (rounded down to its hour), oldest first; hours without calls are absent.
    async fn hourly(
        &self,
        from: EpochMillis,
    ) -> Result<BTreeMap<String, Vec<HourActivity>>, RecordError>;

    /// Up to `limit` messages that ended `failed` or `rejected`, the latest failure (its
    /// `status_at`, else `updated_at`) first.
    async fn recent_failures(&self, limit: usize) -> Result<Vec<MessageRecord>, RecordError>;
}

/// Whether a class is a transient, provider-level failure.
pub fn is_transient(class: OutcomeClass) -> bool {
    !matches!(class, OutcomeClass::Ok | OutcomeClass::Permanent)
}

/// Computes [`ActivityReader::activity`] over records held in memory.
pub fn activity_of<'a>(
    records: impl Iterator<Item = &'a MessageRecord>,
    breaker: &[BreakerEvent],
    from: EpochMillis,
    to: EpochMillis,
) -> BTreeMap<String, GatewayActivity> {
    let within = |at: EpochMillis| at >= from && at < to;
    let mut out: BTreeMap<String, GatewayActivity> = BTreeMap::new();
    for record in records {
        for (i, a) in record.attempts.iter().enumerate() {
            if !within(a.at) {
                continue;
            }
            let g = out.entry(a.gateway.clone()).or_default();
            g.attempts += 1;
            *g.latencies.entry(a.latency_ms).or_default() += 1;
            match a.class {
                OutcomeClass::Ok => g.sent += 1,
                OutcomeClass::Permanent => g.failed += 1,
                class => {
                    g.deferred += 1;
                    if class == OutcomeClass::Throttled {
                        g.rate_limit_hits += 1;
                    }
                    let moved_on = record
                        .attempts
                        .iter()
                        .enumerate()
                        .any(|(j, b)| j != i && b.gateway != a.gateway && b.at > a.at);
                    if moved_on {
                        g.failovers += 1;
                    }
                }
            }
        }
        if let Some(gateway) = &record.gateway_id {
            let bounces = record
                .events
                .iter()
                .filter(|e| {
                    matches!(e.kind, DeliveryKind::HardBounce | DeliveryKind::SoftBounce)
                        && within(e.at)
                })
                .count() as u64;
            if bounces > 0 {
                out.entry(gateway.clone()).or_default().bounced += bounces;
            }
        }
    }
    for e in breaker {
        if e.to == Phase::Open && within(e.at) {
            out.entry(e.gateway_id.clone()).or_default().breaker_trips += 1;
        }
    }
    out
}

/// Computes [`ActivityReader::hourly`] over records held in memory.
pub fn hourly_of<'a>(
    records: impl Iterator<Item = &'a MessageRecord>,
    from: EpochMillis,
) -> BTreeMap<String, Vec<HourActivity>> {
    let first = from.div_euclid(HOUR_MS) * HOUR_MS;
    let mut hours: BTreeMap<String, BTreeMap<EpochMillis, HourActivity>> = BTreeMap::new();
    for record in records {
        for a in record.attempts.iter().filter(|a| a.at >= first) {
            let hour = a.at.div_euclid(HOUR_MS) * HOUR_MS;
            let h = hours
                .entry(a.gateway.clone())
                .or_default()
                .entry(hour)
                .or_insert(HourActivity {
                    hour,
                    ..HourActivity::default()
                });
            if a.class == OutcomeClass::Ok {
                h.sent += 1;
            } else {
                h.failed += 1;
            }
        }
    }
    hours
        .into_iter()
        .map(|(g, h)| (g, h.into_values().collect()))
        .collect()
}

/// Whether a message counts as a failure for [`ActivityReader::recent_failures`].
pub fn is_failure(record: &MessageRecord) -> bool {
    matches!(
        record.status,
        MessageStatus::Failed | MessageStatus::Rejected
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: &[u64]) -> GatewayActivity {
        let mut g = GatewayActivity::default();
        for &v in values {
            *g.latencies.entry(v).or_default() += 1;
            g.attempts += 1;
        }
        g
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let g = histogram(&[10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
        assert_eq!(g.latency_percentile(0.5), Some(50));
        assert_eq!(g.latency_percentile(0.95), Some(100));
        assert_eq!(g.latency_percentile(0.1), Some(10));
        let one = histogram(&[7]);
        assert_eq!(one.latency_percentile(0.5), Some(7));
        assert_eq!(one.latency_percentile(0.95), Some(7));
        assert_eq!(GatewayActivity::default().latency_percentile(0.5), None);
        let skewed = histogram(&[5, 5, 5, 5, 5, 5, 5, 5, 5, 900]);
        assert_eq!(skewed.latency_percentile(0.5), Some(5));
        assert_eq!(skewed.latency_percentile(0.95), Some(900));
    }

    #[test]
    fn success_rate_needs_attempts() {
        assert_eq!(GatewayActivity::default().success_rate(), None);
        let g = GatewayActivity {
            attempts: 4,
            sent: 3,
            ..GatewayActivity::default()
        };
        assert_eq!(g.success_rate(), Some(0.75));
    }
}
