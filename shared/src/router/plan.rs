//! What the router answers: the ordered candidates, the dropped gateways and why.
//!
//! Reasons are small enums holding borrowed config data (`&SenderPattern`, ids); their text is
//! rendered only when someone displays or serialises a plan (`gateway route`, debug logs), so
//! the send path pays nothing for the explanations.

use std::fmt;

use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};

use crate::clock::{DAY_MS, EpochMillis, HOUR_MS, civil_from_days, utc_day};
use crate::config::{Gateway, Strategy};
use crate::pattern::SenderPattern;

/// The router's answer for one message.
///
/// `candidates` is the order in which the pipeline should try gateways (it bounds the attempts
/// with `routing.max_failover_attempts`); `dropped` lists every other gateway the router looked
/// at, each with the first filter it failed. A gateway appears in at most one of the two lists.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePlan<'r> {
    /// The strategy that ordered the candidates (global, or from the first matching rule).
    pub strategy: Strategy,
    /// What became of the message's pinned gateway; `None` when the message pins none.
    pub pin: Option<PinOutcome<'r>>,
    /// Gateways to try, best first; empty when nothing can take the message.
    pub candidates: Vec<Candidate<'r>>,
    /// Gateways not to try, in priority order of the filter pass (then the ones cut because
    /// failover is disabled).
    pub dropped: Vec<Dropped<'r>>,
}

impl RoutePlan<'_> {
    /// The ids of the candidates, best first.
    pub fn candidate_ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.candidates.iter().map(|c| c.gateway.id.as_str())
    }

    /// The dropped entry of the gateway with this id, if it was dropped.
    pub fn dropped_reason(&self, id: &str) -> Option<&DropReason<'_>> {
        self.dropped
            .iter()
            .find(|d| d.gateway.id == id)
            .map(|d| &d.reason)
    }

    /// The human explanation printed by `gateway route` (same text as `Display`).
    pub fn explain(&self) -> String {
        self.to_string()
    }
}

/// A gateway the message may be sent through.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'r> {
    /// The gateway, borrowed from the router's config.
    pub gateway: &'r Gateway,
    /// Its index in `config.gateways` (and in the state slice passed to the router).
    pub index: usize,
    /// Why it is kept and why at this position.
    pub reason: KeptReason<'r>,
}

/// A gateway the message must not be sent through.
#[derive(Debug, Clone, PartialEq)]
pub struct Dropped<'r> {
    /// The gateway, borrowed from the router's config.
    pub gateway: &'r Gateway,
    /// Its index in `config.gateways`.
    pub index: usize,
    /// The first filter it failed.
    pub reason: DropReason<'r>,
}

/// What happened to the gateway a message pinned (`"gateway"` in the message).
#[derive(Debug, Clone, PartialEq)]
pub enum PinOutcome<'r> {
    /// The pinned gateway passed every filter and is the only candidate.
    Used(&'r Gateway),
    /// The pinned gateway exists but failed a filter (its reason is in `dropped`).
    /// `fell_back` is `routing.pinned_failover`: true means the candidates are the normal list,
    /// false means there are none.
    Unusable {
        /// The pinned gateway.
        gateway: &'r Gateway,
        /// Whether normal routing replaced it.
        fell_back: bool,
    },
    /// No gateway has the pinned id. `fell_back` as for [`PinOutcome::Unusable`].
    Unknown {
        /// The id the message named.
        id: String,
        /// Whether normal routing replaced it.
        fell_back: bool,
    },
}

impl PinOutcome<'_> {
    /// Machine code: `used`, `unusable` or `unknown`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Used(_) => "used",
            Self::Unusable { .. } => "unusable",
            Self::Unknown { .. } => "unknown",
        }
    }

    fn id(&self) -> &str {
        match self {
            Self::Used(g) | Self::Unusable { gateway: g, .. } => &g.id,
            Self::Unknown { id, .. } => id,
        }
    }

    fn fell_back(&self) -> bool {
        match self {
            Self::Used(_) => false,
            Self::Unusable { fell_back, .. } | Self::Unknown { fell_back, .. } => *fell_back,
        }
    }
}

