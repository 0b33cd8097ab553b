//! Provider webhook authentication, on the raw request bytes, before anything else is parsed
//! (providers.md §1.6, §2.6).
//!
//! - **Mailgun**: `hex(HMAC-SHA256(webhook signing key, timestamp ‖ token))`, compared in
//!   constant time; the timestamp must be within [`MAX_AGE`] of now (either way), and each token
//!   is accepted once ([`first_use`], a conditional put in the state store).
//! - **SendGrid** (signed Event Webhook): ECDSA P-256 / SHA-256 over `timestamp ‖ raw body`,
//!   the signature base64 of DER `SEQUENCE {r, s}`, the key base64 DER `SubjectPublicKeyInfo`;
//!   the timestamp must be within [`MAX_AGE`], and each event's `sg_event_id` is accepted once
//!   ([`first_use`], after the body is read).
//!
//! Each failure is a [`Rejection`] that says what was wrong without echoing a signature, key or
//! body, with the HTTP status the edge answers: 400 for a request that cannot be read, 401 for
//! a signature that does not verify, 403 for a correctly signed request that is stale or
//! replayed.

use std::time::Duration;

use aws_lc_rs::{hmac, signature};
use base64::Engine as _;
use serde::Deserialize;

use crate::clock::EpochMillis;
use crate::state::{
    Condition, Key, StateStore, StoreError, TTL_ATTRIBUTE, Value, Write, WriteOp, WriteOutcome,
};

/// How far a signed timestamp may be from now, in either direction. Mailgun warns that its
/// webhooks can be delayed and advises against being "too aggressive"; SendGrid states no
/// window. Ten minutes bounds replays without refusing the delays providers document.
pub const MAX_AGE: Duration = Duration::from_secs(600);

/// Why a webhook request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A signature field is missing or malformed (400).
    #[error("{field}: missing or malformed")]
    Malformed {
        /// The header or body field at fault.
        field: &'static str,
    },
    /// The signature does not verify with the configured key (401).
    #[error("signature does not verify")]
    Forged,
    /// Correctly signed, but the timestamp is too far from now (403).
    #[error("timestamp is {age_s} s from now; at most {max_s} s is accepted")]
    Stale {
        /// Distance from now, in seconds.
        age_s: u64,
        /// The window, in seconds.
        max_s: u64,
    },
    /// Correctly signed, but this token was already used (403).
    #[error("token already used: a replayed request")]
    Replayed,
}

impl Rejection {
    /// The HTTP status to answer.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed { .. } => 400,
            Self::Forged => 401,
            Self::Stale { .. } | Self::Replayed => 403,
        }
    }

    /// A short machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "malformed_signature",
            Self::Forged => "invalid_signature",
            Self::Stale { .. } => "stale_timestamp",
            Self::Replayed => "replayed",
        }
    }
}

/// Checks that `timestamp` (decimal Unix seconds) is within `max_age` of `now`.
pub fn check_fresh(
    timestamp: &str,
    field: &'static str,
    now: EpochMillis,
    max_age: Duration,
) -> Result<(), Rejection> {
    let seconds: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Rejection::Malformed { field })?;
    let age_ms = now
        .saturating_sub(seconds.saturating_mul(1000))
        .unsigned_abs();
    let max_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
    if age_ms > max_ms {
        return Err(Rejection::Stale {
            age_s: age_ms / 1000,
            max_s: max_age.as_secs(),
        });
    }
    Ok(())
}

/// The `signature` object of a Mailgun webhook body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MailgunSignature {
    /// Decimal Unix seconds, as sent.
    pub timestamp: String,
    /// 50 random characters, unique per request.
    pub token: String,
    /// 64 lower-case hex characters.
    pub signature: String,
}

