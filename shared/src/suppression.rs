//! The suppression list (ARCHITECTURE §3.6): addresses that hard-bounced, complained or
//! unsubscribed, which the sender must not send to, each for a [`Scope`]: every stream, or only
//! the [`Stream`] (transactional or bulk mail) the event's message belonged to.
//!
//! # Scopes
//! A hard bounce suppresses the address for every stream: the mailbox does not take mail. A
//! complaint or an unsubscribe suppresses it for the stream of the message it was about (or for
//! every stream, by configuration: `suppression.complaint_scope` / `unsubscribe_scope`), so
//! unsubscribing from a newsletter does not stop appointment and results mail. An event whose
//! stream is unknown suppresses every stream: for consent, blocking too much is the safe side.
//! A recipient is dropped from a message of stream `s` when its entry has an active scope
//! [covering](Scope::covers) `s`: [`Scope::All`] or `s` itself.
//!
//! # Stored form
//! One item per address under `sup#{address in lower case}` ([`key`]), so lookups are
//! case-insensitive and a batch's recipients stay one `BatchGetItem` per 100 addresses whatever
//! the number of scopes. Each scope has its own attributes in that item: `reason`
//! ([`Reason::as_str`]), `source` (the provider event id, or who added it by hand), `at` (epoch
//! ms) and `removed_at` for [`Scope::All`], the same names prefixed with the stream
//! (`bulk_reason`, `transactional_at`, …) for a stream. The unprefixed names are the layout
//! before scopes existed, so an item written then means "every stream": nothing suppressed
//! before the scopes became sendable after them. No TTL while any scope is active.
//!
//! A scope is active while its `reason` attribute is present, whatever it holds (an undecodable
//! reason reads [`Reason::Unknown`]), and an item carrying no scope and no removal at all
//! suppresses every stream: sending to an address someone meant to block is the worse mistake.
//!
//! # Removal wins over older events, per scope
//! [`remove`] does not delete: it clears the scope's attributes and leaves its tombstone
//! (`removed_at`, `bulk_removed_at`, …). Removing [`Scope::All`] clears every scope. An add for
//! a scope is refused unless every removal covering it (its own and the all-streams one) is
//! older than the event that adds (`removed_at < at`), so a bounce or complaint recorded again
//! later (a replayed event, a redelivered webhook, an events-queue redrive) cannot undo an
//! operator's removal, while one that happens after the removal suppresses again. Once no scope
//! is active the item is kept [`TOMBSTONE_TTL_MS`], then expires.
//!
//! # Writes: compare and put
//! Each change is computed from the stored item by a pure function and written with a put
//! conditional on the item being unchanged since it was read (every attribute equal, none of
//! the layout's attributes added); a lost race reads the item from the failed condition and
//! tries again. A put, not an update, because the recorder's role may only put `sup#` items
//! (template.yaml), and a put of the whole item needs no read permission: the recorder's first
//! attempt assumes no item and a conflict returns the stored one.
//!
//! # Cost
//! [`lookup_many`] reads a whole batch's recipients with one `BatchGetItem` per 100 distinct
//! addresses: a batch of 10 messages is one request. The recorder adds with one put for an
//! address not on the list yet, two when it is (the first one's failed condition returns the
//! stored item).

use std::collections::BTreeMap;

use crate::clock::EpochMillis;
pub use crate::config::{EventScope, SuppressionSettings};
use crate::events::DeliveryKind;
pub use crate::message::Stream;
use crate::state::{
    CmpOp, Condition, Item, Key, MAX_BATCH_GET, StateStore, StoreError, TTL_ATTRIBUTE, Value,
    Write, WriteOp, WriteOutcome, get_n, get_s,
};

const ADDRESS: &str = "address";
/// A removal's own random id, stored with its tombstone.
const WRITE_ID: &str = "write_id";

/// How long a removal is remembered against older events once no scope of the address is
/// active: longer than anything can replay them (the events queue keeps a record 14 days, a
/// provider retries its webhook for hours).
pub const TOMBSTONE_TTL_MS: EpochMillis = 30 * crate::clock::DAY_MS;

/// Compare-and-put attempts before a change gives up as contended ([`StoreError::Throttled`],
/// retryable): two writers racing on one address are rare, five in a row rarer still.
const MAX_ATTEMPTS: usize = 5;

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

/// What a suppression covers: every stream, or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every stream (hard bounces, entries from before scopes existed, manual additions unless
    /// told otherwise).
    All,
    /// Only messages of this stream.
    Stream(Stream),
}

