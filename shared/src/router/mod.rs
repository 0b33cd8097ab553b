//! The router (ARCHITECTURE §3.1): which gateways may take a message, and in which order to try them.
//!
//! A pure core. Input: the effective [`Config`], a [`RouteRequest`], a view of live state
//! ([`GatewayState`] per gateway) and `now`. Output: a [`RoutePlan`], the ordered candidates
//! and every dropped gateway with its reason. Same config, request, state and `now` → same plan,
//! on every instance, so a retried message follows the same path and tests are reproducible.
//!
//! # Filters (every path, failover targets and pinned gateways included)
//! In this order; a dropped gateway reports the first filter it fails:
//! 1. `enabled` must be true.
//! 2. A `can_route` pattern must match the sender. An empty `can_route` takes no sender, except
//!    for a message that pins this very gateway: that is how a gateway is reserved for pinned
//!    messages (docs/CONFIG.md; `config check` warns about it). `exclude_patterns` still apply.
//! 3. No `exclude_patterns` entry may match (exclusion wins).
//! 4. Health `Unhealthy` drops the gateway when `routing.health_check_required`. `Degraded` and
//!    `Unknown` are kept (an unchecked gateway may be fine; the breaker protects it). When the
//!    gateway's own `health_check.enabled` is off, nothing probes it and any stored status is
//!    stale, so health is ignored.
//! 5. A breaker `Open { until }` with `until > now` drops the gateway when
//!    `routing.circuit_breaker_required`. An open breaker whose timeout has elapsed
//!    (`until <= now`) is **kept**: only a send attempt moves a breaker to half-open, so skipping
//!    it here would keep it open forever (the original system's bug). `HalfOpen` is kept: the
//!    breaker admits its own trial sends. When the gateway's `circuit_breaker.enabled` is off
//!    the stored breaker state is ignored.
//!
//! # Strategy
//! `routing.strategy`, overridden by the first `routing.rules[]` entry with a pattern matching the
//! sender. Candidates are first listed by (priority, id); then:
//! - `priority`: that order.
//! - `failover`: the first candidate, then the gateways its `failover_to` names, breadth first:
//!   its whole list in order, then the lists of those targets, and so on, never revisiting. A
//!   target that fails a filter is not a candidate, but its own chain is still followed (its
//!   traffic has to go somewhere). Candidates in no followed chain come last by priority.
//! - `round_robin`: the (priority, id) order rotated left by `hash(id) mod n`. Each candidate is
//!   first for an equal share of message ids.
//! - `weighted`: repeated draws without replacement, each proportional to `weight` among the
//!   gateways not yet placed, draw `k` using hash round `k`; weight-0 gateways come last by
//!   priority.
//! - `least_loaded`: most `remaining` first; ties (and unknown remaining, counted as 1.0) by
//!   priority, then id.
//! - `domain_based`: gateways whose `domain` equals the sender's domain, or one of whose
//!   `can_route` patterns names it ([`named_domain`](crate::pattern::SenderPattern::named_domain)), first by priority; then the
//!   rest by priority.
//!
//! The hash is FNV-1a 64 of the message id finished with SplitMix64 (see `hash.rs`), never `std`'s
//! per-process randomised hasher.
//!
//! # Hybrid mode
//! With [`GatewayMode::Hybrid`], gateways converted from legacy workspaces
//! ([`GatewaySource::LegacyWorkspace`]) are ordered first, by the strategy among themselves, then
//! config-file gateways, by the strategy among themselves, as their failover. Failover chains
//! place targets only inside the group being ordered; a target in the other group keeps its place
//! there. Weighted and round-robin draws use distinct hash rounds per group.
//!
//! # Pinned messages
//! A message naming a gateway gets only that gateway when it exists and passes every filter
//! (limits and breaker still apply later); every other gateway is dropped as
//! [`DropReason::NotPinned`]. Otherwise — unknown id, disabled, excluded, unhealthy, open — with
//! `routing.pinned_failover` the normal list is returned (the plan's [`PinOutcome`] says the pin
//! was unusable); without it, no candidate at all: the message is deferred or rejected by the
//! pipeline instead of silently going elsewhere.
//!
//! # State view
//! Live state is passed as a slice of [`GatewayState`] indexed like `config.gateways`
//! ([`Router::index_of`] maps an id to its index). A slice is the cheapest view to read in the
//! per-message loop, and the pipeline builds it once per batch from the state it has already
//! fetched. A slice shorter than the gateway list (even empty) is allowed: the missing gateways
//! have `GatewayState::default()`, i.e. health unknown, breaker closed, quota unknown, all of
//! which are routed to — a gateway with no recorded state has not been seen to fail.
//!
//! # Failover disabled
//! With `routing.failover_enabled == false` only the first candidate is kept; the rest are
//! dropped as [`DropReason::FailoverDisabled`]. Otherwise the whole ordered list is returned and
//! the pipeline bounds attempts with `routing.max_failover_attempts`.
//!
//! # Cost
//! The budget is ≤ 2 µs of CPU per message for routing plus the limit decision with 20
//! gateways. [`Router::new`] therefore precomputes the (group, priority, id) order, the failover
//! chains as indices and a table of the config's distinct patterns; [`Router::route`] does one
//! pass over the gateways, matches each distinct pattern at most once per message (a shared
//! `*` or internal-domain exclusion costs one match, not twenty), orders a permutation of
//! indices rather than moving candidates, and renders no text: reasons are enums holding
//! borrowed config data, turned into text only by `Display` / `Serialize`. Allocations: the two
//! lists of the plan, plus a permutation, the reordered list and a small scratch for strategies
//! other than `priority`. Exact-domain patterns are found with one lookup of the sender's domain.
//!
//! The send pipeline calls [`Router::rank`] instead: the same candidates in the same order as
//! indices only (a property test holds them equal), with no reasons, a scratch reused across
//! the batch and failover orders remembered per candidate set; it asks [`Router::route`] only
//! for a message left without a candidate, to say why.

