//! The recorder handler on the sample event `events/recorder-batch.json`, with the in-memory
//! record store and suppression list.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use crate::{Deps, handle};
use aws_lambda_events::event::sqs::SqsEvent;
use gateway_core::clock::ManualClock;
use gateway_core::recorder::Recorder;
use gateway_core::records::{MemoryRecords, RecordReader};
use gateway_core::state::memory::MemoryStore;
use gateway_core::suppression;
use lambda_runtime::{Context, LambdaEvent};

#[tokio::test]
async fn the_sample_batch_is_recorded_suppressed_and_the_garbage_retried() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/recorder-batch.json"
    );
    let event: SqsEvent = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let records = Arc::new(MemoryRecords::new());
    let state = Arc::new(MemoryStore::new());
    let deps = Deps {
        recorder: Arc::new(Recorder::new(
            Arc::clone(&records) as _,
            Arc::clone(&state) as _,
            Arc::new(ManualClock::new(1_795_858_205_000)),
        )),
    };
    let response = handle(LambdaEvent::new(event, Context::default()), &deps)
        .await
        .unwrap();
    let failures: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failures, ["7d2a0c4e-5b1f-4c3a-8e6d-2f9b1c0a3e04"]);
    let record = records
        .message("appt-2026-11-28-0001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status.as_str(), "sent");
    assert_eq!(
        record
            .recipient("patient.one@example.org")
            .unwrap()
            .status
            .as_str(),
        "DELIVERED"
    );
    assert!(
        suppression::lookup(state.as_ref(), "moved.away@example.org")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        suppression::lookup(state.as_ref(), "patient.one@example.org")
            .await
            .unwrap()
            .is_none()
    );
}
