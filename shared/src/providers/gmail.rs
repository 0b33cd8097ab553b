//! The `google_workspace` gateway: the Gmail API with a Workspace service account and
//! domain-wide delegation (providers §4).
//!
//! For each send the client impersonates the sender: it signs a JWT (RS256, claims `iss` =
//! service-account email, `sub` = sender, `scope` = `gmail.send`, `aud` = token URL, `iat`,
//! `exp` = `iat` + 1 h), exchanges it at the token URL for an access token, and posts the MIME
//! from [`crate::mime`] base64url-encoded to `users/me/messages/send`. Access tokens are cached
//! per subject until [`TOKEN_REFRESH_MARGIN_MS`] before they expire; the cache is shared by
//! concurrent sends.
//!
//! **Impersonation refused.** When the token endpoint refuses the sender as subject (400/401
//! with `invalid_grant` or `unauthorized_client`) and the gateway has a `default_sender` (and
//! `require_valid_sender` is off), the message is sent once more as that sender: `From` carries
//! the default sender's address with the original display name, `Reply-To` the original sender
//! unless the message set one, and [`Accepted::substituted_sender`] records the substitution.
//! Without a fallback the refusal is `Auth`: the token endpoint cannot tell a sender outside the
//! workspace from a broken key or delegation, and the latter must alert.
//!
//! **Errors** (providers §4.4, by status and `error.errors[0].reason`, never by message text):
//!
//! | response | class |
//! |---|---|
//! | 429; 403 `rateLimitExceeded` / `userRateLimitExceeded` | `Throttled`, retry from `Retry-After` |
//! | 403 `dailyLimitExceeded` | `Throttled`, retry at the next UTC midnight |
//! | 401 (after one token refresh), other 403 | `Auth` |
//! | 413 | `Unsuitable` |
//! | 400, 404, other 4xx | `Permanent` |
//! | 408, 5xx | `Unavailable` |
//! | connect failure | `Unavailable` |
//! | timeout or broken connection once the request may have been sent | `Ambiguous` |
//!
//! Failures of the token exchange never sent mail: they are `Unavailable` (transport, 408,
//! 429, 5xx) or `Auth`.
//!
//! Limits checked before any call: [`MAX_RECIPIENTS`] and [`MAX_MESSAGE_BYTES`] of encoded MIME;
//! a message over them is `Unsuitable`.
//!
//! **Look-ups** ([`Provider::look_up`], only with `lookup_sent`; otherwise `Unsupported`). Gmail
//! has no delivery webhooks, so after a send whose answer was lost the only witness is the
//! sender's mailbox: `GET users/me/messages?q=rfc822msgid:<id>&includeSpamTrash=true` with a
//! token for the subject `send` would have impersonated (the sender, or the `default_sender`
//! under the same fallback rules), where `<id>` is the deterministic `Message-ID` of
//! [`mime::message_id_for`]. A first hit is `Found` with that message's id; no hit is `NotFound`
//! (Gmail's search may lag a just-sent message by seconds, so ask again before resending).
//! Spam and trash are searched too, so a sent copy someone deleted still counts. `q` needs
//! [`GMAIL_READONLY_SCOPE`] (`gmail.metadata` refuses `q`). Look-ups get their own tokens with
//! that scope alone, cached apart from the send tokens, which keep [`GMAIL_SEND_SCOPE`] alone:
//! Google refuses an assertion asking for any scope the delegation lacks, so a combined scope
//! would stop every send of a workspace that has not granted `gmail.readonly`. A refused
//! look-up token, 401 (after one refresh) or non-quota 403 is `Auth`, its detail naming
//! `gmail.readonly`. Errors are otherwise classified by the table above, except that a search is
//! never `Ambiguous` (asking changes nothing): a transport failure is `Unavailable`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::address::EmailAddress;
use crate::clock::{Clock, DAY_MS, EpochMillis, utc_day};
use crate::config::GoogleWorkspaceSettings;
use crate::message::OutboundMessage;
use crate::mime::{self, BccHeader, BuiltMime, MimeOptions};
use crate::providers::{Accepted, ErrorClass, Lookup, ProbeReport, Provider, SendError};
use crate::secrets::{LiveSecret, SecretString};

