//! The shared circuit breaker (ARCHITECTURE §3.4): a pure state machine over one stored item
//! per gateway, and a small service that runs it against the
//! [`StateStore`](crate::state::StateStore) port.
//!
//! # Why it is shaped this way
//! Every Lambda instance reads and writes the same item, so every transition is a conditional
//! write decided by a pure function of (stored state, outcomes, settings, `now`). The functions
//! [`permit`] and [`flush`] return the write to attempt (or none); the service functions
//! [`permit_send`] and [`flush_outcomes`] attempt it and, when the condition failed, decide again
//! from the item the store returned (unless that item holds their own write: see "Writes whose
//! answer was lost" below). Exactly one instance therefore performs each transition, and only
//! that instance gets a [`Transition`] back to log, count and record.
//!
//! # Phases
//! - **Closed**: every send is allowed without a write. Provider-level failures are counted in
//!   a window of `window` starting at `window_start` (the first failure after the previous
//!   window ended); when the window has elapsed the next failure starts a new one. When the
//!   window's failures reach `failure_threshold` (and, if `failure_ratio` is set, failures /
//!   (failures + successes) reaches the ratio) the breaker opens. This is a *tumbling* window
//!   anchored at a failure, not a sliding one: it costs one counter and no per-failure history
//!   in the shared item, and its blind spot is bounded — failures straddling a window end can
//!   reach almost twice the threshold within one `window` length before it opens. Operators
//!   who need a tighter bound halve `window` and `failure_threshold` together.
//! - **Open** until `until` = opening time + `timeout`: every send is rejected.
//! - **Half-open**: the first `permit` after `until` moves it to half-open and takes the first
//!   trial slot. At most `max_requests` trials are admitted fleet-wide per half-open round (a
//!   counter raised by a write conditioned on `admitted < max_requests`). `success_threshold`
//!   trial successes close it; any trial failure re-opens it for another `timeout`. A round
//!   whose trials have not resolved after `timeout` (their instances crashed) starts a new
//!   round, so the breaker can never be stuck half-open.
//!
//! # What counts
//! Only provider-level outcomes ([`OutcomeClass::Throttled`], `Unavailable`, `Auth`,
//! `Ambiguous`) are failures. [`OutcomeClass::Permanent`] (one bad recipient or bad content) says
//! nothing about the provider's health while closed: it is neither a failure nor a success and
//! is ignored. For a half-open trial it counts as a success (the provider answered).
//! Outcomes are aggregated per invocation in a [`Tally`] and written once per gateway by
//! [`flush`]; a closed breaker with no failures in the tally costs no write.
//!
//! Fixes over the original system: failures live in a time window instead of accumulating
//! forever; `max_requests` is enforced fleet-wide; trial successes are reset at every half-open
//! round, so one success cannot close it; permanent rejections do not count; and [`view`]
//! reports an open breaker whose timeout has elapsed as half-open, so a router that skips open
//! breakers still reaches the [`permit`] call that moves it to half-open.
//!
//! # Stored form
//! Key `brk#{gateway_id}` ([`key`]). Every write stores all of these attributes (numbers are
//! integers; times are epoch milliseconds):
//!
//! | attribute | meaning |
//! |---|---|
//! | `phase` | `"closed"`, `"open"` or `"half_open"` |
//! | `gen` | generation: raised by every transition and window roll-over; the optimistic-lock guard of every write |
//! | `window_start` | start of the current failure-counting window (closed) |
//! | `failures` | provider-level failures counted in the window |
//! | `successes` | successes counted in the window (written only alongside failures, see [`flush`]) |
//! | `opened_at` | when it last opened |
//! | `until` | end of the open period |
//! | `half_open_at` | when the current half-open round began |
//! | `admitted` | trials admitted in the current half-open round |
//! | `trial_successes` | trial successes reported in the current half-open round |
//! | `write_id` | the [`WriteToken`] of the write that last changed the item (absent on items written before it existed) |
//!
//! A missing item is a closed, clean breaker. An item that does not decode is treated as closed
//! and clean and reported as [`MalformedItem`] for the caller to log; the next write replaces it
//! (guarded by its exact current content).
//!
//! # Writes whose answer was lost
//! The store retries a request that timed out, and DynamoDB may have applied the first attempt.
//! Untagged, a retried `ADD` would be applied again (a breaker could open on half the failures
//! it needs, close on half the trial successes, or spend two trial slots on one trial), and a
//! retried `Put` would fail its generation guard on its own result, so the caller would decide
//! again as if another instance had won: adding its tally a second time to the window it had
//! just started, counting a closing flush's ordinary failures into the fresh window, taking
//! another slot of the round it had just started (or, with none left, not sending the trial it
//! had taken a slot for), and never reporting the transition it had made.
//!
//! So the service tags every write with a random [`WriteToken`] ([`BreakerWrite::tagged`]): the
//! write stores it in `write_id`, and its condition excludes an item that already holds it. A
//! retry of an applied write therefore fails its condition, and an item returned holding the
//! caller's token ([`WriteToken::is_in`]) means "this write was applied": the caller reports its
//! transition once and writes nothing more for it. Each write of one call gets its own token
//! (the next write, after an applied `ADD`, is a different write). This costs no request and
//! about 20 bytes of item. It does not cover another instance's write landing between the
//! applied attempt and its retry (within the adapter's retry delay, a couple of seconds): that
//! write replaces the token, so a retried `ADD` counts again and a retried `Put` is decided
//! again as a lost race. Only a history of tokens in the item could tell, and that would grow
//! the item (and the WCU of every write) with every reporter.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::EpochMillis;
use crate::config::BreakerSettings;
use crate::outcome::OutcomeClass;
use crate::state::{CmpOp, Condition, Item, Key, UpdateAction, Value, Write, WriteOp};

