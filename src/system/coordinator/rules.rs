//! Coordination rules: declarative "event pattern → actions", one JSON value per rule in
//! KV `coord` under `rules.<name>`, applied live by the leader. A rule such as
//!
//! ```json
//! {"on": "sys.health.changed", "when": {"to": "unhealthy"},
//!  "actions": [{"drain": {}}, {"deregister": {"after_ms": 10000}},
//!              {"alert": {"severity": "warning"}}]}
//! ```
//!
//! matches events on `events.<on>` (bus pattern syntax: `*`, a final `>`) whose payload
//! fields equal every `when` value, and runs its actions in order. Built-in rules (see
//! [`builtin`]) apply until a rule of the same name is stored. A value that does not
//! parse or validate is refused (`sys.coord.rules.put` answers why; one written
//! directly is logged and counted) and the rules in force stay.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use async_nats::Client;
use async_nats::jetstream::kv::{Entry, Operation};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::actions::Action;
use crate::error::Error;
use crate::integration::bus::filter_subject;
use crate::nats::watch;
use crate::subjects::{BUCKET_COORD, validate_token};

/// Key prefix of the rules in KV `coord`.
pub const RULE_PREFIX: &str = "rules.";

/// One coordination rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The event pattern, relative to `events.`: `sys.health.changed`, `orders.>`.
    pub on: String,
    /// Payload fields and the values they must have (strings, numbers as text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub when: BTreeMap<String, String>,
    pub actions: Vec<Action>,
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

impl Rule {
    /// Parses and checks one stored value.
    pub fn parse(value: &[u8]) -> Result<Rule, Error> {
        let rule: Rule = serde_json::from_slice(value)
            .map_err(|e| Error::invalid_input(format!("malformed coordination rule: {e}")))?;
        filter_subject(&rule.on)?;
        if rule.on.starts_with("sys.action.") {
            return Err(Error::invalid_input(
                "a rule cannot act on action events (sys.action.*): it would feed itself",
            ));
        }
        if rule.actions.is_empty() || rule.actions.len() > 16 {
            return Err(Error::invalid_input("a rule needs 1 to 16 actions"));
        }
        for action in &rule.actions {
            action.validate()?;
        }
        Ok(rule)
    }

    /// Whether `subject` (`events.…`) and the event's payload match this rule.
    pub fn matches(&self, subject: &str, data: &serde_json::Value) -> bool {
        self.enabled
            && subject
                .strip_prefix("events.")
                .is_some_and(|rest| pattern_matches(&self.on, rest))
            && self.when.iter().all(|(field, want)| match data.get(field) {
                Some(serde_json::Value::String(s)) => s == want,
                // Numbers and booleans compare by their JSON text.
                Some(other) if !other.is_null() => {
                    let text = other.to_string();
                    text == *want
                }
                _ => false,
            })
    }
}

/// NATS subject matching of `pattern` against `subject` (both relative to `events.`).
fn pattern_matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// The built-in rules: an unhealthy instance is drained at once, deregistered when it
/// has not recovered 10 s later, and raises a warning.
pub fn builtin() -> Vec<(String, Rule)> {
    vec![(
        "unhealthy-instances".to_string(),
        Rule {
            on: "sys.health.changed".into(),
            when: BTreeMap::from([("to".to_string(), "unhealthy".to_string())]),
            actions: vec![
                Action::Drain {},
                Action::Deregister { after_ms: 10_000 },
                Action::Alert {
                    severity: "warning".into(),
                },
            ],
            enabled: true,
        },
    )]
}

/// The rules in force: the built-ins overlaid with those in KV `coord`, live.
#[derive(Clone)]
pub struct RuleSet {
    stored: Arc<RwLock<HashMap<String, Rule>>>,
}

impl RuleSet {
    pub async fn start(client: &Client, stop: CancellationToken) -> Result<RuleSet, Error> {
        let js = async_nats::jetstream::new(client.clone());
        let kv = js
            .get_key_value(BUCKET_COORD)
            .await
            .map_err(|e| Error::nats("open bucket coord", e))?;
        let set = RuleSet {
            stored: Arc::default(),
        };
        let last = watch::load(&kv, |entry| set.apply(&entry)).await?;
        let follower = set.clone();
        tokio::spawn(watch::follow(kv, client.clone(), last, stop, move |e| {
            follower.apply(&e)
        }));
        Ok(set)
    }

    /// Every rule in force by name, sorted.
    pub fn all(&self) -> BTreeMap<String, Rule> {
        let mut all: BTreeMap<String, Rule> = builtin().into_iter().collect();
        if let Ok(stored) = self.stored.read() {
            all.extend(stored.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        all
    }

    /// The rules matching one event, by name.
    pub fn matching(&self, subject: &str, data: &serde_json::Value) -> Vec<(String, Rule)> {
        self.all()
            .into_iter()
            .filter(|(_, rule)| rule.matches(subject, data))
            .collect()
    }

    fn apply(&self, entry: &Entry) {
        let Some(name) = entry.key.strip_prefix(RULE_PREFIX) else {
            return;
        };
        if validate_token("rule", name).is_err() {
            return;
        }
        let Ok(mut stored) = self.stored.write() else {
            return;
        };
        match entry.operation {
            Operation::Put => match Rule::parse(&entry.value) {
                Ok(rule) => {
                    tracing::info!(rule = name, "coordination rule in force");
                    stored.insert(name.to_string(), rule);
                }
                Err(err) => {
                    crate::observability::metrics::coordinator_rule_rejected();
                    tracing::warn!(%err, rule = name, "refusing a coordination rule; the rules in force stay");
                }
            },
            Operation::Delete | Operation::Purge => {
                stored.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn patterns_and_conditions_match_like_subjects() {
        let rule = Rule::parse(
            br#"{"on":"sys.health.*","when":{"to":"unhealthy"},"actions":[{"drain":{}}]}"#,
        )
        .unwrap();
        let unhealthy = json!({"to": "unhealthy", "service": "echo"});
        assert!(rule.matches("events.sys.health.changed", &unhealthy));
        assert!(!rule.matches("events.sys.health.changed", &json!({"to": "healthy"})));
        assert!(!rule.matches("events.sys.health.changed.more", &unhealthy));
        assert!(!rule.matches("events.orders.created", &unhealthy));
        assert!(pattern_matches("orders.>", "orders.eu.created"));
        assert!(!pattern_matches("orders.>", "orders"));
    }

    #[test]
    fn invalid_rules_are_refused_with_the_reason() {
        for bad in [
            &br#"{"on":"a b","actions":[{"drain":{}}]}"#[..],
            br#"{"on":"orders.>","actions":[]}"#,
            br#"{"on":"orders.>","actions":[{"explode":{}}]}"#,
            br#"{"on":"sys.action.drain","actions":[{"drain":{}}]}"#,
            br#"{"on":"orders.>","actions":[{"alert":{"severity":"loud"}}]}"#,
            br#"{"on":"orders.>","actions":[{"publish":{"subject":"a..b"}}]}"#,
            b"{",
        ] {
            let err = Rule::parse(bad).unwrap_err();
            assert_eq!(err.kind(), crate::error::ErrorKind::InvalidInput, "{err}");
        }
    }

    #[test]
    fn builtins_parse_back() {
        for (_, rule) in builtin() {
            let json = serde_json::to_vec(&rule).unwrap();
            assert_eq!(Rule::parse(&json).unwrap(), rule);
        }
    }
}
