//! What every HTTP provider client shares: the one `reqwest::Client` per process, secrets that
//! never print, and the classification of answers and transport failures into [`ErrorClass`].
//!
//! # Status codes
//!
//! [`class_for_status`] is the common table (ARCHITECTURE §3.2, providers §1.4 and §2.4); a client
//! overrides single codes where its provider documents a different meaning (Mailgun's 404).
//!
//! | status | class | why |
//! |---|---|---|
//! | 401, 403, 407 | `Auth` | credentials or the account are refused: fail over and alert |
//! | 408 | `Unavailable` | the server gave up waiting for our request, so it did not take it |
//! | 413 | `Unsuitable` | too large for this gateway; another gateway's limits may fit |
//! | 429 | `Throttled` | rate limited; `retry_after` from the headers |
//! | 451 | `Auth` | refused for data residency: the gateway's region is misconfigured, not the message |
//! | other 4xx | `Permanent` | the request (so the message) is unacceptable |
//! | 504 | `Ambiguous` | a proxy timed out waiting for the provider, which has the request and may have accepted it |
//! | other 5xx | `Unavailable` | the provider failed before accepting |
//! | anything else not 2xx | `Unavailable` | an answer we do not understand is not an acceptance |
//!
//! # Transport failures: before or after the request was sent
//!
//! [`class_for_transport`] splits a `reqwest` error by *whether the provider can have seen the
//! request*, because only then is a retry elsewhere a duplicate risk:
//!
//! - **Before** (`Unavailable`, safe to fail over): the connection was never established —
//!   DNS failure, connection refused, connect timeout, TLS handshake failure. `reqwest` reports
//!   all of these as connect errors (`is_connect`), which we check first, because a connect
//!   timeout is also a timeout.
//! - **After** (`Ambiguous`): the connection was established and the request written (or being
//!   written) — the total timeout fired while waiting for the answer, the connection was reset or
//!   closed before a complete response arrived. The provider may have accepted the message.
//! - A request `reqwest` refused to build (an invalid base URL) never left the process:
//!   `Unavailable`, so the gateway is failed over and its breaker notices the misconfiguration.
//!
//! Once a success status has arrived, the provider has accepted the message even if reading the
//! body fails afterwards; clients then report an acceptance without a provider id rather than an
//! error, because a retry would be a duplicate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

use crate::clock::EpochMillis;
use crate::config::HttpSettings;
use crate::secrets::{LiveSecret, SecretString};

use super::{ErrorClass, SendError};

/// The header carrying our message id on every provider request (one name for raw MIME and
/// for the HTTP APIs' header fields).
pub use crate::mime::GATEWAY_ID_HEADER as GATEWAY_MESSAGE_ID_HEADER;

/// Longest `detail` taken from a provider's error body, in characters.
pub const MAX_DETAIL_CHARS: usize = 200;

/// The HTTP client could not be built (the TLS backend failed to initialise).
#[derive(Debug, thiserror::Error)]
#[error("building the HTTP client failed")]
pub struct HttpClientError(#[source] reqwest::Error);

/// Builds the one HTTP client a process shares between all provider clients (connection pools
/// are per client): `connect_timeout` bounds TCP connect plus TLS handshake, `request_timeout`
/// bounds a whole request from start to the end of the response body. Redirects are not followed:
/// a provider API never redirects a send, and following one would re-post the message.
pub fn build_client(settings: &HttpSettings) -> Result<reqwest::Client, HttpClientError> {
    crate::tls::reqwest_builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(HttpClientError)
}

/// The class of a non-success HTTP status, per the table in the module docs. 2xx statuses are
/// not errors and must not be passed here (they map to `Unavailable` like any unknown answer).
pub fn class_for_status(status: u16) -> ErrorClass {
    match status {
        401 | 403 | 407 | 451 => ErrorClass::Auth,
        408 => ErrorClass::Unavailable,
        413 => ErrorClass::Unsuitable,
        429 => ErrorClass::Throttled,
        400..=499 => ErrorClass::Permanent,
        504 => ErrorClass::Ambiguous,
        _ => ErrorClass::Unavailable,
    }
}

/// When the provider says capacity returns, as absolute epoch milliseconds, from the response
/// headers, given `now` (epoch ms).
///
/// - `Retry-After` wins when present and valid: delay-seconds (`120`) or an HTTP date
///   (`Wed, 21 Oct 2026 07:28:00 GMT`).
/// - Otherwise `X-RateLimit-Reset`: Unix seconds, possibly fractional (`1700000000.5`). A value
///   below 10⁹ cannot be a current Unix time, so it is read as seconds from now (some APIs send
///   the delay under this name).
/// - A time in the past becomes `now`: capacity is already back. Unparseable or negative values
///   are ignored (`None`), never guessed.
pub fn retry_after_from_headers(headers: &HeaderMap, now: EpochMillis) -> Option<EpochMillis> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    retry_after_from_values(header("retry-after"), header("x-ratelimit-reset"), now)
}

