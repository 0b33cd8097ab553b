//! A load model of the shared limiter state: the real send pipeline and limiter, run as N
//! Lambda instances on a simulated clock against one in-memory store that meters every key per
//! simulated second ([`CountingStore::with_clock`]).
//!
//! # What is modelled
//! - **Instances.** Each instance is its own [`Pipeline`], built as the sender function builds
//!   one (`Pipeline::new` with providers from `build_providers`, default settings); whatever an
//!   instance keeps in memory stays its own. All instances share one
//!   `CountingStore<MemoryStore>` and one [`ManualClock`].
//! - **Traffic.** Time advances in ticks of [`TICK_MS`]. At each tick the batches due for each
//!   gateway (its rate divided by the batch size, spread evenly over the ticks) are dealt
//!   round-robin to the instances. An instance runs its batches one after the other, as a Lambda
//!   instance handles one invocation at a time; the instances run concurrently. Every request
//!   to the store first yields once ([`InFlight`]), so the requests of the instances working in
//!   the same tick are in flight together: they read the same items and race for the same
//!   conditional writes, as instances do against DynamoDB. A batch is [`Scenario::batch_size`]
//!   messages from as many distinct senders drawn from the gateway's pool (a fixed xorshift
//!   sequence; a sender is a number until it is formatted into an address), one recipient each,
//!   every message id unique. The providers are simulated gateways answering at once.
//! - **No redelivery.** A deferred message is counted, not offered again: the figures are those
//!   of the offered load.
//! - **Measurement.** The first [`Scenario::warmup_ms`] simulated milliseconds are discarded
//!   (the store's counts are reset), then the next [`Scenario::measure_s`] whole seconds are
//!   measured: WCU and requests per message processed, and per key its busiest simulated second
//!   and largest item. The clock starts at [`START_MS`] plus what makes the warm-up end on a
//!   second boundary, so every measured second is a whole one. What was admitted is counted
//!   over the whole run and checked against every configured limit.
//!
//! The wall time of a run is reported for information; the model's figures are counts, which do
//! not depend on the machine.

#![allow(
    clippy::panic,
    reason = "a model whose config does not load or whose providers cannot be built is a broken \
              harness and should fail loudly"
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gateway_core::clock::{Clock, EpochMillis, ManualClock};
use gateway_core::config::{Config, load_config};
use gateway_core::events::{EventSink, GatewayEvent, Outcome, SinkError};
use gateway_core::pipeline::{Batch, BatchReport, Pipeline, PipelineSettings};
use gateway_core::providers::factory::build_providers;
use gateway_core::queue::Received;
use gateway_core::secrets::SecretResolver;
use gateway_core::state::counting::{CountingStore, KeyLoad, KeyPeaks, Usage};
use gateway_core::state::memory::MemoryStore;
use gateway_core::state::{
    Item, Key, StateStore, StoreError, TransactOutcome, Write, WriteOutcome,
};

/// Simulated milliseconds per tick.
pub const TICK_MS: i64 = 10;
/// The simulated day and hour: 2026-12-04T10:00:00Z (no hour or day ends in a run). A run
/// starts within the second after it ([`Scenario::start_ms`]).
pub const START_MS: EpochMillis = 1_796_378_400_000;

/// Budget: WCU per message (ledger claim + mark + the limiter's share).
pub const MAX_WCU_PER_MESSAGE: f64 = 3.1;
/// Budget: WCU written to any one key within one second (DynamoDB's partition limit).
pub const MAX_KEY_WCU_PER_S: u64 = 1_000;
/// Budget: RCU read from any one key within one second (DynamoDB's partition limit).
pub const MAX_KEY_RCU_PER_S: u64 = 3_000;
/// Budget: bytes of any one item (4 KB: one read unit; DynamoDB refuses items over 400 KB).
pub const MAX_ITEM_BYTES: u64 = 4_096;

