//! Dead letters: a message Switchyard gives up on is published, payload and headers
//! unchanged, to `dlq.<original subject>` (stream `DLQ`) with failure headers saying
//! why (`Switchyard-Dlq-Reason`, `-Code`, `-Component`, `-Consumer`, `-Deliveries`,
//! `-First-Failure`, `-Last-Failure`) and where it came from
//! (`Switchyard-Original-Subject`, `-Seq`), so an operator can read it with
//! `nats stream view DLQ` or `switchyard dlq ls` and a replay can publish it back.
//! `Nats-Msg-Id` is derived from the original's position, so dead-lettering the same
//! message twice (a crash between the publish and the ack, a repeated advisory)
//! stores it once.
//!
//! Two ways in, one entry per failure:
//!
//! - components that know why they give up publish the entry themselves with
//!   [`publish`] (data sync, the data flow, tasks), then settle the original;
//! - every other JetStream consumer is covered by the `deadletter` [`component`],
//!   which turns the server's `MAX_DELIVERIES` and `MSG_TERMINATED` advisories into
//!   entries ([`advisory`]). It skips the consumers of the first group ([`advisory::dead_letters_itself`]), so a failure is never stored twice.
//!
//! [`entry`] reads entries back, [`filter`] selects them, [`replay`] publishes them to
//! their original subject again, and [`cli`] is `switchyard dlq ls|show|replay|purge`.

pub mod advisory;
pub mod cli;
pub mod component;
pub mod entry;
pub mod filter;
pub mod replay;

use async_nats::HeaderMap;
use async_nats::jetstream::Context as JetStream;
use bytes::Bytes;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::Error;
use crate::observability::metrics as m;
use crate::subjects::{self, headers as h};

pub use self::component::DeadLetterComponent;
pub use self::entry::Entry;
pub use self::filter::Filter;

/// A message given up on, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The component giving up (`sync`, `flow`, `tasks`, `deadletter`), a metric label.
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

/// What a caller may add about the failure beyond [`DeadLetter`]; every field is
/// optional, so `Failure::default()` is what [`publish`] uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Failure<'a> {
    /// The JetStream consumer that gave up on the original.
    pub consumer: Option<&'a str>,
    /// When the first failed delivery happened, if the caller saw it; otherwise the
    /// entry gives the last failure's time for both.
    pub first_failure: Option<OffsetDateTime>,
}

impl DeadLetter<'_> {
    /// The subject and headers of the dead letter, failing now.
    pub fn encode(&self) -> Result<(String, HeaderMap), Error> {
        self.encode_with(&Failure::default(), OffsetDateTime::now_utc())
    }

    /// The subject and headers of the dead letter, with `failure`'s details, given up
    /// at `now`.
    pub fn encode_with(
        &self,
        failure: &Failure<'_>,
        now: OffsetDateTime,
    ) -> Result<(String, HeaderMap), Error> {
        let subject = subjects::dlq(self.subject)?;
        let mut headers = self.headers.clone();
        headers.insert(h::ORIGINAL_SUBJECT, self.subject);
        headers.insert(h::ORIGINAL_SEQ, self.origin.as_str());
        write_failure(&mut headers, self, failure, now);
        let mut id = format!("dlq:{}:{}", self.component, self.origin);
        if let Some(target) = self.target {
            headers.insert(h::TARGET, target);
            id = format!("{id}:{target}");
        }
        if let Some(consumer) = failure.consumer {
            id = format!("{id}:{consumer}");
        }
        headers.insert(h::NATS_MSG_ID, id);
        Ok((subject, headers))
    }
}

