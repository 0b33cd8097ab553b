//! The health-check handler: a scheduled event in, one checker run, its summary out. No
//! business rules here; they live in `gateway_core::health_check`.

use std::sync::Arc;

use gateway_core::health::HealthChecker;
use gateway_core::live_config::Reloading;
use lambda_runtime::{Error, LambdaEvent};
use serde_json::Value;

/// What the handler needs, built once per process by `main`.
#[derive(Debug, Clone)]
pub struct Deps {
    /// The checker, with its providers, store, sink and clock; rebuilt when a new config
    /// version is activated ([`gateway_core::live_config`]).
    pub checker: Arc<Reloading<HealthChecker>>,
    /// CloudWatch namespace of the metric lines.
    pub metrics_namespace: String,
}

/// Runs one check. The event (an EventBridge `Scheduled Event`) carries nothing the check
/// needs: the schedule only says "now", and the checker decides which gateways are due. Answers
/// with the run's summary and writes its EMF lines (`HealthChecks` = 1, which the "no health
/// check" alarm watches, and `GatewayHealthy` per gateway). A run that could not read the
/// health records is an error: nothing was checked, no metric is written, and Lambda counts
/// the failure.
pub async fn handle(event: LambdaEvent<Value>, deps: &Deps) -> Result<Value, Error> {
    let (payload, context) = event.into_parts();
    let schedule = payload
        .get("resources")
        .map(|r| r.to_string())
        .unwrap_or_default();
    tracing::debug!(request_id = %context.request_id, %schedule, "health check invoked");
    let summary = deps.checker.get().await.run().await.map_err(|error| {
        tracing::error!(error_kind = "state", %error, "health check failed");
        Error::from(error.to_string())
    })?;
    write_metrics(&summary.emf_lines(&deps.metrics_namespace));
    Ok(summary.to_json())
}

/// Writes Embedded Metric Format lines to stdout, where CloudWatch Logs picks them up.
#[allow(clippy::print_stdout, reason = "EMF lines go to stdout by design")]
fn write_metrics(lines: &[String]) {
    for line in lines {
        println!("{line}");
    }
}
