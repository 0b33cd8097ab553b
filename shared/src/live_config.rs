//! Live configuration: the gateway config published as numbered versions in the shared state and
//! taken up by every running process within its poll interval, without a deploy or a restart.
//!
//! # Why the state table
//! The candidates were SSM Parameter Store, S3 with versioning and AppConfig. The config is read
//! by every instance of five functions, so the deciding costs are the poll and the size: SSM's
//! standard parameters stop at 4 KB (8 KB advanced, $0.05 a month each and paid throughput), small
//! for a config with a few dozen gateways and routing rules; S3 and AppConfig need another SDK,
//! another IAM surface and, for AppConfig, a Lambda extension or its session API, for a document of
//! a few KB. The state table every function already reads has none of those limits: a version is
//! one item (DynamoDB allows 400 KB; [`MAX_DOCUMENT_BYTES`] keeps a margin), publishing is one
//! transaction (the version's item and the head, conditional on the head read, so two
//! publishers cannot both win), and a poll is one strongly consistent read of the small head
//! item (0.5 RCU): every 30 s for 50 instances, about 4.3 million reads a month, a dollar. The
//! validation AppConfig would offer is the config's own ([`crate::config::load_config`]), run by
//! `gateway config push` before publishing and by every process before activating.
//!
//! # Stored form
//! - `cfg#head`: `version` (the number in force), `sha256`, `by`, `at`, `reason`;
//! - `cfg#v#{n}`: the version's `document` (the config JSON as pushed), `sha256`, `by`, `at`,
//!   `reason`. Kept: a version is the audit of what was published, and the way back.
//!
//! # Activation
//! A process starts on the version in force when there is one (else on its deployed file, as
//! before), then checks the head every poll interval ([`DEFAULT_POLL`]). A newer version is read,
//! checked against its `sha256`, validated with this process's environment, and built into what
//! the process runs (the sender's provider clients and pipeline, the status API, …; see
//! [`Reloading`]). Only when all of that succeeds does it replace the running one. A version that
//! fails is **rejected**: the last good one stays, the problem is logged with its JSON paths
//! (`error_kind=config_rejected`), a `ConfigRejected` metric is written where the process writes
//! metrics (an alarm in the template), and the version is not tried again; a later version is.
//!
//! `gateway serve` without a state table watches its `--config` file the same way
//! ([`Source::File`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;

use crate::clock::{Clock, EpochMillis};
use crate::config::{Config, ConfigErrors, load_config};
use crate::state::{
    CmpOp, Condition, Item, Key, StateStore, StoreError, TransactOutcome, Value, Write, WriteOp,
    get_all, get_n, get_s,
};

/// Prefix of every live-config key.
pub const KEY_PREFIX: &str = "cfg#";
/// The key of the head: which version is in force.
pub const HEAD_KEY: &str = "cfg#head";
/// Largest document published, in bytes (DynamoDB's item limit is 400 KB).
pub const MAX_DOCUMENT_BYTES: usize = 350_000;
/// How often a process checks for a new version by default.
pub const DEFAULT_POLL: Duration = Duration::from_secs(30);
/// The metric a rejected version writes (count 1, no dimension).
pub const REJECTED_METRIC: &str = "ConfigRejected";
/// Most versions [`history`] returns.
pub const MAX_HISTORY: usize = 50;

const VERSION: &str = "version";
const DOCUMENT: &str = "document";
const SHA256: &str = "sha256";
const BY: &str = "by";
const AT: &str = "at";
const REASON: &str = "reason";

/// The key of version `n`.
pub fn version_key(n: i64) -> Key {
    format!("cfg#v#{n}")
}

/// Hex SHA-256 of a document.
pub fn sha256(text: &str) -> String {
    crate::attachments::sha256_hex(text.as_bytes())
}

/// One published version (without its document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    /// Its number (1 for the first).
    pub number: i64,
    /// Hex SHA-256 of its document.
    pub sha256: String,
    /// Who published it: an IAM principal ARN, or the user a local tool ran as.
    pub by: String,
    /// When (epoch ms).
    pub at: EpochMillis,
    /// Why.
    pub reason: String,
}

