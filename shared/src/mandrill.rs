//! Customer-facing events in Mandrill's webhook format (ARCHITECTURE §2.5, providers.md §5–6).
//!
//! Pure mapping from what the gateway knows to one Mandrill message event. Batching, signing and
//! delivery to customer endpoints belong to the recorder; this module fixes the shape.
//!
//! - One event per recipient. The top-level `_id` is unique per event (the original system gave
//!   every event the same `_id`, so customers de-duplicated real events away); `msg._id` is our
//!   message id, which is what customers correlate on.
//! - `ts` is the event's time, `msg.ts` the time the message was sent, both integer Unix seconds.
//! - Which fact makes a `send` event (providers.md §6): for providers that report delivery
//!   (Mailgun, SendGrid, SES) it is their delivery event, mapped here from
//!   [`DeliveryKind::Delivered`]; the provider's acceptance is recorded but not announced, so a
//!   recipient never gets two `send` events. For gateways with no delivery signal (Gmail API,
//!   SMTP relays) the recorder emits the `send` event when the provider accepted the message.
//! - `msg.state` follows Mandrill's samples: `send`→`sent`, `deferral`→`deferred`,
//!   `hard_bounce`→`bounced`, `soft_bounce`→`soft-bounced`, `reject`→`rejected`, and `sent` for
//!   engagement events (`open`, `click`, `spam`, `unsub`).

use std::collections::BTreeMap;

use aws_lc_rs::hmac;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::clock::EpochMillis;
use crate::events::{DeliveryEvent, DeliveryKind, Outcome, OutcomeEvent, RecipientStatus};

pub use crate::config::MandrillEvent;

/// `msg.state` for an event, as in Mandrill's samples.
fn msg_state(event: MandrillEvent) -> &'static str {
    match event {
        MandrillEvent::Send
        | MandrillEvent::Open
        | MandrillEvent::Click
        | MandrillEvent::Spam
        | MandrillEvent::Unsub => "sent",
        MandrillEvent::Deferral => "deferred",
        MandrillEvent::HardBounce => "bounced",
        MandrillEvent::SoftBounce => "soft-bounced",
        MandrillEvent::Reject => "rejected",
    }
}

impl From<DeliveryKind> for MandrillEvent {
    fn from(kind: DeliveryKind) -> Self {
        match kind {
            DeliveryKind::Delivered => Self::Send,
            DeliveryKind::Deferred => Self::Deferral,
            DeliveryKind::HardBounce => Self::HardBounce,
            DeliveryKind::SoftBounce => Self::SoftBounce,
            DeliveryKind::Rejected => Self::Reject,
            DeliveryKind::Opened => Self::Open,
            DeliveryKind::Clicked => Self::Click,
            DeliveryKind::Complained => Self::Spam,
            DeliveryKind::Unsubscribed => Self::Unsub,
        }
    }
}

/// What the record of delivery knows about the message an event concerns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageContext {
    /// Subject.
    pub subject: String,
    /// Sender address.
    pub sender: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, Value>,
    /// When a provider accepted it (epoch ms), if it was sent.
    pub sent_at: Option<EpochMillis>,
}

