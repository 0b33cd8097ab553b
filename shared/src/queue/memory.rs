//! An in-memory [`Queue`] with the SQS semantics that matter to the sender (see [`super`]):
//! visibility timeouts, redelivery with a higher receive count and a fresh receipt handle,
//! stale receipt handles refused, and a redrive policy to a dead-letter `MemoryQueue`.
//!
//! Time comes from an injected [`Clock`], so tests use a
//! [`ManualClock`](crate::clock::ManualClock) and advance it instead of sleeping; the local run
//! uses the system clock. A long poll (`wait`) waits in real time for a `send`, but a message
//! that becomes visible again because the clock moved is only seen by the next receive: nothing
//! watches the clock.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{
    EntryFailure, EntryFailureReason, MAX_VISIBILITY, MAX_WAIT, Queue, QueueError, Received,
    VISIBILITY_REFUSED, VisibilityChange, check_max,
};
use crate::clock::{Clock, EpochMillis};

/// SQS's largest message body (1 MiB), enforced so local runs refuse what SQS would.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Where messages go after too many receives.
#[derive(Debug, Clone)]
pub struct Redrive {
    /// The dead-letter queue.
    pub dead_letter: Arc<MemoryQueue>,
    /// Receives after which the next receive moves the message (at least 1).
    pub max_receive_count: u32,
}

/// An in-memory queue. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct MemoryQueue {
    clock: Arc<dyn Clock>,
    redrive: Option<Redrive>,
    state: Mutex<State>,
    arrived: Notify,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// In send order, which is also the order receives return them in.
    messages: Vec<Stored>,
}

#[derive(Debug, Clone)]
struct Stored {
    id: String,
    body: String,
    sent_at: EpochMillis,
    receive_count: u32,
    visible_at: EpochMillis,
    /// When the latest delivery was received: its visibility may not end later than
    /// [`MAX_VISIBILITY`] after this.
    received_at: EpochMillis,
    /// The handle of the latest delivery; earlier ones are stale.
    receipt: Option<String>,
}

