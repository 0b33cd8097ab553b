//! The MySQL record of delivery on a real MariaDB: migrations, the same results as the in-memory
//! adapter whatever the arrival order, replays that change nothing, hourly statistics and the
//! reporting views, and an outage reported as retryable.
//!
//! Needs MariaDB: `scripts/services up && source .local/services.env` (exports `DATABASE_URL`,
//! a server URL; each test creates its own database).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use gateway_core::breaker::{Phase, TransitionReason};
use gateway_core::events::{
    AttemptRecord, BreakerEvent, DeliveryEvent, DeliveryKind, GatewayEvent, HealthEvent,
    HealthStatus, Outcome, OutcomeClass, OutcomeEvent, RecipientKind, RecipientOutcome,
    RecipientStatus,
};
use gateway_core::records::mysql::{MysqlRecords, PoolSettings};
use gateway_core::records::{MemoryRecords, RecordReader, RecordWriter};
use sqlx::Row;

/// 2026-11-28T10:00:00Z.
const T0: i64 = 1_795_860_000_000;

/// A fresh, migrated database.
async fn fresh() -> MysqlRecords {
    gateway_tests::fresh_database("rec").await
}

fn attempt(gateway: &str, class: OutcomeClass, at: i64, latency_ms: u64) -> AttemptRecord {
    AttemptRecord {
        gateway: gateway.into(),
        gateway_type: "mailgun".into(),
        class,
        http_status: match class {
            OutcomeClass::Ok => Some(200),
            OutcomeClass::Unavailable => Some(503),
            OutcomeClass::Throttled => Some(429),
            _ => None,
        },
        latency_ms,
        error: (class != OutcomeClass::Ok).then(|| "provider said no".into()),
        at,
    }
}

fn outcome(
    id: &str,
    outcome: Outcome,
    status: RecipientStatus,
    attempts: Vec<AttemptRecord>,
    at: i64,
) -> GatewayEvent {
    GatewayEvent::Outcome(OutcomeEvent {
        message_id: id.into(),
        sender: "dr@clinic.example".into(),
        subject: "Your appointment".into(),
        campaign_id: Some("flu-2026".into()),
        user_id: Some("u-42".into()),
        tags: vec!["appointment".into()],
        metadata: BTreeMap::from([("invitation_id".into(), serde_json::json!("123"))]),
        recipients: vec![
            RecipientOutcome {
                address: "Patient@Example.org".into(),
                kind: RecipientKind::To,
                status,
            },
            RecipientOutcome {
                address: "family@example.org".into(),
                kind: RecipientKind::Cc,
                status,
            },
        ],
        outcome,
        gateway_id: (outcome == Outcome::Sent).then(|| "gw-b".into()),
        gateway_type: (outcome == Outcome::Sent).then(|| "mailgun".into()),
        provider_message_id: (outcome == Outcome::Sent).then(|| "<p1@mg.example>".into()),
        attempts,
        reason: (outcome == Outcome::Deferred).then(|| "gw-a: 503".into()),
        retry_at: (outcome == Outcome::Deferred).then_some(at + 60_000),
        at,
    })
}

fn delivery(
    id: Option<&str>,
    event_id: &str,
    recipient: &str,
    kind: DeliveryKind,
    at: i64,
) -> GatewayEvent {
    GatewayEvent::Delivery(DeliveryEvent {
        provider: "mailgun".into(),
        provider_event_id: event_id.into(),
        message_id: id.map(str::to_owned),
        recipient: recipient.into(),
        kind,
        at,
        diagnostic: matches!(kind, DeliveryKind::SoftBounce | DeliveryKind::HardBounce)
            .then(|| format!("550 {event_id}")),
        url: (kind == DeliveryKind::Clicked).then(|| "https://clinic.example/a".into()),
        stream: None,
    })
}

