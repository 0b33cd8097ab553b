//! The effective config printed back in the file's shape, for the status API
//! (`GET /api/gateways/config`) and the config audit.
//!
//! Every value is explicit (defaults applied), so an operator sees what is in force rather
//! than what was written. Secrets appear as their references; an inline literal appears as
//! `"<redacted>"` and nothing else of it.

use serde_json::{Map, Value, json};

use super::model::*;
use crate::duration::format_duration;

/// What an inline secret literal is shown as.
pub const REDACTED: &str = "<redacted>";

fn secret(s: &SecretRef) -> Value {
    match s {
        SecretRef::Inline(_) => json!(REDACTED),
        reference => json!(reference.to_string()),
    }
}

fn limit(l: Limit) -> Value {
    l.map_or(Value::Null, |n| json!(n))
}

fn dur(d: std::time::Duration) -> Value {
    json!(format_duration(d))
}

fn tracking(t: Tracking) -> Value {
    json!({ "opens": t.opens, "clicks": t.clicks, "unsubscribe": t.unsubscribe })
}

/// Inserts `key: value` when `value` is `Some`.
fn put<T: Into<Value>>(m: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(v) = value {
        m.insert(key.to_owned(), v.into());
    }
}

fn provider(p: &ProviderSettings) -> Value {
    match p {
        ProviderSettings::Mailgun(m) => {
            let mut o = Map::new();
            o.insert("api_key".into(), secret(&m.api_key));
            o.insert("domain".into(), json!(m.domain));
            put(&mut o, "base_url", m.base_url.clone());
            let region = match m.region {
                MailgunRegion::Us => "us",
                MailgunRegion::Eu => "eu",
            };
            o.insert("region".into(), json!(region));
            o.insert("tracking".into(), tracking(m.tracking));
            o.insert(
                "tags".into(),
                json!({
                    "default": m.tags.default,
                    "campaign_tag_enabled": m.tags.campaign_tag_enabled,
                    "user_tag_enabled": m.tags.user_tag_enabled,
                }),
            );
            put(
                &mut o,
                "webhook_signing_key",
                m.webhook_signing_key.as_ref().map(secret),
            );
            Value::Object(o)
        }
        ProviderSettings::Sendgrid(s) => {
            let mut o = Map::new();
            o.insert("api_key".into(), secret(&s.api_key));
            put(&mut o, "base_url", s.base_url.clone());
            o.insert("tracking".into(), tracking(s.tracking));
            o.insert("categories".into(), json!(s.categories));
            put(&mut o, "webhook_public_key", s.webhook_public_key.clone());
            Value::Object(o)
        }
        ProviderSettings::AmazonSes(s) => {
            let mut o = Map::new();
            o.insert("region".into(), json!(s.region));
            put(&mut o, "configuration_set", s.configuration_set.clone());
            put(&mut o, "endpoint_url", s.endpoint_url.clone());
            o.insert("sns_topic_arns".into(), json!(s.sns_topic_arns));
            o.insert(
                "sns_accept_sha1_signatures".into(),
                json!(s.sns_accept_sha1_signatures),
            );
            Value::Object(o)
        }
        ProviderSettings::GoogleWorkspace(g) => {
            let mut o = Map::new();
            o.insert("service_account".into(), secret(&g.service_account));
            put(&mut o, "default_sender", g.default_sender.clone());
            o.insert("require_valid_sender".into(), json!(g.require_valid_sender));
            put(&mut o, "token_url", g.token_url.clone());
            put(&mut o, "api_base_url", g.api_base_url.clone());
            o.insert("lookup_sent".into(), json!(g.lookup_sent));
            Value::Object(o)
        }
        ProviderSettings::Smtp(s) => {
            let mut o = Map::new();
            o.insert("host".into(), json!(s.host));
            o.insert("port".into(), json!(s.port));
            let tls = match s.tls {
                SmtpTls::Starttls => "starttls",
                SmtpTls::Tls => "tls",
                SmtpTls::None => "none",
            };
            o.insert("tls".into(), json!(tls));
            put(&mut o, "username", s.username.clone());
            put(&mut o, "password", s.password.as_ref().map(secret));
            Value::Object(o)
        }
        ProviderSettings::Capture(c) => json!({ "directory": c.directory }),
        ProviderSettings::Simulated(s) => json!({
            "latency": format_duration(s.latency),
            "seed": s.seed,
            "throttle_rate": s.throttle_rate,
            "unavailable_rate": s.unavailable_rate,
            "timeout_rate": s.timeout_rate,
            "permanent_rate": s.permanent_rate,
        }),
    }
}

fn patterns(ps: &[crate::pattern::SenderPattern]) -> Value {
    json!(ps.iter().map(ToString::to_string).collect::<Vec<_>>())
}

