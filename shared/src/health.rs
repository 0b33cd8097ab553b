//! Gateway health as the health checker leaves it in shared state, and how the router and the
//! status API read it.
//!
//! One item per gateway, key `hc#{gateway_id}` (no TTL: one small item per gateway):
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `status` | S | `HEALTHY`, `DEGRADED`, `UNHEALTHY` or `DISABLED` (as in `gateway_health_status`) |
//! | `failures` | N | consecutive failed probes, the latest included |
//! | `successes` | N | consecutive good probes, the latest included |
//! | `checked_at` | N | when the latest probe ran, epoch ms |
//! | `latency_ms` | N | the latest probe's latency, when it got an answer |
//! | `error` | S | the latest failure, short and secret-free |
//!
//! A record older than [`STALE_AFTER_INTERVALS`] probe intervals is stale: the checker has
//! stopped, so the verdict no longer says anything and the router treats the gateway's health as
//! unknown (routed to) rather than trusting an old `UNHEALTHY` or `HEALTHY`.

use crate::clock::EpochMillis;
use crate::config::HealthCheckSettings;
use crate::events::HealthStatus;
use crate::router::Health;
use crate::state::{Item, Key, Value, get_n, get_s};

/// A verdict older than this many probe intervals is ignored.
pub const STALE_AFTER_INTERVALS: u32 = 3;

const STATUS: &str = "status";
const FAILURES: &str = "failures";
const SUCCESSES: &str = "successes";
const CHECKED_AT: &str = "checked_at";
const LATENCY_MS: &str = "latency_ms";
const ERROR: &str = "error";

/// The state key of a gateway's health record.
pub fn key(gateway_id: &str) -> Key {
    format!("hc#{gateway_id}")
}

/// The health checker's latest verdict on one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRecord {
    /// Verdict after the latest probe, thresholds applied.
    pub status: HealthStatus,
    /// Consecutive failed probes, the latest included.
    pub consecutive_failures: u32,
    /// Consecutive good probes, the latest included.
    pub consecutive_successes: u32,
    /// Latency of the latest probe, when it got an answer.
    pub latency_ms: Option<u64>,
    /// The latest failure, short and secret-free.
    pub error: Option<String>,
    /// When the latest probe ran (epoch ms).
    pub checked_at: EpochMillis,
}

/// `HEALTHY` … `DISABLED`, as stored and as the status API shows it.
pub fn status_name(status: HealthStatus) -> &'static str {
    match status {
        HealthStatus::Healthy => "HEALTHY",
        HealthStatus::Degraded => "DEGRADED",
        HealthStatus::Unhealthy => "UNHEALTHY",
        HealthStatus::Disabled => "DISABLED",
    }
}

fn parse_status(s: &str) -> Option<HealthStatus> {
    Some(match s {
        "HEALTHY" => HealthStatus::Healthy,
        "DEGRADED" => HealthStatus::Degraded,
        "UNHEALTHY" => HealthStatus::Unhealthy,
        "DISABLED" => HealthStatus::Disabled,
        _ => return None,
    })
}

