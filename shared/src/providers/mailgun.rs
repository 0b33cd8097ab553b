//! Mailgun HTTP API client: `POST {base}/v3/{domain}/messages` as `multipart/form-data`
//! (providers §1, reference "Mailgun request").
//!
//! # The form
//!
//! | field | value |
//! |---|---|
//! | `from` | the sender's local part at the gateway's Mailgun domain, display name kept |
//! | `to`, `cc`, `bcc` | one part per recipient, `Name <addr>` |
//! | `subject`, `text`, `html` | as in the message (`text` / `html` only when present) |
//! | `o:tracking-opens` | `yes`/`no`: the message's `tracking.opens`, else the gateway's `tracking.opens` |
//! | `o:tracking-clicks` | `htmlonly`/`no`: the message's `tracking.clicks`, else the gateway's |
//! | `o:tracking-unsubscribe` | `yes`/`no` from the gateway's `tracking.unsubscribe` |
//! | `o:tag` | at most [`MAX_TAGS`], see below |
//! | `v:message_id` | our message id (the webhook normaliser reads `user-variables.message_id`) |
//! | `v:stream` | the message's stream, `transactional` or `bulk` (read back as `user-variables.stream`) |
//! | `v:<key>` | each metadata entry in its string form, except a key `message_id` (ours wins) |
//! | `h:X-Gateway-Message-Id` | our message id |
//! | `h:<Name>` | each custom header (the message contract already refused the reserved ones) |
//! | `h:Reply-To` | the message's `reply_to`; without one, the original sender when the rewrite changed it |
//! | `attachment` / `inline` | one file part per attachment (`inline` when it has a content id) |
//!
//! Tracking is always sent explicitly, `no` included, so a Mailgun domain default can never turn
//! on tracking a message asked to go without.
//!
//! **Reply-To after the rewrite**: the rewritten `from` names an address at the Mailgun domain,
//! which may not receive mail; replies go to the real sender instead.
//!
//! **Tags**: candidates in this order — the message's tags, the gateway's default tags, the
//! `campaign_id` (when `campaign_tag_enabled`), the `user_id` (when `user_tag_enabled`). Mailgun
//! compares tags case-insensitively and accepts ASCII up to 128 characters, so duplicates
//! (ignoring case) and tags it would refuse are skipped — a refused tag would fail the whole
//! message — and the first [`MAX_TAGS`] remaining are sent; the rest are dropped.
//!
//! # Limits, checked before calling
//!
//! More than [`MAX_RECIPIENTS`] recipients, `o:`/`h:`/`v:` options over [`MAX_OPTIONS_BYTES`], or
//! a message over [`MAX_MESSAGE_BYTES`] (all text fields plus attachment bytes, uncompressed) →
//! `Unsuitable`: another gateway may take it.
//!
//! # Answers
//!
//! `200` with `{"id": "<…>"}` → accepted, the id kept verbatim (with its angle brackets). Errors
//! follow [`class_for_status`] except `404`, which Mailgun says "can be temporal" (its domain
//! store is eventually consistent): `Unavailable`, so the message fails over and is retried
//! rather than rejected. A `404` that persists keeps the gateway's breaker open, which is the
//! alert that its domain is wrong.

use std::collections::HashSet;

use async_trait::async_trait;
use reqwest::multipart::{Form, Part};

use crate::address::{EmailAddress, Mailbox};
use crate::clock::EpochMillis;
use crate::config::{MailgunRegion, MailgunSettings, MailgunTags, Tracking};
use crate::message::OutboundMessage;

use super::http::{
    GATEWAY_MESSAGE_ID_HEADER, class_for_status, current_key, probe_request, status_error,
    transport_error, with_live_key,
};
use super::{Accepted, ErrorClass, ProbeReport, Provider, SendError};
use crate::secrets::LiveSecret;

/// Provider name in errors and logs.
pub const PROVIDER: &str = "mailgun";
/// US API base URL.
pub const US_BASE_URL: &str = "https://api.mailgun.net";
/// EU API base URL.
pub const EU_BASE_URL: &str = "https://api.eu.mailgun.net";
/// Most recipients (to + cc + bcc) per request.
pub const MAX_RECIPIENTS: usize = 1000;
/// Most bytes of `o:`, `h:` and `v:` options (names and values) per request (16 KB).
pub const MAX_OPTIONS_BYTES: usize = 16 * 1024;
/// Largest message: text fields plus attachment bytes, uncompressed. Mailgun says 25 MB; the
/// decimal reading is the smaller one, so we use it.
pub const MAX_MESSAGE_BYTES: usize = 25_000_000;
/// Most `o:tag` values per message (Mailgun's user manual).
pub const MAX_TAGS: usize = 3;
/// Longest tag Mailgun accepts, in characters (ASCII).
pub const MAX_TAG_LEN: usize = 128;

