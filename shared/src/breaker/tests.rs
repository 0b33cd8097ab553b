use std::borrow::Cow;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::state::memory::{LostAnswers, MemoryStore};
use crate::state::{StateStore, StoreError, WriteOutcome, apply_op};

const T0: EpochMillis = 1_795_000_000_000;
const GW: &str = "mailgun-primary";

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// The original system's defaults: threshold 10, 5 successes, 60 s, 100 trials.
fn settings() -> BreakerSettings {
    BreakerSettings {
        enabled: true,
        failure_threshold: nz(10),
        success_threshold: nz(5),
        timeout: Duration::from_secs(60),
        max_requests: nz(100),
        window: Duration::from_secs(60),
        failure_ratio: None,
    }
}

fn failures(n: u32) -> Tally {
    Tally {
        failures: n,
        ..Tally::default()
    }
}

async fn stored(store: &MemoryStore) -> BreakerState {
    let item = store.get(&key(GW)).await.unwrap();
    let (state, problem) = BreakerState::from_item(item.as_ref());
    assert_eq!(problem, None);
    state
}

/// Puts a breaker in the given phase directly.
async fn seed(store: &MemoryStore, state: BreakerState) {
    store
        .put_many(vec![(key(GW), state.to_item())])
        .await
        .unwrap();
}

fn open_until(until: EpochMillis) -> BreakerState {
    BreakerState {
        phase: Phase::Open,
        generation: 3,
        opened_at: until - 60_000,
        until,
        stored: Stored::Valid,
        ..BreakerState::missing()
    }
}

fn half_open_since(at: EpochMillis, admitted: u32, trial_successes: u32) -> BreakerState {
    BreakerState {
        phase: Phase::HalfOpen,
        generation: 4,
        opened_at: at - 60_000,
        until: at,
        half_open_at: at,
        admitted,
        trial_successes,
        stored: Stored::Valid,
        ..BreakerState::missing()
    }
}

#[tokio::test]
async fn opens_after_ten_provider_failures_then_refuses_then_lets_a_trial_through() {
    let store = MemoryStore::new();
    let s = settings();
    let first = permit_send(&store, GW, &s, T0).await.unwrap();
    assert_eq!(first.admission, Admission::Allowed);

    for i in 0..9 {
        let out = flush_outcomes(&store, GW, &s, &failures(1), T0 + i)
            .await
            .unwrap();
        assert_eq!(out.transition, None, "opened after {} failures", i + 1);
    }
    let allowed = permit_send(&store, GW, &s, T0 + 9).await.unwrap();
    assert_eq!(allowed.admission, Admission::Allowed);

    let tenth = flush_outcomes(&store, GW, &s, &failures(1), T0 + 10)
        .await
        .unwrap();
    let until = T0 + 10 + 60_000;
    assert_eq!(
        tenth.transition,
        Some(Transition {
            gateway: GW.into(),
            from: Phase::Closed,
            to: Phase::Open,
            at: T0 + 10,
            reason: TransitionReason::FailureThreshold {
                failures: 10,
                successes: 0
            },
        })
    );

    for now in [T0 + 11, until - 1] {
        let refused = permit_send(&store, GW, &s, now).await.unwrap();
        assert_eq!(refused.admission, Admission::Rejected { until });
    }

    let trial = permit_send(&store, GW, &s, until).await.unwrap();
    assert_eq!(trial.admission, Admission::Trial);
    let t = trial.transition.unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            Phase::Open,
            Phase::HalfOpen,
            TransitionReason::TimeoutElapsed
        )
    );
    assert_eq!(stored(&store).await.admitted, 1);
}

#[tokio::test]
async fn window_roll_over_resets_failures() {
    let store = MemoryStore::new();
    let s = settings();
    flush_outcomes(&store, GW, &s, &failures(9), T0)
        .await
        .unwrap();
    assert_eq!(stored(&store).await.failures, 9);

    // Just inside the window the next failure would open it; after it, it starts over.
    let rolled = T0 + 60_000;
    let out = flush_outcomes(&store, GW, &s, &failures(1), rolled)
        .await
        .unwrap();
    assert_eq!(out.transition, None);
    let state = stored(&store).await;
    assert_eq!(
        (state.phase, state.failures, state.window_start),
        (Phase::Closed, 1, rolled)
    );

    let inside = flush_outcomes(&store, GW, &s, &failures(9), rolled + 59_999)
        .await
        .unwrap();
    assert_eq!(inside.transition.map(|t| t.to), Some(Phase::Open));
}

