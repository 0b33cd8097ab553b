//! Message search (`GET /api/messages?…`) on MariaDB and on the in-memory record, with the
//! messages written the way production writes them: outcome and provider events as SQS
//! records through the recorder. Each scenario runs against both adapters and must give the
//! same answers (one contract, every implementation).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use gateway_core::clock::{Clock, ManualClock};
use gateway_core::config::load_config;
use gateway_core::events::{
    AttemptRecord, DeliveryEvent, DeliveryKind, GatewayEvent, Outcome, OutcomeClass, OutcomeEvent,
    RecipientKind, RecipientOutcome, RecipientStatus,
};
use gateway_core::queue::Received;
use gateway_core::recorder::Recorder;
use gateway_core::records::mysql::MysqlRecords;
use gateway_core::records::{MemoryRecords, RecordWriter};
use gateway_core::state::StateStore;
use gateway_core::state::memory::MemoryStore;
use gateway_core::status::{StatusApi, StatusRecords};
use serde_json::Value;

/// 2026-11-28T10:00:00Z.
const T0: i64 = 1_795_860_000_000;

/// Messages to `many@example.org`, for pagination: 7, two of them at the same time.
const MANY: usize = 7;

/// A fresh database with every embedded migration applied.
async fn fresh_mysql() -> MysqlRecords {
    gateway_tests::fresh_database("search").await
}

#[allow(clippy::too_many_arguments)]
fn outcome(
    id: &str,
    sender: &str,
    to: &[&str],
    cc: &[&str],
    campaign: Option<&str>,
    result: Outcome,
    at: i64,
) -> GatewayEvent {
    let status = match result {
        Outcome::Sent => RecipientStatus::Sent,
        Outcome::Deferred => RecipientStatus::Deferred,
        Outcome::Failed => RecipientStatus::Failed,
        Outcome::Rejected => RecipientStatus::Rejected,
    };
    let recipient = |address: &&str, kind| RecipientOutcome {
        address: (*address).to_owned(),
        kind,
        status,
    };
    GatewayEvent::Outcome(OutcomeEvent {
        message_id: id.into(),
        sender: sender.into(),
        subject: format!("Subject of {id}"),
        campaign_id: campaign.map(str::to_owned),
        user_id: None,
        tags: Vec::new(),
        metadata: BTreeMap::new(),
        recipients: to
            .iter()
            .map(|a| recipient(a, RecipientKind::To))
            .chain(cc.iter().map(|a| recipient(a, RecipientKind::Cc)))
            .collect(),
        outcome: result,
        gateway_id: Some("mailgun-primary".into()),
        gateway_type: Some("mailgun".into()),
        provider_message_id: (result == Outcome::Sent).then(|| format!("<{id}@mg.example>")),
        attempts: vec![AttemptRecord {
            gateway: "mailgun-primary".into(),
            gateway_type: "mailgun".into(),
            class: if result == Outcome::Sent {
                OutcomeClass::Ok
            } else {
                OutcomeClass::Permanent
            },
            http_status: Some(200),
            latency_ms: 40,
            error: None,
            at: at - 5,
        }],
        reason: (result != Outcome::Sent).then(|| "550 mailbox unavailable".into()),
        retry_at: None,
        at,
    })
}

fn delivered(id: &str, recipient: &str, at: i64) -> GatewayEvent {
    GatewayEvent::Delivery(DeliveryEvent {
        provider: "mailgun".into(),
        provider_event_id: format!("ev-{id}"),
        message_id: Some(id.into()),
        recipient: recipient.into(),
        kind: DeliveryKind::Delivered,
        at,
        diagnostic: None,
        url: None,
        stream: None,
    })
}

/// The record: the results email (mixed-case addresses, a cc, delivered), a failed reminder
/// from another sender, and [`MANY`] newsletters to one address.
fn history() -> Vec<GatewayEvent> {
    let mut events = vec![
        outcome(
            "results-1",
            "Lab@Clinic.Example",
            &["Patient.One@Example.ORG"],
            &["Family@Example.org"],
            Some("results"),
            Outcome::Sent,
            T0 + 1_000,
        ),
        delivered("results-1", "patient.one@example.org", T0 + 2_000),
        outcome(
            "reminder-1",
            "frontdesk@clinic.example",
            &["someone@example.org"],
            &[],
            Some("flu-2026"),
            Outcome::Failed,
            T0 + 3_000,
        ),
    ];
    for i in 0..MANY {
        // news-3 and news-4 share a time: the id breaks the tie.
        let at = T0 + 10_000 + 1_000 * i64::try_from(i.min(3) + i.saturating_sub(4)).unwrap();
        events.push(outcome(
            &format!("news-{i}"),
            "news@clinic.example",
            &["many@example.org"],
            &[],
            Some("flu-2026"),
            Outcome::Sent,
            at,
        ));
    }
    events
}

