//! `gateway ctl …`: the operator levers ([`gateway_core::levers`]) — pause and resume a gateway or
//! all sending, force a breaker open or closed, reset it — and their audit.
//!
//! Two ways to reach them:
//! - **the state table** (default): the DynamoDB table at the endpoint the AWS SDK is pointed at
//!   ($GATEWAY_STATE_TABLE or `--table`), with the gateways of `--config` ($GATEWAY_CONFIG_FILE);
//!   the audit names the caller's IAM principal (STS `GetCallerIdentity`);
//! - **a running `gateway serve`** (`--local URL`), through its status API with its token; the
//!   audit names the token holder (and `--by`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use gateway_core::clock::{Clock, EpochMillis, SystemClock, format_rfc3339, parse_rfc3339};
use gateway_core::config::load_from;
use gateway_core::duration::parse_duration;
use gateway_core::levers::{self, Action, BreakerMode, LeverError, Levers, Order, Target};
use gateway_core::state::dynamodb::{DynamoStore, client_from_env, table_name_from_env};
use gateway_core::status::LeverShown;
use serde_json::{Value, json};

/// Where the levers are.
#[derive(Debug, Args)]
pub struct Place {
    /// A running `gateway serve` to act through (its base URL, e.g. http://127.0.0.1:8025)
    /// instead of the state table.
    #[arg(long)]
    local: Option<String>,
    /// The token of that `gateway serve` ($GATEWAY_API_TOKEN).
    #[arg(long, env = "GATEWAY_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// State table name; default $GATEWAY_STATE_TABLE, else `gateway-state`.
    #[arg(long)]
    table: Option<String>,
    /// The config whose gateways may be named (default $GATEWAY_CONFIG_FILE).
    #[arg(long)]
    config: Option<String>,
    /// Print the JSON answer instead of text.
    #[arg(long)]
    json: bool,
}

/// Why and for how long (every action).
#[derive(Debug, Args)]
pub struct Why {
    /// Why (required; kept in the audit).
    #[arg(long)]
    reason: String,
    /// When it stops holding (RFC 3339); leave out to hold until changed.
    #[arg(long, conflicts_with = "for_")]
    until: Option<String>,
    /// How long it holds from now (`30m`, `4h`), instead of `--until`.
    #[arg(long = "for", id = "for_", value_name = "DURATION")]
    for_: Option<String>,
    /// With `--local`: the name to record with the token (the token holder otherwise).
    #[arg(long)]
    by: Option<String>,
}

/// Operator lever commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Show the levers holding now, per gateway and for all sending.
    Status {
        #[command(flatten)]
        place: Place,
    },
    /// Pause a gateway (its messages fail over, or wait) or `all` sending (every message waits).
    Pause {
        /// A gateway id, or `all`.
        target: String,
        #[command(flatten)]
        why: Why,
        #[command(flatten)]
        place: Place,
    },
    /// End a pause.
    Resume {
        /// A gateway id, or `all`.
        target: String,
        #[command(flatten)]
        why: Why,
        #[command(flatten)]
        place: Place,
    },
    /// Force a gateway's breaker open or closed, give it back to its stored state (`auto`), or
    /// reset the stored breaker to closed and clean.
    Breaker {
        /// The gateway id.
        gateway: String,
        /// What to do.
        mode: BreakerArg,
        #[command(flatten)]
        why: Why,
        #[command(flatten)]
        place: Place,
    },
    /// Override a gateway's limits until an end (`--for` or `--until`, required), or `--clear`
    /// the override: a level left out keeps the config's limit.
    Limits {
        /// The gateway id.
        gateway: String,
        /// Its day limit while the override holds.
        #[arg(long)]
        workspace_daily: Option<u64>,
        /// Its hour limit.
        #[arg(long)]
        per_hour: Option<u64>,
        /// Its burst (refilled at that many per second).
        #[arg(long)]
        burst_limit: Option<u64>,
        /// End the override: the config's limits apply again.
        #[arg(long, conflicts_with_all = ["workspace_daily", "per_hour", "burst_limit"])]
        clear: bool,
        #[command(flatten)]
        why: Why,
        #[command(flatten)]
        place: Place,
    },
    /// The audit of a target's lever actions, newest first.
    History {
        /// A gateway id, or `all`.
        target: String,
        /// How many entries (1 to 100).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        place: Place,
    },
}

