//! What the fault suites (`tests/chaos_*.rs`, `scripts/chaos <name>`) share: a
//! three-node cluster whose nodes can be killed and restarted, a data target that
//! records every delivery, publishing that retries until acknowledged, process memory
//! from `/proc`, and the one-line figure summary each suite prints for RELIABILITY.md.
//! Included with `#[path = "common/chaos.rs"] mod chaos;` next to `mod common;`.
#![allow(dead_code)] // each suite uses a different part

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt;
use switchyard::nats::{EmbeddedServer, ServerOptions};
use switchyard::subjects::headers as h;

use crate::common::free_addr;

/// Prints the suite's figures as one line, `chaos <suite>: key=value …`, on stderr
/// (shown by `--nocapture`, which `scripts/chaos` passes) and returns it.
pub fn figures(suite: &str, pairs: &[(&str, String)]) -> String {
    let line = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let line = format!("chaos {suite}: {line}");
    eprintln!("{line}");
    line
}

/// Milliseconds with one decimal, for figures.
pub fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// The resident memory of process `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Median and maximum of `samples` (sorted in place); zero when empty.
pub fn median_max(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let median = samples.get(samples.len() / 2).copied().unwrap_or_default();
    let max = samples.last().copied().unwrap_or_default();
    (median, max)
}

/// Three nats-server nodes on fixed loopback ports (so a killed node comes back where
/// the others and the clients look for it), with their stores under `dir`.
pub struct Cluster {
    pub nodes: Vec<EmbeddedServer>,
    pub url: String,
}

impl Cluster {
    pub fn start(dir: &std::path::Path) -> Cluster {
        let clients: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
        let routes: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
        let route_urls: Vec<String> = routes.iter().map(|r| format!("nats-route://{r}")).collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let node = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&node).unwrap();
            let config = node.join("node.conf");
            std::fs::write(
                &config,
                format!(
                    "server_name: n{i}\nmax_payload: 1MB\n\
                     jetstream {{ max_file_store: 16GB, max_memory_store: 256MB }}\n\
                     cluster {{ name: chaos, listen: {}, routes: [{}] }}\n",
                    routes[i],
                    route_urls.join(", ")
                ),
            )
            .unwrap();
            nodes.push(
                EmbeddedServer::start(ServerOptions {
                    listen: clients[i],
                    data_dir: node.join("store"),
                    config: Some(config),
                    binary: None,
                })
                .expect("a cluster node (run scripts/setup)"),
            );
        }
        let url = clients
            .iter()
            .map(|c| format!("nats://{c}"))
            .collect::<Vec<_>>()
            .join(",");
        Cluster { nodes, url }
    }

    /// Kills node `i` with SIGKILL, as a crash would.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its port and store (blocking: call it where blocking
    /// is allowed).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i]
            .restart()
            .unwrap_or_else(|e| panic!("restart node n{i}: {e}"));
    }
}

/// A data target that answers every delivery and records, per
/// `Switchyard-Delivery-Id`, how often it came: idempotent by id, it applies each once.
#[derive(Clone, Default)]
pub struct Target {
    seen: Arc<Mutex<HashMap<String, u32>>>,
    /// Per key, the `n` of each record in the order first applied.
    by_key: Arc<Mutex<HashMap<String, Vec<u64>>>>,
}

impl Target {
    /// Answers on `subject` (core NATS subscription on `client`).
    pub async fn serve(client: &async_nats::Client, subject: &str) -> Target {
        let target = Target::default();
        let mut sub = client.subscribe(subject.to_string()).await.unwrap();
        let (client, state) = (client.clone(), target.clone());
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let headers = msg.headers.clone().unwrap_or_default();
                let Some(id) = headers.get(h::DELIVERY_ID).map(|v| v.to_string()) else {
                    continue;
                };
                let record: serde_json::Value =
                    serde_json::from_slice(&msg.payload).unwrap_or_default();
                let first = {
                    let mut seen = state.seen.lock().unwrap();
                    let count = seen.entry(id).or_default();
                    *count += 1;
                    *count == 1
                };
                if first {
                    let key = record["k"].as_str().unwrap_or_default().to_string();
                    let n = record["n"].as_u64().unwrap_or_default();
                    state.by_key.lock().unwrap().entry(key).or_default().push(n);
                }
                if let Some(reply) = msg.reply {
                    let _ = client.publish(reply, "ok".into()).await;
                }
            }
        });
        target
    }

    /// Every delivery id seen and how often.
    pub fn seen(&self) -> HashMap<String, u32> {
        self.seen.lock().unwrap().clone()
    }

    pub fn applied(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Deliveries beyond the first of each id (at-least-once duplicates).
    pub fn redeliveries(&self) -> u64 {
        self.seen
            .lock()
            .unwrap()
            .values()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum()
    }

    /// Keys whose records were first applied out of publishing order.
    pub fn keys_out_of_order(&self) -> usize {
        self.by_key
            .lock()
            .unwrap()
            .values()
            .filter(|ns| ns.windows(2).any(|w| w[0] >= w[1]))
            .count()
    }
}

/// A flow rule sending `data.in.<source>.>` to the subject target `target`, keyed by
/// field `/k`.
pub fn rule(name: &str, source: &str, target: &str, subject: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "match": {"subject": format!("data.in.{source}.>")},
        "targets": [{"name": target, "subject": subject}],
        "key": {"field": "/k"},
    })
}

/// Writes `value` as JSON under `key` in KV `bucket`, retrying while the bucket is
/// briefly unavailable (a leader election).
pub async fn kv_put(
    client: &async_nats::Client,
    bucket: &str,
    key: &str,
    value: serde_json::Value,
) {
    let js = jetstream::new(client.clone());
    let bytes = serde_json::to_vec(&value).unwrap();
    for attempt in 0.. {
        let put = async {
            let kv = js.get_key_value(bucket).await.map_err(|e| e.to_string())?;
            kv.put(key, bytes.clone().into())
                .await
                .map_err(|e| e.to_string())
        };
        match put.await {
            Ok(_) => return,
            Err(err) if attempt < 100 => {
                eprintln!("kv put {bucket}/{key}: {err}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("kv put {bucket}/{key}: {err}"),
        }
    }
}

/// Publishes record `n` of key `k` to `data.in.<source>.x` with JetStream, with
/// `Nats-Msg-Id` = the record id so a retried publish is stored once; one attempt.
pub async fn publish_record(
    js: &jetstream::Context,
    source: &str,
    id: &str,
    k: &str,
    n: u64,
) -> Result<(), String> {
    let mut headers = HeaderMap::new();
    headers.insert(h::CE_ID, id);
    headers.insert(h::NATS_MSG_ID, id);
    headers.insert(h::CE_DATACONTENTTYPE, "application/json");
    let payload = serde_json::to_vec(&serde_json::json!({"k": k, "n": n})).unwrap();
    js.publish_with_headers(format!("data.in.{source}.x"), headers, payload.into())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
