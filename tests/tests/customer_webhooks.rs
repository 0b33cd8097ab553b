//! Customer webhooks end to end: events recorded in MariaDB, announcements queued on an SQS
//! queue (moto), jobs received from it and posted to a local HTTP server standing in for the
//! customer's endpoint, which checks the form body and verifies `X-Mandrill-Signature` with
//! Mandrill's published algorithm. Failed posts are retried through the queue with backoff and
//! end in the dead-letter queue with the reason once their attempts are spent.
//!
//! Needs moto and MariaDB: `scripts/services up && source .local/services.env`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gateway_core::clock::{Clock, SystemClock};
use gateway_core::config::{CustomerWebhook, load_config};
use gateway_core::customer_webhooks::{DeadLetter, DeliveryReporting, Worker, WorkerSettings};
use gateway_core::events::{
    AttemptRecord, DeliveryEvent, DeliveryKind, GatewayEvent, Outcome, OutcomeClass, OutcomeEvent,
    RecipientKind, RecipientOutcome, RecipientStatus,
};
use gateway_core::mandrill;
use gateway_core::pipeline::Backoff;
use gateway_core::queue::sqs::{Client, SqsQueue, client_from_env, create_queue};
use gateway_core::queue::{Queue, Received};
use gateway_core::recorder::{CustomerWebhooks, Recorder, RecorderReport};
use gateway_core::records::RecordReader;
use gateway_core::records::mysql::MysqlRecords;
use gateway_core::secrets::SecretResolver;
use gateway_core::state::memory::MemoryStore;
use gateway_core::suppression;
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY_ALL: &str = "all-endpoint-webhook-key";
const KEY_BOUNCES: &str = "bounces-endpoint-webhook-key";

fn unique(tag: &str) -> String {
    format!(
        "cw-{tag}-{}-{}",
        std::process::id(),
        SystemClock.now_ms() % 1_000_000_000
    )
}

/// Two endpoints on `server`: `all` (every event, every sender) and `bounces` (hard bounces and
/// rejects of `@clinic.example` only).
fn endpoints(server: &MockServer) -> Arc<[CustomerWebhook]> {
    let doc = serde_json::json!({
        "gateways": [{"id": "gw", "type": "capture", "capture": {"directory": "/tmp"},
                      "routing": {"can_route": ["*"]}}],
        "customer_webhooks": [
            {"id": "all", "url": format!("{}/hooks/all", server.uri()), "key": KEY_ALL},
            {"id": "bounces", "url": format!("{}/hooks/bounces", server.uri()),
             "key": KEY_BOUNCES, "events": ["hard_bounce", "reject"],
             "senders": ["@clinic.example"]}
        ]
    });
    let loaded = load_config(Some(&doc.to_string()), None, &|_: &str| None)
        .unwrap_or_else(|e| panic!("{e}"));
    loaded.config.customer_webhooks.into()
}

struct Env {
    db: MysqlRecords,
    state: Arc<MemoryStore>,
    sqs: Client,
    jobs: Arc<SqsQueue>,
    dead_letters: Arc<SqsQueue>,
    endpoints: Arc<[CustomerWebhook]>,
}

impl Env {
    async fn new(tag: &str, server: &MockServer) -> Self {
        gateway_tests::moto_url();
        let sqs = client_from_env().await;
        let name = unique(tag);
        let jobs = create_queue(&sqs, &format!("{name}-jobs"), None)
            .await
            .unwrap();
        let dlq = create_queue(&sqs, &format!("{name}-dlq"), None)
            .await
            .unwrap();
        Self {
            db: gateway_tests::fresh_database("cw").await,
            state: Arc::new(MemoryStore::new()),
            jobs: Arc::new(SqsQueue::new(sqs.clone(), jobs)),
            dead_letters: Arc::new(SqsQueue::new(sqs.clone(), dlq)),
            sqs,
            endpoints: endpoints(server),
        }
    }

