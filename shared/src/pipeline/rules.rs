//! The send pipeline's rules as pure transitions, like the limiter's and the breaker's: each
//! takes what one I/O step returned (a claim, a limit verdict, a breaker permit, a provider's
//! answer, what the providers say about an unanswered call) and decides what follows, with no
//! I/O and `now` passed in. [`super::run`] is the driver: it performs the rounds of requests and
//! applies these decisions; the tests below hold every rule in a table.

use std::time::Duration;

use crate::breaker::{Admission, PermitOutcome};
use crate::clock::{EpochMillis, format_rfc3339};
use crate::config::{AmbiguousPolicy, Gateway, ProviderSettings};
use crate::evidence::Evidence;
use crate::ledger::{Claim, ClaimOutcome, LedgerError};
use crate::limiter::{Grant, Refusal, Verdict};
use crate::providers::{Accepted, ErrorClass, Lookup, SendError};

use super::metrics::GatewayMetrics;
use super::work::{Replay, Then, truncate};

/// A gateway counter one step adds one to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counter {
    Sent,
    Permanent,
    Throttled,
    Unavailable,
    Auth,
    Ambiguous,
    Limited,
    BreakerRejected,
}

impl Counter {
    pub fn add(self, m: &mut GatewayMetrics) {
        let c = match self {
            Self::Sent => &mut m.sent,
            Self::Permanent => &mut m.permanent,
            Self::Throttled => &mut m.throttled,
            Self::Unavailable => &mut m.unavailable,
            Self::Auth => &mut m.auth,
            Self::Ambiguous => &mut m.ambiguous,
            Self::Limited => &mut m.limited,
            Self::BreakerRejected => &mut m.breaker_rejected,
        };
        *c = c.saturating_add(1);
    }
}

/// What the claim round means for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ClaimAction {
    /// The caller holds it. `note` when an expired lease was taken over; `reconcile` when an
    /// earlier call may have reached a provider (an expired lease, or a recorded unanswered
    /// call): look for the provider's acceptance before sending ([`reconcile`]).
    Proceed {
        note: Option<String>,
        reconcile: bool,
    },
    /// Found in the ledger: nothing to send.
    Replay(Replay),
    /// No claim was taken: defer (nothing to release).
    Defer(String),
}

/// Claim outcome → action.
pub(super) fn on_claim(outcome: &Result<ClaimOutcome, LedgerError>) -> ClaimAction {
    match outcome {
        Ok(ClaimOutcome::Claimed(claim)) => ClaimAction::Proceed {
            note: claim.reclaimed.as_ref().map(|r| {
                format!(
                    "reclaimed from the expired lease of {}: that attempt may have sent it",
                    r.previous_owner
                )
            }),
            reconcile: needs_reconciling(claim),
        },
        Ok(ClaimOutcome::AlreadySent(record)) => ClaimAction::Replay(Replay::Sent(record.clone())),
        Ok(ClaimOutcome::AlreadyFailed(record)) => {
            ClaimAction::Replay(Replay::Failed(record.clone()))
        }
        Ok(ClaimOutcome::Held { until }) => ClaimAction::Replay(Replay::Held { until: *until }),
        Err(error) => ClaimAction::Defer(format!("ledger unavailable ({error})")),
    }
}

/// Whether an earlier call of this message may have reached a provider.
pub(super) fn needs_reconciling(claim: &Claim) -> bool {
    claim.reclaimed.is_some() || claim.unanswered.is_some()
}

/// Whether `gateway`'s provider reports acceptance through a webhook this deployment verifies,
/// so its evidence can be waited for: Mailgun with a signing key, SendGrid with a verification
/// key, SES with notification topics. Gmail has no webhook (it is asked instead, see
/// [`Lookup`]), nor has an SMTP relay.
pub(super) fn reports_acceptance(gateway: &Gateway) -> bool {
    match &gateway.provider {
        ProviderSettings::Mailgun(m) => m.webhook_signing_key.is_some(),
        ProviderSettings::Sendgrid(s) => s.webhook_public_key.is_some(),
        ProviderSettings::AmazonSes(s) => !s.sns_topic_arns.is_empty(),
        _ => false,
    }
}

/// What to do with a message an earlier call may have delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reconcile {
    /// A provider has it: record it sent through `gateway`, call nobody.
    Accepted {
        gateway: String,
        accepted: Accepted,
        at: EpochMillis,
        note: String,
    },
    /// Its evidence may still come: keep the claim and look again at `until`.
    Wait { until: EpochMillis, reason: String },
    /// No evidence and none to wait for: send, flagged as a possible duplicate.
    Send { note: String },
}

