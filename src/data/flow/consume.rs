//! The flow component's work: read every record of `data.in.>` once (durable consumer
//! `flow`, shared by every instance), and settle it by its route:
//!
//! - routed: ack; data sync delivers it from its own consumers.
//! - unrouted: a copy on `data.unrouted` (stream DATA), stored once however often the
//!   record is delivered (`Nats-Msg-Id: unrouted:DATA:<seq>`), then ack.
//! - malformed: a dead letter in stream DLQ, then ack.
//!
//! The ack is a plain publish (`+ACK`), not a request: no round trip per record. An ack
//! lost on the way only means the record comes back after the ack wait, and both copies
//! are de-duplicated by their message ids. When a copy cannot be stored for now (stream
//! unavailable, rules view behind), the record is nak'ed with a delay and comes back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, Stream as Messages};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{AckKind, Context as JetStream, Message};
use futures::StreamExt;
use futures::future::BoxFuture;
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use super::view::Rules;
use crate::component::Context;
use crate::data::record::Record;
use crate::envelope::without_publish_controls;
use crate::error::Error;
use crate::observability::metrics as m;
use crate::resilience::deadletter::{self, DeadLetter, Failure};
use crate::resilience::errorlog::{ErrorLog, Where};
use crate::subjects::{DATA_UNROUTED, FLOW_CONSUMER, STREAM_DATA, headers as h};

/// Filter of consumer `flow`: every record.
pub const FILTER: &str = "data.in.>";
/// Copies (unrouted records, dead letters) being stored at once per instance. Records
/// waiting for their route are bounded by the consumer's [`MAX_ACK_PENDING`].
pub const MAX_IN_FLIGHT: usize = 256;
/// Delivered but unacked records of the consumer, all instances together.
pub const MAX_ACK_PENDING: i64 = 4096;
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// When a record comes back after its copy could not be stored.
pub const RETRY_DELAY: Duration = Duration::from_secs(2);
/// Missed heartbeats in a row after which the consumer is looked up again (it may
/// have vanished with a server restart while the stream of messages never ends).
const MISSED_HEARTBEATS: u32 = 3;
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The component name, a metric and dead-letter label.
pub const COMPONENT: &str = "flow";

