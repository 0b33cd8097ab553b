//! Email addresses and mailboxes of the outbound message contract (ARCHITECTURE §2.1, providers §7).
//!
//! Every provider builds headers from these values, and the gateway builds raw MIME itself for
//! Mailgun, SES and Gmail, so a value of [`EmailAddress`] or [`Mailbox`] is safe to put in a header
//! as is: it never holds a CR, LF, NUL or any other control character. Such input is rejected,
//! never stripped, because a stripped value is a different address than the one the client meant.
//!
//! What is accepted, and why it is narrower than RFC 5322:
//!
//! - The local part is an ASCII dot-atom (`john.doe+tag`). Quoted local parts (`"john doe"@x`)
//!   are rejected: no provider we use accepts them reliably and they are almost always a mistake.
//!   Non-ASCII local parts are rejected because SES does not support SMTPUTF8.
//! - The domain is a host name of at least two labels of letters, digits and hyphens. It is stored
//!   lower-case. Internationalised domains must already be punycode (`xn--…`); address literals
//!   (`[192.0.2.1]`) are rejected.
//! - Lengths (RFC 5321 §4.5.3.1 and practice): local part ≤ 64, domain ≤ 255, whole address ≤ 254
//!   characters.

use std::fmt;
use std::hash::{Hash, Hasher};

/// Longest accepted local part, in characters (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_LEN: usize = 64;
/// Longest accepted domain, in characters (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN_LEN: usize = 255;
/// Longest accepted address, in characters (the forward-path limit of 256 minus the brackets).
pub const MAX_ADDRESS_LEN: usize = 254;

/// Why an address or mailbox was refused. The `Display` text is the `problem` part of a
/// message field error (`to[2]: not an email address`); it never repeats the input, so it can be
/// logged and sent to customers without leaking an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// A CR, LF or Unicode line separator (U+0085, U+2028, U+2029) appears somewhere.
    #[error("contains a line break")]
    LineBreak,
    /// A NUL character appears somewhere.
    #[error("contains a NUL character")]
    Nul,
    /// Another control character (U+0001–U+001F except TAB, or U+007F) appears somewhere.
    #[error("contains a control character")]
    ControlCharacter,
    /// No `@`, an empty part, or a local part that is not a dot-atom.
    #[error("not an email address")]
    NotAnAddress,
    /// The local part is a quoted string, which this gateway does not support.
    #[error("quoted local parts are not supported")]
    QuotedLocalPart,
    /// The local part holds non-ASCII characters (that would need SMTPUTF8).
    #[error("non-ASCII local parts are not supported")]
    NonAsciiLocalPart,
    /// The local part is longer than [`MAX_LOCAL_LEN`].
    #[error("the local part is longer than 64 characters")]
    LocalPartTooLong,
    /// The domain is longer than [`MAX_DOMAIN_LEN`].
    #[error("the domain is longer than 255 characters")]
    DomainTooLong,
    /// The address is longer than [`MAX_ADDRESS_LEN`].
    #[error("the address is longer than 254 characters")]
    TooLong,
    /// The domain holds non-ASCII characters; it must be given in punycode.
    #[error("internationalised domains must be written in punycode (xn--)")]
    NonAsciiDomain,
    /// The domain is an address literal such as `[192.0.2.1]`.
    #[error("address literals are not supported")]
    AddressLiteral,
    /// The domain is not a host name of at least two valid labels.
    #[error("the domain is not a valid host name")]
    InvalidDomain,
    /// The display name of `Name <addr>` has stray quotes or angle brackets.
    #[error("the display name is not valid (quote it: \"Name\" <addr>)")]
    InvalidDisplayName,
}

/// Rejects what must never reach a header: line breaks, NUL and other control characters.
///
/// TAB is allowed (it is header whitespace). U+0085, U+2028 and U+2029 count as line breaks
/// because some mail libraries and clients treat them as such.
pub fn check_header_text(s: &str) -> Result<(), AddressError> {
    let mut found = None;
    for c in s.chars() {
        let problem = match c {
            '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => AddressError::LineBreak,
            '\0' => AddressError::Nul,
            '\t' => continue,
            c if c.is_ascii_control() => AddressError::ControlCharacter,
            _ => continue,
        };
        // A line break is the injection we care most about, so it wins over the others.
        if problem == AddressError::LineBreak {
            return Err(problem);
        }
        if found != Some(AddressError::Nul) {
            found = Some(problem);
        }
    }
    found.map_or(Ok(()), Err)
}

