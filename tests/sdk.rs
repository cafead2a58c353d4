//! The service SDK on a real server: both codecs with follow-up headers, typed error
//! replies, NATS micro as the `nats` CLI sees it, the registry lifecycle (register,
//! deregister on a graceful stop, expiry of a killed process reported once), the
//! example services and `switchyard up --demo`.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap, Message};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use switchyard::admin::Readiness;
use switchyard::component::Component;
use switchyard::component::supervisor::Supervisor;
use switchyard::config::JetStreamConfig;
use switchyard::demo::{echo, flaky, slow};
use switchyard::envelope::{ContentType, Envelope, Meta};
use switchyard::error::{Error, ErrorKind};
use switchyard::integration::bus::catalog::{Lifecycle, ServiceLifecycle};
use switchyard::integration::registry::{RegistryComponent, RegistryEntry};
use switchyard::sdk::Service;

const WAIT: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(10);

/// A raw request: the reply whatever it is (error replies included).
async fn raw(client: &Client, subject: &str, headers: HeaderMap, payload: Vec<u8>) -> Message {
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(payload.into())
        .timeout(Some(TIMEOUT));
    client
        .send_request(subject.to_string(), request)
        .await
        .unwrap_or_else(|e| panic!("request {subject}: {e}"))
}

fn header(message: &Message, name: &str) -> Option<String> {
    let headers = message.headers.as_ref()?;
    headers.get(name).map(|v| v.as_str().to_string())
}

fn error_code(message: &Message) -> Option<u16> {
    header(message, "Nats-Service-Error-Code").map(|c| c.parse().unwrap())
}

async fn registry_entry(client: &Client, key: &str) -> Option<RegistryEntry> {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("registry").await.unwrap();
    let value = kv.get(key).await.unwrap()?;
    Some(RegistryEntry::from_json(&value).unwrap())
}

/// Lifecycle events for `instance` stored in stream EVENTS.
async fn stored_events(client: &Client, instance: &str) -> Vec<ServiceLifecycle> {
    let events = common::lifecycle_events(client).await.into_iter();
    events
        .map(|e| e.data)
        .filter(|e| e.instance == instance)
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    item: String,
    quantity: u32,
}

