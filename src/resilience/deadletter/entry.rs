//! Reading dead letters back from stream `DLQ`: one entry by sequence, or every entry
//! a [`Filter`] selects (an ordered consumer: ephemeral, no acks, gone once read).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::Context as JetStream;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;

use super::filter::Filter;
use crate::error::Error;
use crate::subjects::{STREAM_DLQ, headers as h};

/// Longest wait for the next entry of a selection.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One dead letter as stored, with its failure headers read.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Sequence in stream `DLQ`.
    pub seq: u64,
    /// When `DLQ` stored it.
    pub stored: OffsetDateTime,
    /// `dlq.<original subject>`.
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// What `dlq ls --json` prints for an entry (no payload).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub seq: u64,
    pub time: String,
    /// Absent when the original was gone before it could be copied.
    pub original_subject: Option<String>,
    /// The original's stream and sequence there (`Switchyard-Original-Seq`).
    pub stream: Option<String>,
    pub stream_seq: Option<u64>,
    pub component: Option<String>,
    pub consumer: Option<String>,
    pub target: Option<String>,
    pub deliveries: Option<i64>,
    pub code: Option<u16>,
    pub reason: Option<String>,
    pub first_failure: Option<String>,
    pub last_failure: Option<String>,
}

impl Entry {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }

    /// Where a replay publishes it; `None` when the original could not be copied.
    pub fn original_subject(&self) -> Option<&str> {
        self.header(h::ORIGINAL_SUBJECT)
    }

    pub fn summary(&self) -> Summary {
        let text = |name| self.header(name).map(str::to_string);
        let origin = self
            .header(h::ORIGINAL_SEQ)
            .and_then(|o| o.rsplit_once(':'));
        Summary {
            seq: self.seq,
            time: super::rfc3339(self.stored),
            original_subject: text(h::ORIGINAL_SUBJECT),
            stream: origin.map(|(stream, _)| stream.to_string()),
            stream_seq: origin.and_then(|(_, seq)| seq.parse().ok()),
            component: text(h::DLQ_COMPONENT),
            consumer: text(h::DLQ_CONSUMER),
            target: text(h::TARGET),
            deliveries: self.header(h::DLQ_DELIVERIES).and_then(|d| d.parse().ok()),
            code: self.header(h::DLQ_CODE).and_then(|c| c.parse().ok()),
            reason: text(h::DLQ_REASON),
            first_failure: text(h::DLQ_FIRST_FAILURE),
            last_failure: text(h::DLQ_LAST_FAILURE),
        }
    }
}

/// Stream `DLQ`, or why it cannot be opened.
pub async fn dlq_stream(js: &JetStream) -> Result<Stream, Error> {
    js.get_stream(STREAM_DLQ.name).await.map_err(|e| {
        Error::nats(
            "open stream DLQ (created by switchyard up or run on this server)",
            e,
        )
    })
}

/// The entry at `seq`; not found when there is none.
pub async fn get(stream: &Stream, seq: u64) -> Result<Entry, Error> {
    match stream.get_raw_message(seq).await {
        Ok(message) => Ok(Entry {
            seq: message.sequence,
            stored: message.time,
            subject: message.subject.to_string(),
            headers: message.headers,
            payload: message.payload,
        }),
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Err(Error::not_found(
            format!("no dead letter with sequence {seq} in stream DLQ"),
        )),
        Err(err) => Err(Error::nats(&format!("read DLQ entry {seq}"), err)),
    }
}

/// The entries `seqs` names (each must exist), kept when `filter` admits them.
pub async fn by_seqs(stream: &Stream, seqs: &[u64], filter: &Filter) -> Result<Vec<Entry>, Error> {
    let mut entries = Vec::with_capacity(seqs.len());
    for &seq in seqs {
        let entry = get(stream, seq).await?;
        if filter.admits(&entry.subject, entry.stored) {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// Every entry `filter` selects, oldest first: the server filters the subject and
/// starts at `since`; reading stops past `until`.
pub async fn select(stream: &Stream, filter: &Filter) -> Result<Vec<Entry>, Error> {
    let deliver_policy = match filter.since {
        Some(start_time) => DeliverPolicy::ByStartTime { start_time },
        None => DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.dlq_subject(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats("read stream DLQ", e))?;
    let mut entries = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(entries);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| Error::nats("read stream DLQ", e))?;
    // Entries purged while being read never arrive: waiting is bounded.
    while let Some(message) = tokio::time::timeout(READ_TIMEOUT, messages.next())
        .await
        .map_err(|_| Error::timeout("reading stream DLQ: no entry within 10 s"))?
    {
        let message = message.map_err(|e| Error::nats("read stream DLQ", e))?;
        let info = message
            .info()
            .map_err(|e| Error::internal(format!("DLQ message without metadata: {e}")))?;
        let (seq, stored, pending) = (info.stream_sequence, info.published, info.pending);
        if filter.until.is_some_and(|until| stored > until) {
            break;
        }
        entries.push(Entry {
            seq,
            stored,
            subject: message.subject.to_string(),
            headers: message.headers.clone().unwrap_or_default(),
            payload: message.payload.clone(),
        });
        if pending == 0 {
            break;
        }
    }
    Ok(entries)
}
