//! Starts a set of components on one connection (or, in secure mode, each on its own:
//! [`Connections`]), keeps readiness current, and stops them gracefully: stop taking
//! work, let in-flight work finish within the grace period, then drain the connections.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use tokio_util::sync::CancellationToken;

pub use super::connections::Connections;
use super::{Component, Context, Instance};
use crate::admin::Readiness;
use crate::config::JetStreamConfig;
use crate::error::Error;
use crate::nats::connect::round_trip;
use crate::nats::provision;
use crate::observability::metrics as m;

const MONITOR_INTERVAL: Duration = Duration::from_secs(1);

/// Components running in this process.
pub struct Supervisor {
    ctx: Context,
    /// The components' own connections (secure mode), drained with the process's.
    own: Vec<Client>,
    provisioner: Option<Client>,
    readiness: Readiness,
    stop_monitor: CancellationToken,
    monitor: tokio::task::JoinHandle<()>,
}

/// How a graceful stop went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// In-flight work all finished within the grace period.
    pub finished_in_time: bool,
    /// The connection drained (pending publishes flushed) before closing.
    pub drained: bool,
}

impl Supervisor {
    /// Starts `components` in order. If one fails, those already started are stopped
    /// and the error is returned. Readiness turns ready once all have started and the
    /// streams and buckets exist.
    pub async fn start(
        client: Client,
        components: Vec<Box<dyn Component>>,
        readiness: Readiness,
        jetstream: JetStreamConfig,
    ) -> Result<Supervisor, Error> {
        Self::start_with(
            Connections::shared(client),
            components,
            readiness,
            jetstream,
        )
        .await
    }

    /// [`Supervisor::start`] on `connections`: each component gets a context on its own
    /// connection when it has one.
    pub async fn start_with(
        mut connections: Connections,
        components: Vec<Box<dyn Component>>,
        readiness: Readiness,
        jetstream: JetStreamConfig,
    ) -> Result<Supervisor, Error> {
        let instance = Arc::new(Instance {
            id: crate::envelope::new_id(),
            version: env!("CARGO_PKG_VERSION"),
            started: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            components: components.iter().map(|c| c.name()).collect(),
        });
        let ctx = Context::new(connections.process, instance);
        let mut own = Vec::new();
        for component in &components {
            let component_ctx = match connections.components.remove(component.name()) {
                Some(client) => {
                    own.push(client.clone());
                    ctx.with_client(client)
                }
                None => ctx.clone(),
            };
            // Started means the server already routes to it: hence the round trip.
            let started = match component.start(component_ctx.clone()).await {
                Ok(()) => round_trip(&component_ctx.client).await,
                Err(err) => Err(err),
            };
            if let Err(err) = started {
                let err = Error::new(
                    err.kind(),
                    format!(
                        "component {} failed to start: {}",
                        component.name(),
                        err.message()
                    ),
                );
                ctx.shutdown().cancel();
                ctx.tasks().close();
                ctx.tasks().wait().await;
                return Err(err);
            }
            metrics::gauge!(m::COMPONENT_UP, "component" => component.name()).set(1.0);
            tracing::info!(component = component.name(), "component started");
        }
        let stop_monitor = CancellationToken::new();
        let provisioner = connections.provisioner;
        let provisioning = match &provisioner {
            Some(client) => async_nats::jetstream::new(client.clone()),
            None => ctx.jetstream.clone(),
        };
        let clients: Vec<Client> = std::iter::once(ctx.client.clone())
            .chain(own.iter().cloned())
            .chain(provisioner.iter().cloned())
            .collect();
        let monitor = tokio::spawn(monitor(
            clients,
            provisioning,
            readiness.clone(),
            jetstream,
            stop_monitor.clone(),
        ));
        Ok(Supervisor {
            ctx,
            own,
            provisioner,
            readiness,
            stop_monitor,
            monitor,
        })
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Graceful stop, bounded by `grace` for in-flight work plus `grace` for the drain.
    pub async fn stop(self, grace: Duration) -> StopReport {
        self.stop_monitor.cancel();
        let _ = self.monitor.await;
        self.readiness.set_not_ready("shutting down");
        self.ctx.shutdown().cancel();
        self.ctx.tasks().close();
        let finished_in_time = tokio::time::timeout(grace, self.ctx.tasks().wait())
            .await
            .is_ok();
        if !finished_in_time {
            tracing::warn!(
                ?grace,
                "in-flight work did not finish within the grace period"
            );
        }
        // The replies just sent must reach the server before a connection closes:
        // async-nats's drain does not wait for that by itself. The components' own
        // connections first, the process's (which logs their stop) last.
        let drain = |client: Client| async move {
            round_trip(&client).await.is_ok() && client.drain().await.is_ok()
        };
        let drained = tokio::time::timeout(grace, async {
            let own = futures::future::join_all(
                self.own.iter().chain(&self.provisioner).cloned().map(drain),
            )
            .await;
            drain(self.ctx.client.clone()).await && own.into_iter().all(|ok| ok)
        })
        .await
        .unwrap_or(false);
        for component in &self.ctx.instance.components {
            metrics::gauge!(m::COMPONENT_UP, "component" => *component).set(0.0);
        }
        StopReport {
            finished_in_time,
            drained,
        }
    }
}

/// Keeps readiness and the NATS gauges current; re-creates streams or buckets that
/// disappeared (a server restarted without its store, an operator's `nats stream rm`).
async fn monitor(
    clients: Vec<Client>,
    provisioning: async_nats::jetstream::Context,
    readiness: Readiness,
    jetstream: JetStreamConfig,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(MONITOR_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        m::record_nats(&clients);
        m::upkeep();
        let state = check(&clients, &provisioning, &jetstream).await;
        metrics::gauge!(m::READY).set(if state.is_ok() { 1.0 } else { 0.0 });
        match state {
            Ok(()) => readiness.set_ready(),
            Err(reason) => readiness.set_not_ready(reason),
        }
    }
}

async fn check(
    clients: &[Client],
    provisioning: &async_nats::jetstream::Context,
    jetstream: &JetStreamConfig,
) -> Result<(), String> {
    let connected = async_nats::connection::State::Connected;
    if clients.iter().any(|c| c.connection_state() != connected) {
        return Err("NATS disconnected".into());
    }
    let missing = tokio::time::timeout(MONITOR_INTERVAL, provision::missing(provisioning))
        .await
        .map_err(|_| "JetStream did not answer".to_string())?
        .map_err(|e| e.message().to_string())?;
    if missing.is_empty() {
        return Ok(());
    }
    let reason = format!("missing {}", missing.join(", "));
    tracing::warn!(%reason, "re-creating streams and buckets");
    if let Err(err) = provision::provision(provisioning, jetstream).await {
        tracing::warn!(%err, "re-provisioning failed");
    }
    Err(reason)
}