#[test]
fn only_provider_level_failures_count() {
    let cases = [
        (
            OutcomeClass::Ok,
            Tally {
                successes: 1,
                ..Tally::default()
            },
        ),
        (OutcomeClass::Permanent, Tally::default()),
        (OutcomeClass::Throttled, failures(1)),
        (OutcomeClass::Unavailable, failures(1)),
        (OutcomeClass::Auth, failures(1)),
        (OutcomeClass::Ambiguous, failures(1)),
    ];
    for (class, expected) in cases {
        let mut tally = Tally::default();
        tally.record(Admission::Allowed, class);
        assert_eq!(tally, expected, "{class:?}");
    }
    let mut trial = Tally::default();
    trial.record(Admission::Trial, OutcomeClass::Unavailable);
    trial.record(Admission::Trial, OutcomeClass::Ok);
    trial.record(Admission::Trial, OutcomeClass::Permanent);
    trial.record(Admission::Rejected { until: T0 }, OutcomeClass::Unavailable);
    // A permanent answer to a trial proves the provider is up: it counts as a success.
    assert_eq!(
        trial,
        Tally {
            trial_successes: 2,
            trial_failures: 1,
            ..Tally::default()
        }
    );
}

#[tokio::test]
async fn permanent_errors_never_open_it() {
    let store = MemoryStore::new();
    let s = settings();
    let mut tally = Tally::default();
    for _ in 0..50 {
        tally.record(Admission::Allowed, OutcomeClass::Permanent);
    }
    let out = flush_outcomes(&store, GW, &s, &tally, T0).await.unwrap();
    assert_eq!(out, FlushOutcome::default());
    assert_eq!(store.request_counts().total(), 0);
    assert_eq!(
        view(store.get(&key(GW)).await.unwrap().as_ref(), T0),
        BreakerView::Closed
    );
}

#[tokio::test]
async fn successes_need_no_write_while_closed() {
    let store = MemoryStore::new();
    let s = settings();
    let clean = Tally {
        successes: 40,
        ..Tally::default()
    };
    flush_outcomes(&store, GW, &s, &clean, T0).await.unwrap();
    assert_eq!(store.request_counts().total(), 0);

    // Even with failures already in the window, successes alone cost nothing without a ratio.
    flush_outcomes(&store, GW, &s, &failures(3), T0)
        .await
        .unwrap();
    let before = store.request_counts();
    flush_outcomes(&store, GW, &s, &clean, T0 + 1)
        .await
        .unwrap();
    assert_eq!(store.request_counts(), before);
    assert_eq!(stored(&store).await.successes, 0);
}

#[test]
fn a_clean_tally_on_a_closed_breaker_decides_no_write() {
    let s = settings();
    let clean = Tally {
        successes: 7,
        ..Tally::default()
    };
    let running = BreakerState {
        window_start: T0,
        failures: 4,
        generation: 2,
        stored: Stored::Valid,
        ..BreakerState::missing()
    };
    for state in [BreakerState::missing(), running] {
        assert_eq!(flush(&state, &clean, &s, T0 + 10), Flush::none());
    }
}

#[tokio::test]
async fn ratio_must_also_be_reached() {
    let store = MemoryStore::new();
    let s = BreakerSettings {
        failure_ratio: Some(0.5),
        ..settings()
    };
    flush_outcomes(&store, GW, &s, &failures(1), T0)
        .await
        .unwrap();
    // With failures in the window the ratio needs the successes, so they are written.
    let mixed = Tally {
        successes: 20,
        failures: 10,
        ..Tally::default()
    };
    let out = flush_outcomes(&store, GW, &s, &mixed, T0 + 1)
        .await
        .unwrap();
    assert_eq!(out.transition, None, "11 of 31 is below one half");
    let state = stored(&store).await;
    assert_eq!((state.failures, state.successes), (11, 20));

    let out = flush_outcomes(&store, GW, &s, &failures(9), T0 + 2)
        .await
        .unwrap();
    assert_eq!(
        out.transition.map(|t| t.reason),
        Some(TransitionReason::FailureThreshold {
            failures: 20,
            successes: 20
        })
    );
}

/// Yields to the scheduler before every request, so concurrent tasks interleave between
/// their read and their conditional write.
#[derive(Debug)]
struct Yielding(Arc<MemoryStore>);

#[async_trait::async_trait]
impl StateStore for Yielding {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        tokio::task::yield_now().await;
        self.0.get_many(keys).await
    }
    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        tokio::task::yield_now().await;
        self.0.write(write).await
    }
    async fn transact(
        &self,
        writes: Vec<Write>,
    ) -> Result<crate::state::TransactOutcome, StoreError> {
        self.0.transact(writes).await
    }
    async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
        self.0.put_many(items).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_admits_exactly_max_requests_under_concurrency() {
    let store = Arc::new(MemoryStore::new());
    let s = BreakerSettings {
        max_requests: nz(5),
        ..settings()
    };
    seed(&store, open_until(T0)).await;

    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = Arc::clone(&store);
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            permit_send(&Yielding(store), GW, &s, T0 + i).await.unwrap()
        }));
    }
    let mut trials = 0;
    let mut transitions = Vec::new();
    for task in tasks {
        let out = task.await.unwrap();
        match out.admission {
            Admission::Trial => trials += 1,
            Admission::Rejected { until } => {
                assert_eq!(until, stored(&store).await.half_open_at + 60_000)
            }
            Admission::Allowed => panic!("a half-open breaker allowed a non-trial send"),
        }
        transitions.extend(out.transition);
    }
    assert_eq!(trials, 5);
    assert_eq!(transitions.len(), 1);
    assert_eq!(
        (transitions[0].from, transitions[0].to),
        (Phase::Open, Phase::HalfOpen)
    );
    assert_eq!(stored(&store).await.admitted, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_reporters_open_it_exactly_once() {
    // Each reporter alone reaches the threshold, or only all of them together do.
    for per_reporter in [10, 1] {
        let store = Arc::new(MemoryStore::new());
        let s = settings();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let store = Arc::clone(&store);
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                flush_outcomes(&Yielding(store), GW, &s, &failures(per_reporter), T0)
                    .await
                    .unwrap()
            }));
        }
        let mut transitions = Vec::new();
        for task in tasks {
            transitions.extend(task.await.unwrap().transition);
        }
        assert_eq!(transitions.len(), 1, "{per_reporter} failures per reporter");
        assert_eq!(transitions[0].to, Phase::Open);
        let state = stored(&store).await;
        assert_eq!((state.phase, state.until), (Phase::Open, T0 + 60_000));
    }
}

