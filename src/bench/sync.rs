//! `switchyard bench sync`: data flow and sync against the thinnest hand-written
//! pipeline, on the same server, with the same records and the same target, in one
//! run.
//!
//! - The target is one in-process responder ("any subject whose responder replies").
//!   It notes when each record reaches it; latency is from the start of the source's
//!   publish to that moment, on one clock.
//! - The hand-written pipeline: a stream like `DATA` (file storage), JetStream publish
//!   with ack, one explicit-ack pull consumer, one request to the target per record
//!   (at most [`IN_FLIGHT`] at once), then the ack.
//! - Switchyard: the same publishes to `data.in.<source>`, a flow rule routing them to
//!   the target keyed by a field, and the `flow` and `sync` components as `up` runs
//!   them (lanes = [`IN_FLIGHT`]), statuses and confirmations included.
//!
//! Both get the same publishers for the same window; throughput counts the records
//! that reached the target within it. Then the publishers stop and the bench waits for
//! every published record to arrive, so a loss shows as `delivered < published`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde::Serialize;
use std::sync::Mutex;
use tokio::sync::Semaphore;

use super::report::{MachineInfo, RunInfo, micros, new_histogram};
use super::{Names, Timing};
use crate::admin::Readiness;
use crate::component::Component;
use crate::component::supervisor::Supervisor;
use crate::config::Config;
use crate::data::flow::FlowComponent;
use crate::data::sync::SyncComponent;
use crate::error::Error;
use crate::subjects::headers as h;

pub const STEPS: u64 = 3;
/// Deliveries in flight at once, for both pipelines.
const IN_FLIGHT: usize = 64;
/// Concurrent publishers, each awaiting its acks.
const PUBLISHERS: usize = 32;
const RECORD_BYTES: usize = 128;
const KEYS: u64 = 1024;
const TS: &str = "Bench-Ts-Ns";
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Records published and not yet at the target, at most. Publishers wait for room,
/// so both pipelines run at what they sustain instead of building an unbounded
/// backlog (whose drain would land outside the window), and latency is comparable.
const MAX_BACKLOG: usize = 1024;

