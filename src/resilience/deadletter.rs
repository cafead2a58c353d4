//! Dead letters: a message Switchyard gives up on is published, payload and headers
//! unchanged, to `dlq.<original subject>` (stream `DLQ`) with headers saying why
//! (`Switchyard-Dlq-Reason`, `-Code`, `-Component`, `-Deliveries`) and where it came
//! from (`Switchyard-Original-Subject`, `-Seq`), so an operator can read it with
//! `nats stream view DLQ` and a redrive can publish it back. `Nats-Msg-Id` is derived
//! from the original's position, so dead-lettering the same message twice (a crash
//! between the publish and the ack) stores it once.

use async_nats::HeaderMap;
use async_nats::jetstream::Context as JetStream;
use bytes::Bytes;

use crate::error::Error;
use crate::observability::metrics as m;
use crate::subjects::{self, headers as h};

/// A message given up on, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The component giving up (`sync`, `flow`), a metric label.
    pub component: &'static str,
    pub subject: &'a str,
    pub headers: &'a HeaderMap,
    pub payload: Bytes,
    pub error: &'a Error,
    /// How many deliveries were tried (0 when it was never delivered).
    pub deliveries: i64,
    /// `<stream>:<seq>` of the original.
    pub origin: String,
    /// The data sync target it was for, if any.
    pub target: Option<&'a str>,
}

impl DeadLetter<'_> {
    /// The subject and headers of the dead letter.
    pub fn encode(&self) -> Result<(String, HeaderMap), Error> {
        let subject = subjects::dlq(self.subject)?;
        let mut headers = self.headers.clone();
        headers.insert(h::ORIGINAL_SUBJECT, self.subject);
        headers.insert(h::ORIGINAL_SEQ, self.origin.as_str());
        headers.insert(h::DLQ_REASON, self.error.header_text());
        headers.insert(h::DLQ_CODE, self.error.code().to_string());
        headers.insert(h::DLQ_COMPONENT, self.component);
        headers.insert(h::DLQ_DELIVERIES, self.deliveries.to_string());
        let mut id = format!("dlq:{}:{}", self.component, self.origin);
        if let Some(target) = self.target {
            headers.insert(h::TARGET, target);
            id = format!("{id}:{target}");
        }
        headers.insert(h::NATS_MSG_ID, id);
        Ok((subject, headers))
    }
}

/// Stores `letter` in stream `DLQ` and waits for the stream's ack: the caller acks
/// (or terminates) the original only after this returns `Ok`, so nothing is lost
/// between the two.
pub async fn publish(js: &JetStream, letter: &DeadLetter<'_>) -> Result<u64, Error> {
    let (subject, headers) = letter.encode()?;
    let ack = js
        .publish_with_headers(subject, headers, letter.payload.clone())
        .await
        .map_err(|e| Error::nats("publish dead letter", e))?
        .await
        .map_err(|e| Error::nats("store dead letter", e))?;
    m::dead_letter(letter.component, letter.error.kind());
    tracing::warn!(
        component = letter.component,
        subject = letter.subject,
        origin = %letter.origin,
        reason = %letter.error,
        "dead-lettered"
    );
    Ok(ack.sequence)
}
