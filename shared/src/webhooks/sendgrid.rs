//! SendGrid's Event Webhook (providers.md §2.5) → [`DeliveryEvent`]s: the body is an array of
//! events, each normalised on its own.
//!
//! - Our message id travels as the `message_id` custom argument, which SendGrid flattens into
//!   a top-level key of each event. Without it the event is still normalised (`message_id:
//!   None`); the caller logs and acknowledges it.
//! - The event id is `sg_event_id` (SendGrid's de-duplication key; duplicates happen).
//! - `bounce` is split by `type`: `bounce` → hard bounce, `blocked` → soft bounce. `dropped` is a
//!   reject, `deferred` a deferral, `spamreport` a complaint, `unsubscribe` and
//!   `group_unsubscribe` unsubscribes. `processed`, `group_resubscribe` and unknown types are
//!   ignored.
//! - Acceptance evidence ([`read`]): `processed` (still ignored) and the delivery outcomes
//!   `delivered`, `deferred`, `bounce`, `dropped` and `spamreport`, with our `message_id`
//!   custom argument, the event's `timestamp` and the `X-Message-Id` part of `sg_message_id`
//!   (what comes before its `.filter…` or `.recvd-…` suffix; providers.md §2.3), the id the send
//!   API returns.

use std::collections::HashMap;

use serde_json::Value;

use super::{Acceptance, Normalized, PayloadError, Reading, acceptance, proves_acceptance};
use crate::events::{DeliveryEvent, DeliveryKind};

/// Provider name used in events and in `delivery_events.provider`.
pub const PROVIDER: &str = "sendgrid";

/// Normalises one Event Webhook body (already verified): one result per event, in order.
pub fn normalize(body: &[u8]) -> Result<Vec<Normalized>, PayloadError> {
    read(body).map(|reading| reading.events)
}

/// Reads one Event Webhook body (already verified): its events, as [`normalize`] gives them,
/// and the acceptance evidence of the events that are evidence and carry our message id, the
/// earliest per message.
pub fn read(body: &[u8]) -> Result<Reading, PayloadError> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let events = doc.as_array().ok_or(PayloadError::Field {
        field: "(array of events)",
    })?;
    let mut reading = Reading {
        events: Vec::with_capacity(events.len()),
        evidence: Vec::new(),
    };
    // Where each message's evidence is in `reading.evidence`: a batch may hold thousands.
    let mut index: HashMap<String, usize> = HashMap::new();
    for e in events {
        let (normalized, evidence) = one(e)?;
        reading.events.push(normalized);
        let Some(evidence) = evidence else { continue };
        match index.get(&evidence.message_id) {
            // The earlier of two for one message (the first evidence wins in the store too).
            Some(&i) => {
                if evidence.at < reading.evidence[i].at {
                    reading.evidence[i] = evidence;
                }
            }
            None => {
                index.insert(evidence.message_id.clone(), reading.evidence.len());
                reading.evidence.push(evidence);
            }
        }
    }
    Ok(reading)
}