/// The limits of every gateway of a scenario, and the system's. `None` is unlimited.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// `system_limits.daily`, all gateways together.
    pub system_daily: Option<u64>,
    /// `rate_limits.workspace_daily` of each gateway.
    pub workspace_daily: Option<u64>,
    /// `rate_limits.per_hour`.
    pub per_hour: Option<u64>,
    /// `rate_limits.burst_limit` (bucket capacity).
    pub burst_limit: Option<u64>,
    /// `rate_limits.burst_refill_per_second`.
    pub burst_refill_per_second: f64,
    /// `rate_limits.per_user_daily`.
    pub per_user_daily: Option<u64>,
}

impl Limits {
    /// Every level on, sized not to bind at `rate` messages per second per gateway over
    /// `gateways` gateways: a burst of 2 s of the rate refilled at 1.5 times the rate, and day
    /// and hour limits no run of minutes can reach.
    pub fn not_binding(rate: u64, gateways: u64) -> Self {
        let day = rate * 86_400 * 2;
        Self {
            system_daily: Some(day * gateways),
            workspace_daily: Some(day),
            per_hour: Some(rate * 3_600 * 2),
            burst_limit: Some(rate * 2),
            burst_refill_per_second: rate as f64 * 1.5,
            per_user_daily: Some(day),
        }
    }
}

/// One run of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Name, unique in a set (the bench's filter matches it).
    pub name: String,
    /// Gateways, each with its own senders (`@g{n}.example.org`, routed only to it).
    pub gateways: usize,
    /// Distinct senders per gateway.
    pub senders: u64,
    /// Messages offered per simulated second per gateway.
    pub rate: u64,
    /// Lambda instances (pipelines), shared by every gateway's traffic.
    pub instances: usize,
    /// Messages per batch (each from a distinct sender).
    pub batch_size: usize,
    /// Simulated milliseconds run before measuring.
    pub warmup_ms: i64,
    /// Simulated seconds measured.
    pub measure_s: i64,
    /// The limits.
    pub limits: Limits,
    /// Whether a limit is meant to bind, so that exactly its allowance must be admitted.
    pub binding: bool,
}

impl Scenario {
    /// A throughput scenario: one gateway, every level on and not binding, batches of 10,
    /// 2 s of warm-up and `measure_s` measured.
    pub fn throughput(senders: u64, rate: u64, instances: usize, measure_s: i64) -> Self {
        Self {
            name: format!(
                "{} senders, {} msg/s, {instances} inst",
                group(senders),
                group(rate)
            ),
            gateways: 1,
            senders,
            rate,
            instances,
            batch_size: 10,
            warmup_ms: 2_000,
            measure_s,
            limits: Limits::not_binding(rate, 1),
            binding: false,
        }
    }

    /// The fleet: 5 gateways at 10,000 msg/s each (50,000 in all), 100,000 senders each, 50
    /// instances per gateway, the system limit on.
    pub fn fleet(warmup_ms: i64, measure_s: i64) -> Self {
        let (gateways, rate) = (5, 10_000);
        Self {
            name: "fleet: 5 gw × 10,000 msg/s, 250 inst".into(),
            gateways,
            senders: 100_000,
            rate,
            instances: 50 * gateways,
            batch_size: 10,
            warmup_ms,
            measure_s,
            limits: Limits::not_binding(rate, gateways as u64),
            binding: false,
        }
    }

    /// Binding: a per-hour limit of 2,000 under 10,000 msg/s over 50 instances for 1 s.
    pub fn hourly_binding() -> Self {
        let rate = 10_000;
        Self {
            name: "binding: per_hour 2,000 at 10,000 msg/s, 50 inst".into(),
            gateways: 1,
            senders: 1_000,
            rate,
            instances: 50,
            batch_size: 10,
            warmup_ms: 0,
            measure_s: 1,
            limits: Limits {
                per_hour: Some(2_000),
                ..Limits::not_binding(rate, 1)
            },
            binding: true,
        }
    }

