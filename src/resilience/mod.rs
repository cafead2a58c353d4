//! Resilience: what happens when work fails. The error taxonomy itself is
//! [`crate::error`]; here is what is built on it.
//!
//! - [`deadletter`]: the one shape of a dead letter on `dlq.<original subject>` (stream
//!   `DLQ`), used by data sync, the data flow and tasks; the `deadletter` component
//!   that turns the server's consumer advisories into entries for every other
//!   consumer; replay and `switchyard dlq ls|show|replay|purge`.
//! - [`errorlog`]: every reported error as an envelope on `errors.<component>` (stream
//!   `ERRORS`); components reach it through [`crate::component::Context::errors`].
//! - [`tasks`]: durable asynchronous tasks (submit, state in KV `tasks`, events); the
//!   workers are in the SDK.
//! - The gateway's call protection, each usable on its own: [`retry`] (exponential
//!   backoff with full jitter, bounded by the caller's deadline), [`budget`] (retries
//!   at most a share of a service's requests), [`breaker`] (closed, open, half-open),
//!   [`fallback`] (another service, the last good reply, a static answer), all counting
//!   over a lock-free sliding [`window`].

pub mod breaker;
pub mod budget;
pub mod deadletter;
pub mod errorlog;
pub mod fallback;
pub mod retry;
pub mod tasks;
pub mod window;
