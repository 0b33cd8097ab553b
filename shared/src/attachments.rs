//! Attachments by reference: a message may name S3 objects instead of carrying its attachments
//! inline (`"s3": {"bucket", "key", "size", "sha256"}`, ARCHITECTURE §2.1), so a scanned
//! referral letter larger than SQS's 1 MiB still travels. The sender reads them when it sends
//! ([`read_all`], before the first provider call of the message), from the deployment's
//! attachments bucket only.
//!
//! | what happens | outcome |
//! |---|---|
//! | the object is there, of the size (and SHA-256) the message says | sent with it |
//! | no such object, another size or digest, another bucket, no bucket configured | **failed** for good, naming the attachment (`attachments[1] (scan.pdf): …`) |
//! | S3 unreachable, throttling, a permission refused | deferred and read again later |
//! | larger than a provider takes | that provider answers `Unsuitable`; the next gateway is tried |
//!
//! A refused permission is deferred, not failed: the sender's role can read (and list, so
//! that a missing key is a 404 rather than a 403) its bucket, and a role that cannot is a
//! deployment fault to fix, not a bad message.

use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;

use crate::message::{OutboundMessage, S3Ref};

/// Why an object could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// There is no such object (or bucket).
    #[error("does not exist")]
    Missing,
    /// It could not be read now (unreachable, throttled, refused); worth trying again.
    #[error("could not be read now: {0}")]
    Unavailable(String),
}

/// Where referenced attachments are read from.
#[async_trait]
pub trait AttachmentStore: Send + Sync + fmt::Debug {
    /// The bytes of `key` in `bucket`.
    async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, FetchError>;
}

/// A directory standing in for S3 locally (`gateway serve --attachments-dir`): the object
/// `key` of `bucket` is the file `{root}/{bucket}/{key}`. Keys with `..` are refused.
#[derive(Debug, Clone)]
pub struct Directory {
    root: PathBuf,
}

impl Directory {
    /// Objects under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

#[async_trait]
impl AttachmentStore for Directory {
    async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, FetchError> {
        if key.split('/').any(|part| part == "..") || bucket.contains('/') {
            return Err(FetchError::Missing);
        }
        match tokio::fs::read(self.root.join(bucket).join(key)).await {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FetchError::Missing),
            Err(e) => Err(FetchError::Unavailable(e.kind().to_string())),
        }
    }
}

/// Amazon S3 (`GetObject`).
#[cfg(feature = "providers")]
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
}

#[cfg(feature = "providers")]
impl S3Store {
    /// A store over `client`.
    pub fn new(client: aws_sdk_s3::Client) -> Self {
        Self { client }
    }

    /// A client from shared AWS settings, path-style addressing when an endpoint is set (the
    /// emulator serves buckets by path).
    pub fn from_sdk(sdk: &aws_config::SdkConfig) -> Self {
        let path_style = sdk.endpoint_url().is_some();
        let conf = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(path_style)
            .build();
        Self::new(aws_sdk_s3::Client::from_conf(conf))
    }
}

#[cfg(feature = "providers")]
impl S3Store {
    /// Writes `bytes` as `key` in `bucket` (`gateway send --bucket`).
    pub async fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) -> Result<(), String> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(&e).to_string())
    }
}

#[cfg(feature = "providers")]
#[async_trait]
impl AttachmentStore for S3Store {
    async fn get(&self, bucket: &str, key: &str) -> Result<Vec<u8>, FetchError> {
        use aws_sdk_s3::operation::get_object::GetObjectError;
        match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object
                .body
                .collect()
                .await
                .map(|b| b.into_bytes().to_vec())
                .map_err(|e| FetchError::Unavailable(format!("reading the body: {e}"))),
            Err(e) => {
                let missing = matches!(e.as_service_error(), Some(GetObjectError::NoSuchKey(_)))
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 404);
                if missing {
                    Err(FetchError::Missing)
                } else {
                    Err(FetchError::Unavailable(
                        aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
                    ))
                }
            }
        }
    }
}

/// Where a deployment's referenced attachments live: the store and the one bucket messages may
/// name.
#[derive(Debug, Clone)]
pub struct Attachments {
    /// Where objects are read.
    pub store: std::sync::Arc<dyn AttachmentStore>,
    /// The bucket every reference must name.
    pub bucket: String,
}

/// Why a message's attachments could not all be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFailure {
    /// The message cannot be sent as it is (the reason names the attachment).
    Permanent(String),
    /// Worth trying again later.
    Transient(String),
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn name(i: usize, filename: &str) -> String {
    format!("attachments[{i}] ({filename})")
}

/// Reads every referenced attachment of `message` from `attachments` (all at once) and
/// checks each against its reference: the message with its content in place, or why not.
pub async fn read_all(
    message: OutboundMessage,
    attachments: Option<&Attachments>,
) -> Result<OutboundMessage, ReadFailure> {
    let unread: Vec<(usize, String, S3Ref)> = message
        .attachments()
        .iter()
        .enumerate()
        .filter_map(|(i, a)| Some((i, a.filename().to_owned(), a.unread()?.clone())))
        .collect();
    if unread.is_empty() {
        return Ok(message);
    }
    let Some(attachments) = attachments else {
        let (i, filename, r) = &unread[0];
        return Err(ReadFailure::Permanent(format!(
            "{}: names s3://{}/{} but this sender has no attachments bucket",
            name(*i, filename),
            r.bucket,
            r.key
        )));
    };
    for (i, filename, r) in &unread {
        if r.bucket != attachments.bucket {
            return Err(ReadFailure::Permanent(format!(
                "{}: bucket {:?} is not this deployment's attachments bucket {:?}",
                name(*i, filename),
                r.bucket,
                attachments.bucket
            )));
        }
    }
    let reads = futures::future::join_all(
        unread
            .iter()
            .map(|(_, _, r)| attachments.store.get(&r.bucket, &r.key)),
    )
    .await;
    let mut contents = Vec::with_capacity(unread.len());
    for ((i, filename, r), read) in unread.into_iter().zip(reads) {
        let at = name(i, &filename);
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(FetchError::Missing) => {
                return Err(ReadFailure::Permanent(format!(
                    "{at}: s3://{}/{} does not exist",
                    r.bucket, r.key
                )));
            }
            Err(FetchError::Unavailable(why)) => {
                return Err(ReadFailure::Transient(format!(
                    "{at}: s3://{}/{} could not be read: {why}",
                    r.bucket, r.key
                )));
            }
        };
        if bytes.len() as u64 != r.size {
            return Err(ReadFailure::Permanent(format!(
                "{at}: s3://{}/{} is {} bytes, the message says {}",
                r.bucket,
                r.key,
                bytes.len(),
                r.size
            )));
        }
        if let Some(want) = &r.sha256
            && sha256_hex(&bytes) != *want
        {
            return Err(ReadFailure::Permanent(format!(
                "{at}: s3://{}/{} does not match the message's sha256",
                r.bucket, r.key
            )));
        }
        contents.push((i, bytes));
    }
    Ok(message.with_read_attachments(contents))
}

#[cfg(test)]
mod tests;
