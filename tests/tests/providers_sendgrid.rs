//! The SendGrid client against a local fake of the v3 API: the exact JSON it sends and how each
//! answer is classified.

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failed setup step should fail the test loudly"
)]

use std::time::Duration;

use base64::Engine as _;
use gateway_core::config::{SecretRef, SendgridSettings, Tracking};
use gateway_core::providers::http::build_client;
use gateway_core::providers::sendgrid::SendgridProvider;
use gateway_core::providers::{ErrorClass, Provider};
use gateway_core::secrets::SecretString;
use gateway_tests::{PDF_BYTES, RICH_SUBJECT, closed_port, http_settings, rich_message};
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const NOW: i64 = 1_700_000_000_000;
const KEY: &str = "SG.test-key.0123456789";

fn provider(base_url: String, timeout: Duration) -> SendgridProvider {
    let settings = SendgridSettings {
        api_key: SecretRef::Env("SENDGRID_API_KEY".into()),
        base_url: Some(base_url),
        tracking: Tracking {
            opens: false,
            clicks: true,
            unsubscribe: false,
        },
        categories: vec!["medical".into(), "results".into()],
        webhook_public_key: None,
    };
    let client = build_client(&http_settings(timeout)).expect("client");
    SendgridProvider::new("sg-primary", &settings, SecretString::new(KEY), client)
}

#[tokio::test]
async fn rich_message_is_posted_as_the_documented_json() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("content-type", "application/json"))
        .respond_with(
            ResponseTemplate::new(202).insert_header("X-Message-Id", "Ua9z9lSTSaqYBWJe_Xfc-Q"),
        )
        .expect(1)
        .mount(&server)
        .await;

    let accepted = provider(server.uri(), Duration::from_secs(5))
        .send(&rich_message(), NOW)
        .await
        .expect("accepted");
    assert_eq!(
        accepted.provider_message_id.as_deref(),
        Some("Ua9z9lSTSaqYBWJe_Xfc-Q")
    );

    let requests = server.received_requests().await.expect("recorded");
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).expect("JSON body");
    let pdf = base64::engine::general_purpose::STANDARD.encode(PDF_BYTES);
    assert_eq!(
        body,
        json!({
            "personalizations": [{
                "to": [
                    {"email": "patient@example.org"},
                    {"email": "b@example.org", "name": "Jürgen Groß"}
                ],
                "cc": [{"email": "family@example.org"}],
                "bcc": [{"email": "archive@clinic.example"}]
            }],
            "from": {"email": "zoe@clinic.example", "name": "Dr. Zoë Müller"},
            "reply_to": {"email": "frontdesk@clinic.example"},
            "subject": RICH_SUBJECT,
            "content": [
                {"type": "text/plain", "value": "Guten Tag,\nIhr Befund liegt bei."},
                {"type": "text/html", "value": "<p>Guten Tag,</p><p>Ihr Befund liegt bei.</p>"}
            ],
            "attachments": [{
                "content": pdf,
                "type": "application/pdf",
                "filename": "befund.pdf",
                "disposition": "attachment"
            }],
            "headers": {
                "X-Gateway-Message-Id": "inv-2026-11-28-000123",
                "X-Campaign": "flu-2026"
            },
            "categories": ["appointment", "results", "medical"],
            "custom_args": {
                "message_id": "inv-2026-11-28-000123",
                "stream": "transactional",
                "attempt": "2",
                "invitation_id": "123",
                "urgent": "true"
            },
            "tracking_settings": {
                "click_tracking": {"enable": false, "enable_text": false},
                "open_tracking": {"enable": true}
            }
        })
    );
}

struct Case {
    name: &'static str,
    response: ResponseTemplate,
    class: ErrorClass,
    retry_after: Option<i64>,
}

#[tokio::test]
async fn each_answer_maps_to_its_error_class() {
    let errors = |status: u16, msg: &str| {
        ResponseTemplate::new(status)
            .set_body_json(json!({"errors": [{"message": msg, "field": null, "help": null}]}))
    };
    let cases = [
        Case {
            name: "400",
            response: errors(400, "Does not contain a valid address."),
            class: ErrorClass::Permanent,
            retry_after: None,
        },
        Case {
            name: "401",
            response: errors(401, "authorization required"),
            class: ErrorClass::Auth,
            retry_after: None,
        },
        Case {
            name: "403 unverified sender",
            response: errors(
                403,
                "The from address does not match a verified Sender Identity.",
            ),
            class: ErrorClass::Auth,
            retry_after: None,
        },
        Case {
            name: "404",
            response: errors(404, "not found"),
            class: ErrorClass::Permanent,
            retry_after: None,
        },
        Case {
            name: "413",
            response: errors(413, "content too large"),
            class: ErrorClass::Unsuitable,
            retry_after: None,
        },
        Case {
            name: "429 with reset",
            response: errors(429, "too many requests")
                .insert_header("X-RateLimit-Limit", "600")
                .insert_header("X-RateLimit-Remaining", "0")
                .insert_header("X-RateLimit-Reset", "1700000060"),
            class: ErrorClass::Throttled,
            retry_after: Some(NOW + 60_000),
        },
        Case {
            name: "429 without reset",
            response: errors(429, "too many requests"),
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
            name: "503",
            response: ResponseTemplate::new(503),
            class: ErrorClass::Unavailable,
            retry_after: None,
        },
        Case {
            name: "slow response past the timeout",
            response: ResponseTemplate::new(202).set_delay(Duration::from_secs(3)),
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
        assert_eq!(err.provider, "sendgrid");
        assert!(
            !format!("{err} {err:?}").contains(KEY),
            "{}: key leaked",
            case.name
        );
    }
}

#[tokio::test]
async fn sandbox_200_is_accepted_too() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let accepted = provider(server.uri(), Duration::from_secs(2))
        .send(&rich_message(), NOW)
        .await
        .expect("accepted");
    assert_eq!(accepted.provider_message_id, None);
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
}

#[tokio::test]
async fn probe_reads_the_scopes_with_the_key() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v3/scopes"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"scopes": ["mail.send"]})))
        .expect(1)
        .mount(&server)
        .await;
    provider(server.uri(), Duration::from_secs(2))
        .probe()
        .await
        .expect("probe succeeds");

    let refused = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(403))
        .mount(&refused)
        .await;
    let err = provider(refused.uri(), Duration::from_secs(2))
        .probe()
        .await
        .expect_err("forbidden");
    assert_eq!(err.class, ErrorClass::Auth);
}

#[test]
fn debug_output_never_shows_the_key() {
    let p = provider("http://127.0.0.1:9".into(), Duration::from_secs(1));
    assert!(!format!("{p:?}").contains(KEY));
}
