//! The recorder handler on the sample event `events/recorder-batch.json`, with the in-memory
//! record store and suppression list: the batch item failures, the record, the suppression
//! list and the metric lines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::metrics::{MAX_VALUES_PER_LINE, Metrics, Output};
use crate::{Deps, handle};
use aws_lambda_events::event::sqs::SqsEvent;
use gateway_core::clock::ManualClock;
use gateway_core::events::GatewayEvent;
use gateway_core::recorder::Recorder;
use gateway_core::records::{Applied, MemoryRecords, RecordError, RecordReader, RecordWriter};
use gateway_core::state::memory::MemoryStore;
use gateway_core::suppression;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};

const T0: i64 = 1_795_858_205_000;

fn sample() -> SqsEvent {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/recorder-batch.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The in-memory record store, which can be taken down like a database.
#[derive(Debug, Default)]
struct Database {
    records: MemoryRecords,
    down: AtomicBool,
}

#[async_trait::async_trait]
impl RecordWriter for Database {
    async fn apply(&self, events: &[GatewayEvent]) -> Result<Applied, RecordError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(RecordError::Unavailable("connection refused".into()));
        }
        self.records.apply(events).await
    }
}

/// A handler over `database`, its metric lines kept in memory.
fn deps(database: &Arc<Database>) -> (Deps, Arc<Mutex<Vec<String>>>) {
    let clock = Arc::new(ManualClock::new(T0));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let metrics = Metrics::new(
        "MailGateway",
        clock.clone(),
        Output::Memory(Arc::clone(&lines)),
    );
    let recorder = Recorder::new(
        metrics.counting(Arc::clone(database) as _),
        Arc::new(MemoryStore::new()),
        clock,
    );
    let deps = Deps {
        recorder: Arc::new(crate::handler::Running::Fixed(Arc::new(recorder))),
        metrics: Arc::new(metrics),
        dead_letters: None,
        retention: None,
    };
    (deps, lines)
}

