//! The load model of the shared limiter state (`gateway_tests::load_model`): the real send
//! pipeline and limiter as N Lambda instances on a simulated clock, against an in-memory store
//! that meters WCU and RCU per key per simulated second. Prints one markdown row per scenario:
//! WCU and requests per message, the hottest key's WCU/s and RCU/s, the largest item, what was
//! admitted against the tightest limit, and the wall time of the simulation (information only).
//!
//! ```text
//! cargo bench -p gateway-tests --bench load_model            # every scenario
//! cargo bench -p gateway-tests --bench load_model -- fleet   # scenarios whose name contains "fleet"
//! cargo bench -p gateway-tests --bench load_model -- --warmup-ms=250 --measure-s=1 "10 senders"
//! ```
//!
//! No emulator is needed. Exits with failure when a budget is exceeded (the same budgets as
//! `tests/tests/load_model.rs`).

#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::time::Instant;

use gateway_tests::load_model::{
    BUCKET_PER_BATCH, MAX_ITEM_BYTES, MAX_KEY_RCU_PER_S, MAX_KEY_WCU_PER_S, MAX_WCU_PER_MESSAGE,
    Report, TABLE_HEADER, all_scenarios, run_all, table_row, wcu_budget,
};

/// Simulated seconds measured per scenario after the warm-up, unless `--measure-s=N`.
const MEASURE_S: i64 = 3;
/// Simulated milliseconds of warm-up of the throughput scenarios, unless `--warmup-ms=N`.
const WARMUP_MS: i64 = 2_000;

/// Rates up to this (messages a second per gateway) warm up and measure longer.
const SLOW_RATE: u64 = 100;
/// Warm-up of the slow scenarios, simulated ms.
const SLOW_WARMUP_MS: i64 = 60_000;
/// Measurement of the slow scenarios, simulated s.
const SLOW_MEASURE_S: i64 = 30;

/// The budgets `report` exceeds, in words.
fn over_budget(report: &Report) -> Vec<String> {
    let mut over = Vec::new();
    if !report.scenario.binding && report.wcu_per_message() > wcu_budget(&report.scenario) {
        over.push(format!("{:.2} WCU/msg", report.wcu_per_message()));
    }
    if let Some(p) = report
        .peaks
        .wcu
        .as_ref()
        .filter(|p| p.amount > MAX_KEY_WCU_PER_S)
    {
        over.push(format!("{} WCU/s on {}", p.amount, p.key));
    }
    if let Some(p) = report
        .peaks
        .rcu
        .as_ref()
        .filter(|p| p.amount > MAX_KEY_RCU_PER_S)
    {
        over.push(format!("{} RCU/s on {}", p.amount, p.key));
    }
    if let Some(p) = report
        .peaks
        .largest_item
        .as_ref()
        .filter(|p| p.amount > MAX_ITEM_BYTES)
    {
        over.push(format!("{} bytes in {}", p.amount, p.key));
    }
    for level in report.exceeded() {
        over.push(format!(
            "{} admitted {} of {}",
            level.level, level.admitted, level.allowance
        ));
    }
    if report.scenario.binding && report.tightest().is_some_and(|t| t.admitted != t.allowance) {
        over.push("binding limit not reached exactly".into());
    }
    over
}

/// The value of `--{name}=N`, or `default`.
fn number(args: &[String], name: &str, default: i64) -> i64 {
    let prefix = format!("--{name}=");
    args.iter()
        .find_map(|a| a.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let measure_s = number(&args, "measure-s", MEASURE_S).max(1);
    let warmup_ms = number(&args, "warmup-ms", WARMUP_MS).max(0);
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let scenarios: Vec<_> = all_scenarios(measure_s)
        .into_iter()
        .filter(|s| filter.is_empty() || filter.iter().any(|f| s.name.contains(f.as_str())))
        .map(|mut s| {
            if s.binding {
            } else if s.rate <= SLOW_RATE {
                // A batch every 5 s per instance at 50 instances: leases need a simulated
                // minute to settle, and these cost little to simulate.
                s.warmup_ms = SLOW_WARMUP_MS;
                s.measure_s = SLOW_MEASURE_S;
            } else {
                s.warmup_ms = warmup_ms;
            }
            s
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Load model of the limiter state: {} scenario(s), {measure_s} simulated s measured after \
         {warmup_ms} ms of warm-up, {threads} scenario(s) at a time",
        scenarios.len()
    );
    let started = Instant::now();
    let reports = run_all(&scenarios, threads);
    println!("\n{TABLE_HEADER}");
    for report in &reports {
        println!("{}", table_row(report));
    }
    println!(
        "\nBudgets: <= {MAX_WCU_PER_MESSAGE} WCU/msg (throughput scenarios; + {BUCKET_PER_BATCH} \
         where each instance's batches come further apart than the bucket's slack, so the exact \
         bucket is written with every batch: docs/STATE.md), <= \
         {MAX_KEY_WCU_PER_S} WCU/s and <= {MAX_KEY_RCU_PER_S} RCU/s on any key in any simulated \
         second, items <= {MAX_ITEM_BYTES} bytes, never more admitted than a limit (exactly the \
         limit where it binds)."
    );
    let mut ok = true;
    for report in &reports {
        let over = over_budget(report);
        if !over.is_empty() {
            ok = false;
            println!("- {}: {}", report.scenario.name, over.join("; "));
        }
    }
    println!(
        "\nReproduce: cargo bench -p gateway-tests --bench load_model ({:.0} s wall here)",
        started.elapsed().as_secs_f64()
    );
    if ok {
        println!("Every budget met.");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
