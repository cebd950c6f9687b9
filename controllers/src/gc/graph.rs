//! The collector's dependency graph, upstream's `GraphBuilder`: a node per uid with its
//! owner references and its dependents, kept from the watches' events. Applying an event
//! is pure and cheap; it returns the work the event calls for (upstream's `attemptToDelete`
//! and `attemptToOrphan` queues), which the collector verifies against the API.
//!
//! An owner the graph has not seen is a "virtual" node, named as the first dependent
//! refers to it (in that dependent's namespace); the collector asks the API about it, and
//! either a watch observes it or a virtual delete removes it.

use std::collections::{HashMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// An object's coordinates (upstream's `objectReference`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub api_version: String,
    pub kind: String,
    /// `None`: cluster-scoped (or, for a virtual node, named from a cluster-scoped dependent).
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{} ({})", self.kind, self.name, self.uid),
            None => write!(f, "{} {} ({})", self.kind, self.name, self.uid),
        }
    }
}

/// What the collector keeps of an object a watch reported.
#[derive(Debug, Clone)]
pub struct Observed {
    pub identity: Identity,
    pub owners: Vec<OwnerReference>,
    pub finalizers: Vec<String>,
    pub deleting: bool,
}

#[derive(Debug)]
pub enum Change {
    /// Added or updated, as a watch (or a relist) saw it.
    Upsert(Observed),
    /// Deleted, as a watch (or a relist) saw it.
    Delete { uid: String },
    /// The API says no object has these coordinates (the collector's own verification).
    VirtualDelete(Identity),
}

/// What a change calls for, by uid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Work {
    /// Check whether the object should go (upstream's attemptToDelete).
    Delete(String),
    /// Strip the object's dependents' references to it, then its `orphan` finalizer.
    Orphan(String),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub identity: Identity,
    pub owners: Vec<OwnerReference>,
    pub dependents: HashSet<String>,
    /// Seen by a watch (false: a virtual node, known only from references to it).
    pub observed: bool,
    pub finalizers: Vec<String>,
    pub being_deleted: bool,
    /// Deleted in the foreground: waits for its blocking dependents.
    pub deleting_dependents: bool,
}

fn has(finalizers: &[String], f: &str) -> bool {
    finalizers.iter().any(|x| x == f)
}

/// Whether `r` names exactly `id` (upstream's ownerReferenceMatchesCoordinates).
pub fn matches(r: &OwnerReference, id: &Identity) -> bool {
    r.uid == id.uid && r.name == id.name && r.kind == id.kind && r.api_version == id.api_version
}

/// Owners confirmed absent, so their other dependents need no GET (upstream's
/// absentOwnerCache; bounded, forgetting everything when full costs only GETs).
#[derive(Debug, Default)]
pub struct Absent(HashSet<(String, String, String, String, Option<String>)>);

const ABSENT_MAX: usize = 500;

impl Absent {
    fn key(
        r: &OwnerReference,
        ns: Option<&str>,
    ) -> (String, String, String, String, Option<String>) {
        (
            r.uid.clone(),
            r.api_version.clone(),
            r.kind.clone(),
            r.name.clone(),
            ns.map(str::to_string),
        )
    }

    pub fn contains(&self, r: &OwnerReference, ns: Option<&str>) -> bool {
        self.0.contains(&Self::key(r, ns))
    }

    pub fn add(&mut self, r: &OwnerReference, ns: Option<&str>) {
        if self.0.len() >= ABSENT_MAX {
            self.0.clear();
        }
        self.0.insert(Self::key(r, ns));
    }

    fn add_identity(&mut self, id: &Identity) {
        self.add(&reference(id), id.namespace.as_deref());
    }
}

fn reference(id: &Identity) -> OwnerReference {
    OwnerReference {
        api_version: id.api_version.clone(),
        kind: id.kind.clone(),
        name: id.name.clone(),
        uid: id.uid.clone(),
        ..Default::default()
    }
}

#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    pub absent: Absent,
}

