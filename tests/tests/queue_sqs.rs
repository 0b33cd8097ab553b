//! The queue contract against SQS in the moto emulator and against the in-memory queue, through
//! the same suite; and the SQS event sink delivering events that parse back.
//!
//! Needs the emulator: `scripts/services up && source .local/services.env`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code: a failed setup step should fail the test loudly"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use gateway_core::clock::ManualClock;
use gateway_core::events::{EventSink, GatewayEvent, HealthEvent, HealthStatus, SinkError};
use gateway_core::queue::contract::{QueueFactory, async_trait, run_all};
use gateway_core::queue::memory::{MemoryQueue, Redrive};
use gateway_core::queue::sqs::{
    Client, RedrivePolicy, SqsQueue, client_from_env, create_queue, queue_arn,
};
use gateway_core::queue::{Queue, QueueError};
use gateway_core::sqs_sink::{MAX_EVENT_BYTES, SqsEventSink};
use gateway_tests::moto_url;

const NOW: i64 = 1_795_910_400_000;

/// Fresh SQS queues with names unique to this run.
struct Sqs {
    client: Client,
    prefix: String,
    next: AtomicU32,
}

impl Sqs {
    async fn new(tag: &str) -> Self {
        moto_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Self {
            client: client_from_env().await,
            prefix: format!("{tag}-{}-{nanos}", std::process::id()),
            next: AtomicU32::new(0),
        }
    }

    async fn create(&self, redrive: Option<&RedrivePolicy>) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        create_queue(&self.client, &format!("{}-{n}", self.prefix), redrive)
            .await
            .unwrap_or_else(|e| panic!("creating a queue in moto: {e}"))
    }

    fn queue(&self, url: String) -> SqsQueue {
        SqsQueue::new(self.client.clone(), url)
    }
}

#[async_trait]
impl QueueFactory for Sqs {
    async fn fresh(&self) -> Box<dyn Queue> {
        Box::new(self.queue(self.create(None).await))
    }

    async fn fresh_with_redrive(&self, max_receive_count: u32) -> (Box<dyn Queue>, Box<dyn Queue>) {
        let dlq_url = self.create(None).await;
        let policy = RedrivePolicy {
            dead_letter_arn: queue_arn(&self.client, &dlq_url).await.unwrap(),
            max_receive_count,
        };
        let url = self.create(Some(&policy)).await;
        (Box::new(self.queue(url)), Box::new(self.queue(dlq_url)))
    }
}

struct Memory(Arc<ManualClock>);

#[async_trait]
impl QueueFactory for Memory {
    async fn fresh(&self) -> Box<dyn Queue> {
        Box::new(MemoryQueue::new(self.0.clone()))
    }

    async fn fresh_with_redrive(&self, max_receive_count: u32) -> (Box<dyn Queue>, Box<dyn Queue>) {
        let dead_letter = Arc::new(MemoryQueue::new(self.0.clone()));
        let queue = MemoryQueue::with_redrive(
            self.0.clone(),
            Redrive {
                dead_letter: dead_letter.clone(),
                max_receive_count,
            },
        );
        (Box::new(queue), Box::new(dead_letter))
    }
}

#[tokio::test]
async fn contract_suite_passes_on_sqs() {
    run_all(&Sqs::new("contract").await).await;
}

/// The emulator wrapper holds moto to SQS's rule that the 12 hours count from the receive (a
/// rule moto does not enforce): two seconds after a receive, 43,199 s more are refused, single
/// and batched, with SQS's code; what the sender asks for at most is accepted.
#[tokio::test]
async fn the_twelve_hours_count_from_the_receive() {
    use gateway_core::queue::{EntryFailureReason, MAX_DEFERRAL, VisibilityChange};
    let sqs = Sqs::new("twelve").await;
    let q = sqs.queue(sqs.create(None).await);
    q.send("wait").await.unwrap();
    let got = q
        .receive(1, Duration::from_secs(5), Duration::from_secs(30))
        .await
        .unwrap()
        .pop()
        .expect("the message");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let almost = Duration::from_secs(43_199);
    match q.change_visibility(&got.receipt_handle, almost).await {
        Err(QueueError::Refused { code }) => assert_eq!(code, "InvalidParameterValue"),
        other => panic!("expected SQS's refusal, got {other:?}"),
    }
    let failed = q
        .change_visibility_batch(&[VisibilityChange {
            receipt_handle: got.receipt_handle.clone(),
            visibility: almost,
        }])
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        !matches!(
            failed[0].reason,
            EntryFailureReason::Other {
                retryable: true,
                ..
            }
        ),
        "a refusal, not a fault worth repeating: {failed:?}"
    );
    q.change_visibility(&got.receipt_handle, MAX_DEFERRAL)
        .await
        .unwrap();
    assert!(
        q.change_visibility_batch(&[VisibilityChange {
            receipt_handle: got.receipt_handle,
            visibility: MAX_DEFERRAL,
        }])
        .await
        .unwrap()
        .is_empty()
    );
}

