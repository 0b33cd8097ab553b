//! Environment overrides (ARCHITECTURE §2.2). The environment is read through a lookup function so
//! the loader stays pure and tests need no process environment.
//!
//! A variable set to a malformed value is an error naming the variable, never a silent
//! default: the original fell back to its defaults and nobody noticed. A variable set to the
//! empty string counts as unset, because deployment templates commonly pass optional
//! parameters through as `""`.

use std::num::NonZeroU32;
use std::time::Duration;

use super::issues::{ConfigErrors, Issues};
use super::model::{BreakerSettings, GatewayMode, HealthCheckSettings, Limit};
use crate::duration::parse_duration;

/// `GATEWAY_MODE`.
pub const GATEWAY_MODE: &str = "GATEWAY_MODE";
/// `GATEWAY_CONFIG_FILE`: path of the gateway config document.
pub const GATEWAY_CONFIG_FILE: &str = "GATEWAY_CONFIG_FILE";
/// `GMAIL_WORKSPACES_FILE`: path of the legacy `workspaces.json`.
pub const GMAIL_WORKSPACES_FILE: &str = "GMAIL_WORKSPACES_FILE";
/// `QUEUE_DAILY_RATE_LIMIT`: system-wide daily recipient cap.
pub const QUEUE_DAILY_RATE_LIMIT: &str = "QUEUE_DAILY_RATE_LIMIT";
/// `CB_FAILURE_THRESHOLD`.
pub const CB_FAILURE_THRESHOLD: &str = "CB_FAILURE_THRESHOLD";
/// `CB_SUCCESS_THRESHOLD`.
pub const CB_SUCCESS_THRESHOLD: &str = "CB_SUCCESS_THRESHOLD";
/// `CB_TIMEOUT`.
pub const CB_TIMEOUT: &str = "CB_TIMEOUT";
/// `HEALTH_CHECK_INTERVAL`.
pub const HEALTH_CHECK_INTERVAL: &str = "HEALTH_CHECK_INTERVAL";
/// `HEALTH_CHECK_TIMEOUT`.
pub const HEALTH_CHECK_TIMEOUT: &str = "HEALTH_CHECK_TIMEOUT";

/// Every variable [`EnvOverrides::from_lookup`] (and so [`super::load_from_env`]) reads. A
/// deployment passes each of them to every function that loads the config (empty when unset);
/// the template drift test (`tests/tests/template.rs`) holds the template to this list.
pub const ENV_VARS: [&str; 9] = [
    GATEWAY_MODE,
    GATEWAY_CONFIG_FILE,
    GMAIL_WORKSPACES_FILE,
    QUEUE_DAILY_RATE_LIMIT,
    CB_FAILURE_THRESHOLD,
    CB_SUCCESS_THRESHOLD,
    CB_TIMEOUT,
    HEALTH_CHECK_INTERVAL,
    HEALTH_CHECK_TIMEOUT,
];

/// The parsed environment overrides. `None` means the variable is unset (or empty).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvOverrides {
    /// `GATEWAY_MODE`.
    pub mode: Option<GatewayMode>,
    /// `GATEWAY_CONFIG_FILE`.
    pub config_file: Option<String>,
    /// `GMAIL_WORKSPACES_FILE`.
    pub workspaces_file: Option<String>,
    /// `QUEUE_DAILY_RATE_LIMIT`: a positive count, or `unlimited` (`Some(None)`).
    pub system_daily: Option<Limit>,
    /// `CB_FAILURE_THRESHOLD`.
    pub cb_failure_threshold: Option<NonZeroU32>,
    /// `CB_SUCCESS_THRESHOLD`.
    pub cb_success_threshold: Option<NonZeroU32>,
    /// `CB_TIMEOUT` (a config duration such as `60s`; above zero).
    pub cb_timeout: Option<Duration>,
    /// `HEALTH_CHECK_INTERVAL` (above zero).
    pub health_check_interval: Option<Duration>,
    /// `HEALTH_CHECK_TIMEOUT` (above zero).
    pub health_check_timeout: Option<Duration>,
}

