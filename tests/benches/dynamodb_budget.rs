//! Cost and speed of the sender's happy path, through the real send pipeline: prints, for
//! batches of 1, 10 and 100 messages (one sender each) through one simulated gateway answering
//! after 100 ms with every limit level on (system, daily, hourly, burst, per sender), the
//! DynamoDB requests, WCU and RCU per message, the sequential round trips, the time of a batch
//! of 10, and a cost per million messages (DynamoDB, SQS, Lambda at list prices) next to a naive
//! design's.
//!
//! ```text
//! scripts/services up && source .local/services.env
//! cargo bench -p gateway-tests --bench dynamodb_budget
//! ```
//!
//! What one batch costs (see `gateway_core::pipeline`): the ledger claims, the suppression
//! lookup and the read of the gateway's breaker, health and lever items in flight together; the
//! limiter's conditional writes (each sender's counter, and a gateway or system lease when the
//! process holds too little), in flight together; the sends; each ledger mark as its send is
//! accepted (a closed breaker with no failure writes nothing). Then WCU per message after 10,
//! 1,000 and 10,000 distinct senders that day.
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
use gateway_core::sqs_sink::plan_batches;
use gateway_core::state::StateStore;
use gateway_core::state::counting::{CountingStore, Usage};
use gateway_core::state::dynamodb::{DynamoStore, client_from_env, create_table, with_timeouts};
use gateway_core::state::memory::MemoryStore;

/// Messages per batch of the budget (the SQS batch size the template defaults to).
pub const BATCH: usize = 10;
/// Batch sizes measured: one message, the default, and a batching window's worth.
pub const SIZES: [usize; 3] = [1, 10, 100];
/// Budgets (ARCHITECTURE §5). Requests: one claim, one sender-counter write and one mark per
/// message (each send is marked as its answer arrives, so a crash leaves the shortest window),
/// plus the batch's two reads and the limit leases' writes when they run short.
pub const MAX_REQUESTS_PER_MESSAGE: f64 = 3.5;
/// WCU budget per message: the claim, the mark, the sender's counter and a tenth for every
/// other limit level (docs/STATE.md, "Limiter: quota leases").
pub const MAX_WCU_PER_MESSAGE: f64 = 3.1;
/// Distinct senders so far that UTC day at which [`sender_sweep`] measures.
pub const SENDERS_SO_FAR: [usize; 3] = [10, 1_000, 10_000];
/// Sequential round-trip budget per batch, whatever its size.
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
                        "burst_limit": 1000, "burst_refill_per_second": 100,
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
    Ok(pipeline_with_sink(store, latency).await?.0)
}

/// [`pipeline`], and the sink that receives its outcome events.
pub async fn pipeline_with_sink(
    store: Arc<dyn StateStore>,
    latency: &str,
) -> Result<(Pipeline, Arc<MemoryEventSink>), String> {
    pipeline_at(store, latency, Arc::new(SystemClock)).await
}

/// [`pipeline_with_sink`] on `clock`.
pub async fn pipeline_at(
    store: Arc<dyn StateStore>,
    latency: &str,
    clock: Arc<dyn Clock>,
) -> Result<(Pipeline, Arc<MemoryEventSink>), String> {
    let config = config(latency);
    let resolver = Arc::new(SecretResolver::new(Arc::clone(&clock)));
    let providers = build_providers(&config, &resolver, &config.http, Arc::clone(&clock))
        .await
        .map_err(|e| format!("providers: {e}"))?;
    let sink = Arc::new(MemoryEventSink::new());
    let pipeline = Pipeline::new(
        Arc::new(config),
        providers,
        store,
        Arc::clone(&sink) as Arc<dyn EventSink>,
        clock,
        PipelineSettings::default(),
    );
    Ok((pipeline, sink))
}