/// Serves one stale read (what this instance read before another one wrote), then the
/// real store.
#[derive(Debug)]
struct StaleRead {
    inner: MemoryStore,
    stale: std::sync::Mutex<Option<Item>>,
}

#[async_trait::async_trait]
impl StateStore for StaleRead {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        let stale = self.stale.lock().unwrap().take();
        match stale {
            Some(item) => Ok(vec![Some(item)]),
            None => self.inner.get_many(keys).await,
        }
    }
    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        self.inner.write(write).await
    }
    async fn transact(
        &self,
        writes: Vec<Write>,
    ) -> Result<crate::state::TransactOutcome, StoreError> {
        self.inner.transact(writes).await
    }
    async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
        self.inner.put_many(items).await
    }
}

#[tokio::test]
async fn reporters_that_cross_the_threshold_together_open_it() {
    let s = settings();
    let running = |failures| BreakerState {
        window_start: T0,
        failures,
        generation: 1,
        stored: Stored::Valid,
        ..BreakerState::missing()
    };
    // Both reporters read 8 failures; the other one has already added its failure.
    let store = StaleRead {
        inner: MemoryStore::new(),
        stale: std::sync::Mutex::new(Some(running(8).to_item())),
    };
    seed(&store.inner, running(9)).await;
    let out = flush_outcomes(&store, GW, &s, &failures(1), T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        out.transition.map(|t| t.reason),
        Some(TransitionReason::FailureThreshold {
            failures: 10,
            successes: 0
        })
    );
    assert_eq!(stored(&store.inner).await.phase, Phase::Open);
}

#[tokio::test]
async fn a_stale_read_cannot_take_a_trial_slot() {
    let store = MemoryStore::new();
    let s = BreakerSettings {
        max_requests: nz(2),
        ..settings()
    };
    // Read while open; meanwhile others moved it to half-open and took every slot.
    let stale = open_until(T0).to_item();
    seed(&store, half_open_since(T0, 2, 0)).await;
    let out = permit_send_with_item(&store, GW, &s, Some(Cow::Owned(stale)), T0 + 1)
        .await
        .unwrap();
    assert_eq!(out.admission, Admission::Rejected { until: T0 + 60_000 });
    assert_eq!(out.transition, None);
    assert_eq!(stored(&store).await.admitted, 2);
}

#[tokio::test]
async fn success_threshold_trial_successes_close_it() {
    let store = MemoryStore::new();
    let s = settings();
    seed(&store, half_open_since(T0, 5, 0)).await;
    let one = Tally {
        trial_successes: 1,
        ..Tally::default()
    };
    // One success must not close it (the original closed on the first).
    for i in 0..4 {
        let out = flush_outcomes(&store, GW, &s, &one, T0 + i).await.unwrap();
        assert_eq!(out.transition, None);
    }
    assert_eq!(stored(&store).await.trial_successes, 4);
    let out = flush_outcomes(&store, GW, &s, &one, T0 + 10).await.unwrap();
    let t = out.transition.unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            Phase::HalfOpen,
            Phase::Closed,
            TransitionReason::TrialsSucceeded { successes: 5 }
        )
    );
    let state = stored(&store).await;
    assert_eq!(
        (state.phase, state.failures, state.trial_successes),
        (Phase::Closed, 0, 0)
    );
    assert_eq!(
        permit_send(&store, GW, &s, T0 + 11)
            .await
            .unwrap()
            .admission,
        Admission::Allowed
    );
}

#[tokio::test]
async fn a_trial_failure_re_opens_it_for_another_timeout() {
    let store = MemoryStore::new();
    let s = settings();
    seed(&store, half_open_since(T0, 3, 2)).await;
    let tally = Tally {
        trial_successes: 1,
        trial_failures: 1,
        ..Tally::default()
    };
    let now = T0 + 5_000;
    let out = flush_outcomes(&store, GW, &s, &tally, now).await.unwrap();
    let t = out.transition.unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (Phase::HalfOpen, Phase::Open, TransitionReason::TrialFailed)
    );
    let state = stored(&store).await;
    assert_eq!(
        (state.phase, state.opened_at, state.until),
        (Phase::Open, now, now + 60_000)
    );
    assert_eq!(
        permit_send(&store, GW, &s, now + 1)
            .await
            .unwrap()
            .admission,
        Admission::Rejected {
            until: now + 60_000
        }
    );
}

