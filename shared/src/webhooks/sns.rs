//! Amazon SNS message authentication (providers.md §3.6–3.8): the envelope SNS posts to an
//! HTTPS subscription, its canonical string to sign, the `SigningCertURL` rules and the RSA
//! signature check (PKCS#1 v1.5, SHA-1 for `SignatureVersion` 1, SHA-256 for 2).
//!
//! Trust comes from where the certificate is fetched: only `https://sns.<region>.amazonaws.com`
//! (or `.amazonaws.com.cn`) paths ending in `.pem`, over TLS with certificate verification, as
//! the AWS SDK validators do. The same host rule guards `SubscribeURL` before it is visited
//! (no request to an arbitrary URL on an attacker's say-so). The topic must also be on the
//! operator's allow-list: anyone can point their own, correctly signed, topic at the endpoint.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature;
use base64::Engine as _;
use serde::Deserialize;

use super::verify::Rejection;
use crate::clock::{Clock, EpochMillis, SystemClock};

/// The SNS envelope (the fields the signature and the gateway need; others are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnsMessage {
    /// `Notification`, `SubscriptionConfirmation` or `UnsubscribeConfirmation`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// SNS's message id (reused on SNS retries: dedupe on it).
    pub message_id: String,
    /// The topic.
    pub topic_arn: String,
    /// The payload (for SES events: the event JSON as a string).
    pub message: String,
    /// ISO 8601 UTC.
    pub timestamp: String,
    /// `1` or `2`.
    pub signature_version: String,
    /// Base64 RSA signature.
    pub signature: String,
    /// Where the signing certificate is.
    #[serde(rename = "SigningCertURL")]
    pub signing_cert_url: String,
    /// Only when set at publish time.
    #[serde(default)]
    pub subject: Option<String>,
    /// Subscription confirmations only.
    #[serde(default)]
    pub token: Option<String>,
    /// Subscription confirmations only.
    #[serde(rename = "SubscribeURL", default)]
    pub subscribe_url: Option<String>,
}

/// Reads the envelope; a body that is not one is [`Rejection::Malformed`].
pub fn parse(body: &[u8]) -> Result<SnsMessage, Rejection> {
    serde_json::from_slice(body).map_err(|_| Rejection::Malformed {
        field: "SNS envelope",
    })
}

/// The canonical string SNS signs: `Key\nValue\n` for each signed key present, in byte order of
/// the key names (`Subject`, `SubscribeURL`, `Token` only when present), values as decoded.
pub fn string_to_sign(m: &SnsMessage) -> String {
    let mut fields: Vec<(&str, &str)> = vec![
        ("Message", &m.message),
        ("MessageId", &m.message_id),
        ("Timestamp", &m.timestamp),
        ("TopicArn", &m.topic_arn),
        ("Type", &m.kind),
    ];
    if let Some(s) = m.subject.as_deref() {
        fields.push(("Subject", s));
    }
    if m.kind != "Notification" {
        if let Some(s) = m.subscribe_url.as_deref() {
            fields.push(("SubscribeURL", s));
        }
        if let Some(t) = m.token.as_deref() {
            fields.push(("Token", t));
        }
    }
    fields.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(k);
        out.push('\n');
        out.push_str(v);
        out.push('\n');
    }
    out
}

/// Whether `url` is an SNS endpoint URL: `https`, host `sns.<region>.amazonaws.com[.cn]`, no
/// credentials or port; with `pem`, a path ending in `.pem`.
pub fn is_sns_url(url: &str, pem: bool) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = u.host_str().unwrap_or_default();
    let region = host
        .strip_prefix("sns.")
        .and_then(|h| {
            h.strip_suffix(".amazonaws.com")
                .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
        })
        .unwrap_or_default();
    u.scheme() == "https"
        && u.username().is_empty()
        && u.password().is_none()
        && u.port().is_none()
        && region.len() >= 3
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && (!pem || u.path().ends_with(".pem"))
}

/// The region of an SNS topic ARN, `arn:<partition>:sns:<region>:<account>:<name>`.
pub fn topic_region(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("arn"), Some(_), Some("sns"), Some(region), Some(_), Some(_))
            if !region.is_empty() =>
        {
            Some(region)
        }
        _ => None,
    }
}

