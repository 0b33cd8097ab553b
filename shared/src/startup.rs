//! The one wiring path: how every Lambda function (and, for its AWS parts, `gateway serve`)
//! builds its dependencies before serving.
//!
//! A function's library has `wire(&mut Startup) -> Option<Deps>`; its `main` is
//!
//! ```text
//! startup::init_json_logs();
//! let mut startup = Startup::from_process();
//! let deps = wire(&mut startup).await;
//! let deps = startup.finish(deps).unwrap_or_else(|problems| startup::exit_with(&problems));
//! lambda_runtime::run(service_fn(|event| handle(event, &deps))).await
//! ```
//!
//! What this buys:
//! - **Every problem at once.** Each step that fails records a [`Problem`] (the variable or
//!   config path at fault, never a secret value) and wiring goes on, so a misconfigured
//!   deployment fails its first start with one log line per mistake instead of one mistake per
//!   deploy.
//! - **The adapters' own clients.** AWS clients are built only here, through the adapters'
//!   constructors ([`crate::state::dynamodb::client`]: SDK retries off because the store
//!   retries, bounded connect and attempt waits; [`crate::queue::sqs::client`]: bounded waits),
//!   so no function can stack the SDK's retries under the store's or wait forever on a stalled
//!   connection. [`Startup::clients`] lists what was built, read back from each client's
//!   configuration, and a test holds every function to it.
//! - **Known reads.** Variables are read from a snapshot through [`Startup::var`], which
//!   remembers every name asked for ([`Startup::variables_read`]): the template drift test
//!   compares that with each function's `ENV_VARS` and `template.yaml`.
//! - **A measured start.** Each step's duration is logged once in the `start-up done` line
//!   (`RUST_LOG=info`), so a slow start (a Secrets Manager round trip, a large config) names its
//!   step.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;

use crate::clock::{Clock, SystemClock};
use crate::config::{
    Config, ConfigErrors, GATEWAY_CONFIG_FILE, GMAIL_WORKSPACES_FILE, Loaded, load_from,
};
use crate::duration::parse_duration;
use crate::events::EventSink;
use crate::queue::Queue;
use crate::queue::sqs::{self, SqsQueue};
use crate::secrets::SecretResolver;
use crate::sqs_sink::SqsEventSink;
use crate::state::StateStore;
use crate::state::dynamodb::{self, DEFAULT_TABLE, DynamoStore, TABLE_ENV};

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
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

/// The problems of a config that did not load, by JSON path.
pub fn config_problems(errors: ConfigErrors) -> impl Iterator<Item = Problem> {
    errors
        .0
        .into_iter()
        .map(|issue| Problem::new(issue.path, issue.message))
}

/// How one AWS client was built, read back from the client's own configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// `dynamodb` or `sqs`.
    pub service: &'static str,
    /// Requests the SDK sends per operation (1: the SDK does not retry).
    pub max_attempts: u32,
    /// Bound on one request's wait, if any.
    pub attempt_timeout: Option<Duration>,
    /// Bound on connecting, if any.
    pub connect_timeout: Option<Duration>,
}

/// The AWS side of an entry point: the SDK configuration loaded once, and the adapters' clients
/// built from it, each at most once. Shared by [`Startup`] and `gateway serve`.
#[derive(Debug)]
pub struct AwsClients {
    sdk: SdkConfig,
    dynamodb: OnceLock<dynamodb::Client>,
    sqs: OnceLock<sqs::Client>,
    built: Mutex<Vec<ClientSettings>>,
}

