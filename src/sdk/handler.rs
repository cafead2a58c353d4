//! One request at an SDK endpoint: read the envelope, decode the payload in the
//! caller's codec, call the handler, encode its answer in the same codec and reply
//! through NATS micro, which sets `Nats-Service-Error(-Code)` on errors and counts them
//! in `$SRV.STATS`. Nothing a caller sends can make this panic or go unanswered.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use async_nats::service::Request;
use async_nats::service::error::Error as MicroError;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::{Meta, Outgoing, check_size};
use crate::error::{Error, ErrorKind};
use crate::observability::metrics as m;

/// `ce-type` of error replies, as the shared responder uses.
const ERROR_TYPE: &str = "io.switchyard.error";

/// A handler with its types erased: request attributes and raw payload in, the answer
/// encoded in the caller's codec out.
pub(crate) type BoxHandler =
    Arc<dyn Fn(Meta, Bytes) -> BoxFuture<'static, Result<Vec<u8>, Error>> + Send + Sync>;

/// Wraps a typed handler: decode in the request's codec, call, encode in the same codec.
pub(crate) fn typed<Req, Resp, F, Fut>(handler: F) -> BoxHandler
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Meta, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
{
    Arc::new(move |meta: Meta, payload: Bytes| {
        let codec = meta.content_type;
        match codec.decode::<Req>(&payload) {
            Ok(request) => {
                let answer = handler(meta, request);
                async move { codec.encode(&answer.await?) }.boxed()
            }
            Err(err) => futures::future::ready(Err(err)).boxed(),
        }
    })
}

/// What one endpoint needs to answer its requests.
pub(crate) struct Endpoint {
    pub client: Client,
    pub service: String,
    pub operation: String,
    /// `ce-type` assumed for requests that carry none: `io.switchyard.svc.<s>.<o>`.
    pub request_type: String,
    /// `ce-type` of answers: the request type plus `.reply`.
    pub reply_type: String,
    /// `ce-source` of answers: `urn:switchyard:svc:<service>:<instance>`.
    pub source: String,
    pub handler: BoxHandler,
    /// Recent handling times, reported in the endpoint's micro STATS.
    pub latency: Arc<super::latency::LatencyWindow>,
}

/// Answers one request; every outcome is counted under its code.
pub(crate) async fn handle(endpoint: &Endpoint, request: Request) {
    let started = Instant::now();
    if request.message.reply.is_none() {
        // Published, not requested: nobody to answer. Counted so it is visible.
        m::sdk_request(
            &endpoint.service,
            &endpoint.operation,
            None,
            started.elapsed(),
        );
        return;
    }
    let headers = request.message.headers.as_ref();
    let (meta, outcome) = match Meta::from_headers(headers, &endpoint.request_type) {
        Ok(meta) => {
            let payload = request.message.payload.clone();
            let call = AssertUnwindSafe(async { (endpoint.handler)(meta.clone(), payload).await });
            let outcome = call.catch_unwind().await.unwrap_or_else(|_| {
                tracing::error!(
                    service = %endpoint.service,
                    operation = %endpoint.operation,
                    "handler panicked"
                );
                Err(Error::internal("the handler panicked"))
            });
            (meta, outcome)
        }
        Err(err) => (Meta::unreadable(headers), Err(err)),
    };
    let answer = outcome.and_then(|payload| {
        let answer = Outgoing {
            headers: meta
                .follow_up(&endpoint.source, &endpoint.reply_type)
                .to_headers(),
            payload: payload.into(),
        };
        // An oversized answer would make the server close our connection: refuse it.
        check_size(&endpoint.client, &answer)?;
        Ok(answer)
    });
    let (code, sent) = match answer {
        Ok(answer) => (
            200,
            request
                .respond_with_headers(Ok(answer.payload), answer.headers)
                .await,
        ),
        Err(err) => (
            err.code(),
            reply_error(endpoint, &request, &meta, &err).await,
        ),
    };
    if let Err(err) = sent {
        tracing::warn!(%err, service = %endpoint.service, operation = %endpoint.operation, "cannot send reply");
    }
    let took = started.elapsed();
    endpoint.latency.record(took);
    m::sdk_request(&endpoint.service, &endpoint.operation, Some(code), took);
}

/// Answers a request this instance has no room for: 429 overloaded at once, without
/// decoding it (shedding must cost far less than handling).
pub(crate) async fn shed(endpoint: &Endpoint, request: Request) {
    let started = Instant::now();
    if request.message.reply.is_none() {
        m::sdk_request(
            &endpoint.service,
            &endpoint.operation,
            None,
            started.elapsed(),
        );
        return;
    }
    let err = Error::new(
        ErrorKind::Overloaded,
        format!(
            "service {} is at its concurrency limit; retry later",
            endpoint.service
        ),
    );
    let meta = Meta::from_headers(request.message.headers.as_ref(), &endpoint.request_type)
        .unwrap_or_else(|_| Meta::unreadable(request.message.headers.as_ref()));
    if let Err(send) = reply_error(endpoint, &request, &meta, &err).await {
        tracing::warn!(err = %send, service = %endpoint.service, operation = %endpoint.operation, "cannot send reply");
    }
    m::sdk_request(
        &endpoint.service,
        &endpoint.operation,
        Some(err.code()),
        started.elapsed(),
    );
}

/// Answers `request` with `err` as a micro error reply (`Nats-Service-Error`,
/// `Nats-Service-Error-Code`) carrying the follow-up attributes of `meta`.
async fn reply_error(
    endpoint: &Endpoint,
    request: &Request,
    meta: &Meta,
    err: &Error,
) -> Result<(), async_nats::PublishError> {
    let micro = MicroError {
        status: err.header_text(),
        code: usize::from(err.code()),
    };
    request
        .respond_with_headers(Err(micro), error_headers(endpoint, meta))
        .await
}

/// Follow-up headers for an error reply (micro adds the two error headers and an
/// empty body). Dropped if the request's own attributes were so large that echoing
/// them would exceed `max_payload`: the error headers alone still get through.
fn error_headers(endpoint: &Endpoint, meta: &Meta) -> HeaderMap {
    let outgoing = Outgoing {
        headers: meta.follow_up(&endpoint.source, ERROR_TYPE).to_headers(),
        payload: Bytes::new(),
    };
    match check_size(&endpoint.client, &outgoing) {
        Ok(()) => outgoing.headers,
        Err(_) => HeaderMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ContentType;

    #[tokio::test]
    async fn typed_handlers_answer_in_the_callers_codec() {
        let handler = typed(|_meta: Meta, n: u32| async move { Ok(n + 1) });
        let meta = Meta::new("urn:test", "t").with_content_type(ContentType::Json);
        assert_eq!(
            handler(meta, Bytes::from_static(b"41")).await.unwrap(),
            b"42"
        );
        let meta = Meta::new("urn:test", "t");
        let packed = ContentType::MsgPack.encode(&7u32).unwrap();
        let answer = handler(meta.clone(), packed.into()).await.unwrap();
        assert_eq!(ContentType::MsgPack.decode::<u32>(&answer).unwrap(), 8);
        let err = handler(meta, Bytes::from_static(b"\xc1"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
