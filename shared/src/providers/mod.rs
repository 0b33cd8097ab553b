//! The provider port: one trait every gateway `type` implements, and the error classes the
//! pipeline decides on (ARCHITECTURE §3.2).
//!
//! Errors are classified at the edge, by each client, from status codes, headers and transport
//! failures, never by matching English text. The pipeline only ever looks at
//! [`SendError::class`] and [`SendError::retry_after`].

// The clients, behind the `providers` feature: the functions that only receive webhooks, record
// or report do not link the SES SDK, lettre or the JWT stack.
#[cfg(feature = "providers")]
pub mod capture;
#[cfg(feature = "providers")]
pub mod factory;
#[cfg(feature = "providers")]
pub mod gmail;
#[cfg(feature = "providers")]
pub mod http;
#[cfg(feature = "providers")]
pub mod mailgun;
#[cfg(feature = "providers")]
pub mod sendgrid;
#[cfg(feature = "providers")]
pub mod ses;
pub mod simulated;
#[cfg(feature = "providers")]
pub mod smtp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::EpochMillis;
use crate::message::OutboundMessage;
use crate::outcome::OutcomeClass;

/// One client per gateway id (the enabled gateways of a config; `factory::build_providers` with
/// the `providers` feature builds them).
pub type Providers = HashMap<String, Arc<dyn Provider>>;

/// At most this many recipients (To, Cc and Bcc together) per SES `SendEmail` call: the SES
/// client refuses a larger message as unsuitable, and an SES notification naming more is not
/// one of ours.
pub const SES_MAX_RECIPIENTS: usize = 50;

/// A provider accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The provider's id for the message (Mailgun `id`, SendGrid `X-Message-Id`, SES
    /// `MessageId`, Gmail message `id`, the SMTP reply's queue id when it names one).
    pub provider_message_id: Option<String>,
    /// The sender actually used when the provider substituted one (Gmail `default_sender`
    /// fallback); `None` when the message went out as written.
    pub substituted_sender: Option<String>,
}

/// What a provider can say about a message it may have accepted without answering (a send that
/// ended `Ambiguous`), from [`Provider::look_up`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// This provider (or its configuration) offers no way to ask.
    Unsupported,
    /// The provider has it.
    Found(Accepted),
    /// The provider has no such message (as far as it can tell now).
    NotFound,
}

/// How a failed provider call is handled (ARCHITECTURE §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The message itself is unacceptable (invalid recipient or content): no retry, no failover,
    /// not a provider failure.
    Permanent,
    /// This gateway cannot take this message (over its size or recipient limits, or a feature
    /// it lacks), but another gateway may: fail over, do not count against the breaker.
    Unsuitable,
    /// Rate limited (429 or a quota); retry after `retry_after`, fail over meanwhile.
    Throttled,
    /// The provider is down or unreachable (5xx, connect error, timeout before the request was
    /// sent): fail over.
    Unavailable,
    /// Credentials refused (401/403): fail over and alert.
    Auth,
    /// Timeout or broken connection after the request was sent: the provider may have accepted
    /// it. Not failed over by default (duplicate risk).
    Ambiguous,
}

impl ErrorClass {
    /// The class recorded in events and the record of delivery. `Unsuitable` is recorded as
    /// `permanent` for that gateway: the provider was not at fault. `Unsuitable` is decided
    /// before any call, so it must not be fed to the breaker's tally.
    pub fn outcome(self) -> OutcomeClass {
        match self {
            Self::Permanent | Self::Unsuitable => OutcomeClass::Permanent,
            Self::Throttled => OutcomeClass::Throttled,
            Self::Unavailable => OutcomeClass::Unavailable,
            Self::Auth => OutcomeClass::Auth,
            Self::Ambiguous => OutcomeClass::Ambiguous,
        }
    }

    /// True when the breaker counts it as a provider failure.
    pub fn is_provider_failure(self) -> bool {
        matches!(
            self,
            Self::Throttled | Self::Unavailable | Self::Auth | Self::Ambiguous
        )
    }
}

