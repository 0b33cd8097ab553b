//! Unit tests of the config loader: each validation rule with its exact path, defaults and
//! precedence, environment, modes, legacy conversion, redaction.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::{Just, ProptestConfig, any, prop, prop_oneof, proptest};
use proptest::strategy::Strategy as _;
use serde_json::{Value, json};

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

/// Two valid Mailgun gateways, `a` failing over to `b`.
fn base() -> Value {
    json!({
        "gateways": [
            {
                "id": "a",
                "type": "mailgun",
                "priority": 1,
                "mailgun": { "api_key": "env:A_KEY", "domain": "a.example.com" },
                "routing": { "can_route": ["*"], "failover_to": ["b"] }
            },
            {
                "id": "b",
                "type": "mailgun",
                "priority": 2,
                "mailgun": { "api_key": "env:B_KEY", "domain": "b.example.com" },
                "routing": { "can_route": ["*"] }
            }
        ]
    })
}

/// Sets (or with `None` removes) the value at a JSON pointer, creating the last key.
fn with(mut doc: Value, pointer: &str, value: Option<Value>) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    let target = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no parent {parent}"));
    match (target, value) {
        (Value::Object(m), Some(v)) => {
            m.insert(key.to_owned(), v);
        }
        (Value::Object(m), None) => {
            m.remove(key);
        }
        (Value::Array(a), Some(v)) => {
            let i: usize = key.parse().unwrap_or_else(|_| panic!("index {key}"));
            if i == a.len() {
                a.push(v);
            } else {
                a[i] = v;
            }
        }
        (other, _) => panic!("cannot set {pointer} in {other}"),
    }
    doc
}

fn load(doc: &Value) -> Result<Loaded, ConfigErrors> {
    load_config(Some(&doc.to_string()), None, &no_env)
}

fn loaded(doc: &Value) -> Loaded {
    load(doc).unwrap_or_else(|e| panic!("should load:\n{e}"))
}

fn errors(doc: &Value) -> ConfigErrors {
    match load(doc) {
        Ok(_) => panic!("should not load: {doc}"),
        Err(e) => e,
    }
}

#[test]
fn the_base_document_loads_without_warnings() {
    let l = loaded(&base());
    assert_eq!(l.warnings, vec![]);
    assert_eq!(l.config.gateways.len(), 2);
    assert_eq!(l.config.mode, GatewayMode::New);
}

