//! Shared rate limits (ARCHITECTURE §3.3): a pure decision core and its persistence on the
//! [`StateStore`](crate::state::StateStore) port.
//!
//! # Levels
//! | level | limit | window |
//! |---|---|---|
//! | [`LevelKind::SystemDaily`] | `config.system_limits.daily` | UTC day, all gateways |
//! | [`LevelKind::GatewayDaily`] | `rate_limits.workspace_daily` | UTC day |
//! | [`LevelKind::GatewayHourly`] | `rate_limits.per_hour` | UTC hour |
//! | [`LevelKind::GatewayBurst`] | `rate_limits.burst_limit` refilled at `burst_refill_per_second` | token bucket (GCRA) |
//! | [`LevelKind::SenderDaily`] | `per_user_daily`, overridden by `custom_user_limits` | UTC day, per sender per gateway |
//!
//! A `None` limit is unlimited and its level is skipped. Units are recipients: a message with
//! `n` recipients consumes `n` at every level at once, or nothing anywhere. A message larger
//! than a level's limit (or what one bucket write can take) can never pass and is refused with
//! [`Refusal::TooLarge`], not with a retry time that would lie.
//!
//! # Shape
//! [`plan`] fixes the windows for `now` and names the items; [`Pending`] is a pure state
//! machine that decides a batch's requests from what the process holds ([`Leases`]) and says
//! which conditional writes would get what it lacks; [`acquire_leased`] performs those writes
//! (all in flight together, no transaction) and, when a condition lost a race, lets the machine
//! decide again from the items the store returned (no read). [`acquire`] does the same holding
//! nothing between calls. This mirrors the governor crate's model: the store only offers "write
//! this if that still holds".
//!
//! # Key layout (one DynamoDB item per key; window ids are part of the key)
//! | key | attributes |
//! |---|---|
//! | `lim#sys#d#{YYYYMMDD}` | `n`: recipients counted that UTC day, all gateways |
//! | `lim#gw#{gateway}#d#{YYYYMMDD}` | `n`: gateway's day count; `hHH` (`h00`..`h23`): count of that UTC hour |
//! | `lim#gw#{gateway}#d#{YYYYMMDD}#u#{sender}` | `n`: the sender's day count on that gateway (sender lower-cased, only for senders that have a limit; [`sender_key`]) |
//! | `lim#gw#{gateway}#b#{capacity}#{interval_us}` | `tat_us`: the bucket's theoretical arrival time, epoch **microseconds** |
//!
//! Counted means admitted or held by a process for its next messages (see `lease.rs`). Every
//! item carries [`TTL_ATTRIBUTE`](crate::state::TTL_ATTRIBUTE) (epoch seconds): the end of its day plus one day for
//! counters; for the bucket, a bound on its `tat_us` plus one day (a bucket whose item is gone
//! is simply full, which is what its state said by then). TTL is cleanup only: a new window is
//! a new key, so no logic depends on deletion.
//!
//! Hours nest exactly in UTC days, so the hourly counter lives in the day item under an
//! attribute named after the hour. Each sender's counter is an item of its own, so no item
//! grows with the number of senders (before 2026-12-04 they were `u#{sender}` attributes of the
//! day item; see docs/STATE.md, "Rollout"). The bucket has no window; its capacity and emission
//! interval are in its key, so a config change starts a fresh (full) bucket instead of
//! misreading state kept under other parameters.
//!
//! The bucket's `tat_us` is the one timestamp in shared state that is not in milliseconds:
//! the emission interval `ceil(1e6 / rate)` µs keeps refill exact to the microsecond (a
//! millisecond interval would round 3/s to 334 ms or let 2000/s refill at 1000/s). Rounding
//! the interval up only ever refills slower than configured, never faster.
//!
//! # Writes
//! Counters: `ADD attr take` with condition `attribute_not_exists(attr) OR attr <= limit -
//! take` for every limited counter of the item (a take is never larger than the limit).
//! Concurrent writers that all fit never conflict; a condition fails only when the limit would
//! be exceeded.
//!
//! Bucket (GCRA, `T` = interval, `C` = capacity, σ = [`BucketQuota::slack_us`]; taking `k`
//! tokens gives them the theoretical arrival times `tat + T … tat + k·T`): when the bucket was
//! last seen with `tat >= now − σ`, `ADD tat_us k·T` with condition `tat_us >= now − σ AND
//! tat_us <= now + C·T − σ − k·T`; otherwise (full for longer, or no item) `SET tat_us = now +
//! k·T` with condition `attribute_not_exists(tat_us) OR tat_us < now − σ`. The conditions are
//! complementary below the upper bound, so a writer whose view is recent never loses on the
//! form; the stored `tat` only grows and never passes `now + C·T − σ`; a token is spent at most
//! σ after its theoretical arrival time, so over any span of time the bucket admits at most
//! `C + span / T + 1`. With σ = 0 (buckets under 100 tokens) these are the exact GCRA's forms.
//!
//! # Cost
//! A batch of 10 messages from 10 senders through one gateway with every level on costs one
//! conditional write per sender (1 WCU each: the items are about 100 bytes) and, when the
//! process holds too little, one per system, day or bucket lease, each taking about 10 batches
//! ahead: about 1.03 WCU per message for the limits, the same at any number of senders, in one
//! round trip, and no read. With the ledger's claim and mark: 3.03 WCU per message measured
//! (docs/STATE.md, "Limiter: quota leases", for the reasoning, the bounds on what a process may
//! hold, hot keys and the rollout from the earlier layout).
//!
//! Limits are not part of counter keys, on purpose: lowering `workspace_daily` at noon must
//! still count the morning's sends. A holding is tied to the limits it was taken under, so
//! it is not spent under others. Only the bucket, whose stored state means something different
//! under other parameters, keys on them.
//!
//! # Contention
//! [`acquire_leased`] decides at most [`MAX_ATTEMPTS`] times. Counter conditions fail only at a
//! limit, so contention there resolves in one retry (into a refusal or a smaller take). The
//! bucket's `SET` form can lose to a writer that refilled it first; after [`MAX_ATTEMPTS`] lost
//! races the requests still short are refused with [`Refusal::Contended`], a value carrying a
//! short retry time, never an error: the caller defers or tries the next gateway exactly as for
//! any refusal.

