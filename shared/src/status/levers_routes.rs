//! The operator lever routes of the status API ([`crate::levers`]):
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/levers` | the levers of all sending and of every gateway, as stored, with what holds now |
//! | `GET /api/levers/{target}/history?limit=` | the target's audit entries, newest first (at most 100) |
//! | `POST /api/levers/{target}` | an action (`{"action", "reason", "until" or "for"}`) taken by the caller; the applied change and its audit number |
//!
//! `{target}` is `all` or a gateway id (`suppression` for the history of operators' changes to
//! the suppression list, which has no lever). The caller is who the audit names: the IAM principal API
//! Gateway authenticated on the deployed routes, or for `gateway serve` the holder of its token
//! (with the name they give in `by`, marked as such).

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Reply, StatusApi, parse_query, percent_decode};
use crate::clock::{EpochMillis, parse_rfc3339};
use crate::duration::parse_duration;
use crate::levers::{self, Action, BreakerMode, LeverError, Levers, Order, Target};

/// Who sends a request, as the transport authenticated them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An IAM principal (its ARN), authenticated by API Gateway's IAM authorizer.
    Iam(String),
    /// The holder of `gateway serve`'s bearer token (a local run).
    Token,
    /// Nobody known: actions are refused.
    Anonymous,
}

/// One HTTP request to the status API: what the transport (the Lambda handler, `gateway serve`)
/// passes on.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The method.
    pub method: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    /// The raw query string (after `?`, still percent-encoded), if any.
    pub query: Option<&'a str>,
    /// The body (empty for GET).
    pub body: &'a [u8],
    /// Who sent it.
    pub caller: &'a Caller,
}

/// A lever holding a gateway now, as shown by the status API and page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeverShown {
    /// `all_paused`, `paused`, `breaker_forced_open` or `breaker_forced_closed`.
    pub lever: &'static str,
    /// Who set it.
    pub by: String,
    /// When (epoch ms).
    pub at: EpochMillis,
    /// Why.
    pub reason: String,
    /// Until when (epoch ms); `null`: until an operator changes it.
    pub until: Option<EpochMillis>,
}

impl LeverShown {
    fn new(lever: &'static str, hold: &levers::Hold) -> Self {
        Self {
            lever,
            by: hold.by.clone(),
            at: hold.at,
            reason: hold.reason.clone(),
            until: hold.until,
        }
    }

    /// The levers holding a gateway at `now`: the pause of all sending, its own pause, its
    /// forced breaker, in that order.
    pub fn holding(all: &Levers, own: &Levers, now: EpochMillis) -> Vec<Self> {
        let mut shown = Vec::new();
        if let Some(h) = all.pause_at(now) {
            shown.push(Self::new("all_paused", h));
        }
        if let Some(h) = own.pause_at(now) {
            shown.push(Self::new("paused", h));
        }
        if let Some(b) = own.breaker_at(now) {
            let lever = match b.mode {
                BreakerMode::Open => "breaker_forced_open",
                BreakerMode::Closed => "breaker_forced_closed",
            };
            shown.push(Self::new(lever, &b.hold));
        }
        if let Some(l) = own.limits_at(now) {
            shown.push(Self::new("limits_overridden", &l.hold));
        }
        shown
    }

    /// One line for a person: what, by whom, since and until when, why.
    pub fn describe(&self) -> String {
        let what = match self.lever {
            "all_paused" => "all sending paused",
            "paused" => "paused",
            "breaker_forced_open" => "breaker forced open",
            "limits_overridden" => "limits overridden",
            _ => "breaker forced closed",
        };
        let until = self.until.map_or_else(
            || "until changed".to_owned(),
            |u| format!("until {}", super::page::time(u)),
        );
        format!(
            "{what} by {} at {}, {until}: {}",
            self.by,
            super::page::time(self.at),
            self.reason
        )
    }
}

/// The body of `POST /api/levers/{target}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action: String,
    reason: String,
    /// RFC 3339 end.
    #[serde(default)]
    until: Option<String>,
    /// Length from now (`30m`, `4h`), instead of `until`.
    #[serde(default, rename = "for")]
    for_: Option<String>,
    /// With a token only: the name the token holder gives.
    #[serde(default)]
    by: Option<String>,
    /// `limits_set`: the day's limit of the whole gateway.
    #[serde(default)]
    workspace_daily: Option<u64>,
    /// `limits_set`: the hour's limit.
    #[serde(default)]
    per_hour: Option<u64>,
    /// `limits_set`: the burst (and refill per second).
    #[serde(default)]
    burst_limit: Option<u64>,
}

