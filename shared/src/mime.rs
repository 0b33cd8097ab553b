//! The one RFC 5322 / MIME builder, used by every provider that takes a raw message (Gmail
//! `raw`, SES raw content, SMTP `DATA`, the capture gateway).
//!
//! What [`build`] produces from an [`OutboundMessage`]:
//!
//! - Headers `From`, `To`, `Cc` (when any), `Reply-To` (when set), `Subject`, `Date` (from `now`,
//!   UTC), `Message-ID`, `MIME-Version`, then the message's custom headers in their order, then
//!   [`GATEWAY_ID_HEADER`] carrying our message id. Non-ASCII subjects, display names and custom
//!   header values are RFC 2047 encoded; long values are folded. A value that merely contains
//!   `=?` is encoded too (and a file name containing it is written in RFC 2231 form), because
//!   readers would otherwise decode it as an encoded word and show different text than was sent.
//! - `Bcc` is **not** written unless [`BccHeader::Include`] is asked for (Gmail reads its
//!   recipients from that header and strips it before delivery). Everywhere else the Bcc
//!   recipients exist only in the envelope, so no recipient can see them.
//! - The body: text and html as `multipart/alternative` (or the single part when only one is
//!   given), inside `multipart/related` with the inline parts (attachments with a content id)
//!   when there are any, inside `multipart/mixed` with the other attachments when there are any.
//!   Line breaks in text and html are normalised to CRLF, the canonical form for MIME text.
//!
//! The output is a pure function of (message, `now`, options): the `Message-ID` comes from our
//! message id and the sender domain ([`message_id_for`]), and MIME boundaries are derived from the
//! message id instead of being random. A retried send therefore carries the same `Message-ID`,
//! which lets receiving systems and support staff recognise a duplicate.
//!
//! Header injection is impossible by construction: [`OutboundMessage`] rejects CR, LF and other
//! control characters in every value that becomes a header, and this builder writes those values
//! only through encoders (`mail-builder`'s, or its own RFC 2047 / RFC 2231 encoding, whose
//! output is plain ASCII without line breaks).

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use mail_builder::MessageBuilder;
use mail_builder::headers::HeaderType;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::{BodyPart, MimePart};

use crate::address::{EmailAddress, Mailbox};
use crate::clock::EpochMillis;
use crate::message::{Attachment, OutboundMessage};

/// The header that carries our message id (the idempotency key of ARCHITECTURE §2.1) in every raw
/// message, so a copy found in a mailbox, a bounce or a capture file can be traced back to the
/// record of delivery.
pub const GATEWAY_ID_HEADER: &str = "X-Gateway-Message-Id";

/// Whether the `Bcc` header is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BccHeader {
    /// Bcc recipients appear only in the envelope (SMTP, SES): the default.
    #[default]
    Omit,
    /// Write a `Bcc` header: for Gmail, which takes recipients from the headers and removes
    /// `Bcc` before delivery, and for capture files, which are never delivered.
    Include,
}

/// Choices that differ between providers. The default is right for SMTP and SES.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MimeOptions {
    /// Whether the `Bcc` header is written.
    pub bcc: BccHeader,
    /// Send as this address instead of the message's sender (Gmail `default_sender`
    /// fallback). The display name is kept, and when the message has no `reply_to` the
    /// original sender becomes the `Reply-To`, so replies still reach the person who wrote.
    pub from_override: Option<EmailAddress>,
}

/// A built message: the bytes to hand to a provider.
///
/// `Debug` shows the size and the `Message-ID`, not the content.
#[derive(Clone, PartialEq, Eq)]
pub struct BuiltMime {
    bytes: Vec<u8>,
    message_id: String,
}

impl BuiltMime {
    /// The message, CRLF line endings, 7-bit clean (non-ASCII content is encoded).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The message bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Size of the encoded message in bytes (attachments already base64 encoded). Provider size
    /// limits are checked against this number, not against the decoded content.
    pub fn encoded_size(&self) -> usize {
        self.bytes.len()
    }

    /// The `Message-ID` written, without angle brackets.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }
}

impl fmt::Debug for BuiltMime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuiltMime")
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .field("message_id", &self.message_id)
            .finish()
    }
}

/// Builds the message with the default options (no `Bcc` header, the message's own sender).
pub fn build(message: &OutboundMessage, now: EpochMillis) -> BuiltMime {
    build_with(message, now, &MimeOptions::default())
}

