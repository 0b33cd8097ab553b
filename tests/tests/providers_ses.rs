//! The SES client: the exact `SendEmail` request for the rich message (local fake), delivery
//! into the moto emulator, and the class of each SES error.

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failed setup step should fail the test loudly"
)]

use std::time::Duration;

use base64::Engine as _;
use gateway_core::config::SesSettings;
use gateway_core::providers::ses::{SesProvider, build_ses_client, configure_ses};
use gateway_core::providers::{ErrorClass, Provider};
use gateway_core::startup::AwsClients;
use gateway_tests::{PDF_BYTES, RICH_SUBJECT, closed_port, http_settings, moto_url, rich_message};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const NOW: i64 = 1_700_000_000_000;

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn encoded(name: &str, addr: &str) -> String {
    format!("=?UTF-8?B?{}?= <{addr}>", b64(name.as_bytes()))
}

fn settings(endpoint: String) -> SesSettings {
    SesSettings {
        region: "us-east-1".into(),
        configuration_set: Some("gateway-events".into()),
        endpoint_url: Some(endpoint),
        sns_topic_arns: vec![],
        sns_accept_sha1_signatures: true,
    }
}

/// A provider whose SDK client has static test credentials and the gateway's settings applied.
fn fake_provider(endpoint: String, timeout: Duration) -> SesProvider {
    let settings = settings(endpoint);
    let builder = aws_sdk_sesv2::config::Builder::new()
        .behavior_version(aws_sdk_sesv2::config::BehaviorVersion::latest())
        .credentials_provider(aws_sdk_sesv2::config::Credentials::new(
            "AKIDTEST", "secret", None, None, "test",
        ));
    let conf = configure_ses(builder, &settings, &http_settings(timeout)).build();
    SesProvider::new(
        "ses-primary",
        &settings,
        aws_sdk_sesv2::Client::from_conf(conf),
    )
}

#[tokio::test]
async fn rich_message_is_sent_as_the_documented_send_email_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/email/outbound-emails"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"MessageId": "ses-0001"})))
        .expect(1)
        .mount(&server)
        .await;
    let accepted = fake_provider(server.uri(), Duration::from_secs(5))
        .send(&rich_message(), NOW)
        .await
        .expect("accepted");
    assert_eq!(accepted.provider_message_id.as_deref(), Some("ses-0001"));

    let requests = server.received_requests().await.expect("recorded");
    let auth = requests[0]
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .expect("signed");
    assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/"));
    assert!(auth.contains("/us-east-1/ses/aws4_request"));
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).expect("JSON");
    let utf8 = |data: &str| json!({"Data": data, "Charset": "UTF-8"});
    assert_eq!(
        body,
        json!({
            "FromEmailAddress": encoded("Dr. Zoë Müller", "zoe@clinic.example"),
            "Destination": {
                "ToAddresses": ["patient@example.org", encoded("Jürgen Groß", "b@example.org")],
                "CcAddresses": ["family@example.org"],
                "BccAddresses": ["archive@clinic.example"]
            },
            "ReplyToAddresses": ["frontdesk@clinic.example"],
            "Content": {"Simple": {
                "Subject": utf8(RICH_SUBJECT),
                "Body": {
                    "Text": utf8("Guten Tag,\nIhr Befund liegt bei."),
                    "Html": utf8("<p>Guten Tag,</p><p>Ihr Befund liegt bei.</p>")
                },
                "Headers": [
                    {"Name": "X-Gateway-Message-Id", "Value": "inv-2026-11-28-000123"},
                    {"Name": "X-Campaign", "Value": "flu-2026"}
                ],
                "Attachments": [{
                    "RawContent": b64(PDF_BYTES),
                    "FileName": "befund.pdf",
                    "ContentType": "application/pdf",
                    "ContentDisposition": "ATTACHMENT"
                }]
            }},
            "EmailTags": [
                {"Name": "message_id", "Value": "inv-2026-11-28-000123"},
                {"Name": "tag_1", "Value": "appointment"},
                {"Name": "tag_2", "Value": "results"},
                {"Name": "campaign_id", "Value": "flu-2026"},
                {"Name": "user_id", "Value": "u-42"},
                {"Name": "meta_attempt", "Value": "2"},
                {"Name": "meta_invitation_id", "Value": "123"},
                {"Name": "meta_urgent", "Value": "true"}
            ],
            "ConfigurationSetName": "gateway-events"
        })
    );
}

