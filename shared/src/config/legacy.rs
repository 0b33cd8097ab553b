//! Conversion of the original system's `workspaces.json` into gateway definitions.
//!
//! The original converter produced gateways that failed their own validation; this one checks
//! the workspace file with paths in the workspace file (`workspaces[0].gmail.enabled`) and then
//! runs the converted document through the same validation as a config file, so a conversion
//! that returns `Ok` always loads.
//!
//! Mapping (also in `docs/CONFIG.md`):
//! - each workspace's `gmail` block becomes a `google_workspace` gateway (priority 1) and its
//!   `mailgun` block a `mailgun` gateway (priority 2) sending from the workspace's first domain;
//!   both route exactly the workspace's sender domains (`@domain` each). A workspace with both
//!   blocks yields `<id>-gmail` failing over to `<id>-mailgun`; otherwise the gateway keeps the
//!   workspace id.
//! - a limit of `0` ("unlimited" in the original) becomes `null`.
//! - `service_account_env: NAME` becomes `env:NAME`; a `service_account_file` cannot be read by
//!   a Lambda function, so it becomes the placeholder `env:GMAIL_SERVICE_ACCOUNT_<ID>` with a
//!   warning telling the operator to provide the key that way or through Secrets Manager.
//! - `header_rewrite` has no equivalent (the providers rewrite senders themselves): warned, dropped.

use serde_json::{Map, Value, json};

use super::env::EnvOverrides;
use super::model::{GatewayMode, GatewaySource, SecretRef};
use super::validate::{
    ConfigErrors, ConfigIssue, GatewayEntry, Issues, Obj, as_object, at, index, is_domain,
    is_valid_gateway_id, resolve,
};

/// A converted workspace file: the gateway values and the workspace each came from.
#[derive(Debug, Default)]
pub(crate) struct Converted {
    /// `(path of the workspace, gateway value, workspace id)`.
    pub(crate) gateways: Vec<(String, Value, String)>,
}

/// Converts a legacy `workspaces.json` text into a gateway config document (`{"gateways":
/// [...]}`) that passes [`load_config`](super::load_config)'s validation, plus warnings.
/// Every problem of the workspace file is reported at once.
pub fn convert_legacy(workspaces_json: &str) -> Result<(Value, Vec<ConfigIssue>), ConfigErrors> {
    let mut is = Issues::default();
    let value: Value = match super::strict_json::parse(workspaces_json) {
        Ok(v) => v,
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigIssue::new(
                "workspaces",
                e.to_string(),
            )]));
        }
    };
    let converted = convert_value(&value, &mut is);
    let entries: Vec<GatewayEntry<'_>> = converted
        .gateways
        .iter()
        .map(|(path, value, ws)| GatewayEntry {
            path: path.clone(),
            value,
            source: GatewaySource::LegacyWorkspace(ws.clone()),
        })
        .collect();
    // Built-in defaults only: what the converted document means on its own.
    resolve(
        None,
        &entries,
        &EnvOverrides::default(),
        GatewayMode::Legacy,
        &mut is,
    );
    if !is.errors.is_empty() {
        return Err(ConfigErrors(is.errors));
    }
    let doc = json!({
        "gateways": converted.gateways.into_iter().map(|(_, g, _)| g).collect::<Vec<_>>(),
    });
    Ok((doc, is.warnings))
}

const WORKSPACE_KEYS: &[&str] = &[
    "id",
    "domain",
    "domains",
    "display_name",
    "rate_limits",
    "gmail",
    "mailgun",
];

/// Converts the parsed workspace array; problems go to `is` with workspace-file paths.
pub(crate) fn convert_value(value: &Value, is: &mut Issues) -> Converted {
    let mut out = Converted::default();
    let Value::Array(workspaces) = value else {
        is.error("workspaces", "expected an array of workspaces");
        return out;
    };
    if workspaces.is_empty() {
        is.error("workspaces", "no workspace defined");
    }
    for (j, ws) in workspaces.iter().enumerate() {
        let path = index("workspaces", j);
        if let Some(o) = as_object(is, &path, ws) {
            workspace(&o, is, &mut out);
        }
    }
    out
}

