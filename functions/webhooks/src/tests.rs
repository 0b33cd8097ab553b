//! The webhooks handler on a real API Gateway (HTTP API v2) event, `events/webhook-mailgun.json`
//! (base64 body signed with the derived Mailgun vector's key), with the in-memory replay store
//! and events sink.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use crate::handle;
use gateway_core::clock::ManualClock;
use gateway_core::config::SecretRef;
use gateway_core::events::{GatewayEvent, MemoryEventSink};
use gateway_core::secrets::SecretResolver;
use gateway_core::state::memory::MemoryStore;
use gateway_core::webhooks::edge::{Edge, WebhookKeys};
use gateway_core::webhooks::sns::CertCache;
use lambda_http::Body;

fn sample() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/webhook-mailgun.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn request(event: &serde_json::Value) -> lambda_http::Request {
    lambda_http::request::from_str(&event.to_string()).unwrap()
}

fn edge(sink: Arc<MemoryEventSink>) -> Edge {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    Edge::new(
        WebhookKeys {
            mailgun: vec![SecretRef::Inline("WEBHOOK_SIGNING_KEY".into())],
            ..WebhookKeys::default()
        },
        Arc::new(SecretResolver::new(clock.clone())),
        Arc::new(MemoryStore::new()),
        sink,
        CertCache::new().unwrap(),
        clock,
    )
    .unwrap()
}

fn answer(response: &lambda_http::Response<Body>) -> (u16, serde_json::Value) {
    let text = match response.body() {
        Body::Text(t) => t.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{text}"
    );
    (
        response.status().as_u16(),
        serde_json::from_str(&text).unwrap(),
    )
}

#[tokio::test]
async fn a_signed_base64_body_is_queued_once_and_a_replay_refused() {
    let sink = Arc::new(MemoryEventSink::new());
    let edge = edge(sink.clone());
    let (status, body) = answer(&handle(request(&sample()), &edge).await.unwrap());
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    let events = sink.events();
    assert!(matches!(&events[..], [GatewayEvent::Delivery(e)]
        if e.message_id.as_deref() == Some("appt-2026-11-28-0001")));
    let (status, body) = answer(&handle(request(&sample()), &edge).await.unwrap());
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("replayed"))
    );
    assert_eq!(sink.events().len(), 1, "nothing more queued");
}

#[tokio::test]
async fn a_tampered_body_wrong_routes_and_methods_get_json_errors() {
    let sink = Arc::new(MemoryEventSink::new());
    let edge = edge(sink.clone());
    let mut tampered = sample();
    let plain = r#"{"signature":{"timestamp":"1700000000","token":"0123456789abcdef0123456789abcdef0123456789abcdef01","signature":"01cbfb616a25c3c692f2c338aefd48b4063a79d94f45af2d5f8d3114731f01b5"},"event-data":{"event":"failed","severity":"permanent","id":"evt-1","timestamp":1700000000.25,"recipient":"patient.one@example.org"}}"#;
    tampered["body"] = plain.into();
    tampered["isBase64Encoded"] = false.into();
    // The signature covers only timestamp + token for Mailgun, so the body change passes the
    // signature; a changed token does not.
    let mut forged = tampered.clone();
    forged["body"] = plain
        .replace("0123456789abcdef01\"", "0123456789abcdef02\"")
        .into();
    let (status, body) = answer(&handle(request(&forged), &edge).await.unwrap());
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_signature"))
    );

    let mut elsewhere = sample();
    elsewhere["rawPath"] = "/webhooks/postmark".into();
    elsewhere["requestContext"]["http"]["path"] = "/webhooks/postmark".into();
    let (status, body) = answer(&handle(request(&elsewhere), &edge).await.unwrap());
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_provider"))
    );

    let mut nowhere = sample();
    nowhere["rawPath"] = "/somewhere".into();
    nowhere["requestContext"]["http"]["path"] = "/somewhere".into();
    let (status, _) = answer(&handle(request(&nowhere), &edge).await.unwrap());
    assert_eq!(status, 404);

    let mut get = sample();
    get["requestContext"]["http"]["method"] = "GET".into();
    let (status, body) = answer(&handle(request(&get), &edge).await.unwrap());
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    assert!(sink.events().is_empty());
}
