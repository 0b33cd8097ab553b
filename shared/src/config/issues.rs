//! What loading a configuration found wrong: every problem and warning with its JSON path (or
//! environment variable). A leaf of the config module: reading the environment, validating the
//! document and converting legacy files all report through it.

use std::fmt;

/// One problem (or warning) found in the configuration, located by its JSON path
/// (`gateways[1].mailgun.domain`) or, for an environment variable, by the variable's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// JSON path of the offending value, or the environment variable name.
    pub path: String,
    /// What is wrong, in operator language. Never contains a secret value.
    pub message: String,
}

impl ConfigIssue {
    /// An issue at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", &self.path, self.message)
    }
}

/// Every error found while loading a configuration (never empty when returned as an error).
/// `Display` prints one issue per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl ConfigErrors {
    /// True when some issue is located at exactly `path`.
    pub fn has_path(&self, path: &str) -> bool {
        self.0.iter().any(|i| i.path == path)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, issue) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

/// Errors and warnings collected so far.
#[derive(Debug, Default)]
pub(crate) struct Issues {
    pub(crate) errors: Vec<ConfigIssue>,
    pub(crate) warnings: Vec<ConfigIssue>,
}

impl Issues {
    pub(crate) fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigIssue::new(path, message));
    }

    pub(crate) fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigIssue::new(path, message));
    }
}
