//! Integration tests of the mail gateway against real local services (the moto emulator for
//! DynamoDB, SQS, SES, Secrets Manager and SSM; MariaDB), local fake provider servers and the
//! published verification vectors. One test binary: each suite is a module.
//!
//! `scripts/services up && source .local/services.env` first (`scripts/test` does it); a suite
//! that needs a service names it when it is missing.

mod config_files;
mod customer_webhooks;
mod dynamodb_budget;
mod dynamodb_state;
mod factory_providers;
mod health_checker;
mod hostile_parsers;
mod load_model;
mod message_contract;
mod message_search;
mod mime_roundtrip;
mod providers_gmail;
mod providers_mailgun;
mod providers_sendgrid;
mod providers_ses;
mod providers_smtp;
mod queue_sqs;
mod records_mysql;
mod repository;
mod retention;
mod secrets_aws;
mod sender_e2e;
mod status_api;
mod template;
mod webhooks_edge;