const PROVIDER: &str = "google_workspace";

/// Google's OAuth 2.0 token endpoint, used when neither the config nor the key names one.
pub const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The Gmail API base URL, used when the config does not override it.
pub const DEFAULT_API_BASE_URL: &str = "https://gmail.googleapis.com";
/// The scope of send tokens (and of the probe's): sending mail.
pub const GMAIL_SEND_SCOPE: &str = "https://www.googleapis.com/auth/gmail.send";
/// The scope of look-up tokens (`lookup_sent`): searching the mailbox with `q`, which
/// `gmail.metadata` does not allow.
pub const GMAIL_READONLY_SCOPE: &str = "https://www.googleapis.com/auth/gmail.readonly";
/// The JWT-bearer grant type of the token exchange.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Most recipients (to + cc + bcc) per message.
pub const MAX_RECIPIENTS: usize = 100;
/// Largest encoded message in bytes (35 MiB, the API's `maxSize`).
pub const MAX_MESSAGE_BYTES: usize = 36_700_160;
/// Lifetime of the signed assertion, in seconds (the maximum Google accepts).
pub const ASSERTION_LIFETIME_SECS: i64 = 3600;
/// A cached access token is replaced this long (ms) before it expires, so a token never expires
/// in flight.
pub const TOKEN_REFRESH_MARGIN_MS: i64 = 5 * 60 * 1000;

/// Why a Gmail gateway cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GmailSetupError {
    /// The service-account secret is not a JSON object of the expected shape.
    #[error("service-account key is not valid JSON of the expected shape")]
    MalformedKey,
    /// A required field of the service-account key is missing or empty.
    #[error("service-account key lacks {0}")]
    MissingKeyField(&'static str),
    /// `private_key` is not an RSA private key in PEM form.
    #[error("service-account private_key is not an RSA PEM key")]
    InvalidPrivateKey,
    /// `default_sender` is not an email address.
    #[error("default_sender is not an email address")]
    InvalidDefaultSender,
}

/// A parsed service-account key. `Debug` shows the account and key id, never the key.
#[derive(Clone)]
pub struct ServiceAccountKey {
    client_email: String,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    signing_key: EncodingKey,
}

#[derive(Deserialize)]
struct KeyFile {
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

impl ServiceAccountKey {
    /// Parses the JSON key file Google issues (`client_email`, `private_key` PEM,
    /// `private_key_id`, `token_uri`; other fields are ignored).
    pub fn from_json(json: &SecretString) -> Result<Self, GmailSetupError> {
        let file: KeyFile =
            serde_json::from_str(json.expose()).map_err(|_| GmailSetupError::MalformedKey)?;
        let client_email = file
            .client_email
            .filter(|s| !s.is_empty())
            .ok_or(GmailSetupError::MissingKeyField("client_email"))?;
        let pem = file
            .private_key
            .filter(|s| !s.is_empty())
            .ok_or(GmailSetupError::MissingKeyField("private_key"))?;
        let signing_key = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|_| GmailSetupError::InvalidPrivateKey)?;
        Ok(Self {
            client_email,
            private_key_id: file.private_key_id.filter(|s| !s.is_empty()),
            token_uri: file.token_uri.filter(|s| !s.is_empty()),
            signing_key,
        })
    }

    /// The service account's email (the JWT `iss`).
    pub fn client_email(&self) -> &str {
        &self.client_email
    }
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .field("signing_key", &"<redacted>")
            .finish()
    }
}

/// The claim set of the assertion (providers §4.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    /// Service-account email.
    pub iss: String,
    /// The user impersonated; absent for the service account itself (probe without a
    /// default sender).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Space-separated scopes: [`GMAIL_SEND_SCOPE`] for sends and probes,
    /// [`GMAIL_READONLY_SCOPE`] for look-ups.
    pub scope: String,
    /// The token URL the assertion is sent to.
    pub aud: String,
    /// Issued at, epoch seconds.
    pub iat: i64,
    /// Expiry, epoch seconds: `iat` + [`ASSERTION_LIFETIME_SECS`].
    pub exp: i64,
}

