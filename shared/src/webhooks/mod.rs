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
//! [`DeliveryEvent`]: crate::events::DeliveryEvent
//! [`DeliveryKind`]: crate::events::DeliveryKind

pub mod edge;
pub mod mailgun;
pub mod sendgrid;
pub mod ses;
pub mod sns;
pub mod verify;

use crate::events::DeliveryEvent;

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