impl Graph {
    pub fn node(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The uids of the virtual nodes (owners not yet observed).
    pub fn virtual_nodes(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| !n.observed)
            .map(|n| n.identity.uid.clone())
            .collect()
    }

    /// The dependents of `uid` whose reference to it has `blockOwnerDeletion` (what a
    /// foreground deletion waits for).
    pub fn blocking_dependents(&self, uid: &str) -> Vec<&Node> {
        let Some(n) = self.nodes.get(uid) else {
            return Vec::new();
        };
        n.dependents
            .iter()
            .filter_map(|d| self.nodes.get(d))
            .filter(|d| {
                d.owners
                    .iter()
                    .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
            })
            .collect()
    }

    /// Take in one change; what it calls for comes back (upstream's processGraphChanges).
    pub fn apply(&mut self, change: Change) -> Vec<Work> {
        let mut work = Vec::new();
        match change {
            Change::Upsert(o) => self.upsert(o, &mut work),
            Change::Delete { uid } => {
                if let Some(n) = self.nodes.get(&uid) {
                    let id = n.identity.clone();
                    self.remove(&id, &mut work);
                }
            }
            Change::VirtualDelete(id) => self.virtual_delete(id, &mut work),
        }
        work
    }

    fn upsert(&mut self, o: Observed, work: &mut Vec<Work>) {
        let uid = o.identity.uid.clone();
        // What the object was when last observed (None: first observation), for transitions.
        let mut before: Option<(bool, Vec<String>)> = None;
        match self.nodes.get(&uid) {
            // A virtual node observed at last: dependents that named it otherwise may have
            // been wrong about it (the bad child, then good parent order).
            Some(n) if !n.observed && n.identity != o.identity => {
                let (_, suspicious) = self.partition(&uid, &o.identity);
                for d in suspicious {
                    if let Some(dep) = self.nodes.get(&d) {
                        if o.identity.namespace.is_some()
                            && dep.identity.namespace != o.identity.namespace
                        {
                            tracing::warn!(dependent = %dep.identity, owner = %o.identity,
                                "ownerRef does not exist in the dependent's namespace (OwnerRefInvalidNamespace)");
                        }
                    }
                    work.push(Work::Delete(d));
                }
            }
            Some(n) if !n.observed => {}
            Some(n) => before = Some((n.being_deleted, n.finalizers.clone())),
            None => {}
        }
        let existing = self.nodes.contains_key(&uid);
        if !existing {
            self.nodes.insert(
                uid.clone(),
                Node {
                    identity: o.identity.clone(),
                    owners: Vec::new(),
                    dependents: HashSet::new(),
                    observed: true,
                    finalizers: Vec::new(),
                    being_deleted: false,
                    deleting_dependents: false,
                },
            );
        }
        let old_owners = {
            let n = self.nodes.get_mut(&uid).expect("just ensured");
            n.identity = o.identity.clone();
            n.observed = true;
            n.finalizers = o.finalizers.clone();
            if o.deleting {
                n.being_deleted = true;
            }
            std::mem::replace(&mut n.owners, o.owners.clone())
        };
        // Owner references: new owners get the node as a dependent, removed ones lose it,
        // and an owner waiting in the foreground may have lost its last blocker.
        let added: Vec<OwnerReference> = o
            .owners
            .iter()
            .filter(|r| !old_owners.iter().any(|x| x.uid == r.uid))
            .cloned()
            .collect();
        for old in &old_owners {
            let now = o.owners.iter().find(|r| r.uid == old.uid);
            let unblocked = old.block_owner_deletion == Some(true)
                && now.is_none_or(|r| r.block_owner_deletion != Some(true));
            if now.is_none() {
                if let Some(owner) = self.nodes.get_mut(&old.uid) {
                    owner.dependents.remove(&uid);
                }
            }
            if unblocked
                && self
                    .nodes
                    .get(&old.uid)
                    .is_some_and(|owner| owner.deleting_dependents)
            {
                work.push(Work::Delete(old.uid.clone()));
            }
        }
        self.add_to_owners(&uid, &added, work);
        self.transitions(&uid, before, &o, work);
    }

