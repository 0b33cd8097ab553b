//! The Gmail provider against fake token and send endpoints (wiremock).
//!
//! The fake token endpoint verifies each assertion's RS256 signature with the public half of a
//! key pair generated for this test run (never a real key) and answers per subject; the tests
//! then check the JWT header and claims, the form fields, and the MIME inside `raw`. Look-ups
//! (`lookup_sent`) are checked against a fake `users.messages.list`.

#![allow(
    clippy::panic,
    reason = "the fixture helpers are test code: a broken fixture should fail the test loudly"
)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use gateway_core::clock::ManualClock;
use gateway_core::config::GoogleWorkspaceSettings;
use gateway_core::config::SecretRef;
use gateway_core::message::{OutboundMessage, parse_message};
use gateway_core::mime::GATEWAY_ID_HEADER;
use gateway_core::providers::gmail::{
    GMAIL_READONLY_SCOPE, GMAIL_SEND_SCOPE, GmailProvider, JWT_BEARER_GRANT,
};
use gateway_core::providers::{Accepted, ErrorClass, Lookup, Provider};
use gateway_core::secrets::SecretString;
use gateway_tests::{PDF_BYTES, RICH_SUBJECT, rich_message};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mail_parser::{MessageParser, MimeHeaders};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const NOW: i64 = 1_795_000_000_000;
const CLIENT_EMAIL: &str = "mailer@clinic-project.iam.gserviceaccount.com";
const KEY_ID: &str = "0123456789abcdef";
const SEND_PATH: &str = "/gmail/v1/users/me/messages/send";
const LIST_PATH: &str = "/gmail/v1/users/me/messages";

struct TestKey {
    private_pem: String,
    public_der: Vec<u8>,
}

fn test_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = KeyPair::generate(KeySize::Rsa2048).unwrap_or_else(|e| panic!("keygen: {e}"));
        let der = pair.as_der().unwrap_or_else(|e| panic!("der: {e}"));
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        TestKey {
            private_pem: pem,
            public_der: pair.public_key().as_ref().to_vec(),
        }
    })
}

fn service_account_json() -> SecretString {
    SecretString::new(
        serde_json::json!({
            "type": "service_account",
            "project_id": "clinic-project",
            "private_key_id": KEY_ID,
            "private_key": test_key().private_pem,
            "client_email": CLIENT_EMAIL,
            "client_id": "1234567890",
            "token_uri": "https://oauth2.googleapis.com/token"
        })
        .to_string(),
    )
}

/// Verifies an assertion's signature and returns its header and claims.
fn verify(assertion: &str) -> Option<(jsonwebtoken::Header, serde_json::Value)> {
    let key = DecodingKey::from_rsa_der(&test_key().public_der);
    let mut validation = Validation::new(Algorithm::RS256);
    // Times are checked against the test clock by the tests, not against the wall clock.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation).ok()?;
    Some((data.header, data.claims))
}

fn form(request: &Request) -> Vec<(String, String)> {
    url_decode_pairs(&String::from_utf8_lossy(&request.body))
}

fn url_decode_pairs(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn assertion_of(request: &Request) -> String {
    form(request)
        .into_iter()
        .find(|(k, _)| k == "assertion")
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// The fake token endpoint: a valid signature gets `tok-<sub>` for the send scope and
/// `read-<sub>` for the read-only scope; a subject in `refuse` (or, with `refuse_readonly`, any
/// assertion asking for the read-only scope, as Google answers when the delegation lacks it) gets
/// 401 `unauthorized_client`, a bad signature 400 `invalid_grant`.
struct TokenEndpoint {
    refuse: Vec<&'static str>,
    refuse_readonly: bool,
}

impl Respond for TokenEndpoint {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let Some((_, claims)) = verify(&assertion_of(request)) else {
            return ResponseTemplate::new(400).set_body_json(
                serde_json::json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
            );
        };
        let sub = claims["sub"].as_str().unwrap_or("").to_owned();
        let readonly = claims["scope"] == GMAIL_READONLY_SCOPE;
        if self.refuse.contains(&sub.as_str()) || (readonly && self.refuse_readonly) {
            return ResponseTemplate::new(401).set_body_json(serde_json::json!({
                "error": "unauthorized_client",
                "error_description": "Client is unauthorized to retrieve access tokens using this method."
            }));
        }
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": format!("{}-{sub}", if readonly { "read" } else { "tok" }),
            "expires_in": 3599,
            "token_type": "Bearer"
        }))
    }
}

