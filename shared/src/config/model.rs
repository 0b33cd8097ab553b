//! The effective gateway configuration: what the rest of the gateway reads after loading,
//! defaulting, env overrides and validation. Every value here is already checked; nothing
//! downstream re-validates.
//!
//! The file format (the seed's JSON) is parsed by [`super::load`]; these types are its resolved
//! form, with `global_defaults` applied to every gateway.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::pattern::SenderPattern;

/// The whole effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Gateways in file order (legacy-converted ones first in hybrid mode).
    pub gateways: Vec<Gateway>,
    /// Global routing settings.
    pub routing: Routing,
    /// System-wide limits (all gateways together).
    pub system_limits: SystemLimits,
    /// Outbound HTTP settings shared by every provider client.
    pub http: HttpSettings,
    /// Which sources the gateways came from.
    pub mode: GatewayMode,
    /// Where customers receive their events in Mandrill's format (`customer_webhooks[]`).
    pub customer_webhooks: Vec<CustomerWebhook>,
    /// How far complaints and unsubscribes suppress (`suppression`).
    pub suppression: SuppressionSettings,
}

/// How far a complaint or an unsubscribe suppresses its recipient (`suppression.complaint_scope`
/// / `unsubscribe_scope`; ARCHITECTURE §3.6). Hard bounces always suppress every stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventScope {
    /// `stream`: only the stream of the message the event was about, or every stream when the
    /// event does not say which (the safe side for consent).
    #[default]
    Stream,
    /// `all`: every stream.
    All,
}

impl EventScope {
    /// The config name: `stream` or `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::All => "all",
        }
    }

    /// Parses a config name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Stream, Self::All]
            .into_iter()
            .find(|e| e.as_str() == s)
    }
}

/// The `suppression` section: the reach of each kind of suppressing event, as the recorder
/// applies it. The default suppresses complaints and unsubscribes for their message's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SuppressionSettings {
    /// `complaint_scope`.
    pub complaint_scope: EventScope,
    /// `unsubscribe_scope`.
    pub unsubscribe_scope: EventScope,
}

/// The customer-facing event types, by Mandrill's names (`customer_webhooks[].events`; the
/// payloads are built by [`crate::mandrill`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MandrillEvent {
    /// `send`
    Send,
    /// `deferral`
    Deferral,
    /// `hard_bounce`
    HardBounce,
    /// `soft_bounce`
    SoftBounce,
    /// `open`
    Open,
    /// `click`
    Click,
    /// `spam`
    Spam,
    /// `unsub`
    Unsub,
    /// `reject`
    Reject,
}

impl MandrillEvent {
    /// Every event, in the order of Mandrill's documentation.
    pub const ALL: [Self; 9] = [
        Self::Send,
        Self::Deferral,
        Self::HardBounce,
        Self::SoftBounce,
        Self::Open,
        Self::Click,
        Self::Spam,
        Self::Unsub,
        Self::Reject,
    ];

    /// The event named `name` on the wire, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }

    /// The event name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Deferral => "deferral",
            Self::HardBounce => "hard_bounce",
            Self::SoftBounce => "soft_bounce",
            Self::Open => "open",
            Self::Click => "click",
            Self::Spam => "spam",
            Self::Unsub => "unsub",
            Self::Reject => "reject",
        }
    }
}

/// One customer webhook endpoint (`customer_webhooks[]`, ARCHITECTURE §2.5): the events of the
/// messages of the matching senders, batched and signed as Mandrill does.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerWebhook {
    /// Unique id (same syntax as a gateway id); names the endpoint in delivery jobs and logs.
    pub id: String,
    /// The URL posted to, exactly as configured: it is part of the signed text.
    pub url: String,
    /// The webhook key the signature is computed with.
    pub key: SecretRef,
    /// The Mandrill events delivered (`events`); all of them when the file names none.
    pub events: Vec<MandrillEvent>,
    /// Whose messages (`senders`, sender patterns); every sender when empty.
    pub senders: Vec<SenderPattern>,
    /// `enabled` (default true); a disabled endpoint receives nothing new.
    pub enabled: bool,
}

impl CustomerWebhook {
    /// Whether this endpoint wants `event` about a message from `sender` (`None` when the
    /// record does not know the sender yet: only endpoints without a sender filter match).
    pub fn wants(&self, event: MandrillEvent, sender: Option<&str>) -> bool {
        self.enabled
            && self.events.contains(&event)
            && (self.senders.is_empty()
                || sender.is_some_and(|s| self.senders.iter().any(|p| p.matches(s))))
    }
}

