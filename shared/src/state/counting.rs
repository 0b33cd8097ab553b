//! [`CountingStore`]: a measuring wrapper around any [`StateStore`] that counts the DynamoDB
//! requests, write capacity units and sequential round trips the calls through it would cost.
//!
//! Emulators do not report capacity faithfully (moto says 0.5 WCU for a small update), so the
//! units are computed here with DynamoDB's published rules:
//! - item size = `pk` (2 bytes) + key length + for every attribute its name length (UTF-8
//!   bytes) + its value size: a string's UTF-8 length; a number's `ceil(significant digits /
//!   2) + 1` bytes (+1 for a negative sign) — see [`number_size`];
//! - a single write (`PutItem`, `UpdateItem`, `DeleteItem`) and each put of a
//!   `BatchWriteItem` costs 1 WCU per started KB (1024 bytes) of the **larger** of the item
//!   before and after the write, at least 1 — a failed conditional write included;
//! - each item of a `TransactWriteItems` costs twice that, and a cancelled transaction is
//!   counted as if it had been applied (DynamoDB charges for the attempt);
//! - each key of a `BatchGetItem` (strongly consistent, as the DynamoDB adapter reads) costs
//!   1 RCU per started 4 KB of the item, at least 1 — a key with no item included.
//!
//! To know the item before each write the wrapper reads it from the inner store first. That
//! read is not counted, and it makes the wrapper a measuring tool only: it doubles the traffic
//! and its "before" can be stale under concurrent writers. Use it for benchmarks and cost
//! tests, never in production.
//!
//! # Sequential round trips
//! Each request gets a depth: one more than the deepest request that had **completed** before
//! it started. A request started while others are still in flight therefore shares their
//! depth; one started after they answered (because it needed their answer, or merely later)
//! goes one deeper. The maximum depth is an upper bound on the round trips a batch waits for
//! in sequence: it never undercounts a dependency, and only overcounts requests that could
//! have been issued earlier. A `put_many` of more than 25 items counts one request per chunk
//! and one level for all of them, because the adapters send the chunks together.

use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    Item, Key, MAX_BATCH_GET, MAX_BATCH_WRITE, StateStore, StoreError, TransactOutcome, Value,
    Write, WriteOp, WriteOutcome, apply_op,
};

/// Bytes per write capacity unit.
pub const WCU_BYTES: u64 = 1024;
/// Bytes per read capacity unit (one strongly consistent read).
pub const RCU_BYTES: u64 = 4096;
/// Length of the key attribute's name (`pk`), part of every item's size.
const KEY_NAME_BYTES: u64 = 2;

/// Size in bytes DynamoDB bills for a number value: 1 byte per 2 significant digits (leading
/// and trailing zeros trimmed, at least one digit) plus 1, plus 1 for a negative sign.
pub fn number_size(n: i64) -> u64 {
    let digits = n.unsigned_abs().to_string();
    let significant = digits
        .trim_start_matches('0')
        .trim_end_matches('0')
        .len()
        .max(1) as u64;
    significant.div_ceil(2) + 1 + u64::from(n < 0)
}

/// Size in bytes of one value.
pub fn value_size(v: &Value) -> u64 {
    match v {
        Value::N(n) => number_size(*n),
        Value::S(s) => s.len() as u64,
    }
}

/// Size in bytes of the stored item under `key` (key attribute included).
pub fn item_size(key: &str, item: &Item) -> u64 {
    KEY_NAME_BYTES
        + key.len() as u64
        + item
            .iter()
            .map(|(name, v)| name.len() as u64 + value_size(v))
            .sum::<u64>()
}

/// Write capacity units of one non-transactional write of an item of `bytes`: 1 per started
/// KB, at least 1.
pub fn write_units(bytes: u64) -> u64 {
    bytes.div_ceil(WCU_BYTES).max(1)
}

