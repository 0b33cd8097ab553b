//! A resolved secret value (API key, password, service-account key, access token).
//!
//! The resolver ([`super::SecretResolver`]) hands every resolved value out wrapped in
//! [`SecretString`], whose `Debug` is redacted and which has no `Display`, so a secret cannot
//! reach a log line or an error text by a stray `{:?}`.

use std::fmt;

/// A secret string. `Debug` prints `SecretString(<redacted>)`; there is no `Display`. The value
/// is reachable only through [`SecretString::expose`], which marks every place that uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a resolved secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Never log or format the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_value() {
        let secret = SecretString::new("key-3ax6xnjp29jd6fds4gc373sgvjxteol0");
        let shown = format!("{secret:?}");
        assert!(!shown.contains("3ax6"), "{shown}");
        assert_eq!(secret.expose(), "key-3ax6xnjp29jd6fds4gc373sgvjxteol0");
    }
}
