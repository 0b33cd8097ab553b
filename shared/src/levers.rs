//! Operator levers: what an on-call engineer changes without a deploy, kept in the shared state
//! and honoured by every sender instance from its next batch.
//!
//! | lever | effect |
//! |---|---|
//! | pause a gateway | no call to it; its messages fail over as from an open breaker, and a message with nowhere else to go is deferred |
//! | pause all sending | no call to any gateway; every message is deferred |
//! | force a breaker open | as a pause, shown as a forced breaker |
//! | force a breaker closed | sends are admitted whatever the stored breaker says (no permit write) |
//! | breaker auto | back to the stored breaker |
//! | reset a breaker | the stored breaker becomes closed and clean (next generation) |
//!
//! Each lever may carry an end (`until`); past it the lever no longer holds, without a write.
//! A message held by a lever with an end is deferred to that end; one held by a lever without an
//! end backs off as after any failure (docs/RELIABILITY.md: 30 s doubling, so an indefinite
//! pause of a day costs a message about 12 of its `OutboundMaxReceiveCount` receives).
//!
//! # Stored form
//! One item per target: `ctl#all` (pause all) and `ctl#gw#{gateway}` ([`key`]), with `pause`
//! and `breaker` (JSON text of a [`Hold`], the breaker's with its `mode`) and `seq`, the number
//! of actions taken on the target. The sender reads them in the batch's one `BatchGetItem`
//! beside the breaker and health items (no extra request; `ctl#all` at most once a second per
//! process, [`crate::pipeline::ALL_LEVERS_TTL_MS`]). An item that does not decode holds:
//! a lever someone set is not ignored because it cannot be read.
//!
//! # Audit
//! Every action is one transaction: the target's item with `seq + 1` (conditional on the `seq`
//! read, so two operators acting at once are serialised, neither lost) and an audit item
//! `ctl#log#{target}#{seq}` ([`log_key`]) holding who, when, what, why and the levers before and
//! after; a breaker reset adds the breaker item's write. So an action is applied with its audit
//! entry or not at all, and [`history`] reads a target's last entries by key (no scan). The
//! transaction carries a client token, so a retry after a lost answer is applied once.

use serde::{Deserialize, Serialize};

use crate::breaker;
use crate::clock::{DAY_MS, EpochMillis, format_rfc3339};
use crate::router::{Held, HeldBy};
use crate::state::{
    CmpOp, Condition, Item, Key, StateStore, StoreError, TransactOutcome, Value, Write, WriteOp,
    get_all, get_n, get_s,
};

/// Prefix of every lever and audit key.
pub const KEY_PREFIX: &str = "ctl#";
/// The key of the pause-all lever.
pub const ALL_KEY: &str = "ctl#all";
/// Longest `reason` accepted, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Latest end a lever may be given, from now: a lever meant for longer is set without an end.
pub const MAX_UNTIL_MS: EpochMillis = 30 * DAY_MS;
/// Most entries [`history`] returns.
pub const MAX_HISTORY: usize = 100;

const PAUSE: &str = "pause";
const BREAKER: &str = "breaker";
const LIMITS: &str = "limits";
const SEQ: &str = "seq";

/// What a lever acts on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// Every gateway (pause all sending).
    All,
    /// One gateway, by id.
    Gateway(String),
    /// The suppression list: no lever, only the audit of operators' additions and removals
    /// ([`audit_writes`], used by `suppression::operator_change`).
    Suppression,
}

impl Target {
    /// `all` or the gateway id, as the CLI and the API name it.
    pub fn name(&self) -> &str {
        match self {
            Self::All => "all",
            Self::Gateway(id) => id,
            Self::Suppression => "suppression",
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("all sending"),
            Self::Gateway(id) => write!(f, "gateway {id}"),
            Self::Suppression => f.write_str("the suppression list"),
        }
    }
}

/// The store key of a target's levers: `ctl#all` or `ctl#gw#{gateway}`.
pub fn key(target: &Target) -> Key {
    match target {
        Target::All => ALL_KEY.to_owned(),
        Target::Gateway(id) => format!("ctl#gw#{id}"),
        Target::Suppression => "ctl#sup".to_owned(),
    }
}

