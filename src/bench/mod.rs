//! `switchyard bench`: the raw-NATS baselines every later Switchyard path (gateway,
//! sync, cache) is compared to, measured in one run on one server:
//!
//! - request-reply to an in-process echo responder (128 B and 1 KiB, 1 and 64 callers);
//! - a bare relay in front of that responder, with its ratio to request-reply: the
//!   physical bound for any gateway;
//! - JetStream publish awaiting each ack, and a pull consumer acking what was stored;
//! - KV get of an existing key.
//!
//! `switchyard bench gateway` ([`gateway`]) measures the API gateway against the bare
//! relay and a direct request to the SDK's echo service, in one run. `switchyard bench
//! cache` ([`cache`]) times the data cache's hit path, read-through and write-through.
//! `switchyard bench tasks` ([`tasks`]) measures durable tasks against the thinnest
//! hand-written work queue, in one run.
//!
//! Each scenario warms up, then runs for `--duration` with N tasks that each record
//! per-operation latency in their own histogram (merged at the end). `nats bench` runs
//! against the same server for reference (`nats_cli`). The server is the one given
//! with `--nats`, else an embedded one on a free loopback port with a throwaway store.

pub mod cache;
pub mod cpu;
pub mod gateway;
mod nats_cli;
pub mod report;
mod runner;
mod scenarios;
mod server;
pub mod sync;
mod table;
pub mod tasks;
mod thin;

use std::io::IsTerminal;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use self::nats_cli::CliReference;
use self::report::{
    JS_CONSUME, JS_PUBLISH, KV_GET, MachineInfo, RELAY, REQUEST_REPLY, Report, RunInfo,
    ScenarioResult, attach_ratios,
};
pub use self::runner::{Timing, drive};
use self::scenarios::{FETCH_BATCH, Services, payload};
use self::server::{redact_url, start_server};
use self::table::render_table;
use crate::cli::{BenchArgs, BenchSuite};
use crate::config::Config;
use crate::error::Error;

const PAYLOADS: [usize; 2] = [128, 1024];
const CONCURRENCY: [usize; 2] = [1, 64];
const JS_PAYLOAD: usize = 128;
/// Scenarios measured by Switchyard itself (request-reply and relay for each payload
/// and concurrency, two JetStream publishes, one consume, two KV gets).
const SCENARIOS: u64 = 2 * 4 + 2 + 1 + 2;

/// Subjects, stream and bucket of one run, unique so a shared server is not disturbed.
pub struct Names {
    pub echo: String,
    pub relay: String,
    pub stream: String,
    pub js_subject: String,
    pub js_filter: String,
    pub bucket: String,
    pub cli_service: String,
    pub cli_stream: String,
    pub cli_js_subject: String,
}

impl Names {
    fn new() -> Names {
        let simple = uuid::Uuid::now_v7().simple().to_string();
        // The tail of a v7 UUID is random.
        let id = &simple[simple.len() - 8..];
        let up = id.to_uppercase();
        Names {
            echo: format!("bench.{id}.echo"),
            relay: format!("bench.{id}.relay"),
            stream: format!("BENCH_{up}"),
            js_subject: format!("bench.{id}.js.p"),
            js_filter: format!("bench.{id}.js.>"),
            bucket: format!("BENCH_{up}"),
            cli_service: format!("bench.{id}.cli.svc"),
            cli_stream: format!("BENCH_CLI_{up}"),
            cli_js_subject: format!("bench.{id}.cli.js"),
        }
    }
}