fn units(key: &str, before: Option<&Item>, after: Option<&Item>) -> u64 {
    let size = |i: Option<&Item>| i.map_or(0, |i| item_size(key, i));
    write_units(size(before).max(size(after)))
}

/// What the calls through a [`CountingStore`] cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// `BatchGetItem` requests (one per `get_many` call of 1..=100 keys).
    pub batch_gets: u64,
    /// Single conditional writes (`PutItem` / `UpdateItem` / `DeleteItem`).
    pub writes: u64,
    /// Of those, writes whose condition failed.
    pub failed_conditions: u64,
    /// `TransactWriteItems` requests.
    pub transactions: u64,
    /// Of those, cancelled transactions.
    pub cancelled_transactions: u64,
    /// `BatchWriteItem` requests (one per chunk of 25).
    pub batch_writes: u64,
    /// Write capacity units consumed.
    pub wcu: u64,
    /// Read capacity units consumed (strongly consistent reads).
    pub rcu: u64,
    /// Sequential round trips (see the module docs).
    pub round_trips: u64,
}

impl Usage {
    /// All requests.
    pub fn requests(&self) -> u64 {
        self.batch_gets + self.writes + self.transactions + self.batch_writes
    }
}

#[derive(Debug, Default)]
struct Tracker {
    usage: Usage,
    /// Deepest request that has answered.
    completed_depth: u64,
}

/// Counts requests, WCU and round trips of every call to the wrapped store. See the module
/// docs for the rules and the caveats (not for production use).
#[derive(Debug, Default)]
pub struct CountingStore<S> {
    inner: S,
    tracker: Mutex<Tracker>,
}

impl<S: StateStore> CountingStore<S> {
    /// Wraps `inner` with all counts at zero.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            tracker: Mutex::new(Tracker::default()),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// What the calls so far cost.
    pub fn usage(&self) -> Usage {
        self.lock().usage
    }

    /// Sets every count to zero (round trips start afresh).
    pub fn reset(&self) {
        *self.lock() = Tracker::default();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        // Counts are plain numbers updated in one step; a poisoned lock still holds whole ones.
        self.tracker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a request; returns its depth (one below the deepest completed one).
    fn start(&self) -> u64 {
        self.lock().completed_depth + 1
    }

    fn finish(&self, depth: u64, count: impl FnOnce(&mut Usage)) {
        let mut t = self.lock();
        t.completed_depth = t.completed_depth.max(depth);
        t.usage.round_trips = t.usage.round_trips.max(depth);
        count(&mut t.usage);
    }

    /// The items under `keys` before a write, read without counting.
    async fn before(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        let mut items = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_BATCH_GET) {
            items.extend(self.inner.get_many(chunk).await?);
        }
        Ok(items)
    }
}

