//! Helpers shared by the integration tests: fixture paths, the rich message every provider must
//! send, a `multipart/form-data` reader for fake servers, and emulator endpoints; and the load
//! model of the shared limiter state ([`load_model`]).

#![allow(
    clippy::panic,
    reason = "the helpers are test code: a broken fixture or a missing emulator should fail loudly"
)]

use std::time::Duration;

use gateway_core::config::HttpSettings;
use gateway_core::message::{OutboundMessage, parse_message};

pub mod load_model;

/// A small but real PDF document (the attachment of [`rich_message`]).
pub const PDF_BYTES: &[u8] = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n";

/// The subject of [`rich_message`]: non-ASCII on purpose.
pub const RICH_SUBJECT: &str = "Ihr Befund – Termin am Dienstag ✓";

/// The message of the provider issue's "done means": two `to` recipients (one with a non-ASCII
/// name), a `cc`, a `bcc`, a reply-to, text and html, a PDF attachment, a non-ASCII subject, a
/// custom header, tags, metadata, and tracking (opens on, clicks off).
pub fn rich_message() -> OutboundMessage {
    use base64::Engine as _;
    let pdf = base64::engine::general_purpose::STANDARD.encode(PDF_BYTES);
    let body = serde_json::json!({
        "id": "inv-2026-11-28-000123",
        "from": "Dr. Zoë Müller <zoe@clinic.example>",
        "to": ["patient@example.org", {"email": "b@example.org", "name": "Jürgen Groß"}],
        "cc": ["family@example.org"],
        "bcc": ["archive@clinic.example"],
        "reply_to": "frontdesk@clinic.example",
        "subject": RICH_SUBJECT,
        "text": "Guten Tag,\nIhr Befund liegt bei.",
        "html": "<p>Guten Tag,</p><p>Ihr Befund liegt bei.</p>",
        "headers": {"X-Campaign": "flu-2026"},
        "attachments": [{"filename": "befund.pdf", "content_type": "application/pdf", "content": pdf}],
        "tags": ["appointment", "results"],
        "metadata": {"invitation_id": "123", "attempt": 2, "urgent": true},
        "campaign_id": "flu-2026",
        "user_id": "u-42",
        "tracking": {"opens": true, "clicks": false}
    });
    parse_message(body.to_string().as_bytes(), None)
        .unwrap_or_else(|e| panic!("rich message does not parse: {e}"))
}

/// HTTP settings with a short total timeout, so "slow response" tests finish quickly.
pub fn http_settings(request_timeout: Duration) -> HttpSettings {
    HttpSettings {
        connect_timeout: Duration::from_millis(500),
        request_timeout,
    }
}

/// A port on loopback with nothing listening (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("binding a probe port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local address: {e}"))
        .port()
}

/// One part of a `multipart/form-data` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormPart {
    /// The `name` of the part.
    pub name: String,
    /// The `filename`, for file parts.
    pub filename: Option<String>,
    /// The part's `Content-Type`, if it has one.
    pub content_type: Option<String>,
    /// The part's bytes.
    pub data: Vec<u8>,
}

impl FormPart {
    /// The data as UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8(self.data.clone())
            .unwrap_or_else(|e| panic!("part {} is not UTF-8: {e}", self.name))
    }
}

