//! A list + watch of one resource's cache, for the apiserver's small in-memory indexes
//! (`crate::follow`: namespaces, quotas, RBAC), so they cost no store watch of their own:
//! first every object at one revision, then every later change of the resource in revision
//! order, read from the ring by position as watchers read it; a subscriber the ring has
//! left behind (or whose next event the cache dropped, see `ResourceCache::forget`) is
//! handed the whole resource again, and one whose cache stops following the store (relisting
//! after compaction) is told so, then handed the whole resource once the cache is back.

use std::sync::Arc;

use store::Revision;
use tokio::sync::watch;

use super::resource::Entry;
use super::{CacheEvent, ResourceCache};

/// Events taken from the ring at a time.
const BATCH: usize = 256;

/// What a subscriber must do next.
#[derive(Debug)]
pub enum Change {
    /// Replace everything with these (key, object): the resource at one revision. The first
    /// change, and the next one after falling behind the ring or after [`Change::Unready`].
    Reset(Vec<Entry>),
    /// The changes right after the last one handed out, oldest first (never empty).
    Events(Vec<Arc<CacheEvent>>),
    /// The cache stopped following the store (it is listing it again): what was handed
    /// out is not kept up to date until the next [`Change::Reset`].
    Unready,
}

/// One subscriber's position in one resource's cache.
#[derive(Debug)]
pub struct Subscription {
    rc: Arc<ResourceCache>,
    /// Only keys under this prefix are handed out.
    within: String,
    /// Every change up to here has been handed out; `None`: the next change is a reset.
    last: Option<Revision>,
    /// Whether the subscriber was handed a reset and no [`Change::Unready`] since.
    following: bool,
    changed: watch::Receiver<u64>,
}

impl Subscription {
    pub fn new(rc: Arc<ResourceCache>, within: String) -> Subscription {
        let changed = rc.subscribe();
        Subscription {
            rc,
            within,
            last: None,
            following: false,
            changed,
        }
    }

