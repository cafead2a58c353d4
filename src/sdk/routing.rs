//! Whether this instance takes requests. Requests reach a service's instances through
//! a NATS queue group, where the server picks any subscriber; the only way to keep
//! requests away from an instance is for it to leave the group. So every instance
//! follows its service's registry entries (their `health`, written by the health
//! checker and by drain actions) and serves only when it should:
//!
//! - healthy: always;
//! - degraded: only while no peer is healthy (slow instances last);
//! - unhealthy: only while no peer is live (a probing glitch must not take the whole
//!   service down);
//! - draining: never (an explicit decision to take it out).
//!
//! NATS micro (`$SRV.PING|INFO|STATS`) keeps answering throughout, so the health
//! checker still sees the instance and can declare it healthy again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::Client;
use async_nats::jetstream::kv::{Entry, Operation};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::integration::registry::entry::split_key;
use crate::integration::registry::{Health, RegistryEntry};
use crate::nats::watch as kv_watch;
use crate::subjects::BUCKET_REGISTRY;

/// Whether an instance in health `me` should serve, given its peers' health.
pub fn should_serve(me: Health, peers: &[Health]) -> bool {
    let any = |wanted: &[Health]| peers.iter().any(|h| wanted.contains(h));
    match me {
        Health::Healthy => true,
        Health::Degraded => !any(&[Health::Healthy]),
        Health::Unhealthy => !any(&[Health::Healthy, Health::Degraded]),
        Health::Draining => false,
    }
}

/// Follows the registry entries of `service` and says, through the returned watch,
/// whether instance `me` should take requests (true until told otherwise).
pub async fn follow(
    client: &Client,
    service: &str,
    me: &str,
    stop: CancellationToken,
) -> Result<watch::Receiver<bool>, Error> {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js
        .get_key_value(BUCKET_REGISTRY)
        .await
        .map_err(|e| Error::nats("open bucket registry", e))?;
    let (tx, rx) = watch::channel(true);
    let state = Arc::new(Mutex::new(Peers {
        service: service.to_string(),
        me: me.to_string(),
        health: HashMap::new(),
        serving: tx,
    }));
    let loader = state.clone();
    let last = kv_watch::load(&kv, move |entry| apply(&loader, &entry)).await?;
    tokio::spawn(kv_watch::follow(kv, client.clone(), last, stop, move |e| {
        apply(&state, &e)
    }));
    Ok(rx)
}

struct Peers {
    service: String,
    me: String,
    /// Health by instance, this one included.
    health: HashMap<String, Health>,
    serving: watch::Sender<bool>,
}

fn apply(state: &Mutex<Peers>, entry: &Entry) {
    let Ok(mut peers) = state.lock() else { return };
    let Some((service, instance)) = split_key(&entry.key) else {
        return;
    };
    if service != peers.service {
        return;
    }
    let health = match entry.operation {
        Operation::Put => RegistryEntry::from_json(&entry.value)
            .ok()
            .map(|e| e.health),
        Operation::Delete | Operation::Purge => None,
    };
    match health {
        Some(health) => peers.health.insert(instance.to_string(), health),
        None => peers.health.remove(instance),
    };
    let Some(mine) = peers.health.get(&peers.me).copied() else {
        // Not (or no longer) registered: keep serving; the registrar writes it back.
        return;
    };
    let others: Vec<Health> = peers
        .health
        .iter()
        .filter(|(id, _)| **id != peers.me)
        .map(|(_, h)| *h)
        .collect();
    let serve = should_serve(mine, &others);
    peers.serving.send_if_modified(|current| {
        let changed = *current != serve;
        *current = serve;
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    #[test]
    fn healthy_first_degraded_last_drained_never() {
        assert!(should_serve(Healthy, &[Degraded, Unhealthy]));
        assert!(!should_serve(Degraded, &[Healthy]));
        assert!(should_serve(Degraded, &[Degraded, Unhealthy]));
        assert!(!should_serve(Unhealthy, &[Degraded]));
        assert!(should_serve(Unhealthy, &[Unhealthy, Draining]));
        assert!(should_serve(Unhealthy, &[]));
        assert!(!should_serve(Draining, &[]));
    }
}
