//! One target's worker: pulls the target's consumer, keeps the records the flow rules
//! route to this target, and hands them to its [`Deliveries`] (order per key).
//!
//! A record may only be routed once the rules are known up to the time it was stored
//! ([`Rules::current_through`], a round trip when records are newer than the last
//! proof). The proof is pipelined: while one is in flight, records keep arriving and
//! wait; when it returns, everything received before it was asked is routed, and the
//! next proof covers what came meanwhile. Pulling never stops for a round trip.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use futures::future::BoxFuture;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::consumer::{self, GROUP};
use super::deliver::Deps;
use super::deliveries::{Deliveries, Item, KEEP_HELD_EVERY};
use super::policy::SyncPolicies;
use super::recovery::Recovery;
use crate::component::Context;
use crate::data::flow::{Rules, Target};
use crate::data::record::Record;
use crate::error::Error;
use crate::observability::metrics::SyncMetrics;
use crate::subjects::{STREAM_DATA, sync_consumer};

/// How long a pull waits before asking again; far below the pin timeout so the pin is
/// never lost between pulls.
const PULL_EXPIRES: Duration = Duration::from_millis(1000);
const PULL_HEARTBEAT: Duration = Duration::from_millis(400);
/// How often a worker taking over checks whether the records pending at its start are
/// settled (and renews its hold on the newer ones).
const RECOVERY_CHECK: Duration = Duration::from_millis(500);
/// Records asked for per pull, at least.
const PULL_BATCH: usize = 256;
/// Records received and not yet delivering (held ones aside) past which the worker
/// stops taking more from the pull stream until deliveries catch up.
const MAX_READY: usize = 4096;
/// Delays between proofs that failed (the rules cannot be checked).
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Everything a worker shares with the others.
#[derive(Clone)]
pub struct Shared {
    pub ctx: Context,
    pub deps: Arc<Deps>,
    pub rules: Rules,
    pub policies: SyncPolicies,
}

/// Runs until `stop`, then finishes the deliveries in flight, gives back the records it
/// holds, and releases its pin so the next owner starts at once.
pub async fn run(shared: Shared, target: Target, since: OffsetDateTime, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    while !stop.is_cancelled() {
        match pull(&shared, &target, since, &stop).await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(%err, target = %target.name, "sync worker restarting");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    if let Ok(name) = sync_consumer(&target.name)
        && let Ok(stream) = shared.ctx.jetstream.get_stream(STREAM_DATA.name).await
        && let Err(err) = stream.unpin_consumer(&name, GROUP).await
    {
        tracing::debug!(%err, target = %target.name, "unpin after stop");
    }
    tracing::info!(target = %target.name, "sync worker stopped");
}

async fn pull(
    shared: &Shared,
    target: &Target,
    since: OffsetDateTime,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let js = &shared.ctx.jetstream;
    let policy = shared.policies.get(&target.name);
    let mut consumer = consumer::ensure(js, &target.name, since, &policy).await?;
    let info = consumer
        .info()
        .await
        .map_err(|e| Error::nats("read the target's consumer", e))?;
    let mut recovery = Recovery::at_start(info, policy.ack_wait, policy.pin_timeout);
    let mut messages = consumer
        .stream()
        .group(GROUP)
        .max_messages_per_batch(policy.max_in_flight.max(PULL_BATCH))
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(|e| Error::nats("pull from the target's consumer", e))?;
    let metrics = Arc::new(SyncMetrics::new(&target.name));
    let deliveries = Deliveries::new(shared.deps.clone(), target.clone(), policy, metrics.clone());
    let mut router = Router::new(shared, target, deliveries, metrics);
    let mut proof: Option<Proof> = None;
    // Change notifications as a stream, so one waiter is registered for the life of the
    // loop rather than one per turn.
    let mut policy_changes = Box::pin(
        futures::stream::unfold(shared.policies.changes(), |mut changes| async move {
            changes.changed().await.ok().map(|()| ((), changes))
        })
        .fuse(),
    );
    let mut recovery_check = tokio::time::interval(RECOVERY_CHECK);
    let mut keep_held = tokio::time::interval(KEEP_HELD_EVERY);
    // Made once, not per turn of the loop: each would register with (and leave) the
    // token's list of waiters every time.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let result = loop {
        let proving = async {
            match proof.as_mut() {
                Some(p) => (&mut p.done).await,
                None => std::future::pending().await,
            }
        };
        let room = router.waiting.len() + router.deliveries.ready() < MAX_READY;
        let in_flight = router.deliveries.busy();
        tokio::select! {
            _ = &mut stopped => break Ok(()),
            Some(event) = router.deliveries.next(), if in_flight => router.deliveries.handle(event),
            proven = proving => {
                if let Some(p) = proof.take() {
                    proof = router.proven(p, proven).await;
                }
            }
            next = messages.next(), if room => match next {
                None => break Err(Error::unavailable("the consumer's pull stream ended")),
                Some(Err(err)) => {
                    tracing::debug!(%err, target = %target.name, "pull status");
                }
                Some(Ok(message)) => match recovery.as_mut() {
                    Some(r) => {
                        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
                        r.hold(message, seq).await;
                    }
                    None => router.accept(message).await,
                },
            },
            _ = keep_held.tick() => router.deliveries.keep_held().await,
            _ = recovery_check.tick(), if recovery.is_some() => {
                let floor = consumer.info().await.ok().map(|i| i.ack_floor.stream_sequence);
                if let Some(r) = recovery.take_if(|r| r.done(floor)) {
                    for message in r.release() {
                        router.accept(message).await;
                    }
                } else if let Some(r) = &recovery {
                    r.keep_held().await;
                }
            }
            Some(()) = policy_changes.next() => {
                // Ack wait and max deliveries live on the consumer; update it in place
                // (a new pull would lose the pin for the pin timeout).
                let policy = shared.policies.get(&target.name);
                if let Err(err) = consumer::ensure(js, &target.name, since, &policy).await {
                    break Err(err);
                }
                router.deliveries.set_policy(policy);
            }
        }
        if proof.is_none() {
            proof = router.prove();
        }
    };
    // Stop pulling first (so the server does not hand us more), give back what was not
    // routed and what waits for its key, then let the deliveries in flight finish and
    // settle.
    drop(messages);
    router.give_back().await;
    router.deliveries.give_back().await;
    router.deliveries.finish().await;
    result
}