    /// A recorder over this environment, queueing jobs on `jobs` (the real queue unless a test
    /// breaks it), retrying after 1–2 s and giving up after `max_attempts` receives.
    fn recorder(&self, jobs: Arc<dyn Queue>, max_attempts: u32) -> Recorder {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let worker = Worker::new(
            Arc::clone(&self.endpoints),
            Arc::new(SecretResolver::new(Arc::clone(&clock))),
            Arc::clone(&jobs),
            Arc::clone(&self.dead_letters) as Arc<dyn Queue>,
            Arc::clone(&clock),
            WorkerSettings {
                max_attempts,
                backoff: Backoff {
                    base: Duration::from_secs(1),
                    cap: Duration::from_secs(2),
                    spread: Duration::from_secs(1),
                },
                timeout: Duration::from_secs(5),
                concurrency: 4,
            },
        )
        .unwrap();
        Recorder::new(
            Arc::new(self.db.clone()),
            Arc::clone(&self.state) as _,
            clock,
        )
        .with_customer_webhooks(CustomerWebhooks::new(
            Arc::clone(&self.endpoints),
            jobs,
            worker,
            // The Mailgun gateway's webhook is set up: its delivery events make the `send`.
            DeliveryReporting::from_ids(["gw-mailgun"]),
        ))
    }

    /// Receives what `queue` holds (waiting up to `wait` for the first message), acknowledging
    /// nothing.
    async fn drain(queue: &SqsQueue, wait: Duration) -> Vec<Received> {
        let mut out = Vec::new();
        loop {
            let got = queue
                .receive(10, wait, Duration::from_secs(30))
                .await
                .unwrap();
            if got.is_empty() {
                return out;
            }
            out.extend(got);
        }
    }

    /// Runs one batch the way the Lambda integration does: the records not reported as failures
    /// are deleted.
    async fn run(
        &self,
        recorder: &Recorder,
        queue: &SqsQueue,
        batch: &[Received],
    ) -> RecorderReport {
        let report = recorder.process(batch).await;
        let done: Vec<String> = batch
            .iter()
            .filter(|r| !report.failures.contains(&r.message_id))
            .map(|r| r.receipt_handle.clone())
            .collect();
        assert!(queue.delete_batch(&done).await.unwrap().is_empty());
        report
    }
}

fn as_records(events: &[GatewayEvent]) -> Vec<Received> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| Received {
            message_id: format!("ev-{i}"),
            receipt_handle: format!("rh-{i}"),
            body: serde_json::to_string(e).unwrap(),
            receive_count: 5,
            sent_at: 0,
        })
        .collect()
}

const T0: i64 = 1_795_860_000_000;

fn outcome(
    id: &str,
    sender: &str,
    gateway_type: &str,
    outcome: Outcome,
    recipients: &[(&str, RecipientStatus)],
) -> GatewayEvent {
    GatewayEvent::Outcome(OutcomeEvent {
        message_id: id.into(),
        sender: sender.into(),
        subject: format!("Subject of {id}"),
        campaign_id: None,
        user_id: None,
        tags: vec!["results".into()],
        metadata: BTreeMap::from([("patient".into(), Value::from("p-7"))]),
        recipients: recipients
            .iter()
            .map(|(a, s)| RecipientOutcome {
                address: (*a).into(),
                kind: RecipientKind::To,
                status: *s,
            })
            .collect(),
        outcome,
        gateway_id: Some(format!("gw-{gateway_type}")),
        gateway_type: Some(gateway_type.into()),
        provider_message_id: None,
        attempts: if outcome == Outcome::Sent {
            vec![AttemptRecord {
                gateway: format!("gw-{gateway_type}"),
                gateway_type: gateway_type.into(),
                class: OutcomeClass::Ok,
                http_status: Some(200),
                latency_ms: 90,
                error: None,
                at: T0,
            }]
        } else {
            Vec::new()
        },
        reason: (outcome != Outcome::Sent).then(|| "address is on the suppression list".into()),
        retry_at: None,
        at: T0,
    })
}

fn delivery(id: &str, event: &str, recipient: &str, kind: DeliveryKind, at: i64) -> GatewayEvent {
    GatewayEvent::Delivery(DeliveryEvent {
        provider: "mailgun".into(),
        provider_event_id: event.into(),
        message_id: Some(id.into()),
        recipient: recipient.into(),
        kind,
        at,
        diagnostic: (kind == DeliveryKind::HardBounce).then(|| "550 5.1.1 no such user".into()),
        url: (kind == DeliveryKind::Clicked).then(|| "https://clinic.example/r".into()),
        stream: None,
    })
}