/// What a token is for; each has its own scope and its own cache entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Purpose {
    /// Sending (and probing): [`GMAIL_SEND_SCOPE`].
    Send,
    /// Looking a sent message up: [`GMAIL_READONLY_SCOPE`].
    LookUp,
}

impl Purpose {
    fn scope(self) -> &'static str {
        match self {
            Self::Send => GMAIL_SEND_SCOPE,
            Self::LookUp => GMAIL_READONLY_SCOPE,
        }
    }
}

#[derive(Debug)]
struct CachedToken {
    token: SecretString,
    refresh_at: EpochMillis,
}

/// A Gmail API client for one Workspace gateway.
#[derive(Debug)]
pub struct GmailProvider {
    gateway_id: String,
    http: reqwest::Client,
    /// The key as read (to notice a rotation) and parsed.
    key: Mutex<(SecretString, Arc<ServiceAccountKey>)>,
    /// Where the key is read again from, when it is a reference (see [`LiveSecret`]).
    live: Option<LiveSecret>,
    token_url: String,
    api_base_url: String,
    default_sender: Option<EmailAddress>,
    require_valid_sender: bool,
    lookup_sent: bool,
    clock: Arc<dyn Clock>,
    tokens: Mutex<HashMap<(Purpose, String), CachedToken>>,
}

/// The outcome of a token exchange that did not produce a token.
enum TokenFailure {
    /// The subject may not be impersonated (or the key/delegation is broken; Google does not
    /// say which).
    Refused { status: u16 },
    /// Any other failure, already classified.
    Failed(SendError),
}

