//! The record-of-delivery ports: [`RecordWriter`] (the recorder applies events) and
//! [`RecordReader`] (the status API reads a message's record), with the in-memory adapter
//! [`MemoryRecords`]. The MySQL adapter implements the same traits over the tables of
//! ARCHITECTURE §2.4.
//!
//! # Idempotency and order
//! SQS delivers events at least once and in any order, so applying is idempotent and
//! order-tolerant by construction:
//! - a message is keyed by its id; a recipient by (message id, lower-cased address); an attempt
//!   by (message id, gateway, `at`); a delivery event by (provider, provider event id);
//! - a recipient's status is the [`merge`] of every status seen for it;
//! - a message's status is the highest of every outcome seen, in the order
//!   `queued < deferred < failed < rejected < sent`: a late `deferred` never hides `sent`, and a
//!   message any provider accepted is `sent` whatever else was reported. Its gateway, provider
//!   id and reason come from the event that set that status (the latest one on a tie);
//! - opens and clicks count distinct provider events, so a replayed webhook counts once.
//!
//! A delivery event may arrive before its message's outcome: the message record is then
//! created in status `queued` with only that recipient, and completed when the outcome arrives.
//! A delivery event without a message id is kept (unique on its provider id) but belongs to no
//! message.

pub mod activity;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "mysql")]
pub mod retention;
pub mod search;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::EpochMillis;
use crate::config_audit::{self, AuditRow, RoutingRule};
use crate::events::{
    AttemptRecord, BreakerEvent, DeliveryEvent, DeliveryKind, GatewayEvent, HealthEvent, Outcome,
    OutcomeEvent, RecipientKind, RecipientStatus, merge,
};

/// A message's status (`messages.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Known only from a delivery event so far.
    Queued,
    /// Deferred; will be retried.
    Deferred,
    /// Failed permanently.
    Failed,
    /// Refused before sending.
    Rejected,
    /// Accepted by a provider.
    Sent,
}

impl MessageStatus {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Deferred => "deferred",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Sent => "sent",
        }
    }

    /// True for `sent`, `failed` and `rejected`: no later outcome of the sender changes it
    /// (but a redrive after a failure may still end in `sent`).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Failed | Self::Rejected | Self::Sent)
    }

    /// Precedence when outcomes conflict (higher wins); see the module docs.
    pub fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Deferred => 1,
            Self::Failed => 2,
            Self::Rejected => 3,
            Self::Sent => 4,
        }
    }
}

impl From<Outcome> for MessageStatus {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Sent => Self::Sent,
            Outcome::Deferred => Self::Deferred,
            Outcome::Failed => Self::Failed,
            Outcome::Rejected => Self::Rejected,
        }
    }
}

/// One recipient of a message (`message_recipients` row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientRecord {
    /// The address as first seen.
    pub address: String,
    /// To, Cc or Bcc (`to` until an outcome event says otherwise).
    pub kind: RecipientKind,
    /// Merged delivery status.
    pub status: RecipientStatus,
    /// The diagnostic of the most significant bounce or rejection event (highest status, then
    /// latest), independent of the order the events arrived in.
    pub bounce_reason: Option<String>,
    /// Distinct open events.
    pub opens: u32,
    /// Distinct click events.
    pub clicks: u32,
}

/// The record of one message, as the status API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Message id.
    pub message_id: String,
    /// Merged status.
    pub status: MessageStatus,
    /// Sender (empty until an outcome event arrives).
    pub sender: String,
    /// Subject (empty until an outcome event arrives).
    pub subject: String,
    /// Campaign id.
    pub campaign_id: Option<String>,
    /// User id.
    pub user_id: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Gateway of the outcome that set `status`.
    pub gateway_id: Option<String>,
    /// Its type.
    pub gateway_type: Option<String>,
    /// The provider's message id.
    pub provider_message_id: Option<String>,
    /// Reason of the outcome that set `status` (`last_error`).
    pub last_error: Option<String>,
    /// Retry time of a deferred message (epoch ms).
    pub retry_at: Option<EpochMillis>,
    /// Recipients ordered by kind (to, cc, bcc), then lower-cased address: an order that does
    /// not depend on the order events arrived in.
    pub recipients: Vec<RecipientRecord>,
    /// Provider calls, ordered by `at` then gateway.
    pub attempts: Vec<AttemptRecord>,
    /// Delivery events, ordered by `at` then provider event id.
    pub events: Vec<DeliveryEvent>,
    /// Earliest event time seen (epoch ms).
    pub created_at: EpochMillis,
    /// Latest event time seen (epoch ms).
    pub updated_at: EpochMillis,
    /// `at` of the outcome that set `status` (`None` while `queued`); breaks ties between
    /// outcomes of the same rank (the later wins).
    pub status_at: Option<EpochMillis>,
}

