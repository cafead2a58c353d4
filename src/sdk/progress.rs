//! Progress from a running task: a handler that runs as a durable task calls
//! [`progress`] with anything serializable ("step 3 of 10", a partial answer), and
//! whoever follows `tasks.events.<id>` sees it at once as a `progress` event: the
//! task's state (`working`) with the report in `progress`.
//!
//! The handler needs no extra argument: the task worker runs it within a scope that
//! knows the task (a tokio task-local), so the same operation serves plain requests,
//! where [`progress`] does nothing and says so. Reports are core NATS events, like
//! every task event, and are not stored: `tasks.get.<id>` shows the state, a listener
//! sees the reports. A handler that spawns tasks of its own reports from the task that
//! runs it, not from those.

use std::future::Future;

use serde::Serialize;

use crate::envelope::Meta;
use crate::resilience::tasks::state::{Phase, TaskState, TaskStore};

tokio::task_local! {
    static RUNNING: Running;
}

/// The task a handler runs for, and where its events go.
pub(super) struct Running {
    pub store: TaskStore,
    /// `ce-source` of the worker's events.
    pub source: String,
    /// The task as `working` under this attempt; reports are this plus `progress`.
    pub state: TaskState,
    /// The work item's attributes: reports follow up on them (same conversation).
    pub cause: Option<Meta>,
}

/// Runs `handler` as the task `running` describes, so that it may report progress.
pub(super) fn scope<F: Future>(running: Running, handler: F) -> impl Future<Output = F::Output> {
    RUNNING.scope(running, handler)
}

/// Publishes `report` as the progress of the task this handler runs for, on
/// `tasks.events.<id>` (`ce-type` `io.switchyard.task.progress`). `false` when the
/// handler is not running as a task (a plain request) or the report could not be
/// encoded; a report lost on the way is not retried (events are core NATS).
pub async fn progress<T: Serialize>(report: &T) -> bool {
    let Ok(report) = serde_json::to_value(report) else {
        return false;
    };
    let Ok((store, source, state, cause)) = RUNNING.try_with(|running| {
        (
            running.store.clone(),
            running.source.clone(),
            TaskState {
                progress: Some(report),
                // Stamped now: `updated` says when the report was made.
                ..running.state.to(Phase::Working)
            },
            running.cause.clone(),
        )
    }) else {
        return false;
    };
    let Ok(json) = state.to_json() else {
        return false;
    };
    store
        .publish_event_of(cause.as_ref(), &source, "progress", &state, json)
        .await;
    true
}
