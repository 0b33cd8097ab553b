//! The batch run (see the module docs of [`super`] for the steps and their costs).

use crate::address::redact_addresses;
use crate::duration::format_duration;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::stream::{self, StreamExt};

use super::{Batch, BatchReport, Disposition, ItemReport, KeyBook, Metrics, Pipeline, Read};
use crate::breaker::{self, Admission, Tally};
use crate::clock::EpochMillis;
use crate::config::{AmbiguousPolicy, Gateway};
use crate::events::{
    AttemptRecord, GatewayEvent, Outcome, OutcomeClass, OutcomeEvent, RecipientOutcome,
    RecipientStatus, SinkError,
};
use crate::ledger::{self, Claim, ClaimOutcome, ClaimRequest, FailedRecord, SentRecord};
use crate::limiter::{self, Grant, Refusal, Request, Verdict};
use crate::message::{MessageError, OutboundMessage, parse_message};
use crate::providers::{Accepted, ErrorClass, Provider, SendError};
use crate::queue::Received;
use crate::router::RouteRequest;
use crate::state::{Item, Key};
use crate::suppression;

/// Longest reason text carried in an event (a poison body can produce many problems).
const MAX_REASON_CHARS: usize = 1_000;

/// How often the batched ledger mark is tried before the sends are left to their events.
const MARK_TRIES: usize = 3;

/// Where a message stands in the run.
#[derive(Debug, Clone)]
enum Stage {
    /// Still looking for a gateway.
    Pending,
    /// A provider accepted it.
    Sent {
        gateway: usize,
        accepted: Accepted,
        at: EpochMillis,
    },
    /// A provider refused it permanently.
    Failed { gateway: usize, reason: String },
    /// Refused before any provider (every recipient suppressed).
    Rejected { reason: String },
    /// Its `expires_at` passed before it could be sent: failed, no provider called.
    Expired { reason: String },
    /// Found in the ledger (sent, failed, or held by another invocation): nothing to do here;
    /// its resolution comes from the ledger entry.
    Replayed,
    /// Not sent now.
    Deferred {
        reason: String,
        retry_at: Option<EpochMillis>,
        /// After an ambiguous answer the claim is kept until its lease ends, so no other
        /// invocation sends while the first call may still be delivering.
        keep_claim: bool,
    },
}

/// A valid message in the run.
#[derive(Debug)]
struct Work {
    record: usize,
    /// The message as received (all recipients), for the events.
    original: OutboundMessage,
    /// The message to send: suppressed recipients left out (`None` until suppression is known
    /// or when none remain).
    message: Option<OutboundMessage>,
    suppressed: BTreeSet<String>,
    claim: Option<Claim>,
    candidates: Vec<usize>,
    /// Routed gateways beyond `routing.max_failover_attempts`, in order: each gateway that
    /// answers `Unsuitable` hands its place to the next of them.
    reserve: Vec<usize>,
    /// How many candidates answered `Unsuitable`.
    unsuitable: usize,
    cursor: usize,
    attempts: Vec<AttemptRecord>,
    /// The earliest time a candidate said it can take the message again.
    retry_at: Option<EpochMillis>,
    /// Whether a candidate failed without saying when to retry (a 5xx, a connect error): the
    /// message is then also worth retrying after the ordinary backoff, even when another
    /// candidate's known time (an hourly limit, say) is much later.
    retry_unknown: bool,
    notes: Vec<String>,
    last_gateway: Option<usize>,
    stage: Stage,
}

impl Work {
    fn defer(&mut self, reason: String, retry_at: Option<EpochMillis>) {
        self.stage = Stage::Deferred {
            reason,
            retry_at: earliest(self.retry_at, retry_at),
            keep_claim: false,
        };
    }

    fn note(&mut self, note: String, retry_at: Option<EpochMillis>) {
        self.notes.push(note);
        self.retry_at = earliest(self.retry_at, retry_at);
        self.retry_unknown |= retry_at.is_none();
    }

    /// Deferred because every candidate was tried or busy; rejected when every candidate said it
    /// cannot take the message (over its recipient or size limits), since no retry changes that.
    fn exhausted(&mut self) {
        if self.unsuitable > 0 && self.unsuitable == self.candidates.len() {
            self.stage = Stage::Rejected {
                reason: truncate(format!(
                    "no gateway can take the message: {}",
                    self.notes.join("; ")
                )),
            };
            return;
        }
        let reason = if self.notes.is_empty() {
            "no gateway can take the message now".to_owned()
        } else {
            self.notes.join("; ")
        };
        let retry_at = self.retry_at;
        self.defer(reason, retry_at);
    }
}

/// What became of one record before the events are emitted.
#[derive(Debug)]
enum Slot {
    /// Not a valid message.
    Poison {
        message_id: String,
        error: MessageError,
    },
    /// The same message id as an earlier record of this batch: it follows that record.
    DuplicateOf { first: usize, message_id: String },
    /// A valid message (index into the works).
    Work(usize),
}

/// What a record resolves to.
#[derive(Debug)]
struct Resolution {
    outcome: Outcome,
    replayed: bool,
    gateway: Option<String>,
    reason: Option<String>,
    retry: Option<Duration>,
    event: Option<OutcomeEvent>,
}

fn earliest(a: Option<EpochMillis>, b: Option<EpochMillis>) -> Option<EpochMillis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn truncate(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(MAX_REASON_CHARS) {
        s.truncate(i);
        s.push('…');
    }
    s
}

/// One provider call to make.
struct SendJob {
    work: usize,
    gateway: usize,
    admission: Admission,
    grant: Grant,
    provider: Arc<dyn Provider>,
    message: OutboundMessage,
}

/// The answer to one [`SendJob`].
struct SendResult {
    job: SendJob,
    result: Result<Accepted, SendError>,
    started: EpochMillis,
    latency_ms: u64,
}

