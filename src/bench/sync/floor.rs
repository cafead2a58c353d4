//! The contract floor of `bench sync`: the hand-written pipeline plus what issue 4's
//! contract requires per record on top of it, done as cheaply as NATS allows. Its ratio
//! to the hand-written pipeline is the most any implementation of the contract can
//! reach on the machine, measured in the same run as Switchyard.

use async_nats::jetstream;
use bytes::Bytes;

use super::load::{IN_FLIGHT, bench_stream};
use crate::error::Error;
use crate::subjects::headers as h;

/// The KV bucket the floor keeps statuses in, one per run.
pub fn bucket(stream_name: &str) -> String {
    format!("{stream_name}_STATUS")
}

/// The thin pipeline plus the least issue 4's contract adds to each record once its
/// target answered: its status stored in a KV bucket (awaited before the ack, as a
/// status must not be lost) and a confirmation carrying its id, published on a core
/// subject (not stored: the cheapest form the contract allows). No rules, no order per
/// key, no delivery id, no unrouted check: no implementation of the contract does less
/// per record, so its ratio bounds what any can reach on this machine.
pub async fn contract_floor_pipeline(
    url: &str,
    js: &jetstream::Context,
    stream_name: &str,
    subjects: &str,
    target: &str,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let client = crate::nats::connect(url, "switchyard-bench-floor").await?;
    let bucket = bucket(stream_name);
    super::super::thin::create_bucket(js, &bucket).await?;
    let stream = bench_stream(stream_name, subjects);
    let (target, floor_js) = (target.to_string(), jetstream::new(client.clone()));
    let confirm = format!("{stream_name}.confirm");
    super::super::thin::consume(js, stream, IN_FLIGHT, move |message| {
        let (client, js, target, bucket, confirm) = (
            client.clone(),
            floor_js.clone(),
            target.clone(),
            bucket.clone(),
            confirm.clone(),
        );
        async move {
            let headers = message.headers.clone().unwrap_or_default();
            let id = headers
                .get(h::CE_ID)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            let answered = client
                .request_with_headers(target, headers, message.payload.clone())
                .await;
            if answered.is_err() {
                return;
            }
            let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
            let status =
                format!("{{\"record_id\":\"{id}\",\"seq\":{seq},\"status\":\"confirmed\"}}");
            let stored = match js
                .publish(format!("$KV.{bucket}.{id}"), Bytes::from(status))
                .await
            {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            let _ = client.publish(confirm, Bytes::from(id)).await;
            if stored {
                let _ = message.ack().await;
            }
        }
    })
    .await
}
