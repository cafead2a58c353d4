//! Order per key across a takeover. When a worker starts on a consumer that still has
//! records delivered to someone else and not acked (the previous owner crashed), the
//! server hands it new records at once but those unacked ones only after their ack
//! wait. Delivering the new ones first would put a key's later records before its
//! earlier ones, so until every record pending at the start has come back (or the
//! wait is clearly over), every record that arrives is held, with in-progress acks,
//! and then released in stream order.
//! A graceful previous owner acks what it had, so the consumer's ack floor passing
//! the start position ends the wait as well.
//!
//! The price is a pause of at most one ack wait per target after a crash; a graceful
//! handover leaves nothing pending and costs nothing.

use std::time::Duration;

use async_nats::jetstream::consumer::Info;
use async_nats::jetstream::{AckKind, Message};
use tokio::time::Instant;

pub struct Recovery {
    /// Stream sequence of the last record delivered before this worker started.
    delivered_before: u64,
    /// Records delivered before the start and not acked, not yet seen again.
    remaining: usize,
    until: Instant,
    held: Vec<(u64, Message)>,
}

impl Recovery {
    /// `None` when nothing was pending at the start: nothing to wait for.
    pub fn at_start(info: &Info, ack_wait: Duration, pin_timeout: Duration) -> Option<Recovery> {
        (info.num_ack_pending > 0).then(|| Recovery {
            delivered_before: info.delivered.stream_sequence,
            remaining: info.num_ack_pending,
            // The pending records come back within an ack wait of their delivery, which
            // was before the pin moved to us; the margin covers a slow server.
            until: Instant::now() + ack_wait + pin_timeout + Duration::from_secs(1),
            held: Vec::new(),
        })
    }

    /// Holds a record that just arrived with stream sequence `seq` until recovery ends:
    /// the pending ones too, since the server redelivers records whose ack waits ran
    /// out together in no particular order.
    pub async fn hold(&mut self, message: Message, seq: u64) {
        if seq <= self.delivered_before {
            self.remaining = self.remaining.saturating_sub(1);
        }
        let _ = message.ack_with(AckKind::Progress).await;
        self.held.push((seq, message));
    }

    /// Whether every record pending at the start is settled: all came back to us, or
    /// the consumer's ack floor passed them (a previous owner stopping gracefully acks
    /// its own), or the wait is over.
    pub fn done(&self, ack_floor: Option<u64>) -> bool {
        self.remaining == 0
            || ack_floor.is_some_and(|floor| floor >= self.delivered_before)
            || Instant::now() > self.until
    }

    /// Keeps held records from being redelivered while recovery lasts.
    pub async fn keep_held(&self) {
        for (_, message) in &self.held {
            let _ = message.ack_with(AckKind::Progress).await;
        }
    }

    /// The held records, in stream order.
    pub fn release(mut self) -> Vec<Message> {
        if self.remaining > 0 {
            tracing::warn!(
                missing = self.remaining,
                "records pending at takeover did not all come back in time; releasing"
            );
        }
        self.held.sort_by_key(|(seq, _)| *seq);
        self.held.into_iter().map(|(_, message)| message).collect()
    }
}