impl Version {
    fn from_item(item: &Item, number: Option<i64>) -> Option<Self> {
        Some(Self {
            number: number.or_else(|| get_n(item, VERSION))?,
            sha256: get_s(item, SHA256)?.to_owned(),
            by: get_s(item, BY).unwrap_or("unknown").to_owned(),
            at: get_n(item, AT).unwrap_or(0),
            reason: get_s(item, REASON).unwrap_or_default().to_owned(),
        })
    }

    fn to_item(&self) -> Item {
        let mut item = Item::new();
        item.insert(SHA256.into(), Value::S(self.sha256.clone()));
        item.insert(BY.into(), Value::S(self.by.clone()));
        item.insert(AT.into(), Value::N(self.at));
        item.insert(REASON.into(), Value::S(self.reason.clone()));
        item
    }

    /// Who and when, for the config audit's `changed_by`.
    pub fn describe(&self) -> String {
        format!(
            "config version {} published by {} at {}: {}",
            self.number,
            self.by,
            crate::clock::format_rfc3339(self.at),
            self.reason
        )
    }
}

/// A publish refused or not applied; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The document does not validate (every problem, each with its JSON path).
    #[error("the config is invalid: {}", describe_errors(.0))]
    Invalid(ConfigErrors),
    /// The document is the one in force.
    #[error("unchanged: version {0} in force has this exact document")]
    Unchanged(i64),
    /// Larger than [`MAX_DOCUMENT_BYTES`].
    #[error("the document is {0} bytes; at most {MAX_DOCUMENT_BYTES} are published")]
    TooLarge(usize),
    /// The reason is empty.
    #[error("reason: required (kept with the version)")]
    NoReason,
    /// Another publish won at the same moment.
    #[error("another version was published at the same moment; diff again and retry")]
    Contended,
    /// The state table could not be read or written.
    #[error("shared state unavailable: {0}")]
    Store(#[from] StoreError),
}

/// Every problem as `path: message`, joined.
pub fn describe_errors(errors: &ConfigErrors) -> String {
    errors
        .0
        .iter()
        .map(|i| format!("{}: {}", i.path, i.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The version in force, `None` before the first publish.
pub async fn head(store: &dyn StateStore) -> Result<Option<Version>, StoreError> {
    Ok(store
        .get(&HEAD_KEY.to_owned())
        .await?
        .and_then(|item| Version::from_item(&item, None)))
}

/// Version `n` and its document.
pub async fn document(
    store: &dyn StateStore,
    n: i64,
) -> Result<Option<(Version, String)>, StoreError> {
    Ok(store.get(&version_key(n)).await?.and_then(|item| {
        let version = Version::from_item(&item, Some(n))?;
        Some((version, get_s(&item, DOCUMENT)?.to_owned()))
    }))
}

/// The last `limit` versions (at most [`MAX_HISTORY`]), newest first.
pub async fn history(store: &dyn StateStore, limit: usize) -> Result<Vec<Version>, StoreError> {
    let Some(head) = head(store).await? else {
        return Ok(Vec::new());
    };
    let limit = i64::try_from(limit.min(MAX_HISTORY)).unwrap_or(0);
    let keys: Vec<Key> = (head.number.saturating_sub(limit).saturating_add(1).max(1)..=head.number)
        .rev()
        .map(version_key)
        .collect();
    let items = get_all(store, &keys).await?;
    Ok(keys
        .iter()
        .zip(items)
        .filter_map(|(key, item)| {
            let n = key.rsplit('#').next()?.parse().ok()?;
            Version::from_item(item.as_ref()?, Some(n))
        })
        .collect())
}

/// Validates `text` as the config document (with the legacy document `legacy` and the
/// environment `env`, as a process would load it) and publishes it as the next version.
pub async fn publish(
    store: &dyn StateStore,
    text: &str,
    legacy: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    by: &str,
    reason: &str,
    now: EpochMillis,
) -> Result<Version, PublishError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(PublishError::TooLarge(text.len()));
    }
    if reason.trim().is_empty() {
        return Err(PublishError::NoReason);
    }
    load_config(Some(text), legacy, env).map_err(PublishError::Invalid)?;
    let sha = sha256(text);
    let current = head(store).await?;
    if let Some(c) = &current
        && c.sha256 == sha
    {
        return Err(PublishError::Unchanged(c.number));
    }
    let version = Version {
        number: current.as_ref().map_or(1, |c| c.number + 1),
        sha256: sha,
        by: by.to_owned(),
        at: now,
        reason: reason.trim().to_owned(),
    };
    let mut stored = version.to_item();
    stored.insert(DOCUMENT.into(), Value::S(text.to_owned()));
    let mut head_item = version.to_item();
    head_item.insert(VERSION.into(), Value::N(version.number));
    let writes = vec![
        Write {
            key: version_key(version.number),
            op: WriteOp::Put(stored),
            condition: Condition::ItemNotExists,
        },
        Write {
            key: HEAD_KEY.to_owned(),
            op: WriteOp::Put(head_item),
            condition: match &current {
                None => Condition::ItemNotExists,
                Some(c) => Condition::cmp(VERSION, CmpOp::Eq, c.number),
            },
        },
    ];
    match store.transact(writes).await? {
        TransactOutcome::Committed => Ok(version),
        TransactOutcome::Cancelled(_) => Err(PublishError::Contended),
    }
}

/// What changes from `old` to `new`, one line per changed value of their redacted documents
/// (so secrets never show): `~ path: old → new`, `+ path: new`, `- path: old`. Gateways are
/// named by id (`gateways[a].priority`), so a reordering is not a change.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    diff_values(
        "",
        &crate::config::redacted_document(old),
        &crate::config::redacted_document(new),
        &mut out,
    );
    out
}

