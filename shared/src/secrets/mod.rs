//! Resolving [`SecretRef`]s from the configuration into [`SecretString`]s.
//!
//! | reference | source |
//! |---|---|
//! | `env:NAME` | the process environment (through an injectable lookup, see [`SecretResolver::with_env_lookup`]) |
//! | `secretsmanager:ARN` | Secrets Manager `GetSecretValue`, the `SecretString` |
//! | `secretsmanager:ARN#key` | the same, then the string member `key` of that JSON object |
//! | `ssm:/path` | SSM `GetParameter` with decryption (SecureString parameters) |
//! | inline literal | returned as is (the config loader already warned) |
//!
//! **Caching and rotation.** A resolved value is cached per reference for the life of the
//! process, but re-read once it is older than the TTL ([`DEFAULT_TTL`], 5 minutes), so a rotated
//! API key reaches warm Lambda instances within minutes without a deployment (provider clients
//! hold a [`LiveSecret`], which reads through this cache on every use and reads again at once
//! when the provider refuses the held value). If the re-read
//! fails *transiently* (the store is unreachable), the stale value is kept and returned: the old
//! key usually still works during rotation, and an outage of Secrets Manager must not stop mail.
//! A definite answer (not found, access denied, key missing) is reported even when a stale value
//! exists, because it means the configuration changed. Inline and `env:` references are not
//! cached: they cannot change under a running process (the environment is fixed at start).
//!
//! **Secrecy.** Errors name the reference (variable, ARN, key, parameter path), never a value;
//! neither do `Debug` outputs. The AWS clients are built on first use, so a configuration with
//! only `env:` and inline secrets needs no AWS configuration at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::OnceCell;

use crate::clock::{Clock, EpochMillis};
use crate::config::SecretRef;
mod ssm;
mod string;

pub use string::SecretString;

/// How long a resolved Secrets Manager or SSM value is used before it is read again.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);

/// Connect bound for the Secrets Manager and SSM clients built from the environment.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Per-attempt bound for those clients, so a stalled store cannot eat a cold start.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A boxed error cause.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Looks up an environment variable by name.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Why a secret could not be resolved. No variant carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set (or not valid Unicode).
    #[error("environment variable {name} is not set")]
    MissingEnv {
        /// The variable's name.
        name: String,
    },
    /// The reference resolved to an empty string, which is never a usable credential.
    #[error("secret {reference} is empty")]
    Empty {
        /// The reference (`env:NAME`, `secretsmanager:ARN#key`, `ssm:/path`).
        reference: String,
    },
    /// Secrets Manager has no such secret.
    #[error("secret {arn} not found in Secrets Manager")]
    SecretNotFound {
        /// ARN or name.
        arn: String,
    },
    /// The secret holds binary data, not a string.
    #[error("secret {arn} has no string value")]
    NotAString {
        /// ARN or name.
        arn: String,
    },
    /// A JSON key was asked for, but the secret is not a JSON object.
    #[error("secret {arn} is not a JSON object, so key {key} cannot be read")]
    NotJsonObject {
        /// ARN or name.
        arn: String,
        /// The key asked for.
        key: String,
    },
    /// The secret's JSON object has no string or number member `key`.
    #[error("secret {arn} has no string member {key}")]
    MissingKey {
        /// ARN or name.
        arn: String,
        /// The key asked for.
        key: String,
    },
    /// SSM has no such parameter.
    #[error("SSM parameter {path} not found")]
    ParameterNotFound {
        /// The parameter path.
        path: String,
    },
    /// The store refused access (IAM policy, KMS key policy).
    #[error("access to {reference} denied")]
    AccessDenied {
        /// The reference.
        reference: String,
    },
    /// The store could not be reached or failed transiently.
    #[error("secret store unavailable while reading {reference}")]
    Unavailable {
        /// The reference.
        reference: String,
        /// The cause (SDK errors carry no secret values).
        #[source]
        source: BoxError,
    },
    /// The store refused the request for another reason (its error code).
    #[error("reading {reference} failed: {code}")]
    Refused {
        /// The reference.
        reference: String,
        /// The store's error code.
        code: String,
    },
}

