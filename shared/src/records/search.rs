//! Message search: "did the patient get the results email?" answered from the record of
//! delivery without SQL (`GET /api/messages?…`, `gateway messages search`).
//!
//! # Contract
//! - Filters (all optional, combined with AND): `recipient` (one exact address, any of To, Cc
//!   or Bcc), `sender`, `since` / `until` (the message's `created_at`, the earliest event time
//!   recorded for it: `since` inclusive, `until` exclusive), `status` (a [`MessageStatus`]) and
//!   `campaign_id` (exact, case-sensitive: it is an identifier, not an address).
//! - Addresses are matched case-insensitively, normalised as the recorder keys recipients:
//!   trimmed and lower-cased (`str::to_lowercase`). A display name (`Ada <ada@x>`) is not an
//!   address and is refused.
//! - Times are RFC 3339 (`2026-12-04T09:00:00Z`, `…+01:00`) or epoch milliseconds (digits only):
//!   operators type the first, scripts and the rest of this API use the second.
//! - **Bounded**: a search names a recipient, a sender or a campaign, or a window with both
//!   `since` and `until` at most [`MAX_WINDOW_MS`] long. An unfiltered scan of the record is
//!   refused ([`SearchError::Unbounded`]), and every bounded filter has an index
//!   (`migrations/0006_message_search.sql`).
//! - Newest first: ordered by (`created_at`, `message_id`) descending, both compared bytewise,
//!   so the in-memory and MySQL adapters give the same order. At most `limit` (default
//!   [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) hits per page.
//! - Keyset pagination: [`SearchPage::next_cursor`] is an opaque token (base64url of the last
//!   hit's `created_at` and id); passing it back as `cursor` continues strictly after that hit.
//!   Unlike an offset, a page never repeats or skips a match because messages were recorded
//!   meanwhile (new ones are newer than the cursor).
//! - A hit carries the message's envelope (id, time, sender, status, gateway, subject) and its
//!   recipients with their status, and the link to its full record (`/api/messages/{id}`, with
//!   attempts and events). Never a body: the record holds none.

use async_trait::async_trait;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{MemoryRecords, MessageRecord, MessageStatus, RecordError};
use crate::clock::{EpochMillis, parse_rfc3339};
use crate::events::{RecipientKind, RecipientStatus};

/// Hits per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 50;

/// Most hits per page.
pub const MAX_LIMIT: usize = 100;

/// Longest `since`..`until` window accepted without an address or campaign (31 days).
pub const MAX_WINDOW_MS: EpochMillis = 31 * 24 * 3_600_000;

/// The query parameters, in the order the API documents them.
pub const PARAMETERS: &[&str] = &[
    "recipient",
    "sender",
    "since",
    "until",
    "status",
    "campaign_id",
    "limit",
    "cursor",
];

/// Where a page continues: strictly after the hit with this `created_at` and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` of the last hit returned (epoch ms).
    pub created_at: EpochMillis,
    /// Its message id.
    pub message_id: String,
}

impl Cursor {
    /// The opaque token: base64url (no padding) of `"{created_at}.{message_id}"`.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}.{}", self.created_at, self.message_id))
    }

    /// Reads a token made by [`Cursor::encode`]; `None` when it is not one.
    pub fn decode(token: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (at, id) = text.split_once('.')?;
        if id.is_empty() || !at.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return None;
        }
        Some(Self {
            created_at: at.parse().ok()?,
            message_id: id.to_owned(),
        })
    }
}

/// A validated, bounded search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// A recipient address, normalised (trimmed, lower-cased).
    pub recipient: Option<String>,
    /// The sender address, normalised (trimmed, lower-cased).
    pub sender: Option<String>,
    /// Earliest `created_at` (inclusive, epoch ms).
    pub since: Option<EpochMillis>,
    /// Latest `created_at` (exclusive, epoch ms).
    pub until: Option<EpochMillis>,
    /// The message status.
    pub status: Option<MessageStatus>,
    /// The campaign id, exact.
    pub campaign_id: Option<String>,
    /// Hits per page, 1..=[`MAX_LIMIT`].
    pub limit: usize,
    /// Continue after this hit.
    pub after: Option<Cursor>,
}

