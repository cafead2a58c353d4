//! The service SDK: an agent service in about twenty lines.
//!
//! ```no_run
//! use switchyard::sdk::Service;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Say { text: String }
//!
//! # async fn demo(client: async_nats::Client) -> Result<(), switchyard::Error> {
//! Service::new("echo", "1.0.0")?
//!     .description("Says back what it gets")
//!     .metadata("team", "agents")
//!     .operation("say", |request: Say| async move { Ok(request) })
//!     .run(&client) // until SIGINT/SIGTERM, then a graceful stop
//!     .await
//! # }
//! ```
//!
//! What a service does, so its author does not have to:
//!
//! - Each operation listens on `svc.<service>.<operation>` in queue group `q`, as a
//!   NATS micro endpoint named after the operation, so `$SRV.PING|INFO|STATS` are
//!   answered and `nats micro ls/info/stats` list it (async-nats's `service` feature).
//! - Requests are read as envelopes ([`crate::envelope::Meta`]); the payload is decoded
//!   into the handler's request type in the caller's codec (MessagePack or JSON) and
//!   the answer is encoded in the same codec, with `ce-*` follow-up headers (same
//!   correlation and trace, causation = the request's `ce-id`).
//! - A handler's [`Error`] goes back as `Nats-Service-Error` and
//!   `Nats-Service-Error-Code` (its kind's code); so do a malformed payload (400), an
//!   unknown content type (415), an answer larger than the server's `max_payload`
//!   (413) and a panicking handler (500). Micro counts them as endpoint errors.
//! - Each operation also runs as a durable task: `tasks.submit.<service>.<operation>`
//!   (the `tasks` component) answers with a task id, and the instances of the service
//!   pull the work from stream `TASKS` and record the outcome in KV `tasks`
//!   ([`tasks`], [`task_run`], [`task_outcome`]): in-progress acks while the handler
//!   runs, exactly one outcome recorded per task even when a killed instance's task is
//!   redelivered. A handler running as a task may report [`progress`] on the task's
//!   events.
//! - Each instance follows its service's health in the registry and leaves the queue
//!   group while another instance should serve instead (drained, unhealthy or
//!   degraded; see `routing`).
//! - Each instance registers in the registry under `<service>.<micro id>`, heartbeats,
//!   and deregisters on a graceful stop ([`RunningService::stop`]); an instance that
//!   dies stops heartbeating and its entry expires after three intervals.
//!
//! Its client side, [`Caller`], calls other services through the gateway and runs
//! their operations as durable tasks, typed, carrying the deadline and (from a
//! handler, [`Caller::within`]) the conversation's correlation id and trace.

mod args;
mod caller;
mod handler;
mod latency;
mod progress;
mod routing;
mod running;
mod serving;
mod task_outcome;
mod task_run;
mod tasks;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use async_nats::Client;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::args::ServiceArgs;
pub use self::caller::Caller;
pub use self::progress::progress;
pub use self::running::{RunningService, StopReport};
pub use self::tasks::{
    DEFAULT_TASK_ACK_WAIT, DEFAULT_TASK_CONCURRENCY, DEFAULT_TASK_MAX_DELIVER, TaskSettings,
};
use crate::envelope::Meta;
use crate::error::Error;
use crate::subjects::validate_token;

/// Heartbeat interval unless [`Service::heartbeat`] says otherwise; the registry entry
/// expires after three missed beats.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Shortest heartbeat accepted (the entry's TTL is kept in whole seconds anyway).
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// Requests one instance handles at once unless [`Service::max_in_flight`] says
/// otherwise; more are answered 429 overloaded at once (shed), not queued.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;
/// How long a graceful stop waits for in-flight handlers unless
/// [`Service::stop_timeout`] says otherwise.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A service definition: name, version, description, metadata and operations.
/// Nothing touches NATS until [`Service::start`] or [`Service::run`].
pub struct Service {
    name: String,
    version: String,
    description: String,
    metadata: BTreeMap<String, String>,
    heartbeat: Duration,
    max_in_flight: usize,
    stop_timeout: Duration,
    tasks: TaskSettings,
    operations: Vec<(String, handler::BoxHandler)>,
    /// The first invalid setting, reported by `start` so the builder chains stay short.
    invalid: Option<Error>,
}

