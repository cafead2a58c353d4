//! Running one task a worker pulled, from the first look at its state to its outcome.
//!
//! 1. Know the state. On its first delivery a work item carries the revision of the
//!    `submitted` state its submit stored (`Switchyard-Task-Revision`), and that state
//!    is rebuilt from the work item alone: no read, unless a cancel of the task may
//!    have been announced (see [`cancels`]). Anything else (a redelivery, a work item
//!    without a revision, a task that may be canceled) reads the state: a task already
//!    final (completed by an earlier delivery, failed, canceled) is acked and dropped,
//!    which is what makes a redelivered task complete once.
//! 2. Run the operation's handler on the work item's payload, in its codec. Every tick
//!    (a third of the ack wait, at most a second) sends an in-progress ack, so a long
//!    agent step is not redelivered. The first tick records the task `working` with
//!    compare-and-set; later ones read it. A task found final meanwhile (canceled) has
//!    its handler dropped. A task done within the first tick never writes `working`:
//!    one write per task on the fast path, the outcome.
//! 3. Record the outcome and settle the work item: [`task_outcome`].
//!
//! What this file touches: KV `tasks` (reads; `working` by compare-and-set through
//! [`Attempt::record`]), `tasks.events.<id>` ([`Attempt::publish`]) and the work
//! item's in-progress acks. It settles the work item itself only when the handler does
//! not run to an outcome (task already final or unknown, state unreadable, canceled
//! while running, instance aborting); every other settlement, the error log and the
//! dead letters are [`task_outcome`]'s.
//!
//! [`cancels`]: crate::resilience::tasks::cancels
//! [`task_outcome`]: super::task_outcome

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{AckKind, Context as JetStream, Message};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::handler::BoxHandler;
use super::progress;
use super::task_outcome::{
    STORE_RETRY, complete, fail, give_up, report, result_json, settle, working_where,
};
use super::tasks::TaskSettings;
use crate::envelope::Meta;
use crate::error::Error;
use crate::observability::metrics as m;
use crate::resilience::errorlog::ErrorLog;
use crate::resilience::tasks::cancels::CancelNotices;
use crate::resilience::tasks::state::{Phase, TaskState, TaskStore, Transition};
use crate::subjects::headers as h;

/// Longest pause between two checks of a running task (in-progress ack, canceled?).
const MAX_TICK: Duration = Duration::from_secs(1);
/// Delay before a work item whose state is not stored yet comes back.
const STATE_PENDING: Duration = Duration::from_millis(100);

/// What every task run of one service instance shares.
pub(crate) struct Worker {
    pub store: TaskStore,
    /// Cancels heard of: a task that may have been canceled is read before it runs.
    pub cancels: CancelNotices,
    pub js: JetStream,
    pub errors: ErrorLog,
    pub consumer_name: String,
    pub service: String,
    pub instance: String,
    /// `ce-source` of the events this worker publishes.
    pub source: String,
    pub handlers: HashMap<String, BoxHandler>,
    pub settings: TaskSettings,
}

/// How running the handler ended.
enum Ran {
    Finished(Result<Vec<u8>, Error>),
    /// Canceled while running: the handler was dropped.
    Canceled,
    /// The instance is stopping past its stop timeout: hand the task back.
    Aborted,
}

