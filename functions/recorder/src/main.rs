//! Lambda entry point of the recorder: wires the dependencies once, then serves invocations.
//!
//! The function is triggered by the events queue and, when customer webhooks are in use, by the
//! customer-webhook queue as well (a record is routed by its body).
//!
//! Environment:
//! - `DATABASE_URL` (required): a `mysql://` URL, or a secret reference
//!   `secretsmanager:ARN[#key]`, `ssm:/path` or `env:NAME` holding one.
//! - `DATABASE_MAX_CONNECTIONS` (default 2): connections per execution environment.
//! - `GATEWAY_STATE_TABLE` (default `gateway-state`): the DynamoDB table of the suppression list.
//! - `GATEWAY_CONFIG_FILE` / `GMAIL_WORKSPACES_FILE` (and the other config variables of DESIGN
//!   §2.2): the same gateway config as the sender's; the recorder reads its
//!   `customer_webhooks` and records the config in `gateway_config_audit` /
//!   `gateway_routing_rules` at start-up. Unset: no customer webhooks, no audit.
//! - `CUSTOMER_WEBHOOK_QUEUE_URL`: the queue announcements are put on (and consumed from);
//!   required when the config names customer webhooks.
//! - `CUSTOMER_WEBHOOK_DLQ_URL`: where jobs go, with the reason, once their attempts are spent;
//!   required with `CUSTOMER_WEBHOOK_QUEUE_URL`.
//! - `CUSTOMER_WEBHOOK_MAX_ATTEMPTS` (default 12), `CUSTOMER_WEBHOOK_TIMEOUT` (default `10s`).
//! - `RUST_LOG` (default `info`).
//!
//! A start-up problem is logged once per problem, naming the variable or config path at fault
//! (never a secret), and the process exits 1.

use std::sync::Arc;

use gateway_core::clock::{Clock, SystemClock};
use gateway_core::config::{
    Config, CustomerWebhook, GATEWAY_CONFIG_FILE, GMAIL_WORKSPACES_FILE, SecretRef, load_from_env,
};
use gateway_core::config_audit::ConfigEvent;
use gateway_core::customer_webhooks::{DeliveryReporting, Worker, WorkerSettings};
use gateway_core::duration::parse_duration;
use gateway_core::events::GatewayEvent;
use gateway_core::queue::Queue;
use gateway_core::queue::sqs::{self, SqsQueue};
use gateway_core::recorder::{CustomerWebhooks, Recorder};
use gateway_core::records::RecordWriter;
use gateway_core::records::mysql::{MysqlRecords, PoolSettings};
use gateway_core::secrets::SecretResolver;
use gateway_core::startup::{self, Problem, env};
use gateway_core::state::StateStore;
use gateway_core::state::dynamodb::{self, DynamoStore, table_name_from_env};
use lambda_runtime::{LambdaEvent, service_fn};
use recorder::{Deps, handle};

/// The gateway config, when one is named (the recorder reads its customer webhooks and audits
/// it).
fn gateway_config(problems: &mut Vec<Problem>) -> Option<Config> {
    if env(GATEWAY_CONFIG_FILE).is_none() && env(GMAIL_WORKSPACES_FILE).is_none() {
        return None;
    }
    match load_from_env() {
        Ok(loaded) => {
            for w in loaded
                .warnings
                .iter()
                .filter(|w| w.path.starts_with("customer_webhooks"))
            {
                tracing::warn!(setting = %w.path, problem = %w.message, "configuration warning");
            }
            Some(loaded.config)
        }
        Err(errors) => {
            problems.extend(startup::config_problems(errors));
            None
        }
    }
}

/// Records the configuration this instance loaded in `gateway_config_audit` and
/// `gateway_routing_rules` (a no-op when it is the audited one). Best effort: a database
/// outage must not keep the recorder from starting; the next cold start audits it.
async fn audit_config(records: &dyn RecordWriter, config: &Config, clock: &dyn Clock) {
    let changed_by = format!(
        "recorder ({GATEWAY_CONFIG_FILE}={})",
        env(GATEWAY_CONFIG_FILE).unwrap_or_default()
    );
    let event = ConfigEvent::of(
        config,
        &changed_by,
        Some("configuration loaded at start-up"),
        clock.now_ms(),
    );
    // Bounded: Lambda's init phase is short, and a lock wait must not eat it.
    let events = [GatewayEvent::Config(event)];
    let audit = records.apply(&events);
    match tokio::time::timeout(std::time::Duration::from_secs(3), audit).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "the configuration could not be audited; the next start retries");
        }
        Err(_) => tracing::warn!(
            "auditing the configuration took over 3 s; skipped, the next start retries"
        ),
    }
}

