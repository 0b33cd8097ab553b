use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::time::Duration;

use proptest::prelude::{Just, any, prop_assert, prop_assert_eq, prop_oneof, proptest};
use proptest::strategy::Strategy as Arb;

use super::*;
use crate::config::{
    AmbiguousPolicy, BreakerSettings, GatewayKind, GatewayRouting, HealthCheckSettings,
    HttpSettings, MailgunRegion, MailgunSettings, MailgunTags, ProviderSettings, RateLimits,
    Routing, SecretRef, Strategy, StrategyRule, SystemLimits, Tracking,
};
use crate::pattern::SenderPattern;

const NOW: EpochMillis = 1_795_910_400_000;

fn pat(s: &str) -> SenderPattern {
    SenderPattern::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

fn pats(list: &[&str]) -> Vec<SenderPattern> {
    list.iter().map(|p| pat(p)).collect()
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

/// An enabled Mailgun gateway taking every sender, weight 1, checks and breaker enabled.
fn gateway(id: &str, priority: u32) -> Gateway {
    Gateway {
        id: id.to_owned(),
        kind: GatewayKind::Mailgun,
        display_name: id.to_owned(),
        domain: None,
        enabled: true,
        priority,
        weight: 1,
        provider: ProviderSettings::Mailgun(MailgunSettings {
            api_key: SecretRef::Env("MAILGUN_API_KEY".to_owned()),
            domain: "mg.example.com".to_owned(),
            base_url: None,
            region: MailgunRegion::Us,
            tracking: Tracking::default(),
            tags: MailgunTags::default(),
            webhook_signing_key: None,
        }),
        rate_limits: RateLimits {
            workspace_daily: Some(2000),
            per_user_daily: Some(200),
            per_hour: Some(50),
            burst_limit: Some(10),
            burst_refill_per_second: 10.0,
            custom_user_limits: BTreeMap::new(),
        },
        routing: GatewayRouting {
            can_route: pats(&["*"]),
            exclude_patterns: Vec::new(),
            failover_to: Vec::new(),
        },
        circuit_breaker: BreakerSettings {
            enabled: true,
            failure_threshold: nz(10),
            success_threshold: nz(5),
            timeout: Duration::from_secs(60),
            max_requests: nz(100),
            window: Duration::from_secs(60),
            failure_ratio: None,
        },
        health_check: HealthCheckSettings {
            enabled: true,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            failure_threshold: nz(3),
            success_threshold: nz(2),
        },
        source: GatewaySource::ConfigFile,
    }
}

fn config(gateways: Vec<Gateway>, strategy: Strategy) -> Config {
    Config {
        gateways,
        routing: Routing {
            strategy,
            rules: Vec::new(),
            failover_enabled: true,
            load_balancing_enabled: true,
            health_check_required: true,
            circuit_breaker_required: true,
            max_failover_attempts: nz(3),
            ambiguous_policy: AmbiguousPolicy::Defer,
            pinned_failover: false,
        },
        system_limits: SystemLimits::default(),
        http: HttpSettings {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        },
        mode: GatewayMode::New,
        customer_webhooks: Vec::new(),
        suppression: Default::default(),
    }
}

fn router(config: Config) -> Router {
    Router::new(Arc::new(config))
}

fn req<'a>(message_id: &'a str, sender: &'a str) -> RouteRequest<'a> {
    RouteRequest {
        message_id,
        sender,
        pinned: None,
    }
}

fn ids<'p>(plan: &'p RoutePlan<'_>) -> Vec<&'p str> {
    plan.candidate_ids().collect()
}

/// The original system's fixture: primary excludes the internal domain and fails over to the
/// secondary.
fn original_fixture(strategy: Strategy) -> Config {
    let mut primary = gateway("test-mailgun-primary", 1);
    primary.domain = Some("test.example.com".to_owned());
    primary.weight = 100;
    primary.routing.exclude_patterns = pats(&["@internal.example.com"]);
    primary.routing.failover_to = vec!["test-mailgun-secondary".to_owned()];
    let mut secondary = gateway("test-mailgun-secondary", 2);
    secondary.domain = Some("backup.example.com".to_owned());
    secondary.weight = 50;
    config(vec![primary, secondary], strategy)
}

#[test]
fn original_fixture_priority_routing_honours_exclusion() {
    let r = router(original_fixture(Strategy::Priority));
    let cases: [(&str, &[&str], Option<&str>); 2] = [
        (
            "sender@example.com",
            &["test-mailgun-primary", "test-mailgun-secondary"],
            None,
        ),
        (
            "sender@internal.example.com",
            &["test-mailgun-secondary"],
            Some("excluded"),
        ),
    ];
    for (sender, want, primary_drop) in cases {
        let plan = r.route(&req("m-1", sender), &[], NOW);
        assert_eq!(ids(&plan), want, "{sender}");
        assert_eq!(
            plan.dropped_reason("test-mailgun-primary")
                .map(|d| d.code()),
            primary_drop,
            "{sender}"
        );
    }
}

#[test]
fn excluded_sender_falls_through_to_secondary_with_pattern_in_reason() {
    let r = router(original_fixture(Strategy::Priority));
    let plan = r.route(&req("m-1", "sender@internal.example.com"), &[], NOW);
    let text = plan.explain();
    assert!(
        text.contains("1. test-mailgun-secondary (mailgun)  kept: can_route * matches, priority 2"),
        "{text}"
    );
    assert!(
        text.contains(
            "   test-mailgun-primary  dropped: sender matches exclude pattern @internal.example.com"
        ),
        "{text}"
    );
}

fn first_pick_shares(r: &Router, n: usize) -> BTreeMap<String, f64> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..n {
        let id = format!("msg-{i}");
        let plan = r.route(&req(&id, "sender@example.com"), &[], NOW);
        let first = plan.candidates.first().expect("a candidate");
        *counts.entry(first.gateway.id.clone()).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(id, c)| (id, c as f64 / n as f64))
        .collect()
}

#[test]
fn weighted_first_pick_follows_configured_weights() {
    let cases: [&[u32]; 3] = [&[70, 20, 10], &[100, 50], &[1, 1, 1, 1]];
    for weights in cases {
        let gateways = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let mut g = gateway(&format!("g{i}"), 1);
                g.weight = w;
                g
            })
            .collect();
        let r = router(config(gateways, Strategy::Weighted));
        let shares = first_pick_shares(&r, 10_000);
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let want = f64::from(w) / f64::from(total);
            let got = shares.get(&format!("g{i}")).copied().unwrap_or(0.0);
            assert!(
                (got - want).abs() <= 0.03,
                "weights {weights:?}: g{i} first {got:.3}, want {want:.3}"
            );
        }
    }
}

