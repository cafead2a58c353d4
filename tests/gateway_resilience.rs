//! The gateway's call protection on a real server: the retry budget caps retries
//! against a failing `flaky`; a breaker opens, a fallback answers with
//! `Switchyard-Fallback`, and the breaker closes after recovery (both changes published
//! on `events.sys.breaker.*`); the cache and static
//! fallbacks; `slow` past its deadline is 504 and never retried past the deadline; the
//! gateway's errors reach `errors.gateway`.
//!
//! Attempts are counted where they arrive (a plain subscriber next to the service, or the
//! test service's own counter), never inferred from timing. Policies are written before
//! the gateway starts: it loads them (and the registry) before it serves `api.>`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap, Message};
use futures::StreamExt;
use serde_json::{Value, json};
use switchyard::component::supervisor::Supervisor;
use switchyard::config::GatewayConfig;
use switchyard::demo::{flaky, slow};
use switchyard::envelope::Envelope;
use switchyard::error::{Error, ErrorKind};
use switchyard::integration::gateway::GatewayComponent;
use switchyard::integration::gateway::breaker_events::BreakerChange;
use switchyard::resilience::errorlog::ErrorRecord;
use switchyard::sdk::{RunningService, Service};
use switchyard::subjects::headers as h;

const WAIT: Duration = Duration::from_secs(30);

struct Gateway {
    http: std::net::SocketAddr,
    _supervisor: Supervisor,
}

/// Writes `policies` (service, JSON value), then starts the gateway, which loads them.
async fn gateway_with(
    server: &common::TestServer,
    client: &Client,
    policies: &[(&str, Value)],
) -> Gateway {
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("policies").await.unwrap();
    for (service, policy) in policies {
        kv.put(*service, policy.to_string().into()).await.unwrap();
    }
    let http = common::free_addr();
    let gateway = GatewayComponent::new(GatewayConfig {
        http,
        timeout: Duration::from_secs(10),
        ..GatewayConfig::default()
    });
    let supervisor = common::supervise(server, Box::new(gateway)).await;
    // Serving: an unknown service is answered (404) without touching any test service.
    common::until("the gateway answers", WAIT, || async {
        let reply = call(client, "api.ghost.call", HeaderMap::new(), &json!({})).await?;
        (code(&reply) == 404).then_some(())
    })
    .await;
    Gateway {
        http,
        _supervisor: supervisor,
    }
}

async fn call(client: &Client, subject: &str, headers: HeaderMap, body: &Value) -> Option<Message> {
    client
        .request_with_headers(subject.to_string(), headers, body.to_string().into())
        .await
        .ok()
}

async fn call_ok(client: &Client, subject: &str, body: &Value) -> Message {
    call(client, subject, HeaderMap::new(), body)
        .await
        .unwrap_or_else(|| panic!("{subject}: no reply"))
}

/// The reply's code: 200, or its `Nats-Service-Error-Code`.
fn code(reply: &Message) -> u16 {
    reply
        .headers
        .as_ref()
        .and_then(|h| h.get(h::SERVICE_ERROR_CODE))
        .map_or(200, |c| c.as_str().parse().unwrap())
}

fn fallback_of(reply: &Message) -> Option<String> {
    reply
        .headers
        .as_ref()
        .and_then(|h| h.get(h::FALLBACK))
        .map(|v| v.as_str().to_string())
}

fn body(reply: &Message) -> Value {
    serde_json::from_slice(&reply.payload).unwrap()
}

