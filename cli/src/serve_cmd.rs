//! `gateway serve`: the whole sending side in one process, the way ARCHITECTURE §4 describes the local
//! run. With no flags everything is embedded and in memory (config `examples/local.json`,
//! queue, shared state, record of delivery), so it runs on a fresh machine with no AWS and no
//! database. Flags point each part at a real service instead; the queue is then polled exactly
//! as the Lambda event source mapping does it, through the same pipeline code the sender
//! function runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Args;
use gateway_core::attachments::{Attachments, Directory, S3Store};
use gateway_core::clock::{Clock, SystemClock};
use gateway_core::config::{Config, CustomerWebhook, ProviderSettings, SecretRef, load_config};
use gateway_core::customer_webhooks::{DeliveryReporting, Worker, WorkerSettings};
use gateway_core::duration::{format_duration, parse_duration};
use gateway_core::events::{EventSink, GatewayEvent, SinkError};
use gateway_core::live_config::{BuildFn, BuildInput, LiveConfig, Reloading, Source};
use gateway_core::message::{Stream, parse_message, with_id};
use gateway_core::pipeline::{PipelineSettings, PollSettings, Poller};
use gateway_core::queue::memory::{MemoryQueue, Redrive};
use gateway_core::queue::sqs::SqsQueue;
use gateway_core::queue::{Queue, QueueError};
use gateway_core::recorder::{CustomerWebhooks, Recorder};
use gateway_core::records::MemoryRecords;
use gateway_core::records::mysql::{MysqlRecords, PoolSettings};
use gateway_core::secrets::SecretResolver;
use gateway_core::sqs_sink::SqsEventSink;
use gateway_core::startup::AwsClients;
use gateway_core::startup::{Shared, health_checker_builder, pipeline_builder};
use gateway_core::state::StateStore;
use gateway_core::state::dynamodb::table_name_from_env;
use gateway_core::state::memory::MemoryStore;
use gateway_core::status::{Caller, HttpRequest, StatusApi, StatusRecords};
use gateway_core::webhooks::edge::{Edge, WebhookKeys};
use gateway_core::webhooks::sns::CertCache;
use serde_json::json;
use tokio::sync::watch;

/// The embedded local config: a capture gateway writing `.eml` files to `.local/outbox` and a
/// simulated provider as its failover.
pub const LOCAL_CONFIG: &str = include_str!("../../examples/local.json");

/// Receives after which the in-memory queue moves a message to its dead-letter queue (the
/// local stand-in for the outbound queue's redrive policy).
const LOCAL_MAX_RECEIVES: u32 = 10;

/// How often `gateway serve` runs the health checker (each gateway is probed at its own
/// interval; this bounds the delay).
const HEALTH_CHECK_TICK: Duration = Duration::from_secs(15);

/// Largest request body the enqueue route reads: a little over SQS's 1 MiB message limit, so
/// an oversized message is answered with the queue's own limit in the message.
const BODY_LIMIT: usize = gateway_core::queue::memory::MAX_BODY_BYTES + 64 * 1024;

