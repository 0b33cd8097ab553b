//! The sender handler on the sample event `events/sqs-batch.json`, with in-memory state, queue
//! and event sink and a scripted provider: what the Lambda runtime gets back, what was sent and
//! what was reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Deps, handle};
use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use gateway_core::clock::{Clock, ManualClock, SystemClock};
use gateway_core::config::load_config;
use gateway_core::events::{EventSink, GatewayEvent, MemoryEventSink, Outcome};
use gateway_core::live_config::Reloading;
use gateway_core::message::OutboundMessage;
use gateway_core::pipeline::{Pipeline, PipelineSettings};
use gateway_core::providers::{Accepted, ErrorClass, ProbeReport, Provider, SendError};
use gateway_core::queue::memory::MemoryQueue;
use gateway_core::queue::{EntryFailure, Queue, QueueError, Received, VisibilityChange};
use gateway_core::state::StateStore;
use gateway_core::state::memory::MemoryStore;
use lambda_runtime::{Context, LambdaEvent};

#[derive(Debug)]
struct Fake {
    fail: Option<ErrorClass>,
    sent: Mutex<Vec<String>>,
}

#[async_trait]
impl Provider for Fake {
    fn gateway_id(&self) -> &str {
        "primary"
    }

    async fn send(&self, message: &OutboundMessage, _now: i64) -> Result<Accepted, SendError> {
        self.sent.lock().unwrap().push(message.id().to_owned());
        match self.fail {
            Some(class) => Err(SendError::new(class, "fake", "down")),
            None => Ok(Accepted {
                provider_message_id: Some(format!("<{}@fake>", message.id())),
                substituted_sender: None,
            }),
        }
    }

    async fn probe(&self) -> Result<ProbeReport, SendError> {
        Ok(ProbeReport::new(Duration::ZERO))
    }
}

struct Setup {
    deps: Deps,
    provider: Arc<Fake>,
    sink: Arc<MemoryEventSink>,
}

fn setup(fail: Option<ErrorClass>) -> Setup {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let queue = Arc::new(MemoryQueue::new(Arc::clone(&clock))) as Arc<dyn Queue>;
    setup_with(fail, clock, queue)
}

fn setup_with(fail: Option<ErrorClass>, clock: Arc<dyn Clock>, queue: Arc<dyn Queue>) -> Setup {
    let config = load_config(
        Some(
            r#"{"gateways": [{"id": "primary", "type": "capture", "display_name": "p",
                "capture": {"directory": "/tmp/unused"}, "routing": {"can_route": ["*"]}}]}"#,
        ),
        None,
        &|_| None,
    )
    .unwrap()
    .config;
    let provider = Arc::new(Fake {
        fail,
        sent: Mutex::default(),
    });
    let sink = Arc::new(MemoryEventSink::new());
    let providers = HashMap::from([(
        "primary".to_owned(),
        Arc::clone(&provider) as Arc<dyn Provider>,
    )]);
    let config = Arc::new(config);
    let pipeline = Pipeline::new(
        Arc::clone(&config),
        providers,
        Arc::new(MemoryStore::new()) as Arc<dyn StateStore>,
        Arc::clone(&sink) as Arc<dyn EventSink>,
        Arc::clone(&clock),
        PipelineSettings::default(),
    );
    Setup {
        deps: Deps {
            pipeline: Arc::new(Reloading::fixed(
                config,
                Arc::new(pipeline),
                Arc::clone(&clock),
            )),
            queue,
            bulk: None,
            metrics_namespace: "MailGateway".into(),
        },
        provider,
        sink,
    }
}

