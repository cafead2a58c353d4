//! Leader election by a lease in KV bucket `coord`, key `leader`.
//!
//! - **Acquire**: create-if-absent. A deleted key (a leader that stepped down) counts
//!   as absent, so a graceful hand-over is immediate.
//! - **Renew**: the leader rewrites the key every `lease / 4` with compare-and-set on
//!   the revision it holds; a wrong revision means someone else took over, and the
//!   leader steps down at once.
//! - **Take over**: a follower remembers when it first saw the current revision (on its
//!   own monotonic clock, so no two clocks are compared). When that revision is
//!   unchanged for a whole lease, the leader is presumed dead and the follower takes the
//!   key with compare-and-set on that revision: of several followers one wins.
//! - **Safety**: a leader that cannot renew (server unreachable) stops acting `lease -
//!   margin` after the moment it *sent* its last successful renewal, which is before the
//!   server stored it, and a follower waits a full lease after it *saw* that revision,
//!   which is after. So two instances never act as leader at once, given clocks that
//!   run at the same rate.
//! - **Step down**: on a graceful stop the leader marks the lease released (compare-and-
//!   set on its own revision), so another instance leads within one poll instead of one
//!   lease. The value stays, so terms keep counting up.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{Operation, Store, UpdateErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};

/// The key of the lease in bucket `coord`.
pub const LEADER_KEY: &str = "leader";
/// What a leader keeps in reserve against a renewal that took long to arrive.
const MARGIN_SHARE: u32 = 5;

/// The lease's value: readable with `nats kv get coord leader`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    /// The instance holding the lease.
    pub instance: String,
    /// Counts leaderships: a new leader takes the previous term plus one.
    pub term: u64,
    pub lease_ms: u64,
    /// When this leadership began (RFC 3339), for people reading it.
    pub since: String,
    /// The leader stepped down: the lease is free, the term is the last one.
    #[serde(default)]
    pub released: bool,
}

/// One instance's side of the election.
pub struct Election {
    kv: Store,
    instance: String,
    lease: Duration,
    state: State,
    /// When the current leadership began, kept in the value across renewals.
    since: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The last revision of the key seen, and when it was first seen.
    Following { seen: Option<(u64, Instant)> },
    /// The revision this leader wrote last, and when that write was sent.
    Leading {
        revision: u64,
        term: u64,
        sent: Instant,
    },
}

/// What a [`Election::tick`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Leader { term: u64 },
    Follower { leader: Option<String> },
}

impl Election {
    pub fn new(kv: Store, instance: impl Into<String>, lease: Duration) -> Election {
        Election {
            kv,
            instance: instance.into(),
            lease,
            state: State::Following { seen: None },
            since: String::new(),
        }
    }

