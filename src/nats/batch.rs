//! Storing many messages in JetStream for one round trip: every publish is sent before
//! the first acknowledgement is awaited, and each message keeps its own ack (so a
//! `Nats-Msg-Id` already stored in the duplicate window is skipped, as for any
//! publish).
//!
//! Why not JetStream's atomic batch publish (ADR-50, `allow_atomic`, one ack per batch):
//! measured with `switchyard bench sync` on nats-server 2.15.2, it cost the server more
//! than it saved (45 against 66 to 84 µs of server CPU per record). For a stream with
//! one replica on file storage the server stages every batch in a file store of its own
//! (a directory, a metadata file and a message block, created and deleted per batch),
//! and it refuses a whole batch holding a `Nats-Msg-Id` it already stored instead of
//! skipping that message.

use std::time::Duration;

use async_nats::jetstream::Context as JetStream;
use async_nats::{HeaderMap, StatusCode, Subject};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;

use crate::error::Error;

/// Messages sent before their acks are awaited, at most: bounds what one call holds.
pub const MAX_MESSAGES: usize = 500;

/// One message to store.
pub struct Message {
    pub subject: Subject,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// How long the acknowledgements of one call may take, all together (async-nats's
/// default for a JetStream publish).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Stores the message `build` makes of each item, in order, and returns each one's
/// stream sequence (for a duplicate, the original's). Err: some could not be stored
/// (which ones is unknown: treat all as not stored; storing them again is safe for
/// messages with a `Nats-Msg-Id` or that overwrite a key).
///
/// The acks come back on one subscription of the call's own, rather than through
/// async-nats's publish futures: those cost, per message, an inbox, a timer, and an
/// untagged JSON parse that builds (and drops) an error for every successful ack.
pub async fn publish<T, F>(js: &JetStream, items: &[T], build: F) -> Result<Vec<u64>, Error>
where
    T: Sync,
    F: Fn(&T) -> Message + Sync,
{
    let client = js.client();
    let mut sequences = vec![0u64; items.len()];
    for (c, chunk) in items.chunks(MAX_MESSAGES).enumerate() {
        let inbox = client.new_inbox();
        let mut acks = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| Error::nats("subscribe to publish acks", e))?;
        for (n, item) in chunk.iter().enumerate() {
            let Message {
                subject,
                headers,
                payload,
            } = build(item);
            client
                .publish_with_reply_and_headers(subject, format!("{inbox}.{n}"), headers, payload)
                .await
                .map_err(|e| Error::nats("publish", e))?;
        }
        let offset = c * MAX_MESSAGES;
        let mut missing = chunk.len();
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        while missing > 0 {
            let reply = tokio::time::timeout_at(deadline, acks.next())
                .await
                .map_err(|_| {
                    Error::timeout(format!(
                        "{missing} publish acks did not come within {ACK_TIMEOUT:?}"
                    ))
                })?
                .ok_or_else(|| Error::unavailable("the subscription to publish acks ended"))?;
            let n = reply
                .subject
                .rsplit('.')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n < chunk.len())
                .ok_or_else(|| Error::internal(format!("a publish ack on {}", reply.subject)))?;
            sequences[offset + n] = sequence_of(&reply)?;
            missing -= 1;
        }
    }
    Ok(sequences)
}

/// The stream sequence in a publish ack; Err for an error ack or no stream.
fn sequence_of(reply: &async_nats::Message) -> Result<u64, Error> {
    if reply.status == Some(StatusCode::NO_RESPONDERS) {
        return Err(Error::unavailable("no stream takes this subject"));
    }
    let ack: Ack = serde_json::from_slice(&reply.payload)
        .map_err(|e| Error::internal(format!("unreadable publish ack: {e}")))?;
    match (ack.error, ack.seq) {
        (Some(err), _) => Err(Error::unavailable(format!(
            "publish refused: {} (code {}, error code {})",
            err.description, err.code, err.err_code
        ))),
        (None, Some(seq)) => Ok(seq),
        (None, None) => Err(Error::internal("a publish ack without a sequence")),
    }
}

/// A JetStream publish ack or its error, in one shape (no untagged enum to try).
#[derive(Deserialize)]
struct Ack {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    error: Option<AckError>,
}

#[derive(Deserialize)]
struct AckError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}
