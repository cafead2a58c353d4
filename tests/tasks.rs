//! Durable tasks on a real nats-server: submit, read, events, HTTP, cancel, failures
//! with dead letters, and a worker process killed with SIGKILL mid-task.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use switchyard::component::supervisor::Supervisor;
use switchyard::config::GatewayConfig;
use switchyard::integration::gateway::GatewayComponent;
use switchyard::resilience::tasks::TasksComponent;
use switchyard::sdk::{RunningService, Service};
use switchyard::{Error, ErrorKind};

use common::{TestServer, free_addr, provisioned, supervise, until};

const WAIT: Duration = Duration::from_secs(30);

/// How many times each handler of the test service started and finished.
#[derive(Default)]
struct Counts {
    started: AtomicUsize,
    finished: AtomicUsize,
}

/// Service `worker`: `echo` answers its input, `sleep` sleeps `{"ms"}`, `broken`
/// fails permanently, `huge` answers `{"bytes"}` bytes, `flaky` fails with a retried
/// kind, `steps` reports `{"steps"}` progress steps and answers whether each went out.
/// Two deliveries at most.
async fn start_worker(
    client: &async_nats::Client,
    concurrency: usize,
) -> (RunningService, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let sleeps = counts.clone();
    let service = Service::new("worker", "1.0.0")
        .unwrap()
        .task_ack_wait(Duration::from_secs(3))
        .task_max_deliver(2)
        .task_concurrency(concurrency)
        .operation("echo", |input: Value| async move { Ok(input) })
        .operation("sleep", move |input: Value| {
            let counts = sleeps.clone();
            async move {
                counts.started.fetch_add(1, Ordering::SeqCst);
                let ms = input["ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                counts.finished.fetch_add(1, Ordering::SeqCst);
                Ok(json!({"slept": ms}))
            }
        })
        .operation("broken", |_: Value| async move {
            Err::<Value, _>(Error::new(ErrorKind::Permanent, "cannot ever work"))
        })
        .operation("huge", |input: Value| async move {
            let bytes = input["bytes"].as_u64().unwrap_or(0) as usize;
            Ok(Value::String("x".repeat(bytes)))
        })
        .operation("flaky", |_: Value| async move {
            Err::<Value, _>(Error::new(ErrorKind::Transient, "upstream hiccup"))
        })
        .operation("steps", |input: Value| async move {
            let mut reported = Vec::new();
            for step in 1..=input["steps"].as_u64().unwrap_or(0) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                reported.push(switchyard::sdk::progress(&json!({"step": step})).await);
            }
            Ok(json!({"reported": reported}))
        });
    (service.start(client).await.expect("start worker"), counts)
}

async fn request(client: &async_nats::Client, subject: String, body: Value) -> async_nats::Message {
    client
        .request(subject, body.to_string().into())
        .await
        .expect("an answer")
}

fn error_code(message: &async_nats::Message) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|v| v.as_str().to_string())
}

async fn submit(
    client: &async_nats::Client,
    service: &str,
    operation: &str,
    body: Value,
) -> String {
    let reply = request(client, format!("tasks.submit.{service}.{operation}"), body).await;
    assert_eq!(error_code(&reply), None, "{:?}", reply.payload);
    let answer: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(answer["state"], "submitted", "{answer}");
    answer["id"].as_str().expect("an id").to_string()
}

async fn get(client: &async_nats::Client, id: &str) -> Value {
    let reply = request(client, format!("tasks.get.{id}"), json!(null)).await;
    assert_eq!(error_code(&reply), None, "{:?}", reply.payload);
    serde_json::from_slice(&reply.payload).unwrap()
}

async fn until_state(client: &async_nats::Client, id: &str, state: &str) -> Value {
    until(&format!("task {id} {state}"), WAIT, || async {
        let task = get(client, id).await;
        (task["state"] == state).then_some(task)
    })
    .await
}

/// A started tasks component and an SDK worker on a provisioned server; dropping it
/// stops them.
struct Setup {
    server: TestServer,
    client: async_nats::Client,
    counts: Arc<Counts>,
    _tasks: Supervisor,
    _worker: RunningService,
}

async fn setup(concurrency: usize) -> Setup {
    let (server, client) = provisioned().await;
    let tasks = supervise(&server, Box::new(TasksComponent)).await;
    let (worker, counts) = start_worker(&client, concurrency).await;
    Setup {
        server,
        client,
        counts,
        _tasks: tasks,
        _worker: worker,
    }
}

