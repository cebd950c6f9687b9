//! The watch cache (upstream's `k8s.io/apiserver` cacher): per resource, the current objects
//! in memory — already serialized, so a LIST copies bytes instead of encoding objects — plus
//! a bounded ring of recent events, fed by one store watch per store.
//!
//! One watch of the whole store, not one per resource: every revision the store hands out
//! then reaches the cache, so "the cache has caught up with revision C" is something the
//! cache can see even for a resource nobody writes (upstream asks etcd for progress
//! notifications instead; etcd 3.4 cannot be trusted with those). A consistent LIST
//! (`resourceVersion` unset) reads the store's current revision — one cheap header read —
//! waits until the cache has applied it, and answers from memory.
//!
//! Consistency, the parts that matter:
//! - The ring of a resource holds every event after `ring_start` for that resource, in
//!   revision order; a watcher reads it by position (`revision > last`), so fan-out loses,
//!   reorders or repeats nothing, and a slow watcher cannot make the cache buffer for it.
//! - A watcher the ring does not cover (resuming from before `ring_start`, or one that fell
//!   behind the ring) follows the store's own watch from where it is, and moves back onto the
//!   ring once it has caught up (`crate::watch`). Only history the store has compacted is
//!   410 Gone — the same answer from every apiserver on one etcd, whatever its cache holds.
//! - When the store watch breaks, the feeder resumes it after the last revision applied; only
//!   when that history is compacted does it relist, and then `ring_start` jumps to the new
//!   list's revision, so watchers behind it go to the store (and get 410 there).
//!
//! Every reader checks `ready` and falls back to the store while the cache is (re)listing.
//!
//! Custom resources get caches while their CRD is served ([`WatchCache::serve_custom`]): a
//! new cache joins its store's running feeder (which then hands it every change it applies,
//! kept aside while the cache is not ready), lists its prefix in the store, and replays the
//! changes after the list's revision before it turns ready; a cache whose CRD is gone is
//! dropped and its watchers end, as upstream's cacher stops with the CRD's storage.
//!
//! The apiserver's own small indexes (which namespaces exist, which hold quotas, the RBAC
//! policy) follow the cache too, through a [`Subscription`] (a list + watch of one
//! resource's cache), so each resource is watched in the store once, by the feeder.

mod feed;
mod resource;
mod subscription;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use store::{Revision, Storage, Store};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

pub use resource::{CacheEvent, Cached, Counters, ResourceCache};
pub use subscription::{Change, Subscription};

use crate::registry::{Registry, ResourceDef};

/// Events kept per resource unless `--default-watch-cache-size` says otherwise. A watcher
/// further behind follows the store until it catches up.
pub const DEFAULT_RING_CAPACITY: usize = 4096;

/// How long a consistent read waits for the cache to reach the store's revision before it
/// reads the store instead (upstream waits 3 s too).
pub const FRESH_TIMEOUT: Duration = Duration::from_secs(3);

/// What every resource cache of one store shares: how far the store's watch has been applied.
#[derive(Debug)]
pub struct Shared {
    /// Every event of the store up to this revision is applied to every resource cache.
    revision: watch::Sender<Revision>,
    /// False until the first list is in, and while relisting.
    ready: AtomicBool,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            revision: watch::Sender::new(0),
            ready: AtomicBool::new(false),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn revision(&self) -> Revision {
        *self.revision.borrow()
    }

    /// Wait until the cache is ready and has applied `rev`; false after `timeout`.
    pub async fn wait_for(&self, rev: Revision, timeout: Duration) -> bool {
        if !self.is_ready() {
            return false;
        }
        let mut rx = self.revision.subscribe();
        let caught_up = tokio::time::timeout(timeout, rx.wait_for(|r| *r >= rev)).await;
        matches!(caught_up, Ok(Ok(_))) && self.is_ready()
    }
}

/// The caches of one store.
#[derive(Debug)]
struct StoreCache {
    store: Arc<dyn Store>,
    /// `<prefix>/`: everything kaze stores in this store is under it.
    root: String,
    /// By storage name (`pods`, `services/specs`, `example.com/widgets`, ...). Only the
    /// feeder adds to it (see [`StoreCache::join`]).
    resources: RwLock<HashMap<&'static str, Arc<ResourceCache>>>,
    shared: Arc<Shared>,
    /// Asks the feeder to drop its watch and list again (tests force resyncs with it).
    relist: Notify,
    /// Caches waiting to join the feeder, and the feeder's wake-up for them.
    joins: Mutex<Vec<(&'static str, Arc<ResourceCache>)>>,
    joined: Notify,
}

impl StoreCache {
    fn resources(&self) -> HashMap<&'static str, Arc<ResourceCache>> {
        self.resources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ask the feeder to feed `rc` too. The feeder adds it between two batches (never
    /// during a relist, which loads only the caches it started with) and starts its list.
    fn join(&self, name: &'static str, rc: Arc<ResourceCache>) {
        self.joins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, rc));
        self.joined.notify_one();
    }

