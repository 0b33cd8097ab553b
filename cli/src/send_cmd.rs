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
    /// Upload each attachment larger than --inline-max to this S3 bucket (the deployment's
    /// attachments bucket, stack output `AttachmentsBucketName`) and send a reference to it
    /// instead: a message of any size up to the providers' limits fits the queue's 1 MiB.
    #[arg(long, value_name = "BUCKET")]
    bucket: Option<String>,
    /// With --bucket: attachments up to this many bytes stay inline.
    #[arg(long, default_value_t = 262_144, requires = "bucket")]
    inline_max: usize,
}

/// Uploads the attachments of `body` (with its `id`) larger than `inline_max` to `bucket`
/// under `{id}/{index}-{filename}` and puts references to them in their place.
async fn upload_large(
    body: &str,
    id: &str,
    bucket: &str,
    inline_max: usize,
) -> anyhow::Result<String> {
    use base64::Engine;
    let mut doc: serde_json::Value = serde_json::from_str(body).context("reading the message")?;
    let Some(list) = doc.get_mut("attachments").and_then(|a| a.as_array_mut()) else {
        return Ok(body.to_owned());
    };
    let mut store = None;
    for (i, a) in list.iter_mut().enumerate() {
        let Some(content) = a.get("content").and_then(|c| c.as_str()) else {
            continue;
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(content)
            .with_context(|| format!("attachments[{i}].content: not base64"))?;
        if bytes.len() <= inline_max {
            continue;
        }
        let filename = a
            .get("filename")
            .and_then(|f| f.as_str())
            .unwrap_or("attachment");
        let safe: String = filename
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let key = format!("{id}/{i}-{safe}");
        if store.is_none() {
            let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            store = Some(gateway_core::attachments::S3Store::from_sdk(&sdk));
        }
        let size = bytes.len();
        let sha256 = gateway_core::attachments::sha256_hex(&bytes);
        if let Some(s3) = &store {
            s3.put(bucket, &key, bytes).await.map_err(|e| {
                anyhow::anyhow!("uploading attachments[{i}] to s3://{bucket}/{key}: {e}")
            })?;
        }
        println!("uploaded attachments[{i}] ({filename}, {size} bytes) to s3://{bucket}/{key}");
        let obj = a.as_object_mut().context("an attachment is an object")?;
        obj.remove("content");
        obj.insert(
            "s3".to_owned(),
            serde_json::json!({"bucket": bucket, "key": key, "size": size, "sha256": sha256}),
        );
    }
    Ok(doc.to_string())
}

/// Checks `body` against the contract, printing every problem; `false` when it is invalid.
fn valid(args: &SendArgs, body: &str) -> bool {
    match parse_message(body.as_bytes(), Some("queue-assigned-id")) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("{}: invalid message:", args.file.display());
            for problem in e.errors() {
                eprintln!("  {problem}");
            }
            if e.omitted() > 0 {
                eprintln!("  and {} more problems", e.omitted());
            }
            eprintln!("(use --no-validate to send it anyway)");
            false
        }
    }
}

/// Runs `gateway send`.
pub fn run(args: &SendArgs) -> anyhow::Result<ExitCode> {
    let body = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    // With --bucket the body is checked once its large attachments are references (it may be
    // over the queue's 1 MiB before).
    if !args.no_validate && args.bucket.is_none() && !valid(args, &body) {
        return Ok(ExitCode::FAILURE);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let body = match &args.bucket {
            Some(bucket) => {
                let (with, id) = with_id(&body).context("the message is not a JSON object")?;
                let body = upload_large(&with, &id, bucket, args.inline_max).await?;
                if !args.no_validate && !valid(args, &body) {
                    return Ok(ExitCode::FAILURE);
                }
                body
            }
            None => body,
        };
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
