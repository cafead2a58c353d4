//! A circuit breaker per service: closed (calls go through), open (calls are refused at
//! once, for `open_for`), half-open (a few probe calls go through; if they all succeed
//! the breaker closes, if one fails it opens again).
//!
//! It opens when, over a sliding window, at least `min_requests` calls were made and at
//! least `failure_ratio` of them failed. What counts as a failure is the caller's call:
//! the gateway counts the retryable kinds and `internal`, never a caller's 4xx.
//!
//! Lock-free: the closed path is one atomic load to let a call through and one atomic
//! add to count its outcome. Transitions are compare-and-swap, so exactly one caller
//! sees (and reports) each.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::window::Window;

const SUCCESSES: usize = 0;
const FAILURES: usize = 1;

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Share of failed calls (0 < r ≤ 1) over the window that opens the breaker.
    pub failure_ratio: f64,
    /// Fewest calls in the window before the ratio counts.
    pub min_requests: u32,
    /// How far back calls count.
    pub window: Duration,
    /// How long the breaker stays open before probing.
    pub open_for: Duration,
    /// Probe calls let through when half-open; all must succeed to close.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

/// A breaker's state; the number is the `switchyard_gateway_breaker_state` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl BreakerState {
    fn from_u8(value: u8) -> BreakerState {
        match value {
            0 => BreakerState::Closed,
            1 => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }

    /// The `to` label of a transition.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

/// Whether a call may go through, and as what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Refused: the breaker is open (or its probes are taken).
    Denied,
    /// A call while closed.
    Normal,
    /// One of the half-open breaker's probes.
    Probe,
}

