//! Cost and speed of the sender's happy path, through the real send pipeline: prints, per
//! batch of 10 messages from 10 different senders through one simulated gateway answering
//! after 100 ms with every limit level on (system, daily, hourly, burst, per sender), the
//! DynamoDB requests and WCU per message, the sequential round trips, and the batch's time.
//!
//! ```text
//! scripts/services up && source .local/services.env
//! cargo run --release -p gateway-tests --example dynamodb_budget
//! ```
//!
//! What one batch costs (see `gateway_core::pipeline`): the ledger claims, the suppression
//! lookup and the read of the gateway's breaker and limit items in flight together; the
//! limiter's one transaction; the sends; the ledger marks as one batch put (a closed breaker
//! with no failure writes nothing).
//!
//! The counts come from [`CountingStore`] (DynamoDB's WCU rules, computed; moto's own figures
//! are not faithful). The times are wall-clock on this machine against the local emulator:
//! they include the emulator's latency per round trip, not DynamoDB's. The second series uses
//! the in-memory store and shows the pipeline's own overhead over the provider's 100 ms.
//! Needs an endpoint (`AWS_ENDPOINT_URL[_DYNAMODB]`) so it never creates tables in a real
//! account.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_core::clock::{Clock, SystemClock};
use gateway_core::config::{Config, load_config};
use gateway_core::events::{EventSink, MemoryEventSink};
use gateway_core::pipeline::{Batch, BatchReport, Disposition, Pipeline, PipelineSettings};
use gateway_core::providers::factory::build_providers;
use gateway_core::queue::Received;
use gateway_core::secrets::SecretResolver;
use gateway_core::state::StateStore;
use gateway_core::state::counting::{CountingStore, Usage};
use gateway_core::state::dynamodb::{DynamoStore, client_from_env, create_table};
use gateway_core::state::memory::MemoryStore;

/// Messages per batch (the SQS batch size).
pub const BATCH: usize = 10;
/// Budgets (DESIGN §5).
pub const MAX_REQUESTS_PER_MESSAGE: f64 = 2.0;
/// WCU budget per message.
pub const MAX_WCU_PER_MESSAGE: f64 = 4.0;
/// Sequential round-trip budget per batch.
pub const MAX_ROUND_TRIPS: u64 = 3;
/// Time budget of a batch with 100 ms provider latency.
pub const MAX_BATCH_MS: u128 = 150;

/// One simulated gateway answering after `latency` with every limit level on, and a system
/// daily limit.
pub fn config(latency: &str) -> Config {
    let doc = format!(
        r#"{{
      "gateways": [{{
        "id": "gw",
        "type": "simulated",
        "display_name": "gw",
        "simulated": {{"latency": "{latency}", "seed": 1}},
        "routing": {{"can_route": ["*"]}},
        "rate_limits": {{"workspace_daily": 1000000, "per_hour": 100000,
                        "burst_limit": 1000, "burst_refill_per_second": 1000,
                        "per_user_daily": 500}}
      }}]
    }}"#
    );
    let env = |name: &str| (name == "QUEUE_DAILY_RATE_LIMIT").then(|| "10000000".to_owned());
    match load_config(Some(&doc), None, &env) {
        Ok(loaded) => loaded.config,
        Err(e) => panic_free_exit(&format!("benchmark config invalid: {e:?}")),
    }
}

fn panic_free_exit(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(1)
}

/// The pipeline over `store` with the gateway of [`config`].
pub async fn pipeline(store: Arc<dyn StateStore>, latency: &str) -> Result<Pipeline, String> {
    let config = config(latency);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let resolver = SecretResolver::new(Arc::clone(&clock));
    let providers = build_providers(&config, &resolver, &config.http, Arc::clone(&clock))
        .await
        .map_err(|e| format!("providers: {e}"))?;
    let sink: Arc<dyn EventSink> = Arc::new(MemoryEventSink::new());
    Ok(Pipeline::new(
        Arc::new(config),
        providers,
        store,
        sink,
        clock,
        PipelineSettings::default(),
    ))
}

/// Batch number `batch` of `run`: fresh message ids and senders.
pub fn records(run: &str, batch: usize) -> Vec<Received> {
    (0..BATCH)
        .map(|i| Received {
            message_id: format!("sqs-{run}-{batch}-{i}"),
            receipt_handle: format!("rh-{batch}-{i}"),
            body: serde_json::json!({
                "id": format!("msg-{run}-{batch}-{i}"),
                "from": format!("sender{i}-{batch}@clinic.example.org"),
                "to": [format!("patient{i}-{batch}@example.net")],
                "subject": "Your appointment",
                "text": "See you on Monday.",
            })
            .to_string(),
            receive_count: 1,
            sent_at: 0,
        })
        .collect()
}

/// Runs one batch; fails unless every message was sent.
pub async fn run_batch(
    pipeline: &Pipeline,
    run: &str,
    batch: usize,
) -> Result<(BatchReport, Duration), String> {
    let records = records(run, batch);
    let owner = format!("invocation-{run}-{batch}");
    let deadline = pipeline.clock().now_ms() + 60_000;
    let started = Instant::now();
    let report = pipeline
        .process(Batch {
            records: &records,
            owner: &owner,
            deadline,
        })
        .await;
    let took = started.elapsed();
    if report.metrics.sent as usize != BATCH
        || report
            .items
            .iter()
            .any(|i| i.disposition != Disposition::Done)
    {
        return Err(format!(
            "the happy path did not send everything: {report:?}"
        ));
    }
    Ok((report, took))
}

