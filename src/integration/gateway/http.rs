//! The gateway's HTTP ingress: `POST /v1/<service>/<operation>` with a JSON body goes
//! through the same core as `api.<service>.<operation>` (directly, no NATS hop to
//! `api.*`) and answers JSON with status 200 or the error code as the HTTP status;
//! `GET /v1/services` lists the registry. Durable tasks: `POST
//! /v1/tasks/<service>/<operation>` submits (202 with the task id) and `GET
//! /v1/tasks/<id>[?wait_ms=N]` reads the state (with a wait, once the task ended),
//! both through the `tasks` component's subjects (`tasks.submit.*`, `tasks.get.*`);
//! a service named `tasks` is therefore not reachable as `POST
//! /v1/tasks/<operation>`. CloudEvents `ce-*` headers (HTTP binary mode) and W3C
//! `traceparent`/`tracestate` are carried into the envelope; `X-Request-Timeout`
//! (milliseconds) is the caller's deadline. Every request runs in [`Context::spawn`],
//! and the server stops gracefully with the component. Every route, the fallback
//! included, is behind [`http_auth::guard`]: API keys and their rate limits when
//! required; the key's name goes on as `Switchyard-Api-Key-Name`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Serialize;

use super::forward::{Forwarder, REQUEST_TYPE};
use super::http_auth::{self, HttpAuth};
use crate::component::Context;
use crate::component::responder::ErrorBody;
use crate::envelope::{ContentType, Meta, error_from_reply, to_display_json};
use crate::error::{Error, ErrorKind};
use crate::integration::registry::RegistryEntry;
use crate::resilience::tasks::wait::MAX_WAIT;
use crate::subjects::headers as h;

/// The caller's deadline in milliseconds, carried as `Switchyard-Timeout-Ms`.
pub const REQUEST_TIMEOUT: &str = "x-request-timeout";
/// How long a task submit or read may take: both answer at once (a KV write and a
/// stream publish at most), so this is only reached when the tasks component is down.
const TASKS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct HttpState {
    ctx: Context,
    forwarder: Forwarder,
}

/// Binds the HTTP address; a busy port is one clear error.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Error::unavailable(format!(
                "gateway HTTP address {addr} is already in use: stop what holds it or choose another with --http"
            ))
        } else {
            Error::unavailable(format!("cannot listen on {addr}: {e}"))
        }
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::internal(format!("gateway HTTP listener: {e}")))?;
    Ok(listener)
}

/// Serves on `listener` until the component's shutdown; returns the bound address.
pub fn serve(
    ctx: &Context,
    forwarder: Forwarder,
    auth: Arc<HttpAuth>,
    listener: std::net::TcpListener,
) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| Error::internal(format!("gateway HTTP listener: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("gateway HTTP local address: {e}")))?;
    let max_body = ctx.client.max_payload();
    let app = Router::new()
        .route("/v1/services", get(services))
        .route("/v1/{service}/{operation}", post(call))
        .route("/v1/tasks/{service}/{operation}", post(submit_task))
        .route("/v1/tasks/{id}", get(get_task))
        .fallback(|| async {
            error_response(&Error::not_found(
                "no such route: POST /v1/<service>/<operation>, GET /v1/services, \
                 POST /v1/tasks/<service>/<operation> or GET /v1/tasks/<id>",
            ))
        })
        .layer(DefaultBodyLimit::max(max_body))
        // Outermost, so a refused request is not even read.
        .layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            http_auth::guard,
        ))
        .with_state(HttpState {
            ctx: ctx.clone(),
            forwarder,
        });
    if auth.required() {
        tracing::info!(
            keys = auth.key_count(),
            "gateway HTTP ingress requires an API key"
        );
    } else if addr.ip().is_loopback() {
        tracing::info!(%addr, "gateway HTTP ingress is open: no API key required (loopback)");
    } else {
        tracing::warn!(
            %addr,
            "gateway HTTP ingress is open to the network without API keys: set \
             gateway.require_api_key and configure keys"
        );
    }
    let stop = ctx.shutdown().clone();
    ctx.spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(err) = server.await {
            tracing::error!(%err, "gateway HTTP server failed");
        }
    });
    Ok(addr)
}