/// `gateway ctl breaker` modes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BreakerArg {
    /// No call reaches the gateway.
    Open,
    /// Every send admitted, whatever the stored breaker says.
    Closed,
    /// Back to the stored breaker.
    Auto,
    /// The stored breaker becomes closed and clean.
    Reset,
}

impl BreakerArg {
    fn code(self) -> &'static str {
        match self {
            Self::Open => "breaker_open",
            Self::Closed => "breaker_closed",
            Self::Auto => "breaker_auto",
            Self::Reset => "breaker_reset",
        }
    }
}

/// Runs a `ctl` subcommand.
pub fn run(cmd: CtlCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match cmd {
            CtlCommand::Status { place } => status(&place).await,
            CtlCommand::Pause { target, why, place } => act(&place, &target, "pause", &why).await,
            CtlCommand::Resume { target, why, place } => act(&place, &target, "resume", &why).await,
            CtlCommand::Breaker {
                gateway,
                mode,
                why,
                place,
            } => {
                if gateway == "all" {
                    bail!("breakers are per gateway: name one (`all` takes pause and resume)");
                }
                act(&place, &gateway, mode.code(), &why).await
            }
            CtlCommand::History {
                target,
                limit,
                place,
            } => history(&place, &target, limit).await,
            CtlCommand::Limits {
                gateway,
                workspace_daily,
                per_hour,
                burst_limit,
                clear,
                why,
                place,
            } => {
                if gateway == "all" {
                    bail!("limits are per gateway: name one");
                }
                let levels = Levels {
                    workspace_daily,
                    per_hour,
                    burst_limit,
                };
                let code = if clear { "limits_clear" } else { "limits_set" };
                act_with(&place, &gateway, code, &why, levels).await
            }
        }
    })
}

/// The gateway ids of the config named by `--config` or the environment.
fn gateways(place: &Place) -> anyhow::Result<Vec<String>> {
    let file = place
        .config
        .clone()
        .or_else(|| std::env::var("GATEWAY_CONFIG_FILE").ok());
    if file.is_none() && std::env::var("GMAIL_WORKSPACES_FILE").is_err() {
        bail!(
            "name the config whose gateways the levers act on: --config FILE (or \
             $GATEWAY_CONFIG_FILE), or use --local URL to act through a running gateway serve"
        );
    }
    let env = |name: &str| {
        if name == "GATEWAY_CONFIG_FILE" {
            file.clone()
        } else {
            std::env::var(name).ok()
        }
    };
    match load_from(&env) {
        Ok(loaded) => Ok(loaded.config.gateways.into_iter().map(|g| g.id).collect()),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("config: {e}");
            }
            bail!("the config is invalid; run `gateway config check` for details")
        }
    }
}

async fn store(place: &Place) -> DynamoStore {
    DynamoStore::new(
        client_from_env().await,
        place.table.clone().unwrap_or_else(table_name_from_env),
    )
}

fn until_of(why: &Why, now: EpochMillis) -> anyhow::Result<Option<EpochMillis>> {
    match (&why.until, &why.for_) {
        (Some(t), _) => parse_rfc3339(t).map(Some).with_context(|| {
            format!("--until {t:?} is not an RFC 3339 time (2026-12-04T15:00:00Z)")
        }),
        (None, Some(d)) => {
            let d = parse_duration(d).map_err(|e| anyhow::anyhow!("--for {d:?}: {e}"))?;
            Ok(Some(now.saturating_add(
                i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            )))
        }
        (None, None) => Ok(None),
    }
}

/// The levels of `gateway ctl limits`.
#[derive(Debug, Clone, Copy, Default)]
struct Levels {
    workspace_daily: Option<u64>,
    per_hour: Option<u64>,
    burst_limit: Option<u64>,
}