mod lease;
mod round;
mod service;

#[cfg(test)]
mod tests;

use std::borrow::{Borrow, Cow};
use std::sync::Arc;

use crate::clock::{DAY_MS, EpochMillis, HOUR_MS, utc_date_string, utc_day, utc_hour};
use crate::config::{Config, Gateway, Limit};
use crate::state::{Attr, CmpOp, Condition, Item, Key, get_n};

pub use lease::{LeasePolicy, Leases};
pub use round::{Outcome, Pending, Step};
pub use service::{
    CONTENDED_RETRY_MS, MAX_ATTEMPTS, RefundOutcome, acquire, acquire_leased, acquire_one,
    read_usage, refund,
};

/// Attribute of a day count (system and gateway items).
const COUNT_ATTR: &str = "n";
/// Attribute of the bucket's theoretical arrival time, epoch microseconds.
const TAT_ATTR: &str = "tat_us";
/// Seconds an item outlives the end of its window before TTL may remove it.
const TTL_MARGIN_S: i64 = 86_400;
/// Microseconds per millisecond.
const US_PER_MS: i64 = 1_000;
/// Longest emission interval kept (one year in µs): a rate slower than that is no refill at all
/// for any window the gateway cares about, and the bound keeps the arithmetic far from overflow.
const MAX_INTERVAL_US: i64 = 365 * 86_400 * 1_000_000;

/// A limit level (ARCHITECTURE §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LevelKind {
    /// System-wide recipients per UTC day, all gateways together.
    SystemDaily,
    /// One gateway's recipients per UTC day (`workspace_daily`).
    GatewayDaily,
    /// One gateway's recipients per UTC hour (`per_hour`).
    GatewayHourly,
    /// One gateway's token bucket (`burst_limit`, `burst_refill_per_second`).
    GatewayBurst,
    /// One sender's recipients per UTC day on one gateway (`per_user_daily` /
    /// `custom_user_limits`).
    SenderDaily,
}

impl LevelKind {
    /// A stable name for logs, metrics and the status API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SystemDaily => "system_daily",
            Self::GatewayDaily => "workspace_daily",
            Self::GatewayHourly => "per_hour",
            Self::GatewayBurst => "burst",
            Self::SenderDaily => "per_user_daily",
        }
    }
}