/// A message deferred once (gw-a unavailable), then sent by gw-b after a failover, then
/// delivered, opened twice (and one open replayed), clicked; its cc soft-bounces. Plus a
/// delivery event naming no message, health results and a breaker trip.
fn history() -> Vec<GatewayEvent> {
    let m = "m-1";
    vec![
        outcome(
            m,
            Outcome::Deferred,
            RecipientStatus::Deferred,
            vec![attempt("gw-a", OutcomeClass::Unavailable, T0, 120)],
            T0 + 200,
        ),
        outcome(
            m,
            Outcome::Sent,
            RecipientStatus::Sent,
            vec![
                attempt("gw-a", OutcomeClass::Throttled, T0 + 60_000, 80),
                attempt("gw-b", OutcomeClass::Ok, T0 + 60_100, 100),
            ],
            T0 + 60_300,
        ),
        delivery(
            Some(m),
            "ev-1",
            "patient@example.org",
            DeliveryKind::Delivered,
            T0 + 61_000,
        ),
        delivery(
            Some(m),
            "ev-2",
            "patient@example.org",
            DeliveryKind::Opened,
            T0 + 70_000,
        ),
        delivery(
            Some(m),
            "ev-3",
            "patient@example.org",
            DeliveryKind::Opened,
            T0 + 80_000,
        ),
        delivery(
            Some(m),
            "ev-2",
            "patient@example.org",
            DeliveryKind::Opened,
            T0 + 70_000,
        ),
        delivery(
            Some(m),
            "ev-4",
            "patient@example.org",
            DeliveryKind::Clicked,
            T0 + 90_000,
        ),
        delivery(
            Some(m),
            "ev-5",
            "family@example.org",
            DeliveryKind::SoftBounce,
            T0 + 62_000,
        ),
        delivery(
            None,
            "ev-6",
            "someone@example.org",
            DeliveryKind::Complained,
            T0 + 63_000,
        ),
        GatewayEvent::Health(HealthEvent {
            gateway_id: "gw-b".into(),
            gateway_type: "mailgun".into(),
            status: HealthStatus::Healthy,
            latency_ms: Some(40),
            consecutive_failures: 0,
            consecutive_successes: 3,
            error: None,
            at: T0 + 30_000,
        }),
        GatewayEvent::Health(HealthEvent {
            gateway_id: "gw-b".into(),
            gateway_type: "mailgun".into(),
            status: HealthStatus::Degraded,
            latency_ms: Some(900),
            consecutive_failures: 1,
            consecutive_successes: 0,
            error: Some("slow".into()),
            at: T0 + 90_000,
        }),
        GatewayEvent::Breaker(BreakerEvent {
            gateway_id: "gw-a".into(),
            from: Phase::Closed,
            to: Phase::Open,
            reason: TransitionReason::FailureThreshold {
                failures: 5,
                successes: 0,
            },
            at: T0 + 60_050,
        }),
    ]
}

/// Deterministic permutations of `items` (a fixed linear congruential shuffle).
fn shuffled(items: &[GatewayEvent], seed: u64) -> Vec<GatewayEvent> {
    let mut out = items.to_vec();
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    for i in (1..out.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = usize::try_from((state >> 33) % (i as u64 + 1)).unwrap();
        out.swap(i, j);
    }
    out
}

async fn table_counts(db: &MysqlRecords) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for table in [
        "messages",
        "message_recipients",
        "send_attempts",
        "delivery_events",
        "breaker_transitions",
        "gateway_health_status",
    ] {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(db.pool())
                .await
                .unwrap();
        out.push((table.to_owned(), n));
    }
    out
}

async fn stats(db: &MysqlRecords) -> Vec<(String, i64, i64, i64, i64, i64, i64, i64, i64, i64)> {
    sqlx::query(
        "SELECT gateway_id, CAST(SUM(attempts) AS SIGNED) a, CAST(SUM(sent) AS SIGNED) s, \
         CAST(SUM(failed) AS SIGNED) f, CAST(SUM(deferred) AS SIGNED) d, \
         CAST(SUM(bounced) AS SIGNED) b, CAST(SUM(opens) AS SIGNED) o, \
         CAST(SUM(clicks) AS SIGNED) c, CAST(SUM(unique_opens) AS SIGNED) uo, \
         CAST(SUM(breaker_trips) AS SIGNED) t \
         FROM gateway_usage_stats GROUP BY gateway_id ORDER BY gateway_id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            r.get::<String, _>("gateway_id"),
            r.get("a"),
            r.get("s"),
            r.get("f"),
            r.get("d"),
            r.get("b"),
            r.get("o"),
            r.get("c"),
            r.get("uo"),
            r.get("t"),
        )
    })
    .collect()
}

#[tokio::test]
async fn migrations_apply_once_and_rerunning_them_is_a_no_op() {
    let db = fresh().await;
    assert_eq!(db.migrate().await.unwrap(), Vec::<i64>::new());
    for view in [
        "gateway_performance_summary",
        "daily_gateway_stats",
        "gateway_health_summary",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM {view}")))
            .fetch_all(db.pool())
            .await
            .unwrap_or_else(|e| panic!("{view}: {e}"));
    }
}

