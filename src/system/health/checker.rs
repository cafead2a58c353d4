//! The health checker: while this instance leads the coordinators, every service
//! instance in the registry is probed on its service's interval with
//! `$SRV.STATS.<service>.<instance>` — addressed to that one instance, so an answer
//! proves that process is alive and reading — with the rule's timeout.
//!
//! What counts as the probe's latency is the slower of the round trip and the average
//! time the instance's handlers took since the previous probe (from the STATS
//! counters): a service whose handlers take too long is degraded even though NATS
//! answers for it quickly. Switchyard's own members (data sync instances, metadata
//! `component`) have no micro endpoints; their heartbeats are their health.
//!
//! Each change is written into the instance's registry entry (compare-and-set, with the
//! entry's TTL kept) and returned to the caller, which publishes it and acts on it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::Client;
use async_nats::jetstream::Context as JetStream;
use async_nats::jetstream::kv::{Operation, Store};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::rules::RuleBook;
use super::state::{Probe, Tracker, Transition};
use crate::error::Error;
use crate::integration::registry::registrar::{self, Conflict};
use crate::integration::registry::view::RegistryView;
use crate::integration::registry::{Health, RegistryEntry};

/// How often the checker looks for instances whose probe is due.
const TICK: Duration = Duration::from_millis(100);

/// A change of one instance's health.
#[derive(Debug, Clone)]
pub struct Changed {
    pub entry: RegistryEntry,
    pub transition: Transition,
}

struct Watched {
    tracker: Tracker,
    next: Instant,
    in_flight: bool,
    /// STATS counters of the previous probe: (requests, total processing time).
    counters: Option<(u64, Duration)>,
    /// A health this checker wrote that the view may not show yet, and when.
    written: Option<(Health, Instant)>,
}

/// How long the view may lag behind a health this checker wrote.
const VIEW_LAG: Duration = Duration::from_secs(2);

/// The probing state of the instances this leader watches.
pub struct Checker {
    client: Client,
    js: JetStream,
    registry: Store,
    view: RegistryView,
    rules: RuleBook,
    watched: HashMap<String, Watched>,
    results: (mpsc::Sender<Finished>, mpsc::Receiver<Finished>),
}

/// A finished probe: the instance's key and entry, the answer (or why there was none),
/// and the round trip.
type Finished = (String, RegistryEntry, Result<Stats, String>, Duration);

/// The part of a micro STATS answer the checker reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Stats {
    #[serde(default)]
    endpoints: Vec<EndpointStats>,
}

#[derive(Debug, Clone, Deserialize)]
struct EndpointStats {
    #[serde(default)]
    num_requests: u64,
    /// Nanoseconds, as ADR-32 has it.
    #[serde(default)]
    processing_time: u64,
}

impl Stats {
    fn counters(&self) -> (u64, Duration) {
        let requests = self.endpoints.iter().map(|e| e.num_requests).sum();
        let nanos: u64 = self.endpoints.iter().map(|e| e.processing_time).sum();
        (requests, Duration::from_nanos(nanos))
    }
}

impl Checker {
    pub fn new(client: Client, registry: Store, view: RegistryView, rules: RuleBook) -> Checker {
        Checker {
            js: async_nats::jetstream::new(client.clone()),
            client,
            registry,
            view,
            rules,
            watched: HashMap::new(),
            results: mpsc::channel(1024),
        }
    }

    /// Forgets everything probed so far (leadership lost: the next leader starts over).
    pub fn reset(&mut self) {
        self.watched.clear();
    }