    /// upstream's processTransitions: an object that starts being deleted with `orphan`
    /// has its dependents orphaned; one with `foregroundDeletion` has them deleted first.
    fn transitions(
        &mut self,
        uid: &str,
        before: Option<(bool, Vec<String>)>,
        o: &Observed,
        work: &mut Vec<Work>,
    ) {
        let was = |f: &str| before.as_ref().is_some_and(|(d, fs)| *d && has(fs, f));
        if o.deleting && has(&o.finalizers, ORPHAN) && !was(ORPHAN) {
            work.push(Work::Orphan(uid.to_string()));
            return;
        }
        if o.deleting && has(&o.finalizers, FOREGROUND) && !was(FOREGROUND) {
            let n = self.nodes.get_mut(uid).expect("upserted");
            n.deleting_dependents = true;
            work.extend(n.dependents.iter().cloned().map(Work::Delete));
            work.push(Work::Delete(uid.to_string()));
        }
    }

    /// upstream's addDependentToOwners: unknown owners become virtual nodes to verify; a
    /// reference that disagrees with an observed owner's coordinates or namespace makes the
    /// dependent itself suspicious.
    fn add_to_owners(&mut self, uid: &str, owners: &[OwnerReference], work: &mut Vec<Work>) {
        let Some(ns) = self.nodes.get(uid).map(|n| n.identity.namespace.clone()) else {
            return;
        };
        let mut suspicious = false;
        for r in owners {
            let Some(owner) = self.nodes.get_mut(&r.uid) else {
                let mut dependents = HashSet::new();
                dependents.insert(uid.to_string());
                self.nodes.insert(
                    r.uid.clone(),
                    Node {
                        identity: Identity {
                            api_version: r.api_version.clone(),
                            kind: r.kind.clone(),
                            namespace: ns.clone(),
                            name: r.name.clone(),
                            uid: r.uid.clone(),
                        },
                        owners: Vec::new(),
                        dependents,
                        observed: false,
                        finalizers: Vec::new(),
                        being_deleted: false,
                        deleting_dependents: false,
                    },
                );
                work.push(Work::Delete(r.uid.clone()));
                continue;
            };
            owner.dependents.insert(uid.to_string());
            if suspicious {
                continue;
            }
            let owner_ns = owner.identity.namespace.clone();
            if owner_ns.is_some() && owner_ns != ns {
                if owner.observed {
                    tracing::warn!(owner = %owner.identity, dependent = uid,
                        "ownerRef does not exist in the dependent's namespace (OwnerRefInvalidNamespace)");
                }
                suspicious = true;
            } else if !matches(r, &owner.identity) {
                suspicious = true;
            } else if owner_ns.is_none() && ns.is_some() && !owner.observed {
                // a virtual owner named by a cluster-scoped dependent: maybe a namespaced
                // kind that dependent could not own (kubernetes#98040)
                suspicious = true;
            }
        }
        if suspicious {
            work.push(Work::Delete(uid.to_string()));
        }
    }

    /// The dependents of `uid` whose references match `id` and those that do not
    /// (upstream's partitionDependents).
    fn partition(&self, uid: &str, id: &Identity) -> (Vec<String>, Vec<String>) {
        let (mut matching, mut other) = (Vec::new(), Vec::new());
        let Some(n) = self.nodes.get(uid) else {
            return (matching, other);
        };
        for d in &n.dependents {
            let Some(dep) = self.nodes.get(d) else {
                continue;
            };
            let (mut hit, mut miss) = (false, false);
            if id.namespace.is_some() && id.namespace != dep.identity.namespace {
                miss = true;
            } else {
                for r in dep.owners.iter().filter(|r| r.uid == id.uid) {
                    if matches(r, id) {
                        hit = true;
                    } else {
                        miss = true;
                    }
                }
            }
            if hit {
                matching.push(d.clone());
            }
            if miss {
                other.push(d.clone());
            }
        }
        (matching, other)
    }