fn by_id(
    list: &[serde_json::Value],
) -> Option<std::collections::BTreeMap<String, &serde_json::Value>> {
    list.iter()
        .map(|v| Some((v.get("id")?.as_str()?.to_owned(), v)))
        .collect()
}

fn diff_values(
    path: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value as J;
    let at = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (old, new) {
        (J::Object(a), J::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff_values(&at(k), x, y, out),
                    (Some(x), None) => out.push(format!("- {}: {x}", at(k))),
                    (None, Some(y)) => out.push(format!("+ {}: {y}", at(k))),
                    (None, None) => {}
                }
            }
        }
        (J::Array(a), J::Array(b)) if a != b => match (by_id(a), by_id(b)) {
            (Some(a), Some(b)) => {
                let ids: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for id in ids {
                    let here = format!("{path}[{id}]");
                    match (a.get(id), b.get(id)) {
                        (Some(x), Some(y)) => diff_values(&here, x, y, out),
                        (Some(_), None) => out.push(format!("- {here}")),
                        (None, Some(y)) => out.push(format!("+ {here}: {y}")),
                        (None, None) => {}
                    }
                }
            }
            _ => out.push(format!("~ {path}: {old} → {new}")),
        },
        _ if old != new => out.push(format!("~ {path}: {old} → {new}")),
        _ => {}
    }
}

/// How a process reads its environment (the config's overrides: `QUEUE_DAILY_RATE_LIMIT`,
/// `CB_*`, …), shared with every load of a new version.
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where a process's new configs come from.
#[derive(Clone)]
pub enum Source {
    /// Versions published to the state table.
    Store(Arc<dyn StateStore>),
    /// A file, read again at each poll (`gateway serve --config` without a state table); its
    /// version number is derived from its content.
    File(PathBuf),
    /// Nowhere: the config never changes (tests, a process without a config file).
    Fixed,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(_) => f.write_str("Store"),
            Self::File(p) => write!(f, "File({})", p.display()),
            Self::Fixed => f.write_str("Fixed"),
        }
    }
}

/// A new config to activate.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its version.
    pub version: Version,
    /// The config, validated.
    pub config: Arc<Config>,
}

/// What a process knows of the live config: where new versions come from, which is in force,
/// which was rejected. See the module docs.
pub struct LiveConfig {
    source: Source,
    env: Env,
    legacy: Option<String>,
    poll: Duration,
    metrics_namespace: Option<String>,
    state: Mutex<PollState>,
}

