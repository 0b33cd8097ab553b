//! The sender function (DESIGN §1): `main.rs` wires the dependencies once, [`handler`]
//! translates each SQS event into one call of the send pipeline and its report back into the
//! Lambda answer.

pub mod handler;

pub use handler::{
    Deps, EARLIEST_DEADLINE_MS, HandlerError, LOCAL_DEADLINE_MS, effective_deadline, handle,
    received,
};
