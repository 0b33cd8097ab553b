//! The breaker over the [`StateStore`] port: read the gateway's item (or take the one the
//! caller read), decide with the pure core, attempt the conditional write tagged with a random
//! [`WriteToken`], and on a lost condition decide again from the item the store returned,
//! unless that item holds the token: then the write was applied and its answer lost (see
//! "Writes whose answer was lost" in [`crate::breaker`]).

use std::borrow::Cow;

use crate::clock::EpochMillis;
use crate::config::BreakerSettings;
use crate::state::{Item, StateStore, StoreError, WriteOutcome};

use super::{
    Admission, BreakerState, BreakerWrite, MAX_ATTEMPTS, MalformedItem, Permit, PhaseChange, Tally,
    Transition, WriteToken, decided_locally, flush, key, permit,
};

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
/// returns. The item is borrowed until the store returns a fresher one. The trial write is
/// tagged with a random token, drawn only when a write is needed.
pub async fn permit_send_with_item(
    store: &dyn StateStore,
    gateway: &str,
    settings: &BreakerSettings,
    item: Option<Cow<'_, Item>>,
    now: EpochMillis,
) -> Result<PermitOutcome, BreakerError> {
    permit_tagged(store, gateway, settings, item, now, None).await
}

/// [`permit_send_with_item`] with the token of its write given (`None`: random when needed),
/// for tests that compare stored items.
pub(super) async fn permit_tagged(
    store: &dyn StateStore,
    gateway: &str,
    settings: &BreakerSettings,
    item: Option<Cow<'_, Item>>,
    now: EpochMillis,
    mut token: Option<WriteToken>,
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
        if let Some(outcome) = decided_locally(&state, malformed.clone(), settings, now) {
            return Ok(outcome);
        }
        let Permit::Trial { write, change } = permit(&state, settings, now) else {
            unreachable!("an allow or a reject is decided locally");
        };
        // At most one write is applied per call, so one token serves every attempt.
        let this = *token.get_or_insert_with(WriteToken::random);
        match attempt(store, gateway, write, this).await? {
            Attempt::Applied(_) => {
                return Ok(PermitOutcome {
                    admission: Admission::Trial,
                    transition: change.map(|c| transition(gateway, c, now)),
                    malformed,
                });
            }
            Attempt::Lost(current) => item = current.map(Cow::Owned),
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
/// again on the item the store returned; it never records outcomes twice or loses them, nor
/// does a write whose answer was lost, short of another instance's write landing between it
/// and the store's retry (see "Writes whose answer was lost" in [`crate::breaker`]).
pub async fn flush_outcomes_with_item(
    store: &dyn StateStore,
    gateway: &str,
    settings: &BreakerSettings,
    tally: &Tally,
    item: Option<Item>,
    now: EpochMillis,
) -> Result<FlushOutcome, BreakerError> {
    flush_tagged(store, gateway, settings, tally, item, now, None).await
}

/// [`flush_outcomes_with_item`] with the token of its first write given (`None`: random when
/// needed), for tests that compare stored items. A write after an applied one carries the next
/// token ([`WriteToken::next`]).
pub(super) async fn flush_tagged(
    store: &dyn StateStore,
    gateway: &str,
    settings: &BreakerSettings,
    tally: &Tally,
    item: Option<Item>,
    now: EpochMillis,
    token: Option<WriteToken>,
) -> Result<FlushOutcome, BreakerError> {
    if !settings.enabled {
        return Ok(FlushOutcome::default());
    }
    let mut item = item;
    let mut tally = *tally;
    let mut token = token;
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
        // A write lost to another instance is decided again, and attempted again, as the same
        // write; only after one is applied does the next one need a token of its own.
        let this = *token.get_or_insert_with(WriteToken::random);
        match attempt(store, gateway, write, this).await? {
            Attempt::Applied(current) => {
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
                token = Some(this.next());
            }
            Attempt::Lost(current) => item = current,
        }
    }
    Err(BreakerError::Contended {
        attempts: MAX_ATTEMPTS,
    })
}

/// What became of one tagged write.
enum Attempt {
    /// Applied, by this request or by an earlier attempt of it whose answer was lost; the item
    /// as it is now.
    Applied(Option<Item>),
    /// The item does not hold the token: another instance's write stands, and the decision is
    /// taken again. The item as it is.
    Lost(Option<Item>),
}

/// Attempts `write` tagged with `token`. A failed condition on an item holding the token is the
/// store's retry meeting this very write's result: applied.
async fn attempt(
    store: &dyn StateStore,
    gateway: &str,
    write: BreakerWrite,
    token: WriteToken,
) -> Result<Attempt, StoreError> {
    Ok(
        match store.write(write.tagged(token).into_write(gateway)).await? {
            WriteOutcome::Applied(current) => Attempt::Applied(current),
            WriteOutcome::ConditionFailed(current) if token.is_in(current.as_ref()) => {
                Attempt::Applied(current)
            }
            WriteOutcome::ConditionFailed(current) => Attempt::Lost(current),
        },
    )
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