#[test]
fn weighted_second_pick_is_drawn_from_the_rest_in_proportion() {
    // After g0 (weight 70) is drawn first, g1:g2 = 20:10 for the second place.
    let gateways = [70, 20, 10]
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let mut g = gateway(&format!("g{i}"), 1);
            g.weight = w;
            g
        })
        .collect();
    let r = router(config(gateways, Strategy::Weighted));
    let (mut g1_second, mut g0_first) = (0, 0);
    for i in 0..10_000 {
        let id = format!("msg-{i}");
        let plan = r.route(&req(&id, "a@example.com"), &[], NOW);
        assert_eq!(plan.candidates.len(), 3);
        if plan.candidates[0].gateway.id == "g0" {
            g0_first += 1;
            if plan.candidates[1].gateway.id == "g1" {
                g1_second += 1;
            }
        }
    }
    let share = f64::from(g1_second) / f64::from(g0_first);
    assert!((share - 2.0 / 3.0).abs() <= 0.03, "g1 second {share:.3}");
}

#[test]
fn weight_zero_gateways_come_last_by_priority() {
    let mut a = gateway("a", 1);
    a.weight = 0;
    let mut b = gateway("b", 3);
    b.weight = 5;
    let mut c = gateway("c", 2);
    c.weight = 0;
    let r = router(config(vec![a, b, c], Strategy::Weighted));
    for i in 0..50 {
        let id = format!("msg-{i}");
        let plan = r.route(&req(&id, "x@example.com"), &[], NOW);
        assert_eq!(ids(&plan), ["b", "a", "c"]);
        assert_eq!(
            plan.candidates[1].reason.order,
            OrderReason::ZeroWeight { priority: 1 }
        );
    }
}

#[test]
fn round_robin_makes_each_gateway_first_evenly() {
    for n in [2usize, 3, 5] {
        let gateways = (0..n).map(|i| gateway(&format!("g{i}"), 1)).collect();
        let r = router(config(gateways, Strategy::RoundRobin));
        let shares = first_pick_shares(&r, 10_000);
        assert_eq!(shares.len(), n, "every gateway is first sometimes");
        for (id, got) in shares {
            let want = 1.0 / n as f64;
            assert!(
                (got - want).abs() <= 0.03,
                "{n} gateways: {id} first {got:.3}"
            );
        }
    }
}

#[test]
fn round_robin_keeps_the_rotation_order() {
    let gateways = vec![gateway("c", 3), gateway("a", 1), gateway("b", 2)];
    let r = router(config(gateways, Strategy::RoundRobin));
    let rotations = [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]];
    let mut seen = BTreeSet::new();
    for i in 0..100 {
        let id = format!("msg-{i}");
        let plan = r.route(&req(&id, "x@example.com"), &[], NOW);
        let got = ids(&plan);
        let at = rotations
            .iter()
            .position(|rot| got == rot)
            .unwrap_or_else(|| panic!("{got:?} is not a rotation"));
        seen.insert(at);
    }
    assert_eq!(seen.len(), 3);
}

#[test]
fn least_loaded_follows_remaining_quota() {
    let gateways = vec![gateway("a", 1), gateway("b", 2), gateway("c", 3)];
    let r = router(config(gateways, Strategy::LeastLoaded));
    let state = |rem: [Option<f64>; 3]| {
        rem.map(|remaining| GatewayState {
            remaining,
            ..GatewayState::default()
        })
    };
    let cases: [([Option<f64>; 3], [&str; 3]); 6] = [
        ([Some(0.2), Some(0.9), Some(0.5)], ["b", "c", "a"]),
        ([Some(0.9), Some(0.2), Some(0.5)], ["a", "c", "b"]),
        // Ties break by priority.
        ([Some(0.5), Some(0.5), Some(0.5)], ["a", "b", "c"]),
        // Unknown counts as 1.0 (unlimited), ahead of any partly used gateway.
        ([Some(0.99), None, Some(0.3)], ["b", "a", "c"]),
        // Out-of-range values clamp; NaN counts as empty.
        ([Some(f64::NAN), Some(-1.0), Some(7.0)], ["c", "a", "b"]),
        ([Some(0.0), Some(0.0), Some(0.1)], ["c", "a", "b"]),
    ];
    for (remaining, want) in cases {
        let plan = r.route(&req("m", "x@example.com"), &state(remaining), NOW);
        assert_eq!(ids(&plan), want, "{remaining:?}");
    }
}

#[test]
fn domain_based_prefers_the_gateway_for_the_sender_domain() {
    let general = gateway("general", 1);
    let mut clinic = gateway("clinic", 5);
    clinic.domain = Some("clinic.example".to_owned());
    let mut lab = gateway("lab", 4);
    lab.routing.can_route = pats(&["@lab.example", "@*.lab.example"]);
    let mut partner = gateway("partner", 6);
    partner.routing.can_route = pats(&["*", "boss@partner.example"]);
    let r = router(config(
        vec![general, clinic, lab, partner],
        Strategy::DomainBased,
    ));
    let cases: [(&str, &[&str], &str); 5] = [
        (
            "ada@clinic.example",
            &["clinic", "general", "partner"],
            "domain_gateway",
        ),
        (
            "ada@CLINIC.example",
            &["clinic", "general", "partner"],
            "domain_gateway",
        ),
        (
            "ada@lab.example",
            &["lab", "general", "clinic", "partner"],
            "domain_pattern",
        ),
        (
            "x@partner.example",
            &["partner", "general", "clinic"],
            "domain_pattern",
        ),
        (
            "x@other.example",
            &["general", "clinic", "partner"],
            "domain_other",
        ),
    ];
    for (sender, want, code) in cases {
        let plan = r.route(&req("m", sender), &[], NOW);
        assert_eq!(ids(&plan), want, "{sender}");
        assert_eq!(plan.candidates[0].reason.order.code(), code, "{sender}");
    }
}

