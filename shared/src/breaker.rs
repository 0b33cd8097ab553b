//! The shared circuit breaker (DESIGN §3.4): a pure state machine over one stored item per
//! gateway, and a small service that runs it against the [`StateStore`] port.
//!
//! # Why it is shaped this way
//! Every Lambda instance reads and writes the same item, so every transition is a conditional
//! write decided by a pure function of (stored state, outcomes, settings, `now`). The functions
//! [`permit`] and [`flush`] return the write to attempt (or none); the service functions
//! [`permit_send`] and [`flush_outcomes`] attempt it and, when the condition failed, decide again
//! from the item the store returned. Exactly one instance therefore performs each transition,
//! and only that instance gets a [`Transition`] back to log, count and record.
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
//!
//! A missing item is a closed, clean breaker. An item that does not decode is treated as closed
//! and clean and reported as [`MalformedItem`] for the caller to log; the next write replaces it
//! (guarded by its exact current content).

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::EpochMillis;
use crate::config::BreakerSettings;
use crate::events::OutcomeClass;
use crate::state::{
    CmpOp, Condition, Item, Key, StateStore, StoreError, UpdateAction, Value, Write, WriteOp,
    WriteOutcome,
};

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
    /// The store write for the breaker of `gateway_id`.
    pub fn into_write(self, gateway_id: &str) -> Write {
        Write {
            key: key(gateway_id),
            op: self.op,
            condition: self.condition,
        }
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

/// Decides whether a send may go to the gateway, from the state read, at `now`.
///
/// A disabled breaker always allows. Closed allows without a write. Open rejects before `until`;
/// at or after it, the returned trial write moves it to half-open and takes the first slot.
/// Half-open admits while `admitted < max_requests` (the write is conditioned on exactly that),
/// else rejects until the round's end; a round older than `timeout` is restarted.
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

/// A breaker service failure (a lost conditional write is not one: it is retried).
#[derive(Debug, thiserror::Error)]
pub enum BreakerError {
    /// The state store failed.
    #[error("breaker state unavailable")]
    Store(#[from] StoreError),
    /// Every one of `attempts` conditional writes lost to another instance.
    #[error("breaker item contended: {attempts} conditional writes lost")]
    Contended {
        /// Writes attempted.
        attempts: usize,
    },
}

impl BreakerError {
    /// True when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Contended { .. } => true,
        }
    }
}

/// The result of [`permit_send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermitOutcome {
    /// Whether and how the send is admitted; pass it to [`Tally::record`] with the outcome.
    pub admission: Admission,
    /// The transition this call performed, if any (log, count and record it).
    pub transition: Option<Transition>,
    /// The stored item did not decode (treated as closed); log it.
    pub malformed: Option<MalformedItem>,
}

/// The result of [`flush_outcomes`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlushOutcome {
    /// The transition this call performed, if any (log, count and record it).
    pub transition: Option<Transition>,
    /// The stored item did not decode (treated as closed); log it.
    pub malformed: Option<MalformedItem>,
}

/// Reads the gateway's breaker and decides on one send, performing the trial write if one is
/// needed. A disabled breaker allows without any request. A closed one costs one read.
pub async fn permit_send(
    store: &dyn StateStore,
    gateway: &str,
    settings: &BreakerSettings,
    now: EpochMillis,
) -> Result<PermitOutcome, BreakerError> {
    if !settings.enabled {
        return Ok(PermitOutcome {
            admission: Admission::Allowed,
            transition: None,
            malformed: None,
        });
    }
    let item = store.get(&key(gateway)).await?;
    permit_send_with_item(store, gateway, settings, item.map(Cow::Owned), now).await
}