impl std::fmt::Display for LevelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Token-bucket parameters: `capacity` tokens (recipients), one token back every `interval_us`
/// microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketQuota {
    /// Largest burst, in recipients; positive.
    pub capacity: u64,
    /// Microseconds per token, `ceil(1e6 / refill_per_second)`, in `1..=` one year.
    pub interval_us: i64,
}

impl BucketQuota {
    /// The quota of a bucket of `capacity` refilling `refill_per_second` tokens per second.
    /// `None` when `capacity` is 0. A rate that is not positive (or not finite) never refills
    /// within a year; the interval is rounded up, so refill is never faster than configured.
    pub fn new(capacity: u64, refill_per_second: f64) -> Option<Self> {
        if capacity == 0 {
            return None;
        }
        let interval_us = if refill_per_second.is_finite() && refill_per_second > 0.0 {
            let raw = (1_000_000.0 / refill_per_second).ceil();
            // `as` saturates for floats beyond i64; the clamp bounds both ends.
            (raw as i64).clamp(1, MAX_INTERVAL_US)
        } else {
            MAX_INTERVAL_US
        };
        Some(Self {
            capacity,
            interval_us,
        })
    }

    /// How long after its theoretical arrival time a leased token may still be spent, in µs
    /// (σ, see `lease.rs`): 0 under 100 tokens (the exact bucket: nothing is taken ahead),
    /// otherwise a tenth of the bucket's span `C·T`, at most 1 s. Every write keeps
    /// `tat ≤ now + C·T − σ`, so the bucket's bound holds whatever instances hold.
    pub fn slack_us(&self) -> i64 {
        if self.capacity < 100 {
            return 0;
        }
        clamp_i64((self.capacity_i() * self.interval_i() / 10).min(1_000_000))
    }

    /// The most tokens one write can take: `C − σ/T`.
    pub fn usable(&self) -> u64 {
        let step = self.interval_us.max(1);
        let slack_tokens = (self.slack_us() + step - 1) / step;
        self.capacity
            .saturating_sub(u64::try_from(slack_tokens).unwrap_or(0))
            .max(1)
    }

    fn capacity_i(&self) -> i128 {
        i128::from(self.capacity)
    }

    fn interval_i(&self) -> i128 {
        i128::from(self.interval_us)
    }
}

/// The limits of one gateway at one instant: which levels apply, their windows and the item
/// keys to read. Built by [`plan`], or from [`HourKeys`] without formatting a key; valid for
/// the `now` it was built with.
#[derive(Debug, Clone)]
pub struct LimitPlan<'c> {
    gateway: &'c Gateway,
    now: EpochMillis,
    windows: Cow<'c, HourKeys>,
}

/// What [`plan`] derives from the config and the clock for one gateway, valid for a whole UTC
/// hour: the item keys and the hour's attribute name. A caller that plans the same gateways
/// many times (the send pipeline, for every batch) keeps these and makes each plan with
/// [`HourKeys::plan`], which formats no key and allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourKeys {
    /// `utc_hour` of the instant the keys were made for.
    hour: i64,
    system_daily: Limit,
    /// Each level's key, shared with the grants decided on them.
    named: Arc<LevelKeys>,
    /// The same keys in read order (system, day, bucket), for `get_many`.
    keys: Vec<Key>,
}

/// The item key of each limited level and the hour's counter attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LevelKeys {
    hour_attr: String,
    /// `lim#gw#{gateway}#d#{YYYYMMDD}#u#`: a sender's key is this and its address.
    sender_prefix: String,
    /// The gateway's day item when it may hold per-sender counters of the earlier layout
    /// (`u#{sender}`): read once per process and day (see docs/STATE.md, "Rollout").
    legacy_key: Option<Key>,
    system_key: Option<Key>,
    day_key: Option<Key>,
    bucket: Option<(Key, BucketQuota)>,
}

/// Plans the limits of `gateway` (with the system level of `config`) at `now`.
pub fn plan<'c>(config: &Config, gateway: &'c Gateway, now: EpochMillis) -> LimitPlan<'c> {
    LimitPlan {
        gateway,
        now,
        windows: Cow::Owned(hour_keys(config, gateway, now)),
    }
}

