//! [`Cache`]: memory (moka, one cache per namespace) in front of KV bucket `cache`.
//!
//! - Reads look in memory, else read through to KV (one direct get) and keep the value.
//! - Writes go to KV first (one publish, awaiting the stream's ack, with the
//!   namespace's TTL as `Nats-TTL`), then to memory; the KV revision is returned.
//! - Deletes are a KV purge (its marker expires after 5 minutes, so deleted keys leave
//!   nothing behind), then an eviction.
//! - Every instance follows the bucket ([`super::invalidation`]) and the cache rules in
//!   KV `policies` (`nats::watch`).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_nats::jetstream::Context as JetStream;
use async_nats::jetstream::kv::{Entry, Operation, Store};
use async_nats::{Client, HeaderMap, HeaderName};
use bytes::Bytes;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::freshness::Freshness;
use super::key::{kv_subject, storage_key, validate};
use super::namespace::{Cached, Namespace};
use super::rules::{CacheConfig, NamespaceRule, RulePatch};
use crate::envelope::{Outgoing, check_size};
use crate::error::Error;
use crate::nats::{batch, watch};
use crate::observability::metrics::CacheMetrics;
use crate::subjects::{BUCKET_CACHE, BUCKET_POLICIES, POLICY_CACHE_PREFIX, validate_token};

/// Namespaces one instance keeps in memory at most: each has its own moka cache and its
/// own metric series, so an unbounded number from callers would be a leak.
pub const MAX_NAMESPACES: usize = 1024;
/// How long the marker of a delete stays in the bucket: long enough for every instance
/// to see it, short enough that deleted keys do not pile up.
pub const DELETE_MARKER_TTL: &str = "300s";
/// Built once: inserting a header by `&str` parses and allocates its name every time.
const NATS_TTL: HeaderName = HeaderName::from_static("Nats-TTL");
/// How often the size gauges are refreshed (and expired entries swept).
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The data cache. Cheap to clone; every clone shares the same memory and watches.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    js: JetStream,
    kv: Store,
    config: CacheConfig,
    /// Rules from KV `policies`, by namespace.
    policies: RwLock<HashMap<String, RulePatch>>,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    freshness: Freshness,
    /// Follows the bucket and keeps values in memory; a writer ([`Cache::start_writer`])
    /// does neither.
    follows: bool,
}

impl Cache {
    /// Opens bucket `cache`, starts following it (invalidation) and the cache rules in
    /// KV `policies`; returns once both are live. Both stop with `stop`.
    pub async fn start(
        client: &Client,
        config: CacheConfig,
        stop: CancellationToken,
    ) -> Result<Cache, Error> {
        Cache::open(client, config, stop, true).await
    }

    /// A cache for writers that never read their values back (data sync's statuses):
    /// no memory and no invalidation watch, so every other instance's writes are not
    /// delivered to it for nothing (one message per write of the whole bucket). Its
    /// reads go to KV; its writes are the same as [`Cache::start`]'s, namespace TTLs
    /// included.
    pub async fn start_writer(
        client: &Client,
        config: CacheConfig,
        stop: CancellationToken,
    ) -> Result<Cache, Error> {
        Cache::open(client, config, stop, false).await
    }

    async fn open(
        client: &Client,
        config: CacheConfig,
        stop: CancellationToken,
        follows: bool,
    ) -> Result<Cache, Error> {
        let js = async_nats::jetstream::new(client.clone());
        let kv = js
            .get_key_value(BUCKET_CACHE)
            .await
            .map_err(|e| Error::nats("open bucket cache", e))?;
        let policies_kv = js
            .get_key_value(BUCKET_POLICIES)
            .await
            .map_err(|e| Error::nats("open bucket policies", e))?;
        let cache = Cache {
            inner: Arc::new(Inner {
                client: client.clone(),
                js,
                kv,
                config,
                policies: RwLock::default(),
                namespaces: RwLock::default(),
                freshness: Freshness::new(),
                follows,
            }),
        };
        if follows {
            super::invalidation::start(cache.clone(), client.clone(), stop.clone()).await?;
        }
        let last_revision = watch::load(&policies_kv, |entry| cache.apply_policy(&entry)).await?;
        let follower = cache.clone();
        tokio::spawn(watch::follow(
            policies_kv,
            client.clone(),
            last_revision,
            stop.clone(),
            move |entry| follower.apply_policy(&entry),
        ));
        if follows {
            tokio::spawn(cache.clone().report_sizes(stop));
        }
        Ok(cache)
    }

    /// The value of `<namespace>.<key>`: from memory, else read through from KV (and
    /// kept in memory). `None` when the key does not exist.
    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Bytes>, Error> {
        validate(namespace, key)?;
        let ns = self.namespace(namespace)?;
        if let Some(cached) = ns.entries.get(key).await {
            ns.metrics.hits.increment(1);
            return Ok(Some(cached.value));
        }
        ns.metrics.misses.increment(1);
        let since = self.inner.freshness.watermark();
        let entry = self
            .inner
            .kv
            .entry(storage_key(namespace, key))
            .await
            .map_err(|e| Error::nats("read bucket cache", e))?;
        match entry {
            Some(Entry {
                value,
                revision,
                operation: Operation::Put,
                ..
            }) => {
                self.fill(&ns, namespace, key, value.clone(), revision, since)
                    .await;
                Ok(Some(value))
            }
            _ => Ok(None),
        }
    }

