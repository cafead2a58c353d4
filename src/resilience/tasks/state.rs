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
    /// What the handler last reported while running ([`crate::sdk::progress`]); only
    /// in `progress` events, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<serde_json::Value>,
}

impl TaskState {
    /// The state a submit stores. Its times are the time in the id (a UUID v7, ms) when
    /// it has one, so a worker given the id and the revision rebuilds exactly what is
    /// stored without reading it (see [`TaskState::as_submitted`]).
    pub fn submitted(id: &str, service: &str, operation: &str) -> TaskState {
        let at = id_time_rfc3339(id).unwrap_or_else(now);
        TaskState {
            id: id.to_string(),
            service: service.to_string(),
            operation: operation.to_string(),
            state: Phase::Submitted,
            submitted: at.clone(),
            updated: at,
            attempts: 0,
            worker: None,
            result: None,
            error: None,
            progress: None,
        }
    }

    /// What a submit stored for `id`, rebuilt from the work item alone; `None` when the
    /// id carries no time (not a UUID v7), so the submit's times are not known.
    pub fn as_submitted(id: &str, service: &str, operation: &str) -> Option<TaskState> {
        id_time(id).map(|_| TaskState::submitted(id, service, operation))
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

/// The time in a task id (a UUID v7: milliseconds since the epoch); `None` for
/// anything else.
pub fn id_time(id: &str) -> Option<std::time::SystemTime> {
    let uuid = uuid::Uuid::parse_str(id).ok()?;
    if uuid.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
}

/// [`id_time`] in RFC 3339.
fn id_time_rfc3339(id: &str) -> Option<String> {
    let at = time::OffsetDateTime::from(id_time(id)?);
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// How a [`TaskStore::transition`] ended.
#[derive(Debug, Clone)]
pub enum Transition {
    /// Written: the new state, its revision and its JSON as stored (which is also the
    /// event's payload: encoded once).
    Applied(TaskState, u64, Bytes),
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
            let json = next.to_json()?;
            match self.kv.update(id, json.clone(), revision).await {
                Ok(revision) => {
                    m::task_transition(&next.service, &next.operation, next.state.as_str());
                    return Ok(Transition::Applied(next, revision, json));
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
    /// `tasks.get.<id>`, which is the truth. `json` is the state as stored.
    pub async fn publish_event(
        &self,
        cause: Option<&Meta>,
        source: &str,
        state: &TaskState,
        json: Bytes,
    ) {
        self.publish_event_of(cause, source, state.state.as_str(), state, json)
            .await;
    }

    /// [`TaskStore::publish_event`] with `ce-type` `io.switchyard.task.<event>`: a
    /// state change, or `progress` (a handler's report while it runs).
    pub async fn publish_event_of(
        &self,
        cause: Option<&Meta>,
        source: &str,
        event: &str,
        state: &TaskState,
        json: Bytes,
    ) {
        let kind = format!("{EVENT_TYPE_PREFIX}{event}");
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
                payload: json,
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
    fn a_submitted_state_is_rebuilt_from_its_id_alone() {
        let id = uuid::Uuid::now_v7().to_string();
        let stored = TaskState::submitted(&id, "slow", "wait");
        assert_eq!(stored.submitted, stored.updated);
        let millis = uuid::Uuid::parse_str(&id)
            .unwrap()
            .get_timestamp()
            .unwrap()
            .to_unix();
        let at = time::OffsetDateTime::parse(
            &stored.submitted,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(at.unix_timestamp(), millis.0 as i64, "{}", stored.submitted);
        assert_eq!(
            TaskState::as_submitted(&id, "slow", "wait")
                .unwrap()
                .to_json()
                .unwrap(),
            stored.to_json().unwrap()
        );
        // A v4 id has no time: nothing to rebuild it from.
        let v4 = uuid::Uuid::new_v4().to_string();
        assert_eq!(TaskState::as_submitted(&v4, "slow", "wait"), None);
        assert_eq!(TaskState::as_submitted("nope", "slow", "wait"), None);
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
