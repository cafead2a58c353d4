//! The API gateway: clients call `api.<service>.<operation>` (NATS) or
//! `POST /v1/<service>/<operation>` (HTTP), and the gateway forwards to the service's
//! endpoint `svc.<service>.<operation>`.
//!
//! - [`forward`]: the core both ingresses share: route and content-type checks, the
//!   registry lookup (cached, no I/O), the deadline, the forward, the error codes
//!   (400 bad route, 404 unknown service, 413, 415, 503 no live instance or no
//!   responders, 504 timeout).
//! - [`call`]: one call through the service's guard: retries (backoff with full jitter,
//!   within the caller's deadline and the service's retry budget), the circuit breaker,
//!   the fallback chain (`Switchyard-Fallback` on a fallback's reply).
//! - [`policy`]: a service's policy value in KV bucket `policies` (timeout, retry,
//!   budget, breaker, fallbacks, idempotent operations), checked.
//! - [`guard`]: the policies in force, watched live, and each routed service's guard;
//!   [`breaker_events`]: `events.sys.breaker.<opened|closed>`.
//! - [`http`]: the HTTP ingress (axum); [`http_auth`]: its API keys and per-key rate
//!   limits (401, 429), with the keys' configuration in [`api_keys`].
//!
//! The service's reply, error replies included, goes back to the caller untouched (after
//! retries: the last one); the gateway's own errors have the responder's shape
//! (`Nats-Service-Error`, `Nats-Service-Error-Code`, an error body in the caller's
//! codec). Every error reply is reported to the error log (`errors.gateway`).

pub mod api_keys;
pub mod breaker_command;
pub mod breaker_events;
mod call;
pub mod forward;
pub mod guard;
pub mod http;
pub mod http_auth;
pub mod policy;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_nats::{HeaderMap, Message};
use futures::future::BoxFuture;

use self::breaker_events::BreakerEvents;
use self::forward::{Forwarder, REQUEST_TYPE, SOURCE};
use self::guard::Policies;
use crate::component::responder::{self, Endpoint, error_reply};
use crate::component::{Component, Context, Subscription};
use crate::config::{Config, GatewayConfig};
use crate::error::Error;
use crate::integration::registry::view::RegistryView;
use crate::subjects::{API, QUEUE_GROUP, SYS_GATEWAY_BREAKER};

pub const NAME: &str = "gateway";

/// The gateway component: `api.>` in queue group `switchyard`, and the HTTP ingress.
pub struct GatewayComponent {
    config: GatewayConfig,
    /// Bound by [`Component::configure`] so a busy port fails before anything starts.
    listener: Mutex<Option<std::net::TcpListener>>,
}

impl GatewayComponent {
    pub fn new(config: GatewayConfig) -> GatewayComponent {
        GatewayComponent {
            config,
            listener: Mutex::new(None),
        }
    }
}

impl Default for GatewayComponent {
    fn default() -> Self {
        GatewayComponent::new(GatewayConfig::default())
    }
}

impl Component for GatewayComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn subscriptions(&self) -> Vec<Subscription> {
        vec![
            Subscription {
                subject: API,
                queue_group: Some(QUEUE_GROUP),
                description: "forwards to svc.<service>.<operation> (404, 503, 504)",
            },
            Subscription {
                subject: SYS_GATEWAY_BREAKER,
                queue_group: None,
                description: "opens this gateway's breaker for the service, on command",
            },
        ]
    }

    fn configure(&mut self, config: &Config) -> Result<(), Error> {
        self.config = config.gateway.clone();
        // Refused here too (not only by `Config::load`), for settings changed after it.
        http_auth::HttpAuth::new(&self.config)?;
        let listener = http::bind(self.config.http)?;
        if let Ok(mut slot) = self.listener.lock() {
            *slot = Some(listener);
        }
        Ok(())
    }

    fn start(&self, ctx: Context) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let listener = match self.listener.lock().ok().and_then(|mut l| l.take()) {
                Some(listener) => listener,
                None => http::bind(self.config.http)?,
            };
            let stop = ctx.shutdown().clone();
            let view = RegistryView::start(&ctx.client, stop.clone()).await?;
            let events = BreakerEvents::start(&ctx);
            let policies =
                Policies::start(&ctx.client, self.config.timeout, Some(events), stop).await?;
            breaker_command::serve(&ctx, policies.clone()).await?;
            let forwarder = Forwarder::new(
                ctx.client.clone(),
                view,
                policies,
                ctx.errors.clone(),
                self.config.max_in_flight,
            );
            let auth = Arc::new(http_auth::HttpAuth::new(&self.config)?);
            let addr = http::serve(&ctx, forwarder.clone(), auth, listener)?;
            tracing::info!(%addr, "gateway HTTP ingress listening");
            serve_nats(&ctx, forwarder).await
        })
    }
}

/// Handlers the `api.>` loop runs beyond the forwarder's `max_in_flight`: the requests
/// being shed, each answered at once. The loop waits for a slot only when even those
/// answers cannot go out (the connection is stuck); then messages wait in the bounded
/// subscription buffer.
const SHED_HEADROOM: usize = 256;

/// `api.>`: every message goes through [`responder::serve_messages_limited`] (bounded,
/// drained on shutdown) into the forwarder, which sheds what is over its limit; the
/// reply goes back exactly as the service sent it.
async fn serve_nats(ctx: &Context, forwarder: Forwarder) -> Result<(), Error> {
    let endpoint = Endpoint {
        name: "api",
        subject: "api.>".into(),
        queue_group: Some(QUEUE_GROUP),
        request_type: REQUEST_TYPE,
        source: SOURCE,
    };
    let shared = Arc::new(endpoint.clone());
    let limit = forwarder.max_in_flight().saturating_add(SHED_HEADROOM);
    responder::serve_messages_limited(ctx, &endpoint, limit, move |message: Message| {
        let (forwarder, endpoint) = (forwarder.clone(), shared.clone());
        async move { handle(&forwarder, &endpoint, message).await }
    })
    .await
}

async fn handle(forwarder: &Forwarder, endpoint: &Endpoint, message: Message) {
    let started = Instant::now();
    let Message {
        subject,
        reply,
        payload,
        headers,
        ..
    } = message;
    let Some(reply_to) = reply else {
        tracing::debug!(%subject, "published to api.* without a reply subject; dropped");
        return;
    };
    let headers = headers.unwrap_or_default();
    let mut tokens = subject.split('.');
    let result = match (tokens.next(), tokens.next(), tokens.next(), tokens.next()) {
        (Some(_api), Some(service), Some(operation), None) => {
            forwarder
                .forward(service, operation, headers, payload)
                .await
        }
        _ => Err(forwarder.refuse(
            &headers,
            Error::invalid_input(format!(
                "subject {:?} is not api.<service>.<operation>",
                subject.as_str()
            )),
            started,
        )),
    };
    let (headers, payload): (Option<HeaderMap>, _) = match result {
        Ok(reply) => (reply.headers, reply.payload),
        Err(refusal) => {
            let outgoing = error_reply(&refusal.meta, endpoint, &refusal.error);
            (Some(outgoing.headers), outgoing.payload)
        }
    };
    let client = forwarder.client();
    let sent = match headers {
        Some(headers) => {
            client
                .publish_with_headers(reply_to, headers, payload)
                .await
        }
        None => client.publish(reply_to, payload).await,
    };
    if let Err(err) = sent {
        tracing::warn!(%err, "gateway cannot send a reply");
    }
}
