//! Rules per namespace: how long an entry lives (`ttl`, also applied to the stored KV
//! entry), how long it stays unread in memory (`idle`, memory only), and how many bytes
//! of keys and values one instance keeps in memory (`max_bytes`).
//!
//! Three layers, each field falling through to the layer below when not given:
//!
//! 1. KV `policies`, key `cache.<namespace>`, JSON `{"ttl_ms","idle_ms","max_bytes"}`,
//!    watched live (a malformed value is logged and ignored);
//! 2. `[cache.namespaces.<namespace>]` in the configuration file (and the built-in rule
//!    of `status`: a TTL of 7 days, the age of stream `DATA` whose records it tracks);
//! 3. `[cache.default]`, else no TTL, no idle limit, 64 MiB.
//!
//! A zero duration (`"0s"`, `0`) means "none", so a layer can lift a TTL below it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::key::validate_namespace;
use crate::error::Error;

/// Memory per namespace and instance when nothing says otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The namespace of data sync's delivery statuses.
pub const STATUS_NAMESPACE: &str = "status";
/// Statuses live as long as the records of stream `DATA` they describe.
pub const STATUS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest TTL or idle time (moka refuses durations near 1000 years).
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The rule in force for one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceRule {
    /// Entries expire this long after they were written, in memory and in KV.
    pub ttl: Option<Duration>,
    /// Entries leave memory when unread this long (KV keeps them).
    pub idle: Option<Duration>,
    /// Weighted capacity in memory: key plus value bytes, per instance.
    pub max_bytes: u64,
}

impl Default for NamespaceRule {
    fn default() -> Self {
        NamespaceRule {
            ttl: None,
            idle: None,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl NamespaceRule {
    /// This rule with the fields `patch` gives replaced.
    pub fn with(self, patch: &RulePatch) -> NamespaceRule {
        let duration = |given: Option<Duration>, current| match given {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => current,
        };
        NamespaceRule {
            ttl: duration(patch.ttl, self.ttl),
            idle: duration(patch.idle, self.idle),
            max_bytes: patch.max_bytes.unwrap_or(self.max_bytes),
        }
    }

    /// The `Nats-TTL` of a KV write under this rule: whole seconds, at least one (the
    /// server's granularity), rounded up so KV never drops an entry before memory does.
    pub fn kv_ttl(&self) -> Option<String> {
        self.ttl.map(|ttl| {
            let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
            format!("{}s", secs.max(1))
        })
    }
}

/// The cache's configuration: `[cache]` in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Rules of the namespaces configured by name (`status` always among them).
    pub namespaces: BTreeMap<String, NamespaceRule>,
    /// The rule of every other namespace.
    pub default: NamespaceRule,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig::with_default(NamespaceRule::default())
    }
}

impl CacheConfig {
    /// Built-in namespace rules over `default`.
    fn with_default(default: NamespaceRule) -> CacheConfig {
        let status = NamespaceRule {
            ttl: Some(STATUS_TTL),
            ..default
        };
        CacheConfig {
            namespaces: BTreeMap::from([(STATUS_NAMESPACE.to_string(), status)]),
            default,
        }
    }

    /// The configured rule of `namespace` (before policies).
    pub fn rule(&self, namespace: &str) -> NamespaceRule {
        self.namespaces
            .get(namespace)
            .copied()
            .unwrap_or(self.default)
    }
}

/// Fields of a rule given by one layer; `None` falls through, zero means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RulePatch {
    pub ttl: Option<Duration>,
    pub idle: Option<Duration>,
    pub max_bytes: Option<u64>,
}

impl RulePatch {
    /// Parses a value of KV `policies` under `cache.<namespace>`.
    pub fn parse_policy(value: &[u8]) -> Result<RulePatch, Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Policy {
            ttl_ms: Option<u64>,
            idle_ms: Option<u64>,
            max_bytes: Option<u64>,
        }
        let policy: Policy = serde_json::from_slice(value)
            .map_err(|e| Error::invalid_input(format!("malformed cache policy: {e}")))?;
        let patch = RulePatch {
            ttl: policy.ttl_ms.map(Duration::from_millis),
            idle: policy.idle_ms.map(Duration::from_millis),
            max_bytes: policy.max_bytes,
        };
        patch.check().map_err(Error::invalid_input)?;
        Ok(patch)
    }

    fn check(&self) -> Result<(), String> {
        for (name, duration) in [("ttl", self.ttl), ("idle", self.idle)] {
            if duration.is_some_and(|d| d > MAX_DURATION) {
                return Err(format!("cache {name} must be at most 10 years"));
            }
        }
        if self.max_bytes == Some(0) {
            return Err("cache max_bytes must be positive".into());
        }
        Ok(())
    }
}

