//! Retention of the record of delivery on a real MariaDB, with a manual clock: records written
//! through the real record writer at several ages; a purge removes exactly the expired messages
//! with every row of theirs (and the old provider events naming no message), leaves everything
//! else byte for byte, works in batches of the size asked for, changes nothing when run again,
//! stops at its budget and goes on in the next run; a dry run counts the same and changes
//! nothing; the recorder's scheduled invocation purges and writes its metric line.
//!
//! Needs MariaDB: `scripts/services up && source .local/services.env`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_core::clock::{Clock, ManualClock};
use gateway_core::events::{
    AttemptRecord, DeliveryEvent, DeliveryKind, GatewayEvent, Outcome, OutcomeClass, OutcomeEvent,
    RecipientKind, RecipientOutcome, RecipientStatus,
};
use gateway_core::records::RecordWriter;
use gateway_core::records::mysql::MysqlRecords;
use gateway_core::records::retention::{
    DAY_MS, PurgeBatch, PurgeBudget, PurgeCounts, PurgeMode, PurgeSummary, Retention, purge_expired,
};
use sqlx::Row;

/// 2026-11-28T10:00:00Z: "now" of every purge.
const NOW: i64 = 1_795_860_000_000;

fn retention() -> Retention {
    Retention::days(365).unwrap()
}

fn cutoff() -> i64 {
    NOW - 365 * DAY_MS
}

/// The messages expired at [`NOW`] (last activity before the cutoff).
const EXPIRED: [&str; 5] = ["old-1", "old-2", "old-3", "old-4", "old-5"];

fn attempt(gateway: &str, class: OutcomeClass, at: i64) -> AttemptRecord {
    AttemptRecord {
        gateway: gateway.into(),
        gateway_type: "mailgun".into(),
        class,
        http_status: Some(if class == OutcomeClass::Ok { 200 } else { 503 }),
        latency_ms: 80,
        error: (class != OutcomeClass::Ok).then(|| "503 for patient@example.org".into()),
        at,
    }
}

fn outcome(id: &str, outcome: Outcome, attempts: Vec<AttemptRecord>, at: i64) -> GatewayEvent {
    let status = match outcome {
        Outcome::Sent => RecipientStatus::Sent,
        _ => RecipientStatus::Deferred,
    };
    GatewayEvent::Outcome(OutcomeEvent {
        message_id: id.into(),
        sender: "dr@clinic.example".into(),
        subject: format!("Your test results ({id})"),
        campaign_id: None,
        user_id: Some("u-42".into()),
        tags: vec!["results".into()],
        metadata: BTreeMap::from([("patient_id".into(), serde_json::json!("P-1234"))]),
        recipients: vec![
            RecipientOutcome {
                address: "Patient@Example.org".into(),
                kind: RecipientKind::To,
                status,
            },
            RecipientOutcome {
                address: "carer@example.org".into(),
                kind: RecipientKind::Cc,
                status,
            },
        ],
        outcome,
        gateway_id: (outcome == Outcome::Sent).then(|| "gw-b".into()),
        gateway_type: (outcome == Outcome::Sent).then(|| "mailgun".into()),
        provider_message_id: (outcome == Outcome::Sent).then(|| format!("<{id}@mg.example>")),
        attempts,
        reason: (outcome == Outcome::Deferred).then(|| "gw-a: 503".into()),
        retry_at: (outcome == Outcome::Deferred).then_some(at + 60_000),
        at,
    })
}

fn delivery(event_id: &str, message: Option<&str>, kind: DeliveryKind, at: i64) -> GatewayEvent {
    GatewayEvent::Delivery(DeliveryEvent {
        provider: "mailgun".into(),
        provider_event_id: event_id.into(),
        message_id: message.map(str::to_owned),
        recipient: "patient@example.org".into(),
        kind,
        at,
        diagnostic: None,
        url: None,
        stream: None,
    })
}

