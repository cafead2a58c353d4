//! Keeping a write that is already outdated out of memory.
//!
//! A value enters memory after a round trip (a put's ack, a read-through's answer). If
//! another instance changed the key meanwhile, and the bucket watch already applied
//! that change, the eviction came too early and our older value would then stay. So the
//! watch marks every change here before it evicts, and whoever fills memory checks the
//! mark after inserting: either it sees the mark and takes its value out again, or the
//! watch's eviction comes after the insert and takes it out. Marks are kept per hash
//! slot, not per key: a collision only costs a needless miss, never a stale value, and
//! the memory is fixed (4096 slots, 32 KiB) whatever the number of keys.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

const SLOTS: usize = 4096;

pub(crate) struct Freshness {
    /// Highest revision of a change seen by the watch, per slot of key hashes.
    changed: Box<[AtomicU64]>,
    /// Every change up to this revision has been applied by the watch.
    applied: AtomicU64,
}

impl Freshness {
    pub fn new() -> Freshness {
        Freshness {
            changed: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            applied: AtomicU64::new(0),
        }
    }

    /// Taken before a round trip whose answer may fill memory: changes up to here are
    /// already in what the round trip sees.
    pub fn watermark(&self) -> u64 {
        self.applied.load(SeqCst)
    }

    /// The watch saw `revision` change `<namespace>.<key>`; called before evicting.
    pub fn changed(&self, namespace: &str, key: &str, revision: u64) {
        self.changed[slot(namespace, key)].fetch_max(revision, SeqCst);
    }

    /// The watch finished applying every change up to `revision`.
    pub fn applied(&self, revision: u64) {
        self.applied.fetch_max(revision, SeqCst);
    }

    /// Whether the watch saw a change of the key (or of one sharing its slot) newer
    /// than `revision`, the later of the filled value's revision and the watermark taken
    /// before its round trip. Called after inserting.
    pub fn superseded(&self, namespace: &str, key: &str, revision: u64) -> bool {
        self.changed[slot(namespace, key)].load(SeqCst) > revision
    }
}

fn slot(namespace: &str, key: &str) -> usize {
    // SipHash with fixed keys: the same slot in every call, cheap for short keys.
    let mut hasher = DefaultHasher::new();
    namespace.hash(&mut hasher);
    key.hash(&mut hasher);
    (hasher.finish() % SLOTS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_change_supersedes_an_older_fill_only() {
        let freshness = Freshness::new();
        assert_eq!(freshness.watermark(), 0);
        freshness.changed("ns", "k", 10);
        freshness.applied(10);
        assert!(freshness.superseded("ns", "k", 9));
        // Our own write, seen by the watch: not superseded.
        assert!(!freshness.superseded("ns", "k", 10));
        assert_eq!(freshness.watermark(), 10);
        // Marks only grow.
        freshness.changed("ns", "k", 3);
        assert!(freshness.superseded("ns", "k", 9));
        assert!(!freshness.superseded("ns", "other-key-entirely", 10));
    }
}
