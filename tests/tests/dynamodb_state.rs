//! The shared state on DynamoDB (the moto emulator): the port's contract suite, and the
//! limiter, breaker, ledger and suppression list under real concurrency.
//!
//! Needs the emulator: `scripts/services up && source .local/services.env`. Every test creates
//! its own table with a unique name, so tests run in parallel without seeing each other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use gateway_core::breaker::{self, Admission, Phase, Tally};
use gateway_core::clock::{Clock, EpochMillis, HOUR_MS, ManualClock};
use gateway_core::config::{Config, load_config};
use gateway_core::ledger::{self, ClaimOutcome, MarkOutcome, SentRecord};
use gateway_core::limiter::{self, LevelKind, Refusal, Verdict};
use gateway_core::state::dynamodb::{DynamoStore, RetryPolicy, client_from_env, create_table};
use gateway_core::state::{StateStore, StoreError, contract};
use gateway_core::suppression::{self, Reason, Scope, Stream, Suppression};

/// 2026-11-28T10:00:00Z.
const TEN_AM: EpochMillis = 1_795_860_000_000;
const TASKS: usize = 16;

static TABLES: AtomicU32 = AtomicU32::new(0);

/// A store on a new, empty table of its own.
async fn fresh_store() -> DynamoStore {
    if std::env::var_os("MOTO_URL").is_none() {
        panic!(
            "MOTO_URL is unset: these tests need the DynamoDB emulator. Run \
             `scripts/services up && source .local/services.env` first (scripts/test does it)."
        );
    }
    let client = gateway_tests::emulator_dynamodb().await;
    let table = format!(
        "state-{}-{}",
        std::process::id(),
        TABLES.fetch_add(1, Ordering::Relaxed)
    );
    assert!(
        create_table(&client, &table).await.unwrap(),
        "{table} existed"
    );
    DynamoStore::new(client, table)
}

/// DynamoDB applies a transaction once per client token (for 10 minutes), so a retry whose first
/// attempt was applied but whose answer was lost changes nothing; moto does not, and the suite's
/// launcher (scripts/moto_serial.py) adds it. A limiter refund relies on this.
#[tokio::test]
async fn a_transaction_retried_with_its_client_token_is_applied_once() {
    use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
    let store = fresh_store().await;
    let add = |token: &str| {
        let update = Update::builder()
            .table_name(store.table())
            .key("pk", AttributeValue::S("lim#token-test".into()))
            .update_expression("ADD n :one")
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .build()
            .unwrap();
        store
            .client()
            .transact_write_items()
            .client_request_token(token)
            .transact_items(TransactWriteItem::builder().update(update).build())
    };
    add("token-1").send().await.unwrap();
    add("token-1").send().await.unwrap();
    let item = store
        .get(&"lim#token-test".to_owned())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        gateway_core::state::get_n(&item, "n"),
        Some(1),
        "the retry changed nothing"
    );
    add("token-2").send().await.unwrap();
    let item = store
        .get(&"lim#token-test".to_owned())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        gateway_core::state::get_n(&item, "n"),
        Some(2),
        "another token is another call"
    );
}

fn config(rate_limits: &str, breaker: &str, system_daily: Option<&str>) -> Config {
    let doc = format!(
        r#"{{
          "gateways": [{{
            "id": "gw",
            "type": "capture",
            "display_name": "gw",
            "capture": {{"directory": "/tmp/unused"}},
            "routing": {{"can_route": ["*"]}},
            "rate_limits": {rate_limits},
            "circuit_breaker": {breaker}
          }}]
        }}"#
    );
    let env = |name: &str| match name {
        "QUEUE_DAILY_RATE_LIMIT" => system_daily.map(str::to_owned),
        _ => None,
    };
    load_config(Some(&doc), None, &env)
        .unwrap_or_else(|e| panic!("test config invalid: {e:?}"))
        .config
}

#[tokio::test]
async fn contract_suite_passes_on_dynamodb() {
    let store = fresh_store().await;
    contract::run_all(&store, "contract").await;
}

