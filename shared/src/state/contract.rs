//! The [`StateStore`] contract: one suite every implementation must pass.
//!
//! Each function exercises one promise of the port's semantics (see [`super`]) and asserts; a
//! failed assertion panics, which is how a test reports. They take `&dyn StateStore` and a
//! namespace `ns` that prefixes every key they touch, so the suite can run against a shared,
//! persistent table (DynamoDB or its emulator, from the `tests` crate with feature `testing`)
//! without colliding with itself: give each run a fresh `ns`. [`run_all`] runs everything.
//!
//! Store errors other than the ones a case expects fail the case.

// This module is test support: failing loudly is its whole purpose.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use super::{
    CmpOp, Condition, Item, Key, StateStore, StoreError, TransactOutcome, UpdateAction, Value,
    Write, WriteOp, WriteOutcome,
};

fn key(ns: &str, name: &str) -> Key {
    format!("{ns}#{name}")
}

fn item(attrs: &[(&str, Value)]) -> Item {
    attrs
        .iter()
        .map(|(a, v)| ((*a).to_owned(), v.clone()))
        .collect()
}

async fn write(store: &dyn StateStore, w: Write) -> WriteOutcome {
    match store.write(w).await {
        Ok(o) => o,
        Err(e) => panic!("write failed: {e}"),
    }
}

async fn read(store: &dyn StateStore, k: &Key) -> Option<Item> {
    match store.get(k).await {
        Ok(i) => i,
        Err(e) => panic!("get failed: {e}"),
    }
}

/// Conditional put: `ItemNotExists` creates once and then fails with the stored item; an
/// `Eq` condition replaces only the expected version.
pub async fn conditional_put(store: &dyn StateStore, ns: &str) {
    let k = key(ns, "put");
    let v1 = item(&[("v", Value::N(1)), ("s", "a".into())]);
    let first = write(
        store,
        Write {
            key: k.clone(),
            op: WriteOp::Put(v1.clone()),
            condition: Condition::ItemNotExists,
        },
    )
    .await;
    assert_eq!(first, WriteOutcome::Applied(Some(v1.clone())));

    let v2 = item(&[("v", Value::N(2))]);
    let again = write(
        store,
        Write {
            key: k.clone(),
            op: WriteOp::Put(v2.clone()),
            condition: Condition::ItemNotExists,
        },
    )
    .await;
    assert_eq!(again, WriteOutcome::ConditionFailed(Some(v1.clone())));

    let replace = write(
        store,
        Write {
            key: k.clone(),
            op: WriteOp::Put(v2.clone()),
            condition: Condition::cmp("v", CmpOp::Eq, 1),
        },
    )
    .await;
    assert_eq!(replace, WriteOutcome::Applied(Some(v2.clone())));
    assert_eq!(read(store, &k).await, Some(v2));
}

/// Conditional update: creates a missing item, applies actions in order, `ADD` from a missing
/// attribute starts at 0, `SET if_not_exists` keeps an existing value, `REMOVE` drops one.
pub async fn conditional_update(store: &dyn StateStore, ns: &str) {
    let k = key(ns, "update");
    let created = write(
        store,
        Write {
            key: k.clone(),
            op: WriteOp::Update(vec![
                UpdateAction::Add("n".into(), 5),
                UpdateAction::SetIfNotExists("first".into(), Value::N(7)),
                UpdateAction::Set("s".into(), "x".into()),
            ]),
            condition: Condition::Or(vec![
                Condition::AttrNotExists("n".into()),
                Condition::cmp("n", CmpOp::Le, 10),
            ]),
        },
    )
    .await;
    let expected = item(&[
        ("n", Value::N(5)),
        ("first", Value::N(7)),
        ("s", "x".into()),
    ]);
    assert_eq!(created, WriteOutcome::Applied(Some(expected)));

    let second = write(
        store,
        Write {
            key: k.clone(),
            op: WriteOp::Update(vec![
                UpdateAction::Add("n".into(), -2),
                UpdateAction::SetIfNotExists("first".into(), Value::N(99)),
                UpdateAction::Remove("s".into()),
            ]),
            condition: Condition::And(vec![
                Condition::ItemExists,
                Condition::cmp("n", CmpOp::Ge, 5),
            ]),
        },
    )
    .await;
    let expected = item(&[("n", Value::N(3)), ("first", Value::N(7))]);
    assert_eq!(second, WriteOutcome::Applied(Some(expected.clone())));
    assert_eq!(read(store, &k).await, Some(expected));
}

