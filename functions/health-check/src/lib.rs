//! The health-check function (DESIGN §1): an EventBridge schedule invokes it every minute;
//! `main.rs` wires the dependencies once, [`handler`] runs one
//! [`gateway_core::health_check::HealthChecker::run`] per invocation and answers with its
//! summary. Which gateways are due, the thresholds and the records are `gateway-core`'s.

pub mod handler;

pub use handler::{Deps, handle};

/// Every environment variable `main.rs` reads, directly or through `gateway-core`
/// ([`gateway_core::config::ENV_VARS`] for the gateway config,
/// [`gateway_core::state::dynamodb::TABLE_ENV`] for the state table), `EVENTS_QUEUE_URL`,
/// `METRICS_NAMESPACE` and `RUST_LOG`. `template.yaml` gives the function exactly these, and
/// `tests/tests/template.rs` checks both that `main.rs` reads each of them and that the template
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
