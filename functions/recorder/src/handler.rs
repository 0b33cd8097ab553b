//! The recorder handler: SQS event in, batch item failures out. No business rules here.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use gateway_core::queue::Received;
use gateway_core::recorder::Recorder;
use lambda_runtime::{Error, LambdaEvent};

use crate::metrics::Metrics;

/// What the handler needs, built once per process by `main`.
#[derive(Debug, Clone)]
pub struct Deps {
    /// The recorder over the record store (counted by `metrics`) and the suppression list.
    pub recorder: Arc<Recorder>,
    /// The metric lines written after each batch (see [`crate::metrics`]).
    pub metrics: Arc<Metrics>,
}

/// Why a batch failed as a whole (every record is retried; recording is idempotent).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A record to retry has no message id, so it cannot be named as a batch item failure.
    #[error("a record to retry has no SQS message id; failing the whole batch so none is lost")]
    UnnamedFailure,
}

fn received(message: &SqsMessage) -> Received {
    Received {
        message_id: message.message_id.clone().unwrap_or_default(),
        receipt_handle: message.receipt_handle.clone().unwrap_or_default(),
        body: message.body.clone().unwrap_or_default(),
        receive_count: message
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        sent_at: 0,
    }
}

/// Records one batch of events; the records to retry are returned as batch item failures.
/// Writes the batch's metric lines (`RecordFailures` among them: a database outage shows up
/// there and in the batch item failures, never as a failed invocation).
pub async fn handle(event: LambdaEvent<SqsEvent>, deps: &Deps) -> Result<SqsBatchResponse, Error> {
    let records: Vec<Received> = event.payload.records.iter().map(received).collect();
    let report = deps.recorder.process(&records).await;
    deps.metrics.flush();
    tracing::info!(
        records = records.len(),
        recorded = report.recorded,
        suppressed = report.suppressed,
        undecodable = report.undecodable,
        announced = report.announced,
        webhooks_delivered = report.webhooks.delivered,
        webhooks_retried = report.webhooks.retried,
        webhooks_dead_lettered = report.webhooks.dead_lettered,
        failures = report.failures.len(),
        "batch recorded"
    );
    let mut response = SqsBatchResponse::default();
    for id in report.failures {
        if id.is_empty() {
            return Err(HandlerError::UnnamedFailure.into());
        }
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = id;
        response.batch_item_failures.push(failure);
    }
    Ok(response)
}
