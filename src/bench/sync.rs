//! `switchyard bench sync`: data flow and sync against the thinnest hand-written
//! pipeline, on the same server, with the same records and the same target, in one
//! run.
//!
//! - The target is one in-process responder ("any subject whose responder replies").
//!   It notes when each record reaches it; latency is from the start of the source's
//!   publish to that moment, on one clock.
//! - The hand-written pipeline: a stream like `DATA` (file storage), JetStream publish
//!   with ack, one explicit-ack pull consumer, one request to the target per record
//!   (at most [`IN_FLIGHT`] at once), then the ack.
//! - The contract floor: the hand-written pipeline plus the least issue 4's contract
//!   adds to each record, its status stored in a KV bucket and a confirmation carrying
//!   its id ([`floor::contract_floor_pipeline`]): what no implementation of that
//!   contract can undercut on the same machine.
//! - Switchyard: the same publishes to `data.in.<source>`, a flow rule routing them to
//!   the target keyed by a field, and the `flow` and `sync` components as `up` runs
//!   them (lanes = [`IN_FLIGHT`]), statuses and confirmations included.
//!
//! Both get the same publishers for the same window; throughput counts the records
//! that reached the target within it. Then the publishers stop and the bench waits for
//! every published record to arrive, so a loss shows as `delivered < published`.

mod floor;
mod load;

use std::time::Duration;

use async_nats::jetstream;
use indicatif::ProgressBar;
use serde::Serialize;

use self::floor::contract_floor_pipeline;
use self::load::{
    IN_FLIGHT, Measured, PUBLISHERS, RECORD_BYTES, measure, serve_target, thin_pipeline,
};
use super::cpu::{self, CpuPerUnit};
use super::report::RunInfo;
use super::{Names, Timing};
use crate::admin::Readiness;
use crate::component::Component;
use crate::component::supervisor::Supervisor;
use crate::config::Config;
use crate::data::flow::FlowComponent;
use crate::data::sync::SyncComponent;
use crate::error::Error;

pub const STEPS: u64 = 4;
#[derive(Debug, Serialize)]
pub struct SyncRow {
    pub path: &'static str,
    pub records_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub published: u64,
    pub delivered: u64,
    /// Records/s relative to the hand-written pipeline.
    pub ratio: f64,
    /// CPU per record (this process and the server), within the window.
    pub cpu: CpuPerUnit,
    /// The hand-written path's CPU per record over this path's: the ratio a machine
    /// with nothing else running would approach when both are CPU-bound.
    pub cpu_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct SyncReport {
    pub run: RunInfo,
    pub rows: Vec<SyncRow>,
    pub cache: Option<crate::bench::cache::CacheFigures>,
}

pub async fn bench(
    config: &Config,
    embedded: bool,
    timing: Timing,
    url: &str,
    server: String,
    progress: &ProgressBar,
) -> Result<SyncReport, Error> {
    crate::observability::metrics::install();
    let (caller, run, jetstream_config) =
        super::connect_provisioned(config, embedded, url, "switchyard-bench", server, timing)
            .await?;
    let js = jetstream::new(caller.clone());
    let names = Names::new();
    let id = names.stream.trim_start_matches("BENCH_").to_lowercase();
    let target_subject = format!("bench.{id}.target");
    let target = crate::nats::connect(url, "switchyard-bench-target").await?;

    let hand_written = HandWritten {
        url,
        js: &js,
        caller: &caller,
        stream: &names.stream,
        id: &id,
        target: &target,
        target_subject: &target_subject,
        timing,
    };
    progress.set_message("hand-written pipeline");
    let base = hand_written.measure(Path::Thin).await?;
    progress.inc(1);
    progress.set_message("contract floor");
    let floor_measured = hand_written.measure(Path::ContractFloor).await?;
    progress.inc(1);

    progress.set_message("flow and sync");
    let arrivals = serve_target(&target, &target_subject).await?;
    let source = format!("bench{id}");
    let rule = serde_json::json!({
        "name": source,
        "match": {"subject": format!("data.in.{source}.>")},
        "targets": [{"name": source, "subject": target_subject}],
        "key": {"field": "/k"},
    });
    let policies = js
        .get_key_value(crate::subjects::BUCKET_POLICIES)
        .await
        .map_err(|e| Error::nats("open policies", e))?;
    policies
        .put(
            format!("sync.{source}"),
            format!("{{\"max_in_flight\":{IN_FLIGHT}}}").into(),
        )
        .await
        .map_err(|e| Error::nats("write the bench policy", e))?;
    let flows = js
        .get_key_value(crate::subjects::BUCKET_FLOWS)
        .await
        .map_err(|e| Error::nats("open flows", e))?;
    flows
        .put(&source, rule.to_string().into())
        .await
        .map_err(|e| Error::nats("write the bench rule", e))?;
    let components: Vec<Box<dyn Component>> =
        vec![Box::new(FlowComponent), Box::new(SyncComponent::default())];
    let client = crate::nats::connect(url, "switchyard-bench-sync").await?;
    let supervisor =
        Supervisor::start(client, components, Readiness::default(), jetstream_config).await?;
    let ours = measure(&caller, &format!("data.in.{source}.p"), timing, arrivals).await;
    supervisor.stop(Duration::from_secs(5)).await;
    let _ = flows.delete(&source).await;
    let _ = policies.delete(format!("sync.{source}")).await;
    progress.inc(1);
    let ours = ours?;

    progress.set_message("cache hits");
    let cache = match crate::bench::cache::measure(&caller, progress).await {
        Ok(figures) => Some(figures),
        Err(err) => {
            tracing::warn!(%err, "cache figures not measured");
            None
        }
    };
    progress.inc(1);
    let baseline = base.records_per_sec;
    let mut rows = vec![
        row("hand-written pipeline", base),
        row("contract floor", floor_measured),
        row("switchyard flow + sync", ours),
    ];
    let baseline_cpu = rows[0].cpu;
    for row in &mut rows {
        row.ratio = cpu::ratio(row.records_per_sec, baseline);
        row.cpu_ratio = row.cpu.ratio_to(&baseline_cpu);
    }
    Ok(SyncReport { run, rows, cache })
}

/// The two hand-written paths.
#[derive(Clone, Copy)]
enum Path {
    Thin,
    ContractFloor,
}

/// What both hand-written paths run with: each gets stream `stream` of its own for the
/// run (removed after it) and the same target, publishers and window.
struct HandWritten<'a> {
    url: &'a str,
    js: &'a jetstream::Context,
    caller: &'a async_nats::Client,
    stream: &'a str,
    id: &'a str,
    target: &'a async_nats::Client,
    target_subject: &'a str,
    timing: Timing,
}

