//! A task's state, as kept in KV `tasks` (key = task id, JSON) and published on
//! `tasks.events.<id>` at every change, and the compare-and-set that moves it on.
//!
//! Every change goes through [`TaskStore::transition`]: read (or take the revision the
//! caller already knows), compute the next state, write it only if the revision is
//! still the one read. Two workers racing on one task (a redelivery while the first is
//! still alive) or a cancel racing a completion therefore never both win: the loser
//! re-reads, sees the winner's state and declines.

use async_nats::Client;
use async_nats::jetstream::kv::{Store, UpdateErrorKind};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::component::responder::ErrorDetail;
use crate::envelope::{ContentType, Meta, Outgoing, check_size, now_rfc3339 as now};
use crate::error::{Error, ErrorKind};
use crate::observability::metrics as m;
use crate::subjects::{self, headers as h};

/// `ce-type` of task events: `io.switchyard.task.<state>`.
pub const EVENT_TYPE_PREFIX: &str = "io.switchyard.task.";
/// Conflicting writes tolerated before a transition gives up (each one means another
/// writer changed the task meanwhile; a handful is already unusual).
const MAX_CONFLICTS: usize = 16;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Submitted,
    Working,
    Completed,
    Failed,
    Canceled,
}

impl Phase {
    /// Completed, failed and canceled never change again.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Canceled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Submitted => "submitted",
            Phase::Working => "working",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Canceled => "canceled",
        }
    }
}

/// One task, readable with `nats kv get tasks <id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    pub id: String,
    pub service: String,
    pub operation: String,
    pub state: Phase,
    /// RFC 3339.
    pub submitted: String,
    /// RFC 3339, the last change.
    pub updated: String,
    /// Deliveries to a worker so far (a redelivered task counts each).
    #[serde(default)]
    pub attempts: u64,
    /// The instance id of the worker that last took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The handler's answer, as JSON (a MessagePack answer is shown as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why it failed; on a task still working, why its last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

impl TaskState {
    pub fn submitted(id: &str, service: &str, operation: &str) -> TaskState {
        let now = now();
        TaskState {
            id: id.to_string(),
            service: service.to_string(),
            operation: operation.to_string(),
            state: Phase::Submitted,
            submitted: now.clone(),
            updated: now,
            attempts: 0,
            worker: None,
            result: None,
            error: None,
        }
    }

    /// The same task moved to `phase`, stamped now.
    pub fn to(&self, phase: Phase) -> TaskState {
        TaskState {
            state: phase,
            updated: now(),
            ..self.clone()
        }
    }

    pub fn to_json(&self) -> Result<Bytes, Error> {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|e| Error::internal(format!("cannot encode task state: {e}")))
    }

    pub fn from_json(value: &[u8]) -> Result<TaskState, Error> {
        serde_json::from_slice(value)
            .map_err(|e| Error::internal(format!("unreadable task state in KV tasks: {e}")))
    }
}

/// How a [`TaskStore::transition`] ended.
#[derive(Debug, Clone)]
pub enum Transition {
    /// Written: the new state and its revision.
    Applied(TaskState, u64),
    /// The change declined on the state it found (already final, say).
    Declined(TaskState),
}

/// KV `tasks` and the event subject, for the submitter, the endpoints and the workers.
#[derive(Clone)]
pub struct TaskStore {
    pub kv: Store,
    client: Client,
}

