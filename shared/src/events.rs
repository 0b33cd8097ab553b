//! The events contract: what the sender, webhooks and health-check functions put on the events
//! queue, and the [`EventSink`] port they put it through.
//!
//! The sender never talks to MySQL (ARCHITECTURE §1): it emits [`GatewayEvent`]s and the recorder
//! applies them ([`crate::records::RecordWriter`]). The JSON form is a wire contract between
//! functions deployed at different times, so it is versioned and pinned by tests:
//!
//! ```json
//! {"v": 1, "type": "outcome", "message_id": "…", …}
//! ```
//!
//! - `v` is the contract version, currently [`EVENT_VERSION`]. A consumer refuses any other
//!   version instead of guessing ([`UnsupportedVersion`]).
//! - `type` is one of `outcome`, `delivery`, `health`, `breaker`; the variant's fields sit
//!   beside it.
//! - Unknown fields are ignored, so adding an optional field is not a new version; removing or
//!   changing one is.
//! - Times are epoch milliseconds (`at`, `retry_at`); latency is milliseconds.
//!
//! Events carry full recipient addresses because the record of delivery needs them; they are
//! data, not logs, and must not be logged whole.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::breaker::{Phase, Transition, TransitionReason};
use crate::clock::EpochMillis;

/// The version of the event contract this crate writes and reads.
pub const EVENT_VERSION: u32 = 1;

/// One event on the events queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "Envelope", try_from = "Envelope")]
pub enum GatewayEvent {
    /// What happened to one outbound message in one invocation.
    Outcome(OutcomeEvent),
    /// A normalised provider webhook event.
    Delivery(DeliveryEvent),
    /// A gateway health-check result.
    Health(HealthEvent),
    /// A breaker transition.
    Breaker(BreakerEvent),
    /// The effective configuration, for `gateway_config_audit` and `gateway_routing_rules`.
    Config(crate::config_audit::ConfigEvent),
}

/// The wire form: the version beside the internally tagged body.
#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u32,
    #[serde(flatten)]
    body: Body,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Body {
    Outcome(OutcomeEvent),
    Delivery(DeliveryEvent),
    Health(HealthEvent),
    Breaker(BreakerEvent),
    Config(crate::config_audit::ConfigEvent),
}

impl From<GatewayEvent> for Envelope {
    fn from(event: GatewayEvent) -> Self {
        let body = match event {
            GatewayEvent::Outcome(e) => Body::Outcome(e),
            GatewayEvent::Delivery(e) => Body::Delivery(e),
            GatewayEvent::Health(e) => Body::Health(e),
            GatewayEvent::Breaker(e) => Body::Breaker(e),
            GatewayEvent::Config(e) => Body::Config(e),
        };
        Self {
            v: EVENT_VERSION,
            body,
        }
    }
}

impl TryFrom<Envelope> for GatewayEvent {
    type Error = UnsupportedVersion;

    fn try_from(envelope: Envelope) -> Result<Self, Self::Error> {
        if envelope.v != EVENT_VERSION {
            return Err(UnsupportedVersion { v: envelope.v });
        }
        Ok(match envelope.body {
            Body::Outcome(e) => Self::Outcome(e),
            Body::Delivery(e) => Self::Delivery(e),
            Body::Health(e) => Self::Health(e),
            Body::Breaker(e) => Self::Breaker(e),
            Body::Config(e) => Self::Config(e),
        })
    }
}

/// An event written in a contract version this build does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported event version {v} (this build reads version {EVENT_VERSION})")]
pub struct UnsupportedVersion {
    /// The version found.
    pub v: u32,
}

impl GatewayEvent {
    /// The message this event is about, if any.
    pub fn message_id(&self) -> Option<&str> {
        match self {
            Self::Outcome(e) => Some(&e.message_id),
            Self::Delivery(e) => e.message_id.as_deref(),
            Self::Health(_) | Self::Breaker(_) | Self::Config(_) => None,
        }
    }
}

