//! The outbound message contract: the JSON body of one SQS message (ARCHITECTURE §2.1).
//!
//! [`parse_message`] turns a body into an [`OutboundMessage`] or into a [`MessageError`] that lists
//! every problem found, each with the path of the field (`to[2]: not an email address`). A
//! message that fails is a poison message: the pipeline records it as `rejected` with that text
//! and acknowledges it. The text never repeats addresses, bodies or header values, only field
//! paths (keys escaped and cut at 64 characters), header names and the rule broken, so it is safe
//! to log and to send to customers. The error also carries the id, sender and recipients that
//! were valid, so the rejection can be recorded and reported like any other outcome.
//!
//! The same contract is published as JSON Schema in `shared/schema/message.schema.json`; the
//! contract tests check that schema and parser agree. Only what a schema cannot say (repeated
//! keys, case-insensitive header repeats, de-duplicated recipient count, body size) is parser-only.
//!
//! Rules beyond the ones ARCHITECTURE §2.1 states, and why:
//!
//! - **Unknown fields and duplicate keys are errors.** `"htlm": "…"` must not silently send a
//!   message without its body, and with `"to"` given twice a JSON parser would keep only one list.
//! - **`null` means absent** for every optional field, because many serialisers write `None` as
//!   `null`. For a required field it reads as `required`.
//! - **Header safety** (providers §7.1): every value that becomes a header (subject, display names,
//!   addresses, `reply_to`, header names and values, attachment file names, content types and
//!   content ids, tags, metadata keys and string values, `campaign_id`, `user_id`) is rejected if
//!   it contains CR, LF, U+0085, U+2028, U+2029, NUL or another control character except TAB.
//!   Non-ASCII text is allowed: the MIME builder RFC 2047-encodes it. `text` and `html` may hold
//!   line breaks but not NUL (SMTP forbids it).
//! - **Custom headers** may not set the headers the gateway or the provider owns (see
//!   [`is_forbidden_header`]), and a name may appear only once (case-insensitive), because
//!   providers disagree on what a repeated custom header means.
//! - **Recipients** are de-duplicated case-insensitively across `to`, `cc` and `bcc`, keeping the
//!   first occurrence in that order (SendGrid rejects a request that repeats an address; the
//!   recipient still gets exactly one copy). At most [`MAX_RECIPIENTS`] remain.
//! - **`reply_to`** is one address (string or object); a list is an error rather than a silent
//!   choice of one element.
//! - **Empty `text` or `html`** counts as absent; at least one of them must be non-empty. An empty
//!   `subject` is an error (a medical message without a subject is a client bug).
//! - **Attachments** carry standard, padded base64 without line breaks; `content_type` defaults to
//!   `application/octet-stream`; `content_id` (without angle brackets) marks an inline part.
//! - **Metadata** values are JSON strings, numbers or booleans; providers that take only strings
//!   get [`MetadataValue`]'s `Display` form.
//! - **`stream`** is `transactional` (the default) or `bulk` ([`Stream`]), exactly, in lower
//!   case; it decides which suppressions apply (ARCHITECTURE §3.6).
//! - **Sizes**: the body is at most [`MAX_BODY_BYTES`] (the SQS message limit) and is refused
//!   before parsing; `subject` and header values at most 998 characters (RFC 5322 line limit);
//!   `campaign_id`, `user_id` and each tag at most 255 characters (they are stored in MySQL
//!   columns of that size and SendGrid caps categories at 255).

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use base64::Engine as _;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::address::{AddressError, EmailAddress, Mailbox, check_header_text};
use crate::clock::EpochMillis;

/// Largest accepted body in bytes (1 MiB, the SQS message size limit). Larger bodies are refused
/// before any parsing, so the work per message is bounded.
pub const MAX_BODY_BYTES: usize = 1_048_576;
/// Longest accepted message id, in characters.
pub const MAX_ID_LEN: usize = 128;
/// Most recipients (after de-duplication) across `to`, `cc` and `bcc`: the largest per-request
/// cap of any provider (Mailgun, SendGrid). Providers with lower caps are the router's concern.
pub const MAX_RECIPIENTS: usize = 1000;
/// Longest custom header name, in characters (SES limit).
pub const MAX_HEADER_NAME_LEN: usize = 126;
/// Longest custom header value and subject, in characters (RFC 5322 §2.1.1 line limit).
pub const MAX_HEADER_VALUE_LEN: usize = 998;
/// Longest `campaign_id`, `user_id` and tag, in characters.
pub const MAX_LABEL_LEN: usize = 255;
/// Longest attachment file name, in characters.
pub const MAX_FILENAME_LEN: usize = 255;
/// Most tags: SendGrid takes at most 10 categories per message (Mailgun's manual says 3; its
/// adapter sends the first 3).
pub const MAX_TAGS: usize = 10;
/// Most metadata keys.
pub const MAX_METADATA_KEYS: usize = 50;
/// Longest metadata key, in characters.
pub const MAX_METADATA_KEY_LEN: usize = 128;
/// Largest `metadata` as compact JSON, in bytes. Metadata travels to the providers (SendGrid's
/// `custom_args` must stay under 10,000 bytes; Mailgun's `v:`, `h:` and `o:` options share
/// 16 KB) and in every outcome event.
pub const MAX_METADATA_BYTES: usize = 8192;
/// Most custom headers.
pub const MAX_HEADERS: usize = 20;
/// Largest sum of custom header names and values, in bytes (Mailgun's 16 KB of options, with
/// metadata and the gateway's own options).
pub const MAX_HEADER_BYTES: usize = 4096;
/// Largest sum of the recipients' addresses, in bytes: with [`MAX_RECIPIENTS`] entries of
/// status each, an outcome event stays well inside the events queue's 256 KiB.
pub const MAX_RECIPIENT_BYTES: usize = 100_000;
/// Most problems a [`MessageError`] lists; further ones are only counted, so the error text
/// stays bounded however broken the input.
pub const MAX_REPORTED_PROBLEMS: usize = 100;

/// Content type of an attachment that does not name one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Custom header names that are refused (compared case-insensitively), besides every `Content-*`
/// name and the provider prefixes of [`is_forbidden_header`].
///
/// The first group carries identity, routing or trace information a client must not forge; the
/// gateway sets `Subject`, `Reply-To`, `Date` and `Message-ID` itself from the message fields.
/// `X-SMTPAPI` would let a client add SendGrid recipients outside the recipient lists.
pub const FORBIDDEN_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Bcc",
    "Sender",
    "Return-Path",
    "Received",
    "DKIM-Signature",
    "MIME-Version",
    "Subject",
    "Reply-To",
    "Date",
    "Message-ID",
    "X-SMTPAPI",
];

/// Header name prefixes (case-insensitive) that are refused: MIME structure (`Content-`), the
/// gateway's own headers (`X-Gateway-`: `X-Gateway-Message-Id` ties provider events back to a
/// message, so a client setting it could attribute another message's bounces, complaints and
/// suppressions to a victim) and the control headers of our providers (`X-Mailgun-`, `X-SG-`,
/// `X-SES-`), which could change tracking, configuration sets or the variables our webhook
/// correlation relies on.
pub const FORBIDDEN_HEADER_PREFIXES: &[&str] =
    &["Content-", "X-Gateway-", "X-Mailgun-", "X-SG-", "X-SES-"];

/// True when a custom header with this name is refused (case-insensitive).
pub fn is_forbidden_header(name: &str) -> bool {
    FORBIDDEN_HEADERS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
        || FORBIDDEN_HEADER_PREFIXES.iter().any(|p| {
            name.len() >= p.len()
                && name.is_char_boundary(p.len())
                && name[..p.len()].eq_ignore_ascii_case(p)
        })
}

/// Which recipient list an address came from (ordered to, cc, bcc; serialised `to`/`cc`/`bcc`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RecipientKind {
    /// `to`.
    To,
    /// `cc`.
    Cc,
    /// `bcc`.
    Bcc,
}

impl RecipientKind {
    /// `to`, `cc` or `bcc` (the field name and the `message_recipients.kind` value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::To => "to",
            Self::Cc => "cc",
            Self::Bcc => "bcc",
        }
    }
}

impl fmt::Display for RecipientKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Open and click tracking requested by the message. `None` means "the gateway's default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracking {
    /// Track opens.
    pub opens: Option<bool>,
    /// Track clicks.
    pub clicks: Option<bool>,
}

/// A metadata value: a JSON scalar other than `null`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataValue {
    /// A string (header-safe: no line breaks or control characters).
    Text(String),
    /// A number, as JSON wrote it.
    Number(serde_json::Number),
    /// A boolean.
    Bool(bool),
}

impl From<&MetadataValue> for serde_json::Value {
    /// The JSON value as the message gave it (for the record's `metadata` column).
    fn from(v: &MetadataValue) -> Self {
        match v {
            MetadataValue::Text(s) => Self::String(s.clone()),
            MetadataValue::Number(n) => Self::Number(n.clone()),
            MetadataValue::Bool(b) => Self::Bool(*b),
        }
    }
}

impl fmt::Display for MetadataValue {
    /// The string form for providers whose variables are strings: text as is, numbers in JSON
    /// notation, `true` / `false`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(s) => f.write_str(s),
            Self::Number(n) => write!(f, "{n}"),
            Self::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Largest attachment a reference may name: the largest message any provider takes (SES v2,
/// 40 MB after base64, about 30 MB of content); a smaller provider answers `Unsuitable`.
pub const MAX_REFERENCED_BYTES: u64 = 30_000_000;

/// An attachment kept in S3 rather than inline (`"s3": {"bucket", "key", "size", "sha256"}`):
/// the sender reads it when it sends (`crate::attachments`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Ref {
    /// The bucket (the deployment's attachments bucket; any other is refused at send time).
    pub bucket: String,
    /// The object key.
    pub key: String,
    /// The object's size in bytes, as the producer wrote it.
    pub size: u64,
    /// Lower-case hex SHA-256 of the object, when the producer gave one.
    pub sha256: Option<String>,
}

/// One attachment, already decoded, or a reference to one in S3 not read yet. `Debug` shows
/// the size of the content, not the content.
#[derive(Clone, PartialEq, Eq)]
pub struct Attachment {
    filename: String,
    content_type: String,
    content: Vec<u8>,
    content_id: Option<String>,
    reference: Option<S3Ref>,
}

impl Attachment {
    /// File name: non-empty, header-safe, at most [`MAX_FILENAME_LEN`] characters.
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// MIME type (`type/subtype`, optionally with parameters); [`DEFAULT_CONTENT_TYPE`] when the
    /// message named none.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The decoded bytes (empty while [`Attachment::unread`]).
    pub fn content(&self) -> &[u8] {
        &self.content
    }

