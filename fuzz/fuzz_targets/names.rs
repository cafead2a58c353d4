//! Names taken from subjects and small texts from requests: subject tokens, cache
//! subjects and keys, task subjects, registry keys, event patterns and log filters
//! (`sys.log.level`). Properties: every check refuses with `invalid_input`; a subject
//! built from accepted names parses back into the same names; a log filter either
//! parses or is refused, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::data::cache::key::{self, Operation, parse_subject};
use switchyard::error::ErrorKind;
use switchyard::integration::bus::subscribe::filter_subject;
use switchyard::integration::registry::entry;
use switchyard::observability::logging::parse_filter;
use switchyard::resilience::tasks::submit;
use switchyard::subjects::{self, validate_token};

fn refused<T: std::fmt::Debug>(result: Result<T, switchyard::Error>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            None
        }
    }
}

fuzz_target!(|text: &str| {
    // One subject token, and everything built from tokens.
    if refused(validate_token("name", text)).is_some() {
        assert!(!text.contains(['.', '*', '>', ' ']));
        let api = subjects::api(text, text).expect("valid tokens make a subject");
        assert_eq!(api.split('.').count(), 3);
        let submit_subject = subjects::tasks_submit(text, "op").expect("valid");
        assert_eq!(
            submit::parse_subject(&submit_subject).ok(),
            Some((text, "op"))
        );
        let key = entry::key(text, text).expect("valid");
        assert_eq!(entry::split_key(&key), Some((text, text)));
    }

    // The cache: `cache.<op>.<namespace>.<key>` as received, and names put back together.
    if let Some((operation, namespace, cache_key)) = refused(parse_subject(text)) {
        key::validate(namespace, cache_key).expect("parsed names are valid");
        let op = match operation {
            Operation::Get => "get",
            Operation::Put => "put",
            Operation::Delete => "del",
        };
        assert_eq!(format!("cache.{op}.{namespace}.{cache_key}"), text);
    }
    if let Some((namespace, cache_key)) = text.split_once('.')
        && refused(key::validate(namespace, cache_key)).is_some()
    {
        let subject = format!("cache.get.{namespace}.{cache_key}");
        let parsed = parse_subject(&subject).expect("valid names make a subject");
        assert_eq!(parsed, (Operation::Get, namespace, cache_key));
        assert_eq!(key::storage_key(namespace, cache_key), text);
    }

    // Task subjects and ids, event patterns, log filters.
    let _ = refused(submit::parse_subject(text));
    let _ = refused(subjects::tasks_get(text));
    if let Some(subject) = refused(filter_subject(text)) {
        assert_eq!(subject, format!("events.{text}"));
    }
    let _ = refused(parse_filter(text));
});
