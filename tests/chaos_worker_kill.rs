//! Fault suite `worker-kill` (`scripts/chaos worker-kill`): 10 000 durable tasks
//! (`tasks.submit.ledger.apply`) run by worker processes (SDK services with the task
//! worker), one of which is killed with SIGKILL every few seconds and replaced.
//!
//! The handler keeps an idempotency record per task in a bucket of its own: the first
//! run applies the task's effect, a run that finds the record (a task redelivered after
//! its worker died) only counts itself there. What must hold: zero lost (every task
//! ends `completed` in KV `tasks` with its result, and its handler ran), zero completed
//! twice (no task has two `completed` events; the state is final once). Throughput,
//! kills and redeliveries are reported.
//!
//! The workers are this test binary started again with `CHAOS_WORKER_NATS` set: the
//! ignored test `worker_process` is their `main`.

#[path = "common/chaos.rs"]
mod chaos;
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::kv::{self, CreateErrorKind};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard::resilience::tasks::TasksComponent;
use switchyard::sdk::Service;
use switchyard::{Error, ErrorKind};

use chaos::{figures, ms};
use common::{provisioned, supervise, until};

const TASKS: u64 = 10_000;
/// Worker processes running at once (one killed and replaced at a time).
const WORKERS: usize = 2;
const KILL_EVERY: Duration = Duration::from_secs(2);
/// Every task completed within this, or the suite fails.
const DEADLINE: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(60);
/// The handler's idempotency records (a test bucket, not Switchyard's): key `n<n>`,
/// value the number of handler runs for that task.
const RUNS_BUCKET: &str = "chaos_ledger_runs";
/// Set in a worker process's environment: the NATS URL.
const WORKER_ENV: &str = "CHAOS_WORKER_NATS";
/// How long one task's work takes after its effect is recorded.
const WORK: Duration = Duration::from_millis(40);

#[derive(Debug, Serialize, Deserialize)]
struct Apply {
    n: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Applied {
    n: u64,
    /// Whether this run applied the effect (false: a redelivery found the record).
    first: bool,
}

/// The handler: record the run in the task's idempotency record (create on the first
/// run, compare-and-set increments after), apply the effect only on the first, work.
async fn apply(runs: &kv::Store, input: Apply) -> Result<Applied, Error> {
    let key = format!("n{}", input.n);
    let transient = |e: String| Error::new(ErrorKind::Transient, e);
    loop {
        let first = match runs
            .entry(&key)
            .await
            .map_err(|e| transient(e.to_string()))?
        {
            None => match runs.create(&key, "1".into()).await {
                Ok(_) => true,
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(transient(e.to_string())),
            },
            Some(entry) => {
                let count: u64 = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let next = (count + 1).to_string();
                if runs
                    .update(&key, next.into(), entry.revision)
                    .await
                    .is_err()
                {
                    continue; // another run moved it meanwhile: read again
                }
                false
            }
        };
        tokio::time::sleep(WORK).await;
        return Ok(Applied { n: input.n, first });
    }
}

/// Not a test: the worker program `worker_kill` starts (and kills), run only when
/// `CHAOS_WORKER_NATS` is set; otherwise it returns at once.
#[test]
#[ignore = "the worker process of worker_kill, started by it"]
fn worker_process() {
    let Ok(url) = std::env::var(WORKER_ENV) else {
        return;
    };
    // Dies with the suite's process: no worker outlives a killed test run.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let client = switchyard::nats::connect(&url, "chaos-worker")
            .await
            .unwrap();
        let js = jetstream::new(client.clone());
        let runs = js.get_key_value(RUNS_BUCKET).await.unwrap();
        let service = Service::new("ledger", "1.0.0")
            .unwrap()
            .heartbeat(Duration::from_secs(1))
            .task_ack_wait(Duration::from_secs(2))
            .task_max_deliver(50)
            .task_concurrency(16)
            .operation("apply", move |input: Apply| {
                let runs = runs.clone();
                async move { apply(&runs, input).await }
            });
        let _running = service.start(&client).await.unwrap();
        std::future::pending::<()>().await;
    });
}

/// A worker process: this binary running `worker_process`; killed on drop.
struct Worker(Child);

