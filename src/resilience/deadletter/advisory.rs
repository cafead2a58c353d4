//! The `deadletter` component: the server's `MAX_DELIVERIES` and `MSG_TERMINATED`
//! consumer advisories become dead letters in stream `DLQ`.
//!
//! An advisory is only a pointer (`stream`, `stream_seq`, `consumer`), so the original
//! is fetched from its stream by sequence and copied, payload and headers; when it is
//! already gone (a work-queue stream removed it on `term`, an age limit) the entry
//! still records the failure, without payload, on `dlq._gone.<stream>`.
//!
//! Advisories are captured by stream `DLQ_ADVISORIES` and read through the durable
//! consumer `deadletter`, shared by every instance: none is lost while no instance
//! runs, and each is handled by one. The entry's `Nats-Msg-Id` comes from the
//! original's stream, sequence and consumer, so a repeated advisory stores one entry.
//!
//! One failure, one entry: consumers that publish their own, richer dead letters are
//! skipped ([`dead_letters_itself`]), and so are advisories about `DLQ` and
//! `DLQ_ADVISORIES` themselves (a dead letter of a dead letter would loop).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull::{self, Stream as Messages};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{AckKind, Context as JetStream, ErrorCode, Message};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{DeadLetter, Failure};
use crate::component::{Component, Context, Subscription};
use crate::error::{Error, ErrorKind};
use crate::observability::metrics as m;
use crate::resilience::errorlog::Where;
use crate::subjects::{self, DEADLETTER_CONSUMER, STREAM_DLQ, STREAM_DLQ_ADVISORIES};

/// The component name, a metric and dead-letter label.
pub const COMPONENT: &str = "deadletter";
/// `type` of the two advisories.
pub const MAX_DELIVER_TYPE: &str = "io.nats.jetstream.advisory.v1.max_deliver";
pub const TERMINATED_TYPE: &str = "io.nats.jetstream.advisory.v1.terminated";
/// When an advisory comes back after its entry could not be stored.
const RETRY_DELAY: Duration = Duration::from_secs(2);
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Missed heartbeats in a row after which the consumer is created again.
const MISSED_HEARTBEATS: u32 = 3;

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
    fn as_str(self) -> &'static str {
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

/// The `deadletter` component: durable consumer `deadletter` on stream
/// `DLQ_ADVISORIES`, shared by every instance.
#[derive(Debug, Default)]
pub struct DeadLetterComponent;

impl Component for DeadLetterComponent {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    fn subscriptions(&self) -> Vec<Subscription> {
        vec![Subscription {
            subject: subjects::DLQ_ADVISORIES,
            queue_group: None,
            description: "durable consumer `deadletter` on stream DLQ_ADVISORIES, shared by \
                          every instance: consumer advisories to dead letters in DLQ",
        }]
    }

    fn start(&self, ctx: Context) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let messages = consume(&ctx.jetstream).await?;
            ctx.spawn(run(ctx.clone(), messages));
            Ok(())
        })
    }
}

/// Creates (or updates in place) consumer `deadletter` and starts reading it.
pub async fn consume(js: &JetStream) -> Result<Messages, Error> {
    let config = pull::Config {
        durable_name: Some(DEADLETTER_CONSUMER.to_string()),
        description: Some("Switchyard dead letters from consumer advisories".into()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        // Never give up on an advisory: giving up would emit an advisory about this
        // consumer, and the failure it points to would be lost.
        max_deliver: -1,
        max_ack_pending: 256,
        deliver_policy: DeliverPolicy::All,
        ..Default::default()
    };
    let consumer: PullConsumer = js
        .create_consumer_on_stream(config, STREAM_DLQ_ADVISORIES.name)
        .await
        .map_err(|e| Error::nats("create consumer deadletter on DLQ_ADVISORIES", e))?;
    consumer
        .messages()
        .await
        .map_err(|e| Error::nats("consume deadletter", e))
}

/// Handles advisories one at a time (they are rare) until shutdown, recreating the
/// consumer when its stream of messages ends or fails for good (after a server restart
/// the stream may only report missing heartbeats, never end).
async fn run(ctx: Context, mut messages: Messages) {
    use pull::MessagesErrorKind as K;
    let stop = ctx.shutdown().clone();
    let mut backoff = Duration::from_millis(100);
    let mut missed = 0;
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            next = messages.next() => next,
        };
        let lost = match next {
            Some(Ok(message)) => {
                missed = 0;
                backoff = Duration::from_millis(100);
                settle(&ctx, &message).await;
                false
            }
            Some(Err(err)) => match err.kind() {
                K::MissingHeartbeat => {
                    missed += 1;
                    missed >= MISSED_HEARTBEATS
                }
                K::ConsumerDeleted | K::NoResponders => true,
                _ => {
                    tracing::debug!(%err, "consumer deadletter: transient error");
                    // Not in a tight loop while the connection is down.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    false
                }
            },
            None => true,
        };
        if !lost {
            continue;
        }
        missed = 0;
        tracing::warn!("consumer deadletter lost; creating it again");
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            match consume(&ctx.jetstream).await {
                Ok(fresh) => {
                    messages = fresh;
                    break;
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot recreate consumer deadletter yet");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Handles one advisory and settles it: acked once its entry is stored (or it is
/// skipped, malformed, or fails in a way retrying cannot fix), nak'ed with a delay
/// when the entry cannot be stored yet.
async fn settle(ctx: &Context, message: &Message) {
    let advisory = match Advisory::parse(&message.payload) {
        Ok(advisory) => advisory,
        Err(err) => {
            tracing::warn!(%err, subject = %message.subject, "ignoring an advisory");
            m::deadletter_advisory("malformed");
            ack(message, AckKind::Ack).await;
            return;
        }
    };
    match handle(&ctx.jetstream, &advisory).await {
        Ok(handled) => {
            m::deadletter_advisory(handled.as_str());
            ack(message, AckKind::Ack).await;
        }
        Err(err) => {
            ctx.errors.report(
                COMPONENT,
                &err,
                Where {
                    subject: Some(&message.subject),
                    ..Where::default()
                },
            );
            if err.kind().is_retryable() {
                tracing::warn!(%err, origin = %advisory.origin(), "cannot dead-letter yet; retrying");
                ack(message, AckKind::Nak(Some(RETRY_DELAY))).await;
            } else {
                // It would fail the same way forever; the error record keeps the trace.
                tracing::error!(%err, origin = %advisory.origin(), "cannot dead-letter; giving up on the advisory");
                m::deadletter_advisory("failed");
                ack(message, AckKind::Ack).await;
            }
        }
    }
}

async fn ack(message: &Message, kind: AckKind) {
    if let Err(err) = message.ack_with(kind).await {
        tracing::debug!(%err, "cannot settle an advisory of consumer deadletter");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
