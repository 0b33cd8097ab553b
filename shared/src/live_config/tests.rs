#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::clock::ManualClock;
use crate::state::memory::MemoryStore;

const NOW: EpochMillis = 1_795_860_000_000;

fn doc(priority_a: u32) -> String {
    serde_json::json!({"gateways": [
        {"id": "a", "type": "capture", "display_name": "A", "priority": priority_a,
         "capture": {"directory": "/tmp/unused"}, "routing": {"can_route": ["*"]}},
        {"id": "b", "type": "capture", "display_name": "B", "priority": 5,
         "capture": {"directory": "/tmp/unused"}, "routing": {"can_route": ["*"]}}
    ]})
    .to_string()
}

fn no_env() -> Env {
    Arc::new(|_| None)
}

fn live(store: &Arc<MemoryStore>) -> LiveConfig {
    LiveConfig::new(
        Source::Store(Arc::clone(store) as Arc<dyn StateStore>),
        no_env(),
        None,
        Duration::from_secs(30),
        None,
    )
}

async fn push(store: &MemoryStore, text: &str, at: EpochMillis) -> Result<Version, PublishError> {
    publish(
        store,
        text,
        None,
        &|_| None,
        "arn:aws:iam::1:user/ops",
        "raise a's priority",
        at,
    )
    .await
}

/// The priority of gateway `a` in what the reloading value was built from.
fn build_priority() -> BuildFn<u32> {
    Arc::new(|input: BuildInput<u32>| {
        Box::pin(async move {
            let a = input.config.gateways.iter().find(|g| g.id == "a").unwrap();
            if a.priority == 99 {
                return Err("gateway a: its secret does not resolve".to_owned());
            }
            Ok(a.priority)
        })
    })
}

#[tokio::test]
async fn published_versions_are_numbered_audited_and_refused_when_invalid_or_unchanged() {
    let store = MemoryStore::new();
    let v1 = push(&store, &doc(1), NOW).await.unwrap();
    assert_eq!((v1.number, v1.by.as_str()), (1, "arn:aws:iam::1:user/ops"));
    assert!(matches!(
        push(&store, &doc(1), NOW).await,
        Err(PublishError::Unchanged(1))
    ));
    match push(&store, r#"{"gateways": [{"id": "a"}]}"#, NOW).await {
        Err(PublishError::Invalid(errors)) => {
            assert!(
                errors.0.iter().any(|i| i.path.starts_with("gateways[0]")),
                "{errors:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let v2 = push(&store, &doc(2), NOW + 1).await.unwrap();
    assert_eq!(v2.number, 2);
    assert_eq!(head(&store).await.unwrap().unwrap().number, 2);
    let listed: Vec<i64> = history(&store, 10)
        .await
        .unwrap()
        .iter()
        .map(|v| v.number)
        .collect();
    assert_eq!(listed, [2, 1]);
    assert_eq!(document(&store, 1).await.unwrap().unwrap().1, doc(1));
}

#[tokio::test]
async fn a_new_version_is_activated_at_the_next_poll_and_a_bad_one_is_rejected_once() {
    let store = Arc::new(MemoryStore::new());
    push(&store, &doc(1), NOW).await.unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let file = Arc::new(load_config(Some(&doc(7)), None, &|_| None).unwrap().config);
    let running = Reloading::start(live(&store), clock.clone(), file, build_priority())
        .await
        .unwrap();
    assert_eq!(
        *running.get().await,
        1,
        "starts on the published version, not the file"
    );

    push(&store, &doc(3), NOW).await.unwrap();
    assert_eq!(*running.get().await, 1, "not before the poll interval");
    clock.advance(30_000);
    assert_eq!(*running.get().await, 3);
    assert_eq!(running.live().active().unwrap().number, 2);

    // A version that validates but does not build: the last good one stays.
    push(&store, &doc(99), NOW).await.unwrap();
    clock.advance(30_000);
    assert_eq!(*running.get().await, 3);
    let (rejected, why) = running.live().rejected().unwrap();
    assert_eq!(rejected, 3);
    assert!(why.contains("does not resolve"), "{why}");

    // A document written behind the publisher's back (not valid JSON config) is rejected with
    // its paths, and not activated.
    let mut bad = Version {
        number: 4,
        sha256: String::new(),
        by: "someone".into(),
        at: NOW,
        reason: "by hand".into(),
    };
    let text = r#"{"gateways": [{"id": "a", "type": "nope"}]}"#;
    bad.sha256 = sha256(text);
    let mut item = bad.to_item();
    item.insert(DOCUMENT.into(), Value::from(text));
    let mut head_item = bad.to_item();
    head_item.insert(VERSION.into(), Value::N(4));
    store
        .put_many(vec![
            (version_key(4), item),
            (HEAD_KEY.to_owned(), head_item),
        ])
        .await
        .unwrap();
    clock.advance(30_000);
    assert_eq!(*running.get().await, 3);
    let (rejected, why) = running.live().rejected().unwrap();
    assert_eq!(rejected, 4);
    assert!(why.contains("gateways[0]"), "{why}");

    // The next good version is taken.
    push(&store, &doc(4), NOW).await.unwrap();
    clock.advance(30_000);
    assert_eq!(*running.get().await, 4);
    assert_eq!(running.live().rejected(), None);
}

#[tokio::test]
async fn a_watched_file_is_taken_up_when_it_changes_and_kept_when_it_breaks() {
    let dir = std::env::temp_dir().join(format!("gw-live-{}-{NOW}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, doc(1)).unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let live = LiveConfig::new(
        Source::File(path.clone()),
        no_env(),
        None,
        Duration::from_secs(2),
        None,
    );
    let file = Arc::new(load_config(Some(&doc(1)), None, &|_| None).unwrap().config);
    let running = Reloading::start(live, clock.clone(), file, build_priority())
        .await
        .unwrap();
    assert_eq!(*running.get().await, 1);
    std::fs::write(&path, doc(2)).unwrap();
    clock.advance(2_000);
    assert_eq!(*running.get().await, 2);
    std::fs::write(&path, "{ not json").unwrap();
    clock.advance(2_000);
    assert_eq!(
        *running.get().await,
        2,
        "a broken file keeps the last good config"
    );
    assert!(running.live().rejected().is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_diff_names_gateways_by_id_and_shows_no_secret() {
    let with_key = |priority: u32, key: &str| {
        serde_json::json!({"gateways": [
            {"id": "a", "type": "mailgun", "display_name": "A", "priority": priority,
             "mailgun": {"domain": "mg.example.org", "api_key": key},
             "routing": {"can_route": ["*"]}},
            {"id": "b", "type": "capture", "display_name": "B", "priority": 5,
             "capture": {"directory": "/tmp/unused"}, "routing": {"can_route": ["*"]}}
        ]})
        .to_string()
    };
    let load = |text: &str| load_config(Some(text), None, &|_| None).unwrap().config;
    let old = load(&with_key(1, "key-old-0123456789abcdef"));
    let new = load(&with_key(3, "key-new-0123456789abcdef"));
    let lines = diff(&old, &new);
    assert!(
        lines.contains(&"~ gateways[a].priority: 1 → 3".to_owned()),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("key-old") || l.contains("key-new")),
        "{lines:?}"
    );
    assert!(diff(&old, &old).is_empty());
}
