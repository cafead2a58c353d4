//! Fault suite `cluster-node-kill` (`scripts/chaos cluster-node-kill`): a three-node
//! cluster, flow and sync in two `switchyard run` processes, records published to
//! `data.in.chaos.*` at a steady rate and routed to a target that records every
//! delivery. Every ~10 s for 60 s one node is killed with SIGKILL and started again a
//! few seconds later (two of three stay up: the cluster keeps its quorum).
//!
//! Publishers retry a failed publish with the same `Nats-Msg-Id` (stored once) and count
//! a record as published only once it is acknowledged. What must hold: every
//! acknowledged record reached the target (zero lost), nothing reached it that was not
//! published (zero unexpected), and the target, idempotent by delivery id, applied each
//! record once; redeliveries (allowed: at least once) are reported.

#[path = "common/chaos.rs"]
mod chaos;
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use switchyard::config::JetStreamConfig;
use tokio_util::sync::CancellationToken;

use chaos::{Cluster, Target, figures, kv_put, ms, publish_record, rule};
use common::{Process, free_addr, http_get, until};

const WAIT: Duration = Duration::from_secs(60);
/// How long records are published and nodes killed.
const LOAD: Duration = Duration::from_secs(60);
/// A node is killed every this long, starting 5 s into the load…
const KILL_EVERY: Duration = Duration::from_secs(10);
/// …and started again this long after.
const DOWN_FOR: Duration = Duration::from_secs(3);
/// Publishers, each with its own keys (so each key's records have one order).
const PUBLISHERS: u64 = 4;
/// Pause between one publisher's records: 4 × 25/s = 100 records/s offered.
const PACE: Duration = Duration::from_millis(40);
/// How long, at most, every acknowledged record may take to arrive after the load.
const DRAIN: Duration = Duration::from_secs(180);

/// What the publishers did: ids attempted and ids acknowledged.
#[derive(Default)]
struct Published {
    attempted: Mutex<BTreeSet<String>>,
    acked: Mutex<BTreeSet<String>>,
    retries: AtomicU64,
    /// Longest time from a record's first attempt to its ack, in ms.
    max_stall_ms: AtomicU64,
}

/// `switchyard run flow sync` against the cluster, its admin endpoint on a free port.
fn run_flow_sync(url: &str, dir: &std::path::Path) -> (Process, std::net::SocketAddr) {
    let admin = free_addr();
    let process = Process::spawn(
        &[
            "run",
            "flow",
            "sync",
            "--nats",
            url,
            "--admin",
            &admin.to_string(),
        ],
        dir,
    );
    (process, admin)
}