impl Pipeline {
    /// Processes one batch and reports what to do with each record (in record order). Never
    /// fails as a whole: a record whose fate cannot be settled now (state store down, events
    /// not emitted) is reported as a retry, and every retry is safe because the ledger decides
    /// what a redelivery does.
    pub async fn process(&self, batch: Batch<'_>) -> BatchReport {
        let now = self.clock.now_ms();
        let mut report = BatchReport {
            metrics: Metrics {
                records: u32::try_from(batch.records.len()).unwrap_or(u32::MAX),
                ..Metrics::default()
            },
            ..BatchReport::default()
        };

        // 1. Parse every record on its own.
        let mut slots = Vec::with_capacity(batch.records.len());
        let mut works: Vec<Work> = Vec::new();
        let mut first_of: HashMap<String, usize> = HashMap::new();
        for (i, record) in batch.records.iter().enumerate() {
            let fallback = (!record.message_id.is_empty()).then_some(record.message_id.as_str());
            match parse_message(record.body.as_bytes(), fallback) {
                Ok(message) => {
                    if let Some(&first) = first_of.get(message.id()) {
                        slots.push(Slot::DuplicateOf {
                            first,
                            message_id: message.id().to_owned(),
                        });
                        continue;
                    }
                    first_of.insert(message.id().to_owned(), i);
                    slots.push(Slot::Work(works.len()));
                    works.push(Work {
                        record: i,
                        original: message,
                        message: None,
                        suppressed: BTreeSet::new(),
                        claim: None,
                        candidates: Vec::new(),
                        reserve: Vec::new(),
                        unsuitable: 0,
                        cursor: 0,
                        attempts: Vec::new(),
                        retry_at: None,
                        retry_unknown: false,
                        notes: Vec::new(),
                        last_gateway: None,
                        stage: Stage::Pending,
                    });
                }
                Err(error) => {
                    let message_id = error
                        .id()
                        .map_or_else(|| record.message_id.clone(), str::to_owned);
                    slots.push(Slot::Poison { message_id, error });
                }
            }
        }

        // 2. Claims, suppression and gateway state in one round trip.
        let book = self.decider.keys(now);
        let reachable = self
            .decider
            .reachable(works.iter().map(|w| route_request(&w.original)));
        let list = self.decider.keys_to_read(&book, &reachable);
        let early = self
            .claim_and_read(&mut works, &batch, list.keys(), now)
            .await;
        let (replays, state) = match early {
            Ok(found) => found,
            Err(reason) => {
                for w in works
                    .iter_mut()
                    .filter(|w| matches!(w.stage, Stage::Pending))
                {
                    w.defer(reason.clone(), None);
                }
                (HashMap::new(), Vec::new())
            }
        };
        // Aligned with the read list; empty when the read failed (nothing is sent then).
        let state = list.read(&state);

        report.metrics.suppressed_recipients =
            u32::try_from(works.iter().map(|w| w.suppressed.len()).sum::<usize>())
                .unwrap_or(u32::MAX);

        // 3. Route on the state read.
        self.route_all(&mut works, &state, &book, now);

        // 4. Rounds of limits, breaker and sends.
        let mut tallies: BTreeMap<usize, Tally> = BTreeMap::new();
        self.send_rounds(&mut works, &state, &batch, &mut tallies, &mut report)
            .await;

        // 5. Settle the ledger and the breakers. A failure is marked with the time its event
        // carries, so a redelivery rebuilds that event exactly.
        self.finish(&works, &state, &tallies, now, &mut report)
            .await;

        // 6. Events and dispositions.
        let resolved = self.resolve(&slots, &works, &replays, batch.records, now);
        self.emit_and_report(batch.records, &slots, resolved, &mut report)
            .await;
        report
    }

    /// Step 2: claims every message, looks up the suppression of every recipient and reads the
    /// breaker, limit and health `keys` of every gateway any message may use, all in flight
    /// together. The health records ride in the same `BatchGetItem`: no request of their own,
    /// and always as fresh as the checker left them.
    /// Returns the replays (messages found in the ledger) and the items read; an error when
    /// suppression or state could not be read (nothing may be sent then).
    async fn claim_and_read(
        &self,
        works: &mut [Work],
        batch: &Batch<'_>,
        keys: &[Key],
        now: EpochMillis,
    ) -> Result<(HashMap<usize, Replay>, Vec<Option<Item>>), String> {
        if works.is_empty() {
            return Ok((HashMap::new(), Vec::new()));
        }
        let claims: Vec<ClaimRequest<'_>> = works
            .iter()
            .map(|w| ClaimRequest {
                message_id: w.original.id(),
                owner: batch.owner,
                lease_until: batch.deadline,
            })
            .collect();
        let addresses: Vec<&str> = works
            .iter()
            .flat_map(|w| w.original.recipients().map(|(_, m)| m.address().as_str()))
            .collect();
        let store = self.store.as_ref();
        let (claimed, suppressed, items) = tokio::join!(
            ledger::claim_many(store, &claims, now),
            suppression::lookup_many(store, &addresses),
            crate::state::get_all(store, keys),
        );

        let mut replays = HashMap::new();
        for (w, outcome) in works.iter_mut().zip(claimed) {
            let id = w.original.id().to_owned();
            match outcome {
                Ok(ClaimOutcome::Claimed(claim)) => {
                    if let Some(r) = &claim.reclaimed {
                        tracing::warn!(
                            message_id = %id,
                            previous_owner = %r.previous_owner,
                            "reclaimed an expired lease: the earlier invocation may have sent this message"
                        );
                        w.notes.push(format!(
                            "reclaimed from the expired lease of {}: that attempt may have sent it",
                            r.previous_owner
                        ));
                    }
                    w.claim = Some(claim);
                }
                Ok(ClaimOutcome::AlreadySent(record)) => {
                    replays.insert(w.record, Replay::Sent(record));
                    w.stage = Stage::Replayed;
                }
                Ok(ClaimOutcome::AlreadyFailed(record)) => {
                    replays.insert(w.record, Replay::Failed(record));
                    w.stage = Stage::Replayed;
                }
                Ok(ClaimOutcome::Held { until }) => {
                    replays.insert(w.record, Replay::Held { until });
                    w.stage = Stage::Replayed;
                }
                Err(error) => {
                    tracing::warn!(message_id = %id, error_kind = "ledger", %error, "claim failed; deferring");
                    // No claim is held, so there is nothing to release.
                    w.defer(format!("ledger unavailable ({error})"), None);
                }
            }
        }

        let suppressed = suppressed.map_err(|error| {
            tracing::warn!(error_kind = "suppression", %error, "suppression lookup failed; deferring the batch");
            "suppression list unavailable".to_owned()
        })?;
        let items = items.map_err(|error| {
            tracing::warn!(error_kind = "state", %error, "gateway state read failed; deferring the batch");
            "gateway state unavailable".to_owned()
        })?;

        let mut listed = suppressed.into_iter();
        for w in works.iter_mut() {
            for (_, mailbox) in w.original.recipients() {
                if let Some(Some(_)) = listed.next() {
                    w.suppressed
                        .insert(suppression::canonical(mailbox.address().as_str()));
                }
            }
            let suppressed = &w.suppressed;
            w.message = w
                .original
                .without_recipients(|a| suppressed.contains(&suppression::canonical(a.as_str())));
        }
        Ok((replays, items))
    }

