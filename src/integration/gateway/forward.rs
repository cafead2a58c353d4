//! The gateway's core, shared by NATS (`api.<service>.<operation>`) and HTTP: check the
//! route and the content type, look the service up in the cached registry view (no I/O),
//! and forward to `svc.<service>.<operation>` with the caller's headers, payload and
//! remaining deadline. The payload is never decoded: the service validates it, and its
//! reply comes back untouched. Every request is counted here, whichever way it came.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap, Message, RequestErrorKind};
use bytes::Bytes;

use super::policy::Policies;
use crate::envelope::{Meta, Outgoing, TraceParent, check_size, content_type_of};
use crate::error::{Error, ErrorKind};
use crate::integration::registry::{Lookup, view::RegistryView};
use crate::observability::metrics::GatewayMetrics;
use crate::subjects::{headers as h, validate_token};

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

/// Forwards requests; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    client: Client,
    view: RegistryView,
    policies: Policies,
    metrics: Arc<GatewayMetrics>,
}

impl Forwarder {
    pub fn new(client: Client, view: RegistryView, policies: Policies) -> Forwarder {
        Forwarder {
            client,
            view,
            policies,
            metrics: Arc::default(),
        }
    }

    pub fn view(&self) -> &RegistryView {
        &self.view
    }

    /// Forwards one request to `svc.<service>.<operation>` and returns the service's
    /// reply as it came (an error reply included), or why the gateway answers itself.
    pub async fn forward(
        &self,
        service: &str,
        operation: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Message, Refusal> {
        let started = Instant::now();
        let mut labels = (UNKNOWN, UNKNOWN);
        let result = self
            .try_forward(service, operation, headers, payload, started, &mut labels)
            .await;
        let code = match &result {
            Ok(reply) => reply_code(reply),
            Err(refusal) => refusal.error.code(),
        };
        self.metrics
            .record(labels.0, labels.1, code, started.elapsed());
        if code >= 500 {
            tracing::debug!(
                service = labels.0,
                operation = labels.1,
                code,
                "gateway error"
            );
        }
        result
    }

    /// A request refused before it named a route (a malformed subject or HTTP request):
    /// counted under `unknown`, answered with `error`.
    pub fn refuse(&self, headers: &HeaderMap, error: Error, started: Instant) -> Refusal {
        self.metrics
            .record(UNKNOWN, UNKNOWN, error.code(), started.elapsed());
        let meta = Meta::from_headers(Some(headers), REQUEST_TYPE)
            .unwrap_or_else(|_| Meta::unreadable(Some(headers)));
        Refusal { meta, error }
    }

    async fn try_forward<'a>(
        &self,
        service: &'a str,
        operation: &'a str,
        mut headers: HeaderMap,
        payload: Bytes,
        started: Instant,
        labels: &mut (&'a str, &'a str),
    ) -> Result<Message, Refusal> {
        // Only checked here: the full attributes are built when the gateway answers
        // itself, never on the forwarding path (it costs ids and a timestamp).
        let checked = content_type_of(Some(&headers));
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
        let lookup = self.view.lookup(service);
        let serves = lookup != Lookup::Unknown && self.view.serves(service, operation);
        if lookup != Lookup::Unknown {
            labels.0 = service;
            if serves {
                labels.1 = operation;
            }
        }
        if let Err(err) = checked {
            return Err(refuse(err, &headers));
        }
        let budget = match caller_budget(&headers) {
            Ok(budget) => budget,
            Err(err) => return Err(refuse(err, &headers)),
        };
        match lookup {
            Lookup::Unknown => {
                return Err(refuse(
                    Error::not_found(format!("service {service:?} is not registered")),
                    &headers,
                ));
            }
            Lookup::NoLiveInstance => {
                return Err(refuse(
                    Error::unavailable(format!(
                        "service {service:?} has no live instance (deregistered, expired, \
                         unhealthy or draining)"
                    )),
                    &headers,
                ));
            }
            Lookup::Live(_) => {}
        }
        let policy = self.policies.timeout(service);
        let timeout = budget.map_or(policy, |budget| budget.min(policy));
        let remaining = timeout.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err(refuse(
                Error::timeout(format!(
                    "the caller's deadline for service {service:?} had passed on arrival"
                )),
                &headers,
            ));
        }
        // What is left, so the service can give up when the caller has.
        let left_ms = remaining.as_millis().max(1);
        headers.insert(h::TIMEOUT_MS, left_ms.to_string());
        let valid_trace = headers
            .get(h::TRACEPARENT)
            .is_some_and(|v| TraceParent::parse(v.as_str()).is_some());
        if !valid_trace {
            // A new trace (W3C) that the service joins.
            headers.insert(h::TRACEPARENT, TraceParent::new_root().as_str());
        }
        let outgoing = Outgoing { headers, payload };
        if let Err(err) = check_size(&self.client, &outgoing) {
            return Err(refuse(err, &outgoing.headers));
        }
        let request = async_nats::Request::new()
            .headers(outgoing.headers)
            .payload(outgoing.payload)
            .timeout(Some(remaining));
        let empty = HeaderMap::new();
        let subject = format!("svc.{service}.{operation}");
        match self.client.send_request(subject, request).await {
            Ok(reply) => Ok(reply),
            Err(err) => Err(refuse(
                match err.kind() {
                    RequestErrorKind::TimedOut => Error::timeout(format!(
                        "service {service:?} did not answer svc.{service}.{operation} within {} ms",
                        timeout.as_millis()
                    )),
                    RequestErrorKind::NoResponders if !serves && self.lists_endpoints(service) => {
                        Error::not_found(format!(
                            "service {service:?} has no operation {operation:?}"
                        ))
                    }
                    RequestErrorKind::NoResponders => Error::unavailable(format!(
                        "service {service:?}: no instance answers svc.{service}.{operation} (no responders)"
                    )),
                    _ => {
                        let err = Error::from(err);
                        Error::new(
                            err.kind(),
                            format!("service {service:?}: {}", err.message()),
                        )
                    }
                },
                &empty,
            )),
        }
    }

    /// Whether the service's instances say which operations they serve at all.
    fn lists_endpoints(&self, service: &str) -> bool {
        self.view
            .instances(service)
            .iter()
            .any(|entry| !entry.endpoints.is_empty())
    }
}

/// The caller's remaining budget from `Switchyard-Timeout-Ms`, if it set one.
fn caller_budget(headers: &HeaderMap) -> Result<Option<Duration>, Error> {
    let Some(value) = headers.get(h::TIMEOUT_MS) else {
        return Ok(None);
    };
    value
        .as_str()
        .trim()
        .parse::<u64>()
        .map(|ms| Some(Duration::from_millis(ms)))
        .map_err(|_| {
            Error::invalid_input(format!(
                "invalid {} {:?}: a whole number of milliseconds",
                h::TIMEOUT_MS,
                value.as_str()
            ))
        })
}

/// The code a reply stands for, normalised to the known codes (bounded label values).
pub fn reply_code(reply: &Message) -> u16 {
    reply
        .headers
        .as_ref()
        .and_then(|headers| headers.get(h::SERVICE_ERROR_CODE))
        .map_or(200, |code| {
            let code = code.as_str().trim().parse::<u16>().unwrap_or(500);
            ErrorKind::from_code(code).code()
        })
}
