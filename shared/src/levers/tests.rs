#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::breaker::{BreakerState, Phase};
use crate::state::memory::MemoryStore;

const NOW: EpochMillis = 1_795_860_000_000;
const GATEWAYS: &[&str] = &["gw-a", "gw-b"];

fn order(target: Target, action: Action) -> Order {
    Order {
        target,
        action,
        by: "arn:aws:iam::123456789012:user/oncall".to_owned(),
        reason: "provider incident INC-42".to_owned(),
    }
}

fn gw(id: &str) -> Target {
    Target::Gateway(id.to_owned())
}

#[tokio::test]
async fn a_pause_holds_until_resumed_and_each_action_has_its_audit_entry() {
    let store = MemoryStore::new();
    let paused = apply(
        &store,
        &order(gw("gw-a"), Action::Pause { until: None }),
        GATEWAYS,
        NOW,
    )
    .await
    .unwrap();
    assert_eq!(paused.seq, 1);
    let (all, each) = read(&store, GATEWAYS).await.unwrap();
    assert_eq!(all, Levers::default());
    let hold = each[0].pause_at(NOW + DAY_MS).expect("paused");
    assert_eq!(hold.reason, "provider incident INC-42");
    assert_eq!(
        held(&all, &each[0], NOW),
        Some(Held {
            by: HeldBy::Paused,
            until: None
        })
    );
    assert_eq!(held(&all, &each[1], NOW), None, "gw-b is not paused");

    apply(
        &store,
        &order(gw("gw-a"), Action::Resume),
        GATEWAYS,
        NOW + 1,
    )
    .await
    .unwrap();
    let (_, each) = read(&store, GATEWAYS).await.unwrap();
    assert_eq!(each[0].pause_at(NOW + 2), None);
    assert_eq!(each[0].seq, 2);

    let entries = history(&store, &gw("gw-a"), 10).await.unwrap();
    let actions: Vec<(&str, i64)> = entries.iter().map(|e| (e.action.as_str(), e.seq)).collect();
    assert_eq!(actions, [("resume", 2), ("pause", 1)], "newest first");
    assert_eq!(entries[1].by, "arn:aws:iam::123456789012:user/oncall");
    assert!(
        entries[0].before.contains("INC-42"),
        "{}",
        entries[0].before
    );
    assert!(history(&store, &gw("gw-b"), 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_lever_with_an_end_stops_holding_at_it_without_a_write() {
    let store = MemoryStore::new();
    let until = NOW + 600_000;
    apply(
        &store,
        &order(
            gw("gw-b"),
            Action::Breaker {
                mode: BreakerMode::Open,
                until: Some(until),
            },
        ),
        GATEWAYS,
        NOW,
    )
    .await
    .unwrap();
    let (all, each) = read(&store, GATEWAYS).await.unwrap();
    assert_eq!(
        held(&all, &each[1], until - 1),
        Some(Held {
            by: HeldBy::BreakerForcedOpen,
            until: Some(until)
        })
    );
    assert_eq!(held(&all, &each[1], until), None);
}

#[tokio::test]
async fn pausing_all_holds_every_gateway_before_its_own_levers() {
    let store = MemoryStore::new();
    apply(
        &store,
        &order(
            gw("gw-a"),
            Action::Breaker {
                mode: BreakerMode::Closed,
                until: None,
            },
        ),
        GATEWAYS,
        NOW,
    )
    .await
    .unwrap();
    apply(
        &store,
        &order(Target::All, Action::Pause { until: None }),
        GATEWAYS,
        NOW,
    )
    .await
    .unwrap();
    let (all, each) = read(&store, GATEWAYS).await.unwrap();
    for levers in &each {
        assert_eq!(
            held(&all, levers, NOW).map(|h| h.by),
            Some(HeldBy::AllPaused)
        );
    }
    assert!(each[0].forced_closed(NOW));
    assert!(!each[1].forced_closed(NOW));
}

#[tokio::test]
async fn a_reset_closes_the_stored_breaker_in_the_same_transaction() {
    let store = MemoryStore::new();
    let open = BreakerState {
        phase: Phase::Open,
        generation: 7,
        opened_at: NOW - 1_000,
        until: NOW + 60_000,
        stored: crate::breaker::Stored::Valid,
        ..BreakerState::missing()
    };
    store
        .put_many(vec![(breaker::key("gw-a"), open.to_item())])
        .await
        .unwrap();
    assert!(matches!(
        breaker::view(
            store.get(&breaker::key("gw-a")).await.unwrap().as_ref(),
            NOW
        ),
        breaker::BreakerView::Open { .. }
    ));
    apply(
        &store,
        &order(gw("gw-a"), Action::BreakerReset),
        GATEWAYS,
        NOW,
    )
    .await
    .unwrap();
    let item = store.get(&breaker::key("gw-a")).await.unwrap();
    let (state, problem) = BreakerState::from_item(item.as_ref());
    assert_eq!(problem, None);
    assert_eq!(state.phase, Phase::Closed);
    assert_eq!(
        state.generation, 8,
        "the next generation, so pending writes re-decide"
    );
    assert_eq!(state.failures, 0);
    assert_eq!(
        history(&store, &gw("gw-a"), 1).await.unwrap()[0].action,
        "breaker_reset"
    );
}

#[tokio::test]
async fn bad_orders_name_the_field_and_write_nothing() {
    let store = MemoryStore::new();
    let cases = [
        (order(gw("gw-z"), Action::Resume), "target"),
        (order(Target::All, Action::BreakerReset), "target"),
        (
            Order {
                reason: "  ".to_owned(),
                ..order(gw("gw-a"), Action::Resume)
            },
            "reason",
        ),
        (
            Order {
                reason: "two\nlines".to_owned(),
                ..order(gw("gw-a"), Action::Resume)
            },
            "reason",
        ),
        (
            Order {
                by: String::new(),
                ..order(gw("gw-a"), Action::Resume)
            },
            "by",
        ),
        (
            order(gw("gw-a"), Action::Pause { until: Some(NOW) }),
            "until",
        ),
        (
            order(
                gw("gw-a"),
                Action::Pause {
                    until: Some(NOW + MAX_UNTIL_MS + 1),
                },
            ),
            "until",
        ),
    ];
    for (o, want) in cases {
        match apply(&store, &o, GATEWAYS, NOW).await {
            Err(LeverError::Invalid { field, .. }) => assert_eq!(field, want, "{o:?}"),
            other => panic!("{o:?}: {other:?}"),
        }
    }
    let (all, each) = read(&store, GATEWAYS).await.unwrap();
    assert_eq!(all.seq + each.iter().map(|l| l.seq).sum::<i64>(), 0);
}

#[tokio::test]
async fn an_item_that_does_not_decode_holds() {
    let mut item = Item::new();
    item.insert(PAUSE.into(), Value::from("{not json"));
    item.insert(BREAKER.into(), Value::N(3));
    let levers = Levers::from_item(Some(&item));
    assert!(levers.pause_at(NOW).is_some());
    assert_eq!(
        levers.breaker_at(NOW).map(|b| b.mode),
        Some(BreakerMode::Open)
    );
    assert_eq!(
        held(&Levers::default(), &levers, NOW).map(|h| h.by),
        Some(HeldBy::Paused)
    );
}

#[tokio::test]
async fn two_operators_acting_at_once_are_both_applied_and_audited() {
    let store = MemoryStore::new();
    let a = order(gw("gw-a"), Action::Pause { until: None });
    let b = order(
        gw("gw-a"),
        Action::Breaker {
            mode: BreakerMode::Open,
            until: None,
        },
    );
    let (ra, rb) = tokio::join!(
        apply(&store, &a, GATEWAYS, NOW),
        apply(&store, &b, GATEWAYS, NOW)
    );
    let mut seqs = [ra.unwrap().seq, rb.unwrap().seq];
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2]);
    let (_, each) = read(&store, GATEWAYS).await.unwrap();
    assert!(each[0].pause_at(NOW).is_some() && each[0].breaker_at(NOW).is_some());
    assert_eq!(history(&store, &gw("gw-a"), 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_limit_override_needs_a_level_and_ends_by_itself() {
    let store = MemoryStore::new();
    let none = order(
        gw("gw-a"),
        Action::Limits {
            workspace_daily: None,
            per_hour: None,
            burst_limit: None,
            until: NOW + 1,
        },
    );
    assert!(matches!(
        apply(&store, &none, GATEWAYS, NOW).await,
        Err(LeverError::Invalid {
            field: "limits",
            ..
        })
    ));
    let set = order(
        gw("gw-a"),
        Action::Limits {
            workspace_daily: Some(10_000),
            per_hour: None,
            burst_limit: Some(20),
            until: NOW + 60_000,
        },
    );
    apply(&store, &set, GATEWAYS, NOW).await.unwrap();
    let (all, each) = read(&store, GATEWAYS).await.unwrap();
    let o = each[0].limits_at(NOW).expect("holding");
    assert_eq!(
        (o.workspace_daily, o.per_hour, o.burst_limit),
        (Some(10_000), None, Some(20))
    );
    assert_eq!(each[0].limits_at(NOW + 60_000), None, "ends by itself");
    assert_eq!(
        held(&all, &each[0], NOW),
        None,
        "an override holds nothing back"
    );
    apply(
        &store,
        &order(gw("gw-a"), Action::LimitsClear),
        GATEWAYS,
        NOW + 1,
    )
    .await
    .unwrap();
    let (_, each) = read(&store, GATEWAYS).await.unwrap();
    assert_eq!(each[0].limits, None);
}