#[derive(Debug, Default)]
struct PollState {
    checked_at: Option<EpochMillis>,
    active: Option<Version>,
    rejected: Option<(i64, String)>,
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConfig")
            .field("source", &self.source)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl LiveConfig {
    /// New versions from `source`, loaded with the environment `env` and the legacy document
    /// `legacy` (the process's `GMAIL_WORKSPACES_FILE`, which a publish does not replace),
    /// checked every `poll`. A rejection writes a `ConfigRejected` metric line in
    /// `metrics_namespace` when given.
    pub fn new(
        source: Source,
        env: Env,
        legacy: Option<String>,
        poll: Duration,
        metrics_namespace: Option<String>,
    ) -> Self {
        Self {
            source,
            env,
            legacy,
            poll,
            metrics_namespace,
            state: Mutex::new(PollState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PollState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The version in force, once one was activated.
    pub fn active(&self) -> Option<Version> {
        self.state().active.clone()
    }

    /// The version rejected last and why, until a later one is activated.
    pub fn rejected(&self) -> Option<(i64, String)> {
        self.state().rejected.clone()
    }

    /// A newer version to activate, when the poll interval has passed since the last check
    /// (`force`: check now) and there is one that validates. A version that does not is
    /// rejected here.
    pub async fn candidate(&self, now: EpochMillis, force: bool) -> Option<Candidate> {
        {
            let mut s = self.state();
            let poll = i64::try_from(self.poll.as_millis()).unwrap_or(i64::MAX);
            if !force && s.checked_at.is_some_and(|at| now < at.saturating_add(poll)) {
                return None;
            }
            s.checked_at = Some(now);
        }
        let (version, text) = match self.fetch().await {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(problem) => {
                tracing::warn!(error_kind = "config_source", problem = %problem, "could not check for a new config version; the one in force stays");
                return None;
            }
        };
        if sha256(&text) != version.sha256 {
            self.reject(
                &version,
                "its document does not match its sha256".to_owned(),
                now,
            );
            return None;
        }
        let env = Arc::clone(&self.env);
        match load_config(Some(&text), self.legacy.as_deref(), &move |n| env(n)) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    tracing::warn!(setting = %w.path, problem = %w.message, config_version = version.number, "configuration warning");
                }
                Some(Candidate {
                    version,
                    config: Arc::new(loaded.config),
                })
            }
            Err(errors) => {
                self.reject(&version, describe_errors(&errors), now);
                None
            }
        }
    }

    /// The newest version and its document when it is neither in force nor rejected.
    async fn fetch(&self) -> Result<Option<(Version, String)>, String> {
        let known = |n: i64| {
            let s = self.state();
            s.active.as_ref().is_some_and(|a| a.number == n)
                || s.rejected.as_ref().is_some_and(|r| r.0 == n)
        };
        match &self.source {
            Source::Fixed => Ok(None),
            Source::Store(store) => {
                let Some(head) = head(store.as_ref()).await.map_err(|e| e.to_string())? else {
                    return Ok(None);
                };
                if known(head.number) {
                    return Ok(None);
                }
                document(store.as_ref(), head.number)
                    .await
                    .map_err(|e| e.to_string())?
                    .map(Some)
                    .ok_or_else(|| {
                        format!("version {} is named by the head but missing", head.number)
                    })
            }
            Source::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let sha = sha256(&text);
                // The content names the version: the first 12 hex digits as a number.
                let number = i64::from_str_radix(&sha[..12], 16).unwrap_or(0);
                if known(number) {
                    return Ok(None);
                }
                let version = Version {
                    number,
                    sha256: sha,
                    by: format!("the file {}", path.display()),
                    at: 0,
                    reason: "the file changed".to_owned(),
                };
                Ok(Some((version, text)))
            }
        }
    }

    /// Records that `version` is in force.
    pub fn activated(&self, version: &Version) {
        let mut s = self.state();
        s.active = Some(version.clone());
        s.rejected = None;
    }

    /// Records that `version` cannot be used, and says so: an error log naming the problems
    /// and, where this process writes metrics, a `ConfigRejected` metric line.
    #[allow(clippy::print_stdout, reason = "EMF lines go to stdout by design")]
    pub fn reject(&self, version: &Version, problems: String, now: EpochMillis) {
        tracing::error!(
            error_kind = "config_rejected",
            config_version = version.number,
            published_by = %version.by,
            problems = %problems,
            "config version rejected; the one in force stays"
        );
        if let Some(ns) = &self.metrics_namespace {
            let mut values = serde_json::Map::new();
            values.insert(REJECTED_METRIC.to_owned(), 1.into());
            println!(
                "{}",
                crate::emf::emf_line(ns, now, &[], &[(REJECTED_METRIC, "Count")], values)
            );
        }
        self.state().rejected = Some((version.number, problems));
    }
}

