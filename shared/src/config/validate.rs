//! Validation of the config document as a `serde_json::Value`, resolving it into the effective
//! [`Config`](super::Config) in the same pass.
//!
//! Why one pass over a `Value` instead of `serde` derive: serde stops at the first problem, and
//! an operator fixing a config one error per deploy is how limits end up disabled. Here every
//! problem is collected with its JSON path, and nothing is resolved unless all of them are fixed.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::time::Duration;

use serde_json::{Map, Value};

use super::env::EnvOverrides;
pub(crate) use super::issues::Issues;
pub use super::issues::{ConfigErrors, ConfigIssue};
use super::model::*;
use crate::duration::parse_duration;
use crate::pattern::SenderPattern;

/// `parent.key`, or `key` at the root.
pub(crate) fn at(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[i]`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// Gateway id syntax: `[A-Za-z0-9._-]{1,64}` (ids become DynamoDB key parts and metric labels).
pub fn is_valid_gateway_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// True when `d` is a domain name as sender patterns accept it.
pub(crate) fn is_domain(d: &str) -> bool {
    matches!(
        SenderPattern::parse(&format!("@{d}")),
        Ok(SenderPattern::Domain(_))
    )
}

/// Upper bound of `priority` (inclusive; the lower bound is 0).
pub const PRIORITY_MAX: u32 = 10_000;
/// Upper bound of `weight` (inclusive; the lower bound is 0).
pub const WEIGHT_MAX: u32 = 10_000;
/// Upper bound of `routing.max_failover_attempts` (inclusive): each attempt costs Lambda time.
pub const MAX_FAILOVER_ATTEMPTS_MAX: u32 = 20;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON object being read at `path`.
#[derive(Debug, Clone)]
pub(crate) struct Obj<'a> {
    pub(crate) path: String,
    pub(crate) map: &'a Map<String, Value>,
}

/// Reads `v` as an object, reporting anything else at `path`.
pub(crate) fn as_object<'a>(is: &mut Issues, path: &str, v: &'a Value) -> Option<Obj<'a>> {
    match v {
        Value::Object(map) => Some(Obj {
            path: path.to_owned(),
            map,
        }),
        other => {
            is.error(
                path,
                format!("expected an object, found {}", type_name(other)),
            );
            None
        }
    }
}

impl<'a> Obj<'a> {
    /// Reports every key not in `allowed`.
    pub(crate) fn only_keys(&self, is: &mut Issues, allowed: &[&str]) {
        for key in self.map.keys() {
            if !allowed.contains(&key.as_str()) {
                is.error(
                    at(&self.path, key),
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                );
            }
        }
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    fn wrong(&self, is: &mut Issues, key: &str, expected: &str, found: &Value) {
        is.error(
            at(&self.path, key),
            format!("expected {expected}, found {}", type_name(found)),
        );
    }

    /// An optional string; an empty string is an error.
    pub(crate) fn string(&self, is: &mut Issues, key: &str) -> Option<&'a str> {
        match self.get(key)? {
            Value::String(s) if s.trim().is_empty() => {
                is.error(at(&self.path, key), "must not be empty");
                None
            }
            Value::String(s) => Some(s),
            other => {
                self.wrong(is, key, "a string", other);
                None
            }
        }
    }

    /// A required, non-empty string.
    pub(crate) fn required_string(&self, is: &mut Issues, key: &str) -> Option<&'a str> {
        if !self.has(key) {
            is.error(at(&self.path, key), "required");
            return None;
        }
        self.string(is, key)
    }

    pub(crate) fn bool(&self, is: &mut Issues, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            other => {
                self.wrong(is, key, "a boolean", other);
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub(crate) fn u32_in(&self, is: &mut Issues, key: &str, min: u32, max: u32) -> Option<u32> {
        let v = self.get(key)?;
        match v.as_i64() {
            Some(n) if n >= i64::from(min) && n <= i64::from(max) => u32::try_from(n).ok(),
            Some(n) => {
                is.error(
                    at(&self.path, key),
                    format!("{n} is out of range {min}..={max}"),
                );
                None
            }
            None if v.is_u64() || v.is_number() => {
                is.error(
                    at(&self.path, key),
                    format!("expected an integer in {min}..={max}"),
                );
                None
            }
            None => {
                self.wrong(is, key, "an integer", v);
                None
            }
        }
    }

    /// A positive count (thresholds, `max_requests`).
    pub(crate) fn positive(&self, is: &mut Issues, key: &str) -> Option<NonZeroU32> {
        let v = self.get(key)?;
        match v.as_i64() {
            Some(n) if n > 0 => match u32::try_from(n).ok().and_then(NonZeroU32::new) {
                Some(n) => Some(n),
                None => {
                    is.error(at(&self.path, key), format!("{n} is too large"));
                    None
                }
            },
            Some(n) => {
                is.error(
                    at(&self.path, key),
                    format!("non-positive value {n}; must be at least 1"),
                );
                None
            }
            None if v.is_number() => {
                is.error(at(&self.path, key), "expected a positive integer");
                None
            }
            None => {
                self.wrong(is, key, "a positive integer", v);
                None
            }
        }
    }

    /// A limit: absent → `None`; `null` → unlimited; a positive integer → that limit.
    pub(crate) fn limit(&self, is: &mut Issues, key: &str) -> Option<Limit> {
        self.get(key)
            .and_then(|v| limit_value(is, &at(&self.path, key), v))
    }

    /// A duration string; zero is refused unless `allow_zero`.
    pub(crate) fn duration(
        &self,
        is: &mut Issues,
        key: &str,
        allow_zero: bool,
    ) -> Option<Duration> {
        match self.get(key)? {
            Value::String(s) => match parse_duration(s) {
                Ok(d) if d.is_zero() && !allow_zero => {
                    is.error(
                        at(&self.path, key),
                        "non-positive duration; must be above 0",
                    );
                    None
                }
                Ok(d) => Some(d),
                Err(e) => {
                    is.error(at(&self.path, key), e.to_string());
                    None
                }
            },
            other => {
                self.wrong(is, key, "a duration string such as \"30s\"", other);
                None
            }
        }
    }

    /// A number in [0, 1].
    pub(crate) fn fraction(&self, is: &mut Issues, key: &str) -> Option<f64> {
        let v = self.get(key)?;
        match v.as_f64() {
            Some(f) if (0.0..=1.0).contains(&f) => Some(f),
            Some(f) => {
                is.error(at(&self.path, key), format!("{f} is outside [0, 1]"));
                None
            }
            None => {
                self.wrong(is, key, "a number in [0, 1]", v);
                None
            }
        }
    }

    /// An array of strings (each non-empty).
    pub(crate) fn strings(&self, is: &mut Issues, key: &str) -> Option<Vec<(String, &'a str)>> {
        let path = at(&self.path, key);
        match self.get(key)? {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) if s.trim().is_empty() => {
                            is.error(index(&path, i), "must not be empty");
                        }
                        Value::String(s) => out.push((index(&path, i), s.as_str())),
                        other => is.error(
                            index(&path, i),
                            format!("expected a string, found {}", type_name(other)),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                self.wrong(is, key, "an array of strings", other);
                None
            }
        }
    }

    /// A secret field: a reference (`env:`, `secretsmanager:`, `ssm:`) or, with a warning, a
    /// literal. The literal itself never reaches an issue message.
    pub(crate) fn secret(&self, is: &mut Issues, key: &str, required: bool) -> Option<SecretRef> {
        let path = at(&self.path, key);
        let s = match self.get(key) {
            None if required => {
                is.error(path, "required");
                return None;
            }
            None => return None,
            Some(Value::String(s)) => s,
            Some(other) => {
                self.wrong(is, key, "a secret reference string", other);
                return None;
            }
        };
        if s.trim().is_empty() {
            is.error(path, "must not be empty");
            return None;
        }
        let secret = SecretRef::parse(s);
        let empty = match &secret {
            SecretRef::Env(name) => name.is_empty().then_some("env: needs a variable name"),
            SecretRef::SecretsManager { arn, json_key } => {
                if arn.is_empty() {
                    Some("secretsmanager: needs an ARN or secret name")
                } else if json_key.as_deref() == Some("") {
                    Some("secretsmanager: `#` must be followed by a JSON key")
                } else {
                    None
                }
            }
            SecretRef::Ssm(p) => p.is_empty().then_some("ssm: needs a parameter path"),
            SecretRef::Inline(_) => None,
        };
        if let Some(msg) = empty {
            is.error(path, msg);
            return None;
        }
        if secret.is_inline() {
            is.warn(
                path,
                "inline secret; use env:, secretsmanager: or ssm: outside local runs",
            );
        }
        Some(secret)
    }

    /// A nested object, checked to be one.
    pub(crate) fn object(&self, is: &mut Issues, key: &str) -> Option<Obj<'a>> {
        let v = self.get(key)?;
        as_object(is, &at(&self.path, key), v)
    }
}

