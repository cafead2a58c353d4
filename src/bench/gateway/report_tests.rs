//! Tests of the gateway report: comparisons, rounds and medians, targets, the table.

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
    GatewayReport::new(test_run(), subjects, vec![rows], lookup(80.0))
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
    let first_two: Vec<ScenarioResult> = report.scenarios[..2]
        .iter()
        .map(|r| r.row.clone())
        .collect();
    assert!(compare(&first_two).is_empty());
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

/// Three rounds of one cell whose gateway does 0.95, 0.85 and 0.91 of the relay.
fn three_rounds() -> GatewayReport {
    let round = |gateway: f64, p99: u64| {
        vec![
            row(DIRECT, 64, 100_000.0, 500, 1_000),
            row(RELAY, 64, 40_000.0, 1_200, 3_000),
            row(GATEWAY, 64, 40_000.0 * gateway, 1_500, p99),
        ]
    };
    let subjects = Subjects {
        direct: "svc.echo.say".into(),
        relay: "bench.x.relay".into(),
        gateway: "api.echo.say".into(),
    };
    let rounds = vec![round(0.95, 4_000), round(0.85, 9_000), round(0.91, 2_000)];
    GatewayReport::new(test_run(), subjects, rounds, lookup(80.0))
}

#[test]
fn rounds_are_compared_one_by_one_and_judged_on_their_medians() {
    let report = three_rounds();
    assert_eq!(report.rounds, 3);
    assert_eq!(report.scenarios.len(), 9);
    assert_eq!(report.round_comparisons.len(), 3);
    let per_round: Vec<f64> = report
        .round_comparisons
        .iter()
        .map(|r| r.comparison.gateway_vs_relay_throughput)
        .collect();
    assert!((per_round[1] - 0.85).abs() < 1e-9, "{per_round:?}");
    assert_eq!(report.comparisons.len(), 1);
    let median = report.comparisons[0];
    assert!(
        (median.gateway_vs_relay_throughput - 0.91).abs() < 1e-9,
        "{median:?}"
    );
    // Each figure's own median: p99 over direct is 3000, 8000, 1000 µs -> 3000
    // (to the histogram's precision).
    let p99 = median.gateway_p99_over_direct_us;
    assert!((2_990..=3_010).contains(&p99), "{median:?}");
    assert!(report.targets[0].met, "{:?}", report.targets);
    // An even count takes the lower middle value.
    let two = medians(&report.round_comparisons[..2]);
    assert!((two[0].gateway_vs_relay_throughput - 0.85).abs() < 1e-9);
}

#[test]
fn a_table_of_rounds_heads_each_round_and_lists_the_medians() {
    let text = render_table(&three_rounds());
    assert!(text.contains("round 1 of 3 (relay first):"), "{text}");
    assert!(text.contains("round 2 of 3 (gateway first):"), "{text}");
    assert!(text.contains("medians over 3 rounds"), "{text}");
    let cell = text
        .lines()
        .find(|l| l.contains("0.950 0.850 0.910"))
        .unwrap();
    assert!(cell.contains("-> 0.910x"), "{cell}");
    // One round: no headings, no medians section.
    let one = render_table(&report());
    assert!(
        !one.contains("round 1") && !one.contains("medians over"),
        "{one}"
    );
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