#[test]
fn failover_follows_chains_breadth_first_and_filters_every_target() {
    // a → [b, c, x, y]; b → [d, a]; x excludes the sender; y is disabled but its chain (e) is
    // still followed; f is in no chain. Breadth first: a's whole list, then b's, then y's.
    let mut a = gateway("a", 5);
    a.routing.failover_to = vec!["b".into(), "c".into(), "x".into(), "y".into()];
    let mut b = gateway("b", 9);
    b.routing.failover_to = vec!["d".into(), "a".into()];
    let c = gateway("c", 8);
    let d = gateway("d", 8);
    let mut x = gateway("x", 2);
    x.routing.exclude_patterns = pats(&["@example.com"]);
    let mut y = gateway("y", 1);
    y.enabled = false;
    y.routing.failover_to = vec!["e".into()];
    let e = gateway("e", 7);
    let f = gateway("f", 6);
    let r = router(config(vec![a, b, c, d, e, f, x, y], Strategy::Failover));
    let plan = r.route(&req("m", "p@example.com"), &[], NOW);
    assert_eq!(ids(&plan), ["a", "b", "c", "d", "e", "f"]);
    let orders: Vec<_> = plan.candidates.iter().map(|c| c.reason.order).collect();
    assert_eq!(
        orders,
        [
            OrderReason::FailoverPrimary { priority: 5 },
            OrderReason::FailoverTarget { from: "a" },
            OrderReason::FailoverTarget { from: "a" },
            OrderReason::FailoverTarget { from: "b" },
            OrderReason::FailoverTarget { from: "y" },
            OrderReason::AfterChains { priority: 6 },
        ]
    );
    assert_eq!(plan.dropped_reason("y"), Some(&DropReason::Disabled));
    assert_eq!(plan.dropped_reason("x").map(|d| d.code()), Some("excluded"));
}

#[test]
fn failover_primary_is_the_best_priority_candidate_even_when_others_list_it() {
    let mut a = gateway("a", 2);
    a.routing.failover_to = vec!["b".into()];
    let mut b = gateway("b", 1);
    b.routing.failover_to = vec!["c".into()];
    let c = gateway("c", 3);
    let r = router(config(vec![a, b, c], Strategy::Failover));
    let plan = r.route(&req("m", "p@example.com"), &[], NOW);
    assert_eq!(ids(&plan), ["b", "c", "a"]);
}

/// One filter case: a single gateway in a given state, and what the router must say about it:
/// `kept <health>/<breaker>` or `dropped <code>`.
struct FilterCase {
    name: &'static str,
    gateway: Gateway,
    health: Health,
    breaker: BreakerView,
    health_required: bool,
    breaker_required: bool,
    want: &'static str,
}

fn filter_outcome(case: &FilterCase) -> String {
    let mut cfg = config(vec![case.gateway.clone()], Strategy::Priority);
    cfg.routing.health_check_required = case.health_required;
    cfg.routing.circuit_breaker_required = case.breaker_required;
    let r = router(cfg);
    let state = GatewayState {
        health: case.health,
        breaker: case.breaker,
        remaining: None,
        held: None,
    };
    let plan = r.route(&req("m", "p@example.com"), &[state], NOW);
    match (plan.candidates.first(), plan.dropped.first()) {
        (Some(c), None) => format!(
            "kept {}/{}",
            c.reason.health.code(),
            c.reason.breaker.code()
        ),
        (None, Some(d)) => format!("dropped {}", d.reason.code()),
        other => panic!("{}: kept and dropped {other:?}", case.name),
    }
}

#[test]
fn filters_drop_or_keep_each_gateway_with_the_right_reason() {
    let with = |edit: fn(&mut Gateway)| {
        let mut g = gateway("g", 1);
        edit(&mut g);
        g
    };
    let case = |name, gateway, health, breaker, want| FilterCase {
        name,
        gateway,
        health,
        breaker,
        health_required: true,
        breaker_required: true,
        want,
    };
    let open = |until| BreakerView::Open { until };
    let closed = BreakerView::Closed;
    let plain = gateway("g", 1);
    let disabled = with(|g| g.enabled = false);
    let cases = [
        case(
            "disabled",
            disabled.clone(),
            Health::Healthy,
            closed,
            "dropped disabled",
        ),
        case(
            "disabled is reported before any other failure",
            disabled,
            Health::Unhealthy,
            open(NOW + 1),
            "dropped disabled",
        ),
        case(
            "empty can_route",
            with(|g| g.routing.can_route.clear()),
            Health::Healthy,
            closed,
            "dropped no_can_route",
        ),
        case(
            "no can_route pattern matches",
            with(|g| g.routing.can_route = pats(&["@other.example"])),
            Health::Healthy,
            closed,
            "dropped sender_not_matched",
        ),
        case(
            "exclude pattern matches",
            with(|g| g.routing.exclude_patterns = pats(&["p@example.com"])),
            Health::Healthy,
            closed,
            "dropped excluded",
        ),
        case(
            "unhealthy",
            plain.clone(),
            Health::Unhealthy,
            closed,
            "dropped unhealthy",
        ),
        FilterCase {
            health_required: false,
            ..case(
                "unhealthy, health not required",
                plain.clone(),
                Health::Unhealthy,
                closed,
                "kept unhealthy_not_required/closed",
            )
        },
        case(
            "unhealthy, gateway not health-checked",
            with(|g| g.health_check.enabled = false),
            Health::Unhealthy,
            closed,
            "kept not_checked/closed",
        ),
        case(
            "degraded",
            plain.clone(),
            Health::Degraded,
            closed,
            "kept degraded/closed",
        ),
        case(
            "unknown",
            plain.clone(),
            Health::Unknown,
            closed,
            "kept unknown/closed",
        ),
        case(
            "open",
            plain.clone(),
            Health::Healthy,
            open(NOW + 1),
            "dropped breaker_open",
        ),
        case(
            "open, timeout ends now",
            plain.clone(),
            Health::Healthy,
            open(NOW),
            "kept healthy/timeout_elapsed",
        ),
        case(
            "open, timeout long past",
            plain.clone(),
            Health::Healthy,
            open(NOW - 60_000),
            "kept healthy/timeout_elapsed",
        ),
        FilterCase {
            breaker_required: false,
            ..case(
                "open, breaker not required",
                plain.clone(),
                Health::Healthy,
                open(NOW + 1),
                "kept healthy/open_not_required",
            )
        },
        case(
            "open, gateway breaker disabled",
            with(|g| g.circuit_breaker.enabled = false),
            Health::Healthy,
            open(NOW + 1),
            "kept healthy/disabled",
        ),
        case(
            "half-open",
            plain,
            Health::Healthy,
            BreakerView::HalfOpen,
            "kept healthy/half_open",
        ),
    ];
    for c in &cases {
        assert_eq!(filter_outcome(c), c.want, "{}", c.name);
    }
}

