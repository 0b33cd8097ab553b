//! Polling a queue the way the Lambda SQS event source mapping does, for `gateway serve`: long
//! polls of up to ten records, each batch hidden for the visibility timeout while the pipeline
//! works on it, records the pipeline reports as failures made visible again after their retry
//! delay, the others deleted. Redelivery limits and the dead-letter queue are the queue's own
//! redrive policy, as in AWS.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::live_config::Reloading;
use crate::queue::{MAX_RECEIVE, Queue, Received};

use super::{Batch, BatchReport, Pipeline, settle};

/// How the poller receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollSettings {
    /// Records per batch (1..=10, the event source mapping's batch size).
    pub batch_size: usize,
    /// Long-poll wait per receive (at most 20 s).
    pub wait: Duration,
    /// How long a received batch stays hidden (the function timeout's role: the batch's
    /// deadline is this long after the receive, so leases end before the records reappear).
    pub visibility: Duration,
    /// Pause after a failed receive before trying again.
    pub error_pause: Duration,
}

impl Default for PollSettings {
    fn default() -> Self {
        Self {
            batch_size: MAX_RECEIVE,
            wait: Duration::from_secs(20),
            visibility: Duration::from_secs(60),
            error_pause: Duration::from_secs(1),
        }
    }
}

/// Running totals of a poller.
#[derive(Debug, Default)]
pub struct PollerStats {
    /// Batches processed.
    pub batches: AtomicU64,
    /// Records received.
    pub records: AtomicU64,
    /// Records deleted.
    pub deleted: AtomicU64,
    /// Records handed back for a retry.
    pub retried: AtomicU64,
}

/// Polls one queue and runs each batch through a [`Pipeline`].
#[derive(Debug)]
pub struct Poller {
    pipeline: Arc<Reloading<Pipeline>>,
    queue: Arc<dyn Queue>,
    settings: PollSettings,
    stats: Arc<PollerStats>,
    /// `name` and a random instance tag: ledger leases are taken in the name of
    /// `{name}-{instance}-{batch}`, so two processes (or one restarted) never take each
    /// other's live lease as their own.
    name: String,
}

impl Poller {
    /// A poller of `queue` named `name` (batch owners are `{name}-{instance}-{n}`, the instance
    /// tag random per poller), always on `pipeline`.
    pub fn new(
        pipeline: Arc<Pipeline>,
        queue: Arc<dyn Queue>,
        settings: PollSettings,
        name: impl Into<String>,
    ) -> Self {
        let fixed = Reloading::fixed(
            Arc::clone(pipeline.config()),
            Arc::clone(&pipeline),
            Arc::clone(pipeline.clock()),
        );
        Self::reloading(Arc::new(fixed), queue, settings, name)
    }

    /// [`Poller::new`] on a pipeline rebuilt for each config version activated
    /// ([`crate::live_config`]): each batch runs on the pipeline in force when it starts.
    pub fn reloading(
        pipeline: Arc<Reloading<Pipeline>>,
        queue: Arc<dyn Queue>,
        settings: PollSettings,
        name: impl Into<String>,
    ) -> Self {
        Self {
            pipeline,
            queue,
            settings,
            stats: Arc::default(),
            name: format!(
                "{}-{:012x}",
                name.into(),
                crate::retry::random_below(1 << 48)
            ),
        }
    }

    /// The lease owner of batch number `n` of this poller.
    pub(super) fn owner(&self, n: u64) -> String {
        format!("{}-{n}", self.name)
    }

    /// The poller's running totals.
    pub fn stats(&self) -> Arc<PollerStats> {
        Arc::clone(&self.stats)
    }

    /// Receives one batch (waiting up to the poll wait) and processes it. `None` when nothing
    /// arrived. Queue errors are logged and answered with `None` after the error pause.
    pub async fn poll_once(&self) -> Option<BatchReport> {
        let records = self.receive().await?;
        Some(self.process(records).await)
    }

    async fn receive(&self) -> Option<Vec<Received>> {
        let s = &self.settings;
        match self
            .queue
            .receive(s.batch_size.clamp(1, MAX_RECEIVE), s.wait, s.visibility)
            .await
        {
            Ok(records) if records.is_empty() => None,
            Ok(records) => Some(records),
            Err(error) => {
                tracing::warn!(error_kind = "queue_receive", %error, "receive failed; pausing");
                tokio::time::sleep(s.error_pause).await;
                None
            }
        }
    }

    async fn process(&self, records: Vec<Received>) -> BatchReport {
        let s = &self.settings;
        let n = self.stats.batches.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats
            .records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let owner = self.owner(n);
        let visibility_ms = i64::try_from(s.visibility.as_millis()).unwrap_or(i64::MAX);
        let pipeline = self.pipeline.get().await;
        let deadline = pipeline.clock().now_ms().saturating_add(visibility_ms);
        let report = pipeline
            .process(Batch {
                records: &records,
                owner: &owner,
                deadline,
            })
            .await;
        match settle(self.queue.as_ref(), &report, true).await {
            Ok(summary) => {
                self.stats
                    .deleted
                    .fetch_add(summary.deleted as u64, Ordering::Relaxed);
                self.stats
                    .retried
                    .fetch_add(summary.delayed as u64, Ordering::Relaxed);
                for refused in &summary.refused {
                    tracing::warn!(error_kind = "queue_settle", reason = ?refused.reason, "queue refused a delete or visibility change; the record will be delivered again");
                }
            }
            Err(error) => {
                tracing::warn!(error_kind = "queue_settle", %error, "settling the batch failed; its records will be delivered again");
            }
        }
        report
    }

    /// Polls until `shutdown` turns true (checked between batches; a batch in progress
    /// finishes).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Only the wait for records is cut short; a received batch is always finished,
            // since abandoning it would leave its claims to expire and risk a duplicate.
            let records = tokio::select! {
                records = self.receive() => records,
                _ = shutdown.changed() => return,
            };
            if let Some(records) = records {
                self.process(records).await;
            }
        }
    }
}