impl SecretError {
    /// True when resolving again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

struct Cached {
    value: SecretString,
    fetched_at: EpochMillis,
}

/// Resolves secret references, caching remote values (see the module docs). Share one per
/// process; all methods take `&self`.
pub struct SecretResolver {
    clock: Arc<dyn Clock>,
    ttl: Duration,
    env: EnvLookup,
    aws: OnceCell<SdkConfig>,
    secretsmanager: OnceCell<aws_sdk_secretsmanager::Client>,
    ssm: OnceCell<Result<ssm::SsmClient, String>>,
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for SecretResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached = self.lock().len();
        f.debug_struct("SecretResolver")
            .field("ttl", &self.ttl)
            .field("cached", &cached)
            .finish_non_exhaustive()
    }
}

/// The resolver's bounds on one Secrets Manager or SSM request, whatever SDK configuration it
/// was given: a secret fetch that stalls fails (and a cached value is used) instead of hanging
/// the invocation.
fn timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .build()
}

impl SecretResolver {
    /// A resolver reading the process environment and, on first need, AWS configured from the
    /// environment (`aws_config` defaults, which honour `AWS_ENDPOINT_URL`), with
    /// [`DEFAULT_TTL`]. `clock` dates cache entries.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            ttl: DEFAULT_TTL,
            env: Arc::new(|name| std::env::var(name).ok()),
            aws: OnceCell::new(),
            secretsmanager: OnceCell::new(),
            ssm: OnceCell::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The same resolver with another cache TTL (zero disables caching).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The same resolver looking `env:` references up through `lookup` (tests: the process
    /// environment cannot be changed safely while tests run in parallel).
    pub fn with_env_lookup(mut self, lookup: EnvLookup) -> Self {
        self.env = lookup;
        self
    }

    /// The same resolver using `config` for Secrets Manager and SSM instead of loading one from
    /// the environment.
    pub fn with_aws_config(self, config: SdkConfig) -> Self {
        Self {
            aws: OnceCell::new_with(Some(config)),
            ..self
        }
    }

    /// Resolves `reference`. Remote values come from the cache while younger than the TTL.
    pub async fn resolve(&self, reference: &SecretRef) -> Result<SecretString, SecretError> {
        let value = match reference {
            SecretRef::Inline(value) => SecretString::new(value.clone()),
            SecretRef::Env(name) => (self.env)(name)
                .map(SecretString::new)
                .ok_or_else(|| SecretError::MissingEnv { name: name.clone() })?,
            SecretRef::SecretsManager { .. } | SecretRef::Ssm(_) => {
                self.resolve_remote(reference).await?
            }
        };
        if value.expose().is_empty() {
            return Err(SecretError::Empty {
                reference: reference.to_string(),
            });
        }
        Ok(value)
    }

    /// Drops every cached value (after a known rotation, for instance).
    pub fn clear_cache(&self) {
        self.lock().clear();
    }

    /// Drops the cached value of `reference`: the next [`SecretResolver::resolve`] reads it
    /// again.
    pub fn forget(&self, reference: &SecretRef) {
        self.lock().remove(&reference.to_string());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        // Inserts and removals are single map operations, so a poisoned map is still whole.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn resolve_remote(&self, reference: &SecretRef) -> Result<SecretString, SecretError> {
        let key = reference.to_string();
        let now = self.clock.now_ms();
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let stale = {
            let cache = self.lock();
            match cache.get(&key) {
                Some(c) if now.saturating_sub(c.fetched_at) < ttl_ms => {
                    return Ok(c.value.clone());
                }
                Some(c) => Some(c.value.clone()),
                None => None,
            }
        };
        let fetched = match reference {
            SecretRef::SecretsManager { arn, json_key } => {
                self.fetch_secretsmanager(arn, json_key.as_deref()).await
            }
            SecretRef::Ssm(path) => self.fetch_ssm(path).await,
            SecretRef::Inline(_) | SecretRef::Env(_) => {
                return Err(SecretError::Refused {
                    reference: key,
                    code: "not a remote reference".into(),
                });
            }
        };
        match (fetched, stale) {
            (Ok(value), _) => {
                self.lock().insert(
                    key,
                    Cached {
                        value: value.clone(),
                        fetched_at: now,
                    },
                );
                Ok(value)
            }
            (Err(e), Some(stale)) if e.is_retryable() => Ok(stale),
            (Err(e), _) => Err(e),
        }
    }

    /// The process's AWS configuration: the one given with [`SecretResolver::with_aws_config`],
    /// else the environment's, loaded on first need. Other AWS clients built beside the
    /// resolver (SES) start from it.
    pub(crate) async fn sdk_config(&self) -> &SdkConfig {
        self.aws
            .get_or_init(|| aws_config::load_defaults(aws_config::BehaviorVersion::latest()))
            .await
    }

    async fn fetch_secretsmanager(
        &self,
        arn: &str,
        json_key: Option<&str>,
    ) -> Result<SecretString, SecretError> {
        let config = self.sdk_config().await;
        let client = self
            .secretsmanager
            .get_or_init(|| async {
                let config = aws_sdk_secretsmanager::config::Builder::from(config)
                    .timeout_config(timeouts())
                    .build();
                aws_sdk_secretsmanager::Client::from_conf(config)
            })
            .await;
        let reference = match json_key {
            Some(k) => format!("secretsmanager:{arn}#{k}"),
            None => format!("secretsmanager:{arn}"),
        };
        let out = client
            .get_secret_value()
            .secret_id(arn)
            .send()
            .await
            .map_err(|e| {
                classify(e, &reference, |code| match code {
                    "ResourceNotFoundException" => Some(SecretError::SecretNotFound {
                        arn: arn.to_owned(),
                    }),
                    _ => None,
                })
            })?;
        let Some(text) = out.secret_string() else {
            return Err(SecretError::NotAString {
                arn: arn.to_owned(),
            });
        };
        let Some(key) = json_key else {
            return Ok(SecretString::new(text));
        };
        let not_object = || SecretError::NotJsonObject {
            arn: arn.to_owned(),
            key: key.to_owned(),
        };
        // The parse error is dropped on purpose: serde_json's messages can quote the input.
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|_| not_object())?;
        match object.get(key) {
            Some(serde_json::Value::String(s)) => Ok(SecretString::new(s.clone())),
            Some(serde_json::Value::Number(n)) => Ok(SecretString::new(n.to_string())),
            _ => Err(SecretError::MissingKey {
                arn: arn.to_owned(),
                key: key.to_owned(),
            }),
        }
    }

