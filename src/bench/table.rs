//! The human-readable rendering of a [`Report`]: units chosen per value, thousands
//! separators, and the relay-to-raw ratio column; the run's head and the scenario rows
//! are shared with the gateway suite's table.

use std::fmt::Write as _;
use std::time::Duration;

use super::report::{Report, RunInfo, ScenarioResult};

pub fn fmt_latency_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// Whole messages per second with thousands separators.
pub fn fmt_rate(rate: f64) -> String {
    let digits = format!("{:.0}", rate.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn fmt_ratio(r: f64) -> String {
    format!("{r:.2}x")
}

pub fn fmt_bytes(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// The two lines that open every suite's table: server and machine, then timing.
pub fn render_run(out: &mut String, title: &str, run: &RunInfo) {
    let m = &run.machine;
    let _ = writeln!(
        out,
        "{title}: nats-server {} ({}), {} x {}, {:.1} GiB RAM, kernel {}",
        m.nats_server_version,
        run.server,
        m.nproc,
        m.cpu_model,
        m.memory_kib as f64 / (1024.0 * 1024.0),
        m.kernel
    );
    let _ = writeln!(
        out,
        "{} per scenario after {} warm-up; started {}\n",
        humantime::format_duration(Duration::from_millis(run.duration_ms)),
        humantime::format_duration(Duration::from_millis(run.warmup_ms)),
        run.started_at
    );
}

/// The column header of scenario rows and its rule; `first` and `notes` name the
/// first and last columns.
pub fn scenario_header(first: &str, notes: &str) -> String {
    let header = format!(
        "{first:<14} {:>8} {:>5} {:>10} {:>10} {:>10} {:>10}  {notes}",
        "payload", "conc", "msgs/s", "p50", "p99", "p99.9"
    );
    format!("{header}\n{}", "-".repeat(header.chars().count()))
}

/// One scenario row, `notes` joined in the last column, plus its errors if any.
pub fn scenario_row(r: &ScenarioResult, mut notes: Vec<String>) -> String {
    if r.errors > 0 {
        let first = r.first_error.as_deref().unwrap_or("");
        notes.push(format!("{} errors, first: {first}", r.errors));
    }
    let row = format!(
        "{:<14} {:>8} {:>5} {:>10} {:>10} {:>10} {:>10}  {}",
        r.scenario,
        fmt_bytes(r.payload_bytes),
        r.concurrency,
        fmt_rate(r.msgs_per_sec),
        fmt_latency_us(r.latency.p50_us),
        fmt_latency_us(r.latency.p99_us),
        fmt_latency_us(r.latency.p999_us),
        notes.join("; "),
    );
    row.trim_end().to_string()
}

/// The human-readable rendering of a baseline report.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    render_run(&mut out, "switchyard bench", &report.run);
    let _ = writeln!(
        out,
        "{}",
        scenario_header("scenario", "relay/raw (msgs/s, p50)")
    );
    for r in &report.scenarios {
        let mut notes = Vec::new();
        if let Some(v) = r.vs_raw {
            notes.push(format!(
                "{}, {}",
                fmt_ratio(v.throughput),
                fmt_ratio(v.p50_latency)
            ));
        }
        if r.latency_per != "operation" {
            notes.push(format!("latency per {}", r.latency_per));
        }
        let _ = writeln!(out, "{}", scenario_row(r, notes));
    }
    out.push_str("\nnats bench reference (natscli):\n");
    let cli = &report.nats_cli;
    if let Some(note) = &cli.note {
        let _ = writeln!(out, "  {note}");
    }
    for run in &cli.runs {
        let _ = writeln!(out, "  {}\n    $ {}", run.name, run.command);
        for line in &run.summary {
            let _ = writeln!(out, "    {line}");
        }
        if let Some(err) = &run.error {
            let _ = writeln!(out, "    error: {err}");
        }
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A run description for rendering tests.
    pub fn test_run() -> RunInfo {
        RunInfo {
            started_at: "2026-01-01T00:00:00Z".into(),
            switchyard_version: "0.1.0",
            server: "embedded".into(),
            duration_ms: 3000,
            warmup_ms: 500,
            machine: crate::bench::report::MachineInfo {
                nproc: 2,
                cpu_model: "CPU".into(),
                memory_kib: 2 * 1024 * 1024,
                kernel: "6.1".into(),
                nats_server_version: "2.15.2".into(),
            },
        }
    }

    #[test]
    fn latency_formatting_switches_units() {
        assert_eq!(fmt_latency_us(0), "0 µs");
        assert_eq!(fmt_latency_us(999), "999 µs");
        assert_eq!(fmt_latency_us(1_000), "1.00 ms");
        assert_eq!(fmt_latency_us(12_345), "12.35 ms");
        assert_eq!(fmt_latency_us(2_500_000), "2.50 s");
    }

    #[test]
    fn rate_ratio_and_size_formatting() {
        assert_eq!(fmt_rate(0.0), "0");
        assert_eq!(fmt_rate(999.4), "999");
        assert_eq!(fmt_rate(1234.0), "1,234");
        assert_eq!(fmt_rate(1_234_567.8), "1,234,568");
        assert_eq!(fmt_ratio(0.5), "0.50x");
        assert_eq!(fmt_bytes(128), "128 B");
        assert_eq!(fmt_bytes(1024), "1 KiB");
    }

    #[test]
    fn table_shows_every_row_and_the_relay_ratio() {
        use crate::bench::nats_cli::CliReference;
        use crate::bench::report::*;

        let row = |scenario: &str, us: u64| {
            let mut histogram = new_histogram().unwrap();
            histogram.record(us).unwrap();
            let m = Measurement {
                histogram,
                ops: 1000,
                errors: 0,
                first_error: None,
                elapsed: Duration::from_secs(1),
                cpu: None,
            };
            ScenarioResult::new(scenario, 128, 64, "operation", m)
        };
        let mut scenarios = vec![row(REQUEST_REPLY, 100), row(RELAY, 250)];
        attach_ratios(&mut scenarios);
        let report = Report {
            run: test_run(),
            scenarios,
            nats_cli: CliReference::skipped("nats CLI not available"),
        };
        let text = render_table(&report);
        assert!(
            text.contains("3s per scenario after 500ms warm-up"),
            "{text}"
        );
        assert!(text.contains("2.0 GiB RAM"), "{text}");
        let relay = text.lines().find(|l| l.starts_with("relay")).unwrap();
        assert!(relay.ends_with("1.00x, 2.50x"), "{relay}");
        assert!(text.lines().all(|l| l == l.trim_end()), "{text}");
        assert!(text.contains("nats CLI not available"), "{text}");
    }
}
