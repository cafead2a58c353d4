//! Evaluating alert rules against a status document, and turning conditions that hold
//! into incidents: pending while the condition has held less than the rule's `for`,
//! firing after, resolved when it stops holding. One firing and one resolved event per
//! incident, however many evaluations it spans. Pure: the caller brings the clock.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::rules::{AlertRule, Condition};
use crate::integration::registry::Health;
use crate::system::monitor::status::Status;

/// A condition that holds now: which rule, for what (`echo`, `DATA/sync-x`, or empty
/// for system-wide conditions), and the value seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub rule: String,
    pub key: String,
    pub value: f64,
}

/// Per service: requests, errors, total handling time in ms (summed over instances).
pub type Counters = HashMap<String, (u64, u64, f64)>;

fn matches(pattern: &str, name: &str) -> bool {
    pattern == "*" || pattern == name
}

/// The counters in `status`, for the next evaluation's deltas.
pub fn counters(status: &Status) -> Counters {
    status
        .services
        .iter()
        .map(|(name, s)| {
            let mut sums = (0, 0, 0.0);
            for i in &s.instances {
                let requests = i.requests.unwrap_or(0);
                sums.0 += requests;
                sums.1 += i.errors.unwrap_or(0);
                sums.2 += i.average_ms.unwrap_or(0.0) * requests as f64;
            }
            (name.clone(), sums)
        })
        .collect()
}

/// The conditions that hold in `status`; rates are measured against `previous`.
pub fn evaluate(
    rules: &BTreeMap<String, AlertRule>,
    status: &Status,
    previous: &Counters,
    open_breakers: &HashMap<String, usize>,
) -> Vec<Observation> {
    let now = counters(status);
    let delta = |service: &str| {
        let (r, e, t) = now.get(service).copied()?;
        let (pr, pe, pt) = previous.get(service).copied()?;
        // Instances come and go; a shrinking counter is a new baseline, not a rate.
        (r >= pr && e >= pe).then(|| (r - pr, e - pe, (t - pt).max(0.0)))
    };
    let mut seen = Vec::new();
    for (name, rule) in rules.iter().filter(|(_, r)| r.enabled) {
        let mut hold = |key: String, value: f64| {
            seen.push(Observation {
                rule: name.clone(),
                key,
                value,
            })
        };
        match &rule.condition {
            Condition::ErrorRatio {
                service,
                above,
                min_requests,
            } => {
                for svc in status.services.keys().filter(|s| matches(service, s)) {
                    if let Some((requests, errors, _)) = delta(svc)
                        && requests >= *min_requests
                    {
                        let ratio = errors as f64 / requests as f64;
                        if ratio > *above {
                            hold(svc.clone(), ratio);
                        }
                    }
                }
            }
            Condition::LatencyMs { service, above } => {
                for svc in status.services.keys().filter(|s| matches(service, s)) {
                    if let Some((requests, _, ms)) = delta(svc)
                        && requests > 0
                        && ms / requests as f64 > *above
                    {
                        hold(svc.clone(), ms / requests as f64);
                    }
                }
            }
            Condition::LatencyP99Ms { service, above } => {
                for (svc, s) in status.services.iter().filter(|(s, _)| matches(service, s)) {
                    let p99 = s.instances.iter().filter_map(|i| i.p99_ms).reduce(f64::max);
                    if let Some(p99) = p99.filter(|p| p > above) {
                        hold(svc.clone(), p99);
                    }
                }
            }
            Condition::DlqDepth { above } => {
                if status.dlq_depth > *above {
                    hold(String::new(), status.dlq_depth as f64);
                }
            }
            Condition::ConsumerPending {
                stream,
                consumer,
                above,
            } => {
                for s in status.streams.iter().filter(|s| matches(stream, &s.name)) {
                    for c in s.consumers.iter().filter(|c| matches(consumer, &c.name)) {
                        if c.pending > *above {
                            hold(format!("{}/{}", s.name, c.name), c.pending as f64);
                        }
                    }
                }
            }
            Condition::BreakerOpen { service } => {
                for (svc, gateways) in open_breakers.iter().filter(|(s, _)| matches(service, s)) {
                    hold(svc.clone(), *gateways as f64);
                }
            }
            Condition::UnhealthyInstances { service, above } => {
                for (svc, s) in status.services.iter().filter(|(s, _)| matches(service, s)) {
                    let unhealthy = s
                        .instances
                        .iter()
                        .filter(|i| i.health == Health::Unhealthy)
                        .count() as u64;
                    if unhealthy > *above {
                        hold(svc.clone(), unhealthy as f64);
                    }
                }
            }
        }
    }
    seen
}

