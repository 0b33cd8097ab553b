//! The recorder (ARCHITECTURE §1): the only writer of the record of delivery. It consumes the events
//! queue (sender outcomes, normalised provider webhook events, health results, breaker
//! transitions), applies them to the record store and adds hard bounces, complaints and
//! unsubscribes to the suppression list the sender checks (complaints and unsubscribes for the
//! stream of their message, which the event carries; see [`crate::suppression`]).
//!
//! Every step is idempotent (records are upserts keyed by natural ids, a suppression is a put of
//! the same item), so a batch retried by SQS, whole or in part, changes nothing twice.
//!
//! # What fails a record
//! - A body that is not a gateway event (or of an unknown version): reported as a failure, so
//!   after the queue's `maxReceiveCount` it lands in the events dead-letter queue with its body
//!   intact for an operator; never silently dropped.
//! - The record store unavailable: every event of the batch is retried.
//! - An event the store can never hold ([`RecordError::Unrecordable`]): the batch is applied again
//!   event by event, so only that event is retried (and ends in the dead-letter queue) while the
//!   others are recorded.
//! - The suppression list unavailable: the delivery events that would suppress are retried.

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::CustomerWebhook;
use crate::customer_webhooks::{self, Announcement, DeliveryReporting, Worker, WorkerReport};
use crate::events::{DeliveryEvent, GatewayEvent, Outcome, OutcomeEvent, RecipientStatus};
use crate::message::parse_message;
use crate::queue::dead_letters::DeadLetter;
use crate::queue::{Queue, Received};
use crate::records::{Applied, RecordError, RecordReader, RecordWriter};
use crate::state::StateStore;
use crate::suppression::{self, Suppression, SuppressionSettings};

/// What happened to one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecorderReport {
    /// Queue message ids of the records to retry (batch item failures), in record order.
    pub failures: Vec<String>,
    /// Events applied to the record store.
    pub recorded: usize,
    /// Addresses added to the suppression list.
    pub suppressed: usize,
    /// Records whose body is not a gateway event.
    pub undecodable: usize,
    /// Mandrill events put on the customer-webhook queue (counted once per endpoint).
    pub announced: usize,
    /// Customer-webhook jobs of this batch (records from the customer-webhook queue).
    pub webhooks: WorkerReport,
}

/// What [`Recorder::park_dead_letters`] did with one batch of the outbound dead-letter queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParkReport {
    /// Queue message ids of the dead letters to retry (batch item failures), in record order.
    pub failures: Vec<String>,
    /// Copied to the parked queue (and so deleted from the DLQ by the event source).
    pub parked: usize,
    /// Recorded `failed` now: their record was not final.
    pub recorded: usize,
    /// Their record was already final (`sent`, `failed`, `rejected`): left as it is.
    pub already_final: usize,
    /// Bodies that are not a valid message: parked unrecorded (the sender would reject them).
    pub invalid: usize,
}

/// Customer-webhook delivery (ARCHITECTURE §2.5; see [`crate::customer_webhooks`]).
#[derive(Debug, Clone)]
pub struct CustomerWebhooks {
    endpoints: Arc<[CustomerWebhook]>,
    jobs: Arc<dyn Queue>,
    worker: Worker,
    reporting: DeliveryReporting,
}

impl CustomerWebhooks {
    /// Announcements to `endpoints` are queued on `jobs`; `worker` delivers the jobs;
    /// `reporting` names the gateways whose provider reports delivery (their acceptance is not
    /// announced as `send`; see [`DeliveryReporting`]).
    pub fn new(
        endpoints: Arc<[CustomerWebhook]>,
        jobs: Arc<dyn Queue>,
        worker: Worker,
        reporting: DeliveryReporting,
    ) -> Self {
        Self {
            endpoints,
            jobs,
            worker,
            reporting,
        }
    }
}

/// Receives a provider event whose message the record does not know yet (its outcome not
/// recorded) is retried before it is announced without a sender, when some endpoint filters
/// on senders: the sender's outcome normally arrives within seconds.
pub const RECEIVES_WAITING_FOR_OUTCOME: u32 = 3;

