//! The idempotency ledger (ARCHITECTURE §3.5): one item per message id that makes sending
//! effectively once although SQS delivers at least once.
//!
//! # Life of an entry
//! - [`claim`]: the sender takes the message id with a conditional write and a lease bound to
//!   the invocation's remaining time. The first attempt assumes there is no entry and costs one
//!   conditional write and no read; when the condition fails the decision is taken again on the
//!   item DynamoDB returned with the failure. Outcomes: [`ClaimOutcome::Claimed`] (go ahead,
//!   possibly reclaimed from an expired lease of a crashed invocation),
//!   [`ClaimOutcome::AlreadySent`] (do not send; re-emit the record event),
//!   [`ClaimOutcome::AlreadyFailed`] (terminal), [`ClaimOutcome::Held`] (another invocation's
//!   lease is live: defer until it ends).
//! - [`mark_sent`] as soon as the provider accepted it (one conditional put per message, the
//!   same write units as a batch put, written the moment the answer arrives rather than after
//!   the slowest call of the batch); [`note_unanswered`] when a call went out and got no answer;
//!   [`mark_failed`] on a terminal failure; [`release`] when the message is deferred, so its
//!   redelivery can claim it at once instead of waiting for the lease to run out.
//!
//! # Why a mark may follow a lost lease
//! [`mark_sent`] succeeds unless another owner already recorded a send: a sent message is
//! recorded as sent even after the caller's lease expired and was taken over, because `sent` is
//! the truth and it stops every later redelivery from sending again. A send another owner had
//! already recorded comes back as [`MarkOutcome::AlreadySent`], a detected duplicate to log. A
//! retry of a mark whose answer was lost meets its own `sent` item, which the condition admits.
//!
//! # Stored form
//! Key `msg#{message_id}` ([`key`]); attributes `state` (`claimed`, `released`, `sent`,
//! `failed`), `claims` (number of successful claims, the optimistic-lock guard of claims),
//! `owner`, `lease_until` (epoch ms), `claimed_at`, and by state `gateway`, `provider_id`,
//! `sent_at` or `reason`, `failed_at`; `unanswered_gateway` and `unanswered_at` once a call went
//! out without an answer ([`note_unanswered`]). Every write sets [`TTL_ATTRIBUTE`] to
//! [`RETENTION_MS`] (30 days) after the write, beyond SQS's 14-day retention, so a message
//! can never be redelivered after its entry may have been cleaned up.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use crate::clock::{DAY_MS, EpochMillis};
use crate::state::{
    CmpOp, Condition, Item, Key, StateStore, StoreError, TTL_ATTRIBUTE, UpdateAction, Value, Write,
    WriteOp, WriteOutcome, get_n, get_s,
};

/// How long an entry is kept after its last write: 30 days, more than twice SQS's maximum
/// retention of 14 days.
pub const RETENTION_MS: i64 = 30 * DAY_MS;

/// Most conditional writes one [`claim`] attempts before [`LedgerError::Contended`]. Each lost
/// write means the entry changed in between, so this runs out only under pathological
/// contention on one message id.
pub const MAX_ATTEMPTS: usize = 4;

const STATE: &str = "state";
const CLAIMS: &str = "claims";
const OWNER: &str = "owner";
const LEASE_UNTIL: &str = "lease_until";
const CLAIMED_AT: &str = "claimed_at";
const GATEWAY: &str = "gateway";
const PROVIDER_ID: &str = "provider_id";
const SENT_AT: &str = "sent_at";
const REASON: &str = "reason";
const FAILED_AT: &str = "failed_at";
const UNANSWERED_GATEWAY: &str = "unanswered_gateway";
const UNANSWERED_AT: &str = "unanswered_at";

const CLAIMED: &str = "claimed";
const RELEASED: &str = "released";
const SENT: &str = "sent";
const FAILED: &str = "failed";

/// The store key of a message's ledger entry: `msg#{message_id}`.
pub fn key(message_id: &str) -> Key {
    format!("msg#{message_id}")
}

fn ttl(now: EpochMillis) -> Value {
    Value::N((now + RETENTION_MS) / 1_000)
}

/// Where a message was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRecord {
    /// The gateway that accepted it.
    pub gateway: String,
    /// The provider's message id, when the provider returned one.
    pub provider_message_id: Option<String>,
    /// When the provider accepted it (epoch ms).
    pub at: EpochMillis,
}

