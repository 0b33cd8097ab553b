//! The sender's dependencies, built once per process through the shared wiring path
//! ([`gateway_core::startup`]).

use std::sync::Arc;

use gateway_core::pipeline::PipelineSettings;
use gateway_core::startup::{Shared, Startup, pipeline_builder};

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
    let queue = startup.queue(outbound_url).await;
    // The bulk lane (template: OutboundBulkQueue), named by both its URL and its ARN.
    let bulk = match (
        startup.var("OUTBOUND_BULK_QUEUE_URL"),
        startup.var("OUTBOUND_BULK_QUEUE_ARN"),
    ) {
        (Some(url), Some(arn)) => Some((arn, startup.queue(url).await)),
        (None, None) => None,
        (Some(_), None) => {
            startup.problem(
                "OUTBOUND_BULK_QUEUE_ARN",
                "required with OUTBOUND_BULK_QUEUE_URL",
            );
            None
        }
        (None, Some(_)) => {
            startup.problem(
                "OUTBOUND_BULK_QUEUE_URL",
                "required with OUTBOUND_BULK_QUEUE_ARN",
            );
            None
        }
    };
    // Built at start and again for every config version published later: the provider
    // clients and the pipeline (which keeps its list of sends still to mark).
    let shared = Shared {
        resolver: startup.resolver().await,
        store: startup.state_store().await,
        events: startup.event_sink(events_url).await,
        clock: startup.clock(),
        attachments: startup.attachments().await,
    };
    let build = pipeline_builder(
        shared,
        PipelineSettings {
            max_receive_count,
            acceptance_wait,
            ..PipelineSettings::default()
        },
    );
    let pipeline = startup
        .reloading(config, Some(metrics_namespace.clone()), build)
        .await?;
    Some(Deps {
        pipeline: Arc::new(pipeline),
        queue,
        bulk,
        metrics_namespace,
    })
}
