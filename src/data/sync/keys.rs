//! The order-per-key schedule of one target, without I/O (so it is tested alone): a
//! record may start only when no earlier record of its key is in flight, any record
//! whose key is free may take a free slot, and a key whose delivery is to be retried
//! holds its later records until the awaited redelivery arrives (or its wait ends).
//!
//! Keys are scheduled one by one rather than hashed onto a fixed set of lanes: with
//! lanes, the lane that drew the most keys became the bottleneck of the whole target
//! (the backlog piled up behind it and its records waited hundreds of milliseconds
//! while other lanes idled).

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;

/// One key with something in flight, queued or held.
struct Key<T> {
    /// A record of this key is in flight.
    busy: bool,
    /// In the run queue.
    runnable: bool,
    /// The sequence awaited for redelivery, and until when it is awaited.
    waiting_for: Option<(u64, Instant)>,
    queue: VecDeque<T>,
}

impl<T> Default for Key<T> {
    fn default() -> Self {
        Key {
            busy: false,
            runnable: false,
            waiting_for: None,
            queue: VecDeque::new(),
        }
    }
}

impl<T> Key<T> {
    fn idle(&self) -> bool {
        !self.busy && self.waiting_for.is_none() && self.queue.is_empty()
    }

    /// Can start its next record (it has one, nothing in flight, no wait).
    fn can_run(&self) -> bool {
        !self.busy && self.waiting_for.is_none() && !self.queue.is_empty()
    }
}

/// Records by key: queued, held, and how many are in flight.
pub struct Schedule<T> {
    keys: HashMap<String, Key<T>>,
    /// Keys that can start their next record, oldest first.
    run_queue: VecDeque<String>,
    in_flight: usize,
    /// Records of keys that can run or are in flight (held ones not counted).
    ready: usize,
}

impl<T> Default for Schedule<T> {
    fn default() -> Self {
        Schedule {
            keys: HashMap::new(),
            run_queue: VecDeque::new(),
            in_flight: 0,
            ready: 0,
        }
    }
}

