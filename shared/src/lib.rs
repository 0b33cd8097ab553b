//! `gateway-core`: everything the mail gateway knows, independent of how it is triggered.
//!
//! Pure cores take `now` and state as arguments and do no I/O:
//! [`message`] (the outbound message contract), [`config`] (the gateway configuration),
//! [`router`], [`limiter`], [`breaker`], provider webhook normalisation ([`webhooks`]) and the
//! customer-facing Mandrill format ([`mandrill`]). Ports are traits with in-memory adapters:
//! [`state::StateStore`], [`records::RecordWriter`] / [`records::RecordReader`],
//! [`events::EventSink`], [`clock::Clock`]. Later adapters (DynamoDB, MySQL, SQS) implement the
//! same traits, and the contract test suites run against every implementation.

#![warn(missing_docs)]

pub mod address;
pub mod breaker;
pub mod clock;
pub mod config;
pub mod config_audit;
pub mod customer_webhooks;
pub mod duration;
pub mod events;
pub mod health;
pub mod health_check;
pub mod ledger;
pub mod limiter;
pub mod mandrill;
pub mod message;
pub mod mime;
pub mod pattern;
pub mod pipeline;
pub mod providers;
pub mod queue;
pub mod recorder;
pub mod records;
pub mod router;
pub mod secrets;
pub mod sqs_sink;
pub mod startup;
pub mod state;
pub mod status;
pub mod suppression;
pub mod webhooks;