/// Runs one work item to its settlement. Never panics, never leaves it unsettled
/// except by dying.
pub(crate) async fn run(worker: &Worker, message: Message, abort: &CancellationToken) {
    let no_headers = HeaderMap::new();
    let headers = message.headers.as_ref().unwrap_or(&no_headers);
    let (delivered, seq) = message
        .info()
        .map(|i| (i.delivered, i.stream_sequence))
        .unwrap_or((1, 0));
    let Some(id) = headers.get(h::TASK_ID).map(|v| v.as_str().to_string()) else {
        // Not published by the submitter: nothing to record it against.
        let err = Error::invalid_input("work item without Switchyard-Task-Id");
        let stored = give_up(worker, &message, headers, delivered, seq, &err).await;
        let settled = match stored {
            true => AckKind::Term,
            false => AckKind::Nak(Some(STORE_RETRY)),
        };
        settle(&message, settled).await;
        return;
    };
    let mut known = match as_submitted(worker, &message, headers, &id, delivered) {
        // No read: the outcome is written by compare-and-set from the submit's
        // revision, and only a failed one reads (see `Attempt::record`).
        Some(known) => known,
        None => match claim(worker, &message, headers, &id, delivered).await {
            Some(known) => known,
            None => return,
        },
    };
    let operation = known.0.operation.clone();
    let meta = Meta::from_headers(Some(headers), "io.switchyard.task");
    let attempt = Attempt {
        worker,
        id: id.clone(),
        delivered,
        // The task's events follow up on its work item: same conversation and trace.
        cause: meta.as_ref().ok().cloned(),
    };

    let started = Instant::now();
    let ran = match (meta, worker.handlers.get(&operation)) {
        (Err(err), _) => Ran::Finished(Err(err)),
        // A mixed deployment: another instance may serve it.
        (Ok(_), None) => Ran::Finished(Err(Error::unavailable(format!(
            "this instance of {} has no operation {operation:?}",
            worker.service
        )))),
        (Ok(meta), Some(handler)) => {
            // The handler may report progress (`sdk::progress`) as this task.
            let running = progress::Running {
                store: worker.store.clone(),
                source: worker.source.clone(),
                state: attempt.next(&known.0, Phase::Working),
                cause: attempt.cause.clone(),
            };
            let call = Box::pin(progress::scope(
                running,
                handler(meta, message.payload.clone()),
            ));
            run_handler(&attempt, &message, &mut known, call, abort).await
        }
    };
    m::task_run(&worker.service, &operation, started.elapsed());
    match ran {
        Ran::Finished(Ok(answer)) => match result_json(worker, &answer) {
            Ok(result) => complete(&attempt, &message, known, result).await,
            Err(err) => fail(&attempt, &message, headers, known, seq, err).await,
        },
        Ran::Finished(Err(err)) => fail(&attempt, &message, headers, known, seq, err).await,
        Ran::Canceled => settle(&message, AckKind::Ack).await,
        Ran::Aborted => settle(&message, AckKind::Nak(None)).await,
    }
}

/// The state the submit stored, rebuilt from the work item alone, on its first
/// delivery when it carries the state's revision. A redelivery reads instead: an
/// earlier delivery may have completed it, and it must not run again.
fn as_submitted(
    worker: &Worker,
    message: &Message,
    headers: &HeaderMap,
    id: &str,
    delivered: i64,
) -> Option<(TaskState, u64)> {
    if delivered != 1 {
        return None;
    }
    let revision = headers.get(h::TASK_REVISION)?.as_str().parse().ok()?;
    if !worker.cancels.unheard(id, revision) {
        return None;
    }
    let operation = message
        .subject
        .as_str()
        .strip_prefix("tasks.work.")?
        .strip_prefix(worker.service.as_str())?
        .strip_prefix('.')
        .filter(|op| !op.contains('.'))?;
    TaskState::as_submitted(id, &worker.service, operation).map(|state| (state, revision))
}

/// Reads the state before running: a task already final (completed by an earlier
/// delivery, failed, canceled) is acked and dropped, which is what makes a redelivered
/// task complete once. `None` when the work item was settled here.
async fn claim(
    worker: &Worker,
    message: &Message,
    headers: &HeaderMap,
    id: &str,
    delivered: i64,
) -> Option<(TaskState, u64)> {
    match worker.store.get(id).await {
        Ok(Some((state, _))) if state.state.is_final() => {
            tracing::debug!(task = %id, state = state.state.as_str(), "task already final; dropped");
            settle(message, AckKind::Ack).await;
            None
        }
        Ok(Some(found)) => Some(found),
        // The submit stores the state before the work item: none means the submit
        // failed after all (or an older submitter wrote both at once and the state is
        // still on its way: it gets a few deliveries).
        Ok(None)
            if delivered < worker.settings.max_deliver
                && headers.get(h::TASK_REVISION).is_none() =>
        {
            settle(message, AckKind::Nak(Some(STATE_PENDING))).await;
            None
        }
        Ok(None) => {
            tracing::warn!(task = %id, "work item of an unknown task; dropped");
            settle(message, AckKind::Ack).await;
            None
        }
        Err(err) => {
            report(worker, &working_where(message, headers), &err);
            settle(message, AckKind::Nak(Some(STORE_RETRY))).await;
            None
        }
    }
}

