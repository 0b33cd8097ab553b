//! Lambda entry point of the webhooks function: wires the dependencies once
//! ([`webhooks::wire`]), then serves requests. Environment: [`webhooks::ENV_VARS`]. A start-up
//! problem is logged once per problem, naming the variable or config path at fault (never a
//! secret), and the process exits 1.

use gateway_core::startup::{self, Startup};
use lambda_http::{Request, service_fn};
use webhooks::{handle, wire};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    startup::init_json_logs();
    let mut startup = Startup::from_process();
    let edge = wire(&mut startup).await;
    let edge = startup
        .finish(edge)
        .unwrap_or_else(|problems| startup::exit_with(&problems));
    let edge = &edge;
    lambda_http::run(service_fn(move |request: Request| async move {
        handle(request, &*edge.get().await).await
    }))
    .await
}
