//! Customer webhooks (ARCHITECTURE §2.5): the recorder tells customers what happened to their
//! messages in Mandrill's webhook format, without ever letting a slow or broken customer
//! endpoint hold up the record of delivery.
//!
//! # The path of an event
//! 1. The recorder records a batch of gateway events, then turns the recorded ones into Mandrill
//!    events ([`announcements`]: `from_outcome` for sender outcomes, `from_delivery` for
//!    provider events, with the message's subject, sender, tags and metadata from the record).
//! 2. [`plan`] groups them per configured endpoint (event filter, sender patterns) into
//!    [`Delivery`] jobs of at most [`MAX_EVENTS_PER_POST`] events and [`MAX_JOB_BYTES`] of JSON,
//!    which the recorder puts on the customer-webhook queue. Recording is already committed; a
//!    job that cannot be enqueued makes only its source records retry (recording them again
//!    changes nothing), so no announcement is lost.
//! 3. The recorder function also consumes that queue ([`Worker::process`]): one signed
//!    `POST application/x-www-form-urlencoded` with `mandrill_events` per job. A 2xx answer
//!    acknowledges the job. Anything else (non-2xx, connection error, timeout, the key not
//!    resolvable) retries it with exponential backoff through the queue's visibility timeout
//!    (30 s doubling, capped at 1 h, jittered) until the job has been received
//!    [`WorkerSettings::max_attempts`] times (12 by default: 2.5–5 hours of backoff); then the job
//!    goes to the customer-webhook dead-letter queue wrapped in a [`DeadLetter`] that says why,
//!    and is acknowledged. A job whose endpoint is no longer configured, or disabled, goes there
//!    at once. Nothing is dropped: if the dead-letter queue refuses the job, it is retried.
//!
//! # Guarantees customers get
//! At least once, in no particular order across batches: a job retried after a timeout the
//! customer did process arrives again. Every event carries a unique, stable `_id` (the same
//! event re-announced carries the same `_id`), so receivers de-duplicate on it, as Mandrill
//! asks them to. The signature is Mandrill's ([`crate::mandrill::signature`]) over the URL
//! exactly as configured.
//!
//! Redirects are not followed (the signature covers the URL; a redirect would also re-post
//! medical data to a place nobody configured).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::{Clock, EpochMillis};
use crate::config::CustomerWebhook;
use crate::events::{GatewayEvent, OutcomeEvent};
use crate::mandrill::{self, MandrillEvent, MessageContext};
use crate::pipeline::Backoff;
use crate::queue::{Queue, Received};
use crate::records::{Applied, MessageRecord};
use crate::secrets::SecretResolver;

/// Mandrill's batch limit: at most this many events in one POST.
pub const MAX_EVENTS_PER_POST: usize = 1000;

/// The largest job body planned (bytes of JSON), well under SQS's 256 KiB message limit so a
/// job always fits the queue whatever its events.
pub const MAX_JOB_BYTES: usize = 200 * 1024;

/// The version of the job format this build writes and reads.
pub const JOB_VERSION: u32 = 1;

/// The `type` of a job body on the queue.
pub const JOB_TYPE: &str = "customer_webhook";

/// One POST to one customer endpoint: the body of a message on the customer-webhook queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// [`JOB_VERSION`].
    pub v: u32,
    /// Always [`JOB_TYPE`]: tells a job from a gateway event when one consumer reads both.
    #[serde(rename = "type")]
    pub kind: String,
    /// The endpoint's id (`customer_webhooks[].id`); its URL and key are read from the config
    /// when the job is delivered, so a rotated key applies to jobs already queued.
    pub endpoint: String,
    /// The Mandrill events, in announcement order.
    pub events: Vec<Value>,
    /// When the job was planned (epoch ms).
    pub created_at: EpochMillis,
}

impl Delivery {
    /// The `mandrill_events` field value (the JSON text that is signed).
    pub fn mandrill_events(&self) -> String {
        Value::Array(self.events.clone()).to_string()
    }
}