    /// The value of `<namespace>.<key>` if it is in this instance's memory; no I/O.
    /// A rare false miss is possible while moka finishes pending maintenance.
    pub fn get_local(&self, namespace: &str, key: &str) -> Option<Bytes> {
        let namespaces = self
            .inner
            .namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let ns = namespaces.get(namespace)?;
        // moka's future cache reads without waiting on anything unless maintenance is
        // interrupted; if it would wait, this is a miss rather than a block.
        match ns.entries.get(key).now_or_never().flatten() {
            Some(cached) => {
                ns.metrics.hits.increment(1);
                Some(cached.value)
            }
            None => {
                ns.metrics.misses.increment(1);
                None
            }
        }
    }

    /// Writes `value` to KV (awaiting the stream's ack), then to memory. Returns the KV
    /// revision. The namespace's TTL, if any, becomes the entry's TTL in KV too.
    pub async fn put(&self, namespace: &str, key: &str, value: Bytes) -> Result<u64, Error> {
        validate(namespace, key)?;
        let ns = self.namespace(namespace)?;
        let since = self.inner.freshness.watermark();
        let revision = self
            .publish(namespace, key, ns.kv_ttl.as_deref(), value.clone())
            .await?;
        self.fill(&ns, namespace, key, value, revision, since).await;
        Ok(revision)
    }

    /// Writes `value` to KV like [`Cache::put`], without keeping it in this instance's
    /// memory: for writers that never read their values back (data sync's statuses), to
    /// whom filling memory is a cache insert per write for nothing, pushing out entries
    /// someone reads. An older copy of the key in this instance's memory is evicted, as
    /// the invalidation would do for a write by another instance.
    pub async fn write(&self, namespace: &str, key: &str, value: Bytes) -> Result<u64, Error> {
        validate(namespace, key)?;
        let ttl = match self.existing(namespace) {
            Some(ns) => ns.kv_ttl.clone(),
            None => self.rule(namespace).kv_ttl(),
        };
        let revision = self.publish(namespace, key, ttl.as_deref(), value).await?;
        self.changed(namespace, key, revision).await;
        Ok(revision)
    }

    /// Writes many values of one namespace as [`Cache::write`] does, every write sent
    /// before the first ack is awaited ([`crate::nats::batch`]). Entries that can never be
    /// stored (an invalid key, too large) are left out and returned with the reason, by
    /// index; Err: the others could not be stored (all, or some: retry them all).
    pub async fn write_many(
        &self,
        namespace: &str,
        entries: &[(String, Bytes)],
    ) -> Result<Vec<(usize, Error)>, Error> {
        let ttl = match self.existing(namespace) {
            Some(ns) => ns.kv_ttl.clone(),
            None => self.rule(namespace).kv_ttl(),
        };
        let message = |(key, value): &(String, Bytes)| {
            let mut headers = HeaderMap::new();
            if let Some(ttl) = &ttl {
                headers.insert(NATS_TTL, ttl.as_str());
            }
            batch::Message {
                subject: kv_subject(namespace, key).into(),
                headers,
                payload: value.clone(),
            }
        };
        let mut refused = Vec::new();
        let mut valid = Vec::with_capacity(entries.len());
        for (n, entry) in entries.iter().enumerate() {
            let checked = validate(namespace, &entry.0).and_then(|()| {
                let batch::Message {
                    headers, payload, ..
                } = message(entry);
                check_size(&self.inner.client, &Outgoing { headers, payload })
            });
            match checked {
                Ok(()) => valid.push(entry),
                Err(err) => refused.push((n, err)),
            }
        }
        let revisions = batch::publish(&self.inner.js, &valid, |entry| message(entry)).await?;
        for ((key, _), revision) in valid.iter().zip(revisions) {
            self.changed(namespace, key, revision).await;
        }
        Ok(refused)
    }

    /// One KV write with the entry's TTL (`Nats-TTL`), awaiting the stream's ack;
    /// returns the revision.
    async fn publish(
        &self,
        namespace: &str,
        key: &str,
        ttl: Option<&str>,
        value: Bytes,
    ) -> Result<u64, Error> {
        let mut headers = HeaderMap::new();
        if let Some(ttl) = ttl {
            headers.insert(NATS_TTL, ttl);
        }
        let message = Outgoing {
            headers,
            payload: value,
        };
        check_size(&self.inner.client, &message)?;
        let ack = self
            .inner
            .js
            .publish_with_headers(kv_subject(namespace, key), message.headers, message.payload)
            .await?
            .await?;
        Ok(ack.sequence)
    }