impl Service {
    /// A service named `name` (1-128 of `A-Z a-z 0-9 _ -`, a subject token and a micro
    /// service name) at semantic version `version` (`1.0.0`, `2.1.0-rc.1+build.5`).
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Result<Service, Error> {
        let (name, version) = (name.into(), version.into());
        validate_token("service name", &name)?;
        if !is_semver(&version) {
            return Err(Error::invalid_input(format!(
                "invalid service version {version:?}: use semantic versioning, e.g. 1.0.0"
            )));
        }
        Ok(Service {
            name,
            version,
            description: String::new(),
            metadata: BTreeMap::new(),
            heartbeat: DEFAULT_HEARTBEAT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            tasks: TaskSettings::default(),
            operations: Vec::new(),
            invalid: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Shown by `nats micro info` and stored in the registry entry.
    pub fn description(mut self, description: impl Into<String>) -> Service {
        self.description = description.into();
        self
    }

    /// One metadata pair, shown by `nats micro info` and stored in the registry entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Service {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// How often the registry entry is refreshed (default 5 s, at least 100 ms); the
    /// entry expires after three missed beats.
    pub fn heartbeat(mut self, every: Duration) -> Service {
        if every < MIN_HEARTBEAT {
            self.note_invalid(format!(
                "heartbeat {every:?} is shorter than {MIN_HEARTBEAT:?}"
            ));
        }
        self.heartbeat = every;
        self
    }

    /// Requests handled at once by this instance, across its operations (default 512);
    /// a request beyond them is answered 429 overloaded at once.
    pub fn max_in_flight(mut self, requests: usize) -> Service {
        if requests == 0 {
            self.note_invalid("max_in_flight must be at least 1".into());
        }
        self.max_in_flight = requests;
        self
    }

    /// How long a graceful stop waits for in-flight handlers (default 10 s).
    pub fn stop_timeout(mut self, timeout: Duration) -> Service {
        self.stop_timeout = timeout;
        self
    }

    /// How long a task may run without a sign of life before the server hands it to
    /// another instance (default 30 s). A running task sends one at least every third
    /// of it, so this bounds how long a killed instance's tasks wait, not how long a
    /// task may run. Shared by every instance (the consumer's setting).
    pub fn task_ack_wait(mut self, ack_wait: Duration) -> Service {
        if ack_wait < Duration::from_millis(300) {
            self.note_invalid(format!("task ack wait {ack_wait:?} is shorter than 300ms"));
        }
        self.tasks.ack_wait = ack_wait;
        self
    }

    /// Deliveries of one task, the first included, before a retried failure is given
    /// up (default 5).
    pub fn task_max_deliver(mut self, deliveries: i64) -> Service {
        if deliveries < 1 {
            self.note_invalid("task max deliver must be at least 1".into());
        }
        self.tasks.max_deliver = deliveries;
        self
    }

    /// Tasks this instance runs at once, across its operations (default 64); apart
    /// from [`Service::max_in_flight`], so long tasks never starve requests.
    pub fn task_concurrency(mut self, tasks: usize) -> Service {
        if tasks == 0 {
            self.note_invalid("task concurrency must be at least 1".into());
        }
        self.tasks.concurrency = tasks;
        self
    }

    /// Adds operation `name`, served on `svc.<service>.<name>`: the handler gets the
    /// request decoded from the caller's codec and its answer is encoded in it.
    pub fn operation<Req, Resp, F, Fut>(self, name: impl Into<String>, handler: F) -> Service
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
    {
        self.operation_with_meta(name, move |_meta: Meta, request: Req| handler(request))
    }

    /// Like [`Service::operation`], and the handler also gets the request's attributes
    /// (ids, source, type, trace), e.g. to publish follow-up events with
    /// [`Meta::follow_up`].
    pub fn operation_with_meta<Req, Resp, F, Fut>(
        mut self,
        name: impl Into<String>,
        handler: F,
    ) -> Service
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Meta, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
    {
        let name = name.into();
        if let Err(err) = validate_token("operation name", &name) {
            self.note_invalid(err.message().to_string());
        } else if self
            .operations
            .iter()
            .any(|(existing, _)| *existing == name)
        {
            self.note_invalid(format!("operation {name:?} is defined twice"));
        }
        self.operations.push((name, handler::typed(handler)));
        self
    }

    /// Starts serving: the micro service and its endpoints, then the registry entry.
    /// Returns once requests are being answered and the instance is registered.
    pub async fn start(self, client: &Client) -> Result<RunningService, Error> {
        running::start(self, client).await
    }

    /// [`Service::start`], then waits for SIGINT or SIGTERM and stops gracefully:
    /// deregister, stop taking requests, finish the ones in flight.
    pub async fn run(self, client: &Client) -> Result<(), Error> {
        // Installed before starting so a signal during start-up is not lost.
        let mut signals = crate::shutdown::Signals::install();
        let running = self.start(client).await?;
        tracing::info!(
            service = running.name(),
            instance = running.id(),
            "service started; SIGINT or SIGTERM stops it gracefully"
        );
        let signal = signals.next().await;
        tracing::info!(signal, service = running.name(), "stopping gracefully");
        let report = running.stop().await;
        tracing::info!(?report, "service stopped");
        Ok(())
    }

    fn note_invalid(&mut self, message: String) {
        if self.invalid.is_none() {
            self.invalid = Some(Error::invalid_input(format!(
                "service {}: {message}",
                self.name
            )));
        }
    }
}

/// Semantic versioning 2.0.0: `MAJOR.MINOR.PATCH[-pre.release][+build.meta]`, numbers
/// without leading zeros. NATS micro refuses anything else.
pub fn is_semver(version: &str) -> bool {
    let (rest, build) = match version.split_once('+') {
        Some((rest, build)) => (rest, Some(build)),
        None => (version, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    let number = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    };
    let identifier =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| number(p))
        && pre.is_none_or(|pre| {
            pre.split('.')
                .all(|id| identifier(id) && (!id.bytes().all(|b| b.is_ascii_digit()) || number(id)))
        })
        && build.is_none_or(|build| build.split('.').all(identifier))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_as_the_spec_and_nats_micro_have_it() {
        for good in [
            "1.0.0",
            "0.1.0",
            "10.20.30",
            "1.0.0-rc.1",
            "1.0.0-0.3.7",
            "1.0.0+b.5",
        ] {
            assert!(is_semver(good), "{good}");
        }
        for bad in [
            "", "1", "1.0", "01.0.0", "1.0.0-", "1.0.0-01", "1.0.0+", "v1.0.0", "1.0.0 ",
        ] {
            assert!(!is_semver(bad), "{bad}");
        }
    }

    #[test]
    fn invalid_names_and_settings_are_refused() {
        assert!(Service::new("my service", "1.0.0").is_err());
        assert!(Service::new("echo", "1.0").is_err());
        let service = Service::new("echo", "1.0.0")
            .unwrap()
            .operation("a.b", |x: u8| async move { Ok(x) });
        assert!(service.invalid.is_some());
        let service = Service::new("echo", "1.0.0")
            .unwrap()
            .operation("a", |x: u8| async move { Ok(x) })
            .operation("a", |x: u8| async move { Ok(x) });
        assert!(service.invalid.is_some());
        let service = Service::new("echo", "1.0.0")
            .unwrap()
            .heartbeat(Duration::ZERO);
        assert!(service.invalid.is_some());
    }
}
