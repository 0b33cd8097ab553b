//! Fault injection: `gateway serve` wired to moto (SQS, DynamoDB) and MariaDB, sending through
//! three simulated Mailgun-compatible gateways while faults are injected, then an audit of
//! what became of every message.
//!
//! Injected faults, each counted so the audit can hold the results against them:
//! - provider answers: 20 % `500`, 5 % `429`, 2 % ambiguous (the message is accepted, then the
//!   answer never comes: the gateway's request timeout ends the call), chosen by a hash of
//!   message id, gateway and attempt, so a run is reproducible;
//! - one gateway (`gw-a`) answering `503` to everything for a period;
//! - DynamoDB throttling: a proxy in front of moto answers a share of requests with
//!   `ThrottlingException`, more during a burst;
//! - DynamoDB lost answers: the same proxy applies a share of writes and then answers them
//!   `InternalServerError`, as when DynamoDB applied a write whose answer never arrived (the
//!   store retries it);
//! - MySQL unavailable: a TCP proxy in front of MariaDB cuts every connection and refuses new
//!   ones for a period;
//! - `gateway serve` killed with SIGKILL mid-batch a few times, and started again.
//!
//! The simulated providers report each acceptance (the ambiguous ones too) with a signed Mailgun
//! `accepted` webhook to one of the running `gateway serve` instances, as Mailgun does: after a
//! delay of a few hundred milliseconds to a few seconds, a small share much later than the
//! sender's acceptance wait, retried while no instance answers 200.
//!
//! The audit: messages lost (must be 0: every message ends `sent`, `failed` or `rejected` in
//! MySQL, or in the dead-letter queue with its deferral reason recorded), duplicate provider
//! sends, limit windows exceeded at the providers (must be 0), breaker transitions with their
//! times, and MySQL's record against the DynamoDB ledger (must agree). The duplicate audit is
//! strict: each extra send is tied to one cause that made it unavoidable — an earlier
//! acceptance whose call went unanswered, or whose `gateway serve` process was killed before
//! recording it, and whose acceptance event had not reached the gateway when the message was
//! sent again, which was not before the acceptance wait ran out — and any other extra send
//! fails the run.
//!
//! `fault_injection_small` runs in CI (a few hundred messages, short faults). The full run of
//! issue #9 — 10,000 messages, a 60 s MySQL outage — is the ignored test
//! `fault_injection_10k` (see docs/RELIABILITY.md):
//!
//! ```text
//! scripts/services up && source .local/services.env
//! cargo test -p gateway-cli --test integration fault_injection_10k -- --ignored --nocapture
//! ```

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gateway_core::ledger::{self, Entry};
use gateway_core::queue::sqs::{RedrivePolicy, client_from_env, create_queue, queue_arn};
use gateway_core::state::StateStore;
use gateway_core::state::dynamodb::DynamoStore;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What one run injects, and when (offsets from the moment the messages are enqueued).
#[derive(Debug, Clone)]
struct Plan {
    messages: usize,
    /// `gateway serve` processes polling the queue at once (Lambda instances).
    instances: usize,
    /// Visible messages the feeder keeps in the queue.
    backlog: usize,
    /// `gw-a` answers 503 to everything in this period.
    gateway_down: (Duration, Duration),
    /// MariaDB unreachable in this period.
    mysql_down: (Duration, Duration),
    /// Share of DynamoDB requests throttled outside the burst (per mille).
    throttle_permille: u64,
    /// A period with a higher share throttled.
    throttle_burst: (Duration, Duration, u64),
    /// SIGKILLs of `gateway serve` (restarted at once). The first at its time, mid-batch; each
    /// later one at the first acceptance after its time, of the process that made that call,
    /// while the provider holds the answer back: the provider has the message and the process
    /// dies before it can record the send.
    kills: Vec<Duration>,
    /// `gw-a`'s token bucket: capacity and refill per second (recipients).
    bucket: (u32, u32),
    /// `gw-b`'s limit per UTC hour (recipients).
    gw_b_per_hour: u32,
    /// The run fails if not every message is settled by then.
    deadline: Duration,
    /// Share of DynamoDB writes applied and then answered with an error (per mille).
    lost_answer_permille: u64,
    /// Share of acceptance webhooks delivered only after twice the acceptance wait (per mille).
    late_webhook_permille: u64,
    /// The senders' wait for an acceptance event after an unanswered call.
    acceptance_wait: Duration,
    /// Most extra provider sends the run may end with.
    max_duplicates: usize,
}

impl Plan {
    fn small() -> Self {
        Self {
            messages: 300,
            instances: 2,
            backlog: 300,
            gateway_down: (Duration::from_secs(5), Duration::from_secs(25)),
            mysql_down: (Duration::from_secs(30), Duration::from_secs(42)),
            throttle_permille: 50,
            throttle_burst: (Duration::from_secs(12), Duration::from_secs(22), 400),
            kills: vec![Duration::from_secs(8), Duration::from_secs(50)],
            bucket: (10, 4),
            gw_b_per_hour: 150,
            deadline: Duration::from_secs(600),
            lost_answer_permille: 20,
            late_webhook_permille: 50,
            acceptance_wait: Duration::from_secs(15),
            max_duplicates: 3,
        }
    }

    fn full() -> Self {
        Self {
            messages: 10_000,
            instances: 3,
            backlog: 300,
            gateway_down: (Duration::from_secs(60), Duration::from_secs(120)),
            mysql_down: (Duration::from_secs(150), Duration::from_secs(210)),
            throttle_permille: 50,
            throttle_burst: (Duration::from_secs(90), Duration::from_secs(135), 400),
            kills: vec![
                Duration::from_secs(40),
                Duration::from_secs(100),
                Duration::from_secs(240),
            ],
            bucket: (20, 8),
            gw_b_per_hour: 3_000,
            deadline: Duration::from_secs(3_600),
            lost_answer_permille: 10,
            late_webhook_permille: 10,
            acceptance_wait: Duration::from_secs(15),
            max_duplicates: 10,
        }
    }
}

