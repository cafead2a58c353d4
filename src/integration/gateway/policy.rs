//! Per-service gateway policies: KV bucket `policies`, key `<service>`, a JSON value
//! such as `{"timeout_ms": 5000}`, watched live. Unknown fields are ignored (later
//! issues add retry and breaker settings to the same value); keys that are not a single
//! subject token belong to other components and are skipped. A malformed value is
//! logged and its service keeps the defaults: a bad write never stops the gateway.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::kv::{Entry, Operation};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::nats::watch;
use crate::subjects::{BUCKET_POLICIES, validate_token};

/// Longest timeout a policy may set.
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// What the gateway reads from a service's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct Policy {
    /// How long the gateway waits for the service, 1 ms to 10 min.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl Policy {
    /// Parses and checks one value.
    pub fn parse(value: &[u8]) -> Result<Policy, Error> {
        let policy: Policy = serde_json::from_slice(value)
            .map_err(|e| Error::invalid_input(format!("malformed policy: {e}")))?;
        if let Some(ms) = policy.timeout_ms
            && !(1..=MAX_TIMEOUT_MS).contains(&ms)
        {
            return Err(Error::invalid_input(format!(
                "policy timeout_ms {ms} is outside 1..={MAX_TIMEOUT_MS}"
            )));
        }
        Ok(policy)
    }
}

/// The policies in force, by service; cheap to clone, read without I/O.
#[derive(Clone)]
pub struct Policies {
    by_service: Arc<RwLock<HashMap<String, Policy>>>,
    default_timeout: Duration,
}

impl Policies {
    /// Fixed defaults and no bucket (a gateway whose policies are not watched).
    pub fn fixed(default_timeout: Duration) -> Policies {
        Policies {
            by_service: Arc::default(),
            default_timeout,
        }
    }

    /// Loads the bucket (returns once the current policies are in) and follows it
    /// until `stop`.
    pub async fn start(
        client: &Client,
        default_timeout: Duration,
        stop: CancellationToken,
    ) -> Result<Policies, Error> {
        let js = async_nats::jetstream::new(client.clone());
        let kv = js
            .get_key_value(BUCKET_POLICIES)
            .await
            .map_err(|e| Error::nats("open bucket policies", e))?;
        let policies = Policies::fixed(default_timeout);
        let last_revision = watch::load(&kv, |entry| policies.apply(&entry)).await?;
        let follower = policies.clone();
        tokio::spawn(watch::follow(
            kv,
            client.clone(),
            last_revision,
            stop,
            move |entry| follower.apply(&entry),
        ));
        Ok(policies)
    }

    /// How long the gateway waits for `service`: its policy, else the default.
    pub fn timeout(&self, service: &str) -> Duration {
        self.by_service
            .read()
            .ok()
            .and_then(|policies| policies.get(service).and_then(|p| p.timeout_ms))
            .map_or(self.default_timeout, Duration::from_millis)
    }

    fn apply(&self, entry: &Entry) {
        if validate_token("service", &entry.key).is_err() {
            return;
        }
        let policy = match entry.operation {
            Operation::Put => match Policy::parse(&entry.value) {
                Ok(policy) => Some(policy),
                Err(err) => {
                    tracing::warn!(%err, service = %entry.key, "ignoring policy; the service keeps the defaults");
                    None
                }
            },
            Operation::Delete | Operation::Purge => None,
        };
        let Ok(mut policies) = self.by_service.write() else {
            return;
        };
        tracing::debug!(service = %entry.key, ?policy, "gateway policy");
        match policy {
            Some(policy) => policies.insert(entry.key.clone(), policy),
            None => policies.remove(&entry.key),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timeouts_and_ignores_unknown_fields() {
        let policy = Policy::parse(br#"{"timeout_ms": 250, "retries": 3}"#).unwrap();
        assert_eq!(policy.timeout_ms, Some(250));
        assert_eq!(Policy::parse(b"{}").unwrap(), Policy::default());
        for bad in [
            &b"{\"timeout_ms\": 0}"[..],
            b"{\"timeout_ms\": \"5s\"}",
            b"nope",
        ] {
            let err = Policy::parse(bad).unwrap_err();
            assert_eq!(err.kind(), crate::error::ErrorKind::InvalidInput);
        }
    }
}