/// What happened to a message in one invocation (`outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A provider accepted it.
    Sent,
    /// Not sent now; the message will be retried at `retry_at`.
    Deferred,
    /// A provider refused it permanently, or every retry is exhausted.
    Failed,
    /// Refused before any provider saw it (invalid, poison, all recipients suppressed).
    Rejected,
}

pub use crate::message::RecipientKind;

pub use crate::outcome::OutcomeClass;

/// One recipient's status after this outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientOutcome {
    /// The address (`addr-spec`, as given in the message).
    pub address: String,
    /// To, Cc or Bcc.
    pub kind: RecipientKind,
    /// Status after this outcome (usually `SENT`, `DEFERRED`, `FAILED`, `REJECTED` or
    /// `SUPPRESSED`).
    pub status: RecipientStatus,
}

/// One provider call (`send_attempts` row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Gateway id.
    pub gateway: String,
    /// Gateway type (`GatewayKind::as_str`).
    pub gateway_type: String,
    /// Result class.
    pub class: OutcomeClass,
    /// HTTP status, when the provider answered over HTTP.
    pub http_status: Option<u16>,
    /// Call duration in milliseconds.
    pub latency_ms: u64,
    /// A short, secret-free description of the error, if any.
    pub error: Option<String>,
    /// When the call started (epoch ms). With `gateway`, identifies the attempt for
    /// idempotent recording.
    pub at: EpochMillis,
}

/// What happened to one message in one invocation (`type: "outcome"`); one per message per
/// invocation, re-emitted unchanged when a redelivered message is found already sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeEvent {
    /// Message id (the idempotency key).
    pub message_id: String,
    /// Sender address.
    pub sender: String,
    /// Subject.
    pub subject: String,
    /// Campaign id, if given.
    #[serde(default)]
    pub campaign_id: Option<String>,
    /// User id, if given.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata as given in the message.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Every recipient with its status after this outcome.
    pub recipients: Vec<RecipientOutcome>,
    /// The message's outcome.
    pub outcome: Outcome,
    /// The gateway that sent it (or last tried), if any.
    #[serde(default)]
    pub gateway_id: Option<String>,
    /// That gateway's type.
    #[serde(default)]
    pub gateway_type: Option<String>,
    /// The provider's id for the accepted message.
    #[serde(default)]
    pub provider_message_id: Option<String>,
    /// Provider calls made in this invocation, in order.
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
    /// Why it was deferred, failed or rejected (secret-free).
    #[serde(default)]
    pub reason: Option<String>,
    /// When a deferred message will be retried (epoch ms).
    #[serde(default)]
    pub retry_at: Option<EpochMillis>,
    /// When the outcome was decided (epoch ms).
    pub at: EpochMillis,
}

impl OutcomeEvent {
    /// The event of `message` with `outcome` at `at`, every recipient at `status`; no gateway,
    /// attempts, reason or retry time yet.
    pub fn of_message(
        message: &crate::message::OutboundMessage,
        outcome: Outcome,
        status: RecipientStatus,
        at: EpochMillis,
    ) -> Self {
        Self {
            message_id: message.id().to_owned(),
            sender: message.sender().as_str().to_owned(),
            subject: message.subject().to_owned(),
            campaign_id: message.campaign_id().map(str::to_owned),
            user_id: message.user_id().map(str::to_owned),
            tags: message.tags().to_vec(),
            metadata: message
                .metadata()
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v)))
                .collect(),
            recipients: message
                .recipients()
                .map(|(kind, mailbox)| RecipientOutcome {
                    address: mailbox.address().as_str().to_owned(),
                    kind,
                    status,
                })
                .collect(),
            outcome,
            gateway_id: None,
            gateway_type: None,
            provider_message_id: None,
            attempts: Vec::new(),
            reason: None,
            retry_at: None,
            at,
        }
    }

    /// This event without the parts a client chose the size of (metadata, tags) and with the
    /// subject cut to 200 characters, saying so in `reason`: what the sender emits when the
    /// event as built is too large for the events queue, so the outcome is still recorded.
    pub fn trimmed(&self) -> Self {
        const NOTE: &str = "event trimmed to fit the events queue: metadata and tags left out";
        let mut event = self.clone();
        event.metadata.clear();
        event.tags.clear();
        if let Some((cut, _)) = event.subject.char_indices().nth(200) {
            event.subject.truncate(cut);
        }
        event.reason = Some(match &self.reason {
            Some(reason) => format!("{NOTE}; {}", reason.chars().take(1000).collect::<String>()),
            None => NOTE.to_owned(),
        });
        event
    }
}

