//! `gateway route`: the router's decision for one message, explained.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use gateway_core::address::Mailbox;
use gateway_core::clock::{Clock, SystemClock};
use gateway_core::router::{BreakerView, GatewayState, Health, RouteRequest, Router};

use crate::config_cmd::{self, Source};

#[derive(Debug, Args)]
pub struct RouteArgs {
    /// The gateway config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The sender address.
    #[arg(long, value_name = "ADDR")]
    pub from: String,
    /// Recipient addresses (repeatable); routing depends on the sender only, the count is shown
    /// because limits are counted in recipients.
    #[arg(long, value_name = "ADDR")]
    pub to: Vec<String>,
    /// The message id; round-robin and weighted choices derive from it.
    #[arg(long, value_name = "MSG_ID", default_value = "route-preview")]
    pub id: String,
    /// Pin the message to this gateway, as the message's `gateway` field does.
    #[arg(long, value_name = "ID")]
    pub gateway: Option<String>,
    /// Pretend this gateway's health check says unhealthy (repeatable).
    #[arg(long, value_name = "ID")]
    pub unhealthy: Vec<String>,
    /// Pretend this gateway's breaker is open for the next minute (repeatable).
    #[arg(long, value_name = "ID")]
    pub breaker_open: Vec<String>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: Source,
}

pub fn run(args: &RouteArgs) -> anyhow::Result<ExitCode> {
    // Route on the address exactly as the pipeline will: `Name <addr>` and stray spaces must not
    // slip past an exclude pattern.
    let sender = match Mailbox::parse(args.from.trim()) {
        Ok(mailbox) => mailbox.address().clone(),
        Err(e) => {
            eprintln!("error: --from {:?}: {e}", args.from);
            return Ok(ExitCode::from(2));
        }
    };
    let loaded = match config_cmd::load(&args.config, &args.source)? {
        Ok(loaded) => loaded,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("the config is invalid; run `gateway config check` for details");
            return Ok(ExitCode::FAILURE);
        }
    };
    let config = Arc::new(loaded.config);
    for id in args.unhealthy.iter().chain(&args.breaker_open) {
        if config.gateway(id).is_none() {
            anyhow::bail!("unknown gateway {id:?} in --unhealthy/--breaker-open");
        }
    }
    let now = SystemClock.now_ms();
    let state: Vec<GatewayState> = config
        .gateways
        .iter()
        .map(|g| GatewayState {
            health: if args.unhealthy.contains(&g.id) {
                Health::Unhealthy
            } else {
                Health::Unknown
            },
            breaker: if args.breaker_open.contains(&g.id) {
                BreakerView::Open {
                    until: now + 60_000,
                }
            } else {
                BreakerView::Closed
            },
            remaining: None,
            held: None,
        })
        .collect();
    let router = Router::new(Arc::clone(&config));
    let request = RouteRequest {
        message_id: &args.id,
        sender: sender.as_str(),
        pinned: args.gateway.as_deref(),
    };
    let plan = router.route(&request, &state, now);
    if args.json {
        let mut doc = serde_json::to_value(&plan)?;
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("sender".into(), sender.as_str().into());
            obj.insert("message_id".into(), args.id.clone().into());
            obj.insert("recipients".into(), args.to.len().into());
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        match args.to.len() {
            0 => println!("message {} from {sender}", args.id),
            n => println!(
                "message {} from {sender} to {n} recipient{}",
                args.id,
                if n == 1 { "" } else { "s" }
            ),
        }
        print!("{}", plan.explain());
    }
    Ok(if plan.candidates.is_empty() {
        if !args.json {
            eprintln!("no gateway can take this message");
        }
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