/// Most conditional writes one [`permit_send`] or [`flush_outcomes`] call attempts before giving
/// up with [`BreakerError::Contended`]. Each failed attempt means another instance changed the
/// item, so this only runs out under pathological contention.
pub const MAX_ATTEMPTS: usize = 8;

/// The store key of a gateway's breaker item: `brk#{gateway_id}`.
pub fn key(gateway_id: &str) -> Key {
    format!("brk#{gateway_id}")
}

const PHASE: &str = "phase";
const GEN: &str = "gen";
const WINDOW_START: &str = "window_start";
const FAILURES: &str = "failures";
const SUCCESSES: &str = "successes";
const OPENED_AT: &str = "opened_at";
const UNTIL: &str = "until";
const HALF_OPEN_AT: &str = "half_open_at";
const ADMITTED: &str = "admitted";
const TRIAL_SUCCESSES: &str = "trial_successes";
const WRITE_ID: &str = "write_id";

/// The phase of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Sends flow; failures are counted.
    Closed,
    /// Sends are rejected until the timeout elapses.
    Open,
    /// A bounded number of trial sends decide whether to close or re-open.
    HalfOpen,
}

impl Phase {
    /// The stored and logged name: `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Closed, Self::Open, Self::HalfOpen]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the decoded state relates to what is stored; decides the guard of the next write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// No item: the next write requires that there still is none.
    Missing,
    /// A well-formed item with generation [`BreakerState::generation`].
    Valid,
    /// An item that did not decode; the next write requires it unchanged and replaces it.
    Malformed(Item),
}

/// A breaker's state as read from its item. All times are epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerState {
    /// Current phase.
    pub phase: Phase,
    /// Generation (see the module's stored-form table); 0 when nothing is stored.
    pub generation: i64,
    /// Start of the failure-counting window.
    pub window_start: EpochMillis,
    /// Provider-level failures in the window.
    pub failures: u32,
    /// Successes recorded in the window.
    pub successes: u32,
    /// When it last opened (0: never).
    pub opened_at: EpochMillis,
    /// End of the open period.
    pub until: EpochMillis,
    /// When the current half-open round began.
    pub half_open_at: EpochMillis,
    /// Trials admitted in the current half-open round.
    pub admitted: u32,
    /// Trial successes in the current half-open round.
    pub trial_successes: u32,
    /// Where this state came from.
    pub stored: Stored,
}