/// One message's history starting at the clock's time: a deferral, the send on another gateway
/// a minute later, the delivery a minute after that (its last activity: start + 2 min). Each
/// event is written when the clock reaches its time.
async fn send(db: &MysqlRecords, clock: &ManualClock, id: &str) {
    let t = clock.now_ms();
    let deferred = outcome(
        id,
        Outcome::Deferred,
        vec![attempt("gw-a", OutcomeClass::Unavailable, t - 100)],
        t,
    );
    db.apply(&[deferred]).await.unwrap();
    clock.advance(60_000);
    let sent = outcome(
        id,
        Outcome::Sent,
        vec![attempt("gw-b", OutcomeClass::Ok, clock.now_ms() - 1_000)],
        clock.now_ms(),
    );
    db.apply(&[sent]).await.unwrap();
    clock.advance(60_000);
    let delivered = delivery(
        &format!("d-{id}"),
        Some(id),
        DeliveryKind::Delivered,
        clock.now_ms(),
    );
    db.apply(&[delivered]).await.unwrap();
}

/// A fresh database with every embedded migration applied.
async fn fresh() -> MysqlRecords {
    gateway_tests::fresh_database("retention").await
}

/// A fresh database holding, at [`NOW`]:
/// - five messages last active 400 days ago ([`EXPIRED`]);
/// - `edge`, last active exactly at the cutoff (kept: only older ones expire);
/// - `revived`, sent 500 days ago but opened 100 days ago (kept whole, old rows included);
/// - `young-1`, `young-2`, last active 364 and 10 days ago;
/// - provider events naming no message, 400 days old (`orphan-old`) and 10 days old.
async fn history() -> (MysqlRecords, Arc<ManualClock>) {
    let db = fresh().await;
    let clock = Arc::new(ManualClock::new(NOW - 500 * DAY_MS));
    send(&db, &clock, "revived").await;
    for (i, id) in EXPIRED.iter().enumerate() {
        clock.set(NOW - 400 * DAY_MS + i64::try_from(i).unwrap() * 3_600_000);
        send(&db, &clock, id).await;
    }
    clock.set(NOW - 400 * DAY_MS);
    db.apply(&[delivery(
        "orphan-old",
        None,
        DeliveryKind::Complained,
        clock.now_ms(),
    )])
    .await
    .unwrap();
    clock.set(cutoff() - 120_000);
    send(&db, &clock, "edge").await;
    assert_eq!(
        clock.now_ms(),
        cutoff(),
        "edge's last activity is the cutoff"
    );
    clock.set(NOW - 364 * DAY_MS);
    send(&db, &clock, "young-1").await;
    clock.set(NOW - 100 * DAY_MS);
    db.apply(&[delivery(
        "o-revived",
        Some("revived"),
        DeliveryKind::Opened,
        clock.now_ms(),
    )])
    .await
    .unwrap();
    clock.set(NOW - 10 * DAY_MS);
    send(&db, &clock, "young-2").await;
    db.apply(&[delivery(
        "orphan-new",
        None,
        DeliveryKind::Complained,
        clock.now_ms(),
    )])
    .await
    .unwrap();
    clock.set(NOW);
    (db, clock)
}

/// Every row of the record's tables (and the statistics, which a purge must not touch) as
/// (table, key, the hex of every column): the message id, or for a provider event naming no
/// message its provider event id.
async fn snapshot(db: &MysqlRecords) -> BTreeSet<(String, String, String)> {
    let tables = [
        ("messages", "message_id"),
        ("message_recipients", "message_id"),
        ("send_attempts", "message_id"),
        ("delivery_events", "COALESCE(message_id, provider_event_id)"),
        ("gateway_usage_stats", "gateway_id"),
    ];
    let mut rows = BTreeSet::new();
    for (table, key) in tables {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(db.pool())
        .await
        .unwrap();
        assert!(!columns.is_empty(), "{table} has no columns");
        let hex: Vec<String> = columns
            .iter()
            .map(|c| format!("IFNULL(HEX(`{c}`), 'NULL')"))
            .collect();
        let sql = format!(
            "SELECT CAST({key} AS CHAR), CONCAT_WS('|', {}) FROM {table}",
            hex.join(", ")
        );
        for row in sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(db.pool())
            .await
            .unwrap()
        {
            rows.insert((table.to_owned(), row.get(0), row.get(1)));
        }
    }
    rows
}

