//! Two counters over a sliding window, in atomics only, for the retry budget (requests,
//! retries) and the circuit breaker (successes, failures). Adding is one load and one
//! `fetch_add` on the request path; summing walks the buckets and happens only when a
//! decision is needed (a retry, a failure).
//!
//! The window is [`BUCKETS`] buckets of `window / BUCKETS` each; a bucket remembers which
//! slice of time it counts and is zeroed when reused. Zeroing races with concurrent adds
//! (an add that lands between the epoch swap and the zeroing is lost): the counts are
//! approximate by a few events at bucket boundaries, which a budget and a breaker
//! tolerate, and no lock is ever taken.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Buckets per window: the window slides in steps of a tenth.
pub const BUCKETS: u64 = 10;

/// Milliseconds since a process-wide origin: the clock the windows and the breaker use,
/// so their state fits in atomics.
pub fn now_ms() -> u64 {
    ms_since_origin(Instant::now())
}

/// [`now_ms`] for an instant already taken (the request's start).
pub fn ms_since_origin(at: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    // +1 so that 0 never names a real time: an epoch of 0 marks an unused bucket.
    at.saturating_duration_since(origin).as_millis() as u64 + 1
}

struct Bucket {
    /// Which slice of time (`ms / bucket_ms`) the counts belong to; 0 when unused.
    epoch: AtomicU64,
    counts: [AtomicU64; 2],
}

/// Two counters over the last `window`.
pub struct Window {
    buckets: [Bucket; BUCKETS as usize],
    bucket_ms: u64,
}

impl Window {
    pub fn new(window: Duration) -> Window {
        let bucket_ms = (window.as_millis() as u64 / BUCKETS).max(1);
        Window {
            buckets: std::array::from_fn(|_| Bucket {
                epoch: AtomicU64::new(0),
                counts: [AtomicU64::new(0), AtomicU64::new(0)],
            }),
            bucket_ms,
        }
    }

    /// Adds `n` to counter `which` (0 or 1) at `now_ms`.
    pub fn add(&self, now_ms: u64, which: usize, n: u64) {
        let epoch = now_ms / self.bucket_ms + 1;
        let bucket = &self.buckets[(epoch % BUCKETS) as usize];
        let seen = bucket.epoch.load(Ordering::Acquire);
        if seen != epoch
            && bucket
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for count in &bucket.counts {
                count.store(0, Ordering::Release);
            }
        }
        if let Some(count) = bucket.counts.get(which) {
            count.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// Both counters summed over the window ending at `now_ms`.
    pub fn sums(&self, now_ms: u64) -> [u64; 2] {
        let current = now_ms / self.bucket_ms + 1;
        let mut sums = [0, 0];
        for bucket in &self.buckets {
            let epoch = bucket.epoch.load(Ordering::Acquire);
            if epoch != 0 && epoch <= current && current - epoch < BUCKETS {
                for (sum, count) in sums.iter_mut().zip(&bucket.counts) {
                    *sum += count.load(Ordering::Acquire);
                }
            }
        }
        sums
    }

    /// Forgets everything (a breaker that closed starts a fresh window).
    pub fn clear(&self) {
        for bucket in &self.buckets {
            bucket.epoch.store(0, Ordering::Release);
            for count in &bucket.counts {
                count.store(0, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_and_forgets_what_slid_out() {
        let window = Window::new(Duration::from_millis(1000));
        window.add(1_000, 0, 3);
        window.add(1_050, 1, 1);
        window.add(1_500, 0, 2);
        assert_eq!(window.sums(1_500), [5, 1]);
        // 1_000's bucket is older than 10 buckets of 100 ms at 2_100.
        assert_eq!(window.sums(2_100), [2, 0]);
        assert_eq!(window.sums(3_000), [0, 0]);
        // A reused bucket starts from zero.
        window.add(2_000, 0, 1);
        assert_eq!(window.sums(2_000), [3, 0]);
        window.clear();
        assert_eq!(window.sums(2_000), [0, 0]);
    }

    #[test]
    fn the_clock_never_says_zero() {
        assert!(now_ms() >= 1);
    }
}
