//! [`MysqlRecords`]: the record of delivery in MySQL 8 / MariaDB 10.11 (tables of
//! `migrations/`), with exactly the semantics of [`MemoryRecords`](super::MemoryRecords).
//!
//! # How a batch is applied
//! One transaction per [`RecordWriter::apply`] call:
//! 1. the rows of every message the batch touches are read, the `messages` rows with
//!    `SELECT … FOR UPDATE` (four statements, whatever the batch size);
//! 2. the events are merged into those records in memory by the same code the in-memory adapter
//!    runs, so both adapters cannot disagree on precedence, ordering or counting;
//! 3. the merged records are written back with multi-row upserts, new provider calls and
//!    provider events with multi-row inserts, and the hourly statistics are incremented for
//!    exactly the rows that were new.
//!
//! Concurrency: two recorders merging into the same message serialise on its row lock. When the
//! message is new, both may read "nothing" under REPEATABLE READ; their inserts then conflict on
//! the gap lock and InnoDB aborts one with a deadlock, reported as retryable
//! ([`RecordError::Unavailable`]): its SQS batch is retried and merges into the committed row.
//! Nothing is ever merged from a stale read.
//!
//! `INSERT … ON DUPLICATE KEY UPDATE col = VALUES(col)` is used because MariaDB lacks MySQL
//! 8's row alias; MySQL 8 accepts it with a deprecation note.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{MySql, QueryBuilder, Row, SqlSafeStr as _, Transaction};

use super::activity::{ActivityReader, GatewayActivity, HOUR_MS, HourActivity};
use super::{
    Applied, MessageRecord, MessageStatus, RecipientRecord, RecordError, RecordReader, RecordWriter,
};
use crate::clock::{EpochMillis, utc_date_string, utc_day, utc_hour};
use crate::config_audit::{self, ConfigEvent};
use crate::events::{
    AttemptRecord, BreakerEvent, DeliveryEvent, DeliveryKind, GatewayEvent, HealthEvent,
    OutcomeClass,
};

/// The files of `migrations/`, embedded in the binary: version, file name, SQL. Listed by hand
/// rather than with `sqlx::migrate!`, whose proc-macro builds a second copy of sqlx, tokio and
/// rustls for the compiler (about 40 s of every clean build); the test
/// `embedded_migrations_are_the_directory` fails when a file is added without its line here.
const MIGRATION_FILES: &[(i64, &str, &str)] = &[
    (
        1,
        "0001_record_of_delivery.sql",
        include_str!("../../../migrations/0001_record_of_delivery.sql"),
    ),
    (
        2,
        "0002_gateway_tracking.sql",
        include_str!("../../../migrations/0002_gateway_tracking.sql"),
    ),
    (
        3,
        "0003_config_state.sql",
        include_str!("../../../migrations/0003_config_state.sql"),
    ),
    (
        4,
        "0004_activity_indexes.sql",
        include_str!("../../../migrations/0004_activity_indexes.sql"),
    ),
    (
        5,
        "0005_event_time_index.sql",
        include_str!("../../../migrations/0005_event_time_index.sql"),
    ),
    (
        6,
        "0006_message_search.sql",
        include_str!("../../../migrations/0006_message_search.sql"),
    ),
];

/// The embedded migrations (applied by [`MysqlRecords::migrate`] and `gateway migrate`), built
/// exactly as `sqlx migrate` reads a directory: the description is the file name after the
/// version with `_` as spaces, the checksum is SHA-384 of the SQL (so databases migrated by
/// either way agree), and a file starting with `-- no-transaction` runs outside a transaction.
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    Migrator::with_migrations(
        MIGRATION_FILES
            .iter()
            .map(|&(version, file, sql)| {
                let description = file
                    .split_once('_')
                    .map_or(file, |(_, rest)| rest)
                    .trim_end_matches(".sql")
                    .replace('_', " ");
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
});

/// Rows per multi-row statement (well under MySQL's 65 535 placeholders).
const ROWS_PER_STATEMENT: usize = 500;

/// Connection pool settings. The defaults suit a Lambda function: few connections, reused
/// across invocations, given up quickly when the database is away (the batch is retried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most connections at once.
    pub max_connections: u32,
    /// How long to wait for a connection before the batch fails (retryably).
    pub acquire_timeout: Duration,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// The record of delivery in MySQL. `Debug` shows no connection details.
#[derive(Clone)]
pub struct MysqlRecords {
    pool: MySqlPool,
}

impl std::fmt::Debug for MysqlRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlRecords").finish_non_exhaustive()
    }
}

fn unavailable(e: sqlx::Error) -> RecordError {
    // Data the columns cannot hold will never fit: those go to the dead-letter queue.
    if let sqlx::Error::Database(db) = &e
        && let Some(code) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        && matches!(code.number(), 1264 | 1366 | 1406)
    {
        return RecordError::Unrecordable {
            reason: format!(
                "value does not fit its column (MySQL error {})",
                code.number()
            ),
        };
    }
    // sqlx errors never carry the password; the URL is not part of them.
    RecordError::Unavailable(Box::new(e))
}

fn corrupt(what: &str) -> RecordError {
    RecordError::Unavailable(format!("stored record does not decode: {what}").into())
}

fn enum_str<T: Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn parse_enum<T: DeserializeOwned>(s: &str, what: &str) -> Result<T, RecordError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| corrupt(what))
}

fn json_text<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