impl Config {
    /// The gateway with this id, if any.
    pub fn gateway(&self, id: &str) -> Option<&Gateway> {
        self.gateways.iter().find(|g| g.id == id)
    }
}

/// `GATEWAY_MODE`: which configuration sources are in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GatewayMode {
    /// Only gateways converted from the legacy `workspaces.json`.
    Legacy,
    /// Only the gateway config file.
    #[default]
    New,
    /// Both: legacy workspaces keep their sender domains; new gateways take the rest and act
    /// as failover.
    Hybrid,
}

/// Gateway provider type (`type` in the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GatewayKind {
    /// Gmail API with a Workspace service account (`google_workspace`).
    GoogleWorkspace,
    /// Mailgun HTTP API (`mailgun`).
    Mailgun,
    /// Twilio SendGrid v3 (`sendgrid`).
    Sendgrid,
    /// Amazon SES v2 (`amazon_ses`).
    AmazonSes,
    /// Any SMTP relay (`smtp`).
    Smtp,
    /// Local only: writes each message as an `.eml` file (`capture`).
    Capture,
    /// Local only: answers after a latency with a configured mix of outcomes (`simulated`).
    Simulated,
}

impl GatewayKind {
    /// The name used in the file, logs and MySQL (`gateway_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GoogleWorkspace => "google_workspace",
            Self::Mailgun => "mailgun",
            Self::Sendgrid => "sendgrid",
            Self::AmazonSes => "amazon_ses",
            Self::Smtp => "smtp",
            Self::Capture => "capture",
            Self::Simulated => "simulated",
        }
    }

    /// Every kind, in a fixed order.
    pub const ALL: [GatewayKind; 7] = [
        Self::GoogleWorkspace,
        Self::Mailgun,
        Self::Sendgrid,
        Self::AmazonSes,
        Self::Smtp,
        Self::Capture,
        Self::Simulated,
    ];

    /// Parses the file name of a kind.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for GatewayKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a gateway definition came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewaySource {
    /// The gateway config file.
    ConfigFile,
    /// Converted from the legacy `workspaces.json` workspace with this id.
    LegacyWorkspace(String),
}

/// One gateway, with `global_defaults` applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    /// Unique id (`[A-Za-z0-9._-]`, 1–64 chars).
    pub id: String,
    /// Provider type.
    pub kind: GatewayKind,
    /// Human name; defaults to the id.
    pub display_name: String,
    /// The sending domain this gateway represents, if any (used by `domain_based` routing).
    pub domain: Option<String>,
    /// Disabled gateways are never routed to.
    pub enabled: bool,
    /// Lower wins.
    pub priority: u32,
    /// Relative share for `weighted` routing; 0 means never chosen by weight.
    pub weight: u32,
    /// The provider block named after the type.
    pub provider: ProviderSettings,
    /// Limits, defaults applied.
    pub rate_limits: RateLimits,
    /// Which senders this gateway takes and where it fails over to.
    pub routing: GatewayRouting,
    /// Breaker settings, defaults applied.
    pub circuit_breaker: BreakerSettings,
    /// Health-check settings, defaults applied.
    pub health_check: HealthCheckSettings,
    /// Config file or legacy workspace.
    pub source: GatewaySource,
}

/// A limit: `None` is unlimited, otherwise a positive count of recipients.
pub type Limit = Option<u64>;

/// All per-gateway limits. Units are recipients (to + cc + bcc), as providers count them.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    /// Per UTC day, whole gateway.
    pub workspace_daily: Limit,
    /// Per UTC day, per sender address (case-insensitive), unless `custom_user_limits` names it.
    pub per_user_daily: Limit,
    /// Per UTC hour, whole gateway.
    pub per_hour: Limit,
    /// Token bucket capacity (the largest burst), whole gateway.
    pub burst_limit: Limit,
    /// Token bucket refill rate in recipients per second (extension `burst_refill_per_second`;
    /// defaults to `burst_limit` per second).
    pub burst_refill_per_second: f64,
    /// Per-sender daily overrides; keys are lower-cased addresses.
    pub custom_user_limits: BTreeMap<String, Limit>,
}

impl RateLimits {
    /// The daily limit that applies to `sender` (any case).
    pub fn per_user_daily_for(&self, sender: &str) -> Limit {
        self.per_user_daily_for_lower(&sender.to_ascii_lowercase())
    }

    /// [`RateLimits::per_user_daily_for`] of a sender already in lower case (no copy).
    pub fn per_user_daily_for_lower(&self, sender_lc: &str) -> Limit {
        match self.custom_user_limits.get(sender_lc) {
            Some(limit) => *limit,
            None => self.per_user_daily,
        }
    }
}

