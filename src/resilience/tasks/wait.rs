//! Waiting for a task to end: `tasks.get.<id>` with `{"wait_ms": N}` (HTTP `GET
//! /v1/tasks/<id>?wait_ms=N`) answers as soon as the task is completed, failed or
//! canceled, or after N ms with its state then. A client gets its result with one
//! request instead of a subscription that may start after the task ended.
//!
//! The wait listens on `tasks.events.<id>` (subscribed before the state is read, so no
//! change between the read and the wait is missed) and reads KV `tasks` again when it
//! ends without a final event: KV is the truth, and an event can be lost (a worker
//! killed between its state write and its publish). It never outlasts the caller's
//! deadline (`Switchyard-Timeout-Ms`), [`MAX_WAIT`] or the instance's graceful stop,
//! and at most [`MAX_WAITERS`] requests wait at once per instance; past that a get
//! answers at once, as without a wait.

use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::state::{TaskState, TaskStore};
use crate::component::responder::Request;
use crate::envelope::caller_budget;
use crate::error::Error;
use crate::subjects;

/// The longest wait a get may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Gets waiting at once per instance (each holds one core subscription).
pub const MAX_WAITERS: usize = 1024;
/// Kept from the caller's deadline for the answer's way back.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// The body of `tasks.get.<id>`: empty, or these options in the caller's codec.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetOptions {
    #[serde(default)]
    wait_ms: u64,
}

/// How long a get may wait for the task to end: `None` to answer at once.
pub fn wait_of(request: &Request) -> Result<Option<Duration>, Error> {
    if request.payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // `null` (what some clients send for "no body") is no options too.
    let options: Option<GetOptions> = request.decode().map_err(|e| {
        Error::invalid_input(format!(
            "the body of tasks.get.<id> is empty or {{\"wait_ms\": N}} (N at most {}): {}",
            MAX_WAIT.as_millis(),
            e.message()
        ))
    })?;
    let wait_ms = options.unwrap_or_default().wait_ms;
    let wait = Duration::from_millis(wait_ms);
    if wait > MAX_WAIT {
        return Err(Error::invalid_input(format!(
            "wait_ms {wait_ms} is more than the {} allowed",
            MAX_WAIT.as_millis()
        )));
    }
    let wait = match caller_budget(&request.headers)? {
        Some(deadline) => wait.min(deadline.saturating_sub(DEADLINE_MARGIN)),
        None => wait,
    };
    Ok((!wait.is_zero()).then_some(wait))
}

/// The task's state once it is final, or after `wait` (or at `stop`) as it is then.
/// `NotFound` for an unknown id.
pub async fn until_final(
    store: &TaskStore,
    id: &str,
    wait: Duration,
    stop: &CancellationToken,
) -> Result<TaskState, Error> {
    let mut events = store
        .client()
        .subscribe(subjects::tasks_events(id)?)
        .await
        .map_err(|e| Error::nats("subscribe to the task's events", e))?;
    let state = read(store, id).await?;
    if state.state.is_final() {
        return Ok(state);
    }
    let expired = tokio::time::sleep(wait);
    tokio::pin!(expired);
    loop {
        tokio::select! {
            _ = &mut expired => break,
            _ = stop.cancelled() => break,
            event = events.next() => {
                let Some(event) = event else { break };
                match TaskState::from_json(&event.payload) {
                    Ok(state) if state.state.is_final() => return Ok(state),
                    Ok(_) => {}
                    Err(err) => tracing::debug!(%err, task = %id, "an unreadable task event"),
                }
            }
        }
    }
    read(store, id).await
}

async fn read(store: &TaskStore, id: &str) -> Result<TaskState, Error> {
    Ok(store
        .get(id)
        .await?
        .ok_or_else(|| Error::not_found(format!("no task {id}")))?
        .0)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::envelope::{ContentType, Meta};
    use crate::error::ErrorKind;
    use crate::subjects::headers as h;

    fn request(body: &str, timeout_ms: Option<&str>) -> Request {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(ms) = timeout_ms {
            headers.insert(h::TIMEOUT_MS, ms);
        }
        Request {
            subject: "tasks.get.x".into(),
            meta: Meta::new("urn:test", "io.test").with_content_type(ContentType::Json),
            headers,
            payload: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn the_wait_comes_from_the_body_within_the_callers_deadline() {
        assert_eq!(wait_of(&request("", None)).unwrap(), None);
        assert_eq!(wait_of(&request(" \n", None)).unwrap(), None);
        assert_eq!(wait_of(&request("{}", None)).unwrap(), None);
        assert_eq!(wait_of(&request("null", None)).unwrap(), None);
        assert_eq!(
            wait_of(&request(r#"{"wait_ms":2500}"#, None)).unwrap(),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            wait_of(&request(r#"{"wait_ms":30000}"#, Some("1100"))).unwrap(),
            Some(Duration::from_millis(1000))
        );
        // A deadline too short to wait at all: answer at once.
        assert_eq!(
            wait_of(&request(r#"{"wait_ms":30000}"#, Some("50"))).unwrap(),
            None
        );
    }

    #[test]
    fn bad_options_are_invalid_input() {
        for body in [
            r#"{"wait_ms":60001}"#,
            r#"{"wait_ms":-1}"#,
            r#"{"wait_ms":"5s"}"#,
            r#"{"wait":5}"#,
            "nope",
        ] {
            let err = wait_of(&request(body, None)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{body}");
        }
        let err = wait_of(&request(r#"{"wait_ms":10}"#, Some("soon"))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