    /// The S3 object this attachment's content is still to be read from, if it is one.
    pub fn unread(&self) -> Option<&S3Ref> {
        self.reference.as_ref()
    }

    /// This attachment with the content read from its reference.
    pub fn read(mut self, content: Vec<u8>) -> Self {
        self.content = content;
        self.reference = None;
        self
    }

    /// Content id without angle brackets; present for inline parts (`cid:` references in html).
    pub fn content_id(&self) -> Option<&str> {
        self.content_id.as_deref()
    }
}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attachment")
            .field("filename", &self.filename)
            .field("content_type", &self.content_type)
            .field("content", &format_args!("<{} bytes>", self.content.len()))
            .field("content_id", &self.content_id)
            .finish()
    }
}

/// A message that passed every rule of the contract. Values of this type are only made by
/// [`parse_message`], so holding one means: the id is valid, there is a sender, at least one and
/// at most [`MAX_RECIPIENTS`] distinct recipients, a subject, a text or html body, and nothing
/// that becomes a header contains a line break or control character.
///
/// `Debug` shows the sizes of `text` and `html`, not their content (medical content must not
/// reach logs by accident).
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    id: String,
    from: Mailbox,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    bcc: Vec<Mailbox>,
    reply_to: Option<Mailbox>,
    subject: String,
    text: Option<String>,
    html: Option<String>,
    headers: Vec<(String, String)>,
    attachments: Vec<Attachment>,
    tags: Vec<String>,
    metadata: BTreeMap<String, MetadataValue>,
    campaign_id: Option<String>,
    user_id: Option<String>,
    tracking: Tracking,
    gateway: Option<String>,
    expires_at: Option<EpochMillis>,
    stream: Stream,
}

impl OutboundMessage {
    /// The idempotency key: 1–128 characters of `[A-Za-z0-9._:@-]` (the body's `id`, else the SQS
    /// message id).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `from` mailbox.
    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// The sender address (`from` without its name): what routing patterns and per-sender limits
    /// look at.
    pub fn sender(&self) -> &EmailAddress {
        self.from.address()
    }

    /// `to` recipients, de-duplicated, in message order.
    pub fn to(&self) -> &[Mailbox] {
        &self.to
    }

    /// `cc` recipients, without any address already in `to`.
    pub fn cc(&self) -> &[Mailbox] {
        &self.cc
    }

    /// `bcc` recipients, without any address already in `to` or `cc`.
    pub fn bcc(&self) -> &[Mailbox] {
        &self.bcc
    }

    /// Every recipient with its list, `to` first, then `cc`, then `bcc`. No address appears twice.
    pub fn recipients(&self) -> impl Iterator<Item = (RecipientKind, &Mailbox)> {
        let tag = |kind| move |m| (kind, m);
        self.to
            .iter()
            .map(tag(RecipientKind::To))
            .chain(self.cc.iter().map(tag(RecipientKind::Cc)))
            .chain(self.bcc.iter().map(tag(RecipientKind::Bcc)))
    }

    /// This message without the recipients for which `drop` is true (the sender leaves out
    /// suppressed addresses); every other field is unchanged. `None` when no recipient would
    /// remain, since a message must have one.
    #[must_use]
    pub fn without_recipients(&self, mut drop: impl FnMut(&EmailAddress) -> bool) -> Option<Self> {
        let mut keep = |list: &[Mailbox]| -> Vec<Mailbox> {
            list.iter()
                .filter(|m| !drop(m.address()))
                .cloned()
                .collect()
        };
        let (to, cc, bcc) = (keep(&self.to), keep(&self.cc), keep(&self.bcc));
        if to.is_empty() && cc.is_empty() && bcc.is_empty() {
            return None;
        }
        Some(Self {
            to,
            cc,
            bcc,
            ..self.clone()
        })
    }

    /// Number of distinct recipients (1 ..= [`MAX_RECIPIENTS`]): the unit of every rate limit.
    pub fn recipient_count(&self) -> usize {
        self.to.len() + self.cc.len() + self.bcc.len()
    }

    /// The `reply_to` mailbox, if any.
    pub fn reply_to(&self) -> Option<&Mailbox> {
        self.reply_to.as_ref()
    }

    /// The subject: non-empty, header-safe, at most [`MAX_HEADER_VALUE_LEN`] characters.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The plain-text body, if non-empty.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// The html body, if non-empty.
    pub fn html(&self) -> Option<&str> {
        self.html.as_deref()
    }

    /// Custom headers `(name, value)` in message order; names unique case-insensitively, none
    /// forbidden, values header-safe.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// Attachments in message order.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Whether some attachment is still a reference to read ([`Attachment::unread`]): such a
    /// message must not be handed to a provider.
    pub fn has_unread_attachments(&self) -> bool {
        self.attachments.iter().any(|a| a.reference.is_some())
    }

    /// This message with the attachment at each index of `contents` read.
    pub fn with_read_attachments(mut self, contents: Vec<(usize, Vec<u8>)>) -> Self {
        for (i, content) in contents {
            if let Some(a) = self.attachments.get_mut(i) {
                *a = a.clone().read(content);
            }
        }
        self
    }

    /// Tags in message order (non-empty, header-safe, at most [`MAX_LABEL_LEN`] characters).
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// Metadata by key (keys non-empty and header-safe).
    pub fn metadata(&self) -> &BTreeMap<String, MetadataValue> {
        &self.metadata
    }

    /// Campaign id, if any.
    pub fn campaign_id(&self) -> Option<&str> {
        self.campaign_id.as_deref()
    }

    /// Id of the user on whose behalf the message is sent, if any.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// Requested tracking.
    pub fn tracking(&self) -> Tracking {
        self.tracking
    }

    /// The gateway id the message is pinned to, if any. Whether such a gateway exists is checked
    /// against the configuration by the router, not here.
    pub fn gateway(&self) -> Option<&str> {
        self.gateway.as_deref()
    }

    /// The send-by time (epoch ms), if the message has one: not sent once it has passed,
    /// recorded `failed` instead ("expired").
    pub fn expires_at(&self) -> Option<EpochMillis> {
        self.expires_at
    }

    /// The stream the message belongs to ([`Stream::Transactional`] unless the body says
    /// otherwise): which suppressions apply to its recipients.
    pub fn stream(&self) -> Stream {
        self.stream
    }
}

/// The kind of mail a message is, which decides which suppressions apply to it
/// (ARCHITECTURE §3.6): an unsubscribe from a newsletter must not stop appointment or results
/// mail.
///
/// The default is [`Transactional`](Self::Transactional): a message that does not say must not
/// be blocked by a newsletter unsubscribe, so the senders of bulk mail are the ones who must
/// declare it. A hard bounce blocks every stream whatever the message says.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Mail a person needs because of something they are part of (appointments, results,
    /// invoices).
    #[default]
    Transactional,
    /// Mail sent to many at once (newsletters, campaigns), which a recipient may opt out of.
    Bulk,
}

impl Stream {
    /// Every stream, in a fixed order.
    pub const ALL: [Self; 2] = [Self::Transactional, Self::Bulk];

    /// The name in the message contract and in stored state: `transactional` or `bulk`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transactional => "transactional",
            Self::Bulk => "bulk",
        }
    }

    /// Parses a name written by [`as_str`](Self::as_str) (exact, lower case).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for OutboundMessage {
    /// Content is medical and addresses are personal data: `Debug` (and so any log line built
    /// from it) shows the id, the sender's domain, recipient counts and sizes, never addresses,
    /// the subject, bodies, header values or metadata values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = |s: Option<&str>| s.map(|s| format!("<{} bytes>", s.len()));
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        let metadata_keys: Vec<&String> = self.metadata.keys().collect();
        f.debug_struct("OutboundMessage")
            .field("id", &self.id)
            .field("sender_domain", &self.from.address().domain())
            .field("to", &self.to.len())
            .field("cc", &self.cc.len())
            .field("bcc", &self.bcc.len())
            .field("reply_to", &self.reply_to.is_some())
            .field("subject", &size(Some(&self.subject)))
            .field("text", &size(self.text.as_deref()))
            .field("html", &size(self.html.as_deref()))
            .field("headers", &header_names)
            .field("attachments", &self.attachments.len())
            .field("tags", &self.tags.len())
            .field("metadata_keys", &metadata_keys)
            .field("campaign_id", &self.campaign_id)
            .field("tracking", &self.tracking)
            .field("gateway", &self.gateway)
            .field("expires_at", &self.expires_at)
            .field("stream", &self.stream)
            .finish()
    }
}

