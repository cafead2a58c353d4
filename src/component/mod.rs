//! The one component model. A component says which subjects it serves, starts by
//! subscribing (returning from [`Component::start`] means it is ready), and stops
//! gracefully when the shared shutdown token fires: it stops taking work, and the
//! work it already took finishes inside [`Context::spawn`] so the supervisor can wait
//! for it within the grace period. `up` and `run` both go through [`supervisor`].

pub mod connections;
pub mod responder;
pub mod supervisor;

use std::future::Future;
use std::sync::Arc;

use async_nats::Client;
use async_nats::jetstream::Context as JetStream;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::Error;
use crate::resilience::errorlog::ErrorLog;

/// A subject a component subscribes to, as listed by `switchyard components` and
/// documented in subjects.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The subject, or its family pattern (`api.<service>.<operation>`).
    pub subject: &'static str,
    /// `None` means every instance receives every message (fan-out).
    pub queue_group: Option<&'static str>,
    pub description: &'static str,
}

/// A Switchyard component: one NATS subscriber on documented subjects.
pub trait Component: Send + Sync + 'static {
    /// Name used by `switchyard run <name>`, in logs and in metric labels.
    fn name(&self) -> &'static str;

    /// Every subject the component subscribes to.
    fn subscriptions(&self) -> Vec<Subscription>;

    /// Takes the component's settings from the process configuration, and claims what
    /// it must own exclusively (a listening port), so that a conflict is reported
    /// before anything starts. Called by `up` and `run` before [`Component::start`];
    /// a component built with its settings directly (tests) may skip it.
    fn configure(&mut self, config: &Config) -> Result<(), Error> {
        let _ = config;
        Ok(())
    }

    /// Subscribes and spawns the component's loops with [`Context::spawn`]. Returning
    /// `Ok` means the component is ready: its subscriptions are live on the server.
    fn start(&self, ctx: Context) -> BoxFuture<'_, Result<(), Error>>;
}

/// Facts about this running process, shared by its components.
#[derive(Debug, Clone)]
pub struct Instance {
    /// UUID v7, new at every start.
    pub id: String,
    pub version: &'static str,
    pub started: String,
    pub components: Vec<&'static str>,
}

/// What a component gets to work with. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub jetstream: JetStream,
    pub instance: Arc<Instance>,
    /// Where components report errors (`errors.<component>`, stream `ERRORS`).
    pub errors: ErrorLog,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Context {
    pub fn new(client: Client, instance: Arc<Instance>) -> Context {
        Context {
            jetstream: async_nats::jetstream::new(client.clone()),
            errors: ErrorLog::start(&client),
            client,
            instance,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// The same context on another connection (secure mode: the component's own
    /// NATS user). Shutdown, in-flight work and the error logger stay shared.
    pub fn with_client(&self, client: Client) -> Context {
        Context {
            jetstream: async_nats::jetstream::new(client.clone()),
            client,
            ..self.clone()
        }
    }

    /// Fires when the process starts its graceful stop: stop taking new work.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs work the graceful stop must wait for (subscription loops, in-flight
    /// requests).
    pub fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(work)
    }

    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }
}
