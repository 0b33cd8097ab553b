//! The suppression list (ARCHITECTURE §3.6): addresses that hard-bounced, complained or unsubscribed,
//! which the sender must not send to.
//!
//! # Stored form
//! One item per address under `sup#{address in lower case}` ([`key`]), so lookups are
//! case-insensitive (`John@Example.org` and `john@example.org` are one entry), with attributes
//! `address` (lower case), `reason` ([`Reason::as_str`]), `source` (what caused it: the
//! provider event id, or who added it by hand) and `at` (epoch ms). No TTL: a suppression
//! stays until removed.
//!
//! The presence of the item is what suppresses. An item whose attributes do not decode still
//! suppresses (with [`Reason::Unknown`]): sending to an address someone meant to block is the
//! worse mistake.
//!
//! # Removal wins over older events
//! [`remove`] does not delete the item: it leaves a tombstone (`removed_at`, no `reason`), kept
//! [`TOMBSTONE_TTL_MS`]. Every add is conditional on the tombstone being older than the event that
//! adds (`removed_at < at`), so a bounce or complaint recorded again later (a replayed event, a
//! provider's redelivered webhook, an events-queue redrive) cannot undo an operator's removal;
//! a bounce that happens after the removal suppresses again, as it should. A tombstone does not
//! suppress.
//!
//! # Cost
//! [`lookup_many`] reads a whole batch's recipients with one `BatchGetItem` per 100 distinct
//! addresses: a batch of 10 messages is one request.

use std::collections::BTreeMap;

use crate::clock::EpochMillis;
use crate::events::DeliveryKind;
use crate::state::{
    CmpOp, Condition, Item, Key, MAX_BATCH_GET, StateStore, StoreError, TTL_ATTRIBUTE, Value,
    Write, WriteOp, WriteOutcome, get_n, get_s,
};

const ADDRESS: &str = "address";
const REASON: &str = "reason";
const SOURCE: &str = "source";
const AT: &str = "at";
const REMOVED_AT: &str = "removed_at";
/// A removal's own random id, stored in its tombstone.
const WRITE_ID: &str = "write_id";

/// How long a removal is remembered against older events: longer than anything can replay them
/// (the events queue keeps a record 14 days, a provider retries its webhook for hours).
pub const TOMBSTONE_TTL_MS: EpochMillis = 30 * crate::clock::DAY_MS;

/// The canonical form of an address on the list: ASCII lower case (as
/// [`EmailAddress::to_key`](crate::address::EmailAddress::to_key)).
pub fn canonical(address: &str) -> String {
    address.to_ascii_lowercase()
}

/// Prefix of every suppression key (for listing them).
pub const KEY_PREFIX: &str = "sup#";

/// The store key of an address's entry: `sup#{lower-cased address}`.
pub fn key(address: &str) -> Key {
    format!("{KEY_PREFIX}{}", canonical(address))
}

/// Why an address is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A permanent delivery failure.
    HardBounce,
    /// The recipient marked a message as spam.
    Complaint,
    /// The recipient unsubscribed.
    Unsubscribe,
    /// Added by an operator.
    Manual,
    /// The stored reason did not decode (still suppressed).
    Unknown,
}

impl Reason {
    /// The stored name: `hard_bounce`, `complaint`, `unsubscribe`, `manual`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HardBounce => "hard_bounce",
            Self::Complaint => "complaint",
            Self::Unsubscribe => "unsubscribe",
            Self::Manual => "manual",
            Self::Unknown => "unknown",
        }
    }

    /// Parses a stored or typed name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::HardBounce,
            Self::Complaint,
            Self::Unsubscribe,
            Self::Manual,
            Self::Unknown,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// The reason a delivery event suppresses its recipient for, if it does (see
    /// [`DeliveryKind::suppresses`]).
    pub fn from_delivery(kind: DeliveryKind) -> Option<Self> {
        match kind {
            DeliveryKind::HardBounce => Some(Self::HardBounce),
            DeliveryKind::Complained => Some(Self::Complaint),
            DeliveryKind::Unsubscribed => Some(Self::Unsubscribe),
            _ => None,
        }
    }
}

