//! The Mailgun client against a local fake of the Mailgun API: the exact request it sends and
//! how each answer is classified.

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failed setup step should fail the test loudly"
)]

use std::time::Duration;

use base64::Engine as _;
use gateway_core::config::{MailgunRegion, MailgunSettings, MailgunTags, SecretRef, Tracking};
use gateway_core::providers::http::build_client;
use gateway_core::providers::mailgun::MailgunProvider;
use gateway_core::providers::{ErrorClass, Provider};
use gateway_core::secrets::SecretString;
use gateway_tests::{
    FormPart, PDF_BYTES, RICH_SUBJECT, closed_port, http_settings, parse_multipart, rich_message,
};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const NOW: i64 = 1_700_000_000_000;
const KEY: &str = "key-test-0123456789";
const DOMAIN: &str = "mg.clinic.example";

fn settings(base_url: String) -> MailgunSettings {
    MailgunSettings {
        api_key: SecretRef::Env("MAILGUN_API_KEY".into()),
        domain: DOMAIN.into(),
        base_url: Some(base_url),
        region: MailgunRegion::Eu,
        tracking: Tracking {
            opens: false,
            clicks: true,
            unsubscribe: true,
        },
        tags: MailgunTags {
            default: vec!["medical".into()],
            campaign_tag_enabled: true,
            user_tag_enabled: false,
        },
        webhook_signing_key: None,
    }
}

fn provider(base_url: String, timeout: Duration) -> MailgunProvider {
    let client = build_client(&http_settings(timeout)).expect("client");
    MailgunProvider::new(
        "mg-primary",
        &settings(base_url),
        SecretString::new(KEY),
        client,
    )
}

fn basic_auth() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("api:{KEY}"))
    )
}

#[tokio::test]
async fn rich_message_is_posted_as_the_documented_multipart_form() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/v3/{DOMAIN}/messages")))
        .and(header("authorization", basic_auth().as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": "<20261128.1@mg.clinic.example>", "message": "Queued. Thank you."
        })))
        .expect(1)
        .mount(&server)
        .await;

    let accepted = provider(server.uri(), Duration::from_secs(5))
        .send(&rich_message(), NOW)
        .await
        .expect("accepted");
    assert_eq!(
        accepted.provider_message_id.as_deref(),
        Some("<20261128.1@mg.clinic.example>")
    );

    let requests = server.received_requests().await.expect("recorded");
    let request = &requests[0];
    let content_type = request
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .expect("content type");
    assert!(content_type.starts_with("multipart/form-data; boundary="));
    let parts = parse_multipart(content_type, &request.body);

    let texts: Vec<(String, String)> = parts
        .iter()
        .filter(|p| p.filename.is_none())
        .map(|p| (p.name.clone(), p.text()))
        .collect();
    let expected: Vec<(String, String)> = [
        ("from", "\"Dr. Zoë Müller\" <zoe@mg.clinic.example>"),
        ("to", "patient@example.org"),
        ("to", "Jürgen Groß <b@example.org>"),
        ("cc", "family@example.org"),
        ("bcc", "archive@clinic.example"),
        ("subject", RICH_SUBJECT),
        ("text", "Guten Tag,\nIhr Befund liegt bei."),
        ("html", "<p>Guten Tag,</p><p>Ihr Befund liegt bei.</p>"),
        ("o:tracking-opens", "yes"),
        ("o:tracking-clicks", "no"),
        ("o:tracking-unsubscribe", "yes"),
        ("o:tag", "appointment"),
        ("o:tag", "results"),
        ("o:tag", "medical"),
        ("v:message_id", "inv-2026-11-28-000123"),
        ("v:stream", "transactional"),
        ("v:attempt", "2"),
        ("v:invitation_id", "123"),
        ("v:urgent", "true"),
        ("h:X-Gateway-Message-Id", "inv-2026-11-28-000123"),
        ("h:X-Campaign", "flu-2026"),
        ("h:Reply-To", "frontdesk@clinic.example"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(texts, expected);

    let files: Vec<&FormPart> = parts.iter().filter(|p| p.filename.is_some()).collect();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].name, "attachment");
    assert_eq!(files[0].filename.as_deref(), Some("befund.pdf"));
    assert_eq!(files[0].content_type.as_deref(), Some("application/pdf"));
    assert_eq!(files[0].data, PDF_BYTES);
}

