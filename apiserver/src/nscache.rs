//! Which namespaces exist and which are terminating, kept in memory by a list + watch of the
//! namespaces in the store, so a create does not read its namespace from the store every
//! time (upstream's NamespaceLifecycle admission does the same with an informer).
//!
//! Only "exists and is active" is answered from memory. A namespace that is missing or
//! terminating here is looked up in the store by the caller, so a namespace created a moment
//! ago (its event not yet seen) is never refused, and a refusal always reflects the store.
//! While the watch is down (store restart, compaction), every lookup goes to the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use store::{EventKind, ListOptions, StoreError};

use crate::state::AppState;

/// Wait this long before relisting after the watch fails.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct NamespaceCache {
    /// Namespace name -> terminating (has a deletionTimestamp).
    names: RwLock<HashMap<String, bool>>,
    /// Whether `names` follows the store right now.
    synced: AtomicBool,
    /// Which namespaces hold ResourceQuotas, for quota admission (followed by
    /// [`crate::quota::run`]).
    pub quotas: crate::quota::QuotaIndex,
}

impl NamespaceCache {
    /// True only when the namespace is known to exist and not to be terminating.
    pub fn is_active(&self, name: &str) -> bool {
        self.synced.load(Ordering::Acquire)
            && self
                .names
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                == Some(&false)
    }

    /// Answer for `name` from the store until its next change is seen: called before this
    /// server marks the namespace deleted, so creates here see that before the watch does.
    pub fn force_live(&self, name: &str) {
        self.set(name.to_string(), true);
    }

    fn set(&self, name: String, terminating: bool) {
        self.names
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, terminating);
    }

    fn remove(&self, name: &str) {
        self.names
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
}

/// Keep `state.namespaces` in step with the store until shutdown.
pub async fn run(state: Arc<AppState>) {
    loop {
        let result = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            r = follow(&state) => r,
        };
        state.namespaces.synced.store(false, Ordering::Release);
        if let Err(e) = result {
            tracing::debug!(error = %e, "namespace cache lost its watch; relisting");
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// List the namespaces, then apply every change after the list; returns when the watch ends.
async fn follow(state: &AppState) -> Result<(), StoreError> {
    let def = state
        .registry
        .get("", "v1", "namespaces")
        .expect("namespaces are built in");
    let store = state.store(def).clone();
    let prefix = state.prefix(def, None);
    let list = store.list(&prefix, ListOptions::default()).await?;
    let mut names = HashMap::with_capacity(list.items.len());
    for kv in &list.items {
        if let Some(name) = kv.key.strip_prefix(&prefix) {
            names.insert(name.to_string(), terminating(&kv.value));
        }
    }
    let mut events = store.watch(&prefix, list.revision).await?;
    *state
        .namespaces
        .names
        .write()
        .unwrap_or_else(|e| e.into_inner()) = names;
    state.namespaces.synced.store(true, Ordering::Release);
    while let Some(ev) = events.next().await {
        let ev = ev?;
        let Some(name) = ev.kv.key.strip_prefix(&prefix) else {
            continue;
        };
        match ev.kind {
            EventKind::Put => state
                .namespaces
                .set(name.to_string(), terminating(&ev.kv.value)),
            EventKind::Delete => state.namespaces.remove(name),
        }
    }
    Err(StoreError::Unavailable {
        reason: "namespace watch ended".into(),
    })
}

/// Whether a stored namespace carries a deletionTimestamp. Unreadable counts as terminating,
/// which only sends lookups of it to the store.
fn terminating(value: &[u8]) -> bool {
    serde_json::from_slice::<Value>(value).map_or(true, |v| {
        v.pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_active_namespaces_are_answered() {
        let c = NamespaceCache::default();
        c.set("a".into(), false);
        assert!(!c.is_active("a"), "not synced yet");
        c.synced.store(true, Ordering::Release);
        assert!(c.is_active("a"));
        c.set("a".into(), true);
        assert!(!c.is_active("a"), "terminating");
        c.remove("a");
        assert!(!c.is_active("a"));
        assert!(!c.is_active("b"));
    }

    #[test]
    fn deletion_timestamp_means_terminating() {
        assert!(!terminating(br#"{"metadata":{"name":"a"}}"#));
        assert!(terminating(
            br#"{"metadata":{"name":"a","deletionTimestamp":"2026-11-26T00:00:00Z"}}"#
        ));
        assert!(terminating(b"not json"));
    }
}
