//! Cold start of a function binary: the time from starting the process until its first
//! request to the Lambda Runtime API (`GET /2018-06-01/runtime/invocation/next`), measured
//! against a local fake of that API, and the binary's size. Budget: 50 ms (DESIGN §5).
//!
//! ```text
//! cargo build --release -p sender
//! cargo run -p gateway-tests --example cold_start -- target/release/sender 30
//! ```
//!
//! The function starts as Lambda would start it (the `AWS_LAMBDA_*` variables, credentials
//! and region in the environment, so the AWS SDK never probes instance metadata) with a
//! production-shaped config: four gateways (Mailgun, SendGrid, SES, SMTP) whose secrets are
//! `env:` references, so that start-up does its real work (config load and validation,
//! provider clients, AWS clients, TLS roots) without network calls that only a real account
//! could answer. Secrets Manager references would add one round trip per secret in Lambda.
//!
//! The fake answers nothing: the process is killed once its first poll arrives. Each run is a
//! fresh process; the page cache is warm after the first, as it is for Lambda's own
//! snapshot-less starts from a cached image. Prints every run, then min / p50 / p95 / max.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Budget (DESIGN §5).
const BUDGET_MS: f64 = 50.0;
/// How long one start may take before the run counts as failed.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The poll every Lambda runtime makes first.
const NEXT: &str = "GET /2018-06-01/runtime/invocation/next";

const CONFIG: &str = r#"{
  "gateways": [
    {"id": "mailgun-primary", "type": "mailgun", "display_name": "Mailgun", "priority": 1,
     "mailgun": {"domain": "mg.clinic.example", "api_key": "env:COLD_START_KEY",
                 "webhook_signing_key": "env:COLD_START_KEY"},
     "routing": {"can_route": ["*@clinic.example"], "failover_to": ["sendgrid-backup"]}},
    {"id": "sendgrid-backup", "type": "sendgrid", "display_name": "SendGrid", "priority": 2,
     "sendgrid": {"api_key": "env:COLD_START_KEY"},
     "routing": {"can_route": ["*"]}},
    {"id": "ses-bulk", "type": "amazon_ses", "display_name": "SES", "priority": 3,
     "amazon_ses": {"region": "eu-west-1"},
     "routing": {"can_route": ["*"]}},
    {"id": "smtp-relay", "type": "smtp", "display_name": "Relay", "priority": 4,
     "smtp": {"host": "smtp.clinic.example", "port": 587, "username": "gateway",
              "password": "env:COLD_START_KEY"},
     "routing": {"can_route": ["*"]}}
  ],
  "global_defaults": {
    "rate_limits": {"workspace_daily": 100000, "per_user_daily": 2000, "per_hour": 10000,
                    "burst_limit": 100}
  }
}"#;

fn usage() -> ! {
    eprintln!("usage: cold_start BINARY [RUNS]   (e.g. target/release/sender 30)");
    std::process::exit(2)
}

/// Starts `binary` once against a fake Runtime API; the time until its first poll.
fn one_start(binary: &Path, config: &Path) -> Result<Duration, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("addr: {e}"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // The first connection that asks for the next invocation ends the measurement.
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).is_ok() && line.starts_with(NEXT) {
                let _ = tx.send(Instant::now());
                let _ = stream
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
                return;
            }
        }
    });
    let started = Instant::now();
    let mut child = Command::new(binary)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "mail-gateway-sender")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            "/aws/lambda/mail-gateway-sender",
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "cold-start")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDCOLDSTART")
        .env("AWS_SECRET_ACCESS_KEY", "cold-start")
        .env("AWS_SESSION_TOKEN", "cold-start")
        .env("GATEWAY_CONFIG_FILE", config)
        .env("GATEWAY_STATE_TABLE", "gateway-state")
        .env(
            "OUTBOUND_QUEUE_URL",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/outbound",
        )
        .env(
            "EVENTS_QUEUE_URL",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/events",
        )
        .env("COLD_START_KEY", "key-0123456789abcdef")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        // The function logs JSON lines to stdout, as Lambda expects.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let polled = rx.recv_timeout(TIMEOUT);
    let _ = child.kill();
    let output = child.wait_with_output();
    match polled {
        Ok(at) => Ok(at.duration_since(started)),
        Err(_) => {
            let stderr = output
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_default();
            Err(format!(
                "no poll of the Runtime API within {TIMEOUT:?}; the function said:\n{stderr}"
            ))
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(binary) = args.next().map(PathBuf::from) else {
        usage()
    };
    let runs: usize = match args.next().map(|r| r.parse()) {
        None => 30,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => usage(),
    };
    let size = match std::fs::metadata(&binary) {
        Ok(m) => m.len(),
        Err(e) => {
            eprintln!("{}: {e}", binary.display());
            return ExitCode::FAILURE;
        }
    };
    let config = std::env::temp_dir().join(format!("cold-start-{}.json", std::process::id()));
    if let Err(e) = std::fs::write(&config, CONFIG) {
        eprintln!("{}: {e}", config.display());
        return ExitCode::FAILURE;
    }
    let mut times = Vec::with_capacity(runs);
    for run in 1..=runs {
        match one_start(&binary, &config) {
            Ok(t) => {
                println!("run {run:>3}: {:>7.2} ms", t.as_secs_f64() * 1e3);
                times.push(t);
            }
            Err(e) => {
                eprintln!("run {run}: {e}");
                let _ = std::fs::remove_file(&config);
                return ExitCode::FAILURE;
            }
        }
    }
    let _ = std::fs::remove_file(&config);
    times.sort();
    let ms = |p: f64| {
        let i = ((times.len() as f64 - 1.0) * p).round() as usize;
        times[i].as_secs_f64() * 1e3
    };
    println!(
        "{}: {:.1} MB; process start to first Runtime API poll over {runs} runs: min {:.2} ms, \
         p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms (budget {BUDGET_MS} ms: {})",
        binary.display(),
        size as f64 / 1e6,
        ms(0.0),
        ms(0.5),
        ms(0.95),
        ms(1.0),
        if ms(0.5) <= BUDGET_MS {
            "met at p50"
        } else {
            "EXCEEDED at p50"
        }
    );
    ExitCode::SUCCESS
}
