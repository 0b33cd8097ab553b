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
//!
//! # Load per key and per second
//! DynamoDB throttles a partition past 1,000 WCU or 3,000 RCU in a second, and refuses items over
//! 400 KB, whatever the table's total. Totals per message cannot show a hot key, so a store made
//! with [`CountingStore::with_clock`] also meters every key: the WCU written to it and the RCU
//! read from it in each second of its clock (`now_ms / 1000`, read when the request answers), the
//! busiest second of each, and the largest item it held (the larger of before and after of each
//! write, the item of each read). [`CountingStore::hottest`] names the key with the highest peak
//! of each; [`CountingStore::loads_by`] sums them over classes of keys. The rules are the ones
//! above; reads are counted as strongly consistent (1 RCU per started 4 KB), as the DynamoDB
//! adapter reads. An eventually consistent read would cost half, but none is made.
//!
//! The meter keeps one small entry per key (the current second's counts and the peaks so far),
//! so it costs a map update per key touched. It assumes the clock does not go back: a request
//! in another second than the key's last one starts that key's count for the second afresh,
//! and only the peaks survive.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::clock::Clock;

use super::{
    Item, Key, MAX_BATCH_GET, MAX_BATCH_WRITE, StateStore, StoreError, TransactOutcome,
    UpdateAction, Value, Write, WriteOp, WriteOutcome,
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
    // Counted without formatting: the meter sizes every attribute of every item it sees.
    let mut m = n.unsigned_abs();
    while m != 0 && m.is_multiple_of(10) {
        m /= 10;
    }
    let significant = u64::from(m.checked_ilog10().map_or(1, |l| l + 1));
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

/// Read capacity units of one strongly consistent read of an item of `bytes` (0: no item): 1
/// per started 4 KB, at least 1.
pub fn read_units(bytes: u64) -> u64 {
    bytes.div_ceil(RCU_BYTES).max(1)
}

/// The size of the item under `key` after `op`, given the item before and its size (`None`:
/// no item after). Computed from the attributes `op` touches, without building the new item (a
/// large item would be copied for every write); equal to [`item_size`] of [`apply_op`](super::apply_op)'s
/// result whenever that succeeds. When it would fail (an invalid request, which changes
/// nothing), the size before.
fn size_after(key: &str, before: Option<&Item>, before_size: u64, op: &WriteOp) -> Option<u64> {
    let actions = match op {
        WriteOp::Put(item) => return Some(item_size(key, item)),
        WriteOp::Delete => return None,
        WriteOp::ConditionCheck => return before.map(|_| before_size),
        WriteOp::Update(actions) => actions,
    };
    let unchanged = before.map(|_| before_size);
    let attr = |name: &str| before.and_then(|i| i.get(name));
    let entry = |name: &str, v: &Value| name.len() as u64 + value_size(v);
    let mut size = match before {
        Some(_) => before_size,
        None => KEY_NAME_BYTES + key.len() as u64,
    };
    for action in actions {
        match action {
            UpdateAction::Set(name, v) => {
                if let Some(old) = attr(name) {
                    size -= entry(name, old);
                }
                size += entry(name, v);
            }
            UpdateAction::SetIfNotExists(name, v) => {
                if attr(name).is_none() {
                    size += entry(name, v);
                }
            }
            UpdateAction::Add(name, delta) => match attr(name) {
                None => size += entry(name, &Value::N(*delta)),
                Some(Value::N(n)) => match n.checked_add(*delta) {
                    Some(sum) => size = size - number_size(*n) + number_size(sum),
                    None => return unchanged,
                },
                Some(Value::S(_)) => return unchanged,
            },
            UpdateAction::Remove(name) => {
                if let Some(old) = attr(name) {
                    size -= entry(name, old);
                }
            }
        }
    }
    Some(size)
}

/// The larger size of the item under `key` before and after a write: the size a write bills.
fn write_size(key: &str, before: Option<&Item>, after: Option<&Item>) -> u64 {
    let size = |i: Option<&Item>| i.map_or(0, |i| item_size(key, i));
    size(before).max(size(after))
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

/// The load one key (or one class of keys, [`CountingStore::loads_by`]) took since the meter
/// started or was last reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLoad {
    /// Write capacity units written to it.
    pub wcu: u64,
    /// Read capacity units read from it.
    pub rcu: u64,
    /// The most WCU written to it within one second of the clock.
    pub peak_wcu_per_s: u64,
    /// The most RCU read from it within one second of the clock.
    pub peak_rcu_per_s: u64,
    /// The largest item it held, in bytes (key attribute included).
    pub largest_item: u64,
}

impl KeyLoad {
    fn merge(&mut self, other: &KeyLoad) {
        self.wcu += other.wcu;
        self.rcu += other.rcu;
        self.peak_wcu_per_s = self.peak_wcu_per_s.max(other.peak_wcu_per_s);
        self.peak_rcu_per_s = self.peak_rcu_per_s.max(other.peak_rcu_per_s);
        self.largest_item = self.largest_item.max(other.largest_item);
    }
}

/// One key's highest figure of a kind: [`KeyPeaks`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peak {
    /// The key (the smallest key among ties).
    pub key: Key,
    /// Its figure: units per second, or bytes for the largest item.
    pub amount: u64,
}

