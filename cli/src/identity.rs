//! Who runs a command that changes shared state, for its audit.

use std::time::Duration;

/// The caller's IAM principal, as STS names it; the local user, marked unverified, when STS
/// cannot be asked (a local emulator without it, no network).
pub async fn who() -> String {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sts = aws_sdk_sts::Client::new(&sdk);
    let asked = tokio::time::timeout(Duration::from_secs(10), sts.get_caller_identity().send());
    match asked.await {
        Ok(Ok(identity)) => match identity.arn() {
            Some(arn) if !arn.is_empty() => arn.to_owned(),
            _ => unverified("STS named no ARN"),
        },
        Ok(Err(e)) => unverified(&format!(
            "STS: {}",
            aws_sdk_sts::error::DisplayErrorContext(&e)
        )),
        Err(_) => unverified("STS did not answer within 10 s"),
    }
}

fn unverified(why: &str) -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown user".to_owned());
    eprintln!("warning: the audit names {user:?}, unverified ({why})");
    format!("{user} (unverified)")
}
