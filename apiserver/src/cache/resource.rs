//! One resource's cache: its objects by key, already serialized, and the ring of its recent
//! events.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use serde_json::{json, Map, Value};
use store::{EventKind, Revision};
use tokio::sync::watch;

use super::Shared;
use crate::status::ApiError;

/// An object as served: its JSON with `metadata.resourceVersion` set, and the few fields
/// selectors look at.
#[derive(Debug)]
pub struct Cached {
    pub json: Bytes,
    /// `metadata.name`, `.namespace`, `.labels` and the resource's selectable fields, in
    /// the object's own layout, so [`crate::selector::Filter`] runs on it unchanged.
    attrs: Value,
}

impl Cached {
    /// Parse a stored value and stamp `rev` as its `resourceVersion`.
    pub fn decode(value: &[u8], rev: Revision, fields: &[&str]) -> Result<Cached, String> {
        let mut v: Value = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        Ok(Self::from_value(&mut v, rev, fields))
    }

    fn from_value(v: &mut Value, rev: Revision, fields: &[&str]) -> Cached {
        crate::meta::metadata_mut(v).insert("resourceVersion".into(), json!(rev.to_string()));
        let json = Bytes::from(serde_json::to_vec(&*v).unwrap_or_default());
        Cached {
            json,
            attrs: attrs_of(v, fields),
        }
    }

    /// The same object at another revision (what a DELETED event carries).
    pub fn restamped(&self, rev: Revision, fields: &[&str]) -> Cached {
        match serde_json::from_slice::<Value>(&self.json) {
            Ok(mut v) => Self::from_value(&mut v, rev, fields),
            Err(_) => Cached {
                json: self.json.clone(),
                attrs: self.attrs.clone(),
            },
        }
    }

    pub fn attrs(&self) -> &Value {
        &self.attrs
    }

    /// The full object.
    pub fn value(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.json)
            .map_err(|e| ApiError::internal(format!("decoding a cached object: {e}")))
    }
}

