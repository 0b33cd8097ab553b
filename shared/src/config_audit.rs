//! The configuration's own record (ARCHITECTURE §2.2, §2.4): which gateways existed when, every change
//! to them (`gateway_config_audit`), and the routing rules in force (`gateway_routing_rules`).
//!
//! A process that loads the config (the recorder at start-up, `gateway serve`) describes it as a
//! [`ConfigEvent`]: every gateway as its redacted config-document entry, and the routing rules
//! derived from it. The recorder compares the event with the latest audited state and writes one
//! audit row per difference ([`changes`]):
//! - a gateway new or re-created → `CREATED`;
//! - a gateway gone → `DELETED` (its last config as `old_config`);
//! - only `enabled` changed → `ENABLED` / `DISABLED`;
//! - anything else changed → `UPDATED` (and, when `enabled` changed too, an `ENABLED` /
//!   `DISABLED` row after it).
//!
//! Re-applying the same config changes nothing, so every cold start may send it. An event older
//! than the latest one applied is ignored (a slow instance starting with the previous config
//! must not revert the audit). Secrets never reach either table: the entries are redacted
//! ([`crate::config::redacted_gateway`]): references are kept, inline literals replaced.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::clock::EpochMillis;
use crate::config::{Config, redacted_gateway};
use crate::pattern::SenderPattern;

/// The effective configuration at `at`, as the recorder audits it (`type: "config"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigEvent {
    /// Every gateway, as its redacted config-document entry (with `id` and `enabled`).
    pub gateways: Vec<Value>,
    /// The routing rules derived from the gateways.
    pub rules: Vec<RoutingRule>,
    /// Who loaded it (`changed_by`), e.g. `recorder (GATEWAY_CONFIG_FILE=/var/task/config.json)`.
    pub changed_by: String,
    /// Why, e.g. `configuration loaded at start-up`.
    #[serde(default)]
    pub reason: Option<String>,
    /// When it was loaded (epoch ms).
    pub at: EpochMillis,
}

/// One `gateway_routing_rules` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingRule {
    /// `PATTERN` (`*`), `DOMAIN` (`@domain`, `@*.domain`), `USER` (one address) or `FALLBACK`
    /// (a gateway that routes no sender itself and only takes failover).
    pub rule_type: String,
    /// The gateway the rule sends to.
    pub gateway_id: String,
    /// The gateway's priority (lower wins).
    pub priority: u32,
    /// `{"pattern", "exclude", "failover_to"}` (JSON).
    pub conditions: Value,
    /// Whether the gateway is enabled.
    pub enabled: bool,
}

impl ConfigEvent {
    /// Describes `config`.
    pub fn of(config: &Config, changed_by: &str, reason: Option<&str>, at: EpochMillis) -> Self {
        Self {
            gateways: config.gateways.iter().map(redacted_gateway).collect(),
            rules: routing_rules(config),
            // The columns hold 255 characters.
            changed_by: changed_by.chars().take(255).collect(),
            reason: reason.map(str::to_owned),
            at,
        }
    }

    /// The gateways by id.
    pub fn by_id(&self) -> BTreeMap<String, &Value> {
        self.gateways
            .iter()
            .filter_map(|g| Some((g.get("id")?.as_str()?.to_owned(), g)))
            .collect()
    }
}

/// The routing rules of `config`: one per `can_route` pattern of each gateway, or a `FALLBACK`
/// rule for a gateway that routes nobody itself.
pub fn routing_rules(config: &Config) -> Vec<RoutingRule> {
    let mut rules = Vec::new();
    for g in &config.gateways {
        let exclude: Vec<String> = g
            .routing
            .exclude_patterns
            .iter()
            .map(ToString::to_string)
            .collect();
        let rule = |rule_type: &str, pattern: Option<String>| RoutingRule {
            rule_type: rule_type.to_owned(),
            gateway_id: g.id.clone(),
            priority: g.priority,
            conditions: json!({
                "pattern": pattern,
                "exclude": exclude,
                "failover_to": g.routing.failover_to,
            }),
            enabled: g.enabled,
        };
        if g.routing.can_route.is_empty() {
            rules.push(rule("FALLBACK", None));
        }
        for p in &g.routing.can_route {
            let rule_type = match p {
                SenderPattern::Any => "PATTERN",
                SenderPattern::Domain(_) | SenderPattern::Subdomain(_) => "DOMAIN",
                SenderPattern::Address(_) => "USER",
            };
            rules.push(rule(rule_type, Some(p.to_string())));
        }
    }
    rules
}

/// One `gateway_config_audit` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    /// The gateway.
    pub gateway_id: String,
    /// `CREATED`, `UPDATED`, `DELETED`, `ENABLED` or `DISABLED`.
    pub action: String,
    /// Its config before (redacted), absent for `CREATED`.
    pub old_config: Option<Value>,
    /// Its config after (redacted), absent for `DELETED`.
    pub new_config: Option<Value>,
    /// Who changed it.
    pub changed_by: String,
    /// Why.
    pub reason: Option<String>,
    /// When (the event's time).
    pub at: EpochMillis,
}