/// Why a search was refused. Each names the parameter(s) at fault; the message is safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// Nothing bounds the search.
    #[error(
        "the search is unbounded: give recipient, sender or campaign_id, or both since and until \
         (at most 31 days apart)"
    )]
    Unbounded,
    /// A parameter's value is not valid.
    #[error("{parameter}: {reason}")]
    Invalid {
        /// The parameter at fault.
        parameter: String,
        /// What is wrong with it (never its value when that may be an address).
        reason: String,
    },
}

impl SearchError {
    fn invalid(parameter: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            parameter: parameter.to_owned(),
            reason: reason.into(),
        }
    }

    /// The parameter at fault, `None` for [`SearchError::Unbounded`].
    pub fn parameter(&self) -> Option<&str> {
        match self {
            Self::Unbounded => None,
            Self::Invalid { parameter, .. } => Some(parameter),
        }
    }
}

fn address(parameter: &str, value: &str) -> Result<String, SearchError> {
    let a = value.trim();
    let valid = a.len() <= 320
        && !a.chars().any(|c| c.is_whitespace() || "<>,;\"".contains(c))
        && a.split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
    if valid {
        Ok(a.to_lowercase())
    } else {
        Err(SearchError::invalid(
            parameter,
            "not an email address (give the bare address, such as patient@example.org)",
        ))
    }
}

fn time(parameter: &str, value: &str) -> Result<EpochMillis, SearchError> {
    let v = value.trim();
    let parsed = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse().ok()
    } else {
        parse_rfc3339(v)
    };
    parsed.ok_or_else(|| {
        SearchError::invalid(
            parameter,
            "not an RFC 3339 time (2026-12-04T09:00:00Z) or epoch milliseconds",
        )
    })
}

impl SearchQuery {
    /// Validates decoded `name=value` pairs (a query string's, or the CLI's options). An empty
    /// value counts as not given (a form leaves unused fields empty); an unknown or repeated
    /// parameter is an error, so a typo never widens a search silently.
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, SearchError> {
        let mut seen: Vec<&str> = Vec::new();
        let mut q = Self {
            recipient: None,
            sender: None,
            since: None,
            until: None,
            status: None,
            campaign_id: None,
            limit: DEFAULT_LIMIT,
            after: None,
        };
        for (name, value) in params {
            let Some(&known) = PARAMETERS.iter().find(|p| **p == name) else {
                return Err(SearchError::invalid(
                    name,
                    format!("unknown parameter; known: {}", PARAMETERS.join(", ")),
                ));
            };
            if seen.contains(&known) {
                return Err(SearchError::invalid(known, "given more than once"));
            }
            seen.push(known);
            if value.trim().is_empty() {
                continue;
            }
            match known {
                "recipient" => q.recipient = Some(address(known, value)?),
                "sender" => q.sender = Some(address(known, value)?),
                "since" => q.since = Some(time(known, value)?),
                "until" => q.until = Some(time(known, value)?),
                "status" => {
                    q.status = Some(
                        serde_json::from_value(serde_json::Value::String(value.trim().to_owned()))
                            .map_err(|_| {
                                SearchError::invalid(
                                    known,
                                    "one of queued, deferred, failed, rejected, sent",
                                )
                            })?,
                    );
                }
                "campaign_id" => {
                    if value.len() > 255 {
                        return Err(SearchError::invalid(known, "longer than 255 characters"));
                    }
                    q.campaign_id = Some(value.to_owned());
                }
                "limit" => {
                    q.limit = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            SearchError::invalid(known, format!("a number from 1 to {MAX_LIMIT}"))
                        })?;
                }
                _ => {
                    q.after = Some(Cursor::decode(value.trim()).ok_or_else(|| {
                        SearchError::invalid(known, "not a cursor this API returned")
                    })?);
                }
            }
        }
        if let (Some(since), Some(until)) = (q.since, q.until)
            && since > until
        {
            return Err(SearchError::invalid("until", "earlier than since"));
        }
        let named = q.recipient.is_some() || q.sender.is_some() || q.campaign_id.is_some();
        let window = match (q.since, q.until) {
            (Some(since), Some(until)) => until - since <= MAX_WINDOW_MS,
            _ => false,
        };
        if !named && !window {
            return Err(SearchError::Unbounded);
        }
        Ok(q)
    }

    /// Whether a record matches the filters (not the cursor).
    pub fn matches(&self, r: &MessageRecord) -> bool {
        self.recipient.as_ref().is_none_or(|a| {
            r.recipients
                .iter()
                .any(|x| x.address.trim().to_lowercase() == *a)
        }) && self
            .sender
            .as_ref()
            .is_none_or(|s| r.sender.trim().to_lowercase() == *s)
            && self.since.is_none_or(|t| r.created_at >= t)
            && self.until.is_none_or(|t| r.created_at < t)
            && self.status.is_none_or(|s| r.status == s)
            && self
                .campaign_id
                .as_ref()
                .is_none_or(|c| r.campaign_id.as_ref() == Some(c))
    }

    /// Whether a hit at (`created_at`, `id`) comes after the cursor in newest-first order.
    pub fn after_cursor(&self, created_at: EpochMillis, id: &str) -> bool {
        self.after
            .as_ref()
            .is_none_or(|c| (created_at, id) < (c.created_at, c.message_id.as_str()))
    }
}

