//! Cold start of the function binaries, measured side by side with a hello-world
//! `lambda_runtime` function: the time from starting the process until its first request to the
//! Lambda Runtime API (`GET /2018-06-01/runtime/invocation/next`), against a local fake of that
//! API. Budget (ARCHITECTURE §5): every function's p50 at most twice the hello world's.
//!
//! ```text
//! cargo build --release -p cold-start -p sender -p webhooks -p recorder -p status -p health-check
//! target/release/cold-start target/release/{sender,webhooks,recorder,status,health-check}
//! ```
//!
//! The hello world is this binary itself started with `--hello-world`: a `#[tokio::main]`
//! `lambda_runtime::run` of a function answering `{}`, built by the same cargo invocation with
//! the same profile as the functions. Runs are interleaved (one start of every binary per
//! round), so a noisy neighbour slows all of them alike.
//!
//! Each function starts as Lambda would start it (the `AWS_LAMBDA_*` variables, credentials and
//! region in the environment, so the AWS SDK never probes instance metadata) with a
//! production-shaped config: four gateways (Mailgun, SendGrid, SES, SMTP) whose secrets are
//! `env:` references, so start-up does its real work (config load and validation, provider
//! clients, AWS clients) without network calls only a real account could answer. Every
//! function gets the variables of all of them; each reads its own. The fake answers nothing:
//! the process is killed once its first poll arrives. The page cache is warm after the first
//! round, as it is for Lambda's own starts from a cached image.
//!
//! Prints every binary's size, min / p50 / p95 / max, its p50 against the hello world's, and
//! the function's own `start-up done` line of the last round (the time of each wiring step).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The budget: a function's p50 over the hello world's (ARCHITECTURE §5).
const BUDGET_RATIO: f64 = 2.0;
/// How long one start may take before the run counts as failed.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The poll every Lambda runtime makes first.
const NEXT: &str = "GET /2018-06-01/runtime/invocation/next";
/// Starts per binary when `--runs` is not given.
const DEFAULT_RUNS: usize = 30;

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
    eprintln!(
        "usage: cold-start [--runs N] BINARY...   (e.g. target/release/sender target/release/webhooks)"
    );
    std::process::exit(2)
}

/// The hello-world function: what any `lambda_runtime` binary does before its first poll.
#[tokio::main]
async fn hello_world() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(lambda_runtime::service_fn(
        |_: lambda_runtime::LambdaEvent<serde_json::Value>| async {
            Ok::<_, lambda_runtime::Error>(serde_json::json!({}))
        },
    ))
    .await
}

/// One binary under test: how to start it, and what its starts measured.
struct Subject {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    size: u64,
    times: Vec<Duration>,
    last_output: String,
}

impl Subject {
    fn p(&self, q: f64) -> f64 {
        let mut sorted = self.times.clone();
        sorted.sort();
        let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted.get(i).map_or(f64::NAN, |t| t.as_secs_f64() * 1e3)
    }
}

/// Starts `subject` once against a fake Runtime API; the time until its first poll and what
/// the process printed.
fn one_start(subject: &Subject, config: &Path) -> Result<(Duration, String), String> {
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
    let function = format!("mail-gateway-{}", subject.name);
    let started = Instant::now();
    let mut child = Command::new(&subject.program)
        .args(&subject.args)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", &function)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function}"),
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
        // A database nobody listens on: the pools connect lazily, as in Lambda.
        .env(
            "DATABASE_URL",
            "mysql://gateway:cold-start@127.0.0.1:9/gateway",
        )
        .env("COLD_START_KEY", "key-0123456789abcdef")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        // The function logs JSON lines to stdout, as Lambda expects.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", subject.program.display()))?;
    let polled = rx.recv_timeout(TIMEOUT);
    let _ = child.kill();
    let output = child
        .wait_with_output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default();
    match polled {
        Ok(at) => Ok((at.duration_since(started), output)),
        Err(_) => Err(format!(
            "{}: no poll of the Runtime API within {TIMEOUT:?}; it said:\n{output}",
            subject.name
        )),
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--hello-world") {
        return match hello_world() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hello world: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut runs = DEFAULT_RUNS;
    if args.first().map(String::as_str) == Some("--runs") {
        runs = match args.get(1).map(|r| r.parse()) {
            Some(Ok(n)) if n > 0 => n,
            _ => usage(),
        };
        args.drain(..2);
    }
    if args.is_empty() {
        usage()
    }
    let me = match std::env::current_exe() {
        Ok(me) => me,
        Err(e) => {
            eprintln!("locating this binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut subjects = vec![(
        "hello-world".to_owned(),
        me,
        vec!["--hello-world".to_owned()],
    )];
    for binary in &args {
        let path = PathBuf::from(binary);
        let name = path
            .file_name()
            .map_or_else(|| binary.clone(), |n| n.to_string_lossy().into_owned());
        subjects.push((name, path, Vec::new()));
    }
    let mut subjects: Vec<Subject> = match subjects
        .into_iter()
        .map(|(name, program, args)| {
            let size = std::fs::metadata(&program)
                .map_err(|e| format!("{}: {e}", program.display()))?
                .len();
            Ok(Subject {
                name,
                program,
                args,
                size,
                times: Vec::with_capacity(runs),
                last_output: String::new(),
            })
        })
        .collect::<Result<_, String>>()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let config = std::env::temp_dir().join(format!("cold-start-{}.json", std::process::id()));
    if let Err(e) = std::fs::write(&config, CONFIG) {
        eprintln!("{}: {e}", config.display());
        return ExitCode::FAILURE;
    }
    for _ in 0..runs {
        for subject in &mut subjects {
            match one_start(subject, &config) {
                Ok((t, output)) => {
                    subject.times.push(t);
                    subject.last_output = output;
                }
                Err(e) => {
                    eprintln!("{e}");
                    let _ = std::fs::remove_file(&config);
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&config);

    let hello = subjects[0].p(0.5);
    println!(
        "process start to first Runtime API poll, {runs} interleaved runs each (ms; budget: p50 ≤ {BUDGET_RATIO}× hello-world)"
    );
    println!(
        "{:<14} {:>8} {:>7} {:>7} {:>7} {:>7} {:>8}",
        "binary", "size MB", "min", "p50", "p95", "max", "p50/hw"
    );
    let mut met = true;
    for s in &subjects {
        let ratio = s.p(0.5) / hello;
        met &= ratio <= BUDGET_RATIO || s.name == "hello-world";
        println!(
            "{:<14} {:>8.1} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2}×",
            s.name,
            s.size as f64 / 1e6,
            s.p(0.0),
            s.p(0.5),
            s.p(0.95),
            s.p(1.0),
            ratio
        );
    }
    for s in subjects.iter().skip(1) {
        if let Some(line) = s.last_output.lines().find(|l| l.contains("start-up done")) {
            println!("{}: {line}", s.name);
        }
    }
    println!("budget {}", if met { "met" } else { "EXCEEDED" });
    ExitCode::SUCCESS
}
