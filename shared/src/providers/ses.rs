//! Amazon SES v2 client: `SendEmail` with `Simple` content through `aws-sdk-sesv2`
//! (providers §3).
//!
//! # The request
//!
//! - `FromEmailAddress`, `Destination` (to/cc/bcc), `ReplyToAddresses`: `Name <addr>`, the name
//!   RFC 2047 encoded (`=?UTF-8?B?…?=`) when it is not ASCII, as SES requires.
//! - `Content.Simple`: `Subject` and the `Text` / `Html` bodies with charset `UTF-8`;
//!   `Headers`: `X-Gateway-Message-Id` = our id, then the custom headers (non-ASCII values RFC
//!   2047 encoded); `Attachments` with file name, content type, disposition `ATTACHMENT`, or
//!   `INLINE` with the content id.
//! - `ConfigurationSetName` from the gateway's settings.
//! - `EmailTags`, names and values reduced to SES's charset by [`sanitize_tag`] (every character
//!   outside `[A-Za-z0-9_-]` becomes `_`, cut at 256 characters), first name wins on a clash,
//!   at most [`MAX_EMAIL_TAGS`], in this order: `message_id` = our id; `tag_1`, `tag_2`, … = the
//!   message's tags in order; `campaign_id`, `user_id` when present; `meta_<key>` = each
//!   metadata value in its string form; empty values skipped. Because the id may contain `.`,
//!   `:` or `@`, the tag is lossy: the exact id is in the `X-Gateway-Message-Id` header, which
//!   SES publishes in `mail.headers` of every event.
//!
//! # Limits, checked before calling
//!
//! More than [`MAX_RECIPIENTS`] recipients, more than [`MAX_HEADERS`] headers (ours included),
//! a header value longer than [`MAX_HEADER_VALUE_LEN`] after encoding, or an estimated encoded
//! size over [`MAX_MESSAGE_BYTES`] → `Unsuitable`.
//!
//! # Raw when needed
//!
//! `Simple` content carries at most [`MAX_HEADERS`] headers of at most [`MAX_HEADER_VALUE_LEN`]
//! characters. A message beyond that ([`needs_raw`]) is sent as `Content.Raw`: the RFC 5322
//! message of [`crate::mime`] (no Bcc header; every recipient, Bcc included, in
//! `Destination`, which SES uses as the envelope), checked against [`MAX_MESSAGE_BYTES`] on its
//! real encoded size. Everything else goes as `Simple`, which lets SES build the MIME.
//!
//! # Error classes (SES codes, never message text)
//!
//! | code | class | why |
//! |---|---|---|
//! | `TooManyRequestsException`, `ThrottlingException` | `Throttled` | rate limited; SES also uses this code for the *daily* quota and only the text tells them apart, which we do not read: both fail over, and `retry_after` is only set from a `Retry-After` header |
//! | `LimitExceededException` | `Throttled` | documented as "too many resources", reported by some as a quota condition: never reject a medical message on an unclear code |
//! | `SendingPausedException`, `AccountSuspendedException` | `Auth` | the account cannot send: fail over and alert (counts against the breaker, which keeps the gateway out) |
//! | `MailFromDomainNotVerifiedException`, `NotFoundException` | `Auth` | the gateway's identity or configuration set is wrong, not the message |
//! | `AccessDeniedException` and credential / signature errors | `Auth` | credentials refused |
//! | `MessageRejected`, `BadRequestException` | `Permanent` | the message is refused |
//! | anything else | by HTTP status ([`class_for_status`]) | 5xx `Unavailable` |
//!
//! Transport failures follow the split of [`super::http`]: a connect error (refused, DNS, TLS,
//! connect timeout) is `Unavailable`; a timeout or a broken connection after the request was
//! dispatched is `Ambiguous`. A request the SDK could not build is `Unsuitable`.
//!
//! The client is built with SDK retries **disabled**: a retried `SendEmail` after a timeout is a
//! duplicate, and the pipeline owns retries and failover.

use std::collections::HashSet;