#[test]
fn each_validation_rule_reports_its_exact_path() {
    let simulated = json!({
        "id": "sim", "type": "simulated",
        "simulated": { "throttle_rate": 0.6, "unavailable_rate": 0.5 },
        "routing": { "can_route": ["*"] }
    });
    let smtp = json!({
        "id": "relay", "type": "smtp",
        "smtp": { "host": "smtp.example.com", "username": "u" },
        "routing": { "can_route": ["*"] }
    });
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "unknown top-level key",
            with(base(), "/rate_limit", Some(json!({}))),
            "rate_limit",
            "unknown key",
        ),
        (
            "typo in a limit name",
            with(
                base(),
                "/gateways/0/rate_limits",
                Some(json!({"per_hours": 5})),
            ),
            "gateways[0].rate_limits.per_hours",
            "unknown key",
        ),
        (
            "unknown gateway key",
            with(base(), "/gateways/0/priorty", Some(json!(1))),
            "gateways[0].priorty",
            "unknown key",
        ),
        (
            "wrong type",
            with(base(), "/gateways/0/priority", Some(json!("1"))),
            "gateways[0].priority",
            "expected an integer",
        ),
        (
            "wrong type of a block",
            with(base(), "/gateways/0/routing", Some(json!([]))),
            "gateways[0].routing",
            "expected an object",
        ),
        (
            "duplicate id",
            with(base(), "/gateways/1/id", Some(json!("a"))),
            "gateways[1].id",
            "duplicate id \"a\"",
        ),
        (
            "unknown failover target",
            with(
                base(),
                "/gateways/0/routing/failover_to",
                Some(json!(["nope"])),
            ),
            "gateways[0].routing.failover_to[0]",
            "unknown gateway \"nope\"",
        ),
        (
            "failover to itself",
            with(
                base(),
                "/gateways/0/routing/failover_to",
                Some(json!(["a"])),
            ),
            "gateways[0].routing.failover_to[0]",
            "itself",
        ),
        (
            "failover cycle",
            with(
                base(),
                "/gateways/1/routing/failover_to",
                Some(json!(["a"])),
            ),
            "gateways[0].routing.failover_to",
            "failover cycle a → b → a",
        ),
        (
            "malformed pattern",
            with(
                base(),
                "/gateways/0/routing/can_route",
                Some(json!(["b.com"])),
            ),
            "gateways[0].routing.can_route[0]",
            "b.com",
        ),
        (
            "malformed exclude pattern",
            with(
                base(),
                "/gateways/0/routing/exclude_patterns",
                Some(json!(["*", "x@"])),
            ),
            "gateways[0].routing.exclude_patterns[1]",
            "x@",
        ),
        (
            "malformed duration",
            with(
                base(),
                "/gateways/0/circuit_breaker",
                Some(json!({"timeout": "invalid-timeout"})),
            ),
            "gateways[0].circuit_breaker.timeout",
            "invalid duration \"invalid-timeout\"",
        ),
        (
            "zero duration",
            with(
                base(),
                "/gateways/0/health_check",
                Some(json!({"interval": "0s"})),
            ),
            "gateways[0].health_check.interval",
            "non-positive",
        ),
        (
            "zero threshold",
            with(
                base(),
                "/gateways/0/circuit_breaker",
                Some(json!({"failure_threshold": 0})),
            ),
            "gateways[0].circuit_breaker.failure_threshold",
            "non-positive",
        ),
        (
            "negative threshold",
            with(
                base(),
                "/gateways/0/health_check",
                Some(json!({"success_threshold": -2})),
            ),
            "gateways[0].health_check.success_threshold",
            "non-positive",
        ),
        (
            "zero limit",
            with(
                base(),
                "/gateways/0/rate_limits",
                Some(json!({"per_hour": 0})),
            ),
            "gateways[0].rate_limits.per_hour",
            "non-positive limit 0; use null for unlimited",
        ),
        (
            "negative global limit",
            with(
                base(),
                "/global_defaults",
                Some(json!({"rate_limits": {"burst_limit": -1}})),
            ),
            "global_defaults.rate_limits.burst_limit",
            "non-positive",
        ),
        (
            "zero system limit",
            with(base(), "/system_limits", Some(json!({"daily": 0}))),
            "system_limits.daily",
            "non-positive",
        ),
        (
            "fractional limit",
            with(
                base(),
                "/gateways/0/rate_limits",
                Some(json!({"workspace_daily": 1.5})),
            ),
            "gateways[0].rate_limits.workspace_daily",
            "positive integer or null",
        ),
        (
            "zero refill",
            with(
                base(),
                "/gateways/0/rate_limits",
                Some(json!({"burst_refill_per_second": 0})),
            ),
            "gateways[0].rate_limits.burst_refill_per_second",
            "positive number",
        ),
        (
            "missing provider block",
            with(base(), "/gateways/0/mailgun", None),
            "gateways[0].mailgun",
            "required for type mailgun",
        ),
        (
            "provider block of another type",
            with(
                base(),
                "/gateways/0/sendgrid",
                Some(json!({"api_key": "env:X"})),
            ),
            "gateways[0].sendgrid",
            "provider block does not match type mailgun",
        ),
        (
            "missing credentials",
            with(base(), "/gateways/0/mailgun/api_key", None),
            "gateways[0].mailgun.api_key",
            "required",
        ),
        (
            "missing provider domain",
            with(base(), "/gateways/1/mailgun/domain", None),
            "gateways[1].mailgun.domain",
            "required",
        ),
        (
            "empty env secret name",
            with(base(), "/gateways/0/mailgun/api_key", Some(json!("env:"))),
            "gateways[0].mailgun.api_key",
            "variable name",
        ),
        (
            "empty secrets manager arn",
            with(
                base(),
                "/gateways/0/mailgun/api_key",
                Some(json!("secretsmanager:")),
            ),
            "gateways[0].mailgun.api_key",
            "ARN",
        ),
        (
            "empty ssm path",
            with(
                base(),
                "/gateways/0/mailgun/webhook_signing_key",
                Some(json!("ssm:")),
            ),
            "gateways[0].mailgun.webhook_signing_key",
            "parameter path",
        ),
        (
            "empty base url",
            with(base(), "/gateways/0/mailgun/base_url", Some(json!(""))),
            "gateways[0].mailgun.base_url",
            "must not be empty",
        ),
        (
            "base url without scheme",
            with(
                base(),
                "/gateways/0/mailgun/base_url",
                Some(json!("api.mailgun.net")),
            ),
            "gateways[0].mailgun.base_url",
            "is not a URL",
        ),
        (
            "base url in clear to a remote host",
            with(
                base(),
                "/gateways/0/mailgun/base_url",
                Some(json!("http://api.mailgun.net/v3")),
            ),
            "gateways[0].mailgun.base_url",
            "would send the provider credentials in clear; use https:// (http:// only to \
             localhost, for a local fake provider)",
        ),
        (
            "base url with credentials",
            with(
                base(),
                "/gateways/0/mailgun/base_url",
                Some(json!("https://user:hunter2@api.mailgun.net")),
            ),
            "gateways[0].mailgun.base_url",
            "must not carry credentials (user:password@); the gateway's secret is sent with \
             each request",
        ),
        (
            "base url of another scheme",
            with(
                base(),
                "/gateways/0/mailgun/base_url",
                Some(json!("ftp://api.mailgun.net")),
            ),
            "gateways[0].mailgun.base_url",
            "scheme \"ftp\" is not allowed",
        ),
        (
            "unknown region",
            with(base(), "/gateways/0/mailgun/region", Some(json!("asia"))),
            "gateways[0].mailgun.region",
            "unknown region",
        ),
        (
            "missing type",
            with(base(), "/gateways/0/type", None),
            "gateways[0].type",
            "required",
        ),
        (
            "unknown type",
            with(base(), "/gateways/0/type", Some(json!("postfix"))),
            "gateways[0].type",
            "unknown type \"postfix\"",
        ),
        (
            "unknown strategy",
            with(base(), "/routing", Some(json!({"strategy": "random"}))),
            "routing.strategy",
            "unknown strategy \"random\"",
        ),
        (
            "unknown global strategy",
            with(
                base(),
                "/global_defaults",
                Some(json!({"routing_strategy": "fastest"})),
            ),
            "global_defaults.routing_strategy",
            "unknown strategy",
        ),
        (
            "unknown rule strategy",
            with(
                base(),
                "/routing",
                Some(json!({"rules": [{"senders": ["@x.example.com"], "strategy": "best"}]})),
            ),
            "routing.rules[0].strategy",
            "unknown strategy",
        ),
        (
            "rule without senders",
            with(
                base(),
                "/routing",
                Some(json!({"rules": [{"senders": [], "strategy": "weighted"}]})),
            ),
            "routing.rules[0].senders",
            "at least one",
        ),
        (
            "unknown ambiguous policy",
            with(
                base(),
                "/routing",
                Some(json!({"ambiguous_policy": "retry"})),
            ),
            "routing.ambiguous_policy",
            "defer or failover",
        ),
        (
            "zero failover attempts",
            with(
                base(),
                "/routing",
                Some(json!({"max_failover_attempts": 0})),
            ),
            "routing.max_failover_attempts",
            "out of range",
        ),
        (
            "id with a space",
            with(base(), "/gateways/0/id", Some(json!("a b"))),
            "gateways[0].id",
            "invalid id",
        ),
        (
            "id too long",
            with(base(), "/gateways/0/id", Some(json!("x".repeat(65)))),
            "gateways[0].id",
            "invalid id",
        ),
        (
            "missing id",
            with(base(), "/gateways/0/id", None),
            "gateways[0].id",
            "required",
        ),
        (
            "weight above range",
            with(base(), "/gateways/0/weight", Some(json!(10_001))),
            "gateways[0].weight",
            "out of range 0..=10000",
        ),
        (
            "negative priority",
            with(base(), "/gateways/0/priority", Some(json!(-1))),
            "gateways[0].priority",
            "out of range",
        ),
        (
            "gateway domain not a domain",
            with(base(), "/gateways/0/domain", Some(json!("not a domain"))),
            "gateways[0].domain",
            "not a domain name",
        ),
        (
            "failure ratio above 1",
            with(
                base(),
                "/gateways/0/circuit_breaker",
                Some(json!({"failure_ratio": 1.5})),
            ),
            "gateways[0].circuit_breaker.failure_ratio",
            "(0, 1]",
        ),
        (
            "custom limit key not an address",
            with(
                base(),
                "/gateways/0/rate_limits",
                Some(json!({"custom_user_limits": {"example.com": 5}})),
            ),
            "gateways[0].rate_limits.custom_user_limits.example.com",
            "not an email address",
        ),
        (
            "custom limit keys equal but for case",
            with(
                base(),
                "/gateways/0/rate_limits",
                Some(json!({"custom_user_limits": {"Ann@x.example": 5, "ann@x.example": 6}})),
            ),
            "gateways[0].rate_limits.custom_user_limits.ann@x.example",
            "case-insensitive",
        ),
        (
            "custom limit zero",
            with(
                base(),
                "/gateways/0/rate_limits",
                Some(json!({"custom_user_limits": {"ann@x.example": 0}})),
            ),
            "gateways[0].rate_limits.custom_user_limits.ann@x.example",
            "non-positive",
        ),
        (
            "simulated rates above one",
            with(base(), "/gateways/2", Some(simulated)),
            "gateways[2].simulated",
            "sum to 1.1",
        ),
        (
            "simulated rate out of range",
            with(
                base(),
                "/gateways/2",
                Some(json!({"id": "s", "type": "simulated", "simulated": {"timeout_rate": -0.1}})),
            ),
            "gateways[2].simulated.timeout_rate",
            "outside [0, 1]",
        ),
        (
            "smtp username without password",
            with(base(), "/gateways/2", Some(smtp)),
            "gateways[2].smtp.password",
            "required when username is set",
        ),
        (
            "capture without directory",
            with(
                base(),
                "/gateways/2",
                Some(json!({"id": "c", "type": "capture", "capture": {}})),
            ),
            "gateways[2].capture.directory",
            "required",
        ),
        (
            "ses without region",
            with(
                base(),
                "/gateways/2",
                Some(json!({"id": "s", "type": "amazon_ses", "amazon_ses": {}})),
            ),
            "gateways[2].amazon_ses.region",
            "required",
        ),
        (
            "google without service account",
            with(
                base(),
                "/gateways/2",
                Some(json!({"id": "g", "type": "google_workspace", "google_workspace": {}})),
            ),
            "gateways[2].google_workspace.service_account",
            "required",
        ),
        (
            "gateways not an array",
            with(base(), "/gateways", Some(json!({}))),
            "gateways",
            "expected an array",
        ),
        (
            "no gateway at all",
            with(base(), "/gateways", Some(json!([]))),
            "gateways",
            "no gateway configured",
        ),
    ];
    for (name, doc, path, fragment) in cases {
        let errs = errors(&doc);
        let hit = errs.0.iter().find(|i| i.path == path);
        match hit {
            Some(issue) => assert!(
                issue.message.contains(fragment),
                "{name}: message {:?} lacks {fragment:?}",
                issue.message
            ),
            None => panic!("{name}: no issue at {path}; got:\n{errs}"),
        }
    }
}