/// One suppressed address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    /// The address, lower case.
    pub address: String,
    /// Why.
    pub reason: Reason,
    /// What caused it (provider event id, or the operator); no secrets.
    pub source: String,
    /// When it was suppressed (epoch ms).
    pub at: EpochMillis,
}

impl Suppression {
    /// A suppression of `address` (any case; stored lower case).
    pub fn new(address: &str, reason: Reason, source: &str, at: EpochMillis) -> Self {
        Self {
            address: canonical(address),
            reason,
            source: source.to_owned(),
            at,
        }
    }

    /// The stored item.
    pub fn to_item(&self) -> Item {
        Item::from([
            (ADDRESS.to_owned(), Value::from(self.address.as_str())),
            (REASON.to_owned(), Value::from(self.reason.as_str())),
            (SOURCE.to_owned(), Value::from(self.source.as_str())),
            (AT.to_owned(), Value::N(self.at)),
        ])
    }

    /// Decodes the item stored for `address`; undecodable attributes fall back (see the
    /// module docs) because the item's presence alone suppresses.
    pub fn from_item(address: &str, item: &Item) -> Self {
        Self {
            address: get_s(item, ADDRESS).map_or_else(|| canonical(address), str::to_owned),
            reason: get_s(item, REASON)
                .and_then(Reason::parse)
                .unwrap_or(Reason::Unknown),
            source: get_s(item, SOURCE).unwrap_or_default().to_owned(),
            at: get_n(item, AT).unwrap_or(0),
        }
    }
}

/// The write that adds `suppression` unless an operator removed the address after it
/// happened (see the module docs).
fn add_write(suppression: &Suppression) -> Write {
    Write {
        key: key(&suppression.address),
        op: WriteOp::Put(suppression.to_item()),
        condition: Condition::Or(vec![
            Condition::AttrNotExists(REMOVED_AT.into()),
            Condition::cmp(REMOVED_AT, CmpOp::Lt, suppression.at),
        ]),
    }
}

/// Adds (or replaces) a suppression: one conditional write. `false` when an operator removed
/// the address after `suppression.at`: that removal stands.
pub async fn add<S: StateStore + ?Sized>(
    store: &S,
    suppression: &Suppression,
) -> Result<bool, StoreError> {
    let outcome = store.write(add_write(suppression)).await?;
    Ok(matches!(outcome, WriteOutcome::Applied(_)))
}

/// Adds several suppressions (the recorder's batches), each a conditional write as in [`add`],
/// all in flight together. Returns how many were added; the others were removed by an operator
/// after their event.
pub async fn add_many<S: StateStore + ?Sized>(
    store: &S,
    suppressions: &[Suppression],
) -> Result<usize, StoreError> {
    let outcomes =
        futures::future::join_all(suppressions.iter().map(|s| store.write(add_write(s)))).await;
    let mut added = 0;
    for outcome in outcomes {
        added += usize::from(matches!(outcome?, WriteOutcome::Applied(_)));
    }
    Ok(added)
}

/// Removes `address` (any case) from the list at `now`, leaving a tombstone so that older
/// events cannot add it again (module docs); `true` when it was on the list.
pub async fn remove<S: StateStore + ?Sized>(
    store: &S,
    address: &str,
    now: EpochMillis,
) -> Result<bool, StoreError> {
    // Tells this removal's tombstone from any other, for a retry whose first attempt was
    // applied but whose answer was lost.
    let write_id = i64::try_from(crate::retry::random_below(1 << 48)).unwrap_or_default();
    let tombstone = Item::from([
        (ADDRESS.to_owned(), Value::from(canonical(address).as_str())),
        (REMOVED_AT.to_owned(), Value::N(now)),
        (WRITE_ID.to_owned(), Value::N(write_id)),
        (
            TTL_ATTRIBUTE.to_owned(),
            Value::N((now + TOMBSTONE_TTL_MS) / 1000),
        ),
    ]);
    let outcome = store
        .write(Write {
            key: key(address),
            op: WriteOp::Put(tombstone),
            // On the list: an item that is not already a tombstone.
            condition: Condition::And(vec![
                Condition::ItemExists,
                Condition::AttrNotExists(REMOVED_AT.into()),
            ]),
        })
        .await?;
    Ok(match outcome {
        WriteOutcome::Applied(_) => true,
        // A retry of this very removal, applied but whose answer was lost, meets its own
        // tombstone: it did remove the address.
        WriteOutcome::ConditionFailed(current) => current
            .as_ref()
            .is_some_and(|i| get_n(i, WRITE_ID) == Some(write_id)),
    })
}