async fn purge(
    db: &MysqlRecords,
    clock: &dyn Clock,
    budget: &PurgeBudget,
    mode: PurgeMode,
) -> (PurgeSummary, Vec<PurgeBatch>) {
    let mut batches = Vec::new();
    let summary = purge_expired(db, clock.now_ms(), retention(), budget, mode, |b| {
        batches.push(*b);
    })
    .await
    .unwrap();
    (summary, batches)
}

fn budget(batch_size: u32) -> PurgeBudget {
    PurgeBudget::new(batch_size, u32::MAX, Duration::from_secs(600)).unwrap()
}

/// What purging [`history`] removes: 5 messages of 2 recipients, 2 provider calls and 1
/// provider event each, and one provider event naming no message.
const EXPECTED: PurgeCounts = PurgeCounts {
    messages: 5,
    recipients: 10,
    send_attempts: 10,
    delivery_events: 5,
    unattached_events: 1,
};

#[tokio::test]
async fn a_purge_deletes_exactly_the_expired_messages_and_their_rows_in_batches() {
    let (db, clock) = history().await;
    let before = snapshot(&db).await;
    let purged_keys: BTreeSet<&str> = EXPIRED.iter().copied().chain(["orphan-old"]).collect();
    let expected_after: BTreeSet<(String, String, String)> = before
        .iter()
        .filter(|(_, key, _)| !purged_keys.contains(key.as_str()))
        .cloned()
        .collect();
    for key in &purged_keys {
        assert!(before.iter().any(|(_, k, _)| k == key), "{key} was written");
    }

    let (summary, batches) = purge(&db, clock.as_ref(), &budget(2), PurgeMode::Delete).await;
    assert_eq!(summary.counts, EXPECTED);
    assert_eq!((summary.cutoff, summary.dry_run), (cutoff(), false));
    assert!(!summary.more_remaining);
    // Five messages in batches of at most two, then the provider event naming no message.
    assert_eq!(summary.batches, 4);
    assert_eq!(
        batches
            .iter()
            .map(|b| (b.number, b.counts.messages, b.counts.unattached_events))
            .collect::<Vec<_>>(),
        [(1, 2, 0), (2, 2, 0), (3, 1, 0), (4, 0, 1)]
    );

    let after = snapshot(&db).await;
    assert_eq!(
        after, expected_after,
        "the kept records changed, or a purged one left a row"
    );
    let rows_of = |table: &str| before.iter().filter(|r| r.0 == table).count();
    let removed = |table: &str| rows_of(table) - after.iter().filter(|r| r.0 == table).count();
    assert_eq!(
        [
            removed("messages"),
            removed("message_recipients"),
            removed("send_attempts"),
            removed("delivery_events"),
        ],
        [5, 10, 10, 6]
    );
    assert_eq!(
        removed("gateway_usage_stats"),
        0,
        "the statistics outlive the records"
    );
    let kept: BTreeSet<&str> = after
        .iter()
        .filter(|r| r.0 == "messages")
        .map(|r| r.1.as_str())
        .collect();
    assert_eq!(
        kept,
        BTreeSet::from(["edge", "revived", "young-1", "young-2"])
    );

    // Idempotent: nothing is left to purge, and the second run changes nothing.
    let (again, batches) = purge(&db, clock.as_ref(), &budget(2), PurgeMode::Delete).await;
    assert_eq!(
        (again.counts, again.batches, again.more_remaining),
        (PurgeCounts::default(), 0, false)
    );
    assert!(batches.is_empty());
    assert_eq!(snapshot(&db).await, after);

    // A day later, `edge` (last active exactly at the old cutoff) has expired too.
    clock.advance(DAY_MS);
    let (next_day, _) = purge(&db, clock.as_ref(), &budget(2), PurgeMode::Delete).await;
    assert_eq!(next_day.counts.messages, 1);
}

