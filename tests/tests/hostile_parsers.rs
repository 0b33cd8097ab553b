//! Hostile input to every parser that reads bytes from outside the gateway: the outbound
//! message (an SQS body), the config documents, the provider webhook bodies and their
//! signature envelopes, SNS signing certificates, and the customer-webhook side.
//!
//! Each parser gets arbitrary bytes, byte-level mutations of a valid document and
//! structure-aware mutations (a node of the parsed seed replaced, removed, wrapped, turned into
//! a string or blown up). The properties: it never panics; it answers `Ok` or a typed error
//! whose text names something; what it returns is bounded by what it read. Deep nesting, huge
//! numbers and long strings are fixed cases: errors, never a stack overflow.
//!
//! Cases per property: proptest's default (256), overridable with `PROPTEST_CASES`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use base64::Engine as _;
use gateway_core::config::load_config;
use gateway_core::customer_webhooks;
use gateway_core::events::DeliveryEvent;
use gateway_core::mandrill;
use gateway_core::message::{MAX_REPORTED_PROBLEMS, parse_message};
use gateway_core::webhooks::verify::{self, MAX_AGE, MailgunSignature};
use gateway_core::webhooks::{Normalized, PayloadError, mailgun, sendgrid, ses, sns};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Seeds: valid documents from the repository.

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn vectors() -> Value {
    serde_json::from_str(&repo_file("tests/fixtures/vectors/test_vectors.json")).unwrap()
}

fn message_seeds() -> Vec<String> {
    let mut seeds = vec![
        repo_file("events/message.json"),
        repo_file("examples/message.json"),
    ];
    let batch: Value = serde_json::from_str(&repo_file("events/sqs-batch.json")).unwrap();
    for r in batch["Records"].as_array().unwrap() {
        seeds.push(r["body"].as_str().unwrap().to_owned());
    }
    seeds
}

fn config_seeds() -> Vec<String> {
    vec![
        repo_file("examples/gateway-config.json"),
        repo_file("examples/local.json"),
    ]
}

fn legacy_seed() -> String {
    repo_file("examples/workspaces.json")
}

fn mailgun_seeds() -> Vec<String> {
    let event: Value = serde_json::from_str(&repo_file("events/webhook-mailgun.json")).unwrap();
    let body = base64::engine::general_purpose::STANDARD
        .decode(event["body"].as_str().unwrap())
        .unwrap();
    let v = &vectors()["mailgun_derived"];
    let failed = json!({
        "signature": {"timestamp": v["timestamp"], "token": v["token"], "signature": v["signature"]},
        "event-data": {
            "event": "failed", "severity": "permanent", "reason": "bounce",
            "id": "CCXMjJ7nQi2N3BPigGOdgQ", "timestamp": 1_521_243_339.873_676,
            "recipient": "alice@example.com",
            "delivery-status": {"code": 550, "message": "5.1.1 user unknown", "description": ""},
            "user-variables": {"message_id": "m-1"}, "url": "https://x.example/a"
        }
    });
    vec![String::from_utf8(body).unwrap(), failed.to_string()]
}

fn sendgrid_seeds() -> Vec<String> {
    let v = vectors();
    let many = json!([
        {"email": "a@x.example", "timestamp": 1_700_000_000, "event": "bounce", "type": "blocked",
         "reason": "500 unknown recipient", "status": "5.0.0", "sg_event_id": "e1", "message_id": "m-1"},
        {"email": "a@x.example", "timestamp": 1_700_000_000, "event": "click",
         "url": "https://x.example/", "sg_event_id": "e2", "category": ["a", "b"]},
        {"email": "a@x.example", "timestamp": 1_700_000_000, "event": "processed", "sg_event_id": "e3"}
    ]);
    vec![
        v["sendgrid_derived"]["payload"]
            .as_str()
            .unwrap()
            .to_owned(),
        // The published vector signs one object; the webhook posts an array of them.
        format!("[{}]", v["sendgrid_published"]["payload"].as_str().unwrap()),
        many.to_string(),
    ]
}

fn sns_seeds() -> Vec<String> {
    vectors()["sns_published"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let mut m = m.clone();
            let o = m.as_object_mut().unwrap();
            o.remove("string_to_sign");
            o.remove("expect");
            m.to_string()
        })
        .collect()
}

