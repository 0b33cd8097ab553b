//! The sender end to end on real parts: messages sent with the AWS SDK to an SQS queue in
//! moto, polled the way the Lambda event source mapping does, state in DynamoDB (moto), Mailgun
//! providers against local HTTP fakes that check the request, outcome events read back from
//! the events queue.
//!
//! Needs the emulator: `scripts/services up && source .local/services.env`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code: a failed setup step should fail the test loudly"
)]

use std::sync::Arc;
use std::time::Duration;

use gateway_core::clock::{Clock, SystemClock};
use gateway_core::config::load_config;
use gateway_core::events::{EventSink, GatewayEvent, Outcome, OutcomeClass, OutcomeEvent};
use gateway_core::ledger::{self, Entry};
use gateway_core::pipeline::{Pipeline, PipelineSettings, PollSettings, Poller};
use gateway_core::providers::factory::build_providers;
use gateway_core::queue::Queue;
use gateway_core::queue::sqs::{Client, SqsQueue, client_from_env, create_queue};
use gateway_core::secrets::SecretResolver;
use gateway_core::sqs_sink::SqsEventSink;
use gateway_core::state::StateStore;
use gateway_core::state::dynamodb::{DynamoStore, create_table};
use gateway_tests::{moto_url, parse_multipart};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const DOMAIN: &str = "mg.clinic.example";

/// One run's queues, table and poller.
struct Env {
    outbound: Arc<SqsQueue>,
    events: SqsQueue,
    store: Arc<DynamoStore>,
    poller: Poller,
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// Mailgun gateways `primary` (priority 1) and `secondary` (priority 2) at the given fake
/// servers; `extra` is spliced into every gateway, `routing` into the routing block.
fn config_doc(primary: &str, secondary: &str, extra: &str, routing: &str) -> String {
    let gateway = |id: &str, p: u32, url: &str| {
        format!(
            r#"{{"id": "{id}", "type": "mailgun", "display_name": "{id}", "priority": {p},
                "mailgun": {{"api_key": "key-e2e", "domain": "{DOMAIN}", "base_url": "{url}"}},
                "routing": {{"can_route": ["*"]}} {extra}}}"#
        )
    };
    format!(
        r#"{{"gateways": [{}, {}],
            "global_defaults": {{"http": {{"connect_timeout": "1s", "request_timeout": "1s"}}}},
            "routing": {{"strategy": "priority" {routing}}}}}"#,
        gateway("primary", 1, primary),
        gateway("secondary", 2, secondary)
    )
}

async fn env(tag: &str, config: &str) -> Env {
    moto_url();
    let config = load_config(Some(config), None, &|_| None)
        .unwrap_or_else(|e| panic!("config: {e}"))
        .config;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let providers = build_providers(
        &config,
        &Arc::new(SecretResolver::new(Arc::clone(&clock))),
        &config.http,
        Arc::clone(&clock),
    )
    .await
    .unwrap();
    let sqs: Client = client_from_env().await;
    let name = unique(tag);
    let outbound_url = create_queue(&sqs, &format!("{name}-out"), None)
        .await
        .unwrap();
    let events_url = create_queue(&sqs, &format!("{name}-events"), None)
        .await
        .unwrap();
    let ddb = gateway_tests::emulator_dynamodb().await;
    create_table(&ddb, &name).await.unwrap();
    let store = Arc::new(DynamoStore::new(ddb, name));
    let pipeline = Pipeline::new(
        Arc::new(config),
        providers,
        Arc::clone(&store) as Arc<dyn StateStore>,
        Arc::new(SqsEventSink::new(sqs.clone(), events_url.clone())) as Arc<dyn EventSink>,
        clock,
        PipelineSettings::default(),
    );
    let outbound = Arc::new(SqsQueue::new(sqs.clone(), outbound_url));
    let poller = Poller::new(
        Arc::new(pipeline),
        Arc::clone(&outbound) as Arc<dyn Queue>,
        PollSettings {
            wait: Duration::from_secs(1),
            visibility: Duration::from_secs(30),
            ..PollSettings::default()
        },
        tag,
    );
    Env {
        outbound,
        events: SqsQueue::new(sqs, events_url),
        store,
        poller,
    }
}

fn message(id: &str, from: &str) -> String {
    serde_json::json!({
        "id": id,
        "from": format!("Dr. Ada <{from}>"),
        "to": ["patient@example.org"],
        "subject": "Your appointment",
        "text": "See you on Monday.",
    })
    .to_string()
}

impl Env {
    async fn send(&self, body: &str) {
        self.outbound.send(body).await.unwrap();
    }

