//! Discovery: an in-memory view of the registry fed by a KV watch, so a lookup never
//! costs a NATS round trip. The watch is recreated from the last revision it saw, with
//! backoff, when it ends, fails, or the connection was re-established (a watch can hang
//! silently across a server restart).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::kv::{Entry, Operation, Store};
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::entry::{RegistryEntry, split_key};
use crate::error::Error;
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

const BACKOFF_MAX: Duration = Duration::from_secs(5);
const RECONNECT_CHECK: Duration = Duration::from_secs(1);

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
        // The stream position first, then the keys: whatever changes while we read is
        // replayed by the watch from that position, so nothing falls in between.
        let last_revision = kv
            .status()
            .await
            .map_err(|e| Error::nats("registry status", e))?
            .info
            .state
            .last_sequence;
        let mut keys = kv
            .keys()
            .await
            .map_err(|e| Error::nats("list registry", e))?;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| Error::nats("list registry", e))?;
            if let Ok(Some(entry)) = kv.entry(key).await {
                view.apply(entry);
            }
        }
        tokio::spawn(follow(
            view.clone(),
            kv,
            client.clone(),
            last_revision,
            stop,
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

/// Follows the bucket from `last_revision`, recreating the watch when needed.
async fn follow(
    view: RegistryView,
    kv: Store,
    client: Client,
    mut last_revision: u64,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connects_at_start = connects(&client);
        let watch = kv.watch_all_from_revision(last_revision + 1).await;
        let mut watch = match watch {
            Ok(watch) => watch,
            Err(err) => {
                tracing::debug!(%err, "registry watch failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let mut check = tokio::time::interval(RECONNECT_CHECK);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                item = watch.next() => match item {
                    Some(Ok(entry)) => {
                        backoff = Duration::from_millis(100);
                        last_revision = last_revision.max(entry.revision);
                        view.apply(entry);
                    }
                    Some(Err(err)) => {
                        tracing::debug!(%err, "registry watch error; recreating");
                        break;
                    }
                    None => break,
                },
                _ = check.tick() => {
                    // A new connection means the server may have restarted: the old
                    // watch's consumer may be gone without the stream ever ending.
                    if connects(&client) != connects_at_start {
                        tracing::debug!("reconnected; recreating registry watch");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn connects(client: &Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}