/// One part of the form, before it is turned into `multipart/form-data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormValue {
    /// A text field.
    Text(String),
    /// A file part: the message's attachment at this index.
    Attachment(usize),
}

/// A Mailgun gateway's client.
#[derive(Debug)]
pub struct MailgunProvider {
    gateway_id: String,
    client: reqwest::Client,
    api_key: LiveSecret,
    domain: String,
    base_url: String,
    tracking: Tracking,
    tags: MailgunTags,
}

impl MailgunProvider {
    /// A client for gateway `gateway_id` with its `mailgun` block and its API key (a value, or
    /// a reference read on every use, see [`LiveSecret`]), sharing the process's HTTP client.
    /// The base URL is `base_url` when set (a trailing `/` is ignored), else the region's.
    pub fn new(
        gateway_id: impl Into<String>,
        settings: &MailgunSettings,
        api_key: impl Into<LiveSecret>,
        client: reqwest::Client,
    ) -> Self {
        let api_key = api_key.into();
        let base_url = match (&settings.base_url, settings.region) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, MailgunRegion::Us) => US_BASE_URL.to_owned(),
            (None, MailgunRegion::Eu) => EU_BASE_URL.to_owned(),
        };
        Self {
            gateway_id: gateway_id.into(),
            client,
            api_key,
            domain: settings.domain.clone(),
            base_url,
            tracking: settings.tracking,
            tags: settings.tags.clone(),
        }
    }

    /// The base URL requests go to (without `/v3`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The form fields for `message`, in the order they are sent, after the limit checks.
    /// `Unsuitable` when a Mailgun limit is exceeded.
    pub fn form_fields(
        &self,
        message: &OutboundMessage,
    ) -> Result<Vec<(String, FormValue)>, SendError> {
        if message.recipient_count() > MAX_RECIPIENTS {
            return Err(unsuitable(format!(
                "{} recipients, Mailgun takes at most {MAX_RECIPIENTS}",
                message.recipient_count()
            )));
        }
        let mut fields: Vec<(String, FormValue)> = Vec::new();
        let mut text =
            |name: &str, value: String| fields.push((name.to_owned(), FormValue::Text(value)));

        let from = rewrite_from(message.from(), &self.domain);
        let rewritten = from.address() != message.sender();
        text("from", from.to_string());
        for m in message.to() {
            text("to", m.to_string());
        }
        for m in message.cc() {
            text("cc", m.to_string());
        }
        for m in message.bcc() {
            text("bcc", m.to_string());
        }
        text("subject", message.subject().to_owned());
        if let Some(t) = message.text() {
            text("text", t.to_owned());
        }
        if let Some(h) = message.html() {
            text("html", h.to_owned());
        }
        let opens = message.tracking().opens.unwrap_or(self.tracking.opens);
        let clicks = message.tracking().clicks.unwrap_or(self.tracking.clicks);
        text("o:tracking-opens", yes_no(opens).to_owned());
        text(
            "o:tracking-clicks",
            if clicks { "htmlonly" } else { "no" }.to_owned(),
        );
        text(
            "o:tracking-unsubscribe",
            yes_no(self.tracking.unsubscribe).to_owned(),
        );
        for tag in select_tags(message, &self.tags) {
            text("o:tag", tag);
        }
        text("v:message_id", message.id().to_owned());
        // The stream travels back with each event like the id: it decides how far a
        // complaint or unsubscribe suppresses (crate::suppression).
        text("v:stream", message.stream().as_str().to_owned());
        for (key, value) in message.metadata() {
            if key != "message_id" && key != "stream" {
                text(&format!("v:{key}"), value.to_string());
            }
        }
        text(
            &format!("h:{GATEWAY_MESSAGE_ID_HEADER}"),
            message.id().to_owned(),
        );
        for (name, value) in message.headers() {
            if !name.eq_ignore_ascii_case(GATEWAY_MESSAGE_ID_HEADER) {
                text(&format!("h:{name}"), value.clone());
            }
        }
        match message.reply_to() {
            Some(r) => text("h:Reply-To", r.to_string()),
            None if rewritten => text("h:Reply-To", message.from().to_string()),
            None => {}
        }
        for (i, a) in message.attachments().iter().enumerate() {
            let name = if a.content_id().is_some() {
                "inline"
            } else {
                "attachment"
            };
            fields.push((name.to_owned(), FormValue::Attachment(i)));
        }

        let options: usize = fields
            .iter()
            .filter(|(n, _)| n.starts_with("o:") || n.starts_with("h:") || n.starts_with("v:"))
            .map(|(n, v)| n.len() + text_len(v))
            .sum();
        if options > MAX_OPTIONS_BYTES {
            return Err(unsuitable(format!(
                "options take {options} bytes, Mailgun takes at most {MAX_OPTIONS_BYTES}"
            )));
        }
        let size: usize = fields
            .iter()
            .map(|(n, v)| match v {
                FormValue::Text(t) => n.len() + t.len(),
                FormValue::Attachment(i) => message
                    .attachments()
                    .get(*i)
                    .map_or(0, |a| a.content().len() + a.filename().len()),
            })
            .sum();
        if size > MAX_MESSAGE_BYTES {
            return Err(unsuitable(format!(
                "message takes {size} bytes, Mailgun takes at most {MAX_MESSAGE_BYTES}"
            )));
        }
        Ok(fields)
    }

    fn form(&self, message: &OutboundMessage) -> Result<Form, SendError> {
        let mut form = Form::new();
        for (name, value) in self.form_fields(message)? {
            form = match value {
                FormValue::Text(t) => form.text(name, t),
                FormValue::Attachment(i) => {
                    let Some(a) = message.attachments().get(i) else {
                        continue;
                    };
                    let filename = a.content_id().unwrap_or(a.filename()).to_owned();
                    let part = Part::bytes(a.content().to_vec())
                        .file_name(filename)
                        .mime_str(a.content_type())
                        .map_err(|e| {
                            let mut err = unsuitable("attachment content type not accepted");
                            err.source = Some(Box::new(e.without_url()));
                            err
                        })?;
                    form.part(name, part)
                }
            };
        }
        Ok(form)
    }
}