/// The rule a field broke. `Display` is the text after `field: ` in a [`FieldError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("larger than {max} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        max: usize,
    },
    /// The body is not JSON (the parser's description, which names a position, not content).
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    /// A required field is absent or `null`.
    #[error("required")]
    Required,
    /// A key the contract does not define.
    #[error("unknown field")]
    UnknownField,
    /// A key given twice in the same object.
    #[error("duplicate field")]
    DuplicateField,
    /// The JSON type is wrong; the text says what was expected.
    #[error("expected {0}")]
    WrongType(&'static str),
    /// A CR, LF or Unicode line separator in a value that becomes a header.
    #[error("contains a line break")]
    LineBreak,
    /// A NUL character.
    #[error("contains a NUL character")]
    Nul,
    /// Another control character in a value that becomes a header.
    #[error("contains a control character")]
    ControlCharacter,
    /// An empty string where a value is needed.
    #[error("must not be empty")]
    Empty,
    /// A string longer than its limit.
    #[error("longer than {max} characters")]
    TooLong {
        /// The limit in characters.
        max: usize,
    },
    /// An address or mailbox that does not parse.
    #[error(transparent)]
    Address(AddressError),
    /// `id` breaks its pattern.
    #[error("must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ -")]
    InvalidId,
    /// Neither the body nor the queue supplied an id.
    #[error("required (the body has no id and there is no queue message id)")]
    MissingId,
    /// `to`, `cc` and `bcc` are all empty or absent.
    #[error("one of to, cc or bcc must name a recipient")]
    NoRecipients,
    /// More distinct recipients than [`MAX_RECIPIENTS`].
    #[error("more than {max} recipients across to, cc and bcc")]
    TooManyRecipients {
        /// The limit.
        max: usize,
    },
    /// More entries than the field allows.
    #[error("more than {max} entries")]
    TooManyEntries {
        /// The limit.
        max: usize,
    },
    /// The entries together are larger than the field allows.
    #[error("larger than {max} bytes in total")]
    TooLargeInTotal {
        /// The limit in bytes.
        max: usize,
    },
    /// Neither `text` nor `html` is given and non-empty.
    #[error("one of text or html is required")]
    NoBody,
    /// A custom header name that is not 1–126 printable ASCII characters without `:`.
    #[error("header names must be 1 to 126 printable ASCII characters without ':'")]
    InvalidHeaderName,
    /// A custom header the gateway or the provider owns.
    #[error("custom headers may not set {name}")]
    ForbiddenHeader {
        /// The header name as the message wrote it (already checked to be printable ASCII).
        name: String,
    },
    /// The same custom header twice, compared case-insensitively.
    #[error("header given twice (names are case-insensitive)")]
    DuplicateHeader,
    /// Attachment content that is not standard padded base64.
    #[error("not valid base64 (standard alphabet, padded, no line breaks)")]
    InvalidBase64,
    /// An attachment reference (`s3`) that cannot be one.
    #[error("{0}")]
    InvalidReference(&'static str),
    /// An attachment content type that is not `type/subtype`.
    #[error("not a MIME type (type/subtype)")]
    InvalidContentType,
    /// A content id with spaces, angle brackets or non-ASCII characters.
    #[error("content ids must be 1 to 250 printable ASCII characters without '<' or '>'")]
    InvalidContentId,
    /// A `gateway` value that cannot be a gateway id.
    #[error("must be a gateway id (1 to 64 characters of A-Z a-z 0-9 . _ -)")]
    InvalidGatewayId,
    /// A `stream` value other than the streams [`Stream`] names.
    #[error("must be \"transactional\" or \"bulk\"")]
    InvalidStream,
}

impl From<AddressError> for Problem {
    fn from(e: AddressError) -> Self {
        // The injection checks are the same rule wherever they fire, so they share one variant.
        match e {
            AddressError::LineBreak => Self::LineBreak,
            AddressError::Nul => Self::Nul,
            AddressError::ControlCharacter => Self::ControlCharacter,
            other => Self::Address(other),
        }
    }
}

/// One broken rule: the JSON path of the field and the problem. Displays as `field: problem`,
/// e.g. `to[2]: not an email address` or `headers.Subject: custom headers may not set Subject`.
///
/// Paths use `.key` and `[index]`; a key that is not plain printable ASCII (or is very long) is
/// shown escaped and truncated as `["…"]`, so a hostile key cannot inject into logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// JSON path of the field (`body` for the body as a whole).
    pub field: String,
    /// The rule it broke.
    pub problem: Problem,
}

/// Why a body is not a valid outbound message: every problem found (at least one), unknown and
/// repeated keys first, then the contract's fields in the order of ARCHITECTURE §2.1. Such a message is
/// permanently invalid (a poison message): retrying cannot help.
///
/// `Display` joins the problems with `"; "`. At most [`MAX_REPORTED_PROBLEMS`] are kept; the
/// text then ends with `; and N more problems`.
///
/// The error also carries what could be salvaged from the body ([`id`](Self::id),
/// [`sender`](Self::sender), [`recipients`](Self::recipients)), because a rejection is recorded
/// under the message id and reported to the customer per recipient, like any other outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageError {
    errors: Vec<FieldError>,
    omitted: usize,
    id: Option<String>,
    sender: Option<EmailAddress>,
    recipients: Vec<(RecipientKind, Mailbox)>,
}

impl MessageError {
    /// The problems found (at most [`MAX_REPORTED_PROBLEMS`]).
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// How many further problems were found but not kept.
    pub fn omitted(&self) -> usize {
        self.omitted
    }

    /// The message id to record the rejection under: the body's `id` if it was valid, else the
    /// fallback (SQS message id) if the body had no `id` and the fallback is valid. `None` when
    /// the body was not a JSON object or its `id` was invalid; the caller then records it under
    /// the SQS message id.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The sender, if `from` was valid.
    pub fn sender(&self) -> Option<&EmailAddress> {
        self.sender.as_ref()
    }

    /// The recipients that were valid, de-duplicated, `to` then `cc` then `bcc` (may be empty).
    pub fn recipients(&self) -> &[(RecipientKind, Mailbox)] {
        &self.recipients
    }

    fn single(field: &str, problem: Problem) -> Self {
        Self {
            errors: vec![FieldError {
                field: field.to_owned(),
                problem,
            }],
            omitted: 0,
            id: None,
            sender: None,
            recipients: Vec::new(),
        }
    }
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        if self.omitted > 0 {
            write!(f, "; and {} more problems", self.omitted)?;
        }
        Ok(())
    }
}

impl std::error::Error for MessageError {}

/// The body a producer enqueues, given an idempotency key when it has none: an `id` of `gw-`
/// and 32 random hex digits is written into it (the JSON is re-serialised), and returned with
/// the id. A body that names its `id` comes back unchanged.
///
/// Why: a message without `id` is keyed by its SQS message id, and every `SendMessage` (an SDK
/// retry after a lost answer included) creates a new one, so a retried enqueue would be sent
/// twice. With the id in the body, every copy has the same key and the ledger lets one through
/// (within [`crate::ledger::RETENTION_MS`]). `gateway send` and the local enqueue route use it;
/// producers should set `id` themselves (docs/RELIABILITY.md, "Idempotent enqueueing").
/// `None` when the body is not a JSON object (validate it first).
pub fn with_id(body: &str) -> Option<(String, String)> {
    let mut value: serde_json::Value = serde_json::from_str(body).ok()?;
    let object = value.as_object_mut()?;
    if let Some(id) = object.get("id").and_then(serde_json::Value::as_str) {
        return Some((body.to_owned(), id.to_owned()));
    }
    let id = format!(
        "gw-{:016x}{:016x}",
        crate::retry::random_below(u64::MAX),
        crate::retry::random_below(u64::MAX)
    );
    object.insert("id".to_owned(), serde_json::Value::from(id.as_str()));
    Some((serde_json::to_string(&value).ok()?, id))
}

/// Parses and validates one SQS message body.
///
/// `fallback_id` is the SQS message id, used when the body has no `id` (it must satisfy the same
/// pattern). Never panics; refuses bodies over [`MAX_BODY_BYTES`] before parsing them. On failure
/// the error lists every problem found (see the module docs for the rules).
pub fn parse_message(
    body: &[u8],
    fallback_id: Option<&str>,
) -> Result<OutboundMessage, MessageError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(MessageError::single(
            "body",
            Problem::BodyTooLarge {
                max: MAX_BODY_BYTES,
            },
        ));
    }
    let json: Json = serde_json::from_slice(body)
        .map_err(|e| MessageError::single("body", Problem::InvalidJson(e.to_string())))?;
    let Json::Object(entries) = &json else {
        return Err(MessageError::single(
            "body",
            Problem::WrongType("a JSON object"),
        ));
    };
    let mut r = Report::default();
    let [
        id,
        from,
        to,
        cc,
        bcc,
        reply_to,
        subject,
        text,
        html,
        headers,
        attachments,
        tags,
        metadata,
        campaign_id,
        user_id,
        tracking,
        gateway,
        expires_at,
        stream,
    ] = fields(
        entries,
        [
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
        ],
        "",
        &mut r,
    );

    let id = parse_id(id, fallback_id, &mut r);
    let from = required(from, "from", &mut r).and_then(|v| mailbox(v, "from", &mut r));
    let reply_to = reply_to.and_then(|v| {
        if matches!(v, Json::Array(_)) {
            r.add(
                "reply_to".into(),
                Problem::WrongType("one address (a string or an object with email and name)"),
            );
            return None;
        }
        mailbox(v, "reply_to", &mut r)
    });
    let (to, cc, bcc) = recipients([to, cc, bcc], &mut r);
    let subject = required(subject, "subject", &mut r)
        .and_then(|v| header_text(v, "subject", MAX_HEADER_VALUE_LEN, &mut r));
    let before_bodies = r.len();
    let text = text.and_then(|v| body_text(v, "text", &mut r));
    let html = html.and_then(|v| body_text(v, "html", &mut r));
    // A body that is present but broken already has its own error; "one is required" would
    // only repeat it.
    if text.is_none() && html.is_none() && r.len() == before_bodies {
        r.add("text".into(), Problem::NoBody);
    }
    let headers = headers.map_or_else(Vec::new, |v| custom_headers(v, &mut r));
    let attachments = attachments.map_or_else(Vec::new, |v| parse_attachments(v, &mut r));
    let tags = tags.map_or_else(Vec::new, |v| parse_tags(v, &mut r));
    let metadata = metadata.map_or_else(BTreeMap::new, |v| parse_metadata(v, &mut r));
    let campaign_id =
        campaign_id.and_then(|v| header_text(v, "campaign_id", MAX_LABEL_LEN, &mut r));
    let user_id = user_id.and_then(|v| header_text(v, "user_id", MAX_LABEL_LEN, &mut r));
    let tracking = tracking.map_or_else(Tracking::default, |v| parse_tracking(v, &mut r));
    let gateway = gateway.and_then(|v| parse_gateway(v, &mut r));
    let expires_at = expires_at.and_then(|v| parse_expires_at(v, &mut r));
    let stream = stream.map_or(Some(Stream::default()), |v| parse_stream(v, &mut r));

    match (id, from, subject, stream) {
        (Some(id), Some(from), Some(subject), Some(stream)) if r.is_empty() => {
            Ok(OutboundMessage {
                id,
                from,
                to,
                cc,
                bcc,
                reply_to,
                subject,
                text,
                html,
                headers,
                attachments,
                tags,
                metadata,
                campaign_id,
                user_id,
                tracking,
                gateway,
                expires_at,
                stream,
            })
        }
        // Every field that came out `None` has reported a problem, so `r` is not empty here.
        (id, from, _, _) => Err(rejection(r, id, from, (to, cc, bcc))),
    }
}