/// [`retry_after_from_headers`] for callers that hold the two header values some other way
/// (the AWS SDK's response type): `retry_after` is `Retry-After`, `reset` is
/// `X-RateLimit-Reset`.
pub fn retry_after_from_values(
    retry_after: Option<&str>,
    reset: Option<&str>,
    now: EpochMillis,
) -> Option<EpochMillis> {
    let at = retry_after
        .and_then(|v| parse_retry_after(v.trim(), now))
        .or_else(|| reset.and_then(|v| parse_rate_limit_reset(v.trim(), now)))?;
    Some(at.max(now))
}

/// `Retry-After`: delay-seconds or an HTTP date (IMF-fixdate and the obsolete forms), as an
/// absolute time (epoch ms). Anything else is ignored.
pub fn parse_retry_after(value: &str, now: EpochMillis) -> Option<EpochMillis> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        let ms = i64::try_from(seconds).ok()?.checked_mul(1000)?;
        return now.checked_add(ms);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    epoch_ms(date)
}

/// `X-RateLimit-Reset`: Unix seconds (float allowed), or a delay when implausibly small.
fn parse_rate_limit_reset(value: &str, now: EpochMillis) -> Option<EpochMillis> {
    const PLAUSIBLE_UNIX_SECONDS: f64 = 1e9;
    let seconds: f64 = value.parse().ok()?;
    if !seconds.is_finite() || !(0.0..=1e12).contains(&seconds) {
        return None;
    }
    // Bounded above, so the cast cannot saturate.
    #[allow(clippy::cast_possible_truncation)]
    let ms = (seconds * 1000.0).round() as i64;
    if seconds < PLAUSIBLE_UNIX_SECONDS {
        now.checked_add(ms)
    } else {
        Some(ms)
    }
}

fn epoch_ms(t: SystemTime) -> Option<EpochMillis> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// Whether a transport failure happened before the request could reach the provider. See the
/// module docs for the split.
pub fn class_for_transport(error: &reqwest::Error) -> ErrorClass {
    if error.is_connect() || error.is_builder() {
        ErrorClass::Unavailable
    } else {
        ErrorClass::Ambiguous
    }
}

/// The credential to use now (see [`LiveSecret`]). One that cannot be read is an `Auth`
/// failure: the secret was deleted, access to it denied or it is empty, which a retry does not
/// fix (a transient outage of the secret store keeps the last value instead).
pub async fn current_key(
    provider: &'static str,
    key: &LiveSecret,
) -> Result<SecretString, SendError> {
    key.current().await.map_err(|e| {
        SendError::new(
            ErrorClass::Auth,
            provider,
            format!("the credential cannot be read: {e}"),
        )
    })
}

/// Runs `attempt` with the credential to use now and, when the provider refuses it (`Auth`)
/// and the key was rotated meanwhile (see [`LiveSecret::after_refusal`]), once more with the
/// new one. A refused request was not accepted, so nothing can be sent twice.
pub async fn with_live_key<T, F, Fut>(
    provider: &'static str,
    key: &LiveSecret,
    mut attempt: F,
) -> Result<T, SendError>
where
    F: FnMut(SecretString) -> Fut,
    Fut: std::future::Future<Output = Result<T, SendError>>,
{
    let used = current_key(provider, key).await?;
    match attempt(used.clone()).await {
        Err(error) if error.class == ErrorClass::Auth => match key.after_refusal(&used).await {
            Some(fresh) => attempt(fresh).await,
            None => Err(error),
        },
        other => other,
    }
}