/// The `Switchyard-Dlq-*` headers every entry carries.
fn write_failure(
    headers: &mut HeaderMap,
    letter: &DeadLetter<'_>,
    failure: &Failure<'_>,
    now: OffsetDateTime,
) {
    headers.insert(h::DLQ_REASON, letter.error.header_text());
    headers.insert(h::DLQ_CODE, letter.error.code().to_string());
    headers.insert(h::DLQ_COMPONENT, letter.component);
    headers.insert(h::DLQ_DELIVERIES, letter.deliveries.to_string());
    if let Some(consumer) = failure.consumer {
        headers.insert(h::DLQ_CONSUMER, consumer);
    }
    let last = rfc3339(now);
    let first = failure.first_failure.map_or_else(|| last.clone(), rfc3339);
    headers.insert(h::DLQ_FIRST_FAILURE, first);
    headers.insert(h::DLQ_LAST_FAILURE, last);
}

/// Every header a dead letter adds to the original's; a replay removes them.
pub const FAILURE_HEADERS: [&str; 11] = [
    h::ORIGINAL_SUBJECT,
    h::ORIGINAL_SEQ,
    h::DLQ_REASON,
    h::DLQ_CODE,
    h::DLQ_COMPONENT,
    h::DLQ_CONSUMER,
    h::DLQ_DELIVERIES,
    h::DLQ_FIRST_FAILURE,
    h::DLQ_LAST_FAILURE,
    h::TARGET,
    h::NATS_MSG_ID,
];

