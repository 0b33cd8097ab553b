//! The provider webhook edge on the published signature vectors: accepted requests put their
//! delivery events on the events queue; forged, stale, replayed, unparsable or untrusted ones
//! are refused with the documented status and nothing is queued.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use gateway_core::clock::ManualClock;
use gateway_core::config::SecretRef;
use gateway_core::events::{EventSink, GatewayEvent, MemoryEventSink, SinkError};
use gateway_core::secrets::SecretResolver;
use gateway_core::state::memory::MemoryStore;
use gateway_core::webhooks::edge::{Answer, Edge, WebhookKeys};
use gateway_core::webhooks::sns::CertCache;
use serde_json::{Value, json};

fn vectors() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/vectors/test_vectors.json"
        ))
        .unwrap(),
    )
    .unwrap()
}

const CERT_URL: &str = "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem";
const TOPIC: &str =
    "arn:aws:sns:us-east-2:295079676684:publish-and-verify-892f85fe-4836-424d-8188-ab85bef0f362";

/// A sink that can be down.
#[derive(Debug, Default)]
struct Sink {
    inner: MemoryEventSink,
    down: AtomicBool,
}

#[async_trait]
impl EventSink for Sink {
    async fn emit(&self, events: &[GatewayEvent]) -> Result<(), SinkError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SinkError::Unavailable("down".into()));
        }
        self.inner.emit(events).await
    }
}

struct Fixture {
    edge: Edge,
    sink: Arc<Sink>,
    clock: Arc<ManualClock>,
}

fn fixture(keys: WebhookKeys, now_s: i64) -> Fixture {
    let clock = Arc::new(ManualClock::new(now_s * 1000));
    let sink = Arc::new(Sink::default());
    let certs = CertCache::new().unwrap();
    let cert = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/vectors/sns_cert.pem"
    ))
    .unwrap();
    certs.insert(CERT_URL, &cert).unwrap();
    let edge = Edge::new(
        keys,
        Arc::new(SecretResolver::new(clock.clone())),
        Arc::new(MemoryStore::new()),
        sink.clone(),
        certs,
        clock.clone(),
    )
    .unwrap();
    Fixture { edge, sink, clock }
}

fn no_headers(_: &str) -> Option<String> {
    None
}

fn mailgun_body(v: &Value, event_data: Value) -> Vec<u8> {
    json!({"signature": {"timestamp": v["timestamp"], "token": v["token"],
        "signature": v["signature"]}, "event-data": event_data})
    .to_string()
    .into_bytes()
}

fn delivered(message_id: Option<&str>) -> Value {
    let mut e = json!({"event": "delivered", "id": "evt-1", "timestamp": 1_700_000_000.25,
        "recipient": "p@x.example"});
    if let Some(id) = message_id {
        e["user-variables"] = json!({"message_id": id});
    }
    e
}

fn assert_refused(answer: &Answer, status: u16, code: &str, sink: &Sink) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.body["error"]["code"], code, "{answer:?}");
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(sink.inner.events().is_empty(), "nothing queued");
}

fn mailgun_keys(key: &str) -> WebhookKeys {
    WebhookKeys {
        mailgun: vec![SecretRef::Inline(key.into())],
        ..WebhookKeys::default()
    }
}

