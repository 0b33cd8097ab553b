//! The `smtp` gateway: any SMTP relay (Google Workspace SMTP relay, an organisation's MTA), over
//! STARTTLS, implicit TLS or plain text, with optional AUTH.
//!
//! One connection per message (Lambda instances are short-lived and mostly idle, so a pool would
//! hold dead connections). The envelope sender is the message's sender, the envelope recipients
//! are to + cc + bcc, and the content is the MIME from [`crate::mime`] without a `Bcc` header.
//!
//! The SMTP dialogue is driven step by step rather than through a one-call transport, because
//! the classification depends on *where* it failed: anything that goes wrong before the message
//! content is written cannot have delivered the message (`Unavailable`), while a timeout or a
//! broken connection after the content was written may have (`Ambiguous`).
//!
//! Replies are classified by their code ([`classify_reply`]), never by their text:
//!
//! | reply | class | why |
//! |---|---|---|
//! | 421, 450, 452 | `Throttled` | service closing / mailbox busy / insufficient storage: relays use them for rate and volume limits; retry later |
//! | other 4xx | `Unavailable` | transient server-side failure (451 local error, …) |
//! | 530, 534, 535, 538 | `Auth` | authentication required, too weak, refused or needs encryption: a configuration problem |
//! | 552 | `Unsuitable` | message exceeds this relay's size limit; another gateway may take it |
//! | other 5xx | `Permanent` | recipient or content refused |
//!
//! SMTP replies carry no retry time, so `retry_after` stays empty and the pipeline's backoff
//! applies. Reply texts can quote recipient addresses, so error details carry only the code and
//! the step.

use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::ClientId;

use crate::clock::EpochMillis;
use crate::config::{SmtpSettings, SmtpTls};
use crate::message::OutboundMessage;
use crate::mime;
use crate::providers::{Accepted, ErrorClass, ProbeReport, Provider, SendError};
use crate::secrets::{LiveSecret, SecretString};

const PROVIDER: &str = "smtp";

/// Default most recipients per message: the Google Workspace SMTP relay's cap, and a common
/// MTA default.
pub const DEFAULT_MAX_RECIPIENTS: usize = 100;
/// Default largest encoded message in bytes (25 MiB), what most relays accept.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 25 * 1024 * 1024;

/// Timeouts of one SMTP exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmtpTimeouts {
    /// TCP (and implicit TLS) connect.
    pub connect: Duration,
    /// Each of the two halves of a send: everything up to and including `DATA`, then the
    /// content and the final reply.
    pub exchange: Duration,
}

/// Limits checked before connecting; a message over them is `Unsuitable` for this gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmtpLimits {
    /// Most envelope recipients per message.
    pub max_recipients: usize,
    /// Largest encoded message in bytes.
    pub max_message_bytes: usize,
}