/// The store key of a target's audit entry number `seq` (1 for its first action).
pub fn log_key(target: &Target, seq: i64) -> Key {
    match target {
        Target::All => format!("ctl#log#all#{seq}"),
        Target::Gateway(id) => format!("ctl#log#gw#{id}#{seq}"),
        Target::Suppression => format!("ctl#log#sup#{seq}"),
    }
}

/// Who set a lever, when, why, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The operator: an IAM principal ARN, or the user a local tool ran as.
    pub by: String,
    /// When it was set (epoch ms).
    pub at: EpochMillis,
    /// The operator's reason.
    pub reason: String,
    /// When it stops holding (epoch ms); `None`: until changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<EpochMillis>,
}

impl Hold {
    fn holds_at(&self, now: EpochMillis) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

/// The mode a breaker is forced into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerMode {
    /// No call; the gateway's messages fail over or wait.
    Open,
    /// Every send admitted, whatever the stored breaker says.
    Closed,
}

impl BreakerMode {
    /// `open` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// A forced breaker: its mode and who forced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForcedBreaker {
    /// The forced mode.
    pub mode: BreakerMode,
    /// Who, when, why, until when.
    #[serde(flatten)]
    pub hold: Hold,
}

/// A gateway's limits overridden until an end (always given: an override is temporary; the
/// config's limits apply again after it, without a write). A level left out keeps the config's
/// limit. `burst_limit` also sets the refill to `burst_limit` per second (the config's default
/// rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitOverride {
    /// Per UTC day, whole gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_daily: Option<u64>,
    /// Per UTC hour, whole gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_hour: Option<u64>,
    /// Token bucket capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_limit: Option<u64>,
    /// Who, when, why, until when.
    #[serde(flatten)]
    pub hold: Hold,
}

impl LimitOverride {
    /// `gateway` with these limits in place of its own.
    pub fn applied_to(&self, gateway: &crate::config::Gateway) -> crate::config::Gateway {
        let mut g = gateway.clone();
        let rl = &mut g.rate_limits;
        if let Some(n) = self.workspace_daily {
            rl.workspace_daily = Some(n);
        }
        if let Some(n) = self.per_hour {
            rl.per_hour = Some(n);
        }
        if let Some(n) = self.burst_limit {
            rl.burst_limit = Some(n);
            #[allow(clippy::cast_precision_loss, reason = "limits are far below 2^52")]
            {
                rl.burst_refill_per_second = n as f64;
            }
        }
        g
    }
}

/// The levers of one target, as stored (a lever past its end is still here; see
/// [`Levers::pause_at`] and [`Levers::breaker_at`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Levers {
    /// The pause, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause: Option<Hold>,
    /// The forced breaker, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<ForcedBreaker>,
    /// The limit override, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitOverride>,
    /// Actions taken on the target so far (the number of its last audit entry).
    pub seq: i64,
}

/// A lever attribute that does not decode holds, with this as its reason.
fn unreadable(attr: &str) -> Hold {
    Hold {
        by: "unknown".to_owned(),
        at: 0,
        reason: format!("the stored {attr} lever does not decode; treated as set"),
        until: None,
    }
}

impl Levers {
    /// Decodes a stored item; `None` is a target without levers. Never fails: an attribute
    /// that does not decode is a lever that holds (a pause, a breaker forced open).
    pub fn from_item(item: Option<&Item>) -> Self {
        let Some(item) = item else {
            return Self::default();
        };
        let pause = item.get(PAUSE).map(|v| {
            v.as_s()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_else(|| unreadable(PAUSE))
        });
        let breaker = item.get(BREAKER).map(|v| {
            v.as_s()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_else(|| ForcedBreaker {
                    mode: BreakerMode::Open,
                    hold: unreadable(BREAKER),
                })
        });
        // An override that cannot be read is not applied: the config's limits are the safe
        // side (the provider's own limits are what they were written for).
        let limits = item.get(LIMITS).and_then(|v| {
            let parsed = v.as_s().and_then(|s| serde_json::from_str(s).ok());
            if parsed.is_none() {
                tracing::warn!(
                    error_kind = "levers",
                    "a stored limit override does not decode; the config's limits apply"
                );
            }
            parsed
        });
        Self {
            pause,
            breaker,
            limits,
            seq: get_n(item, SEQ).unwrap_or(0),
        }
    }

