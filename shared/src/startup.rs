//! What every Lambda function's `main` does before serving: JSON logs for CloudWatch, and a
//! start-up that names every problem at once (the variable or config path at fault, never a
//! secret) and exits 1, so a misconfigured deployment fails its first invocation with one log
//! line per mistake instead of one mistake per deploy.

use crate::config::ConfigErrors;

/// One thing that keeps a function from starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The environment variable or config path at fault.
    pub setting: String,
    /// What is wrong with it (never a secret value).
    pub message: String,
}

impl Problem {
    /// A problem with `setting`.
    pub fn new(setting: String, message: String) -> Self {
        Self { setting, message }
    }
}

/// The variable's value; `None` when unset, empty or only blanks.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// [`env()`], with a problem when it is missing.
pub fn required(name: &str, problems: &mut Vec<Problem>) -> Option<String> {
    let value = env(name);
    if value.is_none() {
        problems.push(Problem::new(
            name.to_owned(),
            "required, and not set".to_owned(),
        ));
    }
    value
}

/// The problems of a config that did not load, by JSON path.
pub fn config_problems(errors: ConfigErrors) -> impl Iterator<Item = Problem> {
    errors
        .0
        .into_iter()
        .map(|issue| Problem::new(issue.path, issue.message))
}

/// JSON log lines filtered by `RUST_LOG` (default `info`), without colours or timestamps:
/// CloudWatch Logs stamps every line itself.
pub fn init_json_logs() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_target(false)
        .with_current_span(false)
        .without_time()
        .init();
}

/// Logs every problem and exits 1.
pub fn exit_with(problems: &[Problem]) -> ! {
    for p in problems {
        tracing::error!(setting = %p.setting, problem = %p.message, "start-up failed");
    }
    std::process::exit(1)
}
