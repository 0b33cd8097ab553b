//! CloudWatch Embedded Metric Format (EMF): metrics as JSON log lines on stdout, which
//! CloudWatch Logs turns into metrics with no API call from the function (no latency, no IAM
//! permission, no failure mode on the send path). The sender and the health check both write
//! them.

use serde_json::{Map, Value, json};

use crate::clock::EpochMillis;

/// One EMF line in `namespace`, stamped `at` (epoch ms): `values` holds the dimension values
/// and the metric values, `metrics` names each metric with its CloudWatch unit, and every name in
/// `dimensions` must be a key of `values`. Shared by the functions that write metrics.
pub fn emf_line(
    namespace: &str,
    at: EpochMillis,
    dimensions: &[&str],
    metrics: &[(&str, &str)],
    mut values: Map<String, Value>,
) -> String {
    let definitions: Vec<Value> = metrics
        .iter()
        .map(|(name, unit)| json!({"Name": name, "Unit": unit}))
        .collect();
    values.insert(
        "_aws".to_owned(),
        json!({
            "Timestamp": at,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [dimensions],
                "Metrics": definitions,
            }],
        }),
    );
    Value::Object(values).to_string()
}
