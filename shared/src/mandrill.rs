//! Customer-facing events in Mandrill's webhook format (DESIGN §2.5, providers.md §5–6).
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

use serde_json::{Value, json};

use crate::clock::EpochMillis;
use crate::events::{DeliveryEvent, DeliveryKind};

/// Mandrill's event names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MandrillEvent {
    /// `send`
    Send,
    /// `deferral`
    Deferral,
    /// `hard_bounce`
    HardBounce,
    /// `soft_bounce`
    SoftBounce,
    /// `open`
    Open,
    /// `click`
    Click,
    /// `spam`
    Spam,
    /// `unsub`
    Unsub,
    /// `reject`
    Reject,
}

impl MandrillEvent {
    /// The event name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Deferral => "deferral",
            Self::HardBounce => "hard_bounce",
            Self::SoftBounce => "soft_bounce",
            Self::Open => "open",
            Self::Click => "click",
            Self::Spam => "spam",
            Self::Unsub => "unsub",
            Self::Reject => "reject",
        }
    }

    /// `msg.state` for this event.
    pub fn state(self) -> &'static str {
        match self {
            Self::Send | Self::Open | Self::Click | Self::Spam | Self::Unsub => "sent",
            Self::Deferral => "deferred",
            Self::HardBounce => "bounced",
            Self::SoftBounce => "soft-bounced",
            Self::Reject => "rejected",
        }
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

/// The unique event id: stable for the same provider event, so a re-delivered batch carries the
/// same ids and customers can de-duplicate.
pub fn event_id(message_id: &str, provider: &str, provider_event_id: &str) -> String {
    format!("{message_id}:{provider}:{provider_event_id}")
}

/// One Mandrill message event for a normalised provider event about message `message_id`.
pub fn from_delivery(message_id: &str, event: &DeliveryEvent, ctx: &MessageContext) -> Value {
    let kind = MandrillEvent::from(event.kind);
    let ts = event.at.div_euclid(1000);
    let mut msg = json!({
        "_id": message_id,
        "ts": ctx.sent_at.map_or(ts, |t| t.div_euclid(1000)),
        "state": kind.state(),
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
        assert_eq!(out["_id"], "test-message-123:mailgun:evt-1");
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
            assert_eq!((e.as_str(), e.state()), (name, state), "{kind:?}");
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
}
