//! The load both task pipelines of `bench tasks` get, how completions are counted,
//! and the hand-written work queue Switchyard's tasks are compared with.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::{Client, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::super::Timing;
use super::super::cpu::{CpuMeter, CpuPerUnit};
use super::super::report::{micros, new_histogram};
use crate::error::Error;

/// Tasks run at once by the worker, in both pipelines.
pub const IN_FLIGHT: usize = 64;
/// Concurrent submitters, each waiting for its submit to be accepted.
pub const SUBMITTERS: usize = 32;
pub const TASK_BYTES: usize = 128;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Tasks submitted and not yet completed, at most: submitters wait for room, so both
/// pipelines run at what they sustain and latency is comparable.
const MAX_BACKLOG: usize = 1024;

/// The handler both pipelines run: decode the JSON task, answer it back.
pub fn handler(task: Value) -> Result<Value, Error> {
    Ok(task)
}

/// Completions seen by the client: how many in the window, and their latencies from
/// the start of the submit (the task carries its submit time, `ts`, and the handler
/// answers it back).
pub struct Completions {
    epoch: Instant,
    window: Mutex<Option<(Instant, Instant)>>,
    in_window: AtomicU64,
    total: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    /// One permit per task that may still be submitted: taken by a submitter, given
    /// back by its completion.
    room: Arc<Semaphore>,
}

pub struct Measured {
    pub tasks_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub submitted: u64,
    pub completed: u64,
    /// CPU per task completed within the window.
    pub cpu: CpuPerUnit,
}

impl Completions {
    pub fn new() -> Result<Arc<Completions>, Error> {
        Ok(Arc::new(Completions {
            epoch: Instant::now(),
            window: Mutex::new(None),
            in_window: AtomicU64::new(0),
            total: AtomicU64::new(0),
            latency: Mutex::new(new_histogram()?),
            room: Arc::new(Semaphore::new(MAX_BACKLOG)),
        }))
    }

    /// Counts every message on `subscriber` that `result` finds a result in.
    pub fn follow(
        self: &Arc<Self>,
        mut subscriber: Subscriber,
        result: fn(&async_nats::Message) -> Option<Value>,
    ) -> tokio::task::JoinHandle<()> {
        let seen = self.clone();
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                if let Some(answer) = result(&message) {
                    seen.record(answer["ts"].as_u64());
                }
            }
        })
    }

    fn record(&self, sent_ns: Option<u64>) {
        let now = Instant::now();
        self.total.fetch_add(1, Ordering::Relaxed);
        self.room.add_permits(1);
        let window = self.window.lock().ok().and_then(|w| *w);
        if let Some((from, to)) = window
            && now >= from
            && now < to
        {
            self.in_window.fetch_add(1, Ordering::Relaxed);
            if let (Some(sent), Ok(mut histogram)) = (sent_ns, self.latency.lock()) {
                let at = now.duration_since(self.epoch);
                histogram.saturating_record(micros(at.saturating_sub(Duration::from_nanos(sent))));
            }
        }
    }

    /// A task of [`TASK_BYTES`] carrying its submit time.
    fn task(&self) -> Bytes {
        let head = format!(
            "{{\"ts\":{},\"pad\":\"",
            self.epoch.elapsed().as_nanos() as u64
        );
        let pad = TASK_BYTES.saturating_sub(head.len() + 2);
        Bytes::from(format!("{head}{}\"}}", "x".repeat(pad)))
    }
}