impl MysqlRecords {
    /// Connects to `url` (`mysql://user:password@host:port/database`, TLS with
    /// `?ssl-mode=REQUIRED` or `VERIFY_IDENTITY`). Connections are opened lazily, so this
    /// succeeds without a reachable database; the first use reports it.
    pub fn connect(url: &str, settings: &PoolSettings) -> Result<Self, RecordError> {
        let options: MySqlConnectOptions = url.parse().map_err(|_| RecordError::Unrecordable {
            reason: "the database URL is not a valid mysql:// URL".to_owned(),
        })?;
        let pool = MySqlPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .idle_timeout(settings.idle_timeout)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // Whatever the server's default: a value too long for its column is an
                    // error (the event goes to the dead-letter queue), never a silent
                    // truncation; and a lock wait ends within seconds, inside the function's
                    // time, as a retryable error.
                    sqlx::query(
                        "SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES'), \
                         SESSION innodb_lock_wait_timeout = 10",
                    )
                    .execute(&mut *conn)
                    .await
                    .map(|_| ())
                })
            })
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    /// The pool (for the views and tests).
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Applies the migrations not applied yet; returns the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<i64>, RecordError> {
        let before: BTreeSet<i64> = self.applied_versions().await?;
        MIGRATOR.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => unavailable(e),
            other => RecordError::Unavailable(Box::new(other)),
        })?;
        let after = self.applied_versions().await?;
        Ok(after.difference(&before).copied().collect())
    }

    async fn applied_versions(&self) -> Result<BTreeSet<i64>, RecordError> {
        let exists: Option<i64> = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        if exists.unwrap_or(0) == 0 {
            return Ok(BTreeSet::new());
        }
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(versions.into_iter().collect())
    }

    async fn apply_in(
        &self,
        tx: &mut Transaction<'_, MySql>,
        events: &[GatewayEvent],
    ) -> Result<BTreeMap<String, MessageRecord>, RecordError> {
        let mut ids: BTreeSet<String> = BTreeSet::new();
        let mut delivery_keys: BTreeSet<(String, String)> = BTreeSet::new();
        for event in events {
            match event {
                GatewayEvent::Outcome(e) => {
                    ids.insert(e.message_id.clone());
                }
                GatewayEvent::Delivery(e) => {
                    if let Some(id) = &e.message_id {
                        ids.insert(id.clone());
                    }
                    delivery_keys.insert((e.provider.clone(), e.provider_event_id.clone()));
                }
                GatewayEvent::Health(_) | GatewayEvent::Breaker(_) | GatewayEvent::Config(_) => {}
            }
        }
        let ids: Vec<String> = ids.into_iter().collect();
        let mut records = load(tx, &ids, true).await?;
        let before: HashMap<String, Snapshot> = records
            .iter()
            .map(|(id, r)| (id.clone(), Snapshot::of(r)))
            .collect();
        let mut known = known_deliveries(tx, &delivery_keys).await?;

        let mut unattached: Vec<DeliveryEvent> = Vec::new();
        let mut health: BTreeMap<String, &HealthEvent> = BTreeMap::new();
        let mut breaker: Vec<&BreakerEvent> = Vec::new();
        for event in events {
            match event {
                GatewayEvent::Outcome(e) => records
                    .entry(e.message_id.clone())
                    .or_insert_with(|| MessageRecord::new(&e.message_id, e.at))
                    .apply_outcome(e),
                GatewayEvent::Delivery(e) => {
                    if !known.insert((e.provider.clone(), e.provider_event_id.clone())) {
                        continue;
                    }
                    match &e.message_id {
                        Some(id) => records
                            .entry(id.clone())
                            .or_insert_with(|| MessageRecord::new(id, e.at))
                            .apply_delivery(e),
                        None => unattached.push(e.clone()),
                    }
                }
                GatewayEvent::Health(e) => {
                    let newer = health.get(&e.gateway_id).is_none_or(|h| e.at >= h.at);
                    if newer {
                        health.insert(e.gateway_id.clone(), e);
                    }
                }
                GatewayEvent::Breaker(e) => breaker.push(e),
                // In a transaction of its own: see `apply_config`.
                GatewayEvent::Config(_) => {}
            }
        }

        let mut stats = Stats::default();
        let mut new_attempts: Vec<(&str, &AttemptRecord)> = Vec::new();
        let mut new_events: Vec<&DeliveryEvent> = Vec::new();
        for (id, record) in &records {
            let old = before.get(id);
            for a in &record.attempts {
                if old.is_none_or(|o| !o.attempts.contains(&(a.gateway.clone(), a.at))) {
                    new_attempts.push((id, a));
                    stats.attempt(a);
                }
            }
            // Provider events count towards the gateway that sent the message. One that
            // arrives before the message's outcome has no gateway yet; it is counted when the
            // outcome names it, so the figures do not depend on arrival order.
            let counted_before = old.is_some_and(|o| o.had_gateway);
            for e in &record.events {
                let key = (e.provider.clone(), e.provider_event_id.clone());
                let is_new = old.is_none_or(|o| !o.events.contains(&key));
                if is_new {
                    new_events.push(e);
                }
                if let Some(gateway) = &record.gateway_id
                    && (is_new || !counted_before)
                {
                    stats.delivery(gateway, e);
                }
            }
            if let Some(gateway) = &record.gateway_id {
                for r in &record.recipients {
                    let lc = r.address.to_lowercase();
                    let (opened, clicked) = old
                        .filter(|o| o.had_gateway)
                        .and_then(|o| o.engaged.get(&lc).copied())
                        .unwrap_or((false, false));
                    // At the recipient's first open / click, whatever order they arrived in.
                    let first = |kind: DeliveryKind| {
                        record
                            .events
                            .iter()
                            .filter(|e| {
                                e.kind == kind && e.recipient.eq_ignore_ascii_case(&r.address)
                            })
                            .map(|e| e.at)
                            .min()
                    };
                    if r.opens > 0
                        && !opened
                        && let Some(at) = first(DeliveryKind::Opened)
                    {
                        stats.bump(gateway, at, |s| s.unique_opens += 1);
                    }
                    if r.clicks > 0
                        && !clicked
                        && let Some(at) = first(DeliveryKind::Clicked)
                    {
                        stats.bump(gateway, at, |s| s.unique_clicks += 1);
                    }
                }
            }
        }
        new_events.extend(unattached.iter());

        write_messages(tx, records.values()).await?;
        write_recipients(tx, records.values()).await?;
        write_attempts(tx, &new_attempts).await?;
        write_events(tx, &new_events).await?;
        write_health(tx, health.values().copied()).await?;
        for e in breaker {
            if write_breaker(tx, e).await? && e.to == crate::breaker::Phase::Open {
                stats.bump(&e.gateway_id, e.at, |s| s.breaker_trips += 1);
            }
        }
        write_stats(tx, &stats).await?;
        Ok(records)
    }
}