#[tokio::test]
async fn a_submitted_task_completes_with_its_result_in_kv_through_get_and_as_events() {
    let (server, client) = provisioned().await;
    let client = &client;
    let _tasks = supervise(&server, Box::new(TasksComponent)).await;
    let (_worker, _) = start_worker(client, 8).await;
    let mut events = client.subscribe("tasks.events.>").await.unwrap();
    // Long enough to be recorded `working` (the first tick, a second at most).
    let id = submit(client, "worker", "sleep", json!({"ms": 1500})).await;

    let mut seen = Vec::new();
    while !seen.contains(&"completed".to_string()) {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.subject.as_str(), format!("tasks.events.{id}"));
        let state: Value = serde_json::from_slice(&event.payload).unwrap();
        seen.push(state["state"].as_str().unwrap().to_string());
        if state["state"] == "completed" {
            assert_eq!(state["result"], json!({"slept": 1500}), "{state}");
        }
    }
    // The submit's answer says `submitted`; events are the changes after it.
    assert_eq!(seen, ["working", "completed"]);

    let task = get(client, &id).await;
    assert_eq!(task["state"], "completed", "{task}");
    assert_eq!(task["result"], json!({"slept": 1500}));
    assert_eq!(task["attempts"], 1);
    // Readable with the tools people have.
    let stored = common::nats_cli(&server.url(), &["kv", "get", "tasks", &id, "--raw"]);
    let stored: Value = serde_json::from_str(stored.trim()).unwrap();
    assert_eq!(stored["state"], "completed", "{stored}");

    // A quick task is not recorded `working`: submitted, then its outcome.
    let quick = submit(client, "worker", "echo", json!({"text": "hi"})).await;
    let task = until_state(client, &quick, "completed").await;
    assert_eq!(task["result"], json!({"text": "hi"}));
}

#[tokio::test]
async fn a_get_that_waits_answers_once_the_task_ends() {
    let setup = setup(8).await;
    let (server, client) = (&setup.server, &setup.client);
    let id = submit(client, "worker", "sleep", json!({"ms": 1500})).await;
    // One request, answered when the task completes rather than at once.
    let reply = request(client, format!("tasks.get.{id}"), json!({"wait_ms": 8000})).await;
    assert_eq!(error_code(&reply), None, "{:?}", reply.payload);
    let task: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(task["state"], "completed", "{task}");
    assert_eq!(task["result"], json!({"slept": 1500}));
    // Already ended: at once, the same state.
    let again = request(client, format!("tasks.get.{id}"), json!({"wait_ms": 8000})).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&again.payload).unwrap(),
        task
    );

    // A wait that runs out answers the state as it is then.
    let long = submit(client, "worker", "sleep", json!({"ms": 20000})).await;
    let reply = request(client, format!("tasks.get.{long}"), json!({"wait_ms": 300})).await;
    let task: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(
        task["state"] == "submitted" || task["state"] == "working",
        "{task}"
    );

    // The end is read from KV when no event says so (an event lost with its worker):
    // the state is written behind the workers' back, and no event is published.
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("tasks").await.unwrap();
    let mut ended = task.clone();
    ended["state"] = json!("canceled");
    kv.put(&long, ended.to_string().into()).await.unwrap();
    let reply = request(client, format!("tasks.get.{long}"), json!({"wait_ms": 500})).await;
    let task: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(task["state"], "canceled", "{task}");

    // Bad waits and unknown ids: typed errors.
    for body in [
        json!({"wait_ms": 600000}),
        json!({"wait": 5}),
        json!("soon"),
    ] {
        let reply = request(client, format!("tasks.get.{id}"), body.clone()).await;
        assert_eq!(error_code(&reply).as_deref(), Some("400"), "{body}");
    }
    let unknown = uuid::Uuid::now_v7();
    let reply = request(
        client,
        format!("tasks.get.{unknown}"),
        json!({"wait_ms": 200}),
    )
    .await;
    assert_eq!(error_code(&reply).as_deref(), Some("404"));

    // Over HTTP: `?wait_ms=N`.
    let http = free_addr();
    let gateway = GatewayComponent::new(GatewayConfig {
        http,
        ..GatewayConfig::default()
    });
    let _gateway = supervise(server, Box::new(gateway)).await;
    let quick = submit(client, "worker", "sleep", json!({"ms": 1000})).await;
    let (ok, bad) = tokio::task::spawn_blocking(move || {
        (
            common::http_get(http, &format!("/v1/tasks/{quick}?wait_ms=8000")).unwrap(),
            common::http_get(http, &format!("/v1/tasks/{quick}?wait=8000"))
                .unwrap()
                .0,
        )
    })
    .await
    .unwrap();
    assert_eq!(ok.0, 200, "{}", ok.1);
    let task: Value = serde_json::from_str(&ok.1).unwrap();
    assert_eq!(task["state"], "completed", "{task}");
    assert_eq!(task["result"], json!({"slept": 1000}));
    assert_eq!(bad, 400);
}

