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

use serde_json::Value;

use super::{Normalized, PayloadError};
use crate::events::{DeliveryEvent, DeliveryKind};

/// Provider name used in events and in `delivery_events.provider`.
pub const PROVIDER: &str = "sendgrid";

/// Normalises one Event Webhook body (already verified): one result per event, in order.
pub fn normalize(body: &[u8]) -> Result<Vec<Normalized>, PayloadError> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let events = doc.as_array().ok_or(PayloadError::Field {
        field: "(array of events)",
    })?;
    events.iter().map(one).collect()
}

fn one(e: &Value) -> Result<Normalized, PayloadError> {
    let str_at = |field| e.get(field).and_then(Value::as_str);
    let event = str_at("event").ok_or(PayloadError::Field { field: "event" })?;
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
            return Ok(Normalized::Ignored {
                event: other.to_owned(),
            });
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
    let seconds = e
        .get("timestamp")
        .and_then(Value::as_i64)
        .filter(|t| *t >= 0)
        .ok_or(PayloadError::Field { field: "timestamp" })?;
    let diagnostic = ["reason", "response"]
        .into_iter()
        .filter_map(str_at)
        .find(|s| !s.trim().is_empty())
        .map(|s| match str_at("status") {
            Some(status) if !s.contains(status) => format!("{status} {s}"),
            _ => s.to_owned(),
        });
    Ok(Normalized::Event(DeliveryEvent {
        provider: PROVIDER.to_owned(),
        provider_event_id: id.to_owned(),
        message_id: str_at("message_id")
            .filter(|m| !m.is_empty())
            .map(str::to_owned),
        recipient: recipient.to_owned(),
        kind,
        at: seconds.saturating_mul(1000),
        diagnostic,
        url: str_at("url").map(str::to_owned),
    }))
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
