//! Receiving events by pattern: `events.<pattern>`, where the pattern is NATS subject
//! syntax relative to `events.` (`sys.service.*`, `orders.>`).
//!
//! - [`subscribe`]: ephemeral, core NATS, optionally in a queue group. At most once:
//!   only events published while the subscription is live, nothing is stored for it.
//! - [`durable`]: a durable pull consumer on stream `EVENTS` with explicit acks. At
//!   least once: survives restarts, an unacked or nak'ed event comes back.
//!
//! Both yield `Result` items: an event that cannot be decoded as `T` is an `Err` item
//! with the typed error (`InvalidInput`, `UnsupportedMediaType`) and the stream goes
//! on. Any [`super::Event`] type can be `T`; `serde_json::Value` receives any event.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{AckKind, Context as JetStream, Message as JsMessage, message::Acker};
use async_nats::{Client, HeaderMap, Subscriber};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use crate::envelope::Envelope;
use crate::error::Error;
use crate::observability::metrics as m;
use crate::subjects::{STREAM_EVENTS, validate_token};

/// `ce-type` assumed for an event that arrives without one.
pub const UNTYPED: &str = "io.switchyard.event";
/// How long the server waits for an ack before delivering again.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries of one event before the server gives up on it (first try included).
pub const DEFAULT_MAX_DELIVER: i64 = 5;
/// Events delivered but not yet acked, per consumer, before delivery pauses.
pub const DEFAULT_MAX_ACK_PENDING: i64 = 1000;

/// Checks a pattern and returns its subject filter, `events.<pattern>`. Tokens are
/// 1-128 characters of `A-Z a-z 0-9 _ -`, or `*` (one token), or `>` (the rest; last).
pub fn filter_subject(pattern: &str) -> Result<String, Error> {
    let tokens: Vec<&str> = pattern.split('.').collect();
    let valid = tokens.iter().enumerate().all(|(i, token)| match *token {
        "*" => true,
        ">" => i + 1 == tokens.len(),
        _ => validate_token("token", token).is_ok(),
    });
    if !valid {
        return Err(Error::invalid_input(format!(
            "invalid event pattern {pattern:?}: dot-separated tokens of A-Z a-z 0-9 _ - \
             (1-128 characters), `*`, or a final `>`, relative to events."
        )));
    }
    Ok(format!("events.{pattern}"))
}

/// Ephemeral subscription on `events.<pattern>`; with `queue_group`, each event goes to
/// one member of the group. Live on the server when this returns.
pub async fn subscribe<T: DeserializeOwned>(
    client: &Client,
    pattern: &str,
    queue_group: Option<&str>,
) -> Result<EventStream<T>, Error> {
    let subject = filter_subject(pattern)?;
    let subscriber = match queue_group {
        Some(group) => {
            validate_token("queue group", group)?;
            client
                .queue_subscribe(subject.clone(), group.to_string())
                .await
        }
        None => client.subscribe(subject.clone()).await,
    }
    .map_err(|e| Error::nats(&format!("subscribe {subject}"), e))?;
    crate::nats::connect::round_trip(client).await?;
    Ok(EventStream {
        subscriber,
        _type: PhantomData,
    })
}

/// The events of an ephemeral subscription, decoded as `T`.
pub struct EventStream<T> {
    subscriber: Subscriber,
    _type: PhantomData<fn() -> T>,
}

impl<T> EventStream<T> {
    /// Stops receiving new events; those already received are still yielded.
    pub async fn drain(&mut self) -> Result<(), Error> {
        self.subscriber
            .drain()
            .await
            .map_err(|e| Error::nats("drain event subscription", e))
    }
}

impl<T: DeserializeOwned> Stream for EventStream<T> {
    type Item = Result<Envelope<T>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.subscriber.poll_next_unpin(cx).map(|message| {
            message.map(|msg| {
                decode(
                    &msg.subject,
                    msg.headers.as_ref(),
                    &msg.payload,
                    "ephemeral",
                )
            })
        })
    }
}

/// Settings of a durable consumer; [`Default`] gives the `DEFAULT_*` values above.
#[derive(Debug, Clone)]
pub struct DurableOptions {
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub max_ack_pending: i64,
    /// Where a new consumer starts; an existing one resumes where it stopped and this
    /// cannot be changed afterwards. Default: every event the stream still holds.
    pub deliver_policy: DeliverPolicy,
}

impl Default for DurableOptions {
    fn default() -> Self {
        DurableOptions {
            ack_wait: DEFAULT_ACK_WAIT,
            max_deliver: DEFAULT_MAX_DELIVER,
            max_ack_pending: DEFAULT_MAX_ACK_PENDING,
            deliver_policy: DeliverPolicy::All,
        }
    }
}

/// Durable consumer `name` on stream `EVENTS` filtered to `events.<pattern>`, with the
/// default [`DurableOptions`]. Created or updated in place, so every instance of a
/// service may call this at start; instances sharing a name share the events.
pub async fn durable<T: DeserializeOwned + Send + 'static>(
    js: &JetStream,
    name: &str,
    pattern: &str,
) -> Result<DurableEvents<T>, Error> {
    durable_with(js, name, pattern, DurableOptions::default()).await
}

