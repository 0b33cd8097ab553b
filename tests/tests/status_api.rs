//! The status API and page (`shared/src/status`) against real parts: shared state in DynamoDB
//! (moto) and the record of delivery in MariaDB, compared with the in-memory adapter, every
//! answer validated against `docs/openapi.yaml`.
//!
//! Needs `scripts/services up && source .local/services.env`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gateway_core::breaker::{Phase, TransitionReason};
use gateway_core::clock::{Clock, ManualClock};
use gateway_core::config::{Config, load_config};
use gateway_core::events::{
    AttemptRecord, BreakerEvent, DeliveryEvent, DeliveryKind, GatewayEvent, HealthStatus, Outcome,
    OutcomeClass, OutcomeEvent, RecipientKind, RecipientOutcome, RecipientStatus,
};
use gateway_core::health::{self, HealthRecord};
use gateway_core::limiter;
use gateway_core::records::{MemoryRecords, RecordWriter};
use gateway_core::state::dynamodb::{DynamoStore, client_from_env, create_table};
use gateway_core::state::{Item, StateStore, Value};
use gateway_core::status::{Caller, HttpRequest, Reply, StatusApi, StatusRecords};
use serde_json::{Value as Json, json};

/// 2026-11-28T14:30:00Z.
const NOW: i64 = 1_795_876_200_000;
const MIN: i64 = 60_000;

const CONFIG: &str = r#"{
  "gateways": [
    {"id": "gw-a", "type": "mailgun", "display_name": "Mailgun <primary>", "priority": 1,
     "mailgun": {"api_key": "key-inline-secret-value", "domain": "mg.clinic.example"},
     "rate_limits": {"workspace_daily": 100, "per_hour": 20},
     "routing": {"can_route": ["*"]}},
    {"id": "gw-b", "type": "capture", "display_name": "Capture B", "priority": 2,
     "capture": {"directory": "/tmp/unused"}, "routing": {"can_route": ["*"]}},
    {"id": "gw-c", "type": "capture", "display_name": "Capture C", "priority": 3,
     "enabled": false, "capture": {"directory": "/tmp/unused"}, "routing": {"can_route": ["*"]}}
  ],
  "routing": {"strategy": "priority", "health_check_required": true}
}"#;

fn config() -> Config {
    match load_config(Some(CONFIG), None, &|_| None) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("test config invalid: {e:?}"),
    }
}

