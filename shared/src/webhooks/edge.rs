//! The provider webhook edge (`POST /webhooks/{mailgun,sendgrid,ses}`): authenticate on the raw
//! bytes, normalise, record the acceptance evidence, put the delivery events on the events
//! queue, answer quickly. The same code serves the `webhooks` Lambda function and
//! `gateway serve`.
//!
//! | outcome | status |
//! |---|---|
//! | events queued (or the payload had none we record) | 200 `{"accepted": n, "ignored": m}` |
//! | signature fields missing or malformed, payload unreadable | 400 |
//! | signature does not verify with any configured key | 401 |
//! | signed but stale, replayed, from a topic not on the allow-list, SHA-1 where refused, or a certificate URL that is not SNS's (or not the topic's region) | 403 |
//! | no key configured for the provider | 404 (the route is not in use) |
//! | the events queue, the state store (replay cache, acceptance evidence) or SNS's certificate unreachable, or the certificate download cap reached | 503 (the provider retries) |
//!
//! Every error body is `{"error": {"code", "message"}}` (ARCHITECTURE §2.3); none echoes a key or
//! signature.
//!
//! Decisions:
//! - An event without our message id is still queued (the recorder keeps it unattached, and a
//!   hard bounce still suppresses the address); a warning names the provider event id.
//! - A Mailgun token, and each SendGrid delivery event's `sg_event_id`, is remembered for
//!   [`REPLAY_WINDOW`] (longer than the freshness window, so a token cannot come back after it
//!   is forgotten), and forgotten again if the events could not be queued, so the provider's
//!   retry is not refused as a replay. Each record holds a nonce of the handling that wrote it:
//!   a retried conditional put that finds its own write is not a replay. A SendGrid batch whose
//!   events were all accepted before is refused (403 `replayed`); one with some new events
//!   queues those and drops the rest.
//! - SNS: the certificate URL must be the SNS endpoint of the `TopicArn`'s region; a topic
//!   whose gateway sets `sns_accept_sha1_signatures: false` refuses `SignatureVersion` 1 (403
//!   `signature_version_refused`); the `Timestamp` may be at most [`sns::MAX_MESSAGE_AGE`] old
//!   (SNS retries for up to an hour, then its dead-letter queue keeps a message 14 days for a
//!   redrive with the original signature; the recorder is idempotent on event ids, so a
//!   replayed notification inside that changes nothing) and [`MAX_AGE`] in the future.
//!   Certificate downloads are capped and failures remembered ([`CertCache`]): a flood of
//!   forged requests naming made-up certificate URLs is answered 503 without downloading.
//! - `Content-Type` is not read. It is not signed, so checking it authenticates nothing, and
//!   the providers do not agree on it (Mailgun and SendGrid send `application/json`, SNS
//!   `text/plain`). Every body is read as JSON whatever its label: anything else (Mailgun's
//!   legacy form posts, a form or text body on any route) fails its signature check or its
//!   parse and is refused like any other unreadable request.
//! - Acceptance evidence ([`crate::evidence`]): after verification (and the replay check), every
//!   event of the request that proves the provider had one of our messages and names it
//!   ([`super::Reading::evidence`]) is recorded, [`EVIDENCE_WRITES`] at a time, before the events
//!   are queued. Events without our id are skipped. The evidence names the gateway when the key
//!   or topic that verified the request belongs to exactly one gateway
//!   ([`WebhookKeys::gateway_of`]); a key shared by several gateways (one Mailgun account's
//!   signing key, one SNS topic for several configuration sets) names none. A store failure
//!   is answered 503 like the replay store's, and the replay records are forgotten: the
//!   provider retries, and is never told 200 while evidence is lost. Recording is idempotent
//!   (the first evidence wins), so the retry's second write of it changes nothing.
//! - Mailgun signs only `timestamp ‖ token`, not `event-data`: the token's single use and the
//!   freshness window are what stop a captured request from being replayed with other events.
//!   Both readers of the body refuse a repeated `signature` or `event-data` key, so the part
//!   checked and the part queued cannot be two different copies.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{Value, json};

