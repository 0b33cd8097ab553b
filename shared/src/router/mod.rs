//! The router (DESIGN §3.1): which gateways may take a message, and in which order to try them.
//!
//! A pure core. Input: the effective [`Config`], a [`RouteRequest`], a view of live state
//! ([`GatewayState`] per gateway) and `now`. Output: a [`RoutePlan`], the ordered candidates
//! and every dropped gateway with its reason. Same config, request, state and `now` → same plan,
//! on every instance, so a retried message follows the same path and tests are reproducible.
//!
//! # Filters (every path, failover targets and pinned gateways included)
//! In this order; a dropped gateway reports the first filter it fails:
//! 1. `enabled` must be true.
//! 2. A `can_route` pattern must match the sender (an empty `can_route` takes nobody).
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
//! # Failover disabled
//! With `routing.failover_enabled == false` only the first candidate is kept; the rest are
//! dropped as [`DropReason::FailoverDisabled`]. Otherwise the whole ordered list is returned and
//! the pipeline bounds attempts with `routing.max_failover_attempts`.
//!
//! # Cost
//! [`Router::new`] precomputes the (group, priority, id) order and the failover chains as
//! indices, so [`Router::route`] does one pass over the gateways, a few in-place reorderings and
//! two `Vec` allocations (three with `failover`); reason text is rendered only on display.

mod hash;
mod plan;

use std::sync::Arc;

pub use plan::{
    BreakerNote, Candidate, DropReason, Dropped, HealthNote, HybridGroup, KeptReason, OrderReason,
    PinOutcome, RoutePlan,
};

use crate::clock::EpochMillis;
use crate::config::{Config, Gateway, GatewayMode, GatewaySource, Strategy};
use hash::MessageHash;

/// What the router needs to know about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRequest<'a> {
    /// The message id (idempotency key); seeds `round_robin` and `weighted` draws.
    pub message_id: &'a str,
    /// The sender address matched against `can_route` / `exclude_patterns` (any case).
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

/// A gateway's breaker as last read from shared state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BreakerView {
    /// Sends flow.
    #[default]
    Closed,
    /// Refusing sends until `until` (epoch ms); from then on a send attempt may probe it.
    Open {
        /// End of the open period (epoch ms).
        until: EpochMillis,
    },
    /// Admitting a limited number of trial sends.
    HalfOpen,
}

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
}

/// Routes messages over one effective config. Cheap to share (`Arc` it); build a new one when
/// the config is reloaded.
#[derive(Debug, Clone)]
pub struct Router {
    config: Arc<Config>,
    /// Gateway indices in (hybrid group, priority, id) order.
    order: Vec<usize>,
    /// `failover_to` of each gateway as indices (unknown ids, already rejected by validation,
    /// are skipped).
    failover: Vec<Vec<usize>>,
}

/// Salt added to hash rounds of the config-file group in hybrid mode, so the two groups' draws
/// are independent.
const SECOND_GROUP_ROUNDS: u64 = 1 << 32;

impl Router {
    /// Precomputes the routing order and failover chains of `config`.
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
        Router {
            config,
            order,
            failover,
        }
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
        self.config
            .routing
            .rules
            .iter()
            .find(|r| r.senders.iter().any(|p| p.matches(sender)))
            .map_or(self.config.routing.strategy, |r| r.strategy)
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
        let strategy = self.strategy_for(req.sender);
        let gateways = &self.config.gateways;
        let mut plan = RoutePlan {
            strategy,
            pin: None,
            candidates: Vec::with_capacity(gateways.len()),
            dropped: Vec::with_capacity(gateways.len()),
        };

