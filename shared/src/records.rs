//! The record-of-delivery ports: [`RecordWriter`] (the recorder applies events) and
//! [`RecordReader`] (the status API reads a message's record), with the in-memory adapter
//! [`MemoryRecords`]. The MySQL adapter implements the same traits over the tables of
//! DESIGN §2.4.
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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::EpochMillis;
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
    /// Recipients in first-seen order.
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
    fn new(message_id: &str, at: EpochMillis) -> Self {
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

/// Applies events to the record of delivery.
#[async_trait]
pub trait RecordWriter: Send + Sync + std::fmt::Debug {
    /// Applies the events. Idempotent and order-tolerant (see the module docs): applying the
    /// same events again, or in another order, gives the same records. On error some events may
    /// have been applied; applying them all again is safe.
    async fn apply(&self, events: &[GatewayEvent]) -> Result<(), RecordError>;
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
        }
    }
}

#[async_trait]
impl RecordWriter for MemoryRecords {
    async fn apply(&self, events: &[GatewayEvent]) -> Result<(), RecordError> {
        let mut tables = self.lock();
        for event in events {
            tables.apply(event);
        }
        Ok(())
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
