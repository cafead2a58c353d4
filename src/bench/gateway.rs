//! `switchyard bench gateway`: the API gateway against the bare relay of the baseline
//! and a direct request, all three to the same echo service, in the same run.
//!
//! On one server (provisioned, since the gateway reads the registry and policies), each
//! on its own connection as separate processes would be: the SDK's echo service
//! (`examples/echo.rs`, on `svc.echo.say`), the gateway component started by the
//! supervisor as `up` starts it (HTTP ingress on a free loopback port, metrics recorded),
//! and the baseline's bare relay in front of `svc.echo.say` (it returns the echo's reply
//! headers, as the gateway does, so every path delivers the same reply). For each
//! payload (a JSON string, byte-identical on every path) and concurrency, direct, relay
//! and gateway run back to back from the callers' shared connection. Then batches of
//! the gateway's per-request lookups (registry route, service guard) are timed.
//!
//! `--rounds N` measures every cell N times, relay first in odd rounds and gateway
//! first in even ones (so neither always runs on a warmer or a busier machine), and
//! checks the targets on the median of the rounds: one 3 s run on a shared 2-core
//! machine scatters by a few percent, which is the size of the margin being judged.

mod report;

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use self::report::{DIRECT, GATEWAY, quantile};
pub use self::report::{GatewayReport, LookupCost, Subjects, render_table};
use super::report::{RELAY, ScenarioResult};
use super::scenarios::{self, Services};
use super::{CONCURRENCY, Names, PAYLOADS, Timing};
use crate::admin::Readiness;
use crate::component::Component;
use crate::component::supervisor::Supervisor;
use crate::config::Config;
use crate::error::Error;
use crate::integration::gateway::GatewayComponent;
use crate::integration::gateway::forward::reply_code;
use crate::integration::gateway::guard::Policies;
use crate::integration::registry::{Lookup, view::RegistryView};
use crate::sdk::RunningService;

/// Progress steps: three paths for each payload and concurrency in each round, then
/// the lookups.
pub fn steps(rounds: usize) -> u64 {
    3 * 4 * rounds.max(1) as u64 + 1
}
/// The echo service (`examples/echo.rs`) and the operation every path calls.
const SERVICE: &str = "echo";
const OPERATION: &str = "say";
/// How long the gateway may take to route to the echo service after they started.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Lookups timed together, and how many such batches.
const LOOKUP_BATCH: usize = 1_000;
const LOOKUP_BATCHES: usize = 1_000;
/// Grace for stopping the echo service and the gateway at the end.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the suite against the server at `url` (`embedded` when the bench started it).
pub async fn bench(
    config: &Config,
    embedded: bool,
    timing: Timing,
    rounds: usize,
    url: &str,
    server: String,
    progress: &ProgressBar,
) -> Result<GatewayReport, Error> {
    // The recorder `up` installs: the gateway's and the service's metrics cost what
    // they cost in production.
    crate::observability::metrics::install();
    let (caller, run, jetstream) =
        super::connect_provisioned(config, embedded, url, "switchyard-bench", server, timing)
            .await?;

    let subjects = Subjects {
        direct: format!("svc.{SERVICE}.{OPERATION}"),
        relay: Names::new().relay,
        gateway: format!("api.{SERVICE}.{OPERATION}"),
    };
    let mut stack = Stack::default();
    let outcome = async {
        progress.set_message("starting the echo service, the gateway and the relay");
        stack.start(config, &jetstream, url, &subjects).await?;
        wait_until_routed(&caller, &subjects.gateway).await?;
        let mut rows = Vec::new();
        for round in 1..=rounds.max(1) {
            rows.push(measure(&caller, &subjects, timing, round, progress).await?);
        }
        progress.set_message("cached registry lookups");
        let lookup = lookup_cost(&caller).await?;
        progress.inc(1);
        Ok::<_, Error>((rows, lookup))
    }
    .await;
    stack.stop().await;
    let (rows, lookup) = outcome?;
    Ok(GatewayReport::new(run, subjects, rows, lookup))
}

/// A JSON string of exactly `size` bytes: a valid request for the echo service, which
/// answers it unchanged (JSON is the codec of a request without headers).
fn json_body(size: usize) -> Bytes {
    let mut body = vec![b'x'; size.max(2)];
    body[0] = b'"';
    body[size.max(2) - 1] = b'"';
    Bytes::from(body)
}

/// What runs for the measurement, stopped (deregistered, drained) at the end.
#[derive(Default)]
struct Stack {
    echo: Option<RunningService>,
    gateway: Option<Supervisor>,
    relay: Services,
}

