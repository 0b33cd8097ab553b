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
    assert!(second.contains("database is at migration 5"), "{second}");

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
        "--table",
        &table,
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let (list, _) = text(&gateway(&["suppression", "list", "--table", &table]));
    assert!(list.contains("gone@example.org  hard_bounce"), "{list}");
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
        "--table",
        &table,
    ]));
    assert!(removed.contains("removed gone@example.org"), "{removed}");
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

    let out = gateway(&["suppression", "add", "not-an-address", "--table", &table]);
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