impl GmailProvider {
    /// A client for `settings`. `service_account` is the resolved `settings.service_account`
    /// (the JSON key file). `http` is the process's shared client (its timeouts apply); `clock`
    /// dates the token exchanges of the probe and of look-ups (sends use the `now` they are
    /// given).
    ///
    /// The token URL is `settings.token_url`, else the key's `token_uri`, else
    /// [`DEFAULT_TOKEN_URL`]; the API base is `settings.api_base_url` or
    /// [`DEFAULT_API_BASE_URL`] (trailing slashes ignored).
    pub fn new(
        gateway_id: impl Into<String>,
        settings: &GoogleWorkspaceSettings,
        service_account: &SecretString,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, GmailSetupError> {
        let key = ServiceAccountKey::from_json(service_account)?;
        let default_sender = settings
            .default_sender
            .as_deref()
            .map(EmailAddress::parse)
            .transpose()
            .map_err(|_| GmailSetupError::InvalidDefaultSender)?;
        let token_url = settings
            .token_url
            .clone()
            .or_else(|| key.token_uri.clone())
            .unwrap_or_else(|| DEFAULT_TOKEN_URL.to_owned());
        let api_base_url = settings
            .api_base_url
            .as_deref()
            .unwrap_or(DEFAULT_API_BASE_URL)
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            gateway_id: gateway_id.into(),
            http,
            key: Mutex::new((service_account.clone(), Arc::new(key))),
            live: None,
            token_url,
            api_base_url,
            default_sender,
            require_valid_sender: settings.require_valid_sender,
            lookup_sent: settings.lookup_sent,
            clock,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The same client reading its key from `live` when it signs: a rotated key (read again
    /// after the resolver's TTL, or at once after a refused token exchange) is parsed and used
    /// for the next tokens. A new key that does not parse is logged and the old one kept.
    #[must_use]
    pub fn with_live_key(mut self, live: LiveSecret) -> Self {
        self.live = Some(live);
        self
    }

    fn held_key(&self) -> (SecretString, Arc<ServiceAccountKey>) {
        self.key.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the held key with `raw` when it differs and parses; `true` when it was replaced.
    fn adopt_key(&self, raw: SecretString) -> bool {
        let mut held = self.key.lock().unwrap_or_else(|p| p.into_inner());
        if held.0 == raw {
            return false;
        }
        match ServiceAccountKey::from_json(&raw) {
            Ok(parsed) => {
                *held = (raw, Arc::new(parsed));
                true
            }
            Err(error) => {
                tracing::warn!(gateway = %self.gateway_id, %error, "the service-account key read again does not parse; the previous one is kept");
                false
            }
        }
    }

    /// The key to sign with now: the one read from the live source when it changed.
    async fn signing_key(&self) -> Arc<ServiceAccountKey> {
        if let Some(live) = &self.live
            && let Ok(raw) = live.current().await
        {
            self.adopt_key(raw);
        }
        self.held_key().1
    }

    /// After a refused token exchange: `true` when the key was rotated meanwhile (the new one
    /// is held now, and every cached token dropped).
    async fn key_rotated(&self) -> bool {
        let Some(live) = &self.live else {
            return false;
        };
        let (held, _) = self.held_key();
        let Some(fresh) = live.after_refusal(&held).await else {
            return false;
        };
        let rotated = self.adopt_key(fresh);
        if rotated && let Ok(mut tokens) = self.tokens.lock() {
            tokens.clear();
        }
        rotated
    }

    /// The claims of a send assertion for `subject` issued at `now` (epoch ms).
    pub fn assertion_claims(&self, subject: Option<&str>, now: EpochMillis) -> AssertionClaims {
        self.claims_for(&self.held_key().1, Purpose::Send, subject, now)
    }

    fn claims_for(
        &self,
        key: &ServiceAccountKey,
        purpose: Purpose,
        subject: Option<&str>,
        now: EpochMillis,
    ) -> AssertionClaims {
        let iat = now.div_euclid(1000);
        AssertionClaims {
            iss: key.client_email.clone(),
            sub: subject.map(str::to_owned),
            scope: purpose.scope().to_owned(),
            aud: self.token_url.clone(),
            iat,
            exp: iat + ASSERTION_LIFETIME_SECS,
        }
    }

    fn cache_key(purpose: Purpose, subject: Option<&str>) -> (Purpose, String) {
        (
            purpose,
            subject.map(str::to_ascii_lowercase).unwrap_or_default(),
        )
    }

    fn forget_token(&self, purpose: Purpose, subject: Option<&str>) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(&Self::cache_key(purpose, subject));
        }
    }

    /// An access token for `subject` and `purpose`, from the cache while it is fresh.
    async fn token(
        &self,
        purpose: Purpose,
        subject: Option<&str>,
        now: EpochMillis,
    ) -> Result<SecretString, TokenFailure> {
        let key = Self::cache_key(purpose, subject);
        // A poisoned lock only means another send panicked mid-update; the map is still a
        // valid cache, so it is used rather than failing every later send.
        {
            let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(cached) = tokens.get(&key)
                && now < cached.refresh_at
            {
                return Ok(cached.token.clone());
            }
        }
        let (token, expires_in_secs) = match self.exchange(purpose, subject, now).await {
            // A refusal after a key rotation: once more with the new key.
            Err(TokenFailure::Refused { .. })
            | Err(TokenFailure::Failed(SendError {
                class: ErrorClass::Auth,
                ..
            })) if self.key_rotated().await => self.exchange(purpose, subject, now).await?,
            other => other?,
        };
        let refresh_at = now + expires_in_secs.saturating_mul(1000) - TOKEN_REFRESH_MARGIN_MS;
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.insert(
            key,
            CachedToken {
                token: token.clone(),
                refresh_at,
            },
        );
        Ok(token)
    }

    /// Signs an assertion and exchanges it for an access token: (token, lifetime in seconds).
    async fn exchange(
        &self,
        purpose: Purpose,
        subject: Option<&str>,
        now: EpochMillis,
    ) -> Result<(SecretString, i64), TokenFailure> {
        let key = self.signing_key().await;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = key.private_key_id.clone();
        let claims = self.claims_for(&key, purpose, subject, now);
        let assertion = jsonwebtoken::encode(&header, &claims, &key.signing_key).map_err(|_| {
            TokenFailure::Failed(SendError::new(
                ErrorClass::Auth,
                PROVIDER,
                "the service-account key cannot sign",
            ))
        })?;
        let response = self
            .http
            .post(&self.token_url)
            .form(&[("grant_type", JWT_BEARER_GRANT), ("assertion", &assertion)])
            .send()
            .await
            .map_err(|e| {
                // No mail is sent by a token exchange, so any transport failure is safe to
                // fail over from.
                TokenFailure::Failed(transport_error(
                    ErrorClass::Unavailable,
                    "token exchange",
                    e,
                ))
            })?;
        let status = response.status().as_u16();
        let retry_after = retry_after_header(response.headers(), now);
        let body = response.bytes().await.map_err(|e| {
            TokenFailure::Failed(transport_error(
                ErrorClass::Unavailable,
                "token exchange",
                e,
            ))
        })?;
        if (200..300).contains(&status) {
            let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
                TokenFailure::Failed(SendError::new(
                    ErrorClass::Unavailable,
                    PROVIDER,
                    "token endpoint answered without an access token",
                ))
            })?;
            let lifetime = parsed
                .expires_in
                .map_or(ASSERTION_LIFETIME_SECS, |e| e.secs());
            return Ok((SecretString::new(parsed.access_token), lifetime));
        }
        let code = serde_json::from_slice::<TokenErrorBody>(&body)
            .ok()
            .and_then(|b| b.error);
        if matches!(status, 400 | 401)
            && matches!(
                code.as_deref(),
                Some("invalid_grant" | "unauthorized_client")
            )
        {
            return Err(TokenFailure::Refused { status });
        }
        let class = match status {
            408 | 429 | 500..=599 => ErrorClass::Unavailable,
            _ => ErrorClass::Auth,
        };
        Err(TokenFailure::Failed(SendError {
            class,
            provider: PROVIDER,
            http_status: Some(status),
            retry_after,
            detail: format!(
                "token endpoint answered {status} {}",
                code.as_deref().map(short).unwrap_or_default()
            )
            .trim_end()
            .to_owned(),
            source: None,
        }))
    }

