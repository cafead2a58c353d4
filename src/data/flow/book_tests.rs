use serde_json::json;

use super::*;
use crate::error::ErrorKind;

fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_700_000_000 + seconds)
}

fn record(subject: &str, stored: OffsetDateTime, payload: &str) -> Record {
    Record::for_test(subject, stored, &[("ce-id", "r1")], payload.as_bytes()).unwrap()
}

fn rule(name: &str, subject: &str, targets: &[(&str, &str)]) -> Vec<u8> {
    let targets: Vec<_> = targets
        .iter()
        .map(|(n, s)| json!({"name": n, "subject": s}))
        .collect();
    json!({"name": name, "match": {"subject": subject}, "targets": targets, "key": {"field": "/id"}})
        .to_string()
        .into_bytes()
}

fn names(route: &Route) -> Vec<&str> {
    route
        .deliveries
        .iter()
        .map(|d| d.target.name.as_str())
        .collect()
}

#[test]
fn routes_by_the_version_in_force_at_the_stored_time() {
    let mut book = Book::new();
    assert!(matches!(
        book.put(
            "a",
            1,
            at(10),
            &rule("a", "data.in.x.>", &[("one", "out.one")])
        ),
        Change::Applied
    ));
    assert!(matches!(
        book.put(
            "a",
            2,
            at(20),
            &rule("a", "data.in.x.>", &[("two", "out.two")])
        ),
        Change::Applied
    ));
    let route = |book: &Book, stored| {
        book.at(stored)
            .route(&record("data.in.x.y", stored, r#"{"id":1}"#))
    };
    assert!(route(&book, at(5)).unwrap().is_unrouted());
    assert_eq!(names(&route(&book, at(10)).unwrap()), ["one"]);
    assert_eq!(names(&route(&book, at(15)).unwrap()), ["one"]);
    assert_eq!(names(&route(&book, at(20)).unwrap()), ["two"]);
    assert_eq!(names(&route(&book, at(99)).unwrap()), ["two"]);
    assert!(matches!(book.remove("a", 3, at(30)), Change::Applied));
    assert!(route(&book, at(31)).unwrap().is_unrouted());
    assert!(matches!(book.remove("a", 4, at(40)), Change::Unchanged));
    let targets = book.targets();
    assert_eq!(targets.len(), 2);
    assert_eq!(
        targets[0],
        (
            Target {
                name: "one".into(),
                subject: "out.one".into()
            },
            at(10)
        )
    );
    assert_eq!(targets[1].1, at(20));
}

#[test]
fn rules_apply_in_name_order_and_targets_once() {
    let mut book = Book::new();
    book.put(
        "b",
        1,
        at(1),
        &rule("b", "data.in.>", &[("shared", "out.s"), ("bee", "out.b")]),
    );
    book.put(
        "a",
        2,
        at(2),
        &rule("a", "data.in.x.*", &[("shared", "out.s")]),
    );
    let route = book
        .at(at(3))
        .route(&record("data.in.x.y", at(3), r#"{"id":"k"}"#))
        .unwrap();
    assert_eq!(names(&route), ["shared", "bee"]);
    assert_eq!(route.deliveries[0].rule, "a");
    assert_eq!(route.deliveries[1].rule, "b");
    assert!(route.deliveries.iter().all(|d| d.key == "k"));
}

#[test]
fn malformed_records_and_missing_keys_are_errors() {
    let mut book = Book::new();
    book.put("a", 1, at(1), &rule("a", "data.in.x.>", &[("t", "out.t")]));
    let rules = book.at(at(2));
    let err = rules
        .route(&record("data.in.x.y", at(2), "{nope"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = rules
        .route(&record("data.in.x.y", at(2), r#"{"other":1}"#))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // A bad payload is malformed even when no rule matches.
    assert!(rules.route(&record("data.in.z", at(2), "{nope")).is_err());
    // A missing key only matters to a matching rule.
    assert!(
        rules
            .route(&record("data.in.z", at(2), "{}"))
            .unwrap()
            .is_unrouted()
    );
}

#[test]
fn invalid_values_keep_the_previous_version() {
    let mut book = Book::new();
    book.put("a", 1, at(1), &rule("a", "data.in.x.>", &[("t", "out.t")]));
    assert!(matches!(
        book.put("a", 2, at(2), b"{bad"),
        Change::Rejected(_)
    ));
    assert!(matches!(
        book.put(
            "a",
            3,
            at(3),
            &rule("wrong-name", "data.in.>", &[("t", "out.t")])
        ),
        Change::Rejected(_)
    ));
    // Another rule may not give target t another destination.
    assert!(matches!(
        book.put(
            "b",
            4,
            at(4),
            &rule("b", "data.in.>", &[("t", "out.other")])
        ),
        Change::Rejected(_)
    ));
    assert!(matches!(
        book.put("a", 5, at(5), &rule("a", "data.in.x.>", &[("t", "out.t")])),
        Change::Unchanged
    ));
    let route = book
        .at(at(9))
        .route(&record("data.in.x.y", at(9), r#"{"id":1}"#))
        .unwrap();
    assert_eq!(names(&route), ["t"]);
    assert_eq!(book.in_force(), 1);
}

#[test]
fn old_versions_are_pruned_but_the_one_in_force_at_the_horizon_stays() {
    let mut book = Book::new();
    let day = 86_400;
    book.put(
        "a",
        1,
        at(0),
        &rule("a", "data.in.>", &[("one", "out.one")]),
    );
    book.put(
        "a",
        2,
        at(day),
        &rule("a", "data.in.>", &[("two", "out.two")]),
    );
    book.put(
        "a",
        3,
        at(9 * day),
        &rule("a", "data.in.>", &[("three", "out.three")]),
    );
    // Horizon: day 2. Day 1's version was in force then, so it stays; older ones go.
    let kept: Vec<u64> = book.snapshots().map(|s| s.revision).collect();
    assert_eq!(kept, [2, 3]);
    // A record older than every kept version is routed by the oldest kept one.
    let route = book
        .at(at(0))
        .route(&record("data.in.x", at(0), r#"{"id":1}"#))
        .unwrap();
    assert_eq!(names(&route), ["two"]);
    for i in 0..(MAX_SNAPSHOTS as u64 + 10) {
        let enabled = i % 2 == 0;
        let mut value: serde_json::Value =
            serde_json::from_slice(&rule("a", "data.in.>", &[("three", "out.three")])).unwrap();
        value["enabled"] = json!(enabled);
        book.put("a", 10 + i, at(9 * day + 1), value.to_string().as_bytes());
    }
    assert_eq!(book.snapshots().count(), MAX_SNAPSHOTS);
}

#[test]
fn clocks_stepping_back_keep_versions_in_order() {
    let mut book = Book::new();
    book.put(
        "a",
        1,
        at(10),
        &rule("a", "data.in.>", &[("one", "out.one")]),
    );
    book.put(
        "b",
        2,
        at(5),
        &rule("b", "data.in.>", &[("two", "out.two")]),
    );
    let times: Vec<OffsetDateTime> = book.snapshots().map(|s| s.at).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    let route = book
        .at(at(10))
        .route(&record("data.in.x", at(10), r#"{"id":1}"#))
        .unwrap();
    assert_eq!(names(&route), ["one", "two"]);
}