use super::sns::{self, CertCache, CertError};
use super::verify::{self, MAX_AGE, Rejection};
use super::{Acceptance, Normalized, PayloadError, Reading, mailgun, sendgrid, ses};
use crate::clock::Clock;
use crate::config::{Config, ProviderSettings, SecretRef};
use crate::events::{DeliveryEvent, EventSink, GatewayEvent};
use crate::evidence::{self, Evidence};
use crate::secrets::SecretResolver;
use crate::state::{StateStore, StoreError};

/// How long a Mailgun token or a SendGrid `sg_event_id` is remembered.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(2 * 600 + 60);

/// Replay-cache writes in flight at once for one request (a SendGrid batch).
const REPLAY_WRITES: usize = 16;

/// Acceptance-evidence writes in flight at once for one request (a SendGrid batch names up to
/// hundreds of messages).
pub const EVIDENCE_WRITES: usize = 16;

/// The largest body accepted (Mailgun and SendGrid batches stay far below it).
pub const MAX_BODY: usize = 1024 * 1024;

/// An answer: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

impl Answer {
    fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({"error": {"code": code, "message": message.into()}}),
        }
    }

    fn rejected(r: &Rejection) -> Self {
        Self::error(r.status(), r.code(), r.to_string())
    }

    fn payload(e: &PayloadError) -> Self {
        Self::error(400, "invalid_payload", e.to_string())
    }
}

/// What the edge accepts, read from the gateway config.
#[derive(Debug, Clone, Default)]
pub struct WebhookKeys {
    /// Mailgun webhook signing keys (one per Mailgun gateway that names one).
    pub mailgun: Vec<SecretRef>,
    /// SendGrid event-webhook public keys.
    pub sendgrid: Vec<String>,
    /// SNS topics allowed on `/webhooks/ses`.
    pub sns_topics: Vec<String>,
    /// Allowed topics whose `SignatureVersion` 1 (SHA-1) messages are refused: those of a
    /// gateway with `amazon_ses.sns_accept_sha1_signatures: false` (a topic listed by two
    /// gateways is refused if either refuses).
    pub sns_sha1_refused: Vec<String>,
    /// Each key and topic above with the id of a gateway naming it, once per gateway: the
    /// gateway acceptance evidence is attributed to ([`WebhookKeys::gateway_of`]). Empty: no
    /// evidence names a gateway.
    pub owners: Vec<(Verifier, String)>,
}

/// A key or topic that verifies webhook requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verifier {
    /// A Mailgun webhook signing key.
    MailgunKey(SecretRef),
    /// A SendGrid event-webhook public key.
    SendgridKey(String),
    /// An SNS topic (SES events).
    SnsTopic(String),
}