#[tokio::test]
async fn contract_suite_passes_on_memory_queue() {
    run_all(&Memory(Arc::new(ManualClock::new(NOW)))).await;
}

#[tokio::test]
async fn receive_from_a_missing_queue_is_not_retryable() {
    let sqs = Sqs::new("missing").await;
    let url = sqs.create(None).await;
    let gone = format!("{url}-does-not-exist");
    let err = sqs
        .queue(gone)
        .receive(1, Duration::ZERO, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::MissingQueue { .. }), "{err:?}");
    assert!(!err.is_retryable());
}

fn health(i: usize, error_len: usize) -> GatewayEvent {
    GatewayEvent::Health(HealthEvent {
        gateway_id: format!("gw-{i:02}"),
        gateway_type: "simulated".into(),
        status: HealthStatus::Healthy,
        latency_ms: Some(i as u64),
        consecutive_failures: 0,
        consecutive_successes: 1,
        error: (error_len > 0).then(|| "e".repeat(error_len)),
        at: NOW + i as i64,
    })
}

#[tokio::test]
async fn twenty_five_events_arrive_on_the_events_queue_and_parse_back() {
    let sqs = Sqs::new("events").await;
    let url = sqs.create(None).await;
    let sink = SqsEventSink::new(sqs.client.clone(), url.clone());
    let sent: Vec<GatewayEvent> = (0..25).map(|i| health(i, 0)).collect();
    sink.emit(&sent).await.unwrap();

    let queue = sqs.queue(url);
    let mut got = Vec::new();
    for _ in 0..20 {
        if got.len() >= sent.len() {
            break;
        }
        for r in queue
            .receive(10, Duration::from_secs(1), Duration::from_secs(60))
            .await
            .unwrap()
        {
            let event: GatewayEvent = serde_json::from_str(&r.body)
                .unwrap_or_else(|e| panic!("body is not an event: {e}: {}", r.body));
            got.push(event);
        }
    }
    let key = |e: &GatewayEvent| match e {
        GatewayEvent::Health(h) => h.gateway_id.clone(),
        other => panic!("unexpected event {other:?}"),
    };
    got.sort_by_key(key);
    assert_eq!(got, sent);
}

#[tokio::test]
async fn event_larger_than_the_bound_is_refused_and_nothing_is_sent() {
    let sqs = Sqs::new("events-large").await;
    let url = sqs.create(None).await;
    let sink = SqsEventSink::new(sqs.client.clone(), url.clone());
    let err = sink
        .emit(&[health(0, 0), health(1, MAX_EVENT_BYTES)])
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::TooLarge { .. }), "{err:?}");
    assert!(!err.is_retryable());
    let left = sqs
        .queue(url)
        .receive(10, Duration::ZERO, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(left.is_empty(), "{} events were sent", left.len());
}

#[tokio::test]
async fn sink_on_a_missing_queue_is_unavailable_and_retryable() {
    let sqs = Sqs::new("events-missing").await;
    let url = sqs.create(None).await;
    let sink = SqsEventSink::new(sqs.client.clone(), format!("{url}-gone")).with_retry(
        gateway_core::sqs_sink::SinkRetry {
            attempts: 2,
            base_delay: Duration::from_millis(1),
        },
    );
    let err = sink.emit(&[health(0, 0)]).await.unwrap_err();
    assert!(matches!(err, SinkError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
}
