//! Retention of the record of delivery: [`purge_expired`] deletes every message whose last
//! activity (`messages.updated_at_ms`, the latest event time the record has seen) is older than
//! `now - retention`, with all its rows (`message_recipients`, `send_attempts`,
//! `delivery_events`), and the provider events that name no message, older than the same cutoff.
//!
//! # Why purge, not pseudonymise
//! The rows of a message are personal data through and through: addresses, a subject that in
//! medical mail often names a condition or an appointment, metadata carrying patient or case
//! ids, bounce diagnostics quoting the address. A hashed address is still personal data (it is
//! linkable), and a subject cannot be pseudonymised at all. What survives the retention is what
//! support and operations need after it: the aggregate figures of `gateway_usage_stats`, counted
//! when the rows were written and untouched by the purge. So a message past its retention is
//! deleted whole; see docs/RECORDER.md, "Retention and personal data".
//!
//! # Bounded work
//! Each batch is one short transaction over at most `batch_size` messages (or provider events):
//! their ids are selected in time order through an index (`messages_updated`; `events_message`
//! for events without a message), locked, and deleted by key. The transaction runs at
//! `READ COMMITTED`, so it locks those rows only, not the gaps between them: the recorder keeps
//! writing newer messages meanwhile, and a recorder writing to a message of the batch waits for
//! one batch at most. Batches repeat until nothing older than the cutoff is left or the caller's
//! [`PurgeBudget`] (batches, time) is spent; the [`PurgeSummary`] says whether more remains.
//!
//! Time comes from the caller (`now`), never from the database clock, so a test can run the
//! purge at any instant of a manual clock.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{MySql, QueryBuilder, Row};

use super::RecordError;
use super::mysql::MysqlRecords;
use crate::clock::EpochMillis;

/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// The shortest retention accepted, in days. A message can still be retried for 14 days (the
/// queues' retention) and its ledger entry lives 30: a purge inside that window would delete a
/// record that later events then bring back as a partial `queued` record.
pub const MIN_RETENTION_DAYS: u32 = 30;

/// The longest retention accepted, in days (ten years).
pub const MAX_RETENTION_DAYS: u32 = 3650;

/// The retention of the deployed recorder when `RECORD_RETENTION_DAYS` is unset.
pub const DEFAULT_RETENTION_DAYS: u32 = 365;

/// Most messages (or provider events) per batch.
pub const MAX_BATCH_SIZE: u32 = 5_000;

/// Messages per batch unless the caller says otherwise: a transaction of this many messages and
/// their rows takes milliseconds.
pub const DEFAULT_BATCH_SIZE: u32 = 500;

/// Why a retention or a budget was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    /// Outside [`MIN_RETENTION_DAYS`]..=[`MAX_RETENTION_DAYS`].
    #[error(
        "a retention of {days} days is outside {MIN_RETENTION_DAYS}..={MAX_RETENTION_DAYS} days"
    )]
    OutOfRange {
        /// The retention asked for, in whole days (rounded down).
        days: u64,
    },
    /// Zero or more than [`MAX_BATCH_SIZE`].
    #[error("a batch size of {size} is outside 1..={MAX_BATCH_SIZE}")]
    BatchSize {
        /// The batch size asked for.
        size: u32,
    },
}

/// How long a message is kept after its last activity: at least [`MIN_RETENTION_DAYS`], at most
/// [`MAX_RETENTION_DAYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    ms: i64,
}

impl Retention {
    /// A retention of `days` whole days.
    pub fn days(days: u32) -> Result<Self, RetentionError> {
        Self::of(Duration::from_secs(u64::from(days) * 86_400))
    }

    /// A retention of `d` (milliseconds count; `365d` and `8760h` are the same).
    pub fn of(d: Duration) -> Result<Self, RetentionError> {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let min = i64::from(MIN_RETENTION_DAYS) * DAY_MS;
        let max = i64::from(MAX_RETENTION_DAYS) * DAY_MS;
        if (min..=max).contains(&ms) {
            Ok(Self { ms })
        } else {
            Err(RetentionError::OutOfRange {
                days: d.as_secs() / 86_400,
            })
        }
    }

