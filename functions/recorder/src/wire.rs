//! The recorder's dependencies, built once per process through the shared wiring path
//! ([`gateway_core::startup`]).

use std::sync::Arc;
use std::time::Duration;

use gateway_core::config::{CustomerWebhook, GATEWAY_CONFIG_FILE};
use gateway_core::config_audit::ConfigEvent;
use gateway_core::customer_webhooks::{DeliveryReporting, Worker, WorkerSettings};
use gateway_core::events::GatewayEvent;
use gateway_core::live_config::{BuildFn, BuildInput};
use gateway_core::recorder::{CustomerWebhooks, Recorder};
use gateway_core::records::RecordWriter;
use gateway_core::records::mysql::MysqlRecords;
use gateway_core::records::retention::{DEFAULT_RETENTION_DAYS, Retention};
use gateway_core::startup::Startup;

use crate::Deps;
use crate::handler::{DeadLetters, Running};
use crate::metrics::{Metrics, Output};
use crate::retention::RetentionJob;

/// Namespace of the metric lines when `METRICS_NAMESPACE` is unset or empty (the sender's and
/// the health check's default too).
pub const DEFAULT_NAMESPACE: &str = "MailGateway";

/// How long the audit of the config may wait on the database (it runs beside the first
/// invocations; a lock wait must not hold a connection for long).
const AUDIT_TIMEOUT: Duration = Duration::from_secs(3);

/// Builds the recorder: the MySQL record (`DATABASE_URL`), the state store (the suppression
/// list) and, when the gateway config names customer webhooks, their announcing queue, their
/// dead-letter queue and the delivering worker. The config, when one is named, is audited
/// (`gateway_config_audit`, `gateway_routing_rules`). The recorder's record store is counted
/// for the metric lines (`METRICS_NAMESPACE`). `None` when a problem was recorded in `startup`.
pub async fn wire(startup: &mut Startup) -> Option<Deps> {
    let metrics_namespace = startup
        .var("METRICS_NAMESPACE")
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let records = startup.database().await;
    let config = startup.optional_config();
    let endpoints = config
        .as_ref()
        .map(|c| c.customer_webhooks.clone())
        .unwrap_or_default();
    let jobs_url = startup.var("CUSTOMER_WEBHOOK_QUEUE_URL");
    let dlq_url = startup.var("CUSTOMER_WEBHOOK_DLQ_URL");
    if !endpoints.is_empty() && jobs_url.is_none() {
        let count = endpoints.len();
        startup.problem(
            "CUSTOMER_WEBHOOK_QUEUE_URL",
            format!("required: the config names {count} customer webhook(s)"),
        );
    }
    if jobs_url.is_some() && dlq_url.is_none() {
        startup.problem(
            "CUSTOMER_WEBHOOK_DLQ_URL",
            "required with CUSTOMER_WEBHOOK_QUEUE_URL",
        );
    }
    let defaults = WorkerSettings::default();
    let settings = WorkerSettings {
        max_attempts: startup.positive("CUSTOMER_WEBHOOK_MAX_ATTEMPTS", defaults.max_attempts),
        timeout: startup.duration("CUSTOMER_WEBHOOK_TIMEOUT", defaults.timeout),
        ..defaults
    };
    // The outbound dead-letter queue, when this function consumes it: its ARN tells its records
    // apart, and the parked queue is where they wait for `gateway dlq redrive`.
    let dead_letter_arn = startup.var("OUTBOUND_DLQ_ARN");
    let parked_url = startup.var("OUTBOUND_PARKED_QUEUE_URL");
    match (&dead_letter_arn, &parked_url) {
        (Some(_), None) => startup.problem(
            "OUTBOUND_PARKED_QUEUE_URL",
            "required with OUTBOUND_DLQ_ARN (where dead letters are parked)",
        ),
        (None, Some(_)) => startup.problem(
            "OUTBOUND_DLQ_ARN",
            "required with OUTBOUND_PARKED_QUEUE_URL (which queue's records are dead letters)",
        ),
        _ => {}
    }
    let retention = retention_of(startup);
    let database = Arc::new(records?);
    let records: Arc<dyn RecordWriter> = database.clone();
    if !startup.problems().is_empty() {
        return None;
    }
    let state = startup.state_store().await;
    let clock = startup.clock();
    // The start-up audit and the customer-webhook worker are not counted: they are not a
    // batch's work.
    let metrics = Metrics::new(
        metrics_namespace.clone(),
        Arc::clone(&clock),
        Output::Stdout,
    );
    let queues = match (jobs_url, dlq_url) {
        (Some(jobs), Some(dlq)) => Some((startup.queue(jobs).await, startup.queue(dlq).await)),
        _ => None,
    };
    let resolver = startup.resolver().await;
    let file = format!(
        "recorder ({GATEWAY_CONFIG_FILE}={})",
        startup.var(GATEWAY_CONFIG_FILE).unwrap_or_default()
    );
    let counted = metrics.counting(Arc::clone(&records));
    // Built at start and for every config version published later: the suppression scopes
    // and the customer webhooks come from the config. Each config taken up is audited.
    let (records_, state_, clock_) = (Arc::clone(&records), Arc::clone(&state), Arc::clone(&clock));
    let build: BuildFn<Recorder> = Arc::new(move |input: BuildInput<Recorder>| {
        let (records, state, clock) = (&records_, &state_, &clock_);
        let config = input.config;
        let changed_by = input
            .version
            .as_ref()
            .map_or_else(|| file.clone(), |v| v.describe());
        // Off the start path: the audit waits on the database, which start-up must not (a
        // database outage would otherwise delay every cold start by the audit's timeout).
        let event = ConfigEvent::of(
            &config,
            &changed_by,
            Some("configuration taken up"),
            clock.now_ms(),
        );
        tokio::spawn(audit_config(Arc::clone(records), event));
        let mut recorder =
            Recorder::new(Arc::clone(&counted), Arc::clone(state), Arc::clone(clock))
                // How far complaints and unsubscribes suppress: the config's `suppression` section.
                .with_suppression_scopes(config.suppression);
        let endpoints: Arc<[CustomerWebhook]> = config.customer_webhooks.clone().into();
        let built = match (&queues, endpoints.is_empty()) {
            (_, true) => Ok(recorder),
            (None, false) => Err(format!(
                "CUSTOMER_WEBHOOK_QUEUE_URL: required: the config names {} customer webhook(s)",
                endpoints.len()
            )),
            (Some((jobs, dead_letters)), false) => Worker::new(
                Arc::clone(&endpoints),
                Arc::clone(&resolver),
                Arc::clone(jobs),
                Arc::clone(dead_letters),
                Arc::clone(clock),
                settings.clone(),
            )
            .map(|worker| {
                tracing::info!(
                    endpoints = endpoints.len(),
                    "customer webhooks: announcing and delivering"
                );
                recorder = recorder.with_customer_webhooks(CustomerWebhooks::new(
                    Arc::clone(&endpoints),
                    Arc::clone(jobs),
                    worker,
                    DeliveryReporting::of(&config),
                ));
                recorder
            })
            .map_err(|e| format!("customer_webhooks: {e}")),
        };
        Box::pin(async move { built })
    });
    let recorder = match config {
        Some(config) => Running::Live(Box::new(
            startup
                .reloading(config, Some(metrics_namespace), build)
                .await?,
        )),
        // Without a config nothing is reloaded: the default scopes, no customer webhooks.
        None => Running::Fixed(Arc::new(Recorder::new(
            metrics.counting(Arc::clone(&records)),
            Arc::clone(&state),
            Arc::clone(&clock),
        ))),
    };
    let retention = RetentionJob {
        records: MysqlRecords::clone(&database),
        retention,
        clock: startup.clock(),
    };
    let dead_letters = match (dead_letter_arn, parked_url) {
        (Some(source_arn), Some(url)) => Some(DeadLetters {
            source_arn,
            reader: database,
            parked: startup.queue(url).await,
        }),
        _ => None,
    };
    Some(Deps {
        recorder: Arc::new(recorder),
        metrics: Arc::new(metrics),
        dead_letters,
        retention: Some(retention),
    })
}

