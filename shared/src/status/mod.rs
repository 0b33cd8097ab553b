//! The status API (ARCHITECTURE §2.3) and the status page: what operators read about the gateways and
//! the messages. The same code serves the `status` Lambda function and `gateway serve`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/gateways/status` | per gateway: id, type, enabled, priority, weight, health, breaker, usage of each limit with its reset time |
//! | `GET /api/gateways/health` | overall and per-gateway ability to send; 200 when at least one gateway can send now, 503 otherwise |
//! | `GET /api/gateways/metrics` | per gateway, for the rolling last hour and the UTC day so far: attempts, sent, failed, deferred, bounced, success rate, latency p50/p95, failovers, breaker trips, rate-limit hits |
//! | `GET /api/gateways/config` | the effective config, every secret redacted |
//! | `GET /api/messages/{id}` | the message's record of delivery |
//! | `GET /api/messages?recipient=&sender=&since=&until=&status=&campaign_id=&limit=&cursor=` | message search, newest first, a page at a time ([`crate::records::search`]) |
//! | `GET /api/senders/{address}/usage` | the sender's use of its daily limit on each gateway that limits it (an empty list when none does); the route's rustdoc is in `senders_route.rs` |
//! | `GET /status` | an HTML page for humans (see [`page`]) |
//! | `GET /api/levers`, `GET /api/levers/{target}/history`, `POST /api/levers/{target}` | the operator levers, their audit, an action ([`crate::levers`]; the routes' rustdoc is in `levers_routes.rs`) |
//!
//! `docs/openapi.yaml` describes every answer; the tests check the answers against it.
//! Authentication is the caller's: IAM on the deployed routes, a bearer token in
//! `gateway serve`. Errors are `{"error": {"code", "message"}}` and never carry internal detail:
//! a failed read is logged here with its cause and answered 503 with the source's name only.
//!
//! Health, breakers, usage and levers are read from shared state in one `BatchGetItem` (every
//! gateway's `hc#`, `brk#`, `ctl#` and limit items, and `ctl#all`); a sender's usage from its own
//! day items, by key ([`limiter::read_sender_usage`]); activity and records from the record of
//! delivery.
//!
//! A gateway **can send now** when it is enabled, no operator lever holds it back (a pause of
//! it or of all sending, a breaker forced open), its breaker is not open (or is forced closed),
//! it is not unhealthy where health is required (`routing.health_check_required`; the router's
//! rule), and none of its limits is used up (the system level included). A gateway that cannot
//! send says why.

mod levers_routes;
pub mod page;
mod senders_route;

pub use levers_routes::{Caller, HttpRequest, LeverShown};

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use crate::breaker::{self, BreakerView};
use crate::clock::{Clock, EpochMillis};
use crate::config::{Config, Gateway, redacted_document};
use crate::health::{self, HealthRecord};
use crate::levers;
use crate::limiter::{self, LevelUsage};
use crate::records::activity::{ActivityReader, GatewayActivity, HOUR_MS, HourActivity};
use crate::records::search::{MessageSearch, SearchError, SearchQuery};
use crate::records::{MessageRecord, RecordError, RecordReader};
use crate::state::{Item, Key, StateStore};

/// The record of delivery as the status API reads it.
pub trait StatusRecords: RecordReader + ActivityReader + MessageSearch {}

impl<T: RecordReader + ActivityReader + MessageSearch> StatusRecords for T {}

/// How many failed messages the status page lists.
pub const RECENT_FAILURES: usize = 20;

/// One day, in milliseconds.
const DAY_MS: EpochMillis = 24 * HOUR_MS;

/// An HTTP answer: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `application/json` or `text/html; charset=utf-8`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Reply {
    fn json(status: u16, body: &impl Serialize) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned()),
        }
    }

    /// An error answer: `{"error": {"code", "message"}}`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self::json(
            status,
            &json!({"error": {"code": code, "message": message.into()}}),
        )
    }

    fn html(status: u16, body: String) -> Self {
        Self {
            status,
            content_type: "text/html; charset=utf-8",
            body,
        }
    }
}