/// Why a message failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecord {
    /// The reason, as the sender recorded it (no addresses or secrets).
    pub reason: String,
    /// The gateway that refused it for good; none when no gateway was called (rejected).
    pub gateway: Option<String>,
    /// When it was marked (epoch ms).
    pub at: EpochMillis,
}

/// A ledger entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Claimed by `owner` until `lease_until` (epoch ms; expired when `<= now`).
    Claimed {
        /// The claiming invocation.
        owner: String,
        /// End of the lease, epoch ms.
        lease_until: EpochMillis,
        /// Successful claims so far.
        claims: i64,
    },
    /// Given back by its owner without sending; claimable at once.
    Released {
        /// Successful claims so far.
        claims: i64,
    },
    /// Sent (terminal).
    Sent(SentRecord),
    /// Failed (terminal).
    Failed(FailedRecord),
}

/// A stored entry that does not decode; nothing is sent for it (it may have been sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger entry {key} does not decode ({problem})")]
pub struct MalformedEntry {
    /// The entry's key.
    pub key: Key,
    /// What is wrong.
    pub problem: &'static str,
}

impl Entry {
    /// Decodes a stored item (`None`: no entry).
    pub fn from_item(key: &Key, item: Option<&Item>) -> Result<Option<Self>, MalformedEntry> {
        let Some(item) = item else {
            return Ok(None);
        };
        let bad = |problem| MalformedEntry {
            key: key.clone(),
            problem,
        };
        let entry = match get_s(item, STATE) {
            Some(CLAIMED) => Self::Claimed {
                owner: get_s(item, OWNER)
                    .ok_or(bad("claimed without owner"))?
                    .to_owned(),
                lease_until: get_n(item, LEASE_UNTIL).ok_or(bad("claimed without lease"))?,
                claims: get_n(item, CLAIMS).ok_or(bad("no claim count"))?,
            },
            Some(RELEASED) => Self::Released {
                claims: get_n(item, CLAIMS).ok_or(bad("no claim count"))?,
            },
            Some(SENT) => Self::Sent(SentRecord {
                gateway: get_s(item, GATEWAY)
                    .ok_or(bad("sent without gateway"))?
                    .to_owned(),
                provider_message_id: get_s(item, PROVIDER_ID).map(str::to_owned),
                at: get_n(item, SENT_AT).ok_or(bad("sent without time"))?,
            }),
            Some(FAILED) => Self::Failed(FailedRecord {
                reason: get_s(item, REASON).unwrap_or_default().to_owned(),
                gateway: get_s(item, GATEWAY).map(str::to_owned),
                at: get_n(item, FAILED_AT).ok_or(bad("failed without time"))?,
            }),
            _ => return Err(bad("unknown state")),
        };
        Ok(Some(entry))
    }
}

/// A claim held by the caller; pass it to the mark and release functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The message id.
    pub message_id: String,
    /// The claiming invocation.
    pub owner: String,
    /// End of the lease, epoch ms.
    pub lease_until: EpochMillis,
    /// Which claim of this message this is (1 for the first).
    pub attempt: i64,
    /// Set when an expired lease of another owner was taken over (log it: that invocation
    /// crashed or overran, and may or may not have sent).
    pub reclaimed: Option<Reclaimed>,
    /// The last provider call of this message that went out without an answer, as an earlier
    /// claim recorded it ([`note_unanswered`]); kept across claims until the entry ends, since
    /// that call may still have been accepted.
    pub unanswered: Option<Unanswered>,
}

/// A provider call that went out and got no answer (a timeout after the request was sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanswered {
    /// The gateway called.
    pub gateway: String,
    /// When the call started, epoch ms.
    pub at: EpochMillis,
}

impl Unanswered {
    fn from_item(item: &Item) -> Option<Self> {
        Some(Self {
            gateway: get_s(item, UNANSWERED_GATEWAY)?.to_owned(),
            at: get_n(item, UNANSWERED_AT)?,
        })
    }
}

/// The expired lease a claim took over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// Its owner.
    pub previous_owner: String,
    /// When its lease ended, epoch ms.
    pub lease_expired_at: EpochMillis,
}