    async fn fetch_ssm(&self, path: &str) -> Result<SecretString, SecretError> {
        let config = self.sdk_config().await;
        let reference = format!("ssm:{path}");
        let client = self
            .ssm
            .get_or_init(|| async { ssm::SsmClient::new(config).map_err(|e| e.to_string()) })
            .await
            .as_ref()
            .map_err(|_| SecretError::Unavailable {
                reference: reference.clone(),
                source: "the HTTP client for SSM could not be built".into(),
            })?;
        let not_found = || SecretError::ParameterNotFound {
            path: path.to_owned(),
        };
        match client.get_parameter(path).await {
            Ok(Some(value)) => Ok(SecretString::new(value)),
            Ok(None) => Err(not_found()),
            Err(ssm::SsmError::Service { code, .. })
                if code == "ParameterNotFound" || code == "ParameterVersionNotFound" =>
            {
                Err(not_found())
            }
            Err(ssm::SsmError::Service { code, status }) => Err(match code_class(&code) {
                CodeClass::Denied => SecretError::AccessDenied { reference },
                CodeClass::Refused => SecretError::Refused { reference, code },
                CodeClass::Transient => SecretError::Unavailable {
                    reference,
                    source: Box::new(ssm::SsmError::Service { code, status }),
                },
            }),
            Err(e @ ssm::SsmError::Transport(_)) => Err(SecretError::Unavailable {
                reference,
                source: Box::new(e),
            }),
            Err(ssm::SsmError::Signing(_)) => Err(SecretError::AccessDenied { reference }),
        }
    }
}

/// What a service error code says, for Secrets Manager and SSM alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeClass {
    /// Our credentials may not read it (or cannot decrypt it).
    Denied,
    /// The service failed or throttled; a later attempt may succeed.
    Transient,
    /// Anything else: the request itself is refused.
    Refused,
}

fn code_class(code: &str) -> CodeClass {
    match code {
        "AccessDeniedException"
        | "AccessDenied"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "DecryptionFailure"
        | "KMSAccessDeniedException" => CodeClass::Denied,
        ""
        | "InternalServiceError"
        | "InternalServerError"
        | "ThrottlingException"
        | "ServiceUnavailable" => CodeClass::Transient,
        _ => CodeClass::Refused,
    }
}

