//! The health check's dependencies, built once per process through the shared wiring path
//! ([`gateway_core::startup`]).

use std::sync::Arc;

use gateway_core::config::GATEWAY_CONFIG_FILE;
use gateway_core::startup::{Shared, Startup, health_checker_builder};

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
    let file = format!(
        "health-check ({GATEWAY_CONFIG_FILE}={})",
        startup.var(GATEWAY_CONFIG_FILE).unwrap_or_default()
    );
    // Built at start and for every config version published later; the config audit names
    // the version's publisher when it is a published one.
    let shared = Shared {
        resolver: startup.resolver().await,
        store: startup.state_store().await,
        events: startup.event_sink(events_url).await,
        clock: startup.clock(),
        attachments: None,
    };
    let build = health_checker_builder(shared, file);
    let checker = startup
        .reloading(config, Some(metrics_namespace.clone()), build)
        .await?;
    Some(Deps {
        checker: Arc::new(checker),
        metrics_namespace,
    })
}