impl BreakerState {
    /// A closed, clean breaker with nothing stored.
    pub fn missing() -> Self {
        Self {
            phase: Phase::Closed,
            generation: 0,
            window_start: 0,
            failures: 0,
            successes: 0,
            opened_at: 0,
            until: 0,
            half_open_at: 0,
            admitted: 0,
            trial_successes: 0,
            stored: Stored::Missing,
        }
    }

    /// Decodes a stored item. `None` is a closed, clean breaker. A malformed item decodes as a
    /// closed, clean breaker together with the reason, which the caller should log; never panics.
    pub fn from_item(item: Option<&Item>) -> (Self, Option<MalformedItem>) {
        let Some(item) = item else {
            return (Self::missing(), None);
        };
        match decode(item) {
            Ok(state) => (state, None),
            Err(problem) => (
                Self {
                    stored: Stored::Malformed(item.clone()),
                    ..Self::missing()
                },
                Some(problem),
            ),
        }
    }

    /// The full item of this state (every attribute of the stored-form table).
    pub fn to_item(&self) -> Item {
        let mut item = Item::new();
        item.insert(PHASE.into(), Value::from(self.phase.as_str()));
        item.insert(GEN.into(), Value::N(self.generation));
        item.insert(WINDOW_START.into(), Value::N(self.window_start));
        item.insert(FAILURES.into(), Value::N(i64::from(self.failures)));
        item.insert(SUCCESSES.into(), Value::N(i64::from(self.successes)));
        item.insert(OPENED_AT.into(), Value::N(self.opened_at));
        item.insert(UNTIL.into(), Value::N(self.until));
        item.insert(HALF_OPEN_AT.into(), Value::N(self.half_open_at));
        item.insert(ADMITTED.into(), Value::N(i64::from(self.admitted)));
        item.insert(
            TRIAL_SUCCESSES.into(),
            Value::N(i64::from(self.trial_successes)),
        );
        item
    }

    /// The write that resets the breaker stored as `item` to closed and clean (an operator's
    /// `gateway ctl breaker reset`): the next generation, so every instance's pending write,
    /// guarded by the generation it read, fails and is decided again on the reset state.
    /// Guarded by the item as read, for a transaction that must not overwrite a change made
    /// since.
    pub fn reset_write(gateway_id: &str, item: Option<&Item>) -> Write {
        let (state, _) = Self::from_item(item);
        let mut reset = Self::missing();
        reset.generation = state.generation.saturating_add(1);
        Write {
            key: key(gateway_id),
            op: WriteOp::Put(reset.to_item()),
            condition: state.guard(),
        }
    }

    /// The condition "the item is still the one this state was read from".
    fn guard(&self) -> Condition {
        match &self.stored {
            Stored::Missing => Condition::ItemNotExists,
            Stored::Valid => Condition::cmp(GEN, CmpOp::Eq, self.generation),
            Stored::Malformed(item) => Condition::And(
                std::iter::once(Condition::ItemExists)
                    .chain(
                        item.iter()
                            .map(|(a, v)| Condition::Cmp(a.clone().into(), CmpOp::Eq, v.clone())),
                    )
                    .collect(),
            ),
        }
    }

    /// The state after a transition: next generation, every counter cleared.
    fn next(&self, phase: Phase) -> Self {
        Self {
            phase,
            generation: self.generation.saturating_add(1),
            failures: 0,
            successes: 0,
            admitted: 0,
            trial_successes: 0,
            stored: Stored::Valid,
            ..self.clone()
        }
    }
}