impl WebhookKeys {
    /// The keys and topics of every gateway in `config` (disabled ones included: their
    /// provider still reports on mail they sent), with the gateways naming each.
    pub fn of(config: &Config) -> Self {
        let mut keys = Self::default();
        for g in &config.gateways {
            let mut owns = |verifier: Verifier| {
                let owner = (verifier, g.id.clone());
                if !keys.owners.contains(&owner) {
                    keys.owners.push(owner);
                }
            };
            match &g.provider {
                ProviderSettings::Mailgun(m) => {
                    if let Some(k) = &m.webhook_signing_key {
                        owns(Verifier::MailgunKey(k.clone()));
                        if !keys.mailgun.contains(k) {
                            keys.mailgun.push(k.clone());
                        }
                    }
                }
                ProviderSettings::Sendgrid(s) => {
                    if let Some(k) = &s.webhook_public_key {
                        owns(Verifier::SendgridKey(k.clone()));
                        if !keys.sendgrid.contains(k) {
                            keys.sendgrid.push(k.clone());
                        }
                    }
                }
                ProviderSettings::AmazonSes(s) => {
                    for t in &s.sns_topic_arns {
                        owns(Verifier::SnsTopic(t.clone()));
                        if !keys.sns_topics.contains(t) {
                            keys.sns_topics.push(t.clone());
                        }
                        if !s.sns_accept_sha1_signatures && !keys.sns_sha1_refused.contains(t) {
                            keys.sns_sha1_refused.push(t.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        keys
    }

    /// The gateway a request verified by `verifier` comes from: the one gateway naming it, none
    /// when several (or none) do.
    pub fn gateway_of(&self, verifier: &Verifier) -> Option<&str> {
        let mut gateways = self
            .owners
            .iter()
            .filter(|(v, _)| v == verifier)
            .map(|(_, g)| g.as_str());
        let first = gateways.next()?;
        gateways.all(|g| g == first).then_some(first)
    }
}

/// The webhook edge's dependencies.
#[derive(Debug, Clone)]
pub struct Edge {
    keys: WebhookKeys,
    secrets: Arc<SecretResolver>,
    /// The state table: the replay cache and the acceptance evidence.
    state: Arc<dyn StateStore>,
    events: Arc<dyn EventSink>,
    certs: CertCache,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
}

impl Edge {
    /// An edge checking with `keys`, remembering tokens and recording acceptance evidence in
    /// `state`, queueing on `events`.
    pub fn new(
        keys: WebhookKeys,
        secrets: Arc<SecretResolver>,
        state: Arc<dyn StateStore>,
        events: Arc<dyn EventSink>,
        certs: CertCache,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            keys,
            secrets,
            state,
            events,
            certs,
            http: crate::tls::reqwest_builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            clock,
        })
    }

    /// Handles `POST /webhooks/{provider}` with the raw `body` (already base64-decoded when API
    /// Gateway encoded it); `header` looks a request header up by lower-case name.
    pub async fn handle(
        &self,
        provider: &str,
        header: &(dyn Fn(&str) -> Option<String> + Sync),
        body: &[u8],
    ) -> Answer {
        if body.len() > MAX_BODY {
            return Answer::error(
                413,
                "body_too_large",
                format!("the body exceeds {MAX_BODY} bytes"),
            );
        }
        match provider {
            "mailgun" => self.mailgun(body).await,
            "sendgrid" => self.sendgrid(header, body).await,
            "ses" => self.ses(body).await,
            other => Answer::error(
                404,
                "unknown_provider",
                format!("no webhook route for {other:?}; served: mailgun, sendgrid, ses"),
            ),
        }
    }

    async fn mailgun(&self, body: &[u8]) -> Answer {
        if self.keys.mailgun.is_empty() {
            return not_configured("mailgun", "gateways[].mailgun.webhook_signing_key");
        }
        let sig = match verify::mailgun_signature(body) {
            Ok(sig) => sig,
            Err(r) => return Answer::rejected(&r),
        };
        let now = self.clock.now_ms();
        let mut outcome = Err(Rejection::Forged);
        let mut tried = None;
        for reference in &self.keys.mailgun {
            tried = Some(reference);
            let key = match self.secrets.resolve(reference).await {
                Ok(key) => key,
                Err(error) => {
                    tracing::error!(%error, "the Mailgun webhook signing key could not be resolved");
                    return Answer::error(503, "unavailable", "the signing key is unavailable");
                }
            };
            outcome = verify::verify_mailgun(key.expose().as_bytes(), &sig, now, MAX_AGE);
            if !matches!(outcome, Err(Rejection::Forged)) {
                break;
            }
        }
        if let Err(r) = outcome {
            return Answer::rejected(&r);
        }
        // The loop stopped at the key that verified.
        let gateway = tried.and_then(|k| self.keys.gateway_of(&Verifier::MailgunKey(k.clone())));
        let owner = verify::request_nonce();
        match verify::first_use(
            self.state.as_ref(),
            "mailgun",
            &sig.token,
            &owner,
            now,
            REPLAY_WINDOW,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => return Answer::rejected(&Rejection::Replayed),
            Err(error) => {
                tracing::warn!(%error, "replay store unavailable");
                return Answer::error(503, "unavailable", "the replay store is unavailable");
            }
        }
        let reading = match mailgun::read(body) {
            Ok(reading) => reading,
            Err(e) => return Answer::payload(&e),
        };
        let answer = self.deliver(mailgun::PROVIDER, gateway, reading).await;
        if answer.status >= 500 {
            // Let the provider's retry through.
            self.forget("mailgun", [sig.token.as_str()], &owner).await;
        }
        answer
    }

    /// Forgets the replay `tokens` this handling (`owner`) recorded.
    async fn forget<'a>(
        &self,
        scope: &str,
        tokens: impl IntoIterator<Item = &'a str>,
        owner: &str,
    ) {
        let store = self.state.as_ref();
        futures::stream::iter(tokens)
            .for_each_concurrent(REPLAY_WRITES, |token| async move {
                if let Err(error) = verify::forget(store, scope, token, owner).await {
                    tracing::warn!(%error, "a replay token could not be forgotten");
                }
            })
            .await;
    }

    async fn sendgrid(
        &self,
        header: &(dyn Fn(&str) -> Option<String> + Sync),
        body: &[u8],
    ) -> Answer {
        if self.keys.sendgrid.is_empty() {
            return not_configured("sendgrid", "gateways[].sendgrid.webhook_public_key");
        }
        let (Some(signature), Some(timestamp)) = (
            header("x-twilio-email-event-webhook-signature"),
            header("x-twilio-email-event-webhook-timestamp"),
        ) else {
            return Answer::rejected(&Rejection::Malformed {
                field: "X-Twilio-Email-Event-Webhook-Signature / -Timestamp",
            });
        };
        let now = self.clock.now_ms();
        let mut outcome = Err(Rejection::Forged);
        let mut tried = None;
        for key in &self.keys.sendgrid {
            tried = Some(key);
            outcome = verify::verify_sendgrid(key, &timestamp, body, &signature, now, MAX_AGE);
            if !matches!(outcome, Err(Rejection::Forged)) {
                break;
            }
        }
        if let Err(r) = outcome {
            return Answer::rejected(&r);
        }
        // The loop stopped at the key that verified.
        let gateway = tried.and_then(|k| self.keys.gateway_of(&Verifier::SendgridKey(k.clone())));
        let Reading {
            events: normalized,
            evidence,
        } = match sendgrid::read(body) {
            Ok(reading) => reading,
            Err(e) => return Answer::payload(&e),
        };
        // Each delivery event's `sg_event_id` is accepted once (the signature alone would let a
        // captured request be posted again within the freshness window). One conditional put
        // per distinct id, REPLAY_WRITES at a time.
        let owner = verify::request_nonce();
        let mut seen = std::collections::HashSet::new();
        // Owned ids: a stream whose closure borrows `&str` arguments makes the handler's future
        // not `Send` for every lifetime, which an HTTP server (`gateway serve`) requires.
        let ids: Vec<String> = normalized
            .iter()
            .filter_map(|n| match n {
                Normalized::Event(e) => Some(e.provider_event_id.as_str()),
                Normalized::Ignored { .. } => None,
            })
            .filter(|id| seen.insert(*id))
            .map(str::to_owned)
            .collect();
        let store = self.state.as_ref();
        let owner_ref = &owner;
        let outcomes: Vec<(String, Result<bool, StoreError>)> = futures::stream::iter(ids)
            .map(|id: String| async move {
                let first =
                    verify::first_use(store, "sendgrid", &id, owner_ref, now, REPLAY_WINDOW).await;
                (id, first)
            })
            .buffered(REPLAY_WRITES)
            .collect()
            .await;
        let recorded: Vec<String> = outcomes
            .iter()
            .filter(|(_, first)| matches!(first, Ok(true)))
            .map(|(id, _)| id.clone())
            .collect();
        if let Some((_, Err(error))) = outcomes.iter().find(|(_, first)| first.is_err()) {
            tracing::warn!(%error, "replay store unavailable");
            self.forget("sendgrid", recorded.iter().map(String::as_str), &owner)
                .await;
            return Answer::error(503, "unavailable", "the replay store is unavailable");
        }
        // Queued: each event whose id this request recorded, once; dropped: the others
        // (accepted before, or repeated in this batch).
        let mut pending: std::collections::HashSet<&str> =
            recorded.iter().map(String::as_str).collect();
        let mut kept = Vec::with_capacity(normalized.len());
        let mut replayed = 0usize;
        for n in normalized {
            if let Normalized::Event(e) = &n
                && !pending.remove(e.provider_event_id.as_str())
            {
                replayed += 1;
                continue;
            }
            kept.push(n);
        }
        if recorded.is_empty() && replayed > 0 {
            return Answer::rejected(&Rejection::Replayed);
        }
        if replayed > 0 {
            tracing::warn!(replayed, "SendGrid events already accepted; dropped");
        }
        let reading = Reading {
            events: kept,
            evidence,
        };
        let answer = self.deliver(sendgrid::PROVIDER, gateway, reading).await;
        if answer.status >= 500 {
            self.forget("sendgrid", recorded.iter().map(String::as_str), &owner)
                .await;
        }
        answer
    }

    async fn ses(&self, body: &[u8]) -> Answer {
        if self.keys.sns_topics.is_empty() {
            return not_configured("ses", "gateways[].amazon_ses.sns_topic_arns");
        }
        let message = match sns::parse(body) {
            Ok(m) => m,
            Err(r) => return Answer::rejected(&r),
        };
        if !self.keys.sns_topics.contains(&message.topic_arn) {
            return Answer::error(
                403,
                "topic_not_allowed",
                "the topic is not on gateways[].amazon_ses.sns_topic_arns",
            );
        }
        if message.signature_version == "1"
            && self.keys.sns_sha1_refused.contains(&message.topic_arn)
        {
            return Answer::error(
                403,
                "signature_version_refused",
                "SignatureVersion 1 (SHA-1) is refused for this topic \
                 (gateways[].amazon_ses.sns_accept_sha1_signatures)",
            );
        }
        if !sns::cert_region_matches_topic(&message) {
            return Answer::error(
                403,
                "untrusted_certificate",
                "SigningCertURL is not the SNS endpoint of the topic's region",
            );
        }
        let key = match self.certs.public_key(&message.signing_cert_url).await {
            Ok(key) => key,
            Err(e @ (CertError::Unavailable | CertError::Throttled)) => {
                return Answer::error(503, "unavailable", e.to_string());
            }
            Err(e) => return Answer::error(403, "untrusted_certificate", e.to_string()),
        };
        if let Err(r) = sns::verify(&message, &key) {
            return Answer::rejected(&r);
        }
        if let Err(r) = sns::check_timestamp(&message, self.clock.now_ms()) {
            return Answer::rejected(&r);
        }
        match message.kind.as_str() {
            "Notification" => match ses::read(&message.message) {
                Ok(reading) => {
                    let topic = Verifier::SnsTopic(message.topic_arn.clone());
                    let gateway = self.keys.gateway_of(&topic);
                    self.deliver(ses::PROVIDER, gateway, reading).await
                }
                Err(e) => Answer::payload(&e),
            },
            "SubscriptionConfirmation" => self.confirm(&message).await,
            "UnsubscribeConfirmation" => {
                tracing::warn!(topic = %message.topic_arn, "SNS unsubscribed this endpoint");
                Answer {
                    status: 200,
                    body: json!({"accepted": 0, "ignored": 1}),
                }
            }
            _ => Answer::rejected(&Rejection::Malformed { field: "Type" }),
        }
    }

    async fn confirm(&self, message: &sns::SnsMessage) -> Answer {
        let Some(url) = message
            .subscribe_url
            .as_deref()
            .filter(|u| sns::is_sns_url(u, false))
        else {
            return Answer::error(
                403,
                "untrusted_subscribe_url",
                "SubscribeURL is not an https://sns.<region>.amazonaws.com URL",
            );
        };
        match self.http.get(url).send().await {
            Ok(r) if r.status().is_success() => {
                tracing::info!(topic = %message.topic_arn, "SNS subscription confirmed");
                Answer {
                    status: 200,
                    body: json!({"confirmed": true}),
                }
            }
            _ => Answer::error(
                503,
                "unavailable",
                "the subscription could not be confirmed",
            ),
        }
    }

    /// Records the evidence of `reading`, then queues its events: 503 when either fails.
    async fn deliver(&self, provider: &str, gateway: Option<&str>, reading: Reading) -> Answer {
        if let Err(answer) = self.record(provider, gateway, reading.evidence).await {
            return answer;
        }
        self.queue(provider, reading.events).await
    }

    /// Records each acceptance as [`Evidence`] of `provider` (and `gateway`), [`EVIDENCE_WRITES`]
    /// at a time. Any store failure is the 503 answer: the provider's retry records it again.
    async fn record(
        &self,
        provider: &str,
        gateway: Option<&str>,
        acceptances: Vec<Acceptance>,
    ) -> Result<(), Answer> {
        if acceptances.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let store = self.state.as_ref();
        // Owned values in the stream (see `sendgrid`: borrowed arguments make the future not
        // `Send` for every lifetime).
        let failures: Vec<(String, StoreError)> = futures::stream::iter(acceptances)
            .map(|a: Acceptance| {
                let evidence = Evidence {
                    gateway: gateway.map(str::to_owned),
                    provider: provider.to_owned(),
                    provider_message_id: a.provider_message_id,
                    event: a.event,
                    at: a.at,
                };
                let message_id = a.message_id;
                async move {
                    let result = evidence::record(store, &message_id, &evidence, now).await;
                    (message_id, result)
                }
            })
            .buffer_unordered(EVIDENCE_WRITES)
            .filter_map(|(message_id, result)| async move {
                match result {
                    Ok(()) => {
                        tracing::debug!(provider, gateway, message_id, "acceptance evidence");
                        None
                    }
                    Err(error) => Some((message_id, error)),
                }
            })
            .collect()
            .await;
        let Some((message_id, error)) = failures.first() else {
            return Ok(());
        };
        let error_kind = if error.is_retryable() {
            "retryable"
        } else {
            "permanent"
        };
        tracing::error!(
            provider,
            gateway,
            message_id,
            error_kind,
            failed = failures.len(),
            %error,
            "acceptance evidence not recorded; the provider retries"
        );
        Err(Answer::error(
            503,
            "unavailable",
            "the state store is unavailable",
        ))
    }

    async fn queue(&self, provider: &str, normalized: Vec<Normalized>) -> Answer {
        let mut events: Vec<GatewayEvent> = Vec::new();
        let mut ignored = 0usize;
        for n in normalized {
            match n {
                Normalized::Event(e) => {
                    warn_unattached(&e);
                    events.push(GatewayEvent::Delivery(e));
                }
                Normalized::Ignored { event } => {
                    tracing::debug!(provider, event, "event type without delivery meaning");
                    ignored += 1;
                }
            }
        }
        if !events.is_empty()
            && let Err(error) = self.events.emit(&events).await
        {
            tracing::error!(provider, %error, "events queue unavailable; the provider retries");
            return Answer::error(503, "unavailable", "the events queue is unavailable");
        }
        tracing::info!(
            provider,
            accepted = events.len(),
            ignored,
            "webhook accepted"
        );
        Answer {
            status: 200,
            body: json!({"accepted": events.len(), "ignored": ignored}),
        }
    }
}

fn warn_unattached(e: &DeliveryEvent) {
    if e.message_id.is_none() {
        tracing::warn!(
            provider = %e.provider,
            provider_event_id = %e.provider_event_id,
            "provider event without our message id; recorded unattached"
        );
    }
}

fn not_configured(provider: &str, setting: &str) -> Answer {
    Answer::error(
        404,
        "not_configured",
        format!("no {provider} webhook is configured ({setting})"),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::clock::ManualClock;
    use crate::events::MemoryEventSink;
    use crate::state::memory::MemoryStore;
    use crate::state::{Item, Key, TransactOutcome, Write, WriteOutcome};

    /// The derived Mailgun vector (providers.md §1.7).
    const KEY: &str = "WEBHOOK_SIGNING_KEY";
    const SIGNATURE: &str = r#"{"timestamp": "1700000000",
        "token": "0123456789abcdef0123456789abcdef0123456789abcdef01",
        "signature": "01cbfb616a25c3c692f2c338aefd48b4063a79d94f45af2d5f8d3114731f01b5"}"#;
    const NOW: i64 = 1_700_000_000_000;

    /// A [`MemoryStore`] whose evidence writes fail while `down`.
    #[derive(Debug, Default)]
    struct EvidenceDown {
        inner: MemoryStore,
        down: AtomicBool,
    }

    #[async_trait]
    impl StateStore for EvidenceDown {
        async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
            self.inner.get_many(keys).await
        }

        async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
            if self.down.load(Ordering::SeqCst) && write.key.starts_with("acc#") {
                return Err(StoreError::Throttled);
            }
            self.inner.write(write).await
        }

        async fn transact(&self, writes: Vec<Write>) -> Result<TransactOutcome, StoreError> {
            self.inner.transact(writes).await
        }

        async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
            self.inner.put_many(items).await
        }
    }