#[async_trait]
impl RecordWriter for MysqlRecords {
    async fn apply(&self, events: &[GatewayEvent]) -> Result<Applied, RecordError> {
        if events.is_empty() {
            return Ok(Applied::default());
        }
        let mut messages = BTreeMap::new();
        if events.iter().any(|e| !matches!(e, GatewayEvent::Config(_))) {
            let mut tx = self.pool.begin().await.map_err(unavailable)?;
            messages = self.apply_in(&mut tx, events).await?;
            tx.commit().await.map_err(unavailable)?;
        }
        let mut configs: Vec<&ConfigEvent> = events
            .iter()
            .filter_map(|e| match e {
                GatewayEvent::Config(c) => Some(c),
                _ => None,
            })
            .collect();
        configs.sort_by_key(|c| c.at);
        for config in configs {
            self.apply_config(config).await?;
        }
        Ok(Applied { messages })
    }
}

impl MysqlRecords {
    /// Audits a configuration ([`crate::config_audit`]) in a transaction of its own. Its first
    /// statement locks the single `gateway_config_state` row, so recorders auditing at the same
    /// time take turns, and the later one's reads (the consistent snapshot starts after the
    /// lock) see the earlier one's rows: each change is written once.
    async fn apply_config(&self, e: &ConfigEvent) -> Result<(), RecordError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let applied_at: Option<i64> = sqlx::query_scalar(
            "SELECT applied_at_ms FROM gateway_config_state WHERE id = 1 FOR UPDATE",
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        if applied_at.is_some_and(|t| e.at < t) {
            tracing::info!(
                at = e.at,
                newest = applied_at,
                "a configuration older than the audited one is ignored"
            );
            return tx.rollback().await.map_err(unavailable);
        }
        let latest: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT a.gateway_id, a.new_config FROM gateway_config_audit a \
             JOIN (SELECT gateway_id, MAX(id) AS id FROM gateway_config_audit GROUP BY gateway_id) l \
             ON a.id = l.id",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        let mut current = BTreeMap::new();
        for (id, config) in latest {
            if let Some(text) = config {
                let value = serde_json::from_str(&text)
                    .map_err(|_| corrupt("gateway_config_audit.new_config"))?;
                current.insert(id, value);
            }
        }
        let rows = config_audit::changes(&current, e);
        if !rows.is_empty() {
            let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                "INSERT INTO gateway_config_audit (gateway_id, action, old_config, new_config, \
                 changed_by, reason, at_ms) ",
            );
            q.push_values(&rows, |mut b, r| {
                b.push_bind(r.gateway_id.clone())
                    .push_bind(r.action.clone())
                    .push_bind(r.old_config.as_ref().map(json_text))
                    .push_bind(r.new_config.as_ref().map(json_text))
                    .push_bind(r.changed_by.clone())
                    .push_bind(r.reason.clone())
                    .push_bind(r.at);
            });
            q.build().execute(&mut *tx).await.map_err(unavailable)?;
        }
        let stored: Vec<(String, String, i64, String, bool)> = sqlx::query_as(
            "SELECT rule_type, gateway_id, priority, conditions, enabled \
             FROM gateway_routing_rules ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        let same_rules = stored.len() == e.rules.len()
            && stored.iter().zip(&e.rules).all(|(s, r)| {
                s.0 == r.rule_type
                    && s.1 == r.gateway_id
                    && s.2 == i64::from(r.priority)
                    && serde_json::from_str::<serde_json::Value>(&s.3)
                        .ok()
                        .as_ref()
                        == Some(&r.conditions)
                    && s.4 == r.enabled
            });
        if !same_rules {
            sqlx::query("DELETE FROM gateway_routing_rules")
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            if !e.rules.is_empty() {
                let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                    "INSERT INTO gateway_routing_rules (rule_type, gateway_id, priority, \
                     conditions, enabled, updated_at_ms) ",
                );
                q.push_values(&e.rules, |mut b, r| {
                    b.push_bind(r.rule_type.clone())
                        .push_bind(r.gateway_id.clone())
                        .push_bind(r.priority)
                        .push_bind(json_text(&r.conditions))
                        .push_bind(r.enabled)
                        .push_bind(e.at);
                });
                q.build().execute(&mut *tx).await.map_err(unavailable)?;
            }
        }
        sqlx::query(
            "INSERT INTO gateway_config_state (id, applied_at_ms, applied_by) VALUES (1, ?, ?) \
             ON DUPLICATE KEY UPDATE applied_by = IF(VALUES(applied_at_ms) >= applied_at_ms, \
             VALUES(applied_by), applied_by), \
             applied_at_ms = GREATEST(applied_at_ms, VALUES(applied_at_ms))",
        )
        .bind(e.at)
        .bind(&e.changed_by)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        if !rows.is_empty() {
            tracing::info!(
                changes = rows.len(),
                changed_by = %e.changed_by,
                "gateway configuration changes audited"
            );
        }
        Ok(())
    }
}