/// A proof in flight that the rules are current, covering the first `covers` records
/// waiting to be routed.
struct Proof {
    covers: usize,
    done: BoxFuture<'static, Result<(), Error>>,
}

/// Records received and waiting for their proof, and where they go once proven.
struct Router<'a> {
    shared: &'a Shared,
    target: &'a Target,
    deliveries: Deliveries,
    metrics: Arc<SyncMetrics>,
    waiting: VecDeque<(Message, Record)>,
    /// The newest stored time among `waiting`.
    newest: Option<OffsetDateTime>,
    retry: Duration,
}

impl<'a> Router<'a> {
    fn new(
        shared: &'a Shared,
        target: &'a Target,
        deliveries: Deliveries,
        metrics: Arc<SyncMetrics>,
    ) -> Self {
        Router {
            shared,
            target,
            deliveries,
            metrics,
            waiting: VecDeque::new(),
            newest: None,
            retry: RETRY_MIN,
        }
    }

    async fn accept(&mut self, mut message: Message) {
        match Record::take_from(&mut message) {
            Ok(record) => {
                self.newest = self.newest.max(Some(record.stored));
                self.waiting.push_back((message, record));
            }
            Err(err) => {
                tracing::warn!(%err, "not a data record; acked");
                let _ = message.ack().await;
            }
        }
    }

    /// A proof for everything waiting, if anything is.
    fn prove(&mut self) -> Option<Proof> {
        let newest = self.newest?;
        let rules: Rules = self.shared.rules.clone();
        Some(Proof {
            covers: self.waiting.len(),
            done: Box::pin(async move { rules.current_through(newest).await }),
        })
    }

    /// Routes what `proof` covered, or retries it after a delay when it failed.
    async fn proven(&mut self, proof: Proof, proven: Result<(), Error>) -> Option<Proof> {
        if let Err(err) = proven {
            tracing::warn!(%err, "flow rules not current; waiting before routing");
            for (message, _) in &self.waiting {
                let _ = message.ack_with(AckKind::Progress).await;
            }
            let (rules, delay) = (self.shared.rules.clone(), self.retry);
            let newest = self.newest?;
            self.retry = (self.retry * 2).min(RETRY_MAX);
            return Some(Proof {
                covers: proof.covers,
                done: Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    rules.current_through(newest).await
                }),
            });
        }
        self.retry = RETRY_MIN;
        for _ in 0..proof.covers {
            let Some((message, record)) = self.waiting.pop_front() else {
                break;
            };
            self.route(message, record).await;
        }
        if self.waiting.is_empty() {
            self.newest = None;
        }
        None
    }

    /// To the deliveries when the rules send it to this target; otherwise acked at
    /// once (not for this target, or malformed: the flow dead-letters those).
    async fn route(&mut self, message: Message, record: Record) {
        let name = &self.target.name;
        let delivery = match self.shared.rules.route(&record) {
            Ok(route) => route
                .deliveries
                .into_iter()
                .find(|d| &d.target.name == name),
            Err(_) => {
                self.metrics.malformed.increment(1);
                let _ = message.ack().await;
                return;
            }
        };
        let Some(delivery) = delivery else {
            self.metrics.not_routed.increment(1);
            let _ = message.ack().await;
            return;
        };
        self.deliveries
            .push(Item {
                message,
                record,
                delivery,
            })
            .await;
    }

    /// Records not yet routed go back to the server, in order, for the next owner.
    async fn give_back(&mut self) {
        for (message, _) in self.waiting.drain(..) {
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
    }
}