impl fmt::Display for PinOutcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.id();
        match self {
            Self::Used(_) => write!(f, "pinned to {id}"),
            Self::Unusable {
                fell_back: true, ..
            } => write!(f, "pinned gateway {id} unusable; routing normally"),
            Self::Unusable {
                fell_back: false, ..
            } => write!(
                f,
                "pinned gateway {id} unusable and routing.pinned_failover is off; no candidate"
            ),
            Self::Unknown {
                fell_back: true, ..
            } => write!(f, "pinned gateway {id} does not exist; routing normally"),
            Self::Unknown {
                fell_back: false, ..
            } => write!(
                f,
                "pinned gateway {id} does not exist and routing.pinned_failover is off; no candidate"
            ),
        }
    }
}

/// Why a gateway was dropped. `Display` renders the human text, [`DropReason::code`] the
/// machine code.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DropReason<'r> {
    /// `enabled` is false.
    Disabled,
    /// Its `can_route` list is empty, so it takes no sender.
    NoCanRoute,
    /// No `can_route` pattern matches the sender.
    SenderNotMatched,
    /// This `exclude_patterns` entry matches the sender (exclusion wins over `can_route`).
    Excluded {
        /// The matching exclude pattern.
        pattern: &'r SenderPattern,
    },
    /// Last health check says unhealthy and `routing.health_check_required` is on.
    Unhealthy,
    /// Breaker open until `until` (epoch ms, still in the future) and
    /// `routing.circuit_breaker_required` is on.
    BreakerOpen {
        /// When the open period ends (epoch ms).
        until: EpochMillis,
    },
    /// An operator's lever holds it back (a pause, a breaker forced open).
    Held(Held),
    /// The message is pinned to another gateway.
    NotPinned,
    /// `routing.failover_enabled` is off and a better candidate exists.
    FailoverDisabled,
}

impl DropReason<'_> {
    /// Stable machine code (`gateway route --json`, metrics labels).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::NoCanRoute => "no_can_route",
            Self::SenderNotMatched => "sender_not_matched",
            Self::Excluded { .. } => "excluded",
            Self::Unhealthy => "unhealthy",
            Self::BreakerOpen { .. } => "breaker_open",
            Self::Held(h) => h.by.code(),
            Self::NotPinned => "not_pinned",
            Self::FailoverDisabled => "failover_disabled",
        }
    }
}

impl fmt::Display for DropReason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => f.write_str("gateway disabled"),
            Self::NoCanRoute => f.write_str("can_route is empty (only messages pinning it)"),
            Self::SenderNotMatched => f.write_str("sender matches no can_route pattern"),
            Self::Excluded { pattern } => {
                write!(f, "sender matches exclude pattern {pattern}")
            }
            Self::Unhealthy => f.write_str("unhealthy (health check required)"),
            Self::BreakerOpen { until } => {
                write!(f, "circuit breaker open until {}", Utc(*until))
            }
            Self::Held(h) => {
                f.write_str(h.by.describe())?;
                match h.until {
                    Some(until) => write!(f, " until {}", Utc(until)),
                    None => f.write_str(" until an operator changes it"),
                }
            }
            Self::NotPinned => f.write_str("message pinned to another gateway"),
            Self::FailoverDisabled => f.write_str("failover disabled"),
        }
    }
}

/// An operator's lever holding a gateway back, as the router sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Which lever.
    pub by: HeldBy,
    /// When it stops holding (epoch ms); `None`: until an operator changes it.
    pub until: Option<EpochMillis>,
}

/// Which lever holds a gateway back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldBy {
    /// All sending is paused.
    AllPaused,
    /// The gateway is paused.
    Paused,
    /// Its breaker is forced open.
    BreakerForcedOpen,
}

impl HeldBy {
    /// Stable machine code (`gateway route --json`, metrics labels).
    pub fn code(self) -> &'static str {
        match self {
            Self::AllPaused => "all_paused",
            Self::Paused => "paused",
            Self::BreakerForcedOpen => "breaker_forced_open",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::AllPaused => "all sending paused by an operator",
            Self::Paused => "paused by an operator",
            Self::BreakerForcedOpen => "circuit breaker forced open by an operator",
        }
    }
}