impl Scope {
    /// Every scope, in the order entries list them.
    pub const EVERY: [Self; 3] = [
        Self::All,
        Self::Stream(Stream::Transactional),
        Self::Stream(Stream::Bulk),
    ];

    /// The name: `all`, `transactional` or `bulk`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Stream(s) => s.as_str(),
        }
    }

    /// Parses a name written by [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Self> {
        Self::EVERY.into_iter().find(|c| c.as_str() == s)
    }

    /// True when a suppression of this scope blocks messages of `stream`.
    pub fn covers(self, stream: Stream) -> bool {
        match self {
            Self::All => true,
            Self::Stream(s) => s == stream,
        }
    }

    /// The scopes whose removal refuses an older add to this one: itself and [`Scope::All`].
    fn removals(self) -> &'static [Self] {
        match self {
            Self::All => &[Self::All],
            Self::Stream(Stream::Transactional) => {
                &[Self::All, Self::Stream(Stream::Transactional)]
            }
            Self::Stream(Stream::Bulk) => &[Self::All, Self::Stream(Stream::Bulk)],
        }
    }

    /// The scope's attribute names (module docs, "Stored form").
    fn attrs(self) -> ScopeAttrs {
        match self {
            Self::All => ScopeAttrs {
                reason: "reason",
                source: "source",
                at: "at",
                removed_at: "removed_at",
            },
            Self::Stream(Stream::Transactional) => ScopeAttrs {
                reason: "transactional_reason",
                source: "transactional_source",
                at: "transactional_at",
                removed_at: "transactional_removed_at",
            },
            Self::Stream(Stream::Bulk) => ScopeAttrs {
                reason: "bulk_reason",
                source: "bulk_source",
                at: "bulk_at",
                removed_at: "bulk_removed_at",
            },
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One scope's attribute names.
#[derive(Debug, Clone, Copy)]
struct ScopeAttrs {
    reason: &'static str,
    source: &'static str,
    at: &'static str,
    removed_at: &'static str,
}

/// Every attribute of the layout, for the "unchanged" condition of a compare and put.
fn layout_attrs() -> impl Iterator<Item = &'static str> {
    [ADDRESS, WRITE_ID, TTL_ATTRIBUTE]
        .into_iter()
        .chain(Scope::EVERY.into_iter().flat_map(|s| {
            let a = s.attrs();
            [a.reason, a.source, a.at, a.removed_at]
        }))
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

/// One suppression of an address for one scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    /// The address, lower case.
    pub address: String,
    /// The streams it covers.
    pub scope: Scope,
    /// Why.
    pub reason: Reason,
    /// What caused it (provider event id, or the operator); no secrets.
    pub source: String,
    /// When it was suppressed (epoch ms).
    pub at: EpochMillis,
}

impl Suppression {
    /// A suppression of `address` (any case; stored lower case) for every stream; see
    /// [`in_scope`](Self::in_scope) for one stream.
    pub fn new(address: &str, reason: Reason, source: &str, at: EpochMillis) -> Self {
        Self {
            address: canonical(address),
            scope: Scope::All,
            reason,
            source: source.to_owned(),
            at,
        }
    }

    /// The same suppression for `scope`.
    #[must_use]
    pub fn in_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// The suppression a delivery event of `kind` calls for, if any, with its scope: every
    /// stream for a hard bounce; for a complaint or an unsubscribe the event's `stream` when
    /// `rule` says [`EventScope::Stream`] and the stream is known, every stream otherwise
    /// (module docs, "Scopes").
    pub fn from_delivery(
        kind: DeliveryKind,
        stream: Option<Stream>,
        rule: EventScope,
        address: &str,
        source: &str,
        at: EpochMillis,
    ) -> Option<Self> {
        let reason = Reason::from_delivery(kind)?;
        let scope = match (reason, rule, stream) {
            (Reason::Complaint | Reason::Unsubscribe, EventScope::Stream, Some(s)) => {
                Scope::Stream(s)
            }
            _ => Scope::All,
        };
        Some(Self::new(address, reason, source, at).in_scope(scope))
    }
}

/// The rule the settings give for an event of `kind` (hard bounces suppress every stream
/// whatever the settings say; [`Suppression::from_delivery`] applies that).
pub fn event_scope(settings: SuppressionSettings, kind: DeliveryKind) -> EventScope {
    match kind {
        DeliveryKind::Complained => settings.complaint_scope,
        DeliveryKind::Unsubscribed => settings.unsubscribe_scope,
        _ => EventScope::All,
    }
}

/// An address's entry on the list: its active suppressions, one per scope, in
/// [`Scope::EVERY`] order; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The address, lower case.
    pub address: String,
    /// The active suppressions.
    pub suppressions: Vec<Suppression>,
}