    /// A token for the sender, or for the default sender when impersonating the sender is
    /// refused and substitution is allowed: (token, substituted sender).
    async fn token_for_sender(
        &self,
        purpose: Purpose,
        sender: &EmailAddress,
        now: EpochMillis,
    ) -> Result<(SecretString, Option<EmailAddress>), SendError> {
        let refused_status = match self.token(purpose, Some(sender.as_str()), now).await {
            Ok(token) => return Ok((token, None)),
            Err(TokenFailure::Failed(e)) => return Err(e),
            Err(TokenFailure::Refused { status }) => status,
        };
        let fallback = self
            .default_sender
            .as_ref()
            .filter(|d| !self.require_valid_sender && *d != sender);
        let Some(fallback) = fallback else {
            return Err(refused(
                refused_status,
                "impersonating the sender was refused",
            ));
        };
        match self.token(purpose, Some(fallback.as_str()), now).await {
            Ok(token) => Ok((token, Some(fallback.clone()))),
            Err(TokenFailure::Failed(e)) => Err(e),
            Err(TokenFailure::Refused { status }) => Err(refused(
                status,
                "impersonating the sender and the default sender was refused",
            )),
        }
    }

    async fn post_message(
        &self,
        token: &SecretString,
        raw: &str,
        now: EpochMillis,
    ) -> Result<SendResponse, SendError> {
        let url = format!("{}/gmail/v1/users/me/messages/send", self.api_base_url);
        let response = self
            .http
            .post(url)
            .bearer_auth(token.expose())
            .json(&serde_json::json!({ "raw": raw }))
            .send()
            .await
            .map_err(|e| {
                let class = if e.is_connect() {
                    ErrorClass::Unavailable
                } else {
                    ErrorClass::Ambiguous
                };
                transport_error(class, "send", e)
            })?;
        let status = response.status().as_u16();
        let retry_after = retry_after_header(response.headers(), now);
        // A 2xx whose body cannot be read is still an acceptance: Gmail took the message.
        let body = response.bytes().await.unwrap_or_default();
        Ok(SendResponse {
            status,
            retry_after,
            body: body.to_vec(),
        })
    }

