//! Twilio SendGrid v3 client: `POST {base}/v3/mail/send` with a JSON body (providers §2).
//!
//! # The body
//!
//! - `personalizations`: exactly one, with `to`, and `cc` / `bcc` only when non-empty
//!   (recipients are already de-duplicated across the lists, as SendGrid requires).
//! - `from`, `reply_to`: `{email, name?}` objects. SendGrid refuses `,` and `;` in recipient
//!   names, so in `to`/`cc`/`bcc` names each of them becomes a space (runs of spaces collapsed):
//!   a slightly different display name is better than a refused medical message.
//! - `subject`; `content`: `text/plain` first, then `text/html` (SendGrid's required order).
//! - `attachments`: base64 `content`, `type`, `filename`, `disposition` `attachment`, or
//!   `inline` with `content_id` when the attachment has one.
//! - `categories`: the message's tags, then the gateway's categories; duplicates dropped,
//!   categories over [`MAX_CATEGORY_LEN`] characters skipped, cut at [`MAX_CATEGORIES`].
//! - `custom_args`: `message_id` = our id, `stream` = the message's stream, then every metadata
//!   entry in its string form (a metadata key `message_id` or `stream` is skipped: ours wins). SendGrid returns these as top-level keys
//!   of every event.
//! - `headers`: `X-Gateway-Message-Id` = our id, then the custom headers. Omitted when empty.
//! - `tracking_settings`: `open_tracking.enable` and `click_tracking.enable` (with
//!   `enable_text: false`) from the message's `tracking`, else the gateway's, always explicit.
//!
//! # Limits, checked before calling
//!
//! More than [`MAX_RECIPIENTS`] recipients, `custom_args` of [`MAX_CUSTOM_ARGS_BYTES`] or more,
//! or a serialised body of [`MAX_MESSAGE_BYTES`] or more (the body holds the attachments in
//! base64, so this is the encoded size SendGrid measures) → `Unsuitable`.
//!
//! # Answers
//!
//! `202` (or `200` in sandbox mode) → accepted, `X-Message-Id` kept as the provider id. Errors
//! follow [`class_for_status`]: 400/404/405/406 `Permanent`, 401/403 `Auth` (including "from
//! address not verified", a gateway misconfiguration), 413 `Unsuitable`, 429 `Throttled` with
//! `X-RateLimit-Reset`, 451 `Auth`, 5xx `Unavailable` (504 `Ambiguous`).
//!
//! # Probe
//!
//! `GET {base}/v3/scopes`: authenticated, cheap, sends nothing; any key that can authenticate
//! may read its own scopes.

use std::collections::HashSet;

use async_trait::async_trait;
use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::address::Mailbox;
use crate::clock::EpochMillis;
use crate::config::{SendgridSettings, Tracking};
use crate::message::OutboundMessage;

use super::http::{
    GATEWAY_MESSAGE_ID_HEADER, class_for_status, current_key, probe_request, status_error,
    transport_error, with_live_key,
};
use super::{Accepted, ErrorClass, ProbeReport, Provider, SendError};
use crate::secrets::LiveSecret;

/// Provider name in errors and logs.
pub const PROVIDER: &str = "sendgrid";
/// Default API base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.sendgrid.com";
/// Most recipients (to + cc + bcc) per request.
pub const MAX_RECIPIENTS: usize = 1000;
/// Most categories per message.
pub const MAX_CATEGORIES: usize = 10;
/// Longest category, in characters.
pub const MAX_CATEGORY_LEN: usize = 255;
/// `custom_args` must serialise to fewer bytes than this.
pub const MAX_CUSTOM_ARGS_BYTES: usize = 10_000;
/// The whole request must be smaller than this many bytes (SendGrid: "< 30 MB").
pub const MAX_MESSAGE_BYTES: usize = 30_000_000;

/// A SendGrid gateway's client.
#[derive(Debug)]
pub struct SendgridProvider {
    gateway_id: String,
    client: reqwest::Client,
    api_key: LiveSecret,
    base_url: String,
    tracking: Tracking,
    categories: Vec<String>,
}

