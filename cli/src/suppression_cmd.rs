//! `gateway suppression …`: the suppression list the sender checks (ARCHITECTURE §3.6), in the
//! shared-state DynamoDB table. The recorder adds hard bounces, complaints and unsubscribes;
//! operators list, add and remove entries here.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use gateway_core::clock::{Clock, SystemClock, civil_from_days, utc_day};
use gateway_core::state::dynamodb::{DynamoStore, client_from_env, table_name_from_env};
use gateway_core::suppression::{self, KEY_PREFIX, Reason, Suppression};

/// Suppression list commands. The table is $GATEWAY_STATE_TABLE (default `gateway-state`) at the
/// endpoint the AWS SDK is pointed at.
#[derive(Debug, Subcommand)]
pub enum SuppressionCommand {
    /// List every suppressed address (reads the whole table: an operator command).
    List {
        /// Table name; default $GATEWAY_STATE_TABLE, else `gateway-state`.
        #[arg(long)]
        table: Option<String>,
    },
    /// Show whether an address is suppressed, and why.
    Check {
        /// The address (any case).
        address: String,
        /// Table name.
        #[arg(long)]
        table: Option<String>,
    },
    /// Suppress an address by hand.
    Add {
        /// The address (any case).
        address: String,
        /// Why: hard_bounce, complaint, unsubscribe or manual.
        #[arg(long, default_value = "manual", value_parser = reason_arg)]
        reason: Reason,
        /// Table name.
        #[arg(long)]
        table: Option<String>,
    },
    /// Remove an address from the list (the sender sends to it again).
    Remove {
        /// The address (any case).
        address: String,
        /// Table name.
        #[arg(long)]
        table: Option<String>,
    },
}

fn reason_arg(s: &str) -> Result<Reason, String> {
    match Reason::parse(s) {
        Some(r) if r != Reason::Unknown => Ok(r),
        _ => Err(format!(
            "unknown reason {s:?}: use hard_bounce, complaint, unsubscribe or manual"
        )),
    }
}

fn valid_address(address: &str) -> anyhow::Result<()> {
    gateway_core::address::EmailAddress::parse(address)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{address:?} is not an email address: {e}"))
}

fn show(s: &Suppression) -> String {
    let (y, m, d) = civil_from_days(utc_day(s.at));
    format!(
        "{}  {}  {y:04}-{m:02}-{d:02}  {}",
        s.address,
        s.reason.as_str(),
        s.source
    )
}

/// Runs a `suppression` subcommand.
pub fn run(cmd: SuppressionCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let store = |table: Option<String>| async move {
            DynamoStore::new(
                client_from_env().await,
                table.unwrap_or_else(table_name_from_env),
            )
        };
        match cmd {
            SuppressionCommand::List { table } => {
                let store = store(table).await;
                let entries = store
                    .scan_prefix(KEY_PREFIX)
                    .await
                    .with_context(|| format!("reading table {}", store.table()))?;
                let mut listed = 0;
                for (key, item) in &entries {
                    // A removal's tombstone does not suppress.
                    if item.contains_key("removed_at") {
                        continue;
                    }
                    let address = key.strip_prefix(KEY_PREFIX).unwrap_or(key);
                    println!("{}", show(&Suppression::from_item(address, item)));
                    listed += 1;
                }
                println!("{listed} suppressed addresses");
                Ok(ExitCode::SUCCESS)
            }
            SuppressionCommand::Check { address, table } => {
                let store = store(table).await;
                match suppression::lookup(&store, &address)
                    .await
                    .with_context(|| format!("reading table {}", store.table()))?
                {
                    Some(s) => {
                        println!("suppressed: {}", show(&s));
                        Ok(ExitCode::SUCCESS)
                    }
                    None => {
                        println!("{} is not suppressed", suppression::canonical(&address));
                        Ok(ExitCode::from(3))
                    }
                }
            }
            SuppressionCommand::Add {
                address,
                reason,
                table,
            } => {
                valid_address(&address)?;
                let store = store(table).await;
                let entry = Suppression::new(&address, reason, "gateway-cli", SystemClock.now_ms());
                let added = suppression::add(&store, &entry)
                    .await
                    .with_context(|| format!("writing table {}", store.table()))?;
                if !added {
                    eprintln!(
                        "{} was removed from the list at a later time than this machine's clock \
                         says it is now; nothing written",
                        entry.address
                    );
                    return Ok(ExitCode::FAILURE);
                }
                println!("suppressed: {}", show(&entry));
                Ok(ExitCode::SUCCESS)
            }
            SuppressionCommand::Remove { address, table } => {
                let store = store(table).await;
                let removed = suppression::remove(&store, &address, SystemClock.now_ms())
                    .await
                    .with_context(|| format!("writing table {}", store.table()))?;
                if removed {
                    println!("removed {}", suppression::canonical(&address));
                } else {
                    println!("{} was not suppressed", suppression::canonical(&address));
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
