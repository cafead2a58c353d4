//! `switchyard bench tasks`: durable tasks against the thinnest hand-written work
//! queue, on the same server, with the same handler and the same load, in one run.
//!
//! - The hand-written queue: a work-queue stream (file storage), JetStream publish
//!   with ack to submit, one explicit-ack pull consumer running the handler on at
//!   most [`IN_FLIGHT`] tasks at once, then the ack and the result published.
//! - The contract floor: the hand-written queue plus the least issue 5's contract adds
//!   to each task, a submit request-reply answered after the `submitted` state and the
//!   work item are stored, and the outcome state stored before the result
//!   ([`floor::contract_floor_queue`]): what no implementation of that contract can
//!   undercut on the same machine.
//! - Switchyard: `tasks.submit.<service>.run` answered by the `tasks` component (state
//!   in KV `tasks`, work item in stream `TASKS`), an SDK service running the same
//!   handler as its operation `run` (task concurrency [`IN_FLIGHT`]), the result seen
//!   as the `completed` event on `tasks.events.<id>`.
//!
//! Latency is submit-to-completion: from the start of the submit to the moment the
//! client sees the result, on one clock. Throughput counts completions within the
//! window. Then the submitters stop and the bench waits for every accepted task to
//! complete, so a loss shows as `completed < submitted`.

mod floor;
mod load;

use std::time::Duration;

use async_nats::jetstream;
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::Value;

use self::floor::contract_floor_queue;
use self::load::{
    Completions, IN_FLIGHT, Measured, SUBMITTERS, TASK_BYTES, handler, measure, tasks_submit,
    thin_submit, thin_work_queue,
};
use super::cpu::{self, CpuPerUnit};
use super::report::RunInfo;
use super::{Names, Timing};
use crate::admin::Readiness;
use crate::component::Component;
use crate::component::supervisor::Supervisor;
use crate::config::Config;
use crate::error::Error;
use crate::resilience::tasks::TasksComponent;
use crate::resilience::tasks::state::TaskState;
use crate::sdk::Service;
use crate::subjects::{self, STREAM_TASKS};

pub const STEPS: u64 = 3;
/// Throughput against the hand-written queue that the tasks path aims for.
pub const TARGET_RATIO: f64 = 0.6;

