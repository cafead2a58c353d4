//! The endpoint loops of a running service: each takes requests from one micro
//! endpoint (bounded by the service's permits) until the service stops or the instance
//! leaves its queue group, and [`Rejoin`] leaves and rejoins the group as
//! [`super::routing`] decides.
//!
//! A request that finds every permit taken is shed: answered 429 overloaded at once,
//! not queued. Queued, it would wait behind the requests in flight until its caller's
//! deadline passed, and a flood would pile up in the endpoint's buffer; a 429 lets the
//! caller (the gateway retries it within its budget) try another instance or back off.

use std::sync::Arc;

use async_nats::Client;
use futures::StreamExt;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::{self, Endpoint};
use crate::error::Error;
use crate::nats::connect::round_trip;

/// What an endpoint loop runs under.
#[derive(Clone)]
pub(super) struct Lifetime {
    pub(super) tasks: TaskTracker,
    pub(super) abort: CancellationToken,
    /// This generation's signal to leave the queue group.
    pub(super) leave: CancellationToken,
    pub(super) permits: Arc<Semaphore>,
}

pub(super) async fn serve_endpoint(
    micro: &async_nats::service::Service,
    endpoint: Arc<Endpoint>,
    subject: &str,
    lifetime: Lifetime,
) -> Result<(), Error> {
    let mut requests = micro
        .endpoint_builder()
        .name(&endpoint.operation)
        .add(subject)
        .await
        .map_err(|e| Error::nats(&format!("subscribe {subject}"), e))?;
    let Lifetime {
        tasks,
        abort,
        leave,
        permits,
    } = lifetime;
    tasks.clone().spawn(async move {
        // Ends when the micro service stops or the instance leaves the group: the
        // unsubscribe closes the stream once the requests already received are taken.
        let mut left = false;
        // Made once, not per request: each would join the token's waiters (a lock).
        let (aborted, leaving) = (abort.cancelled(), leave.cancelled());
        tokio::pin!(aborted, leaving);
        loop {
            let request = tokio::select! {
                _ = &mut aborted => break,
                _ = &mut leaving, if !left => {
                    left = true;
                    if let Err(err) = requests.stop().await {
                        tracing::warn!(%err, "cannot leave the queue group");
                    }
                    continue;
                }
                request = requests.next() => request,
            };
            let Some(request) = request else { break };
            let permit = match permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(TryAcquireError::NoPermits) => {
                    handler::shed(&endpoint, request).await;
                    continue;
                }
                Err(TryAcquireError::Closed) => break,
            };
            let endpoint = endpoint.clone();
            tasks.spawn(async move {
                handler::handle(&endpoint, request).await;
                drop(permit);
            });
        }
    });
    Ok(())
}

/// The routing task: leaves the queue group when the instance should not serve and
/// adds its endpoints again when it should.
pub(super) struct Rejoin {
    pub(super) name: String,
    pub(super) client: Client,
    pub(super) micro: Arc<tokio::sync::Mutex<Option<async_nats::service::Service>>>,
    pub(super) endpoints: Vec<(Arc<Endpoint>, String)>,
    pub(super) lifetime: Lifetime,
}

impl Rejoin {
    pub(super) async fn run(
        mut self,
        mut serving: tokio::sync::watch::Receiver<bool>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = serving.changed() => if changed.is_err() { return },
            }
            let serve = *serving.borrow_and_update();
            let joined = !self.lifetime.leave.is_cancelled();
            if !serve && joined {
                // What the server already routed here is taken before unsubscribing.
                let _ = round_trip(&self.client).await;
                self.lifetime.leave.cancel();
                tracing::warn!(service = %self.name, "left the queue group: the registry says another instance should serve");
            } else if serve && !joined {
                self.lifetime.leave = CancellationToken::new();
                let micro = self.micro.lock().await;
                let Some(micro) = micro.as_ref() else { return };
                for (endpoint, subject) in &self.endpoints {
                    if let Err(err) =
                        serve_endpoint(micro, endpoint.clone(), subject, self.lifetime.clone())
                            .await
                    {
                        tracing::warn!(%err, service = %self.name, "cannot rejoin the queue group");
                    }
                }
                tracing::info!(service = %self.name, "rejoined the queue group");
            }
        }
    }
}
