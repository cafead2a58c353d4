//! The envelope every Switchyard message travels in: CloudEvents attributes in `ce-*`
//! headers (NATS binding, header mode), correlation and causation ids, W3C trace
//! context, and a MessagePack or JSON payload.
//!
//! Reading is lenient where NATS users expect it (a bare `nats req` with no headers is
//! a valid request) and strict where data would otherwise be misread (an unknown
//! content type or a malformed payload is a typed error).

mod codec;
mod headers;
mod send;

pub use codec::{ContentType, MAX_DEPTH, to_display_json};
pub use headers::{
    TraceParent, caller_budget, decode_value, encode_value, without_publish_controls,
};
pub use send::{Outgoing, check_size, error_from_reply, publish, publish_durable, request};

use async_nats::HeaderMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::Error;
use crate::subjects::headers as h;

pub const SPEC_VERSION: &str = "1.0";
/// `ce-source` of messages that arrive without one (a plain NATS client).
pub const UNKNOWN_SOURCE: &str = "urn:switchyard:client";

/// The CloudEvents attributes and tracing context of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Meta {
    /// `ce-id`: a UUID v7 for everything Switchyard creates; any non-empty id from others.
    pub id: String,
    /// `ce-source`: a URI reference naming the producer, e.g. `urn:switchyard:gateway`.
    pub source: String,
    /// `ce-type`: reverse-DNS event or request type, e.g. `io.switchyard.sys.echo`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `ce-time`: RFC 3339.
    pub time: String,
    /// `ce-datacontenttype`.
    pub content_type: ContentType,
    /// `ce-correlationid`: shared by every message of one conversation.
    pub correlation_id: String,
    /// `ce-causationid`: the `ce-id` of the message that caused this one.
    pub causation_id: Option<String>,
    /// W3C `traceparent`, passed on untouched.
    pub traceparent: String,
    /// W3C `tracestate`, passed on untouched when present.
    pub tracestate: Option<String>,
}

impl Meta {
    /// A new conversation: fresh id, its own correlation id, a new trace.
    pub fn new(source: impl Into<String>, kind: impl Into<String>) -> Meta {
        let id = new_id();
        Meta {
            correlation_id: id.clone(),
            id,
            source: source.into(),
            kind: kind.into(),
            time: now_rfc3339(),
            content_type: ContentType::default(),
            causation_id: None,
            traceparent: TraceParent::new_root().as_str().to_string(),
            tracestate: None,
        }
    }

    /// A message caused by this one (a reply, a forwarded request, a follow-up event):
    /// fresh id and time, same correlation, trace and content type, causation = our id.
    pub fn follow_up(&self, source: impl Into<String>, kind: impl Into<String>) -> Meta {
        Meta {
            id: new_id(),
            source: source.into(),
            kind: kind.into(),
            time: now_rfc3339(),
            content_type: self.content_type,
            correlation_id: self.correlation_id.clone(),
            causation_id: Some(self.id.clone()),
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
        }
    }

    pub fn with_content_type(mut self, content_type: ContentType) -> Meta {
        self.content_type = content_type;
        self
    }