impl Stack {
    async fn start(
        &mut self,
        config: &Config,
        jetstream: &crate::config::JetStreamConfig,
        url: &str,
        subjects: &Subjects,
    ) -> Result<(), Error> {
        let connect = |name: &'static str| crate::nats::connect(url, name);
        let echo = crate::demo::echo::service()?;
        self.echo = Some(echo.start(&connect("switchyard-bench-echo").await?).await?);

        // As `up` configures it, but with the HTTP ingress on a free loopback port.
        let mut gateway_config = config.clone();
        gateway_config.gateway.http = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut gateway = GatewayComponent::default();
        gateway.configure(&gateway_config)?;
        let client = connect("switchyard-bench-gateway").await?;
        let components: Vec<Box<dyn Component>> = vec![Box::new(gateway)];
        let supervisor =
            Supervisor::start(client, components, Readiness::default(), jetstream.clone());
        self.gateway = Some(supervisor.await?);

        let relay = connect("switchyard-bench-relay").await?;
        let relay = scenarios::start_relay(relay, &subjects.relay, &subjects.direct).await?;
        self.relay.push(relay);
        Ok(())
    }

    async fn stop(self) {
        drop(self.relay);
        if let Some(echo) = self.echo {
            echo.stop().await;
        }
        if let Some(gateway) = self.gateway {
            gateway.stop(STOP_GRACE).await;
        }
    }
}

/// Returns once the gateway answers `subject` with the echo service's 200: its registry
/// view has the service.
async fn wait_until_routed(caller: &Client, subject: &str) -> Result<(), Error> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let body = json_body(PAYLOADS[0]);
    loop {
        let request = caller.request(subject.to_string(), body.clone());
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(1), request).await
            && reply_code(&reply) == 200
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::unavailable(format!(
                "the gateway did not route {subject} to the echo service within {READY_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One round: direct, relay and gateway back to back for each payload and concurrency,
/// so the three see the same machine noise, with byte-identical requests. Odd rounds
/// run the relay before the gateway, even ones after.
async fn measure(
    caller: &Client,
    subjects: &Subjects,
    timing: Timing,
    round: usize,
    progress: &ProgressBar,
) -> Result<Vec<ScenarioResult>, Error> {
    let mut paths = [
        (DIRECT, &subjects.direct),
        (RELAY, &subjects.relay),
        (GATEWAY, &subjects.gateway),
    ];
    if round.is_multiple_of(2) {
        paths.swap(1, 2);
    }
    let mut rows = Vec::new();
    for size in PAYLOADS {
        let body = json_body(size);
        for n in CONCURRENCY {
            for (path, subject) in paths {
                progress.set_message(format!("round {round}: {path} {size} B x{n}"));
                let m = scenarios::request_reply(caller, subject, body.clone(), n, timing).await?;
                rows.push(ScenarioResult::new(path, size, n, "operation", m));
                progress.inc(1);
            }
        }
    }
    Ok(rows)
}

/// Times the lookup on a registry view of the bench's own, fed like the gateway's.
async fn lookup_cost(client: &Client) -> Result<LookupCost, Error> {
    let stop = CancellationToken::new();
    let view = RegistryView::start(client, stop.clone()).await;
    let timed = match view {
        Ok(view) => tokio::task::spawn_blocking(move || time_lookups(&view))
            .await
            .map_err(|e| Error::internal(format!("lookup timing failed: {e}")))
            .and_then(|timed| timed),
        Err(err) => Err(err),
    };
    stop.cancel();
    timed
}

/// The lookups the gateway makes per request (`Forwarder::try_forward`): the route in
/// the registry view (the service's instances, and whether one serves the operation),
/// then the service's guard (timeout, retry budget, breaker) among the policies.
fn lookup_once(
    view: &RegistryView,
    policies: &Policies,
    service: &str,
    operation: &str,
) -> (Lookup, bool) {
    let route = view.route(service, operation);
    black_box(policies.guard(service));
    route
}

fn time_lookups(view: &RegistryView) -> Result<LookupCost, Error> {
    let policies = Policies::fixed(Duration::from_secs(5));
    if !matches!(
        lookup_once(view, &policies, SERVICE, OPERATION),
        (Lookup::Live(_), true)
    ) {
        return Err(Error::internal(
            "the bench's registry view does not have the echo service",
        ));
    }
    let mut per_call: Vec<f64> = (0..LOOKUP_BATCHES)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..LOOKUP_BATCH {
                black_box(lookup_once(
                    view,
                    &policies,
                    black_box(SERVICE),
                    black_box(OPERATION),
                ));
            }
            started.elapsed().as_nanos() as f64 / LOOKUP_BATCH as f64
        })
        .collect();
    per_call.sort_by(f64::total_cmp);
    Ok(LookupCost {
        call: "RegistryView::route + Policies::guard, as the gateway per request",
        batches: LOOKUP_BATCHES,
        calls_per_batch: LOOKUP_BATCH,
        median_ns: quantile(&per_call, 0.5),
        p99_ns: quantile(&per_call, 0.99),
        min_ns: quantile(&per_call, 0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_strings_of_the_exact_size() {
        for size in PAYLOADS {
            let body = json_body(size);
            assert_eq!(body.len(), size);
            let text: String = serde_json::from_slice(&body).unwrap();
            assert_eq!(text.len(), size - 2);
        }
        assert_eq!(&json_body(0)[..], b"\"\"");
    }
}
