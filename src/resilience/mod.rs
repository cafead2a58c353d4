//! Resilience: what happens when work fails. The error taxonomy itself is
//! [`crate::error`]; here is what is built on it.
//!
//! - [`deadletter`]: the one shape of a dead letter on `dlq.<original subject>` (stream
//!   `DLQ`), used by data sync, the data flow and (later) tasks.
//! - [`errorlog`]: every reported error as an envelope on `errors.<component>` (stream
//!   `ERRORS`); components reach it through [`crate::component::Context::errors`].

pub mod deadletter;
pub mod errorlog;