    /// Binding: a daily limit of 5 over 3 instances, one message per batch, 20 offered.
    pub fn daily_binding() -> Self {
        let rate = 10;
        Self {
            name: "binding: daily 5, 1 msg/batch, 3 inst".into(),
            gateways: 1,
            senders: 10,
            rate,
            instances: 3,
            batch_size: 1,
            warmup_ms: 0,
            measure_s: 2,
            limits: Limits {
                workspace_daily: Some(5),
                ..Limits::not_binding(rate, 1)
            },
            binding: true,
        }
    }

    /// When the run starts: [`START_MS`] plus what makes the warm-up end on a whole second.
    pub fn start_ms(&self) -> EpochMillis {
        START_MS + (1_000 - self.warmup_ms.rem_euclid(1_000)) % 1_000
    }

    fn warmup_ticks(&self) -> i64 {
        self.warmup_ms.div_euclid(TICK_MS)
    }

    fn ticks(&self) -> i64 {
        self.warmup_ticks() + self.measure_s * 1_000 / TICK_MS
    }

    /// Batches of one gateway due by the end of tick `tick` (cumulative).
    fn batches_by(&self, tick: i64) -> u64 {
        let messages = u128::from(self.rate) * (tick as u128) * (TICK_MS as u128) / 1_000;
        u64::try_from(messages / self.batch_size as u128).unwrap_or(u64::MAX)
    }

    /// Messages the scenario offers in all.
    pub fn offered(&self) -> u64 {
        self.batches_by(self.ticks()) * self.batch_size as u64 * self.gateways as u64
    }
}

/// `n` with thousands separators (`100,000`).
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The burst bucket's own write per batch: 1 WCU for 10 messages.
pub const BUCKET_PER_BATCH: f64 = 0.1;

/// Whether each instance's batches come further apart than the gateway bucket's slack σ (a
/// tenth of its span, docs/STATE.md "Limiter: quota leases"): then a leased token would expire
/// before the instance's next batch, so the bucket is written with every batch.
pub fn bucket_written_per_batch(s: &Scenario) -> bool {
    let capacity = s.limits.burst_limit.unwrap_or(0) as f64;
    let refill = s.limits.burst_refill_per_second;
    let slack_s = if capacity < 100.0 {
        0.0
    } else {
        (capacity / refill / 10.0).min(1.0)
    };
    let batches_per_s_per_instance = s.rate as f64 / s.batch_size as f64 / s.instances as f64;
    1.0 / batches_per_s_per_instance > slack_s
}

/// The WCU-per-message budget of a throughput scenario: [`MAX_WCU_PER_MESSAGE`], plus the
/// bucket's write per batch where [`bucket_written_per_batch`].
pub fn wcu_budget(s: &Scenario) -> f64 {
    if bucket_written_per_batch(s) {
        MAX_WCU_PER_MESSAGE + BUCKET_PER_BATCH
    } else {
        MAX_WCU_PER_MESSAGE
    }
}

/// The 12 throughput scenarios (10 / 1,000 / 100,000 senders × 100 / 10,000 msg/s × 1 / 50
/// instances), 1,000,000 senders at 10,000 msg/s over 50 instances, the fleet and both binding
/// scenarios, with `measure_s` simulated seconds measured.
pub fn all_scenarios(measure_s: i64) -> Vec<Scenario> {
    let mut set = Vec::new();
    for senders in [10, 1_000, 100_000] {
        for rate in [100, 10_000] {
            for instances in [1, 50] {
                set.push(Scenario::throughput(senders, rate, instances, measure_s));
            }
        }
    }
    set.push(Scenario::throughput(1_000_000, 10_000, 50, measure_s));
    set.push(Scenario::fleet(2_000, measure_s));
    set.push(Scenario::hourly_binding());
    set.push(Scenario::daily_binding());
    set
}

/// One configured limit and what the run admitted against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelCheck {
    /// The level (`system daily`, `g0 hourly`, `g0 burst`, `g0 per sender`, …).
    pub level: String,
    /// Recipients admitted against it over the whole run (for the per-sender level: by the
    /// busiest sender).
    pub admitted: u64,
    /// The most it may admit over the run (for the bucket: capacity plus the refill over the
    /// run's span).
    pub allowance: u64,
}

