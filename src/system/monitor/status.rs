//! The status document: one picture of the system, built on demand from the registry,
//! every service instance's micro STATS, the streams and their consumers, the DLQ and
//! the coordinator lease. `sys.status` answers it as JSON; `switchyard status` renders
//! it; the monitor exports the same figures as gauges.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::Context as JetStream;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::integration::registry::{Health, RegistryEntry};
use crate::subjects::{BUCKET_COORD, BUCKET_REGISTRY, STREAM_DLQ, STREAMS};
use crate::system::coordinator::lease::{LEADER_KEY, LeaseValue};

/// How long an instance has to answer its STATS request.
const STATS_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// RFC 3339, when this document was built.
    pub time: String,
    /// The leading coordinator instance, if any.
    pub leader: Option<String>,
    pub services: BTreeMap<String, ServiceStatus>,
    pub streams: Vec<StreamStatus>,
    /// Messages in stream `DLQ`.
    pub dlq_depth: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub instances: Vec<InstanceStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub instance: String,
    pub version: String,
    pub host: String,
    pub health: Health,
    pub last_heartbeat: String,
    /// From the instance's micro STATS; `None` when it did not answer (or has no
    /// micro endpoints, like Switchyard's own members).
    pub requests: Option<u64>,
    pub errors: Option<u64>,
    /// Average handling time in milliseconds over the instance's life.
    pub average_ms: Option<f64>,
    /// The slowest of its operations' 99th percentile handling time over the last
    /// minute (the SDK reports it in each endpoint's STATS `data`).
    #[serde(default)]
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamStatus {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub consumers: Vec<ConsumerStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsumerStatus {
    pub name: String,
    /// Messages not yet delivered to it.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
    /// Delivered more than once and not yet acknowledged.
    pub redelivered: u64,
}

#[derive(Debug, Deserialize)]
struct MicroStats {
    #[serde(default)]
    endpoints: Vec<MicroEndpoint>,
}

#[derive(Debug, Deserialize)]
struct MicroEndpoint {
    #[serde(default)]
    num_requests: u64,
    #[serde(default)]
    num_errors: u64,
    #[serde(default)]
    processing_time: u64,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// Builds the document. Parts that cannot be read are left empty rather than failing
/// the whole picture: a monitor is most needed when something is broken.
pub async fn collect(client: &Client, js: &JetStream) -> Result<Status, Error> {
    let mut status = Status {
        time: crate::envelope::now_rfc3339(),
        ..Status::default()
    };
    let entries = registry_entries(js).await?;
    let stats = futures::future::join_all(entries.iter().map(|e| micro_stats(client, e))).await;
    for (entry, stats) in entries.into_iter().zip(stats) {
        let (requests, errors, average_ms, p99_ms) = match stats {
            Some(s) => {
                let requests: u64 = s.endpoints.iter().map(|e| e.num_requests).sum();
                let errors = s.endpoints.iter().map(|e| e.num_errors).sum();
                let nanos: u64 = s.endpoints.iter().map(|e| e.processing_time).sum();
                let average = (requests > 0).then(|| nanos as f64 / requests as f64 / 1e6);
                let p99 = s
                    .endpoints
                    .iter()
                    .filter_map(|e| e.data.as_ref()?.get("p99_ms")?.as_f64())
                    .reduce(f64::max);
                (Some(requests), Some(errors), average, p99)
            }
            None => (None, None, None, None),
        };
        status
            .services
            .entry(entry.name.clone())
            .or_default()
            .instances
            .push(InstanceStatus {
                instance: entry.instance,
                version: entry.version,
                host: entry.host,
                health: entry.health,
                last_heartbeat: entry.last_heartbeat,
                requests,
                errors,
                average_ms,
                p99_ms,
            });
    }
    for stream in STREAMS {
        if let Some(s) = stream_status(js, stream.name).await {
            if stream.name == STREAM_DLQ.name {
                status.dlq_depth = s.messages;
            }
            status.streams.push(s);
        }
    }
    status.leader = leader(js).await;
    Ok(status)
}

async fn registry_entries(js: &JetStream) -> Result<Vec<RegistryEntry>, Error> {
    let kv = js
        .get_key_value(BUCKET_REGISTRY)
        .await
        .map_err(|e| Error::nats("open bucket registry", e))?;
    let keys: Vec<String> = match kv.keys().await {
        Ok(keys) => keys.try_collect().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let mut entries = Vec::with_capacity(keys.len());
    for key in keys {
        if let Ok(Some(value)) = kv.get(&key).await
            && let Ok(entry) = RegistryEntry::from_json(&value)
        {
            entries.push(entry);
        }
    }
    entries.sort_by(|a, b| (&a.name, &a.instance).cmp(&(&b.name, &b.instance)));
    Ok(entries)
}

async fn micro_stats(client: &Client, entry: &RegistryEntry) -> Option<MicroStats> {
    if entry.endpoints.is_empty() {
        return None;
    }
    let subject = format!("$SRV.STATS.{}.{}", entry.name, entry.instance);
    let request = async_nats::Request::new().timeout(Some(STATS_TIMEOUT));
    let reply = client.send_request(subject, request).await.ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

async fn stream_status(js: &JetStream, name: &str) -> Option<StreamStatus> {
    let stream = js.get_stream(name).await.ok()?;
    let info = stream.get_info().await.ok()?;
    let mut consumers: Vec<ConsumerStatus> = stream
        .consumers()
        .filter_map(|c| async move { c.ok() })
        .map(|c| ConsumerStatus {
            name: c.name,
            pending: c.num_pending,
            ack_pending: c.num_ack_pending as u64,
            redelivered: c.num_redelivered as u64,
        })
        .collect()
        .await;
    consumers.sort_by(|a, b| a.name.cmp(&b.name));
    Some(StreamStatus {
        name: name.to_string(),
        messages: info.state.messages,
        bytes: info.state.bytes,
        consumers,
    })
}

async fn leader(js: &JetStream) -> Option<String> {
    let kv = js.get_key_value(BUCKET_COORD).await.ok()?;
    let value = kv.get(LEADER_KEY).await.ok()??;
    let lease: LeaseValue = serde_json::from_slice(&value).ok()?;
    (!lease.released).then_some(lease.instance)
}

/// The document as the table `switchyard status` prints.
pub fn render(status: &Status) -> String {
    let mut out = format!(
        "Switchyard status at {}\nleader: {}   DLQ depth: {}\n\nSERVICE              INSTANCE                              HEALTH     REQUESTS   ERRORS   AVG MS   P99 MS\n",
        status.time,
        status.leader.as_deref().unwrap_or("none"),
        status.dlq_depth
    );
    if status.services.is_empty() {
        out.push_str("(no registered services)\n");
    }
    for (name, service) in &status.services {
        for i in &service.instances {
            let dash = || "-".to_string();
            out.push_str(&format!(
                "{:<20} {:<37} {:<10} {:>8} {:>8} {:>8} {:>8}\n",
                name,
                i.instance,
                format!("{:?}", i.health).to_lowercase(),
                i.requests.map_or_else(dash, |v| v.to_string()),
                i.errors.map_or_else(dash, |v| v.to_string()),
                i.average_ms.map_or_else(dash, |v| format!("{v:.2}")),
                i.p99_ms.map_or_else(dash, |v| format!("{v:.2}")),
            ));
        }
    }
    out.push_str(
        "\nSTREAM     CONSUMER                  MESSAGES    PENDING  ACK PENDING  REDELIVERED\n",
    );
    for stream in &status.streams {
        out.push_str(&format!(
            "{:<10} {:<25} {:>8}\n",
            stream.name, "", stream.messages
        ));
        for c in &stream.consumers {
            out.push_str(&format!(
                "{:<10} {:<25} {:>8} {:>10} {:>12} {:>12}\n",
                "", c.name, "", c.pending, c.ack_pending, c.redelivered
            ));
        }
    }
    out
}