/// A provider webhook event kind, normalised across providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    /// The receiving server accepted it.
    Delivered,
    /// Delivery is delayed; the provider keeps trying.
    Deferred,
    /// Permanent delivery failure.
    HardBounce,
    /// Temporary delivery failure reported as a bounce.
    SoftBounce,
    /// The provider refused or dropped it before delivery.
    Rejected,
    /// Opened (tracking pixel).
    Opened,
    /// A tracked link was clicked.
    Clicked,
    /// Marked as spam.
    Complained,
    /// Unsubscribed.
    Unsubscribed,
}

impl DeliveryKind {
    /// True when the recipient must be added to the suppression list (ARCHITECTURE §3.6): a hard
    /// bounce, a complaint or an unsubscribe. A soft bounce, deferral or rejection is about
    /// one message, not the address.
    pub fn suppresses(self) -> bool {
        matches!(
            self,
            Self::HardBounce | Self::Complained | Self::Unsubscribed
        )
    }

    /// The recipient status this event implies (an open or click implies delivery).
    pub fn status(self) -> RecipientStatus {
        match self {
            Self::Delivered | Self::Opened | Self::Clicked => RecipientStatus::Delivered,
            Self::Deferred => RecipientStatus::Deferred,
            Self::HardBounce => RecipientStatus::Bounced,
            Self::SoftBounce => RecipientStatus::SoftBounced,
            Self::Rejected => RecipientStatus::Rejected,
            Self::Complained => RecipientStatus::Complained,
            Self::Unsubscribed => RecipientStatus::Unsubscribed,
        }
    }
}

/// A normalised provider webhook event (`type: "delivery"`); unique on
/// (`provider`, `provider_event_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryEvent {
    /// Provider name (`mailgun`, `sendgrid`, `amazon_ses`, …).
    pub provider: String,
    /// The provider's unique id of this event.
    pub provider_event_id: String,
    /// Our message id, when the provider echoed it back (absent for some events).
    #[serde(default)]
    pub message_id: Option<String>,
    /// The recipient address concerned.
    pub recipient: String,
    /// What happened.
    pub kind: DeliveryKind,
    /// When it happened, as the provider reports it (epoch ms).
    pub at: EpochMillis,
    /// The provider's diagnostic (bounce reason, SMTP reply), if any.
    #[serde(default)]
    pub diagnostic: Option<String>,
    /// The clicked URL (`clicked` only).
    #[serde(default)]
    pub url: Option<String>,
    /// The stream of the message the event is about, when the provider echoed it back (our
    /// `stream` variable, sent beside the message id); `None` for messages sent before streams
    /// existed and events that carry no variables. Decides how far a complaint or unsubscribe
    /// suppresses (ARCHITECTURE §3.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<crate::message::Stream>,
}

/// A gateway's health as judged by the health checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    /// Probes pass.
    Healthy,
    /// Probes pass slowly or intermittently.
    Degraded,
    /// `failure_threshold` consecutive probes failed.
    Unhealthy,
    /// The gateway or its health check is disabled.
    Disabled,
}

/// A health-check result (`type: "health"`, `gateway_health_status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthEvent {
    /// Gateway id.
    pub gateway_id: String,
    /// Gateway type.
    pub gateway_type: String,
    /// Status after this probe.
    pub status: HealthStatus,
    /// Probe latency in milliseconds, when it got an answer.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Consecutive failed probes, this one included.
    pub consecutive_failures: u32,
    /// Consecutive good probes, this one included.
    pub consecutive_successes: u32,
    /// A short, secret-free description of the failure, if any.
    #[serde(default)]
    pub error: Option<String>,
    /// When the probe ran (epoch ms).
    pub at: EpochMillis,
}

