//! The coordinator: it runs in every `up` or `run` instance, but acts only while it
//! holds leadership.
//!
//! - [`lease`]: leader election by a lease in KV `coord` (create-if-absent, renewal
//!   with compare-and-set, take-over after a lease without renewal, stepping down on a
//!   graceful stop).
//! - [`rules`] and [`actions`]: coordination rules (event pattern → actions) in KV
//!   `coord`, managed through `sys.coord.rules.*`, applied live.
//! - [`leader`]: the leader's loops: health checks ([`crate::system::health`]) and
//!   applying the rules to every event; the leader also evaluates the alert rules
//!   ([`crate::observability::alerts`]).
//!
//! Every change of leadership is an event, `events.sys.coordinator.<elected|stepped_down>`,
//! and `switchyard_coordinator_leader` says on `/metrics` whether this instance leads.
//! `sys.coord.leader` answers who leads now.

pub mod actions;
pub mod leader;
pub mod lease;
pub mod rules;
mod rules_endpoint;

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::lease::{Election, LEADER_KEY, LeaseValue, Standing};
use crate::component::responder::{self, Endpoint, Reply, Request};
use crate::component::{Component, Context, Subscription};
use crate::error::Error;
use crate::integration::bus::{self, Event};
use crate::integration::registry::view::RegistryView;
use crate::observability::alerts::{AlertConfig, AlertRules};
use crate::observability::metrics as m;
use crate::subjects::{
    BUCKET_COORD, BUCKET_REGISTRY, QUEUE_GROUP, SYS_COORD_LEADER, SYS_COORD_RULES,
};
use crate::system::health::checker::Checker;
use crate::system::health::rules::RuleBook;

pub const NAME: &str = "coordinator";
const SOURCE: &str = "urn:switchyard:coordinator";
/// How long a leader's lease lasts without renewal: another instance takes over within
/// about this long after the leader dies.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(4);

/// The coordinator component.
pub struct CoordinatorComponent {
    lease: Duration,
    alerts: AlertConfig,
    leadership: watch::Sender<Option<u64>>,
}

impl CoordinatorComponent {
    pub fn new(lease: Duration) -> CoordinatorComponent {
        CoordinatorComponent {
            lease,
            alerts: AlertConfig {
                every: Duration::from_secs(5),
                ..AlertConfig::default()
            },
            leadership: watch::Sender::new(None),
        }
    }

    /// The alert rules file, webhook and evaluation interval (else from `configure`).
    pub fn with_alerts(mut self, alerts: AlertConfig) -> CoordinatorComponent {
        self.alerts = alerts;
        self
    }

    /// `Some(term)` while this instance leads; what leader-only work waits on.
    pub fn leadership(&self) -> watch::Receiver<Option<u64>> {
        self.leadership.subscribe()
    }
}

impl Default for CoordinatorComponent {
    fn default() -> Self {
        CoordinatorComponent::new(DEFAULT_LEASE)
    }
}

/// `events.sys.coordinator.<elected|stepped_down>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadershipChange {
    /// `elected` or `stepped_down`.
    pub change: String,
    pub instance: String,
    pub term: u64,
}

impl Event for LeadershipChange {
    fn ce_type(&self) -> &'static str {
        if self.change == "elected" {
            "io.switchyard.sys.coordinator.elected"
        } else {
            "io.switchyard.sys.coordinator.stepped_down"
        }
    }

    fn subject(&self) -> String {
        format!("events.sys.coordinator.{}", self.change)
    }
}

