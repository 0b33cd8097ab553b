//! The pipeline over in-memory parts: scripted providers, the memory store (which honours
//! conditions exactly as DynamoDB does), a memory event sink and a manual clock. The same
//! behaviour is checked against moto and HTTP fakes in the `gateway-tests` crate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::clock::{DAY_MS, ManualClock};
use crate::config::load_config;
use crate::events::{
    GatewayEvent, MemoryEventSink, OutcomeClass, OutcomeEvent, RecipientStatus, SinkError,
};
use crate::ledger::{self, Entry};
use crate::message::OutboundMessage;
use crate::providers::{Accepted, ErrorClass, ProbeReport, Provider, SendError};
use crate::queue::Received;
use crate::state::memory::MemoryStore;
use crate::state::{Item, Key, StoreError, TransactOutcome, Write, WriteOutcome};
use crate::suppression::{self, Reason, Scope, Suppression};

/// 2026-11-28T10:00:00Z.
mod attachments;
mod lanes;
mod levers;

const T0: EpochMillis = 1_795_860_000_000;
const LEASE_MS: i64 = 60_000;

#[derive(Debug, Clone, Copy)]
enum Reply {
    Accept,
    Fail(ErrorClass, Option<EpochMillis>),
    /// Never answers (the pipeline abandons the call at the deadline).
    Hang,
    /// Fails with this provider text (which may quote addresses, as SES's does).
    FailSaying(ErrorClass, &'static str),
}

#[derive(Debug)]
struct Scripted {
    id: String,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    calls: Mutex<Vec<String>>,
}

impl Scripted {
    fn new(id: &str, default: Reply) -> Arc<Self> {
        Arc::new(Self {
            id: id.to_owned(),
            script: Mutex::default(),
            default: Mutex::new(default),
            calls: Mutex::default(),
        })
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn set(&self, reply: Reply) {
        *self.default.lock().unwrap() = reply;
    }
}

#[async_trait]
impl Provider for Scripted {
    fn gateway_id(&self) -> &str {
        &self.id
    }

    async fn send(
        &self,
        message: &OutboundMessage,
        _now: EpochMillis,
    ) -> Result<Accepted, SendError> {
        self.calls.lock().unwrap().push(message.id().to_owned());
        let reply = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(*self.default.lock().unwrap());
        match reply {
            Reply::Accept => Ok(Accepted {
                provider_message_id: Some(format!("<{}@{}>", message.id(), self.id)),
                substituted_sender: None,
            }),
            Reply::Fail(class, retry_after) => {
                let mut e = SendError::new(class, "scripted", format!("scripted {class:?}"));
                e.retry_after = retry_after;
                e.http_status = Some(match class {
                    ErrorClass::Throttled => 429,
                    ErrorClass::Auth => 401,
                    ErrorClass::Permanent | ErrorClass::Unsuitable => 400,
                    _ => 503,
                });
                Err(e)
            }
            Reply::FailSaying(class, text) => {
                let mut e = SendError::new(class, "scripted", text);
                e.http_status = Some(400);
                Err(e)
            }
            Reply::Hang => {
                std::future::pending::<()>().await;
                unreachable!()
            }
        }
    }

    async fn probe(&self) -> Result<ProbeReport, SendError> {
        Ok(ProbeReport::new(Duration::ZERO))
    }
}

/// A memory store whose batch puts (the ledger's sent marks) can be made to fail.
#[derive(Debug, Default)]
struct FlakyStore {
    inner: MemoryStore,
    /// Ledger marks of sends (puts of `msg#` items) fail.
    fail_puts: AtomicBool,
    /// Ledger marks of sends never answer.
    hang_puts: AtomicBool,
}

impl FlakyStore {
    async fn mark_hook(&self) -> Result<(), StoreError> {
        if self.fail_puts.load(Ordering::SeqCst) {
            return Err(StoreError::Throttled);
        }
        if self.hang_puts.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

#[async_trait]
impl StateStore for FlakyStore {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        self.inner.get_many(keys).await
    }
    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        if write.key.starts_with("msg#") && matches!(write.op, crate::state::WriteOp::Put(_)) {
            self.mark_hook().await?;
        }
        self.inner.write(write).await
    }
    async fn transact(&self, writes: Vec<Write>) -> Result<TransactOutcome, StoreError> {
        self.inner.transact(writes).await
    }
    async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
        self.mark_hook().await?;
        self.inner.put_many(items).await
    }
}

/// An event sink that can be made to fail.
#[derive(Debug, Default)]
struct Sink {
    inner: MemoryEventSink,
    down: AtomicBool,
    /// Largest event accepted, in bytes of JSON (0: any); a larger one fails the whole call,
    /// as the SQS sink's `emit` does.
    max_bytes: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl EventSink for Sink {
    async fn emit(&self, events: &[GatewayEvent]) -> Result<(), SinkError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SinkError::Unavailable("sink down".into()));
        }
        let max = self.max_bytes.load(Ordering::SeqCst);
        for event in events {
            let bytes = serde_json::to_string(event).unwrap().len();
            if max > 0 && bytes > max {
                return Err(SinkError::TooLarge { bytes, max });
            }
        }
        self.inner.emit(events).await
    }
}

struct Harness {
    pipeline: Pipeline,
    store: Arc<FlakyStore>,
    sink: Arc<Sink>,
    clock: Arc<ManualClock>,
    providers: HashMap<String, Arc<Scripted>>,
    batches: Mutex<u32>,
}

/// Gateways `a`, `b`, … with priorities in that order, each answering `default`.
fn config_json(gateways: &[&str], extra_gateway: &str, routing: &str) -> String {
    let list: Vec<String> = gateways
        .iter()
        .enumerate()
        .map(|(i, id)| {
            format!(
                r#"{{"id": "{id}", "type": "capture", "display_name": "{id}", "priority": {p},
                    "capture": {{"directory": "/tmp/unused"}},
                    "routing": {{"can_route": ["*"]}} {extra_gateway}}}"#,
                p = i + 1
            )
        })
        .collect();
    format!(
        r#"{{"gateways": [{}], "routing": {{"strategy": "priority" {routing}}}}}"#,
        list.join(",")
    )
}

fn harness(gateways: &[(&str, Reply)], extra_gateway: &str, routing: &str) -> Harness {
    harness_with(
        gateways,
        extra_gateway,
        routing,
        PipelineSettings::default(),
    )
}

fn harness_with(
    gateways: &[(&str, Reply)],
    extra_gateway: &str,
    routing: &str,
    settings: PipelineSettings,
) -> Harness {
    let ids: Vec<&str> = gateways.iter().map(|(id, _)| *id).collect();
    let json = config_json(&ids, extra_gateway, routing);
    let config = match load_config(Some(&json), None, &|_| None) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("test config invalid: {e:?}\n{json}"),
    };
    let providers: HashMap<String, Arc<Scripted>> = gateways
        .iter()
        .map(|(id, reply)| ((*id).to_owned(), Scripted::new(id, *reply)))
        .collect();
    let store = Arc::new(FlakyStore::default());
    let sink = Arc::new(Sink::default());
    let clock = Arc::new(ManualClock::new(T0));
    let pipeline = Pipeline::new(
        Arc::new(config),
        providers
            .iter()
            .map(|(id, p)| (id.clone(), Arc::clone(p) as Arc<dyn Provider>))
            .collect(),
        Arc::clone(&store) as Arc<dyn StateStore>,
        Arc::clone(&sink) as Arc<dyn EventSink>,
        Arc::clone(&clock) as Arc<dyn Clock>,
        settings,
    );
    Harness {
        pipeline,
        store,
        sink,
        clock,
        providers,
        batches: Mutex::new(0),
    }
}

fn body(id: &str, from: &str, to: &[&str]) -> String {
    serde_json::json!({
        "id": id, "from": from, "to": to, "subject": "Your appointment", "text": "See you",
    })
    .to_string()
}

fn record(n: usize, body: String) -> Received {
    Received {
        message_id: format!("sqs-{n}"),
        receipt_handle: format!("rh-{n}"),
        body,
        receive_count: 1,
        sent_at: T0,
    }
}