/// The keys of `gateway`'s limits (with the system level of `config`) for the UTC hour of
/// `now`.
pub fn hour_keys(config: &Config, gateway: &Gateway, now: EpochMillis) -> HourKeys {
    let day = utc_date_string(now);
    let rl = &gateway.rate_limits;
    let system_daily = config.system_limits.daily;
    let system_key = system_daily.map(|_| format!("lim#sys#d#{day}"));
    let any_sender_limit =
        rl.per_user_daily.is_some() || rl.custom_user_limits.values().any(Option::is_some);
    let day_key = (rl.workspace_daily.is_some() || rl.per_hour.is_some())
        .then(|| format!("lim#gw#{}#d#{day}", gateway.id));
    let legacy_key = any_sender_limit.then(|| format!("lim#gw#{}#d#{day}", gateway.id));
    let bucket = rl
        .burst_limit
        .and_then(|cap| BucketQuota::new(cap, rl.burst_refill_per_second))
        .map(|q| {
            let key = format!("lim#gw#{}#b#{}#{}", gateway.id, q.capacity, q.interval_us);
            (key, q)
        });
    let keys = [
        system_key.clone(),
        day_key.clone(),
        bucket.as_ref().map(|b| b.0.clone()),
    ]
    .into_iter()
    .flatten()
    .collect();
    HourKeys {
        hour: utc_hour(now),
        system_daily,
        named: Arc::new(LevelKeys {
            hour_attr: format!("h{:02}", utc_hour(now) - utc_day(now) * 24),
            sender_prefix: format!("lim#gw#{}#d#{day}#u#", gateway.id),
            legacy_key,
            system_key,
            day_key,
            bucket,
        }),
        keys,
    }
}

impl HourKeys {
    /// The plan of `gateway` (the one these keys were made for) at `now`, borrowing the keys;
    /// `None` when `now` falls outside their UTC hour (make new keys then).
    pub fn plan<'a>(&'a self, gateway: &'a Gateway, now: EpochMillis) -> Option<LimitPlan<'a>> {
        (utc_hour(now) == self.hour).then_some(LimitPlan {
            gateway,
            now,
            windows: Cow::Borrowed(self),
        })
    }

    /// The keys to read, as [`LimitPlan::keys`] names them.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The gateway's day item when it may hold per-sender counters of the earlier layout: a
    /// process reads it once per UTC day before deciding for a sender ([`Leases::legacy_unseen`]).
    pub fn legacy_key(&self) -> Option<&Key> {
        self.named.legacy_key.as_ref()
    }

    /// The system day key (the same for every gateway), when the system level is limited.
    pub fn system_key(&self) -> Option<&Key> {
        self.named.system_key.as_ref()
    }
}

impl LimitPlan<'_> {
    /// The keys to read, in the order [`usage`] expects their items. Empty when
    /// every level is unlimited. At most 3.
    pub fn keys(&self) -> &[Key] {
        &self.windows.keys
    }

    /// The instant the plan's windows were fixed at.
    pub fn now(&self) -> EpochMillis {
        self.now
    }

    /// The gateway planned for.
    pub fn gateway_id(&self) -> &str {
        &self.gateway.id
    }

    /// The daily limit of `sender` (any case) on this gateway.
    pub fn sender_limit(&self, sender: &str) -> Limit {
        self.gateway.rate_limits.per_user_daily_for(sender)
    }

    fn item<'i, I: Borrow<Item>>(
        &self,
        key: Option<&Key>,
        items: &'i [Option<I>],
    ) -> Option<&'i Item> {
        let key = key?;
        let slot = self.windows.keys.iter().position(|k| k == key)?;
        items.get(slot)?.as_ref().map(Borrow::borrow)
    }

    fn next_day(&self) -> EpochMillis {
        (utc_day(self.now) + 1) * DAY_MS
    }

    fn next_hour(&self) -> EpochMillis {
        (utc_hour(self.now) + 1) * HOUR_MS
    }

    fn day_ttl(&self) -> i64 {
        self.next_day() / 1_000 + TTL_MARGIN_S
    }

    fn now_us(&self) -> i128 {
        i128::from(self.now) * i128::from(US_PER_MS)
    }
}

/// One message asking for capacity: its sender and its recipient count (to + cc + bcc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'s> {
    /// The sender's bare address (`local@domain`, any case; as
    /// [`crate::address::EmailAddress::as_str`] gives it), never a display form: the per-sender
    /// counter is keyed by it, so `Name <addr>` would count apart from `addr`.
    pub sender: &'s str,
    /// Recipients; 0 is admitted without consuming anything.
    pub recipients: u64,
}

