//! One limit decision over quota leases, as a pure state machine: [`Pending::begin`] says which
//! conditional writes to make (none when the leases cover the batch), [`Pending::answer`] takes
//! the store's answers and says whether to write again (a lost race, decided from the items the
//! store returned) or what the verdicts are and what to give back. The driver
//! ([`super::acquire_leased`]) only performs the writes.
//!
//! Every target is written on its own (no transaction): a system, gateway-day or bucket write
//! takes the batch's shortfall plus a prefetch, a sender write its messages' recipients. A
//! request is admitted only if every level it touches holds enough after the writes; what a
//! refused request had been given stays held (gateway levels, for the next batch) or is given
//! back at once (a sender that is not hot here, everything under [`LeasePolicy::EXACT`]).

use std::sync::Arc;

use crate::clock::EpochMillis;
use crate::state::{
    Attr, CmpOp, Condition, Item, Key, TTL_ATTRIBUTE, UpdateAction, Value, Write, WriteOp,
    WriteOutcome, get_n,
};

use super::lease::{Book, BucketEntry, CounterEntry, Handle, LeasePolicy, Leases, Terms, prefetch};
use super::service::{CONTENDED_RETRY_MS, MAX_ATTEMPTS};
use super::{
    COUNT_ATTR, Grant, LevelKind, LimitPlan, Refusal, Request, TAT_ATTR, TTL_MARGIN_S, Verdict,
    clamp_i64, room, to_i64, us_to_ms_ceil,
};

/// A bucket prefetch takes at most this share of the tokens the bucket has.
const BUCKET_SHARE: u64 = 4;

/// How long a view of a full level is trusted before writing to look again (a refund may
/// have made room).
const VIEW_FRESH_MS: i64 = 1_000;

/// A level of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    System,
    Day,
    Bucket,
    Sender(usize),
}

/// One limited sender of the decision.
#[derive(Debug)]
struct SenderNeed {
    /// The counter's key: the plan's sender prefix, then the sender in lower case.
    key: Key,
    /// Where the sender starts in `key`.
    lc_start: usize,
    /// Its entry in the process's book, once resolved (see [`super::lease::Entries`]).
    handle: Option<Handle>,
    limit: u64,
    need: u64,
    min_request: u64,
    terms: Terms,
    state: TargetState,
}

/// How a target stands after the writes so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum TargetState {
    /// Nothing stops another write.
    #[default]
    Open,
    /// The store has no room for the smallest request: no more writes.
    Dry,
}

/// What one write is for.
#[derive(Debug)]
struct Planned {
    target: Target,
    take: u64,
}

/// A decision between its writes.
#[derive(Debug)]
pub struct Pending<'p, 'c> {
    plan: &'p LimitPlan<'c>,
    /// Per request: recipients, sender index, and the refusal when it can never pass.
    requests: Vec<(u64, Option<usize>, Option<Refusal>)>,
    senders: Vec<SenderNeed>,
    /// System, day, bucket: total need, smallest request, state.
    levels: [(u64, u64, TargetState); 3],
    sys_terms: Terms,
    day_terms: Terms,
    /// The system and gateway-day levels' book entries, once `begin` resolved them.
    level_handles: [Option<Handle>; 2],
    /// The bucket's book entry, once `begin` resolved it.
    bucket_handle: Option<Handle>,
    planned: Vec<Planned>,
    writes: Vec<Write>,
    attempts: usize,
    /// Units to give back whatever the verdicts (an hour's holding after the hour).
    lapsed: Vec<(Key, String, i64)>,
}

/// What to do next.
#[derive(Debug)]
pub enum Step<'p, 'c> {
    /// Make these writes (each on its own, together) and answer with their outcomes.
    Write(Box<Pending<'p, 'c>>),
    /// The decision is made.
    Done(Outcome),
}

/// A made decision.
#[derive(Debug, Default)]
pub struct Outcome {
    /// One verdict per request, in order.
    pub verdicts: Vec<Verdict>,
    /// `(key, attribute, amount)` to give back to the store: units taken that this process
    /// will not spend (see the module docs).
    pub giveback: Vec<(Key, String, i64)>,
}

const LEVELS: [Target; 3] = [Target::System, Target::Day, Target::Bucket];

fn level_index(t: Target) -> usize {
    match t {
        Target::System => 0,
        Target::Day => 1,
        _ => 2,
    }
}