fn records(bodies: Vec<String>) -> Vec<Received> {
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| record(i, b))
        .collect()
}

/// A batch of one message, `m-1` from `dr@clinic.example` to `p@example.org`.
fn one_message() -> Vec<Received> {
    records(vec![body("m-1", "dr@clinic.example", &["p@example.org"])])
}

impl Harness {
    async fn run(&self, records: &[Received]) -> BatchReport {
        let n = {
            let mut b = self.batches.lock().unwrap();
            *b += 1;
            *b
        };
        let owner = format!("inv-{n}");
        self.pipeline
            .process(Batch {
                records,
                owner: &owner,
                deadline: self.clock.now_ms() + LEASE_MS,
            })
            .await
    }

    fn calls(&self, id: &str) -> Vec<String> {
        self.providers[id].calls()
    }

    fn outcomes(&self) -> Vec<OutcomeEvent> {
        self.sink
            .inner
            .take()
            .into_iter()
            .filter_map(|e| match e {
                GatewayEvent::Outcome(o) => Some(o),
                _ => None,
            })
            .collect()
    }

    async fn ledger(&self, id: &str) -> Option<Entry> {
        ledger::lookup(self.store.as_ref(), id).await.unwrap()
    }
}

fn retry_after(item: &ItemReport) -> Duration {
    match item.disposition {
        Disposition::Retry { after } => after,
        Disposition::Done => panic!("{} is done, expected a retry", item.queue_message_id),
    }
}

#[tokio::test]
async fn a_batch_is_sent_recorded_and_acknowledged() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    let batch = records(
        (0..3)
            .map(|i| {
                body(
                    &format!("m-{i}"),
                    "Dr. A <dr@clinic.example>",
                    &["p@example.org"],
                )
            })
            .collect(),
    );
    let report = h.run(&batch).await;
    assert!(
        report
            .items
            .iter()
            .all(|i| i.disposition == Disposition::Done)
    );
    assert!(
        report
            .items
            .iter()
            .all(|i| i.outcome == Outcome::Sent && !i.replayed)
    );
    assert_eq!(h.calls("a"), ["m-0", "m-1", "m-2"]);
    let events = h.outcomes();
    assert_eq!(events.len(), 3);
    for e in &events {
        assert_eq!(e.outcome, Outcome::Sent);
        assert_eq!(e.gateway_id.as_deref(), Some("a"));
        assert_eq!(e.sender, "dr@clinic.example");
        assert_eq!(e.recipients[0].status, RecipientStatus::Sent);
        assert_eq!(e.attempts.len(), 1);
        assert_eq!(
            e.provider_message_id.as_deref(),
            Some(format!("<{}@a>", e.message_id).as_str())
        );
    }
    for i in 0..3 {
        assert!(matches!(
            h.ledger(&format!("m-{i}")).await,
            Some(Entry::Sent(_))
        ));
    }
    assert_eq!(report.metrics.sent, 3);
    assert_eq!(report.metrics.gateways["a"].attempts, 3);
}

#[tokio::test]
async fn a_poison_record_does_not_fail_the_other_nine() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    let mut bodies: Vec<String> = (0..10)
        .map(|i| body(&format!("m-{i}"), "dr@clinic.example", &["p@example.org"]))
        .collect();
    bodies[4] =
        r#"{"id": "bad-1", "from": "dr@clinic.example", "to": ["p@example.org"], "subject": "x"}"#
            .into();
    let report = h.run(&records(bodies)).await;
    assert!(
        report
            .items
            .iter()
            .all(|i| i.disposition == Disposition::Done)
    );
    assert_eq!(report.failures().count(), 0);
    assert_eq!(report.items[4].outcome, Outcome::Rejected);
    assert_eq!(report.items[4].message_id.as_deref(), Some("bad-1"));
    assert!(
        report.items[4].reason.as_deref().unwrap().contains("text"),
        "{:?}",
        report.items[4].reason
    );
    assert_eq!(h.calls("a").len(), 9);
    let events = h.outcomes();
    let rejected: Vec<&OutcomeEvent> = events
        .iter()
        .filter(|e| e.outcome == Outcome::Rejected)
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].message_id, "bad-1");
    assert_eq!(rejected[0].recipients[0].status, RecipientStatus::Rejected);
    assert_eq!(events.len(), 10);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_rejected_under_its_queue_id() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    let report = h.run(&[record(7, "not json".into())]).await;
    assert_eq!(report.items[0].disposition, Disposition::Done);
    assert_eq!(report.items[0].message_id.as_deref(), Some("sqs-7"));
    assert_eq!(h.outcomes()[0].message_id, "sqs-7");
}

#[tokio::test]
async fn a_duplicate_in_the_same_batch_is_sent_once() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    let b = body("m-1", "dr@clinic.example", &["p@example.org"]);
    let report = h.run(&records(vec![b.clone(), b])).await;
    assert_eq!(h.calls("a"), ["m-1"]);
    assert_eq!(report.items[1].disposition, Disposition::Done);
    assert!(report.items[1].replayed);
    assert_eq!(h.outcomes().len(), 1);
}

#[tokio::test]
async fn redelivery_of_a_sent_message_calls_no_provider_and_re_emits_its_event() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    let batch = one_message();
    h.run(&batch).await;
    let first = h.outcomes();
    let report = h.run(&batch).await;
    assert_eq!(h.calls("a").len(), 1);
    assert_eq!(report.items[0].disposition, Disposition::Done);
    assert!(report.items[0].replayed);
    let again = h.outcomes();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].outcome, Outcome::Sent);
    assert_eq!(again[0].provider_message_id, first[0].provider_message_id);
    assert_eq!(again[0].gateway_id.as_deref(), Some("a"));
}

#[tokio::test]
async fn an_unavailable_primary_fails_over_to_the_secondary() {
    let h = harness(
        &[
            ("a", Reply::Fail(ErrorClass::Unavailable, None)),
            ("b", Reply::Accept),
        ],
        "",
        "",
    );
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].outcome, Outcome::Sent);
    assert_eq!(report.items[0].gateway.as_deref(), Some("b"));
    assert_eq!(report.metrics.failovers, 1);
    let e = &h.outcomes()[0];
    let classes: Vec<(&str, OutcomeClass)> = e
        .attempts
        .iter()
        .map(|a| (a.gateway.as_str(), a.class))
        .collect();
    assert_eq!(
        classes,
        [("a", OutcomeClass::Unavailable), ("b", OutcomeClass::Ok)]
    );
    assert_eq!(e.attempts[0].http_status, Some(503));
}

#[tokio::test]
async fn throttled_and_auth_failures_fail_over_too() {
    for class in [ErrorClass::Throttled, ErrorClass::Auth] {
        let h = harness(
            &[
                ("a", Reply::Fail(class, Some(T0 + 5_000))),
                ("b", Reply::Accept),
            ],
            "",
            "",
        );
        let report = h.run(&one_message()).await;
        assert_eq!(report.items[0].gateway.as_deref(), Some("b"), "{class:?}");
        assert_eq!(h.calls("a").len(), 1);
    }
}

#[tokio::test]
async fn a_permanent_refusal_stops_without_failover() {
    let h = harness(
        &[
            ("a", Reply::Fail(ErrorClass::Permanent, None)),
            ("b", Reply::Accept),
        ],
        "",
        "",
    );
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].outcome, Outcome::Failed);
    assert_eq!(report.items[0].disposition, Disposition::Done);
    assert!(h.calls("b").is_empty());
    assert!(matches!(h.ledger("m-1").await, Some(Entry::Failed(_))));
    let e = &h.outcomes()[0];
    assert_eq!(e.outcome, Outcome::Failed);
    assert_eq!(e.recipients[0].status, RecipientStatus::Failed);
    // The redelivery does not try again.
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].outcome, Outcome::Failed);
    assert!(report.items[0].replayed);
    assert_eq!(h.calls("a").len(), 1);
}