/// System-wide limits across all gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemLimits {
    /// Per UTC day, all gateways together (`QUEUE_DAILY_RATE_LIMIT` or `system_limits.daily`).
    pub daily: Limit,
    /// Extension `system_limits.transactional_reserve`: the share of every day and hour limit
    /// (each gateway's and the system's) that bulk messages may not take, in basis points
    /// (1,000 = 10 %, the default; at most 5,000): a campaign cannot use up the quota an
    /// appointment reminder needs. Burst buckets are not reserved (they refill in seconds).
    pub transactional_reserve_bp: u16,
}

impl Default for SystemLimits {
    fn default() -> Self {
        Self {
            daily: None,
            transactional_reserve_bp: DEFAULT_TRANSACTIONAL_RESERVE_BP,
        }
    }
}

/// The default [`SystemLimits::transactional_reserve_bp`]: 10 %.
pub const DEFAULT_TRANSACTIONAL_RESERVE_BP: u16 = 1_000;

impl SystemLimits {
    /// `gateway` as bulk messages see it: its day and hour limits less the reserve.
    pub fn bulk_gateway(&self, gateway: &Gateway) -> Gateway {
        let mut g = gateway.clone();
        let rl = &mut g.rate_limits;
        rl.workspace_daily = rl.workspace_daily.map(|n| self.bulk_share(n));
        rl.per_hour = rl.per_hour.map(|n| self.bulk_share(n));
        g
    }

    /// `config` as bulk messages see it: the system's and every gateway's day and hour limits
    /// less the reserve.
    pub fn bulk_config(config: &Config) -> Config {
        let reserve = config.system_limits;
        let mut bulk = config.clone();
        bulk.system_limits.daily = reserve.daily.map(|n| reserve.bulk_share(n));
        for g in &mut bulk.gateways {
            *g = reserve.bulk_gateway(g);
        }
        bulk
    }

    /// What bulk messages may take of `limit`: the limit less the transactional reserve,
    /// rounded down (a limit of 5 with 10 % reserved leaves bulk 4).
    pub fn bulk_share(&self, limit: u64) -> u64 {
        let reserved = u128::from(limit) * u128::from(self.transactional_reserve_bp);
        let reserved = reserved.div_ceil(10_000);
        limit.saturating_sub(u64::try_from(reserved).unwrap_or(u64::MAX))
    }
}

/// Per-gateway routing rules.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayRouting {
    /// Senders this gateway may take. Empty means none.
    pub can_route: Vec<SenderPattern>,
    /// Senders this gateway must never take; wins over `can_route`.
    pub exclude_patterns: Vec<SenderPattern>,
    /// Explicit failover chain, in order (ids validated to exist, no cycles).
    pub failover_to: Vec<String>,
}

/// Routing strategy (ARCHITECTURE §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Lowest `priority` first, ties by id.
    Priority,
    /// Explicit `failover_to` chains first, then priority.
    Failover,
    /// Even rotation, the starting point derived from the message id.
    RoundRobin,
    /// Proportional to `weight`, the draw derived from the message id.
    Weighted,
    /// Most remaining quota relative to its limit first.
    LeastLoaded,
    /// Gateways whose `domain` or patterns name the sender's domain first.
    DomainBased,
}

impl Strategy {
    /// Every strategy, in a fixed order.
    pub const ALL: [Strategy; 6] = [
        Self::Priority,
        Self::Failover,
        Self::RoundRobin,
        Self::Weighted,
        Self::LeastLoaded,
        Self::DomainBased,
    ];

    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Priority => "priority",
            Self::Failover => "failover",
            Self::RoundRobin => "round_robin",
            Self::Weighted => "weighted",
            Self::LeastLoaded => "least_loaded",
            Self::DomainBased => "domain_based",
        }
    }

    /// Parses the file name of a strategy.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do after an ambiguous outcome (timeout after the request was sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AmbiguousPolicy {
    /// Do not fail over (the provider may have accepted it); defer and flag. The default.
    #[default]
    Defer,
    /// Fail over to the next candidate at once, accepting the duplicate risk.
    Failover,
}

/// A strategy override for the senders matching `senders` (extension `routing.rules[]`).
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyRule {
    /// Senders this rule applies to.
    pub senders: Vec<SenderPattern>,
    /// Strategy used for them.
    pub strategy: Strategy,
}

