//! The event bus: typed events on `events.<domain>.<name>`, stored in stream `EVENTS`.
//! Every event is a Rust type implementing [`Event`] (its `ce-type` and subject);
//! [`catalog`] lists Switchyard's own. Publishing goes through JetStream and waits for
//! the ack, with `Nats-Msg-Id` = `ce-id`, so a retried publish is stored once.
//! [`subscribe`] receives them by pattern, ephemeral or durable; [`tail`] is
//! `switchyard events tail`.

pub mod catalog;
pub mod subscribe;
pub mod tail;

pub use subscribe::{
    Delivery, DurableEvents, DurableOptions, EventStream, durable, durable_with, filter_subject,
    subscribe,
};

use async_nats::Client;
use async_nats::jetstream::Context as JetStream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::{self, Envelope, Meta};
use crate::error::Error;

/// A typed event. `subject` must lie under `events.>` (stream `EVENTS`).
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The CloudEvents `ce-type`, reverse-DNS: `io.switchyard.sys.service.registered`.
    fn ce_type(&self) -> &'static str;
    /// `events.<domain>.<name>`; built with [`crate::subjects::event`] for user text.
    fn subject(&self) -> String;
}

/// Publishes `event` durably and returns its stream sequence. `cause`, when given,
/// makes the event a follow-up (same correlation and trace, causation = its id).
pub async fn publish<E: Event>(
    js: &JetStream,
    client: &Client,
    source: &str,
    event: &E,
    cause: Option<&Meta>,
) -> Result<u64, Error> {
    let meta = match cause {
        Some(cause) => cause.follow_up(source, event.ce_type()),
        None => Meta::new(source, event.ce_type()),
    };
    publish_with_meta(js, client, meta, event).await
}

/// Publishes with attributes chosen by the caller, e.g. a deterministic `ce-id` when
/// several instances may report the same fact and the stream must keep it once.
pub async fn publish_with_meta<E: Event>(
    js: &JetStream,
    client: &Client,
    meta: Meta,
    event: &E,
) -> Result<u64, Error> {
    let subject = event.subject();
    if !subject.starts_with("events.") {
        return Err(Error::internal(format!(
            "event subject {subject} is outside events.>"
        )));
    }
    envelope::publish_durable(js, client, subject, &Envelope::new(meta, event)).await
}