impl Entry {
    /// The suppression that blocks a message of `stream` to this address, if any (the
    /// all-streams one first).
    pub fn blocking(&self, stream: Stream) -> Option<&Suppression> {
        self.suppressions.iter().find(|s| s.scope.covers(stream))
    }

    /// The suppression of exactly `scope`, if active.
    pub fn scope(&self, scope: Scope) -> Option<&Suppression> {
        self.suppressions.iter().find(|s| s.scope == scope)
    }

    /// Decodes the item stored for `address`: `None` when no scope is active. Undecodable
    /// attributes fall back (module docs) because an active scope suppresses by itself.
    pub fn from_item(address: &str, item: &Item) -> Option<Self> {
        let address = get_s(item, ADDRESS).map_or_else(|| canonical(address), str::to_owned);
        let mut suppressions: Vec<Suppression> = Scope::EVERY
            .into_iter()
            .filter_map(|scope| {
                let a = scope.attrs();
                item.get(a.reason)?;
                Some(Suppression {
                    address: address.clone(),
                    scope,
                    reason: get_s(item, a.reason)
                        .and_then(Reason::parse)
                        .unwrap_or(Reason::Unknown),
                    source: get_s(item, a.source).unwrap_or_default().to_owned(),
                    at: get_n(item, a.at).unwrap_or(0),
                })
            })
            .collect();
        let removed = Scope::EVERY
            .into_iter()
            .any(|s| item.contains_key(s.attrs().removed_at));
        if suppressions.is_empty() && !removed {
            // An item that says nothing: whoever wrote it meant to block.
            suppressions.push(Suppression {
                address: address.clone(),
                scope: Scope::All,
                reason: Reason::Unknown,
                source: String::new(),
                at: 0,
            });
        }
        (!suppressions.is_empty()).then_some(Self {
            address,
            suppressions,
        })
    }
}

/// The item after adding `s` to `current`, or `None` when a removal covering its scope is not
/// older than it (module docs): the pure core of [`add`].
pub fn with_added(current: Option<&Item>, s: &Suppression) -> Option<Item> {
    let mut item = current.cloned().unwrap_or_default();
    for scope in s.scope.removals() {
        if let Some(removed) = item.get(scope.attrs().removed_at)
            && !matches!(removed, Value::N(r) if *r < s.at)
        {
            return None;
        }
    }
    // An item that suppresses every stream only by saying nothing keeps doing so with a
    // stream's attributes beside.
    let all_active = current
        .and_then(|i| Entry::from_item(&s.address, i))
        .is_some_and(|e| e.scope(Scope::All).is_some());
    let all = Scope::All.attrs();
    if all_active && !item.contains_key(all.reason) {
        item.insert(all.reason.to_owned(), Value::from(Reason::Unknown.as_str()));
    }
    let a = s.scope.attrs();
    item.insert(ADDRESS.to_owned(), Value::from(s.address.as_str()));
    item.insert(a.reason.to_owned(), Value::from(s.reason.as_str()));
    item.insert(a.source.to_owned(), Value::from(s.source.as_str()));
    item.insert(a.at.to_owned(), Value::N(s.at));
    item.remove(TTL_ATTRIBUTE);
    Some(item)
}

/// The item after an operator removes `address` from `scope` at `now` ([`Scope::All`]: from
/// every scope), or `None` when that scope was not active: the pure core of [`remove`].
/// `write_id` marks this removal (module docs of [`remove`]).
pub fn with_removed(
    current: Option<&Item>,
    address: &str,
    scope: Scope,
    now: EpochMillis,
    write_id: i64,
) -> Option<Item> {
    let entry = Entry::from_item(address, current?)?;
    let cleared: Vec<Scope> = match scope {
        Scope::All => Scope::EVERY.to_vec(),
        Scope::Stream(_) => vec![scope],
    };
    if !entry
        .suppressions
        .iter()
        .any(|s| cleared.contains(&s.scope))
    {
        return None;
    }
    let mut item = current?.clone();
    for c in &cleared {
        let a = c.attrs();
        for attr in [a.reason, a.source, a.at] {
            item.remove(attr);
        }
    }
    item.insert(ADDRESS.to_owned(), Value::from(entry.address.as_str()));
    item.insert(scope.attrs().removed_at.to_owned(), Value::N(now));
    item.insert(WRITE_ID.to_owned(), Value::N(write_id));
    if Entry::from_item(address, &item).is_none() {
        item.insert(
            TTL_ATTRIBUTE.to_owned(),
            Value::N((now + TOMBSTONE_TTL_MS) / 1000),
        );
    } else {
        item.remove(TTL_ATTRIBUTE);
    }
    Some(item)
}

