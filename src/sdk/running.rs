//! A started service: its NATS micro service and endpoint loops, its registry entry,
//! and the graceful stop that takes them down in the order callers need.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use async_nats::service::ServiceExt;
use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Service;
use super::handler::{self, Endpoint};
use super::serving::{Lifetime, Rejoin, serve_endpoint};
use super::tasks;
use super::{latency, routing};
use crate::error::Error;
use crate::integration::registry::registrar::{hostname, now};
use crate::integration::registry::{EndpointEntry, Health, Registrar, RegistryEntry};
use crate::nats::connect::round_trip;
use crate::subjects::{self, SDK_QUEUE_GROUP};

/// A running service instance. Stop it with [`RunningService::stop`]; dropping it
/// instead is a crash as far as the registry is concerned: it stops answering and
/// heartbeating, and its entry expires after three heartbeat intervals.
pub struct RunningService {
    id: String,
    name: String,
    client: Client,
    /// Shared with the routing task, which re-adds the endpoints when the instance
    /// rejoins its queue group; taken out by the stop.
    micro: Arc<tokio::sync::Mutex<Option<async_nats::service::Service>>>,
    /// The endpoints with their subjects, to add again after leaving the group.
    endpoints: Vec<(Arc<Endpoint>, String)>,
    permits: Arc<Semaphore>,
    /// Fires to make the endpoint loops leave the queue group (see [`super::routing`]).
    leave: CancellationToken,
    /// Ends the routing task.
    stop_routing: CancellationToken,
    registrar: Option<Registrar>,
    tasks: TaskTracker,
    /// Ends the endpoint loops at once (after the stop timeout, or on drop), and hands
    /// running tasks back to the stream.
    abort: CancellationToken,
    /// Stops pulling tasks (a graceful stop's first step).
    stop_pulling: CancellationToken,
    stop_timeout: Duration,
}

/// How a graceful stop went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// The registry entry was deleted and `events.sys.service.deregistered` published.
    pub deregistered: bool,
    /// Every accepted request was answered within the stop timeout.
    pub finished_in_time: bool,
    /// The server confirmed it received the last replies.
    pub flushed: bool,
}

pub(super) async fn start(service: Service, client: &Client) -> Result<RunningService, Error> {
    if let Some(err) = service.invalid {
        return Err(err);
    }
    if service.operations.is_empty() {
        return Err(Error::invalid_input(format!(
            "service {} has no operations",
            service.name
        )));
    }
    // One latency window per operation, read by micro's STATS answers.
    let windows: latency::Windows = Arc::new(
        service
            .operations
            .iter()
            .map(|(operation, _)| (operation.clone(), Arc::default()))
            .collect(),
    );
    let reported = windows.clone();
    let micro = client
        .service_builder()
        .description(&service.description)
        .stats_handler(move |endpoint, _| {
            reported
                .get(&endpoint)
                .map_or(serde_json::Value::Null, |w| w.summary())
        })
        .metadata(
            service
                .metadata
                .clone()
                .into_iter()
                .collect::<HashMap<_, _>>(),
        )
        .queue_group(SDK_QUEUE_GROUP)
        .start(&service.name, &service.version)
        .await
        .map_err(|e| Error::nats(&format!("start NATS micro service {}", service.name), e))?;
    let id = micro.info().await.id;
    let mut running = RunningService {
        id: id.clone(),
        name: service.name.clone(),
        client: client.clone(),
        micro: Arc::new(tokio::sync::Mutex::new(Some(micro))),
        endpoints: Vec::new(),
        permits: Arc::new(Semaphore::new(service.max_in_flight)),
        leave: CancellationToken::new(),
        stop_routing: CancellationToken::new(),
        registrar: None,
        tasks: TaskTracker::new(),
        abort: CancellationToken::new(),
        stop_pulling: CancellationToken::new(),
        stop_timeout: service.stop_timeout,
    };
    // Every operation is also a task; the handlers are shared with the endpoints.
    let task_handlers: HashMap<String, handler::BoxHandler> = service
        .operations
        .iter()
        .map(|(operation, handler)| (operation.clone(), handler.clone()))
        .collect();
    let mut endpoints = Vec::new();
    for (operation, handler) in service.operations {
        let subject = subjects::svc(&service.name, &operation)?;
        let request_type = format!("io.switchyard.svc.{}.{operation}", service.name);
        let endpoint = Endpoint {
            client: client.clone(),
            service: service.name.clone(),
            reply_type: format!("{request_type}.reply"),
            request_type,
            source: format!("urn:switchyard:svc:{}:{id}", service.name),
            operation: operation.clone(),
            handler,
            latency: windows.get(&operation).cloned().unwrap_or_default(),
        };
        let endpoint = Arc::new(endpoint);
        if let Err(err) = running.serve(endpoint.clone(), &subject).await {
            running.stop().await;
            return Err(err);
        }
        running.endpoints.push((endpoint, subject.clone()));
        endpoints.push(EndpointEntry {
            name: operation,
            subject,
            queue_group: SDK_QUEUE_GROUP.into(),
        });
    }
    // Registered means routable: the server must already route to our endpoints.
    let entry = RegistryEntry {
        name: service.name,
        version: service.version,
        instance: id,
        description: service.description,
        endpoints,
        metadata: service.metadata,
        host: hostname(),
        pid: std::process::id(),
        started: now(),
        last_heartbeat: String::new(),
        heartbeat_ms: 0,
        health: Health::Healthy,
    };
    let name = entry.name.clone();
    let registered = match round_trip(client).await {
        Ok(()) => Registrar::register(client, entry, service.heartbeat)
            .await
            .map_err(|err| {
                let message = format!(
                    "cannot register {name} in KV registry (created by `switchyard up` or \
                     `switchyard run`): {}",
                    err.message()
                );
                Error::new(err.kind(), message)
            }),
        Err(err) => Err(err),
    };
    match registered {
        Ok(registrar) => running.registrar = Some(registrar),
        Err(err) => {
            running.stop().await;
            return Err(err);
        }
    }
    if let Err(err) = running.route().await {
        running.stop().await;
        return Err(err);
    }
    // Tasks wait in the stream until pulled, so pulling may start last.
    let pulling = tasks::start(
        client,
        &running.name,
        &running.id,
        task_handlers,
        service.tasks,
        tasks::Lifetime {
            tracker: &running.tasks,
            stop: running.stop_pulling.clone(),
            abort: running.abort.clone(),
        },
    )
    .await;
    match pulling {
        Ok(()) => Ok(running),
        Err(err) => {
            running.stop().await;
            Err(err)
        }
    }
}