#[async_trait]
impl RecordReader for MysqlRecords {
    async fn message(&self, id: &str) -> Result<Option<MessageRecord>, RecordError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let mut records = load(&mut conn, &[id.to_owned()], false).await?;
        Ok(records.remove(id))
    }

    async fn recent(&self, limit: usize) -> Result<Vec<MessageRecord>, RecordError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT message_id FROM messages ORDER BY updated_at_ms DESC, message_id LIMIT ?",
        )
        .bind(u64::try_from(limit).unwrap_or(u64::MAX))
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
        let mut records = load(&mut conn, &ids, false).await?;
        Ok(ids.iter().filter_map(|id| records.remove(id)).collect())
    }
}

#[async_trait]
impl ActivityReader for MysqlRecords {
    async fn activity(
        &self,
        from: EpochMillis,
        to: EpochMillis,
    ) -> Result<BTreeMap<String, GatewayActivity>, RecordError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let mut out: BTreeMap<String, GatewayActivity> = BTreeMap::new();
        let calls: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT gateway_id, outcome, latency_ms, COUNT(*) FROM send_attempts \
             WHERE at_ms >= ? AND at_ms < ? GROUP BY gateway_id, outcome, latency_ms",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
        for (gateway, outcome, latency, n) in calls {
            let n = u64::try_from(n).unwrap_or(0);
            let g = out.entry(gateway).or_default();
            g.attempts += n;
            *g.latencies
                .entry(u64::try_from(latency).unwrap_or(0))
                .or_default() += n;
            match parse_enum::<OutcomeClass>(&outcome, "send_attempts.outcome")? {
                OutcomeClass::Ok => g.sent += n,
                OutcomeClass::Permanent => g.failed += n,
                class => {
                    g.deferred += n;
                    if class == OutcomeClass::Throttled {
                        g.rate_limit_hits += n;
                    }
                }
            }
        }
        let counts = [
            // Transient failures after which the message was tried on another gateway.
            "SELECT a.gateway_id, COUNT(*) FROM send_attempts a \
             WHERE a.at_ms >= ? AND a.at_ms < ? AND a.outcome NOT IN ('ok', 'permanent') \
             AND EXISTS (SELECT 1 FROM send_attempts b WHERE b.message_id = a.message_id \
             AND b.gateway_id <> a.gateway_id AND b.at_ms > a.at_ms) GROUP BY a.gateway_id",
            "SELECT m.gateway_id, COUNT(*) FROM delivery_events e \
             JOIN messages m ON m.message_id = e.message_id \
             WHERE e.at_ms >= ? AND e.at_ms < ? AND e.kind IN ('hard_bounce', 'soft_bounce') \
             AND m.gateway_id IS NOT NULL GROUP BY m.gateway_id",
            "SELECT gateway_id, COUNT(*) FROM breaker_transitions \
             WHERE at_ms >= ? AND at_ms < ? AND to_phase = 'open' GROUP BY gateway_id",
        ];
        for (i, sql) in counts.into_iter().enumerate() {
            let rows: Vec<(String, i64)> = sqlx::query_as(sql)
                .bind(from)
                .bind(to)
                .fetch_all(&mut *conn)
                .await
                .map_err(unavailable)?;
            for (gateway, n) in rows {
                let g = out.entry(gateway).or_default();
                let n = u64::try_from(n).unwrap_or(0);
                match i {
                    0 => g.failovers = n,
                    1 => g.bounced = n,
                    _ => g.breaker_trips = n,
                }
            }
        }
        Ok(out)
    }

    async fn hourly(
        &self,
        from: EpochMillis,
    ) -> Result<BTreeMap<String, Vec<HourActivity>>, RecordError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let first = from.div_euclid(HOUR_MS) * HOUR_MS;
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT gateway_id, (at_ms DIV 3600000) * 3600000 AS hour_ms, \
             CAST(SUM(outcome = 'ok') AS SIGNED), CAST(SUM(outcome <> 'ok') AS SIGNED) \
             FROM send_attempts WHERE at_ms >= ? GROUP BY gateway_id, hour_ms \
             ORDER BY gateway_id, hour_ms",
        )
        .bind(first)
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
        let mut out: BTreeMap<String, Vec<HourActivity>> = BTreeMap::new();
        for (gateway, hour, sent, failed) in rows {
            out.entry(gateway).or_default().push(HourActivity {
                hour,
                sent: u64::try_from(sent).unwrap_or(0),
                failed: u64::try_from(failed).unwrap_or(0),
            });
        }
        Ok(out)
    }

    async fn recent_failures(&self, limit: usize) -> Result<Vec<MessageRecord>, RecordError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT message_id FROM messages WHERE status IN ('failed', 'rejected') \
             ORDER BY COALESCE(status_at_ms, updated_at_ms) DESC, message_id LIMIT ?",
        )
        .bind(u64::try_from(limit).unwrap_or(u64::MAX))
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
        let mut records = load(&mut conn, &ids, false).await?;
        Ok(ids.iter().filter_map(|id| records.remove(id)).collect())
    }
}

/// What a record held before the batch: to tell new rows from replays.
#[derive(Debug, Default)]
struct Snapshot {
    attempts: BTreeSet<(String, EpochMillis)>,
    events: BTreeSet<(String, String)>,
    /// Lower-cased address → (had opens, had clicks).
    engaged: HashMap<String, (bool, bool)>,
    /// Whether the message's gateway was known (its events were counted in the statistics).
    had_gateway: bool,
}

impl Snapshot {
    fn of(r: &MessageRecord) -> Self {
        Self {
            attempts: r
                .attempts
                .iter()
                .map(|a| (a.gateway.clone(), a.at))
                .collect(),
            events: r
                .events
                .iter()
                .map(|e| (e.provider.clone(), e.provider_event_id.clone()))
                .collect(),
            engaged: r
                .recipients
                .iter()
                .map(|x| (x.address.to_lowercase(), (x.opens > 0, x.clicks > 0)))
                .collect(),
            had_gateway: r.gateway_id.is_some(),
        }
    }
}

/// Increments of `gateway_usage_stats`, per (gateway, UTC date, UTC hour).
#[derive(Debug, Default)]
struct Stats {
    rows: BTreeMap<(String, String, i64), StatRow>,
}