fn decode(item: &Item) -> Result<BreakerState, MalformedItem> {
    // One pass over the attributes rather than a map lookup per field: every batch decodes
    // the breaker of every gateway it may use.
    let mut phase = None;
    let mut numbers: [Option<i64>; 9] = [None; 9];
    for (attr, value) in item {
        let slot = match attr.as_str() {
            PHASE => {
                phase = value.as_s();
                continue;
            }
            GEN => 0,
            WINDOW_START => 1,
            FAILURES => 2,
            SUCCESSES => 3,
            OPENED_AT => 4,
            UNTIL => 5,
            HALF_OPEN_AT => 6,
            ADMITTED => 7,
            TRIAL_SUCCESSES => 8,
            _ => continue,
        };
        numbers[slot] = value.as_n();
    }
    let phase = phase
        .and_then(Phase::parse)
        .ok_or(MalformedItem::Attribute(PHASE))?;
    let time =
        |slot: usize, attr: &'static str| numbers[slot].ok_or(MalformedItem::Attribute(attr));
    let count = |slot: usize, attr: &'static str| {
        numbers[slot]
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(MalformedItem::Attribute(attr))
    };
    Ok(BreakerState {
        phase,
        generation: time(0, GEN)?,
        window_start: time(1, WINDOW_START)?,
        failures: count(2, FAILURES)?,
        successes: count(3, SUCCESSES)?,
        opened_at: time(4, OPENED_AT)?,
        until: time(5, UNTIL)?,
        half_open_at: time(6, HALF_OPEN_AT)?,
        admitted: count(7, ADMITTED)?,
        trial_successes: count(8, TRIAL_SUCCESSES)?,
        stored: Stored::Valid,
    })
}

/// Why a stored breaker item could not be decoded (it is then treated as closed and clean).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedItem {
    /// The attribute is missing, of the wrong type or out of range.
    #[error("breaker item attribute {0} is missing or invalid")]
    Attribute(&'static str),
}

/// The router's view of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BreakerView {
    /// Sends flow (also: no stored state yet).
    #[default]
    Closed,
    /// Rejecting sends until `until` (epoch ms).
    Open {
        /// End of the open period.
        until: EpochMillis,
    },
    /// Trial sends may be admitted (also an open breaker whose timeout has elapsed: the next
    /// [`permit`] moves it to half-open, so the router must not skip it).
    HalfOpen,
}

/// The router-friendly state of a stored item at `now` (a missing or malformed item is closed).
pub fn view(item: Option<&Item>, now: EpochMillis) -> BreakerView {
    let (state, _) = BreakerState::from_item(item);
    match state.phase {
        Phase::Closed => BreakerView::Closed,
        Phase::Open if now < state.until => BreakerView::Open { until: state.until },
        Phase::Open | Phase::HalfOpen => BreakerView::HalfOpen,
    }
}

/// How a send was admitted; tells [`Tally::record`] which counters its outcome belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted by a closed (or disabled) breaker.
    Allowed,
    /// Admitted as a half-open trial.
    Trial,
    /// Rejected until `until` (epoch ms); nothing was sent.
    Rejected {
        /// When the breaker may admit again (end of the open period or of the half-open round).
        until: EpochMillis,
    },
}

/// Outcomes of one invocation for one gateway, written by one [`flush`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Successes of sends admitted as [`Admission::Allowed`].
    pub successes: u32,
    /// Provider-level failures of sends admitted as [`Admission::Allowed`].
    pub failures: u32,
    /// Successes of half-open trials.
    pub trial_successes: u32,
    /// Provider-level failures of half-open trials.
    pub trial_failures: u32,
}

