//! Observability: the metric collector and the process's logging. The log manager
//! (logs on NATS) and the alert system build on these.

pub mod logging;
pub mod metrics;
