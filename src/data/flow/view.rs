//! The live, time-versioned view of bucket `flows` every instance keeps: it loads the
//! bucket's retained history into a [`Book`] and follows the bucket
//! ([`crate::nats::watch::follow`]: recreated from the last revision on failure or
//! reconnect), so a change applies without a restart.
//!
//! Routing is by the record's stored time, so a router must first know every change
//! stored up to that time: [`Rules::current_through`]. Its fast path is one atomic
//! compare. Its slow path reads the bucket's last revision (one JetStream API round
//! trip) and waits for the follower to apply it. One slow check runs at a time and
//! covers every caller that asked before it started, so however many records flow,
//! a process makes at most about one check per round trip.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::kv::{Entry, Operation};
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use time::OffsetDateTime;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use super::book::{Book, Change, Route};
use super::rule::Target;
use crate::data::record::Record;
use crate::error::Error;
use crate::nats::watch as kv_watch;
use crate::observability::metrics as m;
use crate::subjects::BUCKET_FLOWS;

/// How long [`Rules::start`] waits for the bucket's history.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Rules::current_through`] waits for the follower to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// The flow rules as they were at any time the book keeps; cheap to clone.
#[derive(Clone)]
pub struct Rules {
    inner: Arc<Inner>,
}

struct Inner {
    book: RwLock<Book>,
    /// Last KV revision the follower processed (applied or refused).
    applied: watch::Sender<u64>,
    /// Bumped (to the revision) whenever the rule set changes.
    changes: watch::Sender<u64>,
    /// Unix nanoseconds up to which every change of the bucket is known to be applied.
    proven: AtomicI64,
    /// The latest time any caller asked for.
    wanted: AtomicI64,
    check: Mutex<()>,
    stream: Stream,
    /// The flow component's view records the rule metrics; others (data sync) do not,
    /// so a process counts each refusal once.
    metrics: bool,
}

impl Rules {
    /// Loads the retained history of bucket `flows` (returns once it is applied), then
    /// follows the bucket until `stop`.
    pub async fn start(client: &Client, stop: CancellationToken) -> Result<Rules, Error> {
        Rules::start_with(client, stop, false).await
    }

    /// [`Rules::start`], recording `switchyard_flow_rules` and
    /// `switchyard_flow_rules_rejected_total` when `metrics` is set.
    pub(crate) async fn start_with(
        client: &Client,
        stop: CancellationToken,
        metrics: bool,
    ) -> Result<Rules, Error> {
        let js = async_nats::jetstream::new(client.clone());
        let kv = js
            .get_key_value(BUCKET_FLOWS)
            .await
            .map_err(|e| Error::nats("open bucket flows", e))?;
        let rules = Rules {
            inner: Arc::new(Inner {
                book: RwLock::new(Book::new()),
                applied: watch::Sender::new(0),
                changes: watch::Sender::new(0),
                proven: AtomicI64::new(i64::MIN),
                wanted: AtomicI64::new(i64::MIN),
                check: Mutex::new(()),
                stream: kv.stream.clone(),
                metrics,
            }),
        };
        let loaded = rules.last_revision().await?;
        let follower = rules.clone();
        // From revision 1: the whole retained history, then live changes.
        tokio::spawn(kv_watch::follow(
            kv,
            client.clone(),
            0,
            stop,
            move |entry| follower.apply(&entry, entry.revision > loaded),
        ));
        rules.caught_up(loaded, LOAD_TIMEOUT).await.map_err(|_| {
            Error::unavailable(format!(
                "the history of bucket flows (through revision {loaded}) did not load \
                     within {LOAD_TIMEOUT:?}"
            ))
        })?;
        rules.record_gauge();
        Ok(rules)
    }

    /// Routes `record` by the rules in force when stream DATA stored it. Call
    /// [`Rules::current_through`] first. Err: the record is malformed (invalid input or
    /// unsupported media type, the message says why).
    pub fn route(&self, record: &Record) -> Result<Route, Error> {
        let rules = match self.inner.book.read() {
            Ok(book) => book.at(record.stored),
            Err(_) => return Err(Error::internal("flow rules lock poisoned")),
        };
        rules.route(record)
    }

