//! One service instance as the registry holds it: a JSON value under
//! `<service>.<instance-id>` in KV bucket `registry`, readable with `nats kv get`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::subjects::validate_token;

/// Whether an instance should receive traffic. Health checks (system integration)
/// move instances between these; the SDK registers as `Healthy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Healthy,
    /// Slow but answering: routed to last.
    Degraded,
    /// Failing its checks: not routed to.
    Unhealthy,
    /// Being taken out of service: not routed to.
    Draining,
}

impl Health {
    /// Whether the gateway may route to an instance in this state.
    pub fn is_live(self) -> bool {
        matches!(self, Health::Healthy | Health::Degraded)
    }
}

/// One endpoint of an instance: `svc.<service>.<operation>` in a queue group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointEntry {
    pub name: String,
    pub subject: String,
    pub queue_group: String,
}

/// A registered service instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    /// Service name, a subject token.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// Instance id, the NATS micro service id (so `nats micro info` matches).
    pub instance: String,
    #[serde(default)]
    pub description: String,
    pub endpoints: Vec<EndpointEntry>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub host: String,
    pub pid: u32,
    /// RFC 3339.
    pub started: String,
    /// RFC 3339, refreshed at every heartbeat.
    pub last_heartbeat: String,
    /// Heartbeat interval in milliseconds; the entry expires after three missed ones.
    pub heartbeat_ms: u64,
    #[serde(default)]
    pub health: Health,
}

impl RegistryEntry {
    /// The KV key: `<service>.<instance>`.
    pub fn key(&self) -> Result<String, Error> {
        key(&self.name, &self.instance)
    }

    pub fn to_json(&self) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(self)
            .map_err(|e| Error::internal(format!("cannot encode registry entry: {e}")))
    }

    pub fn from_json(bytes: &[u8]) -> Result<RegistryEntry, Error> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid_input(format!("malformed registry entry: {e}")))
    }
}

/// `<service>.<instance>`, both validated as subject tokens.
pub fn key(service: &str, instance: &str) -> Result<String, Error> {
    validate_token("service", service)?;
    validate_token("instance", instance)?;
    Ok(format!("{service}.{instance}"))
}

/// Splits a key back into `(service, instance)`.
pub fn split_key(key: &str) -> Option<(&str, &str)> {
    let (service, instance) = key.split_once('.')?;
    (!service.is_empty() && !instance.is_empty() && !instance.contains('.'))
        .then_some((service, instance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_refuse_bad_tokens() {
        assert_eq!(key("echo", "abc123").unwrap(), "echo.abc123");
        assert_eq!(split_key("echo.abc123"), Some(("echo", "abc123")));
        assert_eq!(split_key("echo"), None);
        assert_eq!(split_key("a.b.c"), None);
        assert!(key("e cho", "x").is_err());
        assert!(key("echo", "x.y").is_err());
    }
}