fn workspace(o: &Obj<'_>, is: &mut Issues, out: &mut Converted) {
    o.only_keys(is, WORKSPACE_KEYS);
    let id = o.required_string(is, "id");
    if let Some(id) = id
        && !is_valid_gateway_id(id)
    {
        is.error(
            at(&o.path, "id"),
            format!("{id:?} cannot be a gateway id; use 1–64 characters of A-Z a-z 0-9 . _ -"),
        );
    }
    let mut domains: Vec<String> = Vec::new();
    if let Some(d) = o.string(is, "domain") {
        domains.push(d.to_ascii_lowercase());
        if !is_domain(d) {
            is.error(at(&o.path, "domain"), format!("{d:?} is not a domain name"));
        }
    }
    for (path, d) in o.strings(is, "domains").unwrap_or_default() {
        if !is_domain(d) {
            is.error(path, format!("{d:?} is not a domain name"));
        }
        let d = d.to_ascii_lowercase();
        if !domains.contains(&d) {
            domains.push(d);
        }
    }
    if domains.is_empty() {
        is.error(
            at(&o.path, "domains"),
            "required: a workspace needs `domain` or `domains` (its sender domains)",
        );
    }
    let rate_limits = o.object(is, "rate_limits").map(|rl| legacy_limits(&rl, is));
    let gmail = o.object(is, "gmail");
    let mailgun = o.object(is, "mailgun");
    if !o.has("gmail") && !o.has("mailgun") {
        is.error(
            &o.path,
            "neither a gmail nor a mailgun block; nothing to convert",
        );
    }
    let Some(id) = id else { return };
    let both = gmail.is_some() && mailgun.is_some();
    let gmail_id = if both {
        format!("{id}-gmail")
    } else {
        id.to_owned()
    };
    let mailgun_id = if both {
        format!("{id}-mailgun")
    } else {
        id.to_owned()
    };

    let mut base = Map::new();
    if let Some(name) = o.string(is, "display_name") {
        base.insert("display_name".into(), json!(name));
    }
    if let Some(d) = domains.first() {
        base.insert("domain".into(), json!(d));
    }
    if let Some(rl) = rate_limits {
        base.insert("rate_limits".into(), rl);
    }
    let can_route: Vec<String> = domains.iter().map(|d| format!("@{d}")).collect();

    if let Some(g) = gmail {
        let mut gw = base.clone();
        gw.insert("id".into(), json!(gmail_id));
        gw.insert("type".into(), json!("google_workspace"));
        gw.insert("priority".into(), json!(1));
        gw.insert(
            "enabled".into(),
            json!(g.bool(is, "enabled").unwrap_or(true)),
        );
        let mut routing = json!({ "can_route": can_route });
        if both {
            routing["failover_to"] = json!([mailgun_id]);
        }
        gw.insert("routing".into(), routing);
        gw.insert("google_workspace".into(), gmail_block(&g, id, is));
        out.gateways
            .push((o.path.clone(), Value::Object(gw), id.to_owned()));
    }
    if let Some(m) = mailgun {
        let mut gw = base;
        gw.insert("id".into(), json!(mailgun_id));
        gw.insert("type".into(), json!("mailgun"));
        gw.insert("priority".into(), json!(2));
        gw.insert(
            "enabled".into(),
            json!(m.bool(is, "enabled").unwrap_or(true)),
        );
        gw.insert("routing".into(), json!({ "can_route": can_route }));
        gw.insert(
            "mailgun".into(),
            mailgun_block(&m, id, domains.first().map(String::as_str), is),
        );
        out.gateways
            .push((o.path.clone(), Value::Object(gw), id.to_owned()));
    }
}

/// The original's limits, `0` (its "unlimited") becoming `null`.
fn legacy_limits(rl: &Obj<'_>, is: &mut Issues) -> Value {
    rl.only_keys(
        is,
        &["workspace_daily", "per_user_daily", "custom_user_limits"],
    );
    let mut out = Map::new();
    for key in ["workspace_daily", "per_user_daily"] {
        if let Some(v) = rl.get(key)
            && let Some(l) = legacy_limit(is, &at(&rl.path, key), v)
        {
            out.insert(key.into(), l);
        }
    }
    if let Some(cul) = rl.object(is, "custom_user_limits") {
        let mut m = Map::new();
        for (addr, v) in cul.map {
            if let Some(l) = legacy_limit(is, &at(&cul.path, addr), v) {
                m.insert(addr.clone(), l);
            }
        }
        out.insert("custom_user_limits".into(), Value::Object(m));
    }
    Value::Object(out)
}

fn legacy_limit(is: &mut Issues, path: &str, v: &Value) -> Option<Value> {
    match v.as_u64() {
        Some(0) => Some(Value::Null),
        Some(n) => Some(json!(n)),
        None => {
            is.error(path, "expected a non-negative integer (0 = unlimited)");
            None
        }
    }
}

