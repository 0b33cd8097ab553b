//! `gateway messages search`: finds messages in the record of delivery by recipient, sender,
//! time, status or campaign, newest first, a page at a time.
//!
//! Two ways in, one set of rules (`gateway_core::records::search`):
//! - `--api URL [--token T]`: a running `gateway serve` (its bearer token, `$GATEWAY_API_TOKEN`),
//!   the same `GET /api/messages` support and scripts use. Its refusals are printed as served.
//! - `--database-url URL|env:NAME`: the MySQL record directly (the deployed stack's status API
//!   is behind IAM, whose SigV4 signing this tool does not do; a read-only database user is the
//!   simpler credential for an operator). `env:NAME` keeps the password out of the process list.
//!
//! Options are checked before anything is contacted, with the API's rules, so both ways refuse
//! the same searches with the same messages.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use gateway_core::clock::format_rfc3339;
use gateway_core::records::mysql::{MysqlRecords, PoolSettings};
use gateway_core::records::search::{MessageSearch, SearchPage, SearchQuery};

/// Bound on each request to the API.
const API_TIMEOUT: Duration = Duration::from_secs(30);

/// `gateway messages` subcommands.
#[derive(Debug, Subcommand)]
pub enum MessagesCommand {
    /// Find messages by recipient, sender, time window, status or campaign (newest first).
    Search(SearchArgs),
}

/// `gateway messages search` options.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["api", "database_url"])))]
pub struct SearchArgs {
    /// A recipient address (To, Cc or Bcc), any case.
    #[arg(long)]
    recipient: Option<String>,
    /// The sender address, any case.
    #[arg(long)]
    sender: Option<String>,
    /// Messages created at or after this time: RFC 3339 (2026-12-04T09:00:00Z) or epoch ms.
    #[arg(long)]
    since: Option<String>,
    /// Messages created before this time: RFC 3339 or epoch ms.
    #[arg(long)]
    until: Option<String>,
    /// queued, deferred, failed, rejected or sent.
    #[arg(long)]
    status: Option<String>,
    /// The campaign id (exact).
    #[arg(long)]
    campaign_id: Option<String>,
    /// Messages per page, 1 to 100 (default 50).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Continue from this cursor (printed after a page).
    #[arg(long)]
    cursor: Option<String>,
    /// Follow the cursors and print every page.
    #[arg(long)]
    all: bool,
    /// A running `gateway serve` (base URL, e.g. http://127.0.0.1:8025).
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// Bearer token of the API ($GATEWAY_API_TOKEN).
    #[arg(
        long,
        env = "GATEWAY_API_TOKEN",
        hide_env_values = true,
        requires = "api"
    )]
    token: Option<String>,
    /// The MySQL record of delivery: a URL, or `env:NAME` to read it from a variable.
    #[arg(long, value_name = "URL|env:NAME")]
    database_url: Option<String>,
}

impl SearchArgs {
    /// The search parameters as `name=value` pairs (the API's names).
    fn params(&self, cursor: Option<&str>) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut add = |name: &'static str, value: Option<String>| {
            if let Some(v) = value {
                out.push((name, v));
            }
        };
        add("recipient", self.recipient.clone());
        add("sender", self.sender.clone());
        add("since", self.since.clone());
        add("until", self.until.clone());
        add("status", self.status.clone());
        add("campaign_id", self.campaign_id.clone());
        add("limit", self.limit.map(|n| n.to_string()));
        add("cursor", cursor.map(str::to_owned));
        out
    }
}

/// Runs a `gateway messages` subcommand.
pub fn run(command: MessagesCommand) -> anyhow::Result<ExitCode> {
    let MessagesCommand::Search(args) = command;
    // Checked here first: a refused search never reaches the database or the API.
    if let Err(e) = SearchQuery::from_params(
        args.params(args.cursor.as_deref())
            .iter()
            .map(|(n, v)| (*n, v.as_str())),
    ) {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(search(&args))
}

enum Source {
    Api {
        client: reqwest::Client,
        base: String,
        token: Option<String>,
    },
    Database(MysqlRecords),
}

impl Source {
    async fn page(&self, args: &SearchArgs, cursor: Option<&str>) -> anyhow::Result<SearchPage> {
        let params = args.params(cursor);
        match self {
            Self::Database(db) => {
                let query = SearchQuery::from_params(params.iter().map(|(n, v)| (*n, v.as_str())))?;
                db.search(&query)
                    .await
                    .map_err(|e| anyhow::anyhow!("reading the record of delivery: {e}"))
            }
            Self::Api {
                client,
                base,
                token,
            } => {
                let query: Vec<String> = params
                    .iter()
                    .map(|(n, v)| format!("{n}={}", encode(v)))
                    .collect();
                let url = format!("{base}/api/messages?{}", query.join("&"));
                let mut request = client.get(&url);
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
                let response = request
                    .send()
                    .await
                    .with_context(|| format!("GET {base}/api/messages (is it running?)"))?;
                let status = response.status();
                let answer: serde_json::Value = response.json().await.unwrap_or_default();
                if !status.is_success() {
                    anyhow::bail!(
                        "refused ({status}): {}",
                        answer["error"]["message"].as_str().unwrap_or("no detail")
                    );
                }
                serde_json::from_value(answer).context("reading the API's answer")
            }
        }
    }
}

async fn search(args: &SearchArgs) -> anyhow::Result<ExitCode> {
    let source = match (&args.api, &args.database_url) {
        (Some(base), _) => Source::Api {
            client: reqwest::Client::builder()
                .timeout(API_TIMEOUT)
                .build()
                .context("building the HTTP client")?,
            base: base.trim_end_matches('/').to_owned(),
            token: args.token.clone(),
        },
        (None, Some(given)) => {
            let url = match given.strip_prefix("env:") {
                Some(name) => std::env::var(name)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .with_context(|| format!("--database-url env:{name}: {name} is unset"))?,
                None => given.clone(),
            };
            Source::Database(
                MysqlRecords::connect(&url, &PoolSettings::default())
                    .map_err(|e| anyhow::anyhow!("--database-url: {e}"))?,
            )
        }
        (None, None) => anyhow::bail!("give --api or --database-url"),
    };
    let mut cursor = args.cursor.clone();
    let mut shown = 0usize;
    loop {
        let page = source.page(args, cursor.as_deref()).await?;
        if shown == 0 || !page.messages.is_empty() {
            print_page(&page, shown == 0);
        }
        shown += page.messages.len();
        cursor = page.next_cursor;
        match (&cursor, args.all) {
            (Some(_), true) => continue,
            (Some(next), false) => {
                println!("next cursor: {next}  (--cursor {next}, or --all for every page)");
            }
            (None, _) => println!("{shown} message(s); no more pages"),
        }
        return Ok(ExitCode::SUCCESS);
    }
}

fn print_page(page: &SearchPage, header: bool) {
    if header {
        println!(
            "{:<20}  {:<32}  {:<8}  {:<18}  {:<28}  recipients",
            "created (UTC)", "message id", "status", "gateway", "sender"
        );
    }
    for m in &page.messages {
        let recipients: Vec<String> = m
            .recipients
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r.address,
                    serde_json::to_value(r.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )
            })
            .collect();
        println!(
            "{:<20}  {:<32}  {:<8}  {:<18}  {:<28}  {}",
            format_rfc3339(m.created_at),
            m.message_id,
            m.status.as_str(),
            m.gateway_id.as_deref().unwrap_or("-"),
            m.sender,
            recipients.join(", ")
        );
    }
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters, so `+` and
/// `@` arrive as typed).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
