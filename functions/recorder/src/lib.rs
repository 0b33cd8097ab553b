//! The recorder function (ARCHITECTURE §1): [`wire()`] builds the dependencies once, [`handler`]
//! translates each SQS event of the events queue into one call of
//! [`gateway_core::recorder::Recorder::process`] and its report back into partial batch failures,
//! and writes the batch's metric lines ([`metrics`]). An hourly scheduled invocation purges the
//! records older than `RECORD_RETENTION_DAYS` ([`retention`]).

pub mod handler;
pub mod metrics;
pub mod retention;
pub mod wire;

pub use handler::{DeadLetters, Deps, HandlerError, handle, invoke};
pub use wire::wire;

/// Every environment variable [`wire()`] reads, directly or through `gateway-core`
/// ([`gateway_core::config::ENV_VARS`] for the gateway config,
/// [`gateway_core::state::dynamodb::TABLE_ENV`] for the state table), `METRICS_NAMESPACE` for
/// the metric lines, `RECORD_RETENTION_DAYS` for the scheduled purge and `RUST_LOG` for the log
/// filter; the AWS SDK's own variables, which
/// Lambda sets, are not listed. `template.yaml` gives the function exactly these, and
/// `tests/tests/template.rs` checks both that [`wire()`] reads each of them and that the
/// template matches.
pub const ENV_VARS: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_MAX_CONNECTIONS",
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
    "CUSTOMER_WEBHOOK_QUEUE_URL",
    "CUSTOMER_WEBHOOK_DLQ_URL",
    "CUSTOMER_WEBHOOK_MAX_ATTEMPTS",
    "CUSTOMER_WEBHOOK_TIMEOUT",
    "METRICS_NAMESPACE",
    "OUTBOUND_DLQ_ARN",
    "OUTBOUND_PARKED_QUEUE_URL",
    "RECORD_RETENTION_DAYS",
    "RUST_LOG",
];

#[cfg(test)]
mod tests;
