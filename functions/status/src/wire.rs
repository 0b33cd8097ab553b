//! The status function's dependencies, built once per process through the shared wiring path
//! ([`gateway_core::startup`]).

use std::sync::Arc;

use gateway_core::live_config::{BuildFn, BuildInput, Reloading};
use gateway_core::startup::Startup;
use gateway_core::status::{StatusApi, StatusRecords};

/// Builds the status API: the gateway config (the gateways to report on), the MySQL record
/// (`DATABASE_URL`; the pool connects lazily, so with the database down the function starts
/// and the record routes answer 503) and the state store (health, breakers, usage). `None`
/// when a problem was recorded in `startup`.
pub async fn wire(startup: &mut Startup) -> Option<Reloading<StatusApi>> {
    let config = startup.config();
    let records = startup.database().await;
    let (Some(config), Some(records)) = (config, records) else {
        return None;
    };
    let records: Arc<dyn StatusRecords> = Arc::new(records);
    let state = startup.state_store().await;
    let clock = startup.clock();
    tracing::info!(gateways = config.gateways.len(), "status API configured");
    // Rebuilt for every config version published later (gateway_core::live_config).
    let build: BuildFn<StatusApi> = Arc::new(move |input: BuildInput<StatusApi>| {
        let api = StatusApi::new(
            input.config,
            Arc::clone(&state),
            Some(Arc::clone(&records)),
            Arc::clone(&clock),
        );
        Box::pin(async move { Ok(api) })
    });
    startup.reloading(config, None, build).await
}
