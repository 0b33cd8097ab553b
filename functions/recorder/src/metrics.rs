//! The recorder's CloudWatch metrics: Embedded Metric Format lines on stdout, like the sender's
//! and the health check's ([`gateway_core::emf`]), in `METRICS_NAMESPACE`.
//!
//! A database outage never fails a recorder invocation: the recorder answers with batch item
//! failures and SQS delivers the events again, so Lambda's `Errors` metric stays at zero while
//! nothing is recorded. [`Metrics::counting`] wraps the record store and counts what each call
//! of the recorder did to it; the handler writes the counts after every batch
//! ([`Metrics::flush`]). One line per batch carries the totals (no dimension):
//!
//! | metric | what it counts |
//! |---|---|
//! | `Recorded` | events the record store applied |
//! | `RecordFailures` | events the record store refused as unavailable (database down or unreachable, pool or lock timeout): retried through the events queue; the `RecordFailuresAlarm` of `template.yaml` watches it |
//! | `UnattributedHardBounces`, `UnattributedComplaints` | hard bounces and complaints whose message the record does not know (no gateway to charge them to) |
//!
//! and one line per gateway (dimension `Gateway`, the gateway of the outcome that set the
//! message's status, as in `messages.gateway_id`) carries the samples of its bounce and
//! complaint rates:
//!
//! | metric | samples |
//! |---|---|
//! | `HardBounced` | `0` for each recipient the gateway's provider accepted (a `sent` outcome), `1` for each hard bounce |
//! | `Complained` | `0` for each recipient the gateway's provider accepted, `1` for each complaint |
//!
//! so that over any period `Sum` is the number of bounces (complaints), `SampleCount - Sum` the
//! number of accepted recipients, and `Average` = bounces / (accepted + bounces). A provider's
//! rate (bounces / accepted) is `Average / (1 - Average)`; the rate alarms of `template.yaml`
//! compute it per gateway with one Metrics Insights query (`AVG(HardBounced) … GROUP BY
//! Gateway`), which is why the two counts travel as samples of one metric rather than as two
//! metrics.
//!
//! A scheduled purge of expired records ([`crate::retention`]) writes one line of its own (no
//! dimension):
//!
//! | metric | what it counts |
//! |---|---|
//! | `RetentionPurgedMessages` | messages deleted by the run (with all their rows) |
//! | `RetentionPurgedRows` | rows deleted by the run, every table together (provider events naming no message included) |
//! | `RetentionBacklog` | `1` when the run's budget ran out before every expired record was purged, else `0` |
//! | `RetentionFailures` | `1` when the run failed (database unavailable), else `0` |
//!
//! The counts follow the calls, not the events' first arrival: an event applied again (a batch
//! retried because the suppression list or the customer-webhook queue was unavailable, a
//! provider event waiting for its message's outcome, an outcome re-emitted by a redelivered
//! message) is counted again. Those are rare and err towards the rates the providers would see
//! anyway.
//!
//! A Lambda execution environment serves one invocation at a time, so the counts between two
//! flushes are exactly those of one batch.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use gateway_core::clock::{Clock, EpochMillis};
use gateway_core::emf::emf_line;
use gateway_core::events::{DeliveryKind, GatewayEvent, Outcome, RecipientStatus};
use gateway_core::records::retention::PurgeSummary;
use gateway_core::records::{Applied, RecordError, RecordWriter};
use serde_json::{Map, Value, json};

/// Most values one EMF metric member may carry (CloudWatch's limit); longer sample lists are
/// split over several lines.
pub const MAX_VALUES_PER_LINE: usize = 100;

/// Counts of one gateway between two flushes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayCounts {
    /// Recipients a provider accepted (`SENT` in a `sent` outcome of this gateway).
    pub accepted: u32,
    /// Hard bounces of this gateway's messages.
    pub hard_bounces: u32,
    /// Complaints about this gateway's messages.
    pub complaints: u32,
}

