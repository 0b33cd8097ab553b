//! The ARCHITECTURE §5 DynamoDB budget of the sender's happy path, measured on the emulator through
//! the real send pipeline with the same batches the `dynamodb_budget` example prints: ≤ 3.5
//! requests and ≤ 3.1 WCU per message in a batch of 10 (claim, sender counter and mark, plus
//! the limit leases), no transaction, ≤ 3 sequential round trips per batch of any size (1, 10
//! and 100 messages), and the same cost whatever the number of senders that day. Counts only;
//! the example reports the times.
//!
//! Needs the emulator: `scripts/services up && source .local/services.env`.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;

use gateway_core::state::StateStore;

#[path = "../benches/dynamodb_budget.rs"]
#[allow(dead_code)]
mod budget;

#[tokio::test]
async fn a_batch_of_ten_stays_within_the_dynamodb_budget() {
    if std::env::var_os("MOTO_URL").is_none() {
        panic!(
            "MOTO_URL is unset: this test needs the DynamoDB emulator. Run \
             `scripts/services up && source .local/services.env` first (scripts/test does it)."
        );
    }
    let store = budget::fresh_store("budget-test").await.unwrap();
    // Simulated time, one batch every `SWEEP_GAP_MS`.
    let (pipeline, clock) = budget::simulated(Arc::clone(&store) as Arc<dyn StateStore>)
        .await
        .unwrap();
    // The process's first batches, then later ones: the limit leases taken by the first are
    // spent by the next, so the first costs most.
    let mut total = gateway_core::state::counting::Usage::default();
    for batch in 0..10 {
        store.reset();
        budget::run_batch(&pipeline, "test", batch, budget::BATCH)
            .await
            .unwrap();
        clock.advance(budget::SWEEP_GAP_MS);
        let usage = store.usage();
        assert!(usage.round_trips <= 3, "batch {batch}: {usage:?}");
        assert_eq!(usage.transactions, 0, "batch {batch}: {usage:?}");
        assert_eq!(usage.failed_conditions, 0, "batch {batch}: {usage:?}");
        // 10 claims, 10 sender counters, 10 marks, at most one lease per limit level.
        assert!((30..=33).contains(&usage.wcu), "batch {batch}: {usage:?}");
        total.wcu += usage.wcu;
        total.writes += usage.writes;
        total.batch_gets += usage.batch_gets;
    }
    // The figures docs/STATE.md quotes, over ten batches of ten (`--nocapture` shows them).
    println!("ten batches of ten: {total:?}");
    assert!(
        total.wcu as f64 / 100.0 <= budget::MAX_WCU_PER_MESSAGE,
        "{total:?}"
    );
    assert!(
        total.requests() as f64 / 100.0 <= budget::MAX_REQUESTS_PER_MESSAGE,
        "{total:?}"
    );
}

/// The cost per message does not grow with the senders of the day: each sender's counter is an
/// item of its own (before, the gateway's day item held every sender's, and its writes cost
/// 2 WCU per started KB of it: 9 WCU per message at 1,000 senders, 69 at 10,000).
#[tokio::test]
async fn the_cost_per_message_does_not_grow_with_the_senders_of_the_day() {
    let mut figures = Vec::new();
    for so_far in [10, 1_000] {
        let (usage, largest) = budget::sender_sweep(so_far, 10).await.unwrap();
        println!("{so_far} senders so far: {usage:?}, largest item {largest} B");
        assert!(largest <= 4_096, "{largest} B");
        assert_eq!(usage.transactions, 0);
        figures.push(usage.wcu);
    }
    assert!(
        figures
            .iter()
            .all(|&w| w as f64 / 100.0 <= budget::MAX_WCU_PER_MESSAGE),
        "{figures:?}"
    );
    assert_eq!(
        figures[0], figures[1],
        "WCU of 100 messages at 10 and at 1,000 senders"
    );
}

#[tokio::test]
async fn every_batch_size_waits_for_at_most_three_round_trips() {
    if std::env::var_os("MOTO_URL").is_none() {
        panic!("MOTO_URL is unset: run `scripts/services up && source .local/services.env`");
    }
    let store = budget::fresh_store("budget-sizes").await.unwrap();
    // Simulated time, one batch every `SWEEP_GAP_MS`.
    let (pipeline, clock) = budget::simulated(Arc::clone(&store) as Arc<dyn StateStore>)
        .await
        .unwrap();
    // ARCHITECTURE §5: whatever the batch's size. The template caps the sender's batch at 10; 100
    // is what a batching window could bring if the cap were raised.
    for size in budget::SIZES {
        store.reset();
        budget::run_batch(&pipeline, &format!("sizes{size}"), 0, size)
            .await
            .unwrap();
        clock.advance(budget::SWEEP_GAP_MS);
        let usage = store.usage();
        // The counts docs/BENCHMARKS.md quotes (`--nocapture` shows them).
        println!("size {size}: {usage:?}");
        assert!(
            budget::within_budget(&usage, size),
            "size {size}: {usage:?}"
        );
        assert!(
            usage.round_trips <= budget::MAX_ROUND_TRIPS,
            "size {size}: {usage:?}"
        );
        // One claim, one sender counter and one mark per message plus the batch's two reads
        // and at most one lease write per limit level.
        let fixed = usage.requests() - 3 * size as u64;
        assert!(
            fixed <= 5,
            "size {size}: {fixed} requests beyond the claims, counters and marks: {usage:?}"
        );
    }
}
