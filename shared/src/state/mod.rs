//! The shared-state port: a key → item store with conditional writes, shaped exactly like the
//! subset of DynamoDB the gateway uses.
//!
//! Limiter counters, breaker state, the idempotency ledger and the suppression list are all
//! built on this one port (see [`crate::limiter`], [`crate::breaker`]). Their decisions are pure
//! functions of (stored item, now, settings); the store only offers "write this if that still
//! holds", which is what a DynamoDB conditional `PutItem` / `UpdateItem` /
//! `TransactWriteItems` offers. That keeps the DynamoDB adapter a translation, and lets the
//! in-memory adapter ([`memory::MemoryStore`]) be used by tests and the local run with the same
//! guarantees.
//!
//! # Semantics every implementation must honour (DynamoDB's)
//! - A write whose condition does not hold changes nothing and is a **value**
//!   ([`WriteOutcome::ConditionFailed`]) carrying the item as it is now (DynamoDB's
//!   `ReturnValuesOnConditionCheckFailure = ALL_OLD`), never an error.
//! - Conditions are evaluated against the item as stored, before the write. A comparison that
//!   names a missing attribute, or compares a number with a string, is false; `Not` of it is
//!   true.
//! - `Add` on a missing attribute starts from 0. `Add` on a string attribute is
//!   [`StoreError::Invalid`].
//! - `Update` on a missing item creates it (when the condition allows).
//! - A transaction applies all its writes or none; when any condition fails, the outcome lists
//!   every write whose condition failed with its current item, and nothing is applied. Keys in
//!   one transaction must be distinct.
//! - A transaction cancelled only because another transaction was touching the same items at
//!   the same moment (DynamoDB's `TransactionConflict`, which no condition caused) is not a
//!   value: nothing was decided. Adapters retry it with backoff and, when it persists, report
//!   [`StoreError::Throttled`] (retryable), like throttling. The in-memory store serialises
//!   everything and never produces it.
//! - `And([])` holds and `Or([])` does not ([`Condition::all`] builds conditions without
//!   producing either).
//! - Two actions of one update on the same attribute are [`StoreError::Invalid`] (DynamoDB
//!   rejects overlapping document paths).
//! - `put_many` is unconditional (DynamoDB `BatchWriteItem`). Adapters send its chunks of
//!   [`MAX_BATCH_WRITE`] together, in no order (one round trip whatever the number of items);
//!   when it fails, some chunks may have been written: a retry of the same call converges.
//! - Reads are strongly consistent.
//! - The attribute [`TTL_ATTRIBUTE`] (epoch seconds) only marks an item for cleanup; no logic may
//!   depend on an item having been deleted by it.

#[cfg(any(test, feature = "testing"))]
pub mod contract;
pub mod counting;
pub mod dynamodb;
pub mod memory;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;

/// Most keys in one [`StateStore::get_many`] (DynamoDB `BatchGetItem`).
pub const MAX_BATCH_GET: usize = 100;
/// Most writes in one [`StateStore::transact`] (DynamoDB `TransactWriteItems`).
pub const MAX_TRANSACTION: usize = 100;
/// Most items in one [`StateStore::put_many`] call chunk (DynamoDB `BatchWriteItem`); adapters
/// split larger inputs.
pub const MAX_BATCH_WRITE: usize = 25;
/// Attribute holding an item's expiry in epoch **seconds** (cleanup only).
pub const TTL_ATTRIBUTE: &str = "ttl";

/// The primary key of an item: one string with a typed prefix (`lim#…`, `brk#…`, `msg#…`).
pub type Key = String;

/// An attribute value. Numbers are integers: every quantity the gateway stores is a count or
/// epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// A number (DynamoDB `N`).
    N(i64),
    /// A string (DynamoDB `S`).
    S(String),
}

impl Value {
    /// The number, if this is one.
    pub fn as_n(&self) -> Option<i64> {
        match self {
            Self::N(n) => Some(*n),
            Self::S(_) => None,
        }
    }

    /// The string, if this is one.
    pub fn as_s(&self) -> Option<&str> {
        match self {
            Self::S(s) => Some(s),
            Self::N(_) => None,
        }
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Self::N(n)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::S(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::S(s)
    }
}

/// An item's attributes (the key is not repeated inside).
pub type Item = BTreeMap<String, Value>;

/// An attribute name in a write or condition: borrowed for the fixed names (`n`, `ttl`,
/// `tat_us`, …), so building the writes of a decision allocates only for the names made at
/// run time.
pub type Attr = Cow<'static, str>;

/// Reads a number attribute, `None` when missing or not a number.
pub fn get_n(item: &Item, attr: &str) -> Option<i64> {
    item.get(attr).and_then(Value::as_n)
}

/// Reads a string attribute, `None` when missing or not a string.
pub fn get_s<'a>(item: &'a Item, attr: &str) -> Option<&'a str> {
    item.get(attr).and_then(Value::as_s)
}

