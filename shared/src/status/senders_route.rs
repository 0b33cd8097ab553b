//! `GET /api/senders/{address}/usage`: one sender's use of its daily limit (`per_user_daily`, or
//! its `custom_user_limits` entry) on each gateway that limits it.
//!
//! The answer is `{"sender", "generated_at", "gateways": [{"id", "used", "limit", "remaining",
//! "resets_at"}]}`: `sender` is the address lower-cased (limits ignore case), `gateways` one entry
//! per configured gateway (enabled or not) that limits this sender, in config order, and an empty
//! list when none does. Most do: `per_user_daily` is 200 a day unless the config says otherwise;
//! a gateway limits no sender with `per_user_daily: null`, and not this one with a `null` entry
//! for it in `custom_user_limits`. `remaining` is the share left (0–1) as in
//! `GET /api/gateways/status`; `resets_at` is the next UTC midnight.
//!
//! Each sender's day counter is its own item ([`limiter::sender_key`]), so the answer is one
//! `BatchGetItem` of at most one key per gateway ([`limiter::read_sender_usage`]): no scan, whatever
//! the number of senders. The operator levers are not read: a limit override (`limits_set`)
//! changes a gateway's day, hour and burst limits, never a sender's.
//!
//! `{address}` is one percent-encoded path segment, decoded as `GET /api/messages/{id}` decodes
//! its id (`+` stays a plus: `ada+results@…` is an address), then parsed as the message contract
//! parses a sender ([`EmailAddress::parse`]). An address that does not decode or parse is answered
//! 400 `invalid_address` naming the value; the caller gave it, and it is not logged.

use serde::Serialize;
use serde_json::json;

use super::{Reply, StatusApi, Unavailable, percent_decode};
use crate::address::EmailAddress;
use crate::clock::EpochMillis;
use crate::limiter;

/// The route's prefix; the rest of the path is `{address}/usage`.
pub(super) const PREFIX: &str = "/api/senders/";

/// One gateway's limit of the sender, as answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct SenderLimitShown {
    /// Gateway id.
    id: String,
    /// Recipients counted today (leased by a running sender instance included).
    used: u64,
    /// The sender's daily limit on this gateway.
    limit: u64,
    /// Share left, 0–1.
    remaining: f64,
    /// The next UTC midnight (epoch ms).
    resets_at: EpochMillis,
}

impl StatusApi {
    /// Answers a path under [`PREFIX`]: 404 unless it is `{address}/usage`.
    pub(super) async fn sender_route(&self, path: &str) -> Result<Reply, Unavailable> {
        let segment = path
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.strip_suffix("/usage"))
            .filter(|s| !s.is_empty() && !s.contains('/'));
        match segment {
            Some(segment) => self.sender_usage(segment).await,
            None => Ok(Reply::error(
                404,
                "not_found",
                "sender routes: GET /api/senders/{address}/usage",
            )),
        }
    }

    async fn sender_usage(&self, segment: &str) -> Result<Reply, Unavailable> {
        let Some(decoded) = percent_decode(segment) else {
            return Ok(Reply::error(
                400,
                "invalid_address",
                format!(
                    "the sender address in the path, {segment:?}, is not percent-encoded UTF-8"
                ),
            ));
        };
        let address = match EmailAddress::parse(&decoded) {
            Ok(address) => address,
            Err(problem) => {
                return Ok(Reply::error(
                    400,
                    "invalid_address",
                    format!("{decoded:?} is not a sender address: {problem}"),
                ));
            }
        };
        let now = self.clock.now_ms();
        let usage = limiter::read_sender_usage(
            self.state.as_ref(),
            &self.config,
            address.as_str(),
            now,
        )
        .await
        .map_err(|error| {
            tracing::warn!(error_kind = "state", %error, "status read of a sender's usage failed");
            Unavailable::State
        })?;
        let gateways: Vec<SenderLimitShown> = usage
            .into_iter()
            .map(|(id, u)| SenderLimitShown {
                id,
                used: u.used,
                limit: u.limit,
                remaining: u.remaining_fraction(),
                resets_at: u.resets_at,
            })
            .collect();
        Ok(Reply::json(
            200,
            &json!({"sender": address.to_key(), "generated_at": now, "gateways": gateways}),
        ))
    }
}