/// Creates (or updates in place) consumer `flow` and starts reading it.
pub async fn consume(js: &JetStream) -> Result<Messages, Error> {
    let config = pull::Config {
        durable_name: Some(FLOW_CONSUMER.to_string()),
        description: Some("Switchyard data flow: unrouted and malformed records".into()),
        filter_subject: FILTER.to_string(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        // Never give up on a record: one that cannot be settled keeps coming back,
        // rather than being dropped once the deliveries run out.
        max_deliver: -1,
        max_ack_pending: MAX_ACK_PENDING,
        deliver_policy: DeliverPolicy::All,
        ..Default::default()
    };
    let consumer: PullConsumer = js
        .create_consumer_on_stream(config, STREAM_DATA.name)
        .await
        .map_err(|e| Error::nats("create consumer flow on DATA", e))?;
    consumer
        .messages()
        .await
        .map_err(|e| Error::nats("consume flow", e))
}

/// Settles records: routed ones (nearly all) in the reading task, the others (a copy
/// to store) in tasks of their own, [`MAX_IN_FLIGHT`] at a time.
pub struct Worker {
    js: JetStream,
    rules: Rules,
    routed: metrics::Counter,
    unrouted: metrics::Counter,
    malformed: metrics::Counter,
    errors: ErrorLog,
}

/// A proof in flight that the rules are current, for the first `covers` records
/// waiting.
struct Proof {
    covers: usize,
    done: BoxFuture<'static, Result<(), Error>>,
}

impl Worker {
    pub fn new(js: JetStream, rules: Rules, errors: ErrorLog) -> Worker {
        let outcome = |o: &'static str| metrics::counter!(m::FLOW_RECORDS_TOTAL, "outcome" => o);
        Worker {
            js,
            rules,
            errors,
            routed: outcome("routed"),
            unrouted: outcome("unrouted"),
            malformed: outcome("malformed"),
        }
    }

    /// Reads `messages` until shutdown, recreating the consumer when it is lost.
    ///
    /// A record can only be routed once the rules are known up to its stored time
    /// ([`Rules::current_through`]). Records wait for that proof together: while one is
    /// in flight, records keep arriving; when it returns, everything it covers is
    /// settled and the next proof covers what came meanwhile. A routed record only needs
    /// its ack, sent from here; a copy to store runs in [`Context::spawn`], so the
    /// graceful stop waits for those taken.
    pub async fn run(self: Arc<Self>, ctx: Context, mut messages: Messages) {
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let stop = ctx.shutdown().clone();
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        let mut waiting: VecDeque<(Message, Record)> = VecDeque::new();
        let mut newest: Option<OffsetDateTime> = None;
        let mut proof: Option<Proof> = None;
        let mut missed = 0;
        let mut backoff = Duration::from_millis(100);
        loop {
            if proof.is_none()
                && let Some(newest) = newest.take()
            {
                let rules = self.rules.clone();
                proof = Some(Proof {
                    covers: waiting.len(),
                    done: Box::pin(async move { rules.current_through(newest).await }),
                });
            }
            let proving = async {
                match proof.as_mut() {
                    Some(p) => (&mut p.done).await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                biased;
                _ = &mut stopped => break,
                proven = proving => {
                    if let Some(p) = proof.take() {
                        let covered: Vec<_> = waiting.drain(..p.covers.min(waiting.len())).collect();
                        self.settle_proven(&ctx, &permits, covered, proven).await;
                    }
                    continue;
                }
                next = messages.next() => next,
            };
            let lost = match next {
                Some(Ok(mut message)) => {
                    missed = 0;
                    backoff = Duration::from_millis(100);
                    match Record::take_from(&mut message) {
                        Ok(record) => {
                            newest = newest.max(Some(record.stored));
                            waiting.push_back((message, record));
                        }
                        Err(err) => {
                            // Only a misconfigured consumer delivers this; it stays in
                            // its stream.
                            tracing::error!(%err, subject = %message.subject, "consumer flow got a message that is not a record; terminating it");
                            settle(&message, AckKind::Term).await;
                        }
                    }
                    false
                }
                Some(Err(err)) => {
                    use pull::MessagesErrorKind as K;
                    match err.kind() {
                        K::MissingHeartbeat => {
                            missed += 1;
                            missed >= MISSED_HEARTBEATS
                        }
                        K::ConsumerDeleted | K::NoResponders => true,
                        _ => {
                            // Not in a tight loop while the connection is down.
                            tracing::debug!(%err, "consumer flow: transient error");
                            tokio::select! {
                                _ = &mut stopped => break,
                                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            }
                            false
                        }
                    }
                }
                None => true,
            };
            if !lost {
                continue;
            }
            tracing::warn!("consumer flow lost; creating it again");
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                match consume(&self.js).await {
                    Ok(fresh) => {
                        messages = fresh;
                        missed = 0;
                        break;
                    }
                    Err(err) => tracing::warn!(%err, "cannot create consumer flow; retrying"),
                }
            }
        }
        // Taken but not settled: let another instance have them now.
        for (message, _) in waiting {
            settle(&message, AckKind::Nak(None)).await;
        }
        tracing::debug!("consumer flow stopped");
    }

    /// Settles the records a proof covered: routed ones here, the others in a task.
    async fn settle_proven(
        self: &Arc<Self>,
        ctx: &Context,
        permits: &Arc<Semaphore>,
        covered: Vec<(Message, Record)>,
        proven: Result<(), Error>,
    ) {
        if let Err(err) = proven {
            tracing::warn!(%err, records = covered.len(), "flow rules not current; records come back in {RETRY_DELAY:?}");
            for (message, _) in covered {
                settle(&message, AckKind::Nak(Some(RETRY_DELAY))).await;
            }
            return;
        }
        for (message, record) in covered {
            let route = self.rules.route(&record);
            if matches!(&route, Ok(route) if !route.is_unrouted()) {
                self.routed.increment(1);
                settle(&message, AckKind::Ack).await;
                continue;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let worker = self.clone();
            ctx.spawn(async move {
                let outcome = match route {
                    Ok(_) => worker
                        .copy_unrouted(&record)
                        .await
                        .map(|()| &worker.unrouted),
                    Err(err) => worker
                        .dead_letter(&record, &err)
                        .await
                        .map(|()| &worker.malformed),
                };
                worker.finish(&message, &record, outcome).await;
                drop(permit);
            });
        }
    }

    /// Acks a record whose copy is stored; otherwise naks it (it comes back) or, when
    /// the copy can never be stored, terminates it.
    async fn finish(
        &self,
        message: &Message,
        record: &Record,
        outcome: Result<&metrics::Counter, Error>,
    ) {
        match outcome {
            Ok(counter) => {
                counter.increment(1);
                settle(message, AckKind::Ack).await;
            }
            Err(err) if err.kind().is_retryable() => {
                tracing::warn!(%err, origin = %record.origin(), "record not settled; it comes back in {RETRY_DELAY:?}");
                settle(message, AckKind::Nak(Some(RETRY_DELAY))).await;
            }
            Err(err) => {
                // A copy that can never be stored (too large once the headers are added,
                // a subject no dead-letter subject can name): the record stays in stream
                // DATA, the server publishes a MSG_TERMINATED advisory, and this is logged.
                tracing::error!(%err, origin = %record.origin(), subject = %record.subject, "cannot store a copy of this record; terminating it (it stays in stream DATA)");
                settle(message, AckKind::Term).await;
            }
        }
    }

    async fn copy_unrouted(&self, record: &Record) -> Result<(), Error> {
        let mut headers = without_publish_controls(&record.headers);
        headers.insert(h::ORIGINAL_SUBJECT, record.subject.as_str());
        headers.insert(h::ORIGINAL_SEQ, record.origin());
        headers.insert(h::NATS_MSG_ID, format!("unrouted:{}", record.origin()));
        self.js
            .publish_with_headers(DATA_UNROUTED, headers, record.payload.clone())
            .await?
            .await?;
        tracing::debug!(origin = %record.origin(), subject = %record.subject, "unrouted record");
        Ok(())
    }

    async fn dead_letter(&self, record: &Record, err: &Error) -> Result<(), Error> {
        self.errors.report(
            COMPONENT,
            err,
            Where {
                subject: Some(&record.subject),
                traceparent: record.headers.get(h::TRACEPARENT).map(|v| v.as_str()),
                ..Where::default()
            },
        );
        let headers = without_publish_controls(&record.headers);
        deadletter::publish_with(
            &self.js,
            &DeadLetter {
                component: COMPONENT,
                subject: &record.subject,
                headers: &headers,
                payload: record.payload.clone(),
                error: err,
                deliveries: record.delivered,
                origin: record.origin(),
                target: None,
            },
            &Failure {
                consumer: Some(FLOW_CONSUMER),
                ..Failure::default()
            },
        )
        .await
        .map(|_| ())
    }
}

/// Acks, naks or terminates: a plain publish, no reply awaited. If it is lost, the
/// record is delivered again after the ack wait and settled the same way.
async fn settle(message: &Message, kind: AckKind) {
    if let Err(err) = message.ack_with(kind).await {
        tracing::debug!(%err, "cannot settle a record of consumer flow");
    }
}