mod hash;
mod plan;

use std::sync::Arc;

pub use plan::{
    BreakerNote, Candidate, DropReason, Dropped, HealthNote, Held, HeldBy, HybridGroup, KeptReason,
    OrderReason, PinOutcome, RoutePlan,
};

use crate::clock::EpochMillis;
use crate::config::{Config, Gateway, GatewayMode, GatewaySource, Strategy};
use crate::pattern::{SenderPattern, SplitSender};
use hash::MessageHash;

/// What the router needs to know about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRequest<'a> {
    /// The message id (idempotency key); seeds `round_robin` and `weighted` draws.
    pub message_id: &'a str,
    /// The sender's bare address (`local@domain`, as [`crate::address::EmailAddress::as_str`]
    /// gives it; any case) matched against `can_route` / `exclude_patterns`. Never a display
    /// form such as `Name <addr>`: patterns split on the last `@`, so that would fail to match
    /// an exclusion. Callers parse first.
    pub sender: &'a str,
    /// The gateway id the message pins (`"gateway"` in the message), if any.
    pub pinned: Option<&'a str>,
}

/// Last health-check verdict of a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Health {
    /// Never checked, or no record.
    #[default]
    Unknown,
    /// Probes succeed.
    Healthy,
    /// Probes succeed slowly or partly; still routed to.
    Degraded,
    /// Probes fail; dropped when `routing.health_check_required`.
    Unhealthy,
}

/// A gateway's breaker as last read from shared state ([`crate::breaker::view`]); the router
/// keeps an `Open` breaker whose `until` has passed, since only a send attempt can move it on.
pub use crate::breaker::BreakerView;

/// Live state of one gateway as the router sees it. `Default` is Unknown / Closed / `None`:
/// a gateway with no state yet is routed to.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GatewayState {
    /// Last health-check verdict.
    pub health: Health,
    /// Breaker state.
    pub breaker: BreakerView,
    /// The smallest fraction of quota left over the gateway's limit levels, `0.0..=1.0`
    /// (used by `least_loaded`). `None` means unknown or unlimited and counts as 1.0; values
    /// outside the range are clamped and NaN counts as 0.0.
    pub remaining: Option<f64>,
    /// An operator's lever holding it back ([`crate::levers::held`]): dropped whatever the
    /// routing settings say.
    pub held: Option<Held>,
}

/// Routes messages over one effective config. Cheap to share (`Arc` it); build a new one when
/// the config is reloaded.
#[derive(Debug, Clone)]
pub struct Router {
    config: Arc<Config>,
    /// Every distinct pattern of the config (`can_route`, `exclude_patterns`, rules), so that a
    /// pattern shared by many gateways (`*`, an internal domain) is matched once per message.
    patterns: Vec<SenderPattern>,
    /// Pattern ids referenced by `Slot` ranges and rules.
    pattern_ids: Vec<usize>,
    /// A [`Matcher`]'s memo before any match: every exact-domain pattern (`@domain`) marked
    /// "no match"; the ones naming the sender's domain are then found in `domains` with one
    /// lookup, instead of comparing the sender with each (a config routing one domain per
    /// gateway has as many as it has gateways).
    memo_template: [u8; MEMO_PATTERNS],
    /// Exact-domain pattern ids (below [`MEMO_PATTERNS`]) by their domain (lower case).
    domains: std::collections::HashMap<String, Vec<usize>, foldhash::fast::FixedState>,
    /// Per pattern id: the gateways (a bit per config index) whose `can_route`, and whose
    /// `exclude_patterns`, list it; with `enabled`, what [`Router::static_route`] needs (only
    /// for configs of at most 64 gateways).
    pattern_masks: Vec<(u64, u64)>,
    /// The enabled gateways, a bit per config index.
    enabled: u64,
    /// One slot per gateway, in (hybrid group, priority, id) order.
    slots: Vec<Slot>,
    /// Per rule: its range in `pattern_ids` and its strategy.
    rules: Vec<(Span, Strategy)>,
    /// Unique per [`Router::new`] (clones share it, and their config): tells a
    /// [`RankScratch`] whose orders it remembers.
    id: u64,
    /// Whether some strategy of the config is `least_loaded` (the only one reading
    /// [`GatewayState::remaining`]).
    ranks_by_remaining: bool,
    /// `failover_to` of each gateway (by config index) as config indices; unknown ids, already
    /// rejected by validation, are skipped.
    failover: Vec<Vec<usize>>,
}

/// A message's routing apart from state ([`Router::static_route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticRoute {
    /// The gateways the state-independent filters keep, a bit per index in `config.gateways`.
    kept: u64,
    /// The strategy that applies to the sender.
    strategy: Strategy,
}

impl StaticRoute {
    /// Marks the gateways kept (indices past the end of `marks` are skipped).
    pub fn mark(&self, marks: &mut [bool]) {
        for (g, mark) in marks.iter_mut().enumerate().take(64) {
            *mark |= self.kept >> g & 1 == 1;
        }
    }
}