/// Why a gateway was kept and placed where it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeptReason<'r> {
    /// The first `can_route` pattern that matched the sender; `None` for a gateway with an
    /// empty `can_route` taken because the message pins it (reserved for pinned messages).
    pub matched: Option<&'r SenderPattern>,
    /// Health as the router saw it.
    pub health: HealthNote,
    /// Breaker as the router saw it.
    pub breaker: BreakerNote,
    /// In hybrid mode, which group the gateway was ordered in.
    pub group: Option<HybridGroup>,
    /// Why it sits at this position.
    pub order: OrderReason<'r>,
}

impl fmt::Display for KeptReason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.matched {
            Some(pattern) => write!(f, "can_route {pattern} matches, {}", self.order)?,
            None => write!(
                f,
                "reserved for pinned messages (empty can_route), {}",
                self.order
            )?,
        }
        match self.group {
            Some(HybridGroup::Legacy) => f.write_str(", legacy workspace (hybrid: first)")?,
            Some(HybridGroup::Config) => f.write_str(", config gateway (hybrid: failover)")?,
            None => {}
        }
        if self.health != HealthNote::Healthy {
            write!(f, "; {}", self.health)?;
        }
        if self.breaker != BreakerNote::Closed {
            write!(f, "; {}", self.breaker)?;
        }
        Ok(())
    }
}

/// In `GatewayMode::Hybrid`, the two groups ordered one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HybridGroup {
    /// Converted from legacy `workspaces.json`: tried first.
    Legacy,
    /// From the gateway config file: the failover for legacy workspaces.
    Config,
}

/// Health of a kept gateway as the router saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthNote {
    /// Last check healthy.
    Healthy,
    /// Last check degraded; still routed to.
    Degraded,
    /// Never checked (or no record); routed to, since an unchecked gateway may be fine.
    Unknown,
    /// The gateway's `health_check.enabled` is off: any stored status is stale and ignored.
    NotChecked,
    /// Unhealthy, kept because `routing.health_check_required` is off.
    UnhealthyNotRequired,
}

impl HealthNote {
    /// Stable machine code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unknown => "unknown",
            Self::NotChecked => "not_checked",
            Self::UnhealthyNotRequired => "unhealthy_not_required",
        }
    }
}

impl fmt::Display for HealthNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Healthy => "healthy",
            Self::Degraded => "health degraded (still routed)",
            Self::Unknown => "health unknown (still routed)",
            Self::NotChecked => "health check disabled",
            Self::UnhealthyNotRequired => "unhealthy (kept: health check not required)",
        })
    }
}

/// Breaker of a kept gateway as the router saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerNote {
    /// Closed.
    Closed,
    /// Half-open: kept; the breaker itself admits only its trial sends.
    HalfOpen,
    /// Open, but its timeout ended at `until` (≤ now): kept so that a send attempt can move it
    /// to half-open, the only way it ever recovers.
    TimeoutElapsed {
        /// When the open period ended (epoch ms).
        until: EpochMillis,
    },
    /// Open until `until`, kept because `routing.circuit_breaker_required` is off (the breaker
    /// still refuses the send).
    OpenNotRequired {
        /// When the open period ends (epoch ms).
        until: EpochMillis,
    },
    /// The gateway's `circuit_breaker.enabled` is off: any stored state is ignored.
    Disabled,
}

impl BreakerNote {
    /// Stable machine code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::TimeoutElapsed { .. } => "timeout_elapsed",
            Self::OpenNotRequired { .. } => "open_not_required",
            Self::Disabled => "disabled",
        }
    }
}

impl fmt::Display for BreakerNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("breaker closed"),
            Self::HalfOpen => f.write_str("breaker half-open (trial sends limited by the breaker)"),
            Self::TimeoutElapsed { until } => write!(
                f,
                "breaker open timeout elapsed at {}: trial send",
                Utc(*until)
            ),
            Self::OpenNotRequired { until } => write!(
                f,
                "breaker open until {}, kept: breaker not required",
                Utc(*until)
            ),
            Self::Disabled => f.write_str("breaker disabled"),
        }
    }
}