/// One delivery of one task, as this worker runs it.
pub(super) struct Attempt<'a> {
    pub(super) worker: &'a Worker,
    id: String,
    pub(super) delivered: i64,
    /// The work item's attributes, which the task's events follow up on.
    cause: Option<Meta>,
}

impl Attempt<'_> {
    /// Publishes a state this attempt recorded on `tasks.events.<id>`.
    pub(super) async fn publish(&self, state: &TaskState, json: bytes::Bytes) {
        let worker = self.worker;
        worker
            .store
            .publish_event(self.cause.as_ref(), &worker.source, state, json)
            .await;
    }

    /// `state` moved to `phase` by this attempt.
    pub(super) fn next(&self, state: &TaskState, phase: Phase) -> TaskState {
        TaskState {
            attempts: self.delivered.max(0) as u64,
            worker: Some(self.worker.instance.clone()),
            ..state.to(phase)
        }
    }

    /// Records `next(state)` unless the task is final by now.
    pub(super) async fn record(
        &self,
        known: (TaskState, u64),
        next: impl Fn(&TaskState) -> TaskState,
    ) -> Result<Transition, Error> {
        self.worker
            .store
            .transition(&self.id, Some(known), |state| {
                (!state.state.is_final()).then(|| next(state))
            })
            .await
    }
}

/// Polls the handler; every tick sends an in-progress ack and looks at the task. The
/// first tick records it `working` (so only tasks that run that long write it); later
/// ones read it. Either way a task found final (canceled, or completed by another
/// delivery) has its handler dropped.
async fn run_handler(
    attempt: &Attempt<'_>,
    message: &Message,
    known: &mut (TaskState, u64),
    call: futures::future::BoxFuture<'static, Result<Vec<u8>, Error>>,
    abort: &CancellationToken,
) -> Ran {
    let (worker, id) = (attempt.worker, attempt.id.as_str());
    let mut call = AssertUnwindSafe(call).catch_unwind();
    // A handler that answers at once needs no timer: one less per task on the fast
    // path (a timer is a lock on the runtime's timer wheel, set and then cancelled).
    if let Some(outcome) = (&mut call).now_or_never() {
        return finished(id, outcome);
    }
    let tick = (worker.settings.ack_wait / 3).min(MAX_TICK);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    let mut recorded_working = false;
    loop {
        tokio::select! {
            outcome = &mut call => return finished(id, outcome),
            _ = abort.cancelled() => return Ran::Aborted,
            _ = ticks.tick() => {
                if let Err(err) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(%err, task = %id, "in-progress ack not sent");
                }
                let final_state = if recorded_working {
                    match worker.store.get(id).await {
                        Ok(Some((state, _))) => state.state.is_final().then_some(state),
                        _ => None,
                    }
                } else {
                    match attempt.record(known.clone(), |s| attempt.next(s, Phase::Working)).await {
                        Ok(Transition::Applied(state, revision, json)) => {
                            recorded_working = true;
                            attempt.publish(&state, json).await;
                            *known = (state, revision);
                            None
                        }
                        Ok(Transition::Declined(state)) => Some(state),
                        Err(err) => {
                            tracing::debug!(%err, task = %id, "working not recorded yet");
                            None
                        }
                    }
                };
                if let Some(state) = final_state {
                    tracing::info!(task = %id, state = state.state.as_str(), "task final while running; handler dropped");
                    return Ran::Canceled;
                }
            }
        }
    }
}

fn finished(id: &str, outcome: std::thread::Result<Result<Vec<u8>, Error>>) -> Ran {
    Ran::Finished(outcome.unwrap_or_else(|_| {
        tracing::error!(task = %id, "task handler panicked");
        Err(Error::internal("the handler panicked"))
    }))
}