/// A message over a gateway's recipient or size limit (60 recipients for SES's 50) can never
/// go there: when no candidate can take it, it is rejected with the limits as the reason
/// instead of being deferred until it lands in the dead-letter queue.
#[tokio::test]
async fn a_message_no_gateway_can_take_is_rejected_with_the_reasons() {
    let h = harness(
        &[
            ("a", Reply::Fail(ErrorClass::Unsuitable, None)),
            ("b", Reply::Fail(ErrorClass::Unsuitable, None)),
        ],
        "",
        "",
    );
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].outcome, Outcome::Rejected);
    assert_eq!(report.items[0].disposition, Disposition::Done);
    assert_eq!(
        report.items[0].reason.as_deref(),
        Some(
            "no gateway can take the message: a: cannot take it: scripted Unsuitable; \
             b: cannot take it: scripted Unsuitable"
        )
    );
    assert!(matches!(h.ledger("m-1").await, Some(Entry::Failed(_))));
    let e = &h.outcomes()[0];
    assert_eq!(e.outcome, Outcome::Rejected);
    assert_eq!(e.recipients[0].status, RecipientStatus::Rejected);
}

/// A gateway that cannot take the message does not use up one of the
/// `max_failover_attempts`: the fourth routed gateway still gets the message.
#[tokio::test]
async fn unsuitable_gateways_do_not_use_up_the_failover_attempts() {
    let unsuitable = Reply::Fail(ErrorClass::Unsuitable, None);
    let h = harness(
        &[
            ("a", unsuitable),
            ("b", unsuitable),
            ("c", unsuitable),
            ("d", Reply::Accept),
        ],
        "",
        "",
    );
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].outcome, Outcome::Sent);
    assert_eq!(report.items[0].gateway.as_deref(), Some("d"));
    // Other failures still count: with a, b, c unavailable, d is past the bound of 3.
    let h = harness(
        &[
            ("a", Reply::Fail(ErrorClass::Unavailable, None)),
            ("b", Reply::Fail(ErrorClass::Unavailable, None)),
            ("c", unsuitable),
            ("d", Reply::Accept),
        ],
        "",
        "",
    );
    let report = h.run(&one_message()).await;
    assert_eq!(
        report.items[0].outcome,
        Outcome::Sent,
        "c handed its place to d"
    );
    let h = harness(
        &[
            ("a", Reply::Fail(ErrorClass::Unavailable, None)),
            ("b", Reply::Fail(ErrorClass::Unavailable, None)),
            ("c", Reply::Fail(ErrorClass::Unavailable, None)),
            ("d", Reply::Accept),
        ],
        "",
        "",
    );
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].outcome, Outcome::Deferred);
    assert!(h.calls("d").is_empty());
}

#[tokio::test]
async fn an_ambiguous_answer_is_deferred_without_failover_and_the_claim_kept() {
    let h = harness(
        &[
            ("a", Reply::Fail(ErrorClass::Ambiguous, None)),
            ("b", Reply::Accept),
        ],
        "",
        "",
    );
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].outcome, Outcome::Deferred);
    assert!(h.calls("b").is_empty());
    // Not visible again before this invocation's lease has ended.
    assert!(retry_after(&report.items[0]) >= Duration::from_millis(LEASE_MS as u64));
    assert!(matches!(h.ledger("m-1").await, Some(Entry::Claimed { .. })));
    assert!(
        report.items[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("may have accepted")
    );
}

#[tokio::test]
async fn the_failover_policy_sends_an_ambiguous_message_on() {
    let h = harness(
        &[
            ("a", Reply::Fail(ErrorClass::Ambiguous, None)),
            ("b", Reply::Accept),
        ],
        "",
        r#", "ambiguous_policy": "failover""#,
    );
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].gateway.as_deref(), Some("b"));
    assert!(
        report.items[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("possible duplicate")
    );
}

#[tokio::test]
async fn when_every_gateway_fails_the_message_returns_at_the_earliest_providers_retry_time() {
    // Both said when to come back: the earlier one counts. (When one says nothing, the ordinary
    // backoff competes too: see a_far_limit_reset_does_not_hold_back_a_retry….)
    let h = harness(
        &[
            ("a", Reply::Fail(ErrorClass::Throttled, Some(T0 + 120_000))),
            ("b", Reply::Fail(ErrorClass::Throttled, Some(T0 + 300_000))),
        ],
        "",
        "",
    );
    let report = h.run(&one_message()).await;
    let after = retry_after(&report.items[0]);
    assert!(
        after >= Duration::from_secs(120) && after <= Duration::from_secs(150),
        "{after:?}"
    );
    // The claim was given back: the redelivery may claim at once.
    assert!(matches!(
        h.ledger("m-1").await,
        Some(Entry::Released { .. })
    ));
    let e = &h.outcomes()[0];
    assert_eq!(e.outcome, Outcome::Deferred);
    assert_eq!(e.attempts.len(), 2);
    assert!(e.retry_at.is_some());
}

#[tokio::test]
async fn a_senders_fourth_message_over_its_daily_limit_goes_to_the_next_gateway() {
    let h = harness(
        &[("a", Reply::Accept), ("b", Reply::Accept)],
        r#", "rate_limits": {"per_user_daily": 3}"#,
        "",
    );
    let batch = records(
        (0..4)
            .map(|i| body(&format!("m-{i}"), "dr@clinic.example", &["p@example.org"]))
            .collect(),
    );
    let report = h.run(&batch).await;
    assert_eq!(h.calls("a").len(), 3);
    assert_eq!(h.calls("b").len(), 1);
    assert!(report.items.iter().all(|i| i.outcome == Outcome::Sent));
    assert_eq!(report.metrics.gateways["a"].limited, 1);
}

#[tokio::test]
async fn over_the_limit_everywhere_the_message_waits_for_the_window_to_reset() {
    let h = harness(
        &[("a", Reply::Accept)],
        r#", "rate_limits": {"per_user_daily": 3}"#,
        "",
    );
    let batch = records(
        (0..4)
            .map(|i| body(&format!("m-{i}"), "dr@clinic.example", &["p@example.org"]))
            .collect(),
    );
    let report = h.run(&batch).await;
    assert_eq!(h.calls("a").len(), 3);
    let deferred = &report.items[3];
    assert_eq!(deferred.outcome, Outcome::Deferred);
    // 10:00 UTC → the next UTC day starts in 14 h, beyond what SQS accepts: the longest
    // deferral, and deferred again when it comes back.
    assert_eq!(retry_after(deferred), crate::queue::MAX_DEFERRAL);
    assert!(deferred.reason.as_deref().unwrap().contains("limit"));
    // A sender's limit never admits more, whatever the batches.
    let more = records(vec![body("m-9", "DR@clinic.example", &["p@example.org"])]);
    h.run(&more).await;
    assert_eq!(h.calls("a").len(), 3);
    // Next day it goes.
    h.clock.advance(DAY_MS);
    let report = h.run(&more).await;
    assert_eq!(report.items[0].outcome, Outcome::Sent);
}

