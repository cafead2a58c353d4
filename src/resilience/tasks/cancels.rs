//! Cancel notices on `tasks.canceled.<service>`: how a worker skips a task canceled
//! before it starts without reading every task's state first.
//!
//! A cancel is recorded in KV `tasks` first (that is the truth), then announced to
//! every instance of the service: the notice carries the task id and the revision of
//! the `canceled` state. A worker runs a task without reading its state only when it
//! would have heard of its cancel:
//!
//! - the task was submitted after the worker's notice subscription was live: its
//!   `submitted` revision (on the work item) is above the bucket's last revision
//!   when the subscription was confirmed, so any cancel of it came later and was
//!   announced to a live subscription (revisions order the writes, no clocks);
//! - the connection has not reconnected since (notices sent meanwhile are lost: the
//!   floor is raised to the bucket's last revision once the subscription is back);
//! - no notice for it was heard. Notices are kept [`KEEP`]; forgetting one raises the
//!   floor to its cancel's revision, above the task's own, so that task is read.
//!
//! Anything else is read before it runs, as a redelivery always is. A cancel that
//! lands while the notice is on its way (well under a millisecond) finds the task
//! started: its first tick or its outcome's compare-and-set sees `canceled`, drops
//! the handler or discards the result, as for any task canceled while running.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::state::TaskStore;
use crate::error::Error;
use crate::subjects::{self, headers as h};

/// How long a heard notice is kept; tasks waiting longer than this after their
/// cancel are read before they run.
const KEEP: Duration = Duration::from_secs(600);
/// How often notices are pruned and a reconnect is looked for.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What one worker has heard; shared by its task runs.
#[derive(Clone)]
pub struct CancelNotices {
    client: Client,
    heard: Arc<Mutex<Heard>>,
}

struct Heard {
    /// Tasks with a `submitted` revision at or below this are read before they run.
    floor: u64,
    /// Connects of the client when `floor` was last made safe.
    connects: u64,
    /// Task ids noticed canceled: the cancel's revision, and when it was heard.
    canceled: HashMap<String, (u64, Instant)>,
}

impl Heard {
    /// Forgets notices older than [`KEEP`], raising the floor above their tasks.
    fn prune(&mut self, now: Instant) {
        let floor = &mut self.floor;
        self.canceled.retain(|_, (revision, at)| {
            let keep = now.duration_since(*at) < KEEP;
            if !keep {
                *floor = (*floor).max(*revision);
            }
            keep
        });
    }
}

impl CancelNotices {
    /// Subscribes to `tasks.canceled.<service>` and keeps listening in `tracker` until
    /// `stop`.
    pub async fn listen(
        store: &TaskStore,
        service: &str,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<CancelNotices, Error> {
        let client = store.client().clone();
        let subject = subjects::tasks_canceled(service)?;
        let mut notices = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| Error::nats(&format!("subscribe {subject}"), e))?;
        let connects = connects(&client);
        let floor = live_floor(store).await?;
        let heard = Arc::new(Mutex::new(Heard {
            floor,
            connects,
            canceled: HashMap::new(),
        }));
        let listening = CancelNotices { client, heard };
        let (this, store) = (listening.clone(), store.clone());
        tracker.spawn(async move {
            let mut checks = tokio::time::interval(CHECK_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    notice = notices.next() => match notice {
                        Some(notice) => this.note(&notice),
                        None => break,
                    },
                    _ = checks.tick() => this.check(&store).await,
                }
            }
        });
        Ok(listening)
    }

    /// Whether task `id`, submitted at `revision`, may run without a read first.
    pub fn unheard(&self, id: &str, revision: u64) -> bool {
        let connects = connects(&self.client);
        match self.heard.lock() {
            Ok(heard) => {
                heard.connects == connects
                    && revision > heard.floor
                    && !heard.canceled.contains_key(id)
            }
            Err(_) => false,
        }
    }

    fn note(&self, notice: &async_nats::Message) {
        let Ok(id) = std::str::from_utf8(&notice.payload) else {
            return;
        };
        // Without a revision it could not be forgotten safely: keep it the longest.
        let revision = notice
            .headers
            .as_ref()
            .and_then(|h| h.get(h::TASK_REVISION))
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(u64::MAX);
        if let Ok(mut heard) = self.heard.lock() {
            heard
                .canceled
                .insert(id.to_string(), (revision, Instant::now()));
        }
    }

    /// Prunes old notices; after a reconnect, makes the floor safe again.
    async fn check(&self, store: &TaskStore) {
        let connects = connects(&self.client);
        let reconnected = match self.heard.lock() {
            Ok(mut heard) => {
                heard.prune(Instant::now());
                heard.connects != connects
            }
            Err(_) => false,
        };
        if !reconnected {
            return;
        }
        // Until this succeeds every task is read (`unheard` compares connects).
        match live_floor(store).await {
            Ok(floor) => {
                if let Ok(mut heard) = self.heard.lock() {
                    heard.floor = heard.floor.max(floor);
                    heard.connects = connects;
                }
            }
            Err(err) => tracing::debug!(%err, "cancel notices: floor not refreshed yet"),
        }
    }
}

fn connects(client: &Client) -> u64 {
    client.statistics().connects.load(Ordering::Relaxed)
}

/// The bucket's last revision once the subscription is confirmed live on the server
/// (a flush is answered after the subscription it follows): every write after it is
/// announced to this subscription.
async fn live_floor(store: &TaskStore) -> Result<u64, Error> {
    store
        .client()
        .flush()
        .await
        .map_err(|e| Error::nats("flush the cancel notice subscription", e))?;
    let info = store
        .kv
        .stream
        .get_info()
        .await
        .map_err(|e| Error::nats("read the last revision of KV tasks", e))?;
    Ok(info.state.last_sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_a_notice_raises_the_floor_above_its_task() {
        let now = Instant::now();
        let mut heard = Heard {
            floor: 10,
            connects: 1,
            canceled: HashMap::new(),
        };
        heard.canceled.insert("old".into(), (42, now));
        heard.canceled.insert("new".into(), (50, now + KEEP));
        heard.prune(now + KEEP);
        assert_eq!(heard.floor, 42);
        assert!(heard.canceled.contains_key("new"));
        assert!(!heard.canceled.contains_key("old"));
    }
}