/// [`permit_send`] on an item the caller already read (for example in the batched read of
/// every candidate gateway's breaker and limit items), so a closed breaker costs no request
/// of its own. An `Allow` or `Reject` is only as fresh as that item, so read it in the same
/// round trip that precedes the send; a trial can never be admitted from a stale item, because
/// trial writes are conditional and a lost condition is decided again on the item the store
/// returns. The item is borrowed until the store returns a fresher one.
pub async fn permit_send_with_item(
    store: &dyn StateStore,
    gateway: &str,
    settings: &BreakerSettings,
    item: Option<Cow<'_, Item>>,
    now: EpochMillis,
) -> Result<PermitOutcome, BreakerError> {
    if !settings.enabled {
        return Ok(PermitOutcome {
            admission: Admission::Allowed,
            transition: None,
            malformed: None,
        });
    }
    let mut item = item;
    let mut malformed = None;
    for _ in 0..MAX_ATTEMPTS {
        let (state, problem) = BreakerState::from_item(item.as_deref());
        malformed = malformed.or(problem);
        let (write, change) = match permit(&state, settings, now) {
            Permit::Allow => {
                return Ok(PermitOutcome {
                    admission: Admission::Allowed,
                    transition: None,
                    malformed,
                });
            }
            Permit::Reject { until } => {
                return Ok(PermitOutcome {
                    admission: Admission::Rejected { until },
                    transition: None,
                    malformed,
                });
            }
            Permit::Trial { write, change } => (write, change),
        };
        match store.write(write.into_write(gateway)).await? {
            WriteOutcome::Applied(_) => {
                return Ok(PermitOutcome {
                    admission: Admission::Trial,
                    transition: change.map(|c| transition(gateway, c, now)),
                    malformed,
                });
            }
            WriteOutcome::ConditionFailed(current) => item = current.map(Cow::Owned),
        }
    }
    Err(BreakerError::Contended {
        attempts: MAX_ATTEMPTS,
    })
}

/// Records an invocation's outcomes for one gateway. An empty tally, a disabled breaker and a
/// closed breaker with no failures in the tally cost no request at all; otherwise one read and
/// usually one write.
pub async fn flush_outcomes(
    store: &dyn StateStore,
    gateway: &str,
    settings: &BreakerSettings,
    tally: &Tally,
    now: EpochMillis,
) -> Result<FlushOutcome, BreakerError> {
    // Without failures a closed breaker needs no write, but only the ratio rule can need one
    // for successes, and half-open needs trial outcomes: skip the read when neither applies.
    let can_matter = tally.failures > 0
        || tally.trial_failures > 0
        || tally.trial_successes > 0
        || (settings.failure_ratio.is_some() && tally.successes > 0);
    if !settings.enabled || !can_matter {
        return Ok(FlushOutcome::default());
    }
    let item = store.get(&key(gateway)).await?;
    flush_outcomes_with_item(store, gateway, settings, tally, item, now).await
}

/// [`flush_outcomes`] on an item the caller already read. A stale item (read at the start of
/// the invocation) costs at most one lost conditional write, after which the decision is taken
/// again on the item the store returned; it never records outcomes twice or loses them.
pub async fn flush_outcomes_with_item(
    store: &dyn StateStore,
    gateway: &str,
    settings: &BreakerSettings,
    tally: &Tally,
    item: Option<Item>,
    now: EpochMillis,
) -> Result<FlushOutcome, BreakerError> {
    if !settings.enabled {
        return Ok(FlushOutcome::default());
    }
    let mut item = item;
    let mut tally = *tally;
    let mut malformed = None;
    for _ in 0..MAX_ATTEMPTS {
        let (state, problem) = BreakerState::from_item(item.as_ref());
        malformed = malformed.or(problem);
        let decision = flush(&state, &tally, settings, now);
        let Some(write) = decision.write else {
            return Ok(FlushOutcome {
                transition: None,
                malformed,
            });
        };
        match store.write(write.into_write(gateway)).await? {
            WriteOutcome::Applied(current) => {
                if let Some(change) = decision.change {
                    return Ok(FlushOutcome {
                        transition: Some(transition(gateway, change, now)),
                        malformed,
                    });
                }
                // Our outcomes are stored; look once more in case they, with other
                // instances' outcomes, crossed a threshold nobody has acted on yet.
                tally = Tally::default();
                item = current;
            }
            WriteOutcome::ConditionFailed(current) => item = current,
        }
    }
    Err(BreakerError::Contended {
        attempts: MAX_ATTEMPTS,
    })
}