/// The outcome of a [`claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The caller holds the message until the lease ends: send it.
    Claimed(Claim),
    /// Already sent: do not send again; re-emit its record event.
    AlreadySent(SentRecord),
    /// Failed for good earlier: do not send.
    AlreadyFailed(FailedRecord),
    /// Another invocation holds a live lease: defer until `until` (epoch ms).
    Held {
        /// End of the other lease.
        until: EpochMillis,
    },
}

/// A ledger failure (outcomes such as [`ClaimOutcome::Held`] are values, not errors).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The state store failed.
    #[error("ledger unavailable")]
    Store(#[from] StoreError),
    /// The stored entry does not decode.
    #[error(transparent)]
    Malformed(#[from] MalformedEntry),
    /// Every one of `attempts` conditional writes lost to another writer.
    #[error("ledger entry contended: {attempts} conditional writes lost")]
    Contended {
        /// Writes attempted.
        attempts: usize,
    },
}

impl LedgerError {
    /// True when trying again later may succeed (defer the message).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable(),
            Self::Contended { .. } => true,
            Self::Malformed(_) => false,
        }
    }
}

/// What to do about a claim, decided purely from the stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimDecision {
    /// Attempt this conditional write; when applied, the claim is the caller's.
    Write(Write, Claim),
    /// No write: the outcome is already known.
    Done(ClaimOutcome),
}

/// Decides a claim of `message_id` by `owner` until `lease_until` on the stored `entry`, at
/// `now`. Claimable: no entry, a released one, an expired lease (`lease_until <= now`), or the
/// caller's own live claim (a retry whose answer was lost; the lease is extended). The write is
/// guarded by the entry's exact state and claim count, so of any number of concurrent
/// claimers exactly one succeeds.
pub fn decide_claim(
    message_id: &str,
    entry: Option<&Entry>,
    owner: &str,
    lease_until: EpochMillis,
    now: EpochMillis,
) -> ClaimDecision {
    let (guard, claims, reclaimed) = match entry {
        None => (Condition::ItemNotExists, 0, None),
        Some(Entry::Released { claims }) => (guarded(RELEASED, *claims), *claims, None),
        Some(Entry::Claimed {
            owner: holder,
            lease_until: until,
            claims,
        }) => {
            if holder != owner && *until > now {
                return ClaimDecision::Done(ClaimOutcome::Held { until: *until });
            }
            let reclaimed = (holder != owner).then(|| Reclaimed {
                previous_owner: holder.clone(),
                lease_expired_at: *until,
            });
            (guarded(CLAIMED, *claims), *claims, reclaimed)
        }
        Some(Entry::Sent(record)) => {
            return ClaimDecision::Done(ClaimOutcome::AlreadySent(record.clone()));
        }
        Some(Entry::Failed(record)) => {
            return ClaimDecision::Done(ClaimOutcome::AlreadyFailed(record.clone()));
        }
    };
    let write = Write {
        key: key(message_id),
        op: WriteOp::Update(vec![
            UpdateAction::Set(STATE.into(), CLAIMED.into()),
            UpdateAction::Set(OWNER.into(), owner.into()),
            UpdateAction::Set(LEASE_UNTIL.into(), Value::N(lease_until)),
            UpdateAction::Set(CLAIMED_AT.into(), Value::N(now)),
            UpdateAction::Add(CLAIMS.into(), 1),
            UpdateAction::Set(TTL_ATTRIBUTE.into(), ttl(now)),
        ]),
        condition: guard,
    };
    ClaimDecision::Write(
        write,
        Claim {
            message_id: message_id.to_owned(),
            owner: owner.to_owned(),
            lease_until,
            attempt: claims + 1,
            reclaimed,
            unanswered: None,
        },
    )
}

/// True when `entry` is exactly what the write of `claim` leaves behind. The store retries a
/// request whose answer was lost (a timeout after DynamoDB applied it); the retry then fails its
/// condition on our own write. Only this claim's write can have produced it: the write was
/// guarded by the previous claim count, and the owner is unique per invocation.
fn claim_applied(entry: &Entry, claim: &Claim) -> bool {
    matches!(entry, Entry::Claimed { owner, lease_until, claims }
        if *owner == claim.owner && *lease_until == claim.lease_until && *claims == claim.attempt)
}

fn guarded(state: &str, claims: i64) -> Condition {
    Condition::And(vec![
        Condition::cmp(STATE, CmpOp::Eq, state),
        Condition::cmp(CLAIMS, CmpOp::Eq, claims),
    ])
}

