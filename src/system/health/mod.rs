//! Health checks: every registered service instance is probed while this instance
//! leads the coordinators, and its health moves under rules with defaults and
//! per-service overrides.
//!
//! - [`rules`]: interval, timeout, failures before unhealthy, successes before healthy,
//!   the latency that makes an instance degraded; overrides in KV `policies` under
//!   `health.<service>`.
//! - [`state`]: one instance's state machine (healthy, degraded, unhealthy; draining
//!   is only ever set by an action).
//! - [`checker`]: the probes (`$SRV.STATS.<service>.<instance>`) and writing each
//!   change into the registry entry.
//!
//! Each change is published as `events.sys.health.changed`; the coordinator's rules
//! decide what to do about it (by default: drain, deregister after a grace, alert).

pub mod checker;
pub mod rules;
pub mod state;

use serde::{Deserialize, Serialize};

use crate::integration::bus::Event;
use crate::integration::registry::Health;

/// `events.sys.health.changed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthChanged {
    pub service: String,
    pub instance: String,
    pub from: Health,
    pub to: Health,
    pub reason: String,
}

impl Event for HealthChanged {
    fn ce_type(&self) -> &'static str {
        "io.switchyard.sys.health.changed"
    }

    fn subject(&self) -> String {
        "events.sys.health.changed".to_string()
    }
}
