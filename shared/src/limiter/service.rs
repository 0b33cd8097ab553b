//! The limiter over the [`StateStore`] port: read once, decide, write once, and on a lost
//! condition decide again from the items the store returned.

use std::collections::BTreeMap;

use futures::future::join_all;

use crate::clock::EpochMillis;
use crate::state::{
    CmpOp, Condition, Item, Key, MAX_TRANSACTION, StateStore, StoreError, TransactOutcome,
    UpdateAction, Value, Write, WriteOp, get_n,
};

use super::{
    Grant, Leases, LevelUsage, LimitPlan, Pending, Refusal, Request, Step, TAT_ATTR, US_PER_MS,
    Verdict, usage,
};

/// Most decisions one [`acquire`] (or [`refund`]) makes before giving up on a contended item.
/// Each lost race costs one write request and its WCU; eight bounds the cost of a pathological
/// storm while ordinary contention settles in one or two.
pub const MAX_ATTEMPTS: usize = 8;

/// How long after `now` a [`Refusal::Contended`] suggests retrying, in ms.
pub const CONTENDED_RETRY_MS: i64 = 1_000;

/// Applies `writes` in one transaction, even a single one: a transaction carries a client
/// token, so a retry of one that was applied but whose answer was lost is not applied again
/// (DynamoDB `TransactWriteItems`, `ClientRequestToken`); a single conditional update whose
/// condition still holds would be. Refunds need it: returning a grant twice lets a window admit
/// more than its limit.
async fn commit_once<S: StateStore + ?Sized>(
    store: &S,
    writes: Vec<Write>,
) -> Result<Option<Vec<(Key, Option<Item>)>>, StoreError> {
    let keys: Vec<Key> = writes.iter().map(|w| w.key.clone()).collect();
    Ok(match store.transact(writes).await? {
        TransactOutcome::Committed => None,
        TransactOutcome::Cancelled(failed) => Some(
            failed
                .into_iter()
                .filter_map(|(i, item)| keys.get(i).map(|k| (k.clone(), item)))
                .collect(),
        ),
    })
}

