//! The task worker of a started service: every operation is also run as a durable task
//! (`tasks.submit.<service>.<operation>`, see [`crate::resilience::tasks`]).
//!
//! Every instance of a service pulls from one durable consumer, `tasks-<service>` on
//! the work-queue stream `TASKS` (filter `tasks.work.<service>.>`), with explicit acks.
//! It asks for as many work items as it has free slots ([`TaskSettings::concurrency`]),
//! so nothing waits in its buffer while the ack wait runs. Each task is then run by
//! [`run`](super::task_run), which keeps it from redelivery with in-progress acks and
//! records its state with compare-and-set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::BoxHandler;
use super::task_run::{self, Worker};
use crate::error::Error;
use crate::resilience::errorlog::ErrorLog;
use crate::resilience::tasks::cancels::CancelNotices;
use crate::resilience::tasks::state::TaskStore;
use crate::subjects::{STREAM_TASKS, tasks_consumer};

/// How long a task may go without an ack or an in-progress ack before the server
/// redelivers it, unless [`super::Service::task_ack_wait`] says otherwise. A killed
/// worker's tasks come back after this.
pub const DEFAULT_TASK_ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries of one task, the first included, unless
/// [`super::Service::task_max_deliver`] says otherwise.
pub const DEFAULT_TASK_MAX_DELIVER: i64 = 5;
/// Tasks one instance runs at once unless [`super::Service::task_concurrency`] says
/// otherwise.
pub const DEFAULT_TASK_CONCURRENCY: usize = 64;
/// How long one pull waits for work; also how soon a stop is noticed between pulls.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// Work items delivered and not yet settled, over all instances of a service.
const MAX_ACK_PENDING: i64 = 10_000;

/// How a service runs its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSettings {
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub concurrency: usize,
}

impl Default for TaskSettings {
    fn default() -> TaskSettings {
        TaskSettings {
            ack_wait: DEFAULT_TASK_ACK_WAIT,
            max_deliver: DEFAULT_TASK_MAX_DELIVER,
            concurrency: DEFAULT_TASK_CONCURRENCY,
        }
    }
}

/// Where a worker's loops run and what ends them: pulling stops when `stop` fires;
/// running tasks end early (and are handed back to the stream) when `abort` fires.
pub(crate) struct Lifetime<'a> {
    pub tracker: &'a TaskTracker,
    pub stop: CancellationToken,
    pub abort: CancellationToken,
}

/// Creates the service's consumer (or brings its settings in line) and starts pulling
/// in `lifetime.tracker`.
pub(crate) async fn start(
    client: &Client,
    service: &str,
    instance: &str,
    handlers: HashMap<String, BoxHandler>,
    settings: TaskSettings,
    lifetime: Lifetime<'_>,
) -> Result<(), Error> {
    let Lifetime {
        tracker,
        stop,
        abort,
    } = lifetime;
    let consumer = ensure_consumer(client, service, &settings).await?;
    let store = TaskStore::open(client).await?;
    let cancels = CancelNotices::listen(&store, service, tracker, stop.clone()).await?;
    let worker = Arc::new(Worker {
        store,
        cancels,
        js: async_nats::jetstream::new(client.clone()),
        errors: ErrorLog::start(client),
        consumer_name: tasks_consumer(service)?,
        service: service.to_string(),
        instance: instance.to_string(),
        source: format!("urn:switchyard:svc:{service}:{instance}"),
        handlers,
        settings,
    });
    let tracker2 = tracker.clone();
    tracker.spawn(async move {
        let mut consumer = Some(consumer);
        let mut backoff = Duration::from_millis(200);
        let slots = Arc::new(Semaphore::new(worker.settings.concurrency));
        while !stop.is_cancelled() {
            let pulled = match consumer.take() {
                Some(consumer) => Ok(consumer),
                None => {
                    ensure_consumer(worker.store.client(), &worker.service, &worker.settings).await
                }
            };
            let result = match pulled {
                Ok(consumer) => pull(&worker, &consumer, &slots, &tracker2, &stop, &abort).await,
                Err(err) => Err(err),
            };
            let Err(err) = result else { break };
            tracing::warn!(%err, service = %worker.service, "task puller restarting");
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        tracing::debug!(service = %worker.service, "task puller stopped");
    });
    Ok(())
}

/// Pulls until `stop`: waits for a free slot, asks for as many work items as there are
/// free slots, and runs each in its slot.
async fn pull(
    worker: &Arc<Worker>,
    consumer: &PullConsumer,
    slots: &Arc<Semaphore>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    abort: &CancellationToken,
) -> Result<(), Error> {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            slot = slots.clone().acquire_owned() => slot.map_err(|_| Error::internal("task slots closed"))?,
        };
        let mut free = vec![first];
        while let Ok(slot) = slots.clone().try_acquire_owned() {
            free.push(slot);
        }
        let mut batch = consumer
            .batch()
            .max_messages(free.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| Error::nats("pull tasks", e))?;
        // Not cut short by `stop`: the batch ends within PULL_EXPIRES and what it
        // brings is run (a stop waits for it), rather than left to the ack wait.
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| Error::nats("receive a task", e))?;
            let Some(slot) = free.pop() else { break };
            let (worker, abort) = (worker.clone(), abort.clone());
            tracker.spawn(async move {
                task_run::run(&worker, message, &abort).await;
                drop(slot);
            });
        }
    }
}

/// The consumer's settings for `service`.
fn consumer_config(service: &str, settings: &TaskSettings) -> Result<pull::Config, Error> {
    let name = tasks_consumer(service)?;
    Ok(pull::Config {
        durable_name: Some(name.clone()),
        name: Some(name),
        description: Some(format!("Switchyard task workers of service {service}")),
        filter_subject: format!("tasks.work.{service}.>"),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    })
}

/// Creates the consumer, or updates it in place when an instance with other settings
/// (a newer version) starts: the last started instance's settings win.
async fn ensure_consumer(
    client: &Client,
    service: &str,
    settings: &TaskSettings,
) -> Result<PullConsumer, Error> {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(STREAM_TASKS.name).await.map_err(|e| {
        Error::nats(
            "open stream TASKS (created by `switchyard up` or `switchyard run`)",
            e,
        )
    })?;
    stream
        .create_consumer(consumer_config(service, settings)?)
        .await
        .map_err(|e| Error::nats(&format!("create the task consumer of {service}"), e))
}