    /// Deletes `<namespace>.<key>` from KV and memory; deleting a missing key is fine.
    pub async fn delete(&self, namespace: &str, key: &str) -> Result<(), Error> {
        validate(namespace, key)?;
        let mut headers = HeaderMap::new();
        headers.insert("KV-Operation", "PURGE");
        headers.insert("Nats-Rollup", "sub");
        headers.insert("Nats-TTL", DELETE_MARKER_TTL);
        let ack = self
            .inner
            .js
            .publish_with_headers(kv_subject(namespace, key), headers, Bytes::new())
            .await?
            .await?;
        self.changed(namespace, key, ack.sequence).await;
        Ok(())
    }

    /// The rule in force for `namespace`: its policy over its configuration.
    pub fn rule(&self, namespace: &str) -> NamespaceRule {
        let configured = self.inner.config.rule(namespace);
        let policies = self
            .inner
            .policies
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match policies.get(namespace) {
            Some(patch) => configured.with(patch),
            None => configured,
        }
    }

    /// The namespace's memory, made on first use.
    fn namespace(&self, name: &str) -> Result<Arc<Namespace>, Error> {
        if let Some(ns) = self.existing(name) {
            return Ok(ns);
        }
        let mut namespaces = self
            .inner
            .namespaces
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(ns) = namespaces.get(name) {
            return Ok(ns.clone());
        }
        // Read under the lock: a policy applied meanwhile either is in this rule, or
        // finds the namespace and rebuilds it.
        let rule = self.rule(name);
        if namespaces.len() >= MAX_NAMESPACES {
            return Err(Error::invalid_input(format!(
                "namespace {name:?} would be one too many: at most {MAX_NAMESPACES} namespaces"
            )));
        }
        let metrics = Arc::new(CacheMetrics::new(name));
        let ns = Arc::new(Namespace::new(rule, metrics));
        namespaces.insert(name.to_string(), ns.clone());
        Ok(ns)
    }

    fn existing(&self, name: &str) -> Option<Arc<Namespace>> {
        self.inner
            .namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Keeps a value that came back from a round trip, unless a newer change of the key
    /// was seen meanwhile (see [`super::freshness`]).
    async fn fill(
        &self,
        ns: &Namespace,
        namespace: &str,
        key: &str,
        value: Bytes,
        revision: u64,
        since: u64,
    ) {
        if !self.inner.follows {
            // Nothing would evict it when another instance changes the key.
            return;
        }
        ns.entries
            .insert(key.to_string(), Cached { value, revision })
            .await;
        if self
            .inner
            .freshness
            .superseded(namespace, key, revision.max(since))
        {
            ns.evict_older_than(key, revision + 1).await;
        }
    }

    /// `<namespace>.<key>` changed at `revision` (seen by the watch, or deleted here).
    pub(super) async fn changed(&self, namespace: &str, key: &str, revision: u64) {
        self.inner.freshness.changed(namespace, key, revision);
        if let Some(ns) = self.existing(namespace) {
            ns.evict_older_than(key, revision).await;
        }
    }

    /// The watch applied every change up to `revision`.
    pub(super) fn applied(&self, revision: u64) {
        self.inner.freshness.applied(revision);
    }

    /// Empties memory (every namespace); the next reads go to KV.
    pub(super) fn forget_local(&self) {
        let namespaces = self
            .inner
            .namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for ns in namespaces.values() {
            ns.entries.invalidate_all();
        }
    }

    /// A change in KV `policies`: keys `cache.<namespace>` are cache rules; a changed
    /// rule rebuilds that namespace's memory. A malformed value is logged and the rule
    /// in force stays.
    fn apply_policy(&self, entry: &Entry) {
        let Some(namespace) = entry.key.strip_prefix(POLICY_CACHE_PREFIX) else {
            return;
        };
        if validate_token("namespace", namespace).is_err() {
            tracing::warn!(key = %entry.key, "ignoring cache policy: not cache.<namespace>");
            return;
        }
        let patch = match entry.operation {
            Operation::Put => match RulePatch::parse_policy(&entry.value) {
                Ok(patch) => Some(patch),
                Err(err) => {
                    tracing::warn!(%err, %namespace, "ignoring cache policy; the rule in force stays");
                    return;
                }
            },
            Operation::Delete | Operation::Purge => None,
        };
        {
            let mut policies = self
                .inner
                .policies
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            match patch {
                Some(patch) => policies.insert(namespace.to_string(), patch),
                None => policies.remove(namespace),
            };
        }
        let rule = self.rule(namespace);
        let mut namespaces = self
            .inner
            .namespaces
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = namespaces.get(namespace)
            && current.rule != rule
        {
            tracing::info!(%namespace, ?rule, "cache rule changed; namespace memory rebuilt");
            let rebuilt = Namespace::new(rule, current.metrics.clone());
            namespaces.insert(namespace.to_string(), Arc::new(rebuilt));
        }
    }

    /// Refreshes the size gauges of every namespace until `stop`.
    async fn report_sizes(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(REPORT_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let namespaces: Vec<Arc<Namespace>> = self
                .inner
                .namespaces
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .cloned()
                .collect();
            for ns in namespaces {
                ns.report().await;
            }
        }
    }
}