/// Whether the signing certificate comes from the SNS endpoint of the topic's own region:
/// SNS signs a topic's messages in the topic's region, so `sns.<region>.amazonaws.com` must
/// name the region of `TopicArn`. A certificate from another region's endpoint is not one SNS
/// would use for this topic.
pub fn cert_region_matches_topic(m: &SnsMessage) -> bool {
    let Some(region) = topic_region(&m.topic_arn) else {
        return false;
    };
    let Ok(u) = reqwest::Url::parse(&m.signing_cert_url) else {
        return false;
    };
    let host = u.host_str().unwrap_or_default();
    host.strip_prefix("sns.")
        .and_then(|h| {
            h.strip_suffix(".amazonaws.com")
                .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
        })
        .is_some_and(|r| r == region)
}

/// How old a notification's `Timestamp` may be. SNS retries an HTTP/S delivery for at most
/// 3,600 s (a hard limit of delivery policies; the template's subscriptions retry for about
/// 55 minutes), then moves it to the subscription's dead-letter queue, which keeps it 14 days and
/// whose dead letters the operator posts back through `/webhooks/ses` with their original
/// signature (RELIABILITY, "Redriving the SES dead-letter queue"). A bound of an hour or two
/// would refuse those redriven bounces; 14 days of retention, plus a day to redrive, is the
/// oldest a genuine delivery can be. Inside it a replayed notification changes nothing: the
/// recorder is idempotent on SES event ids.
pub const MAX_MESSAGE_AGE: Duration = Duration::from_secs(15 * 24 * 3600);

/// Checks that `m`'s `Timestamp` is at most [`MAX_MESSAGE_AGE`] old and at most
/// [`super::verify::MAX_AGE`] (clock skew) in the future. Call after the signature verified:
/// the timestamp is signed.
pub fn check_timestamp(m: &SnsMessage, now: EpochMillis) -> Result<(), Rejection> {
    let at = crate::clock::parse_rfc3339(&m.timestamp)
        .ok_or(Rejection::Malformed { field: "Timestamp" })?;
    let age_ms = now.saturating_sub(at);
    let (limit, age) = if age_ms >= 0 {
        (MAX_MESSAGE_AGE, age_ms.unsigned_abs())
    } else {
        (super::verify::MAX_AGE, age_ms.unsigned_abs())
    };
    if u128::from(age) > limit.as_millis() {
        return Err(Rejection::Stale {
            age_s: age / 1000,
            max_s: limit.as_secs(),
        });
    }
    Ok(())
}

/// Verifies `m`'s signature with the certificate's public key (DER `SubjectPublicKeyInfo`).
pub fn verify(m: &SnsMessage, public_key_spki: &[u8]) -> Result<(), Rejection> {
    let algorithm: &dyn signature::VerificationAlgorithm = match m.signature_version.as_str() {
        "1" => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        "2" => &signature::RSA_PKCS1_2048_8192_SHA256,
        _ => {
            return Err(Rejection::Malformed {
                field: "SignatureVersion",
            });
        }
    };
    let sig = base64::engine::general_purpose::STANDARD
        .decode(m.signature.trim())
        .map_err(|_| Rejection::Malformed { field: "Signature" })?;
    signature::UnparsedPublicKey::new(algorithm, public_key_spki)
        .verify(string_to_sign(m).as_bytes(), &sig)
        .map_err(|_| Rejection::Forged)
}

/// The `SubjectPublicKeyInfo` (DER) of the single X.509 certificate in `pem`. Anything else
/// around or instead of exactly one certificate is refused. Validity dates are not read: trust
/// comes from the URL and TLS (see the module docs).
pub fn public_key_from_pem(pem: &str) -> Option<Vec<u8>> {
    let body = pem
        .trim()
        .strip_prefix("-----BEGIN CERTIFICATE-----")?
        .strip_suffix("-----END CERTIFICATE-----")?;
    if body.contains("-----") {
        return None;
    }
    let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()?;
    spki_of_certificate(&der).map(<[u8]>::to_vec)
}

/// One DER element: its tag, the whole element, its content, and what follows it.
type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn element(input: &[u8]) -> Option<Element<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((tag, &input[..header + len], &rest[..len], &rest[len..]))
}