/// Reads only the `signature` object of a Mailgun JSON body. A body that is not a JSON object,
/// or repeats `signature` or one of its fields, is malformed: serde's derive refuses repeated
/// keys, so no other reader of the body can see a different signature than the one checked.
pub fn mailgun_signature(body: &[u8]) -> Result<MailgunSignature, Rejection> {
    #[derive(Deserialize)]
    struct Envelope {
        signature: MailgunSignature,
    }
    // The derive would also read the envelope from a JSON array; Mailgun posts an object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(Rejection::Malformed { field: "signature" });
    }
    serde_json::from_slice::<Envelope>(body)
        .map(|e| e.signature)
        .map_err(|_| Rejection::Malformed { field: "signature" })
}

/// Verifies a Mailgun signature with the webhook signing `key` (not the API key), then its
/// freshness. The replay check ([`first_use`] of the token) comes after, with the store.
pub fn verify_mailgun(
    key: &[u8],
    sig: &MailgunSignature,
    now: EpochMillis,
    max_age: Duration,
) -> Result<(), Rejection> {
    if sig.token.is_empty() || sig.token.len() > 512 {
        return Err(Rejection::Malformed {
            field: "signature.token",
        });
    }
    if sig.timestamp.trim().parse::<i64>().is_err() {
        return Err(Rejection::Malformed {
            field: "signature.timestamp",
        });
    }
    let received = decode_hex(&sig.signature).ok_or(Rejection::Malformed {
        field: "signature.signature",
    })?;
    if received.len() != 32 {
        return Err(Rejection::Malformed {
            field: "signature.signature",
        });
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut message = Vec::with_capacity(sig.timestamp.len() + sig.token.len());
    message.extend_from_slice(sig.timestamp.as_bytes());
    message.extend_from_slice(sig.token.as_bytes());
    hmac::verify(&key, &message, &received).map_err(|_| Rejection::Forged)?;
    check_fresh(&sig.timestamp, "signature.timestamp", now, max_age)
}

/// Verifies SendGrid's signed Event Webhook: `public_key_b64` is the key SendGrid shows (base64
/// DER SubjectPublicKeyInfo, P-256), `timestamp` and `signature_b64` the
/// `X-Twilio-Email-Event-Webhook-Timestamp` and `…-Signature` headers, `body` the raw bytes.
pub fn verify_sendgrid(
    public_key_b64: &str,
    timestamp: &str,
    body: &[u8],
    signature_b64: &str,
    now: EpochMillis,
    max_age: Duration,
) -> Result<(), Rejection> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if timestamp.is_empty() || timestamp.trim().parse::<i64>().is_err() {
        return Err(Rejection::Malformed {
            field: "X-Twilio-Email-Event-Webhook-Timestamp",
        });
    }
    let sig = b64
        .decode(signature_b64.trim())
        .map_err(|_| Rejection::Malformed {
            field: "X-Twilio-Email-Event-Webhook-Signature",
        })?;
    // A key that does not decode is a configuration error; the request cannot be trusted.
    let key = b64
        .decode(public_key_b64.trim())
        .map_err(|_| Rejection::Forged)?;
    let mut message = Vec::with_capacity(timestamp.len() + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(body);
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &key)
        .verify(&message, &sig)
        .map_err(|_| Rejection::Forged)?;
    check_fresh(
        timestamp,
        "X-Twilio-Email-Event-Webhook-Timestamp",
        now,
        max_age,
    )
}

