//! Mailgun's JSON webhook (providers.md §1.5) → [`DeliveryEvent`].
//!
//! - Our message id travels as the `v:message_id` user variable (the original system's name, kept
//!   so in-flight messages of the old system still correlate) and comes back in
//!   `event-data.user-variables.message_id`. An event without it is still normalised, with
//!   `message_id: None`; the caller logs and acknowledges it.
//! - The event id is `event-data.id`: stable across Mailgun's retries of the same event, so the
//!   record's unique key (provider, provider_event_id) makes a retried webhook harmless. The
//!   signature token is not used: a retry may carry a new one.
//! - `failed` is split by `severity` and `reason`: `temporary` → deferred; `permanent` with a
//!   `suppress-*` reason → rejected (Mailgun never tried); `permanent` with reason `old` (retries
//!   exhausted) → soft bounce; any other `permanent` → hard bounce. Unknown severities are
//!   treated as temporary: a deferral never suppresses an address, while a wrong hard bounce would.
//! - Acceptance evidence ([`read`]): `accepted` (still [`Normalized::Ignored`]) and the delivery
//!   outcomes `delivered`, `failed`, `rejected` and `complained`, with our `v:message_id`, the
//!   event's `timestamp` and the `message-id` header wrapped in angle brackets, as Mailgun's
//!   send API returns the id.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::{Acceptance, Normalized, PayloadError, Reading, acceptance, proves_acceptance};
use crate::events::{DeliveryEvent, DeliveryKind};

/// Provider name used in events and in `delivery_events.provider`.
pub const PROVIDER: &str = "mailgun";

/// The body's two parts. Read with serde's derive, which refuses a repeated key: Mailgun signs
/// only `timestamp ‖ token`, not `event-data`, and a body that repeats a part (where
/// `serde_json::Value` would silently keep the last one) is not from Mailgun. The verifier reads
/// `signature` the same way ([`super::verify::mailgun_signature`]).
#[derive(Deserialize)]
struct Envelope {
    #[serde(default, rename = "signature")]
    _signature: Option<IgnoredAny>,
    #[serde(default, rename = "event-data")]
    event_data: Option<Value>,
}

/// Normalises one Mailgun webhook body (already verified). The body must be one JSON object
/// without repeated `signature` or `event-data` keys.
pub fn normalize(body: &[u8]) -> Result<Normalized, PayloadError> {
    one(body).map(|(normalized, _)| normalized)
}

/// Reads one Mailgun webhook body (already verified): its event, as [`normalize`] gives it,
/// and its acceptance evidence, if the event is evidence and carries our message id.
pub fn read(body: &[u8]) -> Result<Reading, PayloadError> {
    let (normalized, acceptance) = one(body)?;
    Ok(Reading {
        events: vec![normalized],
        evidence: acceptance.into_iter().collect(),
    })
}