/// The error for a body that broke at least one rule, with what could be salvaged.
fn rejection(
    r: Report,
    id: Option<String>,
    from: Option<Mailbox>,
    (to, cc, bcc): RecipientLists,
) -> MessageError {
    let recipients = [
        (RecipientKind::To, to),
        (RecipientKind::Cc, cc),
        (RecipientKind::Bcc, bcc),
    ]
    .into_iter()
    .flat_map(|(kind, list)| list.into_iter().map(move |m| (kind, m)))
    .collect();
    MessageError {
        errors: r.errors,
        omitted: r.omitted,
        id,
        sender: from.map(|m| m.address().clone()),
        recipients,
    }
}

/// A JSON value that keeps object entries in document order, duplicates included, so that
/// header order survives and a repeated key is reported instead of silently overwritten.
#[derive(Debug)]
enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Json>()? {
            entries.push(entry);
        }
        Ok(Json::Object(entries))
    }
}

/// Problems collected so far, capped at [`MAX_REPORTED_PROBLEMS`].
#[derive(Default)]
struct Report {
    errors: Vec<FieldError>,
    omitted: usize,
}

impl Report {
    fn add(&mut self, field: String, problem: Problem) {
        if self.errors.len() < MAX_REPORTED_PROBLEMS {
            self.errors.push(FieldError { field, problem });
        } else {
            self.omitted += 1;
        }
    }

    fn len(&self) -> usize {
        self.errors.len() + self.omitted
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Longest key shown in a field path; longer keys are truncated.
const MAX_PATH_KEY_CHARS: usize = 64;

/// `parent.key`, or `parent["escaped"]` when the key is not plain printable ASCII or holds
/// characters that would make the path ambiguous (`.`, `[`, `]`, `"`, `\`, `:`).
fn key_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= MAX_PATH_KEY_CHARS
        && key
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b".[]\"\\:".contains(&b));
    if plain {
        return if parent.is_empty() {
            key.to_owned()
        } else {
            format!("{parent}.{key}")
        };
    }
    let mut escaped: String = key
        .chars()
        .take(MAX_PATH_KEY_CHARS)
        .flat_map(char::escape_default)
        .collect();
    if key.chars().nth(MAX_PATH_KEY_CHARS).is_some() {
        escaped.push('…');
    }
    format!("{parent}[\"{escaped}\"]")
}

/// Picks the named keys out of an object, reporting unknown and repeated keys. `null` reads as
/// absent.
fn fields<'a, const N: usize>(
    entries: &'a [(String, Json)],
    names: [&str; N],
    parent: &str,
    r: &mut Report,
) -> [Option<&'a Json>; N] {
    let mut found: [Option<&'a Json>; N] = [None; N];
    let mut seen = [false; N];
    for (key, value) in entries {
        let Some(i) = names.iter().position(|n| n == key) else {
            r.add(key_path(parent, key), Problem::UnknownField);
            continue;
        };
        if seen[i] {
            r.add(key_path(parent, key), Problem::DuplicateField);
            continue;
        }
        seen[i] = true;
        if !matches!(value, Json::Null) {
            found[i] = Some(value);
        }
    }
    found
}

fn required<'a>(v: Option<&'a Json>, path: &str, r: &mut Report) -> Option<&'a Json> {
    if v.is_none() {
        r.add(path.to_owned(), Problem::Required);
    }
    v
}

fn string<'a>(v: &'a Json, path: &str, r: &mut Report) -> Option<&'a str> {
    if let Json::String(s) = v {
        Some(s)
    } else {
        r.add(path.to_owned(), Problem::WrongType("a string"));
        None
    }
}

/// A non-empty, header-safe string of at most `max` characters.
fn header_text(v: &Json, path: &str, max: usize, r: &mut Report) -> Option<String> {
    let s = string(v, path, r)?;
    checked_header_text(s, path, max, r).map(str::to_owned)
}

fn checked_header_text<'a>(s: &'a str, path: &str, max: usize, r: &mut Report) -> Option<&'a str> {
    let problem = if let Err(e) = check_header_text(s) {
        e.into()
    } else if s.is_empty() {
        Problem::Empty
    } else if s.chars().nth(max).is_some() {
        Problem::TooLong { max }
    } else {
        return Some(s);
    };
    r.add(path.to_owned(), problem);
    None
}

fn parse_id(v: Option<&Json>, fallback: Option<&str>, r: &mut Report) -> Option<String> {
    let id = match v {
        Some(v) => string(v, "id", r)?,
        None => match fallback {
            Some(f) => f,
            None => {
                r.add("id".into(), Problem::MissingId);
                return None;
            }
        },
    };
    let valid = (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b));
    if valid {
        Some(id.to_owned())
    } else {
        r.add("id".into(), Problem::InvalidId);
        None
    }
}

const ADDRESS_EXPECTED: &str = "an address (a string or an object with email and name)";

/// `"addr"`, `"Name <addr>"` or `{"email": "addr", "name": "Name"}`.
fn mailbox(v: &Json, path: &str, r: &mut Report) -> Option<Mailbox> {
    match v {
        Json::String(s) => match Mailbox::parse(s) {
            Ok(m) => Some(m),
            Err(e) => {
                r.add(path.to_owned(), e.into());
                None
            }
        },
        Json::Object(entries) => {
            let [email, name] = fields(entries, ["email", "name"], path, r);
            let email_path = format!("{path}.email");
            let address = required(email, &email_path, r)
                .and_then(|e| string(e, &email_path, r))
                .and_then(|e| match EmailAddress::parse(e) {
                    Ok(a) => Some(a),
                    Err(err) => {
                        r.add(email_path.clone(), err.into());
                        None
                    }
                });
            let name_path = format!("{path}.name");
            // A missing or empty name is fine; only a broken one is an error. It is checked on
            // its own so that a broken address does not hide a broken name.
            let name = match name.map(|n| string(n, &name_path, r)) {
                None => Ok(None),
                Some(None) => Err(()),
                Some(Some(n)) => match check_header_text(n) {
                    Ok(()) => Ok(Some(n)),
                    Err(e) => {
                        r.add(name_path.clone(), e.into());
                        Err(())
                    }
                },
            };
            let (Some(address), Ok(name)) = (address, name) else {
                return None;
            };
            match Mailbox::new(name, address) {
                Ok(m) => Some(m),
                Err(e) => {
                    r.add(name_path, e.into());
                    None
                }
            }
        }
        _ => {
            r.add(path.to_owned(), Problem::WrongType(ADDRESS_EXPECTED));
            None
        }
    }
}

type RecipientLists = (Vec<Mailbox>, Vec<Mailbox>, Vec<Mailbox>);

/// Parses `to`, `cc`, `bcc`, drops repeated addresses (first occurrence wins) and checks the
/// recipient count.
fn recipients(lists: [Option<&Json>; 3], r: &mut Report) -> RecipientLists {
    let mut seen = HashSet::new();
    let mut given = 0usize;
    let mut out: [Vec<Mailbox>; 3] = Default::default();
    let kinds = [RecipientKind::To, RecipientKind::Cc, RecipientKind::Bcc];
    for ((list, kind), out) in lists.into_iter().zip(kinds).zip(out.iter_mut()) {
        let Some(list) = list else { continue };
        let Json::Array(items) = list else {
            r.add(
                kind.as_str().to_owned(),
                Problem::WrongType("an array of addresses"),
            );
            // A list of the wrong type still means the client meant to name recipients.
            given += 1;
            continue;
        };
        given += items.len();
        for (i, item) in items.iter().enumerate() {
            let path = format!("{kind}[{i}]");
            if let Some(m) = mailbox(item, &path, r)
                && seen.insert(m.address().clone())
            {
                out.push(m);
            }
        }
    }
    let count = seen.len();
    let bytes: usize = seen.iter().map(|a| a.as_str().len()).sum();
    if bytes > MAX_RECIPIENT_BYTES {
        r.add(
            "to".into(),
            Problem::TooLargeInTotal {
                max: MAX_RECIPIENT_BYTES,
            },
        );
    }
    if given == 0 {
        r.add("to".into(), Problem::NoRecipients);
    } else if count > MAX_RECIPIENTS {
        r.add(
            "to".into(),
            Problem::TooManyRecipients {
                max: MAX_RECIPIENTS,
            },
        );
    }
    let [to, cc, bcc] = out;
    (to, cc, bcc)
}

/// `text` or `html`: any string without NUL; empty reads as absent.
fn body_text(v: &Json, path: &str, r: &mut Report) -> Option<String> {
    let s = string(v, path, r)?;
    if s.contains('\0') {
        r.add(path.to_owned(), Problem::Nul);
        return None;
    }
    (!s.is_empty()).then(|| s.to_owned())
}

