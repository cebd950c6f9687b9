//! Where the graph's events come from: every resource discovery finds that can be listed,
//! watched and deleted (upstream's GetDeletableResources, events excepted), re-discovered
//! every 30 s so kinds added later (custom resources) are followed too. Kinds the shared
//! informers already serve are followed through them (one watch per kind for the whole
//! controller-manager); every other kind gets a metadata-only watch of its own.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use futures::channel::mpsc::UnboundedSender;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
    ReplicationController, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;

use super::graph::{Change, Identity, Observed};
use crate::informers::{Informed, Informers};

/// What the collector's loop hears: graph changes, and a source's first complete list.
#[derive(Debug)]
pub enum Event {
    Change(Change),
    Synced(String),
}

pub type Tx = UnboundedSender<Event>;

/// A resource as the collector reaches it: `(apiVersion, kind)` -> where and how scoped.
#[derive(Debug, Clone)]
pub struct Kind {
    pub ar: ApiResource,
    pub namespaced: bool,
}

/// How to reach every kind discovery knows: `(apiVersion, kind)` -> the resource.
pub type Kinds = HashMap<(String, String), Kind>;

/// `group/plural`, the key of a followed resource.
pub fn key(ar: &ApiResource) -> String {
    format!("{}/{}", ar.group, ar.plural)
}

fn observed(api_version: &str, kind: &str, meta: &ObjectMeta) -> Option<Observed> {
    Some(Observed {
        identity: Identity {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            namespace: meta.namespace.clone().filter(|ns| !ns.is_empty()),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone()?,
        },
        owners: meta.owner_references.clone().unwrap_or_default(),
        finalizers: meta.finalizers.clone().unwrap_or_default(),
        deleting: meta.deletion_timestamp.is_some(),
    })
}

type Start = fn(&Informers, Tx, String);

/// Follow `K` through its shared informer: its changes from now on, and what it holds now.
fn shared<K: Informed>(informers: &Informers, tx: Tx, source: String) {
    let informer = informers.get::<K>();
    let (api_version, kind) = (K::api_version(&()).to_string(), K::kind(&()).to_string());
    // The replay and the changes go out under one lock, so a change that happens during
    // the replay comes after it (a deleted object is never replayed after its delete).
    let order = Arc::new(Mutex::new(()));
    {
        let (tx, order) = (tx.clone(), order.clone());
        let (api_version, kind) = (api_version.clone(), kind.clone());
        informer.on_change(move |old: Option<&K>, new: Option<&K>| {
            let _g = order.lock().unwrap_or_else(PoisonError::into_inner);
            let change = match (old, new) {
                (_, Some(new)) => observed(&api_version, &kind, new.meta()).map(Change::Upsert),
                (Some(old), None) => old.meta().uid.clone().map(|uid| Change::Delete { uid }),
                (None, None) => None,
            };
            if let Some(c) = change {
                let _ = tx.unbounded_send(Event::Change(c));
            }
        });
    }
    {
        let _g = order.lock().unwrap_or_else(PoisonError::into_inner);
        for obj in informer.all() {
            if let Some(o) = observed(&api_version, &kind, obj.meta()) {
                let _ = tx.unbounded_send(Event::Change(Change::Upsert(o)));
            }
        }
    }
    tokio::spawn(async move {
        informer.synced().await;
        let _ = tx.unbounded_send(Event::Synced(source));
    });
}

fn shared_kind<K: Informed>(namespaced: bool) -> (ApiResource, bool, Start) {
    (ApiResource::erase::<K>(&()), namespaced, shared::<K>)
}

