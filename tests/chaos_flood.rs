//! Fault suite `flood` (`scripts/chaos flood`): requests through the gateway at ten
//! times what the service can serve. `slow` runs as two instances of four requests at
//! once, each taking 100 ms: a capacity of 2 × 4 ÷ 0.1 s = 80 requests/s; the gateway
//! (`switchyard run` process) forwards at most 8 at once. The flood offers 800
//! requests/s for 5 s, each with a 2 s deadline.
//!
//! What must hold: the switchyard process's memory stays bounded (VmRSS sampled through
//! the flood), every caller gets an answer (served, or an explicit 429 overloaded / 503;
//! none left waiting past its deadline), the gateway counts what it shed, and a normal
//! call succeeds after the flood. Then calls to a stopped service: one killed with
//! SIGKILL while still registered ("no responders") and one deregistered; both are
//! answered 503 quickly (median and maximum reported against the 100 ms target).

#[path = "common/chaos.rs"]
mod chaos;
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, RequestErrorKind};
use switchyard::demo::slow;

use chaos::{figures, median_max, ms, rss_kib};
use common::{Process, free_addr, http_get, until};

const WAIT: Duration = Duration::from_secs(60);
const INSTANCES: usize = 2;
const CONCURRENCY: usize = 4;
const SLEEP_MS: u64 = 100;
/// Requests the service can serve per second.
const CAPACITY: u64 = INSTANCES as u64 * CONCURRENCY as u64 * 1000 / SLEEP_MS;
const FLOOD: Duration = Duration::from_secs(5);
/// Each caller's deadline, sent as `Switchyard-Timeout-Ms`.
const DEADLINE_MS: u64 = 2000;
/// A caller not answered within this (its deadline plus a wide margin for a loaded
/// machine) was left hanging.
const HANG: Duration = Duration::from_secs(10);
/// The switchyard process must stay below this resident size through the flood.
const RSS_BOUND_KIB: u64 = 256 * 1024;
/// Calls to a stopped service, and what one may take before it counts as a hang.
const STOPPED_CALLS: usize = 100;
const STOPPED_BOUND: Duration = Duration::from_secs(2);

fn code(reply: &async_nats::Message) -> u16 {
    reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map_or(200, |c| c.as_str().parse().unwrap_or(500))
}

