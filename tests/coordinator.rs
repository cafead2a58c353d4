//! The coordinator's leader election on a real nats-server: two coordinators never
//! lead at once, a graceful stop hands over at once, and a leader killed with SIGKILL
//! is replaced after its lease runs out.

mod common;

use std::time::{Duration, Instant};

use common::{Process, free_addr};
use switchyard::system::coordinator::CoordinatorComponent;
use switchyard::system::coordinator::lease::LeaseValue;

const WAIT: Duration = Duration::from_secs(20);

async fn leader(client: &async_nats::Client) -> Option<LeaseValue> {
    let reply = client.request("sys.coord.leader", "".into()).await.ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_never_lead_at_once_and_a_graceful_stop_hands_over() {
    let (server, client) = common::provisioned().await;
    let lease = Duration::from_secs(2);
    let (first, second) = (
        CoordinatorComponent::new(lease),
        CoordinatorComponent::new(lease),
    );
    let (a, b) = (first.leadership(), second.leadership());
    let sup_a = common::supervise(&server, Box::new(first)).await;
    let sup_b = common::supervise(&server, Box::new(second)).await;

    // Sample both for three leases: never two leaders, and one from early on.
    let started = Instant::now();
    let mut led = 0;
    while started.elapsed() < lease * 3 {
        let leaders = [a.borrow().is_some(), b.borrow().is_some()];
        assert!(!(leaders[0] && leaders[1]), "two leaders at once");
        led += usize::from(leaders[0] || leaders[1]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(led > 0, "nobody led in three leases");
    let value = common::until("the lease names a leader", WAIT, || async {
        leader(&client).await
    })
    .await;
    assert_eq!(value.term, 1, "the first leadership is term 1: {value:?}");

    // Stop whichever leads: the other takes over through the deleted key, well before
    // a lease would have run out (not asserted on time: the machine is shared).
    let (leading, other, other_rx) = if a.borrow().is_some() {
        (sup_a, sup_b, b.clone())
    } else {
        (sup_b, sup_a, a.clone())
    };
    leading.stop(Duration::from_secs(5)).await;
    let term = common::until("the other coordinator leads", WAIT, || async {
        *other_rx.borrow()
    })
    .await;
    assert_eq!(term, 2, "a new leadership is a new term");
    let value = leader(&client).await.expect("a leader after the hand-over");
    assert_eq!(value.term, 2);

    other.stop(Duration::from_secs(5)).await;
    common::until("the last leader gave the lease back", WAIT, || async {
        let kv = async_nats::jetstream::new(client.clone())
            .get_key_value("coord")
            .await
            .ok()?;
        let value: LeaseValue = serde_json::from_slice(&kv.get("leader").await.ok()??).ok()?;
        value.released.then_some(())
    })
    .await;

    // Every change was an event: two elections, two hand-backs.
    let changes = common::until("four leadership events", WAIT, || async {
        let changes = leadership_events(&client).await;
        (changes.len() >= 4).then_some(changes)
    })
    .await;
    assert_eq!(
        changes,
        ["elected 1", "stepped_down 1", "elected 2", "stepped_down 2"]
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_with_sigkill_is_replaced_after_its_lease() {
    let (server, client) = common::provisioned().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, "[coordinator]\nlease = \"2s\"\n").unwrap();
    let url = server.url();
    let spawn = || {
        let addr = free_addr();
        let admin = addr.to_string();
        let args = [
            "run",
            "instance",
            "coordinator",
            "--nats",
            url.as_str(),
            "--admin",
            admin.as_str(),
            "--config",
            config.to_str().unwrap(),
        ];
        (Process::spawn(&args, dir.path()), addr)
    };
    let mut processes = vec![spawn(), spawn()];

    let first = common::until("a leader", WAIT, || async { leader(&client).await }).await;
    // Which process is it? The one whose gauge says 1.
    let leading = common::until("the leading process", WAIT, || async {
        processes.iter().position(|(_, admin)| {
            let Some(metrics) = metrics_of(*admin) else {
                return false;
            };
            metrics
                .lines()
                .any(|l| l.trim() == "switchyard_coordinator_leader 1")
        })
    })
    .await;
    let killed_at = Instant::now();
    processes[leading].0.signal(libc::SIGKILL);
    processes[leading].0.wait(Duration::from_secs(5));
    let next = common::until("another leader", WAIT, || async {
        leader(&client)
            .await
            .filter(|v| v.instance != first.instance)
    })
    .await;
    let took = killed_at.elapsed();
    assert_eq!(next.term, first.term + 1, "{first:?} then {next:?}");
    eprintln!("took over {took:?} after SIGKILL with a 2 s lease");
    processes.remove(leading);
    drop(processes);
}

/// `<change> <term>` of every leadership event stored in EVENTS, in order.
async fn leadership_events(client: &async_nats::Client) -> Vec<String> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    use futures::StreamExt;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("EVENTS").await.unwrap();
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: "events.sys.coordinator.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending as usize;
    let mut messages = consumer.messages().await.unwrap().take(pending);
    let mut changes = Vec::new();
    while let Some(Ok(message)) = messages.next().await {
        let event: switchyard::system::coordinator::LeadershipChange =
            serde_json::from_slice(&message.payload).unwrap_or_else(|_| {
                rmp_serde::from_slice(&message.payload).expect("a leadership event")
            });
        changes.push(format!("{} {}", event.change, event.term));
    }
    changes
}

fn metrics_of(admin: std::net::SocketAddr) -> Option<String> {
    common::http_get(admin, "/metrics").map(|(_, body)| body)
}