    /// Step 3: the ordered candidates of every claimed message, on the state read.
    fn route_all(
        &self,
        works: &mut [Work],
        state: &Read<'_, Item>,
        book: &KeyBook,
        now: EpochMillis,
    ) {
        let config = self.decider.config();
        // Borrowed, not copied: a day item holds every sender's counter.
        let states = self.decider.view(book, state, now);
        let max = config.routing.max_failover_attempts.get() as usize;
        for w in works.iter_mut() {
            if !matches!(w.stage, Stage::Pending) || w.claim.is_none() {
                continue;
            }
            if let Some(at) = w.original.expires_at()
                && at <= now
            {
                w.stage = Stage::Expired {
                    reason: format!(
                        "expired: not sent by its expires_at {}",
                        crate::clock::format_rfc3339(at)
                    ),
                };
                continue;
            }
            if w.message.is_none() {
                w.stage = Stage::Rejected {
                    reason: "every recipient is on the suppression list".to_owned(),
                };
                continue;
            }
            let plan = self
                .decider
                .router()
                .route(&route_request(&w.original), &states, now);
            let mut ranked = plan.candidates.iter().map(|c| c.index);
            w.candidates = ranked.by_ref().take(max).collect();
            w.reserve = ranked.collect();
            if w.candidates.is_empty() {
                let mut retry_at = None;
                let mut reasons = Vec::new();
                for d in &plan.dropped {
                    if let crate::router::DropReason::BreakerOpen { until } = d.reason {
                        retry_at = earliest(retry_at, Some(until));
                    }
                    reasons.push(format!("{}: {}", d.gateway.id, d.reason));
                }
                if let Some(pin) = &plan.pin {
                    reasons.push(format!(
                        "pinned gateway {:?}: {}",
                        w.original.gateway().unwrap_or_default(),
                        pin.code()
                    ));
                }
                let reason = if reasons.is_empty() {
                    "no gateway is configured for this sender".to_owned()
                } else {
                    format!("no usable gateway ({})", reasons.join("; "))
                };
                tracing::warn!(message_id = %w.original.id(), outcome = "deferred", reason = %redact_addresses(&reason), "no candidate gateway");
                w.defer(reason, retry_at);
            }
        }
    }

