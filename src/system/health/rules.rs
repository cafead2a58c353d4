//! Health rules: how often an instance is probed, how long a probe may take, and how
//! many results move it between states. Defaults for every service; an override per
//! service in KV `policies` under `health.<service>`, e.g.
//! `{"interval_ms":1000,"unhealthy_after":2,"degraded_ms":200}`. Fields left out keep
//! the default; a malformed or out-of-range value is refused with the reason and the
//! service keeps the rules it had.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::kv::{Entry, Operation};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::nats::watch;
use crate::subjects::{BUCKET_POLICIES, POLICY_HEALTH_PREFIX, validate_token};

/// The rules for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthRules {
    /// Time between two probes of one instance.
    pub interval: Duration,
    /// A probe without an answer by then is a failure.
    pub timeout: Duration,
    /// Consecutive failures that make an instance unhealthy.
    pub unhealthy_after: u32,
    /// Consecutive good probes that make an unhealthy or degraded instance healthy.
    pub healthy_after: u32,
    /// A probe slower than this makes a healthy instance degraded.
    pub degraded: Duration,
}

impl Default for HealthRules {
    fn default() -> Self {
        HealthRules {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            unhealthy_after: 3,
            healthy_after: 2,
            degraded: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    unhealthy_after: Option<u32>,
    healthy_after: Option<u32>,
    degraded_ms: Option<u64>,
}

impl HealthRules {
    /// Parses one override; what it leaves out comes from the defaults.
    pub fn parse(value: &[u8]) -> Result<HealthRules, Error> {
        let file: RulesFile = serde_json::from_slice(value)
            .map_err(|e| Error::invalid_input(format!("malformed health rules: {e}")))?;
        let ms = |field: &str, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(Duration::from_millis(v))
            } else {
                Err(Error::invalid_input(format!(
                    "health rule {field} {v} is outside {min}..={max}"
                )))
            }
        };
        let count = |field: &str, v: u32| {
            if (1..=100).contains(&v) {
                Ok(v)
            } else {
                Err(Error::invalid_input(format!(
                    "health rule {field} {v} is outside 1..=100"
                )))
            }
        };
        let mut rules = HealthRules::default();
        if let Some(v) = file.interval_ms {
            rules.interval = ms("interval_ms", v, 100, 3_600_000)?;
        }
        if let Some(v) = file.timeout_ms {
            rules.timeout = ms("timeout_ms", v, 10, 60_000)?;
        }
        if let Some(v) = file.unhealthy_after {
            rules.unhealthy_after = count("unhealthy_after", v)?;
        }
        if let Some(v) = file.healthy_after {
            rules.healthy_after = count("healthy_after", v)?;
        }
        if let Some(v) = file.degraded_ms {
            rules.degraded = ms("degraded_ms", v, 1, 60_000)?;
        }
        if rules.degraded >= rules.timeout {
            return Err(Error::invalid_input(
                "health rule degraded_ms must be shorter than timeout_ms",
            ));
        }
        Ok(rules)
    }
}

/// The rules in force, by service, followed live from KV `policies`.
#[derive(Clone, Default)]
pub struct RuleBook {
    by_service: Arc<RwLock<HashMap<String, HealthRules>>>,
}

impl RuleBook {
    pub async fn start(client: &Client, stop: CancellationToken) -> Result<RuleBook, Error> {
        let js = async_nats::jetstream::new(client.clone());
        let kv = js
            .get_key_value(BUCKET_POLICIES)
            .await
            .map_err(|e| Error::nats("open bucket policies", e))?;
        let book = RuleBook::default();
        let last = watch::load(&kv, |entry| book.apply(&entry)).await?;
        let follower = book.clone();
        tokio::spawn(watch::follow(kv, client.clone(), last, stop, move |e| {
            follower.apply(&e)
        }));
        Ok(book)
    }

    /// The rules of `service`: its override, else the defaults.
    pub fn rules(&self, service: &str) -> HealthRules {
        self.by_service
            .read()
            .ok()
            .and_then(|m| m.get(service).copied())
            .unwrap_or_default()
    }

    fn apply(&self, entry: &Entry) {
        let Some(service) = entry.key.strip_prefix(POLICY_HEALTH_PREFIX) else {
            return;
        };
        if validate_token("service", service).is_err() {
            return;
        }
        let Ok(mut map) = self.by_service.write() else {
            return;
        };
        match entry.operation {
            Operation::Put => match HealthRules::parse(&entry.value) {
                Ok(rules) => {
                    map.insert(service.to_string(), rules);
                }
                Err(err) => {
                    tracing::warn!(%err, service, "refusing health rules; the ones in force stay");
                }
            },
            Operation::Delete | Operation::Purge => {
                map.remove(service);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_keep_the_defaults_they_leave_out() {
        let rules = HealthRules::parse(br#"{"unhealthy_after":2,"degraded_ms":100}"#).unwrap();
        assert_eq!(rules.unhealthy_after, 2);
        assert_eq!(rules.degraded, Duration::from_millis(100));
        assert_eq!(rules.interval, HealthRules::default().interval);
    }

    #[test]
    fn refuses_what_cannot_work() {
        for bad in [
            &br#"{"interval_ms":5}"#[..],
            br#"{"unhealthy_after":0}"#,
            br#"{"degraded_ms":2000,"timeout_ms":1000}"#,
            br#"{"intervl_ms":1000}"#,
            b"nope",
        ] {
            let err = HealthRules::parse(bad).unwrap_err();
            assert_eq!(err.kind(), crate::error::ErrorKind::InvalidInput);
        }
    }
}