    /// Returns once the view holds every change of bucket `flows` stored at or before
    /// `stored`; Err (unavailable) when the follower does not catch up within 2 s.
    pub async fn current_through(&self, stored: OffsetDateTime) -> Result<(), Error> {
        let want = nanos(stored);
        let inner = &self.inner;
        if want <= inner.proven.load(Ordering::Acquire) {
            return Ok(());
        }
        inner.wanted.fetch_max(want, Ordering::AcqRel);
        let _one_check = inner.check.lock().await;
        if want <= inner.proven.load(Ordering::Acquire) {
            return Ok(());
        }
        // Every caller that registered by now holds a record stored before the request
        // below reaches the server, so any change not in `last` was stored after it.
        let covered = inner.wanted.load(Ordering::Acquire);
        let last = self.last_revision().await?;
        self.caught_up(last, CATCH_UP_TIMEOUT).await.map_err(|_| {
            Error::unavailable(format!(
                "flow rules: the follower of bucket flows did not reach revision {last} \
                 within {CATCH_UP_TIMEOUT:?}"
            ))
        })?;
        inner.proven.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }

    /// Every target of an enabled rule in any kept version of the rule set, with the
    /// earliest version's time (where a new consumer for it starts). A name reused for
    /// another destination after its rule was removed appears once per destination.
    pub fn targets(&self) -> Vec<(Target, OffsetDateTime)> {
        self.inner
            .book
            .read()
            .map(|book| book.targets())
            .unwrap_or_default()
    }

    /// Bumps on every change of the rule set.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Rules in force now (enabled).
    pub fn in_force(&self) -> usize {
        self.inner
            .book
            .read()
            .map(|book| book.in_force())
            .unwrap_or_default()
    }

    /// The position of the newest message in the bucket's stream (0 when empty). The
    /// newest existing message rather than the stream's last sequence: that one may
    /// have been removed, and the follower would wait for it in vain.
    async fn last_revision(&self) -> Result<u64, Error> {
        let prefix = format!("$KV.{BUCKET_FLOWS}.>");
        match self
            .inner
            .stream
            .get_last_raw_message_by_subject(&prefix)
            .await
        {
            Ok(message) => Ok(message.sequence),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(err) => Err(Error::nats("read the last revision of bucket flows", err)),
        }
    }

    async fn caught_up(&self, revision: u64, timeout: Duration) -> Result<(), ()> {
        let mut applied = self.inner.applied.subscribe();
        match tokio::time::timeout(timeout, applied.wait_for(|r| *r >= revision)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(()),
        }
    }

    fn apply(&self, entry: &Entry, live: bool) {
        let change = match self.inner.book.write() {
            Ok(mut book) => match entry.operation {
                Operation::Put => book.put(&entry.key, entry.revision, entry.created, &entry.value),
                Operation::Delete | Operation::Purge => {
                    book.remove(&entry.key, entry.revision, entry.created)
                }
            },
            Err(_) => Change::Rejected(Error::internal("flow rules lock poisoned")),
        };
        match change {
            Change::Applied => {
                tracing::info!(rule = %entry.key, revision = entry.revision, operation = ?entry.operation, "flow rule applied");
                self.inner.changes.send_replace(entry.revision);
                self.record_gauge();
            }
            Change::Unchanged => {}
            Change::Rejected(err) => {
                tracing::warn!(rule = %entry.key, revision = entry.revision, %err, "ignoring an invalid flow rule; the previous version of this key stays in force");
                if live && self.inner.metrics {
                    metrics::counter!(m::FLOW_RULES_REJECTED_TOTAL).increment(1);
                }
            }
        }
        self.inner
            .applied
            .send_modify(|r| *r = (*r).max(entry.revision));
    }

    fn record_gauge(&self) {
        if self.inner.metrics {
            metrics::gauge!(m::FLOW_RULES).set(self.in_force() as f64);
        }
    }
}

/// Unix nanoseconds, saturated to i64 (good until 2262).
fn nanos(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos()).unwrap_or(if at.year() < 1970 {
        i64::MIN
    } else {
        i64::MAX
    })
}