#[tokio::test]
async fn a_failing_provider_opens_its_breaker_and_then_gets_only_trial_calls() {
    // Threshold 3, 2 trial calls, 2 successes close it, 30 s open.
    let h = harness(
        &[("a", Reply::Fail(ErrorClass::Unavailable, None))],
        r#", "circuit_breaker": {"failure_threshold": 3, "success_threshold": 2, "max_requests": 2, "timeout": "30s"}"#,
        "",
    );
    let msgs = |from: usize, n: usize| {
        records(
            (from..from + n)
                .map(|i| body(&format!("m-{i}"), "dr@clinic.example", &["p@example.org"]))
                .collect(),
        )
    };
    let report = h.run(&msgs(0, 3)).await;
    assert_eq!(h.calls("a").len(), 3);
    assert!(
        report
            .transitions
            .iter()
            .any(|t| t.to == crate::breaker::Phase::Open)
    );
    // The transition is recorded through the event sink.
    let breaker_events: Vec<_> = h
        .sink
        .inner
        .take()
        .into_iter()
        .filter_map(|e| match e {
            GatewayEvent::Breaker(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(breaker_events.len(), 1);
    assert_eq!(breaker_events[0].to, crate::breaker::Phase::Open);
    // Open: no call reaches it; messages are deferred until the open period ends.
    h.clock.advance(1_000);
    let report = h.run(&msgs(3, 5)).await;
    assert_eq!(h.calls("a").len(), 3);
    let after = retry_after(&report.items[0]);
    assert!(
        after >= Duration::from_secs(29) && after <= Duration::from_secs(35),
        "{after:?}"
    );
    // After the timeout: exactly max_requests trial calls, whatever the batch size.
    h.clock.advance(30_000);
    h.providers["a"].set(Reply::Accept);
    let report = h.run(&msgs(10, 5)).await;
    assert_eq!(h.calls("a").len(), 5, "two trials");
    assert_eq!(report.metrics.sent, 2);
    // Two successes closed it: everything flows again.
    assert!(
        report
            .transitions
            .iter()
            .any(|t| t.to == crate::breaker::Phase::Closed)
    );
    let report = h.run(&msgs(20, 4)).await;
    assert_eq!(report.metrics.sent, 4);
}

#[tokio::test]
async fn suppressed_recipients_are_left_out_and_all_suppressed_is_rejected() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    suppression::add(
        h.store.as_ref(),
        &Suppression::new("gone@example.org", Reason::HardBounce, "test", T0),
    )
    .await
    .unwrap();
    let batch = records(vec![
        body(
            "m-1",
            "dr@clinic.example",
            &["p@example.org", "GONE@example.org"],
        ),
        body("m-2", "dr@clinic.example", &["gone@example.org"]),
    ]);
    let report = h.run(&batch).await;
    assert_eq!(report.items[0].outcome, Outcome::Sent);
    assert_eq!(report.items[1].outcome, Outcome::Rejected);
    assert_eq!(report.items[1].disposition, Disposition::Done);
    assert_eq!(h.calls("a"), ["m-1"]);
    let events = h.outcomes();
    let statuses: Vec<RecipientStatus> = events[0].recipients.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [RecipientStatus::Sent, RecipientStatus::Suppressed]
    );
    assert_eq!(events[1].recipients[0].status, RecipientStatus::Suppressed);
    assert_eq!(report.metrics.suppressed_recipients, 2);
}

/// A message of `stream` from `dr@clinic.example` to `to`.
fn body_in(id: &str, to: &[&str], stream: &str) -> String {
    serde_json::json!({
        "id": id, "from": "dr@clinic.example", "to": to, "subject": "s", "text": "t",
        "stream": stream,
    })
    .to_string()
}

#[tokio::test]
async fn a_bulk_unsubscribe_blocks_bulk_mail_only_and_a_hard_bounce_blocks_both() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    let bulk = Scope::Stream(crate::message::Stream::Bulk);
    suppression::add(
        h.store.as_ref(),
        &Suppression::new("unsub@example.org", Reason::Unsubscribe, "mg:u", T0).in_scope(bulk),
    )
    .await
    .unwrap();
    suppression::add(
        h.store.as_ref(),
        &Suppression::new("bounced@example.org", Reason::HardBounce, "mg:b", T0),
    )
    .await
    .unwrap();
    let batch = records(vec![
        body_in("m-t", &["unsub@example.org"], "transactional"),
        body("m-default", "dr@clinic.example", &["unsub@example.org"]),
        body_in("m-b", &["unsub@example.org", "p@example.org"], "bulk"),
        body_in("m-bounce-t", &["bounced@example.org"], "transactional"),
        body_in("m-bounce-b", &["bounced@example.org"], "bulk"),
    ]);
    let report = h.run(&batch).await;
    let outcomes: Vec<Outcome> = report.items.iter().map(|i| i.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Sent,
            Outcome::Sent,
            Outcome::Sent,
            Outcome::Rejected,
            Outcome::Rejected
        ]
    );
    let mut calls = h.calls("a");
    calls.sort();
    assert_eq!(calls, ["m-b", "m-default", "m-t"]);
    let events = h.outcomes();
    let of = |id: &str| {
        events
            .iter()
            .find(|e| e.message_id == id)
            .map(|e| e.recipients.iter().map(|r| r.status).collect::<Vec<_>>())
            .unwrap()
    };
    assert_eq!(of("m-t"), [RecipientStatus::Sent]);
    assert_eq!(
        of("m-b"),
        [RecipientStatus::Suppressed, RecipientStatus::Sent],
        "the unsubscribed recipient is left out of the bulk message"
    );
    assert_eq!(report.metrics.suppressed_recipients, 3);
}

#[tokio::test]
async fn when_events_cannot_be_emitted_the_sent_message_is_retried_and_replayed() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    h.sink.down.store(true, Ordering::SeqCst);
    let batch = one_message();
    let report = h.run(&batch).await;
    assert!(matches!(
        report.items[0].disposition,
        Disposition::Retry { .. }
    ));
    assert_eq!(report.metrics.emit_failures, 1);
    h.sink.down.store(false, Ordering::SeqCst);
    let report = h.run(&batch).await;
    assert_eq!(report.items[0].disposition, Disposition::Done);
    assert_eq!(h.calls("a").len(), 1);
    assert_eq!(h.outcomes()[0].outcome, Outcome::Sent);
}

#[tokio::test]
async fn a_send_the_ledger_could_not_record_is_still_reported_and_acknowledged() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    h.store.fail_puts.store(true, Ordering::SeqCst);
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].outcome, Outcome::Sent);
    // Acknowledged: no redelivery can send it again while the ledger still shows the claim.
    assert_eq!(report.items[0].disposition, Disposition::Done);
    assert_eq!(h.outcomes()[0].outcome, Outcome::Sent);
    assert!(matches!(h.ledger("m-1").await, Some(Entry::Claimed { .. })));
    // The process keeps the mark and writes it with its next batch's claims, so a later copy
    // of the message (an SQS duplicate, a redrive) finds it sent.
    h.store.fail_puts.store(false, Ordering::SeqCst);
    h.run(&records(vec![body(
        "m-2",
        "dr@clinic.example",
        &["p@example.org"],
    )]))
    .await;
    assert!(matches!(h.ledger("m-1").await, Some(Entry::Sent(_))));
    h.run(&one_message()).await;
    assert_eq!(h.calls("a"), ["m-1", "m-2"], "m-1 is not sent again");
}

#[tokio::test]
async fn a_crash_after_the_send_is_recovered_when_the_lease_expires_and_flagged() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    let batch = one_message();
    // The invocation dies after the provider accepted, before the ledger mark: the mark hangs
    // and the future is dropped.
    h.store.hang_puts.store(true, Ordering::SeqCst);
    let crashed = h.pipeline.process(Batch {
        records: &batch,
        owner: "crashed",
        deadline: T0 + LEASE_MS,
    });
    // Run it only until the provider call happened.
    tokio::select! {
        _ = crashed => {}
        () = async {
            while h.calls("a").is_empty() {
                tokio::task::yield_now().await;
            }
        } => {}
    }
    h.store.hang_puts.store(false, Ordering::SeqCst);
    assert_eq!(h.calls("a").len(), 1);
    assert!(
        h.outcomes().is_empty(),
        "the crashed invocation reported nothing"
    );
    // While the dead invocation's lease runs, a redelivery does not send.
    let report = h.run(&batch).await;
    assert_eq!(h.calls("a").len(), 1);
    assert!(matches!(
        report.items[0].disposition,
        Disposition::Retry { .. }
    ));
    // After it, the message is reclaimed, sent and recorded, flagged as a possible duplicate.
    h.clock.advance(LEASE_MS);
    let report = h.run(&batch).await;
    assert_eq!(report.items[0].outcome, Outcome::Sent);
    let events = h.outcomes();
    let sent = events.iter().find(|e| e.outcome == Outcome::Sent).unwrap();
    assert!(
        sent.reason.as_deref().unwrap().contains("crashed"),
        "{:?}",
        sent.reason
    );
    assert!(matches!(h.ledger("m-1").await, Some(Entry::Sent(_))));
}

