//! The provider webhook edge on the published signature vectors: accepted requests put their
//! delivery events on the events queue and record the providers' acceptance evidence; forged,
//! stale, replayed, unparsable or untrusted ones are refused with the documented status, and
//! nothing is queued or recorded. Every refusal is one row of
//! [`forged_requests_are_refused_and_queue_nothing`]; the other tests cover what is accepted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use gateway_core::clock::ManualClock;
use gateway_core::config::SecretRef;
use gateway_core::events::{EventSink, GatewayEvent, MemoryEventSink, SinkError};
use gateway_core::evidence::{self, Evidence};
use gateway_core::secrets::SecretResolver;
use gateway_core::state::StateStore;
use gateway_core::state::memory::MemoryStore;
use gateway_core::webhooks::edge::{Answer, Edge, MAX_BODY, Verifier, WebhookKeys};
use gateway_core::webhooks::sns::{self, CertCache, CertError, Fetch};
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
/// Just after the published SNS messages were signed (`Timestamp` 2022-07-28T21:23:58Z).
const SNS_NOW: i64 = 1_659_043_500;

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
    /// Certificate downloads attempted (every one fails: only the pinned certificate exists).
    downloads: Arc<AtomicUsize>,
    /// The state store (replay cache, acceptance evidence).
    state: Arc<dyn StateStore>,
}

fn fixture(keys: WebhookKeys, now_s: i64) -> Fixture {
    fixture_with(keys, now_s, Arc::new(MemoryStore::new()))
}