impl SendgridProvider {
    /// A client for gateway `gateway_id` with its `sendgrid` block and its API key (a value, or
    /// a reference read on every use, see [`LiveSecret`]), sharing the process's HTTP client.
    /// The base URL is `base_url` when set (a trailing `/` ignored), else [`DEFAULT_BASE_URL`].
    pub fn new(
        gateway_id: impl Into<String>,
        settings: &SendgridSettings,
        api_key: impl Into<LiveSecret>,
        client: reqwest::Client,
    ) -> Self {
        let api_key = api_key.into();
        let base_url = settings
            .base_url
            .as_deref()
            .unwrap_or(DEFAULT_BASE_URL)
            .trim_end_matches('/')
            .to_owned();
        Self {
            gateway_id: gateway_id.into(),
            client,
            api_key,
            base_url,
            tracking: settings.tracking,
            categories: settings.categories.clone(),
        }
    }

    /// The base URL requests go to (without `/v3`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The JSON body for `message`, per the module docs, after the recipient and `custom_args`
    /// checks. `Unsuitable` when a SendGrid limit is exceeded.
    pub fn request_body(&self, message: &OutboundMessage) -> Result<Value, SendError> {
        if message.recipient_count() > MAX_RECIPIENTS {
            return Err(unsuitable(format!(
                "{} recipients, SendGrid takes at most {MAX_RECIPIENTS}",
                message.recipient_count()
            )));
        }
        let mut personalization = Map::new();
        personalization.insert("to".into(), recipients(message.to()));
        if !message.cc().is_empty() {
            personalization.insert("cc".into(), recipients(message.cc()));
        }
        if !message.bcc().is_empty() {
            personalization.insert("bcc".into(), recipients(message.bcc()));
        }

        let mut body = Map::new();
        body.insert("personalizations".into(), json!([personalization]));
        body.insert("from".into(), address_object(message.from(), false));
        if let Some(r) = message.reply_to() {
            body.insert("reply_to".into(), address_object(r, false));
        }
        body.insert("subject".into(), json!(message.subject()));
        let mut content = Vec::new();
        if let Some(t) = message.text() {
            content.push(json!({"type": "text/plain", "value": t}));
        }
        if let Some(h) = message.html() {
            content.push(json!({"type": "text/html", "value": h}));
        }
        body.insert("content".into(), Value::Array(content));
        if !message.attachments().is_empty() {
            let attachments: Vec<Value> = message
                .attachments()
                .iter()
                .map(|a| {
                    let mut o = Map::new();
                    o.insert(
                        "content".into(),
                        json!(base64::engine::general_purpose::STANDARD.encode(a.content())),
                    );
                    o.insert("type".into(), json!(a.content_type()));
                    o.insert("filename".into(), json!(a.filename()));
                    match a.content_id() {
                        Some(cid) => {
                            o.insert("disposition".into(), json!("inline"));
                            o.insert("content_id".into(), json!(cid));
                        }
                        None => {
                            o.insert("disposition".into(), json!("attachment"));
                        }
                    }
                    Value::Object(o)
                })
                .collect();
            body.insert("attachments".into(), Value::Array(attachments));
        }
        let mut headers = Map::new();
        headers.insert(GATEWAY_MESSAGE_ID_HEADER.into(), json!(message.id()));
        for (name, value) in message.headers() {
            if !name.eq_ignore_ascii_case(GATEWAY_MESSAGE_ID_HEADER) {
                headers.insert(name.clone(), json!(value));
            }
        }
        body.insert("headers".into(), Value::Object(headers));
        let categories = select_categories(message, &self.categories);
        if !categories.is_empty() {
            body.insert("categories".into(), json!(categories));
        }
        let mut custom_args = Map::new();
        custom_args.insert("message_id".into(), json!(message.id()));
        custom_args.insert("stream".into(), json!(message.stream().as_str()));
        for (key, value) in message.metadata() {
            if key != "message_id" && key != "stream" {
                custom_args.insert(key.clone(), json!(value.to_string()));
            }
        }
        let custom_args = Value::Object(custom_args);
        let args_len = custom_args.to_string().len();
        if args_len >= MAX_CUSTOM_ARGS_BYTES {
            return Err(unsuitable(format!(
                "custom_args take {args_len} bytes, SendGrid takes fewer than {MAX_CUSTOM_ARGS_BYTES}"
            )));
        }
        body.insert("custom_args".into(), custom_args);
        let opens = message.tracking().opens.unwrap_or(self.tracking.opens);
        let clicks = message.tracking().clicks.unwrap_or(self.tracking.clicks);
        body.insert(
            "tracking_settings".into(),
            json!({
                "click_tracking": {"enable": clicks, "enable_text": false},
                "open_tracking": {"enable": opens},
            }),
        );
        Ok(Value::Object(body))
    }
}

