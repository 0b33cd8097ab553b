//! The health check's dependencies, built once per process through the shared wiring path
//! ([`gateway_core::startup`]).

use std::sync::Arc;

use gateway_core::config::GATEWAY_CONFIG_FILE;
use gateway_core::health::HealthChecker;
use gateway_core::live_config::{BuildFn, BuildInput};
use gateway_core::providers::factory::build_providers;
use gateway_core::startup::Startup;

use crate::Deps;

/// Namespace of the metric lines when `METRICS_NAMESPACE` is unset or empty.
pub const DEFAULT_NAMESPACE: &str = "MailGateway";

/// Builds the checker: the gateway config, one provider client per gateway (its probes
/// authenticate), the state store (the `hc#{gateway}` records) and the events queue (health
/// and config events). No database: the config audit is the recorder's. `None` when a problem
/// was recorded in `startup`.
pub async fn wire(startup: &mut Startup) -> Option<Deps> {
    let events_url = startup.required("EVENTS_QUEUE_URL");
    let metrics_namespace = startup
        .var("METRICS_NAMESPACE")
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let config = startup.config();
    let (Some(config), Some(events_url)) = (config, events_url) else {
        return None;
    };
    let resolver = startup.resolver().await;
    let store = startup.state_store().await;
    let events = startup.event_sink(events_url).await;
    let clock = startup.clock();
    let file = format!(
        "health-check ({GATEWAY_CONFIG_FILE}={})",
        startup.var(GATEWAY_CONFIG_FILE).unwrap_or_default()
    );
    // Built at start and for every config version published later; the config audit names
    // the version's publisher when it is a published one.
    let build: BuildFn<HealthChecker> = Arc::new(move |input: BuildInput<HealthChecker>| {
        let (resolver, store, events, clock) = (
            Arc::clone(&resolver),
            Arc::clone(&store),
            Arc::clone(&events),
            Arc::clone(&clock),
        );
        let changed_by = input
            .version
            .as_ref()
            .map_or_else(|| file.clone(), |v| v.describe());
        let config = input.config;
        Box::pin(async move {
            let providers = build_providers(&config, &resolver, &config.http, Arc::clone(&clock))
                .await
                .map_err(|e| e.to_string())?;
            Ok(HealthChecker::new(config, providers, store, events, clock)
                .with_changed_by(changed_by))
        })
    });
    let checker = startup
        .reloading(config, Some(metrics_namespace.clone()), build)
        .await?;
    Some(Deps {
        checker: Arc::new(checker),
        metrics_namespace,
    })
}