fn one(e: &Value) -> Result<(Normalized, Option<Acceptance>), PayloadError> {
    let str_at = |field| e.get(field).and_then(Value::as_str);
    let event = str_at("event").ok_or(PayloadError::Field { field: "event" })?;
    let message_id = str_at("message_id").filter(|m| !m.is_empty());
    let stream = str_at("stream").and_then(crate::message::Stream::parse);
    let provider_message_id = || str_at("sg_message_id").and_then(x_message_id);
    let seconds = e
        .get("timestamp")
        .and_then(Value::as_i64)
        .filter(|t| *t >= 0);
    let kind = match event {
        "delivered" => DeliveryKind::Delivered,
        "deferred" => DeliveryKind::Deferred,
        "bounce" => match str_at("type") {
            Some("blocked") => DeliveryKind::SoftBounce,
            _ => DeliveryKind::HardBounce,
        },
        "dropped" => DeliveryKind::Rejected,
        "open" => DeliveryKind::Opened,
        "click" => DeliveryKind::Clicked,
        "spamreport" => DeliveryKind::Complained,
        "unsubscribe" | "group_unsubscribe" => DeliveryKind::Unsubscribed,
        other => {
            // `processed` has no delivery meaning but is the evidence that SendGrid took it.
            let evidence = if other == "processed" {
                seconds.and_then(|s| {
                    acceptance(
                        message_id,
                        provider_message_id(),
                        other,
                        s.saturating_mul(1000),
                    )
                })
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
    let id = str_at("sg_event_id")
        .filter(|id| !id.is_empty())
        .ok_or(PayloadError::Field {
            field: "sg_event_id",
        })?;
    let recipient = str_at("email")
        .filter(|r| !r.is_empty())
        .ok_or(PayloadError::Field { field: "email" })?;
    let at = seconds
        .ok_or(PayloadError::Field { field: "timestamp" })?
        .saturating_mul(1000);
    let diagnostic = ["reason", "response"]
        .into_iter()
        .filter_map(str_at)
        .find(|s| !s.trim().is_empty())
        .map(|s| match str_at("status") {
            Some(status) if !s.contains(status) => format!("{status} {s}"),
            _ => s.to_owned(),
        });
    let evidence = if proves_acceptance(kind) {
        acceptance(message_id, provider_message_id(), event, at)
    } else {
        None
    };
    let normalized = Normalized::Event(DeliveryEvent {
        provider: PROVIDER.to_owned(),
        provider_event_id: id.to_owned(),
        message_id: message_id.map(str::to_owned),
        recipient: recipient.to_owned(),
        kind,
        at,
        diagnostic,
        url: str_at("url").map(str::to_owned),
        stream,
    });
    Ok((normalized, evidence))
}

/// The `X-Message-Id` the send API returned, from an event's `sg_message_id`: the part before
/// the per-recipient suffix (`.filter…`, or `.recvd-…` in newer events), else the whole id.
fn x_message_id(sg_message_id: &str) -> Option<String> {
    let end = [".filter", ".recvd-"]
        .into_iter()
        .filter_map(|suffix| sg_message_id.find(suffix))
        .min()
        .unwrap_or(sg_message_id.len());
    let id = sg_message_id[..end].trim();
    (!id.is_empty()).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn kinds(events: Value) -> Vec<Result<DeliveryKind, String>> {
        normalize(events.to_string().as_bytes())
            .unwrap()
            .into_iter()
            .map(|n| match n {
                Normalized::Event(e) => Ok(e.kind),
                Normalized::Ignored { event } => Err(event),
            })
            .collect()
    }

    fn event(name: &str, extra: Value) -> Value {
        let mut e = json!({"email": "p@x.example", "timestamp": 1_700_000_000,
            "event": name, "sg_event_id": format!("id-{name}"), "message_id": "m-1"});
        if let (Some(o), Value::Object(x)) = (e.as_object_mut(), extra) {
            o.extend(x);
        }
        e
    }

    #[test]
    fn the_stream_custom_argument_comes_back_on_the_event() {
        use crate::message::Stream;
        let stream_of = |extra: Value| {
            let body = json!([event("spamreport", extra)]).to_string();
            match normalize(body.as_bytes()).unwrap().remove(0) {
                Normalized::Event(e) => e.stream,
                other => panic!("expected an event, got {other:?}"),
            }
        };
        assert_eq!(stream_of(json!({"stream": "bulk"})), Some(Stream::Bulk));
        assert_eq!(stream_of(json!({})), None, "sent before streams existed");
        assert_eq!(stream_of(json!({"stream": "newsletter"})), None);
    }

    #[test]
    fn maps_every_sendgrid_event_to_its_delivery_kind() {
        let table = json!([
            event("delivered", json!({})),
            event("deferred", json!({})),
            event("bounce", json!({"type": "bounce"})),
            event("bounce", json!({"type": "blocked"})),
            event("dropped", json!({"reason": "Bounced Address"})),
            event("open", json!({})),
            event("click", json!({"url": "https://x.example/"})),
            event("spamreport", json!({})),
            event("unsubscribe", json!({})),
            event("group_unsubscribe", json!({})),
            event("processed", json!({})),
            event("group_resubscribe", json!({})),
            event("brand_new_event", json!({})),
        ]);
        use DeliveryKind::*;
        assert_eq!(
            kinds(table),
            [
                Ok(Delivered),
                Ok(Deferred),
                Ok(HardBounce),
                Ok(SoftBounce),
                Ok(Rejected),
                Ok(Opened),
                Ok(Clicked),
                Ok(Complained),
                Ok(Unsubscribed),
                Ok(Unsubscribed),
                Err("processed".into()),
                Err("group_resubscribe".into()),
                Err("brand_new_event".into()),
            ]
        );
    }

    #[test]
    fn keeps_ids_time_our_message_id_diagnostic_and_url() {
        let body = json!([
            event(
                "bounce",
                json!({"type": "bounce", "status": "5.0.0",
            "reason": "500 unknown recipient"})
            ),
            event("click", json!({"url": "https://x.example/l"}))
        ]);
        let out = normalize(body.to_string().as_bytes()).unwrap();
        let Normalized::Event(bounce) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(bounce.provider, "sendgrid");
        assert_eq!(bounce.provider_event_id, "id-bounce");
        assert_eq!(bounce.message_id.as_deref(), Some("m-1"));
        assert_eq!(bounce.at, 1_700_000_000_000);
        assert_eq!(
            bounce.diagnostic.as_deref(),
            Some("5.0.0 500 unknown recipient")
        );
        let Normalized::Event(click) = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!(click.url.as_deref(), Some("https://x.example/l"));
    }

    /// `processed` and the delivery outcomes prove SendGrid had the message, one evidence per
    /// message (the earliest); engagement events do not, nor events without our id.
    #[test]
    fn processed_and_delivery_outcomes_are_evidence_once_per_message() {
        let sg =
            |suffix: &str| json!({"sg_message_id": format!("Ua9z9lSTSaqYBWJe_Xfc-Q.{suffix}")});
        let with = |name: &str, message_id: &str, timestamp: i64| {
            let mut e = event(name, sg("filter0001.16648.5515E0B88.0"));
            e["message_id"] = json!(message_id);
            e["timestamp"] = json!(timestamp);
            e
        };
        let cases = [
            ("processed", true),
            ("delivered", true),
            ("deferred", true),
            ("bounce", true),
            ("dropped", true),
            ("spamreport", true),
            ("open", false),
            ("click", false),
            ("unsubscribe", false),
            ("group_unsubscribe", false),
            ("group_resubscribe", false),
            ("brand_new_event", false),
        ];
        for (name, evidence) in cases {
            let body = json!([with(name, "m-1", 1_700_000_000)]).to_string();
            let reading = read(body.as_bytes()).unwrap();
            assert_eq!(reading.events, normalize(body.as_bytes()).unwrap());
            let want: Vec<Acceptance> = if evidence {
                vec![Acceptance {
                    message_id: "m-1".to_owned(),
                    provider_message_id: Some("Ua9z9lSTSaqYBWJe_Xfc-Q".to_owned()),
                    event: name.to_owned(),
                    at: 1_700_000_000_000,
                }]
            } else {
                Vec::new()
            };
            assert_eq!(reading.evidence, want, "{name}");
        }
        let mut anonymous = with("processed", "m-3", 1_700_000_000);
        anonymous.as_object_mut().unwrap().remove("message_id");
        let batch = json!([
            with("delivered", "m-1", 1_700_000_009),
            with("processed", "m-2", 1_700_000_005),
            with("processed", "m-1", 1_700_000_001),
            with("open", "m-2", 1_700_000_000),
            with("processed", "not ours", 1_700_000_000),
            anonymous,
        ]);
        let reading = read(batch.to_string().as_bytes()).unwrap();
        assert_eq!(reading.events.len(), 6, "every event normalised");
        let got: Vec<(&str, &str, i64)> = reading
            .evidence
            .iter()
            .map(|a| (a.message_id.as_str(), a.event.as_str(), a.at))
            .collect();
        assert_eq!(
            got,
            [
                ("m-1", "processed", 1_700_000_001_000),
                ("m-2", "processed", 1_700_000_005_000)
            ]
        );
    }

    #[test]
    fn the_x_message_id_is_sg_message_id_without_its_suffix() {
        let cases = [
            (
                "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000",
                Some("14c5d75ce93.dfd.64b469"),
            ),
            ("abc123.filter0001.1.0", Some("abc123")),
            (
                "G9uCKYc3RAqUjxGT9gvgGw.recvd-5f6c9d6c4f-4qcsw-1-5F2B0EB5-1E.0",
                Some("G9uCKYc3RAqUjxGT9gvgGw"),
            ),
            ("Ua9z9lSTSaqYBWJe_Xfc-Q", Some("Ua9z9lSTSaqYBWJe_Xfc-Q")),
            (".filter0001", None),
            ("", None),
        ];
        for (sg_message_id, want) in cases {
            assert_eq!(
                x_message_id(sg_message_id).as_deref(),
                want,
                "{sg_message_id}"
            );
        }
    }

    #[test]
    fn malformed_payloads_name_the_field() {
        assert!(matches!(
            normalize(b"not json"),
            Err(PayloadError::NotJson(_))
        ));
        assert_eq!(
            normalize(b"{}"),
            Err(PayloadError::Field {
                field: "(array of events)"
            })
        );
        let mut no_id = event("delivered", json!({}));
        no_id["sg_event_id"] = Value::Null;
        assert_eq!(
            normalize(json!([no_id]).to_string().as_bytes()),
            Err(PayloadError::Field {
                field: "sg_event_id"
            })
        );
        let mut no_id = event("delivered", json!({}));
        no_id.as_object_mut().unwrap().remove("message_id");
        let Normalized::Event(e) = &normalize(json!([no_id]).to_string().as_bytes()).unwrap()[0]
        else {
            panic!()
        };
        assert_eq!(e.message_id, None, "normalised without our id");
    }
}
