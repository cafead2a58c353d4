//! CPU time spent by the bench process and the nats-server it talks to, per unit of
//! work. Throughput ratios swing with whatever else runs on a shared 2-core machine;
//! the CPU each path spends per record (or task) swings much less, so the suites that
//! are CPU-bound report it beside the ratio.

use std::time::Duration;

use crate::observability::process::cpu_time;

/// The processes whose CPU time is counted: this one and, when known, the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuMeter {
    server_pid: Option<u32>,
}

/// CPU time used so far, per process.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    pub bench: Duration,
    pub server: Option<Duration>,
}

/// CPU time per unit of work between two samples.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuPerUnit {
    /// Microseconds of CPU in this process (clients, components, target).
    pub bench_us: f64,
    /// Microseconds of CPU in nats-server; `None` when the server is not ours.
    pub server_us: Option<f64>,
}

impl CpuPerUnit {
    pub fn total_us(&self) -> f64 {
        self.bench_us + self.server_us.unwrap_or(0.0)
    }

    /// `baseline`'s CPU per unit over this one's (0 when nothing was counted).
    pub fn ratio_to(&self, baseline: &CpuPerUnit) -> f64 {
        ratio(baseline.total_us(), self.total_us())
    }
}

/// `value / baseline`, 0 for an empty baseline.
pub fn ratio(value: f64, baseline: f64) -> f64 {
    if baseline > 0.0 {
        value / baseline
    } else {
        0.0
    }
}

/// The line under a table with a cpu column: what it counts, per `unit`.
pub fn footnote(unit: &str, rows: impl IntoIterator<Item = CpuPerUnit>) -> String {
    let server_missing = rows.into_iter().any(|r| r.server_us.is_none());
    format!(
        "\ncpu µs: CPU time of this process and nats-server per {unit} within the window; \
         cpu ratio: the hand-written path's over this one's{}\n",
        if server_missing {
            " (server not counted: it is not ours)"
        } else {
            ""
        }
    )
}

impl CpuMeter {
    /// `server_pid` is the embedded server's; with `--nats` only this process counts.
    pub fn new(server_pid: Option<u32>) -> CpuMeter {
        CpuMeter { server_pid }
    }

    pub fn sample(&self) -> CpuSample {
        CpuSample {
            bench: cpu_time("self").unwrap_or_default(),
            server: self.server_pid.and_then(|pid| cpu_time(&pid.to_string())),
        }
    }

    /// CPU per unit of work from `from` to `to` over `units` (zero units: zero).
    pub fn per_unit(from: CpuSample, to: CpuSample, units: u64) -> CpuPerUnit {
        let per = |d: Duration| {
            if units == 0 {
                0.0
            } else {
                d.as_secs_f64() * 1e6 / units as f64
            }
        };
        CpuPerUnit {
            bench_us: per(to.bench.saturating_sub(from.bench)),
            server_us: match (from.server, to.server) {
                (Some(a), Some(b)) => Some(per(b.saturating_sub(a))),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_cpu_and_the_split_is_per_unit() {
        let meter = CpuMeter::new(Some(std::process::id()));
        let from = meter.sample();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let to = meter.sample();
        assert!(to.bench > from.bench, "{from:?} {to:?}");
        let per = CpuMeter::per_unit(from, to, 10);
        assert!(per.bench_us > 0.0 && per.server_us.is_some_and(|s| s > 0.0));
        assert_eq!(CpuMeter::per_unit(from, to, 0).total_us(), 0.0);
    }
}