    /// Polls until `records` records have been processed (or 20 polls found nothing more).
    async fn process(&self, records: usize) -> Vec<gateway_core::pipeline::ItemReport> {
        let mut items = Vec::new();
        let mut idle = 0;
        while items.len() < records && idle < 20 {
            match self.poller.poll_once().await {
                Some(report) => items.extend(report.items),
                None => idle += 1,
            }
        }
        items
    }

    /// The outcome events on the events queue (waits for at least `n`).
    async fn outcomes(&self, n: usize) -> Vec<OutcomeEvent> {
        let mut found = Vec::new();
        for _ in 0..20 {
            if found.len() >= n {
                break;
            }
            let received = self
                .events
                .receive(10, Duration::from_secs(1), Duration::from_secs(60))
                .await
                .unwrap();
            for r in received {
                match serde_json::from_str::<GatewayEvent>(&r.body).unwrap() {
                    GatewayEvent::Outcome(o) => found.push(o),
                    other => panic!("unexpected event {other:?}"),
                }
            }
        }
        found
    }

    async fn ledger(&self, id: &str) -> Option<Entry> {
        ledger::lookup(self.store.as_ref(), id).await.unwrap()
    }

    /// Whether a message is visible on the outbound queue now.
    async fn visible(&self) -> usize {
        let got = self
            .outbound
            .receive(10, Duration::ZERO, Duration::from_secs(1))
            .await
            .unwrap();
        got.len()
    }
}

fn accepted(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "id": format!("<{id}@{DOMAIN}>"), "message": "Queued. Thank you."
    }))
}

async fn fake(answer: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v3/{DOMAIN}/messages")))
        .respond_with(answer)
        .mount(&server)
        .await;
    server
}

async fn calls(server: &MockServer) -> usize {
    server.received_requests().await.unwrap_or_default().len()
}

#[tokio::test]
async fn messages_on_the_queue_are_sent_recorded_and_reported() {
    let primary = fake(accepted("p")).await;
    let secondary = fake(accepted("s")).await;
    let env = env(
        "e2e-happy",
        &config_doc(&primary.uri(), &secondary.uri(), "", ""),
    )
    .await;
    for i in 0..3 {
        env.send(&message(&format!("happy-{i}"), "ada@clinic.example"))
            .await;
    }
    let items = env.process(3).await;
    assert_eq!(items.len(), 3);
    assert!(
        items.iter().all(|i| i.outcome == Outcome::Sent),
        "{items:?}"
    );
    // The provider saw each message once, as the documented form.
    let requests = primary.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3);
    let content_type = requests[0]
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_owned();
    let form = parse_multipart(&content_type, &requests[0].body);
    let field = |name: &str| {
        form.iter()
            .find(|p| p.name == name)
            .map(|p| p.text())
            .unwrap_or_else(|| panic!("no {name} in {form:?}"))
    };
    assert_eq!(field("to"), "patient@example.org");
    assert_eq!(field("subject"), "Your appointment");
    assert_eq!(field("text"), "See you on Monday.");
    assert!(
        field("h:X-Gateway-Message-Id").starts_with("happy-"),
        "{form:?}"
    );
    assert_eq!(calls(&secondary).await, 0);
    // The events queue has one `sent` event per message, the ledger says sent, the outbound
    // queue is empty.
    let mut events = env.outcomes(3).await;
    events.sort_by(|a, b| a.message_id.cmp(&b.message_id));
    let ids: Vec<&str> = events.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(ids, ["happy-0", "happy-1", "happy-2"]);
    for e in &events {
        assert_eq!(e.outcome, Outcome::Sent);
        assert_eq!(e.gateway_id.as_deref(), Some("primary"));
        assert_eq!(
            e.provider_message_id.as_deref(),
            Some("<p@mg.clinic.example>")
        );
        assert_eq!(e.attempts.len(), 1);
    }
    for i in 0..3 {
        assert!(matches!(
            env.ledger(&format!("happy-{i}")).await,
            Some(Entry::Sent(_))
        ));
    }
    assert_eq!(env.visible().await, 0);
}

#[tokio::test]
async fn a_primary_answering_503_fails_over_to_the_secondary() {
    let primary = fake(ResponseTemplate::new(503)).await;
    let secondary = fake(accepted("s")).await;
    let env = env(
        "e2e-503",
        &config_doc(&primary.uri(), &secondary.uri(), "", ""),
    )
    .await;
    env.send(&message("fo-503", "ada@clinic.example")).await;
    let items = env.process(1).await;
    assert_eq!(items[0].gateway.as_deref(), Some("secondary"));
    let e = &env.outcomes(1).await[0];
    let classes: Vec<OutcomeClass> = e.attempts.iter().map(|a| a.class).collect();
    assert_eq!(classes, [OutcomeClass::Unavailable, OutcomeClass::Ok]);
    assert_eq!(e.attempts[0].http_status, Some(503));
    assert_eq!((calls(&primary).await, calls(&secondary).await), (1, 1));
}