pub(crate) fn rfc3339(time: OffsetDateTime) -> String {
    time.replace_nanosecond(0)
        .unwrap_or(time)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Stores `letter` in stream `DLQ` and waits for the stream's ack: the caller acks
/// (or terminates) the original only after this returns `Ok`, so nothing is lost
/// between the two.
pub async fn publish(js: &JetStream, letter: &DeadLetter<'_>) -> Result<u64, Error> {
    publish_with(js, letter, &Failure::default()).await
}

/// [`publish`] with the failure's details (the consumer, the first failure's time).
pub async fn publish_with(
    js: &JetStream,
    letter: &DeadLetter<'_>,
    failure: &Failure<'_>,
) -> Result<u64, Error> {
    publish_at(js, letter, failure, OffsetDateTime::now_utc()).await
}

/// [`publish_with`] for a message given up at `failed_at` rather than now (a server
/// advisory read later).
pub async fn publish_at(
    js: &JetStream,
    letter: &DeadLetter<'_>,
    failure: &Failure<'_>,
    failed_at: OffsetDateTime,
) -> Result<u64, Error> {
    let (subject, headers) = letter.encode_with(failure, failed_at)?;
    let seq = store(js, subject, headers, letter.payload.clone()).await?;
    m::dead_letter(letter.component, letter.error.kind());
    tracing::warn!(
        component = letter.component,
        subject = letter.subject,
        origin = %letter.origin,
        consumer = failure.consumer.unwrap_or(""),
        reason = %letter.error,
        "dead-lettered"
    );
    Ok(seq)
}

/// First token after `dlq.` of an entry whose original was gone before it could be
/// copied: `dlq._gone.<stream>`. Such an entry has no payload and no
/// `Switchyard-Original-Subject`, so a replay skips it.
pub const GONE_TOKEN: &str = "_gone";

/// Stores the failure of an original of `stream` that cannot be copied (`letter`'s
/// subject, headers and payload are not used); the reason ends with `why`: it was no
/// longer in its stream, or the copy was refused.
pub async fn publish_gone(
    js: &JetStream,
    letter: &DeadLetter<'_>,
    failure: &Failure<'_>,
    stream: &str,
    failed_at: OffsetDateTime,
    why: &str,
) -> Result<u64, Error> {
    let subject = subjects::dlq(&format!("{GONE_TOKEN}.{stream}"))?;
    let error = Error::new(
        letter.error.kind(),
        format!("{} ({}: {why})", letter.error.message(), letter.origin),
    );
    let gone = DeadLetter {
        error: &error,
        ..letter.clone()
    };
    let mut headers = HeaderMap::new();
    headers.insert(h::ORIGINAL_SEQ, letter.origin.as_str());
    write_failure(&mut headers, &gone, failure, failed_at);
    let id = format!(
        "dlq:{}:{}:{}",
        letter.component,
        letter.origin,
        failure.consumer.unwrap_or("")
    );
    headers.insert(h::NATS_MSG_ID, id);
    let seq = store(js, subject, headers, Bytes::new()).await?;
    m::dead_letter(letter.component, letter.error.kind());
    tracing::warn!(component = letter.component, origin = %letter.origin, reason = %error, "dead-lettered a gone original");
    Ok(seq)
}

pub use crate::envelope::without_publish_controls;

/// Publishes one entry to stream `DLQ` and waits for the stream's ack: its sequence.
async fn store(
    js: &JetStream,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<u64, Error> {
    // By kind (too large, timed out…), so a caller knows whether trying again helps.
    let stored = |e: Error| Error::new(e.kind(), format!("store dead letter: {}", e.message()));
    let ack = js
        .publish_with_headers(subject, headers, payload)
        .await
        .map_err(|e| stored(e.into()))?
        .await
        .map_err(|e| stored(e.into()))?;
    Ok(ack.sequence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn letter<'a>(headers: &'a HeaderMap, error: &'a Error) -> DeadLetter<'a> {
        DeadLetter {
            component: "deadletter",
            subject: "orders.eu",
            headers,
            payload: Bytes::from_static(b"{\"a\":1}"),
            error,
            deliveries: 3,
            origin: "ORDERS:42".into(),
            target: None,
        }
    }

    #[test]
    fn an_entry_keeps_the_original_headers_and_adds_the_failure() {
        let mut original = HeaderMap::new();
        original.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        original.insert("ce-id", "abc");
        let error = Error::new(ErrorKind::Transient, "no ack after 3 deliveries");
        let now = OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        let first = now - time::Duration::minutes(5);
        let failure = Failure {
            consumer: Some("billing"),
            first_failure: Some(first),
        };
        let (subject, headers) = letter(&original, &error)
            .encode_with(&failure, now)
            .unwrap();
        assert_eq!(subject, "dlq.orders.eu");
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        assert_eq!(get("ce-id").as_deref(), Some("abc"));
        assert!(get("traceparent").is_some());
        assert_eq!(get(h::ORIGINAL_SUBJECT).as_deref(), Some("orders.eu"));
        assert_eq!(get(h::ORIGINAL_SEQ).as_deref(), Some("ORDERS:42"));
        assert_eq!(get(h::DLQ_CODE).as_deref(), Some("502"));
        assert_eq!(get(h::DLQ_DELIVERIES).as_deref(), Some("3"));
        assert_eq!(get(h::DLQ_CONSUMER).as_deref(), Some("billing"));
        assert_eq!(get(h::DLQ_FIRST_FAILURE), Some(rfc3339(first)));
        assert_eq!(get(h::DLQ_LAST_FAILURE), Some(rfc3339(now)));
        assert_eq!(
            get(h::NATS_MSG_ID).as_deref(),
            Some("dlq:deadletter:ORDERS:42:billing")
        );
    }

    #[test]
    fn without_a_known_first_failure_both_times_are_the_last() {
        let original = HeaderMap::new();
        let error = Error::new(ErrorKind::Permanent, "bad");
        let (_, headers) = letter(&original, &error).encode().unwrap();
        assert_eq!(
            headers.get(h::DLQ_FIRST_FAILURE),
            headers.get(h::DLQ_LAST_FAILURE)
        );
        assert!(headers.get(h::DLQ_CONSUMER).is_none());
    }

    #[test]
    fn an_original_subject_with_wildcards_is_refused() {
        let original = HeaderMap::new();
        let error = Error::new(ErrorKind::Permanent, "bad");
        let mut bad = letter(&original, &error);
        bad.subject = "orders.*";
        assert_eq!(bad.encode().unwrap_err().kind(), ErrorKind::InvalidInput);
    }
}
