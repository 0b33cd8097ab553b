//! The health checker against moto (DynamoDB for the `hc#` records, SQS for the events) and
//! HTTP fakes of the providers, at manual times: a Mailgun gateway answering its probe 200 and
//! then 500s goes HEALTHY → DEGRADED → UNHEALTHY at the configured threshold, only due gateways
//! are probed, overlapping runs record a probe once, and an SES account quota below the
//! configured limits is reported.
//!
//! moto does not implement SES v2 `GetAccount` (the SES probe), so the SES gateway talks to a
//! wiremock fake of that one endpoint; DynamoDB and SQS are moto's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use gateway_core::clock::ManualClock;
use gateway_core::config::load_config;
use gateway_core::events::{EventSink, GatewayEvent, HealthEvent, HealthStatus};
use gateway_core::health::{self, HealthRecord};
use gateway_core::health::{CheckSummary, HealthChecker};
use gateway_core::providers::factory::build_providers;
use gateway_core::queue::Queue;
use gateway_core::queue::sqs::{SqsQueue, client_from_env, create_queue};
use gateway_core::secrets::SecretResolver;
use gateway_core::sqs_sink::SqsEventSink;
use gateway_core::state::dynamodb::{DynamoStore, create_table};
use gateway_core::state::{
    Item, Key, StateStore, StoreError, TransactOutcome, Write, WriteOutcome,
};
use gateway_tests::moto_url;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const DOMAIN: &str = "mg.clinic.example";
/// 2026-11-28T10:00:00Z.
const T0: i64 = 1_795_860_000_000;
const MINUTE: i64 = 60_000;

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// The table, with a rendezvous after reads when armed: two overlapping runs then both read
/// before either writes, whatever the scheduling.
#[derive(Debug)]
struct ReadTogether {
    inner: Arc<DynamoStore>,
    armed: std::sync::atomic::AtomicBool,
    barrier: tokio::sync::Barrier,
}

#[async_trait::async_trait]
impl StateStore for ReadTogether {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        let items = self.inner.get_many(keys).await;
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            self.barrier.wait().await;
        }
        items
    }
    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        self.inner.write(write).await
    }
    async fn transact(&self, writes: Vec<Write>) -> Result<TransactOutcome, StoreError> {
        self.inner.transact(writes).await
    }
    async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
        self.inner.put_many(items).await
    }
}

struct Env {
    clock: Arc<ManualClock>,
    reads: Arc<ReadTogether>,
    store: Arc<DynamoStore>,
    events: SqsQueue,
    checker: HealthChecker,
    /// A second checker on the same table and queue (another invocation).
    other: HealthChecker,
}

async fn env(tag: &str, gateways: serde_json::Value) -> Env {
    moto_url();
    let doc = json!({
        "global_defaults": {
            "http": {"connect_timeout": "1s", "request_timeout": "2s"},
            "health_check": {"interval": "60s", "timeout": "5s",
                             "failure_threshold": 2, "success_threshold": 2}
        },
        "gateways": gateways,
    });
    let config = Arc::new(
        load_config(Some(&doc.to_string()), None, &|_| None)
            .unwrap_or_else(|e| panic!("config: {e}"))
            .config,
    );
    let clock = Arc::new(ManualClock::new(T0));
    let providers = build_providers(
        &config,
        &Arc::new(SecretResolver::new(clock.clone())),
        &config.http,
        clock.clone(),
    )
    .await
    .unwrap();
    let name = unique(tag);
    let ddb = gateway_tests::emulator_dynamodb().await;
    create_table(&ddb, &name).await.unwrap();
    let store = Arc::new(DynamoStore::new(ddb, name.clone()));
    let reads = Arc::new(ReadTogether {
        inner: Arc::clone(&store),
        armed: std::sync::atomic::AtomicBool::new(false),
        barrier: tokio::sync::Barrier::new(2),
    });
    let sqs = client_from_env().await;
    let url = create_queue(&sqs, &format!("{name}-events"), None)
        .await
        .unwrap();
    let sink: Arc<dyn EventSink> = Arc::new(SqsEventSink::new(sqs.clone(), url.clone()));
    let checker = |changed_by: &str| {
        HealthChecker::new(
            Arc::clone(&config),
            providers.clone(),
            Arc::clone(&reads) as Arc<dyn StateStore>,
            Arc::clone(&sink),
            clock.clone(),
        )
        .with_changed_by(changed_by)
    };
    Env {
        checker: checker("health-check test"),
        other: checker("health-check test (second)"),
        clock,
        reads,
        store,
        events: SqsQueue::new(sqs, url),
    }
}

impl Env {
    async fn record(&self, gateway: &str) -> Option<HealthRecord> {
        let item = self.store.get(&health::key(gateway)).await.unwrap();
        HealthRecord::from_item(item.as_ref())
    }