struct Fake {
    server: MockServer,
    clock: Arc<ManualClock>,
}

impl Fake {
    async fn start(refuse: Vec<&'static str>) -> Fake {
        Self::start_with(refuse, false).await
    }

    async fn start_with(refuse: Vec<&'static str>, refuse_readonly: bool) -> Fake {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(TokenEndpoint {
                refuse,
                refuse_readonly,
            })
            .mount(&server)
            .await;
        Fake {
            server,
            clock: Arc::new(ManualClock::new(NOW)),
        }
    }

    async fn send_answers(&self, template: ResponseTemplate) {
        Mock::given(method("POST"))
            .and(path(SEND_PATH))
            .respond_with(template)
            .mount(&self.server)
            .await;
    }

    fn token_url(&self) -> String {
        format!("{}/token", self.server.uri())
    }

    fn provider(&self, default_sender: Option<&str>, require_valid_sender: bool) -> GmailProvider {
        self.provider_with(
            default_sender,
            require_valid_sender,
            self.server.uri(),
            client(5_000),
        )
    }

    fn provider_with(
        &self,
        default_sender: Option<&str>,
        require_valid_sender: bool,
        api_base_url: String,
        http: reqwest::Client,
    ) -> GmailProvider {
        self.build(
            GoogleWorkspaceSettings {
                service_account: SecretRef::Env("UNUSED".into()),
                default_sender: default_sender.map(str::to_owned),
                require_valid_sender,
                token_url: Some(self.token_url()),
                api_base_url: Some(api_base_url),
                lookup_sent: false,
            },
            http,
        )
    }

    /// A provider with `lookup_sent` on.
    fn looking_up(&self, default_sender: Option<&str>, http: reqwest::Client) -> GmailProvider {
        self.build(
            GoogleWorkspaceSettings {
                service_account: SecretRef::Env("UNUSED".into()),
                default_sender: default_sender.map(str::to_owned),
                require_valid_sender: false,
                token_url: Some(self.token_url()),
                api_base_url: Some(self.server.uri()),
                lookup_sent: true,
            },
            http,
        )
    }

    fn build(&self, settings: GoogleWorkspaceSettings, http: reqwest::Client) -> GmailProvider {
        GmailProvider::new(
            "workspace",
            &settings,
            &service_account_json(),
            http,
            self.clock.clone(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn requests(&self, wanted: &str) -> Vec<Request> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == wanted)
            .collect()
    }
}

fn client(timeout_ms: u64) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(timeout_ms))
        .timeout(Duration::from_millis(timeout_ms))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn ok_send() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "id": "18c2f0a1b2c3d4e5", "threadId": "18c2f0a1b2c3d4e5", "labelIds": ["SENT"]
    }))
}

