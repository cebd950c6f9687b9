//! Shared informers: one watch and one indexed cache per kind for the whole
//! controller-manager, as upstream's `SharedInformerFactory` gives its controllers listers.
//!
//! Controllers read what they reconcile from these caches (by namespace, by controller uid,
//! by node, ...) and only write to the API, so a reconcile costs O(its own objects) and no
//! request; the watch's initial LIST and its relists (after a 410 or a broken connection)
//! are the only LISTs a kind costs. The same watch feeds each `Controller`'s triggers
//! ([`Informer::subscribe`]), so N controllers on pods make one pod watch, not N.
//!
//! A cache lags the API, including the controller's own writes: where acting on a lagging
//! cache could double a write that is not idempotent (creating pods with generated names),
//! the controller keeps [`crate::expectations::Expectations`], as upstream's ReplicaSet, Job
//! and DaemonSet controllers do.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
    ReplicationController, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::reflector::{store::Writer, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

/// The secondary indexes a cache keeps (the primary key is namespace/name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Index {
    /// `metadata.namespace`.
    Namespace,
    /// The uid of the controller owner reference.
    Controller,
    /// The namespace of an object without a controller (what may be adopted).
    Orphan,
    /// Pods: `spec.nodeName`.
    Node,
    /// Pods: `<namespace>/<claim>` of each persistentVolumeClaim volume and generic ephemeral
    /// volume (`<pod>-<volume>`).
    Claim,
    /// EndpointSlices: `<namespace>/<kubernetes.io/service-name>`.
    Service,
}

/// A kind that can have a shared informer; `index_keys` adds its kind-specific index keys
/// (every kind is indexed by namespace and controller uid).
pub trait Informed:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    fn index_keys(&self, _out: &mut Vec<(Index, String)>) {}
}

impl Informed for Pod {
    fn index_keys(&self, out: &mut Vec<(Index, String)>) {
        let Some(spec) = self.spec.as_ref() else {
            return;
        };
        if let Some(node) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
            out.push((Index::Node, node.clone()));
        }
        let ns = self.metadata.namespace.as_deref().unwrap_or_default();
        for c in component::volumes::pod_claims(self) {
            out.push((Index::Claim, format!("{ns}/{}", c.name)));
        }
    }
}

impl Informed for EndpointSlice {
    fn index_keys(&self, out: &mut Vec<(Index, String)>) {
        let ns = self.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(svc) = self
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        {
            out.push((Index::Service, format!("{ns}/{svc}")));
        }
    }
}

impl Informed for ReplicaSet {}
impl Informed for ReplicationController {}
impl Informed for Deployment {}
impl Informed for DaemonSet {}
impl Informed for StatefulSet {}
impl Informed for ControllerRevision {}
impl Informed for Job {}
impl Informed for CronJob {}
impl Informed for Node {}
impl Informed for Namespace {}
impl Informed for ConfigMap {}
impl Informed for Secret {}
impl Informed for ResourceQuota {}
impl Informed for Lease {}
impl Informed for Service {}
impl Informed for ServiceAccount {}
impl Informed for PersistentVolume {}
impl Informed for PersistentVolumeClaim {}
impl Informed for StorageClass {}
impl Informed for PodDisruptionBudget {}
impl Informed for k8s_openapi::api::networking::v1::ServiceCIDR {}
impl Informed for k8s_openapi::api::rbac::v1::ClusterRole {}
impl Informed for k8s_openapi::api::networking::v1::IPAddress {}
impl Informed for k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler {}
impl Informed for k8s_openapi::api::resource::v1::ResourceClaim {}
impl Informed for k8s_openapi::api::resource::v1::ResourceClaimTemplate {}

fn index_keys<K: Informed>(obj: &K) -> Vec<(Index, String)> {
    let meta = obj.meta();
    let mut out = Vec::new();
    if let Some(ns) = &meta.namespace {
        out.push((Index::Namespace, ns.clone()));
    }
    match meta
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
    {
        Some(r) => out.push((Index::Controller, r.uid.clone())),
        None => out.push((Index::Orphan, meta.namespace.clone().unwrap_or_default())),
    }
    obj.index_keys(&mut out);
    out
}