/// The hottest keys of a metered [`CountingStore`]; each `None` while no key was touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPeaks {
    /// The key written with the most WCU in one second, and that many WCU.
    pub wcu: Option<Peak>,
    /// The key read with the most RCU in one second, and that many RCU.
    pub rcu: Option<Peak>,
    /// The key that held the largest item, and its size in bytes.
    pub largest_item: Option<Peak>,
}

/// A key's meter: its counts in the second it was last touched, and its load so far.
#[derive(Debug, Default)]
struct KeyMeter {
    second: i64,
    wcu_in_second: u64,
    rcu_in_second: u64,
    load: KeyLoad,
}

impl KeyMeter {
    fn add(&mut self, second: i64, wcu: u64, rcu: u64, size: u64) {
        if second != self.second {
            self.second = second;
            self.wcu_in_second = 0;
            self.rcu_in_second = 0;
        }
        self.wcu_in_second += wcu;
        self.rcu_in_second += rcu;
        let load = &mut self.load;
        load.wcu += wcu;
        load.rcu += rcu;
        load.peak_wcu_per_s = load.peak_wcu_per_s.max(self.wcu_in_second);
        load.peak_rcu_per_s = load.peak_rcu_per_s.max(self.rcu_in_second);
        load.largest_item = load.largest_item.max(size);
    }
}

/// What one request did to one key: units and the item size it saw.
#[derive(Debug)]
struct KeyCharge {
    key: Key,
    wcu: u64,
    rcu: u64,
    size: u64,
}

#[derive(Debug, Default)]
struct Tracker {
    usage: Usage,
    /// Deepest request that has answered.
    completed_depth: u64,
    /// Per key, when metered ([`CountingStore::with_clock`]).
    keys: HashMap<Key, KeyMeter>,
}

/// Counts requests, WCU and round trips of every call to the wrapped store, and with a clock
/// the load of every key per second. See the module docs for the rules and the caveats (not
/// for production use).
#[derive(Debug, Default)]
pub struct CountingStore<S> {
    inner: S,
    tracker: Mutex<Tracker>,
    /// The meter's clock; `None`: totals only.
    clock: Option<Arc<dyn Clock>>,
}

