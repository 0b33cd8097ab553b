//! Amazon SES event publishing (providers.md §3.5) → [`DeliveryEvent`]s: the `Message` of an SNS
//! notification, one SES event, normalised into one event per recipient it concerns.
//!
//! - Our message id: the `X-Gateway-Message-Id` header SES publishes in `mail.headers` (exact),
//!   else the `message_id` email tag (lossy: SES tags allow only `[A-Za-z0-9_-]`). A client may
//!   have set a copy of the header too: the copy matching the tag is ours.
//! - SES has no per-recipient event id; the id is `{SES message id}:{event type}:{recipient}:{event
//!   time}`, stable across SNS retries (hashed when longer than the column's 255 characters).
//! - `Bounce`: `Permanent` → hard bounce, except subtypes `Suppressed` and
//!   `OnAccountSuppressionList` (SES never tried) → rejected; `Transient` and `Undetermined` →
//!   soft bounce. `Complaint` → complaint, or rejected for `OnAccountSuppressionList`. `Reject` and
//!   `Rendering Failure` → rejected for every destination. `DeliveryDelay` → deferred.
//!   `Subscription` → unsubscribed when it opts out. `Open` and `Click` name no recipient: they
//!   are attributed to every destination of the message. `Send` is ignored.
//! - Acceptance evidence ([`read`]): `Send` (still ignored; its time is `mail.timestamp`) and
//!   `Delivery`, `Bounce`, `Complaint`, `DeliveryDelay`, `Reject` and `Rendering Failure`, once
//!   per SES event, with `mail.messageId` (SendEmail's `MessageId`). Only an exact id is
//!   evidence: from the header, or from the tag when the tag cannot be lossy (no `_`, which
//!   is what every replaced character becomes). A lossy tag could name another message, whose
//!   re-send the evidence would then stop.
//! - Identity notifications (`notificationType` instead of `eventType`) are read the same way.
//! - An event naming no recipient, or more than SES takes per message
//!   ([`crate::providers::SES_MAX_RECIPIENTS`]), is refused: one event is made
//!   per recipient, each with its own copy of the link and diagnostic, so an unbounded list
//!   would turn one body into a large multiple of itself.

use aws_lc_rs::digest;
use serde_json::Value;

use super::{Normalized, PayloadError, Reading, acceptance, proves_acceptance};
use crate::clock::parse_rfc3339;
use crate::events::{DeliveryEvent, DeliveryKind};
use crate::providers::SES_MAX_RECIPIENTS as MAX_RECIPIENTS;

/// Provider name used in events and in `delivery_events.provider`.
pub const PROVIDER: &str = "amazon_ses";

/// The header carrying our message id.
pub const MESSAGE_ID_HEADER: &str = "X-Gateway-Message-Id";

/// Normalises one SES event (the SNS `Message` text, already authenticated).
pub fn normalize(message: &str) -> Result<Vec<Normalized>, PayloadError> {
    read(message).map(|reading| reading.events)
}