/// A limit value at `path`: `null` → unlimited, positive integer → that limit.
pub(crate) fn limit_value(is: &mut Issues, path: &str, v: &Value) -> Option<Limit> {
    match v {
        Value::Null => Some(None),
        v => match v.as_i64() {
            Some(n) if n > 0 => u64::try_from(n).ok().map(Some),
            Some(n) => {
                is.error(
                    path,
                    format!("non-positive limit {n}; use null for unlimited"),
                );
                None
            }
            None => match v.as_u64() {
                Some(n) => Some(Some(n)),
                None => {
                    is.error(
                        path,
                        format!(
                            "expected a positive integer or null (unlimited), found {}",
                            type_name(v)
                        ),
                    );
                    None
                }
            },
        },
    }
}

// ---- built-in defaults (reference/original-system.md) ----

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Built-in rate limits: 2000/d, 200/user/d, 50/h, burst 10 refilling 10/s.
pub fn default_rate_limits() -> RateLimits {
    RateLimits {
        workspace_daily: Some(2000),
        per_user_daily: Some(200),
        per_hour: Some(50),
        burst_limit: Some(10),
        burst_refill_per_second: 10.0,
        custom_user_limits: BTreeMap::new(),
    }
}

/// Built-in breaker: enabled, 10 failures in 60 s open it for 60 s, 5 successes close it,
/// 100 half-open trial sends, no ratio.
pub fn default_breaker() -> BreakerSettings {
    BreakerSettings {
        enabled: true,
        failure_threshold: nz(10),
        success_threshold: nz(5),
        timeout: Duration::from_secs(60),
        max_requests: nz(100),
        window: Duration::from_secs(60),
        failure_ratio: None,
    }
}

/// Built-in health check: enabled, every 30 s, 10 s timeout, unhealthy after 3 failures,
/// healthy after 2 successes.
pub fn default_health_check() -> HealthCheckSettings {
    HealthCheckSettings {
        enabled: true,
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(10),
        failure_threshold: nz(3),
        success_threshold: nz(2),
    }
}

/// Built-in HTTP settings: 5 s connect, 30 s whole request.
pub fn default_http() -> HttpSettings {
    HttpSettings {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
    }
}

/// Default `priority` of a gateway.
pub const DEFAULT_PRIORITY: u32 = 100;
/// Default `weight` of a gateway.
pub const DEFAULT_WEIGHT: u32 = 100;

// ---- resolution ----

/// Defaults every gateway starts from: built-in, then `global_defaults`, then env.
#[derive(Debug, Clone)]
struct Defaults {
    rate_limits: RateLimits,
    /// Whether `global_defaults` set `burst_refill_per_second` (else it follows `burst_limit`).
    refill_explicit: bool,
    breaker: BreakerSettings,
    health_check: HealthCheckSettings,
}

/// One gateway definition to resolve, with where it came from.
#[derive(Debug)]
pub(crate) struct GatewayEntry<'a> {
    pub(crate) path: String,
    pub(crate) value: &'a Value,
    pub(crate) source: GatewaySource,
}

/// The config-file document's top level, resolved.
#[derive(Debug)]
struct TopLevel {
    customer_webhooks: Vec<CustomerWebhook>,
    defaults: Defaults,
    routing: Routing,
    system_limits: SystemLimits,
    http: HttpSettings,
    global_strategy: Option<Strategy>,
    suppression: SuppressionSettings,
}