impl MessageRecord {
    pub(crate) fn new(message_id: &str, at: EpochMillis) -> Self {
        Self {
            message_id: message_id.to_owned(),
            status: MessageStatus::Queued,
            sender: String::new(),
            subject: String::new(),
            campaign_id: None,
            user_id: None,
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            gateway_id: None,
            gateway_type: None,
            provider_message_id: None,
            last_error: None,
            retry_at: None,
            recipients: Vec::new(),
            attempts: Vec::new(),
            events: Vec::new(),
            created_at: at,
            updated_at: at,
            status_at: None,
        }
    }

    /// The recipient with this address (compared case-insensitively).
    pub fn recipient(&self, address: &str) -> Option<&RecipientRecord> {
        self.recipients
            .iter()
            .find(|r| r.address.eq_ignore_ascii_case(address))
    }

    fn recipient_mut(&mut self, address: &str, kind: RecipientKind) -> &mut RecipientRecord {
        let index = match self
            .recipients
            .iter()
            .position(|r| r.address.eq_ignore_ascii_case(address))
        {
            Some(i) => i,
            None => {
                self.recipients.push(RecipientRecord {
                    address: address.to_owned(),
                    kind,
                    status: RecipientStatus::Pending,
                    bounce_reason: None,
                    opens: 0,
                    clicks: 0,
                });
                self.recipients.len() - 1
            }
        };
        &mut self.recipients[index]
    }

    fn sort_recipients(&mut self) {
        self.recipients
            .sort_by_cached_key(|r| (r.kind, r.address.to_ascii_lowercase()));
    }

    fn touch(&mut self, at: EpochMillis) {
        self.created_at = self.created_at.min(at);
        self.updated_at = self.updated_at.max(at);
    }

    fn apply_outcome(&mut self, e: &OutcomeEvent) {
        self.touch(e.at);
        // Message fields are the same in every outcome of one message, but a delivery event
        // may have created the record first.
        self.sender.clone_from(&e.sender);
        self.subject.clone_from(&e.subject);
        self.campaign_id.clone_from(&e.campaign_id);
        self.user_id.clone_from(&e.user_id);
        self.tags.clone_from(&e.tags);
        self.metadata.clone_from(&e.metadata);

        let incoming = MessageStatus::from(e.outcome);
        let wins = match self.status_at {
            None => true,
            Some(at) => (incoming.rank(), e.at) >= (self.status.rank(), at),
        };
        if wins {
            self.status = incoming;
            self.status_at = Some(e.at);
            self.gateway_id.clone_from(&e.gateway_id);
            self.gateway_type.clone_from(&e.gateway_type);
            self.provider_message_id.clone_from(&e.provider_message_id);
            self.last_error.clone_from(&e.reason);
            self.retry_at = e.retry_at;
        }

        for r in &e.recipients {
            let record = self.recipient_mut(&r.address, r.kind);
            // The message's own spelling and kind win over a webhook's.
            record.address.clone_from(&r.address);
            record.kind = r.kind;
            record.status = merge(record.status, r.status);
        }
        self.sort_recipients();
        for a in &e.attempts {
            let known = self
                .attempts
                .iter()
                .any(|x| x.gateway == a.gateway && x.at == a.at);
            if !known {
                self.attempts.push(a.clone());
            }
        }
        self.attempts
            .sort_by(|x, y| (x.at, &x.gateway).cmp(&(y.at, &y.gateway)));
    }

