//! The sender handler: translates an SQS event into one [`Pipeline::process`] call and the
//! pipeline's report into the Lambda answer (partial batch failures). No business rules here;
//! they live in `gateway_core::pipeline`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use gateway_core::live_config::Reloading;
use gateway_core::pipeline::{Batch, Pipeline, emf_lines, settle};
use gateway_core::queue::{Queue, Received};
use lambda_runtime::{Error, LambdaEvent};

/// Deadline used when the runtime gives none (a local invoke): a minute from now, in ms.
pub const LOCAL_DEADLINE_MS: i64 = 60_000;

/// Deadlines before this instant (2001-09-09, epoch ms) are not epoch times: Lambda sends none
/// so small, but local emulators do (`cargo lambda watch` sends a fixed `600000`).
pub const EARLIEST_DEADLINE_MS: i64 = 1_000_000_000_000;

/// The deadline the pipeline works to, from the runtime's `Lambda-Runtime-Deadline-Ms` (epoch
/// ms) seen at `now`. A missing (0) or non-epoch value, as local invokes give, becomes
/// [`LOCAL_DEADLINE_MS`] from now. A real deadline is kept even when it has already passed: the
/// pipeline then starts no provider call and takes no lease that outlives the invocation.
pub fn effective_deadline(given: u64, now: i64) -> i64 {
    i64::try_from(given)
        .ok()
        .filter(|d| *d >= EARLIEST_DEADLINE_MS)
        .unwrap_or(now.saturating_add(LOCAL_DEADLINE_MS))
}

/// What the handler needs, built once per process by `main`.
#[derive(Debug, Clone)]
pub struct Deps {
    /// The send pipeline, rebuilt when a new config version is activated
    /// ([`gateway_core::live_config`]).
    pub pipeline: Arc<Reloading<Pipeline>>,
    /// The outbound queue, to set the visibility of deferred records.
    pub queue: Arc<dyn Queue>,
    /// The bulk lane's queue and its ARN, when the function has one: a batch from it (its
    /// event source ARN) has its deferrals set there.
    pub bulk: Option<(String, Arc<dyn Queue>)>,
    /// CloudWatch namespace of the metric lines.
    pub metrics_namespace: String,
}

/// Why a batch failed as a whole (the runtime then retries every record; the ledger makes that
/// safe).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A record to retry has no message id, so it cannot be named as a batch item failure; an
    /// unnamed failure would be deleted with the successes.
    #[error("a record to retry has no SQS message id; failing the whole batch so none is lost")]
    UnnamedFailure,
}

/// The pipeline's view of one SQS record. A record without a body gets an empty one, which the
/// pipeline rejects as poison (recorded, never silently dropped).
pub fn received(message: &SqsMessage) -> Received {
    let attribute = |name: &str| message.attributes.get(name).map(String::as_str);
    Received {
        message_id: message.message_id.clone().unwrap_or_default(),
        receipt_handle: message.receipt_handle.clone().unwrap_or_default(),
        body: message.body.clone().unwrap_or_default(),
        receive_count: attribute("ApproximateReceiveCount")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        sent_at: attribute("SentTimestamp")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

/// Handles one SQS batch: runs the pipeline, sets the visibility of the records it defers,
/// prints the metric lines and answers the records to retry as batch item failures.
pub async fn handle(event: LambdaEvent<SqsEvent>, deps: &Deps) -> Result<SqsBatchResponse, Error> {
    let (event, context) = event.into_parts();
    let records: Vec<Received> = event.records.iter().map(received).collect();
    let pipeline = deps.pipeline.get().await;
    let now = pipeline.clock().now_ms();
    let deadline = effective_deadline(context.deadline, now);
    tracing::debug!(
        records = records.len(),
        deadline,
        remaining_ms = deadline.saturating_sub(now),
        "batch received"
    );
    let owner = if context.request_id.is_empty() {
        local_owner(now)
    } else {
        context.request_id.clone()
    };
    let report = pipeline
        .process(Batch {
            records: &records,
            owner: &owner,
            deadline,
        })
        .await;

    // One event source per lane, so a batch comes from one queue.
    let from_bulk = deps.bulk.as_ref().filter(|(arn, _)| {
        event
            .records
            .first()
            .and_then(|r| r.event_source_arn.as_deref())
            == Some(arn.as_str())
    });
    let queue = from_bulk.map_or(&deps.queue, |(_, q)| q);
    match settle(queue.as_ref(), &report, false).await {
        Ok(summary) => {
            for refused in &summary.refused {
                tracing::warn!(error_kind = "queue_settle", reason = ?refused.reason, "visibility not changed; the record returns after the queue's visibility timeout");
            }
        }
        Err(error) => {
            tracing::warn!(error_kind = "queue_settle", %error, "visibility of deferred records not changed; they return after the queue's visibility timeout");
        }
    }
    emit_metrics(&deps.metrics_namespace, &report, pipeline.clock().now_ms());
    let m = &report.metrics;
    tracing::info!(
        records = m.records,
        sent = m.sent,
        deferred = m.deferred,
        failed = m.failed,
        rejected = m.rejected,
        replayed = m.replayed,
        failovers = m.failovers,
        "batch done"
    );

    let mut response = SqsBatchResponse::default();
    for item in report.failures() {
        if item.queue_message_id.is_empty() {
            return Err(HandlerError::UnnamedFailure.into());
        }
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = item.queue_message_id.clone();
        response.batch_item_failures.push(failure);
    }
    Ok(response)
}

/// A ledger owner for an invocation without a request id (a local invoke): unique within the
/// process even for invocations in the same millisecond, and across processes by the pid, so
/// two invocations never take each other's leases for their own.
fn local_owner(now: i64) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("local-{}-{now}-{n}", std::process::id())
}

/// Writes the batch's Embedded Metric Format lines to stdout, where CloudWatch Logs picks them
/// up.
#[allow(clippy::print_stdout, reason = "EMF lines go to stdout by design")]
fn emit_metrics(namespace: &str, report: &gateway_core::pipeline::BatchReport, now: i64) {
    for line in emf_lines(&report.metrics, &report.transitions, namespace, now) {
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_epoch_deadlines_are_kept() {
        let now = 1_795_856_400_000;
        let cases = [
            (0, now + LOCAL_DEADLINE_MS),       // no deadline (a bare local invoke)
            (600_000, now + LOCAL_DEADLINE_MS), // cargo lambda watch's fixed value
            (1_795_856_430_000, 1_795_856_430_000), // Lambda: 30 s left
            (1_795_856_399_000, 1_795_856_399_000), // already passed: kept
            (u64::MAX, now + LOCAL_DEADLINE_MS), // not an i64
        ];
        for (given, want) in cases {
            assert_eq!(effective_deadline(given, now), want, "{given}");
        }
    }
}