/// A classified error for a failed transport (no response).
pub fn transport_error(provider: &'static str, error: reqwest::Error) -> SendError {
    let class = class_for_transport(&error);
    let what = if error.is_connect() {
        "connection failed"
    } else if error.is_timeout() {
        "timed out waiting for the response"
    } else if error.is_builder() {
        "request could not be built"
    } else {
        "connection broken before a complete response"
    };
    // The URL can carry a domain but never a secret (keys travel in headers); strip it anyway
    // so the detail stays short and uniform.
    let error = error.without_url();
    SendError {
        class,
        provider,
        http_status: None,
        retry_after: None,
        detail: what.to_owned(),
        source: Some(Box::new(error)),
    }
}

/// A classified error for a non-success status, with `retry_after` from the headers for a
/// throttled answer and `detail` taken (truncated) from the body.
pub fn status_error(
    provider: &'static str,
    class: ErrorClass,
    status: u16,
    headers: &HeaderMap,
    body: &str,
    now: EpochMillis,
) -> SendError {
    let retry_after = match class {
        ErrorClass::Throttled | ErrorClass::Unavailable => retry_after_from_headers(headers, now),
        _ => None,
    };
    let message = error_message(body);
    let detail = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {message}")
    };
    SendError {
        class,
        provider,
        http_status: Some(status),
        retry_after,
        detail,
        source: None,
    }
}

/// Sends an authenticated probe request and turns its answer into a [`ProbeReport`](super::ProbeReport) or a
/// classified error (`class` maps a non-success status). Shared by the HTTP providers, whose
/// probes differ only in the request.
pub async fn probe_request(
    provider: &'static str,
    request: reqwest::RequestBuilder,
    class: fn(u16) -> ErrorClass,
) -> Result<super::ProbeReport, SendError> {
    let start = std::time::Instant::now();
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(provider, e))?;
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Ok(super::ProbeReport::new(elapsed(start)));
    }
    let body = response.text().await.unwrap_or_default();
    Err(probe_status_error(provider, class(status), status, &body))
}

/// A classified error for a non-success status answering a probe. Probes have no `now`, so
/// no `retry_after` is derived (a relative hint cannot be made absolute).
pub fn probe_status_error(
    provider: &'static str,
    class: ErrorClass,
    status: u16,
    body: &str,
) -> SendError {
    status_error(provider, class, status, &HeaderMap::new(), body, 0)
}

/// The human message of a provider error body: Mailgun's `message`, SendGrid's
/// `errors[].message` joined, SES's `message`, otherwise the body itself; truncated to
/// [`MAX_DETAIL_CHARS`] with control characters replaced, so it is safe as one log field.
pub fn error_message(body: &str) -> String {
    let text = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => json_message(&v).unwrap_or_else(|| body.to_owned()),
        Err(_) => body.to_owned(),
    };
    truncate_detail(text.trim())
}

fn json_message(v: &serde_json::Value) -> Option<String> {
    if let Some(errors) = v.get("errors").and_then(|e| e.as_array()) {
        let joined: Vec<&str> = errors
            .iter()
            .filter_map(|e| e.get("message").and_then(|m| m.as_str()))
            .collect();
        if !joined.is_empty() {
            return Some(joined.join("; "));
        }
    }
    ["message", "Message", "error"]
        .iter()
        .find_map(|k| v.get(*k).and_then(|m| m.as_str()).map(str::to_owned))
}