async fn publisher(
    js: jetstream::Context,
    p: u64,
    published: Arc<Published>,
    stop: CancellationToken,
) {
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !stop.is_cancelled() {
        pace.tick().await;
        let id = format!("p{p}-{n}");
        let key = format!("p{p}-k{}", n % 4);
        published.attempted.lock().unwrap().insert(id.clone());
        let started = Instant::now();
        // Until acknowledged: the same id each time, so the stream stores it once.
        let mut failures = 0u32;
        while let Err(err) = publish_record(&js, "chaos", &id, &key, n).await {
            failures += 1;
            published.retries.fetch_add(1, Ordering::Relaxed);
            assert!(
                failures < 600,
                "record {id} not acknowledged after {failures} attempts: {err}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let stall = started.elapsed().as_millis() as u64;
        published.max_stall_ms.fetch_max(stall, Ordering::Relaxed);
        published.acked.lock().unwrap().insert(id);
        n += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_kill() {
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path());
    let client = switchyard::nats::connect(&cluster.url, "chaos-cluster")
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    until(
        "the cluster elects a JetStream meta leader",
        WAIT,
        || async { js.query_account().await.ok() },
    )
    .await;
    // Streams and buckets with three replicas (automatic on a cluster), before the rule
    // and the target's policy go in.
    until("streams and buckets provisioned", WAIT, || async {
        switchyard::nats::provision(&js, &JetStreamConfig::default())
            .await
            .ok()
    })
    .await;
    // Deliveries fail while a node is down (the target's connection moves): many
    // attempts, short waits, so nothing is dead-lettered for a kill.
    kv_put(
        &client,
        "policies",
        "sync.chaos",
        serde_json::json!({"max_deliver": 1000, "backoff_ms": [100, 500, 1000],
                           "timeout_ms": 2000, "ack_wait_ms": 5000}),
    )
    .await;
    kv_put(
        &client,
        "flows",
        "chaos",
        rule("chaos", "chaos", "chaos", "chaos.target"),
    )
    .await;
    let target = Target::serve(&client, "chaos.target").await;

    let instances: Vec<_> = (0..2)
        .map(|_| run_flow_sync(&cluster.url, dir.path()))
        .collect();
    for (_, admin) in &instances {
        let admin = *admin;
        until("a flow+sync instance is ready", WAIT, || async move {
            http_get(admin, "/readyz").filter(|(code, _)| *code == 200)
        })
        .await;
    }
    // The pipeline works end to end before the faults start.
    publish_record(&js, "chaos", "warmup", "warmup", 0)
        .await
        .unwrap();
    until("the warm-up record delivered", WAIT, || async {
        target.seen().contains_key("warmup").then_some(())
    })
    .await;

    let published = Arc::new(Published::default());
    let stop = CancellationToken::new();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| tokio::spawn(publisher(js.clone(), p, published.clone(), stop.clone())))
        .collect();

    let load_started = Instant::now();
    let mut kills = 0;
    let mut restart_times = Vec::new();
    let mut next_kill = load_started + KILL_EVERY / 2;
    while next_kill + DOWN_FOR < load_started + LOAD {
        tokio::time::sleep_until(next_kill.into()).await;
        let node = kills % 3;
        tokio::task::block_in_place(|| cluster.kill(node));
        kills += 1;
        eprintln!(
            "killed n{node} at {:.1}s; acked so far {}",
            load_started.elapsed().as_secs_f64(),
            published.acked.lock().unwrap().len()
        );
        tokio::time::sleep(DOWN_FOR).await;
        let restarting = Instant::now();
        tokio::task::block_in_place(|| cluster.restart(node));
        restart_times.push(restarting.elapsed());
        next_kill += KILL_EVERY;
    }
    tokio::time::sleep_until((load_started + LOAD).into()).await;
    stop.cancel();
    for publisher in publishers {
        tokio::time::timeout(WAIT * 2, publisher)
            .await
            .expect("a publisher finishes its last record")
            .expect("a publisher does not fail");
    }
    let load = load_started.elapsed();
    let acked = published.acked.lock().unwrap().clone();
    let attempted = published.attempted.lock().unwrap().clone();

    let drain_started = Instant::now();
    let all_delivered = common::eventually_async(DRAIN, || async {
        let seen = target.seen();
        acked.iter().all(|id| seen.contains_key(id)).then_some(())
    })
    .await
    .is_some();
    let drain = drain_started.elapsed();
    let seen = target.seen();
    let lost: Vec<&String> = acked.iter().filter(|id| !seen.contains_key(*id)).collect();
    let unexpected: Vec<&String> = seen
        .keys()
        .filter(|id| *id != "warmup" && !attempted.contains(*id))
        .collect();
    let alive = instances
        .iter()
        .filter(|(p, _)| common::alive(p.pid()))
        .count();
    let (_, max_restart) = chaos::median_max(&mut restart_times);
    figures(
        "cluster-node-kill",
        &[
            ("records_acked", acked.len().to_string()),
            (
                "rate",
                format!("{:.0}/s", acked.len() as f64 / load.as_secs_f64()),
            ),
            ("kills", kills.to_string()),
            (
                "publish_retries",
                published.retries.load(Ordering::Relaxed).to_string(),
            ),
            (
                "max_publish_stall",
                format!("{}ms", published.max_stall_ms.load(Ordering::Relaxed)),
            ),
            ("max_node_restart", ms(max_restart)),
            ("lost", lost.len().to_string()),
            ("unexpected", unexpected.len().to_string()),
            ("applied_once", (seen.len() - 1).to_string()),
            ("redeliveries", target.redeliveries().to_string()),
            ("keys_out_of_order", target.keys_out_of_order().to_string()),
            ("drain_after_load", ms(drain)),
            ("instances_alive", alive.to_string()),
            ("wall", format!("{:.0}s", began.elapsed().as_secs_f64())),
        ],
    );
    assert!(kills >= 5, "a node killed every ~10 s for 60 s: {kills}");
    assert!(!acked.is_empty(), "records were published");
    assert_eq!(
        acked, attempted,
        "every attempted record ends acknowledged (publishers retry)"
    );
    assert!(
        all_delivered && lost.is_empty(),
        "{} acknowledged records never reached the target: {:?}",
        lost.len(),
        lost.iter().take(20).collect::<Vec<_>>()
    );
    assert!(
        unexpected.is_empty(),
        "unexpected at the target: {unexpected:?}"
    );
    assert_eq!(
        target.keys_out_of_order(),
        0,
        "each key's records applied in publishing order"
    );
    assert_eq!(alive, 2, "both switchyard instances survive the node kills");
}