fn metric(admin: std::net::SocketAddr, series: &str) -> f64 {
    http_get(admin, "/metrics")
        .and_then(|(_, body)| {
            body.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// One call through the gateway with the flood's deadline: its code, or `None` when
/// the caller was left waiting past [`HANG`].
async fn call(client: &async_nats::Client, subject: &str, payload: &'static str) -> Option<u16> {
    let mut headers = HeaderMap::new();
    headers.insert("Switchyard-Timeout-Ms", DEADLINE_MS.to_string().as_str());
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(payload.into())
        .timeout(Some(HANG));
    match client.send_request(subject.to_string(), request).await {
        Ok(reply) => Some(code(&reply)),
        Err(err) if err.kind() == RequestErrorKind::TimedOut => None,
        // No gateway answering at all would be the test's own problem: 0 marks it.
        Err(_) => Some(0),
    }
}

/// [`STOPPED_CALLS`] calls to `subject`, one after the other: codes and times.
async fn stopped_calls(client: &async_nats::Client, subject: &str) -> (Vec<u16>, Vec<Duration>) {
    let (mut codes, mut times) = (Vec::new(), Vec::new());
    for _ in 0..STOPPED_CALLS {
        let sent = Instant::now();
        codes.push(call(client, subject, r#"{"text":"hi"}"#).await.unwrap_or(0));
        times.push(sent.elapsed());
    }
    (codes, times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood() {
    let (server, client) = common::provisioned().await;
    let admin = free_addr();
    let gateway = Process::spawn(
        &[
            "run",
            "instance",
            "registry",
            "gateway",
            "--nats",
            &server.url(),
            "--admin",
            &admin.to_string(),
            "--http",
            &free_addr().to_string(),
            "--gateway-max-in-flight",
            &CONCURRENCY.saturating_mul(INSTANCES).to_string(),
            "--log",
            "warn",
        ],
        &std::env::temp_dir(),
    );
    until("the gateway is ready", WAIT, || async {
        http_get(admin, "/readyz").filter(|(code, _)| *code == 200)
    })
    .await;
    let mut services = Vec::new();
    for _ in 0..INSTANCES {
        let service = slow::service(slow::Config { ms: SLEEP_MS })
            .unwrap()
            .max_in_flight(CONCURRENCY)
            .start(&server.client().await)
            .await
            .unwrap();
        services.push(service);
    }
    until("the gateway routes slow", WAIT, || async {
        (call(&client, "api.slow.wait", "{}").await == Some(200)).then_some(())
    })
    .await;

    // Memory, sampled every 50 ms from before the flood until after it.
    let pid = gateway.pid();
    let baseline = rss_kib(pid).expect("VmRSS of the switchyard process");
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(rss) = rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // The flood: open loop, ten times capacity, each request its own task.
    let rate = CAPACITY * 10;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let flood_started = Instant::now();
    let mut calls = Vec::new();
    while flood_started.elapsed() < FLOOD {
        tick.tick().await;
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let sent = Instant::now();
            (call(&client, "api.slow.wait", "{}").await, sent.elapsed())
        }));
    }
    let offered = calls.len();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut latencies = Vec::new();
    for handle in calls {
        let (code, took) = handle.await.unwrap();
        let key = code.map_or_else(|| "hung".to_string(), |c| c.to_string());
        *codes.entry(key).or_default() += 1;
        latencies.push(took);
    }
    let flood = flood_started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);

    // Recovery: a normal call succeeds (the breaker, if the flood opened it, closes).
    let recovering = Instant::now();
    until("a normal call succeeds after the flood", WAIT, || async {
        (call(&client, "api.slow.wait", "{}").await == Some(200)).then_some(())
    })
    .await;
    let recovered = recovering.elapsed();
    let after = rss_kib(pid).unwrap_or_default();
    let shed = metric(admin, "switchyard_gateway_shed_total{service=\"slow\"}");
    let (p50, max) = median_max(&mut latencies);

    // A stopped service, still registered: killed with SIGKILL (no deregistration).
    let echo_binary = common::example_binary("echo");
    let mut echo = Process::spawn_program(
        &echo_binary,
        &["--nats", &server.url()],
        &std::env::temp_dir(),
    );
    until("the gateway routes echo", WAIT, || async {
        (call(&client, "api.echo.say", r#"{"text":"hi"}"#).await == Some(200)).then_some(())
    })
    .await;
    echo.signal(libc::SIGKILL);
    echo.wait(WAIT);
    // The server has dropped the killed instance's subscription: nobody answers.
    until(
        "the killed instance is gone from the server",
        WAIT,
        || async {
            let err = client
                .request("svc.echo.say", "\"hi\"".into())
                .await
                .err()?;
            (err.kind() == RequestErrorKind::NoResponders).then_some(())
        },
    )
    .await;
    let (killed_codes, mut killed_times) = stopped_calls(&client, "api.echo.say").await;
    let (killed_p50, killed_max) = median_max(&mut killed_times);

    // A stopped service, deregistered: `slow` stops gracefully.
    for service in services {
        service.stop().await;
    }
    until("the gateway sees slow deregistered", WAIT, || async {
        (call(&client, "api.slow.wait", "{}").await == Some(503)).then_some(())
    })
    .await;
    let (gone_codes, mut gone_times) = stopped_calls(&client, "api.slow.wait").await;
    let (gone_p50, gone_max) = median_max(&mut gone_times);

    let count = |code: &str| codes.get(code).copied().unwrap_or(0);
    let codes_text = codes
        .iter()
        .map(|(c, n)| format!("{c}:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    figures(
        "flood",
        &[
            ("capacity", format!("{CAPACITY}/s")),
            (
                "offered",
                format!("{:.0}/s", offered as f64 / flood.as_secs_f64()),
            ),
            ("requests", offered.to_string()),
            ("codes", codes_text),
            (
                "served",
                format!("{:.0}/s", count("200") as f64 / flood.as_secs_f64()),
            ),
            ("gateway_shed", format!("{shed:.0}")),
            ("p50", ms(p50)),
            ("max", ms(max)),
            ("rss_before", format!("{}MiB", baseline / 1024)),
            ("rss_peak", format!("{}MiB", peak / 1024)),
            ("rss_after", format!("{}MiB", after / 1024)),
            ("recovered_in", ms(recovered)),
            ("no_responders_p50", ms(killed_p50)),
            ("no_responders_max", ms(killed_max)),
            ("deregistered_p50", ms(gone_p50)),
            ("deregistered_max", ms(gone_max)),
        ],
    );

    assert_eq!(
        count("hung"),
        0,
        "callers left waiting past their deadline: {codes:?}"
    );
    let unexplained: Vec<_> = codes
        .keys()
        .filter(|c| !["200", "429", "503", "504"].contains(&c.as_str()))
        .collect();
    assert!(
        unexplained.is_empty(),
        "answers other than served/overloaded/unavailable/timeout: {codes:?}"
    );
    assert!(
        count("429") > 0,
        "the flood got explicit overload errors: {codes:?}"
    );
    assert!(count("200") > 0, "the service kept serving: {codes:?}");
    assert!(shed > 0.0, "the gateway counted what it shed");
    assert!(
        peak < RSS_BOUND_KIB,
        "switchyard's memory stays bounded: peak {peak} KiB"
    );
    for (what, codes, max) in [
        ("killed", &killed_codes, killed_max),
        ("deregistered", &gone_codes, gone_max),
    ] {
        assert!(
            codes.iter().all(|&c| c == 503),
            "a {what} service is answered 503: {codes:?}"
        );
        assert!(
            max < STOPPED_BOUND,
            "a {what} service is answered without waiting for a timeout: max {max:?}"
        );
    }
}