/// Global routing settings (`routing` in the file).
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Default strategy.
    pub strategy: Strategy,
    /// Per-sender strategy overrides, first match wins.
    pub rules: Vec<StrategyRule>,
    /// Whether a failed send moves on to the next candidate.
    pub failover_enabled: bool,
    /// Seed field, kept for compatibility: `weighted`/`round_robin`/`least_loaded` already
    /// spread load; when false and the strategy is one of those, a warning is issued.
    pub load_balancing_enabled: bool,
    /// Drop gateways whose last health check says unhealthy.
    pub health_check_required: bool,
    /// Drop gateways whose breaker is open.
    pub circuit_breaker_required: bool,
    /// Most gateways tried for one message within one invocation (default 3).
    pub max_failover_attempts: NonZeroU32,
    /// Ambiguous-outcome policy.
    pub ambiguous_policy: AmbiguousPolicy,
    /// Whether a message pinned with `gateway` may fail over when the pinned gateway is
    /// unusable (default false).
    pub pinned_failover: bool,
}

/// Circuit-breaker settings (ARCHITECTURE §3.4).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    /// A disabled breaker never opens.
    pub enabled: bool,
    /// Failures within `window` that open the breaker.
    pub failure_threshold: NonZeroU32,
    /// Consecutive half-open successes that close it.
    pub success_threshold: NonZeroU32,
    /// How long it stays open before half-open.
    pub timeout: Duration,
    /// Trial sends admitted fleet-wide while half-open.
    pub max_requests: NonZeroU32,
    /// Rolling window failures are counted in (extension `window`, default 60 s).
    pub window: Duration,
    /// Optional failure ratio (0 < r ≤ 1) that must also be reached (extension `failure_ratio`).
    pub failure_ratio: Option<f64>,
}

/// Health-check settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckSettings {
    /// Whether the health checker probes this gateway.
    pub enabled: bool,
    /// Time between probes.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Consecutive failed probes before unhealthy.
    pub failure_threshold: NonZeroU32,
    /// Consecutive good probes before healthy again.
    pub success_threshold: NonZeroU32,
}

/// Outbound HTTP settings (extension `global_defaults.http`).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// TCP+TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
}

/// A reference to a secret, or (local runs only) the secret itself.
///
/// `Debug` and `Display` never show an inline value.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `env:NAME` — read from the environment.
    Env(String),
    /// `secretsmanager:ARN[#json-key]`.
    SecretsManager {
        /// Secret ARN or name.
        arn: String,
        /// Key inside a JSON secret.
        json_key: Option<String>,
    },
    /// `ssm:/path` — an SSM SecureString parameter.
    Ssm(String),
    /// A literal (accepted with a warning; local runs only).
    Inline(String),
}

impl SecretRef {
    /// Parses a secret field value. Anything without a known scheme is an inline literal.
    pub fn parse(s: &str) -> Self {
        if let Some(name) = s.strip_prefix("env:") {
            Self::Env(name.to_owned())
        } else if let Some(rest) = s.strip_prefix("secretsmanager:") {
            match rest.split_once('#') {
                Some((arn, key)) => Self::SecretsManager {
                    arn: arn.to_owned(),
                    json_key: Some(key.to_owned()),
                },
                None => Self::SecretsManager {
                    arn: rest.to_owned(),
                    json_key: None,
                },
            }
        } else if let Some(path) = s.strip_prefix("ssm:") {
            Self::Ssm(path.to_owned())
        } else {
            Self::Inline(s.to_owned())
        }
    }

    /// True for an inline literal.
    pub fn is_inline(&self) -> bool {
        matches!(self, Self::Inline(_))
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(n) => write!(f, "env:{n}"),
            Self::SecretsManager {
                arn,
                json_key: Some(k),
            } => write!(f, "secretsmanager:{arn}#{k}"),
            Self::SecretsManager {
                arn,
                json_key: None,
            } => write!(f, "secretsmanager:{arn}"),
            Self::Ssm(p) => write!(f, "ssm:{p}"),
            Self::Inline(_) => f.write_str("<inline secret redacted>"),
        }
    }
}

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretRef({self})")
    }
}

/// The provider block of a gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderSettings {
    /// `google_workspace` block.
    GoogleWorkspace(GoogleWorkspaceSettings),
    /// `mailgun` block.
    Mailgun(MailgunSettings),
    /// `sendgrid` block.
    Sendgrid(SendgridSettings),
    /// `amazon_ses` block.
    AmazonSes(SesSettings),
    /// `smtp` block.
    Smtp(SmtpSettings),
    /// `capture` block.
    Capture(CaptureSettings),
    /// `simulated` block.
    Simulated(SimulatedSettings),
}

/// Tracking switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tracking {
    /// Open tracking.
    pub opens: bool,
    /// Click tracking.
    pub clicks: bool,
    /// Unsubscribe link handling (Mailgun).
    pub unsubscribe: bool,
}