use async_trait::async_trait;
use aws_sdk_sesv2::config::http::HttpResponse;
use aws_sdk_sesv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sesv2::primitives::Blob;
use aws_sdk_sesv2::types::{
    Attachment, AttachmentContentDisposition, Body, Content, Destination, EmailContent, Message,
    MessageHeader, MessageTag, RawMessage,
};
use base64::Engine as _;

use crate::address::Mailbox;
use crate::clock::EpochMillis;
use crate::config::{HttpSettings, SesSettings};
use crate::message::OutboundMessage;

use super::http::{
    GATEWAY_MESSAGE_ID_HEADER, class_for_status, elapsed, retry_after_from_values, truncate_detail,
};
use super::{Accepted, ErrorClass, ProbeReport, Provider, SendError, SendQuota};

/// Provider name in errors and logs.
pub const PROVIDER: &str = "amazon_ses";
/// Most recipients (to + cc + bcc) per message.
pub const MAX_RECIPIENTS: usize = super::SES_MAX_RECIPIENTS;
/// Most headers in `Simple` content.
pub const MAX_HEADERS: usize = 15;
/// Longest header value; the older SDK limit, the safe one (providers §3.2).
pub const MAX_HEADER_VALUE_LEN: usize = 870;
/// Largest message after base64 encoding, in bytes (40 MB).
pub const MAX_MESSAGE_BYTES: usize = 40_000_000;
/// Longest tag name and value, in characters.
pub const MAX_TAG_LEN: usize = 256;
/// Most email tags sent per message.
pub const MAX_EMAIL_TAGS: usize = 50;

const CHARSET: &str = "UTF-8";

/// An Amazon SES gateway's client.
#[derive(Debug)]
pub struct SesProvider {
    gateway_id: String,
    client: aws_sdk_sesv2::Client,
    configuration_set: Option<String>,
}

/// Builds an SES client for the gateway from the process's AWS configuration `base`
/// (credentials, `AWS_ENDPOINT_URL*`, the shared HTTP client), then [`configure_ses`] applies the gateway's region, endpoint and the
/// process's HTTP timeouts, with SDK retries disabled (module docs).
pub fn build_ses_client(
    base: &aws_config::SdkConfig,
    settings: &SesSettings,
    http: &HttpSettings,
) -> aws_sdk_sesv2::Client {
    let builder = aws_sdk_sesv2::config::Builder::from(base);
    aws_sdk_sesv2::Client::from_conf(configure_ses(builder, settings, http).build())
}

/// Applies a gateway's SES settings to an SDK config builder: its region; its `endpoint_url`
/// when set (it wins over the environment); connect timeout = `http.connect_timeout`; attempt
/// and operation timeout = `http.request_timeout`; retries disabled.
pub fn configure_ses(
    builder: aws_sdk_sesv2::config::Builder,
    settings: &SesSettings,
    http: &HttpSettings,
) -> aws_sdk_sesv2::config::Builder {
    let timeouts = aws_sdk_sesv2::config::timeout::TimeoutConfig::builder()
        .connect_timeout(http.connect_timeout)
        .operation_attempt_timeout(http.request_timeout)
        .operation_timeout(http.request_timeout)
        .build();
    let mut builder = builder
        .region(aws_sdk_sesv2::config::Region::new(settings.region.clone()))
        .timeout_config(timeouts)
        .retry_config(aws_sdk_sesv2::config::retry::RetryConfig::disabled());
    if let Some(url) = &settings.endpoint_url {
        builder = builder.endpoint_url(url);
    }
    builder
}

impl SesProvider {
    /// A client for gateway `gateway_id` using `client` (see [`build_ses_client`]) and the
    /// settings' configuration set.
    pub fn new(
        gateway_id: impl Into<String>,
        settings: &SesSettings,
        client: aws_sdk_sesv2::Client,
    ) -> Self {
        Self {
            gateway_id: gateway_id.into(),
            client,
            configuration_set: settings.configuration_set.clone(),
        }
    }

