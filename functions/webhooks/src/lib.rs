//! The webhooks function (ARCHITECTURE §1, §2.3): `POST /webhooks/{mailgun,sendgrid,ses}` behind API
//! Gateway (HTTP API, payload v2). [`wire()`] builds the dependencies once; [`handler`] routes
//! the request to [`gateway_core::webhooks::edge::Edge`], which authenticates it on the raw
//! bytes, normalises it, records the providers' acceptance evidence for the sender
//! ([`gateway_core::evidence`]) and queues its delivery events for the recorder.

pub mod handler;
pub mod wire;

pub use handler::handle;
pub use wire::wire;

/// Every environment variable the function reads: the gateway config's
/// ([`gateway_core::config::ENV_VARS`]; the Mailgun signing keys, SendGrid public keys and SNS
/// topics come from it), the state table (the replay cache and the acceptance evidence), the
/// events queue and `RUST_LOG`. `template.yaml` gives the function exactly these, and
/// `tests/tests/template.rs` checks both that [`wire()`] reads each of them and that the
/// template matches.
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
    "RUST_LOG",
];

#[cfg(test)]
mod tests;