/// Comparison operators of condition expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A condition on the stored item, evaluated before the write (DynamoDB
/// `ConditionExpression`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// No condition.
    Always,
    /// The item exists (`attribute_exists(pk)`).
    ItemExists,
    /// The item does not exist (`attribute_not_exists(pk)`).
    ItemNotExists,
    /// The attribute exists.
    AttrExists(Attr),
    /// The attribute does not exist.
    AttrNotExists(Attr),
    /// `attr <op> value`; false when the attribute is missing or of another type.
    Cmp(Attr, CmpOp, Value),
    /// All hold (empty: true).
    And(Vec<Condition>),
    /// Any holds (empty: false).
    Or(Vec<Condition>),
    /// Negation.
    Not(Box<Condition>),
}

impl Condition {
    /// `attr <op> value`.
    pub fn cmp(attr: impl Into<Attr>, op: CmpOp, value: impl Into<Value>) -> Self {
        Self::Cmp(attr.into(), op, value.into())
    }

    /// All of `conditions`: `Always` when empty, the condition itself when alone, `And`
    /// otherwise. Use it instead of building `And` from a vector that may be empty.
    pub fn all(mut conditions: Vec<Condition>) -> Self {
        conditions.retain(|c| *c != Self::Always);
        match conditions.len() {
            0 => Self::Always,
            1 => conditions.pop().unwrap_or(Self::Always),
            _ => Self::And(conditions),
        }
    }

    /// Evaluates the condition against the stored item (`None`: no item). This is the reference
    /// semantics; the DynamoDB adapter translates instead of evaluating.
    pub fn holds(&self, item: Option<&Item>) -> bool {
        match self {
            Self::Always => true,
            Self::ItemExists => item.is_some(),
            Self::ItemNotExists => item.is_none(),
            Self::AttrExists(a) => item.is_some_and(|i| i.contains_key(a.as_ref())),
            Self::AttrNotExists(a) => !item.is_some_and(|i| i.contains_key(a.as_ref())),
            Self::Cmp(a, op, v) => {
                let Some(stored) = item.and_then(|i| i.get(a.as_ref())) else {
                    return false;
                };
                let ord = match (stored, v) {
                    (Value::N(x), Value::N(y)) => x.cmp(y),
                    (Value::S(x), Value::S(y)) => x.cmp(y),
                    _ => return false,
                };
                match op {
                    CmpOp::Eq => ord.is_eq(),
                    CmpOp::Ne => ord.is_ne(),
                    CmpOp::Lt => ord.is_lt(),
                    CmpOp::Le => ord.is_le(),
                    CmpOp::Gt => ord.is_gt(),
                    CmpOp::Ge => ord.is_ge(),
                }
            }
            Self::And(cs) => cs.iter().all(|c| c.holds(item)),
            Self::Or(cs) => cs.iter().any(|c| c.holds(item)),
            Self::Not(c) => !c.holds(item),
        }
    }
}

/// One action of an update (DynamoDB `UpdateExpression` clause).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateAction {
    /// `SET attr = value`.
    Set(Attr, Value),
    /// `SET attr = if_not_exists(attr, value)`.
    SetIfNotExists(Attr, Value),
    /// `ADD attr delta` (missing attribute counts as 0).
    Add(Attr, i64),
    /// `REMOVE attr`.
    Remove(Attr),
}

/// What a write does to its item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Replace the whole item.
    Put(Item),
    /// Apply actions in order, creating the item if missing.
    Update(Vec<UpdateAction>),
    /// Delete the item (no error when missing).
    Delete,
    /// Only check the condition (inside a transaction).
    ConditionCheck,
}

/// A conditional write of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The item's key.
    pub key: Key,
    /// What to do.
    pub op: WriteOp,
    /// What must hold first.
    pub condition: Condition,
}

/// The result of a single conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The write happened; the item as it is now (`None` after a delete).
    Applied(Option<Item>),
    /// The condition did not hold; nothing changed. The item as it is now.
    ConditionFailed(Option<Item>),
}