    /// Step 4: rounds of limit acquisition, breaker admission and sends until every message
    /// is sent, failed or deferred.
    async fn send_rounds(
        &self,
        works: &mut [Work],
        state: &Read<'_, Item>,
        batch: &Batch<'_>,
        tallies: &mut BTreeMap<usize, Tally>,
        report: &mut BatchReport,
    ) {
        let config = Arc::clone(self.decider.config());
        let margin = i64::try_from(self.settings.deadline_margin.as_millis()).unwrap_or(i64::MAX);
        loop {
            let now = self.clock.now_ms();
            let book = self.decider.keys(now);
            let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for (i, w) in works.iter_mut().enumerate() {
                if !matches!(w.stage, Stage::Pending) || w.claim.is_none() {
                    continue;
                }
                match w.candidates.get(w.cursor) {
                    Some(&g) => groups.entry(g).or_default().push(i),
                    None => w.exhausted(),
                }
            }
            if groups.is_empty() {
                return;
            }
            if now.saturating_add(margin) >= batch.deadline {
                for &i in groups.values().flatten() {
                    let w = &mut works[i];
                    w.note(
                        "the invocation's deadline is near; not started".to_owned(),
                        None,
                    );
                    w.exhausted();
                }
                return;
            }

            // Limits, one decision per gateway, all gateways in flight together.
            let decisions = join_all(groups.iter().map(|(&g, members)| {
                let items: Vec<(usize, String, u64)> = members
                    .iter()
                    .map(|&i| {
                        let w = &works[i];
                        let count = w.message.as_ref().map_or(0, |m| m.recipient_count());
                        (i, w.original.sender().as_str().to_owned(), count as u64)
                    })
                    .collect();
                let plan = self.decider.limit_plan(&book, g, now);
                let cached: Vec<Option<Cow<'_, Item>>> = state
                    .limits(g, &plan)
                    .into_iter()
                    .take(plan.keys().len())
                    .map(|i| i.map(Cow::Borrowed))
                    .collect();
                async move {
                    let requests: Vec<Request<'_>> = items
                        .iter()
                        .map(|(_, sender, n)| Request {
                            sender,
                            recipients: *n,
                        })
                        .collect();
                    let verdicts =
                        limiter::acquire_with_items(self.store.as_ref(), &plan, &requests, cached)
                            .await;
                    (g, items, verdicts)
                }
            }))
            .await;

            // Breaker admission of every admitted message.
            let mut admitted: Vec<(usize, usize, Grant)> = Vec::new();
            let mut refunds: Vec<Grant> = Vec::new();
            for (g, items, verdicts) in decisions {
                let gateway = &config.gateways[g];
                match verdicts {
                    Ok(verdicts) => {
                        for ((i, _, _), verdict) in items.into_iter().zip(verdicts) {
                            match verdict {
                                Verdict::Admit(grant) => admitted.push((i, g, grant)),
                                Verdict::Refuse(refusal) => {
                                    report.metrics.gateway(&gateway.id).limited += 1;
                                    let w = &mut works[i];
                                    w.note(
                                        format!("{}: {}", gateway.id, describe_refusal(&refusal)),
                                        refusal.retry_after(),
                                    );
                                    w.cursor += 1;
                                }
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(gateway = %gateway.id, error_kind = "limiter", %error, "rate-limit state unavailable");
                        for (i, _, _) in items {
                            let w = &mut works[i];
                            w.note(
                                format!("{}: rate-limit state unavailable", gateway.id),
                                None,
                            );
                            w.cursor += 1;
                        }
                    }
                }
            }
            let permits = join_all(admitted.iter().map(|&(_, g, _)| {
                let gateway = &config.gateways[g];
                let item = state.breaker(g).map(Cow::Borrowed);
                breaker::permit_send_with_item(
                    self.store.as_ref(),
                    &gateway.id,
                    &gateway.circuit_breaker,
                    item,
                    now,
                )
            }))
            .await;
            let mut jobs = Vec::new();
            for ((i, g, grant), permit) in admitted.into_iter().zip(permits) {
                let gateway = &config.gateways[g];
                let w = &mut works[i];
                let provider = self.providers.get(&gateway.id).cloned();
                let admission = match permit {
                    Ok(p) => {
                        if let Some(t) = p.transition {
                            tracing::info!(gateway = %t.gateway, from = %t.from, to = %t.to, "breaker transition");
                            report.transitions.push(t);
                        }
                        if let Some(m) = p.malformed {
                            tracing::warn!(gateway = %gateway.id, problem = ?m, "breaker item does not decode; treated as closed");
                        }
                        p.admission
                    }
                    Err(error) => {
                        tracing::warn!(gateway = %gateway.id, error_kind = "breaker", %error, "breaker state unavailable");
                        refunds.push(grant);
                        w.note(format!("{}: breaker state unavailable", gateway.id), None);
                        w.cursor += 1;
                        continue;
                    }
                };
                match (admission, provider, w.message.clone()) {
                    (Admission::Rejected { until }, _, _) => {
                        report.metrics.gateway(&gateway.id).breaker_rejected += 1;
                        refunds.push(grant);
                        w.note(format!("{}: circuit breaker open", gateway.id), Some(until));
                        w.cursor += 1;
                    }
                    (_, None, _) | (_, _, None) => {
                        refunds.push(grant);
                        w.note(format!("{}: no provider client", gateway.id), None);
                        w.cursor += 1;
                    }
                    (admission, Some(provider), Some(message)) => jobs.push(SendJob {
                        work: i,
                        gateway: g,
                        admission,
                        grant,
                        provider,
                        message,
                    }),
                }
            }

            // The sends, bounded.
            let deadline = batch.deadline;
            let results: Vec<SendResult> = stream::iter(jobs)
                .map(|job| self.call(job, deadline))
                .buffer_unordered(self.settings.concurrency.get())
                .collect()
                .await;

            let mut sent_now: Vec<(Claim, SentRecord)> = Vec::new();
            for r in results {
                let SendJob {
                    work,
                    gateway: g,
                    admission,
                    grant,
                    ..
                } = r.job;
                let gateway = &config.gateways[g];
                let w = &mut works[work];
                w.last_gateway = Some(g);
                let class = match &r.result {
                    Ok(_) => OutcomeClass::Ok,
                    Err(e) => e.class().outcome(),
                };
                tallies.entry(g).or_default().record(admission, class);
                let m = report.metrics.gateway(&gateway.id);
                m.attempts += 1;
                m.latencies_ms.push(r.latency_ms);
                w.attempts.push(AttemptRecord {
                    gateway: gateway.id.clone(),
                    gateway_type: gateway.kind.as_str().to_owned(),
                    class,
                    http_status: r.result.as_ref().err().and_then(|e| e.http_status),
                    latency_ms: r.latency_ms,
                    error: r.result.as_ref().err().map(|e| truncate(e.detail.clone())),
                    at: r.started,
                });
                match r.result {
                    Ok(accepted) => {
                        m.sent += 1;
                        tracing::info!(message_id = %w.original.id(), gateway = %gateway.id, latency_ms = r.latency_ms, outcome = "sent", "provider accepted");
                        let at = r.started.saturating_add(r.latency_ms as i64);
                        if let Some(claim) = &w.claim {
                            sent_now.push((
                                claim.clone(),
                                SentRecord {
                                    gateway: gateway.id.clone(),
                                    provider_message_id: accepted.provider_message_id.clone(),
                                    at,
                                },
                            ));
                        }
                        w.stage = Stage::Sent {
                            gateway: g,
                            accepted,
                            at,
                        };
                    }
                    Err(e) => {
                        let kind = e.class();
                        tracing::warn!(message_id = %w.original.id(), gateway = %gateway.id, latency_ms = r.latency_ms, error_kind = ?kind, error = %redact_addresses(&e.to_string()), "provider call failed");
                        match kind {
                            ErrorClass::Permanent => {
                                m.permanent += 1;
                                refunds.push(grant);
                                w.stage = Stage::Failed {
                                    gateway: g,
                                    reason: truncate(format!(
                                        "{} refused it permanently: {}",
                                        gateway.id, e.detail
                                    )),
                                };
                            }
                            ErrorClass::Unsuitable => {
                                m.permanent += 1;
                                refunds.push(grant);
                                w.note(
                                    format!("{}: cannot take it: {}", gateway.id, e.detail),
                                    None,
                                );
                                // Not an attempt that failed: the next routed gateway, if any,
                                // takes its place within the failover bound.
                                w.unsuitable += 1;
                                if !w.reserve.is_empty() {
                                    w.candidates.push(w.reserve.remove(0));
                                }
                                w.cursor += 1;
                            }
                            ErrorClass::Throttled | ErrorClass::Unavailable | ErrorClass::Auth => {
                                match kind {
                                    ErrorClass::Throttled => m.throttled += 1,
                                    ErrorClass::Auth => m.auth += 1,
                                    _ => m.unavailable += 1,
                                }
                                refunds.push(grant);
                                w.note(
                                    format!("{}: {}", gateway.id, truncate(e.to_string())),
                                    e.retry_after(),
                                );
                                w.cursor += 1;
                                if w.cursor < w.candidates.len() {
                                    report.metrics.failovers += 1;
                                }
                            }
                            ErrorClass::Ambiguous => {
                                m.ambiguous += 1;
                                // The provider may have it: its quota stays consumed.
                                match config.routing.ambiguous_policy {
                                    AmbiguousPolicy::Defer => {
                                        w.stage = Stage::Deferred {
                                            reason: format!(
                                                "{}: no answer after the request was sent; the provider may have accepted it (retried after this invocation's lease, possible duplicate)",
                                                gateway.id
                                            ),
                                            retry_at: Some(deadline),
                                            keep_claim: true,
                                        };
                                    }
                                    AmbiguousPolicy::Failover => {
                                        w.note(
                                            format!("{}: no answer (ambiguous); failed over, possible duplicate", gateway.id),
                                            None,
                                        );
                                        w.cursor += 1;
                                        if w.cursor < w.candidates.len() {
                                            report.metrics.failovers += 1;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }

            // Record the sends at once (the smaller the window between a send and its mark,
            // the fewer duplicates a crash can cause), and give back unused limits.
            let store = self.store.as_ref();
            let now = self.clock.now_ms();
            let (marked, refunded) = tokio::join!(
                async {
                    if sent_now.is_empty() {
                        return Ok(());
                    }
                    let mut last = Ok(());
                    for _ in 0..MARK_TRIES {
                        last = ledger::mark_sent_many(store, &sent_now, now).await;
                        if last.is_ok() {
                            break;
                        }
                    }
                    last
                },
                async {
                    if refunds.is_empty() {
                        return Ok(limiter::RefundOutcome::Returned);
                    }
                    limiter::refund(store, &refunds, now).await
                },
            );
            if let Err(error) = marked {
                // The sends are real; their outcome events carry the record. Their SQS
                // records are acknowledged once the events are out, so no redelivery sends
                // them again while the ledger still shows the claim.
                for (claim, _) in &sent_now {
                    tracing::error!(message_id = %claim.message_id, error_kind = "ledger", %error, "sent but not recorded in the ledger");
                }
            }
            if let Err(error) = refunded {
                tracing::warn!(error_kind = "limiter", %error, "limits of unsent messages not given back; they stay consumed");
            }
        }
    }

    /// One provider call, abandoned as ambiguous if it has not answered shortly before the
    /// deadline.
    async fn call(&self, job: SendJob, deadline: EpochMillis) -> SendResult {
        let started = self.clock.now_ms();
        let budget = Duration::from_millis(
            u64::try_from(deadline.saturating_sub(started).saturating_sub(250)).unwrap_or(0),
        );
        let t0 = Instant::now();
        let result =
            match tokio::time::timeout(budget, job.provider.send(&job.message, started)).await {
                Ok(result) => result,
                Err(_) => Err(SendError::new(
                    ErrorClass::Ambiguous,
                    "pipeline",
                    "no answer before the invocation's deadline",
                )),
            };
        let latency_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        SendResult {
            job,
            result,
            started,
            latency_ms,
        }
    }

    /// Step 5: terminal failures marked, deferred claims released, breaker outcomes flushed,
    /// all in flight together.
    async fn finish(
        &self,
        works: &[Work],
        state: &Read<'_, Item>,
        tallies: &BTreeMap<usize, Tally>,
        decided_at: EpochMillis,
        report: &mut BatchReport,
    ) {
        let config = self.decider.config();
        let now = self.clock.now_ms();
        let store = self.store.as_ref();
        let ledger_writes = join_all(works.iter().filter_map(|w| {
            let claim = w.claim.as_ref()?;
            match &w.stage {
                Stage::Failed { gateway, reason } => {
                    let gateway = config.gateways.get(*gateway).map(|g| g.id.as_str());
                    Some(futures::future::Either::Left(ledger::mark_failed(
                        store, claim, reason, gateway, decided_at,
                    )))
                }
                Stage::Rejected { reason } | Stage::Expired { reason } => {
                    Some(futures::future::Either::Left(ledger::mark_failed(
                        store, claim, reason, None, decided_at,
                    )))
                }
                Stage::Deferred {
                    keep_claim: false, ..
                } => Some(futures::future::Either::Right(ledger::release(
                    store, claim, now,
                ))),
                _ => None,
            }
        }));
        let flushes = join_all(
            tallies
                .iter()
                .filter(|(_, t)| !t.is_empty())
                .map(|(&g, tally)| {
                    let gateway: &Gateway = &config.gateways[g];
                    let item = state.breaker(g).cloned();
                    // A closed breaker read at the start is good enough: any change since makes the
                    // conditional write fail and the decision is taken again on the fresh item. An
                    // open or half-open one is read again, because this batch's own trial writes
                    // (or another instance's) may have moved it, and an open breaker decides "no
                    // write", which would never discover that.
                    let closed = breaker::view(item.as_ref(), now) == breaker::BreakerView::Closed;
                    async move {
                        if closed {
                            breaker::flush_outcomes_with_item(
                                store,
                                &gateway.id,
                                &gateway.circuit_breaker,
                                tally,
                                item,
                                now,
                            )
                            .await
                        } else {
                            breaker::flush_outcomes(
                                store,
                                &gateway.id,
                                &gateway.circuit_breaker,
                                tally,
                                now,
                            )
                            .await
                        }
                    }
                }),
        );
        let (marks, flushed) = tokio::join!(ledger_writes, flushes);
        for result in marks {
            if let Err(error) = result {
                tracing::warn!(error_kind = "ledger", %error, "ledger update after the sends failed; a redelivery will decide again");
            }
        }
        for result in flushed {
            match result {
                Ok(outcome) => {
                    if let Some(t) = outcome.transition {
                        tracing::warn!(gateway = %t.gateway, from = %t.from, to = %t.to, "breaker transition");
                        report.transitions.push(t);
                    }
                }
                Err(error) => {
                    tracing::warn!(error_kind = "breaker", %error, "breaker outcomes not recorded");
                }
            }
        }
    }

    /// Every record's outcome and event.
    fn resolve(
        &self,
        slots: &[Slot],
        works: &[Work],
        replays: &HashMap<usize, Replay>,
        records: &[Received],
        now: EpochMillis,
    ) -> Vec<Option<Resolution>> {
        let config = self.decider.config();
        let backoff = &self.settings.backoff;
        let gateway_type = |id: &str| config.gateway(id).map(|g| g.kind.as_str().to_owned());
        slots
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let receive_count = records.get(i).map_or(1, |r| r.receive_count);
                match slot {
                    Slot::DuplicateOf { .. } => None,
                    Slot::Poison { message_id, error } => {
                        let reason = truncate(format!("invalid message: {error}"));
                        tracing::warn!(message_id = %message_id, outcome = "rejected", reason = %reason, "poison record");
                        Some(Resolution {
                            outcome: Outcome::Rejected,
                            replayed: false,
                            gateway: None,
                            reason: Some(reason.clone()),
                            retry: None,
                            event: Some(OutcomeEvent {
                                message_id: message_id.clone(),
                                sender: error
                                    .sender()
                                    .map(|s| s.as_str().to_owned())
                                    .unwrap_or_default(),
                                subject: String::new(),
                                campaign_id: None,
                                user_id: None,
                                tags: Vec::new(),
                                metadata: BTreeMap::new(),
                                recipients: error
                                    .recipients()
                                    .iter()
                                    .map(|(kind, m)| RecipientOutcome {
                                        address: m.address().as_str().to_owned(),
                                        kind: *kind,
                                        status: RecipientStatus::Rejected,
                                    })
                                    .collect(),
                                outcome: Outcome::Rejected,
                                gateway_id: None,
                                gateway_type: None,
                                provider_message_id: None,
                                attempts: Vec::new(),
                                reason: Some(reason),
                                retry_at: None,
                                at: now,
                            }),
                        })
                    }
                    Slot::Work(index) => {
                        let w = works.get(*index)?;
                        let id = w.original.id();
                        if let Some(replay) = replays.get(&w.record) {
                            return Some(match replay {
                                Replay::Sent(record) => {
                                    tracing::info!(message_id = %id, gateway = %record.gateway, outcome = "sent", "redelivered message already sent; event re-emitted, nothing sent");
                                    let mut event = base_event(w, Outcome::Sent, RecipientStatus::Sent, record.at);
                                    event.gateway_type = gateway_type(&record.gateway);
                                    event.gateway_id = Some(record.gateway.clone());
                                    event.provider_message_id = record.provider_message_id.clone();
                                    Resolution {
                                        outcome: Outcome::Sent,
                                        replayed: true,
                                        gateway: Some(record.gateway.clone()),
                                        reason: None,
                                        retry: None,
                                        event: Some(event),
                                    }
                                }
                                Replay::Failed(record) => {
                                    // The event of the first failure, rebuilt field for field
                                    // (its provider attempts are recorded already), so the
                                    // record it lands on stays as it is.
                                    let mut event = base_event(w, Outcome::Failed, RecipientStatus::Failed, record.at);
                                    event.reason = Some(record.reason.clone());
                                    event.gateway_id.clone_from(&record.gateway);
                                    event.gateway_type = record.gateway.as_deref().and_then(gateway_type);
                                    Resolution {
                                        outcome: Outcome::Failed,
                                        replayed: true,
                                        gateway: record.gateway.clone(),
                                        reason: Some(record.reason.clone()),
                                        retry: None,
                                        event: Some(event),
                                    }
                                }
                                Replay::Held { until } => {
                                    let reason = "another invocation is sending it".to_owned();
                                    tracing::info!(message_id = %id, outcome = "deferred", "held by another invocation's live lease");
                                    Resolution {
                                        outcome: Outcome::Deferred,
                                        replayed: true,
                                        gateway: None,
                                        reason: Some(reason),
                                        retry: Some(backoff.until(*until, now, id, receive_count)),
                                        // That invocation reports the outcome.
                                        event: None,
                                    }
                                }
                            });
                        }
                        let gateway = |g: Option<usize>| g.and_then(|g| config.gateways.get(g));
                        let notes = (!w.notes.is_empty()).then(|| w.notes.join("; "));
                        Some(match &w.stage {
                            Stage::Sent {
                                gateway: g,
                                accepted,
                                at,
                            } => {
                                let gw = gateway(Some(*g));
                                let mut event = base_event(w, Outcome::Sent, RecipientStatus::Sent, *at);
                                event.gateway_id = gw.map(|g| g.id.clone());
                                event.gateway_type = gw.map(|g| g.kind.as_str().to_owned());
                                event.provider_message_id = accepted.provider_message_id.clone();
                                event.reason = notes.clone().map(truncate);
                                Resolution {
                                    outcome: Outcome::Sent,
                                    replayed: false,
                                    gateway: event.gateway_id.clone(),
                                    reason: notes,
                                    retry: None,
                                    event: Some(event),
                                }
                            }
                            Stage::Failed { gateway: g, reason } => {
                                let gw = gateway(Some(*g));
                                tracing::warn!(message_id = %id, gateway = gw.map_or("", |g| g.id.as_str()), outcome = "failed", "permanently refused");
                                let mut event = base_event(w, Outcome::Failed, RecipientStatus::Failed, now);
                                event.gateway_id = gw.map(|g| g.id.clone());
                                event.gateway_type = gw.map(|g| g.kind.as_str().to_owned());
                                event.reason = Some(reason.clone());
                                Resolution {
                                    outcome: Outcome::Failed,
                                    replayed: false,
                                    gateway: event.gateway_id.clone(),
                                    reason: Some(reason.clone()),
                                    retry: None,
                                    event: Some(event),
                                }
                            }
                            Stage::Rejected { reason } => {
                                tracing::info!(message_id = %id, outcome = "rejected", reason = %redact_addresses(reason), "not sent");
                                let mut event = base_event(w, Outcome::Rejected, RecipientStatus::Rejected, now);
                                event.reason = Some(reason.clone());
                                Resolution {
                                    outcome: Outcome::Rejected,
                                    replayed: false,
                                    gateway: None,
                                    reason: Some(reason.clone()),
                                    retry: None,
                                    event: Some(event),
                                }
                            }
                            Stage::Expired { reason } => {
                                tracing::warn!(message_id = %id, outcome = "failed", reason = %reason, "not sent");
                                let mut event = base_event(w, Outcome::Failed, RecipientStatus::Failed, now);
                                event.reason = Some(reason.clone());
                                Resolution {
                                    outcome: Outcome::Failed,
                                    replayed: false,
                                    gateway: None,
                                    reason: Some(reason.clone()),
                                    retry: None,
                                    event: Some(event),
                                }
                            }
                            Stage::Deferred {
                                reason, retry_at, keep_claim,
                            } => {
                                // The earliest of the known times, and of the backoff when a
                                // candidate failed without one. After an ambiguous answer the
                                // claim's lease must end first, so its time stands.
                                let after = match retry_at {
                                    None => backoff.delay(id, receive_count),
                                    Some(at) if w.retry_unknown && !keep_claim => backoff
                                        .until(*at, now, id, receive_count)
                                        .min(backoff.delay(id, receive_count)),
                                    Some(at) => backoff.until(*at, now, id, receive_count),
                                };
                                // Back at the send-by time at the latest, to be failed then.
                                let after = match w.original.expires_at() {
                                    Some(at) => after.min(Duration::from_millis(
                                        u64::try_from(at.saturating_sub(now)).unwrap_or(0),
                                    ) + Duration::from_secs(1)),
                                    None => after,
                                };
                                let gw = gateway(w.last_gateway);
                                if let Some(max) = self.settings.max_receive_count
                                    && receive_count >= max
                                {
                                    let first_sent = records.get(i).map_or(now, |r| r.sent_at);
                                    let over = Duration::from_millis(u64::try_from(now.saturating_sub(first_sent)).unwrap_or(0));
                                    let reason = truncate(format!(
                                        "gave up after {receive_count} receives over {}; last: {reason}",
                                        format_duration(over)
                                    ));
                                    tracing::error!(message_id = %id, outcome = "failed", reason = %redact_addresses(&reason), "last receive the queue allows; recorded as failed and handed to the dead-letter queue");
                                    let mut event = base_event(w, Outcome::Failed, RecipientStatus::Failed, now);
                                    event.gateway_id = gw.map(|g| g.id.clone());
                                    event.gateway_type = gw.map(|g| g.kind.as_str().to_owned());
                                    event.reason = Some(reason.clone());
                                    return Some(Resolution {
                                        outcome: Outcome::Failed,
                                        replayed: false,
                                        gateway: event.gateway_id.clone(),
                                        reason: Some(reason),
                                        // Visible at once: the next receive moves it to the
                                        // dead-letter queue, from where a redrive can send it.
                                        retry: Some(Duration::ZERO),
                                        event: Some(event),
                                    });
                                }
                                let retry_at_ms = now.saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX));
                                let reason = truncate(reason.clone());
                                tracing::info!(message_id = %id, outcome = "deferred", reason = %redact_addresses(&reason), retry_in_s = after.as_secs(), "deferred");
                                let mut event = base_event(w, Outcome::Deferred, RecipientStatus::Deferred, now);
                                event.gateway_id = gw.map(|g| g.id.clone());
                                event.gateway_type = gw.map(|g| g.kind.as_str().to_owned());
                                event.reason = Some(reason.clone());
                                event.retry_at = Some(retry_at_ms);
                                Resolution {
                                    outcome: Outcome::Deferred,
                                    replayed: false,
                                    gateway: event.gateway_id.clone(),
                                    reason: Some(reason),
                                    retry: Some(after),
                                    event: Some(event),
                                }
                            }
                            Stage::Pending | Stage::Replayed => {
                                // Unreachable after the rounds; defer rather than lose it.
                                Resolution {
                                    outcome: Outcome::Deferred,
                                    replayed: false,
                                    gateway: None,
                                    reason: Some("not processed".to_owned()),
                                    retry: Some(backoff.delay(id, receive_count)),
                                    event: None,
                                }
                            }
                        })
                    }
                }
            })
            .collect()
    }

    /// Step 6: emits the events and turns resolutions into the report.
    async fn emit_and_report(
        &self,
        records: &[Received],
        slots: &[Slot],
        resolved: Vec<Option<Resolution>>,
        report: &mut BatchReport,
    ) {
        // One outcome event per resolved record, emitted each on its own account: an event
        // that cannot go out holds up only its own record.
        let owners: Vec<usize> = resolved
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().and_then(|r| r.event.as_ref()).map(|_| i))
            .collect();
        let mut events: Vec<GatewayEvent> = owners
            .iter()
            .filter_map(|i| {
                resolved[*i]
                    .as_ref()?
                    .event
                    .clone()
                    .map(GatewayEvent::Outcome)
            })
            .collect();
        // Breaker transitions are recorded too (each one is performed, so reported, by exactly
        // one instance). If they cannot be emitted they are only logged: the breaker's state
        // itself is in the store, and retrying a batch for its history is not worth a resend
        // window.
        events.extend(
            report
                .transitions
                .iter()
                .map(|t| GatewayEvent::Breaker(t.into())),
        );
        let mut emitted = vec![true; records.len()];
        if !events.is_empty() {
            let results = self.events.emit_each(&events).await;
            let mut trimmed: Vec<(usize, GatewayEvent)> = Vec::new();
            for (k, result) in results.into_iter().enumerate() {
                let Err(error) = result else { continue };
                let Some(&record) = owners.get(k) else {
                    tracing::warn!(error_kind = "events", %error, "breaker transition event not emitted");
                    continue;
                };
                match (&error, &events[k]) {
                    // It can never go out as it is: send what the record needs without the
                    // client's free-form parts, rather than hold the message back for ever.
                    (
                        SinkError::TooLarge { .. } | SinkError::Serialize(_),
                        GatewayEvent::Outcome(e),
                    ) => {
                        tracing::warn!(message_id = %e.message_id, error_kind = "events", %error, "outcome event too large; emitting it without metadata and tags");
                        trimmed.push((record, GatewayEvent::Outcome(e.trimmed())));
                    }
                    _ => {
                        tracing::error!(error_kind = "events", %error, "outcome event not emitted; its message will be retried");
                        emitted[record] = false;
                    }
                }
            }
            if !trimmed.is_empty() {
                let shrunk: Vec<GatewayEvent> = trimmed.iter().map(|(_, e)| e.clone()).collect();
                for ((record, _), result) in
                    trimmed.iter().zip(self.events.emit_each(&shrunk).await)
                {
                    if let Err(error) = result {
                        tracing::error!(error_kind = "events", %error, "trimmed outcome event not emitted either; its message will be retried");
                        emitted[*record] = false;
                    }
                }
            }
            report.metrics.emit_failures =
                u32::try_from(emitted.iter().filter(|e| !**e).count()).unwrap_or(u32::MAX);
        }
        let backoff = &self.settings.backoff;
        let mut items: Vec<ItemReport> = Vec::with_capacity(records.len());
        for (i, (record, resolution)) in records.iter().zip(&resolved).enumerate() {
            let item = match (resolution, slots.get(i)) {
                (Some(r), _) => {
                    let message_id = match slots.get(i) {
                        Some(Slot::Poison { message_id, .. }) => Some(message_id.clone()),
                        _ => r.event.as_ref().map(|e| e.message_id.clone()),
                    };
                    let disposition = match r.retry {
                        Some(after) => Disposition::Retry { after },
                        None if r.event.is_some() && !emitted[i] => Disposition::Retry {
                            after: backoff.delay(
                                message_id.as_deref().unwrap_or(&record.message_id),
                                record.receive_count,
                            ),
                        },
                        None => Disposition::Done,
                    };
                    match (r.outcome, r.replayed) {
                        (_, true) if r.outcome != Outcome::Deferred => {
                            report.metrics.replayed += 1;
                        }
                        (Outcome::Sent, _) => report.metrics.sent += 1,
                        (Outcome::Failed, _) => report.metrics.failed += 1,
                        (Outcome::Rejected, _) => report.metrics.rejected += 1,
                        (Outcome::Deferred, _) => report.metrics.deferred += 1,
                    }
                    ItemReport {
                        queue_message_id: record.message_id.clone(),
                        receipt_handle: record.receipt_handle.clone(),
                        message_id: message_id.or_else(|| Some(record.message_id.clone())),
                        outcome: r.outcome,
                        replayed: r.replayed,
                        gateway: r.gateway.clone(),
                        reason: r.reason.clone(),
                        disposition,
                    }
                }
                (None, Some(Slot::DuplicateOf { first, message_id })) => {
                    // Same fate as its first copy, which is earlier in the batch.
                    let (outcome, gateway, disposition) = items.get(*first).map_or(
                        (
                            Outcome::Deferred,
                            None,
                            Disposition::Retry {
                                after: backoff.delay(message_id, record.receive_count),
                            },
                        ),
                        |f| (f.outcome, f.gateway.clone(), f.disposition),
                    );
                    report.metrics.replayed += 1;
                    ItemReport {
                        queue_message_id: record.message_id.clone(),
                        receipt_handle: record.receipt_handle.clone(),
                        message_id: Some(message_id.clone()),
                        outcome,
                        replayed: true,
                        gateway,
                        reason: Some("duplicate of another record in the same batch".to_owned()),
                        disposition,
                    }
                }
                (None, _) => ItemReport {
                    queue_message_id: record.message_id.clone(),
                    receipt_handle: record.receipt_handle.clone(),
                    message_id: None,
                    outcome: Outcome::Deferred,
                    replayed: false,
                    gateway: None,
                    reason: Some("not processed".to_owned()),
                    disposition: Disposition::Retry {
                        after: backoff.delay(&record.message_id, record.receive_count),
                    },
                },
            };
            items.push(item);
        }
        report.items = items;
    }
}

/// A redelivered message found in the ledger.
#[derive(Debug, Clone)]
enum Replay {
    Sent(SentRecord),
    Failed(FailedRecord),
    Held { until: EpochMillis },
}

fn route_request(message: &OutboundMessage) -> RouteRequest<'_> {
    RouteRequest {
        message_id: message.id(),
        sender: message.sender().as_str(),
        pinned: message.gateway(),
    }
}

fn describe_refusal(refusal: &Refusal) -> String {
    match refusal {
        Refusal::Exhausted { level, .. } => format!("{} limit reached", level.as_str()),
        Refusal::TooLarge { level, limit } => {
            format!(
                "message larger than the {} limit of {limit}",
                level.as_str()
            )
        }
        Refusal::Contended { .. } => "rate-limit state contended".to_owned(),
    }
}

/// The outcome event of a work with every recipient at `status`, suppressed ones `SUPPRESSED`.
fn base_event(
    w: &Work,
    outcome: Outcome,
    status: RecipientStatus,
    at: EpochMillis,
) -> OutcomeEvent {
    let mut event = OutcomeEvent::of_message(&w.original, outcome, status, at);
    for r in &mut event.recipients {
        if w.suppressed.contains(&suppression::canonical(&r.address)) {
            r.status = RecipientStatus::Suppressed;
        }
    }
    event.attempts.clone_from(&w.attempts);
    event
}
