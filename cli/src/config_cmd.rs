//! `gateway config check|convert-legacy`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use gateway_core::config::{self, ConfigErrors, ConfigIssue, Loaded};

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

pub fn run(cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
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
