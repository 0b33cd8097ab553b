//! The `capture` gateway for local runs: each message is written as `<directory>/<id>.eml`
//! instead of being sent.
//!
//! The file is the exact MIME an SMTP relay would receive, except that it also carries a `Bcc`
//! header: a capture file is never delivered, and without that header nobody could check who the
//! Bcc recipients would have been. Writes are atomic (a temporary file in the same directory,
//! then a rename), so a reader never sees half a message, and a retried message replaces its
//! earlier file instead of adding a second one: the message id is the idempotency key.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;

use crate::clock::EpochMillis;
use crate::message::OutboundMessage;
use crate::mime::{self, BccHeader, MimeOptions};
use crate::providers::{Accepted, ErrorClass, ProbeReport, Provider, SendError};

const PROVIDER: &str = "capture";

/// Distinguishes temporary files of concurrent writes within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes messages as `.eml` files into one directory.
#[derive(Debug, Clone)]
pub struct CaptureProvider {
    gateway_id: String,
    directory: PathBuf,
}

impl CaptureProvider {
    /// A capture gateway writing into `directory`. The directory is not created: a missing or
    /// read-only directory is reported by [`Provider::probe`] and by every send
    /// (`Unavailable`), so a typo in the config is noticed instead of filling a new folder.
    pub fn new(gateway_id: impl Into<String>, directory: impl Into<PathBuf>) -> Self {
        Self {
            gateway_id: gateway_id.into(),
            directory: directory.into(),
        }
    }

    /// The file a message with this id is written to.
    pub fn path_for(&self, message_id: &str) -> PathBuf {
        self.directory.join(format!("{message_id}.eml"))
    }
}

#[async_trait]
impl Provider for CaptureProvider {
    fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// Writes the message; the provider message id is the file name.
    async fn send(
        &self,
        message: &OutboundMessage,
        now: EpochMillis,
    ) -> Result<Accepted, SendError> {
        let options = MimeOptions {
            bcc: BccHeader::Include,
            ..MimeOptions::default()
        };
        let bytes = mime::build_with(message, now, &options).into_bytes();
        let target = self.path_for(message.id());
        let directory = self.directory.clone();
        let file_name = format!("{}.eml", message.id());
        run_blocking(move || write_atomically(&directory, &target, &bytes)).await?;
        Ok(Accepted {
            provider_message_id: Some(file_name),
            substituted_sender: None,
        })
    }

    /// Creates and removes a temporary file in the directory.
    async fn probe(&self) -> Result<ProbeReport, SendError> {
        let started = Instant::now();
        let directory = self.directory.clone();
        run_blocking(move || {
            let temp = temp_path(&directory);
            std::fs::write(&temp, b"")?;
            std::fs::remove_file(&temp)
        })
        .await?;
        Ok(ProbeReport::new(started.elapsed()))
    }
}

fn temp_path(directory: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    directory.join(format!(".capture-{}-{n}.tmp", std::process::id()))
}

fn write_atomically(directory: &Path, target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = temp_path(directory);
    let result = std::fs::write(&temp, bytes).and_then(|()| std::fs::rename(&temp, target));
    if result.is_err() {
        // Best effort: a leftover temporary file is harmless, the error that matters is returned.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

async fn run_blocking<F>(work: F) -> Result<(), SendError>
where
    F: FnOnce() -> std::io::Result<()> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SendError {
            // The file system of a local run failing is the gateway being unusable, not the
            // message being wrong.
            class: ErrorClass::Unavailable,
            provider: PROVIDER,
            http_status: None,
            retry_after: None,
            detail: format!("cannot write to the capture directory: {}", e.kind()),
            source: Some(Box::new(e)),
        }),
        Err(e) => Err(SendError {
            class: ErrorClass::Unavailable,
            provider: PROVIDER,
            http_status: None,
            retry_after: None,
            detail: "capture write task failed".to_owned(),
            source: Some(Box::new(e)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use mail_parser::MessageParser;

    use super::*;
    use crate::message::parse_message;

    fn message(id: &str, subject: &str) -> OutboundMessage {
        let json = serde_json::json!({
            "id": id, "from": "ada@clinic.example", "to": ["p@example.org"],
            "bcc": ["audit@clinic.example"], "subject": subject, "text": "hello"
        });
        parse_message(json.to_string().as_bytes(), None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gw-capture-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        dir
    }

    #[tokio::test]
    async fn message_is_written_as_eml_named_after_its_id() {
        let dir = temp_dir("write");
        let provider = CaptureProvider::new("local", &dir);
        let accepted = provider
            .send(&message("m-1", "first"), 1_000)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(accepted.provider_message_id.as_deref(), Some("m-1.eml"));
        let bytes = std::fs::read(dir.join("m-1.eml")).unwrap_or_else(|e| panic!("{e}"));
        let parsed = MessageParser::default()
            .parse(&bytes)
            .unwrap_or_else(|| panic!("unparseable"));
        assert_eq!(parsed.subject(), Some("first"));
        assert!(
            parsed
                .bcc()
                .is_some_and(|b| b.contains("audit@clinic.example"))
        );
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("m-1.eml")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_retried_message_replaces_its_earlier_file() {
        let dir = temp_dir("retry");
        let provider = CaptureProvider::new("local", &dir);
        for subject in ["first", "second"] {
            provider
                .send(&message("m-2", subject), 1_000)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let bytes = std::fs::read(dir.join("m-2.eml")).unwrap_or_else(|e| panic!("{e}"));
        let parsed = MessageParser::default()
            .parse(&bytes)
            .unwrap_or_else(|| panic!("unparseable"));
        assert_eq!(parsed.subject(), Some("second"));
        assert_eq!(std::fs::read_dir(&dir).map(Iterator::count).ok(), Some(1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn missing_directory_is_unavailable_for_send_and_probe() {
        let dir = std::env::temp_dir().join(format!("gw-capture-missing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let provider = CaptureProvider::new("local", &dir);
        let sent = provider.send(&message("m-3", "s"), 1_000).await;
        assert_eq!(
            sent.map_err(|e| e.class()).err(),
            Some(ErrorClass::Unavailable)
        );
        let probed = provider.probe().await;
        assert_eq!(
            probed.map_err(|e| e.class()).err(),
            Some(ErrorClass::Unavailable)
        );
    }

    #[tokio::test]
    async fn probe_succeeds_on_a_writable_directory_and_leaves_nothing() {
        let dir = temp_dir("probe");
        let provider = CaptureProvider::new("local", &dir);
        provider.probe().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read_dir(&dir).map(Iterator::count).ok(), Some(0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