/// The environment variable suggested for a workspace whose key was a file.
fn placeholder_env(id: &str) -> String {
    env_name("GMAIL_SERVICE_ACCOUNT", id)
}

/// `PREFIX_<ID>` with the workspace id upper-cased and anything else turned into `_`.
fn env_name(prefix: &str, id: &str) -> String {
    let suffix: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}_{suffix}")
}

fn gmail_block(g: &Obj<'_>, id: &str, is: &mut Issues) -> Value {
    g.only_keys(
        is,
        &[
            "service_account_file",
            "service_account_env",
            "enabled",
            "default_sender",
            "require_valid_sender",
            "lookup_sent",
            "header_rewrite",
        ],
    );
    let mut out = Map::new();
    let env_name = g.string(is, "service_account_env");
    let file = g.string(is, "service_account_file");
    let reference = match (env_name, file) {
        (Some(name), file) => {
            if file.is_some() {
                is.warn(
                    at(&g.path, "service_account_file"),
                    "ignored: service_account_env is used instead",
                );
            }
            Some(format!("env:{name}"))
        }
        (None, Some(_)) => {
            let name = placeholder_env(id);
            is.warn(
                at(&g.path, "service_account_file"),
                format!(
                    "key files are not read by the gateway; converted to env:{name}: put the \
                     key's JSON in that variable, or better in Secrets Manager and reference it \
                     as secretsmanager:ARN"
                ),
            );
            Some(format!("env:{name}"))
        }
        (None, None) => {
            is.error(
                &g.path,
                "service_account_env or service_account_file required",
            );
            None
        }
    };
    if let Some(r) = reference {
        out.insert("service_account".into(), json!(r));
    }
    if let Some(s) = g.string(is, "default_sender") {
        out.insert("default_sender".into(), json!(s));
    }
    if let Some(b) = g.bool(is, "require_valid_sender") {
        out.insert("require_valid_sender".into(), json!(b));
    }
    if let Some(b) = g.bool(is, "lookup_sent") {
        out.insert("lookup_sent".into(), json!(b));
    }
    header_rewrite(g, is);
    Value::Object(out)
}

fn header_rewrite(o: &Obj<'_>, is: &mut Issues) {
    if o.has("header_rewrite") {
        is.warn(
            at(&o.path, "header_rewrite"),
            "not carried over: the gateway has no header rewriting; senders are rewritten by \
             the provider adapters",
        );
    }
}

fn mailgun_block(m: &Obj<'_>, id: &str, domain: Option<&str>, is: &mut Issues) -> Value {
    m.only_keys(
        is,
        &[
            "api_key",
            "base_url",
            "region",
            "enabled",
            "tracking",
            "default_tags",
            "header_rewrite",
        ],
    );
    let mut out = Map::new();
    // A reference is kept as written. A literal key is never copied into the output (which
    // operators paste into repositories): it becomes an `env:` reference to set instead.
    match m.get("api_key") {
        Some(Value::String(key)) if !SecretRef::parse(key).is_inline() => {
            out.insert("api_key".into(), json!(key));
        }
        Some(Value::String(_)) => {
            let name = env_name("MAILGUN_API_KEY", id);
            is.warn(
                at(&m.path, "api_key"),
                format!(
                    "inline key not copied; set it in the environment variable {name} \
                     (or store it in Secrets Manager and reference it)"
                ),
            );
            out.insert("api_key".into(), json!(format!("env:{name}")));
        }
        Some(_) => is.error(at(&m.path, "api_key"), "expected a string"),
        None => is.error(at(&m.path, "api_key"), "required"),
    }
    if let Some(d) = domain {
        out.insert("domain".into(), json!(d));
    }
    match m.get("base_url") {
        // The original broke every send with an empty base URL; here it means "default".
        Some(Value::String(s)) if s.trim().is_empty() => is.warn(
            at(&m.path, "base_url"),
            "empty; dropped, the region's default endpoint is used",
        ),
        Some(v) => {
            out.insert("base_url".into(), v.clone());
        }
        None => {}
    }
    if let Some(r) = m.string(is, "region") {
        out.insert("region".into(), json!(r.to_ascii_lowercase()));
    }
    if let Some(t) = m.get("tracking") {
        out.insert("tracking".into(), t.clone());
    }
    if let Some(tags) = m.get("default_tags") {
        out.insert("tags".into(), json!({ "default": tags }));
    }
    header_rewrite(m, is);
    Value::Object(out)
}
