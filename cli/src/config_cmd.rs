//! `gateway config check|convert-legacy|push|diff|history`: checking and converting config
//! files, and the live config's published versions ([`gateway_core::live_config`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use gateway_core::clock::{Clock, SystemClock, format_rfc3339};
use gateway_core::config::{self, ConfigErrors, ConfigIssue, Loaded};
use gateway_core::live_config;
use gateway_core::state::dynamodb::{DynamoStore, client_from_env, table_name_from_env};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a gateway config: one summary line per gateway when valid (exit 0), every
    /// problem with its JSON path otherwise (exit 1). Warnings go to stderr.
    Check(CheckArgs),
    /// Print the gateway config equivalent to a legacy `workspaces.json`.
    ConvertLegacy {
        /// The legacy workspaces file.
        workspaces: PathBuf,
    },
    /// Validate a config and publish it as the next live version in the state table: every
    /// running process takes it within its poll interval (30 s), without a deploy. An invalid
    /// config is refused with every problem and nothing is published.
    Push(PushArgs),
    /// Show what publishing a config would change against the version in force (secrets
    /// redacted); exit 0 when nothing would, 3 when something would.
    Diff(StoredArgs),
    /// The published versions, newest first: number, time, who, why.
    History {
        /// How many (at most 50).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// State table name; default $GATEWAY_STATE_TABLE, else `gateway-state`.
        #[arg(long)]
        table: Option<String>,
    },
}

/// `gateway config push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The gateway config file.
    pub file: PathBuf,
    /// Why (kept with the version and in the config audit).
    #[arg(long)]
    pub reason: String,
    /// State table name; default $GATEWAY_STATE_TABLE, else `gateway-state`.
    #[arg(long)]
    pub table: Option<String>,
    #[command(flatten)]
    pub source: Source,
}

/// `gateway config diff`.
#[derive(Debug, Args)]
pub struct StoredArgs {
    /// The gateway config file.
    pub file: PathBuf,
    /// State table name; default $GATEWAY_STATE_TABLE, else `gateway-state`.
    #[arg(long)]
    pub table: Option<String>,
    #[command(flatten)]
    pub source: Source,
}

/// Which documents are in force (`GATEWAY_MODE`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// Only the legacy workspaces.
    Legacy,
    /// Only the gateway config.
    New,
    /// Both; legacy workspaces keep their sender domains.
    Hybrid,
}

impl Mode {
    fn as_env(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::New => "new",
            Self::Hybrid => "hybrid",
        }
    }
}