/// Batch number `batch` of `run`: `size` fresh message ids from as many senders.
pub fn records(run: &str, batch: usize, size: usize) -> Vec<Received> {
    (0..size)
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

/// Runs one batch of `size` messages; fails unless every message was sent.
pub async fn run_batch(
    pipeline: &Pipeline,
    run: &str,
    batch: usize,
    size: usize,
) -> Result<(BatchReport, Duration), String> {
    let records = records(run, batch, size);
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
    if report.metrics.sent as usize != size
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
    // The production client's 2 s attempt timeout, with more room: this counts requests, and
    // the emulator serves them one at a time, so on a busy machine the last of a batch's 100
    // concurrent claims can wait longer than 2 s and be sent again, an extra round trip that
    // measures the machine, not the pipeline.
    let client = with_timeouts(
        &client_from_env().await,
        Duration::from_secs(10),
        Duration::from_secs(30),
    );
    let table = format!("{name}-{}", std::process::id());
    create_table(&client, &table)
        .await
        .map_err(|e| format!("creating {table}: {e}"))?;
    Ok(DynamoStore::new(client, table))
}

/// Where simulated time starts: 2026-12-04T10:00:00Z.
pub const SWEEP_START_MS: i64 = 1_796_378_400_000;

/// A batch every [`SWEEP_GAP_MS`] in [`sender_sweep`]: one instance at about 67 messages a
/// second, what a sender instance does with providers answering in about 150 ms.
pub const SWEEP_GAP_MS: i64 = 150;

/// The pipeline over `store` on simulated time from [`SWEEP_START_MS`], and its clock (advance
/// it [`SWEEP_GAP_MS`] after each batch): the leases' prefetch follows the process's rate, so on
/// the wall clock the counts would follow the machine's speed.
pub async fn simulated(
    store: Arc<dyn StateStore>,
) -> Result<(Pipeline, Arc<gateway_core::clock::ManualClock>), String> {
    let clock = Arc::new(gateway_core::clock::ManualClock::new(SWEEP_START_MS));
    let (pipeline, _) = pipeline_at(store, "0ms", Arc::clone(&clock) as Arc<dyn Clock>).await?;
    Ok((pipeline, clock))
}

/// WCU per message of batches of 10 new senders each, measured over `measured` batches once
/// `so_far` distinct senders have sent through the gateway that UTC day (every one of them a
/// batch earlier, through the same pipeline, one batch every [`SWEEP_GAP_MS`] of simulated
/// time on in-memory state): the figure that grew with the senders when their counters lived
/// in the gateway's day item.
pub async fn sender_sweep(so_far: usize, measured: usize) -> Result<(Usage, u64), String> {
    let store = Arc::new(CountingStore::new(MemoryStore::new()));
    let (pipeline, clock) = simulated(Arc::clone(&store) as Arc<dyn StateStore>).await?;
    let warm = so_far.div_ceil(BATCH);
    for batch in 0..warm + measured {
        if batch == warm {
            store.reset();
        }
        run_batch(&pipeline, "sweep", batch, BATCH).await?;
        clock.advance(SWEEP_GAP_MS);
    }
    let largest = store
        .inner()
        .snapshot()
        .iter()
        .map(|(k, i)| gateway_core::state::counting::item_size(k, i))
        .max()
        .unwrap_or(0);
    Ok((store.usage(), largest))
}

/// Whether `usage` of one batch of `size` messages is within every budget: requests and WCU
/// per message apply to the batch of [`BATCH`] (ARCHITECTURE §5; a single message carries the
/// batch's fixed reads and writes alone), round trips to every size.
pub fn within_budget(usage: &Usage, size: usize) -> bool {
    let n = size as f64;
    let per_message = size < BATCH
        || (usage.requests() as f64 / n <= MAX_REQUESTS_PER_MESSAGE
            && usage.wcu as f64 / n <= MAX_WCU_PER_MESSAGE);
    per_message && usage.round_trips <= MAX_ROUND_TRIPS
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// List prices (USD, us-east-1, on-demand, as published in 2025; inputs of the cost model, not
/// measurements).
mod price {
    /// DynamoDB on-demand, per write request unit.
    pub const DYNAMODB_WRU: f64 = 0.625 / 1e6;
    /// DynamoDB on-demand, per read request unit (a strongly consistent read of ≤ 4 KB).
    pub const DYNAMODB_RRU: f64 = 0.125 / 1e6;
    /// SQS standard queue, per request (per 64 KB chunk).
    pub const SQS_REQUEST: f64 = 0.40 / 1e6;
    /// Lambda, per request.
    pub const LAMBDA_REQUEST: f64 = 0.20 / 1e6;
    /// Lambda on arm64, per GB-second.
    pub const LAMBDA_ARM_GB_S: f64 = 0.000_013_333_4;
}

/// Memory of the sender and recorder functions in `template.yaml`, in GB.
const SENDER_GB: f64 = 0.5;
const RECORDER_GB: f64 = 0.25;
/// Assumed recorder time per batch of 10 events (one MySQL transaction); not measured here.
const RECORDER_BATCH_S: f64 = 0.05;

/// Per message, in money: what one delivered message costs with the measured counts.
#[derive(Debug, Default, Clone, Copy)]
struct Cost {
    dynamodb: f64,
    sqs: f64,
    lambda: f64,
}

impl Cost {
    fn total(&self) -> f64 {
        self.dynamodb + self.sqs + self.lambda
    }
}

/// The cost per message of this design at a batch size of `size`, from one batch's usage, the
/// events it emitted and the `SendMessageBatch` calls they took, and the batch's time.
fn cost(usage: &Usage, size: usize, events: f64, event_requests: f64, batch_s: f64) -> Cost {
    let n = size as f64;
    let dynamodb =
        (usage.wcu as f64 * price::DYNAMODB_WRU + usage.rcu as f64 * price::DYNAMODB_RRU) / n;
    // Per message: the producer's SendMessage; the event source's receive and batched delete;
    // the events' SendMessageBatch calls; the recorder's receive and delete per 10 events.
    let recorder_batches = events / 10.0;
    let sqs_requests = 1.0 + 2.0 / n + event_requests / n + 2.0 * recorder_batches / n;
    let invocations = (1.0 + recorder_batches) / n;
    let gb_s = batch_s * SENDER_GB / n + RECORDER_BATCH_S * RECORDER_GB * recorder_batches / n;
    Cost {
        dynamodb,
        sqs: sqs_requests * price::SQS_REQUEST,
        lambda: invocations * price::LAMBDA_REQUEST + gb_s * price::LAMBDA_ARM_GB_S,
    }
}

/// The naive design the budget is measured against: per message, a read and a conditional
/// write per limit level (system daily, gateway daily, hourly, burst, per sender), a ledger
/// claim and a ledger mark, a suppression read, and a breaker read and write (the success
/// recorded as a state change): 8 WCU and 7 RCU in 15 requests, one message at a time.
const NAIVE_WCU: f64 = 5.0 + 2.0 + 1.0;
const NAIVE_RCU: f64 = 5.0 + 1.0 + 1.0;

#[tokio::main]
async fn main() -> ExitCode {
    let store = match fresh_store("budget").await {
        Ok(s) => s,
        Err(e) => panic_free_exit(&e),
    };
    let (dynamo, sink) =
        match pipeline_with_sink(Arc::clone(&store) as Arc<dyn StateStore>, "100ms").await {
            Ok(p) => p,
            Err(e) => panic_free_exit(&e),
        };
    println!(
        "Happy path through the send pipeline: one sender per message, one simulated gateway \
         answering after 100 ms, every limit level on; 3 batches per size, the last one shown"
    );
    println!(
        "size  requests/msg  WCU/msg  RCU/msg  round trips  (gets writes tx batch-puts; WCU RCU; \
         failed conds)"
    );
    let mut ok = true;
    let mut measured: Vec<(usize, Usage, f64, f64)> = Vec::new();
    for size in SIZES {
        let mut last = (Usage::default(), 0.0, 0.0);
        for batch in 0..3 {
            store.reset();
            sink.take();
            if let Err(e) = run_batch(&dynamo, &format!("dynamo{size}"), batch, size).await {
                panic_free_exit(&e);
            }
            let usage = store.usage();
            ok &= within_budget(&usage, size);
            let events = sink.take();
            let event_requests = match plan_batches(&events) {
                Ok(requests) => requests.len() as f64,
                Err(e) => panic_free_exit(&format!("events: {e}")),
            };
            last = (usage, events.len() as f64, event_requests);
        }
        let (usage, events, event_requests) = last;
        let n = size as f64;
        println!(
            "{size:>4}  {:>12.2}  {:>7.2}  {:>7.2}  {:>11}  ({} {} {} {}; {} {}; {})",
            usage.requests() as f64 / n,
            usage.wcu as f64 / n,
            usage.rcu as f64 / n,
            usage.round_trips,
            usage.batch_gets,
            usage.writes,
            usage.transactions,
            usage.batch_writes,
            usage.wcu,
            usage.rcu,
            usage.failed_conditions,
        );
        measured.push((size, usage, events, event_requests));
    }

    // The same at a growing number of senders that UTC day (in-memory state, the same
    // counting rules: 1,000 batches on the emulator would take minutes and measure nothing the
    // rules do not).
    println!(
        "\nBatches of {BATCH} messages from {BATCH} new senders each, after N distinct senders \
         that UTC day (10 batches measured, one every {SWEEP_GAP_MS} ms of simulated time; \
         in-memory state, DynamoDB's counting rules)"
    );
    println!("senders so far  WCU/msg  requests/msg  largest item");
    for so_far in SENDERS_SO_FAR {
        let (usage, largest) = match sender_sweep(so_far, 10).await {
            Ok(u) => u,
            Err(e) => panic_free_exit(&e),
        };
        let n = (10 * BATCH) as f64;
        ok &= usage.wcu as f64 / n <= MAX_WCU_PER_MESSAGE;
        println!(
            "{so_far:>14}  {:>7.2}  {:>12.2}  {largest} B",
            usage.wcu as f64 / n,
            usage.requests() as f64 / n,
        );
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
        match run_batch(&timed, "timed", batch, BATCH).await {
            Ok((_, took)) => times.push(took),
            Err(e) => panic_free_exit(&e),
        }
    }
    let memory = match pipeline(Arc::new(MemoryStore::new()), "100ms").await {
        Ok(p) => p,
        Err(e) => panic_free_exit(&e),
    };
    let mut memory_times = Vec::new();
    for batch in 0..20 {
        match run_batch(&memory, "memory", batch, BATCH).await {
            Ok((_, took)) => memory_times.push(took),
            Err(e) => panic_free_exit(&e),
        }
    }
    times.sort();
    memory_times.sort();
    println!(
        "batch of {BATCH}, DynamoDB on the local emulator: p50 {} ms, p95 {} ms, max {} ms (20 batches)",
        percentile(&times, 0.5).as_millis(),
        percentile(&times, 0.95).as_millis(),
        percentile(&times, 1.0).as_millis()
    );
    println!(
        "batch of {BATCH}, in-memory state:                p50 {} ms, p95 {} ms, max {} ms (20 batches)",
        percentile(&memory_times, 0.5).as_millis(),
        percentile(&memory_times, 0.95).as_millis(),
        percentile(&memory_times, 1.0).as_millis()
    );

    // Cost per million delivered messages.
    let batch_s = percentile(&times, 0.5).as_secs_f64();
    println!(
        "\nCost per million messages (USD, list prices in the source; Lambda time = the measured \
         batch p50 at every size, recorder {RECORDER_BATCH_S} s per 10 events assumed)"
    );
    println!("size   DynamoDB      SQS   Lambda    total");
    for (size, usage, events, event_requests) in &measured {
        let c = cost(usage, *size, *events, *event_requests, batch_s);
        println!(
            "{size:>4}  {:>9.2}  {:>7.2}  {:>7.2}  {:>7.2}",
            c.dynamodb * 1e6,
            c.sqs * 1e6,
            c.lambda * 1e6,
            c.total() * 1e6
        );
    }
    if let Some((size, usage, events, event_requests)) = measured.iter().find(|m| m.0 == BATCH) {
        let ours = cost(usage, *size, *events, *event_requests, batch_s);
        let naive_dynamodb = NAIVE_WCU * price::DYNAMODB_WRU + NAIVE_RCU * price::DYNAMODB_RRU;
        let naive = Cost {
            dynamodb: naive_dynamodb,
            ..ours
        };
        println!(
            "naive ({NAIVE_WCU} WCU + {NAIVE_RCU} RCU per message, batch of {BATCH}): DynamoDB \
             {:.2}, total {:.2}; this design: DynamoDB {:.2} ({:.1}x less), total {:.2}",
            naive.dynamodb * 1e6,
            naive.total() * 1e6,
            ours.dynamodb * 1e6,
            naive.dynamodb / ours.dynamodb,
            ours.total() * 1e6
        );
    }

    let fast = percentile(&times, 0.5).as_millis() <= MAX_BATCH_MS;
    println!(
        "\nbudget: <= {MAX_REQUESTS_PER_MESSAGE} requests and <= {MAX_WCU_PER_MESSAGE} WCU per \
         message (batch of {BATCH}), <= {MAX_ROUND_TRIPS} round trips per batch (every size): {}; \
         batch p50 <= {MAX_BATCH_MS} ms: {}",
        if ok { "met" } else { "EXCEEDED" },
        if fast { "met" } else { "EXCEEDED" },
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