/// What the sender found about one message before sending it again.
#[derive(Debug, Default)]
pub(super) struct Findings<'a> {
    /// The acceptance evidence the webhook edge recorded, if any.
    pub evidence: Option<&'a Evidence>,
    /// What asking each gateway's provider answered (gateway id, answer).
    pub lookups: Vec<(&'a str, Result<Lookup, SendError>)>,
    /// Whether the gateway of the earlier call (or, when unknown, any candidate) reports
    /// acceptance by webhook.
    pub evidence_expected: bool,
    /// Whether some provider could not be asked now (its lookup failed).
    pub lookup_failed: bool,
    /// The gateways looked at (id, type): the unanswered call's, else every candidate.
    pub gateways: Vec<(&'a str, &'a str)>,
}

impl Findings<'_> {
    /// The gateway evidence `e` is attributed to: the one it names, else the looked-at gateway
    /// of its provider's type (the unanswered call's when known), else the provider's name.
    fn gateway_of(&self, e: &Evidence) -> String {
        e.gateway
            .clone()
            .or_else(|| {
                self.gateways
                    .iter()
                    .find(|(_, kind)| *kind == e.provider)
                    .map(|(id, _)| (*id).to_owned())
            })
            .unwrap_or_else(|| e.provider.clone())
    }
}

/// Evidence → send, wait or record. `wait` is how long after the earlier call the webhook
/// evidence is waited for; the earlier call's time is the recorded one, else the end of the
/// lease it ran under (the call started before that).
pub(super) fn reconcile(
    claim: &Claim,
    findings: &Findings<'_>,
    wait: Duration,
    now: EpochMillis,
) -> Reconcile {
    if let Some(e) = findings.evidence {
        return Reconcile::Accepted {
            gateway: findings.gateway_of(e),
            accepted: Accepted {
                provider_message_id: e.provider_message_id.clone(),
                substituted_sender: None,
            },
            at: e.at,
            note: format!(
                "not sent again: {} reported it accepted ({} event) after a call that got no answer",
                e.provider, e.event
            ),
        };
    }
    for (gateway, answer) in &findings.lookups {
        if let Ok(Lookup::Found(accepted)) = answer {
            return Reconcile::Accepted {
                gateway: (*gateway).to_owned(),
                accepted: accepted.clone(),
                at: claim.unanswered.as_ref().map_or(now, |u| u.at),
                note: format!(
                    "not sent again: {gateway} has it (found by its Message-ID) after a call that got no answer"
                ),
            };
        }
    }
    let earlier = claim
        .unanswered
        .as_ref()
        .map(|u| u.at)
        .or_else(|| claim.reclaimed.as_ref().map(|r| r.lease_expired_at))
        .unwrap_or(now);
    let until = earlier.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
    if (findings.evidence_expected || findings.lookup_failed) && now < until {
        let why = if findings.lookup_failed {
            "its provider could not be asked"
        } else {
            "no acceptance event from its provider yet"
        };
        return Reconcile::Wait {
            until,
            reason: format!(
                "an earlier call may have delivered it and {why}; looking again at {}",
                format_rfc3339(until)
            ),
        };
    }
    Reconcile::Send {
        note: "sent again without evidence that an earlier call, which got no answer, was accepted: possible duplicate".to_owned(),
    }
}

/// Why a message does not go to a gateway this round, and what that costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Skip {
    pub note: String,
    pub retry_at: Option<EpochMillis>,
    /// The limits taken for it go back.
    pub refund: bool,
    pub counter: Option<Counter>,
}

/// Limit verdict → the grant to go on with, or why not.
pub(super) fn on_verdict(gateway: &str, verdict: Verdict) -> Result<Grant, Skip> {
    match verdict {
        Verdict::Admit(grant) => Ok(grant),
        Verdict::Refuse(refusal) => Err(Skip {
            note: format!("{gateway}: {}", describe_refusal(&refusal)),
            retry_at: refusal.retry_after(),
            refund: false,
            counter: Some(Counter::Limited),
        }),
    }
}

/// The limiter's state could not be used: nothing was taken.
pub(super) fn limits_unavailable(gateway: &str) -> Skip {
    Skip {
        note: format!("{gateway}: rate-limit state unavailable"),
        retry_at: None,
        refund: false,
        counter: None,
    }
}

