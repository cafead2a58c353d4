//! Discovery: an in-memory view of the registry fed by a KV watch, so a lookup never
//! costs a NATS round trip. The watch is [`crate::nats::watch`]: recreated from the last
//! revision it saw, with backoff, when it ends, fails, or the connection was
//! re-established (a watch can hang silently across a server restart).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use async_nats::Client;
use async_nats::jetstream::kv::{Entry, Operation};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::entry::{RegistryEntry, split_key};
use crate::error::Error;
use crate::nats::watch;
use crate::subjects::BUCKET_REGISTRY;

/// What the view knows about a service, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Never registered (since this view started).
    Unknown,
    /// Registered, but no instance is live (all gone, unhealthy or draining).
    NoLiveInstance,
    /// This many live instances.
    Live(usize),
}

/// One change seen in the bucket.
#[derive(Debug, Clone)]
pub struct Change {
    pub service: String,
    pub instance: String,
    pub revision: u64,
    /// When the server stored the change.
    pub time: time::OffsetDateTime,
    pub operation: Operation,
    /// The new entry for a put; the last one seen for a delete or purge.
    pub entry: Option<RegistryEntry>,
}

#[derive(Default)]
struct State {
    /// service → instance → entry
    services: HashMap<String, HashMap<String, RegistryEntry>>,
    /// Services ever seen, so a service whose instances are all gone answers 503, not 404.
    known: HashSet<String>,
}

/// A cheap-to-clone handle on the view; the watch runs until `stop` fires.
#[derive(Clone)]
pub struct RegistryView {
    state: Arc<RwLock<State>>,
    changes: broadcast::Sender<Change>,
}

impl RegistryView {
    /// Loads the current entries (returns once they are in) and keeps following.
    pub async fn start(client: &Client, stop: CancellationToken) -> Result<RegistryView, Error> {
        let js = async_nats::jetstream::new(client.clone());
        let kv = js
            .get_key_value(BUCKET_REGISTRY)
            .await
            .map_err(|e| Error::nats("open bucket registry", e))?;
        let (changes, _) = broadcast::channel(1024);
        let view = RegistryView {
            state: Arc::default(),
            changes,
        };
        let last_revision = watch::load(&kv, |entry| view.apply(entry)).await?;
        let follower = view.clone();
        tokio::spawn(watch::follow(
            kv,
            client.clone(),
            last_revision,
            stop,
            move |entry| follower.apply(entry),
        ));
        Ok(view)
    }

    /// Where to route `service`; a read lock on a map, no I/O.
    pub fn lookup(&self, service: &str) -> Lookup {
        let Ok(state) = self.state.read() else {
            return Lookup::Unknown;
        };
        match state.services.get(service) {
            Some(instances) => match instances.values().filter(|e| e.health.is_live()).count() {
                0 => Lookup::NoLiveInstance,
                n => Lookup::Live(n),
            },
            None if state.known.contains(service) => Lookup::NoLiveInstance,
            None => Lookup::Unknown,
        }
    }

    /// [`RegistryView::lookup`] and [`RegistryView::serves`] under one read lock and
    /// one map lookup: what the gateway asks per request.
    pub fn route(&self, service: &str, operation: &str) -> (Lookup, bool) {
        let Ok(state) = self.state.read() else {
            return (Lookup::Unknown, false);
        };
        match state.services.get(service) {
            Some(instances) => {
                let live = instances.values().filter(|e| e.health.is_live()).count();
                let lookup = if live == 0 {
                    Lookup::NoLiveInstance
                } else {
                    Lookup::Live(live)
                };
                (lookup, Self::lists(instances, service, operation))
            }
            None if state.known.contains(service) => (Lookup::NoLiveInstance, false),
            None => (Lookup::Unknown, false),
        }
    }

    /// Whether a live instance of `service` lists an endpoint on
    /// `svc.<service>.<operation>`; a read lock and a scan, no I/O, no allocation.
    pub fn serves(&self, service: &str, operation: &str) -> bool {
        let Ok(state) = self.state.read() else {
            return false;
        };
        let Some(instances) = state.services.get(service) else {
            return false;
        };
        Self::lists(instances, service, operation)
    }

    fn lists(instances: &HashMap<String, RegistryEntry>, service: &str, operation: &str) -> bool {
        instances
            .values()
            .filter(|e| e.health.is_live())
            .flat_map(|e| e.endpoints.iter())
            .any(|endpoint| {
                endpoint
                    .subject
                    .strip_prefix("svc.")
                    .and_then(|rest| rest.strip_prefix(service))
                    .and_then(|rest| rest.strip_prefix('.'))
                    == Some(operation)
            })
    }

    /// Every instance of `service`.
    pub fn instances(&self, service: &str) -> Vec<RegistryEntry> {
        self.state
            .read()
            .ok()
            .and_then(|s| {
                s.services
                    .get(service)
                    .map(|i| i.values().cloned().collect())
            })
            .unwrap_or_default()
    }

    /// Every instance of every service, sorted by key.
    pub fn all(&self) -> Vec<RegistryEntry> {
        let mut all: Vec<RegistryEntry> = self
            .state
            .read()
            .map(|s| {
                s.services
                    .values()
                    .flat_map(|i| i.values().cloned())
                    .collect()
            })
            .unwrap_or_default();
        all.sort_by(|a, b| (&a.name, &a.instance).cmp(&(&b.name, &b.instance)));
        all
    }

    /// Changes as they are applied (for lifecycle events and tests).
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn apply(&self, entry: Entry) {
        let Some((service, instance)) = split_key(&entry.key) else {
            tracing::warn!(key = %entry.key, "registry key is not <service>.<instance>");
            return;
        };
        let (service, instance) = (service.to_string(), instance.to_string());
        let Ok(mut state) = self.state.write() else {
            return;
        };
        let new = match entry.operation {
            Operation::Put => match RegistryEntry::from_json(&entry.value) {
                Ok(new) => Some(new),
                Err(err) => {
                    tracing::warn!(%err, key = %entry.key, "ignoring malformed registry entry");
                    return;
                }
            },
            Operation::Delete | Operation::Purge => None,
        };
        state.known.insert(service.clone());
        let instances = state.services.entry(service.clone()).or_default();
        let previous = match &new {
            Some(new) => instances.insert(instance.clone(), new.clone()),
            None => instances.remove(&instance),
        };
        if instances.is_empty() {
            state.services.remove(&service);
        }
        drop(state);
        let _ = self.changes.send(Change {
            service,
            instance,
            revision: entry.revision,
            time: entry.created,
            operation: entry.operation,
            entry: new.or(previous),
        });
    }
}