const TOP_KEYS: &[&str] = &[
    "$schema",
    "gateways",
    "global_defaults",
    "routing",
    "system_limits",
    "customer_webhooks",
    "suppression",
];
const RATE_KEYS: &[&str] = &[
    "workspace_daily",
    "per_user_daily",
    "per_hour",
    "burst_limit",
    "burst_refill_per_second",
    "custom_user_limits",
];
const BREAKER_KEYS: &[&str] = &[
    "enabled",
    "failure_threshold",
    "success_threshold",
    "timeout",
    "max_requests",
    "window",
    "failure_ratio",
];
const HEALTH_KEYS: &[&str] = &[
    "enabled",
    "interval",
    "timeout",
    "failure_threshold",
    "success_threshold",
];
const GATEWAY_KEYS: &[&str] = &[
    "id",
    "type",
    "display_name",
    "domain",
    "enabled",
    "priority",
    "weight",
    "rate_limits",
    "routing",
    "circuit_breaker",
    "health_check",
];

/// Resolves a document (`None` in legacy mode: built-in defaults only) plus the gateway
/// entries into the effective config, or every error found.
pub(crate) fn resolve(
    doc: Option<&Value>,
    entries: &[GatewayEntry<'_>],
    env: &EnvOverrides,
    mode: GatewayMode,
    is: &mut Issues,
) -> Option<Config> {
    let top = match doc {
        Some(doc) => top_level(doc, env, is),
        None => Some(top_level_defaults(env)),
    };
    let mut gateways = Vec::with_capacity(entries.len());
    if let Some(top) = &top {
        for entry in entries {
            if let Some(g) = gateway(entry, &top.defaults, is) {
                gateways.push(g);
            }
        }
    }
    cross_checks(entries, is);
    if entries.is_empty() && !is.errors.iter().any(|e| e.path == "gateways") {
        is.error(
            "gateways",
            "no gateway configured; at least one is required",
        );
    }
    let top = top?;
    if let (Some(global), true) = (top.global_strategy, doc.is_some())
        && global != top.routing.strategy
    {
        is.warn(
            "global_defaults.routing_strategy",
            format!(
                "{global} disagrees with routing.strategy {}; routing.strategy is used",
                top.routing.strategy
            ),
        );
    }
    if !is.errors.is_empty() {
        return None;
    }
    Some(Config {
        gateways,
        routing: top.routing,
        system_limits: top.system_limits,
        http: top.http,
        mode,
        customer_webhooks: top.customer_webhooks,
        suppression: top.suppression,
    })
}

fn top_level_defaults(env: &EnvOverrides) -> TopLevel {
    let mut defaults = Defaults {
        rate_limits: default_rate_limits(),
        refill_explicit: false,
        breaker: default_breaker(),
        health_check: default_health_check(),
    };
    env.apply(&mut defaults.breaker, &mut defaults.health_check);
    TopLevel {
        customer_webhooks: Vec::new(),
        defaults,
        routing: default_routing(Strategy::Priority),
        system_limits: SystemLimits {
            daily: env.system_daily.unwrap_or(None),
            transactional_reserve_bp: crate::config::model::DEFAULT_TRANSACTIONAL_RESERVE_BP,
        },
        http: default_http(),
        global_strategy: None,
        suppression: SuppressionSettings::default(),
    }
}

fn default_routing(strategy: Strategy) -> Routing {
    Routing {
        strategy,
        rules: Vec::new(),
        failover_enabled: true,
        load_balancing_enabled: false,
        health_check_required: true,
        circuit_breaker_required: true,
        max_failover_attempts: nz(3),
        ambiguous_policy: AmbiguousPolicy::Defer,
        pinned_failover: false,
    }
}

fn strategy_at(is: &mut Issues, path: &str, v: &Value) -> Option<Strategy> {
    match v {
        Value::String(s) => match Strategy::parse(s) {
            Some(st) => Some(st),
            None => {
                let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
                is.error(
                    path,
                    format!(
                        "unknown strategy {s:?}; expected one of: {}",
                        names.join(", ")
                    ),
                );
                None
            }
        },
        other => {
            is.error(
                path,
                format!("expected a strategy name, found {}", type_name(other)),
            );
            None
        }
    }
}

/// `suppression.complaint_scope` / `unsubscribe_scope`: `stream` or `all`.
fn event_scope(obj: &Obj<'_>, key: &str, is: &mut Issues) -> Option<EventScope> {
    let name = obj.string(is, key)?;
    let scope = EventScope::parse(name);
    if scope.is_none() {
        is.error(
            at(&obj.path, key),
            format!("unknown scope {name:?}; expected stream or all"),
        );
    }
    scope
}

fn top_level(doc: &Value, env: &EnvOverrides, is: &mut Issues) -> Option<TopLevel> {
    let Value::Object(map) = doc else {
        is.error(
            "config",
            format!("expected an object, found {}", type_name(doc)),
        );
        return None;
    };
    let root = Obj {
        path: String::new(),
        map,
    };
    root.only_keys(is, TOP_KEYS);
    let mut top = top_level_defaults(env);
    // Env wins over global_defaults, so read the file first and re-apply env after it.
    if let Some(gd) = root.object(is, "global_defaults") {
        gd.only_keys(
            is,
            &[
                "rate_limits",
                "circuit_breaker",
                "health_check",
                "routing_strategy",
                "http",
            ],
        );
        if let Some(rl) = gd.object(is, "rate_limits") {
            rl.only_keys(is, &RATE_KEYS[..5]);
            let (limits, explicit) = rate_limits(&rl, &top.defaults.rate_limits, false, is);
            top.defaults.rate_limits = limits;
            top.defaults.refill_explicit = explicit;
        }
        if let Some(cb) = gd.object(is, "circuit_breaker") {
            top.defaults.breaker = breaker(&cb, &top.defaults.breaker, is);
        }
        if let Some(hc) = gd.object(is, "health_check") {
            top.defaults.health_check = health_check(&hc, &top.defaults.health_check, is);
        }
        if let Some(v) = gd.get("routing_strategy") {
            top.global_strategy = strategy_at(is, &at(&gd.path, "routing_strategy"), v);
        }
        if let Some(http) = gd.object(is, "http") {
            http.only_keys(is, &["connect_timeout", "request_timeout"]);
            if let Some(d) = http.duration(is, "connect_timeout", false) {
                top.http.connect_timeout = d;
            }
            if let Some(d) = http.duration(is, "request_timeout", false) {
                top.http.request_timeout = d;
            }
        }
        env.apply(&mut top.defaults.breaker, &mut top.defaults.health_check);
    }
    top.routing.strategy = top.global_strategy.unwrap_or(Strategy::Priority);
    if let Some(r) = root.object(is, "routing") {
        routing(&r, &mut top.routing, is);
    }
    if spreads_load(top.routing.strategy) && !top.routing.load_balancing_enabled {
        is.warn(
            "routing.load_balancing_enabled",
            format!(
                "false, but strategy {} spreads load anyway; the flag is informational",
                top.routing.strategy
            ),
        );
    }
    if let Some(sl) = root.object(is, "system_limits") {
        sl.only_keys(is, &["daily", "transactional_reserve"]);
        if let Some(daily) = sl.limit(is, "daily") {
            // QUEUE_DAILY_RATE_LIMIT is the operator's override of the file's value.
            top.system_limits.daily = env.system_daily.unwrap_or(daily);
        }
        match sl.fraction(is, "transactional_reserve") {
            Some(f) if f <= 0.5 => {
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "a fraction in [0, 0.5] times 10,000"
                )]
                {
                    top.system_limits.transactional_reserve_bp = (f * 10_000.0).round() as u16;
                }
            }
            Some(f) => is.error(
                "system_limits.transactional_reserve",
                format!("{f} would leave bulk mail less than half of every limit; at most 0.5"),
            ),
            None => {}
        }
    }
    top.customer_webhooks = customer_webhooks(&root, is);
    if let Some(sup) = root.object(is, "suppression") {
        sup.only_keys(is, &["complaint_scope", "unsubscribe_scope"]);
        if let Some(scope) = event_scope(&sup, "complaint_scope", is) {
            top.suppression.complaint_scope = scope;
        }
        if let Some(scope) = event_scope(&sup, "unsubscribe_scope", is) {
            top.suppression.unsubscribe_scope = scope;
        }
    }
    match root.get("gateways") {
        None => is.error("gateways", "required"),
        Some(Value::Array(_)) => {}
        Some(other) => is.error(
            "gateways",
            format!("expected an array, found {}", type_name(other)),
        ),
    }
    Some(top)
}

