//! The health-check function (ARCHITECTURE §1): an EventBridge schedule invokes it every minute;
//! [`wire()`] builds the dependencies once, [`handler`] runs one
//! [`gateway_core::health::HealthChecker::run`] per invocation and answers with its
//! summary. Which gateways are due, the thresholds and the records are `gateway-core`'s.

pub mod handler;
pub mod wire;

pub use handler::{Deps, handle};
pub use wire::wire;

/// Every environment variable [`wire()`] reads, directly or through `gateway-core`
/// ([`gateway_core::config::ENV_VARS`] for the gateway config,
/// [`gateway_core::state::dynamodb::TABLE_ENV`] for the state table), `EVENTS_QUEUE_URL`,
/// `METRICS_NAMESPACE` and `RUST_LOG`. `template.yaml` gives the function exactly these, and
/// `tests/tests/template.rs` checks both that [`wire()`] reads each of them and that the template
/// matches.
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
    "EVENTS_QUEUE_URL",
    "METRICS_NAMESPACE",
    "RUST_LOG",
];

#[cfg(test)]
mod tests;
