//! Lambda entry point of the recorder: wires the dependencies once, then serves invocations.
//!
//! Environment: `DATABASE_URL` (a `mysql://` URL, or a secret reference `secretsmanager:ARN[#key]`,
//! `ssm:/path` or `env:NAME` holding one), `GATEWAY_STATE_TABLE` (the DynamoDB table holding the
//! suppression list, default `gateway-state`), `DATABASE_MAX_CONNECTIONS` (default 2),
//! `RUST_LOG` (default `info`).

use std::sync::Arc;

use anyhow::{Context as _, bail};
use gateway_core::clock::{Clock, SystemClock};
use gateway_core::config::SecretRef;
use gateway_core::recorder::Recorder;
use gateway_core::records::RecordWriter;
use gateway_core::records::mysql::{MysqlRecords, PoolSettings};
use gateway_core::secrets::SecretResolver;
use gateway_core::state::StateStore;
use gateway_core::state::dynamodb::{self, DynamoStore, table_name_from_env};
use lambda_runtime::{LambdaEvent, service_fn};
use recorder::{Deps, handle};

async fn deps() -> anyhow::Result<Deps> {
    let Ok(reference) = std::env::var("DATABASE_URL") else {
        bail!("environment variable DATABASE_URL is required");
    };
    let aws = aws_config::load_from_env().await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let resolver = SecretResolver::new(Arc::clone(&clock)).with_aws_config(aws.clone());
    let url = resolver
        .resolve(&SecretRef::parse(&reference))
        .await
        .map_err(|e| anyhow::anyhow!("DATABASE_URL could not be resolved: {e}"))?;
    let mut pool = PoolSettings::default();
    if let Ok(n) = std::env::var("DATABASE_MAX_CONNECTIONS") {
        pool.max_connections = n
            .parse()
            .with_context(|| format!("DATABASE_MAX_CONNECTIONS={n:?} is not a number"))?;
    }
    let records: Arc<dyn RecordWriter> = Arc::new(
        MysqlRecords::connect(url.expose(), &pool)
            .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?,
    );
    let state: Arc<dyn StateStore> = Arc::new(DynamoStore::new(
        dynamodb::Client::new(&aws),
        table_name_from_env(),
    ));
    Ok(Deps {
        recorder: Arc::new(Recorder::new(records, state, clock)),
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
        .context("recorder start-up")
        .inspect_err(|e| tracing::error!(error = format!("{e:#}"), "start-up failed"))?;
    let deps = &deps;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        handle(event, deps).await
    }))
    .await
}