    fn virtual_delete(&mut self, id: Identity, work: &mut Vec<Work>) {
        let Some(n) = self.nodes.get(&id.uid) else {
            return;
        };
        let (matching, other) = self.partition(&id.uid, &id);
        if n.observed {
            if n.identity == id {
                let id = n.identity.clone();
                self.remove(&id, work);
                return;
            }
            // The API has no object at the coordinates some dependents used, but a watch
            // sees the uid elsewhere: only those dependents lost their owner.
            if !matching.is_empty() {
                self.absent.add_identity(&id);
                work.extend(matching.into_iter().map(Work::Delete));
            }
            return;
        }
        if other.is_empty() {
            let current = n.identity.clone();
            self.remove(&current, work);
            return;
        }
        // Dependents disagree about this owner's coordinates: the ones that used the
        // verified-absent ones lost it; the node stays, named as another dependent names it.
        if !matching.is_empty() {
            self.absent.add_identity(&id);
        }
        work.extend(matching.into_iter().map(Work::Delete));
        if n.identity == id {
            let alternative = other.iter().find_map(|d| {
                let dep = self.nodes.get(d)?;
                let r = dep
                    .owners
                    .iter()
                    .find(|r| r.uid == id.uid && !matches(r, &id))?;
                Some(Identity {
                    api_version: r.api_version.clone(),
                    kind: r.kind.clone(),
                    namespace: dep.identity.namespace.clone(),
                    name: r.name.clone(),
                    uid: r.uid.clone(),
                })
            });
            if let Some(alt) = alternative {
                if let Some(n) = self.nodes.get_mut(&id.uid) {
                    n.identity = alt;
                }
                work.push(Work::Delete(id.uid.clone()));
            }
        }
    }

