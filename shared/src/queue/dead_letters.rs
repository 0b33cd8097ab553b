//! The outbound dead-letter queue as operators handle it (`gateway dlq list|show|redrive`).
//!
//! **Why redrive here and not with `aws sqs start-message-move-task`.** SQS's own redrive sends
//! every message back as a *new* message, with a new message id ("All redriven messages are
//! considered new messages with a new messageID and enqueueTime", Amazon SQS Developer Guide,
//! "Configuring a dead-letter queue redrive"). A message whose body has no `id` is keyed by its
//! SQS message id (ARCHITECTURE §2.1), so after such a redrive it would be a different message
//! to the ledger, which could send it a second time if it had been sent, and to the record,
//! which would keep the old entry `failed` and open a new one. [`redrive`] therefore writes the
//! key into the body (`"id"`: the message id the dead letter still carries, since a move to the
//! DLQ keeps it) before sending it back, so the ledger and the record recognise it.
//!
//! Everything goes through the [`Queue`] port: the same code runs against SQS and in tests
//! against the in-memory queue.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use super::{MAX_RECEIVE, Queue, QueueError, Received, VisibilityChange};
use crate::clock::EpochMillis;

/// How long a listing or a redrive hides the dead letters it has seen, so that the next receive
/// returns others; they are made visible again at the end.
pub const HOLD: Duration = Duration::from_secs(120);

/// One dead letter as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The idempotency key: the body's `id`, else the SQS message id.
    pub key: String,
    /// The SQS message id (kept by the move to the DLQ).
    pub queue_message_id: String,
    /// Receives so far, in the source queue and the DLQ together.
    pub receive_count: u32,
    /// When the message was first sent (epoch ms).
    pub sent_at: EpochMillis,
    /// Body size in bytes.
    pub bytes: usize,
    /// Why the body is not a JSON object, when it is not (the sender rejects it anyway).
    pub problem: Option<&'static str>,
    /// The body as it is in the queue.
    pub body: String,
}

impl DeadLetter {
    /// A received dead letter as an operator sees it.
    pub fn of(r: &Received) -> Self {
        let parsed = serde_json::from_str::<Value>(&r.body);
        let (key, problem) = match &parsed {
            Ok(Value::Object(m)) => match m.get("id") {
                Some(Value::String(id)) => (id.clone(), None),
                _ => (r.message_id.clone(), None),
            },
            Ok(_) => (r.message_id.clone(), Some("the body is not a JSON object")),
            Err(_) => (r.message_id.clone(), Some("the body is not JSON")),
        };
        Self {
            key,
            queue_message_id: r.message_id.clone(),
            receive_count: r.receive_count,
            sent_at: r.sent_at,
            bytes: r.body.len(),
            problem,
            body: r.body.clone(),
        }
    }

    /// The body to send back: with `"id"` set to the key when the body is an object without
    /// one, so that the message keeps its identity; otherwise unchanged.
    pub fn body_to_resend(&self) -> String {
        match serde_json::from_str::<Value>(&self.body) {
            Ok(Value::Object(mut m)) if !m.contains_key("id") => {
                m.insert("id".into(), Value::String(self.key.clone()));
                Value::Object(m).to_string()
            }
            _ => self.body.clone(),
        }
    }
}

/// Reads every dead letter (up to `max`), hiding each for [`HOLD`] while reading and making all
/// visible again before returning. Sorted by first send, oldest first.
pub async fn list(dlq: &dyn Queue, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut receipts = Vec::new();
    let result = async {
        while out.len() < max {
            let batch = dlq
                .receive(MAX_RECEIVE.min(max - out.len()), Duration::ZERO, HOLD)
                .await?;
            if batch.is_empty() {
                break;
            }
            for r in &batch {
                receipts.push(r.receipt_handle.clone());
                if seen.insert(r.message_id.clone()) {
                    out.push(DeadLetter::of(r));
                }
            }
        }
        Ok::<(), QueueError>(())
    }
    .await;
    release(dlq, &receipts).await;
    result?;
    out.sort_by(|a, b| (a.sent_at, &a.key).cmp(&(b.sent_at, &b.key)));
    Ok(out)
}

/// What [`redrive`] did.
#[derive(Debug, Default)]
pub struct RedriveSummary {
    /// Sent back to the outbound queue and deleted from the DLQ: (key, new SQS message id).
    pub moved: Vec<(String, String)>,
    /// Given an `"id"` on the way (their body had none).
    pub keyed: usize,
    /// Left in the DLQ because they were not selected.
    pub skipped: usize,
    /// Left in the DLQ because sending them back failed: (key, error).
    pub failed: Vec<(String, String)>,
    /// Sent back, but their DLQ copy could not be deleted (they will be sent back again by the
    /// next redrive; the ledger sends a message once).
    pub not_deleted: usize,
}