/// The condition "the item is as `current` says": absent, or every attribute equal and none of
/// the layout's other attributes present.
fn unchanged(current: Option<&Item>) -> Condition {
    let Some(item) = current else {
        return Condition::ItemNotExists;
    };
    let mut all: Vec<Condition> = item
        .iter()
        .map(|(k, v)| Condition::cmp(k.clone(), CmpOp::Eq, v.clone()))
        .collect();
    all.extend(
        layout_attrs()
            .filter(|a| !item.contains_key(*a))
            .map(|a| Condition::AttrNotExists(a.into())),
    );
    all.push(Condition::ItemExists);
    Condition::all(all)
}

/// What a compare and put came to.
enum Put {
    /// The item is now what `next` made of it.
    Done,
    /// `next` declined; the item as it is.
    Declined(Option<Item>),
}

/// Writes `next(stored)` with a put conditional on the item being unchanged, starting from the
/// guess `current`, reading the stored item from each failed condition (module docs).
async fn compare_and_put<S: StateStore + ?Sized>(
    store: &S,
    key: Key,
    mut current: Option<Item>,
    next: impl Fn(Option<&Item>) -> Option<Item>,
) -> Result<Put, StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        let Some(item) = next(current.as_ref()) else {
            return Ok(Put::Declined(current));
        };
        if current.as_ref() == Some(&item) {
            return Ok(Put::Done);
        }
        let write = Write {
            key: key.clone(),
            condition: unchanged(current.as_ref()),
            op: WriteOp::Put(item),
        };
        match store.write(write).await? {
            WriteOutcome::Applied(_) => return Ok(Put::Done),
            WriteOutcome::ConditionFailed(now) => current = now,
        }
    }
    Err(StoreError::Throttled)
}

/// Adds (or replaces) a suppression for its scope, leaving the address's other scopes as they
/// are. `false` when an operator removed the address from that scope (or from every scope)
/// after `suppression.at`: that removal stands. One put when the address has no item yet, two
/// when it has.
pub async fn add<S: StateStore + ?Sized>(
    store: &S,
    suppression: &Suppression,
) -> Result<bool, StoreError> {
    let put = compare_and_put(store, key(&suppression.address), None, |current| {
        with_added(current, suppression)
    })
    .await?;
    Ok(matches!(put, Put::Done))
}

/// Adds several suppressions (the recorder's batches), each as in [`add`], all in flight
/// together. Returns how many were added; the others were removed by an operator after their
/// event.
pub async fn add_many<S: StateStore + ?Sized>(
    store: &S,
    suppressions: &[Suppression],
) -> Result<usize, StoreError> {
    let outcomes = futures::future::join_all(suppressions.iter().map(|s| add(store, s))).await;
    let mut added = 0;
    for outcome in outcomes {
        added += usize::from(outcome?);
    }
    Ok(added)
}

/// Removes `address` (any case) from `scope` at `now` ([`Scope::All`]: from every scope),
/// leaving a tombstone so that older events cannot add it again (module docs); `true` when it
/// was suppressed in that scope. Reads the item, then one put (more only if it raced).
pub async fn remove<S: StateStore + ?Sized>(
    store: &S,
    address: &str,
    scope: Scope,
    now: EpochMillis,
) -> Result<bool, StoreError> {
    // Tells this removal's tombstone from any other, for a retry whose first attempt was
    // applied but whose answer was lost.
    let write_id = i64::try_from(crate::retry::random_below(1 << 48)).unwrap_or_default();
    let key = key(address);
    let current = store.get(&key).await?;
    let put = compare_and_put(store, key, current, |current| {
        with_removed(current, address, scope, now, write_id)
    })
    .await?;
    Ok(match put {
        Put::Done => true,
        // A retry of this very removal, applied but whose answer was lost, meets its own
        // tombstone: it did remove the address.
        Put::Declined(current) => current
            .as_ref()
            .is_some_and(|i| get_n(i, WRITE_ID) == Some(write_id)),
    })
}

/// An operator's change to the list (`gateway suppression add|remove`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorChange {
    /// Suppress an address for a scope.
    Add(Suppression),
    /// Remove an address from a scope ([`Scope::All`]: from every scope) at `at`.
    Remove {
        /// The address (any case).
        address: String,
        /// The scope cleared.
        scope: Scope,
        /// When (epoch ms).
        at: EpochMillis,
    },
}

