//! The durable consumer of one target: `sync-<target>` on stream `DATA`, filter
//! `data.in.>`, explicit acks, pinned to one puller at a time (priority group `sync`),
//! so records of one key are never delivered by two instances at once.
//!
//! A new consumer starts at the time its target first appeared in the flow rules
//! (`DeliverPolicy::ByStartTime`): records stored before then were not routed to it.
//! An existing one keeps its position; only the settings the policy manages are
//! updated.

use async_nats::jetstream::Context as JetStream;
use async_nats::jetstream::consumer::{
    AckPolicy, DeliverPolicy, PriorityPolicy, PullConsumer, pull,
};
use time::OffsetDateTime;

use super::policy::SyncPolicy;
use crate::error::Error;
use crate::subjects::{STREAM_DATA, sync_consumer};

/// The priority group every sync worker pulls in.
pub const GROUP: &str = "sync";
/// Records delivered and not yet acked, per target: held records of a blocked key
/// count too, so this is far above any keys-in-flight limit.
const MAX_ACK_PENDING: i64 = 10_000;

pub fn config(
    target: &str,
    since: OffsetDateTime,
    policy: &SyncPolicy,
) -> Result<pull::Config, Error> {
    let name = sync_consumer(target)?;
    Ok(pull::Config {
        durable_name: Some(name.clone()),
        name: Some(name),
        description: Some(format!("Switchyard data sync to target {target}")),
        filter_subject: "data.in.>".to_string(),
        deliver_policy: DeliverPolicy::ByStartTime { start_time: since },
        ack_policy: AckPolicy::Explicit,
        ack_wait: policy.ack_wait,
        max_deliver: policy.max_deliver,
        max_ack_pending: MAX_ACK_PENDING,
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec![GROUP.to_string()],
        priority_timeout: policy.pin_timeout,
        ..Default::default()
    })
}

/// Creates the consumer, or brings an existing one's managed settings in line with
/// `policy`. Returns it ready to pull.
pub async fn ensure(
    js: &JetStream,
    target: &str,
    since: OffsetDateTime,
    policy: &SyncPolicy,
) -> Result<PullConsumer, Error> {
    let wanted = config(target, since, policy)?;
    let name = sync_consumer(target)?;
    let stream = js
        .get_stream(STREAM_DATA.name)
        .await
        .map_err(|e| Error::nats("open stream DATA", e))?;
    match stream.consumer_info(&name).await {
        Ok(info) => {
            let current = info.config.clone();
            let same = current.ack_wait == wanted.ack_wait
                && current.max_deliver == wanted.max_deliver
                && current.priority_timeout == wanted.priority_timeout
                && current.max_ack_pending == wanted.max_ack_pending;
            if !same {
                let update = pull::Config {
                    ack_wait: wanted.ack_wait,
                    max_deliver: wanted.max_deliver,
                    priority_timeout: wanted.priority_timeout,
                    max_ack_pending: wanted.max_ack_pending,
                    ..pull_config_of(&current)
                };
                stream
                    .update_consumer(update)
                    .await
                    .map_err(|e| Error::nats(&format!("update consumer {name}"), e))?;
                tracing::info!(target, "sync consumer updated to the target's policy");
            }
        }
        Err(_) => {
            stream
                .create_consumer(wanted)
                .await
                .map_err(|e| Error::nats(&format!("create consumer {name}"), e))?;
            tracing::info!(target, %since, "sync consumer created");
        }
    }
    stream
        .get_consumer(&name)
        .await
        .map_err(|e| Error::nats(&format!("open consumer {name}"), e))
}

/// The pull settings of an existing consumer, so an update keeps what it does not
/// manage (the start position above all).
fn pull_config_of(current: &async_nats::jetstream::consumer::Config) -> pull::Config {
    pull::Config {
        durable_name: current.durable_name.clone(),
        name: current.name.clone(),
        description: current.description.clone(),
        filter_subject: current.filter_subject.clone(),
        filter_subjects: current.filter_subjects.clone(),
        deliver_policy: current.deliver_policy,
        ack_policy: current.ack_policy,
        ack_wait: current.ack_wait,
        max_deliver: current.max_deliver,
        max_ack_pending: current.max_ack_pending,
        priority_policy: current.priority_policy.clone(),
        priority_groups: current.priority_groups.clone(),
        priority_timeout: current.priority_timeout,
        replay_policy: current.replay_policy,
        ..Default::default()
    }
}
