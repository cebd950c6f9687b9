//! The collector's work queue, upstream's rate-limited workqueue: an item is queued once
//! however often it is added; an item handed to a worker is not handed out again until the
//! worker is done with it, and one added meanwhile is handed out after that (so two
//! workers never hold the same uid at once, and a change seen during a run is not lost);
//! a failed item comes back after a doubling delay.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::graph::Work;

#[derive(Default)]
pub struct Queue {
    ready: VecDeque<Work>,
    /// Added and not handed out since (upstream's dirty set): waiting in `ready`, or for
    /// its current run to end.
    dirty: HashSet<Work>,
    /// Handed to a worker and not done yet.
    processing: HashSet<Work>,
    delayed: BTreeMap<(Instant, u64), Work>,
    failures: HashMap<Work, u32>,
    seq: u64,
}

impl Queue {
    pub fn add(&mut self, w: Work) {
        if !self.dirty.insert(w.clone()) {
            return;
        }
        // one being processed goes out again when its worker is done
        if !self.processing.contains(&w) {
            self.ready.push_back(w);
        }
    }

    /// The next item for a worker, which must hand it back with [`Queue::done`].
    pub fn pop(&mut self) -> Option<Work> {
        let w = self.ready.pop_front()?;
        self.dirty.remove(&w);
        self.processing.insert(w.clone());
        Some(w)
    }

    /// A worker has finished `w`: if it was added meanwhile, it is ready again.
    pub fn done(&mut self, w: &Work) {
        if self.processing.remove(w) && self.dirty.contains(w) {
            self.ready.push_back(w.clone());
        }
    }

    /// How many items workers hold.
    pub fn processing(&self) -> usize {
        self.processing.len()
    }

    /// `w` succeeded: its next failure starts the delays over.
    pub fn forget(&mut self, w: &Work) {
        self.failures.remove(w);
    }

    /// `w` failed: add it again after 50 ms, doubling with each failure up to 5 min
    /// (upstream: 5 ms doubling up to 1000 s).
    pub fn retry(&mut self, w: Work, now: Instant) {
        let n = self.failures.entry(w.clone()).or_insert(0);
        *n += 1;
        let delay = Duration::from_millis(50)
            .saturating_mul(1 << (*n - 1).min(13))
            .min(Duration::from_secs(300));
        self.seq += 1;
        self.delayed.insert((now + delay, self.seq), w);
    }

    /// Add `w` now, forgetting its failures.
    pub fn retry_now(&mut self, w: Work) {
        self.failures.remove(&w);
        self.add(w);
    }

    /// Add the delayed items that are due.
    pub fn promote(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let w = entry.remove();
            self.add(w);
        }
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.delayed.keys().next().map(|(t, _)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delete(uid: &str) -> Work {
        Work::Delete(uid.into())
    }

    #[test]
    fn an_item_is_never_handed_out_twice_at_once_and_a_re_add_runs_after() {
        let mut q = Queue::default();
        q.add(delete("a"));
        q.add(delete("b"));
        q.add(delete("a"));
        assert_eq!(q.pop(), Some(delete("a")));
        // added again while a worker holds it: not handed to a second worker...
        q.add(delete("a"));
        q.add(delete("a"));
        assert_eq!(q.pop(), Some(delete("b")));
        assert_eq!(q.pop(), None);
        assert_eq!(q.processing(), 2);
        // ... but once, after the first run
        q.done(&delete("a"));
        assert_eq!(q.pop(), Some(delete("a")));
        assert_eq!(q.pop(), None);
        q.done(&delete("a"));
        q.done(&delete("b"));
        assert_eq!(q.pop(), None);
        assert_eq!(q.processing(), 0);
    }

    #[test]
    fn a_failed_item_comes_back_after_a_growing_delay_and_not_while_held() {
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.add(delete("a"));
        let a = q.pop().expect("a");
        q.retry(a.clone(), t0);
        q.done(&a);
        q.promote(t0 + Duration::from_millis(49));
        assert_eq!(q.pop(), None);
        q.promote(t0 + Duration::from_millis(50));
        let a = q.pop().expect("due after 50 ms");
        q.retry(a.clone(), t0);
        assert_eq!(q.next_due(), Some(t0 + Duration::from_millis(100)));
        // due while still held: handed out only once the worker is done
        q.promote(t0 + Duration::from_millis(100));
        assert_eq!(q.pop(), None);
        q.done(&a);
        assert_eq!(q.pop(), Some(delete("a")));
        // success resets the delay
        q.forget(&a);
        q.retry(a.clone(), t0);
        assert_eq!(q.next_due(), Some(t0 + Duration::from_millis(50)));
    }
}
