//! The contract floor of `bench tasks`: the hand-written work queue plus what issue 5's
//! contract requires per task on top of it, done as cheaply as NATS allows. Its ratio
//! to the hand-written queue is the most any implementation of the contract can reach
//! on the machine, measured in the same run as Switchyard.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::StreamExt;

use super::load::{IN_FLIGHT, handler};
use crate::error::Error;

/// The work item's header carrying its task id.
const TASK_ID: &str = "Bench-Task-Id";

/// What runs the floor: the submit responder and the worker.
pub struct Floor {
    responder: tokio::task::JoinHandle<()>,
    worker: tokio::task::JoinHandle<()>,
}

impl Floor {
    pub fn abort(&self) {
        self.responder.abort();
        self.worker.abort();
    }
}

/// The thin queue plus the least issue 5's contract adds to each task:
///
/// - the submit is a request-reply on `submit`, answered by a responder standing in for
///   the tasks component, which stores the `submitted` state in the KV bucket
///   `<stream>_STATE` and publishes the work item to the stream (both awaiting their
///   acks, as the contract's answer promises both) before replying with the task id;
/// - the worker runs the thin queue's consumer and handler, stores the outcome state
///   (awaiting the ack: the state is what `tasks.get` reads), publishes the result on
///   `results` (core NATS, as the thin queue does) and acks.
///
/// No envelopes, no cancel checks, no in-progress acks, no retries, ids from a counter:
/// no implementation of the contract does less per task, so its ratio bounds what any
/// can reach on this machine.
pub async fn contract_floor_queue(
    url: &str,
    js: &jetstream::Context,
    stream_name: &str,
    work: &str,
    submit: &str,
    results: &str,
) -> Result<Floor, Error> {
    let bucket = bucket(stream_name);
    super::super::thin::create_bucket(js, &bucket).await?;
    let stream = stream::Config {
        name: stream_name.to_string(),
        subjects: vec![format!("{work}.>")],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    // The worker is created first so the stream exists before the first submit.
    let worker = worker(url, js, stream, &bucket, results).await?;
    let responder = match responder(url, &bucket, work, submit).await {
        Ok(responder) => responder,
        Err(err) => {
            worker.abort();
            return Err(err);
        }
    };
    Ok(Floor { responder, worker })
}

/// The KV bucket the floor keeps task states in, one per run.
pub fn bucket(stream_name: &str) -> String {
    format!("{stream_name}_STATE")
}

/// Answers each submit on its own task (as a component answers concurrent requests):
/// `submitted` state stored, work item stored on `<work>.run`, then the id as the reply.
async fn responder(
    url: &str,
    bucket: &str,
    work: &str,
    submit: &str,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let client = crate::nats::connect(url, "switchyard-bench-floor-tasks").await?;
    let mut requests = client
        .subscribe(submit.to_string())
        .await
        .map_err(|e| Error::nats(&format!("subscribe {submit}"), e))?;
    // Live on the server before the first submit is sent.
    client.flush().await.map_err(|e| Error::nats("flush", e))?;
    let js = jetstream::new(client.clone());
    let (bucket, work) = (bucket.to_string(), work.to_string());
    let next_id = Arc::new(AtomicU64::new(0));
    Ok(tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply.clone() else {
                continue;
            };
            let id = next_id.fetch_add(1, Ordering::Relaxed).to_string();
            let (client, js, bucket, work) =
                (client.clone(), js.clone(), bucket.clone(), work.clone());
            tokio::spawn(async move {
                let state = format!("{{\"id\":\"{id}\",\"state\":\"submitted\"}}");
                if !stored(&js, format!("$KV.{bucket}.{id}"), Bytes::from(state)).await {
                    return;
                }
                // One subject for every work item, as stream TASKS has per service and
                // operation; the id travels in a header.
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(TASK_ID, id.as_str());
                let item = js
                    .publish_with_headers(format!("{work}.run"), headers, request.payload)
                    .await;
                let stored_item = match item {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if !stored_item {
                    return;
                }
                let _ = client.publish(reply, Bytes::from(id)).await;
            });
        }
    }))
}

/// The thin queue's consumer and handler, with the outcome state stored before the
/// result is published and the work item acked.
async fn worker(
    url: &str,
    js: &jetstream::Context,
    stream: stream::Config,
    bucket: &str,
    results: &str,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let client = crate::nats::connect(url, "switchyard-bench-floor-worker").await?;
    let worker_js = jetstream::new(client.clone());
    let (bucket, results) = (bucket.to_string(), results.to_string());
    super::super::thin::consume(js, stream, IN_FLIGHT, move |message| {
        let (client, js, bucket, results) = (
            client.clone(),
            worker_js.clone(),
            bucket.clone(),
            results.clone(),
        );
        async move {
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get(TASK_ID))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            let Ok(answer) = serde_json::from_slice(&message.payload)
                .map_err(|e| Error::invalid_input(e.to_string()))
                .and_then(handler)
            else {
                return;
            };
            let Ok(answer) = serde_json::to_string(&answer) else {
                return;
            };
            // The answer is encoded once and spliced into the state: the floor does not
            // pay for a second encoding.
            let state = format!("{{\"id\":\"{id}\",\"state\":\"completed\",\"result\":{answer}}}");
            if !stored(&js, format!("$KV.{bucket}.{id}"), Bytes::from(state)).await {
                return;
            }
            let _ = client.publish(results, answer.into()).await;
            let _ = message.ack().await;
        }
    })
    .await
}

/// JetStream publish awaiting the ack: whether the message is stored.
async fn stored(js: &jetstream::Context, subject: String, payload: Bytes) -> bool {
    match js.publish(subject, payload).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}