    /// The retention in milliseconds.
    pub fn as_millis(self) -> i64 {
        self.ms
    }

    /// The cutoff at `now`: a message whose last activity is strictly earlier is expired.
    pub fn cutoff(self, now: EpochMillis) -> EpochMillis {
        now.saturating_sub(self.ms)
    }
}

/// How much one run may do: batches of at most `batch_size`, at most `max_batches` of them,
/// and no batch started after `max_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeBudget {
    batch_size: NonZeroU32,
    max_batches: u32,
    max_time: Duration,
}

impl PurgeBudget {
    /// A budget; `batch_size` within 1..=[`MAX_BATCH_SIZE`].
    pub fn new(
        batch_size: u32,
        max_batches: u32,
        max_time: Duration,
    ) -> Result<Self, RetentionError> {
        match NonZeroU32::new(batch_size) {
            Some(size) if batch_size <= MAX_BATCH_SIZE => Ok(Self {
                batch_size: size,
                max_batches,
                max_time,
            }),
            _ => Err(RetentionError::BatchSize { size: batch_size }),
        }
    }

    /// Messages (or provider events) per batch.
    pub fn batch_size(&self) -> u32 {
        self.batch_size.get()
    }

    /// Whether another batch may start after `done` batches and `elapsed` time.
    pub fn allows(&self, done: u32, elapsed: Duration) -> bool {
        done < self.max_batches && elapsed < self.max_time
    }
}

/// Whether a purge deletes or only counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeMode {
    /// Delete.
    Delete,
    /// Count what would be deleted, in the same batches, changing nothing.
    DryRun,
}

/// Rows purged (or, in a dry run, that would be), per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeCounts {
    /// `messages` rows.
    pub messages: u64,
    /// `message_recipients` rows of those messages.
    pub recipients: u64,
    /// `send_attempts` rows of those messages.
    pub send_attempts: u64,
    /// `delivery_events` rows of those messages.
    pub delivery_events: u64,
    /// `delivery_events` rows naming no message.
    pub unattached_events: u64,
}

impl PurgeCounts {
    fn add(&mut self, other: &Self) {
        self.messages += other.messages;
        self.recipients += other.recipients;
        self.send_attempts += other.send_attempts;
        self.delivery_events += other.delivery_events;
        self.unattached_events += other.unattached_events;
    }
}

/// One batch, as reported to the caller's progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PurgeBatch {
    /// 1 for the first batch.
    pub number: u32,
    /// Its rows.
    #[serde(flatten)]
    pub counts: PurgeCounts,
}

/// What one run purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PurgeSummary {
    /// The cutoff (epoch ms): records last active before it were purged.
    pub cutoff: EpochMillis,
    /// True when nothing was deleted (a dry run).
    pub dry_run: bool,
    /// Rows per table.
    #[serde(flatten)]
    pub counts: PurgeCounts,
    /// Batches (transactions) that found something.
    pub batches: u32,
    /// True when the budget ran out before everything expired was purged (the next run goes on).
    pub more_remaining: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Messages,
    Unattached,
}

/// Where a dry run goes on (a deleting run starts from the oldest row each time: the rows
/// before are gone).
#[derive(Debug, Default)]
struct Cursor {
    message: Option<(i64, String)>,
    event: Option<(i64, String, String)>,
}

fn unavailable(e: sqlx::Error) -> RecordError {
    RecordError::Unavailable(Box::new(e))
}

