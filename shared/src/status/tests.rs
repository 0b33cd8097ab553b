//! Routing, errors and "can send" of the status API on in-memory parts; the answers' figures
//! and their match with `docs/openapi.yaml` are tested on MariaDB and moto in
//! `tests/tests/status_api.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use super::*;
use crate::clock::ManualClock;
use crate::config::load_config;
use crate::records::MemoryRecords;
use crate::state::memory::MemoryStore;

const NOW: EpochMillis = 1_795_876_200_000;

fn api(records: bool, health_required: bool) -> (StatusApi, Arc<MemoryStore>) {
    let json = format!(
        r#"{{"gateways": [{{"id": "a", "type": "capture", "display_name": "A",
              "capture": {{"directory": "/tmp/unused"}}, "routing": {{"can_route": ["*"]}},
              "rate_limits": {{"per_hour": 5}}}}],
            "routing": {{"strategy": "priority", "health_check_required": {health_required}}}}}"#
    );
    let config = load_config(Some(&json), None, &|_| None).unwrap().config;
    let store = Arc::new(MemoryStore::new());
    let api = StatusApi::new(
        Arc::new(config),
        Arc::clone(&store) as Arc<dyn StateStore>,
        records.then(|| Arc::new(MemoryRecords::new()) as Arc<dyn StatusRecords>),
        Arc::new(ManualClock::new(NOW)) as Arc<dyn Clock>,
    );
    (api, store)
}

fn code(reply: &Reply) -> String {
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let (api, _) = api(true, false);
    let reply = api.handle("GET", "/api/gateways/nope").await;
    assert_eq!((reply.status, code(&reply).as_str()), (404, "not_found"));
    let reply = api.handle("POST", "/api/gateways/status").await;
    assert_eq!(
        (reply.status, code(&reply).as_str()),
        (405, "method_not_allowed")
    );
    let reply = api.handle("GET", "/api/messages/").await;
    assert_eq!((reply.status, code(&reply).as_str()), (404, "not_found"));
    let reply = api.handle("GET", "/api/messages/m%4").await;
    assert_eq!((reply.status, code(&reply).as_str()), (400, "invalid_id"));
    let reply = api.handle("GET", "/api/messages/a%2Fb").await;
    assert_eq!(reply.status, 400, "an id never holds a slash");
    let reply = api.handle("GET", "/api/messages/m%20x").await;
    assert_eq!(reply.status, 404);
    assert!(reply.body.contains("\\\"m x\\\""), "{}", reply.body);
    // A trailing slash is the same route.
    assert_eq!(api.handle("GET", "/api/gateways/status/").await.status, 200);
}

#[tokio::test]
async fn without_a_record_of_delivery_record_routes_answer_501_and_the_page_says_so() {
    let (without, _) = api(false, false);
    for route in ["/api/gateways/metrics", "/api/messages/m-1"] {
        let reply = without.handle("GET", route).await;
        assert_eq!(
            (reply.status, code(&reply).as_str()),
            (501, "records_not_here")
        );
    }
    let page = without.handle("GET", "/status").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("keeps no record of delivery"));
    assert!(!page.body.contains("<svg"), "no chart without a record");
    let (with_record, _) = api(true, false);
    let page = with_record.handle("GET", "/status").await.body;
    assert!(page.contains("0 failed</tspan> · peak 0/h"), "{page}");
}

#[tokio::test]
async fn a_gateway_cannot_send_when_unhealthy_where_required_or_its_limit_is_used_up() {
    let unhealthy = HealthRecord {
        status: crate::events::HealthStatus::Unhealthy,
        consecutive_failures: 3,
        consecutive_successes: 0,
        latency_ms: None,
        error: Some("connect timeout".into()),
        checked_at: NOW - 1_000,
    };
    for required in [false, true] {
        let (api, store) = api(true, required);
        store
            .put_many(vec![(health::key("a"), unhealthy.to_item())])
            .await
            .unwrap();
        let reply = api.handle("GET", "/api/gateways/health").await;
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        if required {
            assert_eq!(reply.status, 503, "{body}");
            assert_eq!(
                body["gateways"][0]["blocked_by"],
                "unhealthy (routing.health_check_required)"
            );
        } else {
            assert_eq!(
                reply.status, 200,
                "unhealthy but not required: still routed"
            );
        }
    }
    let (api, store) = api(true, false);
    let config = Arc::clone(&api.config);
    let plan = limiter::plan(&config, &config.gateways[0], NOW);
    let day = plan
        .keys()
        .iter()
        .find(|k| k.contains("#d#"))
        .unwrap()
        .clone();
    let mut item = Item::new();
    item.insert("h14".into(), crate::state::Value::N(5));
    store.put_many(vec![(day, item)]).await.unwrap();
    let reply = api.handle("GET", "/api/gateways/health").await;
    assert_eq!(reply.status, 503);
    assert!(
        reply
            .body
            .contains("per_hour limit used up until 2026-11-28 15:00:00 UTC"),
        "{}",
        reply.body
    );
}

