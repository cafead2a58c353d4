//! Delivery policy per target: KV bucket `policies`, key `sync.<target>`, a JSON value
//! such as `{"ack_wait_ms":30000,"max_deliver":5,"backoff_ms":[1000,5000],"timeout_ms":10000}`,
//! watched live. Unknown fields are refused (a typo must not silently keep a default);
//! a malformed value is logged and the target keeps the policy it had.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::kv::{Entry, Operation};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::nats::watch as kv_watch;
use crate::subjects::{BUCKET_POLICIES, POLICY_SYNC_PREFIX, validate_token};

/// How one target's records are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncPolicy {
    /// How long the server waits for an ack before redelivering (a crashed worker's
    /// records come back after this).
    pub ack_wait: Duration,
    /// Deliveries before a record is dead-lettered, the first included.
    pub max_deliver: i64,
    /// Delay before the n-th redelivery after a failure (the last repeats), jittered.
    pub backoff: Vec<Duration>,
    /// How long one delivery waits for the target's answer.
    pub timeout: Duration,
    /// Records of different keys delivered at once (a key has one in flight at most).
    pub max_in_flight: usize,
    /// How long a stopped worker keeps its pin on the target's consumer before another
    /// instance may take over.
    pub pin_timeout: Duration,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy {
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
            ],
            timeout: Duration::from_secs(10),
            max_in_flight: 64,
            pin_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    ack_wait_ms: Option<u64>,
    max_deliver: Option<i64>,
    backoff_ms: Option<Vec<u64>>,
    timeout_ms: Option<u64>,
    max_in_flight: Option<usize>,
    pin_timeout_ms: Option<u64>,
}

impl SyncPolicy {
    /// Parses and checks one value; missing fields keep the defaults.
    pub fn parse(value: &[u8]) -> Result<SyncPolicy, Error> {
        let file: PolicyFile = serde_json::from_slice(value)
            .map_err(|e| Error::invalid_input(format!("malformed sync policy: {e}")))?;
        let mut policy = SyncPolicy::default();
        let ms = |what: &str, v: u64, min: u64| {
            if (min..=HOUR_MS).contains(&v) {
                Ok(Duration::from_millis(v))
            } else {
                Err(Error::invalid_input(format!(
                    "sync policy {what} {v} is outside {min}..={HOUR_MS}"
                )))
            }
        };
        const HOUR_MS: u64 = 3_600_000;
        // Held records get in-progress acks every second and a pull lasts a second:
        // an ack wait or pin timeout below that would redeliver or unpin under load.
        const MIN_HOLD_MS: u64 = 1_000;
        if let Some(v) = file.ack_wait_ms {
            policy.ack_wait = ms("ack_wait_ms", v, MIN_HOLD_MS)?;
        }
        if let Some(v) = file.timeout_ms {
            policy.timeout = ms("timeout_ms", v, 1)?;
        }
        if let Some(v) = file.pin_timeout_ms {
            policy.pin_timeout = ms("pin_timeout_ms", v, MIN_HOLD_MS)?;
        }
        if let Some(list) = file.backoff_ms {
            if list.is_empty() || list.len() > 32 {
                return Err(Error::invalid_input(
                    "sync policy backoff_ms needs 1 to 32 delays",
                ));
            }
            policy.backoff = list
                .into_iter()
                .map(|v| ms("backoff_ms", v, 1))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = file.max_deliver {
            if !(1..=1000).contains(&v) {
                return Err(Error::invalid_input(format!(
                    "sync policy max_deliver {v} is outside 1..=1000"
                )));
            }
            policy.max_deliver = v;
        }
        if let Some(v) = file.max_in_flight {
            if !(1..=4096).contains(&v) {
                return Err(Error::invalid_input(format!(
                    "sync policy max_in_flight {v} is outside 1..=4096"
                )));
            }
            policy.max_in_flight = v;
        }
        Ok(policy)
    }

    /// The delay before redelivering a record that failed its `delivered`-th delivery:
    /// the backoff step with "equal jitter" (half fixed, half random), so records that
    /// failed together do not all come back in the same instant.
    pub fn retry_delay(&self, delivered: i64) -> Duration {
        let step = usize::try_from(delivered.max(1) - 1).unwrap_or(0);
        let base = self
            .backoff
            .get(step)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1));
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
        base / 2 + base / 2 * jitter / 1000
    }
}

/// The policies in force by target, followed live from KV `policies`.
#[derive(Clone)]
pub struct SyncPolicies {
    by_target: Arc<RwLock<HashMap<String, SyncPolicy>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl SyncPolicies {
    /// No bucket: every target gets the defaults.
    pub fn fixed() -> SyncPolicies {
        SyncPolicies {
            by_target: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    /// Loads `sync.*` keys of bucket `policies` and follows it until `stop`.
    pub async fn start(client: &Client, stop: CancellationToken) -> Result<SyncPolicies, Error> {
        let js = async_nats::jetstream::new(client.clone());
        let kv = js
            .get_key_value(BUCKET_POLICIES)
            .await
            .map_err(|e| Error::nats("open bucket policies", e))?;
        let policies = SyncPolicies::fixed();
        let last = kv_watch::load(&kv, |entry| policies.apply(&entry)).await?;
        let follower = policies.clone();
        tokio::spawn(kv_watch::follow(
            kv,
            client.clone(),
            last,
            stop,
            move |entry| follower.apply(&entry),
        ));
        Ok(policies)
    }

    pub fn get(&self, target: &str) -> SyncPolicy {
        self.by_target
            .read()
            .ok()
            .and_then(|p| p.get(target).cloned())
            .unwrap_or_default()
    }

    /// Bumps whenever a policy changes, so workers can update their consumers.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn apply(&self, entry: &Entry) {
        let Some(target) = entry.key.strip_prefix(POLICY_SYNC_PREFIX) else {
            return;
        };
        if validate_token("target", target).is_err() {
            return;
        }
        let policy = match entry.operation {
            Operation::Put => match SyncPolicy::parse(&entry.value) {
                Ok(policy) => Some(policy),
                Err(err) => {
                    tracing::warn!(%err, target, "ignoring sync policy; the target keeps the one in force");
                    return;
                }
            },
            Operation::Delete | Operation::Purge => None,
        };
        if let Ok(mut map) = self.by_target.write() {
            match policy {
                Some(policy) => map.insert(target.to_string(), policy),
                None => map.remove(target),
            };
        }
        self.changed.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_policies() {
        let p =
            SyncPolicy::parse(br#"{"ack_wait_ms":2000,"max_deliver":3,"backoff_ms":[100,200]}"#)
                .unwrap();
        assert_eq!(p.ack_wait, Duration::from_secs(2));
        assert_eq!(p.max_deliver, 3);
        assert_eq!(p.backoff.len(), 2);
        assert_eq!(SyncPolicy::parse(b"{}").unwrap(), SyncPolicy::default());
        for bad in [
            &br#"{"max_deliver":0}"#[..],
            br#"{"backoff_ms":[]}"#,
            br#"{"ack_wait":5}"#,
            br#"{"ack_wait_ms":500}"#,
            b"nope",
        ] {
            assert_eq!(SyncPolicy::parse(bad).unwrap_err().code(), 400);
        }
    }

    #[test]
    fn retry_delays_follow_the_backoff_with_jitter() {
        let p = SyncPolicy::parse(br#"{"backoff_ms":[100,1000]}"#).unwrap();
        for _ in 0..100 {
            let first = p.retry_delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let later = p.retry_delay(9);
            assert!(later >= Duration::from_millis(500) && later <= Duration::from_millis(1000));
        }
    }
}
