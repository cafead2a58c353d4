//! Sending envelopes: core publish, durable (JetStream) publish and request-reply,
//! each turning NATS failures into typed errors.

use std::time::Duration;

use async_nats::jetstream::context::{Context as JetStream, PublishErrorKind};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Envelope;
use crate::error::{Error, ErrorKind};
use crate::subjects::headers as h;

/// An encoded message: headers and payload.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub headers: HeaderMap,
    pub payload: Bytes,
}

impl Outgoing {
    pub fn encode<T: Serialize>(envelope: &Envelope<T>) -> Result<Outgoing, Error> {
        let (headers, payload) = envelope.encode()?;
        Ok(Outgoing {
            headers,
            payload: payload.into(),
        })
    }
}

/// Refuses a message the server would reject (and answer by closing the connection):
/// headers plus payload must fit in the server's `max_payload`.
pub fn check_size(client: &Client, message: &Outgoing) -> Result<(), Error> {
    let size = header_wire_len(&message.headers) + message.payload.len();
    let max = client.max_payload();
    if max > 0 && size > max {
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            format!("message of {size} bytes exceeds the server's max_payload of {max} bytes"),
        ));
    }
    Ok(())
}

/// Size of the header block on the wire: `NATS/1.0\r\n`, `name: value\r\n` each, `\r\n`.
fn header_wire_len(headers: &HeaderMap) -> usize {
    if headers.is_empty() {
        return 0;
    }
    let fields: usize = headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|v| name.len() + 2 + v.as_str().len() + 2)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + fields + 2
}

/// Core publish (at most once): events and notifications that may be lost.
pub async fn publish<T: Serialize>(
    client: &Client,
    subject: String,
    envelope: &Envelope<T>,
) -> Result<(), Error> {
    let message = Outgoing::encode(envelope)?;
    check_size(client, &message)?;
    client
        .publish_with_headers(subject, message.headers, message.payload)
        .await?;
    Ok(())
}

/// JetStream publish that waits for the stream's ack. `Nats-Msg-Id` is the envelope's
/// `ce-id`, so the retries below (and any by the caller) are de-duplicated by the
/// stream. "No stream" is retried briefly because it is what a clustered stream
/// answers while it elects a leader.
pub async fn publish_durable<T: Serialize>(
    js: &JetStream,
    client: &Client,
    subject: String,
    envelope: &Envelope<T>,
) -> Result<u64, Error> {
    let mut message = Outgoing::encode(envelope)?;
    message
        .headers
        .insert(h::NATS_MSG_ID, envelope.meta.id.as_str());
    check_size(client, &message)?;
    let mut delay = Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let ack = match js
            .publish_with_headers(
                subject.clone(),
                message.headers.clone(),
                message.payload.clone(),
            )
            .await
        {
            Ok(pending) => pending.await,
            Err(err) => Err(err),
        };
        match ack {
            Ok(ack) => return Ok(ack.sequence),
            Err(err) if err.kind() == PublishErrorKind::StreamNotFound && attempt < 5 => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Request-reply with an envelope. An error reply (`Nats-Service-Error-Code`) comes
/// back as the typed error it stands for.
pub async fn request<T: Serialize, R: DeserializeOwned>(
    client: &Client,
    subject: String,
    envelope: &Envelope<T>,
    timeout: Duration,
) -> Result<Envelope<R>, Error> {
    let message = Outgoing::encode(envelope)?;
    check_size(client, &message)?;
    let request = async_nats::Request::new()
        .headers(message.headers)
        .payload(message.payload)
        .timeout(Some(timeout));
    let reply = client.send_request(subject, request).await?;
    if let Some(err) = error_from_reply(reply.headers.as_ref()) {
        return Err(err);
    }
    Envelope::from_message(&reply, "io.switchyard.reply")
}

/// The typed error an error reply carries, if it is one.
pub fn error_from_reply(headers: Option<&HeaderMap>) -> Option<Error> {
    let headers = headers?;
    let code = headers.get(h::SERVICE_ERROR_CODE)?;
    let code = code.as_str().trim().parse::<u16>().unwrap_or(500);
    let description = headers
        .get(h::SERVICE_ERROR)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    Some(Error::new(ErrorKind::from_code(code), description))
}