struct Case {
    name: &'static str,
    response: ResponseTemplate,
    class: ErrorClass,
    retry_after: Option<i64>,
}

#[tokio::test]
async fn each_answer_maps_to_its_error_class() {
    let json = |status: u16, msg: &str| {
        ResponseTemplate::new(status).set_body_json(serde_json::json!({ "message": msg }))
    };
    let cases = [
        Case {
            name: "400",
            response: json(400, "'to' parameter is not a valid address"),
            class: ErrorClass::Permanent,
            retry_after: None,
        },
        Case {
            name: "401",
            response: ResponseTemplate::new(401).set_body_string("Forbidden"),
            class: ErrorClass::Auth,
            retry_after: None,
        },
        Case {
            name: "403",
            response: json(403, "Domain not allowed"),
            class: ErrorClass::Auth,
            retry_after: None,
        },
        Case {
            name: "404 can be temporal",
            response: json(404, "Domain not found"),
            class: ErrorClass::Unavailable,
            retry_after: None,
        },
        Case {
            name: "413",
            response: ResponseTemplate::new(413),
            class: ErrorClass::Unsuitable,
            retry_after: None,
        },
        Case {
            name: "429 with reset",
            response: json(429, "Too many requests")
                .insert_header("X-RateLimit-Reset", "1700000042.5"),
            class: ErrorClass::Throttled,
            retry_after: Some(NOW + 42_500),
        },
        Case {
            name: "429 without reset",
            response: json(429, "Too many requests"),
            class: ErrorClass::Throttled,
            retry_after: None,
        },
        Case {
            name: "500",
            response: ResponseTemplate::new(500),
            class: ErrorClass::Unavailable,
            retry_after: None,
        },
        Case {
            name: "503 with Retry-After",
            response: ResponseTemplate::new(503).insert_header("Retry-After", "30"),
            class: ErrorClass::Unavailable,
            retry_after: Some(NOW + 30_000),
        },
        Case {
            name: "slow response past the timeout",
            response: ResponseTemplate::new(200).set_delay(Duration::from_secs(3)),
            class: ErrorClass::Ambiguous,
            retry_after: None,
        },
    ];
    for case in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(case.response)
            .mount(&server)
            .await;
        let err = provider(server.uri(), Duration::from_millis(400))
            .send(&rich_message(), NOW)
            .await
            .expect_err(case.name);
        assert_eq!(err.class, case.class, "{}: {err}", case.name);
        assert_eq!(err.retry_after, case.retry_after, "{}", case.name);
        assert_eq!(err.provider, "mailgun");
        assert!(
            !format!("{err} {err:?}").contains(KEY),
            "{}: key leaked",
            case.name
        );
    }
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    let err = provider(
        format!("http://127.0.0.1:{}", closed_port()),
        Duration::from_secs(2),
    )
    .send(&rich_message(), NOW)
    .await
    .expect_err("refused");
    assert_eq!(err.class, ErrorClass::Unavailable);
    assert_eq!(err.http_status, None);
}

#[tokio::test]
async fn probe_reads_the_domain_with_the_key() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v3/domains/{DOMAIN}")))
        .and(header("authorization", basic_auth().as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"domain": {}})))
        .expect(1)
        .mount(&server)
        .await;
    provider(server.uri(), Duration::from_secs(2))
        .probe()
        .await
        .expect("probe succeeds");

    let refused = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&refused)
        .await;
    let err = provider(refused.uri(), Duration::from_secs(2))
        .probe()
        .await
        .expect_err("bad key");
    assert_eq!(err.class, ErrorClass::Auth);
}

#[test]
fn debug_output_never_shows_the_key() {
    let p = provider("http://127.0.0.1:9".into(), Duration::from_secs(1));
    assert!(!format!("{p:?}").contains(KEY));
}
