//! What a bench run produces: per-scenario figures taken from an hdrhistogram, the
//! relay-to-raw ratios, the machine description and the baseline's JSON document
//! (`--json` prints [`Report`]; the gateway suite's is in [`super::gateway`]).
//! Everything here is pure except [`MachineInfo::collect`] and [`RunInfo::new`].

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::cpu::CpuPerUnit;
use super::nats_cli::CliReference;
use super::runner::Timing;
use crate::error::Error;

/// Scenario names, as they appear in the table and the JSON.
pub const REQUEST_REPLY: &str = "request-reply";
pub const RELAY: &str = "relay";
pub const JS_PUBLISH: &str = "js-publish";
pub const JS_CONSUME: &str = "js-consume";
pub const KV_GET: &str = "kv-get";

/// Highest latency the histograms track (60 s, in microseconds).
const MAX_TRACKED_US: u64 = 60_000_000;

/// A histogram in microseconds, three significant digits.
pub fn new_histogram() -> Result<Histogram<u64>, Error> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
        .map_err(|e| Error::internal(format!("cannot create histogram: {e}")))
}

/// Microseconds for the histogram (at least 1, which is its lowest trackable value).
pub fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_TRACKED_US)
}

/// The raw outcome of one scenario before it is summarised.
#[derive(Debug)]
pub struct Measurement {
    pub histogram: Histogram<u64>,
    /// Operations (or messages, for the consumer) completed in the measured window.
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// CPU per operation within the window (this process, and the server when ours);
    /// `None` where the scenario does not count it.
    pub cpu: Option<CpuPerUnit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratio {
    /// Relay msgs/s divided by raw request-reply msgs/s (1.0 = no cost).
    pub throughput: f64,
    /// Relay p50 latency divided by raw request-reply p50 latency (1.0 = no cost).
    pub p50_latency: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: String,
    pub payload_bytes: usize,
    pub concurrency: usize,
    /// What one latency sample covers.
    pub latency_per: String,
    pub ops: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    pub elapsed_ms: f64,
    pub msgs_per_sec: f64,
    pub latency: Latency,
    /// Only on relay rows: relay against raw request-reply, same payload and concurrency.
    pub vs_raw: Option<Ratio>,
    /// CPU per operation within the window, where the scenario counts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuPerUnit>,
}

impl ScenarioResult {
    pub fn new(
        scenario: &str,
        payload_bytes: usize,
        concurrency: usize,
        latency_per: &str,
        m: Measurement,
    ) -> ScenarioResult {
        let h = &m.histogram;
        let secs = m.elapsed.as_secs_f64();
        ScenarioResult {
            scenario: scenario.to_string(),
            payload_bytes,
            concurrency,
            latency_per: latency_per.to_string(),
            ops: m.ops,
            errors: m.errors,
            first_error: m.first_error,
            elapsed_ms: secs * 1000.0,
            msgs_per_sec: if secs > 0.0 { m.ops as f64 / secs } else { 0.0 },
            latency: Latency {
                p50_us: h.value_at_quantile(0.50),
                p99_us: h.value_at_quantile(0.99),
                p999_us: h.value_at_quantile(0.999),
                max_us: h.max(),
                mean_us: h.mean(),
            },
            vs_raw: None,
            cpu: m.cpu,
        }
    }
}

/// Sets `vs_raw` on every relay row that has a raw request-reply row with the same
/// payload and concurrency.
pub fn attach_ratios(results: &mut [ScenarioResult]) {
    let raw: Vec<(usize, usize, f64, u64)> = results
        .iter()
        .filter(|r| r.scenario == REQUEST_REPLY)
        .map(|r| {
            (
                r.payload_bytes,
                r.concurrency,
                r.msgs_per_sec,
                r.latency.p50_us,
            )
        })
        .collect();
    for r in results.iter_mut().filter(|r| r.scenario == RELAY) {
        r.vs_raw = raw
            .iter()
            .find(|(p, c, _, _)| *p == r.payload_bytes && *c == r.concurrency)
            .map(|&(_, _, rate, p50)| Ratio {
                throughput: ratio(r.msgs_per_sec, rate),
                p50_latency: ratio(r.latency.p50_us as f64, p50 as f64),
            });
    }
}

/// `a / b`, or 0 when `b` is not positive (no figure rather than infinity).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// The machine the figures were taken on.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    pub nproc: usize,
    pub cpu_model: String,
    /// MemTotal from /proc/meminfo, in KiB (0 when unknown).
    pub memory_kib: u64,
    pub kernel: String,
    pub nats_server_version: String,
}

