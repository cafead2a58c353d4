//! Request-reply serving shared by every component endpoint: decode the envelope, call
//! the handler, answer in the caller's codec, turn every failure into a typed error
//! reply (`Nats-Service-Error`, `Nats-Service-Error-Code` and an error body), count and
//! time it, and drain on shutdown so no accepted request goes unanswered. The loop
//! itself is [`serve_messages`], for endpoints that handle raw messages (the gateway).

use crate::resilience::errorlog::Where;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_nats::{HeaderMap, Message, Subject};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use super::Context;
use crate::envelope::{Envelope, Meta, Outgoing, check_size};
use crate::error::{Error, ErrorKind};
use crate::observability::metrics as m;
use crate::subjects::headers as h;

/// Requests one endpoint handles at once; more wait in the subscription's buffer
/// (whose size the client bounds: past it, the server drops messages for this
/// connection as a slow consumer). Endpoints that must answer a flood rather than
/// queue it shed before this (the gateway).
pub const MAX_IN_FLIGHT: usize = 512;

/// One request-reply endpoint of a component.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Short name for metric labels and logs (`echo`), never the raw subject.
    pub name: &'static str,
    pub subject: String,
    pub queue_group: Option<&'static str>,
    /// `ce-type` assumed for requests that carry none, and the prefix of reply types.
    pub request_type: &'static str,
    /// `ce-source` of replies, e.g. `urn:switchyard:instance`.
    pub source: &'static str,
}

/// A received request: its attributes and the raw payload, decoded on demand.
#[derive(Debug, Clone)]
pub struct Request {
    pub subject: Subject,
    pub meta: Meta,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

impl Request {
    /// Decodes the payload in the codec the caller declared.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        self.meta.content_type.decode(&self.payload)
    }
}

/// What a handler answers: data in the caller's codec.
#[derive(Debug)]
pub struct Reply {
    data: Result<Bytes, Error>,
    /// Sent as given, without `ce-datacontenttype`: no codec applies (a stored value).
    raw: bool,
}

impl Reply {
    /// Encodes `data` in the codec of `request` (the caller's).
    pub fn to<T: Serialize>(request: &Request, data: &T) -> Reply {
        Reply {
            data: request.meta.content_type.encode(data).map(Bytes::from),
            raw: false,
        }
    }

    /// `payload` exactly as given, whatever the caller's codec (the data cache's values).
    pub fn raw(payload: Bytes) -> Reply {
        Reply {
            data: Ok(payload),
            raw: true,
        }
    }
}

/// The body of an error reply, in the caller's codec, next to the error headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ErrorDetail {
    pub kind: ErrorKind,
    pub code: u16,
    pub message: String,
}

impl From<&Error> for ErrorBody {
    fn from(err: &Error) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                kind: err.kind(),
                code: err.code(),
                message: err.message().to_string(),
            },
        }
    }
}

/// Subscribes `endpoint` and serves it with `handler` until shutdown. The supervisor
/// confirms with the server that the subscription is live before declaring readiness.
pub async fn serve<H, Fut>(
    ctx: &Context,
    component: &'static str,
    endpoint: Endpoint,
    handler: H,
) -> Result<(), Error>
where
    H: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, Error>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let shared = Arc::new(endpoint.clone());
    let ctx2 = ctx.clone();
    serve_messages(ctx, &endpoint, move |message: Message| {
        let (ctx, handler, endpoint) = (ctx2.clone(), handler.clone(), shared.clone());
        async move { handle(&ctx, component, &endpoint, handler.as_ref(), message).await }
    })
    .await
}

/// The subscription loop under every endpoint: subscribes `endpoint.subject` (in its
/// queue group), runs `handler` for each message inside [`Context::spawn`] with at most
/// [`MAX_IN_FLIGHT`] (512) at once, and on shutdown drains the subscription so every
/// message already accepted is handled. The handler answers (or not) by itself; [`serve`]
/// is this plus envelope decoding and typed replies, the gateway is this plus forwarding.
pub async fn serve_messages<H, Fut>(
    ctx: &Context,
    endpoint: &Endpoint,
    handler: H,
) -> Result<(), Error>
where
    H: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve_messages_limited(ctx, endpoint, MAX_IN_FLIGHT, handler).await
}