/// A gateway's health as shown: the stored verdict, or `UNKNOWN` / `DISABLED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthShown {
    /// `HEALTHY`, `DEGRADED`, `UNHEALTHY`, `DISABLED` (gateway or its health check off) or
    /// `UNKNOWN` (never checked).
    pub status: &'static str,
    /// The verdict is older than [`health::STALE_AFTER_INTERVALS`] intervals and not used for
    /// routing.
    pub stale: bool,
    /// When the latest probe ran (epoch ms).
    pub checked_at: Option<EpochMillis>,
    /// Consecutive failed probes.
    pub consecutive_failures: u32,
    /// Consecutive good probes.
    pub consecutive_successes: u32,
    /// Latency of the latest probe.
    pub latency_ms: Option<u64>,
    /// The latest probe failure.
    pub error: Option<String>,
}

/// A breaker as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerShown {
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
    /// End of the open period, when open.
    pub until: Option<EpochMillis>,
}

/// One limit level as shown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageShown {
    /// `system_daily`, `workspace_daily`, `per_hour` or `burst`.
    pub level: &'static str,
    /// Recipients counted in the current window (the bucket: tokens not yet refilled).
    pub used: u64,
    /// The limit (the bucket: its capacity).
    pub limit: u64,
    /// Share left, 0–1.
    pub remaining: f64,
    /// When the level is fully available again (epoch ms).
    pub resets_at: EpochMillis,
}

/// One gateway's live state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayStatus {
    /// Gateway id.
    pub id: String,
    /// Gateway type.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Display name.
    pub display_name: String,
    /// Enabled in the config.
    pub enabled: bool,
    /// Priority (lower first).
    pub priority: u32,
    /// Weight.
    pub weight: u32,
    /// Health.
    pub health: HealthShown,
    /// Breaker.
    pub breaker: BreakerShown,
    /// Each limited level (per-sender limits are per sender and not listed: see
    /// `GET /api/senders/{address}/usage`).
    pub usage: Vec<UsageShown>,
    /// Whether the router would send through it now.
    pub can_send: bool,
    /// Why not, when it cannot.
    pub blocked_by: Option<String>,
    /// The operator levers holding now (the pause of all sending included), most binding
    /// first.
    pub levers: Vec<LeverShown>,
}

/// Everything the status page shows.
#[derive(Debug, Clone)]
pub struct Overview {
    /// When it was read (epoch ms).
    pub now: EpochMillis,
    /// Live state of every gateway.
    pub gateways: Vec<GatewayStatus>,
    /// Hourly activity of the last 24 hours, by gateway id; `None` without a record of delivery.
    pub hourly: Option<HashMap<String, Vec<HourActivity>>>,
    /// The latest failed messages; `None` without a record of delivery.
    pub failures: Option<Vec<MessageRecord>>,
}

/// Why a read failed (logged with the cause, answered with the source only).
#[derive(Debug)]
enum Unavailable {
    State,
    Records,
}

impl Unavailable {
    fn reply(&self) -> Reply {
        match self {
            Self::State => Reply::error(
                503,
                "state_unavailable",
                "the shared state (health, breakers, usage) could not be read",
            ),
            Self::Records => Reply::error(
                503,
                "records_unavailable",
                "the record of delivery could not be read",
            ),
        }
    }
}

/// Serves the status routes.
#[derive(Debug, Clone)]
pub struct StatusApi {
    config: Arc<Config>,
    state: Arc<dyn StateStore>,
    records: Option<Arc<dyn StatusRecords>>,
    clock: Arc<dyn Clock>,
}

