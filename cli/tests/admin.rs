//! `gateway migrate` against MariaDB and `gateway suppression …` against the emulator, as an
//! operator runs them. Needs `scripts/services up && source .local/services.env`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::process::{Command, Output};

fn gateway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .output()
        .expect("the gateway binary runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is unset: this test needs the local services. Run `scripts/services up && \
             source .local/services.env` first (scripts/test does it)."
        )
    })
}

#[test]
fn migrate_applies_once_then_reports_everything_applied_and_hides_passwords() {
    let server = env("DATABASE_URL");
    let db = format!("cli_migrate_{}", std::process::id());
    let admin = Command::new("mariadb")
        .args(["-h127.0.0.1", "-ugateway_test", "-pgateway_test", "-e"])
        .arg(format!(
            "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db}"
        ))
        .status()
        .unwrap();
    assert!(admin.success());
    let url = format!("{server}/{db}");
    let (first, _) = text(&gateway(&["migrate", "--database-url", &url]));
    assert!(first.contains("0001 record of delivery"), "{first}");
    assert!(first.contains("applied now"), "{first}");
    let (second, _) = text(&gateway(&["migrate", "--database-url", &url]));
    assert!(!second.contains("applied now"), "{second}");
    let latest = gateway_core::records::mysql::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap();
    assert!(
        second.contains(&format!("database is at migration {latest}")),
        "{second}"
    );

    let out = gateway(&[
        "migrate",
        "--database-url",
        &format!("mysql://gateway_test:not-the-password-xyz@127.0.0.1:3306/{db}"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let (stdout, stderr) = text(&out);
    assert!(stderr.contains("Access denied"), "{stderr}");
    assert!(!format!("{stdout}{stderr}").contains("not-the-password-xyz"));
}

#[test]
fn suppressions_are_added_listed_checked_and_removed() {
    env("MOTO_URL");
    let table = format!("cli-supp-{}", std::process::id());
    assert!(
        gateway(&["state", "create-table", "--table", &table])
            .status
            .success()
    );
    let out = gateway(&[
        "suppression",
        "add",
        "Gone@Example.org",
        "--reason",
        "hard_bounce",
        "--note",
        "ticket 12: the mailbox was closed",
        "--table",
        &table,
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let (list, _) = text(&gateway(&["suppression", "list", "--table", &table]));
    assert!(
        list.contains("gone@example.org  all  hard_bounce"),
        "{list}"
    );
    assert!(list.contains("1 suppressed addresses"), "{list}");
    assert_eq!(
        gateway(&[
            "suppression",
            "check",
            "GONE@example.org",
            "--table",
            &table
        ])
        .status
        .code(),
        Some(0)
    );
    let (removed, _) = text(&gateway(&[
        "suppression",
        "remove",
        "gone@example.org",
        "--note",
        "the patient wrote back",
        "--table",
        &table,
    ]));
    assert!(removed.contains("removed gone@example.org"), "{removed}");
    // Both changes audited, newest first, with who and why.
    let (history, _) = text(&gateway(&["suppression", "history", "--table", &table]));
    let lines: Vec<&str> = history.lines().collect();
    assert!(
        lines[0].contains("remove gone@example.org from all by ")
            && lines[0].ends_with(": the patient wrote back"),
        "{history}"
    );
    assert!(
        lines[1].contains("add gone@example.org hard_bounce for all by ")
            && lines[1].ends_with(": ticket 12: the mailbox was closed"),
        "{history}"
    );
    assert!(history.contains("2 entries"), "{history}");
    assert_eq!(
        gateway(&[
            "suppression",
            "check",
            "gone@example.org",
            "--table",
            &table
        ])
        .status
        .code(),
        Some(3)
    );

    let out = gateway(&[
        "suppression",
        "add",
        "not-an-address",
        "--note",
        "x",
        "--table",
        &table,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("not an email address"));
    let out = gateway(&[
        "suppression",
        "add",
        "a@example.org",
        "--reason",
        "bored",
        "--table",
        &table,
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// `gateway dlq` against the emulator: two messages reach the outbound DLQ (one with an `id`,
/// one without), are listed by key and redriven, and come back with their keys: the one without
/// an `id` carries its original SQS message id as `id`, so the ledger and the record still know
/// it although SQS gives it a new message id.
#[test]
fn dead_letters_are_listed_and_redriven_with_their_keys() {
    use gateway_core::queue::sqs::{
        RedrivePolicy, SqsQueue, client_from_env, create_queue, queue_arn,
    };
    use gateway_core::queue::{MAX_RECEIVE, Queue};
    use std::time::Duration;

    env("MOTO_URL");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let name = format!("cli-dlq-{}", std::process::id());
    let (outbound_url, dlq_url, keyless_id) = runtime.block_on(async {
        let client = client_from_env().await;
        let dlq_url = create_queue(&client, &format!("{name}-dlq"), None).await.unwrap();
        let policy = RedrivePolicy {
            dead_letter_arn: queue_arn(&client, &dlq_url).await.unwrap(),
            max_receive_count: 1,
        };
        let outbound_url = create_queue(&client, &format!("{name}-out"), Some(&policy))
            .await
            .unwrap();
        let outbound = SqsQueue::new(client.clone(), outbound_url.clone());
        outbound
            .send(r#"{"id":"inv-1","from":"a@clinic.example","to":["p@example.org"],"subject":"s","text":"t"}"#)
            .await
            .unwrap();
        let keyless_id = outbound
            .send(r#"{"from":"a@clinic.example","to":["p@example.org"],"subject":"s","text":"t"}"#)
            .await
            .unwrap();
        // Received once, never deleted: the next receive moves both to the DLQ.
        let mut received = 0;
        while received < 2 {
            received += outbound
                .receive(MAX_RECEIVE, Duration::from_secs(1), Duration::from_secs(1))
                .await
                .unwrap()
                .len();
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            outbound
                .receive(MAX_RECEIVE, Duration::ZERO, Duration::from_secs(1))
                .await
                .unwrap()
                .is_empty()
        );
        (outbound_url, dlq_url, keyless_id)
    });

    let out = gateway(&["dlq", "list", "--queue-url", &dlq_url]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("inv-1  receives 2"), "{stdout}");
    assert!(
        stdout.contains(&format!("{keyless_id}  receives")),
        "{stdout}"
    );
    assert!(stdout.contains("2 dead letters"), "{stdout}");

    let out = gateway(&["dlq", "show", "inv-1", "--queue-url", &dlq_url]);
    assert!(out.status.success());
    assert!(
        text(&out).0.contains(r#""subject": "s""#),
        "{:?}",
        text(&out)
    );
    let out = gateway(&["dlq", "show", "no-such-key", "--queue-url", &dlq_url]);
    assert_eq!(out.status.code(), Some(1));

    let out = gateway(&[
        "dlq",
        "redrive",
        "--queue-url",
        &dlq_url,
        "--to",
        &outbound_url,
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("moved 2 to") && stdout.contains("(1 given their key as \"id\")"),
        "{stdout}"
    );

    runtime.block_on(async {
        let client = client_from_env().await;
        let dlq = SqsQueue::new(client.clone(), dlq_url);
        assert!(
            dlq.receive(MAX_RECEIVE, Duration::ZERO, Duration::from_secs(1))
                .await
                .unwrap()
                .is_empty()
        );
        let outbound = SqsQueue::new(client, outbound_url);
        let mut keys = Vec::new();
        while keys.len() < 2 {
            for r in outbound
                .receive(MAX_RECEIVE, Duration::from_secs(1), Duration::from_secs(30))
                .await
                .unwrap()
            {
                let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                keys.push(body["id"].as_str().unwrap().to_owned());
                assert_eq!(r.receive_count, 1, "a redriven message starts afresh");
            }
        }
        keys.sort();
        let mut want = vec!["inv-1".to_owned(), keyless_id];
        want.sort();
        assert_eq!(keys, want);
    });
}