/// True for a removal's tombstone, which does not suppress.
fn is_tombstone(item: &Item) -> bool {
    item.contains_key(REMOVED_AT)
}

/// The suppression of `address` (any case), if any.
pub async fn lookup<S: StateStore + ?Sized>(
    store: &S,
    address: &str,
) -> Result<Option<Suppression>, StoreError> {
    let item = store.get(&key(address)).await?;
    Ok(item
        .filter(|i| !is_tombstone(i))
        .map(|i| Suppression::from_item(address, &i)))
}

/// The suppression of each address (any case), in input order: one `get_many` per
/// [`MAX_BATCH_GET`] distinct addresses (duplicates, in any case, are read once).
pub async fn lookup_many<S: StateStore + ?Sized>(
    store: &S,
    addresses: &[&str],
) -> Result<Vec<Option<Suppression>>, StoreError> {
    let mut distinct: Vec<Key> = addresses.iter().map(|a| key(a)).collect();
    distinct.sort();
    distinct.dedup();
    let mut found: BTreeMap<Key, Item> = BTreeMap::new();
    for chunk in distinct.chunks(MAX_BATCH_GET) {
        let items = store.get_many(chunk).await?;
        found.extend(
            chunk
                .iter()
                .zip(items)
                .filter_map(|(k, i)| i.filter(|i| !is_tombstone(i)).map(|i| (k.clone(), i))),
        );
    }
    Ok(addresses
        .iter()
        .map(|a| found.get(&key(a)).map(|i| Suppression::from_item(a, i)))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::state::memory::MemoryStore;

    const T0: EpochMillis = 1_795_000_000_000;

    #[tokio::test]
    async fn lookups_ignore_case() {
        let store = MemoryStore::new();
        add(
            &store,
            &Suppression::new("John.Doe@Example.ORG", Reason::HardBounce, "mg:ev1", T0),
        )
        .await
        .unwrap();
        let found = lookup(&store, "john.doe@example.org").await.unwrap();
        assert_eq!(
            found,
            Some(Suppression {
                address: "john.doe@example.org".into(),
                reason: Reason::HardBounce,
                source: "mg:ev1".into(),
                at: T0
            })
        );
        assert_eq!(lookup(&store, "jane@example.org").await.unwrap(), None);
    }

    #[tokio::test]
    async fn remove_reports_whether_the_address_was_listed() {
        let store = MemoryStore::new();
        add(
            &store,
            &Suppression::new("a@x.org", Reason::Manual, "ops", T0),
        )
        .await
        .unwrap();
        assert!(remove(&store, "A@X.org", T0 + 1).await.unwrap());
        assert!(!remove(&store, "a@x.org", T0 + 1).await.unwrap());
        assert_eq!(lookup(&store, "a@x.org").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_batch_of_recipients_is_one_read_in_input_order() {
        let store = MemoryStore::new();
        add_many(
            &store,
            &[
                Suppression::new("b@x.org", Reason::Complaint, "ev-b", T0),
                Suppression::new("d@x.org", Reason::Unsubscribe, "ev-d", T0),
            ],
        )
        .await
        .unwrap();
        let reads_before = store.request_counts().reads;
        let addresses = ["a@x.org", "B@x.org", "c@x.org", "d@x.org", "b@X.ORG"];
        let found = lookup_many(&store, &addresses).await.unwrap();
        let reasons: Vec<Option<Reason>> =
            found.iter().map(|s| s.as_ref().map(|s| s.reason)).collect();
        assert_eq!(
            reasons,
            vec![
                None,
                Some(Reason::Complaint),
                None,
                Some(Reason::Unsubscribe),
                Some(Reason::Complaint)
            ]
        );
        assert_eq!(store.request_counts().reads - reads_before, 1);
    }

    #[tokio::test]
    async fn more_than_a_hundred_addresses_take_one_read_per_hundred() {
        let store = MemoryStore::new();
        let owned: Vec<String> = (0..250).map(|i| format!("u{i}@x.org")).collect();
        let addresses: Vec<&str> = owned.iter().map(String::as_str).collect();
        let found = lookup_many(&store, &addresses).await.unwrap();
        assert_eq!(found.len(), 250);
        assert_eq!(store.request_counts().reads, 3);
    }

    #[test]
    fn an_undecodable_item_still_suppresses() {
        let item = Item::from([(REASON.to_owned(), Value::N(3))]);
        let s = Suppression::from_item("X@y.org", &item);
        assert_eq!((s.address.as_str(), s.reason), ("x@y.org", Reason::Unknown));
    }

    #[test]
    fn only_bounces_complaints_and_unsubscribes_suppress() {
        for kind in [
            DeliveryKind::Delivered,
            DeliveryKind::HardBounce,
            DeliveryKind::SoftBounce,
            DeliveryKind::Complained,
            DeliveryKind::Unsubscribed,
            DeliveryKind::Rejected,
        ] {
            assert_eq!(
                Reason::from_delivery(kind).is_some(),
                kind.suppresses(),
                "{kind:?}"
            );
        }
        for r in [Reason::HardBounce, Reason::Manual, Reason::Unknown] {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
    }

    #[tokio::test]
    async fn a_removal_whose_answer_was_lost_still_reports_the_address_removed() {
        let store = crate::state::memory::LostAnswers(MemoryStore::new());
        let bounce = Suppression::new("p@example.org", Reason::HardBounce, "mg:ev1", T0);
        assert!(add(&store.0, &bounce).await.unwrap());
        assert!(remove(&store, "p@example.org", T0 + 10).await.unwrap());
        assert_eq!(lookup(&store, "p@example.org").await.unwrap(), None);
        // A removal of an address not on the list still says so.
        assert!(!remove(&store, "q@example.org", T0 + 20).await.unwrap());
        assert!(!remove(&store, "p@example.org", T0 + 30).await.unwrap());
    }

    #[tokio::test]
    async fn an_operators_removal_wins_over_older_events_and_not_newer_ones() {
        let store = MemoryStore::new();
        let bounce = Suppression::new("P@example.org", Reason::HardBounce, "mg:ev1", T0);
        assert!(add(&store, &bounce).await.unwrap());
        assert!(remove(&store, "p@EXAMPLE.org", T0 + 10).await.unwrap());
        assert_eq!(lookup(&store, "p@example.org").await.unwrap(), None);
        // The same bounce recorded again (a replay) changes nothing.
        assert!(!add(&store, &bounce).await.unwrap());
        assert_eq!(
            add_many(&store, std::slice::from_ref(&bounce))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            lookup_many(&store, &["p@example.org"]).await.unwrap(),
            [None]
        );
        assert!(
            !remove(&store, "p@example.org", T0 + 11).await.unwrap(),
            "not on the list"
        );
        // A bounce after the removal suppresses again.
        let again = Suppression::new("p@example.org", Reason::HardBounce, "mg:ev2", T0 + 20);
        assert_eq!(
            add_many(&store, std::slice::from_ref(&again))
                .await
                .unwrap(),
            1
        );
        assert_eq!(lookup(&store, "p@example.org").await.unwrap(), Some(again));
        // Removing an address that was never on the list leaves nothing behind.
        assert!(!remove(&store, "never@example.org", T0).await.unwrap());
        assert!(store.snapshot().keys().all(|k| !k.contains("never")));
    }
}
