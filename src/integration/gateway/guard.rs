//! The policies in force, and each routed service's protection: its timeout, retry
//! settings, retry budget, circuit breaker, fallbacks and metric handles, in one
//! [`ServiceGuard`] that a request gets with one map lookup.
//!
//! Policies come from KV bucket `policies` (key `<service>`), watched live; keys that are
//! not a single subject token belong to other components and are skipped. A guard is
//! made when the gateway first routes to a registered service (so metric labels are
//! only registered names), and made again when that service's policy changes: a new
//! policy starts with a closed breaker and an empty budget window.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::kv::{Entry, Operation};
use tokio_util::sync::CancellationToken;

use super::breaker_events::BreakerEvents;
use super::policy::Policy;
use crate::error::Error;
use crate::nats::watch;
use crate::observability::metrics::GatewayResilienceMetrics;
use crate::resilience::breaker::{Breaker, BreakerState, Permit};
use crate::resilience::budget::RetryBudget;
use crate::resilience::fallback::Fallback;
use crate::resilience::retry::RetryConfig;
use crate::subjects::{BUCKET_POLICIES, validate_token};

/// One service's protection, shared by its requests.
pub struct ServiceGuard {
    service: String,
    /// The whole call's deadline (policy, else the gateway default).
    pub timeout: Duration,
    pub retry: RetryConfig,
    pub budget: RetryBudget,
    breaker: Option<Breaker>,
    pub fallbacks: Vec<Fallback>,
    idempotent: Vec<String>,
    /// Whether `{"cache":true}` is in the chain: only then are good replies kept.
    caches: bool,
    pub metrics: GatewayResilienceMetrics,
    events: Option<BreakerEvents>,
}

impl ServiceGuard {
    fn new(
        service: &str,
        policy: &Policy,
        default_timeout: Duration,
        events: Option<BreakerEvents>,
    ) -> ServiceGuard {
        ServiceGuard {
            service: service.to_string(),
            timeout: policy.timeout.unwrap_or(default_timeout),
            retry: policy.retry,
            budget: RetryBudget::new(policy.budget),
            breaker: policy.breaker.map(Breaker::new),
            caches: policy.fallbacks.contains(&Fallback::Cache),
            fallbacks: policy.fallbacks.clone(),
            idempotent: policy.idempotent.clone(),
            metrics: GatewayResilienceMetrics::new(service),
            events,
        }
    }

    /// Whether good replies to `operation` are kept for the cache fallback.
    pub fn keeps_replies(&self, operation: &str) -> bool {
        self.caches && self.is_idempotent(operation)
    }

    pub fn is_idempotent(&self, operation: &str) -> bool {
        self.idempotent.iter().any(|op| op == operation)
    }

    /// Whether a call may go to the service now (always, without a breaker).
    pub fn permit(&self, now_ms: u64) -> Permit {
        let Some(breaker) = &self.breaker else {
            return Permit::Normal;
        };
        let (permit, moved) = breaker.permit(now_ms);
        if let Some(state) = moved {
            self.moved(state);
        }
        permit
    }

    /// How a permitted call ended (`failed`: a kind the breaker counts).
    pub fn record(&self, permit: Permit, failed: bool, now_ms: u64) {
        if let Some(breaker) = &self.breaker
            && let Some(state) = breaker.record(permit, failed, now_ms)
        {
            self.moved(state);
        }
    }

    /// Opens the breaker on command; false when the service's policy has none.
    pub fn force_open(&self, now_ms: u64) -> bool {
        let Some(breaker) = &self.breaker else {
            return false;
        };
        if let Some(state) = breaker.force_open(now_ms) {
            self.moved(state);
        }
        true
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker
            .as_ref()
            .map_or(BreakerState::Closed, Breaker::state)
    }

    fn moved(&self, state: BreakerState) {
        self.metrics.breaker_moved(state as u8);
        if let Some(events) = &self.events {
            events.moved(&self.service, state);
        }
        match state {
            BreakerState::Open => {
                tracing::warn!(service = %self.service, "circuit breaker opened")
            }
            BreakerState::HalfOpen => {
                tracing::info!(service = %self.service, "circuit breaker half-open, probing")
            }
            BreakerState::Closed => {
                tracing::info!(service = %self.service, "circuit breaker closed")
            }
        }
    }
}

#[derive(Default)]
struct State {
    /// Valid policies by service, as written.
    configured: HashMap<String, Policy>,
    /// Guards of the services the gateway routed to.
    guards: HashMap<String, Arc<ServiceGuard>>,
}

/// The policies in force; cheap to clone, read without I/O.
#[derive(Clone)]
pub struct Policies {
    state: Arc<RwLock<State>>,
    default_timeout: Duration,
    events: Option<BreakerEvents>,
}

impl Policies {
    /// Fixed defaults and no bucket (a gateway whose policies are not watched).
    pub fn fixed(default_timeout: Duration) -> Policies {
        Policies {
            state: Arc::default(),
            default_timeout,
            events: None,
        }
    }

    /// Loads the bucket (returns once the current policies are in) and follows it
    /// until `stop`; breakers report their changes to `events`.
    pub async fn start(
        client: &Client,
        default_timeout: Duration,
        events: Option<BreakerEvents>,
        stop: CancellationToken,
    ) -> Result<Policies, Error> {
        let js = async_nats::jetstream::new(client.clone());
        let kv = js
            .get_key_value(BUCKET_POLICIES)
            .await
            .map_err(|e| Error::nats("open bucket policies", e))?;
        let policies = Policies {
            events,
            ..Policies::fixed(default_timeout)
        };
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

    /// The guard of `service`, which the registry knows: a read lock and a lookup; made
    /// on the service's first request.
    pub fn guard(&self, service: &str) -> Arc<ServiceGuard> {
        if let Ok(state) = self.state.read()
            && let Some(guard) = state.guards.get(service)
        {
            return guard.clone();
        }
        let Ok(mut state) = self.state.write() else {
            return Arc::new(self.new_guard(service, &Policy::default()));
        };
        let policy = state.configured.get(service).cloned().unwrap_or_default();
        state
            .guards
            .entry(service.to_string())
            .or_insert_with(|| Arc::new(self.new_guard(service, &policy)))
            .clone()
    }

    fn new_guard(&self, service: &str, policy: &Policy) -> ServiceGuard {
        ServiceGuard::new(service, policy, self.default_timeout, self.events.clone())
    }

    fn apply(&self, entry: &Entry) {
        let service = entry.key.as_str();
        if validate_token("service", service).is_err() {
            return;
        }
        let policy = match entry.operation {
            Operation::Put => match Policy::parse(service, &entry.value) {
                Ok(policy) => Some(policy),
                Err(err) => {
                    tracing::warn!(%err, %service, "ignoring policy; the service keeps the defaults");
                    None
                }
            },
            Operation::Delete | Operation::Purge => None,
        };
        let Ok(mut state) = self.state.write() else {
            return;
        };
        tracing::debug!(%service, ?policy, "gateway policy");
        let in_force = policy.clone().unwrap_or_default();
        match policy {
            Some(policy) => state.configured.insert(service.to_string(), policy),
            None => state.configured.remove(service),
        };
        if state.guards.contains_key(service) {
            let guard = Arc::new(self.new_guard(service, &in_force));
            state.guards.insert(service.to_string(), guard);
        }
    }
}
