//! One call to a service through its guard: attempts with retries (only the kinds the
//! taxonomy retries, with backoff and full jitter, within the caller's deadline and the
//! service's retry budget), the circuit breaker around every attempt, and the fallback
//! chain when the service cannot answer.
//!
//! The failure-free path costs an atomic load (the breaker), two atomic adds (budget
//! and breaker windows) and the clone of the caller's headers (free when the caller
//! sent none); retries, breaker decisions and fallbacks cost only when they happen.
//!
//! The trace, too: a caller without a `traceparent` gets none from the first attempt,
//! so the service starts the trace (and its reply carries it). Only when more requests
//! follow (a retry, a fallback service) does the call pin one trace for all of them:
//! the one the failed reply carried, else a new one. A header the service would add
//! anyway costs the whole path about 3 % of its throughput (`switchyard bench gateway`).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::header::HeaderName;
use async_nats::{Client, HeaderMap, Message, RequestErrorKind};
use bytes::Bytes;

use super::forward::{REQUEST_TYPE, SOURCE, reply_code};
use super::guard::ServiceGuard;
use crate::envelope::{ContentType, Meta, Outgoing, TraceParent, check_size};
use crate::error::{Error, ErrorKind};
use crate::integration::registry::view::RegistryView;
use crate::resilience::breaker::Permit;
use crate::resilience::fallback::{Fallback, LastGood, StoredReply};
use crate::resilience::retry::unit_random;
use crate::resilience::window::{ms_since_origin, now_ms};
use crate::subjects::headers as h;

pub(super) const TIMEOUT_MS: HeaderName = HeaderName::from_static(h::TIMEOUT_MS);
pub(super) const TRACEPARENT: HeaderName = HeaderName::from_static(h::TRACEPARENT);
const FALLBACK: HeaderName = HeaderName::from_static(h::FALLBACK);
/// Room our two headers (`Switchyard-Timeout-Ms`, `traceparent`) take at most on the
/// wire, so a request without headers skips the header walk of the size check.
const OWN_HEADERS_MAX: usize = 128;

/// What a call ends with: the service's reply (an error reply included), or why the
/// gateway could not get one.
pub(super) type Outcome = Result<Message, Error>;

/// One request on its way to `svc.<service>.<operation>`.
pub(super) struct Call<'a> {
    pub client: &'a Client,
    pub view: &'a RegistryView,
    pub guard: &'a ServiceGuard,
    pub last_good: &'a LastGood,
    pub service: &'a str,
    pub operation: &'a str,
    /// Whether the registry lists the operation (a "no responders" is then a 503).
    pub serves: bool,
    /// The caller's headers, never modified: each attempt adds its own timeout.
    pub headers: &'a HeaderMap,
    pub payload: &'a Bytes,
    /// Whether the caller sent a valid `traceparent` (carried in `headers`).
    pub traced: bool,
    /// The trace the call pinned for its later requests when the caller sent none.
    pub trace: OnceLock<TraceParent>,
    pub started: Instant,
    /// The whole call's timeout (policy or caller), for messages.
    pub timeout: Duration,
    pub deadline: Instant,
}