#[test]
fn display_is_path_colon_message_one_per_line() {
    let doc = with(
        with(base(), "/gateways/1/mailgun/domain", None),
        "/gateways/0/weight",
        Some(json!(-5)),
    );
    let text = errors(&doc).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(&"gateways[1].mailgun.domain: required"),
        "{text}"
    );
    assert_eq!(lines.len(), 2, "{text}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let doc = with(
        with(
            with(base(), "/gateways/1/mailgun/domain", None),
            "/gateways/0/circuit_breaker",
            Some(json!({"timeout": "soon"})),
        ),
        "/routing",
        Some(json!({"strategy": "random"})),
    );
    let errs = errors(&doc);
    for path in [
        "gateways[1].mailgun.domain",
        "gateways[0].circuit_breaker.timeout",
        "routing.strategy",
    ] {
        assert!(errs.has_path(path), "missing {path} in\n{errs}");
    }
}

#[test]
fn absent_values_take_the_built_in_defaults() {
    let c = loaded(&base()).config;
    let g = &c.gateways[1];
    assert_eq!(g.rate_limits, default_rate_limits());
    assert_eq!(g.rate_limits.burst_refill_per_second, 10.0);
    assert_eq!(g.circuit_breaker, default_breaker());
    assert_eq!(g.health_check, default_health_check());
    assert_eq!(c.http, default_http());
    assert!(g.enabled);
    assert_eq!((g.priority, g.weight), (2, 100));
    assert_eq!(g.display_name, "b");
    assert_eq!(c.routing.strategy, Strategy::Priority);
    assert!(c.routing.failover_enabled);
    assert_eq!(c.routing.max_failover_attempts.get(), 3);
    assert_eq!(c.routing.ambiguous_policy, AmbiguousPolicy::Defer);
    assert!(!c.routing.pinned_failover);
    assert_eq!(c.system_limits.daily, None);
    let unset = with(base(), "/gateways/1/priority", None);
    assert_eq!(loaded(&unset).config.gateways[1].priority, DEFAULT_PRIORITY);
}

#[test]
fn gateway_values_override_global_defaults_field_by_field() {
    let doc = with(
        with(
            base(),
            "/global_defaults",
            Some(json!({
                "rate_limits": {"workspace_daily": 10000, "per_hour": 100, "burst_limit": 20},
                "circuit_breaker": {"failure_threshold": 7, "timeout": "90s"}
            })),
        ),
        "/gateways/0/rate_limits",
        Some(json!({"per_hour": null, "burst_limit": 40})),
    );
    let c = loaded(&doc).config;
    let a = &c.gateways[0].rate_limits;
    assert_eq!(a.workspace_daily, Some(10000));
    assert_eq!(a.per_user_daily, Some(200));
    assert_eq!(a.per_hour, None, "null is unlimited");
    assert_eq!(a.burst_limit, Some(40));
    assert_eq!(a.burst_refill_per_second, 40.0, "refill follows the burst");
    let b = &c.gateways[1];
    assert_eq!(b.rate_limits.burst_refill_per_second, 20.0);
    assert_eq!(b.circuit_breaker.failure_threshold.get(), 7);
    assert_eq!(b.circuit_breaker.timeout, Duration::from_secs(90));
    assert_eq!(b.circuit_breaker.success_threshold.get(), 5);
}

#[test]
fn environment_sits_between_gateway_values_and_global_defaults() {
    let doc = with(
        with(
            base(),
            "/global_defaults",
            Some(json!({
                "circuit_breaker": {"failure_threshold": 7, "success_threshold": 4, "timeout": "90s"},
                "health_check": {"interval": "45s", "timeout": "5s"}
            })),
        ),
        "/gateways/0/circuit_breaker",
        Some(json!({"failure_threshold": 15, "timeout": "120s"})),
    );
    let doc = with(
        doc,
        "/gateways/0/health_check",
        Some(json!({"interval": "20s"})),
    );
    let doc = with(doc, "/system_limits", Some(json!({"daily": 5000})));
    let env = env_of(&[
        ("CB_FAILURE_THRESHOLD", "12"),
        ("CB_SUCCESS_THRESHOLD", "2"),
        ("CB_TIMEOUT", "30s"),
        ("HEALTH_CHECK_INTERVAL", "1m"),
        ("HEALTH_CHECK_TIMEOUT", "3s"),
        ("QUEUE_DAILY_RATE_LIMIT", "9000"),
    ]);
    let c = load_config(Some(&doc.to_string()), None, &env)
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    let (a, b) = (&c.gateways[0], &c.gateways[1]);
    // (what, got, want)
    let cases = [
        (
            "gateway threshold beats env",
            a.circuit_breaker.failure_threshold.get(),
            15,
        ),
        (
            "env threshold beats global",
            b.circuit_breaker.failure_threshold.get(),
            12,
        ),
        (
            "env success beats global",
            a.circuit_breaker.success_threshold.get(),
            2,
        ),
    ];
    for (what, got, want) in cases {
        assert_eq!(got, want, "{what}");
    }
    let durations = [
        (
            "gateway timeout beats env",
            a.circuit_breaker.timeout,
            Duration::from_secs(120),
        ),
        (
            "env timeout beats global",
            b.circuit_breaker.timeout,
            Duration::from_secs(30),
        ),
        (
            "gateway interval beats env",
            a.health_check.interval,
            Duration::from_secs(20),
        ),
        (
            "env interval beats global",
            b.health_check.interval,
            Duration::from_secs(60),
        ),
        (
            "env health timeout beats global",
            a.health_check.timeout,
            Duration::from_secs(3),
        ),
    ];
    for (what, got, want) in durations {
        assert_eq!(got, want, "{what}");
    }
    assert_eq!(c.system_limits.daily, Some(9000), "env beats system_limits");
}

