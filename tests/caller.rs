//! The SDK's client side (`switchyard::sdk::Caller`) on a real server with the gateway
//! and the tasks component: calls through `api.<service>.<operation>` answer the
//! decoded reply or the typed error; a chain of agents keeps one correlation id; a
//! durable task runs to its result with one call, a failed one is its error, and a
//! task that does not end in time is a timeout.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard::config::GatewayConfig;
use switchyard::envelope::Meta;
use switchyard::integration::gateway::GatewayComponent;
use switchyard::resilience::tasks::TasksComponent;
use switchyard::resilience::tasks::state::Phase;
use switchyard::sdk::{Caller, RunningService, Service};
use switchyard::{Error, ErrorKind};

use common::{provisioned, supervise, until};

const WAIT: Duration = Duration::from_secs(30);

/// Service `agents`: `say` answers its input, `refuse` fails for good, `sleep` sleeps
/// `{"ms"}`, `whose` answers the correlation and causation ids it was called with, and
/// `delegate` calls `whose` as a follow-up of its own request.
async fn start_agents(client: &async_nats::Client) -> RunningService {
    let delegating = client.clone();
    Service::new("agents", "1.0.0")
        .unwrap()
        .operation("say", |input: Value| async move { Ok(input) })
        .operation("refuse", |_: Value| async move {
            Err::<Value, _>(Error::new(ErrorKind::Permanent, "never this one"))
        })
        .operation("sleep", |input: Value| async move {
            let ms = input["ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({"slept": ms}))
        })
        .operation_with_meta("whose", |meta: Meta, _: Value| async move {
            Ok(json!({"correlation": meta.correlation_id, "causation": meta.causation_id}))
        })
        .operation_with_meta("delegate", move |meta: Meta, _: Value| {
            let caller = Caller::new(&delegating).within(&meta);
            async move {
                let inner: Value = caller.call("agents", "whose", &json!({})).await?;
                Ok(json!({"mine": meta.id, "inner": inner}))
            }
        })
        .start(client)
        .await
        .expect("start agents")
}

#[tokio::test]
async fn calls_answer_typed_replies_and_errors_and_keep_one_conversation() {
    let (server, client) = provisioned().await;
    let _gateway = supervise(
        &server,
        Box::new(GatewayComponent::new(GatewayConfig::default())),
    )
    .await;
    let _agents = start_agents(&client).await;
    let caller = Caller::new(&client).timeout(Duration::from_secs(5));

    // The gateway knows the service once it has read the registry.
    let said: Value = until("agents.say through the gateway", WAIT, || async {
        caller
            .call("agents", "say", &json!({"text": "hi"}))
            .await
            .ok()
    })
    .await;
    assert_eq!(said, json!({"text": "hi"}));

    let refused = caller
        .call::<_, Value>("agents", "refuse", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Permanent, "{refused}");
    assert!(refused.message().contains("never this one"), "{refused}");
    let unknown = caller
        .call::<_, Value>("nobody", "say", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::NotFound, "{unknown}");
    // An answer of another shape than expected is a typed error, not a panic.
    let mismatch = caller
        .call::<_, Vec<u64>>("agents", "say", &json!({"text": "hi"}))
        .await
        .unwrap_err();
    assert_eq!(mismatch.kind(), ErrorKind::InvalidInput, "{mismatch}");

    // A chain: the test asks `delegate` within its own conversation, `delegate` asks
    // `whose` within the request it got; `whose` sees the test's correlation id.
    let conversation = Meta::new("urn:test", "io.test.start");
    let answer: Value = caller
        .clone()
        .within(&conversation)
        .call("agents", "delegate", &json!({}))
        .await
        .unwrap();
    assert_eq!(
        answer["inner"]["correlation"], conversation.correlation_id,
        "{answer}"
    );
    assert!(answer["inner"]["causation"].is_string(), "{answer}");
}

#[tokio::test]
async fn a_task_runs_to_its_result_with_one_call() {
    let (server, client) = provisioned().await;
    let _tasks = supervise(&server, Box::new(TasksComponent)).await;
    let _agents = start_agents(&client).await;
    let caller = Caller::new(&client);

    // The tasks component knows the service once it has read the registry.
    let id = until("agents accepted as a task", WAIT, || async {
        caller.submit("agents", "say", &json!({"n": 1})).await.ok()
    })
    .await;
    let state = caller.wait(&id, WAIT).await.unwrap();
    assert_eq!(state.state, Phase::Completed);
    assert_eq!(state.result, Some(json!({"n": 1})));

    let started = Instant::now();
    let slept: Value = caller
        .run_task("agents", "sleep", &json!({"ms": 1200}), WAIT)
        .await
        .unwrap();
    assert_eq!(slept, json!({"slept": 1200}));
    println!("run_task of a 1.2 s task: {:?}", started.elapsed());

    let failed = caller
        .run_task::<_, Value>("agents", "refuse", &json!({}), WAIT)
        .await
        .unwrap_err();
    assert_eq!(failed.kind(), ErrorKind::Permanent, "{failed}");
    assert!(failed.message().contains("never this one"), "{failed}");

    // Not ended in time: a timeout naming the state; the task goes on.
    let long = caller
        .submit("agents", "sleep", &json!({"ms": 3000}))
        .await
        .unwrap();
    let late = caller
        .wait(&long, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(late.kind(), ErrorKind::Timeout, "{late}");
    let done = caller.wait(&long, WAIT).await.unwrap();
    assert_eq!(done.result, Some(json!({"slept": 3000})));

    let unknown = caller
        .wait(&uuid::Uuid::now_v7().to_string(), WAIT)
        .await
        .unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::NotFound, "{unknown}");
}