fn ses_seeds() -> Vec<String> {
    let mail = json!({"timestamp": "2017-08-05T00:40:02.012Z", "messageId": "ses-1",
        "source": "Sender <s@x.example>", "destination": ["a@x.example", "b@x.example"],
        "headers": [{"name": "X-Gateway-Message-Id", "value": "m-1"}],
        "tags": {"ses:configuration-set": ["cs"], "message_id": ["m-1"]}});
    [
        json!({"eventType": "Bounce", "mail": mail, "bounce": {"bounceType": "Permanent",
            "bounceSubType": "General", "timestamp": "2017-08-05T00:41:02.669Z",
            "bouncedRecipients": [{"emailAddress": "a@x.example", "diagnosticCode": "smtp; 550"}]}}),
        json!({"eventType": "Complaint", "mail": mail, "complaint": {"timestamp": "2017-08-05T00:41:02Z",
            "complainedRecipients": [{"emailAddress": "a@x.example"}], "complaintFeedbackType": "abuse"}}),
        json!({"eventType": "Delivery", "mail": mail, "delivery": {"timestamp": "2017-08-05T00:41:02Z",
            "recipients": ["a@x.example"], "smtpResponse": "250 OK"}}),
        json!({"eventType": "Click", "mail": mail, "click": {"timestamp": "2017-08-05T00:41:02Z",
            "link": "https://x.example/", "ipAddress": "192.0.2.1", "userAgent": "x"}}),
        json!({"eventType": "DeliveryDelay", "mail": mail, "deliveryDelay": {"timestamp": "2017-08-05T00:41:02Z",
            "delayType": "MailboxFull", "delayedRecipients": [{"emailAddress": "b@x.example"}]}}),
        json!({"eventType": "Subscription", "mail": mail, "subscription": {"timestamp": "2017-08-05T00:41:02Z",
            "newTopicPreferences": {"unsubscribeAll": true}}}),
        json!({"notificationType": "Rendering Failure", "mail": mail,
            "failure": {"errorMessage": "x", "templateName": "t"}}),
    ]
    .iter()
    .map(Value::to_string)
    .collect()
}

// ---------------------------------------------------------------------------------------------
// Mutations.

/// One change to the bytes of a document.
#[derive(Debug, Clone)]
enum ByteEdit {
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Repeat(Index, Index),
    Truncate(Index),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    let interesting = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"{}[]\":,\\\r\n\0-+.eE0123456789".to_vec()),
    ];
    prop_oneof![
        (any::<Index>(), interesting).prop_map(|(i, b)| ByteEdit::Set(i, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        (any::<Index>(), 1usize..32).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| ByteEdit::Repeat(a, b)),
        any::<Index>().prop_map(ByteEdit::Truncate),
    ]
}

fn apply_bytes(mut doc: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for edit in edits {
        let len = doc.len();
        let at = |i: &Index| if len == 0 { 0 } else { i.index(len + 1) };
        match edit {
            ByteEdit::Set(i, b) if len > 0 => doc[i.index(len)] = *b,
            ByteEdit::Set(..) => {}
            ByteEdit::Insert(i, bytes) => {
                let p = at(i);
                doc.splice(p..p, bytes.iter().copied());
            }
            ByteEdit::Delete(i, n) => {
                let p = at(i);
                let end = (p + n).min(len);
                doc.drain(p..end);
            }
            ByteEdit::Repeat(a, b) => {
                let (x, y) = (at(a), at(b));
                let (from, to) = (x.min(y), x.max(y));
                let copy: Vec<u8> = doc[from..to].to_vec();
                doc.splice(to..to, copy);
            }
            ByteEdit::Truncate(i) => doc.truncate(at(i)),
        }
    }
    doc
}

/// One change to a node of a parsed document, chosen by walking `path` from the root.
#[derive(Debug, Clone)]
enum Edit {
    Replace(Value),
    Remove,
    Wrap,
    Stringify,
    Repeat(usize),
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(json!(1e308)),
        Just(json!(-1e308)),
        "\\PC{0,16}".prop_map(Value::String),
        "[a-z@.<> \"\r\n\0\u{2028}-]{0,16}".prop_map(Value::String),
        prop::sample::select(vec![
            "",
            "delivered",
            "failed",
            "permanent",
            "bounce",
            "Bounce",
            "Click",
            "Notification",
            "SubscriptionConfirmation",
            "1",
            "2",
            "3",
            "mailgun",
            "smtp",
            "capture",
            "*",
            "env:X",
            "30s",
            "-1",
            "2017-08-05T00:41:02.669Z",
            "9999-99-99T99:99:99Z",
        ])
        .prop_map(|s| json!(s)),
        (1usize..5_000).prop_map(|n| Value::String("x".repeat(n))),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z_-]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => json_value().prop_map(Edit::Replace),
        1 => Just(Edit::Remove),
        1 => Just(Edit::Wrap),
        1 => Just(Edit::Stringify),
        1 => (2usize..100).prop_map(Edit::Repeat),
    ]
}