/// A counting store on a fresh table of the configured endpoint.
pub async fn fresh_store(name: &str) -> Result<Arc<CountingStore<DynamoStore>>, String> {
    Ok(Arc::new(CountingStore::new(fresh_table(name).await?)))
}

/// A fresh table of the configured endpoint.
pub async fn fresh_table(name: &str) -> Result<DynamoStore, String> {
    if std::env::var_os("AWS_ENDPOINT_URL").is_none()
        && std::env::var_os("AWS_ENDPOINT_URL_DYNAMODB").is_none()
    {
        return Err("no DynamoDB endpoint: run `scripts/services up && source \
                    .local/services.env` first (this never creates tables in a real account)"
            .into());
    }
    let client = client_from_env().await;
    let table = format!("{name}-{}", std::process::id());
    create_table(&client, &table)
        .await
        .map_err(|e| format!("creating {table}: {e}"))?;
    Ok(DynamoStore::new(client, table))
}

/// Whether `usage` of one batch is within every budget.
pub fn within_budget(usage: &Usage) -> bool {
    let n = BATCH as f64;
    usage.requests() as f64 / n <= MAX_REQUESTS_PER_MESSAGE
        && usage.wcu as f64 / n <= MAX_WCU_PER_MESSAGE
        && usage.round_trips <= MAX_ROUND_TRIPS
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> ExitCode {
    let store = match fresh_store("budget").await {
        Ok(s) => s,
        Err(e) => panic_free_exit(&e),
    };
    let dynamo = match pipeline(Arc::clone(&store) as Arc<dyn StateStore>, "100ms").await {
        Ok(p) => p,
        Err(e) => panic_free_exit(&e),
    };
    println!(
        "Happy path through the send pipeline: batches of {BATCH} messages, {BATCH} senders, one \
         simulated gateway answering after 100 ms, every limit level on"
    );
    println!(
        "batch  requests/msg  WCU/msg  round trips  time ms*  (gets writes tx batch-puts; WCU; failed conds)"
    );
    let mut ok = true;
    for batch in 0..5 {
        store.reset();
        let (_, took) = match run_batch(&dynamo, "dynamo", batch).await {
            Ok(r) => r,
            Err(e) => panic_free_exit(&e),
        };
        let usage = store.usage();
        let n = BATCH as f64;
        println!(
            "{batch:>5}  {:>12.2}  {:>7.2}  {:>11}  {:>7}  ({} {} {} {}; {}; {})",
            usage.requests() as f64 / n,
            usage.wcu as f64 / n,
            usage.round_trips,
            took.as_millis(),
            usage.batch_gets,
            usage.writes,
            usage.transactions,
            usage.batch_writes,
            usage.wcu,
            usage.failed_conditions,
        );
        ok &= within_budget(&usage);
    }

    // Times without the counting wrapper, which reads every item before writing it.
    let plain = match fresh_table("timing").await {
        Ok(s) => s,
        Err(e) => panic_free_exit(&e),
    };
    let timed = match pipeline(Arc::new(plain), "100ms").await {
        Ok(p) => p,
        Err(e) => panic_free_exit(&e),
    };
    let mut times = Vec::new();
    for batch in 0..20 {
        match run_batch(&timed, "timed", batch).await {
            Ok((_, took)) => times.push(took),
            Err(e) => panic_free_exit(&e),
        }
    }

    println!("* with the counting wrapper's extra reads; the times below are without it");

    let memory = match pipeline(Arc::new(MemoryStore::new()), "100ms").await {
        Ok(p) => p,
        Err(e) => panic_free_exit(&e),
    };
    let mut memory_times = Vec::new();
    for batch in 0..20 {
        match run_batch(&memory, "memory", batch).await {
            Ok((_, took)) => memory_times.push(took),
            Err(e) => panic_free_exit(&e),
        }
    }
    times.sort();
    memory_times.sort();
    println!(
        "batch time, DynamoDB on the local emulator: p50 {} ms, p95 {} ms, max {} ms (20 batches)",
        percentile(&times, 0.5).as_millis(),
        percentile(&times, 0.95).as_millis(),
        percentile(&times, 1.0).as_millis()
    );
    println!(
        "batch time, in-memory state:                p50 {} ms, p95 {} ms, max {} ms (20 batches)",
        percentile(&memory_times, 0.5).as_millis(),
        percentile(&memory_times, 0.95).as_millis(),
        percentile(&memory_times, 1.0).as_millis()
    );
    let fast = percentile(&times, 0.5).as_millis() <= MAX_BATCH_MS;
    println!(
        "budget: <= {MAX_REQUESTS_PER_MESSAGE} requests and <= {MAX_WCU_PER_MESSAGE} WCU per \
         message, <= {MAX_ROUND_TRIPS} round trips per batch: {}; batch p50 <= {MAX_BATCH_MS} ms: {}",
        if ok { "met" } else { "EXCEEDED" },
        if fast { "met" } else { "EXCEEDED" },
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