/// An event's `_id`: 32 hex characters (Mandrill's shape, so receivers' fixed-width columns
/// hold it) of the SHA-256 of a stable key naming the fact, never the address in clear. The
/// same fact announced again gets the same `_id`, so customers can de-duplicate.
pub fn opaque_id(stable_key: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, stable_key.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `_id` of a provider event: stable for the same provider event, so a re-delivered batch
/// carries the same ids.
pub fn event_id(message_id: &str, provider: &str, provider_event_id: &str) -> String {
    opaque_id(&format!("{message_id}:{provider}:{provider_event_id}"))
}

/// One Mandrill message event for a normalised provider event about message `message_id`.
pub fn from_delivery(message_id: &str, event: &DeliveryEvent, ctx: &MessageContext) -> Value {
    let kind = MandrillEvent::from(event.kind);
    let ts = event.at.div_euclid(1000);
    let mut msg = json!({
        "_id": message_id,
        "ts": ctx.sent_at.map_or(ts, |t| t.div_euclid(1000)),
        "state": msg_state(kind),
        "email": event.recipient,
        "subject": ctx.subject,
        "sender": ctx.sender,
        "tags": ctx.tags,
        "metadata": ctx.metadata,
        "opens": [],
        "clicks": [],
    });
    if let Some(diag) = &event.diagnostic {
        msg["diag"] = diag.clone().into();
    }
    match kind {
        MandrillEvent::Open => msg["opens"] = json!([{"ts": ts}]),
        MandrillEvent::Click => msg["clicks"] = json!([{"ts": ts, "url": event.url}]),
        _ => {}
    }
    let mut out = json!({
        "event": kind.as_str(),
        "ts": ts,
        "_id": event_id(message_id, &event.provider, &event.provider_event_id),
        "msg": msg,
    });
    if let (MandrillEvent::Click, Some(url)) = (kind, &event.url) {
        out["url"] = url.clone().into();
    }
    out
}

/// The Mandrill events an outcome announces, one per recipient (ARCHITECTURE §2.5):
/// - `reject` for a recipient we refused (`REJECTED`: invalid message; `SUPPRESSED`: on the
///   suppression list) or the provider refused permanently (`FAILED`);
/// - `deferral` for each deferral (with the reason as `msg.smtp_events[0].diag`);
/// - `send` when the message was sent *and* `announce_send` is true: the gateway that sent it
///   reports no delivery events (Gmail API, SMTP relay, capture, simulated), so acceptance is
///   the best fact there is. For the others the provider's delivery event makes the `send`.
///
/// Event ids ([`opaque_id`]) are stable per fact: one `send` and at most one `reject` per
/// recipient whatever outcome repeats them, and one `deferral` per deferral (keyed by its time).
pub fn from_outcome(event: &OutcomeEvent, announce_send: bool) -> Vec<Value> {
    let ts = event.at.div_euclid(1000);
    event
        .recipients
        .iter()
        .filter_map(|r| {
            let kind = match (event.outcome, r.status) {
                (
                    _,
                    RecipientStatus::Rejected
                    | RecipientStatus::Suppressed
                    | RecipientStatus::Failed,
                ) => MandrillEvent::Reject,
                (Outcome::Deferred, _) => MandrillEvent::Deferral,
                (Outcome::Sent, RecipientStatus::Sent) if announce_send => MandrillEvent::Send,
                _ => return None,
            };
            let mut msg = json!({
                "_id": event.message_id,
                "ts": ts,
                "state": msg_state(kind),
                "email": r.address,
                "subject": event.subject,
                "sender": event.sender,
                "tags": event.tags,
                "metadata": event.metadata,
                "opens": [],
                "clicks": [],
            });
            if let Some(reason) = &event.reason {
                match kind {
                    MandrillEvent::Deferral => {
                        msg["smtp_events"] =
                            json!([{"ts": ts, "type": "deferred", "diag": reason}]);
                    }
                    MandrillEvent::Reject => {
                        let why = if r.status == RecipientStatus::Suppressed {
                            "address is on the suppression list"
                        } else {
                            reason.as_str()
                        };
                        msg["diag"] = why.into();
                    }
                    _ => {}
                }
            }
            Some(json!({
                "event": kind.as_str(),
                "ts": ts,
                "_id": opaque_id(&match kind {
                    // One fact per recipient, whichever outcome carries it again (a suppressed
                    // recipient is reported with every deferral of its message).
                    MandrillEvent::Reject | MandrillEvent::Send => format!(
                        "{}:{}:{}",
                        event.message_id,
                        kind.as_str(),
                        r.address.to_lowercase()
                    ),
                    // Each deferral is its own fact.
                    _ => format!(
                        "{}:{}:{}:{}",
                        event.message_id,
                        outcome_name(event.outcome),
                        r.address.to_lowercase(),
                        event.at
                    ),
                }),
                "msg": msg,
            }))
        })
        .collect()
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Sent => "sent",
        Outcome::Deferred => "deferred",
        Outcome::Failed => "failed",
        Outcome::Rejected => "rejected",
    }
}

/// The `X-Mandrill-Signature` of a POST of `mandrill_events` (the JSON text, decoded) to `url`
/// (exactly as configured) with webhook key `key`: base64 of HMAC-SHA1 over
/// `url + "mandrill_events" + mandrill_events` (providers.md §5.2). SHA-1 is Mandrill's choice,
/// kept for compatibility with the receivers customers already run.
pub fn signature(key: &[u8], url: &str, mandrill_events: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(url.as_bytes());
    ctx.update(b"mandrill_events");
    ctx.update(mandrill_events.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.sign().as_ref())
}

/// Constant-time check of a received `X-Mandrill-Signature` (for customers' receivers and our
/// tests).
pub fn verify(key: &[u8], url: &str, mandrill_events: &str, signature_b64: &str) -> bool {
    let Ok(received) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim())
    else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut message = Vec::with_capacity(url.len() + 15 + mandrill_events.len());
    message.extend_from_slice(url.as_bytes());
    message.extend_from_slice(b"mandrill_events");
    message.extend_from_slice(mandrill_events.as_bytes());
    hmac::verify(&key, &message, &received).is_ok()
}