impl Default for SmtpLimits {
    fn default() -> Self {
        Self {
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Why an SMTP gateway cannot be built from its settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SmtpSetupError {
    /// A username was configured but no password was resolved, or the other way round.
    #[error("smtp username and password must be given together")]
    IncompleteCredentials,
    /// AUTH over an unencrypted connection would send the password in clear text.
    #[error("smtp AUTH requires tls = starttls or tls")]
    CredentialsWithoutTls,
}

/// A client of one SMTP relay.
#[derive(Debug)]
pub struct SmtpProvider {
    gateway_id: String,
    host: String,
    port: u16,
    tls: SmtpTls,
    credentials: Option<(String, LiveSecret)>,
    timeouts: SmtpTimeouts,
    limits: SmtpLimits,
}

impl SmtpProvider {
    /// A client for the relay in `settings`. `password` is `settings.password` (a value, or a
    /// reference read on every connection, see [`LiveSecret`]); username and password must be
    /// both present or both absent, and AUTH is refused on a plain-text connection.
    pub fn new(
        gateway_id: impl Into<String>,
        settings: &SmtpSettings,
        password: Option<LiveSecret>,
        timeouts: SmtpTimeouts,
        limits: SmtpLimits,
    ) -> Result<Self, SmtpSetupError> {
        let credentials = match (&settings.username, password) {
            (Some(user), Some(password)) => Some((user.clone(), password)),
            (None, None) => None,
            _ => return Err(SmtpSetupError::IncompleteCredentials),
        };
        if credentials.is_some() && settings.tls == SmtpTls::None {
            return Err(SmtpSetupError::CredentialsWithoutTls);
        }
        Ok(Self {
            gateway_id: gateway_id.into(),
            host: settings.host.clone(),
            port: settings.port,
            tls: settings.tls,
            credentials,
            timeouts,
            limits,
        })
    }

    /// Connects and authenticates as configured. A refused password may have been rotated: it
    /// is read again and one more connection tried with the new one (AUTH comes before any
    /// content, so nothing can be sent twice).
    async fn open(&self) -> Result<AsyncSmtpConnection, Failure> {
        let Some((user, live)) = &self.credentials else {
            return self.connect(None).await;
        };
        let password = live.current().await.map_err(Failure::credential)?;
        match self.connect(Some((user, &password))).await {
            Err(failure) if failure.step == Step::Auth && failure.refused() => {
                match live.after_refusal(&password).await {
                    Some(fresh) => self.connect(Some((user, &fresh))).await,
                    None => Err(failure),
                }
            }
            other => other,
        }
    }

    /// Connects, says EHLO, upgrades to TLS and authenticates with `credentials`.
    async fn connect(
        &self,
        credentials: Option<(&String, &SecretString)>,
    ) -> Result<AsyncSmtpConnection, Failure> {
        let hello = ClientId::default();
        let implicit_tls = match self.tls {
            SmtpTls::Tls => Some(self.tls_parameters()?),
            SmtpTls::Starttls | SmtpTls::None => None,
        };
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.timeouts.connect),
            &hello,
            implicit_tls,
            None,
        )
        .await
        .map_err(|e| Failure::new(Step::Connect, e))?;
        if self.tls == SmtpTls::Starttls {
            let params = self.tls_parameters()?;
            conn.starttls(params, &hello)
                .await
                .map_err(|e| Failure::new(Step::Connect, e))?;
        }
        if let Some((user, password)) = credentials {
            let credentials = Credentials::new(user.clone(), password.expose().to_owned());
            conn.auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
                .await
                .map_err(|e| Failure::new(Step::Auth, e))?;
        }
        Ok(conn)
    }

    fn tls_parameters(&self) -> Result<TlsParameters, Failure> {
        TlsParameters::new_rustls(self.host.clone()).map_err(|e| Failure::new(Step::Connect, e))
    }

    /// Everything up to and including the `DATA` command.
    async fn envelope(&self, message: &OutboundMessage) -> Result<AsyncSmtpConnection, Failure> {
        let mut conn = self.open().await?;
        let from = lettre_address(message.sender().as_str())?;
        conn.command(Mail::new(Some(from), vec![]))
            .await
            .map_err(|e| Failure::new(Step::Mail, e))?;
        for (_, mailbox) in message.recipients() {
            let to = lettre_address(mailbox.address().as_str())?;
            conn.command(Rcpt::new(to, vec![]))
                .await
                .map_err(|e| Failure::new(Step::Rcpt, e))?;
        }
        conn.command(Data)
            .await
            .map_err(|e| Failure::new(Step::Data, e))?;
        Ok(conn)
    }

    fn error(&self, failure: Failure) -> SendError {
        failure.into_send_error()
    }
}

#[async_trait]
impl Provider for SmtpProvider {
    fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// Sends one message. The provider message id is the queue id of the final reply when it
    /// names one in the common `queued as ID` form.
    async fn send(
        &self,
        message: &OutboundMessage,
        now: EpochMillis,
    ) -> Result<Accepted, SendError> {
        let recipients = message.recipient_count();
        if recipients > self.limits.max_recipients {
            return Err(SendError::new(
                ErrorClass::Unsuitable,
                PROVIDER,
                format!(
                    "{recipients} recipients exceed this relay's limit of {}",
                    self.limits.max_recipients
                ),
            ));
        }
        let built = mime::build(message, now);
        if built.encoded_size() > self.limits.max_message_bytes {
            return Err(SendError::new(
                ErrorClass::Unsuitable,
                PROVIDER,
                format!(
                    "encoded size {} bytes exceeds this relay's limit of {}",
                    built.encoded_size(),
                    self.limits.max_message_bytes
                ),
            ));
        }

        let mut conn =
            match tokio::time::timeout(self.timeouts.exchange, self.envelope(message)).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(failure)) => return Err(self.error(failure)),
                Err(_) => {
                    return Err(SendError::new(
                        ErrorClass::Unavailable,
                        PROVIDER,
                        "timed out before the message content was sent",
                    ));
                }
            };
        let reply =
            match tokio::time::timeout(self.timeouts.exchange, conn.message(built.bytes())).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => return Err(self.error(Failure::new(Step::Content, e))),
                Err(_) => {
                    return Err(SendError::new(
                        ErrorClass::Ambiguous,
                        PROVIDER,
                        "timed out after the message content was sent",
                    ));
                }
            };
        let queue_id = reply.message().find_map(queue_id);
        // The message is accepted; a failing QUIT changes nothing, so it is not waited for long.
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.quit()).await;
        Ok(Accepted {
            provider_message_id: queue_id,
            substituted_sender: None,
        })
    }

    /// Connects, negotiates TLS and authenticates, then says QUIT.
    async fn probe(&self) -> Result<ProbeReport, SendError> {
        let started = Instant::now();
        let mut conn = match tokio::time::timeout(self.timeouts.exchange, self.open()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(failure)) => return Err(self.error(failure)),
            Err(_) => {
                return Err(SendError::new(
                    ErrorClass::Unavailable,
                    PROVIDER,
                    "timed out connecting",
                ));
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.quit()).await;
        Ok(ProbeReport::new(started.elapsed()))
    }
}