impl EnvOverrides {
    /// Reads every variable through `env`; all malformed values are reported at once, each
    /// located at the variable's name.
    pub fn from_lookup(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut is = Issues::default();
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let out = Self {
            mode: get(GATEWAY_MODE).and_then(|v| match v.trim() {
                "legacy" => Some(GatewayMode::Legacy),
                "new" => Some(GatewayMode::New),
                "hybrid" => Some(GatewayMode::Hybrid),
                other => {
                    is.error(
                        GATEWAY_MODE,
                        format!("invalid mode {other:?}; expected legacy, new or hybrid"),
                    );
                    None
                }
            }),
            config_file: get(GATEWAY_CONFIG_FILE),
            workspaces_file: get(GMAIL_WORKSPACES_FILE),
            system_daily: get(QUEUE_DAILY_RATE_LIMIT)
                .and_then(|v| limit(&mut is, QUEUE_DAILY_RATE_LIMIT, &v)),
            cb_failure_threshold: get(CB_FAILURE_THRESHOLD)
                .and_then(|v| positive(&mut is, CB_FAILURE_THRESHOLD, &v)),
            cb_success_threshold: get(CB_SUCCESS_THRESHOLD)
                .and_then(|v| positive(&mut is, CB_SUCCESS_THRESHOLD, &v)),
            cb_timeout: get(CB_TIMEOUT).and_then(|v| duration(&mut is, CB_TIMEOUT, &v)),
            health_check_interval: get(HEALTH_CHECK_INTERVAL)
                .and_then(|v| duration(&mut is, HEALTH_CHECK_INTERVAL, &v)),
            health_check_timeout: get(HEALTH_CHECK_TIMEOUT)
                .and_then(|v| duration(&mut is, HEALTH_CHECK_TIMEOUT, &v)),
        };
        if is.errors.is_empty() {
            Ok(out)
        } else {
            Err(ConfigErrors(is.errors))
        }
    }

    /// Applies the breaker and health-check overrides over `global_defaults` (env wins there;
    /// a per-gateway value still wins over env).
    pub(crate) fn apply(&self, breaker: &mut BreakerSettings, health: &mut HealthCheckSettings) {
        if let Some(n) = self.cb_failure_threshold {
            breaker.failure_threshold = n;
        }
        if let Some(n) = self.cb_success_threshold {
            breaker.success_threshold = n;
        }
        if let Some(d) = self.cb_timeout {
            breaker.timeout = d;
        }
        if let Some(d) = self.health_check_interval {
            health.interval = d;
        }
        if let Some(d) = self.health_check_timeout {
            health.timeout = d;
        }
    }
}

fn positive(is: &mut Issues, name: &str, v: &str) -> Option<NonZeroU32> {
    match v.trim().parse::<u32>().ok().and_then(NonZeroU32::new) {
        Some(n) => Some(n),
        None => {
            is.error(
                name,
                format!("invalid value {v:?}: expected a positive integer"),
            );
            None
        }
    }
}

fn limit(is: &mut Issues, name: &str, v: &str) -> Option<Limit> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("unlimited") {
        return Some(None);
    }
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Some(Some(n)),
        _ => {
            is.error(
                name,
                format!(
                    "invalid value {v:?}: expected a positive integer, or \"unlimited\" \
                     (0 is not unlimited)"
                ),
            );
            None
        }
    }
}

fn duration(is: &mut Issues, name: &str, v: &str) -> Option<Duration> {
    match parse_duration(v) {
        Ok(d) if d.is_zero() => {
            is.error(name, "non-positive duration; must be above 0");
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            is.error(name, e.to_string());
            None
        }
    }
}

#[cfg(test)]
mod env_vars_tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use super::{ENV_VARS, EnvOverrides};

    #[test]
    fn env_vars_lists_exactly_what_the_overrides_read() {
        let asked = RefCell::new(BTreeSet::new());
        let lookup = |name: &str| {
            asked.borrow_mut().insert(name.to_owned());
            None
        };
        assert!(EnvOverrides::from_lookup(&lookup).is_ok());
        let listed: BTreeSet<String> = ENV_VARS.iter().map(|v| (*v).to_owned()).collect();
        assert_eq!(asked.into_inner(), listed);
        assert_eq!(listed.len(), ENV_VARS.len(), "ENV_VARS has a duplicate");
    }
}