    /// The raw content for `message`: our MIME, without a Bcc header, size-checked.
    pub fn raw_content(
        &self,
        message: &OutboundMessage,
        now: EpochMillis,
    ) -> Result<RawMessage, SendError> {
        check_recipients(message)?;
        let built = crate::mime::build(message, now);
        if built.encoded_size() > MAX_MESSAGE_BYTES {
            return Err(unsuitable(format!(
                "message is {} bytes encoded, SES takes at most {MAX_MESSAGE_BYTES}",
                built.encoded_size()
            )));
        }
        RawMessage::builder()
            .data(Blob::new(built.into_bytes()))
            .build()
            .map_err(build_error)
    }

    /// The content `send` uses: `Simple` unless [`needs_raw`] says otherwise.
    pub fn email_content(
        &self,
        message: &OutboundMessage,
        now: EpochMillis,
    ) -> Result<EmailContent, SendError> {
        Ok(match needs_raw(message) {
            None => EmailContent::builder()
                .simple(self.simple_content(message)?)
                .build(),
            Some(_) => EmailContent::builder()
                .raw(self.raw_content(message, now)?)
                .build(),
        })
    }

    /// The `Simple` content for `message`, after the limit checks (module docs). A message
    /// that [`needs_raw`] is `Unsuitable` here; [`Self::email_content`] sends it raw instead.
    pub fn simple_content(&self, message: &OutboundMessage) -> Result<Message, SendError> {
        check_recipients(message)?;
        let custom: Vec<&(String, String)> = message
            .headers()
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(GATEWAY_MESSAGE_ID_HEADER))
            .collect();
        if custom.len() + 1 > MAX_HEADERS {
            return Err(unsuitable(format!(
                "{} headers, SES simple content takes at most {MAX_HEADERS}",
                custom.len() + 1
            )));
        }
        let mut headers = vec![(
            GATEWAY_MESSAGE_ID_HEADER.to_owned(),
            message.id().to_owned(),
        )];
        for (name, value) in custom {
            let value = if value.is_ascii() {
                value.clone()
            } else {
                encode_words(value)
            };
            if value.len() > MAX_HEADER_VALUE_LEN {
                return Err(unsuitable(format!(
                    "header {name} is longer than {MAX_HEADER_VALUE_LEN} characters once encoded"
                )));
            }
            headers.push((name.clone(), value));
        }

        let size = estimated_size(message);
        if size > MAX_MESSAGE_BYTES {
            return Err(unsuitable(format!(
                "message takes about {size} bytes encoded, SES takes at most {MAX_MESSAGE_BYTES}"
            )));
        }

        let content = |data: &str| {
            Content::builder()
                .data(data)
                .charset(CHARSET)
                .build()
                .map_err(build_error)
        };
        let mut body = Body::builder();
        if let Some(t) = message.text() {
            body = body.text(content(t)?);
        }
        if let Some(h) = message.html() {
            body = body.html(content(h)?);
        }
        let mut simple = Message::builder()
            .subject(content(message.subject())?)
            .body(body.build());
        for (name, value) in headers {
            simple = simple.headers(
                MessageHeader::builder()
                    .name(name)
                    .value(value)
                    .build()
                    .map_err(build_error)?,
            );
        }
        for a in message.attachments() {
            let mut b = Attachment::builder()
                .raw_content(Blob::new(a.content()))
                .file_name(a.filename())
                .content_type(a.content_type());
            b = match a.content_id() {
                Some(cid) => b
                    .content_disposition(AttachmentContentDisposition::Inline)
                    .content_id(cid),
                None => b.content_disposition(AttachmentContentDisposition::Attachment),
            };
            simple = simple.attachments(b.build().map_err(build_error)?);
        }
        Ok(simple.build())
    }
}