fn within(at: Duration, period: (Duration, Duration)) -> bool {
    at >= period.0 && at < period.1
}

fn epoch_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn hash_of(parts: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

// ---------------------------------------------------------------------------------------------
// Simulated gateways: one HTTP server speaking Mailgun's send API for the three domains.

const GATEWAYS: [&str; 3] = ["gw-a", "gw-b", "gw-c"];

/// A message the provider accepted (including the ambiguous ones, accepted without answer).
#[derive(Debug, Clone)]
struct Acceptance {
    message_id: String,
    gateway: String,
    at_ms: i64,
    recipients: u32,
    ambiguous: bool,
    /// The `gateway serve` process that called (`{instance}-{start}`, from its API key).
    caller: String,
    /// When a `gateway serve` instance answered its acceptance webhook 200 (epoch ms).
    reported_ms: Option<i64>,
}

#[derive(Debug, Default)]
struct ProviderLog {
    accepted: Vec<Acceptance>,
    attempts: HashMap<(String, String), u32>,
    injected_500: u64,
    injected_429: u64,
    injected_ambiguous: u64,
    refused_while_down: u64,
    late_webhooks: u64,
    webhook_retries: u64,
}

#[derive(Debug)]
struct Providers {
    log: Mutex<ProviderLog>,
    start: Instant,
    down: (Duration, Duration),
    /// Base URLs of the `gateway serve` instances (their webhook routes).
    webhook_targets: Vec<String>,
    late_webhook_permille: u64,
    acceptance_wait: Duration,
    http: reqwest::Client,
    /// Set by the harness: the next acceptance names its caller in `kill_target` and holds its
    /// answer back until that process is killed.
    kill_armed: AtomicBool,
    kill_target: Mutex<Option<String>>,
}

enum Answer {
    Accept,
    Fail500,
    Throttle429,
    Ambiguous,
    Down,
}

/// The variable holding `gateway`'s webhook signing key for `gateway serve`.
fn webhook_key_env(gateway: &str) -> String {
    format!(
        "FAULT_WEBHOOK_KEY_{}",
        gateway.replace('-', "_").to_uppercase()
    )
}

/// The signing key of `gateway`'s webhooks (each simulated domain has its own).
fn webhook_key(gateway: &str) -> String {
    format!("whk-{gateway}")
}

/// The `{instance}-{start}` of the API key `gateway serve` sent (`Basic api:key-fi-…`).
fn caller_of(headers: &HeaderMap) -> String {
    use base64::Engine as _;
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("api:key-fi-").map(str::to_owned))
        .unwrap_or_default()
}

