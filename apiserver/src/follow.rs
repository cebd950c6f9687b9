//! Small in-memory indexes the apiserver keeps of one resource (which namespaces exist,
//! which hold quotas, the RBAC policy) follow the store the same way: list, then watch from
//! the list's revision and apply every change; when the watch ends (store restart,
//! compaction) mark the index unsynced, wait, and list again. [`run`] is that loop; an
//! index says what a list and a change mean to it by implementing [`Follower`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use store::{EventKind, ListOptions, StoreError};

use crate::state::AppState;

/// Wait this long before relisting after the watch fails.
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
    loop {
        let result = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            r = follow(&state, resource, &follower) => r,
        };
        follower.set_synced(false);
        if let Err(e) = result {
            tracing::debug!(resource = resource.2, error = %e, "index lost its watch; relisting");
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// List, then apply every change after the list; returns when the watch ends.
async fn follow(
    state: &AppState,
    (group, version, plural): Resource,
    follower: &impl Follower,
) -> Result<(), StoreError> {
    let def = state
        .registry
        .get(group, version, plural)
        .unwrap_or_else(|| panic!("{plural} are built in"));
    let store = state.store(def).clone();
    let prefix = state.prefix(def, None);
    let list = store.list(&prefix, ListOptions::default()).await?;
    // the watch is open before the index says it is synced: no change can fall in between
    let mut events = store.watch(&prefix, list.revision).await?;
    follower.reset(
        list.items
            .iter()
            .filter_map(|kv| Some((kv.key.strip_prefix(&prefix)?, &kv.value[..])))
            .collect(),
    );
    follower.set_synced(true);
    while let Some(ev) = events.next().await {
        let ev = ev?;
        let Some(key) = ev.kv.key.strip_prefix(&prefix) else {
            continue;
        };
        match ev.kind {
            EventKind::Put => follower.apply(key, Some(&ev.kv.value)),
            EventKind::Delete => follower.apply(key, None),
        }
    }
    Err(StoreError::Unavailable {
        reason: format!("{plural} watch ended"),
    })
}