/// True when `body` is a customer-webhook job rather than a gateway event.
pub fn is_job(body: &str) -> bool {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Peek<'_>>(body).is_ok_and(|p| p.kind.as_deref() == Some(JOB_TYPE))
}

/// One Mandrill event to announce, with what routing it to endpoints needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Announcement {
    /// The event (Mandrill's JSON shape).
    pub event: Value,
    /// Its name.
    pub kind: MandrillEvent,
    /// The sender of its message, when the record knows it.
    pub sender: Option<String>,
    /// Index of the queue record it came from (to retry that record if its job cannot be
    /// enqueued).
    pub source: usize,
}

/// The gateways whose provider reports delivery to the gateway (its webhook is configured): for
/// them the provider's `delivered` event makes the `send` announcement, not the acceptance. For
/// every other gateway — Gmail API, SMTP relays, local gateways, and Mailgun, SendGrid or SES
/// gateways whose webhook is not set up — the acceptance is announced as `send`, so a customer
/// always gets one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReporting {
    gateways: std::collections::BTreeSet<String>,
}

impl DeliveryReporting {
    /// The gateways of `config` with a provider webhook configured (Mailgun signing key,
    /// SendGrid public key, SES SNS topics).
    pub fn of(config: &crate::config::Config) -> Self {
        use crate::config::ProviderSettings;
        let gateways = config
            .gateways
            .iter()
            .filter(|g| match &g.provider {
                ProviderSettings::Mailgun(m) => m.webhook_signing_key.is_some(),
                ProviderSettings::Sendgrid(s) => s.webhook_public_key.is_some(),
                ProviderSettings::AmazonSes(s) => !s.sns_topic_arns.is_empty(),
                _ => false,
            })
            .map(|g| g.id.clone())
            .collect();
        Self { gateways }
    }

    /// These gateway ids (tests).
    pub fn from_ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            gateways: ids.into_iter().map(str::to_owned).collect(),
        }
    }

    /// Whether the gateway that sent a message reports its delivery.
    pub fn reports(&self, gateway_id: Option<&str>) -> bool {
        gateway_id.is_some_and(|g| self.gateways.contains(g))
    }
}

/// The Mandrill events of one recorded gateway event (`source` = its queue record index).
/// Delivery events without a message id are not announced: customers correlate on `msg._id`.
pub fn announcements(
    event: &GatewayEvent,
    applied: &Applied,
    source: usize,
    reporting: &DeliveryReporting,
) -> Vec<Announcement> {
    match event {
        GatewayEvent::Outcome(e) => outcome_announcements(e, source, reporting),
        GatewayEvent::Delivery(d) => {
            let Some(id) = d.message_id.as_deref() else {
                return Vec::new();
            };
            let record = applied.messages.get(id);
            let ctx = record.map(context).unwrap_or_default();
            let sender = record.map(|r| r.sender.clone()).filter(|s| !s.is_empty());
            let kind = MandrillEvent::from(d.kind);
            vec![Announcement {
                event: mandrill::from_delivery(id, d, &ctx),
                kind,
                sender,
                source,
            }]
        }
        GatewayEvent::Health(_) | GatewayEvent::Breaker(_) | GatewayEvent::Config(_) => Vec::new(),
    }
}

fn outcome_announcements(
    e: &OutcomeEvent,
    source: usize,
    reporting: &DeliveryReporting,
) -> Vec<Announcement> {
    mandrill::from_outcome(e, !reporting.reports(e.gateway_id.as_deref()))
        .into_iter()
        .filter_map(|event| {
            let kind = MandrillEvent::parse(event["event"].as_str()?)?;
            Some(Announcement {
                event,
                kind,
                sender: Some(e.sender.clone()),
                source,
            })
        })
        .collect()
}

