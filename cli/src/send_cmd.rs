//! `gateway send FILE`: enqueues one message, on an SQS queue or through a running
//! `gateway serve`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use gateway_core::message::{parse_message, with_id};
use gateway_core::queue::Queue;
use gateway_core::queue::sqs::SqsQueue;

/// Bound on the whole request to a local `gateway serve` (it only validates and enqueues).
const LOCAL_TIMEOUT: Duration = Duration::from_secs(30);

/// `gateway send` options.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["queue_url", "local"])))]
pub struct SendArgs {
    /// The message (JSON, ARCHITECTURE §2.1).
    file: PathBuf,
    /// Send to this SQS queue (AWS settings from the environment).
    #[arg(long, value_name = "URL")]
    queue_url: Option<String>,
    /// Send through a running `gateway serve` at this base URL (e.g. http://127.0.0.1:8025).
    #[arg(long, value_name = "URL")]
    local: Option<String>,
    /// Bearer token for a `gateway serve` listening beyond loopback ($GATEWAY_API_TOKEN).
    #[arg(long, env = "GATEWAY_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Send even if the message is invalid, to see how the gateway rejects a poison message
    /// (only with --queue-url: the local route validates what it enqueues).
    #[arg(long, conflicts_with = "local")]
    no_validate: bool,
}

/// Runs `gateway send`.
pub fn run(args: &SendArgs) -> anyhow::Result<ExitCode> {
    let body = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    if !args.no_validate
        && let Err(e) = parse_message(body.as_bytes(), Some("queue-assigned-id"))
    {
        eprintln!("{}: invalid message:", args.file.display());
        for problem in e.errors() {
            eprintln!("  {problem}");
        }
        if e.omitted() > 0 {
            eprintln!("  and {} more problems", e.omitted());
        }
        eprintln!("(use --no-validate to send it anyway)");
        return Ok(ExitCode::FAILURE);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        if let Some(url) = &args.queue_url {
            let client = gateway_core::queue::sqs::client_from_env().await;
            // The idempotency key goes into the body first, so a retried SendMessage (the
            // SDK retries one whose answer was lost) is the same message to the ledger. A body
            // sent unvalidated and not an object goes as it is.
            let (body, message_id) = match with_id(&body) {
                Some((body, id)) => (body, Some(id)),
                None => (body, None),
            };
            let id = SqsQueue::new(client, url.clone())
                .send(&body)
                .await
                .with_context(|| format!("sending to {url}"))?;
            match message_id {
                Some(m) => println!("enqueued: message id {m}, queue message id {id}"),
                None => println!("enqueued: queue message id {id}"),
            }
            return Ok(ExitCode::SUCCESS);
        }
        let base = args
            .local
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/');
        let client = reqwest::Client::builder()
            .timeout(LOCAL_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let mut request = client
            .post(format!("{base}/api/messages"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = &args.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| {
            format!("posting to {base}/api/messages (is `gateway serve` running?)")
        })?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        if status.is_success() {
            println!(
                "enqueued: message id {}, queue message id {}",
                answer["message_id"].as_str().unwrap_or("?"),
                answer["queue_message_id"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        } else {
            eprintln!(
                "refused ({status}): {}",
                answer["error"]["message"].as_str().unwrap_or("no detail")
            );
            Ok(ExitCode::FAILURE)
        }
    })
}
