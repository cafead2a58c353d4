//! System integration: what Switchyard knows about its own processes.
//!
//! - [`instance`]: every process answers `sys.ping` and `sys.echo`.
//! - [`coordinator`]: leader election in KV `coord`; the leader alone acts on the
//!   coordination rules.
//! - [`health`]: probing every service instance and moving its health by rules.
//! - [`monitor`]: the status document (`sys.status`, `switchyard status`) and its
//!   gauges.

pub mod coordinator;
pub mod health;
pub mod instance;
pub mod monitor;
