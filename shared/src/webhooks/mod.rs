//! Provider webhooks: authentication, normalisation and the HTTP edge that does both.
//!
//! - [`verify`] checks signatures on the raw bytes and [`mailgun`], [`sendgrid`] and [`ses`]
//!   normalise a provider's event payload into [`DeliveryEvent`]s: pure functions, over bodies
//!   whose signature has **already been verified** (verification happens first, before
//!   anything is parsed).
//! - [`sns`] verifies SNS messages (SES notifications), fetching and caching the signing
//!   certificates; [`edge`] is the service the webhooks function and `gateway serve` run: it
//!   authenticates a request, keeps the replay cache (Mailgun tokens, SendGrid event ids) in the
//!   state store and puts the events on the events queue.
//!
//! Each provider module maps its own event vocabulary onto [`DeliveryKind`] following the mapping of
//! providers.md §6; events that say nothing about delivery (Mailgun `accepted`, `stored`, list
//! events, unknown future types) are [`Normalized::Ignored`] so the edge can acknowledge them
//! instead of making the provider retry for hours.
//!
//! Each provider module also reads the body whole (`read`, a [`Reading`]): its normalised
//! events and the [`Acceptance`]s it carries, the proof that the provider had one of our
//! messages, which the edge records for the sender ([`crate::evidence`]). The acceptance
//! events (Mailgun `accepted`, SendGrid `processed`, SES `Send`) are still
//! [`Normalized::Ignored`]: they give the evidence and nothing else. `normalize` is `read`
//! without the evidence.
//!
//! [`DeliveryEvent`]: crate::events::DeliveryEvent
//! [`DeliveryKind`]: crate::events::DeliveryKind

pub mod edge;
pub mod mailgun;
pub mod sendgrid;
pub mod ses;
pub mod sns;
pub mod verify;

use crate::clock::EpochMillis;
use crate::events::{DeliveryEvent, DeliveryKind};

/// The result of normalising one provider event.
#[derive(Debug, Clone, PartialEq)]
pub enum Normalized {
    /// A delivery event to put on the events queue.
    Event(DeliveryEvent),
    /// A well-formed event with no delivery meaning; acknowledge it and drop it.
    Ignored {
        /// The provider's event name, for the log line.
        event: String,
    },
}

/// A provider event proving that the provider had one of our messages: an acceptance event, or
/// a delivery outcome that can only follow one (see [`crate::evidence`] for what counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    /// Our message id, exactly as we sent it (an event whose id is missing, not of the id
    /// syntax, or only known in a lossy form gives no acceptance).
    pub message_id: String,
    /// The provider's id of the message, in the form its send API returns it; at most
    /// [`MAX_PROVIDER_MESSAGE_ID`] bytes (a longer one is left out).
    pub provider_message_id: Option<String>,
    /// The provider's event name (`accepted`, `processed`, `Send`, `delivered`, `failed`, …).
    pub event: String,
    /// When the provider says it happened (epoch ms).
    pub at: EpochMillis,
}

/// The longest provider message id an [`Acceptance`] carries, in bytes: far above what the
/// providers send (under 100), and low enough to keep evidence items under 1 KB.
pub const MAX_PROVIDER_MESSAGE_ID: usize = 255;

/// Everything the gateway takes from one webhook body: the normalised events, for the events
/// queue, and the acceptance evidence, for the sender (at most one per message id, the
/// earliest).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reading {
    /// The events, in the body's order, as `normalize` returns them.
    pub events: Vec<Normalized>,
    /// The acceptances, one per message id, in order of first appearance.
    pub evidence: Vec<Acceptance>,
}

/// True for the delivery outcomes that prove the provider had the message (delivered,
/// deferred, bounced, rejected or dropped by the provider, complained); opens, clicks and
/// unsubscribes always follow one of these and are not worth a write.
fn proves_acceptance(kind: DeliveryKind) -> bool {
    match kind {
        DeliveryKind::Delivered
        | DeliveryKind::Deferred
        | DeliveryKind::HardBounce
        | DeliveryKind::SoftBounce
        | DeliveryKind::Rejected
        | DeliveryKind::Complained => true,
        DeliveryKind::Opened | DeliveryKind::Clicked | DeliveryKind::Unsubscribed => false,
    }
}

/// An acceptance of `message_id`, when it can be one of our ids (1–128 characters of
/// `[A-Za-z0-9._:@-]`, the message contract's idempotency key): anything else in a provider's
/// field is not ours, and must not become a store key.
fn acceptance(
    message_id: Option<&str>,
    provider_message_id: Option<String>,
    event: &str,
    at: EpochMillis,
) -> Option<Acceptance> {
    let message_id = message_id?;
    let ours = (1..=crate::message::MAX_ID_LEN).contains(&message_id.len())
        && message_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b));
    ours.then(|| Acceptance {
        message_id: message_id.to_owned(),
        provider_message_id: provider_message_id
            .filter(|id| !id.is_empty() && id.len() <= MAX_PROVIDER_MESSAGE_ID),
        event: event.to_owned(),
        at,
    })
}

/// A payload that cannot be normalised (answered 400; nothing is enqueued).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or not the provider's envelope.
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    /// A field the event cannot do without is missing or of the wrong type.
    #[error("{field}: missing or malformed")]
    Field {
        /// Path of the field in the provider's payload.
        field: &'static str,
    },
}
