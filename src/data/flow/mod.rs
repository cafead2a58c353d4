//! The data flow: rules in KV bucket `flows` (one key per rule, JSON) that say which
//! targets a record of `data.in.…` goes to, applied live by every instance and by the
//! time stream DATA stored each record, so every instance and every later reading
//! routes a record the same way.
//!
//! - [`rule`]: the rule format, its checks, matching and keys; [`condition`]: field
//!   conditions (JSON pointer → value, `any_of`, `equals`).
//! - [`book`]: the versions of the rule set by time, and routing by one of them.
//! - [`view`]: [`Rules`], the live view every router (this component, data sync) asks.
//! - [`consume`]: the `flow` component's work: unrouted records to `data.unrouted`,
//!   malformed ones to stream DLQ.
//! - [`cli`]: `switchyard flows ls|get|put|rm`.
//!
//! Data sync does not get a copy of each record: each of its targets has its own
//! consumer on stream DATA and asks [`Rules::route`] whether a record goes there.

pub mod book;
pub mod cli;
pub mod condition;
pub mod consume;
pub mod rule;
pub mod view;

use std::sync::Arc;

use futures::future::BoxFuture;

pub use self::book::{Delivery, Route};
pub use self::rule::{Rule, RuleSpec, Target};
pub use self::view::Rules;
use crate::component::{Component, Context, Subscription};
use crate::error::Error;
use crate::subjects::DATA_IN;

pub const NAME: &str = consume::COMPONENT;

/// The `flow` component: durable consumer `flow` on stream DATA, shared by every
/// instance.
#[derive(Debug, Default)]
pub struct FlowComponent;

impl Component for FlowComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn subscriptions(&self) -> Vec<Subscription> {
        vec![Subscription {
            subject: DATA_IN,
            queue_group: None,
            description: "durable consumer `flow` on stream DATA, shared by every instance: \
                          unrouted records to data.unrouted, malformed ones to DLQ",
        }]
    }

    fn start(&self, ctx: Context) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let rules = Rules::start_with(&ctx.client, ctx.shutdown().clone(), true).await?;
            let messages = consume::consume(&ctx.jetstream).await?;
            let worker = Arc::new(consume::Worker::new(
                ctx.jetstream.clone(),
                rules,
                ctx.errors.clone(),
            ));
            ctx.spawn(worker.run(ctx.clone(), messages));
            Ok(())
        })
    }
}