/// A metric's value from the process's Prometheus recorder (the gateway records into
/// it), by name and one label; 0 when not recorded yet.
fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = switchyard::observability::metrics::install().render();
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Counts the requests that reach `subject` (a plain subscriber next to the service's
/// queue group sees each one), with when they arrived and their forwarded timeout.
#[derive(Clone, Default)]
struct Arrivals(Arc<std::sync::Mutex<Vec<Arrival>>>);

/// When a request arrived, and the `Switchyard-Timeout-Ms` it was forwarded with.
type Arrival = (Instant, Option<u64>);

impl Arrivals {
    async fn watch(server: &common::TestServer, subject: &str) -> Arrivals {
        let observer = server.client().await;
        let mut requests = observer.subscribe(subject.to_string()).await.unwrap();
        observer.flush().await.unwrap();
        let arrivals = Arrivals::default();
        let seen = arrivals.clone();
        tokio::spawn(async move {
            let _keep = observer;
            while let Some(request) = requests.next().await {
                let timeout = request
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(h::TIMEOUT_MS))
                    .and_then(|v| v.as_str().parse().ok());
                seen.0.lock().unwrap().push((Instant::now(), timeout));
            }
        });
        arrivals
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn all(&self) -> Vec<Arrival> {
        self.0.lock().unwrap().clone()
    }
}

/// A service named `name` whose operation `call` fails (transient, 502) while `failing`
/// is set and otherwise answers `{"from": name, "request": …}`; `calls` counts what
/// reached it.
async fn wobbly(
    client: &Client,
    name: &'static str,
    failing: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
) -> RunningService {
    Service::new(name, "1.0.0")
        .unwrap()
        .operation("call", move |request: Value| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let fail = failing.load(Ordering::SeqCst);
            async move {
                if fail {
                    return Err(Error::new(ErrorKind::Transient, format!("call {n} failed")));
                }
                Ok(json!({"from": name, "request": request}))
            }
        })
        .start(client)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_budget_caps_retries_against_a_failing_flaky() {
    switchyard::observability::metrics::install();
    let (server, client) = common::provisioned().await;
    let flaky = flaky::service(flaky::Config {
        share: 1.0,
        failure: flaky::Failure::Transient,
    })
    .unwrap()
    .start(&client)
    .await
    .unwrap();
    let arrivals = Arrivals::watch(&server, "svc.flaky.call").await;
    // Up to 3 attempts a call, but retries at most a tenth of the requests; the breaker
    // is off so that every call is attempted.
    let policy = json!({
        "retry": {"max_attempts": 3, "base_ms": 1, "max_backoff_ms": 2},
        "budget": {"ratio": 0.1, "min_per_sec": 0, "window_ms": 600000},
        "breaker": {"enabled": false}
    });
    let _gateway = gateway_with(&server, &client, &[("flaky", policy)]).await;
    let exhausted_before = metric(
        "switchyard_gateway_retry_budget_exhausted_total",
        &[("service", "flaky")],
    );

    const CALLS: usize = 60;
    for _ in 0..CALLS {
        let reply = call_ok(&client, "api.flaky.call", &json!({})).await;
        // The service's last error reply, unchanged.
        assert_eq!(code(&reply), 502);
        let err = switchyard::envelope::error_from_reply(reply.headers.as_ref()).unwrap();
        assert!(err.message().contains("failed (transient)"), "{err}");
    }
    let attempts = common::until("every attempt observed", WAIT, || async {
        let n = arrivals.count();
        // Settled: at least one attempt per call, and no more arriving.
        tokio::time::sleep(Duration::from_millis(200)).await;
        (n >= CALLS && arrivals.count() == n).then_some(n)
    })
    .await;
    let retries = attempts - CALLS;
    // Sequential calls: the budget grants exactly ⌊0.1 × 60⌋ = 6 retries; without it
    // there would be 120.
    assert!(
        (1..=CALLS / 10).contains(&retries),
        "{retries} retries for {CALLS} calls"
    );
    assert_eq!(
        metric("switchyard_gateway_retries_total", &[("service", "flaky")]) as usize,
        retries
    );
    assert!(
        metric(
            "switchyard_gateway_retry_budget_exhausted_total",
            &[("service", "flaky")]
        ) > exhausted_before
    );
    flaky.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_breaker_opens_the_fallback_answers_and_the_breaker_closes_after_recovery() {
    switchyard::observability::metrics::install();
    let (server, client) = common::provisioned().await;
    let failing = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU64::new(0));
    let service = wobbly(&client, "wobbly", failing.clone(), calls.clone()).await;
    let backup = wobbly(&client, "backup", Arc::default(), Arc::default()).await;
    let policy = json!({
        "retry": {"max_attempts": 1},
        "breaker": {"failure_ratio": 0.5, "min_requests": 4, "window_ms": 60000,
                    "open_ms": 1000, "half_open_probes": 1},
        "fallback": [{"service": "backup"}]
    });
    let mut changes = client.subscribe("events.sys.breaker.>").await.unwrap();
    client.flush().await.unwrap();
    let gateway = gateway_with(&server, &client, &[("wobbly", policy)]).await;

    // Every failure is answered by the fallback, with its header.
    for i in 0..12 {
        let reply = call_ok(&client, "api.wobbly.call", &json!({"i": i})).await;
        assert_eq!(code(&reply), 200);
        assert_eq!(fallback_of(&reply).as_deref(), Some("service:backup"));
        assert_eq!(body(&reply)["from"], "backup");
        assert_eq!(body(&reply)["request"], json!({"i": i}));
    }
    // The breaker opened after 4 failures (sequential calls): later calls never reached
    // the service, except the half-open probes let through every second at most.
    let reached = calls.load(Ordering::SeqCst);
    assert!((4..12).contains(&reached), "{reached} calls reached wobbly");
    let breaker = |to: &str| {
        metric(
            "switchyard_gateway_breaker_transitions_total",
            &[("service", "wobbly"), ("to", to)],
        )
    };
    assert!(breaker("open") >= 1.0);
    assert_eq!(
        metric(
            "switchyard_gateway_fallbacks_total",
            &[("service", "wobbly"), ("kind", "service")]
        ),
        12.0
    );

    // The same over HTTP: the header comes back as an HTTP header.
    let (status, head, _) = tokio::task::spawn_blocking(move || {
        common::http_post(gateway.http, "/v1/wobbly/call", &[], b"{}")
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        head.contains("switchyard-fallback: service:backup"),
        "{head}"
    );

    // Recovery: a probe succeeds and the breaker closes; calls reach the service again.
    failing.store(false, Ordering::SeqCst);
    common::until("the breaker closes", WAIT, || async {
        let reply = call_ok(&client, "api.wobbly.call", &json!({})).await;
        (fallback_of(&reply).is_none() && body(&reply)["from"] == "wobbly").then_some(())
    })
    .await;
    assert!(breaker("half_open") >= 1.0 && breaker("closed") >= 1.0);
    assert_eq!(
        metric("switchyard_gateway_breaker_state", &[("service", "wobbly")]),
        0.0
    );
    let before = calls.load(Ordering::SeqCst);
    for _ in 0..5 {
        let reply = call_ok(&client, "api.wobbly.call", &json!({})).await;
        assert_eq!(fallback_of(&reply), None);
    }
    assert_eq!(calls.load(Ordering::SeqCst), before + 5);

    // Both changes were published as events, in order.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(WAIT, changes.next())
            .await
            .expect("a breaker event")
            .unwrap();
        let change: Envelope<BreakerChange> =
            Envelope::decode(event.headers.as_ref(), &event.payload, "").unwrap();
        assert_eq!(change.data.service, "wobbly");
        seen.push((event.subject.to_string(), change.data.change));
    }
    assert_eq!(
        seen,
        [
            (
                "events.sys.breaker.opened".to_string(),
                "opened".to_string()
            ),
            (
                "events.sys.breaker.closed".to_string(),
                "closed".to_string()
            )
        ]
    );
    service.stop().await;
    backup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_good_reply_then_a_static_default_stand_in_for_an_idempotent_operation() {
    let (server, client) = common::provisioned().await;
    let failing = Arc::new(AtomicBool::new(false));
    let service = wobbly(&client, "keeper", failing.clone(), Arc::default()).await;
    let policy = json!({
        "retry": {"max_attempts": 1},
        "breaker": {"enabled": false},
        "fallback": [{"cache": true}, {"static": {"from": "default"}}],
        "idempotent": ["call"]
    });
    let _gateway = gateway_with(&server, &client, &[("keeper", policy)]).await;

    let good = call_ok(&client, "api.keeper.call", &json!({"q": 1})).await;
    assert_eq!((code(&good), fallback_of(&good)), (200, None));

    failing.store(true, Ordering::SeqCst);
    let cached = call_ok(&client, "api.keeper.call", &json!({"q": 1})).await;
    assert_eq!(fallback_of(&cached).as_deref(), Some("cache"));
    assert_eq!(cached.payload, good.payload);
    // A request that never succeeded has no last good reply: the static default.
    let fixed = call_ok(&client, "api.keeper.call", &json!({"q": 2})).await;
    assert_eq!(fallback_of(&fixed).as_deref(), Some("static"));
    assert_eq!(code(&fixed), 200);
    assert_eq!(body(&fixed), json!({"from": "default"}));

    // Healthy again, then gone altogether (no responders, then no live instance once
    // deregistered): the fallbacks answer for it.
    failing.store(false, Ordering::SeqCst);
    let healthy = call_ok(&client, "api.keeper.call", &json!({"q": 1})).await;
    assert_eq!(fallback_of(&healthy), None);
    service.stop().await;
    let cached = common::until("the gateway sees the service gone", WAIT, || async {
        let reply = call_ok(&client, "api.keeper.call", &json!({"q": 1})).await;
        (fallback_of(&reply).as_deref() == Some("cache")).then_some(reply)
    })
    .await;
    assert_eq!(cached.payload, good.payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_past_its_deadline_is_504_and_never_retried_past_the_deadline() {
    let (server, client) = common::provisioned().await;
    let slow = slow::service(slow::Config { ms: 1000 })
        .unwrap()
        .start(&client)
        .await
        .unwrap();
    let arrivals = Arrivals::watch(&server, "svc.slow.wait").await;
    let mut errors = client.subscribe("errors.gateway").await.unwrap();
    client.flush().await.unwrap();
    // Retries allowed (5 attempts of 150 ms at most), but the caller gives 400 ms.
    let policy = json!({
        "retry": {"max_attempts": 5, "base_ms": 1, "max_backoff_ms": 5, "attempt_timeout_ms": 150},
        "breaker": {"enabled": false}
    });
    let _gateway = gateway_with(&server, &client, &[("slow", policy)]).await;

    let mut headers = HeaderMap::new();
    headers.insert(h::TIMEOUT_MS, "400");
    let sent = Instant::now();
    let reply = call(&client, "api.slow.wait", headers, &json!({"ms": 2000}))
        .await
        .expect("an answer");
    assert_eq!(code(&reply), 504);
    // Let any attempt still in flight or scheduled arrive: none may.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let seen = arrivals.all();
    assert!((1..=2).contains(&seen.len()), "{} attempts", seen.len());
    for (arrived, timeout) in &seen {
        assert!(timeout.is_some_and(|ms| ms <= 150), "{timeout:?}");
        assert!(
            *arrived < sent + Duration::from_millis(400),
            "an attempt after the deadline"
        );
    }

    // Without a per-attempt timeout, the one attempt uses the whole deadline: no retry.
    let policy = json!({"retry": {"max_attempts": 5}, "breaker": {"enabled": false}});
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("policies").await.unwrap();
    kv.put("slow", policy.to_string().into()).await.unwrap();
    common::until("the policy applies", WAIT, || async {
        let before = arrivals.count();
        let mut headers = HeaderMap::new();
        headers.insert(h::TIMEOUT_MS, "200");
        let reply = call(&client, "api.slow.wait", headers, &json!({"ms": 2000})).await?;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let new = arrivals.all().split_off(before);
        // Applied once the forwarded timeout is no longer the 150 ms attempt timeout.
        let whole = new.len() == 1 && new[0].1.is_some_and(|ms| ms > 150);
        (code(&reply) == 504 && whole).then_some(())
    })
    .await;

    // Each 504 went to the error log with its service.
    let record = tokio::time::timeout(WAIT, async {
        loop {
            let message = errors.next().await.expect("the errors subscription");
            if let Ok(record) = serde_json::from_slice::<ErrorRecord>(&message.payload)
                && record.service.as_deref() == Some("slow")
            {
                return record;
            }
        }
    })
    .await
    .expect("an error record for slow");
    assert_eq!(record.kind, ErrorKind::Timeout);
    assert_eq!(record.subject.as_deref(), Some("api.slow.wait"));
    slow.stop().await;
}

/// A caller without a `traceparent`: the first attempt goes without one (the service
/// starts the trace), every retry carries the trace the failed reply came back with, and
/// the caller's final error reply is in that trace too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_join_the_trace_the_service_started() {
    let (server, client) = common::provisioned().await;
    // Its own service name: the metrics of `flaky` are another test's to count.
    let (failing, calls) = (Arc::new(AtomicBool::new(true)), Arc::default());
    let traced = wobbly(&client, "traced", failing, calls).await;
    // Every attempt's `traceparent` as it reached the service, in order.
    let observer = server.client().await;
    let mut requests = observer.subscribe("svc.traced.call").await.unwrap();
    observer.flush().await.unwrap();
    let traces = Arc::new(std::sync::Mutex::new(Vec::<Option<String>>::new()));
    let seen = traces.clone();
    tokio::spawn(async move {
        let _keep = observer;
        while let Some(request) = requests.next().await {
            let trace = request
                .headers
                .as_ref()
                .and_then(|h| h.get(h::TRACEPARENT))
                .map(|v| v.as_str().to_string());
            seen.lock().unwrap().push(trace);
        }
    });
    let policy = json!({
        "retry": {"max_attempts": 3, "base_ms": 1, "max_backoff_ms": 2},
        "budget": {"ratio": 1.0, "min_per_sec": 100, "window_ms": 1000},
        "breaker": {"enabled": false}
    });
    let _gateway = gateway_with(&server, &client, &[("traced", policy)]).await;

    let reply = call_ok(&client, "api.traced.call", &json!({})).await;
    assert_eq!(code(&reply), 502);
    let attempts = common::until("three attempts observed", WAIT, || async {
        let traces = traces.lock().unwrap().clone();
        (traces.len() >= 3).then_some(traces)
    })
    .await;
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert_eq!(
        attempts[0], None,
        "the first attempt starts no trace of its own"
    );
    let pinned = attempts[1].clone().expect("a retry carries the trace");
    assert_eq!(attempts[2].as_deref(), Some(pinned.as_str()));
    let replied = reply.headers.as_ref().and_then(|h| h.get(h::TRACEPARENT));
    assert_eq!(replied.map(|v| v.as_str()), Some(pinned.as_str()));
    traced.stop().await;
}
