//! The batch run (see the module docs of [`super`]).

use std::time::Duration;

use super::{Batch, BatchReport, Disposition, ItemReport, Pipeline};
use crate::events::Outcome;

impl Pipeline {
    /// Processes one batch and reports what to do with each record (in record order).
    pub async fn process(&self, batch: Batch<'_>) -> BatchReport {
        BatchReport {
            items: batch
                .records
                .iter()
                .map(|r| ItemReport {
                    queue_message_id: r.message_id.clone(),
                    receipt_handle: r.receipt_handle.clone(),
                    message_id: None,
                    outcome: Outcome::Deferred,
                    replayed: false,
                    gateway: None,
                    reason: None,
                    disposition: Disposition::Retry {
                        after: Duration::from_secs(30),
                    },
                })
                .collect(),
            ..BatchReport::default()
        }
    }
}
