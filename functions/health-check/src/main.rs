//! Lambda entry point of the health-check function: wires the dependencies once
//! ([`health_check::wire`]), then serves the scheduled invocations. Environment:
//! [`health_check::ENV_VARS`]. A start-up problem is logged once per problem, naming the
//! variable or config path at fault (never a secret value), and the process exits with status
//! 1, which Lambda reports as an init failure.

use gateway_core::startup::{self, Startup};
use health_check::{handle, wire};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    startup::init_json_logs();
    let mut startup = Startup::from_process();
    let deps = wire(&mut startup).await;
    let deps = startup
        .finish(deps)
        .unwrap_or_else(|problems| startup::exit_with(&problems));
    let deps = &deps;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<_>| async move {
        handle(event, deps).await
    }))
    .await
}
