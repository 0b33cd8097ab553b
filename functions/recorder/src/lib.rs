//! The recorder function (DESIGN §1): `main.rs` wires the dependencies once, [`handler`]
//! translates each SQS event of the events queue into one call of
//! [`gateway_core::recorder::Recorder::process`] and its report back into partial batch failures.

pub mod handler;

pub use handler::{Deps, HandlerError, handle};