impl HandWritten<'_> {
    async fn measure(&self, path: Path) -> Result<Measured, Error> {
        let arrivals = serve_target(self.target, self.target_subject).await?;
        let subjects = format!("bench.{}.thin.>", self.id);
        let (url, js, stream, target) = (self.url, self.js, self.stream, self.target_subject);
        let running = match path {
            Path::Thin => thin_pipeline(url, js, stream, &subjects, target).await?,
            Path::ContractFloor => {
                contract_floor_pipeline(url, js, stream, &subjects, target).await?
            }
        };
        let subject = format!("bench.{}.thin.p", self.id);
        let measured = measure(self.caller, &subject, self.timing, arrivals).await;
        running.abort();
        let _ = js.delete_stream(stream).await;
        if let Path::ContractFloor = path {
            let _ = js.delete_key_value(floor::bucket(stream)).await;
        }
        measured
    }
}

fn row(path: &'static str, m: Measured) -> SyncRow {
    SyncRow {
        path,
        records_per_sec: m.records_per_sec,
        p50_us: m.p50_us,
        p99_us: m.p99_us,
        published: m.published,
        delivered: m.delivered,
        ratio: 1.0,
        cpu: m.cpu,
        cpu_ratio: 1.0,
    }
}

pub fn render_table(report: &SyncReport) -> String {
    let mut out = format!(
        "switchyard bench sync: {} records of {RECORD_BYTES} B, {PUBLISHERS} publishers, {IN_FLIGHT} deliveries in flight, {} ms window\n\n",
        report.run.server, report.run.duration_ms
    );
    out.push_str(&format!(
        "{:<24} {:>12} {:>7} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}\n",
        "path",
        "records/s",
        "ratio",
        "p50 µs",
        "p99 µs",
        "published",
        "delivered",
        "cpu µs",
        "cpu ratio"
    ));
    for r in &report.rows {
        out.push_str(&format!(
            "{:<24} {:>12.0} {:>7.2} {:>10} {:>10} {:>10} {:>10} {:>9.1} {:>9.2}\n",
            r.path,
            r.records_per_sec,
            r.ratio,
            r.p50_us,
            r.p99_us,
            r.published,
            r.delivered,
            r.cpu.total_us(),
            r.cpu_ratio
        ));
    }
    out.push_str(&cpu::footnote("record", report.rows.iter().map(|r| r.cpu)));
    if let Some(cache) = &report.cache {
        let hit = &cache.get_local_hit;
        out.push_str(&format!(
            "\nin-process cache hit (get_local): median {} ns, p99 {} ns over {} calls (target: median <= 1000 ns)\n",
            hit.median_ns, hit.p99_ns, hit.calls
        ));
    }
    out
}
