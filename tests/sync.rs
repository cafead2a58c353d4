//! The seed's data sequence on a real server: Source → Flow → Sync → Cache → Target,
//! the target's answer → status in the cache → confirmation to the source. Targets here
//! are plain NATS responders owned by the test ("any subject whose responder replies"),
//! idempotent by `Switchyard-Delivery-Id` as the issue asks of real targets, and they
//! record what they applied so the tests can check order, loss and duplicates.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt;
use switchyard::data::flow::FlowComponent;
use switchyard::data::sync::SyncComponent;
use switchyard::data::sync::deliver::{STATUS_NAMESPACE, Status, status_key};
use switchyard::subjects::headers as h;

use common::{Process, free_addr, http_get, until};

const WAIT: Duration = Duration::from_secs(60);

/// What a test target has seen: per delivery id how often, and per key the order in
/// which records were applied.
#[derive(Default)]
struct Applied {
    deliveries: HashMap<String, u32>,
    by_key: BTreeMap<String, Vec<u64>>,
    attempts: HashMap<String, u32>,
}

#[derive(Clone, Default)]
struct TestTarget {
    applied: Arc<Mutex<Applied>>,
}

impl TestTarget {
    /// Answers on `subject`; the first `failures` attempts of each delivery id fail with
    /// a transient error (502). Each delivery id is applied once, whatever the
    /// redeliveries.
    async fn serve(client: &async_nats::Client, subject: &str, failures: u32) -> TestTarget {
        let target = TestTarget::default();
        let mut sub = client.subscribe(subject.to_string()).await.unwrap();
        let (client, state) = (client.clone(), target.applied.clone());
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let headers = msg.headers.clone().unwrap_or_default();
                let id = headers.get(h::DELIVERY_ID).unwrap().as_str().to_string();
                let key = headers
                    .get(h::RECORD_KEY)
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default();
                let n: u64 =
                    serde_json::from_slice::<serde_json::Value>(&msg.payload).unwrap()["n"]
                        .as_u64()
                        .unwrap();
                let fail = {
                    let mut s = state.lock().unwrap();
                    let attempts = s.attempts.entry(id.clone()).or_default();
                    *attempts += 1;
                    if *attempts <= failures {
                        true
                    } else {
                        let seen = s.deliveries.entry(id.clone()).or_default();
                        *seen += 1;
                        if *seen == 1 {
                            s.by_key.entry(key).or_default().push(n);
                        }
                        false
                    }
                };
                let Some(reply) = msg.reply else { continue };
                let mut out = HeaderMap::new();
                if fail {
                    out.insert(h::SERVICE_ERROR, "try again");
                    out.insert(h::SERVICE_ERROR_CODE, "502");
                }
                let _ = client.publish_with_headers(reply, out, "ok".into()).await;
            }
        });
        target
    }

    fn applied_ids(&self) -> BTreeSet<String> {
        self.applied
            .lock()
            .unwrap()
            .deliveries
            .keys()
            .cloned()
            .collect()
    }

    fn attempts(&self, id: &str) -> u32 {
        self.applied
            .lock()
            .unwrap()
            .attempts
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Every key's records arrived in publishing order.
    fn assert_in_order(&self) {
        for (key, ns) in &self.applied.lock().unwrap().by_key {
            assert!(
                ns.windows(2).all(|w| w[0] < w[1]),
                "key {key} out of order: {ns:?}"
            );
        }
    }
}

async fn put_rule(client: &async_nats::Client, name: &str, rule: serde_json::Value) {
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value("flows").await.unwrap();
    kv.put(name, serde_json::to_vec(&rule).unwrap().into())
        .await
        .unwrap();
}

async fn put_policy(client: &async_nats::Client, target: &str, policy: serde_json::Value) {
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value("policies").await.unwrap();
    kv.put(
        format!("sync.{target}"),
        serde_json::to_vec(&policy).unwrap().into(),
    )
    .await
    .unwrap();
}

/// A rule sending `data.in.<source>.>` to one subject target, keyed by field `/k`.
fn rule(name: &str, source: &str, target: &str, subject: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "match": {"subject": format!("data.in.{source}.>")},
        "targets": [{"name": target, "subject": subject}],
        "key": {"field": "/k"},
    })
}