/// Purges the records last active before `retention.cutoff(now)` (see the module docs), in
/// batches within `budget`, calling `on_batch` after each. A failed batch changes nothing (its
/// transaction rolls back) and the error is returned; the batches before it stay purged, and
/// running again goes on where it stopped.
pub async fn purge_expired(
    records: &MysqlRecords,
    now: EpochMillis,
    retention: Retention,
    budget: &PurgeBudget,
    mode: PurgeMode,
    mut on_batch: impl FnMut(&PurgeBatch) + Send,
) -> Result<PurgeSummary, RecordError> {
    let cutoff = retention.cutoff(now);
    let started = Instant::now();
    let limit = budget.batch_size();
    let mut summary = PurgeSummary {
        cutoff,
        dry_run: mode == PurgeMode::DryRun,
        counts: PurgeCounts::default(),
        batches: 0,
        more_remaining: false,
    };
    let mut cursor = Cursor::default();
    let mut phase = Phase::Messages;
    loop {
        if !budget.allows(summary.batches, started.elapsed()) {
            summary.more_remaining = remaining(records, cutoff, phase, &cursor).await?;
            break;
        }
        let (selected, counts) = match phase {
            Phase::Messages => message_batch(records, cutoff, limit, mode, &mut cursor).await?,
            Phase::Unattached => event_batch(records, cutoff, limit, mode, &mut cursor).await?,
        };
        if selected > 0 {
            summary.batches += 1;
            summary.counts.add(&counts);
            on_batch(&PurgeBatch {
                number: summary.batches,
                counts,
            });
        }
        if selected < u64::from(limit) {
            match phase {
                Phase::Messages => phase = Phase::Unattached,
                Phase::Unattached => break,
            }
        }
    }
    Ok(summary)
}

/// Whether anything expired is left from `phase` on.
async fn remaining(
    records: &MysqlRecords,
    cutoff: EpochMillis,
    phase: Phase,
    cursor: &Cursor,
) -> Result<bool, RecordError> {
    let mut conn = records.pool().acquire().await.map_err(unavailable)?;
    if phase == Phase::Messages
        && !select_messages(&mut conn, cutoff, cursor.message.as_ref(), 1, false)
            .await?
            .is_empty()
    {
        return Ok(true);
    }
    Ok(
        !select_events(&mut conn, cutoff, cursor.event.as_ref(), 1, false)
            .await?
            .is_empty(),
    )
}

type Conn = sqlx::MySqlConnection;

/// The oldest expired messages after `after` (updated time, id), at most `limit`, locked when
/// `lock`. Reads the `messages_updated` index in its order (its entries end with the primary
/// key, so the order is total).
async fn select_messages(
    conn: &mut Conn,
    cutoff: EpochMillis,
    after: Option<&(i64, String)>,
    limit: u32,
    lock: bool,
) -> Result<Vec<(i64, String)>, RecordError> {
    let mut q: QueryBuilder<MySql> = QueryBuilder::new(
        "SELECT updated_at_ms, message_id FROM messages FORCE INDEX (messages_updated) \
         WHERE updated_at_ms < ",
    );
    q.push_bind(cutoff);
    if let Some((at, id)) = after {
        q.push(" AND (updated_at_ms > ")
            .push_bind(*at)
            .push(" OR (updated_at_ms = ")
            .push_bind(*at)
            .push(" AND message_id > ")
            .push_bind(id.clone())
            .push("))");
    }
    q.push(" ORDER BY updated_at_ms, message_id LIMIT ")
        .push_bind(limit);
    if lock {
        q.push(" FOR UPDATE");
    }
    let rows = q.build().fetch_all(&mut *conn).await.map_err(unavailable)?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(unavailable)?,
                r.try_get(1).map_err(unavailable)?,
            ))
        })
        .collect()
}

