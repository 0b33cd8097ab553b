//! MIME round trip: messages parsed from the outbound contract, built with the gateway's MIME
//! builder and read back with an independent parser (`mail-parser`), with hostile but valid
//! values (non-ASCII, quotes and separators in names, subjects long enough to need folding,
//! text that looks like encoded words or headers). Header injection attempts never get that far:
//! the contract refuses them, which is shown first.

#![allow(
    clippy::panic,
    reason = "the fixture helpers are test code: a broken fixture should fail the test loudly"
)]

use base64::Engine as _;
use gateway_core::message::{OutboundMessage, parse_message};
use gateway_core::mime::{self, BccHeader, GATEWAY_ID_HEADER, MimeOptions};
use mail_parser::{HeaderForm, Message, MessageParser, MimeHeaders};
use proptest::prelude::*;

const NOW: i64 = 1_795_000_000_000;

fn parse(json: &serde_json::Value) -> OutboundMessage {
    parse_message(json.to_string().as_bytes(), None).unwrap_or_else(|e| panic!("{e}"))
}

fn reparse(bytes: &[u8]) -> Message<'_> {
    MessageParser::default()
        .parse(bytes)
        .unwrap_or_else(|| panic!("built MIME does not parse"))
}

fn base(subject: &str, from_name: &str, to_name: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "rt-1",
        "from": {"email": "ada@clinic.example", "name": from_name},
        "to": [{"email": "p@example.org", "name": to_name}],
        "subject": subject,
        "text": "body"
    })
}

#[test]
fn header_injection_attempts_are_refused_before_any_mime_is_built() {
    let attacks = [
        serde_json::json!({"subject": "Hi\r\nBcc: victim@evil.example"}),
        serde_json::json!({"subject": "Hi\nBcc: victim@evil.example"}),
        serde_json::json!({"subject": "Hi\rBcc: victim@evil.example"}),
        serde_json::json!({"subject": "Hi\u{2028}Bcc: victim@evil.example"}),
        serde_json::json!({"subject": "Hi\u{0}"}),
        serde_json::json!({"from": "Ada\r\nBcc: victim@evil.example <ada@clinic.example>"}),
        serde_json::json!({"to": [{"email": "p@example.org", "name": "P\nBcc: v@evil.example"}]}),
        serde_json::json!({"to": ["p@example.org\r\nBcc: v@evil.example"]}),
        serde_json::json!({"headers": {"X-Note": "a\r\nBcc: v@evil.example"}}),
        serde_json::json!({"headers": {"X-Note\r\nBcc": "v@evil.example"}}),
        serde_json::json!({"headers": {"Bcc": "v@evil.example"}}),
        serde_json::json!({"headers": {"Content-Type": "text/html"}}),
        serde_json::json!({"reply_to": "a@x.example\r\nBcc: v@evil.example"}),
        serde_json::json!({"attachments": [{"filename": "a.pdf\r\nBcc: v@evil.example", "content": "AA=="}]}),
        serde_json::json!({"attachments": [{"filename": "a.pdf", "content_type": "application/pdf\r\nX: y", "content": "AA=="}]}),
    ];
    for attack in attacks {
        let mut json = base("Hello", "Ada", "P");
        for (key, value) in attack.as_object().into_iter().flatten() {
            json[key] = value.clone();
        }
        assert!(
            parse_message(json.to_string().as_bytes(), None).is_err(),
            "accepted {attack}"
        );
    }
}

#[test]
fn hostile_but_valid_values_round_trip() {
    let long_subject = format!(
        "Befund für Zoë Ünal – {} – Ende",
        "sehr lange Betreffzeile mit Umlauten äöü und Wörtern ".repeat(12)
    );
    let cases: Vec<(String, &str, &str)> = vec![
        (long_subject, "Dr. Zoë Müller", "Ünal, Zoë"),
        (
            "x".repeat(990),
            "plain ascii name",
            "\"quoted\" name with \\ backslash",
        ),
        ("Bcc: victim@evil.example".into(), "Bcc: evil", "To: evil"),
        (
            "=?utf-8?B?SGFja2Vk?= looks encoded".into(),
            "=?utf-8?Q?Fake?=",
            "a <b> c",
        ),
        (
            "semi;colon, comma: colon".into(),
            "Doe; Jane",
            "O'Brien, Seán",
        ),
        ("日本語の件名 🚑".into(), "山田 太郎", "Ἀριστοτέλης"),
        ("  leading and trailing spaces  ".into(), "x@y", "@"),
        ("tab\there".into(), "tab\tname", "z"),
    ];
    for (subject, from_name, to_name) in cases {
        let message = parse(&base(&subject, from_name, to_name));
        let built = mime::build(&message, NOW);
        for line in built.bytes().split(|b| *b == b'\n') {
            assert!(line.len() <= 998, "unfolded line in {subject:?}");
        }
        let parsed = reparse(built.bytes());
        assert_eq!(
            parsed.subject(),
            Some(message.subject()),
            "subject {subject:?}"
        );
        let from = parsed.from().and_then(|a| a.first());
        assert_eq!(
            from.and_then(|a| a.name()),
            message.from().name(),
            "from {from_name:?}"
        );
        assert_eq!(from.and_then(|a| a.address()), Some("ada@clinic.example"));
        let to: Vec<_> = parsed.to().map(|a| a.iter().collect()).unwrap_or_default();
        assert_eq!(to.len(), 1, "to {to_name:?} split into several addresses");
        assert_eq!(to[0].name(), message.to()[0].name(), "to {to_name:?}");
        assert_eq!(to[0].address(), Some("p@example.org"));
        // Nothing in the values became a header of its own.
        assert!(parsed.bcc().is_none());
        assert_eq!(parsed.header_values("To").count(), 1);
    }
}

