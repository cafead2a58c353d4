//! `events.sys.breaker.<opened|closed>`: a gateway instance's circuit breaker for a
//! service opened or closed again, as an event on the bus (stream `EVENTS`), so
//! operators and coordination rules see it without scraping metrics.
//!
//! The breaker changes state on the request path, which must not wait for a JetStream
//! ack: a change is queued (bounded; a full queue drops the event, the metric still
//! counts the transition) and one task publishes the queue in order.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::forward::SOURCE;
use crate::component::Context;
use crate::integration::bus::{self, Event};
use crate::resilience::breaker::BreakerState;

/// Changes waiting to be published; more are dropped.
const QUEUE: usize = 256;

/// `events.sys.breaker.<opened|closed>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerChange {
    /// `opened` or `closed`.
    pub change: String,
    pub service: String,
    /// The gateway instance whose breaker it is (each instance has its own).
    pub instance: String,
}

impl Event for BreakerChange {
    fn ce_type(&self) -> &'static str {
        if self.change == "opened" {
            "io.switchyard.sys.breaker.opened"
        } else {
            "io.switchyard.sys.breaker.closed"
        }
    }

    fn subject(&self) -> String {
        format!("events.sys.breaker.{}", self.change)
    }
}

/// Where guards report their breaker's changes; cheap to clone.
#[derive(Clone)]
pub struct BreakerEvents {
    queue: mpsc::Sender<BreakerChange>,
    instance: String,
}

impl BreakerEvents {
    /// Starts the publisher on `ctx`'s connection; it ends with the last clone.
    pub fn start(ctx: &Context) -> BreakerEvents {
        let (queue, mut changes) = mpsc::channel::<BreakerChange>(QUEUE);
        let (js, client) = (ctx.jetstream.clone(), ctx.client.clone());
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                if let Err(err) = bus::publish(&js, &client, SOURCE, &change, None).await {
                    tracing::warn!(%err, service = %change.service, "cannot publish a breaker change");
                }
            }
        });
        BreakerEvents {
            queue,
            instance: ctx.instance.id.clone(),
        }
    }

    /// Queues the change to `state` if it is one that is published (half-open is not).
    pub fn moved(&self, service: &str, state: BreakerState) {
        let change = match state {
            BreakerState::Open => "opened",
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => return,
        };
        let event = BreakerChange {
            change: change.to_string(),
            service: service.to_string(),
            instance: self.instance.clone(),
        };
        if self.queue.try_send(event).is_err() {
            tracing::debug!(%service, change, "breaker change not published: queue full");
        }
    }
}