/// One gateway as its config-document entry, every default explicit, secrets redacted (what
/// `gateway_config_audit` stores).
pub fn redacted_gateway(g: &Gateway) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(g.id));
    o.insert("type".into(), json!(g.kind.as_str()));
    o.insert("display_name".into(), json!(g.display_name));
    put(&mut o, "domain", g.domain.clone());
    o.insert("enabled".into(), json!(g.enabled));
    o.insert("priority".into(), json!(g.priority));
    o.insert("weight".into(), json!(g.weight));
    o.insert(g.kind.as_str().into(), provider(&g.provider));
    let rl = &g.rate_limits;
    let custom: Map<String, Value> = rl
        .custom_user_limits
        .iter()
        .map(|(k, v)| (k.clone(), limit(*v)))
        .collect();
    let mut limits = json!({
        "workspace_daily": limit(rl.workspace_daily),
        "per_user_daily": limit(rl.per_user_daily),
        "per_hour": limit(rl.per_hour),
        "burst_limit": limit(rl.burst_limit),
        "custom_user_limits": custom,
    });
    // A zero refill only arises for an unlimited burst, and zero is not a valid file value.
    if rl.burst_refill_per_second > 0.0 {
        limits["burst_refill_per_second"] = json!(rl.burst_refill_per_second);
    }
    o.insert("rate_limits".into(), limits);
    o.insert(
        "routing".into(),
        json!({
            "can_route": patterns(&g.routing.can_route),
            "exclude_patterns": patterns(&g.routing.exclude_patterns),
            "failover_to": g.routing.failover_to,
        }),
    );
    let cb = &g.circuit_breaker;
    o.insert(
        "circuit_breaker".into(),
        json!({
            "enabled": cb.enabled,
            "failure_threshold": cb.failure_threshold.get(),
            "success_threshold": cb.success_threshold.get(),
            "timeout": dur(cb.timeout),
            "max_requests": cb.max_requests.get(),
            "window": dur(cb.window),
            "failure_ratio": cb.failure_ratio,
        }),
    );
    let hc = &g.health_check;
    o.insert(
        "health_check".into(),
        json!({
            "enabled": hc.enabled,
            "interval": dur(hc.interval),
            "timeout": dur(hc.timeout),
            "failure_threshold": hc.failure_threshold.get(),
            "success_threshold": hc.success_threshold.get(),
        }),
    );
    Value::Object(o)
}

/// The effective config as a config document (the file's shape, every default explicit),
/// with every secret shown as its reference and inline literals as `"<redacted>"`.
///
/// Loading the result again gives back an equal config when no secret was inline and no
/// customer webhook URL has a path or a query string (shown as `<redacted>`: either may carry
/// a token) (gateway
/// `source`s aside: the document has no place for them, every gateway reloads as from the
/// config file).
pub fn redacted_document(config: &Config) -> Value {
    let r = &config.routing;
    let rules: Vec<Value> = r
        .rules
        .iter()
        .map(|rule| json!({ "senders": patterns(&rule.senders), "strategy": rule.strategy.as_str() }))
        .collect();
    json!({
        "gateways": config.gateways.iter().map(redacted_gateway).collect::<Vec<_>>(),
        "global_defaults": {
            "routing_strategy": r.strategy.as_str(),
            "http": {
                "connect_timeout": format_duration(config.http.connect_timeout),
                "request_timeout": format_duration(config.http.request_timeout),
            },
        },
        "routing": {
            "strategy": r.strategy.as_str(),
            "failover_enabled": r.failover_enabled,
            "load_balancing_enabled": r.load_balancing_enabled,
            "health_check_required": r.health_check_required,
            "circuit_breaker_required": r.circuit_breaker_required,
            "max_failover_attempts": r.max_failover_attempts.get(),
            "ambiguous_policy": match r.ambiguous_policy {
                AmbiguousPolicy::Defer => "defer",
                AmbiguousPolicy::Failover => "failover",
            },
            "pinned_failover": r.pinned_failover,
            "rules": rules,
        },
        "system_limits": {
            "daily": limit(config.system_limits.daily),
            "transactional_reserve": f64::from(config.system_limits.transactional_reserve_bp) / 10_000.0,
        },
        "customer_webhooks": config.customer_webhooks.iter().map(customer_webhook).collect::<Vec<_>>(),
        "suppression": {
            "complaint_scope": config.suppression.complaint_scope.as_str(),
            "unsubscribe_scope": config.suppression.unsubscribe_scope.as_str(),
        },
    })
}

/// A customer webhook URL as the answer shows it: scheme, host and port, with the path and
/// the query string replaced by `<redacted>` when present. Endpoints such as Slack's or
/// Zapier's carry their token in the path, others in the query; the endpoint's `id` names it.
fn redacted_webhook_url(url: &str) -> String {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return REDACTED.to_owned();
    };
    let mut out = format!(
        "{}://{}",
        parsed.scheme(),
        parsed.host_str().unwrap_or_default()
    );
    if let Some(port) = parsed.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push('/');
    if parsed.path() != "/" {
        out.push_str(REDACTED);
    }
    if parsed.query().is_some() {
        out.push('?');
        out.push_str(REDACTED);
    }
    out
}

fn customer_webhook(w: &CustomerWebhook) -> Value {
    json!({
        "id": w.id,
        // A token in the path or the query string is a secret too.
        "url": redacted_webhook_url(&w.url),
        "key": secret(&w.key),
        "events": w.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
        "senders": patterns(&w.senders),
        "enabled": w.enabled,
    })
}

fn limit_text(l: Limit) -> String {
    l.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

impl Gateway {
    /// One line for logs and `gateway config check`, e.g.
    /// `mailgun-primary  mailgun  priority 1 weight 100  enabled  limits 50000/d 5000/user/d
    /// 2000/h burst 100  failover → mailgun-secondary`. Contains no secret.
    pub fn summary(&self) -> String {
        let rl = &self.rate_limits;
        let mut line = format!(
            "{}  {}  priority {} weight {}  {}  limits {}/d {}/user/d {}/h burst {}",
            self.id,
            self.kind,
            self.priority,
            self.weight,
            if self.enabled { "enabled" } else { "disabled" },
            limit_text(rl.workspace_daily),
            limit_text(rl.per_user_daily),
            limit_text(rl.per_hour),
            limit_text(rl.burst_limit),
        );
        if !self.routing.failover_to.is_empty() {
            line.push_str("  failover → ");
            line.push_str(&self.routing.failover_to.join(", "));
        }
        line
    }
}