#[async_trait]
impl<S: StateStore> StateStore for CountingStore<S> {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        if keys.is_empty() {
            return self.inner.get_many(keys).await;
        }
        let depth = self.start();
        let result = self.inner.get_many(keys).await;
        let rcu: u64 = match &result {
            Ok(items) => keys
                .iter()
                .zip(items)
                .map(|(k, i)| {
                    i.as_ref()
                        .map_or(0, |i| item_size(k, i))
                        .div_ceil(RCU_BYTES)
                        .max(1)
                })
                .sum(),
            Err(_) => 0,
        };
        self.finish(depth, |u| {
            u.batch_gets += 1;
            u.rcu += rcu;
        });
        result
    }

    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        let depth = self.start();
        let before = self.before(std::slice::from_ref(&write.key)).await?;
        let before = before.into_iter().next().flatten();
        let key = write.key.clone();
        let result = self.inner.write(write).await;
        let (wcu, failed) = match &result {
            Ok(WriteOutcome::Applied(after)) => (units(&key, before.as_ref(), after.as_ref()), 0),
            Ok(WriteOutcome::ConditionFailed(_)) => (units(&key, before.as_ref(), None), 1),
            // A rejected request (invalid, throttled) consumes nothing.
            Err(_) => (0, 0),
        };
        self.finish(depth, |u| {
            u.writes += 1;
            u.failed_conditions += failed;
            u.wcu += wcu;
        });
        result
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<TransactOutcome, StoreError> {
        let depth = self.start();
        let keys: Vec<Key> = writes.iter().map(|w| w.key.clone()).collect();
        let before = self.before(&keys).await?;
        let mut wcu = 0;
        for (w, old) in writes.iter().zip(&before) {
            let new = match &w.op {
                WriteOp::ConditionCheck => old.clone(),
                op => apply_op(old.as_ref(), op).unwrap_or_else(|_| old.clone()),
            };
            wcu += 2 * units(&w.key, old.as_ref(), new.as_ref());
        }
        let result = self.inner.transact(writes).await;
        let (wcu, cancelled) = match &result {
            Ok(TransactOutcome::Committed) => (wcu, 0),
            Ok(TransactOutcome::Cancelled(_)) => (wcu, 1),
            Err(_) => (0, 0),
        };
        self.finish(depth, |u| {
            u.transactions += 1;
            u.cancelled_transactions += cancelled;
            u.wcu += wcu;
        });
        result
    }

    async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
        if items.is_empty() {
            return self.inner.put_many(items).await;
        }
        let chunks = items.len().div_ceil(MAX_BATCH_WRITE) as u64;
        let depth = self.start();
        let keys: Vec<Key> = items.iter().map(|(k, _)| k.clone()).collect();
        let before = self.before(&keys).await?;
        let wcu: u64 = items
            .iter()
            .zip(&before)
            .map(|((k, new), old)| units(k, old.as_ref(), Some(new)))
            .sum();
        let result = self.inner.put_many(items).await;
        let wcu = if result.is_ok() { wcu } else { 0 };
        self.finish(depth, |u| {
            u.batch_writes += chunks;
            u.wcu += wcu;
        });
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::state::memory::MemoryStore;
    use crate::state::{CmpOp, Condition, UpdateAction};

    fn item(attrs: &[(&str, Value)]) -> Item {
        attrs
            .iter()
            .map(|(a, v)| ((*a).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn number_sizes_count_significant_digit_pairs() {
        let cases = [
            (0, 2),
            (7, 2),
            (12, 2),
            (123, 3),
            (1_000, 2),
            (1_200_000, 2),
            (123_456, 4),
            (-5, 3),
            (1_795_910_400_000, 5),
            (i64::MAX, 11),
        ];
        for (n, size) in cases {
            assert_eq!(number_size(n), size, "{n}");
        }
    }

    #[test]
    fn item_size_adds_key_names_and_values() {
        // pk (2) + "k#1" (3) + "n" (1) + 2 + "name" (4) + "héllo" (6 UTF-8 bytes).
        let i = item(&[("n", Value::N(42)), ("name", "héllo".into())]);
        assert_eq!(item_size("k#1", &i), 2 + 3 + 1 + 2 + 4 + 6);
    }

    #[test]
    fn write_units_are_per_started_kilobyte_at_least_one() {
        let cases = [(0, 1), (1, 1), (1024, 1), (1025, 2), (2048, 2), (4097, 5)];
        for (bytes, units) in cases {
            assert_eq!(write_units(bytes), units, "{bytes}");
        }
    }

    fn big(bytes: usize) -> Item {
        item(&[("blob", Value::S("x".repeat(bytes)))])
    }

    #[tokio::test]
    async fn updates_bill_the_larger_of_before_and_after() {
        let store = CountingStore::new(MemoryStore::new());
        store
            .inner()
            .put_many(vec![("k".into(), big(1500))])
            .await
            .unwrap();
        // Shrinking a 2 KB item to a few bytes still bills 2 WCU.
        store
            .write(Write {
                key: "k".into(),
                op: WriteOp::Update(vec![UpdateAction::Remove("blob".into())]),
                condition: Condition::Always,
            })
            .await
            .unwrap();
        assert_eq!(store.usage().wcu, 2);
        // Growing a missing item to 3 KB bills 3.
        store
            .write(Write {
                key: "new".into(),
                op: WriteOp::Put(big(2500)),
                condition: Condition::ItemNotExists,
            })
            .await
            .unwrap();
        assert_eq!(store.usage().wcu, 5);
        assert_eq!(store.usage().writes, 2);
    }

    #[tokio::test]
    async fn reads_bill_every_key_per_started_4_kb() {
        let store = CountingStore::new(MemoryStore::new());
        store
            .inner()
            .put_many(vec![("small".into(), big(10)), ("large".into(), big(9000))])
            .await
            .unwrap();
        let keys: Vec<Key> = vec!["small".into(), "large".into(), "missing".into()];
        store.get_many(&keys).await.unwrap();
        // 1 for the small item, 3 for the 9 KB one, 1 for the key with no item.
        assert_eq!(store.usage().rcu, 1 + 3 + 1);
        assert_eq!(store.usage().batch_gets, 1);
        assert_eq!(store.usage().wcu, 0);
    }

    #[tokio::test]
    async fn failed_conditions_and_cancelled_transactions_still_consume() {
        let store = CountingStore::new(MemoryStore::new());
        let refused = Write {
            key: "k".into(),
            op: WriteOp::Update(vec![UpdateAction::Add("n".into(), 1)]),
            condition: Condition::cmp("n", CmpOp::Gt, 5),
        };
        let outcome = store.write(refused.clone()).await.unwrap();
        assert!(matches!(outcome, WriteOutcome::ConditionFailed(None)));
        let other = Write {
            key: "j".into(),
            ..refused.clone()
        };
        let outcome = store.transact(vec![refused, other]).await.unwrap();
        assert!(matches!(outcome, TransactOutcome::Cancelled(_)));
        let usage = store.usage();
        assert_eq!(usage.failed_conditions, 1);
        assert_eq!(usage.cancelled_transactions, 1);
        // 1 for the write, 2 × 1 for each of the two transaction items.
        assert_eq!(usage.wcu, 1 + 4);
        assert_eq!(usage.requests(), 2);
    }

    #[tokio::test]
    async fn batch_puts_bill_each_item_and_count_chunks_as_one_round_trip() {
        let store = CountingStore::new(MemoryStore::new());
        let items: Vec<(Key, Item)> = (0..30)
            .map(|i| (format!("k{i}"), item(&[("i", Value::N(i))])))
            .collect();
        store.put_many(items).await.unwrap();
        let usage = store.usage();
        assert_eq!(usage.batch_writes, 2);
        assert_eq!(usage.wcu, 30);
        // The chunks go out together.
        assert_eq!(usage.round_trips, 1);
    }

    /// Answers only after yielding once, so joined calls are in flight together.
    #[derive(Debug, Default)]
    struct Yielding(MemoryStore);

    #[async_trait]
    impl StateStore for Yielding {
        async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
            tokio::task::yield_now().await;
            self.0.get_many(keys).await
        }
        async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
            self.0.write(write).await
        }
        async fn transact(&self, writes: Vec<Write>) -> Result<TransactOutcome, StoreError> {
            self.0.transact(writes).await
        }
        async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
            self.0.put_many(items).await
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_a_round_trip_and_later_ones_go_deeper() {
        let store = CountingStore::new(Yielding::default());
        let read = |k: &'static str| {
            let store = &store;
            async move { store.get(&k.to_owned()).await.unwrap() }
        };
        // Both start before either completes: one level.
        let (a, b) = tokio::join!(read("a"), read("b"));
        assert_eq!((a, b), (None, None));
        assert_eq!(store.usage().round_trips, 1);
        // Started after those answered: a second level.
        read("c").await;
        assert_eq!(store.usage().round_trips, 2);
        assert_eq!(store.usage().batch_gets, 3);
        store.reset();
        assert_eq!(store.usage(), Usage::default());
    }
}