/// A syntactically valid email address (see the module docs for what is accepted).
///
/// Invariants: ASCII only, no whitespace or control characters, exactly one `@` separating a
/// dot-atom local part from a lower-case domain, within the length limits.
///
/// Equality and hashing ignore ASCII case on the whole address (`John@X.org` equals
/// `john@x.org`): providers and limits treat addresses that way. [`as_str`](Self::as_str) keeps
/// the local part's case as given, because a few mail systems still honour it.
#[derive(Debug, Clone)]
pub struct EmailAddress {
    full: String,
    at: usize,
}

impl EmailAddress {
    /// Parses an address such as `john.doe@example.org`. No surrounding whitespace, no
    /// `Name <…>` (use [`Mailbox::parse`] for that).
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        check_header_text(s)?;
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(AddressError::NotAnAddress);
        };
        if local.starts_with('"') {
            return Err(AddressError::QuotedLocalPart);
        }
        if local.is_empty() || domain.is_empty() {
            return Err(AddressError::NotAnAddress);
        }
        if !local.is_ascii() {
            return Err(AddressError::NonAsciiLocalPart);
        }
        if !is_dot_atom(local) {
            return Err(AddressError::NotAnAddress);
        }
        if local.len() > MAX_LOCAL_LEN {
            return Err(AddressError::LocalPartTooLong);
        }
        if domain.starts_with('[') {
            return Err(AddressError::AddressLiteral);
        }
        if !domain.is_ascii() {
            return Err(AddressError::NonAsciiDomain);
        }
        if domain.len() > MAX_DOMAIN_LEN {
            return Err(AddressError::DomainTooLong);
        }
        if !is_host_name(domain) {
            return Err(AddressError::InvalidDomain);
        }
        if s.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong);
        }
        Ok(Self {
            full: format!("{local}@{}", domain.to_ascii_lowercase()),
            at: local.len(),
        })
    }

    /// The address: local part as given, `@`, domain in lower case.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The local part, case as given.
    pub fn local(&self) -> &str {
        &self.full[..self.at]
    }

    /// The domain, lower case.
    pub fn domain(&self) -> &str {
        &self.full[self.at + 1..]
    }

    /// The whole address in lower case: the canonical form for storage keys (suppression list,
    /// per-sender limit windows, recipient rows), so that keys agree with [`PartialEq`].
    pub fn to_key(&self) -> String {
        self.full.to_ascii_lowercase()
    }
}

impl PartialEq for EmailAddress {
    fn eq(&self, other: &Self) -> bool {
        self.full.eq_ignore_ascii_case(&other.full)
    }
}

impl Eq for EmailAddress {}

impl Hash for EmailAddress {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must agree with `eq`: hash the lower-cased bytes.
        for b in self.full.bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
        state.write_u8(0xff);
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl std::str::FromStr for EmailAddress {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// An address with an optional display name, as it appears in `From`, `To`, `Cc`, `Reply-To`.
///
/// Invariant: the name, when present, is non-empty, has no surrounding whitespace and passes
/// [`check_header_text`]. It may hold non-ASCII characters; whoever writes a header from it
/// (the MIME builder) encodes them (RFC 2047). Equality compares the name exactly and the address
/// case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    name: Option<String>,
    address: EmailAddress,
}

impl Mailbox {
    /// A mailbox from an already parsed address and an optional display name taken literally
    /// (no quote processing). The name is trimmed; an empty or blank name means no name.
    pub fn new(name: Option<&str>, address: EmailAddress) -> Result<Self, AddressError> {
        let name = match name.map(trim_wsp) {
            None | Some("") => None,
            Some(n) => {
                check_header_text(n)?;
                Some(n.to_owned())
            }
        };
        Ok(Self { name, address })
    }

