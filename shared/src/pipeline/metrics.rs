//! What a batch counted, and its CloudWatch Embedded Metric Format (EMF) lines.
//!
//! EMF lines are JSON objects written to stdout; CloudWatch Logs extracts the metrics from them
//! without any API call from the function (no latency, no IAM permission, no failure mode in
//! the send path). One line carries the batch totals (no dimension), one line per gateway the
//! batch used carries that gateway's counters and its latencies (dimension `Gateway`).

use std::collections::BTreeMap;

use serde_json::{Map, json};

use crate::breaker::Transition;
use crate::clock::EpochMillis;
use crate::emf::emf_line;

/// Counters of one gateway in one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayMetrics {
    /// Provider calls made.
    pub attempts: u32,
    /// Calls the provider accepted.
    pub sent: u32,
    /// Calls answered with a permanent refusal (bad recipient or content).
    pub permanent: u32,
    /// Calls answered with a throttle (429 or a provider quota).
    pub throttled: u32,
    /// Calls that found the provider unavailable (5xx, connection error).
    pub unavailable: u32,
    /// Calls refused for bad credentials.
    pub auth: u32,
    /// Calls whose outcome is unknown (timeout after the request was sent).
    pub ambiguous: u32,
    /// Messages our own rate limits kept from this gateway.
    pub limited: u32,
    /// Messages the breaker kept from this gateway.
    pub breaker_rejected: u32,
    /// Breaker transitions this batch performed on the gateway.
    pub breaker_transitions: u32,
    /// Duration of each call, in milliseconds.
    pub latencies_ms: Vec<u64>,
}

/// Counters of one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Records in the batch.
    pub records: u32,
    /// Messages sent now.
    pub sent: u32,
    /// Messages deferred (retried later).
    pub deferred: u32,
    /// Messages failed for good now.
    pub failed: u32,
    /// Messages rejected before any provider saw them (poison, every recipient suppressed).
    pub rejected: u32,
    /// Redelivered messages whose outcome was already in the ledger (nothing sent).
    pub replayed: u32,
    /// Moves from one gateway to the next after a provider failure.
    pub failovers: u32,
    /// Suppressed recipients left out.
    pub suppressed_recipients: u32,
    /// Outcome events that could not be emitted (their messages are retried).
    pub emit_failures: u32,
    /// Messages an earlier unanswered call had delivered, as its provider's evidence showed:
    /// recorded sent, not sent again.
    pub reconciled: u32,
    /// Messages sent again after an unanswered call with no evidence either way (possible
    /// duplicates).
    pub resent_unconfirmed: u32,
    /// Per gateway, by id.
    pub gateways: BTreeMap<String, GatewayMetrics>,
}

impl Metrics {
    /// The counters of `gateway`, created on first use.
    pub fn gateway(&mut self, gateway: &str) -> &mut GatewayMetrics {
        self.gateways.entry(gateway.to_owned()).or_default()
    }
}

/// The EMF lines for a batch, in namespace `namespace`, stamped `at` (epoch ms).
pub fn emf_lines(
    metrics: &Metrics,
    transitions: &[Transition],
    namespace: &str,
    at: EpochMillis,
) -> Vec<String> {
    let mut lines = Vec::with_capacity(1 + metrics.gateways.len());
    let totals: [(&str, u32); 11] = [
        ("Records", metrics.records),
        ("Sent", metrics.sent),
        ("Deferred", metrics.deferred),
        ("Failed", metrics.failed),
        ("Rejected", metrics.rejected),
        ("Replayed", metrics.replayed),
        ("Failovers", metrics.failovers),
        ("SuppressedRecipients", metrics.suppressed_recipients),
        ("EmitFailures", metrics.emit_failures),
        ("Reconciled", metrics.reconciled),
        ("ResentUnconfirmed", metrics.resent_unconfirmed),
    ];
    let mut values = Map::new();
    for (name, value) in totals {
        values.insert(name.to_owned(), json!(value));
    }
    lines.push(emf_line(
        namespace,
        at,
        &[],
        &totals.map(|(n, _)| (n, "Count")),
        values,
    ));

    let mut gateways = metrics.gateways.clone();
    for t in transitions {
        gateways
            .entry(t.gateway.clone())
            .or_default()
            .breaker_transitions += 1;
    }
    for (id, g) in &gateways {
        let counts: [(&str, u32); 10] = [
            ("Attempts", g.attempts),
            ("GatewaySent", g.sent),
            ("Permanent", g.permanent),
            ("Throttled", g.throttled),
            ("Unavailable", g.unavailable),
            ("AuthFailures", g.auth),
            ("Ambiguous", g.ambiguous),
            ("RateLimited", g.limited),
            ("BreakerRejected", g.breaker_rejected),
            ("BreakerTransitions", g.breaker_transitions),
        ];
        let mut values = Map::new();
        values.insert("Gateway".to_owned(), json!(id));
        let mut names: Vec<(&str, &str)> = counts.iter().map(|(n, _)| (*n, "Count")).collect();
        for (name, value) in counts {
            values.insert(name.to_owned(), json!(value));
        }
        if !g.latencies_ms.is_empty() {
            names.push(("Latency", "Milliseconds"));
            values.insert("Latency".to_owned(), json!(g.latencies_ms));
        }
        lines.push(emf_line(namespace, at, &["Gateway"], &names, values));
    }
    lines
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::Value;

    use super::*;
    use crate::breaker::{Phase, TransitionReason};

    #[test]
    fn one_totals_line_and_one_line_per_gateway_with_its_dimension() {
        let mut m = Metrics {
            records: 3,
            sent: 2,
            deferred: 1,
            ..Metrics::default()
        };
        let g = m.gateway("mailgun-primary");
        g.attempts = 3;
        g.sent = 2;
        g.unavailable = 1;
        g.latencies_ms = vec![100, 120, 5000];
        let transitions = [Transition {
            gateway: "mailgun-primary".into(),
            from: Phase::Closed,
            to: Phase::Open,
            at: 1,
            reason: TransitionReason::TimeoutElapsed,
        }];
        let lines = emf_lines(&m, &transitions, "MailGateway", 1_795_000_000_000);
        assert_eq!(lines.len(), 2);
        let totals: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(totals["Sent"], 2);
        assert_eq!(totals["Deferred"], 1);
        assert_eq!(totals["_aws"]["Timestamp"], 1_795_000_000_000_i64);
        assert_eq!(
            totals["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "MailGateway"
        );
        assert_eq!(
            totals["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([[]])
        );
        let gw: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(gw["Gateway"], "mailgun-primary");
        assert_eq!(gw["Unavailable"], 1);
        assert_eq!(gw["BreakerTransitions"], 1);
        assert_eq!(gw["Latency"], json!([100, 120, 5000]));
        let defs = &gw["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(defs["Dimensions"], json!([["Gateway"]]));
        // Every metric a line declares is a member of that line.
        for def in defs["Metrics"].as_array().unwrap() {
            let name = def["Name"].as_str().unwrap();
            assert!(gw.get(name).is_some(), "{name} declared but missing");
        }
    }
}