fn action_of(code: &str, until: Option<EpochMillis>, levels: Levels) -> anyhow::Result<Action> {
    let no_end = |a: Action| {
        if until.is_some() {
            bail!("{code} takes no --until or --for")
        }
        Ok(a)
    };
    match code {
        "pause" => Ok(Action::Pause { until }),
        "resume" => no_end(Action::Resume),
        "breaker_open" => Ok(Action::Breaker {
            mode: BreakerMode::Open,
            until,
        }),
        "breaker_closed" => Ok(Action::Breaker {
            mode: BreakerMode::Closed,
            until,
        }),
        "breaker_auto" => no_end(Action::BreakerAuto),
        "limits_set" => Ok(Action::Limits {
            workspace_daily: levels.workspace_daily,
            per_hour: levels.per_hour,
            burst_limit: levels.burst_limit,
            until: until.context("a limit override needs an end: --for or --until")?,
        }),
        "limits_clear" => no_end(Action::LimitsClear),
        _ => no_end(Action::BreakerReset),
    }
}

async fn act(place: &Place, target: &str, code: &str, why: &Why) -> anyhow::Result<ExitCode> {
    act_with(place, target, code, why, Levels::default()).await
}

async fn act_with(
    place: &Place,
    target: &str,
    code: &str,
    why: &Why,
    levels: Levels,
) -> anyhow::Result<ExitCode> {
    if let Some(base) = &place.local {
        let mut body = json!({"action": code, "reason": why.reason});
        for (name, value) in [
            ("workspace_daily", levels.workspace_daily),
            ("per_hour", levels.per_hour),
            ("burst_limit", levels.burst_limit),
        ] {
            if let Some(v) = value {
                body[name] = v.into();
            }
        }
        if let Some(t) = &why.until {
            body["until"] = t.clone().into();
        }
        if let Some(d) = &why.for_ {
            body["for"] = d.clone().into();
        }
        if let Some(by) = &why.by {
            body["by"] = by.clone().into();
        }
        let answer = call(place, base, &format!("/api/levers/{target}"), Some(&body)).await?;
        return Ok(applied(place, &answer));
    }
    if why.by.is_some() {
        bail!(
            "--by is for --local only: against the state table the audit names your IAM principal"
        );
    }
    let gateways = gateways(place)?;
    let ids: Vec<&str> = gateways.iter().map(String::as_str).collect();
    let now = SystemClock.now_ms();
    let target = if target == "all" {
        Target::All
    } else {
        Target::Gateway(target.to_owned())
    };
    let order = Order {
        target,
        action: action_of(code, until_of(why, now)?, levels)?,
        by: crate::identity::who().await,
        reason: why.reason.clone(),
    };
    let store = store(place).await;
    match levers::apply(&store, &order, &ids, now).await {
        Ok(a) => {
            let answer = json!({
                "target": order.target.name(),
                "action": order.action.code(),
                "by": order.by,
                "seq": a.seq,
                "before": a.before,
                "after": a.after,
            });
            Ok(applied(place, &answer))
        }
        Err(e @ LeverError::Invalid { .. }) => bail!("{e}"),
        Err(e) => Err(anyhow::Error::new(e).context(format!("table {}", store.table()))),
    }
}

fn applied(place: &Place, answer: &Value) -> ExitCode {
    if place.json {
        println!("{answer:#}");
    } else {
        println!(
            "{} {}: done by {} (audit entry {})",
            answer["action"].as_str().unwrap_or("?"),
            answer["target"].as_str().unwrap_or("?"),
            answer["by"].as_str().unwrap_or("?"),
            answer["seq"]
        );
        println!("sender instances honour it from their next batch (seconds)");
    }
    ExitCode::SUCCESS
}