impl MachineInfo {
    pub fn collect(nats_server_version: &str) -> MachineInfo {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_else(|| "unknown".into())
        };
        MachineInfo {
            nproc: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: field(&read("/proc/cpuinfo"), "model name"),
            memory_kib: field(&read("/proc/meminfo"), "MemTotal")
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            nats_server_version: nats_server_version.to_string(),
        }
    }
}

/// When, where and how long: the head of every suite's report.
#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub started_at: String,
    pub switchyard_version: &'static str,
    /// `embedded` (started for the run) or the URL of the external server.
    pub server: String,
    pub duration_ms: u64,
    pub warmup_ms: u64,
    pub machine: MachineInfo,
}

impl RunInfo {
    /// Starting now.
    pub fn new(server: String, timing: Timing, machine: MachineInfo) -> RunInfo {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        RunInfo {
            started_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            switchyard_version: env!("CARGO_PKG_VERSION"),
            server,
            duration_ms: millis(timing.duration),
            warmup_ms: millis(timing.warmup),
            machine,
        }
    }
}

/// The whole baseline run: what `--json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub run: RunInfo,
    pub scenarios: Vec<ScenarioResult>,
    pub nats_cli: CliReference,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(scenario: &str, payload: usize, conc: usize, rate: f64, p50: u64) -> ScenarioResult {
        let mut histogram = new_histogram().unwrap();
        histogram.record(p50).unwrap();
        let m = Measurement {
            histogram,
            ops: (rate * 2.0) as u64,
            errors: 0,
            first_error: None,
            elapsed: Duration::from_secs(2),
            cpu: None,
        };
        ScenarioResult::new(scenario, payload, conc, "operation", m)
    }

    #[test]
    fn micros_is_clamped_to_the_histogram_range() {
        assert_eq!(micros(Duration::ZERO), 1);
        assert_eq!(micros(Duration::from_millis(3)), 3_000);
        assert_eq!(micros(Duration::from_secs(3600)), MAX_TRACKED_US);
    }

    #[test]
    fn percentiles_and_rate_come_from_the_measurement() {
        let mut histogram = new_histogram().unwrap();
        for us in 1..=1000 {
            histogram.record(us).unwrap();
        }
        let m = Measurement {
            histogram,
            ops: 1000,
            errors: 0,
            first_error: None,
            elapsed: Duration::from_millis(500),
            cpu: None,
        };
        let r = ScenarioResult::new(KV_GET, 128, 1, "operation", m);
        assert_eq!(r.msgs_per_sec, 2000.0);
        assert_eq!(r.latency.p50_us, 500);
        assert_eq!(r.latency.p99_us, 990);
        assert_eq!(r.latency.p999_us, 999);
        assert_eq!(r.latency.max_us, 1000);
    }

    #[test]
    fn relay_rows_get_ratios_against_the_matching_raw_row() {
        let mut rows = vec![
            result(REQUEST_REPLY, 128, 1, 10_000.0, 100),
            result(REQUEST_REPLY, 128, 64, 40_000.0, 1_000),
            result(RELAY, 128, 1, 5_000.0, 200),
            result(RELAY, 1024, 1, 5_000.0, 200),
        ];
        attach_ratios(&mut rows);
        assert_eq!(rows[0].vs_raw, None);
        assert_eq!(rows[1].vs_raw, None);
        let v = rows[2].vs_raw.unwrap();
        assert!((v.throughput - 0.5).abs() < 1e-9, "{v:?}");
        assert!((v.p50_latency - 2.0).abs() < 0.01, "{v:?}");
        // No raw row for 1 KiB: no ratio rather than a made-up one.
        assert_eq!(rows[3].vs_raw, None);
    }
}