/// `customer_webhooks[]`: every entry checked, every problem reported at its path.
fn customer_webhooks(root: &Obj<'_>, is: &mut Issues) -> Vec<CustomerWebhook> {
    let mut out: Vec<CustomerWebhook> = Vec::new();
    let items = match root.get("customer_webhooks") {
        None => return out,
        Some(Value::Array(items)) => items,
        Some(other) => {
            is.error(
                "customer_webhooks",
                format!("expected an array, found {}", type_name(other)),
            );
            return out;
        }
    };
    let mut seen: Vec<&str> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = index("customer_webhooks", i);
        let Some(o) = as_object(is, &path, item) else {
            continue;
        };
        o.only_keys(is, &["id", "url", "key", "events", "senders", "enabled"]);
        let id = o.required_string(is, "id");
        if let Some(id) = id {
            if !is_valid_gateway_id(id) {
                is.error(at(&path, "id"), "must be 1-64 of A-Z a-z 0-9 . _ -");
            } else if seen.contains(&id) {
                is.error(
                    at(&path, "id"),
                    format!("duplicate customer webhook id {id:?}"),
                );
            } else {
                seen.push(id);
            }
        }
        let url = o.required_string(is, "url");
        if let Some(url) = url
            && let Err(problem) = webhook_url_problem(url)
        {
            is.error(at(&path, "url"), problem);
        }
        let key = o.secret(is, "key", true);
        let events = match o.strings(is, "events") {
            None => MandrillEvent::ALL.to_vec(),
            Some(names) => {
                if names.is_empty() && o.has("events") {
                    is.error(
                        at(&path, "events"),
                        "must name at least one event (leave it out for all)",
                    );
                }
                let mut events = Vec::with_capacity(names.len());
                for (p, name) in names {
                    match MandrillEvent::parse(name) {
                        Some(e) if !events.contains(&e) => events.push(e),
                        Some(_) => is.error(p, format!("{name:?} is listed twice")),
                        None => {
                            let all: Vec<&str> =
                                MandrillEvent::ALL.iter().map(|e| e.as_str()).collect();
                            is.error(
                                p,
                                format!(
                                    "unknown event {name:?}; expected one of: {}",
                                    all.join(", ")
                                ),
                            );
                        }
                    }
                }
                events
            }
        };
        let senders = patterns(&o, "senders", is).unwrap_or_default();
        let enabled = o.bool(is, "enabled").unwrap_or(true);
        if let (Some(id), Some(url), Some(key)) = (id, url, key) {
            out.push(CustomerWebhook {
                id: id.to_owned(),
                url: url.to_owned(),
                key,
                events,
                senders,
                enabled,
            });
        }
    }
    out
}

/// Why `url` cannot be a customer webhook URL: it must be absolute `https://` (or `http://` to
/// a loopback host, for local runs and tests), with a host and without credentials.
fn webhook_url_problem(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err("needs a host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials; the key signs each request".into());
    }
    if parsed.as_str() != url {
        // The URL is signed as written; what is posted is the parsed form. They must agree.
        return Err(
            "is not in canonical form (lower-case scheme and host, a `/` after the \
                    host, no default port, percent-encoding where needed): it is signed as \
                    written and must be exactly the URL the receiver sees"
                .into(),
        );
    }
    if parsed.fragment().is_some() {
        return Err("must not have a #fragment (it is never sent)".into());
    }
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        scheme => Err(format!(
            "scheme {scheme:?} is not allowed; use https:// (http:// only to localhost)"
        )),
    }
}

/// Strategies that spread load by themselves, whatever `load_balancing_enabled` says.
fn spreads_load(s: Strategy) -> bool {
    matches!(
        s,
        Strategy::RoundRobin | Strategy::Weighted | Strategy::LeastLoaded
    )
}