/// The result of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactOutcome {
    /// Every write was applied.
    Committed,
    /// Nothing was applied. Each entry is the index of a write whose condition failed and that
    /// item as it is now.
    Cancelled(Vec<(usize, Option<Item>)>),
}

/// A store failure (not a failed condition: that is a value).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store throttled us after the adapter's own retries; try again later.
    #[error("state store throttled the request")]
    Throttled,
    /// The store could not be reached or failed transiently.
    #[error("state store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store is not set up as the gateway expects (missing table, no permission).
    #[error("state store misconfigured: {0}")]
    Misconfigured(String),
    /// The request itself was invalid (a bug: wrong attribute type, duplicate key in a
    /// transaction, too many items).
    #[error("invalid state store request: {0}")]
    Invalid(String),
}

impl StoreError {
    /// True when retrying later may succeed (the message should be deferred, not failed).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Throttled | Self::Unavailable(_))
    }
}

/// The shared-state port. See the module docs for the semantics every implementation honours.
#[async_trait]
pub trait StateStore: Send + Sync + fmt::Debug {
    /// Reads items by key, strongly consistent; the result has one entry per key, in order.
    /// At most [`MAX_BATCH_GET`] keys.
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError>;

    /// One conditional write.
    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError>;

    /// All-or-nothing conditional writes on distinct keys, at most [`MAX_TRANSACTION`].
    async fn transact(&self, writes: Vec<Write>) -> Result<TransactOutcome, StoreError>;

    /// Unconditional puts (any number; adapters chunk by [`MAX_BATCH_WRITE`] and send the
    /// chunks together). A key named twice keeps its last item.
    async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError>;

    /// Reads one item.
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let mut items = self.get_many(std::slice::from_ref(key)).await?;
        Ok(items.pop().flatten())
    }
}

/// Reads any number of keys: [`StateStore::get_many`] in chunks of [`MAX_BATCH_GET`], sent
/// together (one request up to 100 keys, the single request the budget counts), answers in key
/// order. A config with many gateways must not turn into an invalid request. Keys should be
/// distinct.
pub async fn get_all(
    store: &dyn StateStore,
    keys: &[Key],
) -> Result<Vec<Option<Item>>, StoreError> {
    let reads = keys
        .chunks(MAX_BATCH_GET)
        .map(|chunk| store.get_many(chunk));
    let mut items = Vec::with_capacity(keys.len());
    for read in futures::future::join_all(reads).await {
        items.extend(read?);
    }
    Ok(items)
}

/// Applies `op` to `current` as DynamoDB would, returning the new item (`None` = deleted).
/// Shared by the in-memory adapter and tests; does not check the condition.
pub fn apply_op(current: Option<&Item>, op: &WriteOp) -> Result<Option<Item>, StoreError> {
    match op {
        WriteOp::Put(item) => Ok(Some(item.clone())),
        WriteOp::Delete => Ok(None),
        WriteOp::ConditionCheck => Ok(current.cloned()),
        WriteOp::Update(actions) => {
            let mut seen = std::collections::BTreeSet::new();
            for action in actions {
                let attr = match action {
                    UpdateAction::Set(a, _)
                    | UpdateAction::SetIfNotExists(a, _)
                    | UpdateAction::Add(a, _)
                    | UpdateAction::Remove(a) => a,
                };
                if !seen.insert(attr) {
                    return Err(StoreError::Invalid(format!(
                        "two actions on attribute {attr} in one update"
                    )));
                }
            }
            let mut item = current.cloned().unwrap_or_default();
            for action in actions {
                match action {
                    UpdateAction::Set(a, v) => {
                        item.insert(a.to_string(), v.clone());
                    }
                    UpdateAction::SetIfNotExists(a, v) => {
                        item.entry(a.to_string()).or_insert_with(|| v.clone());
                    }
                    UpdateAction::Add(a, delta) => {
                        let now = match item.get(a.as_ref()) {
                            None => 0,
                            Some(Value::N(n)) => *n,
                            Some(Value::S(_)) => {
                                return Err(StoreError::Invalid(format!(
                                    "ADD on string attribute {a}"
                                )));
                            }
                        };
                        let next = now.checked_add(*delta).ok_or_else(|| {
                            StoreError::Invalid(format!("ADD overflows attribute {a}"))
                        })?;
                        item.insert(a.to_string(), Value::N(next));
                    }
                    UpdateAction::Remove(a) => {
                        item.remove(a.as_ref());
                    }
                }
            }
            Ok(Some(item))
        }
    }
}