impl AwsClients {
    /// The SDK configuration from the environment: region, credentials and endpoints
    /// (`AWS_ENDPOINT_URL` points every client at an emulator), with the process's shared HTTP
    /// client ([`crate::tls::aws_http_client`]).
    ///
    /// When the environment holds the credentials and the region, as Lambda's always does,
    /// they are taken from it directly. The SDK's default chain would find them there first
    /// too, but it builds its other providers before asking (an STS client for web identity,
    /// an instance-metadata client): most of a function's start-up, measured
    /// (docs/BENCHMARKS.md). Elsewhere (profiles, SSO, instance roles) the default chain runs.
    pub async fn from_env() -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        let has = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        if has("AWS_ACCESS_KEY_ID") && has("AWS_SECRET_ACCESS_KEY") {
            loader = loader.credentials_provider(
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            );
        }
        if has("AWS_REGION") || has("AWS_DEFAULT_REGION") {
            loader =
                loader.region(aws_config::environment::EnvironmentVariableRegionProvider::new());
        }
        Self::from_sdk(
            loader
                .http_client(crate::tls::aws_http_client())
                .load()
                .await,
        )
    }

    /// Clients built from `sdk`.
    pub fn from_sdk(sdk: SdkConfig) -> Self {
        Self {
            sdk,
            dynamodb: OnceLock::new(),
            sqs: OnceLock::new(),
            built: Mutex::new(Vec::new()),
        }
    }

    /// The SDK configuration (for clients the adapters build themselves, such as SES's).
    pub fn sdk(&self) -> &SdkConfig {
        &self.sdk
    }

    /// The DynamoDB client as the state store needs it ([`dynamodb::client`]), built once.
    pub fn dynamodb(&self) -> dynamodb::Client {
        self.dynamodb
            .get_or_init(|| {
                let client = dynamodb::client(&self.sdk);
                let config = client.config();
                self.record("dynamodb", config.retry_config(), config.timeout_config());
                client
            })
            .clone()
    }

    /// The state store on `table`.
    pub fn state_store(&self, table: impl Into<String>) -> Arc<dyn StateStore> {
        Arc::new(DynamoStore::new(self.dynamodb(), table))
    }

    /// The SQS client as the queue and event-sink adapters need it ([`sqs::client`]), built
    /// once.
    pub fn sqs(&self) -> sqs::Client {
        self.sqs
            .get_or_init(|| {
                let client = sqs::client(&self.sdk);
                let config = client.config();
                self.record("sqs", config.retry_config(), config.timeout_config());
                client
            })
            .clone()
    }

    /// Every client built so far.
    pub fn clients(&self) -> Vec<ClientSettings> {
        self.built
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(
        &self,
        service: &'static str,
        retry: Option<&aws_config::retry::RetryConfig>,
        timeouts: Option<&aws_config::timeout::TimeoutConfig>,
    ) {
        self.built
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ClientSettings {
                service,
                max_attempts: retry.map_or(1, |r| r.max_attempts()),
                attempt_timeout: timeouts.and_then(|t| t.operation_attempt_timeout()),
                connect_timeout: timeouts.and_then(|t| t.connect_timeout()),
            });
    }
}

/// A function's start-up in progress: the environment it reads, the problems found so far, the
/// shared pieces built once (clock, AWS clients, secret resolver) and the time each step took.
pub struct Startup {
    env: BTreeMap<String, String>,
    read: Mutex<BTreeSet<String>>,
    problems: Vec<Problem>,
    clock: Arc<dyn Clock>,
    aws: Option<Arc<AwsClients>>,
    resolver: Option<Arc<SecretResolver>>,
    started: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl std::fmt::Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values are not shown: some variables name secrets' locations.
        f.debug_struct("Startup")
            .field("variables", &self.env.len())
            .field("problems", &self.problems)
            .finish_non_exhaustive()
    }
}

impl Startup {
    /// A start-up reading the process environment (variables that are not valid UTF-8 are
    /// ignored, as unset).
    pub fn from_process() -> Self {
        Self::with_env(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// A start-up reading exactly `vars` (tests; the AWS SDK still reads its own variables from
    /// the process).
    pub fn with_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            env: vars.into_iter().collect(),
            read: Mutex::new(BTreeSet::new()),
            problems: Vec::new(),
            clock: Arc::new(SystemClock),
            aws: None,
            resolver: None,
            started: Instant::now(),
            steps: Vec::new(),
        }
    }