impl<'p, 'c> Pending<'p, 'c> {
    /// The decision of `requests` on `plan`: which requests can never pass, and what each
    /// level needs.
    pub fn new(plan: &'p LimitPlan<'c>, requests: &[Request<'_>]) -> Self {
        let named = &plan.windows.named;
        let rl = &plan.gateway.rate_limits;
        let hour = plan.windows.hour;
        let mut senders: Vec<SenderNeed> = Vec::with_capacity(requests.len());
        let mut levels = [(0_u64, u64::MAX, TargetState::Open); 3];
        let mut out = Vec::with_capacity(requests.len());
        let prefix = named.sender_prefix.as_str();
        let any_sender_limit = rl.per_user_daily.is_some() || !rl.custom_user_limits.is_empty();
        for r in requests {
            let n = r.recipients;
            // The sender's counter key, made once: its lower-case tail also finds the limit.
            let key = any_sender_limit.then(|| {
                let mut key = String::with_capacity(prefix.len() + r.sender.len());
                key.push_str(prefix);
                key.push_str(r.sender);
                if let Some(tail) = key.get_mut(prefix.len()..) {
                    tail.make_ascii_lowercase();
                }
                key
            });
            let sender_limit = key
                .as_deref()
                .and_then(|k| rl.per_user_daily_for_lower(k.get(prefix.len()..).unwrap_or("")));
            let too_large = too_large(plan, n, sender_limit);
            let mut sender = None;
            if too_large.is_none() && n > 0 {
                if let (Some(limit), Some(key)) = (sender_limit, key) {
                    // Same prefix: the senders compared by their tails.
                    let lc = &key[prefix.len()..];
                    let i = match senders.iter().position(|s| &s.key[s.lc_start..] == lc) {
                        Some(i) => i,
                        None => {
                            senders.push(SenderNeed {
                                key,
                                lc_start: prefix.len(),
                                handle: None,
                                limit,
                                need: 0,
                                min_request: u64::MAX,
                                terms: Terms {
                                    window: 0,
                                    limits: [Some(limit), None],
                                    legacy: 0,
                                },
                                state: TargetState::Open,
                            });
                            senders.len() - 1
                        }
                    };
                    let s = &mut senders[i];
                    s.need += n;
                    s.min_request = s.min_request.min(n);
                    sender = Some(i);
                }
                let keyed = [
                    named.system_key.is_some(),
                    named.day_key.is_some(),
                    named.bucket.is_some(),
                ];
                for (level, on) in levels.iter_mut().zip(keyed) {
                    if on {
                        level.0 += n;
                        level.1 = level.1.min(n);
                    }
                }
            }
            out.push((n, sender, too_large));
        }
        Self {
            plan,
            requests: out,
            senders,
            levels,
            sys_terms: Terms {
                window: 0,
                limits: [plan.windows.system_daily, None],
                legacy: 0,
            },
            day_terms: Terms {
                window: hour,
                limits: [rl.workspace_daily, rl.per_hour],
                legacy: 0,
            },
            level_handles: [None; 2],
            bucket_handle: None,
            planned: Vec::new(),
            writes: Vec::new(),
            attempts: 0,
            lapsed: Vec::new(),
        }
    }

    /// The item of the earlier layout to read before the first write, once per process and
    /// UTC day: the gateway's day item, when a sender of this decision has a limit and this
    /// process has not seen that item yet (see docs/STATE.md, "Rollout").
    pub fn legacy_to_read(&self, leases: &Leases) -> Option<Key> {
        if self.senders.is_empty() {
            return None;
        }
        let key = self.plan.windows.named.legacy_key.as_ref()?;
        (!leases.lock().legacy.contains_key(key)).then(|| key.clone())
    }

    /// The writes to make now.
    pub fn writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.writes)
    }

    /// Plans the first writes, or decides at once when the leases cover every level.
    pub fn begin(mut self, leases: &Leases) -> Step<'p, 'c> {
        let policy = leases.policy();
        let mut book = leases.lock();
        let now = self.plan.now;
        book.prune(now);
        let legacy_key = self.plan.windows.named.legacy_key.clone();
        let mut lapsed = Vec::new();
        for s in &mut self.senders {
            if let Some(day_key) = &legacy_key {
                s.terms.legacy = book.legacy_count(day_key, &s.key[s.lc_start..]);
            }
            let (handle, e) = book.counters.entry(&s.key);
            s.handle = Some(handle);
            e.touched = now;
            e.rate.record(now, s.need);
        }
        for (t, (need, _, _)) in LEVELS.iter().zip(self.levels) {
            if need == 0 {
                continue;
            }
            match t {
                Target::Bucket => {
                    if let Some((key, _)) = &self.plan.windows.named.bucket {
                        let (handle, e) = book.buckets.entry(key);
                        self.bucket_handle = Some(handle);
                        e.touched = now;
                        e.rate.record(now, need);
                    }
                }
                _ => {
                    if let Some(key) = self.counter_key(*t) {
                        let (handle, e) = book.counters.entry(key);
                        self.level_handles[level_index(*t)] = Some(handle);
                        e.touched = now;
                        e.rate.record(now, need);
                        if *t == Target::Day {
                            // Units held for an hour that is over still count in the day.
                            for (terms, n) in &mut e.holdings {
                                if terms.window != self.day_terms.window && *n > 0 {
                                    lapsed.push((key.clone(), COUNT_ATTR.to_owned(), to_i64(*n)));
                                    *n = 0;
                                }
                            }
                        }
                    }
                }
            }
        }
        self.lapsed = lapsed;
        self.mark_dry(&book, Some(VIEW_FRESH_MS));
        if self.blocked(&book) {
            // A shared level cannot admit even the smallest request: nothing is written.
            return Step::Done(self.verdicts(&mut book, &policy));
        }
        self.plan_writes(&mut book, &policy, true);
        if self.writes.is_empty() {
            return Step::Done(self.verdicts(&mut book, &policy));
        }
        drop(book);
        Step::Write(Box::new(self))
    }
}