#[test]
fn open_breaker_past_its_timeout_is_kept_for_a_trial_send() {
    let r = router(original_fixture(Strategy::Priority));
    let until = NOW - 1;
    let state = [
        GatewayState {
            breaker: BreakerView::Open { until },
            ..GatewayState::default()
        },
        GatewayState::default(),
    ];
    let plan = r.route(&req("m", "a@example.com"), &state, NOW);
    assert_eq!(
        ids(&plan),
        ["test-mailgun-primary", "test-mailgun-secondary"]
    );
    assert_eq!(
        plan.candidates[0].reason.breaker,
        BreakerNote::TimeoutElapsed { until }
    );
    // One millisecond before the timeout it is still dropped.
    let plan = r.route(&req("m", "a@example.com"), &state, until - 1);
    assert_eq!(ids(&plan), ["test-mailgun-secondary"]);
}

#[test]
fn a_gateway_held_by_a_lever_is_dropped_whatever_the_routing_settings() {
    let r = router(original_fixture(Strategy::Priority));
    for by in [HeldBy::Paused, HeldBy::AllPaused, HeldBy::BreakerForcedOpen] {
        let state = [
            GatewayState {
                held: Some(Held { by, until: None }),
                ..GatewayState::default()
            },
            GatewayState::default(),
        ];
        let plan = r.route(&req("m", "a@example.com"), &state, NOW);
        assert_eq!(ids(&plan), ["test-mailgun-secondary"], "{by:?}");
        assert_eq!(plan.dropped[0].reason.code(), by.code());
        assert!(plan.dropped[0].reason.to_string().contains("operator"));
    }
}

#[test]
fn same_message_and_state_give_the_same_plan_and_ids_spread() {
    for strategy in Strategy::ALL {
        let gateways = (0..6)
            .map(|i| {
                let mut g = gateway(&format!("g{i}"), i % 3);
                g.weight = i + 1;
                g
            })
            .collect();
        let r = router(config(gateways, strategy));
        let state: Vec<_> = (0..6)
            .map(|i| GatewayState {
                remaining: Some(f64::from(i % 2) / 2.0),
                ..GatewayState::default()
            })
            .collect();
        let a = r.route(&req("inv-1", "x@example.com"), &state, NOW);
        let b = r.route(&req("inv-1", "x@example.com"), &state, NOW);
        assert_eq!(a, b, "{strategy}");
        let firsts: BTreeSet<String> = (0..200)
            .map(|i| {
                let id = format!("inv-{i}");
                ids(&r.route(&req(&id, "x@example.com"), &state, NOW))[0].to_owned()
            })
            .collect();
        let spreads = matches!(strategy, Strategy::RoundRobin | Strategy::Weighted);
        assert_eq!(firsts.len() > 1, spreads, "{strategy}: {firsts:?}");
    }
}

#[test]
fn first_matching_rule_overrides_the_global_strategy() {
    let mut cfg = config(
        vec![gateway("a", 1), gateway("b", 2), gateway("c", 3)],
        Strategy::Priority,
    );
    cfg.routing.rules = vec![
        StrategyRule {
            senders: pats(&["@bulk.example.org"]),
            strategy: Strategy::RoundRobin,
        },
        StrategyRule {
            senders: pats(&["@*.example.org", "@bulk.example.org"]),
            strategy: Strategy::LeastLoaded,
        },
    ];
    let r = router(cfg);
    let cases = [
        ("n@bulk.example.org", Strategy::RoundRobin),
        ("n@x.bulk.example.org", Strategy::LeastLoaded),
        ("n@example.net", Strategy::Priority),
    ];
    for (sender, want) in cases {
        assert_eq!(
            r.route(&req("m", sender), &[], NOW).strategy,
            want,
            "{sender}"
        );
    }
}

/// (pinned id, `routing.pinned_failover`, candidates, pin outcome, dropped `id:code`s).
type PinCase = (
    &'static str,
    bool,
    &'static [&'static str],
    &'static str,
    &'static str,
);