/// `gateway serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Gateway config file; default: the embedded `examples/local.json`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address of the HTTP API (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8025", value_name = "ADDR")]
    listen: SocketAddr,
    /// Bearer token of the status routes; default: $GATEWAY_API_TOKEN, else a random one,
    /// printed at start.
    #[arg(long, env = "GATEWAY_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Poll this SQS queue instead of the in-memory one (AWS settings from the environment).
    #[arg(long, value_name = "URL")]
    sqs_queue_url: Option<String>,
    /// The bulk lane's SQS queue (with --sqs-queue-url), polled beside it as the deployed
    /// sender's second event source is; in memory, the bulk lane is a second in-memory queue.
    /// `POST /api/messages` puts a message whose `stream` is `bulk` there.
    #[arg(long, value_name = "URL", requires = "sqs_queue_url")]
    sqs_bulk_queue_url: Option<String>,
    /// Send outcome events to this SQS queue instead of recording them in-process.
    #[arg(long, value_name = "URL", conflicts_with = "database_url")]
    events_queue_url: Option<String>,
    /// Record in-process into this MySQL/MariaDB database (migrated at start) instead of
    /// memory: a reference to the URL, such as `env:DATABASE_URL`, `ssm:/path` or
    /// `secretsmanager:ARN[#key]` (a URL with its password written here is visible to every
    /// user of the machine in the process list: accepted, with a warning), resolving to
    /// `mysql://user:password@host:3306/database`.
    #[arg(long, value_name = "URL_OR_REFERENCE")]
    database_url: Option<String>,
    /// Keep shared state (limits, breakers, ledger, suppressions) in DynamoDB instead of memory.
    #[arg(long)]
    dynamodb: bool,
    /// DynamoDB table with --dynamodb; default $GATEWAY_STATE_TABLE, else `gateway-state`.
    #[arg(long, requires = "dynamodb")]
    table: Option<String>,
    /// Records per batch (1–10), like the event source mapping's batch size.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(1..=10))]
    batch_size: u8,
    /// How long a received batch stays hidden (the function timeout's role), e.g. `60s`.
    #[arg(long, default_value = "60s", value_parser = duration_arg)]
    visibility_timeout: Duration,
    /// Longest wait of one receive, e.g. `5s` (at most 20 s). Default: 1 s on the in-memory
    /// queue (a deferred message is seen again by the next receive, so a short wait retries it
    /// on time), 20 s on SQS (fewer empty receives; a message that arrives ends the wait).
    #[arg(long, value_parser = duration_arg)]
    poll_wait: Option<Duration>,
    /// Delay before the first retry of a message deferred with no known retry time (every
    /// candidate failed, or its outcome could not be recorded), doubled with each further
    /// delivery, e.g. `5s`. The sender function uses the default.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    retry_backoff: Duration,
    /// How long after a provider call that got no answer its acceptance event is waited for
    /// (Mailgun, SendGrid and SES gateways with webhooks configured) before the message is sent
    /// again, flagged as a possible duplicate, e.g. `2m`. The sender function reads
    /// `OUTBOUND_ACCEPTANCE_WAIT`.
    #[arg(long, default_value = "2m", value_parser = duration_arg)]
    acceptance_wait: Duration,
    /// How often the config is checked for a new version: the state table's published
    /// versions with `--dynamodb` (`gateway config push`), else the `--config` file (the
    /// embedded config never changes). A new version that validates and builds replaces the
    /// running one without a restart; one that does not is logged and the running one stays.
    #[arg(long, default_value = "30s", value_parser = duration_arg)]
    config_poll: Duration,
    /// Read attachments given by reference (`"s3": {"bucket", "key", …}`) from this
    /// directory instead of S3: the object `KEY` of bucket `B` is the file `DIR/B/KEY`.
    #[arg(long, value_name = "DIR")]
    attachments_dir: Option<PathBuf>,
    /// The one bucket messages may name: read from S3 (AWS settings from the environment,
    /// the emulator's with AWS_ENDPOINT_URL), or from --attachments-dir. Default with
    /// --attachments-dir: `attachments`.
    #[arg(long, value_name = "BUCKET")]
    attachments_bucket: Option<String>,
}

/// Poll wait on the in-memory queue when `--poll-wait` is not given.
const MEMORY_POLL_WAIT: Duration = Duration::from_secs(1);

/// Poll wait on SQS when `--poll-wait` is not given (SQS's longest long poll).
const SQS_POLL_WAIT: Duration = gateway_core::queue::MAX_WAIT;

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// Hands emitted events straight to an in-process recorder (record of delivery and suppression
/// list): the local stand-in for the events queue and the recorder function.
#[derive(Debug)]
struct RecordingSink(Recorder);

#[async_trait]
impl EventSink for RecordingSink {
    async fn emit(&self, events: &[GatewayEvent]) -> Result<(), SinkError> {
        self.0
            .apply_events(events)
            .await
            .map_err(|e| SinkError::Unavailable(Box::new(e)))
    }
}

#[derive(Clone)]
struct AppState {
    /// Provider webhooks (`POST /webhooks/{provider}`), authenticated like the function does.
    edge: Arc<Reloading<Edge>>,
    queue: Arc<dyn Queue>,
    /// The bulk lane, when there is one: where a message whose `stream` is `bulk` goes.
    bulk_queue: Option<Arc<dyn Queue>>,
    /// The status routes (`GET /api/gateways/*`, `/api/messages/{id}`,
    /// `/api/senders/{address}/usage`, `/status`, levers).
    status: Arc<Reloading<StatusApi>>,
    token: Arc<str>,
    /// Whether the enqueue route needs the token too: when listening beyond loopback, or when
    /// wired to anything but the embedded defaults (a config of its own, which may name real
    /// providers, or an SQS queue, which may be a production one).
    enqueue_needs_token: bool,
    /// The address it listens on: an enqueue must name it (or, on loopback, `localhost` with its
    /// port) in `Host`, and come from no other web origin.
    listen: std::net::SocketAddr,
}