impl TaskStore {
    pub async fn open(client: &Client) -> Result<TaskStore, Error> {
        let js = async_nats::jetstream::new(client.clone());
        let kv = js
            .get_key_value(subjects::BUCKET_TASKS)
            .await
            .map_err(|e| {
                Error::nats(
                    "open KV tasks (created by `switchyard up` or `switchyard run`)",
                    e,
                )
            })?;
        Ok(TaskStore {
            kv,
            client: client.clone(),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Stores a new task; its revision.
    pub async fn create(&self, state: &TaskState) -> Result<u64, Error> {
        self.kv
            .create(&state.id, state.to_json()?)
            .await
            .map_err(|e| Error::nats("store the new task in KV tasks", e))
    }

    /// The task and its revision; `None` for an unknown id.
    pub async fn get(&self, id: &str) -> Result<Option<(TaskState, u64)>, Error> {
        let entry = self
            .kv
            .entry(id)
            .await
            .map_err(|e| Error::nats("read KV tasks", e))?;
        match entry {
            Some(entry) if !entry.value.is_empty() => {
                Ok(Some((TaskState::from_json(&entry.value)?, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Applies `change` with compare-and-set. `known` is a state and revision the caller
    /// already holds (tried first, no read); on a conflict the task is re-read and
    /// `change` asked again. `change` returning `None` declines. An unknown task is
    /// `NotFound`.
    pub async fn transition<F>(
        &self,
        id: &str,
        known: Option<(TaskState, u64)>,
        mut change: F,
    ) -> Result<Transition, Error>
    where
        F: FnMut(&TaskState) -> Option<TaskState>,
    {
        let mut current = known;
        for _ in 0..MAX_CONFLICTS {
            let (state, revision) = match current.take() {
                Some(known) => known,
                None => self
                    .get(id)
                    .await?
                    .ok_or_else(|| Error::not_found(format!("no task {id}")))?,
            };
            let Some(next) = change(&state) else {
                return Ok(Transition::Declined(state));
            };
            match self.kv.update(id, next.to_json()?, revision).await {
                Ok(revision) => {
                    m::task_transition(&next.service, &next.operation, next.state.as_str());
                    return Ok(Transition::Applied(next, revision));
                }
                Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(err) => return Err(Error::nats("update KV tasks", err)),
            }
        }
        Err(Error::new(
            ErrorKind::Transient,
            format!("task {id} kept changing under {MAX_CONFLICTS} updates"),
        ))
    }

    /// Publishes `state` on `tasks.events.<id>` (JSON, `ce-type`
    /// `io.switchyard.task.<state>`). Core NATS: a subscriber that missed it reads
    /// `tasks.get.<id>`, which is the truth.
    pub async fn publish_event(&self, cause: Option<&Meta>, source: &str, state: &TaskState) {
        let kind = format!("{EVENT_TYPE_PREFIX}{}", state.state.as_str());
        let meta = match cause {
            Some(cause) => cause.follow_up(source, kind),
            None => Meta::new(source, kind),
        }
        .with_content_type(ContentType::Json);
        let sent = async {
            let subject = subjects::tasks_events(&state.id)?;
            let mut headers = meta.to_headers();
            headers.insert(h::TASK_ID, state.id.as_str());
            let event = Outgoing {
                headers,
                payload: state.to_json()?,
            };
            check_size(&self.client, &event)?;
            self.client
                .publish_with_headers(subject, event.headers, event.payload)
                .await?;
            Ok::<_, Error>(())
        };
        if let Err(err) = sent.await {
            tracing::debug!(%err, task = %state.id, "cannot publish a task event");
        }
    }
}

/// The error as stored in a task's state.
pub fn error_detail(err: &Error) -> ErrorDetail {
    ErrorDetail {
        kind: err.kind(),
        code: err.code(),
        message: err.header_text(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_reads_back_as_the_json_people_see() {
        let mut state = TaskState::submitted("0192f0c2", "slow", "wait").to(Phase::Completed);
        state.result = Some(serde_json::json!({"ms": 100}));
        let json = state.to_json().unwrap();
        let text = std::str::from_utf8(&json).unwrap();
        assert!(text.contains("\"state\":\"completed\""), "{text}");
        assert!(text.contains("\"result\":{\"ms\":100}"), "{text}");
        assert!(!text.contains("\"error\""), "{text}");
        assert_eq!(TaskState::from_json(&json).unwrap(), state);
    }

    #[test]
    fn only_completed_failed_and_canceled_are_final() {
        assert!(!Phase::Submitted.is_final());
        assert!(!Phase::Working.is_final());
        for phase in [Phase::Completed, Phase::Failed, Phase::Canceled] {
            assert!(phase.is_final(), "{}", phase.as_str());
        }
    }
}