    /// Applies a delivery event not seen before (the caller checks uniqueness).
    fn apply_delivery(&mut self, e: &DeliveryEvent) {
        self.touch(e.at);
        let record = self.recipient_mut(&e.recipient, RecipientKind::To);
        record.status = merge(record.status, e.kind.status());
        match e.kind {
            DeliveryKind::Opened => record.opens = record.opens.saturating_add(1),
            DeliveryKind::Clicked => record.clicks = record.clicks.saturating_add(1),
            _ => {}
        }
        self.sort_recipients();
        self.events.push(e.clone());
        self.events.sort_by(|x, y| {
            (x.at, &x.provider, &x.provider_event_id).cmp(&(
                y.at,
                &y.provider,
                &y.provider_event_id,
            ))
        });
        // Derived from all events rather than overwritten by the newest arrival, so the
        // result does not depend on arrival order.
        let reason = self
            .events
            .iter()
            .filter(|x| x.recipient.eq_ignore_ascii_case(&e.recipient))
            .filter(|x| {
                matches!(
                    x.kind,
                    DeliveryKind::HardBounce | DeliveryKind::SoftBounce | DeliveryKind::Rejected
                )
            })
            .filter(|x| x.diagnostic.is_some())
            .max_by(|x, y| {
                (x.kind.status().rank(), x.at, &x.provider_event_id).cmp(&(
                    y.kind.status().rank(),
                    y.at,
                    &y.provider_event_id,
                ))
            })
            .and_then(|x| x.diagnostic.clone());
        if let Some(record) = self
            .recipients
            .iter_mut()
            .find(|r| r.address.eq_ignore_ascii_case(&e.recipient))
        {
            record.bounce_reason = reason;
        }
    }
}

/// Why the record store could not apply or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The database could not be reached or failed transiently (deadlock, timeout).
    #[error("record store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The event cannot be stored as it is (a value out of the column's range); retrying will
    /// not help, so it goes to the dead-letter queue.
    #[error("event cannot be recorded: {reason}")]
    Unrecordable {
        /// What is wrong, without personal data.
        reason: String,
    },
}

impl RecordError {
    /// True when applying or reading again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// What one [`RecordWriter::apply`] call left in the record: the merged record of every message
/// its events named, keyed by message id. The recorder reads the subject, sender, tags and
/// metadata of a provider event's message from here to announce it to customers, without a
/// second read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// The records of the messages the events named, after the events.
    pub messages: BTreeMap<String, MessageRecord>,
}

/// Applies events to the record of delivery.
#[async_trait]
pub trait RecordWriter: Send + Sync + std::fmt::Debug {
    /// Applies the events. Idempotent and order-tolerant (see the module docs): applying the
    /// same events again, or in another order, gives the same records. On error some events may
    /// have been applied; applying them all again is safe.
    async fn apply(&self, events: &[GatewayEvent]) -> Result<Applied, RecordError>;
}

/// Reads the record of delivery.
#[async_trait]
pub trait RecordReader: Send + Sync + std::fmt::Debug {
    /// The record of one message, `None` when nothing is known about it.
    async fn message(&self, id: &str) -> Result<Option<MessageRecord>, RecordError>;

    /// Up to `limit` records, most recently updated first (ties by message id).
    async fn recent(&self, limit: usize) -> Result<Vec<MessageRecord>, RecordError>;
}

#[derive(Debug, Default)]
struct Tables {
    messages: BTreeMap<String, MessageRecord>,
    /// (provider, provider event id) of every delivery event applied.
    delivery_ids: BTreeSet<(String, String)>,
    /// Delivery events naming no message.
    unattached: Vec<DeliveryEvent>,
    /// Latest health result per gateway.
    health: BTreeMap<String, HealthEvent>,
    /// Breaker transitions, unique on (gateway, at, from, to).
    breaker: Vec<BreakerEvent>,
    /// `gateway_config_audit`, in insertion order.
    config_audit: Vec<AuditRow>,
    /// Each gateway's latest audited config.
    config_state: BTreeMap<String, serde_json::Value>,
    /// `at` of the latest config event applied.
    config_at: EpochMillis,
    /// `gateway_routing_rules`.
    routing_rules: Vec<RoutingRule>,
}

/// In-memory [`RecordWriter`] + [`RecordReader`] (tests, local run).
#[derive(Debug, Default)]
pub struct MemoryRecords {
    tables: Mutex<Tables>,
}

impl MemoryRecords {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// The latest health result per gateway id.
    pub fn health(&self) -> BTreeMap<String, HealthEvent> {
        self.lock().health.clone()
    }

    /// Breaker transitions, ordered by time.
    pub fn breaker_transitions(&self) -> Vec<BreakerEvent> {
        self.lock().breaker.clone()
    }

    /// Delivery events that named no message.
    pub fn unattached_delivery_events(&self) -> Vec<DeliveryEvent> {
        self.lock().unattached.clone()
    }