impl<'p, 'c> Pending<'p, 'c> {
    fn counter_key(&self, t: Target) -> Option<&'p Key> {
        let named = &self.plan.windows.named;
        match t {
            Target::System => named.system_key.as_ref(),
            Target::Day => named.day_key.as_ref(),
            _ => None,
        }
    }

    /// Counter level `t`'s key with the handle `begin` resolved for it (see
    /// [`super::lease::Entries::find`]).
    fn level(&self, t: Target) -> Option<(Option<Handle>, &'p Key)> {
        let handle = match t {
            Target::System | Target::Day => self.level_handles[level_index(t)],
            _ => None,
        };
        Some((handle, self.counter_key(t)?))
    }

    /// The bucket's key with the handle `begin` resolved for it.
    fn bucket(&self) -> Option<(Option<Handle>, &'p Key)> {
        let (key, _) = self.plan.windows.named.bucket.as_ref()?;
        Some((self.bucket_handle, key))
    }

    fn level_ref<'b>(&self, book: &'b Book, t: Target) -> Option<&'b CounterEntry> {
        let (handle, key) = self.level(t)?;
        book.counters.find(handle, key)
    }

    fn level_get_mut<'b>(&self, book: &'b mut Book, t: Target) -> Option<&'b mut CounterEntry> {
        let (handle, key) = self.level(t)?;
        book.counters.find_mut(handle, key)
    }

    fn level_mut<'b>(&self, book: &'b mut Book, t: Target) -> Option<&'b mut CounterEntry> {
        let (handle, key) = self.level(t)?;
        Some(book.counters.find_or_make(handle, key))
    }

    fn bucket_ref<'b>(&self, book: &'b Book) -> Option<&'b BucketEntry> {
        let (handle, key) = self.bucket()?;
        book.buckets.find(handle, key)
    }

    fn bucket_get_mut<'b>(&self, book: &'b mut Book) -> Option<&'b mut BucketEntry> {
        let (handle, key) = self.bucket()?;
        book.buckets.find_mut(handle, key)
    }

    fn bucket_mut<'b>(&self, book: &'b mut Book) -> Option<&'b mut BucketEntry> {
        let (handle, key) = self.bucket()?;
        Some(book.buckets.find_or_make(handle, key))
    }

    /// The limited counters of a counter level: `(attribute, limit)`.
    fn counters(&self, t: Target) -> [(Attr, Option<u64>); 2] {
        let rl = &self.plan.gateway.rate_limits;
        match t {
            Target::System => [
                (COUNT_ATTR.into(), self.plan.windows.system_daily),
                (COUNT_ATTR.into(), None),
            ],
            _ => [
                (COUNT_ATTR.into(), rl.workspace_daily),
                (
                    self.plan.windows.named.hour_attr.clone().into(),
                    rl.per_hour,
                ),
            ],
        }
    }

    /// Room left in the store for `t` as last seen: the smallest `limit − used` over its
    /// limited counters; `None` when not seen (or nothing is limited).
    fn counter_room(&self, e: &CounterEntry, terms: &Terms) -> Option<u64> {
        let seen = e.seen_in(terms.window).or_else(|| {
            // The day count is known from another hour of the same day; the hour's is 0.
            e.seen.map(|(_, c)| [c[0], 0])
        })?;
        let mut room: Option<u64> = None;
        for (used, limit) in seen.iter().zip(terms.limits) {
            if let Some(limit) = limit {
                let left = to_i64(limit)
                    .saturating_sub(*used)
                    .saturating_sub(terms.legacy)
                    .max(0);
                let left = u64::try_from(left).unwrap_or(0);
                room = Some(room.map_or(left, |r| r.min(left)));
            }
        }
        room
    }

    /// Plans a write for every level still short of its need.
    fn plan_writes(&mut self, book: &mut Book, policy: &LeasePolicy, first: bool) {
        self.planned.clear();
        self.writes.clear();
        // At most one write per level and sender (the last round's list went to the driver).
        let most_writes = self.senders.len() + LEVELS.len();
        self.planned.reserve(most_writes);
        self.writes.reserve(most_writes);
        let now = self.plan.now;
        let ms_left_day = self.plan.next_day() - now;
        let ms_left_hour = self.plan.next_hour() - now;
        for t in [Target::System, Target::Day] {
            let (need, _, state) = self.levels[level_index(t)];
            let Some(key) = self.counter_key(t) else {
                continue;
            };
            if need == 0 || state == TargetState::Dry {
                continue;
            }
            let terms = self.terms(t);
            let Some(e) = self.level_mut(book, t) else {
                continue;
            };
            let have = e.held(&terms);
            if have >= need {
                continue;
            }
            let short = need - have;
            let room = self.counter_room(e, &terms);
            let take = if first {
                let rate = e.rate.per_second();
                let want = (policy.batches_ahead.saturating_mul(need))
                    .max(rate.saturating_mul(policy.horizon_ms) / 1_000);
                let window_ms = if t == Target::Day && terms.limits[1].is_some() {
                    ms_left_hour
                } else {
                    ms_left_day
                };
                let cap = rate.saturating_mul(u64::try_from(window_ms).unwrap_or(0)) / 1_000;
                let room_after = room.map(|r| r.saturating_sub(short));
                short + prefetch(want, room_after, policy.share, cap)
            } else {
                short.min(room.unwrap_or(short))
            };
            let take = take.min(most(&terms));
            if take == 0 {
                continue;
            }
            let counters = self.counters(t);
            self.writes
                .push(counter_write(key, &counters, take, 0, self.plan.day_ttl()));
            self.planned.push(Planned { target: t, take });
        }
        self.plan_bucket(book, policy, first);
        for (i, s) in self.senders.iter().enumerate() {
            if s.state == TargetState::Dry {
                continue;
            }
            let e = sender_mut(book, s);
            let have = e.held(&s.terms);
            if have >= s.need {
                continue;
            }
            let short = s.need - have;
            let room = self.counter_room(e, &s.terms);
            let take = if first {
                let rate = e.rate.per_second();
                let extra = if e.rate.last_second() >= policy.hot_sender_per_s {
                    let cap = rate.saturating_mul(u64::try_from(ms_left_day).unwrap_or(0)) / 1_000;
                    let want = rate.saturating_mul(policy.horizon_ms) / 1_000;
                    prefetch(
                        want,
                        room.map(|r| r.saturating_sub(short)),
                        policy.share,
                        cap,
                    )
                } else {
                    0
                };
                short + extra
            } else {
                short.min(room.unwrap_or(short))
            };
            let take = take.min(most(&s.terms));
            if take == 0 {
                continue;
            }
            let limit = to_i64(s.limit).saturating_sub(s.terms.legacy).max(0);
            let counters = [
                (
                    Attr::from(COUNT_ATTR),
                    Some(u64::try_from(limit).unwrap_or(0)),
                ),
                (Attr::from(COUNT_ATTR), None),
            ];
            self.writes.push(counter_write(
                &s.key,
                &counters,
                take,
                0,
                self.plan.day_ttl(),
            ));
            self.planned.push(Planned {
                target: Target::Sender(i),
                take,
            });
        }
    }

    fn plan_bucket(&mut self, book: &mut Book, policy: &LeasePolicy, first: bool) {
        let (need, _, state) = self.levels[2];
        let Some((key, q)) = &self.plan.windows.named.bucket else {
            return;
        };
        if need == 0 || state == TargetState::Dry {
            return;
        }
        let now_us = clamp_i64(self.plan.now_us());
        let (interval, slack) = (q.interval_us, q.slack_us());
        let Some(e) = self.bucket_mut(book) else {
            return;
        };
        e.expire(now_us, interval, slack);
        let have = e.held();
        if have >= need {
            return;
        }
        let short = need - have;
        let span = clamp_i64(q.capacity_i() * q.interval_i());
        let base = e.seen_tat.map_or(now_us, |t| t.max(now_us));
        // Tokens one write can take now, as last seen.
        let avail = u64::try_from(
            (now_us
                .saturating_add(span)
                .saturating_sub(slack)
                .saturating_sub(base))
                / interval,
        )
        .unwrap_or(0);
        let take = if first {
            let rate = e.rate.per_second();
            // A token is worth taking ahead only if it will be spent before it expires.
            let by_validity = rate.saturating_mul(u64::try_from(slack).unwrap_or(0)) / 1_000_000;
            let want = policy.batches_ahead.saturating_mul(need).min(by_validity);
            // A quarter of what the bucket has now, not the counters' 1/32: held tokens expire
            // within σ and the bucket refills, so nothing is stranded for longer.
            let share = if policy.is_exact() {
                policy.share
            } else {
                BUCKET_SHARE
            };
            let extra = prefetch(want, Some(avail.saturating_sub(short)), share, u64::MAX);
            (short + extra).min(q.usable())
        } else {
            short.min(avail)
        };
        if take == 0 {
            return;
        }
        // `ADD` when the bucket is busy: seen owing tokens, or, seen recently, with a `tat`
        // then within τ of that time (others keep it near now); `SET` after a rest.
        let rest = rest_us(slack);
        let add_form = e.seen_tat.is_some_and(|t| {
            t >= now_us - rest
                || (e.shared && t >= e.seen_at_us - rest && now_us - e.seen_at_us < BUSY_US)
        });
        self.writes
            .push(bucket_write(key, q, now_us, take, add_form));
        self.planned.push(Planned {
            target: Target::Bucket,
            take,
        });
    }

    /// Takes the store's answers to [`Pending::writes`], in order.
    ///
    /// # Errors
    /// The first store error; what the other writes took stays held (or is given back with
    /// the returned outcome's `giveback`).
    pub fn answer(
        mut self,
        leases: &Leases,
        outcomes: Vec<Result<WriteOutcome, crate::state::StoreError>>,
    ) -> Result<Step<'p, 'c>, (crate::state::StoreError, Outcome)> {
        let policy = leases.policy();
        let mut book = leases.lock();
        let mut error = None;
        let planned = std::mem::take(&mut self.planned);
        for (p, outcome) in planned.iter().zip(outcomes) {
            match outcome {
                Ok(WriteOutcome::Applied(item)) => self.applied(&mut book, p, item.as_ref()),
                Ok(WriteOutcome::ConditionFailed(item)) => {
                    self.refused(&mut book, p, item.as_ref());
                }
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = error {
            let outcome = self.abandon(&mut book, &policy);
            return Err((e, outcome));
        }
        self.mark_dry(&book, None);
        self.attempts += 1;
        if self.attempts < MAX_ATTEMPTS {
            self.plan_writes(&mut book, &policy, false);
            if !self.writes.is_empty() {
                return Ok(Step::Write(Box::new(self)));
            }
        }
        Ok(Step::Done(self.verdicts(&mut book, &policy)))
    }

    fn applied(&mut self, book: &mut Book, p: &Planned, item: Option<&Item>) {
        match p.target {
            Target::Bucket => {
                if let Some((_, q)) = &self.plan.windows.named.bucket
                    && let Some(e) = self.bucket_mut(book)
                {
                    let tat = item.and_then(|i| get_n(i, TAT_ATTR));
                    let now_us = clamp_i64(self.plan.now_us());
                    let took = i64::try_from(p.take).unwrap_or(i64::MAX) * q.interval_us;
                    if let (Some(seen), Some(after)) = (e.seen_tat, tat)
                        && after != now_us.saturating_add(took)
                    {
                        // An `ADD`: the bucket stood where this process last left it, or
                        // someone else moved it.
                        e.shared = after.saturating_sub(took) != seen;
                    }
                    e.seen_tat = tat;
                    e.seen_at_us = now_us;
                    if let Some(tat) = tat {
                        e.add(tat, p.take, q.interval_us);
                    }
                }
            }
            t => self.answered_counter(book, t, item, Some(p.take)),
        }
    }

    fn refused(&mut self, book: &mut Book, p: &Planned, item: Option<&Item>) {
        match p.target {
            Target::Bucket => {
                if let Some(e) = self.bucket_mut(book) {
                    let tat = item.and_then(|i| get_n(i, TAT_ATTR));
                    // A form chosen on a wrong view: someone else moved the bucket, or nobody did.
                    e.shared = tat != e.seen_tat;
                    e.seen_tat = tat;
                    e.seen_at_us = clamp_i64(self.plan.now_us());
                }
            }
            t => self.answered_counter(book, t, item, None),
        }
    }

    /// The terms a counter target's units are held under.
    fn terms(&self, t: Target) -> Terms {
        match t {
            Target::System => self.sys_terms,
            Target::Sender(i) => self.senders[i].terms,
            _ => self.day_terms,
        }
    }

    /// Records a counter target's answer: the units it took when the write applied, and the
    /// counts the store returned.
    fn answered_counter(&self, book: &mut Book, t: Target, item: Option<&Item>, took: Option<u64>) {
        let terms = self.terms(t);
        let (e, hour_attr) = match t {
            Target::Sender(i) => (Some(sender_mut(book, &self.senders[i])), None),
            t => (
                self.level_mut(book, t),
                (t == Target::Day).then(|| self.plan.windows.named.hour_attr.as_str()),
            ),
        };
        if let Some(e) = e {
            if let Some(n) = took {
                e.add(terms, n);
            }
            see(e, self.plan.now, terms.window, item, hour_attr);
        }
    }

    /// Marks every level still short whose store, as just seen (or, with `fresh_ms`, seen at
    /// most that long ago), has no room for its smallest request: another write could not help.
    /// A counter only grows within its window but for a refund, so a recent view that says full
    /// is still right; refusing on it writes nothing.
    fn mark_dry(&mut self, book: &Book, fresh_ms: Option<i64>) {
        let now = self.plan.now;
        let fresh = |seen_at: EpochMillis| fresh_ms.is_none_or(|ms| now - seen_at <= ms);
        for t in [Target::System, Target::Day] {
            let (need, min_request, _) = self.levels[level_index(t)];
            let terms = self.terms(t);
            if let Some(e) = self.level_ref(book, t)
                && fresh(e.seen_at)
            {
                let held = e.held(&terms);
                if need > held {
                    let room = self.counter_room(e, &terms).unwrap_or(u64::MAX);
                    if room < min_request.saturating_sub(held).max(1) {
                        self.levels[level_index(t)].2 = TargetState::Dry;
                    }
                }
            }
        }
        if let Some((_, q)) = &self.plan.windows.named.bucket
            && let Some(e) = self.bucket_ref(book)
        {
            let (need, min_request, _) = self.levels[2];
            let held = e.held();
            if need > held
                && let Some(tat) = e.seen_tat
            {
                let now_us = clamp_i64(self.plan.now_us());
                let span = clamp_i64(q.capacity_i() * q.interval_i());
                let avail = (now_us + span - q.slack_us() - tat.max(now_us)) / q.interval_us;
                if u64::try_from(avail).unwrap_or(0) < min_request.saturating_sub(held).max(1) {
                    self.levels[2].2 = TargetState::Dry;
                }
            }
        }
        let mut dry = Vec::new();
        for (i, s) in self.senders.iter().enumerate() {
            if let Some(e) = sender_ref(book, s)
                && fresh(e.seen_at)
            {
                let held = e.held(&s.terms);
                if s.need > held {
                    let room = self.counter_room(e, &s.terms).unwrap_or(u64::MAX);
                    if room < s.min_request.saturating_sub(held).max(1) {
                        dry.push(i);
                    }
                }
            }
        }
        for i in dry {
            self.senders[i].state = TargetState::Dry;
        }
    }

    /// Whether a system, day or bucket level is dry and holds less than the smallest request:
    /// then no request can be admitted, whatever the other levels would give.
    fn blocked(&self, book: &Book) -> bool {
        LEVELS.iter().any(|&t| {
            let (need, min_request, state) = self.levels[level_index(t)];
            if need == 0 || state != TargetState::Dry {
                return false;
            }
            let held = match t {
                Target::Bucket => self
                    .bucket_ref(book)
                    .map_or(0, super::lease::BucketEntry::held),
                t => {
                    let terms = self.terms(t);
                    self.level_ref(book, t).map_or(0, |e| e.held(&terms))
                }
            };
            held < min_request
        })
    }

    /// Gives up after a store error: nothing is admitted; what a policy would not keep is given
    /// back.
    fn abandon(&mut self, book: &mut Book, policy: &LeasePolicy) -> Outcome {
        let mut giveback = std::mem::take(&mut self.lapsed);
        self.give_back(book, policy, &mut giveback);
        Outcome {
            verdicts: Vec::new(),
            giveback,
        }
    }

    /// Admits the requests in order from what is held; a request is admitted only if every
    /// level it touches holds enough for it.
    fn verdicts(&mut self, book: &mut Book, policy: &LeasePolicy) -> Outcome {
        let plan = self.plan;
        let named = Arc::clone(&plan.windows.named);
        let now_us = clamp_i64(plan.now_us());
        if let Some((_, q)) = &named.bucket
            && let Some(e) = self.bucket_get_mut(book)
        {
            e.expire(now_us, q.interval_us, q.slack_us());
        }
        // What each level holds, looked up once; spent here request by request, then taken
        // from the book in one step per level (spending a sum earliest-θ-first is spending
        // its parts in turn).
        let held_counter = |book: &Book, t: Target| {
            self.counter_key(t).map(|_| {
                let terms = self.terms(t);
                self.level_ref(book, t).map_or(0, |e| e.held(&terms))
            })
        };
        let mut sys = held_counter(book, Target::System);
        let mut day = held_counter(book, Target::Day);
        let mut bucket = named
            .bucket
            .as_ref()
            .map(|_| self.bucket_ref(book).map_or(0, |e| e.held()));
        let mut senders: Vec<u64> = self
            .senders
            .iter()
            .map(|s| sender_ref(book, s).map_or(0, |e| e.held(&s.terms)))
            .collect();
        let (sys_left, day_left, bucket_left) = (sys, day, bucket);
        let senders_left = senders.clone();
        let mut verdicts = Vec::with_capacity(self.requests.len());
        // Admitted grants of limited senders (verdict, sender): their keys are set last.
        let mut keyed: Vec<(usize, usize)> = Vec::with_capacity(self.requests.len());
        for &(n, sender, too_large) in &self.requests {
            if let Some(refusal) = too_large {
                verdicts.push(Verdict::Refuse(refusal));
                continue;
            }
            if n == 0 {
                verdicts.push(Verdict::Admit(Grant::empty()));
                continue;
            }
            let short_of = |held: Option<u64>| held.is_some_and(|h| h < n);
            let mut short: Vec<Target> = Vec::new();
            if short_of(sys) {
                short.push(Target::System);
            }
            if short_of(day) {
                short.push(Target::Day);
            }
            if short_of(bucket) {
                short.push(Target::Bucket);
            }
            if let Some(i) = sender
                && senders[i] < n
            {
                short.push(Target::Sender(i));
            }
            if !short.is_empty() {
                verdicts.push(Verdict::Refuse(self.refusal(book, &short, n)));
                continue;
            }
            let mut grant = Grant::empty();
            grant.recipients = n;
            grant.keys = Some(Arc::clone(&named));
            if let Some(h) = &mut sys {
                *h -= n;
                grant.system = to_i64(n);
            }
            if let Some(h) = &mut day {
                *h -= n;
                grant.day = to_i64(n);
            }
            if let (Some(h), Some((_, q))) = (&mut bucket, &named.bucket) {
                *h -= n;
                grant.bucket_us = clamp_i64(i128::from(n) * q.interval_i());
            }
            if let Some(i) = sender {
                senders[i] -= n;
                keyed.push((verdicts.len(), i));
            }
            verdicts.push(Verdict::Admit(grant));
        }
        for (t, before, after) in [
            (Target::System, sys_left, sys),
            (Target::Day, day_left, day),
        ] {
            let spent = before.unwrap_or(0) - after.unwrap_or(0);
            if spent > 0
                && let Some(e) = self.level_get_mut(book, t)
            {
                e.spend(&self.terms(t), spent);
            }
        }
        let spent = bucket_left.unwrap_or(0) - bucket.unwrap_or(0);
        if spent > 0
            && let Some((_, q)) = &named.bucket
            && let Some(e) = self.bucket_get_mut(book)
        {
            e.spend(spent, q.interval_us);
        }
        for ((s, before), after) in self.senders.iter().zip(senders_left).zip(senders) {
            if before > after
                && let Some(e) = sender_get_mut(book, s)
            {
                e.spend(&s.terms, before - after);
            }
        }
        let mut giveback = std::mem::take(&mut self.lapsed);
        self.give_back(book, policy, &mut giveback);
        // The decision is over (nothing looks a sender up any more): each sender's key moves
        // to its last grant, the others get a copy.
        let mut last = vec![usize::MAX; self.senders.len()];
        for &(v, i) in &keyed {
            last[i] = v;
        }
        for (v, i) in keyed {
            let key = &mut self.senders[i].key;
            let key = if last[i] == v {
                std::mem::take(key)
            } else {
                key.clone()
            };
            if let Some(Verdict::Admit(grant)) = verdicts.get_mut(v) {
                grant.sender_key = Some(key);
            }
        }
        Outcome { verdicts, giveback }
    }

    /// What this process does not keep after the decision: everything under an exact policy,
    /// a sender's units unless it is hot here.
    fn give_back(&self, book: &mut Book, policy: &LeasePolicy, out: &mut Vec<(Key, String, i64)>) {
        for s in &self.senders {
            if let Some(e) = sender_get_mut(book, s)
                && (policy.is_exact() || e.rate.last_second() < policy.hot_sender_per_s)
            {
                let n = e.take_all(&s.terms);
                if n > 0 {
                    out.push((s.key.clone(), COUNT_ATTR.to_owned(), to_i64(n)));
                }
            }
        }
        if !policy.is_exact() {
            return;
        }
        for t in [Target::System, Target::Day] {
            let terms = self.terms(t);
            if let Some(key) = self.counter_key(t)
                && let Some(e) = self.level_get_mut(book, t)
            {
                let n = e.take_all(&terms);
                if n > 0 {
                    out.push((key.clone(), COUNT_ATTR.to_owned(), to_i64(n)));
                    if t == Target::Day {
                        out.push((
                            key.clone(),
                            self.plan.windows.named.hour_attr.clone(),
                            to_i64(n),
                        ));
                    }
                }
            }
        }
        if let Some((key, q)) = &self.plan.windows.named.bucket
            && let Some(e) = self.bucket_get_mut(book)
        {
            let n = e.held();
            if n > 0 {
                e.runs.clear();
                out.push((
                    key.clone(),
                    TAT_ATTR.to_owned(),
                    clamp_i64(i128::from(n) * q.interval_i()),
                ));
            }
        }
    }

    /// Why a request of `n` that the `short` levels cannot cover is refused: contended when a
    /// level could still have room, otherwise the exhausted level whose capacity returns last.
    fn refusal(&self, book: &Book, short: &[Target], n: u64) -> Refusal {
        let plan = self.plan;
        let mut worst: Option<(LevelKind, EpochMillis)> = None;
        let mut note = |level: LevelKind, at: EpochMillis| {
            if worst.is_none_or(|(_, w)| at > w) {
                worst = Some((level, at));
            }
        };
        let dry = |t: Target| match t {
            Target::Sender(i) => self.senders[i].state == TargetState::Dry,
            t => self.levels[level_index(t)].2 == TargetState::Dry,
        };
        // A level that has no room decides; only when none is out of room did the writes lose.
        if !short.iter().any(|&t| dry(t)) {
            return Refusal::Contended {
                retry_after: plan.now + CONTENDED_RETRY_MS,
            };
        }
        for &t in short.iter().filter(|&&t| dry(t)) {
            match t {
                Target::System => note(LevelKind::SystemDaily, plan.next_day()),
                Target::Sender(_) => note(LevelKind::SenderDaily, plan.next_day()),
                Target::Day => {
                    let rl = &plan.gateway.rate_limits;
                    let seen = self
                        .level_ref(book, Target::Day)
                        .and_then(|e| e.seen_in(self.day_terms.window));
                    let over = |used: i64, limit: Option<u64>| {
                        limit.is_some_and(|l| used.saturating_add(to_i64(n)) > to_i64(l))
                    };
                    let mut hit = false;
                    if let Some([day, hour]) = seen {
                        if over(day, rl.workspace_daily) {
                            note(LevelKind::GatewayDaily, plan.next_day());
                            hit = true;
                        }
                        if over(hour, rl.per_hour) {
                            note(LevelKind::GatewayHourly, plan.next_hour());
                            hit = true;
                        }
                    }
                    if !hit {
                        if rl.per_hour.is_some() {
                            note(LevelKind::GatewayHourly, plan.next_hour());
                        } else {
                            note(LevelKind::GatewayDaily, plan.next_day());
                        }
                    }
                }
                Target::Bucket => {
                    if let Some((_, q)) = &plan.windows.named.bucket {
                        let now_us = plan.now_us();
                        let tat = self
                            .bucket_ref(book)
                            .and_then(|e| e.seen_tat)
                            .map_or(now_us, i128::from)
                            .max(now_us);
                        let usable = q.capacity_i() * q.interval_i() - i128::from(q.slack_us());
                        let at = tat + i128::from(n) * q.interval_i() - usable;
                        note(LevelKind::GatewayBurst, us_to_ms_ceil(at.max(now_us)));
                    }
                }
            }
        }
        let (level, retry_after) = worst.unwrap_or((LevelKind::GatewayDaily, plan.next_day()));
        Refusal::Exhausted { level, retry_after }
    }
}

/// Sender `s`'s book entry (through its handle while it holds, else by its key).
fn sender_ref<'b>(book: &'b Book, s: &SenderNeed) -> Option<&'b CounterEntry> {
    book.counters.find(s.handle, &s.key)
}

