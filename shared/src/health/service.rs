//! The health checker (ARCHITECTURE §1): probes every due gateway, applies the thresholds
//! ([`crate::health::step`]), writes each gateway's record to shared state (`hc#{gateway}`, read
//! by the router in the sender's state read) and reports to the events queue.
//!
//! One run ([`HealthChecker::run`]):
//! 1. reads every gateway's record in one `BatchGetItem` (chunks of [`MAX_BATCH_GET`]);
//! 2. probes the due gateways ([`health::is_due`]) concurrently, at most [`PROBE_CONCURRENCY`] at
//!    a time, each bounded by its `health_check.timeout`; a disabled gateway, or one whose
//!    health check is off, is not probed and gets a `DISABLED` record once;
//! 3. writes each new record with a condition that the stored one is unchanged (below);
//! 4. emits one [`GatewayEvent::Health`] per record written and one [`GatewayEvent::Config`]
//!    describing the effective config, in one [`EventSink::emit`];
//! 5. returns a [`CheckSummary`] (counts, per-gateway status, SES quota warnings).
//!
//! # Overlapping runs: conditional writes, not last-writer-wins
//! A record's consecutive counts are only meaningful if every record is derived from the one it
//! replaces. Two overlapping runs (a slow run and the next schedule, or `gateway serve` beside
//! the Lambda function) read the same record; with blind puts the later writer could replace a
//! record a third run had already derived from the first one, moving `checked_at` backwards and
//! losing or repeating a step. So each write is a `PutItem` conditioned on `checked_at` being what
//! this run read (on the item not existing when there was none). The loser's probe is dropped,
//! reported as `superseded`, and emits no event: the winner's verdict and event stand, and each
//! stored record is exactly one [`health::step`] from its predecessor. The price is one write
//! request per probed gateway instead of one batch, i.e. a handful of requests a minute.
//!
//! The store retries a write whose answer was lost, and the retry of a write that was applied
//! fails its condition on the write's own record. So every record of a run also carries the
//! run's random `write_id`, and a failed condition whose item is exactly the one written counts
//! as applied (its event is emitted; it is not `superseded`). Without the token, an overlapping
//! run that derived the identical record at the same millisecond (same probe result, same
//! clock) would be taken for our own write.
//!
//! # Config audit without MySQL
//! The checker does not compare configs itself. The [`ConfigEvent`] it emits each run goes to the
//! recorder, which already compares it with the latest `gateway_config_audit` rows under a row
//! lock and writes one row per difference (`CREATED`, `UPDATED`, `DELETED`, `ENABLED`,
//! `DISABLED`; entries redacted), ignoring it when nothing changed. So the health-check function
//! needs no database credentials, no VPC and no connection pool, and audits are serialised in one
//! place however many processes report the config.
//!
//! # SES quota
//! An SES probe is `GetAccount`, whose answer carries the account's `SendQuota`. When a
//! gateway's configured `rate_limits.workspace_daily` exceeds `Max24HourSend`, or its token
//! bucket's refill rate (`burst_refill_per_second`, the sustained rate the bucket admits) exceeds
//! `MaxSendRate`, the run logs a warning and lists it in the summary ([`SesQuotaWarning`]): our
//! limiter would admit messages that SES then throttles. A negative SES value means unlimited.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{self as health, HealthRecord, ProbeResult};
use crate::clock::{Clock, EpochMillis};
use crate::config::{Config, Gateway, GatewayKind};
use crate::config_audit::ConfigEvent;
use crate::emf::emf_line;
use crate::events::{EventSink, GatewayEvent, HealthEvent, HealthStatus};
use crate::providers::Providers;
use crate::providers::{Provider, SendQuota};
use crate::state::{
    CmpOp, Condition, Item, MAX_BATCH_GET, StateStore, StoreError, Value as StateValue, Write,
    WriteOp, WriteOutcome, get_n,
};

/// At most this many probes (and record writes) are in flight at once.
pub const PROBE_CONCURRENCY: usize = 8;

/// `changed_by` of the config events when the caller names nothing else.
pub const DEFAULT_CHANGED_BY: &str = "health-check";