/// Scratch space for [`Router::rank`], kept by a caller across the messages it ranks.
#[derive(Debug, Default)]
pub struct RankScratch {
    queue: Vec<usize>,
    keys: Vec<(u64, usize)>,
    /// The router the remembered orders are of ([`Router`]'s `id`; they are dropped when
    /// another router ranks with this scratch).
    router: u64,
    /// Failover orders already made: the candidate set and where its order starts in
    /// `ordered`.
    orders: Vec<(u64, usize)>,
    ordered: Vec<usize>,
}

/// The next [`Router`] id (0 is no router's: a fresh scratch remembers nothing).
static NEXT_ROUTER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Failover orders a [`RankScratch`] remembers (a batch reaches a few sets).
const REMEMBERED_ORDERS: usize = 32;

/// A range in `Router::pattern_ids`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

/// What the filter pass needs of one gateway, packed together for the per-message loop.
#[derive(Debug, Clone, Copy)]
struct Slot {
    index: usize,
    enabled: bool,
    health_checked: bool,
    breaker_enabled: bool,
    group: Option<HybridGroup>,
    can_route: Span,
    exclude: Span,
}

/// Salt added to hash rounds of the config-file group in hybrid mode, so the two groups' draws
/// are independent.
const SECOND_GROUP_ROUNDS: u64 = 1 << 32;

/// Patterns whose match result is remembered within one `route` call; ids beyond are matched
/// every time they are referenced (still correct, only slower).
const MEMO_PATTERNS: usize = 128;

/// A [`Matcher`] memo entry: 0 is "not matched yet".
const MEMO_NO_MATCH: u8 = 1;
const MEMO_MATCH: u8 = 2;

impl Router {
    /// Precomputes the routing order, the distinct patterns and the failover chains of `config`.
    pub fn new(config: Arc<Config>) -> Router {
        let hybrid = config.mode == GatewayMode::Hybrid;
        let mut order: Vec<usize> = (0..config.gateways.len()).collect();
        order.sort_by(|&a, &b| {
            let (ga, gb) = (&config.gateways[a], &config.gateways[b]);
            (group_rank(hybrid, ga), ga.priority, &ga.id).cmp(&(
                group_rank(hybrid, gb),
                gb.priority,
                &gb.id,
            ))
        });
        let mut table = PatternTable::default();
        let slots: Vec<Slot> = order
            .iter()
            .map(|&index| {
                let g = &config.gateways[index];
                Slot {
                    index,
                    enabled: g.enabled,
                    health_checked: g.health_check.enabled,
                    breaker_enabled: g.circuit_breaker.enabled,
                    group: hybrid.then_some(match g.source {
                        GatewaySource::LegacyWorkspace(_) => HybridGroup::Legacy,
                        GatewaySource::ConfigFile => HybridGroup::Config,
                    }),
                    can_route: table.intern_all(&g.routing.can_route),
                    exclude: table.intern_all(&g.routing.exclude_patterns),
                }
            })
            .collect();
        let rules: Vec<(Span, Strategy)> = config
            .routing
            .rules
            .iter()
            .map(|r| (table.intern_all(&r.senders), r.strategy))
            .collect();
        let ranks_by_remaining = config.routing.strategy == Strategy::LeastLoaded
            || rules.iter().any(|(_, s)| *s == Strategy::LeastLoaded);
        let failover = config
            .gateways
            .iter()
            .map(|g| {
                g.routing
                    .failover_to
                    .iter()
                    .filter_map(|id| config.gateways.iter().position(|t| &t.id == id))
                    .collect()
            })
            .collect();
        let mut memo_template = [0; MEMO_PATTERNS];
        let mut domains: std::collections::HashMap<String, Vec<usize>, _> =
            std::collections::HashMap::default();
        for (id, p) in table.patterns.iter().enumerate().take(MEMO_PATTERNS) {
            if let SenderPattern::Domain(d) = p {
                memo_template[id] = MEMO_NO_MATCH;
                domains.entry(d.to_ascii_lowercase()).or_default().push(id);
            }
        }
        let mut pattern_masks = vec![(0_u64, 0_u64); table.patterns.len()];
        let mut enabled = 0_u64;
        for slot in slots.iter().filter(|s| s.index < 64) {
            let bit = 1_u64 << slot.index;
            if slot.enabled {
                enabled |= bit;
            }
            let ids = |span: Span| table.ids.get(span.start..span.end).unwrap_or_default();
            for &id in ids(slot.can_route) {
                pattern_masks[id].0 |= bit;
            }
            for &id in ids(slot.exclude) {
                pattern_masks[id].1 |= bit;
            }
        }
        Router {
            config,
            pattern_masks,
            enabled,
            memo_template,
            domains,
            patterns: table.patterns,
            pattern_ids: table.ids,
            slots,
            rules,
            id: NEXT_ROUTER_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ranks_by_remaining,
            failover,
        }
    }

    /// Whether any message may be ranked by [`GatewayState::remaining`] (some strategy of the
    /// config is `least_loaded`): otherwise a caller need not work it out.
    pub fn ranks_by_remaining(&self) -> bool {
        self.ranks_by_remaining
    }

