//! `sys.gateway.breaker.<service>`: a command, to every gateway instance at once (no
//! queue group), to open its circuit breaker for a service now. Sent by the
//! coordinator's `open_breaker` action (say, when the service's instances turn
//! unhealthy), or by an operator: `nats pub sys.gateway.breaker.echo ''`. The breaker
//! then probes after its open time as usual; a service whose policy has no breaker
//! ignores it.

use futures::StreamExt;

use super::guard::Policies;
use crate::component::Context;
use crate::error::Error;
use crate::resilience::window::now_ms;
use crate::subjects::validate_token;

/// Subscribes and serves until shutdown; returns once the subscription is live.
pub async fn serve(ctx: &Context, policies: Policies) -> Result<(), Error> {
    let mut commands = ctx
        .client
        .subscribe("sys.gateway.breaker.*")
        .await
        .map_err(|e| Error::nats("subscribe sys.gateway.breaker.*", e))?;
    let stop = ctx.shutdown().clone();
    ctx.spawn(async move {
        loop {
            let command = tokio::select! {
                _ = stop.cancelled() => return,
                next = commands.next() => match next {
                    Some(command) => command,
                    None => return,
                },
            };
            let Some(service) = command.subject.split('.').nth(3) else {
                continue;
            };
            if validate_token("service", service).is_err() {
                continue;
            }
            let opened = policies.guard(service).force_open(now_ms());
            tracing::info!(service, opened, "breaker opened on command");
        }
    });
    Ok(())
}
