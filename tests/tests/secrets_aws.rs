//! Secret resolution against Secrets Manager and SSM in the moto emulator: values, JSON keys,
//! errors that name the reference and never the value, caching with a TTL.
//!
//! Needs the emulator: `scripts/services up && source .local/services.env`. The secrets are
//! created with plain JSON-protocol requests (moto does not check signatures), so this crate
//! needs no SDK of its own.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code: a failed setup step should fail the test loudly"
)]

use std::sync::Arc;
use std::time::Duration;

use gateway_core::clock::ManualClock;
use gateway_core::config::SecretRef;
use gateway_core::secrets::{SecretError, SecretResolver};
use gateway_tests::moto_url;

const NOW: i64 = 1_795_910_400_000;
const API_KEY: &str = "SG.very-secret-value-4711";

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// One JSON-protocol request to moto for `service` (`secretsmanager`, `ssm`).
async fn aws_call(service: &str, target: &str, body: serde_json::Value) -> serde_json::Value {
    let response = reqwest::Client::new()
        .post(format!("{}/", moto_url()))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", target)
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=testing/20261128/us-east-1/{service}/aws4_request, \
                 SignedHeaders=host, Signature=0"
            ),
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{target}: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{target} answered {status}: {text}");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

async fn create_secret(name: &str, value: &str) -> String {
    let out = aws_call(
        "secretsmanager",
        "secretsmanager.CreateSecret",
        serde_json::json!({"Name": name, "SecretString": value}),
    )
    .await;
    out["ARN"].as_str().expect("ARN").to_owned()
}

async fn put_secret_value(arn: &str, value: &str) {
    aws_call(
        "secretsmanager",
        "secretsmanager.PutSecretValue",
        serde_json::json!({"SecretId": arn, "SecretString": value}),
    )
    .await;
}

async fn put_parameter(name: &str, value: &str) {
    aws_call(
        "ssm",
        "AmazonSSM.PutParameter",
        serde_json::json!({"Name": name, "Value": value, "Type": "SecureString", "Overwrite": true}),
    )
    .await;
}

fn resolver(clock: Arc<ManualClock>) -> SecretResolver {
    moto_url();
    SecretResolver::new(clock)
}

fn secretsmanager(arn: &str, key: Option<&str>) -> SecretRef {
    SecretRef::SecretsManager {
        arn: arn.to_owned(),
        json_key: key.map(str::to_owned),
    }
}

#[tokio::test]
async fn secretsmanager_string_and_json_key_resolve() {
    let plain = create_secret(&unique("plain"), API_KEY).await;
    let json = create_secret(
        &unique("json"),
        &serde_json::json!({"api_key": API_KEY, "port": 587}).to_string(),
    )
    .await;
    let r = resolver(Arc::new(ManualClock::new(NOW)));
    let cases = [
        (secretsmanager(&plain, None), API_KEY),
        (secretsmanager(&json, Some("api_key")), API_KEY),
        (secretsmanager(&json, Some("port")), "587"),
    ];
    for (reference, want) in cases {
        let got = r
            .resolve(&reference)
            .await
            .unwrap_or_else(|e| panic!("{reference}: {e}"));
        assert_eq!(got.expose(), want, "{reference}");
    }
}

#[tokio::test]
async fn ssm_secure_string_resolves() {
    let path = format!("/gateway/{}/smtp-password", unique("ssm"));
    put_parameter(&path, API_KEY).await;
    let r = resolver(Arc::new(ManualClock::new(NOW)));
    let got = r.resolve(&SecretRef::Ssm(path)).await.unwrap();
    assert_eq!(got.expose(), API_KEY);
}

/// Whether an error is the expected variant.
type Expect = fn(&SecretError) -> bool;

#[tokio::test]
async fn errors_name_the_reference_and_never_the_value() {
    let json = create_secret(
        &unique("json"),
        &serde_json::json!({"api_key": API_KEY}).to_string(),
    )
    .await;
    let plain = create_secret(&unique("plain"), API_KEY).await;
    let missing_arn = format!(
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:{}",
        unique("gone")
    );
    let missing_path = format!("/gateway/{}/nothing", unique("ssm"));
    let r = resolver(Arc::new(ManualClock::new(NOW)));

    let cases: Vec<(SecretRef, Vec<&str>, Expect)> = vec![
        (
            secretsmanager(&json, Some("password")),
            vec![json.as_str(), "password"],
            |e| matches!(e, SecretError::MissingKey { .. }),
        ),
        (
            secretsmanager(&plain, Some("api_key")),
            vec![plain.as_str(), "api_key"],
            |e| matches!(e, SecretError::NotJsonObject { .. }),
        ),
        (
            secretsmanager(&missing_arn, None),
            vec![missing_arn.as_str()],
            |e| matches!(e, SecretError::SecretNotFound { .. }),
        ),
        (
            SecretRef::Ssm(missing_path.clone()),
            vec![missing_path.as_str()],
            |e| matches!(e, SecretError::ParameterNotFound { .. }),
        ),
    ];
    for (reference, named, expected) in cases {
        let err = r.resolve(&reference).await.unwrap_err();
        assert!(expected(&err), "{reference}: unexpected {err:?}");
        assert!(!err.is_retryable(), "{reference}: {err}");
        let shown = format!("{err} {err:?}");
        for part in named {
            assert!(shown.contains(part), "{part} not named in {shown}");
        }
        assert!(!shown.contains("very-secret"), "value leaked: {shown}");
    }
    assert!(
        !format!("{r:?}").contains("very-secret"),
        "value in Debug: {r:?}"
    );
}