/// Reads one SES event (the SNS `Message` text, already authenticated): its events, as
/// [`normalize`] gives them, and its acceptance evidence (one at most: an SES event concerns one
/// message) when the event is evidence and names our message id exactly.
pub fn read(message: &str) -> Result<Reading, PayloadError> {
    let doc: Value =
        serde_json::from_str(message).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let event_type = doc
        .get("eventType")
        .or_else(|| doc.get("notificationType"))
        .and_then(Value::as_str)
        .ok_or(PayloadError::Field { field: "eventType" })?;
    let mail = doc
        .get("mail")
        .filter(|m| m.is_object())
        .ok_or(PayloadError::Field { field: "mail" })?;
    let ses_id = mail
        .get("messageId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(PayloadError::Field {
            field: "mail.messageId",
        })?;
    let destinations = || -> Vec<String> {
        mail.get("destination")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let object_key = match event_type {
        "Rendering Failure" => "failure",
        "DeliveryDelay" => "deliveryDelay",
        other => match other {
            "Bounce" => "bounce",
            "Complaint" => "complaint",
            "Delivery" => "delivery",
            "Reject" => "reject",
            "Open" => "open",
            "Click" => "click",
            "Subscription" => "subscription",
            _ => "",
        },
    };
    let detail = doc.get(object_key).unwrap_or(&Value::Null);
    let text = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).map(str::to_owned);
    let addresses = |list: &str| -> Vec<Recipient> {
        detail
            .get(list)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| {
                        let address = r.get("emailAddress").and_then(Value::as_str)?;
                        Some((address.to_owned(), text(r, "diagnosticCode")))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let plain = |list: Vec<String>| list.into_iter().map(|a| (a, None)).collect::<Vec<_>>();
    let ignored = || Reading {
        events: vec![Normalized::Ignored {
            event: event_type.to_owned(),
        }],
        evidence: Vec::new(),
    };
    let (kind, recipients, diagnostic): (DeliveryKind, Vec<Recipient>, Option<String>) =
        match event_type {
            "Delivery" => {
                let list = detail
                    .get("recipients")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_else(destinations);
                (
                    DeliveryKind::Delivered,
                    plain(list),
                    text(detail, "smtpResponse"),
                )
            }
            "Bounce" => {
                let kind = match (
                    detail.get("bounceType").and_then(Value::as_str),
                    detail.get("bounceSubType").and_then(Value::as_str),
                ) {
                    (Some("Permanent"), Some("Suppressed" | "OnAccountSuppressionList")) => {
                        DeliveryKind::Rejected
                    }
                    (Some("Permanent"), _) => DeliveryKind::HardBounce,
                    _ => DeliveryKind::SoftBounce,
                };
                let sub = text(detail, "bounceSubType");
                (kind, addresses("bouncedRecipients"), sub)
            }
            "Complaint" => {
                let kind = if detail.get("complaintSubType").and_then(Value::as_str)
                    == Some("OnAccountSuppressionList")
                {
                    DeliveryKind::Rejected
                } else {
                    DeliveryKind::Complained
                };
                (
                    kind,
                    addresses("complainedRecipients"),
                    text(detail, "complaintFeedbackType"),
                )
            }
            "DeliveryDelay" => (
                DeliveryKind::Deferred,
                addresses("delayedRecipients"),
                text(detail, "delayType"),
            ),
            "Reject" => (
                DeliveryKind::Rejected,
                plain(destinations()),
                text(detail, "reason"),
            ),
            "Rendering Failure" => (
                DeliveryKind::Rejected,
                plain(destinations()),
                text(detail, "errorMessage"),
            ),
            "Open" => (DeliveryKind::Opened, plain(destinations()), None),
            "Click" => (DeliveryKind::Clicked, plain(destinations()), None),
            "Subscription" => {
                let prefs = detail.get("newTopicPreferences").unwrap_or(&Value::Null);
                let all = prefs.get("unsubscribeAll").and_then(Value::as_bool) == Some(true);
                let any_out = prefs
                    .get("topicSubscriptionStatus")
                    .and_then(Value::as_array)
                    .is_some_and(|a| {
                        a.iter().any(|t| {
                            t.get("subscriptionStatus").and_then(Value::as_str) == Some("OptOut")
                        })
                    });
                if !(all || any_out) {
                    return Ok(ignored());
                }
                (DeliveryKind::Unsubscribed, plain(destinations()), None)
            }
            "Send" => {
                // No delivery meaning, but the evidence that SES took the message. `send` is
                // always `{}`: the time is the send time.
                let mut reading = ignored();
                let at = text(mail, "timestamp").as_deref().and_then(parse_rfc3339);
                if let (Some(at), Some((id, true))) = (at, our_message_id(mail)) {
                    reading.evidence.extend(acceptance(
                        Some(&id),
                        Some(ses_id.to_owned()),
                        event_type,
                        at,
                    ));
                }
                return Ok(reading);
            }
            _ => return Ok(ignored()),
        };
    // Each recipient becomes an event carrying copies of the message id, diagnostic and link,
    // so the count bounds the output; SES sends to at most 50 recipients per message.
    if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
        return Err(PayloadError::Field {
            field: "recipients",
        });
    }
    let at = text(detail, "timestamp")
        .or_else(|| text(mail, "timestamp"))
        .as_deref()
        .and_then(parse_rfc3339)
        .ok_or(PayloadError::Field { field: "timestamp" })?;
    let (message_id, exact) = match our_message_id(mail) {
        Some((id, exact)) => (Some(id), exact),
        None => (None, false),
    };
    let evidence = if proves_acceptance(kind) && exact {
        acceptance(
            message_id.as_deref(),
            Some(ses_id.to_owned()),
            event_type,
            at,
        )
    } else {
        None
    };
    let url = text(detail, "link");
    let events = recipients
        .into_iter()
        .map(|(recipient, own_diagnostic)| {
            Normalized::Event(DeliveryEvent {
                provider: PROVIDER.to_owned(),
                provider_event_id: event_id(ses_id, event_type, &recipient, at),
                message_id: message_id.clone(),
                recipient,
                kind,
                at,
                diagnostic: own_diagnostic.or_else(|| diagnostic.clone()),
                url: url.clone(),
                stream: None,
            })
        })
        .collect();
    Ok(Reading {
        events,
        evidence: evidence.into_iter().collect(),
    })
}

