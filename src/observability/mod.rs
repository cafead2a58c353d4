//! Observability: the metric collector ([`metrics`]), the process's logging with a
//! filter that changes at runtime ([`logging`]), the log manager that also publishes
//! logs on NATS ([`logs`]) and the `logs` / `log-level` commands ([`logs_cli`]), and
//! the alert system the leading coordinator runs ([`alerts`]).

pub mod alerts;
pub mod logging;
pub mod logs;
pub mod logs_cli;
pub mod metrics;
pub mod process;