    fn to_item(&self) -> Item {
        let mut item = Item::new();
        if let Some(p) = &self.pause {
            item.insert(PAUSE.into(), Value::S(json(p)));
        }
        if let Some(b) = &self.breaker {
            item.insert(BREAKER.into(), Value::S(json(b)));
        }
        if let Some(l) = &self.limits {
            item.insert(LIMITS.into(), Value::S(json(l)));
        }
        item.insert(SEQ.into(), Value::N(self.seq));
        item
    }

    /// The pause holding at `now`.
    pub fn pause_at(&self, now: EpochMillis) -> Option<&Hold> {
        self.pause.as_ref().filter(|h| h.holds_at(now))
    }

    /// The forced breaker holding at `now`.
    pub fn breaker_at(&self, now: EpochMillis) -> Option<&ForcedBreaker> {
        self.breaker.as_ref().filter(|b| b.hold.holds_at(now))
    }

    /// Whether a send through this gateway skips the stored breaker at `now`.
    pub fn forced_closed(&self, now: EpochMillis) -> bool {
        self.breaker_at(now)
            .is_some_and(|b| b.mode == BreakerMode::Closed)
    }

    /// The limit override holding at `now`.
    pub fn limits_at(&self, now: EpochMillis) -> Option<&LimitOverride> {
        self.limits.as_ref().filter(|l| l.hold.holds_at(now))
    }

    /// Whether any lever holds at `now`.
    pub fn any_at(&self, now: EpochMillis) -> bool {
        self.pause_at(now).is_some()
            || self.breaker_at(now).is_some()
            || self.limits_at(now).is_some()
    }

    /// The levers after `action` taken with `hold`.
    fn after(&self, action: &Action, hold: Hold) -> Self {
        let mut next = self.clone();
        next.seq = self.seq.saturating_add(1);
        match action {
            Action::Pause { .. } => next.pause = Some(hold),
            Action::Resume => next.pause = None,
            Action::Breaker { mode, .. } => {
                next.breaker = Some(ForcedBreaker { mode: *mode, hold });
            }
            Action::BreakerAuto | Action::BreakerReset => next.breaker = None,
            Action::Limits {
                workspace_daily,
                per_hour,
                burst_limit,
                ..
            } => {
                next.limits = Some(LimitOverride {
                    workspace_daily: *workspace_daily,
                    per_hour: *per_hour,
                    burst_limit: *burst_limit,
                    hold,
                });
            }
            Action::LimitsClear => next.limits = None,
        }
        next
    }
}

/// What holds a gateway back at `now`, for the router: the pause of all sending first, then
/// the gateway's own pause, then a breaker forced open. `None` when it may send.
pub fn held(all: &Levers, gateway: &Levers, now: EpochMillis) -> Option<Held> {
    let (by, until) = if let Some(h) = all.pause_at(now) {
        (HeldBy::AllPaused, h.until)
    } else if let Some(h) = gateway.pause_at(now) {
        (HeldBy::Paused, h.until)
    } else {
        let b = gateway
            .breaker_at(now)
            .filter(|b| b.mode == BreakerMode::Open)?;
        (HeldBy::BreakerForcedOpen, b.hold.until)
    };
    Some(Held { by, until })
}