/// Publishes record `n` of key `k` with JetStream (acked) and returns its id.
async fn publish(js: &jetstream::Context, source: &str, k: &str, n: u64) -> String {
    try_publish(js, source, k, n).await.unwrap()
}

/// [`publish`] that reports a failed publish instead of panicking.
async fn try_publish(
    js: &jetstream::Context,
    source: &str,
    k: &str,
    n: u64,
) -> Result<String, String> {
    let id = format!("{source}-{n}");
    let mut headers = HeaderMap::new();
    headers.insert(h::CE_ID, id.as_str());
    headers.insert(h::NATS_MSG_ID, id.as_str());
    headers.insert(h::CE_DATACONTENTTYPE, "application/json");
    let payload = serde_json::to_vec(&serde_json::json!({"k": k, "n": n})).unwrap();
    js.publish_with_headers(format!("data.in.{source}.x"), headers, payload.into())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(id)
}

async fn status_of(client: &async_nats::Client, target: &str, id: &str) -> Option<Status> {
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value("cache").await.ok()?;
    let value = kv
        .get(format!("{STATUS_NAMESPACE}.{}", status_key(target, id)))
        .await
        .ok()??;
    serde_json::from_slice(&value).ok()
}

/// Confirmations stored on `data.confirm.<source>`: `(record id, status)`.
async fn confirmations(client: &async_nats::Client, source: &str) -> Vec<(String, String)> {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("DATA").await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("data.confirm.{source}"),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending as usize;
    let mut out = Vec::new();
    if pending == 0 {
        return out;
    }
    let mut messages = consumer.messages().await.unwrap().take(pending);
    while let Some(Ok(msg)) = messages.next().await {
        let status: Status = serde_json::from_slice(&msg.payload).unwrap();
        out.push((status.record_id, status.status));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_fails_twice_is_redelivered_and_applies_once() {
    let (server, client) = common::provisioned().await;
    let js = jetstream::new(client.clone());
    let target = TestTarget::serve(&client, "test.flaky", 2).await;
    put_policy(
        &client,
        "flaky",
        serde_json::json!({"backoff_ms": [50, 100], "max_deliver": 5}),
    )
    .await;
    put_rule(
        &client,
        "orders",
        rule("orders", "orders", "flaky", "test.flaky"),
    )
    .await;
    let _flow = common::supervise(&server, Box::new(FlowComponent)).await;
    let _sync = common::supervise(&server, Box::new(SyncComponent::default())).await;

    let mut ids = BTreeSet::new();
    for n in 0..20 {
        ids.insert(publish(&js, "orders", &format!("k{}", n % 3), n).await);
    }
    until("every record applied", WAIT, || async {
        (target.applied_ids() == ids).then_some(())
    })
    .await;
    target.assert_in_order();
    for id in &ids {
        assert_eq!(target.attempts(id), 3, "{id}: two failures, then applied");
    }
    // Each record confirmed to its source and its status kept in KV `cache`.
    let confirmed = until("confirmations", WAIT, || async {
        let c = confirmations(&client, "orders").await;
        (c.len() >= ids.len()).then_some(c)
    })
    .await;
    let confirmed_ids: BTreeSet<String> = confirmed
        .iter()
        .filter(|(_, s)| s == "confirmed")
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(confirmed_ids, ids);
    assert_eq!(confirmed.len(), ids.len(), "one confirmation per record");
    for id in &ids {
        let status = until("status", WAIT, || status_of(&client, "flaky", id)).await;
        assert_eq!(status.status, "confirmed");
        assert_eq!(status.deliveries, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_exhausts_its_deliveries_is_dead_lettered_with_the_reason() {
    let (server, client) = common::provisioned().await;
    let js = jetstream::new(client.clone());
    let _target = TestTarget::serve(&client, "test.down", u32::MAX).await;
    put_policy(
        &client,
        "down",
        serde_json::json!({"backoff_ms": [20], "max_deliver": 3}),
    )
    .await;
    put_rule(&client, "r", rule("r", "src", "down", "test.down")).await;
    let _flow = common::supervise(&server, Box::new(FlowComponent)).await;
    let _sync = common::supervise(&server, Box::new(SyncComponent::default())).await;

    let id = publish(&js, "src", "k", 1).await;
    let dlq = js.get_stream("DLQ").await.unwrap();
    let letter = until("dead letter", WAIT, || async {
        dlq.get_last_raw_message_by_subject("dlq.data.in.src.x")
            .await
            .ok()
    })
    .await;
    let header = |name: &str| letter.headers.get(name).map(|v| v.as_str().to_string());
    assert_eq!(header(h::DLQ_CODE).as_deref(), Some("502"));
    assert!(header(h::DLQ_REASON).unwrap().contains("try again"));
    assert_eq!(header(h::DLQ_DELIVERIES).as_deref(), Some("3"));
    assert_eq!(header(h::TARGET).as_deref(), Some("down"));
    assert_eq!(header(h::CE_ID).as_deref(), Some(id.as_str()));
    assert_eq!(&letter.payload[..], br#"{"k":"k","n":1}"#);
    let status = until("failed status", WAIT, || async {
        status_of(&client, "down", &id)
            .await
            .filter(|s| s.status == "failed")
    })
    .await;
    assert!(status.error.unwrap().contains("try again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_changed_while_records_flow_applies_from_then_on_and_loses_nothing() {
    let (server, client) = common::provisioned().await;
    let js = jetstream::new(client.clone());
    let a = TestTarget::serve(&client, "test.a", 0).await;
    let b = TestTarget::serve(&client, "test.b", 0).await;
    put_rule(&client, "r", rule("r", "live", "a", "test.a")).await;
    let _flow = common::supervise(&server, Box::new(FlowComponent)).await;
    let _sync = common::supervise(&server, Box::new(SyncComponent::default())).await;

    let mut before = BTreeSet::new();
    let mut after = BTreeSet::new();
    for n in 0..300u64 {
        if n == 150 {
            put_rule(&client, "r", rule("r", "live", "b", "test.b")).await;
        }
        let id = publish(&js, "live", &format!("k{}", n % 7), n).await;
        if n < 150 {
            before.insert(id)
        } else {
            after.insert(id)
        };
    }
    until("all delivered", WAIT, || async {
        (a.applied_ids().len() + b.applied_ids().len() == 300).then_some(())
    })
    .await;
    assert_eq!(
        a.applied_ids(),
        before,
        "records stored before the change go to a"
    );
    assert_eq!(
        b.applied_ids(),
        after,
        "records stored after the change go to b"
    );
    a.assert_in_order();
    b.assert_in_order();
}

/// `switchyard run flow sync` as its own process, with an admin port.
fn run_flow_sync(url: &str) -> (Process, std::net::SocketAddr) {
    let admin = free_addr().to_string();
    let process = Process::spawn(
        &["run", "flow", "sync", "--nats", url, "--admin", &admin],
        &std::env::temp_dir(),
    );
    (process, admin.parse().unwrap())
}

fn wait_ready(admin: std::net::SocketAddr) {
    common::eventually(WAIT, || {
        http_get(admin, "/readyz").filter(|(s, _)| *s == 200)
    })
    .expect("ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_killed_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let (server, client) = common::provisioned().await;
    let js = jetstream::new(client.clone());
    let target = TestTarget::serve(&client, "test.kill", 0).await;
    // Short ack wait and pin timeout: the restarted instance takes over quickly.
    put_policy(
        &client,
        "kill",
        serde_json::json!({"ack_wait_ms": 2000, "pin_timeout_ms": 1000}),
    )
    .await;
    put_rule(&client, "r", rule("r", "k9", "kill", "test.kill")).await;
    let (mut first, admin) = run_flow_sync(&server.url());
    wait_ready(admin);

    let mut ids = BTreeSet::new();
    for n in 0..400u64 {
        ids.insert(publish(&js, "k9", &format!("k{}", n % 5), n).await);
        if n == 200 {
            until("some records applied", WAIT, || async {
                (!target.applied_ids().is_empty()).then_some(())
            })
            .await;
            first.signal(libc::SIGKILL);
            first.wait(Duration::from_secs(10));
        }
    }
    let (_second, admin) = run_flow_sync(&server.url());
    wait_ready(admin);
    until("every record applied after the restart", WAIT, || async {
        (target.applied_ids() == ids).then_some(())
    })
    .await;
    // The target is idempotent by delivery id, as the issue asks of targets: records
    // the killed instance delivered but had not acked come again with the same id and
    // are not applied again. Applied = first sight of an id, once per record, in order.
    let state = target.applied.lock().unwrap();
    let applied: usize = state.by_key.values().map(Vec::len).sum();
    assert_eq!(applied, ids.len(), "each record applied exactly once");
    let redelivered = state.deliveries.values().filter(|&&n| n > 1).count();
    eprintln!("{redelivered} records were delivered again after the SIGKILL");
    drop(state);
    target.assert_in_order();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_targets_without_duplicates() {
    let (server, client) = common::provisioned().await;
    let js = jetstream::new(client.clone());
    let (_one, admin_one) = run_flow_sync(&server.url());
    let (_two, admin_two) = run_flow_sync(&server.url());
    wait_ready(admin_one);
    wait_ready(admin_two);

    // Twelve targets over two instances: each gets some (all twelve on one side has a
    // chance of 2 in 4096).
    let mut targets = Vec::new();
    for t in 0..12 {
        let subject = format!("test.share.{t}");
        targets.push(TestTarget::serve(&client, &subject, 0).await);
        put_rule(
            &client,
            &format!("r{t}"),
            rule(
                &format!("r{t}"),
                &format!("s{t}"),
                &format!("t{t}"),
                &subject,
            ),
        )
        .await;
    }
    let mut ids: Vec<BTreeSet<String>> = vec![BTreeSet::new(); 12];
    for n in 0..240u64 {
        let t = (n % 12) as usize;
        ids[t].insert(publish(&js, &format!("s{t}"), &format!("k{}", n % 4), n).await);
    }
    for (t, target) in targets.iter().enumerate() {
        until("target applied its records", WAIT, || async {
            (target.applied_ids() == ids[t]).then_some(())
        })
        .await;
        let state = target.applied.lock().unwrap();
        assert!(
            state.attempts.values().all(|&n| n == 1),
            "target {t} got a record twice"
        );
    }
    let workers = |admin| {
        let (_, metrics) = http_get(admin, "/metrics").unwrap();
        metrics
            .lines()
            .find(|l| l.starts_with("switchyard_sync_workers "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (one, two) = (workers(admin_one), workers(admin_two));
    assert_eq!(
        one + two,
        12.0,
        "each target delivered by exactly one instance"
    );
    assert!(one > 0.0 && two > 0.0, "both instances work: {one} + {two}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_are_dead_lettered_with_the_reason_and_never_delivered() {
    let (server, client) = common::provisioned().await;
    let js = jetstream::new(client.clone());
    let target = TestTarget::serve(&client, "test.good", 0).await;
    put_rule(&client, "r", rule("r", "mixed", "good", "test.good")).await;
    let _flow = common::supervise(&server, Box::new(FlowComponent)).await;
    let _sync = common::supervise(&server, Box::new(SyncComponent::default())).await;

    let before = publish(&js, "mixed", "k", 1).await;
    // Not JSON although it says so; then a record without the rule's key field.
    for (id, payload) in [("bad-json", &b"{nope"[..]), ("no-key", br#"{"n":2}"#)] {
        let mut headers = HeaderMap::new();
        headers.insert(h::CE_ID, id);
        headers.insert(h::CE_DATACONTENTTYPE, "application/json");
        js.publish_with_headers("data.in.mixed.x", headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let after = publish(&js, "mixed", "k", 3).await;
    until("the good records delivered", WAIT, || async {
        (target.applied_ids() == BTreeSet::from([before.clone(), after.clone()])).then_some(())
    })
    .await;
    let dlq = js.get_stream("DLQ").await.unwrap();
    let consumer = dlq
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: "dlq.data.in.mixed.x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut letters = consumer.messages().await.unwrap().take(2);
    let mut reasons = BTreeMap::new();
    while let Some(Ok(letter)) = letters.next().await {
        let header = |name: &str| {
            letter
                .headers
                .as_ref()
                .unwrap()
                .get(name)
                .unwrap()
                .to_string()
        };
        assert_eq!(header(h::DLQ_CODE), "400");
        assert_eq!(header(h::DLQ_COMPONENT), "flow");
        reasons.insert(header(h::CE_ID), header(h::DLQ_REASON));
    }
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        !reasons["no-key"].is_empty() && !reasons["bad-json"].is_empty(),
        "{reasons:?}"
    );
    assert!(reasons["no-key"].contains("key"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_under_load_loses_nothing_acknowledged() {
    let (mut server, client) = common::provisioned().await;
    let js = jetstream::new(client.clone());
    let target = TestTarget::serve(&client, "test.restart", 0).await;
    put_rule(&client, "rs", rule("rs", "rs", "restart", "test.restart")).await;
    let (_sync, admin) = run_flow_sync(&server.url());
    wait_ready(admin);

    // Every record whose publish was acknowledged must be applied, restart or not.
    let mut acked = BTreeSet::new();
    let mut restarted_at = None;
    for n in 0..300u64 {
        if n == 150 {
            until("some records applied", WAIT, || async {
                (!target.applied_ids().is_empty()).then_some(())
            })
            .await;
            tokio::task::block_in_place(|| server.server.restart()).expect("restart nats-server");
            restarted_at = Some(std::time::Instant::now());
        }
        let id = loop {
            match try_publish(&js, "rs", &format!("k{}", n % 5), n).await {
                Ok(id) => break id,
                // Down or reconnecting: the source retries (same id, stored once).
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        acked.insert(id);
    }
    let applied_after = |target: &TestTarget| {
        let ids = target.applied_ids();
        (150..300u64).any(|n| ids.contains(&format!("rs-{n}")))
    };
    until(
        "a record published after the restart is applied",
        WAIT,
        || async { applied_after(&target).then_some(()) },
    )
    .await;
    let resumed = restarted_at.map(|at| at.elapsed());
    until("every acknowledged record applied", WAIT, || async {
        acked.is_subset(&target.applied_ids()).then_some(())
    })
    .await;
    eprintln!("deliveries resumed {resumed:?} after the restart");
    let state = target.applied.lock().unwrap();
    let applied: usize = state.by_key.values().map(Vec::len).sum();
    assert_eq!(applied, acked.len(), "each record applied exactly once");
    drop(state);
    target.assert_in_order();
}

/// Settling stores confirmations and statuses with every publish sent before the first
/// ack is awaited (`nats::batch`): each message gets its own sequence, in order, a
/// repeated `Nats-Msg-Id` (a redelivered record's confirmation) is stored once and
/// answered with the original's sequence, and a subject no stream takes is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_writes_are_stored_in_order_and_deduplicated() {
    use switchyard::nats::batch::{self, Message};
    let (_server, client) = common::provisioned().await;
    let js = jetstream::new(client.clone());
    let message = |id: &String| {
        let mut headers = HeaderMap::new();
        headers.insert(h::NATS_MSG_ID, id.as_str());
        Message {
            subject: "data.confirm.batchtest".into(),
            headers,
            payload: id.clone().into_bytes().into(),
        }
    };
    let first: Vec<String> = (0..700).map(|n| format!("m{n}")).collect();
    let sequences = batch::publish(&js, &first, message).await.unwrap();
    assert_eq!(sequences.len(), 700);
    assert!(
        sequences.windows(2).all(|w| w[1] == w[0] + 1),
        "one sequence each, in order"
    );
    // Again with two repeats among new ids: the repeats are skipped, answered with
    // the original sequences.
    let again = vec!["m5".to_string(), "new-1".to_string(), "m699".to_string()];
    let repeated = batch::publish(&js, &again, message).await.unwrap();
    assert_eq!(repeated[0], sequences[5]);
    assert_eq!(repeated[2], sequences[699]);
    assert!(repeated[1] > sequences[699]);
    let stream = js.get_stream("DATA").await.unwrap();
    let stored = stream
        .get_last_raw_message_by_subject("data.confirm.batchtest")
        .await
        .unwrap();
    assert_eq!(stored.sequence, repeated[1], "the repeats were not stored");
    let nowhere = |id: &String| Message {
        subject: format!("nostream.{id}").into(),
        headers: HeaderMap::new(),
        payload: Default::default(),
    };
    assert!(
        batch::publish(&js, &["x".to_string()], nowhere)
            .await
            .is_err(),
        "a subject no stream takes is an error"
    );
}