#[derive(Debug, Serialize)]
pub struct TasksRow {
    pub path: &'static str,
    pub tasks_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub submitted: u64,
    pub completed: u64,
    /// Tasks/s relative to the hand-written queue.
    pub ratio: f64,
    /// CPU per task (this process and the server), within the window.
    pub cpu: CpuPerUnit,
    /// The hand-written path's CPU per task over this path's: the ratio a machine
    /// with nothing else running would approach when both are CPU-bound.
    pub cpu_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct TasksReport {
    pub run: RunInfo,
    pub rows: Vec<TasksRow>,
    pub target_ratio: f64,
    pub target_met: bool,
}

pub async fn bench(
    config: &Config,
    embedded: bool,
    timing: Timing,
    url: &str,
    server: String,
    progress: &ProgressBar,
) -> Result<TasksReport, Error> {
    crate::observability::metrics::install();
    let (caller, run, jetstream_config) =
        super::connect_provisioned(config, embedded, url, "switchyard-bench", server, timing)
            .await?;
    let js = jetstream::new(caller.clone());
    let names = Names::new();
    let id = names.stream.trim_start_matches("BENCH_").to_lowercase();
    // Completions arrive on their own connection, as a separate client's would.
    let listener = crate::nats::connect(url, "switchyard-bench-results").await?;

    progress.set_message("hand-written work queue");
    let results = format!("bench.{id}.thin.done");
    let completions = Completions::new()?;
    let following = completions.follow(subscribe(&listener, &results).await?, thin_result);
    let worker = thin_work_queue(
        url,
        &js,
        &names.stream,
        &format!("bench.{id}.thin.work.>"),
        &results,
    )
    .await?;
    let submit = thin_submit(js.clone(), format!("bench.{id}.thin.work.run"));
    let base = measure(submit, timing, completions).await;
    worker.abort();
    following.abort();
    let _ = js.delete_stream(&names.stream).await;
    progress.inc(1);
    let base = base.map_err(|e| in_path("hand-written work queue", e))?;

    progress.set_message("contract floor");
    let results = format!("bench.{id}.floor.done");
    let completions = Completions::new()?;
    let following = completions.follow(subscribe(&listener, &results).await?, thin_result);
    let submit = format!("bench.{id}.floor.submit");
    let floor = contract_floor_queue(
        url,
        &js,
        &names.stream,
        &format!("bench.{id}.floor.work"),
        &submit,
        &results,
    )
    .await;
    let floor_measured = match floor {
        Ok(floor) => {
            let measured = measure(tasks_submit(caller.clone(), submit), timing, completions).await;
            floor.abort();
            measured
        }
        Err(err) => Err(err),
    };
    following.abort();
    let _ = js.delete_stream(&names.stream).await;
    let _ = js.delete_key_value(floor::bucket(&names.stream)).await;
    progress.inc(1);
    let floor_measured = floor_measured.map_err(|e| in_path("contract floor", e))?;

    progress.set_message("switchyard tasks");
    let service_name = format!("bench{id}");
    let completions = Completions::new()?;
    let following = completions.follow(subscribe(&listener, "tasks.events.*").await?, task_result);
    let components: Vec<Box<dyn Component>> = vec![Box::new(TasksComponent)];
    let component_client = crate::nats::connect(url, "switchyard-bench-tasks").await?;
    let supervisor = Supervisor::start(
        component_client,
        components,
        Readiness::default(),
        jetstream_config,
    )
    .await?;
    let service_client = crate::nats::connect(url, "switchyard-bench-worker").await?;
    let service = Service::new(service_name.as_str(), "1.0.0")?
        .task_concurrency(IN_FLIGHT)
        .operation("run", |task: Value| async move { handler(task) })
        .start(&service_client)
        .await;
    let ours = match service {
        Ok(service) => {
            let subject = subjects::tasks_submit(&service_name, "run")?;
            wait_routable(&caller, &subject).await;
            let ours = measure(tasks_submit(caller.clone(), subject), timing, completions).await;
            service.stop().await;
            ours
        }
        Err(err) => Err(err),
    };
    supervisor.stop(Duration::from_secs(5)).await;
    following.abort();
    if let (Ok(stream), Ok(consumer)) = (
        js.get_stream(STREAM_TASKS.name).await,
        subjects::tasks_consumer(&service_name),
    ) {
        let _ = stream.delete_consumer(&consumer).await;
    }
    progress.inc(1);
    let ours = ours.map_err(|e| in_path("switchyard tasks", e))?;

    let baseline = base.tasks_per_sec;
    let mut rows = vec![
        row("hand-written work queue", base),
        row("contract floor", floor_measured),
        row("switchyard tasks", ours),
    ];
    let baseline_cpu = rows[0].cpu;
    for row in &mut rows {
        row.ratio = cpu::ratio(row.tasks_per_sec, baseline);
        row.cpu_ratio = row.cpu.ratio_to(&baseline_cpu);
    }
    // The verdict is about Switchyard's row, the last.
    let target_met = rows.last().is_some_and(|r| r.ratio >= TARGET_RATIO);
    Ok(TasksReport {
        run,
        rows,
        target_ratio: TARGET_RATIO,
        target_met,
    })
}

async fn subscribe(
    client: &async_nats::Client,
    subject: &str,
) -> Result<async_nats::Subscriber, Error> {
    let subscriber = client
        .subscribe(subject.to_string())
        .await
        .map_err(|e| Error::nats(&format!("subscribe {subject}"), e))?;
    // The subscription must be live on the server before the first result comes.
    client.flush().await.map_err(|e| Error::nats("flush", e))?;
    Ok(subscriber)
}

/// The tasks component learns of the service from the registry watch: wait until a
/// submit is no longer refused as unknown (at most a few seconds).
async fn wait_routable(caller: &async_nats::Client, subject: &str) {
    for _ in 0..100 {
        let known = caller
            .request(subject.to_string(), "{}".into())
            .await
            .ok()
            .is_some_and(|r| crate::envelope::error_from_reply(r.headers.as_ref()).is_none());
        if known {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn thin_result(message: &async_nats::Message) -> Option<Value> {
    serde_json::from_slice(&message.payload).ok()
}

/// The result of a `completed` task event of the load (it carries `ts`); other events
/// are progress, and the tasks `wait_routable` submits are not the load's (counted,
/// one of them made `completed` exceed `submitted` by one).
fn task_result(message: &async_nats::Message) -> Option<Value> {
    let state = TaskState::from_json(&message.payload).ok()?;
    (state.state == crate::resilience::tasks::state::Phase::Completed)
        .then_some(state.result)
        .flatten()
        .filter(|result| result.get("ts").is_some())
}

/// A failed path's error, saying which path failed (a bare "no responders" does not).
fn in_path(path: &str, err: Error) -> Error {
    Error::new(err.kind(), format!("{path}: {}", err.message()))
}

fn row(path: &'static str, m: Measured) -> TasksRow {
    TasksRow {
        path,
        tasks_per_sec: m.tasks_per_sec,
        p50_us: m.p50_us,
        p99_us: m.p99_us,
        submitted: m.submitted,
        completed: m.completed,
        ratio: 1.0,
        cpu: m.cpu,
        cpu_ratio: 1.0,
    }
}

pub fn render_table(report: &TasksReport) -> String {
    let mut out = format!(
        "switchyard bench tasks: {} tasks of {TASK_BYTES} B, {SUBMITTERS} submitters, {IN_FLIGHT} tasks in flight, {} ms window\n\n",
        report.run.server, report.run.duration_ms
    );
    out.push_str(&format!(
        "{:<24} {:>10} {:>7} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}\n",
        "path",
        "tasks/s",
        "ratio",
        "p50 µs",
        "p99 µs",
        "submitted",
        "completed",
        "cpu µs",
        "cpu ratio"
    ));
    for r in &report.rows {
        out.push_str(&format!(
            "{:<24} {:>10.0} {:>7.2} {:>10} {:>10} {:>10} {:>10} {:>9.1} {:>9.2}\n",
            r.path,
            r.tasks_per_sec,
            r.ratio,
            r.p50_us,
            r.p99_us,
            r.submitted,
            r.completed,
            r.cpu.total_us(),
            r.cpu_ratio
        ));
    }
    out.push_str(&cpu::footnote("task", report.rows.iter().map(|r| r.cpu)));
    out.push_str(&format!(
        "\ntarget: switchyard tasks >= {:.0} % of the hand-written queue's tasks/s: {}\n",
        report.target_ratio * 100.0,
        if report.target_met { "met" } else { "not met" }
    ));
    out
}