/// Called with (old, new) for every change the cache takes in, before the controllers'
/// triggers see it: `(None, Some)` added, `(Some, Some)` updated, `(Some, None)` deleted.
type Handler<K> = Box<dyn Fn(Option<&K>, Option<&K>) + Send + Sync>;

type Buckets<K> = HashMap<(Index, String), HashMap<ObjectRef<K>, Arc<K>>>;

struct Shared<K: Informed> {
    reader: Store<K>,
    index: RwLock<Buckets<K>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Arc<K>>>>,
    handlers: RwLock<Vec<Handler<K>>>,
    synced: tokio::sync::watch::Receiver<bool>,
}

/// One kind's shared, indexed cache (cheap to clone).
pub struct Informer<K: Informed> {
    shared: Arc<Shared<K>>,
}

impl<K: Informed> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            shared: self.shared.clone(),
        }
    }
}

impl<K: Informed> Informer<K> {
    /// The object `namespace/name` (`None` namespace: cluster-scoped), as the cache has it.
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        let mut r = ObjectRef::new(name);
        if let Some(ns) = namespace {
            r = r.within(ns);
        }
        self.shared.reader.get(&r)
    }

    /// The objects whose `index` has `key` (e.g. the pods of one namespace or controller).
    pub fn by(&self, index: Index, key: &str) -> Vec<Arc<K>> {
        let buckets = self
            .shared
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        buckets
            .get(&(index, key.to_string()))
            .map(|b| b.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every cached object.
    pub fn all(&self) -> Vec<Arc<K>> {
        self.shared.reader.state()
    }

    /// The underlying reflector store, for a `Controller` of this kind.
    pub fn store(&self) -> Store<K> {
        self.shared.reader.clone()
    }

    /// Wait until the cache holds the first complete list (upstream's WaitForCacheSync):
    /// a controller that acted on an empty cache would create what already exists.
    pub async fn synced(&self) {
        let mut rx = self.shared.synced.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Every object the cache takes in from now on (current ones first), changed or
    /// deleted, as a `Controller` trigger stream. A changed object whose owner references
    /// changed is also sent as it was, so its former owner hears of it.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded();
        let mut subs = self
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for obj in self.shared.reader.state() {
            let _ = tx.unbounded_send(obj);
        }
        subs.push(tx);
        rx
    }

    /// Run `f(old, new)` on every change, before the triggers are sent.
    pub fn on_change(&self, f: impl Fn(Option<&K>, Option<&K>) + Send + Sync + 'static) {
        self.shared
            .handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(f));
    }
}

impl<K: Informed> Shared<K> {
    fn reindex(&self, key: &ObjectRef<K>, old: Option<&K>, new: Option<&Arc<K>>) {
        let mut buckets = self.index.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = old {
            for k in index_keys(old) {
                if let Some(b) = buckets.get_mut(&k) {
                    b.remove(key);
                    if b.is_empty() {
                        buckets.remove(&k);
                    }
                }
            }
        }
        if let Some(new) = new {
            for k in index_keys(new.as_ref()) {
                buckets
                    .entry(k)
                    .or_default()
                    .insert(key.clone(), new.clone());
            }
        }
    }

    fn rebuild(&self, all: &[Arc<K>]) {
        let mut fresh: Buckets<K> = HashMap::new();
        for obj in all {
            let key = ObjectRef::from_obj(obj.as_ref());
            for k in index_keys(obj.as_ref()) {
                fresh.entry(k).or_default().insert(key.clone(), obj.clone());
            }
        }
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = fresh;
    }

    fn notify(&self, old: Option<Arc<K>>, new: Option<Arc<K>>) {
        for h in self
            .handlers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            h(old.as_deref(), new.as_deref());
        }
        let mut send: Vec<Arc<K>> = Vec::with_capacity(2);
        match (old, new) {
            (old, Some(new)) => {
                if let Some(old) =
                    old.filter(|o| o.meta().owner_references != new.meta().owner_references)
                {
                    send.push(old);
                }
                send.push(new);
            }
            (Some(old), None) => send.push(old),
            (None, None) => {}
        }
        let mut subs = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for obj in send {
            subs.retain(|s| s.unbounded_send(obj.clone()).is_ok());
        }
    }
}

