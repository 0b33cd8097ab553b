//! `gateway dlq …`: the outbound dead letters as an operator handles them. In a deployment they
//! wait in the parked queue (the recorder records each one and moves it there from the SQS
//! dead-letter queue); any queue holding outbound messages works. The logic is in
//! [`gateway_core::queue::dead_letters`]; this module reads the arguments and prints.
//!
//! Redrive with `gateway dlq redrive`, not with `aws sqs start-message-move-task`: SQS's own
//! redrive gives every message a new message id, and a message whose body has no `id` would
//! then be a new message to the ledger and the record (see the core module's docs).

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use gateway_core::clock::{Clock, SystemClock};
use gateway_core::duration::format_duration;
use gateway_core::queue::dead_letters::{self, DeadLetter};
use gateway_core::queue::sqs::{SqsQueue, client_from_env};

/// The outbound queue's URL (the stack output `OutboundQueueUrl`).
const OUTBOUND_ENV: &str = "OUTBOUND_QUEUE_URL";
/// The parked queue's URL (the stack output `OutboundParkedQueueUrl`).
const PARKED_ENV: &str = "OUTBOUND_PARKED_QUEUE_URL";

/// Dead-letter commands. The queues are SQS queues at the endpoint the AWS SDK is pointed at.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List the dead letters, oldest first: key, receives, first send, age, size.
    List {
        /// The queue holding the dead letters; default $OUTBOUND_PARKED_QUEUE_URL.
        #[arg(long)]
        queue_url: Option<String>,
        /// Read at most this many.
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
    /// Print one dead letter's body (attachment contents shortened to their size).
    Show {
        /// Its key: the message's `id`, or its SQS message id when the body has none.
        key: String,
        /// The queue holding the dead letters; default $OUTBOUND_PARKED_QUEUE_URL.
        #[arg(long)]
        queue_url: Option<String>,
    },
    /// Send dead letters back to the outbound queue, keeping each message's key, and delete
    /// each from the DLQ once it is back. The ledger sends a message once, so a message that was
    /// in fact sent is not sent again; the record shows what happens next.
    Redrive {
        /// Only these keys (repeatable); default every dead letter.
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Move at most this many.
        #[arg(long, default_value_t = usize::MAX, hide_default_value = true)]
        max: usize,
        /// Say what would move, move nothing.
        #[arg(long)]
        dry_run: bool,
        /// The queue holding the dead letters; default $OUTBOUND_PARKED_QUEUE_URL.
        #[arg(long)]
        queue_url: Option<String>,
        /// The outbound queue's URL; default $OUTBOUND_QUEUE_URL.
        #[arg(long)]
        to: Option<String>,
    },
}

fn url(given: Option<String>, env: &str, flag: &str) -> anyhow::Result<String> {
    let output = if env == PARKED_ENV {
        "OutboundParkedQueueUrl"
    } else {
        "OutboundQueueUrl"
    };
    given
        .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
        .with_context(|| {
            format!("no queue URL: give --{flag} or set {env} (the stack output {output})")
        })
}

fn line(d: &DeadLetter, now: i64) -> String {
    let age = std::time::Duration::from_millis(u64::try_from(now - d.sent_at).unwrap_or(0));
    let sent = gateway_core::clock::format_rfc3339(d.sent_at);
    let mut out = format!(
        "{}  receives {}  first sent {sent} ({} ago)  {} bytes",
        d.key,
        d.receive_count,
        format_duration(age),
        d.bytes
    );
    if d.key != d.queue_message_id {
        out.push_str(&format!("  sqs {}", d.queue_message_id));
    }
    if let Some(problem) = d.problem {
        out.push_str(&format!("  ({problem})"));
    }
    out
}

/// The body for reading: attachment contents replaced by their length.
fn readable(body: &str) -> String {
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.to_owned();
    };
    if let Some(list) = value
        .get_mut("attachments")
        .and_then(serde_json::Value::as_array_mut)
    {
        for a in list {
            if let Some(content) = a.get_mut("content")
                && let Some(len) = content.as_str().map(str::len)
            {
                *content = serde_json::Value::String(format!("<{len} base64 characters>"));
            }
        }
    }
    serde_json::to_string_pretty(&value).unwrap_or_else(|_| body.to_owned())
}

/// Runs a `dlq` subcommand.
pub fn run(cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let client = client_from_env().await;
        let now = SystemClock.now_ms();
        match cmd {
            DlqCommand::List { queue_url, max } => {
                let queue_url = url(queue_url, PARKED_ENV, "queue-url")?;
                let dlq = SqsQueue::new(client, queue_url.clone());
                let letters = dead_letters::list(&dlq, max)
                    .await
                    .with_context(|| format!("reading {queue_url}"))?;
                for d in &letters {
                    println!("{}", line(d, now));
                }
                println!("{} dead letters in {queue_url}", letters.len());
                Ok(ExitCode::SUCCESS)
            }
            DlqCommand::Show { key, queue_url } => {
                let queue_url = url(queue_url, PARKED_ENV, "queue-url")?;
                let dlq = SqsQueue::new(client, queue_url.clone());
                let letters = dead_letters::list(&dlq, usize::MAX)
                    .await
                    .with_context(|| format!("reading {queue_url}"))?;
                match letters
                    .iter()
                    .find(|d| d.key == key || d.queue_message_id == key)
                {
                    Some(d) => {
                        println!("{}", line(d, now));
                        println!("{}", readable(&d.body));
                        Ok(ExitCode::SUCCESS)
                    }
                    None => {
                        eprintln!("no dead letter with key {key:?} in {queue_url}");
                        Ok(ExitCode::FAILURE)
                    }
                }
            }
            DlqCommand::Redrive {
                ids,
                max,
                dry_run,
                queue_url,
                to,
            } => {
                let queue_url = url(queue_url, PARKED_ENV, "queue-url")?;
                let to = url(to, OUTBOUND_ENV, "to")?;
                let dlq = SqsQueue::new(client.clone(), queue_url.clone());
                let outbound = SqsQueue::new(client, to.clone());
                let only: BTreeSet<String> = ids.into_iter().collect();
                let mut last = 0;
                let summary =
                    dead_letters::redrive(&dlq, &outbound, &only, max, dry_run, &mut |n| {
                        if n >= last + 100 {
                            eprintln!("… {n} moved");
                            last = n;
                        }
                    })
                    .await
                    .with_context(|| format!("redriving {queue_url} to {to}"))?;
                let verb = if dry_run { "would move" } else { "moved" };
                for (key, id) in &summary.moved {
                    if id.is_empty() {
                        println!("{verb} {key}");
                    } else {
                        println!("{verb} {key} (new sqs id {id})");
                    }
                }
                for (key, error) in &summary.failed {
                    eprintln!("not moved {key}: {error}");
                }
                println!(
                    "{verb} {} to {to} ({} given their key as \"id\"), {} left (not chosen), {} \
                     failed{}",
                    summary.moved.len(),
                    summary.keyed,
                    summary.skipped,
                    summary.failed.len(),
                    if summary.not_deleted > 0 {
                        format!(
                            ", {} sent back but still in the DLQ (a later redrive finds them sent)",
                            summary.not_deleted
                        )
                    } else {
                        String::new()
                    }
                );
                if !only.is_empty() {
                    let found: BTreeSet<&String> = summary.moved.iter().map(|(k, _)| k).collect();
                    for key in only.iter().filter(|k| !found.contains(k)) {
                        eprintln!("no dead letter with key {key:?}");
                    }
                }
                Ok(if summary.failed.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
        }
    })
}
