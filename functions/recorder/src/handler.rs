//! The recorder handler: SQS event in, batch item failures out; or the scheduled purge in, its
//! summary out. No business rules here.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use gateway_core::live_config::Reloading;
use gateway_core::queue::{Queue, Received};
use gateway_core::recorder::Recorder;
use gateway_core::records::retention::PurgeSummary;
use gateway_core::records::{RecordError, RecordReader};
use lambda_runtime::{Error, LambdaEvent};

use crate::metrics::Metrics;
use crate::retention::{self, RetentionJob};

/// The recorder a batch runs on: rebuilt for each config version taken up
/// ([`gateway_core::live_config`]) when the function has a config, fixed otherwise.
#[derive(Debug)]
pub enum Running {
    /// Without a config: the default suppression scopes, no customer webhooks.
    Fixed(Arc<Recorder>),
    /// Built from the config in force.
    Live(Box<Reloading<Recorder>>),
}

impl Running {
    /// The recorder in force (after taking up a new config version when one is due).
    pub async fn get(&self) -> Arc<Recorder> {
        match self {
            Self::Fixed(r) => Arc::clone(r),
            Self::Live(r) => r.get().await,
        }
    }
}

/// What the handler needs, built once per process by `main`.
#[derive(Debug, Clone)]
pub struct Deps {
    /// The recorder over the record store (counted by `metrics`) and the suppression list.
    pub recorder: Arc<Running>,
    /// The metric lines written after each batch (see [`crate::metrics`]).
    pub metrics: Arc<Metrics>,
    /// The outbound dead-letter queue's records, when the function consumes it.
    pub dead_letters: Option<DeadLetters>,
    /// The scheduled purge of expired records (`None`: a scheduled invocation is an error).
    pub retention: Option<RetentionJob>,
}

/// Where the outbound dead letters come from and go (see
/// [`Recorder::park_dead_letters`](gateway_core::recorder::Recorder::park_dead_letters)).
#[derive(Debug, Clone)]
pub struct DeadLetters {
    /// The outbound dead-letter queue's ARN: records from it are dead letters.
    pub source_arn: String,
    /// Reads a message's record, to leave a final one as it is.
    pub reader: Arc<dyn RecordReader>,
    /// Where they wait for `gateway dlq redrive`.
    pub parked: Arc<dyn Queue>,
}

/// Why a batch failed as a whole (every record is retried; recording is idempotent).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A record to retry has no message id, so it cannot be named as a batch item failure.
    #[error("a record to retry has no SQS message id; failing the whole batch so none is lost")]
    UnnamedFailure,
    /// A scheduled purge reached an instance built without one.
    #[error("a scheduled purge was invoked, but this instance has no retention job")]
    NoRetention,
    /// The scheduled purge failed (logged with its cause); the next run goes on.
    #[error("the scheduled purge failed")]
    Purge(#[source] RecordError),
    /// The payload is neither the scheduled purge nor an SQS event.
    #[error("the invocation is neither an SQS event nor the scheduled purge")]
    UnknownEvent(#[source] serde_json::Error),
}

/// The scheduled purge: one budgeted pass ([`retention::purge`]) and its metric line.
pub async fn scheduled(deps: &Deps) -> Result<PurgeSummary, HandlerError> {
    let job = deps.retention.as_ref().ok_or(HandlerError::NoRetention)?;
    let result = retention::purge(job).await;
    deps.metrics.write_retention(result.as_ref().ok());
    result.map_err(HandlerError::Purge)
}

/// One invocation of the function: the scheduled purge (`{"type": "record_retention"}`, the
/// schedule's input; answered with the [`PurgeSummary`]),
/// or an SQS batch ([`handle`]; answered with its batch item failures).
pub async fn invoke(
    event: LambdaEvent<serde_json::Value>,
    deps: &Deps,
) -> Result<serde_json::Value, Error> {
    let (payload, context) = event.into_parts();
    if retention::is_scheduled(&payload) {
        return Ok(serde_json::to_value(scheduled(deps).await?)?);
    }
    let batch: SqsEvent = serde_json::from_value(payload).map_err(HandlerError::UnknownEvent)?;
    let response = handle(LambdaEvent::new(batch, context), deps).await?;
    Ok(serde_json::to_value(response)?)
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
        sent_at: message
            .attributes
            .get("SentTimestamp")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    }
}

/// Records one batch of events; the records to retry are returned as batch item failures.
/// Writes the batch's metric lines (`RecordFailures` among them: a database outage shows up
/// there and in the batch item failures, never as a failed invocation).
pub async fn handle(event: LambdaEvent<SqsEvent>, deps: &Deps) -> Result<SqsBatchResponse, Error> {
    let is_dead_letter = |m: &SqsMessage| {
        deps.dead_letters
            .as_ref()
            .is_some_and(|d| m.event_source_arn.as_deref() == Some(d.source_arn.as_str()))
    };
    let (dead, records): (Vec<&SqsMessage>, Vec<&SqsMessage>) = event
        .payload
        .records
        .iter()
        .partition(|m| is_dead_letter(m));
    let mut response = SqsBatchResponse::default();
    if let (Some(d), false) = (&deps.dead_letters, dead.is_empty()) {
        let dead: Vec<Received> = dead.into_iter().map(received).collect();
        let report = deps
            .recorder
            .get()
            .await
            .park_dead_letters(&dead, d.reader.as_ref(), d.parked.as_ref())
            .await;
        tracing::info!(
            records = dead.len(),
            parked = report.parked,
            recorded = report.recorded,
            already_final = report.already_final,
            invalid = report.invalid,
            failures = report.failures.len(),
            "dead letters parked"
        );
        push_failures(&mut response, report.failures)?;
    }
    if records.is_empty() {
        deps.metrics.flush();
        return Ok(response);
    }
    let records: Vec<Received> = records.into_iter().map(received).collect();
    let report = deps.recorder.get().await.process(&records).await;
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
    push_failures(&mut response, report.failures)?;
    Ok(response)
}

fn push_failures(response: &mut SqsBatchResponse, ids: Vec<String>) -> Result<(), HandlerError> {
    for id in ids {
        if id.is_empty() {
            return Err(HandlerError::UnnamedFailure);
        }
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = id;
        response.batch_item_failures.push(failure);
    }
    Ok(())
}
