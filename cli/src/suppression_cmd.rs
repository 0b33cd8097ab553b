//! `gateway suppression …`: the suppression list the sender checks (ARCHITECTURE §3.6), in the
//! shared-state DynamoDB table. The recorder adds hard bounces, complaints and unsubscribes;
//! operators list, add and remove entries here.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use gateway_core::clock::{Clock, SystemClock, civil_from_days, utc_day};
use gateway_core::levers;
use gateway_core::state::dynamodb::{DynamoStore, client_from_env, table_name_from_env};
use gateway_core::suppression::{
    self, Entry, KEY_PREFIX, OperatorChange, Reason, Scope, Suppression,
};

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
        /// Which mail it blocks: transactional, bulk or all.
        #[arg(long, default_value = "all", value_parser = scope_arg)]
        stream: Scope,
        /// Why, for the audit (`gateway suppression history`): a ticket, the patient's request.
        #[arg(long)]
        note: String,
        /// Table name.
        #[arg(long)]
        table: Option<String>,
    },
    /// Remove an address from the list for a stream (`all`, the default: from every scope; the
    /// sender sends to it again).
    Remove {
        /// The address (any case).
        address: String,
        /// Which suppression to remove: transactional, bulk or all (every one).
        #[arg(long, default_value = "all", value_parser = scope_arg)]
        stream: Scope,
        /// Why, for the audit (`gateway suppression history`).
        #[arg(long)]
        note: String,
        /// Table name.
        #[arg(long)]
        table: Option<String>,
    },
    /// The audit of operators' additions and removals, newest first: who, when, what, why.
    History {
        /// How many entries (1 to 100).
        #[arg(long, default_value_t = 20)]
        limit: usize,
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

fn scope_arg(s: &str) -> Result<Scope, String> {
    Scope::parse(s).ok_or_else(|| format!("unknown stream {s:?}: use transactional, bulk or all"))
}

fn valid_address(address: &str) -> anyhow::Result<()> {
    gateway_core::address::EmailAddress::parse(address)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{address:?} is not an email address: {e}"))
}

/// One suppression: address, scope, reason, day, source.
fn show(s: &Suppression) -> String {
    let (y, m, d) = civil_from_days(utc_day(s.at));
    format!(
        "{}  {}  {}  {y:04}-{m:02}-{d:02}  {}",
        s.address,
        s.scope,
        s.reason.as_str(),
        s.source
    )
}

/// Every active scope of an entry, one line each.
fn show_entry(e: &Entry) -> String {
    e.suppressions
        .iter()
        .map(show)
        .collect::<Vec<_>>()
        .join("\n")
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
                    let address = key.strip_prefix(KEY_PREFIX).unwrap_or(key);
                    // A removal's tombstone does not suppress.
                    if let Some(entry) = Entry::from_item(address, item) {
                        println!("{}", show_entry(&entry));
                        listed += 1;
                    }
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
                    Some(entry) => {
                        println!("suppressed:\n{}", show_entry(&entry));
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
                stream,
                note,
                table,
            } => {
                valid_address(&address)?;
                let store = store(table).await;
                let by = crate::identity::who().await;
                let entry =
                    Suppression::new(&address, reason, &by, SystemClock.now_ms()).in_scope(stream);
                let change = OperatorChange::Add(entry.clone());
                let added = suppression::operator_change(&store, &change, &by, &note)
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
            SuppressionCommand::Remove {
                address,
                stream,
                note,
                table,
            } => {
                let store = store(table).await;
                let by = crate::identity::who().await;
                let change = OperatorChange::Remove {
                    address: address.clone(),
                    scope: stream,
                    at: SystemClock.now_ms(),
                };
                let removed = suppression::operator_change(&store, &change, &by, &note)
                    .await
                    .with_context(|| format!("writing table {}", store.table()))?;
                let address = suppression::canonical(&address);
                if removed {
                    println!("removed {address} ({stream})");
                } else {
                    println!("{address} was not suppressed for {stream}");
                }
                // What still blocks it, so that removing one stream does not look like more.
                if let Some(left) = suppression::lookup(&store, &address)
                    .await
                    .with_context(|| format!("reading table {}", store.table()))?
                {
                    println!("still suppressed:\n{}", show_entry(&left));
                }
                Ok(ExitCode::SUCCESS)
            }
            SuppressionCommand::History { limit, table } => {
                if !(1..=levers::MAX_HISTORY).contains(&limit) {
                    anyhow::bail!("--limit {limit}: 1 to {}", levers::MAX_HISTORY);
                }
                let store = store(table).await;
                let entries = levers::history(&store, &levers::Target::Suppression, limit)
                    .await
                    .with_context(|| format!("reading table {}", store.table()))?;
                for e in &entries {
                    // `after` starts with what was done ("addr reason for scope: {item}").
                    let what = e.after.split(": {").next().unwrap_or_default();
                    println!(
                        "#{} {} {} {what} by {}: {}",
                        e.seq,
                        gateway_core::clock::format_rfc3339(e.at),
                        e.action.trim_start_matches("suppression_"),
                        e.by,
                        e.reason
                    );
                }
                let n = entries.len();
                println!("{n} entr{}", if n == 1 { "y" } else { "ies" });
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
