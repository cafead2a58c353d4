//! What a coordination rule can do, and doing it. Every action taken is itself an
//! event, `events.sys.action.<action>`, saying which rule, on which instance, and how
//! it went.
//!
//! - `drain`: the instance named by the event (`service`, `instance`) gets health
//!   `draining` in its registry entry, so the gateway stops routing to it.
//! - `deregister` (`after_ms`): when the instance has not recovered after the grace
//!   period, its registry entry is deleted.
//! - `open_breaker`: every gateway opens its circuit breaker for the event's
//!   `service` now (`sys.gateway.breaker.<service>`), so callers get the service's
//!   fallback or a 503 at once instead of waiting on it.
//! - `alert` (`severity`: info, warning, critical): `alerts.<severity>.<rule>`, kept in
//!   stream `ALERTS`.
//! - `publish` (`subject`, optional `payload`): a command to any subject; the payload
//!   defaults to the triggering event's.

use std::time::Duration;

use async_nats::jetstream::Context as JetStream;
use async_nats::jetstream::kv::{Operation, Store};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::envelope::{ContentType, Envelope, Meta, Outgoing};
use crate::error::Error;
use crate::integration::bus::{self, Event};
use crate::integration::registry::{Health, RegistryEntry, entry};
use crate::subjects::validate_token;
use crate::system::health::checker::set_health;

const SOURCE: &str = "urn:switchyard:coordinator";
/// Longest grace a `deregister` may wait.
const MAX_GRACE_MS: u64 = 3_600_000;
pub const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    Drain {},
    Deregister {
        #[serde(default)]
        after_ms: u64,
    },
    OpenBreaker {},
    Alert {
        severity: String,
    },
    Publish {
        subject: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<serde_json::Value>,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Drain {} => "drain",
            Action::Deregister { .. } => "deregister",
            Action::OpenBreaker {} => "open_breaker",
            Action::Alert { .. } => "alert",
            Action::Publish { .. } => "publish",
        }
    }

    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Action::Drain {} | Action::OpenBreaker {} => Ok(()),
            Action::Deregister { after_ms } if *after_ms <= MAX_GRACE_MS => Ok(()),
            Action::Deregister { after_ms } => Err(Error::invalid_input(format!(
                "deregister after_ms {after_ms} is over {MAX_GRACE_MS}"
            ))),
            Action::Alert { severity } if SEVERITIES.contains(&severity.as_str()) => Ok(()),
            Action::Alert { severity } => Err(Error::invalid_input(format!(
                "alert severity {severity:?} is not one of {SEVERITIES:?}"
            ))),
            Action::Publish { subject, .. } => subject
                .split('.')
                .try_for_each(|token| validate_token("subject token", token)),
        }
    }
}

/// `events.sys.action.<action>`: one action taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionTaken {
    pub rule: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// `done`, `skipped: …` or `failed: …`.
    pub outcome: String,
}

impl Event for ActionTaken {
    fn ce_type(&self) -> &'static str {
        "io.switchyard.sys.action.taken"
    }

    fn subject(&self) -> String {
        format!("events.sys.action.{}", self.action)
    }
}

/// `alerts.<severity>.<rule>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRaised {
    pub rule: String,
    pub severity: String,
    pub state: String,
    /// The subject of the event that raised it and its payload.
    pub event: String,
    pub data: serde_json::Value,
}

/// Runs actions for the leader.
#[derive(Clone)]
pub struct Actions {
    pub client: async_nats::Client,
    pub js: JetStream,
    pub registry: Store,
    pub stop: CancellationToken,
}

impl Actions {
    /// Runs `action` of `rule` for the event (`subject`, `data`, `cause`), then
    /// publishes what happened.
    pub async fn run(
        &self,
        rule: &str,
        action: &Action,
        subject: &str,
        data: &serde_json::Value,
        cause: &Meta,
    ) {
        let field = |name: &str| data.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let (service, instance) = (field("service"), field("instance"));
        let outcome = match action {
            Action::Drain {} => match (&service, &instance) {
                (Some(s), Some(i)) => self.drain(s, i).await,
                _ => Ok("skipped: the event names no instance".into()),
            },
            Action::Deregister { after_ms } => match (&service, &instance) {
                (Some(s), Some(i)) => {
                    self.deregister_later(rule, s, i, Duration::from_millis(*after_ms), cause);
                    Ok(format!("scheduled in {after_ms} ms"))
                }
                _ => Ok("skipped: the event names no instance".into()),
            },
            Action::OpenBreaker {} => match &service {
                Some(s) => self.open_breaker(s).await,
                None => Ok("skipped: the event names no service".into()),
            },
            Action::Alert { severity } => self.alert(rule, severity, subject, data).await,
            Action::Publish {
                subject: to,
                payload,
            } => {
                let payload = payload.as_ref().unwrap_or(data);
                self.publish(to, payload, cause).await
            }
        };
        let outcome = outcome.unwrap_or_else(|err| format!("failed: {err}"));
        let taken = ActionTaken {
            rule: rule.to_string(),
            action: action.name().to_string(),
            service,
            instance,
            outcome,
        };
        announce(&self.js, &self.client, &taken, cause).await;
    }

