//! Operator levers as the send pipeline honours them (read in the batch's one state read).

use super::*;
use crate::breaker::{BreakerState, Phase};
use crate::levers::{self, Action, BreakerMode, Order, Target};

async fn act(h: &Harness, target: Target, action: Action) {
    let order = Order {
        target,
        action,
        by: "oncall".to_owned(),
        reason: "provider incident".to_owned(),
    };
    levers::apply(h.store.as_ref(), &order, &["a", "b"], h.clock.now_ms())
        .await
        .unwrap();
}

/// Stores gateway `id`'s breaker as tripped (open for 10 more minutes).
async fn trip(h: &Harness, id: &str) {
    let tripped = BreakerState {
        phase: Phase::Open,
        generation: 3,
        opened_at: h.clock.now_ms(),
        until: h.clock.now_ms() + 600_000,
        stored: crate::breaker::Stored::Valid,
        ..BreakerState::missing()
    };
    h.store
        .put_many(vec![(crate::breaker::key(id), tripped.to_item())])
        .await
        .unwrap();
}

fn gw(id: &str) -> Target {
    Target::Gateway(id.to_owned())
}

fn batch(from: usize, n: usize) -> Vec<Received> {
    records(
        (from..from + n)
            .map(|i| body(&format!("m-{i}"), "dr@clinic.example", &["p@example.org"]))
            .collect(),
    )
}

#[tokio::test]
async fn a_paused_gateway_gets_no_call_and_its_messages_fail_over_until_resumed() {
    let h = harness(&[("a", Reply::Accept), ("b", Reply::Accept)], "", "");
    act(&h, gw("a"), Action::Pause { until: None }).await;
    let report = h.run(&batch(0, 3)).await;
    assert_eq!(report.metrics.sent, 3);
    assert!(h.calls("a").is_empty(), "paused: no call");
    assert_eq!(h.calls("b").len(), 3, "failed over to b");

    act(&h, gw("a"), Action::Resume).await;
    let report = h.run(&batch(3, 2)).await;
    assert_eq!(report.metrics.sent, 2);
    assert_eq!(h.calls("a").len(), 2, "resumed: a has priority again");
}

#[tokio::test]
async fn pausing_all_sending_defers_every_message_to_the_pauses_end() {
    let h = harness(&[("a", Reply::Accept), ("b", Reply::Accept)], "", "");
    let end = h.clock.now_ms() + 600_000;
    act(&h, Target::All, Action::Pause { until: Some(end) }).await;
    let report = h.run(&batch(0, 2)).await;
    assert_eq!(report.metrics.sent, 0);
    assert!(h.calls("a").is_empty() && h.calls("b").is_empty());
    for item in &report.items {
        let after = retry_after(item);
        assert!(
            after >= Duration::from_secs(600) && after <= Duration::from_secs(631),
            "deferred to the pause's end (plus spread): {after:?}"
        );
    }
    // Past its end the pause no longer holds, without anyone writing.
    h.clock.advance(600_000);
    let report = h.run(&batch(0, 2)).await;
    assert_eq!(report.metrics.sent, 2);
}

#[tokio::test]
async fn a_pause_without_an_end_backs_off_as_after_a_failure() {
    let h = harness(&[("a", Reply::Accept)], "", "");
    act(&h, Target::All, Action::Pause { until: None }).await;
    let report = h.run(&batch(0, 1)).await;
    let after = retry_after(&report.items[0]);
    let first = Backoff::default().delay("m-0", 1);
    assert_eq!(after, first, "the first backoff step, not a fixed recheck");
}

#[tokio::test]
async fn a_forced_open_breaker_refuses_and_a_reset_closes_a_tripped_one() {
    let h = harness(
        &[("a", Reply::Accept), ("b", Reply::Accept)],
        r#", "circuit_breaker": {"failure_threshold": 3, "timeout": "10m"}"#,
        "",
    );
    act(
        &h,
        gw("a"),
        Action::Breaker {
            mode: BreakerMode::Open,
            until: None,
        },
    )
    .await;
    h.run(&batch(0, 2)).await;
    assert!(h.calls("a").is_empty(), "forced open: no call");
    assert_eq!(h.calls("b").len(), 2);

    // The stored breaker tripped (say by the incident); auto leaves it open, a reset closes it.
    trip(&h, "a").await;
    act(&h, gw("a"), Action::BreakerAuto).await;
    h.run(&batch(2, 1)).await;
    assert!(h.calls("a").is_empty(), "the stored breaker is still open");
    act(&h, gw("a"), Action::BreakerReset).await;
    let report = h.run(&batch(3, 2)).await;
    assert_eq!(report.metrics.sent, 2);
    assert_eq!(h.calls("a").len(), 2, "reset: closed again");
}

#[tokio::test]
async fn a_breaker_forced_closed_admits_whatever_is_stored() {
    let h = harness(
        &[("a", Reply::Accept)],
        r#", "circuit_breaker": {"failure_threshold": 3, "timeout": "10m"}"#,
        "",
    );
    trip(&h, "a").await;
    let report = h.run(&batch(0, 1)).await;
    assert_eq!(report.metrics.sent, 0, "open: deferred");
    act(
        &h,
        gw("a"),
        Action::Breaker {
            mode: BreakerMode::Closed,
            until: None,
        },
    )
    .await;
    let report = h.run(&batch(1, 2)).await;
    assert_eq!(report.metrics.sent, 2);
    assert_eq!(h.calls("a").len(), 2);
}

#[tokio::test]
async fn a_limit_override_holds_until_its_end_and_the_config_limit_returns() {
    let h = harness(
        &[("a", Reply::Accept)],
        r#", "rate_limits": {"workspace_daily": 2}"#,
        "",
    );
    let report = h.run(&batch(0, 3)).await;
    assert_eq!(report.metrics.sent, 2, "the config's day limit");
    let end = h.clock.now_ms() + 3_600_000;
    act(
        &h,
        gw("a"),
        Action::Limits {
            workspace_daily: Some(5),
            per_hour: None,
            burst_limit: None,
            until: end,
        },
    )
    .await;
    let report = h.run(&batch(3, 4)).await;
    assert_eq!(report.metrics.sent, 3, "raised to 5 for the day: 3 more");
    // Past the override's end the config's 2 applies again (5 are used today).
    h.clock.advance(3_600_000);
    let report = h.run(&batch(7, 1)).await;
    assert_eq!(report.metrics.sent, 0);
}