/// A run that could not check anything.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The stored records could not be read: nothing was probed or written.
    #[error("health records could not be read: {0}")]
    State(#[source] StoreError),
}

impl CheckError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::State(e) => e.is_retryable(),
        }
    }
}

/// A configured limit of an SES gateway above what the SES account allows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SesQuotaWarning {
    /// The gateway.
    pub gateway_id: String,
    /// The configured setting (`rate_limits.workspace_daily` or
    /// `rate_limits.burst_refill_per_second`).
    pub setting: &'static str,
    /// Its value.
    pub configured: f64,
    /// The SES quota it exceeds (`Max24HourSend` or `MaxSendRate`).
    pub quota: &'static str,
    /// The account's value of that quota.
    pub account_limit: f64,
}

impl std::fmt::Display for SesQuotaWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} {} exceeds the SES account's {} {}",
            self.gateway_id, self.setting, self.configured, self.quota, self.account_limit
        )
    }
}

/// The quota warnings for one SES gateway (see the module docs); empty for other types.
pub fn ses_quota_warnings(gateway: &Gateway, quota: &SendQuota) -> Vec<SesQuotaWarning> {
    let mut warnings = Vec::new();
    if gateway.kind != GatewayKind::AmazonSes {
        return warnings;
    }
    let limits = &gateway.rate_limits;
    #[allow(
        clippy::cast_precision_loss,
        reason = "daily limits are far below 2^52"
    )]
    let daily = limits.workspace_daily.map(|d| d as f64);
    if let Some(daily) = daily
        && quota.max_24_hour_send >= 0.0
        && daily > quota.max_24_hour_send
    {
        warnings.push(SesQuotaWarning {
            gateway_id: gateway.id.clone(),
            setting: "rate_limits.workspace_daily",
            configured: daily,
            quota: "Max24HourSend",
            account_limit: quota.max_24_hour_send,
        });
    }
    if limits.burst_limit.is_some()
        && quota.max_send_rate >= 0.0
        && limits.burst_refill_per_second > quota.max_send_rate
    {
        warnings.push(SesQuotaWarning {
            gateway_id: gateway.id.clone(),
            setting: "rate_limits.burst_refill_per_second",
            configured: limits.burst_refill_per_second,
            quota: "MaxSendRate",
            account_limit: quota.max_send_rate,
        });
    }
    warnings
}

/// What happened to one gateway in a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayCheck {
    /// The gateway.
    pub gateway_id: String,
    /// `probed`, `skipped` (not due), `disabled` (a `DISABLED` record written), `superseded`
    /// (another run wrote first), `write_failed`.
    pub outcome: &'static str,
    /// The status now stored, as far as this run knows (`HEALTHY` … `DISABLED`).
    pub status: Option<HealthStatus>,
    /// The latest probe's latency, when it got an answer.
    pub latency_ms: Option<u64>,
    /// The latest failure, short and secret-free.
    pub error: Option<String>,
}

/// The result of one run, returned by the function as its JSON answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CheckSummary {
    /// When the run started (epoch ms); every record it wrote has this `checked_at`.
    pub at: EpochMillis,
    /// Gateways probed (their records written or not).
    pub probed: u32,
    /// Gateways not due yet.
    pub skipped: u32,
    /// Gateways whose stored status is `HEALTHY` after the run.
    pub healthy: u32,
    /// … `DEGRADED`.
    pub degraded: u32,
    /// … `UNHEALTHY`.
    pub unhealthy: u32,
    /// … `DISABLED`.
    pub disabled: u32,
    /// Probes dropped because an overlapping run wrote the record first.
    pub superseded: u32,
    /// Records that could not be written (state store errors; the next run probes again).
    pub write_failures: u32,
    /// Whether the health and config events reached the events sink.
    pub events_emitted: bool,
    /// SES gateways configured above their account's quota.
    pub ses_warnings: Vec<SesQuotaWarning>,
    /// Per gateway, in config order.
    pub gateways: Vec<GatewayCheck>,
}

