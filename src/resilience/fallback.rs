//! Fallbacks: what answers when a service cannot (its breaker is open, or its calls
//! failed for a retryable or internal reason after the retries). A service's policy
//! lists them in order; the first that answers wins, and its reply says where it came
//! from in `Switchyard-Fallback`:
//!
//! - `{"service":"other"}`: the same operation of another service (`service:other`);
//! - `{"cache":true}`: the last good reply to the same request (same service, operation
//!   and payload), kept in memory for the operations the policy marks idempotent
//!   (`cache`);
//! - `{"static":<JSON value>}`: a fixed answer, in the caller's codec (`static`).

use std::hash::{BuildHasher, Hasher, RandomState};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use serde_json::Value;

use crate::error::Error;
use crate::subjects::validate_token;

/// Bytes of replies the last-good cache keeps, all services together.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// How long a last good reply may stand in for a failing service.
const CACHE_TTL: Duration = Duration::from_secs(3600);

/// One step of a fallback chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Fallback {
    Service(String),
    Cache,
    Static(Value),
}

impl Fallback {
    /// One element of a policy's `fallback` list.
    pub fn parse(value: &Value) -> Result<Fallback, Error> {
        let object = value.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
            Error::invalid_input(format!(
                "fallback {value} is not one of {{\"service\":\"<name>\"}}, \
                 {{\"cache\":true}}, {{\"static\":<value>}}"
            ))
        })?;
        match object.iter().next() {
            Some((key, Value::String(name))) if key == "service" => {
                validate_token("fallback service", name)?;
                Ok(Fallback::Service(name.clone()))
            }
            Some((key, Value::Bool(true))) if key == "cache" => Ok(Fallback::Cache),
            Some((key, value)) if key == "static" => Ok(Fallback::Static(value.clone())),
            _ => Err(Error::invalid_input(format!(
                "fallback {value} is not one of {{\"service\":\"<name>\"}}, \
                 {{\"cache\":true}}, {{\"static\":<value>}}"
            ))),
        }
    }

    /// The `kind` metric label, and the `Switchyard-Fallback` value without the name.
    pub fn kind(&self) -> &'static str {
        match self {
            Fallback::Service(_) => "service",
            Fallback::Cache => "cache",
            Fallback::Static(_) => "static",
        }
    }

    /// The `Switchyard-Fallback` header value: `service:<name>`, `cache` or `static`.
    pub fn header_value(&self) -> String {
        match self {
            Fallback::Service(name) => format!("service:{name}"),
            other => other.kind().to_string(),
        }
    }
}

/// A reply as it came: headers and payload.
#[derive(Debug, Clone)]
pub struct StoredReply {
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

/// The last good reply per (service, operation, payload), bounded in bytes and age.
/// Keys are hashes with a per-process random seed, so callers cannot aim a payload at
/// another request's entry.
#[derive(Clone)]
pub struct LastGood {
    replies: moka::future::Cache<u64, StoredReply>,
    seed: RandomState,
}

impl Default for LastGood {
    fn default() -> LastGood {
        LastGood::new(CACHE_BYTES, CACHE_TTL)
    }
}

impl LastGood {
    pub fn new(max_bytes: u64, ttl: Duration) -> LastGood {
        LastGood {
            replies: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_key, reply: &StoredReply| {
                    let headers: usize = reply.headers.as_ref().map_or(0, |headers| {
                        headers
                            .iter()
                            .map(|(name, values)| {
                                let name: &str = name.as_ref();
                                values
                                    .iter()
                                    .map(|v| name.len() + v.as_str().len())
                                    .sum::<usize>()
                            })
                            .sum()
                    });
                    u32::try_from(headers + reply.payload.len()).unwrap_or(u32::MAX)
                })
                .time_to_live(ttl)
                .build(),
            seed: RandomState::new(),
        }
    }

    fn key(&self, service: &str, operation: &str, payload: &[u8]) -> u64 {
        let mut hasher = self.seed.build_hasher();
        hasher.write(service.as_bytes());
        hasher.write_u8(b'.');
        hasher.write(operation.as_bytes());
        hasher.write_u8(0);
        hasher.write(payload);
        hasher.finish()
    }

    pub async fn store(&self, service: &str, operation: &str, request: &[u8], reply: StoredReply) {
        let key = self.key(service, operation, request);
        self.replies.insert(key, reply).await;
    }

    pub async fn get(&self, service: &str, operation: &str, request: &[u8]) -> Option<StoredReply> {
        self.replies
            .get(&self.key(service, operation, request))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::json;

    #[test]
    fn parses_the_three_kinds_and_refuses_the_rest() {
        assert_eq!(
            Fallback::parse(&json!({"service": "echo"})).unwrap(),
            Fallback::Service("echo".into())
        );
        assert_eq!(
            Fallback::parse(&json!({"cache": true})).unwrap(),
            Fallback::Cache
        );
        assert_eq!(
            Fallback::parse(&json!({"static": {"call": 0}})).unwrap(),
            Fallback::Static(json!({"call": 0}))
        );
        for bad in [
            json!({"cache": false}),
            json!({"service": "a b"}),
            json!({"service": "echo", "cache": true}),
            json!({"elsewhere": 1}),
            json!("cache"),
        ] {
            let err = Fallback::parse(&bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        }
        assert_eq!(
            Fallback::Service("echo".into()).header_value(),
            "service:echo"
        );
        assert_eq!(Fallback::Static(json!(1)).header_value(), "static");
    }

    #[tokio::test]
    async fn keeps_the_last_good_reply_per_request() {
        let cache = LastGood::default();
        let reply = |text: &'static str| StoredReply {
            headers: None,
            payload: Bytes::from_static(text.as_bytes()),
        };
        cache.store("flaky", "call", b"{}", reply("1")).await;
        cache.store("flaky", "call", b"{}", reply("2")).await;
        cache.store("flaky", "call", b"{\"a\":1}", reply("3")).await;
        let got = cache.get("flaky", "call", b"{}").await.unwrap();
        assert_eq!(got.payload, "2");
        assert!(cache.get("flaky", "other", b"{}").await.is_none());
        assert!(cache.get("flakyc", "all", b"{}").await.is_none());
    }
}
