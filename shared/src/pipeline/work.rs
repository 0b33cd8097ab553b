//! What the run knows about each record and each valid message while it works on a batch.
//! The transitions of a message's [`Stage`] are decided by [`super::rules`]; [`Work::apply`]
//! and friends only write those decisions down.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::clock::EpochMillis;
use crate::events::{AttemptRecord, Outcome, OutcomeEvent};
use crate::ledger::{Claim, FailedRecord, SentRecord};
use crate::message::{MessageError, OutboundMessage};
use crate::providers::Accepted;

/// Longest reason text carried in an event (a poison body can produce many problems).
pub(super) const MAX_REASON_CHARS: usize = 1_000;

/// Where a message stands in the run.
#[derive(Debug, Clone)]
pub(super) enum Stage {
    /// Still looking for a gateway.
    Pending,
    /// A provider accepted it (now, or, after an unanswered call, as its evidence shows).
    Sent {
        gateway: String,
        accepted: Accepted,
        at: EpochMillis,
    },
    /// A provider refused it permanently.
    Failed { gateway: usize, reason: String },
    /// Refused before any provider (every recipient suppressed).
    Rejected { reason: String },
    /// Its `expires_at` passed before it could be sent: failed, no provider called.
    Expired { reason: String },
    /// Found in the ledger (sent, failed, or held by another invocation): nothing to do here;
    /// its resolution comes from the ledger entry.
    Replayed,
    /// Not sent now.
    Deferred {
        reason: String,
        retry_at: Option<EpochMillis>,
        /// After an unanswered call the claim is kept until its lease ends, so no other
        /// invocation sends while the first call may still be delivering.
        keep_claim: bool,
    },
}

/// A valid message in the run.
#[derive(Debug)]
pub(super) struct Work {
    pub record: usize,
    /// The message as received (all recipients), for the events.
    pub original: OutboundMessage,
    /// The message to send: suppressed recipients left out (`None` until suppression is known
    /// or when none remain).
    pub message: Option<OutboundMessage>,
    /// The recipients (canonical addresses) suppressed for the message's stream; the outcome
    /// reports them `SUPPRESSED` (resolve.rs).
    pub suppressed: BTreeSet<String>,
    pub claim: Option<Claim>,
    pub candidates: Vec<usize>,
    /// Routed gateways beyond `routing.max_failover_attempts`, in order: each gateway that
    /// answers `Unsuitable` hands its place to the next of them.
    pub reserve: Vec<usize>,
    /// How many candidates answered `Unsuitable`.
    pub unsuitable: usize,
    pub cursor: usize,
    pub attempts: Vec<AttemptRecord>,
    /// The earliest time a candidate said it can take the message again.
    pub retry_at: Option<EpochMillis>,
    /// Whether a candidate failed without saying when to retry (a 5xx, a connect error): the
    /// message is then also worth retrying after the ordinary backoff, even when another
    /// candidate's known time (an hourly limit, say) is much later.
    pub retry_unknown: bool,
    pub notes: Vec<String>,
    pub last_gateway: Option<usize>,
    pub stage: Stage,
}

impl Work {
    pub fn new(record: usize, original: OutboundMessage) -> Self {
        Self {
            record,
            original,
            message: None,
            suppressed: BTreeSet::new(),
            claim: None,
            candidates: Vec::new(),
            reserve: Vec::new(),
            unsuitable: 0,
            cursor: 0,
            attempts: Vec::new(),
            retry_at: None,
            retry_unknown: false,
            notes: Vec::new(),
            last_gateway: None,
            stage: Stage::Pending,
        }
    }

    /// Claimed and still looking for a gateway.
    pub fn is_pending(&self) -> bool {
        matches!(self.stage, Stage::Pending) && self.claim.is_some()
    }

    pub fn defer(&mut self, reason: String, retry_at: Option<EpochMillis>) {
        self.stage = Stage::Deferred {
            reason,
            retry_at: earliest(self.retry_at, retry_at),
            keep_claim: false,
        };
    }

