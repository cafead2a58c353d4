//! The `instance` component: every process answers `sys.ping` (all instances reply, so
//! `nats req sys.ping '' --replies 0` counts them) and serves `sys.echo`, which shows
//! a caller exactly how Switchyard read its envelope, in the caller's own codec.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::component::responder::{self, Endpoint, Reply, Request};
use crate::component::{Component, Context, Instance, Subscription};
use crate::envelope::Meta;
use crate::error::Error;
use crate::subjects::{QUEUE_GROUP, SYS_ECHO, SYS_LOG_LEVEL, SYS_PING};

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
                subject: SYS_LOG_LEVEL,
                queue_group: None,
                description: "every instance answers its log filter, or changes it",
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
            let level_endpoint = Endpoint {
                name: "log_level",
                subject: SYS_LOG_LEVEL.to_string(),
                queue_group: None,
                request_type: "io.switchyard.sys.log.level",
                source: SOURCE,
            };
            let instance = ctx.instance.id.clone();
            responder::serve(&ctx, NAME, level_endpoint, move |request: Request| {
                let instance = instance.clone();
                async move { log_level(&request, instance) }
            })
            .await?;
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

/// The answer to `sys.log.level`: this instance's filter after the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLevel {
    pub instance: String,
    pub filter: String,
}

/// `sys.log.level`: an empty payload asks; `{"filter":"sync=debug,info"}` or the bare
/// filter text changes it. A filter that does not parse is refused (400) and the one in
/// force stays.
fn log_level(request: &Request, instance: String) -> Result<Reply, Error> {
    let text = std::str::from_utf8(&request.payload)
        .map_err(|_| Error::invalid_input("the filter must be UTF-8 text"))?
        .trim();
    let wanted = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => map
            .get("filter")
            .and_then(|f| f.as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::invalid_input("expected {\"filter\": \"<filter>\"}"))?,
        _ => text.trim_matches('"').to_string(),
    };
    let filter = if wanted.is_empty() {
        crate::observability::logging::current_filter()
            .ok_or_else(|| Error::unavailable("this process does not manage its log filter"))?
    } else {
        crate::observability::logging::set_filter(&wanted)?
    };
    Ok(Reply::to(request, &LogLevel { instance, filter }))
}
