//! The `instance` component: every process answers `sys.ping` (all instances reply, so
//! `nats req sys.ping '' --replies 0` counts them) and serves `sys.echo`, which shows
//! a caller exactly how Switchyard read its envelope, in the caller's own codec.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::component::responder::{self, Endpoint, Reply, Request};
use crate::component::{Component, Context, Instance, Subscription};
use crate::envelope::Meta;
use crate::error::Error;
use crate::subjects::{QUEUE_GROUP, SYS_ECHO, SYS_PING};

pub const NAME: &str = "instance";
const SOURCE: &str = "urn:switchyard:instance";

/// The answer to `sys.ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub instance: String,
    pub version: String,
    pub started: String,
    pub components: Vec<String>,
}

impl From<&Instance> for Pong {
    fn from(instance: &Instance) -> Self {
        Pong {
            instance: instance.id.clone(),
            version: instance.version.to_string(),
            started: instance.started.clone(),
            components: instance.components.iter().map(|c| c.to_string()).collect(),
        }
    }
}

/// The answer to `sys.echo`: the attributes as read, and the payload as decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Echo {
    pub meta: Meta,
    pub data: rmpv::Value,
}

pub struct InstanceComponent;

impl Component for InstanceComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn subscriptions(&self) -> Vec<Subscription> {
        vec![
            Subscription {
                subject: SYS_PING,
                queue_group: None,
                description: "every instance answers who it is and what it runs",
            },
            Subscription {
                subject: SYS_ECHO,
                queue_group: Some(QUEUE_GROUP),
                description: "answers the request's envelope and payload as read",
            },
        ]
    }

    fn start(&self, ctx: Context) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let pong = Pong::from(ctx.instance.as_ref());
            let ping = Endpoint {
                name: "ping",
                subject: SYS_PING.to_string(),
                queue_group: None,
                request_type: "io.switchyard.sys.ping",
                source: SOURCE,
            };
            responder::serve(&ctx, NAME, ping, move |request: Request| {
                let reply = Reply::to(&request, &pong);
                async move { Ok(reply) }
            })
            .await?;
            let echo = Endpoint {
                name: "echo",
                subject: SYS_ECHO.to_string(),
                queue_group: Some(QUEUE_GROUP),
                request_type: "io.switchyard.sys.echo",
                source: SOURCE,
            };
            responder::serve(&ctx, NAME, echo, |request: Request| async move {
                let data: rmpv::Value = request.decode()?;
                let echo = Echo {
                    meta: request.meta.clone(),
                    data,
                };
                Ok(Reply::to(&request, &echo))
            })
            .await
        })
    }
}
