//! Provisioning is idempotent and a changed setting updates the live stream or bucket.

mod common;

use std::time::Duration;

use switchyard::config::{JetStreamConfig, StreamLimits};
use switchyard::nats::provision::{self, Change};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_then_leaves_alone_then_updates_what_changed() {
    let server = common::TestServer::start();
    let js = async_nats::jetstream::new(server.client().await);
    let mut config = JetStreamConfig {
        replicas: 1,
        ..Default::default()
    };

    let first = provision::provision(&js, &config).await.unwrap();
    let names = switchyard::subjects::STREAMS.len() + switchyard::subjects::BUCKETS.len();
    assert_eq!(first.changes.len(), names);
    assert!(
        first.changes.iter().all(|(_, c)| *c == Change::Created),
        "{first:?}"
    );
    assert!(provision::missing(&js).await.unwrap().is_empty());

    let second = provision::provision(&js, &config).await.unwrap();
    assert!(
        second.changes.iter().all(|(_, c)| *c == Change::Unchanged),
        "{second:?}"
    );

    config.streams.insert(
        "EVENTS".into(),
        StreamLimits {
            max_age: Some(Duration::from_secs(3600)),
            max_bytes: Some(64 * 1024 * 1024),
        },
    );
    let third = provision::provision(&js, &config).await.unwrap();
    let events = third.changes.iter().find(|(n, _)| n == "EVENTS").unwrap();
    assert_eq!(events.1, Change::Updated(vec!["max_age", "max_bytes"]));
    let others = third.changes.iter().filter(|(n, _)| n != "EVENTS");
    assert!(others.into_iter().all(|(_, c)| *c == Change::Unchanged));
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    let live = &stream.info().await.unwrap().config;
    assert_eq!(live.max_age, Duration::from_secs(3600));
    assert_eq!(live.max_bytes, 64 * 1024 * 1024);

    // A bucket changed behind our back is put back to what Switchyard wants.
    let mut tampered = js
        .get_stream("KV_flows")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    tampered.max_messages_per_subject = 3;
    js.update_stream(tampered).await.unwrap();
    let fourth = provision::provision(&js, &config).await.unwrap();
    let flows = fourth
        .changes
        .iter()
        .find(|(n, _)| n == "KV_flows")
        .unwrap();
    assert_eq!(flows.1, Change::Updated(vec!["history"]));
    let kv = js.get_key_value("flows").await.unwrap();
    assert_eq!(kv.status().await.unwrap().history(), 10);
}

/// A server whose store cannot hold every stream's reserved `max_bytes` refuses at
/// once with an error that names the stream and what to change (no retry loop), and
/// limits that fit provision cleanly on the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_too_small_for_the_limits_is_refused_with_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("small.conf");
    std::fs::write(
        &conf,
        "max_payload: 1MB\njetstream { max_file_store: 1GB }\n",
    )
    .unwrap();
    let server = switchyard::nats::EmbeddedServer::start(switchyard::nats::ServerOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("store"),
        config: Some(conf),
        binary: None,
    })
    .expect("nats-server (run scripts/setup)");
    let client = switchyard::nats::connect(&server.url(), "provision-test")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let mut config = JetStreamConfig {
        replicas: 1,
        ..Default::default()
    };

    let refused = provision::provision(&js, &config).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        switchyard::error::ErrorKind::Permanent,
        "{refused}"
    );
    let message = refused.message();
    assert!(message.contains("create stream DATA"), "{message}");
    assert!(
        message.contains("jetstream.streams.DATA.max_bytes") && message.contains("1024 MiB"),
        "{message}"
    );

    for stream in switchyard::subjects::STREAMS {
        config.streams.insert(
            stream.name.into(),
            StreamLimits {
                max_age: None,
                max_bytes: Some(64 * 1024 * 1024),
            },
        );
    }
    let fitted = provision::provision(&js, &config).await.unwrap();
    assert!(
        provision::missing(&js).await.unwrap().is_empty(),
        "{fitted:?}"
    );
}
