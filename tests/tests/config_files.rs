//! The shipped config files against both the published JSON Schema and the loader: what
//! should validate passes both, the invalid fixture fails both with the expected paths.

// Helpers of a test target: a panic there is a test failure with its message.
#![allow(clippy::panic)]

use std::path::PathBuf;

use gateway_core::config::{
    ConfigErrors, GatewayKind, Loaded, ProviderSettings, convert_legacy, load_config,
    redacted_document,
};
use serde_json::Value;

fn repo_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON: {e}"))
}

fn schema() -> jsonschema::Validator {
    let schema = json(&repo_file("shared/schema/gateway-config.schema.json"));
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

fn schema_errors(doc: &Value) -> Vec<String> {
    schema()
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Loaded, ConfigErrors> {
    load_config(Some(text), None, &no_env)
}

const VALID: [&str; 3] = [
    "examples/gateway-config.json",
    "examples/local.json",
    "tests/fixtures/original-gateways.json",
];

#[test]
fn every_valid_config_file_passes_the_schema_and_the_loader() {
    for rel in VALID {
        let text = repo_file(rel);
        assert_eq!(schema_errors(&json(&text)), Vec::<String>::new(), "{rel}");
        if let Err(e) = load(&text) {
            panic!("{rel} does not load:\n{e}");
        }
    }
}

#[test]
fn the_seed_example_loads_without_warnings_and_defines_its_failover_target() {
    let loaded = load(&repo_file("examples/gateway-config.json")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.warnings, vec![]);
    let primary = loaded
        .config
        .gateway("mailgun-primary")
        .unwrap_or_else(|| panic!("primary"));
    assert_eq!(primary.routing.failover_to, ["mailgun-secondary"]);
    assert_eq!(
        primary.summary(),
        "mailgun-primary  mailgun  priority 1 weight 100  enabled  limits 50000/d 5000/user/d \
         2000/h burst 100  failover → mailgun-secondary"
    );
    let ProviderSettings::Mailgun(m) = &primary.provider else {
        panic!("mailgun expected");
    };
    assert_eq!(m.base_url.as_deref(), Some("https://api.mailgun.net"));
    let secondary = loaded
        .config
        .gateway("mailgun-secondary")
        .unwrap_or_else(|| panic!("secondary"));
    assert_eq!(
        (secondary.kind, secondary.priority),
        (GatewayKind::Mailgun, 2)
    );
    // The secondary sets no limits: global_defaults apply.
    assert_eq!(secondary.rate_limits.workspace_daily, Some(10000));
    assert_eq!(secondary.circuit_breaker.max_requests.get(), 100);
}

#[test]
fn the_original_fixture_keeps_its_limits_and_breakers() {
    let c = load(&repo_file("tests/fixtures/original-gateways.json"))
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    let p = c
        .gateway("test-mailgun-primary")
        .unwrap_or_else(|| panic!("primary"));
    let rl = &p.rate_limits;
    assert_eq!(
        (
            rl.workspace_daily,
            rl.per_user_daily,
            rl.per_hour,
            rl.burst_limit
        ),
        (Some(1000), Some(100), Some(50), Some(10))
    );
    let cb = &p.circuit_breaker;
    assert_eq!(
        (
            cb.failure_threshold.get(),
            cb.success_threshold.get(),
            cb.timeout.as_secs(),
            cb.max_requests.get()
        ),
        (5, 3, 30, 10)
    );
    assert!(p.routing.exclude_patterns[0].matches("sender@internal.example.com"));
    let s = c
        .gateway("test-mailgun-secondary")
        .unwrap_or_else(|| panic!("secondary"));
    assert_eq!((s.priority, s.weight), (2, 50));
    let cb = &s.circuit_breaker;
    assert_eq!(
        (
            cb.failure_threshold.get(),
            cb.success_threshold.get(),
            cb.timeout.as_secs()
        ),
        (3, 2, 60)
    );
}

#[test]
fn the_invalid_fixture_fails_the_schema_and_the_loader_naming_all_four_problems() {
    let text = repo_file("tests/fixtures/invalid-config.json");
    assert!(
        !schema_errors(&json(&text)).is_empty(),
        "schema accepted the invalid fixture"
    );
    let errs = match load(&text) {
        Ok(_) => panic!("invalid fixture loaded"),
        Err(e) => e,
    };
    for path in [
        "gateways[0].mailgun.domain",
        "gateways[0].circuit_breaker.timeout",
        "gateways[0].routing.failover_to[0]",
        "gateways[1].id",
    ] {
        assert!(errs.has_path(path), "{path} missing from\n{errs}");
    }
}

#[test]
fn the_legacy_workspaces_example_converts_into_a_valid_config_routed_by_domain() {
    let (doc, _warnings) =
        convert_legacy(&repo_file("examples/workspaces.json")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(schema_errors(&doc), Vec::<String>::new());
    let c = load(&doc.to_string())
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    let gmail = c
        .gateway("clinic-gmail")
        .unwrap_or_else(|| panic!("gmail workspace"));
    assert_eq!(gmail.kind, GatewayKind::GoogleWorkspace);
    let routes: Vec<String> = gmail
        .routing
        .can_route
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(routes, ["@clinic.example", "@clinic-mail.example"]);
    assert_eq!(gmail.rate_limits.per_user_daily, None, "0 → unlimited");
    assert_eq!(
        gmail
            .rate_limits
            .per_user_daily_for("frontdesk@clinic.example"),
        Some(500)
    );
    let mailgun = c
        .gateway("labs-mailgun")
        .unwrap_or_else(|| panic!("mailgun workspace"));
    assert_eq!(mailgun.kind, GatewayKind::Mailgun);
    assert_eq!(mailgun.domain.as_deref(), Some("labs.example"));
    let routes: Vec<String> = mailgun
        .routing
        .can_route
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(routes, ["@labs.example"]);
    assert!(mailgun.routing.can_route[0].matches("results@Labs.example"));
    assert!(!mailgun.routing.can_route[0].matches("results@clinic.example"));
    assert_eq!(mailgun.rate_limits.workspace_daily, None);
}

#[test]
fn redacted_documents_of_the_examples_are_valid_configs() {
    for rel in VALID {
        let loaded = load(&repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let mut doc = redacted_document(&loaded.config);
        assert_eq!(schema_errors(&doc), Vec::<String>::new(), "{rel}");
        // Customer-webhook URLs show only scheme, host and port (a token may be in the path);
        // with the URLs put back, everything else reloads as it was.
        for (i, hook) in loaded.config.customer_webhooks.iter().enumerate() {
            let shown = doc["customer_webhooks"][i]["url"]
                .as_str()
                .unwrap_or_default();
            let has_path = hook
                .url
                .splitn(4, '/')
                .nth(3)
                .is_some_and(|p| !p.is_empty());
            if has_path {
                assert!(
                    shown.ends_with("/<redacted>"),
                    "{rel}: the path is not shown: {shown}"
                );
            }
            doc["customer_webhooks"][i]["url"] = serde_json::json!(hook.url);
        }
        let again = load(&doc.to_string()).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(again.config, loaded.config, "{rel}");
    }
}

#[test]
fn the_schema_rejects_what_the_loader_rejects_per_gateway() {
    let base = json(&repo_file("examples/gateway-config.json"));
    let cases: [(&str, Value); 5] = [
        ("/gateways/0/priorty", serde_json::json!(1)),
        (
            "/gateways/0/sendgrid",
            serde_json::json!({"api_key": "env:X"}),
        ),
        ("/gateways/0/rate_limits/per_hour", serde_json::json!(0)),
        (
            "/gateways/0/circuit_breaker/timeout",
            serde_json::json!("invalid-timeout"),
        ),
        ("/gateways/0/mailgun/api_key", serde_json::json!("env:")),
    ];
    for (pointer, value) in cases {
        let mut doc = base.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
        match doc.pointer_mut(parent) {
            Some(Value::Object(m)) => {
                m.insert(key.to_owned(), value);
            }
            _ => panic!("no object at {parent}"),
        }
        assert!(!schema_errors(&doc).is_empty(), "schema accepted {pointer}");
        assert!(load(&doc.to_string()).is_err(), "loader accepted {pointer}");
    }
}