#[async_trait]
impl Provider for MailgunProvider {
    fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    async fn send(
        &self,
        message: &OutboundMessage,
        now: EpochMillis,
    ) -> Result<Accepted, SendError> {
        let url = &format!("{}/v3/{}/messages", self.base_url, self.domain);
        with_live_key(PROVIDER, &self.api_key, |key| async move {
            let response = self
                .client
                .post(url)
                .basic_auth("api", Some(key.expose()))
                .multipart(self.form(message)?)
                .send()
                .await
                .map_err(|e| transport_error(PROVIDER, e))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            // After a success status the message is accepted whatever happens to the body.
            let body = response.text().await.unwrap_or_default();
            if (200..300).contains(&status) {
                let id = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned));
                return Ok(Accepted {
                    provider_message_id: id,
                    substituted_sender: None,
                });
            }
            Err(status_error(
                PROVIDER,
                mailgun_class(status),
                status,
                &headers,
                &body,
                now,
            ))
        })
        .await
    }

    /// `GET {base}/v3/domains/{domain}`: authenticated, sends nothing, and proves the domain
    /// exists for this key.
    async fn probe(&self) -> Result<ProbeReport, SendError> {
        let url = format!("{}/v3/domains/{}", self.base_url, self.domain);
        let key = current_key(PROVIDER, &self.api_key).await?;
        let request = self.client.get(url).basic_auth("api", Some(key.expose()));
        probe_request(PROVIDER, request, mailgun_class).await
    }
}

/// Mailgun's status classes: the common table, except 404 → `Unavailable` (see module docs).
pub fn mailgun_class(status: u16) -> ErrorClass {
    match status {
        404 => ErrorClass::Unavailable,
        s => class_for_status(s),
    }
}