/// Why a candidate sits at its position under the strategy in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OrderReason<'r> {
    /// `priority`: by priority, ties by id.
    Priority {
        /// The gateway's priority.
        priority: u32,
    },
    /// The pinned gateway.
    Pinned,
    /// `failover`: the best-priority candidate, head of the chain.
    FailoverPrimary {
        /// The gateway's priority.
        priority: u32,
    },
    /// `failover`: reached through the `failover_to` list of gateway `from`.
    FailoverTarget {
        /// Id of the gateway whose `failover_to` names this one.
        from: &'r str,
    },
    /// `failover`: in no followed chain; after the chains by priority.
    AfterChains {
        /// The gateway's priority.
        priority: u32,
    },
    /// `round_robin`: the (priority, id) order rotated by `rotation` positions of `of`, the
    /// rotation derived from the message id.
    RoundRobin {
        /// Positions rotated.
        rotation: usize,
        /// Candidates in the rotation.
        of: usize,
    },
    /// `weighted`: drawn with probability `weight / total` among the gateways not yet placed.
    Weighted {
        /// The gateway's weight.
        weight: u32,
        /// Sum of the weights still in the draw.
        total: u64,
    },
    /// `weighted`: weight 0, placed after every weighted gateway, by priority.
    ZeroWeight {
        /// The gateway's priority.
        priority: u32,
    },
    /// `least_loaded`: `remaining` fraction of quota left (0.0..=1.0); `known` is false when
    /// the state gave none and 1.0 was assumed.
    LeastLoaded {
        /// Fraction of quota left, as ordered.
        remaining: f64,
        /// Whether the fraction came from the state view.
        known: bool,
    },
    /// `domain_based`: the gateway's `domain` is the sender's domain.
    DomainGateway {
        /// The gateway's `domain`.
        domain: &'r str,
    },
    /// `domain_based`: this `can_route` pattern names the sender's domain.
    DomainPattern {
        /// The pattern naming the domain.
        pattern: &'r SenderPattern,
    },
    /// `domain_based`: nothing names the sender's domain; after the matches by priority.
    DomainOther {
        /// The gateway's priority.
        priority: u32,
    },
}

impl OrderReason<'_> {
    /// Stable machine code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Priority { .. } => "priority",
            Self::Pinned => "pinned",
            Self::FailoverPrimary { .. } => "failover_primary",
            Self::FailoverTarget { .. } => "failover_target",
            Self::AfterChains { .. } => "after_chains",
            Self::RoundRobin { .. } => "round_robin",
            Self::Weighted { .. } => "weighted",
            Self::ZeroWeight { .. } => "zero_weight",
            Self::LeastLoaded { .. } => "least_loaded",
            Self::DomainGateway { .. } => "domain_gateway",
            Self::DomainPattern { .. } => "domain_pattern",
            Self::DomainOther { .. } => "domain_other",
        }
    }
}

impl fmt::Display for OrderReason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Priority { priority } => write!(f, "priority {priority}"),
            Self::Pinned => f.write_str("pinned by the message"),
            Self::FailoverPrimary { priority } => {
                write!(f, "failover chain head, priority {priority}")
            }
            Self::FailoverTarget { from } => write!(f, "failover_to of {from}"),
            Self::AfterChains { priority } => {
                write!(f, "in no failover chain, priority {priority}")
            }
            Self::RoundRobin { rotation, of } => write!(
                f,
                "round robin, rotation {rotation} of {of} from the message id"
            ),
            Self::Weighted { weight, total } => {
                write!(f, "weighted draw, weight {weight} of {total}")
            }
            Self::ZeroWeight { priority } => {
                write!(f, "weight 0, after weighted gateways, priority {priority}")
            }
            Self::LeastLoaded {
                remaining,
                known: true,
            } => write!(f, "least loaded, {:.1}% quota left", remaining * 100.0),
            Self::LeastLoaded { known: false, .. } => {
                f.write_str("least loaded, quota left unknown (counted as 100%)")
            }
            Self::DomainGateway { domain } => {
                write!(f, "gateway domain {domain} is the sender's domain")
            }
            Self::DomainPattern { pattern } => {
                write!(f, "pattern {pattern} names the sender's domain")
            }
            Self::DomainOther { priority } => {
                write!(f, "no domain match, priority {priority}")
            }
        }
    }
}

impl fmt::Display for RoutePlan<'_> {
    /// One header line (strategy, pin outcome), then one line per candidate
    /// (`1. id (type)  kept: …`) and one per dropped gateway (`   id  dropped: …`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "strategy: {}", self.strategy)?;
        if let Some(pin) = &self.pin {
            writeln!(f, "{pin}")?;
        }
        if self.candidates.is_empty() {
            writeln!(f, "no candidate gateway")?;
        }
        for (rank, c) in self.candidates.iter().enumerate() {
            writeln!(
                f,
                "{}. {} ({})  kept: {}",
                rank + 1,
                c.gateway.id,
                c.gateway.kind,
                c.reason
            )?;
        }
        for d in &self.dropped {
            writeln!(f, "   {}  dropped: {}", d.gateway.id, d.reason)?;
        }
        Ok(())
    }
}

