//! Registering one service instance: create its entry with a per-key TTL of three
//! heartbeat intervals, refresh it at every heartbeat, delete it on a graceful stop,
//! and announce each step on the event bus. An instance that dies simply stops
//! heartbeating; the server then expires its key and the registry component reports it.
//!
//! The health in the entry belongs to the health checker: a heartbeat rewrites the entry
//! with compare-and-set on the revision it wrote last, and when the checker wrote in
//! between, the heartbeat takes the stored health over and writes again, so a beat
//! never undoes a health change.

use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::Context as JetStream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use tokio_util::sync::CancellationToken;

use super::entry::RegistryEntry;
use crate::error::Error;
use crate::integration::bus::{self, catalog::Lifecycle, catalog::ServiceLifecycle};
use crate::subjects::BUCKET_REGISTRY;

/// How many heartbeats may be missed before the entry expires.
pub const MISSED_HEARTBEATS: u32 = 3;
const SOURCE: &str = "urn:switchyard:registry";

/// A registered instance; heartbeats until [`Registrar::deregister`] or drop.
pub struct Registrar {
    client: Client,
    js: JetStream,
    entry: RegistryEntry,
    stop: CancellationToken,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Registrar {
    /// Writes the entry (TTL = three heartbeats), publishes
    /// `events.sys.service.registered`, and starts heartbeating.
    pub async fn register(
        client: &Client,
        mut entry: RegistryEntry,
        heartbeat: Duration,
    ) -> Result<Registrar, Error> {
        let js = async_nats::jetstream::new(client.clone());
        entry.heartbeat_ms = u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX);
        entry.last_heartbeat = now();
        let revision = write(&js, &entry, heartbeat, None).await?;
        announce(&js, client, &entry, Lifecycle::Registered).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(beat(
            js.clone(),
            entry.clone(),
            revision,
            heartbeat,
            stop.clone(),
        ));
        Ok(Registrar {
            client: client.clone(),
            js,
            entry,
            stop,
            heartbeat: Some(task),
        })
    }

    pub fn entry(&self) -> &RegistryEntry {
        &self.entry
    }

    /// Stops heartbeating, deletes the entry and publishes
    /// `events.sys.service.deregistered`.
    pub async fn deregister(mut self) -> Result<(), Error> {
        self.stop.cancel();
        // A beat in flight must land before the delete, or it would resurrect the key.
        if let Some(beat) = self.heartbeat.take() {
            let _ = beat.await;
        }
        let kv = self
            .js
            .get_key_value(BUCKET_REGISTRY)
            .await
            .map_err(|e| Error::nats("open bucket registry", e))?;
        kv.delete(self.entry.key()?)
            .await
            .map_err(|e| Error::nats("delete registry entry", e))?;
        announce(&self.js, &self.client, &self.entry, Lifecycle::Deregistered).await;
        Ok(())
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        // Dropped without deregistering: stop heartbeating and let the entry expire.
        self.stop.cancel();
    }
}

async fn beat(
    js: JetStream,
    mut entry: RegistryEntry,
    mut revision: u64,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is immediate; the entry was just written
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        entry.last_heartbeat = now();
        match write(&js, &entry, every, Some(revision)).await {
            Ok(written) => revision = written,
            Err(Conflict::Changed) => match adopt_stored(&js, &mut entry).await {
                // Written by the health checker meanwhile: keep its health, beat again.
                Ok(stored) => match write(&js, &entry, every, Some(stored)).await {
                    Ok(written) => revision = written,
                    Err(err) => {
                        tracing::warn!(%err, service = %entry.name, "registry heartbeat failed")
                    }
                },
                Err(err) => {
                    tracing::warn!(%err, service = %entry.name, "registry heartbeat failed")
                }
            },
            // The next beat tries again; two more misses before the entry expires.
            Err(err) => tracing::warn!(%err, service = %entry.name, "registry heartbeat failed"),
        }
    }
}

/// Reads the stored entry's health into `entry`; the stored revision.
async fn adopt_stored(js: &JetStream, entry: &mut RegistryEntry) -> Result<u64, Error> {
    let kv = js
        .get_key_value(BUCKET_REGISTRY)
        .await
        .map_err(|e| Error::nats("open bucket registry", e))?;
    let stored = kv
        .entry(entry.key()?)
        .await
        .map_err(|e| Error::nats("read registry entry", e))?;
    match stored {
        Some(stored) if stored.operation == async_nats::jetstream::kv::Operation::Put => {
            if let Ok(value) = RegistryEntry::from_json(&stored.value) {
                entry.health = value.health;
            }
            Ok(stored.revision)
        }
        // Expired or deleted behind our back: write it afresh.
        Some(stored) => Ok(stored.revision),
        None => Ok(0),
    }
}

/// Why a registry write failed.
#[derive(Debug, thiserror::Error)]
pub enum Conflict {
    /// Compare-and-set: someone wrote the entry since the expected revision.
    #[error("the registry entry changed since it was read")]
    Changed,
    #[error(transparent)]
    Failed(#[from] Error),
}

impl From<Conflict> for Error {
    fn from(conflict: Conflict) -> Error {
        match conflict {
            Conflict::Changed => {
                Error::new(crate::error::ErrorKind::Transient, conflict.to_string())
            }
            Conflict::Failed(err) => err,
        }
    }
}

/// Writes an entry with a per-message TTL of three heartbeats (what `kv.put` does, plus
/// the `Nats-TTL` header; the bucket allows per-key TTLs, see provisioning), and with
/// `expected` (revision, 0 = absent) as compare-and-set. Used by the heartbeats and by
/// the health checker. Returns the new revision.
pub async fn write(
    js: &JetStream,
    entry: &RegistryEntry,
    heartbeat: Duration,
    expected: Option<u64>,
) -> Result<u64, Conflict> {
    let key = entry.key()?;
    let ttl = (heartbeat * MISSED_HEARTBEATS).as_secs().max(1);
    let mut publish = PublishMessage::build()
        .payload(entry.to_json()?.into())
        .header("Nats-TTL", format!("{ttl}s"));
    if let Some(revision) = expected {
        publish = publish.expected_last_subject_sequence(revision);
    }
    let ack = js
        .send_publish(format!("$KV.{BUCKET_REGISTRY}.{key}"), publish)
        .await
        .map_err(|e| Error::nats("write registry entry", e))?
        .await;
    match ack {
        Ok(ack) => Ok(ack.sequence),
        Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Err(Conflict::Changed),
        Err(err) => Err(Error::nats("write registry entry", err).into()),
    }
}

/// Lifecycle events are best effort: the registry entry is the truth.
async fn announce(js: &JetStream, client: &Client, entry: &RegistryEntry, change: Lifecycle) {
    let event = ServiceLifecycle {
        change,
        service: entry.name.clone(),
        instance: entry.instance.clone(),
        version: entry.version.clone(),
    };
    if let Err(err) = bus::publish(js, client, SOURCE, &event, None).await {
        tracing::warn!(%err, change = change.as_str(), "cannot publish service event");
    }
}

/// RFC 3339 now.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// This machine's host name, for registry entries.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}