/// An alert's state change, to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub rule: String,
    pub key: String,
    pub firing: bool,
    pub value: f64,
}

#[derive(Debug, Clone, Copy)]
struct Incident {
    since: Instant,
    firing: bool,
    value: f64,
}

/// Incidents by (rule, key).
#[derive(Debug, Default)]
pub struct Incidents {
    open: HashMap<(String, String), Incident>,
}

impl Incidents {
    /// An incident already firing (taken over from a previous leader): not announced
    /// again.
    pub fn adopt_firing(&mut self, rule: &str, key: &str, now: Instant) {
        self.open.insert(
            (rule.to_string(), key.to_string()),
            Incident {
                since: now,
                firing: true,
                value: 0.0,
            },
        );
    }

    /// Applies one evaluation and returns what fired or resolved.
    pub fn step(
        &mut self,
        seen: Vec<Observation>,
        hold: impl Fn(&str) -> Duration,
        now: Instant,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut present = Vec::with_capacity(seen.len());
        for o in seen {
            let id = (o.rule.clone(), o.key.clone());
            let incident = self.open.entry(id.clone()).or_insert(Incident {
                since: now,
                firing: false,
                value: o.value,
            });
            incident.value = o.value;
            if !incident.firing && now.duration_since(incident.since) >= hold(&o.rule) {
                incident.firing = true;
                changes.push(Change {
                    rule: o.rule,
                    key: o.key,
                    firing: true,
                    value: o.value,
                });
            }
            present.push(id);
        }
        self.open.retain(|id, incident| {
            let still = present.contains(id);
            if !still && incident.firing {
                changes.push(Change {
                    rule: id.0.clone(),
                    key: id.1.clone(),
                    firing: false,
                    value: incident.value,
                });
            }
            still
        });
        changes
    }

    /// Firing incidents per rule.
    pub fn firing(&self) -> BTreeMap<String, Vec<String>> {
        let mut firing: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for ((rule, key), incident) in &self.open {
            if incident.firing {
                firing.entry(rule.clone()).or_default().push(key.clone());
            }
        }
        firing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(rule: &str, key: &str) -> Observation {
        Observation {
            rule: rule.into(),
            key: key.into(),
            value: 1.0,
        }
    }

    #[test]
    fn one_firing_and_one_resolved_per_incident() {
        let mut incidents = Incidents::default();
        let start = Instant::now();
        let hold = |_: &str| Duration::from_secs(10);
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(
            incidents
                .step(vec![seen("dlq", "")], hold, at(0))
                .is_empty()
        );
        assert!(
            incidents
                .step(vec![seen("dlq", "")], hold, at(5))
                .is_empty()
        );
        let fired = incidents.step(vec![seen("dlq", "")], hold, at(10));
        assert_eq!(fired.len(), 1);
        assert!(fired[0].firing);
        for s in 11..20 {
            assert!(
                incidents
                    .step(vec![seen("dlq", "")], hold, at(s))
                    .is_empty()
            );
        }
        let resolved = incidents.step(vec![], hold, at(21));
        assert_eq!(resolved.len(), 1);
        assert!(!resolved[0].firing);
        assert!(incidents.step(vec![], hold, at(22)).is_empty());
    }

    #[test]
    fn a_condition_gone_before_its_hold_never_fires() {
        let mut incidents = Incidents::default();
        let start = Instant::now();
        let hold = |_: &str| Duration::from_secs(10);
        assert!(
            incidents
                .step(vec![seen("dlq", "")], hold, start)
                .is_empty()
        );
        assert!(
            incidents
                .step(vec![], hold, start + Duration::from_secs(5))
                .is_empty()
        );
        assert!(incidents.firing().is_empty());
    }
}
