//! Replay (redrive): a dead letter published again to its original subject, as the
//! original was (payload and headers) but with a fresh `Nats-Msg-Id` and `ce-id`, the
//! failure headers removed and `Switchyard-Replayed-From: DLQ:<seq>` linking the entry.
//! The entry itself stays in `DLQ` (`dlq purge` removes it), so a replay is audited.

use std::collections::HashMap;

use async_nats::jetstream::Context as JetStream;
use async_nats::jetstream::context::GetStreamByNameErrorKind;
use async_nats::{Client, HeaderMap};

use super::entry::Entry;
use super::{FAILURE_HEADERS, without_publish_controls};
use crate::envelope::new_id;
use crate::error::Error;
use crate::subjects::{STREAM_DLQ, headers as h};

/// What happened to one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored by stream `stream` (JetStream, acknowledged) or, with `None`, published
    /// to core NATS (no stream captures the subject).
    Replayed { stream: Option<String> },
    /// Nothing to replay: the original was gone before it could be copied.
    Skipped(String),
}

/// The subject and headers a replay publishes, with `id` as the fresh message id.
pub fn replay_message(entry: &Entry, id: &str) -> Result<(String, HeaderMap), Error> {
    let Some(subject) = entry.original_subject() else {
        return Err(Error::not_found(format!(
            "DLQ entry {} has no original to replay (it was gone when dead-lettered)",
            entry.seq
        )));
    };
    // Publish controls of the original (expected sequence…) would act on the replay.
    let mut headers = HeaderMap::new();
    for (name, values) in without_publish_controls(&entry.headers).iter() {
        let text: &str = name.as_ref();
        if FAILURE_HEADERS.iter().any(|f| f.eq_ignore_ascii_case(text)) {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    if entry.header(h::CE_ID).is_some() {
        headers.insert(h::CE_ID, id);
    }
    headers.insert(h::NATS_MSG_ID, id);
    headers.insert(
        h::REPLAYED_FROM,
        format!("{}:{}", STREAM_DLQ.name, entry.seq),
    );
    Ok((subject.to_string(), headers))
}

/// Publishes entries back, remembering which stream captures each subject.
pub struct Replayer {
    client: Client,
    js: JetStream,
    streams: HashMap<String, Option<String>>,
}

impl Replayer {
    pub fn new(client: Client) -> Replayer {
        Replayer {
            js: async_nats::jetstream::new(client.clone()),
            client,
            streams: HashMap::new(),
        }
    }

    /// Replays `entry`: through JetStream with its ack when a stream captures the
    /// original subject, else a core publish (flushed).
    pub async fn replay(&mut self, entry: &Entry) -> Result<Outcome, Error> {
        if entry.original_subject().is_none() {
            return Ok(Outcome::Skipped("original gone".into()));
        }
        let id = new_id();
        let (subject, headers) = replay_message(entry, &id)?;
        let stream = self.stream_for(&subject).await?;
        let payload = entry.payload.clone();
        match &stream {
            Some(_) => {
                let ack = self
                    .js
                    .publish_with_headers(subject.clone(), headers, payload)
                    .await?;
                ack.await?;
            }
            None => {
                self.client
                    .publish_with_headers(subject.clone(), headers, payload)
                    .await?;
                self.client
                    .flush()
                    .await
                    .map_err(|e| Error::nats(&format!("replay to {subject}"), e))?;
            }
        }
        Ok(Outcome::Replayed { stream })
    }

    async fn stream_for(&mut self, subject: &str) -> Result<Option<String>, Error> {
        if let Some(known) = self.streams.get(subject) {
            return Ok(known.clone());
        }
        let found = match self.js.stream_by_subject(subject).await {
            Ok(name) => Some(name),
            Err(err) if matches!(err.kind(), GetStreamByNameErrorKind::NotFound) => None,
            Err(err) => return Err(Error::nats(&format!("find the stream of {subject}"), err)),
        };
        self.streams.insert(subject.to_string(), found.clone());
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use time::OffsetDateTime;

    fn entry(headers: &[(&str, &str)]) -> Entry {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        Entry {
            seq: 9,
            stored: OffsetDateTime::UNIX_EPOCH,
            subject: "dlq.orders.eu".into(),
            headers: map,
            payload: Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn a_replay_drops_the_failure_and_links_the_entry() {
        let entry = entry(&[
            ("ce-id", "old"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("x-custom", "kept"),
            (h::ORIGINAL_SUBJECT, "orders.eu"),
            (h::ORIGINAL_SEQ, "ORDERS:3"),
            (h::DLQ_REASON, "boom"),
            (h::DLQ_CONSUMER, "billing"),
            (h::DLQ_FIRST_FAILURE, "2026-01-01T00:00:00Z"),
            (h::NATS_MSG_ID, "dlq:deadletter:ORDERS:3:billing"),
            ("Nats-Expected-Last-Subject-Sequence", "2"),
        ]);
        let (subject, headers) = replay_message(&entry, "fresh").unwrap();
        assert_eq!(subject, "orders.eu");
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        assert_eq!(get("ce-id").as_deref(), Some("fresh"));
        assert_eq!(get(h::NATS_MSG_ID).as_deref(), Some("fresh"));
        assert_eq!(get(h::REPLAYED_FROM).as_deref(), Some("DLQ:9"));
        assert_eq!(get("x-custom").as_deref(), Some("kept"));
        assert!(get("traceparent").is_some());
        for gone in [
            h::ORIGINAL_SUBJECT,
            h::ORIGINAL_SEQ,
            h::DLQ_REASON,
            h::DLQ_CONSUMER,
            h::DLQ_FIRST_FAILURE,
            "Nats-Expected-Last-Subject-Sequence",
        ] {
            assert!(get(gone).is_none(), "{gone} kept");
        }
    }

    #[test]
    fn no_ce_id_is_invented_and_a_gone_original_cannot_be_replayed() {
        let plain = entry(&[(h::ORIGINAL_SUBJECT, "orders.eu")]);
        let (_, headers) = replay_message(&plain, "fresh").unwrap();
        assert!(headers.get("ce-id").is_none());
        let gone = entry(&[(h::ORIGINAL_SEQ, "ORDERS:3")]);
        let err = replay_message(&gone, "fresh").unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::NotFound);
    }
}
