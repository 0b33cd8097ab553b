//! The [`Queue`] contract: one suite every implementation must pass (see [`super`] for the
//! semantics). Each case asks a [`QueueFactory`] for fresh, empty queues, so the suite can run
//! against a shared emulator. Cases only use what needs no waiting: visibility is ended early
//! with a zero visibility change rather than by letting time pass, so the suite runs in the same
//! way on a manual clock and on real SQS. [`run_all`] runs every case.

// This module is test support: failing loudly is its whole purpose.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

/// The attribute [`QueueFactory`] implementations need, re-exported so that test crates need no
/// direct dependency on `async-trait`.
pub use async_trait::async_trait;

use super::{EntryFailureReason, Queue, QueueError, Received, VisibilityChange};

const HIDE: Duration = Duration::from_secs(60);

/// Makes fresh, empty queues for the contract cases.
#[async_trait]
pub trait QueueFactory: Send + Sync {
    /// A new empty queue without a redrive policy.
    async fn fresh(&self) -> Box<dyn Queue>;

    /// A new empty queue with a redrive policy of `max_receive_count` to a new empty
    /// dead-letter queue: `(queue, dead_letter)`.
    async fn fresh_with_redrive(&self, max_receive_count: u32) -> (Box<dyn Queue>, Box<dyn Queue>);
}

/// Runs every case.
pub async fn run_all(factory: &dyn QueueFactory) {
    sent_message_is_received_once_with_count_one(factory).await;
    received_message_is_hidden_from_the_next_receive(factory).await;
    visibility_zero_redelivers_with_new_receipt_and_higher_count(factory).await;
    deleted_messages_are_not_delivered_again(factory).await;
    batch_visibility_change_redelivers_each_message(factory).await;
    message_moves_to_dead_letter_queue_after_max_receives(factory).await;
    receive_max_outside_one_to_ten_is_refused(factory).await;
    visibility_beyond_twelve_hours_is_refused_not_clamped(factory).await;
}

/// Receives until `want` messages arrived (a few polls: SQS may spread them over responses).
async fn receive_n(q: &dyn Queue, want: usize) -> Vec<Received> {
    let mut got = Vec::new();
    for _ in 0..10 {
        if got.len() >= want {
            break;
        }
        let max = (want - got.len()).min(10);
        got.extend(q.receive(max, Duration::from_secs(1), HIDE).await.unwrap());
    }
    assert_eq!(got.len(), want, "received {} of {want} messages", got.len());
    got
}

async fn assert_empty(q: &dyn Queue, why: &str) {
    let got = q.receive(10, Duration::ZERO, HIDE).await.unwrap();
    assert!(got.is_empty(), "{why}: received {got:?}");
}