    /// `gateway_config_audit`, oldest first.
    pub fn config_audit(&self) -> Vec<AuditRow> {
        self.lock().config_audit.clone()
    }

    /// `gateway_routing_rules`.
    pub fn routing_rules(&self) -> Vec<RoutingRule> {
        self.lock().routing_rules.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // Applying an event cannot panic, so a poisoned lock (a panicking test thread) still
        // guards consistent tables.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Tables {
    fn apply(&mut self, event: &GatewayEvent) {
        match event {
            GatewayEvent::Outcome(e) => self
                .messages
                .entry(e.message_id.clone())
                .or_insert_with(|| MessageRecord::new(&e.message_id, e.at))
                .apply_outcome(e),
            GatewayEvent::Delivery(e) => {
                let id = (e.provider.clone(), e.provider_event_id.clone());
                if !self.delivery_ids.insert(id) {
                    return;
                }
                match &e.message_id {
                    Some(message_id) => self
                        .messages
                        .entry(message_id.clone())
                        .or_insert_with(|| MessageRecord::new(message_id, e.at))
                        .apply_delivery(e),
                    None => self.unattached.push(e.clone()),
                }
            }
            GatewayEvent::Health(e) => {
                let newer = self
                    .health
                    .get(&e.gateway_id)
                    .is_none_or(|known| e.at >= known.at);
                if newer {
                    self.health.insert(e.gateway_id.clone(), e.clone());
                }
            }
            GatewayEvent::Breaker(e) => {
                let known = self.breaker.iter().any(|b| {
                    b.gateway_id == e.gateway_id && b.at == e.at && b.from == e.from && b.to == e.to
                });
                if !known {
                    self.breaker.push(e.clone());
                    self.breaker
                        .sort_by(|x, y| (x.at, &x.gateway_id).cmp(&(y.at, &y.gateway_id)));
                }
            }
            GatewayEvent::Config(e) => {
                if e.at < self.config_at {
                    return;
                }
                let rows = config_audit::changes(&self.config_state, e);
                config_audit::after(&mut self.config_state, &rows);
                self.config_audit.extend(rows);
                self.routing_rules.clone_from(&e.rules);
                self.config_at = e.at;
            }
        }
    }
}

#[async_trait]
impl RecordWriter for MemoryRecords {
    async fn apply(&self, events: &[GatewayEvent]) -> Result<Applied, RecordError> {
        let mut tables = self.lock();
        for event in events {
            tables.apply(event);
        }
        let messages = events
            .iter()
            .filter_map(GatewayEvent::message_id)
            .filter_map(|id| {
                let record = tables.messages.get(id)?;
                Some((id.to_owned(), record.clone()))
            })
            .collect();
        Ok(Applied { messages })
    }
}

#[async_trait]
impl activity::ActivityReader for MemoryRecords {
    async fn activity(
        &self,
        from: EpochMillis,
        to: EpochMillis,
    ) -> Result<BTreeMap<String, activity::GatewayActivity>, RecordError> {
        let tables = self.lock();
        Ok(activity::activity_of(
            tables.messages.values(),
            &tables.breaker,
            from,
            to,
        ))
    }

    async fn hourly(
        &self,
        from: EpochMillis,
    ) -> Result<BTreeMap<String, Vec<activity::HourActivity>>, RecordError> {
        Ok(activity::hourly_of(self.lock().messages.values(), from))
    }

    async fn recent_failures(&self, limit: usize) -> Result<Vec<MessageRecord>, RecordError> {
        let tables = self.lock();
        let mut records: Vec<&MessageRecord> = tables
            .messages
            .values()
            .filter(|r| activity::is_failure(r))
            .collect();
        // By the time of the failure: a later provider event must not bring it back up.
        records.sort_by(|x, y| {
            let at = |r: &MessageRecord| r.status_at.unwrap_or(r.updated_at);
            at(y)
                .cmp(&at(x))
                .then_with(|| x.message_id.cmp(&y.message_id))
        });
        Ok(records.into_iter().take(limit).cloned().collect())
    }
}

#[async_trait]
impl RecordReader for MemoryRecords {
    async fn message(&self, id: &str) -> Result<Option<MessageRecord>, RecordError> {
        Ok(self.lock().messages.get(id).cloned())
    }