/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity, subject, subjectPublicKeyInfo, … }, … }`.
fn spki_of_certificate(der: &[u8]) -> Option<&[u8]> {
    let (0x30, _, cert, []) = element(der)? else {
        return None;
    };
    let (0x30, _, tbs, _) = element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.3;
    }
    for _ in 0..5 {
        rest = element(rest)?.3;
    }
    match element(rest)? {
        (0x30, whole, _, _) => Some(whole),
        _ => None,
    }
}

/// Why a signing certificate could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The URL is not an SNS certificate URL (the request is refused, 403).
    #[error("SigningCertURL is not an https://sns.<region>.amazonaws.com/….pem URL")]
    Untrusted,
    /// The download failed (transient: answer 5xx so SNS retries).
    #[error("the signing certificate could not be downloaded")]
    Unavailable,
    /// The download is not exactly one X.509 PEM certificate (403).
    #[error("the signing certificate is not one X.509 PEM certificate")]
    NotACertificate,
    /// Not downloaded: this instance already started [`MAX_FETCHES_PER_MINUTE`] downloads in
    /// the last minute (transient: answer 5xx so SNS retries).
    #[error("too many signing certificate downloads; try again later")]
    Throttled,
}

/// How long a failed certificate download is remembered: the same URL is answered with the same
/// failure, without a download, until then. SNS retries a notification for about an hour, so
/// a genuine certificate that failed once is tried again well within it.
pub const FAILURE_TTL: Duration = Duration::from_secs(60);

/// Most failed URLs remembered at once (the oldest is forgotten first); the download cap below
/// bounds the downloads whatever is forgotten.
pub const MAX_REMEMBERED_FAILURES: usize = 256;

/// Most certificate downloads an instance starts in any minute. SNS signs with one certificate
/// per region, rotated rarely; anything more is forged requests naming made-up `.pem` paths
/// on the SNS host.
pub const MAX_FETCHES_PER_MINUTE: usize = 10;

/// The download of one certificate URL: the PEM text, or why not.
pub type Fetch = Arc<
    dyn Fn(String) -> futures::future::BoxFuture<'static, Result<String, CertError>> + Send + Sync,
>;

/// Signing certificates by URL, fetched once per process (a Lambda execution environment).
/// Failed downloads are remembered for [`FAILURE_TTL`] ([`MAX_REMEMBERED_FAILURES`] at most) and
/// downloads are capped at [`MAX_FETCHES_PER_MINUTE`], so forged requests naming made-up
/// certificate URLs on the SNS host cannot make the function download without bound.
#[derive(Clone)]
pub struct CertCache {
    fetch: Fetch,
    clock: Arc<dyn Clock>,
    state: Arc<Mutex<CacheState>>,
}

#[derive(Default)]
struct CacheState {
    keys: HashMap<String, Arc<[u8]>>,
    /// URL → (when it failed, how), oldest first by time.
    failures: HashMap<String, (EpochMillis, CertError)>,
    /// Start times of the downloads of the last minute, oldest first.
    fetches: VecDeque<EpochMillis>,
}

impl std::fmt::Debug for CertCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("CertCache")
            .field("certificates", &state.keys.len())
            .field("failures", &state.failures.len())
            .finish_non_exhaustive()
    }
}

impl CertCache {
    /// An empty cache fetching with a 5 s timeout.
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = crate::tls::reqwest_builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let fetch: Fetch = Arc::new(move |url: String| {
            let http = http.clone();
            Box::pin(async move {
                let response = http
                    .get(url)
                    .send()
                    .await
                    .map_err(|_| CertError::Unavailable)?;
                if !response.status().is_success() {
                    return Err(CertError::Unavailable);
                }
                response.text().await.map_err(|_| CertError::Unavailable)
            })
        });
        Ok(Self::with_fetch(fetch, Arc::new(SystemClock)))
    }

    /// An empty cache downloading with `fetch` and timing failures and the cap with `clock`
    /// (tests).
    pub fn with_fetch(fetch: Fetch, clock: Arc<dyn Clock>) -> Self {
        Self {
            fetch,
            clock,
            state: Arc::default(),
        }
    }

    /// Adds a certificate as if downloaded from `url` (tests, pinned certificates).
    pub fn insert(&self, url: &str, pem: &str) -> Result<(), CertError> {
        if !is_sns_url(url, true) {
            return Err(CertError::Untrusted);
        }
        let key = public_key_from_pem(pem).ok_or(CertError::NotACertificate)?;
        self.lock().keys.insert(url.to_owned(), key.into());
        Ok(())
    }

    /// The public key of the certificate at `url`, downloaded on first use. A URL that fails
    /// the SNS rule is never requested; one that failed within [`FAILURE_TTL`] is not requested
    /// again (the same failure is returned), and past [`MAX_FETCHES_PER_MINUTE`] nothing is
    /// requested ([`CertError::Throttled`]).
    pub async fn public_key(&self, url: &str) -> Result<Arc<[u8]>, CertError> {
        if !is_sns_url(url, true) {
            return Err(CertError::Untrusted);
        }
        let now = self.clock.now_ms();
        let ttl_ms = i64::try_from(FAILURE_TTL.as_millis()).unwrap_or(i64::MAX);
        {
            let mut state = self.lock();
            if let Some(key) = state.keys.get(url) {
                return Ok(Arc::clone(key));
            }
            match state.failures.get(url) {
                Some((at, error)) if now.saturating_sub(*at) < ttl_ms => return Err(error.clone()),
                Some(_) => {
                    state.failures.remove(url);
                }
                None => {}
            }
            while state
                .fetches
                .front()
                .is_some_and(|at| now.saturating_sub(*at) >= 60_000)
            {
                state.fetches.pop_front();
            }
            if state.fetches.len() >= MAX_FETCHES_PER_MINUTE {
                return Err(CertError::Throttled);
            }
            state.fetches.push_back(now);
        }
        let outcome = (self.fetch)(url.to_owned()).await.and_then(|pem| {
            public_key_from_pem(&pem)
                .map(Arc::<[u8]>::from)
                .ok_or(CertError::NotACertificate)
        });
        let mut state = self.lock();
        match outcome {
            Ok(key) => {
                state.keys.insert(url.to_owned(), Arc::clone(&key));
                Ok(key)
            }
            Err(error) => {
                state
                    .failures
                    .retain(|_, (at, _)| now.saturating_sub(*at) < ttl_ms);
                while state.failures.len() >= MAX_REMEMBERED_FAILURES {
                    let oldest = state
                        .failures
                        .iter()
                        .min_by_key(|(_, (at, _))| *at)
                        .map(|(u, _)| u.clone());
                    match oldest {
                        Some(u) => state.failures.remove(&u),
                        None => break,
                    };
                }
                state.failures.insert(url.to_owned(), (now, error.clone()));
                Err(error)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CERT: &str = include_str!("../../../tests/fixtures/vectors/sns_cert.pem");
    const CERT_URL: &str = "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem";

    fn v1() -> serde_json::Value {
        serde_json::json!({"Type":"Notification","MessageId":"792cda85-518f-5dd3-9163-81d851212f3a",
 "TopicArn":"arn:aws:sns:us-east-2:295079676684:publish-and-verify-892f85fe-4836-424d-8188-ab85bef0f362",
 "Message":"Hello world","Timestamp":"2022-07-28T21:23:58.317Z","SignatureVersion":"1",
 "Signature":"ghtf+deOBAzHJJZ6s6CdRLfTQAlcGzq9naoFM1wi0CJiq//uVRuZnamrkWNF0fhouMFvuLVRwcz8PZLUMSfnmd5VpdTKpTyiKmy1qJAZXma0w+yi7G+I33hD1Jyk1Nbym2n0kqp3fVu2aoooiN2ZeLAT2bH0/BtjLSfN1yAOKNoprco4qV9gGUZinXJdj9a1YdNhDR2jKi33ldlsVtEXAtiaDklGEk7DgRKX38GerBPiLg3FdtgY6KC7cdeGpU/dGK+4hjc83Ive1HoFkAwqhpgInM2sMytBosoiXfCmOKmU4xeGD0gHDNZTlJUJQDlzw8Eag0H9f/5zXF9d3uy0YQ==",
 "SigningCertURL": CERT_URL,
 "UnsubscribeURL":"https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-east-2:295079676684:publish-and-verify-892f85fe-4836-424d-8188-ab85bef0f362:2296bc94-7992-4be1-b15f-b97229b5c1d8"})
    }

    fn v2() -> serde_json::Value {
        serde_json::json!({"Type":"Notification","MessageId":"17dea24b-55c2-540b-8362-f916557af765",
 "TopicArn":"arn:aws:sns:us-east-2:295079676684:publish-and-verify-62674b1d-4295-426b-88e7-5fb75652a04e",
 "Message":"Hello world","Timestamp":"2022-07-28T21:24:08.324Z","SignatureVersion":"2",
 "Signature":"CXVqp9PfZAL+4JHS3Zxo1PFbQsvnOjvmYhtIf17TWpwc+iIVas8kZ8GopuzVzVMdatE7rCl/O4P91Zp05Dwz8lk8dLhfp8gSu3Njlzxlyrmzo9x3va3Jb7zFnedgS2GKnZWHGBdwTXho+TosNUE+3e10OMSlwN5XGDwX7+R3WL+rn+AXmFAqp3alg27sYa55h1dLE9cGszGPjScPdtF3BmZsUDMx9wSdNKsCk+vSvE8yBjnCmUl7laSFj3LzPVrlSwgNYCF3kYnNAkah7NplK4SFhJYLwS0HCVCQJKa8rVbQLf9cBTu60U402mrgy0bN8xWoyimzbYbrOMJjalqkUg==",
 "SigningCertURL": CERT_URL,
 "UnsubscribeURL":"https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-east-2:295079676684:publish-and-verify-62674b1d-4295-426b-88e7-5fb75652a04e:ad7d16e3-0a7c-46aa-b23e-ffaf02250cbe"})
    }

    fn message(v: &serde_json::Value) -> SnsMessage {
        parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn the_published_messages_verify_with_both_signature_versions() {
        let key = public_key_from_pem(CERT).unwrap();
        assert_eq!(
            string_to_sign(&message(&v1())),
            "Message\nHello world\nMessageId\n792cda85-518f-5dd3-9163-81d851212f3a\nTimestamp\n2022-07-28T21:23:58.317Z\nTopicArn\narn:aws:sns:us-east-2:295079676684:publish-and-verify-892f85fe-4836-424d-8188-ab85bef0f362\nType\nNotification\n"
        );
        assert_eq!(verify(&message(&v1()), &key), Ok(()));
        assert_eq!(verify(&message(&v2()), &key), Ok(()));
    }

    #[test]
    fn tampering_and_unknown_versions_are_refused() {
        let key = public_key_from_pem(CERT).unwrap();
        let mut changed = v1();
        changed["Message"] = "Hello worle".into();
        assert_eq!(verify(&message(&changed), &key), Err(Rejection::Forged));
        let mut subject = v1();
        subject["Subject"] = "added".into();
        assert_eq!(verify(&message(&subject), &key), Err(Rejection::Forged));
        let mut bad = v1();
        bad["Signature"] = "bad".into();
        assert!(verify(&message(&bad), &key).is_err());
        let mut v3 = v1();
        v3["SignatureVersion"] = "3".into();
        assert_eq!(verify(&message(&v3), &key).unwrap_err().status(), 400);
        let mut swapped = v2();
        swapped["SignatureVersion"] = "1".into();
        assert_eq!(verify(&message(&swapped), &key), Err(Rejection::Forged));
        assert_eq!(parse(b"{}").unwrap_err().status(), 400);
    }

    #[test]
    fn only_sns_certificate_urls_are_trusted() {
        assert!(is_sns_url(CERT_URL, true));
        assert!(is_sns_url(
            "https://sns.cn-north-1.amazonaws.com.cn/x.pem",
            true
        ));
        for url in [
            "http://sns.us-east-2.amazonaws.com/x.pem",
            "https://internetbadguys.com/cert.pem",
            "https://sns.us-east-2.amazonaws.com/x.key",
            "https://sns.us-east-2.amazonaws.com.evil.example/x.pem",
            "https://s3.amazonaws.com/sns.us-east-2.amazonaws.com/x.pem",
            "https://user@sns.us-east-2.amazonaws.com/x.pem",
            "https://sns.us-east-2.amazonaws.com:8443/x.pem",
            "https://sns.a.amazonaws.com/x.pem",
            "not a url",
        ] {
            assert!(!is_sns_url(url, true), "{url}");
        }
        let cache = CertCache::new().unwrap();
        assert_eq!(
            cache.insert("https://internetbadguys.com/cert.pem", CERT),
            Err(CertError::Untrusted)
        );
    }

    #[test]
    fn the_certificate_region_must_be_the_topic_region() {
        assert_eq!(
            topic_region(v1()["TopicArn"].as_str().unwrap()),
            Some("us-east-2")
        );
        assert!(cert_region_matches_topic(&message(&v1())));
        let mut other = v1();
        other["SigningCertURL"] =
            "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem".into();
        assert!(!cert_region_matches_topic(&message(&other)));
        let mut cn = v1();
        cn["TopicArn"] = "arn:aws-cn:sns:cn-north-1:1:t".into();
        cn["SigningCertURL"] = "https://sns.cn-north-1.amazonaws.com.cn/x.pem".into();
        assert!(cert_region_matches_topic(&message(&cn)));
        for arn in [
            "arn:aws:sns::1:t",
            "not an arn",
            "arn:aws:sqs:us-east-2:1:t",
        ] {
            let mut bad = v1();
            bad["TopicArn"] = arn.into();
            assert!(!cert_region_matches_topic(&message(&bad)), "{arn}");
        }
    }

    #[test]
    fn a_notification_older_than_the_dead_letter_retention_is_stale() {
        let m = message(&v1());
        let sent = crate::clock::parse_rfc3339(&m.timestamp).unwrap();
        let max = i64::try_from(MAX_MESSAGE_AGE.as_millis()).unwrap();
        assert_eq!(check_timestamp(&m, sent), Ok(()));
        assert_eq!(
            check_timestamp(&m, sent + 3_600_000),
            Ok(()),
            "SNS's retries"
        );
        assert_eq!(check_timestamp(&m, sent + max), Ok(()));
        let stale = check_timestamp(&m, sent + max + 1_000).unwrap_err();
        assert_eq!((stale.status(), stale.code()), (403, "stale_timestamp"));
        assert_eq!(check_timestamp(&m, sent - 600_000), Ok(()), "clock skew");
        assert!(
            check_timestamp(&m, sent - 601_000).is_err(),
            "from the future"
        );
        let mut bad = v1();
        bad["Timestamp"] = "yesterday".into();
        assert_eq!(
            check_timestamp(&message(&bad), sent).unwrap_err().status(),
            400
        );
    }

    #[test]
    fn a_certificate_wrapped_in_anything_else_is_refused() {
        assert!(public_key_from_pem(CERT).is_some());
        assert!(public_key_from_pem(&format!("extra\n{CERT}")).is_none());
        assert!(public_key_from_pem(&format!("{CERT}\n{CERT}")).is_none());
        assert!(
            public_key_from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
                .is_none()
        );
    }

    /// A fetcher that counts its calls and always fails.
    fn failing(calls: &Arc<std::sync::atomic::AtomicUsize>) -> Fetch {
        let calls = Arc::clone(calls);
        Arc::new(move |_url: String| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Err(CertError::Unavailable) })
        })
    }

    #[tokio::test]
    async fn failed_downloads_are_remembered_and_downloads_are_capped() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let clock = Arc::new(crate::clock::ManualClock::new(1_000_000));
        let cache = CertCache::with_fetch(failing(&calls), clock.clone());
        let url = "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-forged.pem";
        for _ in 0..5 {
            assert_eq!(cache.public_key(url).await, Err(CertError::Unavailable));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the failure is remembered");
        clock.advance(i64::try_from(FAILURE_TTL.as_millis()).unwrap());
        assert_eq!(cache.public_key(url).await, Err(CertError::Unavailable));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "and forgotten after FAILURE_TTL"
        );

        // A flood of distinct made-up URLs: at most MAX_FETCHES_PER_MINUTE downloads a minute.
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = CertCache::with_fetch(failing(&calls), clock.clone());
        let mut throttled = 0;
        for i in 0..1000 {
            let url = format!("https://sns.us-east-2.amazonaws.com/forged-{i}.pem");
            if cache.public_key(&url).await == Err(CertError::Throttled) {
                throttled += 1;
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), MAX_FETCHES_PER_MINUTE);
        assert_eq!(throttled, 1000 - MAX_FETCHES_PER_MINUTE);
        assert!(cache.lock().failures.len() <= MAX_REMEMBERED_FAILURES);
        clock.advance(60_000);
        let _ = cache
            .public_key("https://sns.us-east-2.amazonaws.com/later.pem")
            .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            MAX_FETCHES_PER_MINUTE + 1,
            "a minute later"
        );
        // Remembered failures stay bounded however many URLs fail.
        for i in 0..(MAX_REMEMBERED_FAILURES * 2) {
            clock.advance(60_000 / i64::try_from(MAX_FETCHES_PER_MINUTE).unwrap());
            let url = format!("https://sns.us-east-2.amazonaws.com/again-{i}.pem");
            let _ = cache.public_key(&url).await;
        }
        assert!(cache.lock().failures.len() <= MAX_REMEMBERED_FAILURES);
    }

    #[tokio::test]
    async fn a_cached_certificate_is_used_without_a_download() {
        let cache = CertCache::new().unwrap();
        cache.insert(CERT_URL, CERT).unwrap();
        let key = cache.public_key(CERT_URL).await.unwrap();
        assert_eq!(verify(&message(&v2()), &key), Ok(()));
        assert_eq!(
            cache
                .public_key("http://sns.us-east-2.amazonaws.com/x.pem")
                .await,
            Err(CertError::Untrusted)
        );
    }
}
