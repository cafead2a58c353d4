//! The deliveries of one target's worker: records go out in the order of their key
//! ([`keys`](super::keys)), up to `max_in_flight` at once, and each is settled once
//! its target answered.
//!
//! When a delivery fails and is to be retried, the record is nak'ed with a delay
//! (JetStream redelivers it: retries survive a crash) and its key holds every later
//! record until that redelivery arrives and is settled; held records get in-progress
//! acks so the server does not redeliver them meanwhile. Other keys keep flowing.
//!
//! Delivered records are settled in batches ([`settle`]): one write in flight at a
//! time, taking every record delivered since the previous one started.
//!
//! Everything runs inside the worker's task: deliveries and settles are futures it
//! polls, so a record costs no task spawn and no channel hop, and one wake-up of the
//! worker handles whatever finished meanwhile.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::deliver::{self, Deps, Outcome, Status};
use super::keys::Schedule;
use super::policy::SyncPolicy;
use super::settle;
use crate::data::flow::{Delivery, Target};
use crate::data::record::Record;
use crate::error::Error;
use crate::observability::metrics::SyncMetrics;

/// How often held records get an in-progress ack (far below any ack wait).
pub const KEEP_HELD_EVERY: Duration = Duration::from_secs(1);

/// A record routed to this target.
pub struct Item {
    pub message: Message,
    pub record: Record,
    pub delivery: Delivery,
}

/// A delivery or a settle that finished. Items travel boxed: a record with its message
/// is several hundred bytes, copied at every move otherwise.
pub enum Event {
    Delivered(Box<Item>, Outcome),
    Settled,
    /// The write of a batch of delivered records finished (and they were acked).
    Written,
}

/// The records of one target's worker, and its deliveries and settles in flight.
pub struct Deliveries {
    deps: Arc<Deps>,
    target: Target,
    policy: Arc<SyncPolicy>,
    metrics: Arc<SyncMetrics>,
    schedule: Schedule<Box<Item>>,
    tasks: FuturesUnordered<BoxFuture<'static, Event>>,
    /// Delivered records waiting for the next write.
    delivered: Vec<Item>,
    /// A write of delivered records is in flight.
    writing: bool,
}

impl Deliveries {
    pub fn new(
        deps: Arc<Deps>,
        target: Target,
        policy: SyncPolicy,
        metrics: Arc<SyncMetrics>,
    ) -> Deliveries {
        Deliveries {
            deps,
            target,
            policy: Arc::new(policy),
            metrics,
            schedule: Schedule::default(),
            tasks: FuturesUnordered::new(),
            delivered: Vec::new(),
            writing: false,
        }
    }

    /// A changed policy applies to the deliveries started from now on.
    pub fn set_policy(&mut self, policy: SyncPolicy) {
        self.policy = Arc::new(policy);
        self.start();
    }

    /// Records waiting for a slot or for their key (held ones not counted: they wait
    /// for a redelivery that only pulling brings).
    pub fn ready(&self) -> usize {
        self.schedule.ready()
    }

    /// Whether any delivery or settle is in flight.
    pub fn busy(&self) -> bool {
        !self.tasks.is_empty()
    }

    /// The next delivery or settle to finish (cancel-safe; `None` when none is in
    /// flight).
    pub async fn next(&mut self) -> Option<Event> {
        self.tasks.next().await
    }

    /// Queues a record behind its key (holding it while its key awaits a redelivery)
    /// and starts what can start.
    pub async fn push(&mut self, item: Item) {
        let key = item.delivery.key.clone();
        let seq = item.record.seq;
        if let Some(held) = self.schedule.push(&key, seq, Box::new(item)) {
            let _ = held.message.ack_with(AckKind::Progress).await;
            return;
        }
        self.start();
    }