/// A message from a workspace sender whose impersonation the fake refuses (fallback tests).
fn lovelace_message() -> OutboundMessage {
    let pdf = base64::engine::general_purpose::STANDARD
        .encode(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n%%EOF\n");
    let json = serde_json::json!({
        "id": "inv-2026-11-28-000123",
        "from": "Dr. Zoë Lovelace <ada@clinic.example>",
        "to": ["patient@example.org", {"email": "b@example.org", "name": "Börje, B."}],
        "cc": ["nurse@clinic.example"],
        "bcc": ["audit@clinic.example"],
        "subject": "Ihr Termin am Dienstag – Bestätigung",
        "text": "Guten Tag,\nIhr Termin ist bestätigt.",
        "html": "<p>Ihr Termin ist <b>bestätigt</b>.</p>",
        "attachments": [{"filename": "letter.pdf", "content_type": "application/pdf", "content": pdf}],
        "tags": ["appointment"],
        "metadata": {"invitation_id": "123"},
        "tracking": {"opens": true, "clicks": false}
    });
    parse_message(json.to_string().as_bytes(), None).unwrap_or_else(|e| panic!("{e}"))
}

fn message_from(from: &str, recipients: usize) -> OutboundMessage {
    let to: Vec<String> = (0..recipients)
        .map(|i| format!("p{i}@example.org"))
        .collect();
    let json = serde_json::json!({
        "id": "m-1", "from": from, "to": to, "subject": "s", "text": "t"
    });
    parse_message(json.to_string().as_bytes(), None).unwrap_or_else(|e| panic!("{e}"))
}

fn raw_mime(request: &Request) -> Vec<u8> {
    let body: serde_json::Value =
        serde_json::from_slice(&request.body).unwrap_or_else(|e| panic!("send body: {e}"));
    let raw = body["raw"].as_str().unwrap_or_else(|| panic!("no raw"));
    base64::engine::general_purpose::URL_SAFE
        .decode(raw)
        .unwrap_or_else(|e| panic!("raw is not base64url: {e}"))
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn rich_message_is_sent_with_a_signed_assertion_and_the_raw_mime() {
    let fake = Fake::start(vec![]).await;
    fake.send_answers(ok_send()).await;
    let accepted = fake
        .provider(None, false)
        .send(&rich_message(), NOW + 999)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        accepted.provider_message_id.as_deref(),
        Some("18c2f0a1b2c3d4e5")
    );
    assert_eq!(accepted.substituted_sender, None);

    let tokens = fake.requests("/token").await;
    assert_eq!(tokens.len(), 1);
    let token_request = &tokens[0];
    assert_eq!(
        header(token_request, "content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let fields = form(token_request);
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["grant_type", "assertion"]);
    assert_eq!(fields[0].1, JWT_BEARER_GRANT);
    let (jwt_header, claims) =
        verify(&fields[1].1).unwrap_or_else(|| panic!("assertion signature does not verify"));
    assert_eq!(jwt_header.alg, Algorithm::RS256);
    assert_eq!(jwt_header.typ.as_deref(), Some("JWT"));
    assert_eq!(jwt_header.kid.as_deref(), Some(KEY_ID));
    assert_eq!(
        claims,
        serde_json::json!({
            "iss": CLIENT_EMAIL,
            "sub": "zoe@clinic.example",
            "scope": GMAIL_SEND_SCOPE,
            "aud": fake.token_url(),
            "iat": NOW / 1000,
            "exp": NOW / 1000 + 3600
        })
    );

    let sends = fake.requests(SEND_PATH).await;
    assert_eq!(sends.len(), 1);
    let send = &sends[0];
    assert_eq!(
        header(send, "authorization"),
        Some("Bearer tok-zoe@clinic.example")
    );
    assert_eq!(header(send, "content-type"), Some("application/json"));
    let mime = raw_mime(send);
    let parsed = MessageParser::default()
        .parse(&mime)
        .unwrap_or_else(|| panic!("raw is not MIME"));
    assert_eq!(parsed.subject(), Some(RICH_SUBJECT));
    let from = parsed.from().and_then(|a| a.first());
    assert_eq!(from.and_then(|a| a.address()), Some("zoe@clinic.example"));
    assert_eq!(from.and_then(|a| a.name()), Some("Dr. Zoë Müller"));
    let to: Vec<_> = parsed
        .to()
        .map(|a| a.iter().filter_map(|x| x.address()).collect())
        .unwrap_or_default();
    assert_eq!(to, ["patient@example.org", "b@example.org"]);
    // Gmail finds Bcc recipients in the Bcc header and strips it before delivery.
    assert!(
        parsed
            .bcc()
            .is_some_and(|b| b.contains("archive@clinic.example"))
    );
    assert_eq!(
        parsed.header_raw(GATEWAY_ID_HEADER).map(str::trim),
        Some("inv-2026-11-28-000123")
    );
    assert_eq!(
        parsed.body_html(0).as_deref(),
        Some("<p>Guten Tag,</p><p>Ihr Befund liegt bei.</p>")
    );
    let pdf = parsed
        .attachment(0)
        .unwrap_or_else(|| panic!("no attachment"));
    assert_eq!(pdf.attachment_name(), Some("befund.pdf"));
    assert_eq!(pdf.contents(), PDF_BYTES);
}

#[tokio::test]
async fn tokens_are_cached_per_subject_until_shortly_before_expiry() {
    let fake = Fake::start(vec![]).await;
    fake.send_answers(ok_send()).await;
    let provider = fake.provider(None, false);
    let ada = message_from("ada@clinic.example", 1);
    let bob = message_from("bob@clinic.example", 1);
    let steps = [
        (NOW, &ada, 1),
        (NOW + 60_000, &ada, 1),
        (NOW + 60_000, &bob, 2),
        // 3599 s lifetime, refreshed 5 min early: still fresh at 3599 - 301 s.
        (NOW + (3599 - 301) * 1000, &ada, 2),
        (NOW + (3599 - 300) * 1000, &ada, 3),
    ];
    for (now, message, expected_tokens) in steps {
        provider
            .send(message, now)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            fake.requests("/token").await.len(),
            expected_tokens,
            "at {now}"
        );
    }
    let shown = format!("{provider:?}");
    assert!(
        !shown.contains("tok-"),
        "cached tokens must not show in Debug: {shown}"
    );
}

#[tokio::test]
async fn refused_impersonation_falls_back_to_the_default_sender_once() {
    let fake = Fake::start(vec!["ada@clinic.example"]).await;
    fake.send_answers(ok_send()).await;
    let accepted = fake
        .provider(Some("noreply@clinic.example"), false)
        .send(&lovelace_message(), NOW)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        accepted.substituted_sender.as_deref(),
        Some("noreply@clinic.example")
    );

    let subjects: Vec<String> = fake
        .requests("/token")
        .await
        .iter()
        .filter_map(|r| verify(&assertion_of(r)))
        .map(|(_, c)| c["sub"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(subjects, ["ada@clinic.example", "noreply@clinic.example"]);

    let sends = fake.requests(SEND_PATH).await;
    assert_eq!(sends.len(), 1);
    assert_eq!(
        header(&sends[0], "authorization"),
        Some("Bearer tok-noreply@clinic.example")
    );
    let mime = raw_mime(&sends[0]);
    let parsed = MessageParser::default()
        .parse(&mime)
        .unwrap_or_else(|| panic!("raw is not MIME"));
    let from = parsed.from().and_then(|a| a.first());
    assert_eq!(
        from.and_then(|a| a.address()),
        Some("noreply@clinic.example")
    );
    assert_eq!(from.and_then(|a| a.name()), Some("Dr. Zoë Lovelace"));
    let reply_to = parsed
        .reply_to()
        .and_then(|a| a.first())
        .and_then(|a| a.address());
    assert_eq!(reply_to, Some("ada@clinic.example"));
}

#[tokio::test]
async fn refused_impersonation_without_an_allowed_fallback_is_auth_and_sends_nothing() {
    let cases = [
        (None, false, vec!["ada@clinic.example"]),
        (
            Some("noreply@clinic.example"),
            true,
            vec!["ada@clinic.example"],
        ),
        (
            Some("noreply@clinic.example"),
            false,
            vec!["ada@clinic.example", "noreply@clinic.example"],
        ),
    ];
    for (default_sender, require_valid_sender, refuse) in cases {
        let fake = Fake::start(refuse.clone()).await;
        fake.send_answers(ok_send()).await;
        let error = fake
            .provider(default_sender, require_valid_sender)
            .send(&message_from("ada@clinic.example", 1), NOW)
            .await
            .err()
            .unwrap_or_else(|| panic!("{default_sender:?} {refuse:?} must fail"));
        assert_eq!(error.class(), ErrorClass::Auth, "{error}");
        assert!(fake.requests(SEND_PATH).await.is_empty());
    }
}

#[tokio::test]
async fn a_401_from_send_refreshes_the_token_once_and_retries() {
    let fake = Fake::start(vec![]).await;
    Mock::given(method("POST"))
        .and(path(SEND_PATH))
        .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "error": {"code": 401, "message": "Invalid Credentials",
                      "errors": [{"reason": "authError", "domain": "global"}]}
        })))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&fake.server)
        .await;
    fake.send_answers(ok_send()).await;
    let accepted = fake
        .provider(None, false)
        .send(&message_from("ada@clinic.example", 1), NOW)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        accepted.provider_message_id.as_deref(),
        Some("18c2f0a1b2c3d4e5")
    );
    assert_eq!(fake.requests("/token").await.len(), 2);
    assert_eq!(fake.requests(SEND_PATH).await.len(), 2);
}

