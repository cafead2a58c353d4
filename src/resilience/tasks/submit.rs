//! `tasks.submit.<service>.<operation>`: accept a task and answer at once.
//!
//! The task is stored `submitted` in KV `tasks` (key = a new UUID v7), then its work
//! item is published with ack to `tasks.work.<service>.<operation>` (stream `TASKS`)
//! carrying the caller's headers (minus JetStream publish controls) and payload
//! unchanged plus `Nats-Msg-Id` = the task id (a retried publish is stored once),
//! `Switchyard-Task-Id` and `Switchyard-Task-Revision` (the state's KV revision, from
//! which the worker records the outcome without reading the state first). Only when
//! both are acknowledged does the caller get `{"id","state":"submitted"}`: an answered
//! submit is durable.

use std::time::Duration;

use async_nats::jetstream::Context as JetStream;
use serde::{Deserialize, Serialize};

use super::state::{Phase, TaskState, TaskStore};
use crate::component::responder::{Reply, Request};
use crate::envelope::{Outgoing, check_size, without_publish_controls};
use crate::error::Error;
use crate::integration::registry::view::{Lookup, RegistryView};
use crate::observability::metrics as m;
use crate::subjects::{self, headers as h};

/// `ce-source` of what the tasks component publishes.
pub const SOURCE: &str = "urn:switchyard:tasks";
/// Publish attempts for a work item whose stream is briefly unavailable (a leader
/// election answers "no responders"); the same `Nats-Msg-Id` keeps it single.
const PUBLISH_ATTEMPTS: u32 = 5;

/// The answer to a submit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    pub id: String,
    pub state: Phase,
}

/// What a submit needs.
#[derive(Clone)]
pub struct Submitter {
    pub store: TaskStore,
    pub js: JetStream,
    pub view: RegistryView,
}

impl Submitter {
    pub async fn handle(&self, request: Request) -> Result<Reply, Error> {
        let (service, operation) = parse_subject(request.subject.as_str())?;
        self.check_routable(service, operation)?;
        let work_subject = subjects::tasks_work(service, operation)?;
        let id = uuid::Uuid::now_v7().to_string();
        // The caller's headers as they came (no re-encoding, nothing invented: the
        // worker reads them as the caller wrote them), minus JetStream publish
        // controls, which would act on the work item.
        let mut headers = without_publish_controls(&request.headers);
        // A caller without trace context gets the one its answer carries, so the
        // worker's run and its events continue that trace.
        if request.headers.get(h::TRACEPARENT).is_none() {
            headers.insert(h::TRACEPARENT, request.meta.traceparent.as_str());
        }
        headers.insert(h::NATS_MSG_ID, id.as_str());
        headers.insert(h::TASK_ID, id.as_str());
        // The largest revision it can carry, so the size check holds for the real one.
        headers.insert(h::TASK_REVISION, u64::MAX.to_string());
        let mut work = Outgoing {
            headers,
            payload: request.payload.clone(),
        };
        check_size(self.store.client(), &work)?;

        // The state first, then the work item carrying the state's revision: the
        // worker records the outcome by compare-and-set from it without reading the
        // state first. A submit waits for two writes one after the other.
        let state = TaskState::submitted(&id, service, operation);
        let revision = self.store.create(&state).await?;
        work.headers.insert(h::TASK_REVISION, revision.to_string());
        if let Err(err) = self.publish(&work_subject, work).await {
            // Nothing will ever work on it: do not leave a task that looks pending. A
            // work item stored after all (its ack lost) finds no state and is dropped.
            let _ = self.store.kv.delete(&id).await;
            return Err(err);
        }
        m::task_transition(service, operation, Phase::Submitted.as_str());
        // No `submitted` event: the answer is it. Nobody can be subscribed to
        // `tasks.events.<id>` yet, since nobody knows the id before this answer.
        Ok(Reply::to(
            &request,
            &Submitted {
                id,
                state: Phase::Submitted,
            },
        ))
    }

    /// 404 for a service never registered, or one whose live instances do not list
    /// the operation. A registered service with no live instance is accepted: the
    /// task waits in the stream for a worker, which is what tasks are for.
    fn check_routable(&self, service: &str, operation: &str) -> Result<(), Error> {
        match self.view.lookup(service) {
            Lookup::Unknown => Err(Error::not_found(format!(
                "service {service:?} is not registered"
            ))),
            Lookup::Live(_) if !self.view.serves(service, operation) => Err(Error::not_found(
                format!("service {service:?} has no operation {operation:?}"),
            )),
            _ => Ok(()),
        }
    }

    async fn publish(&self, subject: &str, work: Outgoing) -> Result<(), Error> {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=PUBLISH_ATTEMPTS {
            let stored = match self
                .js
                .publish_with_headers(
                    subject.to_string(),
                    work.headers.clone(),
                    work.payload.clone(),
                )
                .await
            {
                Ok(pending) => pending.await.map(|_| ()),
                Err(err) => Err(err),
            };
            match stored.map_err(Error::from) {
                Ok(()) => return Ok(()),
                Err(err) if err.kind().is_retryable() && attempt < PUBLISH_ATTEMPTS => {
                    tracing::debug!(%err, attempt, "work item not stored yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(err) => return Err(err),
            }
        }
        Err(Error::unavailable("the work item could not be stored"))
    }
}

/// `tasks.submit.<service>.<operation>` → (service, operation), tokens validated.
pub fn parse_subject(subject: &str) -> Result<(&str, &str), Error> {
    let mut tokens = subject.split('.');
    match (
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
    ) {
        (Some("tasks"), Some("submit"), Some(service), Some(operation), None) => {
            subjects::validate_token("service", service)?;
            subjects::validate_token("operation", operation)?;
            Ok((service, operation))
        }
        _ => Err(Error::invalid_input(format!(
            "subject {subject:?} is not tasks.submit.<service>.<operation>"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn submit_subjects_name_a_service_and_an_operation() {
        assert_eq!(
            parse_subject("tasks.submit.slow.wait").unwrap(),
            ("slow", "wait")
        );
        for bad in [
            "tasks.submit.slow",
            "tasks.submit.slow.wait.more",
            "tasks.get.slow.wait",
        ] {
            let err = parse_subject(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        }
    }
}