impl MemoryQueue {
    /// An empty queue without a redrive policy.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            redrive: None,
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
        }
    }

    /// An empty queue that moves a message to `redrive.dead_letter` once it has been received
    /// `redrive.max_receive_count` times without being deleted (a count of 0 is taken as 1).
    pub fn with_redrive(clock: Arc<dyn Clock>, redrive: Redrive) -> Self {
        let redrive = Redrive {
            max_receive_count: redrive.max_receive_count.max(1),
            ..redrive
        };
        Self {
            redrive: Some(redrive),
            ..Self::new(clock)
        }
    }

    /// Messages in the queue, visible or in flight (SQS's approximate counts added up).
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    /// True when the queue holds no message at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bodies of every message held, in send order (inspection for tests and the local run).
    pub fn bodies(&self) -> Vec<String> {
        self.lock()
            .messages
            .iter()
            .map(|m| m.body.clone())
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation completes under the lock without panicking paths, so a poisoned lock
        // still guards a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, stored: Stored) {
        self.lock().messages.push(stored);
        self.arrived.notify_waiters();
    }

    /// Takes up to `max` visible messages, moving over-received ones to the dead-letter queue.
    fn take_visible(&self, max: usize, visibility: Duration) -> Vec<Received> {
        let now = self.clock.now_ms();
        let hide_ms = i64::try_from(visibility.as_millis()).unwrap_or(i64::MAX);
        let mut dead = Vec::new();
        let mut out = Vec::new();
        {
            let mut state = self.lock();
            let mut index = 0;
            while index < state.messages.len() && out.len() < max {
                let message = &state.messages[index];
                if message.visible_at > now {
                    index += 1;
                    continue;
                }
                if let Some(redrive) = &self.redrive
                    && message.receive_count >= redrive.max_receive_count
                {
                    dead.push(state.messages.remove(index));
                    continue;
                }
                let message = &mut state.messages[index];
                message.receive_count += 1;
                message.visible_at = now.saturating_add(hide_ms);
                message.received_at = now;
                let receipt = format!("{}#{}", message.id, message.receive_count);
                message.receipt = Some(receipt.clone());
                out.push(Received {
                    message_id: message.id.clone(),
                    receipt_handle: receipt,
                    body: message.body.clone(),
                    receive_count: message.receive_count,
                    sent_at: message.sent_at,
                });
                index += 1;
            }
        }
        if let Some(redrive) = &self.redrive {
            for mut message in dead {
                // SQS keeps the message id, body and sent time, and the count goes on.
                message.visible_at = 0;
                message.receipt = None;
                redrive.dead_letter.push(message);
            }
        }
        out
    }

    /// The index of the in-flight message whose current receipt is `receipt`.
    fn find_in_flight(state: &State, receipt: &str, now: EpochMillis) -> Option<usize> {
        state
            .messages
            .iter()
            .position(|m| m.receipt.as_deref() == Some(receipt) && m.visible_at > now)
    }

    fn change_one(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let index = Self::find_in_flight(&state, receipt, now).ok_or(QueueError::InvalidReceipt)?;
        let ms = i64::try_from(visibility.as_millis()).unwrap_or(i64::MAX);
        let limit = i64::try_from(MAX_VISIBILITY.as_millis()).unwrap_or(i64::MAX);
        // SQS counts the 12 hours from the receive and refuses (does not clamp) a longer total.
        if now.saturating_add(ms) > state.messages[index].received_at.saturating_add(limit) {
            return Err(QueueError::Refused {
                code: VISIBILITY_REFUSED.to_owned(),
            });
        }
        state.messages[index].visible_at = now.saturating_add(ms);
        drop(state);
        if visibility.is_zero() {
            self.arrived.notify_waiters();
        }
        Ok(())
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn send(&self, body: &str) -> Result<String, QueueError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(QueueError::TooLarge {
                bytes: body.len(),
                max: MAX_BODY_BYTES,
            });
        }
        let now = self.clock.now_ms();
        let id = {
            let mut state = self.lock();
            state.next_id += 1;
            format!("mem-{:08}", state.next_id)
        };
        self.push(Stored {
            id: id.clone(),
            body: body.to_owned(),
            sent_at: now,
            receive_count: 0,
            visible_at: now,
            received_at: 0,
            receipt: None,
        });
        Ok(id)
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        check_max(max)?;
        if visibility > MAX_VISIBILITY {
            return Err(QueueError::Refused {
                code: VISIBILITY_REFUSED.to_owned(),
            });
        }
        // Register interest before looking, so a send between the look and the wait is not
        // missed.
        let arrived = self.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        let found = self.take_visible(max, visibility);
        if !found.is_empty() || wait.is_zero() {
            return Ok(found);
        }
        let _ = tokio::time::timeout(wait.min(MAX_WAIT), arrived).await;
        Ok(self.take_visible(max, visibility))
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<EntryFailure>, QueueError> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let mut failed = Vec::new();
        for receipt in receipts {
            match Self::find_in_flight(&state, receipt, now) {
                Some(index) => {
                    state.messages.remove(index);
                }
                None => failed.push(EntryFailure {
                    receipt_handle: receipt.clone(),
                    reason: EntryFailureReason::InvalidReceipt,
                }),
            }
        }
        Ok(failed)
    }

    async fn change_visibility(
        &self,
        receipt_handle: &str,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        self.change_one(receipt_handle, visibility)
    }

    async fn change_visibility_batch(
        &self,
        changes: &[VisibilityChange],
    ) -> Result<Vec<EntryFailure>, QueueError> {
        Ok(changes
            .iter()
            .filter_map(|c| {
                self.change_one(&c.receipt_handle, c.visibility)
                    .err()
                    .map(|e| EntryFailure {
                        receipt_handle: c.receipt_handle.clone(),
                        reason: match e {
                            QueueError::Refused { code } => EntryFailureReason::Other {
                                code,
                                retryable: false,
                            },
                            _ => EntryFailureReason::InvalidReceipt,
                        },
                    })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::clock::ManualClock;

    const T0: EpochMillis = 1_795_910_400_000;
    const VIS: Duration = Duration::from_secs(30);

    fn queue() -> (Arc<ManualClock>, MemoryQueue) {
        let clock = Arc::new(ManualClock::new(T0));
        (clock.clone(), MemoryQueue::new(clock))
    }

    async fn receive_one(q: &MemoryQueue) -> Option<Received> {
        q.receive(1, Duration::ZERO, VIS).await.unwrap().pop()
    }

    #[tokio::test]
    async fn received_message_is_hidden_until_its_visibility_timeout_passes() {
        let (clock, q) = queue();
        q.send("a").await.unwrap();
        let first = receive_one(&q).await.unwrap();
        assert_eq!((first.receive_count, first.sent_at), (1, T0));
        clock.advance(29_999);
        assert!(receive_one(&q).await.is_none(), "still in flight");
        clock.advance(1);
        let again = receive_one(&q).await.unwrap();
        assert_eq!(again.message_id, first.message_id);
        assert_eq!(again.receive_count, 2);
        assert_ne!(again.receipt_handle, first.receipt_handle);
    }

    #[tokio::test]
    async fn stale_receipt_after_redelivery_is_refused() {
        let (clock, q) = queue();
        q.send("a").await.unwrap();
        let first = receive_one(&q).await.unwrap();
        clock.advance(30_000);
        let second = receive_one(&q).await.unwrap();
        let err = q
            .change_visibility(&first.receipt_handle, VIS)
            .await
            .unwrap_err();
        assert!(matches!(err, QueueError::InvalidReceipt), "{err}");
        let failed = q
            .delete_batch(std::slice::from_ref(&first.receipt_handle))
            .await
            .unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].reason, EntryFailureReason::InvalidReceipt);
        assert_eq!(q.len(), 1, "the stale delete removed nothing");
        assert!(
            q.delete_batch(&[second.receipt_handle])
                .await
                .unwrap()
                .is_empty()
        );
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn receipt_of_an_expired_delivery_is_refused() {
        let (clock, q) = queue();
        q.send("a").await.unwrap();
        let first = receive_one(&q).await.unwrap();
        clock.advance(30_000);
        let err = q.change_visibility(&first.receipt_handle, VIS).await;
        assert!(matches!(err, Err(QueueError::InvalidReceipt)));
    }

    #[tokio::test]
    async fn changed_visibility_decides_when_the_message_returns() {
        let (clock, q) = queue();
        q.send("a").await.unwrap();
        let first = receive_one(&q).await.unwrap();
        q.change_visibility(&first.receipt_handle, Duration::from_secs(300))
            .await
            .unwrap();
        clock.advance(299_999);
        assert!(receive_one(&q).await.is_none());
        clock.advance(1);
        assert_eq!(receive_one(&q).await.unwrap().receive_count, 2);
    }

    #[tokio::test]
    async fn visibility_ending_later_than_twelve_hours_after_the_receive_is_refused() {
        let (clock, q) = queue();
        q.send("a").await.unwrap();
        let refused = q
            .receive(1, Duration::ZERO, MAX_VISIBILITY + Duration::from_secs(1))
            .await;
        assert!(
            matches!(&refused, Err(QueueError::Refused { code }) if code == VISIBILITY_REFUSED),
            "{refused:?}"
        );
        let got = q
            .receive(1, Duration::ZERO, Duration::from_secs(2 * 3600))
            .await
            .unwrap()
            .remove(0);
        clock.advance(3_600_000);
        // One hour after the receive, eleven hours are left: not one second more.
        let over = q
            .change_visibility(&got.receipt_handle, Duration::from_secs(11 * 3600 + 1))
            .await;
        assert!(matches!(over, Err(QueueError::Refused { .. })), "{over:?}");
        let failures = q
            .change_visibility_batch(&[VisibilityChange {
                receipt_handle: got.receipt_handle.clone(),
                visibility: Duration::from_secs(11 * 3600 + 1),
            }])
            .await
            .unwrap();
        assert_eq!(
            failures[0].reason,
            EntryFailureReason::Other {
                code: VISIBILITY_REFUSED.into(),
                retryable: false
            }
        );
        // A refused change leaves the delivery in flight; the longest allowed change is taken.
        q.change_visibility(&got.receipt_handle, Duration::from_secs(11 * 3600))
            .await
            .unwrap();
        clock.advance(11 * 3_600_000 - 1);
        assert!(receive_one(&q).await.is_none());
        clock.advance(1);
        let again = receive_one(&q).await.unwrap();
        assert_eq!(again.receive_count, 2);
        // The next delivery has its own twelve hours.
        q.change_visibility(&again.receipt_handle, MAX_VISIBILITY)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn message_moves_to_dead_letter_queue_after_max_receives() {
        let clock = Arc::new(ManualClock::new(T0));
        let dlq = Arc::new(MemoryQueue::new(clock.clone()));
        let q = MemoryQueue::with_redrive(
            clock.clone(),
            Redrive {
                dead_letter: dlq.clone(),
                max_receive_count: 2,
            },
        );
        let id = q.send("poison").await.unwrap();
        for count in 1..=2 {
            let got = receive_one(&q).await.unwrap();
            assert_eq!(got.receive_count, count);
            clock.advance(30_000);
        }
        assert!(receive_one(&q).await.is_none(), "third receive redrives");
        assert!(q.is_empty());
        let dead = receive_one(&dlq).await.unwrap();
        assert_eq!((dead.message_id, dead.body.as_str()), (id, "poison"));
    }

    #[tokio::test]
    async fn receive_returns_at_most_max_in_send_order() {
        let (_clock, q) = queue();
        for i in 0..12 {
            q.send(&format!("m{i}")).await.unwrap();
        }
        let got = q.receive(10, Duration::ZERO, VIS).await.unwrap();
        let bodies: Vec<_> = got.iter().map(|r| r.body.as_str()).collect();
        assert_eq!(bodies, (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
        assert_eq!(q.receive(10, Duration::ZERO, VIS).await.unwrap().len(), 2);
        assert!(q.receive(11, Duration::ZERO, VIS).await.is_err());
    }

    #[tokio::test]
    async fn long_poll_returns_a_message_sent_while_waiting() {
        let (_clock, q) = queue();
        let q = Arc::new(q);
        let sender = q.clone();
        let waiter =
            tokio::spawn(async move { q.receive(1, Duration::from_secs(5), VIS).await.unwrap() });
        tokio::task::yield_now().await;
        sender.send("late").await.unwrap();
        let got = waiter.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "late");
    }

    #[tokio::test]
    async fn body_over_one_mebibyte_is_too_large() {
        let (_clock, q) = queue();
        let body = "x".repeat(MAX_BODY_BYTES + 1);
        assert!(matches!(
            q.send(&body).await,
            Err(QueueError::TooLarge { .. })
        ));
    }
}