fn gmail_error(status: u16, reason: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(serde_json::json!({
        "error": {"code": status, "message": "provider says no",
                  "errors": [{"domain": "usageLimits", "reason": reason, "message": "provider says no"}]}
    }))
}

#[tokio::test]
async fn send_responses_map_to_error_classes() {
    const DAY_MS: i64 = 86_400_000;
    let next_midnight = (NOW / DAY_MS + 1) * DAY_MS;
    let cases = [
        (
            gmail_error(400, "invalidArgument"),
            ErrorClass::Permanent,
            None,
            2,
        ),
        (
            gmail_error(400, "failedPrecondition"),
            ErrorClass::Permanent,
            None,
            2,
        ),
        (gmail_error(401, "authError"), ErrorClass::Auth, None, 4),
        (gmail_error(403, "domainPolicy"), ErrorClass::Auth, None, 2),
        (
            gmail_error(403, "userRateLimitExceeded"),
            ErrorClass::Throttled,
            None,
            2,
        ),
        (
            gmail_error(403, "rateLimitExceeded").insert_header("Retry-After", "30"),
            ErrorClass::Throttled,
            Some(NOW + 30_000),
            2,
        ),
        (
            gmail_error(403, "dailyLimitExceeded"),
            ErrorClass::Throttled,
            Some(next_midnight),
            2,
        ),
        (gmail_error(404, "notFound"), ErrorClass::Permanent, None, 2),
        (ResponseTemplate::new(413), ErrorClass::Unsuitable, None, 2),
        (
            gmail_error(429, "rateLimitExceeded"),
            ErrorClass::Throttled,
            None,
            2,
        ),
        (
            gmail_error(429, "rateLimitExceeded").insert_header("Retry-After", "120"),
            ErrorClass::Throttled,
            Some(NOW + 120_000),
            2,
        ),
        (
            gmail_error(500, "backendError"),
            ErrorClass::Unavailable,
            None,
            2,
        ),
        (ResponseTemplate::new(503), ErrorClass::Unavailable, None, 2),
    ];
    for (template, class, retry_after, requests) in cases {
        let fake = Fake::start(vec![]).await;
        fake.send_answers(template).await;
        let error = fake
            .provider(None, false)
            .send(&message_from("ada@clinic.example", 1), NOW)
            .await
            .err()
            .unwrap_or_else(|| panic!("must fail"));
        let status = error.http_status;
        assert_eq!(
            (error.class(), error.retry_after()),
            (class, retry_after),
            "{status:?}: {error}"
        );
        // One token plus one send; a 401 adds a refresh and a retry.
        let total = fake.requests("/token").await.len() + fake.requests(SEND_PATH).await.len();
        assert_eq!(total, requests, "{status:?}");
        assert!(!error.to_string().contains("tok-"), "{error}");
    }
}

