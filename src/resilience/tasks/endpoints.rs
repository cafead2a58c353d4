//! `tasks.get.<id>` and `tasks.cancel.<id>`.
//!
//! A get answers the task's state (JSON in KV `tasks`) in the caller's codec, 404 for
//! an unknown id; with `{"wait_ms": N}` it first waits for the task to end
//! ([`super::wait`]). A cancel moves a task that is not final to `canceled` with
//! compare-and-set, announces it to the service's workers on
//! `tasks.canceled.<service>` and publishes it on `tasks.events.<id>`; a worker that
//! has not started it skips it, one running it drops the handler and discards its
//! result. A
//! task already completed, failed or canceled is left as it is, and the answer is its
//! state, so the caller sees which happened first.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::state::{Phase, TaskState, TaskStore, Transition};
use super::submit::SOURCE;
use super::wait;
use crate::component::responder::{Reply, Request};
use crate::error::Error;
use crate::subjects::{self, headers as h};

/// Which request of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Get,
    Cancel,
}

/// What the endpoints share: the store, and for waiting gets the instance's stop and
/// the room for waiters.
#[derive(Clone)]
pub struct Endpoints {
    pub store: TaskStore,
    pub stop: CancellationToken,
    pub waiters: Arc<Semaphore>,
}

impl Endpoints {
    pub async fn handle(&self, action: Action, request: Request) -> Result<Reply, Error> {
        let id = parse_id(request.subject.as_str(), action)?;
        let state = match action {
            Action::Get => self.get(id, &request).await?,
            Action::Cancel => cancel(&self.store, id, &request).await?,
        };
        Ok(Reply::to(&request, &state))
    }

    /// The state now, or once final when the caller asked to wait and there is room
    /// for one more waiter (otherwise at once: the caller asks again).
    async fn get(&self, id: &str, request: &Request) -> Result<TaskState, Error> {
        if let Some(wait) = wait::wait_of(request)?
            && let Ok(_waiting) = self.waiters.clone().try_acquire_owned()
        {
            return wait::until_final(&self.store, id, wait, &self.stop).await;
        }
        Ok(self
            .store
            .get(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no task {id}")))?
            .0)
    }
}

async fn cancel(store: &TaskStore, id: &str, request: &Request) -> Result<TaskState, Error> {
    let canceled = store
        .transition(id, None, |state| {
            (!state.state.is_final()).then(|| state.to(Phase::Canceled))
        })
        .await?;
    match canceled {
        Transition::Applied(state, revision, json) => {
            // The workers first: one that has not started it yet then skips it
            // without reading (see `cancels`).
            notify_workers(store, &state, revision).await;
            store
                .publish_event(Some(&request.meta), SOURCE, &state, json)
                .await;
            Ok(state)
        }
        Transition::Declined(state) => Ok(state),
    }
}

/// Publishes the cancel notice on `tasks.canceled.<service>`: the id, and the
/// revision of the `canceled` state. Core NATS: a worker that may have missed it
/// reads the state before running (see `cancels`).
async fn notify_workers(store: &TaskStore, state: &TaskState, revision: u64) {
    let sent = async {
        let subject = subjects::tasks_canceled(&state.service)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(h::TASK_REVISION, revision.to_string());
        store
            .client()
            .publish_with_headers(subject, headers, state.id.clone().into())
            .await?;
        Ok::<_, Error>(())
    };
    if let Err(err) = sent.await {
        tracing::debug!(%err, task = %state.id, "cannot publish a cancel notice");
    }
}

/// The id of `tasks.get.<id>` or `tasks.cancel.<id>`: a UUID, as submits create.
fn parse_id(subject: &str, action: Action) -> Result<&str, Error> {
    let prefix = match action {
        Action::Get => "tasks.get.",
        Action::Cancel => "tasks.cancel.",
    };
    let id = subject.strip_prefix(prefix).unwrap_or_default();
    match uuid::Uuid::parse_str(id) {
        Ok(_) if !id.contains('.') => Ok(id),
        _ => Err(Error::invalid_input(format!(
            "subject {subject:?} is not {prefix}<task id> with a UUID task id"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn task_ids_are_uuids() {
        let id = uuid::Uuid::now_v7().to_string();
        assert_eq!(
            parse_id(&format!("tasks.get.{id}"), Action::Get).unwrap(),
            id
        );
        for bad in ["tasks.get.", "tasks.get.nope", "tasks.cancel.x"] {
            let err = parse_id(bad, Action::Get).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        }
    }
}
