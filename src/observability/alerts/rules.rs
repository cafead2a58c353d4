//! Alert rules: a condition over Switchyard's own state, how long it must hold before
//! the alert fires, and a severity. From a TOML file (`[alerts] file` in the
//! configuration) and live from KV `coord` under `alerts.<name>` (JSON; a stored rule
//! replaces a file rule of the same name). Invalid rules are refused with the reason
//! and the rules in force stay.
//!
//! ```toml
//! [dlq-not-empty]
//! condition = { dlq_depth = { above = 0 } }
//! for = "1m"
//! severity = "warning"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::subjects::validate_token;

/// What an alert watches. `service`, `stream` and `consumer` default to `*` (each one
/// is its own incident).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// Share of a service's requests answered with an error since the last evaluation
    /// (from the instances' micro STATS), above `above` (0..1), once `min_requests` came.
    ErrorRatio {
        #[serde(default = "any")]
        service: String,
        above: f64,
        #[serde(default = "ten")]
        min_requests: u64,
    },
    /// Average handling time of a service's requests since the last evaluation, in ms.
    LatencyMs {
        #[serde(default = "any")]
        service: String,
        above: f64,
    },
    /// The 99th percentile of a service's handling time over the last minute, in ms:
    /// the slowest instance's (each SDK instance reports it in its micro STATS).
    LatencyP99Ms {
        #[serde(default = "any")]
        service: String,
        above: f64,
    },
    /// Messages in stream `DLQ`.
    DlqDepth { above: u64 },
    /// Messages a consumer has not received yet.
    ConsumerPending {
        #[serde(default = "any")]
        stream: String,
        #[serde(default = "any")]
        consumer: String,
        above: u64,
    },
    /// Gateway instances whose circuit breaker for a service is open.
    BreakerOpen {
        #[serde(default = "any")]
        service: String,
    },
    /// Instances of a service that are unhealthy.
    UnhealthyInstances {
        #[serde(default = "any")]
        service: String,
        #[serde(default)]
        above: u64,
    },
}

fn any() -> String {
    "*".to_string()
}

fn ten() -> u64 {
    10
}

pub const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

/// One rule as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub condition: Condition,
    /// How long the condition must hold before the alert fires (`"1m"`, `"30s"`).
    #[serde(rename = "for", default, with = "duration_text")]
    pub hold: Duration,
    pub severity: String,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl AlertRule {
    pub fn parse_json(value: &[u8]) -> Result<AlertRule, Error> {
        let rule: AlertRule = serde_json::from_slice(value)
            .map_err(|e| Error::invalid_input(format!("malformed alert rule: {e}")))?;
        rule.validate()?;
        Ok(rule)
    }

    pub fn validate(&self) -> Result<(), Error> {
        if !SEVERITIES.contains(&self.severity.as_str()) {
            return Err(Error::invalid_input(format!(
                "alert severity {:?} is not one of {SEVERITIES:?}",
                self.severity
            )));
        }
        if self.hold > Duration::from_secs(24 * 3600) {
            return Err(Error::invalid_input("alert `for` is at most 24h"));
        }
        let name_ok = |what: &str, name: &str| match name {
            "*" => Ok(()),
            _ => validate_token(what, name),
        };
        match &self.condition {
            Condition::ErrorRatio { service, above, .. } => {
                name_ok("service", service)?;
                if !(0.0..1.0).contains(above) {
                    return Err(Error::invalid_input("error_ratio above must be in 0..1"));
                }
            }
            Condition::LatencyMs { service, above }
            | Condition::LatencyP99Ms { service, above } => {
                name_ok("service", service)?;
                if !above.is_finite() || *above <= 0.0 {
                    return Err(Error::invalid_input("latency_ms above must be positive"));
                }
            }
            Condition::ConsumerPending {
                stream, consumer, ..
            } => {
                name_ok("stream", stream)?;
                name_ok("consumer", consumer)?;
            }
            Condition::UnhealthyInstances { service, .. } | Condition::BreakerOpen { service } => {
                name_ok("service", service)?
            }
            Condition::DlqDepth { .. } => {}
        }
        Ok(())
    }
}

/// The rules that apply when the configuration names no file: `examples/alerts.toml`.
pub fn defaults() -> Result<BTreeMap<String, AlertRule>, Error> {
    parse_file(include_str!("../../../examples/alerts.toml"))
}

/// Reads a rules file: a TOML table per rule, named by its key.
pub fn parse_file(text: &str) -> Result<BTreeMap<String, AlertRule>, Error> {
    let rules: BTreeMap<String, AlertRule> = toml::from_str(text)
        .map_err(|e| Error::invalid_input(format!("alert rules file: {}", e.message())))?;
    for (name, rule) in &rules {
        validate_token("alert rule", name)?;
        rule.validate()
            .map_err(|e| Error::invalid_input(format!("alert rule {name}: {}", e.message())))?;
    }
    Ok(rules)
}

mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_toml_files_and_json_values() {
        let rules = parse_file(
            "[dlq]\ncondition = { dlq_depth = { above = 0 } }\nfor = \"1m\"\nseverity = \"warning\"\n\
             [errors]\ncondition = { error_ratio = { above = 0.05 } }\nseverity = \"critical\"\n",
        )
        .unwrap();
        assert_eq!(rules["dlq"].hold, Duration::from_secs(60));
        assert_eq!(
            rules["errors"].condition,
            Condition::ErrorRatio {
                service: "*".into(),
                above: 0.05,
                min_requests: 10
            }
        );
        let json = serde_json::to_vec(&rules["dlq"]).unwrap();
        assert_eq!(AlertRule::parse_json(&json).unwrap(), rules["dlq"]);
    }

    #[test]
    fn the_shipped_defaults_parse() {
        let rules = defaults().unwrap();
        assert!(rules.contains_key("dlq-not-empty") && rules.contains_key("instance-unhealthy"));
    }

    #[test]
    fn refuses_rules_that_cannot_work() {
        for bad in [
            &br#"{"condition":{"dlq_depth":{"above":0}},"severity":"loud"}"#[..],
            br#"{"condition":{"error_ratio":{"above":2}},"severity":"info"}"#,
            br#"{"condition":{"mood":{}},"severity":"info"}"#,
            br#"{"condition":{"dlq_depth":{"above":0}},"severity":"info","for":"soon"}"#,
        ] {
            assert!(AlertRule::parse_json(bad).is_err());
        }
        assert!(
            parse_file("[a.b]\ncondition = { dlq_depth = { above = 0 } }\nseverity = \"info\"\n")
                .is_err()
        );
    }
}
