//! Upstream's controller expectations: what an owner has asked the API to create or delete
//! and its (lagging) informer cache has not shown yet, so the owner does not act twice on
//! the same gap. Pods of ReplicaSets, ReplicationControllers, DaemonSets and Jobs, and
//! EndpointSlices of Services, are tracked by the owner's uid; the pod and EndpointSlice
//! informers lower them ([`Expectations::observe`]), the owners' informers drop an owner's
//! record when it is deleted ([`Expectations::observe_owner`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::Resource;

/// How long an expectation is trusted: a create whose watch event never comes (the pod was
/// deleted before the cache saw it, a relist folded it away) must not block its owner for
/// good (upstream's ExpectationsTimeout).
const EXPECTATIONS_TTL: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Expect {
    adds: i64,
    dels: HashSet<String>,
    at: Instant,
}

/// Upstream's `UIDTrackingControllerExpectations`: the creates and deletes of pods an owner
/// (by uid) has issued and its cache has not yet shown. While any are outstanding the owner
/// must not create or delete more on the strength of its cache (it would count the
/// same pods missing twice); it still reports status.
#[derive(Debug, Default)]
pub struct Expectations {
    owners: Mutex<HashMap<String, Expect>>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expect>> {
        self.owners.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `owner`'s earlier creates and deletes are all in the cache (or expired).
    pub fn satisfied(&self, owner: &str) -> bool {
        let mut owners = self.lock();
        match owners.get(owner) {
            None => true,
            Some(e) if e.adds <= 0 && e.dels.is_empty() => true,
            Some(e) if e.at.elapsed() > EXPECTATIONS_TTL => {
                tracing::warn!(
                    owner,
                    adds = e.adds,
                    dels = e.dels.len(),
                    "expectations expired"
                );
                owners.remove(owner);
                true
            }
            Some(_) => false,
        }
    }

    /// Before creating `n` pods for `owner`.
    pub fn expect_creations(&self, owner: &str, n: usize) {
        let mut owners = self.lock();
        let e = owners.entry(owner.to_string()).or_insert_with(|| Expect {
            adds: 0,
            dels: HashSet::new(),
            at: Instant::now(),
        });
        e.adds = e.adds.max(0) + n as i64;
        e.at = Instant::now();
    }

    /// Before deleting the pods `names` of `owner`.
    pub fn expect_deletions(&self, owner: &str, names: impl IntoIterator<Item = String>) {
        let mut owners = self.lock();
        let e = owners.entry(owner.to_string()).or_insert_with(|| Expect {
            adds: 0,
            dels: HashSet::new(),
            at: Instant::now(),
        });
        e.dels.extend(names);
        e.at = Instant::now();
    }

    /// A pod of `owner` appeared in the cache, or a create failed (it never will).
    pub fn creation_observed(&self, owner: &str) {
        if let Some(e) = self.lock().get_mut(owner) {
            e.adds -= 1;
        }
    }

    /// The cache shows pod `name` of `owner` deleted or terminating, or its delete failed.
    pub fn deletion_observed(&self, owner: &str, name: &str) {
        if let Some(e) = self.lock().get_mut(owner) {
            e.dels.remove(name);
        }
    }

    /// The owner is gone (upstream's `DeleteExpectations`).
    pub fn forget(&self, owner: &str) {
        self.lock().remove(owner);
    }

    /// An owner's informer took in a change: its deletion drops its record, which would
    /// otherwise stay until the process ends (an owner need not be reconciled while it is
    /// being deleted: a force delete, or one whose last event was missed).
    pub fn observe_owner<K: Resource>(&self, old: Option<&K>, new: Option<&K>) {
        if let (Some(owner), None) = (old, new) {
            if let Some(uid) = &owner.meta().uid {
                self.forget(uid);
            }
        }
    }

    /// How many owners have a record (for tests).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lower the expectations of an object's controller for what its cache just took in.
    pub fn observe<K: Resource>(&self, old: Option<&K>, new: Option<&K>) {
        let controller = |p: &K| {
            p.meta()
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true))
                .map(|r| r.uid.clone())
        };
        let terminating = |p: &K| p.meta().deletion_timestamp.is_some();
        let name = |p: &K| p.meta().name.clone().unwrap_or_default();
        match (old, new) {
            (None, Some(p)) => {
                if let Some(owner) = controller(p) {
                    self.creation_observed(&owner);
                    if terminating(p) {
                        self.deletion_observed(&owner, &name(p));
                    }
                }
            }
            (Some(o), Some(p)) if terminating(p) && !terminating(o) => {
                if let Some(owner) = controller(p) {
                    self.deletion_observed(&owner, &name(p));
                }
            }
            (Some(o), None) => {
                if let Some(owner) = controller(o) {
                    self.deletion_observed(&owner, &name(o));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str, owner: &str, terminating: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "default",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                     "uid": owner, "controller": true}],
                "deletionTimestamp": if terminating { Some("2024-01-01T00:00:00Z") } else { None },
            },
            "spec": {"containers": []},
        }))
        .expect("pod")
    }

    fn replica_set(uid: &str) -> ReplicaSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "rs", "namespace": "default", "uid": uid},
            "spec": {"selector": {}},
        }))
        .expect("replicaset")
    }

    #[test]
    fn expectations_hold_until_the_cache_shows_every_write() {
        let e = Expectations::default();
        assert!(e.satisfied("u1"));
        e.expect_creations("u1", 2);
        assert!(!e.satisfied("u1"));
        e.observe(None, Some(&pod("a", "u1", false)));
        e.observe(None, Some(&pod("x", "u2", false)));
        assert!(!e.satisfied("u1"), "one of two creates seen");
        // an update of a pod already seen is not a create
        e.observe(Some(&pod("a", "u1", false)), Some(&pod("a", "u1", false)));
        assert!(!e.satisfied("u1"));
        e.observe(None, Some(&pod("b", "u1", false)));
        assert!(e.satisfied("u1"));

        e.expect_deletions("u1", ["a".to_string(), "b".to_string()]);
        assert!(!e.satisfied("u1"));
        e.observe(Some(&pod("a", "u1", false)), Some(&pod("a", "u1", true)));
        // the final delete of a pod already seen terminating counts once
        e.observe(Some(&pod("a", "u1", true)), None);
        assert!(!e.satisfied("u1"));
        e.observe(Some(&pod("b", "u1", false)), None);
        assert!(e.satisfied("u1"));
    }

    #[test]
    fn an_owners_deletion_drops_its_record() {
        let e = Expectations::default();
        e.expect_creations("u1", 3);
        e.expect_deletions("u1", ["a".to_string()]);
        e.expect_creations("u2", 1);
        // an update of the owner, even one marking it terminating, keeps the record
        e.observe_owner(Some(&replica_set("u1")), Some(&replica_set("u1")));
        assert!(!e.satisfied("u1"));
        assert_eq!(e.len(), 2);
        // its deletion (a force delete never reconciled while terminating) drops it
        e.observe_owner(Some(&replica_set("u1")), None);
        assert_eq!(e.len(), 1, "only u2's record is left");
        assert!(e.satisfied("u1"));
        // pods of the deleted owner seen afterwards do not bring a record back
        e.observe(None, Some(&pod("late", "u1", false)));
        assert_eq!(e.len(), 1);
        assert!(!e.satisfied("u2"), "another owner's record is untouched");
    }
}
