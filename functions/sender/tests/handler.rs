//! The sender handler on the sample event `events/sqs-batch.json`, with in-memory state, queue
//! and event sink and a scripted provider: what the Lambda runtime gets back, what was sent and
//! what was reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use gateway_core::clock::{Clock, SystemClock};
use gateway_core::config::load_config;
use gateway_core::events::{EventSink, GatewayEvent, MemoryEventSink, Outcome};
use gateway_core::message::OutboundMessage;
use gateway_core::pipeline::{Pipeline, PipelineSettings};
use gateway_core::providers::{Accepted, ErrorClass, ProbeReport, Provider, SendError};
use gateway_core::queue::Queue;
use gateway_core::queue::memory::MemoryQueue;
use gateway_core::state::StateStore;
use gateway_core::state::memory::MemoryStore;
use lambda_runtime::{Context, LambdaEvent};
use sender::{Deps, handle};

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
        Ok(ProbeReport {
            latency: Duration::ZERO,
        })
    }
}

struct Setup {
    deps: Deps,
    provider: Arc<Fake>,
    sink: Arc<MemoryEventSink>,
}

fn setup(fail: Option<ErrorClass>) -> Setup {
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
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let providers = HashMap::from([(
        "primary".to_owned(),
        Arc::clone(&provider) as Arc<dyn Provider>,
    )]);
    let pipeline = Pipeline::new(
        Arc::new(config),
        providers,
        Arc::new(MemoryStore::new()) as Arc<dyn StateStore>,
        Arc::clone(&sink) as Arc<dyn EventSink>,
        Arc::clone(&clock),
        PipelineSettings::default(),
    );
    Setup {
        deps: Deps {
            pipeline: Arc::new(pipeline),
            queue: Arc::new(MemoryQueue::new(clock)) as Arc<dyn Queue>,
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