fn custom_headers(v: &Json, r: &mut Report) -> Vec<(String, String)> {
    let Json::Object(entries) = v else {
        r.add(
            "headers".into(),
            Problem::WrongType("an object of header names to values"),
        );
        return Vec::new();
    };
    if entries.len() > MAX_HEADERS {
        r.add(
            "headers".into(),
            Problem::TooManyEntries { max: MAX_HEADERS },
        );
        return Vec::new();
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(entries.len());
    // Lower-cased names seen so far: a set keeps the repeat check linear in the header count.
    let mut seen = HashSet::new();
    for (name, value) in entries {
        let path = key_path("headers", name);
        let name_ok = (1..=MAX_HEADER_NAME_LEN).contains(&name.len())
            && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
        let problem = if !name_ok {
            Some(Problem::InvalidHeaderName)
        } else if is_forbidden_header(name) {
            Some(Problem::ForbiddenHeader { name: name.clone() })
        } else if !seen.insert(name.to_ascii_lowercase()) {
            Some(Problem::DuplicateHeader)
        } else {
            None
        };
        if let Some(problem) = problem {
            r.add(path, problem);
            continue;
        }
        if let Some(value) = header_text(value, &path, MAX_HEADER_VALUE_LEN, r) {
            out.push((name.clone(), value));
        }
    }
    if out.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() > MAX_HEADER_BYTES {
        r.add(
            "headers".into(),
            Problem::TooLargeInTotal {
                max: MAX_HEADER_BYTES,
            },
        );
    }
    out
}

fn parse_attachments(v: &Json, r: &mut Report) -> Vec<Attachment> {
    let Json::Array(items) = v else {
        r.add(
            "attachments".into(),
            Problem::WrongType("an array of attachments"),
        );
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| attachment(item, &format!("attachments[{i}]"), r))
        .collect()
}

fn attachment(v: &Json, path: &str, r: &mut Report) -> Option<Attachment> {
    let Json::Object(entries) = v else {
        r.add(
            path.to_owned(),
            Problem::WrongType("an object with filename, content_type and content"),
        );
        return None;
    };
    let [filename, content_type, content, content_id, s3] = fields(
        entries,
        ["filename", "content_type", "content", "content_id", "s3"],
        path,
        r,
    );
    let p = |f: &str| format!("{path}.{f}");
    let filename = required(filename, &p("filename"), r)
        .and_then(|v| header_text(v, &p("filename"), MAX_FILENAME_LEN, r));
    let content_type = match content_type {
        None => Some(DEFAULT_CONTENT_TYPE.to_owned()),
        Some(v) => header_text(v, &p("content_type"), MAX_HEADER_VALUE_LEN, r).and_then(|ct| {
            if is_mime_type(&ct) {
                Some(ct)
            } else {
                r.add(p("content_type"), Problem::InvalidContentType);
                None
            }
        }),
    };
    let (content, reference) = match (content, s3) {
        (Some(_), Some(_)) => {
            r.add(
                p("s3"),
                Problem::InvalidReference("give content or s3, not both"),
            );
            (None, None)
        }
        (None, Some(v)) => match s3_ref(v, &p("s3"), r) {
            Some(reference) => (Some(Vec::new()), Some(reference)),
            None => (None, None),
        },
        (content, None) => (inline(content, &p("content"), r), None),
    };
    let content_id = match content_id {
        None => Ok(None),
        Some(v) => match string(v, &p("content_id"), r) {
            None => Err(()),
            Some(cid) if is_content_id(cid) => Ok(Some(cid.to_owned())),
            Some(cid) => {
                let problem = check_header_text(cid)
                    .err()
                    .map_or(Problem::InvalidContentId, Problem::from);
                r.add(p("content_id"), problem);
                Err(())
            }
        },
    };
    let (Some(filename), Some(content_type), Some(content), Ok(content_id)) =
        (filename, content_type, content, content_id)
    else {
        return None;
    };
    Some(Attachment {
        filename,
        content_type,
        content,
        content_id,
        reference,
    })
}

/// Inline content: required, base64.
fn inline(v: Option<&Json>, path: &str, r: &mut Report) -> Option<Vec<u8>> {
    required(v, path, r)
        .and_then(|v| string(v, path, r))
        .and_then(
            |s| match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(bytes) => Some(bytes),
                Err(_) => {
                    r.add(path.to_owned(), Problem::InvalidBase64);
                    None
                }
            },
        )
}

/// `s3`: `{"bucket", "key", "size", "sha256"?}`.
fn s3_ref(v: &Json, path: &str, r: &mut Report) -> Option<S3Ref> {
    let Json::Object(entries) = v else {
        r.add(
            path.to_owned(),
            Problem::WrongType("an object with bucket, key, size and optionally sha256"),
        );
        return None;
    };
    let [bucket, key, size, sha256] = fields(entries, ["bucket", "key", "size", "sha256"], path, r);
    let p = |f: &str| format!("{path}.{f}");
    let bucket = required(bucket, &p("bucket"), r)
        .and_then(|v| string(v, &p("bucket"), r))
        .and_then(|b| {
            let ok = (3..=63).contains(&b.len())
                && b.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-'
                });
            if !ok {
                r.add(
                    p("bucket"),
                    Problem::InvalidReference("not an S3 bucket name (3 to 63 of a-z 0-9 . -)"),
                );
            }
            ok.then(|| b.to_owned())
        });
    let key = required(key, &p("key"), r)
        .and_then(|v| string(v, &p("key"), r))
        .and_then(|k| {
            let ok = !k.is_empty() && k.len() <= 1024 && !k.chars().any(char::is_control);
            if !ok {
                r.add(
                    p("key"),
                    Problem::InvalidReference(
                        "an S3 key is 1 to 1,024 bytes without control characters",
                    ),
                );
            }
            ok.then(|| k.to_owned())
        });
    let size = required(size, &p("size"), r).and_then(|v| {
        let n = match v {
            Json::Number(n) => n.as_u64(),
            _ => None,
        };
        match n {
            Some(n) if n <= MAX_REFERENCED_BYTES => Some(n),
            Some(_) => {
                r.add(
                    p("size"),
                    Problem::InvalidReference(
                        "larger than 30,000,000 bytes, more than any provider takes",
                    ),
                );
                None
            }
            None => {
                r.add(p("size"), Problem::WrongType("a whole number of bytes"));
                None
            }
        }
    });
    let sha256 = match sha256 {
        None => Some(None),
        Some(v) => string(v, &p("sha256"), r).and_then(|h| {
            let ok = h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit());
            if !ok {
                r.add(
                    p("sha256"),
                    Problem::InvalidReference("64 hexadecimal digits"),
                );
            }
            ok.then(|| Some(h.to_ascii_lowercase()))
        }),
    };
    Some(S3Ref {
        bucket: bucket?,
        key: key?,
        size: size?,
        sha256: sha256?,
    })
}

/// RFC 2045 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

/// `type/subtype`, optionally followed by `;` and parameters (not checked further: they are
/// header-safe already and the MIME builder writes them as given).
fn is_mime_type(s: &str) -> bool {
    let essence = s
        .split(';')
        .next()
        .unwrap_or_default()
        .trim_matches([' ', '\t']);
    essence
        .split_once('/')
        .is_some_and(|(t, sub)| is_token(t) && is_token(sub))
}

fn is_content_id(s: &str) -> bool {
    (1..=250).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
}

fn parse_tags(v: &Json, r: &mut Report) -> Vec<String> {
    let Json::Array(items) = v else {
        r.add("tags".into(), Problem::WrongType("an array of strings"));
        return Vec::new();
    };
    if items.len() > MAX_TAGS {
        r.add("tags".into(), Problem::TooManyEntries { max: MAX_TAGS });
        return Vec::new();
    }
    items
        .iter()
        .enumerate()
        .filter_map(|(i, t)| header_text(t, &format!("tags[{i}]"), MAX_LABEL_LEN, r))
        .collect()
}

fn parse_metadata(v: &Json, r: &mut Report) -> BTreeMap<String, MetadataValue> {
    let Json::Object(entries) = v else {
        r.add(
            "metadata".into(),
            Problem::WrongType("an object of keys to strings, numbers or booleans"),
        );
        return BTreeMap::new();
    };
    if entries.len() > MAX_METADATA_KEYS {
        r.add(
            "metadata".into(),
            Problem::TooManyEntries {
                max: MAX_METADATA_KEYS,
            },
        );
        return BTreeMap::new();
    }
    let mut out = BTreeMap::new();
    let mut seen = HashSet::new();
    for (key, value) in entries {
        let path = key_path("metadata", key);
        if !seen.insert(key.as_str()) {
            r.add(path, Problem::DuplicateField);
            continue;
        }
        let Some(key) = checked_header_text(key, &path, MAX_METADATA_KEY_LEN, r) else {
            continue;
        };
        let value = match value {
            Json::String(s) => {
                checked_header_text_allow_empty(s, &path, r).map(|s| MetadataValue::Text(s.into()))
            }
            Json::Number(n) => Some(MetadataValue::Number(n.clone())),
            Json::Bool(b) => Some(MetadataValue::Bool(*b)),
            _ => {
                r.add(path, Problem::WrongType("a string, number or boolean"));
                None
            }
        };
        if let Some(value) = value {
            out.insert(key.to_owned(), value);
        }
    }
    // As the record and the events carry it: compact JSON of the accepted entries.
    let compact: serde_json::Map<String, serde_json::Value> = out
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(v)))
        .collect();
    let bytes = serde_json::to_string(&compact).map_or(usize::MAX, |j| j.len());
    if bytes > MAX_METADATA_BYTES {
        r.add(
            "metadata".into(),
            Problem::TooLargeInTotal {
                max: MAX_METADATA_BYTES,
            },
        );
    }
    out
}

/// Metadata string values may be empty (a cleared field is a legitimate value).
fn checked_header_text_allow_empty<'a>(s: &'a str, path: &str, r: &mut Report) -> Option<&'a str> {
    match check_header_text(s) {
        Ok(()) => Some(s),
        Err(e) => {
            r.add(path.to_owned(), e.into());
            None
        }
    }
}

fn parse_tracking(v: &Json, r: &mut Report) -> Tracking {
    let Json::Object(entries) = v else {
        r.add(
            "tracking".into(),
            Problem::WrongType("an object with opens and clicks"),
        );
        return Tracking::default();
    };
    let [opens, clicks] = fields(entries, ["opens", "clicks"], "tracking", r);
    let mut flag = |v: Option<&Json>, path: &str| match v {
        None => None,
        Some(Json::Bool(b)) => Some(*b),
        Some(_) => {
            r.add(path.to_owned(), Problem::WrongType("a boolean"));
            None
        }
    };
    Tracking {
        opens: flag(opens, "tracking.opens"),
        clicks: flag(clicks, "tracking.clicks"),
    }
}

/// `expires_at`: an RFC 3339 timestamp with its offset (`2026-12-04T08:00:00Z`,
/// `2026-12-04T09:00:00+01:00`).
fn parse_expires_at(v: &Json, r: &mut Report) -> Option<EpochMillis> {
    let parsed = match v {
        Json::String(s) => crate::clock::parse_rfc3339(s),
        _ => None,
    };
    if parsed.is_none() {
        r.add(
            "expires_at".into(),
            Problem::WrongType(
                "an RFC 3339 timestamp with its offset, such as 2026-12-04T08:00:00Z",
            ),
        );
    }
    parsed
}

fn parse_gateway(v: &Json, r: &mut Report) -> Option<String> {
    let s = string(v, "gateway", r)?;
    let valid = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        Some(s.to_owned())
    } else {
        r.add("gateway".into(), Problem::InvalidGatewayId);
        None
    }
}