/// Why a request was refused. A refusal is an expected outcome; the router tries the next
/// gateway, then defers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The level has no room now; capacity returns at `retry_after` (next window start for a
    /// counter, the time enough tokens exist for the bucket). When several levels refuse, the
    /// one whose capacity returns last is named.
    Exhausted {
        /// The level that refused.
        level: LevelKind,
        /// Epoch ms at which that level can admit this request (if nothing else consumes).
        retry_after: EpochMillis,
    },
    /// The request is larger than the level's limit (or bucket capacity): it can never pass on
    /// this gateway with this config.
    TooLarge {
        /// The level that can never admit it.
        level: LevelKind,
        /// That level's limit, in recipients.
        limit: u64,
    },
    /// Conditional writes kept losing races with other instances ([`MAX_ATTEMPTS`]); nothing
    /// was consumed. Try again at `retry_after`.
    Contended {
        /// Epoch ms after which a retry is reasonable.
        retry_after: EpochMillis,
    },
}

impl Refusal {
    /// When capacity may return; `None` for [`Refusal::TooLarge`] (never).
    pub fn retry_after(&self) -> Option<EpochMillis> {
        match self {
            Self::Exhausted { retry_after, .. } | Self::Contended { retry_after } => {
                Some(*retry_after)
            }
            Self::TooLarge { .. } => None,
        }
    }

    /// The level that refused, if one did.
    pub fn level(&self) -> Option<LevelKind> {
        match self {
            Self::Exhausted { level, .. } | Self::TooLarge { level, .. } => Some(*level),
            Self::Contended { .. } => None,
        }
    }
}

/// What one admitted request consumed, item by item: exactly what [`refund`] gives back.
/// The item keys are shared with the plan's [`HourKeys`] (no key is copied per message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    recipients: u64,
    /// The keys charged; `None` when nothing was (no recipients).
    keys: Option<Arc<LevelKeys>>,
    /// Added to the system day count.
    system: i64,
    /// Added to the gateway's day count and to the hour's count.
    day: i64,
    /// The sender's own counter item, when the sender has a limit (charged `recipients`).
    sender_key: Option<Key>,
    /// Microseconds added to the bucket's `tat_us`.
    bucket_us: i64,
}

impl Grant {
    /// A grant of nothing.
    fn empty() -> Self {
        Self {
            recipients: 0,
            keys: None,
            system: 0,
            day: 0,
            sender_key: None,
            bucket_us: 0,
        }
    }

    /// Recipients admitted.
    pub fn recipients(&self) -> u64 {
        self.recipients
    }

    /// Every `(key, attribute, amount)` the grant added.
    fn charges(&self) -> impl Iterator<Item = (&Key, &str, i64)> {
        let keys = self.keys.as_deref();
        let system = keys
            .and_then(|k| k.system_key.as_ref())
            .filter(|_| self.system > 0)
            .map(|key| (key, COUNT_ATTR, self.system));
        let day = keys
            .and_then(|k| k.day_key.as_ref().map(|key| (key, k.hour_attr.as_str())))
            .filter(|_| self.day > 0);
        let day_charges = day
            .into_iter()
            .flat_map(move |(key, hour)| [(key, COUNT_ATTR, self.day), (key, hour, self.day)]);
        let sender = self
            .sender_key
            .as_ref()
            .map(|key| (key, COUNT_ATTR, to_i64(self.recipients)));
        let bucket = keys
            .and_then(|k| k.bucket.as_ref().map(|b| &b.0))
            .filter(|_| self.bucket_us > 0)
            .map(|key| (key, TAT_ATTR, self.bucket_us));
        system
            .into_iter()
            .chain(day_charges)
            .chain(sender)
            .chain(bucket)
    }
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted at every level; the grant records what was consumed.
    Admit(Grant),
    /// Refused; nothing consumed at any level.
    Refuse(Refusal),
}

impl Verdict {
    /// True when admitted.
    pub fn is_admitted(&self) -> bool {
        matches!(self, Self::Admit(_))
    }
}