/// A recipient an event concerns, with its own diagnostic when SES gives one.
type Recipient = (String, Option<String>);

/// Our message id. `X-Gateway-Message-Id` is our header, sent with every message, so a single
/// copy is ours; but a client could have set a copy of its own, and with several copies the
/// header does not say which is ours. The `message_id`
/// email tag does (clients cannot set tags): the copy whose tag form ([`tag_form`]) equals the
/// tag is ours, and when none does, the tag itself (lossy) stands in. Without the tag, the last
/// copy: in a `Simple` send ours is the only one (client copies are dropped), in a raw send
/// the MIME builder writes ours after every custom header.
///
/// With it, whether the id is exact: a copy of the header that is alone or matches the tag, or
/// a tag that cannot be lossy (without `_`); not the tag standing in for a lossy form, nor the
/// last of several copies, a guess.
fn our_message_id(mail: &Value) -> Option<(String, bool)> {
    let copies: Vec<&str> = mail
        .get("headers")
        .and_then(Value::as_array)
        .map(|headers| {
            headers
                .iter()
                .filter_map(|h| {
                    let name = h.get("name").and_then(Value::as_str)?;
                    if name.eq_ignore_ascii_case(MESSAGE_ID_HEADER) {
                        h.get("value").and_then(Value::as_str).map(str::trim)
                    } else {
                        None
                    }
                })
                .filter(|v| !v.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let tag = mail
        .get("tags")
        .and_then(|t| t.get("message_id"))
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let exact_tag = |tag: &str| !tag.contains('_');
    let chosen = match (copies.as_slice(), tag) {
        ([], tag) => tag.map(|t| (t, exact_tag(t))),
        ([only], _) => Some((*only, true)),
        (_, Some(tag)) => copies
            .iter()
            .rev()
            .find(|v| tag_form(v) == tag)
            .map(|v| (*v, true))
            .or(Some((tag, exact_tag(tag)))),
        (_, None) => copies.last().map(|v| (*v, false)),
    };
    chosen.map(|(id, exact)| (id.to_owned(), exact))
}

/// A value as the SES provider writes it into an email tag (`providers::ses::sanitize_tag`):
/// characters outside `[A-Za-z0-9_-]` become `_`, cut at 256 characters.
fn tag_form(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

fn event_id(ses_id: &str, event_type: &str, recipient: &str, at: i64) -> String {
    let id = format!("{ses_id}:{event_type}:{}:{at}", recipient.to_lowercase());
    if id.len() <= 255 {
        return id;
    }
    let hash = digest::digest(&digest::SHA256, id.as_bytes());
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{ses_id}:sha256:{hex}").chars().take(255).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::webhooks::Acceptance;

    fn mail() -> Value {
        json!({"timestamp": "2017-08-05T00:40:02.012Z", "messageId": "ses-1",
            "destination": ["a@x.example", "b@x.example"],
            "headers": [{"name": "x-gateway-message-id", "value": "m-1"}],
            "tags": {"message_id": ["m_1"]}})
    }

    fn events(doc: Value) -> Vec<DeliveryEvent> {
        normalize(&doc.to_string())
            .unwrap()
            .into_iter()
            .map(|n| match n {
                Normalized::Event(e) => e,
                Normalized::Ignored { event } => panic!("ignored {event}"),
            })
            .collect()
    }

    #[test]
    fn a_permanent_bounce_is_a_hard_bounce_per_bounced_recipient() {
        let out = events(json!({"eventType": "Bounce", "mail": mail(),
            "bounce": {"bounceType": "Permanent", "bounceSubType": "General",
                "bouncedRecipients": [{"emailAddress": "a@x.example",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
                "timestamp": "2017-08-05T00:41:02.669Z"}}));
        assert_eq!(out.len(), 1);
        let e = &out[0];
        assert_eq!(e.kind, DeliveryKind::HardBounce);
        assert_eq!(e.recipient, "a@x.example");
        assert_eq!(
            e.message_id.as_deref(),
            Some("m-1"),
            "the exact id from the header"
        );
        assert_eq!(e.at, 1_501_893_662_669);
        assert_eq!(
            e.diagnostic.as_deref(),
            Some("smtp; 550 5.1.1 user unknown")
        );
        assert_eq!(
            e.provider_event_id,
            "ses-1:Bounce:a@x.example:1501893662669"
        );
    }

    #[test]
    fn every_event_type_maps_to_its_kind() {
        use DeliveryKind::*;
        let cases = [
            (
                json!({"eventType": "Delivery", "delivery": {"timestamp": "2017-08-05T00:41:00Z",
                "recipients": ["a@x.example"], "smtpResponse": "250 ok"}}),
                vec![Delivered],
            ),
            (
                json!({"eventType": "Bounce", "bounce": {"bounceType": "Transient",
                "bouncedRecipients": [{"emailAddress": "a@x.example"}]}}),
                vec![SoftBounce],
            ),
            (
                json!({"eventType": "Bounce", "bounce": {"bounceType": "Permanent",
                "bounceSubType": "OnAccountSuppressionList",
                "bouncedRecipients": [{"emailAddress": "a@x.example"}]}}),
                vec![Rejected],
            ),
            (
                json!({"eventType": "Complaint", "complaint": {"complainedRecipients":
                [{"emailAddress": "a@x.example"}], "complaintFeedbackType": "abuse"}}),
                vec![Complained],
            ),
            (
                json!({"eventType": "Reject", "reject": {"reason": "Bad content"}}),
                vec![Rejected, Rejected],
            ),
            (
                json!({"eventType": "Rendering Failure", "failure": {"errorMessage": "no var"}}),
                vec![Rejected, Rejected],
            ),
            (
                json!({"eventType": "DeliveryDelay", "deliveryDelay": {"delayType": "MailboxFull",
                "delayedRecipients": [{"emailAddress": "b@x.example"}]}}),
                vec![Deferred],
            ),
            (
                json!({"eventType": "Open", "open": {"timestamp": "2017-08-05T01:00:00Z"}}),
                vec![Opened, Opened],
            ),
            (
                json!({"eventType": "Click", "click": {"link": "https://x.example/l"}}),
                vec![Clicked, Clicked],
            ),
            (
                json!({"eventType": "Subscription", "subscription": {"newTopicPreferences":
                {"unsubscribeAll": true}}}),
                vec![Unsubscribed, Unsubscribed],
            ),
        ];
        for (mut doc, want) in cases {
            doc["mail"] = mail();
            let got: Vec<DeliveryKind> = events(doc.clone()).iter().map(|e| e.kind).collect();
            assert_eq!(got, want, "{doc}");
        }
        let mut send = json!({"eventType": "Send", "send": {}});
        send["mail"] = mail();
        assert!(matches!(
            &normalize(&send.to_string()).unwrap()[0],
            Normalized::Ignored { event } if event == "Send"
        ));
    }

    /// `Send` and the delivery outcomes are evidence, once per SES event whatever the number of
    /// recipients, with SES's message id; opens, clicks and subscriptions are not.
    #[test]
    fn send_and_delivery_outcomes_are_evidence_once_per_ses_event() {
        let cases = [
            (json!({"eventType": "Send", "send": {}}), true),
            (
                json!({"eventType": "Delivery", "delivery": {"timestamp": "2017-08-05T00:40:02.012Z",
                "recipients": ["a@x.example", "b@x.example"]}}),
                true,
            ),
            (
                json!({"eventType": "Bounce", "bounce": {"bounceType": "Transient",
                "bouncedRecipients": [{"emailAddress": "a@x.example"}]}}),
                true,
            ),
            (
                json!({"eventType": "Complaint", "complaint": {"complainedRecipients":
                [{"emailAddress": "a@x.example"}]}}),
                true,
            ),
            (
                json!({"eventType": "DeliveryDelay", "deliveryDelay": {"delayType": "MailboxFull",
                "delayedRecipients": [{"emailAddress": "b@x.example"}]}}),
                true,
            ),
            (
                json!({"eventType": "Reject", "reject": {"reason": "Bad content"}}),
                true,
            ),
            (
                json!({"eventType": "Rendering Failure", "failure": {"errorMessage": "x"}}),
                true,
            ),
            (json!({"eventType": "Open", "open": {}}), false),
            (
                json!({"eventType": "Click", "click": {"link": "https://x.example/l"}}),
                false,
            ),
            (
                json!({"eventType": "Subscription", "subscription": {"newTopicPreferences":
                {"unsubscribeAll": true}}}),
                false,
            ),
            (
                json!({"eventType": "Subscription", "subscription": {}}),
                false,
            ),
        ];
        for (mut doc, evidence) in cases {
            doc["mail"] = mail();
            let reading = read(&doc.to_string()).unwrap();
            assert_eq!(reading.events, normalize(&doc.to_string()).unwrap());
            let want: Vec<Acceptance> = if evidence {
                vec![Acceptance {
                    message_id: "m-1".to_owned(),
                    provider_message_id: Some("ses-1".to_owned()),
                    event: doc["eventType"].as_str().unwrap().to_owned(),
                    at: 1_501_893_602_012,
                }]
            } else {
                Vec::new()
            };
            assert_eq!(reading.evidence, want, "{doc}");
        }
    }

    /// Evidence stops a re-send, so it names only an id known exactly: the header, or a tag
    /// no character was replaced in. A lossy tag (`inv_2026_1` for `inv:2026@1`) could be
    /// another message's id.
    #[test]
    fn only_an_exact_message_id_is_evidence() {
        let send = |headers: Option<Value>, tag: Option<&str>| {
            let mut m = mail();
            match headers {
                Some(h) => m["headers"] = h,
                None => {
                    m.as_object_mut().unwrap().remove("headers");
                }
            }
            match tag {
                Some(t) => m["tags"] = json!({"message_id": [t]}),
                None => {
                    m.as_object_mut().unwrap().remove("tags");
                }
            }
            let doc = json!({"eventType": "Send", "send": {}, "mail": m});
            let reading = read(&doc.to_string()).unwrap();
            reading
                .evidence
                .into_iter()
                .map(|a| a.message_id)
                .collect::<Vec<_>>()
        };
        let header = |v: &str| json!({"name": "X-Gateway-Message-Id", "value": v});
        let cases: [(Option<Value>, Option<&str>, &[&str]); 7] = [
            (
                Some(json!([header("inv:2026@1")])),
                Some("inv_2026_1"),
                &["inv:2026@1"],
            ),
            (Some(json!([header("inv:2026@1")])), None, &["inv:2026@1"]),
            (None, Some("inv-2026-1"), &["inv-2026-1"]),
            (None, Some("inv_2026_1"), &[]),
            (
                Some(json!([header("other"), header("inv:2026@1")])),
                Some("inv_2026_1"),
                &["inv:2026@1"],
            ),
            (Some(json!([header("a"), header("b")])), None, &[]),
            (None, None, &[]),
        ];
        for (headers, tag, want) in cases {
            assert_eq!(send(headers.clone(), tag), want, "{headers:?} {tag:?}");
        }
    }

    /// A client's own `X-Gateway-Message-Id` copy, before or after ours, is not taken for ours:
    /// the `message_id` tag (which clients cannot set) says which copy is; without the tag the
    /// last copy is (the MIME builder writes ours after every custom header).
    #[test]
    fn with_two_message_id_headers_the_one_matching_the_tag_is_ours() {
        let header = |v: &str| json!({"name": "X-Gateway-Message-Id", "value": v});
        let open = |m: Value| events(json!({"eventType": "Open", "mail": m, "open": {}}));
        for headers in [
            json!([header("forged-1"), header("inv:2026@1")]),
            json!([header("inv:2026@1"), header("forged-1")]),
        ] {
            let mut m = mail();
            m["headers"] = headers.clone();
            m["tags"] = json!({"message_id": ["inv_2026_1"]});
            assert_eq!(
                open(m)[0].message_id.as_deref(),
                Some("inv:2026@1"),
                "{headers}"
            );
        }
        let mut m = mail();
        m["headers"] = json!([header("forged-1"), header("forged-2")]);
        m["tags"] = json!({"message_id": ["m_1"]});
        assert_eq!(
            open(m)[0].message_id.as_deref(),
            Some("m_1"),
            "no copy matches the tag: the tag"
        );
        let mut m = mail();
        m["headers"] = json!([header("forged-1"), header("m-1")]);
        m.as_object_mut().unwrap().remove("tags");
        assert_eq!(
            open(m)[0].message_id.as_deref(),
            Some("m-1"),
            "without a tag, the last copy"
        );
    }

    #[test]
    fn the_tag_stands_in_for_a_missing_header_and_bad_payloads_name_the_field() {
        let mut m = mail();
        m.as_object_mut().unwrap().remove("headers");
        let out = events(json!({"eventType": "Open", "mail": m, "open": {}}));
        assert_eq!(out[0].message_id.as_deref(), Some("m_1"));
        assert_eq!(
            out[0].at, 1_501_893_602_012,
            "mail.timestamp when the event has none"
        );
        assert!(matches!(normalize("nope"), Err(PayloadError::NotJson(_))));
        assert_eq!(
            normalize(&json!({"mail": mail()}).to_string()),
            Err(PayloadError::Field { field: "eventType" })
        );
        assert_eq!(
            normalize(&json!({"eventType": "Bounce", "mail": mail(), "bounce": {}}).to_string()),
            Err(PayloadError::Field {
                field: "recipients"
            })
        );
        // Open and Click name every destination: more than SES sends to is not an SES event,
        // and would multiply the link into one copy per listed address.
        let many: Vec<String> = (0..=MAX_RECIPIENTS)
            .map(|i| format!("r{i}@x.example"))
            .collect();
        let mut m = mail();
        m["destination"] = json!(many);
        let click = json!({"eventType": "Click", "mail": m, "click": {"link": "x".repeat(10_000)}});
        assert_eq!(
            normalize(&click.to_string()),
            Err(PayloadError::Field {
                field: "recipients"
            })
        );
        m["destination"] = json!(many[..MAX_RECIPIENTS]);
        let click = json!({"eventType": "Click", "mail": m, "click": {"link": "x"}});
        assert_eq!(normalize(&click.to_string()).unwrap().len(), MAX_RECIPIENTS);
        let long = format!("{}@x.example", "a".repeat(250));
        let id = event_id("ses-1", "Delivery", &long, 1);
        assert!(id.len() <= 255 && id.starts_with("ses-1:sha256:"), "{id}");
    }
}
