//! DynamoDB cost of the sender's happy path: prints requests and WCU per message and
//! sequential round trips per batch, for batches of 10 messages from 10 different senders
//! through one gateway with every limit level on (system, daily, hourly, burst, per sender).
//!
//! ```text
//! scripts/services up && source .local/services.env
//! cargo run -p gateway-tests --example dynamodb_budget
//! ```
//!
//! Each batch, as the sender does it:
//! 1. in flight together: the ledger claims (one conditional write per message), the limiter's
//!    read of its items, the breaker read and the suppression lookup of every recipient;
//! 2. the limiter's one transaction for the batch (after its read);
//! 3. after the sends (simulated): the breaker flush (a closed, clean breaker writes nothing)
//!    and the ledger marks as one batch put.
//!
//! The counts come from [`CountingStore`] (DynamoDB's WCU rules, computed; moto's own figures
//! are not faithful). Needs an endpoint (`AWS_ENDPOINT_URL[_DYNAMODB]`) so it never creates
//! tables in a real account.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use gateway_core::breaker::{self, Tally};
use gateway_core::clock::EpochMillis;
use gateway_core::config::{Config, load_config};
use gateway_core::ledger::{self, ClaimOutcome, ClaimRequest, SentRecord};
use gateway_core::limiter::{self, Request};
use gateway_core::state::StateStore;
use gateway_core::state::counting::{CountingStore, Usage};
use gateway_core::state::dynamodb::{DynamoStore, client_from_env, create_table};
use gateway_core::suppression;

/// Messages per batch (the SQS batch size).
pub const BATCH: usize = 10;
/// Budgets (DESIGN §5).
pub const MAX_REQUESTS_PER_MESSAGE: f64 = 2.0;
/// WCU budget per message.
pub const MAX_WCU_PER_MESSAGE: f64 = 4.0;
/// Sequential round-trip budget per batch.
pub const MAX_ROUND_TRIPS: u64 = 3;

/// 2026-11-28T10:00:00Z.
const TEN_AM: EpochMillis = 1_795_860_000_000;

/// One gateway with every limit level on, and a system daily limit.
pub fn config() -> Config {
    let doc = r#"{
      "gateways": [{
        "id": "gw",
        "type": "capture",
        "display_name": "gw",
        "capture": {"directory": "/tmp/unused"},
        "routing": {"can_route": ["*"]},
        "rate_limits": {"workspace_daily": 100000, "per_hour": 10000,
                        "burst_limit": 100, "burst_refill_per_second": 50,
                        "per_user_daily": 500}
      }]
    }"#;
    let env = |name: &str| (name == "QUEUE_DAILY_RATE_LIMIT").then(|| "1000000".to_owned());
    match load_config(Some(doc), None, &env) {
        Ok(loaded) => loaded.config,
        Err(e) => panic_free_exit(&format!("benchmark config invalid: {e:?}")),
    }
}

fn panic_free_exit(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(1)
}

