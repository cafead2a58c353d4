//! Settling records after their target answered: the confirmation to
//! `data.confirm.<source>` (stream DATA) and the status in the cache (namespace
//! `status`, KV `cache`) are stored, then the record is acked.
//!
//! Delivered records are settled in batches. Each worker has at most one write in
//! flight ([`super::deliveries`]); what its target acknowledges meanwhile waits and goes
//! out together in the next write ("natural batching": no timer, so a lone record goes
//! out at once, and under load a batch forms while the previous write is in flight).
//! A write sends every confirmation (into DATA) and every status (into `KV_cache`)
//! before awaiting their acknowledgements ([`crate::nats::batch`]); the records are
//! acked once all are answered. One write per worker at a time also means one wake-up
//! of the worker per batch rather than per record.
//!
//! A crash between the write and the acks redelivers the records: the target sees the
//! same delivery id again, the status is overwritten with the same content, and the
//! confirmation's `Nats-Msg-Id` lets stream DATA store it once.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::{HeaderName, Subject};
use bytes::Bytes;

use super::deliver::Deps;
use super::deliveries::Item;
use super::status::{StatusView, status_key};
use crate::data::cache::STATUS_NAMESPACE;
use crate::data::flow::Delivery;
use crate::data::record::Record;
use crate::envelope::{ContentType, Meta};
use crate::error::Error;
use crate::nats::batch;
use crate::observability::metrics::SyncMetrics;
use crate::subjects::{self, headers as h};

const SOURCE: &str = "urn:switchyard:sync";
const RECORD_TYPE: &str = "io.switchyard.data.record";
const CONFIRMED_TYPE: &str = "io.switchyard.data.confirmed";
// Header names built once: inserting by `&str` parses and allocates the name each time.
const TARGET: HeaderName = HeaderName::from_static(h::TARGET);
const NATS_MSG_ID: HeaderName = HeaderName::from_static(h::NATS_MSG_ID);
/// When a record whose confirmation could not be stored comes back.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// One record's confirmation, ready to be published (again, if its batch falls back
/// to one by one).
pub(super) struct Confirmation {
    subject: Subject,
    meta: Meta,
    target: String,
    msg_id: String,
    payload: Bytes,
}

impl Confirmation {
    fn message(&self) -> batch::Message {
        let mut headers = self.meta.to_headers();
        headers.insert(TARGET, self.target.as_str());
        headers.insert(NATS_MSG_ID, self.msg_id.as_str());
        batch::Message {
            subject: self.subject.clone(),
            headers,
            payload: self.payload.clone(),
        }
    }
}

/// What settling stores for one record: its confirmation, in the record's codec (once
/// per record and target, `Nats-Msg-Id`), and its status (key and JSON; the JSON is the
/// confirmation's payload too when the record's codec is JSON).
pub(super) fn prepare(
    record: &Record,
    delivery: &Delivery,
    status: &str,
    error: Option<&Error>,
    updated: &str,
) -> Result<(Confirmation, (String, Bytes)), Error> {
    let view = StatusView::new(record, delivery, status, error, updated);
    let json = view.to_json()?;
    let meta =
        Meta::from_headers(Some(&record.headers), RECORD_TYPE)?.follow_up(SOURCE, CONFIRMED_TYPE);
    let payload = match meta.content_type {
        ContentType::Json => json.clone(),
        codec => Bytes::from(codec.encode(&view)?),
    };
    let confirmation = Confirmation {
        subject: Subject::from(subjects::data_confirm(&record.source)?),
        meta,
        target: delivery.target.name.clone(),
        msg_id: format!(
            "confirm:{status}:{}:{}:{}",
            delivery.target.name,
            subjects::STREAM_DATA.name,
            record.seq
        ),
        payload,
    };
    Ok((
        confirmation,
        (status_key(&delivery.target.name, &record.id), json),
    ))
}

/// Stores confirmations and statuses side by side; the confirmations' result. Statuses
/// are best effort: one that cannot be stored is logged, and the record's settling
/// does not depend on it.
pub(super) async fn store(
    deps: &Deps,
    confirmations: &[Confirmation],
    statuses: &[(String, Bytes)],
) -> Result<(), Error> {
    let (confirmed, stored) = tokio::join!(
        batch::publish(&deps.js, confirmations, Confirmation::message),
        deps.cache.write_many(STATUS_NAMESPACE, statuses)
    );
    match stored {
        Ok(refused) => {
            for (n, err) in refused {
                let key = statuses.get(n).map(|(key, _)| key.as_str());
                tracing::warn!(%err, ?key, "cannot store a delivery status");
            }
        }
        Err(err) => {
            tracing::warn!(%err, count = statuses.len(), "cannot store delivery statuses");
        }
    }
    confirmed.map(|_| ())
}

/// Settles records their target acknowledged: confirms them and stores their statuses
/// (one write for all), then acks each. Records whose confirmation cannot be stored are
/// nak'ed: they come back (the target sees the same delivery id) rather than going
/// unconfirmed.
pub(super) async fn delivered(deps: Arc<Deps>, items: Vec<Item>, metrics: Arc<SyncMetrics>) {
    let updated = crate::integration::registry::registrar::now();
    let mut confirmations = Vec::with_capacity(items.len());
    let mut statuses = Vec::with_capacity(items.len());
    let mut ready = Vec::with_capacity(items.len());
    for item in items {
        match prepare(&item.record, &item.delivery, "confirmed", None, &updated) {
            Ok((confirmation, status)) => {
                confirmations.push(confirmation);
                statuses.push(status);
                ready.push(item);
            }
            Err(err) => {
                tracing::warn!(%err, "cannot confirm a delivered record; redelivering it");
                let _ = item.message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
            }
        }
    }
    match store(&deps, &confirmations, &statuses).await {
        Ok(()) => {
            metrics.delivered.increment(ready.len() as u64);
            for item in ready {
                if let Err(err) = item.message.ack().await {
                    tracing::warn!(%err, "cannot ack a delivered record; it will be redelivered");
                }
            }
        }
        Err(err) => {
            tracing::warn!(%err, records = ready.len(), "cannot confirm delivered records; redelivering them");
            for item in ready {
                let _ = item.message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
            }
        }
    }
}
