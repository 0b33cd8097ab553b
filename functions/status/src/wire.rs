//! The status function's dependencies, built once per process through the shared wiring path
//! ([`gateway_core::startup`]).

use std::sync::Arc;

use gateway_core::startup::Startup;
use gateway_core::status::{StatusApi, StatusRecords};

/// Builds the status API: the gateway config (the gateways to report on), the MySQL record
/// (`DATABASE_URL`; the pool connects lazily, so with the database down the function starts
/// and the record routes answer 503) and the state store (health, breakers, usage). `None`
/// when a problem was recorded in `startup`.
pub async fn wire(startup: &mut Startup) -> Option<StatusApi> {
    let config = startup.config();
    let records = startup.database().await;
    let (Some(config), Some(records)) = (config, records) else {
        return None;
    };
    let records: Arc<dyn StatusRecords> = Arc::new(records);
    let state = startup.state_store().await;
    tracing::info!(gateways = config.gateways.len(), "status API configured");
    Some(StatusApi::new(
        Arc::new(config),
        state,
        Some(records),
        startup.clock(),
    ))
}