    /// The config this router routes over.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Index of the gateway with this id in `config.gateways` (and in the state slice).
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.config.gateways.iter().position(|g| g.id == id)
    }

    /// The strategy that applies to `sender`: the first matching `routing.rules[]` entry, else
    /// `routing.strategy`.
    pub fn strategy_for(&self, sender: &str) -> Strategy {
        self.strategy_with(&mut Matcher::new(self, sender))
    }

    fn strategy_with(&self, m: &mut Matcher<'_, '_>) -> Strategy {
        self.rules
            .iter()
            .find(|(span, _)| m.first_match(*span).is_some())
            .map_or(self.config.routing.strategy, |&(_, s)| s)
    }

    /// Marks (in `marks`, indexed like `config.gateways`) every gateway [`Router::route`] may
    /// return as a candidate for `req` on *some* state: the ones the state-independent filters
    /// keep (enabled, `can_route` matched, not excluded), only the pinned one when the message
    /// pins a known gateway without `routing.pinned_failover`, none when it pins an unknown one
    /// without it. Reading the state of the marked gateways is therefore enough to route the
    /// message on any state, without ranking it twice. Marks already set stay set and their
    /// gateways are not matched again, so one `marks` collects a whole batch cheaply. Indices
    /// past the end of `marks` are skipped.
    pub fn mark_reachable(&self, req: &RouteRequest<'_>, marks: &mut [bool]) {
        let gateways = &self.config.gateways;
        let mut m = Matcher::new(self, req.sender);
        let mut only = None;
        if let Some(pinned) = req.pinned
            && !self.config.routing.pinned_failover
        {
            match self.slots.iter().find(|s| gateways[s.index].id == pinned) {
                Some(slot) => only = Some(slot.index),
                None => return,
            }
        }
        for slot in &self.slots {
            // Already marked (by an earlier message of the batch): nothing to match.
            let Some(mark) = marks.get_mut(slot.index) else {
                continue;
            };
            if *mark || only.is_some_and(|i| i != slot.index) {
                continue;
            }
            let pinned = req.pinned == Some(gateways[slot.index].id.as_str());
            *mark = self.statically_kept(slot, pinned, &mut m);
        }
    }

    /// The filters of [`Router::verdict`] that do not depend on state.
    fn statically_kept(&self, slot: &Slot, pinned: bool, m: &mut Matcher<'_, '_>) -> bool {
        let reserved = pinned && slot.can_route.start == slot.can_route.end;
        slot.enabled
            && (reserved || m.first_match(slot.can_route).is_some())
            && m.first_match(slot.exclude).is_none()
    }

    /// Orders the gateways for one message (see the module docs for every rule).
    ///
    /// `state` is indexed like `config.gateways`; a gateway past its end has
    /// `GatewayState::default()` (Unknown / Closed / unknown quota). `now` is epoch ms, compared
    /// with `BreakerView::Open::until`.
    pub fn route(
        &self,
        req: &RouteRequest<'_>,
        state: &[GatewayState],
        now: EpochMillis,
    ) -> RoutePlan<'_> {
        let mut m = Matcher::new(self, req.sender);
        let strategy = self.strategy_with(&mut m);
        let gateways = &self.config.gateways;
        let mut plan = RoutePlan {
            strategy,
            pin: None,
            candidates: Vec::with_capacity(gateways.len()),
            // Usually a few: grown on demand rather than sized for every gateway.
            dropped: Vec::new(),
        };

        if let Some(pinned) = req.pinned {
            let fell_back = self.config.routing.pinned_failover;
            match self.slots.iter().find(|s| gateways[s.index].id == pinned) {
                Some(slot) => {
                    let (gateway, index) = (&gateways[slot.index], slot.index);
                    match self.verdict(slot, true, state_of(state, index), &mut m, now) {
                        Ok(reason) => {
                            plan.pin = Some(PinOutcome::Used(gateway));
                            plan.candidates.push(Candidate {
                                gateway,
                                index,
                                reason: KeptReason {
                                    order: OrderReason::Pinned,
                                    ..reason
                                },
                            });
                            self.drop_all_but(index, &mut plan.dropped);
                            return plan;
                        }
                        Err(reason) => {
                            plan.pin = Some(PinOutcome::Unusable { gateway, fell_back });
                            if !fell_back {
                                plan.dropped.push(Dropped {
                                    gateway,
                                    index,
                                    reason,
                                });
                                self.drop_all_but(index, &mut plan.dropped);
                                return plan;
                            }
                        }
                    }
                }
                None => {
                    plan.pin = Some(PinOutcome::Unknown {
                        id: pinned.to_owned(),
                        fell_back,
                    });
                    if !fell_back {
                        self.drop_all_but(usize::MAX, &mut plan.dropped);
                        return plan;
                    }
                }
            }
        }

        for slot in &self.slots {
            let (gateway, index) = (&gateways[slot.index], slot.index);
            match self.verdict(slot, false, state_of(state, index), &mut m, now) {
                Ok(reason) => plan.candidates.push(Candidate {
                    gateway,
                    index,
                    reason,
                }),
                Err(reason) => plan.dropped.push(Dropped {
                    gateway,
                    index,
                    reason,
                }),
            }
        }

        if strategy != Strategy::Priority && plan.candidates.len() > 1 {
            let hash = MessageHash::new(req.message_id);
            // Candidates come out of the pass grouped (legacy first in hybrid mode), each group
            // by (priority, id), which is the starting order of every strategy.
            let legacy = plan
                .candidates
                .iter()
                .take_while(|c| c.reason.group == Some(HybridGroup::Legacy))
                .count();
            let mut perm: Vec<usize> = (0..plan.candidates.len()).collect();
            let (first, second) = plan.candidates.split_at_mut(legacy);
            let (first_perm, second_perm) = perm.split_at_mut(legacy);
            for (group, group_perm, offset, rounds) in [
                (first, first_perm, 0, 0),
                (second, second_perm, legacy, SECOND_GROUP_ROUNDS),
            ] {
                let ctx = OrderContext {
                    sender: req.sender,
                    state,
                    hash,
                    rounds,
                };
                // Strategies see positions within their group.
                group_perm.iter_mut().for_each(|p| *p -= offset);
                self.order_group(group, group_perm, strategy, &ctx);
                group_perm.iter_mut().for_each(|p| *p += offset);
            }
            permute(&mut plan.candidates, &mut perm);
        }

        if !self.config.routing.failover_enabled && plan.candidates.len() > 1 {
            plan.dropped
                .extend(plan.candidates.drain(1..).map(|c| Dropped {
                    gateway: c.gateway,
                    index: c.index,
                    reason: DropReason::FailoverDisabled,
                }));
        }
        plan
    }

    /// The indices (in `config.gateways`) of [`Router::route`]'s candidates, in the same
    /// order, written to `out` (cleared first): the per-message path of the send pipeline,
    /// which tries gateways in that order and needs no reasons. A property test holds the two
    /// equal on random configs, states and requests. Without a candidate (`out` left empty)
    /// the caller asks [`Router::route`] why.
    ///
    /// The common shapes (no pin, no hybrid groups; `priority`, `failover`, `round_robin` or
    /// `least_loaded`) are ranked on indices with `scratch` reused across calls, so a message
    /// costs no allocation; the others take [`Router::route`]'s indices.
    pub fn rank(
        &self,
        req: &RouteRequest<'_>,
        state: &[GatewayState],
        now: EpochMillis,
        scratch: &mut RankScratch,
        out: &mut Vec<usize>,
    ) {
        let fixed = self.static_route(req);
        self.rank_static(req, fixed, state, now, scratch, out);
    }

    /// What [`Router::rank`] needs of a message apart from state, worked out once (the
    /// pipeline does it when it plans the batch's reads, and marks the reachable gateways
    /// from it): the gateways the state-independent filters keep and the strategy. `None`
    /// for a message [`Router::rank`] hands to [`Router::route`] anyway (pinned, hybrid mode)
    /// and for configs of more than 64 gateways.
    pub fn static_route(&self, req: &RouteRequest<'_>) -> Option<StaticRoute> {
        if req.pinned.is_some()
            || self.config.mode == GatewayMode::Hybrid
            || self.config.gateways.len() > 64
        {
            return None;
        }
        let mut m = Matcher::new(self, req.sender);
        let strategy = self.strategy_with(&mut m);
        // The gateways some matching pattern admits, less those some matching pattern
        // excludes (`statically_kept` for every gateway at once). A pattern that could add no
        // gateway not yet known is not matched.
        let (mut admitted, mut excluded) = (0_u64, 0_u64);
        for (id, (pattern, &(admits, excludes))) in
            self.patterns.iter().zip(&self.pattern_masks).enumerate()
        {
            if admits & !admitted == 0 && excludes & !excluded == 0 {
                continue;
            }
            if m.matches(id, pattern) {
                admitted |= admits;
                excluded |= excludes;
            }
        }
        Some(StaticRoute {
            kept: self.enabled & admitted & !excluded,
            strategy,
        })
    }

    /// [`Router::rank`] with the message's [`Router::static_route`] already worked out.
    pub fn rank_static(
        &self,
        req: &RouteRequest<'_>,
        fixed: Option<StaticRoute>,
        state: &[GatewayState],
        now: EpochMillis,
        scratch: &mut RankScratch,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        // Sized once for every gateway: a list reused across a batch never grows again.
        out.reserve(self.slots.len());
        let lean = fixed.filter(|f| {
            matches!(
                f.strategy,
                Strategy::Priority
                    | Strategy::Failover
                    | Strategy::RoundRobin
                    | Strategy::LeastLoaded
            )
        });
        let Some(StaticRoute { kept, strategy }) = lean else {
            out.extend(
                self.route(req, state, now)
                    .candidates
                    .iter()
                    .map(|c| c.index),
            );
            return;
        };
        let routing = &self.config.routing;
        for slot in &self.slots {
            if kept >> slot.index & 1 == 0 {
                continue;
            }
            let s = state_of(state, slot.index);
            let dropped = s.held.is_some()
                || (slot.health_checked
                    && routing.health_check_required
                    && s.health == Health::Unhealthy)
                || (slot.breaker_enabled
                    && routing.circuit_breaker_required
                    && matches!(s.breaker, BreakerView::Open { until } if until > now));
            if !dropped {
                out.push(slot.index);
            }
        }
        if out.len() > 1 {
            match strategy {
                Strategy::Failover => self.rank_failover_memo(out, scratch),
                Strategy::RoundRobin => {
                    // Outside hybrid mode every candidate is in the second group's rounds.
                    let rotation = MessageHash::new(req.message_id)
                        .below(SECOND_GROUP_ROUNDS, len_u64(out.len()));
                    out.rotate_left(usize::try_from(rotation).unwrap_or(0));
                }
                Strategy::LeastLoaded => {
                    // As `order_least_loaded`: most remaining first, then the (priority, id)
                    // position.
                    let keys = &mut scratch.keys;
                    keys.clear();
                    keys.extend(out.iter().enumerate().map(|(p, &g)| {
                        let (remaining, _) = effective_remaining(state_of(state, g));
                        (u64::MAX - remaining.to_bits(), p)
                    }));
                    keys.sort_unstable();
                    let order = &mut scratch.queue;
                    order.clear();
                    order.extend(keys.iter().map(|&(_, p)| out[p]));
                    out.clone_from(order);
                }
                _ => {}
            }
            if !routing.failover_enabled {
                out.truncate(1);
            }
        }
    }

    /// [`Router::rank_failover`], remembered per set of candidates for the caller's next
    /// messages: the failover order depends on nothing else (the messages of a batch mostly
    /// share a set).
    fn rank_failover_memo(&self, out: &mut Vec<usize>, scratch: &mut RankScratch) {
        // Ranked on indices only for configs of at most 64 gateways (`static_route`).
        let set = out.iter().fold(0_u64, |set, &g| set | 1 << g);
        if scratch.router != self.id {
            scratch.router = self.id;
            scratch.orders.clear();
            scratch.ordered.clear();
        }
        if let Some(&(_, start)) = scratch.orders.iter().find(|(s, _)| *s == set) {
            out.clear();
            out.extend_from_slice(&scratch.ordered[start..start + set.count_ones() as usize]);
            return;
        }
        self.rank_failover(out, set, &mut scratch.queue);
        if scratch.orders.len() < REMEMBERED_ORDERS {
            scratch.orders.push((set, scratch.ordered.len()));
            scratch.ordered.extend_from_slice(out);
        }
    }

    /// `order_failover` on the candidates `out` (in (priority, id) order; `set` is them as a
    /// bit mask): the first, then its chains breadth first, then the candidates in no followed
    /// chain, in their order.
    fn rank_failover(&self, out: &mut [usize], set: u64, queue: &mut Vec<usize>) {
        queue.clear();
        let head = out[0];
        let mut visited = 1_u64 << head;
        queue.push(head);
        let mut next = 0;
        while let Some(&from) = queue.get(next) {
            next += 1;
            for &target in &self.failover[from] {
                if visited >> target & 1 == 0 {
                    visited |= 1 << target;
                    queue.push(target);
                }
            }
        }
        // `queue` is the chain order (every gateway reached, candidate or not). Move the
        // unchained candidates to the end (in order), then write the chained ones before them.
        let mut tail = out.len();
        for i in (0..out.len()).rev() {
            let g = out[i];
            if visited >> g & 1 == 0 {
                tail -= 1;
                out[tail] = g;
            }
        }
        for (slot, &g) in out
            .iter_mut()
            .zip(queue.iter().filter(|&&g| set >> g & 1 == 1))
        {
            *slot = g;
        }
    }

    /// Every gateway but `keep`, dropped as not pinned, in routing order.
    fn drop_all_but<'r>(&'r self, keep: usize, dropped: &mut Vec<Dropped<'r>>) {
        dropped.extend(
            self.slots
                .iter()
                .filter(|s| s.index != keep)
                .map(|s| Dropped {
                    gateway: &self.config.gateways[s.index],
                    index: s.index,
                    reason: DropReason::NotPinned,
                }),
        );
    }

    /// Applies the filters to one gateway; the kept reason starts with priority order.
    fn verdict<'r>(
        &'r self,
        slot: &Slot,
        pinned: bool,
        state: GatewayState,
        m: &mut Matcher<'r, '_>,
        now: EpochMillis,
    ) -> Result<KeptReason<'r>, DropReason<'r>> {
        let routing = &self.config.routing;
        if !slot.enabled {
            return Err(DropReason::Disabled);
        }
        let matched = if slot.can_route.start == slot.can_route.end {
            if !pinned {
                return Err(DropReason::NoCanRoute);
            }
            None
        } else {
            Some(
                m.first_match(slot.can_route)
                    .ok_or(DropReason::SenderNotMatched)?,
            )
        };
        if let Some(pattern) = m.first_match(slot.exclude) {
            return Err(DropReason::Excluded { pattern });
        }
        if let Some(held) = state.held {
            return Err(DropReason::Held(held));
        }
        let health = if !slot.health_checked {
            HealthNote::NotChecked
        } else {
            match state.health {
                Health::Unknown => HealthNote::Unknown,
                Health::Healthy => HealthNote::Healthy,
                Health::Degraded => HealthNote::Degraded,
                Health::Unhealthy if routing.health_check_required => {
                    return Err(DropReason::Unhealthy);
                }
                Health::Unhealthy => HealthNote::UnhealthyNotRequired,
            }
        };
        let breaker = if !slot.breaker_enabled {
            BreakerNote::Disabled
        } else {
            match state.breaker {
                BreakerView::Closed => BreakerNote::Closed,
                BreakerView::HalfOpen => BreakerNote::HalfOpen,
                BreakerView::Open { until } if until <= now => {
                    BreakerNote::TimeoutElapsed { until }
                }
                BreakerView::Open { until } if routing.circuit_breaker_required => {
                    return Err(DropReason::BreakerOpen { until });
                }
                BreakerView::Open { until } => BreakerNote::OpenNotRequired { until },
            }
        };
        Ok(KeptReason {
            matched,
            health,
            breaker,
            group: slot.group,
            order: OrderReason::Priority {
                priority: self.config.gateways[slot.index].priority,
            },
        })
    }

    /// Orders one group of candidates (listed by (priority, id)) by `strategy`: on return,
    /// `perm[i]` is the group position of the candidate to try `i`-th. Order reasons are set on
    /// the candidates where they stand.
    fn order_group<'r>(
        &'r self,
        group: &mut [Candidate<'r>],
        perm: &mut [usize],
        strategy: Strategy,
        ctx: &OrderContext<'_>,
    ) {
        if group.is_empty() {
            return;
        }
        match strategy {
            Strategy::Priority => {}
            Strategy::Failover => self.order_failover(group, perm),
            Strategy::RoundRobin => order_round_robin(group, perm, ctx),
            Strategy::Weighted => order_weighted(group, perm, ctx),
            Strategy::LeastLoaded => order_least_loaded(group, perm, ctx),
            Strategy::DomainBased => order_domain_based(group, perm, ctx),
        }
    }

    fn order_failover<'r>(&'r self, group: &mut [Candidate<'r>], perm: &mut [usize]) {
        let gateways = &self.config.gateways;
        let mut visited = vec![false; gateways.len()];
        let mut queue = Vec::with_capacity(gateways.len());
        let head = group[0].index;
        visited[head] = true;
        queue.push(head);
        group[0].reason.order = OrderReason::FailoverPrimary {
            priority: group[0].gateway.priority,
        };
        let mut placed = 1;
        let mut next = 0;
        while let Some(&from) = queue.get(next) {
            next += 1;
            for &target in &self.failover[from] {
                if std::mem::replace(&mut visited[target], true) {
                    continue;
                }
                queue.push(target);
                let found = perm[placed..]
                    .iter()
                    .position(|&p| group[p].index == target);
                if let Some(offset) = found {
                    move_to(perm, placed + offset, placed);
                    group[perm[placed]].reason.order = OrderReason::FailoverTarget {
                        from: &gateways[from].id,
                    };
                    placed += 1;
                }
            }
        }
        for &p in &perm[placed..] {
            let c = &mut group[p];
            c.reason.order = OrderReason::AfterChains {
                priority: c.gateway.priority,
            };
        }
    }
}