/// Cuts to [`MAX_DETAIL_CHARS`] characters and replaces control characters by spaces.
pub fn truncate_detail(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_DETAIL_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().nth(MAX_DETAIL_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// Elapsed time of a probe, saturating (never panics on a clock step).
pub(crate) fn elapsed(start: std::time::Instant) -> Duration {
    std::time::Instant::now().saturating_duration_since(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    const NOW: EpochMillis = 1_700_000_000_000;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn statuses_map_to_the_documented_classes() {
        let cases = [
            (400, ErrorClass::Permanent),
            (401, ErrorClass::Auth),
            (403, ErrorClass::Auth),
            (404, ErrorClass::Permanent),
            (405, ErrorClass::Permanent),
            (408, ErrorClass::Unavailable),
            (413, ErrorClass::Unsuitable),
            (422, ErrorClass::Permanent),
            (429, ErrorClass::Throttled),
            (451, ErrorClass::Auth),
            (500, ErrorClass::Unavailable),
            (502, ErrorClass::Unavailable),
            (503, ErrorClass::Unavailable),
            (504, ErrorClass::Ambiguous),
            (302, ErrorClass::Unavailable),
        ];
        for (status, class) in cases {
            assert_eq!(class_for_status(status), class, "status {status}");
        }
    }

    #[test]
    fn retry_hints_become_absolute_epoch_millis() {
        type Case = (&'static [(&'static str, &'static str)], Option<EpochMillis>);
        let cases: [Case; 10] = [
            (&[("retry-after", "120")], Some(NOW + 120_000)),
            (
                &[("retry-after", "Tue, 14 Nov 2023 22:14:20 GMT")],
                Some(1_700_000_060_000),
            ),
            (&[("x-ratelimit-reset", "1700000030")], Some(NOW + 30_000)),
            (
                &[("x-ratelimit-reset", "1700000030.25")],
                Some(NOW + 30_250),
            ),
            (&[("x-ratelimit-reset", "15")], Some(NOW + 15_000)),
            // A reset already past means capacity is back now.
            (&[("x-ratelimit-reset", "1600000000")], Some(NOW)),
            // Retry-After wins over X-RateLimit-Reset.
            (
                &[("retry-after", "5"), ("x-ratelimit-reset", "1700000030")],
                Some(NOW + 5_000),
            ),
            // An unreadable Retry-After falls back to the reset header.
            (
                &[("retry-after", "soon"), ("x-ratelimit-reset", "1700000030")],
                Some(NOW + 30_000),
            ),
            (&[("x-ratelimit-reset", "-3")], None),
            (&[], None),
        ];
        for (pairs, expected) in cases {
            assert_eq!(
                retry_after_from_headers(&headers(pairs), NOW),
                expected,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn error_messages_are_extracted_and_truncated() {
        assert_eq!(
            error_message(r#"{"message":"'to' is invalid"}"#),
            "'to' is invalid"
        );
        assert_eq!(
            error_message(r#"{"errors":[{"message":"a"},{"message":"b"}]}"#),
            "a; b"
        );
        assert_eq!(error_message("plain\r\ntext"), "plain  text");
        let long = "x".repeat(500);
        assert_eq!(error_message(&long).chars().count(), MAX_DETAIL_CHARS + 1);
    }

    fn client(total_ms: u64) -> reqwest::Client {
        let settings = HttpSettings {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_millis(total_ms),
        };
        match build_client(&settings) {
            Ok(c) => c,
            Err(e) => panic!("client: {e}"),
        }
    }

    #[tokio::test]
    async fn nothing_listening_is_unavailable_before_sending() {
        // Bind then drop to get a port that refuses connections.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = client(2_000)
            .post(format!("http://127.0.0.1:{port}/send"))
            .body("x")
            .send()
            .await
            .unwrap_err();
        assert_eq!(class_for_transport(&err), ErrorClass::Unavailable);
        let e = transport_error("test", err);
        assert_eq!(e.class, ErrorClass::Unavailable);
        assert_eq!(e.detail, "connection failed");
    }

    #[tokio::test]
    async fn a_server_that_reads_and_stalls_is_ambiguous() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            // Read the request, never answer.
            let _ = sock.read(&mut buf).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(sock);
        });
        let err = client(300)
            .post(format!("http://{addr}/send"))
            .body("x")
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout());
        assert_eq!(class_for_transport(&err), ErrorClass::Ambiguous);
        server.abort();
    }

    #[tokio::test]
    async fn a_connection_reset_after_the_request_is_ambiguous() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = sock.read(&mut buf).await;
            // Close without answering: the client sees an incomplete message.
            drop(sock);
        });
        let err = client(2_000)
            .post(format!("http://{addr}/send"))
            .body("x")
            .send()
            .await
            .unwrap_err();
        assert!(!err.is_connect());
        assert_eq!(class_for_transport(&err), ErrorClass::Ambiguous);
        let _ = server.await;
    }

    #[test]
    fn a_throttled_status_error_carries_the_reset() {
        let e = status_error(
            "test",
            ErrorClass::Throttled,
            429,
            &headers(&[("x-ratelimit-reset", "1700000010")]),
            r#"{"message":"slow down"}"#,
            NOW,
        );
        assert_eq!(e.retry_after, Some(NOW + 10_000));
        assert_eq!(e.http_status, Some(429));
        assert_eq!(e.detail, "HTTP 429: slow down");
        let e = status_error(
            "test",
            ErrorClass::Permanent,
            400,
            &headers(&[("retry-after", "3")]),
            "",
            NOW,
        );
        assert_eq!(e.retry_after, None);
        assert_eq!(e.detail, "HTTP 400");
    }
}