impl CheckSummary {
    /// The summary as JSON (the function's answer).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The run's Embedded Metric Format lines in `namespace`: one with `HealthChecks` = 1 (no
    /// dimension; the "no health check" alarm watches it), one per gateway with a verdict
    /// (dimension `Gateway`) with `GatewayHealthy` = 1 while it is routed to (`HEALTHY` or
    /// `DEGRADED`: one failed probe below the threshold is not an outage) and 0 when
    /// `UNHEALTHY`. Disabled gateways get no line.
    pub fn emf_lines(&self, namespace: &str) -> Vec<String> {
        let mut lines = Vec::with_capacity(1 + self.gateways.len());
        let mut values = Map::new();
        values.insert("HealthChecks".into(), json!(1));
        values.insert("SesQuotaWarnings".into(), json!(self.ses_warnings.len()));
        lines.push(emf_line(
            namespace,
            self.at,
            &[],
            &[("HealthChecks", "Count"), ("SesQuotaWarnings", "Count")],
            values,
        ));
        for g in &self.gateways {
            let healthy = match g.status {
                Some(HealthStatus::Healthy | HealthStatus::Degraded) => 1,
                Some(HealthStatus::Unhealthy) => 0,
                Some(HealthStatus::Disabled) | None => continue,
            };
            let mut values = Map::new();
            values.insert("Gateway".into(), json!(g.gateway_id));
            values.insert("GatewayHealthy".into(), json!(healthy));
            lines.push(emf_line(
                namespace,
                self.at,
                &["Gateway"],
                &[("GatewayHealthy", "Count")],
                values,
            ));
        }
        lines
    }

    fn count(&mut self, status: Option<HealthStatus>) {
        match status {
            Some(HealthStatus::Healthy) => self.healthy += 1,
            Some(HealthStatus::Degraded) => self.degraded += 1,
            Some(HealthStatus::Unhealthy) => self.unhealthy += 1,
            Some(HealthStatus::Disabled) => self.disabled += 1,
            None => {}
        }
    }
}

/// Probes gateways and records their health (see the module docs). Cheap to share.
#[derive(Debug, Clone)]
pub struct HealthChecker {
    config: Arc<Config>,
    providers: Providers,
    store: Arc<dyn StateStore>,
    events: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
    changed_by: String,
}

/// What a run decided for one gateway before writing.
enum Plan {
    /// Not due: the stored record stands.
    Skip,
    /// Probe it.
    Probe,
    /// Write a `DISABLED` record (not probed).
    Disable,
    /// Disabled and already recorded so: nothing to do.
    AlreadyDisabled,
}

/// A record to write, with the condition that the stored one is what this run read.
struct Pending {
    index: usize,
    record: HealthRecord,
    condition: Condition,
}

