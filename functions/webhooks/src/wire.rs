//! The webhooks function's dependencies, built once per process through the shared wiring path
//! ([`gateway_core::startup`]).

use std::sync::Arc;

use gateway_core::live_config::{BuildFn, BuildInput, Reloading};
use gateway_core::startup::Startup;
use gateway_core::webhooks::edge::{Edge, WebhookKeys};
use gateway_core::webhooks::sns::CertCache;

/// Builds the edge: the webhook keys and SNS topics from the gateway config, the secret
/// resolver (keys are secret references), the state store (the replay cache of Mailgun tokens
/// and SendGrid event ids, and the acceptance evidence the sender reads) and the events queue.
/// `None` when a problem was recorded in `startup`.
pub async fn wire(startup: &mut Startup) -> Option<Reloading<Edge>> {
    let events_url = startup.required("EVENTS_QUEUE_URL");
    let config = startup.config();
    let (Some(config), Some(events_url)) = (config, events_url) else {
        return None;
    };
    let secrets = startup.resolver().await;
    let state = startup.state_store().await;
    let events = startup.event_sink(events_url).await;
    let clock = startup.clock();
    // Built at start and for every config version published later (new keys and topics).
    let build: BuildFn<Edge> = Arc::new(move |input: BuildInput<Edge>| {
        let keys = WebhookKeys::of(&input.config);
        tracing::info!(
            mailgun_keys = keys.mailgun.len(),
            sendgrid_keys = keys.sendgrid.len(),
            sns_topics = keys.sns_topics.len(),
            "webhook routes configured"
        );
        let built = CertCache::new()
            .and_then(|certs| {
                Edge::new(
                    keys,
                    Arc::clone(&secrets),
                    Arc::clone(&state),
                    Arc::clone(&events),
                    certs,
                    Arc::clone(&clock),
                )
            })
            .map_err(|e| format!("http client: {e}"));
        Box::pin(async move { built })
    });
    startup.reloading(config, None, build).await
}