#[tokio::test]
async fn mailgun_accepts_a_signed_event_once_and_refuses_replays_forgeries_and_stale_ones() {
    let v = vectors()["mailgun_derived"].clone();
    let key = v["signing_key"].as_str().unwrap();
    let f = fixture(mailgun_keys(key), 1_700_000_000);
    let body = mailgun_body(&v, delivered(Some("m-1")));

    let ok = f.edge.handle("mailgun", &no_headers, &body).await;
    assert_eq!((ok.status, ok.body["accepted"].clone()), (200, json!(1)));
    let events = f.sink.inner.take();
    let [GatewayEvent::Delivery(e)] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(
        (e.message_id.as_deref(), e.provider_event_id.as_str()),
        (Some("m-1"), "evt-1")
    );

    let again = f.edge.handle("mailgun", &no_headers, &body).await;
    assert_refused(&again, 403, "replayed", &f.sink);

    let mut forged = v.clone();
    forged["token"] = "another-token-another-token-another-token-0000000".into();
    let answer = f
        .edge
        .handle(
            "mailgun",
            &no_headers,
            &mailgun_body(&forged, delivered(Some("m-1"))),
        )
        .await;
    assert_refused(&answer, 401, "invalid_signature", &f.sink);

    let wrong_key = fixture(mailgun_keys("not the key"), 1_700_000_000);
    let answer = wrong_key.edge.handle("mailgun", &no_headers, &body).await;
    assert_refused(&answer, 401, "invalid_signature", &wrong_key.sink);

    let late = fixture(mailgun_keys(key), 1_700_000_000 + 3600);
    let answer = late.edge.handle("mailgun", &no_headers, &body).await;
    assert_refused(&answer, 403, "stale_timestamp", &late.sink);

    let answer = f
        .edge
        .handle("mailgun", &no_headers, br#"{"event-data": {}}"#)
        .await;
    assert_refused(&answer, 400, "malformed_signature", &f.sink);
    let answer = f.edge.handle("mailgun", &no_headers, b"not json").await;
    assert_refused(&answer, 400, "malformed_signature", &f.sink);
}

#[tokio::test]
async fn mailgun_unknown_events_are_acknowledged_and_events_without_our_id_still_queued() {
    let v = vectors()["mailgun_derived"].clone();
    let key = v["signing_key"].as_str().unwrap();
    let f = fixture(mailgun_keys(key), 1_700_000_000);
    let answer = f
        .edge
        .handle(
            "mailgun",
            &no_headers,
            &mailgun_body(&v, json!({"event": "list_member_uploaded"})),
        )
        .await;
    assert_eq!(
        (answer.status, answer.body["ignored"].clone()),
        (200, json!(1))
    );
    assert!(f.sink.inner.events().is_empty());

    let f = fixture(mailgun_keys(key), 1_700_000_000);
    let answer = f
        .edge
        .handle("mailgun", &no_headers, &mailgun_body(&v, delivered(None)))
        .await;
    assert_eq!(answer.status, 200);
    let events = f.sink.inner.events();
    assert!(matches!(&events[..], [GatewayEvent::Delivery(e)] if e.message_id.is_none()));

    let f = fixture(mailgun_keys(key), 1_700_000_000);
    let answer = f
        .edge
        .handle(
            "mailgun",
            &no_headers,
            &mailgun_body(&v, json!({"event": "delivered"})),
        )
        .await;
    assert_refused(&answer, 400, "invalid_payload", &f.sink);
}

/// The events queue down: 503 so Mailgun retries, and the retry (same token) is accepted.
#[tokio::test]
async fn a_queue_outage_is_a_503_and_the_retry_is_not_a_replay() {
    let v = vectors()["mailgun_derived"].clone();
    let f = fixture(
        mailgun_keys(v["signing_key"].as_str().unwrap()),
        1_700_000_000,
    );
    let body = mailgun_body(&v, delivered(Some("m-1")));
    f.sink.down.store(true, Ordering::SeqCst);
    let answer = f.edge.handle("mailgun", &no_headers, &body).await;
    assert_eq!(
        (answer.status, answer.body["error"]["code"].clone()),
        (503, json!("unavailable"))
    );
    f.sink.down.store(false, Ordering::SeqCst);
    f.clock.advance(60_000);
    let answer = f.edge.handle("mailgun", &no_headers, &body).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(f.sink.inner.events().len(), 1);
}

#[tokio::test]
async fn sendgrid_verifies_the_raw_body_and_refuses_tampering() {
    let v = vectors();
    let key = v["sendgrid_published"]["public_key_b64_der_spki"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = v["sendgrid_derived"].clone();
    let keys = WebhookKeys {
        sendgrid: vec![key],
        ..WebhookKeys::default()
    };
    let f = fixture(keys.clone(), 1_700_000_000);
    let (ts, sig) = (
        d["timestamp"].as_str().unwrap().to_owned(),
        d["signature"].as_str().unwrap().to_owned(),
    );
    let headers = move |name: &str| match name {
        "x-twilio-email-event-webhook-signature" => Some(sig.clone()),
        "x-twilio-email-event-webhook-timestamp" => Some(ts.clone()),
        _ => None,
    };
    let body = d["payload"].as_str().unwrap().as_bytes().to_vec();
    let answer = f.edge.handle("sendgrid", &headers, &body).await;
    assert_eq!(
        (answer.status, answer.body["accepted"].clone()),
        (200, json!(1))
    );
    let events = f.sink.inner.events();
    assert!(
        matches!(&events[..], [GatewayEvent::Delivery(e)] if e.provider_event_id == "ZGVsaXZlcmVkLTAtMTIz")
    );

    let f = fixture(keys.clone(), 1_700_000_000);
    let tampered = String::from_utf8(body.clone())
        .unwrap()
        .replace("delivered", "bounce");
    let answer = f
        .edge
        .handle("sendgrid", &headers, tampered.as_bytes())
        .await;
    assert_refused(&answer, 401, "invalid_signature", &f.sink);
    let answer = f.edge.handle("sendgrid", &no_headers, &body).await;
    assert_refused(&answer, 400, "malformed_signature", &f.sink);
    let late = fixture(keys, 1_700_000_000 + 3600);
    let answer = late.edge.handle("sendgrid", &headers, &body).await;
    assert_refused(&answer, 403, "stale_timestamp", &late.sink);
}

fn sns_v1() -> Value {
    json!({"Type":"Notification","MessageId":"792cda85-518f-5dd3-9163-81d851212f3a",
 "TopicArn": TOPIC,
 "Message":"Hello world","Timestamp":"2022-07-28T21:23:58.317Z","SignatureVersion":"1",
 "Signature":"ghtf+deOBAzHJJZ6s6CdRLfTQAlcGzq9naoFM1wi0CJiq//uVRuZnamrkWNF0fhouMFvuLVRwcz8PZLUMSfnmd5VpdTKpTyiKmy1qJAZXma0w+yi7G+I33hD1Jyk1Nbym2n0kqp3fVu2aoooiN2ZeLAT2bH0/BtjLSfN1yAOKNoprco4qV9gGUZinXJdj9a1YdNhDR2jKi33ldlsVtEXAtiaDklGEk7DgRKX38GerBPiLg3FdtgY6KC7cdeGpU/dGK+4hjc83Ive1HoFkAwqhpgInM2sMytBosoiXfCmOKmU4xeGD0gHDNZTlJUJQDlzw8Eag0H9f/5zXF9d3uy0YQ==",
 "SigningCertURL": CERT_URL})
}

#[tokio::test]
async fn ses_checks_topic_certificate_url_and_signature_before_the_payload() {
    let keys = WebhookKeys {
        sns_topics: vec![TOPIC.into()],
        ..WebhookKeys::default()
    };
    let f = fixture(keys.clone(), 1_900_000_000);
    // Correctly signed by SNS; its message is not an SES event, so the payload is refused
    // (400) only after the signature passed.
    let answer = f
        .edge
        .handle("ses", &no_headers, sns_v1().to_string().as_bytes())
        .await;
    assert_refused(&answer, 400, "invalid_payload", &f.sink);

    let mut changed = sns_v1();
    changed["Message"] = "Hello worle".into();
    let answer = f
        .edge
        .handle("ses", &no_headers, changed.to_string().as_bytes())
        .await;
    assert_refused(&answer, 401, "invalid_signature", &f.sink);

    let other_topic = fixture(
        WebhookKeys {
            sns_topics: vec!["arn:aws:sns:us-east-2:1:mine".into()],
            ..WebhookKeys::default()
        },
        1_900_000_000,
    );
    let answer = other_topic
        .edge
        .handle("ses", &no_headers, sns_v1().to_string().as_bytes())
        .await;
    assert_refused(&answer, 403, "topic_not_allowed", &other_topic.sink);

    for url in [
        "http://sns.us-east-2.amazonaws.com/SimpleNotificationService-x.pem",
        "https://internetbadguys.com/cert.pem",
    ] {
        let mut m = sns_v1();
        m["SigningCertURL"] = url.into();
        let answer = f
            .edge
            .handle("ses", &no_headers, m.to_string().as_bytes())
            .await;
        assert_refused(&answer, 403, "untrusted_certificate", &f.sink);
    }
}

#[tokio::test]
async fn unconfigured_and_unknown_routes_are_404_and_huge_bodies_413() {
    let f = fixture(WebhookKeys::default(), 1_700_000_000);
    for provider in ["mailgun", "sendgrid", "ses"] {
        let answer = f.edge.handle(provider, &no_headers, b"{}").await;
        assert_refused(&answer, 404, "not_configured", &f.sink);
    }
    let answer = f.edge.handle("postmark", &no_headers, b"{}").await;
    assert_refused(&answer, 404, "unknown_provider", &f.sink);
    let big = vec![b' '; 2 * 1024 * 1024];
    let answer = f.edge.handle("mailgun", &no_headers, &big).await;
    assert_refused(&answer, 413, "body_too_large", &f.sink);
}
