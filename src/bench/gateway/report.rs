//! What `switchyard bench gateway` produces: the three paths' rows, their ratios per
//! payload and concurrency, the cached registry lookup's cost, and each target with
//! whether it was met (reported, never asserted). Everything here is pure.

use std::fmt::Write as _;

use serde::Serialize;

use crate::bench::report::{RELAY, RunInfo, ScenarioResult, ratio};
use crate::bench::table::{
    fmt_bytes, fmt_latency_us, fmt_ratio, render_run, scenario_header, scenario_row,
};

/// Path names, as they appear in the table and the JSON (`relay` is the baseline's).
pub const DIRECT: &str = "direct";
pub const GATEWAY: &str = "gateway";

/// The gateway reaches at least this share of the bare relay's msgs/s.
pub const MIN_GATEWAY_VS_RELAY: f64 = 0.90;
/// With 1 caller, the gateway's p99 is at most this much above the direct p99 (µs).
pub const MAX_P99_OVER_DIRECT_US: i64 = 300;
/// A cached registry lookup takes at most this long, median (ns).
pub const MAX_LOOKUP_MEDIAN_NS: f64 = 1_000.0;

/// The subjects each path requests.
#[derive(Debug, Clone, Serialize)]
pub struct Subjects {
    pub direct: String,
    pub relay: String,
    pub gateway: String,
}

/// The relay and the gateway against the direct request, and the gateway against the
/// relay, for one payload and concurrency (ratios of msgs/s, differences in µs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    pub payload_bytes: usize,
    pub concurrency: usize,
    pub gateway_vs_relay_throughput: f64,
    pub gateway_vs_direct_throughput: f64,
    pub relay_vs_direct_throughput: f64,
    pub gateway_p50_over_direct_us: i64,
    pub gateway_p99_over_direct_us: i64,
    pub relay_p50_over_direct_us: i64,
    pub relay_p99_over_direct_us: i64,
    /// The relay's CPU per request over the gateway's (this process and the server):
    /// what the throughput ratio approaches on a machine with nothing else running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_vs_relay_cpu: Option<f64>,
}

/// What one registry lookup as the gateway makes it per request costs, from batches
/// of calls timed together (a single call is too short to time on its own).
#[derive(Debug, Clone, Serialize)]
pub struct LookupCost {
    /// What one call is.
    pub call: &'static str,
    pub batches: usize,
    pub calls_per_batch: usize,
    /// Per call, over the batches.
    pub median_ns: f64,
    pub p99_ns: f64,
    pub min_ns: f64,
}

/// One target of the issue, measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub name: String,
    pub measured: f64,
    /// `at least` or `at most`.
    pub rule: &'static str,
    pub limit: f64,
    pub unit: &'static str,
    pub met: bool,
}

impl Target {
    fn at_least(name: String, measured: f64, limit: f64, unit: &'static str) -> Target {
        let met = measured >= limit;
        Target {
            name,
            measured,
            rule: "at least",
            limit,
            unit,
            met,
        }
    }

    fn at_most(name: String, measured: f64, limit: f64, unit: &'static str) -> Target {
        let met = measured <= limit;
        Target {
            name,
            measured,
            rule: "at most",
            limit,
            unit,
            met,
        }
    }
}

/// The whole gateway run: what `switchyard bench gateway --json` prints.
#[derive(Debug, Serialize)]
pub struct GatewayReport {
    pub suite: &'static str,
    #[serde(flatten)]
    pub run: RunInfo,
    pub subjects: Subjects,
    pub scenarios: Vec<ScenarioResult>,
    pub comparisons: Vec<Comparison>,
    pub lookup: LookupCost,
    pub targets: Vec<Target>,
}

impl GatewayReport {
    /// Compares the rows and checks the targets.
    pub fn new(
        run: RunInfo,
        subjects: Subjects,
        scenarios: Vec<ScenarioResult>,
        lookup: LookupCost,
    ) -> GatewayReport {
        let comparisons = compare(&scenarios);
        let targets = targets(&comparisons, &lookup);
        GatewayReport {
            suite: "gateway",
            run,
            subjects,
            scenarios,
            comparisons,
            lookup,
            targets,
        }
    }
}