/// Claims `message_id` for `owner` until `lease_until` (see [`decide_claim`]). Costs one
/// conditional write when the message is new; each lost race costs one more, decided on the
/// item the store returned (no extra read), at most [`MAX_ATTEMPTS`].
pub async fn claim<S: StateStore + ?Sized>(
    store: &S,
    message_id: &str,
    owner: &str,
    lease_until: EpochMillis,
    now: EpochMillis,
) -> Result<ClaimOutcome, LedgerError> {
    let k = key(message_id);
    // Most messages are new: try the first claim without reading.
    let mut entry: Option<Entry> = None;
    let mut unanswered: Option<Unanswered> = None;
    for _ in 0..MAX_ATTEMPTS {
        let (write, mut claim) =
            match decide_claim(message_id, entry.as_ref(), owner, lease_until, now) {
                ClaimDecision::Done(outcome) => return Ok(outcome),
                ClaimDecision::Write(write, claim) => (write, claim),
            };
        claim.unanswered.clone_from(&unanswered);
        match store.write(write).await? {
            WriteOutcome::Applied(_) => return Ok(ClaimOutcome::Claimed(claim)),
            WriteOutcome::ConditionFailed(current) => {
                entry = Entry::from_item(&k, current.as_ref())?;
                unanswered = current.as_ref().and_then(Unanswered::from_item);
                claim.unanswered.clone_from(&unanswered);
                if entry.as_ref().is_some_and(|e| claim_applied(e, &claim)) {
                    return Ok(ClaimOutcome::Claimed(claim));
                }
            }
        }
    }
    Err(LedgerError::Contended {
        attempts: MAX_ATTEMPTS,
    })
}

/// One message to claim in [`claim_many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRequest<'a> {
    /// The message id.
    pub message_id: &'a str,
    /// The claiming invocation.
    pub owner: &'a str,
    /// End of the lease, epoch ms.
    pub lease_until: EpochMillis,
}

/// Claims every message of a batch with its requests in flight together (one round trip on
/// the happy path). Results are in request order; one message's failure does not affect the
/// others.
pub async fn claim_many<S: StateStore + ?Sized>(
    store: &S,
    requests: &[ClaimRequest<'_>],
    now: EpochMillis,
) -> Vec<Result<ClaimOutcome, LedgerError>> {
    join_all(
        requests
            .iter()
            .map(|r| claim(store, r.message_id, r.owner, r.lease_until, now))
            .collect(),
    )
    .await
}

/// The result of a mark or release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkOutcome {
    /// Written.
    Marked,
    /// The caller no longer holds the claim (its lease expired and was taken over, or the
    /// entry was marked meanwhile); nothing was written. The entry as it now is.
    NotOwner(Option<Entry>),
    /// Another owner had already recorded a send: this send was a duplicate (log it).
    AlreadySent(SentRecord),
}

fn sent_item(claim: &Claim, record: &SentRecord, now: EpochMillis) -> Item {
    let mut item = Item::from([
        (STATE.to_owned(), Value::from(SENT)),
        (CLAIMS.to_owned(), Value::N(claim.attempt)),
        (OWNER.to_owned(), Value::from(claim.owner.as_str())),
        (GATEWAY.to_owned(), Value::from(record.gateway.as_str())),
        (SENT_AT.to_owned(), Value::N(record.at)),
        (TTL_ATTRIBUTE.to_owned(), ttl(now)),
    ]);
    if let Some(id) = &record.provider_message_id {
        item.insert(PROVIDER_ID.to_owned(), Value::from(id.as_str()));
    }
    item
}

/// Records that the claimed message was sent, with one conditional write: it succeeds unless
/// another owner already recorded a send ([`MarkOutcome::AlreadySent`]). A sent message is
/// recorded as sent even when the caller's lease was taken over, because that is the truth and
/// it stops later redeliveries.
pub async fn mark_sent<S: StateStore + ?Sized>(
    store: &S,
    claim: &Claim,
    record: &SentRecord,
    now: EpochMillis,
) -> Result<MarkOutcome, LedgerError> {
    let k = key(&claim.message_id);
    let write = Write {
        key: k.clone(),
        op: WriteOp::Put(sent_item(claim, record, now)),
        condition: Condition::Or(vec![
            Condition::Not(Box::new(Condition::cmp(STATE, CmpOp::Eq, SENT))),
            Condition::cmp(OWNER, CmpOp::Eq, claim.owner.as_str()),
        ]),
    };
    match store.write(write).await? {
        WriteOutcome::Applied(_) => Ok(MarkOutcome::Marked),
        WriteOutcome::ConditionFailed(current) => match Entry::from_item(&k, current.as_ref())? {
            Some(Entry::Sent(other)) => Ok(MarkOutcome::AlreadySent(other)),
            other => Ok(MarkOutcome::NotOwner(other)),
        },
    }
}

