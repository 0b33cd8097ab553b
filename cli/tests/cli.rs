//! The `gateway` binary as an operator runs it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn gateway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .env_remove("GATEWAY_MODE")
        .env_remove("QUEUE_DAILY_RATE_LIMIT")
        .output()
        .expect("the gateway binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn config_check_accepts_the_example_and_summarises_each_gateway() {
    let file = repo("examples/gateway-config.json");
    let out = gateway(&["config", "check", file.to_str().unwrap(), "--no-env"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(stdout.contains("mailgun-primary"), "{stdout}");
    assert!(stdout.contains("mailgun-secondary"), "{stdout}");
    assert!(stdout.contains("valid, 2 gateways"), "{stdout}");
}

#[test]
fn config_check_names_every_problem_of_a_broken_config() {
    let file = repo("tests/fixtures/invalid-config.json");
    let out = gateway(&["config", "check", file.to_str().unwrap(), "--no-env"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for needle in [
        ".mailgun.domain: required",
        ".circuit_breaker.timeout",
        ".routing.failover_to[0]",
        "duplicate",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn config_check_warns_on_inline_secrets_on_stderr_only() {
    let dir = std::env::temp_dir().join(format!("gw-cli-inline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let original = std::fs::read_to_string(repo("tests/fixtures/original-gateways.json")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&original).unwrap();
    doc["gateways"][0]["mailgun"]["api_key"] = "key-0123456789abcdef0123".into();
    let file = dir.join("inline.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = gateway(&["config", "check", file.to_str().unwrap(), "--no-env"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stderr.contains("warning: gateways[0].mailgun.api_key"),
        "{stderr}"
    );
    assert!(!stdout.contains("key-0123456789abcdef0123"), "{stdout}");
    assert!(!stderr.contains("key-0123456789abcdef0123"), "{stderr}");
}

#[test]
fn route_picks_the_primary_for_an_ordinary_sender() {
    let file = repo("tests/fixtures/original-gateways.json");
    let out = gateway(&[
        "route",
        "--config",
        file.to_str().unwrap(),
        "--from",
        "sender@example.com",
        "--no-env",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &plan["candidates"][0];
    assert_eq!(first["id"], "test-mailgun-primary", "{plan:#}");
}

#[test]
fn route_sends_an_excluded_sender_to_the_secondary_and_says_why() {
    let file = repo("tests/fixtures/original-gateways.json");
    let args = [
        "route",
        "--config",
        file.to_str().unwrap(),
        "--from",
        "sender@internal.example.com",
        "--no-env",
    ];
    let out = gateway(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let first = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("1."))
        .unwrap_or_default();
    assert!(first.contains("test-mailgun-secondary"), "{stdout}");
    assert!(
        stdout.contains("@internal.example.com"),
        "the exclusion is explained:\n{stdout}"
    );

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let plan: serde_json::Value = serde_json::from_slice(&gateway(&json_args).stdout).unwrap();
    assert_eq!(
        plan["candidates"][0]["id"], "test-mailgun-secondary",
        "{plan:#}"
    );
    let dropped = plan["dropped"].as_array().unwrap();
    assert!(
        dropped.iter().any(|d| d["id"] == "test-mailgun-primary"),
        "{plan:#}"
    );
}

#[test]
fn route_without_any_usable_gateway_exits_1() {
    let file = repo("tests/fixtures/original-gateways.json");
    let out = gateway(&[
        "route",
        "--config",
        file.to_str().unwrap(),
        "--from",
        "sender@example.com",
        "--no-env",
        "--breaker-open",
        "test-mailgun-primary",
        "--breaker-open",
        "test-mailgun-secondary",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("no gateway can take this message"));
}

#[test]
fn convert_legacy_output_passes_config_check() {
    let out = gateway(&[
        "config",
        "convert-legacy",
        repo("examples/workspaces.json").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = std::env::temp_dir().join(format!("gw-cli-legacy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("converted.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let check = gateway(&["config", "check", file.to_str().unwrap(), "--no-env"]);
    assert!(check.status.success(), "{}", text(&check.stderr));
}

#[test]
fn route_reads_a_display_name_sender_as_its_address() {
    let file = repo("tests/fixtures/original-gateways.json");
    let out = gateway(&[
        "route",
        "--config",
        file.to_str().unwrap(),
        "--no-env",
        "--json",
        "--from",
        "Dr. Ada <ada@internal.example.com>",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan["candidates"][0]["id"], "test-mailgun-secondary",
        "{plan:#}"
    );
    assert_eq!(plan["sender"], "ada@internal.example.com");
}

#[test]
fn route_refuses_a_sender_that_is_not_an_address() {
    let file = repo("tests/fixtures/original-gateways.json");
    let out = gateway(&[
        "route",
        "--config",
        file.to_str().unwrap(),
        "--no-env",
        "--from",
        "nobody",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--from"),
        "{}",
        text(&out.stderr)
    );
}