/// A sent message comes back once, with its body, id, count 1 and a send time.
pub async fn sent_message_is_received_once_with_count_one(factory: &dyn QueueFactory) {
    let q = factory.fresh().await;
    let id = q.send(r#"{"id":"m-1"}"#).await.unwrap();
    let got = receive_n(q.as_ref(), 1).await;
    assert_eq!(got[0].message_id, id);
    assert_eq!(got[0].body, r#"{"id":"m-1"}"#);
    assert_eq!(got[0].receive_count, 1);
    assert!(got[0].sent_at > 0, "sent_at missing");
    assert!(!got[0].receipt_handle.is_empty());
}

/// While in flight, a message is not delivered again.
pub async fn received_message_is_hidden_from_the_next_receive(factory: &dyn QueueFactory) {
    let q = factory.fresh().await;
    q.send("a").await.unwrap();
    receive_n(q.as_ref(), 1).await;
    assert_empty(q.as_ref(), "in-flight message delivered again").await;
}

/// Ending the visibility early redelivers the message with a new receipt and count 2.
pub async fn visibility_zero_redelivers_with_new_receipt_and_higher_count(
    factory: &dyn QueueFactory,
) {
    let q = factory.fresh().await;
    q.send("a").await.unwrap();
    let first = receive_n(q.as_ref(), 1).await.remove(0);
    q.change_visibility(&first.receipt_handle, Duration::ZERO)
        .await
        .unwrap();
    let second = receive_n(q.as_ref(), 1).await.remove(0);
    assert_eq!(second.message_id, first.message_id);
    assert_eq!(second.receive_count, 2);
    assert_ne!(second.receipt_handle, first.receipt_handle);
}

/// Deleted messages never come back, even when their visibility would have ended.
pub async fn deleted_messages_are_not_delivered_again(factory: &dyn QueueFactory) {
    let q = factory.fresh().await;
    for i in 0..12 {
        q.send(&format!("m{i}")).await.unwrap();
    }
    let got = receive_n(q.as_ref(), 12).await;
    let receipts: Vec<String> = got.iter().map(|r| r.receipt_handle.clone()).collect();
    let failed = q.delete_batch(&receipts).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    let failed = q
        .change_visibility_batch(
            &receipts
                .iter()
                .map(|r| VisibilityChange {
                    receipt_handle: r.clone(),
                    visibility: Duration::ZERO,
                })
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    assert_eq!(failed.len(), 12, "visibility of deleted messages changed");
    assert!(
        failed
            .iter()
            .all(|f| f.reason == EntryFailureReason::InvalidReceipt
                && receipts.contains(&f.receipt_handle)),
        "{failed:?}"
    );
    assert_empty(q.as_ref(), "deleted message delivered").await;
}

/// A batch visibility change applies to each entry.
pub async fn batch_visibility_change_redelivers_each_message(factory: &dyn QueueFactory) {
    let q = factory.fresh().await;
    q.send("a").await.unwrap();
    q.send("b").await.unwrap();
    let got = receive_n(q.as_ref(), 2).await;
    let changes: Vec<VisibilityChange> = got
        .iter()
        .map(|r| VisibilityChange {
            receipt_handle: r.receipt_handle.clone(),
            visibility: Duration::ZERO,
        })
        .collect();
    let failed = q.change_visibility_batch(&changes).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    let again = receive_n(q.as_ref(), 2).await;
    assert!(again.iter().all(|r| r.receive_count == 2), "{again:?}");
}

/// With `maxReceiveCount` 2, the third receive moves the message to the dead-letter queue.
pub async fn message_moves_to_dead_letter_queue_after_max_receives(factory: &dyn QueueFactory) {
    let (q, dlq) = factory.fresh_with_redrive(2).await;
    let id = q.send("poison").await.unwrap();
    for count in 1..=2 {
        let got = receive_n(q.as_ref(), 1).await.remove(0);
        assert_eq!(got.receive_count, count);
        q.change_visibility(&got.receipt_handle, Duration::ZERO)
            .await
            .unwrap();
    }
    assert_empty(q.as_ref(), "message delivered beyond maxReceiveCount").await;
    let dead = receive_n(dlq.as_ref(), 1).await.remove(0);
    assert_eq!(dead.message_id, id);
    assert_eq!(dead.body, "poison");
}

/// `max` must be 1..=10.
pub async fn receive_max_outside_one_to_ten_is_refused(factory: &dyn QueueFactory) {
    let q = factory.fresh().await;
    for max in [0, 11] {
        let err = q.receive(max, Duration::ZERO, HIDE).await.unwrap_err();
        assert!(matches!(err, QueueError::InvalidRequest(_)), "{err}");
    }
}

/// SQS refuses a visibility beyond 12 hours (from the receive) instead of clamping it; the
/// longest deferral the sender asks for is accepted.
pub async fn visibility_beyond_twelve_hours_is_refused_not_clamped(factory: &dyn QueueFactory) {
    use super::{MAX_DEFERRAL, MAX_VISIBILITY};
    let q = factory.fresh().await;
    let too_long = MAX_VISIBILITY + Duration::from_secs(1);
    assert!(
        q.receive(1, Duration::ZERO, too_long).await.is_err(),
        "a receive hiding for more than 12 hours must be refused"
    );
    q.send("long wait").await.unwrap();
    let got = receive_n(q.as_ref(), 1).await.remove(0);
    let refused = q
        .change_visibility_batch(&[super::VisibilityChange {
            receipt_handle: got.receipt_handle.clone(),
            visibility: too_long,
        }])
        .await
        .unwrap();
    assert_eq!(refused.len(), 1, "a change beyond 12 hours must be refused");
    assert!(
        q.change_visibility(&got.receipt_handle, too_long)
            .await
            .is_err()
    );
    let accepted = q
        .change_visibility_batch(&[super::VisibilityChange {
            receipt_handle: got.receipt_handle.clone(),
            visibility: MAX_DEFERRAL,
        }])
        .await
        .unwrap();
    assert_eq!(
        accepted,
        Vec::new(),
        "the longest deferral must be accepted"
    );
    assert_empty(q.as_ref(), "a deferred message came back at once").await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::memory::{MemoryQueue, Redrive};

    struct Memory(Arc<ManualClock>);

    #[async_trait]
    impl QueueFactory for Memory {
        async fn fresh(&self) -> Box<dyn Queue> {
            Box::new(MemoryQueue::new(self.0.clone()))
        }

        async fn fresh_with_redrive(
            &self,
            max_receive_count: u32,
        ) -> (Box<dyn Queue>, Box<dyn Queue>) {
            let dlq = Arc::new(MemoryQueue::new(self.0.clone()));
            let q = MemoryQueue::with_redrive(
                self.0.clone(),
                Redrive {
                    dead_letter: dlq.clone(),
                    max_receive_count,
                },
            );
            (Box::new(q), Box::new(dlq))
        }
    }

    #[tokio::test]
    async fn contract_suite_passes_on_memory_queue() {
        run_all(&Memory(Arc::new(ManualClock::new(1_795_910_400_000)))).await;
    }
}
