//! The timing loop every scenario uses: N tasks, a warm-up, a measured window, one
//! histogram per task merged at the end.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::cpu::CpuMeter;
use super::report::{Measurement, micros, new_histogram};
use crate::error::Error;

/// Any single operation taking longer than this counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Warm-up and measured window of every scenario.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub duration: Duration,
    /// Whose CPU time the measured window counts.
    pub cpu: CpuMeter,
}

impl Timing {
    /// A short warm-up: a sixth of the duration, between 100 ms and 500 ms.
    pub fn new(duration: Duration) -> Timing {
        let warmup = (duration / 6).clamp(Duration::from_millis(100), Duration::from_millis(500));
        Timing {
            warmup,
            duration,
            cpu: CpuMeter::default(),
        }
    }

    /// The same timing, counting `server_pid`'s CPU too (the embedded server's).
    pub fn counting_server(self, server_pid: Option<u32>) -> Timing {
        Timing {
            cpu: CpuMeter::new(server_pid),
            ..self
        }
    }
}

/// Runs `op` from `concurrency` tasks: warm-up until `timing.warmup`, then recording
/// each operation's latency until `timing.duration` later. Each task keeps its own
/// histogram; they are merged at the end. Failed or timed-out operations are counted,
/// not recorded.
pub async fn drive<F, Fut>(concurrency: usize, timing: Timing, op: F) -> Result<Measurement, Error>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    let measure_from = Instant::now() + timing.warmup;
    let deadline = measure_from + timing.duration;
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let from = timing.cpu.sample();
        tokio::time::sleep_until(deadline.into()).await;
        (from, timing.cpu.sample())
    });
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let op = op.clone();
        let mut histogram = new_histogram()?;
        tasks.spawn(async move {
            while Instant::now() < measure_from {
                let _ = tokio::time::timeout(OP_TIMEOUT, op()).await;
            }
            let (mut errors, mut first_error) = (0u64, None);
            loop {
                let started = Instant::now();
                if started >= deadline {
                    break;
                }
                match tokio::time::timeout(OP_TIMEOUT, op()).await {
                    Ok(Ok(())) => histogram.saturating_record(micros(started.elapsed())),
                    Ok(Err(e)) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.message().to_string());
                    }
                    Err(_) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| format!("timed out after {OP_TIMEOUT:?}"));
                    }
                }
            }
            (histogram, errors, first_error, Instant::now())
        });
    }
    let mut merged = new_histogram()?;
    let (mut errors, mut first_error, mut end) = (0u64, None, deadline);
    while let Some(joined) = tasks.join_next().await {
        let (histogram, e, first, finished) =
            joined.map_err(|e| Error::internal(format!("bench task failed: {e}")))?;
        merged
            .add(&histogram)
            .map_err(|e| Error::internal(format!("cannot merge histograms: {e}")))?;
        errors += e;
        first_error = first_error.or(first);
        end = end.max(finished);
    }
    let (cpu_from, cpu_to) = cpu
        .await
        .map_err(|e| Error::internal(format!("bench CPU sampler failed: {e}")))?;
    Ok(Measurement {
        cpu: Some(CpuMeter::per_unit(cpu_from, cpu_to, merged.len())),
        ops: merged.len(),
        histogram: merged,
        errors,
        first_error,
        elapsed: end.saturating_duration_since(measure_from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_short_and_bounded() {
        assert_eq!(
            Timing::new(Duration::from_secs(3)).warmup,
            Duration::from_millis(500)
        );
        assert_eq!(
            Timing::new(Duration::from_millis(300)).warmup,
            Duration::from_millis(100)
        );
        assert_eq!(
            Timing::new(Duration::from_secs(60)).warmup,
            Duration::from_millis(500)
        );
    }
}
