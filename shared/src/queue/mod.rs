//! The queue port: what the sender needs from SQS, and what `gateway serve` needs to stand in for
//! it locally.
//!
//! The semantics are SQS's standard-queue semantics, because the production trigger is an SQS
//! event source mapping and the local run must behave like it:
//!
//! - A received message is invisible for the visibility timeout given at receive time; if it is
//!   not deleted by then it is delivered again, with a new receipt handle and a receive count one
//!   higher. Delivery is at least once, so the consumer must be idempotent (the ledger is).
//! - A receipt handle is only good for the delivery it came with. Changing the visibility of, or
//!   deleting, a message through the handle of an earlier delivery is
//!   [`QueueError::InvalidReceipt`] (for batches: an entry failure with that reason). SQS
//!   documents only that the latest handle must be used and may accept an older one (moto
//!   does), so the in-memory queue is the strict one: code that passes its tests never relies on
//!   a stale handle.
//! - With a redrive policy, a message received `max_receive_count` times and not deleted moves to
//!   the dead-letter queue on the next receive instead of being delivered again.
//! - A delivery can stay invisible for at most [`MAX_VISIBILITY`] (12 hours) counted from its
//!   receive, not from the request that sets it: a receive asking for more, or a visibility
//!   change that would end later than 12 hours after the receive, is refused with
//!   `InvalidParameterValue`, never clamped ("Total VisibilityTimeout for the message is beyond
//!   the limit [43200 seconds]"; the Amazon SQS Developer Guide, "Amazon SQS visibility
//!   timeout", and the API reference of `ChangeMessageVisibility`). The in-memory queue and the
//!   emulator wrapper of the tests (`scripts/moto_serial.py`) refuse exactly that; the sender
//!   never asks for more than [`MAX_DEFERRAL`] from any moment of an invocation, which SQS always
//!   accepts.
//!
//! Implementations: [`memory::MemoryQueue`] (tests, local run) and [`sqs::SqsQueue`]. The
//! contract suite (`contract`, feature `testing`) runs against both.

#[cfg(any(test, feature = "testing"))]
pub mod contract;
pub mod dead_letters;
pub mod memory;
pub mod sqs;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::EpochMillis;

/// The most messages one receive returns (SQS's limit).
pub const MAX_RECEIVE: usize = 10;

/// The longest a delivery can stay invisible, counted from its receive (SQS's limit, 12 hours).
/// Longer requests are refused (see the module docs).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// How long after a receive the sender can still be deciding about the delivery: Lambda's
/// longest function timeout (15 minutes) plus the event source mapping's longest batching window
/// (5 minutes), during which received records wait for the invocation.
pub const DECISION_MARGIN: Duration = Duration::from_secs(20 * 60);

/// The longest deferral the sender asks for: [`MAX_VISIBILITY`] less [`DECISION_MARGIN`], so a
/// visibility change made at any moment of any invocation ends within 12 hours of the receive.
/// A longer wait comes back once per `MAX_DEFERRAL` and is deferred again.
pub const MAX_DEFERRAL: Duration =
    Duration::from_secs(MAX_VISIBILITY.as_secs() - DECISION_MARGIN.as_secs());

/// The longest long-poll wait (SQS's limit, 20 s); longer values are clamped to it.
pub const MAX_WAIT: Duration = Duration::from_secs(20);

/// The most entries in one batch request (SQS's limit); larger batches are split by the adapter.
pub const MAX_BATCH: usize = 10;

/// A boxed error cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One delivery of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The queue's id of the message, stable across deliveries.
    pub message_id: String,
    /// The handle of this delivery; needed to delete the message or change its visibility.
    pub receipt_handle: String,
    /// The body as sent.
    pub body: String,
    /// How many times the message has been received, this delivery included (1 on the first).
    pub receive_count: u32,
    /// When the message was first sent (epoch ms); 0 if the queue did not report it.
    pub sent_at: EpochMillis,
}

/// A visibility change for one delivery (batch form of [`Queue::change_visibility`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibilityChange {
    /// The delivery's receipt handle.
    pub receipt_handle: String,
    /// New visibility timeout, counted from now; refused when it would end more than
    /// [`MAX_VISIBILITY`] after the delivery's receive.
    pub visibility: Duration,
}

/// Why one entry of a batch request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryFailureReason {
    /// The receipt handle is unknown, of an earlier delivery, or its message is no longer in
    /// flight. The message will be (or was) delivered again; nothing to retry.
    InvalidReceipt,
    /// Any other refusal, with the service's error code (no message text).
    Other {
        /// The service's error code.
        code: String,
        /// True when the service blamed itself, so repeating the entry may succeed.
        retryable: bool,
    },
}

/// One failed entry of a batch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFailure {
    /// The receipt handle the entry named.
    pub receipt_handle: String,
    /// Why it failed.
    pub reason: EntryFailureReason,
}

/// Why a queue request failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue service could not be reached or failed transiently.
    #[error("queue unavailable")]
    Unavailable(#[source] BoxError),
    /// The queue service throttled the request.
    #[error("queue request throttled")]
    Throttled,
    /// The queue does not exist (deployment or configuration error; not retried).
    #[error("queue {queue} does not exist")]
    MissingQueue {
        /// The queue URL or name.
        queue: String,
    },
    /// The receipt handle is unknown, of an earlier delivery, or its message is not in flight.
    #[error("receipt handle is invalid or stale")]
    InvalidReceipt,
    /// A message body is larger than the queue accepts.
    #[error("message of {bytes} bytes exceeds the queue's limit of {max} bytes")]
    TooLarge {
        /// Size of the body in bytes.
        bytes: usize,
        /// The queue's limit.
        max: usize,
    },
    /// The request was malformed (a parameter out of range); a caller bug.
    #[error("invalid queue request: {0}")]
    InvalidRequest(String),
    /// The service refused the request for a reason not retried (its error code).
    #[error("queue refused the request: {code}")]
    Refused {
        /// The service's error code.
        code: String,
    },
}