#[tokio::test]
async fn connection_refused_is_unavailable_and_a_slow_answer_is_ambiguous() {
    let fake = Fake::start(vec![]).await;
    fake.send_answers(ok_send().set_delay(Duration::from_secs(3)))
        .await;

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(listener);
        format!("http://{addr}")
    };
    let refused = fake
        .provider_with(None, false, closed, client(2_000))
        .send(&message_from("ada@clinic.example", 1), NOW)
        .await
        .err()
        .map(|e| e.class());
    assert_eq!(refused, Some(ErrorClass::Unavailable));

    let slow = fake
        .provider_with(None, false, fake.server.uri(), client(300))
        .send(&message_from("ada@clinic.example", 1), NOW)
        .await
        .err()
        .map(|e| e.class());
    assert_eq!(slow, Some(ErrorClass::Ambiguous));
}

#[tokio::test]
async fn token_endpoint_failures_never_reach_the_send_endpoint() {
    let cases = [
        (ResponseTemplate::new(503), ErrorClass::Unavailable),
        (ResponseTemplate::new(429), ErrorClass::Unavailable),
        (
            ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": "invalid_scope"})),
            ErrorClass::Auth,
        ),
        (
            ResponseTemplate::new(200).set_body_string("not json"),
            ErrorClass::Unavailable,
        ),
    ];
    for (template, class) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/token"))
            .respond_with(template)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(SEND_PATH))
            .respond_with(ok_send())
            .expect(0)
            .mount(&server)
            .await;
        let settings = GoogleWorkspaceSettings {
            service_account: SecretRef::Env("UNUSED".into()),
            default_sender: None,
            require_valid_sender: false,
            token_url: Some(format!("{}/token", server.uri())),
            api_base_url: Some(server.uri()),
            lookup_sent: false,
        };
        let provider = GmailProvider::new(
            "workspace",
            &settings,
            &service_account_json(),
            client(2_000),
            Arc::new(ManualClock::new(NOW)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let error = provider
            .send(&message_from("ada@clinic.example", 1), NOW)
            .await
            .err()
            .unwrap_or_else(|| panic!("must fail"));
        assert_eq!(error.class(), class, "{error}");
    }
}