fn sender_get_mut<'b>(book: &'b mut Book, s: &SenderNeed) -> Option<&'b mut CounterEntry> {
    book.counters.find_mut(s.handle, &s.key)
}

fn sender_mut<'b>(book: &'b mut Book, s: &SenderNeed) -> &'b mut CounterEntry {
    book.counters.find_or_make(s.handle, &s.key)
}

/// The refusal of a request of `n` that some level can never admit.
fn too_large(plan: &LimitPlan<'_>, n: u64, sender_limit: Option<u64>) -> Option<Refusal> {
    let rl = &plan.gateway.rate_limits;
    let counters = [
        (LevelKind::SystemDaily, plan.windows.system_daily),
        (LevelKind::GatewayDaily, rl.workspace_daily),
        (LevelKind::GatewayHourly, rl.per_hour),
        (LevelKind::SenderDaily, sender_limit),
    ];
    for (level, limit) in counters {
        if let Some(limit) = limit
            && n > limit
        {
            return Some(Refusal::TooLarge { level, limit });
        }
    }
    if let Some((_, q)) = &plan.windows.named.bucket
        && n > q.usable()
    {
        return Some(Refusal::TooLarge {
            level: LevelKind::GatewayBurst,
            limit: q.usable(),
        });
    }
    None
}