#[test]
fn times_are_utc_and_text_is_escaped() {
    assert_eq!(page::time(NOW), "2026-11-28 14:30:00 UTC");
    assert_eq!(page::time(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(
        page::escape(r#"<a href="x">'&'</a>"#),
        "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
    );
}

#[tokio::test]
async fn many_gateways_are_read_in_chunks_of_the_batch_limit() {
    // 30 gateways × (health, breaker, day, bucket) + the shared system day: over 100 keys.
    let gateways: Vec<String> = (0..30)
        .map(|i| {
            format!(
                r#"{{"id": "g{i}", "type": "capture", "display_name": "G{i}",
                    "capture": {{"directory": "/tmp/unused"}}, "routing": {{"can_route": ["*"]}},
                    "rate_limits": {{"per_hour": 5}}}}"#
            )
        })
        .collect();
    let json = format!(
        r#"{{"gateways": [{}], "global_defaults": {{"rate_limits": {{"workspace_daily": 100}}}},
            "routing": {{"strategy": "priority"}}}}"#,
        gateways.join(",")
    );
    let config = load_config(Some(&json), None, &|_| None).unwrap().config;
    let api = StatusApi::new(
        Arc::new(config),
        Arc::new(MemoryStore::new()) as Arc<dyn StateStore>,
        None,
        Arc::new(ManualClock::new(NOW)) as Arc<dyn Clock>,
    );
    let reply = api.handle("GET", "/api/gateways/status").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["gateways"].as_array().unwrap().len(), 30);
}

#[test]
fn recent_failures_link_to_their_record() {
    let mut failed = MessageRecord::new("inv 7/<x>", NOW - 1000);
    failed.status = crate::records::MessageStatus::Failed;
    failed.sender = "ada@clinic.example".into();
    let html = page::render(&Overview {
        now: NOW,
        gateways: Vec::new(),
        hourly: Some(HashMap::new()),
        failures: Some(vec![failed]),
    });
    assert!(
        html.contains(
            r#"<a href="/api/messages/inv%207%2F%3Cx%3E"><code>inv 7/&lt;x&gt;</code></a>"#
        ),
        "{html}"
    );
}

#[tokio::test]
async fn the_search_route_is_exact_bounded_and_needs_a_record() {
    let (without, _) = api(false, false);
    let (api, _) = api(true, false);
    let reply = api.handle_request("GET", "/api/messages", None).await;
    assert_eq!(
        (reply.status, code(&reply).as_str()),
        (400, "unbounded_search")
    );
    assert!(
        reply.body.contains("recipient, sender or campaign_id"),
        "{}",
        reply.body
    );
    let reply = api
        .handle_request(
            "GET",
            "/api/messages",
            Some("recipient=a%40x.org&colour=red"),
        )
        .await;
    assert_eq!(
        (reply.status, code(&reply).as_str()),
        (400, "invalid_parameter")
    );
    assert!(
        reply.body.contains("colour: unknown parameter"),
        "{}",
        reply.body
    );
    let reply = api
        .handle_request("GET", "/api/messages", Some("recipient=a%4"))
        .await;
    assert!(
        reply.body.contains("recipient: the value is not"),
        "{}",
        reply.body
    );
    let reply = api
        .handle_request(
            "GET",
            "/api/messages",
            Some("recipient=A%2Bresults%40X.org"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        serde_json::from_str::<Value>(&reply.body).unwrap(),
        json!({"messages": [], "next_cursor": null})
    );
    let reply = api
        .handle_request("POST", "/api/messages", Some("recipient=a%40x.org"))
        .await;
    assert_eq!(reply.status, 405);
    let reply = without
        .handle_request("GET", "/api/messages", Some("recipient=a%40x.org"))
        .await;
    assert_eq!(
        (reply.status, code(&reply).as_str()),
        (501, "records_not_here")
    );
}

/// Three gateways: `a` limits every sender (`per_user_daily`) but noreply (a `null` custom
/// entry), `b` only ada (a `custom_user_limits` entry written in another case), `c` no sender
/// (`per_user_daily: null`: the built-in default is 200 a day).
fn senders_api() -> (StatusApi, Arc<MemoryStore>) {
    let json = r#"{"gateways": [
        {"id": "a", "type": "capture", "display_name": "A", "capture": {"directory": "/tmp/unused"},
         "routing": {"can_route": ["*"]},
         "rate_limits": {"per_user_daily": 10, "custom_user_limits": {"NoReply@clinic.example": null}}},
        {"id": "b", "type": "capture", "display_name": "B", "capture": {"directory": "/tmp/unused"},
         "routing": {"can_route": ["*"]},
         "rate_limits": {"per_user_daily": null, "custom_user_limits": {"ADA@Clinic.example": 20}}},
        {"id": "c", "type": "capture", "display_name": "C", "capture": {"directory": "/tmp/unused"},
         "routing": {"can_route": ["*"]}, "rate_limits": {"per_user_daily": null, "per_hour": 5}}],
        "routing": {"strategy": "priority"}}"#;
    let config = load_config(Some(json), None, &|_| None).unwrap().config;
    let store = Arc::new(MemoryStore::new());
    let api = StatusApi::new(
        Arc::new(config),
        Arc::clone(&store) as Arc<dyn StateStore>,
        None,
        Arc::new(ManualClock::new(NOW)) as Arc<dyn Clock>,
    );
    (api, store)
}