/// Builds the message. `now` (epoch ms) becomes the `Date` header, in UTC, whole seconds.
pub fn build_with(message: &OutboundMessage, now: EpochMillis, options: &MimeOptions) -> BuiltMime {
    let message_id = message_id_for(message);
    let boundaries = Boundaries::new(message);

    let from_address = options
        .from_override
        .as_ref()
        .unwrap_or_else(|| message.sender());
    let mut builder = MessageBuilder::new()
        .header(
            "From",
            addresses(&[(message.from().name(), from_address.as_str())]),
        )
        .header("To", mailboxes(message.to()));
    if !message.cc().is_empty() {
        builder = builder.header("Cc", mailboxes(message.cc()));
    }
    if options.bcc == BccHeader::Include && !message.bcc().is_empty() {
        builder = builder.header("Bcc", mailboxes(message.bcc()));
    }
    let reply_to = match (message.reply_to(), &options.from_override) {
        (Some(reply_to), _) => Some(reply_to),
        (None, Some(over)) if over != message.sender() => Some(message.from()),
        (None, _) => None,
    };
    if let Some(reply_to) = reply_to {
        builder = builder.header("Reply-To", mailboxes(std::slice::from_ref(reply_to)));
    }
    builder = builder
        .header("Subject", text(message.subject()))
        .date(Date::new(now.div_euclid(1000)))
        .message_id(MessageId::new(message_id.clone()))
        .header("MIME-Version", Raw::new("1.0"));
    for (name, value) in message.headers() {
        builder = builder.header(name.as_str(), text(value));
    }
    builder = builder
        .header(GATEWAY_ID_HEADER, Raw::new(message.id()))
        .body(body(message, &boundaries));

    let mut bytes = Vec::new();
    builder.serialize(&mut bytes);
    BuiltMime { bytes, message_id }
}

/// The `Message-ID` (without angle brackets) for a message: `gw.<id>@<sender domain>`, where
/// every character of the id other than ASCII letters, digits, `-` and `_` is written as `=XX`
/// (its hex code), because `.` runs, `:` and `@` are not allowed there. The same message always
/// gets the same id, so retries are recognisable.
pub fn message_id_for(message: &OutboundMessage) -> String {
    let mut local = String::from("gw.");
    for c in message.id().chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            local.push(c);
        } else {
            // The id is ASCII by contract; anything else is escaped byte by byte all the same.
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                local.push_str(&format!("={b:02X}"));
            }
        }
    }
    format!("{local}@{}", message.sender().domain())
}

/// An address header. When a display name contains `=?`, a reader would decode that part as an
/// RFC 2047 encoded word and show something else than the sender wrote; such names are written
/// as encoded words themselves (allowed in a phrase, RFC 2047 §5), which decode back exactly.
fn addresses<'x>(items: &[(Option<&'x str>, &'x str)]) -> HeaderType<'x> {
    if items
        .iter()
        .any(|(name, _)| name.is_some_and(looks_encoded))
    {
        let written: Vec<String> = items
            .iter()
            .map(|(name, email)| match name {
                Some(name) => format!("{} <{email}>", encoded_words(name)),
                None => (*email).to_owned(),
            })
            .collect();
        return Raw::new(written.join(", ")).into();
    }
    let mut list: Vec<Address<'x>> = items
        .iter()
        .map(|(name, email)| Address::new_address(*name, *email))
        .collect();
    match list.len() {
        1 => list.remove(0).into(),
        _ => Address::new_list(list).into(),
    }
}

fn mailboxes(list: &[Mailbox]) -> HeaderType<'_> {
    let items: Vec<(Option<&str>, &str)> = list
        .iter()
        .map(|m| (m.name(), m.address().as_str()))
        .collect();
    addresses(&items)
}

/// Unstructured header text; text containing `=?` is written as encoded words (see
/// [`addresses`]) so it reads back literally.
fn text(value: &str) -> HeaderType<'_> {
    if looks_encoded(value) {
        Raw::new(encoded_words(value)).into()
    } else {
        Text::new(value).into()
    }
}

/// True when a decoder could take part of the text for an RFC 2047 encoded word.
fn looks_encoded(text: &str) -> bool {
    text.contains("=?")
}

/// The whole text as RFC 2047 `B` encoded words of at most 75 characters, separated by spaces
/// (which decoders drop between adjacent encoded words; the header writer folds there).
fn encoded_words(text: &str) -> String {
    // 45 bytes of UTF-8 are 60 base64 characters: with `=?utf-8?B?` and `?=` that is 72.
    const CHUNK: usize = 45;
    let mut words = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + CHUNK).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(&text.as_bytes()[start..end]);
        words.push(format!("=?utf-8?B?{encoded}?="));
        start = end;
    }
    words.join(" ")
}