#[async_trait]
impl Provider for SendgridProvider {
    fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    async fn send(
        &self,
        message: &OutboundMessage,
        now: EpochMillis,
    ) -> Result<Accepted, SendError> {
        let body = self.request_body(message)?.to_string();
        if body.len() >= MAX_MESSAGE_BYTES {
            return Err(unsuitable(format!(
                "request takes {} bytes, SendGrid takes fewer than {MAX_MESSAGE_BYTES}",
                body.len()
            )));
        }
        let body = &body;
        with_live_key(PROVIDER, &self.api_key, |key| async move {
            let response = self
                .client
                .post(format!("{}/v3/mail/send", self.base_url))
                .bearer_auth(key.expose())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await
                .map_err(|e| transport_error(PROVIDER, e))?;
            let status = response.status().as_u16();
            if response.status().is_success() {
                let id = response
                    .headers()
                    .get("x-message-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                return Ok(Accepted {
                    provider_message_id: id,
                    substituted_sender: None,
                });
            }
            let headers = response.headers().clone();
            let text = response.text().await.unwrap_or_default();
            Err(status_error(
                PROVIDER,
                class_for_status(status),
                status,
                &headers,
                &text,
                now,
            ))
        })
        .await
    }

    /// `GET {base}/v3/scopes` (see module docs).
    async fn probe(&self) -> Result<ProbeReport, SendError> {
        let key = current_key(PROVIDER, &self.api_key).await?;
        let request = self
            .client
            .get(format!("{}/v3/scopes", self.base_url))
            .bearer_auth(key.expose());
        probe_request(PROVIDER, request, class_for_status).await
    }
}

/// The categories sent, per the order and cut in the module docs.
pub fn select_categories(message: &OutboundMessage, configured: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    message
        .tags()
        .iter()
        .chain(configured)
        .filter(|c| !c.is_empty() && c.chars().count() <= MAX_CATEGORY_LEN)
        .filter(|c| seen.insert(c.as_str()))
        .take(MAX_CATEGORIES)
        .cloned()
        .collect()
}

fn recipients(list: &[Mailbox]) -> Value {
    Value::Array(list.iter().map(|m| address_object(m, true)).collect())
}

fn address_object(m: &Mailbox, recipient: bool) -> Value {
    let mut o = Map::new();
    o.insert("email".into(), json!(m.address().as_str()));
    let name = m.name().map(|n| {
        if recipient {
            recipient_name(n)
        } else {
            n.to_owned()
        }
    });
    if let Some(n) = name.filter(|n| !n.is_empty()) {
        o.insert("name".into(), json!(n));
    }
    Value::Object(o)
}

