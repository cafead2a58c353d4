//! What the coordinator does while it leads: run the health checks, publish each
//! change, and apply the coordination rules to every event on the bus.

use std::sync::Arc;

use async_nats::Message;
use futures::StreamExt;
use tokio::sync::watch;

use super::actions::Actions;
use super::rules::RuleSet;
use crate::component::Context;
use crate::envelope::Envelope;
use crate::integration::bus;
use crate::system::health::HealthChanged;
use crate::system::health::checker::Checker;

const SOURCE: &str = "urn:switchyard:coordinator";

/// Probes while leading; forgets its probe state whenever leadership is lost.
pub async fn check_health(
    ctx: Context,
    mut checker: Checker,
    mut leadership: watch::Receiver<Option<u64>>,
) {
    let stop = ctx.shutdown().clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            led = leadership.wait_for(Option::is_some) => if led.is_err() { return },
        }
        while leadership.borrow().is_some() && !stop.is_cancelled() {
            for change in checker.step().await {
                let event = HealthChanged {
                    service: change.entry.name.clone(),
                    instance: change.entry.instance.clone(),
                    from: change.transition.from,
                    to: change.transition.to,
                    reason: change.transition.reason.clone(),
                };
                tracing::info!(service = %event.service, instance = %event.instance, from = ?event.from, to = ?event.to, reason = %event.reason, "health changed");
                crate::observability::metrics::health_changed(event.to);
                if let Err(err) =
                    bus::publish(&ctx.jetstream, &ctx.client, SOURCE, &event, None).await
                {
                    tracing::warn!(%err, "cannot publish a health change");
                }
            }
        }
        checker.reset();
    }
}

/// Every coordinator receives every event (no queue group); only the leader acts.
pub async fn apply_rules(
    ctx: Context,
    mut events: async_nats::Subscriber,
    rules: RuleSet,
    actions: Actions,
    leadership: watch::Receiver<Option<u64>>,
) {
    let stop = ctx.shutdown().clone();
    let (rules, actions) = (Arc::new(rules), Arc::new(actions));
    loop {
        let message: Message = tokio::select! {
            _ = stop.cancelled() => return,
            next = events.next() => match next {
                Some(message) => message,
                None => return,
            },
        };
        if leadership.borrow().is_none() || message.subject.starts_with("events.sys.action.") {
            continue;
        }
        let Ok(event) =
            Envelope::<serde_json::Value>::from_message(&message, bus::subscribe::UNTYPED)
        else {
            continue;
        };
        let matching = rules.matching(&message.subject, &event.data);
        if matching.is_empty() {
            continue;
        }
        let (actions, subject) = (actions.clone(), message.subject.to_string());
        // Actions of one event run in order; events do not wait for each other.
        ctx.spawn(async move {
            for (name, rule) in matching {
                for action in &rule.actions {
                    actions
                        .run(&name, action, &subject, &event.data, &event.meta)
                        .await;
                }
            }
        });
    }
}
