//! What `switchyard bench gateway` produces: the three paths' rows in each round, their
//! ratios per payload and concurrency (per round, and the median over the rounds), the
//! cached registry lookup's cost, and each target, checked on the medians, with
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

/// One measured row and the round (from 1) it belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRow {
    pub round: usize,
    #[serde(flatten)]
    pub row: ScenarioResult,
}

/// One round's comparison of one payload and concurrency.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RoundComparison {
    pub round: usize,
    #[serde(flatten)]
    pub comparison: Comparison,
}

/// The whole gateway run: what `switchyard bench gateway --json` prints.
#[derive(Debug, Serialize)]
pub struct GatewayReport {
    pub suite: &'static str,
    #[serde(flatten)]
    pub run: RunInfo,
    pub subjects: Subjects,
    pub rounds: usize,
    pub scenarios: Vec<RoundRow>,
    pub round_comparisons: Vec<RoundComparison>,
    /// Per payload and concurrency, each figure's median over the rounds (the lower
    /// middle one for an even count): what the targets are checked on.
    pub comparisons: Vec<Comparison>,
    pub lookup: LookupCost,
    pub targets: Vec<Target>,
}

impl GatewayReport {
    /// Compares the rows of each round (`rounds[i]` is round `i + 1`), takes the
    /// medians and checks the targets on them.
    pub fn new(
        run: RunInfo,
        subjects: Subjects,
        rounds: Vec<Vec<ScenarioResult>>,
        lookup: LookupCost,
    ) -> GatewayReport {
        let round_comparisons: Vec<RoundComparison> = rounds
            .iter()
            .zip(1..)
            .flat_map(|(rows, round)| {
                compare(rows)
                    .into_iter()
                    .map(move |comparison| RoundComparison { round, comparison })
            })
            .collect();
        let comparisons = medians(&round_comparisons);
        let targets = targets(&comparisons, &lookup);
        GatewayReport {
            suite: "gateway",
            run,
            subjects,
            rounds: rounds.len(),
            scenarios: rounds
                .into_iter()
                .zip(1..)
                .flat_map(|(rows, round)| rows.into_iter().map(move |row| RoundRow { round, row }))
                .collect(),
            round_comparisons,
            comparisons,
            lookup,
            targets,
        }
    }
}

/// Per payload and concurrency (in the order of the first round), each field's median
/// over the rounds; nothing is mixed across cells.
pub fn medians(rounds: &[RoundComparison]) -> Vec<Comparison> {
    let mut cells: Vec<(usize, usize)> = Vec::new();
    for r in rounds {
        let cell = (r.comparison.payload_bytes, r.comparison.concurrency);
        if !cells.contains(&cell) {
            cells.push(cell);
        }
    }
    cells
        .into_iter()
        .map(|(payload_bytes, concurrency)| {
            let of_cell: Vec<&Comparison> = rounds
                .iter()
                .map(|r| &r.comparison)
                .filter(|c| c.payload_bytes == payload_bytes && c.concurrency == concurrency)
                .collect();
            let ratio = |f: fn(&Comparison) -> f64| {
                let mut values: Vec<f64> = of_cell.iter().map(|c| f(c)).collect();
                values.sort_by(f64::total_cmp);
                quantile(&values, 0.5)
            };
            let us = |f: fn(&Comparison) -> i64| {
                let mut values: Vec<i64> = of_cell.iter().map(|c| f(c)).collect();
                values.sort_unstable();
                values[values.len().div_ceil(2) - 1]
            };
            let cpu: Vec<f64> = {
                let mut values: Vec<f64> = of_cell
                    .iter()
                    .filter_map(|c| c.gateway_vs_relay_cpu)
                    .collect();
                values.sort_by(f64::total_cmp);
                values
            };
            Comparison {
                payload_bytes,
                concurrency,
                gateway_vs_relay_throughput: ratio(|c| c.gateway_vs_relay_throughput),
                gateway_vs_direct_throughput: ratio(|c| c.gateway_vs_direct_throughput),
                relay_vs_direct_throughput: ratio(|c| c.relay_vs_direct_throughput),
                gateway_p50_over_direct_us: us(|c| c.gateway_p50_over_direct_us),
                gateway_p99_over_direct_us: us(|c| c.gateway_p99_over_direct_us),
                relay_p50_over_direct_us: us(|c| c.relay_p50_over_direct_us),
                relay_p99_over_direct_us: us(|c| c.relay_p99_over_direct_us),
                gateway_vs_relay_cpu: (!cpu.is_empty()).then(|| quantile(&cpu, 0.5)),
            }
        })
        .collect()
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

/// Each cell's gateway/relay figures round by round, and their medians.
fn render_medians(out: &mut String, report: &GatewayReport) {
    let _ = writeln!(
        out,
        "
medians over {} rounds (gateway/relay msgs/s per round -> median; cpu/request; \
         gateway p99 over direct):",
        report.rounds
    );
    for c in &report.comparisons {
        let per_round: Vec<String> = report
            .round_comparisons
            .iter()
            .map(|r| &r.comparison)
            .filter(|r| r.payload_bytes == c.payload_bytes && r.concurrency == c.concurrency)
            .map(|r| format!("{:.3}", r.gateway_vs_relay_throughput))
            .collect();
        let _ = writeln!(
            out,
            "  {:>8} x{:<3} {} -> {:.3}x; {}; {}",
            fmt_bytes(c.payload_bytes),
            c.concurrency,
            per_round.join(" "),
            c.gateway_vs_relay_throughput,
            c.gateway_vs_relay_cpu.map_or("-".to_string(), fmt_ratio),
            fmt_delta_us(c.gateway_p99_over_direct_us)
        );
    }
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
    let mut heading = 0;
    for RoundRow { round, row: r } in &report.scenarios {
        if report.rounds > 1 && *round != heading {
            heading = *round;
            let order = if round.is_multiple_of(2) {
                "gateway"
            } else {
                "relay"
            };
            let _ = writeln!(out, "round {round} of {} ({order} first):", report.rounds);
        }
        let mut notes = Vec::new();
        let c = report
            .round_comparisons
            .iter()
            .find(|c| {
                c.round == *round
                    && c.comparison.payload_bytes == r.payload_bytes
                    && c.comparison.concurrency == r.concurrency
            })
            .map(|c| &c.comparison);
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
    if report.rounds > 1 {
        render_medians(&mut out, report);
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
#[path = "report_tests.rs"]
mod tests;