fn apply_edit(v: &mut Value, path: &[Index], edit: &Edit) {
    if let Some((first, rest)) = path.split_first() {
        match v {
            Value::Object(m) if !m.is_empty() => {
                let key = m.keys().nth(first.index(m.len())).cloned().unwrap();
                if rest.is_empty() && matches!(edit, Edit::Remove) {
                    m.remove(&key);
                } else {
                    apply_edit(m.get_mut(&key).unwrap(), rest, edit);
                }
                return;
            }
            Value::Array(a) if !a.is_empty() => {
                let i = first.index(a.len());
                if rest.is_empty() && matches!(edit, Edit::Remove) {
                    a.remove(i);
                } else {
                    apply_edit(&mut a[i], rest, edit);
                }
                return;
            }
            _ => {}
        }
    }
    *v = match edit {
        Edit::Replace(new) => new.clone(),
        Edit::Remove => Value::Null,
        Edit::Wrap => Value::Array(vec![v.take()]),
        Edit::Stringify => Value::String(v.to_string()),
        Edit::Repeat(n) => Value::Array(vec![v.clone(); *n]),
    };
}

/// A seed mutated structurally (a few node edits), then possibly byte by byte.
fn mutated(seeds: Vec<String>) -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec((prop::collection::vec(any::<Index>(), 0..6), edit()), 0..4);
    let bytes = prop::collection::vec(byte_edit(), 0..3);
    (prop::sample::select(seeds), edits, bytes).prop_map(|(seed, edits, bytes)| {
        let mut doc: Value = serde_json::from_str(&seed).unwrap();
        for (path, e) in &edits {
            apply_edit(&mut doc, path, e);
        }
        apply_bytes(doc.to_string().into_bytes(), &bytes)
    })
}

/// A seed mutated byte by byte only (keeps most of its text, breaks it locally).
fn byte_mutated(seeds: Vec<String>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec(byte_edit(), 1..6),
    )
        .prop_map(|(seed, edits)| apply_bytes(seed.into_bytes(), &edits))
}

/// Arbitrary bytes, a byte-mutated seed or a structurally mutated one.
fn hostile(seeds: Vec<String>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        2 => byte_mutated(seeds.clone()),
        4 => mutated(seeds),
    ]
}

// ---------------------------------------------------------------------------------------------
// Checks.

fn event_bytes(e: &DeliveryEvent) -> usize {
    e.provider.len()
        + e.provider_event_id.len()
        + e.recipient.len()
        + [&e.message_id, &e.diagnostic, &e.url]
            .into_iter()
            .flatten()
            .map(String::len)
            .sum::<usize>()
}

fn normalized_bytes(n: &Normalized) -> usize {
    match n {
        Normalized::Event(e) => event_bytes(e),
        Normalized::Ignored { event } => event.len(),
    }
}

/// A payload error names its field or says what was wrong.
fn check_payload_error(e: &PayloadError) -> Result<(), TestCaseError> {
    match e {
        PayloadError::Field { field } => prop_assert!(!field.is_empty()),
        PayloadError::NotJson(why) => prop_assert!(!why.is_empty()),
    }
    prop_assert!(!e.to_string().is_empty());
    Ok(())
}