/// Records [`history`] through the recorder, as SQS records, and returns the status API on it.
async fn api_over(records: Arc<dyn StatusRecords>, writer: Arc<dyn RecordWriter>) -> StatusApi {
    let clock = Arc::new(ManualClock::new(T0 + 60_000));
    let state = Arc::new(MemoryStore::new());
    let batch: Vec<Received> = history()
        .iter()
        .enumerate()
        .map(|(i, e)| Received {
            message_id: format!("q-{i}"),
            receipt_handle: format!("rh-{i}"),
            body: serde_json::to_string(e).unwrap(),
            receive_count: 1,
            sent_at: T0,
        })
        .collect();
    let recorder = Recorder::new(
        writer,
        Arc::clone(&state) as Arc<dyn StateStore>,
        Arc::clone(&clock) as Arc<dyn Clock>,
    );
    let report = recorder.process(&batch).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let config = r#"{"gateways": [{"id": "mailgun-primary", "type": "capture",
        "display_name": "Local", "capture": {"directory": "/tmp/unused"},
        "routing": {"can_route": ["*"]}}]}"#;
    StatusApi::new(
        Arc::new(load_config(Some(config), None, &|_| None).unwrap().config),
        state,
        Some(records),
        clock,
    )
}

/// The status API over MariaDB and over memory, both fed [`history`].
async fn both() -> Vec<(&'static str, StatusApi)> {
    let mysql = Arc::new(fresh_mysql().await);
    let memory = Arc::new(MemoryRecords::new());
    vec![
        (
            "mysql",
            api_over(mysql.clone() as Arc<dyn StatusRecords>, mysql).await,
        ),
        (
            "memory",
            api_over(memory.clone() as Arc<dyn StatusRecords>, memory).await,
        ),
    ]
}

/// Checks an answer against `docs/openapi.yaml`: its status is described for the route and
/// its body validates against that answer's schema.
fn documented(status: u16, body: &Value) {
    static DOC: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml"))
                .unwrap();
        serde_norway::from_str(&text).unwrap()
    });
    let response = &DOC["paths"]["/api/messages"]["get"]["responses"][status.to_string()];
    assert!(response.is_object(), "{status} is not documented: {body}");
    let mut schema = response["content"]["application/json"]["schema"].clone();
    schema["components"] = DOC["components"].clone();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{status}: {errors:#?}\n{body:#}");
}

async fn get(api: &StatusApi, query: &str) -> (u16, Value) {
    let reply = api
        .handle_request("GET", "/api/messages", Some(query))
        .await;
    let body = serde_json::from_str(&reply.body).unwrap();
    documented(reply.status, &body);
    (reply.status, body)
}

fn ids(answer: &Value) -> Vec<String> {
    answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect()
}

fn news(order: &[usize]) -> Vec<String> {
    order.iter().map(|i| format!("news-{i}")).collect()
}

#[tokio::test]
async fn search_by_recipient_finds_the_message_and_its_events() {
    for (adapter, api) in both().await {
        let (status, answer) = get(&api, "recipient=PATIENT.one%40example.org").await;
        assert_eq!(status, 200, "{adapter}: {answer}");
        assert_eq!(ids(&answer), ["results-1"], "{adapter}");
        let hit = &answer["messages"][0];
        assert_eq!(hit["sender"], "Lab@Clinic.Example", "{adapter}");
        assert_eq!(hit["status"], "sent", "{adapter}");
        assert_eq!(hit["gateway_id"], "mailgun-primary", "{adapter}");
        assert_eq!(hit["subject"], "Subject of results-1", "{adapter}");
        assert_eq!(hit["created_at"], T0 + 1_000, "{adapter}");
        assert_eq!(
            hit["recipients"],
            serde_json::json!([
                {"address": "Patient.One@Example.ORG", "kind": "to", "status": "DELIVERED"},
                {"address": "Family@Example.org", "kind": "cc", "status": "SENT"},
            ]),
            "{adapter}"
        );
        assert_eq!(hit["link"], "/api/messages/results-1", "{adapter}");
        assert_eq!(answer["next_cursor"], Value::Null, "{adapter}");
        for never in ["text", "html", "body", "attachments"] {
            assert!(hit.get(never).is_none(), "{adapter}: {never} in {hit}");
        }

        let record = api.handle("GET", hit["link"].as_str().unwrap()).await;
        assert_eq!(record.status, 200, "{adapter}: {}", record.body);
        let record: Value = serde_json::from_str(&record.body).unwrap();
        let events = record["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{adapter}: {record}");
        assert_eq!(events[0]["kind"], "delivered", "{adapter}");
        assert_eq!(record["attempts"].as_array().unwrap().len(), 1, "{adapter}");
    }
}

