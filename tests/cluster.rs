//! Switchyard on a three-node NATS cluster (loopback, free ports, the shape of
//! `nats/cluster/`): streams and buckets get three replicas by themselves, two
//! instances of the components share the work (both gateways answer), and exactly one
//! coordinator leads.

#[path = "common/chaos.rs"]
mod chaos;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Process, free_addr};

const WAIT: Duration = Duration::from_secs(30);

fn gauge(admin: SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = common::http_get(admin, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_work_on_a_three_node_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = chaos::Cluster::start(dir.path());
    let url = cluster.url.clone();
    let client = switchyard::nats::connect(&url, "cluster-test")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    common::until(
        "the cluster elects a JetStream meta leader",
        WAIT,
        || async { js.query_account().await.ok() },
    )
    .await;

    let mut instances = Vec::new();
    for _ in 0..2 {
        let (admin, http) = (free_addr(), free_addr());
        let process = Process::spawn(
            &[
                "run",
                "instance",
                "registry",
                "coordinator",
                "gateway",
                "--nats",
                &url,
                "--admin",
                &admin.to_string(),
                "--http",
                &http.to_string(),
            ],
            dir.path(),
        );
        instances.push((process, admin));
    }
    for (_, admin) in &instances {
        let admin = *admin;
        common::until("an instance is ready", WAIT, || async move {
            common::http_get(admin, "/readyz").filter(|(code, _)| *code == 200)
        })
        .await;
    }

    // Three replicas without being told: the server is clustered.
    for stream in ["DATA", "EVENTS", "KV_registry", "KV_coord"] {
        let mut s = js.get_stream(stream).await.unwrap();
        assert_eq!(s.info().await.unwrap().config.num_replicas, 3, "{stream}");
    }

    // One leader among the two coordinators.
    common::until("exactly one coordinator leads", WAIT, || async {
        let leaders: f64 = instances
            .iter()
            .map(|(_, admin)| gauge(*admin, "switchyard_coordinator_leader").unwrap_or(0.0))
            .sum();
        (leaders == 1.0).then_some(())
    })
    .await;

    // The gateways split the requests (queue group): both answer some of 60.
    let echo = switchyard::demo::echo::service()
        .unwrap()
        .start(&client)
        .await
        .unwrap();
    common::until("the gateways see echo", WAIT, || async {
        client
            .request("api.echo.say", "\"hi\"".into())
            .await
            .ok()
            .filter(|r| {
                r.headers
                    .as_ref()
                    .is_none_or(|h| h.get("Nats-Service-Error-Code").is_none())
            })
    })
    .await;
    for _ in 0..60 {
        let reply = client
            .request("api.echo.say", "\"hi\"".into())
            .await
            .unwrap();
        assert_eq!(&reply.payload[..], b"\"hi\"");
    }
    for (_, admin) in &instances {
        let served = gauge(
            *admin,
            "switchyard_gateway_requests_total{service=\"echo\",operation=\"say\",code=\"200\"}",
        )
        .unwrap_or(0.0);
        assert!(
            served > 0.0,
            "each gateway answers a share; {admin} answered none"
        );
    }
    echo.stop().await;
}