/// A value unique to one handling of one request, stored with the tokens it records as
/// theirs ([`first_use`]): 128 random bits, hex.
pub fn request_nonce() -> String {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // Without randomness, the time still tells two handlings apart in practice.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = t.to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The state-store key remembering `token` in `scope`.
pub fn replay_key(scope: &str, token: &str) -> Key {
    format!("replay#{scope}#{token}")
}

/// Records the first use of `token` in `scope` (e.g. `mailgun`) and says whether this is it:
/// `Ok(false)` means the token was seen within `keep` (a replay). The item carries its own
/// expiry, checked in the condition (TTL deletion is lazy), and the TTL attribute for cleanup.
///
/// `owner` ([`request_nonce`]) is stored with it: finding the token already recorded by the
/// same `owner` is not a replay. A conditional put whose first attempt was applied but whose
/// answer was lost, retried (by the SDK or the caller), finds its own write; a replay, handled
/// with another nonce, does not.
pub async fn first_use<S: StateStore + ?Sized>(
    store: &S,
    scope: &str,
    token: &str,
    owner: &str,
    now: EpochMillis,
    keep: Duration,
) -> Result<bool, StoreError> {
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    let expires = now.saturating_add(keep_ms);
    let item = [
        ("expires_ms".to_owned(), Value::N(expires)),
        (TTL_ATTRIBUTE.to_owned(), Value::N(expires / 1000 + 1)),
        (OWNER.to_owned(), Value::S(owner.to_owned())),
    ]
    .into_iter()
    .collect();
    let outcome = store
        .write(Write {
            key: replay_key(scope, token),
            op: WriteOp::Put(item),
            condition: Condition::Or(vec![
                Condition::ItemNotExists,
                Condition::cmp("expires_ms", crate::state::CmpOp::Le, Value::N(now)),
                Condition::cmp(OWNER, crate::state::CmpOp::Eq, Value::S(owner.to_owned())),
            ]),
        })
        .await?;
    Ok(match outcome {
        WriteOutcome::Applied(_) => true,
        WriteOutcome::ConditionFailed(current) => current
            .as_ref()
            .and_then(|item| item.get(OWNER))
            .is_some_and(|v| *v == Value::S(owner.to_owned())),
    })
}

/// Forgets `token` in `scope` if `owner` recorded it (so a provider's retry of a request that
/// could not be processed is not refused as a replay); another owner's record is left alone.
pub async fn forget<S: StateStore + ?Sized>(
    store: &S,
    scope: &str,
    token: &str,
    owner: &str,
) -> Result<(), StoreError> {
    store
        .write(Write {
            key: replay_key(scope, token),
            op: WriteOp::Delete,
            condition: Condition::cmp(OWNER, crate::state::CmpOp::Eq, Value::S(owner.to_owned())),
        })
        .await
        .map(|_| ())
}

/// The attribute holding the nonce of the handling that recorded a token.
const OWNER: &str = "owner";

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::state::memory::MemoryStore;

    fn vectors() -> serde_json::Value {
        serde_json::from_str(include_str!(
            "../../../tests/fixtures/vectors/test_vectors.json"
        ))
        .unwrap()
    }

    fn mailgun(v: &serde_json::Value) -> MailgunSignature {
        MailgunSignature {
            timestamp: v["timestamp"].as_str().unwrap().into(),
            token: v["token"].as_str().unwrap().into(),
            signature: v["signature"].as_str().unwrap().into(),
        }
    }

    fn at(timestamp: &str) -> EpochMillis {
        timestamp.parse::<i64>().unwrap() * 1000
    }

    #[test]
    fn mailgun_published_and_derived_vectors_verify() {
        let v = vectors();
        for name in ["mailgun_published", "mailgun_derived"] {
            let case = &v[name];
            let sig = mailgun(case);
            let key = case["signing_key"].as_str().unwrap().as_bytes();
            assert_eq!(
                verify_mailgun(key, &sig, at(&sig.timestamp), MAX_AGE),
                Ok(()),
                "{name}"
            );
        }
        let published = &v["mailgun_published"];
        let key = published["signing_key"].as_str().unwrap().as_bytes();
        let mut other_token = mailgun(published);
        other_token.token = published["negative"]["token"].as_str().unwrap().into();
        let now = at(&other_token.timestamp);
        assert_eq!(
            verify_mailgun(key, &other_token, now, MAX_AGE),
            Err(Rejection::Forged)
        );
    }

    #[test]
    fn mailgun_rejects_tampering_staleness_and_garbage() {
        let v = vectors();
        let case = &v["mailgun_derived"];
        let key = case["signing_key"].as_str().unwrap().as_bytes();
        let good = mailgun(case);
        let now = at(&good.timestamp);
        let tampered_ts = MailgunSignature {
            timestamp: "1700000001".into(),
            ..good.clone()
        };
        assert_eq!(
            verify_mailgun(key, &tampered_ts, now, MAX_AGE),
            Err(Rejection::Forged)
        );
        assert_eq!(
            verify_mailgun(b"another key", &good, now, MAX_AGE),
            Err(Rejection::Forged)
        );
        let stale = verify_mailgun(key, &good, now + 601_000, MAX_AGE).unwrap_err();
        assert_eq!((stale.status(), stale.code()), (403, "stale_timestamp"));
        assert!(
            verify_mailgun(key, &good, now - 601_000, MAX_AGE).is_err(),
            "future"
        );
        assert_eq!(verify_mailgun(key, &good, now + 599_000, MAX_AGE), Ok(()));
        for bad in [
            MailgunSignature {
                signature: "zz".repeat(32),
                ..good.clone()
            },
            MailgunSignature {
                signature: String::new(),
                ..good.clone()
            },
            MailgunSignature {
                token: String::new(),
                ..good.clone()
            },
            MailgunSignature {
                timestamp: "soon".into(),
                ..good.clone()
            },
        ] {
            assert_eq!(
                verify_mailgun(key, &bad, now, MAX_AGE)
                    .unwrap_err()
                    .status(),
                400
            );
        }
        assert_eq!(
            mailgun_signature(b"{\"event-data\":{}}"),
            Err(Rejection::Malformed { field: "signature" })
        );
        let sig = serde_json::json!({"timestamp": good.timestamp, "token": good.token,
            "signature": good.signature});
        for body in [
            format!(r#"[{sig}]"#),
            format!(r#"{{"signature": {sig}, "signature": {sig}}}"#),
            r#"{"signature": {"timestamp": "1", "token": "t", "signature": "00", "token": "u"}}"#
                .to_owned(),
        ] {
            assert_eq!(
                mailgun_signature(body.as_bytes()),
                Err(Rejection::Malformed { field: "signature" }),
                "{body}"
            );
        }
        let body = serde_json::json!({"signature": {"timestamp": good.timestamp,
            "token": good.token, "signature": good.signature}, "event-data": {}});
        assert_eq!(
            mailgun_signature(body.to_string().as_bytes()).unwrap(),
            good
        );
    }

    #[test]
    fn sendgrid_published_and_derived_vectors_verify_on_the_raw_bytes() {
        let v = vectors();
        let key = v["sendgrid_published"]["public_key_b64_der_spki"]
            .as_str()
            .unwrap();
        let published = (
            "1588788367",
            &br#"{"category":"example_payload","event":"test_event","message_id":"message_id"}"#[..],
            "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=",
        );
        let derived = &v["sendgrid_derived"];
        let derived = (
            derived["timestamp"].as_str().unwrap(),
            derived["payload"].as_str().unwrap().as_bytes(),
            derived["signature"].as_str().unwrap(),
        );
        for (ts, body, sig) in [published, derived] {
            assert_eq!(
                verify_sendgrid(key, ts, body, sig, at(ts), MAX_AGE),
                Ok(()),
                "{ts}"
            );
        }
        // Without the trailing CRLF the derived body no longer verifies: raw bytes only.
        let (ts, body, sig) = derived;
        let trimmed = &body[..body.len() - 2];
        assert_eq!(
            verify_sendgrid(key, ts, trimmed, sig, at(ts), MAX_AGE),
            Err(Rejection::Forged)
        );
    }

    #[test]
    fn sendgrid_rejects_the_published_negative_cases() {
        let v = vectors();
        let key = v["sendgrid_published"]["public_key_b64_der_spki"]
            .as_str()
            .unwrap();
        let (ts, body, sig) = (
            "1588788367",
            &br#"{"category":"example_payload","event":"test_event","message_id":"message_id"}"#[..],
            "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=",
        );
        let now = at(ts);
        let wrong_key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj+y7GjUuFDb/R1NGe1OPzpA==";
        assert_eq!(
            verify_sendgrid(wrong_key, ts, body, sig, now, MAX_AGE),
            Err(Rejection::Forged)
        );
        assert_eq!(
            verify_sendgrid(key, ts, b"payload", sig, now, MAX_AGE),
            Err(Rejection::Forged)
        );
        let one_char = sig.replace("H2j/0=", "H3j/0=");
        assert_eq!(
            verify_sendgrid(key, ts, body, &one_char, now, MAX_AGE),
            Err(Rejection::Forged)
        );
        for bad_ts in ["timestamp", ""] {
            assert_eq!(
                verify_sendgrid(key, bad_ts, body, sig, now, MAX_AGE)
                    .unwrap_err()
                    .status(),
                400
            );
        }
        assert!(
            verify_sendgrid(
                key,
                ts,
                body,
                &format!("{sig}causing failure"),
                now,
                MAX_AGE
            )
            .is_err()
        );
        assert!(
            verify_sendgrid(
                &format!("{key}corrupting the public key"),
                ts,
                body,
                sig,
                now,
                MAX_AGE
            )
            .is_err()
        );
        assert_eq!(
            verify_sendgrid(key, "1588788366", body, sig, now, MAX_AGE),
            Err(Rejection::Forged),
            "tampered timestamp"
        );
        assert_eq!(
            verify_sendgrid(key, ts, body, sig, now + 3_600_000, MAX_AGE)
                .unwrap_err()
                .code(),
            "stale_timestamp"
        );
    }

    #[tokio::test]
    async fn a_token_is_accepted_once_while_remembered() {
        let store = MemoryStore::new();
        let keep = Duration::from_secs(1200);
        let (a, b) = (request_nonce(), request_nonce());
        assert_ne!(a, b);
        assert!(
            first_use(&store, "mailgun", "tok", &a, 1_000, keep)
                .await
                .unwrap()
        );
        assert!(
            !first_use(&store, "mailgun", "tok", &b, 2_000, keep)
                .await
                .unwrap()
        );
        assert!(
            first_use(&store, "mailgun", "tok", &a, 2_000, keep)
                .await
                .unwrap(),
            "its own write again (a retried put) is not a replay"
        );
        assert!(
            first_use(&store, "sendgrid", "tok", &b, 2_000, keep)
                .await
                .unwrap(),
            "per scope"
        );
        // Forgetting is the owner's: another handling cannot clear the record.
        forget(&store, "mailgun", "tok", &b).await.unwrap();
        assert!(
            !first_use(&store, "mailgun", "tok", &b, 3_000, keep)
                .await
                .unwrap()
        );
        // After it is forgotten (expired, whether or not TTL deleted it) it counts as new.
        assert!(
            first_use(&store, "mailgun", "tok", &b, 2_000 + 1_200_000, keep)
                .await
                .unwrap()
        );
        forget(&store, "mailgun", "tok", &b).await.unwrap();
        assert!(
            first_use(&store, "mailgun", "tok", &a, 2_000 + 1_200_001, keep)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn finding_its_own_write_after_a_lost_answer_is_not_a_replay() {
        let store = crate::state::memory::LostAnswers::default();
        let keep = Duration::from_secs(1200);
        let mine = request_nonce();
        assert!(
            first_use(&store, "sendgrid", "evt", &mine, 1_000, keep)
                .await
                .unwrap(),
            "applied, answered as a failed condition, but the item is ours"
        );
        assert!(
            !first_use(&store, "sendgrid", "evt", &request_nonce(), 2_000, keep)
                .await
                .unwrap(),
            "a replay is still one"
        );
    }
}