/// Feed one kind's watch into its store, indexes, handlers and subscribers.
async fn reflect<K: Informed>(
    api: Api<K>,
    mut writer: Writer<K>,
    shared: Arc<Shared<K>>,
    synced: tokio::sync::watch::Sender<bool>,
    shutdown: component::CancellationToken,
) {
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = events.next() => next,
        };
        let event = match next {
            None => return,
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                tracing::debug!(kind = %K::kind(&()), error = %e, "informer watch failed; retrying");
                continue;
            }
        };
        match &event {
            watcher::Event::Apply(obj) => {
                let key = ObjectRef::from_obj(obj);
                let old = shared.reader.get(&key);
                writer.apply_watcher_event(&event);
                let new = shared.reader.get(&key);
                shared.reindex(&key, old.as_deref(), new.as_ref());
                shared.notify(old, new);
            }
            watcher::Event::Delete(obj) => {
                let key = ObjectRef::from_obj(obj);
                let old = shared
                    .reader
                    .get(&key)
                    .unwrap_or_else(|| Arc::new(obj.clone()));
                writer.apply_watcher_event(&event);
                shared.reindex(&key, Some(old.as_ref()), None);
                shared.notify(Some(old), None);
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {
                writer.apply_watcher_event(&event);
            }
            watcher::Event::InitDone => {
                // A (re)list replaces the cache whole: what changed or went while the watch
                // was down is reported like any change (upstream's relist does the same).
                let mut before: HashMap<ObjectRef<K>, Arc<K>> = shared
                    .reader
                    .state()
                    .into_iter()
                    .map(|o| (ObjectRef::from_obj(o.as_ref()), o))
                    .collect();
                writer.apply_watcher_event(&event);
                let after = shared.reader.state();
                shared.rebuild(&after);
                synced.send_replace(true);
                for obj in after {
                    let old = before.remove(&ObjectRef::from_obj(obj.as_ref()));
                    let same = old
                        .as_ref()
                        .is_some_and(|o| o.meta().resource_version == obj.meta().resource_version);
                    if !same {
                        shared.notify(old, Some(obj));
                    }
                }
                for (_, gone) in before {
                    shared.notify(Some(gone), None);
                }
            }
        }
    }
}

/// Wait for `caches` to be synced; false if `shutdown` came first.
pub async fn wait_synced(
    shutdown: &component::CancellationToken,
    caches: impl std::future::Future<Output = ()>,
) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = caches => true,
    }
}

/// The informers of one controller-manager: each kind's watch starts when a controller
/// first asks for it and stops at `shutdown`.
#[derive(Clone)]
pub struct Informers {
    client: Client,
    shutdown: component::CancellationToken,
    kinds: Arc<Mutex<HashMap<TypeId, Box<dyn Any + Send + Sync>>>>,
}

impl Informers {
    pub fn new(client: Client, shutdown: component::CancellationToken) -> Informers {
        Informers {
            client,
            shutdown,
            kinds: Default::default(),
        }
    }

    /// The shared informer of `K`, started on first use.
    pub fn get<K: Informed>(&self) -> Informer<K> {
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = kinds
            .get(&TypeId::of::<K>())
            .and_then(|i| i.downcast_ref::<Informer<K>>())
        {
            return i.clone();
        }
        let writer: Writer<K> = Writer::default();
        let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            reader: writer.as_reader(),
            index: Default::default(),
            subscribers: Default::default(),
            handlers: Default::default(),
            synced: synced_rx,
        });
        tokio::spawn(reflect(
            Api::<K>::all(self.client.clone()),
            writer,
            shared.clone(),
            synced_tx,
            self.shutdown.clone(),
        ));
        let informer = Informer { shared };
        kinds.insert(TypeId::of::<K>(), Box::new(informer.clone()));
        informer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, owner: &str, terminating: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "default",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                     "uid": owner, "controller": true}],
                "deletionTimestamp": if terminating { Some("2024-01-01T00:00:00Z") } else { None },
            },
            "spec": {"nodeName": "n1", "containers": [],
                     "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]},
        }))
        .expect("pod")
    }

    #[test]
    fn pods_are_indexed_by_namespace_controller_node_and_claim() {
        let keys = index_keys(&pod("a", "u1", false));
        assert!(keys.contains(&(Index::Namespace, "default".into())));
        assert!(keys.contains(&(Index::Controller, "u1".into())));
        assert!(keys.contains(&(Index::Node, "n1".into())));
        assert!(keys.contains(&(Index::Claim, "default/data".into())));
    }
}