/// m-1 sent through Gmail (no delivery events: acceptance is the `send`), m-2 through Mailgun
/// (delivered, opened twice, clicked, one recipient bounced), m-3 refused (suppressed).
fn history() -> Vec<GatewayEvent> {
    vec![
        outcome(
            "m-1",
            "dr@clinic.example",
            "google_workspace",
            Outcome::Sent,
            &[
                ("a@patients.example", RecipientStatus::Sent),
                ("b@patients.example", RecipientStatus::Sent),
            ],
        ),
        outcome(
            "m-2",
            "dr@clinic.example",
            "mailgun",
            Outcome::Sent,
            &[
                ("c@patients.example", RecipientStatus::Sent),
                ("gone@patients.example", RecipientStatus::Sent),
            ],
        ),
        delivery(
            "m-2",
            "d1",
            "c@patients.example",
            DeliveryKind::Delivered,
            T0 + 1_000,
        ),
        delivery(
            "m-2",
            "o1",
            "c@patients.example",
            DeliveryKind::Opened,
            T0 + 60_000,
        ),
        delivery(
            "m-2",
            "o2",
            "c@patients.example",
            DeliveryKind::Opened,
            T0 + 120_000,
        ),
        delivery(
            "m-2",
            "k1",
            "c@patients.example",
            DeliveryKind::Clicked,
            T0 + 130_000,
        ),
        delivery(
            "m-2",
            "b1",
            "gone@patients.example",
            DeliveryKind::HardBounce,
            T0 + 2_000,
        ),
        outcome(
            "m-3",
            "desk@other.example",
            "mailgun",
            Outcome::Rejected,
            &[("x@patients.example", RecipientStatus::Suppressed)],
        ),
    ]
}

/// The `mandrill_events` text of a posted form body, after checking it is the only field.
fn mandrill_events_of(request: &Request) -> String {
    let body = String::from_utf8(request.body.clone()).unwrap();
    let url = reqwest::Url::parse(&format!("http://form.invalid/?{body}")).unwrap();
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert_eq!(pairs.len(), 1, "one form field: {pairs:?}");
    assert_eq!(pairs[0].0, "mandrill_events");
    pairs[0].1.clone()
}

fn requests_to<'a>(requests: &'a [Request], path_: &str) -> Vec<&'a Request> {
    requests.iter().filter(|r| r.url.path() == path_).collect()
}