#[derive(Debug, Serialize)]
pub struct SyncRow {
    pub path: &'static str,
    pub records_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub published: u64,
    pub delivered: u64,
    /// Records/s relative to the hand-written pipeline.
    pub ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct SyncReport {
    pub run: RunInfo,
    pub rows: Vec<SyncRow>,
    pub cache: Option<crate::bench::cache::CacheFigures>,
}

/// What the target saw: arrivals in the window and their latencies.
struct Arrivals {
    epoch: Instant,
    window: Mutex<Option<(Instant, Instant)>>,
    in_window: AtomicU64,
    total: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    /// One permit per record that may still be published: taken by the publisher,
    /// given back by the target.
    room: Arc<Semaphore>,
}

pub async fn bench(
    config: &Config,
    timing: Timing,
    url: &str,
    server: String,
    progress: &ProgressBar,
) -> Result<SyncReport, Error> {
    crate::observability::metrics::install();
    let caller = crate::nats::connect(url, "switchyard-bench").await?;
    let run = RunInfo::new(
        server,
        timing,
        MachineInfo::collect(&caller.server_info().version),
    );
    let js = jetstream::new(caller.clone());
    let mut jetstream_config = config.jetstream.clone();
    jetstream_config.replicas = jetstream_config.replicas.max(1);
    crate::nats::provision(&js, &jetstream_config).await?;
    let names = Names::new();
    let id = names.stream.trim_start_matches("BENCH_").to_lowercase();
    let target_subject = format!("bench.{id}.target");
    let target = crate::nats::connect(url, "switchyard-bench-target").await?;

    progress.set_message("hand-written pipeline");
    let arrivals = serve_target(&target, &target_subject).await?;
    let thin_subject = format!("bench.{id}.thin.p");
    let thin = thin_pipeline(
        url,
        &js,
        &names.stream,
        &format!("bench.{id}.thin.>"),
        &target_subject,
    )
    .await?;
    let base = measure(&caller, &thin_subject, timing, arrivals).await?;
    thin.abort();
    let _ = js.delete_stream(&names.stream).await;
    progress.inc(1);

    progress.set_message("flow and sync");
    let arrivals = serve_target(&target, &target_subject).await?;
    let source = format!("bench{id}");
    let rule = serde_json::json!({
        "name": source,
        "match": {"subject": format!("data.in.{source}.>")},
        "targets": [{"name": source, "subject": target_subject}],
        "key": {"field": "/k"},
    });
    let policies = js
        .get_key_value(crate::subjects::BUCKET_POLICIES)
        .await
        .map_err(|e| Error::nats("open policies", e))?;
    policies
        .put(
            format!("sync.{source}"),
            format!("{{\"max_in_flight\":{IN_FLIGHT}}}").into(),
        )
        .await
        .map_err(|e| Error::nats("write the bench policy", e))?;
    let flows = js
        .get_key_value(crate::subjects::BUCKET_FLOWS)
        .await
        .map_err(|e| Error::nats("open flows", e))?;
    flows
        .put(&source, rule.to_string().into())
        .await
        .map_err(|e| Error::nats("write the bench rule", e))?;
    let components: Vec<Box<dyn Component>> =
        vec![Box::new(FlowComponent), Box::new(SyncComponent::default())];
    let client = crate::nats::connect(url, "switchyard-bench-sync").await?;
    let supervisor =
        Supervisor::start(client, components, Readiness::default(), jetstream_config).await?;
    let ours = measure(&caller, &format!("data.in.{source}.p"), timing, arrivals).await;
    supervisor.stop(Duration::from_secs(5)).await;
    let _ = flows.delete(&source).await;
    let _ = policies.delete(format!("sync.{source}")).await;
    progress.inc(1);
    let ours = ours?;

    progress.set_message("cache hits");
    let cache = match crate::bench::cache::measure(&caller, progress).await {
        Ok(figures) => Some(figures),
        Err(err) => {
            tracing::warn!(%err, "cache figures not measured");
            None
        }
    };
    progress.inc(1);
    let baseline = base.records_per_sec;
    let mut rows = vec![
        row("hand-written pipeline", base),
        row("switchyard flow + sync", ours),
    ];
    for row in &mut rows {
        row.ratio = if baseline > 0.0 {
            row.records_per_sec / baseline
        } else {
            0.0
        };
    }
    Ok(SyncReport { run, rows, cache })
}

struct Measured {
    records_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    published: u64,
    delivered: u64,
}

fn row(path: &'static str, m: Measured) -> SyncRow {
    SyncRow {
        path,
        records_per_sec: m.records_per_sec,
        p50_us: m.p50_us,
        p99_us: m.p99_us,
        published: m.published,
        delivered: m.delivered,
        ratio: 1.0,
    }
}

/// The target: answers every request at once and notes its arrival.
async fn serve_target(client: &Client, subject: &str) -> Result<Arc<Arrivals>, Error> {
    let arrivals = Arc::new(Arrivals {
        epoch: Instant::now(),
        window: Mutex::new(None),
        in_window: AtomicU64::new(0),
        total: AtomicU64::new(0),
        latency: Mutex::new(new_histogram()?),
        room: Arc::new(Semaphore::new(MAX_BACKLOG)),
    });
    let mut requests = client
        .subscribe(subject.to_string())
        .await
        .map_err(|e| Error::nats("subscribe the bench target", e))?;
    let (client, seen) = (client.clone(), arrivals.clone());
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let now = Instant::now();
            seen.total.fetch_add(1, Ordering::Relaxed);
            seen.room.add_permits(1);
            let window = seen.window.lock().ok().and_then(|w| *w);
            if let Some((from, to)) = window
                && now >= from
                && now < to
            {
                seen.in_window.fetch_add(1, Ordering::Relaxed);
                let sent = request
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(TS))
                    .and_then(|v| v.as_str().parse::<u64>().ok());
                if let (Some(sent), Ok(mut histogram)) = (sent, seen.latency.lock()) {
                    let at = now.duration_since(seen.epoch);
                    histogram
                        .saturating_record(micros(at.saturating_sub(Duration::from_nanos(sent))));
                }
            }
            if let Some(reply) = request.reply {
                let _ = client.publish(reply, Bytes::from_static(b"ok")).await;
            }
        }
    });
    Ok(arrivals)
}

/// The hand-written pipeline: stream, explicit-ack pull consumer, one request per
/// record with at most [`IN_FLIGHT`] in flight, ack after the answer.
async fn thin_pipeline(
    url: &str,
    js: &jetstream::Context,
    stream_name: &str,
    subjects: &str,
    target: &str,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let stream = js
        .create_stream(stream::Config {
            name: stream_name.to_string(),
            subjects: vec![subjects.to_string()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats("create the bench stream", e))?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("thin".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats("create the bench consumer", e))?;
    let client = crate::nats::connect(url, "switchyard-bench-thin").await?;
    let target = target.to_string();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(IN_FLIGHT)
        .messages()
        .await
        .map_err(|e| Error::nats("pull the bench consumer", e))?;
    Ok(tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        while let Some(Ok(message)) = messages.next().await {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move {
                let headers = message.headers.clone().unwrap_or_default();
                let answered = client
                    .request_with_headers(target, headers, message.payload.clone())
                    .await;
                if answered.is_ok() {
                    let _ = message.ack().await;
                }
                drop(permit);
            });
        }
    }))
}