/// Terminal failure of the claimed message (for example every recipient permanently
/// rejected), so redeliveries do not send it. Written only while the caller still holds the
/// claim; otherwise [`MarkOutcome::NotOwner`] (someone else is handling the message).
pub async fn mark_failed<S: StateStore + ?Sized>(
    store: &S,
    claim: &Claim,
    reason: &str,
    gateway: Option<&str>,
    now: EpochMillis,
) -> Result<MarkOutcome, LedgerError> {
    let mut actions = vec![
        UpdateAction::Set(STATE.into(), FAILED.into()),
        UpdateAction::Set(REASON.into(), reason.into()),
        UpdateAction::Set(FAILED_AT.into(), Value::N(now)),
        UpdateAction::Set(TTL_ATTRIBUTE.into(), ttl(now)),
    ];
    if let Some(gateway) = gateway {
        actions.push(UpdateAction::Set(GATEWAY.into(), gateway.into()));
    }
    owner_write(
        store,
        claim,
        actions,
        |e| matches!(e, Entry::Failed(r) if r.reason == reason && r.at == now),
    )
    .await
}

/// Remembers that a call of the claimed message to `gateway`, started at `at`, went out and got
/// no answer, so every later claim knows to look for the provider's acceptance before sending
/// again ([`Claim::unanswered`]). Only while the caller still holds the claim. One write, on the
/// ambiguous path only; a retry of an applied write sets the same values again.
pub async fn note_unanswered<S: StateStore + ?Sized>(
    store: &S,
    claim: &Claim,
    gateway: &str,
    at: EpochMillis,
) -> Result<MarkOutcome, LedgerError> {
    owner_write(
        store,
        claim,
        vec![
            UpdateAction::Set(UNANSWERED_GATEWAY.into(), gateway.into()),
            UpdateAction::Set(UNANSWERED_AT.into(), Value::N(at)),
        ],
        // The condition still holds after this write, so a failed one is never our own.
        |_| false,
    )
    .await
}

/// Gives the claim back without sending (the message is deferred), so its redelivery can
/// claim it at once. Only while the caller still holds the claim. A claim that took over an
/// expired lease, and knew of no unanswered call, leaves that lease's end as one
/// (`unanswered_at`, gateway unknown): the earlier holder may have called a provider, and the
/// next claim, which takes a released entry rather than an expired lease, must still look for
/// the provider's acceptance before sending.
pub async fn release<S: StateStore + ?Sized>(
    store: &S,
    claim: &Claim,
    now: EpochMillis,
) -> Result<MarkOutcome, LedgerError> {
    let mut actions = vec![
        UpdateAction::Set(STATE.into(), RELEASED.into()),
        UpdateAction::Set(LEASE_UNTIL.into(), Value::N(now)),
        UpdateAction::Set(TTL_ATTRIBUTE.into(), ttl(now)),
    ];
    if let (Some(r), None) = (&claim.reclaimed, &claim.unanswered) {
        actions.push(UpdateAction::Set(UNANSWERED_GATEWAY.into(), "".into()));
        actions.push(UpdateAction::Set(
            UNANSWERED_AT.into(),
            Value::N(r.lease_expired_at),
        ));
    }
    owner_write(
        store,
        claim,
        actions,
        // Only the holder of claim number `attempt` can release at that count.
        |e| matches!(e, Entry::Released { claims } if *claims == claim.attempt),
    )
    .await
}

