//! Delivering one record to one target, and settling it afterwards.
//!
//! The delivery is a request to the target's subject carrying the record's headers and
//! payload unchanged, plus `Switchyard-Delivery-Id` (the record id, the same on every
//! redelivery, so an idempotent target applies it once), `Switchyard-Record-Key`,
//! `Switchyard-Target` and `Switchyard-Timeout-Ms`. Any reply without
//! `Nats-Service-Error-Code` is the target's acknowledgement.
//!
//! Settling happens after the target answered, off the lane (the next record of the key
//! may go out meanwhile): the confirmation to `data.confirm.<source>` and the status in
//! the cache are stored, then the record is acked. A crash in between redelivers the
//! record; the target sees the same delivery id, and the confirmation's `Nats-Msg-Id`
//! lets the stream store it once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, Context as JetStream, Message};
use bytes::Bytes;
use serde::Serialize;

use super::policy::SyncPolicy;
use crate::data::cache::Cache;
use crate::data::flow::Delivery;
use crate::data::record::Record;
use crate::envelope::{Envelope, Meta, error_from_reply};
use crate::error::Error;
use crate::observability::metrics as m;
use crate::resilience::deadletter::{self, DeadLetter};
use crate::subjects::{self, headers as h};

/// The cache namespace of delivery statuses: key `<target>.<record id>`.
pub use crate::data::cache::STATUS_NAMESPACE;
const SOURCE: &str = "urn:switchyard:sync";
const RECORD_TYPE: &str = "io.switchyard.data.record";
const CONFIRMED_TYPE: &str = "io.switchyard.data.confirmed";

/// What sync needs to deliver and settle; shared by the lanes of every worker.
pub struct Deps {
    pub client: async_nats::Client,
    pub js: JetStream,
    pub cache: Cache,
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
) -> Outcome {
    let started = Instant::now();
    let mut headers = record.headers.clone();
    headers.insert(h::DELIVERY_ID, record.id.as_str());
    headers.insert(h::RECORD_KEY, delivery.key.as_str());
    headers.insert(h::TARGET, delivery.target.name.as_str());
    headers.insert(h::TIMEOUT_MS, policy.timeout.as_millis().to_string());
    let request = async_nats::Request::new()
        .headers(headers)
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
    m::sync_delivery(&delivery.target.name, started.elapsed());
    match result {
        Ok(()) => Outcome::Delivered,
        Err(err) => {
            let err = Error::new(
                err.kind(),
                format!("target {}: {}", delivery.target.name, err.message()),
            );
            if err.kind().is_retryable() && record.delivered < policy.max_deliver {
                Outcome::Retry(err)
            } else {
                Outcome::GiveUp(err)
            }
        }
    }
}

/// The status of one record at one target, in the cache (namespace `status`) and in KV
/// `cache` under `status.<target>.<record id>`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Status {
    pub record_id: String,
    pub target: String,
    pub source: String,
    pub subject: String,
    pub seq: u64,
    pub key: String,
    /// `pending` (a delivery failed and will be retried), `confirmed` (the target
    /// answered and the source was told) or `failed` (dead-lettered).
    pub status: String,
    pub deliveries: i64,
    /// RFC 3339.
    pub updated: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Status {
    pub fn new(
        record: &Record,
        delivery: &Delivery,
        status: &str,
        error: Option<&Error>,
    ) -> Status {
        Status {
            record_id: record.id.clone(),
            target: delivery.target.name.clone(),
            source: record.source.clone(),
            subject: record.subject.clone(),
            seq: record.seq,
            key: delivery.key.clone(),
            status: status.to_string(),
            deliveries: record.delivered,
            updated: crate::integration::registry::registrar::now(),
            error: error.map(ToString::to_string),
        }
    }
}

/// The cache key of a record's status at a target. A record id that is not a valid key
/// token (ids come from sources) is hex-encoded, prefixed with `x`.
pub fn status_key(target: &str, record_id: &str) -> String {
    let safe = !record_id.is_empty()
        && record_id.len() <= 128
        && record_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=');
    if safe {
        format!("{target}.{record_id}")
    } else {
        let hex: String = record_id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{target}.x{hex}")
    }
}

/// Writes the status (best effort: a status that cannot be written is logged; the
/// record's delivery does not depend on it).
pub async fn write_status(deps: &Deps, status: &Status) {
    let key = status_key(&status.target, &status.record_id);
    let value = match serde_json::to_vec(status) {
        Ok(value) => Bytes::from(value),
        Err(err) => return tracing::warn!(%err, "cannot encode a status"),
    };
    if let Err(err) = deps.cache.put(STATUS_NAMESPACE, &key, value).await {
        tracing::warn!(%err, %key, "cannot store a delivery status");
    }
}

/// Stores the confirmation for the source, in the record's codec, once per record and
/// target (`Nats-Msg-Id`).
async fn confirm(deps: &Deps, record: &Record, status: &Status) -> Result<(), Error> {
    let meta =
        Meta::from_headers(Some(&record.headers), RECORD_TYPE)?.follow_up(SOURCE, CONFIRMED_TYPE);
    let (mut headers, payload) = Envelope::new(meta, status).encode()?;
    headers.insert(h::TARGET, status.target.as_str());
    headers.insert(
        h::NATS_MSG_ID,
        format!(
            "confirm:{}:{}:{}",
            status.status,
            status.target,
            record.origin()
        ),
    );
    let subject = subjects::data_confirm(&record.source)?;
    deps.js
        .publish_with_headers(subject, headers, payload.into())
        .await
        .map_err(|e| Error::nats("publish confirmation", e))?
        .await
        .map_err(|e| Error::nats("store confirmation", e))?;
    Ok(())
}

/// After the target answered: confirm, store the status, then ack. A confirmation that
/// cannot be stored leaves the record unacked, so it comes back (the target sees the
/// same delivery id) rather than going unconfirmed.
pub async fn settle_delivered(
    deps: Arc<Deps>,
    message: Message,
    record: Record,
    delivery: Delivery,
) {
    let status = Status::new(&record, &delivery, "confirmed", None);
    let (confirmed, ()) = tokio::join!(
        confirm(&deps, &record, &status),
        write_status(&deps, &status)
    );
    match confirmed {
        Ok(()) => {
            m::sync_outcome(&delivery.target.name, "delivered");
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
    let mut delay = Duration::from_millis(100);
    while let Err(err) = deadletter::publish(&deps.js, &letter).await {
        tracing::warn!(%err, "cannot dead-letter a record yet; retrying");
        let _ = message.ack_with(AckKind::Progress).await;
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    let status = Status::new(&record, &delivery, "failed", Some(&error));
    let (confirmed, ()) = tokio::join!(
        confirm(&deps, &record, &status),
        write_status(&deps, &status)
    );
    if let Err(err) = confirmed {
        tracing::warn!(%err, "cannot tell the source a record failed; it is in the DLQ");
    }
    m::sync_outcome(&delivery.target.name, "dead_lettered");
    if let Err(err) = message.ack_with(AckKind::Term).await {
        tracing::warn!(%err, "cannot terminate a dead-lettered record");
    }
}