/// Publishes from [`PUBLISHERS`] tasks for the warm-up and the window, then waits
/// until every published record has reached the target.
async fn measure(
    caller: &Client,
    subject: &str,
    timing: Timing,
    arrivals: Arc<Arrivals>,
) -> Result<Measured, Error> {
    let js = jetstream::new(caller.clone());
    // One record through first: the window starts with the pipeline running, not
    // with its consumers still being created.
    let probe = js
        .publish(subject.to_string(), record(0))
        .await
        .map_err(|e| Error::nats("publish the probe record", e))?;
    probe
        .await
        .map_err(|e| Error::nats("store the probe record", e))?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while arrivals.total.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            return Err(Error::timeout(format!(
                "no record reached the target through {subject}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let probes = arrivals.total.load(Ordering::Relaxed);
    let from = Instant::now() + timing.warmup;
    let to = from + timing.duration;
    if let Ok(mut window) = arrivals.window.lock() {
        *window = Some((from, to));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS as u64 {
        let (js, subject, stop, published, arrivals) = (
            js.clone(),
            subject.to_string(),
            stop.clone(),
            published.clone(),
            arrivals.clone(),
        );
        publishers.push(tokio::spawn(async move {
            let mut n = p;
            while !stop.load(Ordering::Relaxed) {
                match arrivals.room.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => break,
                }
                let mut headers = HeaderMap::new();
                headers.insert(h::CE_ID, format!("{}", uuid::Uuid::now_v7()));
                headers.insert(h::CE_DATACONTENTTYPE, "application/json");
                headers.insert(TS, (arrivals.epoch.elapsed().as_nanos() as u64).to_string());
                let body = record(n % KEYS);
                let stored = match js
                    .publish_with_headers(subject.clone(), headers, body)
                    .await
                {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if stored {
                    published.fetch_add(1, Ordering::Relaxed);
                } else {
                    arrivals.room.add_permits(1);
                }
                n += PUBLISHERS as u64;
            }
        }));
    }
    tokio::time::sleep_until(to.into()).await;
    stop.store(true, Ordering::Relaxed);
    for publisher in publishers {
        let _ = publisher.await;
    }
    let published = published.load(Ordering::Relaxed);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let arrived = || {
        arrivals
            .total
            .load(Ordering::Relaxed)
            .saturating_sub(probes)
    };
    while arrived() < published && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let histogram = arrivals
        .latency
        .lock()
        .map_err(|_| Error::internal("latency lock"))?;
    Ok(Measured {
        records_per_sec: arrivals.in_window.load(Ordering::Relaxed) as f64
            / timing.duration.as_secs_f64(),
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        published,
        delivered: arrived(),
    })
}

/// A JSON record of [`RECORD_BYTES`] bytes with key field `k`.
fn record(key: u64) -> Bytes {
    let head = format!("{{\"k\":\"k{key}\",\"pad\":\"");
    let pad = RECORD_BYTES.saturating_sub(head.len() + 2);
    Bytes::from(format!("{head}{}\"}}", "x".repeat(pad)))
}

pub fn render_table(report: &SyncReport) -> String {
    let mut out = format!(
        "switchyard bench sync: {} records of {RECORD_BYTES} B, {PUBLISHERS} publishers, {IN_FLIGHT} deliveries in flight, {} ms window\n\n",
        report.run.server, report.run.duration_ms
    );
    out.push_str(&format!(
        "{:<24} {:>12} {:>7} {:>10} {:>10} {:>10} {:>10}\n",
        "path", "records/s", "ratio", "p50 µs", "p99 µs", "published", "delivered"
    ));
    for r in &report.rows {
        out.push_str(&format!(
            "{:<24} {:>12.0} {:>7.2} {:>10} {:>10} {:>10} {:>10}\n",
            r.path, r.records_per_sec, r.ratio, r.p50_us, r.p99_us, r.published, r.delivered
        ));
    }
    if let Some(cache) = &report.cache {
        let hit = &cache.get_local_hit;
        out.push_str(&format!(
            "\nin-process cache hit (get_local): median {} ns, p99 {} ns over {} calls (target: median <= 1000 ns)\n",
            hit.median_ns, hit.p99_ns, hit.calls
        ));
    }
    out
}
