//! CPU of the send pipeline's decisions per message: routing, the limit decision and the
//! breaker's admission, on in-memory state, with 20 gateways and 1,000 senders (budget: 1 µs
//! per message, ARCHITECTURE §5; docs/BENCHMARKS.md has the figures).
//!
//! ```text
//! cargo bench -p gateway-core --bench decision
//! ```
//!
//! One iteration decides a batch with the functions `pipeline::run` uses between its store
//! round trips ([`gateway_core::pipeline::Decider`]), minus the I/O:
//! 1. the gateways any message may use (the router's state-independent filters) and their
//!    breaker, health and lever keys, taken from the hour's key book (made once per UTC hour);
//! 2. the router's view of those gateways: breaker view and health verdict from the items read,
//!    the limits as the process's leases last saw them;
//! 3. route every message on that view (each message is ranked once);
//! 4. per first-choice gateway, decide its messages' limits: the limiter's `Pending` state
//!    machine, its writes (each limited sender's counter, a lease a level runs short of) built
//!    and answered as the store would, by applying each to the warm item (not kept, so every
//!    iteration meets the same state);
//! 5. ask each admitted message's breaker for a permit.
//!
//! The state is warm: every sender has sent once (its counter item exists), the process holds
//! leases, each gateway has a breaker and a health record. Throughput is reported per message,
//! so the per-message cost is the time shown per element.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway_core::breaker::{self, BreakerState};
use gateway_core::clock::EpochMillis;
use gateway_core::config::{Config, load_config};
use gateway_core::events::HealthStatus;
use gateway_core::health::{self, HealthRecord};
use gateway_core::limiter::{self, LeasePolicy, Leases, Request, Step};
use gateway_core::pipeline::Decider;
use gateway_core::router::{GatewayState, RankScratch, RouteRequest, Router};
use gateway_core::state::{Item, Key, WriteOutcome, apply_op};

const GATEWAYS: usize = 20;
const SENDERS: usize = 1_000;
const DOMAINS: usize = 20;
/// 2026-11-28T12:00:00Z.
const NOW: EpochMillis = 1_795_867_200_000;

/// 20 gateways: gateway `k` takes its own clinic domain and, from the fourth on, every sender
/// as a fallback; every third excludes an internal domain; failover chains to the next two (the last ones to fewer);
/// every limit level on (system daily, workspace daily, hourly, burst, per sender, one custom
/// sender limit).
fn config() -> Config {
    let gateways: Vec<serde_json::Value> = (0..GATEWAYS)
        .map(|k| {
            let mut can_route = vec![format!("*@clinic{k}.example")];
            if k >= 3 {
                can_route.push("*".to_owned());
            }
            let exclude: Vec<String> = if k % 3 == 0 {
                vec!["*@internal.example".to_owned()]
            } else {
                Vec::new()
            };
            serde_json::json!({
                "id": format!("gw-{k:02}"),
                "type": "simulated",
                "display_name": format!("Gateway {k}"),
                "priority": k % 5 + 1,
                "weight": k + 1,
                "simulated": {"latency": "1ms", "seed": k},
                "routing": {
                    "can_route": can_route,
                    "exclude_patterns": exclude,
                    // Chains run forward only (the config refuses cycles).
                    "failover_to": ((k + 1)..GATEWAYS.min(k + 3))
                        .map(|f| format!("gw-{f:02}"))
                        .collect::<Vec<_>>(),
                },
                "rate_limits": {
                    "workspace_daily": 1_000_000,
                    "per_hour": 100_000,
                    "per_user_daily": 2_000,
                    // Room for the warm-up's 1,000 senders at one instant (a leased bucket
                    // admits at most 90 % of its capacity at once).
                    "burst_limit": 2_000,
                    "burst_refill_per_second": 100,
                    "custom_user_limits": {"bulk@clinic0.example": 50_000},
                },
                "health_check": {"enabled": true, "interval": "60s"},
            })
        })
        .collect();
    let doc = serde_json::json!({
        "gateways": gateways,
        "routing": {"strategy": "failover", "max_failover_attempts": 3},
    })
    .to_string();
    let env = |name: &str| (name == "QUEUE_DAILY_RATE_LIMIT").then(|| "10000000".to_owned());
    load_config(Some(&doc), None, &env)
        .expect("benchmark config is valid")
        .config
}