/// A breaker transition (`type: "breaker"`), emitted by the one instance that performed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerEvent {
    /// Gateway id.
    pub gateway_id: String,
    /// Phase before.
    pub from: Phase,
    /// Phase after.
    pub to: Phase,
    /// Why.
    pub reason: TransitionReason,
    /// When (epoch ms).
    pub at: EpochMillis,
}

impl From<&Transition> for BreakerEvent {
    fn from(t: &Transition) -> Self {
        Self {
            gateway_id: t.gateway.clone(),
            from: t.from,
            to: t.to,
            reason: t.reason,
            at: t.at,
        }
    }
}

/// A recipient's delivery status (`message_recipients.delivery_status`), serialised exactly as
/// the column stores it.
///
/// # Precedence
/// Events arrive in any order (the outcome event and the provider's webhooks travel separately,
/// SQS reorders), so the stored status is the **highest** ever seen in this total order, lowest
/// first:
///
/// `PENDING < DEFERRED < FAILED < SENT < SOFT_BOUNCED < DELIVERED < REJECTED < SUPPRESSED <
/// BOUNCED < UNSUBSCRIBED < COMPLAINED`
///
/// Why: progress never goes back (a late `SENT` or `DEFERRED` never overwrites `DELIVERED`; a
/// soft bounce the provider later delivered is `DELIVERED`). Provider evidence outranks our own
/// verdicts: `FAILED` is what the gateway concluded, and a provider's later `SENT`/`DELIVERED`
/// for the same recipient (an ambiguous timeout whose request was in fact accepted) proves it
/// wrong — telling a customer "failed" for delivered mail invites a duplicate send. Every
/// definitive bad outcome from the provider or the recipient wins over `DELIVERED`, because a
/// delivery report can be followed by an asynchronous bounce and that bounce is what the sender
/// must act on. Among those, the more consequential for future sends wins: a hard bounce over a
/// refusal, and recipient actions (`UNSUBSCRIBED`, then `COMPLAINED`, the
/// strongest "never send again") over everything. [`merge`] is therefore commutative,
/// associative and idempotent: applying the same events in any order, any number of times,
/// gives the same status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RecipientStatus {
    /// Nothing known yet.
    Pending,
    /// Accepted by a provider.
    Sent,
    /// Delivered to the receiving server.
    Delivered,
    /// Not sent yet (we deferred it) or delivery delayed (the provider defers).
    Deferred,
    /// Permanently undeliverable.
    Bounced,
    /// Temporarily undeliverable.
    SoftBounced,
    /// Refused before delivery (by us or the provider).
    Rejected,
    /// Marked as spam.
    Complained,
    /// Unsubscribed.
    Unsubscribed,
    /// Not sent: the address is on the suppression list.
    Suppressed,
    /// Sending failed permanently.
    Failed,
}

impl RecipientStatus {
    /// Every status in precedence order, lowest first.
    pub const PRECEDENCE: [RecipientStatus; 11] = [
        Self::Pending,
        Self::Deferred,
        Self::Failed,
        Self::Sent,
        Self::SoftBounced,
        Self::Delivered,
        Self::Rejected,
        Self::Suppressed,
        Self::Bounced,
        Self::Unsubscribed,
        Self::Complained,
    ];

    /// The column value (`DELIVERED`, `SOFT_BOUNCED`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Sent => "SENT",
            Self::Delivered => "DELIVERED",
            Self::Deferred => "DEFERRED",
            Self::Bounced => "BOUNCED",
            Self::SoftBounced => "SOFT_BOUNCED",
            Self::Rejected => "REJECTED",
            Self::Complained => "COMPLAINED",
            Self::Unsubscribed => "UNSUBSCRIBED",
            Self::Suppressed => "SUPPRESSED",
            Self::Failed => "FAILED",
        }
    }

    /// Position in [`Self::PRECEDENCE`] (higher wins).
    pub fn rank(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Deferred => 1,
            Self::Failed => 2,
            Self::Sent => 3,
            Self::SoftBounced => 4,
            Self::Delivered => 5,
            Self::Rejected => 6,
            Self::Suppressed => 7,
            Self::Bounced => 8,
            Self::Unsubscribed => 9,
            Self::Complained => 10,
        }
    }
}

