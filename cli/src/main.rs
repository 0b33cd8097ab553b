//! The `gateway` command: the local run (`serve`), enqueueing (`send`), config tools, route
//! explanation and shared-state administration.
//!
//! Exit codes: 0 success; 1 the input is wrong (invalid config, no gateway can take the message);
//! 2 usage errors (clap's default).

// This binary's job is to print to the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod config_cmd;
mod ctl_cmd;
mod dlq_cmd;
mod identity;
mod messages_cmd;
mod migrate_cmd;
mod records_cmd;
mod route_cmd;
mod send_cmd;
mod serve_cmd;
mod state_cmd;
mod suppression_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Mail Gateway command-line tool.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway locally: poll a queue, send through the configured gateways and serve
    /// the HTTP API (embedded defaults: in-memory everything, capture and simulated gateways).
    Serve(Box<serve_cmd::ServeArgs>),
    /// Enqueue a message (JSON file) on an SQS queue or through a running `gateway serve`.
    Send(send_cmd::SendArgs),
    /// Check or convert gateway configuration files.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Show which gateways a message would be routed to, in order, and why.
    Route(route_cmd::RouteArgs),
    /// Administer the shared-state table in DynamoDB.
    #[command(subcommand)]
    State(state_cmd::StateCommand),
    /// Apply the MySQL migrations (the record of delivery).
    Migrate(migrate_cmd::MigrateArgs),
    /// Operator levers: pause or resume a gateway or all sending, force or reset a breaker, and
    /// the audit of those actions.
    #[command(subcommand)]
    Ctl(ctl_cmd::CtlCommand),
    /// List, check, add or remove suppressed addresses.
    #[command(subcommand)]
    Suppression(suppression_cmd::SuppressionCommand),
    /// List, show or redrive the outbound dead-letter queue (keeping each message's key).
    #[command(subcommand)]
    Dlq(dlq_cmd::DlqCommand),
    /// Purge the record of delivery past a retention (`records purge --older-than 365d`).
    #[command(subcommand)]
    Records(records_cmd::RecordsCommand),
    /// Search the record of delivery for messages (by recipient, sender, time, status, campaign).
    #[command(subcommand)]
    Messages(messages_cmd::MessagesCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve_cmd::run(*args),
        Command::Send(args) => send_cmd::run(&args),
        Command::Config(cmd) => config_cmd::run(cmd),
        Command::Route(args) => route_cmd::run(&args),
        Command::State(cmd) => state_cmd::run(cmd),
        Command::Migrate(args) => migrate_cmd::run(&args),
        Command::Ctl(cmd) => ctl_cmd::run(cmd),
        Command::Suppression(cmd) => suppression_cmd::run(cmd),
        Command::Dlq(cmd) => dlq_cmd::run(cmd),
        Command::Records(cmd) => records_cmd::run(cmd),
        Command::Messages(cmd) => messages_cmd::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