#[tokio::test]
async fn rotated_secret_is_read_again_after_the_ttl() {
    let arn = create_secret(&unique("rotating"), "old-key").await;
    let clock = Arc::new(ManualClock::new(NOW));
    let r = resolver(clock.clone()).with_ttl(Duration::from_secs(300));
    let reference = secretsmanager(&arn, None);
    assert_eq!(r.resolve(&reference).await.unwrap().expose(), "old-key");

    put_secret_value(&arn, "new-key").await;
    clock.advance(299_999);
    assert_eq!(
        r.resolve(&reference).await.unwrap().expose(),
        "old-key",
        "cached value used within the TTL"
    );
    clock.advance(1);
    assert_eq!(r.resolve(&reference).await.unwrap().expose(), "new-key");
}

/// A provider key rotated in Secrets Manager: the warm client still holds the old value (the
/// resolver's TTL has not run out) and Mailgun refuses it; the client reads the key again at
/// once and sends with the new one, so the rotation is one extra request, not an `Auth`
/// failure counted against the breaker. Once the new key is cached, no extra request.
#[tokio::test]
async fn a_rotated_provider_key_is_read_again_when_the_provider_refuses_the_old_one() {
    use base64::Engine as _;
    use gateway_core::config::load_config;
    use gateway_core::message::parse_message;
    use gateway_core::providers::factory::build_providers;
    use wiremock::matchers::{header, method};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let arn = create_secret(&unique("mailgun-key"), "old-key").await;
    let server = MockServer::start().await;
    let auth = |key: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("api:{key}"))
        )
    };
    Mock::given(method("POST"))
        .and(header("authorization", auth("new-key").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"id":"<new@mg>"}"#))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_string("Forbidden"))
        .with_priority(2)
        .mount(&server)
        .await;
    let config = load_config(
        Some(
            &serde_json::json!({"gateways": [{
                "id": "mg", "type": "mailgun", "display_name": "mg", "priority": 1,
                "mailgun": {"api_key": format!("secretsmanager:{arn}"), "domain": "mg.example.com",
                            "base_url": server.uri()},
                "routing": {"can_route": ["*"]}}]})
            .to_string(),
        ),
        None,
        &|_| None,
    )
    .unwrap()
    .config;
    let clock = Arc::new(ManualClock::new(NOW));
    let resolver = Arc::new(resolver(clock.clone()));
    let providers = build_providers(&config, &resolver, &config.http, clock)
        .await
        .unwrap();
    let provider = &providers["mg"];
    let message = parse_message(
        br#"{"id":"m1","from":"a@mg.example.com","to":["p@example.org"],"subject":"s","text":"t"}"#,
        None,
    )
    .unwrap();

    put_secret_value(&arn, "new-key").await;
    let accepted = provider.send(&message, NOW).await.unwrap();
    assert_eq!(accepted.provider_message_id.as_deref(), Some("<new@mg>"));
    let sent: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(sent, [auth("old-key"), auth("new-key")]);

    provider.send(&message, NOW).await.unwrap();
    assert_eq!(server.received_requests().await.unwrap().len(), 3);

    // A key that is simply wrong stays an `Auth` failure after one re-read.
    put_secret_value(&arn, "revoked-key").await;
    let wrong = Arc::new(SecretResolver::new(Arc::new(ManualClock::new(NOW))));
    let providers = build_providers(
        &config,
        &wrong,
        &config.http,
        Arc::new(ManualClock::new(NOW)),
    )
    .await
    .unwrap();
    let before = server.received_requests().await.unwrap().len();
    let refused = providers["mg"].send(&message, NOW).await.unwrap_err();
    assert_eq!(refused.class, gateway_core::providers::ErrorClass::Auth);
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        before + 1,
        "the same key is not sent twice"
    );
}