#[tokio::test]
async fn a_senders_usage_is_read_by_key_on_each_gateway_that_limits_it() {
    let (api, store) = senders_api();
    let counted = |n| {
        let mut item = Item::new();
        item.insert("n".into(), crate::state::Value::N(n));
        item
    };
    store
        .put_many(vec![
            (
                limiter::sender_key("a", "ada@clinic.example", NOW),
                counted(3),
            ),
            (
                limiter::sender_key("b", "ada@clinic.example", NOW),
                counted(7),
            ),
            // Yesterday's count is another item: not today's use.
            (
                limiter::sender_key("a", "ada@clinic.example", NOW - DAY_MS),
                counted(9),
            ),
        ])
        .await
        .unwrap();
    // 2026-11-29T00:00:00Z, the next UTC midnight after NOW.
    let midnight: EpochMillis = 1_795_910_400_000;
    let reply = api
        .handle("GET", "/api/senders/Ada%40Clinic.Example/usage")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        serde_json::from_str::<Value>(&reply.body).unwrap(),
        json!({
            "sender": "ada@clinic.example",
            "generated_at": NOW,
            "gateways": [
                {"id": "a", "used": 3, "limit": 10, "remaining": 0.7, "resets_at": midnight},
                {"id": "b", "used": 7, "limit": 20, "remaining": 0.65, "resets_at": midnight},
            ],
        })
    );
    // Another sender: only `a` limits it, and it has sent nothing today. A plus is kept, and a
    // trailing slash is the same route.
    let reply = api
        .handle("GET", "/api/senders/bob+results@x.example/usage/")
        .await;
    assert_eq!(
        serde_json::from_str::<Value>(&reply.body).unwrap(),
        json!({
            "sender": "bob+results@x.example",
            "generated_at": NOW,
            "gateways": [
                {"id": "a", "used": 0, "limit": 10, "remaining": 1.0, "resets_at": midnight},
            ],
        })
    );
    // No gateway limits noreply: an empty list.
    let reply = api
        .handle("GET", "/api/senders/noreply@clinic.example/usage")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        serde_json::from_str::<Value>(&reply.body).unwrap()["gateways"],
        json!([])
    );
}

#[tokio::test]
async fn a_bad_sender_address_is_answered_400_naming_it() {
    let (api, _) = senders_api();
    for (path, named) in [
        ("/api/senders/nobody/usage", r#"\"nobody\""#),
        ("/api/senders/a%20b@x.example/usage", r#"\"a b@x.example\""#),
        (
            "/api/senders/ada@%5B192.0.2.1%5D/usage",
            r#"\"ada@[192.0.2.1]\""#,
        ),
        (
            "/api/senders/ada%4@x.example/usage",
            r#"\"ada%4@x.example\""#,
        ),
    ] {
        let reply = api.handle("GET", path).await;
        assert_eq!(
            (reply.status, code(&reply).as_str()),
            (400, "invalid_address"),
            "{path}"
        );
        assert!(reply.body.contains(named), "{path}: {}", reply.body);
    }
    for path in [
        "/api/senders/ada@x.example",
        "/api/senders//usage",
        "/api/senders/ada@x.example/usage/more",
    ] {
        let reply = api.handle("GET", path).await;
        assert_eq!(
            (reply.status, code(&reply).as_str()),
            (404, "not_found"),
            "{path}"
        );
    }
    let reply = api.handle("POST", "/api/senders/ada@x.example/usage").await;
    assert_eq!(reply.status, 405);
}
