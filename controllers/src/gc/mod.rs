//! The garbage collector for ownerReferences, as upstream's: an object whose owners are all
//! gone is deleted (background cascading); an owner deleted with the `foregroundDeletion`
//! finalizer keeps it until its blocking dependents are gone; one with the `orphan`
//! finalizer has its dependents' references to it removed first.
//!
//! Event-driven like upstream's: a dependency graph ([`graph`]) is kept from the watches of
//! every deletable resource discovery finds ([`sources`], re-discovered every 30 s, custom
//! resources included), and only what an event touches is looked at. Nothing is swept
//! periodically: with no changes the collector does no work and sends no request
//! ([`objects_visited`] counts what it looks at). Before deleting, the collector confirms
//! with live GETs that the object is still there and its owners are not (upstream's
//! attemptToDeleteItem), because a watch can lag behind a freshly created owner.
//!
//! Namespaces follow upstream: a namespaced owner is looked for in its dependent's
//! namespace only, so a reference into another namespace is an absent owner; a
//! cluster-scoped dependent naming a namespaced owner is never collected on its account.

pub mod graph;
mod sources;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::Client;
use serde_json::json;
use tokio::time::Instant;

use crate::Ctx;
use graph::{Change, Graph, Identity, Work, FOREGROUND, ORPHAN};
use sources::{Event, Sources};

/// How often discovery is asked for new resources (upstream's controller-manager: 30 s).
const DISCOVERY_PERIOD: Duration = Duration::from_secs(30);
/// How long workers wait for newly followed resources' first lists before acting anyway.
const SYNC_WAIT: Duration = Duration::from_secs(30);

static VISITED: AtomicU64 = AtomicU64::new(0);

