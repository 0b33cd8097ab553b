//! Builds one [`Provider`] client per enabled gateway of a [`Config`].
//!
//! - One `reqwest::Client` ([`http::build_client`]) is shared by every HTTP provider (Mailgun,
//!   SendGrid, Gmail), so they share its connection pool and timeouts; it is built only if some
//!   gateway needs it.
//! - SES clients come from [`ses::build_ses_client`], one per SES gateway (each may name its own
//!   region and endpoint).
//! - SMTP takes the HTTP settings' timeouts: `connect_timeout` to connect, `request_timeout` for
//!   each half of the exchange, and the default size limits.
//! - A capture gateway's directory **is created** if missing. [`CaptureProvider`] does
//!   not create it, so that a typo shows up at send time; but capture only exists for local runs,
//!   where "run it on a fresh checkout" should just work, and the factory runs once at start-up
//!   where a failure to create the directory is reported with the rest.
//! - Disabled gateways are skipped: they are never routed to, and their secrets need not exist.
//!
//! Every problem of every gateway is collected before failing, so one start-up shows the whole
//! list ([`FactoryError`]); secrets are resolved through [`SecretResolver`] and never appear in
//! a problem's text.

use std::fmt;
use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{Config, Gateway, HttpSettings, ProviderSettings, SecretRef};
use crate::providers::Provider;
use crate::providers::capture::CaptureProvider;
use crate::providers::gmail::{GmailProvider, GmailSetupError};
use crate::providers::http::{self, HttpClientError};
use crate::providers::mailgun::MailgunProvider;
use crate::providers::sendgrid::SendgridProvider;
use crate::providers::ses::{self, SesProvider};
use crate::providers::simulated::SimulatedProvider;
use crate::providers::smtp::{SmtpLimits, SmtpProvider, SmtpSetupError, SmtpTimeouts};
use crate::secrets::{LiveSecret, SecretString};
use crate::secrets::{SecretError, SecretResolver};

/// What is wrong with one gateway.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// A secret field could not be resolved.
    #[error("{field}: {source}")]
    Secret {
        /// The field, as in the file (`mailgun.api_key`).
        field: &'static str,
        /// Why (names the variable, ARN or path, never the value).
        #[source]
        source: SecretError,
    },
    /// The shared HTTP client could not be built.
    #[error("{0}")]
    HttpClient(#[source] Arc<HttpClientError>),
    /// The Gmail settings or service-account key are unusable.
    #[error("google_workspace: {0}")]
    Gmail(#[source] GmailSetupError),
    /// The SMTP settings are unusable.
    #[error("smtp: {0}")]
    Smtp(#[source] SmtpSetupError),
    /// The capture directory could not be created.
    #[error("capture.directory {directory} could not be created: {source}")]
    CaptureDirectory {
        /// The directory.
        directory: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// One problem, located by the gateway's position in the configuration and its id.
#[derive(Debug)]
pub struct GatewayProblem {
    /// Index in `config.gateways`.
    pub index: usize,
    /// The gateway's id.
    pub gateway_id: String,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for GatewayProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gateways[{}] ({}): {}",
            self.index, self.gateway_id, self.problem
        )
    }
}

/// Every problem found while building the providers; never empty.
#[derive(Debug, thiserror::Error)]
pub struct FactoryError {
    /// The problems, in gateway order.
    pub problems: Vec<GatewayProblem>,
}

impl fmt::Display for FactoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} gateway problem(s): ", self.problems.len())?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The built providers, keyed by gateway id.
pub use super::Providers;

/// Builds one provider client per enabled gateway of `config` (see the module docs). `http`
/// configures the shared HTTP client and the SMTP timeouts; `clock` is given to providers that
/// keep time (Gmail's token cache). Either every enabled gateway is built, or the error lists
/// every problem found.
pub async fn build_providers(
    config: &Config,
    resolver: &Arc<SecretResolver>,
    http: &HttpSettings,
    clock: Arc<dyn Clock>,
) -> Result<Providers, FactoryError> {
    let mut builder = Builder {
        resolver,
        http,
        clock,
        client: None,
    };
    let mut providers = Providers::new();
    let mut problems = Vec::new();
    for (index, gateway) in config.gateways.iter().enumerate() {
        if !gateway.enabled {
            continue;
        }
        match builder.build(gateway).await {
            Ok(provider) => {
                providers.insert(gateway.id.clone(), provider);
            }
            Err(found) => problems.extend(found.into_iter().map(|problem| GatewayProblem {
                index,
                gateway_id: gateway.id.clone(),
                problem,
            })),
        }
    }
    if problems.is_empty() {
        Ok(providers)
    } else {
        Err(FactoryError { problems })
    }
}

struct Builder<'a> {
    resolver: &'a Arc<SecretResolver>,
    http: &'a HttpSettings,
    clock: Arc<dyn Clock>,
    client: Option<Result<reqwest::Client, Arc<HttpClientError>>>,
}