#[tokio::test]
async fn near_the_deadline_nothing_is_started_and_everything_is_deferred() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    let batch = one_message();
    let report = h
        .pipeline
        .process(Batch {
            records: &batch,
            owner: "late",
            deadline: T0 + 1_000,
        })
        .await;
    assert!(h.calls("a").is_empty());
    assert_eq!(report.items[0].outcome, Outcome::Deferred);
    assert!(matches!(
        h.ledger("m-1").await,
        Some(Entry::Released { .. })
    ));
}

#[tokio::test]
async fn a_call_that_outlives_the_deadline_is_abandoned_as_ambiguous() {
    let h = harness(&[("a", Reply::Hang)], "", "");
    let batch = one_message();
    tokio::time::pause();
    let report = h
        .pipeline
        .process(Batch {
            records: &batch,
            owner: "slow",
            deadline: T0 + 5_000,
        })
        .await;
    assert_eq!(report.items[0].outcome, Outcome::Deferred);
    assert_eq!(report.metrics.gateways["a"].ambiguous, 1);
}

#[tokio::test]
async fn a_message_held_by_a_live_invocation_waits_for_its_lease() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    ledger::claim(h.store.as_ref(), "m-1", "other", T0 + 20_000, T0)
        .await
        .unwrap();
    let report = h.run(&one_message()).await;
    assert!(h.calls("a").is_empty());
    let after = retry_after(&report.items[0]);
    assert!(
        after >= Duration::from_secs(20) && after <= Duration::from_secs(23),
        "{after:?}"
    );
    assert!(h.outcomes().is_empty(), "the holder reports the outcome");
}

#[tokio::test]
async fn the_happy_path_costs_three_round_trips_of_state() {
    let h = harness(
        &[("a", Reply::Accept)],
        r#", "rate_limits": {"workspace_daily": 1000, "per_hour": 100, "burst_limit": 50, "per_user_daily": 100}"#,
        "",
    );
    let batch = |n: usize| {
        records(
            (0..10)
                .map(|i| {
                    body(
                        &format!("m-{n}-{i}"),
                        &format!("s{i}@clinic.example"),
                        &["p@example.org"],
                    )
                })
                .collect(),
        )
    };
    // The process's first batch of the day also reads the day item once (per-sender counters
    // of the earlier layout, docs/STATE.md "Rollout").
    h.run(&batch(0)).await;
    let before = h.store.inner.request_counts();
    h.run(&batch(1)).await;
    let after = h.store.inner.request_counts();
    // 10 claims + (suppression + state) reads + 10 sender counters + the bucket (50 tokens:
    // too small to take ahead) + 10 marks, each written as its send is accepted. The day item
    // is not written: the first batch took 11 ahead (an eighth of what the hourly limit of 100
    // had left), enough for this one. No transaction.
    assert_eq!(
        (
            after.total() - before.total(),
            after.transactions - before.transactions
        ),
        (10 + 2 + 10 + 1 + 10, 0),
        "{before:?} → {after:?}"
    );
}

#[tokio::test]
async fn a_pinned_message_goes_to_its_gateway_and_an_unknown_pin_waits_with_the_reason() {
    let h = harness(&[("a", Reply::Accept), ("b", Reply::Accept)], "", "");
    let pinned = |id: &str, gateway: &str| {
        serde_json::json!({
            "id": id, "from": "dr@clinic.example", "to": ["p@example.org"],
            "subject": "s", "text": "t", "gateway": gateway,
        })
        .to_string()
    };
    let report = h
        .run(&records(vec![pinned("m-1", "b"), pinned("m-2", "nope")]))
        .await;
    assert_eq!(report.items[0].gateway.as_deref(), Some("b"));
    assert_eq!(report.items[1].outcome, Outcome::Deferred);
    let reason = report.items[1].reason.as_deref().unwrap();
    assert!(
        reason.contains("\"nope\"") && reason.contains("unknown"),
        "{reason}"
    );
    assert!(h.calls("a").is_empty());
}

/// Stores the health checker's verdict on `gateway`, probed at `checked_at`.
async fn store_health(
    h: &Harness,
    gateway: &str,
    status: crate::events::HealthStatus,
    checked_at: EpochMillis,
) {
    let record = crate::health::HealthRecord {
        status,
        consecutive_failures: 3,
        consecutive_successes: 0,
        latency_ms: None,
        error: Some("Unavailable from capture: 503".into()),
        checked_at,
    };
    h.store
        .put_many(vec![(crate::health::key(gateway), record.to_item())])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_fresh_unhealthy_verdict_sends_the_message_to_the_other_gateway() {
    let h = harness(
        &[("a", Reply::Accept), ("b", Reply::Accept)],
        "",
        r#", "health_check_required": true"#,
    );
    // Probed 20 s ago with the default 30 s interval: fresh.
    store_health(&h, "a", crate::events::HealthStatus::Unhealthy, T0 - 20_000).await;
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].outcome, Outcome::Sent);
    assert_eq!(report.items[0].gateway.as_deref(), Some("b"));
    assert!(h.calls("a").is_empty(), "the unhealthy gateway was called");
}

#[tokio::test]
async fn a_stale_unhealthy_verdict_does_not_drop_the_gateway() {
    let h = harness(
        &[("a", Reply::Accept), ("b", Reply::Accept)],
        "",
        r#", "health_check_required": true"#,
    );
    // Older than three of the checker's one-minute runs (the 30 s interval counts as the
    // schedule's minute): the checker has stopped, so the verdict says nothing any more.
    store_health(
        &h,
        "a",
        crate::events::HealthStatus::Unhealthy,
        T0 - 180_001,
    )
    .await;
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].gateway.as_deref(), Some("a"));
    assert_eq!(h.calls("a"), ["m-1"]);
}

#[tokio::test]
async fn an_unhealthy_verdict_is_only_a_note_when_health_is_not_required() {
    let h = harness(
        &[("a", Reply::Accept), ("b", Reply::Accept)],
        "",
        r#", "health_check_required": false"#,
    );
    store_health(&h, "a", crate::events::HealthStatus::Unhealthy, T0 - 20_000).await;
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].gateway.as_deref(), Some("a"));
}

#[tokio::test]
async fn a_config_whose_state_keys_exceed_one_batch_read_still_routes() {
    // 40 gateways × (breaker, day counter, health record) = 120 keys: over BatchGetItem's 100.
    let ids: Vec<String> = (0..40).map(|i| format!("g{i:02}")).collect();
    let gateways: Vec<(&str, Reply)> = ids.iter().map(|id| (id.as_str(), Reply::Accept)).collect();
    let h = harness(
        &gateways,
        r#", "rate_limits": {"workspace_daily": 1000}"#,
        "",
    );
    store_health(
        &h,
        "g00",
        crate::events::HealthStatus::Unhealthy,
        T0 - 20_000,
    )
    .await;
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].outcome, Outcome::Sent, "{report:?}");
    // Every chunk was read: g00's unhealthy record drops it.
    assert_eq!(report.items[0].gateway.as_deref(), Some("g01"));
}

#[tokio::test]
async fn a_far_limit_reset_does_not_hold_back_a_retry_another_gateway_may_take_sooner() {
    // `a` has used its hour; `b` answers 5xx, which says nothing about when to retry. The
    // message is worth trying again after the ordinary backoff, not at the top of the hour.
    let h = harness(
        &[
            ("a", Reply::Accept),
            ("b", Reply::Fail(ErrorClass::Unavailable, None)),
        ],
        r#", "rate_limits": {"per_hour": 1}"#,
        "",
    );
    let first = h.run(&one_message()).await;
    assert!(matches!(first.items[0].disposition, Disposition::Done));
    let second = h
        .run(&records(vec![body(
            "m-2",
            "dr@clinic.example",
            &["q@example.org"],
        )]))
        .await;
    assert_eq!(h.calls("a").len(), 1, "a's hour is used up");
    assert_eq!(h.calls("b").len(), 1, "b was tried");
    let after = retry_after(&second.items[0]);
    // The first backoff is at most its base (jitter takes it down to half).
    let backoff = Backoff::default().base;
    assert!(
        after <= backoff,
        "retried after {after:?}, not within the backoff of {backoff:?}"
    );
}

