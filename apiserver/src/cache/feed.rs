//! Feeding the caches of one store: list everything under the key prefix at one revision,
//! then follow one watch of the whole store from it. A broken watch is resumed after the last
//! revision applied (no gap, no repeat); only when that history is compacted away does the
//! feeder list again, resetting every ring to the new list's revision. Caches that join
//! later (custom resources) are added between two batches and list their own prefix.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use store::{Event, EventKind, KeyValue, ListOptions, Revision, StoreError};
use tokio_util::sync::CancellationToken;

use super::{Cached, ResourceCache, StoreCache};

/// Keys read per page when listing.
const LIST_PAGE: usize = 5000;
/// Events applied before watchers are woken and the revision announced.
const BATCH: usize = 512;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) async fn run(sc: Arc<StoreCache>, shutdown: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    let mut listed = false;
    loop {
        if !listed {
            sc.shared.ready.store(false, Ordering::Release);
            // Subscribers (`super::Subscription`) hear that the cache stopped following.
            for rc in sc.resources().values() {
                rc.notify();
            }
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = relist(&sc) => r,
            };
            match result {
                Ok(rev) => {
                    tracing::debug!(revision = rev, "watch cache listed the store");
                    listed = true;
                    backoff = MIN_BACKOFF;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch cache: listing the store failed; retrying");
                    if sleep(&shutdown, &mut backoff).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let after = sc.shared.revision();
        // The whole store, not `root`: every revision must reach the cache (see the module
        // docs of `crate::cache`); keys outside `root` only move the revision.
        let mut events = match sc.store.watch("", after).await {
            Ok(s) => s.ready_chunks(BATCH),
            Err(e) if e.is_compacted() => {
                tracing::info!(after, "watch cache: store history compacted; relisting");
                listed = false;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "watch cache: store watch failed; retrying");
                if sleep(&shutdown, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sc.relist.notified() => {
                    tracing::info!("watch cache: relist requested");
                    listed = false;
                    break;
                }
                _ = sc.joined.notified() => {
                    join(&sc, &shutdown);
                    continue;
                }
                b = events.next() => b,
            };
            let Some(batch) = batch else {
                tracing::debug!("watch cache: store watch ended; resuming");
                break;
            };
            let mut touched: Vec<Arc<ResourceCache>> = Vec::new();
            let mut last = None;
            let mut failed = None;
            {
                let resources = sc.resources.read().unwrap_or_else(|e| e.into_inner());
                for item in batch {
                    match item {
                        Ok(ev) => {
                            last = Some(ev.revision());
                            if let Some(rc) = apply(&sc.root, &resources, ev) {
                                if !touched.iter().any(|t| Arc::ptr_eq(t, rc)) {
                                    touched.push(rc.clone());
                                }
                            }
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
            }
            if let Some(rev) = last {
                // Only now: a reader that sees `rev` must find every event up to it applied.
                sc.shared.revision.send_if_modified(|r| {
                    let newer = rev > *r;
                    *r = (*r).max(rev);
                    newer
                });
            }
            for rc in touched {
                rc.notify();
            }
            if let Some(e) = failed {
                if e.is_compacted() {
                    tracing::info!(error = %e, "watch cache: store history compacted; relisting");
                    listed = false;
                } else {
                    tracing::debug!(error = %e, "watch cache: store watch failed; resuming");
                }
                break;
            }
            backoff = MIN_BACKOFF;
        }
        if listed && sleep(&shutdown, &mut backoff).await {
            return;
        }
    }
}

/// Sleep `backoff` (then double it); true when shut down meanwhile.
async fn sleep(shutdown: &CancellationToken, backoff: &mut Duration) -> bool {
    let d = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Caches by storage name.
type Resources = HashMap<&'static str, Arc<ResourceCache>>;

/// Add the caches waiting to join (see `StoreCache::join`); called between two batches, so
/// every change applied from now on reaches them. Each then lists its prefix.
fn join(sc: &Arc<StoreCache>, shutdown: &CancellationToken) {
    let joins = std::mem::take(&mut *sc.joins.lock().unwrap_or_else(|e| e.into_inner()));
    for (name, rc) in joins {
        {
            let mut resources = sc.resources.write().unwrap_or_else(|e| e.into_inner());
            // Checked under the lock `StoreCache::leave` removes under.
            if rc.is_stopped() {
                continue;
            }
            resources.insert(name, rc.clone());
        }
        tokio::spawn(initialize(sc.clone(), name, rc, shutdown.clone()));
    }
}

/// List a joined cache's prefix in the store and load it, retrying until it is loaded,
/// dropped or shut down. The list is read after the cache joined, so the changes the feeder
/// kept aside cover everything after its revision.
async fn initialize(
    sc: Arc<StoreCache>,
    name: &'static str,
    rc: Arc<ResourceCache>,
    shutdown: CancellationToken,
) {
    let prefix = format!("{}{name}/", sc.root);
    let mut backoff = MIN_BACKOFF;
    while !rc.is_stopped() {
        match list_prefix(&sc, &prefix, &rc).await {
            Ok((objects, broken, rev)) => {
                if rc.initialize(objects, broken, rev) {
                    tracing::debug!(resource = name, revision = rev, "watch cache: joined");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(resource = name, error = %e, "watch cache: listing a joining resource failed; retrying");
                if sleep(&shutdown, &mut backoff).await {
                    return;
                }
            }
        }
    }
}

/// The objects under `prefix` at one revision (the current one), and the keys that could
/// not be decoded.
async fn list_prefix(
    sc: &StoreCache,
    prefix: &str,
    rc: &ResourceCache,
) -> Result<(BTreeMap<String, Arc<Cached>>, BTreeSet<String>, Revision), StoreError> {
    let mut objects = BTreeMap::new();
    let mut broken = BTreeSet::new();
    let mut revision = None;
    let mut start_key = None;
    loop {
        let page = sc
            .store
            .list(
                prefix,
                ListOptions {
                    revision,
                    limit: Some(LIST_PAGE),
                    start_key: start_key.take(),
                },
            )
            .await?;
        revision = Some(page.revision);
        for kv in page.items {
            match Cached::decode(&kv.value, kv.mod_revision, rc.fields()) {
                Ok(obj) => {
                    objects.insert(kv.key, Arc::new(obj));
                }
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "watch cache: undecodable object");
                    broken.insert(kv.key);
                }
            }
        }
        match page.continue_key {
            Some(next) => start_key = Some(next),
            None => break,
        }
    }
    Ok((objects, broken, revision.unwrap_or(0).max(1)))
}

/// The cache a key belongs to: storage names are one segment (`pods`) or two
/// (`services/specs`, a custom resource's `example.com/widgets`).
fn route<'a>(root: &str, resources: &'a Resources, key: &str) -> Option<&'a Arc<ResourceCache>> {
    let rest = key.strip_prefix(root)?;
    let mut slashes = rest.match_indices('/').map(|(i, _)| i);
    let first = slashes.next()?;
    if let Some(rc) = resources.get(&rest[..first]) {
        return Some(rc);
    }
    let second = slashes.next()?;
    resources.get(&rest[..second])
}

/// Apply one store event; the cache it changed, if any.
fn apply<'a>(root: &str, resources: &'a Resources, ev: Event) -> Option<&'a Arc<ResourceCache>> {
    let rc = route(root, resources, &ev.kv.key)?;
    let rev = ev.revision();
    match ev.kind {
        EventKind::Put => match Cached::decode(&ev.kv.value, rev, rc.fields()) {
            Ok(obj) => rc.apply(ev.kv.key, rev, Some(Arc::new(obj)), None),
            Err(e) => {
                tracing::warn!(key = %ev.kv.key, error = %e, "watch cache: undecodable object");
                rc.forget(&ev.kv.key, rev);
            }
        },
        EventKind::Delete => {
            let deleted = ev
                .prev
                .as_ref()
                .and_then(|p| Cached::decode(&p.value, rev, rc.fields()).ok())
                .map(Arc::new);
            rc.apply(ev.kv.key, rev, None, deleted);
        }
    }
    Some(rc)
}

/// List every key under the prefix at one revision and replace every cache with it (the
/// caches fed when it starts: others join only between batches).
async fn relist(sc: &Arc<StoreCache>) -> Result<Revision, StoreError> {
    let resources = Arc::new(sc.resources());
    let mut maps: HashMap<&'static str, BTreeMap<String, Arc<Cached>>> = HashMap::new();
    let mut broken: HashMap<&'static str, BTreeSet<String>> = HashMap::new();
    let mut revision = None;
    let mut start_key = None;
    loop {
        let page = sc
            .store
            .list(
                &sc.root,
                ListOptions {
                    revision,
                    limit: Some(LIST_PAGE),
                    start_key: start_key.take(),
                },
            )
            .await?;
        revision = Some(page.revision);
        // Parsing thousands of objects is CPU work: keep it off the async workers.
        let (root, these) = (sc.root.clone(), resources.clone());
        let items = page.items;
        let decoded = tokio::task::spawn_blocking(move || decode_page(&root, &these, items))
            .await
            .map_err(|e| StoreError::Unavailable {
                reason: format!("decoding the listed objects: {e}"),
            })?;
        for (name, key, obj) in decoded {
            match obj {
                Some(obj) => maps.entry(name).or_default().insert(key, obj),
                None => {
                    broken.entry(name).or_default().insert(key);
                    None
                }
            };
        }
        match page.continue_key {
            Some(next) => start_key = Some(next),
            None => break,
        }
    }
    let rev = revision.unwrap_or(0).max(1);
    for (name, rc) in resources.iter() {
        rc.reset_with_broken(
            maps.remove(name).unwrap_or_default(),
            broken.remove(name).unwrap_or_default(),
            rev,
        );
    }
    sc.shared.revision.send_modify(|r| *r = (*r).max(rev));
    sc.shared.ready.store(true, Ordering::Release);
    for rc in resources.values() {
        rc.notify();
    }
    Ok(rev)
}

/// Each listed object of a cached resource, `None` when it cannot be decoded.
type Decoded = (&'static str, String, Option<Arc<Cached>>);

fn decode_page(root: &str, resources: &Resources, items: Vec<KeyValue>) -> Vec<Decoded> {
    let names: HashMap<*const ResourceCache, &'static str> = resources
        .iter()
        .map(|(n, rc)| (Arc::as_ptr(rc), *n))
        .collect();
    let mut out = Vec::with_capacity(items.len());
    for kv in items {
        let Some(rc) = route(root, resources, &kv.key) else {
            continue;
        };
        match Cached::decode(&kv.value, kv.mod_revision, rc.fields()) {
            Ok(obj) => out.push((names[&Arc::as_ptr(rc)], kv.key, Some(Arc::new(obj)))),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "watch cache: undecodable object");
                out.push((names[&Arc::as_ptr(rc)], kv.key, None));
            }
        }
    }
    out
}
