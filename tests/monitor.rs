//! The system monitor on a real nats-server: `sys.status` reflects the registry, each
//! instance's micro STATS, the streams and consumers and the DLQ; `switchyard status`
//! prints it; the same figures are gauges.

mod common;

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use switchyard::system::monitor::MonitorComponent;
use switchyard::system::monitor::status::Status;

const WAIT: Duration = Duration::from_secs(20);

async fn status(client: &async_nats::Client) -> Status {
    let reply = client.request("sys.status", "".into()).await.unwrap();
    serde_json::from_slice(&reply.payload).expect("a status document")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_document_shows_services_streams_consumers_and_the_dlq() {
    let metrics = switchyard::observability::metrics::install();
    let (server, client) = common::provisioned().await;
    let monitor = common::supervise(&server, Box::new(MonitorComponent)).await;
    let echo = switchyard::demo::echo::service()
        .unwrap()
        .start(&server.client().await)
        .await
        .unwrap();
    for _ in 0..5 {
        client
            .request("svc.echo.say", "\"hi\"".into())
            .await
            .unwrap();
    }
    // Two dead letters and a consumer with three records it has not read.
    let js = async_nats::jetstream::new(client.clone());
    for i in 0..2 {
        js.publish(format!("dlq.data.in.test{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let data = js.get_stream("DATA").await.unwrap();
    data.create_consumer(pull::Config {
        durable_name: Some("monitor-test".into()),
        filter_subject: "data.in.monitor.>".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    for _ in 0..3 {
        js.publish("data.in.monitor.x", "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let status = status(&client).await;
    let instances = &status.services["echo"].instances;
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].instance, echo.id());
    assert_eq!(instances[0].requests, Some(5), "{status:?}");
    assert_eq!(instances[0].errors, Some(0));
    assert!(
        instances[0].p99_ms.is_some_and(|p| p >= 0.0),
        "the SDK reports its recent p99 in STATS: {status:?}"
    );
    assert_eq!(status.dlq_depth, 2);
    let consumer = status
        .streams
        .iter()
        .find(|s| s.name == "DATA")
        .and_then(|s| s.consumers.iter().find(|c| c.name == "monitor-test"))
        .expect("the consumer is listed");
    assert_eq!((consumer.pending, consumer.ack_pending), (3, 0));

    // The CLI, as a user runs it.
    let url = server.url();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        common::run_to_end(&["status", "--nats", &url], &std::env::temp_dir())
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("echo") && out.contains("monitor-test"),
        "{out}"
    );
    assert!(out.contains("DLQ depth: 2"), "{out}");
    let url = server.url();
    let (code, out, _) = tokio::task::spawn_blocking(move || {
        common::run_to_end(&["status", "--json", "--nats", &url], &std::env::temp_dir())
    })
    .await
    .unwrap();
    assert_eq!(code, 0);
    let parsed: Status = serde_json::from_str(&out).expect("--json prints the document");
    assert_eq!(parsed.dlq_depth, 2);

    // The gauges, after the monitor's refresh.
    let rendered = common::until("monitor gauges", WAIT, || async {
        let rendered = metrics.render();
        rendered
            .contains("switchyard_monitor_dlq_depth 2")
            .then_some(rendered)
    })
    .await;
    assert!(
        rendered.contains(
            "switchyard_monitor_consumer_pending{stream=\"DATA\",consumer=\"monitor-test\"} 3"
        ),
        "{rendered}"
    );
    assert!(
        rendered.contains("switchyard_monitor_instances{service=\"echo\",health=\"healthy\"} 1"),
        "{rendered}"
    );
    echo.stop().await;
    monitor.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_without_a_monitor_says_so() {
    let (server, _client) = common::provisioned().await;
    let url = server.url();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        common::run_to_end(&["status", "--nats", &url], &std::env::temp_dir())
    })
    .await
    .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("sys.status") && err.contains("monitor"),
        "{err}"
    );
}