/// What the record knows about a message, as Mandrill's `msg` needs it.
pub fn context(record: &MessageRecord) -> MessageContext {
    MessageContext {
        subject: record.subject.clone(),
        sender: record.sender.clone(),
        tags: record.tags.clone(),
        metadata: record.metadata.clone(),
        sent_at: record
            .attempts
            .iter()
            .filter(|a| a.class == crate::events::OutcomeClass::Ok)
            .map(|a| a.at)
            .min(),
    }
}

/// A planned job and the queue records whose events it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedJob {
    /// The job.
    pub delivery: Delivery,
    /// Indices of the source records (sorted, distinct).
    pub sources: Vec<usize>,
}

/// Groups announcements per endpoint into jobs of at most [`MAX_EVENTS_PER_POST`] events and
/// about [`MAX_JOB_BYTES`] of JSON (an event larger than that travels alone). Endpoints that
/// want none of them get no job.
pub fn plan(
    endpoints: &[CustomerWebhook],
    announcements: &[Announcement],
    now: EpochMillis,
) -> Vec<PlannedJob> {
    let mut jobs = Vec::new();
    for endpoint in endpoints {
        let mut current: Option<(PlannedJob, usize)> = None;
        for a in announcements {
            if !endpoint.wants(a.kind, a.sender.as_deref()) {
                continue;
            }
            let size = a.event.to_string().len() + 1;
            let full = current.as_ref().is_some_and(|(job, bytes)| {
                job.delivery.events.len() >= MAX_EVENTS_PER_POST || bytes + size > MAX_JOB_BYTES
            });
            if full && let Some((job, _)) = current.take() {
                jobs.push(job);
            }
            let (job, bytes) = current.get_or_insert_with(|| {
                (
                    PlannedJob {
                        delivery: Delivery {
                            v: JOB_VERSION,
                            kind: JOB_TYPE.to_owned(),
                            endpoint: endpoint.id.clone(),
                            events: Vec::new(),
                            created_at: now,
                        },
                        sources: Vec::new(),
                    },
                    // The job's own fields (an endpoint id is at most 64 characters).
                    256,
                )
            });
            job.delivery.events.push(a.event.clone());
            if !job.sources.contains(&a.source) {
                job.sources.push(a.source);
            }
            *bytes += size;
        }
        if let Some((job, _)) = current {
            jobs.push(job);
        }
    }
    for job in &mut jobs {
        job.sources.sort_unstable();
    }
    jobs
}

/// What the customer-webhook dead-letter queue holds: the job and why it was given up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Why delivery stopped (the last failure, or why it was never tried).
    pub reason: String,
    /// How many times the job was received (attempted).
    pub attempts: u32,
    /// The last HTTP status the endpoint answered, if it answered.
    pub last_status: Option<u16>,
    /// When it was given up (epoch ms).
    pub at: EpochMillis,
    /// The job as it was queued (re-enqueue it on the customer-webhook queue to retry).
    pub job: Value,
}

/// How one POST went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostResult {
    /// The endpoint answered 2xx.
    Delivered {
        /// The status.
        status: u16,
    },
    /// It did not; `retryable` is false when retrying cannot help (endpoint not configured).
    Failed {
        /// What went wrong (never the key, never the events).
        reason: String,
        /// The status, when the endpoint answered.
        status: Option<u16>,
        /// Whether a later attempt may succeed.
        retryable: bool,
    },
}

/// The worker's knobs (environment variables of the recorder function).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Receives of a job before it goes to the dead-letter queue
    /// (`CUSTOMER_WEBHOOK_MAX_ATTEMPTS`, default 12).
    pub max_attempts: u32,
    /// Delay between attempts (30 s doubling, capped at 1 h, jittered).
    pub backoff: Backoff,
    /// Whole-request timeout of one POST (`CUSTOMER_WEBHOOK_TIMEOUT`, default 10 s).
    pub timeout: Duration,
    /// Jobs posted at once.
    pub concurrency: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            backoff: Backoff {
                base: Duration::from_secs(30),
                cap: Duration::from_secs(3600),
                spread: Duration::from_secs(30),
            },
            timeout: Duration::from_secs(10),
            concurrency: 10,
        }
    }
}

