//! Names in the cache. A namespace is one subject token; a key is 1 to 256 characters
//! of `A-Z a-z 0-9 _ - = /` and `.`, the dots separating non-empty tokens. A key is
//! then at once a valid KV key and a valid subject tail, so `cache.get.<ns>.<key>` and
//! the stored `<ns>.<key>` in bucket `cache` can never be ambiguous or break the
//! protocol.

use crate::error::Error;
use crate::subjects::{BUCKET_CACHE, validate_token};

/// Longest key, in characters (all ASCII).
pub const MAX_KEY_LEN: usize = 256;

/// What a request on `cache.<op>.<namespace>.<key>` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Get,
    Put,
    Delete,
}

/// A namespace: one subject token (1-128 of `A-Z a-z 0-9 _ -`).
pub fn validate_namespace(namespace: &str) -> Result<(), Error> {
    validate_token("namespace", namespace)
}

/// A key: 1-256 of `A-Z a-z 0-9 _ - = /` and `.`, no empty token between dots.
pub fn validate_key(key: &str) -> Result<(), Error> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'/');
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .split('.')
            .all(|token| !token.is_empty() && token.bytes().all(allowed));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "invalid key {key:?}: a key is 1-{MAX_KEY_LEN} characters of A-Z a-z 0-9 _ - = / \
             in tokens separated by single dots"
        )))
    }
}

/// Both names of one entry.
pub fn validate(namespace: &str, key: &str) -> Result<(), Error> {
    validate_namespace(namespace)?;
    validate_key(key)
}

/// The subject a KV write of `<namespace>.<key>` is published on: `$KV.cache.<ns>.<key>`.
pub fn kv_subject(namespace: &str, key: &str) -> String {
    format!("$KV.{BUCKET_CACHE}.{namespace}.{key}")
}

/// The key in bucket `cache`: `<namespace>.<key>`.
pub fn storage_key(namespace: &str, key: &str) -> String {
    format!("{namespace}.{key}")
}

/// `(namespace, key)` of a KV message subject `$KV.cache.<ns>.<key>`; `None` for
/// anything else (a key written by hand that is not `<ns>.<key>`).
pub fn from_kv_subject(subject: &str) -> Option<(&str, &str)> {
    let stored = subject
        .strip_prefix("$KV.")?
        .strip_prefix(BUCKET_CACHE)?
        .strip_prefix('.')?;
    stored.split_once('.')
}

/// Reads `cache.<get|put|del>.<namespace>.<key>`, checking both names.
pub fn parse_subject(subject: &str) -> Result<(Operation, &str, &str), Error> {
    let malformed = || {
        Error::invalid_input(format!(
            "subject {subject:?} is not cache.<get|put|del>.<namespace>.<key>"
        ))
    };
    let rest = subject.strip_prefix("cache.").ok_or_else(malformed)?;
    let (operation, rest) = rest.split_once('.').ok_or_else(malformed)?;
    let (namespace, key) = rest.split_once('.').ok_or_else(malformed)?;
    let operation = match operation {
        "get" => Operation::Get,
        "put" => Operation::Put,
        "del" => Operation::Delete,
        other => {
            return Err(Error::invalid_input(format!(
                "unknown cache operation {other:?} in {subject:?}: use get, put or del"
            )));
        }
    };
    validate(namespace, key)?;
    Ok((operation, namespace, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn accepts_kv_keys_that_are_subject_tails() {
        for good in [
            "k1",
            "a.b.c",
            "user=42/x",
            "A-Z_09",
            &"k".repeat(MAX_KEY_LEN),
        ] {
            assert!(validate_key(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn refuses_keys_that_would_break_kv_or_the_subject() {
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a b",
            "a*",
            "a>",
            "x\r\ny",
            "é",
            "a:b",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            let err = validate_key(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(validate_namespace("a.b").is_err());
        assert!(validate_namespace("status").is_ok());
    }

    #[test]
    fn parses_request_subjects() {
        assert_eq!(
            parse_subject("cache.get.demo.k1").unwrap(),
            (Operation::Get, "demo", "k1")
        );
        assert_eq!(
            parse_subject("cache.put.status.t1.rec-7").unwrap(),
            (Operation::Put, "status", "t1.rec-7")
        );
        assert_eq!(
            parse_subject("cache.del.demo.a/b").unwrap().0,
            Operation::Delete
        );
        for bad in [
            "cache.get.demo",
            "cache.list.demo.k",
            "cache.get",
            "api.x.y",
            "cache.get.de mo.k",
        ] {
            let err = parse_subject(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn maps_kv_subjects_back_to_names() {
        assert_eq!(
            from_kv_subject("$KV.cache.status.t1.r1"),
            Some(("status", "t1.r1"))
        );
        assert_eq!(from_kv_subject("$KV.cachex.a.b"), None);
        assert_eq!(from_kv_subject("$KV.cache.lonely"), None);
        assert_eq!(kv_subject("demo", "k1"), "$KV.cache.demo.k1");
        assert_eq!(storage_key("demo", "a.b"), "demo.a.b");
    }
}
