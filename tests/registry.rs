//! The registry on a real server: register, discover, deregister, expire, the
//! lifecycle events, the request-reply API, and discovery across a server restart.

mod common;

use std::time::Duration;

use switchyard::admin::Readiness;
use switchyard::component::Component;
use switchyard::component::supervisor::Supervisor;
use switchyard::config::JetStreamConfig;
use switchyard::envelope::{self, Envelope, Meta};
use switchyard::error::ErrorKind;
use switchyard::integration::bus::catalog::Lifecycle;
use switchyard::integration::registry::view::RegistryView;
use switchyard::integration::registry::{
    Health, Lookup, Registrar, RegistryComponent, RegistryEntry,
};
use tokio_util::sync::CancellationToken;

const HEARTBEAT: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(30);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_discover_and_deregister() {
    let (server, client) = common::provisioned().await;
    let _registry = registry_components(&client, 1).await;
    let view = RegistryView::start(&client, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(view.lookup("echo"), Lookup::Unknown);

    let registrar =
        Registrar::register(&client, common::registry_entry("echo", "inst1"), HEARTBEAT)
            .await
            .unwrap();
    common::until("one live echo", WAIT, || async {
        (view.lookup("echo") == Lookup::Live(1)).then_some(())
    })
    .await;
    let seen = view.instances("echo");
    assert_eq!(seen[0].metadata["team"], "agents");
    assert_eq!(seen[0].heartbeat_ms, 1000);
    assert!(!seen[0].last_heartbeat.is_empty());

    // Readable with the nats CLI, as JSON.
    let output = common::nats_cli(
        &server.url(),
        &["kv", "get", "registry", "echo.inst1", "--raw"],
    );
    let printed: serde_json::Value = serde_json::from_str(&output).expect("JSON value");
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
    common::until("no live echo", WAIT, || async {
        (view.lookup("echo") == Lookup::NoLiveInstance).then_some(())
    })
    .await;
    let events = common::lifecycle_events(&client).await;
    let changes: Vec<Lifecycle> = events.iter().map(|e| e.data.change).collect();
    assert_eq!(
        changes,
        vec![Lifecycle::Registered, Lifecycle::Deregistered]
    );
    assert_eq!(
        events[1].meta.kind,
        "io.switchyard.sys.service.deregistered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_stops_heartbeating_expires_and_is_reported_once() {
    let (_server, client) = common::provisioned().await;
    // Two registry components see the same expiry; the stream keeps one event.
    let _registry = registry_components(&client, 2).await;
    let view = RegistryView::start(&client, CancellationToken::new())
        .await
        .unwrap();
    let registrar =
        Registrar::register(&client, common::registry_entry("flaky", "gone"), HEARTBEAT)
            .await
            .unwrap();
    common::until("one live flaky", WAIT, || async {
        (view.lookup("flaky") == Lookup::Live(1)).then_some(())
    })
    .await;

    // Heartbeats keep it alive well past its TTL.
    tokio::time::sleep(HEARTBEAT * 4).await;
    assert_eq!(view.lookup("flaky"), Lookup::Live(1));

    drop(registrar); // dies without deregistering
    common::until("no live flaky", WAIT, || async {
        (view.lookup("flaky") == Lookup::NoLiveInstance).then_some(())
    })
    .await;
    let expired = common::until("the expiry event", WAIT, || async {
        let events = common::lifecycle_events(&client).await;
        let expired: Vec<_> = events
            .into_iter()
            .filter(|e| e.data.change == Lifecycle::Expired)
            .collect();
        (!expired.is_empty()).then_some(expired)
    })
    .await;
    // Both components have had time to publish by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = common::lifecycle_events(&client).await;
    let count = all
        .iter()
        .filter(|e| e.data.change == Lifecycle::Expired)
        .count();
    assert_eq!(count, 1, "{all:?}");
    assert_eq!(expired[0].data.instance, "gone");
    assert_eq!(expired[0].data.service, "flaky");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_keeps_working_across_a_server_restart() {
    let (mut server, client) = common::provisioned().await;
    let view = RegistryView::start(&client, CancellationToken::new())
        .await
        .unwrap();
    let first = Registrar::register(
        &client,
        common::registry_entry("echo", "before"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    common::until("one live echo", WAIT, || async {
        (view.lookup("echo") == Lookup::Live(1)).then_some(())
    })
    .await;

    server.server.restart().expect("restart nats-server");
    // After the restart, a second instance registers: the view must see it.
    let second = common::until("a registration after the restart", WAIT, || async {
        Registrar::register(
            &client,
            common::registry_entry("echo", "after"),
            Duration::from_secs(5),
        )
        .await
        .ok()
    })
    .await;
    common::until("two live echo", WAIT, || async {
        (view.lookup("echo") == Lookup::Live(2)).then_some(())
    })
    .await;
    second.deregister().await.unwrap();
    first.deregister().await.unwrap();
    common::until("no live echo", WAIT, || async {
        (view.lookup("echo") == Lookup::NoLiveInstance).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_and_draining_instances_are_not_live() {
    let (_server, client) = common::provisioned().await;
    let view = RegistryView::start(&client, CancellationToken::new())
        .await
        .unwrap();
    let mut sick = common::registry_entry("echo", "sick");
    sick.health = Health::Unhealthy;
    let _sick = Registrar::register(&client, sick, HEARTBEAT).await.unwrap();
    let _ok = Registrar::register(&client, common::registry_entry("echo", "ok"), HEARTBEAT)
        .await
        .unwrap();
    common::until("both echo instances in the view", WAIT, || async {
        (view.instances("echo").len() == 2).then_some(())
    })
    .await;
    assert_eq!(view.lookup("echo"), Lookup::Live(1));
}
