//! `gateway migrate`: applies the MySQL migrations of `migrations/` (embedded in the binary).

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use gateway_core::records::mysql::{MIGRATOR, MysqlRecords, PoolSettings};

/// `gateway migrate` options.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The database: `mysql://user:password@host:3306/database` (`?ssl-mode=REQUIRED` for TLS).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    database_url: String,
}

/// Runs `gateway migrate`.
pub fn run(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let db = MysqlRecords::connect(&args.database_url, &PoolSettings::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        match db.migrate().await {
            Ok(applied) => {
                for m in MIGRATOR.iter() {
                    let state = if applied.contains(&m.version) {
                        "applied now"
                    } else {
                        "already applied"
                    };
                    println!("{:04} {:<28} {state}", m.version, m.description);
                }
                println!(
                    "database is at migration {}",
                    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                // The error never contains the URL, so the password cannot leak here.
                eprintln!("error: migrating the database failed: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    eprintln!("  caused by: {cause}");
                    source = cause.source();
                }
                Ok(ExitCode::FAILURE)
            }
        }
    })
}