/// A recipient display name without the `,` and `;` SendGrid refuses.
pub fn recipient_name(name: &str) -> String {
    name.replace([',', ';'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn unsuitable(detail: impl Into<String>) -> SendError {
    SendError::new(ErrorClass::Unsuitable, PROVIDER, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::parse_message;

    fn provider(categories: &[&str]) -> SendgridProvider {
        let settings = SendgridSettings {
            api_key: crate::config::SecretRef::Env("K".into()),
            base_url: None,
            tracking: Tracking {
                opens: false,
                clicks: true,
                unsubscribe: false,
            },
            categories: categories.iter().map(|c| (*c).to_owned()).collect(),
            webhook_public_key: None,
        };
        SendgridProvider::new(
            "sg",
            &settings,
            crate::secrets::SecretString::new("k"),
            reqwest::Client::new(),
        )
    }

    fn message(json: Value) -> OutboundMessage {
        parse_message(json.to_string().as_bytes(), None).unwrap()
    }

    #[test]
    fn recipient_names_lose_commas_and_semicolons() {
        assert_eq!(recipient_name("Doe, John; Jr"), "Doe John Jr");
        assert_eq!(recipient_name("Zoë"), "Zoë");
    }

    #[test]
    fn categories_are_tags_then_configured_deduplicated_and_cut_at_ten() {
        let tags: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
        let m = message(json!({
            "id": "m1", "from": "d@x.example", "to": ["a@x.example"], "subject": "s",
            "text": "t", "tags": tags
        }));
        assert_eq!(
            select_categories(&m, &["t1".into(), "c1".into(), "c2".into(), "c3".into()]),
            ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "c1", "c2"]
        );
    }

    #[test]
    fn minimal_body_has_no_empty_lists_and_explicit_tracking() {
        let m = message(json!({
            "id": "m1", "from": "d@x.example", "to": ["a@x.example"], "subject": "s",
            "html": "<p>h</p>", "tracking": {"opens": true}
        }));
        let body = provider(&[]).request_body(&m).unwrap();
        assert_eq!(
            body,
            json!({
                "personalizations": [{"to": [{"email": "a@x.example"}]}],
                "from": {"email": "d@x.example"},
                "subject": "s",
                "content": [{"type": "text/html", "value": "<p>h</p>"}],
                "headers": {"X-Gateway-Message-Id": "m1"},
                "custom_args": {"message_id": "m1", "stream": "transactional"},
                "tracking_settings": {
                    "click_tracking": {"enable": true, "enable_text": false},
                    "open_tracking": {"enable": true}
                }
            })
        );
    }

    #[test]
    fn attachments_with_a_content_id_are_inline() {
        let m = message(json!({
            "id": "m1", "from": "d@x.example", "to": ["a@x.example"], "subject": "s",
            "html": "<img src=cid:logo>",
            "attachments": [
                {"filename": "logo.png", "content_type": "image/png", "content": "iVBORw==", "content_id": "logo"}
            ]
        }));
        let body = provider(&[]).request_body(&m).unwrap();
        assert_eq!(
            body["attachments"],
            json!([{
                "content": "iVBORw==", "type": "image/png", "filename": "logo.png",
                "disposition": "inline", "content_id": "logo"
            }])
        );
    }

    #[test]
    fn the_largest_metadata_the_message_contract_accepts_fits_custom_args() {
        use crate::message::{MAX_METADATA_BYTES, MAX_METADATA_KEYS};
        // Numbers become strings in custom_args (two quotes more each): the worst case is many
        // numeric values. Either way [`MAX_CUSTOM_ARGS_BYTES`] is a backstop no valid message
        // reaches.
        let mut metadata: Map<String, Value> = (0..MAX_METADATA_KEYS - 1)
            .map(|i| (format!("key-{i:03}"), json!(1)))
            .collect();
        // One long string brings the JSON to the byte bound.
        let json_len = |m: &Map<String, Value>| Value::Object(m.clone()).to_string().len();
        let filler = MAX_METADATA_BYTES - json_len(&metadata) - r#","z":"""#.len();
        metadata.insert("z".into(), json!("v".repeat(filler)));
        assert_eq!(json_len(&metadata), MAX_METADATA_BYTES);
        let m = message(json!({
            "id": "m".repeat(128), "from": "d@x.example", "to": ["a@x.example"],
            "subject": "s", "text": "t", "metadata": metadata
        }));
        let body = provider(&[]).request_body(&m).unwrap();
        let args = body["custom_args"].to_string().len();
        assert!(
            args > MAX_METADATA_BYTES && args < MAX_CUSTOM_ARGS_BYTES,
            "{args} bytes of custom_args"
        );
    }
}