/// The `application/x-www-form-urlencoded` body carrying `mandrill_events`.
pub fn form_body(mandrill_events: &str) -> String {
    let mut out = String::with_capacity(mandrill_events.len() * 3 / 2 + 16);
    out.push_str("mandrill_events=");
    for b in mandrill_events.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::{Normalized, mailgun};

    /// The original system's scenario: a Mailgun `delivered` event for `test@example.com`
    /// carrying `user-variables.message_id = "test-message-123"` becomes a Mandrill `send` event
    /// with `msg.email = test@example.com` and `msg._id = "test-message-123"`.
    #[test]
    fn mailgun_delivered_becomes_a_mandrill_send_event() {
        let body = serde_json::json!({
            "signature": {"token": "tok", "timestamp": "1521243339", "signature": "00"},
            "event-data": {
                "event": "delivered", "id": "evt-1", "timestamp": 1521243339.5,
                "recipient": "test@example.com",
                "user-variables": {"message_id": "test-message-123"}
            }
        });
        let Normalized::Event(event) = mailgun::normalize(body.to_string().as_bytes()).unwrap()
        else {
            panic!("delivered is a delivery event");
        };
        let ctx = MessageContext {
            subject: "Your appointment".into(),
            sender: "clinic@example.com".into(),
            ..MessageContext::default()
        };
        let out = from_delivery(event.message_id.as_deref().unwrap(), &event, &ctx);
        assert_eq!(out["event"], "send");
        assert_eq!(out["msg"]["email"], "test@example.com");
        assert_eq!(out["msg"]["_id"], "test-message-123");
        assert_eq!(out["msg"]["state"], "sent");
        assert_eq!(out["ts"], 1_521_243_339);
        assert_eq!(out["_id"], event_id("test-message-123", "mailgun", "evt-1"));
        let id = out["_id"].as_str().unwrap_or_default();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }

    #[test]
    fn every_delivery_kind_has_its_mandrill_event_and_state() {
        let table = [
            (DeliveryKind::Delivered, "send", "sent"),
            (DeliveryKind::Deferred, "deferral", "deferred"),
            (DeliveryKind::HardBounce, "hard_bounce", "bounced"),
            (DeliveryKind::SoftBounce, "soft_bounce", "soft-bounced"),
            (DeliveryKind::Rejected, "reject", "rejected"),
            (DeliveryKind::Opened, "open", "sent"),
            (DeliveryKind::Clicked, "click", "sent"),
            (DeliveryKind::Complained, "spam", "sent"),
            (DeliveryKind::Unsubscribed, "unsub", "sent"),
        ];
        for (kind, name, state) in table {
            let e = MandrillEvent::from(kind);
            assert_eq!((e.as_str(), msg_state(e)), (name, state), "{kind:?}");
        }
    }

    #[test]
    fn events_of_one_message_get_distinct_ids_and_a_click_carries_its_url() {
        let base = DeliveryEvent {
            provider: "mailgun".into(),
            provider_event_id: "a".into(),
            message_id: Some("m1".into()),
            recipient: "x@example.org".into(),
            kind: DeliveryKind::Clicked,
            at: 2_000,
            diagnostic: None,
            url: Some("https://example.org/l".into()),
            stream: None,
        };
        let other = DeliveryEvent {
            provider_event_id: "b".into(),
            ..base.clone()
        };
        let ctx = MessageContext::default();
        let (one, two) = (
            from_delivery("m1", &base, &ctx),
            from_delivery("m1", &other, &ctx),
        );
        assert_ne!(one["_id"], two["_id"]);
        assert_eq!(one["msg"]["_id"], two["msg"]["_id"]);
        assert_eq!(one["url"], "https://example.org/l");
        assert_eq!(one["msg"]["clicks"][0]["url"], "https://example.org/l");
    }

    const VECTOR_EVENTS: &str = r#"[{"event":"send","msg":{"ts":1461095211,"subject":"Webhook Test","email":"recipient@example.com","sender":"sender@example.com","tags":["tag1"],"metadata":{"custom1":"value1"},"_id":"abcdef012345789abcdef012345789"},"_id":"abcdef012345789abcdef012345789","ts":1461095246}]"#;

    #[test]
    fn the_signature_matches_the_derived_vector() {
        let url = "https://hooks.example.com/mandrill/webhook";
        let sig = signature(b"TEST_WEBHOOK_KEY", url, VECTOR_EVENTS);
        assert_eq!(sig, "Qm848pYPHZGa89hWqNdp6VSiN+4=");
        assert!(verify(b"TEST_WEBHOOK_KEY", url, VECTOR_EVENTS, &sig));
        // Any change to the key, the URL (even a trailing slash) or the body breaks it.
        assert!(!verify(b"OTHER_KEY", url, VECTOR_EVENTS, &sig));
        assert!(!verify(
            b"TEST_WEBHOOK_KEY",
            &format!("{url}/"),
            VECTOR_EVENTS,
            &sig
        ));
        assert!(!verify(
            b"TEST_WEBHOOK_KEY",
            url,
            &VECTOR_EVENTS.replace("tag1", "tag2"),
            &sig
        ));
        assert!(!verify(
            b"TEST_WEBHOOK_KEY",
            url,
            VECTOR_EVENTS,
            "not base64!"
        ));
    }

    #[test]
    fn the_form_body_decodes_to_the_signed_text() {
        let body = form_body(VECTOR_EVENTS);
        assert!(body.starts_with("mandrill_events=%5B%7B%22event%22"));
        let decoded: Vec<(String, String)> = url_decode_pairs(&body);
        assert_eq!(
            decoded,
            [("mandrill_events".to_owned(), VECTOR_EVENTS.to_owned())]
        );
    }

    fn url_decode_pairs(body: &str) -> Vec<(String, String)> {
        body.split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let mut bytes = Vec::new();
                let raw = v.as_bytes();
                let mut i = 0;
                while i < raw.len() {
                    match raw[i] {
                        b'+' => bytes.push(b' '),
                        b'%' => {
                            let hex = std::str::from_utf8(&raw[i + 1..i + 3]).unwrap_or("00");
                            bytes.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                            i += 2;
                        }
                        b => bytes.push(b),
                    }
                    i += 1;
                }
                (k.to_owned(), String::from_utf8(bytes).unwrap_or_default())
            })
            .collect()
    }

    fn outcome_event(outcome: Outcome, statuses: &[(&str, RecipientStatus)]) -> OutcomeEvent {
        OutcomeEvent {
            message_id: "m-1".into(),
            sender: "dr@clinic.example".into(),
            subject: "Your appointment".into(),
            campaign_id: None,
            user_id: None,
            tags: vec!["t".into()],
            metadata: BTreeMap::new(),
            recipients: statuses
                .iter()
                .map(|(a, s)| crate::events::RecipientOutcome {
                    address: (*a).into(),
                    kind: crate::events::RecipientKind::To,
                    status: *s,
                })
                .collect(),
            outcome,
            gateway_id: Some("gw".into()),
            gateway_type: Some("smtp".into()),
            provider_message_id: None,
            attempts: Vec::new(),
            reason: Some("why".into()),
            retry_at: None,
            at: 1_795_860_000_123,
        }
    }

    #[test]
    fn outcomes_announce_one_event_per_recipient() {
        let sent = outcome_event(
            Outcome::Sent,
            &[
                ("a@x.org", RecipientStatus::Sent),
                ("b@x.org", RecipientStatus::Suppressed),
            ],
        );
        let events = from_outcome(&sent, true);
        let names: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(names, ["send", "reject"]);
        assert_eq!(events[0]["_id"], opaque_id("m-1:send:a@x.org"));
        assert_ne!(events[0]["_id"], events[1]["_id"]);
        assert!(
            !events[1]["_id"].to_string().contains("x.org"),
            "no address in clear"
        );
        assert_eq!(
            events[1]["msg"]["diag"],
            "address is on the suppression list"
        );
        assert_eq!(events[0]["ts"], 1_795_860_000);
        // A provider with delivery events announces `send` itself.
        let names: Vec<Value> = from_outcome(&sent, false)
            .iter()
            .map(|e| e["event"].clone())
            .collect();
        assert_eq!(names, [json!("reject")]);
        let deferred = outcome_event(Outcome::Deferred, &[("a@x.org", RecipientStatus::Deferred)]);
        let events = from_outcome(&deferred, true);
        assert_eq!(events[0]["event"], "deferral");
        assert_eq!(events[0]["msg"]["smtp_events"][0]["diag"], "why");
        let failed = outcome_event(Outcome::Failed, &[("a@x.org", RecipientStatus::Failed)]);
        assert_eq!(from_outcome(&failed, true)[0]["event"], "reject");
    }

    #[test]
    fn a_suppressed_recipient_is_rejected_once_however_often_its_message_is_deferred() {
        let statuses = [
            ("a@x.org", RecipientStatus::Deferred),
            ("gone@x.org", RecipientStatus::Suppressed),
        ];
        let mut first = outcome_event(Outcome::Deferred, &statuses);
        let one = from_outcome(&first, true);
        first.at += 60_000;
        let two = from_outcome(&first, true);
        let sent = outcome_event(
            Outcome::Sent,
            &[
                ("a@x.org", RecipientStatus::Sent),
                ("gone@x.org", RecipientStatus::Suppressed),
            ],
        );
        let three = from_outcome(&sent, true);
        assert_eq!(one[1]["event"], "reject");
        assert_eq!(one[1]["_id"], two[1]["_id"]);
        assert_eq!(one[1]["_id"], three[1]["_id"]);
        assert_ne!(
            one[0]["_id"], two[0]["_id"],
            "each deferral is its own event"
        );
    }
}