/// An operator's action on a target's levers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pause (a gateway, or all sending), until `until` or until resumed.
    Pause {
        /// End of the pause (epoch ms).
        until: Option<EpochMillis>,
    },
    /// End a pause.
    Resume,
    /// Force a gateway's breaker open or closed, until `until` or until set back to auto.
    Breaker {
        /// The forced mode.
        mode: BreakerMode,
        /// End of the forcing (epoch ms).
        until: Option<EpochMillis>,
    },
    /// Back to the stored breaker.
    BreakerAuto,
    /// The stored breaker becomes closed and clean (and any forcing ends).
    BreakerReset,
    /// Override the gateway's limits until `until` (required: an override is temporary).
    Limits {
        /// Per UTC day, whole gateway.
        workspace_daily: Option<u64>,
        /// Per UTC hour, whole gateway.
        per_hour: Option<u64>,
        /// Token bucket capacity (and refill per second).
        burst_limit: Option<u64>,
        /// End of the override (epoch ms).
        until: EpochMillis,
    },
    /// End a limit override: the config's limits apply.
    LimitsClear,
}

impl Action {
    /// The audit's name of the action.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Pause { .. } => "pause",
            Self::Resume => "resume",
            Self::Breaker {
                mode: BreakerMode::Open,
                ..
            } => "breaker_open",
            Self::Breaker {
                mode: BreakerMode::Closed,
                ..
            } => "breaker_closed",
            Self::BreakerAuto => "breaker_auto",
            Self::BreakerReset => "breaker_reset",
            Self::Limits { .. } => "limits_set",
            Self::LimitsClear => "limits_clear",
        }
    }

    fn until(&self) -> Option<EpochMillis> {
        match self {
            Self::Pause { until } | Self::Breaker { until, .. } => *until,
            Self::Limits { until, .. } => Some(*until),
            _ => None,
        }
    }
}

/// One operator's request: what, on what, by whom, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// What it acts on.
    pub target: Target,
    /// The action.
    pub action: Action,
    /// The operator (see [`Hold::by`]).
    pub by: String,
    /// Why (required: the audit's reader at the next incident review needs it).
    pub reason: String,
}

/// An order refused or not applied.
#[derive(Debug, thiserror::Error)]
pub enum LeverError {
    /// The order itself is wrong (named field); nothing was written.
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault (`reason`, `until`, `target`, `by`).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Other actions on the same target kept winning; nothing was written by this one.
    #[error("{0}'s levers changed under every attempt; nothing written, try again")]
    Contended(String),
    /// The shared state could not be read or written; nothing was written (a transaction).
    #[error("shared state unavailable: {0}")]
    Store(#[from] StoreError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> LeverError {
    LeverError::Invalid {
        field,
        message: message.into(),
    }
}

impl Order {
    /// Checks the order at `now` against the gateways of the config (`gateways`).
    pub fn check(&self, gateways: &[&str], now: EpochMillis) -> Result<(), LeverError> {
        if let Target::Gateway(id) = &self.target
            && !gateways.contains(&id.as_str())
        {
            return Err(invalid(
                "target",
                format!(
                    "no gateway {id:?} in the config (gateways: {}; or `all`)",
                    gateways.join(", ")
                ),
            ));
        }
        if self.target == Target::Suppression {
            return Err(invalid(
                "target",
                "levers act on a gateway or on all sending",
            ));
        }
        if self.target == Target::All
            && !matches!(self.action, Action::Pause { .. } | Action::Resume)
        {
            return Err(invalid(
                "target",
                "breakers are per gateway; only pause and resume act on all sending",
            ));
        }
        if let Action::Limits {
            workspace_daily,
            per_hour,
            burst_limit,
            ..
        } = &self.action
        {
            if workspace_daily.is_none() && per_hour.is_none() && burst_limit.is_none() {
                return Err(invalid(
                    "limits",
                    "name at least one of workspace_daily, per_hour, burst_limit",
                ));
            }
            if *burst_limit == Some(0) {
                return Err(invalid(
                    "burst_limit",
                    "must be at least 1 (0 would stop sending: pause instead)",
                ));
            }
        }
        let reason = self.reason.trim();
        if reason.is_empty() {
            return Err(invalid("reason", "required: say why, for the audit"));
        }
        if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
            return Err(invalid(
                "reason",
                format!("at most {MAX_REASON_CHARS} characters on one line"),
            ));
        }
        if self.by.trim().is_empty() || self.by.chars().count() > 300 {
            return Err(invalid(
                "by",
                "the operator must be named (at most 300 characters)",
            ));
        }
        if let Some(until) = self.action.until() {
            if until <= now {
                return Err(invalid(
                    "until",
                    format!("{} is not in the future", format_rfc3339(until)),
                ));
            }
            if until - now > MAX_UNTIL_MS {
                return Err(invalid(
                    "until",
                    "at most 30 days ahead; leave it out for a lever held until changed",
                ));
            }
        }
        Ok(())
    }
}

