//! Values of KV `policies`: a gateway policy (`<service>`), a sync delivery policy
//! (`sync.<target>`), a cache rule (`cache.<namespace>`) and health rules
//! (`health.<service>`). Each value goes through all four parsers, as any of them could
//! be written under any key. Properties: a refusal is `invalid_input`; an accepted value
//! keeps every documented bound (what the components then compute from it cannot
//! overflow or hang); parsing is deterministic.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use switchyard::data::cache::rules::{MAX_DURATION, NamespaceRule, RulePatch};
use switchyard::data::sync::policy::SyncPolicy;
use switchyard::error::{Error, ErrorKind};
use switchyard::integration::gateway::policy::{MAX_ATTEMPTS, MAX_TIMEOUT_MS, Policy};
use switchyard::resilience::fallback::Fallback;
use switchyard::system::health::rules::HealthRules;

fn refused(err: &Error) {
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

const TEN_MINUTES: Duration = Duration::from_millis(600_000);
const HOUR: Duration = Duration::from_secs(3600);

fuzz_target!(|value: &[u8]| {
    match Policy::parse("echo", value) {
        Ok(policy) => {
            assert_eq!(Policy::parse("echo", value).ok(), Some(policy.clone()));
            let max = Duration::from_millis(MAX_TIMEOUT_MS);
            assert!(policy.timeout.is_none_or(|t| !t.is_zero() && t <= max));
            let retry = &policy.retry;
            assert!((1..=MAX_ATTEMPTS).contains(&retry.max_attempts));
            assert!(!retry.base.is_zero() && retry.base <= retry.max_backoff);
            assert!(retry.max_backoff <= TEN_MINUTES);
            assert!(
                retry
                    .attempt_timeout
                    .is_none_or(|t| !t.is_zero() && t <= max)
            );
            let budget = &policy.budget;
            assert!((0.0..=1.0).contains(&budget.ratio));
            assert!((0.0..=1000.0).contains(&budget.min_per_sec));
            assert!(budget.window >= Duration::from_millis(100) && budget.window <= TEN_MINUTES);
            if let Some(breaker) = &policy.breaker {
                assert!(breaker.failure_ratio > 0.0 && breaker.failure_ratio <= 1.0);
                assert!(breaker.min_requests >= 1 && breaker.half_open_probes >= 1);
                assert!(!breaker.open_for.is_zero() && breaker.open_for <= TEN_MINUTES);
            }
            assert!(!policy.fallbacks.contains(&Fallback::Service("echo".into())));
        }
        Err(err) => refused(&err),
    }

    match SyncPolicy::parse(value) {
        Ok(policy) => {
            assert!((1..=1000).contains(&policy.max_deliver));
            assert!(!policy.backoff.is_empty() && policy.backoff.len() <= 32);
            assert!(policy.backoff.iter().all(|d| !d.is_zero() && *d <= HOUR));
            assert!(policy.ack_wait >= Duration::from_secs(1) && policy.ack_wait <= HOUR);
            assert!(!policy.timeout.is_zero() && policy.timeout <= HOUR);
            assert!((1..=4096).contains(&policy.max_in_flight));
            // Every delivery count the server may report gets a bounded delay.
            for delivered in [i64::MIN, -1, 0, 1, 2, 33, i64::MAX] {
                assert!(policy.retry_delay(delivered) <= HOUR);
            }
        }
        Err(err) => refused(&err),
    }

    match RulePatch::parse_policy(value) {
        Ok(patch) => {
            let rule = NamespaceRule::default().with(&patch);
            assert!(rule.ttl.is_none_or(|t| t <= MAX_DURATION));
            assert!(rule.idle.is_none_or(|t| t <= MAX_DURATION));
            assert!(rule.max_bytes > 0);
            if let Some(ttl) = rule.kv_ttl() {
                let secs: u64 = ttl.trim_end_matches('s').parse().expect("whole seconds");
                assert!(secs >= 1 && secs <= MAX_DURATION.as_secs() + 1);
            }
        }
        Err(err) => refused(&err),
    }

    match HealthRules::parse(value) {
        Ok(rules) => {
            assert!(rules.degraded < rules.timeout);
            assert!(rules.interval >= Duration::from_millis(100) && rules.interval <= HOUR);
            assert!((1..=100).contains(&rules.unhealthy_after));
            assert!((1..=100).contains(&rules.healthy_after));
        }
        Err(err) => refused(&err),
    }
});