#[test]
fn full_half_open_round_rejects_until_it_ends_then_starts_a_new_one() {
    let s = BreakerSettings {
        max_requests: nz(2),
        ..settings()
    };
    let full = half_open_since(T0, 2, 0);
    assert_eq!(
        permit(&full, &s, T0 + 59_999),
        Permit::Reject { until: T0 + 60_000 }
    );
    let Permit::Trial { write, change } = permit(&full, &s, T0 + 60_000) else {
        panic!("an unresolved round must be restarted");
    };
    assert_eq!(
        change.map(|c| c.reason),
        Some(TransitionReason::TrialsUnresolved)
    );
    let next = apply_op(Some(&full.to_item()), &write.op).unwrap();
    let (next, _) = BreakerState::from_item(next.as_ref());
    assert_eq!(
        (
            next.phase,
            next.admitted,
            next.half_open_at,
            next.generation
        ),
        (Phase::HalfOpen, 1, T0 + 60_000, full.generation + 1)
    );
}

#[test]
fn outcomes_from_another_phase_are_ignored() {
    let s = settings();
    let everything = Tally {
        successes: 3,
        failures: 30,
        trial_successes: 3,
        trial_failures: 3,
    };
    assert_eq!(
        flush(&open_until(T0 + 1_000), &everything, &s, T0),
        Flush::none()
    );
    let regular_only = Tally {
        successes: 3,
        failures: 30,
        ..Tally::default()
    };
    assert_eq!(
        flush(&half_open_since(T0, 1, 0), &regular_only, &s, T0 + 1),
        Flush::none()
    );
}

#[tokio::test]
async fn disabled_breaker_always_permits_and_never_writes() {
    let store = MemoryStore::new();
    let s = BreakerSettings {
        enabled: false,
        ..settings()
    };
    seed(&store, open_until(T0 + 60_000)).await;
    let before = store.request_counts();
    let out = permit_send(&store, GW, &s, T0).await.unwrap();
    assert_eq!(out.admission, Admission::Allowed);
    let out = flush_outcomes(&store, GW, &s, &failures(100), T0)
        .await
        .unwrap();
    assert_eq!(out.transition, None);
    assert_eq!(store.request_counts(), before);
    assert_eq!(permit(&open_until(T0 + 1), &s, T0), Permit::Allow);
}

#[tokio::test]
async fn malformed_item_counts_as_closed_is_reported_and_replaced() {
    let store = MemoryStore::new();
    let s = settings();
    let mut bad = open_until(T0 + 60_000).to_item();
    bad.insert(PHASE.into(), Value::from("ajar"));
    store.put_many(vec![(key(GW), bad.clone())]).await.unwrap();

    assert_eq!(view(Some(&bad), T0), BreakerView::Closed);
    let out = permit_send(&store, GW, &s, T0).await.unwrap();
    assert_eq!(out.admission, Admission::Allowed);
    assert_eq!(out.malformed, Some(MalformedItem::Attribute(PHASE)));

    let out = flush_outcomes(&store, GW, &s, &failures(2), T0)
        .await
        .unwrap();
    assert_eq!(out.malformed, Some(MalformedItem::Attribute(PHASE)));
    let state = stored(&store).await;
    assert_eq!((state.phase, state.failures), (Phase::Closed, 2));
}

#[test]
fn malformed_items_decode_as_closed_with_the_reason() {
    let good = half_open_since(T0, 1, 0).to_item();
    let cases: [(&str, Option<Value>); 4] = [
        (GEN, None),
        (FAILURES, Some(Value::N(-1))),
        (ADMITTED, Some(Value::from("many"))),
        (UNTIL, Some(Value::from("soon"))),
    ];
    for (attr, value) in cases {
        let mut item = good.clone();
        match value {
            Some(v) => item.insert(attr.into(), v),
            None => item.remove(attr),
        };
        let (state, problem) = BreakerState::from_item(Some(&item));
        assert_eq!(
            problem,
            Some(MalformedItem::Attribute(match attr {
                GEN => GEN,
                FAILURES => FAILURES,
                ADMITTED => ADMITTED,
                _ => UNTIL,
            })),
            "{attr}"
        );
        assert_eq!(state.phase, Phase::Closed);
        assert_eq!(state.stored, Stored::Malformed(item));
    }
}

#[test]
fn state_round_trips_through_its_item() {
    let state = BreakerState {
        phase: Phase::HalfOpen,
        generation: 9,
        window_start: T0 - 5,
        failures: 1,
        successes: 2,
        opened_at: T0 - 60_000,
        until: T0,
        half_open_at: T0 + 1,
        admitted: 3,
        trial_successes: 4,
        stored: Stored::Valid,
    };
    assert_eq!(
        BreakerState::from_item(Some(&state.to_item())),
        (state, None)
    );
    assert_eq!(
        BreakerState::from_item(None),
        (BreakerState::missing(), None)
    );
}

