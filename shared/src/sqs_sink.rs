//! The [`EventSink`] port on an SQS events queue: each [`GatewayEvent`] is one message whose
//! body is the event's JSON (the versioned wire contract of [`crate::events`]).
//!
//! Events go out with `SendMessageBatch`, at most [`MAX_BATCH_ENTRIES`] entries and
//! [`MAX_BATCH_BYTES`] of bodies per request. Entry ids are the entry's index within its
//! request, so they are unique per batch whatever the events contain.
//!
//! **Size bound.** SQS now accepts up to 1 MiB per message and per batch, but each event is held
//! to [`MAX_EVENT_BYTES`] (256 KiB): the recorder consumes this queue through a Lambda event
//! source mapping, and a batch of ten records must fit Lambda's 6 MB invocation payload
//! (10 × 1 MiB would not; 10 × 256 KiB does, with room for the record envelope). 256 KiB was also
//! SQS's limit until 2025, so a queue or tool still configured with the old limit accepts it.
//! An event over the bound is [`SinkError::TooLarge`]: it can never succeed, and the caller has
//! to shrink it, not retry. [`EventSink::emit`] then sends nothing of that call;
//! [`EventSink::emit_each`] (what the sender uses) sends the others and answers per event.
//!
//! **Failures.** Entries SQS refuses, and whole requests that fail, are retried with exponential
//! backoff (only the entries not yet accepted); what still fails after the last attempt is
//! [`SinkError::Unavailable`] (retryable). A request failing for a reason that cannot heal
//! within the call (missing queue, refused request) is not repeated here, but is reported as
//! `Unavailable` too, the only retryable variant: the caller keeps the events and emits them on
//! a later attempt, when configuration may have been fixed. Some events may then have been delivered twice over
//! the caller's retries, which recording absorbs: it is idempotent.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use crate::events::{EventSink, GatewayEvent, SinkError};
use crate::queue::QueueError;
use crate::queue::sqs::classify;

/// The largest event body this sink sends, in bytes of JSON (see the module docs for why).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// The most entries per `SendMessageBatch` (SQS's limit).
pub const MAX_BATCH_ENTRIES: usize = 10;

/// The most body bytes per `SendMessageBatch` (SQS's 1 MiB limit per request).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// How often, and how patiently, failed sends are repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkRetry {
    /// Attempts per request, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each later one.
    pub base_delay: Duration,
}

impl Default for SinkRetry {
    /// Three attempts, 50 ms then 100 ms apart: a few hundred milliseconds at most, because the
    /// sender is on the Lambda clock and the ledger keeps the truth meanwhile.
    fn default() -> Self {
        Self {
            attempts: 3,
            base_delay: Duration::from_millis(50),
        }
    }
}

/// An [`EventSink`] writing to one SQS queue.
#[derive(Debug, Clone)]
pub struct SqsEventSink {
    client: Client,
    url: String,
    retry: SinkRetry,
}