fn parse_stream(v: &Json, r: &mut Report) -> Option<Stream> {
    let s = string(v, "stream", r)?;
    let stream = Stream::parse(s);
    if stream.is_none() {
        r.add("stream".into(), Problem::InvalidStream);
    }
    stream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_without_id_gets_one_that_every_copy_keeps() {
        let body = r#"{"from": "dr@clinic.example", "to": ["p@example.org"], "subject": "s", "text": "t"}"#;
        let (with, id) = with_id(body).unwrap();
        assert!(id.starts_with("gw-") && id.len() == 35, "{id}");
        let parsed = parse_message(with.as_bytes(), Some("sqs-1")).unwrap();
        assert_eq!(parsed.id(), id, "the body's id, not the queue's");
        let (again, same) = with_id(&with).unwrap();
        assert_eq!(
            (again.as_str(), same.as_str()),
            (with.as_str(), id.as_str())
        );
        let (_, other) = with_id(body).unwrap();
        assert_ne!(other, id, "each unkeyed body gets its own id");
        assert!(with_id("[1]").is_none());
    }
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn base() -> Value {
        json!({
            "id": "m-1",
            "from": "Clinic <clinic@example.org>",
            "to": ["p@example.org"],
            "subject": "Your appointment",
            "text": "See you soon."
        })
    }

    fn parse(v: &Value) -> Result<OutboundMessage, MessageError> {
        parse_message(v.to_string().as_bytes(), None)
    }

    fn errors_of(v: &Value) -> Vec<String> {
        match parse(v) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors().iter().map(ToString::to_string).collect(),
        }
    }

    fn with(mutate: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
        let mut v = base();
        if let Value::Object(m) = &mut v {
            mutate(m);
        }
        v
    }

    fn set(key: &str, value: Value) -> Value {
        with(|m| {
            m.insert(key.to_owned(), value);
        })
    }

    fn without(key: &str) -> Value {
        with(|m| {
            m.remove(key);
        })
    }

    #[test]
    fn expires_at_is_an_rfc3339_time_with_its_offset() {
        let m = parse(&set("expires_at", json!("2026-12-04T09:00:00+01:00"))).unwrap();
        assert_eq!(m.expires_at(), Some(1_796_371_200_000));
        assert_eq!(parse(&base()).unwrap().expires_at(), None);
    }

    /// Each bound that keeps an outcome event inside the events queue and the provider option
    /// limits: exactly at the bound is accepted, one entry or one byte over is refused with
    /// the field and the limit named.
    #[test]
    fn sizes_that_events_and_providers_depend_on_are_bounded_to_the_byte() {
        let tags = |n: usize| {
            set(
                "tags",
                json!((0..n).map(|i| format!("t{i}")).collect::<Vec<_>>()),
            )
        };
        assert_eq!(errors_of(&tags(MAX_TAGS)), Vec::<String>::new());
        assert_eq!(
            errors_of(&tags(MAX_TAGS + 1)),
            ["tags: more than 10 entries"]
        );

        let keys = |n: usize| {
            let m: serde_json::Map<String, Value> =
                (0..n).map(|i| (format!("k{i}"), json!(i))).collect();
            set("metadata", Value::Object(m))
        };
        assert_eq!(errors_of(&keys(MAX_METADATA_KEYS)), Vec::<String>::new());
        assert_eq!(
            errors_of(&keys(MAX_METADATA_KEYS + 1)),
            ["metadata: more than 50 entries"]
        );
        let long_key = "k".repeat(MAX_METADATA_KEY_LEN + 1);
        assert_eq!(
            errors_of(&set("metadata", json!({ long_key.clone(): 1 }))),
            [format!(
                "metadata[\"{}…\"]: longer than 128 characters",
                "k".repeat(64)
            )]
        );
        // {"note":"…"} is 11 bytes around the value.
        let metadata = |value_len: usize| set("metadata", json!({"note": "x".repeat(value_len)}));
        assert_eq!(
            errors_of(&metadata(MAX_METADATA_BYTES - 11)),
            Vec::<String>::new()
        );
        assert_eq!(
            errors_of(&metadata(MAX_METADATA_BYTES - 10)),
            ["metadata: larger than 8192 bytes in total"]
        );

        let headers = |n: usize, value_len: usize| {
            let m: serde_json::Map<String, Value> = (0..n)
                .map(|i| (format!("X-H{i:02}"), json!("v".repeat(value_len))))
                .collect();
            set("headers", Value::Object(m))
        };
        assert_eq!(errors_of(&headers(MAX_HEADERS, 1)), Vec::<String>::new());
        assert_eq!(
            errors_of(&headers(MAX_HEADERS + 1, 1)),
            ["headers: more than 20 entries"]
        );
        // Four full headers (5 + 998 bytes each) and one of 5 + 79 bytes fill 4096 exactly.
        let full = |last: usize| {
            with(|m| {
                let mut h: serde_json::Map<String, Value> = (0..4)
                    .map(|i| {
                        (
                            format!("X-H{i:02}"),
                            json!("v".repeat(MAX_HEADER_VALUE_LEN)),
                        )
                    })
                    .collect();
                h.insert("X-H04".into(), json!("v".repeat(last)));
                m.insert("headers".into(), Value::Object(h));
            })
        };
        assert_eq!(errors_of(&full(79)), Vec::<String>::new());
        assert_eq!(
            errors_of(&full(80)),
            ["headers: larger than 4096 bytes in total"]
        );

        // 1000 distinct addresses of 100 bytes fill the 100,000 bytes exactly.
        let to = |last_len: usize| {
            // 64-byte local part, "@", a label and ".example.org": 100 bytes with a 23-byte label.
            let address =
                |i: usize, len: usize| format!("{i:0>64}@{}.example.org", "d".repeat(len - 77));
            let mut list: Vec<String> = (0..999).map(|i| address(i, 100)).collect();
            list.push(address(999, last_len));
            set("to", json!(list))
        };
        assert_eq!(errors_of(&to(100)), Vec::<String>::new());
        assert_eq!(
            errors_of(&to(101)),
            ["to: larger than 100000 bytes in total"]
        );
    }

    fn attachment_with(key: &str, value: Value) -> Value {
        let mut a =
            json!({"filename": "a.pdf", "content_type": "application/pdf", "content": "JVBERg=="});
        a[key] = value;
        set("attachments", json!([a]))
    }

    #[test]
    fn each_rule_reports_its_field_path_and_problem() {
        let long_name = "X".repeat(127);
        let cases: Vec<(Value, Vec<String>)> = vec![
            (set("id", json!("has space")), vec!["id: must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ -".into()]),
            (set("id", json!("a".repeat(129))), vec!["id: must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ -".into()]),
            (set("id", json!("")), vec!["id: must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ -".into()]),
            (set("id", json!(42)), vec!["id: expected a string".into()]),
            (without("id"), vec!["id: required (the body has no id and there is no queue message id)".into()]),
            (without("from"), vec!["from: required".into()]),
            (set("from", Value::Null), vec!["from: required".into()]),
            (set("from", json!("not-an-address")), vec!["from: not an email address".into()]),
            (set("from", json!("a\u{7}@example.org")), vec!["from: contains a control character".into()]),
            (set("from", json!(["a@example.org"])), vec!["from: expected an address (a string or an object with email and name)".into()]),
            (set("to", json!(["a@example.org", "b@example.org", "nope"])), vec!["to[2]: not an email address".into()]),
            (set("to", json!("a@example.org")), vec!["to: expected an array of addresses".into()]),
            (set("to", json!([])), vec!["to: one of to, cc or bcc must name a recipient".into()]),
            (set("cc", json!("a@example.org")), vec!["cc: expected an array of addresses".into()]),
            (set("bcc", json!([42])), vec!["bcc[0]: expected an address (a string or an object with email and name)".into()]),
            (set("to", json!(["Eve\r\nBcc: x@evil.example <e@example.org>"])), vec!["to[0]: contains a line break".into()]),
            (set("to", json!([{"email": "b@example.org", "name": "B\rC"}])), vec!["to[0].name: contains a line break".into()]),
            (set("to", json!([{"email": "b@example.org", "nmae": "B"}])), vec!["to[0].nmae: unknown field".into()]),
            (set("to", json!([{"email": "b@example", "name": "B\nC"}])), vec!["to[0].email: the domain is not a valid host name".into(), "to[0].name: contains a line break".into()]),
            (set("to", json!([{"name": "B"}])), vec!["to[0].email: required".into()]),
            (set("to", json!([{"email": "b@example"}])), vec!["to[0].email: the domain is not a valid host name".into()]),
            (set("to", json!(["\"a b\"@example.org"])), vec!["to[0]: quoted local parts are not supported".into()]),
            (set("reply_to", json!(["a@example.org"])), vec!["reply_to: expected one address (a string or an object with email and name)".into()]),
            (set("reply_to", json!("front desk")), vec!["reply_to: not an email address".into()]),
            (without("subject"), vec!["subject: required".into()]),
            (set("subject", json!("Hi\r\nBcc: x@evil.example")), vec!["subject: contains a line break".into()]),
            (set("subject", json!("Hi\0")), vec!["subject: contains a NUL character".into()]),
            (set("subject", json!("")), vec!["subject: must not be empty".into()]),
            (set("subject", json!("s".repeat(999))), vec!["subject: longer than 998 characters".into()]),
            (without("text"), vec!["text: one of text or html is required".into()]),
            (set("text", json!("")), vec!["text: one of text or html is required".into()]),
            (set("text", json!("a\0b")), vec!["text: contains a NUL character".into()]),
            (set("html", json!(5)), vec!["html: expected a string".into()]),
            (
                with(|m| {
                    let body = m.remove("text").unwrap_or_default();
                    m.insert("htlm".into(), body);
                }),
                vec!["htlm: unknown field".into(), "text: one of text or html is required".into()],
            ),
            (set("headers", json!({"Subject": "x"})), vec!["headers.Subject: custom headers may not set Subject".into()]),
            (set("headers", json!({"content-type": "text/plain"})), vec!["headers.content-type: custom headers may not set content-type".into()]),
            (set("headers", json!({"BCC": "x@example.org"})), vec!["headers.BCC: custom headers may not set BCC".into()]),
            (set("headers", json!({"X-SMTPAPI": "{}"})), vec!["headers.X-SMTPAPI: custom headers may not set X-SMTPAPI".into()]),
            (set("headers", json!({"x-gateway-message-id": "victim-1"})), vec!["headers.x-gateway-message-id: custom headers may not set x-gateway-message-id".into()]),
            (set("headers", json!({"x-mailgun-variables": "{}"})), vec!["headers.x-mailgun-variables: custom headers may not set x-mailgun-variables".into()]),
            (set("headers", json!({"X:Y": "v"})), vec!["headers[\"X:Y\"]: header names must be 1 to 126 printable ASCII characters without ':'".into()]),
            (set("headers", json!({"X Y": "v"})), vec!["headers[\"X Y\"]: header names must be 1 to 126 printable ASCII characters without ':'".into()]),
            (set("headers", json!({"X-\r\nBcc": "v"})), vec!["headers[\"X-\\r\\nBcc\"]: header names must be 1 to 126 printable ASCII characters without ':'".into()]),
            (set("headers", json!({&long_name: "v"})), vec![format!("headers[\"{}…\"]: header names must be 1 to 126 printable ASCII characters without ':'", "X".repeat(64))]),
            (set("headers", json!({"X-A": "a\r\nBcc: x@evil.example"})), vec!["headers.X-A: contains a line break".into()]),
            (set("headers", json!({"X-A": "a".repeat(999)})), vec!["headers.X-A: longer than 998 characters".into()]),
            (set("headers", json!({"X-A": 1})), vec!["headers.X-A: expected a string".into()]),
            (set("headers", json!({"X-A": "1", "x-a": "2"})), vec!["headers.x-a: header given twice (names are case-insensitive)".into()]),
            (set("headers", json!([["X-A", "1"]])), vec!["headers: expected an object of header names to values".into()]),
            (attachment_with("content", json!("not base64!")), vec!["attachments[0].content: not valid base64 (standard alphabet, padded, no line breaks)".into()]),
            (attachment_with("content", json!("JVBE\nRg==")), vec!["attachments[0].content: not valid base64 (standard alphabet, padded, no line breaks)".into()]),
            (attachment_with("content", json!("JVBERg")), vec!["attachments[0].content: not valid base64 (standard alphabet, padded, no line breaks)".into()]),
            (attachment_with("content", Value::Null), vec!["attachments[0].content: required".into()]),
            (attachment_with("filename", json!("")), vec!["attachments[0].filename: must not be empty".into()]),
            (attachment_with("filename", json!("a\n.pdf")), vec!["attachments[0].filename: contains a line break".into()]),
            (attachment_with("filename", Value::Null), vec!["attachments[0].filename: required".into()]),
            (attachment_with("content_type", json!("pdf")), vec!["attachments[0].content_type: not a MIME type (type/subtype)".into()]),
            (attachment_with("content_type", json!("text/plain\r\nX: y")), vec!["attachments[0].content_type: contains a line break".into()]),
            (attachment_with("content_id", json!("<logo>")), vec!["attachments[0].content_id: content ids must be 1 to 250 printable ASCII characters without '<' or '>'".into()]),
            (attachment_with("content_id", json!("lo\ngo")), vec!["attachments[0].content_id: contains a line break".into()]),
            (attachment_with("name", json!("a.pdf")), vec!["attachments[0].name: unknown field".into()]),
            (set("attachments", json!(["JVBERg=="])), vec!["attachments[0]: expected an object with filename, content_type and content".into()]),
            (set("tags", json!(["ok", "bad\n"])), vec!["tags[1]: contains a line break".into()]),
            (set("tags", json!("appointment")), vec!["tags: expected an array of strings".into()]),
            (set("tags", json!(["t".repeat(256)])), vec!["tags[0]: longer than 255 characters".into()]),
            (set("metadata", json!({"a\rb": "x"})), vec!["metadata[\"a\\rb\"]: contains a line break".into()]),
            (set("metadata", json!({"k": {"nested": 1}})), vec!["metadata.k: expected a string, number or boolean".into()]),
            (set("metadata", json!({"k": null})), vec!["metadata.k: expected a string, number or boolean".into()]),
            (set("metadata", json!({"k": "a\0"})), vec!["metadata.k: contains a NUL character".into()]),
            (set("metadata", json!({"": "x"})), vec!["metadata[\"\"]: must not be empty".into()]),
            (set("campaign_id", json!("flu\n2026")), vec!["campaign_id: contains a line break".into()]),
            (set("user_id", json!(42)), vec!["user_id: expected a string".into()]),
            (set("user_id", json!("u".repeat(256))), vec!["user_id: longer than 255 characters".into()]),
            (set("tracking", json!({"opens": "yes"})), vec!["tracking.opens: expected a boolean".into()]),
            (set("tracking", json!({"open": true})), vec!["tracking.open: unknown field".into()]),
            (set("tracking", json!(true)), vec!["tracking: expected an object with opens and clicks".into()]),
            (set("expires_at", json!("tomorrow")), vec!["expires_at: expected an RFC 3339 timestamp with its offset, such as 2026-12-04T08:00:00Z".into()]),
            (set("expires_at", json!("2026-12-04T08:00:00")), vec!["expires_at: expected an RFC 3339 timestamp with its offset, such as 2026-12-04T08:00:00Z".into()]),
            (set("expires_at", json!(1_795_910_400)), vec!["expires_at: expected an RFC 3339 timestamp with its offset, such as 2026-12-04T08:00:00Z".into()]),
            (set("gateway", json!("mailgun primary")), vec!["gateway: must be a gateway id (1 to 64 characters of A-Z a-z 0-9 . _ -)".into()]),
            (set("stream", json!("marketing")), vec!["stream: must be \"transactional\" or \"bulk\"".into()]),
            (set("stream", json!("Bulk")), vec!["stream: must be \"transactional\" or \"bulk\"".into()]),
            (set("stream", json!(["bulk"])), vec!["stream: expected a string".into()]),
        ];
        for (input, want) in cases {
            assert_eq!(errors_of(&input), want, "input: {input}");
        }
    }

    #[test]
    fn body_level_problems_are_reported_on_body() {
        let too_big = vec![b' '; MAX_BODY_BYTES + 1];
        let cases: [(&[u8], &str); 4] = [
            (b"{\"id\": ", "body: not valid JSON: "),
            (b"[1, 2]", "body: expected a JSON object"),
            (b"\"just a string\"", "body: expected a JSON object"),
            (&too_big, "body: larger than 1048576 bytes"),
        ];
        for (input, want) in cases {
            let err = parse_message(input, Some("sqs-1"))
                .err()
                .map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.starts_with(want)),
                "{err:?} should start with {want:?}"
            );
        }
    }

    #[test]
    fn a_repeated_key_is_an_error_not_a_silent_overwrite() {
        let body = br#"{"id":"m-1","from":"a@example.org","to":["a@example.org"],"to":["b@example.org"],"subject":"s","text":"t"}"#;
        let err = parse_message(body, None).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("to: duplicate field"));
    }

    #[test]
    fn every_problem_is_listed_and_joined_with_semicolons() {
        let v = json!({
            "from": "nope",
            "to": ["ok@example.org", "bad"],
            "subject": "a\nb",
            "headers": {"From": "x@example.org"},
            "htlm": "<p>x</p>"
        });
        let err = parse_message(v.to_string().as_bytes(), None)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "htlm: unknown field; id: required (the body has no id and there is no queue \
                 message id); from: not an email address; to[1]: not an email address; \
                 subject: contains a line break; text: one of text or html is required; \
                 headers.From: custom headers may not set From"
            )
        );
    }

    #[test]
    fn the_problem_list_is_capped_and_the_rest_counted() {
        let bad: Vec<Value> = (0..250).map(|_| json!("bad")).collect();
        let err = parse(&set("to", Value::Array(bad))).err();
        let Some(err) = err else {
            panic!("250 bad recipients were accepted");
        };
        assert_eq!(err.errors().len(), MAX_REPORTED_PROBLEMS);
        assert_eq!(err.omitted(), 150);
        assert!(err.to_string().ends_with("; and 150 more problems"));
    }

    #[test]
    fn a_rejection_carries_what_could_be_salvaged_for_the_record() {
        let v = with(|m| {
            m.insert(
                "to".into(),
                json!(["ok@example.org", "bad", "OK@example.org"]),
            );
            m.insert("bcc".into(), json!(["b@example.org"]));
            m.insert("subject".into(), json!("a\nb"));
        });
        let Err(err) = parse(&v) else {
            panic!("a subject with a line break was accepted");
        };
        assert_eq!(err.id(), Some("m-1"));
        assert_eq!(
            err.sender().map(EmailAddress::as_str),
            Some("clinic@example.org")
        );
        let recipients: Vec<(RecipientKind, &str)> = err
            .recipients()
            .iter()
            .map(|(k, m)| (*k, m.address().as_str()))
            .collect();
        assert_eq!(
            recipients,
            [
                (RecipientKind::To, "ok@example.org"),
                (RecipientKind::Bcc, "b@example.org")
            ]
        );

        let err = parse_message(br#"{"id": "bad id", "from": "nope"}"#, Some("sqs-1")).err();
        assert_eq!(
            err.as_ref().and_then(MessageError::id),
            None,
            "an invalid id is not salvaged"
        );
        assert_eq!(err.as_ref().and_then(MessageError::sender), None);
        let err = parse_message(br#"{"from": "a@example.org"}"#, Some("sqs-1")).err();
        assert_eq!(err.as_ref().and_then(MessageError::id), Some("sqs-1"));
        let err = parse_message(b"not json", Some("sqs-1")).err();
        assert_eq!(err.as_ref().and_then(MessageError::id), None);
    }

    #[test]
    fn the_id_falls_back_to_the_queue_message_id_only_when_absent() {
        let cases = [
            (base(), Some("sqs-1"), Ok("m-1")),
            (
                without("id"),
                Some("0f4e1c1a-7d0e-4a56-9c43-2b2e6c0f9d10"),
                Ok("0f4e1c1a-7d0e-4a56-9c43-2b2e6c0f9d10"),
            ),
            (set("id", Value::Null), Some("sqs-1"), Ok("sqs-1")),
            (
                without("id"),
                Some("bad id"),
                Err("id: must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ -".to_owned()),
            ),
            (
                set("id", json!("bad id")),
                Some("sqs-1"),
                Err("id: must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ -".to_owned()),
            ),
        ];
        for (input, fallback, want) in cases {
            let got = parse_message(input.to_string().as_bytes(), fallback);
            let got = got
                .as_ref()
                .map(OutboundMessage::id)
                .map_err(ToString::to_string);
            assert_eq!(
                got,
                want.as_deref().map_err(Clone::clone),
                "{input} / {fallback:?}"
            );
        }
    }

    #[test]
    fn the_design_example_parses_into_typed_fields() {
        // Raw text, not `json!`: `serde_json::Map` would sort the header names.
        let body = r#"{
            "id": "inv-2026-11-28-000123",
            "from": "Dr. Ada Lovelace <ada@clinic.example>",
            "to": ["patient@example.org", {"email": "b@example.org", "name": "B"}],
            "cc": [], "bcc": [],
            "reply_to": "frontdesk@clinic.example",
            "subject": "Your appointment",
            "text": "plain body", "html": "<p>html body</p>",
            "headers": {"X-Campaign": "flu-2026", "List-Unsubscribe": "<mailto:u@clinic.example>", "A-First": "1"},
            "attachments": [
                {"filename": "letter.pdf", "content_type": "application/pdf", "content": "JVBERi0xLjQK"},
                {"filename": "logo.png", "content": "", "content_id": "logo@clinic"}
            ],
            "tags": ["appointment"],
            "metadata": {"invitation_id": "123", "attempt": 2, "urgent": false},
            "campaign_id": "flu-2026", "user_id": "u-42",
            "tracking": {"opens": true, "clicks": false},
            "gateway": "mailgun-primary",
            "stream": "bulk"
        }"#;
        let m = parse_message(body.as_bytes(), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.stream(), Stream::Bulk);
        assert_eq!(m.id(), "inv-2026-11-28-000123");
        assert_eq!(m.from().name(), Some("Dr. Ada Lovelace"));
        assert_eq!(m.sender().as_str(), "ada@clinic.example");
        let recipients: Vec<(RecipientKind, String)> =
            m.recipients().map(|(k, mb)| (k, mb.to_string())).collect();
        assert_eq!(
            recipients,
            [
                (RecipientKind::To, "patient@example.org".to_owned()),
                (RecipientKind::To, "B <b@example.org>".to_owned()),
            ]
        );
        assert_eq!(m.recipient_count(), 2);
        assert_eq!(
            m.reply_to().map(ToString::to_string).as_deref(),
            Some("frontdesk@clinic.example")
        );
        assert_eq!(m.subject(), "Your appointment");
        assert_eq!(
            (m.text(), m.html()),
            (Some("plain body"), Some("<p>html body</p>"))
        );
        let names: Vec<&str> = m.headers().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["X-Campaign", "List-Unsubscribe", "A-First"],
            "document order kept"
        );
        assert_eq!(m.attachments()[0].content(), b"%PDF-1.4\n");
        assert_eq!(m.attachments()[0].content_type(), "application/pdf");
        assert_eq!(m.attachments()[1].content_type(), DEFAULT_CONTENT_TYPE);
        assert_eq!(m.attachments()[1].content_id(), Some("logo@clinic"));
        assert_eq!(m.tags(), ["appointment"]);
        let metadata: Vec<(&str, String)> = m
            .metadata()
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_string()))
            .collect();
        assert_eq!(
            metadata,
            [
                ("attempt", "2".to_owned()),
                ("invitation_id", "123".to_owned()),
                ("urgent", "false".to_owned())
            ]
        );
        let as_json: Vec<Value> = m.metadata().values().map(Value::from).collect();
        assert_eq!(as_json, [json!(2), json!("123"), json!(false)]);
        assert_eq!(
            (m.campaign_id(), m.user_id()),
            (Some("flu-2026"), Some("u-42"))
        );
        assert_eq!(
            m.tracking(),
            Tracking {
                opens: Some(true),
                clicks: Some(false)
            }
        );
        assert_eq!(m.gateway(), Some("mailgun-primary"));
    }

    #[test]
    fn repeated_recipients_keep_only_their_first_occurrence() {
        let v = with(|m| {
            m.insert("to".into(), json!(["A@Example.org", "a@example.ORG"]));
            m.insert("cc".into(), json!(["a@example.org", "C <c@example.org>"]));
            m.insert(
                "bcc".into(),
                json!([{"email": "C@example.org"}, "d@example.org"]),
            );
        });
        let m = parse(&v).unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<(RecipientKind, String)> =
            m.recipients().map(|(k, mb)| (k, mb.to_string())).collect();
        assert_eq!(
            got,
            [
                (RecipientKind::To, "A@example.org".to_owned()),
                (RecipientKind::Cc, "C <c@example.org>".to_owned()),
                (RecipientKind::Bcc, "d@example.org".to_owned()),
            ]
        );
        assert_eq!(m.recipient_count(), 3);
    }

    #[test]
    fn recipient_count_is_capped_after_deduplication() {
        let list =
            |n: usize| Value::Array((0..n).map(|i| json!(format!("r{i}@example.org"))).collect());
        assert!(parse(&set("to", list(MAX_RECIPIENTS))).is_ok());
        let mut with_repeat = list(MAX_RECIPIENTS);
        if let Value::Array(items) = &mut with_repeat {
            items.push(json!("R0@example.org"));
        }
        assert!(parse(&set("to", with_repeat)).is_ok());
        assert_eq!(
            errors_of(&with(|m| {
                m.insert("to".into(), list(MAX_RECIPIENTS));
                m.insert("bcc".into(), json!(["extra@example.org"]));
            })),
            ["to: more than 1000 recipients across to, cc and bcc"]
        );
    }

    #[test]
    fn null_optional_fields_read_as_absent_and_only_bcc_is_enough() {
        let v = with(|m| {
            m.insert("to".into(), Value::Null);
            m.insert("cc".into(), Value::Null);
            m.insert("bcc".into(), json!(["b@example.org"]));
            for k in [
                "reply_to",
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
            ] {
                m.insert(k.into(), Value::Null);
            }
        });
        let m = parse(&v).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            m.stream(),
            Stream::Transactional,
            "a message that does not say"
        );
        assert_eq!(m.recipient_count(), 1);
        assert_eq!(m.tracking(), Tracking::default());
        assert_eq!((m.reply_to(), m.html(), m.gateway()), (None, None, None));
    }

    #[test]
    fn allowed_custom_headers_and_object_names_pass() {
        let v = with(|m| {
            m.insert("headers".into(), json!({"X-Campaign": "flu", "List-Unsubscribe": "<mailto:u@example.org>", "X-Note": "Gr\u{fc}\u{df}e\tund so"}));
            m.insert("to".into(), json!([{"email": "a@example.org", "name": ""}, {"email": "b@example.org", "name": "Doe, John"}]));
        });
        let m = parse(&v).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.headers().len(), 3);
        assert_eq!(m.to()[0].name(), None);
        assert_eq!(m.to()[1].to_string(), "\"Doe, John\" <b@example.org>");
    }

    #[test]
    fn debug_output_hides_content_and_addresses() {
        let v = with(|m| {
            m.insert("html".into(), json!("<p>diagnosis</p>"));
            m.insert(
                "attachments".into(),
                json!([{"filename": "lab-results.pdf", "content": "JVBERi0xLjQK"}]),
            );
            m.insert("headers".into(), json!({"X-Ward": "oncology"}));
            m.insert("metadata".into(), json!({"patient_ref": "P-99812"}));
        });
        let m = parse(&v).unwrap_or_else(|e| panic!("{e}"));
        let debug = format!("{m:?}");
        for secret in [
            "See you soon",
            "diagnosis",
            "Your appointment",
            "p@example.org",
            "clinic@",
            "lab-results",
            "oncology",
            "P-99812",
        ] {
            assert!(!debug.contains(secret), "{secret:?} leaked: {debug}");
        }
        for shown in ["m-1", "example.org", "<16 bytes>", "X-Ward", "patient_ref"] {
            assert!(debug.contains(shown), "{shown:?} missing: {debug}");
        }
    }

    #[test]
    fn forbidden_headers_are_matched_case_insensitively_and_by_prefix() {
        let cases = [
            ("from", true),
            ("Message-Id", true),
            ("content-disposition", true),
            ("Content-", true),
            ("X-SES-CONFIGURATION-SET", true),
            ("x-sg-id", true),
            ("X-Gateway-Message-Id", true),
            ("x-gateway-anything", true),
            ("X-Gateway", false),
            ("X-Campaign", false),
            ("Contents", false),
            ("X-Mailer", false),
            ("List-Unsubscribe", false),
        ];
        for (name, want) in cases {
            assert_eq!(is_forbidden_header(name), want, "{name}");
        }
    }

    /// Arbitrary JSON whose objects often use the contract's field names.
    fn json_value() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            prop::sample::select(vec![
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
                "email",
                "name",
                "filename",
                "content_type",
                "content",
                "content_id",
                "opens",
                "clicks",
                "Subject",
                "X-A",
            ])
            .prop_map(str::to_owned),
            "\\PC{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z@.<> \"\r\n\0\u{2028}-]{0,24}".prop_map(Value::String),
            "\\PC{0,24}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..8)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Err(e) = parse_message(&body, Some("sqs-1")) {
                prop_assert!(!e.errors().is_empty());
            }
        }

        #[test]
        fn never_panics_on_json_ish_text(body in "[{}\\[\\]\",:0-9a-z@<>. \\\\\r\n-]{0,200}") {
            if let Err(e) = parse_message(body.as_bytes(), None) {
                prop_assert!(!e.errors().is_empty());
            }
        }

        #[test]
        fn never_panics_on_arbitrary_json_and_every_error_names_a_problem(v in json_value()) {
            if let Err(e) = parse_message(v.to_string().as_bytes(), Some("sqs-1")) {
                prop_assert!(!e.errors().is_empty());
                prop_assert!(!e.to_string().contains('\n'), "error text holds a line break: {}", e);
            }
        }

        #[test]
        fn mutating_a_valid_message_never_panics(key in "[a-z_]{1,12}", v in json_value()) {
            let mut m = base();
            m[key.as_str()] = v;
            let _ = parse(&m);
        }
    }
}
