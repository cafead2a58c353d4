//! The data cache: memory (moka) in front of KV bucket `cache`, shared by every
//! instance. Data sync keeps delivery statuses in it (namespace `status`); anyone reads
//! and writes it over `cache.<get|put|del>.<namespace>.<key>`.
//!
//! - [`store`]: [`Cache`], the library API: read-through `get`, `get_local` (memory only,
//!   no I/O), write-through `put`, `delete`.
//! - [`rules`]: rules per namespace (TTL, idle time, bytes in memory) from `[cache]` in
//!   the configuration and live from KV `policies` (`cache.<namespace>`).
//! - [`namespace`]: one namespace's moka cache, weighed in bytes, evictions counted.
//! - [`invalidation`]: every instance follows the bucket (headers only) and evicts what
//!   another instance changed; [`freshness`] keeps late round trips from refilling an
//!   outdated value.
//! - [`key`]: namespace and key syntax, subjects.
//! - [`endpoint`]: the request-reply subjects.
//!
//! The namespace's TTL applies to the stored KV entry too (`Nats-TTL`, the bucket allows
//! per-key TTLs), so the bucket does not grow forever: what expires from memory expires
//! from KV, and the server's expiry marker evicts it from every instance. The idle time
//! and the byte capacity are per instance, memory only.

pub mod endpoint;
mod freshness;
mod invalidation;
pub mod key;
mod namespace;
pub mod rules;
pub mod store;

use futures::future::BoxFuture;

pub use self::rules::{CacheConfig, NamespaceRule, STATUS_NAMESPACE};
pub use self::store::Cache;
use crate::component::{Component, Context, Subscription};
use crate::config::Config;
use crate::error::Error;
use crate::subjects::{CACHE, QUEUE_GROUP};

pub const NAME: &str = "cache";

/// The cache component: `cache.>` in queue group `switchyard`.
#[derive(Debug, Clone, Default)]
pub struct CacheComponent {
    config: CacheConfig,
}

impl CacheComponent {
    pub fn new(config: CacheConfig) -> CacheComponent {
        CacheComponent { config }
    }
}

impl Component for CacheComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn subscriptions(&self) -> Vec<Subscription> {
        vec![Subscription {
            subject: CACHE,
            queue_group: Some(QUEUE_GROUP),
            description: "values of KV cache through memory (400, 404, 413)",
        }]
    }

    fn configure(&mut self, config: &Config) -> Result<(), Error> {
        self.config = config.cache.clone();
        Ok(())
    }

    fn start(&self, ctx: Context) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let cache =
                Cache::start(&ctx.client, self.config.clone(), ctx.shutdown().clone()).await?;
            endpoint::serve(&ctx, NAME, cache).await
        })
    }
}