#[test]
fn pinned_gateway_is_used_alone_or_replaced_only_when_allowed() {
    let mut disabled = gateway("off", 0);
    disabled.enabled = false;
    let base = vec![gateway("a", 1), gateway("b", 2), disabled];
    let cases: [PinCase; 6] = [
        ("b", false, &["b"], "used", "off:not_pinned a:not_pinned"),
        ("b", true, &["b"], "used", "off:not_pinned a:not_pinned"),
        (
            "off",
            false,
            &[],
            "unusable",
            "off:disabled a:not_pinned b:not_pinned",
        ),
        ("off", true, &["a", "b"], "unusable", "off:disabled"),
        (
            "nope",
            false,
            &[],
            "unknown",
            "off:not_pinned a:not_pinned b:not_pinned",
        ),
        ("nope", true, &["a", "b"], "unknown", "off:disabled"),
    ];
    for (pin, pinned_failover, want, outcome, want_dropped) in cases {
        let mut cfg = config(base.clone(), Strategy::Priority);
        cfg.routing.pinned_failover = pinned_failover;
        let r = router(cfg);
        let request = RouteRequest {
            pinned: Some(pin),
            ..req("m", "x@example.com")
        };
        let plan = r.route(&request, &[], NOW);
        let case = format!("pin {pin}, pinned_failover {pinned_failover}");
        assert_eq!(ids(&plan), want, "{case}");
        assert_eq!(plan.pin.as_ref().map(|p| p.code()), Some(outcome), "{case}");
        let dropped: Vec<_> = plan
            .dropped
            .iter()
            .map(|d| format!("{}:{}", d.gateway.id, d.reason.code()))
            .collect();
        assert_eq!(dropped.join(" "), want_dropped, "{case}");
    }
}

#[test]
fn pinned_gateway_must_still_accept_the_sender() {
    let r = router(original_fixture(Strategy::Priority));
    let request = RouteRequest {
        pinned: Some("test-mailgun-primary"),
        ..req("m", "a@internal.example.com")
    };
    let plan = r.route(&request, &[], NOW);
    assert!(plan.candidates.is_empty());
    assert_eq!(
        plan.dropped_reason("test-mailgun-primary")
            .map(|d| d.code()),
        Some("excluded")
    );
    assert!(
        plan.explain()
            .contains("pinned gateway test-mailgun-primary unusable")
    );
}

/// An empty `can_route` reserves a gateway for the messages that pin it (docs/CONFIG.md): a
/// pinned message is routed there, with that said in the reason; no other message is, and its
/// `exclude_patterns` still apply. `mark_reachable` agrees, so the batch reads its state.
#[test]
fn an_empty_can_route_reserves_the_gateway_for_messages_pinning_it() {
    let mut reserved = gateway("reserved", 1);
    reserved.routing.can_route.clear();
    reserved.routing.exclude_patterns = pats(&["@blocked.example"]);
    let r = router(config(
        vec![reserved, gateway("open", 2)],
        Strategy::Priority,
    ));
    let pinned = RouteRequest {
        pinned: Some("reserved"),
        ..req("m", "dr@clinic.example")
    };
    let plan = r.route(&pinned, &[], NOW);
    assert_eq!(ids(&plan), ["reserved"]);
    assert!(
        plan.explain().contains("reserved for pinned messages"),
        "{}",
        plan.explain()
    );
    let mut marks = vec![false; 2];
    r.mark_reachable(&pinned, &mut marks);
    assert_eq!(marks, [true, false]);

    let plan = r.route(&req("m", "dr@clinic.example"), &[], NOW);
    assert_eq!(ids(&plan), ["open"]);
    assert_eq!(
        plan.dropped_reason("reserved").map(|d| d.code()),
        Some("no_can_route")
    );
    let mut marks = vec![false; 2];
    r.mark_reachable(&req("m", "dr@clinic.example"), &mut marks);
    assert_eq!(marks, [false, true]);

    let excluded = RouteRequest {
        pinned: Some("reserved"),
        ..req("m", "x@blocked.example")
    };
    let plan = r.route(&excluded, &[], NOW);
    assert!(plan.candidates.is_empty());
    assert_eq!(
        plan.dropped_reason("reserved").map(|d| d.code()),
        Some("excluded")
    );
}

#[test]
fn hybrid_mode_puts_matching_legacy_workspaces_first() {
    let mut legacy_clinic = gateway("ws-clinic", 5);
    legacy_clinic.source = GatewaySource::LegacyWorkspace("clinic".into());
    legacy_clinic.routing.can_route = pats(&["@clinic.example"]);
    let mut legacy_lab = gateway("ws-lab", 1);
    legacy_lab.source = GatewaySource::LegacyWorkspace("lab".into());
    legacy_lab.routing.can_route = pats(&["@lab.example"]);
    let mut legacy_any = gateway("ws-any", 9);
    legacy_any.source = GatewaySource::LegacyWorkspace("any".into());
    let gateways = vec![
        gateway("new-b", 2),
        legacy_clinic,
        gateway("new-a", 1),
        legacy_lab,
        legacy_any,
    ];
    let mut cfg = config(gateways, Strategy::Priority);
    cfg.mode = GatewayMode::Hybrid;
    let r = router(cfg);
    let cases: [(&str, &[&str]); 2] = [
        (
            "d@clinic.example",
            &["ws-clinic", "ws-any", "new-a", "new-b"],
        ),
        ("d@elsewhere.example", &["ws-any", "new-a", "new-b"]),
    ];
    for (sender, want) in cases {
        let plan = r.route(&req("m", sender), &[], NOW);
        assert_eq!(ids(&plan), want, "{sender}");
        let groups: Vec<_> = plan.candidates.iter().map(|c| c.reason.group).collect();
        let legacy = want.iter().filter(|id| id.starts_with("ws-")).count();
        for (i, g) in groups.iter().enumerate() {
            let expected = if i < legacy {
                HybridGroup::Legacy
            } else {
                HybridGroup::Config
            };
            assert_eq!(*g, Some(expected), "{sender} #{i}");
        }
    }
    // Outside hybrid mode the source does not matter: plain priority.
    let mut cfg = Config::clone(r.config());
    cfg.mode = GatewayMode::New;
    let plain = router(cfg);
    let plan = plain.route(&req("m", "d@clinic.example"), &[], NOW);
    assert_eq!(ids(&plan), ["new-a", "new-b", "ws-clinic", "ws-any"]);
}