fn one(body: &[u8]) -> Result<(Normalized, Option<Acceptance>), PayloadError> {
    // The derive would also read the envelope from a JSON array; Mailgun posts an object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(PayloadError::NotJson("expected a JSON object".to_owned()));
    }
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let data = envelope
        .event_data
        .filter(Value::is_object)
        .ok_or(PayloadError::Field {
            field: "event-data",
        })?;
    let data = &data;
    let event = data
        .get("event")
        .and_then(Value::as_str)
        .ok_or(PayloadError::Field {
            field: "event-data.event",
        })?;
    let str_at = |field| data.get(field).and_then(Value::as_str);
    let message_id = data
        .get("user-variables")
        .and_then(|v| v.get("message_id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty());
    let stream = data
        .get("user-variables")
        .and_then(|v| v.get("stream"))
        .and_then(Value::as_str)
        .and_then(crate::message::Stream::parse);
    let seconds = data
        .get("timestamp")
        .and_then(Value::as_f64)
        .filter(|t| t.is_finite() && *t >= 0.0);
    // Float seconds with microseconds; keep millisecond precision.
    let at = seconds.map(|s| (s * 1000.0).floor() as i64);
    let kind = match event {
        "delivered" => DeliveryKind::Delivered,
        "opened" => DeliveryKind::Opened,
        "clicked" => DeliveryKind::Clicked,
        "complained" => DeliveryKind::Complained,
        "unsubscribed" => DeliveryKind::Unsubscribed,
        "rejected" => DeliveryKind::Rejected,
        "failed" => match (str_at("severity"), str_at("reason")) {
            (Some("permanent"), Some(r)) if r.starts_with("suppress-") => DeliveryKind::Rejected,
            (Some("permanent"), Some("old")) => DeliveryKind::SoftBounce,
            (Some("permanent"), _) => DeliveryKind::HardBounce,
            _ => DeliveryKind::Deferred,
        },
        other => {
            // `accepted` has no delivery meaning but is the evidence that Mailgun took it.
            let evidence = if other == "accepted" {
                at.and_then(|at| acceptance(message_id, provider_message_id(data), other, at))
            } else {
                None
            };
            return Ok((
                Normalized::Ignored {
                    event: other.to_owned(),
                },
                evidence,
            ));
        }
    };
    let provider_event_id =
        str_at("id")
            .filter(|id| !id.is_empty())
            .ok_or(PayloadError::Field {
                field: "event-data.id",
            })?;
    let recipient = str_at("recipient")
        .filter(|r| !r.is_empty())
        .ok_or(PayloadError::Field {
            field: "event-data.recipient",
        })?;
    let at = at.ok_or(PayloadError::Field {
        field: "event-data.timestamp",
    })?;
    let evidence = if proves_acceptance(kind) {
        acceptance(message_id, provider_message_id(data), event, at)
    } else {
        None
    };
    let normalized = Normalized::Event(DeliveryEvent {
        provider: PROVIDER.to_owned(),
        provider_event_id: provider_event_id.to_owned(),
        message_id: message_id.map(str::to_owned),
        recipient: recipient.to_owned(),
        kind,
        at,
        diagnostic: diagnostic(data),
        url: str_at("url").map(str::to_owned),
        stream,
    });
    Ok((normalized, evidence))
}

/// `message.headers.message-id`, in angle brackets as the send API returns it (the webhook
/// gives it without them; providers.md §1.3).
fn provider_message_id(data: &Value) -> Option<String> {
    let id = data
        .get("message")?
        .get("headers")?
        .get("message-id")?
        .as_str()?
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    (!id.is_empty()).then(|| format!("<{id}>"))
}

/// `delivery-status.code` and `.message` (or `.description`), e.g. `550 5.1.1 user unknown`.
fn diagnostic(data: &Value) -> Option<String> {
    let status = data.get("delivery-status")?;
    let code = status.get("code").and_then(Value::as_i64);
    let text = ["message", "description"]
        .into_iter()
        .filter_map(|f| status.get(f).and_then(Value::as_str))
        .find(|s| !s.trim().is_empty());
    match (code, text) {
        (Some(c), Some(t)) => Some(format!("{c} {t}")),
        (None, Some(t)) => Some(t.to_owned()),
        (Some(c), None) if c != 0 => Some(c.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(event_data: Value) -> Vec<u8> {
        json!({
            "signature": {"token": "t", "timestamp": "1521243339", "signature": "00"},
            "event-data": event_data,
        })
        .to_string()
        .into_bytes()
    }

    fn event(fields: Value) -> DeliveryEvent {
        let mut data = json!({
            "id": "CCXMjJ7nQi2N3BPigGOdgQ",
            "timestamp": 1521243339.873676,
            "recipient": "alice@example.com",
            "user-variables": {"message_id": "test-message-123"},
        });
        for (k, v) in fields.as_object().unwrap() {
            data[k] = v.clone();
        }
        match normalize(&body(data)).unwrap() {
            Normalized::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn the_stream_variable_comes_back_on_the_event() {
        use crate::message::Stream;
        let with = |vars: Value| event(json!({"event": "complained", "user-variables": vars}));
        let e = with(json!({"message_id": "m-1", "stream": "bulk"}));
        assert_eq!(e.stream, Some(Stream::Bulk));
        assert_eq!(with(json!({"message_id": "m-1"})).stream, None);
        assert_eq!(with(json!({"stream": "BULK"})).stream, None);
    }

    #[test]
    fn maps_every_mailgun_event_to_its_delivery_kind() {
        let cases = [
            (json!({"event": "delivered"}), DeliveryKind::Delivered),
            (json!({"event": "opened"}), DeliveryKind::Opened),
            (
                json!({"event": "clicked", "url": "https://x.example/a"}),
                DeliveryKind::Clicked,
            ),
            (json!({"event": "complained"}), DeliveryKind::Complained),
            (json!({"event": "unsubscribed"}), DeliveryKind::Unsubscribed),
            (json!({"event": "rejected"}), DeliveryKind::Rejected),
            (
                json!({"event": "failed", "severity": "temporary", "reason": "generic"}),
                DeliveryKind::Deferred,
            ),
            (
                json!({"event": "failed", "severity": "permanent", "reason": "bounce"}),
                DeliveryKind::HardBounce,
            ),
            (
                json!({"event": "failed", "severity": "permanent", "reason": "suppress-bounce"}),
                DeliveryKind::Rejected,
            ),
            (
                json!({"event": "failed", "severity": "permanent", "reason": "old"}),
                DeliveryKind::SoftBounce,
            ),
            (
                json!({"event": "failed", "severity": "internal"}),
                DeliveryKind::Deferred,
            ),
            (json!({"event": "failed"}), DeliveryKind::Deferred),
        ];
        for (fields, kind) in cases {
            assert_eq!(event(fields.clone()).kind, kind, "{fields}");
        }
    }

    #[test]
    fn keeps_ids_time_recipient_diagnostic_and_url() {
        let e = event(json!({
            "event": "failed", "severity": "permanent", "reason": "bounce",
            "delivery-status": {"code": 550, "message": "5.1.1 user unknown", "description": ""},
        }));
        assert_eq!(e.provider, "mailgun");
        assert_eq!(e.provider_event_id, "CCXMjJ7nQi2N3BPigGOdgQ");
        assert_eq!(e.message_id.as_deref(), Some("test-message-123"));
        assert_eq!(e.recipient, "alice@example.com");
        assert_eq!(e.at, 1_521_243_339_873);
        assert_eq!(e.diagnostic.as_deref(), Some("550 5.1.1 user unknown"));
        let click = event(json!({"event": "clicked", "url": "https://x.example/a"}));
        assert_eq!(click.url.as_deref(), Some("https://x.example/a"));
    }

    #[test]
    fn an_event_without_our_id_is_still_normalised() {
        let mut data =
            json!({"event": "delivered", "id": "e1", "timestamp": 1.0, "recipient": "a@b.example"});
        data["user-variables"] = json!({});
        match normalize(&body(data)).unwrap() {
            Normalized::Event(e) => assert_eq!(e.message_id, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_delivery_events_are_ignored_not_errors() {
        for name in [
            "accepted",
            "stored",
            "list_member_uploaded",
            "something-new",
        ] {
            let data =
                json!({"event": name, "id": "e1", "timestamp": 1.0, "recipient": "a@b.example"});
            assert_eq!(
                normalize(&body(data)).unwrap(),
                Normalized::Ignored {
                    event: name.to_owned()
                }
            );
        }
    }

    #[test]
    fn a_repeated_part_or_an_array_envelope_is_refused() {
        let delivered =
            r#"{"event": "delivered", "id": "e", "timestamp": 1, "recipient": "a@b.example"}"#;
        let bounce = r#"{"event": "failed", "severity": "permanent", "id": "e2", "timestamp": 1, "recipient": "victim@b.example"}"#;
        let cases = [
            format!(r#"{{"event-data": {delivered}, "event-data": {bounce}}}"#),
            format!(r#"{{"signature": {{}}, "event-data": {delivered}, "signature": {{}}}}"#),
            format!(r#"[{{}}, {delivered}]"#),
        ];
        for body in cases {
            let err = normalize(body.as_bytes()).unwrap_err();
            assert!(matches!(err, PayloadError::NotJson(_)), "{body}: {err}");
        }
        assert!(normalize(format!(r#" {{"event-data": {delivered}}}"#).as_bytes()).is_ok());
    }

    #[test]
    fn malformed_payloads_name_the_field() {
        let cases: [(&[u8], &str); 5] = [
            (b"not json", "payload is not valid JSON"),
            (br#"{"signature": {}}"#, "event-data: missing or malformed"),
            (br#"{"event-data": {"id": "e"}}"#, "event-data.event: missing or malformed"),
            (
                br#"{"event-data": {"event": "delivered", "id": "e", "timestamp": 1}}"#,
                "event-data.recipient: missing or malformed",
            ),
            (
                br#"{"event-data": {"event": "delivered", "id": "e", "recipient": "a@b.c", "timestamp": "x"}}"#,
                "event-data.timestamp: missing or malformed",
            ),
        ];
        for (input, want) in cases {
            let err = normalize(input).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err} vs {want}");
        }
    }

    /// The event data of the payload docs' example (providers.md §1.5) with our id and Mailgun's
    /// message id, `fields` overriding it.
    fn read_event(fields: Value) -> Reading {
        let mut data = json!({
            "id": "CCXMjJ7nQi2N3BPigGOdgQ",
            "timestamp": 1521243339.873676,
            "recipient": "alice@example.com",
            "message": {"headers": {"message-id": "20130503182626.18666.16540@mg.example.com"}},
            "user-variables": {"message_id": "test-message-123"},
        });
        for (k, v) in fields.as_object().unwrap() {
            data[k] = v.clone();
        }
        let body = body(data);
        let reading = read(&body).unwrap();
        assert_eq!(
            reading.events,
            [normalize(&body).unwrap()],
            "read gives normalize's event"
        );
        reading
    }

    /// `accepted` and the delivery outcomes prove Mailgun had the message; opens, clicks,
    /// unsubscribes and events outside delivery do not.
    #[test]
    fn acceptance_and_delivery_outcomes_are_evidence_engagement_is_not() {
        let cases = [
            (json!({"event": "accepted"}), true),
            (json!({"event": "delivered"}), true),
            (
                json!({"event": "failed", "severity": "temporary", "reason": "generic"}),
                true,
            ),
            (
                json!({"event": "failed", "severity": "permanent", "reason": "bounce"}),
                true,
            ),
            (
                json!({"event": "failed", "severity": "permanent", "reason": "suppress-bounce"}),
                true,
            ),
            (json!({"event": "rejected"}), true),
            (json!({"event": "complained"}), true),
            (json!({"event": "opened"}), false),
            (
                json!({"event": "clicked", "url": "https://x.example/a"}),
                false,
            ),
            (json!({"event": "unsubscribed"}), false),
            (json!({"event": "stored"}), false),
            (json!({"event": "list_member_uploaded"}), false),
        ];
        for (fields, evidence) in cases {
            let reading = read_event(fields.clone());
            let name = fields["event"].as_str().unwrap();
            let want: Vec<Acceptance> = if evidence {
                vec![Acceptance {
                    message_id: "test-message-123".to_owned(),
                    provider_message_id: Some(
                        "<20130503182626.18666.16540@mg.example.com>".to_owned(),
                    ),
                    event: name.to_owned(),
                    at: 1_521_243_339_873,
                }]
            } else {
                Vec::new()
            };
            assert_eq!(reading.evidence, want, "{fields}");
        }
        assert_eq!(
            read_event(json!({"event": "accepted"})).events,
            [Normalized::Ignored {
                event: "accepted".to_owned()
            }],
            "still no delivery event"
        );
    }

    /// Only an id that can be ours, on an event with a time, is evidence; the event itself is
    /// normalised (or ignored) as before.
    #[test]
    fn an_acceptance_without_our_id_or_its_time_is_no_evidence() {
        let cases = [
            json!({"event": "accepted", "user-variables": {}}),
            json!({"event": "accepted", "user-variables": {"message_id": ""}}),
            json!({"event": "accepted", "user-variables": {"message_id": "has space"}}),
            json!({"event": "accepted", "user-variables": {"message_id": "m".repeat(129)}}),
            json!({"event": "delivered", "user-variables": {"other": "x"}}),
            json!({"event": "accepted", "timestamp": "soon"}),
            json!({"event": "accepted", "timestamp": -1.0}),
        ];
        for fields in cases {
            assert_eq!(read_event(fields.clone()).evidence, [], "{fields}");
        }
        let no_header = read_event(json!({"event": "accepted", "message": {}}));
        assert_eq!(no_header.evidence[0].provider_message_id, None);
        let bracketed = read_event(
            json!({"event": "accepted", "message": {"headers": {"message-id": "<a@b.example>"}}}),
        );
        assert_eq!(
            bracketed.evidence[0].provider_message_id.as_deref(),
            Some("<a@b.example>")
        );
        let long = format!("{}@mg.example.com", "x".repeat(300));
        let too_long =
            read_event(json!({"event": "accepted", "message": {"headers": {"message-id": long}}}));
        assert_eq!(
            too_long.evidence[0].provider_message_id, None,
            "left out, not cut"
        );
    }
}
