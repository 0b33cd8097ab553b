//! Lambda entry point of the recorder (events queue, customer-webhook queue, outbound dead letters
//! and the hourly retention schedule): wires the dependencies once ([`recorder::wire`]), then
//! serves invocations. Environment: [`recorder::ENV_VARS`]. A start-up problem is logged once per
//! problem, naming the variable or config path at fault (never a secret value), and the process
//! exits with status 1, which Lambda reports as an init failure.

use gateway_core::startup::{self, Startup};
use lambda_runtime::{LambdaEvent, service_fn};
use recorder::{invoke, wire};

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
        invoke(event, deps).await
    }))
    .await
}
