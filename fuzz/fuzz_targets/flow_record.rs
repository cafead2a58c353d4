//! Records on `data.in.<source>…` (a first line with the subject after `data.in.`, then
//! `Name: value` lines, an empty line and the payload) through a rule book with
//! one rule of each kind (field, header, subject-token and id keys; value, any-of and
//! header conditions). Properties: routing never panics and refuses only with a typed
//! error (400 or 415, the record is then dead-lettered); a routed record goes to known
//! targets with a non-empty key, and the request data sync sends each target can be
//! built from it (its id and key are valid header values).
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchyard::data::flow::book::{Book, Change};
use switchyard::data::record::Record;
use switchyard::data::sync::deliver::delivery_headers;
use switchyard::data::sync::policy::SyncPolicy;
use switchyard::error::ErrorKind;
use switchyard_fuzz::{first_line, message};
use time::OffsetDateTime;

const RULES: [&str; 4] = [
    r#"{"name":"orders","match":{"subject":"data.in.orders.>","fields":{"/kind":"order"}},
        "targets":[{"name":"billing","service":"billing","operation":"apply"}],
        "key":{"field":"/order_id"}}"#,
    r#"{"name":"regions","match":{"subject":"data.in.*","headers":{"X-Region":["eu","us"]}},
        "targets":[{"name":"regional","subject":"regional.in"}],"key":{"header":"X-Key"}}"#,
    r#"{"name":"tokens","match":{"subject":"data.in.*.*.*"},
        "targets":[{"name":"by-token","subject":"tokens.in"}],"key":{"subject_token":3}}"#,
    r#"{"name":"numbers","match":{"subject":"data.in.>","fields":{"/n":{"any_of":[1,2.5,"x"]}}},
        "targets":[{"name":"numbers","service":"numbers","operation":"take"},
                   {"name":"billing","service":"billing","operation":"apply"}]}"#,
];

fn book() -> &'static Book {
    static BOOK: OnceLock<Book> = OnceLock::new();
    BOOK.get_or_init(|| {
        let mut book = Book::new();
        for (i, rule) in RULES.iter().enumerate() {
            let name = ["orders", "regions", "tokens", "numbers"][i];
            let change = book.put(
                name,
                i as u64 + 1,
                OffsetDateTime::UNIX_EPOCH,
                rule.as_bytes(),
            );
            assert!(matches!(change, Change::Applied), "{name}: {change:?}");
        }
        book
    })
}

fuzz_target!(|data: &[u8]| {
    // The subject after `data.in.`, then the message.
    let (tail, rest) = first_line(data);
    if tail.chars().any(|c| c.is_whitespace() || c.is_control()) {
        // Not a subject the server can deliver: the protocol splits on whitespace.
        return;
    }
    let (headers, payload) = message(rest);
    let Ok(record) = Record::new(
        format!("data.in.{tail}"),
        42,
        OffsetDateTime::UNIX_EPOCH,
        1,
        headers,
        Bytes::copy_from_slice(payload),
    ) else {
        // Only a subject without a source is refused; the stream never delivers one.
        assert!(tail.is_empty() || tail.starts_with('.'));
        return;
    };
    let rules = book().at(OffsetDateTime::UNIX_EPOCH);
    match rules.route(&record) {
        Ok(route) => {
            let policy = SyncPolicy::default();
            for delivery in &route.deliveries {
                assert!(!delivery.key.is_empty());
                assert!(
                    ["billing", "regional", "by-token", "numbers"]
                        .contains(&delivery.target.name.as_str())
                );
                let sent = delivery_headers(&record, delivery, &policy);
                assert!(sent.get("Switchyard-Delivery-Id").is_some());
            }
        }
        Err(err) => assert!(
            matches!(
                err.kind(),
                ErrorKind::InvalidInput | ErrorKind::UnsupportedMediaType
            ),
            "{err}"
        ),
    }
});