#[test]
fn environment_applies_without_global_defaults() {
    let env = env_of(&[
        ("CB_TIMEOUT", "5m"),
        ("QUEUE_DAILY_RATE_LIMIT", "unlimited"),
    ]);
    let doc = with(base(), "/system_limits", Some(json!({"daily": 100})));
    let c = load_config(Some(&doc.to_string()), None, &env)
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    assert_eq!(
        c.gateways[0].circuit_breaker.timeout,
        Duration::from_secs(300)
    );
    assert_eq!(c.system_limits.daily, None);
}

#[test]
fn malformed_environment_values_are_errors_naming_the_variable() {
    let cases = [
        ("CB_TIMEOUT", "abc", "invalid duration \"abc\""),
        ("CB_TIMEOUT", "0s", "non-positive"),
        ("CB_FAILURE_THRESHOLD", "0", "positive integer"),
        ("CB_SUCCESS_THRESHOLD", "-3", "positive integer"),
        ("HEALTH_CHECK_INTERVAL", "30", "invalid duration"),
        ("HEALTH_CHECK_TIMEOUT", "ten seconds", "invalid duration"),
        ("QUEUE_DAILY_RATE_LIMIT", "0", "0 is not unlimited"),
        ("QUEUE_DAILY_RATE_LIMIT", "lots", "positive integer"),
        ("GATEWAY_MODE", "both", "legacy, new or hybrid"),
    ];
    for (var, value, fragment) in cases {
        let env = env_of(&[(var, value)]);
        let errs = match load_config(Some(&base().to_string()), None, &env) {
            Ok(_) => panic!("{var}={value} should fail"),
            Err(e) => e,
        };
        let issue = errs.0.iter().find(|i| i.path == var);
        assert!(
            issue.is_some_and(|i| i.message.contains(fragment)),
            "{var}={value}: {errs}"
        );
    }
}

#[test]
fn empty_environment_values_count_as_unset() {
    let env = env_of(&[("CB_TIMEOUT", ""), ("GATEWAY_MODE", " ")]);
    let c = load_config(Some(&base().to_string()), None, &env)
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    assert_eq!(
        c.gateways[0].circuit_breaker.timeout,
        Duration::from_secs(60)
    );
}

#[test]
fn inline_secrets_load_with_a_warning_at_their_path() {
    let doc = with(
        base(),
        "/gateways/0/mailgun/api_key",
        Some(json!("key-abc123")),
    );
    let l = loaded(&doc);
    let shown: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        vec![
            "gateways[0].mailgun.api_key: inline secret; use env:, secretsmanager: or ssm: \
             outside local runs"
                .to_owned()
        ]
    );
}

#[test]
fn secret_references_parse_into_their_kind() {
    let cases = [
        ("env:MG_KEY", SecretRef::Env("MG_KEY".into())),
        (
            "secretsmanager:arn:aws:secretsmanager:eu-west-1:1:secret:mg#api_key",
            SecretRef::SecretsManager {
                arn: "arn:aws:secretsmanager:eu-west-1:1:secret:mg".into(),
                json_key: Some("api_key".into()),
            },
        ),
        ("ssm:/mail/mg", SecretRef::Ssm("/mail/mg".into())),
    ];
    for (text, want) in cases {
        let doc = with(base(), "/gateways/0/mailgun/api_key", Some(json!(text)));
        let l = loaded(&doc);
        let ProviderSettings::Mailgun(m) = &l.config.gateways[0].provider else {
            panic!("mailgun expected");
        };
        assert_eq!(m.api_key, want, "{text}");
        assert!(l.warnings.is_empty(), "{text}: {:?}", l.warnings);
    }
}

#[test]
fn strategy_disagreement_is_a_warning_and_routing_strategy_wins() {
    let doc = with(
        with(
            base(),
            "/global_defaults",
            Some(json!({"routing_strategy": "weighted"})),
        ),
        "/routing",
        Some(json!({"strategy": "failover"})),
    );
    let l = loaded(&doc);
    assert_eq!(l.config.routing.strategy, Strategy::Failover);
    assert!(
        l.warnings
            .iter()
            .any(|w| w.path == "global_defaults.routing_strategy"),
        "{:?}",
        l.warnings
    );
    let only_global = with(
        base(),
        "/global_defaults",
        Some(json!({"routing_strategy": "domain_based"})),
    );
    assert_eq!(
        loaded(&only_global).config.routing.strategy,
        Strategy::DomainBased
    );
}

#[test]
fn mailgun_base_url_with_v3_is_normalised() {
    let cases = [
        ("https://api.mailgun.net/v3", "https://api.mailgun.net"),
        (
            "https://api.eu.mailgun.net/v3/",
            "https://api.eu.mailgun.net",
        ),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ];
    for (given, want) in cases {
        let doc = with(base(), "/gateways/0/mailgun/base_url", Some(json!(given)));
        let ProviderSettings::Mailgun(m) = &loaded(&doc).config.gateways[0].provider else {
            panic!("mailgun expected");
        };
        assert_eq!(m.base_url.as_deref(), Some(want), "{given}");
    }
}

#[test]
fn custom_user_limits_are_keyed_by_lower_case_address() {
    let doc = with(
        base(),
        "/gateways/0/rate_limits",
        Some(
            json!({"custom_user_limits": {"Front.Desk@Clinic.Example": 500, "vip@x.example": null}}),
        ),
    );
    let rl = &loaded(&doc).config.gateways[0].rate_limits;
    assert_eq!(
        rl.per_user_daily_for("FRONT.DESK@clinic.example"),
        Some(500)
    );
    assert_eq!(rl.per_user_daily_for("vip@x.example"), None);
    assert_eq!(rl.per_user_daily_for("other@x.example"), Some(200));
}

#[test]
fn local_gateway_types_resolve_their_blocks() {
    let doc = json!({
        "gateways": [
            {"id": "cap", "type": "capture", "capture": {"directory": ".local/outbox"},
             "routing": {"can_route": ["*"], "failover_to": ["sim"]}},
            {"id": "sim", "type": "simulated",
             "simulated": {"latency": "100ms", "seed": 7, "throttle_rate": 0.5, "permanent_rate": 0.5},
             "routing": {"can_route": ["*"]}},
            {"id": "relay", "type": "smtp", "smtp": {"host": "localhost", "tls": "none"},
             "routing": {"can_route": ["@relay.example"]}}
        ]
    });
    let c = loaded(&doc).config;
    assert_eq!(
        c.gateways[0].provider,
        ProviderSettings::Capture(CaptureSettings {
            directory: ".local/outbox".into()
        })
    );
    let ProviderSettings::Simulated(s) = &c.gateways[1].provider else {
        panic!("simulated expected");
    };
    assert_eq!(
        (s.latency, s.seed, s.throttle_rate, s.timeout_rate),
        (Duration::from_millis(100), 7, 0.5, 0.0)
    );
    let ProviderSettings::Smtp(s) = &c.gateways[2].provider else {
        panic!("smtp expected");
    };
    assert_eq!((s.port, s.tls), (25, SmtpTls::None));
}