/// How many graph changes and work items the collectors of this process have looked at:
/// it stays put while nothing changes (there is no periodic sweep). Process-wide, for tests.
pub fn objects_visited() -> u64 {
    VISITED.load(Ordering::Relaxed)
}

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let (tx, mut rx) = futures::channel::mpsc::unbounded();
    let mut sources = Sources::new(
        ctx.client.clone(),
        ctx.informers.clone(),
        tx,
        shutdown.clone(),
    );
    let mut gc = Collector {
        client: ctx.client.clone(),
        graph: Graph::default(),
        queue: Queue::default(),
        unsynced: HashMap::new(),
    };
    let now = Instant::now();
    for k in sources.start_shared() {
        gc.unsynced.insert(k, now);
    }
    let mut next_discovery = Instant::now();
    loop {
        if Instant::now() >= next_discovery {
            next_discovery = Instant::now() + DISCOVERY_PERIOD;
            match sources.discover().await {
                Ok(started) if !started.is_empty() => {
                    let now = Instant::now();
                    for k in started {
                        gc.unsynced.insert(k, now);
                    }
                    // owners of kinds just learnt can be looked up now
                    for uid in gc.graph.virtual_nodes() {
                        gc.queue.retry_now(Work::Delete(uid));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collector discovery failed; retrying");
                    next_discovery = Instant::now() + Duration::from_secs(5);
                }
            }
        }
        // take in every change that is there before acting on any
        while let Ok(ev) = rx.try_recv() {
            gc.event(ev);
        }
        gc.queue.promote(Instant::now());
        if gc.ready() {
            if let Some(work) = gc.queue.pop() {
                VISITED.fetch_add(1, Ordering::Relaxed);
                let outcome = match &work {
                    Work::Delete(uid) => gc.attempt_to_delete(uid, &sources).await,
                    Work::Orphan(uid) => gc.attempt_to_orphan(uid, &sources).await,
                };
                match outcome {
                    Outcome::Done => gc.queue.forget(&work),
                    Outcome::Retry => gc.queue.retry(work),
                }
                continue;
            }
        }
        let mut wake = next_discovery;
        if let Some(due) = gc.queue.next_due() {
            wake = wake.min(due);
        }
        if let Some(t) = gc.unsynced.values().min() {
            wake = wake.min(*t + SYNC_WAIT);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = rx.next() => match ev {
                Some(ev) => gc.event(ev),
                None => return,
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

enum Outcome {
    Done,
    Retry,
}

/// Work queued by uid, each item once, retried with a growing delay (upstream's rate-limited
/// workqueue: 5 ms doubling; here 50 ms doubling up to 5 min).
#[derive(Default)]
struct Queue {
    ready: VecDeque<Work>,
    queued: HashSet<Work>,
    delayed: BTreeMap<(Instant, u64), Work>,
    failures: HashMap<Work, u32>,
    seq: u64,
}

impl Queue {
    fn add(&mut self, w: Work) {
        if self.queued.insert(w.clone()) {
            self.ready.push_back(w);
        }
    }

    fn pop(&mut self) -> Option<Work> {
        let w = self.ready.pop_front()?;
        self.queued.remove(&w);
        Some(w)
    }

    fn forget(&mut self, w: &Work) {
        self.failures.remove(w);
    }

    fn retry(&mut self, w: Work) {
        let n = self.failures.entry(w.clone()).or_insert(0);
        *n += 1;
        let delay = Duration::from_millis(50)
            .saturating_mul(1 << (*n - 1).min(13))
            .min(Duration::from_secs(300));
        self.seq += 1;
        self.delayed.insert((Instant::now() + delay, self.seq), w);
    }

    fn retry_now(&mut self, w: Work) {
        self.failures.remove(&w);
        self.add(w);
    }

    fn promote(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let w = entry.remove();
            self.add(w);
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.delayed.keys().next().map(|(t, _)| *t)
    }
}

struct Collector {
    client: Client,
    graph: Graph,
    queue: Queue,
    /// Followed resources whose first list has not arrived, since when.
    unsynced: HashMap<String, Instant>,
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

impl Collector {
    fn event(&mut self, ev: Event) {
        match ev {
            Event::Synced(k) => {
                self.unsynced.remove(&k);
            }
            Event::Change(c) => {
                VISITED.fetch_add(1, Ordering::Relaxed);
                for w in self.graph.apply(c) {
                    self.queue.add(w);
                }
            }
        }
    }

    /// Workers act once the followed resources have listed (upstream waits for its
    /// monitors' caches), or after [`SYNC_WAIT`] for one that does not.
    fn ready(&self) -> bool {
        self.unsynced.values().all(|t| t.elapsed() >= SYNC_WAIT)
    }

    fn api(
        &self,
        sources: &Sources,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
    ) -> Result<(Api<DynamicObject>, bool), Lookup> {
        let k = sources
            .kind(api_version, kind)
            .ok_or_else(|| Lookup::Unknown(format!("{kind}.{api_version}")))?;
        let api = match (k.namespaced, ns) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &k.ar),
            (true, None) => return Err(Lookup::NamespacedOwnerOfClusterScoped),
            (false, _) => Api::all_with(self.client.clone(), &k.ar),
        };
        Ok((api, k.namespaced))
    }

    /// The object at `id`'s coordinates, live (`None`: not there, or another uid there).
    async fn get(&self, sources: &Sources, id: &Identity) -> Result<Option<ObjectMeta>, Lookup> {
        let (api, _) = self.api(sources, &id.api_version, &id.kind, id.namespace.as_deref())?;
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
        &mut self,
        sources: &Sources,
        r: &OwnerReference,
        item: &Identity,
    ) -> Result<Option<ObjectMeta>, Lookup> {
        let ns = item.namespace.as_deref();
        if self.graph.absent.contains(r, None) || self.graph.absent.contains(r, ns) {
            return Ok(None);
        }
        let (api, namespaced) = self.api(sources, &r.api_version, &r.kind, ns)?;
        let absent_ns = if namespaced { ns } else { None };
        match api.get_metadata_opt(&r.name).await {
            Ok(Some(m)) if m.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                Ok(Some(m.metadata))
            }
            Ok(_) => {
                self.graph.absent.add(r, absent_ns);
                Ok(None)
            }
            Err(e) => Err(Lookup::Api(e)),
        }
    }

    fn lookup_failed(&self, id: &Identity, e: Lookup) -> Outcome {
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

    /// upstream's attemptToDeleteItem.
    async fn attempt_to_delete(&mut self, uid: &str, sources: &Sources) -> Outcome {
        let Some(node) = self.graph.node(uid).cloned() else {
            return Outcome::Done;
        };
        // being deleted is a one-way trip: wait for the delete event
        if node.observed && node.being_deleted && !node.deleting_dependents {
            return Outcome::Done;
        }
        let latest = match self.get(sources, &node.identity).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                for w in self
                    .graph
                    .apply(Change::VirtualDelete(node.identity.clone()))
                {
                    self.queue.add(w);
                }
                return Outcome::Done;
            }
            Err(e) => return self.lookup_failed(&node.identity, e),
        };
        let unobserved = if node.observed {
            Outcome::Done
        } else {
            // a virtual node is looked at again until a watch reports it (kubernetes#56121)
            Outcome::Retry
        };
        if node.deleting_dependents {
            return self.deleting_dependents(sources, &node).await;
        }
        let refs = latest.owner_references.clone().unwrap_or_default();
        if refs.is_empty() {
            return unobserved;
        }
        let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for r in &refs {
            match self.owner(sources, r, &node.identity).await {
                Ok(None) => dangling.push(r.uid.clone()),
                Ok(Some(owner)) => {
                    let fg = owner.finalizers.iter().flatten().any(|f| f == FOREGROUND);
                    if owner.deletion_timestamp.is_some() && fg {
                        waiting.push(r.uid.clone());
                    } else {
                        solid.push(r.uid.clone());
                    }
                }
                Err(e) => return self.lookup_failed(&node.identity, e),
            }
        }
        let result = if !solid.is_empty() {
            if dangling.is_empty() && waiting.is_empty() {
                return unobserved;
            }
            // a live owner keeps the object; references to gone owners and to owners
            // waiting for their dependents go, or those owners would wait forever
            let drop: Vec<String> = dangling.into_iter().chain(waiting).collect();
            tracing::info!(item = %node.identity, owners = ?drop, "removing dangling owner references");
            self.remove_references(sources, &node.identity, &drop).await
        } else if !waiting.is_empty() && !node.dependents.is_empty() {
            // an owner waits in the foreground and this has dependents of its own: the
            // same way down (references to owners that in turn wait are made non-blocking
            // to avoid cycles, as upstream does)
            let cycle = node
                .dependents
                .iter()
                .any(|d| self.graph.node(d).is_some_and(|d| d.deleting_dependents));
            if cycle {
                if let Err(e) = self.unblock(sources, &node.identity).await {
                    return self.lookup_failed(&node.identity, e);
                }
            }
            self.delete(sources, &node.identity, PropagationPolicy::Foreground)
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
            self.delete(sources, &node.identity, policy).await
        };
        match result {
            Ok(()) => unobserved,
            Err(e) => self.lookup_failed(&node.identity, e),
        }
    }

    /// An owner deleted in the foreground: done once no blocking dependent is left, else
    /// its dependents are pushed along (upstream's processDeletingDependentsItem).
    async fn deleting_dependents(&mut self, sources: &Sources, node: &graph::Node) -> Outcome {
        let uid = &node.identity.uid;
        let blocking: Vec<(String, bool)> = self
            .graph
            .blocking_dependents(uid)
            .iter()
            .map(|d| (d.identity.uid.clone(), d.deleting_dependents))
            .collect();
        if blocking.is_empty() {
            tracing::info!(item = %node.identity, "dependents gone; removing foregroundDeletion");
            return match self
                .remove_finalizer(sources, &node.identity, FOREGROUND)
                .await
            {
                Ok(()) => Outcome::Done,
                Err(e) => self.lookup_failed(&node.identity, e),
            };
        }
        for (dep, deleting) in blocking {
            if !deleting {
                self.queue.add(Work::Delete(dep));
            }
        }
        Outcome::Done
    }

    async fn delete(
        &self,
        sources: &Sources,
        id: &Identity,
        policy: PropagationPolicy,
    ) -> Result<(), Lookup> {
        let (api, _) = self.api(sources, &id.api_version, &id.kind, id.namespace.as_deref())?;
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
        sources: &Sources,
        id: &Identity,
        f: impl Fn(&ObjectMeta) -> Option<serde_json::Value>,
    ) -> Result<(), Lookup> {
        let (api, _) = self.api(sources, &id.api_version, &id.kind, id.namespace.as_deref())?;
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

    async fn remove_references(
        &self,
        sources: &Sources,
        id: &Identity,
        owners: &[String],
    ) -> Result<(), Lookup> {
        self.patch_meta(sources, id, |meta| {
            let refs = meta.owner_references.clone().unwrap_or_default();
            let kept: Vec<&OwnerReference> =
                refs.iter().filter(|r| !owners.contains(&r.uid)).collect();
            (kept.len() != refs.len()).then(|| json!({ "ownerReferences": kept }))
        })
        .await
    }

    /// Make `id`'s references to owners waiting in the foreground non-blocking.
    async fn unblock(&self, sources: &Sources, id: &Identity) -> Result<(), Lookup> {
        self.patch_meta(sources, id, |meta| {
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

    async fn remove_finalizer(
        &self,
        sources: &Sources,
        id: &Identity,
        finalizer: &str,
    ) -> Result<(), Lookup> {
        self.patch_meta(sources, id, |meta| {
            let fs = meta.finalizers.clone().unwrap_or_default();
            let kept: Vec<&String> = fs.iter().filter(|f| *f != finalizer).collect();
            (kept.len() != fs.len()).then(|| json!({ "finalizers": kept }))
        })
        .await
    }

    /// upstream's attemptToOrphanWorker: the dependents lose their references to the
    /// owner, then the owner its `orphan` finalizer.
    async fn attempt_to_orphan(&mut self, uid: &str, sources: &Sources) -> Outcome {
        let Some(node) = self.graph.node(uid).cloned() else {
            return Outcome::Done;
        };
        let owner = [uid.to_string()];
        for dep in &node.dependents {
            let Some(d) = self.graph.node(dep).map(|d| d.identity.clone()) else {
                continue;
            };
            if let Err(e) = self.remove_references(sources, &d, &owner).await {
                return self.lookup_failed(&d, e);
            }
        }
        match self.remove_finalizer(sources, &node.identity, ORPHAN).await {
            Ok(()) => {
                tracing::info!(item = %node.identity, dependents = node.dependents.len(), "dependents orphaned");
                Outcome::Done
            }
            Err(e) => self.lookup_failed(&node.identity, e),
        }
    }
}