impl StatusApi {
    /// A status API over the effective config, shared state and, when there is one here, the
    /// record of delivery (without it the metrics and message routes answer 501).
    pub fn new(
        config: Arc<Config>,
        state: Arc<dyn StateStore>,
        records: Option<Arc<dyn StatusRecords>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            config,
            state,
            records,
            clock,
        }
    }

    /// Answers one request without a query string; see [`StatusApi::handle_request`].
    pub async fn handle(&self, method: &str, path: &str) -> Reply {
        self.handle_request(method, path, None).await
    }

    /// Answers one request without a body from an anonymous caller (every GET route); see
    /// [`StatusApi::serve`].
    pub async fn handle_request(&self, method: &str, path: &str, query: Option<&str>) -> Reply {
        self.serve(HttpRequest {
            method,
            path,
            query,
            body: b"",
            caller: &Caller::Anonymous,
        })
        .await
    }

    /// Answers one request. `path` is the request path without query string, `query` the raw
    /// query string (after `?`, still percent-encoded) if there was one; the transport has
    /// authenticated the caller. `GET /api/messages` and the lever history read the query; the
    /// other routes ignore it. Only `POST /api/levers/{target}` reads the body and the caller.
    pub async fn serve(&self, request: HttpRequest<'_>) -> Reply {
        let HttpRequest {
            method,
            path,
            query,
            body,
            caller,
        } = request;
        // Exactly `/api/messages`: with a trailing slash it is a message route without an id.
        let search = path == "/api/messages";
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        if path == "/api/levers" || path.starts_with("/api/levers/") {
            return self.lever_route(method, path, query, body, caller).await;
        }
        let known = matches!(
            path,
            "/api/gateways/status"
                | "/api/gateways/health"
                | "/api/gateways/metrics"
                | "/api/gateways/config"
                | "/api/messages"
                | "/status"
        ) || path.starts_with("/api/messages/")
            || path.starts_with(senders_route::PREFIX);
        if !known {
            return Reply::error(
                404,
                "not_found",
                "no such route; served: GET /api/gateways/{status,health,metrics,config}, \
                 GET /api/messages?…, GET /api/messages/{id}, GET /api/senders/{address}/usage, \
                 GET /api/levers, GET /api/levers/{target}/history, POST /api/levers/{target}, \
                 GET /status",
            );
        }
        if method != "GET" && method != "HEAD" {
            return Reply::error(405, "method_not_allowed", "use GET");
        }
        let answer = match path {
            "/api/gateways/status" => self.gateways_status().await,
            "/api/gateways/health" => self.gateways_health().await,
            "/api/gateways/metrics" => self.metrics().await,
            "/api/gateways/config" => Ok(Reply::json(200, &redacted_document(&self.config))),
            "/status" => self.page().await,
            "/api/messages" if search => self.search(query.unwrap_or("")).await,
            _ if path.starts_with(senders_route::PREFIX) => self.sender_route(path).await,
            _ => match path.strip_prefix("/api/messages/") {
                Some(id) => self.message(id).await,
                None => Ok(Reply::error(404, "not_found", "no such route")),
            },
        };
        answer.unwrap_or_else(|u| u.reply())
    }

    async fn lever_route(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
        caller: &Caller,
    ) -> Reply {
        let rest = path.strip_prefix("/api/levers").unwrap_or_default();
        let parts: Vec<&str> = rest.split('/').skip(1).collect();
        let get = method == "GET" || method == "HEAD";
        match (parts.as_slice(), get, method == "POST") {
            ([], true, _) => self.levers().await,
            ([target, "history"], true, _) => self.lever_history(target, query).await,
            ([target], _, true) => self.act(target, body, caller).await,
            ([] | [_, "history"], false, _) => Reply::error(405, "method_not_allowed", "use GET"),
            ([_], _, false) => Reply::error(405, "method_not_allowed", "use POST"),
            _ => Reply::error(
                404,
                "not_found",
                "lever routes: GET /api/levers, GET /api/levers/{target}/history, \
                 POST /api/levers/{target}",
            ),
        }
    }

    fn records(&self) -> Result<&Arc<dyn StatusRecords>, Reply> {
        self.records.as_ref().ok_or_else(|| {
            Reply::error(
                501,
                "records_not_here",
                "this process keeps no record of delivery; the recorder writes it to MySQL",
            )
        })
    }

    async fn read_gateways(&self, now: EpochMillis) -> Result<Vec<GatewayStatus>, Unavailable> {
        let config = &self.config;
        // The levers first: a limit override changes the limits shown (and may name another
        // bucket item).
        let ids: Vec<&str> = config.gateways.iter().map(|g| g.id.as_str()).collect();
        let (all, each) = levers::read(self.state.as_ref(), &ids)
            .await
            .map_err(|error| {
                tracing::warn!(error_kind = "state", %error, "status read of the levers failed");
                Unavailable::State
            })?;
        let effective: Vec<Option<Gateway>> = config
            .gateways
            .iter()
            .zip(&each)
            .map(|(g, l)| l.limits_at(now).map(|o| o.applied_to(g)))
            .collect();
        let plans: Vec<_> = config
            .gateways
            .iter()
            .zip(&effective)
            .map(|(g, o)| limiter::plan(config, o.as_ref().unwrap_or(g), now))
            .collect();
        // Distinct keys (the system day item is every gateway's), read in chunks of 100.
        let mut keys: Vec<Key> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (g, plan) in config.gateways.iter().zip(&plans) {
            let own = [health::key(&g.id), breaker::key(&g.id)];
            for key in own.into_iter().chain(plan.keys().iter().cloned()) {
                if seen.insert(key.clone()) {
                    keys.push(key);
                }
            }
        }
        let items = crate::state::get_all(self.state.as_ref(), &keys)
            .await
            .map_err(|error| {
                tracing::warn!(error_kind = "state", %error, "status read of shared state failed");
                Unavailable::State
            })?;
        let items: HashMap<&Key, Option<Item>> = keys.iter().zip(items).collect();
        let item = |k: &Key| items.get(k).cloned().flatten();
        Ok(config
            .gateways
            .iter()
            .zip(&plans)
            .zip(&each)
            .map(|((g, plan), own)| {
                let record = HealthRecord::from_item(item(&health::key(&g.id)).as_ref());
                let breaker = breaker::view(item(&breaker::key(&g.id)).as_ref(), now);
                let limits: Vec<Option<Item>> = plan.keys().iter().map(&item).collect();
                let usage = limiter::usage(plan, &limits, None);
                let levers = LeverShown::holding(&all, own, now);
                gateway_status(config, g, record.as_ref(), breaker, &usage, levers, now)
            })
            .collect())
    }

    async fn gateways_status(&self) -> Result<Reply, Unavailable> {
        let now = self.clock.now_ms();
        let gateways = self.read_gateways(now).await?;
        Ok(Reply::json(
            200,
            &json!({"generated_at": now, "gateways": gateways}),
        ))
    }

    async fn gateways_health(&self) -> Result<Reply, Unavailable> {
        let now = self.clock.now_ms();
        let gateways = self.read_gateways(now).await?;
        let sending = gateways.iter().filter(|g| g.can_send).count();
        let body = json!({
            "status": if sending > 0 { "ok" } else { "unavailable" },
            "generated_at": now,
            "gateways_can_send": sending,
            "gateways": gateways.iter().map(|g| json!({
                "id": g.id,
                "type": g.kind,
                "enabled": g.enabled,
                "health": g.health.status,
                "breaker": g.breaker.state,
                "can_send": g.can_send,
                "blocked_by": g.blocked_by,
            })).collect::<Vec<_>>(),
        });
        Ok(Reply::json(if sending > 0 { 200 } else { 503 }, &body))
    }

    async fn metrics(&self) -> Result<Reply, Unavailable> {
        let records = match self.records() {
            Ok(r) => r,
            Err(reply) => return Ok(reply),
        };
        let now = self.clock.now_ms();
        let hour_from = now - HOUR_MS;
        let day_from = now.div_euclid(DAY_MS) * DAY_MS;
        let (last_hour, today) = futures::future::join(
            records.activity(hour_from, now + 1),
            records.activity(day_from, now + 1),
        )
        .await;
        let failed = |error: RecordError| {
            tracing::warn!(error_kind = "records", %error, "status read of activity failed");
            Unavailable::Records
        };
        let (last_hour, today) = (last_hour.map_err(failed)?, today.map_err(failed)?);
        let empty = GatewayActivity::default();
        // Configured gateways first (config order), then any the record knows from before.
        let mut ids: Vec<&str> = self.config.gateways.iter().map(|g| g.id.as_str()).collect();
        for id in last_hour.keys().chain(today.keys()) {
            if !ids.contains(&id.as_str()) {
                ids.push(id);
            }
        }
        let gateways: Vec<Value> = ids
            .iter()
            .map(|id| {
                let kind = self
                    .config
                    .gateways
                    .iter()
                    .find(|g| g.id == *id)
                    .map(|g| g.kind.as_str());
                json!({
                    "id": id,
                    "type": kind,
                    "last_hour": window(last_hour.get(*id).unwrap_or(&empty)),
                    "today": window(today.get(*id).unwrap_or(&empty)),
                })
            })
            .collect();
        Ok(Reply::json(
            200,
            &json!({
                "generated_at": now,
                "windows": {
                    "last_hour": {"from": hour_from, "to": now},
                    "today": {"from": day_from, "to": now},
                },
                "gateways": gateways,
            }),
        ))
    }

    async fn message(&self, id: &str) -> Result<Reply, Unavailable> {
        let records = match self.records() {
            Ok(r) => r,
            Err(reply) => return Ok(reply),
        };
        let id = match percent_decode(id) {
            Some(id) if !id.is_empty() && !id.contains('/') => id,
            _ => {
                return Ok(Reply::error(
                    400,
                    "invalid_id",
                    "the message id in the path is empty or not valid UTF-8",
                ));
            }
        };
        match records.message(&id).await {
            Ok(Some(record)) => Ok(Reply::json(200, &record)),
            Ok(None) => Ok(Reply::error(
                404,
                "not_found",
                format!("no record of message {id:?}"),
            )),
            Err(error) => {
                tracing::warn!(error_kind = "records", %error, "status read of a record failed");
                Err(Unavailable::Records)
            }
        }
    }

    async fn search(&self, query: &str) -> Result<Reply, Unavailable> {
        let records = match self.records() {
            Ok(r) => r,
            Err(reply) => return Ok(reply),
        };
        let query = match parse_query(query).and_then(|pairs| {
            SearchQuery::from_params(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        }) {
            Ok(q) => q,
            Err(e @ SearchError::Unbounded) => {
                return Ok(Reply::error(400, "unbounded_search", e.to_string()));
            }
            Err(e) => return Ok(Reply::error(400, "invalid_parameter", e.to_string())),
        };
        match records.search(&query).await {
            Ok(page) => Ok(Reply::json(200, &page)),
            Err(error) => {
                tracing::warn!(error_kind = "records", %error, "message search failed");
                Err(Unavailable::Records)
            }
        }
    }

    async fn read_overview(&self) -> Result<Overview, Unavailable> {
        let now = self.clock.now_ms();
        let gateways = self.read_gateways(now).await?;
        let (hourly, failures) = match &self.records {
            None => (None, None),
            Some(records) => {
                let (hourly, failures) = futures::future::join(
                    records.hourly(now - 23 * HOUR_MS),
                    records.recent_failures(RECENT_FAILURES),
                )
                .await;
                let failed = |error: RecordError| {
                    tracing::warn!(error_kind = "records", %error, "status page read failed");
                    Unavailable::Records
                };
                (
                    Some(hourly.map_err(failed)?.into_iter().collect()),
                    Some(failures.map_err(failed)?),
                )
            }
        };
        Ok(Overview {
            now,
            gateways,
            hourly,
            failures,
        })
    }

    async fn page(&self) -> Result<Reply, Unavailable> {
        let overview = self.read_overview().await?;
        Ok(Reply::html(200, page::render(&overview)))
    }
}