#[test]
fn hybrid_groups_are_each_ordered_by_the_strategy() {
    let mut legacy: Vec<Gateway> = (0..3)
        .map(|i| {
            let mut g = gateway(&format!("ws-{i}"), 1);
            g.source = GatewaySource::LegacyWorkspace(format!("w{i}"));
            g
        })
        .collect();
    legacy.extend((0..3).map(|i| gateway(&format!("new-{i}"), 1)));
    let mut cfg = config(legacy, Strategy::RoundRobin);
    cfg.mode = GatewayMode::Hybrid;
    let r = router(cfg);
    let mut firsts = BTreeSet::new();
    for i in 0..300 {
        let id = format!("msg-{i}");
        let plan = r.route(&req(&id, "x@example.com"), &[], NOW);
        let got = ids(&plan);
        assert!(got[..3].iter().all(|g| g.starts_with("ws-")), "{got:?}");
        assert!(got[3..].iter().all(|g| g.starts_with("new-")), "{got:?}");
        firsts.insert((got[0].to_owned(), got[3].to_owned()));
    }
    // Both groups rotate, independently of each other.
    assert_eq!(firsts.len(), 9, "{firsts:?}");
}

#[test]
fn failover_disabled_keeps_only_the_first_candidate() {
    let mut cfg = original_fixture(Strategy::Priority);
    cfg.routing.failover_enabled = false;
    let r = router(cfg);
    let plan = r.route(&req("m", "a@example.com"), &[], NOW);
    assert_eq!(ids(&plan), ["test-mailgun-primary"]);
    assert_eq!(
        plan.dropped_reason("test-mailgun-secondary"),
        Some(&DropReason::FailoverDisabled)
    );
    assert!(
        plan.explain()
            .contains("test-mailgun-secondary  dropped: failover disabled")
    );
}

#[test]
fn plan_serialises_ids_codes_and_reasons() {
    let r = router(original_fixture(Strategy::Priority));
    let state = [GatewayState {
        health: Health::Healthy,
        ..GatewayState::default()
    }];
    let plan = r.route(&req("m", "sender@internal.example.com"), &state, NOW);
    let json = serde_json::to_value(&plan).expect("serialises");
    assert_eq!(
        json,
        serde_json::json!({
            "strategy": "priority",
            "pinned": null,
            "candidates": [{
                "rank": 1,
                "id": "test-mailgun-secondary",
                "type": "mailgun",
                "code": "priority",
                "health": "unknown",
                "breaker": "closed",
                "reason": "can_route * matches, priority 2; health unknown (still routed)",
            }],
            "dropped": [{
                "id": "test-mailgun-primary",
                "type": "mailgun",
                "code": "excluded",
                "reason": "sender matches exclude pattern @internal.example.com",
            }],
        })
    );
}

#[test]
fn explain_lists_candidates_in_order_then_dropped() {
    let r = router(original_fixture(Strategy::Priority));
    let state = [
        GatewayState {
            health: Health::Healthy,
            ..GatewayState::default()
        },
        GatewayState {
            health: Health::Degraded,
            breaker: BreakerView::HalfOpen,
            remaining: None,
            held: None,
        },
    ];
    let plan = r.route(&req("m", "sender@example.com"), &state, NOW);
    assert_eq!(
        plan.explain(),
        "strategy: priority\n\
         1. test-mailgun-primary (mailgun)  kept: can_route * matches, priority 1\n\
         2. test-mailgun-secondary (mailgun)  kept: can_route * matches, priority 2; \
         health degraded (still routed); breaker half-open (trial sends limited by the breaker)\n"
    );
}

#[test]
fn state_slice_shorter_than_gateways_means_default_state() {
    let r = router(original_fixture(Strategy::Priority));
    let plan = r.route(&req("m", "a@example.com"), &[], NOW);
    for c in &plan.candidates {
        assert_eq!(c.reason.health, HealthNote::Unknown);
        assert_eq!(c.reason.breaker, BreakerNote::Closed);
    }
}

// ---- property: routing never returns a gateway a filter forbids ----

const PATTERNS: [&str; 6] = [
    "*",
    "@example.com",
    "@*.example.com",
    "ann@example.com",
    "@other.org",
    "*@example.com",
];
const SENDERS: [&str; 8] = [
    "ann@example.com",
    "bob@example.com",
    "x@sub.example.com",
    "y@other.org",
    "z@nowhere.net",
    // Domains in another case, and no domain at all.
    "Bob@EXAMPLE.com",
    "w@Other.ORG",
    "no-at-sign",
];

fn arb_health() -> impl Arb<Value = Health> {
    prop_oneof![
        Just(Health::Unknown),
        Just(Health::Healthy),
        Just(Health::Degraded),
        Just(Health::Unhealthy),
    ]
}

fn arb_breaker() -> impl Arb<Value = BreakerView> {
    prop_oneof![
        Just(BreakerView::Closed),
        Just(BreakerView::HalfOpen),
        (-5_000i64..5_000).prop_map(|d| BreakerView::Open { until: NOW + d }),
    ]
}

fn arb_pattern_set() -> impl Arb<Value = Vec<SenderPattern>> {
    proptest::collection::vec(0..PATTERNS.len(), 0..3)
        .prop_map(|v| v.into_iter().map(|i| pat(PATTERNS[i])).collect())
}

#[derive(Debug, Clone)]
struct ArbGateway {
    enabled: bool,
    priority: u32,
    weight: u32,
    can_route: Vec<SenderPattern>,
    exclude: Vec<SenderPattern>,
    failover_to: Vec<usize>,
    legacy: bool,
    state: GatewayState,
}