    async fn recent(&self, limit: usize) -> Result<Vec<MessageRecord>, RecordError> {
        let tables = self.lock();
        let mut records: Vec<&MessageRecord> = tables.messages.values().collect();
        records.sort_by(|x, y| {
            y.updated_at
                .cmp(&x.updated_at)
                .then_with(|| x.message_id.cmp(&y.message_id))
        });
        Ok(records.into_iter().take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::breaker::{Phase, TransitionReason};
    use crate::events::{HealthStatus, OutcomeClass, RecipientOutcome, SinkError};

    use super::*;

    const AT: EpochMillis = 1_795_910_000_000;
    const ID: &str = "inv-7";

    fn attempt(gateway: &str, class: OutcomeClass, at: EpochMillis) -> AttemptRecord {
        AttemptRecord {
            gateway: gateway.into(),
            gateway_type: "mailgun".into(),
            class,
            http_status: None,
            latency_ms: 50,
            error: None,
            at,
        }
    }

    fn outcome(outcome: Outcome, status: RecipientStatus, at: EpochMillis) -> GatewayEvent {
        let (gateway, attempts, reason, retry_at, provider_id) = match outcome {
            Outcome::Sent => (
                "mailgun-primary",
                vec![attempt("mailgun-primary", OutcomeClass::Ok, at - 10)],
                None,
                None,
                Some("mg-1".to_owned()),
            ),
            _ => (
                "sendgrid-main",
                vec![attempt("sendgrid-main", OutcomeClass::Unavailable, at - 10)],
                Some("provider unavailable".to_owned()),
                Some(at + 30_000),
                None,
            ),
        };
        GatewayEvent::Outcome(OutcomeEvent {
            message_id: ID.into(),
            sender: "ada@clinic.example".into(),
            subject: "Your appointment".into(),
            campaign_id: None,
            user_id: Some("u-42".into()),
            tags: vec!["appointment".into()],
            metadata: BTreeMap::new(),
            recipients: vec![
                RecipientOutcome {
                    address: "Patient@Example.org".into(),
                    kind: RecipientKind::To,
                    status,
                },
                RecipientOutcome {
                    address: "copy@example.org".into(),
                    kind: RecipientKind::Cc,
                    status,
                },
            ],
            outcome,
            gateway_id: Some(gateway.into()),
            gateway_type: Some("mailgun".into()),
            provider_message_id: provider_id,
            attempts,
            reason,
            retry_at,
            at,
        })
    }

    fn delivery(
        event_id: &str,
        recipient: &str,
        kind: DeliveryKind,
        at: EpochMillis,
        diagnostic: Option<&str>,
    ) -> GatewayEvent {
        GatewayEvent::Delivery(DeliveryEvent {
            provider: "mailgun".into(),
            provider_event_id: event_id.into(),
            message_id: Some(ID.into()),
            recipient: recipient.into(),
            kind,
            at,
            diagnostic: diagnostic.map(str::to_owned),
            url: None,
            stream: None,
        })
    }

    /// A deferral, the successful retry, then the provider's reports.
    fn history() -> Vec<GatewayEvent> {
        vec![
            outcome(Outcome::Deferred, RecipientStatus::Deferred, AT),
            outcome(Outcome::Sent, RecipientStatus::Sent, AT + 30_000),
            delivery(
                "d-1",
                "patient@example.org",
                DeliveryKind::Delivered,
                AT + 31_000,
                None,
            ),
            delivery(
                "o-1",
                "patient@example.org",
                DeliveryKind::Opened,
                AT + 90_000,
                None,
            ),
            delivery(
                "b-1",
                "copy@example.org",
                DeliveryKind::HardBounce,
                AT + 32_000,
                Some("550 5.1.1 no such user"),
            ),
        ]
    }

    async fn record_of(events: &[GatewayEvent]) -> MessageRecord {
        let records = MemoryRecords::new();
        records.apply(events).await.unwrap();
        records.message(ID).await.unwrap().unwrap()
    }

    fn permutations(items: &[GatewayEvent]) -> Vec<Vec<GatewayEvent>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut all = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut tail in permutations(&rest) {
                tail.insert(0, first.clone());
                all.push(tail);
            }
        }
        all
    }

