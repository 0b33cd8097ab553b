use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use proptest::prelude::*;

use super::*;
use crate::config::{
    AmbiguousPolicy, BreakerSettings, Gateway, GatewayKind, GatewayMode, GatewayRouting,
    GatewaySource, HealthCheckSettings, HttpSettings, MailgunRegion, MailgunSettings, MailgunTags,
    ProviderSettings, RateLimits, Routing, SecretRef, Strategy as RoutingStrategy, SystemLimits,
    Tracking,
};
use crate::state::memory::MemoryStore;
use crate::state::{
    StateStore, StoreError, TransactOutcome, UpdateAction, Value, Write, WriteOp, WriteOutcome,
};

/// 2026-11-29T00:00:00Z.
const MIDNIGHT: EpochMillis = 1_795_910_400_000;
/// 2026-11-28T10:00:00Z.
const TEN_AM: EpochMillis = MIDNIGHT - 14 * HOUR_MS;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn unlimited() -> RateLimits {
    RateLimits {
        workspace_daily: None,
        per_user_daily: None,
        per_hour: None,
        burst_limit: None,
        burst_refill_per_second: 1.0,
        custom_user_limits: BTreeMap::new(),
    }
}

fn limits(daily: Limit, per_user: Limit, hourly: Limit, burst: Limit) -> RateLimits {
    RateLimits {
        workspace_daily: daily,
        per_user_daily: per_user,
        per_hour: hourly,
        burst_limit: burst,
        burst_refill_per_second: burst.unwrap_or(1) as f64,
        custom_user_limits: BTreeMap::new(),
    }
}