impl HealthChecker {
    /// A checker of `config`'s gateways with their provider clients (by gateway id, as
    /// [`crate::providers::factory::build_providers`] builds them; a gateway without a client
    /// fails its probe), the state store, the events sink and the clock.
    pub fn new(
        config: Arc<Config>,
        providers: Providers,
        store: Arc<dyn StateStore>,
        events: Arc<dyn EventSink>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            config,
            providers,
            store,
            events,
            clock,
            changed_by: DEFAULT_CHANGED_BY.to_owned(),
        }
    }

    /// Names the process in the config events' `changed_by` (e.g.
    /// `health-check (GATEWAY_CONFIG_FILE=/opt/config.json)`).
    pub fn with_changed_by(mut self, changed_by: impl Into<String>) -> Self {
        self.changed_by = changed_by.into();
        self
    }

    /// One run (see the module docs). Errors only when the stored records cannot be read;
    /// every later problem (a failed write, an event sink outage) is logged and counted in the
    /// summary, and the next run repairs it.
    pub async fn run(&self) -> Result<CheckSummary, CheckError> {
        let now = self.clock.now_ms();
        let gateways = &self.config.gateways;
        let raw = self.read(gateways).await?;
        let prev: Vec<Option<HealthRecord>> = raw
            .iter()
            .map(|item| HealthRecord::from_item(item.as_ref()))
            .collect();

        let plans: Vec<Plan> = gateways
            .iter()
            .zip(&prev)
            .map(|(g, prev)| {
                if !g.enabled || !g.health_check.enabled {
                    if prev
                        .as_ref()
                        .is_some_and(|p| p.status == HealthStatus::Disabled)
                    {
                        Plan::AlreadyDisabled
                    } else {
                        Plan::Disable
                    }
                } else if health::is_due(prev.as_ref(), &g.health_check, now) {
                    Plan::Probe
                } else {
                    Plan::Skip
                }
            })
            .collect();

        let due: Vec<usize> = plans
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p, Plan::Probe))
            .map(|(i, _)| i)
            .collect();
        let mut probes: HashMap<usize, (ProbeResult, Option<SendQuota>)> =
            futures::stream::iter(due.into_iter().map(|i| {
                let gateway = &gateways[i];
                let provider = self.providers.get(&gateway.id).cloned();
                async move { (i, probe(gateway, provider).await) }
            }))
            .buffer_unordered(PROBE_CONCURRENCY)
            .collect()
            .await;

        let mut summary = CheckSummary {
            at: now,
            events_emitted: false,
            ..CheckSummary::default()
        };
        let mut pending = Vec::new();
        for (i, plan) in plans.iter().enumerate() {
            let g = &gateways[i];
            let record = match plan {
                Plan::Skip | Plan::AlreadyDisabled => continue,
                Plan::Disable => health::disabled(now),
                Plan::Probe => {
                    summary.probed += 1;
                    let (result, quota) = probes.remove(&i).unwrap_or_else(|| {
                        (ProbeResult::failed("the probe did not run", None), None)
                    });
                    if let Some(quota) = quota {
                        summary.ses_warnings.extend(ses_quota_warnings(g, &quota));
                    }
                    health::step(prev[i].as_ref(), &result, &g.health_check, now)
                }
            };
            pending.push(Pending {
                index: i,
                record,
                condition: unchanged(raw[i].as_ref()),
            });
        }
        for w in &summary.ses_warnings {
            tracing::warn!(gateway = %w.gateway_id, setting = w.setting, configured = w.configured,
                quota = w.quota, account_limit = w.account_limit,
                "configured limit exceeds the SES account's sending quota");
        }

        let write_id = i64::from_ne_bytes(crate::retry::random_below(u64::MAX).to_ne_bytes());
        let outcomes = self.write(pending, write_id).await;
        let mut events = Vec::new();
        let mut checks: Vec<Option<GatewayCheck>> = vec![None; gateways.len()];
        for (pending, outcome) in outcomes {
            let g = &gateways[pending.index];
            let r = &pending.record;
            let (label, stored) = match outcome {
                Ok(WriteOutcome::Applied(_)) => {
                    log_verdict(g, r, prev[pending.index].as_ref());
                    events.push(GatewayEvent::Health(health_event(g, r)));
                    let label = if r.status == HealthStatus::Disabled {
                        "disabled"
                    } else {
                        "probed"
                    };
                    (label, Some(r.clone()))
                }
                Ok(WriteOutcome::ConditionFailed(current)) => {
                    tracing::info!(gateway = %g.id, outcome = "superseded",
                        "another health check recorded this gateway first; this probe is dropped");
                    summary.superseded += 1;
                    ("superseded", HealthRecord::from_item(current.as_ref()))
                }
                Err(error) => {
                    tracing::warn!(gateway = %g.id, error_kind = "state", %error,
                        "health record could not be written; the next run probes again");
                    summary.write_failures += 1;
                    ("write_failed", prev[pending.index].clone())
                }
            };
            checks[pending.index] = Some(check(g, label, stored.as_ref()));
        }
        for (i, plan) in plans.iter().enumerate() {
            if checks[i].is_none() {
                let label = match plan {
                    Plan::Skip => {
                        summary.skipped += 1;
                        "skipped"
                    }
                    _ => "disabled",
                };
                checks[i] = Some(check(&gateways[i], label, prev[i].as_ref()));
            }
        }
        for c in checks.into_iter().flatten() {
            summary.count(c.status);
            summary.gateways.push(c);
        }

        events.push(GatewayEvent::Config(ConfigEvent::of(
            &self.config,
            &self.changed_by,
            Some("effective configuration reported by the health check"),
            now,
        )));
        match self.events.emit(&events).await {
            Ok(()) => summary.events_emitted = true,
            Err(error) => tracing::error!(error_kind = "events", %error,
                "health and config events could not be queued; the next run reports again"),
        }
        tracing::info!(
            probed = summary.probed,
            skipped = summary.skipped,
            healthy = summary.healthy,
            degraded = summary.degraded,
            unhealthy = summary.unhealthy,
            superseded = summary.superseded,
            "health check done"
        );
        Ok(summary)
    }

    /// Runs [`HealthChecker::run`] every `period` until the future is dropped, logging each
    /// failed run (for a long-running process such as `gateway serve`, which spawns it). The
    /// per-gateway `health_check.interval` still decides when a gateway is probed; `period` only
    /// bounds how late a probe can be, so a few seconds is right. A run that overruns `period`
    /// delays the next tick instead of piling up runs.
    pub async fn run_periodically(&self, period: Duration) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(error) = self.run().await {
                tracing::warn!(error_kind = "state", %error, "health check run failed");
            }
        }
    }

    async fn read(&self, gateways: &[Gateway]) -> Result<Vec<Option<Item>>, CheckError> {
        let keys: Vec<String> = gateways.iter().map(|g| health::key(&g.id)).collect();
        let mut items = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_BATCH_GET) {
            items.extend(
                self.store
                    .get_many(chunk)
                    .await
                    .map_err(CheckError::State)?,
            );
        }
        Ok(items)
    }

    /// Writes each record with its condition and the run's `write_id`; a write applied by an
    /// attempt whose answer was lost is reported applied (see the module docs).
    async fn write(
        &self,
        pending: Vec<Pending>,
        write_id: i64,
    ) -> Vec<(Pending, Result<WriteOutcome, StoreError>)> {
        let gateways = &self.config.gateways;
        futures::stream::iter(pending.into_iter().map(|p| {
            let mut item = p.record.to_item();
            item.insert(health::WRITE_ID.into(), StateValue::N(write_id));
            let write = Write {
                key: health::key(&gateways[p.index].id),
                op: WriteOp::Put(item.clone()),
                condition: p.condition.clone(),
            };
            async move {
                let outcome = self.store.write(write).await.map(|o| own_write(o, &item));
                (p, outcome)
            }
        }))
        .buffer_unordered(PROBE_CONCURRENCY)
        .collect()
        .await
    }
}

