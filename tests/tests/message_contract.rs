//! The outbound message contract: the published JSON Schema and `parse_message` agree on every
//! sample under `events/` and `examples/`, and on a table of good and bad messages.

#![allow(
    clippy::panic,
    reason = "the fixture helpers are test code: a broken fixture should fail the test loudly"
)]

use std::fs;
use std::path::{Path, PathBuf};

use gateway_core::message::parse_message;
use serde_json::{Value, json};

/// The poison record of `events/sqs-batch.json`.
const POISON_MESSAGE_ID: &str = "3b1f6c1e-2d4a-4f7e-9a51-6f0c2d8e1a03";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator() -> jsonschema::Validator {
    let schema = read_json(&repo_root().join("shared/schema/message.schema.json"));
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

fn schema_errors(v: &jsonschema::Validator, body: &Value) -> Vec<String> {
    v.iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Asserts that `body` is valid for both the schema and the parser.
fn assert_accepted(v: &jsonschema::Validator, what: &str, body: &str, fallback_id: Option<&str>) {
    let value: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
    let errors = schema_errors(v, &value);
    assert!(errors.is_empty(), "{what}: schema rejects it: {errors:?}");
    if let Err(e) = parse_message(body.as_bytes(), fallback_id) {
        panic!("{what}: parser rejects it: {e}");
    }
}

/// Asserts that `body` is refused by both the schema and the parser.
fn assert_rejected(v: &jsonschema::Validator, what: &str, body: &Value) {
    assert!(
        !v.is_valid(body),
        "{what}: the schema accepts a message the parser must refuse"
    );
    assert!(
        parse_message(body.to_string().as_bytes(), Some("sqs-fallback-id")).is_err(),
        "{what}: the parser accepts it"
    );
}

/// `events/message*.json` and `examples/message*.json`: the outbound message bodies. Other files
/// there are other events (the SQS batch is checked record by record below) or configs.
fn sample_messages() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = Vec::new();
    for dir in ["events", "examples"] {
        let entries = fs::read_dir(root.join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("message") && name.ends_with(".json") {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_sample_message_satisfies_schema_and_parser() {
    let v = validator();
    let files = sample_messages();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert!(
        names.iter().filter(|n| *n == "message.json").count() == 2,
        "events/message.json and examples/message.json must both be checked: {names:?}"
    );
    for path in files {
        let body = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_accepted(&v, &path.display().to_string(), &body, None);
    }
}

#[test]
fn sqs_batch_records_are_good_except_the_poison_one() {
    let v = validator();
    let batch = read_json(&repo_root().join("events/sqs-batch.json"));
    let records = batch["Records"].as_array().cloned().unwrap_or_default();
    assert_eq!(records.len(), 4, "the batch documents four records");
    let mut ids = Vec::new();
    for record in &records {
        assert_eq!(record["eventSource"], "aws:sqs");
        let message_id = record["messageId"].as_str().unwrap_or_default();
        let body = record["body"].as_str().unwrap_or_default();
        if message_id == POISON_MESSAGE_ID {
            let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            assert_rejected(&v, "poison record", &value);
            let err = parse_message(body.as_bytes(), Some(message_id))
                .err()
                .map(|e| e.to_string());
            assert_eq!(
                err.as_deref(),
                Some(
                    "htlm: unknown field; subject: contains a line break; text: one of text or html is required"
                )
            );
            continue;
        }
        assert_accepted(&v, message_id, body, Some(message_id));
        if let Ok(m) = parse_message(body.as_bytes(), Some(message_id)) {
            ids.push(m.id().to_owned());
        }
    }
    assert_eq!(ids.len(), 3);
    assert_eq!(
        ids[0], ids[2],
        "the duplicate record repeats the first message id"
    );
    assert_eq!(
        ids[1], "3b1f6c1e-2d4a-4f7e-9a51-6f0c2d8e1a02",
        "no id in the body: the SQS id is used"
    );
}

fn good() -> Value {
    json!({
        "id": "m-1",
        "from": "Clinic <clinic@example.org>",
        "to": ["p@example.org"],
        "subject": "Your appointment",
        "text": "See you soon."
    })
}

fn with(key: &str, value: Value) -> Value {
    let mut v = good();
    v[key] = value;
    v
}

fn without(key: &str) -> Value {
    let mut v = good();
    if let Value::Object(m) = &mut v {
        m.remove(key);
    }
    v
}

fn attachment(key: &str, value: Value) -> Value {
    let mut a =
        json!({"filename": "a.pdf", "content_type": "application/pdf", "content": "JVBERg=="});
    a[key] = value;
    with("attachments", json!([a]))
}

#[test]
fn schema_and_parser_accept_the_same_good_variants() {
    let v = validator();
    let cases = [
        (
            "quoted display name",
            with("from", json!("\"Doe, John\" <j@example.org>")),
        ),
        ("angle address only", with("from", json!("<j@example.org>"))),
        (
            "object with null name",
            with("to", json!([{"email": "a@example.org", "name": null}])),
        ),
        ("only bcc", {
            let mut m = without("to");
            m["bcc"] = json!(["b@example.org"]);
            m
        }),
        ("html only", {
            let mut m = without("text");
            m["html"] = json!("<p>x</p>");
            m
        }),
        ("no id (the queue supplies one)", without("id")),
        ("null optional fields", with("reply_to", Value::Null)),
        (
            "allowed custom headers",
            with(
                "headers",
                json!({"List-Unsubscribe": "<mailto:u@example.org>", "X-Campaign": "flu"}),
            ),
        ),
        (
            "content type with parameters",
            attachment("content_type", json!("text/plain; charset=utf-8")),
        ),
        (
            "inline part",
            attachment("content_id", json!("logo@clinic")),
        ),
        ("empty attachment", attachment("content", json!(""))),
        (
            "attachment by reference",
            with(
                "attachments",
                json!([{"filename": "scan.pdf", "s3": {"bucket": "clinic-attachments",
                    "key": "2026/12/scan.pdf", "size": 5_000_000,
                    "sha256": "ab".repeat(32)}}]),
            ),
        ),
        (
            "scalar metadata",
            with("metadata", json!({"a": "1", "b": 2, "c": true, "d": ""})),
        ),
        (
            "non-ASCII subject",
            with(
                "subject",
                json!("Termin am Montag \u{2013} Gr\u{fc}\u{df}e"),
            ),
        ),
        (
            "tab in a header value",
            with("headers", json!({"X-Note": "a\tb"})),
        ),
        (
            "punycode domain",
            with("to", json!(["a@xn--bcher-kva.example"])),
        ),
    ];
    for (what, body) in cases {
        assert_accepted(&v, what, &body.to_string(), Some("sqs-fallback-id"));
    }
}

#[test]
fn schema_and_parser_reject_the_same_bad_messages() {
    let v = validator();
    let reference = |r: Value| with("attachments", json!([{"filename": "scan.pdf", "s3": r}]));
    for (what, body) in [
        (
            "content and a reference",
            attachment("s3", json!({"bucket": "b-1", "key": "k", "size": 1})),
        ),
        (
            "a reference over 30 MB",
            reference(json!({"bucket": "b-1", "key": "k", "size": 30_000_001})),
        ),
        (
            "a reference without its size",
            reference(json!({"bucket": "b-1", "key": "k"})),
        ),
        (
            "an upper-case bucket",
            reference(json!({"bucket": "Bucket", "key": "k", "size": 1})),
        ),
        (
            "a short digest",
            reference(json!({"bucket": "b-1", "key": "k", "size": 1, "sha256": "ab"})),
        ),
        (
            "neither content nor a reference",
            with("attachments", json!([{"filename": "scan.pdf"}])),
        ),
    ] {
        assert_rejected(&v, what, &body);
    }
    let cases = [
        (
            "subject with CRLF",
            with("subject", json!("Hi\r\nBcc: x@evil.example")),
        ),
        ("subject with NUL", with("subject", json!("Hi\u{0}"))),
        (
            "subject with U+2028",
            with("subject", json!("Hi\u{2028}there")),
        ),
        ("empty subject", with("subject", json!(""))),
        ("missing subject", without("subject")),
        ("missing from", without("from")),
        ("typo in a body field", {
            let mut m = without("text");
            m["htlm"] = json!("<p>x</p>");
            m
        }),
        ("unknown top-level field", with("priority", json!("high"))),
        ("no recipients", with("to", json!([]))),
        ("recipients as a string", with("to", json!("p@example.org"))),
        (
            "invalid recipient",
            with("to", json!(["p@example.org", "nope"])),
        ),
        ("single-label domain", with("to", json!(["p@localhost"]))),
        ("address literal", with("to", json!(["p@[192.0.2.1]"]))),
        (
            "quoted local part",
            with("to", json!(["\"p q\"@example.org"])),
        ),
        (
            "non-ASCII local part",
            with("to", json!(["jos\u{e9}@example.org"])),
        ),
        (
            "unbalanced quote in a name",
            with("from", json!("\"Doe <d@example.org>")),
        ),
        (
            "line break in a display name",
            with("from", json!("Eve\r\nBcc: x@evil.example <e@example.org>")),
        ),
        (
            "line break in an object name",
            with("to", json!([{"email": "a@example.org", "name": "A\nB"}])),
        ),
        (
            "unknown key in an address object",
            with("to", json!([{"email": "a@example.org", "nmae": "A"}])),
        ),
        (
            "reply_to as a list",
            with("reply_to", json!(["a@example.org"])),
        ),
        ("empty text and no html", with("text", json!(""))),
        ("NUL in the text body", with("text", json!("a\u{0}b"))),
        ("invalid id", with("id", json!("has space"))),
        ("id too long", with("id", json!("a".repeat(129)))),
        (
            "forbidden header Bcc",
            with("headers", json!({"Bcc": "x@evil.example"})),
        ),
        (
            "forbidden header in lower case",
            with("headers", json!({"content-transfer-encoding": "8bit"})),
        ),
        (
            "forbidden Subject header",
            with("headers", json!({"Subject": "x"})),
        ),
        (
            "provider control header",
            with("headers", json!({"X-SMTPAPI": "{}"})),
        ),
        (
            "header name with a colon",
            with("headers", json!({"X:Y": "v"})),
        ),
        (
            "header name with a space",
            with("headers", json!({"X Y": "v"})),
        ),
        (
            "header value with LF",
            with("headers", json!({"X-A": "a\nb"})),
        ),
        (
            "header value too long",
            with("headers", json!({"X-A": "a".repeat(999)})),
        ),
        (
            "invalid base64",
            attachment("content", json!("not base64!")),
        ),
        (
            "base64 with a line break",
            attachment("content", json!("JVBE\nRg==")),
        ),
        (
            "base64 with non-zero trailing bits",
            attachment("content", json!("QR==")),
        ),
        (
            "attachment without file name",
            attachment("filename", Value::Null),
        ),
        (
            "attachment content type without subtype",
            attachment("content_type", json!("pdf")),
        ),
        (
            "content id in angle brackets",
            attachment("content_id", json!("<logo>")),
        ),
        ("unknown attachment key", attachment("name", json!("a.pdf"))),
        ("nested metadata", with("metadata", json!({"k": {"n": 1}}))),
        ("null metadata value", with("metadata", json!({"k": null}))),
        (
            "line break in a metadata key",
            with("metadata", json!({"a\nb": "x"})),
        ),
        ("line break in a tag", with("tags", json!(["a\nb"]))),
        (
            "tracking as a string",
            with("tracking", json!({"opens": "yes"})),
        ),
        (
            "unknown tracking key",
            with("tracking", json!({"open": true})),
        ),
        ("numeric user id", with("user_id", json!(42))),
        (
            "gateway with a space",
            with("gateway", json!("mailgun primary")),
        ),
        (
            "stream not one of the two",
            with("stream", json!("marketing")),
        ),
        ("stream in capitals", with("stream", json!("BULK"))),
        ("body is an array", json!([good()])),
    ];
    for (what, body) in cases {
        assert_rejected(&v, what, &body);
    }
}

/// Candidate values for one field, good and bad mixed: the schema and the parser must give the
/// same verdict for each, so a rule added to one side only shows up here.
fn candidates(field: &str) -> Vec<Value> {
    let local64 = "l".repeat(64);
    let label63 = "d".repeat(63);
    let addresses = vec![
        json!("a@example.org"),
        json!("A <a@example.org>"),
        json!("\"A, B\" <a@example.org>"),
        json!("\"A \\\"q\\\" B\" <a@example.org>"),
        json!("<a@example.org>"),
        json!("  a@example.org\t"),
        json!("Zo\u{eb} <a@example.org>"),
        json!("a@example.org <a@example.org>"),
        json!("a@EXAMPLE.ORG"),
        json!("a+tag.x@sub.example.org"),
        json!("a@xn--80ak6aa92e.com"),
        json!("a@123.example"),
        json!(format!("{local64}@example.org")),
        json!(format!("{local64}l@example.org")),
        json!(format!("Name <{local64}l@example.org>")),
        json!(format!("a@{label63}.example")),
        json!(format!("a@{label63}d.example")),
        json!(format!(
            "{local64}@{}.example",
            [label63.as_str(); 3].join(".")
        )),
        json!(format!(
            "Name <{local64}@{}.example>",
            [label63.as_str(); 3].join(".")
        )),
        json!(format!("{local64}@{}.ex", [label63.as_str(); 3].join("."))),
        json!("a@example"),
        json!("a@@example.org"),
        json!("a..b@example.org"),
        json!("a@-a.example"),
        json!("a@a-.example"),
        json!("a@example.org."),
        json!("A <a@example.org"),
        json!("\"A <a@example.org>"),
        json!("A\" <a@example.org>"),
        json!("\"A\" B <a@example.org>"),
        json!("a@example.org\n"),
        json!("A\u{7f} <a@example.org>"),
        json!(""),
        json!({"email": "a@example.org"}),
        json!({"email": "a@example.org", "name": null}),
        json!({"email": "a@example.org", "name": ""}),
        json!({"email": "a@example.org", "name": "Doe, John \"JD\""}),
        json!({"email": "a@example.org", "name": "x\ny"}),
        json!({"email": "A <a@example.org>"}),
        json!({"email": format!("{local64}l@example.org")}),
        json!({"name": "x"}),
        json!({"email": "a@example.org", "x": 1}),
        json!({"email": 5}),
        json!(5),
    ];
    let list = |vs: &[Value]| vs.iter().map(|v| json!([v])).collect::<Vec<_>>();
    let header = |name: &str, value: Value| {
        let mut m = serde_json::Map::new();
        m.insert(name.to_owned(), value);
        Value::Object(m)
    };
    let good_attachment =
        json!({"filename": "a.pdf", "content_type": "application/pdf", "content": "JVBERg=="});
    let att = |key: &str, value: Value| {
        let mut a = good_attachment.clone();
        a[key] = value;
        json!([a])
    };
    let mut values = match field {
        "id" => vec![
            json!("a"),
            json!("a:b@c.d-e_f"),
            json!("a".repeat(128)),
            json!("a".repeat(129)),
            json!(""),
            json!("a b"),
            json!("a/b"),
            json!(5),
        ],
        "from" => addresses,
        "reply_to" => {
            let mut v = addresses;
            v.push(json!(["a@example.org"]));
            v
        }
        "to" | "cc" | "bcc" => {
            let mut v = list(&addresses);
            v.extend([
                json!([]),
                json!("a@example.org"),
                json!(["a@example.org", "A@example.org"]),
                json!([null]),
            ]);
            v
        }
        "subject" => vec![
            json!("x"),
            json!(""),
            json!("a\tb"),
            json!("a\u{85}b"),
            json!("a\u{7f}b"),
            json!("a\u{1f}b"),
            json!("a\rb"),
            json!("x".repeat(998)),
            json!("x".repeat(999)),
            json!("\u{e9}".repeat(998)),
            json!("\u{e9}".repeat(999)),
            json!(5),
        ],
        "text" | "html" => vec![
            json!(""),
            json!("x"),
            json!("a\u{0}b"),
            json!("a\r\nb\u{7}"),
            json!(5),
            json!(["x"]),
        ],
        "headers" => vec![
            Value::Object((0..20).map(|i| (format!("X-H{i}"), json!("v"))).collect()),
            Value::Object((0..21).map(|i| (format!("X-H{i}"), json!("v"))).collect()),
            header("X-A", json!("v")),
            header("X-Gateway-Message-Id", json!("victim-1")),
            header("x-gateway-message-id", json!("victim-1")),
            header("X-A", json!("")),
            header("X-A", json!("a\u{e9}")),
            header("X-A", json!("a\u{2029}")),
            header("X-A", json!("x".repeat(998))),
            header("X-A", json!("x".repeat(999))),
            header("Content-Type", json!("x")),
            header("X-Content", json!("x")),
            header("ContentX", json!("x")),
            header("To", json!("x")),
            header("TO", json!("x")),
            header("Toto", json!("x")),
            header("X-To", json!("x")),
            header("Date", json!("x")),
            header("X-Sg-Id", json!("1")),
            header("X-SGX", json!("1")),
            header("x-ses-configuration-set", json!("c")),
            header("X-SESX", json!("c")),
            header(&"N".repeat(126), json!("v")),
            header(&"N".repeat(127), json!("v")),
            header("\u{e9}", json!("x")),
            header("", json!("x")),
            header("X-A", json!(1)),
            header("X-A", json!(null)),
            json!({}),
            json!([]),
        ],
        "attachments" => vec![
            json!([]),
            json!([good_attachment.clone(), good_attachment.clone()]),
            att("content", json!("")),
            att("content", json!("QQ==")),
            att("content", json!("QUI=")),
            att("content", json!("QUJD")),
            att("content", json!("QR==")),
            att("content", json!("QUJ=")),
            att("content", json!("QQ")),
            att("content", json!("QQ=")),
            att("content", json!("Q===")),
            att("content", json!("QUJD\n")),
            att("content", json!("-_-_")),
            att("content", json!(5)),
            att("filename", json!("")),
            att("filename", json!("f".repeat(255))),
            att("filename", json!("f".repeat(256))),
            att("filename", json!("r\u{e9}sum\u{e9}.pdf")),
            att("filename", json!("a\tb")),
            att("filename", json!("a\u{0}")),
            att("content_type", json!(null)),
            att("content_type", json!("")),
            att("content_type", json!("text/plain; charset=utf-8")),
            att("content_type", json!(" text/plain ")),
            att("content_type", json!("text/")),
            att("content_type", json!("/plain")),
            att("content_type", json!("text/pl ain")),
            att("content_type", json!("text/plain;")),
            att("content_type", json!("a/b/c")),
            att("content_id", json!("id@x")),
            att("content_id", json!("")),
            att("content_id", json!("a b")),
            att("content_id", json!("c".repeat(250))),
            att("content_id", json!("c".repeat(251))),
            att("content_id", json!("\u{e9}")),
            att("x", json!(1)),
            json!([5]),
            json!({}),
        ],
        "tags" => vec![
            json!([]),
            json!(["a"]),
            json!([""]),
            json!(["a".repeat(255)]),
            json!(["a".repeat(256)]),
            json!((0..10).map(|i| format!("t{i}")).collect::<Vec<_>>()),
            json!((0..11).map(|i| format!("t{i}")).collect::<Vec<_>>()),
            json!([1]),
            json!("a"),
            json!([null]),
        ],
        "metadata" => vec![
            json!({}),
            json!({"a": 1}),
            json!({"a": 1.5}),
            json!({"a": -3}),
            json!({"a": true}),
            json!({"a": ""}),
            json!({"a": null}),
            json!({"a": []}),
            json!({"": 1}),
            json!({"a\tb": "x"}),
            json!({"a": "x\u{0}"}),
            json!({"k".repeat(128): 1}),
            json!({"k".repeat(129): 1}),
            Value::Object((0..50).map(|i| (format!("k{i}"), json!(i))).collect()),
            Value::Object((0..51).map(|i| (format!("k{i}"), json!(i))).collect()),
            json!([]),
        ],
        "campaign_id" | "user_id" => vec![
            json!("x"),
            json!(""),
            json!("x".repeat(255)),
            json!("x".repeat(256)),
            json!(5),
            json!("a\u{2028}"),
        ],
        "tracking" => vec![
            json!({}),
            json!({"opens": true, "clicks": false}),
            json!({"opens": null}),
            json!({"opens": 1}),
            json!({"x": true}),
            json!(true),
        ],
        "expires_at" => vec![
            json!("2026-12-04T08:00:00Z"),
            json!("2026-12-04T09:00:00.5+01:00"),
            json!("2026-12-04t08:00:00z"),
            json!("2026-12-04T08:00:00"),
            json!("tomorrow"),
            json!(1_796_371_200),
        ],
        "gateway" => vec![
            json!("mailgun-primary"),
            json!("a".repeat(64)),
            json!("a".repeat(65)),
            json!(""),
            json!("a b"),
            json!("a:b"),
            json!(5),
        ],
        "stream" => vec![
            json!("transactional"),
            json!("bulk"),
            json!("Bulk"),
            json!("marketing"),
            json!(""),
            json!(["bulk"]),
            json!(1),
        ],
        _ => vec![json!("x")],
    };
    values.push(Value::Null);
    values
}

#[test]
fn schema_and_parser_agree_on_every_single_field_variation() {
    let v = validator();
    let fields = [
        "id",
        "from",
        "to",
        "cc",
        "bcc",
        "reply_to",
        "subject",
        "text",
        "html",
        "headers",
        "attachments",
        "tags",
        "metadata",
        "campaign_id",
        "user_id",
        "tracking",
        "gateway",
        "expires_at",
        "stream",
        "Text",
        "unknown",
    ];
    let mut disagreements = Vec::new();
    let mut checked = 0;
    for field in fields {
        let mut variants: Vec<Value> = candidates(field)
            .into_iter()
            .map(|c| with(field, c))
            .collect();
        variants.push(without(field));
        for body in variants {
            checked += 1;
            let schema_ok = v.is_valid(&body);
            let parsed = parse_message(body.to_string().as_bytes(), Some("sqs-fallback-id"));
            if schema_ok != parsed.is_ok() {
                let parser = parsed
                    .err()
                    .map_or("accepted".to_owned(), |e| e.to_string());
                disagreements.push(format!(
                    "{field}: {body} → schema ok: {schema_ok}, parser: {parser}"
                ));
            }
        }
    }
    assert!(checked > 300, "only {checked} variations checked");
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