#[tokio::test]
async fn a_waiting_get_is_answered_when_its_instance_stops() {
    let (server, client) = provisioned().await;
    let tasks = supervise(&server, Box::new(TasksComponent)).await;
    let (_worker, _) = start_worker(&client, 8).await;
    let id = submit(&client, "worker", "sleep", json!({"ms": 30000})).await;
    let waiting = {
        let (client, id) = (client.clone(), id.clone());
        tokio::spawn(async move {
            let request = async_nats::Request::new()
                .payload(json!({"wait_ms": 60000}).to_string().into())
                .timeout(Some(Duration::from_secs(90)));
            client
                .send_request(format!("tasks.get.{id}"), request)
                .await
        })
    };
    // The get is waiting once the component listens on the task's events: a request
    // there then times out (nobody answers) instead of finding no responders.
    until("the get waiting", WAIT, || async {
        let probe = async_nats::Request::new()
            .payload("not a state".into())
            .timeout(Some(Duration::from_millis(200)));
        let answer = client
            .send_request(format!("tasks.events.{id}"), probe)
            .await;
        matches!(answer, Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut).then_some(())
    })
    .await;
    let report = tasks.stop(Duration::from_secs(20)).await;
    assert!(report.finished_in_time, "{report:?}");
    let reply = waiting
        .await
        .unwrap()
        .expect("an answer before the stop ended");
    assert_eq!(error_code(&reply), None, "{:?}", reply.payload);
    let task: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(
        !["completed", "failed", "canceled"].contains(&task["state"].as_str().unwrap()),
        "{task}"
    );
}

#[tokio::test]
async fn a_running_task_reports_progress_on_its_events() {
    let setup = setup(8).await;
    let client = &setup.client;
    let mut events = client.subscribe("tasks.events.>").await.unwrap();
    let id = submit(client, "worker", "steps", json!({"steps": 3})).await;
    let mut progress = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.subject.as_str(), format!("tasks.events.{id}"));
        let kind = event
            .headers
            .as_ref()
            .unwrap()
            .get("ce-type")
            .unwrap()
            .to_string();
        let state: Value = serde_json::from_slice(&event.payload).unwrap();
        if state["state"] == "completed" {
            assert_eq!(state["result"], json!({"reported": [true, true, true]}));
            assert!(state.get("progress").is_none(), "{state}");
            break;
        }
        if kind == "io.switchyard.task.progress" {
            assert_eq!(state["state"], "working", "{state}");
            assert_eq!(state["attempts"], 1, "{state}");
            progress.push(state["progress"].clone());
        }
    }
    assert_eq!(
        progress,
        [json!({"step": 1}), json!({"step": 2}), json!({"step": 3})]
    );
    // Reports are events only: the stored state has none.
    assert!(get(client, &id).await.get("progress").is_none());

    // The same operation as a plain request: nothing to report to.
    let reply = request(client, "svc.worker.steps".into(), json!({"steps": 2})).await;
    let answer: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(answer, json!({"reported": [false, false]}));
}

#[tokio::test]
async fn unknown_services_operations_and_ids_are_refused() {
    let setup = setup(8).await;
    let client = &setup.client;
    let reply = request(client, "tasks.submit.nope.say".into(), json!({})).await;
    assert_eq!(error_code(&reply).as_deref(), Some("404"));
    let reply = request(client, "tasks.submit.worker.nope".into(), json!({})).await;
    assert_eq!(error_code(&reply).as_deref(), Some("404"));
    let unknown = uuid::Uuid::now_v7();
    let reply = request(client, format!("tasks.get.{unknown}"), json!(null)).await;
    assert_eq!(error_code(&reply).as_deref(), Some("404"));
    let reply = request(client, "tasks.get.not-a-uuid".into(), json!(null)).await;
    assert_eq!(error_code(&reply).as_deref(), Some("400"));
}