/// What a [`BuildFn`] builds from.
pub struct BuildInput<T> {
    /// The config to build for.
    pub config: Arc<Config>,
    /// Its published version; `None` for the deployed file.
    pub version: Option<Version>,
    /// The value running now, to carry state over (none at start).
    pub previous: Option<Arc<T>>,
}

impl<T> std::fmt::Debug for BuildInput<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildInput")
            .field("version", &self.version)
            .field("previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds what a process runs from a config, or says why it cannot.
pub type BuildFn<T> =
    Arc<dyn Fn(BuildInput<T>) -> BoxFuture<'static, Result<T, String>> + Send + Sync>;

/// What a process runs, built from the config in force and rebuilt when a new version is
/// activated (see the module docs). Cheap to read: [`Reloading::get`] checks for a new version
/// at most once per poll interval.
pub struct Reloading<T> {
    live: LiveConfig,
    clock: Arc<dyn Clock>,
    build: BuildFn<T>,
    current: RwLock<(Arc<Config>, Arc<T>)>,
    refreshing: tokio::sync::Mutex<()>,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Starts on the version in force when `live` has one that builds, else on `file_config`
    /// (the deployed file). Fails only when the file config does not build either.
    pub async fn start(
        live: LiveConfig,
        clock: Arc<dyn Clock>,
        file_config: Arc<Config>,
        build: BuildFn<T>,
    ) -> Result<Self, String> {
        let now = clock.now_ms();
        let mut first = None;
        if let Some(c) = live.candidate(now, true).await {
            let input = BuildInput {
                config: Arc::clone(&c.config),
                version: Some(c.version.clone()),
                previous: None,
            };
            match build(input).await {
                Ok(value) => {
                    tracing::info!(config_version = c.version.number, published_by = %c.version.by, "starting on the published config");
                    live.activated(&c.version);
                    first = Some((c.config, Arc::new(value)));
                }
                Err(problem) => live.reject(&c.version, problem, now),
            }
        }
        let first = match first {
            Some(f) => f,
            None => {
                let input = BuildInput {
                    config: Arc::clone(&file_config),
                    version: None,
                    previous: None,
                };
                let value = build(input).await?;
                (file_config, Arc::new(value))
            }
        };
        Ok(Self {
            live,
            clock,
            build,
            current: RwLock::new(first),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// A fixed value over a fixed config (tests, a process without live config).
    pub fn fixed(config: Arc<Config>, value: Arc<T>, clock: Arc<dyn Clock>) -> Self {
        let build: BuildFn<T> =
            Arc::new(|_| Box::pin(async { Err("a fixed config is not rebuilt".to_owned()) }));
        Self {
            live: LiveConfig::new(Source::Fixed, Arc::new(|_| None), None, Duration::MAX, None),
            clock,
            build,
            current: RwLock::new((config, value)),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The running value, after activating a new version when one is due and builds.
    pub async fn get(&self) -> Arc<T> {
        self.refresh(false).await;
        self.value()
    }

    /// The running value, without checking for a new version.
    pub fn value(&self) -> Arc<T> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .1,
        )
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .0,
        )
    }

    /// The live config's view (version in force, last rejection).
    pub fn live(&self) -> &LiveConfig {
        &self.live
    }

    /// Checks for a new version (at once with `force`) and activates it when it builds.
    /// Returns whether one was activated. Concurrent callers do not wait for a check in
    /// progress: they keep the running value.
    pub async fn refresh(&self, force: bool) -> bool {
        let Ok(_guard) = self.refreshing.try_lock() else {
            return false;
        };
        let now = self.clock.now_ms();
        let Some(candidate) = self.live.candidate(now, force).await else {
            return false;
        };
        let input = BuildInput {
            config: Arc::clone(&candidate.config),
            version: Some(candidate.version.clone()),
            previous: Some(self.value()),
        };
        match (self.build)(input).await {
            Ok(value) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    (candidate.config, Arc::new(value));
                self.live.activated(&candidate.version);
                tracing::info!(
                    config_version = candidate.version.number,
                    published_by = %candidate.version.by,
                    reason = %candidate.version.reason,
                    "config version activated"
                );
                true
            }
            Err(problem) => {
                self.live.reject(&candidate.version, problem, now);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
