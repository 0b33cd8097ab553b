//! In-memory [`StateStore`] for tests and the local run.
//!
//! One mutex around a map: every operation is atomic, which is exactly what DynamoDB guarantees
//! per item and per transaction. Conditions are evaluated with the reference semantics of
//! [`Condition::holds`](super::Condition::holds), and writes applied with [`apply_op`], so the limiter, breaker and ledger
//! behave here as they do against DynamoDB. Request counters let tests and benchmarks count
//! round trips the way they would be billed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::{
    Item, Key, MAX_BATCH_GET, MAX_TRANSACTION, StateStore, StoreError, TransactOutcome, Write,
    WriteOp, WriteOutcome, apply_op,
};

/// Requests served, by DynamoDB operation they stand for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// `BatchGetItem` / `GetItem` calls.
    pub reads: u64,
    /// Single conditional writes (`PutItem` / `UpdateItem` / `DeleteItem`).
    pub writes: u64,
    /// `TransactWriteItems` calls.
    pub transactions: u64,
    /// `BatchWriteItem` calls (per chunk of 25).
    pub batch_writes: u64,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.reads + self.writes + self.transactions + self.batch_writes
    }
}

/// The in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    items: Mutex<BTreeMap<Key, Item>>,
    reads: AtomicU64,
    writes: AtomicU64,
    transactions: AtomicU64,
    batch_writes: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests served so far.
    pub fn request_counts(&self) -> RequestCounts {
        RequestCounts {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
            batch_writes: self.batch_writes.load(Ordering::Relaxed),
        }
    }

    /// A copy of every item (for tests and the local status page).
    pub fn snapshot(&self) -> BTreeMap<Key, Item> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Item>> {
        // A panic while holding the lock cannot leave a half-applied write: writes are computed
        // first and inserted in one step, so the data behind a poisoned lock is still whole.
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn store(map: &mut BTreeMap<Key, Item>, key: &Key, next: Option<Item>) {
    match next {
        Some(item) => {
            map.insert(key.clone(), item);
        }
        None => {
            map.remove(key);
        }
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        if keys.len() > MAX_BATCH_GET {
            return Err(StoreError::Invalid(format!(
                "{} keys in one read (max {MAX_BATCH_GET})",
                keys.len()
            )));
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        let map = self.lock();
        Ok(keys.iter().map(|k| map.get(k).cloned()).collect())
    }

    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        if write.op == WriteOp::ConditionCheck {
            return Err(StoreError::Invalid(
                "a condition check is only valid inside a transaction".into(),
            ));
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut map = self.lock();
        let current = map.get(&write.key);
        if !write.condition.holds(current) {
            return Ok(WriteOutcome::ConditionFailed(current.cloned()));
        }
        let next = apply_op(current, &write.op)?;
        store(&mut map, &write.key, next.clone());
        Ok(WriteOutcome::Applied(next))
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<TransactOutcome, StoreError> {
        if writes.is_empty() || writes.len() > MAX_TRANSACTION {
            return Err(StoreError::Invalid(format!(
                "{} writes in one transaction (1..={MAX_TRANSACTION})",
                writes.len()
            )));
        }
        let distinct: BTreeSet<&Key> = writes.iter().map(|w| &w.key).collect();
        if distinct.len() != writes.len() {
            return Err(StoreError::Invalid(
                "a transaction names the same key twice".into(),
            ));
        }
        self.transactions.fetch_add(1, Ordering::Relaxed);
        let mut map = self.lock();
        let failed: Vec<(usize, Option<Item>)> = writes
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.condition.holds(map.get(&w.key)))
            .map(|(i, w)| (i, map.get(&w.key).cloned()))
            .collect();
        if !failed.is_empty() {
            return Ok(TransactOutcome::Cancelled(failed));
        }
        // Compute every new item before storing any, so an invalid action leaves nothing applied.
        let mut next = Vec::with_capacity(writes.len());
        for w in &writes {
            next.push(apply_op(map.get(&w.key), &w.op)?);
        }
        for (w, item) in writes.iter().zip(next) {
            store(&mut map, &w.key, item);
        }
        Ok(TransactOutcome::Committed)
    }

    async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
        let chunks = items.len().div_ceil(super::MAX_BATCH_WRITE) as u64;
        self.batch_writes.fetch_add(chunks, Ordering::Relaxed);
        let mut map = self.lock();
        for (k, item) in items {
            map.insert(k, item);
        }
        Ok(())
    }
}

/// A [`MemoryStore`] as a retrying client meets DynamoDB when every answer is lost: each single
/// conditional write is applied, its answer lost, and the client's retry of the same request is
/// evaluated against the write's own result (applied again if its condition still holds,
/// otherwise a failed condition carrying the item as it now is). Transactions carry a client
/// token (`ClientRequestToken`), so their retry is not applied twice; batch puts are
/// unconditional and idempotent. For tests of what a write whose answer was lost does to the
/// code that issued it.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct LostAnswers(pub MemoryStore);

#[cfg(any(test, feature = "testing"))]
#[async_trait]
impl StateStore for LostAnswers {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        self.0.get_many(keys).await
    }

    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        self.0.write(write.clone()).await?;
        self.0.write(write).await
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<TransactOutcome, StoreError> {
        self.0.transact(writes).await
    }

    async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
        self.0.put_many(items).await
    }
}