/// Largest body of an action.
const MAX_BODY: usize = 4096;

fn bad(field: &str, message: impl Into<String>) -> Reply {
    Reply::error(
        400,
        "invalid_action",
        format!("{field}: {}", message.into()),
    )
}

fn parse_action(body: &ActionBody, now: EpochMillis) -> Result<Action, Reply> {
    let until = match (&body.until, &body.for_) {
        (Some(_), Some(_)) => return Err(bad("until", "give `until` or `for`, not both")),
        (Some(t), None) => Some(parse_rfc3339(t).ok_or_else(|| {
            bad(
                "until",
                format!("{t:?} is not an RFC 3339 time (2026-12-04T15:00:00Z)"),
            )
        })?),
        (None, Some(d)) => {
            let d = parse_duration(d).map_err(|e| bad("for", e.to_string()))?;
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            Some(now.saturating_add(ms))
        }
        (None, None) => None,
    };
    let levels =
        body.workspace_daily.is_some() || body.per_hour.is_some() || body.burst_limit.is_some();
    if levels && body.action != "limits_set" {
        return Err(bad(
            "action",
            "workspace_daily, per_hour and burst_limit go with limits_set",
        ));
    }
    let timed = |what: &str| -> Result<(), Reply> {
        match until {
            Some(_) => Err(bad("until", format!("{what} takes no end"))),
            None => Ok(()),
        }
    };
    Ok(match body.action.as_str() {
        "pause" => Action::Pause { until },
        "resume" => {
            timed("resume")?;
            Action::Resume
        }
        "breaker_open" => Action::Breaker {
            mode: BreakerMode::Open,
            until,
        },
        "breaker_closed" => Action::Breaker {
            mode: BreakerMode::Closed,
            until,
        },
        "breaker_auto" => {
            timed("breaker_auto")?;
            Action::BreakerAuto
        }
        "breaker_reset" => {
            timed("breaker_reset")?;
            Action::BreakerReset
        }
        "limits_set" => Action::Limits {
            workspace_daily: body.workspace_daily,
            per_hour: body.per_hour,
            burst_limit: body.burst_limit,
            until: until
                .ok_or_else(|| bad("until", "a limit override needs an end: `until` or `for`"))?,
        },
        "limits_clear" => {
            timed("limits_clear")?;
            Action::LimitsClear
        }
        other => {
            return Err(bad(
                "action",
                format!(
                    "unknown action {other:?}; expected pause, resume, breaker_open, \
                     breaker_closed, breaker_auto, breaker_reset, limits_set or limits_clear"
                ),
            ));
        }
    })
}

impl StatusApi {
    fn target(&self, raw: &str) -> Result<Target, Reply> {
        let name = percent_decode(raw).unwrap_or_default();
        if name == "all" {
            return Ok(Target::All);
        }
        if name == "suppression" {
            return Ok(Target::Suppression);
        }
        if self.config.gateways.iter().any(|g| g.id == name) {
            return Ok(Target::Gateway(name));
        }
        Err(Reply::error(
            404,
            "unknown_target",
            format!(
                "no gateway {name:?} in the config; targets: all, suppression (history only), {}",
                self.gateway_ids().join(", ")
            ),
        ))
    }

    fn gateway_ids(&self) -> Vec<&str> {
        self.config.gateways.iter().map(|g| g.id.as_str()).collect()
    }