/// Where the configuration comes from; shared by every command that loads one.
#[derive(Debug, Args)]
pub struct Source {
    /// A legacy `workspaces.json` to load as well (implies `--mode hybrid` unless given).
    #[arg(long, value_name = "FILE")]
    pub workspaces: Option<PathBuf>,
    /// Which documents are in force; default `new`, or `hybrid` with `--workspaces`.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Ignore environment overrides (`QUEUE_DAILY_RATE_LIMIT`, `CB_*`, `HEALTH_CHECK_*`), which
    /// are otherwise applied exactly as the deployed functions apply them.
    #[arg(long)]
    pub no_env: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The gateway config file.
    pub file: PathBuf,
    #[command(flatten)]
    pub source: Source,
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Loads `config_file` (and the source's workspaces) with the process environment's overrides,
/// except the variables naming files and the mode, which the command line decides.
pub fn load(config_file: &Path, source: &Source) -> anyhow::Result<Result<Loaded, ConfigErrors>> {
    let text = read(config_file)?;
    let legacy = source.workspaces.as_deref().map(read).transpose()?;
    let mode = source.mode.unwrap_or(if legacy.is_some() {
        Mode::Hybrid
    } else {
        Mode::New
    });
    let no_env = source.no_env;
    let env = move |name: &str| -> Option<String> {
        match name {
            "GATEWAY_MODE" => Some(mode.as_env().to_owned()),
            "GATEWAY_CONFIG_FILE" | "GMAIL_WORKSPACES_FILE" => None,
            _ if no_env => None,
            _ => std::env::var(name).ok(),
        }
    };
    Ok(config::load_config(Some(&text), legacy.as_deref(), &env))
}

fn print_warnings(warnings: &[ConfigIssue]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

fn print_errors(errors: &ConfigErrors) {
    for e in &errors.0 {
        eprintln!("error: {e}");
    }
    let n = errors.0.len();
    eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn store(table: Option<String>) -> DynamoStore {
    DynamoStore::new(
        client_from_env().await,
        table.unwrap_or_else(table_name_from_env),
    )
}

/// The config in force in `store`, loaded as `source` loads a file; `None` before any publish.
async fn in_force(
    store: &DynamoStore,
    source: &Source,
) -> anyhow::Result<Option<(live_config::Version, Result<Loaded, ConfigErrors>)>> {
    let Some(head) = live_config::head(store)
        .await
        .with_context(|| format!("reading table {}", store.table()))?
    else {
        return Ok(None);
    };
    let (version, text) = live_config::document(store, head.number)
        .await
        .with_context(|| format!("reading table {}", store.table()))?
        .with_context(|| format!("version {} is named in force but missing", head.number))?;
    let dir = std::env::temp_dir().join(format!("gateway-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("in-force.json");
    std::fs::write(&path, &text)?;
    let loaded = load(&path, source);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Some((version, loaded?)))
}

fn print_diff(from: &str, old: Option<&config::Config>, new: &config::Config) -> usize {
    match old {
        None => {
            println!("nothing published yet: the processes run on their deployed file");
            1
        }
        Some(old) => {
            let lines = live_config::diff(old, new);
            if lines.is_empty() {
                println!("no change against {from}");
            } else {
                println!("against {from}:");
                for line in &lines {
                    println!("  {line}");
                }
            }
            lines.len()
        }
    }
}

pub fn run(cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Push(args) => runtime()?.block_on(async {
            let loaded = match load(&args.file, &args.source)? {
                Ok(loaded) => loaded,
                Err(errors) => {
                    print_errors(&errors);
                    eprintln!("nothing published");
                    return Ok(ExitCode::FAILURE);
                }
            };
            print_warnings(&loaded.warnings);
            let store = store(args.table).await;
            let current = in_force(&store, &args.source).await?;
            let from = current.as_ref().map(|(v, _)| format!("version {}", v.number));
            let old = current.as_ref().and_then(|(_, l)| l.as_ref().ok()).map(|l| &l.config);
            print_diff(from.as_deref().unwrap_or("nothing"), old, &loaded.config);
            let text = read(&args.file)?;
            let legacy = args.source.workspaces.as_deref().map(read).transpose()?;
            let env = |name: &str| match name {
                "GATEWAY_CONFIG_FILE" | "GMAIL_WORKSPACES_FILE" => None,
                _ if args.source.no_env => None,
                _ => std::env::var(name).ok(),
            };
            let by = crate::identity::who().await;
            match live_config::publish(
                &store,
                &text,
                legacy.as_deref(),
                &env,
                &by,
                &args.reason,
                SystemClock.now_ms(),
            )
            .await
            {
                Ok(version) => {
                    println!(
                        "published version {} by {} (sha256 {})",
                        version.number,
                        version.by,
                        &version.sha256[..12]
                    );
                    println!(
                        "running processes take it within {} s; a process that cannot build it keeps the version it runs and logs config_rejected",
                        live_config::DEFAULT_POLL.as_secs()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(live_config::PublishError::Invalid(errors)) => {
                    print_errors(&errors);
                    eprintln!("nothing published");
                    Ok(ExitCode::FAILURE)
                }
                Err(e @ live_config::PublishError::Unchanged(_)) => {
                    println!("{e}; nothing published");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(anyhow::Error::new(e).context(format!("table {}", store.table()))),
            }
        }),
        ConfigCommand::Diff(args) => runtime()?.block_on(async {
            let loaded = match load(&args.file, &args.source)? {
                Ok(loaded) => loaded,
                Err(errors) => {
                    print_errors(&errors);
                    return Ok(ExitCode::FAILURE);
                }
            };
            let store = store(args.table).await;
            let current = in_force(&store, &args.source).await?;
            let from = current.as_ref().map(|(v, _)| format!("version {} ({})", v.number, v.by));
            let old = match &current {
                Some((v, Err(errors))) => {
                    eprintln!("version {} in force does not load here:", v.number);
                    print_errors(errors);
                    None
                }
                Some((_, Ok(l))) => Some(&l.config),
                None => None,
            };
            let changes = print_diff(from.as_deref().unwrap_or("nothing"), old, &loaded.config);
            Ok(if changes == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }),
        ConfigCommand::History { limit, table } => runtime()?.block_on(async {
            if !(1..=live_config::MAX_HISTORY).contains(&limit) {
                anyhow::bail!("--limit {limit}: 1 to {}", live_config::MAX_HISTORY);
            }
            let store = store(table).await;
            let versions = live_config::history(&store, limit)
                .await
                .with_context(|| format!("reading table {}", store.table()))?;
            for v in &versions {
                println!(
                    "#{} {} by {}: {} (sha256 {})",
                    v.number,
                    format_rfc3339(v.at),
                    v.by,
                    v.reason,
                    &v.sha256[..12.min(v.sha256.len())]
                );
            }
            let n = versions.len();
            println!("{n} version{}", if n == 1 { "" } else { "s" });
            Ok(ExitCode::SUCCESS)
        }),
        ConfigCommand::Check(args) => match load(&args.file, &args.source)? {
            Ok(loaded) => {
                print_warnings(&loaded.warnings);
                let config = &loaded.config;
                for gateway in &config.gateways {
                    println!("{}", gateway.summary());
                }
                println!(
                    "{}: valid, {} gateway{}, strategy {}",
                    args.file.display(),
                    config.gateways.len(),
                    if config.gateways.len() == 1 { "" } else { "s" },
                    config.routing.strategy,
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                print_errors(&errors);
                Ok(ExitCode::FAILURE)
            }
        },
        ConfigCommand::ConvertLegacy { workspaces } => {
            match config::convert_legacy(&read(&workspaces)?) {
                Ok((document, warnings)) => {
                    print_warnings(&warnings);
                    println!("{}", serde_json::to_string_pretty(&document)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    print_errors(&errors);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
