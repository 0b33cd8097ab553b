//! Drift between `template.yaml` and the code it deploys.
//!
//! - Every crate under `functions/` with a `src/main.rs` is built by exactly one
//!   `AWS::Serverless::Function` of the template, through the root `Makefile`'s
//!   `build-<LogicalId>` target (and no template function builds anything else).
//! - Each function's environment in the template (`Globals` merged with its own) is exactly its
//!   crate's `ENV_VARS`, and `ENV_VARS` is exactly what its `wire` reads: each function is wired
//!   for real from a complete environment and [`Startup::variables_read`] says which names it
//!   asked for (plus `RUST_LOG`, read by `startup::init_json_logs`).
//! - Every AWS client each function's wiring builds has bounded waits, and DynamoDB clients have
//!   the SDK's retries off (the store retries).
//! - The queues, table and event sources keep the contracts the code relies on.
//! - Every alarm notifies the alarm topic; the reliability alarms read the metric, namespace and
//!   dimension set the code writes (the sender's and the recorder's EMF lines); the SES event
//!   subscriptions retry within SNS's one-hour limit, then dead-letter into an alarmed queue
//!   SNS may write to (docs/RELIABILITY.md, "Alarms and SNS delivery").
//! - Least privilege: the public webhooks function reads only the webhook verification secrets
//!   (never `ProviderSecretArns`); every function reaches the state table only through
//!   statements bounded by `dynamodb:LeadingKeys`, on key prefixes derived from the code that
//!   makes the keys, with exactly the actions its code uses (no Scan).
//! - Floods: the HTTP API's routes are throttled and the webhooks function has reserved
//!   concurrency.
//!
//! The template uses only long-form intrinsics (`Ref:`, `Fn::GetAtt:` …), so a plain YAML parser
//! reads it.

// Helpers of a test target: a panic there is a test failure with its message.
#![allow(clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gateway_core::startup::Startup;
use serde_norway::Value;

/// Each function crate's declared environment, by its directory under `functions/`. A new
/// function crate must be added here (the first test fails until it is).
const FUNCTIONS: &[(&str, &[&str])] = &[
    ("sender", sender::ENV_VARS),
    ("recorder", recorder::ENV_VARS),
    ("webhooks", webhooks::ENV_VARS),
    ("status", status::ENV_VARS),
    ("health-check", health_check::ENV_VARS),
];

/// The log filter variable `tracing_subscriber::EnvFilter::try_from_default_env` reads.
const RUST_LOG: &str = "RUST_LOG";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn template() -> Value {
    let path = root().join("template.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("template.yaml: {e}"))
}

fn resources(template: &Value) -> Vec<(String, &Value)> {
    template["Resources"]
        .as_mapping()
        .expect("template.yaml has Resources")
        .iter()
        .map(|(k, v)| (k.as_str().expect("logical ids are strings").to_owned(), v))
        .collect()
}

fn of_type<'a>(template: &'a Value, kind: &str) -> Vec<(String, &'a Value)> {
    resources(template)
        .into_iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(kind))
        .collect()
}

/// The function crates: directories of `functions/` holding a `src/main.rs`, with the name of
/// the binary each builds.
fn function_crates() -> BTreeMap<String, String> {
    let dir = root().join("functions");
    let mut crates = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("functions/ exists") {
        let path = entry.expect("readable functions/").path();
        if !path.join("src/main.rs").is_file() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 crate directory")
            .to_owned();
        let manifest = std::fs::read_to_string(path.join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("functions/{name}/Cargo.toml: {e}"));
        crates.insert(name.clone(), binary_name(&manifest, &name));
    }
    crates
}

/// The one binary a function crate builds: its `[[bin]]` name, or the package name when the
/// manifest has no `[[bin]]` section (then `src/main.rs` is the binary).
fn binary_name(manifest: &str, crate_dir: &str) -> String {
    let sections: Vec<&str> = manifest.split("\n[").collect();
    let name_in = |section: &str| {
        section.lines().find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "name").then(|| value.trim().trim_matches('"').to_owned())
        })
    };
    let bins: Vec<&&str> = sections
        .iter()
        .filter(|s| s.starts_with("[bin]]"))
        .collect();
    assert!(
        bins.len() <= 1,
        "functions/{crate_dir} builds {} binaries; a function crate builds one",
        bins.len()
    );
    match bins.first() {
        Some(bin) => name_in(bin),
        None => sections
            .iter()
            .find(|s| s.starts_with("package]"))
            .and_then(|s| name_in(s)),
    }
    .unwrap_or_else(|| panic!("functions/{crate_dir}/Cargo.toml names no binary"))
}

/// The binary each `build-<LogicalId>` target of the root `Makefile` copies
/// (`cp target/lambda/<binary>/bootstrap "$(ARTIFACTS_DIR)/bootstrap"`), and the packages its
/// one `cargo lambda build` builds (`FUNCTIONS := …`).
fn makefile() -> (BTreeMap<String, String>, BTreeSet<String>) {
    let path = root().join("Makefile");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut targets = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut packages = BTreeSet::new();
    for line in text.lines() {
        if let Some(list) = line.strip_prefix("FUNCTIONS := ") {
            packages.extend(list.split_whitespace().map(str::to_owned));
        } else if let Some(id) = line
            .strip_prefix("build-")
            .and_then(|l| l.split(':').next())
        {
            current = Some(id.to_owned());
        } else if let (Some(id), Some(rest)) =
            (&current, line.trim().strip_prefix("cp target/lambda/"))
        {
            let binary = rest.split('/').next().unwrap_or_default().to_owned();
            assert!(
                targets.insert(id.clone(), binary).is_none(),
                "Makefile: build-{id} copies more than one binary"
            );
        }
    }
    (targets, packages)
}

#[test]
fn every_function_crate_is_deployed_by_exactly_one_template_function() {
    let template = template();
    let crates = function_crates();
    assert!(
        !crates.is_empty(),
        "no function crate found under functions/"
    );

    let declared: BTreeSet<&str> = FUNCTIONS.iter().map(|(dir, _)| *dir).collect();
    let found: BTreeSet<&str> = crates.keys().map(String::as_str).collect();
    assert_eq!(
        declared, found,
        "FUNCTIONS in this test must list every function crate (with its ENV_VARS)"
    );

    let (targets, packages) = makefile();
    let crate_dirs: BTreeSet<String> = crates.keys().cloned().collect();
    assert_eq!(
        packages, crate_dirs,
        "the Makefile's FUNCTIONS (left) must be the function crates (right): one cargo invocation builds them all"
    );
    assert!(
        of_type(&template, "AWS::Lambda::Function").is_empty(),
        "functions are deployed as AWS::Serverless::Function, built from their crate"
    );
    let mut built: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, function) in of_type(&template, "AWS::Serverless::Function") {
        assert_eq!(
            function["Metadata"]["BuildMethod"].as_str(),
            Some("makefile"),
            "{id}: Metadata.BuildMethod"
        );
        assert_eq!(
            function["Properties"]["CodeUri"].as_str(),
            Some("."),
            "{id}: CodeUri must be the repository root, where the Makefile is"
        );
        let binary = targets.get(&id).unwrap_or_else(|| {
            panic!("{id}: the Makefile has no build-{id} target copying a bootstrap")
        });
        assert!(
            crates.values().any(|bin| bin == binary),
            "{id} deploys binary {binary:?}, which no function crate builds"
        );
        built.entry(binary.clone()).or_default().push(id);
    }
    for (dir, binary) in &crates {
        let by = built.get(binary).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            by.len(),
            1,
            "functions/{dir} (binary {binary:?}) must be built by exactly one template function, found {by:?}"
        );
    }
}

