//! Configuration: flag, then env var (both via clap), then the optional TOML file, then
//! the default. Every problem is one [`ConfigError`] line; `main` exits 64 with it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{GlobalArgs, LogFormat, UpArgs};
use crate::data::cache::CacheConfig;
use crate::data::cache::rules::CacheSection;
use crate::integration::gateway::api_keys::{self, ApiKey};
use crate::subjects::STREAMS;

/// Exit code for bad configuration (`EX_USAGE` in sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Everything a Switchyard process needs to know, resolved and validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// External NATS server; `None` means `up` starts an embedded one.
    pub nats_url: Option<String>,
    /// How to log in to that server (`--nats-creds`, `NATS_USER`…, `[nats]`).
    pub nats_auth: crate::nats::NatsAuth,
    pub admin: SocketAddr,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub grace: Duration,
    pub embedded: EmbeddedConfig,
    pub jetstream: JetStreamConfig,
    pub gateway: GatewayConfig,
    /// The data cache's rules per namespace (`[cache]`).
    pub cache: CacheConfig,
    /// How long a coordinator leader's lease lasts without renewal (`[coordinator]
    /// lease`): another instance takes over about this long after the leader dies.
    pub coordinator_lease: Duration,
    /// Alert rules from `[alerts] file`, the webhook and the evaluation interval.
    pub alerts: crate::observability::alerts::AlertConfig,
}

/// The API gateway: its HTTP ingress, the timeout of services without a policy, and
/// how many requests it forwards at once before it sheds the rest (answers 429).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    pub http: SocketAddr,
    pub timeout: Duration,
    pub max_in_flight: usize,
    /// HTTP callers must present an API key (`--require-api-key`, `up --secure`); keys
    /// are also required whenever any is configured (see
    /// [`crate::integration::gateway::http_auth`]).
    pub require_api_key: bool,
    /// `[[gateway.api_keys]]` and the lines of `api_keys_file`: names, hashes, rates.
    pub api_keys: Vec<ApiKey>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            http: parse_default(DEFAULT_HTTP),
            timeout: DEFAULT_GATEWAY_TIMEOUT,
            max_in_flight: DEFAULT_GATEWAY_MAX_IN_FLIGHT,
            require_api_key: false,
            api_keys: Vec::new(),
        }
    }
}

/// The embedded nats-server `up` starts when no `--nats` is given.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub config: Option<PathBuf>,
    pub server_bin: Option<PathBuf>,
    /// `up --secure`: users and permissions of nats/auth.conf, one user per component.
    pub secure: bool,
}

/// Stream and bucket settings; a change here updates them on the next start.
#[derive(Debug, Clone, Default)]
pub struct JetStreamConfig {
    /// Replicas of every stream and bucket; 0 (the default) means 3 when the server is
    /// part of a cluster and 1 when it is alone.
    pub replicas: usize,
    pub streams: BTreeMap<String, StreamLimits>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamLimits {
    #[serde(default, with = "humantime_serde_opt")]
    pub max_age: Option<Duration>,
    pub max_bytes: Option<i64>,
}

/// The TOML file's shape. Unknown keys are refused so a typo is never silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// `nats = "<url>"` or a `[nats]` table with the URL and the login.
    nats: Option<crate::nats::auth::NatsKey>,
    admin: Option<SocketAddr>,
    log: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default, with = "humantime_serde_opt")]
    grace: Option<Duration>,
    #[serde(default)]
    embedded: FileEmbedded,
    #[serde(default)]
    jetstream: FileJetStream,
    http: Option<SocketAddr>,
    #[serde(default)]
    gateway: FileGateway,
    #[serde(default)]
    cache: CacheSection,
    #[serde(default)]
    coordinator: FileCoordinator,
    #[serde(default)]
    alerts: FileAlerts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAlerts {
    file: Option<PathBuf>,
    webhook: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    every: Option<Duration>,
}