#[tokio::test]
async fn more_than_a_hundred_recipients_are_unsuitable_before_any_request() {
    let fake = Fake::start(vec![]).await;
    fake.send_answers(ok_send()).await;
    let error = fake
        .provider(None, false)
        .send(&message_from("ada@clinic.example", 101), NOW)
        .await
        .err()
        .map(|e| e.class());
    assert_eq!(error, Some(ErrorClass::Unsuitable));
    assert!(
        fake.server
            .received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    );
}

#[tokio::test]
async fn probe_exchanges_a_token_for_the_default_sender_and_sends_nothing() {
    let fake = Fake::start(vec![]).await;
    fake.send_answers(ok_send()).await;
    fake.clock.set(NOW + 5_000);
    fake.provider(Some("noreply@clinic.example"), false)
        .probe()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tokens = fake.requests("/token").await;
    assert_eq!(tokens.len(), 1);
    let (_, claims) = verify(&assertion_of(&tokens[0])).unwrap_or_else(|| panic!("bad signature"));
    assert_eq!(claims["sub"], "noreply@clinic.example");
    assert_eq!(claims["iat"], (NOW + 5_000) / 1000);
    assert!(fake.requests(SEND_PATH).await.is_empty());
}

#[test]
fn debug_output_never_shows_the_key() {
    let settings = GoogleWorkspaceSettings {
        service_account: SecretRef::Env("UNUSED".into()),
        default_sender: None,
        require_valid_sender: false,
        token_url: None,
        api_base_url: None,
        lookup_sent: false,
    };
    let provider = GmailProvider::new(
        "workspace",
        &settings,
        &service_account_json(),
        reqwest::Client::new(),
        Arc::new(ManualClock::new(NOW)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let shown = format!("{provider:?}");
    let pem_body = test_key().private_pem.lines().nth(1).unwrap_or_default();
    assert!(!shown.contains(pem_body), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

/// A rotated service-account key (a new JSON key file at the same reference) is used for the
/// next token without a restart: the client reads its key through the resolver when it signs.
#[tokio::test]
async fn a_rotated_service_account_key_signs_the_next_token() {
    use gateway_core::secrets::{LiveSecret, SecretResolver};
    use std::sync::Mutex;

    let with_kid = |kid: &str| {
        let mut json: serde_json::Value =
            serde_json::from_str(service_account_json().expose()).unwrap();
        json["private_key_id"] = serde_json::json!(kid);
        json.to_string()
    };
    let current = Arc::new(Mutex::new(with_kid("key-2026-11")));
    let source = Arc::clone(&current);
    let resolver = Arc::new(
        SecretResolver::new(Arc::new(gateway_core::clock::ManualClock::new(NOW))).with_env_lookup(
            Arc::new(move |name| (name == "GMAIL_KEY").then(|| source.lock().unwrap().clone())),
        ),
    );
    let fake = Fake::start(vec![]).await;
    fake.send_answers(ok_send()).await;
    let provider = fake
        .provider(None, false)
        .with_live_key(LiveSecret::resolved(
            resolver,
            SecretRef::Env("GMAIL_KEY".into()),
        ));
    let kids = || async {
        fake.requests("/token")
            .await
            .iter()
            .map(|r| {
                let (header, _) = verify(&assertion_of(r)).expect("a signed assertion");
                header.kid.unwrap_or_default()
            })
            .collect::<Vec<_>>()
    };
    provider
        .send(&message_from("ada@clinic.example", 1), NOW)
        .await
        .unwrap();
    assert_eq!(kids().await, ["key-2026-11"]);

    *current.lock().unwrap() = with_kid("key-2026-12");
    // The next token (another subject, so not from the token cache) is signed with the new key.
    provider
        .send(&message_from("grace@clinic.example", 1), NOW)
        .await
        .unwrap();
    assert_eq!(kids().await, ["key-2026-11", "key-2026-12"]);
}

/// A message whose id needs escaping in its `Message-ID` (`.` and `:`).
fn escaped_id_message() -> OutboundMessage {
    let json = serde_json::json!({
        "id": "inv.2026:11", "from": "ada@clinic.example", "to": ["p@example.org"],
        "subject": "s", "text": "t"
    });
    parse_message(json.to_string().as_bytes(), None).unwrap_or_else(|e| panic!("{e}"))
}

impl Fake {
    async fn list_answers(&self, template: ResponseTemplate) {
        Mock::given(method("GET"))
            .and(path(LIST_PATH))
            .respond_with(template)
            .mount(&self.server)
            .await;
    }

    /// (scope, sub, iat) of every assertion the token endpoint received, in order.
    async fn assertions(&self) -> Vec<(String, String, i64)> {
        self.requests("/token")
            .await
            .iter()
            .map(|r| {
                let (_, c) = verify(&assertion_of(r)).unwrap_or_else(|| panic!("bad signature"));
                (
                    c["scope"].as_str().unwrap_or("").to_owned(),
                    c["sub"].as_str().unwrap_or("").to_owned(),
                    c["iat"].as_i64().unwrap_or(0),
                )
            })
            .collect()
    }
}

fn listed(ids: &[&str]) -> ResponseTemplate {
    let messages: Vec<_> = ids
        .iter()
        .map(|id| serde_json::json!({"id": id, "threadId": id}))
        .collect();
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "messages": messages, "resultSizeEstimate": ids.len()
    }))
}

fn query_of(request: &Request) -> Vec<(String, String)> {
    url_decode_pairs(request.url.query().unwrap_or(""))
}

#[tokio::test]
async fn look_up_searches_the_senders_mailbox_for_the_message_id_the_send_wrote() {
    let fake = Fake::start(vec![]).await;
    fake.send_answers(ok_send()).await;
    fake.list_answers(listed(&["18c2f0a1b2c3d4e5", "18c2ffffffffffff"]))
        .await;
    let provider = fake.looking_up(None, client(5_000));
    let message = escaped_id_message();
    provider
        .send(&message, NOW)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sends = fake.requests(SEND_PATH).await;
    let mime = raw_mime(&sends[0]);
    let sent = MessageParser::default()
        .parse(&mime)
        .unwrap_or_else(|| panic!("raw is not MIME"));
    let sent_id = sent.message_id().unwrap_or_default().to_owned();
    assert_eq!(sent_id, "gw.inv=2E2026=3A11@clinic.example");

    // A minute later (the look-up's token is dated by the provider's clock, not by `sent_at`).
    fake.clock.set(NOW + 60_000);
    let answer = provider
        .look_up(&message, NOW)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        answer,
        Lookup::Found(Accepted {
            provider_message_id: Some("18c2f0a1b2c3d4e5".into()),
            substituted_sender: None,
        })
    );

    let lists = fake.requests(LIST_PATH).await;
    assert_eq!(lists.len(), 1);
    let list = &lists[0];
    assert_eq!(list.method.as_str(), "GET");
    assert_eq!(
        list.url.query(),
        Some("q=rfc822msgid%3Agw.inv%3D2E2026%3D3A11%40clinic.example&includeSpamTrash=true")
    );
    assert_eq!(
        query_of(list),
        [
            ("q".to_owned(), format!("rfc822msgid:{sent_id}")),
            ("includeSpamTrash".to_owned(), "true".to_owned())
        ]
    );
    assert_eq!(
        header(list, "authorization"),
        Some("Bearer read-ada@clinic.example")
    );
    // Sends keep their own gmail.send token; the look-up asks for gmail.readonly alone.
    assert_eq!(
        fake.assertions().await,
        [
            (
                GMAIL_SEND_SCOPE.to_owned(),
                "ada@clinic.example".to_owned(),
                NOW / 1000
            ),
            (
                GMAIL_READONLY_SCOPE.to_owned(),
                "ada@clinic.example".to_owned(),
                (NOW + 60_000) / 1000
            ),
        ]
    );
}