fn gateway(id: &str, rate_limits: RateLimits) -> Gateway {
    Gateway {
        id: id.to_owned(),
        kind: GatewayKind::Mailgun,
        display_name: id.to_owned(),
        domain: Some("test.example.com".into()),
        enabled: true,
        priority: 1,
        weight: 100,
        provider: ProviderSettings::Mailgun(MailgunSettings {
            api_key: SecretRef::Env("MAILGUN_KEY".into()),
            domain: "test.example.com".into(),
            base_url: None,
            region: MailgunRegion::Us,
            tracking: Tracking::default(),
            tags: MailgunTags::default(),
            webhook_signing_key: None,
        }),
        rate_limits,
        routing: GatewayRouting {
            can_route: Vec::new(),
            exclude_patterns: Vec::new(),
            failover_to: Vec::new(),
        },
        circuit_breaker: BreakerSettings {
            enabled: true,
            failure_threshold: nz(5),
            success_threshold: nz(3),
            timeout: Duration::from_secs(30),
            max_requests: nz(10),
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

fn config(system_daily: Limit, gateways: Vec<Gateway>) -> Config {
    Config {
        gateways,
        routing: Routing {
            strategy: RoutingStrategy::Priority,
            rules: Vec::new(),
            failover_enabled: true,
            load_balancing_enabled: true,
            health_check_required: true,
            circuit_breaker_required: true,
            max_failover_attempts: nz(3),
            ambiguous_policy: AmbiguousPolicy::Defer,
            pinned_failover: false,
        },
        system_limits: SystemLimits {
            daily: system_daily,
            ..SystemLimits::default()
        },
        http: HttpSettings {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        },
        mode: GatewayMode::New,
        customer_webhooks: Vec::new(),
        suppression: Default::default(),
    }
}

fn single(system_daily: Limit, rate_limits: RateLimits) -> Config {
    config(system_daily, vec![gateway("gw", rate_limits)])
}

fn gw(config: &Config) -> &Gateway {
    &config.gateways[0]
}

async fn take(
    store: &MemoryStore,
    config: &Config,
    sender: &str,
    n: u64,
    now: EpochMillis,
) -> Verdict {
    acquire_one(store, &plan(config, gw(config), now), sender, n)
        .await
        .unwrap()
}

fn exhausted(level: LevelKind, retry_after: EpochMillis) -> Verdict {
    Verdict::Refuse(Refusal::Exhausted { level, retry_after })
}

fn used(usages: &[LevelUsage], level: LevelKind) -> Option<(u64, u64)> {
    usages
        .iter()
        .find(|u| u.level == level)
        .map(|u| (u.used, u.limit))
}

#[test]
fn keys_name_the_window_and_the_bucket_parameters() {
    let mut rl = limits(Some(1000), Some(100), Some(50), Some(10));
    rl.burst_refill_per_second = 3.0;
    let cfg = single(Some(5000), rl);
    let p = plan(&cfg, gw(&cfg), TEN_AM + 1);
    assert_eq!(
        p.keys(),
        [
            "lim#sys#d#20261128".to_owned(),
            "lim#gw#gw#d#20261128".to_owned(),
            // 1e6 / 3 µs, rounded up: refill is never faster than configured.
            "lim#gw#gw#b#10#333334".to_owned(),
        ]
    );
    assert_eq!(p.windows.named.hour_attr, "h10");
}

#[test]
fn a_bucket_config_change_starts_a_fresh_bucket() {
    let a = single(None, limits(None, None, None, Some(10)));
    let mut rl = limits(None, None, None, Some(10));
    rl.burst_refill_per_second = 5.0;
    let b = single(None, rl);
    let c = single(None, limits(None, None, None, Some(20)));
    let keys: Vec<Key> = [&a, &b, &c]
        .iter()
        .map(|cfg| plan(cfg, gw(cfg), TEN_AM).keys()[0].clone())
        .collect();
    assert_ne!(keys[0], keys[1]);
    assert_ne!(keys[0], keys[2]);
    assert_ne!(keys[1], keys[2]);
}

#[tokio::test]
async fn counters_roll_over_at_exact_utc_boundaries() {
    struct Case {
        name: &'static str,
        limits: RateLimits,
        system: Limit,
        filled_at: EpochMillis,
        level: LevelKind,
        boundary: EpochMillis,
    }
    let cases = [
        Case {
            name: "hour",
            limits: limits(None, None, Some(2), None),
            system: None,
            filled_at: TEN_AM + 30 * 60_000,
            level: LevelKind::GatewayHourly,
            boundary: TEN_AM + HOUR_MS,
        },
        Case {
            name: "gateway day",
            limits: limits(Some(2), None, None, None),
            system: None,
            filled_at: TEN_AM,
            level: LevelKind::GatewayDaily,
            boundary: MIDNIGHT,
        },
        Case {
            name: "sender day",
            limits: limits(None, Some(2), None, None),
            system: None,
            filled_at: TEN_AM,
            level: LevelKind::SenderDaily,
            boundary: MIDNIGHT,
        },
        Case {
            name: "system day",
            limits: unlimited(),
            system: Some(2),
            filled_at: TEN_AM,
            level: LevelKind::SystemDaily,
            boundary: MIDNIGHT,
        },
    ];
    for case in cases {
        let store = MemoryStore::new();
        let cfg = single(case.system, case.limits);
        let s = "a@example.com";
        assert!(
            take(&store, &cfg, s, 2, case.filled_at).await.is_admitted(),
            "{}",
            case.name
        );
        assert_eq!(
            take(&store, &cfg, s, 1, case.boundary - 1).await,
            exhausted(case.level, case.boundary),
            "{}: the last millisecond of the window is still full",
            case.name
        );
        assert!(
            take(&store, &cfg, s, 2, case.boundary).await.is_admitted(),
            "{}: the first millisecond of the next window is empty",
            case.name
        );
        assert_eq!(
            take(&store, &cfg, s, 1, case.boundary).await,
            exhausted(
                case.level,
                case.boundary
                    + if case.level == LevelKind::GatewayHourly {
                        HOUR_MS
                    } else {
                        DAY_MS
                    }
            ),
            "{}",
            case.name
        );
    }
}

#[tokio::test]
async fn hourly_limit_lives_beside_the_daily_count_of_the_same_day() {
    let store = MemoryStore::new();
    let cfg = single(None, limits(Some(100), None, Some(3), None));
    for hour in 0..5 {
        let t = MIDNIGHT - DAY_MS + hour * HOUR_MS;
        assert!(take(&store, &cfg, "a@x.org", 3, t).await.is_admitted());
    }
    let p = plan(&cfg, gw(&cfg), MIDNIGHT - DAY_MS + 4 * HOUR_MS + 10);
    let u = read_usage(&store, &p, None).await.unwrap();
    assert_eq!(used(&u, LevelKind::GatewayDaily), Some((15, 100)));
    assert_eq!(used(&u, LevelKind::GatewayHourly), Some((3, 3)));
}

#[tokio::test]
async fn bucket_refills_continuously_and_refusals_say_when_tokens_return() {
    let store = MemoryStore::new();
    let mut rl = limits(None, None, None, Some(10));
    rl.burst_refill_per_second = 2.0; // one token per 500 ms
    let cfg = single(None, rl);
    let s = "a@x.org";
    let t0 = TEN_AM;
    assert!(take(&store, &cfg, s, 10, t0).await.is_admitted());
    // (asked at, recipients, expected verdict)
    let steps: [(EpochMillis, u64, Option<EpochMillis>); 7] = [
        (t0, 1, Some(t0 + 500)),
        (t0 + 499, 1, Some(t0 + 500)),
        (t0 + 200, 3, Some(t0 + 1_500)),
        (t0 + 500, 1, None),
        (t0 + 500, 1, Some(t0 + 1_000)),
        // 5 s later the bucket is full again: 10 fit, 11 never do.
        (t0 + 5_500, 10, None),
        (t0 + 5_500, 2, Some(t0 + 6_500)),
    ];
    for (at, n, refused_until) in steps {
        let verdict = take(&store, &cfg, s, n, at).await;
        match refused_until {
            None => assert!(verdict.is_admitted(), "{n} at +{}", at - t0),
            Some(r) => assert_eq!(
                verdict,
                exhausted(LevelKind::GatewayBurst, r),
                "{n} at +{}",
                at - t0
            ),
        }
    }
}

#[tokio::test]
async fn bucket_retry_time_rounds_up_to_the_millisecond() {
    let mut rl = limits(None, None, None, Some(1));
    rl.burst_refill_per_second = 3.0; // 333 334 µs per token
    let cfg = single(None, rl);
    let store = MemoryStore::new();
    assert!(take(&store, &cfg, "a@x.org", 1, TEN_AM).await.is_admitted());
    let second = take(&store, &cfg, "a@x.org", 1, TEN_AM).await;
    assert_eq!(second, exhausted(LevelKind::GatewayBurst, TEN_AM + 334));
}

#[tokio::test]
async fn custom_user_limit_applies_whatever_the_sender_case() {
    let mut rl = limits(None, Some(100), None, None);
    rl.custom_user_limits
        .insert("vip@example.com".into(), Some(3));
    let cfg = single(None, rl);
    let store = MemoryStore::new();
    assert!(
        take(&store, &cfg, "VIP@Example.com", 2, TEN_AM)
            .await
            .is_admitted()
    );
    assert!(
        take(&store, &cfg, "vip@EXAMPLE.com", 1, TEN_AM)
            .await
            .is_admitted()
    );
    assert_eq!(
        take(&store, &cfg, "vip@example.com", 1, TEN_AM).await,
        exhausted(LevelKind::SenderDaily, MIDNIGHT)
    );
    // Another sender still has the default.
    assert!(
        take(&store, &cfg, "other@example.com", 50, TEN_AM)
            .await
            .is_admitted()
    );
    let p = plan(&cfg, gw(&cfg), TEN_AM);
    let u = read_usage(&store, &p, Some("Vip@example.COM"))
        .await
        .unwrap();
    assert_eq!(used(&u, LevelKind::SenderDaily), Some((3, 3)));
}

#[tokio::test]
async fn unlimited_levels_are_skipped() {
    let cfg = single(None, unlimited());
    let p = plan(&cfg, gw(&cfg), TEN_AM);
    assert!(p.keys().is_empty());
    let store = MemoryStore::new();
    let verdict = acquire_one(&store, &p, "a@x.org", 1_000_000).await.unwrap();
    assert!(verdict.is_admitted());
    assert_eq!(
        store.request_counts().total(),
        0,
        "nothing to read or write"
    );
    assert!(
        read_usage(&store, &p, Some("a@x.org"))
            .await
            .unwrap()
            .is_empty()
    );

    // Only the hourly level on: nothing about the others is checked or refused.
    let cfg = single(None, limits(None, None, Some(5), None));
    let p = plan(&cfg, gw(&cfg), TEN_AM);
    assert_eq!(p.keys().len(), 1);
    let u = read_usage(&store, &p, Some("a@x.org")).await.unwrap();
    assert_eq!(
        u.iter().map(|u| u.level).collect::<Vec<_>>(),
        [LevelKind::GatewayHourly]
    );
}

#[tokio::test]
async fn a_refusal_at_one_level_consumes_nothing_at_any_level() {
    // Each case fills one level, then asks for one more recipient.
    let cases: [(&str, Limit, RateLimits, u64, LevelKind); 5] = [
        (
            "system",
            Some(4),
            limits(Some(100), Some(100), Some(100), Some(100)),
            4,
            LevelKind::SystemDaily,
        ),
        (
            "daily",
            Some(100),
            limits(Some(4), Some(100), Some(100), Some(100)),
            4,
            LevelKind::GatewayDaily,
        ),
        (
            "hourly",
            Some(100),
            limits(Some(100), Some(100), Some(4), Some(100)),
            4,
            LevelKind::GatewayHourly,
        ),
        (
            "burst",
            Some(100),
            limits(Some(100), Some(100), Some(100), Some(4)),
            4,
            LevelKind::GatewayBurst,
        ),
        (
            "sender",
            Some(100),
            limits(Some(100), Some(4), Some(100), Some(100)),
            4,
            LevelKind::SenderDaily,
        ),
    ];
    for (name, system, rl, fill, level) in cases {
        let cfg = single(system, rl);
        let store = MemoryStore::new();
        assert!(
            take(&store, &cfg, "a@x.org", fill, TEN_AM)
                .await
                .is_admitted(),
            "{name}"
        );
        let before = store.snapshot();
        let verdict = take(&store, &cfg, "a@x.org", 1, TEN_AM).await;
        assert!(!verdict.is_admitted(), "{name}");
        assert_eq!(
            match verdict {
                Verdict::Refuse(r) => r.level(),
                Verdict::Admit(_) => None,
            },
            Some(level),
            "{name}"
        );
        assert_eq!(
            store.snapshot(),
            before,
            "{name}: a refusal changes nothing"
        );
    }
}

#[tokio::test]
async fn requests_larger_than_a_level_are_refused_as_too_large() {
    let cases: [(Limit, RateLimits, LevelKind); 5] = [
        (Some(3), unlimited(), LevelKind::SystemDaily),
        (
            None,
            limits(Some(3), None, None, None),
            LevelKind::GatewayDaily,
        ),
        (
            None,
            limits(None, None, Some(3), None),
            LevelKind::GatewayHourly,
        ),
        (
            None,
            limits(None, None, None, Some(3)),
            LevelKind::GatewayBurst,
        ),
        (
            None,
            limits(None, Some(3), None, None),
            LevelKind::SenderDaily,
        ),
    ];
    for (system, rl, level) in cases {
        let cfg = single(system, rl);
        let store = MemoryStore::new();
        assert_eq!(
            take(&store, &cfg, "a@x.org", 4, TEN_AM).await,
            Verdict::Refuse(Refusal::TooLarge { level, limit: 3 })
        );
        assert_eq!(
            store.request_counts().writes + store.request_counts().transactions,
            0
        );
        assert!(
            take(&store, &cfg, "a@x.org", 3, TEN_AM).await.is_admitted(),
            "{level}"
        );
    }
    assert_eq!(
        Refusal::TooLarge {
            level: LevelKind::GatewayDaily,
            limit: 3
        }
        .retry_after(),
        None
    );
}

#[tokio::test]
async fn original_scenario_leaves_99_today_and_49_this_hour() {
    let cfg = config(
        None,
        vec![gateway(
            "test-mailgun-primary",
            limits(Some(1000), Some(100), Some(50), Some(10)),
        )],
    );
    let store = MemoryStore::new();
    assert!(
        take(&store, &cfg, "test@example.com", 1, TEN_AM)
            .await
            .is_admitted()
    );
    let p = plan(&cfg, gw(&cfg), TEN_AM + 1);
    let u = read_usage(&store, &p, Some("test@example.com"))
        .await
        .unwrap();
    let left = |level| used(&u, level).map(|(used, limit)| limit - used);
    assert_eq!(left(LevelKind::SenderDaily), Some(99));
    assert_eq!(left(LevelKind::GatewayHourly), Some(49));
    assert_eq!(left(LevelKind::GatewayDaily), Some(999));
    assert_eq!(left(LevelKind::GatewayBurst), Some(9));
    let sender = u
        .iter()
        .find(|u| u.level == LevelKind::SenderDaily)
        .unwrap();
    assert_eq!(sender.resets_at, MIDNIGHT);
}

#[tokio::test]
async fn a_batch_of_ten_senders_writes_each_level_once_and_each_sender_once_without_a_transaction()
{
    let mut rl = limits(Some(1000), Some(2), Some(50), Some(20));
    rl.custom_user_limits.insert("s3@x.org".into(), Some(1));
    let cfg = single(Some(10_000), rl);
    let store = MemoryStore::new();
    let senders: Vec<String> = (0..10).map(|i| format!("s{i}@x.org")).collect();
    let requests: Vec<Request<'_>> = senders
        .iter()
        .map(|s| Request {
            sender: s,
            recipients: 2,
        })
        .collect();
    let p = plan(&cfg, gw(&cfg), TEN_AM);
    let verdicts = acquire(&store, &p, &requests).await.unwrap();
    let admitted: Vec<bool> = verdicts.iter().map(Verdict::is_admitted).collect();
    // s3 is limited to 1 and can never send 2 (too large); everyone else fits.
    assert_eq!(
        admitted,
        [true, true, true, false, true, true, true, true, true, true]
    );
    assert_eq!(
        verdicts[3],
        Verdict::Refuse(Refusal::TooLarge {
            level: LevelKind::SenderDaily,
            limit: 1
        })
    );
    // The day item read once for counters of the earlier layout; then one conditional write
    // each for the system day, the gateway day, the bucket and the 9 senders, no transaction.
    let counts = store.request_counts();
    assert_eq!(
        (counts.reads, counts.transactions, counts.writes),
        (1, 0, 12)
    );

    let u = read_usage(&store, &p, Some("s0@x.org")).await.unwrap();
    assert_eq!(used(&u, LevelKind::SystemDaily), Some((18, 10_000)));
    assert_eq!(used(&u, LevelKind::GatewayDaily), Some((18, 1000)));
    assert_eq!(used(&u, LevelKind::GatewayBurst), Some((18, 20)));
    assert_eq!(used(&u, LevelKind::SenderDaily), Some((2, 2)));
    // Twelve items, each under 1 KB: 1 WCU per write.
    let snapshot = store.snapshot();
    assert_eq!(snapshot.len(), 12);
    assert!(
        snapshot
            .iter()
            .all(|(k, i)| dynamodb_item_size(k, i) < 1024)
    );
}

/// DynamoDB's item size: attribute names plus values (a number takes about one byte per two
/// digits plus one), the key counted as an attribute `pk`.
fn dynamodb_item_size(key: &str, item: &Item) -> usize {
    let value = |v: &Value| match v {
        Value::S(s) => s.len(),
        Value::N(n) => n.unsigned_abs().to_string().len().div_ceil(2) + 1,
    };
    2 + key.len() + item.iter().map(|(a, v)| a.len() + value(v)).sum::<usize>()
}

#[tokio::test]
async fn items_stay_small_whatever_the_number_of_senders() {
    let cfg = single(None, limits(Some(100_000), Some(1000), Some(100_000), None));
    let store = MemoryStore::new();
    let senders: Vec<String> = (0..300)
        .map(|i| format!("dr.firstname.lastname{i:03}@clinic.example"))
        .collect();
    for s in &senders {
        assert!(take(&store, &cfg, s, 150, TEN_AM).await.is_admitted());
    }
    let snapshot = store.snapshot();
    // The day item and one item per sender.
    assert_eq!(snapshot.len(), 301);
    let largest = snapshot
        .iter()
        .map(|(k, i)| dynamodb_item_size(k, i))
        .max()
        .unwrap();
    assert!(
        largest < 200,
        "largest item {largest} bytes for 300 senders"
    );
    let day = &snapshot["lim#gw#gw#d#20261128"];
    assert_eq!(get_n(day, "n"), Some(300 * 150));
    assert!(day.keys().all(|a| !a.starts_with("u#")));
}

#[tokio::test]
async fn a_batch_admits_in_order_what_fits_and_skips_what_does_not() {
    let cfg = single(None, limits(Some(10), None, None, None));
    let p = plan(&cfg, gw(&cfg), TEN_AM);
    let reqs = [
        Request {
            sender: "a@x.org",
            recipients: 6,
        },
        Request {
            sender: "b@x.org",
            recipients: 5,
        },
        Request {
            sender: "c@x.org",
            recipients: 4,
        },
        Request {
            sender: "d@x.org",
            recipients: 1,
        },
    ];
    let store = MemoryStore::new();
    let verdicts = acquire(&store, &p, &reqs).await.unwrap();
    let admitted: Vec<bool> = verdicts.iter().map(Verdict::is_admitted).collect();
    assert_eq!(admitted, [true, false, true, false]);
    // One write of the whole limit (the batch needed 16; no write asks for more than the
    // limit, whose condition could never hold), nothing to give back.
    assert_eq!(store.request_counts().writes, 1);
    let u = read_usage(&store, &p, None).await.unwrap();
    assert_eq!(used(&u, LevelKind::GatewayDaily), Some((10, 10)));
}

/// A store that lets another instance write right before our first write.
#[derive(Debug)]
struct Interfering {
    inner: MemoryStore,
    before_write: Mutex<Vec<Write>>,
}

#[async_trait]
impl StateStore for Interfering {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        self.inner.get_many(keys).await
    }
    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        let pending: Vec<Write> = std::mem::take(&mut *self.before_write.lock().unwrap());
        for w in pending {
            self.inner.write(w).await?;
        }
        self.inner.write(write).await
    }
    async fn transact(&self, writes: Vec<Write>) -> Result<TransactOutcome, StoreError> {
        self.inner.transact(writes).await
    }
    async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
        self.inner.put_many(items).await
    }
}

