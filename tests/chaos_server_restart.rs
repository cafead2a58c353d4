//! Fault suite `server-restart` (`scripts/chaos server-restart`): the single nats-server
//! is restarted while records flow (flow, sync, registry and gateway in one `switchyard
//! run` process). What must hold: clients reconnect, the KV watches resume (a service
//! registered after the restart is routed by the gateway, whose registry view is a KV
//! watch; a flow rule changed after the restart takes effect), the sync consumers
//! resume, and every acknowledged record is delivered and applied once. The times to
//! resume are reported against the 10 s target.
//!
//! (`tests/sync.rs` has the smaller version of the restart without the watches.)

#[path = "common/chaos.rs"]
mod chaos;
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use chaos::{Target, figures, kv_put, ms, publish_record, rule};
use common::{Process, free_addr, http_get, until};

const WAIT: Duration = Duration::from_secs(60);
/// Pause between records: about 100 records/s offered.
const PACE: Duration = Duration::from_millis(10);
/// What the issue asks: everything resumes within this after the restart.
const TARGET: Duration = Duration::from_secs(10);

/// One record's publishing: when its first attempt started and when it was acked.
#[derive(Clone, Copy)]
struct Sent {
    first_attempt: Instant,
    acked: Instant,
}

/// Publishes records `rs-<n>` (keys `k0`…`k4`) until `stop`, each until acknowledged.
async fn publisher(
    js: jetstream::Context,
    sent: Arc<Mutex<HashMap<String, Sent>>>,
    stop: CancellationToken,
) -> u64 {
    let mut retries = 0;
    let mut n = 0u64;
    while !stop.is_cancelled() {
        tokio::time::sleep(PACE).await;
        let id = format!("rs-{n}");
        let first_attempt = Instant::now();
        // Down or reconnecting: the source retries with the same id (stored once).
        while publish_record(&js, "rs", &id, &format!("k{}", n % 5), n)
            .await
            .is_err()
        {
            retries += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let acked = Instant::now();
        sent.lock().unwrap().insert(
            id,
            Sent {
                first_attempt,
                acked,
            },
        );
        n += 1;
    }
    retries
}

fn metric(admin: std::net::SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = http_get(admin, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn within(d: Duration) -> &'static str {
    if d <= TARGET { "yes" } else { "no" }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart() {
    let (mut server, client) = common::provisioned().await;
    let js = jetstream::new(client.clone());
    let a = Target::serve(&client, "chaos.a").await;
    let b = Target::serve(&client, "chaos.b").await;
    kv_put(&client, "flows", "rs", rule("rs", "rs", "a", "chaos.a")).await;
    let admin = free_addr();
    let http = free_addr();
    let _switchyard = Process::spawn(
        &[
            "run",
            "flow",
            "sync",
            "registry",
            "gateway",
            "--nats",
            &server.url(),
            "--admin",
            &admin.to_string(),
            "--http",
            &http.to_string(),
        ],
        &std::env::temp_dir(),
    );
    until("switchyard is ready", WAIT, || async {
        http_get(admin, "/readyz").filter(|(code, _)| *code == 200)
    })
    .await;

    let sent = Arc::new(Mutex::new(HashMap::new()));
    let stop = CancellationToken::new();
    // A short wait for each publish's ack: a publish lost in the restart is retried
    // (same id) after a second, not after the default five.
    let mut publish_js = js.clone();
    publish_js.set_timeout(Duration::from_secs(1));
    let publishing = tokio::spawn(publisher(publish_js, sent.clone(), stop.clone()));
    until("records flow before the restart", WAIT, || async {
        (a.applied() >= 300).then_some(())
    })
    .await;

    // The restart: SIGTERM (the server flushes), then the same port and store.
    let connects_before = metric(admin, "switchyard_nats_connects_total").unwrap_or(0.0);
    let restart_began = Instant::now();
    tokio::task::block_in_place(|| server.server.restart()).expect("restart nats-server");
    let back = Instant::now();
    let restart = back - restart_began;

    // Each measured from the moment the server is back, at the same time.
    // Switchyard's connection: reconnected (its connect counter moves on; /metrics
    // refreshes it once a second, so this is an upper bound).
    let reconnect = async {
        until("switchyard reconnects", WAIT, || async {
            metric(admin, "switchyard_nats_connects_total").filter(|&n| n > connects_before)
        })
        .await;
        back.elapsed()
    };
    // Consumers: a record acknowledged after the restart is delivered.
    let deliveries = async {
        until("deliveries resume", WAIT, || async {
            let seen = a.seen();
            let sent = sent.lock().unwrap();
            sent.iter()
                .any(|(id, s)| s.acked > back && seen.contains_key(id))
                .then_some(())
        })
        .await;
        back.elapsed()
    };
    // The registry watch: a service that registers after the restart is routed (the
    // gateway answers 404 for a service its view does not know).
    let registry = async {
        let echo = until("echo starts after the restart", WAIT, || async {
            switchyard::demo::echo::service()
                .unwrap()
                .start(&client)
                .await
                .ok()
        })
        .await;
        until(
            "the gateway routes a service registered after the restart",
            WAIT,
            || async {
                let reply = client.request("api.echo.say", "\"hi\"".into()).await.ok()?;
                let failed = reply
                    .headers
                    .as_ref()
                    .is_some_and(|h| h.get("Nats-Service-Error-Code").is_some());
                (!failed).then_some(())
            },
        )
        .await;
        (echo, back.elapsed())
    };
    let (reconnected, deliveries_resumed, (echo, registry_resumed)) =
        tokio::join!(reconnect, deliveries, registry);

    // The flow rules watch: the rule now sends records to b; records first published
    // after that change was stored go to b and only there.
    let change_began = Instant::now();
    kv_put(&client, "flows", "rs", rule("rs", "rs", "b", "chaos.b")).await;
    let changed = Instant::now();
    until(
        "a record published after the rule change reaches b",
        WAIT,
        || async { (b.applied() > 0).then_some(()) },
    )
    .await;
    let rule_applied = changed.elapsed();
    until("records keep going to b", WAIT, || async {
        (b.applied() >= 300).then_some(())
    })
    .await;
    stop.cancel();
    let publish_retries = publishing.await.unwrap();

    let sent = sent.lock().unwrap().clone();
    common::eventually_async(WAIT, || async {
        let (seen_a, seen_b) = (a.seen(), b.seen());
        sent.keys()
            .all(|id| seen_a.contains_key(id) || seen_b.contains_key(id))
            .then_some(())
    })
    .await;
    let (seen_a, seen_b) = (a.seen(), b.seen());
    let lost: Vec<&String> = sent
        .keys()
        .filter(|id| !seen_a.contains_key(*id) && !seen_b.contains_key(*id))
        .collect();
    let mut misrouted = Vec::new();
    for (id, s) in &sent {
        let (at_a, at_b) = (seen_a.contains_key(id), seen_b.contains_key(id));
        assert!(!(at_a && at_b), "{id} reached both targets");
        if (s.acked < change_began && !at_a) || (s.first_attempt > changed && !at_b) {
            misrouted.push(id.clone());
        }
    }
    let unexpected = seen_a
        .keys()
        .chain(seen_b.keys())
        .filter(|id| !sent.contains_key(*id))
        .count();
    let worst = [
        reconnected,
        deliveries_resumed,
        registry_resumed,
        rule_applied,
    ]
    .into_iter()
    .max()
    .unwrap_or_default();
    figures(
        "server-restart",
        &[
            ("records_acked", sent.len().to_string()),
            ("publish_retries", publish_retries.to_string()),
            ("restart", ms(restart)),
            ("reconnect_seen_in_metrics", ms(reconnected)),
            ("deliveries_resumed", ms(deliveries_resumed)),
            ("registry_watch_resumed", ms(registry_resumed)),
            ("flow_rule_applied", ms(rule_applied)),
            ("within_10s", within(worst).to_string()),
            ("lost", lost.len().to_string()),
            ("unexpected", unexpected.to_string()),
            ("misrouted", misrouted.len().to_string()),
            (
                "redeliveries",
                (a.redeliveries() + b.redeliveries()).to_string(),
            ),
            (
                "keys_out_of_order",
                (a.keys_out_of_order() + b.keys_out_of_order()).to_string(),
            ),
        ],
    );
    assert!(
        lost.is_empty(),
        "acknowledged records never delivered: {lost:?}"
    );
    assert_eq!(
        unexpected, 0,
        "nothing reaches a target that was not published"
    );
    assert!(
        misrouted.is_empty(),
        "records routed by the wrong rule: {misrouted:?}"
    );
    assert_eq!(
        a.keys_out_of_order() + b.keys_out_of_order(),
        0,
        "in order per key"
    );
    echo.stop().await;
}
