//! Amazon SNS message authentication (providers.md §3.6–3.8): the envelope SNS posts to an
//! HTTPS subscription, its canonical string to sign, the `SigningCertURL` rules and the RSA
//! signature check (PKCS#1 v1.5, SHA-1 for `SignatureVersion` 1, SHA-256 for 2).
//!
//! Trust comes from where the certificate is fetched: only `https://sns.<region>.amazonaws.com`
//! (or `.amazonaws.com.cn`) paths ending in `.pem`, over TLS with certificate verification, as
//! the AWS SDK validators do. The same host rule guards `SubscribeURL` before it is visited
//! (no request to an arbitrary URL on an attacker's say-so). The topic must also be on the
//! operator's allow-list: anyone can point their own, correctly signed, topic at the endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature;
use base64::Engine as _;
use serde::Deserialize;

use super::verify::Rejection;

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
}

/// Signing certificates by URL, fetched once per process (a Lambda execution environment).
#[derive(Debug, Clone)]
pub struct CertCache {
    http: reqwest::Client,
    keys: Arc<Mutex<HashMap<String, Arc<[u8]>>>>,
}

impl CertCache {
    /// An empty cache fetching with a 5 s timeout.
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: crate::tls::reqwest_builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            keys: Arc::default(),
        })
    }

    /// Adds a certificate as if downloaded from `url` (tests, pinned certificates).
    pub fn insert(&self, url: &str, pem: &str) -> Result<(), CertError> {
        if !is_sns_url(url, true) {
            return Err(CertError::Untrusted);
        }
        let key = public_key_from_pem(pem).ok_or(CertError::NotACertificate)?;
        self.lock().insert(url.to_owned(), key.into());
        Ok(())
    }

    /// The public key of the certificate at `url`, downloaded on first use. A URL that fails
    /// the SNS rule is never requested.
    pub async fn public_key(&self, url: &str) -> Result<Arc<[u8]>, CertError> {
        if !is_sns_url(url, true) {
            return Err(CertError::Untrusted);
        }
        if let Some(key) = self.lock().get(url) {
            return Ok(Arc::clone(key));
        }
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|_| CertError::Unavailable)?;
        if !response.status().is_success() {
            return Err(CertError::Unavailable);
        }
        let pem = response.text().await.map_err(|_| CertError::Unavailable)?;
        let key: Arc<[u8]> = public_key_from_pem(&pem)
            .ok_or(CertError::NotACertificate)?
            .into();
        self.lock().insert(url.to_owned(), Arc::clone(&key));
        Ok(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<[u8]>>> {
        self.keys
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
    fn a_certificate_wrapped_in_anything_else_is_refused() {
        assert!(public_key_from_pem(CERT).is_some());
        assert!(public_key_from_pem(&format!("extra\n{CERT}")).is_none());
        assert!(public_key_from_pem(&format!("{CERT}\n{CERT}")).is_none());
        assert!(
            public_key_from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
                .is_none()
        );
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
