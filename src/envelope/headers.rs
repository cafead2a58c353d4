//! Header-value rules of the CloudEvents NATS binding and W3C trace context.

use std::time::Duration;

use async_nats::{HeaderMap, HeaderName};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use crate::error::Error;
use crate::subjects::headers as h;

/// Built once: a lookup by `&str` parses and allocates the name each time (the
/// gateway reads it on every request).
const TIMEOUT_MS: HeaderName = HeaderName::from_static(h::TIMEOUT_MS);

/// The caller's remaining budget from `Switchyard-Timeout-Ms`, if it set one; a value
/// that is not whole milliseconds is invalid input.
pub fn caller_budget(headers: &HeaderMap) -> Result<Option<Duration>, Error> {
    let Some(value) = headers.get(TIMEOUT_MS) else {
        return Ok(None);
    };
    value
        .as_str()
        .trim()
        .parse::<u64>()
        .map(|ms| Some(Duration::from_millis(ms)))
        .map_err(|_| {
            Error::invalid_input(format!(
                "invalid {} {:?}: a whole number of milliseconds",
                h::TIMEOUT_MS,
                value.as_str()
            ))
        })
}

/// CloudEvents NATS binding: percent-encode space, `"`, `%` and anything outside
/// printable ASCII (non-ASCII is always encoded by `utf8_percent_encode`).
const CE_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%').add(0x7f);

/// Encodes one attribute value for a `ce-*` header. CR and LF can never survive, so a
/// value cannot break the NATS protocol framing.
pub fn encode_value(value: &str) -> String {
    utf8_percent_encode(value, CE_VALUE).to_string()
}

/// Decodes a `ce-*` header value; invalid UTF-8 after decoding is replaced, never fatal.
pub fn decode_value(value: &str) -> String {
    percent_decode_str(value).decode_utf8_lossy().into_owned()
}

/// A W3C `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent(String);

impl TraceParent {
    /// Starts a new trace for messages that arrive without one. Not marked sampled
    /// (flags `00`): Switchyard records no spans, and nats-server builds a map of every
    /// header of each message whose `traceparent` is sampled (for its message tracing),
    /// on every hop.
    pub fn new_root() -> TraceParent {
        let trace = uuid::Uuid::now_v7().simple().to_string();
        // The low 64 bits of a v7 UUID are random: a good parent (span) id.
        let span = uuid::Uuid::now_v7().as_u64_pair().1 | 1;
        TraceParent(format!("00-{trace}-{span:016x}-00"))
    }

    /// Parses a header value; anything not in the version-00 format is refused, and
    /// the W3C rule then is to start a new trace rather than fail the message.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        let [version, trace, parent, flags] = parts.as_slice() else {
            return None;
        };
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let not_zero = |s: &str| s.bytes().any(|b| b != b'0');
        let valid = *version == "00"
            && hex(trace, 32)
            && not_zero(trace)
            && hex(parent, 16)
            && not_zero(parent)
            && hex(flags, 2);
        valid.then(|| TraceParent(value.trim().to_string()))
    }

    /// The 32-hex trace id, for logs.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The original's headers without JetStream publish controls (`Nats-Msg-Id`,
/// `Nats-Expected-…`, `Nats-TTL`): copied as they are, they would act on the copy.
pub fn without_publish_controls(original: &HeaderMap) -> HeaderMap {
    let mut copy = HeaderMap::new();
    for (name, values) in original.iter() {
        let text: &str = name.as_ref();
        if text.len() >= 5 && text[..5].eq_ignore_ascii_case("nats-") {
            continue;
        }
        for value in values {
            copy.append(name.clone(), value.clone());
        }
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encodes_what_the_binding_requires() {
        let raw = "a b\"c%d\r\né";
        let encoded = encode_value(raw);
        assert_eq!(encoded, "a%20b%22c%25d%0D%0A%C3%A9");
        assert_eq!(decode_value(&encoded), raw);
        assert_eq!(
            encode_value("urn:switchyard/gateway"),
            "urn:switchyard/gateway"
        );
    }

    #[test]
    fn traceparent_round_trip_and_refusals() {
        let root = TraceParent::new_root();
        assert_eq!(TraceParent::parse(root.as_str()), Some(root.clone()));
        assert_eq!(root.trace_id().len(), 32);
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn copies_drop_jetstream_publish_controls() {
        let mut original = HeaderMap::new();
        original.insert("ce-id", "abc");
        original.insert("Nats-Msg-Id", "abc");
        original.insert("Nats-Expected-Last-Subject-Sequence", "7");
        original.insert("nats-ttl", "5s");
        original.append("x-many", "1");
        original.append("x-many", "2");
        let copy = without_publish_controls(&original);
        assert_eq!(copy.get("ce-id").map(|v| v.as_str()), Some("abc"));
        assert!(copy.get("Nats-Msg-Id").is_none());
        assert!(copy.get("Nats-Expected-Last-Subject-Sequence").is_none());
        assert!(copy.get("nats-ttl").is_none());
        assert_eq!(copy.get_all("x-many").count(), 2);
    }
}