/// The metric lines written since the last call, parsed.
fn taken(lines: &Mutex<Vec<String>>) -> Vec<Value> {
    std::mem::take(&mut *lines.lock().unwrap())
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Checks the EMF structure of `line` (namespace, timestamp, the dimension set, every declared
/// metric present) and returns its declared metric names.
fn declared(line: &Value, dimensions: Value) -> Vec<String> {
    let defs = &line["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(defs["Namespace"], "MailGateway");
    assert_eq!(line["_aws"]["Timestamp"], T0);
    assert_eq!(defs["Dimensions"], json!([dimensions]));
    let names: Vec<String> = defs["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap().to_owned())
        .collect();
    for name in &names {
        assert!(line.get(name).is_some(), "{name} declared but missing");
    }
    names
}

async fn invoke(deps: &Deps, event: SqsEvent) -> Vec<String> {
    handle(LambdaEvent::new(event, Context::default()), deps)
        .await
        .unwrap()
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect()
}

/// A database outage reaches the recorder as batch item failures, which Lambda's `Errors`
/// metric does not count: the `RecordFailures` line is what the alarm sees.
#[tokio::test]
async fn a_database_outage_is_counted_in_record_failures_not_hidden_in_batch_item_failures() {
    let database = Arc::new(Database::default());
    let (deps, lines) = deps(&database);
    database.down.store(true, Ordering::SeqCst);
    let failures = invoke(&deps, sample()).await;
    assert_eq!(failures.len(), 4, "every record is retried: {failures:?}");
    let written = taken(&lines);
    assert_eq!(written.len(), 1, "only the totals line: {written:?}");
    let totals = &written[0];
    assert_eq!(
        declared(totals, json!([])),
        [
            "Recorded",
            "RecordFailures",
            "UnattributedHardBounces",
            "UnattributedComplaints"
        ]
    );
    // The three gateway events of the batch (the fourth record is not one).
    assert_eq!(
        (
            totals["RecordFailures"].as_u64(),
            totals["Recorded"].as_u64()
        ),
        (Some(3), Some(0))
    );

    // The database is back: the redelivered batch is recorded and the failures stop.
    database.down.store(false, Ordering::SeqCst);
    let failures = invoke(&deps, sample()).await;
    assert_eq!(failures, ["7d2a0c4e-5b1f-4c3a-8e6d-2f9b1c0a3e04"]);
    let written = taken(&lines);
    assert_eq!(written[0]["RecordFailures"], 0);
    assert_eq!(written[0]["Recorded"], 3);
}

fn record(n: usize, event: &Value) -> Value {
    json!({
        "messageId": format!("q-{n}"),
        "receiptHandle": format!("rh-{n}"),
        "body": event.to_string(),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "eventSource": "aws:sqs"
    })
}

fn outcome(message: &str, gateway: &str, recipients: &[&str]) -> Value {
    let recipients: Vec<Value> = recipients
        .iter()
        .map(|a| json!({"address": a, "kind": "to", "status": "SENT"}))
        .collect();
    json!({"v": 1, "type": "outcome", "message_id": message, "sender": "frontdesk@clinic.example",
           "subject": "s", "recipients": recipients, "outcome": "sent", "gateway_id": gateway,
           "gateway_type": "mailgun", "attempts": [], "at": T0})
}

fn delivery(id: &str, message: &str, recipient: &str, kind: &str) -> Value {
    json!({"v": 1, "type": "delivery", "provider": "mailgun", "provider_event_id": id,
           "message_id": message, "recipient": recipient, "kind": kind, "at": T0})
}

/// Bounces and complaints are charged to the gateway that sent their message (as the record
/// knows it), next to that gateway's accepted recipients, so that `AVG(HardBounced)` per
/// gateway gives its bounce rate.
#[tokio::test]
async fn bounces_and_complaints_are_counted_by_the_gateway_of_their_message() {
    let database = Arc::new(Database::default());
    let (deps, lines) = deps(&database);
    let events = [
        outcome(
            "m-1",
            "mailgun-primary",
            &["a@x.example", "b@x.example", "c@x.example"],
        ),
        outcome("m-2", "ses-bulk", &["d@x.example"]),
        delivery("e1", "m-1", "a@x.example", "hard_bounce"),
        delivery("e2", "m-1", "b@x.example", "complained"),
        delivery("e3", "m-1", "c@x.example", "delivered"),
        delivery("e4", "m-2", "d@x.example", "soft_bounce"),
        delivery("e5", "unknown", "e@x.example", "hard_bounce"),
    ];
    let records: Vec<Value> = events
        .iter()
        .enumerate()
        .map(|(n, e)| record(n, e))
        .collect();
    let event: SqsEvent = serde_json::from_value(json!({"Records": records})).unwrap();
    assert_eq!(invoke(&deps, event).await, Vec::<String>::new());

    let written = taken(&lines);
    assert_eq!(written.len(), 3, "{written:?}");
    assert_eq!(written[0]["Recorded"], 7);
    assert_eq!(written[0]["UnattributedHardBounces"], 1);
    assert_eq!(written[0]["UnattributedComplaints"], 0);
    let by_gateway: Vec<(&str, Value, Value)> = written[1..]
        .iter()
        .map(|l| {
            assert_eq!(
                declared(l, json!(["Gateway"])),
                ["HardBounced", "Complained"]
            );
            (
                l["Gateway"].as_str().unwrap(),
                l["HardBounced"].clone(),
                l["Complained"].clone(),
            )
        })
        .collect();
    assert_eq!(
        by_gateway,
        [
            ("mailgun-primary", json!([0, 0, 0, 1]), json!([0, 0, 0, 1])),
            ("ses-bulk", json!([0]), json!([0])),
        ]
    );
}

/// More samples than one EMF member may carry are split over several lines of the gateway.
#[test]
fn long_sample_lists_are_split_over_lines() {
    let mut counts = crate::metrics::Counts::default();
    counts.gateways.insert(
        "gw".into(),
        crate::metrics::GatewayCounts {
            accepted: 150,
            hard_bounces: 60,
            complaints: 0,
        },
    );
    let lines: Vec<Value> = crate::metrics::emf_lines(&counts, "MailGateway", T0)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "totals + 3 lines for 210 samples");
    let mut bounced: Vec<u64> = Vec::new();
    let mut complained = 0;
    for line in &lines[1..] {
        let values = line["HardBounced"].as_array().unwrap();
        assert!(values.len() <= MAX_VALUES_PER_LINE);
        bounced.extend(values.iter().map(|v| v.as_u64().unwrap()));
        complained += line["Complained"].as_array().map_or(0, Vec::len);
    }
    assert_eq!((bounced.len(), bounced.iter().sum::<u64>()), (210, 60));
    assert_eq!(complained, 150);
}

#[tokio::test]
async fn the_sample_batch_is_recorded_suppressed_and_the_garbage_retried() {
    let event = sample();
    let records = Arc::new(MemoryRecords::new());
    let state = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(T0));
    let metrics = Metrics::new("MailGateway", clock.clone(), Output::Memory(Arc::default()));
    let deps = Deps {
        recorder: Arc::new(crate::handler::Running::Fixed(Arc::new(Recorder::new(
            metrics.counting(Arc::clone(&records) as _),
            Arc::clone(&state) as _,
            clock,
        )))),
        metrics: Arc::new(metrics),
        dead_letters: None,
        retention: None,
    };
    let response = handle(LambdaEvent::new(event, Context::default()), &deps)
        .await
        .unwrap();
    let failures: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failures, ["7d2a0c4e-5b1f-4c3a-8e6d-2f9b1c0a3e04"]);
    let record = records
        .message("appt-2026-11-28-0001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status.as_str(), "sent");
    assert_eq!(
        record
            .recipient("patient.one@example.org")
            .unwrap()
            .status
            .as_str(),
        "DELIVERED"
    );
    assert!(
        suppression::lookup(state.as_ref(), "moved.away@example.org")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        suppression::lookup(state.as_ref(), "patient.one@example.org")
            .await
            .unwrap()
            .is_none()
    );
}

const DLQ_ARN: &str = "arn:aws:sqs:eu-central-1:123456789012:gateway-outbound-dlq";

fn dead_letter(n: usize, body: &str, receives: u32) -> Value {
    json!({
        "messageId": format!("sqs-dead-{n}"),
        "receiptHandle": format!("rh-dead-{n}"),
        "body": body,
        "attributes": {"ApproximateReceiveCount": receives.to_string(), "SentTimestamp": T0.to_string()},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": DLQ_ARN
    })
}

/// Outbound dead letters (the sender could not start, or crashed on them, on every receive):
/// one without a record is recorded `failed` with the reason; one the sender already recorded
/// as given up keeps its record; one that is not a message is parked unrecorded. All three are
/// parked with their key in the body, and the event source deletes them from the DLQ. With the
/// database down, the two that need it are retried, nothing is parked twice.
#[tokio::test]
async fn outbound_dead_letters_are_recorded_failed_unless_final_and_parked_with_their_key() {
    use gateway_core::events::{
        Outcome, OutcomeEvent, RecipientKind, RecipientOutcome, RecipientStatus,
    };
    use gateway_core::queue::memory::MemoryQueue;
    use gateway_core::records::MessageStatus;

    let database = Arc::new(Database::default());
    let (mut deps, _) = deps(&database);
    let clock = Arc::new(ManualClock::new(T0));
    let parked = Arc::new(MemoryQueue::new(clock));
    /// The record store as a reader, failing while the database is down.
    #[derive(Debug)]
    struct Reader(Arc<Database>);
    #[async_trait::async_trait]
    impl RecordReader for Reader {
        async fn message(
            &self,
            id: &str,
        ) -> Result<Option<gateway_core::records::MessageRecord>, RecordError> {
            if self.0.down.load(Ordering::SeqCst) {
                return Err(RecordError::Unavailable("connection refused".into()));
            }
            self.0.records.message(id).await
        }
        async fn recent(
            &self,
            limit: usize,
        ) -> Result<Vec<gateway_core::records::MessageRecord>, RecordError> {
            self.0.records.recent(limit).await
        }
    }
    deps.dead_letters = Some(crate::DeadLetters {
        source_arn: DLQ_ARN.into(),
        reader: Arc::new(Reader(Arc::clone(&database))),
        parked: parked.clone(),
    });
    // The sender gave "given-up" up on its last receive and recorded it.
    let gave_up = "gave up after 20 receives over 6 d 2 h; last: gw: 503";
    database
        .records
        .apply(&[GatewayEvent::Outcome(OutcomeEvent {
            message_id: "given-up".into(),
            sender: "dr@clinic.example".into(),
            subject: "s".into(),
            campaign_id: None,
            user_id: None,
            tags: Vec::new(),
            metadata: Default::default(),
            recipients: vec![RecipientOutcome {
                address: "p@example.org".into(),
                kind: RecipientKind::To,
                status: RecipientStatus::Failed,
            }],
            outcome: Outcome::Failed,
            gateway_id: Some("gw".into()),
            gateway_type: Some("mailgun".into()),
            provider_message_id: None,
            attempts: Vec::new(),
            reason: Some(gave_up.into()),
            retry_at: None,
            at: T0,
        })])
        .await
        .unwrap();
    let keyless =
        r#"{"from":"dr@clinic.example","to":["p@example.org"],"subject":"Results","text":"t"}"#;
    let given_up = r#"{"id":"given-up","from":"dr@clinic.example","to":["p@example.org"],"subject":"s","text":"t"}"#;
    let event: SqsEvent = serde_json::from_value(json!({"Records": [
        dead_letter(0, keyless, 20),
        dead_letter(1, given_up, 21),
        dead_letter(2, "not a message", 20),
    ]}))
    .unwrap();

    database.down.store(true, Ordering::SeqCst);
    let failures = invoke(&deps, event.clone()).await;
    assert_eq!(failures, ["sqs-dead-0", "sqs-dead-1"]);
    assert_eq!(parked.len(), 1, "only the one that needs no record");

    database.down.store(false, Ordering::SeqCst);
    let failures = invoke(
        &deps,
        serde_json::from_value(json!({"Records": [
            dead_letter(0, keyless, 21),
            dead_letter(1, given_up, 22),
        ]}))
        .unwrap(),
    )
    .await;
    assert!(failures.is_empty(), "{failures:?}");
    let record = database
        .records
        .message("sqs-dead-0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, MessageStatus::Failed);
    assert_eq!(
        record.last_error.as_deref(),
        Some(
            "reached the outbound dead-letter queue after 21 receives without an outcome (the \
             sender could not start or failed on it); `gateway dlq redrive` sends it again"
        )
    );
    let kept = database.records.message("given-up").await.unwrap().unwrap();
    assert_eq!(kept.last_error.as_deref(), Some(gave_up));

    let bodies = parked.bodies();
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[0], "not a message");
    assert!(bodies.iter().any(|b| b == given_up), "{bodies:?}");
    let keyed: Value = bodies
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .find(|b| b["subject"] == "Results")
        .unwrap();
    assert_eq!(
        keyed["id"], "sqs-dead-0",
        "parked with the key it was recorded under"
    );
}

/// The schedule's input is told apart from an SQS event by its `type`; an SQS event still
/// reaches the batch handler through [`crate::invoke`], and a scheduled invocation of an
/// instance without a retention job fails loudly rather than doing nothing.
#[tokio::test]
async fn the_scheduled_purge_is_told_apart_from_sqs_batches() {
    use crate::retention::is_scheduled;
    let cases: [(Value, bool); 4] = [
        (json!({"type": "record_retention"}), true),
        (json!({"type": "outcome"}), false),
        (serde_json::to_value(sample()).unwrap(), false),
        (json!({}), false),
    ];
    for (payload, scheduled) in &cases {
        assert_eq!(is_scheduled(payload), *scheduled, "{payload}");
    }

    let database = Arc::new(Database::default());
    let (deps, lines) = deps(&database);
    let answer = crate::invoke(
        LambdaEvent::new(serde_json::to_value(sample()).unwrap(), Context::default()),
        &deps,
    )
    .await
    .unwrap();
    assert_eq!(
        answer["batchItemFailures"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );
    taken(&lines);

    let scheduled = crate::invoke(
        LambdaEvent::new(json!({"type": "record_retention"}), Context::default()),
        &deps,
    )
    .await;
    assert!(scheduled.is_err(), "no retention job, no silent success");
    let garbage = crate::invoke(
        LambdaEvent::new(json!({"hello": 1}), Context::default()),
        &deps,
    )
    .await;
    assert!(garbage.is_err());
}

#[test]
fn the_retention_line_reports_what_a_run_purged_or_that_it_failed() {
    use crate::metrics::retention_line;
    use gateway_core::records::retention::{PurgeCounts, PurgeSummary};
    let summary = PurgeSummary {
        cutoff: T0,
        dry_run: false,
        counts: PurgeCounts {
            messages: 3,
            recipients: 6,
            send_attempts: 4,
            delivery_events: 5,
            unattached_events: 2,
        },
        batches: 2,
        more_remaining: true,
    };
    let ok: Value =
        serde_json::from_str(&retention_line(Some(&summary), "MailGateway", T0)).unwrap();
    assert_eq!(
        declared(&ok, json!([])),
        [
            "RetentionPurgedMessages",
            "RetentionPurgedRows",
            "RetentionBacklog",
            "RetentionFailures"
        ]
    );
    let values = |line: &Value| {
        [
            "RetentionPurgedMessages",
            "RetentionPurgedRows",
            "RetentionBacklog",
            "RetentionFailures",
        ]
        .map(|n| line[n].as_u64().unwrap())
    };
    assert_eq!(values(&ok), [3, 20, 1, 0]);
    let failed: Value = serde_json::from_str(&retention_line(None, "MailGateway", T0)).unwrap();
    assert_eq!(values(&failed), [0, 0, 0, 1]);
}