fn routing(r: &Obj<'_>, out: &mut Routing, is: &mut Issues) {
    r.only_keys(
        is,
        &[
            "strategy",
            "failover_enabled",
            "load_balancing_enabled",
            "health_check_required",
            "circuit_breaker_required",
            "max_failover_attempts",
            "ambiguous_policy",
            "pinned_failover",
            "rules",
        ],
    );
    if let Some(v) = r.get("strategy")
        && let Some(s) = strategy_at(is, &at(&r.path, "strategy"), v)
    {
        out.strategy = s;
    }
    if let Some(b) = r.bool(is, "failover_enabled") {
        out.failover_enabled = b;
    }
    if let Some(b) = r.bool(is, "load_balancing_enabled") {
        out.load_balancing_enabled = b;
    }
    if let Some(b) = r.bool(is, "health_check_required") {
        out.health_check_required = b;
    }
    if let Some(b) = r.bool(is, "circuit_breaker_required") {
        out.circuit_breaker_required = b;
    }
    if let Some(n) = r.u32_in(is, "max_failover_attempts", 1, MAX_FAILOVER_ATTEMPTS_MAX) {
        out.max_failover_attempts = nz(n);
    }
    if let Some(s) = r.string(is, "ambiguous_policy") {
        match s {
            "defer" => out.ambiguous_policy = AmbiguousPolicy::Defer,
            "failover" => out.ambiguous_policy = AmbiguousPolicy::Failover,
            other => is.error(
                at(&r.path, "ambiguous_policy"),
                format!("unknown policy {other:?}; expected defer or failover"),
            ),
        }
    }
    if let Some(b) = r.bool(is, "pinned_failover") {
        out.pinned_failover = b;
    }
    let rules_path = at(&r.path, "rules");
    match r.get("rules") {
        None => {}
        Some(Value::Array(rules)) => {
            for (i, rule) in rules.iter().enumerate() {
                let path = index(&rules_path, i);
                let Some(o) = as_object(is, &path, rule) else {
                    continue;
                };
                o.only_keys(is, &["senders", "strategy"]);
                let senders = patterns(&o, "senders", is);
                if !o.has("senders") {
                    is.error(at(&path, "senders"), "required");
                } else if senders.as_ref().is_some_and(Vec::is_empty) {
                    is.error(at(&path, "senders"), "must name at least one pattern");
                }
                let strategy = match o.get("strategy") {
                    Some(v) => strategy_at(is, &at(&path, "strategy"), v),
                    None => {
                        is.error(at(&path, "strategy"), "required");
                        None
                    }
                };
                if let (Some(senders), Some(strategy)) = (senders, strategy) {
                    out.rules.push(StrategyRule { senders, strategy });
                }
            }
        }
        Some(other) => is.error(
            rules_path,
            format!("expected an array, found {}", type_name(other)),
        ),
    }
}

/// Reads rate limits over `base`; returns them and whether `burst_refill_per_second` was set
/// here or inherited as set.
fn rate_limits(
    rl: &Obj<'_>,
    base: &RateLimits,
    base_refill_explicit: bool,
    is: &mut Issues,
) -> (RateLimits, bool) {
    let mut out = base.clone();
    if let Some(l) = rl.limit(is, "workspace_daily") {
        out.workspace_daily = l;
    }
    if let Some(l) = rl.limit(is, "per_user_daily") {
        out.per_user_daily = l;
    }
    if let Some(l) = rl.limit(is, "per_hour") {
        out.per_hour = l;
    }
    if let Some(l) = rl.limit(is, "burst_limit") {
        out.burst_limit = l;
    }
    let mut explicit = base_refill_explicit;
    if let Some(v) = rl.get("burst_refill_per_second") {
        match v.as_f64() {
            Some(r) if r > 0.0 && r.is_finite() => {
                out.burst_refill_per_second = r;
                explicit = true;
            }
            _ => is.error(
                at(&rl.path, "burst_refill_per_second"),
                "expected a positive number (recipients per second)",
            ),
        }
    }
    if !explicit {
        out.burst_refill_per_second = refill_following(out.burst_limit);
    }
    let cul_path = at(&rl.path, "custom_user_limits");
    if let Some(v) = rl.get("custom_user_limits")
        && let Some(o) = as_object(is, &cul_path, v)
    {
        let mut seen: HashMap<String, &str> = HashMap::new();
        for (addr, lim) in o.map {
            let path = at(&cul_path, addr);
            let key = addr.to_ascii_lowercase();
            if !matches!(SenderPattern::parse(addr), Ok(SenderPattern::Address(_))) {
                is.error(&path, "not an email address");
                continue;
            }
            if let Some(first) = seen.insert(key.clone(), addr) {
                is.error(
                    &path,
                    format!("duplicate of {first:?} (addresses are case-insensitive)"),
                );
                continue;
            }
            if let Some(l) = limit_value(is, &path, lim) {
                out.custom_user_limits.insert(key, l);
            }
        }
    }
    (out, explicit)
}

/// The refill rate that follows `burst_limit`: the whole bucket per second. Irrelevant (0) when
/// the burst is unlimited, because an unlimited bucket is never drawn from.
fn refill_following(burst: Limit) -> f64 {
    match burst {
        // Limits above 2^53 lose precision as f64; no real burst is that large.
        #[allow(clippy::cast_precision_loss)]
        Some(b) => b as f64,
        None => 0.0,
    }
}

fn breaker(cb: &Obj<'_>, base: &BreakerSettings, is: &mut Issues) -> BreakerSettings {
    cb.only_keys(is, BREAKER_KEYS);
    let mut out = base.clone();
    if let Some(b) = cb.bool(is, "enabled") {
        out.enabled = b;
    }
    if let Some(n) = cb.positive(is, "failure_threshold") {
        out.failure_threshold = n;
    }
    if let Some(n) = cb.positive(is, "success_threshold") {
        out.success_threshold = n;
    }
    if let Some(d) = cb.duration(is, "timeout", false) {
        out.timeout = d;
    }
    if let Some(n) = cb.positive(is, "max_requests") {
        out.max_requests = n;
    }
    if let Some(d) = cb.duration(is, "window", false) {
        out.window = d;
    }
    match cb.get("failure_ratio") {
        None => {}
        Some(Value::Null) => out.failure_ratio = None,
        Some(v) => match v.as_f64() {
            Some(r) if r > 0.0 && r <= 1.0 => out.failure_ratio = Some(r),
            _ => is.error(
                at(&cb.path, "failure_ratio"),
                "expected a number in (0, 1] or null",
            ),
        },
    }
    out
}

