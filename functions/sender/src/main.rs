//! Lambda entry point of the sender: wires the dependencies once, then serves invocations.
//!
//! Environment: `GATEWAY_CONFIG_FILE` (and the other config variables of DESIGN §2.2),
//! `GATEWAY_STATE_TABLE` (DynamoDB table, default `gateway-state`), `OUTBOUND_QUEUE_URL` (the
//! queue this function consumes, for visibility changes), `EVENTS_QUEUE_URL` (where outcome
//! events go), `METRICS_NAMESPACE` (default `MailGateway`), `RUST_LOG` (default `info`).
//!
//! A start-up problem is logged once per problem, naming the variable or config path at fault
//! (never a secret value), and the process exits with status 1, which Lambda reports as an init
//! failure. Every problem found is reported, not only the first.

use std::sync::Arc;

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use gateway_core::clock::{Clock, SystemClock};
use gateway_core::config::load_from_env;
use gateway_core::events::EventSink;
use gateway_core::pipeline::{Pipeline, PipelineSettings};
use gateway_core::providers::factory::build_providers;
use gateway_core::queue::Queue;
use gateway_core::queue::sqs::{self, SqsQueue};
use gateway_core::secrets::SecretResolver;
use gateway_core::sqs_sink::SqsEventSink;
use gateway_core::startup::{self, Problem, env, required};
use gateway_core::state::StateStore;
use gateway_core::state::dynamodb::{self, DynamoStore, table_name_from_env};
use lambda_runtime::{LambdaEvent, service_fn};
use sender::{Deps, handle};

/// Namespace of the metric lines when `METRICS_NAMESPACE` is unset or empty.
const DEFAULT_NAMESPACE: &str = "MailGateway";

/// `aws` with the DynamoDB adapter's expectations: the SDK's retries off (the adapter's own
/// retry policy is the only one, so a throttled request is retried a known number of times) and
/// bounded waits, so a stalled connection fails instead of hanging the invocation.
fn dynamodb_config(aws: &SdkConfig) -> SdkConfig {
    aws.to_builder()
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(dynamodb::CONNECT_TIMEOUT)
                .operation_attempt_timeout(dynamodb::ATTEMPT_TIMEOUT)
                .build(),
        )
        .build()
}

/// `aws` with the SQS adapters' bounded waits (SDK retries stay on: every SQS call here is safe
/// to repeat, a repeated event is absorbed by the idempotent recorder).
fn sqs_config(aws: &SdkConfig) -> SdkConfig {
    aws.to_builder()
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(sqs::CONNECT_TIMEOUT)
                .operation_attempt_timeout(sqs::ATTEMPT_TIMEOUT)
                .build(),
        )
        .build()
}

async fn deps() -> Result<Deps, Vec<Problem>> {
    let mut problems = Vec::new();
    let outbound_url = required("OUTBOUND_QUEUE_URL", &mut problems);
    let events_url = required("EVENTS_QUEUE_URL", &mut problems);
    let loaded = match load_from_env() {
        Ok(loaded) => Some(loaded),
        Err(errors) => {
            problems.extend(startup::config_problems(errors));
            None
        }
    };
    let (Some(loaded), Some(outbound_url), Some(events_url)) = (loaded, outbound_url, events_url)
    else {
        return Err(problems);
    };
    for warning in &loaded.warnings {
        tracing::warn!(setting = %warning.path, problem = %warning.message, "configuration warning");
    }
    let config = loaded.config;

    let aws = aws_config::load_from_env().await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let resolver = SecretResolver::new(Arc::clone(&clock)).with_aws_config(aws.clone());
    let providers = build_providers(&config, &resolver, &config.http, Arc::clone(&clock))
        .await
        .map_err(|e| {
            e.problems
                .iter()
                .map(|p| {
                    Problem::new(
                        format!("gateways[{}] ({})", p.index, p.gateway_id),
                        p.problem.to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })?;

    let store: Arc<dyn StateStore> = Arc::new(DynamoStore::new(
        dynamodb::Client::new(&dynamodb_config(&aws)),
        table_name_from_env(),
    ));
    let sqs = sqs::Client::new(&sqs_config(&aws));
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
        metrics_namespace: env("METRICS_NAMESPACE").unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
    })
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    startup::init_json_logs();
    let deps = match deps().await {
        Ok(deps) => deps,
        Err(problems) => startup::exit_with(&problems),
    };
    let deps = &deps;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        handle(event, deps).await
    }))
    .await
}