#[tokio::test]
async fn a_missing_table_is_a_configuration_error_naming_it() {
    if std::env::var_os("MOTO_URL").is_none() {
        panic!("MOTO_URL is unset: run `scripts/services up && source .local/services.env`");
    }
    let store =
        DynamoStore::new(client_from_env().await, "no-such-table").with_retry(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        });
    match store.get(&"k".to_owned()).await {
        Err(StoreError::Misconfigured(message)) => {
            assert!(message.contains("no-such-table"), "{message}");
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
}

#[tokio::test]
async fn creating_an_existing_table_changes_nothing() {
    let store = fresh_store().await;
    assert!(!create_table(store.client(), store.table()).await.unwrap());
}

/// Each task takes one recipient at a time until refused.
async fn hammer(store: Arc<DynamoStore>, config: Arc<Config>, now: EpochMillis) -> (u64, Refusal) {
    let gateway = config.gateway("gw").unwrap();
    let mut admitted = 0;
    loop {
        let plan = limiter::plan(&config, gateway, now);
        match limiter::acquire_one(store.as_ref(), &plan, "sender@example.org", 1)
            .await
            .unwrap()
        {
            Verdict::Admit(_) => admitted += 1,
            Verdict::Refuse(Refusal::Contended { .. }) => {}
            Verdict::Refuse(refusal) => return (admitted, refusal),
        }
    }
}

#[tokio::test]
async fn sixteen_tasks_on_a_limit_of_l_admit_exactly_l() {
    const L: u64 = 40;
    let store = Arc::new(fresh_store().await);
    // Several levels at once: the daily gateway limit is the one that binds.
    let config = Arc::new(config(
        &format!(
            r#"{{"workspace_daily": {L}, "per_hour": 1000, "per_user_daily": 1000, "burst_limit": 1000, "burst_refill_per_second": 1000}}"#
        ),
        "{}",
        Some("100000"),
    ));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| tokio::spawn(hammer(Arc::clone(&store), Arc::clone(&config), TEN_AM)))
        .collect();
    let mut total = 0;
    let mut busy = 0;
    for task in tasks {
        let (admitted, refusal) = task.await.unwrap();
        total += admitted;
        busy += usize::from(admitted > 0);
        assert_eq!(
            refusal.level(),
            Some(LevelKind::GatewayDaily),
            "{refusal:?}"
        );
    }
    assert_eq!(total, L);
    assert!(busy > 1, "tasks did not interleave");
    // Every level counted the same L: none admitted more than another.
    let config = Arc::clone(&config);
    let plan = limiter::plan(&config, config.gateway("gw").unwrap(), TEN_AM);
    let usage = limiter::read_usage(store.as_ref(), &plan, Some("sender@example.org"))
        .await
        .unwrap();
    for level in usage {
        assert_eq!(level.used, L, "{level:?}");
    }
}

