use std::num::NonZeroU32;
use std::time::Duration;

use super::*;

fn settings() -> HealthCheckSettings {
    HealthCheckSettings {
        enabled: true,
        interval: Duration::from_secs(60),
        timeout: Duration::from_secs(10),
        failure_threshold: NonZeroU32::new(3).unwrap(),
        success_threshold: NonZeroU32::new(2).unwrap(),
    }
}

fn record(status: HealthStatus, checked_at: EpochMillis) -> HealthRecord {
    HealthRecord {
        status,
        consecutive_failures: 3,
        consecutive_successes: 0,
        latency_ms: Some(120),
        error: Some("503 Service Unavailable".into()),
        checked_at,
    }
}

fn ok() -> ProbeResult {
    ProbeResult::Ok { latency_ms: 80 }
}

fn fail() -> ProbeResult {
    ProbeResult::failed("Unavailable from mailgun: 503", Some(15))
}

/// Runs `probes` one interval apart on a manual clock, from `start`, and returns the status
/// after each.
fn run(
    start: Option<HealthRecord>,
    probes: &[ProbeResult],
    s: &HealthCheckSettings,
    clock: &ManualClock,
) -> (Vec<HealthStatus>, Option<HealthRecord>) {
    let mut rec = start;
    let mut seen = Vec::new();
    for p in probes {
        clock.advance(60_000);
        let next = step(rec.as_ref(), p, s, clock.now_ms());
        assert_eq!(next.checked_at, clock.now_ms());
        seen.push(next.status);
        rec = Some(next);
    }
    (seen, rec)
}

use crate::clock::{Clock, ManualClock};
use crate::events::HealthStatus::{Degraded, Disabled, Healthy, Unhealthy};

#[test]
fn the_first_probe_decides() {
    let clock = ManualClock::new(1_700_000_000_000);
    assert_eq!(run(None, &[ok()], &settings(), &clock).0, [Healthy]);
    assert_eq!(run(None, &[fail()], &settings(), &clock).0, [Degraded]);
    let strict = HealthCheckSettings {
        failure_threshold: NonZeroU32::new(1).unwrap(),
        ..settings()
    };
    assert_eq!(run(None, &[fail()], &strict, &clock).0, [Unhealthy]);
}

#[test]
fn one_blip_does_not_flap() {
    let clock = ManualClock::new(1_700_000_000_000);
    let (seen, last) = run(
        None,
        &[ok(), fail(), ok(), fail(), fail(), ok()],
        &settings(),
        &clock,
    );
    assert_eq!(
        seen,
        [Healthy, Degraded, Healthy, Degraded, Degraded, Healthy]
    );
    let last = last.unwrap();
    assert_eq!(
        (last.consecutive_failures, last.consecutive_successes),
        (0, 1)
    );
    // Degraded is still routed to.
    let degraded = step(None, &fail(), &settings(), clock.now_ms());
    assert_eq!(
        routing_health(Some(&degraded), &settings(), clock.now_ms()),
        Health::Degraded
    );
}

#[test]
fn failure_threshold_consecutive_failures_make_it_unhealthy() {
    let clock = ManualClock::new(1_700_000_000_000);
    let (seen, last) = run(
        None,
        &[ok(), fail(), fail(), fail(), fail()],
        &settings(),
        &clock,
    );
    assert_eq!(seen, [Healthy, Degraded, Degraded, Unhealthy, Unhealthy]);
    let last = last.unwrap();
    assert_eq!(last.consecutive_failures, 4);
    assert_eq!(last.error.as_deref(), Some("Unavailable from mailgun: 503"));
    assert_eq!(last.latency_ms, Some(15));
    assert_eq!(
        routing_health(Some(&last), &settings(), clock.now_ms()),
        Health::Unhealthy
    );
}

#[test]
fn recovery_needs_success_threshold_successes_in_a_row() {
    let clock = ManualClock::new(1_700_000_000_000);
    let (_, unhealthy) = run(None, &[fail(), fail(), fail()], &settings(), &clock);
    assert_eq!(unhealthy.as_ref().unwrap().status, Unhealthy);
    // success_threshold is 2: one success is not enough, and a failure starts again.
    let (seen, last) = run(
        unhealthy,
        &[ok(), fail(), ok(), ok(), ok()],
        &settings(),
        &clock,
    );
    assert_eq!(seen, [Unhealthy, Unhealthy, Unhealthy, Healthy, Healthy]);
    let last = last.unwrap();
    assert_eq!(
        (last.consecutive_failures, last.consecutive_successes),
        (0, 3)
    );
    assert_eq!(last.error, None);
}

#[test]
fn a_stale_record_does_not_carry_its_counts_over() {
    let clock = ManualClock::new(1_700_000_000_000);
    let s = settings();
    let (_, unhealthy) = run(None, &[fail(), fail(), fail()], &s, &clock);
    // The checker was away for four intervals: the old verdict is ignored by the router
    // and the first probe after the gap decides.
    clock.advance(4 * 60_000);
    let now = clock.now_ms();
    assert_eq!(routing_health(unhealthy.as_ref(), &s, now), Health::Unknown);
    let next = step(unhealthy.as_ref(), &ok(), &s, now);
    assert_eq!((next.status, next.consecutive_successes), (Healthy, 1));
    // A stale healthy record's old failure run does not continue either.
    let old = HealthRecord {
        consecutive_failures: 2,
        ..record(Degraded, now - 10 * 60_000)
    };
    let next = step(Some(&old), &fail(), &s, now);
    assert_eq!((next.status, next.consecutive_failures), (Degraded, 1));
    // Within three intervals the counts continue.
    let recent = HealthRecord {
        consecutive_failures: 2,
        ..record(Degraded, now - 3 * 60_000)
    };
    assert_eq!(step(Some(&recent), &fail(), &s, now).status, Unhealthy);
}