/// The recorder's dependencies.
#[derive(Debug, Clone)]
pub struct Recorder {
    records: Arc<dyn RecordWriter>,
    state: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
    webhooks: Option<CustomerWebhooks>,
    scopes: SuppressionSettings,
}

impl Recorder {
    /// A recorder writing to `records`, suppressing into `state`.
    pub fn new(
        records: Arc<dyn RecordWriter>,
        state: Arc<dyn StateStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            records,
            state,
            clock,
            webhooks: None,
            scopes: SuppressionSettings::default(),
        }
    }

    /// Suppresses complaints and unsubscribes as far as `settings` say (the config's
    /// `suppression` section; the default: the stream of the event's message).
    #[must_use]
    pub fn with_suppression_scopes(mut self, settings: SuppressionSettings) -> Self {
        self.scopes = settings;
        self
    }

    /// Also announces recorded events to customer webhooks, and delivers the jobs it receives.
    #[must_use]
    pub fn with_customer_webhooks(mut self, webhooks: CustomerWebhooks) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    /// Applies events that did not come through a queue (the local run's in-process events):
    /// records them, suppresses what they call for and queues their announcements.
    pub async fn apply_events(&self, events: &[GatewayEvent]) -> Result<(), RecordError> {
        let applied = self.records.apply(events).await?;
        let suppressions = self.suppressions(events.iter());
        if !suppressions.is_empty() {
            suppression::add_many(self.state.as_ref(), &suppressions)
                .await
                .map_err(|e| RecordError::Unavailable(Box::new(e)))?;
        }
        if let Some(webhooks) = &self.webhooks {
            let list: Vec<Announcement> = events
                .iter()
                .enumerate()
                .flat_map(|(i, e)| {
                    customer_webhooks::announcements(e, &applied, i, &webhooks.reporting)
                })
                .collect();
            for job in customer_webhooks::plan(&webhooks.endpoints, &list, self.clock.now_ms()) {
                let body = serde_json::to_string(&job.delivery)
                    .map_err(|e| RecordError::Unavailable(Box::new(e)))?;
                webhooks
                    .jobs
                    .send(&body)
                    .await
                    .map_err(|e| RecordError::Unavailable(Box::new(e)))?;
            }
        }
        Ok(())
    }

    /// Handles one batch of the outbound dead-letter queue: a message lands there when the
    /// sender could not give it an outcome on its last receive (it could not start, or crashed
    /// on it). Each one whose record is not final yet is recorded `failed` ("reached the
    /// dead-letter queue …"; customers get a `reject`), then copied, with its key written into
    /// the body ([`DeadLetter::body_to_resend`]), to `parked`, where it waits for
    /// `gateway dlq redrive` with a fresh 14 days of retention; the event source then deletes it
    /// from the DLQ. A record already final (the sender gave up and said so, or it was sent and
    /// only its delete was lost) is left as it is. What cannot be read, recorded or parked now is
    /// retried; recording it again finds it final.
    pub async fn park_dead_letters(
        &self,
        records: &[Received],
        reader: &dyn RecordReader,
        parked: &dyn Queue,
    ) -> ParkReport {
        let mut report = ParkReport::default();
        let now = self.clock.now_ms();
        let mut failed: Vec<&str> = Vec::new();
        let mut events = Vec::new();
        let mut owners = Vec::new();
        let mut ready: Vec<(&Received, String)> = Vec::new();
        for r in records {
            let letter = DeadLetter::of(r);
            let body = letter.body_to_resend();
            let message = match parse_message(body.as_bytes(), Some(&r.message_id)) {
                Ok(m) => m,
                Err(error) => {
                    tracing::error!(queue_message_id = %r.message_id, error_kind = "dead_letter", %error, "dead letter is not a valid message; parked without a record");
                    report.invalid += 1;
                    ready.push((r, body));
                    continue;
                }
            };
            match reader.message(message.id()).await {
                Ok(Some(record)) if record.status.is_final() => {
                    report.already_final += 1;
                    ready.push((r, body));
                }
                Ok(_) => {
                    let mut event = OutcomeEvent::of_message(
                        &message,
                        Outcome::Failed,
                        RecipientStatus::Failed,
                        now,
                    );
                    event.reason = Some(format!(
                        "reached the outbound dead-letter queue after {} receives without an outcome (the sender could not start or failed on it); `gateway dlq redrive` sends it again",
                        r.receive_count
                    ));
                    tracing::error!(message_id = %message.id(), receives = r.receive_count, "dead letter without an outcome; recorded as failed");
                    events.push(GatewayEvent::Outcome(event));
                    owners.push((r, body));
                }
                Err(error) => {
                    tracing::warn!(error_kind = "records", %error, "record store unavailable; the dead letter is retried");
                    failed.push(&r.message_id);
                }
            }
        }
        if !events.is_empty() {
            match self.apply_events(&events).await {
                Ok(()) => {
                    report.recorded = events.len();
                    ready.extend(owners);
                }
                Err(error) => {
                    tracing::warn!(error_kind = "records", %error, "dead letters not recorded; retried");
                    failed.extend(owners.iter().map(|(r, _)| r.message_id.as_str()));
                }
            }
        }
        for (r, body) in ready {
            match parked.send(&body).await {
                Ok(_) => report.parked += 1,
                Err(error) => {
                    tracing::warn!(queue_message_id = %r.message_id, error_kind = "dead_letter", %error, "dead letter not parked; retried");
                    failed.push(&r.message_id);
                }
            }
        }
        report.failures = records
            .iter()
            .filter(|r| failed.contains(&r.message_id.as_str()))
            .map(|r| r.message_id.clone())
            .collect();
        report
    }

    /// Processes one batch of the events queue or of the customer-webhook queue (the function
    /// consumes both; a record is routed by its body).
    pub async fn process(&self, records: &[Received]) -> RecorderReport {
        let (jobs, events): (Vec<&Received>, Vec<&Received>) = records
            .iter()
            .partition(|r| customer_webhooks::is_job(&r.body));
        let mut report = RecorderReport::default();
        let mut failed: Vec<&str> = Vec::new();
        if !jobs.is_empty() {
            match &self.webhooks {
                Some(webhooks) => {
                    report.webhooks = webhooks.worker.process(&jobs).await;
                }
                None => {
                    tracing::error!(
                        jobs = jobs.len(),
                        error_kind = "customer_webhook",
                        "customer-webhook jobs received but customer webhooks are not set up (CUSTOMER_WEBHOOK_QUEUE_URL); they are retried until the queue dead-letters them"
                    );
                    report.webhooks.failures = jobs.iter().map(|r| r.message_id.clone()).collect();
                }
            }
        }
        let retried = self.record(&events, &mut report).await;
        failed.extend(retried);
        let webhook_failures = std::mem::take(&mut report.webhooks.failures);
        failed.extend(webhook_failures.iter().map(String::as_str));
        // Failures in record order.
        report.failures = records
            .iter()
            .filter(|r| failed.contains(&r.message_id.as_str()))
            .map(|r| r.message_id.clone())
            .collect();
        report.webhooks.failures = webhook_failures;
        report
    }

    /// Records gateway events; returns the queue message ids to retry.
    async fn record<'r>(
        &self,
        records: &[&'r Received],
        report: &mut RecorderReport,
    ) -> Vec<&'r str> {
        let mut decoded: Vec<(&Received, GatewayEvent)> = Vec::with_capacity(records.len());
        let mut failed: Vec<&str> = Vec::new();
        for r in records {
            match serde_json::from_str::<GatewayEvent>(&r.body) {
                Ok(event) => decoded.push((r, event)),
                Err(error) => {
                    tracing::error!(
                        queue_message_id = %r.message_id,
                        error_kind = "undecodable_event",
                        %error,
                        "not a gateway event; it will reach the dead-letter queue"
                    );
                    report.undecodable += 1;
                    failed.push(&r.message_id);
                }
            }
        }
        if decoded.is_empty() {
            return failed;
        }

        let events: Vec<GatewayEvent> = decoded.iter().map(|(_, e)| e.clone()).collect();
        let mut recorded: Vec<bool> = vec![true; decoded.len()];
        let mut applied = Applied::default();
        match self.records.apply(&events).await {
            Ok(all) => {
                report.recorded = events.len();
                applied = all;
            }
            Err(error) if error.is_retryable() => {
                tracing::warn!(error_kind = "records", %error, "record store unavailable; the batch is retried");
                recorded.fill(false);
            }
            Err(error) => {
                tracing::warn!(error_kind = "records", %error, "an event cannot be recorded; isolating it");
                for (i, event) in events.iter().enumerate() {
                    match self.records.apply(std::slice::from_ref(event)).await {
                        Ok(one) => {
                            report.recorded += 1;
                            applied.messages.extend(one.messages);
                        }
                        Err(error) => {
                            tracing::error!(
                                queue_message_id = %decoded[i].0.message_id,
                                message_id = event.message_id().unwrap_or_default(),
                                error_kind = "records",
                                %error,
                                "event not recorded"
                            );
                            recorded[i] = false;
                        }
                    }
                }
            }
        }

        // Suppress only what was recorded: a retried event suppresses on its retry.
        let to_suppress: Vec<(usize, Suppression)> = decoded
            .iter()
            .enumerate()
            .filter(|(i, _)| recorded[*i])
            .filter_map(|(i, (_, e))| match e {
                GatewayEvent::Delivery(d) => self.suppression(d).map(|s| (i, s)),
                _ => None,
            })
            .collect();
        if !to_suppress.is_empty() {
            let list: Vec<Suppression> = to_suppress.iter().map(|(_, s)| s.clone()).collect();
            match suppression::add_many(self.state.as_ref(), &list).await {
                // The others were removed by an operator after their event: that stands.
                Ok(added) => report.suppressed = added,
                Err(error) => {
                    tracing::warn!(error_kind = "suppression", %error, "suppression list unavailable; those events are retried");
                    for (i, _) in &to_suppress {
                        recorded[*i] = false;
                    }
                }
            }
        }

        if let Some(webhooks) = &self.webhooks {
            self.announce(webhooks, &decoded, &applied, &mut recorded, report)
                .await;
        }

        for (i, (r, _)) in decoded.iter().enumerate() {
            if !recorded[i] {
                failed.push(&r.message_id);
            }
        }
        failed
    }

    /// Queues the customer announcements of the recorded events; a record whose announcements
    /// could not be queued (or should wait for its message's outcome) is marked for retry.
    async fn announce(
        &self,
        webhooks: &CustomerWebhooks,
        decoded: &[(&Received, GatewayEvent)],
        applied: &Applied,
        ok: &mut [bool],
        report: &mut RecorderReport,
    ) {
        let mut list: Vec<Announcement> = Vec::new();
        for (i, (r, event)) in decoded.iter().enumerate() {
            if !ok[i] {
                continue;
            }
            let found = customer_webhooks::announcements(event, applied, i, &webhooks.reporting);
            let waits = r.receive_count < RECEIVES_WAITING_FOR_OUTCOME
                && found.iter().any(|a| {
                    a.sender.is_none()
                        && webhooks.endpoints.iter().any(|e| {
                            !e.senders.is_empty() && e.enabled && e.events.contains(&a.kind)
                        })
                });
            if waits {
                tracing::info!(
                    queue_message_id = %r.message_id,
                    message_id = event.message_id().unwrap_or_default(),
                    "provider event recorded before its message's outcome; announcing it on a retry"
                );
                ok[i] = false;
                continue;
            }
            list.extend(found);
        }
        for job in customer_webhooks::plan(&webhooks.endpoints, &list, self.clock.now_ms()) {
            let sent = match serde_json::to_string(&job.delivery) {
                Ok(body) => send_with_retries(webhooks.jobs.as_ref(), &body).await,
                Err(e) => Err(e.to_string()),
            };
            match sent {
                Ok(_) => report.announced += job.delivery.events.len(),
                Err(error) => {
                    tracing::warn!(
                        endpoint = %job.delivery.endpoint,
                        events = job.delivery.events.len(),
                        error_kind = "customer_webhook",
                        %error,
                        "customer-webhook job not queued; its events are retried (recording them again changes nothing)"
                    );
                    for i in job.sources {
                        ok[i] = false;
                    }
                }
            }
        }
    }

    /// The suppression `d` calls for: a hard bounce for every stream, a complaint or an
    /// unsubscribe for its message's stream (as the settings say; every stream when the event
    /// does not carry its stream).
    fn suppression(&self, d: &DeliveryEvent) -> Option<Suppression> {
        Suppression::from_delivery(
            d.kind,
            d.stream,
            suppression::event_scope(self.scopes, d.kind),
            &d.recipient,
            &format!("{}:{}", d.provider, d.provider_event_id),
            self.clock.now_ms(),
        )
    }

    fn suppressions<'a>(&self, events: impl Iterator<Item = &'a GatewayEvent>) -> Vec<Suppression> {
        events
            .filter_map(|e| match e {
                GatewayEvent::Delivery(d) => self.suppression(d),
                _ => None,
            })
            .collect()
    }
}

