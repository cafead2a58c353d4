//! A service's gateway policy: KV bucket `policies`, key `<service>`, a JSON value, every
//! field optional (its default when absent), unknown fields ignored:
//!
//! ```json
//! {"timeout_ms": 5000,
//!  "retry":    {"max_attempts": 3, "base_ms": 20, "max_backoff_ms": 1000, "attempt_timeout_ms": 1000},
//!  "budget":   {"ratio": 0.2, "min_per_sec": 5, "window_ms": 10000},
//!  "breaker":  {"enabled": true, "failure_ratio": 0.5, "min_requests": 20, "window_ms": 10000,
//!               "open_ms": 5000, "half_open_probes": 1},
//!  "fallback": [{"service": "echo"}, {"cache": true}, {"static": {"call": 0}}],
//!  "idempotent": ["call"]}
//! ```
//!
//! [`Policy::parse`] checks every value and names the first one out of range
//! (`invalid_input`); the live view ([`super::guard::Policies`]) logs a refused value and
//! keeps the defaults for that service, so a bad write never stops the gateway.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::error::Error;
use crate::resilience::breaker::BreakerConfig;
use crate::resilience::budget::BudgetConfig;
use crate::resilience::fallback::Fallback;
use crate::resilience::retry::RetryConfig;
use crate::subjects::validate_token;

/// Longest timeout (whole call or one attempt) a policy may set.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Most attempts a policy may allow per call.
pub const MAX_ATTEMPTS: u32 = 10;
/// Longest backoff, breaker window, open time or budget window a policy may set.
const MAX_PERIOD_MS: u64 = 600_000;

