//! What the hand-written baselines of `bench sync` and `bench tasks` share: a stream
//! read by one explicit-ack pull consumer, each message handled by its own task with
//! at most `in_flight` at once, and the contract floors' KV bucket. Only the stream's retention and the per-message work
//! differ between them.

use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream::{self, Message, consumer::pull, stream};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::error::Error;

/// Creates `stream` and a durable explicit-ack consumer `thin` on it, and runs `work`
/// for every message it delivers, `in_flight` at a time, until the stream ends.
pub async fn consume<F, Fut>(
    js: &jetstream::Context,
    stream: stream::Config,
    in_flight: usize,
    work: F,
) -> Result<tokio::task::JoinHandle<()>, Error>
where
    F: Fn(Message) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stream = js
        .create_stream(stream)
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
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(in_flight)
        .messages()
        .await
        .map_err(|e| Error::nats("pull the bench consumer", e))?;
    Ok(tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(in_flight));
        while let Some(Ok(message)) = messages.next().await {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let done = work(message);
            tokio::spawn(async move {
                done.await;
                drop(permit);
            });
        }
    }))
}

/// A KV bucket for a contract floor's states (file storage, history 1, as Switchyard's
/// buckets are), created for one run.
pub async fn create_bucket(js: &jetstream::Context, bucket: &str) -> Result<(), Error> {
    js.create_key_value(jetstream::kv::Config {
        bucket: bucket.to_string(),
        history: 1,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| Error::nats(&format!("create the bench bucket {bucket}"), e))
}