fn health_check(hc: &Obj<'_>, base: &HealthCheckSettings, is: &mut Issues) -> HealthCheckSettings {
    hc.only_keys(is, HEALTH_KEYS);
    let mut out = base.clone();
    if let Some(b) = hc.bool(is, "enabled") {
        out.enabled = b;
    }
    if let Some(d) = hc.duration(is, "interval", false) {
        out.interval = d;
    }
    if let Some(d) = hc.duration(is, "timeout", false) {
        out.timeout = d;
    }
    if let Some(n) = hc.positive(is, "failure_threshold") {
        out.failure_threshold = n;
    }
    if let Some(n) = hc.positive(is, "success_threshold") {
        out.success_threshold = n;
    }
    out
}

fn patterns(o: &Obj<'_>, key: &str, is: &mut Issues) -> Option<Vec<SenderPattern>> {
    let items = o.strings(is, key)?;
    let mut out = Vec::with_capacity(items.len());
    for (path, s) in items {
        match SenderPattern::parse(s) {
            Ok(p) => out.push(p),
            Err(e) => is.error(path, e.to_string()),
        }
    }
    Some(out)
}

fn gateway(entry: &GatewayEntry<'_>, d: &Defaults, is: &mut Issues) -> Option<Gateway> {
    let path = entry.path.as_str();
    let g = as_object(is, path, entry.value)?;
    let kind = match g.get("type") {
        None => {
            is.error(at(path, "type"), "required");
            None
        }
        Some(Value::String(t)) => match GatewayKind::parse(t) {
            Some(k) => Some(k),
            None => {
                let names: Vec<&str> = GatewayKind::ALL.iter().map(|k| k.as_str()).collect();
                is.error(
                    at(path, "type"),
                    format!("unknown type {t:?}; expected one of: {}", names.join(", ")),
                );
                None
            }
        },
        Some(other) => {
            is.error(
                at(path, "type"),
                format!("expected a string, found {}", type_name(other)),
            );
            None
        }
    };
    // Keys: the fixed ones plus provider blocks; a block of another kind is reported as a
    // mismatch rather than as an unknown key, which says more.
    for key in g.map.keys() {
        if GATEWAY_KEYS.contains(&key.as_str()) {
            continue;
        }
        match (GatewayKind::parse(key), kind) {
            (Some(k), Some(kind)) if k != kind => is.error(
                at(path, key),
                format!("provider block does not match type {kind}"),
            ),
            (Some(_), _) => {}
            (None, _) => is.error(at(path, key), "unknown key"),
        }
    }
    let id = g.required_string(is, "id");
    if let Some(id) = id
        && !is_valid_gateway_id(id)
    {
        is.error(
            at(path, "id"),
            format!("invalid id {id:?}; use 1–64 characters of A-Z a-z 0-9 . _ -"),
        );
    }
    let display_name = g.string(is, "display_name");
    let domain = g.string(is, "domain");
    if let Some(dn) = domain
        && !is_domain(dn)
    {
        is.error(at(path, "domain"), format!("{dn:?} is not a domain name"));
    }
    let enabled = g.bool(is, "enabled").unwrap_or(true);
    let priority = g
        .u32_in(is, "priority", 0, PRIORITY_MAX)
        .unwrap_or(DEFAULT_PRIORITY);
    let weight = g
        .u32_in(is, "weight", 0, WEIGHT_MAX)
        .unwrap_or(DEFAULT_WEIGHT);

    let provider = kind.and_then(|kind| match g.object(is, kind.as_str()) {
        Some(block) => provider(kind, &block, is),
        None => {
            if !g.has(kind.as_str()) {
                is.error(at(path, kind.as_str()), format!("required for type {kind}"));
            }
            None
        }
    });

    let rate_limits = match g.object(is, "rate_limits") {
        Some(rl) => {
            rl.only_keys(is, RATE_KEYS);
            rate_limits(&rl, &d.rate_limits, d.refill_explicit, is).0
        }
        None => d.rate_limits.clone(),
    };
    let circuit_breaker = match g.object(is, "circuit_breaker") {
        Some(cb) => breaker(&cb, &d.breaker, is),
        None => d.breaker.clone(),
    };
    // Checked on the effective values (gateway, env and defaults merged): a half-open round
    // admits at most `max_requests` trials, so a larger `success_threshold` could never be
    // reached and the breaker would stay half-open for good.
    if circuit_breaker.enabled && circuit_breaker.success_threshold > circuit_breaker.max_requests {
        is.error(
            at(&at(&g.path, "circuit_breaker"), "success_threshold"),
            format!(
                "{} exceeds max_requests {}: a half-open breaker could never close",
                circuit_breaker.success_threshold, circuit_breaker.max_requests
            ),
        );
    }
    let health = match g.object(is, "health_check") {
        Some(hc) => health_check(&hc, &d.health_check, is),
        None => d.health_check.clone(),
    };
    let mut routing = GatewayRouting {
        can_route: Vec::new(),
        exclude_patterns: Vec::new(),
        failover_to: Vec::new(),
    };
    if let Some(r) = g.object(is, "routing") {
        r.only_keys(is, &["can_route", "exclude_patterns", "failover_to"]);
        routing.can_route = patterns(&r, "can_route", is).unwrap_or_default();
        routing.exclude_patterns = patterns(&r, "exclude_patterns", is).unwrap_or_default();
        routing.failover_to = r
            .strings(is, "failover_to")
            .unwrap_or_default()
            .into_iter()
            .map(|(_, s)| s.to_owned())
            .collect();
    }
    if routing.can_route.is_empty() && enabled {
        is.warn(
            at(path, "routing.can_route"),
            "empty; this gateway takes no sender unless a message pins it",
        );
    }

    let id = id?.to_owned();
    Some(Gateway {
        display_name: display_name.map_or_else(|| id.clone(), str::to_owned),
        id,
        kind: kind?,
        domain: domain.map(|d| d.to_ascii_lowercase()),
        enabled,
        priority,
        weight,
        provider: provider?,
        rate_limits,
        routing,
        circuit_breaker,
        health_check: health,
        source: entry.source.clone(),
    })
}