/// Converts a count to the store's number type, saturating (no count reaches 2^63).
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `attribute_not_exists(attr) OR attr <= limit - total`; never true when `total` alone is
/// over the limit.
fn room(attr: Attr, limit: u64, total: i64) -> Condition {
    let most = to_i64(limit).saturating_sub(total);
    if most < 0 {
        return Condition::Or(Vec::new());
    }
    Condition::Or(vec![
        Condition::AttrNotExists(attr.clone()),
        Condition::cmp(attr, CmpOp::Le, most),
    ])
}

fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// Microseconds to milliseconds, rounding up (a retry time must not be early).
fn us_to_ms_ceil(us: i128) -> EpochMillis {
    clamp_i64(us.div_euclid(i128::from(US_PER_MS)) + i128::from(us.rem_euclid(1_000) != 0))
}

/// The item key of `sender`'s day counter (any case; lower-cased in the key) on gateway
/// `gateway_id` for the UTC day of `now`: `lim#gw#{gateway}#d#{YYYYMMDD}#u#{sender}`. One small
/// item per sender and day (attribute `n`), so a gateway's cost per message does not grow with
/// its number of senders.
pub fn sender_key(gateway_id: &str, sender: &str, now: EpochMillis) -> Key {
    format!(
        "lim#gw#{gateway_id}#d#{}#u#{}",
        utc_date_string(now),
        sender.to_ascii_lowercase()
    )
}

/// The use of `sender`'s daily limit on each gateway of `config` that limits it (config order),
/// read with one `get_many` of the senders' own items: no scan, whatever the number of senders.
/// Recipients leased by a running instance for its next messages count as used.
pub async fn read_sender_usage<S: crate::state::StateStore + ?Sized>(
    store: &S,
    config: &Config,
    sender: &str,
    now: EpochMillis,
) -> Result<Vec<(String, LevelUsage)>, crate::state::StoreError> {
    let limited: Vec<(&Gateway, u64)> = config
        .gateways
        .iter()
        .filter_map(|g| g.rate_limits.per_user_daily_for(sender).map(|l| (g, l)))
        .collect();
    if limited.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<Key> = limited
        .iter()
        .map(|(g, _)| sender_key(&g.id, sender, now))
        .collect();
    let items = store.get_many(&keys).await?;
    let resets_at = (utc_day(now) + 1) * DAY_MS;
    Ok(limited
        .into_iter()
        .zip(items)
        .map(|((g, limit), item)| {
            let used = item
                .as_ref()
                .and_then(|i| get_n(i, COUNT_ATTR))
                .map_or(0, |n| u64::try_from(n).unwrap_or(0));
            (
                g.id.clone(),
                LevelUsage {
                    level: LevelKind::SenderDaily,
                    used,
                    limit,
                    resets_at,
                },
            )
        })
        .collect())
}

/// Use of one limited level at the plan's instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelUsage {
    /// The level.
    pub level: LevelKind,
    /// Recipients consumed in the current window (for the bucket: tokens not yet refilled).
    pub used: u64,
    /// The level's limit (for the bucket: its capacity).
    pub limit: u64,
    /// Epoch ms at which the level is fully available again: the next window start for a
    /// counter, the time the bucket is full for the bucket.
    pub resets_at: EpochMillis,
}

impl LevelUsage {
    /// `(limit - used) / limit`, in `[0, 1]`.
    pub fn remaining_fraction(&self) -> f64 {
        if self.limit == 0 {
            return 0.0;
        }
        let left = self.limit.saturating_sub(self.used) as f64;
        (left / self.limit as f64).clamp(0.0, 1.0)
    }
}

/// The tightest level's remaining share, in `[0, 1]`: what `least_loaded` routing ranks by and
/// the status API shows. 1 when nothing is limited.
pub fn remaining_fraction(usages: &[LevelUsage]) -> f64 {
    usages
        .iter()
        .map(LevelUsage::remaining_fraction)
        .fold(1.0, f64::min)
}

/// Use of every limited level of the plan, from `items` aligned with [`LimitPlan::keys`]; the
/// sender level is included when `sender` is given with its own item
/// ([`sender_key`]; `None` = no item yet) and has a limit. Order: system, gateway daily,
/// hourly, burst, sender. To rank many gateways with one read, concatenate their plans' keys in
/// one `get_many` (at most 3 keys per gateway) and hand each plan its slice.
pub fn usage<I: Borrow<Item>>(
    plan: &LimitPlan<'_>,
    items: &[Option<I>],
    sender: Option<(&str, Option<&Item>)>,
) -> Vec<LevelUsage> {
    let mut out = Vec::new();
    let lookup = |key: Option<&Key>, attr: &str| plan.item(key, items).and_then(|i| get_n(i, attr));
    let sender = sender.map(|(s, item)| (s, item.and_then(|i| get_n(i, COUNT_ATTR))));
    each_usage(plan, lookup, sender, |u| out.push(u));
    out
}