#[tokio::test]
async fn a_known_retry_time_is_kept_when_no_candidate_failed_without_one() {
    // Both gateways have used their hour: nothing can change before the next hour starts.
    let h = harness(
        &[("a", Reply::Accept), ("b", Reply::Accept)],
        r#", "rate_limits": {"per_hour": 1}"#,
        "",
    );
    let batch = records(vec![
        body("m-1", "dr@clinic.example", &["p@example.org"]),
        body("m-2", "dr@clinic.example", &["q@example.org"]),
    ]);
    h.run(&batch).await;
    let third = h
        .run(&records(vec![body(
            "m-3",
            "dr@clinic.example",
            &["r@example.org"],
        )]))
        .await;
    let after = retry_after(&third.items[0]);
    let next_hour = Duration::from_millis(u64::try_from(3_600_000 - T0 % 3_600_000).unwrap());
    assert!(
        after >= next_hour,
        "retried after {after:?}, before the hour resets in {next_hour:?}"
    );
}

#[tokio::test]
async fn without_failover_an_open_breaker_on_the_next_gateway_is_still_honoured() {
    // Failover off: each message has one candidate, the first usable one. With `a` open, that
    // is `b`; its breaker must be read too (it is open as well), so nothing is sent.
    let h = harness(
        &[("a", Reply::Accept), ("b", Reply::Accept)],
        "",
        r#", "failover_enabled": false"#,
    );
    let open = crate::breaker::BreakerState {
        phase: crate::breaker::Phase::Open,
        generation: 1,
        opened_at: T0 - 1_000,
        until: T0 + 30_000,
        ..crate::breaker::BreakerState::missing()
    };
    h.store
        .put_many(vec![
            (crate::breaker::key("a"), open.to_item()),
            (crate::breaker::key("b"), open.to_item()),
        ])
        .await
        .unwrap();
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].outcome, Outcome::Deferred);
    assert!(h.calls("a").is_empty() && h.calls("b").is_empty());
    // Retried when the first breaker may admit again (plus jitter).
    let after = retry_after(&report.items[0]);
    assert!(
        after >= Duration::from_secs(30) && after < Duration::from_secs(60),
        "{after:?}"
    );
}

/// A daily limit used up at 01:00 UTC: the backlog waits for the reset through SQS as it is
/// (the strict in-memory queue: visibility ends at most 12 h after the receive, refused
/// otherwise), with the invocation deciding a few seconds after the receive as Lambda's does.
/// Each waiting message is received at most twice before the reset, no visibility change is
/// refused, nothing reaches the dead-letter queue, and the backlog goes out at the reset.
#[tokio::test]
async fn a_daily_limit_used_up_at_one_holds_its_backlog_to_the_reset_within_sqs_limits() {
    use crate::queue::memory::{MemoryQueue, Redrive};
    use crate::queue::{MAX_RECEIVE, Queue};

    let h = harness(
        &[("a", Reply::Accept)],
        r#", "rate_limits": {"per_user_daily": 3}"#,
        "",
    );
    let midnight = T0 - T0.rem_euclid(DAY_MS);
    h.clock.set(midnight + 3_600_000);
    let dlq = Arc::new(MemoryQueue::new(h.clock.clone()));
    let queue = MemoryQueue::with_redrive(
        h.clock.clone(),
        Redrive {
            dead_letter: dlq.clone(),
            max_receive_count: 50,
        },
    );
    for i in 0..6 {
        queue
            .send(&body(
                &format!("m-{i}"),
                "dr@clinic.example",
                &["p@example.org"],
            ))
            .await
            .unwrap();
    }
    let mut receives: HashMap<String, u32> = HashMap::new();
    let mut sent_at: HashMap<String, EpochMillis> = HashMap::new();
    let end = midnight + DAY_MS + 3_600_000;
    while h.clock.now_ms() < end {
        loop {
            let got = queue
                .receive(MAX_RECEIVE, Duration::ZERO, Duration::from_secs(60))
                .await
                .unwrap();
            if got.is_empty() {
                break;
            }
            for r in &got {
                *receives.entry(r.message_id.clone()).or_default() += 1;
            }
            // The invocation starts and decides a little after the receive.
            h.clock.advance(3_000);
            let report = h.run(&got).await;
            let summary = settle(&queue, &report, true).await.unwrap();
            assert_eq!(summary.refused, Vec::new(), "SQS refused a deferral");
            for item in &report.items {
                if item.outcome == Outcome::Sent {
                    sent_at.insert(item.queue_message_id.clone(), h.clock.now_ms());
                }
            }
        }
        h.clock.advance(5 * 60_000);
    }
    assert!(
        dlq.is_empty(),
        "a limit-caused wait reached the dead-letter queue"
    );
    assert_eq!(sent_at.len(), 6, "all six sent: {sent_at:?}");
    let next_day = midnight + DAY_MS;
    let waited: Vec<&String> = sent_at
        .iter()
        .filter(|(_, at)| **at >= next_day)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(waited.len(), 3, "three waited for the reset");
    for id in waited {
        // Received at 01:00, once more about 11 h 40 min later, then at the reset.
        assert!(receives[id] <= 3, "{id} received {} times", receives[id]);
    }
    assert_eq!(h.calls("a").len(), 6);
}

/// Nine ordinary messages and one whose event is too large for the events queue: the nine are
/// sent, recorded once and acknowledged at their first receive; the big one is sent, and its
/// outcome recorded without the metadata, saying why. Nobody waits for anybody.
#[tokio::test]
async fn an_event_too_large_to_emit_holds_up_no_other_record_and_is_recorded_trimmed() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    h.sink.max_bytes.store(4096, Ordering::SeqCst);
    let mut bodies: Vec<String> = (0..9)
        .map(|i| body(&format!("m-{i}"), "dr@clinic.example", &["p@example.org"]))
        .collect();
    bodies.push(
        serde_json::json!({
            "id": "big", "from": "dr@clinic.example", "to": ["p@example.org"],
            "subject": "Results", "text": "See attached",
            "metadata": {"notes": "x".repeat(6000)},
        })
        .to_string(),
    );
    let report = h.run(&records(bodies)).await;
    assert!(
        report
            .items
            .iter()
            .all(|i| i.outcome == Outcome::Sent && i.disposition == Disposition::Done),
        "{:?}",
        report.items
    );
    assert_eq!(report.metrics.emit_failures, 0);
    let outcomes = h.outcomes();
    assert_eq!(outcomes.len(), 10, "each message's outcome recorded once");
    let big = outcomes.iter().find(|e| e.message_id == "big").unwrap();
    assert_eq!(big.outcome, Outcome::Sent);
    assert!(big.metadata.is_empty());
    assert!(
        big.reason.as_deref().unwrap().contains("trimmed"),
        "{big:?}"
    );
    assert_eq!(h.calls("a").len(), 10);
}

/// With the events queue down for one event's request only, only that record is retried.
#[tokio::test]
async fn an_event_that_cannot_be_emitted_retries_only_its_own_record() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    h.sink.max_bytes.store(4096, Ordering::SeqCst);
    let bodies = vec![
        body("m-1", "dr@clinic.example", &["p@example.org"]),
        // Too large even without metadata: a subject is kept (cut to 200 characters), but
        // the recipients are not, and these are many.
        serde_json::json!({
            "id": "huge", "from": "dr@clinic.example",
            "to": (0..200).map(|i| format!("patient-{i}@example.org")).collect::<Vec<_>>(),
            "subject": "Results", "text": "See attached",
        })
        .to_string(),
    ];
    let report = h.run(&records(bodies)).await;
    assert_eq!(report.items[0].disposition, Disposition::Done);
    assert!(matches!(
        report.items[1].disposition,
        Disposition::Retry { .. }
    ));
    assert_eq!(report.metrics.emit_failures, 1);
    let outcomes = h.outcomes();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].message_id, "m-1");
}