/// Why an enqueue request is refused before its body is read, if it is: the defences against a
/// web page the operator opens making `gateway serve` send mail.
///
/// - `Content-Type` must be `application/json`: a cross-site form or `fetch` can send
///   `text/plain` or form bodies without the browser asking first, but not JSON.
/// - `Origin`, when present (browsers send it on cross-site posts), must be this server's own.
/// - `Host` must be the listen address (on loopback also `localhost:PORT`): a DNS-rebinding page
///   reaches 127.0.0.1 under its own host name, which is refused.
fn enqueue_refusal(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let port = state.listen.port();
    let own_hosts: Vec<String> = if state.listen.ip().is_loopback() {
        vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ]
    } else {
        // Beyond loopback the token is required anyway; any name of this machine will do.
        Vec::new()
    };
    let host_ok = |host: &str| {
        own_hosts.is_empty()
            || own_hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
            || host.eq_ignore_ascii_case(&state.listen.to_string())
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !host_ok(host) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "foreign_host",
            format!(
                "Host must name this server ({}); requests for another host name are refused (DNS rebinding)",
                state.listen
            ),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let own = origin.strip_prefix("http://").is_some_and(|rest| {
            !rest.contains('/') && host_ok(rest) && rest.eq_ignore_ascii_case(host)
        });
        if !own {
            return Some(error(
                StatusCode::FORBIDDEN,
                "foreign_origin",
                "requests from another web origin are refused",
            ));
        }
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "json_required",
            "send the message as Content-Type: application/json",
        ));
    }
    None
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

/// The token as a bearer token, or as the password of HTTP Basic authentication (any user
/// name), so that a browser can open `/status`: it asks for credentials on the 401.
fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let expected = state.token.as_bytes();
    if let Some(bearer) = value.strip_prefix("Bearer ") {
        return constant_time_eq(bearer.as_bytes(), expected);
    }
    value
        .strip_prefix("Basic ")
        .and_then(|b| BASE64.decode(b.trim()).ok())
        .and_then(|pair| {
            let colon = pair.iter().position(|&c| c == b':')?;
            Some(constant_time_eq(&pair[colon + 1..], expected))
        })
        .unwrap_or(false)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> Response {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid `Authorization: Bearer <token>` header (or the token as the Basic password) is required",
    );
    // Browsers opening /status prompt for the token (as the password) on this.
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"gateway serve\", charset=\"UTF-8\""),
    );
    response
}

async fn enqueue(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(refusal) = enqueue_refusal(&state, &headers) {
        return refusal;
    }
    if state.enqueue_needs_token && !authorized(&state, &headers) {
        return unauthorized();
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_refused(&rejection),
    };
    // Validated here so a typo gets a clear answer at once; the sender validates again.
    let stream = match parse_message(&body, Some("queue-assigned-id")) {
        Ok(message) => message.stream(),
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_message", e.to_string()),
    };
    let queue = match (&state.bulk_queue, stream) {
        (Some(bulk), Stream::Bulk) => bulk,
        _ => &state.queue,
    };
    // A body without `id` gets one, so a retried send to the queue keeps one key.
    let Some((text, message_id)) = std::str::from_utf8(&body).ok().and_then(with_id) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_message",
            "body is not a UTF-8 JSON object",
        );
    };
    match queue.send(&text).await {
        Ok(queue_id) => {
            tracing::info!(message_id = %message_id, stream = stream.as_str(), "enqueued");
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({"queue_message_id": queue_id, "message_id": message_id})),
            )
                .into_response()
        }
        Err(QueueError::TooLarge { bytes, max }) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("the message is {bytes} bytes; the queue takes at most {max}"),
        ),
        Err(e) => {
            tracing::warn!(error_kind = "queue_send", error = %e, "enqueue failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_unavailable",
                "the message could not be enqueued; try again",
            )
        }
    }
}

/// The status routes, answered by the same code as the status function, behind the token.
async fn status_route(
    State(state): State<AppState>,
    headers: HeaderMap,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let reply = state
        .status
        .get()
        .await
        .handle_request(method.as_str(), uri.path(), uri.query())
        .await;
    status_response(reply)
}

