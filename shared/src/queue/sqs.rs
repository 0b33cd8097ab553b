//! The [`Queue`] port on Amazon SQS (standard queues).
//!
//! Requests map one to one: `SendMessage`, `ReceiveMessage` (asking for the
//! `ApproximateReceiveCount` and `SentTimestamp` system attributes), `DeleteMessageBatch`,
//! `ChangeMessageVisibility` and `ChangeMessageVisibilityBatch`. Batches larger than ten are
//! split. Errors are classified by error code and SDK error kind, never by message text.
//!
//! The SDK's own retries stay on here (unlike the DynamoDB adapter): every request of this
//! port is safe to repeat except `SendMessage`, whose duplicate the consumer's ledger absorbs.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};

/// The SQS SDK client, re-exported so callers need no direct SDK dependency.
pub use aws_sdk_sqs::Client;

use super::{
    EntryFailure, EntryFailureReason, MAX_BATCH, MAX_WAIT, Queue, QueueError, Received,
    VisibilityChange, check_max, visibility_seconds,
};

/// Bounded connect wait for SQS clients built by [`client`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Per-attempt bound for SQS requests; above the longest long poll ([`MAX_WAIT`]) so a poll is
/// never cut short.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(25);

/// The queue and event-sink adapters' SQS client on `sdk`, with bounded connect and
/// per-attempt waits so a stalled connection fails instead of hanging the invocation. The SDK's
/// own retries stay on: every SQS call here is safe to repeat (a repeated event is absorbed by
/// the idempotent recorder, a repeated visibility change or delete is harmless). Every entry
/// point builds its client here.
pub fn client(sdk: &aws_config::SdkConfig) -> Client {
    let config = aws_sdk_sqs::config::Builder::from(sdk)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .build();
    Client::from_conf(config)
}

/// [`client`] on the SDK configuration of the environment (`aws_config` honours
/// `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_SQS`, so tests point it at the emulator).
pub async fn client_from_env() -> Client {
    client(&aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await)
}

/// One SQS queue, addressed by URL.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    /// The queue at `url`, reached through `client`.
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// The queue's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The SDK client (shared with the event sink, for instance).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn classify<E, R>(&self, err: SdkError<E, R>) -> QueueError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        classify(err, &self.url)
    }
}

/// Classifies an SDK error by its code and kind. `queue` names the queue in
/// [`QueueError::MissingQueue`].
pub(crate) fn classify<E, R>(err: SdkError<E, R>, queue: &str) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if let SdkError::ServiceError(_) = &err {
        let code = err.code().unwrap_or_default().to_owned();
        return match code.as_str() {
            "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => {
                QueueError::MissingQueue {
                    queue: queue.to_owned(),
                }
            }
            "ReceiptHandleIsInvalid"
            | "MessageNotInflight"
            | "AWS.SimpleQueueService.MessageNotInflight" => QueueError::InvalidReceipt,
            "ThrottlingException"
            | "RequestThrottled"
            | "AWS.SimpleQueueService.RequestThrottled"
            | "KmsThrottled" => QueueError::Throttled,
            "InternalError" | "InternalFailure" | "ServiceUnavailable" => {
                QueueError::Unavailable(Box::new(err))
            }
            "" => QueueError::Unavailable(Box::new(err)),
            _ => QueueError::Refused { code },
        };
    }
    QueueError::Unavailable(Box::new(err))
}

fn entry_failure(entry: &BatchResultErrorEntry, receipts: &[&str]) -> EntryFailure {
    let receipt_handle = entry
        .id()
        .parse::<usize>()
        .ok()
        .and_then(|i| receipts.get(i))
        .map(|r| (*r).to_owned())
        .unwrap_or_default();
    let reason = match entry.code() {
        "ReceiptHandleIsInvalid"
        | "MessageNotInflight"
        | "AWS.SimpleQueueService.MessageNotInflight"
        | "InvalidParameterValue" => EntryFailureReason::InvalidReceipt,
        code => EntryFailureReason::Other {
            code: code.to_owned(),
            retryable: !entry.sender_fault(),
        },
    };
    EntryFailure {
        receipt_handle,
        reason,
    }
}

