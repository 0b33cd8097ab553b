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
//! | `write_id` | N | random per checker run: which run wrote the record (see [`HealthChecker`]'s "Overlapping runs") |
//!
//! A record older than [`STALE_AFTER_INTERVALS`] probe intervals (of at least a minute, the
//! schedule's period), or dated ahead of this clock by more than an interval, is stale: the checker has
//! stopped, so the verdict no longer says anything and the router treats the gateway's health as
//! unknown (routed to) rather than trusting an old `UNHEALTHY` or `HEALTHY`.
//!
//! # Thresholds
//! [`step`] is the pure decision: the stored record, one probe's result, the gateway's
//! `health_check` settings and `now` in, the next record out. Consecutive counts make one blip
//! harmless: a single failed probe of a healthy gateway only makes it `DEGRADED` (still routed
//! to), and an unhealthy gateway needs `success_threshold` good probes in a row before it is
//! `HEALTHY` again. The checker ([`HealthChecker`]) does the I/O around it.

use crate::clock::EpochMillis;
use crate::config::HealthCheckSettings;
use crate::events::HealthStatus;
use crate::providers::{ProbeReport, SendError};
use crate::router::Health;
use crate::state::{Item, Key, Value};

/// A verdict older than this many probe intervals is ignored.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// How often the scheduled health check runs (EventBridge `rate(1 minute)`): staleness is
/// counted in intervals of at least this, so a 30 s interval is not stale between runs.
pub const MIN_CHECK_PERIOD_MS: EpochMillis = 60_000;

const STATUS: &str = "status";
const FAILURES: &str = "failures";
const SUCCESSES: &str = "successes";
const CHECKED_AT: &str = "checked_at";
const LATENCY_MS: &str = "latency_ms";
const ERROR: &str = "error";
/// Written by the checker beside the record ([`HealthRecord::to_item`] leaves it out).
const WRITE_ID: &str = "write_id";

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

impl HealthRecord {
    /// Reads a stored record; `None` when the item is missing or not a health record (an
    /// unknown status, no `checked_at`). One pass over the attributes: the send pipeline reads
    /// the record of every gateway a batch may use.
    pub fn from_item(item: Option<&Item>) -> Option<Self> {
        let (mut status, mut failures, mut successes) = (None, None, None);
        let (mut latency, mut error, mut checked_at) = (None, None, None);
        for (attr, value) in item? {
            match attr.as_str() {
                STATUS => status = value.as_s(),
                FAILURES => failures = value.as_n(),
                SUCCESSES => successes = value.as_n(),
                LATENCY_MS => latency = value.as_n(),
                ERROR => error = value.as_s(),
                CHECKED_AT => checked_at = value.as_n(),
                _ => {}
            }
        }
        let count = |n: Option<i64>| n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        Some(Self {
            status: parse_status(status?)?,
            consecutive_failures: count(failures),
            consecutive_successes: count(successes),
            latency_ms: latency.and_then(|n| u64::try_from(n).ok()),
            error: error.map(str::to_owned),
            checked_at: checked_at?,
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
        // The deployed checker runs once a minute: an interval below that is probed every minute.
        let interval = i64::try_from(settings.interval.as_millis())
            .unwrap_or(i64::MAX)
            .max(MIN_CHECK_PERIOD_MS);
        let limit = interval.saturating_mul(i64::from(STALE_AFTER_INTERVALS));
        let age = now.saturating_sub(self.checked_at);
        // A time ahead of ours (another host's clock) must not freeze the verdict.
        age > limit || age < -interval
    }
}

/// Longest stored error text, in characters: enough for the class, provider and a status line.
pub const MAX_ERROR_CHARS: usize = 200;

/// What one probe found, reduced to what the thresholds and the record need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// The provider answered and accepted the credentials.
    Ok {
        /// How long the probe took, in milliseconds.
        latency_ms: u64,
    },
    /// The probe failed, timed out or could not run.
    Failed {
        /// Short and secret-free ([`ProbeResult::failed`] truncates to [`MAX_ERROR_CHARS`]).
        error: String,
        /// How long it took until it failed, when an answer came back.
        latency_ms: Option<u64>,
    },
}

impl ProbeResult {
    /// A failure described by `error`, cut to [`MAX_ERROR_CHARS`] characters. Callers pass
    /// secret-free text only (a [`SendError`]'s `Display`, a fixed sentence).
    pub fn failed(error: impl std::fmt::Display, latency_ms: Option<u64>) -> Self {
        Self::Failed {
            error: truncate(&error.to_string(), MAX_ERROR_CHARS),
            latency_ms,
        }
    }

    /// The result of [`crate::providers::Provider::probe`]. A [`SendError`]'s `Display` is
    /// secret-free by contract (class, provider and the provider's truncated message).
    pub fn of(result: &Result<ProbeReport, SendError>) -> Self {
        match result {
            Ok(report) => Self::Ok {
                latency_ms: millis(report.latency),
            },
            Err(e) => Self::failed(e, None),
        }
    }