/// [`durable`] with chosen settings.
pub async fn durable_with<T: DeserializeOwned + Send + 'static>(
    js: &JetStream,
    name: &str,
    pattern: &str,
    options: DurableOptions,
) -> Result<DurableEvents<T>, Error> {
    validate_token("consumer name", name)?;
    let filter = filter_subject(pattern)?;
    let config = pull::Config {
        durable_name: Some(name.to_string()),
        description: Some(format!("Switchyard event bus: {filter}")),
        filter_subject: filter,
        ack_policy: AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        max_deliver: options.max_deliver,
        max_ack_pending: options.max_ack_pending,
        deliver_policy: options.deliver_policy,
        ..Default::default()
    };
    let consumer: PullConsumer = js
        .create_consumer_on_stream(config, STREAM_EVENTS.name)
        .await
        .map_err(|e| Error::nats(&format!("create consumer {name} on EVENTS"), e))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| Error::nats(&format!("consume {name}"), e))?;
    let consumer: Arc<str> = name.into();
    let label = consumer.clone();
    let inner = messages
        .then(move |item| {
            let consumer = label.clone();
            async move {
                let message = item.map_err(|e| Error::nats(&format!("consumer {consumer}"), e))?;
                receive(&consumer, message).await
            }
        })
        .boxed();
    Ok(DurableEvents {
        name: consumer,
        inner,
    })
}

/// The events of a durable consumer. Each must be acked, nak'ed or terminated; an event
/// left alone is delivered again after `ack_wait`. An event that cannot be decoded is
/// terminated here (never redelivered), logged, counted and yielded as an `Err` item.
pub struct DurableEvents<T> {
    name: Arc<str>,
    inner: BoxStream<'static, Result<Delivery<T>, Error>>,
}

impl<T> DurableEvents<T> {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<T> Stream for DurableEvents<T> {
    type Item = Result<Delivery<T>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// One delivery of a durable consumer: the decoded event and how to settle it.
pub struct Delivery<T> {
    pub envelope: Envelope<T>,
    pub subject: String,
    /// Position in stream `EVENTS`.
    pub stream_sequence: u64,
    /// Delivery attempt, 1 the first time.
    pub delivered: i64,
    acker: Acker,
}

impl<T> Delivery<T> {
    /// Done: the event is not delivered again.
    pub async fn ack(&self) -> Result<(), Error> {
        self.settle(AckKind::Ack, "ack").await
    }

    /// Not now: deliver again after `delay` (at once with `None`), until max_deliver.
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), Error> {
        self.settle(AckKind::Nak(delay), "nak").await
    }

    /// Never: the event is not delivered again and was not handled.
    pub async fn term(&self) -> Result<(), Error> {
        self.settle(AckKind::Term, "term").await
    }

    /// Still working: restarts the ack_wait clock.
    pub async fn in_progress(&self) -> Result<(), Error> {
        self.settle(AckKind::Progress, "progress").await
    }

    async fn settle(&self, kind: AckKind, what: &str) -> Result<(), Error> {
        self.acker
            .ack_with(kind)
            .await
            .map_err(|e| Error::nats(&format!("{what} event {}", self.stream_sequence), e))
    }
}

async fn receive<T: DeserializeOwned>(
    consumer: &str,
    message: JsMessage,
) -> Result<Delivery<T>, Error> {
    let (stream_sequence, delivered) = message
        .info()
        .map(|info| (info.stream_sequence, info.delivered))
        .map_err(|e| Error::internal(format!("consumer {consumer}: bad ack subject: {e}")))?;
    let (message, acker) = message.split();
    let subject = message.subject.to_string();
    match decode(
        &subject,
        message.headers.as_ref(),
        &message.payload,
        "durable",
    ) {
        Ok(envelope) => Ok(Delivery {
            envelope,
            subject,
            stream_sequence,
            delivered,
            acker,
        }),
        Err(err) => {
            tracing::warn!(consumer, %subject, stream_sequence, %err, "terminating an event that cannot be decoded");
            if let Err(term) = acker.ack_with(AckKind::Term).await {
                tracing::warn!(consumer, stream_sequence, err = %term, "cannot terminate event");
            }
            Err(err)
        }
    }
}

/// Decodes one event and counts it; the error names the subject (not the metric).
fn decode<T: DeserializeOwned>(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    mode: &'static str,
) -> Result<Envelope<T>, Error> {
    let decoded = Envelope::decode(headers, payload, UNTYPED)
        .map_err(|e| Error::new(e.kind(), format!("event on {subject}: {}", e.message())));
    let outcome = if decoded.is_ok() {
        "decoded"
    } else {
        "malformed"
    };
    metrics::counter!(m::BUS_EVENTS_RECEIVED_TOTAL, "mode" => mode, "outcome" => outcome)
        .increment(1);
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_event_filters() {
        assert_eq!(
            filter_subject("sys.service.*").unwrap(),
            "events.sys.service.*"
        );
        assert_eq!(filter_subject(">").unwrap(), "events.>");
        assert_eq!(filter_subject("orders.>").unwrap(), "events.orders.>");
        for bad in ["", "a..b", "a.>.b", "a b", "a*", "events.>.x", "a.\r\n"] {
            assert!(filter_subject(bad).is_err(), "{bad:?}");
        }
    }
}
