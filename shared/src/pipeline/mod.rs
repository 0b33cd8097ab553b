//! The send pipeline (ARCHITECTURE §3): what the sender function and `gateway serve` do with one
//! batch of queued messages. It composes the pure cores (message validation, router, limiter,
//! breaker) with the ports (state store, providers, event sink, clock).
//!
//! # One batch
//! 1. Every record is parsed on its own. A poison record is rejected (its `rejected` outcome
//!    event is emitted) and acknowledged; it never fails the batch.
//! 2. In one round trip: every valid message's ledger claim, the suppression lookup of every
//!    recipient, and one read of the breaker and limit items of every gateway any message may
//!    use. A message already `sent` is not sent again (its outcome event is re-emitted); one
//!    held by a live invocation is retried after that lease ends.
//! 3. Suppressed recipients are dropped; a message with none left is rejected.
//! 4. Messages are routed on the state read. Each round, the messages waiting for a gateway are
//!    grouped by their next candidate; each group takes its limits in one write or transaction,
//!    then the breaker admits each send (a closed breaker costs no request) and the sends run
//!    with bounded concurrency. Throttled, Unavailable and Auth answers fail over to the next
//!    candidate (at most `routing.max_failover_attempts` gateways per message); Permanent stops;
//!    Ambiguous follows `routing.ambiguous_policy`. Unsuitable (over that gateway's recipient or
//!    size limit) moves on without using up an attempt; a message every candidate finds
//!    unsuitable is rejected with their limits as the reason. Limits of sends the provider did
//!    not accept are given back.
//! 5. Sends are recorded in the ledger with one batch put; terminal failures are marked; claims
//!    of deferred messages are released (except after an ambiguous answer: the claim is kept so
//!    no other invocation sends until the lease ends).
//! 6. One outcome event per message goes to the event sink. A message is acknowledged only
//!    once its event is out: if emitting fails, the message is retried and its redelivery finds
//!    the ledger entry and re-emits the event.
//! 7. Breaker outcomes are flushed once per gateway (a clean closed breaker writes nothing).
//!
//! The happy path of a batch therefore costs three sequential DynamoDB round trips: the reads
//! and claims, the limit transactions, and the ledger marks.
//!
//! # What the caller does with the report
//! Each record ends [`Disposition::Done`] (delete it; the Lambda runtime does that for records
//! not listed as failures) or [`Disposition::Retry`] (report it as a batch item failure and set
//! its visibility to the given delay, see [`settle`]).

mod backoff;
mod decide;
mod metrics;
mod poll;
mod run;
mod settle;
#[cfg(test)]
mod tests;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use crate::breaker::Transition;
use crate::clock::{Clock, EpochMillis};
use crate::config::Config;
use crate::events::{EventSink, Outcome};
use crate::providers::Providers;
use crate::state::StateStore;

pub use backoff::{Backoff, jitter_fraction, receives_to_wait};
pub use decide::{Decider, KeyBook, Read, ReadList};
pub use metrics::{GatewayMetrics, Metrics, emf_lines};
pub use poll::{PollSettings, Poller, PollerStats};
pub use settle::{SettleError, SettleSummary, settle};

/// Tunables of the pipeline. `Default` holds the values the functions use.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSettings {
    /// Provider calls in flight at once within one batch.
    pub concurrency: NonZeroUsize,
    /// Deferral backoff when no provider said when to retry.
    pub backoff: Backoff,
    /// No provider call starts when less than this remains before the deadline; the messages
    /// left are deferred. It must exceed the providers' request timeout, so a started call ends
    /// (or is abandoned as ambiguous) before the invocation does.
    pub deadline_margin: Duration,
    /// The queue's redrive `maxReceiveCount`, when known: on that receive, the last one the
    /// queue allows, a message that would be deferred once more is given up instead. Its
    /// outcome is `failed` with the reason ("gave up after N receives over D; last: …"), its
    /// event goes to the record and the customers, its claim is released and it is handed back
    /// at once, so SQS moves it to the dead-letter queue on the next receive; a redrive after a
    /// fix sends it, and the record then says `sent`. `None`: the queue decides alone (the
    /// recorder records what reaches the dead-letter queue, see
    /// [`crate::recorder::Recorder::park_dead_letters`]).
    pub max_receive_count: Option<u32>,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            concurrency: NonZeroUsize::new(10).unwrap_or(NonZeroUsize::MIN),
            backoff: Backoff::default(),
            deadline_margin: Duration::from_secs(2),
            max_receive_count: None,
        }
    }
}