#[tokio::test]
async fn tasks_are_submitted_and_read_over_http() {
    let setup = setup(8).await;
    let (server, client) = (&setup.server, &setup.client);
    let http = free_addr();
    let gateway = GatewayComponent::new(GatewayConfig {
        http,
        ..GatewayConfig::default()
    });
    let _gateway = supervise(server, Box::new(gateway)).await;

    let body = br#"{"text":"over http"}"#;
    let (status, _, answer) = tokio::task::spawn_blocking(move || {
        common::http_post(http, "/v1/tasks/worker/echo", &[], body).expect("an answer")
    })
    .await
    .unwrap();
    assert_eq!(status, 202, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let id = answer["id"].as_str().unwrap().to_string();

    let path = format!("/v1/tasks/{id}");
    let task = until("the task completed over HTTP", WAIT, || {
        let path = path.clone();
        async move {
            let (status, body) = tokio::task::spawn_blocking(move || common::http_get(http, &path))
                .await
                .unwrap()?;
            assert_eq!(status, 200, "{body}");
            let task: Value = serde_json::from_str(&body).unwrap();
            (task["state"] == "completed").then_some(task)
        }
    })
    .await;
    assert_eq!(task["result"], json!({"text": "over http"}));
    assert_eq!(get(client, &id).await, task);

    let (missing, unknown_service) = tokio::task::spawn_blocking(move || {
        let unknown = uuid::Uuid::now_v7();
        (
            common::http_get(http, &format!("/v1/tasks/{unknown}"))
                .unwrap()
                .0,
            common::http_post(http, "/v1/tasks/nope/say", &[], b"{}")
                .unwrap()
                .0,
        )
    })
    .await
    .unwrap();
    assert_eq!((missing, unknown_service), (404, 404));
}

#[tokio::test]
async fn cancel_skips_a_waiting_task_and_drops_a_running_one() {
    // One slot: the second task waits in the stream while the first runs.
    let setup = setup(1).await;
    let (client, counts) = (&setup.client, &setup.counts);
    let running = submit(client, "worker", "sleep", json!({"ms": 3000})).await;
    let waiting = submit(client, "worker", "sleep", json!({"ms": 10})).await;
    until_state(client, &running, "working").await;

    let reply = request(client, format!("tasks.cancel.{waiting}"), json!(null)).await;
    let canceled: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(canceled["state"], "canceled", "{canceled}");
    let reply = request(client, format!("tasks.cancel.{running}"), json!(null)).await;
    let canceled: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(canceled["state"], "canceled", "{canceled}");

    // Both work items are settled (the stream is a work queue: acked means gone)…
    let js = async_nats::jetstream::new(client.clone());
    until("both work items settled", WAIT, || async {
        let mut stream = js.get_stream("TASKS").await.unwrap();
        (stream.info().await.unwrap().state.messages == 0).then_some(())
    })
    .await;
    // …the waiting one never ran, the running one was dropped before it finished…
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(counts.started.load(Ordering::SeqCst), 1);
    assert_eq!(counts.finished.load(Ordering::SeqCst), 0);
    // …and nothing overwrote the cancel.
    for id in [&running, &waiting] {
        let task = get(client, id).await;
        assert_eq!(task["state"], "canceled", "{task}");
        assert!(task.get("result").is_none(), "{task}");
    }
    // Canceling a final task changes nothing and says so.
    let reply = request(client, format!("tasks.cancel.{running}"), json!(null)).await;
    let again: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(again["state"], "canceled");
}

#[tokio::test]
async fn a_work_item_delivered_again_after_completion_is_dropped_without_running() {
    let setup = setup(8).await;
    let (client, counts) = (&setup.client, &setup.counts);
    let id = submit(client, "worker", "sleep", json!({"ms": 1})).await;
    let done = until_state(client, &id, "completed").await;
    let mut events = client
        .subscribe(format!("tasks.events.{id}"))
        .await
        .unwrap();

    // What a worker killed between recording the result and acking would leave: the
    // same task's work item delivered once more.
    let js = async_nats::jetstream::new(client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Switchyard-Task-Id", id.as_str());
    js.publish_with_headers("tasks.work.worker.sleep", headers, r#"{"ms":1}"#.into())
        .await
        .unwrap()
        .await
        .unwrap();
    until("the duplicate settled", WAIT, || async {
        let mut stream = js.get_stream("TASKS").await.unwrap();
        (stream.info().await.unwrap().state.messages == 0).then_some(())
    })
    .await;
    assert_eq!(
        counts.started.load(Ordering::SeqCst),
        1,
        "the handler ran once"
    );
    assert_eq!(get(client, &id).await, done, "the recorded outcome stands");
    let extra = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
    assert!(
        extra.is_err(),
        "no event for a dropped duplicate: {extra:?}"
    );
}

/// The dead letter of the work item on `dlq.tasks.work.worker.<operation>`.
async fn dead_letter(
    client: &async_nats::Client,
    operation: &str,
) -> async_nats::jetstream::message::StreamMessage {
    let js = async_nats::jetstream::new(client.clone());
    let subject = format!("dlq.tasks.work.worker.{operation}");
    until(&format!("a dead letter on {subject}"), WAIT, || async {
        let stream = js.get_stream("DLQ").await.unwrap();
        stream.get_last_raw_message_by_subject(&subject).await.ok()
    })
    .await
}

#[tokio::test]
async fn a_permanent_failure_fails_at_once_and_is_dead_lettered() {
    let setup = setup(8).await;
    let client = &setup.client;
    let id = submit(client, "worker", "broken", json!({"n": 1})).await;
    let task = until_state(client, &id, "failed").await;
    assert_eq!(task["error"]["kind"], "permanent", "{task}");
    assert_eq!(task["error"]["code"], 422, "{task}");
    assert_eq!(task["attempts"], 1, "not retried: {task}");
    let letter = dead_letter(client, "broken").await;
    assert_eq!(
        letter.headers.get("Switchyard-Task-Id").map(|v| v.as_str()),
        Some(id.as_str())
    );
    assert_eq!(
        letter
            .headers
            .get("Switchyard-Dlq-Component")
            .map(|v| v.as_str()),
        Some("tasks")
    );
    assert_eq!(
        letter
            .headers
            .get("Switchyard-Dlq-Code")
            .map(|v| v.as_str()),
        Some("422")
    );
    let payload: Value = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(payload, json!({"n": 1}));
}

#[tokio::test]
async fn a_result_too_large_for_the_state_fails_the_task_with_413() {
    let setup = setup(8).await;
    let client = &setup.client;
    let bytes = client.server_info().max_payload;
    let id = submit(client, "worker", "huge", json!({ "bytes": bytes })).await;
    let task = until_state(client, &id, "failed").await;
    assert_eq!(task["error"]["code"], 413, "{task}");
    assert_eq!(task["attempts"], 1, "not retried: {task}");
}

#[tokio::test]
async fn a_retried_failure_is_redelivered_until_max_deliveries_then_failed_and_dead_lettered() {
    let setup = setup(8).await;
    let client = &setup.client;
    let id = submit(client, "worker", "flaky", json!({})).await;
    let task = until_state(client, &id, "failed").await;
    assert_eq!(task["error"]["kind"], "transient", "{task}");
    assert_eq!(task["attempts"], 2, "max deliveries is 2: {task}");
    let letter = dead_letter(client, "flaky").await;
    assert_eq!(
        letter
            .headers
            .get("Switchyard-Dlq-Deliveries")
            .map(|v| v.as_str()),
        Some("2")
    );
}

#[tokio::test]
async fn tasks_in_flight_on_a_worker_killed_with_sigkill_all_complete_once_on_another() {
    const N: usize = 8;
    let (server, client) = provisioned().await;
    let client = &client;
    let _tasks = supervise(&server, Box::new(TasksComponent)).await;
    let slow = common::example_binary("slow");
    let url = server.url();
    let args = ["--nats", url.as_str(), "--task-ack-wait", "2s"];
    let dir = std::env::temp_dir();
    let mut first = common::Process::spawn_program(&slow, &args, &dir);
    let mut events = client.subscribe("tasks.events.>").await.unwrap();

    // The first submit succeeds once the tasks component has seen `slow` register.
    let first_id = until("slow registered", WAIT, || async {
        let reply = request(client, "tasks.submit.slow.wait".into(), json!({"ms": 4000})).await;
        let answer: Value = serde_json::from_slice(&reply.payload).ok()?;
        answer["id"].as_str().map(str::to_string)
    })
    .await;
    let mut ids = vec![first_id];
    while ids.len() < N {
        ids.push(submit(client, "slow", "wait", json!({"ms": 4000})).await);
    }
    for id in &ids {
        until_state(client, id, "working").await;
    }
    first.signal(libc::SIGKILL);
    assert_eq!(first.wait(WAIT), None, "killed, no exit code");

    let _second = common::Process::spawn_program(&slow, &args, &dir);
    for id in &ids {
        let task = until_state(client, id, "completed").await;
        assert_eq!(task["result"], json!({"ms": 4000}), "{task}");
        assert!(
            task["attempts"].as_u64().unwrap() >= 2,
            "redelivered: {task}"
        );
    }
    // Every event published by now (and a little after) is in: one completion each.
    let mut completions: HashMap<String, usize> = HashMap::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(2), events.next()).await {
        let state: Value = serde_json::from_slice(&event.payload).unwrap();
        if state["state"] == "completed" {
            *completions
                .entry(state["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    for id in &ids {
        assert_eq!(
            completions.get(id),
            Some(&1),
            "completions of {id}: {completions:?}"
        );
    }
    assert_eq!(completions.len(), N);
}