#[test]
fn view_tells_the_router_when_a_trial_is_possible() {
    let cases = [
        (None, T0, BreakerView::Closed),
        (
            Some(open_until(T0 + 1)),
            T0,
            BreakerView::Open { until: T0 + 1 },
        ),
        (Some(open_until(T0)), T0, BreakerView::HalfOpen),
        (
            Some(half_open_since(T0, 100, 0)),
            T0 + 1,
            BreakerView::HalfOpen,
        ),
    ];
    for (state, now, expected) in cases {
        let item = state.map(|s| s.to_item());
        assert_eq!(view(item.as_ref(), now), expected, "{item:?}");
    }
}

// ---- properties ----

fn any_settings() -> impl Strategy<Value = BreakerSettings> {
    (
        1u32..6,
        1u32..4,
        1_000u64..20_000,
        1u32..4,
        1_000u64..30_000,
    )
        .prop_map(
            |(threshold, successes, timeout, max, window)| BreakerSettings {
                enabled: true,
                failure_threshold: nz(threshold),
                success_threshold: nz(successes),
                timeout: Duration::from_millis(timeout),
                max_requests: nz(max),
                window: Duration::from_millis(window),
                failure_ratio: None,
            },
        )
}

proptest! {
    #[test]
    fn an_open_breaker_never_permits_before_its_timeout(
        s in any_settings(),
        start in 0i64..1_000_000_000,
        probes in prop::collection::vec(0u64..u64::MAX, 1..16),
    ) {
        // Through the real path: failures reported to a shared store open it, then permits
        // at any moment before `until` are refused and the first one at `until` is a trial.
        let s = BreakerSettings { enabled: true, ..s };
        let timeout = millis(s.timeout);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let store = MemoryStore::new();
            let opened = flush_outcomes(&store, GW, &s, &failures(s.failure_threshold.get()), start)
                .await
                .unwrap();
            assert_eq!(opened.transition.map(|t| t.to), Some(Phase::Open));
            let until = start + timeout;
            for p in probes {
                let now = start + i64::try_from(p % u64::try_from(timeout).unwrap()).unwrap();
                let got = permit_send(&store, GW, &s, now).await.unwrap();
                assert_eq!(got.admission, Admission::Rejected { until }, "at {now}, until {until}");
            }
            let trial = permit_send(&store, GW, &s, until).await.unwrap();
            assert_eq!(trial.admission, Admission::Trial);
        });
    }
}

/// One step of an interleaving: instances decide from what they last read, which may be
/// stale, and their conditional writes meet the one shared item.
#[derive(Debug, Clone)]
enum Step {
    Read(usize),
    Permit(usize),
    Flush(usize, Tally),
    Advance(i64),
}

fn any_step() -> impl Strategy<Value = Step> {
    let tally = prop_oneof![
        Just(failures(1)),
        Just(Tally {
            successes: 1,
            ..Tally::default()
        }),
        Just(Tally {
            trial_successes: 1,
            ..Tally::default()
        }),
        Just(Tally {
            trial_failures: 1,
            ..Tally::default()
        }),
    ];
    prop_oneof![
        1 => (0usize..4).prop_map(Step::Read),
        3 => (0usize..4).prop_map(Step::Permit),
        3 => ((0usize..4), tally).prop_map(|(i, t)| Step::Flush(i, t)),
        1 => (0i64..15_000).prop_map(Step::Advance),
    ]
}