/// Classifies an SDK error by code and kind; `specific` maps codes particular to one service.
fn classify<E, R>(
    err: SdkError<E, R>,
    reference: &str,
    specific: impl Fn(&str) -> Option<SecretError>,
) -> SecretError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let reference = reference.to_owned();
    if let SdkError::ServiceError(_) = &err {
        let code = err.code().unwrap_or_default().to_owned();
        if let Some(e) = specific(&code) {
            return e;
        }
        return match code_class(&code) {
            CodeClass::Denied => SecretError::AccessDenied { reference },
            CodeClass::Transient => SecretError::Unavailable {
                reference,
                source: Box::new(err),
            },
            CodeClass::Refused => SecretError::Refused { reference, code },
        };
    }
    SecretError::Unavailable {
        reference,
        source: Box::new(err),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::clock::ManualClock;

    const VALUE: &str = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0";

    fn resolver(vars: &[(&str, &str)]) -> SecretResolver {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        SecretResolver::new(Arc::new(ManualClock::new(0)))
            .with_env_lookup(Arc::new(move |name| vars.get(name).cloned()))
    }

    #[tokio::test]
    async fn env_reference_reads_the_variable() {
        let r = resolver(&[("MAILGUN_API_KEY", VALUE)]);
        let got = r
            .resolve(&SecretRef::parse("env:MAILGUN_API_KEY"))
            .await
            .unwrap();
        assert_eq!(got.expose(), VALUE);
    }

    #[tokio::test]
    async fn missing_env_variable_is_named_in_the_error() {
        let r = resolver(&[]);
        let err = r
            .resolve(&SecretRef::parse("env:MAILGUN_API_KEY"))
            .await
            .unwrap_err();
        assert!(matches!(&err, SecretError::MissingEnv { name } if name == "MAILGUN_API_KEY"));
        assert!(err.to_string().contains("MAILGUN_API_KEY"), "{err}");
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn empty_values_are_refused_without_showing_them() {
        let r = resolver(&[("EMPTY", "")]);
        let err = r.resolve(&SecretRef::parse("env:EMPTY")).await.unwrap_err();
        assert!(matches!(err, SecretError::Empty { .. }), "{err}");
    }

    #[tokio::test]
    async fn inline_secret_is_returned_as_is() {
        let r = resolver(&[]);
        let got = r.resolve(&SecretRef::parse(VALUE)).await.unwrap();
        assert_eq!(got.expose(), VALUE);
    }

    mod against_a_fake_ssm {
        use wiremock::matchers::{body_json, header, header_regex, method, path};
        use wiremock::{Mock, MockServer, ResponseTemplate};

        use super::*;

        fn sdk_config(server: &MockServer) -> SdkConfig {
            use aws_sdk_secretsmanager::config::{Credentials, Region, SharedCredentialsProvider};
            SdkConfig::builder()
                .behavior_version(aws_config::BehaviorVersion::latest())
                .region(Region::new("eu-west-1"))
                .endpoint_url(server.uri())
                .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                    "AKIDSSMTEST",
                    "secret",
                    None,
                    None,
                    "test",
                )))
                .build()
        }

        async fn resolve(
            answer: ResponseTemplate,
            expected_requests: u64,
        ) -> Result<SecretString, SecretError> {
            let server = MockServer::start().await;
            // The request SSM's JSON 1.1 protocol takes, signed with SigV4 for `ssm` in the
            // configured region.
            Mock::given(method("POST"))
                .and(path("/"))
                .and(header("x-amz-target", "AmazonSSM.GetParameter"))
                .and(header("content-type", "application/x-amz-json-1.1"))
                .and(header_regex(
                    "authorization",
                    "^AWS4-HMAC-SHA256 Credential=AKIDSSMTEST/[0-9]{8}/eu-west-1/ssm/aws4_request, SignedHeaders=[a-z0-9;-]*x-amz-target[a-z0-9;-]*, Signature=[0-9a-f]{64}$",
                ))
                .and(header_regex("x-amz-date", "^[0-9]{8}T[0-9]{6}Z$"))
                .and(body_json(serde_json::json!({"Name": "/gateway/key", "WithDecryption": true})))
                .respond_with(answer)
                .expect(expected_requests)
                .mount(&server)
                .await;
            let resolver = SecretResolver::new(Arc::new(ManualClock::new(0)))
                .with_aws_config(sdk_config(&server));
            resolver
                .resolve(&SecretRef::Ssm("/gateway/key".into()))
                .await
        }

        fn error(status: u16, code: &str) -> ResponseTemplate {
            ResponseTemplate::new(status).set_body_string(
                serde_json::json!({"__type": format!("com.amazonaws.ssm#{code}"), "message": "no"})
                    .to_string(),
            )
        }

        #[tokio::test]
        async fn a_signed_get_parameter_returns_the_decrypted_value() {
            let answer = ResponseTemplate::new(200).set_body_string(
                serde_json::json!({"Parameter": {"Name": "/gateway/key", "Type": "SecureString",
                                   "Value": VALUE, "Version": 3}})
                .to_string(),
            );
            assert_eq!(resolve(answer, 1).await.unwrap().expose(), VALUE);
        }

        #[tokio::test]
        async fn errors_are_classified_by_their_code() {
            let missing = resolve(error(400, "ParameterNotFound"), 1)
                .await
                .unwrap_err();
            assert!(
                matches!(missing, SecretError::ParameterNotFound { .. }),
                "{missing}"
            );
            let denied = resolve(error(400, "AccessDeniedException"), 1)
                .await
                .unwrap_err();
            assert!(
                matches!(denied, SecretError::AccessDenied { .. }),
                "{denied}"
            );
            let refused = resolve(error(400, "ValidationException"), 1)
                .await
                .unwrap_err();
            assert!(matches!(refused, SecretError::Refused { .. }), "{refused}");
            assert!(!refused.to_string().contains(VALUE));
        }

        #[tokio::test]
        async fn throttling_is_retried_three_times_then_reported_as_retryable() {
            let err = resolve(error(400, "ThrottlingException"), 3)
                .await
                .unwrap_err();
            assert!(err.is_retryable(), "{err}");
            let err = resolve(ResponseTemplate::new(503), 3).await.unwrap_err();
            assert!(err.is_retryable(), "{err}");
        }
    }

    mod against_a_fake_secrets_manager {
        use wiremock::matchers::{header, method};
        use wiremock::{Mock, MockServer, ResponseTemplate};

        use super::*;

        const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:mailgun";

        fn sdk_config(server: &MockServer) -> SdkConfig {
            use aws_sdk_secretsmanager::config::{Credentials, Region, SharedCredentialsProvider};
            SdkConfig::builder()
                .behavior_version(aws_config::BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(server.uri())
                .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                    "test", "test", None, None, "test",
                )))
                .retry_config(aws_config::retry::RetryConfig::disabled())
                .build()
        }

        fn value(secret: &str) -> ResponseTemplate {
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/x-amz-json-1.1")
                .set_body_string(
                    serde_json::json!({"ARN": ARN, "Name": "mailgun", "SecretString": secret})
                        .to_string(),
                )
        }

        fn error(status: u16, code: &str) -> ResponseTemplate {
            ResponseTemplate::new(status)
                .insert_header("content-type", "application/x-amz-json-1.1")
                .insert_header("x-amzn-errortype", code)
                .set_body_string(serde_json::json!({"__type": code, "message": "no"}).to_string())
        }

        /// A resolver whose first read answers `VALUE` and every later one `then`.
        async fn resolver_then(
            then: ResponseTemplate,
        ) -> (MockServer, Arc<ManualClock>, SecretResolver) {
            let server = MockServer::start().await;
            let target = || header("x-amz-target", "secretsmanager.GetSecretValue");
            Mock::given(method("POST"))
                .and(target())
                .respond_with(value(VALUE))
                .up_to_n_times(1)
                .with_priority(1)
                .mount(&server)
                .await;
            Mock::given(method("POST"))
                .and(target())
                .respond_with(then)
                .with_priority(2)
                .mount(&server)
                .await;
            let clock = Arc::new(ManualClock::new(0));
            let resolver = SecretResolver::new(clock.clone()).with_aws_config(sdk_config(&server));
            (server, clock, resolver)
        }

        fn reference() -> SecretRef {
            SecretRef::SecretsManager {
                arn: ARN.into(),
                json_key: None,
            }
        }

        #[tokio::test]
        async fn unreachable_store_after_the_ttl_keeps_the_cached_value() {
            let (server, clock, r) = resolver_then(error(500, "InternalServiceError")).await;
            assert_eq!(r.resolve(&reference()).await.unwrap().expose(), VALUE);
            clock.advance(DEFAULT_TTL.as_millis() as i64);
            assert_eq!(r.resolve(&reference()).await.unwrap().expose(), VALUE);
            let requests = server.received_requests().await.unwrap_or_default();
            assert_eq!(requests.len(), 2, "the value was read again after the TTL");
        }

        #[tokio::test]
        async fn deleted_secret_after_the_ttl_is_reported_despite_the_cache() {
            let (_server, clock, r) = resolver_then(error(400, "ResourceNotFoundException")).await;
            r.resolve(&reference()).await.unwrap();
            clock.advance(DEFAULT_TTL.as_millis() as i64);
            let err = r.resolve(&reference()).await.unwrap_err();
            assert!(matches!(err, SecretError::SecretNotFound { .. }), "{err:?}");
        }

        #[tokio::test]
        async fn unreachable_store_without_a_cached_value_is_retryable() {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .respond_with(error(503, "ServiceUnavailable"))
                .mount(&server)
                .await;
            let r = SecretResolver::new(Arc::new(ManualClock::new(0)))
                .with_aws_config(sdk_config(&server));
            let err = r.resolve(&reference()).await.unwrap_err();
            assert!(err.is_retryable(), "{err:?}");
            assert!(err.to_string().contains(ARN), "{err}");
        }
    }

    #[tokio::test]
    async fn debug_of_the_resolver_shows_no_value() {
        let r = resolver(&[("K", VALUE)]);
        r.resolve(&SecretRef::parse("env:K")).await.unwrap();
        r.resolve(&SecretRef::parse(VALUE)).await.unwrap();
        let shown = format!("{r:?}");
        assert!(!shown.contains("3ax6"), "{shown}");
        assert!(shown.contains("SecretResolver"), "{shown}");
    }
}