/// A status API reply as the HTTP answer: live figures, never cached.
fn status_response(reply: gateway_core::status::Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [
            (header::CONTENT_TYPE, reply.content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        reply.body,
    )
        .into_response()
}

/// `POST /api/levers/{target}`: an operator's lever action, behind the token and refused to a
/// foreign web page as the enqueue route is (a browser holding Basic credentials for `/status`
/// would otherwise send them with a cross-site form).
async fn lever_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(refusal) = enqueue_refusal(&state, &headers) {
        return refusal;
    }
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_refused(&rejection),
    };
    let reply = state
        .status
        .get()
        .await
        .serve(HttpRequest {
            method: "POST",
            path: uri.path(),
            query: uri.query(),
            body: &body,
            caller: &Caller::Token,
        })
        .await;
    status_response(reply)
}

/// Answers a body the server could not read (too large, broken transfer) without axum's
/// plain-text detail.
fn body_refused(rejection: &BytesRejection) -> Response {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        error(
            status,
            "message_too_large",
            format!("the body exceeds the server's limit of {BODY_LIMIT} bytes"),
        )
    } else {
        error(
            StatusCode::BAD_REQUEST,
            "unreadable_body",
            "the request body could not be read",
        )
    }
}

/// `POST /webhooks/{provider}`: the webhooks function's edge, in process. Public like the
/// deployed route: the providers' signatures authenticate it.
async fn provider_webhook(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let lookup = move |name: &str| -> Option<String> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let answer = state
        .edge
        .get()
        .await
        .handle(&provider, &lookup, &body)
        .await;
    (
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(answer.body),
    )
        .into_response()
}

async fn no_route() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; served: POST /api/messages, GET /api/messages?…, GET /api/messages/{id}, GET /api/gateways/{status,health,metrics,config}, GET /api/senders/{address}/usage, GET /api/levers, GET /api/levers/{target}/history, POST /api/levers/{target}, GET /status, POST /webhooks/{mailgun,sendgrid,ses}",
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// True when `url` has a password in its userinfo (`scheme://user:password@host`).
fn url_has_password(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| u.password().is_some())
}

fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for the token"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    let (text, origin) = match &args.config {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            LOCAL_CONFIG.to_owned(),
            "embedded examples/local.json".to_owned(),
        ),
    };
    let env = |name: &str| std::env::var(name).ok();
    match load_config(Some(&text), None, &env) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            Ok(loaded.config)
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            bail!(
                "{origin}: the configuration is invalid ({} problems)",
                errors.0.len()
            )
        }
    }
}

