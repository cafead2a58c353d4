//! Which sync instance delivers which target. Every sync instance registers in KV
//! `registry` as service `switchyard-sync` (heartbeat 1 s, so a dead instance is gone
//! within 3 s), and each target belongs to one live instance, chosen by rendezvous
//! hashing: every instance computes the same owner from the same membership, and a
//! join or leave moves only the targets it must. The target's consumer is pinned to
//! one puller by the server as well, so even while two instances briefly disagree about
//! membership, only one of them receives the target's records: order per key holds.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::Client;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::component::Instance;
use crate::error::Error;
use crate::integration::registry::entry::{Health, RegistryEntry};
use crate::integration::registry::registrar::{self, Registrar};
use crate::integration::registry::view::{Change, RegistryView};

/// The registry name sync instances register under.
pub const SERVICE: &str = "switchyard-sync";
const HEARTBEAT: Duration = Duration::from_secs(1);

pub struct Members {
    me: String,
    view: RegistryView,
    registrar: Option<Registrar>,
}

impl Members {
    /// Registers this instance and follows the others.
    pub async fn join(
        client: &Client,
        instance: &Instance,
        stop: CancellationToken,
    ) -> Result<Members, Error> {
        let view = RegistryView::start(client, stop).await?;
        let entry = RegistryEntry {
            name: SERVICE.to_string(),
            version: instance.version.to_string(),
            instance: instance.id.clone(),
            description: "Switchyard data sync: delivers flow records to their targets".to_string(),
            endpoints: Vec::new(),
            metadata: BTreeMap::from([("component".to_string(), "sync".to_string())]),
            host: registrar::hostname(),
            pid: std::process::id(),
            started: instance.started.clone(),
            last_heartbeat: String::new(),
            heartbeat_ms: 0,
            health: Health::Healthy,
        };
        let registrar = Registrar::register(client, entry, HEARTBEAT).await?;
        Ok(Members {
            me: instance.id.clone(),
            view,
            registrar: Some(registrar),
        })
    }

    /// Whether this instance delivers `target` now. An instance that does not see itself
    /// in the registry (its entry expired during a partition) owns nothing until its
    /// heartbeat brings the entry back: better idle than competing.
    pub fn owns(&self, target: &str) -> bool {
        let members: Vec<String> = self
            .view
            .instances(SERVICE)
            .into_iter()
            .filter(|e| e.health.is_live())
            .map(|e| e.instance)
            .collect();
        owner(target, &members) == Some(self.me.as_str())
    }

    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.view.changes()
    }

    /// Deletes this instance's entry, so the others take its targets at once.
    pub async fn leave(mut self) {
        if let Some(registrar) = self.registrar.take()
            && let Err(err) = registrar.deregister().await
        {
            tracing::warn!(%err, "sync cannot deregister; its entry will expire");
        }
    }
}

/// Rendezvous (highest random weight) hashing: the member with the highest
/// hash(target, member) owns the target. FNV-1a rather than the std hasher, whose
/// output may change between Rust releases: instances built apart must agree.
pub fn owner<'a>(target: &str, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|member| fnv1a(&[target.as_bytes(), b"/", member.as_bytes()]))
        .map(String::as_str)
}

/// 64-bit FNV-1a over the concatenated parts, with a final avalanche so that
/// near-identical inputs spread (FNV alone correlates on shared prefixes).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finaliser
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_stable_and_moves_little() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let two: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let targets: Vec<String> = (0..300).map(|i| format!("t{i}")).collect();
        let mut moved = 0;
        let mut per_member = BTreeMap::<&str, usize>::new();
        for t in &targets {
            let with_c = owner(t, &three).unwrap();
            *per_member.entry(with_c).or_default() += 1;
            let without_c = owner(t, &two).unwrap();
            if with_c != "c" {
                assert_eq!(with_c, without_c, "{t} moved though its owner stayed");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 50 && moved < 150, "{moved} of 300 moved");
        assert!(per_member.values().all(|&n| n > 50), "{per_member:?}");
        assert_eq!(owner("x", &[]), None);
    }
}
