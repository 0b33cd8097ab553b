//! Lambda entry point of the webhooks function: wires the dependencies once, then serves
//! requests.
//!
//! Environment: `GATEWAY_CONFIG_FILE` (and the other config variables of DESIGN §2.2; the
//! webhook keys and SNS topics are read from the gateway config — required), `EVENTS_QUEUE_URL`
//! (where delivery events go — required), `GATEWAY_STATE_TABLE` (DynamoDB table of the Mailgun
//! token replay cache, default `gateway-state`), `RUST_LOG` (default `info`).
//!
//! A start-up problem is logged once per problem, naming the variable or config path at fault
//! (never a secret), and the process exits 1.

use std::sync::Arc;

use gateway_core::clock::{Clock, SystemClock};
use gateway_core::config::load_from_env;
use gateway_core::events::EventSink;
use gateway_core::secrets::SecretResolver;
use gateway_core::sqs_sink::SqsEventSink;
use gateway_core::startup::{self, Problem, env};
use gateway_core::state::StateStore;
use gateway_core::state::dynamodb::{self, DynamoStore, table_name_from_env};
use gateway_core::webhooks::edge::{Edge, WebhookKeys};
use gateway_core::webhooks::sns::CertCache;
use lambda_http::{Request, service_fn};
use webhooks::handle;

async fn edge() -> Result<Edge, Vec<Problem>> {
    let mut problems = Vec::new();
    let events_url = env("EVENTS_QUEUE_URL");
    if events_url.is_none() {
        problems.push(Problem::new(
            "EVENTS_QUEUE_URL".into(),
            "required, and not set".into(),
        ));
    }
    let config = match load_from_env() {
        Ok(loaded) => Some(loaded.config),
        Err(errors) => {
            problems.extend(startup::config_problems(errors));
            None
        }
    };
    let (Some(events_url), Some(config)) = (events_url, config) else {
        return Err(problems);
    };
    let keys = WebhookKeys::of(&config);
    tracing::info!(
        mailgun_keys = keys.mailgun.len(),
        sendgrid_keys = keys.sendgrid.len(),
        sns_topics = keys.sns_topics.len(),
        "webhook routes configured"
    );
    let aws = aws_config::load_from_env().await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let secrets = Arc::new(SecretResolver::new(Arc::clone(&clock)).with_aws_config(aws.clone()));
    let replay: Arc<dyn StateStore> = Arc::new(DynamoStore::new(
        dynamodb::Client::new(&aws),
        table_name_from_env(),
    ));
    let events: Arc<dyn EventSink> = Arc::new(SqsEventSink::new(
        aws_sdk_sqs::Client::new(&aws),
        events_url,
    ));
    let certs =
        CertCache::new().map_err(|e| vec![Problem::new("http client".into(), e.to_string())])?;
    Edge::new(keys, secrets, replay, events, certs, clock)
        .map_err(|e| vec![Problem::new("http client".into(), e.to_string())])
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    startup::init_json_logs();
    let edge = match edge().await {
        Ok(edge) => edge,
        Err(problems) => startup::exit_with(&problems),
    };
    let edge = &edge;
    lambda_http::run(service_fn(move |request: Request| async move {
        handle(request, edge).await
    }))
    .await
}
