//! The status function (ARCHITECTURE §1, §2.3): `GET /api/gateways/{status,health,metrics,config}`,
//! `GET /api/messages/{id}`, the message search `GET /api/messages?…` and the `GET /status` page behind API Gateway (HTTP API, payload
//! v2, IAM authorization on every route). [`wire()`] builds the dependencies once; [`handler`]
//! hands the request to [`gateway_core::status::StatusApi`], which reads shared state
//! (DynamoDB) and the record of delivery (MySQL).

pub mod handler;
pub mod wire;

pub use handler::handle;
pub use wire::wire;

/// Every environment variable the function reads: the gateway config's
/// ([`gateway_core::config::ENV_VARS`]), the database (`DATABASE_URL`,
/// `DATABASE_MAX_CONNECTIONS`), the state table and `RUST_LOG`. `template.yaml` gives the
/// function exactly these, and `tests/tests/template.rs` checks both that [`wire()`] reads each
/// of them and that the template matches.
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
    "RUST_LOG",
];

#[cfg(test)]
mod tests;
