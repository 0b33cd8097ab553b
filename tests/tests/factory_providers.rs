//! The provider factory: builds the shipped local example without AWS, reports every gateway's
//! problems at once without secrets, and wires a Mailgun client that really sends.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code: a failed setup step should fail the test loudly"
)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use gateway_core::clock::ManualClock;
use gateway_core::config::{Config, ProviderSettings, load_config};
use gateway_core::providers::factory::{FactoryError, Problem, build_providers};
use gateway_core::secrets::{SecretError, SecretResolver};
use gateway_tests::{http_settings, rich_message};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const NOW: i64 = 1_795_910_400_000;
const KEY: &str = "key-factory-0123456789abcdef";

fn repo_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load(text: &str) -> Config {
    load_config(Some(text), None, &|_| None)
        .unwrap_or_else(|e| panic!("config does not load: {e}"))
        .config
}

fn resolver(vars: &[(&str, &str)]) -> Arc<SecretResolver> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Arc::new(
        SecretResolver::new(Arc::new(ManualClock::new(NOW)))
            .with_env_lookup(Arc::new(move |name| vars.get(name).cloned())),
    )
}

fn unique_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "gw-factory-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ))
}

async fn build(
    config: &Config,
    resolver: &Arc<SecretResolver>,
) -> Result<Vec<String>, FactoryError> {
    let built = build_providers(
        config,
        resolver,
        &config.http,
        Arc::new(ManualClock::new(NOW)),
    )
    .await?;
    let mut ids: Vec<String> = built.keys().cloned().collect();
    ids.sort();
    Ok(ids)
}

#[tokio::test]
async fn local_example_builds_without_aws_and_creates_the_capture_directory() {
    let mut config = load(&repo_file("examples/local.json"));
    let outbox = unique_dir("outbox").join("nested");
    for gateway in &mut config.gateways {
        if let ProviderSettings::Capture(capture) = &mut gateway.provider {
            capture.directory = outbox.display().to_string();
        }
    }
    let ids = build(&config, &resolver(&[])).await.unwrap();
    assert_eq!(ids, ["local-capture", "local-simulated"]);
    assert!(outbox.is_dir(), "capture directory was not created");
    std::fs::remove_dir_all(outbox.parent().unwrap()).ok();
}

fn two_broken_gateways() -> String {
    serde_json::json!({
        "gateways": [
            {"id": "mg-main", "type": "mailgun", "priority": 1,
             "mailgun": {"api_key": "env:FACTORY_MG_KEY", "domain": "mg.clinic.example"},
             "routing": {"can_route": ["*"]}},
            {"id": "mg-off", "type": "mailgun", "priority": 2, "enabled": false,
             "mailgun": {"api_key": "env:FACTORY_DISABLED_KEY", "domain": "mg.clinic.example"},
             "routing": {"can_route": ["*"]}},
            {"id": "sg-main", "type": "sendgrid", "priority": 3,
             "sendgrid": {"api_key": "env:FACTORY_SG_KEY"},
             "routing": {"can_route": ["*"]}},
            {"id": "gmail", "type": "google_workspace", "priority": 4,
             "google_workspace": {"service_account": "{\"private_key\": \"SUPER-SECRET-PEM\"}"},
             "routing": {"can_route": ["*"]}}
        ]
    })
    .to_string()
}

#[tokio::test]
async fn every_problem_is_reported_with_gateway_and_variable_but_no_secret() {
    let config = load(&two_broken_gateways());
    let err = build(&config, &resolver(&[])).await.unwrap_err();
    let located: Vec<(usize, &str)> = err
        .problems
        .iter()
        .map(|p| (p.index, p.gateway_id.as_str()))
        .collect();
    assert_eq!(located, [(0, "mg-main"), (2, "sg-main"), (3, "gmail")]);
    assert!(matches!(
        &err.problems[0].problem,
        Problem::Secret { field: "mailgun.api_key", source: SecretError::MissingEnv { name } }
            if name == "FACTORY_MG_KEY"
    ));
    assert!(matches!(&err.problems[2].problem, Problem::Gmail(_)));
    let text = err.to_string();
    for wanted in [
        "gateways[0] (mg-main)",
        "FACTORY_MG_KEY",
        "gateways[2] (sg-main)",
        "FACTORY_SG_KEY",
        "gateways[3] (gmail)",
    ] {
        assert!(text.contains(wanted), "{wanted} missing from: {text}");
    }
    assert!(
        !text.contains("FACTORY_DISABLED_KEY"),
        "disabled gateway reported: {text}"
    );
    assert!(!text.contains("SUPER-SECRET"), "secret leaked: {text}");
    assert!(
        !format!("{err:?}").contains("SUPER-SECRET"),
        "secret leaked in Debug"
    );
}

#[tokio::test]
async fn mailgun_gateway_built_by_the_factory_sends_through_the_api() {
    let server = MockServer::start().await;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("api:{KEY}"))
    );
    Mock::given(method("POST"))
        .and(path("/v3/mg.clinic.example/messages"))
        .and(header("authorization", auth.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": "<factory.1@mg.clinic.example>", "message": "Queued. Thank you."
        })))
        .expect(1)
        .mount(&server)
        .await;
    let config = load(
        &serde_json::json!({
            "gateways": [{
                "id": "mg-main", "type": "mailgun",
                "mailgun": {"api_key": "env:FACTORY_MG_KEY", "domain": "mg.clinic.example",
                            "base_url": server.uri()},
                "routing": {"can_route": ["*"]}
            }]
        })
        .to_string(),
    );
    let providers = build_providers(
        &config,
        &resolver(&[("FACTORY_MG_KEY", KEY)]),
        &http_settings(Duration::from_secs(5)),
        Arc::new(ManualClock::new(NOW)),
    )
    .await
    .unwrap();
    let mailgun = providers.get("mg-main").expect("mailgun built");
    assert_eq!(mailgun.gateway_id(), "mg-main");
    let accepted = mailgun.send(&rich_message(), NOW).await.unwrap();
    assert_eq!(
        accepted.provider_message_id.as_deref(),
        Some("<factory.1@mg.clinic.example>")
    );
}
