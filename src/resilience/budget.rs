//! A retry budget per service, as Finagle and Envoy have: over a sliding window,
//! retries may be at most `ratio` × requests, plus `min_per_sec` × the window's seconds
//! so that a service with little traffic can still be retried. When a service fails
//! everything, retries add at most `ratio` to its load instead of multiplying it by the
//! number of attempts.
//!
//! A request costs one atomic add; only a retry sums the window. The check and the
//! count of a retry are two steps, so concurrent retries may overshoot the budget by
//! the number racing at that moment (a few), never by a factor.

use std::time::Duration;

use super::window::Window;

const REQUESTS: usize = 0;
const RETRIES: usize = 1;

/// How much retrying a service's budget allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per request over the window (0.2: one retry per five requests).
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic.
    pub min_per_sec: f64,
    /// How far back requests and retries count.
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> BudgetConfig {
        BudgetConfig {
            ratio: 0.2,
            min_per_sec: 5.0,
            window: Duration::from_secs(10),
        }
    }
}

/// One service's budget.
pub struct RetryBudget {
    config: BudgetConfig,
    counts: Window,
}

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> RetryBudget {
        RetryBudget {
            config,
            counts: Window::new(config.window),
        }
    }

    /// Counts a call (its first attempt).
    pub fn request(&self, now_ms: u64) {
        self.counts.add(now_ms, REQUESTS, 1);
    }

    /// Takes one retry from the budget if there is one left.
    pub fn try_retry(&self, now_ms: u64) -> bool {
        let [requests, retries] = self.counts.sums(now_ms);
        let allowed = self.config.ratio * requests as f64
            + self.config.min_per_sec * self.config.window.as_secs_f64();
        if (retries as f64) < allowed.floor() {
            self.counts.add(now_ms, RETRIES, 1);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_ratio_of_requests() {
        let budget = RetryBudget::new(BudgetConfig {
            ratio: 0.1,
            min_per_sec: 0.0,
            window: Duration::from_secs(10),
        });
        let mut granted = 0;
        for i in 0..100 {
            budget.request(1_000 + i);
            // Every call fails and asks for two retries.
            for _ in 0..2 {
                if budget.try_retry(1_000 + i) {
                    granted += 1;
                }
            }
        }
        assert_eq!(granted, 10);
        // Once the window slid past them, the old retries no longer count, nor do the
        // old requests: nothing is allowed without new traffic.
        assert!(!budget.try_retry(30_000));
        for _ in 0..10 {
            budget.request(30_000);
        }
        assert!(budget.try_retry(30_000));
        assert!(!budget.try_retry(30_000));
    }

    #[test]
    fn a_quiet_service_still_gets_its_minimum() {
        let budget = RetryBudget::new(BudgetConfig {
            ratio: 0.0,
            min_per_sec: 0.5,
            window: Duration::from_secs(4),
        });
        assert!(budget.try_retry(1_000));
        assert!(budget.try_retry(1_000));
        assert!(!budget.try_retry(1_000));
    }
}
