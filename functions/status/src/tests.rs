//! The status handler on a real API Gateway (HTTP API v2) event, `events/status-health.json`,
//! with in-memory state and record; the answers' figures are tested in
//! `tests/tests/status_api.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use crate::handle;
use gateway_core::clock::ManualClock;
use gateway_core::config::load_config;
use gateway_core::records::MemoryRecords;
use gateway_core::state::memory::MemoryStore;
use gateway_core::status::StatusApi;
use lambda_http::Body;

fn event(method: &str, path: &str) -> lambda_http::Request {
    event_with_query(method, path, "")
}

fn event_with_query(method: &str, path: &str, query: &str) -> lambda_http::Request {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/status-health.json"
    );
    let mut event: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    event["rawPath"] = path.into();
    event["requestContext"]["http"]["path"] = path.into();
    event["requestContext"]["http"]["method"] = method.into();
    event["rawQueryString"] = query.into();
    lambda_http::request::from_str(&event.to_string()).unwrap()
}

fn api() -> StatusApi {
    let config = r#"{"gateways": [{"id": "local", "type": "capture", "display_name": "Local",
        "capture": {"directory": "/tmp/unused"}, "routing": {"can_route": ["*"]}}]}"#;
    StatusApi::new(
        Arc::new(load_config(Some(config), None, &|_| None).unwrap().config),
        Arc::new(MemoryStore::new()),
        Some(Arc::new(MemoryRecords::new())),
        Arc::new(ManualClock::new(1_795_876_200_000)),
    )
}

fn text(response: &lambda_http::Response<Body>) -> String {
    match response.body() {
        Body::Text(t) => t.clone(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_sample_event_gets_the_health_answer() {
    let api = api();
    let response = handle(event("GET", "/api/gateways/health"), &api)
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", text(&response));
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: serde_json::Value = serde_json::from_str(&text(&response)).unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["gateways"][0]["id"], "local");
}

#[tokio::test]
async fn every_route_answers_through_the_handler() {
    let api = api();
    let page = handle(event("GET", "/status"), &api).await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(text(&page).starts_with("<!DOCTYPE html>"));
    for (method, path, status) in [
        ("GET", "/api/gateways/status", 200),
        ("GET", "/api/gateways/metrics", 200),
        ("GET", "/api/gateways/config", 200),
        ("GET", "/api/messages/unknown-id", 404),
        ("POST", "/api/gateways/status", 405),
        ("GET", "/api/nothing", 404),
    ] {
        let response = handle(event(method, path), &api).await.unwrap();
        assert_eq!(
            response.status(),
            status,
            "{method} {path}: {}",
            text(&response)
        );
        assert_eq!(response.headers()["content-type"], "application/json");
    }
}

#[tokio::test]
async fn the_search_gets_the_query_string_of_the_event() {
    let api = api();
    for (query, status, expected) in [
        (
            "recipient=Patient%40Example.org&limit=5",
            200,
            "\"messages\":[]",
        ),
        ("", 400, "unbounded_search"),
        (
            "recipient=patient%40example.org&limit=500",
            400,
            "limit: a number",
        ),
        (
            "sender=ada@clinic.example&since=yesterday",
            400,
            "since: not an RFC 3339",
        ),
    ] {
        let response = handle(event_with_query("GET", "/api/messages", query), &api)
            .await
            .unwrap();
        let body = text(&response);
        assert_eq!(response.status(), status, "{query}: {body}");
        assert!(body.contains(expected), "{query}: {body}");
    }
}

#[tokio::test]
async fn a_lever_action_is_audited_under_the_iam_principal_of_the_event() {
    let api = api();
    let mut post: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/status-health.json"
        ))
        .unwrap(),
    )
    .unwrap();
    post["rawPath"] = "/api/levers/local".into();
    post["requestContext"]["http"]["path"] = "/api/levers/local".into();
    post["requestContext"]["http"]["method"] = "POST".into();
    post["body"] = r#"{"action": "pause", "reason": "provider incident", "for": "30m"}"#.into();
    let request = lambda_http::request::from_str(&post.to_string()).unwrap();
    let response = handle(request, &api).await.unwrap();
    assert_eq!(response.status(), 200, "{}", text(&response));
    let answer: serde_json::Value = serde_json::from_str(&text(&response)).unwrap();
    assert_eq!(
        answer["by"],
        "arn:aws:sts::123456789012:assumed-role/oncall/oncall"
    );
    assert_eq!(answer["seq"], 1);

    let history = handle(event("GET", "/api/levers/local/history"), &api)
        .await
        .unwrap();
    let history: serde_json::Value = serde_json::from_str(&text(&history)).unwrap();
    assert_eq!(history["entries"][0]["action"], "pause");
    assert_eq!(
        history["entries"][0]["by"],
        "arn:aws:sts::123456789012:assumed-role/oncall/oncall"
    );

    // Without the IAM context nobody is named, and nothing changes.
    let mut anonymous: serde_json::Value = serde_json::from_str(&event_json_without_iam()).unwrap();
    anonymous["body"] = r#"{"action": "resume", "reason": "over"}"#.into();
    let request = lambda_http::request::from_str(&anonymous.to_string()).unwrap();
    let response = handle(request, &api).await.unwrap();
    assert_eq!(response.status(), 403, "{}", text(&response));
}

fn event_json_without_iam() -> String {
    let mut event: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../events/status-health.json"
        ))
        .unwrap(),
    )
    .unwrap();
    event["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("authorizer");
    event["rawPath"] = "/api/levers/local".into();
    event["requestContext"]["http"]["path"] = "/api/levers/local".into();
    event["requestContext"]["http"]["method"] = "POST".into();
    event.to_string()
}
