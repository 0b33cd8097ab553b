//! Transactional and bulk mail share the limits; bulk may not take the transactional reserve.

use super::*;

fn transactional(from: usize, n: usize) -> Vec<Received> {
    records(
        (from..from + n)
            .map(|i| body(&format!("t-{i}"), "dr@clinic.example", &["p@example.org"]))
            .collect(),
    )
}

fn bulk(from: usize, n: usize) -> Vec<Received> {
    records(
        (from..from + n)
            .map(|i| {
                serde_json::json!({"id": format!("b-{i}"), "from": "news@clinic.example",
                    "to": ["p@example.org"], "subject": "Newsletter", "text": "…",
                    "stream": "bulk"})
                .to_string()
            })
            .collect(),
    )
}

#[tokio::test]
async fn bulk_mail_never_takes_the_transactional_reserve() {
    // A day limit of 10 with the default 10 % reserve: bulk may take 9, the 10th is kept for
    // transactional mail.
    let h = harness(
        &[("a", Reply::Accept)],
        r#", "rate_limits": {"workspace_daily": 10}"#,
        "",
    );
    let report = h.run(&bulk(0, 12)).await;
    assert_eq!(report.metrics.sent, 9, "bulk stops at 9 of 10");
    assert_eq!(report.metrics.deferred, 3);
    let report = h.run(&transactional(0, 1)).await;
    assert_eq!(
        report.metrics.sent, 1,
        "the reserve is there for a transactional message"
    );
    let report = h.run(&transactional(1, 1)).await;
    assert_eq!(
        report.metrics.sent, 0,
        "and the day limit still holds for it"
    );
}
