//! Flow rules as stored in KV `flows` (JSON) or given to `switchyard flows put` (JSON or
//! TOML). Properties: a refused rule is `invalid_input`; an accepted rule's stored form
//! (`to_json`) is accepted again as the same rule, with the same targets and key; the
//! rule book takes it (or refuses a conflict) without panicking, and routes a record
//! with it.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchyard::data::flow::book::{Book, Change};
use switchyard::data::flow::rule::Rule;
use switchyard::data::record::Record;
use switchyard::error::ErrorKind;
use time::OffsetDateTime;

fn check(parsed: Result<Rule, switchyard::Error>) {
    let rule = match parsed {
        Ok(rule) => rule,
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            return;
        }
    };
    let stored = rule.to_json().expect("an accepted rule encodes");
    let again = Rule::from_json(&stored).expect("its stored form is accepted again");
    assert_eq!(again.spec(), rule.spec());
    assert_eq!(again.targets(), rule.targets());
    assert_eq!(again.describe_key(), rule.describe_key());

    // Into a book next to a rule of another name, then a record through it.
    let mut book = Book::new();
    let at = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1);
    let other = br#"{"name":"zz-other","match":{"subject":"data.in.>"},
        "targets":[{"name":"billing","service":"billing","operation":"apply"}]}"#;
    assert!(matches!(
        book.put("zz-other", 1, at, other),
        Change::Applied
    ));
    match book.put(rule.name(), 2, at, &stored) {
        Change::Applied | Change::Unchanged => {}
        Change::Rejected(err) => assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}"),
    }
    let record = Record::new(
        "data.in.orders.eu.1".into(),
        1,
        at,
        1,
        async_nats::HeaderMap::new(),
        Bytes::from_static(br#"{"kind":"order","order_id":"o-1","n":1}"#),
    )
    .expect("a record");
    let _ = book.at(at).route(&record);
}

fuzz_target!(|data: &[u8]| {
    check(Rule::from_json(data));
    if let Ok(text) = std::str::from_utf8(data) {
        check(Rule::from_toml(text));
    }
});
