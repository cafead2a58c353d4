//! Delivering one record to one target, and settling it afterwards.
//!
//! The delivery is a request to the target's subject carrying the record's headers and
//! payload unchanged, plus `Switchyard-Delivery-Id` (the record id, the same on every
//! redelivery, so an idempotent target applies it once), `Switchyard-Record-Key`,
//! `Switchyard-Target` and `Switchyard-Timeout-Ms`. Any reply without
//! `Nats-Service-Error-Code` is the target's acknowledgement.
//!
//! Settling happens after the target answered, without holding up the key (its next
//! record may go out meanwhile): the confirmation to `data.confirm.<source>` and the status in
//! the cache are stored, then the record is acked. A crash in between redelivers the
//! record; the target sees the same delivery id, and the confirmation's `Nats-Msg-Id`
//! lets the stream store it once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderName;
use async_nats::jetstream::{AckKind, Context as JetStream, Message};
use bytes::Bytes;

use super::policy::SyncPolicy;
use super::status::{self, StatusView};
pub use super::status::{Status, status_key, write_status};
use crate::data::cache::Cache;
use crate::data::flow::Delivery;
use crate::data::record::Record;
use crate::envelope::{ContentType, Meta, error_from_reply};
use crate::error::Error;
use crate::observability::metrics::SyncMetrics;
use crate::resilience::deadletter::{self, DeadLetter, Failure};
use crate::resilience::errorlog::{ErrorLog, Where};
use crate::subjects::{self, headers as h};

/// The cache namespace of delivery statuses: key `<target>.<record id>`.
pub use crate::data::cache::STATUS_NAMESPACE;
const SOURCE: &str = "urn:switchyard:sync";
const RECORD_TYPE: &str = "io.switchyard.data.record";
const CONFIRMED_TYPE: &str = "io.switchyard.data.confirmed";
// Header names built once: inserting by `&str` parses and allocates the name each time.
const DELIVERY_ID: HeaderName = HeaderName::from_static(h::DELIVERY_ID);
const RECORD_KEY: HeaderName = HeaderName::from_static(h::RECORD_KEY);
const TARGET: HeaderName = HeaderName::from_static(h::TARGET);
const TIMEOUT_MS: HeaderName = HeaderName::from_static(h::TIMEOUT_MS);
const NATS_MSG_ID: HeaderName = HeaderName::from_static(h::NATS_MSG_ID);

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

/// Stores the confirmation for the source, in the record's codec, once per record and
/// target (`Nats-Msg-Id`). `json` is the status already encoded as JSON, reused as the
/// payload when the record's codec is JSON.
async fn confirm(
    deps: &Deps,
    record: &Record,
    status: &StatusView<'_>,
    json: &Bytes,
) -> Result<(), Error> {
    let meta =
        Meta::from_headers(Some(&record.headers), RECORD_TYPE)?.follow_up(SOURCE, CONFIRMED_TYPE);
    let payload = match meta.content_type {
        ContentType::Json => json.clone(),
        codec => Bytes::from(codec.encode(status)?),
    };
    let mut headers = meta.to_headers();
    headers.insert(TARGET, status.target);
    headers.insert(
        NATS_MSG_ID,
        format!(
            "confirm:{}:{}:{}:{}",
            status.status,
            status.target,
            subjects::STREAM_DATA.name,
            record.seq
        ),
    );
    let subject = subjects::data_confirm(&record.source)?;
    deps.js
        .publish_with_headers(subject, headers, payload)
        .await
        .map_err(|e| Error::nats("publish confirmation", e))?
        .await
        .map_err(|e| Error::nats("store confirmation", e))?;
    Ok(())
}

/// Confirms and stores the status at once; the confirmation's result.
async fn confirm_and_store(
    deps: &Deps,
    record: &Record,
    status: &StatusView<'_>,
) -> Result<(), Error> {
    let json = status.to_json()?;
    let (confirmed, ()) = tokio::join!(
        confirm(deps, record, status, &json),
        status::store(deps, status.target, status.record_id, json.clone())
    );
    confirmed
}

/// After the target answered: confirm, store the status, then ack. A confirmation that
/// cannot be stored leaves the record unacked, so it comes back (the target sees the
/// same delivery id) rather than going unconfirmed.
pub async fn settle_delivered(
    deps: Arc<Deps>,
    message: Message,
    record: Record,
    delivery: Delivery,
    metrics: Arc<SyncMetrics>,
) {
    let status = StatusView::new(&record, &delivery, "confirmed", None);
    match confirm_and_store(&deps, &record, &status).await {
        Ok(()) => {
            metrics.delivered.increment(1);
            if let Err(err) = message.ack().await {
                tracing::warn!(%err, "cannot ack a delivered record; it will be redelivered");
            }
        }
        Err(err) => {
            tracing::warn!(%err, "cannot confirm a delivered record; redelivering it");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
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
    let status = StatusView::new(&record, &delivery, "failed", Some(&error));
    if let Err(err) = confirm_and_store(&deps, &record, &status).await {
        tracing::warn!(%err, "cannot tell the source a record failed; it is in the DLQ");
    }
    metrics.dead_lettered.increment(1);
    if let Err(err) = message.ack_with(AckKind::Term).await {
        tracing::warn!(%err, "cannot terminate a dead-lettered record");
    }
}