#[derive(Debug, Default, Clone, Copy)]
struct StatRow {
    attempts: i64,
    sent: i64,
    failed: i64,
    deferred: i64,
    bounced: i64,
    total_latency_ms: i64,
    rate_limit_hits: i64,
    breaker_trips: i64,
    opens: i64,
    clicks: i64,
    unique_opens: i64,
    unique_clicks: i64,
}

impl Stats {
    fn bump(&mut self, gateway: &str, at: EpochMillis, f: impl FnOnce(&mut StatRow)) {
        let hour = utc_hour(at) - utc_day(at) * 24;
        f(self
            .rows
            .entry((gateway.to_owned(), utc_date_string(at), hour))
            .or_default());
    }

    fn attempt(&mut self, a: &AttemptRecord) {
        self.bump(&a.gateway, a.at, |s| {
            s.attempts += 1;
            s.total_latency_ms += i64::try_from(a.latency_ms).unwrap_or(i64::MAX);
            match a.class {
                OutcomeClass::Ok => s.sent += 1,
                OutcomeClass::Permanent => s.failed += 1,
                OutcomeClass::Throttled => {
                    s.deferred += 1;
                    s.rate_limit_hits += 1;
                }
                OutcomeClass::Unavailable | OutcomeClass::Auth | OutcomeClass::Ambiguous => {
                    s.deferred += 1;
                }
            }
        });
    }

    fn delivery(&mut self, gateway: &str, e: &DeliveryEvent) {
        self.bump(gateway, e.at, |s| match e.kind {
            DeliveryKind::HardBounce | DeliveryKind::SoftBounce => s.bounced += 1,
            DeliveryKind::Opened => s.opens += 1,
            DeliveryKind::Clicked => s.clicks += 1,
            _ => {}
        });
    }
}

type Conn = sqlx::MySqlConnection;

/// Reads the records of `ids` (those that exist), locking their `messages` rows when `lock`.
async fn load(
    conn: &mut Conn,
    ids: &[String],
    lock: bool,
) -> Result<BTreeMap<String, MessageRecord>, RecordError> {
    let mut out = BTreeMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let select = |sql: &str| {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(sql);
        q.push(" WHERE message_id IN (");
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(id.clone());
        }
        q.push(")");
        q
    };
    let mut q = select(
        "SELECT message_id, status, status_at_ms, sender, subject, gateway_id, gateway_type, \
         provider_message_id, last_error, retry_at_ms, campaign_id, user_id, tags, metadata, \
         created_at_ms, updated_at_ms FROM messages",
    );
    if lock {
        q.push(" FOR UPDATE");
    }
    for row in q.build().fetch_all(&mut *conn).await.map_err(unavailable)? {
        let record = message_row(&row)?;
        out.insert(record.message_id.clone(), record);
    }
    if out.is_empty() {
        return Ok(out);
    }
    let mut q = select(
        "SELECT message_id, address, kind, delivery_status, bounce_reason, opens, clicks \
         FROM message_recipients",
    );
    for row in q.build().fetch_all(&mut *conn).await.map_err(unavailable)? {
        let id: String = row.try_get("message_id").map_err(unavailable)?;
        if let Some(record) = out.get_mut(&id) {
            record.recipients.push(RecipientRecord {
                address: row.try_get("address").map_err(unavailable)?,
                kind: parse_enum(
                    &row.try_get::<String, _>("kind").map_err(unavailable)?,
                    "kind",
                )?,
                status: parse_enum(
                    &row.try_get::<String, _>("delivery_status")
                        .map_err(unavailable)?,
                    "delivery_status",
                )?,
                bounce_reason: row.try_get("bounce_reason").map_err(unavailable)?,
                opens: u32::try_from(row.try_get::<i32, _>("opens").map_err(unavailable)?)
                    .unwrap_or(0),
                clicks: u32::try_from(row.try_get::<i32, _>("clicks").map_err(unavailable)?)
                    .unwrap_or(0),
            });
        }
    }
    let mut q = select(
        "SELECT message_id, gateway_id, at_ms, gateway_type, outcome, http_status, latency_ms, \
         error FROM send_attempts",
    );
    for row in q.build().fetch_all(&mut *conn).await.map_err(unavailable)? {
        let id: String = row.try_get("message_id").map_err(unavailable)?;
        if let Some(record) = out.get_mut(&id) {
            record.attempts.push(AttemptRecord {
                gateway: row.try_get("gateway_id").map_err(unavailable)?,
                gateway_type: row.try_get("gateway_type").map_err(unavailable)?,
                class: parse_enum(
                    &row.try_get::<String, _>("outcome").map_err(unavailable)?,
                    "outcome",
                )?,
                http_status: row
                    .try_get::<Option<i16>, _>("http_status")
                    .map_err(unavailable)?
                    .and_then(|s| u16::try_from(s).ok()),
                latency_ms: u64::try_from(
                    row.try_get::<i64, _>("latency_ms").map_err(unavailable)?,
                )
                .unwrap_or(0),
                error: row.try_get("error").map_err(unavailable)?,
                at: row.try_get("at_ms").map_err(unavailable)?,
            });
        }
    }
    let mut q = select(
        "SELECT provider, provider_event_id, message_id, recipient, kind, at_ms, diagnostic, url \
         FROM delivery_events",
    );
    for row in q.build().fetch_all(&mut *conn).await.map_err(unavailable)? {
        let event = event_row(&row)?;
        if let Some(record) = event.message_id.as_ref().and_then(|id| out.get_mut(id)) {
            record.events.push(event);
        }
    }
    for record in out.values_mut() {
        record.sort_recipients();
        record
            .attempts
            .sort_by(|x, y| (x.at, &x.gateway).cmp(&(y.at, &y.gateway)));
        record.events.sort_by(|x, y| {
            (x.at, &x.provider, &x.provider_event_id).cmp(&(
                y.at,
                &y.provider,
                &y.provider_event_id,
            ))
        });
    }
    Ok(out)
}