/// `RECORD_RETENTION_DAYS` (default [`DEFAULT_RETENTION_DAYS`]): whole days, within
/// `MIN_RETENTION_DAYS..=MAX_RETENTION_DAYS` of [`gateway_core::records::retention`] (30 days
/// to 10 years). No value disables the purge.
fn retention_of(startup: &mut Startup) -> Retention {
    let days = startup.positive("RECORD_RETENTION_DAYS", DEFAULT_RETENTION_DAYS);
    Retention::days(days).unwrap_or_else(|e| {
        startup.problem("RECORD_RETENTION_DAYS", e.to_string());
        Retention::days(DEFAULT_RETENTION_DAYS)
            .unwrap_or_else(|_| unreachable!("the default retention is within the range"))
    })
}

/// Records the configuration this instance loaded in `gateway_config_audit` and
/// `gateway_routing_rules` (a no-op when it is the audited one). Best effort, in the
/// background: a database outage must not keep the recorder from starting; the next cold start
/// audits it.
async fn audit_config(records: Arc<dyn RecordWriter>, event: ConfigEvent) {
    let events = [GatewayEvent::Config(event)];
    match tokio::time::timeout(AUDIT_TIMEOUT, records.apply(&events)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "the configuration could not be audited; the next start retries");
        }
        Err(_) => tracing::warn!(
            timeout_s = AUDIT_TIMEOUT.as_secs(),
            "auditing the configuration timed out; skipped, the next start retries"
        ),
    }
}