/// A credential a provider client sends with its requests, read through the resolver on every
/// use, so a rotated key reaches a warm instance within the resolver's TTL without a
/// deployment; and read again at once when the provider refuses it ([`LiveSecret::after_refusal`]),
/// so a rotation is not counted against the breaker as an outage of the provider. `Debug` shows
/// the reference, never the value.
#[derive(Clone)]
pub struct LiveSecret(Source, Arc<Mutex<Option<std::time::Instant>>>);

/// The shortest time between two reads forced by refusals: a provider refusing every request
/// (a revoked key) must not turn each send into a call to the secret store.
pub const REFUSAL_REREAD_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Clone)]
enum Source {
    Fixed(SecretString),
    Resolved {
        resolver: Arc<SecretResolver>,
        reference: SecretRef,
    },
}

impl std::fmt::Debug for LiveSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Source::Fixed(_) => f.write_str("LiveSecret(fixed)"),
            Source::Resolved { reference, .. } => write!(f, "LiveSecret({reference})"),
        }
    }
}

impl From<SecretString> for LiveSecret {
    fn from(value: SecretString) -> Self {
        Self::fixed(value)
    }
}

impl LiveSecret {
    /// A value that never changes (tests, clients built from a value).
    pub fn fixed(value: SecretString) -> Self {
        Self(Source::Fixed(value), Arc::default())
    }