impl std::fmt::Display for RecipientStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status after `incoming` is seen by a recipient whose status is `current`: the higher of
/// the two in the documented precedence (see [`RecipientStatus`]).
pub fn merge(current: RecipientStatus, incoming: RecipientStatus) -> RecipientStatus {
    if incoming.rank() > current.rank() {
        incoming
    } else {
        current
    }
}

/// Why events could not be emitted.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The queue could not be reached or failed transiently; nothing may have been sent.
    #[error("event sink unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An event is larger than the queue accepts (bytes of its JSON).
    #[error("event of {bytes} bytes exceeds the sink's limit of {max} bytes")]
    TooLarge {
        /// Size of the event's JSON.
        bytes: usize,
        /// The sink's limit.
        max: usize,
    },
    /// An event could not be serialised.
    #[error("event could not be serialised")]
    Serialize(#[source] serde_json::Error),
}

impl SinkError {
    /// True when emitting again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// The port through which functions emit events to the recorder.
#[async_trait]
pub trait EventSink: Send + Sync + std::fmt::Debug {
    /// Emits the events. `Ok` means all were accepted; on error some may have been, which is
    /// harmless because recording is idempotent: emit them all again.
    async fn emit(&self, events: &[GatewayEvent]) -> Result<(), SinkError>;

    /// Emits the events, each on its own account: one result per event, in order, so an event
    /// that cannot be emitted (too large, or its request failed) never holds up the others.
    /// The default emits them together and, if that fails, one at a time.
    async fn emit_each(&self, events: &[GatewayEvent]) -> Vec<Result<(), SinkError>> {
        if events.len() > 1 && self.emit(events).await.is_ok() {
            return events.iter().map(|_| Ok(())).collect();
        }
        let mut results = Vec::with_capacity(events.len());
        for event in events {
            results.push(self.emit(std::slice::from_ref(event)).await);
        }
        results
    }
}

/// An [`EventSink`] that keeps every event in memory, in emission order (tests, local run).
#[derive(Debug, Default)]
pub struct MemoryEventSink {
    events: Mutex<Vec<GatewayEvent>>,
}

impl MemoryEventSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every event emitted so far.
    pub fn events(&self) -> Vec<GatewayEvent> {
        self.lock().clone()
    }

