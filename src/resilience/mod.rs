//! Resilience: what happens when work fails. The error taxonomy itself is
//! [`crate::error`]; here is what is built on it.
//!
//! - [`deadletter`]: the one shape of a dead letter on `dlq.<original subject>` (stream
//!   `DLQ`), used by data sync, the data flow and (later) tasks.

pub mod deadletter;