async fn status(place: &Place) -> anyhow::Result<ExitCode> {
    let answer = if let Some(base) = &place.local {
        call(place, base, "/api/levers", None).await?
    } else {
        let gateways = gateways(place)?;
        let ids: Vec<&str> = gateways.iter().map(String::as_str).collect();
        let store = store(place).await;
        let (all, each) = levers::read(&store, &ids)
            .await
            .with_context(|| format!("reading table {}", store.table()))?;
        let now = SystemClock.now_ms();
        json!({
            "generated_at": now,
            "all": {"stored": all, "holding": LeverShown::holding(&all, &Levers::default(), now)},
            "gateways": ids.iter().zip(&each).map(|(id, l)| json!({
                "id": id,
                "stored": l,
                "holding": LeverShown::holding(&Levers::default(), l, now),
            })).collect::<Vec<_>>(),
        })
    };
    if place.json {
        println!("{answer:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let line = |name: &str, holding: &Value| {
        let list = holding.as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            println!("{name}: no lever holds");
        }
        for l in list {
            let until = l["until"].as_i64().map_or_else(
                || "until changed".to_owned(),
                |u| format!("until {}", format_rfc3339(u)),
            );
            println!(
                "{name}: {} by {} at {}, {until}: {}",
                l["lever"].as_str().unwrap_or("?"),
                l["by"].as_str().unwrap_or("?"),
                l["at"].as_i64().map(format_rfc3339).unwrap_or_default(),
                l["reason"].as_str().unwrap_or_default()
            );
        }
    };
    line("all sending", &answer["all"]["holding"]);
    for g in answer["gateways"].as_array().cloned().unwrap_or_default() {
        line(g["id"].as_str().unwrap_or("?"), &g["holding"]);
    }
    Ok(ExitCode::SUCCESS)
}

async fn history(place: &Place, target: &str, limit: usize) -> anyhow::Result<ExitCode> {
    if !(1..=levers::MAX_HISTORY).contains(&limit) {
        bail!("--limit {limit}: 1 to {}", levers::MAX_HISTORY);
    }
    let entries = if let Some(base) = &place.local {
        let answer = call(
            place,
            base,
            &format!("/api/levers/{target}/history?limit={limit}"),
            None,
        )
        .await?;
        answer["entries"].clone()
    } else {
        let gateways = gateways(place)?;
        let target = if target == "all" {
            Target::All
        } else if gateways.iter().any(|g| g == target) {
            Target::Gateway(target.to_owned())
        } else {
            bail!(
                "no gateway {target:?} in the config (gateways: {}; or `all`)",
                gateways.join(", ")
            );
        };
        let store = store(place).await;
        let entries = levers::history(&store, &target, limit)
            .await
            .with_context(|| format!("reading table {}", store.table()))?;
        serde_json::to_value(entries)?
    };
    if place.json {
        println!("{entries:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let list = entries.as_array().cloned().unwrap_or_default();
    for e in &list {
        println!(
            "#{} {} {} by {}: {}{}",
            e["seq"],
            e["at"].as_i64().map(format_rfc3339).unwrap_or_default(),
            e["action"].as_str().unwrap_or("?"),
            e["by"].as_str().unwrap_or("?"),
            e["reason"].as_str().unwrap_or_default(),
            e["until"]
                .as_i64()
                .map(|u| format!(" (until {})", format_rfc3339(u)))
                .unwrap_or_default()
        );
    }
    let n = list.len();
    println!("{n} entr{}", if n == 1 { "y" } else { "ies" });
    Ok(ExitCode::SUCCESS)
}

/// One request to a running `gateway serve`'s status API; its error answer becomes the error.
async fn call(
    place: &Place,
    base: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut request = match body {
        Some(b) => client.post(&url).json(b),
        None => client.get(&url),
    };
    match &place.token {
        Some(token) => request = request.bearer_auth(token),
        None => bail!(
            "--local needs the serve's token: --token or $GATEWAY_API_TOKEN (serve prints it)"
        ),
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("calling {url}"))?;
    let status = response.status();
    let answer: Value = response
        .json()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let message = answer["error"]["message"].as_str().unwrap_or("no message");
        bail!("{url} answered {status}: {message}");
    }
    Ok(answer)
}