/// One comparison per payload and concurrency that has all three paths.
pub fn compare(rows: &[ScenarioResult]) -> Vec<Comparison> {
    let find = |path: &str, of: &ScenarioResult| {
        rows.iter().find(|r| {
            r.scenario == path
                && r.payload_bytes == of.payload_bytes
                && r.concurrency == of.concurrency
        })
    };
    let us = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let p50 = |a: &ScenarioResult, b: &ScenarioResult| {
        us(a.latency.p50_us).saturating_sub(us(b.latency.p50_us))
    };
    let p99 = |a: &ScenarioResult, b: &ScenarioResult| {
        us(a.latency.p99_us).saturating_sub(us(b.latency.p99_us))
    };
    rows.iter()
        .filter(|r| r.scenario == DIRECT)
        .filter_map(|d| Some((d, find(RELAY, d)?, find(GATEWAY, d)?)))
        .map(|(d, r, g)| Comparison {
            payload_bytes: d.payload_bytes,
            concurrency: d.concurrency,
            gateway_vs_relay_throughput: ratio(g.msgs_per_sec, r.msgs_per_sec),
            gateway_vs_direct_throughput: ratio(g.msgs_per_sec, d.msgs_per_sec),
            relay_vs_direct_throughput: ratio(r.msgs_per_sec, d.msgs_per_sec),
            gateway_p50_over_direct_us: p50(g, d),
            gateway_p99_over_direct_us: p99(g, d),
            relay_p50_over_direct_us: p50(r, d),
            relay_p99_over_direct_us: p99(r, d),
            gateway_vs_relay_cpu: g.cpu.zip(r.cpu).map(|(g, r)| g.ratio_to(&r)),
        })
        .collect()
}

/// The targets: gateway ≥ 90 % of the relay's msgs/s at every payload and
/// concurrency, ≤ 300 µs p99 over direct with 1 caller, lookup ≤ 1 µs median.
pub fn targets(comparisons: &[Comparison], lookup: &LookupCost) -> Vec<Target> {
    let cell = |c: &Comparison| format!("{} x{}", fmt_bytes(c.payload_bytes), c.concurrency);
    let mut targets: Vec<Target> = comparisons
        .iter()
        .map(|c| {
            Target::at_least(
                format!("gateway/relay msgs/s, {}", cell(c)),
                c.gateway_vs_relay_throughput,
                MIN_GATEWAY_VS_RELAY,
                "ratio",
            )
        })
        .collect();
    targets.extend(comparisons.iter().filter(|c| c.concurrency == 1).map(|c| {
        Target::at_most(
            format!("gateway p99 - direct p99, {}", cell(c)),
            c.gateway_p99_over_direct_us as f64,
            MAX_P99_OVER_DIRECT_US as f64,
            "µs",
        )
    }));
    targets.push(Target::at_most(
        "cached registry lookup, median".into(),
        lookup.median_ns,
        MAX_LOOKUP_MEDIAN_NS,
        "ns",
    ));
    targets
}

/// The value at quantile `q` (0..=1) of `sorted` (ascending), nearest rank; 0 if empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A signed difference in µs, with its unit.
fn fmt_delta_us(us: i64) -> String {
    let sign = if us < 0 { "-" } else { "+" };
    format!("{sign}{}", fmt_latency_us(us.unsigned_abs()))
}