impl<T> Schedule<T> {
    /// Records queued and not held.
    pub fn ready(&self) -> usize {
        self.ready
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues `item` (stream sequence `seq`) behind its key. Returns it back, by
    /// reference, when it is held: its key awaits the redelivery of another record.
    /// The awaited redelivery itself goes before everything its key holds.
    pub fn push(&mut self, key: &str, seq: u64, item: T) -> Option<&T> {
        let entry = self.keys.entry(key.to_string()).or_default();
        match entry.waiting_for {
            Some((awaited, _)) if awaited == seq => {
                entry.waiting_for = None;
                entry.queue.push_front(item);
                self.ready += entry.queue.len();
            }
            Some(_) => {
                entry.queue.push_back(item);
                return entry.queue.back();
            }
            None => {
                entry.queue.push_back(item);
                self.ready += 1;
            }
        }
        if entry.can_run() && !entry.runnable {
            entry.runnable = true;
            self.run_queue.push_back(key.to_string());
        }
        None
    }

    /// The next record to start, while fewer than `max_in_flight` are in flight.
    pub fn next(&mut self, max_in_flight: usize) -> Option<T> {
        while self.in_flight < max_in_flight.max(1) {
            let name = self.run_queue.pop_front()?;
            let Some(key) = self.keys.get_mut(&name) else {
                continue;
            };
            key.runnable = false;
            if !key.can_run() {
                continue;
            }
            let item = key.queue.pop_front()?;
            key.busy = true;
            self.in_flight += 1;
            self.ready -= 1;
            return Some(item);
        }
        None
    }

    /// The record in flight for `key` is done; `retry`: it is to be redelivered, with
    /// this sequence, and its key waits for it until then.
    pub fn finished(&mut self, key: &str, retry: Option<(u64, Instant)>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(entry) = self.keys.get_mut(key) else {
            return;
        };
        entry.busy = false;
        entry.waiting_for = retry;
        if retry.is_some() {
            // What the key had queued is held from now on.
            self.ready -= entry.queue.len();
        } else if entry.can_run() && !entry.runnable {
            entry.runnable = true;
            self.run_queue.push_back(key.to_string());
        } else if entry.idle() {
            self.keys.remove(key);
        }
    }

    /// Ends the waits that passed their time (the redelivery did not come: the server
    /// still has the record and delivers it again later); returns their keys and
    /// sequences.
    pub fn release_expired(&mut self, now: Instant) -> Vec<(String, u64)> {
        let mut released = Vec::new();
        for (name, key) in &mut self.keys {
            let Some((seq, until)) = key.waiting_for else {
                continue;
            };
            if now <= until {
                continue;
            }
            key.waiting_for = None;
            self.ready += key.queue.len();
            if key.can_run() && !key.runnable {
                key.runnable = true;
                self.run_queue.push_back(name.clone());
            }
            released.push((name.clone(), seq));
        }
        self.keys.retain(|_, key| !key.idle());
        released
    }

    /// The records held for a redelivery.
    pub fn held(&self) -> impl Iterator<Item = &T> {
        self.keys
            .values()
            .filter(|key| key.waiting_for.is_some())
            .flat_map(|key| key.queue.iter())
    }

    /// Takes every record not in flight, held ones too, each key's in order.
    pub fn drain(&mut self) -> Vec<T> {
        self.run_queue.clear();
        self.ready = 0;
        let mut drained = Vec::new();
        for key in self.keys.values_mut() {
            key.runnable = false;
            key.waiting_for = None;
            drained.extend(key.queue.drain(..));
        }
        self.keys.retain(|_, key| !key.idle());
        drained
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn starts(schedule: &mut Schedule<u64>, max: usize) -> Vec<u64> {
        std::iter::from_fn(|| schedule.next(max)).collect()
    }

    #[test]
    fn one_record_per_key_at_a_time_and_keys_in_parallel() {
        let mut s = Schedule::default();
        for (key, seq) in [("a", 1), ("a", 2), ("b", 3), ("c", 4), ("a", 5)] {
            assert!(s.push(key, seq, seq).is_none());
        }
        assert_eq!(s.ready(), 5);
        // Two slots: a's first and b; c waits for a slot, a's later ones for a.
        assert_eq!(starts(&mut s, 2), vec![1, 3]);
        assert_eq!(starts(&mut s, 3), vec![4]);
        assert_eq!(s.in_flight(), 3);
        s.finished("b", None);
        assert_eq!(starts(&mut s, 3), Vec::<u64>::new());
        s.finished("a", None);
        assert_eq!(starts(&mut s, 3), vec![2]);
        s.finished("a", None);
        s.finished("c", None);
        assert_eq!(starts(&mut s, 3), vec![5]);
        s.finished("a", None);
        assert_eq!((s.ready(), s.in_flight(), s.keys.len()), (0, 0, 0));
    }

    #[test]
    fn a_retried_record_holds_its_key_until_it_comes_back() {
        let mut s = Schedule::default();
        let later = Instant::now() + Duration::from_secs(60);
        s.push("a", 1, 1);
        s.push("a", 2, 2);
        s.push("b", 3, 3);
        assert_eq!(starts(&mut s, 8), vec![1, 3]);
        s.finished("a", Some((1, later)));
        // 2 was queued and is held now; so is what comes for a meanwhile.
        assert_eq!(s.ready(), 0);
        assert_eq!(s.push("a", 4, 4), Some(&4));
        assert_eq!(s.held().copied().collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!(starts(&mut s, 8), Vec::<u64>::new());
        // The redelivery goes first, then the held ones in order.
        assert!(s.push("a", 1, 1).is_none());
        assert_eq!(s.ready(), 3);
        for want in [1, 2, 4] {
            assert_eq!(starts(&mut s, 8), vec![want]);
            s.finished("a", None);
        }
        s.finished("b", None);
        assert_eq!((s.ready(), s.in_flight(), s.keys.len()), (0, 0, 0));
    }

    #[test]
    fn a_wait_that_expires_releases_the_key_and_drain_takes_everything() {
        let mut s = Schedule::default();
        s.push("a", 1, 1);
        s.push("a", 2, 2);
        assert_eq!(starts(&mut s, 8), vec![1]);
        let soon = Instant::now();
        s.finished("a", Some((1, soon)));
        assert_eq!(s.release_expired(soon), vec![]);
        let released = s.release_expired(soon + Duration::from_millis(1));
        assert_eq!(released, vec![("a".to_string(), 1)]);
        assert_eq!(s.ready(), 1);
        s.push("b", 3, 3);
        s.push("b", 4, 4);
        assert_eq!(starts(&mut s, 1), vec![2]);
        let mut left = s.drain();
        left.sort();
        assert_eq!(left, vec![3, 4]);
        assert_eq!(s.ready(), 0);
        s.finished("a", None);
        assert_eq!((s.in_flight(), s.keys.len()), (0, 0));
    }
}