/// A message whose every send fails: deferred with backoff until the last receive the queue
/// allows, where it is recorded failed with the reason and handed back at once; the queue then
/// moves it to the dead-letter queue. Its record ends `failed`, never `deferred`, and its
/// customers hear of it. A redrive after the fix sends it and the record says `sent`.
#[tokio::test]
async fn a_message_failing_on_every_receive_ends_failed_at_the_last_one_and_a_redrive_sends_it() {
    use crate::mandrill;
    use crate::queue::memory::{MemoryQueue, Redrive};
    use crate::queue::{MAX_RECEIVE, Queue};
    use crate::records::{MemoryRecords, MessageStatus, RecordReader, RecordWriter};

    let h = harness_with(
        &[("a", Reply::Fail(ErrorClass::Unavailable, None))],
        "",
        "",
        PipelineSettings {
            max_receive_count: Some(5),
            ..PipelineSettings::default()
        },
    );
    let dlq = Arc::new(MemoryQueue::new(h.clock.clone()));
    let queue = MemoryQueue::with_redrive(
        h.clock.clone(),
        Redrive {
            dead_letter: dlq.clone(),
            max_receive_count: 5,
        },
    );
    queue
        .send(&body("m-1", "dr@clinic.example", &["p@example.org"]))
        .await
        .unwrap();
    let records = MemoryRecords::default();
    let mut outcomes = Vec::new();
    for _ in 0..200 {
        let got = queue
            .receive(MAX_RECEIVE, Duration::ZERO, Duration::from_secs(60))
            .await
            .unwrap();
        if !got.is_empty() {
            let report = h.run(&got).await;
            settle(&queue, &report, true).await.unwrap();
            let events = h.sink.inner.take();
            records.apply(&events).await.unwrap();
            outcomes.extend(events.into_iter().filter_map(|e| match e {
                GatewayEvent::Outcome(o) => Some(o),
                _ => None,
            }));
        }
        h.clock.advance(10 * 60_000);
    }
    assert_eq!(h.calls("a").len(), 5, "one attempt per receive");
    assert!(queue.is_empty());
    assert_eq!(dlq.len(), 1, "the queue moved it to the dead-letter queue");
    let last = outcomes.last().unwrap();
    assert_eq!(last.outcome, Outcome::Failed);
    let reason = last.reason.as_deref().unwrap();
    assert!(
        reason.starts_with("gave up after 5 receives over "),
        "{reason}"
    );
    assert!(reason.contains("last: "), "{reason}");
    assert_eq!(last.gateway_id.as_deref(), Some("a"));
    let record = records.message("m-1").await.unwrap().unwrap();
    assert_eq!(record.status, MessageStatus::Failed);
    assert_eq!(record.last_error.as_deref(), Some(reason));
    let notified = mandrill::from_outcome(last, true);
    assert_eq!(notified[0]["event"], "reject", "{notified:?}");

    // The provider is fixed and the dead letter moved back.
    *h.providers["a"].default.lock().unwrap() = Reply::Accept;
    let dead = dlq
        .receive(1, Duration::ZERO, Duration::from_secs(60))
        .await
        .unwrap()
        .remove(0);
    let redriven = Received {
        receive_count: 1,
        ..dead
    };
    let report = h.run(std::slice::from_ref(&redriven)).await;
    assert_eq!(report.items[0].outcome, Outcome::Sent);
    records.apply(&h.sink.inner.take()).await.unwrap();
    let record = records.message("m-1").await.unwrap().unwrap();
    assert_eq!(record.status, MessageStatus::Sent);
}

/// A message with a send-by time: past it, nothing is sent and the message is recorded failed
/// ("expired"); while every gateway fails, its deferral brings it back at that time at the
/// latest, and then it fails instead of waiting on. The ledger keeps the failure, so a
/// redelivery changes nothing.
#[tokio::test]
async fn a_message_past_its_expires_at_is_failed_not_sent() {
    // The provider says to come back in two hours.
    let h = harness(
        &[(
            "a",
            Reply::Fail(ErrorClass::Unavailable, Some(T0 + 2 * 3_600_000)),
        )],
        "",
        "",
    );
    let expires = h.clock.now_ms() + 10 * 60_000;
    let body = serde_json::json!({
        "id": "reminder-1", "from": "dr@clinic.example", "to": ["p@example.org"],
        "subject": "Take your medication at 10:00", "text": "…",
        "expires_at": crate::clock::format_rfc3339(expires),
    })
    .to_string();
    let first = h.run(&records(vec![body.clone()])).await;
    let Disposition::Retry { after } = first.items[0].disposition else {
        panic!("deferred: {:?}", first.items[0])
    };
    // Not in two hours: at the send-by time (plus a second), to be failed then.
    assert_eq!(after, Duration::from_secs(10 * 60 + 1));
    assert_eq!(h.calls("a").len(), 1);

    h.clock.set(expires);
    let mut again = record(0, body.clone());
    again.receive_count = 2;
    let report = h.run(std::slice::from_ref(&again)).await;
    assert_eq!(report.items[0].outcome, Outcome::Failed);
    assert_eq!(report.items[0].disposition, Disposition::Done);
    assert_eq!(
        h.calls("a").len(),
        1,
        "no provider call past the send-by time"
    );
    let last = h.outcomes().pop().unwrap();
    assert_eq!(last.outcome, Outcome::Failed);
    assert!(
        last.reason
            .as_deref()
            .unwrap()
            .starts_with("expired: not sent by its expires_at"),
        "{last:?}"
    );
    assert!(matches!(
        ledger::lookup(h.store.as_ref(), "reminder-1")
            .await
            .unwrap(),
        Some(Entry::Failed(_))
    ));

    // A message already expired when it first arrives is never sent either.
    let late = serde_json::json!({
        "id": "reminder-2", "from": "dr@clinic.example", "to": ["p@example.org"],
        "subject": "s", "text": "t", "expires_at": "2020-01-01T00:00:00Z",
    })
    .to_string();
    let report = h.run(&records(vec![late])).await;
    assert_eq!(report.items[0].outcome, Outcome::Failed);
    assert_eq!(h.calls("a").len(), 1);
}

/// Provider texts can quote addresses (SES: "Email address is not verified … dr@clinic.example");
/// the logs carry them with every address replaced, while the record keeps the text as the
/// provider gave it.
#[tokio::test]
async fn provider_texts_reach_the_logs_without_addresses() {
    use std::io::Write;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let logs = Buffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let text = "MessageRejected: Email address is not verified. The following identities failed \
                the check in region EU-WEST-1: dr@clinic.example, p@example.org";
    let h = harness(
        &[("a", Reply::FailSaying(ErrorClass::Permanent, text))],
        "",
        "",
    );
    let report = h.run(&one_message()).await;
    assert_eq!(report.items[0].outcome, Outcome::Failed);
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("provider call failed"), "{logged}");
    assert!(logged.contains("<address>"), "{logged}");
    assert!(
        !logged.contains("dr@clinic.example") && !logged.contains("p@example.org"),
        "{logged}"
    );
    let event = h.outcomes().pop().unwrap();
    assert!(
        event.reason.unwrap().contains("dr@clinic.example"),
        "the record keeps the text"
    );
}

/// Two `gateway serve` processes (or one restarted) name their leases differently, so neither
/// takes the other's live lease as its own: the owner carries a random instance tag.
#[tokio::test]
async fn pollers_of_the_same_name_in_two_processes_own_different_leases() {
    use crate::queue::memory::MemoryQueue;
    let h = harness(&[("a", Reply::Accept)], "", "");
    let pipeline = Arc::new(h.pipeline);
    let queue: Arc<dyn crate::queue::Queue> = Arc::new(MemoryQueue::new(h.clock.clone()));
    let first = Poller::new(
        Arc::clone(&pipeline),
        Arc::clone(&queue),
        PollSettings::default(),
        "serve",
    );
    let second = Poller::new(pipeline, queue, PollSettings::default(), "serve");
    assert_ne!(first.owner(1), second.owner(1));
    assert!(first.owner(1).starts_with("serve-") && first.owner(1).ends_with("-1"));
    assert_ne!(first.owner(1), first.owner(2));
}

