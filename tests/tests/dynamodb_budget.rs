//! The ARCHITECTURE §5 DynamoDB budget of the sender's happy path, measured on the emulator through
//! the real send pipeline with the same batches the `dynamodb_budget` example prints: ≤ 2.5
//! requests and ≤ 4 WCU per message in a batch of 10, ≤ 3 sequential round trips per batch of
//! any size (1, 10 and 100 messages). Counts only; the example reports the times.
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
    let pipeline = budget::pipeline(Arc::clone(&store) as Arc<dyn StateStore>, "0ms")
        .await
        .unwrap();
    for batch in 0..2 {
        store.reset();
        budget::run_batch(&pipeline, "test", batch, budget::BATCH)
            .await
            .unwrap();
        let usage = store.usage();
        assert!(
            budget::within_budget(&usage, budget::BATCH),
            "batch {batch}: {usage:?}"
        );
        // The figures the docs quote: 23 requests (10 claims, 2 reads, 1 transaction, 10 marks,
        // each written as its send is accepted), 26 WCU, 3 round trips per batch.
        assert_eq!(
            (usage.requests(), usage.wcu, usage.round_trips),
            (23, 26, 3),
            "batch {batch}: {usage:?}"
        );
        assert_eq!(usage.failed_conditions, 0);
    }
}

#[tokio::test]
async fn every_batch_size_waits_for_at_most_three_round_trips() {
    if std::env::var_os("MOTO_URL").is_none() {
        panic!("MOTO_URL is unset: run `scripts/services up && source .local/services.env`");
    }
    let store = budget::fresh_store("budget-sizes").await.unwrap();
    let pipeline = budget::pipeline(Arc::clone(&store) as Arc<dyn StateStore>, "0ms")
        .await
        .unwrap();
    // ARCHITECTURE §5: whatever the batch's size. The template caps the sender's batch at 10; 100
    // is what a batching window could bring if the cap were raised.
    for size in budget::SIZES {
        store.reset();
        budget::run_batch(&pipeline, &format!("sizes{size}"), 0, size)
            .await
            .unwrap();
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
        // One claim and one mark per message plus the batch's fixed reads and transaction.
        let fixed = usage.requests() - 2 * size as u64;
        assert!(
            fixed <= 3,
            "size {size}: {fixed} requests beyond the claims: {usage:?}"
        );
    }
}
