//! The simulated gateway for local runs and load tests: after the configured `latency` it
//! answers with an outcome drawn from the configured mix, deterministically.
//!
//! The draw is a pure function of `(seed, message id, attempt)` ([`simulated_outcome`]), where
//! `attempt` counts this provider's `send` calls for that message id in this process, starting
//! at 1. A test can therefore predict every answer, and a retried message gets a fresh draw (a
//! throttled message can succeed on its second attempt).
//!
//! The unit interval is cut in this order: `[0, throttle)` → throttled (retry after
//! [`THROTTLE_RETRY_MS`]), then unavailable (a simulated 503), then an ambiguous timeout, then a
//! permanent rejection (a simulated 400), and the rest succeeds.
//!
//! The attempt counters live in memory and are never pruned: this gateway is for local runs,
//! not for production volumes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::EpochMillis;
use crate::config::SimulatedSettings;
use crate::message::OutboundMessage;

use super::{Accepted, ErrorClass, ProbeReport, Provider, SendError};

/// Provider name in errors and logs.
pub const PROVIDER: &str = "simulated";
/// How long after `now` a simulated throttle says to retry, in milliseconds.
pub const THROTTLE_RETRY_MS: i64 = 1_000;

/// What one simulated send answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimulatedOutcome {
    /// Accepted.
    Success,
    /// 429.
    Throttled,
    /// 503.
    Unavailable,
    /// Timeout after the request was sent.
    Ambiguous,
    /// 400: the message is refused.
    Permanent,
}

/// The outcome for `(seed, message_id, attempt)` under the settings' rates (module docs).
pub fn simulated_outcome(
    settings: &SimulatedSettings,
    message_id: &str,
    attempt: u32,
) -> SimulatedOutcome {
    let x = unit_draw(settings.seed, message_id, attempt);
    let bands = [
        (settings.throttle_rate, SimulatedOutcome::Throttled),
        (settings.unavailable_rate, SimulatedOutcome::Unavailable),
        (settings.timeout_rate, SimulatedOutcome::Ambiguous),
        (settings.permanent_rate, SimulatedOutcome::Permanent),
    ];
    let mut upper = 0.0;
    for (rate, outcome) in bands {
        upper += rate;
        if x < upper {
            return outcome;
        }
    }
    SimulatedOutcome::Success
}

/// A number in `[0, 1)` from the seed, id and attempt: FNV-1a over the inputs, finished with
/// the SplitMix64 mixer so that neighbouring ids spread over the interval.
fn unit_draw(seed: u64, message_id: &str, attempt: u32) -> f64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    let bytes = seed
        .to_le_bytes()
        .into_iter()
        .chain(message_id.bytes())
        .chain([0xff])
        .chain(attempt.to_le_bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // The top 53 bits fill an f64 mantissa exactly.
    #[allow(clippy::cast_precision_loss)]
    let x = (z >> 11) as f64 / (1u64 << 53) as f64;
    x
}

/// A simulated gateway's client.
#[derive(Debug)]
pub struct SimulatedProvider {
    gateway_id: String,
    settings: SimulatedSettings,
    attempts: Mutex<HashMap<String, u32>>,
}