/// Runs `gateway serve` until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Refuses a visibility timeout in which no provider call could start: the pipeline starts no
/// call in the last `deadline_margin` of a batch (the provider request timeout plus the
/// post-send budget, so every call ends and is recorded before the batch's lease does).
fn check_visibility(visibility: Duration, settings: &PipelineSettings) -> anyhow::Result<()> {
    let margin = settings.deadline_margin;
    if visibility <= margin {
        bail!(
            "--visibility-timeout {} ms is too short: no provider call starts in the last {} ms \
             of a batch (the provider request timeout, http.request_timeout, plus {} ms to record \
             the outcome), so nothing would ever be sent",
            visibility.as_millis(),
            margin.as_millis(),
            settings.post_send.as_millis()
        );
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Arc::new(load(&args)?);
    let mut settings = PipelineSettings::for_config(&config);
    settings.backoff.base = args.retry_backoff;
    settings.acceptance_wait = args.acceptance_wait;
    // The in-memory queue's redrive is known; an SQS queue's is the deployment's business.
    if args.sqs_queue_url.is_none() {
        settings.max_receive_count = Some(LOCAL_MAX_RECEIVES);
    }
    check_visibility(args.visibility_timeout, &settings)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // AWS settings only when something may use them: the embedded config needs none, and
    // loading them on a machine without AWS settings only produces noise.
    let needs_aws = args.dynamodb
        || args.sqs_queue_url.is_some()
        || args.events_queue_url.is_some()
        || args.config.is_some();
    let aws = if needs_aws {
        Some(AwsClients::from_env().await)
    } else {
        None
    };
    let mut resolver = SecretResolver::new(Arc::clone(&clock));
    if let Some(aws) = &aws {
        resolver = resolver.with_aws_config(aws.sdk().clone());
    }
    let resolver = Arc::new(resolver);
    let mut lines = Vec::new();
    let store: Arc<dyn StateStore> = if args.dynamodb {
        let table = args.table.clone().unwrap_or_else(table_name_from_env);
        lines.push(format!("shared state:   DynamoDB table {table}"));
        // The adapter's own client: SDK retries off (the store retries) and bounded waits.
        match &aws {
            Some(aws) => aws.state_store(table),
            None => AwsClients::from_env().await.state_store(table),
        }
    } else {
        lines.push("shared state:   in memory".to_owned());
        Arc::new(MemoryStore::new())
    };
    let sqs = aws.as_ref().map(AwsClients::sqs);
    let memory_queue = || -> Arc<dyn Queue> {
        let dead_letter = Arc::new(MemoryQueue::new(Arc::clone(&clock)));
        Arc::new(MemoryQueue::with_redrive(
            Arc::clone(&clock),
            Redrive {
                dead_letter,
                max_receive_count: LOCAL_MAX_RECEIVES,
            },
        ))
    };
    // Two lanes, as deployed: transactional mail never waits behind a bulk backlog.
    let (queue, bulk_queue): (Arc<dyn Queue>, Option<Arc<dyn Queue>>) = match (
        &args.sqs_queue_url,
        &args.sqs_bulk_queue_url,
    ) {
        (Some(url), bulk) => {
            lines.push(format!("queue:          SQS {url}"));
            let sqs = sqs.clone().context("AWS settings")?;
            let bulk = bulk.as_ref().map(|b| {
                lines.push(format!("bulk lane:      SQS {b}"));
                Arc::new(SqsQueue::new(sqs.clone(), b.clone())) as Arc<dyn Queue>
            });
            (Arc::new(SqsQueue::new(sqs, url.clone())), bulk)
        }
        (None, _) => {
            lines.push(format!(
                    "queue:          in memory, a transactional and a bulk lane (dead-letter after {LOCAL_MAX_RECEIVES} receives)"
                ));
            (memory_queue(), Some(memory_queue()))
        }
    };
    let mut webhooks = local_webhooks(&config, &resolver, &clock, args.events_queue_url.is_some())?;
    if webhooks.is_some() {
        lines.push(format!(
            "customer hooks: {} endpoint(s), delivered from an in-memory queue",
            config.customer_webhooks.len()
        ));
    }
    let (events, records): (Arc<dyn EventSink>, Option<Arc<dyn StatusRecords>>) =
        match (&args.events_queue_url, &args.database_url) {
            (Some(url), _) => {
                lines.push(format!("outcome events: SQS {url}"));
                let sqs = sqs.clone().context("AWS settings")?;
                (Arc::new(SqsEventSink::new(sqs, url.clone())), None)
            }
            (None, Some(given)) => {
                let reference = SecretRef::parse(given);
                if reference.is_inline() && url_has_password(given) {
                    eprintln!(
                        "warning: --database-url carries a password, which every user of this \
                         machine can read in the process list; pass `--database-url \
                         env:DATABASE_URL` (or an ssm:/secretsmanager: reference) instead"
                    );
                }
                let url = resolver
                    .resolve(&reference)
                    .await
                    .map_err(|e| anyhow::anyhow!("--database-url: {e}"))?;
                let db = Arc::new(
                    MysqlRecords::connect(url.expose(), &PoolSettings::default())
                        .map_err(|e| anyhow::anyhow!("--database-url: {e}"))?,
                );
                let applied = db
                    .migrate()
                    .await
                    .map_err(|e| anyhow::anyhow!("migrating the database: {e}"))?;
                lines.push(format!(
                    "record:         MySQL (migrations applied now: {})",
                    if applied.is_empty() {
                        "none".to_owned()
                    } else {
                        format!("{applied:?}")
                    }
                ));
                let recorder = local_recorder(
                    Recorder::new(Arc::clone(&db) as _, Arc::clone(&store), Arc::clone(&clock))
                        .with_suppression_scopes(config.suppression),
                    &mut webhooks,
                );
                (
                    Arc::new(RecordingSink(recorder)),
                    Some(db as Arc<dyn StatusRecords>),
                )
            }
            (None, None) => {
                lines.push("outcome events: in-memory record of delivery".to_owned());
                let records = Arc::new(MemoryRecords::new());
                let recorder = local_recorder(
                    Recorder::new(
                        Arc::clone(&records) as _,
                        Arc::clone(&store),
                        Arc::clone(&clock),
                    )
                    .with_suppression_scopes(config.suppression),
                    &mut webhooks,
                );
                (
                    Arc::new(RecordingSink(recorder)),
                    Some(records as Arc<dyn StatusRecords>),
                )
            }
        };
    for g in config.gateways.iter().filter(|g| g.enabled) {
        match &g.provider {
            ProviderSettings::Capture(c) => {
                // Relative directories are relative to where serve runs; say where that is.
                let shown = std::path::absolute(&c.directory)
                    .map_or_else(|_| c.directory.clone(), |p| p.display().to_string());
                lines.push(format!("captured mail:  {shown} (gateway {})", g.id));
            }
            ProviderSettings::Simulated(s) => lines.push(format!(
                "simulated:      gateway {} ({} ms latency)",
                g.id,
                s.latency.as_millis()
            )),
            _ => lines.push(format!("gateway:        {} ({})", g.id, g.kind.as_str())),
        }
    }

    // Every part built from the config is rebuilt for each new version (live_config): the
    // pipeline with its provider clients, the webhook edge, the status API, the health checker.
    let source = match (&args.config, args.dynamodb) {
        (_, true) => Source::Store(Arc::clone(&store)),
        (Some(path), false) => Source::File(path.clone()),
        (None, false) => Source::Fixed,
    };
    lines.push(match &source {
        Source::Store(_) => format!(
            "config:         published versions in the state table (gateway config push), checked every {}",
            format_duration(args.config_poll)
        ),
        Source::File(path) => format!(
            "config:         {} (read again every {})",
            path.display(),
            format_duration(args.config_poll)
        ),
        Source::Fixed => "config:         embedded examples/local.json".to_owned(),
    });
    let live = || {
        LiveConfig::new(
            source.clone(),
            Arc::new(|name: &str| std::env::var(name).ok()),
            None,
            args.config_poll,
            None,
        )
    };
    let attachments = match (&args.attachments_dir, &args.attachments_bucket) {
        (Some(dir), bucket) => {
            let bucket = bucket.clone().unwrap_or_else(|| "attachments".to_owned());
            lines.push(format!(
                "attachments:    bucket {bucket} read from {}",
                dir.join(&bucket).display()
            ));
            Some(Attachments {
                store: Arc::new(Directory::new(dir)),
                bucket,
            })
        }
        (None, Some(bucket)) => {
            lines.push(format!("attachments:    S3 bucket {bucket}"));
            let sdk = match &aws {
                Some(aws) => aws.sdk().clone(),
                None => AwsClients::from_env().await.sdk().clone(),
            };
            Some(Attachments {
                store: Arc::new(S3Store::from_sdk(&sdk)),
                bucket: bucket.clone(),
            })
        }
        (None, None) => None,
    };
    let shared = Shared {
        resolver: Arc::clone(&resolver),
        store: Arc::clone(&store),
        events: Arc::clone(&events),
        clock: Arc::clone(&clock),
        attachments,
    };
    let pipeline_build = pipeline_builder(shared.clone(), settings);
    let pipeline = Arc::new(
        Reloading::start(
            live(),
            Arc::clone(&clock),
            Arc::clone(&config),
            pipeline_build,
        )
        .await
        .map_err(|e| anyhow::anyhow!("the gateways' providers could not be built: {e}"))?,
    );
    let config = pipeline.config();
    let poll_wait = args.poll_wait.unwrap_or(if args.sqs_queue_url.is_some() {
        SQS_POLL_WAIT
    } else {
        MEMORY_POLL_WAIT
    });
    let poll_settings = PollSettings {
        batch_size: usize::from(args.batch_size),
        wait: poll_wait,
        visibility: args.visibility_timeout,
        ..PollSettings::default()
    };
    let bulk_poller = bulk_queue.as_ref().map(|bulk| {
        Poller::reloading(
            Arc::clone(&pipeline),
            Arc::clone(bulk),
            poll_settings.clone(),
            "serve-bulk",
        )
    });
    let poller = Poller::reloading(pipeline, Arc::clone(&queue), poll_settings, "serve");

    // A token the operator supplied is never printed (it may be a shared secret); a generated
    // one is, since nobody else knows it.
    let (token, supplied): (Arc<str>, bool) = match &args.token {
        Some(t) if !t.trim().is_empty() => (Arc::from(t.trim()), true),
        _ => (Arc::from(random_token()?), false),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let edge_build: BuildFn<Edge> = {
        let (resolver, store, events, clock) = (
            Arc::clone(&resolver),
            Arc::clone(&store),
            Arc::clone(&events),
            Arc::clone(&clock),
        );
        Arc::new(move |input: BuildInput<Edge>| {
            let built = CertCache::new()
                .and_then(|certs| {
                    Edge::new(
                        WebhookKeys::of(&input.config),
                        Arc::clone(&resolver),
                        Arc::clone(&store),
                        Arc::clone(&events),
                        certs,
                        Arc::clone(&clock),
                    )
                })
                .map_err(|e| format!("the provider webhook edge: {e}"));
            Box::pin(async move { built })
        })
    };
    let edge = Arc::new(
        Reloading::start(live(), Arc::clone(&clock), Arc::clone(&config), edge_build)
            .await
            .map_err(|e| anyhow::anyhow!(e))?,
    );
    let status_build: BuildFn<StatusApi> = {
        let (store, clock) = (Arc::clone(&store), Arc::clone(&clock));
        Arc::new(move |input: BuildInput<StatusApi>| {
            let api = StatusApi::new(
                input.config,
                Arc::clone(&store),
                records.clone(),
                Arc::clone(&clock),
            );
            Box::pin(async move { Ok(api) })
        })
    };
    let status = Arc::new(
        Reloading::start(
            live(),
            Arc::clone(&clock),
            Arc::clone(&config),
            status_build,
        )
        .await
        .map_err(|e| anyhow::anyhow!(e))?,
    );
    let enqueue_needs_token =
        !addr.ip().is_loopback() || args.config.is_some() || args.sqs_queue_url.is_some();
    let state = AppState {
        edge,
        queue,
        bulk_queue,
        status,
        token: Arc::clone(&token),
        enqueue_needs_token,
        listen: addr,
    };
    let app = Router::new()
        // POST enqueues; GET is the status API's message search (query string passed on).
        .route("/api/messages", post(enqueue).get(status_route))
        .route("/api/messages/{id}", get(status_route))
        .route("/api/gateways/{view}", get(status_route))
        .route("/api/senders/{address}/usage", get(status_route))
        .route("/status", get(status_route))
        .route("/api/levers", get(status_route))
        .route("/api/levers/{target}", post(lever_action))
        .route("/api/levers/{target}/history", get(status_route))
        .route("/webhooks/{provider}", post(provider_webhook))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state);

    let base = format!("http://{addr}");
    println!("gateway serve listening on {base}");
    let shown: &str = if supplied {
        "the one given (--token or $GATEWAY_API_TOKEN)"
    } else {
        &token
    };
    println!("api token:      {shown}");
    let bearer = if supplied {
        "$GATEWAY_API_TOKEN"
    } else {
        &*token
    };
    for line in &lines {
        println!("{line}");
    }
    let (auth_header, auth_flag) = if enqueue_needs_token {
        (
            format!(" -H 'authorization: Bearer {bearer}'"),
            format!(" --token {bearer}"),
        )
    } else {
        (String::new(), String::new())
    };
    println!(
        "enqueue:        curl -s -X POST {base}/api/messages -H 'content-type: application/json'{auth_header} --data @examples/message.json"
    );
    println!("                (or: gateway send --local {base}{auth_flag} examples/message.json)");
    if enqueue_needs_token {
        println!(
            "                enqueue needs the token: serve is not on its embedded defaults, or listens beyond loopback"
        );
    }
    println!(
        "record:         curl -s -H 'authorization: Bearer {bearer}' {base}/api/messages/MESSAGE_ID"
    );
    println!("stop with Ctrl-C (or SIGTERM): the batch in progress finishes first");

    let (stop_tx, stop_rx) = watch::channel(false);
    let polling = tokio::spawn({
        let stop = stop_rx.clone();
        async move { poller.run(stop).await }
    });
    let bulk_polling = bulk_poller.map(|poller| {
        let stop = stop_rx.clone();
        tokio::spawn(async move { poller.run(stop).await })
    });
    let delivering = webhooks.map(|w| tokio::spawn(deliver_jobs(w, stop_rx.clone())));
    let mut http_stop = stop_rx;
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = http_stop.wait_for(|stop| *stop).await;
    });
    let server = tokio::spawn(async move { server.await });

    // The health checker, as the scheduled function runs it: gateways are probed at their own
    // `health_check.interval`; the tick only bounds how late a probe can be.
    let checker_build = health_checker_builder(shared, "gateway serve".to_owned());
    let checker = Reloading::start(
        live(),
        Arc::clone(&clock),
        Arc::clone(&config),
        checker_build,
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    // Ticks whether or not a gateway is checked now: a later version may turn checks on.
    let checking = Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(HEALTH_CHECK_TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let running = checker.get().await;
            let checked = checker
                .config()
                .gateways
                .iter()
                .any(|g| g.enabled && g.health_check.enabled);
            if checked && let Err(error) = running.run().await {
                tracing::warn!(error_kind = "state", %error, "health check run failed");
            }
        }
    }));

    shutdown_signal().await;
    eprintln!("stopping: finishing the batch in progress");
    if let Some(task) = checking {
        task.abort();
    }
    let _ = stop_tx.send(true);
    if let Err(e) = polling.await {
        tracing::warn!(error = %e, "poller task ended abnormally");
    }
    if let Some(task) = bulk_polling
        && let Err(e) = task.await
    {
        tracing::warn!(error = %e, "bulk poller task ended abnormally");
    }
    if let Some(task) = delivering
        && let Err(e) = task.await
    {
        tracing::warn!(error = %e, "customer-webhook task ended abnormally");
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server error"),
        Err(e) => tracing::warn!(error = %e, "HTTP server task ended abnormally"),
    }
    Ok(())
}