fn url(o: &Obj<'_>, key: &str, is: &mut Issues) -> Option<String> {
    let path = at(&o.path, key);
    if let Some(Value::String(s)) = o.get(key)
        && s.is_empty()
    {
        // The original sent every request to "/v3/…" with an empty base URL.
        is.error(path, "must not be empty; omit the key to use the default");
        return None;
    }
    let s = o.string(is, key)?;
    if let Err(problem) = provider_url_problem(s) {
        is.error(path, problem);
        return None;
    }
    Some(s.trim_end_matches('/').to_owned())
}

/// Why `url` cannot be a provider endpoint (`base_url`, `token_url`, `api_base_url`): API keys
/// and tokens travel to it, so it must be `https://`, or `http://` to a loopback host only (a
/// local fake provider), and carry no credentials of its own. The URL is not echoed: it might
/// hold some.
fn provider_url_problem(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "must not carry credentials (user:password@); the gateway's secret is sent with each request"
                .into(),
        );
    }
    let host = parsed.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err("needs a host".into());
    }
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "http:// to {host} would send the provider credentials in clear; use https:// (http:// only to localhost, for a local fake provider)"
        )),
        scheme => Err(format!("scheme {scheme:?} is not allowed; use https://")),
    }
}

fn tracking(o: &Obj<'_>, is: &mut Issues) -> Tracking {
    let mut t = Tracking::default();
    if let Some(tr) = o.object(is, "tracking") {
        tr.only_keys(is, &["opens", "clicks", "unsubscribe"]);
        t.opens = tr.bool(is, "opens").unwrap_or(false);
        t.clicks = tr.bool(is, "clicks").unwrap_or(false);
        t.unsubscribe = tr.bool(is, "unsubscribe").unwrap_or(false);
    }
    t
}

fn plain_strings(o: &Obj<'_>, key: &str, is: &mut Issues) -> Vec<String> {
    o.strings(is, key)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, s)| s.to_owned())
        .collect()
}

fn provider(kind: GatewayKind, b: &Obj<'_>, is: &mut Issues) -> Option<ProviderSettings> {
    match kind {
        GatewayKind::Mailgun => {
            b.only_keys(
                is,
                &[
                    "api_key",
                    "domain",
                    "base_url",
                    "region",
                    "tracking",
                    "tags",
                    "webhook_signing_key",
                ],
            );
            let api_key = b.secret(is, "api_key", true);
            let domain = b.required_string(is, "domain");
            if let Some(d) = domain
                && !is_domain(d)
            {
                is.error(at(&b.path, "domain"), format!("{d:?} is not a domain name"));
            }
            // The seed writes ".../v3"; the client appends "/v3/{domain}/messages" itself.
            let base_url = url(b, "base_url", is).map(|u| match u.strip_suffix("/v3") {
                Some(stripped) => stripped.to_owned(),
                None => u,
            });
            let region = match b.string(is, "region") {
                None | Some("us") => MailgunRegion::Us,
                Some("eu") => MailgunRegion::Eu,
                Some(other) => {
                    is.error(
                        at(&b.path, "region"),
                        format!("unknown region {other:?}; expected us or eu"),
                    );
                    MailgunRegion::Us
                }
            };
            let tracking = tracking(b, is);
            let mut tags = MailgunTags::default();
            if let Some(t) = b.object(is, "tags") {
                t.only_keys(is, &["default", "campaign_tag_enabled", "user_tag_enabled"]);
                tags.default = plain_strings(&t, "default", is);
                tags.campaign_tag_enabled = t.bool(is, "campaign_tag_enabled").unwrap_or(false);
                tags.user_tag_enabled = t.bool(is, "user_tag_enabled").unwrap_or(false);
            }
            let webhook_signing_key = b.secret(is, "webhook_signing_key", false);
            Some(ProviderSettings::Mailgun(MailgunSettings {
                api_key: api_key?,
                domain: domain?.to_ascii_lowercase(),
                base_url,
                region,
                tracking,
                tags,
                webhook_signing_key,
            }))
        }
        GatewayKind::Sendgrid => {
            b.only_keys(
                is,
                &[
                    "api_key",
                    "base_url",
                    "tracking",
                    "categories",
                    "webhook_public_key",
                ],
            );
            let api_key = b.secret(is, "api_key", true);
            let base_url = url(b, "base_url", is);
            let tracking = tracking(b, is);
            let categories = plain_strings(b, "categories", is);
            let webhook_public_key = b.string(is, "webhook_public_key").map(str::to_owned);
            Some(ProviderSettings::Sendgrid(SendgridSettings {
                api_key: api_key?,
                base_url,
                tracking,
                categories,
                webhook_public_key,
            }))
        }
        GatewayKind::AmazonSes => {
            b.only_keys(
                is,
                &[
                    "region",
                    "configuration_set",
                    "endpoint_url",
                    "sns_topic_arns",
                    "sns_accept_sha1_signatures",
                ],
            );
            let region = b.required_string(is, "region");
            let configuration_set = b.string(is, "configuration_set").map(str::to_owned);
            let endpoint_url = url(b, "endpoint_url", is);
            let sns_topic_arns = plain_strings(b, "sns_topic_arns", is);
            let sns_accept_sha1_signatures =
                b.bool(is, "sns_accept_sha1_signatures").unwrap_or(true);
            Some(ProviderSettings::AmazonSes(SesSettings {
                region: region?.to_owned(),
                configuration_set,
                endpoint_url,
                sns_topic_arns,
                sns_accept_sha1_signatures,
            }))
        }
        GatewayKind::GoogleWorkspace => {
            b.only_keys(
                is,
                &[
                    "service_account",
                    "default_sender",
                    "require_valid_sender",
                    "token_url",
                    "api_base_url",
                    "lookup_sent",
                ],
            );
            let service_account = b.secret(is, "service_account", true);
            let default_sender = b.string(is, "default_sender");
            if let Some(s) = default_sender
                && !matches!(SenderPattern::parse(s), Ok(SenderPattern::Address(_)))
            {
                is.error(
                    at(&b.path, "default_sender"),
                    format!("{s:?} is not an email address"),
                );
            }
            let require_valid_sender = b.bool(is, "require_valid_sender").unwrap_or(false);
            let token_url = url(b, "token_url", is);
            let api_base_url = url(b, "api_base_url", is);
            let lookup_sent = b.bool(is, "lookup_sent").unwrap_or(false);
            Some(ProviderSettings::GoogleWorkspace(GoogleWorkspaceSettings {
                service_account: service_account?,
                default_sender: default_sender.map(str::to_owned),
                require_valid_sender,
                token_url,
                api_base_url,
                lookup_sent,
            }))
        }
        GatewayKind::Smtp => {
            b.only_keys(is, &["host", "port", "tls", "username", "password"]);
            let host = b.required_string(is, "host");
            let tls = match b.string(is, "tls") {
                None | Some("starttls") => SmtpTls::Starttls,
                Some("tls") => SmtpTls::Tls,
                Some("none") => SmtpTls::None,
                Some(other) => {
                    is.error(
                        at(&b.path, "tls"),
                        format!("unknown tls mode {other:?}; expected starttls, tls or none"),
                    );
                    SmtpTls::Starttls
                }
            };
            let default_port = match tls {
                SmtpTls::Starttls => 587,
                SmtpTls::Tls => 465,
                SmtpTls::None => 25,
            };
            let port = b
                .u32_in(is, "port", 1, u32::from(u16::MAX))
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(default_port);
            let username = b.string(is, "username").map(str::to_owned);
            let password = b.secret(is, "password", false);
            // Half a credential pair is always a mistake: the relay would refuse or, worse,
            // relay unauthenticated.
            match (&username, &password, b.has("username"), b.has("password")) {
                (None, Some(_), false, _) => {
                    is.error(at(&b.path, "username"), "required when password is set")
                }
                (Some(_), None, _, false) => {
                    is.error(at(&b.path, "password"), "required when username is set")
                }
                _ => {}
            }
            Some(ProviderSettings::Smtp(SmtpSettings {
                host: host?.to_owned(),
                port,
                tls,
                username,
                password,
            }))
        }
        GatewayKind::Capture => {
            b.only_keys(is, &["directory"]);
            let directory = b.required_string(is, "directory");
            Some(ProviderSettings::Capture(CaptureSettings {
                directory: directory?.to_owned(),
            }))
        }
        GatewayKind::Simulated => {
            const RATES: [&str; 4] = [
                "throttle_rate",
                "unavailable_rate",
                "timeout_rate",
                "permanent_rate",
            ];
            b.only_keys(
                is,
                &["latency", "seed", RATES[0], RATES[1], RATES[2], RATES[3]],
            );
            let latency = b.duration(is, "latency", true).unwrap_or(Duration::ZERO);
            let seed = match b.get("seed") {
                None => 0,
                Some(v) => v.as_u64().unwrap_or_else(|| {
                    is.error(at(&b.path, "seed"), "expected a non-negative integer");
                    0
                }),
            };
            let rates = RATES.map(|k| b.fraction(is, k).unwrap_or(0.0));
            let sum: f64 = rates.iter().sum();
            if sum > 1.0 + 1e-9 {
                is.error(&b.path, format!("outcome rates sum to {sum}, above 1"));
            }
            Some(ProviderSettings::Simulated(SimulatedSettings {
                latency,
                seed,
                throttle_rate: rates[0],
                unavailable_rate: rates[1],
                timeout_rate: rates[2],
                permanent_rate: rates[3],
            }))
        }
    }
}