#[tokio::test]
async fn a_lost_race_is_decided_again_from_the_returned_item_without_another_read() {
    let cfg = single(None, limits(Some(10), None, None, None));
    let p = plan(&cfg, gw(&cfg), TEN_AM);
    // Someone else takes 8 just before our write.
    let theirs = Write {
        key: "lim#gw#gw#d#20261128".into(),
        op: WriteOp::Update(vec![UpdateAction::Add("n".into(), 8)]),
        condition: crate::state::Condition::Always,
    };
    let store = Interfering {
        inner: MemoryStore::new(),
        before_write: Mutex::new(vec![theirs]),
    };
    let verdicts = acquire(
        &store,
        &p,
        &[
            Request {
                sender: "a@x.org",
                recipients: 5,
            },
            Request {
                sender: "b@x.org",
                recipients: 2,
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(verdicts[0], exhausted(LevelKind::GatewayDaily, MIDNIGHT));
    assert!(verdicts[1].is_admitted());
    let counts = store.inner.request_counts();
    assert_eq!(counts.reads, 0);
    // theirs, our lost write, our second write (of the 2 left)
    assert_eq!(counts.writes, 3);
    let u = read_usage(&store, &p, None).await.unwrap();
    assert_eq!(used(&u, LevelKind::GatewayDaily), Some((10, 10)));
}

/// A store where every conditional write loses to a writer that just refilled the bucket.
#[derive(Debug, Default)]
struct AlwaysLosing {
    writes: Mutex<u64>,
}

#[async_trait]
impl StateStore for AlwaysLosing {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        Ok(keys.iter().map(|_| None).collect())
    }
    async fn write(&self, _write: Write) -> Result<WriteOutcome, StoreError> {
        *self.writes.lock().unwrap() += 1;
        let mut item = Item::new();
        // Refilled just before our `now`: our decision keeps choosing the SET form.
        item.insert(TAT_ATTR.into(), Value::N(TEN_AM * 1_000 - 1));
        Ok(WriteOutcome::ConditionFailed(Some(item)))
    }
    async fn transact(&self, _writes: Vec<Write>) -> Result<TransactOutcome, StoreError> {
        Err(StoreError::Invalid("not used".into()))
    }
    async fn put_many(&self, _items: Vec<(Key, Item)>) -> Result<(), StoreError> {
        Ok(())
    }
}

#[tokio::test]
async fn endless_lost_races_end_in_a_contended_refusal_not_an_error() {
    let cfg = single(None, limits(None, None, None, Some(10)));
    let store = AlwaysLosing::default();
    let p = plan(&cfg, gw(&cfg), TEN_AM);
    let verdict = acquire_one(&store, &p, "a@x.org", 1).await.unwrap();
    assert_eq!(
        verdict,
        Verdict::Refuse(Refusal::Contended {
            retry_after: TEN_AM + CONTENDED_RETRY_MS
        })
    );
    assert_eq!(*store.writes.lock().unwrap(), MAX_ATTEMPTS as u64);
}

#[tokio::test]
async fn refund_returns_exactly_what_was_taken_and_never_goes_below_zero() {
    let mut rl = limits(Some(100), Some(10), Some(50), Some(10));
    rl.burst_refill_per_second = 1.0;
    let cfg = single(Some(1000), rl);
    let store = MemoryStore::new();
    let p = plan(&cfg, gw(&cfg), TEN_AM);
    let keep = acquire_one(&store, &p, "a@x.org", 2).await.unwrap();
    let give_back = acquire_one(&store, &p, "a@x.org", 3).await.unwrap();
    let Verdict::Admit(grant) = give_back else {
        panic!("admitted expected, got {give_back:?}")
    };
    assert!(keep.is_admitted());
    assert_eq!(
        refund(&store, std::slice::from_ref(&grant), TEN_AM)
            .await
            .unwrap(),
        RefundOutcome::Returned
    );
    let u = read_usage(&store, &p, Some("a@x.org")).await.unwrap();
    for level in [
        LevelKind::SystemDaily,
        LevelKind::GatewayDaily,
        LevelKind::GatewayHourly,
        LevelKind::GatewayBurst,
        LevelKind::SenderDaily,
    ] {
        assert_eq!(used(&u, level).map(|(used, _)| used), Some(2), "{level}");
    }
    // Refunding the same grant twice, then once more, leaves the other message's consumption
    // and never goes below what is stored.
    refund(&store, std::slice::from_ref(&grant), TEN_AM)
        .await
        .unwrap();
    let Verdict::Admit(kept) = keep else {
        unreachable!()
    };
    refund(&store, &[kept.clone(), kept], TEN_AM).await.unwrap();
    let u = read_usage(&store, &p, Some("a@x.org")).await.unwrap();
    assert!(u.iter().all(|u| u.used == 0), "{u:?}");
    for item in store.snapshot().values() {
        for (attr, v) in item {
            if attr != crate::state::TTL_ATTRIBUTE && attr != TAT_ATTR {
                assert!(v.as_n().unwrap() >= 0, "{attr} = {v:?}");
            }
        }
    }
}

#[tokio::test]
async fn bucket_refund_after_partial_refill_fills_the_bucket_and_no_more() {
    let mut rl = limits(None, None, None, Some(10));
    rl.burst_refill_per_second = 1.0;
    let cfg = single(None, rl);
    let store = MemoryStore::new();
    let Verdict::Admit(grant) = take(&store, &cfg, "a@x.org", 4, TEN_AM).await else {
        panic!("admitted expected")
    };
    // 2.5 s later 2.5 tokens have come back; refunding 4 must not overfill.
    let later = TEN_AM + 2_500;
    assert_eq!(
        refund(&store, &[grant], later).await.unwrap(),
        RefundOutcome::Returned
    );
    let p = plan(&cfg, gw(&cfg), later);
    let u = read_usage(&store, &p, None).await.unwrap();
    assert_eq!(used(&u, LevelKind::GatewayBurst), Some((0, 10)));
    assert!(take(&store, &cfg, "a@x.org", 10, later).await.is_admitted());
    assert!(!take(&store, &cfg, "a@x.org", 1, later).await.is_admitted());
}

#[test]
fn remaining_fraction_is_the_tightest_level() {
    let u = |used, limit| LevelUsage {
        level: LevelKind::GatewayDaily,
        used,
        limit,
        resets_at: MIDNIGHT,
    };
    let cases: [(&[LevelUsage], f64); 4] = [
        (&[], 1.0),
        (&[u(0, 10)], 1.0),
        (&[u(5, 10), u(1, 4)], 0.5),
        (&[u(3, 4), u(12, 10)], 0.0),
    ];
    for (usages, expected) in cases {
        assert_eq!(remaining_fraction(usages), expected, "{usages:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_tasks_hammering_one_limit_admit_exactly_the_limit() {
    let cases: [(&str, Limit, RateLimits, u64); 4] = [
        ("daily", None, limits(Some(100), None, None, None), 100),
        ("system", Some(100), unlimited(), 100),
        ("sender", None, limits(None, Some(100), None, None), 100),
        // A bucket at a fixed instant admits exactly its capacity.
        ("burst", None, limits(Some(1000), None, None, Some(60)), 60),
    ];
    for (name, system, rl, limit) in cases {
        let cfg = Arc::new(single(system, rl));
        let store = Arc::new(MemoryStore::new());
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (cfg, store) = (cfg.clone(), store.clone());
                tokio::spawn(async move {
                    let p = plan(&cfg, gw(&cfg), TEN_AM);
                    let mut admitted = 0_u64;
                    loop {
                        match acquire_one(store.as_ref(), &p, "a@x.org", 1).await.unwrap() {
                            Verdict::Admit(_) => admitted += 1,
                            Verdict::Refuse(Refusal::Contended { .. }) => {}
                            Verdict::Refuse(_) => return admitted,
                        }
                    }
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, limit, "{name}");
    }
}

/// One actor's unfinished acquisition: read done, writes decided, not yet applied.
/// A store that yields to the other actors a chosen number of times before each request, so
/// concurrent instances' writes interleave in every order the property test draws.
#[derive(Debug)]
struct Yielding {
    inner: MemoryStore,
    yields: Vec<u8>,
    next: std::sync::atomic::AtomicUsize,
}

impl Yielding {
    async fn pause(&self) {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = self
            .yields
            .get(i % self.yields.len().max(1))
            .copied()
            .unwrap_or(0);
        for _ in 0..n {
            tokio::task::yield_now().await;
        }
    }
}

#[async_trait]
impl StateStore for Yielding {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        self.pause().await;
        self.inner.get_many(keys).await
    }
    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        self.pause().await;
        self.inner.write(write).await
    }
    async fn transact(&self, writes: Vec<Write>) -> Result<TransactOutcome, StoreError> {
        self.pause().await;
        self.inner.transact(writes).await
    }
    async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
        self.inner.put_many(items).await
    }
}

const SENDERS: [&str; 2] = ["a@x.org", "B@x.org"];

fn limit_strategy(max: u64) -> impl Strategy<Value = Limit> {
    prop_oneof![Just(None), (1..=max).prop_map(Some)]
}

fn block_on<F: std::future::Future>(rt: &tokio::runtime::Runtime, f: F) -> F::Output {
    rt.block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the interleaving of the conditional writes of concurrent instances that hold
    /// leases (the pipeline's default policy: they take ahead of their need), no window admits
    /// more than its limit, the bucket never admits more than capacity + elapsed × rate + 1 over
    /// any span, and every unit the store counted was either admitted or is still held by an
    /// instance: nothing is lost or counted twice.
    #[test]
    fn concurrent_leasing_instances_never_exceed_any_limit(
        system in limit_strategy(300),
        daily in limit_strategy(250),
        per_user in limit_strategy(120),
        hourly in limit_strategy(150),
        burst in prop_oneof![Just(None), (1u64..=8).prop_map(Some), (1_000u64..=1_050).prop_map(Some)],
        refill in 1u32..=4_000,
        // 2026-11-28T23:59:57Z onwards: day and hour roll over mid-run.
        start in (MIDNIGHT - 3_000)..(MIDNIGHT - 500),
        actors in proptest::collection::vec(
            proptest::collection::vec(
                (0i64..300, proptest::collection::vec((0usize..2, 1u64..4), 1..6)),
                1..25,
            ),
            1..4,
        ),
        yields in proptest::collection::vec(0u8..4, 1..64),
        // Recipients per message: a few, or enough to drain a large bucket within the run.
        scale in prop_oneof![Just(1u64), Just(40u64)],
    ) {
        let mut rl = limits(daily, per_user, hourly, burst);
        rl.burst_refill_per_second = f64::from(refill) / 4.0;
        let cfg = single(system, rl);
        let g = gw(&cfg);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let store = Yielding { inner: MemoryStore::new(), yields, next: Default::default() };
        let leases: Vec<Leases> = actors.iter().map(|_| Leases::new(LeasePolicy::default())).collect();
        let runs = actors.iter().zip(&leases).map(|(steps, leases)| {
            let (store, cfg) = (&store, &cfg);
            async move {
                let mut clock = start;
                // (now, sender, n) of every admission
                let mut admitted: Vec<(EpochMillis, usize, u64)> = Vec::new();
                for (advance, batch) in steps {
                    clock += advance;
                    let p = plan(cfg, g, clock);
                    let requests: Vec<Request<'_>> = batch
                        .iter()
                        .map(|&(s, n)| Request { sender: SENDERS[s], recipients: n * scale })
                        .collect();
                    let verdicts = acquire_leased(store, leases, &p, &requests).await.unwrap();
                    for (&(s, n), v) in batch.iter().zip(&verdicts) {
                        if v.is_admitted() {
                            admitted.push((clock, s, n * scale));
                        }
                    }
                }
                admitted
            }
        });
        let admitted: Vec<(EpochMillis, usize, u64)> =
            block_on(&rt, futures::future::join_all(runs)).into_iter().flatten().collect();

        // What the store counted is what was admitted plus what instances still hold.
        let snapshot = store.inner.snapshot();
        let held = |key: &str| -> u64 {
            leases.iter().flat_map(Leases::held).filter(|(k, _)| k == key).map(|(_, n)| n).sum()
        };
        let stored = |key: &str| snapshot.get(key).and_then(|i| get_n(i, "n")).unwrap_or(0) as u64;
        for (day, date) in [(MIDNIGHT - 1, "20261128"), (MIDNIGHT, "20261129")] {
            let that_day = |sender: Option<usize>| -> u64 {
                admitted
                    .iter()
                    .filter(|a| utc_day(a.0) == utc_day(day) && sender.is_none_or(|s| s == a.1))
                    .map(|a| a.2)
                    .sum()
            };
            let sys = format!("lim#sys#d#{date}");
            if system.is_some() {
                prop_assert_eq!(stored(&sys), that_day(None) + held(&sys));
            }
            let day_key = format!("lim#gw#gw#d#{date}");
            if daily.is_some() || hourly.is_some() {
                prop_assert_eq!(stored(&day_key), that_day(None) + held(&day_key));
            }
            if per_user.is_some() {
                for (i, s) in SENDERS.iter().enumerate() {
                    let key = format!("lim#gw#gw#d#{date}#u#{}", s.to_ascii_lowercase());
                    prop_assert_eq!(stored(&key), that_day(Some(i)) + held(&key));
                }
            }
        }

        let sum_by = |f: &dyn Fn(&(EpochMillis, usize, u64)) -> i64| {
            let mut m: BTreeMap<i64, u64> = BTreeMap::new();
            for a in &admitted { *m.entry(f(a)).or_default() += a.2; }
            m
        };
        let check = |limit: Limit, sums: BTreeMap<i64, u64>, what: &str| {
            if let Some(l) = limit {
                for (w, s) in sums { prop_assert!(s <= l, "{what} window {w}: {s} > {l}"); }
            }
            Ok(())
        };
        check(system, sum_by(&|a| utc_day(a.0)), "system day")?;
        check(daily, sum_by(&|a| utc_day(a.0)), "gateway day")?;
        check(hourly, sum_by(&|a| utc_hour(a.0)), "hour")?;
        check(per_user, sum_by(&|a| utc_day(a.0) * 2 + a.1 as i64), "sender day")?;
        if let Some(q) = burst.and_then(|c| BucketQuota::new(c, f64::from(refill) / 4.0)) {
            let mut by_time = admitted.clone();
            by_time.sort();
            for (i, a) in by_time.iter().enumerate() {
                let mut total = 0u64;
                for b in &by_time[i..] {
                    total += b.2;
                    let span_us = i128::from(b.0 - a.0) * 1_000;
                    let bound = i128::from(q.capacity) + span_us / i128::from(q.interval_us) + 1;
                    prop_assert!(i128::from(total) <= bound,
                        "bucket admitted {total} in [{}, {}], bound {bound}", a.0, b.0);
                }
            }
        }
    }
}

proptest! {
    /// Taken one at a time, the bucket is exactly a token bucket of `capacity` tokens refilling
    /// one every `interval_us`: it admits whenever the reference model has the tokens, refuses
    /// otherwise, and a refusal names the first millisecond the model has them again.
    #[test]
    fn bucket_matches_a_reference_token_bucket(
        capacity in 1u64..20,
        refill_milli in 100u32..20_000,
        steps in proptest::collection::vec((0i64..3_000, 1u64..25), 1..60),
    ) {
        let mut rl = limits(None, None, None, Some(capacity));
        rl.burst_refill_per_second = f64::from(refill_milli) / 1_000.0;
        let cfg = single(None, rl);
        let q = BucketQuota::new(capacity, rl_rate(&cfg)).unwrap();
        let t = i128::from(q.interval_us);
        let full = i128::from(capacity) * t;
        // Tokens available, in token-microseconds (tokens × interval), and when last updated.
        let mut avail = full;
        let mut now = TEN_AM;
        let store = MemoryStore::new();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for (advance, n) in steps {
            avail = (avail + i128::from(advance) * 1_000).min(full);
            now += advance;
            let p = plan(&cfg, gw(&cfg), now);
            let verdict = rt.block_on(acquire_one(&store, &p, "a@x.org", n)).unwrap();
            let need = i128::from(n) * t;
            if n > capacity {
                prop_assert_eq!(verdict, Verdict::Refuse(Refusal::TooLarge { level: LevelKind::GatewayBurst, limit: capacity }));
            } else if avail >= need {
                prop_assert!(verdict.is_admitted(), "model has {avail} ≥ {need} at +{}", now - TEN_AM);
                avail -= need;
            } else {
                let wait_ms = (need - avail + 999) / 1_000;
                prop_assert_eq!(verdict, exhausted(LevelKind::GatewayBurst, now + wait_ms as i64));
            }
        }
    }
}

fn rl_rate(cfg: &Config) -> f64 {
    gw(cfg).rate_limits.burst_refill_per_second
}

/// A refund whose answer was lost is still applied once: the other messages' consumption
/// stays counted, so the window cannot admit more than its limit.
#[tokio::test]
async fn a_refund_whose_answer_was_lost_is_applied_once() {
    let cfg = single(None, limits(Some(10), None, None, None));
    let store = crate::state::memory::LostAnswers::default();
    let p = plan(&cfg, gw(&cfg), TEN_AM);
    assert!(
        acquire_one(&store.0, &p, "a@x.org", 3)
            .await
            .unwrap()
            .is_admitted()
    );
    let Verdict::Admit(grant) = acquire_one(&store.0, &p, "a@x.org", 2).await.unwrap() else {
        panic!("admitted expected")
    };
    assert_eq!(
        refund(&store, &[grant], TEN_AM).await.unwrap(),
        RefundOutcome::Returned
    );
    let u = read_usage(&store.0, &p, None).await.unwrap();
    assert_eq!(used(&u, LevelKind::GatewayDaily), Some((3, 10)));
}

/// A leased bucket token may be spent until σ after its theoretical arrival time; the slack
/// every write leaves in the bucket is what keeps such a late token within the bucket's bound
/// when another instance drains the refilled bucket at the same instant.
#[tokio::test]
async fn a_token_spent_late_stays_within_the_bucket_bound_because_writes_leave_the_slack() {
    let mut rl = limits(None, None, None, Some(1_000));
    rl.burst_refill_per_second = 1_000.0; // T = 1 ms; σ = 100 ms
    let cfg = single(None, rl);
    let q = BucketQuota::new(1_000, 1_000.0).unwrap();
    assert_eq!(
        (q.interval_us, q.slack_us(), q.usable()),
        (1_000, 100_000, 900)
    );
    let store = MemoryStore::new();
    let a = Leases::new(LeasePolicy::default());
    let t0 = TEN_AM;
    let one = |n| {
        [Request {
            sender: "a@x.org",
            recipients: n,
        }]
    };
    // Instance A takes 500 and 50 ahead (what its rate spends within σ; θ up to t0 + 550 ms).
    let v = acquire_leased(&store, &a, &plan(&cfg, gw(&cfg), t0), &one(500))
        .await
        .unwrap();
    assert!(v[0].is_admitted());
    let held: u64 = a.held().iter().map(|(_, n)| n).sum();
    assert_eq!(held, 50);
    // At t0 + 649 ms the last two tokens A holds are still valid (θ + σ ≥ now); instance B
    // drains the refilled bucket and A spends them.
    let at = t0 + 649;
    let p = plan(&cfg, gw(&cfg), at);
    let mut drained = 0;
    while acquire_one(&store, &p, "b@x.org", 1)
        .await
        .unwrap()
        .is_admitted()
    {
        drained += 1;
    }
    let late = acquire_leased(&store, &a, &p, &one(2)).await.unwrap();
    assert!(late[0].is_admitted(), "{late:?}");
    // All at one instant: at most C + 1. B finds the bucket rested (tat more than σ/4 behind
    // now) and sets it to now: C·T − σ ahead, 900 tokens; with A's two, 902. (Without the
    // slack B would take 1,000: 1,002.)
    assert!(
        drained + 2 <= q.capacity + 1,
        "{drained} + 2 admitted at one instant"
    );
    assert_eq!(drained, 900);
}

/// Switching layout mid-day: what the earlier layout counted for a sender in the gateway's day
/// item (`u#{sender}`) still counts against the sender's limit, and the day's count carries on
/// in the same attribute.
#[tokio::test]
async fn a_mid_day_switch_counts_what_the_earlier_layout_admitted() {
    let cfg = single(None, limits(Some(100), Some(5), None, None));
    let store = MemoryStore::new();
    let mut old = Item::new();
    old.insert("n".into(), Value::N(40));
    old.insert("u#a@x.org".into(), Value::N(3));
    store
        .put_many(vec![("lim#gw#gw#d#20261128".into(), old)])
        .await
        .unwrap();
    let leases = Leases::new(LeasePolicy::default());
    let p = plan(&cfg, gw(&cfg), TEN_AM);
    let one = |s| {
        [Request {
            sender: s,
            recipients: 1,
        }]
    };
    let mut admitted = 0;
    for _ in 0..5 {
        if acquire_leased(&store, &leases, &p, &one("A@x.org"))
            .await
            .unwrap()[0]
            .is_admitted()
        {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 2, "5 a day, 3 of them before the switch");
    // Another sender is not touched by it.
    assert!(
        acquire_leased(&store, &leases, &p, &one("b@x.org"))
            .await
            .unwrap()[0]
            .is_admitted()
    );
    let u = read_usage(&store, &p, None).await.unwrap();
    assert!(used(&u, LevelKind::GatewayDaily).unwrap().0 >= 43);
}

/// A decision keeps handles to its senders' book entries between its writes; if another
/// decision forgets an entry meanwhile (a store call slower than the book's memory) and its
/// slot is reused, the answer is recorded under the sender's own key, not in the slot's new
/// entry.
#[tokio::test]
async fn an_answer_after_its_book_entry_was_forgotten_is_recorded_under_its_own_key() {
    let cfg = single(None, limits(None, Some(5), None, None));
    let store = MemoryStore::new();
    let leases = Leases::new(LeasePolicy::default());
    let first = plan(&cfg, gw(&cfg), TEN_AM);
    let ann = [Request {
        sender: "ann@x.org",
        recipients: 2,
    }];
    let Step::Write(mut pending) = Pending::new(&first, &ann).begin(&leases) else {
        panic!("a sender's first request is written");
    };
    let writes = pending.writes();
    // Six seconds later another decision prunes ann's idle entry and takes its slot.
    let later = TEN_AM + 6_000;
    let bob = [Request {
        sender: "bob@x.org",
        recipients: 1,
    }];
    let v = acquire_leased(&store, &leases, &plan(&cfg, gw(&cfg), later), &bob)
        .await
        .unwrap();
    assert!(v[0].is_admitted());
    let mut outcomes = Vec::new();
    for w in writes {
        outcomes.push(store.write(w).await);
    }
    let Ok(Step::Done(outcome)) = pending.answer(&leases, outcomes) else {
        panic!("one write decides");
    };
    assert!(outcome.verdicts[0].is_admitted(), "{:?}", outcome.verdicts);
    let book = leases.lock();
    let seen = |sender: &str, at| {
        book.counters
            .get(&sender_key("gw", sender, at))
            .and_then(|e| e.seen)
            .map(|(_, counts)| counts[0])
    };
    assert_eq!(seen("ann@x.org", TEN_AM), Some(2));
    assert_eq!(seen("bob@x.org", later), Some(1), "bob's entry untouched");
}