/// Runs one batch whose only call hangs until it is abandoned as unanswered (tokio's clock
/// paused, so the abandon comes at once).
async fn unanswered_call(h: &Harness, batch: &[Received]) -> BatchReport {
    tokio::time::pause();
    let report = h.run(batch).await;
    tokio::time::resume();
    assert_eq!(report.items[0].outcome, Outcome::Deferred);
    report
}

#[tokio::test]
async fn an_unanswered_call_is_noted_and_its_providers_evidence_stops_a_second_send() {
    let h = harness(&[("a", Reply::Hang)], "", "");
    let batch = one_message();
    let report = unanswered_call(&h, &batch).await;
    assert_eq!(report.metrics.gateways["a"].ambiguous, 1);
    let item = h.store.get(&ledger::key("m-1")).await.unwrap().unwrap();
    assert_eq!(crate::state::get_s(&item, "unanswered_gateway"), Some("a"));
    // The provider's webhook says it took the message.
    let evidence = crate::evidence::Evidence {
        gateway: Some("a".into()),
        provider: "mailgun".into(),
        provider_message_id: Some("<p-1@mg.example>".into()),
        event: "accepted".into(),
        at: T0 + 400,
    };
    crate::evidence::record(h.store.as_ref(), "m-1", &evidence, T0 + 1_000)
        .await
        .unwrap();
    h.providers["a"].set(Reply::Accept);
    h.clock.advance(LEASE_MS + 1);
    h.outcomes();
    let report = h.run(&batch).await;
    assert_eq!(report.items[0].outcome, Outcome::Sent);
    assert_eq!(report.metrics.reconciled, 1);
    assert_eq!(h.calls("a").len(), 1, "not sent again");
    let sent = h.outcomes().pop().unwrap();
    assert_eq!(
        sent.provider_message_id.as_deref(),
        Some("<p-1@mg.example>")
    );
    assert!(
        sent.reason.as_deref().unwrap().contains("not sent again"),
        "{:?}",
        sent.reason
    );
    match h.ledger("m-1").await {
        Some(Entry::Sent(r)) => {
            assert_eq!((r.gateway.as_str(), r.at), ("a", T0 + 400));
        }
        other => panic!("{other:?}"),
    }
}

/// A Mailgun-typed gateway with a webhook signing key: its acceptance events are expected.
const WITH_WEBHOOKS: &str = r#"{"gateways": [{"id": "mg", "type": "mailgun", "display_name": "mg",
    "mailgun": {"api_key": "key-1", "domain": "mg.example", "webhook_signing_key": "whk-1"},
    "routing": {"can_route": ["*"]}}], "routing": {"strategy": "priority"}}"#;

fn harness_on(json: &str, id: &str, reply: Reply) -> Harness {
    let config = match load_config(Some(json), None, &|_| None) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("test config invalid: {e:?}\n{json}"),
    };
    let provider = Scripted::new(id, reply);
    let store = Arc::new(FlakyStore::default());
    let sink = Arc::new(Sink::default());
    let clock = Arc::new(ManualClock::new(T0));
    let pipeline = Pipeline::new(
        Arc::new(config),
        HashMap::from([(id.to_owned(), Arc::clone(&provider) as Arc<dyn Provider>)]),
        Arc::clone(&store) as Arc<dyn StateStore>,
        Arc::clone(&sink) as Arc<dyn EventSink>,
        Arc::clone(&clock) as Arc<dyn Clock>,
        PipelineSettings::default(),
    );
    Harness {
        pipeline,
        store,
        sink,
        clock,
        providers: HashMap::from([(id.to_owned(), provider)]),
        batches: Mutex::new(0),
    }
}

#[tokio::test]
async fn without_evidence_a_gateway_that_reports_acceptance_is_waited_for_then_sent_flagged() {
    let h = harness_on(WITH_WEBHOOKS, "mg", Reply::Hang);
    let batch = one_message();
    unanswered_call(&h, &batch).await;
    let wait = PipelineSettings::default().acceptance_wait;
    let wait_ms = i64::try_from(wait.as_millis()).unwrap();
    h.providers["mg"].set(Reply::Accept);
    // After the lease, inside the window: kept, asked again when the window ends.
    h.clock.advance(LEASE_MS + 1);
    let report = h.run(&batch).await;
    assert_eq!(report.items[0].outcome, Outcome::Deferred);
    assert_eq!(h.calls("mg").len(), 1);
    let after = retry_after(&report.items[0]);
    let left = Duration::from_millis(u64::try_from(wait_ms - LEASE_MS - 1).unwrap());
    assert!(
        after >= left && after <= left + Duration::from_secs(2),
        "{after:?}"
    );
    // A redelivery meanwhile is held by the kept claim.
    let report = h.run(&batch).await;
    assert_eq!(report.items[0].outcome, Outcome::Deferred);
    assert_eq!(h.calls("mg").len(), 1);
    // After the window, with no evidence: sent again, flagged, counted.
    h.clock.advance(wait_ms);
    h.outcomes();
    let report = h.run(&batch).await;
    assert_eq!(report.items[0].outcome, Outcome::Sent);
    assert_eq!(report.metrics.resent_unconfirmed, 1);
    assert_eq!(h.calls("mg").len(), 2);
    let sent = h.outcomes().pop().unwrap();
    assert!(
        sent.reason
            .as_deref()
            .unwrap()
            .contains("possible duplicate"),
        "{:?}",
        sent.reason
    );
}

#[tokio::test]
async fn a_crashed_invocations_message_waits_from_its_expired_lease_not_from_each_new_one() {
    let h = harness_on(WITH_WEBHOOKS, "mg", Reply::Accept);
    let batch = one_message();
    // An invocation claimed it and died (no note: it may or may not have called).
    ledger::claim(h.store.as_ref(), "m-1", "dead", T0 + 1_000, T0)
        .await
        .unwrap();
    h.clock.advance(2_000);
    let report = h.run(&batch).await;
    assert_eq!(report.items[0].outcome, Outcome::Deferred);
    assert!(h.calls("mg").is_empty());
    // The window's start is written down: the next claim, which takes this one's lease
    // over, does not count the window from that lease's end again.
    let item = h.store.get(&ledger::key("m-1")).await.unwrap().unwrap();
    assert_eq!(
        crate::state::get_n(&item, "unanswered_at"),
        Some(T0 + 1_000)
    );
    let wait_ms = i64::try_from(PipelineSettings::default().acceptance_wait.as_millis()).unwrap();
    h.clock.set(T0 + 1_000 + wait_ms);
    let report = h.run(&batch).await;
    assert_eq!(report.items[0].outcome, Outcome::Sent);
    assert_eq!(h.calls("mg").len(), 1);
}

#[test]
fn start_up_refuses_a_deadline_margin_below_the_request_timeout_plus_the_post_send_budget() {
    let config = load_config(Some(&config_json(&["a"], "", "")), None, &|_| None)
        .unwrap()
        .config;
    let err = PipelineSettings::default().check(&config).unwrap_err();
    assert_eq!(
        (err.margin_ms, err.timeout_ms, err.post_send_ms),
        (2_000, 30_000, 5_000)
    );
    assert!(err.to_string().contains("http.request_timeout"), "{err}");
    let settings = PipelineSettings::for_config(&config);
    assert_eq!(settings.deadline_margin, Duration::from_secs(35));
    settings.check(&config).unwrap();
}

#[tokio::test]
async fn a_send_message_retried_with_the_same_id_is_sent_once_within_the_ledgers_retention() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    // The producer's SendMessage was retried: two queue messages, one body, one `id`.
    let body = body("m-1", "dr@clinic.example", &["p@example.org"]);
    let first = vec![record(0, body.clone())];
    let mut copy = record(1, body);
    copy.message_id = "sqs-other".into();
    h.run(&first).await;
    // The copy arrives as late as SQS allows and more: 29 days later the key still holds.
    h.clock.advance(ledger::RETENTION_MS - DAY_MS);
    let report = h.run(&[copy]).await;
    assert_eq!(report.items[0].outcome, Outcome::Sent);
    assert!(report.items[0].replayed, "found in the ledger, not sent");
    assert_eq!(h.calls("a"), ["m-1"]);
}
