#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::message::parse_message;

#[derive(Debug, Default)]
struct Objects {
    objects: HashMap<(String, String), Vec<u8>>,
    down: bool,
    reads: Mutex<usize>,
}

#[async_trait]
impl AttachmentStore for Objects {
    async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, FetchError> {
        *self.reads.lock().unwrap() += 1;
        if self.down {
            return Err(FetchError::Unavailable("503 Slow Down".into()));
        }
        self.objects
            .get(&(bucket.to_owned(), key.to_owned()))
            .cloned()
            .ok_or(FetchError::Missing)
    }
}

const SCAN: &[u8] = b"%PDF-1.4 a scanned referral letter";

fn message(reference: serde_json::Value) -> OutboundMessage {
    let body = serde_json::json!({
        "id": "m-1", "from": "dr@clinic.example", "to": ["p@example.org"],
        "subject": "Referral", "text": "Attached.",
        "attachments": [
            {"filename": "note.txt", "content_type": "text/plain", "content": "aGVsbG8="},
            {"filename": "scan.pdf", "content_type": "application/pdf", "s3": reference}
        ]
    });
    parse_message(body.to_string().as_bytes(), None).unwrap()
}

fn store(down: bool) -> Attachments {
    let mut objects = HashMap::new();
    objects.insert(
        (
            "clinic-attachments".to_owned(),
            "2026/12/scan.pdf".to_owned(),
        ),
        SCAN.to_vec(),
    );
    Attachments {
        store: Arc::new(Objects {
            objects,
            down,
            reads: Mutex::default(),
        }),
        bucket: "clinic-attachments".to_owned(),
    }
}

fn reference(size: usize, sha256: Option<String>) -> serde_json::Value {
    let mut r = serde_json::json!({"bucket": "clinic-attachments", "key": "2026/12/scan.pdf",
        "size": size});
    if let Some(h) = sha256 {
        r["sha256"] = h.into();
    }
    r
}

#[tokio::test]
async fn a_referenced_attachment_is_read_and_checked() {
    let m = message(reference(SCAN.len(), Some(sha256_hex(SCAN))));
    assert!(m.has_unread_attachments());
    let read = read_all(m, Some(&store(false))).await.unwrap();
    assert!(!read.has_unread_attachments());
    assert_eq!(read.attachments()[1].content(), SCAN);
    assert_eq!(read.attachments()[0].content(), b"hello");
}

#[tokio::test]
async fn a_missing_or_mismatched_object_fails_naming_the_attachment() {
    let cases = [
        (
            serde_json::json!({"bucket": "clinic-attachments", "key": "nope.pdf", "size": 3}),
            "attachments[1] (scan.pdf): s3://clinic-attachments/nope.pdf does not exist",
        ),
        (
            reference(SCAN.len() + 1, None),
            "attachments[1] (scan.pdf): s3://clinic-attachments/2026/12/scan.pdf is 34 bytes, the message says 35",
        ),
        (
            reference(SCAN.len(), Some("0".repeat(64))),
            "attachments[1] (scan.pdf): s3://clinic-attachments/2026/12/scan.pdf does not match the message's sha256",
        ),
        (
            serde_json::json!({"bucket": "someone-else", "key": "x", "size": 1}),
            "attachments[1] (scan.pdf): bucket \"someone-else\" is not this deployment's attachments bucket \"clinic-attachments\"",
        ),
    ];
    for (r, want) in cases {
        match read_all(message(r), Some(&store(false))).await {
            Err(ReadFailure::Permanent(why)) => assert_eq!(why, want),
            other => panic!("{other:?}"),
        }
    }
    match read_all(message(reference(SCAN.len(), None)), None).await {
        Err(ReadFailure::Permanent(why)) => assert!(why.contains("no attachments bucket"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_store_defers() {
    match read_all(message(reference(SCAN.len(), None)), Some(&store(true))).await {
        Err(ReadFailure::Transient(why)) => assert!(why.contains("503 Slow Down"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_directory_stands_in_for_a_bucket_and_refuses_to_climb_out() {
    let root = std::env::temp_dir().join(format!("gw-attach-{}", std::process::id()));
    std::fs::create_dir_all(root.join("b/2026")).unwrap();
    std::fs::write(root.join("b/2026/scan.pdf"), SCAN).unwrap();
    let dir = Directory::new(&root);
    assert_eq!(dir.get("b", "2026/scan.pdf").await.unwrap(), SCAN);
    assert_eq!(dir.get("b", "missing").await, Err(FetchError::Missing));
    assert_eq!(
        dir.get("b", "../b/2026/scan.pdf").await,
        Err(FetchError::Missing)
    );
    std::fs::remove_dir_all(&root).unwrap();
}