#[tokio::test]
async fn the_hourly_window_rolls_over_at_the_hour() {
    let store = fresh_store().await;
    let config = config(r#"{"per_hour": 3}"#, "{}", None);
    let gateway = config.gateway("gw").unwrap();
    let clock = ManualClock::new(TEN_AM + HOUR_MS - 60_000); // 10:59
    let take = |now| {
        let plan = limiter::plan(&config, gateway, now);
        let store = &store;
        async move {
            limiter::acquire_one(store, &plan, "a@example.org", 1)
                .await
                .unwrap()
        }
    };
    for _ in 0..3 {
        assert!(take(clock.now_ms()).await.is_admitted());
    }
    match take(clock.now_ms()).await {
        Verdict::Refuse(Refusal::Exhausted { level, retry_after }) => {
            assert_eq!(level, LevelKind::GatewayHourly);
            assert_eq!(retry_after, TEN_AM + HOUR_MS);
        }
        other => panic!("expected the hour to be exhausted, got {other:?}"),
    }
    clock.advance(59_999);
    assert!(!take(clock.now_ms()).await.is_admitted(), "10:59:59.999");
    clock.advance(1);
    for _ in 0..3 {
        assert!(take(clock.now_ms()).await.is_admitted(), "11:00");
    }
    assert!(!take(clock.now_ms()).await.is_admitted());
}

#[tokio::test]
async fn concurrent_claimers_of_one_message_one_wins() {
    let store = Arc::new(fresh_store().await);
    for round in 0..5 {
        let id = format!("msg-{round}");
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let store = Arc::clone(&store);
                let id = id.clone();
                tokio::spawn(async move {
                    let owner = format!("inv-{i}");
                    ledger::claim(store.as_ref(), &id, &owner, TEN_AM + 60_000, TEN_AM)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            match task.await.unwrap() {
                ClaimOutcome::Claimed(_) => winners += 1,
                ClaimOutcome::Held { until } => assert_eq!(until, TEN_AM + 60_000),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(winners, 1, "round {round}");
    }
}

#[tokio::test]
async fn an_expired_lease_is_reclaimed_and_a_sent_message_is_never_claimed_again() {
    let store = fresh_store().await;
    let clock = ManualClock::new(TEN_AM);
    let lease = TEN_AM + 30_000;
    let first = ledger::claim(&store, "m", "inv-a", lease, clock.now_ms())
        .await
        .unwrap();
    assert!(matches!(first, ClaimOutcome::Claimed(_)));
    clock.set(lease - 1);
    let held = ledger::claim(&store, "m", "inv-b", lease + 30_000, clock.now_ms())
        .await
        .unwrap();
    assert_eq!(held, ClaimOutcome::Held { until: lease });

    clock.set(lease);
    let ClaimOutcome::Claimed(second) =
        ledger::claim(&store, "m", "inv-b", lease + 30_000, clock.now_ms())
            .await
            .unwrap()
    else {
        panic!("the expired lease must be reclaimable");
    };
    assert_eq!(second.attempt, 2);
    assert_eq!(
        second.reclaimed.as_ref().map(|r| r.previous_owner.as_str()),
        Some("inv-a")
    );

    let record = SentRecord {
        gateway: "gw".into(),
        provider_message_id: Some("p-1".into()),
        at: clock.now_ms(),
    };
    assert_eq!(
        ledger::mark_sent(&store, &second, &record, clock.now_ms())
            .await
            .unwrap(),
        MarkOutcome::Marked
    );
    clock.advance(HOUR_MS);
    let again = ledger::claim(&store, "m", "inv-c", clock.now_ms() + 1, clock.now_ms())
        .await
        .unwrap();
    assert_eq!(again, ClaimOutcome::AlreadySent(record));
    // The previous owner's late release changes nothing.
    assert!(matches!(
        ledger::release(&store, &second, clock.now_ms())
            .await
            .unwrap(),
        MarkOutcome::NotOwner(_)
    ));
}

fn breaker_config() -> Config {
    config(
        "{}",
        r#"{"failure_threshold": 5, "success_threshold": 2, "timeout": "30s",
            "max_requests": 3, "window": "60s"}"#,
        None,
    )
}

#[tokio::test]
async fn sixteen_failure_reporters_open_the_breaker_exactly_once() {
    let store = Arc::new(fresh_store().await);
    let config = Arc::new(breaker_config());
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let store = Arc::clone(&store);
            let config = Arc::clone(&config);
            tokio::spawn(async move {
                let settings = &config.gateway("gw").unwrap().circuit_breaker;
                let tally = Tally {
                    failures: 1,
                    ..Tally::default()
                };
                breaker::flush_outcomes(store.as_ref(), "gw", settings, &tally, TEN_AM + i as i64)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut openings = 0;
    for task in tasks {
        if let Some(t) = task.await.unwrap().transition {
            assert_eq!((t.from, t.to), (Phase::Closed, Phase::Open));
            openings += 1;
        }
    }
    assert_eq!(openings, 1);
    let item = store.get(&breaker::key("gw")).await.unwrap();
    assert!(matches!(
        breaker::view(item.as_ref(), TEN_AM + 100),
        breaker::BreakerView::Open { .. }
    ));
}

#[tokio::test]
async fn half_open_admits_exactly_max_requests_across_sixteen_tasks() {
    let store = Arc::new(fresh_store().await);
    let config = Arc::new(breaker_config());
    let settings = config.gateway("gw").unwrap().circuit_breaker.clone();
    let five = Tally {
        failures: 5,
        ..Tally::default()
    };
    let opened = breaker::flush_outcomes(store.as_ref(), "gw", &settings, &five, TEN_AM)
        .await
        .unwrap();
    assert!(opened.transition.is_some());

    let after_timeout = TEN_AM + 30_000;
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = Arc::clone(&store);
            let settings = settings.clone();
            tokio::spawn(async move {
                breaker::permit_send(store.as_ref(), "gw", &settings, after_timeout)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let (mut trials, mut rejected, mut half_openings) = (0, 0, 0);
    for task in tasks {
        let outcome = task.await.unwrap();
        match outcome.admission {
            Admission::Trial => trials += 1,
            Admission::Rejected { .. } => rejected += 1,
            Admission::Allowed => panic!("a half-open breaker allowed a normal send"),
        }
        half_openings += usize::from(outcome.transition.is_some());
    }
    assert_eq!(trials, settings.max_requests.get() as usize);
    assert_eq!(rejected, TASKS - trials);
    assert_eq!(half_openings, 1);
}

#[tokio::test]
async fn suppressions_are_case_insensitive_and_a_batch_is_read_at_once() {
    let store = fresh_store().await;
    let at = TEN_AM;
    suppression::add(
        &store,
        &Suppression::new("Bounced@Example.org", Reason::HardBounce, "mg:1", at),
    )
    .await
    .unwrap();
    suppression::add_many(
        &store,
        &[Suppression::new(
            "spam@example.org",
            Reason::Complaint,
            "sg:2",
            at,
        )],
    )
    .await
    .unwrap();
    let found = suppression::lookup_many(
        &store,
        &["ok@example.org", "BOUNCED@example.ORG", "spam@Example.org"],
    )
    .await
    .unwrap();
    let reasons: Vec<Option<Reason>> = found
        .iter()
        .map(|e| e.as_ref().map(|e| e.suppressions[0].reason))
        .collect();
    assert_eq!(
        reasons,
        vec![None, Some(Reason::HardBounce), Some(Reason::Complaint)]
    );
    let removed_at = at + 60_000;
    assert!(
        suppression::remove(&store, "bounced@example.org", Scope::All, removed_at)
            .await
            .unwrap()
    );
    assert!(
        !suppression::remove(&store, "bounced@example.org", Scope::All, removed_at)
            .await
            .unwrap()
    );
    // The bounce replayed after the removal does not undo it; a later bounce suppresses again.
    let replayed = Suppression::new("bounced@example.org", Reason::HardBounce, "mg:1", at);
    assert!(!suppression::add(&store, &replayed).await.unwrap());
    assert_eq!(suppression::add_many(&store, &[replayed]).await.unwrap(), 0);
    assert!(
        suppression::lookup(&store, "bounced@example.org")
            .await
            .unwrap()
            .is_none()
    );
    let later = Suppression::new(
        "bounced@example.org",
        Reason::HardBounce,
        "mg:9",
        removed_at + 1,
    );
    assert!(suppression::add(&store, &later).await.unwrap());
    assert!(
        suppression::remove(&store, "bounced@example.org", Scope::All, removed_at + 2)
            .await
            .unwrap()
    );
    assert_eq!(
        suppression::lookup(&store, "Bounced@Example.org")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn suppression_scopes_side_by_side_on_the_emulator() {
    let store = fresh_store().await;
    let at = 1_795_000_000_000;
    let bulk = Scope::Stream(Stream::Bulk);
    let unsub =
        Suppression::new("scoped@example.org", Reason::Unsubscribe, "mg:u", at).in_scope(bulk);
    assert!(suppression::add(&store, &unsub).await.unwrap());
    let blocks = |e: &Option<suppression::Entry>, s: Stream| {
        e.as_ref().and_then(|e| e.blocking(s)).is_some()
    };
    let found = suppression::lookup(&store, "scoped@example.org")
        .await
        .unwrap();
    assert!(blocks(&found, Stream::Bulk) && !blocks(&found, Stream::Transactional));
    // A hard bounce joins the same item (the second put, after the first one's condition
    // returned the stored item) and blocks both.
    let bounce = Suppression::new("scoped@example.org", Reason::HardBounce, "mg:b", at + 1);
    assert!(suppression::add(&store, &bounce).await.unwrap());
    let found = suppression::lookup_many(&store, &["scoped@example.org"])
        .await
        .unwrap()
        .remove(0);
    assert!(blocks(&found, Stream::Bulk) && blocks(&found, Stream::Transactional));
    assert!(
        suppression::remove(&store, "scoped@example.org", Scope::All, at + 2)
            .await
            .unwrap()
    );
    assert!(
        !suppression::add(&store, &unsub).await.unwrap(),
        "older than the removal"
    );
}