/// Everything the pipeline needs, built once per process.
#[derive(Debug, Clone)]
pub struct Pipeline {
    decider: Decider,
    providers: Providers,
    store: Arc<dyn StateStore>,
    events: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
    settings: PipelineSettings,
}

impl Pipeline {
    /// A pipeline over `config` sending through `providers` (one per enabled gateway, keyed by
    /// gateway id; a gateway without a provider is skipped as unusable).
    pub fn new(
        config: Arc<Config>,
        providers: Providers,
        store: Arc<dyn StateStore>,
        events: Arc<dyn EventSink>,
        clock: Arc<dyn Clock>,
        settings: PipelineSettings,
    ) -> Self {
        Self {
            decider: Decider::new(config),
            providers,
            store,
            events,
            clock,
            settings,
        }
    }

    /// The effective config.
    pub fn config(&self) -> &Arc<Config> {
        self.decider.config()
    }

    /// The clock the pipeline reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

/// One batch of queued messages to process.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// The deliveries, as received (SQS message id, receipt handle, body, receive count).
    pub records: &'a [crate::queue::Received],
    /// The invocation's identity (Lambda request id, or a poller's id per batch); ledger leases
    /// are taken in its name.
    pub owner: &'a str,
    /// When the invocation must have finished (epoch ms): the ledger lease ends here and no
    /// provider call starts later than `deadline - deadline_margin`.
    pub deadline: EpochMillis,
}

/// What the caller must do with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Acknowledge (delete) it: sent, failed or rejected for good, and its event emitted.
    Done,
    /// Report it as a batch item failure and make it visible again after `after` (rounded up to
    /// whole seconds; at most [`crate::queue::MAX_DEFERRAL`], which SQS accepts at any moment of
    /// an invocation).
    Retry {
        /// Delay before the next delivery.
        after: Duration,
    },
}

/// What happened to one record in this batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemReport {
    /// The queue's id of the record (SQS `messageId`), which batch item failures name.
    pub queue_message_id: String,
    /// The delivery's receipt handle.
    pub receipt_handle: String,
    /// The message id (idempotency key), when one could be read.
    pub message_id: Option<String>,
    /// The outcome (for a redelivered message found in the ledger: the recorded one).
    pub outcome: Outcome,
    /// True when the outcome was found in the ledger rather than decided now (nothing was sent).
    pub replayed: bool,
    /// The gateway that sent it, or the last one tried.
    pub gateway: Option<String>,
    /// Why it was deferred, failed or rejected.
    pub reason: Option<String>,
    /// What to do with the record.
    pub disposition: Disposition,
}

/// The result of [`Pipeline::process`]: one report per record, in record order, and what the
/// batch counted.
#[derive(Debug, Clone, Default)]
pub struct BatchReport {
    /// One per record, in the order given.
    pub items: Vec<ItemReport>,
    /// Counters for metrics.
    pub metrics: Metrics,
    /// Breaker transitions this batch performed (each is performed by exactly one instance).
    pub transitions: Vec<Transition>,
}

impl BatchReport {
    /// The records to report as batch item failures. A handler that cannot name one (an empty
    /// queue message id) must fail the whole batch instead: an unnamed failure would be deleted.
    pub fn failures(&self) -> impl Iterator<Item = &ItemReport> {
        self.items
            .iter()
            .filter(|i| matches!(i.disposition, Disposition::Retry { .. }))
    }
}