/// The template function whose Makefile target copies `binary`.
fn template_function<'a>(template: &'a Value, binary: &str) -> (String, &'a Value) {
    let (targets, _) = makefile();
    of_type(template, "AWS::Serverless::Function")
        .into_iter()
        .find(|(id, _)| targets.get(id).map(String::as_str) == Some(binary))
        .unwrap_or_else(|| panic!("no template function builds {binary:?}"))
}

/// Variable names in an `Environment.Variables` mapping (none when absent).
fn variable_names(environment: &Value) -> Vec<String> {
    match &environment["Variables"] {
        Value::Null => Vec::new(),
        Value::Mapping(m) => m
            .keys()
            .map(|k| k.as_str().expect("variable names are strings").to_owned())
            .collect(),
        other => panic!("Environment.Variables must be a plain mapping, found {other:?}"),
    }
}

/// A gateway config with one gateway of every sending type whose secrets are `env:`
/// references, so every function's wiring builds everything it builds in Lambda.
const CONFIG: &str = r#"{
  "gateways": [
    {"id": "mailgun-primary", "type": "mailgun", "display_name": "Mailgun", "priority": 1,
     "mailgun": {"domain": "mg.clinic.example", "api_key": "env:WIRING_TEST_KEY",
                 "webhook_signing_key": "env:WIRING_TEST_KEY"},
     "routing": {"can_route": ["*"]}},
    {"id": "sendgrid-backup", "type": "sendgrid", "display_name": "SendGrid", "priority": 2,
     "sendgrid": {"api_key": "env:WIRING_TEST_KEY"}, "routing": {"can_route": ["*"]}},
    {"id": "ses-bulk", "type": "amazon_ses", "display_name": "SES", "priority": 3,
     "amazon_ses": {"region": "eu-west-1"}, "routing": {"can_route": ["*"]}}
  ]
}"#;

/// Every variable any function reads, with a valid value: each function takes what it needs.
fn complete_environment(config: &Path) -> Vec<(String, String)> {
    let queue = "https://sqs.eu-west-1.amazonaws.com/123456789012/q";
    [
        ("GATEWAY_CONFIG_FILE", config.to_string_lossy().as_ref()),
        ("GATEWAY_STATE_TABLE", "gateway-state"),
        ("OUTBOUND_QUEUE_URL", queue),
        ("OUTBOUND_BULK_QUEUE_URL", queue),
        (
            "OUTBOUND_BULK_QUEUE_ARN",
            "arn:aws:sqs:eu-west-1:123456789012:q-bulk",
        ),
        ("ATTACHMENTS_BUCKET", "clinic-attachments"),
        ("EVENTS_QUEUE_URL", queue),
        ("CUSTOMER_WEBHOOK_QUEUE_URL", queue),
        ("CUSTOMER_WEBHOOK_DLQ_URL", queue),
        ("CUSTOMER_WEBHOOK_MAX_ATTEMPTS", "12"),
        ("CUSTOMER_WEBHOOK_TIMEOUT", "10s"),
        // Nobody listens there: the pools connect lazily, and the recorder's start-up audit
        // gives up quickly.
        ("DATABASE_URL", "mysql://gateway:wiring@127.0.0.1:9/gateway"),
        ("DATABASE_MAX_CONNECTIONS", "2"),
        ("METRICS_NAMESPACE", "MailGateway"),
        ("WIRING_TEST_KEY", "key-0123456789abcdef"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Wires the function in `functions/{dir}` from [`complete_environment`]; the start-up with what
/// it read and built.
async fn wire(dir: &str, config: &Path) -> Startup {
    let mut startup = Startup::with_env(complete_environment(config));
    let wired = match dir {
        "sender" => sender::wire(&mut startup).await.is_some(),
        "recorder" => recorder::wire(&mut startup).await.is_some(),
        "webhooks" => webhooks::wire(&mut startup).await.is_some(),
        "status" => status::wire(&mut startup).await.is_some(),
        "health-check" => health_check::wire(&mut startup).await.is_some(),
        other => panic!("no wiring known for functions/{other}: add it here"),
    };
    assert!(
        wired && startup.problems().is_empty(),
        "functions/{dir} did not wire from a complete environment: {:?}",
        startup.problems()
    );
    startup
}

/// A config file of its own for each caller: the tests using one run in parallel, and each
/// removes its file at the end (a shared file was rewritten or removed under another test).
fn config_file() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("wiring-test-{}-{n}.json", std::process::id()));
    std::fs::write(&path, CONFIG).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    path
}

#[tokio::test]
async fn each_function_gets_exactly_the_variables_its_wiring_reads() {
    let template = template();
    let crates = function_crates();
    let globals = variable_names(&template["Globals"]["Function"]["Environment"]);
    let config = config_file();
    for (dir, env_vars) in FUNCTIONS {
        assert!(!env_vars.is_empty(), "{dir}::ENV_VARS is empty");
        let declared: BTreeSet<String> = env_vars.iter().map(|v| (*v).to_owned()).collect();
        assert_eq!(
            declared.len(),
            env_vars.len(),
            "{dir}::ENV_VARS has a duplicate"
        );

        let mut read = wire(dir, &config).await.variables_read();
        read.insert(RUST_LOG.to_owned());
        assert_eq!(
            read, declared,
            "functions/{dir}: what its wiring reads (left) differs from ENV_VARS (right)"
        );

        let binary = &crates[*dir];
        let (id, function) = template_function(&template, binary);
        let own = variable_names(&function["Properties"]["Environment"]);
        let deployed: BTreeSet<String> = globals.iter().chain(own.iter()).cloned().collect();
        assert_eq!(
            deployed, declared,
            "{id}: template variables (left) differ from {dir}::ENV_VARS (right)"
        );
    }
    let _ = std::fs::remove_file(&config);
}

#[tokio::test]
async fn every_aws_client_a_function_builds_has_bounded_waits_and_dynamodb_no_sdk_retries() {
    let config = config_file();
    for (dir, _) in FUNCTIONS {
        let clients = wire(dir, &config).await.clients();
        assert!(
            clients.iter().any(|c| c.service == "dynamodb"),
            "functions/{dir} builds no DynamoDB client: {clients:?}"
        );
        for client in &clients {
            assert!(
                client.attempt_timeout.is_some() && client.connect_timeout.is_some(),
                "functions/{dir}: a {} client without bounded waits: {client:?}",
                client.service
            );
            if client.service == "dynamodb" {
                assert_eq!(
                    client.max_attempts, 1,
                    "functions/{dir}: the DynamoDB client retries under the store's own policy"
                );
            }
        }
    }
    let _ = std::fs::remove_file(&config);
}

/// The logical id an intrinsic (`{Ref: X}` or `{Fn::GetAtt: [X, Attr]}`) points at.
fn target(value: &Value) -> Option<&str> {
    value["Ref"]
        .as_str()
        .or_else(|| value["Fn::GetAtt"][0].as_str())
}

#[test]
fn queues_table_and_event_sources_keep_the_contracts_of_the_code() {
    let template = template();

    // The state table is what `gateway state create-table` creates.
    let tables = of_type(&template, "AWS::DynamoDB::Table");
    assert_eq!(tables.len(), 1, "one state table");
    let table = &tables[0].1["Properties"];
    let key = gateway_core::state::dynamodb::KEY_ATTRIBUTE;
    assert_eq!(
        table["KeySchema"],
        serde_norway::from_str::<Value>(&format!("[{{AttributeName: {key}, KeyType: HASH}}]"))
            .expect("valid YAML"),
        "key schema: partition key {key} only"
    );
    assert_eq!(
        table["AttributeDefinitions"],
        serde_norway::from_str::<Value>(&format!("[{{AttributeName: {key}, AttributeType: S}}]"))
            .expect("valid YAML")
    );
    assert_eq!(
        table["TimeToLiveSpecification"]["AttributeName"].as_str(),
        Some(gateway_core::state::TTL_ATTRIBUTE)
    );
    assert_eq!(
        table["TimeToLiveSpecification"]["Enabled"].as_bool(),
        Some(true)
    );
    assert_eq!(table["BillingMode"].as_str(), Some("PAY_PER_REQUEST"));

    // Every function is fed by plain event source mappings with partial batch responses, and
    // each queue it reads keeps a record invisible for at least 6 x the function's timeout.
    let mappings = of_type(&template, "AWS::Lambda::EventSourceMapping");
    assert!(!mappings.is_empty(), "no event source mapping");
    let globals_timeout = template["Globals"]["Function"]["Timeout"].as_u64();
    for (id, mapping) in &mappings {
        let p = &mapping["Properties"];
        assert_eq!(
            p["FunctionResponseTypes"][0].as_str(),
            Some("ReportBatchItemFailures"),
            "{id}: the handlers answer with batch item failures"
        );
        let function = target(&p["FunctionName"]).unwrap_or_else(|| panic!("{id}: FunctionName"));
        let queue = target(&p["EventSourceArn"]).unwrap_or_else(|| panic!("{id}: EventSourceArn"));
        let timeout = template["Resources"][function]["Properties"]["Timeout"]
            .as_u64()
            .or(globals_timeout)
            .unwrap_or(3);
        let visibility = template["Resources"][queue]["Properties"]["VisibilityTimeout"]
            .as_u64()
            .unwrap_or(30);
        assert!(
            visibility >= 6 * timeout,
            "{queue}: visibility timeout {visibility}s < 6 x {function}'s {timeout}s"
        );
    }

    // The recorder dead-letters customer-webhook jobs itself, with the reason, after at most
    // CustomerWebhookMaxAttempts receives: the queue's own redrive must come later.
    let max_attempts = template["Parameters"]["CustomerWebhookMaxAttempts"]["MaxValue"]
        .as_u64()
        .expect("CustomerWebhookMaxAttempts has a MaxValue");
    let redrive = template["Resources"]["CustomerWebhookQueue"]["Properties"]["RedrivePolicy"]
        ["maxReceiveCount"]
        .as_u64()
        .expect("the customer-webhook queue has a fixed maxReceiveCount");
    assert!(
        redrive > max_attempts,
        "customer-webhook redrive after {redrive} receives, but up to {max_attempts} attempts are allowed"
    );
}

/// The resource `id` of the template.
fn resource<'a>(template: &'a Value, id: &str) -> &'a Value {
    let r = &template["Resources"][id];
    assert!(!r.is_null(), "template.yaml has no resource {id}");
    r
}