#[async_trait]
impl Provider for SesProvider {
    fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    async fn send(
        &self,
        message: &OutboundMessage,
        now: EpochMillis,
    ) -> Result<Accepted, SendError> {
        let content = self.email_content(message, now)?;
        let mut destination = Destination::builder();
        for m in message.to() {
            destination = destination.to_addresses(ses_mailbox(m));
        }
        for m in message.cc() {
            destination = destination.cc_addresses(ses_mailbox(m));
        }
        for m in message.bcc() {
            destination = destination.bcc_addresses(ses_mailbox(m));
        }
        let mut request = self
            .client
            .send_email()
            .from_email_address(ses_mailbox(message.from()))
            .destination(destination.build())
            .content(content)
            .set_configuration_set_name(self.configuration_set.clone());
        if let Some(r) = message.reply_to() {
            request = request.reply_to_addresses(ses_mailbox(r));
        }
        for (name, value) in email_tags(message) {
            request = request.email_tags(
                MessageTag::builder()
                    .name(name)
                    .value(value)
                    .build()
                    .map_err(build_error)?,
            );
        }
        match request.send().await {
            Ok(out) => Ok(Accepted {
                provider_message_id: out.message_id,
                substituted_sender: None,
            }),
            // A success status whose body the SDK could not read: SES has the message.
            Err(SdkError::ResponseError(e)) if e.raw().status().is_success() => Ok(Accepted {
                provider_message_id: None,
                substituted_sender: None,
            }),
            Err(e) => Err(classify_sdk_error(e, now)),
        }
    }

    /// `GetAccount`: authenticated and free. An account whose sending is disabled fails the
    /// probe with `Auth`, like a `SendingPausedException` would. The account's `SendQuota`
    /// comes back in the report (the health checker compares it with the configured limits).
    async fn probe(&self) -> Result<ProbeReport, SendError> {
        let start = std::time::Instant::now();
        let account = self.client.get_account().send().await.map_err(|e| {
            // Probes have no `now`: a relative hint cannot be made absolute.
            let mut err = classify_sdk_error(e, 0);
            err.retry_after = None;
            err
        })?;
        if !account.sending_enabled {
            return Err(SendError::new(
                ErrorClass::Auth,
                PROVIDER,
                "sending is disabled for the SES account",
            ));
        }
        Ok(ProbeReport {
            latency: elapsed(start),
            send_quota: account.send_quota.map(|q| SendQuota {
                max_24_hour_send: q.max24_hour_send,
                max_send_rate: q.max_send_rate,
                sent_last_24_hours: q.sent_last24_hours,
            }),
        })
    }
}

/// The class of an SES error code (module docs); `None` for codes decided by HTTP status.
pub fn class_for_code(code: &str) -> Option<ErrorClass> {
    Some(match code {
        "TooManyRequestsException" | "ThrottlingException" | "LimitExceededException" => {
            ErrorClass::Throttled
        }
        "SendingPausedException"
        | "AccountSuspendedException"
        | "MailFromDomainNotVerifiedException"
        | "NotFoundException"
        | "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "ExpiredTokenException" => ErrorClass::Auth,
        "MessageRejected" | "BadRequestException" => ErrorClass::Permanent,
        _ => return None,
    })
}

/// Classifies any SES operation error (module docs). `now` turns a `Retry-After` into an
/// absolute time.
pub fn classify_sdk_error<E>(error: SdkError<E, HttpResponse>, now: EpochMillis) -> SendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (class, status, retry_after, detail) = match &error {
        SdkError::ServiceError(service) => {
            let raw = service.raw();
            let status = raw.status().as_u16();
            let err = service.err();
            let class = err
                .code()
                .and_then(class_for_code)
                .unwrap_or_else(|| class_for_status(status));
            let retry_after = matches!(class, ErrorClass::Throttled | ErrorClass::Unavailable)
                .then(|| {
                    retry_after_from_values(
                        raw.headers().get("retry-after"),
                        raw.headers().get("x-ratelimit-reset"),
                        now,
                    )
                })
                .flatten();
            let detail = format!(
                "{}: {}",
                err.code().unwrap_or("unknown error"),
                err.message().unwrap_or("")
            );
            (class, Some(status), retry_after, detail)
        }
        SdkError::DispatchFailure(failure) => {
            let before = failure.is_user() || connect_failed(&error);
            if before {
                (
                    ErrorClass::Unavailable,
                    None,
                    None,
                    "connection failed".to_owned(),
                )
            } else if failure.is_timeout() {
                (
                    ErrorClass::Ambiguous,
                    None,
                    None,
                    "timed out waiting for the response".to_owned(),
                )
            } else {
                (
                    ErrorClass::Ambiguous,
                    None,
                    None,
                    "connection broken before a complete response".to_owned(),
                )
            }
        }
        SdkError::TimeoutError(_) => (
            ErrorClass::Ambiguous,
            None,
            None,
            "timed out waiting for the response".to_owned(),
        ),
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            (
                class_for_status(status),
                Some(status),
                None,
                "unreadable response".to_owned(),
            )
        }
        SdkError::ConstructionFailure(_) => (
            ErrorClass::Unsuitable,
            None,
            None,
            "request could not be built".to_owned(),
        ),
        _ => (
            ErrorClass::Unavailable,
            None,
            None,
            "unknown SDK failure".to_owned(),
        ),
    };
    SendError {
        class,
        provider: PROVIDER,
        http_status: status,
        retry_after,
        detail: truncate_detail(&detail),
        source: Some(Box::new(error)),
    }
}