    /// How often [`Election::tick`] should run: renewals four times per lease, and
    /// followers notice a dead leader within a quarter of it.
    pub fn interval(&self) -> Duration {
        self.lease / 4
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.state, State::Leading { .. })
    }

    /// One step: renew (leader) or watch and maybe take over (follower).
    pub async fn tick(&mut self) -> Standing {
        match self.state {
            State::Leading {
                revision,
                term,
                sent,
            } => self.renew(revision, term, sent).await,
            State::Following { seen } => self.follow(seen).await,
        }
    }

    async fn renew(&mut self, revision: u64, term: u64, last_sent: Instant) -> Standing {
        let sent = Instant::now();
        let value = self.value(term);
        match self.kv.update(LEADER_KEY, value, revision).await {
            Ok(revision) => {
                self.state = State::Leading {
                    revision,
                    term,
                    sent,
                };
                Standing::Leader { term }
            }
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(term, "lost the coordinator lease to another instance");
                self.state = State::Following { seen: None };
                Standing::Follower { leader: None }
            }
            Err(err) => {
                // Unsure whether the write landed: keep leading only while the last
                // renewal known to have landed still covers us.
                let margin = self.lease / MARGIN_SHARE;
                if last_sent.elapsed() + margin >= self.lease {
                    tracing::warn!(%err, term, "cannot renew the coordinator lease; stepping down");
                    self.state = State::Following { seen: None };
                    Standing::Follower { leader: None }
                } else {
                    tracing::debug!(%err, "coordinator lease renewal failed; retrying");
                    Standing::Leader { term }
                }
            }
        }
    }

    async fn follow(&mut self, seen: Option<(u64, Instant)>) -> Standing {
        let entry = match self.kv.entry(LEADER_KEY).await {
            Ok(entry) => entry,
            Err(err) => {
                tracing::debug!(%err, "cannot read the coordinator lease");
                return Standing::Follower { leader: None };
            }
        };
        let live = entry
            .as_ref()
            .filter(|e| e.operation == Operation::Put)
            .map(|e| {
                (
                    e.revision,
                    serde_json::from_slice::<LeaseValue>(&e.value).ok(),
                )
            });
        match live {
            // Nobody ever held it, or it was deleted by hand: create it.
            None => self.acquire(None, 1).await,
            // Released by a leader that stepped down: take it at once.
            Some((revision, Some(value))) if value.released => {
                self.acquire(Some(revision), value.term + 1).await
            }
            Some((revision, value)) => {
                let term = value.as_ref().map_or(0, |v| v.term);
                let leader = value.map(|v| v.instance);
                match seen {
                    Some((seen_rev, since)) if seen_rev == revision => {
                        if since.elapsed() >= self.lease {
                            tracing::info!(
                                ?leader,
                                "the coordinator lease was not renewed; taking over"
                            );
                            self.acquire(Some(revision), term + 1).await
                        } else {
                            Standing::Follower { leader }
                        }
                    }
                    _ => {
                        self.state = State::Following {
                            seen: Some((revision, Instant::now())),
                        };
                        Standing::Follower { leader }
                    }
                }
            }
        }
    }

    /// Takes the key: create-if-absent, or compare-and-set on the stale revision.
    async fn acquire(&mut self, stale: Option<u64>, term: u64) -> Standing {
        let sent = Instant::now();
        self.since = crate::envelope::now_rfc3339();
        let value = self.value(term);
        let written = match stale {
            None => self.kv.create(LEADER_KEY, value).await.map_err(lost_race),
            Some(revision) => self
                .kv
                .update(LEADER_KEY, value, revision)
                .await
                .map_err(lost_race),
        };
        match written {
            Ok(revision) => {
                tracing::info!(term, instance = %self.instance, "leading the coordinators");
                self.state = State::Leading {
                    revision,
                    term,
                    sent,
                };
                Standing::Leader { term }
            }
            Err(err) => {
                // Another instance was quicker; watch it from now on.
                tracing::debug!(%err, "did not get the coordinator lease");
                self.state = State::Following { seen: None };
                Standing::Follower { leader: None }
            }
        }
    }

    /// On a graceful stop: give the lease back so another instance leads at once.
    pub async fn step_down(&mut self) {
        if let State::Leading { revision, term, .. } = self.state {
            self.state = State::Following { seen: None };
            let released = self.encode(LeaseValue {
                released: true,
                ..self.lease_value(term)
            });
            match self.kv.update(LEADER_KEY, released, revision).await {
                Ok(_) => tracing::info!(term, "stepped down as coordinator leader"),
                Err(err) => {
                    tracing::warn!(%err, term, "cannot give the coordinator lease back; it runs out by itself")
                }
            }
        }
    }

    fn value(&self, term: u64) -> bytes::Bytes {
        self.encode(self.lease_value(term))
    }

    fn lease_value(&self, term: u64) -> LeaseValue {
        LeaseValue {
            instance: self.instance.clone(),
            term,
            lease_ms: u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX),
            since: self.since.clone(),
            released: false,
        }
    }

    fn encode(&self, value: LeaseValue) -> bytes::Bytes {
        serde_json::to_vec(&value).unwrap_or_default().into()
    }
}

fn lost_race(err: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Transient, err.to_string())
}