/// Customer webhooks of the local run: jobs on an in-memory queue, delivered by
/// [`deliver_jobs`]; dead letters kept in memory and logged. `None` when the config names no
/// endpoint, or when outcome events go to an SQS events queue (the recorder function
/// announces them then).
#[derive(Debug, Clone)]
struct LocalWebhooks {
    webhooks: CustomerWebhooks,
    jobs: Arc<MemoryQueue>,
    /// The recorder delivering the jobs (set once the record store is chosen).
    recorder: Option<Recorder>,
}

fn local_webhooks(
    config: &Config,
    resolver: &Arc<SecretResolver>,
    clock: &Arc<dyn Clock>,
    events_go_to_sqs: bool,
) -> anyhow::Result<Option<LocalWebhooks>> {
    if config.customer_webhooks.is_empty() || events_go_to_sqs {
        return Ok(None);
    }
    let endpoints: Arc<[CustomerWebhook]> = config.customer_webhooks.clone().into();
    let jobs = Arc::new(MemoryQueue::new(Arc::clone(clock)));
    let dead_letters: Arc<dyn Queue> = Arc::new(MemoryQueue::new(Arc::clone(clock)));
    let worker = Worker::new(
        Arc::clone(&endpoints),
        Arc::clone(resolver),
        Arc::clone(&jobs) as _,
        dead_letters,
        Arc::clone(clock),
        WorkerSettings::default(),
    )
    .context("customer webhooks")?;
    Ok(Some(LocalWebhooks {
        webhooks: CustomerWebhooks::new(
            endpoints,
            Arc::clone(&jobs) as _,
            worker,
            DeliveryReporting::of(config),
        ),
        jobs,
        recorder: None,
    }))
}