impl FileAlerts {
    fn resolve(self) -> Result<crate::observability::alerts::AlertConfig, ConfigError> {
        let file_rules = match &self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("cannot read alert rules {}: {e}", path.display()))
                })?;
                crate::observability::alerts::rules::parse_file(&text)
                    .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.message())))?
            }
            None => crate::observability::alerts::rules::defaults()
                .map_err(|e| ConfigError(format!("built-in alert rules: {}", e.message())))?,
        };
        if let Some(url) = &self.webhook {
            crate::observability::alerts::webhook::parse_url(url)
                .map_err(|e| ConfigError(e.message().to_string()))?;
        }
        let every = self.every.unwrap_or(Duration::from_secs(5));
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&every) {
            return Err(ConfigError(
                "alerts.every must be between 100ms and 1h".into(),
            ));
        }
        Ok(crate::observability::alerts::AlertConfig {
            file_rules,
            webhook: self.webhook,
            every,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCoordinator {
    #[serde(default, with = "humantime_serde_opt")]
    lease: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGateway {
    #[serde(default, with = "humantime_serde_opt")]
    timeout: Option<Duration>,
    max_in_flight: Option<usize>,
    require_api_key: Option<bool>,
    #[serde(default)]
    api_keys: Vec<ApiKey>,
    api_keys_file: Option<PathBuf>,
}

/// The keys of the file (checked as it was read) and of `api_keys_file`, together.
fn api_keys(listed: Vec<ApiKey>, file: Option<&Path>) -> Result<Vec<ApiKey>, ConfigError> {
    let from_file = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("cannot read API keys file {}: {e}", path.display()))
            })?;
            api_keys::parse_file(&text)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?
        }
        None => Vec::new(),
    };
    api_keys::merge(listed, from_file).map_err(ConfigError)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEmbedded {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    server_bin: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJetStream {
    replicas: Option<usize>,
    #[serde(default)]
    streams: BTreeMap<String, StreamLimits>,
}

pub const DEFAULT_ADMIN: &str = "127.0.0.1:9464";
pub const DEFAULT_NATS_LISTEN: &str = "127.0.0.1:4222";
pub const DEFAULT_DATA_DIR: &str = ".switchyard";
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
pub const DEFAULT_GATEWAY_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one gateway forwards at once (NATS and HTTP together); more are answered
/// 429 overloaded at once instead of queueing.
pub const DEFAULT_GATEWAY_MAX_IN_FLIGHT: usize = 1024;

impl Config {
    /// Resolves flags and env (already in `global`/`up`) over the file over defaults.
    pub fn load(global: &GlobalArgs, up: Option<&UpArgs>) -> Result<Config, ConfigError> {
        let file = match &global.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let default_up = UpArgs::default();
        let up = up.unwrap_or(&default_up);
        let nats = file.nats.unwrap_or_default().0;
        let config = Config {
            nats_url: global.nats.clone().or(nats.url.clone()),
            nats_auth: crate::nats::NatsAuth::resolve(
                &global.nats_login,
                &nats,
                crate::nats::auth::SecretEnv::from_process(),
            )
            .map_err(|e| ConfigError(e.message().to_string()))?,
            admin: global
                .admin
                .or(file.admin)
                .unwrap_or_else(|| parse_default(DEFAULT_ADMIN)),
            log_filter: global
                .log
                .clone()
                .or(file.log)
                .unwrap_or_else(|| "info".into()),
            log_format: global.log_format.or(file.log_format).unwrap_or_default(),
            grace: global
                .grace
                .or(file.grace)
                .unwrap_or(Duration::from_secs(10)),
            embedded: EmbeddedConfig {
                listen: up
                    .nats_listen
                    .or(file.embedded.listen)
                    .unwrap_or_else(|| parse_default(DEFAULT_NATS_LISTEN)),
                data_dir: up
                    .data_dir
                    .clone()
                    .or(file.embedded.data_dir)
                    .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
                config: up.nats_config.clone().or(file.embedded.config),
                server_bin: up.nats_server.clone().or(file.embedded.server_bin),
                secure: up.secure,
            },
            jetstream: JetStreamConfig {
                replicas: file.jetstream.replicas.unwrap_or(0),
                streams: file.jetstream.streams,
            },
            gateway: GatewayConfig {
                http: global
                    .http
                    .or(file.http)
                    .unwrap_or_else(|| parse_default(DEFAULT_HTTP)),
                timeout: global
                    .gateway_timeout
                    .or(file.gateway.timeout)
                    .unwrap_or(DEFAULT_GATEWAY_TIMEOUT),
                max_in_flight: global
                    .gateway_max_in_flight
                    .or(file.gateway.max_in_flight)
                    .unwrap_or(DEFAULT_GATEWAY_MAX_IN_FLIGHT),
                require_api_key: global
                    .require_api_key
                    .or(file.gateway.require_api_key)
                    .unwrap_or(up.secure),
                api_keys: api_keys(
                    file.gateway.api_keys,
                    global
                        .api_keys_file
                        .as_deref()
                        .or(file.gateway.api_keys_file.as_deref()),
                )?,
            },
            cache: file.cache.resolve().map_err(ConfigError)?,
            coordinator_lease: file
                .coordinator
                .lease
                .unwrap_or(crate::system::coordinator::DEFAULT_LEASE),
            alerts: file.alerts.resolve()?,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.nats_url {
            crate::nats::connect::server_addrs(url)
                .map_err(|e| ConfigError(e.message().to_string()))?;
        }
        if self.embedded.secure && self.nats_url.is_some() {
            return Err(ConfigError(
                "--secure starts its own nats-server with nats/auth.conf; it cannot be combined \
                 with --nats (give that server nats/auth.conf instead)"
                    .into(),
            ));
        }
        if self.jetstream.replicas > 5 {
            return Err(ConfigError(format!(
                "jetstream.replicas must be 1 to 5 (or 0: automatic), got {}",
                self.jetstream.replicas
            )));
        }
        for (name, limits) in &self.jetstream.streams {
            if !STREAMS.iter().any(|s| s.name == name) {
                let known: Vec<&str> = STREAMS.iter().map(|s| s.name).collect();
                return Err(ConfigError(format!(
                    "unknown stream {name:?} in jetstream.streams (known: {})",
                    known.join(", ")
                )));
            }
            if limits.max_bytes.is_some_and(|b| b <= 0) {
                return Err(ConfigError(format!(
                    "jetstream.streams.{name}.max_bytes must be positive"
                )));
            }
        }
        if self.grace > Duration::from_secs(600) {
            return Err(ConfigError("grace must be at most 10m".into()));
        }
        let timeout = self.gateway.timeout;
        if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(600) {
            return Err(ConfigError(
                "gateway timeout must be between 1ms and 10m".into(),
            ));
        }
        if !(1..=1_000_000).contains(&self.gateway.max_in_flight) {
            return Err(ConfigError(
                "gateway max_in_flight must be between 1 and 1000000".into(),
            ));
        }
        crate::integration::gateway::http_auth::check_config(&self.gateway).map_err(ConfigError)?;
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.coordinator_lease) {
            return Err(ConfigError(
                "coordinator lease must be between 1s and 60s".into(),
            ));
        }
        // The same check the running filter gets, so a filter it would refuse stops the
        // start instead of falling back to `info`.
        crate::observability::logging::parse_filter(&self.log_filter)
            .map_err(|e| ConfigError(e.message().to_string()))?;
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        // toml's message spans several lines (with a source excerpt); keep the first.
        let message = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_string();
        let at = e
            .span()
            .map(|span| {
                let line = text[..span.start].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        ConfigError(format!("{}: {message}{at}", path.display()))
    })
}

fn parse_default(addr: &str) -> SocketAddr {
    addr.parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// `"10s"`-style durations in the TOML file.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