#[tokio::test]
async fn a_primary_answering_429_with_a_reset_fails_over_to_the_secondary() {
    let primary = fake(ResponseTemplate::new(429).insert_header("retry-after", "120")).await;
    let secondary = fake(accepted("s")).await;
    let env = env(
        "e2e-429",
        &config_doc(&primary.uri(), &secondary.uri(), "", ""),
    )
    .await;
    env.send(&message("fo-429", "ada@clinic.example")).await;
    let items = env.process(1).await;
    assert_eq!(items[0].gateway.as_deref(), Some("secondary"));
    assert_eq!(
        env.outcomes(1).await[0].attempts[0].class,
        OutcomeClass::Throttled
    );
}

#[tokio::test]
async fn a_permanent_400_does_not_fail_over_and_the_message_is_failed_and_deleted() {
    let primary = fake(
        ResponseTemplate::new(400)
            .set_body_json(serde_json::json!({"message": "to parameter is not a valid address"})),
    )
    .await;
    let secondary = fake(accepted("s")).await;
    let env = env(
        "e2e-400",
        &config_doc(&primary.uri(), &secondary.uri(), "", ""),
    )
    .await;
    env.send(&message("perm-1", "ada@clinic.example")).await;
    let items = env.process(1).await;
    assert_eq!(items[0].outcome, Outcome::Failed);
    assert_eq!(calls(&secondary).await, 0);
    let e = &env.outcomes(1).await[0];
    assert_eq!(e.outcome, Outcome::Failed);
    assert!(e.reason.as_deref().unwrap().contains("primary"));
    assert!(matches!(env.ledger("perm-1").await, Some(Entry::Failed(_))));
    assert_eq!(env.visible().await, 0);
}

#[tokio::test]
async fn an_ambiguous_timeout_is_deferred_without_failover_by_default() {
    let primary = fake(accepted("p").set_delay(Duration::from_secs(3))).await;
    let secondary = fake(accepted("s")).await;
    let env = env(
        "e2e-ambiguous",
        &config_doc(&primary.uri(), &secondary.uri(), "", ""),
    )
    .await;
    env.send(&message("amb-1", "ada@clinic.example")).await;
    let items = env.process(1).await;
    assert_eq!(items[0].outcome, Outcome::Deferred);
    assert_eq!(calls(&secondary).await, 0);
    // Hidden until the lease ends, still claimed, reported as deferred.
    assert_eq!(env.visible().await, 0);
    assert!(matches!(
        env.ledger("amb-1").await,
        Some(Entry::Claimed { .. })
    ));
    let e = &env.outcomes(1).await[0];
    assert_eq!(e.outcome, Outcome::Deferred);
    assert_eq!(e.attempts[0].class, OutcomeClass::Ambiguous);
}

#[tokio::test]
async fn with_the_failover_policy_an_ambiguous_timeout_goes_to_the_secondary() {
    let primary = fake(accepted("p").set_delay(Duration::from_secs(3))).await;
    let secondary = fake(accepted("s")).await;
    let env = env(
        "e2e-ambiguous-fo",
        &config_doc(
            &primary.uri(),
            &secondary.uri(),
            "",
            r#", "ambiguous_policy": "failover""#,
        ),
    )
    .await;
    env.send(&message("amb-2", "ada@clinic.example")).await;
    let items = env.process(1).await;
    assert_eq!(items[0].gateway.as_deref(), Some("secondary"));
}