fn window(a: &GatewayActivity) -> Value {
    json!({
        "attempts": a.attempts,
        "sent": a.sent,
        "failed": a.failed,
        "deferred": a.deferred,
        "bounced": a.bounced,
        "success_rate": a.success_rate(),
        "latency_ms_p50": a.latency_percentile(0.50),
        "latency_ms_p95": a.latency_percentile(0.95),
        "failovers": a.failovers,
        "breaker_trips": a.breaker_trips,
        "rate_limit_hits": a.rate_limit_hits,
    })
}

fn gateway_status(
    config: &Config,
    g: &Gateway,
    record: Option<&HealthRecord>,
    breaker: BreakerView,
    usage: &[LevelUsage],
    levers: Vec<LeverShown>,
    now: EpochMillis,
) -> GatewayStatus {
    // A breaker forced closed is shown (and routed to) as closed whatever is stored.
    let breaker = if levers.iter().any(|l| l.lever == "breaker_forced_closed") {
        BreakerView::Closed
    } else {
        breaker
    };
    let settings = &g.health_check;
    let health = HealthShown {
        status: match record {
            _ if !g.enabled || !settings.enabled => "DISABLED",
            None => "UNKNOWN",
            Some(r) => health::status_name(r.status),
        },
        // A DISABLED record is written once and then left alone: it cannot be stale.
        stale: g.enabled
            && settings.enabled
            && record.is_some_and(|r| {
                r.status != crate::events::HealthStatus::Disabled && r.is_stale(settings, now)
            }),
        checked_at: record.map(|r| r.checked_at),
        consecutive_failures: record.map_or(0, |r| r.consecutive_failures),
        consecutive_successes: record.map_or(0, |r| r.consecutive_successes),
        latency_ms: record.and_then(|r| r.latency_ms),
        error: record.and_then(|r| r.error.clone()),
    };
    let breaker = match breaker {
        BreakerView::Closed => BreakerShown {
            state: "closed",
            until: None,
        },
        BreakerView::Open { until } => BreakerShown {
            state: "open",
            until: Some(until),
        },
        BreakerView::HalfOpen => BreakerShown {
            state: "half_open",
            until: None,
        },
    };
    let usage: Vec<UsageShown> = usage
        .iter()
        .map(|u| UsageShown {
            level: u.level.as_str(),
            used: u.used,
            limit: u.limit,
            remaining: u.remaining_fraction(),
            resets_at: u.resets_at,
        })
        .collect();
    let routing = health::routing_health(record, settings, now);
    // Only these hold a gateway back; a breaker forced closed or a limit override do not.
    let held = levers
        .iter()
        .find(|l| matches!(l.lever, "all_paused" | "paused" | "breaker_forced_open"));
    let blocked_by = if !g.enabled {
        Some("disabled in the config".to_owned())
    } else if let Some(l) = held {
        Some(l.describe())
    } else if let Some(until) = breaker.until {
        Some(format!("breaker open until {}", page::time(until)))
    } else if routing == crate::router::Health::Unhealthy && config.routing.health_check_required {
        Some("unhealthy (routing.health_check_required)".to_owned())
    } else {
        usage.iter().find(|u| u.used >= u.limit).map(|u| {
            format!(
                "{} limit used up until {}",
                u.level,
                page::time(u.resets_at)
            )
        })
    };
    GatewayStatus {
        id: g.id.clone(),
        kind: g.kind.as_str(),
        display_name: g.display_name.clone(),
        enabled: g.enabled,
        priority: g.priority,
        weight: g.weight,
        health,
        breaker,
        usage,
        can_send: blocked_by.is_none(),
        blocked_by,
        levers,
    }
}

/// Splits a raw query string into decoded `(name, value)` pairs. `+` is kept as it is (RFC 3986
/// gives it no meaning in a query, and addresses such as `patient+results@x` and times such as
/// `…T10:00:00+01:00` contain it): a space is `%20`. A malformed escape is an error naming
/// its parameter.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, SearchError> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = percent_decode(name).ok_or_else(|| SearchError::Invalid {
                parameter: "query string".to_owned(),
                reason: "a parameter name is not percent-encoded UTF-8".to_owned(),
            })?;
            let value = percent_decode(value).ok_or_else(|| SearchError::Invalid {
                parameter: name.clone(),
                reason: "the value is not percent-encoded UTF-8".to_owned(),
            })?;
            Ok((name, value))
        })
        .collect()
}

/// Decodes `%XX` escapes of a path segment; `None` when the result is not UTF-8 or an escape is
/// malformed.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests;
