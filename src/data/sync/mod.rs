//! Data sync: delivers every routed record to each of its targets at least once, in
//! order per key, with explicit acks, and tells the source.
//!
//! - There is no second copy of a record: each target has a durable consumer
//!   `sync-<target>` on stream `DATA` ([`consumer`]) and its worker keeps the records
//!   the flow rules route to it ([`worker`]), as of the time each was stored.
//! - [`members`]: each target is delivered by one sync instance (rendezvous hashing over
//!   the instances registered as `switchyard-sync`; the consumer is pinned to one
//!   puller as well); instances share the targets and take over a dead one's.
//! - [`deliveries`] and [`keys`]: order per key: one record at a time per key, up to
//!   `max_in_flight` keys at once, holding a key's later records while a failed one
//!   waits for its redelivery.
//! - [`deliver`]: one delivery (request to the target with a delivery id); the dead
//!   letter when deliveries run out.
//! - [`settle`]: then the confirmation on `data.confirm.<source>`, the status
//!   ([`status`]) in the cache (`status` namespace, KV `cache`) and the ack, for every
//!   record delivered meanwhile at once.
//! - [`recovery`]: after a crash, the records the dead owner held come back before
//!   newer ones are delivered, so order per key survives a takeover.
//! - [`policy`]: ack wait, max deliveries, backoff, timeout and keys in flight per
//!   target from KV `policies` (`sync.<target>`), live.

pub mod consumer;
pub mod deliver;
pub mod deliveries;
pub mod keys;
pub mod members;
pub mod policy;
pub mod recovery;
pub mod settle;
pub mod status;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::deliver::Deps;
use self::members::Members;
use self::policy::SyncPolicies;
use self::worker::Shared;
use crate::component::{Component, Context, Subscription};
use crate::config::Config;
use crate::data::cache::{Cache, CacheConfig};
use crate::data::flow::Rules;
use crate::error::Error;
use crate::observability::metrics as m;
use crate::subjects::DATA_IN;

pub const NAME: &str = "sync";
/// How often ownership is re-checked even without a change notification.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// The data sync component.
#[derive(Default)]
pub struct SyncComponent {
    cache: Mutex<CacheConfig>,
}

impl Component for SyncComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn subscriptions(&self) -> Vec<Subscription> {
        vec![Subscription {
            subject: DATA_IN,
            queue_group: None,
            description: "durable consumers sync-<target> on DATA, one instance per target",
        }]
    }

    fn configure(&mut self, config: &Config) -> Result<(), Error> {
        if let Ok(mut cache) = self.cache.lock() {
            *cache = config.cache.clone();
        }
        Ok(())
    }

    fn start(&self, ctx: Context) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let stop = ctx.shutdown().clone();
            let cache_config = self.cache.lock().map(|c| c.clone()).unwrap_or_default();
            let rules = Rules::start(&ctx.client, stop.clone()).await?;
            let policies = SyncPolicies::start(&ctx.client, stop.clone()).await?;
            // Sync only writes statuses: no memory, no watch of every write to the bucket.
            let cache = Cache::start_writer(&ctx.client, cache_config, stop.clone()).await?;
            // Membership has its own token: the instance leaves only after its workers
            // have stopped, so nobody takes a target it is still delivering.
            let members_stop = CancellationToken::new();
            let members = Members::join(&ctx.client, &ctx.instance, members_stop.clone()).await?;
            let shared = Shared {
                deps: Arc::new(Deps {
                    client: ctx.client.clone(),
                    js: ctx.jetstream.clone(),
                    cache,
                    errors: ctx.errors.clone(),
                }),
                ctx: ctx.clone(),
                rules,
                policies,
            };
            let mut manager = Manager {
                shared,
                members,
                workers: HashMap::new(),
            };
            manager.reconcile();
            ctx.spawn(async move {
                manager.run(stop).await;
                members_stop.cancel();
            });
            Ok(())
        })
    }
}

struct Worker {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// Starts a worker for each target this instance owns and stops the others.
struct Manager {
    shared: Shared,
    members: Members,
    workers: HashMap<String, Worker>,
}

impl Manager {
    async fn run(mut self, stop: CancellationToken) {
        let mut rules = self.shared.rules.changes();
        let mut members = self.members.changes();
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = rules.changed() => {}
                _ = members.recv() => {}
                _ = tick.tick() => {}
            }
            self.reconcile();
        }
        for worker in self.workers.values() {
            worker.stop.cancel();
        }
        for (_, worker) in self.workers.drain() {
            let _ = worker.handle.await;
        }
        m::sync_workers(0);
        self.members.leave().await;
    }

    fn reconcile(&mut self) {
        let wanted: HashMap<String, _> = self
            .shared
            .rules
            .targets()
            .into_iter()
            .filter(|(target, _)| self.members.owns(&target.name))
            .map(|(target, since)| (target.name.clone(), (target, since)))
            .collect();
        // Stop workers of targets no longer ours; forget the ones that have stopped.
        for (name, worker) in &self.workers {
            if !wanted.contains_key(name) && !worker.stop.is_cancelled() {
                tracing::info!(target = %name, "target moved to another instance");
                worker.stop.cancel();
            }
        }
        self.workers.retain(|_, w| !w.handle.is_finished());
        for (name, (target, since)) in wanted {
            if self.workers.contains_key(&name) {
                continue;
            }
            tracing::info!(target = %name, subject = %target.subject, "delivering to target");
            let stop = CancellationToken::new();
            let handle = self.shared.ctx.spawn(worker::run(
                self.shared.clone(),
                target,
                since,
                stop.clone(),
            ));
            self.workers.insert(name, Worker { stop, handle });
        }
        m::sync_workers(self.workers.len());
    }
}