    /// `GET /api/levers`.
    pub(super) async fn levers(&self) -> Reply {
        let now = self.clock.now_ms();
        let ids = self.gateway_ids();
        match levers::read(self.state.as_ref(), &ids).await {
            Ok((all, each)) => {
                let gateways: Vec<_> = ids
                    .iter()
                    .zip(&each)
                    .map(|(id, l)| {
                        json!({
                            "id": id,
                            "stored": l,
                            "holding": LeverShown::holding(&Levers::default(), l, now),
                        })
                    })
                    .collect();
                Reply::json(
                    200,
                    &json!({
                        "generated_at": now,
                        "all": {
                            "stored": all,
                            "holding": LeverShown::holding(&all, &Levers::default(), now),
                        },
                        "gateways": gateways,
                    }),
                )
            }
            Err(error) => {
                tracing::warn!(error_kind = "state", %error, "levers could not be read");
                super::Unavailable::State.reply()
            }
        }
    }

    /// `GET /api/levers/{target}/history`.
    pub(super) async fn lever_history(&self, raw: &str, query: Option<&str>) -> Reply {
        let target = match self.target(raw) {
            Ok(t) => t,
            Err(reply) => return reply,
        };
        let mut limit = 20;
        for (name, value) in parse_query(query.unwrap_or("")).unwrap_or_default() {
            match (name.as_str(), value.parse::<usize>()) {
                ("limit", Ok(n)) if (1..=levers::MAX_HISTORY).contains(&n) => limit = n,
                _ => {
                    return Reply::error(
                        400,
                        "invalid_parameter",
                        format!(
                            "{name}: the only parameter is limit, 1 to {}",
                            levers::MAX_HISTORY
                        ),
                    );
                }
            }
        }
        match levers::history(self.state.as_ref(), &target, limit).await {
            Ok(entries) => Reply::json(200, &json!({"target": target.name(), "entries": entries})),
            Err(error) => {
                tracing::warn!(error_kind = "state", %error, "lever history could not be read");
                super::Unavailable::State.reply()
            }
        }
    }

    /// `POST /api/levers/{target}`.
    pub(super) async fn act(&self, raw: &str, body: &[u8], caller: &Caller) -> Reply {
        let target = match self.target(raw) {
            Ok(t) => t,
            Err(reply) => return reply,
        };
        if body.len() > MAX_BODY {
            return Reply::error(413, "body_too_large", format!("at most {MAX_BODY} bytes"));
        }
        let body: ActionBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return bad("body", e.to_string()),
        };
        let by = match (caller, &body.by) {
            (Caller::Iam(arn), None) => arn.clone(),
            (Caller::Iam(_), Some(_)) => {
                return bad(
                    "by",
                    "the caller is the authenticated IAM principal; leave `by` out",
                );
            }
            (Caller::Token, Some(name)) => format!("{} (gateway serve token)", name.trim()),
            (Caller::Token, None) => "gateway serve token holder".to_owned(),
            (Caller::Anonymous, _) => {
                return Reply::error(
                    403,
                    "no_caller",
                    "levers change only for an authenticated caller (IAM on the deployed API)",
                );
            }
        };
        let now = self.clock.now_ms();
        let action = match parse_action(&body, now) {
            Ok(a) => a,
            Err(reply) => return reply,
        };
        let order = Order {
            target,
            action,
            by,
            reason: body.reason,
        };
        match levers::apply(self.state.as_ref(), &order, &self.gateway_ids(), now).await {
            Ok(applied) => Reply::json(
                200,
                &json!({
                    "target": order.target.name(),
                    "action": order.action.code(),
                    "by": order.by,
                    "seq": applied.seq,
                    "before": applied.before,
                    "after": applied.after,
                }),
            ),
            Err(e @ LeverError::Invalid { .. }) => {
                Reply::error(400, "invalid_action", e.to_string())
            }
            Err(e @ LeverError::Contended(_)) => Reply::error(409, "contended", e.to_string()),
            Err(LeverError::Store(error)) => {
                tracing::warn!(error_kind = "state", %error, "lever action not applied");
                Reply::error(
                    503,
                    "state_unavailable",
                    "the shared state could not be written; nothing was changed",
                )
            }
        }
    }
}
