//! The health-check handler on the sample schedule event `events/health-check-schedule.json`,
//! with simulated gateways built by the provider factory, in-memory state and events sink and a
//! manual clock: the answer, the records left in state, the events and the metric lines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use crate::{Deps, handle};
use gateway_core::clock::{Clock, ManualClock};
use gateway_core::config::load_config;
use gateway_core::events::{GatewayEvent, HealthStatus, MemoryEventSink};
use gateway_core::health::HealthChecker;
use gateway_core::health::{self, HealthRecord};
use gateway_core::providers::factory::build_providers;
use gateway_core::secrets::SecretResolver;
use gateway_core::state::StateStore;
use gateway_core::state::memory::MemoryStore;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};

const T0: i64 = 1_795_000_000_000;

fn sample() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/health-check-schedule.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

struct World {
    deps: Deps,
    clock: Arc<ManualClock>,
    store: Arc<MemoryStore>,
    sink: Arc<MemoryEventSink>,
}

async fn world() -> World {
    let config = json!({
        "global_defaults": {
            "health_check": {"interval": "60s", "timeout": "5s", "failure_threshold": 2, "success_threshold": 2}
        },
        "gateways": [
            {"id": "up", "type": "simulated", "display_name": "Up", "simulated": {},
             "routing": {"can_route": ["*"]}},
            {"id": "down", "type": "simulated", "display_name": "Down",
             "simulated": {"unavailable_rate": 1.0}, "routing": {"can_route": ["*"]}},
            {"id": "off", "type": "simulated", "display_name": "Off", "enabled": false,
             "simulated": {}, "routing": {"can_route": ["*"]}}
        ]
    });
    let config = load_config(Some(&config.to_string()), None, &|_| None)
        .unwrap()
        .config;
    let clock = Arc::new(ManualClock::new(T0));
    let providers = build_providers(
        &config,
        &Arc::new(SecretResolver::new(clock.clone())),
        &config.http,
        clock.clone(),
    )
    .await
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    let sink = Arc::new(MemoryEventSink::new());
    let config = Arc::new(config);
    let checker = HealthChecker::new(
        Arc::clone(&config),
        providers,
        store.clone(),
        sink.clone(),
        clock.clone(),
    );
    World {
        deps: Deps {
            checker: Arc::new(gateway_core::live_config::Reloading::fixed(
                config,
                Arc::new(checker),
                clock.clone(),
            )),
            metrics_namespace: "MailGateway".into(),
        },
        clock,
        store,
        sink,
    }
}

async fn invoke(w: &World) -> Value {
    handle(LambdaEvent::new(sample(), Context::default()), &w.deps)
        .await
        .unwrap()
}

async fn stored(w: &World, gateway: &str) -> HealthRecord {
    let item = w.store.get(&health::key(gateway)).await.unwrap();
    HealthRecord::from_item(item.as_ref()).unwrap()
}

fn health_events(events: &[GatewayEvent]) -> Vec<(String, HealthStatus)> {
    events
        .iter()
        .filter_map(|e| match e {
            GatewayEvent::Health(h) => Some((h.gateway_id.clone(), h.status)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_scheduled_run_probes_due_gateways_and_records_them() {
    let w = world().await;

    let answer = invoke(&w).await;
    assert_eq!(answer["probed"], 2, "{answer}");
    assert_eq!(answer["healthy"], 1, "{answer}");
    assert_eq!(answer["degraded"], 1, "{answer}");
    assert_eq!(answer["disabled"], 1, "{answer}");
    assert_eq!(answer["events_emitted"], true);
    assert_eq!(answer["gateways"][1]["status"], "DEGRADED");
    assert_eq!(answer["gateways"][2]["outcome"], "disabled");
    assert_eq!(stored(&w, "up").await.status, HealthStatus::Healthy);
    let down = stored(&w, "down").await;
    assert_eq!(
        (down.status, down.consecutive_failures),
        (HealthStatus::Degraded, 1)
    );
    assert_eq!(down.checked_at, T0);
    assert!(down.error.unwrap().contains("unavailable"));
    assert_eq!(stored(&w, "off").await.status, HealthStatus::Disabled);
    let events = w.sink.take();
    assert_eq!(
        health_events(&events),
        [
            ("up".to_owned(), HealthStatus::Healthy),
            ("down".to_owned(), HealthStatus::Degraded),
            ("off".to_owned(), HealthStatus::Disabled),
        ]
    );
    let GatewayEvent::Config(config) = events.last().unwrap() else {
        panic!("the last event is the config: {events:?}");
    };
    assert_eq!(config.gateways.len(), 3);
    assert_eq!(config.at, T0);

    // Half an interval later nothing is due; the disabled gateway is not written again.
    w.clock.advance(30_000);
    let answer = invoke(&w).await;
    assert_eq!(
        (answer["probed"].as_u64(), answer["skipped"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(
        answer["degraded"], 1,
        "the stored verdicts are reported: {answer}"
    );
    assert!(health_events(&w.sink.take()).is_empty());

    // One interval after the first run the failing gateway reaches its threshold of 2.
    w.clock.set(T0 + 60_000);
    let answer = invoke(&w).await;
    assert_eq!(answer["probed"], 2, "{answer}");
    assert_eq!(answer["unhealthy"], 1, "{answer}");
    let down = stored(&w, "down").await;
    assert_eq!(
        (down.status, down.consecutive_failures),
        (HealthStatus::Unhealthy, 2)
    );
    assert_eq!(down.checked_at, w.clock.now_ms());
    assert_eq!(
        health_events(&w.sink.take()),
        [
            ("up".to_owned(), HealthStatus::Healthy),
            ("down".to_owned(), HealthStatus::Unhealthy),
        ]
    );
}

#[tokio::test]
async fn the_metric_lines_say_a_check_ran_and_which_gateways_are_healthy() {
    let w = world().await;
    invoke(&w).await;
    w.clock.advance(60_000);
    let summary = w.deps.checker.value().run().await.unwrap();
    let lines: Vec<Value> = summary
        .emf_lines("MailGateway")
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        3,
        "totals, up and down; none for the disabled one"
    );
    assert_eq!(lines[0]["HealthChecks"], 1);
    assert_eq!(lines[0]["_aws"]["Timestamp"], T0 + 60_000);
    assert_eq!(
        lines[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "MailGateway"
    );
    assert_eq!(
        (&lines[1]["Gateway"], &lines[1]["GatewayHealthy"]),
        (&json!("up"), &json!(1))
    );
    assert_eq!(
        (&lines[2]["Gateway"], &lines[2]["GatewayHealthy"]),
        (&json!("down"), &json!(0))
    );
    assert_eq!(
        lines[2]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        json!([["Gateway"]])
    );
}