fn body<'x>(message: &'x OutboundMessage, boundaries: &Boundaries) -> MimePart<'x> {
    let text = message.text().map(|t| text_part("text/plain", t));
    let html = message.html().map(|h| text_part("text/html", h));
    let mut part = match (text, html) {
        (Some(text), Some(html)) => multipart(
            "multipart/alternative",
            boundaries.get("alt"),
            vec![text, html],
        ),
        (Some(one), None) | (None, Some(one)) => one,
        // The contract guarantees a body; an empty text part keeps the output well formed.
        (None, None) => text_part("text/plain", ""),
    };

    let (inline, attached): (Vec<&Attachment>, Vec<&Attachment>) = message
        .attachments()
        .iter()
        .partition(|a| a.content_id().is_some());
    if !inline.is_empty() {
        let mut parts = vec![part];
        parts.extend(inline.into_iter().map(inline_part));
        part = multipart("multipart/related", boundaries.get("rel"), parts);
    }
    if !attached.is_empty() {
        let mut parts = vec![part];
        parts.extend(attached.into_iter().map(attachment_part));
        part = multipart("multipart/mixed", boundaries.get("mix"), parts);
    }
    part
}

fn text_part<'x>(content_type: &'x str, text: &str) -> MimePart<'x> {
    MimePart::new(
        ContentType::new(content_type).attribute("charset", "utf-8"),
        BodyPart::Text(Cow::Owned(crlf(text))),
    )
}

fn multipart<'x>(
    content_type: &'x str,
    boundary: String,
    parts: Vec<MimePart<'x>>,
) -> MimePart<'x> {
    MimePart::new(
        ContentType::new(content_type).attribute("boundary", boundary),
        BodyPart::Multipart(parts),
    )
}

fn attachment_part(a: &Attachment) -> MimePart<'_> {
    MimePart::new(
        content_type(a.content_type()),
        BodyPart::Binary(Cow::Borrowed(a.content())),
    )
    .header(
        "Content-Disposition",
        disposition("attachment", a.filename()),
    )
}

fn inline_part(a: &Attachment) -> MimePart<'_> {
    let part = MimePart::new(
        content_type(a.content_type()),
        BodyPart::Binary(Cow::Borrowed(a.content())),
    )
    .header("Content-Disposition", disposition("inline", a.filename()));
    match a.content_id() {
        Some(cid) => part.cid(cid),
        None => part,
    }
}

/// `Content-Disposition` with the file name. Readers decode encoded words even inside quoted
/// parameters, so a name containing `=?` is written in RFC 2231 form (`filename*=utf-8''…`,
/// percent-encoded), which cannot be mistaken for one.
fn disposition<'x>(kind: &'x str, filename: &'x str) -> HeaderType<'x> {
    if !looks_encoded(filename) {
        return ContentType::new(kind)
            .attribute("filename", filename)
            .into();
    }
    let mut value = format!("{kind}; filename*=utf-8''");
    for b in filename.bytes() {
        // RFC 2231 attribute-char: ALPHA, DIGIT and a few marks are written as they are.
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            value.push(char::from(b));
        } else {
            value.push_str(&format!("%{b:02X}"));
        }
    }
    Raw::new(value).into()
}

/// `type/subtype; key=value; key="quoted"` into a content type with attributes. Parameters that
/// do not parse are dropped rather than copied raw, so the header stays well formed.
fn content_type(value: &str) -> ContentType<'_> {
    let mut pieces = value.split(';');
    let mime_type = pieces.next().unwrap_or_default().trim();
    let mut ct = ContentType::new(mime_type);
    for piece in pieces {
        let Some((key, val)) = piece.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let val = val.trim();
        let val = val
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(val);
        if !key.is_empty() {
            ct = ct.attribute(key, val);
        }
    }
    ct
}

/// Normalises every line break (CRLF, LF or a lone CR) to CRLF.
fn crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 32);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\r\n");
            }
            '\n' => out.push_str("\r\n"),
            other => out.push(other),
        }
    }
    out
}

/// Deterministic MIME boundaries. A boundary starts with `=_`, which neither base64 nor
/// quoted-printable output can contain; parts written unencoded (plain ASCII text) are checked
/// and a counter is bumped until the boundary occurs in none of them.
struct Boundaries<'a> {
    seed: u64,
    raw_parts: Vec<&'a [u8]>,
}

impl<'a> Boundaries<'a> {
    fn new(message: &'a OutboundMessage) -> Self {
        let mut raw_parts: Vec<&[u8]> = Vec::new();
        raw_parts.extend(message.text().map(str::as_bytes));
        raw_parts.extend(message.html().map(str::as_bytes));
        raw_parts.extend(message.attachments().iter().map(Attachment::content));
        Self {
            seed: fnv1a(message.id().as_bytes()),
            raw_parts,
        }
    }

    fn get(&self, label: &str) -> String {
        let mut n: u32 = 0;
        loop {
            let candidate = format!("=_gw-{label}-{:016x}-{n}", self.seed);
            let needle = candidate.as_bytes();
            let clashes = self
                .raw_parts
                .iter()
                .any(|part| part.windows(needle.len()).any(|w| w == needle));
            if !clashes {
                return candidate;
            }
            n += 1;
        }
    }
}

/// FNV-1a, 64 bit: stable across builds and platforms (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests;
