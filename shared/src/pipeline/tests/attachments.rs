//! Attachments given by reference, read when the message is sent.

use super::*;
use crate::attachments::{Attachments, Directory, sha256_hex};

const SCAN: &[u8] = b"%PDF-1.4 referral";

fn with_reference(id: &str, key: &str, size: usize) -> Vec<Received> {
    records(vec![
        serde_json::json!({"id": id, "from": "dr@clinic.example", "to": ["p@example.org"],
            "subject": "Referral", "text": "Attached.",
            "attachments": [{"filename": "scan.pdf", "content_type": "application/pdf",
                "s3": {"bucket": "attachments", "key": key, "size": size,
                       "sha256": sha256_hex(SCAN)}}]})
        .to_string(),
    ])
}

#[tokio::test]
async fn a_referenced_attachment_is_sent_and_a_missing_one_fails_naming_it() {
    let root = std::env::temp_dir().join(format!("gw-pipe-attach-{}", std::process::id()));
    std::fs::create_dir_all(root.join("attachments")).unwrap();
    std::fs::write(root.join("attachments/scan.pdf"), SCAN).unwrap();
    let mut h = harness(&[("a", Reply::Accept)], "", "");
    h.pipeline = h.pipeline.clone().with_attachments(Attachments {
        store: Arc::new(Directory::new(&root)),
        bucket: "attachments".to_owned(),
    });

    let report = h.run(&with_reference("m-ok", "scan.pdf", SCAN.len())).await;
    assert_eq!(report.metrics.sent, 1);
    assert_eq!(h.calls("a"), ["m-ok"]);

    let report = h
        .run(&with_reference("m-gone", "gone.pdf", SCAN.len()))
        .await;
    assert_eq!(report.metrics.sent, 0);
    assert_eq!(
        h.calls("a").len(),
        1,
        "no call for a message whose attachment is missing"
    );
    let failed = h
        .outcomes()
        .into_iter()
        .find(|o| o.message_id == "m-gone")
        .expect("an outcome for m-gone");
    assert_eq!(
        failed.outcome,
        Outcome::Rejected,
        "refused for good, not retried"
    );
    let reason = failed.reason.unwrap_or_default();
    assert!(
        reason.contains("attachments[0] (scan.pdf): s3://attachments/gone.pdf does not exist"),
        "{reason}"
    );
    assert!(matches!(report.items[0].disposition, Disposition::Done));
    std::fs::remove_dir_all(&root).unwrap();
}
