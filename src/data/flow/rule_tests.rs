use serde_json::json;
use time::OffsetDateTime;

use super::*;
use crate::error::ErrorKind;

pub(crate) fn record(subject: &str, headers: &[(&str, &str)], payload: &[u8]) -> Record {
    Record::for_test(subject, OffsetDateTime::UNIX_EPOCH, headers, payload).unwrap()
}

fn example() -> serde_json::Value {
    json!({
        "name": "orders-to-billing",
        "match": {
            "subject": "data.in.orders.>",
            "headers": {"ce-type": "io.shop.order"},
            "fields": {"/kind": "order"}
        },
        "targets": [
            {"name": "billing", "service": "billing", "operation": "apply"},
            {"name": "audit", "subject": "audit.records"}
        ],
        "key": {"field": "/order_id"},
        "enabled": true
    })
}

fn parse(value: &serde_json::Value) -> Result<Rule, Error> {
    Rule::from_json(value.to_string().as_bytes())
}

fn refused(value: serde_json::Value, field: &str) {
    let err = parse(&value).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.message().contains(field),
        "{field:?} not named in {:?}",
        err.message()
    );
}

fn split(subject: &str) -> Vec<&str> {
    subject.split('.').collect()
}

#[test]
fn the_documented_example_parses() {
    let rule = parse(&example()).unwrap();
    assert_eq!(rule.name(), "orders-to-billing");
    assert!(rule.enabled());
    assert_eq!(
        rule.targets(),
        &[
            Target {
                name: "billing".into(),
                subject: "svc.billing.apply".into()
            },
            Target {
                name: "audit".into(),
                subject: "audit.records".into()
            },
        ]
    );
    assert_eq!(rule.describe_key(), "field /order_id");
    // What is stored reads back as the same rule.
    let again = Rule::from_json(&rule.to_json().unwrap()).unwrap();
    assert_eq!(again.spec(), rule.spec());
}

#[test]
fn toml_has_the_same_fields() {
    let text = r#"
        name = "orders-to-billing"
        enabled = false
        targets = [
            { name = "billing", service = "billing", operation = "apply" },
            { name = "audit", subject = "audit.records" },
        ]
        key = { header = "ce-subject" }

        [match]
        subject = "data.in.orders.>"
        headers = { "ce-type" = ["io.shop.order", "io.shop.refund"] }
        fields = { "/kind" = { any_of = ["order", "refund"] }, "/n" = 3 }
    "#;
    let rule = Rule::from_toml(text).unwrap();
    assert!(!rule.enabled());
    assert_eq!(rule.targets().len(), 2);
    assert_eq!(rule.describe_key(), "header ce-subject");
    let err = Rule::from_toml("name = \"x\"\n[match]\nsubjct = \"data.in.a\"").unwrap_err();
    assert!(err.message().contains("subjct"), "{}", err.message());
}

#[test]
fn defaults_enabled_and_the_record_id_key() {
    let rule = parse(&json!({
        "name": "all", "match": {"subject": "data.in.>"},
        "targets": [{"name": "t", "subject": "out.all"}]
    }))
    .unwrap();
    assert!(rule.enabled());
    assert_eq!(rule.describe_key(), "record id");
}

#[test]
fn invalid_rules_name_the_field() {
    let mut v = example();
    v["tragets"] = json!([]);
    refused(v, "tragets");
    let mut v = example();
    v["match"]["subject"] = json!("data.out.>");
    refused(v, "match.subject");
    let mut v = example();
    v["match"]["subject"] = json!("data.in.>.x");
    refused(v, "match.subject");
    let mut v = example();
    v["match"]["subject"] = json!("data.in.a b");
    refused(v, "match.subject");
    let mut v = example();
    v["name"] = json!("a b");
    refused(v, "name");
    let mut v = example();
    v["targets"] = json!([]);
    refused(v, "targets");
    let mut v = example();
    v["targets"][0]["name"] = json!("bad name");
    refused(v, "targets[0].name");
    let mut v = example();
    v["targets"][1]["subject"] = json!("data.in.loop");
    refused(v, "targets[1].subject");
    let mut v = example();
    v["targets"][1]["subject"] = json!("dlq.x");
    refused(v, "targets[1].subject");
    let mut v = example();
    v["targets"][1]["subject"] = json!("out.*");
    refused(v, "targets[1].subject");
    let mut v = example();
    v["targets"][1]["service"] = json!("x");
    refused(v, "targets[1]");
    let mut v = example();
    v["targets"][1]["name"] = json!("billing");
    refused(v, "appears twice");
    let mut v = example();
    v["match"]["headers"] = json!({"bad:name": "x"});
    refused(v, "match.headers");
    let mut v = example();
    v["match"]["headers"] = json!({"x": 1});
    refused(v, "match.headers.x");
    let mut v = example();
    v["match"]["fields"] = json!({"kind": "x"});
    refused(v, "match.fields.kind");
    let mut v = example();
    v["key"] = json!({"field": "order_id"});
    refused(v, "key.field");
    let mut v = example();
    v["key"] = json!({"colour": "red"});
    refused(v, "colour");
    let mut v = example();
    v["match"]["subject"] = json!("data.in.orders.*");
    v["key"] = json!({"subject_token": 4});
    refused(v, "key.subject_token");
    refused(json!("nope"), "not a valid rule");
}