/// `[cache]` as written in the TOML file; [`CacheSection::resolve`] makes it a
/// [`CacheConfig`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    #[serde(default)]
    default: RuleSection,
    #[serde(default)]
    namespaces: BTreeMap<String, RuleSection>,
}

/// `[cache.default]` or `[cache.namespaces.<ns>]`: `ttl = "5m"`, `idle = "1m"`,
/// `max_bytes = 67108864`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    #[serde(default, deserialize_with = "humantime_opt")]
    ttl: Option<Duration>,
    #[serde(default, deserialize_with = "humantime_opt")]
    idle: Option<Duration>,
    max_bytes: Option<u64>,
}

impl RuleSection {
    fn patch(&self) -> RulePatch {
        RulePatch {
            ttl: self.ttl,
            idle: self.idle,
            max_bytes: self.max_bytes,
        }
    }
}

impl CacheSection {
    /// The rules, each layer over the one below; one line saying what is wrong.
    pub fn resolve(&self) -> Result<CacheConfig, String> {
        let check = |what: &str, patch: RulePatch| {
            patch.check().map_err(|e| format!("{what}: {e}"))?;
            Ok::<_, String>(patch)
        };
        let default_patch = check("cache.default", self.default.patch())?;
        let mut config = CacheConfig::with_default(NamespaceRule::default().with(&default_patch));
        for (namespace, section) in &self.namespaces {
            validate_namespace(namespace)
                .map_err(|e| format!("cache.namespaces.{namespace}: {}", e.message()))?;
            let patch = check(&format!("cache.namespaces.{namespace}"), section.patch())?;
            let rule = config.rule(namespace).with(&patch);
            config.namespaces.insert(namespace.clone(), rule);
        }
        Ok(config)
    }
}

fn humantime_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn section(text: &str) -> Result<CacheConfig, String> {
        toml::from_str::<CacheSection>(text)
            .map_err(|e| e.to_string())?
            .resolve()
    }

    #[test]
    fn defaults_keep_statuses_as_long_as_their_records() {
        let config = CacheConfig::default();
        assert_eq!(config.default, NamespaceRule::default());
        assert_eq!(config.rule("status").ttl, Some(STATUS_TTL));
        assert_eq!(config.rule("anything").ttl, None);
        assert_eq!(config.rule("status").kv_ttl().as_deref(), Some("604800s"));
    }

    #[test]
    fn file_layers_fall_through_field_by_field() {
        let config = section(
            "[default]\nmax_bytes = 1000\nidle = \"1m\"\n\
             [namespaces.demo]\nttl = \"5m\"\n\
             [namespaces.status]\nmax_bytes = 42\n\
             [namespaces.forever]\nidle = \"0s\"\n",
        )
        .unwrap();
        let demo = config.rule("demo");
        assert_eq!(demo.ttl, Some(Duration::from_secs(300)));
        assert_eq!(demo.idle, Some(Duration::from_secs(60)));
        assert_eq!(demo.max_bytes, 1000);
        let status = config.rule("status");
        assert_eq!((status.ttl, status.max_bytes), (Some(STATUS_TTL), 42));
        assert_eq!(config.rule("forever").idle, None);
        assert_eq!(config.rule("other").max_bytes, 1000);
    }

    #[test]
    fn bad_file_rules_are_one_line_errors() {
        for bad in [
            "[default]\nttl = \"soon\"",
            "[default]\nmax_bytes = 0",
            "[default]\ntll = \"1s\"",
            "[namespaces.\"a.b\"]\nttl = \"1s\"",
            "[namespaces.x]\nttl = \"20000d\"",
        ] {
            let err = section(bad).unwrap_err();
            assert!(!err.trim().is_empty(), "{bad}");
        }
    }

    #[test]
    fn policies_parse_and_override() {
        let patch = RulePatch::parse_policy(br#"{"ttl_ms": 1500, "max_bytes": 2048}"#).unwrap();
        let rule = CacheConfig::default().rule("status").with(&patch);
        assert_eq!(rule.ttl, Some(Duration::from_millis(1500)));
        assert_eq!(rule.max_bytes, 2048);
        assert_eq!(rule.kv_ttl().as_deref(), Some("2s"));
        let lifted = RulePatch::parse_policy(br#"{"ttl_ms": 0}"#).unwrap();
        assert_eq!(rule.with(&lifted).ttl, None);
        assert_eq!(
            RulePatch::parse_policy(b"{}").unwrap(),
            RulePatch::default()
        );
        for bad in [
            &br#"{"ttl_ms": "5s"}"#[..],
            br#"{"max_bytes": 0}"#,
            br#"{"tll_ms": 5}"#,
            br#"{"ttl_ms": 999999999999999}"#,
            b"nope",
        ] {
            let err = RulePatch::parse_policy(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
        }
    }
}