/// The kinds the shared informers serve (the other controllers read them anyway; upstream's
/// collector too follows built-in kinds through the shared informer factory).
fn shared_kinds() -> Vec<(ApiResource, bool, Start)> {
    vec![
        shared_kind::<Deployment>(true),
        shared_kind::<ReplicaSet>(true),
        shared_kind::<DaemonSet>(true),
        shared_kind::<StatefulSet>(true),
        shared_kind::<ControllerRevision>(true),
        shared_kind::<ReplicationController>(true),
        shared_kind::<Pod>(true),
        shared_kind::<Service>(true),
        shared_kind::<ConfigMap>(true),
        shared_kind::<Secret>(true),
        shared_kind::<PersistentVolumeClaim>(true),
        shared_kind::<Node>(false),
        shared_kind::<EndpointSlice>(true),
        shared_kind::<Job>(true),
        shared_kind::<CronJob>(true),
        shared_kind::<Namespace>(false),
        shared_kind::<ResourceQuota>(true),
        shared_kind::<Lease>(true),
        shared_kind::<ServiceAccount>(true),
        shared_kind::<PersistentVolume>(false),
        shared_kind::<StorageClass>(false),
        shared_kind::<PodDisruptionBudget>(true),
        shared_kind::<HorizontalPodAutoscaler>(true),
    ]
}

/// A metadata-only watch of one resource; a relist reports what went meanwhile as deleted.
async fn dynamic(
    client: Client,
    kind: Kind,
    tx: Tx,
    source: String,
    stop: component::CancellationToken,
) {
    // metadata only: the collector needs no more of the objects it does not own a cache of
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &kind.ar);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let (mut known, mut listing) = (HashSet::<String>::new(), HashSet::<String>::new());
    let send = |c: Change| tx.unbounded_send(Event::Change(c)).is_ok();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = events.next() => next,
        };
        let event = match next {
            None => return,
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                tracing::debug!(resource = %source, error = %e, "garbage collector watch failed; retrying");
                continue;
            }
        };
        let ok = match event {
            watcher::Event::Init => {
                listing.clear();
                true
            }
            watcher::Event::InitApply(m) | watcher::Event::Apply(m) => {
                match observed(&kind.ar.api_version, &kind.ar.kind, &m.metadata) {
                    Some(o) => {
                        listing.insert(o.identity.uid.clone());
                        known.insert(o.identity.uid.clone());
                        send(Change::Upsert(o))
                    }
                    None => true,
                }
            }
            watcher::Event::Delete(m) => match m.metadata.uid {
                Some(uid) => {
                    known.remove(&uid);
                    listing.remove(&uid);
                    send(Change::Delete { uid })
                }
                None => true,
            },
            watcher::Event::InitDone => {
                let gone: Vec<String> = known.difference(&listing).cloned().collect();
                for uid in gone {
                    known.remove(&uid);
                    send(Change::Delete { uid });
                }
                tx.unbounded_send(Event::Synced(source.clone())).is_ok()
            }
        };
        if !ok {
            return;
        }
    }
}

/// The resources followed, by [`key`], and how to reach every kind discovery knows.
pub struct Sources {
    client: Client,
    informers: Informers,
    tx: Tx,
    shutdown: component::CancellationToken,
    followed: HashMap<String, Option<component::CancellationToken>>,
    /// Every version served; replaced whole by each discovery, so a worker keeps the one
    /// it started with.
    kinds: Arc<Kinds>,
}

impl Sources {
    pub fn new(
        client: Client,
        informers: Informers,
        tx: Tx,
        shutdown: component::CancellationToken,
    ) -> Sources {
        let kinds: Kinds = shared_kinds()
            .into_iter()
            .map(|(ar, namespaced, _)| {
                (
                    (ar.api_version.clone(), ar.kind.clone()),
                    Kind { ar, namespaced },
                )
            })
            .collect();
        Sources {
            client,
            informers,
            tx,
            shutdown,
            followed: HashMap::new(),
            kinds: Arc::new(kinds),
        }
    }

    /// Follow the shared informers' kinds (before discovery has answered).
    pub fn start_shared(&mut self) -> Vec<String> {
        let mut started = Vec::new();
        for (ar, _, start) in shared_kinds() {
            let k = key(&ar);
            if self.followed.contains_key(&k) {
                continue;
            }
            start(&self.informers, self.tx.clone(), k.clone());
            self.followed.insert(k.clone(), None);
            started.push(k);
        }
        started
    }

