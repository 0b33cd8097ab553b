//! `gateway state …`: administration of the shared-state table in DynamoDB.
//!
//! The AWS client is configured from the environment (`aws_config`), so
//! `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_DYNAMODB` point it at a local emulator.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use gateway_core::state::dynamodb::{
    DEFAULT_TABLE, TABLE_ENV, client_from_env, create_table, table_name_from_env,
};

/// Shared-state table commands.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Create the state table (key `pk` string, on-demand billing, TTL on `ttl`). For local
    /// setups and tests; a deployment defines the table in its stack template. Does nothing
    /// when the table already exists.
    CreateTable {
        /// Table name; defaults to $GATEWAY_STATE_TABLE, else `gateway-state`.
        #[arg(long)]
        table: Option<String>,
    },
}

/// Runs a `state` subcommand.
pub fn run(cmd: StateCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cmd {
        StateCommand::CreateTable { table } => {
            let table = table.unwrap_or_else(table_name_from_env);
            runtime.block_on(async {
                let client = client_from_env().await;
                let created = create_table(&client, &table)
                    .await
                    .with_context(|| format!("creating table {table}"))?;
                if created {
                    println!("created table {table} (key pk, on-demand, TTL on ttl)");
                } else {
                    println!("table {table} already exists; left unchanged");
                }
                if table != DEFAULT_TABLE
                    && std::env::var(TABLE_ENV).ok().as_deref() != Some(&table)
                {
                    println!("use it with {TABLE_ENV}={table}");
                }
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}