pub async fn run(config: Config, args: BenchArgs) -> Result<(), Error> {
    if args.duration.is_zero() {
        return Err(Error::invalid_input("--duration must be more than zero"));
    }
    // The bench opens a dozen connections of its own (callers, targets, components as
    // separate processes would); it measures on a dedicated server, never a secured one.
    if config.nats_url.is_some() && !config.nats_auth.is_empty() {
        return Err(Error::invalid_input(
            "switchyard bench connects without a NATS login: give it a dedicated server \
             without authorization with --nats, or none (it starts its own)",
        ));
    }
    if args.rounds == 0 || (args.rounds > 1 && args.suite != BenchSuite::Gateway) {
        return Err(Error::invalid_input(
            "--rounds is 1 or more, and more than 1 only for the gateway suite",
        ));
    }
    let (mut server, temp_dir, url, label) = match &config.nats_url {
        Some(url) => (None, None, url.clone(), redact_url(url)),
        None => {
            let (server, temp_dir) = start_server(&config, &args)?;
            let url = server.url();
            (Some(server), temp_dir, url, "embedded".to_string())
        }
    };
    let embedded = server.is_some();
    let timing = Timing::new(args.duration).counting_server(server.as_ref().and_then(|s| s.pid()));
    let total = match args.suite {
        BenchSuite::Baseline => SCENARIOS + if args.no_nats_cli { 0 } else { nats_cli::RUNS },
        BenchSuite::Gateway => gateway::steps(args.rounds),
        BenchSuite::Cache => cache::STEPS,
        BenchSuite::Sync => sync::STEPS,
        BenchSuite::Tasks => tasks::STEPS,
    };
    let progress = progress_bar(total, args.json);
    let output = match args.suite {
        BenchSuite::Baseline => bench(&args, timing, &url, label, &progress)
            .await
            .and_then(|report| render(&report, args.json, render_table)),
        BenchSuite::Gateway => gateway::bench(
            &config,
            embedded,
            timing,
            args.rounds,
            &url,
            label,
            &progress,
        )
        .await
        .and_then(|report| render(&report, args.json, gateway::render_table)),
        BenchSuite::Cache => cache::bench(&config, embedded, timing, &url, label, &progress)
            .await
            .and_then(|report| render(&report, args.json, cache::render_table)),
        BenchSuite::Sync => sync::bench(&config, embedded, timing, &url, label, &progress)
            .await
            .and_then(|report| render(&report, args.json, sync::render_table)),
        BenchSuite::Tasks => tasks::bench(&config, embedded, timing, &url, label, &progress)
            .await
            .and_then(|report| render(&report, args.json, tasks::render_table)),
    };
    progress.finish_and_clear();
    if let Some(server) = server.as_mut() {
        server.stop(Duration::from_secs(10));
    }
    if let Some(dir) = temp_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    print!("{}", output?);
    Ok(())
}

/// One JSON document (`--json`), else the table.
fn render<R: Serialize>(report: &R, json: bool, table: fn(&R) -> String) -> Result<String, Error> {
    if !json {
        return Ok(table(report));
    }
    serde_json::to_string_pretty(report)
        .map(|json| json + "\n")
        .map_err(|e| Error::internal(format!("cannot encode the report: {e}")))
}