impl Worker {
    fn spawn(url: &str, log: &Path) -> Worker {
        let exe = std::env::current_exe().expect("the test binary");
        let child = Command::new(exe)
            .args(["worker_process", "--exact", "--ignored", "--nocapture"])
            .env(WORKER_ENV, url)
            .env("SWITCHYARD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            )
            .spawn()
            .expect("start a worker");
        Worker(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn request(client: &async_nats::Client, subject: String, body: Value) -> Option<Value> {
    let reply = client
        .request(subject, body.to_string().into())
        .await
        .ok()?;
    if reply
        .headers
        .as_ref()
        .is_some_and(|h| h.get("Nats-Service-Error-Code").is_some())
    {
        return None;
    }
    serde_json::from_slice(&reply.payload).ok()
}

/// Submits task `n`, retrying a refused or lost submit (a new task each time: the one
/// that counts is the id answered).
async fn submit(client: &async_nats::Client, n: u64) -> String {
    for _ in 0..100 {
        if let Some(answer) =
            request(client, "tasks.submit.ledger.apply".into(), json!({"n": n})).await
            && let Some(id) = answer["id"].as_str()
        {
            return id.to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("task {n} could not be submitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_kill() {
    let (server, client) = provisioned().await;
    let _tasks = supervise(&server, Box::new(TasksComponent)).await;
    let js = jetstream::new(client.clone());
    let runs = js
        .create_key_value(kv::Config {
            bucket: RUNS_BUCKET.into(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("workers.log");
    let url = server.url();
    let mut workers: Vec<Worker> = (0..WORKERS).map(|_| Worker::spawn(&url, &log)).collect();

    // Every task event, counted per task id and state.
    let events: Arc<Mutex<HashMap<String, HashMap<String, u32>>>> = Arc::default();
    let mut subscription = client.subscribe("tasks.events.>").await.unwrap();
    let counted = events.clone();
    tokio::spawn(async move {
        while let Some(event) = subscription.next().await {
            let Ok(state) = serde_json::from_slice::<Value>(&event.payload) else {
                continue;
            };
            let (Some(id), Some(phase)) = (state["id"].as_str(), state["state"].as_str()) else {
                continue;
            };
            *counted
                .lock()
                .unwrap()
                .entry(id.to_string())
                .or_default()
                .entry(phase.to_string())
                .or_default() += 1;
        }
    });
    // Task 0 goes in once the tasks component has seen a worker register (a submit is
    // refused with 404 until then).
    let first = until("ledger workers registered", WAIT, || async {
        let answer = request(&client, "tasks.submit.ledger.apply".into(), json!({"n": 0})).await?;
        answer["id"].as_str().map(str::to_string)
    })
    .await;

    let started = Instant::now();
    // The killer runs in the test body's task below; submits run concurrently.
    let submitting = {
        let client = client.clone();
        tokio::spawn(async move {
            futures::stream::iter(1..TASKS)
                .map(|n| {
                    let client = client.clone();
                    async move { (n, submit(&client, n).await) }
                })
                .buffer_unordered(32)
                .collect::<HashMap<u64, String>>()
                .await
        })
    };
    let tasks_stream = js.get_stream("TASKS").await.unwrap();
    let mut kills = 0;
    let mut submitted: Option<HashMap<u64, String>> = None;
    let mut submitting = Some(submitting);
    let finished = loop {
        tokio::time::sleep(KILL_EVERY).await;
        if let Some(handle) = submitting.take_if(|h| h.is_finished()) {
            let mut all = handle.await.unwrap();
            all.insert(0, first.clone());
            submitted = Some(all);
        }
        let done = submitted.is_some() && {
            let mut stream = tasks_stream.clone();
            stream
                .info()
                .await
                .map(|i| i.state.messages == 0)
                .unwrap_or(false)
        };
        if done {
            break true;
        }
        if started.elapsed() > DEADLINE {
            break false;
        }
        // One worker dies, a new one takes its place.
        let victim = kills % WORKERS;
        workers[victim].kill();
        workers[victim] = Worker::spawn(&url, &log);
        kills += 1;
    };
    let took = started.elapsed();
    let submitted = submitted.unwrap_or_default();
    assert!(
        finished,
        "work items left in TASKS after {DEADLINE:?}; worker log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // The outcome as clients see it: the state in KV `tasks`.
    let states = js.get_key_value("tasks").await.unwrap();
    let finals: Vec<(u64, Value)> = futures::stream::iter(submitted.iter())
        .map(|(n, id)| {
            let states = states.clone();
            async move {
                let value = states.get(id).await.unwrap().unwrap_or_default();
                (
                    *n,
                    serde_json::from_slice::<Value>(&value).unwrap_or_default(),
                )
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut not_completed = Vec::new();
    let mut redelivered_tasks = 0u64;
    for (n, state) in &finals {
        if state["state"] != "completed" || state["result"]["n"] != json!(n) {
            not_completed.push((*n, state.clone()));
        }
        if state["attempts"].as_u64().unwrap_or(0) > 1 {
            redelivered_tasks += 1;
        }
    }
    // The handler side: one idempotency record per task, and how often each ran.
    let mut handler_runs = 0u64;
    let mut ran_again = 0u64;
    let mut never_ran = Vec::new();
    for n in 0..TASKS {
        match runs.get(format!("n{n}")).await.unwrap() {
            Some(value) => {
                let count: u64 = std::str::from_utf8(&value).unwrap().parse().unwrap();
                handler_runs += count;
                ran_again += u64::from(count > 1);
            }
            None => never_ran.push(n),
        }
    }
    // Give the last events a moment to arrive, then count completions per task.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = events.lock().unwrap().clone();
    let ids: std::collections::HashSet<&String> = submitted.values().collect();
    let completions = |id: &String| {
        events
            .get(id)
            .and_then(|s| s.get("completed"))
            .copied()
            .unwrap_or(0)
    };
    let completed_twice: Vec<&String> = ids
        .iter()
        .copied()
        .filter(|id| completions(id) > 1)
        .collect();
    let completion_events = ids.iter().filter(|id| completions(id) == 1).count();
    figures(
        "worker-kill",
        &[
            ("tasks", submitted.len().to_string()),
            ("workers", WORKERS.to_string()),
            ("kills", kills.to_string()),
            ("wall", ms(took)),
            (
                "throughput",
                format!("{:.0}/s", submitted.len() as f64 / took.as_secs_f64()),
            ),
            ("lost", (not_completed.len() + never_ran.len()).to_string()),
            ("completed_twice", completed_twice.len().to_string()),
            ("completion_events", completion_events.to_string()),
            ("redelivered_tasks", redelivered_tasks.to_string()),
            ("handler_runs", handler_runs.to_string()),
            ("handler_ran_again", ran_again.to_string()),
        ],
    );
    assert_eq!(submitted.len() as u64, TASKS, "every task submitted");
    assert!(kills >= 2, "workers were killed while tasks ran: {kills}");
    assert!(
        not_completed.is_empty(),
        "{} tasks not completed with their result: {:?}",
        not_completed.len(),
        not_completed.iter().take(5).collect::<Vec<_>>()
    );
    assert!(never_ran.is_empty(), "handler never ran for {never_ran:?}");
    assert!(
        completed_twice.is_empty(),
        "completed twice: {completed_twice:?}"
    );
}