/// The distinct patterns of a config, and the id lists that refer to them.
#[derive(Default)]
struct PatternTable {
    patterns: Vec<SenderPattern>,
    ids: Vec<usize>,
}

impl PatternTable {
    fn intern_all(&mut self, list: &[SenderPattern]) -> Span {
        let start = self.ids.len();
        for p in list {
            let id = match self.patterns.iter().position(|q| q == p) {
                Some(id) => id,
                None => {
                    self.patterns.push(p.clone());
                    self.patterns.len() - 1
                }
            };
            self.ids.push(id);
        }
        let end = self.ids.len();
        Span { start, end }
    }
}

/// Matches one sender against the router's patterns, remembering each result for the rest of
/// the `route` call.
struct Matcher<'r, 's> {
    router: &'r Router,
    sender: SplitSender<'s>,
    /// Per pattern id: 0 not matched yet, [`MEMO_NO_MATCH`], [`MEMO_MATCH`] (exact-domain
    /// patterns are known from the start). Bytes rather than bit sets:
    /// one load per lookup, where 128-bit shifts cost tens of instructions.
    memo: [u8; MEMO_PATTERNS],
}

impl<'r, 's> Matcher<'r, 's> {
    fn new(router: &'r Router, sender: &'s str) -> Self {
        let sender = SplitSender::new(sender);
        let mut memo = router.memo_template;
        if !router.domains.is_empty()
            && let Some(domain) = sender.domain()
        {
            // The lookup wants the domain in lower case: copied only when it is not already.
            let hits = if domain.bytes().any(|b| b.is_ascii_uppercase()) {
                router.domains.get(domain.to_ascii_lowercase().as_str())
            } else {
                router.domains.get(domain)
            };
            for &id in hits.map(Vec::as_slice).unwrap_or_default() {
                memo[id] = MEMO_MATCH;
            }
        }
        Self {
            router,
            sender,
            memo,
        }
    }