/// [`remaining_fraction`] of the plan's levels (without the sender level) as this process last
/// saw the plan's items (through its own limit writes),
/// without reading them: what the router's view of a gateway ranks by. `None` when this
/// process has not written any of them yet (ranked as unknown).
pub fn remaining_seen(plan: &LimitPlan<'_>, leases: &Leases) -> Option<f64> {
    let book = leases.lock();
    let named = &plan.windows.named;
    let mut any = false;
    let lookup = |key: Option<&Key>, attr: &str| -> Option<i64> {
        let key = key?;
        if attr == TAT_ATTR {
            return book.buckets.get(key).and_then(|e| e.seen_tat);
        }
        let (window, counts) = book.counters.get(key)?.seen?;
        if attr == COUNT_ATTR {
            Some(counts[0])
        } else {
            // The hour's count belongs to the hour it was seen in.
            Some(if window == plan.windows.hour {
                counts[1]
            } else {
                0
            })
        }
    };
    for key in [named.system_key.as_ref(), named.day_key.as_ref()]
        .into_iter()
        .flatten()
    {
        any |= book.counters.get(key).is_some_and(|e| e.seen.is_some());
    }
    if let Some((key, _)) = &named.bucket {
        any |= book.buckets.get(key).is_some_and(|e| e.seen_tat.is_some());
    }
    if !any {
        return None;
    }
    let mut tightest = 1.0_f64;
    each_usage(plan, lookup, None, |u| {
        tightest = tightest.min(u.remaining_fraction());
    });
    Some(tightest)
}

/// Hands every limited level's use to `f`, in [`usage`]'s order; `lookup(key, attribute)`
/// gives a stored number, `sender` the sender and its count.
fn each_usage(
    plan: &LimitPlan<'_>,
    lookup: impl Fn(Option<&Key>, &str) -> Option<i64>,
    sender: Option<(&str, Option<i64>)>,
    mut f: impl FnMut(LevelUsage),
) {
    let rl = &plan.gateway.rate_limits;
    let count = |key: Option<&Key>, attr: &str| {
        lookup(key, attr).map_or(0, |n| u64::try_from(n).unwrap_or(0))
    };
    let mut counter = |level, limit: Limit, used, resets_at| {
        if let Some(limit) = limit {
            f(LevelUsage {
                level,
                used,
                limit,
                resets_at,
            });
        }
    };
    counter(
        LevelKind::SystemDaily,
        plan.windows.system_daily,
        count(plan.windows.named.system_key.as_ref(), COUNT_ATTR),
        plan.next_day(),
    );
    counter(
        LevelKind::GatewayDaily,
        rl.workspace_daily,
        count(plan.windows.named.day_key.as_ref(), COUNT_ATTR),
        plan.next_day(),
    );
    counter(
        LevelKind::GatewayHourly,
        rl.per_hour,
        count(
            plan.windows.named.day_key.as_ref(),
            &plan.windows.named.hour_attr,
        ),
        plan.next_hour(),
    );
    if let Some((key, q)) = &plan.windows.named.bucket {
        let now = plan.now_us();
        let tat = lookup(Some(key), TAT_ATTR).map_or(now, i128::from).max(now);
        let owed = tat - now;
        let used = (owed + q.interval_i() - 1) / q.interval_i();
        f(LevelUsage {
            level: LevelKind::GatewayBurst,
            used: u64::try_from(used.clamp(0, q.capacity_i())).unwrap_or(q.capacity),
            limit: q.capacity,
            resets_at: us_to_ms_ceil(tat),
        });
    }
    if let Some((sender, used)) = sender {
        let limit = plan.sender_limit(sender);
        let used = used.map_or(0, |n| u64::try_from(n).unwrap_or(0));
        if let Some(limit) = limit {
            f(LevelUsage {
                level: LevelKind::SenderDaily,
                used,
                limit,
                resets_at: plan.next_day(),
            });
        }
    }
}