/// Conditional delete: refused while the condition is false, applied when true, and deleting a
/// missing item is not an error.
pub async fn conditional_delete(store: &dyn StateStore, ns: &str) {
    let k = key(ns, "delete");
    let stored = item(&[("v", Value::N(1))]);
    store
        .put_many(vec![(k.clone(), stored.clone())])
        .await
        .unwrap();
    let refused = write(
        store,
        Write {
            key: k.clone(),
            op: WriteOp::Delete,
            condition: Condition::cmp("v", CmpOp::Eq, 2),
        },
    )
    .await;
    assert_eq!(refused, WriteOutcome::ConditionFailed(Some(stored.clone())));
    assert_eq!(read(store, &k).await, Some(stored));

    let deleted = write(
        store,
        Write {
            key: k.clone(),
            op: WriteOp::Delete,
            condition: Condition::cmp("v", CmpOp::Eq, 1),
        },
    )
    .await;
    assert_eq!(deleted, WriteOutcome::Applied(None));
    assert_eq!(read(store, &k).await, None);

    let missing = write(
        store,
        Write {
            key: k.clone(),
            op: WriteOp::Delete,
            condition: Condition::Always,
        },
    )
    .await;
    assert_eq!(missing, WriteOutcome::Applied(None));
}

/// A failed condition changes nothing and returns the item as stored (or `None` when there is
/// no item) — for puts, updates and deletes alike.
pub async fn condition_failure_returns_current_item_and_changes_nothing(
    store: &dyn StateStore,
    ns: &str,
) {
    let k = key(ns, "cond-fail");
    let stored = item(&[("n", Value::N(10)), ("s", "keep".into())]);
    store
        .put_many(vec![(k.clone(), stored.clone())])
        .await
        .unwrap();
    let attempts = [
        WriteOp::Put(item(&[("n", Value::N(0))])),
        WriteOp::Update(vec![UpdateAction::Add("n".into(), 1)]),
        WriteOp::Delete,
    ];
    for op in attempts {
        let outcome = write(
            store,
            Write {
                key: k.clone(),
                op,
                condition: Condition::cmp("n", CmpOp::Lt, 10),
            },
        )
        .await;
        assert_eq!(outcome, WriteOutcome::ConditionFailed(Some(stored.clone())));
        assert_eq!(read(store, &k).await, Some(stored.clone()));
    }

    let absent = key(ns, "cond-fail-absent");
    let outcome = write(
        store,
        Write {
            key: absent.clone(),
            op: WriteOp::Update(vec![UpdateAction::Add("n".into(), 1)]),
            condition: Condition::ItemExists,
        },
    )
    .await;
    assert_eq!(outcome, WriteOutcome::ConditionFailed(None));
    assert_eq!(read(store, &absent).await, None);
}

/// A comparison naming a missing attribute, or comparing a number with a string, is false;
/// its negation is true.
pub async fn comparisons_on_missing_or_mistyped_attributes_are_false(
    store: &dyn StateStore,
    ns: &str,
) {
    let k = key(ns, "cmp");
    let stored = item(&[("n", Value::N(5)), ("s", "5".into())]);
    store
        .put_many(vec![(k.clone(), stored.clone())])
        .await
        .unwrap();
    let touch = || WriteOp::Update(vec![UpdateAction::Add("hits".into(), 1)]);
    let false_cases = [
        Condition::cmp("missing", CmpOp::Eq, 5),
        Condition::cmp("missing", CmpOp::Ne, 5),
        Condition::cmp("missing", CmpOp::Lt, 5),
        Condition::cmp("n", CmpOp::Eq, "5"),
        Condition::cmp("n", CmpOp::Ne, "5"),
        Condition::cmp("s", CmpOp::Eq, 5),
        Condition::cmp("s", CmpOp::Ge, 0),
        Condition::Or(vec![]),
    ];
    for condition in false_cases {
        let outcome = write(
            store,
            Write {
                key: k.clone(),
                op: touch(),
                condition: condition.clone(),
            },
        )
        .await;
        assert_eq!(
            outcome,
            WriteOutcome::ConditionFailed(Some(stored.clone())),
            "{condition:?} must be false"
        );
    }
    let true_cases = [
        Condition::Not(Box::new(Condition::cmp("missing", CmpOp::Eq, 5))),
        Condition::Not(Box::new(Condition::cmp("n", CmpOp::Eq, "5"))),
        Condition::cmp("n", CmpOp::Eq, 5),
        Condition::cmp("s", CmpOp::Eq, "5"),
        Condition::And(vec![]),
    ];
    let mut hits = 0;
    for condition in true_cases {
        hits += 1;
        let outcome = write(
            store,
            Write {
                key: k.clone(),
                op: touch(),
                condition: condition.clone(),
            },
        )
        .await;
        let mut expected = stored.clone();
        expected.insert("hits".into(), Value::N(hits));
        assert_eq!(
            outcome,
            WriteOutcome::Applied(Some(expected)),
            "{condition:?} must be true"
        );
    }
}

