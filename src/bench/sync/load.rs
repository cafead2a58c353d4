//! The load both pipelines of `bench sync` get, the target they deliver to, and the
//! hand-written pipeline Switchyard is compared with.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use super::super::Timing;
use super::super::cpu::{CpuMeter, CpuPerUnit};
use super::super::report::{micros, new_histogram};
use crate::error::Error;
use crate::subjects::headers as h;

/// Deliveries in flight at once, for both pipelines.
pub const IN_FLIGHT: usize = 64;
/// Concurrent publishers, each awaiting its acks.
pub const PUBLISHERS: usize = 32;
pub const RECORD_BYTES: usize = 128;
const KEYS: u64 = 1024;
const TS: &str = "Bench-Ts-Ns";
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Records published and not yet at the target, at most. Publishers wait for room,
/// so both pipelines run at what they sustain instead of building an unbounded
/// backlog (whose drain would land outside the window), and latency is comparable.
const MAX_BACKLOG: usize = 1024;

/// What the target saw: arrivals in the window and their latencies.
pub struct Arrivals {
    epoch: Instant,
    window: Mutex<Option<(Instant, Instant)>>,
    in_window: AtomicU64,
    total: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    /// One permit per record that may still be published: taken by the publisher,
    /// given back by the target.
    room: Arc<Semaphore>,
}

pub struct Measured {
    pub records_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub published: u64,
    pub delivered: u64,
    /// CPU per record that reached the target within the window.
    pub cpu: CpuPerUnit,
}

/// The target: answers every request at once and notes its arrival.
pub async fn serve_target(client: &Client, subject: &str) -> Result<Arc<Arrivals>, Error> {
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
pub async fn thin_pipeline(
    url: &str,
    js: &jetstream::Context,
    stream_name: &str,
    subjects: &str,
    target: &str,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let client = crate::nats::connect(url, "switchyard-bench-thin").await?;
    let stream = bench_stream(stream_name, subjects);
    let target = target.to_string();
    super::super::thin::consume(js, stream, IN_FLIGHT, move |message| {
        let (client, target) = (client.clone(), target.clone());
        async move {
            let headers = message.headers.clone().unwrap_or_default();
            let answered = client
                .request_with_headers(target, headers, message.payload.clone())
                .await;
            if answered.is_ok() {
                let _ = message.ack().await;
            }
        }
    })
    .await
}

/// The stream both hand-written pipelines read: like `DATA`, file storage.
pub fn bench_stream(name: &str, subjects: &str) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        subjects: vec![subjects.to_string()],
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// Publishes from [`PUBLISHERS`] tasks for the warm-up and the window, then waits
/// until every published record has reached the target.
pub async fn measure(
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
    tokio::time::sleep_until(from.into()).await;
    let cpu_from = timing.cpu.sample();
    tokio::time::sleep_until(to.into()).await;
    let cpu_to = timing.cpu.sample();
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
    let in_window = arrivals.in_window.load(Ordering::Relaxed);
    Ok(Measured {
        records_per_sec: in_window as f64 / timing.duration.as_secs_f64(),
        cpu: CpuMeter::per_unit(cpu_from, cpu_to, in_window),
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