async fn provider(
    State(p): State<Arc<Providers>>,
    UrlPath(domain): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let gateway = domain.trim_end_matches(".example").to_owned();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let parts = gateway_tests::parse_multipart(&content_type, &body);
    let Some(message_id) = parts
        .iter()
        .find(|p| p.name == "v:message_id")
        .map(gateway_tests::FormPart::text)
    else {
        return (StatusCode::BAD_REQUEST, "no v:message_id").into_response();
    };
    let recipients = u32::try_from(
        parts
            .iter()
            .filter(|p| matches!(p.name.as_str(), "to" | "cc" | "bcc"))
            .count(),
    )
    .unwrap();
    let now = p.start.elapsed();
    let provider_id = format!("<{message_id}.{}@{domain}>", epoch_ms());
    let (answer, index) = {
        let mut log = p.log.lock().unwrap();
        let attempt = {
            let n = log
                .attempts
                .entry((gateway.clone(), message_id.clone()))
                .or_insert(0);
            *n += 1;
            *n
        };
        let answer = if gateway == "gw-a" && within(now, p.down) {
            log.refused_while_down += 1;
            Answer::Down
        } else {
            match hash_of((&message_id, &gateway, attempt)) % 1000 {
                0..200 => {
                    log.injected_500 += 1;
                    Answer::Fail500
                }
                200..250 => {
                    log.injected_429 += 1;
                    Answer::Throttle429
                }
                250..270 => {
                    log.injected_ambiguous += 1;
                    Answer::Ambiguous
                }
                _ => Answer::Accept,
            }
        };
        let mut index = None;
        if matches!(answer, Answer::Accept | Answer::Ambiguous) {
            index = Some(log.accepted.len());
            log.accepted.push(Acceptance {
                message_id: message_id.clone(),
                gateway: gateway.clone(),
                at_ms: epoch_ms(),
                recipients,
                ambiguous: matches!(answer, Answer::Ambiguous),
                caller: caller_of(&headers),
                reported_ms: None,
            });
        }
        (answer, index)
    };
    if let Some(index) = index {
        tokio::spawn(report_acceptance(
            Arc::clone(&p),
            index,
            gateway.clone(),
            message_id.clone(),
            provider_id.clone(),
        ));
    }
    if matches!(answer, Answer::Accept) && p.kill_armed.swap(false, Ordering::SeqCst) {
        *p.kill_target.lock().unwrap() = Some(caller_of(&headers));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    match answer {
        Answer::Accept => axum::Json(serde_json::json!({
            "id": provider_id,
            "message": "Queued. Thank you."
        }))
        .into_response(),
        Answer::Fail500 => (StatusCode::INTERNAL_SERVER_ERROR, "injected 500").into_response(),
        Answer::Throttle429 => (StatusCode::TOO_MANY_REQUESTS, "injected 429").into_response(),
        Answer::Down => (StatusCode::SERVICE_UNAVAILABLE, "gateway down").into_response(),
        Answer::Ambiguous => {
            // Accepted, but the answer never arrives within the client's request timeout.
            tokio::time::sleep(Duration::from_secs(120)).await;
            (StatusCode::GATEWAY_TIMEOUT, "too late").into_response()
        }
    }
}

/// Mailgun's `accepted` webhook for one acceptance, signed with the domain's key, posted to a
/// `gateway serve` instance after a delay (a share of them after twice the acceptance wait),
/// then to the next instance every second until one answers 200 (Mailgun retries for hours).
async fn report_acceptance(
    p: Arc<Providers>,
    index: usize,
    gateway: String,
    message_id: String,
    provider_id: String,
) {
    let h = hash_of(("webhook", &message_id, &gateway, index));
    let late = h % 1000 < p.late_webhook_permille;
    let delay = if late {
        p.acceptance_wait * 2
    } else {
        Duration::from_millis(300 + (h >> 10) % 2_700)
    };
    if late {
        p.log.lock().unwrap().late_webhooks += 1;
    }
    tokio::time::sleep(delay).await;
    let key = webhook_key(&gateway);
    for attempt in 0..900_usize {
        let timestamp = (epoch_ms() / 1000).to_string();
        let token = format!("{:016x}{:016x}", hash_of((&message_id, index, attempt)), h);
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key.as_bytes()),
            format!("{timestamp}{token}").as_bytes(),
        );
        let signature: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        #[allow(clippy::cast_precision_loss)]
        let body = serde_json::json!({
            "signature": {"timestamp": timestamp, "token": token, "signature": signature},
            "event-data": {
                "event": "accepted",
                "id": format!("ev-{index}"),
                "timestamp": epoch_ms() as f64 / 1000.0,
                "recipient": "p@example.org",
                "user-variables": {"message_id": message_id},
                "message": {"headers": {"message-id": provider_id.trim_matches(['<', '>'])}},
            }
        });
        let target = &p.webhook_targets[(index + attempt) % p.webhook_targets.len()];
        let answered = p
            .http
            .post(format!("{target}/webhooks/mailgun"))
            .json(&body)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if answered {
            p.log.lock().unwrap().accepted[index].reported_ms = Some(epoch_ms());
            return;
        }
        p.log.lock().unwrap().webhook_retries += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// DynamoDB throttling: an HTTP proxy in front of moto.

#[derive(Debug)]
struct DynamoProxy {
    upstream: String,
    http: reqwest::Client,
    start: Instant,
    permille: u64,
    burst: (Duration, Duration, u64),
    counter: AtomicU64,
    throttled: Mutex<BTreeMap<String, u64>>,
    forwarded: AtomicU64,
    /// Share of writes applied and then answered `InternalServerError` (per mille).
    lost_permille: u64,
    lost: Mutex<BTreeMap<String, u64>>,
}

async fn dynamo(State(p): State<Arc<DynamoProxy>>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim_start_matches("DynamoDB_20120810.")
        .to_owned();
    let now = p.start.elapsed();
    let share = if within(now, (p.burst.0, p.burst.1)) {
        p.burst.2
    } else {
        p.permille
    };
    let n = p.counter.fetch_add(1, Ordering::Relaxed);
    // Table administration by the harness is never throttled.
    let data_plane = !matches!(target.as_str(), "CreateTable" | "DescribeTable" | "Scan");
    if data_plane && hash_of(("throttle", n)) % 1000 < share {
        *p.throttled.lock().unwrap().entry(target).or_insert(0) += 1;
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/x-amz-json-1.0")],
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput."}"#,
        )
            .into_response();
    }
    p.forwarded.fetch_add(1, Ordering::Relaxed);
    let write = matches!(
        target.as_str(),
        "PutItem" | "UpdateItem" | "DeleteItem" | "TransactWriteItems" | "BatchWriteItem"
    );
    let lose = write && hash_of(("lost", n)) % 1000 < p.lost_permille;
    let mut forward = reqwest::header::HeaderMap::new();
    for (name, value) in &headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            forward.insert(name.clone(), value.clone());
        }
    }
    match p
        .http
        .post(&p.upstream)
        .headers(forward)
        .body(body)
        .send()
        .await
    {
        Ok(answer) if lose => {
            // Applied by moto; the answer is lost on its way back.
            let _ = answer.bytes().await;
            *p.lost.lock().unwrap().entry(target).or_insert(0) += 1;
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "application/x-amz-json-1.0")],
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"Internal server error"}"#,
            )
                .into_response()
        }
        Ok(answer) => {
            let status = answer.status();
            let mut out = HeaderMap::new();
            for (name, value) in answer.headers() {
                if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
                    out.insert(name.clone(), value.clone());
                }
            }
            let bytes = answer.bytes().await.unwrap_or_default();
            (status, out, bytes).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// MySQL outage: a TCP proxy in front of MariaDB that cuts every connection while "down".

async fn mysql_proxy(listener: TcpListener, upstream: String, down: watch::Receiver<bool>) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        if *down.borrow() {
            let _ = client.shutdown().await;
            continue;
        }
        let upstream = upstream.clone();
        let mut down = down.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(&upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = down.wait_for(|d| *d) => {}
            }
        });
    }
}

/// The user part, `host:port` and `/db` path of a `mysql://user[:password]@host:port[/db]` URL.
fn split_mysql_url(url: &str) -> (&str, &str, &str) {
    let after_scheme = url.strip_prefix("mysql://").expect("a mysql:// URL");
    let at = after_scheme.rfind('@').expect("a user in DATABASE_URL");
    let rest = &after_scheme[at + 1..];
    let end = rest.find('/').unwrap_or(rest.len());
    (&after_scheme[..at], &rest[..end], &rest[end..])
}

// ---------------------------------------------------------------------------------------------
// The run.

