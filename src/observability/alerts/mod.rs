//! The alert system: the leading coordinator evaluates alert rules ([`rules`]) against
//! the status document every few seconds ([`evaluate`]) and publishes
//! `alerts.<severity>.<rule>` when an incident fires and when it resolves — once each,
//! kept in stream `ALERTS` — with `switchyard_alerts_firing` on `/metrics` and, when
//! configured, a POST of the same JSON to a webhook ([`webhook`]).
//!
//! Firing incidents are also written to KV `coord` (`incidents.<rule>`), so a new
//! leader carries them on instead of announcing them again.

pub mod breakers;
pub mod evaluate;
pub mod rules;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{Entry, Operation, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::evaluate::{Change, Incidents};
use self::rules::AlertRule;
use crate::component::Context;
use crate::envelope::{ContentType, Envelope, Meta};
use crate::error::Error;
use crate::nats::watch as kv_watch;
use crate::observability::metrics as m;
use crate::subjects::validate_token;
use crate::system::monitor::status;

/// Key prefixes in KV `coord`: rules, and the firing incidents of each rule.
pub const RULE_PREFIX: &str = "alerts.";
pub const INCIDENT_PREFIX: &str = "incidents.";
const SOURCE: &str = "urn:switchyard:alerts";

/// Alert settings from the configuration (`[alerts]`).
#[derive(Debug, Clone, Default)]
pub struct AlertConfig {
    /// Rules from the TOML file, by name.
    pub file_rules: BTreeMap<String, AlertRule>,
    /// Where firing and resolved alerts are also POSTed (http:// only).
    pub webhook: Option<String>,
    pub every: Duration,
}

/// `alerts.<severity>.<rule>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub rule: String,
    pub severity: String,
    /// `firing` or `resolved`.
    pub state: String,
    /// What it is about: a service, `<stream>/<consumer>`, or empty.
    pub subject: String,
    pub value: f64,
    pub condition: rules::Condition,
}

/// The rules in force: the file's, overlaid live by KV `coord` `alerts.<name>`.
#[derive(Clone)]
pub struct AlertRules {
    file: BTreeMap<String, AlertRule>,
    stored: Arc<RwLock<BTreeMap<String, AlertRule>>>,
}

impl AlertRules {
    pub async fn start(
        ctx: &Context,
        kv: &Store,
        file: BTreeMap<String, AlertRule>,
    ) -> Result<AlertRules, Error> {
        let rules = AlertRules {
            file,
            stored: Arc::default(),
        };
        let last = kv_watch::load(kv, |entry| rules.apply(&entry)).await?;
        let follower = rules.clone();
        tokio::spawn(kv_watch::follow(
            kv.clone(),
            ctx.client.clone(),
            last,
            ctx.shutdown().clone(),
            move |e| follower.apply(&e),
        ));
        Ok(rules)
    }