#[tokio::test]
async fn a_poison_record_in_a_batch_of_ten_does_not_fail_the_other_nine() {
    let primary = fake(accepted("p")).await;
    let secondary = fake(accepted("s")).await;
    let env = env(
        "e2e-poison",
        &config_doc(&primary.uri(), &secondary.uri(), "", ""),
    )
    .await;
    for i in 0..10 {
        if i == 5 {
            env.send(r#"{"id": "poison-5", "from": "not an address", "subject": "x"}"#)
                .await;
        } else {
            env.send(&message(&format!("batch-{i}"), "ada@clinic.example"))
                .await;
        }
    }
    let items = env.process(10).await;
    assert_eq!(items.len(), 10);
    let sent = items.iter().filter(|i| i.outcome == Outcome::Sent).count();
    let rejected: Vec<_> = items
        .iter()
        .filter(|i| i.outcome == Outcome::Rejected)
        .collect();
    assert_eq!((sent, rejected.len()), (9, 1));
    assert_eq!(rejected[0].message_id.as_deref(), Some("poison-5"));
    assert_eq!(calls(&primary).await, 9);
    let events = env.outcomes(10).await;
    let poison = events.iter().find(|e| e.message_id == "poison-5").unwrap();
    assert_eq!(poison.outcome, Outcome::Rejected);
    assert!(
        poison.reason.as_deref().unwrap().contains("from"),
        "{:?}",
        poison.reason
    );
    assert_eq!(env.visible().await, 0, "everything acknowledged");
}

#[tokio::test]
async fn redelivery_of_a_sent_message_calls_no_provider() {
    let primary = fake(accepted("p")).await;
    let secondary = fake(accepted("s")).await;
    let env = env(
        "e2e-redeliver",
        &config_doc(&primary.uri(), &secondary.uri(), "", ""),
    )
    .await;
    env.send(&message("dup-1", "ada@clinic.example")).await;
    env.process(1).await;
    // The client (or SQS) delivers the same message again.
    env.send(&message("dup-1", "ada@clinic.example")).await;
    let items = env.process(1).await;
    assert!(items[0].replayed);
    assert_eq!(items[0].outcome, Outcome::Sent);
    assert_eq!(calls(&primary).await, 1);
    let events = env.outcomes(2).await;
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.outcome == Outcome::Sent));
}

#[tokio::test]
async fn a_senders_fourth_message_over_per_user_daily_goes_to_the_next_gateway_or_waits() {
    let primary = fake(accepted("p")).await;
    let secondary = fake(accepted("s")).await;
    let env = env(
        "e2e-limits",
        &config_doc(
            &primary.uri(),
            &secondary.uri(),
            r#", "rate_limits": {"per_user_daily": 3}"#,
            "",
        ),
    )
    .await;
    for i in 0..7 {
        env.send(&message(&format!("lim-{i}"), "ada@clinic.example"))
            .await;
    }
    let items = env.process(7).await;
    let sent = items.iter().filter(|i| i.outcome == Outcome::Sent).count();
    let deferred: Vec<_> = items
        .iter()
        .filter(|i| i.outcome == Outcome::Deferred)
        .collect();
    // Three on each gateway, never more; the seventh waits for the next UTC day.
    assert_eq!((calls(&primary).await, calls(&secondary).await), (3, 3));
    assert_eq!((sent, deferred.len()), (6, 1));
    assert!(deferred[0].reason.as_deref().unwrap().contains("limit"));
    match deferred[0].disposition {
        gateway_core::pipeline::Disposition::Retry { after } => {
            assert!(after > Duration::from_secs(60), "{after:?}");
        }
        other => panic!("{other:?}"),
    }
    // It is on the queue, invisible until then.
    assert_eq!(env.visible().await, 0);
}

#[tokio::test]
async fn a_failing_provider_opens_its_breaker_then_gets_exactly_the_trial_calls() {
    let primary = fake(ResponseTemplate::new(503)).await;
    let secondary = fake(accepted("s")).await;
    let env = env(
        "e2e-breaker",
        &config_doc(
            &primary.uri(),
            &secondary.uri(),
            r#", "circuit_breaker": {"failure_threshold": 3, "success_threshold": 2, "max_requests": 2, "timeout": "2s"}"#,
            "",
        ),
    )
    .await;
    let send = |from: usize, n: usize| {
        let env = &env;
        async move {
            for i in from..from + n {
                env.send(&message(&format!("br-{i}"), "ada@clinic.example"))
                    .await;
            }
            env.process(n).await
        }
    };
    // Three failures (each failed over to the secondary) open the primary's breaker.
    send(0, 3).await;
    assert_eq!(calls(&primary).await, 3);
    // While open, no call reaches it; everything goes to the secondary.
    let items = send(3, 4).await;
    assert_eq!(calls(&primary).await, 3);
    assert!(
        items
            .iter()
            .all(|i| i.gateway.as_deref() == Some("secondary"))
    );
    // After the timeout, exactly `max_requests` trial calls reach it.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    primary.reset().await;
    Mock::given(method("POST"))
        .respond_with(accepted("p"))
        .mount(&primary)
        .await;
    let items = send(10, 5).await;
    assert_eq!(calls(&primary).await, 2, "two trials");
    assert_eq!(
        items
            .iter()
            .filter(|i| i.gateway.as_deref() == Some("primary"))
            .count(),
        2
    );
    // Two trial successes closed it: all traffic returns to the primary.
    send(20, 3).await;
    assert_eq!(calls(&primary).await, 5);
}