#[test]
fn a_gateway_without_can_route_is_warned_about() {
    let doc = with(base(), "/gateways/1/routing", None);
    let l = loaded(&doc);
    assert!(
        l.warnings
            .iter()
            .any(|w| w.path == "gateways[1].routing.can_route")
    );
    assert!(l.config.gateways[1].routing.can_route.is_empty());
}

const WORKSPACES: &str = r#"[
  {"id": "clinic", "domains": ["clinic.example", "Clinic-Mail.example"],
   "rate_limits": {"workspace_daily": 0, "per_user_daily": 150,
                   "custom_user_limits": {"Boss@clinic.example": 0}},
   "gmail": {"service_account_env": "CLINIC_SA", "default_sender": "noreply@clinic.example"}},
  {"id": "labs", "domain": "labs.example",
   "mailgun": {"api_key": "env:LABS_KEY", "base_url": "", "region": "eu", "default_tags": ["labs"]}}
]"#;

#[test]
fn legacy_workspaces_convert_into_gateways_that_validate() {
    let (doc, warnings) = convert_legacy(WORKSPACES).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        warnings
            .iter()
            .any(|w| w.path == "workspaces[1].mailgun.base_url"),
        "{warnings:?}"
    );
    let l = loaded(&doc);
    let clinic = &l.config.gateways[0];
    assert_eq!(clinic.kind, GatewayKind::GoogleWorkspace);
    let routes: Vec<String> = clinic
        .routing
        .can_route
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(routes, ["@clinic.example", "@clinic-mail.example"]);
    assert_eq!(
        clinic.rate_limits.workspace_daily, None,
        "0 means unlimited in the original"
    );
    assert_eq!(clinic.rate_limits.per_user_daily, Some(150));
    assert_eq!(
        clinic.rate_limits.per_user_daily_for("boss@clinic.example"),
        None
    );
    let ProviderSettings::GoogleWorkspace(g) = &clinic.provider else {
        panic!("google expected");
    };
    assert_eq!(g.service_account, SecretRef::Env("CLINIC_SA".into()));
    let labs = &l.config.gateways[1];
    let ProviderSettings::Mailgun(m) = &labs.provider else {
        panic!("mailgun expected");
    };
    assert_eq!(
        (m.domain.as_str(), m.region, m.base_url.as_deref()),
        ("labs.example", MailgunRegion::Eu, None)
    );
    assert_eq!(m.tags.default, ["labs"]);
}

#[test]
fn legacy_mode_records_the_workspace_as_source() {
    let l = load_config(None, Some(WORKSPACES), &no_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l.config.mode, GatewayMode::Legacy);
    let sources: Vec<&GatewaySource> = l.config.gateways.iter().map(|g| &g.source).collect();
    assert_eq!(
        sources,
        [
            &GatewaySource::LegacyWorkspace("clinic".into()),
            &GatewaySource::LegacyWorkspace("labs".into())
        ]
    );
}

#[test]
fn a_service_account_file_becomes_an_env_placeholder_with_a_warning() {
    let ws = r#"[{"id": "old.ws", "domain": "old.example",
                  "gmail": {"service_account_file": "/etc/relay/sa.json"}}]"#;
    let (doc, warnings) = convert_legacy(ws).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        doc.pointer("/gateways/0/google_workspace/service_account"),
        Some(&json!("env:GMAIL_SERVICE_ACCOUNT_OLD_WS"))
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.path == "workspaces[0].gmail.service_account_file"
                && w.message.contains("env:GMAIL_SERVICE_ACCOUNT_OLD_WS")),
        "{warnings:?}"
    );
}

#[test]
fn a_workspace_with_both_blocks_yields_gmail_failing_over_to_mailgun() {
    let ws = r#"[{"id": "both", "domain": "both.example",
                  "gmail": {"service_account_env": "SA"},
                  "mailgun": {"api_key": "env:MG", "enabled": false}}]"#;
    let (doc, _) = convert_legacy(ws).unwrap_or_else(|e| panic!("{e}"));
    let c = loaded(&doc).config;
    let ids: Vec<&str> = c.gateways.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids, ["both-gmail", "both-mailgun"]);
    assert_eq!(c.gateways[0].routing.failover_to, ["both-mailgun"]);
    assert!(!c.gateways[1].enabled);
}