impl Component for CoordinatorComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn subscriptions(&self) -> Vec<Subscription> {
        vec![
            Subscription {
                subject: SYS_COORD_LEADER,
                queue_group: Some(QUEUE_GROUP),
                description: "who leads the coordinators now (the lease in KV coord)",
            },
            Subscription {
                subject: SYS_COORD_RULES,
                queue_group: Some(QUEUE_GROUP),
                description: "lists, validates and stores coordination rules",
            },
            Subscription {
                subject: crate::subjects::EVENTS,
                queue_group: None,
                description: "the leader applies the coordination rules to every event",
            },
        ]
    }

    fn configure(&mut self, config: &crate::config::Config) -> Result<(), Error> {
        self.lease = config.coordinator_lease;
        self.alerts = config.alerts.clone();
        Ok(())
    }

    fn start(&self, ctx: Context) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let kv = ctx
                .jetstream
                .get_key_value(BUCKET_COORD)
                .await
                .map_err(|e| Error::nats("open bucket coord", e))?;
            let leader = Endpoint {
                name: "leader",
                subject: SYS_COORD_LEADER.to_string(),
                queue_group: Some(QUEUE_GROUP),
                request_type: "io.switchyard.sys.coord.leader",
                source: SOURCE,
            };
            let reader = kv.clone();
            responder::serve(&ctx, NAME, leader, move |request: Request| {
                let kv = reader.clone();
                async move {
                    let entry = kv
                        .get(LEADER_KEY)
                        .await
                        .map_err(|e| Error::nats("read the coordinator lease", e))?;
                    let value: Option<LeaseValue> = entry
                        .and_then(|v| serde_json::from_slice::<LeaseValue>(&v).ok())
                        .filter(|v| !v.released);
                    match value {
                        Some(value) => Ok(Reply::to(&request, &value)),
                        None => Err(Error::unavailable("no coordinator leads right now")),
                    }
                }
            })
            .await?;
            let stop = ctx.shutdown().clone();
            let rule_set = rules::RuleSet::start(&ctx.client, stop.clone()).await?;
            rules_endpoint::serve(&ctx, kv.clone(), rule_set.clone()).await?;
            let registry = ctx
                .jetstream
                .get_key_value(BUCKET_REGISTRY)
                .await
                .map_err(|e| Error::nats("open bucket registry", e))?;
            let view = RegistryView::start(&ctx.client, stop.clone()).await?;
            let health_rules = RuleBook::start(&ctx.client, stop.clone()).await?;
            let checker = Checker::new(ctx.client.clone(), registry.clone(), view, health_rules);
            let events = ctx
                .client
                .subscribe("events.>")
                .await
                .map_err(|e| Error::nats("subscribe to events.>", e))?;
            let actions = actions::Actions {
                client: ctx.client.clone(),
                js: ctx.jetstream.clone(),
                registry,
                stop: stop.clone(),
            };
            ctx.spawn(leader::check_health(
                ctx.clone(),
                checker,
                self.leadership.subscribe(),
            ));
            ctx.spawn(leader::apply_rules(
                ctx.clone(),
                events,
                rule_set,
                actions,
                self.leadership.subscribe(),
            ));
            let alert_rules = AlertRules::start(&ctx, &kv, self.alerts.file_rules.clone()).await?;
            ctx.spawn(crate::observability::alerts::run(
                ctx.clone(),
                kv.clone(),
                alert_rules,
                self.alerts.clone(),
                self.leadership.subscribe(),
            ));
            let election = Election::new(kv, ctx.instance.id.clone(), self.lease);
            let leadership = self.leadership.clone();
            let run_ctx = ctx.clone();
            ctx.spawn(async move { campaign(run_ctx, election, leadership).await });
            Ok(())
        })
    }
}

/// Ticks the election until shutdown, then gives the lease back.
async fn campaign(ctx: Context, mut election: Election, leadership: watch::Sender<Option<u64>>) {
    let stop = ctx.shutdown().clone();
    let mut ticker = tokio::time::interval(election.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading: Option<u64> = None;
    m::coordinator_leader(false);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let now = match election.tick().await {
            Standing::Leader { term } => Some(term),
            Standing::Follower { .. } => None,
        };
        if now != leading {
            announce(&ctx, leading, now).await;
            leading = now;
            m::coordinator_leader(now.is_some());
            leadership.send_replace(now);
        }
    }
    if let Some(term) = leading {
        // Stop acting first, then give the lease back.
        leadership.send_replace(None);
        election.step_down().await;
        m::coordinator_leader(false);
        announce(&ctx, Some(term), None).await;
    }
}

async fn announce(ctx: &Context, before: Option<u64>, now: Option<u64>) {
    let (change, term) = match (before, now) {
        (_, Some(term)) => ("elected", term),
        (Some(term), None) => ("stepped_down", term),
        (None, None) => return,
    };
    let event = LeadershipChange {
        change: change.to_string(),
        instance: ctx.instance.id.clone(),
        term,
    };
    if let Err(err) = bus::publish(&ctx.jetstream, &ctx.client, SOURCE, &event, None).await {
        tracing::warn!(%err, change, term, "cannot publish a leadership change");
    }
}
