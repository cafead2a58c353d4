//! The registry on a real server: register, discover, deregister, expire, the
//! lifecycle events, the request-reply API, and discovery across a server restart.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use switchyard::admin::Readiness;
use switchyard::component::Component;
use switchyard::component::supervisor::Supervisor;
use switchyard::config::JetStreamConfig;
use switchyard::envelope::{self, Envelope, Meta};
use switchyard::error::ErrorKind;
use switchyard::integration::bus::catalog::{Lifecycle, ServiceLifecycle};
use switchyard::integration::registry::view::RegistryView;
use switchyard::integration::registry::{
    EndpointEntry, Health, Lookup, Registrar, RegistryComponent, RegistryEntry,
};
use tokio_util::sync::CancellationToken;

const HEARTBEAT: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(30);

fn entry(service: &str, instance: &str) -> RegistryEntry {
    RegistryEntry {
        name: service.into(),
        version: "1.2.3".into(),
        instance: instance.into(),
        description: "test service".into(),
        endpoints: vec![EndpointEntry {
            name: "say".into(),
            subject: format!("svc.{service}.say"),
            queue_group: "q".into(),
        }],
        metadata: BTreeMap::from([("team".to_string(), "agents".to_string())]),
        host: "test-host".into(),
        pid: std::process::id(),
        started: "2026-11-24T00:00:00Z".into(),
        last_heartbeat: String::new(),
        heartbeat_ms: 0,
        health: Health::Healthy,
    }
}

async fn provisioned() -> (common::TestServer, async_nats::Client) {
    let server = common::TestServer::start();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    switchyard::nats::provision(
        &js,
        &JetStreamConfig {
            replicas: 1,
            ..Default::default()
        },
    )
    .await
    .expect("provision");
    (server, client)
}

async fn registry_components(client: &async_nats::Client, count: usize) -> Vec<Supervisor> {
    let mut running = Vec::new();
    for _ in 0..count {
        let components: Vec<Box<dyn Component>> = vec![Box::new(RegistryComponent)];
        running.push(
            Supervisor::start(
                client.clone(),
                components,
                Readiness::default(),
                JetStreamConfig::default(),
            )
            .await
            .expect("registry component"),
        );
    }
    running
}

/// Lifecycle events stored in EVENTS so far, in order.
async fn lifecycle_events(client: &async_nats::Client) -> Vec<(ServiceLifecycle, String)> {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("EVENTS").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "events.sys.service.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending as usize;
    let mut messages = consumer.messages().await.unwrap().take(pending);
    let mut events = Vec::new();
    while let Some(Ok(message)) = messages.next().await {
        let event: Envelope<ServiceLifecycle> =
            Envelope::decode(message.headers.as_ref(), &message.payload, "").unwrap();
        events.push((event.data, event.meta.kind));
    }
    events
}

