//! Sender patterns of `can_route` / `exclude_patterns` (ARCHITECTURE §3.1).
//!
//! The language is closed on purpose; the original matched by substring, so `b.com` matched
//! `x@notb.com`. Every pattern is one of:
//!
//! | pattern | matches |
//! |---|---|
//! | `*` | every sender |
//! | `@example.com`, `*@example.com` | every address whose domain is exactly `example.com` |
//! | `@*.example.com`, `*@*.example.com` | every address in a subdomain of `example.com` (not `example.com` itself) |
//! | `user@example.com` | exactly that address |
//!
//! Matching is ASCII case-insensitive. Anything else (a bare domain, a `*` inside a label, an
//! empty part) is a parse error, so a typo cannot silently route everything or nothing.

use std::fmt;

use crate::address::{MAX_DOMAIN_LEN, MAX_LOCAL_LEN, is_dot_atom, is_host_name};

/// A parsed sender pattern. `Display` prints it back in canonical (lower-case) form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SenderPattern {
    /// `*`.
    Any,
    /// `@domain` or `*@domain` (stored lower-case).
    Domain(String),
    /// `@*.domain` or `*@*.domain` (stored lower-case, without the `*.`).
    Subdomain(String),
    /// `local@domain` (stored lower-case).
    Address(String),
}

/// Why a pattern did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sender pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl SenderPattern {
    /// Parses one pattern.
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        let err = |reason| PatternError {
            pattern: s.to_owned(),
            reason,
        };
        if s == "*" {
            return Ok(Self::Any);
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(err("expected `*`, `@domain`, `@*.domain` or `user@domain`"));
        };
        let domain = domain.to_ascii_lowercase();
        let (subdomains, domain) = match domain.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, domain),
        };
        if !is_domain(&domain) {
            return Err(err("the domain part is not a domain name"));
        }
        match local {
            "" | "*" if subdomains => Ok(Self::Subdomain(domain)),
            "" | "*" => Ok(Self::Domain(domain)),
            _ if subdomains => Err(err(
                "`*.` subdomain wildcards need `@*.domain` or `*@*.domain`",
            )),
            _ if is_local_part(local) => Ok(Self::Address(format!(
                "{}@{domain}",
                local.to_ascii_lowercase()
            ))),
            _ => Err(err("the local part is not valid (wildcards are only `*@`)")),
        }
    }

    /// True when `sender` (an address, any case) matches.
    pub fn matches(&self, sender: &str) -> bool {
        self.matches_split(&SplitSender::new(sender))
    }

    /// [`SenderPattern::matches`] on a sender split once for many patterns.
    pub fn matches_split(&self, sender: &SplitSender<'_>) -> bool {
        let Some((local, domain)) = sender.parts else {
            return *self == Self::Any;
        };
        match self {
            Self::Any => true,
            Self::Domain(d) => domain.eq_ignore_ascii_case(d),
            Self::Subdomain(d) => {
                domain.len() > d.len() + 1
                    && domain.as_bytes()[domain.len() - d.len() - 1] == b'.'
                    && domain[domain.len() - d.len()..].eq_ignore_ascii_case(d)
            }
            Self::Address(a) => {
                sender.whole.len() == a.len()
                    && sender.whole.eq_ignore_ascii_case(a)
                    && !local.is_empty()
            }
        }
    }

    /// The domain this pattern names, if it names exactly one (`domain_based` routing).
    pub fn named_domain(&self) -> Option<&str> {
        match self {
            Self::Domain(d) => Some(d),
            Self::Address(a) => a.rsplit_once('@').map(|(_, d)| d),
            Self::Any | Self::Subdomain(_) => None,
        }
    }
}

/// A sender address split at its last `@`, for matching against many patterns.
#[derive(Debug, Clone, Copy)]
pub struct SplitSender<'a> {
    whole: &'a str,
    /// `(local, domain)`; `None` without an `@`.
    parts: Option<(&'a str, &'a str)>,
}

impl<'a> SplitSender<'a> {
    /// Splits `sender` (an address, any case).
    pub fn new(sender: &'a str) -> Self {
        Self {
            whole: sender,
            parts: sender.rsplit_once('@'),
        }
    }

    /// The domain (after the last `@`, as written); `None` without an `@`.
    pub fn domain(&self) -> Option<&'a str> {
        self.parts.map(|(_, d)| d)
    }
}

impl fmt::Display for SenderPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Domain(d) => write!(f, "@{d}"),
            Self::Subdomain(d) => write!(f, "@*.{d}"),
            Self::Address(a) => f.write_str(a),
        }
    }
}

impl std::str::FromStr for SenderPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Pattern domains and local parts follow the address rules exactly, so a pattern can name
/// only what [`crate::address::EmailAddress`] accepts.
fn is_domain(d: &str) -> bool {
    d.len() <= MAX_DOMAIN_LEN && is_host_name(d)
}

/// `*` is legal in an address's local part, but in a pattern it would read as a wildcard that
/// matches only itself, so it is refused.
fn is_local_part(l: &str) -> bool {
    l.len() <= MAX_LOCAL_LEN && is_dot_atom(l) && !l.contains('*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        SenderPattern::parse(p)
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(s)
    }

    #[test]
    fn matches_the_documented_forms_and_nothing_more() {
        let cases = [
            ("*", "a@b.example", true),
            ("@example.com", "x@example.com", true),
            ("@example.com", "x@EXAMPLE.com", true),
            ("@example.com", "x@notexample.com", false),
            ("@example.com", "x@sub.example.com", false),
            ("*@example.com", "x@example.com", true),
            ("*@example.com", "x@example.com.evil", false),
            ("@*.example.com", "x@a.example.com", true),
            ("@*.example.com", "x@a.b.example.com", true),
            ("@*.example.com", "x@example.com", false),
            ("@*.example.com", "x@aexample.com", false),
            ("*@*.example.com", "x@a.example.com", true),
            ("user@example.com", "USER@Example.com", true),
            ("user@example.com", "xuser@example.com", false),
            ("@internal.example.com", "sender@internal.example.com", true),
            ("@internal.example.com", "sender@example.com", false),
        ];
        for (p, s, want) in cases {
            assert_eq!(m(p, s), want, "{p} vs {s}");
        }
    }

    #[test]
    fn rejects_substring_and_malformed_patterns() {
        for bad in [
            "b.com",
            "",
            "@",
            "*b.com",
            "@b*.com",
            "user@",
            "us*er@b.com",
            "a@*.",
            "@-a.com",
            "x@*.b.com",
            "@localhost",
        ] {
            assert!(
                SenderPattern::parse(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn prints_back_canonically() {
        for (p, shown) in [
            ("*", "*"),
            ("*@Example.COM", "@example.com"),
            ("@*.x.org", "@*.x.org"),
            ("Ann@X.org", "ann@x.org"),
        ] {
            let parsed = SenderPattern::parse(p).expect("parses");
            assert_eq!(parsed.to_string(), shown);
            assert_eq!(SenderPattern::parse(shown).expect("reparses"), parsed);
        }
    }

    #[test]
    fn a_sender_without_at_matches_only_star() {
        assert!(m("*", "nobody"));
        assert!(!m("@example.com", "example.com"));
    }
}