fn sample_batch() -> SqsEvent {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../events/sqs-batch.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn invocation(event: SqsEvent) -> LambdaEvent<SqsEvent> {
    let mut context = Context::default();
    context.request_id = "req-1".into();
    context.deadline = u64::try_from(SystemClock.now_ms() + 60_000).unwrap();
    LambdaEvent::new(event, context)
}

fn outcomes(sink: &MemoryEventSink) -> HashMap<String, Outcome> {
    sink.events()
        .into_iter()
        .filter_map(|e| match e {
            GatewayEvent::Outcome(o) => Some((o.message_id, o.outcome)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_sample_batch_sends_each_message_once_and_acknowledges_the_poison() {
    let s = setup(None);
    let response = handle(invocation(sample_batch()), &s.deps).await.unwrap();
    assert!(
        response.batch_item_failures.is_empty(),
        "{:?}",
        response.batch_item_failures
    );
    let mut sent = s.provider.sent.lock().unwrap().clone();
    sent.sort();
    // The good message, and the one without an id under its SQS message id; the duplicate of
    // the first is not sent again.
    assert_eq!(
        sent,
        [
            "3b1f6c1e-2d4a-4f7e-9a51-6f0c2d8e1a02",
            "appt-2026-11-28-0001"
        ]
    );
    let outcomes = outcomes(&s.sink);
    assert_eq!(outcomes["appt-2026-11-28-0001"], Outcome::Sent);
    assert_eq!(outcomes["poison-2026-11-28-0001"], Outcome::Rejected);
    assert_eq!(outcomes.len(), 3);
}

#[tokio::test]
async fn with_the_provider_down_every_message_is_a_named_batch_item_failure() {
    let s = setup(Some(ErrorClass::Unavailable));
    let response = handle(invocation(sample_batch()), &s.deps).await.unwrap();
    let mut ids: Vec<String> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    ids.sort();
    // Both good messages and the duplicate return; the poison record is acknowledged.
    assert_eq!(
        ids,
        [
            "3b1f6c1e-2d4a-4f7e-9a51-6f0c2d8e1a01",
            "3b1f6c1e-2d4a-4f7e-9a51-6f0c2d8e1a02",
            "3b1f6c1e-2d4a-4f7e-9a51-6f0c2d8e1a04",
        ]
    );
    assert!(ids.iter().all(|id| !id.is_empty()));
}

#[tokio::test]
async fn a_record_without_body_is_rejected_not_dropped_and_nothing_panics() {
    let s = setup(None);
    let mut record = SqsMessage::default();
    record.message_id = Some("no-body-1".into());
    let mut event = SqsEvent::default();
    event.records = vec![record, SqsMessage::default()];
    let response = handle(invocation(event), &s.deps).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    let outcomes = outcomes(&s.sink);
    assert_eq!(outcomes["no-body-1"], Outcome::Rejected);
}

#[tokio::test]
async fn a_record_to_retry_without_a_message_id_fails_the_whole_batch() {
    let s = setup(Some(ErrorClass::Unavailable));
    let mut record = SqsMessage::default();
    record.body = Some(
        serde_json::json!({"id": "m-1", "from": "a@clinic.example", "to": ["p@example.org"],
                           "subject": "s", "text": "t"})
        .to_string(),
    );
    let mut event = SqsEvent::default();
    event.records = vec![record];
    let error = handle(invocation(event), &s.deps).await.unwrap_err();
    assert!(error.to_string().contains("no SQS message id"), "{error}");
}

/// A good message addressed to one patient.
fn good_body(id: &str) -> String {
    serde_json::json!({"id": id, "from": "frontdesk@clinic.example", "to": ["p@example.org"],
                       "subject": "Reminder", "text": "See you tomorrow."})
    .to_string()
}

/// The SQS record Lambda would hand over for a delivery taken from `queue`.
fn record_of(received: &Received) -> SqsMessage {
    let mut record = SqsMessage::default();
    record.message_id = Some(received.message_id.clone());
    record.receipt_handle = Some(received.receipt_handle.clone());
    record.body = Some(received.body.clone());
    record.attributes = HashMap::from([
        (
            "ApproximateReceiveCount".to_owned(),
            received.receive_count.to_string(),
        ),
        ("SentTimestamp".to_owned(), received.sent_at.to_string()),
    ]);
    record
}

#[tokio::test]
async fn a_deferred_record_returns_after_its_retry_delay_not_the_queue_timeout() {
    let clock = Arc::new(ManualClock::new(1_795_856_400_000));
    let queue = Arc::new(MemoryQueue::new(Arc::clone(&clock) as Arc<dyn Clock>));
    let s = setup_with(
        Some(ErrorClass::Unavailable),
        Arc::clone(&clock) as Arc<dyn Clock>,
        Arc::clone(&queue) as Arc<dyn Queue>,
    );
    queue.send(&good_body("m-deferred")).await.unwrap();
    // Hidden for an hour, as a long function timeout would; the retry delay of a first
    // delivery is at most 30 s.
    let received = queue
        .receive(10, Duration::ZERO, Duration::from_secs(3600))
        .await
        .unwrap();
    let mut event = SqsEvent::default();
    event.records = received.iter().map(record_of).collect();
    let mut context = Context::default();
    context.request_id = "req-deferred".into();
    context.deadline = u64::try_from(clock.now_ms() + 60_000).unwrap();

    let response = handle(LambdaEvent::new(event, context), &s.deps)
        .await
        .unwrap();

    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(
        response.batch_item_failures[0].item_identifier,
        received[0].message_id
    );
    let none = queue
        .receive(10, Duration::ZERO, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(none.is_empty(), "visible again at once: {none:?}");
    clock.advance(31_000);
    let again = queue
        .receive(10, Duration::ZERO, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "not back after the retry delay");
    assert_eq!(again[0].receive_count, 2);
}

/// A queue whose every request fails, as SQS does when throttling the account.
#[derive(Debug)]
struct Unreachable;

#[async_trait]
impl Queue for Unreachable {
    async fn send(&self, _body: &str) -> Result<String, QueueError> {
        Err(QueueError::Throttled)
    }

    async fn receive(
        &self,
        _max: usize,
        _wait: Duration,
        _visibility: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        Err(QueueError::Throttled)
    }

    async fn delete_batch(&self, _receipts: &[String]) -> Result<Vec<EntryFailure>, QueueError> {
        Err(QueueError::Throttled)
    }

    async fn change_visibility(
        &self,
        _receipt_handle: &str,
        _visibility: Duration,
    ) -> Result<(), QueueError> {
        Err(QueueError::Throttled)
    }

    async fn change_visibility_batch(
        &self,
        _changes: &[VisibilityChange],
    ) -> Result<Vec<EntryFailure>, QueueError> {
        Err(QueueError::Throttled)
    }
}

#[tokio::test]
async fn a_failed_visibility_change_still_reports_the_records_to_retry() {
    let s = setup_with(
        Some(ErrorClass::Unavailable),
        Arc::new(SystemClock),
        Arc::new(Unreachable),
    );
    let response = handle(invocation(sample_batch()), &s.deps).await.unwrap();
    // The same three records as with a working queue: they come back after the queue's own
    // visibility timeout instead of their retry delay.
    assert_eq!(response.batch_item_failures.len(), 3);
}

#[tokio::test]
async fn an_invocation_without_deadline_or_request_id_still_sends() {
    let s = setup(None);
    let response = handle(
        LambdaEvent::new(sample_batch(), Context::default()),
        &s.deps,
    )
    .await
    .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(s.provider.sent.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn an_invocation_from_cargo_lambda_watch_still_sends() {
    // cargo lambda watch sends a fixed, non-epoch deadline.
    let s = setup(None);
    let mut context = Context::default();
    context.request_id = "req-local".into();
    context.deadline = 600_000;
    let response = handle(LambdaEvent::new(sample_batch(), context), &s.deps)
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(s.provider.sent.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn an_invocation_past_its_deadline_sends_nothing_and_retries_the_good_records() {
    let s = setup(None);
    let mut context = Context::default();
    context.request_id = "req-late".into();
    context.deadline = u64::try_from(SystemClock.now_ms() - 1_000).unwrap();
    let response = handle(LambdaEvent::new(sample_batch(), context), &s.deps)
        .await
        .unwrap();
    assert!(s.provider.sent.lock().unwrap().is_empty());
    let ids: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    // The poison record is still acknowledged: it needs no provider.
    assert!(
        !ids.contains(&"3b1f6c1e-2d4a-4f7e-9a51-6f0c2d8e1a03"),
        "{ids:?}"
    );
    assert!(
        ids.contains(&"3b1f6c1e-2d4a-4f7e-9a51-6f0c2d8e1a01"),
        "{ids:?}"
    );
    assert!(
        ids.contains(&"3b1f6c1e-2d4a-4f7e-9a51-6f0c2d8e1a02"),
        "{ids:?}"
    );
}

#[tokio::test]
async fn a_batch_from_the_bulk_lane_is_deferred_on_the_bulk_queue() {
    let clock = Arc::new(ManualClock::new(1_795_856_400_000));
    let transactional = Arc::new(MemoryQueue::new(Arc::clone(&clock) as Arc<dyn Clock>));
    let bulk = Arc::new(MemoryQueue::new(Arc::clone(&clock) as Arc<dyn Clock>));
    let mut s = setup_with(
        Some(ErrorClass::Unavailable),
        Arc::clone(&clock) as Arc<dyn Clock>,
        Arc::clone(&transactional) as Arc<dyn Queue>,
    );
    let arn = "arn:aws:sqs:eu-west-1:123456789012:outbound-bulk";
    s.deps.bulk = Some((arn.to_owned(), Arc::clone(&bulk) as Arc<dyn Queue>));
    bulk.send(&good_body("m-bulk")).await.unwrap();
    let received = bulk
        .receive(10, Duration::ZERO, Duration::from_secs(3600))
        .await
        .unwrap();
    let mut event = SqsEvent::default();
    event.records = received
        .iter()
        .map(|r| {
            let mut record = record_of(r);
            record.event_source_arn = Some(arn.to_owned());
            record
        })
        .collect();
    let mut context = Context::default();
    context.request_id = "req-bulk".into();
    context.deadline = u64::try_from(clock.now_ms() + 60_000).unwrap();
    let response = handle(LambdaEvent::new(event, context), &s.deps)
        .await
        .unwrap();
    assert_eq!(response.batch_item_failures.len(), 1);
    // Its retry delay was set on the bulk queue: back there after it, not after an hour.
    clock.advance(31_000);
    let again = bulk
        .receive(10, Duration::ZERO, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "the deferral went to another queue");
}