/// `ADD` on a missing attribute starts from 0; `ADD` on a string is `Invalid` and changes
/// nothing.
pub async fn add_starts_from_zero_and_rejects_strings(store: &dyn StateStore, ns: &str) {
    let k = key(ns, "add");
    let outcome = write(
        store,
        Write {
            key: k.clone(),
            op: WriteOp::Update(vec![UpdateAction::Add("n".into(), -3)]),
            condition: Condition::Always,
        },
    )
    .await;
    assert_eq!(
        outcome,
        WriteOutcome::Applied(Some(item(&[("n", Value::N(-3))])))
    );

    let s = key(ns, "add-string");
    let stored = item(&[("s", "text".into())]);
    store
        .put_many(vec![(s.clone(), stored.clone())])
        .await
        .unwrap();
    let result = store
        .write(Write {
            key: s.clone(),
            op: WriteOp::Update(vec![UpdateAction::Add("s".into(), 1)]),
            condition: Condition::Always,
        })
        .await;
    assert!(
        matches!(result, Err(StoreError::Invalid(_))),
        "ADD on a string must be Invalid, got {result:?}"
    );
    assert_eq!(read(store, &s).await, Some(stored));
}

/// A transaction applies all its writes or none; a cancellation lists every failed write's
/// index with its current item.
pub async fn transactions_are_all_or_nothing(store: &dyn StateStore, ns: &str) {
    let a = key(ns, "tx-a");
    let b = key(ns, "tx-b");
    let c = key(ns, "tx-c");
    let stored_b = item(&[("n", Value::N(9))]);
    store
        .put_many(vec![(b.clone(), stored_b.clone())])
        .await
        .unwrap();
    let add = |k: &Key, condition| Write {
        key: k.clone(),
        op: WriteOp::Update(vec![UpdateAction::Add("n".into(), 1)]),
        condition,
    };

    let cancelled = store
        .transact(vec![
            add(&a, Condition::Always),
            add(&b, Condition::cmp("n", CmpOp::Lt, 9)),
            Write {
                key: c.clone(),
                op: WriteOp::ConditionCheck,
                condition: Condition::ItemExists,
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        cancelled,
        TransactOutcome::Cancelled(vec![(1, Some(stored_b.clone())), (2, None)])
    );
    assert_eq!(read(store, &a).await, None);
    assert_eq!(read(store, &b).await, Some(stored_b));

    let committed = store
        .transact(vec![
            add(&a, Condition::ItemNotExists),
            add(&b, Condition::cmp("n", CmpOp::Le, 9)),
            Write {
                key: c.clone(),
                op: WriteOp::ConditionCheck,
                condition: Condition::ItemNotExists,
            },
        ])
        .await
        .unwrap();
    assert_eq!(committed, TransactOutcome::Committed);
    assert_eq!(read(store, &a).await, Some(item(&[("n", Value::N(1))])));
    assert_eq!(read(store, &b).await, Some(item(&[("n", Value::N(10))])));
    assert_eq!(read(store, &c).await, None);
}

/// A transaction naming one key twice is `Invalid` and applies nothing.
pub async fn duplicate_keys_in_a_transaction_are_invalid(store: &dyn StateStore, ns: &str) {
    let k = key(ns, "tx-dup");
    let w = Write {
        key: k.clone(),
        op: WriteOp::Update(vec![UpdateAction::Add("n".into(), 1)]),
        condition: Condition::Always,
    };
    let result = store.transact(vec![w.clone(), w]).await;
    assert!(
        matches!(result, Err(StoreError::Invalid(_))),
        "duplicate keys must be Invalid, got {result:?}"
    );
    assert_eq!(read(store, &k).await, None);
}

/// `put_many` stores every item unconditionally (more than one `BatchWriteItem` chunk), and
/// `get_many` answers one entry per key, in order, `None` for missing items.
pub async fn put_many_and_get_many_keep_order(store: &dyn StateStore, ns: &str) {
    let items: Vec<(Key, Item)> = (0..30)
        .map(|i| {
            (
                key(ns, &format!("many-{i:02}")),
                item(&[("i", Value::N(i))]),
            )
        })
        .collect();
    store.put_many(items.clone()).await.unwrap();
    // Overwrites unconditionally.
    store
        .put_many(vec![(items[3].0.clone(), item(&[("i", Value::N(33))]))])
        .await
        .unwrap();

    let keys = vec![
        items[29].0.clone(),
        key(ns, "many-missing"),
        items[3].0.clone(),
        items[0].0.clone(),
    ];
    let got = store.get_many(&keys).await.unwrap();
    assert_eq!(
        got,
        vec![
            Some(item(&[("i", Value::N(29))])),
            None,
            Some(item(&[("i", Value::N(33))])),
            Some(item(&[("i", Value::N(0))])),
        ]
    );
}

/// Polls every future until all are done, so their requests are in flight at once.
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

/// Lets the other futures of a [`join_all`] run before this one continues, so workers
/// interleave even on a store whose futures never wait.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

/// 16 concurrent workers each add 1 under `n <= limit - 1` until refused: exactly `limit` adds
/// succeed and the counter ends at `limit`.
pub async fn concurrent_conditional_adds_stop_at_limit(store: &dyn StateStore, ns: &str) {
    const WORKERS: usize = 16;
    const LIMIT: i64 = 100;
    let k = key(ns, "concurrent");
    let worker = |k: Key| async move {
        let mut applied = 0_i64;
        loop {
            let outcome = write(
                store,
                Write {
                    key: k.clone(),
                    op: WriteOp::Update(vec![UpdateAction::Add("n".into(), 1)]),
                    condition: Condition::Or(vec![
                        Condition::AttrNotExists("n".into()),
                        Condition::cmp("n", CmpOp::Le, LIMIT - 1),
                    ]),
                },
            )
            .await;
            yield_now().await;
            match outcome {
                WriteOutcome::Applied(_) => applied += 1,
                WriteOutcome::ConditionFailed(current) => {
                    assert_eq!(
                        current.and_then(|i| i.get("n").cloned()),
                        Some(Value::N(LIMIT))
                    );
                    return applied;
                }
            }
        }
    };
    let results = join_all((0..WORKERS).map(|_| worker(k.clone())).collect()).await;
    assert_eq!(results.iter().sum::<i64>(), LIMIT);
    assert!(
        results.iter().filter(|&&n| n > 0).count() > 1,
        "workers did not run concurrently: {results:?}"
    );
    assert_eq!(read(store, &k).await, Some(item(&[("n", Value::N(LIMIT))])));
}

/// Requests DynamoDB rejects are `Invalid` and change nothing: two actions on one attribute
/// in one update (overlapping document paths).
pub async fn inexpressible_requests_are_invalid(store: &dyn StateStore, ns: &str) {
    let k = key(ns, "inexpressible");
    let stored = item(&[("n", Value::N(1))]);
    store
        .put_many(vec![(k.clone(), stored.clone())])
        .await
        .unwrap();
    let bad = [Write {
        key: k.clone(),
        op: WriteOp::Update(vec![
            UpdateAction::Set("n".into(), Value::N(7)),
            UpdateAction::Add("n".into(), 1),
        ]),
        condition: Condition::Always,
    }];
    for w in bad {
        let shown = format!("{w:?}");
        match store.write(w).await {
            Err(StoreError::Invalid(_)) => {}
            other => panic!("{shown} must be Invalid, got {other:?}"),
        }
    }
    assert_eq!(read(store, &k).await, Some(stored));
}

/// Runs every case of the contract, each under its own sub-namespace of `ns`.
pub async fn run_all(store: &dyn StateStore, ns: &str) {
    conditional_put(store, &format!("{ns}#1")).await;
    conditional_update(store, &format!("{ns}#2")).await;
    conditional_delete(store, &format!("{ns}#3")).await;
    condition_failure_returns_current_item_and_changes_nothing(store, &format!("{ns}#4")).await;
    comparisons_on_missing_or_mistyped_attributes_are_false(store, &format!("{ns}#5")).await;
    add_starts_from_zero_and_rejects_strings(store, &format!("{ns}#6")).await;
    transactions_are_all_or_nothing(store, &format!("{ns}#7")).await;
    duplicate_keys_in_a_transaction_are_invalid(store, &format!("{ns}#8")).await;
    put_many_and_get_many_keep_order(store, &format!("{ns}#9")).await;
    concurrent_conditional_adds_stop_at_limit(store, &format!("{ns}#10")).await;
    inexpressible_requests_are_invalid(store, &format!("{ns}#11")).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::memory::MemoryStore;

    #[tokio::test]
    async fn memory_store_meets_the_contract() {
        run_all(&MemoryStore::new(), "contract").await;
    }

    /// A store that ignores conditions on single writes: the suite must reject it.
    #[derive(Debug, Default)]
    struct IgnoresConditions(MemoryStore);

    #[async_trait::async_trait]
    impl StateStore for IgnoresConditions {
        async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
            self.0.get_many(keys).await
        }
        async fn write(&self, mut write: Write) -> Result<WriteOutcome, StoreError> {
            write.condition = Condition::Always;
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
    #[should_panic(expected = "assertion")]
    async fn a_store_that_ignores_conditions_fails_the_contract() {
        run_all(&IgnoresConditions::default(), "broken").await;
    }
}