    #[tokio::test]
    async fn history_ends_in_the_right_state() {
        let record = record_of(&history()).await;
        assert_eq!(record.status, MessageStatus::Sent);
        assert_eq!(record.gateway_id.as_deref(), Some("mailgun-primary"));
        assert_eq!(record.provider_message_id.as_deref(), Some("mg-1"));
        assert_eq!(
            (record.last_error.as_deref(), record.retry_at),
            (None, None)
        );
        assert_eq!(
            record
                .attempts
                .iter()
                .map(|a| (a.gateway.as_str(), a.class))
                .collect::<Vec<_>>(),
            [
                ("sendgrid-main", OutcomeClass::Unavailable),
                ("mailgun-primary", OutcomeClass::Ok)
            ]
        );
        let patient = record.recipient("patient@example.org").unwrap();
        assert_eq!(patient.address, "Patient@Example.org");
        assert_eq!(
            (patient.status, patient.opens),
            (RecipientStatus::Delivered, 1)
        );
        let copy = record.recipient("COPY@example.org").unwrap();
        assert_eq!(
            (copy.kind, copy.status),
            (RecipientKind::Cc, RecipientStatus::Bounced)
        );
        assert_eq!(
            copy.bounce_reason.as_deref(),
            Some("550 5.1.1 no such user")
        );
        assert_eq!(record.events.len(), 3);
        assert_eq!((record.created_at, record.updated_at), (AT, AT + 90_000));
    }

    #[tokio::test]
    async fn every_arrival_order_gives_the_same_record() {
        let expected = record_of(&history()).await;
        let orders = permutations(&history());
        assert_eq!(orders.len(), 120);
        for order in orders {
            assert_eq!(record_of(&order).await, expected, "{order:#?}");
        }
    }

    #[tokio::test]
    async fn applying_the_same_events_twice_changes_nothing() {
        let records = MemoryRecords::new();
        records.apply(&history()).await.unwrap();
        let once = records.message(ID).await.unwrap();
        let recent_once = records.recent(10).await.unwrap();
        records.apply(&history()).await.unwrap();
        records.apply(&history()[3..]).await.unwrap();
        assert_eq!(records.message(ID).await.unwrap(), once);
        assert_eq!(records.recent(10).await.unwrap(), recent_once);
        assert_eq!(
            once.unwrap()
                .recipient("patient@example.org")
                .unwrap()
                .opens,
            1
        );
    }

    #[tokio::test]
    async fn a_late_deferral_never_hides_a_sent_message() {
        let events = [
            outcome(Outcome::Sent, RecipientStatus::Sent, AT + 30_000),
            outcome(Outcome::Deferred, RecipientStatus::Deferred, AT),
        ];
        let record = record_of(&events).await;
        assert_eq!(record.status, MessageStatus::Sent);
        assert_eq!(record.retry_at, None);
        assert_eq!(
            record.recipient("patient@example.org").unwrap().status,
            RecipientStatus::Sent
        );
    }

    #[tokio::test]
    async fn a_webhook_before_the_outcome_creates_a_queued_record_that_the_outcome_completes() {
        let records = MemoryRecords::new();
        records
            .apply(&[delivery(
                "d-1",
                "patient@example.org",
                DeliveryKind::Delivered,
                AT + 31_000,
                None,
            )])
            .await
            .unwrap();
        let early = records.message(ID).await.unwrap().unwrap();
        assert_eq!(
            (early.status, early.sender.as_str()),
            (MessageStatus::Queued, "")
        );
        assert_eq!(early.recipients.len(), 1);

        records
            .apply(&[outcome(Outcome::Sent, RecipientStatus::Sent, AT + 30_000)])
            .await
            .unwrap();
        let record = records.message(ID).await.unwrap().unwrap();
        assert_eq!(record.status, MessageStatus::Sent);
        assert_eq!(record.sender, "ada@clinic.example");
        assert_eq!(record.recipients.len(), 2);
        assert_eq!(
            record.recipient("patient@example.org").unwrap().status,
            RecipientStatus::Delivered
        );
    }

    #[tokio::test]
    async fn distinct_opens_and_clicks_count_but_replays_do_not() {
        let records = MemoryRecords::new();
        let r = "patient@example.org";
        let events = [
            delivery("o-1", r, DeliveryKind::Opened, AT, None),
            delivery("o-1", r, DeliveryKind::Opened, AT, None),
            delivery("o-2", r, DeliveryKind::Opened, AT + 5, None),
            delivery("c-1", r, DeliveryKind::Clicked, AT + 6, None),
        ];
        records.apply(&events).await.unwrap();
        records.apply(&events).await.unwrap();
        let record = records.message(ID).await.unwrap().unwrap();
        let patient = record.recipient(r).unwrap();
        assert_eq!((patient.opens, patient.clicks), (2, 1));
        assert_eq!(record.events.len(), 3);
    }

