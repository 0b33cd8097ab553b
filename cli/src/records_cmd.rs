//! `gateway records purge`: deletes the records of delivery whose last activity is older than a
//! retention, in bounded batches (`gateway_core::records::retention`), printing each batch and a
//! summary. The deployed recorder does the same every hour with `RECORD_RETENTION_DAYS`; this
//! is for a first purge of an old database, another retention, or a look with `--dry-run`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use gateway_core::clock::{Clock, SystemClock, format_rfc3339};
use gateway_core::config::SecretRef;
use gateway_core::duration::{format_duration, parse_duration};
use gateway_core::records::mysql::{MysqlRecords, PoolSettings};
use gateway_core::records::retention::{
    DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE, PurgeBatch, PurgeBudget, PurgeCounts, PurgeMode, Retention,
    purge_expired,
};
use gateway_core::secrets::SecretResolver;
use gateway_core::startup::AwsClients;

/// `gateway records` subcommands.
#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    /// Delete every message last active before now minus --older-than, with its recipients,
    /// provider calls and provider events, and the provider events naming no message older
    /// than that; in batches of --batch-size messages, each a short transaction.
    Purge(PurgeArgs),
}

/// `gateway records purge` options.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// The retention: a duration such as `365d` (at least `30d`, at most `3650d`).
    #[arg(long, value_name = "DURATION", value_parser = parse_retention)]
    older_than: Retention,
    /// The database: a `mysql://` URL or a reference to one (`env:DATABASE_URL`, `ssm:/path`,
    /// `secretsmanager:ARN[#key]`), which keeps the password out of the process list.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_name = "URL or env:NAME"
    )]
    database_url: String,
    /// Count what would be purged, in the same batches, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Messages per batch (transaction), 1 to 5000.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_BATCH_SIZE)))]
    batch_size: u32,
}

fn parse_retention(s: &str) -> Result<Retention, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    Retention::of(d).map_err(|e| e.to_string())
}

/// Runs a `gateway records` subcommand.
pub fn run(cmd: RecordsCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cmd {
        RecordsCommand::Purge(args) => runtime.block_on(purge(&args)),
    }
}

fn describe(c: &PurgeCounts) -> String {
    format!(
        "{} messages ({} recipients, {} send attempts, {} delivery events), {} delivery events \
         naming no message",
        c.messages, c.recipients, c.send_attempts, c.delivery_events, c.unattached_events
    )
}

async fn purge(args: &PurgeArgs) -> anyhow::Result<ExitCode> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let reference = SecretRef::parse(&args.database_url);
    if reference.is_inline()
        && reqwest::Url::parse(&args.database_url).is_ok_and(|u| u.password().is_some())
    {
        eprintln!(
            "warning: --database-url carries a password, which every user of this machine can \
             read in the process list; pass `--database-url env:DATABASE_URL` (or an \
             ssm:/secretsmanager: reference) instead"
        );
    }
    let mut resolver = SecretResolver::new(Arc::clone(&clock));
    if matches!(
        reference,
        SecretRef::Ssm(_) | SecretRef::SecretsManager { .. }
    ) {
        resolver = resolver.with_aws_config(AwsClients::from_env().await.sdk().clone());
    }
    let url = resolver
        .resolve(&reference)
        .await
        .map_err(|e| anyhow::anyhow!("--database-url: {e}"))?;
    let db = MysqlRecords::connect(url.expose(), &PoolSettings::default())
        .map_err(|e| anyhow::anyhow!("--database-url: {e}"))?;
    let budget = PurgeBudget::new(args.batch_size, u32::MAX, Duration::MAX)
        .map_err(|e| anyhow::anyhow!("--batch-size: {e}"))?;
    let mode = if args.dry_run {
        PurgeMode::DryRun
    } else {
        PurgeMode::Delete
    };
    let now = clock.now_ms();
    let verb = if args.dry_run {
        "would purge"
    } else {
        "purged"
    };
    println!(
        "{} records last active before {} (older than {}), {} messages per batch",
        if args.dry_run {
            "dry run: counting"
        } else {
            "purging"
        },
        format_rfc3339(args.older_than.cutoff(now)),
        format_duration(Duration::from_millis(
            u64::try_from(args.older_than.as_millis()).unwrap_or(0)
        )),
        args.batch_size
    );
    let result = purge_expired(
        &db,
        now,
        args.older_than,
        &budget,
        mode,
        |b: &PurgeBatch| {
            println!("batch {}: {verb} {}", b.number, describe(&b.counts));
        },
    )
    .await;
    match result {
        Ok(summary) => {
            println!(
                "{verb} {} in {} batches",
                describe(&summary.counts),
                summary.batches
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            // The batches before this one stay purged; running again goes on from there.
            eprintln!("error: purging failed (the batches reported above are done): {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
