//! The rule book: every version of the rule set, each stamped with the server time of
//! the KV revision that made it, so a record is routed by the rules in force when
//! stream DATA stored it, whichever instance asks and whenever.
//!
//! The book is rebuilt from the retained history of bucket `flows` (10 revisions per
//! key) at start and then follows it. Before the oldest change it knows, the rule set
//! is empty. Old versions are pruned: those newer than [`KEEP_FOR`] (stream DATA's age
//! limit) before the newest change, plus the newest older one (still in force at the
//! start of that window), at most [`MAX_SNAPSHOTS`]; a record older than every kept
//! version is routed by the oldest kept one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use time::OffsetDateTime;

use super::rule::{Rule, Target, check_conflicts};
use crate::data::record::Record;
use crate::error::Error;

/// Versions newer than this (before the newest) are always kept.
pub const KEEP_FOR: time::Duration = time::Duration::days(7);
/// Most versions kept, however recent.
pub const MAX_SNAPSHOTS: usize = 512;

/// One target a record goes to, by which rule and with which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub rule: String,
    pub target: Target,
    pub key: String,
}

/// Where a record goes; no deliveries means unrouted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    pub deliveries: Vec<Delivery>,
}

impl Route {
    pub fn is_unrouted(&self) -> bool {
        self.deliveries.is_empty()
    }

    /// The delivery to the target named `target`, if the record goes there.
    pub fn to_target(&self, target: &str) -> Option<&Delivery> {
        self.deliveries.iter().find(|d| d.target.name == target)
    }
}

/// One version of the rule set: its enabled rules in name order.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
}

impl RuleSet {
    /// Every enabled rule whose match holds, in name order; targets de-duplicated by
    /// name, the first matching rule's key winning. Err: the record is malformed.
    pub fn route(&self, record: &Record) -> Result<Route, Error> {
        record.check().map_err(|e| {
            Error::new(
                e.kind(),
                format!("malformed record {}: {}", record.origin(), e.message()),
            )
        })?;
        let subject: Vec<&str> = record.subject.split('.').collect();
        let mut route = Route::default();
        for rule in &self.rules {
            if !rule.matches(record, &subject)? {
                continue;
            }
            let key = rule.key_of(record, &subject)?;
            for target in rule.targets() {
                if route.to_target(&target.name).is_none() {
                    route.deliveries.push(Delivery {
                        rule: rule.name().to_string(),
                        target: target.clone(),
                        key: key.clone(),
                    });
                }
            }
        }
        Ok(route)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// What applying one KV entry did.
#[derive(Debug)]
pub enum Change {
    /// A new version of the rule set is in force.
    Applied,
    /// Nothing changed (a delete of a key that held no rule, the same value again).
    Unchanged,
    /// The value was refused; the key's previous version stays in force.
    Rejected(Error),
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: OffsetDateTime,
    pub revision: u64,
    pub rules: Arc<RuleSet>,
}

/// The versions, oldest first, and the latest rule of every key.
#[derive(Debug)]
pub struct Book {
    latest: BTreeMap<String, Arc<Rule>>,
    snapshots: VecDeque<Snapshot>,
}

impl Default for Book {
    fn default() -> Self {
        Book::new()
    }
}

impl Book {
    /// The empty rule set since the beginning of time.
    pub fn new() -> Book {
        Book {
            latest: BTreeMap::new(),
            snapshots: VecDeque::from([Snapshot {
                at: OffsetDateTime::UNIX_EPOCH,
                revision: 0,
                rules: Arc::default(),
            }]),
        }
    }

    /// A put of `value` under `key` at `revision`, stored at `at`.
    pub fn put(&mut self, key: &str, revision: u64, at: OffsetDateTime, value: &[u8]) -> Change {
        let rule = match Rule::from_json(value) {
            Ok(rule) if rule.name() != key => Err(Error::invalid_input(format!(
                "name: the rule is named {:?} but stored under key {key:?}",
                rule.name()
            ))),
            Ok(rule) => {
                check_conflicts(&rule, self.latest.values().map(Arc::as_ref)).map(|()| rule)
            }
            Err(err) => Err(err),
        };
        match rule {
            Err(err) => Change::Rejected(err),
            Ok(rule)
                if self
                    .latest
                    .get(key)
                    .is_some_and(|r| r.spec() == rule.spec()) =>
            {
                Change::Unchanged
            }
            Ok(rule) => {
                self.latest.insert(key.to_string(), Arc::new(rule));
                self.push(revision, at);
                Change::Applied
            }
        }
    }

    /// A delete or purge of `key`.
    pub fn remove(&mut self, key: &str, revision: u64, at: OffsetDateTime) -> Change {
        if self.latest.remove(key).is_none() {
            return Change::Unchanged;
        }
        self.push(revision, at);
        Change::Applied
    }

    /// The rule set in force at `stored`.
    pub fn at(&self, stored: OffsetDateTime) -> Arc<RuleSet> {
        let newer = self.snapshots.partition_point(|s| s.at <= stored);
        let index = newer.saturating_sub(1);
        self.snapshots
            .get(index)
            .map(|s| s.rules.clone())
            .unwrap_or_default()
    }

    /// Every target of an enabled rule in any kept version, with the time of the
    /// earliest version it appears in; sorted by target.
    pub fn targets(&self) -> Vec<(Target, OffsetDateTime)> {
        let mut first: BTreeMap<&Target, OffsetDateTime> = BTreeMap::new();
        for snapshot in &self.snapshots {
            for rule in &snapshot.rules.rules {
                for target in rule.targets() {
                    first.entry(target).or_insert(snapshot.at);
                }
            }
        }
        first.into_iter().map(|(t, at)| (t.clone(), at)).collect()
    }

    /// The latest rule of every key, enabled or not, in name order.
    pub fn latest(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.latest.values()
    }

    /// Rules in force now (enabled).
    pub fn in_force(&self) -> usize {
        self.latest.values().filter(|r| r.enabled()).count()
    }

    pub fn snapshots(&self) -> impl Iterator<Item = &Snapshot> {
        self.snapshots.iter()
    }

    fn push(&mut self, revision: u64, at: OffsetDateTime) {
        // Server clocks may step back; versions stay in order so the search holds.
        let at = self.snapshots.back().map_or(at, |last| at.max(last.at));
        let rules = self
            .latest
            .values()
            .filter(|r| r.enabled())
            .cloned()
            .collect();
        self.snapshots.push_back(Snapshot {
            at,
            revision,
            rules: Arc::new(RuleSet { rules }),
        });
        self.prune(at);
    }

    fn prune(&mut self, newest: OffsetDateTime) {
        let horizon = newest - KEEP_FOR;
        // Drop the oldest while the next one is itself older than the horizon: that one
        // then carries what was in force at the horizon.
        while self.snapshots.len() > 1
            && (self.snapshots.get(1).is_some_and(|next| next.at <= horizon)
                || self.snapshots.len() > MAX_SNAPSHOTS)
        {
            self.snapshots.pop_front();
        }
    }
}

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