impl QueueError {
    /// True when repeating the request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Throttled)
    }
}

/// A message queue with SQS standard-queue semantics (see the module docs).
#[async_trait]
pub trait Queue: Send + Sync + std::fmt::Debug {
    /// Enqueues `body`; returns the queue's message id.
    async fn send(&self, body: &str) -> Result<String, QueueError>;

    /// Receives up to `max` (1..=[`MAX_RECEIVE`]) visible messages, waiting up to `wait`
    /// (clamped to [`MAX_WAIT`]) for the first one, and hides them for `visibility` (at most
    /// [`MAX_VISIBILITY`]; more is refused). An empty vector means nothing arrived within `wait`.
    /// A `max` outside the range is [`QueueError::InvalidRequest`].
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, QueueError>;

    /// Deletes the deliveries named by `receipts` (any number; split into requests of
    /// [`MAX_BATCH`]). Returns the entries that failed; an empty vector means all were deleted.
    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<EntryFailure>, QueueError>;

    /// Makes one in-flight delivery visible again after `visibility` (from now; zero makes it
    /// visible at once). Refused with [`QueueError::Refused`] (`InvalidParameterValue`) when that
    /// would end more than [`MAX_VISIBILITY`] after the delivery's receive.
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        visibility: Duration,
    ) -> Result<(), QueueError>;

    /// [`Queue::change_visibility`] for many deliveries (split into requests of [`MAX_BATCH`]).
    /// Returns the entries that failed.
    async fn change_visibility_batch(
        &self,
        changes: &[VisibilityChange],
    ) -> Result<Vec<EntryFailure>, QueueError>;
}

/// A shared queue is a queue (the local run hands one `MemoryQueue` to the poller and to the
/// enqueue route).
#[async_trait]
impl<T: Queue + ?Sized> Queue for Arc<T> {
    async fn send(&self, body: &str) -> Result<String, QueueError> {
        (**self).send(body).await
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        (**self).receive(max, wait, visibility).await
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<EntryFailure>, QueueError> {
        (**self).delete_batch(receipts).await
    }

    async fn change_visibility(
        &self,
        receipt_handle: &str,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        (**self).change_visibility(receipt_handle, visibility).await
    }

    async fn change_visibility_batch(
        &self,
        changes: &[VisibilityChange],
    ) -> Result<Vec<EntryFailure>, QueueError> {
        (**self).change_visibility_batch(changes).await
    }
}

/// `visibility` in whole seconds as SQS takes it, not clamped (SQS judges it against the
/// receive, see the module docs). Sub-second values round up so that a short deferral never
/// becomes "visible at once".
pub fn visibility_seconds(visibility: Duration) -> i32 {
    let secs = visibility
        .as_secs()
        .saturating_add(u64::from(visibility.subsec_nanos() > 0));
    i32::try_from(secs).unwrap_or(i32::MAX)
}

/// The refusal SQS answers for a visibility beyond the limit (its error code).
pub const VISIBILITY_REFUSED: &str = "InvalidParameterValue";

/// Checks a receive's `max` against 1..=[`MAX_RECEIVE`].
pub(crate) fn check_max(max: usize) -> Result<(), QueueError> {
    if (1..=MAX_RECEIVE).contains(&max) {
        Ok(())
    } else {
        Err(QueueError::InvalidRequest(format!(
            "receive max must be 1..={MAX_RECEIVE}, got {max}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_rounds_up_to_whole_seconds_and_is_not_clamped() {
        let cases = [
            (Duration::ZERO, 0),
            (Duration::from_millis(1), 1),
            (Duration::from_millis(1500), 2),
            (Duration::from_secs(30), 30),
            (MAX_VISIBILITY, 43_200),
            (Duration::from_secs(100_000), 100_000),
            (Duration::MAX, i32::MAX),
        ];
        for (given, want) in cases {
            assert_eq!(visibility_seconds(given), want, "{given:?}");
        }
    }

    #[test]
    fn a_deferral_decided_at_any_moment_of_an_invocation_ends_within_twelve_hours_of_the_receive() {
        // Received at the start of the longest batching window, decided at the end of the
        // longest invocation.
        let latest_decision = Duration::from_secs(5 * 60) + Duration::from_secs(15 * 60);
        assert!(latest_decision + MAX_DEFERRAL <= MAX_VISIBILITY);
        assert_eq!(MAX_DEFERRAL, Duration::from_secs(11 * 3600 + 40 * 60));
    }

    #[test]
    fn only_retryable_errors_say_so() {
        assert!(QueueError::Throttled.is_retryable());
        assert!(QueueError::Unavailable("reset".into()).is_retryable());
        assert!(!QueueError::InvalidReceipt.is_retryable());
        assert!(!QueueError::MissingQueue { queue: "q".into() }.is_retryable());
        assert!(!QueueError::TooLarge { bytes: 2, max: 1 }.is_retryable());
    }

    #[test]
    fn receive_max_outside_one_to_ten_is_invalid() {
        assert!(check_max(0).is_err());
        assert!(check_max(1).is_ok());
        assert!(check_max(10).is_ok());
        assert!(check_max(11).is_err());
    }
}