    /// Lists the messages of the token's user whose `Message-ID` is `message_id` (without angle
    /// brackets), spam and trash included.
    async fn search(
        &self,
        token: &SecretString,
        message_id: &str,
        now: EpochMillis,
    ) -> Result<SendResponse, SendError> {
        let mut url =
            reqwest::Url::parse(&format!("{}/gmail/v1/users/me/messages", self.api_base_url))
                .map_err(|_| {
                    SendError::new(
                        ErrorClass::Unavailable,
                        PROVIDER,
                        "search: the API base URL is not a URL",
                    )
                })?;
        url.query_pairs_mut()
            .append_pair("q", &format!("rfc822msgid:{message_id}"))
            .append_pair("includeSpamTrash", "true");
        // Nothing is sent by a search, so a lost answer is merely unanswered: never Ambiguous.
        let response = self
            .http
            .get(url)
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(|e| transport_error(ErrorClass::Unavailable, "search", e))?;
        let status = response.status().as_u16();
        let retry_after = retry_after_header(response.headers(), now);
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(ErrorClass::Unavailable, "search", e))?;
        Ok(SendResponse {
            status,
            retry_after,
            body: body.to_vec(),
        })
    }

    /// A token for looking up a message of `sender`: the same subject `send` would have used.
    async fn look_up_token(
        &self,
        sender: &EmailAddress,
        now: EpochMillis,
    ) -> Result<(SecretString, Option<EmailAddress>), SendError> {
        self.token_for_sender(Purpose::LookUp, sender, now)
            .await
            .map_err(lacks_readonly)
    }

    /// A fresh token for `subject` after its cached one was dropped.
    async fn refreshed(
        &self,
        purpose: Purpose,
        subject: &str,
        now: EpochMillis,
    ) -> Result<SecretString, SendError> {
        match self.token(purpose, Some(subject), now).await {
            Ok(token) => Ok(token),
            Err(TokenFailure::Failed(e)) => Err(e),
            Err(TokenFailure::Refused { status }) => {
                Err(refused(status, "token refresh was refused"))
            }
        }
    }
}

struct SendResponse {
    status: u16,
    retry_after: Option<EpochMillis>,
    body: Vec<u8>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<ExpiresIn>,
}

/// google-auth accepts `expires_in` as a number or a string; so do we.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresIn {
    Number(i64),
    Text(String),
}

impl ExpiresIn {
    fn secs(&self) -> i64 {
        match self {
            Self::Number(n) => *n,
            Self::Text(s) => s.trim().parse().unwrap_or(ASSERTION_LIFETIME_SECS),
        }
    }
}

#[derive(Deserialize)]
struct TokenErrorBody {
    error: Option<String>,
}

#[derive(Deserialize)]
struct GmailErrorBody {
    error: Option<GmailError>,
}

#[derive(Deserialize)]
struct GmailError {
    message: Option<String>,
    #[serde(default)]
    errors: Vec<GmailErrorItem>,
}

#[derive(Deserialize)]
struct GmailErrorItem {
    reason: Option<String>,
}

#[derive(Deserialize)]
struct SentMessage {
    id: Option<String>,
}

/// The answer of `users.messages.list`; `messages` is absent when nothing matched.
#[derive(Deserialize)]
struct MessageList {
    #[serde(default)]
    messages: Vec<SentMessage>,
}