/// The most one write under `terms` can ever take: the smallest limit, less the earlier
/// layout's use.
fn most(terms: &Terms) -> u64 {
    terms
        .limits
        .iter()
        .flatten()
        .map(|l| l.saturating_sub(u64::try_from(terms.legacy).unwrap_or(0)))
        .min()
        .unwrap_or(u64::MAX)
}

/// Records the counts of a counter item as returned by the store.
fn see(
    e: &mut CounterEntry,
    now: EpochMillis,
    window: i64,
    item: Option<&Item>,
    hour_attr: Option<&str>,
) {
    let n = item.and_then(|i| get_n(i, COUNT_ATTR)).unwrap_or(0);
    let hour = hour_attr
        .and_then(|a| item.and_then(|i| get_n(i, a)))
        .unwrap_or(0);
    e.see(window, [n, hour]);
    e.seen_at = now;
}

/// `ADD` `take` to each counter of `key` (`legacy` more is assumed used), conditional on each
/// limited counter staying within its limit.
fn counter_write(
    key: &Key,
    counters: &[(Attr, Option<u64>); 2],
    take: u64,
    legacy: i64,
    ttl: i64,
) -> Write {
    let total = to_i64(take);
    let mut actions = Vec::with_capacity(3);
    // Usually one limited counter: its condition is the write's, with no list made.
    let mut conditions: [Option<Condition>; 2] = [None, None];
    for (i, (attr, limit)) in counters.iter().enumerate() {
        if i == 1 && *attr == counters[0].0 {
            continue;
        }
        actions.push(UpdateAction::Add(attr.clone(), total));
        if let Some(limit) = limit {
            conditions[i] = Some(room(attr.clone(), *limit, total.saturating_add(legacy)));
        }
    }
    actions.push(UpdateAction::Set(TTL_ATTRIBUTE.into(), Value::N(ttl)));
    let condition = match conditions {
        [Some(c), None] | [None, Some(c)] => c,
        [None, None] => Condition::Always,
        [Some(a), Some(b)] => Condition::And(vec![a, b]),
    };
    Write {
        key: key.clone(),
        op: WriteOp::Update(actions),
        condition,
    }
}