    #[tokio::test]
    async fn the_most_significant_bounce_reason_wins_in_any_order() {
        let r = "patient@example.org";
        let soft = delivery(
            "s-1",
            r,
            DeliveryKind::SoftBounce,
            AT + 50,
            Some("452 mailbox full"),
        );
        let hard = delivery(
            "h-1",
            r,
            DeliveryKind::HardBounce,
            AT,
            Some("550 no such user"),
        );
        for events in [[soft.clone(), hard.clone()], [hard, soft]] {
            let record = record_of(&events).await;
            let patient = record.recipient(r).unwrap();
            assert_eq!(patient.status, RecipientStatus::Bounced);
            assert_eq!(patient.bounce_reason.as_deref(), Some("550 no such user"));
        }
    }

    #[tokio::test]
    async fn delivery_events_without_a_message_id_are_kept_apart() {
        let records = MemoryRecords::new();
        let orphan = DeliveryEvent {
            provider: "sendgrid".into(),
            provider_event_id: "sg-1".into(),
            message_id: None,
            recipient: "a@example.org".into(),
            kind: DeliveryKind::Complained,
            at: AT,
            diagnostic: None,
            url: None,
            stream: None,
        };
        let event = GatewayEvent::Delivery(orphan.clone());
        records.apply(&[event.clone(), event]).await.unwrap();
        assert_eq!(records.unattached_delivery_events(), vec![orphan]);
        assert!(records.recent(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn recent_lists_the_latest_updated_first_up_to_the_limit() {
        let records = MemoryRecords::new();
        let at_of = |id: &str, at| {
            GatewayEvent::Delivery(DeliveryEvent {
                provider: "mailgun".into(),
                provider_event_id: format!("ev-{id}"),
                message_id: Some(id.into()),
                recipient: "a@example.org".into(),
                kind: DeliveryKind::Delivered,
                at,
                diagnostic: None,
                url: None,
                stream: None,
            })
        };
        records
            .apply(&[at_of("m-1", AT), at_of("m-3", AT + 2), at_of("m-2", AT + 2)])
            .await
            .unwrap();
        let ids: Vec<String> = records
            .recent(2)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.message_id)
            .collect();
        assert_eq!(ids, ["m-2", "m-3"]);
        assert_eq!(records.recent(0).await.unwrap(), Vec::new());
    }

    #[tokio::test]
    async fn health_keeps_the_latest_result_and_breaker_transitions_are_unique() {
        let records = MemoryRecords::new();
        let health = |status, at| {
            GatewayEvent::Health(HealthEvent {
                gateway_id: "ses-eu".into(),
                gateway_type: "amazon_ses".into(),
                status,
                latency_ms: Some(20),
                consecutive_failures: 0,
                consecutive_successes: 1,
                error: None,
                at,
            })
        };
        let opened = GatewayEvent::Breaker(BreakerEvent {
            gateway_id: "ses-eu".into(),
            from: Phase::Closed,
            to: Phase::Open,
            reason: TransitionReason::FailureThreshold {
                failures: 10,
                successes: 0,
            },
            at: AT,
        });
        records
            .apply(&[
                health(HealthStatus::Healthy, AT + 10),
                health(HealthStatus::Unhealthy, AT),
                opened.clone(),
                opened,
            ])
            .await
            .unwrap();
        assert_eq!(records.health()["ses-eu"].status, HealthStatus::Healthy);
        assert_eq!(records.breaker_transitions().len(), 1);
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        let transient = || Box::new(std::io::Error::other("connection reset")) as Box<_>;
        let cases: [(bool, bool); 4] = [
            (RecordError::Unavailable(transient()).is_retryable(), true),
            (
                RecordError::Unrecordable {
                    reason: "subject too long".into(),
                }
                .is_retryable(),
                false,
            ),
            (SinkError::Unavailable(transient()).is_retryable(), true),
            (
                SinkError::TooLarge {
                    bytes: 300_000,
                    max: 262_144,
                }
                .is_retryable(),
                false,
            ),
        ];
        for (i, (got, expected)) in cases.into_iter().enumerate() {
            assert_eq!(got, expected, "case {i}");
        }
    }
}