/// An SES client on the emulator with the sending identity and the configuration set in place
/// (the set may already exist from an earlier run against the same emulator).
async fn provider_on_moto(moto: &str) -> SesProvider {
    let settings = settings(moto.to_owned());
    let aws = AwsClients::from_env().await;
    let client = build_ses_client(
        aws.sdk(),
        &settings,
        &http_settings(Duration::from_secs(10)),
    );
    client
        .create_email_identity()
        .email_identity("clinic.example")
        .send()
        .await
        .expect("identity created");
    let _ = client
        .create_configuration_set()
        .configuration_set_name("gateway-events")
        .send()
        .await;
    SesProvider::new("ses-primary", &settings, client)
}

/// What the emulator recorded (`ses.Message`, `ses.RawMessage`, …).
async fn moto_data(moto: &str) -> serde_json::Value {
    reqwest::get(format!("{moto}/moto-api/data.json"))
        .await
        .expect("moto data")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test]
async fn rich_message_arrives_at_the_emulator() {
    let moto = moto_url();
    let provider = provider_on_moto(&moto).await;
    let accepted = provider
        .send(&rich_message(), NOW)
        .await
        .expect("accepted by SES");
    let id = accepted.provider_message_id.expect("SES message id");

    let data = moto_data(&moto).await;
    let sent = data["ses"]["Message"]
        .as_array()
        .expect("ses.Message list")
        .iter()
        .find(|m| m["id"] == json!(id))
        .unwrap_or_else(|| panic!("message {id} not recorded by moto"));
    assert_eq!(
        sent["source"],
        json!(encoded("Dr. Zoë Müller", "zoe@clinic.example"))
    );
    assert_eq!(sent["subject"], json!(RICH_SUBJECT));
    // moto keeps only the html body when both are given.
    assert_eq!(
        sent["body"],
        json!("<p>Guten Tag,</p><p>Ihr Befund liegt bei.</p>")
    );
    assert_eq!(
        sent["destinations"]["ToAddresses"],
        json!([
            "patient@example.org",
            encoded("Jürgen Groß", "b@example.org")
        ])
    );
    assert_eq!(
        sent["destinations"]["CcAddresses"],
        json!(["family@example.org"])
    );
    assert_eq!(
        sent["destinations"]["BccAddresses"],
        json!(["archive@clinic.example"])
    );
}

struct Case {
    name: &'static str,
    response: ResponseTemplate,
    class: ErrorClass,
    retry_after: Option<i64>,
}

fn aws_error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("x-amzn-ErrorType", code)
        .insert_header("content-type", "application/json")
        .set_body_json(json!({"message": message}))
}