impl Call<'_> {
    /// Attempts until one succeeds, fails for good, or the retries, the budget or the
    /// deadline run out; the last attempt's outcome.
    pub async fn run(&self) -> Outcome {
        let guard = self.guard;
        guard.budget.request(ms_since_origin(self.started));
        let mut failed = 0;
        // What the previous attempt got: the answer if the breaker refuses a retry.
        let mut last = None;
        loop {
            let now = Instant::now();
            let remaining = self.deadline.saturating_duration_since(now);
            let permit = guard.permit(ms_since_origin(now));
            if permit == Permit::Denied {
                return last.unwrap_or_else(|| {
                    Err(Error::unavailable(format!(
                        "service {:?}: circuit breaker open, not called",
                        self.service
                    )))
                });
            }
            let outcome = self
                .attempt(guard.retry.attempt_timeout(remaining), remaining)
                .await;
            let failure = failure_kind(&outcome);
            let done = now_ms();
            guard.record(permit, failure.is_some_and(counts_against_breaker), done);
            let Some(kind) = failure else {
                if let Ok(reply) = &outcome {
                    self.keep(reply).await;
                }
                return outcome;
            };
            if !kind.handling().retried {
                return outcome;
            }
            failed += 1;
            let left = self.deadline.saturating_duration_since(Instant::now());
            let Some(pause) = guard
                .retry
                .next_pause(failed, now.elapsed(), left, unit_random())
            else {
                return outcome;
            };
            if !guard.budget.try_retry(done) {
                guard.metrics.budget_exhausted.increment(1);
                return outcome;
            }
            guard.metrics.retries.increment(1);
            self.pin_trace(&outcome);
            tracing::debug!(service = self.service, operation = self.operation, %kind, failed, ?pause, "retrying");
            last = Some(outcome);
            tokio::time::sleep(pause).await;
        }
    }

    /// `outcome` if it needs no fallback, else the first fallback that answers, else
    /// `outcome` unchanged.
    pub async fn or_fall_back(&self, outcome: Outcome) -> Outcome {
        if self.guard.fallbacks.is_empty() {
            return outcome;
        }
        let Some(kind) = failure_kind(&outcome) else {
            return outcome;
        };
        if !service_failed(kind) {
            return outcome;
        }
        self.pin_trace(&outcome);
        for fallback in &self.guard.fallbacks {
            if let Some(mut reply) = self.fall_back(fallback).await {
                let headers = reply.headers.get_or_insert_with(HeaderMap::new);
                headers.insert(FALLBACK, fallback.header_value());
                self.guard.metrics.fell_back(fallback.kind());
                tracing::debug!(
                    service = self.service,
                    operation = self.operation,
                    fallback = fallback.kind(),
                    "fallback answered"
                );
                return Ok(reply);
            }
        }
        outcome
    }

    async fn fall_back(&self, fallback: &Fallback) -> Option<Message> {
        match fallback {
            Fallback::Service(other) => {
                let remaining = self.deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return None;
                }
                let subject = format!("svc.{other}.{}", self.operation);
                let reply = self.send(subject, remaining).await.ok()?;
                (reply_code(&reply) == 200).then_some(reply)
            }
            Fallback::Cache if self.guard.is_idempotent(self.operation) => {
                let stored = self
                    .last_good
                    .get(self.service, self.operation, self.payload)
                    .await?;
                Some(message(stored.headers, stored.payload))
            }
            Fallback::Cache => None,
            Fallback::Static(value) => {
                let meta = Meta::from_headers(Some(self.headers), REQUEST_TYPE).ok()?;
                let codec: ContentType = meta.content_type;
                let payload = codec.encode(value).ok()?;
                let reply_meta = meta.follow_up(SOURCE, format!("{REQUEST_TYPE}.reply"));
                Some(message(Some(reply_meta.to_headers()), payload.into()))
            }
        }
    }

    /// Before a request that follows a failed one: joins the trace the failed reply
    /// carried (the service started it), else starts one, unless the caller sent its
    /// own or one is pinned already.
    fn pin_trace(&self, failed: &Outcome) {
        if self.traced {
            return;
        }
        self.trace.get_or_init(|| {
            let replied = failed.as_ref().ok().and_then(|reply| {
                let value = reply.headers.as_ref()?.get(TRACEPARENT)?;
                TraceParent::parse(value.as_str())
            });
            replied.unwrap_or_else(TraceParent::new_root)
        });
    }

    /// Keeps a good reply for the cache fallback, if the policy asks for it.
    async fn keep(&self, reply: &Message) {
        if self.guard.keeps_replies(self.operation) {
            let stored = StoredReply {
                headers: reply.headers.clone(),
                payload: reply.payload.clone(),
            };
            self.last_good
                .store(self.service, self.operation, self.payload, stored)
                .await;
        }
    }

    /// One attempt of at most `timeout`, with `remaining` left of the deadline.
    async fn attempt(&self, timeout: Duration, remaining: Duration) -> Outcome {
        let subject = format!("svc.{}.{}", self.service, self.operation);
        self.send(subject, timeout)
            .await
            .map_err(|err| self.explain(err, timeout < remaining))
    }

    /// One request with the caller's headers plus what is left of the deadline (so the
    /// service can give up when the caller has) and the trace.
    async fn send(
        &self,
        subject: String,
        timeout: Duration,
    ) -> Result<Message, async_nats::RequestError> {
        let mut headers = self.headers.clone();
        headers.insert(TIMEOUT_MS, timeout.as_millis().max(1).to_string());
        if let Some(trace) = self.trace.get() {
            headers.insert(TRACEPARENT, trace.as_str());
        }
        let max = self.client.max_payload();
        let small = self.headers.is_empty() && self.payload.len() + OWN_HEADERS_MAX <= max;
        let outgoing = Outgoing {
            headers,
            payload: self.payload.clone(),
        };
        if !small && let Err(err) = check_size(self.client, &outgoing) {
            return Err(async_nats::RequestError::with_source(
                RequestErrorKind::MaxPayloadExceeded,
                err,
            ));
        }
        let request = async_nats::Request::new()
            .headers(outgoing.headers)
            .payload(outgoing.payload)
            .timeout(Some(timeout));
        self.client.send_request(subject, request).await
    }

    /// The gateway's error for a failed attempt, naming the service and the timeout
    /// that ran out (the per-attempt one if it was the shorter).
    fn explain(&self, err: async_nats::RequestError, per_attempt: bool) -> Error {
        let (service, operation) = (self.service, self.operation);
        match err.kind() {
            RequestErrorKind::TimedOut => match self.guard.retry.attempt_timeout {
                Some(limit) if per_attempt => Error::timeout(format!(
                    "service {service:?} did not answer svc.{service}.{operation} within the \
                     attempt timeout of {} ms",
                    limit.as_millis()
                )),
                _ => Error::timeout(format!(
                    "service {service:?} did not answer svc.{service}.{operation} within {} ms",
                    self.timeout.as_millis()
                )),
            },
            RequestErrorKind::NoResponders if !self.serves && self.lists_endpoints() => {
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
        }
    }

    /// Whether the service's instances say which operations they serve at all.
    fn lists_endpoints(&self) -> bool {
        self.view
            .instances(self.service)
            .iter()
            .any(|entry| !entry.endpoints.is_empty())
    }
}

/// The kind of a failed outcome (an error reply's code, or the gateway's error); `None`
/// for a good reply.
fn failure_kind(outcome: &Outcome) -> Option<ErrorKind> {
    match outcome {
        Ok(reply) => match reply_code(reply) {
            200 => None,
            code => Some(ErrorKind::from_code(code)),
        },
        Err(err) => Some(err.kind()),
    }
}

/// Whether the service could not answer the call (what is retried, and internal
/// errors; never a caller's mistake): then the fallbacks are tried.
fn service_failed(kind: ErrorKind) -> bool {
    kind.handling().retried || kind == ErrorKind::Internal
}

/// What the breaker counts as the service failing: [`service_failed`] less an explicit
/// 429 overloaded. A service that sheds is up and answers at once; counting its 429s
/// would open the breaker under a flood and turn serving at capacity into serving
/// nothing for the open time. Never a caller's mistake (4xx).
pub(super) fn counts_against_breaker(kind: ErrorKind) -> bool {
    service_failed(kind) && kind != ErrorKind::Overloaded
}

fn message(headers: Option<HeaderMap>, payload: Bytes) -> Message {
    Message {
        subject: "".into(),
        reply: None,
        payload,
        headers,
        status: None,
        description: None,
        length: 0,
    }
}