impl RunningService {
    /// The instance id: the NATS micro service id, also the registry key's second
    /// token (`<service>.<id>`), so `nats micro info` and `nats kv ls registry` agree.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The registry entry as last written at registration.
    pub fn entry(&self) -> Option<&RegistryEntry> {
        self.registrar.as_ref().map(Registrar::entry)
    }

    /// Adds one micro endpoint and the loop that serves it.
    async fn serve(&self, endpoint: Arc<Endpoint>, subject: &str) -> Result<(), Error> {
        let micro = self.micro.lock().await;
        let Some(micro) = micro.as_ref() else {
            return Err(Error::internal("the micro service is already stopped"));
        };
        let lifetime = Lifetime {
            tasks: self.tasks.clone(),
            abort: self.abort.clone(),
            leave: self.leave.clone(),
            permits: self.permits.clone(),
        };
        serve_endpoint(micro, endpoint, subject, lifetime).await
    }

    /// Follows the service's health in the registry and leaves or rejoins the queue
    /// group as [`super::routing`] decides.
    async fn route(&mut self) -> Result<(), Error> {
        let serving = routing::follow(
            &self.client,
            &self.name,
            &self.id,
            self.stop_routing.clone(),
        )
        .await?;
        let rejoin = Rejoin {
            name: self.name.clone(),
            client: self.client.clone(),
            micro: self.micro.clone(),
            endpoints: self.endpoints.clone(),
            lifetime: Lifetime {
                tasks: self.tasks.clone(),
                abort: self.abort.clone(),
                leave: self.leave.clone(),
                permits: self.permits.clone(),
            },
        };
        let stop = self.stop_routing.clone();
        self.tasks.spawn(rejoin.run(serving, stop));
        Ok(())
    }

    /// Graceful stop: deregister (the gateway stops routing here), stop taking
    /// requests, answer the ones already taken (bounded by the stop timeout), make
    /// sure the replies reached the server.
    pub async fn stop(mut self) -> StopReport {
        let deregistered = match self.registrar.take() {
            Some(registrar) => match registrar.deregister().await {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(%err, service = %self.name, "cannot deregister");
                    false
                }
            },
            None => false,
        };
        self.stop_pulling.cancel();
        self.stop_routing.cancel();
        // async-nats drops what is still on the socket for a subscription it has
        // unsubscribed: a round trip first brings every request the server routed to
        // us so far into the endpoint queues, where the loops still take them.
        if let Err(err) = round_trip(&self.client).await {
            tracing::warn!(%err, service = %self.name, "no round trip before unsubscribing");
        }
        let micro = self.micro.lock().await.take();
        if let Some(micro) = micro
            && let Err(err) = micro.stop().await
        {
            tracing::warn!(%err, service = %self.name, "cannot stop the micro service");
        }
        self.tasks.close();
        let finished_in_time = tokio::time::timeout(self.stop_timeout, self.tasks.wait())
            .await
            .is_ok();
        if !finished_in_time {
            tracing::warn!(service = %self.name, timeout = ?self.stop_timeout, "requests still in flight at the stop timeout");
            self.abort.cancel();
        }
        // The replies just sent must reach the server before the caller closes the
        // connection or exits.
        let flushed = round_trip(&self.client).await.is_ok();
        StopReport {
            deregistered,
            finished_in_time,
            flushed,
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        // Not stopped gracefully: stop answering and heartbeating (dropping the
        // registrar stops its beats), and let the registry entry expire.
        self.stop_pulling.cancel();
        self.stop_routing.cancel();
        self.abort.cancel();
        if let Some(micro) = self.micro.try_lock().ok().and_then(|mut m| m.take()) {
            // `stop` only signals and aborts tasks; it completes on its first poll.
            let _ = micro.stop().now_or_never();
        }
    }
}