    /// The next change; waits for one.
    pub async fn next(&mut self) -> Change {
        loop {
            // Seen before reading: whatever is applied after this wakes the wait below.
            self.changed.borrow_and_update();
            if self.rc.is_ready() {
                if let Some(last) = self.last {
                    match self.rc.events_after(last, BATCH) {
                        Ok((events, complete)) => {
                            let cut_short = events.len() == BATCH;
                            self.last = Some(match events.last() {
                                Some(e) if cut_short => e.revision,
                                _ => complete,
                            });
                            let mine: Vec<Arc<CacheEvent>> = events
                                .into_iter()
                                .filter(|e| e.key.starts_with(&self.within))
                                .collect();
                            if !mine.is_empty() {
                                return Change::Events(mine);
                            }
                            if cut_short {
                                continue;
                            }
                        }
                        Err(_behind) => self.last = None,
                    }
                }
                if self.last.is_none() {
                    if let Some((items, revision)) = self.rc.entries(&self.within) {
                        self.last = Some(revision);
                        self.following = true;
                        return Change::Reset(items);
                    }
                }
            }
            if !self.rc.is_ready() && std::mem::take(&mut self.following) {
                self.last = None;
                return Change::Unready;
            }
            if self.changed.changed().await.is_err() {
                // The cache is gone (shutdown): nothing will ever change again.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use serde_json::{json, Value};
    use store::EventKind;

    use super::super::{Cached, Shared};
    use super::*;

    fn cache(capacity: usize) -> Arc<ResourceCache> {
        let shared = Arc::new(Shared::new());
        shared.ready.store(true, Ordering::Release);
        let rc = Arc::new(ResourceCache::new(Vec::new(), capacity, shared));
        rc.reset(BTreeMap::new(), 1);
        rc
    }

    fn put(rc: &ResourceCache, key: &str, rev: Revision) {
        let name = key.rsplit('/').next().unwrap_or(key);
        let v = serde_json::to_vec(&json!({"metadata": {"name": name}})).expect("json");
        let obj = Cached::decode(&v, rev, &[]).expect("decode");
        rc.apply(key.to_string(), rev, Some(Arc::new(obj)), None);
        rc.shared().revision.send_modify(|r| *r = (*r).max(rev));
        rc.notify();
    }

    fn delete(rc: &ResourceCache, key: &str, rev: Revision) {
        rc.apply(key.to_string(), rev, None, None);
        rc.shared().revision.send_modify(|r| *r = (*r).max(rev));
        rc.notify();
    }

    async fn next(sub: &mut Subscription) -> Change {
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a change within 5 s")
    }

    /// Nothing to hand out right now.
    async fn idle(sub: &mut Subscription) {
        let r = tokio::time::timeout(Duration::from_millis(50), sub.next()).await;
        assert!(r.is_err(), "expected no change, got {:?}", r.ok());
    }

    fn keys(change: &Change) -> Vec<String> {
        match change {
            Change::Reset(items) => items.iter().map(|(k, _)| k.clone()).collect(),
            Change::Events(evs) => evs
                .iter()
                .map(|e| {
                    let sign = if e.kind == EventKind::Put { "+" } else { "-" };
                    format!("{sign}{}", e.key)
                })
                .collect(),
            Change::Unready => vec!["unready".into()],
        }
    }

    #[tokio::test]
    async fn a_list_then_every_change_in_order_under_the_prefix_only() {
        let rc = cache(64);
        put(&rc, "/r/namespaces/a", 2);
        put(&rc, "/r/namespacesx/z", 3);
        let mut sub = Subscription::new(rc.clone(), "/r/namespaces/".into());
        assert_eq!(keys(&next(&mut sub).await), ["/r/namespaces/a"]);
        idle(&mut sub).await;
        put(&rc, "/r/namespaces/b", 4);
        put(&rc, "/r/namespacesx/y", 5);
        delete(&rc, "/r/namespaces/a", 6);
        assert_eq!(
            keys(&next(&mut sub).await),
            ["+/r/namespaces/b", "-/r/namespaces/a"]
        );
        idle(&mut sub).await;
        // a waiting subscriber wakes for the next change
        let rc2 = rc.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            put(&rc2, "/r/namespaces/c", 7);
        });
        let Change::Events(evs) = next(&mut sub).await else {
            panic!("events")
        };
        assert_eq!(evs[0].key, "/r/namespaces/c");
        let v: Value = evs[0].obj.value().expect("object");
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn more_changes_than_a_batch_arrive_in_order() {
        let rc = cache(4 * BATCH);
        let mut sub = Subscription::new(rc.clone(), "/r/pods/".into());
        assert!(keys(&next(&mut sub).await).is_empty());
        for i in 0..(BATCH + 10) as i64 {
            put(&rc, &format!("/r/pods/p{i:04}"), 2 + i);
        }
        let mut seen = Vec::new();
        while seen.len() < BATCH + 10 {
            let Change::Events(evs) = next(&mut sub).await else {
                panic!("events")
            };
            seen.extend(evs.iter().map(|e| e.revision));
        }
        let want: Vec<Revision> = (0..(BATCH + 10) as i64).map(|i| 2 + i).collect();
        assert_eq!(seen, want);
    }

    #[tokio::test]
    async fn falling_behind_the_ring_hands_out_the_whole_resource_again() {
        let rc = cache(2);
        let mut sub = Subscription::new(rc.clone(), "/r/pods/".into());
        assert!(keys(&next(&mut sub).await).is_empty());
        for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
            put(&rc, &format!("/r/pods/{n}"), 2 + i as i64);
        }
        delete(&rc, "/r/pods/b", 6);
        assert_eq!(
            keys(&next(&mut sub).await),
            ["/r/pods/a", "/r/pods/c", "/r/pods/d"]
        );
        put(&rc, "/r/pods/e", 7);
        assert_eq!(keys(&next(&mut sub).await), ["+/r/pods/e"]);
    }

    #[tokio::test]
    async fn a_relisting_cache_is_announced_then_listed_again() {
        let rc = cache(64);
        put(&rc, "/r/pods/a", 2);
        let mut sub = Subscription::new(rc.clone(), "/r/pods/".into());
        assert_eq!(keys(&next(&mut sub).await), ["/r/pods/a"]);
        // the feeder starts relisting
        rc.shared().ready.store(false, Ordering::Release);
        rc.notify();
        assert_eq!(keys(&next(&mut sub).await), ["unready"]);
        idle(&mut sub).await;
        // ... and loads the store's state at a later revision
        let v = serde_json::to_vec(&json!({"metadata": {"name": "b"}})).expect("json");
        let b = Arc::new(Cached::decode(&v, 9, &[]).expect("decode"));
        rc.reset(BTreeMap::from([("/r/pods/b".to_string(), b)]), 10);
        rc.shared().revision.send_modify(|r| *r = 10);
        rc.shared().ready.store(true, Ordering::Release);
        rc.notify();
        assert_eq!(keys(&next(&mut sub).await), ["/r/pods/b"]);
        put(&rc, "/r/pods/c", 11);
        assert_eq!(keys(&next(&mut sub).await), ["+/r/pods/c"]);
    }

    #[tokio::test]
    async fn a_subscriber_waits_for_the_first_list() {
        let shared = Arc::new(Shared::new());
        let rc = Arc::new(ResourceCache::new(Vec::new(), 8, shared));
        let mut sub = Subscription::new(rc.clone(), "/r/pods/".into());
        idle(&mut sub).await;
        let v = serde_json::to_vec(&json!({"metadata": {"name": "a"}})).expect("json");
        let a = Arc::new(Cached::decode(&v, 3, &[]).expect("decode"));
        rc.reset(BTreeMap::from([("/r/pods/a".to_string(), a)]), 3);
        rc.shared().ready.store(true, Ordering::Release);
        rc.notify();
        assert_eq!(keys(&next(&mut sub).await), ["/r/pods/a"]);
    }
}
