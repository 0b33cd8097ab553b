//! The webhooks function's dependencies, built once per process through the shared wiring path
//! ([`gateway_core::startup`]).

use gateway_core::startup::Startup;
use gateway_core::webhooks::edge::{Edge, WebhookKeys};
use gateway_core::webhooks::sns::CertCache;

/// Builds the edge: the webhook keys and SNS topics from the gateway config, the secret
/// resolver (keys are secret references), the state store (the replay cache of Mailgun tokens
/// and SendGrid event ids, and the acceptance evidence the sender reads) and the events queue.
/// `None` when a problem was recorded in `startup`.
pub async fn wire(startup: &mut Startup) -> Option<Edge> {
    let events_url = startup.required("EVENTS_QUEUE_URL");
    let config = startup.config();
    let (Some(config), Some(events_url)) = (config, events_url) else {
        return None;
    };
    let keys = WebhookKeys::of(&config);
    tracing::info!(
        mailgun_keys = keys.mailgun.len(),
        sendgrid_keys = keys.sendgrid.len(),
        sns_topics = keys.sns_topics.len(),
        "webhook routes configured"
    );
    let secrets = startup.resolver().await;
    let state = startup.state_store().await;
    let events = startup.event_sink(events_url).await;
    let built = CertCache::new()
        .and_then(|certs| Edge::new(keys, secrets, state, events, certs, startup.clock()));
    built
        .map_err(|e| startup.problem("http client", e.to_string()))
        .ok()
}