fn progress_bar(total: u64, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// What the suites that run Switchyard components need first: the caller's connection,
/// the run's facts, and every stream and bucket provisioned as `up` does (one replica
/// on the embedded single server, whatever the configuration says), with the
/// JetStream settings the components are then started with.
pub async fn connect_provisioned(
    config: &Config,
    embedded: bool,
    url: &str,
    name: &str,
    server: String,
    timing: Timing,
) -> Result<(async_nats::Client, RunInfo, crate::config::JetStreamConfig), Error> {
    let caller = crate::nats::connect(url, name).await?;
    let run = RunInfo::new(
        server,
        timing,
        MachineInfo::collect(&caller.server_info().version),
    );
    let mut jetstream = config.jetstream.clone();
    if embedded {
        jetstream.replicas = 1;
    }
    let js = jetstream::new(caller.clone());
    crate::nats::provision(&js, &jetstream).await?;
    Ok((caller, run, jetstream))
}

async fn bench(
    args: &BenchArgs,
    timing: Timing,
    url: &str,
    server: String,
    progress: &ProgressBar,
) -> Result<Report, Error> {
    // Callers, the echo responder and the relay each have their own connection, as
    // separate processes would.
    let caller = crate::nats::connect(url, "switchyard-bench").await?;
    let responder = crate::nats::connect(url, "switchyard-bench-echo").await?;
    let relay = crate::nats::connect(url, "switchyard-bench-relay").await?;
    let run = RunInfo::new(
        server,
        timing,
        MachineInfo::collect(&caller.server_info().version),
    );
    let names = Names::new();

    let mut services = Services::default();
    services.push(scenarios::start_echo(responder, &names.echo).await?);
    services.push(scenarios::start_relay(relay, &names.relay, &names.echo).await?);
    let mut results = Vec::new();
    for size in PAYLOADS {
        for n in CONCURRENCY {
            // Raw and relay back to back, so both see the same machine noise.
            for (scenario, subject) in [(REQUEST_REPLY, &names.echo), (RELAY, &names.relay)] {
                progress.set_message(format!("{scenario} {size} B x{n}"));
                let m =
                    scenarios::request_reply(&caller, subject, payload(size), n, timing).await?;
                results.push(ScenarioResult::new(scenario, size, n, "operation", m));
                progress.inc(1);
            }
        }
    }
    drop(services);

    let js = jetstream::new(caller.clone());
    results.extend(stream_scenarios(&js, &names, timing, progress).await?);
    results.extend(kv_scenarios(&js, &names, timing, progress).await?);
    attach_ratios(&mut results);

    let nats_cli = if args.no_nats_cli {
        CliReference::skipped("skipped (--no-nats-cli)")
    } else {
        let reference = nats_cli::reference(url, &caller, &names, progress).await;
        let _ = js.delete_stream(&names.cli_stream).await;
        reference
    };
    Ok(Report {
        run,
        scenarios: results,
        nats_cli,
    })
}

/// Publish-with-ack (1 and 64 publishers) into a file stream created for the run, then
/// the pull consumer; the stream is deleted whatever happens.
async fn stream_scenarios(
    js: &jetstream::Context,
    names: &Names,
    timing: Timing,
    progress: &ProgressBar,
) -> Result<Vec<ScenarioResult>, Error> {
    let mut stream = js
        .create_stream(stream::Config {
            name: names.stream.clone(),
            subjects: vec![names.js_filter.clone()],
            storage: stream::StorageType::File,
            max_bytes: 1 << 30,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats("create bench stream", e))?;
    let outcome = async {
        let mut results = Vec::new();
        for n in CONCURRENCY {
            progress.set_message(format!("{JS_PUBLISH} {JS_PAYLOAD} B x{n}"));
            let m = scenarios::js_publish(js, &names.js_subject, JS_PAYLOAD, n, timing).await?;
            results.push(ScenarioResult::new(
                JS_PUBLISH,
                JS_PAYLOAD,
                n,
                "operation",
                m,
            ));
            progress.inc(1);
        }
        progress.set_message(format!("{JS_CONSUME} (fetch {FETCH_BATCH})"));
        let m = scenarios::js_consume(&mut stream, timing).await?;
        let per = format!("fetch of up to {FETCH_BATCH} msgs + acks");
        results.push(ScenarioResult::new(JS_CONSUME, JS_PAYLOAD, 1, &per, m));
        progress.inc(1);
        Ok::<_, Error>(results)
    }
    .await;
    let deleted = js.delete_stream(&names.stream).await;
    let results = outcome?;
    deleted.map_err(|e| Error::nats("delete bench stream", e))?;
    Ok(results)
}

/// KV get of one existing key (1 and 64 callers) in a bucket created for the run.
async fn kv_scenarios(
    js: &jetstream::Context,
    names: &Names,
    timing: Timing,
    progress: &ProgressBar,
) -> Result<Vec<ScenarioResult>, Error> {
    let store = js
        .create_key_value(kv::Config {
            bucket: names.bucket.clone(),
            history: 1,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats("create bench bucket", e))?;
    let outcome = async {
        store
            .put("key", payload(JS_PAYLOAD))
            .await
            .map_err(|e| Error::nats("kv put", e))?;
        let mut results = Vec::new();
        for n in CONCURRENCY {
            progress.set_message(format!("{KV_GET} {JS_PAYLOAD} B x{n}"));
            let m = scenarios::kv_get(&store, "key", n, timing).await?;
            results.push(ScenarioResult::new(KV_GET, JS_PAYLOAD, n, "operation", m));
            progress.inc(1);
        }
        Ok::<_, Error>(results)
    }
    .await;
    let deleted = js.delete_key_value(&names.bucket).await;
    let results = outcome?;
    deleted.map_err(|e| Error::nats("delete bench bucket", e))?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_run_and_valid() {
        let (a, b) = (Names::new(), Names::new());
        assert_ne!(a.stream, b.stream);
        assert!(a.js_subject.starts_with("bench.") && a.js_subject.ends_with(".js.p"));
        assert!(
            a.bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        );
    }
}
