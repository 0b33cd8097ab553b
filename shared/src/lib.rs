//! `gateway-core`: everything the mail gateway knows, independent of how it is triggered.
//!
//! The map is docs/ARCHITECTURE.md. Pure cores take `now` and state as arguments and do no I/O:
//! [`message`] (the outbound message contract), [`config`] (the gateway configuration),
//! [`router`], the decisions of [`limiter`], [`breaker`] and [`health`], provider webhook
//! verification and normalisation ([`webhooks`]), the MIME builder and the customer-facing
//! Mandrill format ([`mandrill`]). Ports are traits: [`state::StateStore`], [`queue::Queue`],
//! [`providers::Provider`], [`records::RecordWriter`] / [`records::RecordReader`],
//! [`events::EventSink`], [`clock::Clock`]. Their adapters are named after their technology
//! (`state::{memory, dynamodb}`, `queue::{memory, sqs}`, `records::mysql`, [`sqs_sink`], one
//! client per provider), and the contract test suites run against every implementation.
//! Services compose them ([`pipeline`], [`recorder`], [`customer_webhooks`], the health checker,
//! [`status`], the webhook edge); [`startup`] is the one wiring path of every entry point.
//!
//! Features: `providers` (the provider clients, the MIME builder: the sender, the health check
//! and the CLI) and `mysql` (the record of delivery: the recorder, the status API and the CLI),
//! both on by default; each function enables only what it links.

#![warn(missing_docs)]

pub mod address;
pub mod attachments;
pub mod breaker;
pub mod clock;
pub mod config;
pub mod config_audit;
pub mod customer_webhooks;
pub mod duration;
pub mod emf;
pub mod events;
pub mod evidence;
pub mod health;
pub mod ledger;
pub mod levers;
pub mod limiter;
pub mod live_config;
pub mod mandrill;
pub mod message;
#[cfg(feature = "providers")]
pub mod mime;
pub mod outcome;
pub mod pattern;
pub mod pipeline;
pub mod providers;
pub mod queue;
pub mod recorder;
pub mod records;
pub mod retry;
pub mod router;
pub mod secrets;
pub mod sqs_sink;
pub mod startup;
pub mod state;
pub mod status;
pub mod suppression;
pub mod tls;
pub mod webhooks;