    /// Parses `addr`, `Name <addr>`, `"Doe, John" <addr>` or `<addr>`, with optional spaces or
    /// tabs around. In a quoted name `\x` stands for `x`. An unquoted name may hold any character
    /// except `"`, `<` and `>` (it is a single mailbox, so `Doe, John <addr>` is unambiguous and
    /// is quoted again on output).
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        check_header_text(s)?;
        let s = trim_wsp(s);
        let Some(rest) = s.strip_suffix('>') else {
            return Ok(Self {
                name: None,
                address: EmailAddress::parse(s)?,
            });
        };
        // The address cannot contain `<`, so the last one opens the angle address even when a
        // quoted name contains `<` itself.
        let Some(open) = rest.rfind('<') else {
            return Err(AddressError::NotAnAddress);
        };
        let address = EmailAddress::parse(&rest[open + 1..])?;
        let name = parse_display_name(trim_wsp(&rest[..open]))?;
        Self::new(name.as_deref(), address)
    }

    /// The display name, if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The address.
    pub fn address(&self) -> &EmailAddress {
        &self.address
    }
}

impl From<EmailAddress> for Mailbox {
    fn from(address: EmailAddress) -> Self {
        Self {
            name: None,
            address,
        }
    }
}

impl fmt::Display for Mailbox {
    /// `addr`, `Name <addr>` when the name is a plain phrase, otherwise `"Quoted \"name\"" <addr>`.
    /// [`Mailbox::parse`] reads the output back to an equal mailbox.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(name) = &self.name else {
            return f.write_str(self.address.as_str());
        };
        if is_plain_phrase(name) {
            return write!(f, "{name} <{}>", self.address);
        }
        f.write_str("\"")?;
        for c in name.chars() {
            if c == '"' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        write!(f, "\" <{}>", self.address)
    }
}

impl std::str::FromStr for Mailbox {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn trim_wsp(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// The name part of `name <addr>`, already trimmed: empty, a quoted string, or an unquoted run.
fn parse_display_name(raw: &str) -> Result<Option<String>, AddressError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let Some(inner) = raw.strip_prefix('"') else {
        if raw.contains(['"', '<', '>']) {
            return Err(AddressError::InvalidDisplayName);
        }
        return Ok(Some(raw.to_owned()));
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => out.push(escaped),
                None => return Err(AddressError::InvalidDisplayName),
            },
            // The closing quote must end the name part.
            '"' if chars.as_str().is_empty() => return Ok(Some(out)),
            '"' => return Err(AddressError::InvalidDisplayName),
            c => out.push(c),
        }
    }
    Err(AddressError::InvalidDisplayName)
}

/// RFC 5322 `atext`, the characters of an unquoted atom.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