/// Splits a `multipart/form-data` body by the boundary named in `content_type`. Written for the
/// bodies `reqwest` produces (CRLF line ends, quoted parameters); it panics on anything else.
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<FormPart> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .unwrap_or_else(|| panic!("no boundary in {content_type}"))
        .trim_matches('"');
    let delimiter = format!("--{boundary}").into_bytes();
    let mut parts = Vec::new();
    let mut rest = body;
    let first = find(rest, &delimiter).unwrap_or_else(|| panic!("no first boundary"));
    rest = &rest[first + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .unwrap_or_else(|| panic!("boundary not followed by CRLF"));
        let end = find(rest, &delimiter).unwrap_or_else(|| panic!("unterminated part"));
        let part = &rest[..end];
        let part = part
            .strip_suffix(b"\r\n")
            .unwrap_or_else(|| panic!("part not ended by CRLF"));
        let split = find(part, b"\r\n\r\n").unwrap_or_else(|| panic!("part without headers"));
        let head = String::from_utf8_lossy(&part[..split]).into_owned();
        let data = part[split + 4..].to_vec();
        let mut name = None;
        let mut filename = None;
        let mut content_type = None;
        for line in head.split("\r\n") {
            let (key, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad part header {line}"));
            match key.trim().to_ascii_lowercase().as_str() {
                "content-disposition" => {
                    for param in value.split(';').skip(1) {
                        if let Some((k, v)) = param.trim().split_once('=') {
                            let v = v.trim_matches('"').to_owned();
                            match k {
                                "name" => name = Some(v),
                                "filename" => filename = Some(v),
                                _ => {}
                            }
                        }
                    }
                }
                "content-type" => content_type = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        parts.push(FormPart {
            name: name.unwrap_or_else(|| panic!("part without a name")),
            filename,
            content_type,
            data,
        });
        rest = &rest[end + delimiter.len()..];
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The moto server's URL from `MOTO_URL`; fails the test with instructions when it is unset,
/// so an emulator test never passes by being skipped.
pub fn moto_url() -> String {
    std::env::var("MOTO_URL").unwrap_or_else(|_| {
        panic!(
            "MOTO_URL is not set: run `scripts/services up && source .local/services.env` \
             (or scripts/test) before these tests"
        )
    })
}

/// A DynamoDB client for the emulator: the store's client (SDK retries off) with waits long
/// enough for a busy machine. moto serves DynamoDB one request at a time, and while the whole
/// suite runs beside clippy a request can queue for seconds; under the production bound (2 s)
/// it would time out after being applied and be sent again, which is a fault the ledger and
/// limiter tests inject on purpose, not one a test of their ordinary behaviour should meet by
/// chance.
pub async fn emulator_dynamodb() -> gateway_core::state::dynamodb::Client {
    moto_url();
    gateway_core::state::dynamodb::with_timeouts(
        &gateway_core::state::dynamodb::client_from_env().await,
        Duration::from_secs(5),
        Duration::from_secs(30),
    )
}

static NEXT_DATABASE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The MariaDB server URL from `DATABASE_URL` (no database name); fails the test with
/// instructions when it is unset, so a database test never passes by being skipped.
pub fn database_server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is unset: these tests need MariaDB. Run `scripts/services up && \
             source .local/services.env` first (scripts/test does it)."
        )
    })
}

/// A fresh database named `{prefix}_{pid}_{n}` on the test server, with every migration applied.
pub async fn fresh_database(prefix: &str) -> gateway_core::records::mysql::MysqlRecords {
    fresh_database_with_url(prefix).await.0
}

/// [`fresh_database`] and its URL (to open more pools on it).
pub async fn fresh_database_with_url(
    prefix: &str,
) -> (gateway_core::records::mysql::MysqlRecords, String) {
    use gateway_core::records::mysql::{MysqlRecords, PoolSettings};
    let server = database_server_url();
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT_DATABASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! { panic!("{what}: {e}") };
    let admin = MysqlRecords::connect(&server, &PoolSettings::default())
        .unwrap_or_else(|e| fail("connecting to DATABASE_URL", &e));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(admin.pool())
    .await
    .unwrap_or_else(|e| fail("dropping the test database", &e));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(admin.pool())
        .await
        .unwrap_or_else(|e| fail("creating the test database", &e));
    let url = format!("{server}/{name}");
    let records = MysqlRecords::connect(&url, &PoolSettings::default())
        .unwrap_or_else(|e| fail("connecting to the test database", &e));
    let applied = records
        .migrate()
        .await
        .unwrap_or_else(|e| fail("migrating", &e));
    let embedded: Vec<i64> = gateway_core::records::mysql::MIGRATOR
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(
        applied, embedded,
        "every migration applies on an empty database"
    );
    (records, url)
}
