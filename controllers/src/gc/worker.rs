//! One work item's run (upstream's attemptToDeleteItem and attemptToOrphan): the API calls
//! that confirm and carry out a deletion or an orphaning. Up to `--concurrent-gc-syncs`
//! runs go at once. A run reads the graph under its lock (never across a request) and
//! changes it only through the absent-owner cache; what else it finds (work to queue, an
//! object the API does not have) goes back to the collector's loop in its [`Report`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::Client;
use serde_json::json;

use super::graph::{self, Graph, Identity, Work, FOREGROUND, ORPHAN};
use super::sources::Kinds;

pub enum Outcome {
    Done,
    Retry,
}

/// What a run tells the loop.
pub struct Report {
    pub outcome: Outcome,
    /// Work the run found (an owner in the foreground pushes its dependents along).
    pub enqueue: Vec<Work>,
    /// The API has no object at these coordinates: a virtual delete for the graph.
    pub absent: Option<Identity>,
}

impl From<Outcome> for Report {
    fn from(outcome: Outcome) -> Report {
        Report {
            outcome,
            enqueue: Vec::new(),
            absent: None,
        }
    }
}

#[derive(Debug)]
enum Lookup {
    /// The kind is not (yet) known to discovery.
    Unknown(String),
    /// A cluster-scoped object names a namespaced owner: never valid, not retried.
    NamespacedOwnerOfClusterScoped,
    Api(kube::Error),
    /// A patch kept meeting newer versions.
    Conflicts,
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn lookup_failed(id: &Identity, e: Lookup) -> Outcome {
    match e {
        Lookup::NamespacedOwnerOfClusterScoped => {
            tracing::info!(item = %id, "cluster-scoped object refers to a namespaced owner; not collected");
            Outcome::Done
        }
        Lookup::Unknown(kind) => {
            tracing::debug!(item = %id, %kind, "owner of a kind discovery does not know (yet); retrying");
            Outcome::Retry
        }
        Lookup::Api(e) => {
            tracing::debug!(item = %id, error = %e, "garbage collector request failed; retrying");
            Outcome::Retry
        }
        Lookup::Conflicts => Outcome::Retry,
    }
}

/// What a run needs; cheap to clone, one per run.
#[derive(Clone)]
pub struct Worker {
    pub client: Client,
    pub graph: Arc<Mutex<Graph>>,
    /// How to reach each kind, as discovery last said when the run started.
    pub kinds: Arc<Kinds>,
}

impl Worker {
    pub async fn run(self, work: Work) -> Report {
        match &work {
            Work::Delete(uid) => self.attempt_to_delete(uid).await,
            Work::Orphan(uid) => self.attempt_to_orphan(uid).await.into(),
        }
    }