impl Tally {
    /// Counts one provider call. While closed, `Permanent` counts nothing (a bad recipient says
    /// nothing about the provider). For a half-open trial, a `Permanent` answer counts as a
    /// trial success: the provider answered, which is all a trial asks, and not counting it
    /// would waste a scarce trial slot and stall recovery for a whole `timeout`. A rejected
    /// admission counts nothing (nothing was sent). Only record calls that reached the
    /// provider: a message refused by the gateway's own pre-flight checks is not evidence.
    pub fn record(&mut self, admission: Admission, class: OutcomeClass) {
        let success = match (class, admission) {
            (OutcomeClass::Ok, _) | (OutcomeClass::Permanent, Admission::Trial) => true,
            (OutcomeClass::Permanent, _) => return,
            (
                OutcomeClass::Throttled
                | OutcomeClass::Unavailable
                | OutcomeClass::Auth
                | OutcomeClass::Ambiguous,
                _,
            ) => false,
        };
        let counter = match (admission, success) {
            (Admission::Allowed, true) => &mut self.successes,
            (Admission::Allowed, false) => &mut self.failures,
            (Admission::Trial, true) => &mut self.trial_successes,
            (Admission::Trial, false) => &mut self.trial_failures,
            (Admission::Rejected { .. }, _) => return,
        };
        *counter = counter.saturating_add(1);
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A conditional write on the breaker's item, without its key (the pure core does not know it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerWrite {
    /// What to write.
    pub op: WriteOp,
    /// What must still hold.
    pub condition: Condition,
}

impl BreakerWrite {
    /// This write tagged with `token` (see "Writes whose answer was lost" in the module docs):
    /// it also stores the token in `write_id`, and its condition also requires that the item
    /// does not hold it yet, so a retry of it after it was applied changes nothing and returns
    /// an item that [`WriteToken::is_in`]. Give each write of a call its own token.
    #[must_use]
    pub fn tagged(self, token: WriteToken) -> Self {
        let stored = Value::N(token.0);
        let op = match self.op {
            WriteOp::Put(mut item) => {
                item.insert(WRITE_ID.into(), stored);
                WriteOp::Put(item)
            }
            WriteOp::Update(mut actions) => {
                actions.push(UpdateAction::Set(WRITE_ID.into(), stored));
                WriteOp::Update(actions)
            }
            // The decisions never delete or only check; neither could carry a token.
            op @ (WriteOp::Delete | WriteOp::ConditionCheck) => op,
        };
        // `Not` of a comparison holds when the attribute is missing (an item from before tokens).
        let not_yet = Condition::Not(Box::new(Condition::cmp(WRITE_ID, CmpOp::Eq, token.0)));
        let condition = match self.condition {
            Condition::And(mut all) => {
                all.push(not_yet);
                Condition::And(all)
            }
            other => Condition::all(vec![other, not_yet]),
        };
        Self { op, condition }
    }

    /// The store write for the breaker of `gateway_id`.
    pub fn into_write(self, gateway_id: &str) -> Write {
        Write {
            key: key(gateway_id),
            op: self.op,
            condition: self.condition,
        }
    }
}

/// Identifies one breaker write across the store's retries of it (attribute `write_id`; see
/// "Writes whose answer was lost" in the module docs). Random, so no two writes share one in
/// practice; not a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteToken(pub i64);

impl WriteToken {
    /// A fresh random token (64 random bits).
    pub fn random() -> Self {
        Self(i64::from_ne_bytes(
            crate::retry::random_below(u64::MAX).to_ne_bytes(),
        ))
    }

    /// The token of the next write of the same call, after this one's write was applied: a
    /// different write, which must not be taken for this one.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0.wrapping_add(1))
    }

    /// True when `item` holds this token, which only the write [tagged](BreakerWrite::tagged)
    /// with it stores: that write was applied.
    pub fn is_in(self, item: Option<&Item>) -> bool {
        item.and_then(|i| i.get(WRITE_ID)) == Some(&Value::N(self.0))
    }
}