fn check_message(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_message(body, Some("sqs-1")) {
        Ok(m) => {
            prop_assert!(m.recipient_count() >= 1);
            prop_assert!(m.recipient_count() <= body.len());
            prop_assert!(m.headers().len() <= body.len());
            prop_assert!(m.attachments().len() <= body.len());
        }
        Err(e) => {
            prop_assert!(!e.errors().is_empty());
            prop_assert!(e.errors().len() <= MAX_REPORTED_PROBLEMS);
            for f in e.errors() {
                prop_assert!(!f.field.is_empty(), "{f}");
                prop_assert!(!f.problem.to_string().is_empty(), "{f}");
            }
            let text = e.to_string();
            prop_assert!(!text.contains(['\r', '\n', '\0']), "{text}");
            // Paths are cut at 64 characters per key and nest three deep at most.
            prop_assert!(
                text.len() <= (MAX_REPORTED_PROBLEMS + 1) * 2048,
                "{}",
                text.len()
            );
            prop_assert!(e.recipients().len() <= body.len());
        }
    }
    Ok(())
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn check_config(
    doc: &str,
    legacy: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), TestCaseError> {
    let input = doc.len() + legacy.map_or(0, str::len);
    match load_config(Some(doc), legacy, env) {
        Ok(loaded) => {
            prop_assert!(!loaded.config.gateways.is_empty());
            prop_assert!(loaded.config.gateways.len() <= input);
        }
        Err(errors) => {
            prop_assert!(!errors.0.is_empty());
            for issue in &errors.0 {
                prop_assert!(!issue.path.is_empty(), "{issue}");
                prop_assert!(!issue.message.is_empty(), "{issue}");
            }
            prop_assert!(
                errors.0.len() <= 4 * input + 32,
                "{} issues",
                errors.0.len()
            );
        }
    }
    Ok(())
}

fn check_mailgun(body: &[u8]) -> Result<(), TestCaseError> {
    match mailgun::normalize(body) {
        Ok(n) => prop_assert!(normalized_bytes(&n) <= 2 * body.len() + 64),
        Err(e) => check_payload_error(&e)?,
    }
    match verify::mailgun_signature(body) {
        Ok(sig) => {
            prop_assert!(sig.token.len() + sig.timestamp.len() + sig.signature.len() <= body.len());
            // Whatever was read, checking it with a key neither panics nor passes.
            let checked = verify::verify_mailgun(b"key", &sig, 1_700_000_000_000, MAX_AGE);
            prop_assert!(checked.is_err());
        }
        Err(r) => prop_assert!(!r.to_string().is_empty() && !r.code().is_empty()),
    }
    Ok(())
}

fn check_sendgrid(body: &[u8]) -> Result<(), TestCaseError> {
    match sendgrid::normalize(body) {
        Ok(events) => {
            prop_assert!(events.len() <= body.len());
            let total: usize = events.iter().map(normalized_bytes).sum();
            prop_assert!(
                total <= 2 * body.len() + 64,
                "{total} bytes from {}",
                body.len()
            );
        }
        Err(e) => check_payload_error(&e)?,
    }
    Ok(())
}

fn check_ses(message: &str) -> Result<(), TestCaseError> {
    match ses::normalize(message) {
        Ok(events) => {
            prop_assert!(events.len() <= message.len());
            for n in &events {
                // Each event copies at most the message once (plus its own id, ≤ 255 chars).
                prop_assert!(normalized_bytes(n) <= message.len() + 1100);
            }
        }
        Err(e) => check_payload_error(&e)?,
    }
    Ok(())
}

fn cert_key() -> Vec<u8> {
    sns::public_key_from_pem(&repo_file("tests/fixtures/vectors/sns_cert.pem")).unwrap()
}

fn check_sns(body: &[u8], key: &[u8]) -> Result<(), TestCaseError> {
    match sns::parse(body) {
        Ok(m) => {
            let signed = sns::string_to_sign(&m);
            prop_assert!(signed.len() <= body.len() + 128);
            if let Err(r) = sns::verify(&m, key) {
                prop_assert!(!r.to_string().is_empty() && !r.code().is_empty());
            }
            let _ = sns::is_sns_url(&m.signing_cert_url, true);
            if let Some(url) = &m.subscribe_url {
                let _ = sns::is_sns_url(url, false);
            }
            check_ses(&m.message)?;
        }
        Err(r) => prop_assert_eq!(r.status(), 400),
    }
    Ok(())
}

/// The mutations start from documents each parser accepts, so a mutated case is a near miss of
/// a real one, not noise.
#[test]
fn every_seed_is_accepted_by_its_parser() {
    for seed in message_seeds().iter().take(2) {
        assert!(parse_message(seed.as_bytes(), None).is_ok(), "{seed}");
    }
    for seed in config_seeds() {
        assert!(load_config(Some(&seed), None, &no_env).is_ok(), "{seed}");
    }
    assert!(load_config(None, Some(&legacy_seed()), &no_env).is_ok());
    for seed in mailgun_seeds() {
        assert!(
            matches!(
                mailgun::normalize(seed.as_bytes()),
                Ok(Normalized::Event(_))
            ),
            "{seed}"
        );
        assert!(verify::mailgun_signature(seed.as_bytes()).is_ok(), "{seed}");
    }
    for seed in sendgrid_seeds() {
        assert!(
            !sendgrid::normalize(seed.as_bytes()).unwrap().is_empty(),
            "{seed}"
        );
    }
    for seed in ses_seeds() {
        let events = ses::normalize(&seed).unwrap();
        assert!(matches!(events[..], [Normalized::Event(_), ..]), "{seed}");
    }
    let key = cert_key();
    for seed in sns_seeds() {
        assert_eq!(
            sns::verify(&sns::parse(seed.as_bytes()).unwrap(), &key),
            Ok(()),
            "{seed}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Properties.

proptest! {
    #[test]
    fn the_message_parser_survives_hostile_bodies(body in hostile(message_seeds())) {
        check_message(&body)?;
    }

    #[test]
    fn the_config_loader_survives_hostile_documents(doc in hostile(config_seeds())) {
        let doc = String::from_utf8_lossy(&doc);
        check_config(&doc, None, &no_env)?;
    }

    #[test]
    fn the_config_loader_survives_hostile_legacy_documents_and_environment(
        ws in hostile(vec![legacy_seed()]),
        doc in prop::sample::select(config_seeds()),
        var in prop::sample::select(gateway_core::config::ENV_VARS.to_vec()),
        value in prop_oneof!["\\PC{0,12}", "-?[0-9]{1,30}", Just("legacy".to_owned()), Just("hybrid".to_owned())],
    ) {
        let ws = String::from_utf8_lossy(&ws);
        let env = |name: &str| (name == var).then(|| value.clone());
        check_config(&doc, Some(&ws), &env)?;
        let legacy_only = |name: &str| (name == "GATEWAY_MODE").then(|| "legacy".to_owned());
        match load_config(None, Some(&ws), &legacy_only) {
            Ok(l) => prop_assert!(l.config.gateways.len() <= ws.len()),
            Err(e) => prop_assert!(e.0.iter().all(|i| !i.path.is_empty() && !i.message.is_empty())),
        }
    }

    #[test]
    fn the_mailgun_parsers_survive_hostile_bodies(body in hostile(mailgun_seeds())) {
        check_mailgun(&body)?;
    }

    #[test]
    fn the_sendgrid_parser_survives_hostile_bodies(body in hostile(sendgrid_seeds())) {
        check_sendgrid(&body)?;
    }

    #[test]
    fn the_ses_parser_survives_hostile_events(body in hostile(ses_seeds())) {
        check_ses(&String::from_utf8_lossy(&body))?;
    }

    #[test]
    fn the_sns_envelope_parser_survives_hostile_bodies(body in hostile(sns_seeds())) {
        check_sns(&body, &cert_key())?;
    }

    /// SendGrid signs the raw bytes: any change to them is a forgery, whatever it does to the
    /// JSON.
    #[test]
    fn any_change_to_a_signed_sendgrid_body_is_refused(edits in prop::collection::vec(byte_edit(), 1..4)) {
        let v = vectors();
        let key = v["sendgrid_published"]["public_key_b64_der_spki"].as_str().unwrap();
        let d = &v["sendgrid_derived"];
        let (ts, sig) = (d["timestamp"].as_str().unwrap(), d["signature"].as_str().unwrap());
        let original = d["payload"].as_str().unwrap().as_bytes().to_vec();
        let body = apply_bytes(original.clone(), &edits);
        let now = 1_700_000_000_000;
        let got = verify::verify_sendgrid(key, ts, &body, sig, now, MAX_AGE);
        if body == original {
            prop_assert_eq!(got, Ok(()));
        } else {
            prop_assert_eq!(got, Err(verify::Rejection::Forged));
        }
    }

    /// Mailgun signs `timestamp ‖ token`: any other pair is refused, and nothing panics on
    /// arbitrary field contents.
    #[test]
    fn a_changed_mailgun_signature_field_is_refused(
        field in 0usize..3,
        value in prop_oneof!["\\PC{0,80}", "[0-9a-f]{64}", "[0-9]{1,12}"],
    ) {
        let v = &vectors()["mailgun_derived"];
        let key = v["signing_key"].as_str().unwrap().as_bytes();
        let mut sig = MailgunSignature {
            timestamp: v["timestamp"].as_str().unwrap().into(),
            token: v["token"].as_str().unwrap().into(),
            signature: v["signature"].as_str().unwrap().into(),
        };
        let original = sig.clone();
        match field {
            0 => sig.timestamp = value,
            1 => sig.token = value,
            _ => sig.signature = value,
        }
        let got = verify::verify_mailgun(key, &sig, 1_700_000_000_000, MAX_AGE);
        prop_assert_eq!(got.is_ok(), sig == original, "{:?}", got);
    }

    #[test]
    fn signature_and_certificate_helpers_survive_arbitrary_text(
        text in "\\PC{0,200}",
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        now in any::<i64>(),
    ) {
        let v = vectors();
        let key = v["sendgrid_published"]["public_key_b64_der_spki"].as_str().unwrap();
        prop_assert!(verify::verify_sendgrid(key, &text, &bytes, &text, now, MAX_AGE).is_err());
        prop_assert!(verify::verify_sendgrid(&text, "1700000000", &bytes, &text, now, MAX_AGE).is_err());
        let _ = verify::check_fresh(&text, "t", now, MAX_AGE);
        prop_assert!(sns::public_key_from_pem(&text).is_none_or(|k| k.len() <= text.len()));
        let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----",
            base64::engine::general_purpose::STANDARD.encode(&bytes));
        prop_assert!(sns::public_key_from_pem(&pem).is_none_or(|k| k.len() <= bytes.len()));
        let _ = sns::is_sns_url(&text, true);
        prop_assert!(!mandrill::verify(b"k", &text, &text, &text));
        let _ = customer_webhooks::is_job(&text);
        let _ = gateway_core::clock::parse_rfc3339(&text);
    }

    /// The signing certificate is downloaded: a mutated PEM is refused or yields a key no
    /// larger than itself, never a panic in the DER walk.
    #[test]
    fn a_mutated_signing_certificate_never_panics(edits in prop::collection::vec(byte_edit(), 1..4)) {
        let pem = repo_file("tests/fixtures/vectors/sns_cert.pem");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
        let der = apply_bytes(der, &edits);
        let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----",
            base64::engine::general_purpose::STANDARD.encode(&der));
        prop_assert!(sns::public_key_from_pem(&pem).is_none_or(|k| k.len() <= der.len()));
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed hostile shapes: nesting, numbers and strings at the edges.

/// Inputs that a recursive parser without a depth limit would overflow its stack on, or that
/// hold numbers no type can take.
fn pathological() -> Vec<(&'static str, Vec<u8>)> {
    const DEEP: usize = 100_000;
    vec![
        ("100k [", "[".repeat(DEEP).into_bytes()),
        (
            "100k balanced []",
            format!("{}{}", "[".repeat(DEEP), "]".repeat(DEEP)).into_bytes(),
        ),
        ("100k {\"a\":", "{\"a\":".repeat(DEEP).into_bytes()),
        (
            "deep value inside a valid envelope",
            format!(
                "{{\"event-data\": {}1{}}}",
                "[".repeat(DEEP),
                "]".repeat(DEEP)
            )
            .into_bytes(),
        ),
        ("1e999999", b"1e999999".to_vec()),
        ("[1e999999]", b"[1e999999]".to_vec()),
        ("-1e400 in an object", br#"{"timestamp": -1e400}"#.to_vec()),
        (
            "100k digits",
            format!("[{}]", "9".repeat(DEEP)).into_bytes(),
        ),
        (
            "unterminated long string",
            format!("\"{}", "x".repeat(DEEP)).into_bytes(),
        ),
        ("lone surrogate escape", br#"{"a": "\ud800"}"#.to_vec()),
        ("empty", Vec::new()),
        ("whitespace", b" \t\r\n".to_vec()),
        ("BOM", b"\xef\xbb\xbf{}".to_vec()),
        ("not UTF-8", b"{\"a\": \"\xff\xfe\"}".to_vec()),
    ]
}

#[test]
fn deep_nesting_and_huge_numbers_are_errors_not_crashes() {
    let key = cert_key();
    for (name, body) in pathological() {
        let text = String::from_utf8_lossy(&body);
        assert!(
            parse_message(&body, Some("sqs-1")).is_err(),
            "message: {name}"
        );
        assert!(
            load_config(Some(&text), None, &no_env).is_err(),
            "config: {name}"
        );
        assert!(
            load_config(None, Some(&text), &no_env).is_err(),
            "legacy: {name}"
        );
        assert!(mailgun::normalize(&body).is_err(), "mailgun: {name}");
        assert!(
            verify::mailgun_signature(&body).is_err(),
            "mailgun signature: {name}"
        );
        assert!(sendgrid::normalize(&body).is_err(), "sendgrid: {name}");
        assert!(ses::normalize(&text).is_err(), "ses: {name}");
        assert!(sns::parse(&body).is_err(), "sns: {name}");
        assert!(
            !customer_webhooks::is_job(&text),
            "customer webhook job: {name}"
        );
        check_sns(&body, &key).unwrap();
    }
}

/// Nesting just inside and just outside what a body may hold, on the parsers' own seeds.
#[test]
fn nesting_inside_a_valid_document_is_bounded() {
    for depth in [100, 127, 128, 129, 1_000, 50_000] {
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let message = format!(
            r#"{{"id": "m-1", "from": "a@x.example", "to": ["b@x.example"], "subject": "s", "text": "t", "metadata": {{"k": {deep}}}}}"#
        );
        assert!(parse_message(message.as_bytes(), None).is_err(), "{depth}");
        let sendgrid = format!(r#"[{{"event": "delivered", "x": {deep}}}]"#);
        let _ = sendgrid::normalize(sendgrid.as_bytes());
        let ses = format!(r#"{{"eventType": "Send", "mail": {{"messageId": "x", "x": {deep}}}}}"#);
        let _ = ses::normalize(&ses);
        let config = format!(r#"{{"gateways": [], "x": {deep}}}"#);
        assert!(
            load_config(Some(&config), None, &no_env).is_err(),
            "{depth}"
        );
    }
}

/// Long strings are read once and their copies bounded: a 400 KB recipient is an error in the
/// message (not an address) and at most one copy in a webhook event.
#[test]
fn long_strings_are_refused_or_copied_once() {
    let long = "a".repeat(400_000);
    let message = json!({"id": "m-1", "from": "a@x.example", "to": [format!("{long}@x.example")],
        "subject": long, "text": "t"});
    let err = parse_message(message.to_string().as_bytes(), None).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("to[0]: ") && text.contains("subject: longer than 998 characters"),
        "{text}"
    );
    assert!(text.len() < 1024, "the error does not echo the value");

    let body = json!({"event-data": {"event": "delivered", "id": "e", "timestamp": 1.0,
        "recipient": long}});
    let body = body.to_string();
    let n = mailgun::normalize(body.as_bytes()).unwrap();
    assert!(normalized_bytes(&n) <= body.len() + 64);

    let events = json!([{"event": "click", "sg_event_id": "e", "email": "a@x.example",
        "timestamp": 1, "url": long}]);
    let events = events.to_string();
    let n = sendgrid::normalize(events.as_bytes()).unwrap();
    assert!(n.iter().map(normalized_bytes).sum::<usize>() <= events.len() + 64);
}

/// Header injection, through every field that becomes a header: each rejection names the field
/// and the rule (the message unit tests cover the common fields; these are the rest).
#[test]
fn header_injection_is_refused_in_every_header_field_with_its_path() {
    let base = || {
        json!({"id": "m-1", "from": "Clinic <clinic@example.org>", "to": ["p@example.org"],
            "subject": "Your appointment", "text": "See you soon."})
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "from",
            json!("Eve\r\nBcc: x@evil.example <e@example.org>"),
            "from: contains a line break",
        ),
        (
            "from",
            json!({"email": "e@example.org", "name": "Eve\nBcc: x@evil.example"}),
            "from.name: contains a line break",
        ),
        (
            "from",
            json!("e@example.org\r\nBcc: x@evil.example"),
            "from: contains a line break",
        ),
        (
            "reply_to",
            json!({"email": "r@example.org", "name": "R\r\nX: y"}),
            "reply_to.name: contains a line break",
        ),
        (
            "reply_to",
            json!("r@example.org\nBcc: x@evil.example"),
            "reply_to: contains a line break",
        ),
        (
            "cc",
            json!([{"email": "c@example.org", "name": "C\u{2028}X: y"}]),
            "cc[0].name: contains a line break",
        ),
        (
            "bcc",
            json!(["B\u{85}X <b@example.org>"]),
            "bcc[0]: contains a line break",
        ),
        (
            "subject",
            json!("Hi\u{2029}Bcc: x@evil.example"),
            "subject: contains a line break",
        ),
        (
            "subject",
            json!("Hi\rBcc: x@evil.example"),
            "subject: contains a line break",
        ),
        (
            "subject",
            json!("Hi\u{1b}[31m"),
            "subject: contains a control character",
        ),
        (
            "headers",
            json!({"X-A": "v\0"}),
            "headers.X-A: contains a NUL character",
        ),
        (
            "headers",
            json!({"X-A": "v\u{2028}Bcc: x@evil.example"}),
            "headers.X-A: contains a line break",
        ),
        (
            "headers",
            json!({"X-\u{e9}": "v"}),
            "headers[\"X-\\u{e9}\"]: header names must be 1 to 126 printable ASCII characters without ':'",
        ),
        (
            "headers",
            json!({"": "v"}),
            "headers[\"\"]: header names must be 1 to 126 printable ASCII characters without ':'",
        ),
        (
            "headers",
            json!({"Return-Path": "<x@evil.example>"}),
            "headers.Return-Path: custom headers may not set Return-Path",
        ),
        (
            "headers",
            json!({"received": "from evil"}),
            "headers.received: custom headers may not set received",
        ),
        (
            "headers",
            json!({"DKIM-Signature": "v=1"}),
            "headers.DKIM-Signature: custom headers may not set DKIM-Signature",
        ),
        (
            "headers",
            json!({"MIME-Version": "1.0"}),
            "headers.MIME-Version: custom headers may not set MIME-Version",
        ),
        (
            "headers",
            json!({"Sender": "x@evil.example"}),
            "headers.Sender: custom headers may not set Sender",
        ),
        (
            "headers",
            json!({"X-SES-CONFIGURATION-SET": "other"}),
            "headers.X-SES-CONFIGURATION-SET: custom headers may not set X-SES-CONFIGURATION-SET",
        ),
        (
            "headers",
            json!({"X-SG-EID": "x"}),
            "headers.X-SG-EID: custom headers may not set X-SG-EID",
        ),
        (
            "attachments",
            json!([{"filename": "a\r\nContent-Type: text/html", "content": ""}]),
            "attachments[0].filename: contains a line break",
        ),
        (
            "attachments",
            json!([{"filename": "a.png", "content": "", "content_id": "x\r\ny"}]),
            "attachments[0].content_id: contains a line break",
        ),
        (
            "tags",
            json!(["a\u{2028}b"]),
            "tags[0]: contains a line break",
        ),
        (
            "metadata",
            json!({"k": "v\r\nX: y"}),
            "metadata.k: contains a line break",
        ),
        (
            "campaign_id",
            json!("c\0"),
            "campaign_id: contains a NUL character",
        ),
        (
            "user_id",
            json!("u\nX: y"),
            "user_id: contains a line break",
        ),
    ];
    for (field, value, want) in cases {
        let mut body = base();
        body[field] = value;
        let err = parse_message(body.to_string().as_bytes(), None)
            .err()
            .unwrap_or_else(|| panic!("accepted: {body}"));
        let got: Vec<String> = err.errors().iter().map(ToString::to_string).collect();
        assert_eq!(got, [want], "{body}");
        assert!(
            !err.to_string().contains("evil"),
            "the error echoes the value: {err}"
        );
    }
}

/// Sizes over the limits of ARCHITECTURE §2.1 / providers.md §7.3 that the parser owns: the body
/// (the SQS limit) and the recipient count across lists (the largest provider cap).
#[test]
fn oversized_bodies_and_recipient_lists_are_refused_naming_the_limit() {
    let pdf = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 800_000]);
    let big = json!({"id": "m-1", "from": "a@x.example", "to": ["b@x.example"], "subject": "s",
        "text": "t", "attachments": [{"filename": "a.pdf", "content": pdf}]});
    let err = parse_message(big.to_string().as_bytes(), None).unwrap_err();
    assert_eq!(err.to_string(), "body: larger than 1048576 bytes");

    let list =
        |n: usize, d: &str| -> Vec<Value> { (0..n).map(|i| json!(format!("r{i}@{d}"))).collect() };
    let over = json!({"id": "m-1", "from": "a@x.example", "to": list(400, "a.example"),
        "cc": list(400, "b.example"), "bcc": list(201, "c.example"), "subject": "s", "text": "t"});
    let err = parse_message(over.to_string().as_bytes(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "to: more than 1000 recipients across to, cc and bcc"
    );
    assert_eq!(err.id(), Some("m-1"), "recorded under its id");
}
