//! Recording the outcome of a task run ([`task_run`]) and settling its work item.
//!
//! The outcome is recorded with compare-and-set from the state known, then the work
//! item is settled. Only a failed compare-and-set reads the state. The first outcome
//! recorded wins: a worker finding the task already final discards its own.
//! Failures follow the taxonomy ([`ErrorKind::handling`]): a retried kind is nak'ed
//! with a jittered delay until the last delivery; anything else, or the last delivery
//! failing, is dead-lettered, recorded `failed` and terminated.
//!
//! Every state change is published on `tasks.events.<id>`.
//!
//! What this file touches: KV `tasks` (`completed`, `failed`, `working` with the
//! retried error, all by compare-and-set through [`Attempt::record`]),
//! `tasks.events.<id>`, stream `DLQ` (`dlq.tasks.work.<service>.<operation>`), the
//! error log (`errors.tasks`) and the work item's settlement (ack, nak, term). It runs
//! no handler and reads no state itself.
//!
//! [`ErrorKind::handling`]: crate::error::ErrorKind::handling
//! [`task_run`]: super::task_run

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{AckKind, Message};

use super::task_run::{Attempt, Worker};
use crate::envelope::to_display_json;
use crate::error::{Error, ErrorKind};
use crate::resilience::deadletter::{self, DeadLetter, Failure};
use crate::resilience::errorlog::Where;
use crate::resilience::tasks::NAME;
use crate::resilience::tasks::state::{Phase, TaskState, Transition, error_detail};
use crate::subjects::{STREAM_TASKS, headers as h};

/// First redelivery delay after a retried failure; doubles per delivery, jittered.
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Delay before a work item whose state could not be read or written comes back.
pub(super) const STORE_RETRY: Duration = Duration::from_secs(1);
/// Bytes of a task's state besides its result (ids, times, headers), at most.
const STATE_HEADROOM: usize = 2048;

/// Records the answer unless an outcome is already recorded, then acks.
pub(super) async fn complete(
    attempt: &Attempt<'_>,
    message: &Message,
    known: (TaskState, u64),
    result: serde_json::Value,
) {
    let recorded = attempt
        .record(known, |state| TaskState {
            result: Some(result.clone()),
            error: None,
            ..attempt.next(state, Phase::Completed)
        })
        .await;
    finish(attempt, message, recorded, AckKind::Ack).await;
}

/// The handler's answer as the JSON the state keeps (it is in the caller's codec). An
/// answer the state cannot hold (over `max_payload` with room for the rest) fails the
/// task for good: running it again would give the same answer.
pub(super) fn result_json(worker: &Worker, answer: &[u8]) -> Result<serde_json::Value, Error> {
    let display = to_display_json(answer);
    let room = worker
        .store
        .client()
        .max_payload()
        .saturating_sub(STATE_HEADROOM);
    if display.len() > room {
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the task's result of {} bytes does not fit in KV tasks (at most {room})",
                display.len()
            ),
        ));
    }
    Ok(serde_json::from_slice(&display)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(answer).into())))
}

/// A failed run: retried later, or dead-lettered and recorded `failed`.
pub(super) async fn fail(
    attempt: &Attempt<'_>,
    message: &Message,
    headers: &HeaderMap,
    known: (TaskState, u64),
    seq: u64,
    err: Error,
) {
    let worker = attempt.worker;
    report(worker, &working_where(message, headers), &err);
    let detail = error_detail(&err);
    let with_error = |phase| {
        let detail = detail.clone();
        move |state: &TaskState| TaskState {
            error: Some(detail.clone()),
            ..attempt.next(state, phase)
        }
    };
    let retried = err.kind().handling().retried;
    if retried && attempt.delivered < worker.settings.max_deliver {
        // Still working as far as callers are concerned, with the reason on record.
        let noted = attempt.record(known, with_error(Phase::Working)).await;
        if let Ok(Transition::Applied(state, _, json)) = noted {
            attempt.publish(&state, json).await;
        }
        settle(message, AckKind::Nak(Some(retry_delay(attempt.delivered)))).await;
        return;
    }
    // Stored before the state says failed, so a failed task always has its entry.
    if !give_up(worker, message, headers, attempt.delivered, seq, &err).await {
        settle(message, AckKind::Nak(Some(STORE_RETRY))).await;
        return;
    }
    let recorded = attempt.record(known, with_error(Phase::Failed)).await;
    finish(attempt, message, recorded, AckKind::Term).await;
}