#[test]
fn matches_subject_headers_and_fields() {
    let rule = parse(&example()).unwrap();
    let order = br#"{"kind":"order","order_id":"o-1"}"#;
    let typed = [("ce-type", "io.shop.order")];
    let yes = record("data.in.orders.eu", &typed, order);
    assert!(rule.matches(&yes, &split(&yes.subject)).unwrap());
    let no_header = record("data.in.orders.eu", &[], order);
    assert!(
        !rule
            .matches(&no_header, &split(&no_header.subject))
            .unwrap()
    );
    let other_kind = record("data.in.orders.eu", &typed, br#"{"kind":"refund"}"#);
    assert!(
        !rule
            .matches(&other_kind, &split(&other_kind.subject))
            .unwrap()
    );
    // `>` needs at least one more token.
    let bare = record("data.in.orders", &typed, order);
    assert!(!rule.matches(&bare, &split(&bare.subject)).unwrap());
    let elsewhere = record("data.in.users.eu", &typed, order);
    assert!(
        !rule
            .matches(&elsewhere, &split(&elsewhere.subject))
            .unwrap()
    );
}

#[test]
fn single_token_wildcards_match_exactly_one() {
    let rule = parse(&json!({
        "name": "r", "match": {"subject": "data.in.*.eu"},
        "targets": [{"name": "t", "subject": "out"}]
    }))
    .unwrap();
    for (subject, expected) in [
        ("data.in.orders.eu", true),
        ("data.in.users.eu", true),
        ("data.in.orders.us", false),
        ("data.in.orders.eu.x", false),
        ("data.in.eu", false),
    ] {
        let r = record(subject, &[], b"{}");
        assert_eq!(
            rule.matches(&r, &split(subject)).unwrap(),
            expected,
            "{subject}"
        );
    }
}

#[test]
fn keys_from_field_header_token_and_id() {
    let payload = br#"{"order_id":"o-1","n":7,"obj":{"a":1},"none":null}"#;
    let r = record(
        "data.in.orders.eu",
        &[("x-key", "h%20k"), ("ce-id", "rec-1")],
        payload,
    );
    let subject = split(&r.subject);
    let with_key = |key: serde_json::Value| {
        let mut v = example();
        v["key"] = key;
        parse(&v).unwrap()
    };
    let key = |rule: &Rule| rule.key_of(&r, &subject);
    assert_eq!(
        key(&with_key(json!({"field": "/order_id"}))).unwrap(),
        "o-1"
    );
    assert_eq!(key(&with_key(json!({"field": "/n"}))).unwrap(), "7");
    assert_eq!(
        key(&with_key(json!({"field": "/obj"}))).unwrap(),
        r#"{"a":1}"#
    );
    assert_eq!(key(&with_key(json!({"header": "x-key"}))).unwrap(), "h k");
    assert_eq!(key(&with_key(json!({"subject_token": 3}))).unwrap(), "eu");
    let mut no_key = example();
    no_key.as_object_mut().unwrap().remove("key");
    assert_eq!(key(&parse(&no_key).unwrap()).unwrap(), "rec-1");
    for missing in [
        json!({"field": "/missing"}),
        json!({"field": "/none"}),
        json!({"header": "x-other"}),
        json!({"subject_token": 9}),
    ] {
        let err = key(&with_key(missing.clone())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{missing}");
        assert!(
            err.message().contains("orders-to-billing"),
            "{}",
            err.message()
        );
    }
}

#[test]
fn a_target_name_means_one_destination_across_rules() {
    let first = parse(&example()).unwrap();
    let mut v = example();
    v["name"] = json!("other");
    let same = parse(&v).unwrap();
    assert!(check_conflicts(&same, [&first]).is_ok());
    v["targets"][1]["subject"] = json!("audit.elsewhere");
    let conflicting = parse(&v).unwrap();
    let err = check_conflicts(&conflicting, [&first]).unwrap_err();
    assert!(err.message().contains("audit"), "{}", err.message());
    // A new version of the same rule may move its own target.
    let mut v = example();
    v["targets"][1]["subject"] = json!("audit.elsewhere");
    assert!(check_conflicts(&parse(&v).unwrap(), [&first]).is_ok());
}

#[test]
fn a_key_with_a_line_break_makes_the_record_malformed() {
    // Found by fuzzing (fuzz/flow_record): data sync sends the key in a header, and
    // async-nats panics on a header value with CR or LF, so the sync worker died.
    let mut v = example();
    v["key"] = json!({"field": "/order_id"});
    let rule = parse(&v).unwrap();
    let r = record("data.in.orders.eu", &[], br#"{"order_id":"o-1\nx"}"#);
    let err = rule.key_of(&r, &split(&r.subject)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("line break"), "{}", err.message());
    v["key"] = json!({"header": "x-key"});
    let rule = parse(&v).unwrap();
    let r = record("data.in.orders.eu", &[("x-key", "a%0Ab")], b"{}");
    assert!(rule.key_of(&r, &split(&r.subject)).is_err());
}
