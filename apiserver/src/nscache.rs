//! Which namespaces exist and which are terminating, kept in memory by following the
//! namespaces (`crate::follow`: through the watch cache, or a store watch without it), so a
//! create does not read its namespace from the store every time (upstream's
//! NamespaceLifecycle admission does the same with an informer).
//!
//! Only "exists and is active" is answered from memory. A namespace that is missing or
//! terminating here is looked up in the store by the caller, so a namespace created a moment
//! ago (its event not yet seen) is never refused, and a refusal always reflects the store.
//! While the index does not follow (before its first list, while the watch cache relists
//! after compaction, or, without the cache, while its store watch is down), every lookup
//! goes to the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::follow::Follower;
use crate::state::AppState;

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
    let follower = Follow(state.clone());
    crate::follow::run(state, ("", "v1", "namespaces"), follower).await
}

/// The namespace cache as a [`Follower`] of the namespaces in the store.
struct Follow(Arc<AppState>);

impl Follower for Follow {
    fn reset(&self, items: Vec<(&str, &[u8])>) {
        let names = items
            .into_iter()
            .map(|(name, value)| (name.to_string(), terminating(value)))
            .collect();
        *self
            .0
            .namespaces
            .names
            .write()
            .unwrap_or_else(|e| e.into_inner()) = names;
    }

    fn apply(&self, name: &str, value: Option<&[u8]>) {
        match value {
            Some(value) => self.0.namespaces.set(name.to_string(), terminating(value)),
            None => self.0.namespaces.remove(name),
        }
    }

    fn set_synced(&self, synced: bool) {
        self.0.namespaces.synced.store(synced, Ordering::Release);
    }
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
