//! The sender function (ARCHITECTURE §1): [`wire()`] builds the dependencies once, [`handler`]
//! translates each SQS event into one call of the send pipeline and its report back into the
//! Lambda answer.

pub mod handler;
pub mod wire;

pub use handler::{
    Deps, EARLIEST_DEADLINE_MS, HandlerError, LOCAL_DEADLINE_MS, effective_deadline, handle,
    received,
};
pub use wire::wire;

/// Every environment variable [`wire()`] reads, directly or through `gateway-core`
/// ([`gateway_core::config::ENV_VARS`] for the gateway config,
/// [`gateway_core::state::dynamodb::TABLE_ENV`] for the state table) and `RUST_LOG` for the
/// log filter; the AWS SDK's own variables, which Lambda sets, are not listed. `template.yaml`
/// gives the function exactly these, and `tests/tests/template.rs` checks both that [`wire()`]
/// reads each of them and that the template matches.
pub const ENV_VARS: &[&str] = &[
    "GATEWAY_MODE",
    "GATEWAY_CONFIG_FILE",
    "GMAIL_WORKSPACES_FILE",
    "QUEUE_DAILY_RATE_LIMIT",
    "CB_FAILURE_THRESHOLD",
    "CB_SUCCESS_THRESHOLD",
    "CB_TIMEOUT",
    "HEALTH_CHECK_INTERVAL",
    "HEALTH_CHECK_TIMEOUT",
    "GATEWAY_STATE_TABLE",
    "OUTBOUND_QUEUE_URL",
    "OUTBOUND_BULK_QUEUE_URL",
    "OUTBOUND_BULK_QUEUE_ARN",
    "ATTACHMENTS_BUCKET",
    "OUTBOUND_MAX_RECEIVE_COUNT",
    "OUTBOUND_ACCEPTANCE_WAIT",
    "EVENTS_QUEUE_URL",
    "METRICS_NAMESPACE",
    "RUST_LOG",
];

#[cfg(test)]
mod tests;