fn attempt(shared: &mut Option<Item>, write: &BreakerWrite) -> WriteOutcome {
    if write.condition.holds(shared.as_ref()) {
        *shared = apply_op(shared.as_ref(), &write.op).unwrap();
        WriteOutcome::Applied(shared.clone())
    } else {
        WriteOutcome::ConditionFailed(shared.clone())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn half_open_never_admits_more_than_max_requests_in_any_interleaving(
        s in any_settings(),
        steps in proptest::collection::vec(any_step(), 1..200),
    ) {
        let mut shared: Option<Item> = None;
        let mut cached: Vec<Option<Item>> = vec![None; 4];
        let mut now = T0;
        // Trials admitted per half-open round (a round is a generation).
        let mut admitted: BTreeMap<i64, u32> = BTreeMap::new();
        for step in steps {
            match step {
                Step::Advance(ms) => now += ms,
                Step::Read(i) => cached[i] = shared.clone(),
                Step::Permit(i) => {
                    let (state, _) = BreakerState::from_item(cached[i].as_ref());
                    let before = BreakerState::from_item(shared.as_ref()).0;
                    if let Permit::Trial { write, .. } = permit(&state, &s, now) {
                        match attempt(&mut shared, &write) {
                            WriteOutcome::Applied(item) => {
                                prop_assert!(
                                    before.phase != Phase::Open || now >= before.until,
                                    "trial admitted while open before its timeout"
                                );
                                let after = BreakerState::from_item(item.as_ref()).0;
                                prop_assert_eq!(after.phase, Phase::HalfOpen);
                                let n = admitted.entry(after.generation).or_default();
                                *n += 1;
                                prop_assert!(*n <= s.max_requests.get(), "round {} admitted {}", after.generation, n);
                                cached[i] = item;
                            }
                            WriteOutcome::ConditionFailed(item) => cached[i] = item,
                        }
                    }
                }
                Step::Flush(i, tally) => {
                    let (state, _) = BreakerState::from_item(cached[i].as_ref());
                    if let Some(write) = flush(&state, &tally, &s, now).write {
                        match attempt(&mut shared, &write) {
                            WriteOutcome::Applied(item) | WriteOutcome::ConditionFailed(item) => {
                                cached[i] = item;
                            }
                        }
                    }
                }
            }
            let stored = BreakerState::from_item(shared.as_ref());
            prop_assert_eq!(stored.1, None);
            prop_assert!(stored.0.admitted <= s.max_requests.get());
        }
    }
}

// ---- writes whose answer was lost ----

const TOKEN: WriteToken = WriteToken(0x5eed_0001);

fn running(generation: i64, failures: u32, successes: u32) -> BreakerState {
    BreakerState {
        window_start: T0,
        failures,
        successes,
        generation,
        stored: Stored::Valid,
        ..BreakerState::missing()
    }
}

/// (phase, generation, failures, successes, trial_successes) of a stored item.
fn summary(item: Option<&Item>) -> (Phase, i64, u32, u32, u32) {
    let (s, problem) = BreakerState::from_item(item);
    assert_eq!(problem, None);
    (
        s.phase,
        s.generation,
        s.failures,
        s.successes,
        s.trial_successes,
    )
}

/// Seeds `item` into both stores.
async fn seed_both(once: &MemoryStore, lost: &LostAnswers, item: Option<&Item>) {
    if let Some(item) = item {
        for store in [once, &lost.0] {
            store.put_many(vec![(key(GW), item.clone())]).await.unwrap();
        }
    }
}

/// One flush whose writes are answered (`once`) and one whose every write is applied, its
/// answer lost and retried (`lost`), from the same item with the same token: the stored items
/// and the outcomes must be the same.
async fn flush_both(
    stored: Option<&Item>,
    read: Option<&Item>,
    s: &BreakerSettings,
    tally: &Tally,
    now: EpochMillis,
) -> [(FlushOutcome, Option<Item>); 2] {
    let (once, lost) = (MemoryStore::new(), LostAnswers::default());
    seed_both(&once, &lost, stored).await;
    let mut results = Vec::new();
    for store in [&once as &dyn StateStore, &lost] {
        let item = match read {
            Some(stale) => Some(stale.clone()),
            None => store.get(&key(GW)).await.unwrap(),
        };
        let out = service::flush_tagged(store, GW, s, tally, item, now, Some(TOKEN))
            .await
            .unwrap();
        results.push((out, store.get(&key(GW)).await.unwrap()));
    }
    [results.remove(0), results.remove(0)]
}

/// [`flush_both`] for a permit on the stored item.
async fn permit_both(
    stored: Option<&Item>,
    s: &BreakerSettings,
    now: EpochMillis,
) -> [(PermitOutcome, Option<Item>); 2] {
    let (once, lost) = (MemoryStore::new(), LostAnswers::default());
    seed_both(&once, &lost, stored).await;
    let mut results = Vec::new();
    for store in [&once as &dyn StateStore, &lost] {
        let item = stored.map(Cow::Borrowed);
        let out = service::permit_tagged(store, GW, s, item, now, Some(TOKEN))
            .await
            .unwrap();
        results.push((out, store.get(&key(GW)).await.unwrap()));
    }
    [results.remove(0), results.remove(0)]
}

#[tokio::test]
async fn a_flush_write_whose_answer_was_lost_leaves_one_write_and_reports_once() {
    let s = settings();
    let ratio = BreakerSettings {
        failure_ratio: Some(0.5),
        ..settings()
    };
    let mut malformed = open_until(T0 + 60_000).to_item();
    malformed.insert(PHASE.into(), Value::from("ajar"));
    let trials = |successes, failures| Tally {
        trial_successes: successes,
        trial_failures: failures,
        ..Tally::default()
    };
    let threshold = |failures, successes| {
        Some((
            Phase::Closed,
            Phase::Open,
            TransitionReason::FailureThreshold {
                failures,
                successes,
            },
        ))
    };
    type Case<'a> = (
        &'a str,
        &'a BreakerSettings,
        Option<Item>,
        Option<Item>,
        Tally,
        EpochMillis,
        (Phase, i64, u32, u32, u32),
        Option<(Phase, Phase, TransitionReason)>,
    );
    // (case, settings, stored, read when not the stored item, tally, now, left, reported)
    let cases: [Case; 10] = [
        (
            "add to the running window",
            &s,
            Some(running(1, 3, 0).to_item()),
            None,
            failures(2),
            T0 + 1,
            (Phase::Closed, 1, 5, 0, 0),
            None,
        ),
        (
            "add successes the ratio needs",
            &ratio,
            Some(running(1, 3, 0).to_item()),
            None,
            Tally {
                successes: 4,
                ..Tally::default()
            },
            T0 + 1,
            (Phase::Closed, 1, 3, 4, 0),
            None,
        ),
        (
            "first item: a new window",
            &s,
            None,
            None,
            failures(2),
            T0,
            (Phase::Closed, 1, 2, 0, 0),
            None,
        ),
        (
            "new window after the last one elapsed",
            &s,
            Some(running(1, 9, 0).to_item()),
            None,
            failures(2),
            T0 + 60_000,
            (Phase::Closed, 2, 2, 0, 0),
            None,
        ),
        (
            "new window replacing a malformed item",
            &s,
            Some(malformed),
            None,
            failures(2),
            T0,
            (Phase::Closed, 1, 2, 0, 0),
            None,
        ),
        (
            "open on the threshold",
            &s,
            Some(running(1, 9, 0).to_item()),
            None,
            failures(1),
            T0 + 1,
            (Phase::Open, 2, 0, 0, 0),
            threshold(10, 0),
        ),
        (
            // Read 8, another reporter added one: the add crosses the threshold, then opens.
            "add crossing the threshold with another's failure, then open",
            &s,
            Some(running(1, 9, 0).to_item()),
            Some(running(1, 8, 0).to_item()),
            failures(1),
            T0 + 1,
            (Phase::Open, 2, 0, 0, 0),
            threshold(10, 0),
        ),
        (
            "half-open trial failure re-opens",
            &s,
            Some(half_open_since(T0, 3, 2).to_item()),
            None,
            trials(1, 1),
            T0 + 5_000,
            (Phase::Open, 5, 0, 0, 0),
            Some((Phase::HalfOpen, Phase::Open, TransitionReason::TrialFailed)),
        ),
        (
            "half-open trial success added",
            &s,
            Some(half_open_since(T0, 5, 1).to_item()),
            None,
            trials(1, 0),
            T0 + 1,
            (Phase::HalfOpen, 4, 0, 0, 2),
            None,
        ),
        (
            "half-open closes on the last trial success",
            &s,
            Some(half_open_since(T0, 5, 4).to_item()),
            None,
            trials(1, 0),
            T0 + 1,
            (Phase::Closed, 5, 0, 0, 0),
            Some((
                Phase::HalfOpen,
                Phase::Closed,
                TransitionReason::TrialsSucceeded { successes: 5 },
            )),
        ),
    ];
    for (case, s, stored, read, tally, now, left, reported) in cases {
        let [once, lost] = flush_both(stored.as_ref(), read.as_ref(), s, &tally, now).await;
        assert_eq!(summary(once.1.as_ref()), left, "{case}: one applied write");
        assert_eq!(
            once.0.transition.as_ref().map(|t| (t.from, t.to, t.reason)),
            reported,
            "{case}: one applied write"
        );
        assert!(
            once.1.as_ref().is_some_and(|i| i.contains_key(WRITE_ID)),
            "{case}: untagged"
        );
        assert_eq!(lost, once, "{case}: answer lost and retried");
    }
}