/// A classified provider failure. Its `Display` never contains credentials or message content.
#[derive(Debug, thiserror::Error)]
#[error("{class:?} from {provider}: {detail}")]
pub struct SendError {
    /// How the pipeline must treat it.
    pub class: ErrorClass,
    /// Provider name (`mailgun`, `sendgrid`, …).
    pub provider: &'static str,
    /// HTTP status, when there was a response.
    pub http_status: Option<u16>,
    /// When the provider said capacity returns (epoch ms), from `Retry-After` or
    /// `X-RateLimit-Reset`.
    pub retry_after: Option<EpochMillis>,
    /// A short, secret-free description for logs and the record (the provider's error message,
    /// truncated).
    pub detail: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SendError {
    /// A classified error with no source.
    pub fn new(class: ErrorClass, provider: &'static str, detail: impl Into<String>) -> Self {
        Self {
            class,
            provider,
            http_status: None,
            retry_after: None,
            detail: detail.into(),
            source: None,
        }
    }

    /// The class.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// When to retry, if the provider said.
    pub fn retry_after(&self) -> Option<EpochMillis> {
        self.retry_after
    }
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    /// How long the probe took.
    pub latency: Duration,
    /// The account's sending quota, when the probe's answer carries one (SES `GetAccount`).
    pub send_quota: Option<SendQuota>,
}

impl ProbeReport {
    /// A report of `latency` and no quota.
    pub fn new(latency: Duration) -> Self {
        Self {
            latency,
            send_quota: None,
        }
    }
}

/// A provider account's sending quota (SES `SendQuota`). A negative value means unlimited, as
/// SES reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendQuota {
    /// Messages (recipients) the account may send in 24 hours (`Max24HourSend`).
    pub max_24_hour_send: f64,
    /// Messages (recipients) per second (`MaxSendRate`).
    pub max_send_rate: f64,
    /// Sent in the last 24 hours (`SentLast24Hours`).
    pub sent_last_24_hours: f64,
}

/// One gateway's client. Implementations are built once per process (cold start) and shared.
#[async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// The gateway id this client serves.
    fn gateway_id(&self) -> &str;

    /// Sends one message. `now` is used to turn relative retry hints into absolute times.
    async fn send(
        &self,
        message: &OutboundMessage,
        now: EpochMillis,
    ) -> Result<Accepted, SendError>;

    /// A cheap authenticated call that proves the provider is reachable and the credentials
    /// work, without sending mail.
    async fn probe(&self) -> Result<ProbeReport, SendError>;

    /// Asks whether `message` (as it would have been sent at `sent_at`, epoch ms) was accepted.
    /// Default: [`Lookup::Unsupported`].
    ///
    /// Read-only: it never sends. [`Lookup::NotFound`] means the provider was asked and has no
    /// such message *now*; a provider whose search lags behind its acceptances (Gmail) may still
    /// find it later. A failed question is a [`SendError`] classified like a send's, but never
    /// [`ErrorClass::Ambiguous`]: asking changes nothing, so a question whose answer was lost is
    /// `Unavailable` and may be asked again.
    async fn look_up(
        &self,
        message: &OutboundMessage,
        sent_at: EpochMillis,
    ) -> Result<Lookup, SendError> {
        let _ = (message, sent_at);
        Ok(Lookup::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimulatedSettings;
    use crate::message::parse_message;
    use crate::providers::simulated::SimulatedProvider;

    #[tokio::test]
    async fn providers_without_their_own_look_up_answer_unsupported() {
        let json = serde_json::json!({
            "id": "m-1", "from": "ada@clinic.example", "to": ["p@example.org"],
            "subject": "s", "text": "t"
        });
        let message = parse_message(json.to_string().as_bytes(), None).unwrap();
        let settings = SimulatedSettings {
            latency: Duration::ZERO,
            seed: 0,
            throttle_rate: 0.0,
            unavailable_rate: 0.0,
            timeout_rate: 0.0,
            permanent_rate: 0.0,
        };
        let providers: Vec<Arc<dyn Provider>> = vec![
            Arc::new(SimulatedProvider::new("sim", settings)),
            #[cfg(feature = "providers")]
            Arc::new(capture::CaptureProvider::new("cap", "/nonexistent")),
        ];
        for provider in providers {
            let answer = provider.look_up(&message, 1_795_000_000_000).await.unwrap();
            assert_eq!(answer, Lookup::Unsupported, "{}", provider.gateway_id());
        }
    }
}