fn attempt(gateway: &str, class: OutcomeClass, at: i64, latency_ms: u64) -> AttemptRecord {
    AttemptRecord {
        gateway: gateway.into(),
        gateway_type: if gateway == "gw-a" {
            "mailgun"
        } else {
            "capture"
        }
        .into(),
        class,
        http_status: match class {
            OutcomeClass::Ok => Some(200),
            OutcomeClass::Unavailable => Some(503),
            OutcomeClass::Throttled => Some(429),
            OutcomeClass::Permanent => Some(400),
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
    gateway: Option<&str>,
    attempts: Vec<AttemptRecord>,
    reason: Option<&str>,
    at: i64,
) -> GatewayEvent {
    let status = match outcome {
        Outcome::Sent => RecipientStatus::Sent,
        Outcome::Failed => RecipientStatus::Failed,
        Outcome::Deferred => RecipientStatus::Deferred,
        Outcome::Rejected => RecipientStatus::Rejected,
    };
    GatewayEvent::Outcome(OutcomeEvent {
        message_id: id.into(),
        sender: "dr@clinic.example".into(),
        subject: "Your appointment".into(),
        campaign_id: None,
        user_id: None,
        tags: vec![],
        metadata: BTreeMap::new(),
        recipients: vec![RecipientOutcome {
            address: "patient@example.org".into(),
            kind: RecipientKind::To,
            status,
        }],
        outcome,
        gateway_id: gateway.map(str::to_owned),
        gateway_type: gateway.map(|g| if g == "gw-a" { "mailgun" } else { "capture" }.into()),
        provider_message_id: gateway.map(|_| format!("<{id}@provider>")),
        attempts,
        reason: reason.map(str::to_owned),
        retry_at: None,
        at,
    })
}

/// m-1: gw-a unavailable, failed over to gw-b, sent, then hard-bounced (last hour).
/// m-2: sent by gw-a three hours ago (today, not the last hour).
/// m-3: gw-a throttled, then refused permanently (last hour), with markup in its reason.
/// m-4: sent by gw-a yesterday evening (in the 24 h chart, not today).
/// gw-a's breaker tripped 20 minutes ago.
fn history() -> Vec<GatewayEvent> {
    vec![
        outcome(
            "m-1",
            Outcome::Sent,
            Some("gw-b"),
            vec![
                attempt("gw-a", OutcomeClass::Unavailable, NOW - 40 * MIN, 120),
                attempt("gw-b", OutcomeClass::Ok, NOW - 40 * MIN + 1_000, 80),
            ],
            None,
            NOW - 40 * MIN + 1_100,
        ),
        GatewayEvent::Delivery(DeliveryEvent {
            provider: "capture".into(),
            provider_event_id: "ev-1".into(),
            message_id: Some("m-1".into()),
            recipient: "patient@example.org".into(),
            kind: DeliveryKind::HardBounce,
            at: NOW - 30 * MIN,
            diagnostic: Some("550 no such user".into()),
            url: None,
            stream: None,
        }),
        outcome(
            "m-2",
            Outcome::Sent,
            Some("gw-a"),
            vec![attempt("gw-a", OutcomeClass::Ok, NOW - 180 * MIN, 200)],
            None,
            NOW - 180 * MIN + 300,
        ),
        outcome(
            "m-3",
            Outcome::Failed,
            None,
            vec![
                attempt("gw-a", OutcomeClass::Throttled, NOW - 10 * MIN, 50),
                attempt("gw-a", OutcomeClass::Permanent, NOW - 9 * MIN, 60),
            ],
            Some("gw-a: <b>550 mailbox unavailable</b>"),
            NOW - 9 * MIN + 100,
        ),
        outcome(
            "m-4",
            Outcome::Sent,
            Some("gw-a"),
            vec![attempt("gw-a", OutcomeClass::Ok, NOW - 20 * 60 * MIN, 90)],
            None,
            NOW - 20 * 60 * MIN + 100,
        ),
        GatewayEvent::Breaker(BreakerEvent {
            gateway_id: "gw-a".into(),
            from: Phase::Closed,
            to: Phase::Open,
            reason: TransitionReason::FailureThreshold {
                failures: 5,
                successes: 0,
            },
            at: NOW - 20 * MIN,
        }),
    ]
}

fn open_breaker(until: i64) -> Item {
    let mut item = Item::new();
    for (k, v) in [
        ("gen", 1),
        ("window_start", NOW - MIN),
        ("failures", 5),
        ("successes", 0),
        ("opened_at", NOW - MIN),
        ("until", until),
        ("half_open_at", 0),
        ("admitted", 0),
        ("trial_successes", 0),
    ] {
        item.insert(k.into(), Value::N(v));
    }
    item.insert("phase".into(), "open".into());
    item
}

async fn moto_store() -> Arc<DynamoStore> {
    gateway_tests::moto_url();
    let client = gateway_tests::emulator_dynamodb().await;
    let table = format!(
        "status-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    create_table(&client, &table).await.unwrap();
    Arc::new(DynamoStore::new(client, table))
}

/// gw-a healthy with 40 of 100 today and 7 of 20 this hour; gw-b's breaker open for 5 more
/// minutes (no health record); gw-c disabled.
async fn seed_state(store: &dyn StateStore, config: &Config) {
    let healthy = HealthRecord {
        status: HealthStatus::Healthy,
        consecutive_failures: 0,
        consecutive_successes: 4,
        latency_ms: Some(85),
        error: None,
        checked_at: NOW - MIN,
    };
    let plan = limiter::plan(config, &config.gateways[0], NOW);
    let day_key = plan
        .keys()
        .iter()
        .find(|k| k.contains("#d#"))
        .expect("gw-a has a day item")
        .clone();
    let mut day = Item::new();
    day.insert("n".into(), Value::N(40));
    day.insert("h14".into(), Value::N(7));
    store
        .put_many(vec![
            (health::key("gw-a"), healthy.to_item()),
            (
                gateway_core::breaker::key("gw-b"),
                open_breaker(NOW + 5 * MIN),
            ),
            (day_key, day),
        ])
        .await
        .unwrap();
}

/// The OpenAPI document and a validator for one answer of one route.
struct Spec {
    doc: Json,
    checked: BTreeSet<(String, u16)>,
}

impl Spec {
    fn load() -> Self {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml"))
                .unwrap();
        let doc: Json = serde_norway::from_str(&text).unwrap();
        Self {
            doc,
            checked: BTreeSet::new(),
        }
    }

    /// Checks a reply against the document: the route and status are described, the content
    /// type matches, a JSON body validates against its schema.
    fn check(&mut self, route: &str, reply: &Reply) {
        self.check_method("get", route, reply);
    }

    /// [`Spec::check`] for a route's `method` (lower case, as the document names it).
    fn check_method(&mut self, method: &str, route: &str, reply: &Reply) {
        let responses = &self.doc["paths"][route][method]["responses"];
        assert!(responses.is_object(), "{route} is not in docs/openapi.yaml");
        let mut response = responses[reply.status.to_string()].clone();
        assert!(
            response.is_object(),
            "{route} answered {} which docs/openapi.yaml does not describe: {}",
            reply.status,
            reply.body
        );
        if let Some(r) = response["$ref"].as_str() {
            let name = r.rsplit('/').next().unwrap();
            response = self.doc["components"]["responses"][name].clone();
        }
        let media = reply.content_type.split(';').next().unwrap();
        let content = &response["content"][media];
        assert!(
            content.is_object(),
            "{route} {}: content type {media} not described",
            reply.status
        );
        if media == "application/json" {
            let mut schema = content["schema"].clone();
            schema["components"] = self.doc["components"].clone();
            let validator = jsonschema::validator_for(&schema).unwrap();
            let body: Json = serde_json::from_str(&reply.body).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&body)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{route} {} does not match docs/openapi.yaml: {errors:#?}\n{body:#}",
                reply.status
            );
        }
        self.checked.insert((route.to_owned(), reply.status));
    }
}

fn body(reply: &Reply) -> Json {
    serde_json::from_str(&reply.body).unwrap()
}

fn gateway<'a>(answer: &'a Json, id: &str) -> &'a Json {
    answer["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id)
        .unwrap_or_else(|| panic!("{id} missing from {answer:#}"))
}

#[tokio::test]
async fn status_answers_from_dynamodb_and_mariadb_match_the_openapi_document() {
    let config = Arc::new(config());
    let store = moto_store().await;
    seed_state(store.as_ref(), &config).await;
    let mysql = Arc::new(gateway_tests::fresh_database("status").await);
    let memory = Arc::new(MemoryRecords::new());
    for records in [
        Arc::clone(&mysql) as Arc<dyn RecordWriter>,
        Arc::clone(&memory) as Arc<dyn RecordWriter>,
    ] {
        records.apply(&history()).await.unwrap();
    }
    let clock = Arc::new(ManualClock::new(NOW));
    let api = |records: Arc<dyn StatusRecords>| {
        StatusApi::new(
            Arc::clone(&config),
            Arc::clone(&store) as Arc<dyn StateStore>,
            Some(records),
            Arc::clone(&clock) as Arc<dyn Clock>,
        )
    };
    let on_mysql = api(Arc::clone(&mysql) as Arc<dyn StatusRecords>);
    let in_memory = api(Arc::clone(&memory) as Arc<dyn StatusRecords>);
    let mut spec = Spec::load();

    // Live state.
    let reply = on_mysql.handle("GET", "/api/gateways/status").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    spec.check("/api/gateways/status", &reply);
    let status = body(&reply);
    let a = gateway(&status, "gw-a");
    assert_eq!(a["type"], "mailgun");
    assert_eq!(a["health"]["status"], "HEALTHY");
    assert_eq!(a["health"]["latency_ms"], 85);
    assert_eq!(a["breaker"]["state"], "closed");
    assert_eq!(a["can_send"], true);
    let next_midnight = NOW - NOW % (24 * 60 * MIN) + 24 * 60 * MIN;
    assert_eq!(
        a["usage"],
        json!([
            {"level": "workspace_daily", "used": 40, "limit": 100, "remaining": 0.6, "resets_at": next_midnight},
            {"level": "per_hour", "used": 7, "limit": 20, "remaining": 0.65, "resets_at": NOW + 30 * MIN},
            // The default burst bucket (global_defaults), full.
            {"level": "burst", "used": 0, "limit": 10, "remaining": 1.0, "resets_at": NOW},
        ])
    );
    let b = gateway(&status, "gw-b");
    assert_eq!(
        b["breaker"],
        json!({"state": "open", "until": NOW + 5 * MIN})
    );
    assert_eq!(b["health"]["status"], "UNKNOWN");
    assert_eq!(b["can_send"], false);
    assert_eq!(
        b["blocked_by"],
        "breaker open until 2026-11-28 14:35:00 UTC"
    );
    let c = gateway(&status, "gw-c");
    assert_eq!(c["health"]["status"], "DISABLED");
    assert_eq!(c["blocked_by"], "disabled in the config");

    // Health: gw-a can send → 200.
    let reply = on_mysql.handle("GET", "/api/gateways/health").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    spec.check("/api/gateways/health", &reply);
    let health = body(&reply);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["gateways_can_send"], 1);

    // Metrics: the figures of the history, the same from MariaDB and from memory.
    let reply = on_mysql.handle("GET", "/api/gateways/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    spec.check("/api/gateways/metrics", &reply);
    let metrics = body(&reply);
    assert_eq!(
        metrics,
        body(&in_memory.handle("GET", "/api/gateways/metrics").await),
        "MariaDB and the in-memory record disagree"
    );
    let a = gateway(&metrics, "gw-a");
    assert_eq!(
        a["last_hour"],
        json!({"attempts": 3, "sent": 0, "failed": 1, "deferred": 2, "bounced": 0,
               "success_rate": 0.0, "latency_ms_p50": 60, "latency_ms_p95": 120,
               "failovers": 1, "breaker_trips": 1, "rate_limit_hits": 1})
    );
    assert_eq!(
        a["today"],
        json!({"attempts": 4, "sent": 1, "failed": 1, "deferred": 2, "bounced": 0,
               "success_rate": 0.25, "latency_ms_p50": 60, "latency_ms_p95": 200,
               "failovers": 1, "breaker_trips": 1, "rate_limit_hits": 1})
    );
    let b = gateway(&metrics, "gw-b");
    assert_eq!(
        b["last_hour"],
        json!({"attempts": 1, "sent": 1, "failed": 0, "deferred": 0, "bounced": 1,
               "success_rate": 1.0, "latency_ms_p50": 80, "latency_ms_p95": 80,
               "failovers": 0, "breaker_trips": 0, "rate_limit_hits": 0})
    );
    assert_eq!(gateway(&metrics, "gw-c")["today"]["attempts"], 0);
    assert_eq!(
        metrics["windows"]["today"]["from"],
        next_midnight - 24 * 60 * MIN
    );

    // Config: secrets redacted.
    let reply = on_mysql.handle("GET", "/api/gateways/config").await;
    assert_eq!(reply.status, 200);
    spec.check("/api/gateways/config", &reply);
    assert!(
        !reply.body.contains("key-inline-secret-value"),
        "{}",
        reply.body
    );

    // A message record; an unknown id; a malformed one.
    let reply = on_mysql.handle("GET", "/api/messages/m-1").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    spec.check("/api/messages/{id}", &reply);
    let record = body(&reply);
    assert_eq!(record["status"], "sent");
    assert_eq!(record["gateway_id"], "gw-b");
    assert_eq!(record["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(record["recipients"][0]["status"], "BOUNCED");
    assert_eq!(
        record,
        body(&in_memory.handle("GET", "/api/messages/m-1").await)
    );
    let reply = on_mysql.handle("GET", "/api/messages/nope").await;
    assert_eq!(reply.status, 404);
    spec.check("/api/messages/{id}", &reply);
    let reply = on_mysql.handle("GET", "/api/messages/%FF%FE").await;
    assert_eq!(reply.status, 400);
    spec.check("/api/messages/{id}", &reply);

    // A search by recipient, in another case; an unbounded one.
    let reply = on_mysql
        .handle_request(
            "GET",
            "/api/messages",
            Some("recipient=Patient%40Example.org"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    spec.check("/api/messages", &reply);
    let found = body(&reply);
    assert!(
        found["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["message_id"] == "m-1")),
        "{found}"
    );
    let reply = on_mysql.handle_request("GET", "/api/messages", None).await;
    assert_eq!(reply.status, 400);
    spec.check("/api/messages", &reply);

    // The page.
    let reply = on_mysql.handle("GET", "/status").await;
    assert_eq!(reply.status, 200);
    spec.check("/status", &reply);
    let page = &reply.body;
    assert_eq!(page, &in_memory.handle("GET", "/status").await.body);
    for expected in [
        "Mailgun &lt;primary&gt;",
        "1 of 3 gateways can send now.",
        "breaker open until 2026-11-28 14:35:00 UTC",
        "workspace_daily: 40 / 100",
        "per_hour: 7 / 20",
        "width:40.0%",
        "width:35.0%",
        "<svg",
        // gw-a's 24 hours: m-4 (yesterday 18:30), m-2 (11:30), m-3's two calls, m-1's first.
        "calls, last 24 h: <tspan fill=\"#12b76a\">2 sent</tspan> · <tspan fill=\"#d92d20\">3 failed</tspan>",
        "m-3",
        "gw-a: &lt;b&gt;550 mailbox unavailable&lt;/b&gt;",
    ] {
        assert!(page.contains(expected), "page lacks {expected:?}:\n{page}");
    }
    // The one kind of link: a failure to its message record, on the same origin.
    assert!(
        page.contains("href=\"/api/messages/m-3\""),
        "the failure links to its record:\n{page}"
    );
    for forbidden in [
        "<script",
        "<b>550",
        "src=",
        "href=\"http",
        "href=\"//",
        "@import",
        "url(",
    ] {
        assert!(!page.contains(forbidden), "page contains {forbidden:?}");
    }

    // Nothing can send: gw-a's breaker opens too → 503, still a documented answer.
    store
        .put_many(vec![(
            gateway_core::breaker::key("gw-a"),
            open_breaker(NOW + 10 * MIN),
        )])
        .await
        .unwrap();
    let reply = on_mysql.handle("GET", "/api/gateways/health").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    spec.check("/api/gateways/health", &reply);
    assert_eq!(body(&reply)["status"], "unavailable");
    assert!(
        on_mysql
            .handle("GET", "/status")
            .await
            .body
            .contains("No gateway can send now (3 configured)")
    );

    // Operator levers: gw-a paused by an IAM principal, shown in the status answer, the lever
    // list and the audit, each answer as documented; a bad action names its field.
    let caller = Caller::Iam("arn:aws:sts::123456789012:assumed-role/oncall/jo".to_owned());
    let post = |path: &'static str, body: &'static str| {
        let caller = caller.clone();
        let api = &on_mysql;
        async move {
            api.serve(HttpRequest {
                method: "POST",
                path,
                query: None,
                body: body.as_bytes(),
                caller: &caller,
            })
            .await
        }
    };
    let reply = post(
        "/api/levers/gw-a",
        r#"{"action": "pause", "reason": "provider incident INC-7", "for": "2h"}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    spec.check_method("post", "/api/levers/{target}", &reply);
    assert_eq!(body(&reply)["seq"], 1);
    let reply = post("/api/levers/gw-a", r#"{"action": "pause"}"#).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    spec.check_method("post", "/api/levers/{target}", &reply);
    let reply = post("/api/levers/gw-z", r#"{"action": "resume", "reason": "x"}"#).await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    spec.check_method("post", "/api/levers/{target}", &reply);

    let reply = on_mysql.handle("GET", "/api/gateways/status").await;
    spec.check("/api/gateways/status", &reply);
    let a = gateway(&body(&reply), "gw-a").clone();
    assert_eq!(a["can_send"], false, "{a:#}");
    assert_eq!(a["levers"][0]["lever"], "paused");
    assert_eq!(a["levers"][0]["until"], NOW + 120 * MIN);
    assert!(
        a["blocked_by"]
            .as_str()
            .unwrap()
            .contains("paused by arn:aws:sts::123456789012:assumed-role/oncall/jo"),
        "{a:#}"
    );
    // A limit override on gw-a: shown as a lever, and its usage measured against it.
    let reply = post(
        "/api/levers/gw-a",
        r#"{"action": "limits_set", "workspace_daily": 500, "reason": "provider raised the quota", "for": "1d"}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    spec.check_method("post", "/api/levers/{target}", &reply);
    let reply = on_mysql.handle("GET", "/api/gateways/status").await;
    spec.check("/api/gateways/status", &reply);
    let a = gateway(&body(&reply), "gw-a").clone();
    let day = a["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["level"] == "workspace_daily")
        .cloned()
        .unwrap();
    assert_eq!(day["limit"], 500, "{a:#}");
    assert!(
        a["levers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["lever"] == "limits_overridden"),
        "{a:#}"
    );
    let reply = on_mysql.handle("GET", "/api/levers").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    spec.check("/api/levers", &reply);
    let reply = on_mysql
        .handle_request("GET", "/api/levers/gw-a/history", Some("limit=5"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    spec.check("/api/levers/{target}/history", &reply);
    let entries = body(&reply)["entries"].clone();
    let actions: Vec<(&str, &str)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("limits_set", "provider raised the quota"),
            ("pause", "provider incident INC-7")
        ],
        "newest first"
    );

    // A sender's daily limit: the built-in 200 on every gateway, the disabled one included,
    // nothing used (the figures are checked in `a_senders_usage_is_read_by_key_from_dynamodb`).
    let reply = on_mysql
        .handle("GET", "/api/senders/ada@clinic.example/usage")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    spec.check("/api/senders/{address}/usage", &reply);
    let limits: Vec<(String, Json, Json)> = body(&reply)["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["id"].as_str().unwrap().to_owned(),
                g["used"].clone(),
                g["limit"].clone(),
            )
        })
        .collect();
    assert_eq!(
        limits,
        [
            ("gw-a".to_owned(), json!(0), json!(200)),
            ("gw-b".to_owned(), json!(0), json!(200)),
            ("gw-c".to_owned(), json!(0), json!(200)),
        ]
    );

    // Every route of the document was exercised.
    let documented: BTreeSet<String> = spec.doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let exercised: BTreeSet<String> = spec.checked.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(documented, exercised);
}

#[tokio::test]
async fn unreadable_sources_answer_503_without_detail() {
    let config = Arc::new(config());
    // A table that does not exist: every state read fails.
    let store = Arc::new(DynamoStore::new(client_from_env().await, "no-such-table"));
    gateway_tests::moto_url();
    let clock = Arc::new(ManualClock::new(NOW));
    let api = StatusApi::new(
        Arc::clone(&config),
        store as Arc<dyn StateStore>,
        Some(Arc::new(MemoryRecords::new()) as Arc<dyn StatusRecords>),
        clock as Arc<dyn Clock>,
    );
    let mut spec = Spec::load();
    for route in ["/api/gateways/status", "/api/gateways/health", "/status"] {
        let reply = api.handle("GET", route).await;
        assert_eq!(reply.status, 503, "{route}: {}", reply.body);
        spec.check(route, &reply);
        assert_eq!(body(&reply)["error"]["code"], "state_unavailable");
        assert!(!reply.body.contains("no-such-table"), "{}", reply.body);
    }
    let reply = api
        .handle("GET", "/api/senders/ada@clinic.example/usage")
        .await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    spec.check("/api/senders/{address}/usage", &reply);
    assert_eq!(body(&reply)["error"]["code"], "state_unavailable");
    // The database gone: the record routes answer 503, the state routes still work.
    let mysql = gateway_tests::fresh_database("status_gone").await;
    mysql.pool().close().await;
    let store = moto_store().await;
    let api = StatusApi::new(
        config,
        store as Arc<dyn StateStore>,
        Some(Arc::new(mysql) as Arc<dyn StatusRecords>),
        Arc::new(ManualClock::new(NOW)) as Arc<dyn Clock>,
    );
    for route in ["/api/gateways/metrics", "/api/messages/m-1"] {
        let reply = api.handle("GET", route).await;
        assert_eq!(reply.status, 503, "{route}: {}", reply.body);
        assert_eq!(body(&reply)["error"]["code"], "records_unavailable");
    }
    assert_eq!(api.handle("GET", "/api/gateways/status").await.status, 200);
}

/// Senders limited on gw-a (`per_user_daily` 10, ada 50 by a custom entry written in another
/// case) and gw-b (`per_user_daily` 5); gw-c limits no sender (the built-in 200 a day lifted).
const SENDER_CONFIG: &str = r#"{
  "gateways": [
    {"id": "gw-a", "type": "capture", "display_name": "A", "capture": {"directory": "/tmp/unused"},
     "routing": {"can_route": ["*"]},
     "rate_limits": {"per_user_daily": 10, "custom_user_limits": {"ADA@clinic.example": 50}}},
    {"id": "gw-b", "type": "capture", "display_name": "B", "capture": {"directory": "/tmp/unused"},
     "routing": {"can_route": ["*"]}, "rate_limits": {"per_user_daily": 5}},
    {"id": "gw-c", "type": "capture", "display_name": "C", "capture": {"directory": "/tmp/unused"},
     "routing": {"can_route": ["*"]}, "rate_limits": {"per_user_daily": null, "per_hour": 20}}
  ],
  "routing": {"strategy": "priority"}
}"#;

#[tokio::test]
async fn a_senders_usage_is_read_by_key_from_dynamodb() {
    let config = match load_config(Some(SENDER_CONFIG), None, &|_| None) {
        Ok(loaded) => Arc::new(loaded.config),
        Err(e) => panic!("test config invalid: {e:?}"),
    };
    let store = moto_store().await;
    let counted = |n| {
        let mut item = Item::new();
        item.insert("n".into(), Value::N(n));
        item
    };
    store
        .put_many(vec![
            (
                limiter::sender_key("gw-a", "ada@clinic.example", NOW),
                counted(3),
            ),
            (
                limiter::sender_key("gw-b", "ada@clinic.example", NOW),
                counted(7),
            ),
            // Another sender's count on the same gateway is another item.
            (
                limiter::sender_key("gw-a", "bob@clinic.example", NOW),
                counted(9),
            ),
        ])
        .await
        .unwrap();
    let api = StatusApi::new(
        config,
        store as Arc<dyn StateStore>,
        None,
        Arc::new(ManualClock::new(NOW)) as Arc<dyn Clock>,
    );
    let mut spec = Spec::load();
    // 2026-11-29T00:00:00Z, the next UTC midnight after NOW.
    let midnight = 1_795_910_400_000_i64;
    let reply = api
        .handle("GET", "/api/senders/Ada%40Clinic.example/usage")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    spec.check("/api/senders/{address}/usage", &reply);
    assert_eq!(
        body(&reply),
        json!({
            "sender": "ada@clinic.example",
            "generated_at": NOW,
            "gateways": [
                {"id": "gw-a", "used": 3, "limit": 50, "remaining": 0.94, "resets_at": midnight},
                // More than its limit (one lowered after these were sent): nothing left, not below 0.
                {"id": "gw-b", "used": 7, "limit": 5, "remaining": 0.0, "resets_at": midnight},
            ],
        })
    );
    let reply = api.handle("GET", "/api/senders/Ada%20Lovelace/usage").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    spec.check("/api/senders/{address}/usage", &reply);
    assert_eq!(body(&reply)["error"]["code"], "invalid_address");
    assert!(reply.body.contains("Ada Lovelace"), "{}", reply.body);
}