#[tokio::test]
async fn each_filter_narrows_the_search() {
    let window = |from: i64, to: i64| format!("since={}&until={}", T0 + from, T0 + to);
    let cases: Vec<(String, Vec<String>)> = vec![
        // A cc recipient, any case.
        (
            "recipient=FAMILY%40example.ORG".into(),
            vec!["results-1".into()],
        ),
        (
            "sender=LAB%40clinic.example".into(),
            vec!["results-1".into()],
        ),
        (
            "sender=frontdesk%40clinic.example".into(),
            vec!["reminder-1".into()],
        ),
        ("campaign_id=results".into(), vec!["results-1".into()]),
        // Campaign ids are identifiers: exact.
        ("campaign_id=RESULTS".into(), vec![]),
        (
            "campaign_id=flu-2026&status=failed".into(),
            vec!["reminder-1".into()],
        ),
        (
            "campaign_id=flu-2026&status=sent&limit=100".into(),
            news(&[6, 5, 4, 3, 2, 1, 0]),
        ),
        // since inclusive, until exclusive, on created_at.
        (window(1_000, 3_000), vec!["results-1".into()]),
        (
            window(1_000, 3_001),
            vec!["reminder-1".into(), "results-1".into()],
        ),
        // RFC 3339 with an offset: 11:00:01+01:00 is T0 + 1 s.
        (
            "since=2026-11-28T11:00:01%2B01:00&until=2026-11-28T10:00:02Z".into(),
            vec!["results-1".into()],
        ),
        // A '+' is taken literally, not as a space.
        (
            "since=2026-11-28T11:00:01+01:00&until=2026-11-28T10:00:02Z".into(),
            vec!["results-1".into()],
        ),
        (
            format!("recipient=many%40example.org&{}", window(11_000, 13_000)),
            news(&[2, 1]),
        ),
        ("recipient=nobody%40example.org".into(), vec![]),
        ("recipient=many%40example.org&status=failed".into(), vec![]),
    ];
    for (adapter, api) in both().await {
        for (query, expected) in &cases {
            let (status, answer) = get(&api, query).await;
            assert_eq!(status, 200, "{adapter} {query}: {answer}");
            assert_eq!(&ids(&answer), expected, "{adapter} {query}");
        }
    }
}

#[tokio::test]
async fn pages_return_every_match_once_newest_first() {
    // news-3 and news-4 share a time: newest first, then the higher id first.
    let expected = news(&[6, 5, 4, 3, 2, 1, 0]);
    for (adapter, api) in both().await {
        let mut seen = Vec::new();
        let mut pages = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let query = match &cursor {
                Some(c) => format!("recipient=Many%40Example.org&limit=3&cursor={c}"),
                None => "recipient=Many%40Example.org&limit=3".to_owned(),
            };
            let (status, answer) = get(&api, &query).await;
            assert_eq!(status, 200, "{adapter}: {answer}");
            let page = ids(&answer);
            pages.push(page.len());
            seen.extend(page);
            match answer["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
            assert!(pages.len() < 10, "{adapter}: pagination does not end");
        }
        assert_eq!(pages, [3, 3, 1], "{adapter}");
        assert_eq!(seen, expected, "{adapter}");
    }
}

#[tokio::test]
async fn unbounded_searches_and_bad_parameters_are_refused_naming_the_parameter() {
    let cases = [
        ("", "unbounded_search", "recipient, sender or campaign_id"),
        ("status=failed", "unbounded_search", "since and until"),
        ("since=0", "unbounded_search", "since and until"),
        ("since=0&until=9999999999999", "unbounded_search", "31 days"),
        ("recipient=patient", "invalid_parameter", "recipient:"),
        (
            "sender=Ada%20%3Cada%40x.org%3E",
            "invalid_parameter",
            "sender:",
        ),
        (
            "recipient=a%40x.org&since=last%20week",
            "invalid_parameter",
            "since:",
        ),
        (
            "recipient=a%40x.org&until=2026-02-30",
            "invalid_parameter",
            "until:",
        ),
        (
            "recipient=a%40x.org&status=bounced",
            "invalid_parameter",
            "status:",
        ),
        (
            "recipient=a%40x.org&limit=101",
            "invalid_parameter",
            "limit:",
        ),
        (
            "recipient=a%40x.org&limit=ten",
            "invalid_parameter",
            "limit:",
        ),
        (
            "recipient=a%40x.org&cursor=xyz",
            "invalid_parameter",
            "cursor:",
        ),
        ("recipient=a%40x.org&page=2", "invalid_parameter", "page:"),
        (
            "recipient=a%40x.org&recipient=b%40x.org",
            "invalid_parameter",
            "recipient:",
        ),
        ("recipient=a%ZZ", "invalid_parameter", "recipient:"),
    ];
    for (adapter, api) in both().await {
        for (query, code, named) in cases {
            let (status, answer) = get(&api, query).await;
            assert_eq!(status, 400, "{adapter} {query}: {answer}");
            assert_eq!(answer["error"]["code"], code, "{adapter} {query}");
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.contains(named), "{adapter} {query}: {message}");
        }
    }
}