#[test]
fn a_disabled_check_is_disabled_and_probing_again_starts_afresh() {
    let clock = ManualClock::new(1_700_000_000_000);
    let off = HealthCheckSettings {
        enabled: false,
        ..settings()
    };
    let (seen, last) = run(None, &[ok(), fail()], &off, &clock);
    assert_eq!(seen, [Disabled, Disabled]);
    assert_eq!(last.as_ref().unwrap(), &disabled(clock.now_ms()));
    let (seen, _) = run(last, &[fail(), fail(), fail()], &settings(), &clock);
    assert_eq!(seen, [Degraded, Degraded, Unhealthy]);
}

#[test]
fn a_gateway_is_due_once_its_interval_has_nearly_elapsed() {
    let s = settings();
    let at = 1_700_000_000_000;
    let prev = record(Healthy, at);
    let cases = [
        (None, at, true),
        (Some(&prev), at, false),
        (Some(&prev), at + 53_999, false),
        // A tenth of the interval early still counts (schedule jitter).
        (Some(&prev), at + 54_000, true),
        (Some(&prev), at + 60_000, true),
        // Another instance's clock is ahead: not due.
        (Some(&prev), at - 1_000, false),
    ];
    for (prev, now, due) in cases {
        assert_eq!(is_due(prev, &s, now), due, "{prev:?} at {now}");
    }
}

#[test]
fn probe_errors_are_cut_short() {
    let long = "x".repeat(500);
    let ProbeResult::Failed { error, .. } = ProbeResult::failed(&long, None) else {
        unreachable!()
    };
    assert_eq!(error.chars().count(), MAX_ERROR_CHARS);
    assert!(error.ends_with('…'));
    let e = SendError::new(crate::providers::ErrorClass::Auth, "mailgun", "Forbidden");
    assert_eq!(
        ProbeResult::of(&Err(e)),
        ProbeResult::failed("Auth from mailgun: Forbidden", None)
    );
    let report = ProbeReport {
        latency: Duration::from_millis(42),
        send_quota: None,
    };
    assert_eq!(
        ProbeResult::of(&Ok(report)),
        ProbeResult::Ok { latency_ms: 42 }
    );
}

#[test]
fn a_record_round_trips_through_its_item() {
    let r = record(HealthStatus::Unhealthy, 1_000);
    assert_eq!(HealthRecord::from_item(Some(&r.to_item())), Some(r));
    let bare = HealthRecord {
        latency_ms: None,
        error: None,
        ..record(HealthStatus::Healthy, 5)
    };
    assert_eq!(HealthRecord::from_item(Some(&bare.to_item())), Some(bare));
}

#[test]
fn items_that_are_not_health_records_read_as_none() {
    assert_eq!(HealthRecord::from_item(None), None);
    let mut item = record(HealthStatus::Healthy, 1).to_item();
    item.insert(STATUS.into(), "FINE".into());
    assert_eq!(HealthRecord::from_item(Some(&item)), None);
    let mut item = record(HealthStatus::Healthy, 1).to_item();
    item.remove(CHECKED_AT);
    assert_eq!(HealthRecord::from_item(Some(&item)), None);
}

#[test]
fn the_router_ignores_stale_verdicts_and_unchecked_gateways() {
    let s = settings();
    let now = 10_000_000;
    let fresh = record(HealthStatus::Unhealthy, now - 60_000);
    assert_eq!(routing_health(Some(&fresh), &s, now), Health::Unhealthy);
    let edge = record(HealthStatus::Unhealthy, now - 180_000);
    assert_eq!(routing_health(Some(&edge), &s, now), Health::Unhealthy);
    let stale = record(HealthStatus::Unhealthy, now - 180_001);
    assert_eq!(routing_health(Some(&stale), &s, now), Health::Unknown);
    assert_eq!(routing_health(None, &s, now), Health::Unknown);
    let off = HealthCheckSettings {
        enabled: false,
        ..settings()
    };
    assert_eq!(routing_health(Some(&fresh), &off, now), Health::Unknown);
    let degraded = record(HealthStatus::Degraded, now);
    assert_eq!(routing_health(Some(&degraded), &s, now), Health::Degraded);
    // A 30 s interval is counted as the schedule's minute: one missed run is not stale.
    let short = HealthCheckSettings {
        interval: Duration::from_secs(30),
        ..settings()
    };
    let two_minutes = record(HealthStatus::Unhealthy, now - 120_000);
    assert_eq!(
        routing_health(Some(&two_minutes), &short, now),
        Health::Unhealthy
    );
    // A record from a clock running ahead is stale and due, not frozen.
    let ahead = record(HealthStatus::Unhealthy, now + 61_000);
    assert_eq!(routing_health(Some(&ahead), &s, now), Health::Unknown);
    assert!(is_due(Some(&ahead), &s, now));
    let slightly_ahead = record(HealthStatus::Unhealthy, now + 1_000);
    assert_eq!(
        routing_health(Some(&slightly_ahead), &s, now),
        Health::Unhealthy
    );
}
