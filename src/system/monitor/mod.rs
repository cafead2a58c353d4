//! The system monitor: one status document (see [`status`]) on request, `sys.status`,
//! and the same figures as gauges on `/metrics`, refreshed every few seconds.
//!
//! Every instance running the monitor exports the gauges (they describe the shared
//! server, so the values agree); dashboards aggregate them with `max`.

pub mod status;

use std::time::Duration;

use futures::future::BoxFuture;

use crate::component::responder::{self, Endpoint, Reply, Request};
use crate::component::{Component, Context, Subscription};
use crate::error::Error;
use crate::observability::metrics as m;
use crate::subjects::{QUEUE_GROUP, SYS_STATUS};

pub const NAME: &str = "monitor";
const SOURCE: &str = "urn:switchyard:monitor";
/// How often the gauges are refreshed.
const REFRESH: Duration = Duration::from_secs(5);

pub struct MonitorComponent;

impl Component for MonitorComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn subscriptions(&self) -> Vec<Subscription> {
        vec![Subscription {
            subject: SYS_STATUS,
            queue_group: Some(QUEUE_GROUP),
            description: "the status document: services, health, STATS, streams, consumers, DLQ",
        }]
    }

    fn start(&self, ctx: Context) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let endpoint = Endpoint {
                name: "status",
                subject: SYS_STATUS.to_string(),
                queue_group: Some(QUEUE_GROUP),
                request_type: "io.switchyard.sys.status",
                source: SOURCE,
            };
            let (client, js) = (ctx.client.clone(), ctx.jetstream.clone());
            responder::serve(&ctx, NAME, endpoint, move |request: Request| {
                let (client, js) = (client.clone(), js.clone());
                async move {
                    let status = status::collect(&client, &js).await?;
                    Ok(Reply::to(&request, &status))
                }
            })
            .await?;
            let refresher = ctx.clone();
            ctx.spawn(async move { export(refresher).await });
            Ok(())
        })
    }
}

async fn export(ctx: Context) {
    let stop = ctx.shutdown().clone();
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match status::collect(&ctx.client, &ctx.jetstream).await {
            Ok(status) => m::system_status(&status),
            Err(err) => tracing::debug!(%err, "cannot build the status document"),
        }
    }
}

/// `switchyard status [--json]`.
pub async fn cli(config: crate::config::Config, json: bool) -> Result<(), Error> {
    let client = crate::nats::connect::connect_tool(&config, "status").await?;
    let request = async_nats::Request::new()
        .payload(bytes::Bytes::from_static(b"{}"))
        .timeout(Some(Duration::from_secs(10)));
    let reply = client
        .send_request(SYS_STATUS, request)
        .await
        .map_err(|e| {
            let err = Error::from(e);
            Error::new(
                err.kind(),
                format!(
                    "{SYS_STATUS}: {} (is a monitor running? switchyard up)",
                    err.message()
                ),
            )
        })?;
    if let Some(err) = crate::envelope::error_from_reply(reply.headers.as_ref()) {
        return Err(err);
    }
    let status: status::Status = serde_json::from_slice(&reply.payload)
        .map_err(|e| Error::internal(format!("unreadable status document: {e}")))?;
    if json {
        let text = serde_json::to_string_pretty(&status)
            .map_err(|e| Error::internal(format!("cannot print the status: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", status::render(&status));
    }
    Ok(())
}
