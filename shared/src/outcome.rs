//! How one provider call ended, as the breaker counts it, the record stores it and the events
//! carry it. A leaf: the breaker, the providers and the events all depend on this vocabulary,
//! and it depends on nothing.

use serde::{Deserialize, Serialize};

/// The class of one provider call's result (ARCHITECTURE §3.2). Decides failover, retry and whether
/// the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeClass {
    /// Accepted.
    Ok,
    /// Invalid recipient or content: no retry, no failover, not a provider failure.
    Permanent,
    /// 429 or a provider quota.
    Throttled,
    /// 5xx or a connection error.
    Unavailable,
    /// 401/403: bad credentials.
    Auth,
    /// Timeout after the request was sent: the provider may have accepted it.
    Ambiguous,
}