/// Breaker permit (and whether a provider client and recipients exist) → the admission to
/// send with, or why not. Every refusal here gives its limits back.
pub(super) fn on_permit<E>(
    gateway: &str,
    permit: &Result<PermitOutcome, E>,
    has_provider: bool,
    has_message: bool,
) -> Result<Admission, Skip> {
    let skip = |note: String, retry_at, counter| Skip {
        note,
        retry_at,
        refund: true,
        counter,
    };
    match permit {
        Err(_) => Err(skip(
            format!("{gateway}: breaker state unavailable"),
            None,
            None,
        )),
        Ok(p) => match p.admission {
            Admission::Rejected { until } => Err(skip(
                format!("{gateway}: circuit breaker open"),
                Some(until),
                Some(Counter::BreakerRejected),
            )),
            _ if !has_provider || !has_message => {
                Err(skip(format!("{gateway}: no provider client"), None, None))
            }
            admission => Ok(admission),
        },
    }
}

/// Everything a provider's answer changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Effects {
    pub counter: Counter,
    /// Its limits go back (the provider did not take it).
    pub refund: bool,
    /// Record the unanswered call in the ledger, so any later claim looks for its acceptance.
    pub note_unanswered: bool,
    /// Counts as a failover when another candidate follows.
    pub failover: bool,
    pub then: Then,
}

/// Provider answer → effects. `lease_until` ends the caller's claim.
pub(super) fn on_answer(
    gateway: &str,
    answer: &Result<Accepted, SendError>,
    policy: AmbiguousPolicy,
    lease_until: EpochMillis,
) -> Effects {
    let e = match answer {
        Ok(accepted) => {
            return Effects {
                counter: Counter::Sent,
                refund: false,
                note_unanswered: false,
                failover: false,
                then: Then::Sent(accepted.clone()),
            };
        }
        Err(e) => e,
    };
    let next = |note: String, retry_at, unsuitable| Then::Next {
        note,
        retry_at,
        unsuitable,
    };
    let (counter, refund, failover, then) = match e.class() {
        ErrorClass::Permanent => (
            Counter::Permanent,
            true,
            false,
            Then::Failed(truncate(format!(
                "{gateway} refused it permanently: {}",
                e.detail
            ))),
        ),
        ErrorClass::Unsuitable => (
            Counter::Permanent,
            true,
            false,
            next(
                format!("{gateway}: cannot take it: {}", e.detail),
                None,
                true,
            ),
        ),
        class @ (ErrorClass::Throttled | ErrorClass::Unavailable | ErrorClass::Auth) => (
            match class {
                ErrorClass::Throttled => Counter::Throttled,
                ErrorClass::Auth => Counter::Auth,
                _ => Counter::Unavailable,
            },
            true,
            true,
            next(
                format!("{gateway}: {}", truncate(e.to_string())),
                e.retry_after(),
                false,
            ),
        ),
        // The provider may have it: its quota stays consumed.
        ErrorClass::Ambiguous => match policy {
            AmbiguousPolicy::Defer => (
                Counter::Ambiguous,
                false,
                false,
                Then::Hold {
                    reason: format!(
                        "{gateway}: no answer after the request was sent; the provider may have accepted it (its acceptance is looked for before any new call)"
                    ),
                    retry_at: lease_until,
                },
            ),
            AmbiguousPolicy::Failover => (
                Counter::Ambiguous,
                false,
                true,
                next(
                    format!("{gateway}: no answer (ambiguous); failed over, possible duplicate"),
                    None,
                    false,
                ),
            ),
        },
    };
    Effects {
        counter,
        refund,
        note_unanswered: e.class() == ErrorClass::Ambiguous,
        failover,
        then,
    }
}