/// The audit rows that take the audited state `current` (each gateway's latest config; absent
/// when it never existed or was deleted) to `event`'s, in gateway-id order.
pub fn changes(current: &BTreeMap<String, Value>, event: &ConfigEvent) -> Vec<AuditRow> {
    let next = event.by_id();
    let row = |id: &str, action: &str, old: Option<&Value>, new: Option<&Value>| AuditRow {
        gateway_id: id.to_owned(),
        action: action.to_owned(),
        old_config: old.cloned(),
        new_config: new.cloned(),
        changed_by: event.changed_by.clone(),
        reason: event.reason.clone(),
        at: event.at,
    };
    let mut rows = Vec::new();
    let mut ids: Vec<&String> = current.keys().chain(next.keys()).collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        match (current.get(id), next.get(id).copied()) {
            (None, Some(new)) => rows.push(row(id, "CREATED", None, Some(new))),
            (Some(old), None) => rows.push(row(id, "DELETED", Some(old), None)),
            (Some(old), Some(new)) if old != new => {
                let enabled = |v: &Value| v.get("enabled").and_then(Value::as_bool);
                let without_enabled = |v: &Value| {
                    let mut v = v.clone();
                    if let Some(o) = v.as_object_mut() {
                        o.remove("enabled");
                    }
                    v
                };
                if without_enabled(old) != without_enabled(new) {
                    rows.push(row(id, "UPDATED", Some(old), Some(new)));
                }
                if enabled(old) != enabled(new) {
                    let action = if enabled(new) == Some(true) {
                        "ENABLED"
                    } else {
                        "DISABLED"
                    };
                    rows.push(row(id, action, Some(old), Some(new)));
                }
            }
            _ => {}
        }
    }
    rows
}

/// The audited state after `rows` were applied to `current`.
pub fn after(current: &mut BTreeMap<String, Value>, rows: &[AuditRow]) {
    for r in rows {
        match &r.new_config {
            Some(new) => {
                current.insert(r.gateway_id.clone(), new.clone());
            }
            None => {
                current.remove(&r.gateway_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::load_config;

    fn config(doc: Value) -> Config {
        load_config(Some(&doc.to_string()), None, &|_: &str| None)
            .unwrap()
            .config
    }

    fn gateway(id: &str, enabled: bool, priority: u32, can_route: &[&str]) -> Value {
        json!({"id": id, "type": "mailgun", "enabled": enabled, "priority": priority,
               "mailgun": {"api_key": "env:K", "domain": "mg.example.com"},
               "routing": {"can_route": can_route}})
    }

    fn event(gateways: Vec<Value>, at: EpochMillis) -> ConfigEvent {
        ConfigEvent::of(
            &config(json!({ "gateways": gateways })),
            "test",
            Some("why"),
            at,
        )
    }

    fn actions(rows: &[AuditRow]) -> Vec<(String, String)> {
        rows.iter()
            .map(|r| (r.gateway_id.clone(), r.action.clone()))
            .collect()
    }

    #[test]
    fn each_kind_of_change_is_audited_once_and_a_replay_changes_nothing() {
        let mut state = BTreeMap::new();
        let first = event(
            vec![
                gateway("a", true, 1, &["*"]),
                gateway("b", true, 2, &["@clinic.example"]),
            ],
            1,
        );
        let rows = changes(&state, &first);
        assert_eq!(
            actions(&rows),
            [
                ("a".into(), "CREATED".into()),
                ("b".into(), "CREATED".into())
            ]
        );
        assert!(rows[0].old_config.is_none() && rows[0].new_config.is_some());
        after(&mut state, &rows);
        assert!(
            changes(&state, &first).is_empty(),
            "a replay changes nothing"
        );

        let second = event(
            vec![
                gateway("a", false, 1, &["*"]),
                gateway("c", true, 3, &["x@clinic.example"]),
            ],
            2,
        );
        let rows = changes(&state, &second);
        assert_eq!(
            actions(&rows),
            [
                ("a".into(), "DISABLED".into()),
                ("b".into(), "DELETED".into()),
                ("c".into(), "CREATED".into())
            ]
        );
        assert!(rows[1].new_config.is_none());
        after(&mut state, &rows);

        let third = event(
            vec![
                gateway("a", true, 5, &["*"]),
                gateway("c", true, 3, &["x@clinic.example"]),
            ],
            3,
        );
        assert_eq!(
            actions(&changes(&state, &third)),
            [
                ("a".into(), "UPDATED".into()),
                ("a".into(), "ENABLED".into())
            ]
        );
    }

    #[test]
    fn routing_rules_follow_the_can_route_patterns() {
        let e = event(
            vec![
                gateway("a", true, 1, &["*", "@clinic.example", "dr@x.example"]),
                gateway("b", false, 2, &[]),
            ],
            1,
        );
        let kinds: Vec<(&str, &str)> = e
            .rules
            .iter()
            .map(|r| (r.gateway_id.as_str(), r.rule_type.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("a", "PATTERN"),
                ("a", "DOMAIN"),
                ("a", "USER"),
                ("b", "FALLBACK")
            ]
        );
        assert_eq!(e.rules[1].conditions["pattern"], "@clinic.example");
        assert!(!e.rules[3].enabled);
    }

    #[test]
    fn inline_secrets_never_reach_the_audit() {
        let mut g = gateway("a", true, 1, &["*"]);
        g["mailgun"]["api_key"] = json!("key-inline-s3cret");
        let e = event(vec![g], 1);
        let text = serde_json::to_string(&changes(&BTreeMap::new(), &e)).unwrap();
        assert!(!text.contains("key-inline-s3cret"), "{text}");
        assert!(text.contains("<redacted>"));
    }
}