fn describe_source(entry: &GatewayEntry<'_>) -> String {
    match &entry.source {
        GatewaySource::ConfigFile => format!("{} (config file)", entry.path),
        GatewaySource::LegacyWorkspace(ws) => {
            format!("{} (legacy workspace {ws:?})", entry.path)
        }
    }
}

/// Checks across gateways: duplicate ids, failover targets and cycles. Done on the raw
/// entries, so a gateway with a broken field still takes part (all problems at once).
fn cross_checks(entries: &[GatewayEntry<'_>], is: &mut Issues) {
    let ids: Vec<Option<&str>> = entries
        .iter()
        .map(|e| e.value.get("id").and_then(Value::as_str))
        .collect();
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (n, entry) in entries.iter().enumerate() {
        let Some(id) = ids[n] else { continue };
        match first.get(id) {
            Some(&prev) => is.error(
                at(&entry.path, "id"),
                format!(
                    "duplicate id {id:?}: {} collides with {}",
                    describe_source(entry),
                    describe_source(&entries[prev])
                ),
            ),
            None => {
                first.insert(id, n);
            }
        }
    }
    let targets: Vec<Vec<&str>> = entries
        .iter()
        .map(|e| {
            e.value
                .get("routing")
                .and_then(|r| r.get("failover_to"))
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default()
        })
        .collect();
    for (n, entry) in entries.iter().enumerate() {
        let fpath = at(&entry.path, "routing.failover_to");
        for (i, target) in targets[n].iter().enumerate() {
            if ids[n] == Some(*target) {
                is.error(index(&fpath, i), "a gateway cannot fail over to itself");
            } else if !target.trim().is_empty() && !first.contains_key(target) {
                is.error(index(&fpath, i), format!("unknown gateway {target:?}"));
            }
        }
    }
    // Edges by the first definition of each id; a cycle is reported once, at the gateway of
    // the cycle that comes first in file order.
    let next: Vec<Vec<usize>> = (0..entries.len())
        .map(|n| {
            targets[n]
                .iter()
                .filter_map(|t| first.get(t).copied())
                .filter(|&t| t != n)
                .collect()
        })
        .collect();
    for (n, entry) in entries.iter().enumerate() {
        if let Some(cycle) = cycle_through(n, &next)
            && cycle.iter().all(|&m| m >= n)
        {
            let names: Vec<&str> = cycle
                .iter()
                .chain(std::iter::once(&n))
                .map(|&m| ids[m].unwrap_or("?"))
                .collect();
            is.error(
                at(&entry.path, "routing.failover_to"),
                format!("failover cycle {}", names.join(" → ")),
            );
        }
    }
}

/// A path of entry indices from `start` back to itself (self-loops excluded), if any.
fn cycle_through(start: usize, next: &[Vec<usize>]) -> Option<Vec<usize>> {
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(m) = queue.pop_front() {
        for &t in &next[m] {
            if t == start {
                let mut path = vec![m];
                let mut cur = m;
                while let Some(&p) = parent.get(&cur) {
                    path.push(p);
                    cur = p;
                }
                path.reverse();
                return Some(path);
            }
            if let std::collections::hash_map::Entry::Vacant(v) = parent.entry(t) {
                v.insert(m);
                queue.push_back(t);
            }
        }
    }
    None
}
