//! Following a KV bucket in memory: load what it holds, then apply every change as it
//! happens. The watch is recreated from the last revision it saw, with backoff, when it
//! ends, fails, or the connection was re-established (a watch can hang silently across
//! a server restart, and recreating in a tight loop would leak server consumers). Used
//! by the registry view and the gateway's policies.

use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::kv::{Entry, Store};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// Delays between attempts to follow again, and how often a follower checks whether the
/// connection was re-established (shared by every follower of a stream, e.g. the
/// cache's invalidation consumer).
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);
pub(crate) const RECONNECT_CHECK: Duration = Duration::from_secs(1);

/// Applies the current value of every key and returns the revision to follow from.
/// The stream position is read first, then the keys: whatever changes while we read is
/// replayed by [`follow`] from that position, so nothing falls in between (a key seen
/// twice is applied twice, in order, so `apply` must be idempotent; a plain map is).
pub async fn load(kv: &Store, mut apply: impl FnMut(Entry)) -> Result<u64, Error> {
    let bucket = kv.name.as_str();
    let last_revision = kv
        .status()
        .await
        .map_err(|e| Error::nats(&format!("status of bucket {bucket}"), e))?
        .info
        .state
        .last_sequence;
    let mut keys = kv
        .keys()
        .await
        .map_err(|e| Error::nats(&format!("list bucket {bucket}"), e))?;
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| Error::nats(&format!("list bucket {bucket}"), e))?;
        if let Ok(Some(entry)) = kv.entry(key).await {
            apply(entry);
        }
    }
    Ok(last_revision)
}

/// Follows the bucket from `last_revision` (exclusive) until `stop`, calling `apply` for
/// every put, delete and purge in order.
pub async fn follow(
    kv: Store,
    client: Client,
    mut last_revision: u64,
    stop: CancellationToken,
    mut apply: impl FnMut(Entry) + Send,
) {
    let bucket = kv.name.clone();
    let mut backoff = BACKOFF_MIN;
    loop {
        let connects_at_start = connects(&client);
        match kv.watch_all_from_revision(last_revision + 1).await {
            Err(err) => tracing::debug!(%err, %bucket, "KV watch failed; retrying"),
            Ok(mut watch) => {
                let mut check = tokio::time::interval(RECONNECT_CHECK);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        item = watch.next() => match item {
                            Some(Ok(entry)) => {
                                backoff = BACKOFF_MIN;
                                last_revision = last_revision.max(entry.revision);
                                apply(entry);
                            }
                            Some(Err(err)) => {
                                tracing::debug!(%err, %bucket, "KV watch error; recreating");
                                break;
                            }
                            None => break,
                        },
                        _ = check.tick() => {
                            // A new connection means the server may have restarted: the
                            // old watch's consumer may be gone without the stream ending.
                            if connects(&client) != connects_at_start {
                                tracing::debug!(%bucket, "reconnected; recreating KV watch");
                                break;
                            }
                        }
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

/// How many times the client has connected: a change means the server may have
/// restarted and a follower's consumer may be gone without its stream ending.
pub(crate) fn connects(client: &Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}
