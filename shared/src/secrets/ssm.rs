//! SSM `GetParameter`, the one call `ssm:` references need, as a signed AWS JSON 1.1 request.
//!
//! Why not `aws-sdk-ssm`: it is generated for SSM's whole API (hundreds of operations) and was
//! the largest crate of the workspace to compile (76 s of CPU in every clean build, more than
//! any other) for one request shape that is stable and documented. The request is signed with
//! SigV4 by `aws-sigv4` (the signer every SDK client uses) with the process's credentials, sent
//! with a reqwest client trusting [the gateway's roots](crate::tls), and retried like the SDK's
//! standard mode (3 attempts, [jittered exponential backoff](crate::retry)) on throttling, 5xx
//! and transport errors.
//!
//! Endpoint: `AWS_ENDPOINT_URL_SSM`, else the SDK configuration's endpoint (`AWS_ENDPOINT_URL`:
//! the emulator in tests), else `https://ssm.{region}.amazonaws.com` (`.com.cn` in China).

use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::provider::ProvideCredentials as _;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use serde_json::{Value, json};

use super::{ATTEMPT_TIMEOUT, CONNECT_TIMEOUT};
use crate::retry::RetryPolicy;

/// Requests per call and their backoff: the SDK's standard retry mode (3 attempts, full jitter
/// on 200 ms doubling).
const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    base_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(20),
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SsmError {
    /// SSM answered with an error (`__type` without its namespace, e.g. `ParameterNotFound`).
    #[error("SSM refused the request: {code}")]
    Service {
        /// The error code.
        code: String,
        /// The HTTP status.
        status: u16,
    },
    /// No answer (connection, timeout) or an unreadable one.
    #[error("SSM could not be reached")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No credentials or no region to sign with.
    #[error("no AWS credentials or region to sign the SSM request with")]
    Signing(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl SsmError {
    /// True when another attempt may succeed.
    fn is_retryable(&self) -> bool {
        match self {
            Self::Service { code, status } => {
                *status >= 500 || code.contains("Throttling") || code == "TooManyUpdates"
            }
            Self::Transport(_) => true,
            Self::Signing(_) => false,
        }
    }
}

/// A `GetParameter` client on one SDK configuration.
#[derive(Debug)]
pub(crate) struct SsmClient {
    sdk: SdkConfig,
    http: reqwest::Client,
    endpoint: Option<String>,
}

impl SsmClient {
    /// A client signing with `sdk`'s credentials and region.
    pub(crate) fn new(sdk: &SdkConfig) -> Result<Self, SsmError> {
        let http = crate::tls::reqwest_builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SsmError::Transport(Box::new(e)))?;
        let endpoint = std::env::var("AWS_ENDPOINT_URL_SSM")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .or_else(|| sdk.endpoint_url().map(str::to_owned));
        Ok(Self {
            sdk: sdk.clone(),
            http,
            endpoint,
        })
    }

    /// The decrypted value of the parameter at `path`; `None` when it has none.
    pub(crate) async fn get_parameter(&self, path: &str) -> Result<Option<String>, SsmError> {
        let body = json!({"Name": path, "WithDecryption": true}).to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.call("AmazonSSM.GetParameter", &body).await {
                Ok(answer) => {
                    return Ok(answer["Parameter"]["Value"].as_str().map(str::to_owned));
                }
                Err(e) if e.is_retryable() && attempt < RETRY.max_attempts => {
                    tokio::time::sleep(RETRY.delay(attempt - 1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One signed request for `target` with `body`; the answer's JSON.
    async fn call(&self, target: &str, body: &str) -> Result<Value, SsmError> {
        let region = self
            .sdk
            .region()
            .ok_or_else(|| SsmError::Signing("no region".into()))?
            .to_string();
        let url = match &self.endpoint {
            Some(endpoint) => format!("{}/", endpoint.trim_end_matches('/')),
            None if region.starts_with("cn-") => {
                format!("https://ssm.{region}.amazonaws.com.cn/")
            }
            None => format!("https://ssm.{region}.amazonaws.com/"),
        };
        let credentials = self
            .sdk
            .credentials_provider()
            .ok_or_else(|| SsmError::Signing("no credentials provider".into()))?
            .provide_credentials()
            .await
            .map_err(|e| SsmError::Signing(Box::new(e)))?;
        let identity = Identity::from(credentials);
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", target),
        ];
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&region)
            .name("ssm")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| SsmError::Signing(Box::new(e)))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            url.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| SsmError::Signing(Box::new(e)))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| SsmError::Signing(Box::new(e)))?
            .into_parts();
        let mut request = self.http.post(&url).body(body.to_owned());
        for (name, value) in headers.iter().copied().chain(instructions.headers()) {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| SsmError::Transport(Box::new(e)))?;
        let status = response.status().as_u16();
        let header_code = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(':').next().unwrap_or_default().to_owned());
        let text = response
            .text()
            .await
            .map_err(|e| SsmError::Transport(Box::new(e)))?;
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        // `__type` is `ParameterNotFound` or namespaced (`com.amazonaws.ssm#ParameterNotFound`);
        // some errors come in the `x-amzn-errortype` header only, which the body then lacks.
        let code = answer["__type"]
            .as_str()
            .map(str::to_owned)
            .or(header_code)
            .unwrap_or_default()
            .rsplit('#')
            .next()
            .unwrap_or_default()
            .to_owned();
        Err(SsmError::Service { code, status })
    }
}
