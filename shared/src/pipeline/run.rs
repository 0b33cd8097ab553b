//! The batch run (see the module docs of [`super`] for the steps and their costs): the driver of
//! the I/O rounds. What each round's answers mean is decided in [`super::rules`].

use crate::address::redact_addresses;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, join_all};
use futures::stream::FuturesUnordered;
use futures::stream::{self, StreamExt};

use super::resolve::Resolver;
use super::rules::{self, ClaimAction, Findings, Reconcile, Skip};
use super::work::{Replay, Resolution, Slot, Stage, Work, truncate};
use super::{Batch, BatchReport, Disposition, ItemReport, KeyBook, Pipeline, Read};
use crate::breaker::{self, Admission, Tally};
use crate::clock::EpochMillis;
use crate::events::{AttemptRecord, GatewayEvent, Outcome, OutcomeClass, SinkError};
use crate::evidence;
use crate::ledger::{self, Claim, ClaimRequest, MarkOutcome, SentRecord};
use crate::limiter::{self, Grant, Request};
use crate::message::{OutboundMessage, Stream, parse_message};
use crate::providers::{Accepted, ErrorClass, Provider, SendError};
use crate::queue::Received;
use crate::router::{DropReason, RankScratch, RouteRequest, StaticRoute};
use crate::state::{Item, Key};
use crate::suppression;

/// How often a ledger write after a send is tried (each within the deadline) before the send
/// is left to the process's unmarked list and its event.
const MARK_TRIES: usize = 3;

/// Most sends kept for a later mark when the ledger could not be written ([`Pipeline`]'s
/// unmarked list); older ones are dropped with an error log.
const MAX_UNMARKED: usize = 1_000;

/// One provider call to make.
struct SendJob {
    work: usize,
    gateway: usize,
    admission: Admission,
    grant: Grant,
    provider: Arc<dyn Provider>,
    message: OutboundMessage,
    claim: Claim,
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
        let mut report = BatchReport::default();
        report.metrics.records = u32::try_from(batch.records.len()).unwrap_or(u32::MAX);

        // 1. Parse every record on its own.
        let (slots, mut works) = parse_records(batch.records);