impl SqsEventSink {
    /// A sink sending to the queue at `url` with the default [`SinkRetry`].
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
            retry: SinkRetry::default(),
        }
    }

    /// The same sink with another retry policy.
    pub fn with_retry(mut self, retry: SinkRetry) -> Self {
        self.retry = retry;
        self
    }

    /// The queue's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one request's bodies, retrying the refused entries; returns what failed last.
    async fn send_chunk(&self, bodies: &[String]) -> Result<(), SinkError> {
        let mut pending: Vec<&String> = bodies.iter().collect();
        let attempts = self.retry.attempts.max(1);
        let mut last: Option<SinkError> = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(self.retry.base_delay.saturating_mul(1 << (attempt - 1))).await;
            }
            match self.send_once(&pending).await {
                Ok(refused) if refused.is_empty() => return Ok(()),
                Ok(refused) => {
                    last = Some(SinkError::Unavailable(
                        format!(
                            "{} of {} events refused by the events queue",
                            refused.len(),
                            pending.len()
                        )
                        .into(),
                    ));
                    pending = refused.into_iter().map(|i| pending[i]).collect();
                }
                // A missing queue or a refused request will not heal within this call.
                Err(e) if !e.is_retryable() => return Err(SinkError::Unavailable(Box::new(e))),
                Err(e) => last = Some(SinkError::Unavailable(Box::new(e))),
            }
        }
        Err(last.unwrap_or_else(|| SinkError::Unavailable("no attempt was made".into())))
    }

    /// One `SendMessageBatch`; returns the indexes (into `bodies`) of refused entries.
    async fn send_once(&self, bodies: &[&String]) -> Result<Vec<usize>, QueueError> {
        let entries = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body.as_str())
                    .build()
                    .map_err(|e| QueueError::InvalidRequest(format!("batch entry: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| classify(e, &self.url))?;
        let mut refused: Vec<usize> = out
            .failed()
            .iter()
            .map(|f| f.id().parse::<usize>().unwrap_or(usize::MAX))
            .filter(|i| *i < bodies.len())
            .collect();
        // An id SQS answered with but we never sent cannot be matched; resend everything rather
        // than lose one.
        if refused.len() < out.failed().len() {
            refused = (0..bodies.len()).collect();
        }
        refused.sort_unstable();
        refused.dedup();
        Ok(refused)
    }
}

/// Serialises `events` and groups the bodies into requests within SQS's batch limits.
/// Refuses the whole call when any event is over [`MAX_EVENT_BYTES`].
pub fn plan_batches(events: &[GatewayEvent]) -> Result<Vec<Vec<String>>, SinkError> {
    let mut bodies = Vec::with_capacity(events.len());
    for event in events {
        let body = serde_json::to_string(event).map_err(SinkError::Serialize)?;
        if body.len() > MAX_EVENT_BYTES {
            return Err(SinkError::TooLarge {
                bytes: body.len(),
                max: MAX_EVENT_BYTES,
            });
        }
        bodies.push(body);
    }
    let mut batches: Vec<Vec<String>> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut current_bytes = 0;
    for body in bodies {
        if current.len() == MAX_BATCH_ENTRIES || current_bytes + body.len() > MAX_BATCH_BYTES {
            batches.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += body.len();
        current.push(body);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    Ok(batches)
}

/// Serialises one event and holds it to [`MAX_EVENT_BYTES`].
fn body_of(event: &GatewayEvent) -> Result<String, SinkError> {
    let body = serde_json::to_string(event).map_err(SinkError::Serialize)?;
    if body.len() > MAX_EVENT_BYTES {
        return Err(SinkError::TooLarge {
            bytes: body.len(),
            max: MAX_EVENT_BYTES,
        });
    }
    Ok(body)
}

#[async_trait]
impl EventSink for SqsEventSink {
    async fn emit(&self, events: &[GatewayEvent]) -> Result<(), SinkError> {
        for batch in plan_batches(events)? {
            self.send_chunk(&batch).await?;
        }
        Ok(())
    }

    async fn emit_each(&self, events: &[GatewayEvent]) -> Vec<Result<(), SinkError>> {
        let mut results: Vec<Result<(), SinkError>> = Vec::with_capacity(events.len());
        let mut good: Vec<(usize, String)> = Vec::new();
        for (i, event) in events.iter().enumerate() {
            match body_of(event) {
                Ok(body) => {
                    good.push((i, body));
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        // The same grouping as `plan_batches`, keeping each body's index.
        let mut start = 0;
        while start < good.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < good.len()
                && end - start < MAX_BATCH_ENTRIES
                && (end == start || bytes + good[end].1.len() <= MAX_BATCH_BYTES)
            {
                bytes += good[end].1.len();
                end += 1;
            }
            let bodies: Vec<String> = good[start..end].iter().map(|(_, b)| b.clone()).collect();
            if let Err(error) = self.send_chunk(&bodies).await {
                let mut text = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    text = format!("{text}: {cause}");
                    source = cause.source();
                }
                for (i, _) in &good[start..end] {
                    results[*i] = Err(SinkError::Unavailable(text.clone().into()));
                }
            }
            start = end;
        }
        results
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::events::{HealthEvent, HealthStatus};

    fn health(error_len: usize) -> GatewayEvent {
        GatewayEvent::Health(HealthEvent {
            gateway_id: "g".into(),
            gateway_type: "mailgun".into(),
            status: HealthStatus::Unhealthy,
            latency_ms: None,
            consecutive_failures: 3,
            consecutive_successes: 0,
            error: Some("x".repeat(error_len)),
            at: 1_795_910_400_000,
        })
    }

    mod against_a_fake_sqs {
        use wiremock::matchers::{header, method};
        use wiremock::{Mock, MockServer, ResponseTemplate};

        use super::*;

        const TARGET: &str = "AmazonSQS.SendMessageBatch";

        fn sink(server: &MockServer) -> SqsEventSink {
            let config = aws_sdk_sqs::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_sqs::config::Region::new("us-east-1"))
                .endpoint_url(server.uri())
                .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                    "test", "test", None, None, "test",
                ))
                .build();
            SqsEventSink::new(Client::from_conf(config), format!("{}/q", server.uri())).with_retry(
                SinkRetry {
                    attempts: 3,
                    base_delay: Duration::from_millis(1),
                },
            )
        }

        fn answer(failed_ids: &[&str]) -> ResponseTemplate {
            let failed: Vec<_> = failed_ids
                .iter()
                .map(|id| {
                    serde_json::json!({"Id": id, "Code": "InternalError", "SenderFault": false})
                })
                .collect();
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/x-amz-json-1.0")
                .set_body_string(
                    serde_json::json!({"Successful": [], "Failed": failed}).to_string(),
                )
        }

        /// The message bodies of every `SendMessageBatch` the server received, per request.
        async fn sent_bodies(server: &MockServer) -> Vec<Vec<String>> {
            server
                .received_requests()
                .await
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    body["Entries"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e["MessageBody"].as_str().unwrap().to_owned())
                        .collect()
                })
                .collect()
        }

        #[tokio::test]
        async fn emit_each_sends_the_events_that_fit_and_answers_per_event() {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .and(header("x-amz-target", TARGET))
                .respond_with(answer(&[]))
                .mount(&server)
                .await;
            let events = [health(1), health(MAX_EVENT_BYTES), health(3)];
            let results = sink(&server).emit_each(&events).await;
            assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
            assert!(
                matches!(
                    results[1],
                    Err(SinkError::TooLarge {
                        max: MAX_EVENT_BYTES,
                        ..
                    })
                ),
                "{results:?}"
            );
            let fitting = plan_batches(&[events[0].clone(), events[2].clone()])
                .unwrap()
                .remove(0);
            assert_eq!(sent_bodies(&server).await, [fitting]);
        }

        #[tokio::test]
        async fn refused_entries_alone_are_sent_again() {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .and(header("x-amz-target", TARGET))
                .respond_with(answer(&["1"]))
                .up_to_n_times(1)
                .with_priority(1)
                .mount(&server)
                .await;
            Mock::given(method("POST"))
                .and(header("x-amz-target", TARGET))
                .respond_with(answer(&[]))
                .with_priority(2)
                .mount(&server)
                .await;
            let events = [health(1), health(2)];
            sink(&server).emit(&events).await.unwrap();
            let bodies = plan_batches(&events).unwrap().remove(0);
            assert_eq!(
                sent_bodies(&server).await,
                [bodies.clone(), vec![bodies[1].clone()]]
            );
        }

        #[tokio::test]
        async fn entries_refused_on_every_attempt_are_unavailable() {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .and(header("x-amz-target", TARGET))
                .respond_with(answer(&["0"]))
                .mount(&server)
                .await;
            let err = sink(&server).emit(&[health(1)]).await.unwrap_err();
            assert!(matches!(err, SinkError::Unavailable(_)), "{err:?}");
            assert!(err.is_retryable());
            assert_eq!(
                sent_bodies(&server).await.len(),
                3,
                "one request per attempt"
            );
        }
    }

    #[test]
    fn batches_hold_at_most_ten_entries() {
        let events: Vec<_> = (0..25).map(|_| health(10)).collect();
        let sizes: Vec<_> = plan_batches(&events)
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [10, 10, 5]);
    }

    #[test]
    fn batches_hold_at_most_one_mebibyte_of_bodies() {
        let events: Vec<_> = (0..6).map(|_| health(200 * 1024)).collect();
        let batches = plan_batches(&events).unwrap();
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [5, 1]);
        for batch in &batches {
            assert!(batch.iter().map(String::len).sum::<usize>() <= MAX_BATCH_BYTES);
        }
    }

    #[test]
    fn event_over_the_bound_is_too_large_and_nothing_is_planned() {
        let events = [health(10), health(MAX_EVENT_BYTES)];
        match plan_batches(&events) {
            Err(SinkError::TooLarge { bytes, max }) => {
                assert!(bytes > MAX_EVENT_BYTES);
                assert_eq!(max, MAX_EVENT_BYTES);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn bodies_are_the_events_wire_json() {
        let event = health(3);
        let batches = plan_batches(std::slice::from_ref(&event)).unwrap();
        let back: GatewayEvent = serde_json::from_str(&batches[0][0]).unwrap();
        assert_eq!(back, event);
    }
}