/// Why a breaker changed phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum TransitionReason {
    /// Closed → Open: the window's failures reached the threshold (and the ratio, if set).
    FailureThreshold {
        /// Failures counted in the window, this flush included.
        failures: u32,
        /// Successes counted in the window, this flush included.
        successes: u32,
    },
    /// Open → Half-open: the open period elapsed.
    TimeoutElapsed,
    /// Half-open → Half-open: the previous round's trials did not resolve within `timeout`.
    TrialsUnresolved,
    /// Half-open → Open: a trial failed.
    TrialFailed,
    /// Half-open → Closed: `success_threshold` trials succeeded.
    TrialsSucceeded {
        /// Trial successes in the round.
        successes: u32,
    },
}

/// A phase change a write will make if it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseChange {
    /// Phase before.
    pub from: Phase,
    /// Phase after.
    pub to: Phase,
    /// Why.
    pub reason: TransitionReason,
}

/// A transition that this caller's write performed (exactly one caller gets each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Gateway id.
    pub gateway: String,
    /// Phase before.
    pub from: Phase,
    /// Phase after.
    pub to: Phase,
    /// When (epoch ms; the `now` of the call that made it).
    pub at: EpochMillis,
    /// Why.
    pub reason: TransitionReason,
}

/// The pure decision on one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    /// Closed (or disabled): send, no write needed.
    Allow,
    /// Half-open: send as a trial if `write` is applied; if its condition fails, decide again
    /// from the returned item. `change` is the transition the write makes, if any.
    Trial {
        /// The slot-taking (or round-starting) write.
        write: BreakerWrite,
        /// Open → Half-open or a new half-open round.
        change: Option<PhaseChange>,
    },
    /// Do not send before `until` (epoch ms).
    Reject {
        /// End of the open period, or of the current half-open round when its slots are taken.
        until: EpochMillis,
    },
}

/// The outcome of a send on the decoded `state` when it needs no write (the breaker
/// allows or rejects), as [`permit_send_with_item`] would give it; `None` when the send would
/// be a half-open trial, which only that call may admit. `problem` is the decoding's
/// ([`BreakerState::from_item`]), reported with the outcome.
pub fn decided_locally(
    state: &BreakerState,
    problem: Option<MalformedItem>,
    settings: &BreakerSettings,
    now: EpochMillis,
) -> Option<PermitOutcome> {
    if !settings.enabled {
        return Some(PermitOutcome {
            admission: Admission::Allowed,
            transition: None,
            malformed: None,
        });
    }
    let admission = match permit(state, settings, now) {
        Permit::Allow => Admission::Allowed,
        Permit::Reject { until } => Admission::Rejected { until },
        Permit::Trial { .. } => return None,
    };
    Some(PermitOutcome {
        admission,
        transition: None,
        malformed: problem,
    })
}

/// Decides whether a send may go to the gateway, from the state read, at `now`.
///
/// A disabled breaker always allows. Closed allows without a write. Open rejects before `until`;
/// at or after it, the returned trial write moves it to half-open and takes the first slot.
/// Half-open admits while `admitted < max_requests` (the write is conditioned on exactly that),
/// else rejects until the round's end; a round older than `timeout` is restarted. A trial write
/// is returned untagged: attempt it [tagged](BreakerWrite::tagged), as [`permit_send`] does.
pub fn permit(state: &BreakerState, settings: &BreakerSettings, now: EpochMillis) -> Permit {
    if !settings.enabled {
        return Permit::Allow;
    }
    let timeout = millis(settings.timeout);
    match state.phase {
        Phase::Closed => Permit::Allow,
        Phase::Open if now < state.until => Permit::Reject { until: state.until },
        Phase::Open => start_round(state, now, Phase::Open, TransitionReason::TimeoutElapsed),
        Phase::HalfOpen => {
            let round_end = state.half_open_at.saturating_add(timeout);
            if now >= round_end {
                start_round(
                    state,
                    now,
                    Phase::HalfOpen,
                    TransitionReason::TrialsUnresolved,
                )
            } else if state.admitted < settings.max_requests.get() {
                Permit::Trial {
                    write: BreakerWrite {
                        op: WriteOp::Update(vec![UpdateAction::Add(ADMITTED.into(), 1)]),
                        condition: Condition::And(vec![
                            state.guard(),
                            Condition::cmp(
                                ADMITTED,
                                CmpOp::Lt,
                                i64::from(settings.max_requests.get()),
                            ),
                        ]),
                    },
                    change: None,
                }
            } else {
                Permit::Reject { until: round_end }
            }
        }
    }
}