/// Sends the dead letters back to `outbound` (those whose key is in `only`, or all when `only`
/// is empty; at most `max`), each with its key written into its body (see the module docs),
/// and deletes each from the DLQ once the send succeeded. A failed send leaves the dead letter
/// where it is. With `dry_run`, nothing is sent or deleted: the summary says what would be.
/// `progress` is called after every batch with the number moved so far.
pub async fn redrive(
    dlq: &dyn Queue,
    outbound: &dyn Queue,
    only: &BTreeSet<String>,
    max: usize,
    dry_run: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<RedriveSummary, QueueError> {
    let mut summary = RedriveSummary::default();
    let mut held = Vec::new();
    let mut seen = BTreeSet::new();
    let result = async {
        while summary.moved.len() < max {
            let batch = dlq.receive(MAX_RECEIVE, Duration::ZERO, HOLD).await?;
            if batch.is_empty() {
                break;
            }
            let mut delete = Vec::new();
            for r in &batch {
                if !seen.insert(r.message_id.clone()) {
                    held.push(r.receipt_handle.clone());
                    continue;
                }
                let letter = DeadLetter::of(r);
                let chosen = only.is_empty() || only.contains(&letter.key);
                if !chosen || summary.moved.len() >= max {
                    summary.skipped += 1;
                    held.push(r.receipt_handle.clone());
                    continue;
                }
                let body = letter.body_to_resend();
                let keyed = body != letter.body;
                if dry_run {
                    summary.moved.push((letter.key, String::new()));
                    summary.keyed += usize::from(keyed);
                    held.push(r.receipt_handle.clone());
                    continue;
                }
                match outbound.send(&body).await {
                    Ok(id) => {
                        summary.moved.push((letter.key, id));
                        summary.keyed += usize::from(keyed);
                        delete.push(r.receipt_handle.clone());
                    }
                    Err(e) => {
                        summary.failed.push((letter.key, e.to_string()));
                        held.push(r.receipt_handle.clone());
                    }
                }
            }
            if !delete.is_empty() {
                summary.not_deleted += dlq.delete_batch(&delete).await?.len();
            }
            progress(summary.moved.len());
        }
        Ok::<(), QueueError>(())
    }
    .await;
    release(dlq, &held).await;
    result?;
    Ok(summary)
}

/// Makes the held dead letters visible again (best effort: otherwise they return after
/// [`HOLD`] anyway).
async fn release(dlq: &dyn Queue, receipts: &[String]) {
    let changes: Vec<VisibilityChange> = receipts
        .iter()
        .map(|r| VisibilityChange {
            receipt_handle: r.clone(),
            visibility: Duration::ZERO,
        })
        .collect();
    if !changes.is_empty()
        && let Err(error) = dlq.change_visibility_batch(&changes).await
    {
        tracing::warn!(%error, "dead letters not made visible again; they will be after the hold");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::message::parse_message;
    use crate::queue::memory::{MemoryQueue, Redrive};

    const T0: EpochMillis = 1_795_910_400_000;

    /// An outbound queue whose messages reach the DLQ after one receive, holding `bodies`.
    async fn dead_letters(bodies: &[&str]) -> (Arc<ManualClock>, MemoryQueue, Arc<MemoryQueue>) {
        let clock = Arc::new(ManualClock::new(T0));
        let dlq = Arc::new(MemoryQueue::new(clock.clone()));
        let outbound = MemoryQueue::with_redrive(
            clock.clone(),
            Redrive {
                dead_letter: dlq.clone(),
                max_receive_count: 1,
            },
        );
        for body in bodies {
            outbound.send(body).await.unwrap();
        }
        // Received once and never deleted: the next receive moves them.
        while !outbound
            .receive(MAX_RECEIVE, Duration::ZERO, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
        {}
        clock.advance(1_000);
        while !outbound
            .receive(MAX_RECEIVE, Duration::ZERO, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
        {}
        assert_eq!(dlq.len(), bodies.len());
        (clock, outbound, dlq)
    }

    const WITH_ID: &str = r#"{"id":"inv-7","from":"a@clinic.example","to":["p@example.org"],"subject":"s","text":"t"}"#;
    const WITHOUT_ID: &str =
        r#"{"from":"a@clinic.example","to":["p@example.org"],"subject":"s","text":"t"}"#;

    #[tokio::test]
    async fn a_listing_names_each_dead_letter_by_its_key_and_leaves_them_all_there() {
        let bodies: Vec<String> = (0..23)
            .map(|i| WITH_ID.replace("inv-7", &format!("inv-{i:02}")))
            .chain([WITHOUT_ID.to_owned(), "not json".to_owned()])
            .collect();
        let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
        let (_, _, dlq) = dead_letters(&refs).await;
        let listed = list(dlq.as_ref(), 1000).await.unwrap();
        assert_eq!(listed.len(), 25, "every one, not the first ten");
        assert!(listed.iter().any(|d| d.key == "inv-22"));
        let keyless = listed.iter().find(|d| d.body == WITHOUT_ID).unwrap();
        assert_eq!(keyless.key, keyless.queue_message_id);
        let broken = listed.iter().find(|d| d.body == "not json").unwrap();
        assert_eq!(broken.problem, Some("the body is not JSON"));
        assert_eq!(dlq.len(), 25);
        // Visible again at once: a second listing sees them all.
        assert_eq!(list(dlq.as_ref(), 1000).await.unwrap().len(), 25);
    }

    #[tokio::test]
    async fn a_redrive_keeps_each_message_s_key_so_the_ledger_and_the_record_recognise_it() {
        let (_, outbound, dlq) = dead_letters(&[WITH_ID, WITHOUT_ID]).await;
        let keyless_id = list(dlq.as_ref(), 10)
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.body == WITHOUT_ID)
            .unwrap()
            .queue_message_id;
        let mut reports = Vec::new();
        let summary = redrive(
            dlq.as_ref(),
            &outbound,
            &BTreeSet::new(),
            usize::MAX,
            false,
            &mut |n| reports.push(n),
        )
        .await
        .unwrap();
        assert_eq!(summary.moved.len(), 2);
        assert_eq!(summary.keyed, 1);
        assert!(summary.failed.is_empty() && summary.not_deleted == 0);
        assert!(dlq.is_empty());
        assert_eq!(reports.last(), Some(&2));
        // Back on the outbound queue as new SQS messages, with the same idempotency keys.
        let back = outbound
            .receive(MAX_RECEIVE, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap();
        let mut keys: Vec<String> = back
            .iter()
            .map(|r| {
                assert_ne!(
                    r.message_id, keyless_id,
                    "SQS gives a resent message a new id"
                );
                parse_message(r.body.as_bytes(), Some(&r.message_id))
                    .unwrap()
                    .id()
                    .to_owned()
            })
            .collect();
        keys.sort();
        let mut want = vec!["inv-7".to_owned(), keyless_id];
        want.sort();
        assert_eq!(keys, want);
    }

    #[tokio::test]
    async fn a_redrive_of_chosen_keys_leaves_the_others_and_a_dry_run_moves_nothing() {
        let (_, outbound, dlq) = dead_letters(&[
            WITH_ID,
            &WITH_ID.replace("inv-7", "inv-8"),
            &WITH_ID.replace("inv-7", "inv-9"),
        ])
        .await;
        let only = BTreeSet::from(["inv-8".to_owned()]);
        let dry = redrive(
            dlq.as_ref(),
            &outbound,
            &only,
            usize::MAX,
            true,
            &mut |_| {},
        )
        .await
        .unwrap();
        assert_eq!((dry.moved.len(), dry.skipped), (1, 2));
        assert_eq!((dlq.len(), outbound.len()), (3, 0));
        let done = redrive(
            dlq.as_ref(),
            &outbound,
            &only,
            usize::MAX,
            false,
            &mut |_| {},
        )
        .await
        .unwrap();
        assert_eq!(done.moved[0].0, "inv-8");
        assert_eq!((dlq.len(), outbound.len()), (2, 1));
        // The ones left are visible at once for the next command.
        assert_eq!(list(dlq.as_ref(), 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_send_that_fails_leaves_the_dead_letter_in_place() {
        let (_, _, dlq) = dead_letters(&[WITH_ID]).await;
        // An outbound queue refusing every body, as SQS refuses one over its size limit.
        #[derive(Debug)]
        struct Refusing;
        #[async_trait::async_trait]
        impl Queue for Refusing {
            async fn send(&self, body: &str) -> Result<String, QueueError> {
                Err(QueueError::TooLarge {
                    bytes: body.len(),
                    max: 10,
                })
            }
            async fn receive(
                &self,
                _: usize,
                _: Duration,
                _: Duration,
            ) -> Result<Vec<Received>, QueueError> {
                Ok(Vec::new())
            }
            async fn delete_batch(
                &self,
                _: &[String],
            ) -> Result<Vec<super::super::EntryFailure>, QueueError> {
                Ok(Vec::new())
            }
            async fn change_visibility(&self, _: &str, _: Duration) -> Result<(), QueueError> {
                Ok(())
            }
            async fn change_visibility_batch(
                &self,
                _: &[VisibilityChange],
            ) -> Result<Vec<super::super::EntryFailure>, QueueError> {
                Ok(Vec::new())
            }
        }
        let summary = redrive(
            dlq.as_ref(),
            &Refusing,
            &BTreeSet::new(),
            usize::MAX,
            false,
            &mut |_| {},
        )
        .await
        .unwrap();
        assert_eq!(summary.failed.len(), 1);
        assert!(
            summary.failed[0].1.contains("exceeds"),
            "{:?}",
            summary.failed
        );
        assert_eq!(dlq.len(), 1);
        assert_eq!(list(dlq.as_ref(), 10).await.unwrap().len(), 1);
    }
}