/// What an applied order did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The target's audit entry number of this action.
    pub seq: i64,
    /// The levers before.
    pub before: Levers,
    /// The levers after.
    pub after: Levers,
}

/// Attempts before [`apply`] gives up with [`LeverError::Contended`].
const ATTEMPTS: usize = 5;

/// Applies `order` at `now` (checked by [`Order::check`] first): the target's levers and its
/// audit entry in one transaction, with the breaker's reset for [`Action::BreakerReset`].
pub async fn apply(
    store: &dyn StateStore,
    order: &Order,
    gateways: &[&str],
    now: EpochMillis,
) -> Result<Applied, LeverError> {
    order.check(gateways, now)?;
    let lever_key = key(&order.target);
    let reset = match (&order.action, &order.target) {
        (Action::BreakerReset, Target::Gateway(id)) => Some(id.as_str()),
        _ => None,
    };
    let mut keys = vec![lever_key.clone()];
    keys.extend(reset.map(breaker::key));
    for _ in 0..ATTEMPTS {
        let items = store.get_many(&keys).await?;
        let stored = items.first().and_then(Option::as_ref);
        let before = Levers::from_item(stored);
        let hold = Hold {
            by: order.by.trim().to_owned(),
            at: now,
            reason: order.reason.trim().to_owned(),
            until: order.action.until(),
        };
        let after = before.after(&order.action, hold.clone());
        let guard = match stored {
            None => Condition::ItemNotExists,
            Some(item) => match item.get(SEQ) {
                Some(seq) => Condition::cmp(SEQ, CmpOp::Eq, seq.clone()),
                None => Condition::AttrNotExists(SEQ.into()),
            },
        };
        let mut writes = vec![
            Write {
                key: lever_key.clone(),
                op: WriteOp::Put(after.to_item()),
                condition: guard,
            },
            Write {
                key: log_key(&order.target, after.seq),
                op: WriteOp::Put(entry_item(order, &hold, &before, &after)),
                condition: Condition::ItemNotExists,
            },
        ];
        if let Some(id) = reset {
            writes.push(breaker::BreakerState::reset_write(
                id,
                items.get(1).and_then(Option::as_ref),
            ));
        }
        match store.transact(writes).await? {
            TransactOutcome::Committed => {
                tracing::info!(
                    target_name = %order.target.name(),
                    action = order.action.code(),
                    by = %hold.by,
                    reason = %hold.reason,
                    seq = after.seq,
                    "operator lever applied"
                );
                return Ok(Applied {
                    seq: after.seq,
                    before,
                    after,
                });
            }
            TransactOutcome::Cancelled(_) => continue,
        }
    }
    Err(LeverError::Contended(order.target.to_string()))
}