/// How a failed SMTP reply is handled, from its three-digit code (see the module table).
/// Positive codes (2xx, 3xx) are not failures and map to `None`.
pub fn classify_reply(code: u16) -> Option<ErrorClass> {
    match code {
        421 | 450 | 452 => Some(ErrorClass::Throttled),
        400..=499 => Some(ErrorClass::Unavailable),
        530 | 534 | 535 | 538 => Some(ErrorClass::Auth),
        552 => Some(ErrorClass::Unsuitable),
        500..=599 => Some(ErrorClass::Permanent),
        _ => None,
    }
}

/// The step of the dialogue a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Connect,
    Auth,
    Mail,
    Rcpt,
    Data,
    /// Writing the content and reading the final reply: the only step after which the relay
    /// may hold the message.
    Content,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Auth => "AUTH",
            Self::Mail => "MAIL FROM",
            Self::Rcpt => "RCPT TO",
            Self::Data => "DATA",
            Self::Content => "message content",
        }
    }
}

#[derive(Debug)]
struct Failure {
    step: Step,
    error: FailureKind,
}

#[derive(Debug)]
enum FailureKind {
    Smtp(lettre::transport::smtp::Error),
    BadAddress,
    /// The password could not be read (the secret's error, which names no value).
    Credential(String),
}

impl Failure {
    fn new(step: Step, error: lettre::transport::smtp::Error) -> Self {
        Self {
            step,
            error: FailureKind::Smtp(error),
        }
    }

    fn credential(error: crate::secrets::SecretError) -> Self {
        Self {
            step: Step::Auth,
            error: FailureKind::Credential(error.to_string()),
        }
    }

    /// True when the relay answered AUTH with a permanent refusal (5xx): the password is wrong.
    fn refused(&self) -> bool {
        matches!(&self.error, FailureKind::Smtp(e) if e.is_permanent())
    }

    fn into_send_error(self) -> SendError {
        let step = self.step.name();
        let error = match self.error {
            FailureKind::Smtp(e) => e,
            FailureKind::BadAddress => {
                return SendError::new(
                    ErrorClass::Permanent,
                    PROVIDER,
                    "an address is not valid for SMTP",
                );
            }
            FailureKind::Credential(error) => {
                return SendError::new(
                    ErrorClass::Auth,
                    PROVIDER,
                    format!("the password cannot be read: {error}"),
                );
            }
        };
        if let Some(code) = error.status() {
            let code = u16::from(code);
            let class = classify_reply(code).unwrap_or(ErrorClass::Unavailable);
            // The reply text is not kept: it may quote recipient addresses.
            return SendError::new(class, PROVIDER, format!("SMTP {code} at {step}"));
        }
        let class = if self.step == Step::Content {
            // The content may have reached the relay before the connection broke.
            ErrorClass::Ambiguous
        } else if self.step == Step::Auth && error.is_client() {
            // No AUTH mechanism in common with the relay: the configuration cannot work.
            ErrorClass::Auth
        } else {
            ErrorClass::Unavailable
        };
        let what = if error.is_timeout() {
            "timed out"
        } else if error.is_tls() {
            "TLS failed"
        } else if error.is_client() {
            "not supported by the relay"
        } else {
            "connection failed"
        };
        SendError {
            class,
            provider: PROVIDER,
            http_status: None,
            retry_after: None,
            detail: format!("{what} at {step}"),
            source: Some(Box::new(error)),
        }
    }
}

