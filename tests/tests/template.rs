//! Drift between `template.yaml` and the code it deploys.
//!
//! - Every crate under `functions/` with a `src/main.rs` is built by exactly one
//!   `AWS::Serverless::Function` of the template (and no template function builds anything else).
//! - Each function's environment in the template (`Globals` merged with its own) is exactly its
//!   crate's `ENV_VARS`, and `ENV_VARS` is exactly what its `main.rs` reads: the names are read
//!   out of the source (`env("…")`, `required("…", …)`, `std::env::var("…")`, the config
//!   constants) plus what the `gateway-core` calls it makes read (`load_from_env()`: the config
//!   variables; `table_name_from_env()`: the state table; `EnvFilter::try_from_default_env()` or
//!   `startup::init_json_logs()`:
//!   `RUST_LOG`). A read this scan cannot resolve fails the test instead of being skipped, and an
//!   empty list fails too.
//! - The queues, table and event sources keep the contracts the code relies on.
//!
//! The template uses only long-form intrinsics (`Ref:`, `Fn::GetAtt:` …), so a plain YAML parser
//! reads it.

// Helpers of a test target: a panic there is a test failure with its message.
#![allow(clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

    assert!(
        of_type(&template, "AWS::Lambda::Function").is_empty(),
        "functions are deployed as AWS::Serverless::Function, built from their crate"
    );
    let mut built: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, function) in of_type(&template, "AWS::Serverless::Function") {
        assert_eq!(
            function["Metadata"]["BuildMethod"].as_str(),
            Some("rust-cargolambda"),
            "{id}: Metadata.BuildMethod"
        );
        let binary = function["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .unwrap_or_else(|| panic!("{id}: Metadata.BuildProperties.Binary missing"));
        let (dir, _) = crates
            .iter()
            .find(|(_, bin)| *bin == binary)
            .unwrap_or_else(|| {
                panic!("{id} builds binary {binary:?}, which no function crate has")
            });
        assert_eq!(
            function["Properties"]["CodeUri"].as_str(),
            Some(format!("functions/{dir}").as_str()),
            "{id}: CodeUri must be the crate that builds {binary:?}"
        );
        built.entry(binary.to_owned()).or_default().push(id);
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

/// The template function whose `Binary` is `binary`.
fn template_function<'a>(template: &'a Value, binary: &str) -> (String, &'a Value) {
    of_type(template, "AWS::Serverless::Function")
        .into_iter()
        .find(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"].as_str() == Some(binary))
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

#[test]
fn each_function_gets_exactly_the_variables_its_main_reads() {
    let template = template();
    let crates = function_crates();
    let globals = variable_names(&template["Globals"]["Function"]["Environment"]);
    for (dir, env_vars) in FUNCTIONS {
        assert!(!env_vars.is_empty(), "{dir}::ENV_VARS is empty");
        let declared: BTreeSet<String> = env_vars.iter().map(|v| (*v).to_owned()).collect();
        assert_eq!(
            declared.len(),
            env_vars.len(),
            "{dir}::ENV_VARS has a duplicate"
        );

        let main = root().join(format!("functions/{dir}/src/main.rs"));
        let source = std::fs::read_to_string(&main).unwrap_or_else(|e| panic!("{main:?}: {e}"));
        let read = reads(&source, dir);
        assert!(!read.is_empty(), "found no variable read in {main:?}");
        assert_eq!(
            read, declared,
            "functions/{dir}: what main.rs reads (left) differs from ENV_VARS (right)"
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
}

/// The environment variables `source` (a `main.rs`) reads. Panics on a read it cannot name.
fn reads(source: &str, dir: &str) -> BTreeSet<String> {
    // Whole-line comments (the module docs list the variables too) do not read anything.
    let mut code: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    // The `env(name)` / `required(name, …)` helpers read whatever their callers name: their
    // calls are counted, their bodies (which pass `name` on) are left out.
    for helper in ["fn env(", "fn required("] {
        while let Some(start) = code.find(helper) {
            let end = code[start..]
                .find("\n}")
                .map(|e| start + e + 2)
                .unwrap_or_else(|| panic!("{dir}: `{helper}` has no closing brace"));
            code.replace_range(start..end, "");
        }
    }
    assert!(
        !code.contains("env::vars("),
        "{dir}: main.rs iterates the whole environment; this test cannot follow that"
    );
    let constants: [(&str, &str); 3] = [
        (
            "GATEWAY_CONFIG_FILE",
            gateway_core::config::GATEWAY_CONFIG_FILE,
        ),
        (
            "GMAIL_WORKSPACES_FILE",
            gateway_core::config::GMAIL_WORKSPACES_FILE,
        ),
        ("TABLE_ENV", gateway_core::state::dynamodb::TABLE_ENV),
    ];
    let mut names = BTreeSet::new();
    for call in [
        "std::env::var(",
        "env::var(",
        "std::env::var_os(",
        "env::var_os(",
        "env(",
        "required(",
    ] {
        for (at, _) in code.match_indices(call) {
            let before = &code[..at];
            // `load_from_env(`, `try_from_default_env(` … are other functions; `std::env::var(`
            // is matched by its own pattern.
            if before
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            {
                continue;
            }
            let rest = &code[at + call.len()..];
            let end = rest.find([',', ')']).unwrap_or(rest.len());
            let arg = rest[..end].trim();
            if let Some(literal) = arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
                names.insert(literal.to_owned());
            } else if let Some((_, value)) = constants.iter().find(|(c, _)| *c == arg) {
                names.insert((*value).to_owned());
            } else {
                panic!(
                    "{dir}: main.rs reads the environment through `{call}{arg})`, which this test cannot resolve"
                );
            }
        }
    }
    // What the gateway-core calls main.rs makes read.
    let config_loads = code.matches("load_from_env()").count()
        - code.matches("aws_config::load_from_env()").count();
    if config_loads > 0 {
        names.extend(
            gateway_core::config::ENV_VARS
                .iter()
                .map(|v| (*v).to_owned()),
        );
    }
    if code.contains("table_name_from_env()") {
        names.insert(gateway_core::state::dynamodb::TABLE_ENV.to_owned());
    }
    if code.contains("EnvFilter::try_from_default_env()")
        || code.contains("from_default_env()")
        || code.contains("startup::init_json_logs()")
    {
        names.insert(RUST_LOG.to_owned());
    }
    names
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