fn json<T: Serialize>(value: &T) -> String {
    // Plain structs of strings and numbers: serialisation cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

fn entry_item(order: &Order, hold: &Hold, before: &Levers, after: &Levers) -> Item {
    let mut item = log_item(
        &order.target,
        order.action.code(),
        hold,
        after.seq,
        &json(before),
        &json(after),
    );
    if let Some(until) = hold.until {
        item.insert("until".into(), Value::N(until));
    }
    item
}

fn log_item(
    target: &Target,
    action: &str,
    hold: &Hold,
    seq: i64,
    before: &str,
    after: &str,
) -> Item {
    let mut item = Item::new();
    item.insert("target".into(), Value::from(target.name()));
    item.insert("action".into(), Value::from(action));
    item.insert("by".into(), Value::S(hold.by.clone()));
    item.insert("at".into(), Value::N(hold.at));
    item.insert("reason".into(), Value::S(hold.reason.clone()));
    item.insert(SEQ.into(), Value::N(seq));
    item.insert("before".into(), Value::S(before.to_owned()));
    item.insert("after".into(), Value::S(after.to_owned()));
    item
}

/// The writes that audit an operator's action outside the levers (a suppression added or
/// removed by hand) on `target`, whose item was read as `stored`: the target's count, raised
/// (conditional on the count read), and the action's entry. For the caller's own transaction,
/// beside the write the action makes, so that the action is applied with its entry or not at
/// all. Returns the entry's number and the writes.
pub fn audit_writes(
    target: &Target,
    stored: Option<&Item>,
    action: &str,
    hold: &Hold,
    before: &str,
    after: &str,
) -> (i64, Vec<Write>) {
    let mut levers = Levers::from_item(stored);
    let guard = match stored.and_then(|i| i.get(SEQ)) {
        None if stored.is_none() => Condition::ItemNotExists,
        None => Condition::AttrNotExists(SEQ.into()),
        Some(seq) => Condition::cmp(SEQ, CmpOp::Eq, seq.clone()),
    };
    levers.seq = levers.seq.saturating_add(1);
    let writes = vec![
        Write {
            key: key(target),
            op: WriteOp::Put(levers.to_item()),
            condition: guard,
        },
        Write {
            key: log_key(target, levers.seq),
            op: WriteOp::Put(log_item(target, action, hold, levers.seq, before, after)),
            condition: Condition::ItemNotExists,
        },
    ];
    (levers.seq, writes)
}

/// One audit entry: an action taken on a target's levers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Its number among the target's actions.
    pub seq: i64,
    /// `all` or the gateway id.
    pub target: String,
    /// [`Action::code`].
    pub action: String,
    /// The operator.
    pub by: String,
    /// When (epoch ms).
    pub at: EpochMillis,
    /// Why.
    pub reason: String,
    /// The end given, if any (epoch ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<EpochMillis>,
    /// The levers before and after, as stored (JSON text).
    pub before: String,
    /// See `before`.
    pub after: String,
}

impl Entry {
    fn from_item(item: &Item) -> Option<Self> {
        let s = |a: &str| get_s(item, a).map(str::to_owned);
        Some(Self {
            seq: get_n(item, SEQ)?,
            target: s("target")?,
            action: s("action")?,
            by: s("by")?,
            at: get_n(item, "at")?,
            reason: s("reason").unwrap_or_default(),
            until: get_n(item, "until"),
            before: s("before").unwrap_or_default(),
            after: s("after").unwrap_or_default(),
        })
    }
}

/// The levers of all sending and of each of `gateways`, in one read (chunks of 100 keys).
pub async fn read(
    store: &dyn StateStore,
    gateways: &[&str],
) -> Result<(Levers, Vec<Levers>), StoreError> {
    let mut keys = vec![ALL_KEY.to_owned()];
    keys.extend(
        gateways
            .iter()
            .map(|g| key(&Target::Gateway((*g).to_owned()))),
    );
    let items = get_all(store, &keys).await?;
    let mut levers = items.iter().map(|i| Levers::from_item(i.as_ref()));
    let all = levers.next().unwrap_or_default();
    Ok((all, levers.collect()))
}

/// The last `limit` (at most [`MAX_HISTORY`]) audit entries of `target`, newest first: the
/// target's item says how many there are, then one read of their keys.
pub async fn history(
    store: &dyn StateStore,
    target: &Target,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let seq = Levers::from_item(store.get(&key(target)).await?.as_ref()).seq;
    let limit = i64::try_from(limit.min(MAX_HISTORY)).unwrap_or(0);
    let keys: Vec<Key> = (seq.saturating_sub(limit).saturating_add(1).max(1)..=seq)
        .rev()
        .map(|n| log_key(target, n))
        .collect();
    let items = get_all(store, &keys).await?;
    Ok(items
        .iter()
        .flatten()
        .filter_map(Entry::from_item)
        .collect())
}

#[cfg(test)]
mod tests;