#[async_trait]
impl Provider for GmailProvider {
    fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    async fn send(
        &self,
        message: &OutboundMessage,
        now: EpochMillis,
    ) -> Result<Accepted, SendError> {
        let recipients = message.recipient_count();
        if recipients > MAX_RECIPIENTS {
            return Err(SendError::new(
                ErrorClass::Unsuitable,
                PROVIDER,
                format!("{recipients} recipients exceed Gmail's limit of {MAX_RECIPIENTS}"),
            ));
        }
        let options = MimeOptions {
            bcc: BccHeader::Include,
            ..MimeOptions::default()
        };
        let mut built = mime::build_with(message, now, &options);
        check_size(&built)?;

        let sender = message.sender();
        let (mut token, substituted) = self.token_for_sender(Purpose::Send, sender, now).await?;
        if let Some(substitute) = &substituted {
            let options = MimeOptions {
                from_override: Some(substitute.clone()),
                ..options
            };
            built = mime::build_with(message, now, &options);
            check_size(&built)?;
        }
        let subject = substituted.as_ref().unwrap_or(sender).as_str();
        let raw = base64::engine::general_purpose::URL_SAFE.encode(built.bytes());

        let mut response = self.post_message(&token, &raw, now).await?;
        if response.status == 401 {
            // An access token can be revoked or expire early; Google's advice is to refresh
            // once. A 401 means the message was not accepted, so repeating it is safe.
            self.forget_token(Purpose::Send, Some(subject));
            token = self.refreshed(Purpose::Send, subject, now).await?;
            response = self.post_message(&token, &raw, now).await?;
        }

        if (200..300).contains(&response.status) {
            let id = serde_json::from_slice::<SentMessage>(&response.body)
                .ok()
                .and_then(|m| m.id);
            return Ok(Accepted {
                provider_message_id: id,
                substituted_sender: substituted.map(|s| s.as_str().to_owned()),
            });
        }
        Err(answer_error("Gmail answered", &response, now))
    }

    /// Exchanges a fresh token for the default sender (or for the service account itself when
    /// there is none): proves the key, the delegation and the token endpoint, sends nothing.
    async fn probe(&self) -> Result<ProbeReport, SendError> {
        let started = Instant::now();
        let now = self.clock.now_ms();
        let subject = self.default_sender.as_ref().map(EmailAddress::as_str);
        match self.exchange(Purpose::Send, subject, now).await {
            Ok(_) => Ok(ProbeReport::new(started.elapsed())),
            Err(TokenFailure::Failed(e)) => Err(e),
            Err(TokenFailure::Refused { status }) => {
                Err(refused(status, "token endpoint refused the probe subject"))
            }
        }
    }

    /// Searches the mailbox of the subject `send` would have impersonated for the message's
    /// `Message-ID` (module docs, *Look-ups*). `sent_at` is not needed: the `Message-ID` does not
    /// depend on it, and the token is dated by the provider's clock, because a look-up may come
    /// long after the send.
    async fn look_up(
        &self,
        message: &OutboundMessage,
        _sent_at: EpochMillis,
    ) -> Result<Lookup, SendError> {
        if !self.lookup_sent {
            return Ok(Lookup::Unsupported);
        }
        let now = self.clock.now_ms();
        let message_id = mime::message_id_for(message);
        let sender = message.sender();
        let (mut token, substituted) = self.look_up_token(sender, now).await?;
        let subject = substituted.as_ref().unwrap_or(sender).as_str();

        let mut response = self.search(&token, &message_id, now).await?;
        if response.status == 401 {
            // As for sends: an access token can be revoked or expire early; refresh it once.
            self.forget_token(Purpose::LookUp, Some(subject));
            token = self
                .refreshed(Purpose::LookUp, subject, now)
                .await
                .map_err(lacks_readonly)?;
            response = self.search(&token, &message_id, now).await?;
        }
        if !(200..300).contains(&response.status) {
            return Err(lacks_readonly(answer_error(
                "Gmail search answered",
                &response,
                now,
            )));
        }
        let list: MessageList = serde_json::from_slice(&response.body).map_err(|_| {
            SendError::new(
                ErrorClass::Unavailable,
                PROVIDER,
                "Gmail search answered without a message list",
            )
        })?;
        Ok(match list.messages.into_iter().next() {
            Some(first) => Lookup::Found(Accepted {
                provider_message_id: first.id,
                substituted_sender: substituted.map(|s| s.as_str().to_owned()),
            }),
            None => Lookup::NotFound,
        })
    }
}