fn arb_gateway() -> impl Arb<Value = ArbGateway> {
    (
        any::<bool>(),
        0u32..4,
        prop_oneof![Just(0u32), 1u32..100],
        arb_pattern_set(),
        arb_pattern_set(),
        proptest::collection::vec(0usize..8, 0..3),
        any::<bool>(),
        (
            arb_health(),
            arb_breaker(),
            proptest::option::of(0.0f64..=1.0),
        ),
    )
        .prop_map(
            |(enabled, priority, weight, can_route, exclude, failover_to, legacy, st)| ArbGateway {
                enabled,
                priority,
                weight,
                can_route,
                exclude,
                failover_to,
                legacy,
                state: GatewayState {
                    health: st.0,
                    breaker: st.1,
                    remaining: st.2,
                    held: None,
                },
            },
        )
}

fn arb_strategy() -> impl Arb<Value = Strategy> {
    (0..Strategy::ALL.len()).prop_map(|i| Strategy::ALL[i])
}

#[test]
fn reachable_gateways_are_the_statically_eligible_or_the_pin() {
    let mut a = gateway("a", 1);
    a.routing.exclude_patterns = pats(&["@internal.example.com"]);
    let mut b = gateway("b", 2);
    b.routing.can_route = pats(&["@internal.example.com"]);
    let mut c = gateway("c", 3);
    c.enabled = false;
    let mut cfg = config(vec![a, b, c, gateway("d", 4)], Strategy::Priority);
    let marks = |r: &Router, sender: &str, pinned: Option<&str>| {
        let mut marks = vec![false; 4];
        let request = RouteRequest {
            message_id: "m",
            sender,
            pinned,
        };
        r.mark_reachable(&request, &mut marks);
        marks
    };
    let r = router(cfg.clone());
    assert_eq!(
        marks(&r, "ann@clinic.example", None),
        [true, false, false, true]
    );
    assert_eq!(
        marks(&r, "bob@internal.example.com", None),
        [false, true, false, true]
    );
    // A pin without pinned failover narrows to the pin; an unknown pin reaches nothing.
    assert_eq!(
        marks(&r, "ann@clinic.example", Some("d")),
        [false, false, false, true]
    );
    assert_eq!(marks(&r, "ann@clinic.example", Some("b")), [false; 4]);
    assert_eq!(marks(&r, "ann@clinic.example", Some("zz")), [false; 4]);
    // With pinned failover the others stay reachable (the pin may be unusable).
    cfg.routing.pinned_failover = true;
    let r = router(cfg);
    assert_eq!(
        marks(&r, "ann@clinic.example", Some("d")),
        [true, false, false, true]
    );
    assert_eq!(
        marks(&r, "ann@clinic.example", Some("zz")),
        [true, false, false, true]
    );
}

proptest! {
    #[test]
    fn permute_applies_any_permutation_in_place(
        perm in (1usize..12).prop_flat_map(|n| Just((0..n).collect::<Vec<usize>>()).prop_shuffle()),
    ) {
        let mut items: Vec<usize> = (0..perm.len()).map(|i| i * 10).collect();
        let expected: Vec<usize> = perm.iter().map(|&p| p * 10).collect();
        let mut scratch = perm.clone();
        permute(&mut items, &mut scratch);
        prop_assert_eq!(items, expected);
    }
}

proptest! {
    #[test]
    fn routing_never_returns_a_forbidden_gateway(
        arb in proptest::collection::vec(arb_gateway(), 1..8),
        strategy in arb_strategy(),
        hybrid in any::<bool>(),
        health_required in any::<bool>(),
        breaker_required in any::<bool>(),
        failover_enabled in any::<bool>(),
        pinned_failover in any::<bool>(),
        pin in proptest::option::of(0usize..9),
        sender in 0..SENDERS.len(),
        message in "[a-z0-9-]{1,12}",
        held in any::<u8>(),
    ) {
        let n = arb.len();
        let gateways: Vec<Gateway> = arb
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut g = gateway(&format!("g{i}"), a.priority);
                g.enabled = a.enabled;
                g.weight = a.weight;
                g.routing.can_route = a.can_route.clone();
                g.routing.exclude_patterns = a.exclude.clone();
                g.routing.failover_to = a
                    .failover_to
                    .iter()
                    .filter(|&&t| t < n && t != i)
                    .map(|t| format!("g{t}"))
                    .collect();
                if a.legacy {
                    g.source = GatewaySource::LegacyWorkspace(format!("w{i}"));
                }
                g
            })
            .collect();
        let state: Vec<_> = arb
            .iter()
            .enumerate()
            .map(|(i, a)| GatewayState {
                // Every fourth gateway's bit drawn held, on average.
                held: (held >> i & 1 == 1 && i % 2 == 0).then_some(Held {
                    by: HeldBy::Paused,
                    until: None,
                }),
                ..a.state
            })
            .collect();
        let mut cfg = config(gateways, strategy);
        cfg.mode = if hybrid { GatewayMode::Hybrid } else { GatewayMode::New };
        cfg.routing.health_check_required = health_required;
        cfg.routing.circuit_breaker_required = breaker_required;
        cfg.routing.failover_enabled = failover_enabled;
        cfg.routing.pinned_failover = pinned_failover;
        let r = router(cfg);
        let sender = SENDERS[sender];
        let pinned = pin.map(|p| format!("g{p}"));
        let request = RouteRequest { message_id: &message, sender, pinned: pinned.as_deref() };
        let plan = r.route(&request, &state, NOW);

        let mut reachable = vec![false; n];
        r.mark_reachable(&request, &mut reachable);
        // The static route marks the same gateways, when a message has one.
        let fixed = r.static_route(&request);
        if let Some(fixed) = fixed {
            let mut marks = vec![false; n];
            fixed.mark(&mut marks);
            prop_assert_eq!(&marks, &reachable);
        } else {
            prop_assert!(pinned.is_some() || hybrid);
        }
        for c in &plan.candidates {
            prop_assert!(reachable[c.index], "candidate {} not marked reachable", c.gateway.id);
        }
        let mut seen = BTreeSet::new();
        for c in &plan.candidates {
            let g = c.gateway;
            let s = state[c.index];
            prop_assert!(seen.insert(c.index), "duplicate candidate {}", g.id);
            prop_assert!(g.enabled, "disabled {}", g.id);
            // An empty can_route takes only the messages pinning the gateway.
            let reserved_for_pin = g.routing.can_route.is_empty() && pinned.as_deref() == Some(g.id.as_str());
            prop_assert!(reserved_for_pin || g.routing.can_route.iter().any(|p| p.matches(sender)), "unmatched {}", g.id);
            prop_assert!(!g.routing.exclude_patterns.iter().any(|p| p.matches(sender)), "excluded {}", g.id);
            prop_assert!(!(health_required && s.health == Health::Unhealthy), "unhealthy {}", g.id);
            let open = matches!(s.breaker, BreakerView::Open { until } if until > NOW);
            prop_assert!(!(breaker_required && open), "open breaker {}", g.id);
            let pin_used = plan.pin.as_ref().is_some_and(|o| o.code() == "used");
            if let Some(p) = pinned.as_ref().filter(|_| !pinned_failover || pin_used) {
                prop_assert_eq!(&g.id, p);
            }
        }
        if !failover_enabled {
            prop_assert!(plan.candidates.len() <= 1);
        }
        // Every gateway is accounted for exactly once (kept or dropped).
        for d in &plan.dropped {
            prop_assert!(seen.insert(d.index), "{} both kept and dropped", d.gateway.id);
            // A sender filter's reason is right (matched against each pattern directly).
            let g = d.gateway;
            match &d.reason {
                DropReason::SenderNotMatched => prop_assert!(
                    !g.routing.can_route.iter().any(|p| p.matches(sender)),
                    "{} dropped as unmatched", g.id
                ),
                DropReason::Excluded { pattern } => prop_assert!(pattern.matches(sender)),
                _ => {}
            }
        }
        prop_assert_eq!(seen.len(), n);
        let expected: Vec<usize> = plan.candidates.iter().map(|c| c.index).collect();
        // Deterministic.
        prop_assert_eq!(r.route(&request, &state, NOW), plan);
        // The pipeline's ranking is the plan's candidates, in order, with a scratch used before.
        let mut scratch = RankScratch::default();
        let mut ranked = vec![99];
        for _ in 0..2 {
            r.rank(&request, &state, NOW, &mut scratch, &mut ranked);
            prop_assert_eq!(&ranked, &expected);
            r.rank_static(&request, fixed, &state, NOW, &mut scratch, &mut ranked);
            prop_assert_eq!(&ranked, &expected);
        }
    }
}

