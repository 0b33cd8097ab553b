use base64::Engine as _;
use mail_parser::{Address as ParsedAddress, MessageParser, MimeHeaders};

use super::*;
use crate::message::parse_message;

const NOW: EpochMillis = 1_795_000_000_123;

fn message(json: serde_json::Value) -> OutboundMessage {
    match parse_message(json.to_string().as_bytes(), None) {
        Ok(m) => m,
        Err(e) => panic!("fixture must be a valid message: {e}"),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn rich() -> OutboundMessage {
    message(serde_json::json!({
        "id": "inv-2026:11@28..x",
        "from": "Dr. Zoë Müller <zoe@clinic.example>",
        "to": ["patient@example.org", {"email": "b@example.org", "name": "Doe, John"}],
        "cc": ["nurse@clinic.example"],
        "bcc": ["audit@clinic.example"],
        "reply_to": "frontdesk@clinic.example",
        "subject": "Ihr Termin – Bestätigung für Dienstag",
        "text": "Hello\nline two\n",
        "html": "<p>Grüße</p>",
        "headers": {"X-Campaign": "flu-2026", "X-Note": "naïve café"},
        "attachments": [{"filename": "letter.pdf", "content_type": "application/pdf",
                         "content": b64(b"%PDF-1.4 fake pdf bytes \x00\x01\x02")}],
        "tags": ["appointment"],
        "metadata": {"invitation_id": "123"}
    }))
}

fn addresses(a: Option<&ParsedAddress<'_>>) -> Vec<(Option<String>, String)> {
    a.map(|a| {
        a.iter()
            .map(|x| {
                (
                    x.name().map(str::to_owned),
                    x.address().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    })
    .unwrap_or_default()
}

#[test]
fn rich_message_round_trips_through_a_mime_parser() {
    let built = build(&rich(), NOW);
    let parsed = MessageParser::default()
        .parse(built.bytes())
        .unwrap_or_else(|| panic!("unparseable"));

    assert_eq!(
        addresses(parsed.from()),
        vec![(Some("Dr. Zoë Müller".into()), "zoe@clinic.example".into())]
    );
    assert_eq!(
        addresses(parsed.to()),
        vec![
            (None, "patient@example.org".into()),
            (Some("Doe, John".into()), "b@example.org".into())
        ]
    );
    assert_eq!(
        addresses(parsed.cc()),
        vec![(None, "nurse@clinic.example".into())]
    );
    assert!(parsed.bcc().is_none());
    assert_eq!(
        addresses(parsed.reply_to()),
        vec![(None, "frontdesk@clinic.example".into())]
    );
    assert_eq!(
        parsed.subject(),
        Some("Ihr Termin – Bestätigung für Dienstag")
    );
    assert_eq!(
        parsed.date().map(|d| d.to_timestamp()),
        Some(NOW.div_euclid(1000))
    );
    assert_eq!(parsed.message_id(), Some(built.message_id()));
    assert_eq!(
        parsed.header_raw("X-Campaign").map(str::trim),
        Some("flu-2026")
    );
    let note = parsed.header_as("X-Note", mail_parser::HeaderForm::Text);
    assert_eq!(note.first().and_then(|h| h.as_text()), Some("naïve café"));
    assert_eq!(
        parsed.header_raw(GATEWAY_ID_HEADER).map(str::trim),
        Some("inv-2026:11@28..x")
    );
    assert_eq!(
        parsed.body_text(0).as_deref(),
        Some("Hello\r\nline two\r\n")
    );
    assert_eq!(parsed.body_html(0).as_deref(), Some("<p>Grüße</p>"));
    assert_eq!(parsed.attachment_count(), 1);
    let pdf = parsed
        .attachment(0)
        .unwrap_or_else(|| panic!("no attachment"));
    assert_eq!(pdf.attachment_name(), Some("letter.pdf"));
    assert_eq!(
        pdf.content_type().map(|c| (c.ctype(), c.subtype())),
        Some(("application", Some("pdf")))
    );
    assert_eq!(pdf.contents(), b"%PDF-1.4 fake pdf bytes \x00\x01\x02");
}

#[test]
fn output_is_seven_bit_with_crlf_lines_within_the_rfc_limit() {
    let built = build(&rich(), NOW);
    let bytes = built.bytes();
    assert!(bytes.is_ascii());
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i}");
        }
    }
    for line in bytes.split(|b| *b == b'\n') {
        assert!(line.len() <= 999, "line of {} octets", line.len());
    }
    assert_eq!(built.encoded_size(), bytes.len());
}

#[test]
fn bcc_header_is_written_only_when_asked() {
    let m = rich();
    let omitted = build(&m, NOW);
    let omitted_text = String::from_utf8_lossy(omitted.bytes()).to_ascii_lowercase();
    assert!(!omitted_text.contains("audit@clinic.example"));
    assert!(!omitted_text.contains("\r\nbcc:"));

    let included = build_with(
        &m,
        NOW,
        &MimeOptions {
            bcc: BccHeader::Include,
            ..MimeOptions::default()
        },
    );
    let parsed = MessageParser::default()
        .parse(included.bytes())
        .unwrap_or_else(|| panic!("unparseable"));
    assert_eq!(
        addresses(parsed.bcc()),
        vec![(None, "audit@clinic.example".into())]
    );
}

#[test]
fn sender_override_keeps_the_name_and_replies_go_to_the_original_sender() {
    let m = message(serde_json::json!({
        "id": "m1", "from": "Dr. Ada <ada@clinic.example>", "to": ["p@example.org"],
        "subject": "s", "text": "t"
    }));
    let over = EmailAddress::parse("noreply@clinic.example").unwrap_or_else(|e| panic!("{e}"));
    let built = build_with(
        &m,
        NOW,
        &MimeOptions {
            from_override: Some(over),
            ..MimeOptions::default()
        },
    );
    let parsed = MessageParser::default()
        .parse(built.bytes())
        .unwrap_or_else(|| panic!("unparseable"));
    assert_eq!(
        addresses(parsed.from()),
        vec![(Some("Dr. Ada".into()), "noreply@clinic.example".into())]
    );
    assert_eq!(
        addresses(parsed.reply_to()),
        vec![(Some("Dr. Ada".into()), "ada@clinic.example".into())]
    );
}

#[test]
fn an_explicit_reply_to_wins_over_the_substituted_sender() {
    let over = EmailAddress::parse("noreply@clinic.example").unwrap_or_else(|e| panic!("{e}"));
    let built = build_with(
        &rich(),
        NOW,
        &MimeOptions {
            from_override: Some(over),
            ..MimeOptions::default()
        },
    );
    let parsed = MessageParser::default()
        .parse(built.bytes())
        .unwrap_or_else(|| panic!("unparseable"));
    assert_eq!(
        addresses(parsed.reply_to()),
        vec![(None, "frontdesk@clinic.example".into())]
    );
}

#[test]
fn the_same_message_builds_the_same_bytes_and_message_id_across_retries() {
    let m = rich();
    assert_eq!(build(&m, NOW).bytes(), build(&m, NOW).bytes());
    let later = build(&m, NOW + 60_000);
    assert_eq!(later.message_id(), build(&m, NOW).message_id());
    assert_ne!(later.bytes(), build(&m, NOW).bytes(), "Date follows now");
}

#[test]
fn message_id_escapes_characters_not_allowed_in_a_dot_atom() {
    let cases = [
        ("inv-2026_11", "gw.inv-2026_11@clinic.example"),
        ("a.b", "gw.a=2Eb@clinic.example"),
        ("x..y.", "gw.x=2E=2Ey=2E@clinic.example"),
        ("u:1@host", "gw.u=3A1=40host@clinic.example"),
    ];
    for (id, expected) in cases {
        let m = message(serde_json::json!({
            "id": id, "from": "ada@Clinic.Example", "to": ["p@example.org"],
            "subject": "s", "text": "t"
        }));
        assert_eq!(message_id_for(&m), expected, "id {id:?}");
    }
}

#[test]
fn a_body_containing_the_natural_boundary_does_not_break_the_structure() {
    let seed = fnv1a(b"clash");
    let natural = format!("=_gw-alt-{seed:016x}-0");
    let text = format!("before\n--{natural}\nContent-Type: text/html\n\n<b>forged</b>\n");
    let m = message(serde_json::json!({
        "id": "clash", "from": "ada@clinic.example", "to": ["p@example.org"],
        "subject": "s", "text": text, "html": "<p>real</p>"
    }));
    let built = build(&m, NOW);
    let parsed = MessageParser::default()
        .parse(built.bytes())
        .unwrap_or_else(|| panic!("unparseable"));
    assert_eq!(parsed.html_body_count(), 1);
    assert_eq!(parsed.body_html(0).as_deref(), Some("<p>real</p>"));
    assert!(
        parsed
            .body_text(0)
            .is_some_and(|t| t.contains("<b>forged</b>"))
    );
}

#[test]
fn inline_parts_sit_in_a_related_part_with_their_content_id() {
    let m = message(serde_json::json!({
        "id": "inl", "from": "ada@clinic.example", "to": ["p@example.org"],
        "subject": "s", "html": "<img src=\"cid:logo\">",
        "attachments": [
            {"filename": "logo.png", "content_type": "image/png", "content": b64(b"\x89PNG"), "content_id": "logo"},
            {"filename": "Befund für Zoë.pdf", "content_type": "application/pdf", "content": b64(b"pdf")}
        ]
    }));
    let built = build(&m, NOW);
    let text = String::from_utf8_lossy(built.bytes()).into_owned();
    assert!(text.contains("multipart/related"), "{text}");
    assert!(text.contains("multipart/mixed"), "{text}");
    let parsed = MessageParser::default()
        .parse(built.bytes())
        .unwrap_or_else(|| panic!("unparseable"));
    let logo = parsed
        .attachments()
        .find(|p| p.content_id() == Some("logo"))
        .unwrap_or_else(|| panic!("no inline part"));
    assert_eq!(logo.contents(), b"\x89PNG");
    let pdf = parsed
        .attachments()
        .find(|p| p.attachment_name() == Some("Befund für Zoë.pdf"))
        .unwrap_or_else(|| panic!("no pdf"));
    assert_eq!(pdf.contents(), b"pdf");
}

#[test]
fn content_type_parameters_are_kept() {
    let ct = content_type("text/csv; charset=\"iso-8859-1\"; header=present; junk");
    let mut out = Vec::new();
    MessageBuilder::new()
        .body(MimePart::new(ct, BodyPart::Binary(Cow::Borrowed(b"a"))))
        .serialize(&mut out);
    let parsed = MessageParser::default()
        .parse(&out)
        .unwrap_or_else(|| panic!("unparseable"));
    let ct = parsed
        .root_part()
        .content_type()
        .unwrap_or_else(|| panic!("no content type"));
    assert_eq!((ct.ctype(), ct.subtype()), ("text", Some("csv")));
    assert_eq!(ct.attribute("charset"), Some("iso-8859-1"));
    assert_eq!(ct.attribute("header"), Some("present"));
}

#[test]
fn line_breaks_are_normalised_to_crlf() {
    let cases = [
        ("a\nb", "a\r\nb"),
        ("a\r\nb", "a\r\nb"),
        ("a\rb", "a\r\nb"),
        ("a\n\nb\r", "a\r\n\r\nb\r\n"),
    ];
    for (input, expected) in cases {
        assert_eq!(crlf(input), expected, "{input:?}");
    }
}

#[test]
fn debug_shows_size_not_content() {
    let built = build(&rich(), NOW);
    let shown = format!("{built:?}");
    assert!(
        !shown.contains("Grüße") && !shown.contains("patient"),
        "{shown}"
    );
    assert!(shown.contains("bytes"));
}

#[test]
fn encoded_words_stay_short_and_split_on_character_boundaries() {
    let cases = ["=?", "a=?b", &"ä=?".repeat(60), &"🚑".repeat(40)];
    for text in cases {
        let words = encoded_words(text);
        let mut decoded = Vec::new();
        for word in words.split(' ') {
            assert!(word.len() <= 75, "{word}");
            let inner = word
                .strip_prefix("=?utf-8?B?")
                .and_then(|w| w.strip_suffix("?="))
                .unwrap_or_else(|| panic!("not an encoded word: {word}"));
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(inner)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                std::str::from_utf8(&bytes).is_ok(),
                "split inside a character"
            );
            decoded.extend(bytes);
        }
        assert_eq!(String::from_utf8(decoded).ok().as_deref(), Some(text));
    }
}

#[test]
fn text_that_looks_like_an_encoded_word_reads_back_literally() {
    let m = message(serde_json::json!({
        "id": "ew", "from": {"email": "ada@clinic.example", "name": "=?utf-8?Q?Boss?="},
        "to": ["p@example.org", {"email": "q@example.org", "name": "=?x?="}],
        "subject": "=?utf-8?B?SGFja2Vk?=", "text": "t",
        "headers": {"X-Note": "=?utf-8?B?SGFja2Vk?= too"}
    }));
    let built = build(&m, NOW);
    let parsed = MessageParser::default()
        .parse(built.bytes())
        .unwrap_or_else(|| panic!("unparseable"));
    assert_eq!(parsed.subject(), Some("=?utf-8?B?SGFja2Vk?="));
    assert_eq!(
        addresses(parsed.from()),
        vec![(Some("=?utf-8?Q?Boss?=".into()), "ada@clinic.example".into())]
    );
    assert_eq!(
        addresses(parsed.to()),
        vec![
            (None, "p@example.org".into()),
            (Some("=?x?=".into()), "q@example.org".into())
        ]
    );
    let note = parsed.header_as("X-Note", mail_parser::HeaderForm::Text);
    assert_eq!(
        note.first().and_then(|h| h.as_text()),
        Some("=?utf-8?B?SGFja2Vk?= too")
    );
}
