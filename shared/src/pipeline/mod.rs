//! The send pipeline (ARCHITECTURE §3): what the sender function and `gateway serve` do with one
//! batch of queued messages. It composes the pure cores (message validation, router, limiter,
//! breaker) with the ports (state store, providers, event sink, clock).
//!
//! Its own rules are pure transitions too, in `rules` (claim outcome → action, evidence →
//! reconcile, limit verdict and breaker permit → admission, provider answer → effects,
//! deferral and give-up), each held by table-driven tests; `run` is the driver of the I/O
//! rounds that applies them, `work` what it knows of each message, `resolve` what each record
//! resolves to.
//!
//! # One batch
//! 1. Every record is parsed on its own. A poison record is rejected (its `rejected` outcome
//!    event is emitted) and acknowledged; it never fails the batch.
//! 2. In one round trip: every valid message's ledger claim, the suppression lookup of every
//!    recipient, and one read of the breaker, health and lever items of every gateway any
//!    message may use (limit items are not read: the limiter learns them from its writes). A message already `sent` is not sent again (its outcome event is re-emitted); one
//!    held by a live invocation is retried after that lease ends.
//! 3. Suppressed recipients are dropped; a message with none left is rejected. A message an
//!    earlier call may have delivered (its claim took over an expired lease, or its entry notes
//!    a call that got no answer) is reconciled first: with the providers' acceptance evidence
//!    it is recorded sent and nobody is called; while evidence may still come it waits
//!    ([`PipelineSettings::acceptance_wait`]); otherwise it is sent again, flagged.
//! 4. Messages are routed on the state read. Each round, the messages waiting for a gateway are
//!    grouped by their next candidate; each group takes its limits from the process's quota
//!    leases and, for what they lack, conditional writes in flight together (one per limited
//!    sender and per level short of its need; [`crate::limiter::acquire_leased`]), then the breaker admits each send (a closed breaker costs no request) and the sends run
//!    with bounded concurrency. Throttled, Unavailable and Auth answers fail over to the next
//!    candidate (at most `routing.max_failover_attempts` gateways per message); Permanent stops;
//!    Ambiguous follows `routing.ambiguous_policy`. Unsuitable (over that gateway's recipient or
//!    size limit) moves on without using up an attempt; a message every candidate finds
//!    unsuitable is rejected with their limits as the reason. Limits of sends the provider did
//!    not accept are given back.
//! 5. Each send is marked in the ledger the moment its answer arrives (an unanswered call is
//!    noted), beside the calls still running; a mark that cannot be written before the deadline
//!    is kept by the process and written with its next batch's claims. Terminal failures are
//!    marked; claims of deferred messages are released (except after an ambiguous answer: the
//!    claim is kept so no other invocation sends until the lease ends).
//! 6. One outcome event per message goes to the event sink. A message is acknowledged only
//!    once its event is out: if emitting fails, the message is retried and its redelivery finds
//!    the ledger entry and re-emits the event.
//! 7. Breaker outcomes are flushed once per gateway (a clean closed breaker writes nothing).
//!
//! The happy path of a batch therefore costs three sequential DynamoDB round trips: the reads
//! and claims, the limit writes, and the ledger marks.
//!
//! # What the caller does with the report
//! Each record ends [`Disposition::Done`] (delete it; the Lambda runtime does that for records
//! not listed as failures) or [`Disposition::Retry`] (report it as a batch item failure and set
//! its visibility to the given delay, see [`settle`]).

mod backoff;
mod decide;
mod metrics;
mod poll;
mod resolve;
mod rules;
mod run;
mod settle;
#[cfg(test)]
mod tests;
mod work;

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
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
    /// left are deferred. At least the providers' request timeout plus [`Self::post_send`]
    /// ([`PipelineSettings::check`]), so a started call ends, or is abandoned as unanswered,
    /// with the post-send budget still left. [`PipelineSettings::for_config`] sets exactly that.
    pub deadline_margin: Duration,
    /// Time kept after the last provider call for what must follow it before the deadline: the
    /// ledger mark (or the note of an unanswered call), the ledger and breaker writes of step 5
    /// and the events. A call still running when only this is left is abandoned as unanswered;
    /// every write after a send is retried only while the deadline allows. Default 5 s.
    pub post_send: Duration,
    /// How long after a call that got no answer (or, when its time is unknown, after the lease
    /// it ran under ended) the sender waits for the provider's acceptance event before sending
    /// again, for gateways whose webhooks report acceptance (Mailgun, SendGrid, SES; see
    /// docs/RELIABILITY.md "Acceptance evidence"). Default 2 min.
    pub acceptance_wait: Duration,
    /// The queue's redrive `maxReceiveCount`, when known: on that receive, the last one the
    /// queue allows, a message that would be deferred once more is given up instead. Its
    /// outcome is `failed` with the reason ("gave up after N receives over D; last: …"), its
    /// event goes to the record and the customers, its claim is released and it is handed back
    /// at once, so SQS moves it to the dead-letter queue on the next receive; a redrive after a
    /// fix sends it, and the record then says `sent`. `None`: the queue decides alone (the
    /// recorder records what reaches the dead-letter queue, see
    /// [`crate::recorder::Recorder::park_dead_letters`]).
    pub max_receive_count: Option<u32>,
    /// How much of the shared limits a process takes ahead of its need (see
    /// [`crate::limiter::LeasePolicy`] and docs/STATE.md, "Limiter: quota leases").
    pub leases: crate::limiter::LeasePolicy,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            concurrency: NonZeroUsize::new(10).unwrap_or(NonZeroUsize::MIN),
            backoff: Backoff::default(),
            deadline_margin: Duration::from_secs(2),
            post_send: Duration::from_secs(5),
            acceptance_wait: Duration::from_secs(120),
            max_receive_count: None,
            leases: crate::limiter::LeasePolicy::default(),
        }
    }
}