fn attrs_of(v: &Value, fields: &[&str]) -> Value {
    let mut meta = Map::new();
    if let Some(m) = v.get("metadata") {
        for k in ["name", "namespace", "labels"] {
            if let Some(x) = m.get(k) {
                meta.insert(k.into(), x.clone());
            }
        }
    }
    let mut out = json!({ "metadata": meta });
    for path in fields {
        let mut src = v;
        let mut found = true;
        for part in path.split('.') {
            match src.get(part) {
                Some(x) => src = x,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if !found {
            continue;
        }
        let mut dst = &mut out;
        for part in path.split('.') {
            if !dst.get(part).is_some_and(Value::is_object) {
                dst[part] = json!({});
            }
            dst = &mut dst[part];
        }
        *dst = src.clone();
    }
    out
}

/// What a watcher is sent: one of upstream's watch event types.
pub const EVENT_TYPES: [&str; 3] = ["ADDED", "MODIFIED", "DELETED"];

/// An object with its key.
pub type Entry = (String, Arc<Cached>);

/// One change to one object of the resource.
#[derive(Debug)]
pub struct CacheEvent {
    pub revision: Revision,
    pub key: String,
    pub kind: EventKind,
    /// A put's new object, or a deleted object's last state stamped with the delete's
    /// revision (as upstream sends it).
    pub obj: Arc<Cached>,
    /// The object before the change (none for a create): filtered watchers turn updates into
    /// ADDED/DELETED by comparing the two.
    pub prev: Option<Arc<Cached>>,
    /// JSON watch lines per event type, built by the first watcher that needs one.
    lines: [OnceLock<Bytes>; 3],
}

impl CacheEvent {
    /// `{"type":<ty>,"object":<obj>}` and a newline: what a JSON watcher is sent.
    pub fn json_line(&self, ty: &str) -> Bytes {
        let i = EVENT_TYPES.iter().position(|t| *t == ty).unwrap_or(0);
        self.lines[i]
            .get_or_init(|| {
                let mut line = Vec::with_capacity(self.obj.json.len() + 40);
                line.extend_from_slice(b"{\"type\":\"");
                line.extend_from_slice(EVENT_TYPES[i].as_bytes());
                line.extend_from_slice(b"\",\"object\":");
                line.extend_from_slice(&self.obj.json);
                line.extend_from_slice(b"}\n");
                Bytes::from(line)
            })
            .clone()
    }
}

/// A watcher asked for events the ring no longer (or not yet) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind;

/// Objects read from the cache at one revision.
#[derive(Debug)]
pub struct Snapshot {
    pub items: Vec<Arc<Cached>>,
    pub revision: Revision,
    /// The key the next page starts at, when a limit cut this one short.
    pub next: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Arc<Cached>>,
    /// Every event of the resource after `ring_start`, oldest first.
    ring: VecDeque<Arc<CacheEvent>>,
    ring_start: Revision,
    /// The revision of the last change applied (or of the list the state was loaded from):
    /// the state is the resource's state at every revision from here to the store cache's.
    revision: Revision,
    /// Keys whose current value could not be decoded (e.g. encrypted with a key that is no
    /// longer configured): LISTs covering one go to the store, which answers with the error.
    broken: BTreeSet<String>,
    /// A cache that joined a running feeder and has no list yet: the feeder's changes wait
    /// here, in revision order, until [`ResourceCache::initialize`] replays those after the
    /// list's revision.
    pending: Option<Vec<Pending>>,
}

/// A change the feeder handed a cache that is still waiting for its first list.
#[derive(Debug)]
enum Pending {
    Apply {
        key: String,
        rev: Revision,
        obj: Option<Arc<Cached>>,
        deleted: Option<Arc<Cached>>,
    },
    Forget {
        key: String,
        rev: Revision,
    },
}

/// What a resource's cache did, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// LISTs answered from memory.
    pub lists: AtomicU64,
    /// Consistent LISTs (no `resourceVersion`), and those the store answered because the
    /// cache did not catch up in time.
    pub consistent_reads: AtomicU64,
    pub consistent_fallbacks: AtomicU64,
    pub events: AtomicU64,
    /// (Re)loads from a full list of the store.
    pub initializations: AtomicU64,
    /// Watch legs served from the ring, and from the store's own watch.
    pub ring_watches: AtomicU64,
    pub store_watches: AtomicU64,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The cache of one resource (one storage prefix).
#[derive(Debug)]
pub struct ResourceCache {
    pub counters: Counters,
    /// Events the ring keeps.
    capacity: usize,
    /// Selectable fields kept in [`Cached::attrs`].
    fields: Vec<&'static str>,
    shared: Arc<Shared>,
    /// False while a cache that joined a running feeder waits for its first list (the
    /// store's shared `ready` covers the others).
    ready: AtomicBool,
    /// Dropped from the feeder (its custom resource is no longer served): nothing reaches it
    /// any more, readers go to the store and its watchers end.
    stopped: AtomicBool,
    state: RwLock<State>,
    /// Bumped after new events are in the ring (or it was reset): wakes the watchers.
    changed: watch::Sender<u64>,
}

impl ResourceCache {
    pub(super) fn new(fields: Vec<&'static str>, capacity: usize, shared: Arc<Shared>) -> Self {
        ResourceCache {
            counters: Counters::default(),
            capacity: capacity.max(1),
            fields,
            shared,
            ready: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            state: RwLock::default(),
            changed: watch::Sender::new(0),
        }
    }

    /// A cache joining a running feeder: not ready, the feeder's changes kept aside until
    /// [`ResourceCache::initialize`].
    pub(super) fn joining(fields: Vec<&'static str>, capacity: usize, shared: Arc<Shared>) -> Self {
        let rc = ResourceCache::new(fields, capacity, shared);
        rc.ready.store(false, Ordering::Release);
        rc.write().pending = Some(Vec::new());
        rc
    }

    /// Whether readers may use the cache: its store's feeder follows the store, its first
    /// list is in, and it has not been dropped.
    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
            && self.ready.load(Ordering::Acquire)
            && !self.stopped.load(Ordering::Acquire)
    }

    /// Whether the cache was dropped (see [`super::WatchCache::serve_custom`]).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.notify();
    }

    /// Load a cache that joined a running feeder with a list of the store at `revision`,
    /// then replay the changes the feeder handed it after that revision: the feeder hands
    /// it every change it applies after the cache joined, and `revision` is the store's
    /// revision read after that, so nothing is lost, repeated or reordered. False when there
    /// was nothing to initialize (a relist of the whole store loaded it meanwhile).
    pub(super) fn initialize(
        &self,
        objects: BTreeMap<String, Arc<Cached>>,
        broken: BTreeSet<String>,
        revision: Revision,
    ) -> bool {
        {
            let mut st = self.write();
            let Some(pending) = st.pending.take() else {
                return false;
            };
            Counters::inc(&self.counters.initializations);
            st.objects = objects;
            st.broken = broken;
            st.ring.clear();
            st.ring_start = revision;
            st.revision = revision;
            for change in pending {
                match change {
                    Pending::Apply {
                        key,
                        rev,
                        obj,
                        deleted,
                    } => self.apply_locked(&mut st, key, rev, obj, deleted),
                    Pending::Forget { key, rev } if rev > revision => {
                        Self::forget_locked(&mut st, &key, rev)
                    }
                    Pending::Forget { .. } => {}
                }
            }
            self.ready.store(true, Ordering::Release);
        }
        self.notify();
        true
    }

    pub fn fields(&self) -> &[&'static str] {
        &self.fields
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Changes whenever the ring gets new events or is reset.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// How many objects the cache holds.
    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    /// The revision a read under `st`'s lock sees the resource at. The store cache's
    /// revision is raised only after the events up to it are applied, so the state holds
    /// every change up to it; it may hold one beyond (applied, not yet announced), which
    /// `st.revision` accounts for.
    fn snapshot_revision(&self, st: &State) -> Revision {
        self.shared.revision().max(st.revision)
    }

    /// Objects with keys under `within` (the resource's prefix or one namespace of it),
    /// from `start` on, that `keep` accepts; at most `limit`, then `next` is where the next
    /// page starts. With `at`, only if the resource has not changed since that revision
    /// (the answer is then the state at `at`). `None`: not ready, or changed since `at`.
    pub fn list(
        &self,
        within: &str,
        start: Option<&str>,
        at: Option<Revision>,
        limit: Option<usize>,
        keep: &mut dyn FnMut(&Cached) -> bool,
    ) -> Option<Snapshot> {
        if !self.is_ready() {
            return None;
        }
        let st = self.read();
        if st
            .broken
            .range::<str, _>((Bound::Included(within), Bound::Unbounded))
            .next()
            .is_some_and(|k| k.starts_with(within))
        {
            return None;
        }
        let now = self.snapshot_revision(&st);
        let revision = match at {
            Some(at) if st.revision <= at && at <= now => at,
            Some(_) => return None,
            None => now,
        };
        let from = match start {
            Some(s) if s > within => Bound::Included(s),
            _ => Bound::Included(within),
        };
        let mut items = Vec::new();
        let mut next = None;
        for (key, obj) in st.objects.range::<str, _>((from, Bound::Unbounded)) {
            if !key.starts_with(within) {
                break;
            }
            if !keep(obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                next = Some(key.clone());
                break;
            }
            items.push(obj.clone());
        }
        Some(Snapshot {
            items,
            revision,
            next,
        })
    }

    /// Every object under `within` with its key, and the revision the answer is the state
    /// at: the ring's events after that revision are the changes that follow it (what
    /// [`super::Subscription`] hands out). `None` while the cache is not ready.
    pub fn entries(&self, within: &str) -> Option<(Vec<Entry>, Revision)> {
        if !self.is_ready() {
            return None;
        }
        let st = self.read();
        let items = st
            .objects
            .range::<str, _>((Bound::Included(within), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(within))
            .map(|(key, obj)| (key.clone(), obj.clone()))
            .collect();
        Some((items, self.snapshot_revision(&st)))
    }

    /// Whether the ring holds every event after `last`.
    pub fn covers(&self, last: Revision) -> bool {
        self.is_ready() && self.read().ring_start <= last
    }

    /// Up to `max` events after `last`, oldest first, and the revision up to which the
    /// answer is complete (a watcher that has sent them may bookmark it).
    pub fn events_after(
        &self,
        last: Revision,
        max: usize,
    ) -> Result<(Vec<Arc<CacheEvent>>, Revision), Behind> {
        let st = self.read();
        if last < st.ring_start || st.pending.is_some() || self.is_stopped() {
            return Err(Behind);
        }
        let from = st.ring.partition_point(|e| e.revision <= last);
        let events: Vec<Arc<CacheEvent>> = st.ring.range(from..).take(max).cloned().collect();
        let complete = if from + events.len() < st.ring.len() {
            events.last().map_or(last, |e| e.revision)
        } else {
            self.snapshot_revision(&st)
        };
        Ok((events, complete))
    }

    /// Apply a put (`obj` stamped with `rev`) or, with `None`, a delete (`deleted`: the
    /// object's last state stamped with `rev`, when the store gave it).
    pub(super) fn apply(
        &self,
        key: String,
        rev: Revision,
        obj: Option<Arc<Cached>>,
        deleted: Option<Arc<Cached>>,
    ) {
        let mut st = self.write();
        if let Some(pending) = &mut st.pending {
            pending.push(Pending::Apply {
                key,
                rev,
                obj,
                deleted,
            });
            return;
        }
        self.apply_locked(&mut st, key, rev, obj, deleted);
    }

    fn apply_locked(
        &self,
        st: &mut State,
        key: String,
        rev: Revision,
        obj: Option<Arc<Cached>>,
        deleted: Option<Arc<Cached>>,
    ) {
        if rev <= st.revision {
            return;
        }
        Counters::inc(&self.counters.events);
        st.revision = rev;
        st.broken.remove(&key);
        let (kind, obj, prev) = match obj {
            Some(obj) => {
                let prev = st.objects.insert(key.clone(), obj.clone());
                (EventKind::Put, obj, prev)
            }
            None => {
                let Some(prev) = st.objects.remove(&key) else {
                    // Never cached (undecodable when written): nothing to tell anyone.
                    return;
                };
                let obj = deleted.unwrap_or_else(|| Arc::new(prev.restamped(rev, &self.fields)));
                (EventKind::Delete, obj, Some(prev))
            }
        };
        if st.ring.len() >= self.capacity {
            if let Some(old) = st.ring.pop_front() {
                st.ring_start = old.revision;
            }
        }
        st.ring.push_back(Arc::new(CacheEvent {
            revision: rev,
            key,
            kind,
            obj,
            prev,
            lines: Default::default(),
        }));
    }

    /// Forget a key without an event (its new value could not be decoded).
    pub(super) fn forget(&self, key: &str, rev: Revision) {
        let mut st = self.write();
        if let Some(pending) = &mut st.pending {
            pending.push(Pending::Forget {
                key: key.to_string(),
                rev,
            });
            return;
        }
        Self::forget_locked(&mut st, key, rev);
    }

    fn forget_locked(st: &mut State, key: &str, rev: Revision) {
        st.objects.remove(key);
        st.broken.insert(key.to_string());
        // Watchers reading the ring would never hear of this change: start the ring over.
        st.ring.clear();
        st.ring_start = rev;
        st.revision = st.revision.max(rev);
    }

    /// Replace everything with a fresh list at `revision`. Watchers behind it leave the ring.
    #[cfg(test)]
    pub(super) fn reset(&self, objects: BTreeMap<String, Arc<Cached>>, revision: Revision) {
        self.reset_with_broken(objects, BTreeSet::new(), revision)
    }

    /// [`ResourceCache::reset`], with the keys whose values could not be decoded.
    pub(super) fn reset_with_broken(
        &self,
        objects: BTreeMap<String, Arc<Cached>>,
        broken: BTreeSet<String>,
        revision: Revision,
    ) {
        Counters::inc(&self.counters.initializations);
        let mut st = self.write();
        st.objects = objects;
        st.broken = broken;
        st.ring.clear();
        st.ring_start = revision;
        st.revision = revision;
        // A joining cache listed with the whole store is as good as initialized.
        st.pending = None;
        self.ready.store(true, Ordering::Release);
    }

    pub(super) fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    const CAPACITY: usize = 64;

    fn cache() -> ResourceCache {
        let shared = Arc::new(Shared::new());
        shared.ready.store(true, Ordering::Release);
        ResourceCache::new(vec!["spec.nodeName"], CAPACITY, shared)
    }

    fn obj(name: &str, rev: Revision) -> Arc<Cached> {
        let v = json!({"metadata": {"name": name, "namespace": "ns", "labels": {"a": "b"}},
                       "spec": {"nodeName": "n1", "containers": []}});
        Arc::new(Cached::decode(&serde_json::to_vec(&v).unwrap(), rev, &["spec.nodeName"]).unwrap())
    }

    fn put(c: &ResourceCache, name: &str, rev: Revision) {
        c.apply(
            format!("/r/pods/ns/{name}"),
            rev,
            Some(obj(name, rev)),
            None,
        );
        c.shared.revision.send_replace(rev);
    }

    #[test]
    fn attrs_keep_what_selectors_read_and_json_carries_the_revision() {
        let o = obj("p", 7);
        assert_eq!(
            o.attrs(),
            &json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"a": "b"}},
                    "spec": {"nodeName": "n1"}})
        );
        assert_eq!(o.value().unwrap()["metadata"]["resourceVersion"], "7");
        let d = o.restamped(9, &["spec.nodeName"]);
        assert_eq!(d.value().unwrap()["metadata"]["resourceVersion"], "9");
    }

    #[test]
    fn events_after_a_revision_in_order_and_behind_once_evicted() {
        let c = cache();
        c.reset(BTreeMap::new(), 10);
        for i in 0..5 {
            put(&c, &format!("p{i}"), 11 + i);
        }
        let (evs, complete) = c.events_after(12, 100).unwrap();
        assert_eq!(
            evs.iter().map(|e| e.revision).collect::<Vec<_>>(),
            [13, 14, 15]
        );
        assert_eq!(complete, 15);
        let (evs, complete) = c.events_after(10, 2).unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(
            complete, 12,
            "a cut-short answer is complete only to its last event"
        );
        assert_eq!(c.events_after(9, 10).unwrap_err(), Behind);
        // 64 more evict p0..p4, which were all after 10: the ring still covers 15 ...
        for i in 0..CAPACITY as i64 {
            put(&c, &format!("q{i}"), 100 + i);
        }
        assert!(c.covers(15));
        // ... and one more evicts q0 (100): everything after 100 is there, 15 is not.
        put(&c, "q-last", 100 + CAPACITY as i64);
        assert_eq!(c.events_after(15, 10).unwrap_err(), Behind);
        assert!(!c.covers(15));
        assert!(c.covers(100));
    }

    #[test]
    fn deletes_carry_the_last_state_at_the_delete_revision() {
        let c = cache();
        c.reset(BTreeMap::new(), 1);
        put(&c, "a", 2);
        c.apply("/r/pods/ns/a".into(), 3, None, None);
        let (evs, _) = c.events_after(2, 10).unwrap();
        assert_eq!(evs[0].kind, EventKind::Delete);
        assert_eq!(
            evs[0].obj.value().unwrap()["metadata"]["resourceVersion"],
            "3"
        );
        assert_eq!(
            evs[0].prev.as_ref().unwrap().value().unwrap()["metadata"]["resourceVersion"],
            "2"
        );
        let line = evs[0].json_line("DELETED");
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "DELETED");
        assert_eq!(v["object"]["metadata"]["name"], "a");
    }

    #[test]
    fn a_joining_cache_replays_only_the_changes_after_its_list() {
        let shared = Arc::new(Shared::new());
        shared.ready.store(true, Ordering::Release);
        let c = ResourceCache::joining(vec![], CAPACITY, shared);
        // The feeder hands it changes before its list is in: kept aside, not readable.
        put(&c, "a", 5);
        put(&c, "b", 6);
        c.apply("/r/pods/ns/a".into(), 7, None, None);
        assert!(!c.is_ready());
        assert!(c
            .list("/r/pods/", None, None, None, &mut |_| true)
            .is_none());
        assert!(!c.covers(7));
        assert_eq!(c.events_after(7, 10).unwrap_err(), Behind);
        // The list was read at 6: it holds a and b; only the delete at 7 is replayed.
        let listed: BTreeMap<String, Arc<Cached>> = [("a", 5), ("b", 6)]
            .into_iter()
            .map(|(n, r)| (format!("/r/pods/ns/{n}"), obj(n, r)))
            .collect();
        assert!(c.initialize(listed, BTreeSet::new(), 6));
        assert!(c.is_ready());
        let (evs, _) = c.events_after(6, 10).unwrap();
        assert_eq!(
            evs.iter().map(|e| (e.revision, e.kind)).collect::<Vec<_>>(),
            [(7, EventKind::Delete)]
        );
        assert!(!c.covers(5), "nothing before the list is in the ring");
        let names: Vec<String> = c
            .list("/r/pods/", None, None, None, &mut |_| true)
            .unwrap()
            .items
            .iter()
            .map(|o| o.attrs()["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["b"]);
        // Later changes apply at once; a second initialization changes nothing.
        put(&c, "c", 8);
        assert!(!c.initialize(BTreeMap::new(), BTreeSet::new(), 8));
        assert_eq!(c.len(), 2);
        // Dropped: not readable, and watchers are told to leave.
        c.stop();
        assert!(!c.is_ready());
        assert_eq!(c.events_after(8, 10).unwrap_err(), Behind);
    }

    #[test]
    fn lists_pages_and_reads_at_an_unchanged_revision() {
        let c = cache();
        c.reset(BTreeMap::new(), 1);
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            put(&c, n, 2 + i as i64);
        }
        let all = c
            .list("/r/pods/ns/", None, None, Some(2), &mut |_| true)
            .unwrap();
        assert_eq!(all.items.len(), 2);
        assert_eq!(all.next.as_deref(), Some("/r/pods/ns/c"));
        assert_eq!(all.revision, 4);
        let rest = c
            .list(
                "/r/pods/ns/",
                all.next.as_deref(),
                Some(4),
                Some(2),
                &mut |_| true,
            )
            .unwrap();
        assert_eq!(rest.items.len(), 1);
        assert!(rest.next.is_none());
        assert!(
            c.list("/r/pods/", None, Some(3), None, &mut |_| true)
                .is_none(),
            "changed since 3"
        );
        assert!(c
            .list("/r/pods/other/", None, None, None, &mut |_| true)
            .unwrap()
            .items
            .is_empty());
    }
}