    /// Every event on the queue now: (health events, number of config events).
    async fn drain(&self) -> (Vec<HealthEvent>, usize) {
        let mut health = Vec::new();
        let mut configs = 0;
        loop {
            let got = self
                .events
                .receive(10, Duration::ZERO, Duration::from_secs(60))
                .await
                .unwrap();
            if got.is_empty() {
                break;
            }
            for r in &got {
                match serde_json::from_str::<GatewayEvent>(&r.body).unwrap() {
                    GatewayEvent::Health(h) => health.push(h),
                    GatewayEvent::Config(_) => configs += 1,
                    other => panic!("unexpected event {other:?}"),
                }
            }
            let receipts: Vec<String> = got.iter().map(|r| r.receipt_handle.clone()).collect();
            assert!(
                self.events
                    .delete_batch(&receipts)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
        health.sort_by_key(|h| (h.at, h.gateway_id.clone()));
        (health, configs)
    }

    async fn run_at(&self, at: i64) -> CheckSummary {
        self.clock.set(at);
        self.checker.run().await.unwrap()
    }
}

fn mailgun(id: &str, base_url: &str) -> serde_json::Value {
    json!({"id": id, "type": "mailgun", "display_name": id,
           "mailgun": {"api_key": "key-health", "domain": DOMAIN, "base_url": base_url},
           "routing": {"can_route": ["*"]}})
}

/// A Mailgun fake whose domain probe answers 200 once, then 500.
async fn flaky_mailgun() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v3/domains/{DOMAIN}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"domain": {}})))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v3/domains/{DOMAIN}")))
        .respond_with(ResponseTemplate::new(500).set_body_string("internal error"))
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

async fn probes(server: &MockServer) -> usize {
    server.received_requests().await.unwrap_or_default().len()
}

#[tokio::test]
async fn a_failing_gateway_becomes_unhealthy_only_at_its_threshold() {
    let server = flaky_mailgun().await;
    let e = env("hc-threshold", json!([mailgun("mg", &server.uri())])).await;

    let s = e.run_at(T0).await;
    assert_eq!((s.probed, s.healthy), (1, 1), "{s:?}");
    let r = e.record("mg").await.unwrap();
    assert_eq!((r.status, r.checked_at), (HealthStatus::Healthy, T0));
    assert!(r.latency_ms.is_some());

    // Not due 30 s later: no probe, nothing written.
    let s = e.run_at(T0 + MINUTE / 2).await;
    assert_eq!((s.probed, s.skipped), (0, 1), "{s:?}");
    assert_eq!(probes(&server).await, 1);
    assert_eq!(e.record("mg").await.unwrap().checked_at, T0);

    // The first failure only degrades it (one blip does not flap).
    let s = e.run_at(T0 + MINUTE).await;
    assert_eq!(s.degraded, 1, "{s:?}");
    let r = e.record("mg").await.unwrap();
    assert_eq!(
        (r.status, r.consecutive_failures),
        (HealthStatus::Degraded, 1)
    );
    let error = r.error.unwrap();
    assert!(
        error.contains("Unavailable") && error.contains("mailgun"),
        "{error}"
    );
    assert!(
        !error.contains("key-health"),
        "the error shows the key: {error}"
    );

    // The second consecutive failure reaches failure_threshold = 2.
    let s = e.run_at(T0 + 2 * MINUTE).await;
    assert_eq!(s.unhealthy, 1, "{s:?}");
    let r = e.record("mg").await.unwrap();
    assert_eq!(
        (r.status, r.consecutive_failures),
        (HealthStatus::Unhealthy, 2)
    );
    assert_eq!(r.checked_at, T0 + 2 * MINUTE);
    assert_eq!(probes(&server).await, 3);

    let (health, configs) = e.drain().await;
    let seen: Vec<(HealthStatus, u32, i64)> = health
        .iter()
        .map(|h| (h.status, h.consecutive_failures, h.at))
        .collect();
    assert_eq!(
        seen,
        [
            (HealthStatus::Healthy, 0, T0),
            (HealthStatus::Degraded, 1, T0 + MINUTE),
            (HealthStatus::Unhealthy, 2, T0 + 2 * MINUTE),
        ]
    );
    assert!(
        health
            .iter()
            .all(|h| h.gateway_id == "mg" && h.gateway_type == "mailgun")
    );
    assert_eq!(configs, 4, "one config event per run");
}

#[tokio::test]
async fn overlapping_runs_record_a_probe_once() {
    let server = flaky_mailgun().await;
    let e = env("hc-overlap", json!([mailgun("mg", &server.uri())])).await;
    e.run_at(T0).await;
    e.drain().await;

    // Two invocations at the same time read the same record and both probe; only one may
    // count its probe.
    e.clock.set(T0 + MINUTE);
    e.reads
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (a, b) = tokio::join!(e.checker.run(), e.other.run());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.probed + b.probed, 2);
    assert_eq!(a.superseded + b.superseded, 1, "{a:?} {b:?}");
    let r = e.record("mg").await.unwrap();
    assert_eq!(
        (r.status, r.consecutive_failures),
        (HealthStatus::Degraded, 1)
    );
    let (health, _) = e.drain().await;
    assert_eq!(health.len(), 1, "{health:?}");
    assert_eq!(health[0].consecutive_failures, 1);
}