#[test]
fn broken_workspaces_are_reported_with_workspace_paths() {
    let cases = [
        (
            r#"[{"id": "x", "domain": "x.example"}]"#,
            "workspaces[0]",
            "neither",
        ),
        (
            r#"[{"id": "x", "gmail": {"service_account_env": "S"}}]"#,
            "workspaces[0].domains",
            "required",
        ),
        (
            r#"[{"id": "x", "domains": [], "gmail": {"service_account_env": "S"}}]"#,
            "workspaces[0].domains",
            "required",
        ),
        (
            r#"[{"id": "x y", "domain": "x.example", "gmail": {"service_account_env": "S"}}]"#,
            "workspaces[0].id",
            "gateway id",
        ),
        (
            r#"[{"id": "x", "domain": "x.example", "gmail": {}}]"#,
            "workspaces[0].gmail",
            "service_account_env",
        ),
        (
            r#"[{"id": "x", "domain": "x.example", "mailgun": {}}]"#,
            "workspaces[0].mailgun.api_key",
            "required",
        ),
        (
            r#"[{"id": "x", "domain": "x.example", "rate_limits": {"workspace_daily": -1}, "gmail": {"service_account_env": "S"}}]"#,
            "workspaces[0].rate_limits.workspace_daily",
            "non-negative",
        ),
        (
            r#"[{"id": "x", "domian": "x.example", "gmail": {"service_account_env": "S"}}]"#,
            "workspaces[0].domian",
            "unknown key",
        ),
        (r#"{"id": "x"}"#, "workspaces", "array"),
    ];
    for (ws, path, fragment) in cases {
        match convert_legacy(ws) {
            Ok(doc) => panic!("{ws} should fail, got {doc:?}"),
            Err(errs) => assert!(
                errs.0
                    .iter()
                    .any(|i| i.path == path && i.message.contains(fragment)),
                "{ws}: want {path}: {fragment}; got\n{errs}"
            ),
        }
    }
}

#[test]
fn hybrid_mode_loads_legacy_gateways_first() {
    let env = env_of(&[("GATEWAY_MODE", "hybrid")]);
    let l = load_config(Some(&base().to_string()), Some(WORKSPACES), &env)
        .unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<(&str, bool)> = l
        .config
        .gateways
        .iter()
        .map(|g| (g.id.as_str(), g.source == GatewaySource::ConfigFile))
        .collect();
    assert_eq!(
        ids,
        [("clinic", false), ("labs", false), ("a", true), ("b", true)]
    );
    assert_eq!(l.config.mode, GatewayMode::Hybrid);
}

#[test]
fn hybrid_id_collision_names_both_sources() {
    let env = env_of(&[("GATEWAY_MODE", "hybrid")]);
    let doc = with(base(), "/gateways/1/id", Some(json!("labs")));
    let doc = with(
        doc,
        "/gateways/0/routing/failover_to",
        Some(json!(["labs"])),
    );
    let errs = match load_config(Some(&doc.to_string()), Some(WORKSPACES), &env) {
        Ok(_) => panic!("collision should fail"),
        Err(e) => e,
    };
    let issue = errs
        .0
        .iter()
        .find(|i| i.path == "gateways[1].id")
        .unwrap_or_else(|| panic!("{errs}"));
    assert!(issue.message.contains("config file"), "{}", issue.message);
    assert!(
        issue.message.contains("legacy workspace \"labs\""),
        "{}",
        issue.message
    );
}

/// (config given, workspaces given, env, mode or the variable named by the error)
type ModeCase = (
    Option<&'static str>,
    Option<&'static str>,
    &'static [(&'static str, &'static str)],
    Result<GatewayMode, &'static str>,
);

#[test]
fn mode_follows_the_documents_given_when_unset() {
    let cases: [ModeCase; 6] = [
        (Some("c"), None, &[], Ok(GatewayMode::New)),
        (None, Some("w"), &[], Ok(GatewayMode::Legacy)),
        (Some("c"), Some("w"), &[], Ok(GatewayMode::New)),
        (None, None, &[], Err("GATEWAY_CONFIG_FILE")),
        (
            Some("c"),
            None,
            &[("GATEWAY_MODE", "hybrid")],
            Err("GMAIL_WORKSPACES_FILE"),
        ),
        (
            None,
            Some("w"),
            &[("GATEWAY_MODE", "new")],
            Err("GATEWAY_CONFIG_FILE"),
        ),
    ];
    let config = base().to_string();
    for (c, w, env, want) in cases {
        let env = env_of(env);
        let got = load_config(c.map(|_| config.as_str()), w.map(|_| WORKSPACES), &env);
        match (got, want) {
            (Ok(l), Ok(mode)) => assert_eq!(l.config.mode, mode),
            (Err(e), Err(path)) => assert!(e.has_path(path), "{e}"),
            (got, want) => panic!("{c:?} {w:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn an_unused_document_is_warned_about() {
    let l = load_config(Some(&base().to_string()), Some(WORKSPACES), &no_env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(l.warnings.iter().any(|w| w.path == "GMAIL_WORKSPACES_FILE"));
    assert!(
        l.config
            .gateways
            .iter()
            .all(|g| g.source == GatewaySource::ConfigFile)
    );
}

#[test]
fn a_document_that_is_not_an_object_is_reported_at_config() {
    let errs = match load_config(Some("[1, 2]"), None, &no_env) {
        Ok(_) => panic!("should fail"),
        Err(e) => e,
    };
    assert!(
        errs.0
            .iter()
            .any(|i| i.to_string() == "config: expected an object, found an array"),
        "{errs}"
    );
}

#[test]
fn invalid_json_is_an_error_not_a_panic() {
    let errs = match load_config(Some("{\"gateways\": ["), None, &no_env) {
        Ok(_) => panic!("should fail"),
        Err(e) => e,
    };
    assert!(errs.has_path("config"), "{errs}");
}

const SECRET: &str = "key-s3cr3t-literal-0042";

#[test]
fn inline_secrets_never_show_in_debug_redacted_document_or_summary() {
    let doc = with(
        with(base(), "/gateways/0/mailgun/api_key", Some(json!(SECRET))),
        "/gateways/0/mailgun/webhook_signing_key",
        Some(json!(SECRET)),
    );
    let l = loaded(&doc);
    let debug = format!("{:?}", l);
    assert!(!debug.contains(SECRET), "{debug}");
    let redacted = redacted_document(&l.config).to_string();
    assert!(!redacted.contains(SECRET), "{redacted}");
    assert!(redacted.contains("<redacted>"));
    assert!(!l.config.gateways[0].summary().contains(SECRET));
}

#[test]
fn a_misplaced_secret_is_not_echoed_in_errors() {
    let doc = with(base(), "/gateways/0/mailgun/api_key", Some(json!([SECRET])));
    let errs = errors(&doc);
    assert!(errs.has_path("gateways[0].mailgun.api_key"));
    assert!(!errs.to_string().contains(SECRET));
}

#[test]
fn the_redacted_document_reloads_to_the_same_config() {
    let doc = with(
        with(
            base(),
            "/routing",
            Some(
                json!({"strategy": "weighted", "load_balancing_enabled": true,
            "rules": [{"senders": ["@vip.example"], "strategy": "priority"}]}),
            ),
        ),
        "/gateways/0/rate_limits",
        Some(json!({"per_hour": null, "custom_user_limits": {"a@x.example": 3}})),
    );
    let first = loaded(&doc).config;
    let again = loaded(&redacted_document(&first)).config;
    assert_eq!(again, first);
}

#[test]
fn summary_is_one_line_with_limits_and_failover() {
    let doc = with(
        base(),
        "/gateways/0/rate_limits",
        Some(
            json!({"workspace_daily": 50000, "per_user_daily": 5000, "per_hour": 2000, "burst_limit": 100}),
        ),
    );
    let doc = with(doc, "/gateways/0/weight", Some(json!(100)));
    let c = loaded(&doc).config;
    assert_eq!(
        c.gateways[0].summary(),
        "a  mailgun  priority 1 weight 100  enabled  limits 50000/d 5000/user/d 2000/h burst 100  failover → b"
    );
    let unlimited = with(
        base(),
        "/gateways/1/rate_limits",
        Some(json!({"per_hour": null})),
    );
    let unlimited = with(unlimited, "/gateways/1/enabled", Some(json!(false)));
    assert_eq!(
        loaded(&unlimited).config.gateways[1].summary(),
        "b  mailgun  priority 2 weight 100  disabled  limits 2000/d 200/user/d unlimited/h burst 10"
    );
}

fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z_@.:*0-9 -]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("mailgun"),
            Just("capture"),
            Just("simulated"),
            Just("smtp"),
            Just("30s"),
            Just("*"),
            Just("env:"),
            Just("a"),
            Just("b"),
            Just("")
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("id".to_owned()),
            Just("type".to_owned()),
            Just("gateways".to_owned()),
            Just("mailgun".to_owned()),
            Just("rate_limits".to_owned()),
            Just("routing".to_owned()),
            Just("failover_to".to_owned()),
            Just("circuit_breaker".to_owned()),
            Just("global_defaults".to_owned()),
            Just("simulated".to_owned()),
            "[a-z_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn loading_arbitrary_json_never_panics(doc in arb_json(), ws in arb_json()) {
        let _ = load_config(Some(&doc.to_string()), None, &no_env);
        let _ = convert_legacy(&ws.to_string());
        let env = |name: &str| (name == "GATEWAY_MODE").then(|| "hybrid".to_owned());
        let _ = load_config(Some(&doc.to_string()), Some(&ws.to_string()), &env);
    }

    #[test]
    fn replacing_any_gateway_field_never_panics(key in "[a-z_]{1,16}", value in arb_json()) {
        let doc = with(base(), &format!("/gateways/0/{key}"), Some(value.clone()));
        let _ = load_config(Some(&doc.to_string()), None, &no_env);
        let doc = with(base(), &format!("/gateways/1/mailgun/{key}"), Some(value));
        let _ = load_config(Some(&doc.to_string()), None, &no_env);
    }
}

#[test]
fn a_success_threshold_above_max_requests_is_refused_after_env_is_applied() {
    // Per gateway: 5 successes needed, only 3 trials per half-open round.
    let doc = with(
        base(),
        "/gateways/0/circuit_breaker",
        Some(json!({"success_threshold": 5, "max_requests": 3})),
    );
    let errors = load(&doc).unwrap_err();
    assert!(
        errors.0.iter().any(
            |e| e.path == "gateways[0].circuit_breaker.success_threshold"
                && e.message.contains("exceeds max_requests 3")
        ),
        "{errors}"
    );
    // The same impossibility reached through the environment on top of a gateway's value.
    let doc = with(
        base(),
        "/gateways/1/circuit_breaker",
        Some(json!({"max_requests": 2})),
    );
    let env = env_of(&[("CB_SUCCESS_THRESHOLD", "4")]);
    let errors = load_config(Some(&doc.to_string()), None, &env).unwrap_err();
    assert!(
        errors.has_path("gateways[1].circuit_breaker.success_threshold"),
        "{errors}"
    );
    // Equal is fine: a full round of successes closes it.
    let doc = with(
        base(),
        "/gateways/0/circuit_breaker",
        Some(json!({"success_threshold": 3, "max_requests": 3})),
    );
    loaded(&doc);
}

#[test]
fn legacy_conversion_never_copies_an_inline_mailgun_key() {
    let workspaces = json!([{
        "id": "clinic-1",
        "domain": "clinic.example.com",
        "mailgun": {"api_key": "key-inline-literal-for-tests"}
    }]);
    let (doc, warnings) = convert_legacy(&workspaces.to_string()).unwrap();
    let text = doc.to_string();
    assert!(!text.contains("key-inline-literal"), "{text}");
    assert_eq!(
        doc["gateways"][0]["mailgun"]["api_key"],
        "env:MAILGUN_API_KEY_CLINIC_1"
    );
    assert!(
        warnings.iter().any(|w| w.path.ends_with("mailgun.api_key")
            && w.message.contains("MAILGUN_API_KEY_CLINIC_1")
            && !w.message.contains("inline-literal")),
        "{warnings:?}"
    );
}

#[test]
fn customer_webhooks_resolve_with_every_event_and_every_sender_by_default() {
    let doc = with(
        base(),
        "/customer_webhooks",
        Some(json!([
            {"id": "portal", "url": "https://hooks.clinic.example/mandrill",
             "key": "secretsmanager:arn:aws:secretsmanager:eu-west-1:1:secret:hooks#portal"},
            {"id": "bounces", "url": "http://127.0.0.1:9000/hook", "key": "env:HOOK_KEY",
             "events": ["hard_bounce", "reject"], "senders": ["@clinic.example"], "enabled": false}
        ])),
    );
    let l = loaded(&doc);
    assert_eq!(l.warnings, vec![]);
    let [portal, bounces] = &l.config.customer_webhooks[..] else {
        panic!("two endpoints: {:?}", l.config.customer_webhooks);
    };
    assert_eq!(portal.events, crate::config::MandrillEvent::ALL);
    assert!(portal.senders.is_empty() && portal.enabled);
    assert!(portal.wants(crate::config::MandrillEvent::Open, None));
    assert_eq!(
        bounces.events,
        [
            crate::config::MandrillEvent::HardBounce,
            crate::config::MandrillEvent::Reject
        ]
    );
    assert!(!bounces.enabled);
    // The answer hides the URLs' paths (tokens live there); everything else reloads as it was.
    let mut shown = redacted_document(&l.config);
    assert_eq!(
        shown["customer_webhooks"][0]["url"],
        "https://hooks.clinic.example/<redacted>"
    );
    shown["customer_webhooks"][0]["url"] = json!("https://hooks.clinic.example/mandrill");
    shown["customer_webhooks"][1]["url"] = json!("http://127.0.0.1:9000/hook");
    let again = loaded(&shown).config;
    assert_eq!(
        again, l.config,
        "the redacted document reloads to the same endpoints"
    );
}

#[test]
fn customer_webhook_problems_are_reported_at_their_paths() {
    let doc = with(
        base(),
        "/customer_webhooks",
        Some(json!([
            {"id": "a", "url": "http://hooks.example.com/x", "key": "env:K", "events": ["sent"]},
            {"id": "a", "url": "https://user:pw@hooks.example.com/x", "senders": ["@@bad"]},
            {"id": "bad id!", "url": "not a url", "key": "env:K", "events": [], "colour": 1}
        ])),
    );
    let errs = errors(&doc);
    for path in [
        "customer_webhooks[0].url",
        "customer_webhooks[0].events[0]",
        "customer_webhooks[1].id",
        "customer_webhooks[1].url",
        "customer_webhooks[1].key",
        "customer_webhooks[1].senders[0]",
        "customer_webhooks[2].id",
        "customer_webhooks[2].url",
        "customer_webhooks[2].events",
        "customer_webhooks[2].colour",
    ] {
        assert!(errs.has_path(path), "{path} missing from:\n{errs}");
    }
    assert!(!errs.to_string().contains("pw@"), "{errs}");
}

#[test]
fn an_inline_customer_webhook_key_is_a_warning_and_never_shown() {
    let doc = with(
        base(),
        "/customer_webhooks",
        Some(json!([{"id": "p", "url": "https://h.example/x", "key": SECRET}])),
    );
    let l = loaded(&doc);
    assert!(
        l.warnings
            .iter()
            .any(|w| w.path == "customer_webhooks[0].key"),
        "{:?}",
        l.warnings
    );
    assert!(!format!("{:?}", l.config).contains(SECRET));
    assert!(!redacted_document(&l.config).to_string().contains(SECRET));
}

#[test]
fn a_customer_webhook_url_must_be_canonical_and_its_path_and_query_are_redacted() {
    for (url, ok) in [
        ("https://hooks.example.com/x", true),
        ("https://HOOKS.example.com/x", false),
        ("https://hooks.example.com", false),
        ("https://hooks.example.com:443/x", false),
        ("https://hooks.example.com/x#frag", false),
        ("http://localhost:9000/hook", true),
    ] {
        let doc = with(
            base(),
            "/customer_webhooks",
            Some(json!([{"id": "p", "url": url, "key": "env:K"}])),
        );
        assert_eq!(load(&doc).is_ok(), ok, "{url}");
    }
    let doc = with(
        base(),
        "/customer_webhooks",
        Some(json!([{"id": "p", "url": "https://h.example/x?token=s3cret-token", "key": "env:K"}])),
    );
    let shown = redacted_document(&loaded(&doc).config).to_string();
    assert!(!shown.contains("s3cret-token"), "{shown}");
    assert!(
        shown.contains("https://h.example/<redacted>?<redacted>"),
        "{shown}"
    );
    // A token in the path (Slack, Zapier and others put it there) is hidden too; the host is
    // shown, and a URL without a path is shown whole.
    let doc = with(
        base(),
        "/customer_webhooks",
        Some(json!([
            {"id": "p", "url": "https://hooks.example.com/services/T000/B000/XXXXsecretXXXX", "key": "env:K"},
            {"id": "q", "url": "https://hooks.example.com:8443/", "key": "env:K"}
        ])),
    );
    let shown = redacted_document(&loaded(&doc).config);
    assert_eq!(
        shown["customer_webhooks"][0]["url"],
        "https://hooks.example.com/<redacted>"
    );
    assert_eq!(
        shown["customer_webhooks"][1]["url"],
        "https://hooks.example.com:8443/"
    );
}

#[test]
fn ses_accepts_sha1_sns_signatures_unless_told_not_to() {
    let ses = |extra: Value| {
        let mut block =
            json!({"region": "us-east-1", "sns_topic_arns": ["arn:aws:sns:us-east-1:1:t"]});
        if let (Some(b), Value::Object(x)) = (block.as_object_mut(), extra) {
            b.extend(x);
        }
        with(
            base(),
            "/gateways/2",
            Some(json!({"id": "s", "type": "amazon_ses", "amazon_ses": block,
                "routing": {"can_route": ["*"]}})),
        )
    };
    let accepts = |doc: &Value| match &loaded(doc).config.gateways[2].provider {
        ProviderSettings::AmazonSes(s) => s.sns_accept_sha1_signatures,
        other => panic!("amazon_ses expected: {other:?}"),
    };
    assert!(
        accepts(&ses(json!({}))),
        "default: SNS topics sign with version 1"
    );
    assert!(!accepts(&ses(json!({"sns_accept_sha1_signatures": false}))));
    assert!(accepts(&ses(json!({"sns_accept_sha1_signatures": true}))));
    let e = errors(&ses(json!({"sns_accept_sha1_signatures": "no"}))).to_string();
    assert!(
        e.contains("gateways[2].amazon_ses.sns_accept_sha1_signatures"),
        "{e}"
    );
}

#[test]
fn gmail_look_ups_are_off_unless_lookup_sent_is_set() {
    let gmail = |extra: Value| {
        let mut block = json!({"service_account": "env:SA"});
        if let (Some(b), Value::Object(x)) = (block.as_object_mut(), extra) {
            b.extend(x);
        }
        with(
            base(),
            "/gateways/2",
            Some(
                json!({"id": "g", "type": "google_workspace", "google_workspace": block,
                "routing": {"can_route": ["*"]}}),
            ),
        )
    };
    let looks_up = |doc: &Value| match &loaded(doc).config.gateways[2].provider {
        ProviderSettings::GoogleWorkspace(g) => g.lookup_sent,
        other => panic!("google_workspace expected: {other:?}"),
    };
    assert!(!looks_up(&gmail(json!({}))), "default: no gmail.readonly");
    assert!(looks_up(&gmail(json!({"lookup_sent": true}))));
    assert!(!looks_up(&gmail(json!({"lookup_sent": false}))));
    let e = errors(&gmail(json!({"lookup_sent": "yes"}))).to_string();
    assert!(
        e.contains("gateways[2].google_workspace.lookup_sent"),
        "{e}"
    );
    // The effective document shows the default, and reloads to the same setting.
    let on = loaded(&gmail(json!({"lookup_sent": true}))).config;
    let shown = redacted_document(&on);
    assert_eq!(
        shown["gateways"][2]["google_workspace"]["lookup_sent"],
        true
    );
    let off = redacted_document(&loaded(&gmail(json!({}))).config);
    assert_eq!(off["gateways"][2]["google_workspace"]["lookup_sent"], false);
    assert_eq!(loaded(&shown).config, on);
    // A legacy workspace's gmail block carries it over.
    let ws = r#"[{"id": "w", "domain": "w.example",
                  "gmail": {"service_account_env": "SA", "lookup_sent": true}}]"#;
    let (doc, _) = convert_legacy(ws).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        doc.pointer("/gateways/0/google_workspace/lookup_sent"),
        Some(&json!(true))
    );
}