/// Decides `requests` (taken in order, first fit: a refused message does not block a later,
/// smaller one; each is all-or-nothing across levels) from what `leases` hold, taking from the
/// store what they lack: one conditional write per level short of its need and per limited
/// sender, all in flight together (see [`super::Pending`]). A lost race is decided again from
/// the item the store returned, without a read, at most [`MAX_ATTEMPTS`] times, after which the
/// requests still short are refused with [`Refusal::Contended`]. The first decision of a
/// process on a gateway-day with per-sender limits reads the day item once (the earlier
/// layout's counters, docs/STATE.md "Rollout"). Units this process will not keep are given
/// back before returning. Verdicts are in request order; every admitted one is counted in the
/// store.
///
/// # Errors
/// A store error on a write or the read; what other writes took is kept or given back as
/// after a decision.
pub async fn acquire_leased<S: StateStore + ?Sized>(
    store: &S,
    leases: &Leases,
    plan: &LimitPlan<'_>,
    requests: &[Request<'_>],
) -> Result<Vec<Verdict>, StoreError> {
    let pending = Pending::new(plan, requests);
    if let Some(key) = pending.legacy_to_read(leases) {
        let item = store
            .get_many(std::slice::from_ref(&key))
            .await?
            .pop()
            .flatten();
        leases.record_legacy(key, item);
    }
    let mut step = pending.begin(leases);
    loop {
        match step {
            Step::Done(outcome) => {
                give_back(store, outcome.giveback, plan.now()).await;
                return Ok(outcome.verdicts);
            }
            Step::Write(mut pending) => {
                let writes = pending.writes();
                let outcomes = join_all(writes.into_iter().map(|w| store.write(w))).await;
                match pending.answer(leases, outcomes) {
                    Ok(next) => step = next,
                    Err((error, outcome)) => {
                        give_back(store, outcome.giveback, plan.now()).await;
                        return Err(error);
                    }
                }
            }
        }
    }
}

/// Returns units a decision took but will not spend. A failure is logged and the units stay
/// consumed: the safe side of a limit.
async fn give_back<S: StateStore + ?Sized>(
    store: &S,
    charges: Vec<(Key, String, i64)>,
    now: EpochMillis,
) {
    if charges.is_empty() {
        return;
    }
    if let Err(error) = refund_charges(store, charges, now).await {
        tracing::warn!(error_kind = "limiter", %error, "units taken ahead not given back; they stay consumed");
    }
}

/// [`acquire_leased`] holding nothing between calls ([`Leases::exact`]): every decision is
/// written and whatever a refused request was given is returned at once.
pub async fn acquire<S: StateStore + ?Sized>(
    store: &S,
    plan: &LimitPlan<'_>,
    requests: &[Request<'_>],
) -> Result<Vec<Verdict>, StoreError> {
    acquire_leased(store, &Leases::exact(), plan, requests).await
}

/// [`acquire`] for one message.
pub async fn acquire_one<S: StateStore + ?Sized>(
    store: &S,
    plan: &LimitPlan<'_>,
    sender: &str,
    recipients: u64,
) -> Result<Verdict, StoreError> {
    let mut verdicts = acquire(store, plan, &[Request { sender, recipients }]).await?;
    // `acquire` answers one verdict per request; the fallback only keeps this total.
    Ok(verdicts
        .pop()
        .unwrap_or(Verdict::Refuse(Refusal::Contended {
            retry_after: plan.now() + CONTENDED_RETRY_MS,
        })))
}

/// Reads the plan's items (and the sender's own, when given) and reports the use of every
/// limited level (see [`super::usage`]).
pub async fn read_usage<S: StateStore + ?Sized>(
    store: &S,
    plan: &LimitPlan<'_>,
    sender: Option<&str>,
) -> Result<Vec<LevelUsage>, StoreError> {
    let mut keys = plan.keys().to_vec();
    if let Some(sender) = sender {
        keys.push(super::sender_key(plan.gateway_id(), sender, plan.now()));
    }
    let mut items = if keys.is_empty() {
        Vec::new()
    } else {
        store.get_many(&keys).await?
    };
    let sender_item = if sender.is_some() {
        items.pop().flatten()
    } else {
        None
    };
    Ok(usage(
        plan,
        &items,
        sender.map(|s| (s, sender_item.as_ref())),
    ))
}

/// How a [`refund`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Everything granted was given back (clamped so no counter goes below 0 and no bucket
    /// holds more than its capacity; consumption in a window that has since disappeared is
    /// simply gone).
    Returned,
    /// Some items kept changing under the refund for [`MAX_ATTEMPTS`] rounds; what was not
    /// returned stays consumed (the safe side of a limit).
    Contended,
}

/// What one key gives back: counter attributes and, for a bucket, microseconds of `tat_us`.
#[derive(Debug, Default)]
struct KeyRefund {
    counters: BTreeMap<String, i64>,
    bucket_us: i64,
}

/// Gives back what `grants` consumed, for messages the provider never accepted. Call it at
/// most once per grant: a refund is not idempotent, and returning a grant twice would let a
/// window admit more than its limit (its writes are transactions, so a retried request is not
/// applied twice). Exact: each
/// counter drops by what the grants added (never below 0), each bucket's `tat_us` moves back by
/// what they took (never before `now`, which would overfill it). No read first: the writes
/// assume the counters still hold the amounts and fall back to the item returned by a failed
/// condition. Writes go in transactions of at most [`MAX_TRANSACTION`] keys, one key included.
pub async fn refund<S: StateStore + ?Sized>(
    store: &S,
    grants: &[Grant],
    now: EpochMillis,
) -> Result<RefundOutcome, StoreError> {
    let charges = grants
        .iter()
        .flat_map(Grant::charges)
        .map(|(key, attr, amount)| (key.clone(), attr.to_owned(), amount))
        .collect();
    refund_charges(store, charges, now).await
}

/// Gives back `(key, attribute, amount)` charges as [`refund`] does.
async fn refund_charges<S: StateStore + ?Sized>(
    store: &S,
    charges: Vec<(Key, String, i64)>,
    now: EpochMillis,
) -> Result<RefundOutcome, StoreError> {
    let mut by_key: BTreeMap<Key, KeyRefund> = BTreeMap::new();
    for (key, attr, amount) in charges {
        let entry = by_key.entry(key).or_default();
        if attr == TAT_ATTR {
            entry.bucket_us = entry.bucket_us.saturating_add(amount);
        } else {
            let c = entry.counters.entry(attr).or_default();
            *c = c.saturating_add(amount);
        }
    }
    let pending: Vec<(Key, KeyRefund)> = by_key.into_iter().collect();
    let mut outcome = RefundOutcome::Returned;
    for chunk in pending.chunks(MAX_TRANSACTION) {
        if refund_chunk(store, chunk, now).await? == RefundOutcome::Contended {
            outcome = RefundOutcome::Contended;
        }
    }
    Ok(outcome)
}

async fn refund_chunk<S: StateStore + ?Sized>(
    store: &S,
    chunk: &[(Key, KeyRefund)],
    now: EpochMillis,
) -> Result<RefundOutcome, StoreError> {
    // `None`: not read yet, assume the amounts are all there.
    let mut known: BTreeMap<Key, Option<Item>> = BTreeMap::new();
    for _ in 0..MAX_ATTEMPTS {
        let writes: Vec<Write> = chunk
            .iter()
            .filter_map(|(key, r)| refund_write(key, r, known.get(key), now))
            .collect();
        if writes.is_empty() {
            return Ok(RefundOutcome::Returned);
        }
        match commit_once(store, writes).await? {
            None => return Ok(RefundOutcome::Returned),
            Some(fresh) => {
                for (key, item) in fresh {
                    known.insert(key, item);
                }
            }
        }
    }
    Ok(RefundOutcome::Contended)
}

/// The write returning `r` to `key`, given what is known of its item (`None` = unknown,
/// `Some(None)` = no item). `None` when nothing is left to return.
fn refund_write(
    key: &Key,
    r: &KeyRefund,
    known: Option<&Option<Item>>,
    now: EpochMillis,
) -> Option<Write> {
    let stored = match known {
        None => None,
        // The window's item is gone: there is nothing to give back to.
        Some(None) => return None,
        Some(Some(item)) => Some(item),
    };
    let mut actions = Vec::new();
    let mut conditions = Vec::new();
    for (attr, amount) in &r.counters {
        let give = match stored {
            None => *amount,
            Some(item) => get_n(item, attr).unwrap_or(0).clamp(0, *amount),
        };
        if give > 0 {
            actions.push(UpdateAction::Add(attr.clone().into(), -give));
            conditions.push(Condition::cmp(attr.clone(), CmpOp::Ge, give));
        }
    }
    if r.bucket_us > 0 {
        let now_us = now.saturating_mul(US_PER_MS);
        match stored.map(|i| get_n(i, TAT_ATTR)) {
            // Unknown: assume the whole amount lies ahead of now.
            None => {
                actions.push(UpdateAction::Add(TAT_ATTR.into(), -r.bucket_us));
                conditions.push(Condition::cmp(
                    TAT_ATTR,
                    CmpOp::Ge,
                    now_us.saturating_add(r.bucket_us),
                ));
            }
            Some(Some(tat)) if tat.saturating_sub(r.bucket_us) >= now_us => {
                actions.push(UpdateAction::Add(TAT_ATTR.into(), -r.bucket_us));
                conditions.push(Condition::cmp(
                    TAT_ATTR,
                    CmpOp::Ge,
                    now_us.saturating_add(r.bucket_us),
                ));
            }
            // Part of it has refilled already: the bucket becomes full, and no fuller.
            Some(Some(tat)) if tat > now_us => {
                actions.push(UpdateAction::Set(TAT_ATTR.into(), Value::N(now_us)));
                conditions.push(Condition::cmp(TAT_ATTR, CmpOp::Eq, tat));
            }
            // Already full.
            Some(_) => {}
        }
    }
    if actions.is_empty() {
        return None;
    }
    conditions.push(Condition::ItemExists);
    Some(Write {
        key: key.clone(),
        op: WriteOp::Update(actions),
        condition: Condition::all(conditions),
    })
}