async fn call(
    State(state): State<HttpState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let nats = envelope_headers(&headers);
    let refuse =
        |error: Error| error_response(&state.forwarder.refuse(&nats, error, started).error);
    let Ok(Path((service, operation))) = path else {
        return refuse(Error::invalid_input(
            "the path is /v1/<service>/<operation>",
        ));
    };
    let body = match json_body(&headers, body) {
        Ok(body) => body,
        Err(err) => return refuse(err),
    };
    let (ctx, forwarder) = (state.ctx.clone(), state.forwarder.clone());
    // Tracked, so a graceful stop waits for the forward (and its answer) to finish.
    let forwarded =
        ctx.spawn(async move { forwarder.forward(&service, &operation, nats, body).await });
    match forwarded.await {
        Ok(Ok(reply)) => reply_response(reply),
        Ok(Err(refusal)) => error_response(&refusal.error),
        Err(err) => error_response(&Error::internal(format!("gateway request failed: {err}"))),
    }
}

/// The request's body if it may be forwarded: within `max_payload` and JSON (or
/// without a content type).
fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Bytes, Error> {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "the body exceeds the NATS max_payload: {}",
                    rejection.body_text()
                ),
            ));
        }
        Err(rejection) => return Err(Error::invalid_input(rejection.body_text())),
    };
    if let Some(value) = headers.get(header::CONTENT_TYPE) {
        let json = value
            .to_str()
            .ok()
            .and_then(|v| ContentType::parse(v).ok())
            .is_some_and(|c| c == ContentType::Json);
        if !json {
            return Err(Error::new(
                ErrorKind::UnsupportedMediaType,
                "the HTTP ingress takes Content-Type: application/json (curl: --json or -H \
                 'content-type: application/json'; plain -d sends a form)",
            ));
        }
    }
    Ok(body)
}

/// `POST /v1/tasks/<service>/<operation>`: `tasks.submit.<service>.<operation>`,
/// answered 202 with `{"id","state"}`.
async fn submit_task(
    State(state): State<HttpState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(Path((service, operation))) = path else {
        return error_response(&Error::invalid_input(
            "the path is /v1/tasks/<service>/<operation>",
        ));
    };
    let submitted = json_body(&headers, body).and_then(|body| {
        let subject = crate::subjects::tasks_submit(&service, &operation)?;
        Ok((subject, body))
    });
    match submitted {
        Ok((subject, body)) => {
            let mut response = tasks_request(&state, subject, &headers, body, Duration::ZERO).await;
            if response.status() == StatusCode::OK {
                *response.status_mut() = StatusCode::ACCEPTED;
            }
            response
        }
        Err(err) => error_response(&err),
    }
}

/// `GET /v1/tasks/<id>[?wait_ms=N]`: `tasks.get.<id>`, the task's state (404 unknown);
/// with `wait_ms`, once the task has ended or after N ms.
async fn get_task(
    State(state): State<HttpState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let request = match path {
        Ok(Path(id)) => crate::subjects::tasks_get(&id)
            .and_then(|subject| Ok((subject, wait_ms(query.as_deref())?))),
        Err(_) => Err(Error::invalid_input("the path is /v1/tasks/<id>")),
    };
    match request {
        Ok((subject, None)) => {
            tasks_request(&state, subject, &headers, Bytes::new(), Duration::ZERO).await
        }
        Ok((subject, Some(ms))) => {
            let body = Bytes::from(format!("{{\"wait_ms\":{ms}}}"));
            // The component refuses longer waits at once.
            let wait = Duration::from_millis(ms).min(MAX_WAIT);
            tasks_request(&state, subject, &headers, body, wait).await
        }
        Err(err) => error_response(&err),
    }
}

/// `wait_ms` from the query of `GET /v1/tasks/<id>`, the only parameter it takes (the
/// tasks component checks its bounds).
fn wait_ms(query: Option<&str>) -> Result<Option<u64>, Error> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    match query.split_once('=') {
        Some(("wait_ms", ms)) if !ms.contains('&') => ms.parse().map(Some).map_err(|_| {
            Error::invalid_input(format!(
                "wait_ms {ms:?} is not a whole number of milliseconds"
            ))
        }),
        _ => Err(Error::invalid_input(format!(
            "GET /v1/tasks/<id> takes only ?wait_ms=N, not {query:?}"
        ))),
    }
}

/// A request to the `tasks` component, answered as the gateway answers services.
async fn tasks_request(
    state: &HttpState,
    subject: String,
    headers: &HeaderMap,
    body: Bytes,
    wait: Duration,
) -> Response {
    let request = async_nats::Request::new()
        .headers(envelope_headers(headers))
        .payload(body)
        .timeout(Some(TASKS_TIMEOUT + wait));
    let client = state.ctx.client.clone();
    // Tracked, so a graceful stop waits for the answer.
    let answered = state
        .ctx
        .spawn(async move { client.send_request(subject, request).await });
    match answered.await {
        Ok(Ok(reply)) => reply_response(reply),
        Ok(Err(err)) => error_response(&Error::from(err)),
        Err(err) => error_response(&Error::internal(format!("tasks request failed: {err}"))),
    }
}