#[tokio::test]
async fn the_record_matches_the_in_memory_adapter_in_every_arrival_order() {
    let history = history();
    for seed in 0..6u64 {
        let events = if seed == 0 {
            history.clone()
        } else {
            shuffled(&history, seed)
        };
        let memory = MemoryRecords::new();
        memory.apply(&events).await.unwrap();
        let expected = memory.message("m-1").await.unwrap().unwrap();

        // One event per batch, and the whole history in one batch.
        let one_by_one = fresh().await;
        for e in &events {
            one_by_one.apply(std::slice::from_ref(e)).await.unwrap();
        }
        let at_once = fresh().await;
        at_once.apply(&events).await.unwrap();
        for db in [&one_by_one, &at_once] {
            let got = db.message("m-1").await.unwrap().unwrap();
            assert_eq!(got, expected, "seed {seed}");
        }
        assert_eq!(
            table_counts(&one_by_one).await,
            table_counts(&at_once).await,
            "seed {seed}"
        );
        assert_eq!(
            stats(&one_by_one).await,
            stats(&at_once).await,
            "seed {seed}"
        );
    }
}

#[tokio::test]
async fn the_history_ends_in_the_expected_rows_and_statistics() {
    let db = fresh().await;
    db.apply(&history()).await.unwrap();
    let record = db.message("m-1").await.unwrap().unwrap();
    assert_eq!(record.status.as_str(), "sent");
    assert_eq!(record.gateway_id.as_deref(), Some("gw-b"));
    let patient = record.recipient("patient@example.org").unwrap();
    assert_eq!(patient.status, RecipientStatus::Delivered);
    assert_eq!((patient.opens, patient.clicks), (2, 1));
    let family = record.recipient("family@example.org").unwrap();
    assert_eq!(family.status, RecipientStatus::SoftBounced);
    assert_eq!(family.bounce_reason.as_deref(), Some("550 ev-5"));
    assert_eq!(record.attempts.len(), 3);
    assert_eq!(record.events.len(), 5);

    assert_eq!(
        table_counts(&db).await,
        [
            ("messages".to_owned(), 1),
            ("message_recipients".to_owned(), 2),
            ("send_attempts".to_owned(), 3),
            ("delivery_events".to_owned(), 6),
            ("breaker_transitions".to_owned(), 1),
            ("gateway_health_status".to_owned(), 1),
        ]
    );
    // gw-a: two calls (unavailable, throttled), one breaker trip. gw-b: one accepted call,
    // then the message's delivery events: 1 bounce, 2 opens (the replay not counted), 1 click,
    // 1 unique open.
    assert_eq!(
        stats(&db).await,
        [
            ("gw-a".to_owned(), 2, 0, 0, 2, 0, 0, 0, 0, 1),
            ("gw-b".to_owned(), 1, 1, 0, 0, 1, 2, 1, 1, 0),
        ]
    );
    let health = sqlx::query(
        "SELECT status, consecutive_failures FROM gateway_health_status WHERE gateway_id = 'gw-b'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(health.get::<String, _>("status"), "DEGRADED");
    assert_eq!(health.get::<i32, _>("consecutive_failures"), 1);
}

#[tokio::test]
async fn replaying_every_event_changes_nothing() {
    let db = fresh().await;
    db.apply(&history()).await.unwrap();
    let (counts, figures, record) = (
        table_counts(&db).await,
        stats(&db).await,
        db.message("m-1").await.unwrap(),
    );
    db.apply(&history()).await.unwrap();
    db.apply(&shuffled(&history(), 42)).await.unwrap();
    assert_eq!(table_counts(&db).await, counts);
    assert_eq!(stats(&db).await, figures);
    assert_eq!(db.message("m-1").await.unwrap(), record);
}

#[tokio::test]
async fn the_views_report_the_seeded_figures() {
    let db = fresh().await;
    db.apply(&history()).await.unwrap();
    let row = sqlx::query(
        "SELECT CAST(total_attempts AS SIGNED) a, CAST(sent AS SIGNED) s \
         FROM gateway_performance_summary WHERE gateway_id = 'gw-a'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!((row.get::<i64, _>("a"), row.get::<i64, _>("s")), (2, 0));
    let success: String = sqlx::query_scalar(
        "SELECT CAST(success_rate AS CHAR) FROM gateway_performance_summary WHERE gateway_id = 'gw-b'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(success, "100.00");
    let latency: String = sqlx::query_scalar(
        "SELECT CAST(avg_latency_ms AS CHAR) FROM gateway_performance_summary WHERE gateway_id = 'gw-a'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(latency, "100.0", "(120 + 80) / 2");
    // The daily view covers the last 30 days: the seeded day (2026-11-28) is today here only if
    // the clock agrees, so it is checked against the table it summarises instead.
    let daily: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(total_attempts), 0) AS SIGNED) FROM daily_gateway_stats",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    let recent: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(attempts), 0) AS SIGNED) FROM gateway_usage_stats \
         WHERE stat_date >= UTC_DATE() - INTERVAL 30 DAY",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(daily, recent);
    let summary =
        sqlx::query("SELECT status FROM gateway_health_summary WHERE gateway_id = 'gw-b'")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!(summary.get::<String, _>("status"), "DEGRADED");
}

#[tokio::test]
async fn an_unreachable_database_is_a_retryable_error_that_names_no_password() {
    let db = MysqlRecords::connect(
        "mysql://user:s3cret-password@127.0.0.1:1/nowhere",
        &PoolSettings {
            acquire_timeout: std::time::Duration::from_secs(1),
            ..PoolSettings::default()
        },
    )
    .unwrap();
    let error = db.apply(&history()).await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    let shown = format!("{error} {error:?} {db:?}");
    assert!(!shown.contains("s3cret-password"), "{shown}");
}

/// The recorder over MySQL: while the database is away every record of the batch is a failure
/// to retry; once it is back the same batch records, and a further replay adds no row.
#[tokio::test]
async fn the_recorder_retries_through_an_outage_without_duplicating_rows() {
    use gateway_core::clock::ManualClock;
    use gateway_core::queue::Received;
    use gateway_core::recorder::Recorder;
    use gateway_core::state::memory::MemoryStore;
    use std::sync::Arc;

    let batch: Vec<Received> = history()
        .into_iter()
        .enumerate()
        .map(|(i, e)| Received {
            message_id: format!("q-{i}"),
            receipt_handle: format!("rh-{i}"),
            body: serde_json::to_string(&e).unwrap(),
            receive_count: 1,
            sent_at: T0,
        })
        .collect();
    let recorder = |records: MysqlRecords| {
        Recorder::new(
            Arc::new(records),
            Arc::new(MemoryStore::new()),
            Arc::new(ManualClock::new(T0)),
        )
    };
    let away = MysqlRecords::connect(
        "mysql://gateway_test:gateway_test@127.0.0.1:1/nowhere",
        &PoolSettings {
            acquire_timeout: std::time::Duration::from_secs(1),
            ..PoolSettings::default()
        },
    )
    .unwrap();
    let report = recorder(away).process(&batch).await;
    assert_eq!(
        report.failures.len(),
        batch.len(),
        "every record is retried"
    );

    let db = fresh().await;
    let back = recorder(db.clone());
    let report = back.process(&batch).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let counts = table_counts(&db).await;
    let figures = stats(&db).await;
    assert!(back.process(&batch).await.failures.is_empty());
    assert_eq!(table_counts(&db).await, counts);
    assert_eq!(stats(&db).await, figures);
}

/// A value longer than its column is refused as unrecordable (its event goes to the dead-letter
/// queue), never truncated into the record, and nothing of its batch is written.
#[tokio::test]
async fn a_value_too_long_for_its_column_is_refused_not_truncated() {
    let db = fresh().await;
    let long = DeliveryEvent {
        provider: "mailgun".into(),
        provider_event_id: "e".repeat(300),
        message_id: None,
        recipient: "x@example.org".into(),
        kind: DeliveryKind::Delivered,
        at: T0,
        diagnostic: None,
        url: None,
        stream: None,
    };
    let mut batch = history();
    batch.push(GatewayEvent::Delivery(long));
    let error = db.apply(&batch).await.unwrap_err();
    assert!(!error.is_retryable(), "{error:?}");
    assert!(error.to_string().contains("does not fit"), "{error}");
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM delivery_events")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0, "the whole batch was rolled back");
    assert!(db.message("m-1").await.unwrap().is_none());
}

fn config_event(gateways: serde_json::Value, at: i64) -> GatewayEvent {
    let config = gateway_core::config::load_config(
        Some(&serde_json::json!({ "gateways": gateways }).to_string()),
        None,
        &|_: &str| None,
    )
    .unwrap()
    .config;
    GatewayEvent::Config(gateway_core::config_audit::ConfigEvent::of(
        &config,
        "records_mysql test",
        Some("configuration loaded at start-up"),
        at,
    ))
}

fn mailgun(id: &str, enabled: bool, priority: u32, can_route: &[&str]) -> serde_json::Value {
    serde_json::json!({"id": id, "type": "mailgun", "enabled": enabled, "priority": priority,
        "mailgun": {"api_key": "key-inline-s3cret", "domain": "mg.example.com"},
        "routing": {"can_route": can_route}})
}

async fn audit(db: &MysqlRecords) -> Vec<(String, String, bool, bool)> {
    sqlx::query_as::<_, (String, String, Option<String>, Option<String>)>(
        "SELECT gateway_id, action, old_config, new_config FROM gateway_config_audit ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap()
    .into_iter()
    .map(|(g, a, old, new)| (g, a, old.is_some(), new.is_some()))
    .collect()
}

/// Configuration changes become audit rows (each once, whatever the replays), the routing
/// rules follow the current config, an older config is ignored, and no secret is stored.
#[tokio::test]
async fn configuration_changes_are_audited_once_and_routing_rules_follow() {
    let db = fresh().await;
    let memory = MemoryRecords::new();
    let first = config_event(
        serde_json::json!([
            mailgun("a", true, 1, &["*"]),
            mailgun("b", true, 2, &["@clinic.example"])
        ]),
        T0,
    );
    let second = config_event(
        serde_json::json!([mailgun("a", false, 1, &["*"]), mailgun("c", true, 3, &[])]),
        T0 + 60_000,
    );
    for events in [
        vec![first.clone()],
        vec![first.clone()],
        vec![second.clone()],
        vec![first],
    ] {
        db.apply(&events).await.unwrap();
        memory.apply(&events).await.unwrap();
    }
    let rows = audit(&db).await;
    let expected = [
        ("a", "CREATED", false, true),
        ("b", "CREATED", false, true),
        ("a", "DISABLED", true, true),
        ("b", "DELETED", true, false),
        ("c", "CREATED", false, true),
    ];
    assert_eq!(
        rows,
        expected
            .iter()
            .map(|(g, a, o, n)| ((*g).to_owned(), (*a).to_owned(), *o, *n))
            .collect::<Vec<_>>(),
        "the replay and the older config changed nothing"
    );
    let in_memory: Vec<(String, String)> = memory
        .config_audit()
        .into_iter()
        .map(|r| (r.gateway_id, r.action))
        .collect();
    assert_eq!(
        in_memory,
        rows.iter()
            .map(|r| (r.0.clone(), r.1.clone()))
            .collect::<Vec<_>>(),
        "both adapters audit alike"
    );
    let rules: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT gateway_id, rule_type, enabled FROM gateway_routing_rules ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(
        rules,
        [
            ("a".to_owned(), "PATTERN".to_owned(), false),
            ("c".to_owned(), "FALLBACK".to_owned(), true)
        ]
    );
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT CONCAT(COALESCE(old_config, ''), COALESCE(new_config, '')) FROM gateway_config_audit",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert!(stored.iter().all(|s| !s.contains("key-inline-s3cret")));
    assert!(stored.iter().any(|s| s.contains("<redacted>")));
}

/// Recorders starting together after a deploy all audit the same new configuration: each
/// change is written once.
#[tokio::test]
async fn concurrent_audits_of_one_configuration_write_each_change_once() {
    let (db, url) = gateway_tests::fresh_database_with_url("rec").await;
    let event = config_event(
        serde_json::json!([mailgun("a", true, 1, &["*"]), mailgun("b", true, 2, &["*"])]),
        T0,
    );
    // Eight recorders, each with its own pool, released together.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let db = MysqlRecords::connect(&url, &PoolSettings::default()).unwrap();
            let (event, start) = (event.clone(), start.clone());
            tokio::spawn(async move {
                // Connected before the start, so the audits themselves overlap.
                sqlx::query("SELECT 1").execute(db.pool()).await.unwrap();
                start.wait().await;
                // A deadlock or lock wait is retryable, as SQS would retry the record.
                for _ in 0..10 {
                    match db.apply(std::slice::from_ref(&event)).await {
                        Ok(_) => return,
                        Err(e) if e.is_retryable() => {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                panic!("never applied");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        audit(&db).await,
        [
            ("a".to_owned(), "CREATED".to_owned(), false, true),
            ("b".to_owned(), "CREATED".to_owned(), false, true)
        ]
    );
}

/// Every row of every table of the record, as text, in a stable order.
async fn every_row(db: &MysqlRecords) -> BTreeMap<String, Vec<String>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY table_name",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for table in tables {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position",
        )
        .bind(&table)
        .fetch_all(db.pool())
        .await
        .unwrap();
        let row = columns
            .iter()
            .map(|c| format!("COALESCE(CAST(`{c}` AS CHAR), '<NULL>')"))
            .collect::<Vec<_>>()
            .join(", '|', ");
        // Table and column names come from the schema itself, not from input.
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT CONCAT({row}) FROM `{table}` ORDER BY 1"
        )))
        .fetch_all(db.pool())
        .await
        .unwrap();
        out.insert(table, rows);
    }
    out
}

/// A message refused for good (a permanent 400 from its only gateway), then delivered again by
/// the queue a minute later: the redelivery sends nothing and every row of the record stays
/// exactly as the first delivery left it (gateway, reason, time and recipients included).
#[tokio::test]
async fn a_permanently_failed_message_redelivered_leaves_every_row_identical() {
    use std::sync::Arc;

    use gateway_core::clock::{Clock, ManualClock};
    use gateway_core::config::load_config;
    use gateway_core::events::{EventSink, MemoryEventSink};
    use gateway_core::pipeline::{Batch, Pipeline, PipelineSettings};
    use gateway_core::providers::factory::build_providers;
    use gateway_core::queue::Received;
    use gateway_core::secrets::SecretResolver;
    use gateway_core::state::StateStore;
    use gateway_core::state::memory::MemoryStore;

    let config = load_config(
        Some(
            r#"{"gateways": [{"id": "refusing", "type": "simulated", "display_name": "Refusing",
                "priority": 1, "simulated": {"permanent_rate": 1.0},
                "routing": {"can_route": ["*"]}}]}"#,
        ),
        None,
        &|_| None,
    )
    .unwrap()
    .config;
    let clock = Arc::new(ManualClock::new(T0));
    let providers = build_providers(
        &config,
        &Arc::new(SecretResolver::new(clock.clone() as Arc<dyn Clock>)),
        &config.http,
        clock.clone() as Arc<dyn Clock>,
    )
    .await
    .unwrap();
    let sink = Arc::new(MemoryEventSink::new());
    let pipeline = Pipeline::new(
        Arc::new(config),
        providers,
        Arc::new(MemoryStore::new()) as Arc<dyn StateStore>,
        sink.clone() as Arc<dyn EventSink>,
        clock.clone() as Arc<dyn Clock>,
        PipelineSettings::default(),
    );
    let body = serde_json::json!({
        "id": "refused-1", "from": "dr@clinic.example",
        "to": ["patient@example.org"], "cc": ["family@example.org"],
        "subject": "Your results", "text": "See the portal",
        "tags": ["results"], "metadata": {"case": "C-1"},
    })
    .to_string();
    let delivery = |n: u32| Received {
        message_id: "sqs-1".into(),
        receipt_handle: format!("rh-{n}"),
        body: body.clone(),
        receive_count: n,
        sent_at: T0,
    };
    let db = fresh().await;

    let first = [delivery(1)];
    let report = pipeline
        .process(Batch {
            records: &first,
            owner: "inv-1",
            deadline: clock.now_ms() + 60_000,
        })
        .await;
    assert_eq!(report.items[0].outcome, Outcome::Failed);
    db.apply(&sink.take()).await.unwrap();
    let before = every_row(&db).await;
    assert!(
        before["messages"][0].contains("|refusing|"),
        "the gateway is recorded: {:?}",
        before["messages"]
    );

    clock.advance(60_000);
    let again = [delivery(2)];
    let report = pipeline
        .process(Batch {
            records: &again,
            owner: "inv-2",
            deadline: clock.now_ms() + 60_000,
        })
        .await;
    assert_eq!(report.items[0].outcome, Outcome::Failed);
    assert!(report.items[0].replayed);
    let replayed = sink.take();
    assert_eq!(replayed.len(), 1, "the failure is reported again");
    db.apply(&replayed).await.unwrap();
    assert_eq!(every_row(&db).await, before);
}
