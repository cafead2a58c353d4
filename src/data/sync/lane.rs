//! One lane of a target's worker: delivers its records one at a time, so the records
//! of a key (which always hash to the same lane) reach the target in order.
//!
//! When a delivery fails and is to be retried, the record is nak'ed with a delay
//! (JetStream redelivers it: retries survive a crash) and the lane holds every later
//! record until that redelivery arrives and is settled; held records get in-progress
//! acks so the server does not redeliver them meanwhile. Other lanes keep flowing.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::deliver::{self, Outcome, Status};
use super::worker::Shared;
use crate::data::flow::{Delivery, Target};
use crate::data::record::Record;
use crate::observability::metrics as m;

/// Records waiting for one lane; a full lane makes the worker stop routing (and so
/// pulling) until it has room.
const LANE_QUEUE: usize = 256;

/// A record on its way to a lane.
pub struct Item {
    pub message: Message,
    pub record: Record,
    pub delivery: Delivery,
}

/// Starts `count` lanes; returns their queues and tasks.
pub fn start(
    shared: &Shared,
    target: &Target,
    count: usize,
    stop: &CancellationToken,
) -> (Vec<mpsc::Sender<Item>>, Vec<tokio::task::JoinHandle<()>>) {
    let mut queues = Vec::with_capacity(count);
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let (tx, rx) = mpsc::channel(LANE_QUEUE);
        queues.push(tx);
        let lane = Lane::new(shared.clone(), target.clone(), rx, stop.clone());
        tasks.push(shared.ctx.spawn(lane.run()));
    }
    (queues, tasks)
}

/// The lane of a key, out of `lanes`.
pub fn lane_of(key: &str, lanes: usize) -> usize {
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % lanes.max(1) as u64) as usize
}

/// Delivers its records one at a time, holding later ones while a failed record waits
/// for its redelivery.
struct Lane {
    shared: Shared,
    target: Target,
    queue: mpsc::Receiver<Item>,
    stop: CancellationToken,
    /// The sequence awaited for redelivery, and until when it is awaited.
    waiting_for: Option<(u64, Instant)>,
    held: VecDeque<Item>,
}

impl Lane {
    fn new(
        shared: Shared,
        target: Target,
        queue: mpsc::Receiver<Item>,
        stop: CancellationToken,
    ) -> Lane {
        Lane {
            shared,
            target,
            queue,
            stop,
            waiting_for: None,
            held: VecDeque::new(),
        }
    }

    async fn run(mut self) {
        let mut progress = tokio::time::interval(Duration::from_secs(1));
        loop {
            if self.waiting_for.is_none()
                && let Some(item) = self.held.pop_front()
            {
                self.process(item).await;
                continue;
            }
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = progress.tick() => self.keep_held().await,
                next = self.queue.recv() => match next {
                    None => break,
                    Some(item) => match self.waiting_for {
                        Some((seq, _)) if item.record.seq != seq => {
                            let _ = item.message.ack_with(AckKind::Progress).await;
                            self.held.push_back(item);
                        }
                        _ => self.process(item).await,
                    },
                },
            }
        }
        // Give back what was not delivered, in order, for the next owner.
        self.queue.close();
        while let Some(item) = self.queue.recv().await {
            self.held.push_back(item);
        }
        for item in self.held.drain(..) {
            let _ = item.message.ack_with(AckKind::Nak(None)).await;
        }
    }

    async fn process(&mut self, item: Item) {
        let Item {
            message,
            record,
            delivery,
        } = item;
        if self.waiting_for.is_some_and(|(seq, _)| seq == record.seq) {
            self.waiting_for = None;
        }
        let policy = self.shared.policies.get(&self.target.name);
        let deps = self.shared.deps.clone();
        match deliver::deliver(&deps, &record, &delivery, &policy).await {
            Outcome::Delivered => {
                self.shared
                    .ctx
                    .spawn(deliver::settle_delivered(deps, message, record, delivery));
            }
            Outcome::GiveUp(err) => {
                self.shared
                    .ctx
                    .spawn(deliver::settle_failed(deps, message, record, delivery, err));
            }
            Outcome::Retry(err) => {
                m::sync_outcome(&self.target.name, "retried");
                let delay = policy.retry_delay(record.delivered);
                tracing::debug!(%err, seq = record.seq, ?delay, "delivery failed; redelivering later");
                let status = Status::new(&record, &delivery, "pending", Some(&err));
                self.shared
                    .ctx
                    .spawn(async move { deliver::write_status(&deps, &status).await });
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                // Wait for the redelivery: its delay, plus an ack wait in case it is
                // slow to come back; past that, stop holding this lane (the server has
                // it and will deliver it again).
                let until = Instant::now() + delay + policy.ack_wait;
                self.waiting_for = Some((record.seq, until));
            }
        }
    }

    /// In-progress acks for held records, and giving up the wait when the awaited
    /// redelivery does not come.
    async fn keep_held(&mut self) {
        if let Some((seq, until)) = self.waiting_for
            && Instant::now() > until
        {
            tracing::warn!(seq, target = %self.target.name, "redelivery did not arrive; releasing the lane");
            self.waiting_for = None;
        }
        for item in &self.held {
            let _ = item.message.ack_with(AckKind::Progress).await;
        }
    }
}
