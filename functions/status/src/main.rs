//! Lambda entry point of the status function: wires the dependencies once
//! ([`status::wire`]), then serves requests. Environment: [`status::ENV_VARS`]. A start-up
//! problem is logged once per problem, naming the variable or config path at fault (never a
//! secret), and the process exits 1.

use gateway_core::startup::{self, Startup};
use lambda_http::{Request, service_fn};
use status::{handle, wire};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    startup::init_json_logs();
    let mut startup = Startup::from_process();
    let api = wire(&mut startup).await;
    let api = startup
        .finish(api)
        .unwrap_or_else(|problems| startup::exit_with(&problems));
    let api = &api;
    lambda_http::run(service_fn(move |request: Request| async move {
        handle(request, &*api.get().await).await
    }))
    .await
}