/// Pipeline settings that cannot work with a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the deadline margin ({margin_ms} ms) is below the provider request timeout \
     (http.request_timeout, {timeout_ms} ms) plus the post-send budget ({post_send_ms} ms): a call \
     started just before the margin could outlive the invocation, or leave no time to record it"
)]
pub struct SettingsError {
    /// The margin set.
    pub margin_ms: u128,
    /// The config's provider request timeout.
    pub timeout_ms: u128,
    /// The post-send budget.
    pub post_send_ms: u128,
}

impl PipelineSettings {
    /// The defaults with the deadline margin `config` needs: its provider request timeout plus
    /// the post-send budget.
    pub fn for_config(config: &Config) -> Self {
        let defaults = Self::default();
        Self {
            deadline_margin: config.http.request_timeout + defaults.post_send,
            ..defaults
        }
    }

    /// Refuses a deadline margin below the longest provider request timeout plus the post-send
    /// budget (every provider client takes `http.request_timeout` as its whole-request bound).
    pub fn check(&self, config: &Config) -> Result<(), SettingsError> {
        let needed = config.http.request_timeout + self.post_send;
        if self.deadline_margin < needed {
            return Err(SettingsError {
                margin_ms: self.deadline_margin.as_millis(),
                timeout_ms: config.http.request_timeout.as_millis(),
                post_send_ms: self.post_send.as_millis(),
            });
        }
        Ok(())
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
    /// Sends whose ledger mark could not be written before their invocation's deadline,
    /// written with the next batch's claims (shared by the clones of this pipeline).
    unmarked: Arc<Mutex<Vec<(crate::ledger::Claim, crate::ledger::SentRecord)>>>,
    /// Where attachments given by reference are read ([`crate::attachments`]); without it a
    /// message naming one fails.
    attachments: Option<crate::attachments::Attachments>,
    /// What this process holds of the shared limits ([`crate::limiter::Leases`]), kept across
    /// batches and config reloads (a holding is tied to the limits it was taken under).
    leases: Arc<crate::limiter::Leases>,
    /// The pause-all lever's item as last read, and when ([`ALL_LEVERS_TTL_MS`]).
    all_levers: Arc<Mutex<Option<KeptItem>>>,
}

/// An item as read at a time (`None`: there was no item).
type KeptItem = (EpochMillis, Option<crate::state::Item>);

/// How long a process reuses the pause-all lever's item (`ctl#all`) before reading it again.
/// Every batch of every instance read it: at 50,000 messages a second across the fleet that
/// one key took 5,000 strongly consistent reads a second, over DynamoDB's 3,000 per partition.
/// Read at most once a second per process, a pause of all sending takes effect within a
/// second; a gateway's own lever (`ctl#gw#{id}`) is still read with every batch.
pub const ALL_LEVERS_TTL_MS: i64 = 1_000;

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
        let leases = Arc::new(crate::limiter::Leases::new(settings.leases));
        Self {
            decider: Decider::new(config),
            providers,
            store,
            events,
            clock,
            settings,
            unmarked: Arc::default(),
            attachments: None,
            leases,
            all_levers: Arc::default(),
        }
    }

    /// This pipeline reading attachments given by reference from `attachments`.
    #[must_use]
    pub fn with_attachments(mut self, attachments: crate::attachments::Attachments) -> Self {
        self.attachments = Some(attachments);
        self
    }

    /// This pipeline over a new config version: its providers and settings, the same store,
    /// events, clock and list of sends still to mark (a send made under the old version is
    /// marked by the new one).
    pub fn reconfigured(
        &self,
        config: Arc<Config>,
        providers: Providers,
        settings: PipelineSettings,
    ) -> Self {
        Self {
            decider: Decider::new(config),
            providers,
            store: Arc::clone(&self.store),
            events: Arc::clone(&self.events),
            clock: Arc::clone(&self.clock),
            settings,
            unmarked: Arc::clone(&self.unmarked),
            attachments: self.attachments.clone(),
            leases: Arc::clone(&self.leases),
            all_levers: Arc::clone(&self.all_levers),
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