    /// Removes and returns every event emitted so far (what a recorder poll would receive).
    pub fn take(&self) -> Vec<GatewayEvent> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<GatewayEvent>> {
        // Pushing is the only mutation, so a poisoned lock still guards a whole vector.
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl EventSink for MemoryEventSink {
    async fn emit(&self, events: &[GatewayEvent]) -> Result<(), SinkError> {
        self.lock().extend_from_slice(events);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const AT: EpochMillis = 1_795_910_399_000;

    fn outcome() -> OutcomeEvent {
        OutcomeEvent {
            message_id: "inv-2026-11-28-000123".into(),
            sender: "ada@clinic.example".into(),
            subject: "Your appointment".into(),
            campaign_id: Some("flu-2026".into()),
            user_id: Some("u-42".into()),
            tags: vec!["appointment".into()],
            metadata: BTreeMap::from([("invitation_id".to_owned(), json!("123"))]),
            recipients: vec![
                RecipientOutcome {
                    address: "patient@example.org".into(),
                    kind: RecipientKind::To,
                    status: RecipientStatus::Sent,
                },
                RecipientOutcome {
                    address: "gone@example.org".into(),
                    kind: RecipientKind::Bcc,
                    status: RecipientStatus::Suppressed,
                },
            ],
            outcome: Outcome::Sent,
            gateway_id: Some("mailgun-primary".into()),
            gateway_type: Some("mailgun".into()),
            provider_message_id: Some("<20261128.1@mg.clinic.example>".into()),
            attempts: vec![
                AttemptRecord {
                    gateway: "sendgrid-main".into(),
                    gateway_type: "sendgrid".into(),
                    class: OutcomeClass::Throttled,
                    http_status: Some(429),
                    latency_ms: 87,
                    error: Some("rate limited".into()),
                    at: AT - 200,
                },
                AttemptRecord {
                    gateway: "mailgun-primary".into(),
                    gateway_type: "mailgun".into(),
                    class: OutcomeClass::Ok,
                    http_status: Some(200),
                    latency_ms: 112,
                    error: None,
                    at: AT - 100,
                },
            ],
            reason: None,
            retry_at: None,
            at: AT,
        }
    }

    fn delivery() -> DeliveryEvent {
        DeliveryEvent {
            provider: "mailgun".into(),
            provider_event_id: "ev-1".into(),
            message_id: Some("inv-2026-11-28-000123".into()),
            recipient: "patient@example.org".into(),
            kind: DeliveryKind::Clicked,
            at: AT + 1_000,
            diagnostic: None,
            url: Some("https://clinic.example/confirm".into()),
            stream: None,
        }
    }

    fn health() -> HealthEvent {
        HealthEvent {
            gateway_id: "ses-eu".into(),
            gateway_type: "amazon_ses".into(),
            status: HealthStatus::Unhealthy,
            latency_ms: None,
            consecutive_failures: 3,
            consecutive_successes: 0,
            error: Some("connect timeout".into()),
            at: AT,
        }
    }

    fn breaker() -> BreakerEvent {
        BreakerEvent {
            gateway_id: "mailgun-primary".into(),
            from: Phase::Closed,
            to: Phase::Open,
            reason: TransitionReason::FailureThreshold {
                failures: 10,
                successes: 2,
            },
            at: AT,
        }
    }

    /// The wire contract, pinned: a change here is a change for every deployed function.
    #[test]
    fn every_event_type_has_a_fixed_json_form_and_round_trips() {
        let cases = [
            (
                GatewayEvent::Outcome(outcome()),
                json!({
                    "v": 1, "type": "outcome",
                    "message_id": "inv-2026-11-28-000123",
                    "sender": "ada@clinic.example",
                    "subject": "Your appointment",
                    "campaign_id": "flu-2026", "user_id": "u-42",
                    "tags": ["appointment"],
                    "metadata": {"invitation_id": "123"},
                    "recipients": [
                        {"address": "patient@example.org", "kind": "to", "status": "SENT"},
                        {"address": "gone@example.org", "kind": "bcc", "status": "SUPPRESSED"}
                    ],
                    "outcome": "sent",
                    "gateway_id": "mailgun-primary", "gateway_type": "mailgun",
                    "provider_message_id": "<20261128.1@mg.clinic.example>",
                    "attempts": [
                        {"gateway": "sendgrid-main", "gateway_type": "sendgrid",
                         "class": "throttled", "http_status": 429, "latency_ms": 87,
                         "error": "rate limited", "at": AT - 200},
                        {"gateway": "mailgun-primary", "gateway_type": "mailgun",
                         "class": "ok", "http_status": 200, "latency_ms": 112,
                         "error": null, "at": AT - 100}
                    ],
                    "reason": null, "retry_at": null, "at": AT
                }),
            ),
            (
                GatewayEvent::Delivery(delivery()),
                json!({
                    "v": 1, "type": "delivery",
                    "provider": "mailgun", "provider_event_id": "ev-1",
                    "message_id": "inv-2026-11-28-000123",
                    "recipient": "patient@example.org",
                    "kind": "clicked", "at": AT + 1_000,
                    "diagnostic": null, "url": "https://clinic.example/confirm"
                }),
            ),
            (
                GatewayEvent::Health(health()),
                json!({
                    "v": 1, "type": "health",
                    "gateway_id": "ses-eu", "gateway_type": "amazon_ses",
                    "status": "UNHEALTHY", "latency_ms": null,
                    "consecutive_failures": 3, "consecutive_successes": 0,
                    "error": "connect timeout", "at": AT
                }),
            ),
            (
                GatewayEvent::Breaker(breaker()),
                json!({
                    "v": 1, "type": "breaker",
                    "gateway_id": "mailgun-primary", "from": "closed", "to": "open",
                    "reason": {"code": "failure_threshold", "failures": 10, "successes": 2},
                    "at": AT
                }),
            ),
        ];
        for (event, expected) in cases {
            let wire = serde_json::to_value(&event).unwrap();
            assert_eq!(wire, expected);
            let text = serde_json::to_string(&event).unwrap();
            let back: GatewayEvent = serde_json::from_str(&text).unwrap();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn optional_fields_may_be_omitted_and_unknown_fields_are_ignored() {
        let event: GatewayEvent = serde_json::from_value(json!({
            "v": 1, "type": "delivery", "provider": "sendgrid", "provider_event_id": "sg-9",
            "recipient": "a@example.org", "kind": "hard_bounce", "at": AT,
            "added_in_a_later_build": true
        }))
        .unwrap();
        let GatewayEvent::Delivery(d) = event else {
            panic!("not a delivery event");
        };
        assert_eq!((d.message_id, d.diagnostic, d.url), (None, None, None));
        assert_eq!(d.kind, DeliveryKind::HardBounce);
    }

    #[test]
    fn other_versions_and_unknown_types_are_refused() {
        let mut wire = serde_json::to_value(GatewayEvent::Health(health())).unwrap();
        wire["v"] = json!(2);
        let err = serde_json::from_value::<GatewayEvent>(wire.clone()).unwrap_err();
        assert!(
            err.to_string().contains("unsupported event version 2"),
            "{err}"
        );
        wire["v"] = json!(1);
        wire["type"] = json!("gossip");
        assert!(serde_json::from_value::<GatewayEvent>(wire.clone()).is_err());
        wire.as_object_mut().unwrap().remove("v");
        wire["type"] = json!("health");
        assert!(serde_json::from_value::<GatewayEvent>(wire).is_err());
    }

    #[test]
    fn statuses_serialise_exactly_as_the_column_stores_them() {
        let cases = [
            (RecipientStatus::Pending, "PENDING"),
            (RecipientStatus::Sent, "SENT"),
            (RecipientStatus::Delivered, "DELIVERED"),
            (RecipientStatus::Deferred, "DEFERRED"),
            (RecipientStatus::Bounced, "BOUNCED"),
            (RecipientStatus::SoftBounced, "SOFT_BOUNCED"),
            (RecipientStatus::Rejected, "REJECTED"),
            (RecipientStatus::Complained, "COMPLAINED"),
            (RecipientStatus::Unsubscribed, "UNSUBSCRIBED"),
            (RecipientStatus::Suppressed, "SUPPRESSED"),
            (RecipientStatus::Failed, "FAILED"),
        ];
        for (status, text) in cases {
            assert_eq!(serde_json::to_value(status).unwrap(), json!(text));
            assert_eq!(status.as_str(), text);
            assert_eq!(
                serde_json::from_value::<RecipientStatus>(json!(text)).unwrap(),
                status
            );
        }
    }

    #[test]
    fn merge_follows_the_precedence_table_for_every_pair() {
        use RecipientStatus::{
            Bounced as BO, Complained as CO, Deferred as DF, Delivered as DE, Failed as FA,
            Pending as PE, Rejected as RJ, Sent as SE, SoftBounced as SB, Suppressed as SU,
            Unsubscribed as UN,
        };
        let columns = [PE, SE, DE, DF, BO, SB, RJ, CO, UN, SU, FA];
        // Row: current status; column: incoming; cell: the stored result.
        #[rustfmt::skip]
        let table = [
            //     PE  SE  DE  DF  BO  SB  RJ  CO  UN  SU  FA   <- incoming
            (PE, [PE, SE, DE, DF, BO, SB, RJ, CO, UN, SU, FA]),
            (SE, [SE, SE, DE, SE, BO, SB, RJ, CO, UN, SU, SE]),
            (DE, [DE, DE, DE, DE, BO, DE, RJ, CO, UN, SU, DE]),
            (DF, [DF, SE, DE, DF, BO, SB, RJ, CO, UN, SU, FA]),
            (BO, [BO, BO, BO, BO, BO, BO, BO, CO, UN, BO, BO]),
            (SB, [SB, SB, DE, SB, BO, SB, RJ, CO, UN, SU, SB]),
            (RJ, [RJ, RJ, RJ, RJ, BO, RJ, RJ, CO, UN, SU, RJ]),
            (CO, [CO, CO, CO, CO, CO, CO, CO, CO, CO, CO, CO]),
            (UN, [UN, UN, UN, UN, UN, UN, UN, CO, UN, UN, UN]),
            (SU, [SU, SU, SU, SU, BO, SU, SU, CO, UN, SU, SU]),
            (FA, [FA, SE, DE, FA, BO, SB, RJ, CO, UN, SU, FA]),
        ];
        for (current, row) in table {
            for (incoming, expected) in columns.into_iter().zip(row) {
                assert_eq!(
                    merge(current, incoming),
                    expected,
                    "merge({current}, {incoming})"
                );
            }
        }
    }

    #[test]
    fn merge_is_order_independent() {
        let all = RecipientStatus::PRECEDENCE;
        for a in all {
            for b in all {
                assert_eq!(merge(a, b), merge(b, a), "{a} {b}");
                for c in all {
                    assert_eq!(merge(merge(a, b), c), merge(a, merge(b, c)), "{a} {b} {c}");
                }
            }
        }
    }

    #[test]
    fn precedence_list_matches_rank() {
        for (i, s) in RecipientStatus::PRECEDENCE.into_iter().enumerate() {
            assert_eq!(usize::from(s.rank()), i, "{s}");
        }
    }

    #[test]
    fn delivery_kinds_map_to_recipient_statuses_and_suppression() {
        let cases = [
            (DeliveryKind::Delivered, RecipientStatus::Delivered, false),
            (DeliveryKind::Deferred, RecipientStatus::Deferred, false),
            (DeliveryKind::HardBounce, RecipientStatus::Bounced, true),
            (
                DeliveryKind::SoftBounce,
                RecipientStatus::SoftBounced,
                false,
            ),
            (DeliveryKind::Rejected, RecipientStatus::Rejected, false),
            (DeliveryKind::Opened, RecipientStatus::Delivered, false),
            (DeliveryKind::Clicked, RecipientStatus::Delivered, false),
            (DeliveryKind::Complained, RecipientStatus::Complained, true),
            (
                DeliveryKind::Unsubscribed,
                RecipientStatus::Unsubscribed,
                true,
            ),
        ];
        for (kind, status, suppresses) in cases {
            assert_eq!(kind.status(), status, "{kind:?}");
            assert_eq!(kind.suppresses(), suppresses, "{kind:?}");
        }
    }

    #[test]
    fn a_breaker_event_carries_the_transition() {
        let t = Transition {
            gateway: "mailgun-primary".into(),
            from: Phase::Closed,
            to: Phase::Open,
            at: AT,
            reason: TransitionReason::FailureThreshold {
                failures: 10,
                successes: 2,
            },
        };
        assert_eq!(BreakerEvent::from(&t), breaker());
    }

    #[tokio::test]
    async fn memory_sink_keeps_events_in_emission_order() {
        let sink = MemoryEventSink::new();
        sink.emit(&[GatewayEvent::Health(health())]).await.unwrap();
        sink.emit(&[
            GatewayEvent::Breaker(breaker()),
            GatewayEvent::Delivery(delivery()),
        ])
        .await
        .unwrap();
        let expected = vec![
            GatewayEvent::Health(health()),
            GatewayEvent::Breaker(breaker()),
            GatewayEvent::Delivery(delivery()),
        ];
        assert_eq!(sink.events(), expected);
        assert_eq!(sink.take(), expected);
        assert!(sink.events().is_empty());
    }
}