/// What happened to one batch of jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Queue message ids to retry (batch item failures), in record order.
    pub failures: Vec<String>,
    /// Jobs the endpoint accepted.
    pub delivered: usize,
    /// Jobs put back with a backoff delay.
    pub retried: usize,
    /// Jobs moved to the dead-letter queue.
    pub dead_lettered: usize,
}

/// Delivers customer-webhook jobs.
#[derive(Debug, Clone)]
pub struct Worker {
    endpoints: Arc<[CustomerWebhook]>,
    http: reqwest::Client,
    secrets: Arc<SecretResolver>,
    jobs: Arc<dyn Queue>,
    dead_letters: Arc<dyn Queue>,
    clock: Arc<dyn Clock>,
    settings: WorkerSettings,
}

/// The worker's HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the customer-webhook HTTP client failed")]
pub struct WorkerBuildError(#[source] reqwest::Error);

impl Worker {
    /// A worker posting to `endpoints`, retrying through `jobs` (the queue the jobs come from)
    /// and giving up into `dead_letters`.
    pub fn new(
        endpoints: Arc<[CustomerWebhook]>,
        secrets: Arc<SecretResolver>,
        jobs: Arc<dyn Queue>,
        dead_letters: Arc<dyn Queue>,
        clock: Arc<dyn Clock>,
        settings: WorkerSettings,
    ) -> Result<Self, WorkerBuildError> {
        let http = crate::tls::reqwest_builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(WorkerBuildError)?;
        Ok(Self {
            endpoints,
            http,
            secrets,
            jobs,
            dead_letters,
            clock,
            settings,
        })
    }

    /// Posts one job to its endpoint.
    pub async fn post(&self, job: &Delivery) -> PostResult {
        let Some(endpoint) = self.endpoints.iter().find(|e| e.id == job.endpoint) else {
            return PostResult::Failed {
                reason: format!("customer webhook {:?} is not configured", job.endpoint),
                status: None,
                retryable: false,
            };
        };
        if !endpoint.enabled {
            return PostResult::Failed {
                reason: format!("customer webhook {:?} is disabled", job.endpoint),
                status: None,
                retryable: false,
            };
        }
        let key = match self.secrets.resolve(&endpoint.key).await {
            Ok(key) => key,
            Err(error) => {
                return PostResult::Failed {
                    reason: format!("the key of customer webhook {:?}: {error}", endpoint.id),
                    status: None,
                    retryable: true,
                };
            }
        };
        let events = job.mandrill_events();
        let signature = mandrill::signature(key.expose().as_bytes(), &endpoint.url, &events);
        let sent = self
            .http
            .post(&endpoint.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header("X-Mandrill-Signature", signature)
            .body(mandrill::form_body(&events))
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => PostResult::Delivered {
                status: response.status().as_u16(),
            },
            Ok(response) => PostResult::Failed {
                reason: format!("the endpoint answered {}", response.status()),
                status: Some(response.status().as_u16()),
                retryable: true,
            },
            Err(error) => PostResult::Failed {
                reason: if error.is_timeout() {
                    format!("no answer within {:?}", self.settings.timeout)
                } else if error.is_connect() {
                    "the endpoint could not be reached".to_owned()
                } else {
                    "the request failed".to_owned()
                },
                status: None,
                retryable: true,
            },
        }
    }

    /// Delivers one batch of jobs received from the customer-webhook queue.
    pub async fn process(&self, records: &[&Received]) -> WorkerReport {
        // Owned futures (a cloned worker is a few `Arc`s): borrowed ones would make the
        // caller's future not `Send` for every lifetime, which spawning it requires.
        let tasks: Vec<_> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (worker, record) = (self.clone(), (*r).clone());
                async move { (i, worker.handle(&record).await) }
            })
            .collect();
        let outcomes: Vec<(usize, Handled)> = futures::stream::iter(tasks)
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        let mut report = WorkerReport::default();
        let mut failed = vec![false; records.len()];
        for (i, handled) in outcomes {
            match handled {
                Handled::Delivered => report.delivered += 1,
                Handled::DeadLettered => report.dead_lettered += 1,
                Handled::Retry => {
                    report.retried += 1;
                    failed[i] = true;
                }
                Handled::Failed => failed[i] = true,
            }
        }
        report.failures = records
            .iter()
            .zip(failed)
            .filter(|(_, f)| *f)
            .map(|(r, _)| r.message_id.clone())
            .collect();
        report
    }

    async fn handle(&self, record: &Received) -> Handled {
        let job: Delivery = match serde_json::from_str(&record.body) {
            Ok(job) if matches!(job, Delivery { v: JOB_VERSION, .. }) => job,
            Ok(job) => {
                let reason = format!(
                    "job version {} is not read by this build (version {JOB_VERSION})",
                    job.v
                );
                return self.dead_letter(record, reason, None).await;
            }
            Err(error) => {
                return self
                    .dead_letter(record, format!("not a customer-webhook job: {error}"), None)
                    .await;
            }
        };
        match self.post(&job).await {
            PostResult::Delivered { status } => {
                tracing::info!(
                    endpoint = %job.endpoint,
                    events = job.events.len(),
                    status,
                    attempt = record.receive_count,
                    "customer webhook delivered"
                );
                Handled::Delivered
            }
            PostResult::Failed {
                reason,
                status,
                retryable,
            } if retryable && record.receive_count < self.settings.max_attempts => {
                let delay = self
                    .settings
                    .backoff
                    .delay(&record.message_id, record.receive_count);
                tracing::warn!(
                    endpoint = %job.endpoint,
                    events = job.events.len(),
                    status,
                    attempt = record.receive_count,
                    max_attempts = self.settings.max_attempts,
                    retry_in_s = delay.as_secs(),
                    error_kind = "customer_webhook",
                    %reason,
                    "customer webhook not delivered; retrying"
                );
                if let Err(error) = self
                    .jobs
                    .change_visibility(&record.receipt_handle, delay)
                    .await
                {
                    // It still comes back, after the queue's own visibility timeout.
                    tracing::warn!(%error, "the retry delay could not be set");
                }
                Handled::Retry
            }
            PostResult::Failed { reason, status, .. } => {
                let reason = if record.receive_count >= self.settings.max_attempts {
                    format!(
                        "gave up after {} attempts; last: {reason}",
                        record.receive_count
                    )
                } else {
                    reason
                };
                self.dead_letter(record, reason, status).await
            }
        }
    }

    async fn dead_letter(&self, record: &Received, reason: String, status: Option<u16>) -> Handled {
        let letter = DeadLetter {
            reason,
            attempts: record.receive_count,
            last_status: status,
            at: self.clock.now_ms(),
            job: serde_json::from_str(&record.body)
                .unwrap_or_else(|_| Value::String(record.body.clone())),
        };
        let body = match serde_json::to_string(&letter) {
            Ok(body) => body,
            Err(_) => return Handled::Failed,
        };
        match self.dead_letters.send(&body).await {
            Ok(_) => {
                tracing::error!(
                    queue_message_id = %record.message_id,
                    attempts = letter.attempts,
                    last_status = letter.last_status,
                    error_kind = "customer_webhook_dead_letter",
                    reason = %letter.reason,
                    "customer webhook job moved to the dead-letter queue"
                );
                Handled::DeadLettered
            }
            Err(error) => {
                tracing::error!(
                    queue_message_id = %record.message_id,
                    %error,
                    "the customer-webhook dead-letter queue refused the job; it is retried"
                );
                Handled::Failed
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    Delivered,
    Retry,
    DeadLettered,
    Failed,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::config::SecretRef;
    use crate::events::{DeliveryEvent, DeliveryKind, Outcome, RecipientStatus};
    use crate::pattern::SenderPattern;

    fn endpoint(id: &str, events: &[MandrillEvent], senders: &[&str]) -> CustomerWebhook {
        CustomerWebhook {
            id: id.into(),
            url: format!("https://hooks.example.com/{id}"),
            key: SecretRef::Inline("k".into()),
            events: events.to_vec(),
            senders: senders
                .iter()
                .map(|s| SenderPattern::parse(s).unwrap())
                .collect(),
            enabled: true,
        }
    }

    fn announcement(n: usize, kind: MandrillEvent, sender: Option<&str>) -> Announcement {
        Announcement {
            event: json!({"event": kind.as_str(), "_id": format!("e-{n}"), "msg": {}}),
            kind,
            sender: sender.map(str::to_owned),
            source: n,
        }
    }

    #[test]
    fn endpoints_get_only_the_events_and_senders_they_asked_for() {
        let all = endpoint("all", &MandrillEvent::ALL, &[]);
        let bounces = endpoint(
            "bounces",
            &[MandrillEvent::HardBounce, MandrillEvent::Reject],
            &["@clinic.example"],
        );
        let mut off = endpoint("off", &MandrillEvent::ALL, &[]);
        off.enabled = false;
        let list = [
            announcement(0, MandrillEvent::Send, Some("dr@clinic.example")),
            announcement(1, MandrillEvent::HardBounce, Some("dr@clinic.example")),
            announcement(2, MandrillEvent::HardBounce, Some("x@other.example")),
            announcement(3, MandrillEvent::Reject, None),
        ];
        let jobs = plan(&[all, bounces, off], &list, 7);
        assert_eq!(jobs.len(), 2, "the disabled endpoint gets nothing");
        assert_eq!(jobs[0].delivery.endpoint, "all");
        assert_eq!(jobs[0].sources, [0, 1, 2, 3]);
        assert_eq!(jobs[1].delivery.endpoint, "bounces");
        assert_eq!(
            jobs[1].sources,
            [1],
            "other senders and unknown senders are not this customer's"
        );
        assert_eq!(jobs[1].delivery.created_at, 7);
        assert!(is_job(&serde_json::to_string(&jobs[0].delivery).unwrap()));
    }

    #[test]
    fn batches_hold_at_most_a_thousand_events_and_stay_under_the_size_limit() {
        let all = endpoint("all", &MandrillEvent::ALL, &[]);
        let list: Vec<Announcement> = (0..2500)
            .map(|n| announcement(n, MandrillEvent::Open, Some("a@b.example")))
            .collect();
        let jobs = plan(std::slice::from_ref(&all), &list, 0);
        let sizes: Vec<usize> = jobs.iter().map(|j| j.delivery.events.len()).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        let ids: std::collections::BTreeSet<String> = jobs
            .iter()
            .flat_map(|j| j.delivery.events.iter())
            .map(|e| e["_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 2500, "every event once");

        let big = "x".repeat(30_000);
        let list: Vec<Announcement> = (0..20)
            .map(|n| {
                let mut a = announcement(n, MandrillEvent::Send, Some("a@b.example"));
                a.event["msg"]["metadata"] = json!({ "note": big });
                a
            })
            .collect();
        let jobs = plan(&[all], &list, 0);
        assert!(jobs.len() > 1);
        for job in &jobs {
            let body = serde_json::to_string(&job.delivery).unwrap();
            assert!(body.len() <= MAX_JOB_BYTES, "{}", body.len());
        }
        assert_eq!(
            jobs.iter().map(|j| j.delivery.events.len()).sum::<usize>(),
            20
        );
    }

    #[test]
    fn gateway_events_are_not_jobs() {
        assert!(!is_job(r#"{"v":1,"type":"outcome"}"#));
        assert!(!is_job("not json"));
        assert!(is_job(
            r#"{"v":1,"type":"customer_webhook","endpoint":"x","events":[],"created_at":0}"#
        ));
    }

    fn outcome(gateway_type: &str) -> OutcomeEvent {
        OutcomeEvent {
            message_id: "m-1".into(),
            sender: "dr@clinic.example".into(),
            subject: "Results".into(),
            campaign_id: None,
            user_id: None,
            tags: vec![],
            metadata: BTreeMap::new(),
            recipients: vec![crate::events::RecipientOutcome {
                address: "p@x.example".into(),
                kind: crate::events::RecipientKind::To,
                status: RecipientStatus::Sent,
            }],
            outcome: Outcome::Sent,
            gateway_id: Some("gw".into()),
            gateway_type: Some(gateway_type.into()),
            provider_message_id: None,
            attempts: vec![],
            reason: None,
            retry_at: None,
            at: 1_000,
        }
    }

    #[test]
    fn acceptance_is_announced_only_where_no_delivery_event_will_follow() {
        let applied = Applied::default();
        let reporting = DeliveryReporting::from_ids(["gw-mailgun-hooked"]);
        for (gateway, sends) in [
            ("gw-gmail", 1),
            ("gw-smtp", 1),
            ("gw-mailgun-without-webhook", 1),
            ("gw-mailgun-hooked", 0),
        ] {
            let mut e = outcome("mailgun");
            e.gateway_id = Some(gateway.into());
            let list = announcements(&GatewayEvent::Outcome(e), &applied, 4, &reporting);
            assert_eq!(list.len(), sends, "{gateway}");
            if let Some(a) = list.first() {
                assert_eq!((a.kind, a.source), (MandrillEvent::Send, 4));
                assert_eq!(a.sender.as_deref(), Some("dr@clinic.example"));
            }
        }
    }

    #[test]
    fn gateways_with_a_provider_webhook_report_delivery() {
        let config = crate::config::load_config(
            Some(
                &json!({"gateways": [
                    {"id": "hooked", "type": "mailgun", "mailgun": {"api_key": "env:K",
                        "domain": "mg.example.com", "webhook_signing_key": "env:S"},
                     "routing": {"can_route": ["*"]}},
                    {"id": "bare", "type": "mailgun", "mailgun": {"api_key": "env:K",
                        "domain": "mg.example.com"}, "routing": {"can_route": ["*"]}}
                ]})
                .to_string(),
            ),
            None,
            &|_: &str| None,
        )
        .unwrap()
        .config;
        let reporting = DeliveryReporting::of(&config);
        assert!(reporting.reports(Some("hooked")));
        assert!(!reporting.reports(Some("bare")));
        assert!(!reporting.reports(None));
    }

    #[test]
    fn a_provider_event_takes_its_message_details_from_the_record() {
        let event = DeliveryEvent {
            provider: "mailgun".into(),
            provider_event_id: "ev".into(),
            message_id: Some("m-1".into()),
            recipient: "p@x.example".into(),
            kind: DeliveryKind::Delivered,
            at: 5_000,
            diagnostic: None,
            url: None,
            stream: None,
        };
        let mut record = MessageRecord::new("m-1", 1_000);
        record.sender = "dr@clinic.example".into();
        record.subject = "Results".into();
        let applied = Applied {
            messages: [("m-1".to_owned(), record)].into(),
        };
        let none = DeliveryReporting::default();
        let list = announcements(&GatewayEvent::Delivery(event.clone()), &applied, 0, &none);
        assert_eq!(list[0].sender.as_deref(), Some("dr@clinic.example"));
        assert_eq!(list[0].event["msg"]["subject"], "Results");
        // Unknown to the record: announced without a sender.
        let list = announcements(
            &GatewayEvent::Delivery(event.clone()),
            &Applied::default(),
            0,
            &none,
        );
        assert_eq!(list[0].sender, None);
        // Without a message id: nothing to correlate on, not announced.
        let orphan = DeliveryEvent {
            message_id: None,
            ..event
        };
        assert!(announcements(&GatewayEvent::Delivery(orphan), &applied, 0, &none).is_empty());
    }
}