    /// Starts the probes that are due and returns the changes the finished ones caused.
    /// Waits at most one tick.
    pub async fn step(&mut self) -> Vec<Changed> {
        self.start_due_probes();
        let mut changes = Vec::new();
        let deadline = tokio::time::sleep(TICK);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                Some((key, entry, answer, took)) = self.results.1.recv() => {
                    if let Some(change) = self.settle(key, entry, answer, took).await {
                        changes.push(change);
                    }
                }
            }
        }
        changes
    }

    fn start_due_probes(&mut self) {
        let entries = self.view.all();
        let now = Instant::now();
        let mut present = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.metadata.contains_key("component") {
                continue;
            }
            let Ok(key) = entry.key() else { continue };
            present.push(key.clone());
            let watched = self.watched.entry(key.clone()).or_insert_with(|| Watched {
                tracker: Tracker::new(entry.health),
                next: now,
                in_flight: false,
                counters: None,
                written: None,
            });
            // A state written by someone else (a drain, an operator) is the truth; one
            // this checker just wrote may not have reached the view yet.
            match watched.written {
                Some((health, at)) if health != entry.health && at.elapsed() < VIEW_LAG => {}
                _ => {
                    watched.written = None;
                    watched.tracker.adopt(entry.health);
                }
            }
            if watched.in_flight || watched.next > now {
                continue;
            }
            let rules = self.rules.rules(&entry.name);
            watched.in_flight = true;
            watched.next = now + rules.interval;
            let client = self.client.clone();
            let results = self.results.0.clone();
            tokio::spawn(async move {
                let subject = format!("$SRV.STATS.{}.{}", entry.name, entry.instance);
                let started = Instant::now();
                let request = async_nats::Request::new().timeout(Some(rules.timeout));
                let answer = match client.send_request(subject, request).await {
                    Ok(reply) => serde_json::from_slice::<Stats>(&reply.payload)
                        .map_err(|e| format!("unreadable STATS answer: {e}")),
                    Err(err) => Err(Error::from(err).to_string()),
                };
                let _ = results.send((key, entry, answer, started.elapsed())).await;
            });
        }
        self.watched.retain(|key, _| present.contains(key));
    }

    async fn settle(
        &mut self,
        key: String,
        entry: RegistryEntry,
        answer: Result<Stats, String>,
        took: Duration,
    ) -> Option<Changed> {
        let rules = self.rules.rules(&entry.name);
        let watched = self.watched.get_mut(&key)?;
        watched.in_flight = false;
        let probe = match answer {
            Ok(stats) => {
                let now = stats.counters();
                let work = match watched.counters.replace(now) {
                    Some((requests, time)) if now.0 > requests => {
                        let count = u32::try_from(now.0 - requests).unwrap_or(u32::MAX);
                        now.1.saturating_sub(time) / count
                    }
                    _ => Duration::ZERO,
                };
                Probe::Answered(took.max(work))
            }
            Err(why) => Probe::Failed(why),
        };
        let transition = watched.tracker.observe(&probe, &rules)?;
        watched.written = Some((transition.to, Instant::now()));
        match set_health(&self.js, &self.registry, &key, transition.to).await {
            Ok(Some(entry)) => Some(Changed { entry, transition }),
            Ok(None) => None,
            Err(err) => {
                // Not written: probe on, the tracker goes back to what is stored.
                tracing::warn!(%err, key, "cannot write a health change");
                watched_reset(&mut self.watched, &key, transition.from);
                None
            }
        }
    }
}

/// Sets the health of the instance registered under `key` (`<service>.<instance>`;
/// compare-and-set, retried on a race with its heartbeat); `None` when the entry is
/// gone. Also used by the drain action.
pub async fn set_health(
    js: &JetStream,
    registry: &Store,
    key: &str,
    health: Health,
) -> Result<Option<RegistryEntry>, Error> {
    for _ in 0..5 {
        let stored = registry
            .entry(key)
            .await
            .map_err(|e| Error::nats("read registry entry", e))?;
        let Some(stored) = stored.filter(|s| s.operation == Operation::Put) else {
            return Ok(None);
        };
        let mut current = RegistryEntry::from_json(&stored.value)?;
        current.health = health;
        let heartbeat = Duration::from_millis(current.heartbeat_ms.max(1));
        match registrar::write(js, &current, heartbeat, Some(stored.revision)).await {
            Ok(_) => return Ok(Some(current)),
            Err(Conflict::Changed) => continue,
            Err(Conflict::Failed(err)) => return Err(err),
        }
    }
    Err(Error::new(
        crate::error::ErrorKind::Transient,
        format!("registry entry {key} kept changing; health not written"),
    ))
}

fn watched_reset(watched: &mut HashMap<String, Watched>, key: &str, health: Health) {
    if let Some(w) = watched.get_mut(key) {
        w.tracker = Tracker::new(health);
        w.written = None;
    }
}