/// `recorder`, announcing to the local customer webhooks when there are any (and delivering
/// their jobs).
fn local_recorder(recorder: Recorder, webhooks: &mut Option<LocalWebhooks>) -> Recorder {
    match webhooks {
        Some(w) => {
            let recorder = recorder.with_customer_webhooks(w.webhooks.clone());
            w.recorder = Some(recorder.clone());
            recorder
        }
        None => recorder,
    }
}

/// Delivers the local customer-webhook jobs until `stop`, as the recorder function's event
/// source mapping would: a batch at a time, the delivered and dead-lettered ones deleted, the
/// others back after their backoff delay.
async fn deliver_jobs(webhooks: LocalWebhooks, mut stop: watch::Receiver<bool>) {
    let Some(recorder) = webhooks.recorder else {
        return;
    };
    while !*stop.borrow() {
        let batch = tokio::select! {
            got = webhooks.jobs.receive(10, MEMORY_POLL_WAIT, Duration::from_secs(60)) => got,
            _ = stop.wait_for(|s| *s) => break,
        };
        let batch = match batch {
            Ok(batch) if batch.is_empty() => continue,
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "customer-webhook queue");
                continue;
            }
        };
        let report = recorder.process(&batch).await;
        let done: Vec<String> = batch
            .iter()
            .filter(|r| !report.failures.contains(&r.message_id))
            .map(|r| r.receipt_handle.clone())
            .collect();
        if let Err(e) = webhooks.jobs.delete_batch(&done).await {
            tracing::warn!(error = %e, "customer-webhook queue");
        }
    }
    let left = webhooks.jobs.len();
    if left > 0 {
        tracing::warn!(
            jobs = left,
            "stopping with customer-webhook jobs not delivered (the local queue is in memory)"
        );
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
