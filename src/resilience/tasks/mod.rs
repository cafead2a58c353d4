//! Durable asynchronous tasks: a caller submits work and gets a task id at once; a
//! worker (every service built with the SDK, see [`crate::sdk`]) runs it later, even
//! if the caller, the submitter or the first worker is gone meanwhile.
//!
//! - `tasks.submit.<service>.<operation>` ([`submit`]): stores the task `submitted` in
//!   KV `tasks`, then publishes its work item with ack to
//!   `tasks.work.<service>.<operation>` (work-queue stream `TASKS`) carrying the
//!   state's revision, answers `{"id","state"}`.
//! - `tasks.get.<id>`, `tasks.cancel.<id>` ([`endpoints`]); a get may wait for the
//!   task to end ([`wait`]).
//! - `tasks.events.<id>`: every state change, published by whoever made it.
//! - `tasks.canceled.<service>` ([`cancels`]): cancels announced to the workers, so
//!   that they run a task without reading its state first unless it may be canceled.
//! - [`state`]: the state JSON and the compare-and-set every change goes through, so a
//!   task redelivered after its worker was killed completes exactly once as callers
//!   see it.
//!
//! The worker side lives in the SDK (`src/sdk/tasks.rs`).

pub mod cancels;
pub mod endpoints;
pub mod state;
pub mod submit;
pub mod wait;

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;

use self::endpoints::{Action, Endpoints};
use self::state::TaskStore;
use self::submit::{SOURCE, Submitter};
use crate::component::responder::{self, Endpoint};
use crate::component::{Component, Context, Subscription};
use crate::error::{Error, ErrorKind};
use crate::integration::registry::view::RegistryView;
use crate::resilience::errorlog::{ErrorLog, Where};
use crate::subjects::{QUEUE_GROUP, TASKS_CANCEL, TASKS_GET, TASKS_SUBMIT};

pub const NAME: &str = "tasks";
/// `ce-type` assumed for task requests that carry none.
pub const REQUEST_TYPE: &str = "io.switchyard.tasks.request";

/// The tasks component: submit, get and cancel in queue group `switchyard`.
pub struct TasksComponent;

impl Component for TasksComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn subscriptions(&self) -> Vec<Subscription> {
        vec![
            Subscription {
                subject: TASKS_SUBMIT,
                queue_group: Some(QUEUE_GROUP),
                description: "stores the task, enqueues its work item, answers its id (404 unknown service)",
            },
            Subscription {
                subject: TASKS_GET,
                queue_group: Some(QUEUE_GROUP),
                description: "the task's state and result (404 unknown id); with {\"wait_ms\":N}, \
                              once ended (listens on tasks.events.<id>)",
            },
            Subscription {
                subject: TASKS_CANCEL,
                queue_group: Some(QUEUE_GROUP),
                description: "cancels a task that has not finished",
            },
        ]
    }

    fn start(&self, ctx: Context) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let store = TaskStore::open(&ctx.client).await?;
            let view = RegistryView::start(&ctx.client, ctx.shutdown().clone()).await?;
            let submitter = Submitter {
                store: store.clone(),
                js: ctx.jetstream.clone(),
                view,
            };
            let errors = ctx.errors.clone();
            responder::serve(
                &ctx,
                NAME,
                endpoint("submit", "tasks.submit.*.*"),
                move |request| {
                    let (submitter, errors) = (submitter.clone(), errors.clone());
                    async move {
                        let subject = request.subject.to_string();
                        let answer = submitter.handle(request).await;
                        if let Err(err) = &answer {
                            report(&errors, &subject, err);
                        }
                        answer
                    }
                },
            )
            .await?;
            let endpoints = Endpoints {
                store,
                stop: ctx.shutdown().clone(),
                waiters: Arc::new(Semaphore::new(wait::MAX_WAITERS)),
            };
            for (name, subject, action) in [
                ("get", "tasks.get.*", Action::Get),
                ("cancel", "tasks.cancel.*", Action::Cancel),
            ] {
                let endpoints = endpoints.clone();
                responder::serve(&ctx, NAME, endpoint(name, subject), move |request| {
                    let endpoints = endpoints.clone();
                    async move { endpoints.handle(action, request).await }
                })
                .await?;
            }
            Ok(())
        })
    }
}

/// Reports a submit that failed on Switchyard's side; a caller's mistake (a bad
/// subject, an unknown service) is only answered.
fn report(errors: &ErrorLog, subject: &str, err: &Error) {
    if !matches!(err.kind(), ErrorKind::InvalidInput | ErrorKind::NotFound) {
        let at = Where {
            subject: Some(subject),
            ..Where::default()
        };
        errors.report(NAME, err, at);
    }
}

fn endpoint(name: &'static str, subject: &str) -> Endpoint {
    Endpoint {
        name,
        subject: subject.into(),
        queue_group: Some(QUEUE_GROUP),
        request_type: REQUEST_TYPE,
        source: SOURCE,
    }
}