/// Submits from [`SUBMITTERS`] tasks through the warm-up and the window with
/// `submit`, then waits until every accepted task has completed.
pub async fn measure<S, Fut>(
    submit: S,
    timing: Timing,
    completions: Arc<Completions>,
) -> Result<Measured, Error>
where
    S: Fn(Bytes) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), Error>> + Send,
{
    // One task through first: the window starts with the pipeline running.
    submit(completions.task()).await?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while completions.total.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            return Err(Error::timeout("the probe task did not complete"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let probes = completions.total.load(Ordering::Relaxed);
    let from = Instant::now() + timing.warmup;
    let to = from + timing.duration;
    if let Ok(mut window) = completions.window.lock() {
        *window = Some((from, to));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicU64::new(0));
    let mut submitters = Vec::new();
    for _ in 0..SUBMITTERS {
        let (submit, stop, submitted, completions) = (
            submit.clone(),
            stop.clone(),
            submitted.clone(),
            completions.clone(),
        );
        submitters.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match completions.room.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => break,
                }
                if submit(completions.task()).await.is_ok() {
                    submitted.fetch_add(1, Ordering::Relaxed);
                } else {
                    completions.room.add_permits(1);
                }
            }
        }));
    }
    tokio::time::sleep_until(from.into()).await;
    let cpu_from = timing.cpu.sample();
    tokio::time::sleep_until(to.into()).await;
    let cpu_to = timing.cpu.sample();
    stop.store(true, Ordering::Relaxed);
    for submitter in submitters {
        let _ = submitter.await;
    }
    let submitted = submitted.load(Ordering::Relaxed);
    let completed = || {
        completions
            .total
            .load(Ordering::Relaxed)
            .saturating_sub(probes)
    };
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while completed() < submitted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let histogram = completions
        .latency
        .lock()
        .map_err(|_| Error::internal("latency lock"))?;
    let in_window = completions.in_window.load(Ordering::Relaxed);
    Ok(Measured {
        tasks_per_sec: in_window as f64 / timing.duration.as_secs_f64(),
        cpu: CpuMeter::per_unit(cpu_from, cpu_to, in_window),
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        submitted,
        completed: completed(),
    })
}

/// The thinnest hand-written work queue: a work-queue stream, one explicit-ack pull
/// consumer running [`handler`] on at most [`IN_FLIGHT`] tasks at once, each acked
/// and its result published (core NATS) to `results`.
pub async fn thin_work_queue(
    url: &str,
    js: &jetstream::Context,
    stream_name: &str,
    subjects: &str,
    results: &str,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let client = crate::nats::connect(url, "switchyard-bench-thin-worker").await?;
    let stream = stream::Config {
        name: stream_name.to_string(),
        subjects: vec![subjects.to_string()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let results = results.to_string();
    super::super::thin::consume(js, stream, IN_FLIGHT, move |message| {
        let (client, results) = (client.clone(), results.clone());
        async move {
            let answer = serde_json::from_slice(&message.payload)
                .map_err(|e| Error::invalid_input(e.to_string()))
                .and_then(handler)
                .and_then(|v| serde_json::to_vec(&v).map_err(|e| Error::internal(e.to_string())));
            if let Ok(answer) = answer {
                let _ = message.ack().await;
                let _ = client.publish(results, answer.into()).await;
            }
        }
    })
    .await
}

/// A submitter for the hand-written queue: JetStream publish awaiting the ack.
pub fn thin_submit(
    js: jetstream::Context,
    subject: String,
) -> impl Fn(Bytes) -> std::pin::Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> + Clone {
    move |task: Bytes| {
        let (js, subject) = (js.clone(), subject.clone());
        Box::pin(async move {
            js.publish(subject, task)
                .await
                .map_err(Error::from)?
                .await
                .map_err(Error::from)?;
            Ok(())
        })
    }
}

/// A submitter for Switchyard: request to `tasks.submit.<service>.<operation>`.
pub fn tasks_submit(
    client: Client,
    subject: String,
) -> impl Fn(Bytes) -> std::pin::Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> + Clone {
    move |task: Bytes| {
        let (client, subject) = (client.clone(), subject.clone());
        Box::pin(async move {
            let reply = client.request(subject, task).await?;
            match crate::envelope::error_from_reply(reply.headers.as_ref()) {
                Some(err) => Err(err),
                None => Ok(()),
            }
        })
    }
}