async fn serve_listener(app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn config(providers: &str, plan: &Plan) -> serde_json::Value {
    let gateway = |id: &str, priority: u32, limits: serde_json::Value| {
        serde_json::json!({
            "id": id,
            "type": "mailgun",
            "display_name": format!("simulated {id}"),
            "priority": priority,
            "mailgun": {"api_key": "env:FAULT_MAILGUN_KEY", "domain": format!("{id}.example"),
                        "base_url": format!("{providers}/v3"),
                        "webhook_signing_key": format!("env:{}", webhook_key_env(id))},
            "rate_limits": limits,
            "routing": {"can_route": ["*"]},
            "health_check": {"enabled": false},
            "circuit_breaker": {"enabled": true, "failure_threshold": 20, "failure_ratio": 0.6,
                                "window": "20s", "success_threshold": 3, "timeout": "10s",
                                "max_requests": 5}
        })
    };
    serde_json::json!({
        "gateways": [
            gateway("gw-a", 1, serde_json::json!({
                "burst_limit": plan.bucket.0, "burst_refill_per_second": plan.bucket.1})),
            gateway("gw-b", 2, serde_json::json!({"per_hour": plan.gw_b_per_hour})),
            gateway("gw-c", 3, serde_json::json!({})),
        ],
        // Unlimited unless a gateway says otherwise (the built-in defaults are 50 an hour).
        "global_defaults": {
            "http": {"connect_timeout": "1s", "request_timeout": "4s"},
            "rate_limits": {"workspace_daily": null, "per_user_daily": null, "per_hour": null,
                            "burst_limit": null}
        },
        "routing": {"strategy": "priority", "failover_enabled": true,
                    "health_check_required": false, "circuit_breaker_required": true}
    })
}

fn message(n: usize) -> String {
    let recipients: Vec<String> = (0..=n % 3)
        .map(|k| format!("p{n}-{k}@example.org"))
        .collect();
    serde_json::json!({
        "id": format!("fi-{n:05}"),
        "from": format!("Clinic {} <s{}@clinic.example>", n % 40, n % 40),
        "to": recipients,
        "subject": format!("Your appointment {n}"),
        "text": "Please confirm your appointment.",
        "tags": ["fault-injection"]
    })
    .to_string()
}

struct Serve {
    /// Which of the concurrent instances this is.
    instance: usize,
    command: Vec<String>,
    dir: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
}

impl Serve {
    fn log_name(&self, start: u32) -> String {
        format!("serve-{}-{start}.log", self.instance)
    }

    fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(self.log_name(self.starts))).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        command
            .args(&self.command)
            .current_dir(&self.dir)
            .env_remove("GATEWAY_API_TOKEN")
            .env_remove("QUEUE_DAILY_RATE_LIMIT")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        // The provider tells the processes apart by their API keys.
        command.env(
            "FAULT_MAILGUN_KEY",
            format!("key-fi-{}-{}", self.instance, self.starts),
        );
        self.child = Some(command.spawn().expect("gateway serve starts"));
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gw-faults-{}-{}", std::process::id(), epoch_ms()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[derive(Debug, Default)]
struct Report {
    lines: Vec<String>,
    problems: Vec<String>,
}

impl Report {
    fn line(&mut self, s: String) {
        println!("{s}");
        self.lines.push(s);
    }
    fn problem(&mut self, s: String) {
        println!("PROBLEM: {s}");
        self.problems.push(s);
    }
}

#[allow(clippy::too_many_lines)]
async fn run(plan: Plan) -> Report {
    let moto = gateway_tests::moto_url();
    let dir = scratch();
    let tag = format!("fi{}", epoch_ms());
    let mut report = Report::default();
    report.line(format!("scratch directory: {}", dir.display()));

    // Record of delivery: a fresh database behind the outage proxy.
    let (records, direct_url) = gateway_tests::fresh_database_with_url("faults").await;
    let (user, upstream, db_path) = split_mysql_url(&direct_url);
    let mysql_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxied_url = format!(
        "mysql://{user}@{}{db_path}",
        mysql_listener.local_addr().unwrap()
    );
    let (mysql_down_tx, mysql_down_rx) = watch::channel(false);
    tokio::spawn(mysql_proxy(
        mysql_listener,
        upstream.to_owned(),
        mysql_down_rx,
    ));

    // Queues: outbound with a redrive policy to its dead-letter queue.
    let sqs = client_from_env().await;
    let dlq = create_queue(&sqs, &format!("{tag}-dlq"), None)
        .await
        .unwrap();
    let dlq_arn = queue_arn(&sqs, &dlq).await.unwrap();
    let outbound = create_queue(
        &sqs,
        &format!("{tag}-out"),
        Some(&RedrivePolicy {
            dead_letter_arn: dlq_arn,
            max_receive_count: 12,
        }),
    )
    .await
    .unwrap();

    // Shared state: the table, created directly; serve reaches it through the throttling proxy.
    let table = format!("{tag}-state");
    let created = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["state", "create-table", "--table", &table])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );

    // The fault clocks start with serve.
    let start = Instant::now();
    let run_started_ms = epoch_ms();
    // Each instance listens on a port of its own, kept across restarts: the providers post
    // their webhooks there. Chosen below the kernel's ephemeral range (32768 and up on Linux),
    // so no outgoing connection can take it while an instance is down.
    let ports: Vec<u16> = {
        let base = 20_000 + u16::try_from(std::process::id() % 500).unwrap() * 20;
        let mut free =
            (base..base + 400).filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok());
        (0..plan.instances).map(|_| free.next().unwrap()).collect()
    };
    let providers = Arc::new(Providers {
        log: Mutex::new(ProviderLog::default()),
        start,
        down: plan.gateway_down,
        webhook_targets: ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
        late_webhook_permille: plan.late_webhook_permille,
        acceptance_wait: plan.acceptance_wait,
        http: reqwest::Client::new(),
        kill_armed: AtomicBool::new(false),
        kill_target: Mutex::new(None),
    });
    let providers_url = serve_listener(
        Router::new()
            .route("/v3/{domain}/messages", post(provider))
            .with_state(Arc::clone(&providers)),
    )
    .await;
    let proxy = Arc::new(DynamoProxy {
        upstream: format!("{moto}/"),
        http: reqwest::Client::new(),
        start,
        permille: plan.throttle_permille,
        burst: plan.throttle_burst,
        counter: AtomicU64::new(0),
        throttled: Mutex::new(BTreeMap::new()),
        forwarded: AtomicU64::new(0),
        lost_permille: plan.lost_answer_permille,
        lost: Mutex::new(BTreeMap::new()),
    });
    let dynamo_url = serve_listener(
        Router::new()
            .fallback(dynamo)
            .with_state(Arc::clone(&proxy)),
    )
    .await;
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config(&providers_url, &plan).to_string()).unwrap();
    let mut instances: Vec<Serve> = (0..plan.instances)
        .map(|instance| Serve {
            instance,
            command: [
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", ports[instance]),
                "--config",
                config_path.to_str().unwrap(),
                "--sqs-queue-url",
                &outbound,
                "--database-url",
                &proxied_url,
                "--dynamodb",
                "--table",
                &table,
                "--visibility-timeout",
                &format!("{}s", VISIBILITY.as_secs()),
                "--poll-wait",
                "1s",
                // Retries after 5 s, 10 s, 20 s… instead of 30 s, 60 s, 120 s…: the same
                // behaviour on a shorter clock, so a run ends in minutes.
                "--retry-backoff",
                "5s",
                "--acceptance-wait",
                &format!("{}s", plan.acceptance_wait.as_secs()),
            ]
            .map(str::to_owned)
            .to_vec(),
            dir: dir.clone(),
            env: GATEWAYS
                .iter()
                .map(|g| (webhook_key_env(g), webhook_key(g)))
                .chain([("AWS_ENDPOINT_URL_DYNAMODB".into(), dynamo_url.clone())])
                .collect(),
            child: None,
            starts: 0,
        })
        .collect();
    for serve in &mut instances {
        serve.start();
    }

    // Feed the queue as traffic would arrive: SendMessageBatch, 10 per request, topped up to
    // `backlog` visible messages (a queue of thousands makes every moto receive slow).
    let enqueued = Arc::new(AtomicU64::new(0));
    let feeder = tokio::spawn({
        let (sqs, outbound, enqueued) = (sqs.clone(), outbound.clone(), Arc::clone(&enqueued));
        let (total, backlog) = (plan.messages, plan.backlog);
        async move {
            let mut next = 0;
            while next < total {
                if visible(&sqs, &outbound).await.is_none_or(|n| n >= backlog) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                for _ in 0..backlog.div_ceil(10) {
                    let chunk: Vec<usize> = (next..total.min(next + 10)).collect();
                    if chunk.is_empty() {
                        break;
                    }
                    let mut request = sqs.send_message_batch().queue_url(&outbound);
                    for &n in &chunk {
                        request = request.entries(
                            aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                                .id(format!("m{n}"))
                                .message_body(message(n))
                                .build()
                                .unwrap(),
                        );
                    }
                    // Retried like a producer would; a retry of a call whose answer was lost
                    // enqueues copies with the same ids, which the ledger sends once.
                    let out = loop {
                        match request.clone().send().await {
                            Ok(out) => break out,
                            Err(e) => {
                                eprintln!("enqueue: {e}; again");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    };
                    assert!(
                        out.failed().is_empty(),
                        "enqueue failed: {:?}",
                        out.failed()
                    );
                    next += chunk.len();
                    enqueued.store(next as u64, Ordering::Relaxed);
                }
            }
        }
    });

    // Drive the faults and watch progress until every message is settled.
    // (the killed process as `{instance}-{start}`, when).
    let mut kills_done: Vec<(String, i64)> = Vec::new();
    let mut next_kill = 0;
    let mut mysql_was_down = false;
    let mut last_progress = Duration::ZERO;
    let faults_end = [
        plan.gateway_down.1,
        plan.mysql_down.1,
        plan.throttle_burst.1,
    ]
    .into_iter()
    .chain(plan.kills.iter().copied())
    .max()
    .unwrap_or_default();
    let settled = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let t = start.elapsed();
        let down = within(t, plan.mysql_down);
        if down != mysql_was_down {
            mysql_down_tx.send_replace(down);
            mysql_was_down = down;
            report.line(format!(
                "+{:>6.1} s  MySQL {}",
                t.as_secs_f64(),
                if down { "down" } else { "back" }
            ));
        }
        if next_kill < plan.kills.len() && t >= plan.kills[next_kill] {
            let count = instances.len();
            // The first kill is blind; the others take the process that just made a call the
            // provider accepted, before it hears the answer.
            let victim = if next_kill == 0 {
                Some(next_kill % count)
            } else {
                let target = providers.kill_target.lock().unwrap().take();
                if target.is_none() {
                    providers.kill_armed.store(true, Ordering::SeqCst);
                }
                target.and_then(|caller| {
                    instances
                        .iter()
                        .position(|s| format!("{}-{}", s.instance, s.starts) == caller)
                })
            };
            if let Some(v) = victim {
                let serve = &mut instances[v];
                serve.kill();
                kills_done.push((format!("{}-{}", serve.instance, serve.starts), epoch_ms()));
                report.line(format!(
                    "+{:>6.1} s  SIGKILL serve instance {}{}, restarted",
                    t.as_secs_f64(),
                    serve.instance,
                    if next_kill == 0 {
                        ""
                    } else {
                        " right after a provider accepted its call"
                    }
                ));
                serve.start();
                next_kill += 1;
            }
        }
        for serve in &mut instances {
            if let Some(child) = serve.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                report.problem(format!(
                    "serve exited on its own at +{:.1} s ({status}); see {}",
                    t.as_secs_f64(),
                    serve.log_name(serve.starts)
                ));
                serve.child = None;
                serve.start();
            }
        }
        if t - last_progress < Duration::from_secs(5) {
            continue;
        }
        last_progress = t;
        let statuses = status_counts(&records).await;
        let terminal: u64 = ["sent", "failed", "rejected"]
            .iter()
            .map(|s| statuses.get(*s).copied().unwrap_or(0))
            .sum();
        let (Some(in_dlq), Some(pending)) = (
            queue_depth(&sqs, &dlq).await,
            queue_depth(&sqs, &outbound).await,
        ) else {
            report.line(format!(
                "+{:>6.1} s  moto did not answer the progress check; again in 5 s",
                t.as_secs_f64()
            ));
            continue;
        };
        let accepted = providers.log.lock().unwrap().accepted.len();
        report.line(format!(
            "+{:>6.1} s  enqueued {}  mysql {statuses:?}  outbound {pending}  dlq {in_dlq}  provider acceptances {accepted}",
            t.as_secs_f64(),
            enqueued.load(Ordering::Relaxed)
        ));
        if t > faults_end
            && feeder.is_finished()
            && pending == 0
            && terminal + in_dlq >= plan.messages as u64
        {
            break true;
        }
        if t > plan.deadline {
            break false;
        }
    };
    let elapsed = start.elapsed();
    for serve in &mut instances {
        serve.stop();
    }
    if !settled {
        report.problem(format!(
            "not every message was settled within {} s",
            plan.deadline.as_secs()
        ));
    }
    report.line(format!(
        "run: {:.1} s, {} serve instances started {} times in all",
        elapsed.as_secs_f64(),
        instances.len(),
        instances.iter().map(|s| s.starts).sum::<u32>()
    ));

    // ----- The audit.
    let ids: Vec<String> = (0..plan.messages).map(|n| format!("fi-{n:05}")).collect();
    let mysql: HashMap<String, (String, Option<String>, Option<String>)> =
        sqlx::query_as::<_, (String, String, Option<String>, Option<String>)>(
            "SELECT message_id, status, gateway_id, last_error FROM messages",
        )
        .fetch_all(records.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|(id, status, gateway, error)| (id, (status, gateway, error)))
        .collect();
    let dead: HashSet<String> = drain_ids(&sqs, &dlq).await;
    let log = std::mem::take(&mut *providers.log.lock().unwrap());
    let store = DynamoStore::new(
        gateway_core::state::dynamodb::client_from_env().await,
        &table,
    );
    let keys: Vec<String> = ids.iter().map(|id| ledger::key(id)).collect();
    // 25 keys per request, each retried: moto answers a large batch over a big table slower
    // than the adapter's 2 s attempt timeout.
    let mut items = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(25) {
        let mut attempt = 0;
        let got = loop {
            attempt += 1;
            match store.get_many(chunk).await {
                Ok(got) => break got,
                Err(e) if attempt < 5 => eprintln!("reading the ledger: {e}; again"),
                Err(e) => panic!("reading the ledger: {e}"),
            }
        };
        items.extend(got);
    }
    let ledger: HashMap<&str, Option<Entry>> = ids
        .iter()
        .zip(keys.iter().zip(&items))
        .map(|(id, (key, item))| {
            (
                id.as_str(),
                Entry::from_item(key, item.as_ref()).unwrap_or_else(|e| panic!("{e}")),
            )
        })
        .collect();

    // Injected.
    report.line(format!(
        "injected: provider 500 {}, 429 {}, ambiguous {}, refused while gw-a down {}; \
         DynamoDB requests throttled {:?}, writes applied with their answer lost {:?}, of {} \
         forwarded; {} kills; MySQL down {} s",
        log.injected_500,
        log.injected_429,
        log.injected_ambiguous,
        log.refused_while_down,
        proxy.throttled.lock().unwrap(),
        proxy.lost.lock().unwrap(),
        proxy.forwarded.load(Ordering::Relaxed),
        kills_done.len(),
        (plan.mysql_down.1 - plan.mysql_down.0).as_secs()
    ));

    // Lost: every message must end sent / failed / rejected, or in the DLQ with a reason.
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut lost = Vec::new();
    for id in &ids {
        let row = mysql.get(id);
        let status = row.map_or("(no record)", |r| r.0.as_str());
        let terminal = matches!(status, "sent" | "failed" | "rejected");
        if dead.contains(id) {
            *by_status.entry(format!("dlq/{status}")).or_insert(0) += 1;
            if row.and_then(|r| r.2.as_ref()).is_none() && !terminal {
                lost.push(format!(
                    "{id}: in the DLQ with no reason recorded ({status})"
                ));
            }
        } else {
            *by_status.entry(status.to_owned()).or_insert(0) += 1;
            if !terminal {
                lost.push(format!("{id}: {status}, not in the DLQ"));
            }
        }
    }
    report.line(format!("outcomes: {by_status:?}"));
    report.line(format!("lost: {}", lost.len()));
    for l in lost.iter().take(10) {
        report.problem(format!("lost {l}"));
    }
    if lost.len() > 10 {
        report.problem(format!("… and {} more lost", lost.len() - 10));
    }

    // Duplicates: each extra send tied to the one cause that made it unavoidable, or a problem.
    let mut accepted: HashMap<&str, Vec<&Acceptance>> = HashMap::new();
    for a in &log.accepted {
        accepted.entry(a.message_id.as_str()).or_default().push(a);
    }
    for sends in accepted.values_mut() {
        sends.sort_by_key(|a| a.at_ms);
    }
    let audit = audit_duplicates(&accepted, &kills_done, &plan, run_started_ms);
    report.line(format!(
        "duplicate sends: {} of {} messages accepted ({} injected ambiguous answers, {} late acceptance webhooks); causes {:?}; {} unexplained",
        audit.explained.values().sum::<usize>() + audit.unexplained.len(),
        accepted.len(),
        log.injected_ambiguous,
        log.late_webhooks,
        audit.explained,
        audit.unexplained.len()
    ));
    for d in &audit.unexplained {
        report.problem(format!("unexplained duplicate {d}"));
    }
    let duplicates = audit.explained.values().sum::<usize>() + audit.unexplained.len();
    if duplicates > plan.max_duplicates {
        report.problem(format!(
            "{duplicates} duplicate sends; at most {} allowed",
            plan.max_duplicates
        ));
    }
    let unreported = log
        .accepted
        .iter()
        .filter(|a| a.reported_ms.is_none())
        .count();
    report.line(format!(
        "acceptance webhooks: {} delivered, {unreported} never answered 200, {} retries",
        log.accepted.len() - unreported,
        log.webhook_retries
    ));

    // Sent in MySQL ⇔ accepted by a provider; recorded gateway is one that accepted.
    let mut record_mismatch = Vec::new();
    for id in &ids {
        let sends = accepted.get(id.as_str());
        match mysql.get(id) {
            Some((status, gateway, _)) if status == "sent" => match sends {
                None => record_mismatch.push(format!("{id}: sent in MySQL, no provider has it")),
                Some(s) if !s.iter().any(|a| Some(&a.gateway) == gateway.as_ref()) => {
                    record_mismatch.push(format!(
                        "{id}: MySQL says {gateway:?}, accepted by {:?}",
                        s.iter().map(|a| &a.gateway).collect::<Vec<_>>()
                    ));
                }
                Some(_) => {}
            },
            Some((status, ..)) if sends.is_some_and(|s| s.iter().any(|a| !a.ambiguous)) => {
                record_mismatch.push(format!(
                    "{id}: {status} in MySQL, but a provider accepted it"
                ));
            }
            Some(_) | None => {}
        }
    }
    report.line(format!(
        "MySQL against the providers: {} mismatches",
        record_mismatch.len()
    ));
    for m in record_mismatch.iter().take(10) {
        report.problem(format!("record {m}"));
    }

    // Limit windows at the providers.
    let mut gw_a: Vec<(i64, u32)> = log
        .accepted
        .iter()
        .filter(|a| a.gateway == "gw-a")
        .map(|a| (a.at_ms, a.recipients))
        .collect();
    gw_a.sort_unstable();
    let (capacity, rate) = (f64::from(plan.bucket.0), f64::from(plan.bucket.1));
    let mut worst = (0.0_f64, 0_u32, 0_i64);
    for i in 0..gw_a.len() {
        let mut sum = 0_u32;
        for j in i..gw_a.len() {
            sum += gw_a[j].1;
            #[allow(clippy::cast_precision_loss)]
            let span = (gw_a[j].0 - gw_a[i].0) as f64 / 1000.0;
            let allowed = capacity + rate * (span + BUCKET_SKEW.as_secs_f64());
            if f64::from(sum) / allowed > worst.0 {
                worst = (f64::from(sum) / allowed, sum, gw_a[j].0 - gw_a[i].0);
            }
        }
    }
    report.line(format!(
        "gw-a token bucket ({} + {}/s): {} recipients accepted; fullest interval {} recipients in {} ms = {:.0} % of what the bucket admits in that time plus {} ms",
        plan.bucket.0,
        plan.bucket.1,
        gw_a.iter().map(|a| a.1).sum::<u32>(),
        worst.1,
        worst.2,
        worst.0 * 100.0,
        BUCKET_SKEW.as_millis()
    ));
    // The assertion allows the longest possible delay between decision and arrival: the
    // bucket is charged at the round's clock reading, and a throttled limit transaction and
    // breaker permit are each retried by the store for up to ~2 s before the call goes out.
    let bound = gw_a.iter().enumerate().any(|(i, first)| {
        let mut sum = 0_u32;
        gw_a[i..].iter().any(|last| {
            sum += last.1;
            #[allow(clippy::cast_precision_loss)]
            let span = (last.0 - first.0) as f64 / 1000.0;
            f64::from(sum) > capacity + rate * (span + DECISION_TO_ARRIVAL.as_secs_f64())
        })
    });
    if bound {
        report.problem(format!(
            "gw-a's token bucket admitted more than its limit even allowing {} ms between decision and arrival",
            DECISION_TO_ARRIVAL.as_millis()
        ));
    }
    let mut hours: BTreeMap<i64, u32> = BTreeMap::new();
    for a in log.accepted.iter().filter(|a| a.gateway == "gw-b") {
        *hours.entry(a.at_ms / 3_600_000).or_insert(0) += a.recipients;
    }
    report.line(format!(
        "gw-b per hour (limit {}): {:?}",
        plan.gw_b_per_hour,
        hours.values().collect::<Vec<_>>()
    ));
    if hours.values().any(|&n| n > plan.gw_b_per_hour) {
        report.problem("gw-b's hourly limit was exceeded".to_owned());
    }
    let per_gateway: BTreeMap<&str, usize> = GATEWAYS
        .iter()
        .map(|g| (*g, log.accepted.iter().filter(|a| a.gateway == *g).count()))
        .collect();
    report.line(format!("provider acceptances per gateway: {per_gateway:?}"));

    // Breaker transitions.
    let transitions: Vec<(String, i64, String, String)> = sqlx::query_as(
        "SELECT gateway_id, at_ms, from_phase, to_phase FROM breaker_transitions ORDER BY at_ms",
    )
    .fetch_all(records.pool())
    .await
    .unwrap();
    report.line(format!(
        "gw-a down from +{} s to +{} s; breaker transitions:",
        plan.gateway_down.0.as_secs(),
        plan.gateway_down.1.as_secs()
    ));
    for (gateway, at, from, to) in &transitions {
        #[allow(clippy::cast_precision_loss)]
        let offset = (at - run_started_ms) as f64 / 1000.0;
        report.line(format!("  +{offset:>6.1} s  {gateway}  {from} → {to}"));
    }
    let opened_a = transitions
        .iter()
        .any(|(g, _, _, to)| g == "gw-a" && to == "open");
    if !opened_a {
        report.problem("gw-a's breaker never opened while it was down".to_owned());
    }

    // The ledger against MySQL.
    let mut ledger_mismatch = Vec::new();
    for id in &ids {
        let entry = ledger.get(id.as_str()).cloned().flatten();
        let row = mysql.get(id);
        let status = row.map(|r| r.0.as_str());
        let agrees = match (&entry, status) {
            (Some(Entry::Sent(s)), Some("sent")) => {
                row.and_then(|r| r.1.as_ref()) == Some(&s.gateway)
            }
            (Some(Entry::Failed(_)), Some("failed" | "rejected")) => true,
            (None, Some("rejected")) => true,
            (Some(Entry::Released { .. } | Entry::Claimed { .. }) | None, _) => dead.contains(id),
            _ => false,
        };
        if !agrees {
            ledger_mismatch.push(format!("{id}: ledger {entry:?}, MySQL {row:?}"));
        }
    }
    report.line(format!(
        "ledger against MySQL: {} mismatches",
        ledger_mismatch.len()
    ));
    for m in ledger_mismatch.iter().take(10) {
        report.problem(format!("ledger {m}"));
    }

    // Serve's logs: no panic.
    for serve in &instances {
        for n in 1..=serve.starts {
            let name = serve.log_name(n);
            let text = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            if text.contains("panicked") {
                report.problem(format!("{name} has a panic"));
            }
        }
    }
    report
}