fn fixture_with(keys: WebhookKeys, now_s: i64, replay: Arc<dyn StateStore>) -> Fixture {
    let clock = Arc::new(ManualClock::new(now_s * 1000));
    let sink = Arc::new(Sink::default());
    let downloads = Arc::new(AtomicUsize::new(0));
    let counter = downloads.clone();
    let fetch: Fetch = Arc::new(move |_url: String| {
        counter.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(CertError::Unavailable) })
    });
    let certs = CertCache::with_fetch(fetch, clock.clone());
    let cert = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/vectors/sns_cert.pem"
    ))
    .unwrap();
    certs.insert(CERT_URL, &cert).unwrap();
    let edge = Edge::new(
        keys,
        Arc::new(SecretResolver::new(clock.clone())),
        replay.clone(),
        sink.clone(),
        certs,
        clock.clone(),
    )
    .unwrap();
    Fixture {
        edge,
        sink,
        clock,
        downloads,
        state: replay,
    }
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
async fn mailgun_queues_a_signed_event_with_our_message_id() {
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

/// The sender's question, answered from a signed webhook: Mailgun's `accepted` (acknowledged,
/// nothing queued) records evidence against our `v:message_id` that `evidence::lookup_many`
/// finds, naming the one gateway whose signing key verified it.
#[tokio::test]
async fn a_signed_mailgun_accepted_webhook_is_evidence_the_sender_finds() {
    let v = vectors()["mailgun_derived"].clone();
    let key = SecretRef::Inline(v["signing_key"].as_str().unwrap().into());
    let keys = WebhookKeys {
        mailgun: vec![key.clone()],
        owners: vec![(Verifier::MailgunKey(key), "mailgun-primary".to_owned())],
        ..WebhookKeys::default()
    };
    let f = fixture(keys, 1_700_000_000);
    let accepted = json!({"event": "accepted", "id": "evt-0", "timestamp": 1_699_999_990.25,
        "recipient": "p@x.example", "user-variables": {"message_id": "appt-2026-11-28-0001"},
        "message": {"headers": {"message-id": "20231114221950.1.ABC@mg.example.org"}}});
    let answer = f
        .edge
        .handle("mailgun", &no_headers, &mailgun_body(&v, accepted))
        .await;
    assert_eq!(
        (answer.status, answer.body.clone()),
        (200, json!({"accepted": 0, "ignored": 1}))
    );
    assert!(f.sink.inner.events().is_empty(), "no delivery event");
    let found = evidence::lookup_many(f.state.as_ref(), &["appt-2026-11-28-0001", "m-2"])
        .await
        .unwrap();
    assert_eq!(
        found,
        [
            Some(Evidence {
                gateway: Some("mailgun-primary".to_owned()),
                provider: "mailgun".to_owned(),
                provider_message_id: Some("<20231114221950.1.ABC@mg.example.org>".to_owned()),
                event: "accepted".to_owned(),
                at: 1_699_999_990_250,
            }),
            None
        ]
    );
}

/// A signed SendGrid batch: `processed` and `delivered` are evidence (the earliest per
/// message), `open` and events without our id are not; the delivery events are queued as
/// before.
#[tokio::test]
async fn sendgrid_processed_and_delivered_events_are_evidence() {
    let signer = SendgridSigner::new();
    let f = fixture(sendgrid_keys(&signer.public_key_b64()), 1_700_000_000);
    let event = |name: &str, id: &str, message_id: Option<&str>, ts: i64| {
        let mut e = json!({"email": "p@x.example", "timestamp": ts, "event": name,
            "sg_event_id": id, "sg_message_id": "Ua9z9lSTSaqYBWJe_Xfc-Q.filter0001.1.0"});
        if let Some(m) = message_id {
            e["message_id"] = json!(m);
        }
        e
    };
    let body = json!([
        event("delivered", "e1", Some("m-1"), 1_699_999_995),
        event("processed", "e0", Some("m-1"), 1_699_999_990),
        event("open", "e2", Some("m-2"), 1_699_999_996),
        event("processed", "e3", None, 1_699_999_990),
    ])
    .to_string()
    .into_bytes();
    let headers = signer.headers(1_700_000_000, &body);
    let lookup = move |name: &str| {
        headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    let answer = f.edge.handle("sendgrid", &lookup, &body).await;
    assert_eq!(
        (answer.status, answer.body.clone()),
        (200, json!({"accepted": 2, "ignored": 2})),
        "{answer:?}"
    );
    let found = evidence::lookup_many(f.state.as_ref(), &["m-1", "m-2"])
        .await
        .unwrap();
    assert_eq!(
        found,
        [
            Some(Evidence {
                gateway: None,
                provider: "sendgrid".to_owned(),
                provider_message_id: Some("Ua9z9lSTSaqYBWJe_Xfc-Q".to_owned()),
                event: "processed".to_owned(),
                at: 1_699_999_990_000,
            }),
            None
        ]
    );
}

#[tokio::test]
async fn sendgrid_verifies_the_raw_body_and_queues_its_events() {
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
    let f = fixture(keys, 1_700_000_000);
    let (headers, body) = sendgrid_vector_request(&d);
    let answer = f.edge.handle("sendgrid", &headers, &body).await;
    assert_eq!(
        (answer.status, answer.body["accepted"].clone()),
        (200, json!(1))
    );
    let events = f.sink.inner.events();
    assert!(
        matches!(&events[..], [GatewayEvent::Delivery(e)] if e.provider_event_id == "ZGVsaXZlcmVkLTAtMTIz")
    );
}

/// The headers and body of the derived SendGrid vector `d`, as SendGrid posts them.
fn sendgrid_vector_request(d: &Value) -> (impl Fn(&str) -> Option<String> + use<>, Vec<u8>) {
    let (ts, sig) = (
        d["timestamp"].as_str().unwrap().to_owned(),
        d["signature"].as_str().unwrap().to_owned(),
    );
    let headers = move |name: &str| match name {
        "x-twilio-email-event-webhook-signature" => Some(sig.clone()),
        "x-twilio-email-event-webhook-timestamp" => Some(ts.clone()),
        _ => None,
    };
    (headers, d["payload"].as_str().unwrap().as_bytes().to_vec())
}

/// The events queue down: 503, and SendGrid's retry of the batch is not refused as a replay of
/// its `sg_event_id`s.
#[tokio::test]
async fn sendgrid_a_queue_outage_is_a_503_and_the_retry_is_not_a_replay() {
    let v = vectors();
    let key = v["sendgrid_published"]["public_key_b64_der_spki"]
        .as_str()
        .unwrap();
    let d = v["sendgrid_derived"].clone();
    let f = fixture(sendgrid_keys(key), 1_700_000_000);
    let (headers, body) = sendgrid_vector_request(&d);
    f.sink.down.store(true, Ordering::SeqCst);
    let answer = f.edge.handle("sendgrid", &headers, &body).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    f.sink.down.store(false, Ordering::SeqCst);
    f.clock.advance(60_000);
    let answer = f.edge.handle("sendgrid", &headers, &body).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(f.sink.inner.events().len(), 1);
    f.clock.advance(1_000);
    let answer = f.edge.handle("sendgrid", &headers, &body).await;
    assert_eq!(
        (answer.status, answer.body["error"]["code"].clone()),
        (403, json!("replayed"))
    );
}

/// A SendGrid signer of our own (P-256): the key as SendGrid shows it (base64 DER SPKI), and
/// the headers of a body signed at `ts`.
struct SendgridSigner(aws_lc_rs::signature::EcdsaKeyPair);

impl SendgridSigner {
    fn new() -> Self {
        Self(
            aws_lc_rs::signature::EcdsaKeyPair::generate(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            )
            .unwrap(),
        )
    }

    fn public_key_b64(&self) -> String {
        use aws_lc_rs::signature::KeyPair as _;
        use base64::Engine as _;
        // SubjectPublicKeyInfo { id-ecPublicKey, prime256v1 } around the uncompressed point.
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        spki.extend_from_slice(self.0.public_key().as_ref());
        base64::engine::general_purpose::STANDARD.encode(spki)
    }

    fn headers(&self, ts: i64, body: &[u8]) -> Vec<(&'static str, String)> {
        use base64::Engine as _;
        let mut message = ts.to_string().into_bytes();
        message.extend_from_slice(body);
        let sig = self
            .0
            .sign(&aws_lc_rs::rand::SystemRandom::new(), &message)
            .unwrap();
        vec![
            ("x-twilio-email-event-webhook-timestamp", ts.to_string()),
            (
                "x-twilio-email-event-webhook-signature",
                base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
            ),
        ]
    }
}

fn sg_events(ids: &[&str]) -> Vec<u8> {
    Value::Array(
        ids.iter()
            .map(|id| {
                json!({"email": "p@x.example", "timestamp": 1_700_000_000, "event": "delivered",
                    "sg_event_id": id, "message_id": "m-1"})
            })
            .collect(),
    )
    .to_string()
    .into_bytes()
}

/// Re-signed batches (as SendGrid's own redelivery, or a captured body signed again): events
/// accepted before are dropped and the new ones queued; a batch of only old events is refused;
/// an event twice in one batch is queued once; a large batch is checked whole.
#[tokio::test]
async fn sendgrid_events_already_accepted_are_dropped_from_a_new_batch() {
    let signer = SendgridSigner::new();
    let f = fixture(sendgrid_keys(&signer.public_key_b64()), 1_700_000_000);
    let post = |ts: i64, body: Vec<u8>| {
        let headers = signer.headers(ts, &body);
        let edge = &f.edge;
        async move {
            let lookup = move |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            };
            edge.handle("sendgrid", &lookup, &body).await
        }
    };
    let ids = |events: Vec<GatewayEvent>| -> Vec<String> {
        events
            .into_iter()
            .map(|e| match e {
                GatewayEvent::Delivery(d) => d.provider_event_id,
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let a = post(1_700_000_000, sg_events(&["e1", "e2"])).await;
    assert_eq!(
        (a.status, a.body["accepted"].clone()),
        (200, json!(2)),
        "{a:?}"
    );
    assert_eq!(ids(f.sink.inner.take()), ["e1", "e2"]);
    let b = post(1_700_000_030, sg_events(&["e2", "e3", "e3"])).await;
    assert_eq!(
        (b.status, b.body["accepted"].clone()),
        (200, json!(1)),
        "{b:?}"
    );
    assert_eq!(ids(f.sink.inner.take()), ["e3"]);
    let c = post(1_700_000_060, sg_events(&["e3", "e1"])).await;
    assert_refused(&c, 403, "replayed", &f.sink);
    let many: Vec<String> = (0..500).map(|i| format!("bulk-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let d = post(1_700_000_090, sg_events(&many)).await;
    assert_eq!(
        (d.status, d.body["accepted"].clone()),
        (200, json!(500)),
        "{d:?}"
    );
}

fn sns_v1() -> Value {
    json!({"Type":"Notification","MessageId":"792cda85-518f-5dd3-9163-81d851212f3a",
 "TopicArn": TOPIC,
 "Message":"Hello world","Timestamp":"2022-07-28T21:23:58.317Z","SignatureVersion":"1",
 "Signature":"ghtf+deOBAzHJJZ6s6CdRLfTQAlcGzq9naoFM1wi0CJiq//uVRuZnamrkWNF0fhouMFvuLVRwcz8PZLUMSfnmd5VpdTKpTyiKmy1qJAZXma0w+yi7G+I33hD1Jyk1Nbym2n0kqp3fVu2aoooiN2ZeLAT2bH0/BtjLSfN1yAOKNoprco4qV9gGUZinXJdj9a1YdNhDR2jKi33ldlsVtEXAtiaDklGEk7DgRKX38GerBPiLg3FdtgY6KC7cdeGpU/dGK+4hjc83Ive1HoFkAwqhpgInM2sMytBosoiXfCmOKmU4xeGD0gHDNZTlJUJQDlzw8Eag0H9f/5zXF9d3uy0YQ==",
 "SigningCertURL": CERT_URL})
}

/// A correctly signed SNS message whose `Message` is not an SES event: the payload is refused
/// (400) only after topic, certificate and signature passed.
#[tokio::test]
async fn ses_reads_the_payload_only_after_the_signature() {
    let f = fixture(ses_keys(), SNS_NOW);
    let answer = f
        .edge
        .handle("ses", &no_headers, sns_v1().to_string().as_bytes())
        .await;
    assert_refused(&answer, 400, "invalid_payload", &f.sink);
    // Still read (not stale) as long as the dead-letter queue can keep it.
    let f = fixture(
        ses_keys(),
        SNS_NOW + i64::try_from(sns::MAX_MESSAGE_AGE.as_secs()).unwrap() - 3600,
    );
    let answer = f
        .edge
        .handle("ses", &no_headers, sns_v1().to_string().as_bytes())
        .await;
    assert_refused(&answer, 400, "invalid_payload", &f.sink);
}

/// A flood of forged notifications from an allowed topic naming made-up certificate URLs on the
/// SNS host: each URL is downloaded once (its failure is remembered), and all of them together
/// at most `MAX_FETCHES_PER_MINUTE` times a minute; every request is answered 503.
#[tokio::test]
async fn made_up_certificate_urls_cannot_make_the_edge_download_without_bound() {
    let f = fixture(ses_keys(), SNS_NOW);
    let forged = |path: &str| {
        let mut m = sns_v1();
        m["SigningCertURL"] = format!("https://sns.us-east-2.amazonaws.com/{path}.pem").into();
        m.to_string().into_bytes()
    };
    for _ in 0..50 {
        let answer = f
            .edge
            .handle("ses", &no_headers, &forged("SimpleNotificationService-0"))
            .await;
        assert_refused(&answer, 503, "unavailable", &f.sink);
    }
    assert_eq!(
        f.downloads.load(Ordering::SeqCst),
        1,
        "the failure is remembered"
    );
    for i in 0..500 {
        let answer = f
            .edge
            .handle("ses", &no_headers, &forged(&format!("forged-{i}")))
            .await;
        assert_refused(&answer, 503, "unavailable", &f.sink);
    }
    assert_eq!(
        f.downloads.load(Ordering::SeqCst),
        sns::MAX_FETCHES_PER_MINUTE,
        "capped per minute"
    );
    f.clock.advance(60_000);
    let answer = f.edge.handle("ses", &no_headers, &forged("next")).await;
    assert_refused(&answer, 503, "unavailable", &f.sink);
    assert_eq!(
        f.downloads.load(Ordering::SeqCst),
        sns::MAX_FETCHES_PER_MINUTE + 1
    );
    // The pinned (cached) certificate is still used while downloads are capped.
    let answer = f
        .edge
        .handle("ses", &no_headers, sns_v1().to_string().as_bytes())
        .await;
    assert_refused(&answer, 400, "invalid_payload", &f.sink);
}

/// `amazon_ses.sns_accept_sha1_signatures: false` reaches the edge: that gateway's topics refuse
/// SignatureVersion 1, a topic of a gateway that keeps the default does not.
#[test]
fn the_sha1_setting_of_each_gateway_applies_to_its_topics() {
    let doc = json!({"gateways": [
        {"id": "strict", "type": "amazon_ses", "routing": {"can_route": ["*"]},
         "amazon_ses": {"region": "us-east-2", "sns_topic_arns": [TOPIC],
            "sns_accept_sha1_signatures": false}},
        {"id": "lenient", "type": "amazon_ses", "routing": {"can_route": ["*"]},
         "amazon_ses": {"region": "eu-west-1", "sns_topic_arns": ["arn:aws:sns:eu-west-1:1:t"]}}
    ]});
    let loaded = gateway_core::config::load_config(Some(&doc.to_string()), None, &|_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    let keys = WebhookKeys::of(&loaded.config);
    assert_eq!(keys.sns_topics.len(), 2);
    assert_eq!(keys.sns_sha1_refused, vec![TOPIC.to_owned()]);
}

/// The replay cache finding its own write (applied, answer lost) is not a replay: the request
/// is accepted, and a real replay afterwards is still refused.
#[tokio::test]
async fn a_replay_record_found_by_its_own_writer_is_not_a_replay() {
    let v = vectors()["mailgun_derived"].clone();
    let f = fixture_with(
        mailgun_keys(v["signing_key"].as_str().unwrap()),
        1_700_000_000,
        Arc::new(gateway_core::state::memory::LostAnswers::default()),
    );
    let body = mailgun_body(&v, delivered(Some("m-1")));
    let answer = f.edge.handle("mailgun", &no_headers, &body).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    f.sink.inner.take();
    let again = f.edge.handle("mailgun", &no_headers, &body).await;
    assert_refused(&again, 403, "replayed", &f.sink);
}

fn ses_keys() -> WebhookKeys {
    WebhookKeys {
        sns_topics: vec![TOPIC.into()],
        ..WebhookKeys::default()
    }
}

fn sendgrid_keys(key: &str) -> WebhookKeys {
    WebhookKeys {
        sendgrid: vec![key.into()],
        ..WebhookKeys::default()
    }
}

/// One forged or unreadable request and the answer it must get.
struct Forged {
    name: &'static str,
    provider: &'static str,
    keys: WebhookKeys,
    now_s: i64,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// A request with the same token accepted just before (a replay).
    after: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
}

impl Forged {
    fn new(
        name: &'static str,
        provider: &'static str,
        keys: &WebhookKeys,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            name,
            provider,
            keys: keys.clone(),
            now_s: 1_700_000_000,
            headers: Vec::new(),
            body: body.into(),
            after: None,
            status: 0,
            code: "",
        }
    }

    fn at(mut self, now_s: i64) -> Self {
        self.now_s = now_s;
        self
    }

    fn headers(mut self, headers: Vec<(&'static str, String)>) -> Self {
        self.headers = headers;
        self
    }

    fn after(mut self, accepted: Vec<u8>) -> Self {
        self.after = Some(accepted);
        self
    }

    fn answers(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self
    }
}

/// Over the edge's body limit, by padding a JSON document with trailing spaces.
fn oversized(body: &[u8]) -> Vec<u8> {
    let mut big = body.to_vec();
    big.resize(MAX_BODY + 1, b' ');
    big
}

fn forged_cases() -> Vec<Forged> {
    let v = vectors();
    let mg = v["mailgun_derived"].clone();
    let mg_keys = mailgun_keys(mg["signing_key"].as_str().unwrap());
    let mg_ok = mailgun_body(&mg, delivered(Some("m-1")));
    let sig =
        json!({"timestamp": mg["timestamp"], "token": mg["token"], "signature": mg["signature"]});
    let bounce = json!({"event": "failed", "severity": "permanent", "reason": "bounce",
        "id": "evt-2", "timestamp": 1_700_000_000.5, "recipient": "victim@x.example"});
    let with_sig = |field: &str, value: &str| {
        let mut s = mg.clone();
        s[field] = value.into();
        mailgun_body(&s, delivered(Some("m-1")))
    };
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));

    let sg_key = v["sendgrid_published"]["public_key_b64_der_spki"]
        .as_str()
        .unwrap();
    let sg_keys = sendgrid_keys(sg_key);
    let d = &v["sendgrid_derived"];
    let (sg_ts, sg_sig) = (
        d["timestamp"].as_str().unwrap(),
        d["signature"].as_str().unwrap(),
    );
    let sg_body = d["payload"].as_str().unwrap().as_bytes().to_vec();
    let sg = |ts: &str, sig: &str| {
        vec![
            ("x-twilio-email-event-webhook-timestamp", ts.to_owned()),
            ("x-twilio-email-event-webhook-signature", sig.to_owned()),
            ("content-type", "application/json".to_owned()),
        ]
    };
    let p = &v["sendgrid_published"];
    let (p_ts, p_body) = (
        p["timestamp"].as_str().unwrap(),
        p["payload"].as_str().unwrap(),
    );
    let p_bad_sig = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0=";
    let wrong_sg_key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj+y7GjUuFDb/R1NGe1OPzpA==";

    let ses = ses_keys();
    let sns = |field: &str, value: Value| {
        let mut m = sns_v1();
        if value.is_null() {
            m.as_object_mut().unwrap().remove(field);
        } else {
            m[field] = value;
        }
        m.to_string().into_bytes()
    };
    let sns_text = sns_v1().to_string();
    let v2_signature = v["sns_published"]["messages"][1]["Signature"].clone();

    vec![
        // Mailgun: HMAC-SHA256(key, timestamp ‖ token) inside the body.
        Forged::new("mailgun: token changed, signature kept", "mailgun", &mg_keys,
            with_sig("token", "another-token-another-token-another-token-0000000")).answers(401, "invalid_signature"),
        Forged::new("mailgun: timestamp changed, signature kept", "mailgun", &mg_keys,
            with_sig("timestamp", "1700000001")).answers(401, "invalid_signature"),
        Forged::new("mailgun: signature of another key", "mailgun", &mailgun_keys("not the key"), mg_ok.clone())
            .answers(401, "invalid_signature"),
        Forged::new("mailgun: signature not hex", "mailgun", &mg_keys, with_sig("signature", &"zz".repeat(32)))
            .answers(400, "malformed_signature"),
        Forged::new("mailgun: signature missing", "mailgun", &mg_keys,
            json!({"event-data": delivered(Some("m-1"))}).to_string()).answers(400, "malformed_signature"),
        Forged::new("mailgun: empty token", "mailgun", &mg_keys, with_sig("token", ""))
            .answers(400, "malformed_signature"),
        Forged::new("mailgun: stale timestamp", "mailgun", &mg_keys, mg_ok.clone())
            .at(1_700_000_000 + 3600).answers(403, "stale_timestamp"),
        Forged::new("mailgun: timestamp from the future", "mailgun", &mg_keys, mg_ok.clone())
            .at(1_700_000_000 - 3600).answers(403, "stale_timestamp"),
        Forged::new("mailgun: replayed request", "mailgun", &mg_keys, mg_ok.clone())
            .after(mg_ok.clone()).answers(403, "replayed"),
        Forged::new("mailgun: replayed token with other events", "mailgun", &mg_keys,
            mailgun_body(&mg, bounce.clone())).after(mg_ok.clone()).answers(403, "replayed"),
        Forged::new("mailgun: two signature objects", "mailgun", &mg_keys,
            format!(r#"{{"signature": {sig}, "signature": {{"timestamp": "1", "token": "t", "signature": "00"}}, "event-data": {}}}"#,
                delivered(Some("m-1")))).answers(400, "malformed_signature"),
        Forged::new("mailgun: two event-data objects", "mailgun", &mg_keys,
            format!(r#"{{"signature": {sig}, "event-data": {}, "event-data": {bounce}}}"#, delivered(Some("m-1"))))
            .answers(400, "invalid_payload"),
        Forged::new("mailgun: envelope as a JSON array", "mailgun", &mg_keys,
            format!("[{sig}, {}]", delivered(Some("m-1")))).answers(400, "malformed_signature"),
        Forged::new("mailgun: legacy form post (wrong content type)", "mailgun", &mg_keys,
            format!("timestamp={}&token={}&signature={}&event=delivered&recipient=p%40x.example",
                mg["timestamp"].as_str().unwrap(), mg["token"].as_str().unwrap(), mg["signature"].as_str().unwrap()))
            .headers(vec![("content-type", "application/x-www-form-urlencoded".to_owned())])
            .answers(400, "malformed_signature"),
        Forged::new("mailgun: JSON labelled text/plain with a bad signature", "mailgun", &mg_keys,
            with_sig("signature", &"00".repeat(32)))
            .headers(vec![("content-type", "text/plain".to_owned())]).answers(401, "invalid_signature"),
        Forged::new("mailgun: event-data nested 200 deep", "mailgun", &mg_keys,
            format!(r#"{{"signature": {sig}, "event-data": {deep}}}"#)).answers(400, "invalid_payload"),
        Forged::new("mailgun: not UTF-8", "mailgun", &mg_keys, b"{\"signature\": \"\xff\xfe\"}".to_vec())
            .answers(400, "malformed_signature"),
        Forged::new("mailgun: empty body", "mailgun", &mg_keys, Vec::new()).answers(400, "malformed_signature"),
        Forged::new("mailgun: over the body limit", "mailgun", &mg_keys, oversized(&mg_ok))
            .answers(413, "body_too_large"),
        Forged::new("mailgun: route not configured", "mailgun", &WebhookKeys::default(), mg_ok.clone())
            .answers(404, "not_configured"),
        // SendGrid: ECDSA P-256 over timestamp ‖ raw body, in two headers.
        Forged::new("sendgrid: body changed", "sendgrid", &sg_keys,
            String::from_utf8(sg_body.clone()).unwrap().replace("delivered", "bounce"))
            .headers(sg(sg_ts, sg_sig)).answers(401, "invalid_signature"),
        Forged::new("sendgrid: body without its trailing CRLF", "sendgrid", &sg_keys, sg_body[..sg_body.len() - 2].to_vec())
            .headers(sg(sg_ts, sg_sig)).answers(401, "invalid_signature"),
        Forged::new("sendgrid: bad ECDSA signature (one character)", "sendgrid", &sg_keys, p_body)
            .headers(sg(p_ts, p_bad_sig)).at(1_588_788_367).answers(401, "invalid_signature"),
        Forged::new("sendgrid: signature of another key", "sendgrid", &sendgrid_keys(wrong_sg_key), sg_body.clone())
            .headers(sg(sg_ts, sg_sig)).answers(401, "invalid_signature"),
        Forged::new("sendgrid: timestamp header changed", "sendgrid", &sg_keys, sg_body.clone())
            .headers(sg("1700000001", sg_sig)).answers(401, "invalid_signature"),
        Forged::new("sendgrid: signature not base64", "sendgrid", &sg_keys, sg_body.clone())
            .headers(sg(sg_ts, &format!("{sg_sig}causing failure"))).answers(400, "malformed_signature"),
        Forged::new("sendgrid: timestamp not a number", "sendgrid", &sg_keys, sg_body.clone())
            .headers(sg("timestamp", sg_sig)).answers(400, "malformed_signature"),
        Forged::new("sendgrid: signature header missing", "sendgrid", &sg_keys, sg_body.clone())
            .headers(vec![("x-twilio-email-event-webhook-timestamp", sg_ts.to_owned())])
            .answers(400, "malformed_signature"),
        Forged::new("sendgrid: timestamp header missing", "sendgrid", &sg_keys, sg_body.clone())
            .headers(vec![("x-twilio-email-event-webhook-signature", sg_sig.to_owned())])
            .answers(400, "malformed_signature"),
        Forged::new("sendgrid: no headers", "sendgrid", &sg_keys, sg_body.clone()).answers(400, "malformed_signature"),
        Forged::new("sendgrid: stale timestamp", "sendgrid", &sg_keys, sg_body.clone())
            .headers(sg(sg_ts, sg_sig)).at(1_700_000_000 + 3600).answers(403, "stale_timestamp"),
        Forged::new("sendgrid: replayed request", "sendgrid", &sg_keys, sg_body.clone())
            .headers(sg(sg_ts, sg_sig)).after(sg_body.clone()).answers(403, "replayed"),
        Forged::new("sendgrid: form body (wrong content type)", "sendgrid", &sg_keys,
            format!("events={}", d["payload"].as_str().unwrap()))
            .headers(vec![("x-twilio-email-event-webhook-timestamp", sg_ts.to_owned()),
                ("x-twilio-email-event-webhook-signature", sg_sig.to_owned()),
                ("content-type", "application/x-www-form-urlencoded".to_owned())])
            .answers(401, "invalid_signature"),
        Forged::new("sendgrid: not UTF-8", "sendgrid", &sg_keys, b"[\xff]".to_vec())
            .headers(sg(sg_ts, sg_sig)).answers(401, "invalid_signature"),
        Forged::new("sendgrid: empty body", "sendgrid", &sg_keys, Vec::new())
            .headers(sg(sg_ts, sg_sig)).answers(401, "invalid_signature"),
        Forged::new("sendgrid: over the body limit", "sendgrid", &sg_keys, oversized(&sg_body))
            .headers(sg(sg_ts, sg_sig)).answers(413, "body_too_large"),
        Forged::new("sendgrid: route not configured", "sendgrid", &WebhookKeys::default(), sg_body.clone())
            .headers(sg(sg_ts, sg_sig)).answers(404, "not_configured"),
        // SNS (SES events): RSA over the canonical string, certificate from an SNS URL, topic allow-list.
        Forged::new("sns: topic not on the allow-list", "ses",
            &WebhookKeys { sns_topics: vec!["arn:aws:sns:us-east-2:1:mine".into()], ..WebhookKeys::default() },
            sns_text.clone()).answers(403, "topic_not_allowed"),
        Forged::new("sns: certificate URL on another host", "ses", &ses,
            sns("SigningCertURL", json!("https://internetbadguys.com/cert.pem"))).answers(403, "untrusted_certificate"),
        Forged::new("sns: certificate URL under amazonaws.com but not SNS", "ses", &ses,
            sns("SigningCertURL", json!("https://s3.amazonaws.com/sns.us-east-2.amazonaws.com/x.pem")))
            .answers(403, "untrusted_certificate"),
        Forged::new("sns: certificate URL over http", "ses", &ses,
            sns("SigningCertURL", json!("http://sns.us-east-2.amazonaws.com/SimpleNotificationService-x.pem")))
            .answers(403, "untrusted_certificate"),
        Forged::new("sns: certificate URL not a .pem", "ses", &ses,
            sns("SigningCertURL", json!("https://sns.us-east-2.amazonaws.com/x.key"))).answers(403, "untrusted_certificate"),
        Forged::new("sns: certificate URL of another region's SNS endpoint", "ses", &ses,
            sns("SigningCertURL", json!(CERT_URL.replace("us-east-2", "eu-west-1"))))
            .at(SNS_NOW).answers(403, "untrusted_certificate"),
        Forged::new("sns: made-up certificate URL on the SNS host", "ses", &ses,
            sns("SigningCertURL", json!("https://sns.us-east-2.amazonaws.com/SimpleNotificationService-0123.pem")))
            .at(SNS_NOW).answers(503, "unavailable"),
        Forged::new("sns: SignatureVersion 1 where SHA-1 is refused", "ses",
            &WebhookKeys { sns_sha1_refused: vec![TOPIC.into()], ..ses.clone() }, sns_text.clone())
            .at(SNS_NOW).answers(403, "signature_version_refused"),
        Forged::new("sns: notification older than the dead-letter retention", "ses", &ses, sns_text.clone())
            .at(SNS_NOW + i64::try_from(sns::MAX_MESSAGE_AGE.as_secs()).unwrap() + 60)
            .answers(403, "stale_timestamp"),
        Forged::new("sns: notification from the future", "ses", &ses, sns_text.clone())
            .at(SNS_NOW - 3600).answers(403, "stale_timestamp"),
        Forged::new("sns: message changed", "ses", &ses, sns("Message", json!("Hello worle")))
            .answers(401, "invalid_signature"),
        Forged::new("sns: subject added", "ses", &ses, sns("Subject", json!("added")))
            .answers(401, "invalid_signature"),
        Forged::new("sns: signature of another message", "ses", &ses, sns("Signature", v2_signature))
            .answers(401, "invalid_signature"),
        Forged::new("sns: signature not base64", "ses", &ses, sns("Signature", json!("bad")))
            .answers(400, "malformed_signature"),
        Forged::new("sns: SignatureVersion 3", "ses", &ses, sns("SignatureVersion", json!("3")))
            .answers(400, "malformed_signature"),
        Forged::new("sns: SignatureVersion 2 on a version 1 signature", "ses", &ses, sns("SignatureVersion", json!("2")))
            .answers(401, "invalid_signature"),
        Forged::new("sns: signature missing", "ses", &ses, sns("Signature", Value::Null))
            .answers(400, "malformed_signature"),
        Forged::new("sns: two Message keys", "ses", &ses,
            sns_text.replacen('{', r#"{"Message":"{\"eventType\":\"Bounce\"}","#, 1))
            .answers(400, "malformed_signature"),
        Forged::new("sns: raw message delivery (no envelope)", "ses", &ses,
            json!({"eventType": "Bounce", "mail": {"messageId": "x"}}).to_string())
            .headers(vec![("x-amz-sns-rawdelivery", "true".to_owned())]).answers(400, "malformed_signature"),
        Forged::new("sns: Lambda-style key names", "ses", &ses,
            sns_text.replace("SigningCertURL", "SigningCertUrl")).answers(400, "malformed_signature"),
        Forged::new("sns: not UTF-8", "ses", &ses, b"{\"Type\": \"\xff\"}".to_vec())
            .answers(400, "malformed_signature"),
        Forged::new("sns: empty body", "ses", &ses, Vec::new()).answers(400, "malformed_signature"),
        Forged::new("sns: over the body limit", "ses", &ses, oversized(sns_text.as_bytes()))
            .answers(413, "body_too_large"),
        Forged::new("sns: route not configured", "ses", &WebhookKeys::default(), sns_text.clone())
            .answers(404, "not_configured"),
        // Routes.
        Forged::new("unknown provider route", "postmark", &mg_keys, mg_ok.clone()).answers(404, "unknown_provider"),
        Forged::new("provider route in another case", "Mailgun", &mg_keys, mg_ok).answers(404, "unknown_provider"),
    ]
}

/// ARCHITECTURE §2.3: a forged, stale or replayed request gets 401/403 and changes nothing; an
/// unreadable one 400, an oversized one 413, an unserved route 404. One row per case; each
/// asserts the status, the error code and that nothing reached the events queue.
#[tokio::test]
async fn forged_requests_are_refused_and_queue_nothing() {
    for case in forged_cases() {
        let f = fixture(case.keys.clone(), case.now_s);
        let headers = case.headers.clone();
        let lookup = move |name: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        };
        if let Some(accepted) = &case.after {
            let first = f.edge.handle(case.provider, &lookup, accepted).await;
            assert_eq!(
                first.status, 200,
                "{}: the original was not accepted: {first:?}",
                case.name
            );
            f.sink.inner.take();
            f.clock.advance(1_000);
        }
        // `m-1`: the message id of the Mailgun cases (the SendGrid and SNS vectors carry none).
        let evidence_before = evidence::lookup_many(f.state.as_ref(), &["m-1"])
            .await
            .unwrap();
        let answer = f.edge.handle(case.provider, &lookup, &case.body).await;
        assert_eq!(
            evidence::lookup_many(f.state.as_ref(), &["m-1"])
                .await
                .unwrap(),
            evidence_before,
            "{}: evidence was recorded",
            case.name
        );
        assert_eq!(
            (answer.status, answer.body["error"]["code"].as_str()),
            (case.status, Some(case.code)),
            "{}: {answer:?}",
            case.name
        );
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}: {answer:?}",
            case.name
        );
        assert!(
            f.sink.inner.events().is_empty(),
            "{}: something was queued",
            case.name
        );
    }
}