#[tokio::test]
async fn look_up_without_a_match_is_not_found() {
    let fake = Fake::start(vec![]).await;
    fake.list_answers(
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"resultSizeEstimate": 0})),
    )
    .await;
    let answer = fake
        .looking_up(None, client(5_000))
        .look_up(&message_from("ada@clinic.example", 1), NOW)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer, Lookup::NotFound);
    let lists = fake.requests(LIST_PATH).await;
    assert_eq!(lists.len(), 1);
    assert_eq!(
        query_of(&lists[0])[0],
        (
            "q".to_owned(),
            "rfc822msgid:gw.m-1@clinic.example".to_owned()
        )
    );
    assert!(fake.requests(SEND_PATH).await.is_empty());
}

#[tokio::test]
async fn look_up_is_unsupported_unless_lookup_sent_is_on() {
    let fake = Fake::start(vec![]).await;
    fake.list_answers(listed(&["18c2f0a1b2c3d4e5"])).await;
    let answer = fake
        .provider(Some("noreply@clinic.example"), false)
        .look_up(&message_from("ada@clinic.example", 1), NOW)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer, Lookup::Unsupported);
    assert!(
        fake.server
            .received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    );
}

#[tokio::test]
async fn look_up_asks_the_default_senders_mailbox_when_send_would_have_substituted_it() {
    let fake = Fake::start(vec!["ada@clinic.example"]).await;
    fake.list_answers(listed(&["18c2f0a1b2c3d4e5"])).await;
    let answer = fake
        .looking_up(Some("noreply@clinic.example"), client(5_000))
        .look_up(&lovelace_message(), NOW)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        answer,
        Lookup::Found(Accepted {
            provider_message_id: Some("18c2f0a1b2c3d4e5".into()),
            substituted_sender: Some("noreply@clinic.example".into()),
        })
    );
    let lists = fake.requests(LIST_PATH).await;
    assert_eq!(
        header(&lists[0], "authorization"),
        Some("Bearer read-noreply@clinic.example")
    );
    // The Message-ID is the original sender's domain either way.
    assert_eq!(
        query_of(&lists[0])[0].1,
        "rfc822msgid:gw.inv-2026-11-28-000123@clinic.example"
    );
}