    /// `reference`, read through `resolver` (and its cache) on every use.
    pub fn resolved(resolver: Arc<SecretResolver>, reference: SecretRef) -> Self {
        Self(
            Source::Resolved {
                resolver,
                reference,
            },
            Arc::default(),
        )
    }

    /// The value to use now: the resolver's cached value, read again once older than its TTL
    /// (and kept if that read fails).
    pub async fn current(&self) -> Result<SecretString, SecretError> {
        match &self.0 {
            Source::Fixed(value) => Ok(value.clone()),
            Source::Resolved {
                resolver,
                reference,
            } => resolver.resolve(reference).await,
        }
    }

    /// After the provider refused `refused`: the value read again from its source, when it
    /// differs (the key was rotated, try once more with the new one); `None` when it is the
    /// same, cannot be read, is fixed, or was read again for a refusal less than
    /// [`REFUSAL_REREAD_INTERVAL`] ago (the refusal stands).
    pub async fn after_refusal(&self, refused: &SecretString) -> Option<SecretString> {
        let Source::Resolved {
            resolver,
            reference,
        } = &self.0
        else {
            return None;
        };
        let recently = {
            let mut last = self.1.lock().unwrap_or_else(PoisonError::into_inner);
            let recently = last.is_some_and(|at| at.elapsed() < REFUSAL_REREAD_INTERVAL);
            if !recently {
                *last = Some(std::time::Instant::now());
            }
            recently
        };
        // Read again a moment ago for another refusal: the cached value is that read's.
        if !recently {
            resolver.forget(reference);
        }
        match resolver.resolve(reference).await {
            Ok(fresh) if fresh != *refused => Some(fresh),
            _ => None,
        }
    }
}