    /// Run discovery and follow what it found that is not yet followed (and stop following
    /// what is gone); the keys of the sources started.
    pub async fn discover(&mut self) -> Result<Vec<String>, kube::Error> {
        let mut complete = true;
        let discoveries = match Discovery::new(self.client.clone()).run().await {
            Ok(d) => vec![d],
            Err(e) => {
                // One group failing (an aggregated API down) must not hide the others:
                // upstream goes on with the groups that answered.
                tracing::debug!(error = %e, "discovery failed; asking group by group");
                complete = false;
                let mut names: Vec<String> = vec![String::new()];
                names.extend(
                    self.client
                        .list_api_groups()
                        .await?
                        .groups
                        .into_iter()
                        .map(|g| g.name),
                );
                let mut found = Vec::new();
                for name in names {
                    match Discovery::new(self.client.clone())
                        .filter(&[&name])
                        .run()
                        .await
                    {
                        Ok(d) => found.push(d),
                        Err(e) => {
                            tracing::warn!(group = %name, error = %e, "garbage collector: discovery of a group failed")
                        }
                    }
                }
                found
            }
        };
        let mut kinds = HashMap::new();
        let mut wanted: HashMap<String, Kind> = HashMap::new();
        for group in discoveries.iter().flat_map(|d| d.groups()) {
            for version in group.versions() {
                for (ar, caps) in group.versioned_resources(version) {
                    kinds.insert(
                        (ar.api_version.clone(), ar.kind.clone()),
                        Kind {
                            ar,
                            namespaced: caps.scope == Scope::Namespaced,
                        },
                    );
                }
            }
            for (ar, caps) in group.recommended_resources() {
                let deletable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                    .iter()
                    .all(|v| caps.supports_operation(v));
                // upstream's collector ignores events (they never own or are owned)
                let events =
                    ar.plural == "events" && (ar.group.is_empty() || ar.group == "events.k8s.io");
                if deletable && !events {
                    let namespaced = caps.scope == Scope::Namespaced;
                    wanted.insert(key(&ar), Kind { ar, namespaced });
                }
            }
        }
        for (ar, namespaced, _) in shared_kinds() {
            kinds
                .entry((ar.api_version.clone(), ar.kind.clone()))
                .or_insert(Kind { ar, namespaced });
        }
        if !complete {
            // what a failing group served is still reachable as far as we know
            for (k, v) in self.kinds.iter() {
                kinds.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        self.kinds = Arc::new(kinds);
        let shared: HashMap<String, Start> = shared_kinds()
            .into_iter()
            .map(|(ar, _, start)| (key(&ar), start))
            .collect();
        let mut started = Vec::new();
        for (k, kind) in wanted.iter() {
            if self.followed.contains_key(k) {
                continue;
            }
            match shared.get(k) {
                Some(start) => {
                    start(&self.informers, self.tx.clone(), k.clone());
                    self.followed.insert(k.clone(), None);
                }
                None => {
                    let stop = self.shutdown.child_token();
                    tokio::spawn(dynamic(
                        self.client.clone(),
                        kind.clone(),
                        self.tx.clone(),
                        k.clone(),
                        stop.clone(),
                    ));
                    self.followed.insert(k.clone(), Some(stop));
                }
            }
            tracing::debug!(resource = %k, "garbage collector follows");
            started.push(k.clone());
        }
        // A resource no longer served (its CRD deleted): stop its watch. Shared informers
        // stay, they serve other controllers.
        self.followed.retain(|k, stop| match stop {
            Some(token) if complete && !wanted.contains_key(k) => {
                token.cancel();
                false
            }
            _ => true,
        });
        Ok(started)
    }

    /// How to reach the kinds discovery last found.
    pub fn kinds(&self) -> Arc<Kinds> {
        self.kinds.clone()
    }
}