/// One recipient of a hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HitRecipient {
    /// The address as the message spelled it.
    pub address: String,
    /// To, Cc or Bcc.
    pub kind: RecipientKind,
    /// Its merged delivery status.
    pub status: RecipientStatus,
}

/// One message found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    /// Message id.
    pub message_id: String,
    /// Earliest event time recorded for it (epoch ms): the search's time axis.
    pub created_at: EpochMillis,
    /// Sender address (empty while only a provider event is known).
    pub sender: String,
    /// Merged message status.
    pub status: MessageStatus,
    /// Gateway of the outcome that set the status.
    pub gateway_id: Option<String>,
    /// Its type.
    pub gateway_type: Option<String>,
    /// Subject, `None` while unknown.
    pub subject: Option<String>,
    /// Campaign id.
    pub campaign_id: Option<String>,
    /// Recipients with their status, ordered by kind then address.
    pub recipients: Vec<HitRecipient>,
    /// The full record: `/api/messages/{id}` (attempts and events included).
    pub link: String,
}

impl SearchHit {
    /// The hit of a record (its attempts and events stay behind the link).
    pub fn of(r: &MessageRecord) -> Self {
        Self {
            message_id: r.message_id.clone(),
            created_at: r.created_at,
            sender: r.sender.clone(),
            status: r.status,
            gateway_id: r.gateway_id.clone(),
            gateway_type: r.gateway_type.clone(),
            subject: Some(r.subject.clone()).filter(|s| !s.is_empty()),
            campaign_id: r.campaign_id.clone(),
            recipients: r
                .recipients
                .iter()
                .map(|x| HitRecipient {
                    address: x.address.clone(),
                    kind: x.kind,
                    status: x.status,
                })
                .collect(),
            link: message_link(&r.message_id),
        }
    }
}

/// One page of hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchPage {
    /// The hits, newest first.
    pub messages: Vec<SearchHit>,
    /// Pass as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

impl SearchPage {
    /// A page from up to `limit + 1` hits in order: the extra one only says there is more.
    pub fn of(mut hits: Vec<SearchHit>, limit: usize) -> Self {
        let more = hits.len() > limit;
        hits.truncate(limit);
        let next_cursor = more.then(|| hits.last()).flatten().map(|h| {
            Cursor {
                created_at: h.created_at,
                message_id: h.message_id.clone(),
            }
            .encode()
        });
        Self {
            messages: hits,
            next_cursor,
        }
    }
}

