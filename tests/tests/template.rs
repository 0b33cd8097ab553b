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