pub(crate) fn is_dot_atom(s: &str) -> bool {
    s.split('.')
        .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

pub(crate) fn is_host_name(d: &str) -> bool {
    d.split('.').count() >= 2
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A name that can be written unquoted: words of atext (or non-ASCII, RFC 6532) separated by
/// single spaces.
fn is_plain_phrase(name: &str) -> bool {
    name.split(' ')
        .all(|w| !w.is_empty() && w.chars().all(|c| !c.is_ascii() || is_atext(c as u8)))
}

/// `text` with everything that looks like an email address (a run of non-space characters with
/// an `@` inside, without surrounding brackets, quotes or punctuation) replaced by `<address>`:
/// for provider error texts on their way to the logs, which must not carry recipients'
/// addresses ("MessageRejected: Email address is not verified … dr@clinic.example").
pub fn redact_addresses(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('@') {
        return std::borrow::Cow::Borrowed(text);
    }
    const EDGE: &[char] = &[
        '<', '>', '(', ')', '[', ']', '"', '\'', ',', ';', ':', '.', '!', '?',
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let start = rest
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        let core = word.trim_matches(EDGE);
        match core.find('@') {
            Some(at) if at > 0 && at + 1 < core.len() => {
                let lead = word.len() - word.trim_start_matches(EDGE).len();
                out.push_str(&word[..lead]);
                out.push_str("<address>");
                out.push_str(&word[lead + core.len()..]);
            }
            _ => out.push_str(word),
        }
        rest = &rest[end..];
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn addr(s: &str) -> EmailAddress {
        EmailAddress::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn accepts_dot_atom_addresses_and_lower_cases_only_the_domain() {
        let cases = [
            ("john@example.org", "john", "example.org"),
            ("John.Doe@Example.ORG", "John.Doe", "example.org"),
            ("a+tag@sub.example.co.uk", "a+tag", "sub.example.co.uk"),
            (
                "o'brien@xn--bcher-kva.example",
                "o'brien",
                "xn--bcher-kva.example",
            ),
            (
                "!#$%&'*+-/=?^_`{|}~@x-1.example",
                "!#$%&'*+-/=?^_`{|}~",
                "x-1.example",
            ),
        ];
        for (input, local, domain) in cases {
            let a = addr(input);
            assert_eq!(a.local(), local, "{input}");
            assert_eq!(a.domain(), domain, "{input}");
            assert_eq!(a.as_str(), format!("{local}@{domain}"), "{input}");
        }
    }

    #[test]
    fn rejects_each_malformed_address_with_its_reason() {
        let long_local = format!("{}@example.org", "a".repeat(65));
        let max_local = format!("{}@example.org", "a".repeat(64));
        let long_domain = format!("a@{}.example", vec!["b".repeat(63); 4].join("."));
        let long_address = format!(
            "{}@{}.example",
            "a".repeat(64),
            vec!["b".repeat(60); 3].join(".")
        );
        let cases: Vec<(&str, AddressError)> = vec![
            ("", AddressError::NotAnAddress),
            ("plain", AddressError::NotAnAddress),
            ("@example.org", AddressError::NotAnAddress),
            ("a@", AddressError::NotAnAddress),
            (".a@example.org", AddressError::NotAnAddress),
            ("a.@example.org", AddressError::NotAnAddress),
            ("a..b@example.org", AddressError::NotAnAddress),
            ("a b@example.org", AddressError::NotAnAddress),
            ("a@b@example.org", AddressError::NotAnAddress),
            (" a@example.org", AddressError::NotAnAddress),
            ("\"a b\"@example.org", AddressError::QuotedLocalPart),
            ("jos\u{e9}@example.org", AddressError::NonAsciiLocalPart),
            ("a@b\u{fc}cher.example", AddressError::NonAsciiDomain),
            ("a@[192.0.2.1]", AddressError::AddressLiteral),
            ("a@localhost", AddressError::InvalidDomain),
            ("a@-x.example", AddressError::InvalidDomain),
            ("a@x-.example", AddressError::InvalidDomain),
            ("a@x..example", AddressError::InvalidDomain),
            ("a@example.org.", AddressError::InvalidDomain),
            ("a@exa_mple.org", AddressError::InvalidDomain),
            (
                "a@example.org\r\nBcc: x@evil.example",
                AddressError::LineBreak,
            ),
            ("a@example.org\n", AddressError::LineBreak),
            ("a\0@example.org", AddressError::Nul),
            ("a\u{7}@example.org", AddressError::ControlCharacter),
            (&long_local, AddressError::LocalPartTooLong),
            (&long_domain, AddressError::DomainTooLong),
            (&long_address, AddressError::TooLong),
        ];
        for (input, want) in cases {
            assert_eq!(EmailAddress::parse(input).err(), Some(want), "{input:?}");
        }
        assert!(EmailAddress::parse(&max_local).is_ok());
    }

    #[test]
    fn equality_and_hash_ignore_case_on_the_whole_address() {
        let a = addr("John.Doe@Example.org");
        let b = addr("john.doe@example.ORG");
        assert_eq!(a, b);
        assert_ne!(a, addr("john.doe2@example.org"));
        assert_eq!(a.to_key(), b.to_key());
        assert_eq!(a.to_key(), "john.doe@example.org");
        let set: HashSet<EmailAddress> = [a, b].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn parses_every_mailbox_form() {
        let cases: [(&str, Option<&str>, &str); 9] = [
            ("a@example.org", None, "a@example.org"),
            ("  a@example.org\t", None, "a@example.org"),
            ("<a@example.org>", None, "a@example.org"),
            ("B <b@example.org>", Some("B"), "b@example.org"),
            (
                "Dr. Ada Lovelace <ada@clinic.example>",
                Some("Dr. Ada Lovelace"),
                "ada@clinic.example",
            ),
            (
                "\"Doe, John\" <j@example.org>",
                Some("Doe, John"),
                "j@example.org",
            ),
            (
                "\"Say \\\"hi\\\" <x>\" <j@example.org>",
                Some("Say \"hi\" <x>"),
                "j@example.org",
            ),
            (
                "Zo\u{eb} M\u{fc}ller <z@example.org>",
                Some("Zo\u{eb} M\u{fc}ller"),
                "z@example.org",
            ),
            ("\"\" <a@example.org>", None, "a@example.org"),
        ];
        for (input, name, address) in cases {
            let m = Mailbox::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(m.name(), name, "{input}");
            assert_eq!(m.address().as_str(), address, "{input}");
        }
    }

    #[test]
    fn rejects_malformed_mailboxes_and_injection() {
        let cases = [
            ("Name <a@example.org", AddressError::NotAnAddress),
            ("Name a@example.org>", AddressError::NotAnAddress),
            ("Name <not-an-address>", AddressError::NotAnAddress),
            (
                "\"Doe, John <j@example.org>",
                AddressError::InvalidDisplayName,
            ),
            (
                "\"Doe\" John <j@example.org>",
                AddressError::InvalidDisplayName,
            ),
            ("Do\"e <j@example.org>", AddressError::InvalidDisplayName),
            (
                "Eve\r\nBcc: x@evil.example <e@example.org>",
                AddressError::LineBreak,
            ),
            ("Eve\u{2028} <e@example.org>", AddressError::LineBreak),
            ("Eve\0 <e@example.org>", AddressError::Nul),
        ];
        for (input, want) in cases {
            assert_eq!(Mailbox::parse(input).err(), Some(want), "{input:?}");
        }
        assert_eq!(
            Mailbox::new(Some("a\nb"), addr("a@example.org")).err(),
            Some(AddressError::LineBreak)
        );
    }

    #[test]
    fn display_quotes_names_that_need_it() {
        let cases = [
            (None, "a@example.org"),
            (Some("B Smith"), "B Smith <a@example.org>"),
            (Some("Doe, John"), "\"Doe, John\" <a@example.org>"),
            (Some("Dr. Ada"), "\"Dr. Ada\" <a@example.org>"),
            (Some("Say \"hi\""), "\"Say \\\"hi\\\"\" <a@example.org>"),
            (Some("Zo\u{eb}"), "Zo\u{eb} <a@example.org>"),
        ];
        for (name, want) in cases {
            let m = Mailbox::new(name, addr("a@example.org")).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(m.to_string(), want);
        }
    }

    proptest! {
        #[test]
        fn display_parses_back_to_the_same_mailbox(
            name in proptest::option::of("[ -~\u{e0}-\u{ff}\t]{0,40}"),
            local in "[A-Za-z0-9+_-]{1,20}(\\.[A-Za-z0-9!#%&'*/=?^`{|}~]{1,5}){0,2}",
            domain in "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){1,3}",
        ) {
            let address = addr(&format!("{local}@{domain}"));
            let m = Mailbox::new(name.as_deref(), address).unwrap_or_else(|e| panic!("{e}"));
            let back = Mailbox::parse(&m.to_string());
            prop_assert_eq!(back, Ok(m));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,80}|[\\x00-\\x7f]{0,80}") {
            let _ = EmailAddress::parse(&s);
            let _ = Mailbox::parse(&s);
        }
    }

    #[test]
    fn addresses_in_provider_texts_are_redacted_and_the_rest_kept() {
        let cases = [
            (
                "MessageRejected: Email address is not verified. The following identities failed the check in region EU-WEST-1: dr@clinic.example, <Patient.Name+x@Example.org>",
                "MessageRejected: Email address is not verified. The following identities failed the check in region EU-WEST-1: <address>, <<address>>",
            ),
            (
                "550 5.1.1 \"p@example.org\": no such user",
                "550 5.1.1 \"<address>\": no such user",
            ),
            ("quota exceeded", "quota exceeded"),
            ("@ alone, a@ and @b stay", "@ alone, a@ and @b stay"),
        ];
        for (given, want) in cases {
            assert_eq!(redact_addresses(given), want, "{given}");
        }
    }
}