fn lettre_address(address: &str) -> Result<lettre::Address, Failure> {
    // Our addresses are a subset of what lettre accepts; a refusal here is a bug in one of the
    // two parsers, reported as a permanent problem of this message rather than a panic.
    lettre::Address::from_str(address).map_err(|_| Failure {
        step: Step::Mail,
        error: FailureKind::BadAddress,
    })
}

/// The queue id in a reply line of the form `… queued as ABC123` (Postfix, Exim and others).
fn queue_id(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("queued as ")?;
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '<' | '>'))
        .collect();
    let id = id.trim_matches(|c| c == '<' || c == '>');
    (!id.is_empty()).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_map_to_error_classes() {
        let cases = [
            (250, None),
            (354, None),
            (421, Some(ErrorClass::Throttled)),
            (450, Some(ErrorClass::Throttled)),
            (451, Some(ErrorClass::Unavailable)),
            (452, Some(ErrorClass::Throttled)),
            (454, Some(ErrorClass::Unavailable)),
            (500, Some(ErrorClass::Permanent)),
            (530, Some(ErrorClass::Auth)),
            (534, Some(ErrorClass::Auth)),
            (535, Some(ErrorClass::Auth)),
            (538, Some(ErrorClass::Auth)),
            (550, Some(ErrorClass::Permanent)),
            (552, Some(ErrorClass::Unsuitable)),
            (553, Some(ErrorClass::Permanent)),
            (554, Some(ErrorClass::Permanent)),
        ];
        for (code, expected) in cases {
            assert_eq!(classify_reply(code), expected, "reply {code}");
        }
    }

    #[test]
    fn queue_id_is_read_from_common_reply_forms() {
        let cases = [
            ("2.0.0 Ok: queued as 4AbC12xYz", Some("4AbC12xYz")),
            ("OK id=1rX2 queued as <abc-1@relay>", Some("abc-1@relay")),
            ("2.0.0 OK 1700000000 a1-20020a", None),
            ("queued as ", None),
        ];
        for (line, expected) in cases {
            assert_eq!(queue_id(line).as_deref(), expected, "{line:?}");
        }
    }

    fn settings(tls: SmtpTls, username: Option<&str>) -> SmtpSettings {
        SmtpSettings {
            host: "relay.example".into(),
            port: 587,
            tls,
            username: username.map(str::to_owned),
            password: None,
        }
    }

    #[test]
    fn credentials_must_be_complete_and_encrypted() {
        let timeouts = SmtpTimeouts {
            connect: Duration::from_secs(1),
            exchange: Duration::from_secs(1),
        };
        let secret = || Some(SecretString::new("pw"));
        let cases = [
            (SmtpTls::Starttls, Some("u"), secret(), None),
            (SmtpTls::Starttls, None, None, None),
            (SmtpTls::None, None, None, None),
            (
                SmtpTls::Starttls,
                Some("u"),
                None,
                Some(SmtpSetupError::IncompleteCredentials),
            ),
            (
                SmtpTls::Tls,
                None,
                secret(),
                Some(SmtpSetupError::IncompleteCredentials),
            ),
            (
                SmtpTls::None,
                Some("u"),
                secret(),
                Some(SmtpSetupError::CredentialsWithoutTls),
            ),
        ];
        for (tls, user, password, expected) in cases {
            let built = SmtpProvider::new(
                "relay",
                &settings(tls, user),
                password.map(Into::into),
                timeouts,
                SmtpLimits::default(),
            );
            assert_eq!(built.err(), expected, "{tls:?} {user:?}");
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let provider = SmtpProvider::new(
            "relay",
            &settings(SmtpTls::Starttls, Some("user")),
            Some(SecretString::new("hunter2-secret").into()),
            SmtpTimeouts {
                connect: Duration::from_secs(1),
                exchange: Duration::from_secs(1),
            },
            SmtpLimits::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{provider:?}").contains("hunter2"));
    }
}