pub(super) fn describe_refusal(refusal: &Refusal) -> String {
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

/// How long a deferred message waits: the earliest of the known times, and of the backoff
/// when a candidate failed without one (a known time much later, an hourly limit say, must
/// not hide a gateway that may be back sooner). After an unanswered call (`keep_claim`) the
/// claim's lease must end first, so its time stands. Never past `expires_at` (+1 s), when it
/// is to be failed.
#[allow(clippy::too_many_arguments)]
pub(super) fn deferral(
    retry_at: Option<EpochMillis>,
    retry_unknown: bool,
    keep_claim: bool,
    expires_at: Option<EpochMillis>,
    backoff: &super::Backoff,
    id: &str,
    receive_count: u32,
    now: EpochMillis,
) -> Duration {
    let after = match retry_at {
        None => backoff.delay(id, receive_count),
        Some(at) if retry_unknown && !keep_claim => backoff
            .until(at, now, id, receive_count)
            .min(backoff.delay(id, receive_count)),
        Some(at) => backoff.until(at, now, id, receive_count),
    };
    match expires_at {
        Some(at) => after.min(
            Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
                + Duration::from_secs(1),
        ),
        None => after,
    }
}

/// Whether this receive is the last the queue allows, so a message that would be deferred once
/// more is given up (recorded failed, handed to the dead-letter queue) instead.
pub(super) fn gives_up(receive_count: u32, max_receive_count: Option<u32>) -> bool {
    max_receive_count.is_some_and(|max| receive_count >= max)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::ledger::{Reclaimed, SentRecord, Unanswered};
    use crate::limiter::LevelKind;

    const NOW: EpochMillis = 1_795_860_000_000;

    fn claim(reclaimed: bool, unanswered: Option<(&str, EpochMillis)>) -> Claim {
        Claim {
            message_id: "m-1".into(),
            owner: "me".into(),
            lease_until: NOW + 60_000,
            attempt: 2,
            reclaimed: reclaimed.then(|| Reclaimed {
                previous_owner: "them".into(),
                lease_expired_at: NOW - 10_000,
            }),
            unanswered: unanswered.map(|(g, at)| Unanswered {
                gateway: g.into(),
                at,
            }),
        }
    }

    fn accepted(id: Option<&str>) -> Accepted {
        Accepted {
            provider_message_id: id.map(str::to_owned),
            substituted_sender: None,
        }
    }

    fn err(class: ErrorClass) -> SendError {
        SendError::new(class, "test", "boom")
    }

    #[test]
    fn claim_outcomes_become_actions() {
        let sent = SentRecord {
            gateway: "gw".into(),
            provider_message_id: None,
            at: NOW,
        };
        let cases: Vec<(Result<ClaimOutcome, LedgerError>, ClaimAction)> = vec![
            (
                Ok(ClaimOutcome::Claimed(claim(false, None))),
                ClaimAction::Proceed {
                    note: None,
                    reconcile: false,
                },
            ),
            (
                Ok(ClaimOutcome::Claimed(claim(true, None))),
                ClaimAction::Proceed {
                    note: Some(
                        "reclaimed from the expired lease of them: that attempt may have sent it"
                            .into(),
                    ),
                    reconcile: true,
                },
            ),
            (
                Ok(ClaimOutcome::Claimed(claim(false, Some(("gw", NOW - 5))))),
                ClaimAction::Proceed {
                    note: None,
                    reconcile: true,
                },
            ),
            (
                Ok(ClaimOutcome::AlreadySent(sent.clone())),
                ClaimAction::Replay(Replay::Sent(sent)),
            ),
            (
                Ok(ClaimOutcome::Held { until: NOW + 5 }),
                ClaimAction::Replay(Replay::Held { until: NOW + 5 }),
            ),
            (
                Err(LedgerError::Contended { attempts: 4 }),
                ClaimAction::Defer(
                    "ledger unavailable (ledger entry contended: 4 conditional writes lost)".into(),
                ),
            ),
        ];
        for (outcome, want) in cases {
            assert_eq!(on_claim(&outcome), want, "{outcome:?}");
        }
    }

    #[test]
    fn answers_decide_refund_ledger_note_failover_and_what_follows() {
        use ErrorClass::*;
        let lease = NOW + 60_000;
        // (answer, policy, counter, refund, note_unanswered, failover, then's kind)
        let cases = [
            (
                None,
                AmbiguousPolicy::Defer,
                Counter::Sent,
                false,
                false,
                false,
                "sent",
            ),
            (
                Some(Permanent),
                AmbiguousPolicy::Defer,
                Counter::Permanent,
                true,
                false,
                false,
                "failed",
            ),
            (
                Some(Unsuitable),
                AmbiguousPolicy::Defer,
                Counter::Permanent,
                true,
                false,
                false,
                "unsuitable",
            ),
            (
                Some(Throttled),
                AmbiguousPolicy::Defer,
                Counter::Throttled,
                true,
                false,
                true,
                "next",
            ),
            (
                Some(Unavailable),
                AmbiguousPolicy::Defer,
                Counter::Unavailable,
                true,
                false,
                true,
                "next",
            ),
            (
                Some(Auth),
                AmbiguousPolicy::Defer,
                Counter::Auth,
                true,
                false,
                true,
                "next",
            ),
            (
                Some(Ambiguous),
                AmbiguousPolicy::Defer,
                Counter::Ambiguous,
                false,
                true,
                false,
                "hold",
            ),
            (
                Some(Ambiguous),
                AmbiguousPolicy::Failover,
                Counter::Ambiguous,
                false,
                true,
                true,
                "next",
            ),
        ];
        for (class, policy, counter, refund, note, failover, kind) in cases {
            let answer = class.map_or_else(|| Ok(accepted(None)), |c| Err(err(c)));
            let e = on_answer("gw-a", &answer, policy, lease);
            assert_eq!(
                (e.counter, e.refund, e.note_unanswered, e.failover),
                (counter, refund, note, failover),
                "{class:?} {policy:?}"
            );
            let got = match &e.then {
                Then::Sent(_) => "sent",
                Then::Failed(r) => {
                    assert_eq!(r, "gw-a refused it permanently: boom");
                    "failed"
                }
                Then::Next {
                    unsuitable: true, ..
                } => "unsuitable",
                Then::Next { note, .. } => {
                    assert!(note.starts_with("gw-a: "), "{note}");
                    "next"
                }
                Then::Hold { retry_at, .. } => {
                    assert_eq!(*retry_at, lease, "held until the lease ends");
                    "hold"
                }
            };
            assert_eq!(got, kind, "{class:?} {policy:?}");
        }
    }

    #[test]
    fn a_throttle_keeps_the_providers_retry_time() {
        let at = NOW + 30_000;
        let mut e = SendError::new(ErrorClass::Throttled, "test", "slow down");
        e.retry_after = Some(at);
        let answer = Err(e);
        match on_answer("gw", &answer, AmbiguousPolicy::Defer, NOW).then {
            Then::Next { retry_at, .. } => assert_eq!(retry_at, Some(at)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limit_and_breaker_refusals_say_why_and_who_pays() {
        let refused = on_verdict(
            "gw",
            Verdict::Refuse(Refusal::Exhausted {
                level: LevelKind::GatewayHourly,
                retry_after: NOW + 1_000,
            }),
        )
        .unwrap_err();
        assert_eq!(
            refused,
            Skip {
                note: "gw: per_hour limit reached".into(),
                retry_at: Some(NOW + 1_000),
                refund: false,
                counter: Some(Counter::Limited),
            }
        );
        let permit = |admission| -> Result<PermitOutcome, ()> {
            Ok(PermitOutcome {
                admission,
                transition: None,
                malformed: None,
            })
        };
        type Case = (
            Result<PermitOutcome, ()>,
            bool,
            bool,
            Result<Admission, Skip>,
        );
        let cases: Vec<Case> = vec![
            (
                permit(Admission::Allowed),
                true,
                true,
                Ok(Admission::Allowed),
            ),
            (permit(Admission::Trial), true, true, Ok(Admission::Trial)),
            (
                permit(Admission::Rejected { until: NOW + 9 }),
                true,
                true,
                Err(Skip {
                    note: "gw: circuit breaker open".into(),
                    retry_at: Some(NOW + 9),
                    refund: true,
                    counter: Some(Counter::BreakerRejected),
                }),
            ),
            (
                permit(Admission::Allowed),
                false,
                true,
                Err(Skip {
                    note: "gw: no provider client".into(),
                    retry_at: None,
                    refund: true,
                    counter: None,
                }),
            ),
            (
                Err(()),
                true,
                true,
                Err(Skip {
                    note: "gw: breaker state unavailable".into(),
                    retry_at: None,
                    refund: true,
                    counter: None,
                }),
            ),
        ];
        for (p, provider, message, want) in cases {
            assert_eq!(on_permit("gw", &p, provider, message), want, "{p:?}");
        }
    }

    fn evidence() -> Evidence {
        Evidence {
            gateway: Some("gw-mg".into()),
            provider: "mailgun".into(),
            provider_message_id: Some("<p-1@mg>".into()),
            event: "accepted".into(),
            at: NOW - 20_000,
        }
    }

    #[test]
    fn an_unanswered_call_is_recorded_waited_for_or_sent_again_flagged() {
        let wait = Duration::from_secs(120);
        let ev = evidence();
        let found = Lookup::Found(accepted(Some("g-1")));
        let c = claim(true, Some(("gw-mg", NOW - 30_000)));
        // (findings, now, expected kind)
        let cases: Vec<(Findings<'_>, EpochMillis, &str)> = vec![
            (
                Findings {
                    evidence: Some(&ev),
                    ..Findings::default()
                },
                NOW,
                "accepted",
            ),
            (
                Findings {
                    lookups: vec![("gw-gmail", Ok(found))],
                    ..Findings::default()
                },
                NOW,
                "accepted",
            ),
            // Evidence expected, inside the window: wait.
            (
                Findings {
                    evidence_expected: true,
                    ..Findings::default()
                },
                NOW,
                "wait",
            ),
            // ... and after it: send, flagged.
            (
                Findings {
                    evidence_expected: true,
                    ..Findings::default()
                },
                NOW + 90_000,
                "send",
            ),
            // A provider that could not be asked is asked again, within the window.
            (
                Findings {
                    lookups: vec![("gw-gmail", Err(err(ErrorClass::Unavailable)))],
                    lookup_failed: true,
                    ..Findings::default()
                },
                NOW,
                "wait",
            ),
            // Nothing to wait for (SMTP, or Gmail that has no such message): send at once.
            (
                Findings {
                    lookups: vec![("gw-gmail", Ok(Lookup::NotFound))],
                    ..Findings::default()
                },
                NOW,
                "send",
            ),
            (Findings::default(), NOW, "send"),
        ];
        for (findings, now, kind) in cases {
            let got = reconcile(&c, &findings, wait, now);
            let k = match &got {
                Reconcile::Accepted { .. } => "accepted",
                Reconcile::Wait { until, .. } => {
                    assert_eq!(*until, NOW - 30_000 + 120_000, "from the unanswered call");
                    "wait"
                }
                Reconcile::Send { note } => {
                    assert!(note.contains("possible duplicate"), "{note}");
                    "send"
                }
            };
            assert_eq!(k, kind, "{findings:?} at {now}");
        }
        match reconcile(
            &c,
            &Findings {
                evidence: Some(&ev),
                ..Findings::default()
            },
            wait,
            NOW,
        ) {
            Reconcile::Accepted {
                gateway,
                accepted,
                at,
                ..
            } => {
                assert_eq!(gateway, "gw-mg");
                assert_eq!(accepted.provider_message_id.as_deref(), Some("<p-1@mg>"));
                assert_eq!(at, NOW - 20_000, "the provider's time");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn evidence_naming_no_gateway_is_attributed_to_the_gateway_of_its_provider() {
        let c = claim(true, None);
        let mut ev = evidence();
        ev.gateway = None;
        let attributed = |gateways: Vec<(&'static str, &'static str)>| {
            let findings = Findings {
                evidence: Some(&ev),
                gateways,
                ..Findings::default()
            };
            match reconcile(&c, &findings, Duration::from_secs(60), NOW) {
                Reconcile::Accepted { gateway, .. } => gateway,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            attributed(vec![("gw-s", "sendgrid"), ("gw-m", "mailgun")]),
            "gw-m"
        );
        assert_eq!(attributed(vec![("gw-s", "sendgrid")]), "mailgun");
    }

    #[test]
    fn without_a_recorded_call_the_window_runs_from_the_expired_lease() {
        let c = claim(true, None);
        let findings = Findings {
            evidence_expected: true,
            ..Findings::default()
        };
        match reconcile(&c, &findings, Duration::from_secs(60), NOW) {
            Reconcile::Wait { until, .. } => assert_eq!(until, NOW - 10_000 + 60_000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deferrals_take_the_earliest_known_time_and_never_outlast_expiry() {
        let backoff = super::super::Backoff::default();
        let base = backoff.delay("m", 1);
        let later = NOW + 3_600_000;
        let hour = backoff.until(later, NOW, "m", 1);
        let cases = [
            // (retry_at, unknown, keep_claim, expires_at, want)
            (None, true, false, None, base),
            (Some(later), false, false, None, hour),
            (Some(later), true, false, None, base.min(hour)),
            (Some(later), true, true, None, hour),
            (
                None,
                true,
                false,
                Some(NOW + 4_000),
                Duration::from_secs(5).min(base),
            ),
        ];
        for (retry_at, unknown, keep, expires, want) in cases {
            assert_eq!(
                deferral(retry_at, unknown, keep, expires, &backoff, "m", 1, NOW),
                want,
                "{retry_at:?} {unknown} {keep} {expires:?}"
            );
        }
        assert!(gives_up(20, Some(20)));
        assert!(!gives_up(19, Some(20)));
        assert!(!gives_up(1_000, None));
    }
}