/// `/api/messages/{id}` with the id percent-encoded where a path segment needs it.
pub fn message_link(id: &str) -> String {
    let mut out = String::from("/api/messages/");
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Searches the record of delivery.
#[async_trait]
pub trait MessageSearch: Send + Sync + std::fmt::Debug {
    /// One page of the messages matching `query`, newest first (see the module docs).
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, RecordError>;
}

#[async_trait]
impl MessageSearch for MemoryRecords {
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, RecordError> {
        let tables = self.lock();
        let mut found: Vec<&MessageRecord> = tables
            .messages
            .values()
            .filter(|r| query.matches(r) && query.after_cursor(r.created_at, &r.message_id))
            .collect();
        found.sort_by(|x, y| (y.created_at, &y.message_id).cmp(&(x.created_at, &x.message_id)));
        let hits = found
            .into_iter()
            .take(query.limit + 1)
            .map(SearchHit::of)
            .collect();
        Ok(SearchPage::of(hits, query.limit))
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use std::collections::HashMap;

    use async_trait::async_trait;
    use sqlx::{MySql, QueryBuilder, Row};

    use super::{HitRecipient, MessageSearch, SearchHit, SearchPage, SearchQuery, message_link};
    use crate::records::RecordError;
    use crate::records::mysql::MysqlRecords;

    fn unavailable(e: sqlx::Error) -> RecordError {
        RecordError::Unavailable(Box::new(e))
    }

    fn parse<T: serde::de::DeserializeOwned>(s: String, what: &str) -> Result<T, RecordError> {
        serde_json::from_value(serde_json::Value::String(s)).map_err(|_| {
            RecordError::Unrecordable {
                reason: format!("unreadable {what} in the record"),
            }
        })
    }

    #[async_trait]
    impl MessageSearch for MysqlRecords {
        /// Two statements: the page of `messages` rows (through the indexes of migration 0006:
        /// the recipient's `message_recipients.address_lc`, `sender_lc`, campaign, status or
        /// time, each with `created_at_ms`), then the recipients of those messages.
        async fn search(&self, query: &SearchQuery) -> Result<SearchPage, RecordError> {
            let mut conn = self.pool().acquire().await.map_err(unavailable)?;
            let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                "SELECT m.message_id, m.created_at_ms, m.sender, m.status, m.gateway_id, \
                 m.gateway_type, m.subject, m.campaign_id FROM ",
            );
            match &query.recipient {
                // Driven by the address (STRAIGHT_JOIN fixes the order): a patient has few
                // messages, while a LIMIT tempts the planner to walk every message in time
                // order instead. (message_id, address_lc) is the recipients' key: no duplicates.
                Some(a) => {
                    q.push(
                        "message_recipients r STRAIGHT_JOIN messages m \
                         ON m.message_id = r.message_id WHERE r.address_lc = ",
                    )
                    .push_bind(a.clone());
                }
                None => {
                    q.push("messages m WHERE TRUE");
                }
            }
            if let Some(s) = &query.sender {
                q.push(" AND m.sender_lc = ").push_bind(s.clone());
            }
            if let Some(t) = query.since {
                q.push(" AND m.created_at_ms >= ").push_bind(t);
            }
            if let Some(t) = query.until {
                q.push(" AND m.created_at_ms < ").push_bind(t);
            }
            if let Some(s) = query.status {
                q.push(" AND m.status = ").push_bind(s.as_str());
            }
            if let Some(c) = &query.campaign_id {
                q.push(" AND m.campaign_id = ").push_bind(c.clone());
            }
            if let Some(c) = &query.after {
                q.push(" AND (m.created_at_ms < ")
                    .push_bind(c.created_at)
                    .push(" OR (m.created_at_ms = ")
                    .push_bind(c.created_at)
                    .push(" AND m.message_id < ")
                    .push_bind(c.message_id.clone())
                    .push("))");
            }
            q.push(" ORDER BY m.created_at_ms DESC, m.message_id DESC LIMIT ")
                .push_bind(u64::try_from(query.limit + 1).unwrap_or(u64::MAX));
            let rows = q.build().fetch_all(&mut *conn).await.map_err(unavailable)?;
            let mut hits = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: String = row.try_get("message_id").map_err(unavailable)?;
                let subject: String = row.try_get("subject").map_err(unavailable)?;
                hits.push(SearchHit {
                    link: message_link(&id),
                    message_id: id,
                    created_at: row.try_get("created_at_ms").map_err(unavailable)?,
                    sender: row.try_get("sender").map_err(unavailable)?,
                    status: parse(row.try_get("status").map_err(unavailable)?, "status")?,
                    gateway_id: row.try_get("gateway_id").map_err(unavailable)?,
                    gateway_type: row.try_get("gateway_type").map_err(unavailable)?,
                    subject: Some(subject).filter(|s| !s.is_empty()),
                    campaign_id: row.try_get("campaign_id").map_err(unavailable)?,
                    recipients: Vec::new(),
                });
            }
            if !hits.is_empty() {
                let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                    "SELECT message_id, address, kind, delivery_status FROM message_recipients \
                     WHERE message_id IN (",
                );
                let mut list = q.separated(", ");
                for h in &hits {
                    list.push_bind(h.message_id.clone());
                }
                q.push(")");
                let mut by_id: HashMap<String, Vec<HitRecipient>> = HashMap::new();
                for row in q.build().fetch_all(&mut *conn).await.map_err(unavailable)? {
                    let id: String = row.try_get("message_id").map_err(unavailable)?;
                    by_id.entry(id).or_default().push(HitRecipient {
                        address: row.try_get("address").map_err(unavailable)?,
                        kind: parse(row.try_get("kind").map_err(unavailable)?, "kind")?,
                        status: parse(
                            row.try_get("delivery_status").map_err(unavailable)?,
                            "delivery_status",
                        )?,
                    });
                }
                for h in &mut hits {
                    let mut recipients = by_id.remove(&h.message_id).unwrap_or_default();
                    // The record's order (kind, then lower-cased address).
                    recipients.sort_by_cached_key(|r| (r.kind, r.address.to_lowercase()));
                    h.recipients = recipients;
                }
            }
            Ok(SearchPage::of(hits, query.limit))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(params: &[(&str, &str)]) -> Result<SearchQuery, SearchError> {
        SearchQuery::from_params(params.iter().copied())
    }

    #[test]
    fn a_search_must_be_bounded() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], false),
            (&[("status", "failed")], false),
            (&[("since", "0")], false),
            (&[("since", "0"), ("until", "86400000")], true),
            (&[("since", "0"), ("until", "3000000000")], false),
            (&[("recipient", "a@example.org")], true),
            (&[("sender", "a@example.org")], true),
            (&[("campaign_id", "flu-2026")], true),
            (&[("recipient", ""), ("status", "sent")], false),
        ];
        for (i, (params, ok)) in cases.iter().enumerate() {
            let got = query(params);
            assert_eq!(got.is_ok(), *ok, "case {i}: {got:?}");
            if !ok {
                assert_eq!(got, Err(SearchError::Unbounded), "case {i}");
            }
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("recipient", "Ada <a@x.org>")], "recipient"),
            (&[("sender", "nobody")], "sender"),
            (&[("recipient", "a@x.org"), ("since", "yesterday")], "since"),
            (
                &[("recipient", "a@x.org"), ("until", "2026-13-01T00:00:00Z")],
                "until",
            ),
            (&[("recipient", "a@x.org"), ("status", "lost")], "status"),
            (&[("recipient", "a@x.org"), ("limit", "0")], "limit"),
            (&[("recipient", "a@x.org"), ("limit", "101")], "limit"),
            (&[("recipient", "a@x.org"), ("cursor", "!!")], "cursor"),
            (
                &[("recipient", "a@x.org"), ("recipent", "b@x.org")],
                "recipent",
            ),
            (
                &[("recipient", "a@x.org"), ("recipient", "b@x.org")],
                "recipient",
            ),
            (
                &[("recipient", "a@x.org"), ("since", "10"), ("until", "5")],
                "until",
            ),
        ];
        for (params, parameter) in cases {
            let error = query(params).unwrap_err();
            assert_eq!(error.parameter(), Some(*parameter), "{params:?}");
            assert!(error.to_string().starts_with(parameter), "{error}");
        }
    }

    #[test]
    fn addresses_are_normalised_and_times_take_both_forms() {
        let q = query(&[
            ("recipient", " Patient@Example.ORG "),
            ("sender", "Ada@Clinic.example"),
            ("since", "2026-12-04T10:00:00+01:00"),
            ("until", "1796378400000"),
            ("status", "sent"),
            ("limit", "7"),
        ])
        .unwrap();
        assert_eq!(q.recipient.as_deref(), Some("patient@example.org"));
        assert_eq!(q.sender.as_deref(), Some("ada@clinic.example"));
        assert_eq!(q.since, Some(1_796_374_800_000));
        assert_eq!(q.until, Some(1_796_378_400_000));
        assert_eq!((q.status, q.limit), (Some(MessageStatus::Sent), 7));
    }

    #[test]
    fn cursors_round_trip_and_links_are_encoded() {
        let c = Cursor {
            created_at: 1_796_374_800_000,
            message_id: "inv.2026:7@x".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("bm9wZQ"), None);
        assert_eq!(message_link("a b/c"), "/api/messages/a%20b%2Fc");
        assert_eq!(message_link("inv-1:x@y"), "/api/messages/inv-1:x@y");
    }
}