#[tokio::test]
async fn each_ses_error_maps_to_its_class() {
    let cases = [
        Case {
            name: "maximum sending rate",
            response: aws_error(
                429,
                "TooManyRequestsException",
                "Maximum sending rate exceeded.",
            ),
            class: ErrorClass::Throttled,
            retry_after: None,
        },
        Case {
            name: "throttled with Retry-After",
            response: aws_error(
                429,
                "TooManyRequestsException",
                "Daily message quota exceeded.",
            )
            .insert_header("Retry-After", "600"),
            class: ErrorClass::Throttled,
            retry_after: Some(NOW + 600_000),
        },
        Case {
            name: "message rejected",
            response: aws_error(400, "MessageRejected", "Email address is not verified."),
            class: ErrorClass::Permanent,
            retry_after: None,
        },
        Case {
            name: "bad request",
            response: aws_error(400, "BadRequestException", "Invalid input"),
            class: ErrorClass::Permanent,
            retry_after: None,
        },
        Case {
            name: "sending paused",
            response: aws_error(400, "SendingPausedException", "paused"),
            class: ErrorClass::Auth,
            retry_after: None,
        },
        Case {
            name: "account suspended",
            response: aws_error(400, "AccountSuspendedException", "suspended"),
            class: ErrorClass::Auth,
            retry_after: None,
        },
        Case {
            name: "configuration set missing",
            response: aws_error(404, "NotFoundException", "no such configuration set"),
            class: ErrorClass::Auth,
            retry_after: None,
        },
        Case {
            name: "credentials refused",
            response: aws_error(403, "UnrecognizedClientException", "invalid token"),
            class: ErrorClass::Auth,
            retry_after: None,
        },
        Case {
            name: "internal failure",
            response: aws_error(500, "InternalFailure", "oops"),
            class: ErrorClass::Unavailable,
            retry_after: None,
        },
        Case {
            name: "503 without a body",
            response: ResponseTemplate::new(503),
            class: ErrorClass::Unavailable,
            retry_after: None,
        },
        Case {
            name: "slow response past the timeout",
            response: ResponseTemplate::new(200)
                .set_body_json(json!({"MessageId": "late"}))
                .set_delay(Duration::from_secs(3)),
            class: ErrorClass::Ambiguous,
            retry_after: None,
        },
    ];
    for case in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(case.response)
            .expect(1)
            .mount(&server)
            .await;
        let err = fake_provider(server.uri(), Duration::from_millis(500))
            .send(&rich_message(), NOW)
            .await
            .expect_err(case.name);
        assert_eq!(err.class, case.class, "{}: {err}", case.name);
        assert_eq!(err.retry_after, case.retry_after, "{}", case.name);
        assert_eq!(err.provider, "amazon_ses");
        // `expect(1)`: the SDK did not retry on its own.
        server.verify().await;
    }
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    let err = fake_provider(
        format!("http://127.0.0.1:{}", closed_port()),
        Duration::from_secs(2),
    )
    .send(&rich_message(), NOW)
    .await
    .expect_err("refused");
    assert_eq!(err.class, ErrorClass::Unavailable, "{err}");
}

// moto does not implement `GetAccount`, so the probe is checked against the fake only.
#[tokio::test]
async fn probe_fails_only_when_sending_is_disabled() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/email/account"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "SendingEnabled": false, "ProductionAccessEnabled": true,
            "SendQuota": {"Max24HourSend": 200.0, "MaxSendRate": 1.0, "SentLast24Hours": 0.0}
        })))
        .mount(&server)
        .await;
    let err = fake_provider(server.uri(), Duration::from_secs(2))
        .probe()
        .await
        .expect_err("sending disabled");
    assert_eq!(err.class, ErrorClass::Auth);

    let enabled = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/email/account"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"SendingEnabled": true})))
        .mount(&enabled)
        .await;
    fake_provider(enabled.uri(), Duration::from_secs(2))
        .probe()
        .await
        .expect("sending enabled");
}

#[tokio::test]
async fn a_message_simple_content_cannot_carry_goes_raw_and_arrives() {
    let moto = moto_url();
    // Twenty custom headers: more than SES simple content takes.
    let headers: serde_json::Map<String, serde_json::Value> = (0..20)
        .map(|i| (format!("X-Ref-{i}"), json!(format!("r{i}"))))
        .collect();
    let body = json!({
        "id": "raw-ses-1",
        "from": "Clinic <zoe@clinic.example>",
        "to": ["patient@example.org"],
        "bcc": ["archive@clinic.example"],
        "subject": "Befund",
        "text": "Guten Tag",
        "headers": headers,
    });
    let message = gateway_core::message::parse_message(body.to_string().as_bytes(), None)
        .expect("valid message");
    assert!(gateway_core::providers::ses::needs_raw(&message).is_some());
    let provider = provider_on_moto(&moto).await;
    let accepted = provider.send(&message, NOW).await.expect("accepted by SES");
    let id = accepted.provider_message_id.expect("SES message id");

    let data = moto_data(&moto).await;
    let sent = data["ses"]["RawMessage"]
        .as_array()
        .expect("ses.RawMessage list")
        .iter()
        .find(|m| m["id"] == json!(id))
        .unwrap_or_else(|| panic!("raw message {id} not recorded by moto: {data:#}"));
    let raw = sent["raw_data"].as_str().expect("raw_data");
    assert!(raw.contains("X-Ref-19: r19"), "{raw}");
    assert!(raw.contains("X-Gateway-Message-Id: raw-ses-1"), "{raw}");
    assert!(
        !raw.to_ascii_lowercase().contains("\nbcc:"),
        "no Bcc header: {raw}"
    );
    let destinations = sent["destinations"].to_string();
    assert!(
        destinations.contains("archive@clinic.example"),
        "{destinations}"
    );
}