    /// The first pattern of `span` matching the sender.
    fn first_match(&mut self, span: Span) -> Option<&'r SenderPattern> {
        let router = self.router;
        let ids = router
            .pattern_ids
            .get(span.start..span.end)
            .unwrap_or_default();
        ids.iter().find_map(|&id| {
            let pattern = router.patterns.get(id)?;
            self.matches(id, pattern).then_some(pattern)
        })
    }

    fn matches(&mut self, id: usize, pattern: &SenderPattern) -> bool {
        match self.memo.get_mut(id) {
            Some(0) | None => {
                let matched = pattern.matches_split(&self.sender);
                if let Some(slot) = self.memo.get_mut(id) {
                    *slot = if matched { MEMO_MATCH } else { MEMO_NO_MATCH };
                }
                matched
            }
            Some(known) => *known == MEMO_MATCH,
        }
    }
}

/// Per-message inputs of the ordering strategies.
struct OrderContext<'a> {
    sender: &'a str,
    state: &'a [GatewayState],
    hash: MessageHash,
    /// First hash round of this group.
    rounds: u64,
}

fn group_rank(hybrid: bool, g: &Gateway) -> u8 {
    match (&g.source, hybrid) {
        (GatewaySource::LegacyWorkspace(_), true) => 0,
        _ => 1,
    }
}