        // 2. Claims, suppression and gateway state in one round trip.
        let book = self.decider.keys(now);
        let (reachable, fixed) = self
            .decider
            .reach(works.iter().map(|w| route_request(&w.original)));
        let list = self.decider.keys_to_read(&book, &reachable);
        // The pause-all lever (the last key) comes from a copy under a second old, if any.
        let all_slot = list.all_levers_slot();
        let recent_all = all_slot.and_then(|_| self.recent_all_levers(now));
        let read_keys = match (all_slot, &recent_all) {
            (Some(slot), Some(_)) => list.keys().get(..slot).unwrap_or_default(),
            _ => list.keys(),
        };
        // Once per process and UTC day, the limiter's earlier-layout day items ride along.
        let legacy = self.decider.legacy_keys(&book, &reachable, &self.leases);
        let keys: Cow<'_, [Key]> = if legacy.is_empty() {
            Cow::Borrowed(read_keys)
        } else {
            Cow::Owned([read_keys, &legacy].concat())
        };
        let (replays, state) = match self.claim_and_read(&mut works, &batch, &keys, now).await {
            Ok((replays, mut state)) => {
                if !legacy.is_empty() && state.len() == keys.len() {
                    let read = state.split_off(read_keys.len());
                    for (key, item) in legacy.into_iter().zip(read) {
                        self.leases.record_legacy(key, item);
                    }
                }
                if state.len() == read_keys.len() {
                    match (all_slot, recent_all) {
                        (Some(_), Some(item)) => state.push(item),
                        (Some(slot), None) => {
                            self.keep_all_levers(now, state.get(slot).cloned().flatten());
                        }
                        _ => {}
                    }
                }
                (replays, state)
            }
            Err(reason) => {
                for w in works.iter_mut().filter(|w| w.is_pending()) {
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

        // 3. Route on the state read; messages an earlier call may have delivered are looked
        // for at their providers first.
        self.route_all(&mut works, &fixed, &state, &book, now);
        self.reconcile(&mut works, batch.deadline, &mut report)
            .await;
        self.read_attachments(&mut works).await;

        // 4. Rounds of limits, breaker and sends, each send recorded as its answer arrives.
        let mut tallies: BTreeMap<usize, Tally> = BTreeMap::new();
        self.send_rounds(&mut works, &state, &batch, &mut tallies, &mut report)
            .await;

        // 5. Settle the ledger and the breakers. A failure is marked with the time its event
        // carries, so a redelivery rebuilds that event exactly.
        self.finish(&works, &state, &tallies, now, &mut report)
            .await;

        // 6. Events and dispositions.
        let resolver = Resolver {
            config: self.decider.config(),
            settings: &self.settings,
            now,
        };
        let resolved = resolver.all(&slots, &works, &replays, batch.records);
        let emitted = self.emit(batch.records, &resolved, &mut report).await;
        report.items = self.item_reports(batch.records, &slots, &resolved, &emitted, &mut report);
        report
    }

    /// The pause-all lever's item when this process read it less than
    /// [`super::ALL_LEVERS_TTL_MS`] ago.
    fn recent_all_levers(&self, now: EpochMillis) -> Option<Option<Item>> {
        let kept = self
            .all_levers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        kept.as_ref()
            .filter(|(at, _)| (0..super::ALL_LEVERS_TTL_MS).contains(&(now - at)))
            .map(|(_, item)| item.clone())
    }

    fn keep_all_levers(&self, now: EpochMillis, item: Option<Item>) {
        *self
            .all_levers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((now, item));
    }

    /// Step 2: claims every message, looks up the suppression of every recipient and reads the
    /// breaker, limit and health `keys` of every gateway any message may use, all in flight
    /// together (and retries the marks this process could not write earlier). The health
    /// records ride in the same `BatchGetItem`: no request of their own, and always as fresh as
    /// the checker left them.
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
        let (claimed, suppressed, items, ()) = tokio::join!(
            ledger::claim_many(store, &claims, now),
            suppression::lookup_many(store, &addresses),
            crate::state::get_all(store, keys),
            self.mark_unmarked(batch.deadline),
        );

        let mut replays = HashMap::new();
        for (w, outcome) in works.iter_mut().zip(claimed) {
            match rules::on_claim(&outcome) {
                ClaimAction::Proceed { note, .. } => {
                    if let Some(note) = note {
                        tracing::warn!(message_id = %w.original.id(), "reclaimed an expired lease: the earlier invocation may have sent this message");
                        w.notes.push(note);
                    }
                    if let Ok(ledger::ClaimOutcome::Claimed(claim)) = outcome {
                        w.claim = Some(claim);
                    }
                }
                ClaimAction::Replay(replay) => {
                    replays.insert(w.record, replay);
                    w.stage = Stage::Replayed;
                }
                ClaimAction::Defer(reason) => {
                    tracing::warn!(message_id = %w.original.id(), error_kind = "ledger", %reason, "claim failed; deferring");
                    // No claim is held, so there is nothing to release.
                    w.defer(reason, None);
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
            // Only a suppression covering the message's stream drops a recipient: a bulk
            // unsubscribe leaves appointment mail alone (suppression module docs, "Scopes").
            let stream = w.original.stream();
            for (_, mailbox) in w.original.recipients() {
                if let Some(Some(entry)) = listed.next()
                    && entry.blocking(stream).is_some()
                {
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

    /// Step 3c: the attachments given by reference of every message still to send, read
    /// (all messages' at once) and checked ([`crate::attachments::read_all`]): a message whose
    /// object is missing or not the one it names fails for good, naming the attachment; one
    /// whose object cannot be read now is deferred.
    async fn read_attachments(&self, works: &mut [Work]) {
        let todo: Vec<usize> = (0..works.len())
            .filter(|&i| {
                works[i].is_pending()
                    && works[i]
                        .message
                        .as_ref()
                        .is_some_and(OutboundMessage::has_unread_attachments)
            })
            .collect();
        if todo.is_empty() {
            return;
        }
        let reads = join_all(todo.iter().map(|&i| {
            let message = works[i].message.clone();
            let attachments = self.attachments.as_ref();
            async move {
                match message {
                    Some(m) => crate::attachments::read_all(m, attachments).await,
                    None => Err(crate::attachments::ReadFailure::Transient(
                        "no message".to_owned(),
                    )),
                }
            }
        }))
        .await;
        for (i, read) in todo.into_iter().zip(reads) {
            let w = &mut works[i];
            match read {
                Ok(message) => w.message = Some(message),
                Err(crate::attachments::ReadFailure::Permanent(reason)) => {
                    tracing::warn!(message_id = %w.original.id(), outcome = "failed", reason = %reason, "attachment refused");
                    w.stage = Stage::Rejected { reason };
                }
                Err(crate::attachments::ReadFailure::Transient(reason)) => {
                    tracing::warn!(message_id = %w.original.id(), error_kind = "attachments", reason = %reason, "attachment not read; deferring");
                    w.defer(reason, None);
                }
            }
        }
    }

    /// Step 3: the ordered candidates of every claimed message, on the state read.
    fn route_all(
        &self,
        works: &mut [Work],
        fixed: &[Option<StaticRoute>],
        state: &Read<'_, Item>,
        book: &KeyBook,
        now: EpochMillis,
    ) {
        let config = self.decider.config();
        // Borrowed, not copied: a day item holds every sender's counter.
        let states = self.decider.view(book, state, &self.leases, now);
        let max = config.routing.max_failover_attempts.get() as usize;
        let mut scratch = RankScratch::default();
        let mut ranked = Vec::new();
        for (i, w) in works.iter_mut().enumerate().filter(|(_, w)| w.is_pending()) {
            // Worked out with the batch's reads; a message without one is ranked in full.
            let fixed = fixed.get(i).copied().flatten();
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
            let request = route_request(&w.original);
            let router = self.decider.router();
            router.rank_static(&request, fixed, &states, now, &mut scratch, &mut ranked);
            w.candidates = ranked.iter().take(max).copied().collect();
            w.reserve = ranked.iter().skip(max).copied().collect();
            if w.candidates.is_empty() {
                // Why: the full plan, with every dropped gateway's reason.
                let plan = router.route(&request, &states, now);
                let mut retry_at = None;
                let mut reasons = Vec::new();
                for d in &plan.dropped {
                    match d.reason {
                        DropReason::BreakerOpen { until } => {
                            retry_at = super::work::earliest(retry_at, Some(until));
                        }
                        // A lever without an end gives no time: the message backs off.
                        DropReason::Held(held) => {
                            retry_at = super::work::earliest(retry_at, held.until);
                        }
                        _ => {}
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

    /// Step 3b: for each message an earlier call may have delivered (its lease was taken over,
    /// or a call of it went unanswered), the providers' evidence in one read and the providers
    /// that can be asked, asked; then [`rules::reconcile`] decides: recorded as sent, kept
    /// until its evidence may have come, or sent again flagged. Costs nothing when no message
    /// needs it (the happy path).
    async fn reconcile(&self, works: &mut [Work], deadline: EpochMillis, report: &mut BatchReport) {
        let todo: Vec<usize> = (0..works.len())
            .filter(|&i| {
                works[i].is_pending()
                    && works[i]
                        .claim
                        .as_ref()
                        .is_some_and(rules::needs_reconciling)
            })
            .collect();
        if todo.is_empty() {
            return;
        }
        let config = Arc::clone(self.decider.config());
        // The gateway of the unanswered call when it is known, else every candidate.
        let asked: Vec<Vec<usize>> = todo
            .iter()
            .map(|&i| {
                let w = &works[i];
                let known = w.claim.as_ref().and_then(|c| c.unanswered.as_ref());
                match known.and_then(|u| config.gateways.iter().position(|g| g.id == u.gateway)) {
                    Some(g) => vec![g],
                    None => w.candidates.clone(),
                }
            })
            .collect();
        let (evidence, lookups) = self.look_for_acceptance(works, &todo, &asked).await;
        let evidence = match evidence {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(error_kind = "state", %error, "acceptance evidence unavailable");
                for &i in &todo {
                    works[i].stage = Stage::Deferred {
                        reason:
                            "acceptance evidence unavailable; an earlier call may have delivered it"
                                .to_owned(),
                        retry_at: None,
                        keep_claim: true,
                    };
                }
                return;
            }
        };
        let now = self.clock.now_ms();
        let mut marks = Vec::new();
        let mut notes = Vec::new();
        for (((&i, gateways), found), answers) in
            todo.iter().zip(&asked).zip(&evidence).zip(lookups)
        {
            let w = &mut works[i];
            let Some(claim) = w.claim.clone() else {
                continue;
            };
            let findings = Findings {
                evidence: found.as_ref(),
                lookup_failed: answers.iter().any(|(_, a)| a.is_err()),
                lookups: answers,
                evidence_expected: gateways
                    .iter()
                    .any(|&g| rules::reports_acceptance(&config.gateways[g])),
                gateways: gateways
                    .iter()
                    .map(|&g| {
                        (
                            config.gateways[g].id.as_str(),
                            config.gateways[g].kind.as_str(),
                        )
                    })
                    .collect(),
            };
            let decision = rules::reconcile(&claim, &findings, self.settings.acceptance_wait, now);
            match apply_reconcile(w, claim, decision, now, report) {
                Some(LedgerFollowUp::Mark(claim, record)) => marks.push((claim, record)),
                Some(LedgerFollowUp::Note(claim, at)) => notes.push((claim, at)),
                None => {}
            }
        }
        let store = self.store.as_ref();
        let marked = join_all(
            marks
                .iter()
                .map(|(claim, record)| self.mark_sent(claim, record, deadline)),
        );
        let noted = join_all(notes.iter().map(|(claim, at)| {
            self.within(deadline, 1, move || {
                ledger::note_unanswered(store, claim, "", *at)
            })
        }));
        tokio::join!(marked, noted);
    }

    /// The acceptance evidence of each message of `todo` (one read) and the answers of the
    /// providers of its `asked` gateways that can be asked, all in flight together.
    #[allow(clippy::type_complexity)]
    async fn look_for_acceptance<'c>(
        &'c self,
        works: &[Work],
        todo: &[usize],
        asked: &[Vec<usize>],
    ) -> (
        Result<Vec<Option<evidence::Evidence>>, crate::state::StoreError>,
        Vec<Vec<(&'c str, Result<crate::providers::Lookup, SendError>)>>,
    ) {
        let config = self.decider.config();
        let ids: Vec<&str> = todo.iter().map(|&i| works[i].original.id()).collect();
        let lookups = join_all(todo.iter().zip(asked).map(|(&i, gateways)| {
            let w = &works[i];
            let at = w
                .claim
                .as_ref()
                .and_then(|c| c.unanswered.as_ref())
                .map_or(0, |u| u.at);
            join_all(gateways.iter().filter_map(|&g| {
                let id = config.gateways[g].id.as_str();
                let provider = self.providers.get(id)?;
                let message = w.message.as_ref()?;
                Some(async move { (id, provider.look_up(message, at).await) })
            }))
        }));
        tokio::join!(evidence::lookup_many(self.store.as_ref(), &ids), lookups)
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
        loop {
            let now = self.clock.now_ms();
            let Some(groups) = self.next_round(works, batch.deadline, now) else {
                return;
            };
            let admitted = self.take_limits(works, state, &groups, now, report).await;
            let (jobs, mut refunds) = self.admit(works, state, admitted, now, report).await;
            let deadline = batch.deadline;
            let results = self.send_all(jobs, deadline).await;
            refunds.extend(self.apply_answers(works, results, tallies, report));
            if !refunds.is_empty() {
                let now = self.clock.now_ms();
                if let Err(error) = limiter::refund(self.store.as_ref(), &refunds, now).await {
                    tracing::warn!(error_kind = "limiter", %error, "limits of unsent messages not given back; they stay consumed");
                }
            }
        }
    }

    /// The messages of the next round, grouped by their next candidate; `None` when no message
    /// is left to send. Near the deadline no call starts: the rest are deferred.
    fn next_round(
        &self,
        works: &mut [Work],
        deadline: EpochMillis,
        now: EpochMillis,
    ) -> Option<BTreeMap<usize, Vec<usize>>> {
        let margin = i64::try_from(self.settings.deadline_margin.as_millis()).unwrap_or(i64::MAX);
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, w) in works.iter_mut().enumerate() {
            if !w.is_pending() {
                continue;
            }
            match w.candidates.get(w.cursor) {
                Some(&g) => groups.entry(g).or_default().push(i),
                None => w.exhausted(),
            }
        }
        if groups.is_empty() {
            return None;
        }
        if now.saturating_add(margin) >= deadline {
            for &i in groups.values().flatten() {
                let w = &mut works[i];
                w.note(
                    "the invocation's deadline is near; not started".to_owned(),
                    None,
                );
                w.exhausted();
            }
            return None;
        }
        Some(groups)
    }

    /// Limits, one decision per gateway, all gateways in flight together. Returns the admitted
    /// (work, gateway, grant); refused messages move on to their next candidate.
    async fn take_limits(
        &self,
        works: &mut [Work],
        state: &Read<'_, Item>,
        groups: &BTreeMap<usize, Vec<usize>>,
        now: EpochMillis,
        report: &mut BatchReport,
    ) -> Vec<(usize, usize, Grant)> {
        let config = Arc::clone(self.decider.config());
        let book = self.decider.keys(now);
        // Bulk messages decide apart: they may not take the transactional reserve of any day
        // or hour limit (config `system_limits.transactional_reserve`).
        let lanes: Vec<(usize, bool, Vec<usize>)> = groups
            .iter()
            .flat_map(|(&g, members)| {
                let (bulk, transactional): (Vec<usize>, Vec<usize>) = members
                    .iter()
                    .partition(|&&i| works[i].original.stream() == Stream::Bulk);
                [(g, false, transactional), (g, true, bulk)]
            })
            .filter(|(_, _, members)| !members.is_empty())
            .collect();
        let decisions = join_all(lanes.iter().map(|(g, bulk, members)| {
            let (g, bulk) = (*g, *bulk);
            let items: Vec<(usize, String, u64)> = members
                .iter()
                .map(|&i| {
                    let w = &works[i];
                    let count = w.message.as_ref().map_or(0, |m| m.recipient_count());
                    (i, w.original.sender().as_str().to_owned(), count as u64)
                })
                .collect();
            // An operator's limit override replaces the config's limits of this gateway.
            let overridden = state
                .levers(g)
                .1
                .limits_at(now)
                .map(|o| o.applied_to(&config.gateways[g]));
            let bulk_view = bulk.then(|| {
                let reserve = config.system_limits;
                reserve.bulk_gateway(overridden.as_ref().unwrap_or(&config.gateways[g]))
            });
            let (config, book) = (&config, &book);
            async move {
                let plan = match (&bulk_view, &overridden) {
                    (Some(gateway), _) => limiter::plan(self.decider.bulk_config(), gateway, now),
                    (None, Some(gateway)) => limiter::plan(config, gateway, now),
                    (None, None) => self.decider.limit_plan(book, g, now),
                };
                let requests: Vec<Request<'_>> = items
                    .iter()
                    .map(|(_, sender, n)| Request {
                        sender,
                        recipients: *n,
                    })
                    .collect();
                let verdicts =
                    limiter::acquire_leased(self.store.as_ref(), &self.leases, &plan, &requests)
                        .await;
                (g, items, verdicts)
            }
        }))
        .await;
        let mut admitted = Vec::new();
        for (g, items, verdicts) in decisions {
            let id = &config.gateways[g].id;
            match verdicts {
                Ok(verdicts) => {
                    for ((i, _, _), verdict) in items.into_iter().zip(verdicts) {
                        match rules::on_verdict(id, verdict) {
                            Ok(grant) => admitted.push((i, g, grant)),
                            Err(skip) => skip_to_next(&mut works[i], skip, id, report),
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(gateway = %id, error_kind = "limiter", %error, "rate-limit state unavailable");
                    for (i, _, _) in items {
                        skip_to_next(&mut works[i], rules::limits_unavailable(id), id, report);
                    }
                }
            }
        }
        admitted
    }

    /// Breaker admission of every admitted message: the jobs to run, and the grants of those
    /// refused (to give back).
    async fn admit(
        &self,
        works: &mut [Work],
        state: &Read<'_, Item>,
        admitted: Vec<(usize, usize, Grant)>,
        now: EpochMillis,
        report: &mut BatchReport,
    ) -> (Vec<SendJob>, Vec<Grant>) {
        let config = Arc::clone(self.decider.config());
        // Each gateway's breaker decoded once: a closed (or open) one decides every message
        // without the store; only a trial is written, per message.
        let mut decided: Vec<Option<Option<breaker::PermitOutcome>>> =
            vec![None; config.gateways.len()];
        for &(_, g, _) in &admitted {
            decided[g].get_or_insert_with(|| {
                let settings = &config.gateways[g].circuit_breaker;
                // A breaker an operator forced closed admits without a permit write.
                if state.gateway_levers(g).forced_closed(now) {
                    return Some(breaker::PermitOutcome {
                        admission: Admission::Allowed,
                        transition: None,
                        malformed: None,
                    });
                }
                let (breaker, problem) = breaker::BreakerState::from_item(state.breaker(g));
                breaker::decided_locally(&breaker, problem, settings, now)
            });
        }
        let permits = join_all(admitted.iter().map(|&(_, g, _)| {
            let gateway = &config.gateways[g];
            let item = state.breaker(g).map(Cow::Borrowed);
            let local = decided[g].clone().flatten();
            async move {
                if let Some(outcome) = local {
                    return Ok(outcome);
                }
                breaker::permit_send_with_item(
                    self.store.as_ref(),
                    &gateway.id,
                    &gateway.circuit_breaker,
                    item,
                    now,
                )
                .await
            }
        }))
        .await;
        let mut jobs = Vec::new();
        let mut refunds = Vec::new();
        for ((i, g, grant), permit) in admitted.into_iter().zip(permits) {
            let id = &config.gateways[g].id;
            let w = &mut works[i];
            match &permit {
                Ok(p) => {
                    if let Some(t) = &p.transition {
                        tracing::info!(gateway = %t.gateway, from = %t.from, to = %t.to, "breaker transition");
                        report.transitions.push(t.clone());
                    }
                    if let Some(m) = &p.malformed {
                        tracing::warn!(gateway = %id, problem = ?m, "breaker item does not decode; treated as closed");
                    }
                }
                Err(error) => {
                    tracing::warn!(gateway = %id, error_kind = "breaker", %error, "breaker state unavailable");
                }
            }
            let provider = self.providers.get(id).cloned();
            let decided = rules::on_permit(id, &permit, provider.is_some(), w.message.is_some());
            match (decided, provider, w.message.clone(), w.claim.clone()) {
                (Ok(admission), Some(provider), Some(message), Some(claim)) => {
                    jobs.push(SendJob {
                        work: i,
                        gateway: g,
                        admission,
                        grant,
                        provider,
                        message,
                        claim,
                    });
                }
                (Err(skip), ..) => {
                    refunds.push(grant);
                    skip_to_next(w, skip, id, report);
                }
                // on_permit refuses a missing provider or message; a pending work has a claim.
                _ => refunds.push(grant),
            }
        }
        (jobs, refunds)
    }

    /// The calls, at most `concurrency` at a time. What each answer needs in the ledger starts
    /// as soon as that answer arrives — the mark of an accepted send (the sooner it is written,
    /// the shorter the window in which a crash makes a duplicate), or the note of an unanswered
    /// call — and runs beside the calls still going, so no call waits for a ledger write.
    async fn send_all(&self, jobs: Vec<SendJob>, deadline: EpochMillis) -> Vec<SendResult> {
        let mut calls = stream::iter(jobs)
            .map(|job| self.call(job, deadline))
            .buffer_unordered(self.settings.concurrency.get());
        let mut writes = FuturesUnordered::new();
        let mut results = Vec::new();
        loop {
            tokio::select! {
                Some(r) = calls.next() => {
                    if let Some(write) = self.record_answer(&r, deadline) {
                        writes.push(write);
                    }
                    results.push(r);
                }
                Some(()) = writes.next() => {}
                else => break,
            }
        }
        results
    }

    /// One provider call, abandoned as unanswered if it is still running when only the
    /// post-send budget is left before the deadline, so its note, the marks and the events
    /// still fit.
    async fn call(&self, job: SendJob, deadline: EpochMillis) -> SendResult {
        let started = self.clock.now_ms();
        let post = i64::try_from(self.settings.post_send.as_millis()).unwrap_or(i64::MAX);
        let budget = Duration::from_millis(
            u64::try_from(deadline.saturating_sub(started).saturating_sub(post)).unwrap_or(0),
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

    /// The ledger write an answer needs, if any: the mark of an accepted send, or the note of
    /// an unanswered call. Both within the deadline.
    fn record_answer(&self, r: &SendResult, deadline: EpochMillis) -> Option<BoxFuture<'_, ()>> {
        let claim = r.job.claim.clone();
        let gateway = r.job.provider.gateway_id().to_owned();
        match &r.result {
            Ok(accepted) => {
                let record = SentRecord {
                    gateway,
                    provider_message_id: accepted.provider_message_id.clone(),
                    at: r
                        .started
                        .saturating_add(i64::try_from(r.latency_ms).unwrap_or(i64::MAX)),
                };
                Some(Box::pin(async move {
                    self.mark_sent(&claim, &record, deadline).await;
                }))
            }
            Err(e) if e.class() == ErrorClass::Ambiguous => {
                let started = r.started;
                Some(Box::pin(async move {
                    let store = self.store.as_ref();
                    let (c, g) = (&claim, gateway.as_str());
                    let noted = self
                        .within(deadline, MARK_TRIES, move || {
                            ledger::note_unanswered(store, c, g, started)
                        })
                        .await;
                    if !matches!(noted, Some(Ok(_))) {
                        tracing::warn!(message_id = %claim.message_id, gateway = %gateway, error_kind = "ledger", "unanswered call not noted in the ledger; its lease still keeps other senders off until it ends");
                    }
                }))
            }
            Err(_) => None,
        }
    }

    /// Marks one send in the ledger, retried within the deadline. When it cannot be written,
    /// the send is kept in the process's unmarked list (written with the next batch's claims)
    /// and its outcome event still carries it to the record.
    async fn mark_sent(&self, claim: &Claim, record: &SentRecord, deadline: EpochMillis) {
        let store = self.store.as_ref();
        let now = self.clock.now_ms();
        let marked = self
            .within(deadline, MARK_TRIES, || {
                ledger::mark_sent(store, claim, record, now)
            })
            .await;
        match marked {
            Some(Ok(MarkOutcome::Marked)) => {}
            Some(Ok(MarkOutcome::AlreadySent(other))) => {
                tracing::error!(message_id = %claim.message_id, gateway = %record.gateway, earlier_gateway = %other.gateway, outcome = "sent", "duplicate: another invocation had already recorded a send of this message");
            }
            Some(Ok(MarkOutcome::NotOwner(_))) => {
                tracing::warn!(message_id = %claim.message_id, "sent after the lease was taken over; recorded as sent");
            }
            Some(Err(_)) | None => {
                let error = marked.map_or_else(
                    || "no time left before the deadline".to_owned(),
                    |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
                );
                tracing::error!(message_id = %claim.message_id, error_kind = "ledger", %error, "sent but not recorded in the ledger; kept for the next batch to record");
                let mut unmarked = self.unmarked.lock().unwrap_or_else(PoisonError::into_inner);
                if unmarked.len() >= MAX_UNMARKED {
                    let (lost, _) = unmarked.remove(0);
                    tracing::error!(message_id = %lost.message_id, "unmarked send dropped from the full list");
                }
                unmarked.push((claim.clone(), record.clone()));
            }
        }
    }

    /// Writes the marks earlier batches of this process could not.
    async fn mark_unmarked(&self, deadline: EpochMillis) {
        let pending =
            std::mem::take(&mut *self.unmarked.lock().unwrap_or_else(PoisonError::into_inner));
        join_all(
            pending
                .iter()
                .map(|(claim, record)| self.mark_sent(claim, record, deadline)),
        )
        .await;
    }

    /// Runs `attempt` up to `tries` times until it succeeds, each try bounded by the time left
    /// before `deadline`; `None` when no time was left for any try.
    async fn within<T, E, F, Fut>(
        &self,
        deadline: EpochMillis,
        tries: usize,
        attempt: F,
    ) -> Option<Result<T, E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut last = None;
        for _ in 0..tries {
            let left = deadline.saturating_sub(self.clock.now_ms());
            let Ok(left) = u64::try_from(left) else { break };
            if left == 0 {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(left), attempt()).await {
                Ok(Ok(v)) => return Some(Ok(v)),
                Ok(Err(e)) => last = Some(Err(e)),
                Err(_) => break,
            }
        }
        last
    }

    /// Applies each answer's effects ([`rules::on_answer`]) to its message, the breaker tally and
    /// the metrics; returns the grants to give back.
    fn apply_answers(
        &self,
        works: &mut [Work],
        results: Vec<SendResult>,
        tallies: &mut BTreeMap<usize, Tally>,
        report: &mut BatchReport,
    ) -> Vec<Grant> {
        let config = Arc::clone(self.decider.config());
        let mut refunds = Vec::new();
        for r in results {
            let SendJob {
                work,
                gateway: g,
                admission,
                grant,
                claim,
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
            let effects = rules::on_answer(
                &gateway.id,
                &r.result,
                config.routing.ambiguous_policy,
                claim.lease_until,
            );
            let m = report.metrics.gateway(&gateway.id);
            m.attempts += 1;
            m.latencies_ms.push(r.latency_ms);
            effects.counter.add(m);
            w.attempts.push(AttemptRecord {
                gateway: gateway.id.clone(),
                gateway_type: gateway.kind.as_str().to_owned(),
                class,
                http_status: r.result.as_ref().err().and_then(|e| e.http_status),
                latency_ms: r.latency_ms,
                error: r.result.as_ref().err().map(|e| truncate(e.detail.clone())),
                at: r.started,
            });
            match &r.result {
                Ok(_) => {
                    tracing::info!(message_id = %w.original.id(), gateway = %gateway.id, latency_ms = r.latency_ms, outcome = "sent", "provider accepted")
                }
                Err(e) => {
                    tracing::warn!(message_id = %w.original.id(), gateway = %gateway.id, latency_ms = r.latency_ms, error_kind = ?e.class(), error = %redact_addresses(&e.to_string()), "provider call failed")
                }
            }
            if effects.refund {
                refunds.push(grant);
            }
            if effects.failover && w.has_next() {
                report.metrics.failovers += 1;
            }
            let at = r
                .started
                .saturating_add(i64::try_from(r.latency_ms).unwrap_or(i64::MAX));
            w.apply(effects.then, g, &gateway.id, at);
        }
        refunds
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
                    let gateway = &config.gateways[g];
                    let item = state.breaker(g).cloned();
                    // A closed breaker read at the start is good enough: any change since makes the
                    // conditional write fail and the decision is taken again on the fresh item. An
                    // open or half-open one is read again, because this batch's own trial writes
                    // (or another instance's) may have moved it, and an open breaker decides "no
                    // write", which would never discover that.
                    let closed = breaker::view(item.as_ref(), now) == breaker::BreakerView::Closed;
                    async move {
                        let settings = &gateway.circuit_breaker;
                        if closed {
                            breaker::flush_outcomes_with_item(
                                store,
                                &gateway.id,
                                settings,
                                tally,
                                item,
                                now,
                            )
                            .await
                        } else {
                            breaker::flush_outcomes(store, &gateway.id, settings, tally, now).await
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

    /// Step 6b: emits one outcome event per resolved record, each on its own account (an event
    /// that cannot go out holds up only its own record), and the breaker transitions. Returns,
    /// per record, whether its event is out.
    async fn emit(
        &self,
        records: &[Received],
        resolved: &[Option<Resolution>],
        report: &mut BatchReport,
    ) -> Vec<bool> {
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
        if events.is_empty() {
            return emitted;
        }
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
            for ((record, _), result) in trimmed.iter().zip(self.events.emit_each(&shrunk).await) {
                if let Err(error) = result {
                    tracing::error!(error_kind = "events", %error, "trimmed outcome event not emitted either; its message will be retried");
                    emitted[*record] = false;
                }
            }
        }
        report.metrics.emit_failures =
            u32::try_from(emitted.iter().filter(|e| !**e).count()).unwrap_or(u32::MAX);
        emitted
    }

    /// Step 6c: the report of each record, from its resolution and whether its event is out.
    fn item_reports(
        &self,
        records: &[Received],
        slots: &[Slot],
        resolved: &[Option<Resolution>],
        emitted: &[bool],
        report: &mut BatchReport,
    ) -> Vec<ItemReport> {
        let backoff = &self.settings.backoff;
        let mut items: Vec<ItemReport> = Vec::with_capacity(records.len());
        for (i, (record, resolution)) in records.iter().zip(resolved).enumerate() {
            let retry = |id: &str| Disposition::Retry {
                after: backoff.delay(id, record.receive_count),
            };
            let base =
                |message_id: Option<String>, outcome, replayed, gateway, reason, disposition| {
                    ItemReport {
                        queue_message_id: record.message_id.clone(),
                        receipt_handle: record.receipt_handle.clone(),
                        message_id,
                        outcome,
                        replayed,
                        gateway,
                        reason,
                        disposition,
                    }
                };
            let item = match (resolution, slots.get(i)) {
                (Some(r), slot) => {
                    let message_id = match slot {
                        Some(Slot::Poison { message_id, .. }) => Some(message_id.clone()),
                        _ => r.event.as_ref().map(|e| e.message_id.clone()),
                    };
                    let disposition = match r.retry {
                        Some(after) => Disposition::Retry { after },
                        None if r.event.is_some() && !emitted[i] => {
                            retry(message_id.as_deref().unwrap_or(&record.message_id))
                        }
                        None => Disposition::Done,
                    };
                    match (r.outcome, r.replayed) {
                        (_, true) if r.outcome != Outcome::Deferred => report.metrics.replayed += 1,
                        (Outcome::Sent, _) => report.metrics.sent += 1,
                        (Outcome::Failed, _) => report.metrics.failed += 1,
                        (Outcome::Rejected, _) => report.metrics.rejected += 1,
                        (Outcome::Deferred, _) => report.metrics.deferred += 1,
                    }
                    let id = message_id.or_else(|| Some(record.message_id.clone()));
                    base(
                        id,
                        r.outcome,
                        r.replayed,
                        r.gateway.clone(),
                        r.reason.clone(),
                        disposition,
                    )
                }
                (None, Some(Slot::DuplicateOf { first, message_id })) => {
                    // Same fate as its first copy, which is earlier in the batch.
                    let (outcome, gateway, disposition) = items
                        .get(*first)
                        .map_or((Outcome::Deferred, None, retry(message_id)), |f| {
                            (f.outcome, f.gateway.clone(), f.disposition)
                        });
                    report.metrics.replayed += 1;
                    let reason = Some("duplicate of another record in the same batch".to_owned());
                    base(
                        Some(message_id.clone()),
                        outcome,
                        true,
                        gateway,
                        reason,
                        disposition,
                    )
                }
                (None, _) => base(
                    None,
                    Outcome::Deferred,
                    false,
                    None,
                    Some("not processed".to_owned()),
                    retry(&record.message_id),
                ),
            };
            items.push(item);
        }
        items
    }
}

/// Step 1: every record parsed on its own; a later record with the same message id follows
/// the first.
fn parse_records(records: &[Received]) -> (Vec<Slot>, Vec<Work>) {
    let mut slots = Vec::with_capacity(records.len());
    let mut works: Vec<Work> = Vec::new();
    let mut first_of: HashMap<String, usize> = HashMap::new();
    for (i, record) in records.iter().enumerate() {
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
                works.push(Work::new(i, message));
            }
            Err(error) => {
                let message_id = error
                    .id()
                    .map_or_else(|| record.message_id.clone(), str::to_owned);
                slots.push(Slot::Poison { message_id, error });
            }
        }
    }
    (slots, works)
}

/// A message that does not go to its current candidate: counted, noted, on to the next.
fn skip_to_next(w: &mut Work, skip: Skip, gateway: &str, report: &mut BatchReport) {
    if let Some(counter) = skip.counter {
        counter.add(report.metrics.gateway(gateway));
    }
    w.next(skip.note, skip.retry_at);
}

fn route_request(message: &OutboundMessage) -> RouteRequest<'_> {
    RouteRequest {
        message_id: message.id(),
        sender: message.sender().as_str(),
        pinned: message.gateway(),
    }
}

/// A ledger write a reconciled message still needs.
enum LedgerFollowUp {
    /// Recorded sent on the provider's evidence.
    Mark(Claim, SentRecord),
    /// The start of the acceptance wait, written down (the gateway of the earlier call unknown).
    Note(Claim, EpochMillis),
}

/// Applies what [`rules::reconcile`] decided to the message; returns the ledger write it needs.
fn apply_reconcile(
    w: &mut Work,
    claim: Claim,
    decision: Reconcile,
    now: EpochMillis,
    report: &mut BatchReport,
) -> Option<LedgerFollowUp> {
    match decision {
        Reconcile::Accepted {
            gateway,
            accepted,
            at,
            note,
        } => {
            tracing::warn!(message_id = %w.original.id(), gateway = %gateway, outcome = "sent", "an earlier unanswered call was accepted; not sent again");
            report.metrics.reconciled += 1;
            w.notes.push(note);
            let record = SentRecord {
                gateway: gateway.clone(),
                provider_message_id: accepted.provider_message_id.clone(),
                at,
            };
            w.stage = Stage::Sent {
                gateway,
                accepted,
                at,
            };
            Some(LedgerFollowUp::Mark(claim, record))
        }
        Reconcile::Wait { until, reason } => {
            tracing::info!(message_id = %w.original.id(), outcome = "deferred", "waiting for the acceptance evidence of an earlier call");
            w.stage = Stage::Deferred {
                reason,
                retry_at: Some(until),
                keep_claim: true,
            };
            // Fix the wait's start: the next claim takes this lease over, and must not count
            // the wait from its end again.
            let at = claim.reclaimed.as_ref().map_or(now, |r| r.lease_expired_at);
            claim
                .unanswered
                .is_none()
                .then_some(LedgerFollowUp::Note(claim, at))
        }
        Reconcile::Send { note } => {
            tracing::warn!(message_id = %w.original.id(), "no evidence that an earlier unanswered call was accepted; sending again");
            report.metrics.resent_unconfirmed += 1;
            w.notes.push(note);
            None
        }
    }
}
