//! Loading: mode selection, the two sources, and the single place that reads files.
//!
//! `GATEWAY_MODE` decides which documents are in force. When it is unset the mode follows what
//! was given: a config document alone (or with workspaces) → `new`, workspaces alone →
//! `legacy`. A document given but not used by the mode is reported as a warning, so an
//! operator who sets `GMAIL_WORKSPACES_FILE` in `new` mode learns it has no effect.

use serde_json::Value;

use super::env::{EnvOverrides, GATEWAY_CONFIG_FILE, GATEWAY_MODE, GMAIL_WORKSPACES_FILE};
use super::legacy::convert_value;
use super::model::{Config, GatewayMode, GatewaySource};
use super::validate::{ConfigErrors, ConfigIssue, GatewayEntry, Issues, index, resolve};

/// A loaded configuration and the warnings found on the way (inline secrets, settings that
/// disagree, values ignored). Warnings never stop a load.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The effective configuration.
    pub config: Config,
    /// Warnings, each located by path or variable name.
    pub warnings: Vec<ConfigIssue>,
}

fn parse_json(text: &str, path: &str, is: &mut Issues) -> Option<Value> {
    match super::strict_json::parse(text) {
        Ok(v) => Some(v),
        Err(e) => {
            // serde_json's message names line and column, never the text around them.
            is.error(path, e.to_string());
            None
        }
    }
}

/// Loads the effective configuration from the config document and/or the legacy workspaces
/// document, with environment overrides read through `env`. Pure: no I/O.
///
/// Precedence for every setting: per-gateway value > environment > `global_defaults` >
/// built-in default. Every problem (in either document or the environment) is reported at
/// once; on success the config has at least one gateway, unique ids and acyclic failover.
pub fn load_config(
    config_json: Option<&str>,
    legacy_json: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    let mut is = Issues::default();
    let overrides = match EnvOverrides::from_lookup(env) {
        Ok(o) => o,
        Err(ConfigErrors(errors)) => {
            // Keep going with no overrides so file problems are reported in the same run.
            is.errors.extend(errors);
            EnvOverrides::default()
        }
    };
    let mode = match (overrides.mode, config_json, legacy_json) {
        (Some(mode), _, _) => mode,
        (None, None, Some(_)) => GatewayMode::Legacy,
        (None, _, _) => GatewayMode::New,
    };
    let use_config = matches!(mode, GatewayMode::New | GatewayMode::Hybrid);
    let use_legacy = matches!(mode, GatewayMode::Legacy | GatewayMode::Hybrid);
    let mode_name = match mode {
        GatewayMode::Legacy => "legacy",
        GatewayMode::New => "new",
        GatewayMode::Hybrid => "hybrid",
    };
    if use_config && config_json.is_none() {
        is.error(
            GATEWAY_CONFIG_FILE,
            format!("required in {mode_name} mode ({GATEWAY_MODE})"),
        );
    }
    if use_legacy && legacy_json.is_none() {
        is.error(
            GMAIL_WORKSPACES_FILE,
            format!("required in {mode_name} mode ({GATEWAY_MODE})"),
        );
    }
    if !use_config && config_json.is_some() {
        is.warn(
            GATEWAY_CONFIG_FILE,
            format!("ignored in {mode_name} mode ({GATEWAY_MODE})"),
        );
    }
    if !use_legacy && legacy_json.is_some() {
        is.warn(
            GMAIL_WORKSPACES_FILE,
            format!("ignored in {mode_name} mode ({GATEWAY_MODE})"),
        );
    }

    let doc = config_json
        .filter(|_| use_config)
        .and_then(|text| parse_json(text, "config", &mut is));
    let legacy = legacy_json
        .filter(|_| use_legacy)
        .and_then(|text| parse_json(text, "workspaces", &mut is))
        .map(|v| convert_value(&v, &mut is));
    if !is.errors.is_empty() && (doc.is_none() && use_config || legacy.is_none() && use_legacy) {
        return Err(ConfigErrors(is.errors));
    }

    // Legacy gateways first: in hybrid mode they keep their sender domains.
    let mut entries: Vec<GatewayEntry<'_>> = Vec::new();
    if let Some(converted) = &legacy {
        entries.extend(
            converted
                .gateways
                .iter()
                .map(|(path, value, ws)| GatewayEntry {
                    path: path.clone(),
                    value,
                    source: GatewaySource::LegacyWorkspace(ws.clone()),
                }),
        );
    }
    if let Some(Value::Array(gateways)) = doc.as_ref().and_then(|d| d.get("gateways")) {
        entries.extend(gateways.iter().enumerate().map(|(i, value)| GatewayEntry {
            path: index("gateways", i),
            value,
            source: GatewaySource::ConfigFile,
        }));
    }
    let config = resolve(doc.as_ref(), &entries, &overrides, mode, &mut is);
    match config {
        Some(config) if is.errors.is_empty() => Ok(Loaded {
            config,
            warnings: is.warnings,
        }),
        _ => Err(ConfigErrors(is.errors)),
    }
}

/// Loads the configuration named by the process environment: [`load_from`] on `std::env`.
pub fn load_from_env() -> Result<Loaded, ConfigErrors> {
    load_from(&|name| std::env::var(name).ok())
}

/// Loads the configuration named by `env`: reads `GATEWAY_CONFIG_FILE` and
/// `GMAIL_WORKSPACES_FILE` (when set) and calls [`load_config`] with `env`. The only I/O of the
/// config module; an unreadable file is an error naming its variable.
pub fn load_from(env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigErrors> {
    let mut errors = Vec::new();
    let mut read = |var: &str| -> Option<String> {
        let path = env(var).filter(|p| !p.trim().is_empty())?;
        match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) => {
                errors.push(ConfigIssue::new(var, format!("cannot read {path:?}: {e}")));
                None
            }
        }
    };
    let config = read(GATEWAY_CONFIG_FILE);
    let legacy = read(GMAIL_WORKSPACES_FILE);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    load_config(config.as_deref(), legacy.as_deref(), env)
}