/// A new half-open round whose first slot the caller takes.
fn start_round(
    state: &BreakerState,
    now: EpochMillis,
    from: Phase,
    reason: TransitionReason,
) -> Permit {
    let next = BreakerState {
        half_open_at: now,
        admitted: 1,
        ..state.next(Phase::HalfOpen)
    };
    Permit::Trial {
        write: BreakerWrite {
            op: WriteOp::Put(next.to_item()),
            condition: state.guard(),
        },
        change: Some(PhaseChange {
            from,
            to: Phase::HalfOpen,
            reason,
        }),
    }
}

/// The pure decision on writing an invocation's outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flush {
    /// The write to attempt; `None` costs nothing.
    pub write: Option<BreakerWrite>,
    /// The transition the write makes if applied.
    pub change: Option<PhaseChange>,
}

impl Flush {
    fn none() -> Self {
        Self {
            write: None,
            change: None,
        }
    }
}

/// Decides how to record `tally` on the state read, at `now`.
///
/// - Disabled breaker, or an open one: no write (outcomes of sends admitted before it opened
///   change nothing while it is open).
/// - Closed: trial outcomes of an earlier round count as ordinary ones. If the window's
///   failures (the stored ones if the window is still running, this tally's included) reach the
///   threshold and the ratio, the write opens it, conditioned on the generation read, on no
///   fewer failures and (with a ratio) no more successes than read. Otherwise, with failures in
///   the tally, they are added to the running window (`ADD`, no contention between reporters)
///   or start a new window. A tally without failures costs no write, except that with
///   `failure_ratio` set and failures already in the running window its successes are added,
///   so the ratio sees them.
/// - Half-open: only trial outcomes count. A trial failure re-opens it; enough trial successes
///   close it; fewer are added to the round's count. Non-trial outcomes are ignored.
///
/// After an `ADD` is applied the caller decides again on the returned item with an empty
/// tally: that is how concurrent reporters that together crossed the threshold open it.
///
/// The write is returned untagged: attempt it [tagged](BreakerWrite::tagged) with a token of its
/// own, as [`flush_outcomes`] does, so that the store's retry of it is safe.
pub fn flush(
    state: &BreakerState,
    tally: &Tally,
    settings: &BreakerSettings,
    now: EpochMillis,
) -> Flush {
    if !settings.enabled {
        return Flush::none();
    }
    match state.phase {
        Phase::Open => Flush::none(),
        Phase::Closed => flush_closed(state, tally, settings, now),
        Phase::HalfOpen => flush_half_open(state, tally, settings, now),
    }
}

