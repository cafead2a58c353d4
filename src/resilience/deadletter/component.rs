//! The `deadletter` component: reads the consumer advisories captured by stream
//! `DLQ_ADVISORIES` through the durable consumer `deadletter`, shared by every instance
//! (none is lost while no instance runs, and each is handled by one), and hands each to
//! [`handle`], which stores its dead letter.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, Stream as Messages};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{AckKind, Context as JetStream, Message};
use futures::StreamExt;
use futures::future::BoxFuture;

use super::advisory::{Advisory, COMPONENT, handle};
use crate::component::{Component, Context, Subscription};
use crate::error::Error;
use crate::observability::metrics as m;
use crate::resilience::errorlog::Where;
use crate::subjects::{self, DEADLETTER_CONSUMER, STREAM_DLQ_ADVISORIES};

/// When an advisory comes back after its entry could not be stored.
const RETRY_DELAY: Duration = Duration::from_secs(2);
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Missed heartbeats in a row after which the consumer is created again.
const MISSED_HEARTBEATS: u32 = 3;

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