#[tokio::test]
async fn a_trial_write_whose_answer_was_lost_takes_one_slot_and_reports_once() {
    let max = |n| BreakerSettings {
        max_requests: nz(n),
        ..settings()
    };
    let elapsed = Some((
        Phase::Open,
        Phase::HalfOpen,
        TransitionReason::TimeoutElapsed,
    ));
    type Case<'a> = (
        &'a str,
        BreakerSettings,
        BreakerState,
        EpochMillis,
        (Phase, i64, u32),
        Option<(Phase, Phase, TransitionReason)>,
    );
    // (case, settings, stored, now, left (phase, generation, admitted), reported)
    let cases: [Case; 4] = [
        (
            "open to half-open takes the first slot",
            max(100),
            open_until(T0),
            T0,
            (Phase::HalfOpen, 4, 1),
            elapsed,
        ),
        (
            "open to half-open takes the only slot",
            max(1),
            open_until(T0),
            T0,
            (Phase::HalfOpen, 4, 1),
            elapsed,
        ),
        (
            "the last slot of a round",
            max(2),
            half_open_since(T0, 1, 0),
            T0 + 1,
            (Phase::HalfOpen, 4, 2),
            None,
        ),
        (
            "an unresolved round restarts",
            max(2),
            half_open_since(T0, 2, 0),
            T0 + 60_000,
            (Phase::HalfOpen, 5, 1),
            Some((
                Phase::HalfOpen,
                Phase::HalfOpen,
                TransitionReason::TrialsUnresolved,
            )),
        ),
    ];
    for (case, s, stored, now, left, reported) in cases {
        let [once, lost] = permit_both(Some(&stored.to_item()), &s, now).await;
        assert_eq!(once.0.admission, Admission::Trial, "{case}");
        assert_eq!(
            once.0.transition.as_ref().map(|t| (t.from, t.to, t.reason)),
            reported,
            "{case}"
        );
        let state = BreakerState::from_item(once.1.as_ref()).0;
        assert_eq!(
            (state.phase, state.generation, state.admitted),
            left,
            "{case}"
        );
        assert_eq!(lost, once, "{case}: answer lost and retried");
    }
}