/// A conditional update while `claim` is still held. `applied` recognises the entry this very
/// write leaves behind, for a retry whose first attempt was applied but whose answer was lost
/// (see [`claim_applied`]): that is [`MarkOutcome::Marked`], not someone else's doing.
async fn owner_write<S: StateStore + ?Sized>(
    store: &S,
    claim: &Claim,
    actions: Vec<UpdateAction>,
    applied: impl Fn(&Entry) -> bool,
) -> Result<MarkOutcome, LedgerError> {
    let k = key(&claim.message_id);
    let write = Write {
        key: k.clone(),
        op: WriteOp::Update(actions),
        condition: Condition::And(vec![
            Condition::cmp(STATE, CmpOp::Eq, CLAIMED),
            Condition::cmp(OWNER, CmpOp::Eq, claim.owner.as_str()),
            Condition::cmp(CLAIMS, CmpOp::Eq, claim.attempt),
        ]),
    };
    match store.write(write).await? {
        WriteOutcome::Applied(_) => Ok(MarkOutcome::Marked),
        WriteOutcome::ConditionFailed(current) => {
            let entry = Entry::from_item(&k, current.as_ref())?;
            if entry.as_ref().is_some_and(&applied) {
                return Ok(MarkOutcome::Marked);
            }
            Ok(MarkOutcome::NotOwner(entry))
        }
    }
}

/// Reads a message's entry (for the status API and tests).
pub async fn lookup<S: StateStore + ?Sized>(
    store: &S,
    message_id: &str,
) -> Result<Option<Entry>, LedgerError> {
    let k = key(message_id);
    let item = store.get(&k).await?;
    Ok(Entry::from_item(&k, item.as_ref())?)
}