/// The sender's local part at `domain`, keeping the display name. Falls back to the original
/// mailbox if the result would not be a valid address (a domain the config let through that
/// the address parser refuses), so the provider decides rather than us guessing.
pub fn rewrite_from(from: &Mailbox, domain: &str) -> Mailbox {
    let rewritten = EmailAddress::parse(&format!("{}@{domain}", from.address().local()))
        .and_then(|a| Mailbox::new(from.name(), a));
    rewritten.unwrap_or_else(|_| from.clone())
}

/// The tags sent, per the order and cut in the module docs.
pub fn select_tags(message: &OutboundMessage, settings: &MailgunTags) -> Vec<String> {
    let campaign = message
        .campaign_id()
        .filter(|_| settings.campaign_tag_enabled);
    let user = message.user_id().filter(|_| settings.user_tag_enabled);
    let candidates = message
        .tags()
        .iter()
        .map(String::as_str)
        .chain(settings.default.iter().map(String::as_str))
        .chain(campaign)
        .chain(user);
    let mut seen = HashSet::new();
    candidates
        .filter(|t| !t.is_empty() && t.is_ascii() && t.len() <= MAX_TAG_LEN)
        .filter(|t| seen.insert(t.to_ascii_lowercase()))
        .take(MAX_TAGS)
        .map(str::to_owned)
        .collect()
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn text_len(v: &FormValue) -> usize {
    match v {
        FormValue::Text(t) => t.len(),
        FormValue::Attachment(_) => 0,
    }
}

fn unsuitable(detail: impl Into<String>) -> SendError {
    SendError::new(ErrorClass::Unsuitable, PROVIDER, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::parse_message;

    fn message(json: serde_json::Value) -> OutboundMessage {
        parse_message(json.to_string().as_bytes(), None).unwrap()
    }

    fn settings() -> MailgunSettings {
        MailgunSettings {
            api_key: crate::config::SecretRef::Env("K".into()),
            domain: "mg.example.com".into(),
            base_url: None,
            region: MailgunRegion::Us,
            tracking: Tracking {
                opens: true,
                clicks: true,
                unsubscribe: false,
            },
            tags: MailgunTags {
                default: vec!["medical".into(), "Default2".into()],
                campaign_tag_enabled: true,
                user_tag_enabled: true,
            },
            webhook_signing_key: None,
        }
    }

    fn provider(s: &MailgunSettings) -> MailgunProvider {
        MailgunProvider::new(
            "mg",
            s,
            crate::secrets::SecretString::new("k"),
            reqwest::Client::new(),
        )
    }

    fn texts<'a>(fields: &'a [(String, FormValue)], name: &str) -> Vec<&'a str> {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| match v {
                FormValue::Text(t) => Some(t.as_str()),
                FormValue::Attachment(_) => None,
            })
            .collect()
    }

    #[test]
    fn region_and_override_select_the_base_url() {
        let mut s = settings();
        assert_eq!(provider(&s).base_url(), US_BASE_URL);
        s.region = MailgunRegion::Eu;
        assert_eq!(provider(&s).base_url(), EU_BASE_URL);
        s.base_url = Some("http://127.0.0.1:9/".into());
        assert_eq!(provider(&s).base_url(), "http://127.0.0.1:9");
    }

    #[test]
    fn from_is_rewritten_to_the_mailgun_domain_keeping_the_name() {
        let m = message(serde_json::json!({
            "id": "m1", "from": "Dr Ünal <doc@clinic.example>", "to": ["a@x.example"],
            "subject": "s", "text": "t"
        }));
        let f = provider(&settings()).form_fields(&m).unwrap();
        assert_eq!(texts(&f, "from"), ["Dr Ünal <doc@mg.example.com>"]);
        assert_eq!(texts(&f, "h:Reply-To"), ["Dr Ünal <doc@clinic.example>"]);
    }

    #[test]
    fn message_tracking_overrides_the_gateway_default() {
        let m = message(serde_json::json!({
            "id": "m1", "from": "doc@mg.example.com", "to": ["a@x.example"],
            "subject": "s", "text": "t", "tracking": {"opens": false}
        }));
        let f = provider(&settings()).form_fields(&m).unwrap();
        assert_eq!(texts(&f, "o:tracking-opens"), ["no"]);
        assert_eq!(texts(&f, "o:tracking-clicks"), ["htmlonly"]);
        assert_eq!(texts(&f, "o:tracking-unsubscribe"), ["no"]);
        // Sender already at the domain: no Reply-To invented.
        assert!(texts(&f, "h:Reply-To").is_empty());
    }

    #[test]
    fn tags_are_message_then_default_then_campaign_cut_at_three() {
        let cases = [
            (serde_json::json!(["a", "b"]), vec!["a", "b", "medical"]),
            (
                serde_json::json!(["MEDICAL"]),
                vec!["MEDICAL", "Default2", "camp"],
            ),
            (
                serde_json::json!(["é-non-ascii"]),
                vec!["medical", "Default2", "camp"],
            ),
            (serde_json::json!(["1", "2", "3", "4"]), vec!["1", "2", "3"]),
        ];
        for (tags, expected) in cases {
            let m = message(serde_json::json!({
                "id": "m1", "from": "d@x.example", "to": ["a@x.example"], "subject": "s",
                "text": "t", "tags": tags, "campaign_id": "camp", "user_id": "u1"
            }));
            assert_eq!(select_tags(&m, &settings().tags), expected, "{tags}");
        }
    }

    #[test]
    fn the_largest_options_the_message_contract_accepts_fit_mailgun() {
        use crate::message::{
            MAX_HEADER_BYTES, MAX_HEADER_VALUE_LEN, MAX_LABEL_LEN, MAX_METADATA_BYTES, MAX_TAGS,
        };
        // Metadata at its byte bound, headers at theirs, tags and campaign of four-byte
        // characters at their length bound: Mailgun's 16 KB of options still hold them, so
        // [`MAX_OPTIONS_BYTES`] is a backstop no valid message reaches.
        let wide = |n: usize| "𝄞".repeat(n);
        let value = "v".repeat(MAX_METADATA_BYTES - 20);
        let mut metadata = serde_json::Map::new();
        metadata.insert("k".into(), serde_json::Value::String(value));
        let mut headers = serde_json::Map::new();
        let mut left = MAX_HEADER_BYTES;
        for i in 0.. {
            let name = format!("X-H{i}");
            let len = (left - name.len()).min(MAX_HEADER_VALUE_LEN);
            left -= name.len() + len;
            headers.insert(name, serde_json::Value::String("h".repeat(len)));
            if left < 10 {
                break;
            }
        }
        let m = message(serde_json::json!({
            "id": "m".repeat(128), "from": "d@x.example", "to": ["a@x.example"], "subject": "s",
            "text": "t", "metadata": metadata, "headers": headers,
            "tags": (0..MAX_TAGS).map(|i| format!("{i}{}", wide(MAX_LABEL_LEN - 1))).collect::<Vec<_>>(),
            "campaign_id": wide(MAX_LABEL_LEN), "user_id": wide(MAX_LABEL_LEN),
        }));
        let fields = provider(&settings()).form_fields(&m).unwrap();
        let options: usize = fields
            .iter()
            .filter(|(n, _)| n.starts_with("o:") || n.starts_with("h:") || n.starts_with("v:"))
            .map(|(n, v)| n.len() + text_len(v))
            .sum();
        assert!(
            options > MAX_OPTIONS_BYTES * 3 / 4 && options <= MAX_OPTIONS_BYTES,
            "{options} bytes of options"
        );
    }

    #[test]
    fn attachments_with_a_content_id_are_inline_parts() {
        let m = message(serde_json::json!({
            "id": "m1", "from": "d@x.example", "to": ["a@x.example"], "subject": "s",
            "html": "<img src=cid:logo>",
            "attachments": [
                {"filename": "a.pdf", "content": "JVBERg=="},
                {"filename": "logo.png", "content_type": "image/png", "content": "iVBORw==", "content_id": "logo"}
            ]
        }));
        let f = provider(&settings()).form_fields(&m).unwrap();
        let files: Vec<_> = f
            .iter()
            .filter(|(_, v)| matches!(v, FormValue::Attachment(_)))
            .collect();
        assert_eq!(
            files,
            [
                &("attachment".to_owned(), FormValue::Attachment(0)),
                &("inline".to_owned(), FormValue::Attachment(1)),
            ]
        );
    }

    #[test]
    fn mailgun_404_is_unavailable_other_statuses_follow_the_table() {
        assert_eq!(mailgun_class(404), ErrorClass::Unavailable);
        assert_eq!(mailgun_class(400), ErrorClass::Permanent);
        assert_eq!(mailgun_class(401), ErrorClass::Auth);
        assert_eq!(mailgun_class(429), ErrorClass::Throttled);
    }
}
