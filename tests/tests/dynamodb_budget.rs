//! The DESIGN §5 DynamoDB budget of the sender's happy path, measured on the emulator with the
//! same batch the `dynamodb_budget` example prints: ≤ 2 requests and ≤ 4 WCU per message,
//! ≤ 3 sequential round trips per batch of 10.
//!
//! Needs the emulator: `scripts/services up && source .local/services.env`.

#![allow(clippy::unwrap_used, clippy::panic)]

#[path = "../examples/dynamodb_budget.rs"]
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
    let config = budget::config();
    for batch in 0..2 {
        let usage = budget::happy_path_batch(&store, &config, batch)
            .await
            .unwrap();
        assert!(budget::within_budget(&usage), "batch {batch}: {usage:?}");
        // The figures the docs quote: 15 requests, 26 WCU, 3 round trips per batch.
        assert_eq!(
            (usage.requests(), usage.wcu, usage.round_trips),
            (15, 26, 3),
            "batch {batch}: {usage:?}"
        );
        assert_eq!(usage.failed_conditions, 0);
    }
}
