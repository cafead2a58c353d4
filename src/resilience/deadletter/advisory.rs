//! What the `deadletter` component does with one consumer advisory: the server's
//! `MAX_DELIVERIES` and `MSG_TERMINATED` advisories become dead letters in stream `DLQ`.
//!
//! An advisory is only a pointer (`stream`, `stream_seq`, `consumer`), so the original
//! is fetched from its stream by sequence and copied, payload and headers; when it is
//! already gone (a work-queue stream removed it on `term`, an age limit) the entry
//! still records the failure, without payload, on `dlq._gone.<stream>`.
//!
//! The entry's `Nats-Msg-Id` comes from the original's stream, sequence and consumer, so
//! a repeated advisory stores one entry. How advisories reach [`handle`]: [`super::component`].
//!
//! One failure, one entry: consumers that publish their own, richer dead letters are
//! skipped ([`dead_letters_itself`]), and so are advisories about `DLQ` and
//! `DLQ_ADVISORIES` themselves (a dead letter of a dead letter would loop).

use async_nats::HeaderMap;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{Context as JetStream, ErrorCode};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{DeadLetter, Failure};
use crate::error::{Error, ErrorKind};
use crate::subjects::{self, STREAM_DLQ, STREAM_DLQ_ADVISORIES};

/// The component name, a metric and dead-letter label.
pub const COMPONENT: &str = "deadletter";
/// `type` of the two advisories.
pub const MAX_DELIVER_TYPE: &str = "io.nats.jetstream.advisory.v1.max_deliver";
pub const TERMINATED_TYPE: &str = "io.nats.jetstream.advisory.v1.terminated";

/// A consumer advisory, as the server publishes it (fields Switchyard reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Advisory {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub timestamp: Option<String>,
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    #[serde(default)]
    pub deliveries: i64,
    /// The `+TERM <reason>` text (servers 2.11 and later), for terminated messages.
    #[serde(default)]
    pub reason: Option<String>,
}

impl Advisory {
    pub fn parse(payload: &[u8]) -> Result<Advisory, Error> {
        let advisory: Advisory = serde_json::from_slice(payload)
            .map_err(|e| Error::invalid_input(format!("malformed consumer advisory: {e}")))?;
        if advisory.kind != MAX_DELIVER_TYPE && advisory.kind != TERMINATED_TYPE {
            return Err(Error::invalid_input(format!(
                "advisory type {:?} is not a dead-letter advisory",
                advisory.kind
            )));
        }
        Ok(advisory)
    }

    /// Why the consumer gave up, as the entry's reason and code: retried until the
    /// deliveries ran out (transient), or terminated by its consumer (permanent).
    pub fn failure(&self) -> Error {
        if self.kind == MAX_DELIVER_TYPE {
            return Error::new(
                ErrorKind::Transient,
                format!(
                    "consumer {} reached its max deliveries ({}) without an ack",
                    self.consumer, self.deliveries
                ),
            );
        }
        let why = match self.reason.as_deref().filter(|r| !r.is_empty()) {
            Some(reason) => format!(": {reason}"),
            None => String::new(),
        };
        Error::new(
            ErrorKind::Permanent,
            format!("terminated by consumer {}{why}", self.consumer),
        )
    }

    /// When the server gave up, else now.
    pub fn time(&self) -> OffsetDateTime {
        self.timestamp
            .as_deref()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .unwrap_or_else(OffsetDateTime::now_utc)
    }

    pub fn origin(&self) -> String {
        format!("{}:{}", self.stream, self.stream_seq)
    }
}

/// Consumers that publish their own dead letters, with the error that made them give
/// up, before they terminate the message: data flow (`flow` on `DATA`), data sync
/// (`sync-<target>` on `DATA`) and tasks (`tasks-<service>` on `TASKS`). Their
/// advisories are skipped, as are those about the dead-letter streams themselves.
pub fn dead_letters_itself(stream: &str, consumer: &str) -> bool {
    let data = stream == subjects::STREAM_DATA.name
        && (consumer == subjects::FLOW_CONSUMER || consumer.starts_with("sync-"));
    let tasks = stream == subjects::STREAM_TASKS.name && consumer.starts_with("tasks-");
    let own = stream == STREAM_DLQ.name || stream == STREAM_DLQ_ADVISORIES.name;
    data || tasks || own
}

/// What became of one advisory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// An entry with the original's payload and headers.
    Stored,
    /// An entry without payload: the original was no longer in its stream, or its
    /// copy was refused.
    Gone,
    /// Its consumer dead-letters by itself.
    Skipped,
}

impl Handled {
    /// Its label on the advisory metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Handled::Stored => "stored",
            Handled::Gone => "gone",
            Handled::Skipped => "skipped",
        }
    }
}

