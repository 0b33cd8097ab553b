//! Lambda entry point of the sender: wires the dependencies once, then serves invocations.
//!
//! Environment: `GATEWAY_CONFIG_FILE` (and the other config variables of DESIGN §2.2),
//! `GATEWAY_STATE_TABLE` (DynamoDB table, default `gateway-state`), `OUTBOUND_QUEUE_URL` (the
//! queue this function consumes, for visibility changes), `EVENTS_QUEUE_URL` (where outcome
//! events go), `METRICS_NAMESPACE` (default `MailGateway`), `RUST_LOG` (default `info`).

use std::sync::Arc;

use anyhow::{Context as _, bail};
use gateway_core::clock::{Clock, SystemClock};
use gateway_core::config::load_from_env;
use gateway_core::events::EventSink;
use gateway_core::pipeline::{Pipeline, PipelineSettings};
use gateway_core::providers::factory::build_providers;
use gateway_core::queue::Queue;
use gateway_core::queue::sqs::SqsQueue;
use gateway_core::secrets::SecretResolver;
use gateway_core::sqs_sink::SqsEventSink;
use gateway_core::state::StateStore;
use gateway_core::state::dynamodb::{self, DynamoStore, table_name_from_env};
use lambda_runtime::{LambdaEvent, service_fn};
use sender::{Deps, handle};

fn required(name: &str) -> anyhow::Result<String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        _ => bail!("environment variable {name} is required"),
    }
}

async fn deps() -> anyhow::Result<Deps> {
    let loaded = load_from_env().map_err(|e| anyhow::anyhow!("configuration invalid: {e}"))?;
    for warning in &loaded.warnings {
        tracing::warn!(%warning, "configuration warning");
    }
    let config = loaded.config;
    let outbound_url = required("OUTBOUND_QUEUE_URL")?;
    let events_url = required("EVENTS_QUEUE_URL")?;
    let aws = aws_config::load_from_env().await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let resolver = SecretResolver::new(Arc::clone(&clock)).with_aws_config(aws.clone());
    let providers = build_providers(&config, &resolver, &config.http, Arc::clone(&clock))
        .await
        .map_err(|e| anyhow::anyhow!("providers could not be built: {e}"))?;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let store: Arc<dyn StateStore> = Arc::new(DynamoStore::new(
        dynamodb::Client::new(&aws),
        table_name_from_env(),
    ));
    let events: Arc<dyn EventSink> = Arc::new(SqsEventSink::new(sqs.clone(), events_url));
    let queue: Arc<dyn Queue> = Arc::new(SqsQueue::new(sqs, outbound_url));
    let pipeline = Pipeline::new(
        Arc::new(config),
        providers,
        store,
        events,
        clock,
        PipelineSettings::default(),
    );
    Ok(Deps {
        pipeline: Arc::new(pipeline),
        queue,
        metrics_namespace: std::env::var("METRICS_NAMESPACE")
            .unwrap_or_else(|_| "MailGateway".to_owned()),
    })
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_target(false)
        .with_current_span(false)
        .without_time()
        .init();
    let deps = deps()
        .await
        .context("sender start-up")
        .inspect_err(|e| tracing::error!(error = format!("{e:#}"), "start-up failed"))?;
    let deps = &deps;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        handle(event, deps).await
    }))
    .await
}