#[test]
fn custom_headers_and_attachment_names_round_trip() {
    let pdf = base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.4 \x00\xff");
    let json = serde_json::json!({
        "id": "rt-2",
        "from": "ada@clinic.example",
        "to": ["p@example.org"],
        "bcc": ["audit@clinic.example"],
        "subject": "s",
        "text": "t",
        "html": "<p>h</p>",
        "headers": {
            "X-Long": "wert ".repeat(150).trim_end(),
            "X-Unicode": "Grüße aus Köln – \"zitiert\"",
            "List-Unsubscribe": "<mailto:unsub@clinic.example?subject=unsubscribe>"
        },
        "attachments": [
            {"filename": "Befund \"final\" für Zoë.pdf", "content_type": "application/pdf", "content": pdf},
            {"filename": "=?utf-8?B?SGFja2Vk?=.pdf", "content_type": "application/pdf", "content": pdf},
            {"filename": "a;b=c.txt", "content_type": "text/plain; charset=utf-8", "content": "YcOk"}
        ]
    });
    let message = parse(&json);
    let built = mime::build(&message, NOW);
    let parsed = reparse(built.bytes());
    for (name, value) in message.headers() {
        let got = parsed.header_as(name.as_str(), HeaderForm::Text);
        let got = got.first().and_then(|v| v.as_text()).map(str::to_owned);
        assert_eq!(got.as_deref(), Some(value.as_str()), "header {name}");
    }
    assert_eq!(
        parsed.header_raw(GATEWAY_ID_HEADER).map(str::trim),
        Some("rt-2")
    );
    let names: Vec<_> = parsed.attachments().map(|a| a.attachment_name()).collect();
    assert_eq!(
        names,
        [
            Some("Befund \"final\" für Zoë.pdf"),
            Some("=?utf-8?B?SGFja2Vk?=.pdf"),
            Some("a;b=c.txt")
        ]
    );
    let contents: Vec<_> = parsed
        .attachments()
        .map(|a| a.contents().to_vec())
        .collect();
    let pdf_bytes = b"%PDF-1.4 \x00\xff".to_vec();
    assert_eq!(
        contents,
        [pdf_bytes.clone(), pdf_bytes, "aä".as_bytes().to_vec()]
    );
    assert!(parsed.bcc().is_none());

    let with_bcc = mime::build_with(
        &message,
        NOW,
        &MimeOptions {
            bcc: BccHeader::Include,
            ..MimeOptions::default()
        },
    );
    let parsed = reparse(with_bcc.bytes());
    assert!(
        parsed
            .bcc()
            .is_some_and(|b| b.contains("audit@clinic.example"))
    );
}

/// Header-safe text as the contract accepts it: printable characters of any script, spaces and
/// tabs, quotes and separators, no control characters.
fn header_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex(
        "[ \\t!-~\\u{a0}-\\u{2027}\\u{202a}-\\u{d7ff}\\u{e000}-\\u{fffd}]{1,120}",
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .prop_filter("not blank", |s| !s.trim().is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_accepted_subject_and_names_survive_the_round_trip(
        subject in header_text(),
        from_name in header_text(),
        to_name in header_text(),
    ) {
        let json = base(&subject, &from_name, &to_name);
        // Values the contract refuses cannot reach the builder; only accepted ones matter here.
        prop_assume!(parse_message(json.to_string().as_bytes(), None).is_ok());
        let message = parse(&json);
        let built = mime::build(&message, NOW);
        let parsed = reparse(built.bytes());
        // Whitespace at either end of an unstructured header is not significant (RFC 5322
        // unfolding); readers drop it, so it is not compared.
        prop_assert_eq!(parsed.subject().map(str::trim), Some(message.subject().trim()));
        let from = parsed.from().and_then(|a| a.first());
        prop_assert_eq!(from.and_then(|a| a.name()), message.from().name());
        let to: Vec<_> = parsed.to().map(|a| a.iter().collect()).unwrap_or_default();
        prop_assert_eq!(to.len(), 1);
        prop_assert_eq!(to[0].name(), message.to()[0].name());
        prop_assert_eq!(to[0].address(), Some("p@example.org"));
        prop_assert!(parsed.bcc().is_none());
    }
}