    async fn drain(&self, service: &str, instance: &str) -> Result<String, Error> {
        let key = entry::key(service, instance)?;
        match set_health(&self.js, &self.registry, &key, Health::Draining).await? {
            Some(_) => Ok("done".into()),
            None => Ok("skipped: the instance is no longer registered".into()),
        }
    }

    fn deregister_later(
        &self,
        rule: &str,
        service: &str,
        instance: &str,
        grace: Duration,
        cause: &Meta,
    ) {
        let (this, cause) = (self.clone(), cause.clone());
        let (rule, service, instance) =
            (rule.to_string(), service.to_string(), instance.to_string());
        tokio::spawn(async move {
            tokio::select! {
                _ = this.stop.cancelled() => return,
                _ = tokio::time::sleep(grace) => {}
            }
            let outcome = this
                .deregister(&service, &instance)
                .await
                .unwrap_or_else(|err| format!("failed: {err}"));
            let taken = ActionTaken {
                rule,
                action: "deregister".into(),
                service: Some(service),
                instance: Some(instance),
                outcome,
            };
            announce(&this.js, &this.client, &taken, &cause).await;
        });
    }

    /// Deletes the entry unless the instance recovered in the meantime.
    async fn deregister(&self, service: &str, instance: &str) -> Result<String, Error> {
        let key = entry::key(service, instance)?;
        let stored = self
            .registry
            .entry(key.as_str())
            .await
            .map_err(|e| Error::nats("read registry entry", e))?;
        let Some(stored) = stored.filter(|s| s.operation == Operation::Put) else {
            return Ok("skipped: already gone".into());
        };
        let entry = RegistryEntry::from_json(&stored.value)?;
        if matches!(entry.health, Health::Healthy | Health::Degraded) {
            return Ok(format!(
                "skipped: the instance recovered ({:?})",
                entry.health
            ));
        }
        self.registry
            .delete_expect_revision(key.as_str(), Some(stored.revision))
            .await
            .map_err(|e| Error::nats("delete registry entry", e))?;
        Ok("done".into())
    }

    async fn open_breaker(&self, service: &str) -> Result<String, Error> {
        validate_token("service", service)?;
        self.client
            .publish(format!("sys.gateway.breaker.{service}"), "open".into())
            .await?;
        Ok("done".into())
    }

    async fn alert(
        &self,
        rule: &str,
        severity: &str,
        subject: &str,
        data: &serde_json::Value,
    ) -> Result<String, Error> {
        validate_token("rule", rule)?;
        let alert = AlertRaised {
            rule: rule.to_string(),
            severity: severity.to_string(),
            state: "firing".into(),
            event: subject.to_string(),
            data: data.clone(),
        };
        let meta =
            Meta::new(SOURCE, "io.switchyard.alert.firing").with_content_type(ContentType::Json);
        crate::envelope::publish_durable(
            &self.js,
            &self.client,
            format!("alerts.{severity}.{rule}"),
            &Envelope::new(meta, alert),
        )
        .await?;
        Ok("done".into())
    }

    async fn publish(
        &self,
        subject: &str,
        payload: &serde_json::Value,
        cause: &Meta,
    ) -> Result<String, Error> {
        let meta = cause
            .follow_up(SOURCE, "io.switchyard.sys.command")
            .with_content_type(ContentType::Json);
        let message = Outgoing::encode(&Envelope::new(meta, payload))?;
        crate::envelope::check_size(&self.client, &message)?;
        self.client
            .publish_with_headers(subject.to_string(), message.headers, message.payload)
            .await?;
        Ok("done".into())
    }
}

async fn announce(js: &JetStream, client: &async_nats::Client, taken: &ActionTaken, cause: &Meta) {
    if let Err(err) = bus::publish(js, client, SOURCE, taken, Some(cause)).await {
        tracing::warn!(%err, action = %taken.action, "cannot publish an action event");
    }
    tracing::info!(rule = %taken.rule, action = %taken.action, outcome = %taken.outcome, "coordinator action");
}