fn message_row(row: &MySqlRow) -> Result<MessageRecord, RecordError> {
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(unavailable);
    let get_o = |c: &str| row.try_get::<Option<String>, _>(c).map_err(unavailable);
    let get_n = |c: &str| row.try_get::<Option<i64>, _>(c).map_err(unavailable);
    let status: MessageStatus = parse_enum(&get_s("status")?, "status")?;
    Ok(MessageRecord {
        message_id: get_s("message_id")?,
        status,
        sender: get_s("sender")?,
        subject: get_s("subject")?,
        campaign_id: get_o("campaign_id")?,
        user_id: get_o("user_id")?,
        tags: serde_json::from_str(&get_s("tags")?).map_err(|_| corrupt("tags"))?,
        metadata: serde_json::from_str(&get_s("metadata")?).map_err(|_| corrupt("metadata"))?,
        gateway_id: get_o("gateway_id")?,
        gateway_type: get_o("gateway_type")?,
        provider_message_id: get_o("provider_message_id")?,
        last_error: get_o("last_error")?,
        retry_at: get_n("retry_at_ms")?,
        recipients: Vec::new(),
        attempts: Vec::new(),
        events: Vec::new(),
        created_at: get_n("created_at_ms")?.unwrap_or(0),
        updated_at: get_n("updated_at_ms")?.unwrap_or(0),
        status_at: get_n("status_at_ms")?,
    })
}

fn event_row(row: &MySqlRow) -> Result<DeliveryEvent, RecordError> {
    Ok(DeliveryEvent {
        provider: row.try_get("provider").map_err(unavailable)?,
        provider_event_id: row.try_get("provider_event_id").map_err(unavailable)?,
        message_id: row.try_get("message_id").map_err(unavailable)?,
        recipient: row.try_get("recipient").map_err(unavailable)?,
        kind: parse_enum(
            &row.try_get::<String, _>("kind").map_err(unavailable)?,
            "kind",
        )?,
        at: row.try_get("at_ms").map_err(unavailable)?,
        diagnostic: row.try_get("diagnostic").map_err(unavailable)?,
        url: row.try_get("url").map_err(unavailable)?,
        stream: None,
    })
}

/// The (provider, provider event id) pairs among `keys` already stored.
async fn known_deliveries(
    conn: &mut Conn,
    keys: &BTreeSet<(String, String)>,
) -> Result<BTreeSet<(String, String)>, RecordError> {
    let mut known = BTreeSet::new();
    let keys: Vec<&(String, String)> = keys.iter().collect();
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "SELECT provider, provider_event_id FROM delivery_events WHERE (provider, provider_event_id) IN (",
        );
        let mut list = q.separated(", ");
        for (p, id) in chunk {
            list.push("(");
            list.push_bind_unseparated(p.clone());
            list.push_unseparated(", ");
            list.push_bind_unseparated(id.clone());
            list.push_unseparated(")");
        }
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await.map_err(unavailable)? {
            known.insert((
                row.try_get("provider").map_err(unavailable)?,
                row.try_get("provider_event_id").map_err(unavailable)?,
            ));
        }
    }
    Ok(known)
}

async fn write_messages<'a>(
    conn: &mut Conn,
    records: impl Iterator<Item = &'a MessageRecord>,
) -> Result<(), RecordError> {
    let records: Vec<&MessageRecord> = records.collect();
    for chunk in records.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO messages (message_id, status, status_at_ms, sender, subject, gateway_id, \
             gateway_type, provider_message_id, attempts, last_error, retry_at_ms, campaign_id, \
             user_id, tags, metadata, created_at_ms, updated_at_ms) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.message_id.clone())
                .push_bind(r.status.as_str())
                .push_bind(r.status_at)
                .push_bind(r.sender.clone())
                .push_bind(r.subject.clone())
                .push_bind(r.gateway_id.clone())
                .push_bind(r.gateway_type.clone())
                .push_bind(r.provider_message_id.clone())
                .push_bind(i64::try_from(r.attempts.len()).unwrap_or(i64::MAX))
                .push_bind(r.last_error.clone())
                .push_bind(r.retry_at)
                .push_bind(r.campaign_id.clone())
                .push_bind(r.user_id.clone())
                .push_bind(json_text(&r.tags))
                .push_bind(json_text(&r.metadata))
                .push_bind(r.created_at)
                .push_bind(r.updated_at);
        });
        q.push(
            " ON DUPLICATE KEY UPDATE status = VALUES(status), status_at_ms = VALUES(status_at_ms), \
             sender = VALUES(sender), subject = VALUES(subject), gateway_id = VALUES(gateway_id), \
             gateway_type = VALUES(gateway_type), provider_message_id = VALUES(provider_message_id), \
             attempts = VALUES(attempts), last_error = VALUES(last_error), \
             retry_at_ms = VALUES(retry_at_ms), campaign_id = VALUES(campaign_id), \
             user_id = VALUES(user_id), tags = VALUES(tags), metadata = VALUES(metadata), \
             created_at_ms = VALUES(created_at_ms), updated_at_ms = VALUES(updated_at_ms)",
        );
        q.build().execute(&mut *conn).await.map_err(unavailable)?;
    }
    Ok(())
}