#[test]
fn suppression_scopes_default_to_the_stream_and_take_all_or_report_a_bad_value() {
    assert_eq!(
        loaded(&base()).config.suppression,
        SuppressionSettings {
            complaint_scope: EventScope::Stream,
            unsubscribe_scope: EventScope::Stream,
        }
    );
    let doc = with(
        base(),
        "/suppression",
        Some(json!({"unsubscribe_scope": "all"})),
    );
    let settings = loaded(&doc).config.suppression;
    assert_eq!(
        (settings.complaint_scope, settings.unsubscribe_scope),
        (EventScope::Stream, EventScope::All)
    );
    for (value, want) in [
        (
            json!({"complaint_scope": "bulk"}),
            "suppression.complaint_scope",
        ),
        (
            json!({"unsubscribe_scope": 1}),
            "suppression.unsubscribe_scope",
        ),
        (json!({"bounce_scope": "all"}), "suppression.bounce_scope"),
    ] {
        let text = errors(&with(base(), "/suppression", Some(value.clone()))).to_string();
        assert!(text.contains(want), "{value}: {text}");
    }
}

#[test]
fn the_transactional_reserve_defaults_to_a_tenth_and_is_bounded() {
    let default = loaded(&base()).config.system_limits;
    assert_eq!(default.transactional_reserve_bp, 1_000);
    // Rounded so that the reserve is never below its share: 5 at 10 % leaves bulk 4.
    assert_eq!(
        [5, 10, 1_000, 0].map(|n| default.bulk_share(n)),
        [4, 9, 900, 0]
    );
    let mut doc = base();
    doc["system_limits"] = json!({"transactional_reserve": 0.25});
    assert_eq!(
        loaded(&doc).config.system_limits.transactional_reserve_bp,
        2_500
    );
    doc["system_limits"] = json!({"transactional_reserve": 0.6});
    assert!(errors(&doc).has_path("system_limits.transactional_reserve"));
    doc["system_limits"] = json!({"transactional_reserve": 0});
    assert_eq!(loaded(&doc).config.system_limits.bulk_share(10), 10);
}
