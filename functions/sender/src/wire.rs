//! The sender's dependencies, built once per process through the shared wiring path
//! ([`gateway_core::startup`]).

use std::sync::Arc;

use gateway_core::live_config::{BuildFn, BuildInput};
use gateway_core::pipeline::{Pipeline, PipelineSettings};
use gateway_core::providers::factory::build_providers;
use gateway_core::startup::Startup;

use crate::Deps;

/// Namespace of the metric lines when `METRICS_NAMESPACE` is unset or empty.
pub const DEFAULT_NAMESPACE: &str = "MailGateway";

/// Builds the sender's dependencies: the gateway config, one provider client per gateway, the
/// state store, the events queue and the outbound queue (for visibility changes). `None` when
/// a problem was recorded in `startup`; every problem found is recorded, not only the first.
pub async fn wire(startup: &mut Startup) -> Option<Deps> {
    let outbound_url = startup.required("OUTBOUND_QUEUE_URL");
    let events_url = startup.required("EVENTS_QUEUE_URL");
    let metrics_namespace = startup
        .var("METRICS_NAMESPACE")
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    // The outbound queue's redrive maxReceiveCount (the template passes its parameter): the
    // sender gives a message up, recorded as failed, on the last receive the queue allows.
    let max_receive_count = startup
        .var("OUTBOUND_MAX_RECEIVE_COUNT")
        .is_some()
        .then(|| startup.positive("OUTBOUND_MAX_RECEIVE_COUNT", 1));
    // How long after an unanswered call its provider's acceptance event is waited for before
    // the message is sent again (PipelineSettings::acceptance_wait).
    let acceptance_wait = startup.duration(
        "OUTBOUND_ACCEPTANCE_WAIT",
        PipelineSettings::default().acceptance_wait,
    );
    let config = startup.config();
    let (Some(config), Some(outbound_url), Some(events_url)) = (config, outbound_url, events_url)
    else {
        return None;
    };
    let resolver = startup.resolver().await;
    let store = startup.state_store().await;
    let events = startup.event_sink(events_url).await;
    let queue = startup.queue(outbound_url).await;
    let clock = startup.clock();
    // Built at start and again for every config version published later: the provider
    // clients and the pipeline (which keeps its list of sends still to mark).
    let build: BuildFn<Pipeline> = Arc::new(move |input: BuildInput<Pipeline>| {
        let (config, previous) = (input.config, input.previous);
        let (resolver, store, events, clock) = (
            Arc::clone(&resolver),
            Arc::clone(&store),
            Arc::clone(&events),
            Arc::clone(&clock),
        );
        Box::pin(async move {
            let providers = build_providers(&config, &resolver, &config.http, Arc::clone(&clock))
                .await
                .map_err(|e| e.to_string())?;
            let settings = PipelineSettings {
                max_receive_count,
                acceptance_wait,
                ..PipelineSettings::for_config(&config)
            };
            Ok(match previous {
                Some(running) => running.reconfigured(config, providers, settings),
                None => Pipeline::new(config, providers, store, events, clock, settings),
            })
        })
    });
    let pipeline = startup
        .reloading(config, Some(metrics_namespace.clone()), build)
        .await?;
    Some(Deps {
        pipeline: Arc::new(pipeline),
        queue,
        metrics_namespace,
    })
}
