//! Data flow rules and the flow component against a real nats-server: `switchyard
//! flows` with the real binary, live views on several connections, routing by the
//! time a record was stored, invalid values written behind Switchyard's back,
//! unrouted copies and dead letters of malformed records.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::Context as JetStream;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use serde_json::{Value, json};
use switchyard::data::flow::{FlowComponent, Route, Rules};
use switchyard::data::record::Record;
use switchyard::error::ErrorKind;
use switchyard::subjects::headers as h;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn rule(name: &str, subject: &str, targets: &[(&str, &str)]) -> Value {
    let targets: Vec<Value> = targets
        .iter()
        .map(|(n, s)| json!({"name": n, "subject": s}))
        .collect();
    json!({"name": name, "match": {"subject": subject}, "targets": targets, "key": {"field": "/id"}})
}

async fn put_rule(js: &JetStream, value: &Value) -> u64 {
    let kv = js.get_key_value("flows").await.unwrap();
    let name = value["name"].as_str().unwrap().to_string();
    kv.put(name, value.to_string().into()).await.unwrap()
}

/// Publishes a record with JetStream and reads it back as stored (with its server time).
async fn publish(js: &JetStream, subject: &str, headers: &[(&str, &str)], payload: &str) -> Record {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, *v);
    }
    let ack = js
        .publish_with_headers(subject.to_string(), map, payload.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let stream = js.get_stream("DATA").await.unwrap();
    let stored = stream.get_raw_message(ack.sequence).await.unwrap();
    Record::new(
        subject.into(),
        ack.sequence,
        stored.time,
        1,
        stored.headers,
        stored.payload,
    )
    .unwrap()
}

async fn route(rules: &Rules, record: &Record) -> Route {
    rules.current_through(record.stored).await.unwrap();
    rules.route(record).unwrap()
}

fn targets(route: &Route) -> Vec<&str> {
    route
        .deliveries
        .iter()
        .map(|d| d.target.name.as_str())
        .collect()
}

/// Every message stored in `stream` on `subject` so far, read with an ordered consumer.
async fn stored_on(js: &JetStream, stream: &str, subject: &str) -> Vec<async_nats::Message> {
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending as usize;
    let mut messages = consumer.messages().await.unwrap().take(pending);
    let mut out = Vec::new();
    while let Some(Ok(message)) = messages.next().await {
        out.push(message.message);
    }
    out
}

fn header<'a>(message: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    message.headers.as_ref()?.get(name).map(|v| v.as_str())
}

/// Consumer `flow` has settled everything stored so far.
async fn flow_settled(js: &JetStream) -> bool {
    let Ok(stream) = js.get_stream("DATA").await else {
        return false;
    };
    match stream.consumer_info("flow").await {
        Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
        Err(_) => false,
    }
}