/// The NATS headers of the forwarded request: the caller's `ce-*`, trace context and
/// deadline, completed into a JSON envelope.
fn envelope_headers(http: &HeaderMap) -> async_nats::HeaderMap {
    let mut nats = async_nats::HeaderMap::new();
    for (name, value) in http {
        let name = name.as_str();
        let carried = name.starts_with("ce-") || name == h::TRACEPARENT || name == h::TRACESTATE;
        if let (true, Ok(value)) = (carried, value.to_str()) {
            nats.insert(name, value);
        }
    }
    // Set by `http_auth::guard` only (a caller's own is removed).
    if let Some(Ok(key)) = http.get(http_auth::KEY_NAME).map(|v| v.to_str()) {
        nats.insert(h::API_KEY_NAME, key);
    }
    if let Some(timeout) = http.get(REQUEST_TIMEOUT) {
        nats.insert(
            h::TIMEOUT_MS,
            String::from_utf8_lossy(timeout.as_bytes()).as_ref(),
        );
    }
    nats.insert(h::CE_DATACONTENTTYPE, ContentType::Json.mime());
    // Missing attributes filled in; a wrong ce-specversion is left for the core to refuse.
    if let Ok(meta) = Meta::from_headers(Some(&nats), REQUEST_TYPE) {
        meta.write_headers(&mut nats);
    }
    nats
}

/// The service's answer as JSON: its status from `Nats-Service-Error-Code`, its `ce-*`
/// and trace headers carried over.
fn reply_response(reply: async_nats::Message) -> Response {
    let headers = reply.headers.unwrap_or_default();
    let codec = headers
        .get(h::CE_DATACONTENTTYPE)
        .or_else(|| headers.get(h::CONTENT_TYPE))
        .and_then(|v| ContentType::parse(v.as_str()).ok())
        .unwrap_or(ContentType::Json);
    let (status, body) = match headers.get(h::SERVICE_ERROR_CODE) {
        None => (StatusCode::OK, to_json(codec, reply.payload)),
        Some(code) => {
            let code = code.as_str().trim().parse::<u16>().unwrap_or(500);
            let status = StatusCode::from_u16(code)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            let body = match codec.decode::<ErrorBody>(&reply.payload) {
                Ok(body) => json_bytes(&body),
                // An error told in headers only: the body is built from them.
                Err(_) => {
                    let told = error_from_reply(Some(&headers))
                        .unwrap_or_else(|| Error::new(ErrorKind::from_code(code), ""));
                    json_bytes(&ErrorBody::from(&told))
                }
            };
            (status, body)
        }
    };
    let mut response = json_response(status, body);
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        let carried = (name.starts_with("ce-") && name != h::CE_DATACONTENTTYPE)
            || name == h::TRACEPARENT
            || name == h::TRACESTATE
            || name == h::FALLBACK;
        let value = values.first().map(|v| HeaderValue::from_str(v.as_str()));
        if let (true, Ok(name), Some(Ok(value))) = (carried, HeaderName::try_from(name), value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn to_json(codec: ContentType, payload: Bytes) -> Bytes {
    match codec {
        ContentType::Json => payload,
        ContentType::MsgPack => to_display_json(&payload).into(),
    }
}

pub(super) fn error_response(err: &Error) -> Response {
    let body = json_bytes(&ErrorBody::from(err));
    let status = StatusCode::from_u16(err.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, body)
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, ContentType::Json.mime())],
        body,
    )
        .into_response()
}

fn json_bytes<T: Serialize>(value: &T) -> Bytes {
    serde_json::to_vec(value).unwrap_or_default().into()
}

/// One service in `GET /v1/services`.
#[derive(Debug, Serialize)]
struct ServiceSummary {
    name: String,
    /// Instances that may receive traffic.
    live: usize,
    instances: Vec<RegistryEntry>,
}

async fn services(State(state): State<HttpState>) -> Response {
    let mut services: Vec<ServiceSummary> = Vec::new();
    // Sorted by service, so each service's instances are consecutive.
    for entry in state.forwarder.view().all() {
        if services.last().is_none_or(|s| s.name != entry.name) {
            services.push(ServiceSummary {
                name: entry.name.clone(),
                live: 0,
                instances: Vec::new(),
            });
        }
        if let Some(service) = services.last_mut() {
            service.live += usize::from(entry.health.is_live());
            service.instances.push(entry);
        }
    }
    #[derive(Serialize)]
    struct Services {
        services: Vec<ServiceSummary>,
    }
    json_response(StatusCode::OK, json_bytes(&Services { services }))
}