impl OperatorChange {
    fn address(&self) -> &str {
        match self {
            Self::Add(s) => &s.address,
            Self::Remove { address, .. } => address,
        }
    }

    fn describe(&self) -> (&'static str, String) {
        match self {
            Self::Add(s) => (
                "suppression_add",
                format!(
                    "{} {} for {}",
                    canonical(&s.address),
                    s.reason.as_str(),
                    s.scope.as_str()
                ),
            ),
            Self::Remove { address, scope, .. } => (
                "suppression_remove",
                format!("{} from {}", canonical(address), scope.as_str()),
            ),
        }
    }
}

/// Applies an operator's change with its audit entry in one transaction (the entry on
/// [`crate::levers::Target::Suppression`]: who, when, why, what; `gateway suppression history`):
/// the change is made and audited, or neither. `false` when it changes nothing (the address
/// was not suppressed in that scope; or an operator removed it from that scope after the
/// addition's time), and then nothing is audited either.
pub async fn operator_change<S: StateStore + ?Sized>(
    store: &S,
    change: &OperatorChange,
    by: &str,
    note: &str,
) -> Result<bool, StoreError> {
    use crate::levers::{self, Hold, Target};
    let write_id = i64::try_from(crate::retry::random_below(1 << 48)).unwrap_or_default();
    let keys = [key(change.address()), levers::key(&Target::Suppression)];
    for _ in 0..MAX_ATTEMPTS {
        let items = store.get_many(&keys).await?;
        let current = items.first().and_then(Option::as_ref);
        let next = match change {
            OperatorChange::Add(s) => with_added(current, s),
            OperatorChange::Remove { address, scope, at } => {
                with_removed(current, address, *scope, *at, write_id)
            }
        };
        let Some(next) = next else {
            return Ok(false);
        };
        let at = match change {
            OperatorChange::Add(s) => s.at,
            OperatorChange::Remove { at, .. } => *at,
        };
        let (action, what) = change.describe();
        let hold = Hold {
            by: by.to_owned(),
            at,
            reason: note.to_owned(),
            until: None,
        };
        let before = current.map_or_else(|| "{}".to_owned(), item_json);
        let (_, audit) = levers::audit_writes(
            &Target::Suppression,
            items.get(1).and_then(Option::as_ref),
            action,
            &hold,
            &before,
            &format!("{what}: {}", item_json(&next)),
        );
        let mut writes = vec![Write {
            key: keys[0].clone(),
            condition: unchanged(current),
            op: WriteOp::Put(next),
        }];
        writes.extend(audit);
        if matches!(
            store.transact(writes).await?,
            crate::state::TransactOutcome::Committed
        ) {
            return Ok(true);
        }
    }
    Err(StoreError::Throttled)
}

fn item_json(item: &Item) -> String {
    let map: serde_json::Map<String, serde_json::Value> = item
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::N(n) => serde_json::Value::from(*n),
                Value::S(s) => serde_json::Value::from(s.as_str()),
            };
            (k.clone(), v)
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// The entry of `address` (any case), if any scope is active.
pub async fn lookup<S: StateStore + ?Sized>(
    store: &S,
    address: &str,
) -> Result<Option<Entry>, StoreError> {
    let item = store.get(&key(address)).await?;
    Ok(item.and_then(|i| Entry::from_item(address, &i)))
}