#[test]
fn a_tagged_write_stores_its_token_and_is_not_applied_over_it() {
    let s = settings();
    // An add to the running window, and the put that opens it.
    for read in [running(1, 3, 0), running(1, 9, 0)] {
        let write = flush(&read, &failures(1), &s, T0 + 1).write.unwrap();
        let before = read.to_item();
        let tagged = write.clone().tagged(TOKEN);
        // Items from before tokens, or holding another write's, do not stand in the way.
        let mut other = before.clone();
        other.insert(WRITE_ID.into(), Value::N(TOKEN.next().0));
        for item in [&before, &other] {
            assert_eq!(
                tagged.condition.holds(Some(item)),
                write.condition.holds(Some(item)),
                "{write:?}"
            );
        }
        assert!(!TOKEN.is_in(Some(&before)));
        let after = apply_op(Some(&before), &tagged.op).unwrap();
        assert!(TOKEN.is_in(after.as_ref()), "{write:?}");
        assert!(!TOKEN.next().is_in(after.as_ref()));
        assert!(!tagged.condition.holds(after.as_ref()), "{write:?}");
    }
}

fn any_state() -> impl Strategy<Value = Option<BreakerState>> {
    let phase = prop_oneof![
        Just(Phase::Closed),
        Just(Phase::Open),
        Just(Phase::HalfOpen)
    ];
    let state = (
        phase,
        0i64..4,
        (0i64..120_000, 0u32..12, 0u32..12),
        -90_000i64..90_000,
        (0i64..120_000, 0u32..4, 0u32..4),
    )
        .prop_map(
            |(
                phase,
                generation,
                (window_age, failures, successes),
                until,
                (round_age, admitted, trial_successes),
            )| {
                BreakerState {
                    phase,
                    generation,
                    window_start: T0 - window_age,
                    failures,
                    successes,
                    opened_at: T0 + until - 60_000,
                    until: T0 + until,
                    half_open_at: T0 - round_age,
                    admitted,
                    trial_successes,
                    stored: Stored::Valid,
                }
            },
        );
    prop::option::weighted(0.9, state)
}

fn any_tally() -> impl Strategy<Value = Tally> {
    (0u32..4, 0u32..12, 0u32..4, 0u32..2).prop_map(
        |(successes, failures, trial_successes, trial_failures)| Tally {
            successes,
            failures,
            trial_successes,
            trial_failures,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn a_lost_answer_never_changes_what_a_flush_or_a_permit_leaves_or_reports(
        s in any_settings(),
        ratio in prop::option::of(0.2f64..0.9),
        state in any_state(),
        tally in any_tally(),
    ) {
        let s = BreakerSettings { failure_ratio: ratio, ..s };
        let stored = state.map(|st| st.to_item());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let [once, lost] = flush_both(stored.as_ref(), None, &s, &tally, T0).await;
            assert_eq!(lost, once, "flush");

            let [once, lost] = permit_both(stored.as_ref(), &s, T0).await;
            assert_eq!(lost, once, "permit");
        });
    }
}

/// What a batch decides per gateway without the store (the send pipeline's breaker permit):
/// closed allows, open rejects until its end, an elapsed one is left to the store call (a
/// trial), a malformed item allows as closed and says so, a disabled breaker allows.
#[test]
fn a_permit_is_decided_locally_unless_it_is_a_trial() {
    let malformed: Item = BTreeMap::from([(PHASE.to_owned(), Value::from("sideways"))]);
    let decide = |item: Option<&Item>, enabled: bool| {
        let settings = BreakerSettings {
            enabled,
            ..settings()
        };
        let (state, problem) = BreakerState::from_item(item);
        decided_locally(&state, problem, &settings, T0).map(|o| (o.admission, o.malformed))
    };
    let closed = BreakerState::missing().to_item();
    let open = open_until(T0 + 1_000).to_item();
    let elapsed = open_until(T0 - 1).to_item();
    assert_eq!(decide(None, true), Some((Admission::Allowed, None)));
    assert_eq!(
        decide(Some(&closed), true),
        Some((Admission::Allowed, None))
    );
    assert_eq!(
        decide(Some(&open), true),
        Some((Admission::Rejected { until: T0 + 1_000 }, None))
    );
    assert_eq!(decide(Some(&elapsed), true), None);
    let (admission, problem) = decide(Some(&malformed), true).expect("decided");
    assert_eq!(admission, Admission::Allowed);
    assert!(problem.is_some(), "the malformed item is reported");
    assert_eq!(decide(Some(&open), false), Some((Admission::Allowed, None)));
}
