//! The event bus against a real nats-server: typed publish, ephemeral and queue-group
//! subscriptions, durable consumers with explicit acks, malformed events, publish
//! de-duplication and `switchyard events tail`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::Context as JetStream;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard::envelope::{ContentType, Envelope, Meta};
use switchyard::error::ErrorKind;
use switchyard::integration::bus::catalog::{Lifecycle, ServiceLifecycle};
use switchyard::integration::bus::{self, DurableOptions, Event};
use switchyard::subjects::headers as h;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A user event, defined the way a service would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OrderPlaced {
    order: String,
    amount: u32,
}

impl Event for OrderPlaced {
    fn ce_type(&self) -> &'static str {
        "com.example.orders.placed"
    }
    fn subject(&self) -> String {
        "events.orders.placed".into()
    }
}

fn order(n: u32) -> OrderPlaced {
    OrderPlaced {
        order: format!("o-{n}"),
        amount: n,
    }
}

async fn start() -> (common::TestServer, async_nats::Client, JetStream) {
    let (server, client) = common::provisioned().await;
    let js = async_nats::jetstream::new(client.clone());
    (server, client, js)
}

async fn next<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .expect("an item within the timeout")
        .expect("the stream goes on")
}

async fn nothing_within<S: Stream + Unpin>(stream: &mut S, wait: Duration) -> bool {
    tokio::time::timeout(wait, stream.next()).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_subscription_receives_typed_events_in_both_codecs() {
    let (_server, client, js) = start().await;
    let mut events = bus::subscribe::<OrderPlaced>(&client, "orders.*", None)
        .await
        .unwrap();

    let seq = bus::publish(&js, &client, "urn:test", &order(1), None)
        .await
        .unwrap();
    assert!(seq > 0);
    let got = next(&mut events).await.unwrap();
    assert_eq!(got.data, order(1));
    assert_eq!(got.meta.kind, "com.example.orders.placed");
    assert_eq!(got.meta.source, "urn:test");
    assert_eq!(got.meta.content_type, ContentType::MsgPack);

    let cause = got.meta.clone();
    let meta = cause
        .follow_up("urn:test", order(2).ce_type())
        .with_content_type(ContentType::Json);
    bus::publish_with_meta(&js, &client, meta.clone(), &order(2))
        .await
        .unwrap();
    let got = next(&mut events).await.unwrap();
    assert_eq!(got.data, order(2));
    assert_eq!(got.meta.content_type, ContentType::Json);
    assert_eq!(got.meta.correlation_id, cause.correlation_id);
    assert_eq!(got.meta.causation_id.as_deref(), Some(cause.id.as_str()));

    // A pattern outside the subject grammar is refused before anything is subscribed.
    for bad in ["", "orders..x", "orders.>.x", "a b", "x\r\ny"] {
        let err = bus::subscribe::<OrderPlaced>(&client, bad, None)
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
    let err = bus::subscribe::<OrderPlaced>(&client, ">", Some("bad group"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_group_members_share_events_and_plain_subscribers_see_all() {
    let (_server, client, js) = start().await;
    let mut a = bus::subscribe::<OrderPlaced>(&client, "orders.>", Some("workers"))
        .await
        .unwrap();
    let mut b = bus::subscribe::<OrderPlaced>(&client, "orders.>", Some("workers"))
        .await
        .unwrap();
    let mut all = bus::subscribe::<OrderPlaced>(&client, ">", None)
        .await
        .unwrap();

    const N: u32 = 40;
    for n in 0..N {
        bus::publish(&js, &client, "urn:test", &order(n), None)
            .await
            .unwrap();
    }
    let mut seen: HashMap<u32, u32> = HashMap::new();
    let (mut from_a, mut from_b) = (0, 0);
    while from_a + from_b < N {
        let event = tokio::select! {
            e = next(&mut a) => { from_a += 1; e }
            e = next(&mut b) => { from_b += 1; e }
        };
        *seen.entry(event.unwrap().data.amount).or_default() += 1;
    }
    assert_eq!(seen.len(), N as usize);
    assert!(seen.values().all(|&count| count == 1), "{seen:?}");
    // Nothing more: each event went to exactly one member.
    assert!(nothing_within(&mut a, Duration::from_millis(300)).await);
    assert!(nothing_within(&mut b, Duration::from_millis(300)).await);
    for n in 0..N {
        assert_eq!(next(&mut all).await.unwrap().data.amount, n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_consumer_gets_earlier_events_and_a_nak_brings_one_back() {
    let (_server, client, js) = start().await;
    for n in 1..=2 {
        bus::publish(&js, &client, "urn:test", &order(n), None)
            .await
            .unwrap();
    }
    let mut events = bus::durable::<OrderPlaced>(&js, "orders-audit", "orders.>")
        .await
        .unwrap();
    assert_eq!(events.name(), "orders-audit");

    let first = next(&mut events).await.unwrap();
    assert_eq!((first.envelope.data.amount, first.delivered), (1, 1));
    assert_eq!(first.subject, "events.orders.placed");
    first.nak(None).await.unwrap();
    let mut acked = Vec::new();
    while acked.len() < 2 {
        let delivery = next(&mut events).await.unwrap();
        if delivery.envelope.data.amount == 1 {
            assert_eq!(delivery.delivered, 2, "the nak'ed event comes back");
            assert_eq!(delivery.stream_sequence, first.stream_sequence);
        }
        delivery.ack().await.unwrap();
        acked.push(delivery.envelope.data.amount);
    }
    acked.sort();
    assert_eq!(acked, [1, 2]);
    assert!(nothing_within(&mut events, Duration::from_millis(500)).await);

    // Created idempotently: a restarted instance binds to the same consumer and
    // continues after the acked events.
    drop(events);
    let mut again = bus::durable::<OrderPlaced>(&js, "orders-audit", "orders.>")
        .await
        .unwrap();
    bus::publish(&js, &client, "urn:test", &order(3), None)
        .await
        .unwrap();
    assert_eq!(next(&mut again).await.unwrap().envelope.data.amount, 3);

    let mut consumer = js
        .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
            "orders-audit",
            "EVENTS",
        )
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        info.config.ack_policy,
        async_nats::jetstream::consumer::AckPolicy::Explicit
    );
    assert_eq!(info.config.filter_subject, "events.orders.>");
    assert_eq!(info.config.max_deliver, 5);

    let err = bus::durable::<OrderPlaced>(&js, "bad.name", ">")
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

fn json_envelope(n: u32) -> (HeaderMap, Vec<u8>) {
    let meta =
        Meta::new("urn:test", "com.example.orders.placed").with_content_type(ContentType::Json);
    Envelope::new(meta, order(n)).encode().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_err_items_and_the_stream_goes_on() {
    let (_server, client, js) = start().await;
    let mut live = bus::subscribe::<OrderPlaced>(&client, "x.y", None)
        .await
        .unwrap();
    let options = DurableOptions {
        ack_wait: Duration::from_secs(1),
        ..Default::default()
    };
    let mut durable = bus::durable_with::<OrderPlaced>(&js, "xy", "x.*", options)
        .await
        .unwrap();

    let mut msgpack = HeaderMap::new();
    msgpack.insert(h::CE_DATACONTENTTYPE, "application/msgpack");
    let mut text = HeaderMap::new();
    text.insert(h::CE_DATACONTENTTYPE, "text/plain");
    let bad: [(HeaderMap, &[u8], ErrorKind); 4] = [
        (HeaderMap::new(), b"{not json", ErrorKind::InvalidInput),
        (msgpack, b"\xc1", ErrorKind::InvalidInput),
        (text, b"hello", ErrorKind::UnsupportedMediaType),
        // Valid JSON, wrong shape for the type.
        (HeaderMap::new(), br#"{"order":1}"#, ErrorKind::InvalidInput),
    ];
    for (headers, payload, _) in &bad {
        let ack = js
            .publish_with_headers("events.x.y", headers.clone(), payload.to_vec().into())
            .await
            .unwrap();
        ack.await.unwrap();
    }
    let (headers, payload) = json_envelope(7);
    js.publish_with_headers("events.x.y", headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();

    for (_, _, kind) in &bad {
        assert_eq!(next(&mut live).await.unwrap_err().kind(), *kind);
        assert_eq!(next(&mut durable).await.err().unwrap().kind(), *kind);
    }
    assert_eq!(next(&mut live).await.unwrap().data, order(7));
    let good = next(&mut durable).await.unwrap();
    assert_eq!(good.envelope.data, order(7));
    good.ack().await.unwrap();

    // The malformed ones were terminated: well past ack_wait, nothing comes back.
    assert!(nothing_within(&mut durable, Duration::from_millis(2500)).await);
    let mut consumer = js
        .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
            "xy", "EVENTS",
        )
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_the_same_envelope_twice_stores_it_once() {
    let (_server, client, js) = start().await;
    let meta = Meta::new("urn:test", order(1).ce_type());
    let first = bus::publish_with_meta(&js, &client, meta.clone(), &order(1))
        .await
        .unwrap();
    let second = bus::publish_with_meta(&js, &client, meta, &order(1))
        .await
        .unwrap();
    assert_eq!(first, second);
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tail_prints_json_lines_with_decoded_data() {
    let (server, client, js) = start().await;
    bus::publish(&js, &client, "urn:test", &order(1), None)
        .await
        .unwrap();
    let json = Meta::new("urn:test", order(2).ce_type()).with_content_type(ContentType::Json);
    bus::publish_with_meta(&js, &client, json.clone(), &order(2))
        .await
        .unwrap();
    let lifecycle = ServiceLifecycle {
        change: Lifecycle::Registered,
        service: "echo".into(),
        instance: "i-1".into(),
        version: "1.0.0".into(),
    };
    bus::publish(&js, &client, "urn:switchyard:registry", &lifecycle, None)
        .await
        .unwrap();

    let url = server.url();
    let tail = move |extra: &[&str]| {
        let mut args = vec!["events", "tail", "--since", "1m", "--no-follow"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--nats", &url]);
        let (code, out, err) = common::run_to_end(&args, &std::env::temp_dir());
        (code, out, err)
    };
    let run = |extra: Vec<&'static str>| {
        let tail = tail.clone();
        tokio::task::spawn_blocking(move || tail(&extra))
    };

    let (code, out, err) = run(vec![]).await.unwrap();
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0]["data"], json!({"order": "o-1", "amount": 1}));
    assert_eq!(lines[0]["type"], "com.example.orders.placed");
    assert_eq!(lines[0]["subject"], "events.orders.placed");
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[0]["source"], "urn:test");
    assert_eq!(lines[1]["data"], json!({"order": "o-2", "amount": 2}));
    assert_eq!(lines[1]["id"], json.id.as_str());
    assert_eq!(lines[1]["correlation_id"], json.correlation_id.as_str());
    assert_eq!(lines[1]["time"], json.time.as_str());
    assert_eq!(lines[2]["subject"], "events.sys.service.registered");
    assert_eq!(lines[2]["data"]["service"], "echo");

    let (code, out, _) = run(vec!["--type", "io.switchyard.sys.service.*"])
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("io.switchyard.sys.service.registered"));

    let (code, out, _) = run(vec!["--subject", "events.orders.>"]).await.unwrap();
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");

    let (code, out, _) = run(vec!["--subject", "events.nothing.here"]).await.unwrap();
    assert_eq!((code, out.as_str()), (0, ""));

    let (code, _, err) = run(vec!["--subject", "orders.>"]).await.unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("events."), "{err}");
}