    /// Stop feeding `rc`.
    fn leave(&self, name: &'static str, rc: &Arc<ResourceCache>) {
        // Stopped before the map's lock: a join the feeder has not handled yet sees it.
        rc.stop();
        let mut resources = self.resources.write().unwrap_or_else(|e| e.into_inner());
        if resources.get(name).is_some_and(|r| Arc::ptr_eq(r, rc)) {
            resources.remove(name);
        }
    }
}

/// A storage name and the selectable fields its cache keeps.
type Names = (&'static str, Vec<&'static str>);

/// A custom resource's cache, the store cache feeding it and its storage name.
type CustomCache = (Arc<StoreCache>, &'static str, Arc<ResourceCache>);

/// Every resource's cache.
#[derive(Debug, Default)]
pub struct WatchCache {
    stores: Vec<Arc<StoreCache>>,
    /// By the (group, plural) of every built-in resource that has storage.
    by_resource: HashMap<(&'static str, &'static str), Arc<ResourceCache>>,
    /// By the (group, plural) of every served custom resource.
    custom: RwLock<HashMap<(&'static str, &'static str), CustomCache>>,
    /// Where custom resources are stored, and how many events their caches keep (none
    /// without caches).
    storage: Option<(Storage, usize)>,
}

impl WatchCache {
    /// A cache for every stored resource of `registry` keeping `capacity` events each (0: no
    /// cache at all, everything is read from the store); empty until [`WatchCache::start`].
    pub fn new(storage: &Storage, registry: &Registry, capacity: usize) -> WatchCache {
        if capacity == 0 {
            return WatchCache::default();
        }
        // First which resources share a store and a storage name (and which selectable
        // fields their caches must keep), then the caches.
        let mut stores: Vec<(Arc<dyn Store>, Vec<Names>)> = Vec::new();
        let mut placed = Vec::new();
        for def in registry.all().iter().filter(|d| d.review.is_none()) {
            let store = storage.store_for(crate::objects::storage_group(def), def.plural);
            let si = match stores.iter().position(|(s, _)| same_store(s, store)) {
                Some(i) => i,
                None => {
                    stores.push((store.clone(), Vec::new()));
                    stores.len() - 1
                }
            };
            let names = &mut stores[si].1;
            let ni = match names.iter().position(|(n, _)| *n == def.storage_name) {
                Some(i) => i,
                None => {
                    names.push((def.storage_name, Vec::new()));
                    names.len() - 1
                }
            };
            // Selectors of a version stored in another version's form run on the converted
            // object (see `crate::list`), so only native versions need their fields kept.
            if def.conversion.is_none() {
                names[ni].1.extend(def.selectable_fields.iter().copied());
            }
            placed.push(((def.group, def.plural), si, def.storage_name));
        }
        let stores: Vec<Arc<StoreCache>> = stores
            .into_iter()
            .map(|(store, names)| {
                let shared = Arc::new(Shared::new());
                let resources = names
                    .into_iter()
                    .map(|(name, fields)| {
                        (
                            name,
                            Arc::new(ResourceCache::new(fields, capacity, shared.clone())),
                        )
                    })
                    .collect();
                Arc::new(StoreCache {
                    relist: Notify::new(),
                    store,
                    root: format!("{}/", storage.prefix()),
                    resources: RwLock::new(resources),
                    shared,
                    joins: Mutex::default(),
                    joined: Notify::new(),
                })
            })
            .collect();
        let by_resource = placed
            .into_iter()
            .map(|(gr, si, name)| (gr, stores[si].resources()[name].clone()))
            .collect();
        WatchCache {
            stores,
            by_resource,
            custom: RwLock::default(),
            storage: Some((storage.clone(), capacity)),
        }
    }

    /// Cache exactly the custom resources among `defs` (what is served now): a resource
    /// newly served gets a cache joining its store's feeder (not ready until its first
    /// list is in, so readers use the store meanwhile); one no longer served loses it.
    /// One cache per (group, plural), whichever versions are served: every version is
    /// stored alike and converted on the way out.
    pub fn serve_custom<'a>(&self, defs: impl IntoIterator<Item = &'a Arc<ResourceDef>>) {
        let Some((storage, capacity)) = &self.storage else {
            return;
        };
        let served: HashMap<(&'static str, &'static str), &ResourceDef> = defs
            .into_iter()
            .filter(|d| d.custom.is_some() && d.review.is_none())
            .filter(|d| !self.by_resource.contains_key(&(d.group, d.plural)))
            .map(|d| ((d.group, d.plural), &**d))
            .collect();
        let mut custom = self.custom.write().unwrap_or_else(|e| e.into_inner());
        custom.retain(|gr, (sc, name, rc)| {
            let keep = served.contains_key(gr);
            if !keep {
                tracing::debug!(resource = %name, "watch cache: custom resource no longer served");
                sc.leave(name, rc);
            }
            keep
        });
        for (gr, def) in served {
            if custom.contains_key(&gr) {
                continue;
            }
            let store = storage.store_for(crate::objects::storage_group(def), def.plural);
            let Some(sc) = self.stores.iter().find(|s| same_store(&s.store, store)) else {
                continue;
            };
            tracing::debug!(
                resource = def.storage_name,
                "watch cache: custom resource joins"
            );
            let rc = Arc::new(ResourceCache::joining(
                Vec::new(),
                *capacity,
                sc.shared.clone(),
            ));
            sc.join(def.storage_name, rc.clone());
            custom.insert(gr, (sc.clone(), def.storage_name, rc));
        }
    }

    /// Whether every store's caches have their first list in (upstream's `informer-sync`
    /// readiness check); true without caches.
    pub fn is_ready(&self) -> bool {
        self.stores.iter().all(|s| s.shared.is_ready())
    }

    /// Start feeding every cache from its store; they stop with `shutdown`.
    pub fn start(&self, shutdown: &CancellationToken) {
        for sc in &self.stores {
            tokio::spawn(feed::run(sc.clone(), shutdown.clone()));
        }
    }

    /// Objects each cache holds, by storage name (`pods`, `minions`, `services/specs`,
    /// `<group>/<plural>` for custom resources), sorted.
    pub fn object_counts(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = self
            .stores
            .iter()
            .flat_map(|sc| sc.resources())
            .map(|(name, rc)| (name, rc.len() as u64))
            .collect();
        out.sort_unstable();
        out
    }

    /// The caches' figures in Prometheus' text format, under upstream's names where
    /// upstream has one, labelled as upstream's (`group`, `resource`: `names` turns a
    /// cache's storage name into them; labels sorted by name, as client_golang writes them).
    pub fn render_metrics(&self, names: &dyn Fn(&str) -> (String, String)) -> String {
        use std::fmt::Write;
        let mut rows: Vec<((String, String), Arc<ResourceCache>)> = Vec::new();
        for sc in &self.stores {
            rows.extend(sc.resources().into_iter().map(|(n, rc)| (names(n), rc)));
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        /// One sample: an extra label (name, value), if any, and the value.
        type Samples<'a> =
            &'a dyn Fn(&ResourceCache) -> Vec<(Option<(&'static str, &'static str)>, u64)>;
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Samples<'_>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((group, resource), rc) in &rows {
                for (extra, v) in samples(rc) {
                    let mut labels =
                        vec![("group", group.as_str()), ("resource", resource.as_str())];
                    labels.extend(extra);
                    labels.sort();
                    let labels: Vec<String> =
                        labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                    let _ = writeln!(out, "{name}{{{}}} {v}", labels.join(","));
                }
            }
        };
        family(
            "apiserver_cache_list_total",
            "counter",
            "LIST requests served from the watch cache.",
            &|rc| vec![(Some(("index", "")), get(&rc.counters.lists))],
        );
        family(
            "apiserver_watch_cache_consistent_read_total",
            "counter",
            "Consistent LISTs (no resourceVersion); fallback: the store answered because the cache did not catch up in time.",
            &|rc| {
                let fb = get(&rc.counters.consistent_fallbacks);
                let ok = get(&rc.counters.consistent_reads).saturating_sub(fb);
                vec![(Some(("fallback", "false")), ok), (Some(("fallback", "true")), fb)]
            },
        );
        family(
            "apiserver_watch_cache_events_received_total",
            "counter",
            "Events the watch cache applied.",
            &|rc| vec![(None, get(&rc.counters.events))],
        );
        family(
            "apiserver_watch_cache_initializations_total",
            "counter",
            "Times the watch cache was loaded from a full list of the store.",
            &|rc| vec![(None, get(&rc.counters.initializations))],
        );
        family(
            "apiserver_watch_cache_objects",
            "gauge",
            "Objects held by the watch cache.",
            &|rc| vec![(None, rc.len() as u64)],
        );
        family(
            "kaze_watch_cache_watches_total",
            "counter",
            "Watchers (or legs of one) served from the watch cache's ring or from the store's own watch.",
            &|rc| {
                vec![
                    (Some(("source", "cache")), get(&rc.counters.ring_watches)),
                    (Some(("source", "store")), get(&rc.counters.store_watches)),
                ]
            },
        );
        out
    }

    /// Make every feeder drop its store watch and list again, as after a compaction.
    pub fn force_relist(&self) {
        for sc in &self.stores {
            sc.relist.notify_one();
        }
    }

    /// The cache serving `def`, if it has storage (custom resources: while served).
    pub fn resource(&self, def: &ResourceDef) -> Option<Arc<ResourceCache>> {
        let gr = (def.group, def.plural);
        if let Some(rc) = self.by_resource.get(&gr) {
            return Some(rc.clone());
        }
        // Built-in resources without storage have no cache either.
        def.custom.as_ref()?;
        let custom = self.custom.read().unwrap_or_else(|e| e.into_inner());
        custom.get(&gr).map(|(_, _, rc)| rc.clone())
    }
}

fn same_store(a: &Arc<dyn Store>, b: &Arc<dyn Store>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}