    pub fn all(&self) -> BTreeMap<String, AlertRule> {
        let mut all = self.file.clone();
        if let Ok(stored) = self.stored.read() {
            all.extend(stored.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        all
    }

    fn apply(&self, entry: &Entry) {
        let Some(name) = entry.key.strip_prefix(RULE_PREFIX) else {
            return;
        };
        let Ok(mut stored) = self.stored.write() else {
            return;
        };
        match entry.operation {
            Operation::Put => match validate_token("alert rule", name)
                .and_then(|()| AlertRule::parse_json(&entry.value))
            {
                Ok(rule) => {
                    stored.insert(name.to_string(), rule);
                }
                Err(err) => {
                    tracing::warn!(%err, rule = name, "refusing an alert rule; the rules in force stay")
                }
            },
            Operation::Delete | Operation::Purge => {
                stored.remove(name);
            }
        }
    }
}

/// Evaluates while this instance leads; starts from the stored incidents each time it
/// becomes leader.
pub async fn run(
    ctx: Context,
    kv: Store,
    rules: AlertRules,
    config: AlertConfig,
    mut leadership: watch::Receiver<Option<u64>>,
) {
    let stop = ctx.shutdown().clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            led = leadership.wait_for(Option::is_some) => if led.is_err() { return },
        }
        let mut incidents = load_incidents(&kv).await;
        // Followed while this term lasts.
        let term = stop.child_token();
        let breakers = match breakers::Breakers::start(&ctx, term.clone()).await {
            Ok(breakers) => breakers,
            Err(err) => {
                tracing::warn!(%err, "breaker alerts unavailable");
                breakers::Breakers::default()
            }
        };
        let mut previous = None;
        let mut tick = tokio::time::interval(config.every);
        while leadership.borrow().is_some() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let status = match status::collect(&ctx.client, &ctx.jetstream).await {
                Ok(status) => status,
                Err(err) => {
                    tracing::debug!(%err, "cannot evaluate alerts now");
                    continue;
                }
            };
            let all = rules.all();
            let counters = evaluate::counters(&status);
            // Rates need two evaluations; the first one only sets the baseline.
            let open = breakers.open();
            let seen = match &previous {
                Some(previous) => evaluate::evaluate(&all, &status, previous, &open),
                None => evaluate::evaluate(&all, &status, &counters, &open),
            };
            previous = Some(counters);
            let hold = |rule: &str| all.get(rule).map_or(Duration::ZERO, |r| r.hold);
            let changes = incidents.step(seen, hold, Instant::now());
            for change in &changes {
                if let Some(rule) = all.get(&change.rule) {
                    announce(&ctx, &config, rule, change).await;
                }
            }
            if !changes.is_empty() {
                store_incidents(&kv, &incidents, &changes).await;
            }
            export(&all, &incidents);
        }
        term.cancel();
    }
}

async fn announce(ctx: &Context, config: &AlertConfig, rule: &AlertRule, change: &Change) {
    let event = AlertEvent {
        rule: change.rule.clone(),
        severity: rule.severity.clone(),
        state: if change.firing { "firing" } else { "resolved" }.to_string(),
        subject: change.key.clone(),
        value: change.value,
        condition: rule.condition.clone(),
    };
    tracing::warn!(rule = %event.rule, state = %event.state, subject = %event.subject, value = event.value, "alert");
    let kind = format!("io.switchyard.alert.{}", event.state);
    let meta = Meta::new(SOURCE, kind).with_content_type(ContentType::Json);
    let subject = format!("alerts.{}.{}", event.severity, event.rule);
    let envelope = Envelope::new(meta, &event);
    if let Err(err) =
        crate::envelope::publish_durable(&ctx.jetstream, &ctx.client, subject, &envelope).await
    {
        tracing::warn!(%err, "cannot publish an alert");
    }
    if let Some(url) = &config.webhook
        && let Err(err) = webhook::post(url, &event).await
    {
        tracing::warn!(%err, "alert webhook failed");
    }
}

fn export(rules: &BTreeMap<String, AlertRule>, incidents: &Incidents) {
    let firing = incidents.firing();
    for (name, rule) in rules {
        let count = firing.get(name).map_or(0, Vec::len);
        m::alerts_firing(name, &rule.severity, count);
    }
}

async fn load_incidents(kv: &Store) -> Incidents {
    let mut incidents = Incidents::default();
    let now = Instant::now();
    let _ = kv_watch::load(kv, |entry| {
        if let Some(rule) = entry.key.strip_prefix(INCIDENT_PREFIX)
            && entry.operation == Operation::Put
            && let Ok(keys) = serde_json::from_slice::<Vec<String>>(&entry.value)
        {
            for key in keys {
                incidents.adopt_firing(rule, &key, now);
            }
        }
    })
    .await;
    incidents
}

async fn store_incidents(kv: &Store, incidents: &Incidents, changes: &[Change]) {
    let firing = incidents.firing();
    for rule in changes.iter().map(|c| c.rule.as_str()) {
        let keys = firing.get(rule).cloned().unwrap_or_default();
        let key = format!("{INCIDENT_PREFIX}{rule}");
        let result = match keys.is_empty() {
            true => kv.delete(&key).await.map_err(|e| e.to_string()),
            false => match serde_json::to_vec(&keys) {
                Ok(value) => kv
                    .put(&key, value.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        if let Err(err) = result {
            tracing::warn!(%err, rule, "cannot store firing incidents");
        }
    }
}
