//! Which gateway instances have their circuit breaker open for which service, from
//! `events.sys.breaker.<opened|closed>`: each gateway instance has its own breaker and
//! announces its changes, so the leader learns them without asking. At start the last
//! day of those events is replayed from stream `EVENTS`, so a new leader knows the
//! breakers that are open already.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::component::Context;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::integration::gateway::breaker_events::BreakerChange;
use crate::subjects::STREAM_EVENTS;

const SUBJECT: &str = "events.sys.breaker.*";
/// How far back the start-up replay reads.
const REPLAY: Duration = Duration::from_secs(24 * 3600);

/// Open breakers by (service, gateway instance); cheap to clone.
#[derive(Clone, Default)]
pub struct Breakers {
    open: Arc<Mutex<HashMap<(String, String), bool>>>,
}

impl Breakers {
    /// Replays the recent changes, then follows new ones until `stop`.
    pub async fn start(ctx: &Context, stop: CancellationToken) -> Result<Breakers, Error> {
        let breakers = Breakers::default();
        // Subscribed before the replay: a change in between is seen twice, in order.
        let mut live = ctx
            .client
            .subscribe(SUBJECT)
            .await
            .map_err(|e| Error::nats("subscribe to breaker events", e))?;
        breakers.replay(ctx).await;
        let follower = breakers.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = live.next() => match next {
                        Some(message) => message,
                        None => return,
                    },
                };
                follower.apply(&message.headers, &message.payload);
            }
        });
        Ok(breakers)
    }

    async fn replay(&self, ctx: &Context) {
        let Ok(stream) = ctx.jetstream.get_stream(STREAM_EVENTS.name).await else {
            return;
        };
        let since = time::OffsetDateTime::now_utc() - REPLAY;
        let Ok(consumer) = stream
            .create_consumer(OrderedConfig {
                filter_subject: SUBJECT.to_string(),
                deliver_policy: DeliverPolicy::ByStartTime { start_time: since },
                ..Default::default()
            })
            .await
        else {
            return;
        };
        let pending = consumer.cached_info().num_pending as usize;
        let Ok(messages) = consumer.messages().await else {
            return;
        };
        let mut messages = messages.take(pending);
        while let Some(Ok(message)) = messages.next().await {
            self.apply(&message.headers, &message.payload);
        }
    }

    fn apply(&self, headers: &Option<async_nats::HeaderMap>, payload: &[u8]) {
        let Ok(event) = Envelope::<BreakerChange>::decode(headers.as_ref(), payload, "breaker")
        else {
            return;
        };
        let change = event.data;
        if let Ok(mut open) = self.open.lock() {
            open.insert((change.service, change.instance), change.change == "opened");
        }
    }

    /// Services with at least one open breaker, and how many gateway instances have it
    /// open.
    pub fn open(&self) -> HashMap<String, usize> {
        let mut services = HashMap::new();
        if let Ok(open) = self.open.lock() {
            for ((service, _), is_open) in open.iter() {
                if *is_open {
                    *services.entry(service.clone()).or_insert(0) += 1;
                }
            }
        }
        services
    }
}