impl LevelCheck {
    /// Allowance left.
    pub fn headroom(&self) -> i128 {
        i128::from(self.allowance) - i128::from(self.admitted)
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario run.
    pub scenario: Scenario,
    /// Messages offered over the whole run.
    pub offered: u64,
    /// Messages sent (admitted by every limit) over the whole run.
    pub admitted: u64,
    /// Messages deferred over the whole run.
    pub deferred: u64,
    /// Messages failed or rejected over the whole run.
    pub failed: u64,
    /// Messages processed in the measured seconds.
    pub measured: u64,
    /// Store usage in the measured seconds.
    pub usage: Usage,
    /// The hottest keys of the measured seconds.
    pub peaks: KeyPeaks,
    /// Load of the measured seconds by key class ([`key_class`]).
    pub classes: BTreeMap<String, KeyLoad>,
    /// Every configured limit against what was admitted.
    pub levels: Vec<LevelCheck>,
    /// Batches each instance ran, over the whole run.
    pub batches_per_instance: Vec<u64>,
    /// Wall time of the run (information only).
    pub wall: Duration,
}

impl Report {
    /// WCU per message processed in the measured seconds.
    pub fn wcu_per_message(&self) -> f64 {
        per(self.usage.wcu, self.measured)
    }

    /// Store requests per message processed in the measured seconds.
    pub fn requests_per_message(&self) -> f64 {
        per(self.usage.requests(), self.measured)
    }

    /// WCU per message written to keys of `class` ([`key_class`]).
    pub fn class_wcu_per_message(&self, class: &str) -> f64 {
        per(self.classes.get(class).map_or(0, |l| l.wcu), self.measured)
    }

    /// The level with the least allowance left (`None` with no limit at all).
    pub fn tightest(&self) -> Option<&LevelCheck> {
        self.levels.iter().min_by_key(|l| l.headroom())
    }

    /// The levels that admitted more than their allowance.
    pub fn exceeded(&self) -> Vec<&LevelCheck> {
        self.levels.iter().filter(|l| l.headroom() < 0).collect()
    }
}

fn per(n: u64, messages: u64) -> f64 {
    if messages == 0 {
        0.0
    } else {
        n as f64 / messages as f64
    }
}

/// The class of a store key: its first segment (`msg` for the ledger, `sup` for suppressions,
/// `brk`, `hc`, …), and for the limiter (`lim`) its first two (`lim#sys`, `lim#gw`).
pub fn key_class(key: &str) -> String {
    let mut parts = key.splitn(3, '#');
    match (parts.next(), parts.next()) {
        (Some("lim"), Some(level)) => format!("lim#{level}"),
        (Some(first), _) => first.to_owned(),
        (None, _) => String::new(),
    }
}

/// The store as each instance sees it: every request waits one turn of the scheduler before it
/// reaches the shared store, so the requests of concurrently running instances are in flight
/// together (as over a network) instead of one instance's batch running to its end before the
/// next one starts.
#[derive(Debug)]
pub struct InFlight<S>(pub Arc<S>);

#[async_trait]
impl<S: StateStore> StateStore for InFlight<S> {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        tokio::task::yield_now().await;
        self.0.get_many(keys).await
    }

    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        tokio::task::yield_now().await;
        self.0.write(write).await
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<TransactOutcome, StoreError> {
        tokio::task::yield_now().await;
        self.0.transact(writes).await
    }

    async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
        tokio::task::yield_now().await;
        self.0.put_many(items).await
    }
}

/// An event sink that counts and drops (the model measures state, not events).
#[derive(Debug, Default)]
struct DroppingSink(AtomicU64);

