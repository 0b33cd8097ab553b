//! `gateway serve` and `gateway send` as a developer runs them: the binary started in a scratch
//! directory, driven over HTTP, its captured mail read from disk. One test also runs it
//! against the emulator (SQS and DynamoDB in moto), the way acceptance runs do.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway_core::queue::sqs::{client_from_env, create_queue};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gw-serve-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `gateway serve`, stopped when dropped.
struct Server {
    child: Child,
    base: String,
    token: String,
    /// What serve printed before it was ready.
    banner: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_command(dir: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .current_dir(dir)
        .env_remove("GATEWAY_API_TOKEN")
        .env_remove("GATEWAY_MODE")
        .env_remove("QUEUE_DAILY_RATE_LIMIT");
    command
}

/// Starts `gateway serve` in `dir` and reads its banner. Its log goes to `dir/serve.log`, shown
/// when the banner is incomplete.
fn serve(dir: &Path, extra: &[&str]) -> Server {
    serve_with_env(dir, extra, &[])
}

/// [`serve`] with these variables in its environment.
fn serve_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let mut child = serve_command(dir, extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("gateway serve starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut base = None;
    // A supplied token is not printed; a generated one is.
    let mut token = extra
        .iter()
        .position(|a| *a == "--token")
        .and_then(|i| extra.get(i + 1))
        .map(|t| (*t).to_owned());
    let mut banner = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if let Some(rest) = line.strip_prefix("gateway serve listening on ") {
            base = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("api token:")
            && token.is_none()
        {
            token = Some(rest.trim().to_owned());
        }
        if line.starts_with("stop with") {
            break;
        }
    }
    // Keep draining stdout so that a later line never meets a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let log = || std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
    let (Some(base), Some(token)) = (base, token) else {
        panic!("serve printed no address or token; its log:\n{}", log());
    };
    Server {
        child,
        base,
        token,
        banner,
    }
}

async fn record(server: &Server, id: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .get(format!("{}/api/messages/{id}", server.base))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Polls the record until it is `sent` (bounded: fails after 30 s).
async fn until_sent(server: &Server, id: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (status, body) = record(server, id).await;
        if status == 200 && body["status"] == "sent" {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{id} not sent: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn eml_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".eml"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn serve_on_embedded_defaults_sends_a_posted_message_to_the_outbox() {
    let dir = scratch("local");
    let server = serve(&dir, &[]);
    // The example pins `mailgun-primary`, which the embedded config lacks: the local config lets
    // pinned messages fall back to normal routing, so the capture gateway takes it.
    let body = std::fs::read_to_string(repo("examples/message.json")).unwrap();
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let posted = reqwest::Client::new()
        .post(format!("{}/api/messages", server.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status().as_u16(), 202);
    let answer: serde_json::Value = posted.json().await.unwrap();
    assert_eq!(answer["message_id"], id.as_str());

    let record = until_sent(&server, &id).await;
    assert_eq!(record["gateway_id"], "local-capture");
    let recipients = record["recipients"].as_array().unwrap();
    assert_eq!(recipients.len(), 2, "{record}");
    assert!(recipients.iter().all(|r| r["status"] == "SENT"), "{record}");
    let outbox = dir.join(".local/outbox");
    assert_eq!(eml_files(&outbox), [format!("{id}.eml")]);
    let eml = std::fs::read_to_string(outbox.join(format!("{id}.eml"))).unwrap();
    assert!(
        eml.contains(&format!("X-Gateway-Message-Id: {id}")),
        "{eml}"
    );
    assert!(eml.contains("letter.pdf"), "the attachment is kept:\n{eml}");
}

#[tokio::test]
async fn status_routes_need_the_token_and_bad_messages_get_a_clear_400() {
    let dir = scratch("auth");
    let server = serve(&dir, &["--token", "local-test-token"]);
    assert!(
        !server.banner.contains("local-test-token"),
        "a supplied token is not printed:\n{}",
        server.banner
    );
    let client = reqwest::Client::new();
    for path in [
        "/api/messages/anything",
        "/api/gateways/config",
        "/api/gateways/status",
        "/api/gateways/health",
        "/api/gateways/metrics",
        "/status",
    ] {
        let response = client
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{path}");
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic "),
            "a browser is asked for the token"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        let basic_wrong = client
            .get(format!("{}{path}", server.base))
            .basic_auth("oncall", Some("nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(basic_wrong.status().as_u16(), 401, "{path}");
        let wrong = client
            .get(format!("{}{path}", server.base))
            .bearer_auth("local-test-tokeX")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status().as_u16(), 401, "{path}");
    }
    let (status, body) = record(&server, "never-sent").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let config: serde_json::Value = client
        .get(format!("{}/api/gateways/config", server.base))
        .bearer_auth("local-test-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["gateways"][0]["id"], "local-capture");

    // With the token: the gateways' live state, health and metrics of the embedded config,
    // and the page, which a browser opens with the token as the Basic password.
    for (path, field) in [
        ("/api/gateways/status", "gateways"),
        ("/api/gateways/health", "status"),
        ("/api/gateways/metrics", "windows"),
    ] {
        let response = client
            .get(format!("{}{path}", server.base))
            .bearer_auth("local-test-token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(!body[field].is_null(), "{path}: {body}");
    }
    let page = client
        .get(format!("{}/status", server.base))
        .basic_auth("oncall", Some("local-test-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.contains("local-capture"), "{html}");
    assert!(html.contains("All 2 gateways can send now."), "{html}");

    let unknown = client
        .get(format!("{}/api/nothing-here", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    let body: serde_json::Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    let bad = client
        .post(format!("{}/api/messages", server.base))
        .header("content-type", "application/json")
        .body(r#"{"id": "x", "from": "not an address", "to": ["p@example.org"], "text": "t"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_message");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("from") && message.contains("subject"),
        "{message}"
    );
}

#[tokio::test]
async fn send_local_enqueues_through_a_running_serve() {
    let dir = scratch("send");
    let server = serve(&dir, &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["send", "--local", &server.base])
        .arg(repo("events/message.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("hello-2026-11-28-0001"), "{stdout}");
    until_sent(&server, "hello-2026-11-28-0001").await;

    // An invalid file is refused before anything is sent, naming the fields.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"from": "a@clinic.example", "to": []}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["send", "--local", &server.base])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("subject: required"), "{stderr}");

    // Poison goes straight to a queue only: the local route validates what it enqueues.
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["send", "--no-validate", "--local", &server.base])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn serve_against_the_emulator_polls_sqs_and_keeps_state_in_dynamodb() {
    if std::env::var_os("MOTO_URL").is_none() {
        panic!(
            "MOTO_URL is unset: this test needs the emulator. Run `scripts/services up && \
             source .local/services.env` first (scripts/test does it)."
        );
    }
    let dir = scratch("aws");
    let tag = dir.file_name().unwrap().to_string_lossy().replace('.', "-");
    let sqs = client_from_env().await;
    let outbound = create_queue(&sqs, &format!("{tag}-out"), None)
        .await
        .unwrap();
    let events = create_queue(&sqs, &format!("{tag}-events"), None)
        .await
        .unwrap();
    let table = format!("{tag}-state");
    let created = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["state", "create-table", "--table", &table])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "gateways": [{"id": "capture", "type": "capture", "display_name": "capture",
                          "capture": {"directory": "outbox"}, "routing": {"can_route": ["*"]}}]
        })
        .to_string(),
    )
    .unwrap();
    let server = serve(
        &dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--sqs-queue-url",
            &outbound,
            "--events-queue-url",
            &events,
            "--dynamodb",
            "--table",
            &table,
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["send", "--queue-url", &outbound])
        .arg(repo("events/message.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until_captured(&dir, "outbox", 1).await;
    assert_eq!(
        eml_files(&dir.join("outbox")),
        ["hello-2026-11-28-0001.eml"]
    );
    // The record of delivery is the recorder's, not this process's: said plainly.
    let (status, body) = record(&server, "hello-2026-11-28-0001").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (501, Some("records_not_here")),
        "{body}"
    );
    // A poison message, sent on purpose, is rejected and acknowledged, not retried.
    let poison = dir.join("poison.json");
    std::fs::write(&poison, r#"{"id": "poison-1", "from": "not an address"}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["send", "--no-validate", "--queue-url", &outbound])
        .arg(&poison)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both outcome events reach the events queue (beside the health checker's health and
    // config events).
    let events = gateway_core::queue::sqs::SqsQueue::new(sqs, events);
    let mut bodies: Vec<String> = Vec::new();
    let started = Instant::now();
    let outcomes = |bodies: &[String]| {
        bodies
            .iter()
            .filter(|b| b.contains("\"type\":\"outcome\""))
            .count()
    };
    while outcomes(&bodies) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "outcome events missing; got {bodies:?}"
        );
        let received = gateway_core::queue::Queue::receive(
            &events,
            10,
            Duration::from_secs(1),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        bodies.extend(received.into_iter().map(|r| r.body));
    }
    let event = |id: &str| -> serde_json::Value {
        bodies
            .iter()
            .map(|b| serde_json::from_str::<serde_json::Value>(b).unwrap())
            .find(|e| e["message_id"] == id)
            .unwrap_or_else(|| panic!("no event for {id} in {bodies:?}"))
    };
    assert_eq!(event("hello-2026-11-28-0001")["outcome"], "sent");
    assert_eq!(event("poison-1")["outcome"], "rejected");
    assert_eq!(
        eml_files(&dir.join("outbox")),
        ["hello-2026-11-28-0001.eml"],
        "nothing sent for the poison message"
    );
}

#[tokio::test]
async fn sigterm_stops_serve_with_exit_0_after_its_work() {
    let dir = scratch("term");
    let mut server = serve(&dir, &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["send", "--local", &server.base])
        .arg(repo("events/message.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until_sent(&server, "hello-2026-11-28-0001").await;

    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("stopping"), "{log}");
}

#[test]
fn serve_refuses_an_invalid_config_naming_every_problem_by_path() {
    let dir = scratch("badconfig");
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "gateways": [
                {"id": "c", "type": "capture", "display_name": "c",
                 "routing": {"can_route": ["*"], "failover_to": ["nowhere"]}}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let out = serve_command(&dir, &["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "gateways[0].capture: required",
        "gateways[0].routing.failover_to[0]",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "nothing is served"
    );
}

/// A body without `id` is given one before it is queued, so it has one key however often the
/// queue send is retried; the answer names it and the record is found under it.
#[tokio::test]
async fn a_posted_message_without_id_is_keyed_before_it_is_queued() {
    let dir = scratch("noid");
    let server = serve(&dir, &[]);
    let body = serde_json::json!({
        "from": "frontdesk@clinic.example", "to": ["patient@example.org"],
        "subject": "No id", "text": "Keyed by the gateway."
    });
    let posted = reqwest::Client::new()
        .post(format!("{}/api/messages", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status().as_u16(), 202);
    let answer: serde_json::Value = posted.json().await.unwrap();
    let id = answer["message_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("gw-") && id.len() == 35, "{answer}");
    assert_ne!(answer["message_id"], answer["queue_message_id"]);
    let record = until_sent(&server, &id).await;
    assert_eq!(record["gateway_id"], "local-capture");
}

#[test]
fn serve_refuses_a_visibility_timeout_in_which_nothing_could_be_sent() {
    let dir = scratch("vis");
    let out = serve_command(&dir, &["--visibility-timeout", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--visibility-timeout"), "{stderr}");
}

/// Customer webhooks in the local run: the endpoint of the config receives each recipient's
/// `send` event of the captured message, signed as Mandrill signs.
#[tokio::test]
async fn serve_delivers_signed_customer_webhooks_for_a_captured_message() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&hook)
        .await;
    let dir = scratch("hooks");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("examples/local.json")).unwrap())
            .unwrap();
    let url = format!("{}/hook", hook.uri());
    config["customer_webhooks"] = serde_json::json!([{"id": "dev", "url": url, "key": "dev-key"}]);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let server = serve(&dir, &["--config", "config.json"]);
    let body = std::fs::read_to_string(repo("examples/message.json")).unwrap();
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // With a config of its own, enqueueing needs the token.
    let anonymous = reqwest::Client::new()
        .post(format!("{}/api/messages", server.base))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let posted = reqwest::Client::new()
        .post(format!("{}/api/messages", server.base))
        .header("content-type", "application/json")
        .bearer_auth(&server.token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status().as_u16(), 202);
    until_sent(&server, &id).await;

    let started = Instant::now();
    let request = loop {
        if let Some(r) = hook.received_requests().await.unwrap().into_iter().next() {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no customer webhook arrived; serve's log:\n{}",
            std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let form = String::from_utf8(request.body.clone()).unwrap();
    let parsed = reqwest::Url::parse(&format!("http://form.invalid/?{form}")).unwrap();
    let (name, events) = parsed.query_pairs().next().unwrap();
    assert_eq!(name, "mandrill_events");
    let signature = request.headers.get("x-mandrill-signature").unwrap();
    assert!(gateway_core::mandrill::verify(
        b"dev-key",
        &url,
        &events,
        signature.to_str().unwrap()
    ));
    let events: Vec<serde_json::Value> = serde_json::from_str(&events).unwrap();
    assert_eq!(events.len(), 2, "one send per recipient: {events:?}");
    for e in &events {
        assert_eq!(e["event"], "send");
        assert_eq!(e["msg"]["_id"], id.as_str());
    }
}

/// `POST /webhooks/{provider}` is served with the webhooks function's edge: without a key in the
/// config the route answers 404 in JSON; with one, a correctly signed but old request (the
/// derived Mailgun vector, signed in 2023) is refused as stale, so the signature was checked.
#[tokio::test]
async fn serve_answers_provider_webhooks_like_the_function() {
    let dir = scratch("webhooks");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("examples/local.json")).unwrap())
            .unwrap();
    config["gateways"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": "mg", "type": "mailgun", "enabled": false,
            "mailgun": {"api_key": "key-local", "domain": "mg.example.com",
                        "webhook_signing_key": "WEBHOOK_SIGNING_KEY"},
            "routing": {"can_route": ["*"]}
        }));
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let body = serde_json::json!({
        "signature": {"timestamp": "1700000000",
            "token": "0123456789abcdef0123456789abcdef0123456789abcdef01",
            "signature": "01cbfb616a25c3c692f2c338aefd48b4063a79d94f45af2d5f8d3114731f01b5"},
        "event-data": {"event": "delivered", "id": "e", "timestamp": 1700000000.0,
            "recipient": "p@x.example"}
    })
    .to_string();
    let post = |base: String, body: String| async move {
        let r = reqwest::Client::new()
            .post(format!("{base}/webhooks/mailgun"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };

    let plain = serve(&dir, &[]);
    let (status, answer) = post(plain.base.clone(), body.clone()).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (404, Some("not_configured"))
    );
    drop(plain);

    let keyed = serve(&dir, &["--config", "config.json"]);
    let (status, answer) = post(keyed.base.clone(), body.clone()).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("stale_timestamp")),
        "{answer}"
    );
    let forged = body.replace("\"01cbfb", "\"02cbfb");
    let (status, answer) = post(keyed.base.clone(), forged).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("invalid_signature"))
    );
}

/// A web page the operator opens cannot make serve send mail: the enqueue route takes JSON
/// only (a cross-site form or plain-text post is refused), refuses another web origin, and
/// refuses a Host that is not serve's own (a DNS-rebinding page reaches 127.0.0.1 under its
/// own name). The same request from the command line goes through.
#[tokio::test]
async fn the_enqueue_route_refuses_what_a_foreign_web_page_can_send() {
    let dir = scratch("xsite");
    let server = serve(&dir, &[]);
    let body = std::fs::read_to_string(repo("events/message.json")).unwrap();
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let client = reqwest::Client::new();
    let post = |content_type: &'static str, extra: Vec<(&'static str, String)>| {
        let mut request = client
            .post(format!("{}/api/messages", server.base))
            .header("content-type", content_type)
            .body(body.clone());
        for (name, value) in extra {
            request = request.header(name, value);
        }
        request.send()
    };
    type Case = (
        &'static str,
        &'static str,
        Vec<(&'static str, String)>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "a form post",
            "application/x-www-form-urlencoded",
            vec![],
            415,
            "json_required",
        ),
        (
            "a plain-text fetch",
            "text/plain",
            vec![],
            415,
            "json_required",
        ),
        (
            "another origin",
            "application/json",
            vec![("origin", "https://evil.example".into())],
            403,
            "foreign_origin",
        ),
        (
            "a rebinding host name",
            "application/json",
            vec![("host", format!("evil.example:{port}"))],
            403,
            "foreign_host",
        ),
    ];
    for (case, content_type, extra, status, code) in cases {
        let response = post(content_type, extra).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{case}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{case}");
        if code == "foreign_host" {
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(
                message.ends_with("are refused (DNS rebinding)"),
                "{message}"
            );
        }
    }
    let own = post(
        "application/json; charset=utf-8",
        vec![("origin", format!("http://127.0.0.1:{port}"))],
    )
    .await
    .unwrap();
    assert_eq!(own.status().as_u16(), 202, "its own page, or curl, is fine");
    let localhost = post(
        "application/json",
        vec![("host", format!("localhost:{port}"))],
    )
    .await
    .unwrap();
    assert_eq!(localhost.status().as_u16(), 202);
}

/// The database URL, password included, can stay out of the process list: `--database-url`
/// takes a reference such as `env:NAME`, resolved like every secret.
#[tokio::test]
async fn serve_reads_its_database_url_from_a_reference() {
    let (_, url) = gateway_tests::fresh_database_with_url("serve_ref").await;
    let dir = scratch("dbref");
    let server = serve_with_env(
        &dir,
        &["--database-url", "env:GW_SERVE_TEST_DATABASE_URL"],
        &[("GW_SERVE_TEST_DATABASE_URL", &url)],
    );
    assert!(
        server.banner.contains("record:         MySQL"),
        "{}",
        server.banner
    );
    let password = url
        .split(':')
        .nth(2)
        .and_then(|p| p.split('@').next())
        .unwrap();
    assert!(!server.banner.contains(password), "{}", server.banner);
}

#[tokio::test]
async fn the_message_search_finds_a_message_sent_through_serve_by_its_recipient_in_any_case() {
    let dir = scratch("search");
    let server = serve(&dir, &["--token", "search-token"]);
    let id = "search-serve-1";
    let message = serde_json::json!({
        "id": id, "from": "Dr Ada <Ada@Clinic.example>", "to": ["Patient.Results@Example.ORG"],
        "subject": "Your results", "text": "Your results are ready.",
    });
    let client = reqwest::Client::new();
    let posted = client
        .post(format!("{}/api/messages", server.base))
        .bearer_auth(&server.token)
        .json(&message)
        .send()
        .await
        .unwrap();
    assert_eq!(
        posted.status().as_u16(),
        202,
        "POST /api/messages still enqueues"
    );
    until_sent(&server, id).await;

    let url = format!(
        "{}/api/messages?recipient=patient.results%40example.org",
        server.base
    );
    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(
        anonymous.status().as_u16(),
        401,
        "the search needs the token"
    );
    let found = client
        .get(&url)
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(found.status().as_u16(), 200);
    let found: serde_json::Value = found.json().await.unwrap();
    assert_eq!(found["messages"].as_array().unwrap().len(), 1, "{found}");
    let hit = &found["messages"][0];
    assert_eq!(hit["message_id"], id);
    assert_eq!(hit["status"], "sent");
    // The local part keeps its case (the gateway lower-cases only the domain).
    assert_eq!(
        hit["recipients"][0]["address"],
        "Patient.Results@example.org"
    );
    assert!(hit.get("text").is_none(), "no body in a hit: {hit}");
    let (status, record) = record(&server, id).await;
    assert_eq!(
        (status, &hit["link"]),
        (200, &serde_json::json!(format!("/api/messages/{id}")))
    );
    assert_eq!(record["message_id"], id);

    let refused = client
        .get(format!("{}/api/messages?status=sent", server.base))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);

    // The CLI against the running serve.
    let cli = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "messages",
            "search",
            "--api",
            &server.base,
            "--token",
            &server.token,
        ])
        .args(["--recipient", "PATIENT.RESULTS@example.org"])
        .env_remove("GATEWAY_API_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(
        stdout.contains(id) && stdout.contains("1 message(s); no more pages"),
        "{stdout}"
    );
    let unbounded = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "messages",
            "search",
            "--api",
            &server.base,
            "--status",
            "sent",
        ])
        .output()
        .unwrap();
    assert_eq!(unbounded.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unbounded.stderr).contains("unbounded"));
}

/// A scratch directory, an outbound queue and a state table on the emulator, each named after
/// the directory.
struct Emulated {
    dir: PathBuf,
    tag: String,
    outbound: String,
    table: String,
}

async fn emulated(name: &str) -> Emulated {
    if std::env::var_os("MOTO_URL").is_none() {
        panic!("MOTO_URL is unset: run `scripts/services up && source .local/services.env` first");
    }
    let dir = scratch(name);
    let tag = dir.file_name().unwrap().to_string_lossy().replace('.', "-");
    let sqs = client_from_env().await;
    let outbound = create_queue(&sqs, &format!("{tag}-out"), None)
        .await
        .unwrap();
    let table = format!("{tag}-state");
    let created = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["state", "create-table", "--table", &table])
        .output()
        .unwrap();
    assert!(created.status.success());
    Emulated {
        dir,
        tag,
        outbound,
        table,
    }
}

/// Runs `gateway ctl …` against the emulator's state table; its stdout.
fn ctl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("ctl")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gateway ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits (at most 60 s) until `outbox` in `dir` holds `n` captured mails; the serve log in the
/// failure message.
async fn until_captured(dir: &Path, outbox: &str, n: usize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let files = eml_files(&dir.join(outbox));
        if files.len() >= n {
            return files;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{outbox}: {} of {n} captured; serve log:\n{}",
            files.len(),
            std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_gateway_paused_with_ctl_gets_no_call_from_either_of_two_serve_instances() {
    let Emulated {
        dir,
        tag,
        outbound,
        table,
    } = emulated("levers").await;
    let config = dir.join("config.json");
    let gateway = |id: &str, priority: u32| {
        serde_json::json!({"id": id, "type": "capture", "display_name": id, "priority": priority,
            "capture": {"directory": format!("outbox-{id}")}, "routing": {"can_route": ["*"]}})
    };
    std::fs::write(
        &config,
        serde_json::json!({"gateways": [gateway("a", 1), gateway("b", 2)]}).to_string(),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let args = [
        "--config",
        config,
        "--sqs-queue-url",
        &outbound,
        "--dynamodb",
        "--table",
        &table,
    ];
    let first = serve(&dir, &args);
    let _second = serve(&dir, &args);

    let done = ctl(&[
        "pause",
        "a",
        "--reason",
        "provider incident",
        "--config",
        config,
        "--table",
        &table,
    ]);
    assert!(done.contains("pause a: done by"), "{done}");
    // Sent at once: every instance reads the levers with each batch.
    let send = |n: usize| {
        for i in 0..n {
            let body = dir.join(format!("m-{tag}-{i}.json"));
            std::fs::write(
                &body,
                serde_json::json!({"id": format!("lever-{n}-{i}"), "from": "dr@clinic.example",
                    "to": ["p@example.org"], "subject": "Results", "text": "Ready"})
                .to_string(),
            )
            .unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
                .args(["send", "--queue-url", &outbound])
                .arg(&body)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    send(6);
    until_captured(&dir, "outbox-b", 6).await;
    assert!(
        eml_files(&dir.join("outbox-a")).is_empty(),
        "a paused gateway got a call"
    );

    // The status API of either instance shows who paused it and why.
    let status: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/gateways/status", first.base))
        .bearer_auth(&first.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a = &status["gateways"][0];
    assert_eq!(a["can_send"], false, "{a}");
    assert_eq!(a["levers"][0]["lever"], "paused", "{a}");
    assert_eq!(a["levers"][0]["reason"], "provider incident", "{a}");

    ctl(&[
        "resume",
        "a",
        "--reason",
        "provider recovered",
        "--config",
        config,
        "--table",
        &table,
    ]);
    send(2);
    until_captured(&dir, "outbox-a", 2).await;
    assert_eq!(eml_files(&dir.join("outbox-b")).len(), 6);

    let history: serde_json::Value = serde_json::from_str(&ctl(&[
        "history", "a", "--json", "--config", config, "--table", &table,
    ]))
    .unwrap();
    let actions: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["resume", "pause"]);
    assert!(history[0]["by"].as_str().is_some_and(|b| !b.is_empty()));
}

#[tokio::test]
async fn a_pushed_config_is_taken_up_by_two_running_serve_instances_and_an_invalid_one_is_refused()
{
    let Emulated {
        dir,
        tag,
        outbound,
        table,
    } = emulated("live").await;
    let write = |name: &str, a: u32, b: u32| {
        let gateway = |id: &str, priority: u32| {
            serde_json::json!({"id": id, "type": "capture", "display_name": id,
                "priority": priority, "capture": {"directory": format!("outbox-{id}")},
                "routing": {"can_route": ["*"]}})
        };
        let path = dir.join(name);
        std::fs::write(
            &path,
            serde_json::json!({"gateways": [gateway("a", a), gateway("b", b)]}).to_string(),
        )
        .unwrap();
        path.to_str().unwrap().to_owned()
    };
    let first_config = write("first.json", 1, 2);
    let args = [
        "--config",
        &first_config,
        "--sqs-queue-url",
        &outbound,
        "--dynamodb",
        "--table",
        &table,
        "--config-poll",
        "2s",
    ];
    let servers = [serve(&dir, &args), serve(&dir, &args)];
    let gateway = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(args)
            .output()
            .unwrap()
    };

    // The deployed file published as it is: the baseline later versions are compared with.
    let out = gateway(&[
        "config",
        "push",
        &first_config,
        "--reason",
        "baseline",
        "--table",
        &table,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing published yet"));

    // An invalid config is refused, naming the path, and nothing is published.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"gateways": [{"id": "a", "type": "capture"}]}"#).unwrap();
    let out = gateway(&[
        "config",
        "push",
        bad.to_str().unwrap(),
        "--reason",
        "typo",
        "--table",
        &table,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gateways[0]") && stderr.contains("nothing published"),
        "{stderr}"
    );

    // b first now: pushed, and taken up by both instances without a restart.
    let second_config = write("second.json", 2, 1);
    let out = gateway(&[
        "config",
        "push",
        &second_config,
        "--reason",
        "move traffic to b",
        "--table",
        &table,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("~ gateways[b].priority: 2 → 1"), "{stdout}");
    assert!(stdout.contains("published version 2"), "{stdout}");
    let started = Instant::now();
    for server in &servers {
        loop {
            let answer: serde_json::Value = reqwest::Client::new()
                .get(format!("{}/api/gateways/config", server.base))
                .bearer_auth(&server.token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let b = answer["gateways"]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["id"] == "b")
                .cloned()
                .unwrap();
            if b["priority"] == 1 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} still on the first config: {answer}",
                server.base
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    for i in 0..4 {
        let body = dir.join(format!("m-{i}.json"));
        std::fs::write(
            &body,
            serde_json::json!({"id": format!("live-{tag}-{i}"), "from": "dr@clinic.example",
                "to": ["p@example.org"], "subject": "Results", "text": "Ready"})
            .to_string(),
        )
        .unwrap();
        let out = gateway(&["send", "--queue-url", &outbound, body.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    until_captured(&dir, "outbox-b", 4).await;
    assert!(
        eml_files(&dir.join("outbox-a")).is_empty(),
        "a is second now"
    );

    // The version is kept with who published it; the same file again changes nothing.
    let out = gateway(&["config", "diff", &second_config, "--table", &table]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = gateway(&["config", "history", "--table", &table]);
    let history = String::from_utf8_lossy(&out.stdout);
    assert!(
        history.contains("#2 ") && history.contains("move traffic to b"),
        "{history}"
    );
    assert!(history.contains("2 versions"), "{history}");
}

/// The `workspace_daily` use of the first gateway, from the status API.
async fn day_used(server: &Server) -> u64 {
    let status: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/gateways/status", server.base))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    status["gateways"][0]["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["level"] == "workspace_daily")
        .and_then(|u| u["used"].as_u64())
        .unwrap()
}

#[tokio::test]
async fn a_transactional_message_is_sent_beside_a_bulk_backlog_that_cannot_take_its_reserve() {
    let dir = scratch("lanes");
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({"gateways": [{"id": "cap", "type": "capture", "display_name": "cap",
            "capture": {"directory": "outbox"}, "routing": {"can_route": ["*"]},
            "rate_limits": {"workspace_daily": 1000, "per_hour": 100000, "per_user_daily": 100000,
                "burst_limit": 1000}}],
            "system_limits": {"transactional_reserve": 0.1}})
        .to_string(),
    )
    .unwrap();
    let server = serve(
        &dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--token",
            "lanes-token",
        ],
    );
    let client = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        let request = client
            .post(format!("{}/api/messages", server.base))
            .bearer_auth(&server.token)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 202);
        }
    };
    // 5,000 bulk messages: the bulk lane takes its 900 of the day's 1,000 and defers the rest.
    use futures::StreamExt;
    futures::stream::iter(0..5_000)
        .for_each_concurrent(16, |i| {
            post(
                serde_json::json!({"id": format!("bulk-{i}"), "stream": "bulk",
                "from": "news@clinic.example", "to": ["p@example.org"],
                "subject": "Newsletter", "text": "…"}),
            )
        })
        .await;
    let started = Instant::now();
    while day_used(&server).await < 900 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the bulk lane did not reach its share"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The reserve is still there for the transactional message, sent beside the backlog.
    post(
        serde_json::json!({"id": "results-1", "from": "dr@clinic.example",
        "to": ["p@example.org"], "subject": "Your results", "text": "Ready"}),
    )
    .await;
    let record = until_sent(&server, "results-1").await;
    assert_eq!(record["status"], "sent");
    // 900 bulk and the transactional one; the stored count also holds what the transactional
    // lane took ahead of its need (at most a 32nd of the 99 it found left: 3).
    let used = day_used(&server).await;
    assert!(
        (901..=904).contains(&used),
        "900 bulk, the transactional one and at most 3 held: {used}"
    );
    let bulk_sent = eml_files(&dir.join("outbox"))
        .iter()
        .filter(|f| f.starts_with("bulk-"))
        .count();
    assert_eq!(bulk_sent, 900, "bulk never took the reserve");
}

#[tokio::test]
async fn an_attachment_larger_than_the_queue_takes_travels_through_s3() {
    let Emulated {
        dir,
        tag,
        outbound,
        table,
    } = emulated("s3").await;
    // A bucket on the emulator (it takes an unsigned PUT).
    let bucket = format!("att-{}", tag.to_ascii_lowercase())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(60)
        .collect::<String>();
    let moto = std::env::var("MOTO_URL").unwrap();
    let created = reqwest::Client::new()
        .put(format!("{}/{bucket}", moto.trim_end_matches('/')))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{}", created.status());
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({"gateways": [{"id": "cap", "type": "capture", "display_name": "cap",
            "capture": {"directory": "outbox"}, "routing": {"can_route": ["*"]}}]})
        .to_string(),
    )
    .unwrap();
    let _server = serve(
        &dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--sqs-queue-url",
            &outbound,
            "--dynamodb",
            "--table",
            &table,
            "--attachments-bucket",
            &bucket,
        ],
    );
    // 2 MB of scan: twice what an SQS message may hold, once base64-encoded even more.
    use base64::Engine;
    let scan: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let message = dir.join("referral.json");
    std::fs::write(
        &message,
        serde_json::json!({"id": format!("ref-{tag}"), "from": "dr@clinic.example",
            "to": ["p@example.org"], "subject": "Referral", "text": "Attached.",
            "attachments": [{"filename": "scan 1.pdf", "content_type": "application/pdf",
                "content": base64::engine::general_purpose::STANDARD.encode(&scan)}]})
        .to_string(),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["send", "--queue-url", &outbound, "--bucket", &bucket])
        .arg(&message)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("to s3://{bucket}/ref-{tag}/0-scan_1.pdf")),
        "{stdout}"
    );
    let captured = until_captured(&dir, "outbox", 1).await;
    let eml = std::fs::read_to_string(dir.join("outbox").join(&captured[0])).unwrap();
    // The whole scan is in the mail, base64 in lines of 76.
    let encoded: String = eml
        .lines()
        .skip_while(|l| !l.contains("scan 1.pdf"))
        .skip_while(|l| !l.is_empty())
        .skip(1)
        .take_while(|l| !l.is_empty() && !l.starts_with("--"))
        .collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.as_bytes())
        .unwrap();
    assert_eq!(decoded.len(), scan.len());
    assert!(decoded == scan, "the attachment arrived changed");
}
