//! The scheduled purge of the record of delivery: an EventBridge schedule invokes the recorder
//! with `{"type": "record_retention"}` (template: `RecorderFunction`'s `RecordRetention` event),
//! and [`purge`] runs one budgeted pass of [`purge_expired`] at the clock's `now`. The
//! logic is in `gateway-core`; this only chooses the budget, logs and writes the metric line.

use std::sync::Arc;
use std::time::Duration;

use gateway_core::clock::Clock;
use gateway_core::records::RecordError;
use gateway_core::records::mysql::MysqlRecords;
use gateway_core::records::retention::{
    DEFAULT_BATCH_SIZE, PurgeBudget, PurgeMode, PurgeSummary, Retention, purge_expired,
};

/// The `type` of the scheduled event's input that asks for a purge.
pub const SCHEDULED_TYPE: &str = "record_retention";

/// Most batches per run: 200 × 500 = 100,000 messages, 2.4 million a day at the hourly
/// schedule, far above what the gateway sends, so a backlog (the first run on an old database)
/// drains within days without any run holding the database for long.
pub const MAX_BATCHES_PER_RUN: u32 = 200;

/// Time after which a run starts no new batch: well inside the function's 60 s timeout, with
/// room for the batch in flight.
pub const MAX_RUN_TIME: Duration = Duration::from_secs(40);

/// What a scheduled purge needs, built once by [`crate::wire()`].
#[derive(Debug, Clone)]
pub struct RetentionJob {
    /// The record of delivery.
    pub records: MysqlRecords,
    /// `RECORD_RETENTION_DAYS`.
    pub retention: Retention,
    /// `now` of each run.
    pub clock: Arc<dyn Clock>,
}

/// The budget of one scheduled run.
pub fn budget() -> PurgeBudget {
    PurgeBudget::new(DEFAULT_BATCH_SIZE, MAX_BATCHES_PER_RUN, MAX_RUN_TIME)
        .unwrap_or_else(|_| unreachable!("the default batch size is within the maximum"))
}

/// Whether an invocation's payload is the scheduled purge (rather than an SQS batch).
pub fn is_scheduled(payload: &serde_json::Value) -> bool {
    payload.get("type").and_then(serde_json::Value::as_str) == Some(SCHEDULED_TYPE)
}

/// Runs one pass within [`budget()`], logging each batch and the summary.
pub async fn purge(job: &RetentionJob) -> Result<PurgeSummary, RecordError> {
    let now = job.clock.now_ms();
    let result = purge_expired(
        &job.records,
        now,
        job.retention,
        &budget(),
        PurgeMode::Delete,
        |batch| {
            tracing::debug!(
                batch = batch.number,
                messages = batch.counts.messages,
                unattached_events = batch.counts.unattached_events,
                "retention batch purged"
            );
        },
    )
    .await;
    match &result {
        Ok(s) => tracing::info!(
            cutoff = s.cutoff,
            retention_days = job.retention.as_millis() / 86_400_000,
            messages = s.counts.messages,
            recipients = s.counts.recipients,
            send_attempts = s.counts.send_attempts,
            delivery_events = s.counts.delivery_events,
            unattached_events = s.counts.unattached_events,
            batches = s.batches,
            more_remaining = s.more_remaining,
            "expired records purged"
        ),
        Err(error) => tracing::error!(
            %error,
            error_kind = "retention_purge_failed",
            "purging expired records failed; the next scheduled run goes on from there"
        ),
    }
    result
}