/// The error of a non-2xx Gmail API answer: classified by [`classify_response`], described as
/// `<what> <status> <reason> <message>` (the message shortened by [`short`]).
fn answer_error(what: &str, response: &SendResponse, now: EpochMillis) -> SendError {
    let error = serde_json::from_slice::<GmailErrorBody>(&response.body)
        .ok()
        .and_then(|b| b.error);
    let reason = error
        .as_ref()
        .and_then(|e| e.errors.first())
        .and_then(|i| i.reason.clone());
    let (class, retry_after) = classify_response(
        response.status,
        reason.as_deref(),
        response.retry_after,
        now,
    );
    let text = error
        .and_then(|e| e.message)
        .map(|m| short(&m))
        .unwrap_or_default();
    SendError {
        class,
        provider: PROVIDER,
        http_status: Some(response.status),
        retry_after,
        detail: format!(
            "{what} {} {} {text}",
            response.status,
            reason.as_deref().unwrap_or("")
        )
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" "),
        source: None,
    }
}

/// A look-up's `Auth` failure names the likeliest cause: the delegation grants `gmail.send`
/// (sends work) but not `gmail.readonly`.
fn lacks_readonly(mut error: SendError) -> SendError {
    if error.class == ErrorClass::Auth {
        error.detail = format!(
            "{}; the domain-wide delegation may lack {GMAIL_READONLY_SCOPE}",
            error.detail
        );
    }
    error
}

/// Classifies a non-2xx answer of the send endpoint from its status and
/// `error.errors[0].reason` (see the module table). `retry_after` is what the response headers
/// said; a `dailyLimitExceeded` is retried at the next UTC midnight after `now` instead.
pub fn classify_response(
    status: u16,
    reason: Option<&str>,
    retry_after: Option<EpochMillis>,
    now: EpochMillis,
) -> (ErrorClass, Option<EpochMillis>) {
    match (status, reason) {
        (403, Some("dailyLimitExceeded")) => {
            (ErrorClass::Throttled, Some((utc_day(now) + 1) * DAY_MS))
        }
        (429, _) | (403, Some("rateLimitExceeded" | "userRateLimitExceeded")) => {
            (ErrorClass::Throttled, retry_after)
        }
        (401 | 403, _) => (ErrorClass::Auth, None),
        (413, _) => (ErrorClass::Unsuitable, None),
        (408, _) | (500..=599, _) => (ErrorClass::Unavailable, retry_after),
        (400..=499, _) => (ErrorClass::Permanent, None),
        _ => (ErrorClass::Unavailable, retry_after),
    }
}

pub use super::http::parse_retry_after;

fn retry_after_header(
    headers: &reqwest::header::HeaderMap,
    now: EpochMillis,
) -> Option<EpochMillis> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now))
}

fn check_size(built: &BuiltMime) -> Result<(), SendError> {
    if built.encoded_size() > MAX_MESSAGE_BYTES {
        return Err(SendError::new(
            ErrorClass::Unsuitable,
            PROVIDER,
            format!(
                "encoded size {} bytes exceeds Gmail's limit of {MAX_MESSAGE_BYTES}",
                built.encoded_size()
            ),
        ));
    }
    Ok(())
}

fn refused(status: u16, what: &str) -> SendError {
    SendError {
        class: ErrorClass::Auth,
        provider: PROVIDER,
        http_status: Some(status),
        retry_after: None,
        detail: what.to_owned(),
        source: None,
    }
}

fn transport_error(class: ErrorClass, step: &str, e: reqwest::Error) -> SendError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    SendError {
        class,
        provider: PROVIDER,
        http_status: None,
        retry_after: None,
        detail: format!("{step}: {what}"),
        // reqwest errors name the URL, never headers or bodies, so the token cannot leak here.
        source: Some(Box::new(e.without_url())),
    }
}

/// A provider message for logs: one line, at most 200 characters.
fn short(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests;