/// Mailgun region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MailgunRegion {
    /// `https://api.mailgun.net`.
    #[default]
    Us,
    /// `https://api.eu.mailgun.net`.
    Eu,
}

/// Mailgun tag settings (seed's `tags` block).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailgunTags {
    /// Tags added to every message.
    pub default: Vec<String>,
    /// Add the message's `campaign_id` as a tag.
    pub campaign_tag_enabled: bool,
    /// Add the message's `user_id` as a tag.
    pub user_tag_enabled: bool,
}

/// `mailgun` block.
#[derive(Debug, Clone, PartialEq)]
pub struct MailgunSettings {
    /// Private API key.
    pub api_key: SecretRef,
    /// Sending domain (`/v3/{domain}/messages`).
    pub domain: String,
    /// Base URL override (without `/v3`); `None` selects by region.
    pub base_url: Option<String>,
    /// Region.
    pub region: MailgunRegion,
    /// Tracking.
    pub tracking: Tracking,
    /// Tags.
    pub tags: MailgunTags,
    /// HTTP webhook signing key (for `/webhooks/mailgun`).
    pub webhook_signing_key: Option<SecretRef>,
}

/// `sendgrid` block.
#[derive(Debug, Clone, PartialEq)]
pub struct SendgridSettings {
    /// API key.
    pub api_key: SecretRef,
    /// Base URL override; default `https://api.sendgrid.com`.
    pub base_url: Option<String>,
    /// Tracking.
    pub tracking: Tracking,
    /// Categories added to every message.
    pub categories: Vec<String>,
    /// Event-webhook verification public key (base64 DER, P-256).
    pub webhook_public_key: Option<String>,
}

/// `amazon_ses` block.
#[derive(Debug, Clone, PartialEq)]
pub struct SesSettings {
    /// AWS region of the SES account.
    pub region: String,
    /// Configuration set for event publishing.
    pub configuration_set: Option<String>,
    /// Endpoint override (tests, emulators).
    pub endpoint_url: Option<String>,
    /// SNS topics whose notifications `/webhooks/ses` accepts.
    pub sns_topic_arns: Vec<String>,
    /// Whether `/webhooks/ses` accepts these topics' SNS `SignatureVersion` 1 (RSA with SHA-1)
    /// as well as 2 (SHA-256); default `true`, since SNS topics sign with version 1 unless set to
    /// 2.
    pub sns_accept_sha1_signatures: bool,
}

/// `google_workspace` block.
#[derive(Debug, Clone, PartialEq)]
pub struct GoogleWorkspaceSettings {
    /// Service-account JSON key.
    pub service_account: SecretRef,
    /// Sender used when impersonating the real sender is refused.
    pub default_sender: Option<String>,
    /// Refuse senders outside the workspace's domains instead of substituting.
    pub require_valid_sender: bool,
    /// Token endpoint override.
    pub token_url: Option<String>,
    /// Gmail API base URL override.
    pub api_base_url: Option<String>,
    /// Let [`Provider::look_up`](crate::providers::Provider::look_up) search the sender's
    /// mailbox for a message whose send went unanswered (`lookup_sent`, default `false`). Needs
    /// the `gmail.readonly` scope in the domain-wide delegation; sends keep asking for
    /// `gmail.send` only, so a delegation without it breaks the look-ups, never the sends.
    pub lookup_sent: bool,
}

/// SMTP transport security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmtpTls {
    /// STARTTLS required (port 587).
    #[default]
    Starttls,
    /// Implicit TLS (port 465).
    Tls,
    /// Plain text (local sinks only).
    None,
}

/// `smtp` block.
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpSettings {
    /// Relay host.
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// Transport security.
    pub tls: SmtpTls,
    /// Username for AUTH, if any.
    pub username: Option<String>,
    /// Password for AUTH, if any.
    pub password: Option<SecretRef>,
}

/// `capture` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSettings {
    /// Directory the `.eml` files are written to.
    pub directory: String,
}

/// `simulated` block: outcome rates are fractions in [0, 1] summing to at most 1; the rest
/// succeeds.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedSettings {
    /// Latency before answering.
    pub latency: Duration,
    /// Seed of the deterministic outcome draw.
    pub seed: u64,
    /// Fraction answered 429.
    pub throttle_rate: f64,
    /// Fraction answered 5xx.
    pub unavailable_rate: f64,
    /// Fraction that time out after sending (ambiguous).
    pub timeout_rate: f64,
    /// Fraction permanently rejected.
    pub permanent_rate: f64,
}