impl Builder<'_> {
    fn client(&mut self) -> Result<reqwest::Client, Problem> {
        let http = self.http;
        self.client
            .get_or_insert_with(|| http::build_client(http).map_err(Arc::new))
            .clone()
            .map_err(Problem::HttpClient)
    }

    async fn secret(
        &self,
        field: &'static str,
        reference: &SecretRef,
    ) -> Result<SecretString, Problem> {
        self.resolver
            .resolve(reference)
            .await
            .map_err(|source| Problem::Secret { field, source })
    }

    /// A credential the client reads on every use (so a rotation reaches it, see
    /// [`LiveSecret`]), checked to resolve now so that a broken reference is a start-up problem.
    async fn live_secret(
        &self,
        field: &'static str,
        reference: &SecretRef,
    ) -> Result<LiveSecret, Problem> {
        self.secret(field, reference).await?;
        Ok(LiveSecret::resolved(
            Arc::clone(self.resolver),
            reference.clone(),
        ))
    }

    /// Builds one gateway's client, or every problem it has.
    async fn build(&mut self, gateway: &Gateway) -> Result<Arc<dyn Provider>, Vec<Problem>> {
        let id = gateway.id.as_str();
        match &gateway.provider {
            ProviderSettings::Mailgun(settings) => {
                let (key, client) = both(
                    self.live_secret("mailgun.api_key", &settings.api_key).await,
                    self.client(),
                )?;
                Ok(Arc::new(MailgunProvider::new(id, settings, key, client)))
            }
            ProviderSettings::Sendgrid(settings) => {
                let (key, client) = both(
                    self.live_secret("sendgrid.api_key", &settings.api_key)
                        .await,
                    self.client(),
                )?;
                Ok(Arc::new(SendgridProvider::new(id, settings, key, client)))
            }
            ProviderSettings::AmazonSes(settings) => {
                let client =
                    ses::build_ses_client(self.resolver.sdk_config().await, settings, self.http);
                Ok(Arc::new(SesProvider::new(id, settings, client)))
            }
            ProviderSettings::GoogleWorkspace(settings) => {
                let (key, client) = both(
                    self.secret(
                        "google_workspace.service_account",
                        &settings.service_account,
                    )
                    .await,
                    self.client(),
                )?;
                let live = LiveSecret::resolved(
                    Arc::clone(self.resolver),
                    settings.service_account.clone(),
                );
                GmailProvider::new(id, settings, &key, client, self.clock.clone())
                    .map(|p| Arc::new(p.with_live_key(live)) as Arc<dyn Provider>)
                    .map_err(|e| vec![Problem::Gmail(e)])
            }
            ProviderSettings::Smtp(settings) => {
                let password = match &settings.password {
                    Some(reference) => Some(
                        self.live_secret("smtp.password", reference)
                            .await
                            .map_err(|e| vec![e])?,
                    ),
                    None => None,
                };
                let timeouts = SmtpTimeouts {
                    connect: self.http.connect_timeout,
                    exchange: self.http.request_timeout,
                };
                SmtpProvider::new(id, settings, password, timeouts, SmtpLimits::default())
                    .map(|p| Arc::new(p) as Arc<dyn Provider>)
                    .map_err(|e| vec![Problem::Smtp(e)])
            }
            ProviderSettings::Capture(settings) => {
                std::fs::create_dir_all(&settings.directory).map_err(|source| {
                    vec![Problem::CaptureDirectory {
                        directory: settings.directory.clone(),
                        source,
                    }]
                })?;
                Ok(Arc::new(CaptureProvider::new(id, &settings.directory)))
            }
            ProviderSettings::Simulated(settings) => {
                Ok(Arc::new(SimulatedProvider::new(id, settings.clone())))
            }
        }
    }
}

/// Both values, or every problem of the two.
fn both<A, B>(a: Result<A, Problem>, b: Result<B, Problem>) -> Result<(A, B), Vec<Problem>> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (a, b) => Err([a.err(), b.err()].into_iter().flatten().collect()),
    }
}
