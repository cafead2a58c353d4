//! The alert system on a real nats-server: a rule stored live in KV fires once per
//! incident (however many evaluations it spans) and resolves once, on
//! `alerts.<severity>.<rule>` and in stream ALERTS, with the gauge and the webhook.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use switchyard::observability::alerts::{AlertConfig, AlertEvent};
use switchyard::system::coordinator::CoordinatorComponent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

/// A webhook receiver: every POST body, answered 200.
async fn webhook() -> (String, mpsc::UnboundedReceiver<AlertEvent>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/alerts", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head and the body the Content-Length announces.
            loop {
                let n = socket.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let length: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if request.len() >= head_end + 4 + length {
                        let body = &request[head_end + 4..head_end + 4 + length];
                        let _ = tx.send(serde_json::from_slice(body).unwrap());
                        break;
                    }
                }
            }
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_fires_once_and_resolves_once() {
    let metrics = switchyard::observability::metrics::install();
    let (server, client) = common::provisioned().await;
    let js = async_nats::jetstream::new(client.clone());
    let coord = js.get_key_value("coord").await.unwrap();
    coord
        .put(
            "alerts.dlq-not-empty",
            json!({"condition": {"dlq_depth": {"above": 0}}, "for": "600ms", "severity": "warning"})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    // Refused: the rule in force stays.
    coord
        .put("alerts.broken", r#"{"condition":{"dlq_depth":{}}}"#.into())
        .await
        .unwrap();
    let (url, mut hooks) = webhook().await;
    let mut alerts = client.subscribe("alerts.>").await.unwrap();
    let coordinator = CoordinatorComponent::new(Duration::from_secs(1)).with_alerts(AlertConfig {
        file_rules: BTreeMap::new(),
        webhook: Some(url),
        every: Duration::from_millis(200),
    });
    let coordinator = common::supervise(&server, Box::new(coordinator)).await;

    js.publish("dlq.data.in.poison", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let fired = tokio::time::timeout(WAIT, alerts.next())
        .await
        .expect("the alert fires")
        .unwrap();
    assert_eq!(fired.subject.as_str(), "alerts.warning.dlq-not-empty");
    let event: AlertEvent = serde_json::from_slice(&fired.payload).unwrap();
    assert_eq!((event.state.as_str(), event.value), ("firing", 1.0));
    let gauge = "switchyard_alerts_firing{rule=\"dlq-not-empty\",severity=\"warning\"}";
    common::until("the gauge rises", WAIT, || async {
        metrics
            .render()
            .contains(&format!("{gauge} 1"))
            .then_some(())
    })
    .await;

    // Many evaluations later: still one firing event.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), alerts.next())
            .await
            .is_err(),
        "one firing event per incident, not one per evaluation"
    );
    js.get_stream("DLQ").await.unwrap().purge().await.unwrap();
    let resolved = tokio::time::timeout(WAIT, alerts.next())
        .await
        .expect("the alert resolves")
        .unwrap();
    let event: AlertEvent = serde_json::from_slice(&resolved.payload).unwrap();
    assert_eq!(event.state, "resolved");
    common::until("the gauge drops", WAIT, || async {
        metrics
            .render()
            .contains(&format!("{gauge} 0"))
            .then_some(())
    })
    .await;

    // Both are kept in ALERTS, and both reached the webhook.
    let mut stream = js.get_stream("ALERTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    let first = tokio::time::timeout(WAIT, hooks.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(WAIT, hooks.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.state.as_str(), second.state.as_str()),
        ("firing", "resolved")
    );
    assert_eq!(first.rule, "dlq-not-empty");
    coordinator.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_raises_an_alert_until_it_closes() {
    use switchyard::integration::bus;
    use switchyard::integration::gateway::breaker_events::BreakerChange;
    let (server, client) = common::provisioned().await;
    let js = async_nats::jetstream::new(client.clone());
    let change = |change: &str| BreakerChange {
        change: change.into(),
        service: "echo".into(),
        instance: "gw-1".into(),
    };
    // Opened before the coordinator starts: learnt from the stream's history.
    bus::publish(&js, &client, "urn:test", &change("opened"), None)
        .await
        .unwrap();
    let mut alerts = client.subscribe("alerts.>").await.unwrap();
    let rule = json!({"condition": {"breaker_open": {}}, "for": "0s", "severity": "critical"});
    let mut file_rules = BTreeMap::new();
    file_rules.insert(
        "breakers".to_string(),
        serde_json::from_value(rule).unwrap(),
    );
    let coordinator = CoordinatorComponent::new(Duration::from_secs(1)).with_alerts(AlertConfig {
        file_rules,
        webhook: None,
        every: Duration::from_millis(200),
    });
    let coordinator = common::supervise(&server, Box::new(coordinator)).await;
    let fired = tokio::time::timeout(WAIT, alerts.next())
        .await
        .expect("the alert fires")
        .unwrap();
    assert_eq!(fired.subject.as_str(), "alerts.critical.breakers");
    let event: AlertEvent = serde_json::from_slice(&fired.payload).unwrap();
    assert_eq!(
        (event.state.as_str(), event.subject.as_str()),
        ("firing", "echo")
    );
    bus::publish(&js, &client, "urn:test", &change("closed"), None)
        .await
        .unwrap();
    let resolved = tokio::time::timeout(WAIT, alerts.next())
        .await
        .expect("the alert resolves")
        .unwrap();
    let event: AlertEvent = serde_json::from_slice(&resolved.payload).unwrap();
    assert_eq!(event.state, "resolved");
    coordinator.stop(Duration::from_secs(5)).await;
}
