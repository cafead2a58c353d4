//! Creates or updates every stream and KV bucket Switchyard needs. Idempotent: run at
//! every start; a setting changed in configuration (or here) updates the live stream.
//! Only the settings Switchyard manages are compared, so what the server fills in
//! itself never counts as a change.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::Context as JetStream;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use futures::TryStreamExt;

use crate::config::JetStreamConfig;
use crate::error::{Error, ErrorKind};
use crate::subjects::{self, BUCKETS, STREAMS, StreamName};

const DAY: Duration = Duration::from_secs(24 * 3600);
const MIB: i64 = 1024 * 1024;
/// How long an expiry marker stays in a bucket with per-key TTLs.
const LIMIT_MARKER_TTL: Duration = Duration::from_secs(300);

/// What provisioning did to one stream or bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created,
    /// Names of the settings that changed.
    Updated(Vec<&'static str>),
    Unchanged,
}

#[derive(Debug, Clone, Default)]
pub struct Provisioned {
    /// `(stream or "KV_<bucket>", change)` in provisioning order.
    pub changes: Vec<(String, Change)>,
}

/// The default limits of each stream; `jetstream.streams.<NAME>` in the file overrides.
fn default_stream(stream: StreamName) -> (RetentionPolicy, Duration, i64, &'static str) {
    use RetentionPolicy::{Limits, WorkQueue};
    match stream.name {
        "EVENTS" => (
            Limits,
            7 * DAY,
            1024 * MIB,
            "Event bus: events.<domain>.<name>",
        ),
        "DATA" => (Limits, 7 * DAY, 1024 * MIB, "Data flow and sync records"),
        "TASKS" => (
            WorkQueue,
            7 * DAY,
            512 * MIB,
            "Durable asynchronous task work items",
        ),
        "DLQ" => (
            Limits,
            30 * DAY,
            512 * MIB,
            "Dead letters: dlq.<original subject>",
        ),
        "DLQ_ADVISORIES" => (
            Limits,
            7 * DAY,
            64 * MIB,
            "Consumer advisories (max deliveries, terminated) for the DLQ",
        ),
        "ERRORS" => (Limits, 7 * DAY, 256 * MIB, "Error records per component"),
        "LOGS" => (Limits, 3 * DAY, 256 * MIB, "Logs per level and component"),
        _ => (Limits, 30 * DAY, 64 * MIB, "Alerts firing and resolving"),
    }
}

/// The stream configurations Switchyard wants.
pub fn stream_configs(config: &JetStreamConfig) -> Vec<stream::Config> {
    STREAMS
        .iter()
        .map(|&s| {
            let (retention, max_age, max_bytes, description) = default_stream(s);
            let limits = config.streams.get(s.name).copied().unwrap_or_default();
            stream::Config {
                name: s.name.to_string(),
                subjects: s.subjects.iter().map(|s| s.to_string()).collect(),
                retention,
                max_age: limits.max_age.unwrap_or(max_age),
                max_bytes: limits.max_bytes.unwrap_or(max_bytes),
                // Old data makes room for new: a full stream must not refuse publishes.
                discard: DiscardPolicy::Old,
                storage: StorageType::File,
                num_replicas: config.replicas,
                duplicate_window: Duration::from_secs(120),
                description: Some(description.to_string()),
                ..Default::default()
            }
        })
        .collect()
}

/// The KV bucket configurations Switchyard wants.
pub fn bucket_configs(config: &JetStreamConfig) -> Vec<kv::Config> {
    BUCKETS
        .iter()
        .map(|&bucket| {
            let (history, max_age, description) = match bucket {
                subjects::BUCKET_REGISTRY => (1, Duration::ZERO, "Service registry"),
                subjects::BUCKET_FLOWS => (10, Duration::ZERO, "Data flow rules"),
                subjects::BUCKET_CACHE => (1, Duration::ZERO, "Data cache storage"),
                subjects::BUCKET_TASKS => (1, 7 * DAY, "Durable task state"),
                subjects::BUCKET_POLICIES => (10, Duration::ZERO, "Per-service policies"),
                _ => (1, Duration::ZERO, "Coordinator leases and rules"),
            };
            kv::Config {
                bucket: bucket.to_string(),
                description: description.to_string(),
                history,
                max_age,
                storage: StorageType::File,
                num_replicas: config.replicas,
                // Registry entries carry a per-key TTL (three heartbeats); expiry leaves
                // a marker that watchers see, which is how expiries are reported. Cache
                // entries carry their namespace's TTL, and their expiry markers evict
                // them from every instance's memory.
                limit_markers: matches!(bucket, subjects::BUCKET_REGISTRY | subjects::BUCKET_CACHE)
                    .then_some(LIMIT_MARKER_TTL),
                ..Default::default()
            }
        })
        .collect()
}

