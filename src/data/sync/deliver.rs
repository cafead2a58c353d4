//! Delivering one record to one target, and settling it afterwards.
//!
//! The delivery is a request to the target's subject carrying the record's headers and
//! payload unchanged, plus `Switchyard-Delivery-Id` (the record id, the same on every
//! redelivery, so an idempotent target applies it once), `Switchyard-Record-Key`,
//! `Switchyard-Target` and `Switchyard-Timeout-Ms`. Any reply without
//! `Nats-Service-Error-Code` is the target's acknowledgement.
//!
//! Settling happens after the target answered, without holding up the key (its next
//! record may go out meanwhile): delivered records in batches ([`super::settle`]), and
//! here a record given up on (dead letter, then its confirmation and status).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderName;
use async_nats::jetstream::{AckKind, Context as JetStream, Message};

use super::policy::SyncPolicy;
use super::settle;
pub use super::status::{Status, status_key, write_status};
use crate::data::cache::Cache;
use crate::data::flow::Delivery;
use crate::data::record::Record;
use crate::envelope::error_from_reply;
use crate::error::Error;
use crate::observability::metrics::SyncMetrics;
use crate::resilience::deadletter::{self, DeadLetter, Failure};
use crate::resilience::errorlog::{ErrorLog, Where};
use crate::subjects::headers as h;

/// The cache namespace of delivery statuses: key `<target>.<record id>`.
pub use crate::data::cache::STATUS_NAMESPACE;
// Header names built once: inserting by `&str` parses and allocates the name each time.
const DELIVERY_ID: HeaderName = HeaderName::from_static(h::DELIVERY_ID);
const RECORD_KEY: HeaderName = HeaderName::from_static(h::RECORD_KEY);
const TARGET: HeaderName = HeaderName::from_static(h::TARGET);
const TIMEOUT_MS: HeaderName = HeaderName::from_static(h::TIMEOUT_MS);

/// What sync needs to deliver and settle; shared by the deliveries of every worker.
pub struct Deps {
    pub client: async_nats::Client,
    pub js: JetStream,
    pub cache: Cache,
    /// Every failed delivery is reported here (`errors.sync`).
    pub errors: ErrorLog,
}

/// How one delivery ended.
#[derive(Debug)]
pub enum Outcome {
    /// The target answered without an error.
    Delivered,
    /// A retryable error with deliveries left: redeliver after a delay.
    Retry(Error),
    /// A permanent error, or the last delivery failed: dead-letter.
    GiveUp(Error),
}

/// Sends `record` to the delivery's target and classifies the answer.
pub async fn deliver(
    deps: &Deps,
    record: &Record,
    delivery: &Delivery,
    policy: &SyncPolicy,
    metrics: &SyncMetrics,
) -> Outcome {
    let started = Instant::now();
    let request = async_nats::Request::new()
        .headers(delivery_headers(record, delivery, policy))
        .payload(record.payload.clone())
        .timeout(Some(policy.timeout));
    let answer = deps
        .client
        .send_request(delivery.target.subject.clone(), request)
        .await;
    let result = match answer {
        Ok(reply) => match error_from_reply(reply.headers.as_ref()) {
            Some(err) => Err(err),
            None => Ok(()),
        },
        Err(err) => Err(Error::from(err)),
    };
    metrics.delivery.record(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => Outcome::Delivered,
        Err(err) => {
            let err = Error::new(
                err.kind(),
                format!("target {}: {}", delivery.target.name, err.message()),
            );
            deps.errors.report(
                "sync",
                &err,
                Where {
                    subject: Some(&delivery.target.subject),
                    traceparent: record.headers.get(h::TRACEPARENT).map(|v| v.as_str()),
                    ..Where::default()
                },
            );
            if err.kind().is_retryable() && record.delivered < policy.max_deliver {
                Outcome::Retry(err)
            } else {
                Outcome::GiveUp(err)
            }
        }
    }
}

/// The headers of one delivery: the record's own plus `Switchyard-Delivery-Id`,
/// `Switchyard-Record-Key`, `Switchyard-Target` and `Switchyard-Timeout-Ms`. The id and
/// the key come from the source; routing refuses a record whose id or key could not be
/// a header value (see [`Record::check`] and [`crate::data::flow::Rule::key_of`]).
pub fn delivery_headers(
    record: &Record,
    delivery: &Delivery,
    policy: &SyncPolicy,
) -> async_nats::HeaderMap {
    let mut headers = record.headers.clone();
    headers.insert(DELIVERY_ID, record.id.as_str());
    headers.insert(RECORD_KEY, delivery.key.as_str());
    headers.insert(TARGET, delivery.target.name.as_str());
    headers.insert(TIMEOUT_MS, policy.timeout.as_millis().to_string());
    headers
}

/// A record given up on: dead-letter it (retrying until stored, since JetStream will
/// not redeliver a record that used its last delivery), mark it failed, tell the
/// source, then terminate it.
pub async fn settle_failed(
    deps: Arc<Deps>,
    message: Message,
    record: Record,
    delivery: Delivery,
    error: Error,
    metrics: Arc<SyncMetrics>,
) {
    let letter = DeadLetter {
        component: "sync",
        subject: &record.subject,
        headers: &record.headers,
        payload: record.payload.clone(),
        error: &error,
        deliveries: record.delivered,
        origin: record.origin(),
        target: Some(&delivery.target.name),
    };
    let consumer = crate::subjects::sync_consumer(&delivery.target.name).ok();
    let failure = Failure {
        consumer: consumer.as_deref(),
        ..Failure::default()
    };
    let mut delay = Duration::from_millis(100);
    while let Err(err) = deadletter::publish_with(&deps.js, &letter, &failure).await {
        tracing::warn!(%err, "cannot dead-letter a record yet; retrying");
        let _ = message.ack_with(AckKind::Progress).await;
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    let updated = crate::integration::registry::registrar::now();
    let told = match settle::prepare(&record, &delivery, "failed", Some(&error), &updated) {
        Ok((confirmation, status)) => settle::store(&deps, &[confirmation], &[status]).await,
        Err(err) => Err(err),
    };
    if let Err(err) = told {
        tracing::warn!(%err, "cannot tell the source a record failed; it is in the DLQ");
    }
    metrics.dead_lettered.increment(1);
    if let Err(err) = message.ack_with(AckKind::Term).await {
        tracing::warn!(%err, "cannot terminate a dead-lettered record");
    }
}