/// What the record store did between two flushes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Events applied.
    pub recorded: u32,
    /// Events refused because the store was unavailable.
    pub record_failures: u32,
    /// Hard bounces of messages the record does not know.
    pub unattributed_hard_bounces: u32,
    /// Complaints about messages the record does not know.
    pub unattributed_complaints: u32,
    /// By gateway id.
    pub gateways: BTreeMap<String, GatewayCounts>,
}

impl Counts {
    /// Counts one successful `apply` of `events`, which left `applied`.
    fn applied(&mut self, events: &[GatewayEvent], applied: &Applied) {
        self.recorded = self.recorded.saturating_add(count(events.len()));
        for event in events {
            match event {
                GatewayEvent::Outcome(o) if o.outcome == Outcome::Sent => {
                    if let Some(gateway) = &o.gateway_id {
                        let accepted = o
                            .recipients
                            .iter()
                            .filter(|r| r.status == RecipientStatus::Sent)
                            .count();
                        let g = self.gateways.entry(gateway.clone()).or_default();
                        g.accepted = g.accepted.saturating_add(count(accepted));
                    }
                }
                GatewayEvent::Delivery(d)
                    if matches!(d.kind, DeliveryKind::HardBounce | DeliveryKind::Complained) =>
                {
                    let gateway = d
                        .message_id
                        .as_ref()
                        .and_then(|id| applied.messages.get(id))
                        .and_then(|m| m.gateway_id.clone());
                    let bounce = d.kind == DeliveryKind::HardBounce;
                    match gateway {
                        Some(gateway) => {
                            let g = self.gateways.entry(gateway).or_default();
                            if bounce {
                                g.hard_bounces += 1;
                            } else {
                                g.complaints += 1;
                            }
                        }
                        None if bounce => self.unattributed_hard_bounces += 1,
                        None => self.unattributed_complaints += 1,
                    }
                }
                _ => {}
            }
        }
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The counts shared by the counting store and the handler.
#[derive(Debug, Default)]
struct Tally(Mutex<Counts>);

impl Tally {
    fn update(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn take(&self) -> Counts {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Where the lines go.
#[derive(Debug, Clone, Default)]
pub enum Output {
    /// Standard output, where CloudWatch Logs picks EMF lines up (Lambda).
    #[default]
    Stdout,
    /// Kept in memory (tests).
    Memory(Arc<Mutex<Vec<String>>>),
}

/// The recorder's metrics: counts what the record store did, writes the lines after a batch.
#[derive(Debug)]
pub struct Metrics {
    namespace: String,
    clock: Arc<dyn Clock>,
    output: Output,
    tally: Arc<Tally>,
}

impl Metrics {
    /// Metrics in `namespace`, stamped by `clock`, written to `output`.
    pub fn new(namespace: impl Into<String>, clock: Arc<dyn Clock>, output: Output) -> Self {
        Self {
            namespace: namespace.into(),
            clock,
            output,
            tally: Arc::new(Tally::default()),
        }
    }

    /// `records`, counted: give this to the recorder.
    pub fn counting(&self, records: Arc<dyn RecordWriter>) -> Arc<dyn RecordWriter> {
        Arc::new(Counting {
            inner: records,
            tally: Arc::clone(&self.tally),
        })
    }

    /// Writes the lines of everything counted since the last flush, and starts counting anew.
    /// The totals line is written even when nothing was counted, so the alarms see a zero
    /// rather than missing data while the recorder runs.
    pub fn flush(&self) {
        let lines = emf_lines(&self.tally.take(), &self.namespace, self.clock.now_ms());
        match &self.output {
            Output::Stdout => write_stdout(&lines),
            Output::Memory(kept) => kept
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(lines),
        }
    }
}

impl Metrics {
    /// Writes the line of one scheduled purge: its summary, or `None` when it failed.
    pub fn write_retention(&self, summary: Option<&PurgeSummary>) {
        let line = retention_line(summary, &self.namespace, self.clock.now_ms());
        match &self.output {
            Output::Stdout => write_stdout(&[line]),
            Output::Memory(kept) => kept
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line),
        }
    }
}

/// The EMF line of one scheduled purge in `namespace`, stamped `at` (see the module docs);
/// `None` for a run that failed.
pub fn retention_line(summary: Option<&PurgeSummary>, namespace: &str, at: EpochMillis) -> String {
    let (messages, rows, backlog, failures) = match summary {
        Some(s) => {
            let c = &s.counts;
            let rows = c.messages
                + c.recipients
                + c.send_attempts
                + c.delivery_events
                + c.unattached_events;
            (c.messages, rows, u64::from(s.more_remaining), 0)
        }
        None => (0, 0, 0, 1),
    };
    let metrics: [(&str, u64); 4] = [
        ("RetentionPurgedMessages", messages),
        ("RetentionPurgedRows", rows),
        ("RetentionBacklog", backlog),
        ("RetentionFailures", failures),
    ];
    let mut values = Map::new();
    for (name, value) in metrics {
        values.insert(name.to_owned(), json!(value));
    }
    emf_line(
        namespace,
        at,
        &[],
        &metrics.map(|(n, _)| (n, "Count")),
        values,
    )
}

#[allow(clippy::print_stdout, reason = "EMF lines go to stdout by design")]
fn write_stdout(lines: &[String]) {
    for line in lines {
        println!("{line}");
    }
}

/// The EMF lines of `counts` in `namespace`, stamped `at`: the totals line first, then the
/// lines of each gateway that had an accepted recipient, a bounce or a complaint.
pub fn emf_lines(counts: &Counts, namespace: &str, at: EpochMillis) -> Vec<String> {
    let totals: [(&str, u32); 4] = [
        ("Recorded", counts.recorded),
        ("RecordFailures", counts.record_failures),
        ("UnattributedHardBounces", counts.unattributed_hard_bounces),
        ("UnattributedComplaints", counts.unattributed_complaints),
    ];
    let mut values = Map::new();
    for (name, value) in totals {
        values.insert(name.to_owned(), json!(value));
    }
    let mut lines = vec![emf_line(
        namespace,
        at,
        &[],
        &totals.map(|(n, _)| (n, "Count")),
        values,
    )];
    for (gateway, g) in &counts.gateways {
        let bounced = samples(g.accepted, g.hard_bounces);
        let complained = samples(g.accepted, g.complaints);
        let chunks = bounced
            .len()
            .max(complained.len())
            .div_ceil(MAX_VALUES_PER_LINE);
        for chunk in 0..chunks {
            let mut values = Map::new();
            values.insert("Gateway".to_owned(), json!(gateway));
            let mut names: Vec<(&str, &str)> = Vec::new();
            for (name, list) in [("HardBounced", &bounced), ("Complained", &complained)] {
                let part: Vec<u8> = list
                    .iter()
                    .copied()
                    .skip(chunk * MAX_VALUES_PER_LINE)
                    .take(MAX_VALUES_PER_LINE)
                    .collect();
                if !part.is_empty() {
                    names.push((name, "Count"));
                    values.insert(name.to_owned(), Value::from(part));
                }
            }
            lines.push(emf_line(namespace, at, &["Gateway"], &names, values));
        }
    }
    lines
}

/// `zeros` zeros followed by `ones` ones.
fn samples(zeros: u32, ones: u32) -> Vec<u8> {
    let mut list = vec![0; zeros as usize];
    list.resize(list.len() + ones as usize, 1);
    list
}

/// The record store, counted.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn RecordWriter>,
    tally: Arc<Tally>,
}

// Written out rather than through `#[async_trait]` (the trait's own macro expands to exactly
// this signature), so this crate needs no extra dependency.
impl RecordWriter for Counting {
    fn apply<'life0, 'life1, 'async_trait>(
        &'life0 self,
        events: &'life1 [GatewayEvent],
    ) -> Pin<Box<dyn Future<Output = Result<Applied, RecordError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let result = self.inner.apply(events).await;
            match &result {
                Ok(applied) => self.tally.update(|c| c.applied(events, applied)),
                Err(error) if error.is_retryable() => self.tally.update(|c| {
                    c.record_failures = c.record_failures.saturating_add(count(events.len()));
                }),
                // An event the store can never hold: the recorder applies the batch again event
                // by event, and those calls are counted; the event itself ends in the events
                // dead-letter queue, which has its own alarm.
                Err(_) => {}
            }
            result
        })
    }
}