async fn write_recipients<'a>(
    conn: &mut Conn,
    records: impl Iterator<Item = &'a MessageRecord>,
) -> Result<(), RecordError> {
    let rows: Vec<(&MessageRecord, &RecipientRecord)> = records
        .flat_map(|m| m.recipients.iter().map(move |r| (m, r)))
        .collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO message_recipients (message_id, address_lc, address, kind, \
             delivery_status, gateway_id, gateway_type, send_attempt_count, \
             last_send_attempt_ms, bounce_reason, opens, clicks) ",
        );
        q.push_values(chunk, |mut b, (m, r)| {
            b.push_bind(m.message_id.clone())
                .push_bind(r.address.to_lowercase())
                .push_bind(r.address.clone())
                .push_bind(r.kind.as_str())
                .push_bind(enum_str(r.status))
                .push_bind(m.gateway_id.clone())
                .push_bind(m.gateway_type.clone())
                .push_bind(i64::try_from(m.attempts.len()).unwrap_or(i64::MAX))
                .push_bind(m.attempts.iter().map(|a| a.at).max())
                .push_bind(r.bounce_reason.clone())
                .push_bind(i64::from(r.opens))
                .push_bind(i64::from(r.clicks));
        });
        q.push(
            " ON DUPLICATE KEY UPDATE address = VALUES(address), kind = VALUES(kind), \
             delivery_status = VALUES(delivery_status), gateway_id = VALUES(gateway_id), \
             gateway_type = VALUES(gateway_type), send_attempt_count = VALUES(send_attempt_count), \
             last_send_attempt_ms = VALUES(last_send_attempt_ms), \
             bounce_reason = VALUES(bounce_reason), opens = VALUES(opens), clicks = VALUES(clicks)",
        );
        q.build().execute(&mut *conn).await.map_err(unavailable)?;
    }
    Ok(())
}

async fn write_attempts(
    conn: &mut Conn,
    attempts: &[(&str, &AttemptRecord)],
) -> Result<(), RecordError> {
    for chunk in attempts.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO send_attempts (message_id, gateway_id, at_ms, gateway_type, \
             outcome, http_status, latency_ms, error) ",
        );
        q.push_values(chunk, |mut b, (id, a)| {
            b.push_bind((*id).to_owned())
                .push_bind(a.gateway.clone())
                .push_bind(a.at)
                .push_bind(a.gateway_type.clone())
                .push_bind(enum_str(a.class))
                .push_bind(a.http_status.map(i32::from))
                .push_bind(i64::try_from(a.latency_ms).unwrap_or(i64::MAX))
                .push_bind(a.error.clone());
        });
        // A row already there is kept as it is (a no-op update, not `INSERT IGNORE`, which would
        // also turn a value too long for its column into a silent truncation).
        q.push(" ON DUPLICATE KEY UPDATE message_id = message_id");
        q.build().execute(&mut *conn).await.map_err(unavailable)?;
    }
    Ok(())
}

async fn write_events(conn: &mut Conn, events: &[&DeliveryEvent]) -> Result<(), RecordError> {
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO delivery_events (provider, provider_event_id, message_id, \
             recipient, kind, at_ms, diagnostic, url) ",
        );
        q.push_values(chunk, |mut b, e| {
            b.push_bind(e.provider.clone())
                .push_bind(e.provider_event_id.clone())
                .push_bind(e.message_id.clone())
                .push_bind(e.recipient.clone())
                .push_bind(enum_str(e.kind))
                .push_bind(e.at)
                .push_bind(e.diagnostic.clone())
                .push_bind(e.url.clone());
        });
        q.push(" ON DUPLICATE KEY UPDATE provider = provider");
        q.build().execute(&mut *conn).await.map_err(unavailable)?;
    }
    Ok(())
}

async fn write_health<'a>(
    conn: &mut Conn,
    health: impl Iterator<Item = &'a HealthEvent>,
) -> Result<(), RecordError> {
    for h in health {
        // Assignments run left to right and see earlier ones: checked_at_ms must be last.
        sqlx::query(
            "INSERT INTO gateway_health_status (gateway_id, gateway_type, status, latency_ms, \
             consecutive_failures, consecutive_successes, last_error, checked_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
             gateway_type = IF(VALUES(checked_at_ms) >= checked_at_ms, VALUES(gateway_type), gateway_type), \
             status = IF(VALUES(checked_at_ms) >= checked_at_ms, VALUES(status), status), \
             latency_ms = IF(VALUES(checked_at_ms) >= checked_at_ms, VALUES(latency_ms), latency_ms), \
             consecutive_failures = IF(VALUES(checked_at_ms) >= checked_at_ms, VALUES(consecutive_failures), consecutive_failures), \
             consecutive_successes = IF(VALUES(checked_at_ms) >= checked_at_ms, VALUES(consecutive_successes), consecutive_successes), \
             last_error = IF(VALUES(checked_at_ms) >= checked_at_ms, VALUES(last_error), last_error), \
             checked_at_ms = GREATEST(checked_at_ms, VALUES(checked_at_ms))",
        )
        .bind(&h.gateway_id)
        .bind(&h.gateway_type)
        .bind(enum_str(h.status))
        .bind(h.latency_ms.map(|l| i64::try_from(l).unwrap_or(i64::MAX)))
        .bind(h.consecutive_failures)
        .bind(h.consecutive_successes)
        .bind(&h.error)
        .bind(h.at)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    }
    Ok(())
}

/// Records a breaker transition; true when it was new.
async fn write_breaker(conn: &mut Conn, e: &BreakerEvent) -> Result<bool, RecordError> {
    let inserted = sqlx::query(
        // Inserted only when absent, so the affected-row count says whether it is new (sqlx
        // connects with CLIENT_FOUND_ROWS, under which a no-op upsert also counts 1). A racing
        // recorder inserting the same row gets a duplicate-key error: retryable, and its retry
        // finds the row.
        "INSERT INTO breaker_transitions (gateway_id, at_ms, from_phase, to_phase, reason) \
         SELECT ?, ?, ?, ?, ? FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM breaker_transitions \
         WHERE gateway_id = ? AND at_ms = ? AND from_phase = ? AND to_phase = ?)",
    )
    .bind(&e.gateway_id)
    .bind(e.at)
    .bind(e.from.as_str())
    .bind(e.to.as_str())
    .bind(json_text(&e.reason))
    .bind(&e.gateway_id)
    .bind(e.at)
    .bind(e.from.as_str())
    .bind(e.to.as_str())
    .execute(&mut *conn)
    .await
    .map_err(unavailable)?
    .rows_affected()
        == 1;
    if inserted {
        // The breaker's latest state, kept beside the health of the gateway.
        sqlx::query(
            "UPDATE gateway_health_status SET breaker_state = ?, breaker_changed_at_ms = ? \
             WHERE gateway_id = ? AND (breaker_changed_at_ms IS NULL OR breaker_changed_at_ms <= ?)",
        )
        .bind(e.to.as_str())
        .bind(e.at)
        .bind(&e.gateway_id)
        .bind(e.at)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    }
    Ok(inserted)
}