    /// The variable's value; `None` when unset, empty or only blanks.
    pub fn var(&self, name: &str) -> Option<String> {
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned());
        self.env.get(name).filter(|v| !v.trim().is_empty()).cloned()
    }

    /// [`Startup::var`], with a problem when it is missing.
    pub fn required(&mut self, name: &str) -> Option<String> {
        let value = self.var(name);
        if value.is_none() {
            self.problem(name, "required, and not set");
        }
        value
    }

    /// A positive whole number from `name`, or `default` when unset; a problem when malformed.
    pub fn positive(&mut self, name: &str, default: u32) -> u32 {
        match self.var(name) {
            None => default,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    self.problem(name, format!("{v:?} is not a positive whole number"));
                    default
                }
            },
        }
    }

    /// A positive duration (`"10s"`, `"500ms"`) from `name`, or `default` when unset; a problem
    /// when malformed.
    pub fn duration(&mut self, name: &str, default: Duration) -> Duration {
        match self.var(name) {
            None => default,
            Some(v) => match parse_duration(&v) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    self.problem(
                        name,
                        format!("{v:?} is not a positive duration such as \"10s\""),
                    );
                    default
                }
            },
        }
    }

    /// Records a problem with `setting`.
    pub fn problem(&mut self, setting: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(setting, message));
    }

    /// The gateway config named by `GATEWAY_CONFIG_FILE` / `GMAIL_WORKSPACES_FILE` and the other
    /// config variables. Its warnings are logged; its errors become problems (one per JSON
    /// path) and the answer is `None`.
    pub fn config(&mut self) -> Option<Config> {
        let at = Instant::now();
        let loaded = load_from(&|name| self.var(name));
        self.step("config", at);
        match loaded {
            Ok(Loaded { config, warnings }) => {
                for warning in &warnings {
                    tracing::warn!(setting = %warning.path, problem = %warning.message, "configuration warning");
                }
                Some(config)
            }
            Err(errors) => {
                self.problems.extend(config_problems(errors));
                None
            }
        }
    }

    /// [`Startup::config`] when a config is named at all (`None` without a problem when neither
    /// `GATEWAY_CONFIG_FILE` nor `GMAIL_WORKSPACES_FILE` is set).
    pub fn optional_config(&mut self) -> Option<Config> {
        if self.var(GATEWAY_CONFIG_FILE).is_none() && self.var(GMAIL_WORKSPACES_FILE).is_none() {
            return None;
        }
        self.config()
    }

    /// What the process runs, built by `build` from the published config version in force
    /// (the state table's `cfg#head`, [`crate::live_config`]) or, before any publish, from
    /// `file_config`, and rebuilt when a new version is published (checked every
    /// [`crate::live_config::DEFAULT_POLL`]). A rejected version writes a `ConfigRejected`
    /// metric line in `metrics_namespace` when given. `None`, with the problem recorded, when
    /// neither builds.
    pub async fn reloading<T: Send + Sync + 'static>(
        &mut self,
        file_config: Config,
        metrics_namespace: Option<String>,
        build: crate::live_config::BuildFn<T>,
    ) -> Option<crate::live_config::Reloading<T>> {
        use crate::live_config::{DEFAULT_POLL, LiveConfig, Reloading, Source};
        let legacy = self
            .var(GMAIL_WORKSPACES_FILE)
            .and_then(|path| std::fs::read_to_string(path).ok());
        let env = self.env.clone();
        let live = LiveConfig::new(
            Source::Store(self.state_store().await),
            Arc::new(move |name| env.get(name).cloned()),
            legacy,
            DEFAULT_POLL,
            metrics_namespace,
        );
        let at = Instant::now();
        let started = Reloading::start(live, self.clock(), Arc::new(file_config), build).await;
        self.step("live config", at);
        started.map_err(|e| self.problem("config", e)).ok()
    }

    /// The clock every dependency shares.
    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }

    /// Where attachments given by reference are read: S3 at `ATTACHMENTS_BUCKET`, the only
    /// bucket messages may name; `None` when it is unset (a message naming one then fails).
    #[cfg(feature = "providers")]
    pub async fn attachments(&mut self) -> Option<crate::attachments::Attachments> {
        let bucket = self.var("ATTACHMENTS_BUCKET")?;
        let store = crate::attachments::S3Store::from_sdk(self.aws().await.sdk());
        Some(crate::attachments::Attachments {
            store: Arc::new(store),
            bucket,
        })
    }

    /// The AWS clients, loaded on first use.
    pub async fn aws(&mut self) -> Arc<AwsClients> {
        if let Some(aws) = &self.aws {
            return Arc::clone(aws);
        }
        let at = Instant::now();
        let aws = Arc::new(AwsClients::from_env().await);
        self.step("aws config", at);
        self.aws = Some(Arc::clone(&aws));
        aws
    }

    /// The secret resolver (environment, Secrets Manager, SSM), built on first use; its AWS
    /// clients are built on its first AWS reference.
    pub async fn resolver(&mut self) -> Arc<SecretResolver> {
        if let Some(resolver) = &self.resolver {
            return Arc::clone(resolver);
        }
        let aws = self.aws().await;
        let env = self.env.clone();
        let resolver = Arc::new(
            SecretResolver::new(self.clock())
                .with_env_lookup(Arc::new(move |name| env.get(name).cloned()))
                .with_aws_config(aws.sdk().clone()),
        );
        self.resolver = Some(Arc::clone(&resolver));
        resolver
    }

    /// The state store on the table named by `GATEWAY_STATE_TABLE` (default `gateway-state`).
    pub async fn state_store(&mut self) -> Arc<dyn StateStore> {
        let table = self
            .var(TABLE_ENV)
            .unwrap_or_else(|| DEFAULT_TABLE.to_owned());
        let at = Instant::now();
        let store = self.aws().await.state_store(table);
        self.step("state store", at);
        store
    }

    /// An event sink on the SQS queue at `url`.
    pub async fn event_sink(&mut self, url: String) -> Arc<dyn EventSink> {
        let at = Instant::now();
        let sink = Arc::new(SqsEventSink::new(self.aws().await.sqs(), url));
        self.step("event sink", at);
        sink
    }

    /// The SQS queue at `url`.
    pub async fn queue(&mut self, url: String) -> Arc<dyn Queue> {
        let at = Instant::now();
        let queue = Arc::new(SqsQueue::new(self.aws().await.sqs(), url));
        self.step("queue", at);
        queue
    }

    /// One provider client per enabled gateway of `config`; `None` (with a problem per gateway
    /// that cannot be built, e.g. a secret that does not resolve) otherwise.
    #[cfg(feature = "providers")]
    pub async fn providers(&mut self, config: &Config) -> Option<crate::providers::Providers> {
        let resolver = self.resolver().await;
        let at = Instant::now();
        let built = crate::providers::factory::build_providers(
            config,
            &resolver,
            &config.http,
            self.clock(),
        )
        .await;
        self.step("providers", at);
        match built {
            Ok(providers) => Some(providers),
            Err(e) => {
                for p in e.problems {
                    self.problem(
                        format!("gateways[{}] ({})", p.index, p.gateway_id),
                        p.problem.to_string(),
                    );
                }
                None
            }
        }
    }

    /// The MySQL record of delivery at `DATABASE_URL` (a `mysql://` URL or a secret reference
    /// holding one) with `DATABASE_MAX_CONNECTIONS` connections (default 2). The pool connects
    /// lazily: a database that is down does not keep the function from starting.
    #[cfg(feature = "mysql")]
    pub async fn database(&mut self) -> Option<crate::records::mysql::MysqlRecords> {
        use crate::config::SecretRef;
        use crate::records::mysql::{MysqlRecords, PoolSettings};
        let url = self.required("DATABASE_URL");
        let defaults = PoolSettings::default();
        let settings = PoolSettings {
            max_connections: self.positive("DATABASE_MAX_CONNECTIONS", defaults.max_connections),
            ..defaults
        };
        let url = url?;
        let resolver = self.resolver().await;
        let at = Instant::now();
        let resolved = resolver.resolve(&SecretRef::parse(&url)).await;
        self.step("database url", at);
        let connected = match resolved {
            Ok(url) => MysqlRecords::connect(url.expose(), &settings).map_err(|e| e.to_string()),
            Err(e) => Err(format!("not resolved: {e}")),
        };
        connected
            .map_err(|message| self.problem("DATABASE_URL", message))
            .ok()
    }

    /// Every variable asked for so far, set or not.
    pub fn variables_read(&self) -> BTreeSet<String> {
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every AWS client built so far.
    pub fn clients(&self) -> Vec<ClientSettings> {
        self.aws.as_ref().map(|a| a.clients()).unwrap_or_default()
    }

    /// The problems found so far.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The dependencies when wiring found no problem (and logs how long each step took);
    /// otherwise every problem found.
    pub fn finish<T>(&self, deps: Option<T>) -> Result<T, Vec<Problem>> {
        match deps {
            Some(deps) if self.problems.is_empty() => {
                let steps: Vec<String> = self
                    .steps
                    .iter()
                    .map(|(name, d)| format!("{name} {}µs", d.as_micros()))
                    .collect();
                tracing::info!(
                    total_us = self.started.elapsed().as_micros() as u64,
                    steps = %steps.join(", "),
                    "start-up done"
                );
                Ok(deps)
            }
            _ if self.problems.is_empty() => Err(vec![Problem::new(
                "start-up",
                "wiring stopped without naming a problem",
            )]),
            _ => Err(self.problems.clone()),
        }
    }

    fn step(&mut self, name: &'static str, since: Instant) {
        self.steps.push((name, since.elapsed()));
    }
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

/// Logs every problem and exits 1 (Lambda reports an init failure).
pub fn exit_with(problems: &[Problem]) -> ! {
    for p in problems {
        tracing::error!(setting = %p.setting, problem = %p.message, "start-up failed");
    }
    std::process::exit(1)
}

/// What the pipeline and the health checker are built from, whichever config version is in
/// force: shared by the functions' wiring and `gateway serve`.
#[derive(Clone)]
pub struct Shared {
    /// Resolves the providers' secrets.
    pub resolver: Arc<SecretResolver>,
    /// The shared state.
    pub store: Arc<dyn StateStore>,
    /// Where outcome, health and config events go.
    pub events: Arc<dyn EventSink>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Where attachments given by reference are read, when the deployment has a bucket.
    pub attachments: Option<crate::attachments::Attachments>,
}

#[cfg(feature = "providers")]
impl Shared {
    /// One provider client per enabled gateway of `config`, or every problem in one line.
    async fn providers(&self, config: &Config) -> Result<crate::providers::Providers, String> {
        crate::providers::factory::build_providers(
            config,
            &self.resolver,
            &config.http,
            Arc::clone(&self.clock),
        )
        .await
        .map_err(|e| e.to_string())
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// Builds the send pipeline for each config version ([`crate::live_config::Reloading`]): its
/// provider clients, `settings` with the deadline margin the version's request timeout needs,
/// and, after the first, the running pipeline's sends still to mark.
#[cfg(feature = "providers")]
pub fn pipeline_builder(
    shared: Shared,
    settings: crate::pipeline::PipelineSettings,
) -> crate::live_config::BuildFn<crate::pipeline::Pipeline> {
    use crate::pipeline::{Pipeline, PipelineSettings};
    Arc::new(move |input| {
        let shared = shared.clone();
        Box::pin(async move {
            let config = input.config;
            let providers = shared.providers(&config).await?;
            let settings = PipelineSettings {
                deadline_margin: config.http.request_timeout + settings.post_send,
                ..settings
            };
            Ok(match input.previous {
                Some(running) => running.reconfigured(config, providers, settings),
                None => {
                    let pipeline = Pipeline::new(
                        config,
                        providers,
                        shared.store,
                        shared.events,
                        shared.clock,
                        settings,
                    );
                    match shared.attachments {
                        Some(a) => pipeline.with_attachments(a),
                        None => pipeline,
                    }
                }
            })
        })
    })
}

/// Builds the health checker for each config version; its config events name the version's
/// publisher, or `file` (what a process without a published version runs on).
#[cfg(feature = "providers")]
pub fn health_checker_builder(
    shared: Shared,
    file: String,
) -> crate::live_config::BuildFn<crate::health::HealthChecker> {
    Arc::new(move |input| {
        let shared = shared.clone();
        let changed_by = input
            .version
            .as_ref()
            .map_or_else(|| file.clone(), crate::live_config::Version::describe);
        Box::pin(async move {
            let config = input.config;
            let providers = shared.providers(&config).await?;
            Ok(crate::health::HealthChecker::new(
                config,
                providers,
                shared.store,
                shared.events,
                shared.clock,
            )
            .with_changed_by(changed_by))
        })
    })
}