/// The duplicate audit's verdict: extra sends by cause, and those no cause explains.
#[derive(Debug, Default)]
struct DuplicateAudit {
    explained: BTreeMap<&'static str, usize>,
    unexplained: Vec<String>,
}

/// Ties each extra send of a message (its acceptances after the first, in time order) to one
/// cause that made it unavoidable:
/// - no acceptance of the message had been reported to the gateway (a webhook answered 200)
///   early enough for the sender to read it before the send (`EVIDENCE_TO_ARRIVAL`); and
/// - an earlier acceptance's sender could not record it: its call went unanswered (ambiguous),
///   or its process was killed within a lease of the acceptance; and
/// - the send came after that acceptance plus the acceptance wait (the sender waited).
///
/// Anything else (a send after the evidence was in, a send inside the wait, an extra send with no
/// unanswered call or kill before it) is unexplained.
fn audit_duplicates(
    accepted: &HashMap<&str, Vec<&Acceptance>>,
    kills: &[(String, i64)],
    plan: &Plan,
    run_started_ms: i64,
) -> DuplicateAudit {
    let wait = i64::try_from(plan.acceptance_wait.as_millis()).unwrap();
    let slack = i64::try_from(EVIDENCE_TO_ARRIVAL.as_millis()).unwrap();
    let lease = i64::try_from(VISIBILITY.as_millis()).unwrap();
    let mut audit = DuplicateAudit::default();
    for (id, sends) in accepted {
        for (k, send) in sends.iter().enumerate().skip(1) {
            let earlier = &sends[..k];
            let at = |ms: i64| format!("+{} ms", ms - run_started_ms);
            let describe = || {
                sends
                    .iter()
                    .map(|a| {
                        format!(
                            "{} by {} at {}{}, reported {}",
                            a.gateway,
                            a.caller,
                            at(a.at_ms),
                            if a.ambiguous { " (unanswered)" } else { "" },
                            a.reported_ms.map_or_else(|| "never".to_owned(), at)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            if let Some(r) = earlier.iter().filter_map(|a| a.reported_ms).min()
                && r + slack <= send.at_ms
            {
                audit.unexplained.push(format!(
                    "{id}: sent again after its acceptance was reported ({})",
                    describe()
                ));
                continue;
            }
            let cause = earlier.iter().find_map(|a| {
                if send.at_ms + slack < a.at_ms + wait {
                    return None;
                }
                if a.ambiguous {
                    return Some("unanswered call, acceptance reported after the wait");
                }
                kills
                    .iter()
                    .any(|(who, k)| *who == a.caller && *k >= a.at_ms && *k - a.at_ms <= lease)
                    .then_some(
                        "killed before recording the send, acceptance reported after the wait",
                    )
            });
            match cause {
                Some(c) => *audit.explained.entry(c).or_insert(0) += 1,
                None => audit.unexplained.push(format!(
                    "{id}: no cause for its send at {} ({})",
                    at(send.at_ms),
                    describe()
                )),
            }
        }
    }
    audit
}

/// How long a received batch stays hidden, and a crashed invocation's lease.
const VISIBILITY: Duration = Duration::from_secs(20);

/// The usual time between the token taken from gw-a's bucket and the request's arrival at the
/// simulated provider (the limit transaction comes first, then the breaker permit, then the
/// HTTP call): an interval at the provider may look this much shorter than it was at the
/// bucket. Reported: how full the bucket looks with only this allowance.
const BUCKET_SKEW: Duration = Duration::from_millis(250);

/// The longest time between the sender's read of a message's acceptance evidence and its call's
/// arrival at the provider: the evidence read, the limit transaction and the breaker permit,
/// each retried by the store for about 2 s when DynamoDB throttles, and the call itself. An
/// acceptance reported earlier than this before an extra send was there to be read.
const EVIDENCE_TO_ARRIVAL: Duration = Duration::from_secs(8);

/// The longest time between the decision (charged at the round's clock reading) and the
/// arrival: the limit transaction and the breaker permit, each retried by the store for about
/// 2 s when DynamoDB throttles (5 attempts, backoff ceilings 25 ms doubling to 1 s). Asserted.
const DECISION_TO_ARRIVAL: Duration = Duration::from_secs(4);

async fn status_counts(
    records: &gateway_core::records::mysql::MysqlRecords,
) -> BTreeMap<String, u64> {
    sqlx::query_as::<_, (String, i64)>("SELECT status, COUNT(*) FROM messages GROUP BY status")
        .fetch_all(records.pool())
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
        .collect()
}

/// Visible messages in the queue; `None` when moto did not answer (it is busy serving the
/// instances: the caller tries again later).
async fn visible(sqs: &aws_sdk_sqs::Client, url: &str) -> Option<usize> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .ok()?;
    Some(
        out.attributes()
            .and_then(|a| a.values().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

/// Messages in the queue, visible or not; `None` when moto did not answer.
async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> Option<u64> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(A::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .ok()?;
    Some(
        out.attributes()
            .map(|a| {
                a.values()
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum::<u64>()
            })
            .unwrap_or(0),
    )
}

/// The message ids in a queue (received until it is empty).
async fn drain_ids(sqs: &aws_sdk_sqs::Client, url: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(600)
            .send()
            .await
            .unwrap();
        if out.messages().is_empty() {
            return ids;
        }
        for m in out.messages() {
            let body: serde_json::Value =
                serde_json::from_str(m.body().unwrap_or_default()).unwrap();
            ids.insert(body["id"].as_str().unwrap_or_default().to_owned());
        }
    }
}

fn assert_clean(report: &Report) {
    assert!(
        report.problems.is_empty(),
        "{} problems:\n{}",
        report.problems.len(),
        report.problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_injection_small() {
    let report = run(Plan::small()).await;
    assert_clean(&report);
}

/// The full run of docs/RELIABILITY.md (about 20 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the 10,000-message run of docs/RELIABILITY.md; run it with --ignored"]
async fn fault_injection_10k() {
    let report = run(Plan::full()).await;
    assert_clean(&report);
}
