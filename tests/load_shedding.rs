//! Load shedding, one request at a time: a gateway with every `max_in_flight` slot
//! taken answers the next request 429 overloaded at once (over NATS and HTTP) instead
//! of queueing it, and an SDK service at its concurrency limit does the same; both serve
//! again as soon as a slot is free. The flood itself is `tests/chaos_flood.rs`.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard::component::responder::ErrorBody;
use switchyard::config::GatewayConfig;
use switchyard::demo::slow;
use switchyard::integration::gateway::GatewayComponent;

use common::until;

const WAIT: Duration = Duration::from_secs(30);
/// How long the request that holds the only slot runs: long enough that the probes
/// certainly find it taken, whatever the machine's load.
const HOLD_MS: u64 = 8000;

fn code(reply: &async_nats::Message) -> u16 {
    reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map_or(200, |c| c.as_str().parse().unwrap())
}

/// Sends `{"ms": HOLD_MS}` to `subject` in the background: its reply and how long it
/// took, when it comes.
fn hold(
    client: &async_nats::Client,
    subject: &str,
) -> tokio::task::JoinHandle<(async_nats::Message, Duration)> {
    let (client, subject) = (client.clone(), subject.to_string());
    tokio::spawn(async move {
        let request = async_nats::Request::new()
            .payload(json!({ "ms": HOLD_MS }).to_string().into())
            .timeout(Some(Duration::from_secs(30)));
        let sent = Instant::now();
        let reply = client.send_request(subject, request).await.unwrap();
        (reply, sent.elapsed())
    })
}

/// Two long requests to `subject` where one slot is free: whichever comes second must
/// be shed at once while the other runs. The shed one's reply and time, and the other,
/// still running.
async fn race(
    client: &async_nats::Client,
    subject: &str,
) -> (
    async_nats::Message,
    Duration,
    tokio::task::JoinHandle<(async_nats::Message, Duration)>,
) {
    let (first, second) = (hold(client, subject), hold(client, subject));
    let (answered, other) = match futures::future::select(first, second).await {
        futures::future::Either::Left((answered, other))
        | futures::future::Either::Right((answered, other)) => (answered.unwrap(), other),
    };
    let (reply, took) = answered;
    assert_eq!(code(&reply), 429, "the second of two requests is shed");
    (reply, took, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_at_its_limit_answers_429_at_once_over_nats_and_http() {
    let (server, client) = common::provisioned().await;
    let http = common::free_addr();
    let gateway = GatewayComponent::new(GatewayConfig {
        http,
        timeout: Duration::from_secs(20),
        max_in_flight: 1,
        ..GatewayConfig::default()
    });
    let _gateway = common::supervise(&server, Box::new(gateway)).await;
    let service = slow::service(slow::Config { ms: 1 })
        .unwrap()
        .start(&server.client().await)
        .await
        .unwrap();
    until("the gateway routes slow", WAIT, || async {
        let reply = client
            .request("api.slow.wait", r#"{"ms":1}"#.into())
            .await
            .ok()?;
        (code(&reply) == 200).then_some(())
    })
    .await;

    // One call takes the only slot; the other is answered at once, without waiting.
    let (reply, took, held) = race(&client, "api.slow.wait").await;
    let body: ErrorBody = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body.error.kind, switchyard::ErrorKind::Overloaded);
    assert_eq!(body.error.code, 429);
    assert!(
        took < Duration::from_millis(HOLD_MS / 2),
        "shed at once, not after the held call: {took:?}"
    );
    eprintln!("the gateway shed a request in {took:?}");

    // The HTTP ingress shares the limit.
    let (status, _, body) = tokio::task::spawn_blocking(move || {
        common::http_post(http, "/v1/slow/wait", &[], br#"{"ms":1}"#).expect("an answer")
    })
    .await
    .unwrap();
    if !held.is_finished() {
        assert_eq!(status, 429, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["kind"], "overloaded", "{body}");
    }

    // The held call is answered normally, and the slot serves again afterwards.
    assert_eq!(code(&held.await.unwrap().0), 200);
    let reply = client
        .request("api.slow.wait", r#"{"ms":1}"#.into())
        .await
        .unwrap();
    assert_eq!(code(&reply), 200);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_service_at_its_limit_answers_429_at_once() {
    let (server, client) = common::provisioned().await;
    let service = slow::service(slow::Config { ms: 1 })
        .unwrap()
        .max_in_flight(1)
        .start(&server.client().await)
        .await
        .unwrap();

    let (reply, took, held) = race(&client, "svc.slow.wait").await;
    let headers = reply.headers.as_ref().unwrap();
    assert!(
        headers
            .get("Nats-Service-Error")
            .is_some_and(|v| v.as_str().contains("concurrency limit")),
        "{headers:?}"
    );
    assert!(
        took < Duration::from_millis(HOLD_MS / 2),
        "shed at once, not after the held call: {took:?}"
    );
    eprintln!("the service shed a request in {took:?}");

    assert_eq!(code(&held.await.unwrap().0), 200);
    let reply = client
        .request("svc.slow.wait", r#"{"ms":1}"#.into())
        .await
        .unwrap();
    assert_eq!(code(&reply), 200);
    service.stop().await;
}