fn count(item: &Item, attr: &str) -> u32 {
    get_n(item, attr)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

impl HealthRecord {
    /// Reads a stored record; `None` when the item is missing or not a health record (an
    /// unknown status, no `checked_at`).
    pub fn from_item(item: Option<&Item>) -> Option<Self> {
        let item = item?;
        Some(Self {
            status: parse_status(get_s(item, STATUS)?)?,
            consecutive_failures: count(item, FAILURES),
            consecutive_successes: count(item, SUCCESSES),
            latency_ms: get_n(item, LATENCY_MS).and_then(|n| u64::try_from(n).ok()),
            error: get_s(item, ERROR).map(str::to_owned),
            checked_at: get_n(item, CHECKED_AT)?,
        })
    }

    /// The item to store.
    pub fn to_item(&self) -> Item {
        let mut item = Item::new();
        item.insert(STATUS.into(), status_name(self.status).into());
        item.insert(
            FAILURES.into(),
            Value::N(i64::from(self.consecutive_failures)),
        );
        item.insert(
            SUCCESSES.into(),
            Value::N(i64::from(self.consecutive_successes)),
        );
        item.insert(CHECKED_AT.into(), Value::N(self.checked_at));
        if let Some(ms) = self.latency_ms {
            item.insert(
                LATENCY_MS.into(),
                Value::N(i64::try_from(ms).unwrap_or(i64::MAX)),
            );
        }
        if let Some(error) = &self.error {
            item.insert(ERROR.into(), error.clone().into());
        }
        item
    }

    /// Whether the verdict is too old to mean anything (see the module docs).
    pub fn is_stale(&self, settings: &HealthCheckSettings, now: EpochMillis) -> bool {
        let interval = i64::try_from(settings.interval.as_millis()).unwrap_or(i64::MAX);
        let limit = interval.saturating_mul(i64::from(STALE_AFTER_INTERVALS));
        now.saturating_sub(self.checked_at) > limit
    }
}

/// The router's view of a gateway's health: `Unknown` without a record, with a stale one, or
/// when the gateway's health check is off (nothing probes it).
pub fn routing_health(
    record: Option<&HealthRecord>,
    settings: &HealthCheckSettings,
    now: EpochMillis,
) -> Health {
    match record {
        _ if !settings.enabled => Health::Unknown,
        None => Health::Unknown,
        Some(r) if r.is_stale(settings, now) => Health::Unknown,
        Some(r) => match r.status {
            HealthStatus::Healthy => Health::Healthy,
            HealthStatus::Degraded => Health::Degraded,
            HealthStatus::Unhealthy => Health::Unhealthy,
            HealthStatus::Disabled => Health::Unknown,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;

    fn settings() -> HealthCheckSettings {
        HealthCheckSettings {
            enabled: true,
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            failure_threshold: NonZeroU32::new(3).unwrap(),
            success_threshold: NonZeroU32::new(2).unwrap(),
        }
    }

    fn record(status: HealthStatus, checked_at: EpochMillis) -> HealthRecord {
        HealthRecord {
            status,
            consecutive_failures: 3,
            consecutive_successes: 0,
            latency_ms: Some(120),
            error: Some("503 Service Unavailable".into()),
            checked_at,
        }
    }

    #[test]
    fn a_record_round_trips_through_its_item() {
        let r = record(HealthStatus::Unhealthy, 1_000);
        assert_eq!(HealthRecord::from_item(Some(&r.to_item())), Some(r));
        let bare = HealthRecord {
            latency_ms: None,
            error: None,
            ..record(HealthStatus::Healthy, 5)
        };
        assert_eq!(HealthRecord::from_item(Some(&bare.to_item())), Some(bare));
    }

    #[test]
    fn items_that_are_not_health_records_read_as_none() {
        assert_eq!(HealthRecord::from_item(None), None);
        let mut item = record(HealthStatus::Healthy, 1).to_item();
        item.insert(STATUS.into(), "FINE".into());
        assert_eq!(HealthRecord::from_item(Some(&item)), None);
        let mut item = record(HealthStatus::Healthy, 1).to_item();
        item.remove(CHECKED_AT);
        assert_eq!(HealthRecord::from_item(Some(&item)), None);
    }

    #[test]
    fn the_router_ignores_stale_verdicts_and_unchecked_gateways() {
        let s = settings();
        let now = 10_000_000;
        let fresh = record(HealthStatus::Unhealthy, now - 60_000);
        assert_eq!(routing_health(Some(&fresh), &s, now), Health::Unhealthy);
        let edge = record(HealthStatus::Unhealthy, now - 180_000);
        assert_eq!(routing_health(Some(&edge), &s, now), Health::Unhealthy);
        let stale = record(HealthStatus::Unhealthy, now - 180_001);
        assert_eq!(routing_health(Some(&stale), &s, now), Health::Unknown);
        assert_eq!(routing_health(None, &s, now), Health::Unknown);
        let off = HealthCheckSettings {
            enabled: false,
            ..settings()
        };
        assert_eq!(routing_health(Some(&fresh), &off, now), Health::Unknown);
        let degraded = record(HealthStatus::Degraded, now);
        assert_eq!(routing_health(Some(&degraded), &s, now), Health::Degraded);
    }
}
