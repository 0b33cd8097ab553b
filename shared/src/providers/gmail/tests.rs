use super::*;

const NOW: EpochMillis = 1_795_000_000_123;
const DAY_MS: i64 = 86_400_000;

#[test]
fn send_errors_map_to_classes_by_status_and_reason() {
    let hinted = Some(NOW + 30_000);
    let next_midnight = (NOW / DAY_MS + 1) * DAY_MS;
    let cases = [
        (429, None, hinted, ErrorClass::Throttled, hinted),
        (429, None, None, ErrorClass::Throttled, None),
        (
            403,
            Some("rateLimitExceeded"),
            hinted,
            ErrorClass::Throttled,
            hinted,
        ),
        (
            403,
            Some("userRateLimitExceeded"),
            None,
            ErrorClass::Throttled,
            None,
        ),
        (
            403,
            Some("dailyLimitExceeded"),
            hinted,
            ErrorClass::Throttled,
            Some(next_midnight),
        ),
        (403, Some("domainPolicy"), None, ErrorClass::Auth, None),
        (403, None, None, ErrorClass::Auth, None),
        (401, Some("authError"), None, ErrorClass::Auth, None),
        (
            400,
            Some("failedPrecondition"),
            None,
            ErrorClass::Permanent,
            None,
        ),
        (
            400,
            Some("invalidArgument"),
            None,
            ErrorClass::Permanent,
            None,
        ),
        (404, None, None, ErrorClass::Permanent, None),
        (413, None, None, ErrorClass::Unsuitable, None),
        (408, None, None, ErrorClass::Unavailable, None),
        (
            500,
            Some("backendError"),
            None,
            ErrorClass::Unavailable,
            None,
        ),
        (503, None, hinted, ErrorClass::Unavailable, hinted),
    ];
    for (status, reason, retry_after, class, expected_retry) in cases {
        assert_eq!(
            classify_response(status, reason, retry_after, NOW),
            (class, expected_retry),
            "{status} {reason:?}"
        );
    }
}

#[test]
fn retry_after_reads_seconds_and_http_dates() {
    let cases = [
        ("120", Some(NOW + 120_000)),
        (" 0 ", Some(NOW)),
        ("Sun, 06 Nov 1994 08:49:37 GMT", Some(784_111_777_000)),
        ("Thu, 01 Jan 1970 00:00:00 GMT", Some(0)),
        ("Tue, 29 Feb 2028 23:59:59 GMT", Some(1_835_481_599_000)),
        ("Sat, 29 Feb 2028 23:59:59 GMT", None), // wrong weekday: not a date
        ("-5", None),
        ("soon", None),
        ("Sun, 06 Nov 1994 08:49:37 PST", None),
        ("Sun, 32 Nov 1994 08:49:37 GMT", None),
    ];
    for (value, expected) in cases {
        assert_eq!(parse_retry_after(value, NOW), expected, "{value:?}");
    }
}

#[test]
fn malformed_keys_are_refused_with_the_reason() {
    let cases = [
        ("not json", GmailSetupError::MalformedKey),
        ("{}", GmailSetupError::MissingKeyField("client_email")),
        (
            r#"{"client_email": "sa@p.iam.gserviceaccount.com"}"#,
            GmailSetupError::MissingKeyField("private_key"),
        ),
        (
            r#"{"client_email": "sa@p.iam.gserviceaccount.com", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}"#,
            GmailSetupError::InvalidPrivateKey,
        ),
    ];
    for (json, expected) in cases {
        let parsed = ServiceAccountKey::from_json(&SecretString::new(json));
        assert_eq!(parsed.err(), Some(expected), "{json}");
    }
}

#[test]
fn expires_in_is_read_as_number_or_string() {
    let cases = [
        (r#"{"access_token":"t","expires_in":3599}"#, 3599),
        (r#"{"access_token":"t","expires_in":"1800"}"#, 1800),
        (r#"{"access_token":"t"}"#, ASSERTION_LIFETIME_SECS),
    ];
    for (json, expected) in cases {
        let parsed: TokenResponse = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parsed
                .expires_in
                .map_or(ASSERTION_LIFETIME_SECS, |e| e.secs()),
            expected
        );
    }
}

#[test]
fn provider_messages_are_shortened_to_one_line() {
    let long = format!("a\nb {}", "x".repeat(300));
    let s = short(&long);
    assert!(s.starts_with("a b x"));
    assert_eq!(s.chars().count(), 200);
}