fn transition(gateway: &str, change: PhaseChange, at: EpochMillis) -> Transition {
    Transition {
        gateway: gateway.to_owned(),
        from: change.from,
        to: change.to,
        at,
        reason: change.reason,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::num::NonZeroU32;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::state::apply_op;
    use crate::state::memory::MemoryStore;

    const T0: EpochMillis = 1_795_000_000_000;
    const GW: &str = "mailgun-primary";

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    /// The original system's defaults: threshold 10, 5 successes, 60 s, 100 trials.
    fn settings() -> BreakerSettings {
        BreakerSettings {
            enabled: true,
            failure_threshold: nz(10),
            success_threshold: nz(5),
            timeout: Duration::from_secs(60),
            max_requests: nz(100),
            window: Duration::from_secs(60),
            failure_ratio: None,
        }
    }

    fn failures(n: u32) -> Tally {
        Tally {
            failures: n,
            ..Tally::default()
        }
    }

    async fn stored(store: &MemoryStore) -> BreakerState {
        let item = store.get(&key(GW)).await.unwrap();
        let (state, problem) = BreakerState::from_item(item.as_ref());
        assert_eq!(problem, None);
        state
    }

    /// Puts a breaker in the given phase directly.
    async fn seed(store: &MemoryStore, state: BreakerState) {
        store
            .put_many(vec![(key(GW), state.to_item())])
            .await
            .unwrap();
    }

    fn open_until(until: EpochMillis) -> BreakerState {
        BreakerState {
            phase: Phase::Open,
            generation: 3,
            opened_at: until - 60_000,
            until,
            stored: Stored::Valid,
            ..BreakerState::missing()
        }
    }

    fn half_open_since(at: EpochMillis, admitted: u32, trial_successes: u32) -> BreakerState {
        BreakerState {
            phase: Phase::HalfOpen,
            generation: 4,
            opened_at: at - 60_000,
            until: at,
            half_open_at: at,
            admitted,
            trial_successes,
            stored: Stored::Valid,
            ..BreakerState::missing()
        }
    }

    #[tokio::test]
    async fn opens_after_ten_provider_failures_then_refuses_then_lets_a_trial_through() {
        let store = MemoryStore::new();
        let s = settings();
        let first = permit_send(&store, GW, &s, T0).await.unwrap();
        assert_eq!(first.admission, Admission::Allowed);

        for i in 0..9 {
            let out = flush_outcomes(&store, GW, &s, &failures(1), T0 + i)
                .await
                .unwrap();
            assert_eq!(out.transition, None, "opened after {} failures", i + 1);
        }
        let allowed = permit_send(&store, GW, &s, T0 + 9).await.unwrap();
        assert_eq!(allowed.admission, Admission::Allowed);

        let tenth = flush_outcomes(&store, GW, &s, &failures(1), T0 + 10)
            .await
            .unwrap();
        let until = T0 + 10 + 60_000;
        assert_eq!(
            tenth.transition,
            Some(Transition {
                gateway: GW.into(),
                from: Phase::Closed,
                to: Phase::Open,
                at: T0 + 10,
                reason: TransitionReason::FailureThreshold {
                    failures: 10,
                    successes: 0
                },
            })
        );

        for now in [T0 + 11, until - 1] {
            let refused = permit_send(&store, GW, &s, now).await.unwrap();
            assert_eq!(refused.admission, Admission::Rejected { until });
        }

        let trial = permit_send(&store, GW, &s, until).await.unwrap();
        assert_eq!(trial.admission, Admission::Trial);
        let t = trial.transition.unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (
                Phase::Open,
                Phase::HalfOpen,
                TransitionReason::TimeoutElapsed
            )
        );
        assert_eq!(stored(&store).await.admitted, 1);
    }

    #[tokio::test]
    async fn window_roll_over_resets_failures() {
        let store = MemoryStore::new();
        let s = settings();
        flush_outcomes(&store, GW, &s, &failures(9), T0)
            .await
            .unwrap();
        assert_eq!(stored(&store).await.failures, 9);

        // Just inside the window the next failure would open it; after it, it starts over.
        let rolled = T0 + 60_000;
        let out = flush_outcomes(&store, GW, &s, &failures(1), rolled)
            .await
            .unwrap();
        assert_eq!(out.transition, None);
        let state = stored(&store).await;
        assert_eq!(
            (state.phase, state.failures, state.window_start),
            (Phase::Closed, 1, rolled)
        );

        let inside = flush_outcomes(&store, GW, &s, &failures(9), rolled + 59_999)
            .await
            .unwrap();
        assert_eq!(inside.transition.map(|t| t.to), Some(Phase::Open));
    }

    #[test]
    fn only_provider_level_failures_count() {
        let cases = [
            (
                OutcomeClass::Ok,
                Tally {
                    successes: 1,
                    ..Tally::default()
                },
            ),
            (OutcomeClass::Permanent, Tally::default()),
            (OutcomeClass::Throttled, failures(1)),
            (OutcomeClass::Unavailable, failures(1)),
            (OutcomeClass::Auth, failures(1)),
            (OutcomeClass::Ambiguous, failures(1)),
        ];
        for (class, expected) in cases {
            let mut tally = Tally::default();
            tally.record(Admission::Allowed, class);
            assert_eq!(tally, expected, "{class:?}");
        }
        let mut trial = Tally::default();
        trial.record(Admission::Trial, OutcomeClass::Unavailable);
        trial.record(Admission::Trial, OutcomeClass::Ok);
        trial.record(Admission::Trial, OutcomeClass::Permanent);
        trial.record(Admission::Rejected { until: T0 }, OutcomeClass::Unavailable);
        // A permanent answer to a trial proves the provider is up: it counts as a success.
        assert_eq!(
            trial,
            Tally {
                trial_successes: 2,
                trial_failures: 1,
                ..Tally::default()
            }
        );
    }

    #[tokio::test]
    async fn permanent_errors_never_open_it() {
        let store = MemoryStore::new();
        let s = settings();
        let mut tally = Tally::default();
        for _ in 0..50 {
            tally.record(Admission::Allowed, OutcomeClass::Permanent);
        }
        let out = flush_outcomes(&store, GW, &s, &tally, T0).await.unwrap();
        assert_eq!(out, FlushOutcome::default());
        assert_eq!(store.request_counts().total(), 0);
        assert_eq!(
            view(store.get(&key(GW)).await.unwrap().as_ref(), T0),
            BreakerView::Closed
        );
    }

    #[tokio::test]
    async fn successes_need_no_write_while_closed() {
        let store = MemoryStore::new();
        let s = settings();
        let clean = Tally {
            successes: 40,
            ..Tally::default()
        };
        flush_outcomes(&store, GW, &s, &clean, T0).await.unwrap();
        assert_eq!(store.request_counts().total(), 0);

        // Even with failures already in the window, successes alone cost nothing without a ratio.
        flush_outcomes(&store, GW, &s, &failures(3), T0)
            .await
            .unwrap();
        let before = store.request_counts();
        flush_outcomes(&store, GW, &s, &clean, T0 + 1)
            .await
            .unwrap();
        assert_eq!(store.request_counts(), before);
        assert_eq!(stored(&store).await.successes, 0);
    }

    #[test]
    fn a_clean_tally_on_a_closed_breaker_decides_no_write() {
        let s = settings();
        let clean = Tally {
            successes: 7,
            ..Tally::default()
        };
        let running = BreakerState {
            window_start: T0,
            failures: 4,
            generation: 2,
            stored: Stored::Valid,
            ..BreakerState::missing()
        };
        for state in [BreakerState::missing(), running] {
            assert_eq!(flush(&state, &clean, &s, T0 + 10), Flush::none());
        }
    }

    #[tokio::test]
    async fn ratio_must_also_be_reached() {
        let store = MemoryStore::new();
        let s = BreakerSettings {
            failure_ratio: Some(0.5),
            ..settings()
        };
        flush_outcomes(&store, GW, &s, &failures(1), T0)
            .await
            .unwrap();
        // With failures in the window the ratio needs the successes, so they are written.
        let mixed = Tally {
            successes: 20,
            failures: 10,
            ..Tally::default()
        };
        let out = flush_outcomes(&store, GW, &s, &mixed, T0 + 1)
            .await
            .unwrap();
        assert_eq!(out.transition, None, "11 of 31 is below one half");
        let state = stored(&store).await;
        assert_eq!((state.failures, state.successes), (11, 20));

        let out = flush_outcomes(&store, GW, &s, &failures(9), T0 + 2)
            .await
            .unwrap();
        assert_eq!(
            out.transition.map(|t| t.reason),
            Some(TransitionReason::FailureThreshold {
                failures: 20,
                successes: 20
            })
        );
    }

    /// Yields to the scheduler before every request, so concurrent tasks interleave between
    /// their read and their conditional write.
    #[derive(Debug)]
    struct Yielding(Arc<MemoryStore>);

    #[async_trait::async_trait]
    impl StateStore for Yielding {
        async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
            tokio::task::yield_now().await;
            self.0.get_many(keys).await
        }
        async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
            tokio::task::yield_now().await;
            self.0.write(write).await
        }
        async fn transact(
            &self,
            writes: Vec<Write>,
        ) -> Result<crate::state::TransactOutcome, StoreError> {
            self.0.transact(writes).await
        }
        async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
            self.0.put_many(items).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn half_open_admits_exactly_max_requests_under_concurrency() {
        let store = Arc::new(MemoryStore::new());
        let s = BreakerSettings {
            max_requests: nz(5),
            ..settings()
        };
        seed(&store, open_until(T0)).await;

        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = Arc::clone(&store);
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                permit_send(&Yielding(store), GW, &s, T0 + i).await.unwrap()
            }));
        }
        let mut trials = 0;
        let mut transitions = Vec::new();
        for task in tasks {
            let out = task.await.unwrap();
            match out.admission {
                Admission::Trial => trials += 1,
                Admission::Rejected { until } => {
                    assert_eq!(until, stored(&store).await.half_open_at + 60_000)
                }
                Admission::Allowed => panic!("a half-open breaker allowed a non-trial send"),
            }
            transitions.extend(out.transition);
        }
        assert_eq!(trials, 5);
        assert_eq!(transitions.len(), 1);
        assert_eq!(
            (transitions[0].from, transitions[0].to),
            (Phase::Open, Phase::HalfOpen)
        );
        assert_eq!(stored(&store).await.admitted, 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sixteen_concurrent_reporters_open_it_exactly_once() {
        // Each reporter alone reaches the threshold, or only all of them together do.
        for per_reporter in [10, 1] {
            let store = Arc::new(MemoryStore::new());
            let s = settings();
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let store = Arc::clone(&store);
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    flush_outcomes(&Yielding(store), GW, &s, &failures(per_reporter), T0)
                        .await
                        .unwrap()
                }));
            }
            let mut transitions = Vec::new();
            for task in tasks {
                transitions.extend(task.await.unwrap().transition);
            }
            assert_eq!(transitions.len(), 1, "{per_reporter} failures per reporter");
            assert_eq!(transitions[0].to, Phase::Open);
            let state = stored(&store).await;
            assert_eq!((state.phase, state.until), (Phase::Open, T0 + 60_000));
        }
    }

    /// Serves one stale read (what this instance read before another one wrote), then the
    /// real store.
    #[derive(Debug)]
    struct StaleRead {
        inner: MemoryStore,
        stale: std::sync::Mutex<Option<Item>>,
    }

    #[async_trait::async_trait]
    impl StateStore for StaleRead {
        async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
            let stale = self.stale.lock().unwrap().take();
            match stale {
                Some(item) => Ok(vec![Some(item)]),
                None => self.inner.get_many(keys).await,
            }
        }
        async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
            self.inner.write(write).await
        }
        async fn transact(
            &self,
            writes: Vec<Write>,
        ) -> Result<crate::state::TransactOutcome, StoreError> {
            self.inner.transact(writes).await
        }
        async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
            self.inner.put_many(items).await
        }
    }

    #[tokio::test]
    async fn reporters_that_cross_the_threshold_together_open_it() {
        let s = settings();
        let running = |failures| BreakerState {
            window_start: T0,
            failures,
            generation: 1,
            stored: Stored::Valid,
            ..BreakerState::missing()
        };
        // Both reporters read 8 failures; the other one has already added its failure.
        let store = StaleRead {
            inner: MemoryStore::new(),
            stale: std::sync::Mutex::new(Some(running(8).to_item())),
        };
        seed(&store.inner, running(9)).await;
        let out = flush_outcomes(&store, GW, &s, &failures(1), T0 + 1)
            .await
            .unwrap();
        assert_eq!(
            out.transition.map(|t| t.reason),
            Some(TransitionReason::FailureThreshold {
                failures: 10,
                successes: 0
            })
        );
        assert_eq!(stored(&store.inner).await.phase, Phase::Open);
    }

    #[tokio::test]
    async fn a_stale_read_cannot_take_a_trial_slot() {
        let store = MemoryStore::new();
        let s = BreakerSettings {
            max_requests: nz(2),
            ..settings()
        };
        // Read while open; meanwhile others moved it to half-open and took every slot.
        let stale = open_until(T0).to_item();
        seed(&store, half_open_since(T0, 2, 0)).await;
        let out = permit_send_with_item(&store, GW, &s, Some(Cow::Owned(stale)), T0 + 1)
            .await
            .unwrap();
        assert_eq!(out.admission, Admission::Rejected { until: T0 + 60_000 });
        assert_eq!(out.transition, None);
        assert_eq!(stored(&store).await.admitted, 2);
    }

    #[tokio::test]
    async fn success_threshold_trial_successes_close_it() {
        let store = MemoryStore::new();
        let s = settings();
        seed(&store, half_open_since(T0, 5, 0)).await;
        let one = Tally {
            trial_successes: 1,
            ..Tally::default()
        };
        // One success must not close it (the original closed on the first).
        for i in 0..4 {
            let out = flush_outcomes(&store, GW, &s, &one, T0 + i).await.unwrap();
            assert_eq!(out.transition, None);
        }
        assert_eq!(stored(&store).await.trial_successes, 4);
        let out = flush_outcomes(&store, GW, &s, &one, T0 + 10).await.unwrap();
        let t = out.transition.unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (
                Phase::HalfOpen,
                Phase::Closed,
                TransitionReason::TrialsSucceeded { successes: 5 }
            )
        );
        let state = stored(&store).await;
        assert_eq!(
            (state.phase, state.failures, state.trial_successes),
            (Phase::Closed, 0, 0)
        );
        assert_eq!(
            permit_send(&store, GW, &s, T0 + 11)
                .await
                .unwrap()
                .admission,
            Admission::Allowed
        );
    }

    #[tokio::test]
    async fn a_trial_failure_re_opens_it_for_another_timeout() {
        let store = MemoryStore::new();
        let s = settings();
        seed(&store, half_open_since(T0, 3, 2)).await;
        let tally = Tally {
            trial_successes: 1,
            trial_failures: 1,
            ..Tally::default()
        };
        let now = T0 + 5_000;
        let out = flush_outcomes(&store, GW, &s, &tally, now).await.unwrap();
        let t = out.transition.unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (Phase::HalfOpen, Phase::Open, TransitionReason::TrialFailed)
        );
        let state = stored(&store).await;
        assert_eq!(
            (state.phase, state.opened_at, state.until),
            (Phase::Open, now, now + 60_000)
        );
        assert_eq!(
            permit_send(&store, GW, &s, now + 1)
                .await
                .unwrap()
                .admission,
            Admission::Rejected {
                until: now + 60_000
            }
        );
    }

    #[test]
    fn full_half_open_round_rejects_until_it_ends_then_starts_a_new_one() {
        let s = BreakerSettings {
            max_requests: nz(2),
            ..settings()
        };
        let full = half_open_since(T0, 2, 0);
        assert_eq!(
            permit(&full, &s, T0 + 59_999),
            Permit::Reject { until: T0 + 60_000 }
        );
        let Permit::Trial { write, change } = permit(&full, &s, T0 + 60_000) else {
            panic!("an unresolved round must be restarted");
        };
        assert_eq!(
            change.map(|c| c.reason),
            Some(TransitionReason::TrialsUnresolved)
        );
        let next = apply_op(Some(&full.to_item()), &write.op).unwrap();
        let (next, _) = BreakerState::from_item(next.as_ref());
        assert_eq!(
            (
                next.phase,
                next.admitted,
                next.half_open_at,
                next.generation
            ),
            (Phase::HalfOpen, 1, T0 + 60_000, full.generation + 1)
        );
    }

    #[test]
    fn outcomes_from_another_phase_are_ignored() {
        let s = settings();
        let everything = Tally {
            successes: 3,
            failures: 30,
            trial_successes: 3,
            trial_failures: 3,
        };
        assert_eq!(
            flush(&open_until(T0 + 1_000), &everything, &s, T0),
            Flush::none()
        );
        let regular_only = Tally {
            successes: 3,
            failures: 30,
            ..Tally::default()
        };
        assert_eq!(
            flush(&half_open_since(T0, 1, 0), &regular_only, &s, T0 + 1),
            Flush::none()
        );
    }

    #[tokio::test]
    async fn disabled_breaker_always_permits_and_never_writes() {
        let store = MemoryStore::new();
        let s = BreakerSettings {
            enabled: false,
            ..settings()
        };
        seed(&store, open_until(T0 + 60_000)).await;
        let before = store.request_counts();
        let out = permit_send(&store, GW, &s, T0).await.unwrap();
        assert_eq!(out.admission, Admission::Allowed);
        let out = flush_outcomes(&store, GW, &s, &failures(100), T0)
            .await
            .unwrap();
        assert_eq!(out.transition, None);
        assert_eq!(store.request_counts(), before);
        assert_eq!(permit(&open_until(T0 + 1), &s, T0), Permit::Allow);
    }

    #[tokio::test]
    async fn malformed_item_counts_as_closed_is_reported_and_replaced() {
        let store = MemoryStore::new();
        let s = settings();
        let mut bad = open_until(T0 + 60_000).to_item();
        bad.insert(PHASE.into(), Value::from("ajar"));
        store.put_many(vec![(key(GW), bad.clone())]).await.unwrap();

        assert_eq!(view(Some(&bad), T0), BreakerView::Closed);
        let out = permit_send(&store, GW, &s, T0).await.unwrap();
        assert_eq!(out.admission, Admission::Allowed);
        assert_eq!(out.malformed, Some(MalformedItem::Attribute(PHASE)));

        let out = flush_outcomes(&store, GW, &s, &failures(2), T0)
            .await
            .unwrap();
        assert_eq!(out.malformed, Some(MalformedItem::Attribute(PHASE)));
        let state = stored(&store).await;
        assert_eq!((state.phase, state.failures), (Phase::Closed, 2));
    }

    #[test]
    fn malformed_items_decode_as_closed_with_the_reason() {
        let good = half_open_since(T0, 1, 0).to_item();
        let cases: [(&str, Option<Value>); 4] = [
            (GEN, None),
            (FAILURES, Some(Value::N(-1))),
            (ADMITTED, Some(Value::from("many"))),
            (UNTIL, Some(Value::from("soon"))),
        ];
        for (attr, value) in cases {
            let mut item = good.clone();
            match value {
                Some(v) => item.insert(attr.into(), v),
                None => item.remove(attr),
            };
            let (state, problem) = BreakerState::from_item(Some(&item));
            assert_eq!(
                problem,
                Some(MalformedItem::Attribute(match attr {
                    GEN => GEN,
                    FAILURES => FAILURES,
                    ADMITTED => ADMITTED,
                    _ => UNTIL,
                })),
                "{attr}"
            );
            assert_eq!(state.phase, Phase::Closed);
            assert_eq!(state.stored, Stored::Malformed(item));
        }
    }

    #[test]
    fn state_round_trips_through_its_item() {
        let state = BreakerState {
            phase: Phase::HalfOpen,
            generation: 9,
            window_start: T0 - 5,
            failures: 1,
            successes: 2,
            opened_at: T0 - 60_000,
            until: T0,
            half_open_at: T0 + 1,
            admitted: 3,
            trial_successes: 4,
            stored: Stored::Valid,
        };
        assert_eq!(
            BreakerState::from_item(Some(&state.to_item())),
            (state, None)
        );
        assert_eq!(
            BreakerState::from_item(None),
            (BreakerState::missing(), None)
        );
    }

    #[test]
    fn view_tells_the_router_when_a_trial_is_possible() {
        let cases = [
            (None, T0, BreakerView::Closed),
            (
                Some(open_until(T0 + 1)),
                T0,
                BreakerView::Open { until: T0 + 1 },
            ),
            (Some(open_until(T0)), T0, BreakerView::HalfOpen),
            (
                Some(half_open_since(T0, 100, 0)),
                T0 + 1,
                BreakerView::HalfOpen,
            ),
        ];
        for (state, now, expected) in cases {
            let item = state.map(|s| s.to_item());
            assert_eq!(view(item.as_ref(), now), expected, "{item:?}");
        }
    }

    // ---- properties ----

    fn any_settings() -> impl Strategy<Value = BreakerSettings> {
        (
            1u32..6,
            1u32..4,
            1_000u64..20_000,
            1u32..4,
            1_000u64..30_000,
        )
            .prop_map(
                |(threshold, successes, timeout, max, window)| BreakerSettings {
                    enabled: true,
                    failure_threshold: nz(threshold),
                    success_threshold: nz(successes),
                    timeout: Duration::from_millis(timeout),
                    max_requests: nz(max),
                    window: Duration::from_millis(window),
                    failure_ratio: None,
                },
            )
    }

    proptest! {
        #[test]
        fn an_open_breaker_never_permits_before_its_timeout(
            s in any_settings(),
            start in 0i64..1_000_000_000,
            probes in prop::collection::vec(0u64..u64::MAX, 1..16),
        ) {
            // Through the real path: failures reported to a shared store open it, then permits
            // at any moment before `until` are refused and the first one at `until` is a trial.
            let s = BreakerSettings { enabled: true, ..s };
            let timeout = millis(s.timeout);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let store = MemoryStore::new();
                let opened = flush_outcomes(&store, GW, &s, &failures(s.failure_threshold.get()), start)
                    .await
                    .unwrap();
                assert_eq!(opened.transition.map(|t| t.to), Some(Phase::Open));
                let until = start + timeout;
                for p in probes {
                    let now = start + i64::try_from(p % u64::try_from(timeout).unwrap()).unwrap();
                    let got = permit_send(&store, GW, &s, now).await.unwrap();
                    assert_eq!(got.admission, Admission::Rejected { until }, "at {now}, until {until}");
                }
                let trial = permit_send(&store, GW, &s, until).await.unwrap();
                assert_eq!(trial.admission, Admission::Trial);
            });
        }
    }

    /// One step of an interleaving: instances decide from what they last read, which may be
    /// stale, and their conditional writes meet the one shared item.
    #[derive(Debug, Clone)]
    enum Step {
        Read(usize),
        Permit(usize),
        Flush(usize, Tally),
        Advance(i64),
    }

    fn any_step() -> impl Strategy<Value = Step> {
        let tally = prop_oneof![
            Just(failures(1)),
            Just(Tally {
                successes: 1,
                ..Tally::default()
            }),
            Just(Tally {
                trial_successes: 1,
                ..Tally::default()
            }),
            Just(Tally {
                trial_failures: 1,
                ..Tally::default()
            }),
        ];
        prop_oneof![
            1 => (0usize..4).prop_map(Step::Read),
            3 => (0usize..4).prop_map(Step::Permit),
            3 => ((0usize..4), tally).prop_map(|(i, t)| Step::Flush(i, t)),
            1 => (0i64..15_000).prop_map(Step::Advance),
        ]
    }

    fn attempt(shared: &mut Option<Item>, write: &BreakerWrite) -> WriteOutcome {
        if write.condition.holds(shared.as_ref()) {
            *shared = apply_op(shared.as_ref(), &write.op).unwrap();
            WriteOutcome::Applied(shared.clone())
        } else {
            WriteOutcome::ConditionFailed(shared.clone())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn half_open_never_admits_more_than_max_requests_in_any_interleaving(
            s in any_settings(),
            steps in proptest::collection::vec(any_step(), 1..200),
        ) {
            let mut shared: Option<Item> = None;
            let mut cached: Vec<Option<Item>> = vec![None; 4];
            let mut now = T0;
            // Trials admitted per half-open round (a round is a generation).
            let mut admitted: BTreeMap<i64, u32> = BTreeMap::new();
            for step in steps {
                match step {
                    Step::Advance(ms) => now += ms,
                    Step::Read(i) => cached[i] = shared.clone(),
                    Step::Permit(i) => {
                        let (state, _) = BreakerState::from_item(cached[i].as_ref());
                        let before = BreakerState::from_item(shared.as_ref()).0;
                        if let Permit::Trial { write, .. } = permit(&state, &s, now) {
                            match attempt(&mut shared, &write) {
                                WriteOutcome::Applied(item) => {
                                    prop_assert!(
                                        before.phase != Phase::Open || now >= before.until,
                                        "trial admitted while open before its timeout"
                                    );
                                    let after = BreakerState::from_item(item.as_ref()).0;
                                    prop_assert_eq!(after.phase, Phase::HalfOpen);
                                    let n = admitted.entry(after.generation).or_default();
                                    *n += 1;
                                    prop_assert!(*n <= s.max_requests.get(), "round {} admitted {}", after.generation, n);
                                    cached[i] = item;
                                }
                                WriteOutcome::ConditionFailed(item) => cached[i] = item,
                            }
                        }
                    }
                    Step::Flush(i, tally) => {
                        let (state, _) = BreakerState::from_item(cached[i].as_ref());
                        if let Some(write) = flush(&state, &tally, &s, now).write {
                            match attempt(&mut shared, &write) {
                                WriteOutcome::Applied(item) | WriteOutcome::ConditionFailed(item) => {
                                    cached[i] = item;
                                }
                            }
                        }
                    }
                }
                let stored = BreakerState::from_item(shared.as_ref());
                prop_assert_eq!(stored.1, None);
                prop_assert!(stored.0.admitted <= s.max_requests.get());
            }
        }
    }
}