    /// Whether the probe succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok { .. })
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn truncate(text: &str, max: usize) -> String {
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        out.pop();
        out.push('…');
    }
    out
}

/// The record after one probe, thresholds applied. Pure: the same inputs give the same record.
///
/// `prev` is the stored record, if any; a **stale** one ([`HealthRecord::is_stale`]: the checker
/// was away for more than [`STALE_AFTER_INTERVALS`] intervals) and a `DISABLED` one count as
/// none, because their consecutive counts describe probes too old to continue.
///
/// Counts: a success sets `consecutive_successes` to the previous run of successes + 1 and
/// `consecutive_failures` to 0; a failure the other way round. Status:
///
/// | previous | probe | next |
/// |---|---|---|
/// | none (or stale, or `DISABLED`) | ok | `HEALTHY` |
/// | none (or stale, or `DISABLED`) | failure | `DEGRADED`, or `UNHEALTHY` when `failure_threshold` is 1 |
/// | `HEALTHY` / `DEGRADED` | failure | `DEGRADED` until `failure_threshold` consecutive failures, then `UNHEALTHY` |
/// | `DEGRADED` | ok | `HEALTHY` (degraded means "failing, below the threshold": it was never unhealthy since) |
/// | `HEALTHY` | ok | `HEALTHY` |
/// | `UNHEALTHY` | failure | `UNHEALTHY` |
/// | `UNHEALTHY` | ok | `UNHEALTHY` until `success_threshold` consecutive successes, then `HEALTHY` |
///
/// When `settings.enabled` is off the result is [`disabled`] whatever the probe said; a
/// disabled *gateway* is never probed and gets [`disabled`] from the checker.
pub fn step(
    prev: Option<&HealthRecord>,
    probe: &ProbeResult,
    settings: &HealthCheckSettings,
    now: EpochMillis,
) -> HealthRecord {
    if !settings.enabled {
        return disabled(now);
    }
    let prev = prev.filter(|p| p.status != HealthStatus::Disabled && !p.is_stale(settings, now));
    let failure_threshold = settings.failure_threshold.get();
    let success_threshold = settings.success_threshold.get();
    match probe {
        ProbeResult::Ok { latency_ms } => {
            let successes = prev
                .map_or(0, |p| p.consecutive_successes)
                .saturating_add(1);
            let status = match prev.map(|p| p.status) {
                Some(HealthStatus::Unhealthy) if successes < success_threshold => {
                    HealthStatus::Unhealthy
                }
                _ => HealthStatus::Healthy,
            };
            HealthRecord {
                status,
                consecutive_failures: 0,
                consecutive_successes: successes,
                latency_ms: Some(*latency_ms),
                error: None,
                checked_at: now,
            }
        }
        ProbeResult::Failed { error, latency_ms } => {
            let failures = prev.map_or(0, |p| p.consecutive_failures).saturating_add(1);
            let status = match prev.map(|p| p.status) {
                Some(HealthStatus::Unhealthy) => HealthStatus::Unhealthy,
                _ if failures >= failure_threshold => HealthStatus::Unhealthy,
                _ => HealthStatus::Degraded,
            };
            HealthRecord {
                status,
                consecutive_failures: failures,
                consecutive_successes: 0,
                latency_ms: *latency_ms,
                error: Some(error.clone()),
                checked_at: now,
            }
        }
    }
}

/// The record of a gateway that is not probed: the gateway or its health check is disabled.
/// Counts start again from zero when it is probed next.
pub fn disabled(now: EpochMillis) -> HealthRecord {
    HealthRecord {
        status: HealthStatus::Disabled,
        consecutive_failures: 0,
        consecutive_successes: 0,
        latency_ms: None,
        error: None,
        checked_at: now,
    }
}

/// Whether a gateway with record `prev` is due for a probe at `now`: no record yet, or
/// `health_check.interval` has (nearly) elapsed since `checked_at`. "Nearly" is a tenth of the
/// interval: a schedule that fires every interval is a little early now and then (EventBridge
/// starts an invocation up to seconds off the minute, and `checked_at` is taken at the start of
/// the previous run), and skipping that run would halve the probe rate. A `checked_at` in the
/// future (another instance's clock ahead) is not due.
pub fn is_due(
    prev: Option<&HealthRecord>,
    settings: &HealthCheckSettings,
    now: EpochMillis,
) -> bool {
    let Some(prev) = prev else {
        return true;
    };
    let interval = i64::try_from(settings.interval.as_millis()).unwrap_or(i64::MAX);
    let slack = interval / 10;
    let age = now.saturating_sub(prev.checked_at);
    // A record dated in the future (a host whose clock runs ahead) is due, not frozen.
    age >= interval.saturating_sub(slack) || age < -interval
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

mod service;

#[cfg(test)]
mod tests;

pub use service::{
    CheckError, CheckSummary, DEFAULT_CHANGED_BY, GatewayCheck, HealthChecker, PROBE_CONCURRENCY,
    SesQuotaWarning, ses_quota_warnings,
};