#[test]
fn a_scratch_remembers_failover_orders_only_for_its_own_router() {
    let chained = |to: &[&str]| {
        let mut gateways: Vec<Gateway> = ["a", "b", "c"].iter().map(|id| gateway(id, 1)).collect();
        gateways[0].routing.failover_to = to.iter().map(|t| (*t).to_owned()).collect();
        router(config(gateways, Strategy::Failover))
    };
    let (to_c, to_b) = (chained(&["c"]), chained(&["b"]));
    let request = req("m", "ann@clinic.example");
    let mut scratch = RankScratch::default();
    let mut ranked = Vec::new();
    for _ in 0..2 {
        to_c.rank(&request, &[], NOW, &mut scratch, &mut ranked);
        assert_eq!(ranked, [0, 2, 1]);
        // The same candidate set on another router: its own order, not the one remembered.
        to_b.rank(&request, &[], NOW, &mut scratch, &mut ranked);
        assert_eq!(ranked, [0, 1, 2]);
    }
}

/// Past the matcher's memo (pattern ids from 128 on are matched each time they are met) and
/// with failover orders remembered across messages of different candidate sets, the ranking
/// is still the plan's.
#[test]
fn ranking_equals_the_plan_past_the_pattern_memo_and_across_remembered_orders() {
    let gateways: Vec<Gateway> = (0..40_u32)
        .map(|k| {
            let mut g = gateway(&format!("g{k:02}"), k % 4);
            // Four domains of its own each (160 patterns in all), then every sender from g30 on.
            let mut can: Vec<String> = (0..4).map(|d| format!("@d{k}-{d}.example")).collect();
            if k >= 30 {
                can.push("*".to_owned());
            }
            g.routing.can_route = can.iter().map(|p| pat(p)).collect();
            g.routing.failover_to = ((k + 1)..40.min(k + 3))
                .map(|t| format!("g{t:02}"))
                .collect();
            g
        })
        .collect();
    let r = router(config(gateways, Strategy::Failover));
    let mut scratch = RankScratch::default();
    let mut ranked = Vec::new();
    for k in [0_usize, 39, 35, 0, 12, 39, 12] {
        for d in 0..4 {
            let sender = format!("ann@D{k}-{d}.example");
            let request = req("m", &sender);
            r.rank(&request, &[], NOW, &mut scratch, &mut ranked);
            let plan = r.route(&request, &[], NOW);
            let expected: Vec<usize> = plan.candidates.iter().map(|c| c.index).collect();
            assert_eq!(ranked, expected, "{sender}");
            assert!(expected.contains(&k), "{sender} reaches its own gateway");
        }
    }
}

#[test]
fn open_breaker_reason_shows_when_it_reopens_for_people_and_machines() {
    let r = router(original_fixture(Strategy::Priority));
    // NOW is 2026-11-29T00:00:00Z; the breaker stays open 61.5 s longer.
    let until = NOW + 61_500;
    let state = [GatewayState {
        breaker: BreakerView::Open { until },
        ..GatewayState::default()
    }];
    let plan = r.route(&req("m", "a@example.com"), &state, NOW);
    let dropped = plan
        .dropped_reason("test-mailgun-primary")
        .expect("dropped");
    assert_eq!(
        dropped.to_string(),
        "circuit breaker open until 2026-11-29T00:01:01.500Z"
    );
    let json = serde_json::to_value(&plan).expect("serialises");
    assert_eq!(json["dropped"][0]["code"], "breaker_open");
    assert_eq!(json["dropped"][0]["until_ms"], until);
}
