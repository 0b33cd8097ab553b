//! Acting on a [`BatchReport`] at the queue.

use crate::queue::{EntryFailure, Queue, QueueError, VisibilityChange};

use super::{BatchReport, Disposition};

/// What [`settle`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettleSummary {
    /// Records deleted (only when asked to delete).
    pub deleted: usize,
    /// Records whose visibility was set to their retry delay.
    pub delayed: usize,
    /// Entries the queue refused. A refused visibility change only means the record returns
    /// after the queue's own visibility timeout instead; a refused delete means it is delivered
    /// again and found in the ledger. Neither loses a message; both are logged by the caller.
    pub refused: Vec<EntryFailure>,
}

/// Why [`settle`] failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// A queue request failed; the records it named are redelivered after the queue's
    /// visibility timeout (and found in the ledger), so nothing is lost.
    #[error("settling the batch at the queue failed")]
    Queue(#[from] QueueError),
}

/// Sets the visibility of every [`Disposition::Retry`] record to its delay and, when
/// `delete_done` is true (the poller; the Lambda runtime deletes the records a handler does not
/// report as failures), deletes every [`Disposition::Done`] record.
pub async fn settle(
    queue: &dyn Queue,
    report: &BatchReport,
    delete_done: bool,
) -> Result<SettleSummary, SettleError> {
    let mut summary = SettleSummary::default();
    let changes: Vec<VisibilityChange> = report
        .items
        .iter()
        .filter_map(|i| match i.disposition {
            Disposition::Retry { after } => Some(VisibilityChange {
                receipt_handle: i.receipt_handle.clone(),
                visibility: after,
            }),
            Disposition::Done => None,
        })
        .collect();
    if !changes.is_empty() {
        let refused = queue.change_visibility_batch(&changes).await?;
        summary.delayed = changes.len() - refused.len();
        summary.refused.extend(refused);
    }
    if delete_done {
        let done: Vec<String> = report
            .items
            .iter()
            .filter(|i| i.disposition == Disposition::Done)
            .map(|i| i.receipt_handle.clone())
            .collect();
        if !done.is_empty() {
            let refused = queue.delete_batch(&done).await?;
            summary.deleted = done.len() - refused.len();
            summary.refused.extend(refused);
        }
    }
    Ok(summary)
}