fn flush_closed(
    state: &BreakerState,
    tally: &Tally,
    settings: &BreakerSettings,
    now: EpochMillis,
) -> Flush {
    let new_failures = tally.failures.saturating_add(tally.trial_failures);
    let new_successes = tally.successes.saturating_add(tally.trial_successes);
    // A window start in the future (another instance's clock ahead) counts as running.
    let running = state.stored == Stored::Valid
        && now.saturating_sub(state.window_start) < millis(settings.window);
    let (base_failures, base_successes) = if running {
        (state.failures, state.successes)
    } else {
        (0, 0)
    };
    let failures = base_failures.saturating_add(new_failures);
    let successes = base_successes.saturating_add(new_successes);

    if trips(failures, successes, settings) {
        let mut condition = vec![state.guard()];
        if running {
            // Within one generation failures and successes only grow, so "no fewer failures
            // and no more successes than read" means the threshold and the ratio still hold.
            condition.push(Condition::cmp(
                FAILURES,
                CmpOp::Ge,
                i64::from(base_failures),
            ));
            if settings.failure_ratio.is_some() {
                condition.push(Condition::cmp(
                    SUCCESSES,
                    CmpOp::Le,
                    i64::from(base_successes),
                ));
            }
        }
        let timeout = millis(settings.timeout);
        let next = BreakerState {
            opened_at: now,
            until: now.saturating_add(timeout),
            ..state.next(Phase::Open)
        };
        return Flush {
            write: Some(BreakerWrite {
                op: WriteOp::Put(next.to_item()),
                condition: Condition::all(condition),
            }),
            change: Some(PhaseChange {
                from: Phase::Closed,
                to: Phase::Open,
                reason: TransitionReason::FailureThreshold {
                    failures,
                    successes,
                },
            }),
        };
    }

    let ratio_needs_successes =
        settings.failure_ratio.is_some() && running && base_failures > 0 && new_successes > 0;
    if new_failures == 0 && !ratio_needs_successes {
        return Flush::none();
    }
    let write = if running {
        BreakerWrite {
            op: WriteOp::Update(vec![
                UpdateAction::Add(FAILURES.into(), i64::from(new_failures)),
                UpdateAction::Add(SUCCESSES.into(), i64::from(new_successes)),
            ]),
            condition: state.guard(),
        }
    } else {
        // New window (or first item, or replacing a malformed one): a new generation, so
        // reporters still adding to the old window fail their condition and re-decide.
        let next = BreakerState {
            window_start: now,
            failures: new_failures,
            successes: new_successes,
            ..state.next(Phase::Closed)
        };
        BreakerWrite {
            op: WriteOp::Put(next.to_item()),
            condition: state.guard(),
        }
    };
    Flush {
        write: Some(write),
        change: None,
    }
}

fn flush_half_open(
    state: &BreakerState,
    tally: &Tally,
    settings: &BreakerSettings,
    now: EpochMillis,
) -> Flush {
    if tally.trial_failures > 0 {
        let next = BreakerState {
            opened_at: now,
            until: now.saturating_add(millis(settings.timeout)),
            ..state.next(Phase::Open)
        };
        return Flush {
            write: Some(BreakerWrite {
                op: WriteOp::Put(next.to_item()),
                condition: state.guard(),
            }),
            change: Some(PhaseChange {
                from: Phase::HalfOpen,
                to: Phase::Open,
                reason: TransitionReason::TrialFailed,
            }),
        };
    }
    let successes = state.trial_successes.saturating_add(tally.trial_successes);
    if successes >= settings.success_threshold.get() {
        // Trial successes only grow within a generation, so the guard alone keeps this right.
        let next = BreakerState {
            window_start: now,
            ..state.next(Phase::Closed)
        };
        return Flush {
            write: Some(BreakerWrite {
                op: WriteOp::Put(next.to_item()),
                condition: state.guard(),
            }),
            change: Some(PhaseChange {
                from: Phase::HalfOpen,
                to: Phase::Closed,
                reason: TransitionReason::TrialsSucceeded { successes },
            }),
        };
    }
    if tally.trial_successes == 0 {
        return Flush::none();
    }
    Flush {
        write: Some(BreakerWrite {
            op: WriteOp::Update(vec![UpdateAction::Add(
                TRIAL_SUCCESSES.into(),
                i64::from(tally.trial_successes),
            )]),
            condition: state.guard(),
        }),
        change: None,
    }
}

fn trips(failures: u32, successes: u32, settings: &BreakerSettings) -> bool {
    if failures < settings.failure_threshold.get() {
        return false;
    }
    match settings.failure_ratio {
        None => true,
        Some(ratio) => {
            let total = f64::from(failures) + f64::from(successes);
            f64::from(failures) >= ratio * total
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

mod service;

#[cfg(test)]
mod tests;

pub use service::{
    BreakerError, FlushOutcome, PermitOutcome, flush_outcomes, flush_outcomes_with_item,
    permit_send, permit_send_with_item,
};
