//! One namespace in memory: a moka cache built from the namespace's rule, weighing each
//! entry by its key and value bytes, counting evictions by cause. A changed rule builds
//! a new one (moka fixes TTL, idle time and capacity at construction); the old entries
//! go with the old cache and are simply read through again.

use std::sync::Arc;

use bytes::Bytes;
use moka::future::Cache as Moka;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;

use super::rules::NamespaceRule;
use crate::observability::metrics::CacheMetrics;

/// A value in memory with the KV revision it was written at.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub value: Bytes,
    pub revision: u64,
}

pub(crate) struct Namespace {
    pub rule: NamespaceRule,
    /// `Nats-TTL` of this namespace's KV writes, from the rule's TTL.
    pub kv_ttl: Option<String>,
    pub entries: Moka<String, Cached>,
    pub metrics: Arc<CacheMetrics>,
}

impl Namespace {
    pub fn new(rule: NamespaceRule, metrics: Arc<CacheMetrics>) -> Namespace {
        let counted = metrics.clone();
        let mut builder = Moka::builder()
            .max_capacity(rule.max_bytes)
            .weigher(|key: &String, cached: &Cached| {
                u32::try_from(key.len() + cached.value.len()).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_key, _value, cause| counted.evicted(cause_label(cause)));
        if let Some(ttl) = rule.ttl {
            builder = builder.time_to_live(ttl);
        }
        if let Some(idle) = rule.idle {
            builder = builder.time_to_idle(idle);
        }
        Namespace {
            rule,
            kv_ttl: rule.kv_ttl(),
            entries: builder.build(),
            metrics,
        }
    }

    /// Takes `key` out of memory if what is there is older than `revision` (a newer
    /// value, such as this instance's own write, stays). Atomic per key.
    pub async fn evict_older_than(&self, key: &str, revision: u64) {
        self.entries
            .entry_by_ref(key)
            .and_compute_with(|current| async move {
                match current {
                    Some(entry) if entry.value().revision < revision => Op::Remove,
                    _ => Op::Nop,
                }
            })
            .await;
    }

    /// Sets the size gauges, after running moka's pending work so expired entries are
    /// gone (and counted) even when nobody reads them.
    pub async fn report(&self) {
        self.entries.run_pending_tasks().await;
        self.metrics
            .size_bytes
            .set(self.entries.weighted_size() as f64);
        self.metrics.entries.set(self.entries.entry_count() as f64);
    }
}

fn cause_label(cause: RemovalCause) -> &'static str {
    match cause {
        RemovalCause::Size => "size",
        RemovalCause::Expired => "expired",
        RemovalCause::Explicit => "explicit",
        RemovalCause::Replaced => "replaced",
    }
}