/// Creates what is missing and updates what differs. Retries briefly while JetStream
/// is still starting (a freshly started server answers "JetStream not enabled" for a
/// moment).
pub async fn provision(js: &JetStream, config: &JetStreamConfig) -> Result<Provisioned, Error> {
    let mut delay = Duration::from_millis(50);
    for attempt in 1.. {
        match provision_once(js, config).await {
            Ok(done) => return Ok(done),
            Err(err) if attempt < 8 && err.kind().is_retryable() => {
                tracing::debug!(%err, attempt, "provisioning failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(err) => return Err(err),
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// The replicas to use: as configured, or (0) three on a cluster and one alone.
pub fn replicas(js: &JetStream, config: &JetStreamConfig) -> usize {
    match config.replicas {
        0 if js.client().server_info().cluster.is_some() => 3,
        0 => 1,
        n => n,
    }
}

async fn provision_once(js: &JetStream, config: &JetStreamConfig) -> Result<Provisioned, Error> {
    let config = &JetStreamConfig {
        replicas: replicas(js, config),
        ..config.clone()
    };
    let mut done = Provisioned::default();
    for wanted in stream_configs(config) {
        let change = ensure_stream(js, wanted.clone()).await?;
        done.changes.push((wanted.name, change));
    }
    for wanted in bucket_configs(config) {
        let name = format!("KV_{}", wanted.bucket);
        let change = ensure_bucket(js, wanted).await?;
        done.changes.push((name, change));
    }
    Ok(done)
}

async fn ensure_stream(js: &JetStream, wanted: stream::Config) -> Result<Change, Error> {
    let name = wanted.name.clone();
    let max_bytes = wanted.max_bytes;
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let current = existing
                .info()
                .await
                .map_err(|e| Error::nats(&format!("stream {name} info"), e))?
                .config
                .clone();
            let changed = stream_differences(&current, &wanted);
            if changed.is_empty() {
                return Ok(Change::Unchanged);
            }
            // Apply the managed settings over the current ones, keeping the rest.
            let update = stream::Config {
                subjects: wanted.subjects,
                max_age: wanted.max_age,
                max_bytes: wanted.max_bytes,
                discard: wanted.discard,
                num_replicas: wanted.num_replicas,
                duplicate_window: wanted.duplicate_window,
                description: wanted.description,
                ..current
            };
            js.update_stream(update)
                .await
                .map_err(|e| stream_error(&format!("update stream {name}"), &name, max_bytes, e))?;
            Ok(Change::Updated(changed))
        }
        Err(err) if is_not_found(&err) => {
            js.create_stream(wanted)
                .await
                .map_err(|e| stream_error(&format!("create stream {name}"), &name, max_bytes, e))?;
            Ok(Change::Created)
        }
        Err(err) => Err(Error::nats(&format!("look up stream {name}"), err)),
    }
}

/// Maps a refused create or update. The server reserves each stream's `max_bytes` up
/// front; when its store cannot hold them all it refuses with 10047, which no retry
/// fixes, so that one says what to change instead.
fn stream_error(
    what: &str,
    name: &str,
    max_bytes: i64,
    err: async_nats::jetstream::context::CreateStreamError,
) -> Error {
    use async_nats::jetstream::context::CreateStreamErrorKind;
    match err.kind() {
        CreateStreamErrorKind::JetStream(e)
            if e.error_code() == ErrorCode::STORAGE_RESOURCES_EXCEEDED =>
        {
            Error::new(
                ErrorKind::Permanent,
                format!(
                    "{what}: the server cannot reserve its max_bytes ({} MiB) on top of what \
                     its other streams reserve; lower jetstream.streams.{name}.max_bytes in \
                     the configuration, or give nats-server a larger jetstream \
                     max_file_store (nats/dev.conf sets one)",
                    max_bytes / MIB
                ),
            )
        }
        _ => Error::nats(what, err),
    }
}

fn stream_differences(current: &stream::Config, wanted: &stream::Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("subjects", current.subjects != wanted.subjects);
    check("retention", current.retention != wanted.retention);
    check("max_age", current.max_age != wanted.max_age);
    check("max_bytes", current.max_bytes != wanted.max_bytes);
    check("discard", current.discard != wanted.discard);
    check("num_replicas", current.num_replicas != wanted.num_replicas);
    check(
        "duplicate_window",
        current.duplicate_window != wanted.duplicate_window,
    );
    check("description", current.description != wanted.description);
    changed
}

async fn ensure_bucket(js: &JetStream, wanted: kv::Config) -> Result<Change, Error> {
    let stream_name = format!("KV_{}", wanted.bucket);
    let bucket = wanted.bucket.clone();
    match js.get_stream(&stream_name).await {
        Ok(mut existing) => {
            let current = existing
                .info()
                .await
                .map_err(|e| Error::nats(&format!("bucket {bucket} info"), e))?
                .config
                .clone();
            let mut changed = Vec::new();
            if current.max_messages_per_subject != wanted.history {
                changed.push("history");
            }
            if current.max_age != wanted.max_age {
                changed.push("max_age");
            }
            if current.num_replicas != wanted.num_replicas {
                changed.push("num_replicas");
            }
            if current.description.as_deref() != Some(wanted.description.as_str()) {
                changed.push("description");
            }
            if current.subject_delete_marker_ttl != wanted.limit_markers {
                changed.push("limit_markers");
            }
            if changed.is_empty() {
                return Ok(Change::Unchanged);
            }
            js.update_key_value(wanted)
                .await
                .map_err(|e| Error::nats(&format!("update bucket {bucket}"), e))?;
            Ok(Change::Updated(changed))
        }
        Err(err) if is_not_found(&err) => {
            js.create_key_value(wanted)
                .await
                .map_err(|e| Error::nats(&format!("create bucket {bucket}"), e))?;
            Ok(Change::Created)
        }
        Err(err) => Err(Error::nats(&format!("look up bucket {bucket}"), err)),
    }
}

fn is_not_found(err: &GetStreamError) -> bool {
    matches!(err.kind(), GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// Streams and buckets that should exist but do not (readiness): `"stream EVENTS"`,
/// `"bucket registry"`.
pub async fn missing(js: &JetStream) -> Result<Vec<String>, Error> {
    let present: HashSet<String> = js
        .stream_names()
        .try_collect()
        .await
        .map_err(|e| Error::nats("list streams", e))?;
    let streams = STREAMS
        .iter()
        .filter(|s| !present.contains(s.name))
        .map(|s| format!("stream {}", s.name));
    let buckets = BUCKETS
        .iter()
        .filter(|b| !present.contains(&format!("KV_{b}")))
        .map(|b| format!("bucket {b}"));
    Ok(streams.chain(buckets).collect())
}
