//! The measured operations: the in-process echo responder and the bare relay in front
//! of it, raw request-reply, JetStream publish-with-ack and pull consumption, and KV
//! get. Each returns a [`Measurement`]; [`super::drive`] does the timing.

use std::time::Instant;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, kv};
use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinHandle;

use super::report::{Measurement, micros, new_histogram};
use super::{Timing, drive};
use crate::error::Error;

/// Messages per fetch in the pull-consumer scenario.
pub const FETCH_BATCH: usize = 100;
/// Fetches the consumer makes before it starts recording.
const CONSUME_WARMUP_FETCHES: usize = 10;

pub fn payload(size: usize) -> Bytes {
    Bytes::from(vec![b'x'; size])
}

/// Background subscribers that stop (are aborted) when this is dropped.
#[derive(Default)]
pub struct Services(Vec<JoinHandle<()>>);

impl Services {
    pub fn push(&mut self, task: JoinHandle<()>) {
        self.0.push(task);
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The echo responder: a plain subscription answering each request with its payload.
pub async fn start_echo(client: Client, subject: &str) -> Result<JoinHandle<()>, Error> {
    let mut sub = client
        .subscribe(subject.to_string())
        .await
        .map_err(|e| Error::nats("subscribe echo", e))?;
    client
        .flush()
        .await
        .map_err(|e| Error::nats("flush echo subscription", e))?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = client.publish(reply, msg.payload).await;
            }
        }
    }))
}

/// The bare relay: for each message, request the echo subject with the same payload and
/// answer with what comes back, headers included (a gateway must return the service's
/// reply untouched: its error replies are told in headers). Nothing else: the physical
/// bound for any gateway.
pub async fn start_relay(
    client: Client,
    subject: &str,
    echo: &str,
) -> Result<JoinHandle<()>, Error> {
    let mut sub = client
        .subscribe(subject.to_string())
        .await
        .map_err(|e| Error::nats("subscribe relay", e))?;
    client
        .flush()
        .await
        .map_err(|e| Error::nats("flush relay subscription", e))?;
    let echo = Subject::from(echo);
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Some(reply) = msg.reply else { continue };
            let client = client.clone();
            let echo = echo.clone();
            tokio::spawn(async move {
                if let Ok(answer) = client.request(echo, msg.payload).await {
                    let _ = match answer.headers {
                        Some(headers) => {
                            client
                                .publish_with_headers(reply, headers, answer.payload)
                                .await
                        }
                        None => client.publish(reply, answer.payload).await,
                    };
                }
            });
        }
    }))
}

/// Request-reply of `body` from `concurrency` callers sharing `caller`'s connection;
/// an answer of another length (an error reply) counts as an error.
pub async fn request_reply(
    caller: &Client,
    subject: &str,
    body: Bytes,
    concurrency: usize,
    timing: Timing,
) -> Result<Measurement, Error> {
    let client = caller.clone();
    let subject = Subject::from(subject);
    drive(concurrency, timing, move || {
        let client = client.clone();
        let subject = subject.clone();
        let body = body.clone();
        async move {
            let answer = client.request(subject, body.clone()).await?;
            if answer.payload.len() != body.len() {
                return Err(Error::internal(format!(
                    "echo answered {} bytes for {}",
                    answer.payload.len(),
                    body.len()
                )));
            }
            Ok(())
        }
    })
    .await
}

/// JetStream publish, awaiting each ack, from `concurrency` publishers.
pub async fn js_publish(
    js: &jetstream::Context,
    subject: &str,
    size: usize,
    concurrency: usize,
    timing: Timing,
) -> Result<Measurement, Error> {
    let js = js.clone();
    let subject = Subject::from(subject);
    let body = payload(size);
    drive(concurrency, timing, move || {
        let js = js.clone();
        let subject = subject.clone();
        let body = body.clone();
        async move {
            js.publish(subject, body).await?.await?;
            Ok(())
        }
    })
    .await
}

/// KV get of one existing key from `concurrency` callers.
pub async fn kv_get(
    store: &kv::Store,
    key: &str,
    concurrency: usize,
    timing: Timing,
) -> Result<Measurement, Error> {
    let store = store.clone();
    let key = key.to_string();
    drive(concurrency, timing, move || {
        let store = store.clone();
        let key = key.clone();
        async move {
            match store.get(key).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(Error::internal("bench key missing")),
                Err(e) => Err(Error::nats("kv get", e)),
            }
        }
    })
    .await
}

/// A durable pull consumer with explicit acks draining what the publish scenarios
/// stored: fetches of [`FETCH_BATCH`], each message acked. Runs until the backlog is
/// consumed or the scenario's duration is over; one latency sample per fetch.
pub async fn js_consume(
    stream: &mut jetstream::stream::Stream,
    timing: Timing,
) -> Result<Measurement, Error> {
    let info = stream
        .info()
        .await
        .map_err(|e| Error::nats("bench stream info", e))?;
    let backlog = info.state.messages;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats("create bench consumer", e))?;
    let mut histogram = new_histogram()?;
    let (mut consumed, mut ops, mut errors) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    let mut fetches = 0usize;
    // Warm-up: the first fetches, or `timing.warmup`, whichever ends first.
    let warmup_end = Instant::now() + timing.warmup;
    let mut measure_from: Option<Instant> = None;
    let mut deadline = warmup_end + timing.duration;
    while consumed < backlog && Instant::now() < deadline {
        let now = Instant::now();
        if measure_from.is_none() && (fetches >= CONSUME_WARMUP_FETCHES || now >= warmup_end) {
            measure_from = Some(now);
            deadline = now + timing.duration;
        }
        fetches += 1;
        let started = Instant::now();
        let mut batch = match consumer.fetch().max_messages(FETCH_BATCH).messages().await {
            Ok(batch) => batch,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("fetch: {e}"));
                continue;
            }
        };
        let mut got = 0u64;
        while let Some(msg) = batch.next().await {
            let acked = match msg {
                Ok(msg) => msg.ack().await.map_err(|e| format!("ack: {e}")),
                Err(e) => Err(format!("fetch: {e}")),
            };
            match acked {
                Ok(()) => got += 1,
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        consumed += got;
        if measure_from.is_some() && got > 0 {
            histogram.saturating_record(micros(started.elapsed()));
            ops += got;
        }
    }
    let elapsed = measure_from.map(|t| t.elapsed()).unwrap_or_default();
    Ok(Measurement {
        histogram,
        ops,
        errors,
        first_error,
        elapsed,
        cpu: None,
    })
}
