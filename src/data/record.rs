//! A record as data flow and data sync read it from stream `DATA`: where it was
//! published, its id, when the stream stored it (the time its routing is decided by),
//! and the checks that make a record malformed. Flow and sync apply the same checks, so
//! they agree on which records are dead-lettered (by flow) and skipped (by sync).

use std::sync::OnceLock;

use async_nats::HeaderMap;
use bytes::Bytes;
use time::OffsetDateTime;

use crate::envelope::{ContentType, content_type_of, decode_value};
use crate::error::Error;
use crate::subjects::headers as h;

/// Prefix of every record subject: `data.in.<source>[.…]`.
pub const DATA_IN_PREFIX: &str = "data.in.";

#[derive(Debug)]
pub struct Record {
    /// `data.in.<source>[.…]`
    pub subject: String,
    /// The subject's third token.
    pub source: String,
    /// `ce-id`, else `Nats-Msg-Id`, else `DATA-<seq>`: what the source knows the record
    /// by, carried by its confirmation.
    pub id: String,
    /// Sequence in stream `DATA`.
    pub seq: u64,
    /// When the stream stored it (server time): the rules in force at this time route it.
    pub stored: OffsetDateTime,
    /// How many times this consumer has delivered it (1 the first time).
    pub delivered: i64,
    pub headers: HeaderMap,
    pub payload: Bytes,
    content: OnceLock<Result<serde_json::Value, Error>>,
}

impl Record {
    /// Reads a JetStream message of stream `DATA`. Fails only for a message that is not
    /// a JetStream delivery or not on `data.in.<source>…` (a consumer misconfigured).
    pub fn from_message(message: &async_nats::jetstream::Message) -> Result<Record, Error> {
        let headers = message.headers.clone().unwrap_or_default();
        Record::read(message, headers)
    }

    /// [`Record::from_message`] without copying the headers: they move into the record,
    /// and the message keeps what settling it needs (its reply subject).
    pub fn take_from(message: &mut async_nats::jetstream::Message) -> Result<Record, Error> {
        let headers = message.message.headers.take().unwrap_or_default();
        Record::read(message, headers)
    }

    fn read(message: &async_nats::jetstream::Message, headers: HeaderMap) -> Result<Record, Error> {
        let info = message
            .info()
            .map_err(|e| Error::internal(format!("not a JetStream delivery: {e}")))?;
        let (seq, stored, delivered) = (info.stream_sequence, info.published, info.delivered);
        Record::new(
            message.subject.to_string(),
            seq,
            stored,
            delivered,
            headers,
            message.payload.clone(),
        )
    }

    pub fn new(
        subject: String,
        seq: u64,
        stored: OffsetDateTime,
        delivered: i64,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Record, Error> {
        let source = subject
            .strip_prefix(DATA_IN_PREFIX)
            .and_then(|rest| rest.split('.').next())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Error::internal(format!("{subject:?} is not a data.in.<source> subject"))
            })?
            .to_string();
        let header = |name: &str| {
            headers
                .get(name)
                .map(|v| decode_value(v.as_str()))
                .filter(|v| !v.is_empty())
        };
        let id = header(h::CE_ID)
            .or_else(|| header(h::NATS_MSG_ID))
            .unwrap_or_else(|| format!("DATA-{seq}"));
        Ok(Record {
            subject,
            source,
            id,
            seq,
            stored,
            delivered,
            headers,
            payload,
            content: OnceLock::new(),
        })
    }

    /// A header's value, percent-decoded as `ce-*` values are.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| decode_value(v.as_str()))
    }

    /// The codec the record declares (`ce-datacontenttype`, else `Content-Type`, else
    /// JSON); an unknown one or a wrong `ce-specversion` makes the record malformed.
    pub fn content_type(&self) -> Result<ContentType, Error> {
        content_type_of(Some(&self.headers))
    }

    /// The payload decoded in its codec, as a JSON value (decoded once). A payload that
    /// does not decode makes the record malformed: no target could read it either.
    pub fn content(&self) -> Result<&serde_json::Value, Error> {
        self.content
            .get_or_init(|| {
                let codec = self.content_type()?;
                codec.decode::<serde_json::Value>(&self.payload)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Every check that makes a record malformed, independent of the rules: readable
    /// CloudEvents attributes, an id that can travel in a header (a percent-encoded
    /// `ce-id` may decode to a line break, which no header value may hold) and a
    /// payload that decodes.
    pub fn check(&self) -> Result<(), Error> {
        check_header_value("id", &self.id)?;
        self.content().map(|_| ())
    }

    /// `<stream>:<seq>`, for [`h::ORIGINAL_SEQ`] on copies.
    pub fn origin(&self) -> String {
        format!("{}:{}", crate::subjects::STREAM_DATA.name, self.seq)
    }
}

/// Refuses a value data sync could not send in a header (`Switchyard-Delivery-Id`,
/// `Switchyard-Record-Key`): NATS header values cannot hold CR or LF.
pub fn check_header_value(what: &str, value: &str) -> Result<(), Error> {
    if value.contains(['\r', '\n']) {
        return Err(Error::invalid_input(format!(
            "the record's {what} {value:?} contains a line break: it cannot be sent in a header"
        )));
    }
    Ok(())
}

#[cfg(test)]
impl Record {
    /// A record as unit tests need one: sequence 7, delivered once.
    pub(crate) fn for_test(
        subject: &str,
        stored: OffsetDateTime,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<Record, Error> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        Record::new(
            subject.into(),
            7,
            stored,
            1,
            map,
            Bytes::copy_from_slice(payload),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(subject: &str, headers: &[(&str, &str)], payload: &[u8]) -> Result<Record, Error> {
        Record::for_test(subject, OffsetDateTime::UNIX_EPOCH, headers, payload)
    }

    #[test]
    fn reads_source_and_id() {
        let r = record("data.in.orders.eu", &[("ce-id", "abc")], b"{}").unwrap();
        assert_eq!((r.source.as_str(), r.id.as_str()), ("orders", "abc"));
        let r = record("data.in.orders", &[("Nats-Msg-Id", "m1")], b"{}").unwrap();
        assert_eq!(r.id, "m1");
        let r = record("data.in.orders", &[], b"{}").unwrap();
        assert_eq!(r.id, "DATA-7");
        assert!(record("data.unrouted", &[], b"{}").is_err());
        assert!(record("data.in.", &[], b"{}").is_err());
    }

    #[test]
    fn malformed_payloads_and_types_are_errors() {
        assert!(
            record("data.in.a", &[], br#"{"x":1}"#)
                .unwrap()
                .check()
                .is_ok()
        );
        let bad = record("data.in.a", &[], b"{nope").unwrap();
        assert_eq!(bad.check().unwrap_err().code(), 400);
        let text = record("data.in.a", &[("Content-Type", "text/plain")], b"hi").unwrap();
        assert_eq!(text.check().unwrap_err().code(), 415);
    }

    #[test]
    fn an_id_that_decodes_to_a_line_break_is_malformed() {
        // Found by fuzzing (fuzz/flow_record): data sync put the id into a header and
        // async-nats panics on a header value with CR or LF.
        let bad = record("data.in.a", &[("ce-id", "a%0D%0Ab")], b"{}").unwrap();
        assert_eq!(bad.id, "a\r\nb");
        let err = bad.check().unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::InvalidInput);
        assert!(err.message().contains("line break"), "{err}");
        assert!(
            record("data.in.a", &[("ce-id", "a%20b")], b"{}")
                .unwrap()
                .check()
                .is_ok()
        );
    }
}