/// Publishes the recorded outcome and settles with `done`; an outcome recorded first
/// by someone else (a cancel, another delivery) is left alone and the item acked.
async fn finish(
    attempt: &Attempt<'_>,
    message: &Message,
    recorded: Result<Transition, Error>,
    done: AckKind,
) {
    match recorded {
        Ok(Transition::Applied(state, _, json)) => {
            attempt.publish(&state, json).await;
            settle(message, done).await;
        }
        Ok(Transition::Declined(state)) => {
            tracing::debug!(task = %state.id, state = state.state.as_str(), "outcome already recorded; ours discarded");
            settle(message, AckKind::Ack).await;
        }
        // The state is gone: its submit failed after storing the work item (and
        // deleted the state), or it expired. Nothing to record it against.
        Err(err) if err.kind() == ErrorKind::NotFound => {
            tracing::warn!(%err, subject = %message.subject, "work item of an unknown task; dropped");
            settle(message, AckKind::Ack).await;
        }
        Err(err) => {
            report(attempt.worker, &Where::default(), &err);
            settle(message, AckKind::Nak(Some(STORE_RETRY))).await;
        }
    }
}

/// Dead-letters the work item; whether it is stored.
pub(super) async fn give_up(
    worker: &Worker,
    message: &Message,
    headers: &HeaderMap,
    delivered: i64,
    seq: u64,
    err: &Error,
) -> bool {
    // Without the revision: a replayed copy reads the state before it runs.
    let mut copy = HeaderMap::new();
    for (name, values) in headers.iter() {
        let text: &str = name.as_ref();
        if !text.eq_ignore_ascii_case(h::TASK_REVISION) {
            for value in values {
                copy.append(name.clone(), value.clone());
            }
        }
    }
    let headers = copy;
    let letter = DeadLetter {
        component: NAME,
        subject: message.subject.as_str(),
        headers: &headers,
        payload: message.payload.clone(),
        error: err,
        deliveries: delivered,
        origin: format!("{}:{seq}", STREAM_TASKS.name),
        target: None,
    };
    let failure = Failure {
        consumer: Some(&worker.consumer_name),
        first_failure: None,
    };
    match deadletter::publish_with(&worker.js, &letter, &failure).await {
        Ok(_) => true,
        Err(dlq_err) => {
            report(worker, &Where::default(), &dlq_err);
            false
        }
    }
}

pub(super) async fn settle(message: &Message, kind: AckKind) {
    if let Err(err) = message.ack_with(kind).await {
        tracing::warn!(%err, subject = %message.subject, "cannot settle a task; it will be redelivered");
    }
}

pub(super) fn report(worker: &Worker, at: &Where<'_>, err: &Error) {
    let at = Where {
        service: Some(&worker.service),
        ..at.clone()
    };
    worker.errors.report(NAME, err, at);
}

pub(super) fn working_where<'a>(message: &'a Message, headers: &'a HeaderMap) -> Where<'a> {
    Where {
        subject: Some(message.subject.as_str()),
        traceparent: headers.get(h::TRACEPARENT).map(|v| v.as_str()),
        ..Where::default()
    }
}

/// Delay before the next delivery after the `delivered`-th failed: doubling from
/// [`RETRY_BASE`] up to [`RETRY_MAX`], half fixed and half random so tasks that failed
/// together do not come back together.
fn retry_delay(delivered: i64) -> Duration {
    let doublings = delivered.clamp(1, 16) as u32 - 1;
    let base = RETRY_BASE.saturating_mul(1 << doublings).min(RETRY_MAX);
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
    base / 2 + base / 2 * jitter / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_jittered_and_bounded() {
        for delivered in 1..20 {
            let delay = retry_delay(delivered);
            let doublings = (delivered.clamp(1, 16) - 1) as u32;
            let base = RETRY_BASE.saturating_mul(1 << doublings).min(RETRY_MAX);
            assert!(delay >= base / 2 && delay <= base, "{delivered}: {delay:?}");
        }
    }
}