fn invalid_entry(e: impl std::fmt::Display) -> QueueError {
    QueueError::InvalidRequest(format!("batch entry could not be built: {e}"))
}

fn parse_received(message: &aws_sdk_sqs::types::Message) -> Result<Received, QueueError> {
    let attrs: Option<&HashMap<MessageSystemAttributeName, String>> = message.attributes();
    let attr = |name: MessageSystemAttributeName| attrs.and_then(|a| a.get(&name));
    let (Some(message_id), Some(receipt_handle)) = (message.message_id(), message.receipt_handle())
    else {
        return Err(QueueError::Unavailable(
            "SQS returned a message without id or receipt handle".into(),
        ));
    };
    Ok(Received {
        message_id: message_id.to_owned(),
        receipt_handle: receipt_handle.to_owned(),
        body: message.body().unwrap_or_default().to_owned(),
        // Absent only if SQS ignored the attribute request; 1 is the honest lower bound.
        receive_count: attr(MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        sent_at: attr(MessageSystemAttributeName::SentTimestamp)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, body: &str) -> Result<String, QueueError> {
        let out = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        out.message_id()
            .map(str::to_owned)
            .ok_or_else(|| QueueError::Unavailable("SQS accepted a message without an id".into()))
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        check_max(max)?;
        let wait_secs = i32::try_from(wait.min(MAX_WAIT).as_secs()).unwrap_or(0);
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(i32::try_from(max).unwrap_or(1))
            .wait_time_seconds(wait_secs)
            .visibility_timeout(visibility_seconds(visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        out.messages().iter().map(parse_received).collect()
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<EntryFailure>, QueueError> {
        let mut failed = Vec::new();
        for chunk in receipts.chunks(MAX_BATCH) {
            let handles: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let entries = handles
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*r)
                        .build()
                        .map_err(invalid_entry)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| self.classify(e))?;
            failed.extend(out.failed().iter().map(|f| entry_failure(f, &handles)));
        }
        Ok(failed)
    }

    async fn change_visibility(
        &self,
        receipt_handle: &str,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(visibility_seconds(visibility))
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        Ok(())
    }

    async fn change_visibility_batch(
        &self,
        changes: &[VisibilityChange],
    ) -> Result<Vec<EntryFailure>, QueueError> {
        let mut failed = Vec::new();
        for chunk in changes.chunks(MAX_BATCH) {
            let handles: Vec<&str> = chunk.iter().map(|c| c.receipt_handle.as_str()).collect();
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&c.receipt_handle)
                        .visibility_timeout(visibility_seconds(c.visibility))
                        .build()
                        .map_err(invalid_entry)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| self.classify(e))?;
            failed.extend(out.failed().iter().map(|f| entry_failure(f, &handles)));
        }
        Ok(failed)
    }
}

/// A dead-letter target for [`create_queue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedrivePolicy {
    /// The dead-letter queue's ARN.
    pub dead_letter_arn: String,
    /// Receives after which SQS moves the message (1..=1000).
    pub max_receive_count: u32,
}

/// Creates a standard queue named `name` (or returns the existing one with the same
/// attributes), optionally with a redrive policy; returns its URL. For local runs and tests;
/// deployments create queues in the template.
pub async fn create_queue(
    client: &Client,
    name: &str,
    redrive: Option<&RedrivePolicy>,
) -> Result<String, QueueError> {
    let mut request = client.create_queue().queue_name(name);
    if let Some(policy) = redrive {
        let json = serde_json::json!({
            "deadLetterTargetArn": policy.dead_letter_arn,
            "maxReceiveCount": policy.max_receive_count.to_string(),
        });
        request = request.attributes(QueueAttributeName::RedrivePolicy, json.to_string());
    }
    let out = request.send().await.map_err(|e| classify(e, name))?;
    out.queue_url()
        .map(str::to_owned)
        .ok_or_else(|| QueueError::Unavailable("CreateQueue returned no URL".into()))
}

/// The ARN of the queue at `url` (to name it as a dead-letter target).
pub async fn queue_arn(client: &Client, url: &str) -> Result<String, QueueError> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| classify(e, url))?;
    out.attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .ok_or_else(|| QueueError::Unavailable("GetQueueAttributes returned no QueueArn".into()))
}
