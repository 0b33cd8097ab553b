//! Lambda entry point of the health-check function: wires the dependencies once, then serves
//! the scheduled invocations.
//!
//! Environment: `GATEWAY_CONFIG_FILE` (and the other config variables of DESIGN §2.2; the
//! gateways to probe and their credentials — required), `GATEWAY_STATE_TABLE` (DynamoDB table of
//! the `hc#{gateway}` records, default `gateway-state`), `EVENTS_QUEUE_URL` (where health and
//! config events go — required), `METRICS_NAMESPACE` (default `MailGateway`), `RUST_LOG`
//! (default `info`).
//!
//! No database: the config audit is the recorder's (see `gateway_core::health_check`).
//!
//! A start-up problem is logged once per problem, naming the variable or config path at fault
//! (never a secret value), and the process exits 1. Every problem found is reported.

use std::sync::Arc;

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use gateway_core::clock::{Clock, SystemClock};
use gateway_core::config::{GATEWAY_CONFIG_FILE, load_from_env};
use gateway_core::events::EventSink;
use gateway_core::health_check::HealthChecker;
use gateway_core::providers::factory::build_providers;
use gateway_core::queue::sqs;
use gateway_core::secrets::SecretResolver;
use gateway_core::sqs_sink::SqsEventSink;
use gateway_core::startup::{self, Problem, env};
use gateway_core::state::StateStore;
use gateway_core::state::dynamodb::{self, DynamoStore, table_name_from_env};
use health_check::{Deps, handle};
use lambda_runtime::{LambdaEvent, service_fn};

/// Namespace of the metric lines when `METRICS_NAMESPACE` is unset or empty.
const DEFAULT_NAMESPACE: &str = "MailGateway";

/// `aws` with the DynamoDB adapter's expectations: its own retry policy only, bounded waits.
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

/// `aws` with bounded SQS waits (SDK retries stay on: a repeated event is absorbed by the
/// idempotent recorder).
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
    let events_url = env("EVENTS_QUEUE_URL");
    if events_url.is_none() {
        problems.push(Problem::new(
            "EVENTS_QUEUE_URL".into(),
            "required, and not set".into(),
        ));
    }
    let loaded = match load_from_env() {
        Ok(loaded) => Some(loaded),
        Err(errors) => {
            problems.extend(startup::config_problems(errors));
            None
        }
    };
    let (Some(events_url), Some(loaded)) = (events_url, loaded) else {
        return Err(problems);
    };
    for warning in &loaded.warnings {
        tracing::warn!(setting = %warning.path, problem = %warning.message, "configuration warning");
    }
    let config = Arc::new(loaded.config);

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
    let events: Arc<dyn EventSink> = Arc::new(SqsEventSink::new(
        sqs::Client::new(&sqs_config(&aws)),
        events_url,
    ));
    let changed_by = format!(
        "health-check ({GATEWAY_CONFIG_FILE}={})",
        env(GATEWAY_CONFIG_FILE).unwrap_or_default()
    );
    let checker =
        HealthChecker::new(config, providers, store, events, clock).with_changed_by(changed_by);
    Ok(Deps {
        checker: Arc::new(checker),
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