/// The outcome of the write of `written`, except that a failed condition on exactly `written`
/// (its run's `write_id` included, which no other run stores) is what it is: the store's retry
/// meeting this write's own result after the answer to the applied attempt was lost. Applied.
fn own_write(outcome: WriteOutcome, written: &Item) -> WriteOutcome {
    match outcome {
        WriteOutcome::ConditionFailed(Some(current)) if current == *written => {
            WriteOutcome::Applied(Some(current))
        }
        other => other,
    }
}

/// The condition that the stored item is still the one read: same `checked_at`, or still absent.
fn unchanged(read: Option<&Item>) -> Condition {
    match read {
        None => Condition::ItemNotExists,
        Some(item) => match get_n(item, "checked_at") {
            Some(at) => Condition::cmp("checked_at", CmpOp::Eq, StateValue::N(at)),
            None => Condition::And(vec![
                Condition::ItemExists,
                Condition::AttrNotExists("checked_at".into()),
            ]),
        },
    }
}

/// Probes one gateway within its `health_check.timeout`.
async fn probe(
    gateway: &Gateway,
    provider: Option<Arc<dyn Provider>>,
) -> (ProbeResult, Option<SendQuota>) {
    let Some(provider) = provider else {
        return (
            ProbeResult::failed("no provider client was built for this gateway", None),
            None,
        );
    };
    let timeout = gateway.health_check.timeout;
    match tokio::time::timeout(timeout, provider.probe()).await {
        Ok(result) => {
            let quota = result.as_ref().ok().and_then(|r| r.send_quota);
            (ProbeResult::of(&result), quota)
        }
        Err(_) => (
            ProbeResult::failed(
                format_args!("the probe timed out after {} ms", timeout.as_millis()),
                None,
            ),
            None,
        ),
    }
}