#[tokio::test]
async fn a_delegation_without_gmail_readonly_fails_look_ups_but_not_sends() {
    let fake = Fake::start_with(vec![], true).await;
    fake.send_answers(ok_send()).await;
    fake.list_answers(listed(&["18c2f0a1b2c3d4e5"])).await;
    let provider = fake.looking_up(None, client(5_000));
    let message = message_from("ada@clinic.example", 1);
    let error = provider
        .look_up(&message, NOW)
        .await
        .err()
        .unwrap_or_else(|| panic!("must fail"));
    assert_eq!(error.class(), ErrorClass::Auth, "{error}");
    assert!(error.detail.contains(GMAIL_READONLY_SCOPE), "{error}");
    assert!(fake.requests(LIST_PATH).await.is_empty());
    provider
        .send(&message, NOW)
        .await
        .unwrap_or_else(|e| panic!("sends must not need gmail.readonly: {e}"));
}

#[tokio::test]
async fn look_up_failures_map_to_error_classes_and_are_never_ambiguous() {
    let cases = [
        (
            gmail_error(403, "insufficientPermissions"),
            ErrorClass::Auth,
            None,
            1,
        ),
        // Refreshed once, like a send.
        (gmail_error(401, "authError"), ErrorClass::Auth, None, 2),
        (
            gmail_error(403, "rateLimitExceeded").insert_header("Retry-After", "30"),
            ErrorClass::Throttled,
            Some(NOW + 30_000),
            1,
        ),
        (
            gmail_error(429, "rateLimitExceeded"),
            ErrorClass::Throttled,
            None,
            1,
        ),
        (gmail_error(404, "notFound"), ErrorClass::Permanent, None, 1),
        (ResponseTemplate::new(503), ErrorClass::Unavailable, None, 1),
        (
            ResponseTemplate::new(200).set_body_string("not json"),
            ErrorClass::Unavailable,
            None,
            1,
        ),
        (
            listed(&[]).set_delay(Duration::from_secs(3)),
            ErrorClass::Unavailable,
            None,
            1,
        ),
    ];
    for (template, class, retry_after, searches) in cases {
        let fake = Fake::start(vec![]).await;
        fake.list_answers(template).await;
        let error = fake
            .looking_up(None, client(300))
            .look_up(&message_from("ada@clinic.example", 1), NOW)
            .await
            .err()
            .unwrap_or_else(|| panic!("must fail"));
        let status = error.http_status;
        assert_eq!(
            (error.class(), error.retry_after()),
            (class, retry_after),
            "{status:?}: {error}"
        );
        assert_eq!(fake.requests(LIST_PATH).await.len(), searches, "{status:?}");
        if class == ErrorClass::Auth {
            assert!(error.detail.contains(GMAIL_READONLY_SCOPE), "{error}");
        }
        assert!(!error.to_string().contains("read-"), "{error}");
    }
}