/// Waits (bounded) until `check` holds; the bound is generous, nothing asserts timing.
async fn eventually_async<T, F, Fut>(check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    common::eventually_async(WAIT, check)
        .await
        .unwrap_or_else(|| panic!("condition not met in {WAIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_discover_and_deregister() {
    let (server, client) = provisioned().await;
    let _registry = registry_components(&client, 1).await;
    let view = RegistryView::start(&client, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(view.lookup("echo"), Lookup::Unknown);

    let registrar = Registrar::register(&client, entry("echo", "inst1"), HEARTBEAT)
        .await
        .unwrap();
    eventually_async(|| async { (view.lookup("echo") == Lookup::Live(1)).then_some(()) }).await;
    let seen = view.instances("echo");
    assert_eq!(seen[0].metadata["team"], "agents");
    assert_eq!(seen[0].heartbeat_ms, 1000);
    assert!(!seen[0].last_heartbeat.is_empty());

    // Readable with the nats CLI, as JSON.
    let nats = switchyard::nats::embedded::find_tool("nats", None).expect("nats CLI");
    let output = std::process::Command::new(nats)
        .args([
            "-s",
            &server.url(),
            "kv",
            "get",
            "registry",
            "echo.inst1",
            "--raw",
        ])
        .output()
        .unwrap();
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON value");
    assert_eq!(printed["name"], "echo");
    assert_eq!(printed["endpoints"][0]["subject"], "svc.echo.say");

    // The request-reply API.
    let ask = |subject: &str| {
        let client = client.clone();
        let subject = subject.to_string();
        async move {
            envelope::request::<_, Vec<RegistryEntry>>(
                &client,
                subject,
                &Envelope::new(Meta::new("urn:test", "io.switchyard.test"), ()),
                Duration::from_secs(5),
            )
            .await
        }
    };
    let listed = ask("sys.registry.list").await.unwrap().data;
    assert_eq!(listed.len(), 1);
    let got = ask("sys.registry.get.echo").await.unwrap().data;
    assert_eq!(got[0].instance, "inst1");
    assert_eq!(
        ask("sys.registry.get.nope").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    registrar.deregister().await.unwrap();
    eventually_async(|| async { (view.lookup("echo") == Lookup::NoLiveInstance).then_some(()) })
        .await;
    let events = lifecycle_events(&client).await;
    let changes: Vec<Lifecycle> = events.iter().map(|(e, _)| e.change).collect();
    assert_eq!(
        changes,
        vec![Lifecycle::Registered, Lifecycle::Deregistered]
    );
    assert_eq!(events[1].1, "io.switchyard.sys.service.deregistered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_stops_heartbeating_expires_and_is_reported_once() {
    let (_server, client) = provisioned().await;
    // Two registry components see the same expiry; the stream keeps one event.
    let _registry = registry_components(&client, 2).await;
    let view = RegistryView::start(&client, CancellationToken::new())
        .await
        .unwrap();
    let registrar = Registrar::register(&client, entry("flaky", "gone"), HEARTBEAT)
        .await
        .unwrap();
    eventually_async(|| async { (view.lookup("flaky") == Lookup::Live(1)).then_some(()) }).await;

    // Heartbeats keep it alive well past its TTL.
    tokio::time::sleep(HEARTBEAT * 4).await;
    assert_eq!(view.lookup("flaky"), Lookup::Live(1));

    drop(registrar); // dies without deregistering
    eventually_async(|| async { (view.lookup("flaky") == Lookup::NoLiveInstance).then_some(()) })
        .await;
    let expired = eventually_async(|| async {
        let events = lifecycle_events(&client).await;
        let expired: Vec<_> = events
            .into_iter()
            .filter(|(e, _)| e.change == Lifecycle::Expired)
            .collect();
        (!expired.is_empty()).then_some(expired)
    })
    .await;
    // Both components have had time to publish by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = lifecycle_events(&client).await;
    let count = all
        .iter()
        .filter(|(e, _)| e.change == Lifecycle::Expired)
        .count();
    assert_eq!(count, 1, "{all:?}");
    assert_eq!(expired[0].0.instance, "gone");
    assert_eq!(expired[0].0.service, "flaky");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_keeps_working_across_a_server_restart() {
    let (mut server, client) = provisioned().await;
    let view = RegistryView::start(&client, CancellationToken::new())
        .await
        .unwrap();
    let first = Registrar::register(&client, entry("echo", "before"), Duration::from_secs(5))
        .await
        .unwrap();
    eventually_async(|| async { (view.lookup("echo") == Lookup::Live(1)).then_some(()) }).await;

    server.server.restart().expect("restart nats-server");
    // After the restart, a second instance registers: the view must see it.
    let second = eventually_async(|| async {
        Registrar::register(&client, entry("echo", "after"), Duration::from_secs(5))
            .await
            .ok()
    })
    .await;
    eventually_async(|| async { (view.lookup("echo") == Lookup::Live(2)).then_some(()) }).await;
    second.deregister().await.unwrap();
    first.deregister().await.unwrap();
    eventually_async(|| async { (view.lookup("echo") == Lookup::NoLiveInstance).then_some(()) })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_and_draining_instances_are_not_live() {
    let (_server, client) = provisioned().await;
    let view = RegistryView::start(&client, CancellationToken::new())
        .await
        .unwrap();
    let mut sick = entry("echo", "sick");
    sick.health = Health::Unhealthy;
    let _sick = Registrar::register(&client, sick, HEARTBEAT).await.unwrap();
    let _ok = Registrar::register(&client, entry("echo", "ok"), HEARTBEAT)
        .await
        .unwrap();
    eventually_async(|| async { (view.instances("echo").len() == 2).then_some(()) }).await;
    assert_eq!(view.lookup("echo"), Lookup::Live(1));
}