/// The human-readable rendering of a gateway report.
pub fn render_table(report: &GatewayReport) -> String {
    let mut out = String::new();
    render_run(&mut out, "switchyard bench gateway", &report.run);
    let s = &report.subjects;
    let _ = writeln!(
        out,
        "direct = {}, relay = {} -> {}, gateway = {} -> {}\n",
        s.direct, s.relay, s.direct, s.gateway, s.direct
    );
    let notes = "vs direct (msgs/s; p50, p99); gateway/relay msgs/s, cpu/request";
    let _ = writeln!(out, "{}", scenario_header("path", notes));
    for r in &report.scenarios {
        let mut notes = Vec::new();
        let c = report
            .comparisons
            .iter()
            .find(|c| c.payload_bytes == r.payload_bytes && c.concurrency == r.concurrency);
        match (r.scenario.as_str(), c) {
            (RELAY, Some(c)) => notes.push(format!(
                "{}; {}, {}",
                fmt_ratio(c.relay_vs_direct_throughput),
                fmt_delta_us(c.relay_p50_over_direct_us),
                fmt_delta_us(c.relay_p99_over_direct_us)
            )),
            (GATEWAY, Some(c)) => notes.push(format!(
                "{}; {}, {}; {}, {}",
                fmt_ratio(c.gateway_vs_direct_throughput),
                fmt_delta_us(c.gateway_p50_over_direct_us),
                fmt_delta_us(c.gateway_p99_over_direct_us),
                fmt_ratio(c.gateway_vs_relay_throughput),
                c.gateway_vs_relay_cpu.map_or("-".to_string(), fmt_ratio)
            )),
            _ => {}
        }
        let _ = writeln!(out, "{}", scenario_row(r, notes));
    }
    let l = &report.lookup;
    let _ = writeln!(
        out,
        "\ncached registry lookup ({}): median {:.0} ns, p99 {:.0} ns, min {:.0} ns per call \
         ({} batches of {})",
        l.call, l.median_ns, l.p99_ns, l.min_ns, l.batches, l.calls_per_batch
    );
    out.push_str("\ntargets:\n");
    for t in &report.targets {
        let (measured, limit) = match t.unit {
            // Three decimals, so that 0.896 is not shown as a missed 0.90.
            "ratio" => (format!("{:.3}x", t.measured), fmt_ratio(t.limit)),
            unit => (
                format!("{:.0} {unit}", t.measured),
                format!("{:.0} {unit}", t.limit),
            ),
        };
        let verdict = if t.met { "met   " } else { "MISSED" };
        let _ = writeln!(
            out,
            "  {verdict} {:<36} {measured:>10} ({} {limit})",
            t.name, t.rule
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::report::{Measurement, new_histogram};
    use crate::bench::table::tests::test_run;

    fn row(path: &str, conc: usize, rate: f64, p50: u64, p99: u64) -> ScenarioResult {
        let mut histogram = new_histogram().unwrap();
        histogram.record_n(p50, 50).unwrap();
        histogram.record_n(p99, 50).unwrap();
        let m = Measurement {
            histogram,
            ops: rate as u64,
            errors: 0,
            first_error: None,
            elapsed: Duration::from_secs(1),
            // As if the machine were saturated: CPU per request is 1 s over the rate.
            cpu: Some(crate::bench::cpu::CpuPerUnit {
                bench_us: 1e6 / rate,
                server_us: None,
            }),
        };
        ScenarioResult::new(path, 128, conc, "operation", m)
    }

    fn lookup(median_ns: f64) -> LookupCost {
        LookupCost {
            call: "lookup + serves",
            batches: 200,
            calls_per_batch: 1000,
            median_ns,
            p99_ns: median_ns * 2.0,
            min_ns: median_ns / 2.0,
        }
    }

    fn report() -> GatewayReport {
        let rows = vec![
            row(DIRECT, 1, 10_000.0, 100, 200),
            row(RELAY, 1, 5_000.0, 250, 400),
            row(GATEWAY, 1, 4_600.0, 270, 600),
            row(DIRECT, 64, 100_000.0, 500, 1_000),
            row(RELAY, 64, 40_000.0, 1_200, 3_000),
            row(GATEWAY, 64, 30_000.0, 1_500, 4_000),
        ];
        let subjects = Subjects {
            direct: "svc.echo.say".into(),
            relay: "bench.x.relay".into(),
            gateway: "api.echo.say".into(),
        };
        GatewayReport::new(test_run(), subjects, rows, lookup(80.0))
    }

    #[test]
    fn comparisons_are_ratios_and_differences_to_direct() {
        let report = report();
        assert_eq!(report.comparisons.len(), 2);
        let c = report.comparisons[0];
        assert_eq!((c.payload_bytes, c.concurrency), (128, 1));
        assert!((c.gateway_vs_relay_throughput - 0.92).abs() < 1e-9, "{c:?}");
        assert!(
            (c.gateway_vs_direct_throughput - 0.46).abs() < 1e-9,
            "{c:?}"
        );
        assert!((c.relay_vs_direct_throughput - 0.5).abs() < 1e-9, "{c:?}");
        assert_eq!(c.gateway_p50_over_direct_us, 170);
        assert_eq!(c.gateway_p99_over_direct_us, 400);
        assert_eq!(c.relay_p99_over_direct_us, 200);
        let cpu = c.gateway_vs_relay_cpu.unwrap();
        assert!((cpu - 0.92).abs() < 1e-9, "{c:?}");
        // No gateway row for 1 KiB: no comparison rather than a made-up one.
        assert!(compare(&report.scenarios[..2]).is_empty());
    }

    #[test]
    fn targets_are_checked_not_asserted() {
        let report = report();
        let verdicts: Vec<(&str, bool)> = report
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t.met))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("gateway/relay msgs/s, 128 B x1", true),
                ("gateway/relay msgs/s, 128 B x64", false),
                ("gateway p99 - direct p99, 128 B x1", false),
                ("cached registry lookup, median", true),
            ]
        );
        let slow = targets(&report.comparisons, &lookup(1_500.0));
        assert!(!slow[3].met);
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), 100.0);
        assert_eq!(quantile(&values, 0.99), 198.0);
        assert_eq!(quantile(&values, 0.0), 1.0);
        assert_eq!(quantile(&values, 1.0), 200.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn table_shows_paths_ratios_lookup_and_targets() {
        let text = render_table(&report());
        assert!(text.starts_with("switchyard bench gateway: "), "{text}");
        let gateway = text.lines().find(|l| l.starts_with("gateway")).unwrap();
        assert!(
            gateway.ends_with("0.46x; +170 µs, +400 µs; 0.92x, 0.92x"),
            "{gateway}"
        );
        let relay = text.lines().find(|l| l.starts_with("relay")).unwrap();
        assert!(relay.ends_with("0.50x; +150 µs, +200 µs"), "{relay}");
        assert!(text.contains("median 80 ns"), "{text}");
        assert!(
            text.contains("MISSED gateway p99 - direct p99, 128 B x1"),
            "{text}"
        );
        assert!(text.lines().all(|l| l == l.trim_end()), "{text}");
        assert_eq!(fmt_delta_us(-3), "-3 µs");
        assert_eq!(fmt_delta_us(1_500), "+1.50 ms");
    }
}
