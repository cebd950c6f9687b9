//! Small in-memory indexes the apiserver keeps of one resource (which namespaces exist,
//! which hold quotas, the RBAC policy) follow it the same way: a list at one revision, then
//! every later change in order. [`run`] is that loop; an index says what a list and a change
//! mean to it by implementing [`Follower`].
//!
//! With the watch cache (the default) the loop follows the resource's cache through a
//! [`Subscription`]: no store watch of its own, the cache's one watch of the store feeds it.
//! Falling behind the cache's ring hands the index the whole resource again from memory;
//! while the cache relists the store (after compaction) the index is marked unsynced, so
//! its readers ask the store, as they do before the first list. Without the cache
//! (`--default-watch-cache-size 0`) the loop lists and watches the store itself: when that
//! watch ends (store restart, compaction) it marks the index unsynced, waits, and lists
//! again.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use store::{EventKind, ListOptions, StoreError};

use crate::cache::{Change, Subscription};
use crate::registry::ResourceDef;
use crate::state::AppState;

/// Wait this long before relisting after the store watch fails.
const RETRY: Duration = Duration::from_secs(1);

/// An index kept in step with one resource. Keys are relative to the resource's prefix
/// (`<name>` for cluster-scoped resources, `<namespace>/<name>` for namespaced ones).
pub trait Follower: Send + Sync {
    /// Replace the whole index with a fresh list of (key, stored value).
    fn reset(&self, items: Vec<(&str, &[u8])>);
    /// One change: the new value of `key`, or `None` when it was deleted.
    fn apply(&self, key: &str, value: Option<&[u8]>);
    /// Whether the index follows the store right now (false while it relists: its readers
    /// must then ask the store).
    fn set_synced(&self, synced: bool);
}

/// Which resource to follow, by (group, version, plural) as the registry knows it.
pub type Resource = (&'static str, &'static str, &'static str);

/// Keep `follower` in step with `resource` until shutdown.
pub async fn run(state: Arc<AppState>, resource: Resource, follower: impl Follower) {
    let (group, version, plural) = resource;
    let def: &ResourceDef = state
        .registry
        .get(group, version, plural)
        .unwrap_or_else(|| panic!("{plural} are built in"));
    let prefix = state.prefix(def, None);
    if let Some(rc) = state.cache.resource(def) {
        let subscription = Subscription::new(rc.clone(), prefix.clone());
        tokio::select! {
            _ = state.shutdown.cancelled() => {}
            _ = from_cache(subscription, &prefix, &follower) => {}
        }
        return;
    }
    loop {
        let result = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            r = from_store(&state, def, &prefix, &follower) => r,
        };
        follower.set_synced(false);
        if let Err(e) = result {
            tracing::debug!(resource = plural, error = %e, "index lost its watch; relisting");
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Apply what the watch cache hands out, forever.
async fn from_cache(mut subscription: Subscription, prefix: &str, follower: &impl Follower) {
    loop {
        match subscription.next().await {
            Change::Reset(items) => {
                follower.reset(
                    items
                        .iter()
                        .filter_map(|(k, obj)| Some((k.strip_prefix(prefix)?, &obj.json[..])))
                        .collect(),
                );
                follower.set_synced(true);
            }
            Change::Events(events) => {
                for ev in events {
                    let Some(key) = ev.key.strip_prefix(prefix) else {
                        continue;
                    };
                    match ev.kind {
                        EventKind::Put => follower.apply(key, Some(&ev.obj.json)),
                        EventKind::Delete => follower.apply(key, None),
                    }
                }
            }
            Change::Unready => follower.set_synced(false),
        }
    }
}

/// List the store, then apply every change after the list; returns when the watch ends.
async fn from_store(
    state: &AppState,
    def: &ResourceDef,
    prefix: &str,
    follower: &impl Follower,
) -> Result<(), StoreError> {
    let store = state.store(def).clone();
    let list = store.list(prefix, ListOptions::default()).await?;
    // the watch is open before the index says it is synced: no change can fall in between
    let mut events = store.watch(prefix, list.revision).await?;
    follower.reset(
        list.items
            .iter()
            .filter_map(|kv| Some((kv.key.strip_prefix(prefix)?, &kv.value[..])))
            .collect(),
    );
    follower.set_synced(true);
    while let Some(ev) = events.next().await {
        let ev = ev?;
        let Some(key) = ev.kv.key.strip_prefix(prefix) else {
            continue;
        };
        match ev.kind {
            EventKind::Put => follower.apply(key, Some(&ev.kv.value)),
            EventKind::Delete => follower.apply(key, None),
        }
    }
    Err(StoreError::Unavailable {
        reason: format!("{} watch ended", def.plural),
    })
}
