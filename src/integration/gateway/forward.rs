//! The gateway's core, shared by NATS (`api.<service>.<operation>`) and HTTP: check the
//! route and the content type, look the service up in the cached registry view (no I/O),
//! and forward to `svc.<service>.<operation>` with the caller's headers, payload and
//! remaining deadline, through the service's guard ([`super::call`]: retries, breaker,
//! fallbacks). The payload is never decoded: the service validates it, and its reply
//! comes back untouched. Every request is counted here, whichever way it came, and every
//! error reply is reported to the error log.
//!
//! At most `max_in_flight` requests are forwarded at once (both ingresses together); one
//! more is shed: answered 429 overloaded at once, without touching the service. Waiting
//! for a slot instead would only move the queue into the subscription buffer and the
//! callers' deadlines would pass there (timeouts, memory); an immediate 429 tells the
//! caller to back off while the requests in flight still get their answers.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::Semaphore;

use async_nats::header::HeaderName;
use async_nats::{Client, HeaderMap, Message};
use bytes::Bytes;

use super::NAME;
use super::call::{Call, TRACEPARENT};
use super::guard::Policies;
use crate::envelope::{Meta, TraceParent, caller_budget, content_type_of, error_from_reply};
use crate::error::{Error, ErrorKind};
use crate::integration::registry::{Lookup, view::RegistryView};
use crate::observability::metrics::{self as m, GatewayMetrics};
use crate::resilience::errorlog::{ErrorLog, Where};
use crate::resilience::fallback::LastGood;
use crate::subjects::{headers as h, validate_token};

const SERVICE_ERROR_CODE: HeaderName = HeaderName::from_static(h::SERVICE_ERROR_CODE);

/// `ce-source` of the gateway's own replies.
pub const SOURCE: &str = "urn:switchyard:gateway";
/// `ce-type` assumed for requests that carry none.
pub const REQUEST_TYPE: &str = "io.switchyard.api.request";
/// Metric label for anything not a registered service or a listed operation.
const UNKNOWN: &str = "unknown";

/// Why the gateway answered a request itself, with the request's attributes so the
/// error reply continues its conversation and trace.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub meta: Meta,
    pub error: Error,
}

/// Forwards requests; cheap to clone (one reference count: the NATS ingress clones it
/// per message).
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    view: RegistryView,
    policies: Policies,
    last_good: LastGood,
    errors: ErrorLog,
    metrics: GatewayMetrics,
    /// Slots for requests being forwarded; none free means shed.
    in_flight: Semaphore,
    max_in_flight: usize,
}

impl Forwarder {
    /// `errors` receives every error reply the gateway gives (`ErrorLog::disabled()`
    /// where nothing should be reported); `max_in_flight` requests are forwarded at
    /// once, more are shed (at least one is always let through).
    pub fn new(
        client: Client,
        view: RegistryView,
        policies: Policies,
        errors: ErrorLog,
        max_in_flight: usize,
    ) -> Forwarder {
        let max_in_flight = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Forwarder {
            inner: Arc::new(Inner {
                client,
                view,
                policies,
                last_good: LastGood::default(),
                errors,
                metrics: GatewayMetrics::default(),
                in_flight: Semaphore::new(max_in_flight),
                max_in_flight,
            }),
        }
    }