/// The oldest expired provider events naming no message after `after` (time, provider, provider
/// event id), at most `limit`, locked when `lock`. Reads `events_message` (message id, time),
/// whose `NULL` prefix holds exactly these events in time order.
async fn select_events(
    conn: &mut Conn,
    cutoff: EpochMillis,
    after: Option<&(i64, String, String)>,
    limit: u32,
    lock: bool,
) -> Result<Vec<(i64, String, String)>, RecordError> {
    let mut q: QueryBuilder<MySql> = QueryBuilder::new(
        "SELECT at_ms, provider, provider_event_id FROM delivery_events \
         FORCE INDEX (events_message) WHERE message_id IS NULL AND at_ms < ",
    );
    q.push_bind(cutoff);
    if let Some((at, provider, id)) = after {
        q.push(" AND (at_ms > ")
            .push_bind(*at)
            .push(" OR (at_ms = ")
            .push_bind(*at)
            .push(" AND (provider > ")
            .push_bind(provider.clone())
            .push(" OR (provider = ")
            .push_bind(provider.clone())
            .push(" AND provider_event_id > ")
            .push_bind(id.clone())
            .push("))))");
    }
    q.push(" ORDER BY at_ms, provider, provider_event_id LIMIT ")
        .push_bind(limit);
    if lock {
        q.push(" FOR UPDATE");
    }
    let rows = q.build().fetch_all(&mut *conn).await.map_err(unavailable)?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(unavailable)?,
                r.try_get(1).map_err(unavailable)?,
                r.try_get(2).map_err(unavailable)?,
            ))
        })
        .collect()
}

/// A connection whose next transaction runs at `READ COMMITTED` (record locks only, no gap
/// locks). `SET TRANSACTION` without `SESSION` applies to that one transaction only, so the
/// pool's other users keep the server's level.
async fn read_committed(
    records: &MysqlRecords,
) -> Result<sqlx::pool::PoolConnection<MySql>, RecordError> {
    let mut conn = records.pool().acquire().await.map_err(unavailable)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(conn)
}

/// `statement` with ` WHERE message_id IN (ids…)` appended.
fn by_message(statement: &str, ids: &[(i64, String)]) -> QueryBuilder<MySql> {
    let mut q: QueryBuilder<MySql> = QueryBuilder::new(statement);
    q.push(" WHERE message_id IN (");
    let mut list = q.separated(", ");
    for (_, id) in ids {
        list.push_bind(id.clone());
    }
    q.push(")");
    q
}

const CHILD_TABLES: [&str; 3] = ["message_recipients", "send_attempts", "delivery_events"];

async fn message_batch(
    records: &MysqlRecords,
    cutoff: EpochMillis,
    limit: u32,
    mode: PurgeMode,
    cursor: &mut Cursor,
) -> Result<(u64, PurgeCounts), RecordError> {
    let mut counts = PurgeCounts::default();
    let mut child = [0u64; 3];
    let selected = match mode {
        PurgeMode::DryRun => {
            let mut conn = records.pool().acquire().await.map_err(unavailable)?;
            let ids =
                select_messages(&mut conn, cutoff, cursor.message.as_ref(), limit, false).await?;
            if ids.is_empty() {
                return Ok((0, counts));
            }
            for (n, table) in child.iter_mut().zip(CHILD_TABLES) {
                let count: i64 = by_message(&format!("SELECT COUNT(*) FROM {table}"), &ids)
                    .build_query_scalar()
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(unavailable)?;
                *n = u64::try_from(count).unwrap_or(0);
            }
            cursor.message = ids.last().cloned();
            ids.len()
        }
        PurgeMode::Delete => {
            let mut conn = read_committed(records).await?;
            let mut tx = sqlx::Connection::begin(&mut *conn)
                .await
                .map_err(unavailable)?;
            let ids = select_messages(&mut tx, cutoff, None, limit, true).await?;
            if ids.is_empty() {
                tx.rollback().await.map_err(unavailable)?;
                return Ok((0, counts));
            }
            for (n, table) in child.iter_mut().zip(CHILD_TABLES) {
                *n = by_message(&format!("DELETE FROM {table}"), &ids)
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?
                    .rows_affected();
            }
            by_message("DELETE FROM messages", &ids)
                .build()
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            ids.len()
        }
    };
    let selected = u64::try_from(selected).unwrap_or(u64::MAX);
    counts.messages = selected;
    [
        counts.recipients,
        counts.send_attempts,
        counts.delivery_events,
    ] = child;
    Ok((selected, counts))
}