/// What the gateway reads from a service's policy, checked, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// How long the gateway waits for the service in all (every attempt and pause).
    pub timeout: Option<Duration>,
    pub retry: RetryConfig,
    pub budget: BudgetConfig,
    /// `None` when the policy turns the breaker off.
    pub breaker: Option<BreakerConfig>,
    pub fallbacks: Vec<Fallback>,
    /// Operations whose replies may be served again from the last-good cache.
    pub idempotent: Vec<String>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            timeout: None,
            retry: RetryConfig::default(),
            budget: BudgetConfig::default(),
            breaker: Some(BreakerConfig::default()),
            fallbacks: Vec::new(),
            idempotent: Vec::new(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Raw {
    timeout_ms: Option<u64>,
    retry: RawRetry,
    budget: RawBudget,
    breaker: RawBreaker,
    fallback: Vec<Value>,
    idempotent: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawRetry {
    max_attempts: Option<u32>,
    base_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    attempt_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawBudget {
    ratio: Option<f64>,
    min_per_sec: Option<f64>,
    window_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawBreaker {
    enabled: Option<bool>,
    failure_ratio: Option<f64>,
    min_requests: Option<u32>,
    window_ms: Option<u64>,
    open_ms: Option<u64>,
    half_open_probes: Option<u32>,
}

/// `value` in milliseconds if within `range`, else an error naming `field`.
fn ms(
    field: &str,
    value: Option<u64>,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<Duration>, Error> {
    match value {
        Some(v) if !range.contains(&v) => Err(Error::invalid_input(format!(
            "policy {field} {v} is outside {}..={}",
            range.start(),
            range.end()
        ))),
        v => Ok(v.map(Duration::from_millis)),
    }
}

fn count(
    field: &str,
    value: Option<u32>,
    range: std::ops::RangeInclusive<u32>,
) -> Result<Option<u32>, Error> {
    match value {
        Some(v) if !range.contains(&v) => Err(Error::invalid_input(format!(
            "policy {field} {v} is outside {}..={}",
            range.start(),
            range.end()
        ))),
        v => Ok(v),
    }
}

fn share(field: &str, value: Option<f64>, low: f64, high: f64) -> Result<Option<f64>, Error> {
    match value {
        Some(v) if !(v.is_finite() && low <= v && v <= high) => Err(Error::invalid_input(format!(
            "policy {field} {v} is outside {low}..={high}"
        ))),
        v => Ok(v),
    }
}

impl Policy {
    /// Parses and checks the value of key `service`.
    pub fn parse(service: &str, value: &[u8]) -> Result<Policy, Error> {
        let raw: Raw = serde_json::from_slice(value)
            .map_err(|e| Error::invalid_input(format!("malformed policy: {e}")))?;
        let defaults = Policy::default();
        let timeout = ms("timeout_ms", raw.timeout_ms, 1..=MAX_TIMEOUT_MS)?;

        let d = defaults.retry;
        let retry = RetryConfig {
            max_attempts: count(
                "retry.max_attempts",
                raw.retry.max_attempts,
                1..=MAX_ATTEMPTS,
            )?
            .unwrap_or(d.max_attempts),
            base: ms("retry.base_ms", raw.retry.base_ms, 1..=MAX_PERIOD_MS)?.unwrap_or(d.base),
            max_backoff: ms(
                "retry.max_backoff_ms",
                raw.retry.max_backoff_ms,
                1..=MAX_PERIOD_MS,
            )?
            .unwrap_or(d.max_backoff),
            attempt_timeout: ms(
                "retry.attempt_timeout_ms",
                raw.retry.attempt_timeout_ms,
                1..=MAX_TIMEOUT_MS,
            )?,
        };
        if retry.max_backoff < retry.base {
            return Err(Error::invalid_input(
                "policy retry.max_backoff_ms is smaller than retry.base_ms",
            ));
        }

        let d = defaults.budget;
        let budget = BudgetConfig {
            ratio: share("budget.ratio", raw.budget.ratio, 0.0, 1.0)?.unwrap_or(d.ratio),
            min_per_sec: share("budget.min_per_sec", raw.budget.min_per_sec, 0.0, 1000.0)?
                .unwrap_or(d.min_per_sec),
            window: ms(
                "budget.window_ms",
                raw.budget.window_ms,
                100..=MAX_PERIOD_MS,
            )?
            .unwrap_or(d.window),
        };

        let d = BreakerConfig::default();
        let b = raw.breaker;
        let configured = BreakerConfig {
            failure_ratio: share(
                "breaker.failure_ratio",
                b.failure_ratio,
                f64::MIN_POSITIVE,
                1.0,
            )?
            .unwrap_or(d.failure_ratio),
            min_requests: count("breaker.min_requests", b.min_requests, 1..=1_000_000)?
                .unwrap_or(d.min_requests),
            window: ms("breaker.window_ms", b.window_ms, 100..=MAX_PERIOD_MS)?.unwrap_or(d.window),
            open_for: ms("breaker.open_ms", b.open_ms, 1..=MAX_PERIOD_MS)?.unwrap_or(d.open_for),
            half_open_probes: count("breaker.half_open_probes", b.half_open_probes, 1..=100)?
                .unwrap_or(d.half_open_probes),
        };
        let breaker = b.enabled.unwrap_or(true).then_some(configured);

        let fallbacks = raw
            .fallback
            .iter()
            .map(Fallback::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if fallbacks.contains(&Fallback::Service(service.to_string())) {
            return Err(Error::invalid_input(format!(
                "policy of {service:?} falls back to itself"
            )));
        }
        for operation in &raw.idempotent {
            validate_token("idempotent operation", operation)?;
        }
        Ok(Policy {
            timeout,
            retry,
            budget,
            breaker,
            fallbacks,
            idempotent: raw.idempotent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::json;

    #[test]
    fn an_empty_policy_is_the_defaults_and_unknown_fields_are_ignored() {
        assert_eq!(Policy::parse("echo", b"{}").unwrap(), Policy::default());
        let policy = Policy::parse("echo", br#"{"timeout_ms": 250, "owner": "team-a"}"#).unwrap();
        assert_eq!(policy.timeout, Some(Duration::from_millis(250)));
        assert_eq!(policy.retry, RetryConfig::default());
    }

    #[test]
    fn parses_every_field() {
        let value = json!({
            "timeout_ms": 2000,
            "retry": {"max_attempts": 4, "base_ms": 10, "max_backoff_ms": 200, "attempt_timeout_ms": 300},
            "budget": {"ratio": 0.1, "min_per_sec": 0, "window_ms": 5000},
            "breaker": {"failure_ratio": 0.25, "min_requests": 5, "window_ms": 2000, "open_ms": 700, "half_open_probes": 2},
            "fallback": [{"service": "backup"}, {"cache": true}, {"static": {"ok": false}}],
            "idempotent": ["call", "get"]
        });
        let policy = Policy::parse("flaky", value.to_string().as_bytes()).unwrap();
        let ms = Duration::from_millis;
        assert_eq!(
            policy.retry,
            RetryConfig {
                max_attempts: 4,
                base: ms(10),
                max_backoff: ms(200),
                attempt_timeout: Some(ms(300))
            }
        );
        assert_eq!(
            policy.budget,
            BudgetConfig {
                ratio: 0.1,
                min_per_sec: 0.0,
                window: ms(5000)
            }
        );
        assert_eq!(
            policy.breaker,
            Some(BreakerConfig {
                failure_ratio: 0.25,
                min_requests: 5,
                window: ms(2000),
                open_for: ms(700),
                half_open_probes: 2
            })
        );
        assert_eq!(policy.fallbacks.len(), 3);
        assert_eq!(policy.idempotent, ["call", "get"]);
        let off = Policy::parse("flaky", br#"{"breaker": {"enabled": false}}"#).unwrap();
        assert_eq!(off.breaker, None);
    }

    #[test]
    fn refuses_values_out_of_range_with_invalid_input() {
        for bad in [
            json!({"timeout_ms": 0}),
            json!({"timeout_ms": "5s"}),
            json!({"retry": {"max_attempts": 0}}),
            json!({"retry": {"max_attempts": 11}}),
            json!({"retry": {"base_ms": 100, "max_backoff_ms": 10}}),
            json!({"retry": {"attempt_timeout_ms": 600001}}),
            json!({"budget": {"ratio": 1.5}}),
            json!({"budget": {"ratio": -0.1}}),
            json!({"budget": {"window_ms": 10}}),
            json!({"breaker": {"failure_ratio": 0}}),
            json!({"breaker": {"min_requests": 0}}),
            json!({"breaker": {"half_open_probes": 0}}),
            json!({"fallback": [{"cache": false}]}),
            json!({"fallback": [{"service": "echo"}]}),
            json!({"fallback": {"cache": true}}),
            json!({"idempotent": ["a.b"]}),
        ] {
            let err = Policy::parse("echo", bad.to_string().as_bytes()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        }
        assert_eq!(
            Policy::parse("echo", b"nope").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
}
