//! Retries with exponential backoff and full jitter, bounded by the caller's deadline.
//!
//! Full jitter (the pause is uniform in `[0, min(max_backoff, base · 2^(n−1))]`) spreads
//! the retries of many callers that failed together, so they do not come back in
//! lockstep. The deadline is the caller's: each attempt gets
//! `min(remaining, attempt_timeout)`, and no pause or attempt is started that could not
//! finish before it. How long an attempt needs is estimated from the attempt that just
//! failed (capped at the attempt timeout): a retry after a fast "no responders" needs
//! little time, a retry after a timeout needs a whole attempt timeout.
//!
//! Which failures are retried is not decided here: that is the taxonomy's
//! [`crate::error::ErrorKind::handling`]. How many retries a service may get overall is
//! the retry budget ([`super::budget`]).

use std::time::Duration;

/// Shortest time an attempt is given: less cannot even reach a service and back.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(1);

/// How a call is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// Backoff cap before the first retry; it doubles for each further one.
    pub base: Duration,
    /// Largest backoff cap.
    pub max_backoff: Duration,
    /// Longest one attempt may take; `None`: the whole remaining deadline.
    pub attempt_timeout: Option<Duration>,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            max_attempts: 3,
            base: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            attempt_timeout: None,
        }
    }
}

impl RetryConfig {
    /// The time one attempt may take when `remaining` is left of the deadline.
    pub fn attempt_timeout(&self, remaining: Duration) -> Duration {
        self.attempt_timeout
            .map_or(remaining, |limit| limit.min(remaining))
    }

    /// The pause after `failed` failed attempts, with `unit` uniform in `[0, 1)`.
    pub fn backoff(&self, failed: u32, unit: f64) -> Duration {
        let doublings = failed.saturating_sub(1).min(30);
        let cap = self
            .base
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff);
        cap.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The pause before the next attempt, or `None` when none may follow: the attempts
    /// are used up, or the pause plus an attempt as long as the one that just failed
    /// (`last_took`) would not fit in `remaining`.
    pub fn next_pause(
        &self,
        failed: u32,
        last_took: Duration,
        remaining: Duration,
        unit: f64,
    ) -> Option<Duration> {
        if failed >= self.max_attempts {
            return None;
        }
        let pause = self.backoff(failed, unit);
        let needed = last_took
            .min(self.attempt_timeout(remaining))
            .max(MIN_ATTEMPT);
        (pause + needed < remaining).then_some(pause)
    }
}

/// A number uniform in `[0, 1)`, from the thread-local generator `uuid` already uses.
pub fn unit_random() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> RetryConfig {
        RetryConfig {
            max_attempts: 4,
            base: 10 * MS,
            max_backoff: 50 * MS,
            attempt_timeout: Some(100 * MS),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter() {
        let c = config();
        assert_eq!(c.backoff(1, 0.0), Duration::ZERO);
        assert_eq!(c.backoff(1, 1.0), 10 * MS);
        assert_eq!(c.backoff(2, 1.0), 20 * MS);
        assert_eq!(c.backoff(3, 1.0), 40 * MS);
        assert_eq!(c.backoff(4, 1.0), 50 * MS);
        assert_eq!(c.backoff(60, 1.0), 50 * MS);
        assert_eq!(c.backoff(2, 0.5), 10 * MS);
        for _ in 0..1000 {
            let unit = unit_random();
            assert!((0.0..1.0).contains(&unit));
            assert!(c.backoff(3, unit) < 40 * MS);
        }
    }

    #[test]
    fn each_attempt_gets_the_smaller_of_what_is_left_and_its_timeout() {
        let c = config();
        assert_eq!(c.attempt_timeout(300 * MS), 100 * MS);
        assert_eq!(c.attempt_timeout(30 * MS), 30 * MS);
        let whole = RetryConfig::default();
        assert_eq!(whole.attempt_timeout(300 * MS), 300 * MS);
    }

    #[test]
    fn never_retries_past_the_attempts_or_the_deadline() {
        let c = config();
        // A fast failure with plenty of time: retried until the attempts run out.
        assert_eq!(c.next_pause(1, MS, 1000 * MS, 1.0), Some(10 * MS));
        assert_eq!(c.next_pause(3, MS, 1000 * MS, 1.0), Some(40 * MS));
        assert_eq!(c.next_pause(4, MS, 1000 * MS, 0.0), None);
        // A timed-out attempt needs a whole attempt timeout again: 150 ms is enough,
        // 105 ms is not (pause 5 ms + 100 ms).
        assert_eq!(c.next_pause(1, 100 * MS, 150 * MS, 0.5), Some(5 * MS));
        assert_eq!(c.next_pause(1, 100 * MS, 105 * MS, 0.5), None);
        // Nothing left: never.
        assert_eq!(c.next_pause(1, Duration::ZERO, Duration::ZERO, 0.0), None);
        // No attempt timeout: after a timeout the whole deadline was used.
        let whole = RetryConfig::default();
        assert_eq!(whole.next_pause(1, 500 * MS, 3 * MS, 0.0), None);
        assert_eq!(
            RetryConfig {
                max_attempts: 1,
                ..whole
            }
            .next_pause(1, MS, 1000 * MS, 0.0),
            None
        );
    }
}
