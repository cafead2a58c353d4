//! The status of one record at one target: in KV `cache` (namespace `status`, key
//! `<target>.<record id>`) and as the payload of the record's confirmation.

use bytes::Bytes;
use serde::Serialize;

use super::deliver::Deps;
use crate::data::cache::STATUS_NAMESPACE;
use crate::data::flow::Delivery;
use crate::data::record::Record;
use crate::error::Error;

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
        let updated = crate::integration::registry::registrar::now();
        let view = StatusView::new(record, delivery, status, error, &updated);
        Status {
            record_id: view.record_id.to_string(),
            target: view.target.to_string(),
            source: view.source.to_string(),
            subject: view.subject.to_string(),
            seq: view.seq,
            key: view.key.to_string(),
            status: view.status.to_string(),
            deliveries: view.deliveries,
            updated: view.updated.to_string(),
            error: view.error,
        }
    }
}

/// A [`Status`] borrowing from its record, serialized the same way: what settling
/// writes, without copying the record's strings (nor reading the clock per record: a
/// batch shares its time).
#[derive(Serialize)]
pub(super) struct StatusView<'a> {
    pub record_id: &'a str,
    pub target: &'a str,
    pub source: &'a str,
    pub subject: &'a str,
    pub seq: u64,
    pub key: &'a str,
    pub status: &'a str,
    pub deliveries: i64,
    pub updated: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl<'a> StatusView<'a> {
    pub fn new(
        record: &'a Record,
        delivery: &'a Delivery,
        status: &'a str,
        error: Option<&Error>,
        updated: &'a str,
    ) -> StatusView<'a> {
        StatusView {
            record_id: &record.id,
            target: &delivery.target.name,
            source: &record.source,
            subject: &record.subject,
            seq: record.seq,
            key: &delivery.key,
            status,
            deliveries: record.delivered,
            updated,
            error: error.map(ToString::to_string),
        }
    }

    /// The JSON stored in KV (and, for JSON records, the confirmation's payload).
    pub fn to_json(&self) -> Result<Bytes, Error> {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|e| Error::internal(format!("cannot encode a status: {e}")))
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
    match serde_json::to_vec(status) {
        Ok(json) => store(deps, &status.target, &status.record_id, Bytes::from(json)).await,
        Err(err) => tracing::warn!(%err, "cannot encode a status"),
    }
}

/// Stores an encoded status (best effort, as [`write_status`]). Through the cache to KV,
/// without keeping it in this instance's memory: sync never reads statuses back.
pub(super) async fn store(deps: &Deps, target: &str, record_id: &str, json: Bytes) {
    let key = status_key(target, record_id);
    if let Err(err) = deps.cache.write(STATUS_NAMESPACE, &key, json).await {
        tracing::warn!(%err, %key, "cannot store a delivery status");
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::data::flow::Target;

    #[test]
    fn the_view_serializes_like_the_status() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("ce-id", "r 1");
        let record = Record::new(
            "data.in.src.x".into(),
            9,
            OffsetDateTime::UNIX_EPOCH,
            2,
            headers,
            Bytes::from_static(b"{}"),
        )
        .unwrap();
        let delivery = Delivery {
            rule: "r".into(),
            target: Target {
                name: "t".into(),
                subject: "s".into(),
            },
            key: "k".into(),
        };
        for error in [None, Some(Error::unavailable("down"))] {
            let updated = "2026-01-01T00:00:00Z";
            let view = StatusView::new(&record, &delivery, "failed", error.as_ref(), updated);
            let mut status = Status::new(&record, &delivery, "failed", error.as_ref());
            status.updated = updated.to_string();
            assert_eq!(
                view.to_json().unwrap(),
                Bytes::from(serde_json::to_vec(&status).unwrap())
            );
        }
        assert_eq!(status_key("t", "r 1"), "t.x722031");
    }
}