/// Turns one advisory into its entry (or skips it).
pub async fn handle(js: &JetStream, advisory: &Advisory) -> Result<Handled, Error> {
    if dead_letters_itself(&advisory.stream, &advisory.consumer) {
        tracing::debug!(origin = %advisory.origin(), consumer = %advisory.consumer, "advisory of a consumer that dead-letters itself");
        return Ok(Handled::Skipped);
    }
    let error = advisory.failure();
    let failure = Failure {
        consumer: Some(&advisory.consumer),
        first_failure: None,
    };
    let failed_at = advisory.time();
    let origin = advisory.origin();
    let no_headers = HeaderMap::new();
    let Some(original) = fetch(js, &advisory.stream, advisory.stream_seq).await? else {
        let letter = DeadLetter {
            component: COMPONENT,
            subject: "",
            headers: &no_headers,
            payload: bytes::Bytes::new(),
            error: &error,
            deliveries: advisory.deliveries,
            origin,
            target: None,
        };
        let why = "no longer in its stream, nothing to copy";
        super::publish_gone(js, &letter, &failure, &advisory.stream, failed_at, why).await?;
        return Ok(Handled::Gone);
    };
    let headers = super::without_publish_controls(&original.headers);
    let letter = DeadLetter {
        component: COMPONENT,
        subject: original.subject.as_str(),
        headers: &headers,
        payload: original.payload,
        error: &error,
        deliveries: advisory.deliveries,
        origin,
        target: None,
    };
    match super::publish_at(js, &letter, &failure, failed_at).await {
        Ok(_) => Ok(Handled::Stored),
        // A copy that can never be stored (too large with the failure headers): record
        // the failure without it rather than retry forever.
        Err(err) if !err.kind().is_retryable() => {
            let why = format!("the copy was refused: {}", err.message());
            let letter = DeadLetter {
                payload: bytes::Bytes::new(),
                ..letter
            };
            super::publish_gone(js, &letter, &failure, &advisory.stream, failed_at, &why).await?;
            Ok(Handled::Gone)
        }
        Err(err) => Err(err),
    }
}

/// The original message, or `None` when its stream no longer has it.
async fn fetch(
    js: &JetStream,
    stream: &str,
    seq: u64,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, Error> {
    let what = format!("read {stream}:{seq} to dead-letter it");
    let stream = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| Error::nats(&what, e))?;
    match stream.get_raw_message(seq).await {
        Ok(message) => Ok(Some(message)),
        Err(err) => match err.kind() {
            LastRawMessageErrorKind::NoMessageFound => Ok(None),
            LastRawMessageErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(Error::nats(&what, err)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subjects::DEADLETTER_CONSUMER;

    #[test]
    fn reads_both_advisories() {
        let max = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2026-11-26T00:18:21.528958256Z","stream":"W","consumer":"c","stream_seq":1,"deliveries":2}"#;
        let advisory = Advisory::parse(max).unwrap();
        assert_eq!(advisory.origin(), "W:1");
        assert_eq!(advisory.failure().kind(), ErrorKind::Transient);
        assert_eq!(advisory.time().year(), 2026);
        let term = br#"{"type":"io.nats.jetstream.advisory.v1.terminated","stream":"W","consumer":"c","consumer_seq":3,"stream_seq":2,"deliveries":1,"reason":"bad input"}"#;
        let failure = Advisory::parse(term).unwrap().failure();
        assert_eq!(failure.kind(), ErrorKind::Permanent);
        assert!(failure.message().ends_with(": bad input"), "{failure}");
    }

    #[test]
    fn other_payloads_are_refused() {
        let other = br#"{"type":"io.nats.jetstream.advisory.v1.consumer_action","stream":"W","consumer":"c","stream_seq":1}"#;
        for bad in [&other[..], b"not json", b"{}"] {
            let err = Advisory::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn consumers_that_dead_letter_themselves_are_skipped() {
        let sync = subjects::sync_consumer("billing").unwrap();
        let tasks = subjects::tasks_consumer("echo").unwrap();
        assert!(dead_letters_itself("DATA", &sync));
        assert!(dead_letters_itself("DATA", subjects::FLOW_CONSUMER));
        assert!(dead_letters_itself("TASKS", &tasks));
        assert!(dead_letters_itself("DLQ", "anything"));
        assert!(dead_letters_itself("DLQ_ADVISORIES", DEADLETTER_CONSUMER));
        assert!(!dead_letters_itself("EVENTS", "billing"));
        assert!(!dead_letters_itself("ORDERS", &sync));
        assert!(!dead_letters_itself("DATA", "reporting"));
    }
}