    /// Requests forwarded at once before the gateway sheds.
    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight
    }

    pub fn view(&self) -> &RegistryView {
        &self.inner.view
    }

    /// The connection requests are forwarded on (and replies sent back).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Forwards one request to `svc.<service>.<operation>` and returns the service's
    /// reply as it came (an error reply included, or a fallback's reply), or why the
    /// gateway answers itself.
    pub async fn forward(
        &self,
        service: &str,
        operation: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Message, Refusal> {
        let started = Instant::now();
        let mut labels = (UNKNOWN, UNKNOWN);
        let result = match self.inner.in_flight.try_acquire() {
            Ok(slot) => {
                let result = self
                    .try_forward(service, operation, headers, payload, started, &mut labels)
                    .await;
                drop(slot);
                result
            }
            Err(_) => Err(self.shed(service, operation, &headers, &mut labels)),
        };
        let code = match &result {
            Ok(reply) => reply_code(reply),
            Err(refusal) => refusal.error.code(),
        };
        self.inner
            .metrics
            .record(labels.0, labels.1, code, started.elapsed());
        if code >= 400 {
            self.report(service, operation, &result);
        }
        result
    }

    /// The answer to a request over the in-flight limit: 429 at once, counted in
    /// `switchyard_gateway_shed_total` under the service if the registry knows it (no
    /// I/O: a cached lookup).
    fn shed<'a>(
        &self,
        service: &'a str,
        operation: &'a str,
        headers: &HeaderMap,
        labels: &mut (&'a str, &'a str),
    ) -> Refusal {
        let (lookup, serves) = self.inner.view.route(service, operation);
        if lookup != Lookup::Unknown {
            labels.0 = service;
            if serves {
                labels.1 = operation;
            }
        }
        m::gateway_shed(labels.0);
        Refusal {
            meta: Meta::from_headers(Some(headers), REQUEST_TYPE)
                .unwrap_or_else(|_| Meta::unreadable(Some(headers))),
            error: Error::new(
                ErrorKind::Overloaded,
                format!(
                    "gateway overloaded: {} requests in flight already; retry later",
                    self.inner.max_in_flight
                ),
            ),
        }
    }

    /// A request refused before it named a route (a malformed subject or HTTP request):
    /// counted under `unknown`, reported, answered with `error`.
    pub fn refuse(&self, headers: &HeaderMap, error: Error, started: Instant) -> Refusal {
        self.inner
            .metrics
            .record(UNKNOWN, UNKNOWN, error.code(), started.elapsed());
        let meta = Meta::from_headers(Some(headers), REQUEST_TYPE)
            .unwrap_or_else(|_| Meta::unreadable(Some(headers)));
        let at = Where {
            traceparent: Some(&meta.traceparent),
            ..Where::default()
        };
        self.inner.errors.report(NAME, &error, at);
        Refusal { meta, error }
    }

    /// Reports an error reply (the gateway's own, or the service's final one) to the
    /// error log.
    fn report(&self, service: &str, operation: &str, result: &Result<Message, Refusal>) {
        let subject = format!("api.{service}.{operation}");
        let (error, traceparent) = match result {
            Err(refusal) => (
                refusal.error.clone(),
                Some(refusal.meta.traceparent.as_str()),
            ),
            Ok(reply) => {
                let headers = reply.headers.as_ref();
                let error = error_from_reply(headers).unwrap_or_else(|| {
                    Error::new(ErrorKind::from_code(reply_code(reply)), "error reply")
                });
                let trace = headers.and_then(|h| h.get(TRACEPARENT)).map(|v| v.as_str());
                (error, trace)
            }
        };
        let at = Where {
            subject: Some(&subject),
            service: Some(service),
            operation: Some(operation),
            traceparent,
        };
        self.inner.errors.report(NAME, &error, at);
    }

    async fn try_forward<'a>(
        &self,
        service: &'a str,
        operation: &'a str,
        headers: HeaderMap,
        payload: Bytes,
        started: Instant,
        labels: &mut (&'a str, &'a str),
    ) -> Result<Message, Refusal> {
        let refuse = |error: Error, headers: &HeaderMap| Refusal {
            meta: Meta::from_headers(Some(headers), REQUEST_TYPE)
                .unwrap_or_else(|_| Meta::unreadable(Some(headers))),
            error,
        };
        if let Err(err) =
            validate_token("service", service).and_then(|()| validate_token("operation", operation))
        {
            return Err(refuse(err, &headers));
        }
        // Label values only for names the registry vouches for: bounded cardinality.
        let (lookup, serves) = self.inner.view.route(service, operation);
        if lookup != Lookup::Unknown {
            labels.0 = service;
            if serves {
                labels.1 = operation;
            }
        }
        // Only checked here: the full attributes are built when the gateway answers
        // itself, never on the forwarding path (it costs ids and a timestamp). A request
        // without headers is JSON, nothing to look up.
        if !headers.is_empty()
            && let Err(err) = content_type_of(Some(&headers))
        {
            return Err(refuse(err, &headers));
        }
        let budget = match caller_budget(&headers) {
            Ok(budget) => budget,
            Err(err) => return Err(refuse(err, &headers)),
        };
        if lookup == Lookup::Unknown {
            return Err(refuse(
                Error::not_found(format!("service {service:?} is not registered")),
                &headers,
            ));
        }
        let guard = self.inner.policies.guard(service);
        let timeout = budget.map_or(guard.timeout, |budget| budget.min(guard.timeout));
        if timeout <= started.elapsed() {
            return Err(refuse(
                Error::timeout(format!(
                    "the caller's deadline for service {service:?} had passed on arrival"
                )),
                &headers,
            ));
        }
        let traced = headers
            .get(TRACEPARENT)
            .is_some_and(|v| TraceParent::parse(v.as_str()).is_some());
        // The payload is a view into the connection's read buffer; kept for the whole
        // call (retries, fallbacks), it would pin that buffer and make the client
        // allocate a new one as it reads on. A copy of our own is cheaper.
        let payload = Bytes::copy_from_slice(&payload);
        let call = Call {
            client: &self.inner.client,
            view: &self.inner.view,
            guard: &guard,
            last_good: &self.inner.last_good,
            service,
            operation,
            serves,
            headers: &headers,
            payload: &payload,
            traced,
            trace: OnceLock::new(),
            started,
            timeout,
            deadline: started + timeout,
        };
        let outcome = match lookup {
            Lookup::Live(_) => call.run().await,
            _ => Err(Error::unavailable(format!(
                "service {service:?} has no live instance (deregistered, expired, \
                 unhealthy or draining)"
            ))),
        };
        call.or_fall_back(outcome).await.map_err(|err| {
            let mut refusal = refuse(err, &headers);
            // The error reply continues the trace the attempts were part of.
            if let Some(trace) = call.trace.get() {
                refusal.meta.traceparent = trace.as_str().to_string();
            }
            refusal
        })
    }
}

/// The code a reply stands for, normalised to the known codes (bounded label values).
pub fn reply_code(reply: &Message) -> u16 {
    reply
        .headers
        .as_ref()
        .and_then(|headers| headers.get(SERVICE_ERROR_CODE))
        .map_or(200, |code| {
            let code = code.as_str().trim().parse::<u16>().unwrap_or(500);
            ErrorKind::from_code(code).code()
        })
}