    pub fn note(&mut self, note: String, retry_at: Option<EpochMillis>) {
        self.notes.push(note);
        self.retry_at = earliest(self.retry_at, retry_at);
        self.retry_unknown |= retry_at.is_none();
    }

    /// Moves on to the next candidate after `note`.
    pub fn next(&mut self, note: String, retry_at: Option<EpochMillis>) {
        self.note(note, retry_at);
        self.cursor += 1;
    }

    /// Whether a candidate is left after the current one.
    pub fn has_next(&self) -> bool {
        self.cursor + 1 < self.candidates.len()
    }

    /// Writes down what a provider's answer decided ([`super::rules::on_answer`]).
    pub fn apply(&mut self, then: Then, gateway: usize, gateway_id: &str, at: EpochMillis) {
        match then {
            Then::Sent(accepted) => {
                self.stage = Stage::Sent {
                    gateway: gateway_id.to_owned(),
                    accepted,
                    at,
                };
            }
            Then::Failed(reason) => self.stage = Stage::Failed { gateway, reason },
            Then::Next {
                note,
                retry_at,
                unsuitable,
            } => {
                if unsuitable {
                    // Not an attempt that failed: the next routed gateway, if any, takes its
                    // place within the failover bound.
                    self.unsuitable += 1;
                    if !self.reserve.is_empty() {
                        self.candidates.push(self.reserve.remove(0));
                    }
                }
                self.next(note, retry_at);
            }
            Then::Hold { reason, retry_at } => {
                self.stage = Stage::Deferred {
                    reason,
                    retry_at: Some(retry_at),
                    keep_claim: true,
                };
            }
        }
    }

    /// Deferred because every candidate was tried or busy; rejected when every candidate said it
    /// cannot take the message (over its recipient or size limits), since no retry changes that.
    pub fn exhausted(&mut self) {
        if self.unsuitable > 0 && self.unsuitable == self.candidates.len() {
            self.stage = Stage::Rejected {
                reason: truncate(format!(
                    "no gateway can take the message: {}",
                    self.notes.join("; ")
                )),
            };
            return;
        }
        let reason = if self.notes.is_empty() {
            "no gateway can take the message now".to_owned()
        } else {
            self.notes.join("; ")
        };
        let retry_at = self.retry_at;
        self.defer(reason, retry_at);
    }
}

/// What a provider's answer decides for its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Then {
    Sent(Accepted),
    /// Refused for good.
    Failed(String),
    /// On to the next candidate. `unsuitable`: this gateway cannot take it at all, which does
    /// not use up a failover attempt.
    Next {
        note: String,
        retry_at: Option<EpochMillis>,
        unsuitable: bool,
    },
    /// The call went out and got no answer: keep the claim (no other invocation sends while
    /// the call may still deliver) and retry once the lease has ended.
    Hold {
        reason: String,
        retry_at: EpochMillis,
    },
}

/// What became of one record before the events are emitted.
#[derive(Debug)]
pub(super) enum Slot {
    /// Not a valid message.
    Poison {
        message_id: String,
        error: MessageError,
    },
    /// The same message id as an earlier record of this batch: it follows that record.
    DuplicateOf { first: usize, message_id: String },
    /// A valid message (index into the works).
    Work(usize),
}

/// A redelivered message found in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Replay {
    Sent(SentRecord),
    Failed(FailedRecord),
    Held { until: EpochMillis },
}

/// What a record resolves to.
#[derive(Debug)]
pub(super) struct Resolution {
    pub outcome: Outcome,
    pub replayed: bool,
    pub gateway: Option<String>,
    pub reason: Option<String>,
    pub retry: Option<Duration>,
    pub event: Option<OutcomeEvent>,
}

pub(super) fn earliest(a: Option<EpochMillis>, b: Option<EpochMillis>) -> Option<EpochMillis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub(super) fn truncate(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(MAX_REASON_CHARS) {
        s.truncate(i);
        s.push('…');
    }
    s
}