#[tokio::test]
async fn an_ses_account_quota_below_the_configured_limits_is_reported() {
    let ses = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/email/account"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "SendingEnabled": true, "ProductionAccessEnabled": false,
            "SendQuota": {"Max24HourSend": 200.0, "MaxSendRate": 1.0, "SentLast24Hours": 3.0}
        })))
        .mount(&ses)
        .await;
    let within = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/email/account"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "SendingEnabled": true, "ProductionAccessEnabled": true,
            "SendQuota": {"Max24HourSend": 100000.0, "MaxSendRate": 50.0, "SentLast24Hours": 0.0}
        })))
        .mount(&within)
        .await;
    let gateway = |id: &str, url: String| {
        json!({"id": id, "type": "amazon_ses", "display_name": id,
               "amazon_ses": {"region": "us-east-1", "endpoint_url": url},
               "rate_limits": {"workspace_daily": 50000, "burst_limit": 14},
               "routing": {"can_route": ["*"]}})
    };
    let e = env(
        "hc-ses",
        json!([
            gateway("ses-sandbox", ses.uri()),
            gateway("ses-prod", within.uri())
        ]),
    )
    .await;

    let s = e.run_at(T0).await;
    assert_eq!((s.probed, s.healthy), (2, 2), "{s:?}");
    let warned: Vec<(&str, &str, f64, f64)> = s
        .ses_warnings
        .iter()
        .map(|w| {
            (
                w.gateway_id.as_str(),
                w.setting,
                w.configured,
                w.account_limit,
            )
        })
        .collect();
    assert_eq!(
        warned,
        [
            ("ses-sandbox", "rate_limits.workspace_daily", 50000.0, 200.0),
            (
                "ses-sandbox",
                "rate_limits.burst_refill_per_second",
                14.0,
                1.0
            ),
        ]
    );
    assert!(s.ses_warnings[0].to_string().contains("Max24HourSend 200"));
    let summary = s.to_json();
    assert_eq!(summary["ses_warnings"][1]["quota"], "MaxSendRate");
    let metrics: serde_json::Value = serde_json::from_str(&s.emf_lines("MailGateway")[0]).unwrap();
    assert_eq!(metrics["SesQuotaWarnings"], 2);
}

/// The config audit names the publisher of the version in force: the health-check function
/// wired on a state table holding a published version (gateway config push), its run's
/// `config` event on the events queue.
#[tokio::test]
async fn the_config_event_of_a_published_version_names_its_publisher() {
    moto_url();
    let dynamodb = gateway_tests::emulator_dynamodb().await;
    let table = unique("live");
    create_table(&dynamodb, &table).await.unwrap();
    let store = DynamoStore::new(dynamodb, table.clone());
    let document = json!({"gateways": [{"id": "cap", "type": "capture", "display_name": "cap",
        "capture": {"directory": "/tmp/unused"}, "routing": {"can_route": ["*"]},
        "health_check": {"enabled": true}}]})
    .to_string();
    gateway_core::live_config::publish(
        &store,
        &document,
        None,
        &|_| None,
        "arn:aws:iam::123456789012:user/ops",
        "INC-9: capture only",
        1_795_876_200_000,
    )
    .await
    .unwrap();
    // The deployed file says something else: the published version wins.
    let dir = std::env::temp_dir().join(unique("live-file"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.json");
    std::fs::write(
        &file,
        json!({"gateways": [{"id": "file-only", "type": "capture", "display_name": "f",
            "capture": {"directory": "/tmp/unused"}, "routing": {"can_route": ["*"]}}]})
        .to_string(),
    )
    .unwrap();
    let sqs = client_from_env().await;
    let events = create_queue(&sqs, &unique("live-events"), None)
        .await
        .unwrap();
    let mut startup = gateway_core::startup::Startup::with_env(
        [
            ("GATEWAY_CONFIG_FILE", file.to_str().unwrap()),
            ("GATEWAY_STATE_TABLE", table.as_str()),
            ("EVENTS_QUEUE_URL", events.as_str()),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let deps = health_check::wire(&mut startup).await;
    assert!(startup.problems().is_empty(), "{:?}", startup.problems());
    let deps = deps.unwrap();
    let summary = deps.checker.get().await.run().await.unwrap();
    assert_eq!(summary.probed, 1, "{summary:?}");
    let queue = SqsQueue::new(sqs, events);
    let mut config_event = None;
    for _ in 0..10 {
        for r in queue
            .receive(10, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap()
        {
            if let Some(GatewayEvent::Config(c)) =
                serde_json::from_str::<serde_json::Value>(&r.body)
                    .ok()
                    .and_then(|v| serde_json::from_value::<GatewayEvent>(v).ok())
            {
                config_event = Some(c);
            }
        }
        if config_event.is_some() {
            break;
        }
    }
    let event = config_event.expect("a config event on the events queue");
    assert!(
        event
            .changed_by
            .starts_with("config version 1 published by arn:aws:iam::123456789012:user/ops"),
        "{}",
        event.changed_by
    );
    assert!(
        event.changed_by.ends_with("INC-9: capture only"),
        "{}",
        event.changed_by
    );
    assert_eq!(event.by_id().keys().collect::<Vec<_>>(), ["cap"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