fn worker_settings(problems: &mut Vec<Problem>) -> WorkerSettings {
    let mut settings = WorkerSettings::default();
    if let Some(n) = env("CUSTOMER_WEBHOOK_MAX_ATTEMPTS") {
        match n.parse::<u32>() {
            Ok(n) if n >= 1 => settings.max_attempts = n,
            _ => problems.push(Problem::new(
                "CUSTOMER_WEBHOOK_MAX_ATTEMPTS".into(),
                format!("{n:?} is not a positive whole number"),
            )),
        }
    }
    if let Some(t) = env("CUSTOMER_WEBHOOK_TIMEOUT") {
        match parse_duration(&t) {
            Ok(d) if !d.is_zero() => settings.timeout = d,
            _ => problems.push(Problem::new(
                "CUSTOMER_WEBHOOK_TIMEOUT".into(),
                format!("{t:?} is not a positive duration such as \"10s\""),
            )),
        }
    }
    settings
}

async fn deps() -> Result<Deps, Vec<Problem>> {
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
    let config = gateway_config(&mut problems);
    let endpoints = config
        .as_ref()
        .map(|c| c.customer_webhooks.clone())
        .unwrap_or_default();
    let jobs_url = env("CUSTOMER_WEBHOOK_QUEUE_URL");
    let dlq_url = env("CUSTOMER_WEBHOOK_DLQ_URL");
    if !endpoints.is_empty() && jobs_url.is_none() {
        problems.push(Problem::new(
            "CUSTOMER_WEBHOOK_QUEUE_URL".into(),
            format!(
                "required: the config names {} customer webhook(s)",
                endpoints.len()
            ),
        ));
    }
    if jobs_url.is_some() && dlq_url.is_none() {
        problems.push(Problem::new(
            "CUSTOMER_WEBHOOK_DLQ_URL".into(),
            "required with CUSTOMER_WEBHOOK_QUEUE_URL".into(),
        ));
    }
    let settings = worker_settings(&mut problems);
    let Some(database) = database else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }

    let aws = aws_config::load_from_env().await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let resolver = Arc::new(SecretResolver::new(Arc::clone(&clock)).with_aws_config(aws.clone()));
    let url = resolver
        .resolve(&SecretRef::parse(&database))
        .await
        .map_err(|e| {
            vec![Problem::new(
                "DATABASE_URL".into(),
                format!("not resolved: {e}"),
            )]
        })?;
    let records: Arc<dyn RecordWriter> = Arc::new(
        MysqlRecords::connect(url.expose(), &pool)
            .map_err(|e| vec![Problem::new("DATABASE_URL".into(), e.to_string())])?,
    );
    let state: Arc<dyn StateStore> = Arc::new(DynamoStore::new(
        dynamodb::Client::new(&aws),
        table_name_from_env(),
    ));
    if let Some(config) = &config {
        audit_config(records.as_ref(), config, clock.as_ref()).await;
    }
    let mut recorder = Recorder::new(records, state, Arc::clone(&clock));
    if let (Some(jobs_url), Some(dlq_url)) = (jobs_url, dlq_url) {
        let sqs = sqs::Client::new(&aws);
        let jobs: Arc<dyn Queue> = Arc::new(SqsQueue::new(sqs.clone(), jobs_url));
        let dead_letters: Arc<dyn Queue> = Arc::new(SqsQueue::new(sqs, dlq_url));
        let endpoints: Arc<[CustomerWebhook]> = endpoints.into();
        let worker = Worker::new(
            Arc::clone(&endpoints),
            resolver,
            Arc::clone(&jobs),
            dead_letters,
            clock,
            settings,
        )
        .map_err(|e| vec![Problem::new("customer_webhooks".into(), e.to_string())])?;
        tracing::info!(
            endpoints = endpoints.len(),
            "customer webhooks: announcing and delivering"
        );
        let reporting = config
            .as_ref()
            .map(DeliveryReporting::of)
            .unwrap_or_default();
        recorder = recorder
            .with_customer_webhooks(CustomerWebhooks::new(endpoints, jobs, worker, reporting));
    }
    Ok(Deps {
        recorder: Arc::new(recorder),
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