fn flows(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["flows"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--nats", url]);
    common::run_to_end(&all, &std::env::temp_dir())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_cli_puts_lists_gets_and_removes_and_refuses_invalid_rules() {
    let (server, _client) = common::provisioned().await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let json_file = dir.path().join("orders.json");
    std::fs::write(
        &json_file,
        json!({
            "name": "orders-to-billing",
            "match": {"subject": "data.in.orders.>", "headers": {"ce-type": "io.shop.order"},
                      "fields": {"/kind": {"any_of": ["order", "refund"]}}},
            "targets": [{"name": "billing", "service": "billing", "operation": "apply"},
                        {"name": "audit", "subject": "audit.records"}],
            "key": {"field": "/order_id"}
        })
        .to_string(),
    )
    .unwrap();
    let toml_file = dir.path().join("users.toml");
    std::fs::write(
        &toml_file,
        "name = \"users\"\nenabled = false\n\
         targets = [{ name = \"crm\", subject = \"crm.users\" }]\n\
         key = { subject_token = 3 }\n[match]\nsubject = \"data.in.users.*\"\n",
    )
    .unwrap();

    let (code, out, err) = flows(&url, &["put", json_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("created rule orders-to-billing (revision "),
        "{out}"
    );
    let (code, out, err) = flows(&url, &["put", toml_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("created rule users"), "{out}");
    let (code, out, _) = flows(&url, &["put", json_file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.starts_with("updated rule orders-to-billing"), "{out}");

    let (code, table, _) = flows(&url, &["ls"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(
        lines[1].starts_with("orders-to-billing") && lines[1].contains("yes"),
        "{table}"
    );
    assert!(
        lines[1].contains("billing=svc.billing.apply,audit=audit.records"),
        "{table}"
    );
    assert!(lines[1].contains("field /order_id"), "{table}");
    assert!(
        lines[2].starts_with("users") && lines[2].contains(" no "),
        "{table}"
    );
    assert!(lines[2].contains("subject token 3"), "{table}");
    let (code, listed, _) = flows(&url, &["ls", "--json"]);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["name"], "orders-to-billing");
    assert_eq!(listed[1]["rule"]["enabled"], false);

    let (code, got, _) = flows(&url, &["get", "users"]);
    assert_eq!(code, 0);
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["match"]["subject"], "data.in.users.*");
    assert_eq!(got["key"], json!({"subject_token": 3}));

    // Refused, with one line naming the problem; the rule in force is unchanged.
    let before = common::nats_cli(&url, &["kv", "get", "flows", "orders-to-billing", "--raw"]);
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"name":"orders-to-billing","match":{"subject":"data.in.orders.>"},"tragets":[]}"#,
    )
    .unwrap();
    let (code, out, err) = flows(&url, &["put", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("tragets"), "{err}");
    let loops = dir.path().join("loops.toml");
    std::fs::write(
        &loops,
        "name = \"orders-to-billing\"\ntargets = [{ name = \"x\", subject = \"data.in.x\" }]\n\
         [match]\nsubject = \"data.in.orders.>\"\n",
    )
    .unwrap();
    let (code, _, err) = flows(&url, &["put", loops.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("targets[0].subject"), "{err}");
    // A target name already meaning another destination.
    let clash = dir.path().join("clash.json");
    std::fs::write(
        &clash,
        rule("clash", "data.in.other.>", &[("audit", "audit.elsewhere")]).to_string(),
    )
    .unwrap();
    let (code, _, err) = flows(&url, &["put", clash.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("audit") && err.contains("orders-to-billing"),
        "{err}"
    );
    let after = common::nats_cli(&url, &["kv", "get", "flows", "orders-to-billing", "--raw"]);
    assert_eq!(before, after);
    assert!(common::try_nats_cli(&url, &["kv", "get", "flows", "clash", "--raw"]).is_err());

    let (code, out, _) = flows(&url, &["rm", "users"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "removed rule users");
    let (code, _, err) = flows(&url, &["get", "users"]);
    assert_ne!(code, 0);
    assert!(err.contains("no flow rule named"), "{err}");
    let (code, _, err) = flows(&url, &["rm", "users"]);
    assert_ne!(code, 0);
    assert!(err.contains("no flow rule named"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_views_see_a_live_change() {
    let (server, client) = common::provisioned().await;
    let js = async_nats::jetstream::new(client.clone());
    let stop = CancellationToken::new();
    let other = server.client().await;
    let a = Rules::start(&client, stop.clone()).await.unwrap();
    let b = Rules::start(&other, stop.clone()).await.unwrap();
    let changes = b.changes();

    let record = publish(&js, "data.in.orders.eu", &[], r#"{"id":"o-1"}"#).await;
    for view in [&a, &b] {
        assert!(route(view, &record).await.deliveries.is_empty());
    }
    put_rule(
        &js,
        &rule("orders", "data.in.orders.>", &[("billing", "bill.in")]),
    )
    .await;
    let record = publish(&js, "data.in.orders.eu", &[], r#"{"id":"o-2"}"#).await;
    for view in [&a, &b] {
        let route = route(view, &record).await;
        assert_eq!(targets(&route), ["billing"]);
        assert_eq!(route.deliveries[0].key, "o-2");
        assert_eq!(route.deliveries[0].target.subject, "bill.in");
        assert_eq!(view.in_force(), 1);
    }
    assert!(changes.has_changed().unwrap());
    let known = a.targets();
    assert_eq!(known.len(), 1);
    assert_eq!(known[0].0.name, "billing");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_route_by_the_rules_in_force_when_they_were_stored() {
    let (server, client) = common::provisioned().await;
    let js = async_nats::jetstream::new(client.clone());
    let stop = CancellationToken::new();
    let live = Rules::start(&client, stop.clone()).await.unwrap();

    let before = publish(&js, "data.in.orders.eu", &[], r#"{"id":1}"#).await;
    put_rule(
        &js,
        &rule("orders", "data.in.orders.>", &[("one", "out.one")]),
    )
    .await;
    let first = publish(&js, "data.in.orders.eu", &[], r#"{"id":2}"#).await;
    put_rule(
        &js,
        &rule("orders", "data.in.orders.>", &[("two", "out.two")]),
    )
    .await;
    let second = publish(&js, "data.in.orders.eu", &[], r#"{"id":3}"#).await;
    let kv = js.get_key_value("flows").await.unwrap();
    kv.delete("orders").await.unwrap();
    let after = publish(&js, "data.in.orders.eu", &[], r#"{"id":4}"#).await;

    // A view started after every change rebuilds the same versions from the history.
    let late = Rules::start(&server.client().await, stop.clone())
        .await
        .unwrap();
    for view in [&live, &late] {
        // Newest first: the answer does not depend on the order of the questions.
        assert!(route(view, &after).await.deliveries.is_empty());
        assert_eq!(targets(&route(view, &second).await), ["two"]);
        assert_eq!(targets(&route(view, &first).await), ["one"]);
        assert!(route(view, &before).await.deliveries.is_empty());
        let mut known: Vec<String> = view.targets().into_iter().map(|(t, _)| t.name).collect();
        known.sort();
        assert_eq!(known, ["one", "two"]);
    }
    // Records are malformed whatever the rules: a payload that does not decode, a key
    // a matching rule needs and the record lacks.
    put_rule(
        &js,
        &rule("orders", "data.in.orders.>", &[("two", "out.two")]),
    )
    .await;
    let bad = publish(&js, "data.in.orders.eu", &[], "{nope").await;
    let keyless = publish(&js, "data.in.orders.eu", &[], r#"{"other":1}"#).await;
    let text = publish(
        &js,
        "data.in.orders.eu",
        &[("Content-Type", "text/plain")],
        "hi",
    )
    .await;
    for (record, kind) in [
        (&bad, ErrorKind::InvalidInput),
        (&keyless, ErrorKind::InvalidInput),
        (&text, ErrorKind::UnsupportedMediaType),
    ] {
        live.current_through(record.stored).await.unwrap();
        assert_eq!(live.route(record).unwrap_err().kind(), kind);
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_value_written_directly_is_ignored_and_the_previous_version_stays() {
    let (server, client) = common::provisioned().await;
    let js = async_nats::jetstream::new(client.clone());
    let stop = CancellationToken::new();
    let rules = Rules::start(&client, stop.clone()).await.unwrap();
    put_rule(
        &js,
        &rule("orders", "data.in.orders.>", &[("one", "out.one")]),
    )
    .await;
    put_rule(&js, &rule("other", "data.in.other.>", &[("x", "out.x")])).await;

    let url = server.url();
    common::nats_cli(
        &url,
        &[
            "kv",
            "put",
            "flows",
            "orders",
            r#"{"name":"orders","oops":1}"#,
        ],
    );
    // Another rule may not take target `one` to another destination either.
    let clash = rule("other", "data.in.other.>", &[("one", "out.elsewhere")]).to_string();
    common::nats_cli(&url, &["kv", "put", "flows", "other", &clash]);
    let record = publish(&js, "data.in.orders.eu", &[], r#"{"id":1}"#).await;
    let other = publish(&js, "data.in.other.eu", &[], r#"{"id":1}"#).await;
    assert_eq!(targets(&route(&rules, &record).await), ["one"]);
    let other_route = route(&rules, &other).await;
    assert_eq!(targets(&other_route), ["x"]);
    // So does a view that reads it all from the history.
    let late = Rules::start(&server.client().await, stop.clone())
        .await
        .unwrap();
    assert_eq!(targets(&route(&late, &record).await), ["one"]);
    assert_eq!(route(&late, &other).await, other_route);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_records_are_copied_once_and_malformed_ones_dead_lettered() {
    let metrics = switchyard::observability::metrics::install();
    let (server, client) = common::provisioned().await;
    let js = async_nats::jetstream::new(client.clone());
    put_rule(
        &js,
        &rule("orders", "data.in.orders.>", &[("one", "out.one")]),
    )
    .await;
    let flow = common::supervise(&server, Box::new(FlowComponent)).await;

    let routed = publish(&js, "data.in.orders.eu", &[], r#"{"id":1}"#).await;
    let unrouted = publish(
        &js,
        "data.in.nowhere.x",
        &[
            ("ce-id", "u-1"),
            ("x-custom", "kept"),
            ("Nats-Msg-Id", "u-1"),
        ],
        r#"{"id":2}"#,
    )
    .await;
    let bad = publish(&js, "data.in.orders.eu", &[("ce-id", "b-1")], "{nope").await;
    let text = publish(
        &js,
        "data.in.orders.eu",
        &[("Content-Type", "text/plain")],
        "hi",
    )
    .await;
    common::until("flow settled every record", WAIT, || async {
        flow_settled(&js).await.then_some(())
    })
    .await;

    let copies = stored_on(&js, "DATA", "data.unrouted").await;
    assert_eq!(copies.len(), 1, "one unrouted copy");
    let copy = &copies[0];
    assert_eq!(copy.payload, unrouted.payload);
    assert_eq!(header(copy, "x-custom"), Some("kept"));
    assert_eq!(header(copy, h::CE_ID), Some("u-1"));
    assert_eq!(header(copy, h::ORIGINAL_SUBJECT), Some("data.in.nowhere.x"));
    let origin = format!("DATA:{}", unrouted.seq);
    assert_eq!(header(copy, h::ORIGINAL_SEQ), Some(origin.as_str()));
    assert_eq!(
        header(copy, h::NATS_MSG_ID),
        Some(format!("unrouted:{origin}").as_str())
    );

    let letters = stored_on(&js, "DLQ", "dlq.data.in.orders.eu").await;
    assert_eq!(letters.len(), 2, "two dead letters");
    // The records are settled concurrently: pair each letter with its original.
    let letter_of = |original: &Record| {
        letters
            .iter()
            .find(|l| header(l, h::ORIGINAL_SEQ) == Some(original.origin().as_str()))
            .expect("a dead letter for each malformed record")
    };
    for (letter, original, code) in [
        (letter_of(&bad), &bad, "400"),
        (letter_of(&text), &text, "415"),
    ] {
        assert_eq!(letter.payload, original.payload);
        assert_eq!(header(letter, h::DLQ_CODE), Some(code));
        assert_eq!(header(letter, h::DLQ_COMPONENT), Some("flow"));
        assert!(header(letter, h::DLQ_REASON).is_some_and(|r| !r.is_empty()));
        let origin = original.origin();
        assert_eq!(header(letter, h::ORIGINAL_SEQ), Some(origin.as_str()));
    }
    assert!(routed.seq > 0);

    // The error logger: each malformed record is an error event on errors.flow.
    let errors = common::until("two error records on errors.flow", WAIT, || async {
        let errors = stored_on(&js, "ERRORS", "errors.flow").await;
        (errors.len() >= 2).then_some(errors)
    })
    .await;
    let mut kinds: Vec<String> = errors
        .iter()
        .map(|e| {
            assert!(header(e, h::CE_TYPE).is_some_and(|t| t.starts_with("io.switchyard.error.")));
            let record: switchyard::resilience::errorlog::ErrorRecord =
                serde_json::from_slice(&e.payload).unwrap();
            assert_eq!(record.component, "flow");
            assert_eq!(record.subject.as_deref(), Some("data.in.orders.eu"));
            record.kind.to_string()
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["invalid_input", "unsupported_media_type"]);

    // Other tests of this binary count too: at least these.
    let rendered = metrics.render();
    for (outcome, at_least) in [("routed", 1.0), ("unrouted", 1.0), ("malformed", 2.0)] {
        let series = format!("switchyard_flow_records_total{{outcome=\"{outcome}\"}} ");
        let value = rendered
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert!(
            value.is_some_and(|v| v >= at_least),
            "{series} in:\n{rendered}"
        );
    }
    assert!(rendered.contains("switchyard_flow_rules "), "{rendered}");
    flow.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_flow_components_share_the_consumer_without_duplicate_copies() {
    let (server, client) = common::provisioned().await;
    let js = async_nats::jetstream::new(client.clone());
    let first = common::supervise(&server, Box::new(FlowComponent)).await;
    let second = common::supervise(&server, Box::new(FlowComponent)).await;

    const N: usize = 60;
    for n in 0..N {
        publish(
            &js,
            &format!("data.in.src{}", n % 3),
            &[],
            &format!(r#"{{"n":{n}}}"#),
        )
        .await;
    }
    common::until("flow settled every record", WAIT, || async {
        flow_settled(&js).await.then_some(())
    })
    .await;
    let copies = stored_on(&js, "DATA", "data.unrouted").await;
    assert_eq!(copies.len(), N);
    let mut origins: Vec<String> = copies
        .iter()
        .filter_map(|c| header(c, h::ORIGINAL_SEQ).map(str::to_string))
        .collect();
    origins.sort();
    origins.dedup();
    assert_eq!(origins.len(), N, "each record copied once");

    let info = js
        .get_stream("DATA")
        .await
        .unwrap()
        .consumer_info("flow")
        .await
        .unwrap();
    assert_eq!(info.config.filter_subject, "data.in.>");
    first.stop(Duration::from_secs(5)).await;
    second.stop(Duration::from_secs(5)).await;
}
