//! Calling other services, from a service's handler or any Rust program: what an agent
//! that delegates to other agents needs, typed, in one line each.
//!
//! - [`Caller::call`]: `api.<service>.<operation>` through the gateway (its routing,
//!   retries, breaker and fallbacks), answering the decoded reply or the typed
//!   [`Error`] an error reply stands for.
//! - [`Caller::submit`], [`Caller::wait`], [`Caller::run_task`]: the same operation as
//!   a durable task (`tasks.submit.<service>.<operation>`), then `tasks.get.<id>`
//!   waiting for its end (`{"wait_ms"}`), asked again until the caller's time is up.
//!
//! Every request carries the caller's deadline (`Switchyard-Timeout-Ms`), so nothing
//! downstream works for an answer nobody waits for. [`Caller::within`] makes the calls
//! follow-ups of a request being handled: same correlation id and trace, causation =
//! its id, so a chain of agents reads as one conversation.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use switchyard::envelope::Meta;
//! use switchyard::sdk::{Caller, Service};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Goal { text: String }
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Facts { items: Vec<String> }
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Draft { text: String }
//!
//! # async fn demo(client: async_nats::Client) -> Result<(), switchyard::Error> {
//! let calls = client.clone();
//! Service::new("planner", "1.0.0")?
//!     .operation_with_meta("plan", move |meta: Meta, goal: Goal| {
//!         let caller = Caller::new(&calls).within(&meta);
//!         async move {
//!             let facts: Facts = caller.call("search", "find", &goal).await?;
//!             let draft: Draft = caller
//!                 .run_task("writer", "draft", &facts, Duration::from_secs(300))
//!                 .await?;
//!             Ok(draft)
//!         }
//!     })
//!     .run(&client)
//!     .await
//! # }
//! ```

use std::time::{Duration, Instant};

use async_nats::Client;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, Meta, Outgoing, check_size, error_from_reply};
use crate::error::{Error, ErrorKind};
use crate::resilience::tasks::state::{Phase, TaskState};
use crate::resilience::tasks::wait::MAX_WAIT;
use crate::subjects::{self, headers as h};

const SOURCE: &str = "urn:switchyard:sdk:caller";
const CALL_TYPE: &str = "io.switchyard.call";
/// The default time a call, or a task's run, may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Room on top of a `tasks.get` wait for its answer to come back.
const ANSWER_MARGIN: Duration = Duration::from_secs(2);
/// Before asking again when a get answered early without the task's end (its
/// instance was stopping, or had too many waiting).
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(250);

/// Calls services and runs tasks on one connection; cheap to clone.
#[derive(Debug, Clone)]
pub struct Caller {
    client: Client,
    timeout: Duration,
    cause: Option<Meta>,
}

/// The answer of a task submit.
#[derive(Debug, Deserialize)]
struct Submitted {
    id: String,
}

/// The body of a waiting `tasks.get`.
#[derive(Debug, Serialize)]
struct WaitFor {
    wait_ms: u64,
}

impl Caller {
    pub fn new(client: &Client) -> Caller {
        Caller {
            client: client.clone(),
            timeout: DEFAULT_TIMEOUT,
            cause: None,
        }
    }

    /// How long [`Caller::call`] waits for an answer (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Caller {
        self.timeout = timeout;
        self
    }

    /// Calls made as follow-ups of `request` (a handler's incoming request, see
    /// `Service::operation_with_meta`): same correlation id and trace.
    pub fn within(mut self, request: &Meta) -> Caller {
        self.cause = Some(request.clone());
        self
    }

    /// `operation` of `service` through the gateway, answering its decoded reply.
    pub async fn call<Req, Resp>(
        &self,
        service: &str,
        operation: &str,
        request: &Req,
    ) -> Result<Resp, Error>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let subject = subjects::api(service, operation)?;
        self.request(subject, request, self.timeout, self.timeout)
            .await
    }

    /// Submits `operation` of `service` as a durable task; its id.
    pub async fn submit<Req: Serialize>(
        &self,
        service: &str,
        operation: &str,
        request: &Req,
    ) -> Result<String, Error> {
        let subject = subjects::tasks_submit(service, operation)?;
        let submitted: Submitted = self
            .request(subject, request, self.timeout, self.timeout)
            .await?;
        Ok(submitted.id)
    }

    /// The task once completed, failed or canceled; a `Timeout` error when it has not
    /// ended `within` (it goes on: wait again, or cancel it).
    pub async fn wait(&self, id: &str, within: Duration) -> Result<TaskState, Error> {
        let subject = subjects::tasks_get(id)?;
        let deadline = Instant::now() + within;
        loop {
            let asked = Instant::now();
            let wait = deadline.saturating_duration_since(asked).min(MAX_WAIT);
            let body = WaitFor {
                wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            };
            let state: TaskState = self
                .request(
                    subject.clone(),
                    &body,
                    wait + ANSWER_MARGIN,
                    wait + ANSWER_MARGIN,
                )
                .await?;
            if state.state.is_final() {
                return Ok(state);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::timeout(format!(
                    "task {id} is still {} after {within:?}",
                    state.state.as_str()
                )));
            }
            if now.duration_since(asked) < wait {
                tokio::time::sleep(ASK_AGAIN_AFTER.min(deadline - now)).await;
            }
        }
    }

    /// Runs `operation` of `service` as a durable task and answers its result: submit,
    /// then wait for the end `within`. A failed task is its error; a canceled one a
    /// `Permanent` error saying so.
    pub async fn run_task<Req, Resp>(
        &self,
        service: &str,
        operation: &str,
        request: &Req,
        within: Duration,
    ) -> Result<Resp, Error>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let id = self.submit(service, operation, request).await?;
        let state = self.wait(&id, within).await?;
        match state.state {
            Phase::Completed => {
                let result = state.result.unwrap_or(serde_json::Value::Null);
                serde_json::from_value(result).map_err(|e| {
                    Error::invalid_input(format!(
                        "the result of task {id} ({service}.{operation}) is not what was \
                         expected: {e}"
                    ))
                })
            }
            Phase::Failed => Err(match state.error {
                Some(detail) => Error::new(detail.kind, detail.message),
                None => Error::new(ErrorKind::Internal, format!("task {id} failed")),
            }),
            _ => Err(Error::new(
                ErrorKind::Permanent,
                format!("task {id} ({service}.{operation}) was canceled"),
            )),
        }
    }

    /// One request-reply with an envelope: `budget` is the deadline sent along,
    /// `timeout` how long this side waits.
    async fn request<Req, Resp>(
        &self,
        subject: String,
        request: &Req,
        budget: Duration,
        timeout: Duration,
    ) -> Result<Resp, Error>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let meta = match &self.cause {
            Some(cause) => cause.follow_up(SOURCE, CALL_TYPE),
            None => Meta::new(SOURCE, CALL_TYPE),
        };
        let mut message = Outgoing::encode(&Envelope::new(meta, request))?;
        message
            .headers
            .insert(h::TIMEOUT_MS, budget.as_millis().max(1).to_string());
        check_size(&self.client, &message)?;
        let request = async_nats::Request::new()
            .headers(message.headers)
            .payload(message.payload)
            .timeout(Some(timeout));
        let reply = self.client.send_request(subject, request).await?;
        if let Some(err) = error_from_reply(reply.headers.as_ref()) {
            return Err(err);
        }
        Ok(Envelope::<Resp>::from_message(&reply, "io.switchyard.reply")?.data)
    }
}