/// Sends a job, retrying a transient failure twice at once: a failed job makes its source
/// records retry, which queues the jobs of the other endpoints again too (duplicates customers
/// de-duplicate on `_id`, but better avoided).
async fn send_with_retries(queue: &dyn Queue, body: &str) -> Result<String, String> {
    let mut tries = 0;
    loop {
        tries += 1;
        match queue.send(body).await {
            Ok(id) => return Ok(id),
            Err(e) if e.is_retryable() && tries < 3 => {
                tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::clock::ManualClock;
    use crate::events::DeliveryKind;
    use crate::message::Stream;
    use crate::records::{MemoryRecords, RecordReader};
    use crate::state::memory::MemoryStore;

    const T0: i64 = 1_795_860_000_000;

    fn delivery(id: &str, recipient: &str, kind: DeliveryKind) -> String {
        serde_json::to_string(&GatewayEvent::Delivery(DeliveryEvent {
            provider: "mailgun".into(),
            provider_event_id: id.into(),
            message_id: Some("m-1".into()),
            recipient: recipient.into(),
            kind,
            at: T0,
            diagnostic: None,
            url: None,
            stream: None,
        }))
        .unwrap()
    }

    fn received(n: usize, body: String) -> Received {
        Received {
            message_id: format!("q-{n}"),
            receipt_handle: format!("rh-{n}"),
            body,
            receive_count: 1,
            sent_at: T0,
        }
    }

    /// A record store that can be down, or refuse one message id for good.
    #[derive(Debug, Default)]
    struct Flaky {
        inner: MemoryRecords,
        down: AtomicBool,
    }

    #[async_trait]
    impl RecordWriter for Flaky {
        async fn apply(&self, events: &[GatewayEvent]) -> Result<Applied, RecordError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(RecordError::Unavailable("down".into()));
            }
            if events.iter().any(|e| e.message_id() == Some("too-big")) {
                return Err(RecordError::Unrecordable {
                    reason: "too big".into(),
                });
            }
            self.inner.apply(events).await
        }
    }

    fn recorder(records: Arc<Flaky>, state: Arc<MemoryStore>) -> Recorder {
        Recorder::new(records, state, Arc::new(ManualClock::new(T0)))
    }

    #[tokio::test]
    async fn bounces_complaints_and_unsubscribes_are_suppressed_and_recorded() {
        let records = Arc::new(Flaky::default());
        let state = Arc::new(MemoryStore::new());
        let r = recorder(Arc::clone(&records), Arc::clone(&state));
        let batch = [
            received(
                0,
                delivery("e1", "gone@example.org", DeliveryKind::HardBounce),
            ),
            received(
                1,
                delivery("e2", "angry@example.org", DeliveryKind::Complained),
            ),
            received(
                2,
                delivery("e3", "fine@example.org", DeliveryKind::Delivered),
            ),
            received(
                3,
                delivery("e4", "later@example.org", DeliveryKind::SoftBounce),
            ),
        ];
        let report = r.process(&batch).await;
        assert_eq!(report.failures, Vec::<String>::new());
        assert_eq!((report.recorded, report.suppressed), (4, 2));
        for (address, listed) in [
            ("GONE@example.org", true),
            ("angry@example.org", true),
            ("fine@example.org", false),
            ("later@example.org", false),
        ] {
            let found = suppression::lookup(state.as_ref(), address).await.unwrap();
            assert_eq!(found.is_some(), listed, "{address}");
        }
        let record = records.inner.message("m-1").await.unwrap().unwrap();
        assert_eq!(record.events.len(), 4);
    }

    /// A delivery event of a message of `stream` (`None`: the event does not say).
    fn delivery_in(
        id: &str,
        recipient: &str,
        kind: DeliveryKind,
        stream: Option<Stream>,
    ) -> String {
        let mut v: serde_json::Value =
            serde_json::from_str(&delivery(id, recipient, kind)).unwrap();
        if let Some(stream) = stream {
            v["stream"] = stream.as_str().into();
        }
        v.to_string()
    }

    #[tokio::test]
    async fn complaints_and_unsubscribes_suppress_their_stream_or_all_when_unknown_or_configured() {
        use crate::suppression::{EventScope, Scope};
        let bulk = Some(Stream::Bulk);
        let batch = [
            received(
                0,
                delivery_in("e1", "unsub@example.org", DeliveryKind::Unsubscribed, bulk),
            ),
            received(
                1,
                delivery_in(
                    "e2",
                    "spam@example.org",
                    DeliveryKind::Complained,
                    Some(Stream::Transactional),
                ),
            ),
            received(
                2,
                delivery_in(
                    "e3",
                    "unknown@example.org",
                    DeliveryKind::Unsubscribed,
                    None,
                ),
            ),
            received(
                3,
                delivery_in("e4", "bounce@example.org", DeliveryKind::HardBounce, bulk),
            ),
        ];
        let scopes_of = |state: Arc<MemoryStore>| async move {
            let mut all = Vec::new();
            for a in [
                "unsub@example.org",
                "spam@example.org",
                "unknown@example.org",
                "bounce@example.org",
            ] {
                let e = suppression::lookup(state.as_ref(), a)
                    .await
                    .unwrap()
                    .unwrap();
                all.push(e.suppressions.iter().map(|s| s.scope).collect::<Vec<_>>());
            }
            all
        };
        let state = Arc::new(MemoryStore::new());
        let report = recorder(Arc::new(Flaky::default()), Arc::clone(&state))
            .process(&batch)
            .await;
        assert_eq!(report.suppressed, 4);
        assert_eq!(
            scopes_of(state).await,
            [
                vec![Scope::Stream(Stream::Bulk)],
                vec![Scope::Stream(Stream::Transactional)],
                vec![Scope::All],
                vec![Scope::All],
            ]
        );
        // Configured to reach every stream, an unsubscribe does.
        let state = Arc::new(MemoryStore::new());
        let settings = SuppressionSettings {
            unsubscribe_scope: EventScope::All,
            ..SuppressionSettings::default()
        };
        recorder(Arc::new(Flaky::default()), Arc::clone(&state))
            .with_suppression_scopes(settings)
            .process(&batch)
            .await;
        assert_eq!(
            scopes_of(state).await,
            [
                vec![Scope::All],
                vec![Scope::Stream(Stream::Transactional)],
                vec![Scope::All],
                vec![Scope::All],
            ]
        );
    }

    #[tokio::test]
    async fn an_undecodable_body_fails_alone_and_a_store_outage_fails_everything() {
        let records = Arc::new(Flaky::default());
        let state = Arc::new(MemoryStore::new());
        let r = recorder(Arc::clone(&records), state);
        let batch = [
            received(0, "not an event".into()),
            received(1, delivery("e1", "a@example.org", DeliveryKind::Delivered)),
        ];
        let report = r.process(&batch).await;
        assert_eq!(report.failures, ["q-0"]);
        assert_eq!(report.undecodable, 1);
        records.down.store(true, Ordering::SeqCst);
        let report = r.process(&batch).await;
        assert_eq!(report.failures, ["q-0", "q-1"]);
    }

    #[tokio::test]
    async fn an_unrecordable_event_is_isolated_from_the_rest_of_its_batch() {
        let records = Arc::new(Flaky::default());
        let r = recorder(Arc::clone(&records), Arc::new(MemoryStore::new()));
        let mut bad: serde_json::Value =
            serde_json::from_str(&delivery("e9", "x@example.org", DeliveryKind::Delivered))
                .unwrap();
        bad["message_id"] = "too-big".into();
        let batch = [
            received(0, delivery("e1", "a@example.org", DeliveryKind::Delivered)),
            received(1, bad.to_string()),
        ];
        let report = r.process(&batch).await;
        assert_eq!(report.failures, ["q-1"]);
        assert_eq!(report.recorded, 1);
        assert!(records.inner.message("m-1").await.unwrap().is_some());
    }

    fn with_hooks(records: Arc<Flaky>, jobs: Arc<crate::queue::memory::MemoryQueue>) -> Recorder {
        use crate::pattern::SenderPattern;
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
        let endpoint = |id: &str, senders: &[&str]| CustomerWebhook {
            id: id.into(),
            url: format!("http://127.0.0.1:9/{id}"),
            key: crate::config::SecretRef::Inline("k".into()),
            events: crate::mandrill::MandrillEvent::ALL.to_vec(),
            senders: senders
                .iter()
                .map(|s| SenderPattern::parse(s).unwrap())
                .collect(),
            enabled: true,
        };
        let endpoints: Arc<[CustomerWebhook]> = vec![
            endpoint("all", &[]),
            endpoint("clinic", &["@clinic.example"]),
        ]
        .into();
        let worker = Worker::new(
            Arc::clone(&endpoints),
            Arc::new(crate::secrets::SecretResolver::new(Arc::clone(&clock))),
            Arc::clone(&jobs) as _,
            Arc::new(crate::queue::memory::MemoryQueue::new(Arc::clone(&clock))),
            Arc::clone(&clock),
            customer_webhooks::WorkerSettings::default(),
        )
        .unwrap();
        Recorder::new(records, Arc::new(MemoryStore::new()), clock).with_customer_webhooks(
            CustomerWebhooks::new(endpoints, jobs, worker, DeliveryReporting::default()),
        )
    }

    fn job_endpoints(jobs: &crate::queue::memory::MemoryQueue) -> Vec<String> {
        jobs.bodies()
            .iter()
            .map(|b| {
                let job: customer_webhooks::Delivery = serde_json::from_str(b).unwrap();
                job.endpoint
            })
            .collect()
    }

    /// A provider event recorded before its message's outcome is retried (recorded already)
    /// so the sender-filtered endpoint gets it once the sender is known; after a few receives
    /// it goes to the unfiltered endpoints without waiting longer.
    #[tokio::test]
    async fn a_provider_event_ahead_of_its_outcome_waits_for_the_sender() {
        let clock = ManualClock::new(T0);
        let jobs = Arc::new(crate::queue::memory::MemoryQueue::new(Arc::new(clock)));
        let records = Arc::new(Flaky::default());
        let r = with_hooks(Arc::clone(&records), Arc::clone(&jobs));
        let early = received(0, delivery("e1", "p@x.example", DeliveryKind::Delivered));
        let report = r.process(std::slice::from_ref(&early)).await;
        assert_eq!(report.failures, ["q-0"]);
        assert_eq!(report.recorded, 1, "recorded even while it waits");
        assert!(jobs.is_empty());

        let late = Received {
            receive_count: RECEIVES_WAITING_FOR_OUTCOME,
            ..early.clone()
        };
        let report = r.process(std::slice::from_ref(&late)).await;
        assert_eq!(report.failures, Vec::<String>::new());
        assert_eq!(job_endpoints(&jobs), ["all"], "the sender is still unknown");

        // Once the outcome is recorded the sender is known: both endpoints at once.
        let jobs = Arc::new(crate::queue::memory::MemoryQueue::new(Arc::new(
            ManualClock::new(T0),
        )));
        let r = with_hooks(Arc::clone(&records), Arc::clone(&jobs));
        let outcome = crate::events::OutcomeEvent {
            message_id: "m-1".into(),
            sender: "dr@clinic.example".into(),
            subject: "s".into(),
            campaign_id: None,
            user_id: None,
            tags: vec![],
            metadata: std::collections::BTreeMap::new(),
            recipients: vec![],
            outcome: crate::events::Outcome::Sent,
            gateway_id: Some("gw".into()),
            gateway_type: Some("mailgun".into()),
            provider_message_id: None,
            attempts: vec![],
            reason: None,
            retry_at: None,
            at: T0,
        };
        let batch = [
            received(
                1,
                serde_json::to_string(&GatewayEvent::Outcome(outcome)).unwrap(),
            ),
            early,
        ];
        let report = r.process(&batch).await;
        assert_eq!(report.failures, Vec::<String>::new());
        assert_eq!(job_endpoints(&jobs), ["all", "clinic"]);
    }
}