/// True when the error chain holds a connect failure of the HTTP client (DNS, refused, TLS,
/// connect timeout): the request never left.
fn connect_failed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>()
            && h.is_connect()
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// `Name <addr>` with a non-ASCII name RFC 2047 encoded, else the mailbox's usual form.
pub fn ses_mailbox(m: &Mailbox) -> String {
    match m.name() {
        Some(name) if !name.is_ascii() => format!("{} <{}>", encode_words(name), m.address()),
        _ => m.to_string(),
    }
}

/// RFC 2047 `B` encoded words for `text`, split so that each word stays within 75 characters
/// and no UTF-8 sequence is cut.
pub fn encode_words(text: &str) -> String {
    // 45 bytes of UTF-8 become 60 base64 characters, plus 12 for `=?UTF-8?B?` and `?=`.
    const MAX_CHUNK_BYTES: usize = 45;
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > MAX_CHUNK_BYTES {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| {
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A tag name or value in SES's charset: characters outside `[A-Za-z0-9_-]` become `_`, cut at
/// [`MAX_TAG_LEN`] characters.
pub fn sanitize_tag(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_TAG_LEN)
        .collect()
}

/// The `EmailTags` as `(name, value)` pairs, per the mapping in the module docs.
pub fn email_tags(message: &OutboundMessage) -> Vec<(String, String)> {
    let mut candidates: Vec<(String, String)> = vec![("message_id".into(), message.id().into())];
    for (i, tag) in message.tags().iter().enumerate() {
        candidates.push((format!("tag_{}", i + 1), tag.clone()));
    }
    if let Some(c) = message.campaign_id() {
        candidates.push(("campaign_id".into(), c.into()));
    }
    if let Some(u) = message.user_id() {
        candidates.push(("user_id".into(), u.into()));
    }
    for (key, value) in message.metadata() {
        candidates.push((format!("meta_{key}"), value.to_string()));
    }
    let mut seen = HashSet::new();
    candidates
        .into_iter()
        .map(|(n, v)| (sanitize_tag(&n), sanitize_tag(&v)))
        .filter(|(_, v)| !v.is_empty())
        .filter(|(n, _)| seen.insert(n.clone()))
        .take(MAX_EMAIL_TAGS)
        .collect()
}

/// Encoded size estimate: bodies and attachments as base64 with line breaks every 76
/// characters, plus subject, addresses and headers. It errs high, so a message we pass fits.
fn estimated_size(message: &OutboundMessage) -> usize {
    let b64 = |n: usize| {
        let chars = n.div_ceil(3) * 4;
        chars + chars / 76 * 2
    };
    let bodies = b64(message.text().map_or(0, str::len)) + b64(message.html().map_or(0, str::len));
    let attachments: usize = message
        .attachments()
        .iter()
        .map(|a| b64(a.content().len()) + a.filename().len() + a.content_type().len() + 200)
        .sum();
    let headers: usize = message
        .headers()
        .iter()
        .map(|(n, v)| n.len() + v.len() + 4)
        .sum();
    let addresses: usize = message
        .recipients()
        .map(|(_, m)| m.to_string().len() + 2)
        .sum();
    bodies + attachments + headers + addresses + b64(message.subject().len()) + 1024
}

fn check_recipients(message: &OutboundMessage) -> Result<(), SendError> {
    if message.recipient_count() > MAX_RECIPIENTS {
        return Err(unsuitable(format!(
            "{} recipients, SES takes at most {MAX_RECIPIENTS}",
            message.recipient_count()
        )));
    }
    Ok(())
}

/// Why `message` cannot go as `Simple` content (too many headers, or a header value too long
/// once encoded), or `None` when it can.
pub fn needs_raw(message: &OutboundMessage) -> Option<String> {
    let custom = message
        .headers()
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(GATEWAY_MESSAGE_ID_HEADER));
    let mut count = 1; // ours
    for (name, value) in custom {
        count += 1;
        let len = if value.is_ascii() {
            value.len()
        } else {
            encode_words(value).len()
        };
        if len > MAX_HEADER_VALUE_LEN {
            return Some(format!(
                "header {name} is longer than {MAX_HEADER_VALUE_LEN} characters once encoded"
            ));
        }
    }
    (count > MAX_HEADERS)
        .then(|| format!("{count} headers, simple content takes at most {MAX_HEADERS}"))
}

fn build_error(e: aws_sdk_sesv2::error::BuildError) -> SendError {
    let mut err = unsuitable("request could not be built");
    err.source = Some(Box::new(e));
    err
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

    #[test]
    fn tags_metadata_and_id_map_to_ses_charset() {
        let m = message(serde_json::json!({
            "id": "inv.2026:1@x", "from": "d@x.example", "to": ["a@x.example"], "subject": "s",
            "text": "t", "tags": ["appointment reminder", "é"], "campaign_id": "flu-2026",
            "metadata": {"invitation_id": 123, "tag_1": "clash", "empty": ""}
        }));
        assert_eq!(
            email_tags(&m),
            [
                ("message_id", "inv_2026_1_x"),
                ("tag_1", "appointment_reminder"),
                ("tag_2", "_"),
                ("campaign_id", "flu-2026"),
                ("meta_invitation_id", "123"),
                ("meta_tag_1", "clash"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }

    #[test]
    fn non_ascii_names_are_encoded_words_within_75_characters() {
        let long = "Zoë ".repeat(30);
        let encoded = encode_words(long.trim());
        for word in encoded.split(' ') {
            assert!(word.len() <= 75, "{word}");
            assert!(word.starts_with("=?UTF-8?B?") && word.ends_with("?="));
        }
        let decoded: String = encoded
            .split(' ')
            .map(|w| {
                let b = &w[10..w.len() - 2];
                String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap())
                    .unwrap()
            })
            .collect();
        assert_eq!(decoded, long.trim());
        let m = Mailbox::parse("Jürgen <j@x.example>").unwrap();
        assert_eq!(ses_mailbox(&m), "=?UTF-8?B?SsO8cmdlbg==?= <j@x.example>");
    }

    #[test]
    fn error_codes_map_to_classes() {
        let cases = [
            ("TooManyRequestsException", Some(ErrorClass::Throttled)),
            ("LimitExceededException", Some(ErrorClass::Throttled)),
            ("SendingPausedException", Some(ErrorClass::Auth)),
            ("AccountSuspendedException", Some(ErrorClass::Auth)),
            ("MessageRejected", Some(ErrorClass::Permanent)),
            ("BadRequestException", Some(ErrorClass::Permanent)),
            ("InternalFailure", None),
        ];
        for (code, class) in cases {
            assert_eq!(class_for_code(code), class, "{code}");
        }
    }

    #[test]
    fn more_than_fifteen_headers_are_unsuitable_for_simple_content() {
        let headers: serde_json::Map<String, serde_json::Value> = (0..15)
            .map(|i| (format!("X-H{i}"), serde_json::Value::String("v".into())))
            .collect();
        let m = message(serde_json::json!({
            "id": "m", "from": "d@x.example", "to": ["a@x.example"], "subject": "s",
            "text": "t", "headers": headers
        }));
        let conf = aws_sdk_sesv2::Config::builder()
            .behavior_version(aws_sdk_sesv2::config::BehaviorVersion::latest())
            .build();
        let p = SesProvider {
            gateway_id: "ses".into(),
            client: aws_sdk_sesv2::Client::from_conf(conf),
            configuration_set: None,
        };
        assert_eq!(
            p.simple_content(&m).unwrap_err().class,
            ErrorClass::Unsuitable
        );
    }
}