/// Runs batch number `batch` (fresh message ids and senders) and returns what it cost.
pub async fn happy_path_batch<S: StateStore>(
    store: &CountingStore<S>,
    config: &Config,
    batch: usize,
) -> Result<Usage, String> {
    let gateway = config.gateway("gw").ok_or("no gateway gw")?;
    let now = TEN_AM + batch as i64 * 1_000;
    let ids: Vec<String> = (0..BATCH).map(|i| format!("msg-{batch}-{i}")).collect();
    let senders: Vec<String> = (0..BATCH)
        .map(|i| format!("sender{i}-{batch}@clinic.example.org"))
        .collect();
    let recipients: Vec<String> = (0..BATCH)
        .map(|i| format!("patient{i}-{batch}@example.net"))
        .collect();
    let owner = format!("invocation-{batch}");
    store.reset();

    // Round 1 (and 2 for the limiter's transaction).
    let claims: Vec<ClaimRequest<'_>> = ids
        .iter()
        .map(|id| ClaimRequest {
            message_id: id,
            owner: &owner,
            lease_until: now + 60_000,
        })
        .collect();
    let plan = limiter::plan(config, gateway, now);
    let requests: Vec<Request<'_>> = senders
        .iter()
        .map(|s| Request {
            sender: s,
            recipients: 1,
        })
        .collect();
    let recipient_refs: Vec<&str> = recipients.iter().map(String::as_str).collect();
    let settings = &gateway.circuit_breaker;
    let (claimed, verdicts, suppressed, permit) = tokio::join!(
        ledger::claim_many(store, &claims, now),
        limiter::acquire(store, &plan, &requests),
        suppression::lookup_many(store, &recipient_refs),
        breaker::permit_send(store, "gw", settings, now),
    );
    let verdicts = verdicts.map_err(|e| format!("limiter: {e}"))?;
    let suppressed = suppressed.map_err(|e| format!("suppression: {e}"))?;
    permit.map_err(|e| format!("breaker: {e}"))?;
    if suppressed.iter().any(Option::is_some) || verdicts.iter().any(|v| !v.is_admitted()) {
        return Err("the happy path refused a message".into());
    }

    // The sends happen here; then round 3.
    let mut sent = Vec::with_capacity(BATCH);
    for (i, outcome) in claimed.into_iter().enumerate() {
        match outcome.map_err(|e| format!("claim: {e}"))? {
            ClaimOutcome::Claimed(claim) => sent.push((
                claim,
                SentRecord {
                    gateway: "gw".into(),
                    provider_message_id: Some(format!("<{i}.{batch}@provider.example>")),
                    at: now + 100,
                },
            )),
            other => return Err(format!("claim refused: {other:?}")),
        }
    }
    let tally = Tally {
        successes: BATCH as u32,
        ..Tally::default()
    };
    let (flushed, marked) = tokio::join!(
        breaker::flush_outcomes(store, "gw", settings, &tally, now + 100),
        ledger::mark_sent_many(store, &sent, now + 100),
    );
    flushed.map_err(|e| format!("breaker flush: {e}"))?;
    marked.map_err(|e| format!("marks: {e}"))?;
    Ok(store.usage())
}

/// A counting store on a fresh table of the configured endpoint.
pub async fn fresh_store(name: &str) -> Result<CountingStore<DynamoStore>, String> {
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
    Ok(CountingStore::new(DynamoStore::new(client, table)))
}

/// Whether `usage` of one batch is within every budget.
pub fn within_budget(usage: &Usage) -> bool {
    let n = BATCH as f64;
    usage.requests() as f64 / n <= MAX_REQUESTS_PER_MESSAGE
        && usage.wcu as f64 / n <= MAX_WCU_PER_MESSAGE
        && usage.round_trips <= MAX_ROUND_TRIPS
}

#[tokio::main]
async fn main() -> ExitCode {
    let store = match fresh_store("budget").await {
        Ok(s) => s,
        Err(e) => panic_free_exit(&e),
    };
    let config = config();
    println!(
        "DynamoDB cost of the happy path: batches of {BATCH} messages, {BATCH} senders, one \
         gateway, every limit level on"
    );
    println!(
        "batch  requests/msg  WCU/msg  round trips  (gets writes tx batch-puts; WCU; failed conds)"
    );
    let mut ok = true;
    for batch in 0..3 {
        let usage = match happy_path_batch(&store, &config, batch).await {
            Ok(u) => u,
            Err(e) => panic_free_exit(&e),
        };
        let n = BATCH as f64;
        println!(
            "{batch:>5}  {:>12.2}  {:>7.2}  {:>11}  ({} {} {} {}; {}; {})",
            usage.requests() as f64 / n,
            usage.wcu as f64 / n,
            usage.round_trips,
            usage.batch_gets,
            usage.writes,
            usage.transactions,
            usage.batch_writes,
            usage.wcu,
            usage.failed_conditions,
        );
        ok &= within_budget(&usage);
    }
    println!(
        "budget: <= {MAX_REQUESTS_PER_MESSAGE} requests and <= {MAX_WCU_PER_MESSAGE} WCU per \
         message, <= {MAX_ROUND_TRIPS} round trips per batch: {}",
        if ok { "met" } else { "EXCEEDED" }
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