#[async_trait]
impl EventSink for DroppingSink {
    async fn emit(&self, events: &[GatewayEvent]) -> Result<(), SinkError> {
        self.0.fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// xorshift64*: a fixed sequence of draws, no crate needed.
#[derive(Debug, Clone)]
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A draw in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn gateway_id(g: usize) -> String {
    format!("g{g}")
}

fn sender_address(g: usize, sender: u64) -> String {
    format!("s{sender}@g{g}.example.org")
}

/// The config of `scenario`: its gateways, simulated and answering at once, each routing only
/// its own senders' domain, with the scenario's limits.
pub fn config(scenario: &Scenario) -> Config {
    let l = &scenario.limits;
    let gateways: Vec<serde_json::Value> = (0..scenario.gateways)
        .map(|g| {
            serde_json::json!({
                "id": gateway_id(g),
                "type": "simulated",
                "display_name": gateway_id(g),
                "simulated": {"latency": "0ms", "seed": 1},
                "routing": {"can_route": [format!("@g{g}.example.org")]},
                "rate_limits": {
                    "workspace_daily": l.workspace_daily,
                    "per_hour": l.per_hour,
                    "burst_limit": l.burst_limit,
                    "burst_refill_per_second": l.burst_refill_per_second,
                    "per_user_daily": l.per_user_daily,
                },
            })
        })
        .collect();
    let doc = serde_json::json!({
        "gateways": gateways,
        "system_limits": {"daily": l.system_daily},
    });
    match load_config(Some(&doc.to_string()), None, &|_| None) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("the model's config does not load: {e:?}"),
    }
}

/// One instance: a pipeline of its own over the shared store and clock.
async fn instance(
    config: &Arc<Config>,
    store: Arc<dyn StateStore>,
    sink: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
) -> Pipeline {
    let resolver = Arc::new(SecretResolver::new(Arc::clone(&clock)));
    let providers = build_providers(config, &resolver, &config.http, Arc::clone(&clock))
        .await
        .unwrap_or_else(|e| panic!("providers: {e}"));
    Pipeline::new(
        Arc::clone(config),
        providers,
        store,
        sink,
        clock,
        PipelineSettings::default(),
    )
}

/// A batch as offered: its records and, per record, the (gateway, sender) it came from.
struct OfferedBatch {
    records: Vec<Received>,
    senders: Vec<(usize, u64)>,
    owner: String,
}

/// Runs `scenario` to its end on the current Tokio runtime.
pub async fn run(scenario: &Scenario) -> Report {
    assert!(
        scenario.senders >= scenario.batch_size as u64,
        "{}: a batch needs {} distinct senders",
        scenario.name,
        scenario.batch_size
    );
    let started = Instant::now();
    let start = scenario.start_ms();
    let clock = Arc::new(ManualClock::new(start));
    let store = Arc::new(CountingStore::with_clock(
        MemoryStore::new(),
        Arc::clone(&clock) as Arc<dyn Clock>,
    ));
    let in_flight: Arc<dyn StateStore> = Arc::new(InFlight(Arc::clone(&store)));
    let sink: Arc<dyn EventSink> = Arc::new(DroppingSink::default());
    let config = Arc::new(config(scenario));
    let mut instances = Vec::with_capacity(scenario.instances);
    for _ in 0..scenario.instances {
        instances.push(
            instance(
                &config,
                Arc::clone(&in_flight),
                Arc::clone(&sink),
                Arc::clone(&clock) as Arc<dyn Clock>,
            )
            .await,
        );
    }

    let mut draws = Draws(0x9E37_79B9_7F4A_7C15);
    let mut next_message = 0_u64;
    let mut next_instance = 0_usize;
    let mut batches_per_instance = vec![0_u64; scenario.instances];
    let mut by_sender: HashMap<(usize, u64), u64> = HashMap::new();
    let mut admitted_per_gateway = vec![0_u64; scenario.gateways];
    let (mut offered, mut deferred, mut failed, mut measured) = (0, 0, 0, 0);
    let warmup_ticks = scenario.warmup_ticks();

    for tick in 0..scenario.ticks() {
        clock.set(start + tick * TICK_MS);
        if tick == warmup_ticks {
            store.reset();
        }
        let mut work: Vec<Vec<OfferedBatch>> =
            (0..scenario.instances).map(|_| Vec::new()).collect();
        let due = scenario.batches_by(tick + 1) - scenario.batches_by(tick);
        for g in 0..scenario.gateways {
            for _ in 0..due {
                let batch = offer(scenario, g, &mut draws, &mut next_message);
                work[next_instance].push(batch);
                batches_per_instance[next_instance] += 1;
                next_instance = (next_instance + 1) % scenario.instances;
            }
        }
        let deadline = start + tick * TICK_MS + 60_000;
        let runs = instances
            .iter()
            .zip(&work)
            .map(|(pipeline, batches)| async move {
                let mut reports = Vec::with_capacity(batches.len());
                for batch in batches {
                    let report = pipeline
                        .process(Batch {
                            records: &batch.records,
                            owner: &batch.owner,
                            deadline,
                        })
                        .await;
                    reports.push(report);
                }
                reports
            });
        let reports: Vec<Vec<BatchReport>> = futures::future::join_all(runs).await;
        for (batches, reports) in work.iter().zip(reports) {
            for (batch, report) in batches.iter().zip(reports) {
                offered += batch.records.len() as u64;
                if tick >= warmup_ticks {
                    measured += batch.records.len() as u64;
                }
                for (item, &(g, sender)) in report.items.iter().zip(&batch.senders) {
                    match item.outcome {
                        Outcome::Sent => {
                            admitted_per_gateway[g] += 1;
                            *by_sender.entry((g, sender)).or_default() += 1;
                        }
                        Outcome::Deferred => deferred += 1,
                        Outcome::Failed | Outcome::Rejected => failed += 1,
                    }
                }
            }
        }
    }

    let admitted = admitted_per_gateway.iter().sum();
    let levels = level_checks(scenario, &admitted_per_gateway, &by_sender);
    Report {
        scenario: scenario.clone(),
        offered,
        admitted,
        deferred,
        failed,
        measured,
        usage: store.usage(),
        peaks: store.hottest(),
        classes: store.loads_by(key_class),
        levels,
        batches_per_instance,
        wall: started.elapsed(),
    }
}

/// Draws one batch of gateway `g`: distinct senders, one fresh recipient and message id each.
fn offer(scenario: &Scenario, g: usize, draws: &mut Draws, next_message: &mut u64) -> OfferedBatch {
    let mut senders: Vec<(usize, u64)> = Vec::with_capacity(scenario.batch_size);
    while senders.len() < scenario.batch_size {
        let s = draws.below(scenario.senders);
        if !senders.iter().any(|&(_, t)| t == s) {
            senders.push((g, s));
        }
    }
    let first = *next_message;
    let records = senders
        .iter()
        .map(|&(g, s)| {
            let n = *next_message;
            *next_message += 1;
            Received {
                message_id: format!("sqs-{n}"),
                receipt_handle: format!("rh-{n}"),
                // Formatted directly: every part is plain ASCII that needs no escaping.
                body: format!(
                    r#"{{"id":"m-{n}","from":"{}","to":["r{n}@example.net"],"subject":"Your appointment","text":"See you on Monday."}}"#,
                    sender_address(g, s)
                ),
                receive_count: 1,
                sent_at: 0,
            }
        })
        .collect();
    OfferedBatch {
        records,
        senders,
        owner: format!("invocation-{first}"),
    }
}

/// Every configured limit of `scenario` against what was admitted.
fn level_checks(
    scenario: &Scenario,
    per_gateway: &[u64],
    by_sender: &HashMap<(usize, u64), u64>,
) -> Vec<LevelCheck> {
    let l = &scenario.limits;
    let mut checks = Vec::new();
    if let Some(limit) = l.system_daily {
        checks.push(LevelCheck {
            level: "system daily".into(),
            admitted: per_gateway.iter().sum(),
            allowance: limit,
        });
    }
    // Batches run at the ticks 0 ..= ticks - 1: the bucket refills over that span.
    let span_ms = u64::try_from((scenario.ticks() - 1).max(0) * TICK_MS).unwrap_or(0);
    let refill = (span_ms as f64 * l.burst_refill_per_second / 1_000.0).floor() as u64;
    for (g, &admitted) in per_gateway.iter().enumerate() {
        let id = gateway_id(g);
        let levels = [
            ("daily", l.workspace_daily),
            ("hourly", l.per_hour),
            ("burst", l.burst_limit.map(|c| c + refill)),
        ];
        for (name, allowance) in levels {
            if let Some(allowance) = allowance {
                checks.push(LevelCheck {
                    level: format!("{id} {name}"),
                    admitted,
                    allowance,
                });
            }
        }
        if let Some(limit) = l.per_user_daily {
            let busiest = by_sender
                .iter()
                .filter(|((sg, _), _)| *sg == g)
                .map(|(_, &n)| n)
                .max()
                .unwrap_or(0);
            checks.push(LevelCheck {
                level: format!("{id} per sender"),
                admitted: busiest,
                allowance: limit,
            });
        }
    }
    checks
}

/// Runs `scenarios` on `threads` OS threads (each scenario on a single-threaded runtime of its
/// own); reports in the order given.
pub fn run_all(scenarios: &[Scenario], threads: usize) -> Vec<Report> {
    let next = AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<Report>>> =
        std::sync::Mutex::new(vec![None; scenarios.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap_or_else(|e| panic!("runtime: {e}"));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(scenario) = scenarios.get(i) else {
                        break;
                    };
                    let report = runtime.block_on(run(scenario));
                    let mut results = results
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(slot) = results.get_mut(i) {
                        *slot = Some(report);
                    }
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .into_iter()
        .map(|r| r.unwrap_or_else(|| panic!("a scenario did not finish")))
        .collect()
}

/// The header of [`table_row`]'s table (markdown). "Lost conditions" are the measured
/// conditional writes and transactions refused by their condition (each billed).
pub const TABLE_HEADER: &str = "| scenario | msgs measured | WCU/msg (ledger + limiter + other) | requests/msg | lost conditions | hottest key WCU/s | hottest key RCU/s | largest item (bytes) | admitted / allowance (tightest level) | offered | deferred | wall s |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

/// One markdown row of `report`.
pub fn table_row(report: &Report) -> String {
    let peak = |p: &Option<gateway_core::state::counting::Peak>| {
        p.as_ref().map_or("—".to_owned(), |p| {
            format!("{} `{}`", group(p.amount), p.key)
        })
    };
    let class_wcu = |limiter: bool| -> u64 {
        report
            .classes
            .iter()
            .filter(|(c, _)| c.starts_with("lim") == limiter)
            .map(|(_, l)| l.wcu)
            .sum()
    };
    let ledger = report.classes.get("msg").map_or(0, |l| l.wcu);
    let limiter = class_wcu(true);
    let other = class_wcu(false) - ledger;
    let ledger = per(ledger, report.measured);
    let limiter = per(limiter, report.measured);
    let other = per(other, report.measured);
    let tightest = report.tightest().map_or("—".to_owned(), |t| {
        format!(
            "{} / {} ({})",
            group(t.admitted),
            group(t.allowance),
            t.level
        )
    });
    format!(
        "| {} | {} | {:.2} ({:.2} + {:.2} + {:.2}) | {:.2} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
        report.scenario.name,
        group(report.measured),
        report.wcu_per_message(),
        ledger,
        limiter,
        other,
        report.requests_per_message(),
        group(report.usage.failed_conditions + report.usage.cancelled_transactions),
        peak(&report.peaks.wcu),
        peak(&report.peaks.rcu),
        peak(&report.peaks.largest_item),
        tightest,
        group(report.offered),
        group(report.deferred),
        report.wall.as_secs_f64(),
    )
}