#[tokio::test]
async fn customers_receive_signed_mandrill_batches_of_their_own_events() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let env = Env::new("signed", &server).await;
    let recorder = env.recorder(Arc::clone(&env.jobs) as _, 12);

    let report = recorder.process(&as_records(&history())).await;
    assert_eq!(report.failures, Vec::<String>::new());
    assert_eq!(report.recorded, 8);
    // all: 2 send (m-1) + send, 2 open, click, hard_bounce (m-2) + reject (m-3) = 8;
    // bounces: the hard bounce of clinic.example (m-3's reject is another sender's).
    assert_eq!(report.announced, 9);
    // Recording did not wait for the customers.
    assert_eq!(server.received_requests().await.unwrap().len(), 0);
    assert_eq!(
        env.db
            .message("m-2")
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str(),
        "sent"
    );
    assert!(
        suppression::lookup(env.state.as_ref(), "gone@patients.example")
            .await
            .unwrap()
            .is_some()
    );

    let jobs = Env::drain(&env.jobs, Duration::from_secs(1)).await;
    assert_eq!(jobs.len(), 2, "one job per endpoint for the batch");
    let report = env.run(&recorder, &env.jobs, &jobs).await;
    assert_eq!(report.failures, Vec::<String>::new());
    assert_eq!(report.webhooks.delivered, 2);

    let requests = server.received_requests().await.unwrap();
    for (path_, key, expected) in [
        (
            "/hooks/all",
            KEY_ALL,
            vec![
                "send",
                "send",
                "send",
                "hard_bounce",
                "open",
                "open",
                "click",
                "reject",
            ],
        ),
        ("/hooks/bounces", KEY_BOUNCES, vec!["hard_bounce"]),
    ] {
        let got = requests_to(&requests, path_);
        assert_eq!(got.len(), 1, "{path_}");
        let request = got[0];
        assert_eq!(
            request.headers.get("content-type").unwrap(),
            "application/x-www-form-urlencoded"
        );
        let signature = request
            .headers
            .get("x-mandrill-signature")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let text = mandrill_events_of(request);
        let url = format!("{}{path_}", server.uri());
        assert!(
            mandrill::verify(key.as_bytes(), &url, &text, &signature),
            "{path_}: the signature verifies with Mandrill's algorithm"
        );
        // Computed here from the published algorithm, not with the code under test:
        // base64(HMAC-SHA1(key, url + "mandrill_events" + value)).
        let independent = {
            use aws_lc_rs::hmac;
            use base64::Engine as _;
            let k = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key.as_bytes());
            let tag = hmac::sign(&k, format!("{url}mandrill_events{text}").as_bytes());
            base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
        };
        assert_eq!(signature, independent);
        assert!(!mandrill::verify(b"another key", &url, &text, &signature));

        let events: Vec<Value> = serde_json::from_str(&text).unwrap();
        let mut names: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        let mut want = expected.clone();
        names.sort_unstable();
        want.sort_unstable();
        assert_eq!(names, want, "{path_}");
        let ids: BTreeSet<&str> = events.iter().map(|e| e["_id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), events.len(), "every event has its own _id");
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())),
            "{ids:?}"
        );
        for e in &events {
            assert!(e["ts"].is_i64() && e["msg"]["ts"].is_i64(), "{e}");
            assert!(e["msg"]["email"].is_string(), "{e}");
        }
    }
    let all: Vec<Value> =
        serde_json::from_str(&mandrill_events_of(requests_to(&requests, "/hooks/all")[0])).unwrap();
    let bounce = all.iter().find(|e| e["event"] == "hard_bounce").unwrap();
    assert_eq!(bounce["msg"]["_id"], "m-2");
    assert_eq!(bounce["msg"]["email"], "gone@patients.example");
    assert_eq!(
        bounce["msg"]["subject"], "Subject of m-2",
        "details from the record"
    );
    assert_eq!(bounce["msg"]["sender"], "dr@clinic.example");
    assert_eq!(bounce["msg"]["metadata"]["patient"], "p-7");
    assert_eq!(bounce["msg"]["state"], "bounced");
    let sends: BTreeSet<&str> = all
        .iter()
        .filter(|e| e["event"] == "send")
        .map(|e| e["msg"]["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        sends,
        BTreeSet::from([
            "a@patients.example",
            "b@patients.example",
            "c@patients.example"
        ]),
        "one send per recipient: Gmail's acceptance, Mailgun's delivery"
    );
    let click = all.iter().find(|e| e["event"] == "click").unwrap();
    assert_eq!(click["url"], "https://clinic.example/r");

    // Announcing the same events again (a retried batch) gives the same _ids.
    recorder.process(&as_records(&history())).await;
    let again = Env::drain(&env.jobs, Duration::from_secs(1)).await;
    let job: Value = serde_json::from_str(
        &again
            .iter()
            .find(|r| r.body.contains("\"endpoint\":\"all\""))
            .unwrap()
            .body,
    )
    .unwrap();
    let ids_again: BTreeSet<String> = job["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["_id"].as_str().unwrap().to_owned())
        .collect();
    let ids_first: BTreeSet<String> = all
        .iter()
        .map(|e| e["_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids_again, ids_first);
}

#[tokio::test]
async fn an_endpoint_answering_500_is_retried_with_backoff_until_it_accepts() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks/all"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let env = Env::new("retry", &server).await;
    let recorder = env.recorder(Arc::clone(&env.jobs) as _, 12);
    recorder.process(&as_records(&history()[..1])).await;
    let jobs = Env::drain(&env.jobs, Duration::from_secs(1)).await;
    assert_eq!(jobs.len(), 1, "only `all` wants m-1's sends");

    let report = env.run(&recorder, &env.jobs, &jobs).await;
    assert_eq!(report.failures, [jobs[0].message_id.clone()]);
    assert_eq!(report.webhooks.retried, 1);
    // Hidden for the backoff delay (1–2 s here), not redelivered at once.
    assert!(
        env.jobs
            .receive(10, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    let again = Env::drain(&env.jobs, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].receive_count, 2);
    let report = env.run(&recorder, &env.jobs, &again).await;
    assert_eq!(report.failures, Vec::<String>::new());
    assert_eq!(report.webhooks.delivered, 1);

    let requests = server.received_requests().await.unwrap();
    let posts = requests_to(&requests, "/hooks/all");
    assert_eq!(posts.len(), 2);
    assert_eq!(
        posts[0].body, posts[1].body,
        "the retry posts the same batch"
    );
    assert_eq!(
        posts[0].headers.get("x-mandrill-signature"),
        posts[1].headers.get("x-mandrill-signature")
    );
    assert!(
        Env::drain(&env.dead_letters, Duration::ZERO)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_job_out_of_attempts_lands_in_the_dead_letter_queue_with_the_reason() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let env = Env::new("dlq", &server).await;
    let recorder = env.recorder(Arc::clone(&env.jobs) as _, 2);
    recorder.process(&as_records(&history()[..1])).await;
    let first = Env::drain(&env.jobs, Duration::from_secs(1)).await;
    assert_eq!(
        env.run(&recorder, &env.jobs, &first).await.webhooks.retried,
        1
    );
    let second = Env::drain(&env.jobs, Duration::from_secs(5)).await;
    assert_eq!(second.len(), 1);
    let report = env.run(&recorder, &env.jobs, &second).await;
    assert_eq!(
        report.failures,
        Vec::<String>::new(),
        "acknowledged once dead-lettered"
    );
    assert_eq!(report.webhooks.dead_lettered, 1);

    let letters = Env::drain(&env.dead_letters, Duration::from_secs(1)).await;
    assert_eq!(letters.len(), 1);
    let letter: DeadLetter = serde_json::from_str(&letters[0].body).unwrap();
    assert_eq!(letter.attempts, 2);
    assert_eq!(letter.last_status, Some(503));
    assert!(
        letter.reason.contains("gave up after 2 attempts") && letter.reason.contains("503"),
        "{}",
        letter.reason
    );
    assert_eq!(letter.job["endpoint"], "all");
    assert_eq!(letter.job["events"].as_array().unwrap().len(), 2);
    assert!(
        !letters[0].body.contains(KEY_ALL),
        "the key is never in a job or a letter"
    );
    assert!(
        Env::drain(&env.jobs, Duration::from_secs(3))
            .await
            .is_empty()
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_job_for_an_endpoint_no_longer_configured_is_dead_lettered_at_once() {
    let server = MockServer::start().await;
    let env = Env::new("gone", &server).await;
    let recorder = env.recorder(Arc::clone(&env.jobs) as _, 12);
    let job = serde_json::json!({
        "v": 1, "type": "customer_webhook", "endpoint": "retired",
        "events": [{"event": "send", "_id": "x", "ts": 1, "msg": {}}], "created_at": 1
    });
    env.jobs.send(&job.to_string()).await.unwrap();
    let jobs = Env::drain(&env.jobs, Duration::from_secs(1)).await;
    let report = env.run(&recorder, &env.jobs, &jobs).await;
    assert_eq!(report.webhooks.dead_lettered, 1);
    let letters = Env::drain(&env.dead_letters, Duration::from_secs(1)).await;
    let letter: DeadLetter = serde_json::from_str(&letters[0].body).unwrap();
    assert_eq!(
        letter.reason,
        "customer webhook \"retired\" is not configured"
    );
    assert_eq!(letter.job, job);
    assert_eq!(server.received_requests().await.unwrap().len(), 0);
}

/// The job queue unavailable while recording: the events are recorded anyway (recording never
/// waits for customers), the records are retried for their announcements only, and the retry
/// adds no row.
#[tokio::test]
async fn a_job_queue_outage_retries_the_announcements_without_duplicating_rows() {
    let server = MockServer::start().await;
    let env = Env::new("outage", &server).await;
    let missing = Arc::new(SqsQueue::new(
        env.sqs.clone(),
        format!("{}-missing", env.jobs.url()),
    ));
    let broken = env.recorder(missing as _, 12);
    let batch = as_records(&history());
    let report = broken.process(&batch).await;
    assert_eq!(report.recorded, 8);
    let mut retried = report.failures.clone();
    retried.sort();
    // Every record with something to announce (m-2's outcome announces nothing itself).
    let mut want: Vec<String> = [0, 2, 3, 4, 5, 6, 7]
        .iter()
        .map(|i| format!("ev-{i}"))
        .collect();
    want.sort();
    assert_eq!(retried, want);
    assert_eq!(
        env.db.message("m-2").await.unwrap().unwrap().events.len(),
        5,
        "recorded before anything was announced"
    );
    let rows = |db: MysqlRecords| async move {
        let mut counts = Vec::new();
        for table in [
            "messages",
            "message_recipients",
            "send_attempts",
            "delivery_events",
        ] {
            let n: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                    .fetch_one(db.pool())
                    .await
                    .unwrap();
            counts.push(n);
        }
        counts
    };
    let before = rows(env.db.clone()).await;

    let fixed = env.recorder(Arc::clone(&env.jobs) as _, 12);
    let again: Vec<Received> = batch
        .into_iter()
        .filter(|r| report.failures.contains(&r.message_id))
        .collect();
    let report = fixed.process(&again).await;
    assert_eq!(report.failures, Vec::<String>::new());
    assert_eq!(Env::drain(&env.jobs, Duration::from_secs(1)).await.len(), 2);
    assert_eq!(rows(env.db.clone()).await, before);
}