/// The entry of each address (any case), in input order: one `get_many` per [`MAX_BATCH_GET`]
/// distinct addresses (duplicates, in any case, are read once).
pub async fn lookup_many<S: StateStore + ?Sized>(
    store: &S,
    addresses: &[&str],
) -> Result<Vec<Option<Entry>>, StoreError> {
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
                .filter_map(|(k, i)| i.map(|i| (k.clone(), i))),
        );
    }
    Ok(addresses
        .iter()
        .map(|a| found.get(&key(a)).and_then(|i| Entry::from_item(a, i)))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::state::memory::MemoryStore;

    const T0: EpochMillis = 1_795_000_000_000;
    const BULK: Scope = Scope::Stream(Stream::Bulk);
    const TRANSACTIONAL: Scope = Scope::Stream(Stream::Transactional);

    /// The scopes active for `address`.
    async fn scopes(store: &MemoryStore, address: &str) -> Vec<Scope> {
        lookup(store, address)
            .await
            .unwrap()
            .map(|e| e.suppressions.iter().map(|s| s.scope).collect())
            .unwrap_or_default()
    }

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
            found.map(|e| e.suppressions),
            Some(vec![Suppression {
                address: "john.doe@example.org".into(),
                scope: Scope::All,
                reason: Reason::HardBounce,
                source: "mg:ev1".into(),
                at: T0
            }])
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
        assert!(remove(&store, "A@X.org", Scope::All, T0 + 1).await.unwrap());
        assert!(!remove(&store, "a@x.org", Scope::All, T0 + 1).await.unwrap());
        assert_eq!(lookup(&store, "a@x.org").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_batch_of_recipients_is_one_read_in_input_order() {
        let store = MemoryStore::new();
        add_many(
            &store,
            &[
                Suppression::new("b@x.org", Reason::Complaint, "ev-b", T0),
                Suppression::new("d@x.org", Reason::Unsubscribe, "ev-d", T0).in_scope(BULK),
            ],
        )
        .await
        .unwrap();
        let reads_before = store.request_counts().reads;
        let addresses = ["a@x.org", "B@x.org", "c@x.org", "d@x.org", "b@X.ORG"];
        let found = lookup_many(&store, &addresses).await.unwrap();
        let blocking = |stream: Stream| -> Vec<Option<Reason>> {
            found
                .iter()
                .map(|e| {
                    e.as_ref()
                        .and_then(|e| e.blocking(stream))
                        .map(|s| s.reason)
                })
                .collect()
        };
        assert_eq!(
            blocking(Stream::Bulk),
            vec![
                None,
                Some(Reason::Complaint),
                None,
                Some(Reason::Unsubscribe),
                Some(Reason::Complaint)
            ]
        );
        assert_eq!(
            blocking(Stream::Transactional),
            vec![
                None,
                Some(Reason::Complaint),
                None,
                None,
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
    fn an_undecodable_item_still_suppresses_every_stream() {
        let item = Item::from([(Scope::All.attrs().reason.to_owned(), Value::N(3))]);
        let e = Entry::from_item("X@y.org", &item).unwrap();
        let s = e.blocking(Stream::Transactional).unwrap();
        assert_eq!(
            (s.address.as_str(), s.scope, s.reason),
            ("x@y.org", Scope::All, Reason::Unknown)
        );
        // An item saying nothing at all blocks too, and keeps doing so when a stream is added.
        let bare = Item::from([(ADDRESS.to_owned(), Value::from("x@y.org"))]);
        assert!(
            Entry::from_item("x@y.org", &bare)
                .unwrap()
                .blocking(Stream::Transactional)
                .is_some()
        );
        let unsub = Suppression::new("x@y.org", Reason::Unsubscribe, "ev", T0).in_scope(BULK);
        let after = with_added(Some(&bare), &unsub).unwrap();
        let e = Entry::from_item("x@y.org", &after).unwrap();
        assert_eq!(
            e.blocking(Stream::Transactional).map(|s| s.scope),
            Some(Scope::All)
        );
    }

    #[test]
    fn an_item_from_before_scopes_blocks_every_stream() {
        // The stored form of an entry written before scopes existed.
        let item = Item::from([
            (ADDRESS.to_owned(), Value::from("old@x.org")),
            ("reason".to_owned(), Value::from("unsubscribe")),
            ("source".to_owned(), Value::from("mg:ev0")),
            ("at".to_owned(), Value::N(T0)),
        ]);
        let e = Entry::from_item("old@x.org", &item).unwrap();
        for stream in Stream::ALL {
            let s = e.blocking(stream).unwrap();
            assert_eq!(
                (s.scope, s.reason),
                (Scope::All, Reason::Unsubscribe),
                "{stream}"
            );
        }
        // And a tombstone from then (no reason, removed_at) blocks nothing.
        let tombstone = Item::from([
            (ADDRESS.to_owned(), Value::from("old@x.org")),
            ("removed_at".to_owned(), Value::N(T0)),
        ]);
        assert_eq!(Entry::from_item("old@x.org", &tombstone), None);
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
        for s in Scope::EVERY {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn an_events_scope_follows_its_kind_its_stream_and_the_rule() {
        use DeliveryKind::{Complained, HardBounce, Unsubscribed};
        let bulk = Some(Stream::Bulk);
        let cases = [
            (HardBounce, bulk, EventScope::Stream, Scope::All),
            (Complained, bulk, EventScope::Stream, BULK),
            (Unsubscribed, bulk, EventScope::Stream, BULK),
            (
                Unsubscribed,
                Some(Stream::Transactional),
                EventScope::Stream,
                TRANSACTIONAL,
            ),
            (Complained, bulk, EventScope::All, Scope::All),
            (Unsubscribed, bulk, EventScope::All, Scope::All),
            // The stream unknown: every stream (the safe side for consent).
            (Complained, None, EventScope::Stream, Scope::All),
            (Unsubscribed, None, EventScope::Stream, Scope::All),
        ];
        for (kind, stream, rule, want) in cases {
            let s = Suppression::from_delivery(kind, stream, rule, "a@x.org", "ev", T0).unwrap();
            assert_eq!(s.scope, want, "{kind:?} {stream:?} {rule:?}");
        }
        assert_eq!(
            Suppression::from_delivery(
                DeliveryKind::Delivered,
                bulk,
                EventScope::All,
                "a@x.org",
                "ev",
                T0
            ),
            None
        );
    }

    #[tokio::test]
    async fn scopes_are_kept_side_by_side_in_one_item() {
        let store = MemoryStore::new();
        let unsub = Suppression::new("p@x.org", Reason::Unsubscribe, "mg:u", T0).in_scope(BULK);
        assert!(add(&store, &unsub).await.unwrap());
        assert_eq!(scopes(&store, "p@x.org").await, [BULK]);
        let complaint =
            Suppression::new("p@x.org", Reason::Complaint, "mg:c", T0 + 1).in_scope(TRANSACTIONAL);
        assert!(add(&store, &complaint).await.unwrap());
        let bounce = Suppression::new("P@x.org", Reason::HardBounce, "mg:b", T0 + 2);
        assert!(add(&store, &bounce).await.unwrap());
        assert_eq!(
            scopes(&store, "p@x.org").await,
            [Scope::All, TRANSACTIONAL, BULK]
        );
        assert_eq!(store.snapshot().len(), 1, "one item per address");
        // Removing one stream leaves the others.
        assert!(remove(&store, "p@x.org", BULK, T0 + 3).await.unwrap());
        assert!(
            !remove(&store, "p@x.org", BULK, T0 + 4).await.unwrap(),
            "no longer listed"
        );
        assert_eq!(scopes(&store, "p@x.org").await, [Scope::All, TRANSACTIONAL]);
        let item = store.get(&key("p@x.org")).await.unwrap().unwrap();
        assert!(
            !item.contains_key(TTL_ATTRIBUTE),
            "still suppressed: no expiry"
        );
        // Removing every stream clears them all and lets the item expire.
        assert!(remove(&store, "p@x.org", Scope::All, T0 + 5).await.unwrap());
        assert_eq!(scopes(&store, "p@x.org").await, []);
        let item = store.get(&key("p@x.org")).await.unwrap().unwrap();
        assert_eq!(
            get_n(&item, TTL_ATTRIBUTE),
            Some((T0 + 5 + TOMBSTONE_TTL_MS) / 1000)
        );
    }

    #[tokio::test]
    async fn removing_a_stream_does_not_remove_an_all_streams_entry() {
        let store = MemoryStore::new();
        add(
            &store,
            &Suppression::new("q@x.org", Reason::HardBounce, "mg:b", T0),
        )
        .await
        .unwrap();
        assert!(!remove(&store, "q@x.org", BULK, T0 + 1).await.unwrap());
        assert_eq!(scopes(&store, "q@x.org").await, [Scope::All]);
    }

    #[tokio::test]
    async fn a_racing_writer_is_merged_not_overwritten() {
        let store = MemoryStore::new();
        let bulk = Suppression::new("r@x.org", Reason::Unsubscribe, "ev1", T0).in_scope(BULK);
        add(&store, &bulk).await.unwrap();
        // A put computed from "no item" (the recorder's first guess) fails its condition and
        // is redone from the stored item.
        let bounce = Suppression::new("r@x.org", Reason::HardBounce, "ev2", T0 + 1);
        let writes_before = store.request_counts().writes;
        assert!(add(&store, &bounce).await.unwrap());
        assert_eq!(store.request_counts().writes - writes_before, 2);
        assert_eq!(scopes(&store, "r@x.org").await, [Scope::All, BULK]);
    }

    #[tokio::test]
    async fn a_removal_whose_answer_was_lost_still_reports_the_address_removed() {
        let store = crate::state::memory::LostAnswers(MemoryStore::new());
        let bounce = Suppression::new("p@example.org", Reason::HardBounce, "mg:ev1", T0);
        assert!(add(&store.0, &bounce).await.unwrap());
        assert!(
            remove(&store, "p@example.org", Scope::All, T0 + 10)
                .await
                .unwrap()
        );
        assert_eq!(lookup(&store, "p@example.org").await.unwrap(), None);
        // A removal of an address not on the list still says so.
        assert!(
            !remove(&store, "q@example.org", Scope::All, T0 + 20)
                .await
                .unwrap()
        );
        assert!(
            !remove(&store, "p@example.org", Scope::All, T0 + 30)
                .await
                .unwrap()
        );
        // An add whose answer was lost reports it added.
        let again =
            Suppression::new("p@example.org", Reason::Complaint, "mg:ev2", T0 + 40).in_scope(BULK);
        assert!(add(&store, &again).await.unwrap());
    }

    #[tokio::test]
    async fn an_operators_removal_wins_over_older_events_and_not_newer_ones() {
        let store = MemoryStore::new();
        let bounce = Suppression::new("P@example.org", Reason::HardBounce, "mg:ev1", T0);
        assert!(add(&store, &bounce).await.unwrap());
        assert!(
            remove(&store, "p@EXAMPLE.org", Scope::All, T0 + 10)
                .await
                .unwrap()
        );
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
        // Removing every stream also refuses an older event of one stream.
        let old_unsub =
            Suppression::new("p@example.org", Reason::Unsubscribe, "mg:ev0", T0 + 5).in_scope(BULK);
        assert!(!add(&store, &old_unsub).await.unwrap());
        assert!(
            !remove(&store, "p@example.org", Scope::All, T0 + 11)
                .await
                .unwrap(),
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
        assert_eq!(
            lookup(&store, "p@example.org")
                .await
                .unwrap()
                .map(|e| e.suppressions),
            Some(vec![again])
        );
        // Removing an address that was never on the list leaves nothing behind.
        assert!(
            !remove(&store, "never@example.org", Scope::All, T0)
                .await
                .unwrap()
        );
        assert!(store.snapshot().keys().all(|k| !k.contains("never")));
    }

    #[tokio::test]
    async fn a_streams_removal_wins_over_its_older_events_only() {
        let store = MemoryStore::new();
        let unsub = Suppression::new("s@x.org", Reason::Unsubscribe, "ev1", T0).in_scope(BULK);
        add(&store, &unsub).await.unwrap();
        assert!(remove(&store, "s@x.org", BULK, T0 + 10).await.unwrap());
        // The replayed bulk unsubscribe stays removed ...
        assert!(!add(&store, &unsub).await.unwrap());
        // ... an older event of another scope is not this removal's business ...
        let complaint =
            Suppression::new("s@x.org", Reason::Complaint, "ev0", T0 + 5).in_scope(TRANSACTIONAL);
        assert!(add(&store, &complaint).await.unwrap());
        // ... and a newer bulk unsubscribe suppresses again.
        let newer = Suppression::new("s@x.org", Reason::Unsubscribe, "ev2", T0 + 20).in_scope(BULK);
        assert!(add(&store, &newer).await.unwrap());
        assert_eq!(scopes(&store, "s@x.org").await, [TRANSACTIONAL, BULK]);
    }

    #[tokio::test]
    async fn an_operators_change_is_made_with_its_audit_entry_or_not_at_all() {
        use crate::levers::{Target, history};
        let store = MemoryStore::new();
        let add = OperatorChange::Add(
            Suppression::new("Pat@Example.org", Reason::Manual, "oncall", T0).in_scope(BULK),
        );
        assert!(
            operator_change(&store, &add, "arn:aws:iam::1:user/jo", "ticket 12")
                .await
                .unwrap()
        );
        assert_eq!(scopes(&store, "pat@example.org").await, [BULK]);
        // Removing it from a scope it is not in changes nothing and audits nothing.
        let from_transactional = OperatorChange::Remove {
            address: "pat@example.org".into(),
            scope: TRANSACTIONAL,
            at: T0 + 1,
        };
        assert!(
            !operator_change(&store, &from_transactional, "jo", "x")
                .await
                .unwrap()
        );
        let remove = OperatorChange::Remove {
            address: "pat@example.org".into(),
            scope: Scope::All,
            at: T0 + 2,
        };
        assert!(
            operator_change(&store, &remove, "jo", "patient asked")
                .await
                .unwrap()
        );
        assert!(lookup(&store, "pat@example.org").await.unwrap().is_none());
        let entries = history(&store, &Target::Suppression, 10).await.unwrap();
        let seen: Vec<(&str, &str, &str)> = entries
            .iter()
            .map(|e| (e.action.as_str(), e.by.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("suppression_remove", "jo", "patient asked"),
                ("suppression_add", "arn:aws:iam::1:user/jo", "ticket 12"),
            ]
        );
        assert!(
            entries[1]
                .after
                .starts_with("pat@example.org manual for bulk"),
            "{}",
            entries[1].after
        );
    }
}