    /// The graph, for a moment: the guard must not be held across a request.
    fn graph(&self) -> MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn api(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
    ) -> Result<(Api<DynamicObject>, bool), Lookup> {
        let k = self
            .kinds
            .get(&(api_version.to_string(), kind.to_string()))
            .ok_or_else(|| Lookup::Unknown(format!("{kind}.{api_version}")))?;
        let api = match (k.namespaced, ns) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &k.ar),
            (true, None) => return Err(Lookup::NamespacedOwnerOfClusterScoped),
            (false, _) => Api::all_with(self.client.clone(), &k.ar),
        };
        Ok((api, k.namespaced))
    }

    /// The object at `id`'s coordinates, live (`None`: not there, or another uid there).
    async fn get(&self, id: &Identity) -> Result<Option<ObjectMeta>, Lookup> {
        let (api, _) = self.api(&id.api_version, &id.kind, id.namespace.as_deref())?;
        match api.get_metadata_opt(&id.name).await {
            Ok(Some(m)) if m.metadata.uid.as_deref() == Some(id.uid.as_str()) => {
                Ok(Some(m.metadata))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(Lookup::Api(e)),
        }
    }

    /// Whether `r`, an owner reference of `item`, names an object that is not there
    /// (upstream's isDangling): `Ok(None)` dangling, else the owner as it is now.
    async fn owner(
        &self,
        r: &OwnerReference,
        item: &Identity,
    ) -> Result<Option<ObjectMeta>, Lookup> {
        let ns = item.namespace.as_deref();
        {
            let g = self.graph();
            if g.absent.contains(r, None) || g.absent.contains(r, ns) {
                return Ok(None);
            }
        }
        let (api, namespaced) = self.api(&r.api_version, &r.kind, ns)?;
        let absent_ns = if namespaced { ns } else { None };
        match api.get_metadata_opt(&r.name).await {
            Ok(Some(m)) if m.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                Ok(Some(m.metadata))
            }
            Ok(_) => {
                self.graph().absent.add(r, absent_ns);
                Ok(None)
            }
            Err(e) => Err(Lookup::Api(e)),
        }
    }

    /// upstream's attemptToDeleteItem.
    async fn attempt_to_delete(&self, uid: &str) -> Report {
        let Some(node) = self.graph().node(uid).cloned() else {
            return Outcome::Done.into();
        };
        // being deleted is a one-way trip: wait for the delete event
        if node.observed && node.being_deleted && !node.deleting_dependents {
            return Outcome::Done.into();
        }
        let latest = match self.get(&node.identity).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Report {
                    absent: Some(node.identity.clone()),
                    ..Outcome::Done.into()
                }
            }
            Err(e) => return lookup_failed(&node.identity, e).into(),
        };
        let unobserved = || {
            if node.observed {
                Outcome::Done
            } else {
                // a virtual node is looked at again until a watch reports it (kubernetes#56121)
                Outcome::Retry
            }
        };
        if node.deleting_dependents {
            return self.deleting_dependents(&node).await;
        }
        let refs = latest.owner_references.clone().unwrap_or_default();
        if refs.is_empty() {
            return unobserved().into();
        }
        let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for r in &refs {
            match self.owner(r, &node.identity).await {
                Ok(None) => dangling.push(r.uid.clone()),
                Ok(Some(owner)) => {
                    let fg = owner.finalizers.iter().flatten().any(|f| f == FOREGROUND);
                    if owner.deletion_timestamp.is_some() && fg {
                        waiting.push(r.uid.clone());
                    } else {
                        solid.push(r.uid.clone());
                    }
                }
                Err(e) => return lookup_failed(&node.identity, e).into(),
            }
        }
        let result = if !solid.is_empty() {
            if dangling.is_empty() && waiting.is_empty() {
                return unobserved().into();
            }
            // a live owner keeps the object; references to gone owners and to owners
            // waiting for their dependents go, or those owners would wait forever
            let drop: Vec<String> = dangling.into_iter().chain(waiting).collect();
            tracing::info!(item = %node.identity, owners = ?drop, "removing dangling owner references");
            self.remove_references(&node.identity, &drop).await
        } else if !waiting.is_empty() && !node.dependents.is_empty() {
            // an owner waits in the foreground and this has dependents of its own: the
            // same way down (references to owners that in turn wait are made non-blocking
            // to avoid cycles, as upstream does)
            let cycle = {
                let g = self.graph();
                node.dependents
                    .iter()
                    .any(|d| g.node(d).is_some_and(|d| d.deleting_dependents))
            };
            if cycle {
                if let Err(e) = self.unblock(&node.identity).await {
                    return lookup_failed(&node.identity, e).into();
                }
            }
            self.delete(&node.identity, PropagationPolicy::Foreground)
                .await
        } else {
            let has = |f: &str| latest.finalizers.iter().flatten().any(|x| x == f);
            let policy = if has(ORPHAN) {
                PropagationPolicy::Orphan
            } else if has(FOREGROUND) {
                PropagationPolicy::Foreground
            } else {
                PropagationPolicy::Background
            };
            self.delete(&node.identity, policy).await
        };
        match result {
            Ok(()) => unobserved().into(),
            Err(e) => lookup_failed(&node.identity, e).into(),
        }
    }

    /// An owner deleted in the foreground: done once no blocking dependent is left, else
    /// its dependents are pushed along (upstream's processDeletingDependentsItem).
    async fn deleting_dependents(&self, node: &graph::Node) -> Report {
        let uid = &node.identity.uid;
        let blocking: Vec<(String, bool)> = self
            .graph()
            .blocking_dependents(uid)
            .iter()
            .map(|d| (d.identity.uid.clone(), d.deleting_dependents))
            .collect();
        if blocking.is_empty() {
            tracing::info!(item = %node.identity, "dependents gone; removing foregroundDeletion");
            return match self.remove_finalizer(&node.identity, FOREGROUND).await {
                Ok(()) => Outcome::Done,
                Err(e) => lookup_failed(&node.identity, e),
            }
            .into();
        }
        Report {
            enqueue: blocking
                .into_iter()
                .filter(|(_, deleting)| !deleting)
                .map(|(dep, _)| Work::Delete(dep))
                .collect(),
            ..Outcome::Done.into()
        }
    }

    async fn delete(&self, id: &Identity, policy: PropagationPolicy) -> Result<(), Lookup> {
        let (api, _) = self.api(&id.api_version, &id.kind, id.namespace.as_deref())?;
        let dp = DeleteParams {
            propagation_policy: Some(policy.clone()),
            preconditions: Some(Preconditions {
                uid: Some(id.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&id.name, &dp).await {
            Ok(_) => {
                tracing::info!(item = %id, ?policy, "garbage collected: owners gone");
                Ok(())
            }
            // gone already, or another object of that name now
            Err(e) if is_not_found(&e) || is_conflict(&e) => Ok(()),
            Err(e) => Err(Lookup::Api(e)),
        }
    }

    /// Merge-patch `id`'s metadata at its current resourceVersion, computed from the live
    /// object by `f` (`None`: nothing to change); retried on conflicts.
    async fn patch_meta(
        &self,
        id: &Identity,
        f: impl Fn(&ObjectMeta) -> Option<serde_json::Value>,
    ) -> Result<(), Lookup> {
        let (api, _) = self.api(&id.api_version, &id.kind, id.namespace.as_deref())?;
        for _ in 0..5 {
            let meta = match api.get_metadata_opt(&id.name).await {
                Ok(Some(m)) if m.metadata.uid.as_deref() == Some(id.uid.as_str()) => m.metadata,
                Ok(_) => return Ok(()),
                Err(e) => return Err(Lookup::Api(e)),
            };
            let Some(mut patch) = f(&meta) else {
                return Ok(());
            };
            patch["resourceVersion"] = json!(meta.resource_version);
            let body = json!({ "metadata": patch });
            match api
                .patch(&id.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(Lookup::Api(e)),
            }
        }
        Err(Lookup::Conflicts)
    }

    async fn remove_references(&self, id: &Identity, owners: &[String]) -> Result<(), Lookup> {
        self.patch_meta(id, |meta| {
            let refs = meta.owner_references.clone().unwrap_or_default();
            let kept: Vec<&OwnerReference> =
                refs.iter().filter(|r| !owners.contains(&r.uid)).collect();
            (kept.len() != refs.len()).then(|| json!({ "ownerReferences": kept }))
        })
        .await
    }

    /// Make `id`'s references to owners waiting in the foreground non-blocking.
    async fn unblock(&self, id: &Identity) -> Result<(), Lookup> {
        self.patch_meta(id, |meta| {
            let mut refs = meta.owner_references.clone().unwrap_or_default();
            let mut changed = false;
            for r in refs
                .iter_mut()
                .filter(|r| r.block_owner_deletion == Some(true))
            {
                r.block_owner_deletion = Some(false);
                changed = true;
            }
            changed.then(|| json!({ "ownerReferences": refs }))
        })
        .await
    }

    async fn remove_finalizer(&self, id: &Identity, finalizer: &str) -> Result<(), Lookup> {
        self.patch_meta(id, |meta| {
            let fs = meta.finalizers.clone().unwrap_or_default();
            let kept: Vec<&String> = fs.iter().filter(|f| *f != finalizer).collect();
            (kept.len() != fs.len()).then(|| json!({ "finalizers": kept }))
        })
        .await
    }

    /// upstream's attemptToOrphanWorker: the dependents lose their references to the
    /// owner, then the owner its `orphan` finalizer.
    async fn attempt_to_orphan(&self, uid: &str) -> Outcome {
        let Some(node) = self.graph().node(uid).cloned() else {
            return Outcome::Done;
        };
        let owner = [uid.to_string()];
        for dep in &node.dependents {
            let Some(d) = self.graph().node(dep).map(|d| d.identity.clone()) else {
                continue;
            };
            if let Err(e) = self.remove_references(&d, &owner).await {
                return lookup_failed(&d, e);
            }
        }
        match self.remove_finalizer(&node.identity, ORPHAN).await {
            Ok(()) => {
                tracing::info!(item = %node.identity, dependents = node.dependents.len(), "dependents orphaned");
                Outcome::Done
            }
            Err(e) => lookup_failed(&node.identity, e),
        }
    }
}
