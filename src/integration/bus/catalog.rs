//! Switchyard's own events. User services define theirs the same way: a serde type
//! implementing [`Event`].

use serde::{Deserialize, Serialize};

use super::Event;

/// What happened to a service instance in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// The instance registered itself.
    Registered,
    /// The instance removed itself on a graceful stop.
    Deregistered,
    /// The instance stopped heartbeating and its entry expired.
    Expired,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Registered => "registered",
            Lifecycle::Deregistered => "deregistered",
            Lifecycle::Expired => "expired",
        }
    }
}

/// `events.sys.service.<registered|deregistered|expired>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceLifecycle {
    pub change: Lifecycle,
    pub service: String,
    pub instance: String,
    /// Empty when the entry was already gone (an expiry seen only as its marker).
    #[serde(default)]
    pub version: String,
}

impl Event for ServiceLifecycle {
    fn ce_type(&self) -> &'static str {
        match self.change {
            Lifecycle::Registered => "io.switchyard.sys.service.registered",
            Lifecycle::Deregistered => "io.switchyard.sys.service.deregistered",
            Lifecycle::Expired => "io.switchyard.sys.service.expired",
        }
    }

    fn subject(&self) -> String {
        format!("events.sys.service.{}", self.change.as_str())
    }
}