    /// Handles a finished delivery or settle, and starts what can start.
    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Delivered(item, Outcome::Delivered) => {
                self.schedule.finished(&item.delivery.key, None);
                self.delivered.push(*item);
                self.write();
            }
            Event::Delivered(item, Outcome::GiveUp(err)) => {
                self.schedule.finished(&item.delivery.key, None);
                let (deps, metrics) = (self.deps.clone(), self.metrics.clone());
                let Item {
                    message,
                    record,
                    delivery,
                } = *item;
                self.tasks.push(
                    deliver::settle_failed(deps, message, record, delivery, err, metrics)
                        .map(|()| Event::Settled)
                        .boxed(),
                );
            }
            Event::Delivered(item, Outcome::Retry(err)) => self.retry(*item, err),
            Event::Written => {
                self.writing = false;
                self.write();
            }
            Event::Settled => {}
        }
        self.start();
    }

    /// A delivery to retry: its key waits for the redelivery, the status says pending,
    /// and the record is nak'ed with the policy's delay.
    fn retry(&mut self, item: Item, err: Error) {
        let Item {
            message,
            record,
            delivery,
        } = item;
        self.metrics.retried.increment(1);
        let delay = self.policy.retry_delay(record.delivered);
        tracing::debug!(%err, seq = record.seq, ?delay, "delivery failed; redelivering later");
        // Wait for the redelivery: its delay, plus an ack wait in case it is slow to come
        // back; past that, stop holding the key (the server has the record and will
        // deliver it again).
        let until = Instant::now() + delay + self.policy.ack_wait;
        self.schedule
            .finished(&delivery.key, Some((record.seq, until)));
        let status = Status::new(&record, &delivery, "pending", Some(&err));
        let deps = self.deps.clone();
        self.tasks.push(
            async move {
                // The status first: written after the nak, it could land after the
                // redelivery's own `confirmed` and overwrite it.
                deliver::write_status(&deps, &status).await;
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                Event::Settled
            }
            .boxed(),
        );
    }

    /// In-progress acks for held records, and giving up the waits whose redelivery
    /// did not come.
    pub async fn keep_held(&mut self) {
        for (key, seq) in self.schedule.release_expired(Instant::now()) {
            tracing::warn!(seq, %key, target = %self.target.name, "redelivery did not arrive; releasing the key");
        }
        for item in self.schedule.held() {
            let _ = item.message.ack_with(AckKind::Progress).await;
        }
        self.start();
    }

    /// Gives back every record not yet delivered, for the next owner; what is in
    /// flight finishes ([`Deliveries::finish`]).
    pub async fn give_back(&mut self) {
        for item in self.schedule.drain() {
            let _ = item.message.ack_with(AckKind::Nak(None)).await;
        }
    }

    /// Waits for every delivery and settle in flight.
    pub async fn finish(&mut self) {
        while let Some(event) = self.tasks.next().await {
            self.handle(event);
        }
    }

    /// Starts a write of the delivered records, unless one is in flight (its end starts
    /// the next).
    fn write(&mut self) {
        if self.writing || self.delivered.is_empty() {
            return;
        }
        let take = self.delivered.len().min(crate::nats::batch::MAX_MESSAGES);
        let batch: Vec<Item> = self.delivered.drain(..take).collect();
        self.writing = true;
        let (deps, metrics) = (self.deps.clone(), self.metrics.clone());
        self.tasks.push(
            settle::delivered(deps, batch, metrics)
                .map(|()| Event::Written)
                .boxed(),
        );
    }

    /// Starts deliveries while slots are free and keys can run.
    fn start(&mut self) {
        while let Some(item) = self.schedule.next(self.policy.max_in_flight) {
            let (deps, policy, metrics) =
                (self.deps.clone(), self.policy.clone(), self.metrics.clone());
            self.tasks.push(
                async move {
                    let outcome =
                        deliver::deliver(&deps, &item.record, &item.delivery, &policy, &metrics)
                            .await;
                    Event::Delivered(item, outcome)
                }
                .boxed(),
            );
        }
    }
}