fn health_event(g: &Gateway, r: &HealthRecord) -> HealthEvent {
    HealthEvent {
        gateway_id: g.id.clone(),
        gateway_type: g.kind.as_str().to_owned(),
        status: r.status,
        latency_ms: r.latency_ms,
        consecutive_failures: r.consecutive_failures,
        consecutive_successes: r.consecutive_successes,
        error: r.error.clone(),
        at: r.checked_at,
    }
}

fn check(g: &Gateway, outcome: &'static str, stored: Option<&HealthRecord>) -> GatewayCheck {
    GatewayCheck {
        gateway_id: g.id.clone(),
        outcome,
        status: stored.map(|r| r.status),
        latency_ms: stored.and_then(|r| r.latency_ms),
        error: stored.and_then(|r| r.error.clone()),
    }
}

/// Logs a change of verdict at `warn` (unhealthy) or `info`, and an unchanged one at `debug`.
fn log_verdict(g: &Gateway, r: &HealthRecord, prev: Option<&HealthRecord>) {
    let status = health::status_name(r.status);
    let changed = prev.is_none_or(|p| p.status != r.status);
    let error = r.error.as_deref().unwrap_or("");
    if changed && r.status == HealthStatus::Unhealthy {
        tracing::warn!(gateway = %g.id, outcome = status, failures = r.consecutive_failures,
            latency_ms = r.latency_ms, error, "gateway is unhealthy");
    } else if changed {
        tracing::info!(gateway = %g.id, outcome = status, latency_ms = r.latency_ms, error,
            "gateway health changed");
    } else {
        tracing::debug!(gateway = %g.id, outcome = status, latency_ms = r.latency_ms, error,
            "gateway health unchanged");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::load_config;
    use crate::events::MemoryEventSink;
    use crate::providers::simulated::SimulatedProvider;
    use crate::state::memory::MemoryStore;

    const T0: EpochMillis = 1_795_860_000_000;

    fn config(gateways: serde_json::Value) -> Config {
        let doc = json!({"gateways": gateways});
        load_config(Some(&doc.to_string()), None, &|_| None)
            .unwrap()
            .config
    }

    fn ses(id: &str, rate_limits: serde_json::Value) -> serde_json::Value {
        json!({"id": id, "type": "amazon_ses", "display_name": id,
               "amazon_ses": {"region": "eu-west-1"}, "rate_limits": rate_limits,
               "routing": {"can_route": ["*"]}})
    }

    fn quota(daily: f64, rate: f64) -> SendQuota {
        SendQuota {
            max_24_hour_send: daily,
            max_send_rate: rate,
            sent_last_24_hours: 0.0,
        }
    }

    #[test]
    fn ses_limits_are_compared_with_the_account_quota() {
        let c = config(json!([
            ses("both", json!({"workspace_daily": 500, "burst_limit": 20})),
            ses("daily-only", json!({"workspace_daily": 500, "burst_limit": null})),
            ses("unlimited", json!({"workspace_daily": null, "burst_limit": null})),
            {"id": "sim", "type": "simulated", "display_name": "sim", "simulated": {},
             "rate_limits": {"workspace_daily": 500}, "routing": {"can_route": ["*"]}},
        ]));
        let settings =
            |w: &[SesQuotaWarning]| -> Vec<&str> { w.iter().map(|w| w.setting).collect() };
        let g = |i: usize| &c.gateways[i];
        let cases: [(usize, SendQuota, Vec<&str>); 7] = [
            (
                0,
                quota(200.0, 1.0),
                vec![
                    "rate_limits.workspace_daily",
                    "rate_limits.burst_refill_per_second",
                ],
            ),
            (0, quota(500.0, 20.0), vec![]),
            // SES reports an unlimited quota as -1.
            (0, quota(-1.0, -1.0), vec![]),
            (1, quota(200.0, 1.0), vec!["rate_limits.workspace_daily"]),
            (2, quota(200.0, 1.0), vec![]),
            // Only SES gateways are compared.
            (3, quota(200.0, 1.0), vec![]),
            (1, quota(499.0, 1.0), vec!["rate_limits.workspace_daily"]),
        ];
        for (i, q, want) in cases {
            assert_eq!(
                settings(&ses_quota_warnings(g(i), &q)),
                want,
                "{} {q:?}",
                g(i).id
            );
        }
    }

    fn checker(
        config: Config,
        providers: Providers,
    ) -> (
        HealthChecker,
        Arc<MemoryStore>,
        Arc<MemoryEventSink>,
        Arc<ManualClock>,
    ) {
        let store = Arc::new(MemoryStore::new());
        let sink = Arc::new(MemoryEventSink::new());
        let clock = Arc::new(ManualClock::new(T0));
        let checker = HealthChecker::new(
            Arc::new(config),
            providers,
            store.clone(),
            sink.clone(),
            clock.clone(),
        );
        (checker, store, sink, clock)
    }

    #[tokio::test]
    async fn a_gateway_without_a_client_fails_its_probe() {
        let c = config(
            json!([{"id": "sim", "type": "simulated", "display_name": "sim",
            "simulated": {}, "routing": {"can_route": ["*"]}}]),
        );
        let (checker, _, _, _) = checker(c, HashMap::new());
        let s = checker.run().await.unwrap();
        assert_eq!((s.probed, s.degraded), (1, 1), "{s:?}");
        assert_eq!(
            s.gateways[0].error.as_deref(),
            Some("no provider client was built for this gateway")
        );
    }

    fn simulated(id: &str, enabled: bool) -> serde_json::Value {
        json!({"id": id, "type": "simulated", "display_name": id, "enabled": enabled,
               "simulated": {}, "routing": {"can_route": ["*"]}})
    }

    fn simulated_providers(c: &Config) -> Providers {
        c.gateways
            .iter()
            .filter_map(|g| match &g.provider {
                crate::config::ProviderSettings::Simulated(settings) => {
                    let provider: Arc<dyn Provider> =
                        Arc::new(SimulatedProvider::new(&g.id, settings.clone()));
                    Some((g.id.clone(), provider))
                }
                _ => None,
            })
            .collect()
    }

    /// Each run's summary with the records it left, and every event, over two runs a minute
    /// apart: the first creates the records, the second replaces the probed one (its write
    /// conditioned on `checked_at`).
    async fn two_runs(
        store: Arc<dyn StateStore>,
    ) -> (
        Vec<(CheckSummary, Vec<Option<HealthRecord>>)>,
        Vec<GatewayEvent>,
    ) {
        let c = config(json!([simulated("sim", true), simulated("off", false)]));
        let providers = simulated_providers(&c);
        let sink = Arc::new(MemoryEventSink::new());
        let clock = Arc::new(ManualClock::new(T0));
        let checker = HealthChecker::new(
            Arc::new(c),
            providers,
            Arc::clone(&store),
            sink.clone(),
            clock.clone(),
        );
        let mut runs = Vec::new();
        for _ in 0..2 {
            let summary = checker.run().await.unwrap();
            let mut records = Vec::new();
            for g in ["sim", "off"] {
                let item = store.get(&health::key(g)).await.unwrap();
                assert!(
                    item.as_ref()
                        .is_some_and(|i| i.contains_key(health::WRITE_ID))
                );
                records.push(HealthRecord::from_item(item.as_ref()));
            }
            runs.push((summary, records));
            clock.advance(60_000);
        }
        (runs, sink.events())
    }

    #[tokio::test]
    async fn a_record_write_whose_answer_was_lost_counts_as_written() {
        let once = two_runs(Arc::new(MemoryStore::new())).await;
        let outcomes =
            |run: &CheckSummary| -> Vec<&str> { run.gateways.iter().map(|g| g.outcome).collect() };
        let (runs, events) = &once;
        assert_eq!(outcomes(&runs[0].0), ["probed", "disabled"]);
        assert_eq!(outcomes(&runs[1].0), ["probed", "disabled"]);
        assert_eq!(
            runs[1].1[0].as_ref().map(|r| r.checked_at),
            Some(T0 + 60_000)
        );
        let health: Vec<(&str, HealthStatus)> = events
            .iter()
            .filter_map(|e| match e {
                GatewayEvent::Health(h) => Some((h.gateway_id.as_str(), h.status)),
                _ => None,
            })
            .collect();
        // The disabled gateway's record is written once; the probed one every run.
        assert_eq!(
            health,
            [
                ("sim", HealthStatus::Healthy),
                ("off", HealthStatus::Disabled),
                ("sim", HealthStatus::Healthy),
            ]
        );

        // Every write applied, its answer lost and retried: the same records, summaries and
        // events, none of them `superseded`.
        let lost = two_runs(Arc::new(crate::state::memory::LostAnswers::default())).await;
        assert_eq!(lost, once);
    }

    /// Before each write, another run puts the very same record (same probe result, same
    /// clock) under its own `write_id`: an overlapping run that won.
    #[derive(Debug, Default)]
    struct Overtaken(MemoryStore);

    #[async_trait::async_trait]
    impl StateStore for Overtaken {
        async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Item>>, StoreError> {
            self.0.get_many(keys).await
        }
        async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
            let mut theirs = write.clone();
            if let WriteOp::Put(item) = &mut theirs.op {
                item.insert(health::WRITE_ID.into(), StateValue::N(-7));
            }
            self.0.write(theirs).await?;
            self.0.write(write).await
        }
        async fn transact(
            &self,
            writes: Vec<Write>,
        ) -> Result<crate::state::TransactOutcome, StoreError> {
            self.0.transact(writes).await
        }
        async fn put_many(&self, items: Vec<(String, Item)>) -> Result<(), StoreError> {
            self.0.put_many(items).await
        }
    }

    #[tokio::test]
    async fn an_identical_record_of_an_overlapping_run_still_supersedes_ours() {
        let (runs, events) = two_runs(Arc::new(Overtaken::default())).await;
        let outcomes: Vec<Vec<&str>> = runs
            .iter()
            .map(|(summary, _)| summary.gateways.iter().map(|g| g.outcome).collect())
            .collect();
        // The second run finds the other run's `DISABLED` record and writes nothing for it.
        assert_eq!(
            outcomes,
            [["superseded", "superseded"], ["superseded", "disabled"]]
        );
        assert_eq!((runs[0].0.superseded, runs[1].0.superseded), (2, 1));
        assert!(
            !events.iter().any(|e| matches!(e, GatewayEvent::Health(_))),
            "{events:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn run_periodically_keeps_checking_until_dropped() {
        let c = config(
            json!([{"id": "sim", "type": "simulated", "display_name": "sim",
            "simulated": {}, "routing": {"can_route": ["*"]},
            "health_check": {"interval": "10s"}}]),
        );
        let sim = c.gateways[0].provider.clone();
        let crate::config::ProviderSettings::Simulated(settings) = sim else {
            panic!("simulated settings");
        };
        let provider: Arc<dyn Provider> = Arc::new(SimulatedProvider::new("sim", settings));
        let (checker, _, sink, clock) = checker(c, HashMap::from([("sim".to_owned(), provider)]));
        let task =
            tokio::spawn(async move { checker.run_periodically(Duration::from_secs(10)).await });
        for _ in 0..3 {
            // Let the tick's run finish, then move both clocks to the next tick.
            tokio::time::sleep(Duration::from_millis(1)).await;
            clock.advance(10_000);
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        task.abort();
        let health = sink
            .events()
            .iter()
            .filter(|e| matches!(e, GatewayEvent::Health(_)))
            .count();
        assert!(health >= 3, "{health} health events");
    }
}