/// Polls every future until all are done, so their requests are in flight at once. Output in
/// input order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::state::memory::MemoryStore;

    const T0: EpochMillis = 1_795_000_000_000;
    const LEASE: EpochMillis = T0 + 60_000;

    fn claimed(outcome: ClaimOutcome) -> Claim {
        match outcome {
            ClaimOutcome::Claimed(c) => c,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    fn sent_record() -> SentRecord {
        SentRecord {
            gateway: "mailgun".into(),
            provider_message_id: Some("<abc@mg>".into()),
            at: T0 + 5,
        }
    }

    #[tokio::test]
    async fn a_write_applied_but_whose_answer_was_lost_counts_as_ours() {
        let store = crate::state::memory::LostAnswers::default();
        let first = claimed(claim(&store, "m1", "inv-a", LEASE, T0).await.unwrap());
        assert_eq!((first.attempt, first.reclaimed.clone()), (1, None));
        assert_eq!(
            release(&store, &first, T0 + 1).await.unwrap(),
            MarkOutcome::Marked
        );
        let second = claimed(claim(&store, "m1", "inv-b", LEASE, T0 + 2).await.unwrap());
        assert_eq!(second.attempt, 2, "one claim, not two");
        assert_eq!(
            mark_failed(
                &store,
                &second,
                "every recipient refused",
                Some("gw"),
                T0 + 3
            )
            .await
            .unwrap(),
            MarkOutcome::Marked
        );
        assert_eq!(
            lookup(&store.0, "m1").await.unwrap(),
            Some(Entry::Failed(FailedRecord {
                reason: "every recipient refused".into(),
                gateway: Some("gw".into()),
                at: T0 + 3
            }))
        );
    }

    #[tokio::test]
    async fn a_new_message_is_claimed_with_one_write_and_no_read() {
        let store = MemoryStore::new();
        let c = claimed(claim(&store, "m1", "inv-a", LEASE, T0).await.unwrap());
        assert_eq!((c.attempt, c.reclaimed), (1, None));
        let counts = store.request_counts();
        assert_eq!((counts.reads, counts.writes), (0, 1));
        assert_eq!(
            lookup(&store, "m1").await.unwrap(),
            Some(Entry::Claimed {
                owner: "inv-a".into(),
                lease_until: LEASE,
                claims: 1
            })
        );
    }

    #[tokio::test]
    async fn a_live_lease_of_another_owner_is_held_until_it_ends() {
        let store = MemoryStore::new();
        claim(&store, "m1", "inv-a", LEASE, T0).await.unwrap();
        let other = claim(&store, "m1", "inv-b", LEASE + 9, T0 + 1)
            .await
            .unwrap();
        assert_eq!(other, ClaimOutcome::Held { until: LEASE });
    }

    #[tokio::test]
    async fn an_expired_lease_is_reclaimed_with_a_note() {
        let store = MemoryStore::new();
        claim(&store, "m1", "inv-a", LEASE, T0).await.unwrap();
        // At exactly the lease end the lease is over.
        let c = claimed(
            claim(&store, "m1", "inv-b", LEASE + 60_000, LEASE)
                .await
                .unwrap(),
        );
        assert_eq!(c.attempt, 2);
        assert_eq!(
            c.reclaimed,
            Some(Reclaimed {
                previous_owner: "inv-a".into(),
                lease_expired_at: LEASE
            })
        );
        // The crashed owner can no longer mark or release.
        let first = Claim {
            message_id: "m1".into(),
            owner: "inv-a".into(),
            lease_until: LEASE,
            attempt: 1,
            reclaimed: None,
            unanswered: None,
        };
        assert!(matches!(
            release(&store, &first, LEASE + 1).await.unwrap(),
            MarkOutcome::NotOwner(Some(Entry::Claimed { .. }))
        ));
    }

    #[tokio::test]
    async fn the_owner_claiming_again_keeps_the_claim_and_extends_the_lease() {
        let store = MemoryStore::new();
        claim(&store, "m1", "inv-a", LEASE, T0).await.unwrap();
        let again = claimed(
            claim(&store, "m1", "inv-a", LEASE + 5, T0 + 1)
                .await
                .unwrap(),
        );
        assert_eq!((again.attempt, again.reclaimed), (2, None));
    }

    #[tokio::test]
    async fn a_sent_message_is_not_claimed_again() {
        let store = MemoryStore::new();
        let c = claimed(claim(&store, "m1", "inv-a", LEASE, T0).await.unwrap());
        assert_eq!(
            mark_sent(&store, &c, &sent_record(), T0 + 6).await.unwrap(),
            MarkOutcome::Marked
        );
        let redelivered = claim(&store, "m1", "inv-b", LEASE + 1, LEASE + 1)
            .await
            .unwrap();
        assert_eq!(redelivered, ClaimOutcome::AlreadySent(sent_record()));
    }

    #[tokio::test]
    async fn a_taken_over_lease_released_unresolved_is_remembered_as_an_unanswered_call() {
        let store = MemoryStore::new();
        claimed(claim(&store, "m1", "inv-a", LEASE, T0).await.unwrap());
        let b = claimed(
            claim(&store, "m1", "inv-b", LEASE + 60_000, LEASE)
                .await
                .unwrap(),
        );
        release(&store, &b, LEASE + 1).await.unwrap();
        let c = claimed(
            claim(&store, "m1", "inv-c", LEASE + 90_000, LEASE + 2)
                .await
                .unwrap(),
        );
        assert_eq!(
            c.reclaimed, None,
            "a released entry is not a taken-over lease"
        );
        assert_eq!(
            c.unanswered,
            Some(Unanswered {
                gateway: String::new(),
                at: LEASE
            }),
            "but the earlier holder's possible call is still known"
        );
    }

    #[tokio::test]
    async fn a_mark_whose_answer_was_lost_is_marked_on_its_retry() {
        let store = crate::state::memory::LostAnswers(MemoryStore::new());
        let c = claimed(claim(&store, "m1", "inv-a", LEASE, T0).await.unwrap());
        assert_eq!(
            mark_sent(&store, &c, &sent_record(), T0 + 6).await.unwrap(),
            MarkOutcome::Marked
        );
        assert_eq!(
            lookup(&store, "m1").await.unwrap(),
            Some(Entry::Sent(sent_record()))
        );
    }

    #[tokio::test]
    async fn an_unanswered_call_is_remembered_by_every_later_claim_until_the_entry_ends() {
        let store = MemoryStore::new();
        let a = claimed(claim(&store, "m1", "inv-a", LEASE, T0).await.unwrap());
        assert_eq!(a.unanswered, None);
        assert_eq!(
            note_unanswered(&store, &a, "gw-1", T0 + 5).await.unwrap(),
            MarkOutcome::Marked
        );
        let want = Some(Unanswered {
            gateway: "gw-1".into(),
            at: T0 + 5,
        });
        // Taken over after the lease: the new claim knows of the call.
        let b = claimed(
            claim(&store, "m1", "inv-b", LEASE + 60_000, LEASE)
                .await
                .unwrap(),
        );
        assert_eq!(b.unanswered, want);
        // Released and claimed again: still known.
        release(&store, &b, LEASE + 1).await.unwrap();
        let c = claimed(
            claim(&store, "m1", "inv-c", LEASE + 90_000, LEASE + 2)
                .await
                .unwrap(),
        );
        assert_eq!((c.reclaimed.clone(), c.unanswered.clone()), (None, want));
        // Only the holder may note a call.
        assert!(matches!(
            note_unanswered(&store, &b, "gw-2", LEASE + 3)
                .await
                .unwrap(),
            MarkOutcome::NotOwner(_)
        ));
        // Sent: the entry ends, and with it the note.
        mark_sent(&store, &c, &sent_record(), LEASE + 4)
            .await
            .unwrap();
        let item = store.get(&key("m1")).await.unwrap().unwrap();
        assert_eq!(Unanswered::from_item(&item), None);
    }

    #[tokio::test]
    async fn a_second_send_by_another_owner_is_reported_as_duplicate() {
        let store = MemoryStore::new();
        let a = claimed(claim(&store, "m1", "inv-a", LEASE, T0).await.unwrap());
        let b = claimed(
            claim(&store, "m1", "inv-b", LEASE + 60_000, LEASE)
                .await
                .unwrap(),
        );
        mark_sent(&store, &b, &sent_record(), LEASE + 1)
            .await
            .unwrap();
        let late = SentRecord {
            gateway: "ses".into(),
            provider_message_id: None,
            at: LEASE + 2,
        };
        assert_eq!(
            mark_sent(&store, &a, &late, LEASE + 3).await.unwrap(),
            MarkOutcome::AlreadySent(sent_record())
        );
    }

    #[tokio::test]
    async fn a_failed_message_is_terminal() {
        let store = MemoryStore::new();
        let c = claimed(claim(&store, "m1", "inv-a", LEASE, T0).await.unwrap());
        assert_eq!(
            mark_failed(&store, &c, "all recipients rejected", None, T0 + 1)
                .await
                .unwrap(),
            MarkOutcome::Marked
        );
        let again = claim(&store, "m1", "inv-b", LEASE, LEASE + 1)
            .await
            .unwrap();
        assert_eq!(
            again,
            ClaimOutcome::AlreadyFailed(FailedRecord {
                reason: "all recipients rejected".into(),
                gateway: None,
                at: T0 + 1
            })
        );
    }

    #[tokio::test]
    async fn a_released_claim_can_be_taken_at_once() {
        let store = MemoryStore::new();
        let c = claimed(claim(&store, "m1", "inv-a", LEASE, T0).await.unwrap());
        assert_eq!(
            release(&store, &c, T0 + 1).await.unwrap(),
            MarkOutcome::Marked
        );
        let next = claimed(claim(&store, "m1", "inv-b", LEASE, T0 + 2).await.unwrap());
        assert_eq!((next.attempt, next.reclaimed), (2, None));
    }

    #[tokio::test]
    async fn entries_outlive_sqs_retention() {
        let store = MemoryStore::new();
        claim(&store, "m1", "inv-a", LEASE, T0).await.unwrap();
        let item = store.get(&key("m1")).await.unwrap().unwrap();
        let ttl_s = get_n(&item, TTL_ATTRIBUTE).unwrap();
        assert_eq!(ttl_s, (T0 + 30 * DAY_MS) / 1_000);
        assert!(ttl_s * 1_000 > T0 + 14 * DAY_MS);
    }

    #[tokio::test]
    async fn an_undecodable_entry_is_an_error_not_a_send() {
        let store = MemoryStore::new();
        store
            .put_many(vec![(
                key("m1"),
                Item::from([(STATE.into(), "weird".into())]),
            )])
            .await
            .unwrap();
        let result = claim(&store, "m1", "inv-a", LEASE, T0).await;
        assert!(
            matches!(result, Err(LedgerError::Malformed(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn claim_many_answers_in_request_order() {
        let store = MemoryStore::new();
        claim(&store, "m2", "inv-x", LEASE, T0).await.unwrap();
        let requests: Vec<ClaimRequest<'_>> = ["m1", "m2", "m3"]
            .iter()
            .map(|id| ClaimRequest {
                message_id: id,
                owner: "inv-a",
                lease_until: LEASE,
            })
            .collect();
        let outcomes = claim_many(&store, &requests, T0 + 1).await;
        let held: Vec<bool> = outcomes
            .iter()
            .map(|o| matches!(o, Ok(ClaimOutcome::Held { .. })))
            .collect();
        assert_eq!(held, vec![false, true, false]);
    }
}