/// [`serve_messages`] with at most `max_in_flight` handlers at once (at least one).
pub async fn serve_messages_limited<H, Fut>(
    ctx: &Context,
    endpoint: &Endpoint,
    max_in_flight: usize,
    handler: H,
) -> Result<(), Error>
where
    H: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let subject = endpoint.subject.clone();
    let mut subscriber = match endpoint.queue_group {
        Some(group) => {
            ctx.client
                .queue_subscribe(subject.clone(), group.into())
                .await
        }
        None => ctx.client.subscribe(subject.clone()).await,
    }
    .map_err(|e| Error::nats(&format!("subscribe {subject}"), e))?;

    let ctx2 = ctx.clone();
    let permits = Arc::new(Semaphore::new(
        max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
    ));
    ctx.spawn(async move {
        let mut draining = false;
        // Made once: a new one per message would join (and leave) the token's list of
        // waiters each time, a lock per message.
        let stopping = ctx2.shutdown().clone();
        let stopping = stopping.cancelled();
        tokio::pin!(stopping);
        loop {
            let message = tokio::select! {
                _ = &mut stopping, if !draining => {
                    draining = true;
                    if let Err(err) = subscriber.drain().await {
                        tracing::warn!(%err, %subject, "drain failed");
                        break;
                    }
                    continue;
                }
                message = subscriber.next() => message,
            };
            let Some(message) = message else { break };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let work = handler(message);
            ctx2.spawn(async move {
                work.await;
                drop(permit);
            });
        }
        tracing::debug!(%subject, "endpoint stopped");
    });
    Ok(())
}

async fn handle<H, Fut>(
    ctx: &Context,
    component: &'static str,
    endpoint: &Endpoint,
    handler: &H,
    message: Message,
) where
    H: Fn(Request) -> Fut,
    Fut: Future<Output = Result<Reply, Error>>,
{
    let started = Instant::now();
    let Some(reply_to) = message.reply.clone() else {
        // Published, not requested: nobody to answer. Counted so it is visible.
        m::rpc_request(component, endpoint.name, None, started.elapsed());
        return;
    };
    let headers = message.headers.clone().unwrap_or_default();
    let failed = |err: &Error, traceparent: Option<&str>| {
        tracing::debug!(component, endpoint = endpoint.name, code = err.code(), %err, "answered with an error");
        ctx.errors.report(
            component,
            err,
            Where {
                subject: Some(message.subject.as_str()),
                traceparent,
                ..Where::default()
            },
        );
    };
    let (outgoing, code) = match Meta::from_headers(Some(&headers), endpoint.request_type) {
        Err(err) => {
            failed(&err, None);
            (
                error_reply(&Meta::unreadable(Some(&headers)), endpoint, &err),
                err.code(),
            )
        }
        Ok(meta) => {
            let request = Request {
                subject: message.subject.clone(),
                meta,
                headers,
                payload: message.payload.clone(),
            };
            let meta = request.meta.clone();
            let reply = handler(request).await;
            match reply.and_then(|reply| reply.data.map(|payload| (payload, reply.raw))) {
                Ok((payload, raw)) => success_reply(ctx, &meta, endpoint, payload, raw),
                Err(err) => {
                    failed(&err, Some(&meta.traceparent));
                    (error_reply(&meta, endpoint, &err), err.code())
                }
            }
        }
    };
    if let Err(err) = ctx
        .client
        .publish_with_headers(reply_to, outgoing.headers, outgoing.payload)
        .await
    {
        tracing::warn!(%err, endpoint = endpoint.name, "cannot send reply");
    }
    m::rpc_request(component, endpoint.name, Some(code), started.elapsed());
}

fn success_reply(
    ctx: &Context,
    request: &Meta,
    endpoint: &Endpoint,
    payload: Bytes,
    raw: bool,
) -> (Outgoing, u16) {
    let meta = request.follow_up(endpoint.source, reply_type(endpoint));
    let mut headers = meta.to_headers();
    if raw {
        headers = without(&headers, h::CE_DATACONTENTTYPE);
    }
    let outgoing = Outgoing { headers, payload };
    // An oversized answer would make the server close our connection: refuse it.
    match check_size(&ctx.client, &outgoing) {
        Ok(()) => (outgoing, 200),
        Err(err) => (error_reply(request, endpoint, &err), err.code()),
    }
}

/// Error headers plus an [`ErrorBody`] in the caller's codec.
pub(crate) fn error_reply(request: &Meta, endpoint: &Endpoint, err: &Error) -> Outgoing {
    let meta = request.follow_up(endpoint.source, "io.switchyard.error");
    let mut headers = meta.to_headers();
    // Plain text for people reading `nats req` output.
    headers.insert(h::SERVICE_ERROR, err.header_text());
    headers.insert(h::SERVICE_ERROR_CODE, err.code().to_string());
    let payload = Envelope::new(meta, ErrorBody::from(err))
        .encode()
        .map(|(_, payload)| payload)
        .unwrap_or_default();
    Outgoing {
        headers,
        payload: payload.into(),
    }
}

/// `headers` less every value of `name`.
fn without(headers: &HeaderMap, name: &str) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for (header, values) in headers.iter() {
        let header_name: &str = header.as_ref();
        if !header_name.eq_ignore_ascii_case(name) {
            for value in values {
                kept.append(header.clone(), value.clone());
            }
        }
    }
    kept
}

fn reply_type(endpoint: &Endpoint) -> String {
    format!("{}.reply", endpoint.request_type)
}