/// The twenty-line service of the SDK's documentation, with every way to fail.
fn orders() -> Service {
    Service::new("orders", "2.1.0-rc.1")
        .unwrap()
        .description("Takes orders")
        .metadata("team", "agents")
        .heartbeat(Duration::from_secs(1))
        .operation("place", |order: Order| async move {
            match order.quantity {
                0 => Err(Error::invalid_input("quantity must be positive")),
                13 => Err(Error::new(ErrorKind::Permanent, "unlucky\r\nnumber")),
                99 => panic!("the handler fell over"),
                _ => Ok(order),
            }
        })
        .operation_with_meta("whoami", |meta: Meta, _: rmpv::Value| async move {
            Ok(serde_json::json!({ "correlation": meta.correlation_id, "source": meta.source }))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_in_the_callers_codec_with_follow_up_headers() {
    let (_server, client) = common::provisioned().await;
    let running = orders().start(&client).await.expect("start");
    let order = Order {
        item: "tea".into(),
        quantity: 2,
    };

    // A plain JSON request without headers, as `nats req` sends it.
    let reply = raw(
        &client,
        "svc.orders.place",
        HeaderMap::new(),
        serde_json::to_vec(&order).unwrap(),
    )
    .await;
    assert_eq!(error_code(&reply), None);
    assert_eq!(
        serde_json::from_slice::<Order>(&reply.payload).unwrap(),
        order
    );
    assert_eq!(
        header(&reply, "ce-datacontenttype").as_deref(),
        Some("application/json")
    );

    // An envelope in MessagePack: answered in MessagePack, correlated and traced.
    for codec in [ContentType::MsgPack, ContentType::Json] {
        let meta = Meta::new("urn:test", "io.test.place").with_content_type(codec);
        let reply = raw(
            &client,
            "svc.orders.place",
            meta.to_headers(),
            codec.encode(&order).unwrap(),
        )
        .await;
        let answer: Envelope<Order> = Envelope::from_message(&reply, "").unwrap();
        assert_eq!(answer.data, order);
        assert_eq!(answer.meta.content_type, codec);
        assert_eq!(answer.meta.causation_id.as_deref(), Some(meta.id.as_str()));
        assert_eq!(answer.meta.correlation_id, meta.correlation_id);
        assert_eq!(answer.meta.traceparent, meta.traceparent);
        assert_eq!(answer.meta.kind, "io.switchyard.svc.orders.place.reply");
        assert_eq!(
            answer.meta.source,
            format!("urn:switchyard:svc:orders:{}", running.id())
        );
    }

    // The envelope helper works against it, and handlers may read the attributes.
    let meta = Meta::new("urn:test", "io.test.whoami");
    let answer: Envelope<serde_json::Value> = switchyard::envelope::request(
        &client,
        "svc.orders.whoami".into(),
        &Envelope::new(meta.clone(), serde_json::json!({})),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(answer.data["correlation"], meta.correlation_id);
    assert_eq!(answer.data["source"], "urn:test");

    let report = running.stop().await;
    assert!(report.deregistered && report.finished_in_time && report.flushed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_travel_as_nats_service_error_headers() {
    // Installed before any request so the metrics below are recorded.
    let metrics = switchyard::observability::metrics::install();
    let (_server, client) = common::provisioned().await;
    let running = orders().start(&client).await.expect("start");
    let place = |quantity: u32| {
        serde_json::to_vec(&serde_json::json!({"item": "x", "quantity": quantity})).unwrap()
    };
    let with = |name: &str, value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("ce-id", "request-1");
        if !name.is_empty() {
            headers.insert(name, value);
        }
        headers
    };
    let json = || with("", "");

    let cases: Vec<(HeaderMap, Vec<u8>, u16)> = vec![
        (json(), place(0), 400),
        (json(), place(13), 422),
        (json(), place(99), 500),
        (json(), b"{\"item\":".to_vec(), 400),
        (json(), b"{\"item\":\"x\"}".to_vec(), 400),
        // MessagePack declared, JSON sent.
        (
            with("ce-datacontenttype", "application/msgpack"),
            place(1),
            400,
        ),
        (with("Content-Type", "text/plain"), b"hello".to_vec(), 415),
        (with("ce-datacontenttype", "text/csv"), place(1), 415),
        (with("ce-specversion", "0.3"), place(1), 400),
    ];
    for (headers, payload, code) in cases {
        let reply = raw(&client, "svc.orders.place", headers, payload.clone()).await;
        assert_eq!(
            error_code(&reply),
            Some(code),
            "{}",
            String::from_utf8_lossy(&payload)
        );
        let text = header(&reply, "Nats-Service-Error").unwrap();
        assert!(!text.is_empty() && !text.contains(['\r', '\n']));
        // Still an envelope: a follow-up of the request, typed as an error.
        assert_eq!(
            header(&reply, "ce-type").as_deref(),
            Some("io.switchyard.error")
        );
        assert_eq!(
            header(&reply, "ce-causationid").as_deref(),
            Some("request-1")
        );
        // The typed error a Switchyard caller sees.
        let err = switchyard::envelope::error_from_reply(reply.headers.as_ref()).unwrap();
        assert_eq!(err.code(), code);
    }

    // Nothing above broke the service: the next valid request is answered.
    let reply = raw(&client, "svc.orders.place", json(), place(3)).await;
    assert_eq!(error_code(&reply), None);

    // NATS micro counted the errors, and so did the metrics.
    let stats = raw(&client, "$SRV.STATS.orders", HeaderMap::new(), Vec::new()).await;
    let stats: serde_json::Value = serde_json::from_slice(&stats.payload).unwrap();
    let place_stats = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "place")
        .unwrap();
    assert_eq!(place_stats["num_errors"], 9);
    assert_eq!(place_stats["num_requests"], 10);
    let metrics = metrics.render();
    assert!(
        metrics.contains(
            r#"switchyard_sdk_requests_total{service="orders",operation="place",code="415"} 2"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_sdk_request_duration_seconds_bucket{"));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_max_payload_is_refused_with_413() {
    let (_server, client) = common::provisioned().await;
    let running = echo::service().unwrap().start(&client).await.unwrap();
    let max = client.server_info().max_payload;
    // The request fits; the same bytes plus the reply's ce-* headers do not.
    let text = "x".repeat(max - 64);
    let reply = raw(
        &client,
        "svc.echo.say",
        HeaderMap::new(),
        serde_json::to_vec(&text).unwrap(),
    )
    .await;
    assert_eq!(error_code(&reply), Some(413));
    let reply = raw(&client, "svc.echo.say", HeaderMap::new(), b"[1]".to_vec()).await;
    assert_eq!(&reply.payload[..], b"[1]");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_micro_tools_list_and_describe_the_service() {
    let (server, client) = common::provisioned().await;
    let running = echo::service().unwrap().start(&client).await.unwrap();
    let id = running.id().to_string();

    // What the CLI prints passed its schema validation (invalid replies are dropped).
    let listed: serde_json::Value =
        serde_json::from_str(&common::nats_cli(&server.url(), &["micro", "ls", "--json"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "echo");
    assert_eq!(listed[0]["id"], id.as_str());
    let info: serde_json::Value = serde_json::from_str(&common::nats_cli(
        &server.url(),
        &["micro", "info", "echo", "--json"],
    ))
    .unwrap();
    assert_eq!(info["info"]["description"], "Says back what it gets");
    assert_eq!(info["info"]["endpoints"][0]["subject"], "svc.echo.say");
    raw(&client, "svc.echo.say", HeaderMap::new(), b"{}".to_vec()).await;
    let stats: serde_json::Value = serde_json::from_str(&common::nats_cli(
        &server.url(),
        &["micro", "stats", "echo", "--json"],
    ))
    .unwrap();
    let stats = &stats[0];
    assert_eq!(stats["id"], id.as_str());
    assert_eq!(stats["endpoints"][0]["num_requests"], 1);
    let table = common::nats_cli(&server.url(), &["micro", "ls"]);
    assert!(table.contains("echo") && table.contains(&id), "{table}");

    // The discovery replies themselves.
    let info = raw(&client, "$SRV.INFO.echo", HeaderMap::new(), Vec::new()).await;
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(info["type"], "io.nats.micro.v1.info_response");
    assert_eq!(info["name"], "echo");
    assert_eq!(info["version"], "1.0.0");
    assert!(switchyard::sdk::is_semver(
        info["version"].as_str().unwrap()
    ));
    assert_eq!(info["metadata"]["example"], "echo");
    assert_eq!(info["endpoints"][0]["name"], "say");
    assert_eq!(info["endpoints"][0]["queue_group"], "q");
    let ping = raw(
        &client,
        &format!("$SRV.PING.echo.{id}"),
        HeaderMap::new(),
        Vec::new(),
    )
    .await;
    let ping: serde_json::Value = serde_json::from_slice(&ping.payload).unwrap();
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_and_deregisters_on_a_graceful_stop() {
    let (_server, client) = common::provisioned().await;
    let mut lifecycle = client.subscribe("events.sys.service.>").await.unwrap();
    let running = orders().start(&client).await.unwrap();
    let key = format!("orders.{}", running.id());

    let entry = registry_entry(&client, &key).await.expect("registered");
    assert_eq!(entry.name, "orders");
    assert_eq!(entry.version, "2.1.0-rc.1");
    assert_eq!(entry.instance, running.id());
    assert_eq!(entry.description, "Takes orders");
    assert_eq!(entry.metadata["team"], "agents");
    assert_eq!(entry.pid, std::process::id());
    assert_eq!(entry.heartbeat_ms, 1000);
    assert_eq!(
        entry.health,
        switchyard::integration::registry::Health::Healthy
    );
    assert!(!entry.host.is_empty() && !entry.started.is_empty());
    let mut endpoints: Vec<_> = entry
        .endpoints
        .iter()
        .map(|e| (e.name.as_str(), e.subject.as_str(), e.queue_group.as_str()))
        .collect();
    endpoints.sort();
    assert_eq!(
        endpoints,
        [
            ("place", "svc.orders.place", "q"),
            ("whoami", "svc.orders.whoami", "q")
        ]
    );

    // Heartbeats keep it alive well past three intervals.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let beaten = registry_entry(&client, &key)
        .await
        .expect("still registered");
    assert_ne!(beaten.last_heartbeat, entry.last_heartbeat);

    let report = running.stop().await;
    assert!(report.deregistered, "{report:?}");
    assert!(registry_entry(&client, &key).await.is_none());
    let mut changes = Vec::new();
    while changes.len() < 2 {
        let message = tokio::time::timeout(TIMEOUT, lifecycle.next())
            .await
            .expect("lifecycle event")
            .unwrap();
        changes.push(message.subject.to_string());
    }
    assert_eq!(
        changes,
        [
            "events.sys.service.registered",
            "events.sys.service.deregistered"
        ]
    );
    let stored = stored_events(&client, &entry.instance).await;
    assert_eq!(
        stored.last().map(|e| e.change),
        Some(Lifecycle::Deregistered)
    );

    // Gone from NATS too: callers are told at once.
    let err = client
        .request("svc.orders.place", "{}".into())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_answers_every_request_already_taken() {
    let (_server, client) = common::provisioned().await;
    let started = Arc::new(AtomicUsize::new(0));
    let counter = started.clone();
    let running = Service::new("work", "1.0.0")
        .unwrap()
        .operation("step", move |n: u32| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok(n * 2)
            }
        })
        .start(&client)
        .await
        .unwrap();
    let mut calls = Vec::new();
    for n in 0..8u32 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let payload = serde_json::to_vec(&n).unwrap();
            (
                n,
                raw(&client, "svc.work.step", HeaderMap::new(), payload).await,
            )
        }));
    }
    // Stop while all eight are inside their handlers.
    common::until("all eight requests are being handled", WAIT, || async {
        (started.load(Ordering::SeqCst) == 8).then_some(())
    })
    .await;
    let report = running.stop().await;
    assert!(report.finished_in_time && report.flushed, "{report:?}");
    for call in calls {
        let (n, reply) = call.await.unwrap();
        assert_eq!(error_code(&reply), None);
        assert_eq!(
            serde_json::from_slice::<u32>(&reply.payload).unwrap(),
            n * 2
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_fails_the_configured_share_and_slow_waits() {
    let (_server, client) = common::provisioned().await;
    let cases = [
        (
            1.0,
            flaky::Failure::Transient,
            [Some(502), Some(502), Some(502), Some(502)],
        ),
        (
            1.0,
            flaky::Failure::Permanent,
            [Some(422), Some(422), Some(422), Some(422)],
        ),
        (0.0, flaky::Failure::Permanent, [None, None, None, None]),
        (
            0.5,
            flaky::Failure::Transient,
            [None, Some(502), None, Some(502)],
        ),
    ];
    for (share, failure, expected) in cases {
        let config = flaky::Config { share, failure };
        let running = flaky::service(config)
            .unwrap()
            .start(&client)
            .await
            .unwrap();
        let mut codes = Vec::new();
        for _ in 0..4 {
            let reply = raw(&client, "svc.flaky.call", HeaderMap::new(), b"{}".to_vec()).await;
            codes.push(error_code(&reply));
        }
        assert_eq!(codes, expected, "share {share} {failure:?}");
        running.stop().await;
    }
    assert!(
        flaky::service(flaky::Config {
            share: 1.5,
            failure: flaky::Failure::Transient
        })
        .is_err()
    );

    let running = slow::service(slow::Config { ms: 50 })
        .unwrap()
        .start(&client)
        .await
        .unwrap();
    let started = Instant::now();
    let reply = raw(
        &client,
        "svc.slow.wait",
        HeaderMap::new(),
        br#"{"ms":300}"#.to_vec(),
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(&reply.payload[..], br#"{"ms":300}"#);
    let reply = raw(&client, "svc.slow.wait", HeaderMap::new(), b"{}".to_vec()).await;
    assert_eq!(&reply.payload[..], br#"{"ms":50}"#);
    let reply = raw(
        &client,
        "svc.slow.wait",
        HeaderMap::new(),
        br#"{"ms":999999999}"#.to_vec(),
    )
    .await;
    assert_eq!(error_code(&reply), Some(400));
    running.stop().await;
}

/// A child process killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_expires_and_is_reported_once_by_two_registries() {
    let (server, client) = common::provisioned().await;
    let mut registries = Vec::new();
    for _ in 0..2 {
        let components: Vec<Box<dyn Component>> = vec![Box::new(RegistryComponent)];
        let registry_client = server.client().await;
        registries.push(
            Supervisor::start(
                registry_client,
                components,
                Readiness::default(),
                JetStreamConfig::default(),
            )
            .await
            .expect("registry component"),
        );
    }
    let mut expiries = client
        .subscribe("events.sys.service.expired")
        .await
        .unwrap();

    let binary = tokio::task::spawn_blocking(common::echo_binary)
        .await
        .unwrap();
    let mut child = Killed(
        Command::new(binary)
            .args(["--nats", &server.url(), "--heartbeat", "1s"])
            .env_remove("NATS_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the echo example"),
    );
    let pid = child.0.id();
    let entry = common::until("the example registers", WAIT, || async {
        let js = async_nats::jetstream::new(client.clone());
        let kv = js.get_key_value("registry").await.ok()?;
        let mut keys = kv.keys().await.ok()?;
        while let Some(Ok(key)) = keys.next().await {
            if key.starts_with("echo.") {
                return registry_entry(&client, &key).await;
            }
        }
        None
    })
    .await;
    assert_eq!(entry.pid, pid);
    let reply = raw(
        &client,
        "svc.echo.say",
        HeaderMap::new(),
        b"\"hi\"".to_vec(),
    )
    .await;
    assert_eq!(&reply.payload[..], b"\"hi\"");

    // SIGKILL: no deregistration, no goodbye; only the heartbeats stop.
    child.0.kill().expect("SIGKILL the example");
    child.0.wait().expect("reap the example");
    let key = format!("echo.{}", entry.instance);
    common::until("the entry expires", WAIT, || async {
        registry_entry(&client, &key).await.is_none().then_some(())
    })
    .await;
    // Both registries report the expiry (the same event, the same id) ...
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let message = tokio::time::timeout(WAIT, expiries.next())
            .await
            .expect("both registries report the expiry")
            .unwrap();
        let event: Envelope<ServiceLifecycle> = Envelope::from_message(&message, "").unwrap();
        assert_eq!(event.data.instance, entry.instance);
        seen.push(event.meta.id);
    }
    assert_eq!(seen[0], seen[1]);
    // ... and the stream keeps it once.
    let stored = stored_events(&client, &entry.instance).await;
    let expired = stored
        .iter()
        .filter(|e| e.change == Lifecycle::Expired)
        .count();
    let deregistered = stored
        .iter()
        .filter(|e| e.change == Lifecycle::Deregistered)
        .count();
    assert_eq!((expired, deregistered), (1, 0), "{stored:?}");
    for registry in registries {
        registry.stop(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_demo_runs_the_examples_and_deregisters_them_on_sigterm() {
    let (server, client) = common::provisioned().await;
    let admin = common::free_addr().to_string();
    let http = common::free_addr().to_string();
    let url = server.url();
    let args = [
        "up", "--nats", &url, "--admin", &admin, "--http", &http, "--demo", "--grace", "5s",
    ];
    let mut up = common::Process::spawn(&args, &std::env::temp_dir());
    let names = common::until("the demo services are listed", WAIT, || async {
        let listed = common::try_nats_cli(&url, &["micro", "ls", "--json"]).ok()?;
        let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).ok()?;
        let mut names: Vec<String> = listed
            .iter()
            .filter_map(|s| s["name"].as_str().map(String::from))
            .collect();
        names.sort();
        (names.len() == 3).then_some(names)
    })
    .await;
    assert_eq!(names, ["echo", "flaky", "slow"]);
    let banner = common::until("the banner", WAIT, || async {
        let out = up.stdout();
        out.contains("Ctrl-C").then_some(out)
    })
    .await;
    assert!(
        banner.contains("micro ls") && banner.contains("svc.echo.say"),
        "{banner}"
    );
    let reply = raw(
        &client,
        "svc.echo.say",
        HeaderMap::new(),
        br#"{"text":"hi"}"#.to_vec(),
    )
    .await;
    assert_eq!(&reply.payload[..], br#"{"text":"hi"}"#);

    up.signal(libc::SIGTERM);
    assert_eq!(up.wait(WAIT), Some(0), "graceful exit");
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("registry").await.unwrap();
    let keys: Vec<String> = kv
        .keys()
        .await
        .unwrap()
        .filter_map(|k| async { k.ok() })
        .collect()
        .await;
    assert!(keys.is_empty(), "{keys:?}");
    let stream = js.get_stream("EVENTS").await.unwrap();
    let mut info = stream
        .info_with_subjects("events.sys.service.>")
        .await
        .unwrap();
    let mut counts = std::collections::BTreeMap::new();
    while let Some(Ok((subject, count))) = info.next().await {
        counts.insert(subject, count);
    }
    // The three demo services, and data sync, which registers as `switchyard-sync` so
    // its instances can share the targets.
    assert_eq!(
        counts.get("events.sys.service.deregistered"),
        Some(&4),
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_cannot_register_does_not_start_half_way() {
    // No provisioning: bucket `registry` does not exist.
    let server = common::TestServer::start();
    let client = server.client().await;
    let err = echo::service()
        .unwrap()
        .start(&client)
        .await
        .err()
        .expect("no registry, no start");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.message().contains("registry"), "{err}");
    // Nothing left listening (micro's discovery task is aborted, not awaited: its
    // unsubscribe may land a moment later).
    for subject in ["svc.echo.say", "$SRV.PING.echo"] {
        common::until(subject, WAIT, || async {
            let err = client.request(subject, "{}".into()).await.err()?;
            (err.kind() == async_nats::RequestErrorKind::NoResponders).then_some(())
        })
        .await;
    }
    let err = Service::new("empty", "1.0.0")
        .unwrap()
        .start(&client)
        .await
        .err()
        .expect("no operations");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}