pub struct Breaker {
    config: BreakerConfig,
    state: AtomicU8,
    /// When the state last changed to open or half-open ([`super::window::now_ms`]).
    changed_ms: AtomicU64,
    probes_started: AtomicU32,
    probes_succeeded: AtomicU32,
    outcomes: Window,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: AtomicU8::new(BreakerState::Closed as u8),
            changed_ms: AtomicU64::new(0),
            probes_started: AtomicU32::new(0),
            probes_succeeded: AtomicU32::new(0),
            outcomes: Window::new(config.window),
        }
    }

    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Asks to make a call at `now_ms`; also returns the state it moved to, if asking
    /// moved it (open → half-open once `open_for` has passed).
    pub fn permit(&self, now_ms: u64) -> (Permit, Option<BreakerState>) {
        let mut moved = None;
        match self.state() {
            BreakerState::Closed => return (Permit::Normal, None),
            BreakerState::Open => {
                if !self.has_been(now_ms, self.config.open_for) {
                    return (Permit::Denied, None);
                }
                if self.swap(BreakerState::Open, BreakerState::HalfOpen, now_ms) {
                    moved = Some(BreakerState::HalfOpen);
                }
            }
            BreakerState::HalfOpen => {
                // Probes that never reported (lost in a crash of their task) must not
                // keep the breaker half-open forever: probing restarts after open_for.
                let started = self.probes_started.load(Ordering::Acquire);
                if started >= self.config.half_open_probes
                    && self.has_been(now_ms, self.config.open_for)
                    && self.swap(BreakerState::HalfOpen, BreakerState::HalfOpen, now_ms)
                {
                    self.probes_started.store(0, Ordering::Release);
                    self.probes_succeeded.store(0, Ordering::Release);
                }
            }
        }
        if self.state() != BreakerState::HalfOpen {
            return (Permit::Denied, moved);
        }
        let taken = self.probes_started.fetch_add(1, Ordering::AcqRel);
        if taken < self.config.half_open_probes {
            (Permit::Probe, moved)
        } else {
            (Permit::Denied, moved)
        }
    }

    /// Records how a permitted call ended; returns the state it moved the breaker to.
    pub fn record(&self, permit: Permit, failed: bool, now_ms: u64) -> Option<BreakerState> {
        match permit {
            Permit::Denied => None,
            Permit::Normal => {
                self.outcomes
                    .add(now_ms, if failed { FAILURES } else { SUCCESSES }, 1);
                if !failed || self.state() != BreakerState::Closed {
                    return None;
                }
                let [successes, failures] = self.outcomes.sums(now_ms);
                let total = successes + failures;
                let tripped = total >= u64::from(self.config.min_requests)
                    && failures as f64 >= self.config.failure_ratio * total as f64;
                (tripped && self.swap(BreakerState::Closed, BreakerState::Open, now_ms))
                    .then_some(BreakerState::Open)
            }
            Permit::Probe if failed => self
                .swap(BreakerState::HalfOpen, BreakerState::Open, now_ms)
                .then_some(BreakerState::Open),
            Permit::Probe => {
                let succeeded = self.probes_succeeded.fetch_add(1, Ordering::AcqRel) + 1;
                if succeeded < self.config.half_open_probes {
                    return None;
                }
                self.outcomes.clear();
                self.swap(BreakerState::HalfOpen, BreakerState::Closed, now_ms)
                    .then_some(BreakerState::Closed)
            }
        }
    }

    /// Opens the breaker now, whatever its counts say (an operator's or a coordination
    /// rule's decision); it probes again after `open_for` as usual. Returns `Open` when
    /// this changed the state; an open breaker just starts its open time again.
    pub fn force_open(&self, now_ms: u64) -> Option<BreakerState> {
        let before = self.state.swap(BreakerState::Open as u8, Ordering::AcqRel);
        self.probes_started.store(0, Ordering::Release);
        self.probes_succeeded.store(0, Ordering::Release);
        self.changed_ms.store(now_ms, Ordering::Release);
        (before != BreakerState::Open as u8).then_some(BreakerState::Open)
    }

    fn has_been(&self, now_ms: u64, long: Duration) -> bool {
        now_ms.saturating_sub(self.changed_ms.load(Ordering::Acquire)) >= long.as_millis() as u64
    }

    /// Moves `from` → `to` if still in `from`; the winner resets the probe counts.
    fn swap(&self, from: BreakerState, to: BreakerState, now_ms: u64) -> bool {
        if from == to {
            // Restarting probes: claim by moving the timestamp instead of the state.
            let seen = self.changed_ms.load(Ordering::Acquire);
            return self
                .changed_ms
                .compare_exchange(seen, now_ms, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        }
        let won = self
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.probes_started.store(0, Ordering::Release);
            self.probes_succeeded.store(0, Ordering::Release);
            self.changed_ms.store(now_ms, Ordering::Release);
        }
        won
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_ratio: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            open_for: Duration::from_millis(100),
            half_open_probes: 2,
        })
    }

    fn call(b: &Breaker, now: u64, failed: bool) -> (Permit, Option<BreakerState>) {
        let (permit, moved) = b.permit(now);
        (permit, b.record(permit, failed, now).or(moved))
    }

    #[test]
    fn a_forced_open_breaker_denies_then_probes_as_usual() {
        let b = breaker();
        assert_eq!(b.force_open(1000), Some(BreakerState::Open));
        assert_eq!(b.force_open(1001), None);
        assert_eq!(b.permit(1050).0, Permit::Denied);
        assert_eq!(
            b.permit(1101),
            (Permit::Probe, Some(BreakerState::HalfOpen))
        );
    }

    #[test]
    fn opens_on_the_failure_ratio_once_there_are_enough_calls() {
        let b = breaker();
        // Three failures are not enough calls to judge.
        for _ in 0..3 {
            assert_eq!(call(&b, 1_000, true), (Permit::Normal, None));
        }
        assert_eq!(
            call(&b, 1_000, true),
            (Permit::Normal, Some(BreakerState::Open))
        );
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.permit(1_050), (Permit::Denied, None));
    }

    #[test]
    fn successes_keep_it_closed() {
        let b = breaker();
        for _ in 0..10 {
            call(&b, 1_000, false);
            call(&b, 1_000, false);
            call(&b, 1_000, true);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_probes_close_it_or_open_it_again() {
        let b = breaker();
        for _ in 0..4 {
            call(&b, 1_000, true);
        }
        // After open_for: two probes, the third caller is refused.
        let (first, moved) = b.permit(1_100);
        assert_eq!(
            (first, moved),
            (Permit::Probe, Some(BreakerState::HalfOpen))
        );
        let (second, _) = b.permit(1_100);
        assert_eq!(second, Permit::Probe);
        assert_eq!(b.permit(1_100).0, Permit::Denied);
        assert_eq!(b.record(first, false, 1_110), None);
        assert_eq!(b.record(second, false, 1_120), Some(BreakerState::Closed));
        assert_eq!(b.permit(1_130).0, Permit::Normal);

        // Open again; this time a probe fails.
        for _ in 0..4 {
            call(&b, 2_000, true);
        }
        assert_eq!(b.state(), BreakerState::Open);
        let (probe, _) = b.permit(2_100);
        assert_eq!(b.record(probe, true, 2_100), Some(BreakerState::Open));
        assert_eq!(b.permit(2_150).0, Permit::Denied);
        assert_eq!(b.permit(2_200).0, Permit::Probe);
    }

    #[test]
    fn probes_that_never_report_do_not_wedge_it() {
        let b = breaker();
        for _ in 0..4 {
            call(&b, 1_000, true);
        }
        assert_eq!(b.permit(1_100).0, Permit::Probe);
        assert_eq!(b.permit(1_100).0, Permit::Probe);
        assert_eq!(b.permit(1_150).0, Permit::Denied);
        // Neither probe reported; after open_for probing starts over.
        assert_eq!(b.permit(1_200).0, Permit::Probe);
    }
}