/// `{Ref: name}`.
fn reference(name: &str) -> Value {
    serde_norway::from_str(&format!("{{Ref: {name}}}")).expect("valid YAML")
}

/// The metric names an EMF line declares, and its dimension sets.
fn emf_declarations(line: &str) -> (Vec<String>, serde_json::Value) {
    let line: serde_json::Value = serde_json::from_str(line).expect("an EMF line is JSON");
    let defs = &line["_aws"]["CloudWatchMetrics"][0];
    let names = defs["Metrics"]
        .as_array()
        .expect("declared metrics")
        .iter()
        .map(|m| m["Name"].as_str().expect("metric name").to_owned())
        .collect();
    (names, defs["Dimensions"].clone())
}

/// An alarm on one plain metric: namespace, name, dimensions (as `[(name, value)]`).
fn alarm_metric(alarm: &Value) -> (&Value, &str, Vec<(String, Value)>) {
    let p = &alarm["Properties"];
    let dimensions = p["Dimensions"]
        .as_sequence()
        .map(|ds| {
            ds.iter()
                .map(|d| {
                    (
                        d["Name"].as_str().expect("dimension name").to_owned(),
                        d["Value"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (
        &p["Namespace"],
        p["MetricName"].as_str().unwrap_or_default(),
        dimensions,
    )
}

#[test]
fn every_alarm_notifies_the_alarm_topic_on_alarm_and_on_ok() {
    let template = template();
    let expected: Value = serde_norway::from_str(
        r#"{"Fn::If": [HasAlarmTopic, [{Ref: AlarmTopicArn}], {Ref: AWS::NoValue}]}"#,
    )
    .expect("valid YAML");
    let alarms = of_type(&template, "AWS::CloudWatch::Alarm");
    assert!(alarms.len() >= 15, "{} alarms", alarms.len());
    for (id, alarm) in alarms {
        for actions in ["AlarmActions", "OKActions"] {
            assert_eq!(alarm["Properties"][actions], expected, "{id}: {actions}");
        }
        assert_eq!(
            alarm["Properties"]["TreatMissingData"].as_str(),
            Some(if id == "HealthCheckMissingAlarm" {
                "breaching"
            } else {
                "notBreaching"
            }),
            "{id}: TreatMissingData"
        );
    }
}

/// The outbound queue's age, the sender's emit failures and the recorder's database failures
/// are alarmed on, each on the metric (and dimension set) the code writes.
#[test]
fn the_queue_age_emit_failure_and_record_failure_alarms_watch_what_the_code_writes() {
    let template = template();

    let age = resource(&template, "OutboundQueueAgeAlarm");
    let (namespace, name, dimensions) = alarm_metric(age);
    assert_eq!(
        (namespace.as_str(), name),
        (Some("AWS/SQS"), "ApproximateAgeOfOldestMessage")
    );
    assert_eq!(dimensions.len(), 1);
    assert_eq!(dimensions[0].0, "QueueName");
    assert_eq!(target(&dimensions[0].1), Some("OutboundQueue"));
    assert_eq!(
        age["Properties"]["Threshold"],
        reference("OutboundAgeAlarmSeconds")
    );
    assert_eq!(
        template["Parameters"]["OutboundAgeAlarmSeconds"]["Default"].as_u64(),
        Some(3600)
    );

    // The sender's totals line has no dimension; the alarm names none either (a metric with
    // another dimension set would be another metric, and the alarm would never see data).
    let sender_lines = gateway_core::pipeline::emf_lines(
        &gateway_core::pipeline::Metrics::default(),
        &[],
        "ns",
        0,
    );
    let (names, dims) = emf_declarations(&sender_lines[0]);
    assert!(names.iter().any(|n| n == "EmitFailures"), "{names:?}");
    assert_eq!(dims, serde_json::json!([[]]));
    let emit = resource(&template, "EmitFailuresAlarm");
    let (namespace, name, dimensions) = alarm_metric(emit);
    assert_eq!(
        (namespace, name, dimensions.len()),
        (&reference("MetricsNamespace"), "EmitFailures", 0)
    );
    let p = &emit["Properties"];
    assert_eq!(
        (
            p["Statistic"].as_str(),
            p["Period"].as_u64(),
            p["Threshold"].as_f64(),
            p["ComparisonOperator"].as_str()
        ),
        (
            Some("Sum"),
            Some(300),
            Some(0.0),
            Some("GreaterThanThreshold")
        )
    );

    // The recorder's totals line, also without a dimension, in the same namespace.
    let recorder_lines =
        recorder::metrics::emf_lines(&recorder::metrics::Counts::default(), "ns", 0);
    let (names, dims) = emf_declarations(&recorder_lines[0]);
    assert!(names.iter().any(|n| n == "RecordFailures"), "{names:?}");
    assert_eq!(dims, serde_json::json!([[]]));
    let record = resource(&template, "RecordFailuresAlarm");
    let (namespace, name, dimensions) = alarm_metric(record);
    assert_eq!(
        (namespace, name, dimensions.len()),
        (&reference("MetricsNamespace"), "RecordFailures", 0)
    );
    let p = &record["Properties"];
    let period = p["Period"].as_u64().expect("Period");
    let evaluations = p["EvaluationPeriods"].as_u64().expect("EvaluationPeriods");
    assert_eq!(period, 60);
    assert!(evaluations <= 5, "{evaluations} evaluation periods");
    assert_eq!(
        p["DatapointsToAlarm"].as_u64(),
        Some(1),
        "one failing minute is enough: the alarm fires within minutes of the first failure"
    );
    assert_eq!(
        (p["Statistic"].as_str(), p["Threshold"].as_f64()),
        (Some("Sum"), Some(0.0))
    );
    let (_, function) = template_function(&template, "recorder");
    assert_eq!(
        function["Properties"]["Environment"]["Variables"]["METRICS_NAMESPACE"],
        reference("MetricsNamespace"),
        "the recorder writes in the namespace the alarms read"
    );
}

/// The bounce and complaint rate alarms compute, per gateway, rate = a / (1 - a) from
/// a = AVG of the recorder's per-gateway samples, take the worst gateway, and compare it with
/// a threshold parameter defaulting to Amazon SES's review level.
#[test]
fn the_rate_alarms_compute_each_gateways_rate_from_the_recorders_samples() {
    let template = template();
    let mut counts = recorder::metrics::Counts::default();
    counts
        .gateways
        .insert("gw".into(), recorder::metrics::GatewayCounts::default());
    counts.gateways.get_mut("gw").expect("inserted").accepted = 1;
    let lines = recorder::metrics::emf_lines(&counts, "ns", 0);
    let (per_gateway, dims) = emf_declarations(&lines[1]);
    assert_eq!(dims, serde_json::json!([["Gateway"]]));

    for (id, metric, parameter, default) in [
        (
            "GatewayBounceRateAlarm",
            "HardBounced",
            "BounceRateAlarmThreshold",
            0.05,
        ),
        (
            "GatewayComplaintRateAlarm",
            "Complained",
            "ComplaintRateAlarmThreshold",
            0.001,
        ),
    ] {
        assert!(
            per_gateway.iter().any(|n| n == metric),
            "the recorder writes no {metric} per gateway: {per_gateway:?}"
        );
        let p = &resource(&template, id)["Properties"];
        let queries = p["Metrics"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{id}: Metrics"));
        let query = queries
            .iter()
            .find(|q| q["Expression"]["Fn::Sub"].is_string())
            .unwrap_or_else(|| panic!("{id}: no Metrics Insights query"));
        let sql = query["Expression"]["Fn::Sub"].as_str().unwrap_or_default();
        assert_eq!(
            sql,
            format!(
                "SELECT AVG({metric}) FROM SCHEMA(\"${{MetricsNamespace}}\", Gateway) GROUP BY Gateway"
            ),
            "{id}"
        );
        assert_eq!(query["ReturnData"].as_bool(), Some(false), "{id}");
        assert_eq!(query["Period"].as_u64(), Some(3600), "{id}");
        let query_id = query["Id"].as_str().expect("query id");
        let expression = |id_: &str| {
            queries
                .iter()
                .find(|q| q["Id"].as_str() == Some(id_))
                .and_then(|q| q["Expression"].as_str())
                .unwrap_or_else(|| panic!("{id}: no expression {id_}"))
                .to_owned()
        };
        assert_eq!(expression("worst"), format!("MAX({query_id})"), "{id}");
        let returned: Vec<&Value> = queries
            .iter()
            .filter(|q| q["ReturnData"].as_bool() == Some(true))
            .collect();
        assert_eq!(returned.len(), 1, "{id}: one time series");
        assert_eq!(
            returned[0]["Expression"].as_str(),
            Some("IF(worst < 1, worst / (1 - worst), 1)"),
            "{id}: bounces / accepted from the average of the samples"
        );
        assert_eq!(p["Threshold"], reference(parameter), "{id}");
        assert_eq!(
            p["ComparisonOperator"].as_str(),
            Some("GreaterThanOrEqualToThreshold"),
            "{id}"
        );
        assert_eq!(
            template["Parameters"][parameter]["Default"].as_f64(),
            Some(default),
            "{parameter}"
        );
    }
}

/// SNS's default HTTP(S) policy (3 retries, 20 s apart) loses SES events in a one-minute
/// outage: every subscription retries for most of the hour SNS allows, then dead-letters into
/// a queue SNS may write to, which is alarmed on.
#[test]
fn ses_event_subscriptions_retry_for_the_hour_sns_allows_then_dead_letter() {
    let template = template();
    let pattern = template["Parameters"]["SesEventTopicArns"]["AllowedPattern"]
        .as_str()
        .expect("SesEventTopicArns has an AllowedPattern");
    let more: usize = pattern
        .rsplit_once("{0,")
        .and_then(|(_, rest)| rest.split_once('}'))
        .and_then(|(n, _)| n.parse().ok())
        .expect("the pattern bounds the number of topics");
    let subscriptions = of_type(&template, "AWS::SNS::Subscription");
    assert_eq!(
        subscriptions.len(),
        1 + more,
        "one subscription per topic SesEventTopicArns allows"
    );
    let mut indexes = BTreeSet::new();
    for (id, subscription) in &subscriptions {
        assert!(subscription["Condition"].is_string(), "{id}: conditional");
        let p = &subscription["Properties"];
        assert_eq!(p["Protocol"].as_str(), Some("https"), "{id}");
        assert!(
            p["Endpoint"]["Fn::Sub"]
                .as_str()
                .is_some_and(|e| e.ends_with("/webhooks/ses")),
            "{id}: Endpoint"
        );
        indexes.insert(
            p["TopicArn"]["Fn::Select"][0]
                .as_u64()
                .unwrap_or_else(|| panic!("{id}: TopicArn is an item of SesEventTopicArns")),
        );
        assert!(
            p["RawMessageDelivery"].is_null() || p["RawMessageDelivery"].as_bool() == Some(false),
            "{id}: raw delivery drops the signature the webhooks function checks"
        );

        let policy = &p["DeliveryPolicy"]["healthyRetryPolicy"];
        let n = |key: &str| {
            policy[key]
                .as_u64()
                .unwrap_or_else(|| panic!("{id}: healthyRetryPolicy.{key}"))
        };
        let (retries, immediate, at_min, at_max) = (
            n("numRetries"),
            n("numNoDelayRetries"),
            n("numMinDelayRetries"),
            n("numMaxDelayRetries"),
        );
        let (min_delay, max_delay) = (n("minDelayTarget"), n("maxDelayTarget"));
        assert!(retries <= 100, "{id}: SNS allows at most 100 retries");
        assert!(immediate + at_min + at_max <= retries, "{id}: phases");
        assert!((1..=max_delay).contains(&min_delay), "{id}: delays");
        // Every backoff and post-backoff retry waits at most maxDelayTarget.
        let longest = at_min * min_delay + (retries - immediate - at_min) * max_delay;
        assert!(
            longest <= 3600,
            "{id}: up to {longest} s of retries; SNS refuses more than 3,600 s"
        );
        assert!(
            longest >= 3000,
            "{id}: only {longest} s of retries; SNS allows an hour"
        );

        let dlq = target(&p["RedrivePolicy"]["deadLetterTargetArn"])
            .unwrap_or_else(|| panic!("{id}: RedrivePolicy.deadLetterTargetArn"));
        let queue = resource(&template, dlq);
        assert_eq!(queue["Type"].as_str(), Some("AWS::SQS::Queue"), "{dlq}");
        assert_eq!(
            queue["Properties"]["MessageRetentionPeriod"].as_u64(),
            Some(1_209_600),
            "{dlq}: 14 days"
        );
        let policies: Vec<(String, &Value)> = of_type(&template, "AWS::SQS::QueuePolicy")
            .into_iter()
            .filter(|(_, qp)| {
                qp["Properties"]["Queues"]
                    .as_sequence()
                    .is_some_and(|qs| qs.iter().any(|q| target(q) == Some(dlq)))
            })
            .collect();
        assert_eq!(policies.len(), 1, "{dlq}: one queue policy");
        let (policy_id, queue_policy) = &policies[0];
        let statement = &queue_policy["Properties"]["PolicyDocument"]["Statement"][0];
        assert_eq!(
            (
                statement["Effect"].as_str(),
                statement["Principal"]["Service"].as_str(),
                statement["Action"].as_str()
            ),
            (
                Some("Allow"),
                Some("sns.amazonaws.com"),
                Some("sqs:SendMessage")
            ),
            "{policy_id}"
        );
        assert!(
            !statement["Condition"]["ArnEquals"]["aws:SourceArn"].is_null(),
            "{policy_id}: only the subscribed topics may write"
        );
        assert!(
            subscription["DependsOn"]
                .as_sequence()
                .is_some_and(|d| d.iter().any(|x| x.as_str() == Some(policy_id.as_str()))),
            "{id}: created after {policy_id}"
        );
        let alarmed = of_type(&template, "AWS::CloudWatch::Alarm")
            .into_iter()
            .any(|(_, alarm)| {
                let (namespace, name, dimensions) = alarm_metric(alarm);
                namespace.as_str() == Some("AWS/SQS")
                    && name == "ApproximateNumberOfMessagesVisible"
                    && dimensions.iter().any(|(_, v)| target(v) == Some(dlq))
                    && alarm["Properties"]["Threshold"].as_f64() == Some(0.0)
            });
        assert!(alarmed, "{dlq}: no alarm on its first message");
    }
    assert_eq!(
        indexes,
        (0..=more as u64).collect(),
        "each item of SesEventTopicArns has its subscription"
    );
}

/// The outbound queue's redrive arithmetic. Every deferral is at most `MAX_DEFERRAL`, so the
/// default `OutboundMaxReceiveCount` receives end within the queue's retention with days to
/// spare for an operator to redrive the dead-letter queue (a standard queue's dead-letter copy
/// keeps the original enqueue time, so the two retentions do not add up: Amazon SQS Developer
/// Guide, "Using dead-letter queues"), and a wait caused by a daily limit, even a backlog three
/// days deep, never reaches the dead-letter queue.
#[test]
fn the_outbound_redrive_outlasts_limit_waits_and_ends_inside_the_retention() {
    use gateway_core::pipeline::receives_to_wait;
    use gateway_core::queue::MAX_DEFERRAL;
    use std::time::Duration;

    let t = template();
    let max_receives = t["Parameters"]["OutboundMaxReceiveCount"]["Default"]
        .as_u64()
        .expect("OutboundMaxReceiveCount default");
    let retention = t["Resources"]["OutboundQueue"]["Properties"]["MessageRetentionPeriod"]
        .as_u64()
        .expect("OutboundQueue MessageRetentionPeriod");
    let dead_letter_retention =
        t["Resources"]["OutboundDeadLetterQueue"]["Properties"]["MessageRetentionPeriod"]
            .as_u64()
            .expect("OutboundDeadLetterQueue MessageRetentionPeriod");
    assert_eq!(
        dead_letter_retention, retention,
        "both at SQS's 14-day maximum"
    );
    let day = 24 * 3600;
    let longest_life = MAX_DEFERRAL.as_secs() * max_receives;
    assert!(
        longest_life + 4 * day <= retention,
        "{max_receives} receives can take {longest_life} s; the queue keeps a message {retention} s"
    );
    let three_days = receives_to_wait(Duration::from_secs(3 * day));
    assert!(
        u64::from(three_days) + 1 < max_receives,
        "a three-day limit wait takes {three_days} receives and then the one that sends"
    );
}

/// The statements written inline in a function's `Policies` (both branches of an `Fn::If`),
/// and the names of the SAM policy templates and managed policies it lists.
fn policy_parts(function: &Value) -> (Vec<&Value>, Vec<String>) {
    let mut statements = Vec::new();
    let mut named = Vec::new();
    let policies = function["Properties"]["Policies"]
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for policy in policies {
        let documents: Vec<&Value> = match &policy["Fn::If"] {
            Value::Sequence(branches) => branches.iter().skip(1).collect(),
            _ => vec![policy],
        };
        for document in documents {
            match document {
                Value::String(name) => named.push(name.clone()),
                Value::Mapping(m) => {
                    for (key, value) in m {
                        match key.as_str() {
                            Some("Statement") => statements.extend(
                                value
                                    .as_sequence()
                                    .expect("an inline Statement is a list")
                                    .iter(),
                            ),
                            Some("Ref") => {}
                            Some(other) => named.push(other.to_owned()),
                            None => panic!("a policy key that is not a string: {key:?}"),
                        }
                    }
                }
                other => panic!("a policy that is neither a name nor a mapping: {other:?}"),
            }
        }
    }
    (statements, named)
}

/// A statement's actions, whether written as one string or a list.
fn actions(statement: &Value) -> Vec<&str> {
    match &statement["Action"] {
        Value::String(a) => vec![a.as_str()],
        Value::Sequence(list) => list
            .iter()
            .map(|a| a.as_str().expect("actions are strings"))
            .collect(),
        other => panic!("a statement without Action: {other:?}"),
    }
}

/// Whether `value` names `name` anywhere (`{Ref: name}`, `${name}` in a `Fn::Sub` …).
fn mentions(value: &Value, name: &str) -> bool {
    match value {
        Value::String(s) => s == name || s.contains(&format!("${{{name}}}")),
        Value::Sequence(list) => list.iter().any(|v| mentions(v, name)),
        Value::Mapping(m) => m
            .iter()
            .any(|(k, v)| mentions(k, name) || mentions(v, name)),
        Value::Tagged(t) => mentions(&t.value, name),
        _ => false,
    }
}

/// The template function deploying `functions/{dir}`.
fn function_of<'a>(template: &'a Value, dir: &str) -> (String, &'a Value) {
    let crates = function_crates();
    let binary = crates
        .get(dir)
        .unwrap_or_else(|| panic!("no function crate functions/{dir}"));
    template_function(template, binary)
}

/// The public webhooks function answers the internet: it may read the webhook verification
/// secrets (the Mailgun webhook signing keys, the only secret references its wiring resolves:
/// `webhooks::edge::WebhookKeys`), through a parameter of their own, and never the provider
/// secrets (API keys, the Gmail delegation key).
#[test]
fn the_webhooks_function_reads_only_the_webhook_verification_secrets() {
    let template = template();
    let parameter = &template["Parameters"]["WebhookSecretArns"];
    assert_eq!(parameter["Type"].as_str(), Some("CommaDelimitedList"));
    assert_eq!(parameter["Default"].as_str(), Some(""), "none by default");

    let (id, webhooks) = function_of(&template, "webhooks");
    let policies = &webhooks["Properties"]["Policies"];
    assert!(
        !mentions(policies, "ProviderSecretArns"),
        "{id}: its policies name ProviderSecretArns (the provider API keys and the Gmail delegation key)"
    );
    let (statements, named) = policy_parts(webhooks);
    assert!(
        !named.iter().any(|n| n.starts_with("AWSSecretsManager")),
        "{id}: a SAM secrets policy template: {named:?}"
    );
    let reads: Vec<&&Value> = statements
        .iter()
        .filter(|s| {
            s["Effect"].as_str() == Some("Allow")
                && actions(s)
                    .iter()
                    .any(|a| a.starts_with("secretsmanager:") || *a == "*")
        })
        .collect();
    assert_eq!(reads.len(), 1, "{id}: one statement reads secrets");
    assert_eq!(actions(reads[0]), ["secretsmanager:GetSecretValue"], "{id}");
    assert_eq!(
        reads[0]["Resource"],
        reference("WebhookSecretArns"),
        "{id}: the webhook verification secrets only"
    );

    // The other functions have no use for the webhook keys.
    for dir in ["sender", "recorder", "status", "health-check"] {
        let (other, function) = function_of(&template, dir);
        assert!(
            !mentions(&function["Properties"]["Policies"], "WebhookSecretArns"),
            "{other}: may read the webhook verification secrets"
        );
    }
}

/// The key prefix of a state key: up to and including its first `#` (`msg#` of `msg#m-1`).
fn key_prefix(key: &str) -> String {
    let (prefix, _) = key
        .split_once('#')
        .unwrap_or_else(|| panic!("state key without a typed prefix: {key:?}"));
    format!("{prefix}#")
}

/// The key prefixes of the state table's items, from the code that makes the keys.
struct Prefixes {
    /// `ledger::key`: the idempotency ledger.
    ledger: String,
    /// `limiter::hour_keys`: system and gateway limit counters.
    limits: String,
    /// `breaker::key`: the circuit breakers.
    breakers: String,
    /// `health::key`: the health check's records.
    health: String,
    /// `suppression::KEY_PREFIX`: the suppression list.
    suppression: String,
    /// `levers::KEY_PREFIX`: the operator levers and their audit.
    levers: String,
    /// `live_config::KEY_PREFIX`: the published config versions.
    live_config: String,
    /// `webhooks::verify::first_use`: the Mailgun token replay cache (the one prefix not
    /// derived from the code).
    replay: String,
    /// `evidence::key`: the providers' acceptance evidence.
    evidence: String,
}

fn prefixes() -> Prefixes {
    // Every limited level (system day, gateway day, burst bucket) has its key.
    let doc = r#"{"gateways": [{"id": "gw", "type": "capture", "display_name": "gw",
        "capture": {"directory": "/tmp/unused"}, "routing": {"can_route": ["*"]},
        "rate_limits": {"workspace_daily": 100, "burst_limit": 5}}]}"#;
    let env = |name: &str| (name == "QUEUE_DAILY_RATE_LIMIT").then(|| "1000".to_owned());
    let config = gateway_core::config::load_config(Some(doc), None, &env)
        .unwrap_or_else(|e| panic!("test config invalid: {e:?}"))
        .config;
    let keys = gateway_core::limiter::hour_keys(&config, &config.gateways[0], 0);
    let limits: BTreeSet<String> = keys.keys().iter().map(|k| key_prefix(k)).collect();
    assert_eq!(keys.keys().len(), 3, "{:?}", keys.keys());
    assert_eq!(
        limits.len(),
        1,
        "the limit keys share one prefix: {limits:?}"
    );
    // A sender's day counter (read by the status API's sender route) is a limit item too.
    let sender = gateway_core::limiter::sender_key("gw", "Ada@Clinic.example", 0);
    assert!(limits.contains(&key_prefix(&sender)), "{sender}");

    let suppression = gateway_core::suppression::KEY_PREFIX.to_owned();
    assert_eq!(
        key_prefix(&gateway_core::suppression::key("a@example.org")),
        suppression
    );
    Prefixes {
        ledger: key_prefix(&gateway_core::ledger::key("m-1")),
        limits: limits.into_iter().next().expect("one prefix"),
        breakers: key_prefix(&gateway_core::breaker::key("gw")),
        health: key_prefix(&gateway_core::health::key("gw")),
        suppression,
        // shared/src/webhooks/verify.rs (`first_use`) and edge.rs: `replay#{scope}#{token}`.
        // Written out here, since no public function of the code makes the key yet.
        replay: "replay#".to_owned(),
        evidence: key_prefix(&gateway_core::evidence::key("m-1")),
        levers: {
            let prefix = gateway_core::levers::KEY_PREFIX.to_owned();
            for key in [
                gateway_core::levers::ALL_KEY.to_owned(),
                gateway_core::levers::key(&gateway_core::levers::Target::Gateway("gw".into())),
                gateway_core::levers::log_key(&gateway_core::levers::Target::All, 1),
            ] {
                assert_eq!(key_prefix(&key), prefix, "{key}");
            }
            prefix
        },
        live_config: {
            let prefix = gateway_core::live_config::KEY_PREFIX.to_owned();
            for key in [
                gateway_core::live_config::HEAD_KEY.to_owned(),
                gateway_core::live_config::version_key(1),
            ] {
                assert_eq!(key_prefix(&key), prefix, "{key}");
            }
            prefix
        },
    }
}

/// The DynamoDB calls the state adapter makes (`shared/src/state/dynamodb.rs`): `get` and
/// `get_many` are BatchGetItem, writes are PutItem / UpdateItem / DeleteItem (alone or inside
/// TransactWriteItems, which IAM authorizes item by item with those same actions; no
/// ConditionCheck is ever written), `put_many` is BatchWriteItem. `scan_prefix` (Scan) is the
/// CLI's, never a function's.
const ADAPTER_ACTIONS: &[&str] = &[
    "dynamodb:BatchGetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
];

/// (action, key pattern) pairs: `actions` on the items under each of `prefixes`.
fn grants(actions: &[&str], prefixes: &[&String]) -> BTreeSet<(String, String)> {
    actions
        .iter()
        .flat_map(|a| {
            prefixes
                .iter()
                .map(move |p| (format!("dynamodb:{a}"), format!("{p}*")))
        })
        .collect()
}

/// Every function reaches the state table through statements bounded by
/// `dynamodb:LeadingKeys` (no SAM DynamoDB policy template, no Scan or Query, which name no
/// key and which a `ForAllValues` condition therefore lets through), on key prefixes the code
/// makes, and gets exactly the actions and prefixes its code uses: a ledger entry can only be
/// written by the sender, a suppression only added by the recorder.
#[test]
fn each_function_reaches_only_the_state_items_its_code_uses() {
    let template = template();
    let p = prefixes();
    let known: BTreeSet<String> = [
        &p.ledger,
        &p.limits,
        &p.breakers,
        &p.health,
        &p.suppression,
        &p.replay,
        &p.evidence,
        &p.levers,
        &p.live_config,
    ]
    .iter()
    .map(|prefix| format!("{prefix}*"))
    .collect();
    assert_eq!(known.len(), 9, "distinct prefixes: {known:?}");
    // Every function reads the live config (live_config::LiveConfig, a batch read of the head
    // and of a new version's item); none writes it (operators publish with `gateway config
    // push`).
    let live = || grants(&["BatchGetItem"], &[&p.live_config]);

    // What each function's code does with the state, read from the code (the prefixes above
    // are derived from it):
    let expected: [(&str, BTreeSet<(String, String)>); 5] = [
        // The pipeline (shared/src/pipeline/run.rs): one batch read of the ledger, limit,
        // breaker and health items (state::get_all) and of the suppression list
        // (suppression::lookup_many); the acceptance evidence before re-sending a message
        // whose earlier call may have been accepted (evidence::lookup_many); ledger claims and
        // marks (ledger::*, the sent marks with put_many), limit counters (limiter, one update
        // or a transaction), breaker writes.
        (
            "sender",
            grants(
                &["BatchGetItem"],
                &[
                    &p.ledger,
                    &p.limits,
                    &p.breakers,
                    &p.health,
                    &p.suppression,
                    &p.evidence,
                    &p.levers,
                ],
            )
            .into_iter()
            .chain(grants(
                &["PutItem", "UpdateItem", "BatchWriteItem"],
                &[&p.ledger, &p.limits, &p.breakers],
            ))
            .chain(live())
            .collect(),
        ),
        // shared/src/recorder.rs: suppression::add_many (a conditional put each), nothing else.
        (
            "recorder",
            grants(&["PutItem"], &[&p.suppression])
                .into_iter()
                .chain(live())
                .collect(),
        ),
        // webhooks::verify::first_use (a conditional put) and the edge forgetting a token
        // whose event could not be queued (a delete); evidence::record (a conditional put per
        // event proving a provider had one of our messages), never read, updated or deleted.
        (
            "webhooks",
            grants(&["PutItem", "DeleteItem"], &[&p.replay])
                .into_iter()
                .chain(grants(&["PutItem"], &[&p.evidence]))
                .chain(live())
                .collect(),
        ),
        // shared/src/health/service.rs: a batch read of the records, a conditional put each.
        (
            "health-check",
            grants(&["BatchGetItem", "PutItem"], &[&p.health])
                .into_iter()
                .chain(live())
                .collect(),
        ),
        // shared/src/status: one batch read of the health, breaker, limit and lever items, and
        // one of a sender's limit items (limiter::read_sender_usage); levers::apply (a
        // transaction of puts: the lever item, its audit entry, a breaker reset).
        (
            "status",
            grants(
                &["BatchGetItem"],
                &[&p.health, &p.breakers, &p.limits, &p.levers],
            )
            .into_iter()
            .chain(grants(&["PutItem"], &[&p.levers, &p.breakers]))
            .chain(live())
            .collect(),
        ),
    ];
    assert_eq!(
        expected
            .iter()
            .map(|(dir, _)| *dir)
            .collect::<BTreeSet<_>>(),
        FUNCTIONS.iter().map(|(dir, _)| *dir).collect(),
        "every function's state access is listed here"
    );

    for (dir, expected) in expected {
        let (id, function) = function_of(&template, dir);
        let (statements, named) = policy_parts(function);
        assert!(
            !named.iter().any(|n| n.starts_with("DynamoDB")),
            "{id}: a SAM DynamoDB policy template (whole table): {named:?}"
        );
        let mut granted = BTreeSet::new();
        for statement in statements {
            let dynamodb: Vec<&str> = actions(statement)
                .into_iter()
                .filter(|a| a.starts_with("dynamodb:") || *a == "*")
                .collect();
            if dynamodb.is_empty() {
                continue;
            }
            let sid = statement["Sid"].as_str().unwrap_or("(no Sid)");
            assert_eq!(statement["Effect"].as_str(), Some("Allow"), "{id} {sid}");
            assert_eq!(
                target(&statement["Resource"]),
                Some("StateTable"),
                "{id} {sid}: the state table itself (no index)"
            );
            for action in &dynamodb {
                assert!(
                    ADAPTER_ACTIONS.contains(action),
                    "{id} {sid}: {action} is no call of the state adapter (Scan and Query cannot be bounded by key)"
                );
            }
            let condition = statement["Condition"]
                .as_mapping()
                .unwrap_or_else(|| panic!("{id} {sid}: no Condition"));
            assert_eq!(condition.len(), 1, "{id} {sid}: one condition operator");
            let keys = statement["Condition"]["ForAllValues:StringLike"]
                .as_mapping()
                .unwrap_or_else(|| panic!("{id} {sid}: no ForAllValues:StringLike condition"));
            assert_eq!(keys.len(), 1, "{id} {sid}: LeadingKeys only");
            let patterns: Vec<String> =
                statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
                    .as_sequence()
                    .unwrap_or_else(|| panic!("{id} {sid}: no dynamodb:LeadingKeys list"))
                    .iter()
                    .map(|v| v.as_str().expect("key patterns are strings").to_owned())
                    .collect();
            assert!(!patterns.is_empty(), "{id} {sid}: no key pattern");
            for pattern in &patterns {
                assert!(
                    known.contains(pattern),
                    "{id} {sid}: {pattern:?} is not the prefix of any key the code makes ({known:?})"
                );
                for action in &dynamodb {
                    granted.insert(((*action).to_owned(), pattern.clone()));
                }
            }
        }
        assert_eq!(
            granted, expected,
            "{id}: the state actions and key patterns granted (left) differ from what functions/{dir} uses (right)"
        );
    }
}

/// Floods on the public routes: every route of the HTTP API is throttled by parameters with
/// defaults, and no function attaches a route to another (implicit, unthrottled) API.
#[test]
fn the_http_api_throttles_every_route() {
    let template = template();
    let apis = of_type(&template, "AWS::Serverless::HttpApi");
    assert_eq!(apis.len(), 1, "one HTTP API");
    let (api_id, api) = &apis[0];
    let settings = &api["Properties"]["DefaultRouteSettings"];
    let mut defaults = Vec::new();
    for (property, parameter, ceiling) in [
        (
            "ThrottlingRateLimit",
            "HttpApiThrottlingRateLimit",
            10_000.0,
        ),
        (
            "ThrottlingBurstLimit",
            "HttpApiThrottlingBurstLimit",
            5_000.0,
        ),
    ] {
        assert_eq!(
            settings[property],
            reference(parameter),
            "{api_id}: DefaultRouteSettings.{property}"
        );
        let p = &template["Parameters"][parameter];
        assert_eq!(p["Type"].as_str(), Some("Number"), "{parameter}");
        let default = p["Default"]
            .as_f64()
            .unwrap_or_else(|| panic!("{parameter}: a default"));
        assert!(
            default > 0.0 && default <= ceiling,
            "{parameter}: default {default} (0 would refuse every request; the account allows {ceiling})"
        );
        assert!(
            p["MinValue"].as_f64().is_some_and(|m| m >= 1.0),
            "{parameter}: MinValue of at least 1"
        );
        assert!(
            p["Description"].as_str().is_some_and(|d| d.len() > 100),
            "{parameter}: a description of how to size it"
        );
        defaults.push(default);
    }
    assert!(
        defaults[1] >= defaults[0],
        "the burst ({}) holds at least a second of the rate ({})",
        defaults[1],
        defaults[0]
    );
    if let Some(routes) = api["Properties"]["RouteSettings"].as_mapping() {
        for (route, s) in routes {
            assert!(
                !s["ThrottlingRateLimit"].is_null() && !s["ThrottlingBurstLimit"].is_null(),
                "{api_id}: RouteSettings {route:?} without both limits"
            );
        }
    }

    let mut routes = 0;
    for (id, function) in of_type(&template, "AWS::Serverless::Function") {
        let events = function["Properties"]["Events"]
            .as_mapping()
            .cloned()
            .unwrap_or_default();
        for (name, event) in &events {
            if event["Type"].as_str() != Some("HttpApi") {
                continue;
            }
            routes += 1;
            assert_eq!(
                target(&event["Properties"]["ApiId"]),
                Some(api_id.as_str()),
                "{id} {name:?}: a route outside {api_id} (SAM's implicit API is not throttled)"
            );
        }
    }
    assert!(routes >= 1, "no HTTP route");
}

/// The webhooks function has reserved concurrency: its capacity is guaranteed, and a flood on
/// the public route cannot take the account's concurrency from the sender.
#[test]
fn the_webhooks_function_has_reserved_concurrency() {
    let template = template();
    let (id, webhooks) = function_of(&template, "webhooks");
    assert_eq!(
        webhooks["Properties"]["ReservedConcurrentExecutions"],
        reference("WebhooksReservedConcurrency"),
        "{id}: ReservedConcurrentExecutions"
    );
    let p = &template["Parameters"]["WebhooksReservedConcurrency"];
    assert_eq!(p["Type"].as_str(), Some("Number"));
    assert!(
        p["MinValue"].as_u64().is_some_and(|m| m >= 1),
        "WebhooksReservedConcurrency: 0 would stop the function"
    );
    let reserved = p["Default"].as_f64().expect("a default");
    let rate = template["Parameters"]["HttpApiThrottlingRateLimit"]["Default"]
        .as_f64()
        .expect("HttpApiThrottlingRateLimit default");
    assert!(
        reserved >= rate * 0.5,
        "{reserved} executions cannot serve the default {rate} requests/s at 0.5 s each"
    );
}

#[test]
fn the_config_rejected_alarm_watches_the_metric_a_rejected_version_writes() {
    let template = template();
    let alarm = resource(&template, "ConfigRejectedAlarm");
    let (namespace, name, dimensions) = alarm_metric(alarm);
    assert_eq!(
        (namespace, name, dimensions.len()),
        (
            &reference("MetricsNamespace"),
            gateway_core::live_config::REJECTED_METRIC,
            0
        )
    );
    assert_eq!(alarm["Properties"]["Threshold"].as_u64(), Some(0));
    // The functions that write it are given the namespace the alarm watches.
    for dir in ["sender", "health-check", "recorder"] {
        let (id, function) = function_of(&template, dir);
        assert_eq!(
            function["Properties"]["Environment"]["Variables"]["METRICS_NAMESPACE"],
            reference("MetricsNamespace"),
            "{id}"
        );
    }
}

/// The bulk lane: a queue like the transactional one (same visibility, retention, dead-letter
/// queue and receive count), polled by the same sender through an event source of its own
/// with its own concurrency; the sender is told its URL and ARN.
#[test]
fn the_bulk_lane_mirrors_the_outbound_queue_with_an_event_source_of_its_own() {
    let t = template();
    let queue = &t["Resources"]["OutboundQueue"]["Properties"];
    let bulk = &t["Resources"]["OutboundBulkQueue"]["Properties"];
    for key in [
        "VisibilityTimeout",
        "MessageRetentionPeriod",
        "SqsManagedSseEnabled",
        "RedrivePolicy",
    ] {
        assert_eq!(bulk[key], queue[key], "OutboundBulkQueue.{key}");
    }
    let lane = &t["Resources"]["SenderOutboundBulkEventSource"]["Properties"];
    let main = &t["Resources"]["SenderOutboundEventSource"]["Properties"];
    assert_eq!(target(&lane["EventSourceArn"]), Some("OutboundBulkQueue"));
    assert_eq!(lane["FunctionName"], main["FunctionName"]);
    assert_eq!(lane["FunctionResponseTypes"], main["FunctionResponseTypes"]);
    assert_eq!(
        lane["ScalingConfig"]["MaximumConcurrency"],
        reference("SenderBulkMaximumConcurrency")
    );
    assert_ne!(
        lane["ScalingConfig"]["MaximumConcurrency"], main["ScalingConfig"]["MaximumConcurrency"],
        "a concurrency of its own"
    );
    let (_, sender) = function_of(&t, "sender");
    let env = &sender["Properties"]["Environment"]["Variables"];
    assert_eq!(
        env["OUTBOUND_BULK_QUEUE_URL"],
        reference("OutboundBulkQueue")
    );
    assert_eq!(
        target(&env["OUTBOUND_BULK_QUEUE_ARN"]),
        Some("OutboundBulkQueue")
    );
}

/// The attachments bucket: encrypted, never public, TLS only, expiring after the retention
/// (which outlasts a message's 14 days in the queues); the sender may read it and list it,
/// nothing more, and is told its name.
#[test]
fn the_attachments_bucket_is_private_expiring_and_only_read_by_the_sender() {
    let t = template();
    let bucket = &t["Resources"]["AttachmentsBucket"]["Properties"];
    let block = &bucket["PublicAccessBlockConfiguration"];
    for key in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(block[key].as_bool(), Some(true), "{key}");
    }
    assert!(bucket["BucketEncryption"].is_mapping());
    assert_eq!(
        bucket["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"],
        reference("AttachmentRetentionDays")
    );
    let min_days = t["Parameters"]["AttachmentRetentionDays"]["MinValue"]
        .as_u64()
        .unwrap();
    let retention =
        t["Resources"]["OutboundDeadLetterQueue"]["Properties"]["MessageRetentionPeriod"]
            .as_u64()
            .unwrap();
    assert!(
        min_days * 86_400 > retention,
        "an attachment outlives its message's dead letter"
    );
    let policy = &t["Resources"]["AttachmentsBucketPolicy"]["Properties"]["PolicyDocument"];
    assert_eq!(policy["Statement"][0]["Effect"].as_str(), Some("Deny"));
    assert_eq!(
        policy["Statement"][0]["Condition"]["Bool"]["aws:SecureTransport"].as_str(),
        Some("false")
    );
    // Every S3 grant of every function: the sender's GetObject and ListBucket on this bucket.
    let mut s3 = Vec::new();
    for (dir, _) in FUNCTIONS {
        let (id, function) = function_of(&t, dir);
        let (statements, _) = policy_parts(function);
        for statement in statements {
            for action in actions(statement) {
                if action.starts_with("s3:") {
                    s3.push((id.to_owned(), action.to_owned()));
                }
            }
        }
    }
    s3.sort();
    let sender = function_of(&t, "sender").0.to_owned();
    assert_eq!(
        s3,
        [
            (sender.clone(), "s3:GetObject".to_owned()),
            (sender.clone(), "s3:ListBucket".to_owned())
        ]
    );
    let (_, function) = function_of(&t, "sender");
    assert_eq!(
        function["Properties"]["Environment"]["Variables"]["ATTACHMENTS_BUCKET"],
        reference("AttachmentsBucket")
    );
}