#[tokio::test]
async fn a_dry_run_counts_the_same_batches_and_changes_nothing() {
    let (db, clock) = history().await;
    let before = snapshot(&db).await;
    let (dry, dry_batches) = purge(&db, clock.as_ref(), &budget(2), PurgeMode::DryRun).await;
    assert!(dry.dry_run);
    assert_eq!(
        snapshot(&db).await,
        before,
        "a dry run changed the database"
    );
    let (real, real_batches) = purge(&db, clock.as_ref(), &budget(2), PurgeMode::Delete).await;
    assert_eq!(dry.counts, EXPECTED);
    assert_eq!(
        (dry.counts, dry.batches, dry.more_remaining, dry_batches),
        (real.counts, real.batches, real.more_remaining, real_batches),
        "the dry run counted what the purge then did"
    );
}

#[tokio::test]
async fn a_run_stops_at_its_budget_and_the_next_goes_on() {
    let (db, clock) = history().await;
    let none = PurgeBudget::new(2, 10, Duration::ZERO).unwrap();
    let (idle, _) = purge(&db, clock.as_ref(), &none, PurgeMode::Delete).await;
    assert_eq!((idle.batches, idle.more_remaining), (0, true));

    let one = PurgeBudget::new(2, 1, Duration::from_secs(600)).unwrap();
    let (dry, _) = purge(&db, clock.as_ref(), &one, PurgeMode::DryRun).await;
    assert_eq!(
        (dry.batches, dry.counts.messages, dry.more_remaining),
        (1, 2, true)
    );
    let (first, _) = purge(&db, clock.as_ref(), &one, PurgeMode::Delete).await;
    assert_eq!(
        (first.batches, first.counts.messages, first.more_remaining),
        (1, 2, true)
    );
    let three = PurgeBudget::new(2, 3, Duration::from_secs(600)).unwrap();
    let (second, _) = purge(&db, clock.as_ref(), &three, PurgeMode::Delete).await;
    // Two batches of messages (2, 1), then the provider event: everything is done.
    assert_eq!(
        (
            second.batches,
            second.counts.messages,
            second.counts.unattached_events
        ),
        (3, 3, 1)
    );
    assert!(!second.more_remaining);
}

/// The deployed path: the recorder's scheduled invocation (told apart from SQS batches by
/// `recorder::invoke`, see its unit tests) purges at its clock's `now` and writes the metric
/// line.
#[tokio::test]
async fn the_recorders_scheduled_invocation_purges_and_writes_its_metric_line() {
    use gateway_core::recorder::Recorder;
    use gateway_core::state::memory::MemoryStore;
    use recorder::metrics::{Metrics, Output};
    use recorder::retention::RetentionJob;

    let (db, clock) = history().await;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let metrics = Metrics::new(
        "MailGateway",
        clock.clone(),
        Output::Memory(Arc::clone(&lines)),
    );
    let deps = recorder::Deps {
        recorder: Arc::new(recorder::handler::Running::Fixed(Arc::new(Recorder::new(
            metrics.counting(Arc::new(db.clone())),
            Arc::new(MemoryStore::new()),
            clock.clone(),
        )))),
        metrics: Arc::new(metrics),
        dead_letters: None,
        retention: Some(RetentionJob {
            records: db.clone(),
            retention: retention(),
            clock: clock.clone(),
        }),
    };
    let summary = recorder::handler::scheduled(&deps).await.unwrap();
    assert_eq!(summary.counts, EXPECTED);
    assert!(!summary.more_remaining);
    let lines = lines.lock().unwrap().clone();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["RetentionPurgedMessages"], 5);
    assert_eq!(line["RetentionPurgedRows"], 5 + 10 + 10 + 5 + 1);
    assert_eq!(line["RetentionFailures"], 0);
}
