//! Recent handling times per operation, for the `data` of each endpoint in the
//! instance's NATS micro STATS: `{"p50_ms","p99_ms","samples","window_s"}` over the
//! last [`WINDOW`]. Micro itself only reports the average since start; the health
//! checker, `sys.status` and the alert rules want the tail, and now.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How far back the percentiles look.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most samples kept per operation (the newest win).
const CAPACITY: usize = 4096;

/// Recent samples of one operation; cheap to share.
#[derive(Default)]
pub struct LatencyWindow {
    samples: Mutex<VecDeque<(Instant, Duration)>>,
}

impl LatencyWindow {
    pub fn record(&self, took: Duration) {
        if let Ok(mut samples) = self.samples.lock() {
            if samples.len() == CAPACITY {
                samples.pop_front();
            }
            samples.push_back((Instant::now(), took));
        }
    }

    /// The `data` value for this endpoint's STATS.
    pub fn summary(&self) -> serde_json::Value {
        let mut recent: Vec<Duration> = match self.samples.lock() {
            Ok(mut samples) => {
                while samples.front().is_some_and(|(at, _)| at.elapsed() > WINDOW) {
                    samples.pop_front();
                }
                samples.iter().map(|(_, took)| *took).collect()
            }
            Err(_) => Vec::new(),
        };
        recent.sort_unstable();
        let at = |q: f64| {
            let i = ((recent.len() as f64 * q).ceil() as usize).saturating_sub(1);
            recent.get(i).map(|d| d.as_secs_f64() * 1000.0)
        };
        serde_json::json!({
            "p50_ms": at(0.50),
            "p99_ms": at(0.99),
            "samples": recent.len(),
            "window_s": WINDOW.as_secs(),
        })
    }
}

/// The windows of a service's operations, by endpoint name.
pub type Windows = Arc<HashMap<String, Arc<LatencyWindow>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_the_recent_samples() {
        let window = LatencyWindow::default();
        assert_eq!(window.summary()["samples"], 0);
        assert!(window.summary()["p99_ms"].is_null());
        for ms in 1..=100 {
            window.record(Duration::from_millis(ms));
        }
        let summary = window.summary();
        assert_eq!(summary["p50_ms"], 50.0);
        assert_eq!(summary["p99_ms"], 99.0);
        assert_eq!(summary["samples"], 100);
    }
}
