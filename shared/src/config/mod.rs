//! Gateway configuration (ARCHITECTURE §2.2): the seed's JSON format, `global_defaults`, environment
//! overrides, secret references, legacy `workspaces.json` conversion and `GATEWAY_MODE`.
//!
//! Entry points: [`load_config`] (pure: documents and an env lookup in, effective [`Config`]
//! out), [`load_from_env`] (reads the files the environment names), [`convert_legacy`],
//! [`redacted_document`]. `docs/CONFIG.md` is the operator's reference.

mod document;
mod env;
mod issues;
mod legacy;
mod load;
mod model;
mod strict_json;
mod validate;

pub use document::{redacted_document, redacted_gateway};
pub use env::{ENV_VARS, EnvOverrides, GATEWAY_CONFIG_FILE, GMAIL_WORKSPACES_FILE};
pub use legacy::convert_legacy;
pub use load::{Loaded, load_config, load_from, load_from_env};
pub use model::*;
pub use validate::{
    ConfigErrors, ConfigIssue, DEFAULT_PRIORITY, DEFAULT_WEIGHT, MAX_FAILOVER_ATTEMPTS_MAX,
    PRIORITY_MAX, WEIGHT_MAX, default_breaker, default_health_check, default_http,
    default_rate_limits, is_valid_gateway_id,
};

#[cfg(test)]
mod tests;