impl<S: StateStore> CountingStore<S> {
    /// Wraps `inner` with all counts at zero, counting totals only.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            tracker: Mutex::new(Tracker::default()),
            clock: None,
        }
    }

    /// [`CountingStore::new`] that also meters each key per second of `clock` (module docs).
    pub fn with_clock(inner: S, clock: Arc<dyn Clock>) -> Self {
        Self {
            clock: Some(clock),
            ..Self::new(inner)
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

    /// Sets every count to zero (round trips start afresh) and forgets every key's load.
    pub fn reset(&self) {
        *self.lock() = Tracker::default();
    }

    /// The keys with the highest per-second WCU, per-second RCU and item size since the meter
    /// started or was reset (all `None` without a clock).
    pub fn hottest(&self) -> KeyPeaks {
        fn top(current: &mut Option<Peak>, key: &Key, amount: u64) {
            let better = current
                .as_ref()
                .is_none_or(|p| amount > p.amount || (amount == p.amount && *key < p.key));
            if better {
                *current = Some(Peak {
                    key: key.clone(),
                    amount,
                });
            }
        }
        let mut peaks = KeyPeaks::default();
        for (key, meter) in &self.lock().keys {
            let load = &meter.load;
            top(&mut peaks.wcu, key, load.peak_wcu_per_s);
            top(&mut peaks.rcu, key, load.peak_rcu_per_s);
            top(&mut peaks.largest_item, key, load.largest_item);
        }
        peaks
    }

    /// The load of the keys grouped by `class` (for example by key prefix): units summed, peaks
    /// and largest item those of the class's hottest key (a sum of per-key peaks would mean
    /// nothing). Empty without a clock.
    pub fn loads_by<C: Ord>(&self, mut class: impl FnMut(&str) -> C) -> BTreeMap<C, KeyLoad> {
        let mut classes = BTreeMap::<C, KeyLoad>::new();
        for (key, meter) in &self.lock().keys {
            classes.entry(class(key)).or_default().merge(&meter.load);
        }
        classes
    }

    /// The load of `key` so far (`None`: not touched, or no clock).
    pub fn key_load(&self, key: &str) -> Option<KeyLoad> {
        self.lock().keys.get(key).map(|m| m.load)
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

    /// Ends a request of `depth`: counts it, and meters `charges` when metering.
    fn finish(&self, depth: u64, charges: Vec<KeyCharge>, count: impl FnOnce(&mut Usage)) {
        let second = self.clock.as_ref().map(|c| c.now_ms().div_euclid(1_000));
        let mut t = self.lock();
        t.completed_depth = t.completed_depth.max(depth);
        t.usage.round_trips = t.usage.round_trips.max(depth);
        count(&mut t.usage);
        if let Some(second) = second {
            for c in charges {
                t.keys
                    .entry(c.key)
                    .or_default()
                    .add(second, c.wcu, c.rcu, c.size);
            }
        }
    }

    fn metering(&self) -> bool {
        self.clock.is_some()
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
        let mut charges = Vec::new();
        let rcu: u64 = match &result {
            Ok(items) => keys
                .iter()
                .zip(items)
                .map(|(k, i)| {
                    let size = i.as_ref().map_or(0, |i| item_size(k, i));
                    let rcu = read_units(size);
                    if self.metering() {
                        charges.push(KeyCharge {
                            key: k.clone(),
                            wcu: 0,
                            rcu,
                            size,
                        });
                    }
                    rcu
                })
                .sum(),
            Err(_) => 0,
        };
        self.finish(depth, charges, |u| {
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
        let (size, failed) = match &result {
            Ok(WriteOutcome::Applied(after)) => {
                (Some(write_size(&key, before.as_ref(), after.as_ref())), 0)
            }
            Ok(WriteOutcome::ConditionFailed(_)) => {
                (Some(write_size(&key, before.as_ref(), None)), 1)
            }
            // A rejected request (invalid, throttled) consumes nothing.
            Err(_) => (None, 0),
        };
        let wcu = size.map_or(0, write_units);
        let charges = match size {
            Some(size) if self.metering() => vec![KeyCharge {
                key,
                wcu,
                rcu: 0,
                size,
            }],
            _ => Vec::new(),
        };
        self.finish(depth, charges, |u| {
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
        let mut charges = Vec::with_capacity(writes.len());
        for (w, old) in writes.iter().zip(&before) {
            let old_size = old.as_ref().map_or(0, |i| item_size(&w.key, i));
            let new_size = size_after(&w.key, old.as_ref(), old_size, &w.op);
            let size = old_size.max(new_size.unwrap_or(0));
            charges.push(KeyCharge {
                key: w.key.clone(),
                wcu: 2 * write_units(size),
                rcu: 0,
                size,
            });
        }
        let result = self.inner.transact(writes).await;
        let (wcu, cancelled) = match &result {
            Ok(TransactOutcome::Committed) => (charges.iter().map(|c| c.wcu).sum(), 0),
            Ok(TransactOutcome::Cancelled(_)) => (charges.iter().map(|c| c.wcu).sum(), 1),
            Err(_) => {
                charges.clear();
                (0, 0)
            }
        };
        if !self.metering() {
            charges.clear();
        }
        self.finish(depth, charges, |u| {
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
        let mut charges: Vec<KeyCharge> = items
            .iter()
            .zip(&before)
            .map(|((k, new), old)| {
                let size = write_size(k, old.as_ref(), Some(new));
                KeyCharge {
                    key: k.clone(),
                    wcu: write_units(size),
                    rcu: 0,
                    size,
                }
            })
            .collect();
        let result = self.inner.put_many(items).await;
        if result.is_err() {
            // Some chunks may have been written; the failed call is counted as consuming none.
            charges.clear();
        }
        let wcu: u64 = charges.iter().map(|c| c.wcu).sum();
        if !self.metering() {
            charges.clear();
        }
        self.finish(depth, charges, |u| {
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
    use crate::state::apply_op;
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
            (i64::MIN, 12),
            (-10, 3),
            (101, 3),
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

    #[test]
    fn size_after_matches_the_size_of_the_applied_item() {
        let before = item(&[
            ("n", Value::N(99)),
            ("name", "ann".into()),
            ("gone", Value::N(-1_000)),
        ]);
        let ops = [
            WriteOp::Put(item(&[("x", Value::N(1))])),
            WriteOp::Delete,
            WriteOp::ConditionCheck,
            WriteOp::Update(vec![
                UpdateAction::Add("n".into(), 1),
                UpdateAction::Set("name".into(), "annabelle".into()),
                UpdateAction::Remove("gone".into()),
                UpdateAction::SetIfNotExists("new".into(), Value::N(123_456)),
            ]),
            WriteOp::Update(vec![
                UpdateAction::Add("fresh".into(), -7),
                UpdateAction::SetIfNotExists("name".into(), "bob".into()),
                UpdateAction::Remove("missing".into()),
            ]),
        ];
        for old in [Some(&before), None] {
            let old_size = old.map_or(0, |i| item_size("k#1", i));
            for op in &ops {
                let expected = apply_op(old, op).unwrap().map(|i| item_size("k#1", &i));
                let expected = match op {
                    WriteOp::ConditionCheck => old.map(|_| old_size),
                    _ => expected,
                };
                assert_eq!(
                    size_after("k#1", old, old_size, op),
                    expected,
                    "{op:?} on {old:?}"
                );
            }
        }
        // An update that cannot apply leaves the size as it was.
        let overflow = WriteOp::Update(vec![UpdateAction::Add("n".into(), i64::MAX)]);
        let old_size = item_size("k#1", &before);
        assert_eq!(
            size_after("k#1", Some(&before), old_size, &overflow),
            Some(old_size)
        );
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

    fn add(key: &str, n: i64) -> Write {
        Write {
            key: key.into(),
            op: WriteOp::Update(vec![UpdateAction::Add("n".into(), n)]),
            condition: Condition::Always,
        }
    }

    fn metered() -> (CountingStore<MemoryStore>, Arc<crate::clock::ManualClock>) {
        let clock = Arc::new(crate::clock::ManualClock::new(10_500));
        let store = CountingStore::with_clock(MemoryStore::new(), Arc::clone(&clock) as _);
        (store, clock)
    }

    #[tokio::test]
    async fn the_meter_keeps_each_keys_busiest_second() {
        let (store, clock) = metered();
        // Second 10: 3 single writes to "hot" (1 WCU each) and a transaction on "hot" and
        // "cold" (2 WCU each).
        for _ in 0..3 {
            store.write(add("hot", 1)).await.unwrap();
        }
        let outcome = store
            .transact(vec![add("hot", 1), add("cold", 1)])
            .await
            .unwrap();
        assert_eq!(outcome, TransactOutcome::Committed);
        // Second 11: one more write; the peak stays the 5 of second 10.
        clock.advance(1_000);
        store.write(add("hot", 1)).await.unwrap();
        // Second 12: "cold" read three times and written once.
        clock.advance(1_000);
        for _ in 0..3 {
            store.get_many(&["cold".into()]).await.unwrap();
        }
        store.write(add("cold", 1)).await.unwrap();

        let hot = store.key_load("hot").unwrap();
        assert_eq!((hot.wcu, hot.peak_wcu_per_s), (6, 5));
        let cold = store.key_load("cold").unwrap();
        assert_eq!((cold.wcu, cold.peak_wcu_per_s), (3, 2));
        assert_eq!((cold.rcu, cold.peak_rcu_per_s), (3, 3));
        let peaks = store.hottest();
        assert_eq!(
            peaks.wcu.map(|p| (p.key, p.amount)),
            Some(("hot".into(), 5))
        );
        assert_eq!(
            peaks.rcu.map(|p| (p.key, p.amount)),
            Some(("cold".into(), 3))
        );
        // The totals are the sum of the keys' loads.
        assert_eq!(store.usage().wcu, 6 + 3);
        assert_eq!(store.usage().rcu, 3);
    }

    #[tokio::test]
    async fn the_meter_records_the_largest_item_and_bills_failed_conditions_to_their_key() {
        let (store, _clock) = metered();
        store
            .inner()
            .put_many(vec![("big".into(), big(5000))])
            .await
            .unwrap();
        // A refused write to the 5 KB item still costs 5 WCU, billed to its key.
        let refused = Write {
            condition: Condition::ItemNotExists,
            ..add("big", 1)
        };
        let outcome = store.write(refused).await.unwrap();
        assert!(matches!(outcome, WriteOutcome::ConditionFailed(Some(_))));
        // Reading it costs 2 RCU (5 KB, per started 4 KB); a missing key 1.
        store
            .get_many(&["big".into(), "missing".into()])
            .await
            .unwrap();
        let big_load = store.key_load("big").unwrap();
        assert_eq!((big_load.wcu, big_load.rcu), (5, 2));
        let largest = store.hottest().largest_item.unwrap();
        assert_eq!(largest.key, "big");
        assert_eq!(largest.amount, 2 + 3 + 4 + 5000);
        assert_eq!(store.key_load("missing").map(|l| l.rcu), Some(1));
    }

    #[tokio::test]
    async fn loads_by_class_sum_units_and_keep_the_hottest_keys_peak() {
        let (store, _clock) = metered();
        store
            .put_many(vec![
                ("msg#1".into(), item(&[("s", "sent".into())])),
                ("msg#2".into(), item(&[("s", "sent".into())])),
            ])
            .await
            .unwrap();
        store.write(add("msg#1", 1)).await.unwrap();
        store.write(add("lim#sys", 1)).await.unwrap();
        let classes = store.loads_by(|k| k.split('#').next().unwrap_or("").to_owned());
        let msg = classes["msg"];
        assert_eq!((msg.wcu, msg.peak_wcu_per_s), (3, 2));
        assert_eq!(classes["lim"].wcu, 1);
        assert_eq!(classes.len(), 2);
    }

    #[tokio::test]
    async fn without_a_clock_only_totals_are_kept_and_reset_forgets_the_keys() {
        let plain = CountingStore::new(MemoryStore::new());
        plain.write(add("k", 1)).await.unwrap();
        assert_eq!(plain.usage().wcu, 1);
        assert_eq!(plain.hottest(), KeyPeaks::default());
        assert!(plain.loads_by(|k| k.to_owned()).is_empty());

        let (store, _clock) = metered();
        store.write(add("k", 1)).await.unwrap();
        assert!(store.hottest().wcu.is_some());
        store.reset();
        assert_eq!(store.hottest(), KeyPeaks::default());
        assert_eq!(store.key_load("k"), None);
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
