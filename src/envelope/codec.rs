//! Payload codecs. MessagePack (named fields, so any language can read it) is the
//! default; JSON is accepted and answered in JSON.
//!
//! The rule that decides, in order: `ce-datacontenttype`, else `Content-Type`, else
//! JSON. A message without headers is therefore JSON, which is what a plain
//! `nats req`/`nats pub` sends; MessagePack must always say so in a header.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind};

/// Deepest nesting accepted in either codec: deep enough for any real document, shallow
/// enough that a hostile payload cannot exhaust the stack. serde_json's own limit is
/// 128; MessagePack is held to the same.
pub const MAX_DEPTH: usize = 128;

/// The two payload encodings Switchyard speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    #[default]
    MsgPack,
    Json,
}

impl ContentType {
    /// The media type written into `ce-datacontenttype`.
    pub fn mime(self) -> &'static str {
        match self {
            ContentType::MsgPack => "application/msgpack",
            ContentType::Json => "application/json",
        }
    }

    /// Parses a media type, ignoring parameters such as `; charset=utf-8` and case.
    pub fn parse(value: &str) -> Result<ContentType, Error> {
        let essence = value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json" | "text/json" => Ok(ContentType::Json),
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                Ok(ContentType::MsgPack)
            }
            _ => Err(Error::new(
                ErrorKind::UnsupportedMediaType,
                format!(
                    "unsupported content type {value:?}: use application/json or application/msgpack"
                ),
            )),
        }
    }

    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, Error> {
        let encoded = match self {
            ContentType::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
            ContentType::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
        };
        encoded.map_err(|e| Error::internal(format!("cannot encode {} payload: {e}", self.mime())))
    }

    /// Decodes a whole payload: trailing bytes, truncation, excessive nesting and type
    /// mismatches are all `InvalidInput`.
    pub fn decode<T: DeserializeOwned>(self, payload: &[u8]) -> Result<T, Error> {
        let decoded = match self {
            ContentType::Json => serde_json::from_slice(payload).map_err(|e| e.to_string()),
            ContentType::MsgPack => decode_msgpack(payload),
        };
        decoded.map_err(|e| {
            let hint = if self == ContentType::Json {
                " (a message without a content-type header is read as JSON; MessagePack must \
                 set ce-datacontenttype: application/msgpack)"
            } else {
                ""
            };
            Error::invalid_input(format!("malformed {} payload: {e}{hint}", self.mime()))
        })
    }
}

/// Renders a payload for people: JSON stays as it is, a whole MessagePack document
/// becomes JSON, anything else is returned unchanged.
pub fn to_display_json(payload: &[u8]) -> Vec<u8> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() {
        return payload.to_vec();
    }
    match decode_msgpack::<rmpv::Value>(payload) {
        Ok(value) => serde_json::to_vec(&value).unwrap_or_else(|_| payload.to_vec()),
        Err(_) => payload.to_vec(),
    }
}

fn decode_msgpack<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    if payload.is_empty() {
        return Err("empty payload".into());
    }
    let mut cursor = std::io::Cursor::new(payload);
    let mut de = rmp_serde::Deserializer::new(&mut cursor);
    de.set_max_depth(MAX_DEPTH);
    let value = T::deserialize(&mut de).map_err(|e| e.to_string())?;
    let consumed = cursor.position() as usize;
    if consumed != payload.len() {
        return Err(format!(
            "{} trailing bytes after the document",
            payload.len() - consumed
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_media_types_with_parameters_and_case() {
        assert_eq!(
            ContentType::parse("Application/JSON; charset=utf-8").unwrap(),
            ContentType::Json
        );
        assert_eq!(
            ContentType::parse("application/x-msgpack").unwrap(),
            ContentType::MsgPack
        );
        let err = ContentType::parse("text/plain").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnsupportedMediaType);
    }

    #[test]
    fn display_json_decodes_msgpack_and_passes_json_through() {
        let packed = ContentType::MsgPack
            .encode(&serde_json::json!({"a": [1, "x"]}))
            .unwrap();
        assert_eq!(to_display_json(&packed), br#"{"a":[1,"x"]}"#.to_vec());
        assert_eq!(to_display_json(br#"{"b":2}"#), br#"{"b":2}"#.to_vec());
        assert_eq!(
            to_display_json(b"\xc1 not either"),
            b"\xc1 not either".to_vec()
        );
    }

    #[test]
    fn numbers_survive_a_decode_and_encode_unchanged() {
        // Found by fuzzing (fuzz/codec, fuzz/envelope, fuzz/coord_rule): without
        // serde_json's float_roundtrip, each pass through JSON could move a float by
        // one unit in the last place (-92232773644072009551615 read back as
        // -9.2232773644072e22).
        for text in [
            "-92232773644072009551615",
            "9777777777777777777777777777777777777777777777777",
        ] {
            let first: serde_json::Value = ContentType::Json.decode(text.as_bytes()).unwrap();
            let again = ContentType::Json.encode(&first).unwrap();
            let second: serde_json::Value = ContentType::Json.decode(&again).unwrap();
            assert_eq!(first, second, "{text}");
            let value: rmpv::Value = ContentType::Json.decode(text.as_bytes()).unwrap();
            let packed = ContentType::MsgPack.encode(&value).unwrap();
            let back: rmpv::Value = ContentType::MsgPack.decode(&packed).unwrap();
            assert_eq!(back, value);
            let json: rmpv::Value = ContentType::Json
                .decode(&ContentType::Json.encode(&value).unwrap())
                .unwrap();
            assert_eq!(json, value, "{text}");
        }
    }

    #[test]
    fn msgpack_rejects_trailing_bytes_and_truncation() {
        let mut bytes = ContentType::MsgPack.encode(&vec![1u32, 2, 3]).unwrap();
        bytes.push(0xc0);
        let err = ContentType::MsgPack.decode::<Vec<u32>>(&bytes).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let bytes = ContentType::MsgPack.encode(&"hello world").unwrap();
        let err = ContentType::MsgPack
            .decode::<String>(&bytes[..bytes.len() - 3])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
