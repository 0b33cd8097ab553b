//! Lambda entry point of the status function: wires the dependencies once, then serves
//! requests.
//!
//! Environment:
//! - `DATABASE_URL` (required): a `mysql://` URL, or a secret reference
//!   `secretsmanager:ARN[#key]`, `ssm:/path` or `env:NAME` holding one. The pool connects
//!   lazily: with the database down the function starts and the record routes answer 503.
//! - `DATABASE_MAX_CONNECTIONS` (default 2): connections per execution environment.
//! - `GATEWAY_STATE_TABLE` (default `gateway-state`): health, breakers and usage.
//! - `GATEWAY_CONFIG_FILE` (and the other config variables of DESIGN §2.2): the gateways to
//!   report on — required.
//! - `RUST_LOG` (default `info`).
//!
//! A start-up problem is logged once per problem, naming the variable or config path at fault
//! (never a secret), and the process exits 1.

use std::sync::Arc;

use gateway_core::clock::{Clock, SystemClock};
use gateway_core::config::{SecretRef, load_from_env};
use gateway_core::records::mysql::{MysqlRecords, PoolSettings};
use gateway_core::secrets::SecretResolver;
use gateway_core::startup::{self, Problem, env};
use gateway_core::state::StateStore;
use gateway_core::state::dynamodb::{self, DynamoStore, table_name_from_env};
use gateway_core::status::{StatusApi, StatusRecords};
use lambda_http::{Request, service_fn};
use status::handle;

async fn api() -> Result<StatusApi, Vec<Problem>> {
    let mut problems = Vec::new();
    let database = env("DATABASE_URL");
    if database.is_none() {
        problems.push(Problem::new(
            "DATABASE_URL".into(),
            "required, and not set".into(),
        ));
    }
    let mut pool = PoolSettings::default();
    if let Some(n) = env("DATABASE_MAX_CONNECTIONS") {
        match n.parse::<u32>() {
            Ok(n) if n >= 1 => pool.max_connections = n,
            _ => problems.push(Problem::new(
                "DATABASE_MAX_CONNECTIONS".into(),
                format!("{n:?} is not a positive whole number"),
            )),
        }
    }
    let config = match load_from_env() {
        Ok(loaded) => Some(loaded.config),
        Err(errors) => {
            problems.extend(startup::config_problems(errors));
            None
        }
    };
    let (Some(database), Some(config), true) = (database, config, problems.is_empty()) else {
        return Err(problems);
    };
    let aws = aws_config::load_from_env().await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let resolver = SecretResolver::new(Arc::clone(&clock)).with_aws_config(aws.clone());
    let url = resolver
        .resolve(&SecretRef::parse(&database))
        .await
        .map_err(|e| {
            vec![Problem::new(
                "DATABASE_URL".into(),
                format!("not resolved: {e}"),
            )]
        })?;
    let records: Arc<dyn StatusRecords> = Arc::new(
        MysqlRecords::connect(url.expose(), &pool)
            .map_err(|e| vec![Problem::new("DATABASE_URL".into(), e.to_string())])?,
    );
    // The adapter's own client: SDK retries off (the store retries) and bounded waits, so a
    // slow table answers 503 in JSON before API Gateway's own timeout.
    let state: Arc<dyn StateStore> = Arc::new(DynamoStore::new(
        dynamodb::client_from_env().await,
        table_name_from_env(),
    ));
    tracing::info!(gateways = config.gateways.len(), "status API configured");
    Ok(StatusApi::new(
        Arc::new(config),
        state,
        Some(records),
        clock,
    ))
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    startup::init_json_logs();
    let api = match api().await {
        Ok(api) => api,
        Err(problems) => startup::exit_with(&problems),
    };
    let api = &api;
    lambda_http::run(service_fn(move |request: Request| async move {
        handle(request, api).await
    }))
    .await
}