impl SimulatedProvider {
    /// A simulated gateway with its `simulated` block.
    pub fn new(gateway_id: impl Into<String>, settings: SimulatedSettings) -> Self {
        Self {
            gateway_id: gateway_id.into(),
            settings,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    fn next_attempt(&self, message_id: &str) -> u32 {
        // A poisoned lock only means another send panicked mid-increment; the counts are
        // still usable.
        let mut attempts = self
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = attempts.entry(message_id.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }
}

#[async_trait]
impl Provider for SimulatedProvider {
    fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    async fn send(
        &self,
        message: &OutboundMessage,
        now: EpochMillis,
    ) -> Result<Accepted, SendError> {
        let attempt = self.next_attempt(message.id());
        let outcome = simulated_outcome(&self.settings, message.id(), attempt);
        if self.settings.latency > Duration::ZERO {
            tokio::time::sleep(self.settings.latency).await;
        }
        let fail = |class, status: Option<u16>, detail: &str| {
            let mut e = SendError::new(class, PROVIDER, detail);
            e.http_status = status;
            e
        };
        match outcome {
            SimulatedOutcome::Success => Ok(Accepted {
                provider_message_id: Some(format!("sim-{}-{attempt}", message.id())),
                substituted_sender: None,
            }),
            SimulatedOutcome::Throttled => {
                let mut e = fail(ErrorClass::Throttled, Some(429), "simulated rate limit");
                e.retry_after = Some(now.saturating_add(THROTTLE_RETRY_MS));
                Err(e)
            }
            SimulatedOutcome::Unavailable => Err(fail(
                ErrorClass::Unavailable,
                Some(503),
                "simulated service unavailable",
            )),
            SimulatedOutcome::Ambiguous => Err(fail(
                ErrorClass::Ambiguous,
                None,
                "simulated timeout after sending",
            )),
            SimulatedOutcome::Permanent => Err(fail(
                ErrorClass::Permanent,
                Some(400),
                "simulated permanent rejection",
            )),
        }
    }

    /// Fails (`Unavailable`) exactly when the unavailable rate is 1.0 or more: a gateway
    /// configured to be always down looks down to the health checker too.
    async fn probe(&self) -> Result<ProbeReport, SendError> {
        if self.settings.unavailable_rate >= 1.0 {
            return Err(SendError::new(
                ErrorClass::Unavailable,
                PROVIDER,
                "simulated gateway is configured to be unavailable",
            ));
        }
        Ok(ProbeReport::new(self.settings.latency))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::parse_message;

    fn settings(t: f64, u: f64, a: f64, p: f64) -> SimulatedSettings {
        SimulatedSettings {
            latency: Duration::ZERO,
            seed: 42,
            throttle_rate: t,
            unavailable_rate: u,
            timeout_rate: a,
            permanent_rate: p,
        }
    }

    fn message(id: &str) -> OutboundMessage {
        let json = serde_json::json!({
            "id": id, "from": "d@x.example", "to": ["a@x.example"], "subject": "s", "text": "t"
        });
        parse_message(json.to_string().as_bytes(), None).unwrap()
    }

    #[test]
    fn a_certain_rate_always_gives_its_outcome() {
        let cases = [
            (settings(1.0, 0.0, 0.0, 0.0), SimulatedOutcome::Throttled),
            (settings(0.0, 1.0, 0.0, 0.0), SimulatedOutcome::Unavailable),
            (settings(0.0, 0.0, 1.0, 0.0), SimulatedOutcome::Ambiguous),
            (settings(0.0, 0.0, 0.0, 1.0), SimulatedOutcome::Permanent),
            (settings(0.0, 0.0, 0.0, 0.0), SimulatedOutcome::Success),
        ];
        for (s, expected) in cases {
            for i in 0..50 {
                assert_eq!(simulated_outcome(&s, &format!("m{i}"), 1), expected);
            }
        }
    }

    #[test]
    fn the_mix_matches_the_rates_over_many_messages() {
        let s = settings(0.1, 0.2, 0.05, 0.15);
        let mut counts: HashMap<String, u32> = HashMap::new();
        for i in 0..20_000 {
            let o = simulated_outcome(&s, &format!("msg-{i}"), 1);
            *counts.entry(format!("{o:?}")).or_default() += 1;
        }
        let share = |k: &str| f64::from(counts.get(k).copied().unwrap_or(0)) / 20_000.0;
        for (k, rate) in [
            ("Throttled", 0.1),
            ("Unavailable", 0.2),
            ("Ambiguous", 0.05),
            ("Permanent", 0.15),
            ("Success", 0.5),
        ] {
            assert!((share(k) - rate).abs() < 0.02, "{k}: {}", share(k));
        }
    }

    #[test]
    fn the_same_seed_id_and_attempt_give_the_same_outcome_and_seeds_differ() {
        let s = settings(0.25, 0.25, 0.25, 0.0);
        let mut other = s.clone();
        other.seed = 7;
        let ours: Vec<_> = (0..64)
            .map(|i| simulated_outcome(&s, &format!("m{i}"), 1))
            .collect();
        let again: Vec<_> = (0..64)
            .map(|i| simulated_outcome(&s, &format!("m{i}"), 1))
            .collect();
        let theirs: Vec<_> = (0..64)
            .map(|i| simulated_outcome(&other, &format!("m{i}"), 1))
            .collect();
        assert_eq!(ours, again);
        assert_ne!(ours, theirs);
    }

    #[tokio::test]
    async fn each_send_of_a_message_is_the_next_attempt() {
        let s = settings(0.5, 0.0, 0.0, 0.0);
        let p = SimulatedProvider::new("sim", s.clone());
        let m = message("retry-me");
        for attempt in 1..=6 {
            let expected = simulated_outcome(&s, "retry-me", attempt);
            let got = p.send(&m, 1_000).await;
            match (expected, got) {
                (SimulatedOutcome::Success, Ok(a)) => {
                    assert_eq!(
                        a.provider_message_id,
                        Some(format!("sim-retry-me-{attempt}"))
                    );
                }
                (SimulatedOutcome::Throttled, Err(e)) => {
                    assert_eq!(e.class, ErrorClass::Throttled);
                    assert_eq!(e.retry_after, Some(1_000 + THROTTLE_RETRY_MS));
                }
                (expected, got) => panic!("attempt {attempt}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[tokio::test]
    async fn probe_fails_only_when_always_unavailable() {
        let down = SimulatedProvider::new("sim", settings(0.0, 1.0, 0.0, 0.0));
        assert_eq!(
            down.probe().await.unwrap_err().class,
            ErrorClass::Unavailable
        );
        let flaky = SimulatedProvider::new("sim", settings(0.0, 0.99, 0.0, 0.0));
        assert!(flaky.probe().await.is_ok());
    }
}