/// How far behind `now` a bucket's `tat` may be for an `ADD` (τ = σ/4): its tokens then have
/// θ > now − τ, so each is valid for at least ¾ σ; a bucket that has rested longer is `SET`.
fn rest_us(slack_us: i64) -> i64 {
    slack_us / 4
}

/// A bucket seen busy within this long is assumed still busy (an `ADD` is tried first).
const BUSY_US: i64 = 1_000_000;

/// Takes `take` tokens from the bucket at `now_us`: `ADD` when the bucket's `tat` is at least
/// `now − τ` ([`rest_us`]), `SET tat = now + take·T` when it has rested longer (an `ADD` would
/// hand out tokens about to expire). The two conditions are complementary below the upper
/// bound, both keep `tat ≤ now + C·T − σ` and every θ distinct, which is all the bucket's
/// bound needs (see `lease.rs`).
fn bucket_write(
    key: &Key,
    q: &super::BucketQuota,
    now_us: i64,
    take: u64,
    add_form: bool,
) -> Write {
    let t = i128::from(q.interval_us);
    let take_us = i128::from(take) * t;
    let span = q.capacity_i() * t - i128::from(q.slack_us());
    let now = i128::from(now_us);
    let ttl = Value::N(clamp_i64((now + q.capacity_i() * t) / 1_000_000) + 1 + TTL_MARGIN_S);
    if add_form {
        Write {
            key: key.clone(),
            op: WriteOp::Update(vec![
                UpdateAction::Add(TAT_ATTR.into(), clamp_i64(take_us)),
                UpdateAction::Set(TTL_ATTRIBUTE.into(), ttl),
            ]),
            condition: Condition::And(vec![
                Condition::cmp(TAT_ATTR, CmpOp::Ge, now_us - rest_us(q.slack_us())),
                Condition::cmp(TAT_ATTR, CmpOp::Le, clamp_i64(now + span - take_us)),
            ]),
        }
    } else {
        Write {
            key: key.clone(),
            op: WriteOp::Update(vec![
                UpdateAction::Set(TAT_ATTR.into(), Value::N(clamp_i64(now + take_us))),
                UpdateAction::Set(TTL_ATTRIBUTE.into(), ttl),
            ]),
            condition: Condition::Or(vec![
                Condition::AttrNotExists(TAT_ATTR.into()),
                Condition::cmp(TAT_ATTR, CmpOp::Lt, now_us - rest_us(q.slack_us())),
            ]),
        }
    }
}