    /// Writes the attributes as headers, percent-encoded as the binding requires.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.write_headers(&mut headers);
        headers
    }

    /// Writes the attributes into existing headers, keeping the caller's other headers.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(h::CE_SPECVERSION, SPEC_VERSION);
        headers.insert(h::CE_ID, encode_value(&self.id));
        headers.insert(h::CE_SOURCE, encode_value(&self.source));
        headers.insert(h::CE_TYPE, encode_value(&self.kind));
        headers.insert(h::CE_TIME, encode_value(&self.time));
        headers.insert(h::CE_DATACONTENTTYPE, self.content_type.mime());
        headers.insert(h::CE_CORRELATIONID, encode_value(&self.correlation_id));
        if let Some(causation) = &self.causation_id {
            headers.insert(h::CE_CAUSATIONID, encode_value(causation));
        }
        headers.insert(h::TRACEPARENT, self.traceparent.as_str());
        if let Some(state) = &self.tracestate {
            headers.insert(h::TRACESTATE, encode_value(state));
        }
    }

    /// Reads the attributes of a received message. Missing attributes are filled in
    /// (new id, `default_kind`, now, a new trace); a present but wrong `ce-specversion`
    /// or content type is an error.
    pub fn from_headers(headers: Option<&HeaderMap>, default_kind: &str) -> Result<Meta, Error> {
        let get = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| decode_value(v.as_str()))
                .filter(|v| !v.is_empty())
        };
        let content_type = content_type_of(headers)?;
        let id = get(h::CE_ID).unwrap_or_else(new_id);
        // An invalid traceparent starts a new trace (W3C) rather than failing the message.
        let traceparent = get(h::TRACEPARENT)
            .and_then(|v| TraceParent::parse(&v))
            .unwrap_or_else(TraceParent::new_root);
        Ok(Meta {
            correlation_id: get(h::CE_CORRELATIONID).unwrap_or_else(|| id.clone()),
            id,
            source: get(h::CE_SOURCE).unwrap_or_else(|| UNKNOWN_SOURCE.to_string()),
            kind: get(h::CE_TYPE).unwrap_or_else(|| default_kind.to_string()),
            time: get(h::CE_TIME).unwrap_or_else(now_rfc3339),
            content_type,
            causation_id: get(h::CE_CAUSATIONID),
            traceparent: traceparent.as_str().to_string(),
            tracestate: get(h::TRACESTATE),
        })
    }
}

/// What [`Meta::from_headers`] checks, without building anything: a `ce-specversion`
/// other than 1.0 and an unknown content type are errors; the codec otherwise. Cheap
/// enough for paths that forward a message without reading it (the gateway).
pub fn content_type_of(headers: Option<&HeaderMap>) -> Result<ContentType, Error> {
    let get = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
            .filter(|v| !v.is_empty())
    };
    if let Some(version) = get(h::CE_SPECVERSION)
        && decode_value(version) != SPEC_VERSION
    {
        return Err(Error::invalid_input(format!(
            "unsupported ce-specversion {:?}: Switchyard speaks CloudEvents {SPEC_VERSION}",
            decode_value(version)
        )));
    }
    match get(h::CE_DATACONTENTTYPE).or_else(|| get(h::CONTENT_TYPE)) {
        Some(value) => ContentType::parse(&decode_value(value)),
        None => Ok(ContentType::Json),
    }
}

impl Meta {
    /// Attributes for answering a message whose own attributes could not be read (an
    /// unknown content type, a wrong `ce-specversion`): keep its `ce-id` as the
    /// conversation's where readable, and answer in JSON, the codec anyone can read.
    pub fn unreadable(headers: Option<&HeaderMap>) -> Meta {
        let mut meta =
            Meta::new(UNKNOWN_SOURCE, "io.switchyard.request").with_content_type(ContentType::Json);
        if let Some(id) = headers.and_then(|h| h.get(h::CE_ID)) {
            meta.id = decode_value(id.as_str());
            meta.correlation_id = meta.id.clone();
        }
        meta
    }
}

/// A typed payload with its attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    pub meta: Meta,
    pub data: T,
}

impl<T> Envelope<T> {
    pub fn new(meta: Meta, data: T) -> Envelope<T> {
        Envelope { meta, data }
    }
}

impl<T: Serialize> Envelope<T> {
    /// Headers and payload, ready for `publish_with_headers`.
    pub fn encode(&self) -> Result<(HeaderMap, Vec<u8>), Error> {
        let payload = self.meta.content_type.encode(&self.data)?;
        Ok((self.meta.to_headers(), payload))
    }
}

impl<T: DeserializeOwned> Envelope<T> {
    /// Decodes a received message's headers and payload.
    pub fn decode(
        headers: Option<&HeaderMap>,
        payload: &[u8],
        default_kind: &str,
    ) -> Result<Envelope<T>, Error> {
        let meta = Meta::from_headers(headers, default_kind)?;
        let data = meta.content_type.decode(payload)?;
        Ok(Envelope { meta, data })
    }

    pub fn from_message(msg: &async_nats::Message, default_kind: &str) -> Result<Self, Error> {
        Envelope::decode(msg.headers.as_ref(), &msg.payload, default_kind)
    }
}

/// A new `ce-id`: UUID v7, so ids sort by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub(crate) fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}