    fn mailgun_keys(owners: &[&str]) -> WebhookKeys {
        let key = SecretRef::Inline(KEY.into());
        WebhookKeys {
            mailgun: vec![key.clone()],
            owners: owners
                .iter()
                .map(|g| (Verifier::MailgunKey(key.clone()), (*g).to_owned()))
                .collect(),
            ..WebhookKeys::default()
        }
    }

    fn edge(keys: WebhookKeys, state: Arc<dyn StateStore>, sink: Arc<MemoryEventSink>) -> Edge {
        let clock = Arc::new(ManualClock::new(NOW));
        Edge::new(
            keys,
            Arc::new(SecretResolver::new(clock.clone())),
            state,
            sink,
            CertCache::new().unwrap(),
            clock,
        )
        .unwrap()
    }

    fn mailgun_body(event_data: &Value) -> Vec<u8> {
        format!(r#"{{"signature": {SIGNATURE}, "event-data": {event_data}}}"#).into_bytes()
    }

    fn event(name: &str, message_id: Option<&str>) -> Value {
        let mut data = json!({"event": name, "id": "evt-1", "timestamp": 1_699_999_990.5,
            "recipient": "p@x.example",
            "message": {"headers": {"message-id": "20231114.1@mg.example.org"}}});
        if let Some(id) = message_id {
            data["user-variables"] = json!({"message_id": id});
        }
        data
    }

    fn no_headers(_: &str) -> Option<String> {
        None
    }

    /// The sender's question, answered: a signed `accepted` webhook is acknowledged as before
    /// (nothing queued) and leaves evidence `lookup_many` finds, naming the one gateway whose
    /// key verified it.
    #[tokio::test]
    async fn a_signed_mailgun_accepted_webhook_is_evidence_the_sender_finds() {
        let store = Arc::new(MemoryStore::new());
        let sink = Arc::new(MemoryEventSink::new());
        let edge = edge(
            mailgun_keys(&["mailgun-primary"]),
            store.clone(),
            sink.clone(),
        );
        let body = mailgun_body(&event("accepted", Some("appt-2026-11-28-0001")));
        let answer = edge.handle("mailgun", &no_headers, &body).await;
        assert_eq!(
            (answer.status, answer.body.clone()),
            (200, json!({"accepted": 0, "ignored": 1}))
        );
        assert!(sink.events().is_empty(), "no delivery event");
        let found = evidence::lookup_many(store.as_ref(), &["appt-2026-11-28-0001", "other"])
            .await
            .unwrap();
        assert_eq!(
            found,
            [
                Some(Evidence {
                    gateway: Some("mailgun-primary".to_owned()),
                    provider: "mailgun".to_owned(),
                    provider_message_id: Some("<20231114.1@mg.example.org>".to_owned()),
                    event: "accepted".to_owned(),
                    at: 1_699_999_990_500,
                }),
                None
            ]
        );
    }

    /// A delivery outcome is evidence and is queued; an engagement event or an event without
    /// our id is queued and records nothing; a key two gateways share names no gateway.
    #[tokio::test]
    async fn delivery_outcomes_are_recorded_and_queued_engagement_only_queued() {
        let cases = [
            ("delivered", Some("m-1"), &["mailgun-primary"][..], true),
            ("delivered", Some("m-1"), &["mg-a", "mg-b"][..], true),
            ("opened", Some("m-1"), &["mailgun-primary"][..], false),
            ("delivered", None, &["mailgun-primary"][..], false),
        ];
        for (name, message_id, owners, recorded) in cases {
            let store = Arc::new(MemoryStore::new());
            let sink = Arc::new(MemoryEventSink::new());
            let edge = edge(mailgun_keys(owners), store.clone(), sink.clone());
            let body = mailgun_body(&event(name, message_id));
            let answer = edge.handle("mailgun", &no_headers, &body).await;
            assert_eq!(answer.body["accepted"], 1, "{name}: {answer:?}");
            let found = evidence::lookup_many(store.as_ref(), &["m-1"])
                .await
                .unwrap();
            let want = recorded.then(|| Evidence {
                gateway: (owners.len() == 1).then(|| owners[0].to_owned()),
                provider: "mailgun".to_owned(),
                provider_message_id: Some("<20231114.1@mg.example.org>".to_owned()),
                event: name.to_owned(),
                at: 1_699_999_990_500,
            });
            assert_eq!(found, [want], "{name} {message_id:?} {owners:?}");
        }
    }

    /// Evidence that cannot be recorded is a 503, like the replay store's: nothing is queued
    /// and the token is forgotten, so Mailgun's retry is accepted and records it.
    #[tokio::test]
    async fn evidence_that_cannot_be_recorded_is_a_503_and_the_retry_records_it() {
        let store = Arc::new(EvidenceDown::default());
        let sink = Arc::new(MemoryEventSink::new());
        let edge = edge(
            mailgun_keys(&["mailgun-primary"]),
            store.clone(),
            sink.clone(),
        );
        let body = mailgun_body(&event("delivered", Some("m-1")));
        store.down.store(true, Ordering::SeqCst);
        let answer = edge.handle("mailgun", &no_headers, &body).await;
        assert_eq!(
            (answer.status, answer.body["error"]["code"].as_str()),
            (503, Some("unavailable"))
        );
        assert!(sink.events().is_empty(), "not queued without its evidence");
        store.down.store(false, Ordering::SeqCst);
        let retry = edge.handle("mailgun", &no_headers, &body).await;
        assert_eq!(retry.status, 200, "not a replay: {retry:?}");
        assert_eq!(sink.events().len(), 1);
        let found = evidence::lookup_many(store.as_ref(), &["m-1"])
            .await
            .unwrap();
        assert!(found[0].is_some());
    }

    /// `gateway serve` runs the edge on a multi-threaded HTTP server: its future must stay
    /// `Send` with the evidence writes in it.
    #[test]
    fn the_handling_future_is_send() {
        fn send<T: Send>(_: &T) {}
        let edge = edge(
            mailgun_keys(&[]),
            Arc::new(MemoryStore::new()),
            Arc::new(MemoryEventSink::new()),
        );
        for provider in ["mailgun", "sendgrid", "ses"] {
            send(&edge.handle(provider, &no_headers, b"{}"));
        }
    }

    /// Evidence names a gateway only when one gateway names the key or topic that verified it.
    #[test]
    fn a_key_or_topic_of_one_gateway_names_it_a_shared_one_names_none() {
        let doc = json!({"gateways": [
            {"id": "mg-a", "type": "mailgun", "routing": {"can_route": ["*"]},
             "mailgun": {"api_key": "env:A", "domain": "a.example", "webhook_signing_key": "env:S"}},
            {"id": "mg-b", "type": "mailgun", "routing": {"can_route": ["*"]},
             "mailgun": {"api_key": "env:B", "domain": "b.example", "webhook_signing_key": "env:S"}},
            {"id": "mg-c", "type": "mailgun", "routing": {"can_route": ["*"]},
             "mailgun": {"api_key": "env:C", "domain": "c.example", "webhook_signing_key": "env:T"}},
            {"id": "ses-a", "type": "amazon_ses", "routing": {"can_route": ["*"]},
             "amazon_ses": {"region": "eu-west-1",
                "sns_topic_arns": ["arn:aws:sns:eu-west-1:1:a", "arn:aws:sns:eu-west-1:1:a"]}}
        ]});
        let loaded = crate::config::load_config(Some(&doc.to_string()), None, &|_| None)
            .unwrap_or_else(|e| panic!("{e}"));
        let keys = WebhookKeys::of(&loaded.config);
        let env = |name: &str| Verifier::MailgunKey(SecretRef::Env(name.to_owned()));
        let cases = [
            (env("S"), None),
            (env("T"), Some("mg-c")),
            (env("U"), None),
            (
                Verifier::SnsTopic("arn:aws:sns:eu-west-1:1:a".to_owned()),
                Some("ses-a"),
            ),
            (Verifier::SendgridKey("k".to_owned()), None),
        ];
        for (verifier, want) in cases {
            assert_eq!(keys.gateway_of(&verifier), want, "{verifier:?}");
        }
        assert_eq!(keys.mailgun.len(), 2, "each key once");
    }
}
