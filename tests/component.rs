//! The component model on a real server: readiness means subscribed, a graceful stop
//! answers every request a component accepted, and afterwards callers are told at once
//! that nobody listens.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use switchyard::admin::Readiness;
use switchyard::component::responder::{self, Endpoint, Reply, Request};
use switchyard::component::supervisor::Supervisor;
use switchyard::component::{Component, Context, Subscription};
use switchyard::config::JetStreamConfig;
use switchyard::error::Error;

/// A component whose handler takes a while, like an agent step.
struct Slow {
    started: Arc<AtomicUsize>,
}

impl Component for Slow {
    fn name(&self) -> &'static str {
        "slow-test"
    }

    fn subscriptions(&self) -> Vec<Subscription> {
        vec![Subscription {
            subject: "test.slow",
            queue_group: Some("switchyard"),
            description: "sleeps, then answers",
        }]
    }

    fn start(&self, ctx: Context) -> BoxFuture<'_, Result<(), Error>> {
        let started = self.started.clone();
        Box::pin(async move {
            let endpoint = Endpoint {
                name: "slow",
                subject: "test.slow".into(),
                queue_group: Some("switchyard"),
                request_type: "io.switchyard.test.slow",
                source: "urn:switchyard:test",
            };
            responder::serve(&ctx, "slow-test", endpoint, move |request: Request| {
                started.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    Ok(Reply::to(&request, &"done"))
                }
            })
            .await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_finishes_accepted_work_then_refuses_new() {
    let server = common::TestServer::start();
    let caller = server.client().await;
    let started = Arc::new(AtomicUsize::new(0));
    let supervisor = Supervisor::start(
        server.client().await,
        vec![Box::new(Slow {
            started: started.clone(),
        })],
        Readiness::default(),
        JetStreamConfig::default(),
    )
    .await
    .expect("start");

    // Started means subscribed: the very first request is served.
    let mut calls = Vec::new();
    for _ in 0..20 {
        let caller = caller.clone();
        calls.push(tokio::spawn(async move {
            let request = async_nats::Request::new()
                .payload("{}".into())
                .timeout(Some(Duration::from_secs(10)));
            caller.send_request("test.slow", request).await
        }));
    }
    // Stop only once every request is being worked on.
    common::eventually(Duration::from_secs(10), || {
        (started.load(Ordering::SeqCst) == 20).then_some(())
    })
    .expect("all 20 requests accepted");
    let report = supervisor.stop(Duration::from_secs(10)).await;
    assert!(report.finished_in_time, "{report:?}");
    assert!(report.drained, "{report:?}");
    for call in calls {
        let reply = call.await.unwrap().expect("accepted work is answered");
        assert_eq!(&reply.payload[..], br#""done""#);
    }

    // After the stop, a caller learns at once that nobody listens: no timeout.
    let err = caller
        .send_request(
            "test.slow",
            async_nats::Request::new()
                .payload("{}".into())
                .timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
}