async fn event_batch(
    records: &MysqlRecords,
    cutoff: EpochMillis,
    limit: u32,
    mode: PurgeMode,
    cursor: &mut Cursor,
) -> Result<(u64, PurgeCounts), RecordError> {
    let keys = match mode {
        PurgeMode::DryRun => {
            let mut conn = records.pool().acquire().await.map_err(unavailable)?;
            let keys =
                select_events(&mut conn, cutoff, cursor.event.as_ref(), limit, false).await?;
            if let Some(last) = keys.last() {
                cursor.event = Some(last.clone());
            }
            keys
        }
        PurgeMode::Delete => {
            let mut conn = read_committed(records).await?;
            let mut tx = sqlx::Connection::begin(&mut *conn)
                .await
                .map_err(unavailable)?;
            let keys = select_events(&mut tx, cutoff, None, limit, true).await?;
            if !keys.is_empty() {
                let mut q: QueryBuilder<MySql> = QueryBuilder::new(
                    "DELETE FROM delivery_events WHERE message_id IS NULL \
                     AND (provider, provider_event_id) IN (",
                );
                let mut list = q.separated(", ");
                for (_, provider, id) in &keys {
                    list.push("(");
                    list.push_bind_unseparated(provider.clone());
                    list.push_unseparated(", ");
                    list.push_bind_unseparated(id.clone());
                    list.push_unseparated(")");
                }
                q.push(")");
                q.build().execute(&mut *tx).await.map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)?;
            keys
        }
    };
    let selected = u64::try_from(keys.len()).unwrap_or(u64::MAX);
    let counts = PurgeCounts {
        unattached_events: selected,
        ..PurgeCounts::default()
    };
    Ok((selected, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: EpochMillis = 1_795_910_000_000;

    #[test]
    fn retention_accepts_only_thirty_days_to_ten_years() {
        let cases: [(u32, bool); 6] = [
            (0, false),
            (29, false),
            (30, true),
            (365, true),
            (3650, true),
            (3651, false),
        ];
        for (days, ok) in cases {
            assert_eq!(Retention::days(days).is_ok(), ok, "{days} days");
        }
        assert_eq!(
            Retention::days(7),
            Err(RetentionError::OutOfRange { days: 7 })
        );
    }

    #[test]
    fn the_cutoff_is_now_minus_the_retention_whatever_its_unit() {
        let days = Retention::days(365).unwrap_or_else(|e| unreachable!("{e}"));
        let hours =
            Retention::of(Duration::from_secs(8760 * 3600)).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(days, hours);
        assert_eq!(days.cutoff(NOW), NOW - 365 * DAY_MS);
        assert_eq!(days.cutoff(i64::MIN), i64::MIN, "saturates, never wraps");
    }

    #[test]
    fn a_batch_size_is_between_one_and_the_maximum() {
        let minute = Duration::from_secs(60);
        assert_eq!(
            PurgeBudget::new(0, 10, minute),
            Err(RetentionError::BatchSize { size: 0 })
        );
        assert!(PurgeBudget::new(MAX_BATCH_SIZE + 1, 10, minute).is_err());
        assert_eq!(
            PurgeBudget::new(MAX_BATCH_SIZE, 10, minute).map(|b| b.batch_size()),
            Ok(MAX_BATCH_SIZE)
        );
    }

    #[test]
    fn the_budget_stops_at_its_batches_or_its_time() {
        let budget = PurgeBudget::new(100, 3, Duration::from_secs(10))
            .unwrap_or_else(|e| unreachable!("{e}"));
        let cases: [(u32, u64, bool); 5] = [
            (0, 0, true),
            (2, 9, true),
            (3, 0, false),
            (0, 10, false),
            (1, 11, false),
        ];
        for (done, secs, allowed) in cases {
            assert_eq!(
                budget.allows(done, Duration::from_secs(secs)),
                allowed,
                "{done} batches after {secs} s"
            );
        }
    }
}