fn sender(i: usize) -> String {
    format!("user{i}@clinic{}.example", i % DOMAINS)
}

struct Fixture {
    decider: Decider,
    /// The stored items (the store's answer is looked up here, one hashed lookup per key:
    /// more than the store's answer costs the sender, which arrives aligned with the keys).
    items: std::cell::RefCell<HashMap<Key, Item, foldhash::fast::RandomState>>,
    senders: Vec<String>,
    /// The process's leases, warm: the gateway and system levels hold units taken ahead.
    leases: Leases,
    /// Time spent in the simulated store (answering reads and writes), which the measurement
    /// leaves out: that work is DynamoDB's, not the process's.
    store: Cell<Duration>,
}

/// Config, router and warm state: each sender has sent once through its first-choice gateway.
fn fixture() -> Fixture {
    let config = Arc::new(config());
    let router = Router::new(Arc::clone(&config));
    let mut items: HashMap<Key, Item, foldhash::fast::RandomState> = HashMap::default();
    for g in &config.gateways {
        items.insert(breaker::key(&g.id), BreakerState::missing().to_item());
        let record = HealthRecord {
            status: HealthStatus::Healthy,
            consecutive_failures: 0,
            consecutive_successes: 12,
            latency_ms: Some(80),
            error: None,
            checked_at: NOW - 20_000,
        };
        items.insert(health::key(&g.id), record.to_item());
    }
    let senders: Vec<String> = (0..SENDERS).map(sender).collect();
    let leases = Leases::new(LeasePolicy::default());
    for (i, s) in senders.iter().enumerate() {
        let id = format!("warm-{i}");
        let req = RouteRequest {
            message_id: &id,
            sender: s,
            pinned: None,
        };
        let first = router.route(&req, &[], NOW).candidates[0].index;
        let gateway = &config.gateways[first];
        let plan = limiter::plan(&config, gateway, NOW);
        let verdicts = decide_limits(
            &Cell::default(),
            &leases,
            &mut items,
            true,
            &plan,
            &[Request {
                sender: s,
                recipients: 1,
            }],
        );
        assert!(
            verdicts[0].is_admitted(),
            "warm-up refused {s}: {verdicts:?}"
        );
    }
    Fixture {
        decider: Decider::new(config),
        items: std::cell::RefCell::new(items),
        senders,
        leases,
        store: Cell::default(),
    }
}