/// Reorders `items` in place so that `items[i]` becomes the old `items[perm[i]]`, following
/// the permutation's cycles (no copy of the list). `perm` is consumed (every entry it visits is
/// overwritten). Meant for a true permutation of `items`' indices; on anything else it stops
/// following a cycle where an entry is out of range or repeated, and never panics.
fn permute<T>(items: &mut [T], perm: &mut [usize]) {
    const DONE: usize = usize::MAX;
    for start in 0..perm.len().min(items.len()) {
        let mut i = start;
        while let Some(slot) = perm.get_mut(i) {
            let from = std::mem::replace(slot, DONE);
            if from == DONE
                || from == start
                || from >= items.len()
                || perm.get(from).is_none_or(|&p| p == DONE)
            {
                break;
            }
            items.swap(i, from);
            i = from;
        }
    }
}

fn state_of(state: &[GatewayState], index: usize) -> GatewayState {
    state.get(index).copied().unwrap_or_default()
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Moves `perm[from]` to `to` (`to <= from`), shifting the entries between one place back, so
/// the rest keeps its relative order.
fn move_to(perm: &mut [usize], from: usize, to: usize) {
    let moved = perm[from];
    let mut i = from;
    while i > to {
        perm[i] = perm[i - 1];
        i -= 1;
    }
    perm[to] = moved;
}

fn order_round_robin(group: &mut [Candidate<'_>], perm: &mut [usize], ctx: &OrderContext<'_>) {
    let of = group.len();
    let rotation = usize::try_from(ctx.hash.below(ctx.rounds, len_u64(of))).unwrap_or(0);
    perm.rotate_left(rotation);
    for c in group.iter_mut() {
        c.reason.order = OrderReason::RoundRobin { rotation, of };
    }
}

fn order_weighted(group: &mut [Candidate<'_>], perm: &mut [usize], ctx: &OrderContext<'_>) {
    // Stable partition: weighted gateways first, both halves keep (priority, id) order.
    let mut weighted = 0;
    for i in 0..perm.len() {
        if group[perm[i]].gateway.weight > 0 {
            move_to(perm, i, weighted);
            weighted += 1;
        }
    }
    // The draws read weights many times: keep them next to the positions.
    let mut draw: Vec<(u32, usize)> = perm[..weighted]
        .iter()
        .map(|&p| (group[p].gateway.weight, p))
        .collect();
    let mut total: u64 = draw.iter().map(|&(w, _)| u64::from(w)).sum();
    for (k, round) in (0..weighted).zip(ctx.rounds..) {
        let mut point = ctx.hash.below(round, total);
        let mut pick = weighted - 1;
        for (j, &(w, _)) in draw.iter().enumerate().skip(k) {
            if point < u64::from(w) {
                pick = j;
                break;
            }
            point -= u64::from(w);
        }
        // Swapping the drawn entry into place (rather than shifting the rest) reorders the
        // undrawn ones, which changes nothing: each draw is proportional to weight whatever the
        // order, and the order is itself a function of the message id alone.
        draw.swap(k, pick);
        let (weight, p) = draw[k];
        perm[k] = p;
        group[p].reason.order = OrderReason::Weighted { weight, total };
        total -= u64::from(weight);
    }
    for &p in &perm[weighted..] {
        let c = &mut group[p];
        c.reason.order = OrderReason::ZeroWeight {
            priority: c.gateway.priority,
        };
    }
}

fn effective_remaining(state: GatewayState) -> (f64, bool) {
    match state.remaining {
        None => (1.0, false),
        Some(r) if r.is_nan() => (0.0, true),
        Some(r) => (r.clamp(0.0, 1.0), true),
    }
}

fn order_least_loaded(group: &mut [Candidate<'_>], perm: &mut [usize], ctx: &OrderContext<'_>) {
    // Sort keys computed once: the fraction's bits (monotonic for non-negative floats, and the
    // fraction is clamped to 0.0..=1.0) inverted for "most first", then the (priority, id)
    // position, which makes every key distinct and the order total.
    let mut keys: Vec<(u64, usize)> = Vec::with_capacity(group.len());
    for (c, &p) in group.iter_mut().zip(perm.iter()) {
        let (remaining, known) = effective_remaining(state_of(ctx.state, c.index));
        c.reason.order = OrderReason::LeastLoaded { remaining, known };
        keys.push((u64::MAX - remaining.to_bits(), p));
    }
    keys.sort_unstable();
    for (slot, &(_, p)) in perm.iter_mut().zip(&keys) {
        *slot = p;
    }
}

fn order_domain_based(group: &mut [Candidate<'_>], perm: &mut [usize], ctx: &OrderContext<'_>) {
    let domain = ctx.sender.rsplit_once('@').map_or("", |(_, d)| d);
    let names = |d: &str| !domain.is_empty() && d.eq_ignore_ascii_case(domain);
    let mut matched = 0;
    for (i, c) in group.iter_mut().enumerate() {
        let g = c.gateway;
        let by_domain = g
            .domain
            .as_deref()
            .filter(|d| names(d))
            .map(|domain| OrderReason::DomainGateway { domain });
        let order = by_domain.or_else(|| {
            g.routing
                .can_route
                .iter()
                .find(|p| p.named_domain().is_some_and(names))
                .map(|pattern| OrderReason::DomainPattern { pattern })
        });
        match order {
            Some(order) => {
                c.reason.order = order;
                // `perm[i]` is still `i`: earlier moves only shifted entries before it.
                move_to(perm, i, matched);
                matched += 1;
            }
            None => {
                c.reason.order = OrderReason::DomainOther {
                    priority: g.priority,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests;