/// Serialises as
/// `{"strategy", "pinned": null | {"id", "outcome", "fell_back"}, "candidates": [{"rank", "id",
/// "type", "code", "health", "breaker", "reason"}], "dropped": [{"id", "type", "code", "reason"}]}`
/// where `code`s are the stable machine codes and `reason`s the human text.
impl serde::Serialize for RoutePlan<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut plan = serializer.serialize_struct("RoutePlan", 4)?;
        plan.serialize_field("strategy", self.strategy.as_str())?;
        plan.serialize_field("pinned", &self.pin.as_ref().map(PinJson))?;
        plan.serialize_field("candidates", &CandidatesJson(&self.candidates))?;
        plan.serialize_field("dropped", &DroppedJson(&self.dropped))?;
        plan.end()
    }
}

struct PinJson<'a, 'r>(&'a PinOutcome<'r>);

impl serde::Serialize for PinJson<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut m = serializer.serialize_map(Some(4))?;
        m.serialize_entry("id", self.0.id())?;
        m.serialize_entry("outcome", self.0.code())?;
        m.serialize_entry("fell_back", &self.0.fell_back())?;
        m.serialize_entry("reason", &Lazy(self.0))?;
        m.end()
    }
}

struct CandidatesJson<'a, 'r>(&'a [Candidate<'r>]);

impl serde::Serialize for CandidatesJson<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for (rank, c) in self.0.iter().enumerate() {
            seq.serialize_element(&CandidateJson { rank: rank + 1, c })?;
        }
        seq.end()
    }
}

struct CandidateJson<'a, 'r> {
    rank: usize,
    c: &'a Candidate<'r>,
}

impl serde::Serialize for CandidateJson<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.c;
        let mut m = serializer.serialize_map(Some(7))?;
        m.serialize_entry("rank", &self.rank)?;
        m.serialize_entry("id", &c.gateway.id)?;
        m.serialize_entry("type", c.gateway.kind.as_str())?;
        m.serialize_entry("code", c.reason.order.code())?;
        m.serialize_entry("health", c.reason.health.code())?;
        m.serialize_entry("breaker", c.reason.breaker.code())?;
        m.serialize_entry("reason", &Lazy(&c.reason))?;
        m.end()
    }
}

struct DroppedJson<'a, 'r>(&'a [Dropped<'r>]);

impl serde::Serialize for DroppedJson<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for d in self.0 {
            seq.serialize_element(&DroppedEntryJson(d))?;
        }
        seq.end()
    }
}

struct DroppedEntryJson<'a, 'r>(&'a Dropped<'r>);

impl serde::Serialize for DroppedEntryJson<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let mut m = serializer.serialize_map(None)?;
        m.serialize_entry("id", &d.gateway.id)?;
        m.serialize_entry("type", d.gateway.kind.as_str())?;
        m.serialize_entry("code", d.reason.code())?;
        if let DropReason::BreakerOpen { until } = d.reason {
            m.serialize_entry("until_ms", &until)?;
        }
        m.serialize_entry("reason", &Lazy(&d.reason))?;
        m.end()
    }
}

/// An epoch-millisecond instant shown as ISO 8601 UTC (`2026-11-28T00:00:00.000Z`), for people
/// reading `gateway route`.
struct Utc(EpochMillis);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d) = civil_from_days(utc_day(self.0));
        let ms = self.0.rem_euclid(DAY_MS);
        let (h, min, s, milli) = (
            ms / HOUR_MS,
            ms % HOUR_MS / 60_000,
            ms % 60_000 / 1000,
            ms % 1000,
        );
        write!(
            f,
            "{y:04}-{mo:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z"
        )
    }
}

/// Serialises a `Display` value as a string without an intermediate `String`.
struct Lazy<'a, T: fmt::Display>(&'a T);

impl<T: fmt::Display> serde::Serialize for Lazy<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self.0)
    }
}
