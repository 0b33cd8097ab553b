//! Step 6a: what each record resolves to (outcome, event, retry), decided purely from the
//! run's stages and the ledger's replays.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::address::redact_addresses;
use crate::clock::EpochMillis;
use crate::config::{Config, Gateway};
use crate::duration::format_duration;
use crate::events::{Outcome, OutcomeEvent, RecipientOutcome, RecipientStatus};
use crate::message::MessageError;
use crate::queue::Received;
use crate::suppression;

use super::PipelineSettings;
use super::rules;
use super::work::{Replay, Resolution, Slot, Stage, Work, truncate};

/// What resolving needs besides the records.
pub(super) struct Resolver<'a> {
    pub config: &'a Config,
    pub settings: &'a PipelineSettings,
    pub now: EpochMillis,
}

impl Resolver<'_> {
    /// Every record's resolution, in record order; `None` for a duplicate of an earlier record
    /// of the batch (it follows that record).
    pub fn all(
        &self,
        slots: &[Slot],
        works: &[Work],
        replays: &HashMap<usize, Replay>,
        records: &[Received],
    ) -> Vec<Option<Resolution>> {
        slots
            .iter()
            .enumerate()
            .map(|(i, slot)| match slot {
                Slot::DuplicateOf { .. } => None,
                Slot::Poison { message_id, error } => Some(self.poison(message_id, error)),
                Slot::Work(index) => {
                    let w = works.get(*index)?;
                    let record = records.get(i);
                    Some(match replays.get(&w.record) {
                        Some(replay) => self.replay(w, replay, record),
                        None => self.decided(w, record),
                    })
                }
            })
            .collect()
    }

    fn gateway_type(&self, id: &str) -> Option<String> {
        self.config.gateway(id).map(|g| g.kind.as_str().to_owned())
    }

    fn poison(&self, message_id: &str, error: &MessageError) -> Resolution {
        let reason = truncate(format!("invalid message: {error}"));
        tracing::warn!(message_id = %message_id, outcome = "rejected", reason = %reason, "poison record");
        let event = OutcomeEvent {
            message_id: message_id.to_owned(),
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
            reason: Some(reason.clone()),
            retry_at: None,
            at: self.now,
        };
        resolution(Outcome::Rejected, None, Some(reason), None, Some(event))
    }

    fn replay(&self, w: &Work, replay: &Replay, record: Option<&Received>) -> Resolution {
        let id = w.original.id();
        let mut r = match replay {
            Replay::Sent(record) => {
                tracing::info!(message_id = %id, gateway = %record.gateway, outcome = "sent", "redelivered message already sent; event re-emitted, nothing sent");
                let mut event = base_event(w, Outcome::Sent, RecipientStatus::Sent, record.at);
                event.gateway_type = self.gateway_type(&record.gateway);
                event.gateway_id = Some(record.gateway.clone());
                event
                    .provider_message_id
                    .clone_from(&record.provider_message_id);
                resolution(
                    Outcome::Sent,
                    Some(record.gateway.clone()),
                    None,
                    None,
                    Some(event),
                )
            }
            Replay::Failed(record) => {
                // The event of the first failure, rebuilt field for field (its provider
                // attempts are recorded already), so the record it lands on stays as it is.
                let mut event = base_event(w, Outcome::Failed, RecipientStatus::Failed, record.at);
                event.reason = Some(record.reason.clone());
                event.gateway_id.clone_from(&record.gateway);
                event.gateway_type = record.gateway.as_deref().and_then(|g| self.gateway_type(g));
                resolution(
                    Outcome::Failed,
                    record.gateway.clone(),
                    Some(record.reason.clone()),
                    None,
                    Some(event),
                )
            }
            Replay::Held { until } => {
                tracing::info!(message_id = %id, outcome = "deferred", "held by another invocation's live lease");
                let receive_count = record.map_or(1, |r| r.receive_count);
                let retry = self
                    .settings
                    .backoff
                    .until(*until, self.now, id, receive_count);
                // That invocation reports the outcome.
                resolution(
                    Outcome::Deferred,
                    None,
                    Some("another invocation is sending it".to_owned()),
                    Some(retry),
                    None,
                )
            }
        };
        r.replayed = true;
        r
    }

    fn decided(&self, w: &Work, record: Option<&Received>) -> Resolution {
        let id = w.original.id();
        let now = self.now;
        let notes = (!w.notes.is_empty()).then(|| w.notes.join("; "));
        let index = |g: usize| self.config.gateways.get(g);
        match &w.stage {
            Stage::Sent {
                gateway,
                accepted,
                at,
            } => {
                let mut event = base_event(w, Outcome::Sent, RecipientStatus::Sent, *at);
                event.gateway_id = Some(gateway.clone());
                event.gateway_type = self.gateway_type(gateway);
                event
                    .provider_message_id
                    .clone_from(&accepted.provider_message_id);
                event.reason = notes.clone().map(truncate);
                resolution(
                    Outcome::Sent,
                    Some(gateway.clone()),
                    notes,
                    None,
                    Some(event),
                )
            }
            Stage::Failed { gateway, reason } => {
                let gw = index(*gateway);
                tracing::warn!(message_id = %id, gateway = gw.map_or("", |g| g.id.as_str()), outcome = "failed", "permanently refused");
                self.failed(w, gw, reason.clone(), None)
            }
            Stage::Rejected { reason } => {
                tracing::info!(message_id = %id, outcome = "rejected", reason = %redact_addresses(reason), "not sent");
                let mut event = base_event(w, Outcome::Rejected, RecipientStatus::Rejected, now);
                event.reason = Some(reason.clone());
                resolution(
                    Outcome::Rejected,
                    None,
                    Some(reason.clone()),
                    None,
                    Some(event),
                )
            }
            Stage::Expired { reason } => {
                tracing::warn!(message_id = %id, outcome = "failed", reason = %reason, "not sent");
                self.failed(w, None, reason.clone(), None)
            }
            Stage::Deferred {
                reason,
                retry_at,
                keep_claim,
            } => self.deferred(w, reason, *retry_at, *keep_claim, record),
            Stage::Pending | Stage::Replayed => {
                // Unreachable after the rounds; defer rather than lose it.
                let receive_count = record.map_or(1, |r| r.receive_count);
                resolution(
                    Outcome::Deferred,
                    None,
                    Some("not processed".to_owned()),
                    Some(self.settings.backoff.delay(id, receive_count)),
                    None,
                )
            }
        }
    }

    fn failed(
        &self,
        w: &Work,
        gateway: Option<&Gateway>,
        reason: String,
        retry: Option<Duration>,
    ) -> Resolution {
        let mut event = base_event(w, Outcome::Failed, RecipientStatus::Failed, self.now);
        event.gateway_id = gateway.map(|g| g.id.clone());
        event.gateway_type = gateway.map(|g| g.kind.as_str().to_owned());
        event.reason = Some(reason.clone());
        resolution(
            Outcome::Failed,
            event.gateway_id.clone(),
            Some(reason),
            retry,
            Some(event),
        )
    }

    fn deferred(
        &self,
        w: &Work,
        reason: &str,
        retry_at: Option<EpochMillis>,
        keep_claim: bool,
        record: Option<&Received>,
    ) -> Resolution {
        let id = w.original.id();
        let now = self.now;
        let receive_count = record.map_or(1, |r| r.receive_count);
        let after = rules::deferral(
            retry_at,
            w.retry_unknown,
            keep_claim,
            w.original.expires_at(),
            &self.settings.backoff,
            id,
            receive_count,
            now,
        );
        let gw = w.last_gateway.and_then(|g| self.config.gateways.get(g));
        if rules::gives_up(receive_count, self.settings.max_receive_count) {
            let first_sent = record.map_or(now, |r| r.sent_at);
            let over =
                Duration::from_millis(u64::try_from(now.saturating_sub(first_sent)).unwrap_or(0));
            let reason = truncate(format!(
                "gave up after {receive_count} receives over {}; last: {reason}",
                format_duration(over)
            ));
            tracing::error!(message_id = %id, outcome = "failed", reason = %redact_addresses(&reason), "last receive the queue allows; recorded as failed and handed to the dead-letter queue");
            // Visible at once: the next receive moves it to the dead-letter queue, from where a
            // redrive can send it.
            return self.failed(w, gw, reason, Some(Duration::ZERO));
        }
        let retry_at_ms = now.saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX));
        let reason = truncate(reason.to_owned());
        tracing::info!(message_id = %id, outcome = "deferred", reason = %redact_addresses(&reason), retry_in_s = after.as_secs(), "deferred");
        let mut event = base_event(w, Outcome::Deferred, RecipientStatus::Deferred, now);
        event.gateway_id = gw.map(|g| g.id.clone());
        event.gateway_type = gw.map(|g| g.kind.as_str().to_owned());
        event.reason = Some(reason.clone());
        event.retry_at = Some(retry_at_ms);
        resolution(
            Outcome::Deferred,
            event.gateway_id.clone(),
            Some(reason),
            Some(after),
            Some(event),
        )
    }
}

fn resolution(
    outcome: Outcome,
    gateway: Option<String>,
    reason: Option<String>,
    retry: Option<Duration>,
    event: Option<OutcomeEvent>,
) -> Resolution {
    Resolution {
        outcome,
        replayed: false,
        gateway,
        reason,
        retry,
        event,
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
