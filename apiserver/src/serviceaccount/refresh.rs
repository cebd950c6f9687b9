//! How often the keys other apiservers published are read from the store. A token naming a
//! key this apiserver does not know makes it read them (another apiserver on the same etcd
//! may have started since), but at most once per [`INTERVAL`] whatever the requests, so a
//! client sending tokens with made-up key ids (no credentials needed) cannot make the
//! apiserver read the store per request. Between two reads an unknown key is refused at once
//! (the usual 401); requests that arrive while a read runs wait for it and use what it found.
//! A key another apiserver publishes is accepted here at most [`INTERVAL`] after the first
//! token naming it (at once when no read ran within the interval).

use std::future::Future;
use std::time::{Duration, Instant};

/// At most one read of the published keys per this long.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// When the published keys were last read (or a read started).
#[derive(Debug, Default)]
pub struct KeyRefresh {
    /// Held while a read runs, so concurrent askers share it.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl KeyRefresh {
    /// Whether `known()` holds, after running `refresh` first if it does not and no refresh
    /// started within `interval` of `now()`.
    pub async fn ensure<F>(
        &self,
        now: impl Fn() -> Instant,
        interval: Duration,
        known: impl Fn() -> bool,
        refresh: impl FnOnce() -> F,
    ) -> bool
    where
        F: Future<Output = ()>,
    {
        let mut last = self.last.lock().await;
        // A read that ran while this request waited may have found the key.
        if known() {
            return true;
        }
        let now = now();
        if last.is_some_and(|t| now.saturating_duration_since(t) < interval) {
            return false;
        }
        // Counted from the start: a read that fails (store away) is not retried at once.
        *last = Some(now);
        refresh().await;
        known()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[tokio::test]
    async fn at_most_one_refresh_per_interval_whatever_the_requests() {
        let gate = KeyRefresh::default();
        let t0 = Instant::now();
        let clock = Mutex::new(t0);
        let now = || *clock.lock().unwrap();
        let reads = AtomicUsize::new(0);
        let refresh = || async {
            reads.fetch_add(1, Ordering::SeqCst);
        };
        let interval = Duration::from_secs(2);
        for _ in 0..100 {
            assert!(!gate.ensure(now, interval, || false, refresh).await);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read for 100 requests");
        *clock.lock().unwrap() = t0 + Duration::from_millis(1999);
        assert!(!gate.ensure(now, interval, || false, refresh).await);
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        *clock.lock().unwrap() = t0 + interval;
        assert!(!gate.ensure(now, interval, || false, refresh).await);
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "again once the interval is over"
        );
        // a known key never reads
        *clock.lock().unwrap() = t0 + 10 * interval;
        assert!(gate.ensure(now, interval, || true, refresh).await);
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refresh_that_finds_the_key_answers_every_request_waiting_for_it() {
        let gate = KeyRefresh::default();
        let published = AtomicBool::new(false);
        let reads = AtomicUsize::new(0);
        let refresh = || async {
            reads.fetch_add(1, Ordering::SeqCst);
            // others queue behind the running read meanwhile
            tokio::task::yield_now().await;
            published.store(true, Ordering::SeqCst);
        };
        let known = || published.load(Ordering::SeqCst);
        let asks = (0..10).map(|_| gate.ensure(Instant::now, INTERVAL, known, refresh));
        let answers = futures::future::join_all(asks).await;
        assert!(answers.iter().all(|a| *a), "{answers:?}");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }
}