    /// Remove an object gone from the API: its dependents are checked, and owners waiting
    /// for it in the foreground look again.
    fn remove(&mut self, id: &Identity, work: &mut Vec<Work>) {
        let Some(n) = self.nodes.remove(&id.uid) else {
            return;
        };
        for r in &n.owners {
            if let Some(owner) = self.nodes.get_mut(&r.uid) {
                owner.dependents.remove(&id.uid);
                if owner.deleting_dependents {
                    work.push(Work::Delete(r.uid.clone()));
                }
            }
        }
        if !n.dependents.is_empty() {
            self.absent.add_identity(&n.identity);
        }
        work.extend(n.dependents.into_iter().map(Work::Delete));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: &str, ns: Option<&str>, name: &str, uid: &str) -> Identity {
        Identity {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: ns.map(str::to_string),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn owned(i: &Identity, block: bool) -> OwnerReference {
        OwnerReference {
            api_version: i.api_version.clone(),
            kind: i.kind.clone(),
            name: i.name.clone(),
            uid: i.uid.clone(),
            block_owner_deletion: Some(block),
            ..Default::default()
        }
    }

    fn seen(
        i: &Identity,
        owners: Vec<OwnerReference>,
        finalizers: &[&str],
        deleting: bool,
    ) -> Change {
        Change::Upsert(Observed {
            identity: i.clone(),
            owners,
            finalizers: finalizers.iter().map(|f| f.to_string()).collect(),
            deleting,
        })
    }

    #[test]
    fn an_unchanged_object_calls_for_no_work() {
        let mut g = Graph::default();
        let owner = id("Thing", Some("a"), "o", "u1");
        let dep = id("ConfigMap", Some("a"), "d", "u2");
        assert!(g.apply(seen(&owner, vec![], &[], false)).is_empty());
        assert!(g
            .apply(seen(&dep, vec![owned(&owner, true)], &[], false))
            .is_empty());
        // a relist or resync reporting the same objects again
        assert!(g.apply(seen(&owner, vec![], &[], false)).is_empty());
        assert!(g
            .apply(seen(&dep, vec![owned(&owner, true)], &[], false))
            .is_empty());
        assert_eq!(g.node("u1").expect("owner").dependents.len(), 1);
    }

    #[test]
    fn an_unknown_owner_is_verified_and_a_deleted_one_checks_its_dependents() {
        let mut g = Graph::default();
        let owner = id("Thing", Some("a"), "o", "u1");
        let dep = id("ConfigMap", Some("a"), "d", "u2");
        // dependent first: a virtual owner to verify
        assert_eq!(
            g.apply(seen(&dep, vec![owned(&owner, false)], &[], false)),
            vec![Work::Delete("u1".into())]
        );
        assert!(!g.node("u1").expect("virtual").observed);
        assert!(g.apply(seen(&owner, vec![], &[], false)).is_empty());
        assert!(g.node("u1").expect("observed").observed);
        assert_eq!(
            g.apply(Change::Delete { uid: "u1".into() }),
            vec![Work::Delete("u2".into())]
        );
        assert!(g.absent.contains(&owned(&owner, false), Some("a")));
    }

    #[test]
    fn foreground_deletion_checks_dependents_and_waits_for_blocking_ones() {
        let mut g = Graph::default();
        let owner = id("Thing", Some("a"), "o", "u1");
        let blocking = id("ConfigMap", Some("a"), "b", "u2");
        let other = id("ConfigMap", Some("a"), "c", "u3");
        g.apply(seen(&owner, vec![], &[], false));
        g.apply(seen(&blocking, vec![owned(&owner, true)], &[], false));
        g.apply(seen(&other, vec![owned(&owner, false)], &[], false));
        let mut work = g.apply(seen(&owner, vec![], &[FOREGROUND], true));
        work.sort();
        assert_eq!(
            work,
            vec![
                Work::Delete("u1".into()),
                Work::Delete("u2".into()),
                Work::Delete("u3".into())
            ]
        );
        assert_eq!(g.blocking_dependents("u1").len(), 1);
        // seen again: no new transition
        assert!(g
            .apply(seen(&owner, vec![], &[FOREGROUND], true))
            .is_empty());
        // the blocking dependent goes: the owner looks again
        assert_eq!(
            g.apply(Change::Delete { uid: "u2".into() }),
            vec![Work::Delete("u1".into())]
        );
        assert!(g.blocking_dependents("u1").is_empty());
    }

    #[test]
    fn orphan_deletion_is_one_orphan_work() {
        let mut g = Graph::default();
        let owner = id("Thing", Some("a"), "o", "u1");
        g.apply(seen(&owner, vec![], &[], false));
        assert_eq!(
            g.apply(seen(&owner, vec![], &[ORPHAN], true)),
            vec![Work::Orphan("u1".into())]
        );
        assert!(g.apply(seen(&owner, vec![], &[ORPHAN], true)).is_empty());
    }

    #[test]
    fn a_reference_into_another_namespace_is_suspicious() {
        let mut g = Graph::default();
        let owner = id("Thing", Some("a"), "o", "u1");
        let dep = id("ConfigMap", Some("b"), "d", "u2");
        g.apply(seen(&owner, vec![], &[], false));
        assert_eq!(
            g.apply(seen(&dep, vec![owned(&owner, false)], &[], false)),
            vec![Work::Delete("u2".into())]
        );
    }

    #[test]
    fn a_virtual_delete_of_other_coordinates_spares_an_observed_owner() {
        let mut g = Graph::default();
        let owner = id("Thing", Some("a"), "o", "u1");
        let mut wrong = owner.clone();
        wrong.name = "not-o".into();
        let good = id("ConfigMap", Some("a"), "good", "u2");
        let bad = id("ConfigMap", Some("a"), "bad", "u3");
        g.apply(seen(&owner, vec![], &[], false));
        g.apply(seen(&good, vec![owned(&owner, false)], &[], false));
        g.apply(seen(&bad, vec![owned(&wrong, false)], &[], false));
        assert_eq!(
            g.apply(Change::VirtualDelete(wrong)),
            vec![Work::Delete("u3".into())]
        );
        assert!(g.node("u1").is_some());
    }
}