/// The limit decision of `requests` on `plan` with the process's `leases`: the pure state
/// machine the sender drives, with `items` answering its writes (each applied to the stored
/// item, as the store would; that lookup and update is counted in the time). With `persist`
/// the answers are kept (the warm-up); without, every decision meets the same warm state, so
/// the measurement can run at one instant for as long as it likes.
fn decide_limits(
    store: &Cell<Duration>,
    leases: &Leases,
    items: &mut HashMap<Key, Item, foldhash::fast::RandomState>,
    persist: bool,
    plan: &limiter::LimitPlan<'_>,
    requests: &[Request<'_>],
) -> Vec<limiter::Verdict> {
    let pending = limiter::Pending::new(plan, requests);
    if let Some(key) = pending.legacy_to_read(leases) {
        leases.record_legacy(key, None);
    }
    let mut step = pending.begin(leases);
    loop {
        match step {
            Step::Done(outcome) => return outcome.verdicts,
            Step::Write(mut p) => {
                let writes = p.writes();
                let store_start = Instant::now();
                let outcomes = writes
                    .into_iter()
                    .map(|w| {
                        let before = items.get(&w.key);
                        if !w.condition.holds(before) {
                            return Ok(WriteOutcome::ConditionFailed(before.cloned()));
                        }
                        let after = apply_op(before, &w.op).expect("applies");
                        if persist && let Some(item) = &after {
                            items.insert(w.key, item.clone());
                        }
                        Ok(WriteOutcome::Applied(after))
                    })
                    .collect();
                store.set(store.get() + store_start.elapsed());
                step = p.answer(leases, outcomes).expect("no store error");
            }
        }
    }
}

/// Decides one batch (module docs); returns the number of admitted messages.
fn decide_batch(f: &Fixture, ids: &[String], senders: &[&str]) -> usize {
    let d = &f.decider;
    let config = d.config();
    let requests: Vec<RouteRequest<'_>> = ids
        .iter()
        .zip(senders)
        .map(|(id, s)| RouteRequest {
            message_id: id,
            sender: s,
            pinned: None,
        })
        .collect();

    // 1. Which items to read.
    let book = d.keys(NOW);
    let (reachable, fixed) = d.reach(requests.iter().copied());
    let list = d.keys_to_read(&book, &reachable);
    // (The store's answer: the items of the keys, in their order.)
    let store_start = Instant::now();
    let stored = f.items.borrow();
    let answer: Vec<Option<&Item>> = list.keys().iter().map(|k| stored.get(k)).collect();
    f.store.set(f.store.get() + store_start.elapsed());
    let read = list.read(&answer);

    // 2. The router's view of the gateways; 3. route every message on it.
    let states = d.view(&book, &read, &f.leases, NOW);
    let mut by_gateway: BTreeMap<usize, Vec<Request<'_>>> = BTreeMap::new();
    let mut scratch = RankScratch::default();
    let mut ranked = Vec::new();
    for ((r, s), fixed) in requests.iter().zip(senders).zip(fixed) {
        d.router()
            .rank_static(r, fixed, &states, NOW, &mut scratch, &mut ranked);
        // The pipeline keeps the ranking with the message (candidates and reserve).
        black_box(ranked.clone());
        if let Some(&first) = ranked.first() {
            by_gateway.entry(first).or_default().push(Request {
                sender: s,
                recipients: 1,
            });
        }
    }

    // 4. The limits per first-choice gateway; 5. the breaker's permit per admitted message.
    // Each gateway's breaker decoded once (as the pipeline does); its item is copied out of
    // the simulated store first (the bench's own need, so not in the time).
    let store_start = Instant::now();
    let breakers: Vec<Option<Item>> = by_gateway
        .keys()
        .map(|&g| read.breaker(g).cloned())
        .collect();
    f.store.set(f.store.get() + store_start.elapsed());
    let forced_closed: Vec<bool> = by_gateway
        .keys()
        .map(|&g| read.gateway_levers(g).forced_closed(NOW))
        .collect();
    drop(stored);
    let mut admitted = 0;
    for (((&g, requests), breaker_item), forced_closed) in
        by_gateway.iter().zip(&breakers).zip(forced_closed)
    {
        let gateway = &config.gateways[g];
        let (state, problem) = BreakerState::from_item(breaker_item.as_ref());
        assert!(!forced_closed);
        let permit = breaker::decided_locally(&state, problem, &gateway.circuit_breaker, NOW)
            .expect("closed");
        let plan = d.limit_plan(&book, g, NOW);
        let verdicts = decide_limits(
            &f.store,
            &f.leases,
            &mut f.items.borrow_mut(),
            false,
            &plan,
            requests,
        );
        for verdict in &verdicts {
            if verdict.is_admitted() {
                black_box(permit.clone());
                admitted += 1;
            }
        }
    }
    admitted
}

/// Runs `once` `iters` times; the time taken less the time spent in the simulated store.
fn timed_without_store(f: &Fixture, iters: u64, mut once: impl FnMut()) -> Duration {
    f.store.set(Duration::ZERO);
    let start = Instant::now();
    for _ in 0..iters {
        once();
    }
    start.elapsed().saturating_sub(f.store.get())
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    let mut group = c.benchmark_group("decision");
    for batch in [1usize, 10] {
        // Batches cycle through the senders so that every gateway and counter is exercised.
        let batches: Vec<(Vec<String>, Vec<&str>)> = (0..SENDERS / batch)
            .map(|b| {
                let ids = (0..batch).map(|i| format!("msg-{b}-{i}")).collect();
                let senders = (0..batch)
                    .map(|i| f.senders[(b * batch + i * 37) % SENDERS].as_str())
                    .collect();
                (ids, senders)
            })
            .collect();
        assert!(
            batches
                .iter()
                .all(|(ids, s)| decide_batch(&f, ids, s) == batch),
            "every message is admitted on the warm state"
        );
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("route+limit+breaker, 20 gateways, 1000 senders", batch),
            &batches,
            |b, batches| {
                let mut i = 0;
                b.iter_custom(|iters| {
                    timed_without_store(&f, iters, || {
                        let (ids, senders) = &batches[i % batches.len()];
                        i += 1;
                        black_box(decide_batch(&f, ids, senders));
                    })
                });
            },
        );
    }
    // The per-message part alone: route on a view built once, decide the message's limits on
    // its first choice, ask that breaker for a permit. The batch cases above add what a batch
    // does once (its keys, its read, the view of every gateway it may use).
    {
        let d = &f.decider;
        let book = d.keys(NOW);
        let all = vec![true; GATEWAYS];
        let list = d.keys_to_read(&book, &all);
        let stored = f.items.borrow().clone();
        let answer: Vec<Option<&Item>> = list.keys().iter().map(|k| stored.get(k)).collect();
        let read = list.read(&answer);
        let states = d.view(&book, &read, &f.leases, NOW);
        let ids: Vec<String> = (0..SENDERS).map(|i| format!("one-{i}")).collect();
        group.throughput(Throughput::Elements(1));
        group.bench_function("per message on a built view: route+limit+breaker", |b| {
            let mut i = 0;
            let mut scratch = RankScratch::default();
            let mut ranked = Vec::new();
            b.iter_custom(|iters| {
                timed_without_store(&f, iters, || {
                    let sender = f.senders[i % SENDERS].as_str();
                    let req = RouteRequest {
                        message_id: &ids[i % SENDERS],
                        sender,
                        pinned: None,
                    };
                    i += 1;
                    d.router()
                        .rank(&req, &states, NOW, &mut scratch, &mut ranked);
                    black_box(ranked.clone());
                    let g = ranked[0];
                    let limits = d.limit_plan(&book, g, NOW);
                    let verdicts = decide_limits(
                        &f.store,
                        &f.leases,
                        &mut f.items.borrow_mut(),
                        false,
                        &limits,
                        &[Request {
                            sender,
                            recipients: 1,
                        }],
                    );
                    let (state, _) = BreakerState::from_item(read.breaker(g));
                    let gateway = &d.config().gateways[g];
                    black_box((
                        verdicts[0].is_admitted(),
                        breaker::permit(&state, &gateway.circuit_breaker, NOW),
                    ));
                })
            });
        });
    }
    // Routing alone, for comparison: the ranking the pipeline uses, and the full plan with
    // every reason (what `explain` and a message without a candidate get).
    let ids: Vec<String> = (0..SENDERS).map(|i| format!("route-{i}")).collect();
    group.throughput(Throughput::Elements(1));
    let states = vec![GatewayState::default(); GATEWAYS];
    let request = |i: usize| RouteRequest {
        message_id: &ids[i % SENDERS],
        sender: &f.senders[i % SENDERS],
        pinned: None,
    };
    group.bench_function("rank only, 20 gateways", |b| {
        let mut i = 0;
        let mut scratch = RankScratch::default();
        let mut ranked = Vec::new();
        b.iter(|| {
            i += 1;
            let router = f.decider.router();
            router.rank(&request(i), &states, NOW, &mut scratch, &mut ranked);
            black_box(ranked.len())
        });
    });
    group.bench_function("route only (full plan with reasons), 20 gateways", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            let plan = f.decider.router().route(&request(i), &states, NOW);
            black_box(plan.candidates.len())
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