        if let Some(pinned) = req.pinned {
            let fell_back = self.config.routing.pinned_failover;
            match self.index_of(pinned) {
                Some(index) => {
                    let gateway = &gateways[index];
                    match self.verdict(gateway, state_of(state, index), req.sender, now) {
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

        for &index in &self.order {
            let gateway = &gateways[index];
            match self.verdict(gateway, state_of(state, index), req.sender, now) {
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

        let hash = MessageHash::new(req.message_id);
        // Candidates come out of the pass grouped (legacy first in hybrid mode), each group by
        // (priority, id), which is the starting order of every strategy.
        let legacy = plan
            .candidates
            .iter()
            .take_while(|c| c.reason.group == Some(HybridGroup::Legacy))
            .count();
        let (first, second) = plan.candidates.split_at_mut(legacy);
        self.order_group(first, strategy, req.sender, state, hash, 0);
        self.order_group(
            second,
            strategy,
            req.sender,
            state,
            hash,
            SECOND_GROUP_ROUNDS,
        );

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

    /// Every gateway but `keep`, dropped as not pinned, in routing order.
    fn drop_all_but<'r>(&'r self, keep: usize, dropped: &mut Vec<Dropped<'r>>) {
        dropped.extend(
            self.order
                .iter()
                .filter(|&&i| i != keep)
                .map(|&index| Dropped {
                    gateway: &self.config.gateways[index],
                    index,
                    reason: DropReason::NotPinned,
                }),
        );
    }

    /// Applies the filters to one gateway; the kept reason starts with priority order.
    fn verdict<'r>(
        &'r self,
        gateway: &'r Gateway,
        state: GatewayState,
        sender: &str,
        now: EpochMillis,
    ) -> Result<KeptReason<'r>, DropReason<'r>> {
        let routing = &self.config.routing;
        if !gateway.enabled {
            return Err(DropReason::Disabled);
        }
        if gateway.routing.can_route.is_empty() {
            return Err(DropReason::NoCanRoute);
        }
        let matched = gateway
            .routing
            .can_route
            .iter()
            .find(|p| p.matches(sender))
            .ok_or(DropReason::SenderNotMatched)?;
        if let Some(pattern) = gateway
            .routing
            .exclude_patterns
            .iter()
            .find(|p| p.matches(sender))
        {
            return Err(DropReason::Excluded { pattern });
        }
        let health = if !gateway.health_check.enabled {
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
        let breaker = if !gateway.circuit_breaker.enabled {
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
        let group = (self.config.mode == GatewayMode::Hybrid).then_some(match gateway.source {
            GatewaySource::LegacyWorkspace(_) => HybridGroup::Legacy,
            GatewaySource::ConfigFile => HybridGroup::Config,
        });
        Ok(KeptReason {
            matched,
            health,
            breaker,
            group,
            order: OrderReason::Priority {
                priority: gateway.priority,
            },
        })
    }

    /// Reorders one group of candidates (already by (priority, id)) by `strategy`.
    fn order_group<'r>(
        &'r self,
        group: &mut [Candidate<'r>],
        strategy: Strategy,
        sender: &str,
        state: &[GatewayState],
        hash: MessageHash,
        rounds: u64,
    ) {
        if group.is_empty() {
            return;
        }
        match strategy {
            Strategy::Priority => {}
            Strategy::Failover => self.order_failover(group),
            Strategy::RoundRobin => order_round_robin(group, hash, rounds),
            Strategy::Weighted => order_weighted(group, hash, rounds),
            Strategy::LeastLoaded => order_least_loaded(group, state),
            Strategy::DomainBased => order_domain_based(group, sender),
        }
    }

    fn order_failover<'r>(&'r self, group: &mut [Candidate<'r>]) {
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
                if let Some(offset) = group[placed..].iter().position(|c| c.index == target) {
                    group[placed..=placed + offset].rotate_right(1);
                    group[placed].reason.order = OrderReason::FailoverTarget {
                        from: &gateways[from].id,
                    };
                    placed += 1;
                }
            }
        }
        for c in &mut group[placed..] {
            c.reason.order = OrderReason::AfterChains {
                priority: c.gateway.priority,
            };
        }
    }
}

fn group_rank(hybrid: bool, g: &Gateway) -> u8 {
    match (&g.source, hybrid) {
        (GatewaySource::LegacyWorkspace(_), true) => 0,
        _ => 1,
    }
}

fn state_of(state: &[GatewayState], index: usize) -> GatewayState {
    state.get(index).copied().unwrap_or_default()
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn order_round_robin(group: &mut [Candidate<'_>], hash: MessageHash, rounds: u64) {
    let of = group.len();
    let rotation = usize::try_from(hash.below(rounds, len_u64(of))).unwrap_or(0);
    group.rotate_left(rotation);
    for c in group.iter_mut() {
        c.reason.order = OrderReason::RoundRobin { rotation, of };
    }
}

fn order_weighted(group: &mut [Candidate<'_>], hash: MessageHash, rounds: u64) {
    // Stable partition: weighted gateways first, both halves keep (priority, id) order.
    let mut weighted = 0;
    for i in 0..group.len() {
        if group[i].gateway.weight > 0 {
            group[weighted..=i].rotate_right(1);
            weighted += 1;
        }
    }
    let mut total: u64 = group[..weighted]
        .iter()
        .map(|c| u64::from(c.gateway.weight))
        .sum();
    for (k, slot) in (0..weighted).zip(rounds..) {
        let drawn_total = total;
        let mut point = hash.below(slot, total);
        let mut pick = weighted - 1;
        for (offset, c) in group[k..weighted].iter().enumerate() {
            let w = u64::from(c.gateway.weight);
            if point < w {
                pick = k + offset;
                break;
            }
            point -= w;
        }
        // Rotating (not swapping) keeps the undrawn rest in priority order, so the plan reads
        // naturally and does not depend on earlier draws' positions.
        group[k..=pick].rotate_right(1);
        let weight = group[k].gateway.weight;
        total -= u64::from(weight);
        group[k].reason.order = OrderReason::Weighted {
            weight,
            total: drawn_total,
        };
    }
    for c in &mut group[weighted..] {
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

fn order_least_loaded(group: &mut [Candidate<'_>], state: &[GatewayState]) {
    for c in group.iter_mut() {
        let (remaining, known) = effective_remaining(state_of(state, c.index));
        c.reason.order = OrderReason::LeastLoaded { remaining, known };
    }
    let remaining = |c: &Candidate<'_>| match c.reason.order {
        OrderReason::LeastLoaded { remaining, .. } => remaining,
        _ => 0.0,
    };
    // Stable: equal fractions keep the (priority, id) order.
    group.sort_by(|a, b| remaining(b).total_cmp(&remaining(a)));
}

fn order_domain_based<'r>(group: &mut [Candidate<'r>], sender: &str) {
    let domain = sender.rsplit_once('@').map_or("", |(_, d)| d);
    let mut matched = 0;
    for i in 0..group.len() {
        let g = group[i].gateway;
        let by_domain = g
            .domain
            .as_deref()
            .filter(|d| !domain.is_empty() && d.eq_ignore_ascii_case(domain))
            .map(|domain| OrderReason::DomainGateway { domain });
        let order = by_domain.or_else(|| {
            g.routing
                .can_route
                .iter()
                .find(|p| {
                    p.named_domain()
                        .is_some_and(|d| !domain.is_empty() && d.eq_ignore_ascii_case(domain))
                })
                .map(|pattern| OrderReason::DomainPattern { pattern })
        });
        match order {
            Some(order) => {
                group[i].reason.order = order;
                group[matched..=i].rotate_right(1);
                matched += 1;
            }
            None => {
                group[i].reason.order = OrderReason::DomainOther {
                    priority: g.priority,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests;