async fn write_stats(conn: &mut Conn, stats: &Stats) -> Result<(), RecordError> {
    let rows: Vec<(&(String, String, i64), &StatRow)> = stats.rows.iter().collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO gateway_usage_stats (gateway_id, stat_date, stat_hour, attempts, sent, \
             failed, deferred, bounced, total_latency_ms, rate_limit_hits, breaker_trips, opens, \
             clicks, unique_opens, unique_clicks) ",
        );
        q.push_values(chunk, |mut b, ((gateway, date, hour), s)| {
            b.push_bind(gateway.clone())
                .push_bind(date.clone())
                .push_bind(*hour)
                .push_bind(s.attempts)
                .push_bind(s.sent)
                .push_bind(s.failed)
                .push_bind(s.deferred)
                .push_bind(s.bounced)
                .push_bind(s.total_latency_ms)
                .push_bind(s.rate_limit_hits)
                .push_bind(s.breaker_trips)
                .push_bind(s.opens)
                .push_bind(s.clicks)
                .push_bind(s.unique_opens)
                .push_bind(s.unique_clicks);
        });
        q.push(
            " ON DUPLICATE KEY UPDATE attempts = attempts + VALUES(attempts), \
             sent = sent + VALUES(sent), failed = failed + VALUES(failed), \
             deferred = deferred + VALUES(deferred), bounced = bounced + VALUES(bounced), \
             total_latency_ms = total_latency_ms + VALUES(total_latency_ms), \
             rate_limit_hits = rate_limit_hits + VALUES(rate_limit_hits), \
             breaker_trips = breaker_trips + VALUES(breaker_trips), \
             opens = opens + VALUES(opens), clicks = clicks + VALUES(clicks), \
             unique_opens = unique_opens + VALUES(unique_opens), \
             unique_clicks = unique_clicks + VALUES(unique_clicks)",
        );
        q.build().execute(&mut *conn).await.map_err(unavailable)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]

    use super::*;

    /// A released migration is never edited (sqlx refuses a database whose applied migrations
    /// changed): each file keeps the SHA-384 it was released with.
    #[test]
    fn released_migrations_are_unchanged() {
        const RELEASED: [(i64, &str); 6] = [
            (
                1,
                "a161e560ca4d47d96208f9e2c95350f9e31e779d0edc1ea05d5767110d83604e609334827c91bfbe9ba3eab208645715",
            ),
            (
                2,
                "9e3e2a981567b46b8780b94d0f433f485b11199d97a0b0be39c79bde59f4998f1a7a4f0aea5eaea21611aca9ad3d8b70",
            ),
            (
                3,
                "81330618dabbde1364558b6f9826623081664eef08624faaf4ac89064ed9970f236c1e0138499a62e5af13a7dbf7e5f0",
            ),
            (
                4,
                "9b4addb6cfb4e6d11b8b232c0351159274ccc70edc36a0d05f6cb7abf5707902a21c6d17f4114bbdc1a94fc93d76c8ff",
            ),
            (
                5,
                "17d1bb2d924275e2c4d7d8bd81fa9c3dae5b79398d3140d62bb79ae5d4b4aae3fd7bbfcf94c2802d068d858c6e5054f0",
            ),
            (
                6,
                "58d138990322ef7485e5716e099902a646d80a875f8000cb3172b1fa26504996f34cdbd0d7f03b596394031074c119db",
            ),
        ];
        for (version, checksum) in RELEASED {
            let migration = MIGRATOR
                .iter()
                .find(|m| m.version == version)
                .unwrap_or_else(|| panic!("migration {version} is missing"));
            let hex: String = migration
                .checksum
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                hex, checksum,
                "migration {version} was edited after its release"
            );
        }
    }

    /// Every `.sql` file of `migrations/` is embedded, under its own version and with its
    /// current content, and nothing else is.
    #[test]
    fn embedded_migrations_are_the_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
        let mut on_disk: Vec<(i64, String, String)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .map(|name| {
                let version = name
                    .split_once('_')
                    .and_then(|(v, _)| v.parse().ok())
                    .unwrap_or(-1);
                let sql = std::fs::read_to_string(format!("{dir}/{name}")).unwrap_or_default();
                (version, name, sql)
            })
            .collect();
        on_disk.sort();
        let embedded: Vec<(i64, String, String)> = MIGRATION_FILES
            .iter()
            .map(|&(v, name, sql)| (v, name.to_owned(), sql.to_owned()))
            .collect();
        assert_eq!(
            embedded.iter().map(|m| (m.0, &m.1)).collect::<Vec<_>>(),
            on_disk.iter().map(|m| (m.0, &m.1)).collect::<Vec<_>>(),
            "migrations/ and MIGRATION_FILES list different files"
        );
        assert_eq!(
            embedded, on_disk,
            "an embedded migration differs from its file"
        );
        let described: Vec<(i64, String)> = MIGRATOR
            .iter()
            .map(|m| (m.version, m.description.to_string()))
            .collect();
        assert_eq!(described[0], (1, "record of delivery".to_owned()));
        assert_eq!(described.len(), on_disk.len());
    }
}
