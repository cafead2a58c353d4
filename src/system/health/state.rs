//! One instance's health, moved by probe results under its service's rules. Pure: the
//! checker feeds it results and acts on the changes it returns.
//!
//! - `unhealthy_after` failures in a row: healthy or degraded → unhealthy.
//! - `unhealthy_after` answers in a row slower than `degraded`: healthy → degraded.
//! - `healthy_after` answers in a row within `degraded`: unhealthy or degraded → healthy;
//!   an unhealthy instance that answers slowly that often becomes degraded.
//! - Draining is an action's decision; probes never change it.

use std::time::Duration;

use super::rules::HealthRules;
use crate::integration::registry::Health;

/// A probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Answered(Duration),
    Failed(String),
}

/// A change of state and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    health: Health,
    failures: u32,
    slow: u32,
    fast: u32,
}

impl Tracker {
    pub fn new(health: Health) -> Tracker {
        Tracker {
            health,
            failures: 0,
            slow: 0,
            fast: 0,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Takes a state set elsewhere (an action, an operator) as the current one.
    pub fn adopt(&mut self, health: Health) {
        if health != self.health {
            *self = Tracker::new(health);
        }
    }

    pub fn observe(&mut self, probe: &Probe, rules: &HealthRules) -> Option<Transition> {
        if self.health == Health::Draining {
            return None;
        }
        let from = self.health;
        let (to, reason) = match probe {
            Probe::Failed(why) => {
                self.failures += 1;
                (self.slow, self.fast) = (0, 0);
                if self.failures >= rules.unhealthy_after && from != Health::Unhealthy {
                    let reason = format!("{} probes failed in a row: {why}", self.failures);
                    (Health::Unhealthy, reason)
                } else {
                    return None;
                }
            }
            Probe::Answered(took) if *took > rules.degraded => {
                self.failures = 0;
                self.fast = 0;
                self.slow += 1;
                let limit = match from {
                    Health::Unhealthy => rules.healthy_after,
                    _ => rules.unhealthy_after,
                };
                if self.slow >= limit && matches!(from, Health::Healthy | Health::Unhealthy) {
                    let reason = format!(
                        "{} answers in a row slower than {} ms (last {} ms)",
                        self.slow,
                        rules.degraded.as_millis(),
                        took.as_millis()
                    );
                    (Health::Degraded, reason)
                } else {
                    return None;
                }
            }
            Probe::Answered(took) => {
                self.failures = 0;
                self.slow = 0;
                self.fast += 1;
                if self.fast >= rules.healthy_after && from != Health::Healthy {
                    let reason = format!(
                        "{} answers in a row within {} ms (last {} ms)",
                        self.fast,
                        rules.degraded.as_millis(),
                        took.as_millis()
                    );
                    (Health::Healthy, reason)
                } else {
                    return None;
                }
            }
        };
        *self = Tracker::new(to);
        Some(Transition { from, to, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tracker: &mut Tracker, probes: &[Probe]) -> Vec<Health> {
        let rules = HealthRules::default();
        probes
            .iter()
            .filter_map(|p| tracker.observe(p, &rules).map(|t| t.to))
            .collect()
    }

    const FAST: Probe = Probe::Answered(Duration::from_millis(1));
    const SLOW: Probe = Probe::Answered(Duration::from_millis(900));

    fn failed() -> Probe {
        Probe::Failed("timeout".into())
    }

    #[test]
    fn failures_in_a_row_make_unhealthy_and_answers_bring_it_back() {
        let mut t = Tracker::new(Health::Healthy);
        // Two failures and an answer: the count starts over.
        assert!(run(&mut t, &[failed(), failed(), FAST.clone()]).is_empty());
        assert_eq!(
            run(&mut t, &[failed(), failed(), failed(), failed()]),
            [Health::Unhealthy]
        );
        assert_eq!(
            run(&mut t, &[FAST.clone(), FAST.clone()]),
            [Health::Healthy]
        );
    }

    #[test]
    fn slow_answers_degrade_and_fast_ones_restore() {
        let mut t = Tracker::new(Health::Healthy);
        assert_eq!(
            run(&mut t, &[SLOW.clone(), SLOW.clone(), SLOW.clone()]),
            [Health::Degraded]
        );
        assert_eq!(
            run(&mut t, &[FAST.clone(), FAST.clone()]),
            [Health::Healthy]
        );
        let mut t = Tracker::new(Health::Unhealthy);
        assert_eq!(
            run(&mut t, &[SLOW.clone(), SLOW.clone()]),
            [Health::Degraded]
        );
    }

    #[test]
    fn probes_never_undo_a_drain() {
        let mut t = Tracker::new(Health::Draining);
        assert!(run(&mut t, &[FAST.clone(), FAST.clone(), FAST.clone()]).is_empty());
        assert_eq!(t.health(), Health::Draining);
    }
}
