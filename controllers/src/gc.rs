//! Garbage collector for ownerReferences, as upstream's: an object whose owners are all gone
//! is deleted (background cascading); an owner being deleted with the `foregroundDeletion`
//! finalizer keeps it until its dependents are gone; one with the `orphan` finalizer has its
//! dependents' references to it removed first.
//!
//! It reads the shared informers of the kinds that own or are owned, sweeps them every
//! second, and confirms an owner's absence with a live GET before deleting anything, because
//! a cache can lag behind a freshly created owner.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolumeClaim, Pod, ReplicationController, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy,
};
use kube::{Client, Resource};
use serde_json::json;

use crate::informers::{wait_synced, Informed, Informers};
use crate::Ctx;

/// An object of any kind the collector follows, as its caches hold it.
trait Meta: Send + Sync {
    fn object_meta(&self) -> &ObjectMeta;
}

impl<K: Resource + Send + Sync> Meta for K {
    fn object_meta(&self) -> &ObjectMeta {
        Resource::meta(self)
    }
}

type Synced = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Owner uid -> its dependents, with the index of their kind.
type Dependents = HashMap<String, Vec<(usize, Arc<dyn Meta>)>>;

struct Kind {
    ar: ApiResource,
    namespaced: bool,
    objects: Box<dyn Fn() -> Vec<Arc<dyn Meta>> + Send + Sync>,
    synced: Box<dyn Fn() -> Synced + Send + Sync>,
}

/// `K`'s shared informer, seen as metadata.
fn kind<K: Informed>(informers: &Informers, namespaced: bool) -> Kind {
    let informer = informers.get::<K>();
    let waiting = informer.clone();
    Kind {
        ar: ApiResource::erase::<K>(&()),
        namespaced,
        objects: Box::new(move || {
            informer
                .all()
                .into_iter()
                .map(|o| o as Arc<dyn Meta>)
                .collect()
        }),
        synced: Box::new(move || {
            let informer = waiting.clone();
            Box::pin(async move { informer.synced().await })
        }),
    }
}

/// Every kind the collector follows (that owns or is owned), on the shared informers.
fn kinds(informers: &Informers) -> Vec<Kind> {
    vec![
        kind::<Deployment>(informers, true),
        kind::<ReplicaSet>(informers, true),
        kind::<DaemonSet>(informers, true),
        kind::<StatefulSet>(informers, true),
        kind::<ControllerRevision>(informers, true),
        kind::<ReplicationController>(informers, true),
        kind::<Pod>(informers, true),
        kind::<Service>(informers, true),
        kind::<ConfigMap>(informers, true),
        kind::<Secret>(informers, true),
        // StatefulSets' claims, owned by the set or a pod per their retention policy
        kind::<PersistentVolumeClaim>(informers, true),
        kind::<Node>(informers, false),
        kind::<EndpointSlice>(informers, true),
        kind::<Job>(informers, true),
        kind::<CronJob>(informers, true),
    ]
}

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let client = ctx.client.clone();
    let kinds = kinds(&ctx.informers);
    if !wait_synced(&shutdown, async {
        for k in &kinds {
            (k.synced)().await;
        }
    })
    .await
    {
        return;
    }
    loop {
        sweep(&client, &kinds).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn api_for(client: &Client, kind: &Kind, ns: Option<&str>) -> Api<DynamicObject> {
    match (kind.namespaced, ns) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &kind.ar),
        _ => Api::all_with(client.clone(), &kind.ar),
    }
}

/// Whether the owner still exists, asked of the apiserver itself: a cache that has not yet
/// seen a just-created owner must not get its dependents collected (upstream's
/// attemptToDeleteItem confirms an absent owner with a live read too).
async fn owner_exists(
    client: &Client,
    kinds: &[Kind],
    ns: Option<&str>,
    r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> bool {
    let Some(kind) = kinds
        .iter()
        .find(|k| k.ar.kind == r.kind && k.ar.api_version == r.api_version)
    else {
        // A kind we do not follow: never collect on its account.
        return true;
    };
    match api_for(client, kind, ns).get_opt(&r.name).await {
        Ok(Some(obj)) => obj.metadata.uid.as_deref() == Some(r.uid.as_str()),
        Ok(None) => false,
        Err(_) => true,
    }
}

async fn remove_finalizer(client: &Client, kind: &Kind, obj: &ObjectMeta, finalizer: &str) {
    let remaining: Vec<String> = obj
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    let patch =
        json!({"metadata": {"finalizers": remaining, "resourceVersion": obj.resource_version}});
    let name = obj.name.clone().unwrap_or_default();
    if let Err(e) = api_for(client, kind, obj.namespace.as_deref())
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(error = %e, %name, finalizer, "removing finalizer; will retry");
    }
}

async fn sweep(client: &Client, kinds: &[Kind]) {
    // Every object we know, by uid.
    let mut by_uid: HashSet<String> = HashSet::new();
    let mut dependents: Dependents = HashMap::new();
    for (i, k) in kinds.iter().enumerate() {
        for obj in (k.objects)() {
            if let Some(uid) = &obj.object_meta().uid {
                by_uid.insert(uid.clone());
            }
            for r in obj.object_meta().owner_references.iter().flatten() {
                dependents
                    .entry(r.uid.clone())
                    .or_default()
                    .push((i, obj.clone()));
            }
        }
    }
    for (i, k) in kinds.iter().enumerate() {
        for obj in (k.objects)() {
            let ns = obj.object_meta().namespace.clone();
            let name = obj.object_meta().name.clone().unwrap_or_default();
            let uid = obj.object_meta().uid.clone().unwrap_or_default();
            let finalizers: Vec<String> = obj.object_meta().finalizers.clone().unwrap_or_default();
            let deleting = obj.object_meta().deletion_timestamp.is_some();

            if deleting && finalizers.iter().any(|f| f == "orphan") {
                for (di, dep) in dependents.get(&uid).into_iter().flatten() {
                    let refs: Vec<_> = dep
                        .object_meta()
                        .owner_references
                        .iter()
                        .flatten()
                        .filter(|r| r.uid != uid)
                        .cloned()
                        .collect();
                    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": dep.object_meta().resource_version}});
                    let dname = dep.object_meta().name.clone().unwrap_or_default();
                    let _ = api_for(client, &kinds[*di], dep.object_meta().namespace.as_deref())
                        .patch(&dname, &PatchParams::default(), &Patch::Merge(&patch))
                        .await;
                }
                if dependents.get(&uid).is_none_or(Vec::is_empty) {
                    remove_finalizer(client, k, obj.object_meta(), "orphan").await;
                }
                continue;
            }
            if deleting && finalizers.iter().any(|f| f == "foregroundDeletion") {
                let deps = dependents.get(&uid).cloned().unwrap_or_default();
                for (di, dep) in &deps {
                    if dep.object_meta().deletion_timestamp.is_none() {
                        let dname = dep.object_meta().name.clone().unwrap_or_default();
                        let dp = DeleteParams {
                            propagation_policy: Some(PropagationPolicy::Foreground),
                            ..Default::default()
                        };
                        let _ =
                            api_for(client, &kinds[*di], dep.object_meta().namespace.as_deref())
                                .delete(&dname, &dp)
                                .await;
                    }
                }
                if deps.is_empty() {
                    remove_finalizer(client, k, obj.object_meta(), "foregroundDeletion").await;
                }
                continue;
            }
            let refs = obj
                .object_meta()
                .owner_references
                .clone()
                .unwrap_or_default();
            if refs.is_empty() || deleting || refs.iter().any(|r| by_uid.contains(&r.uid)) {
                continue;
            }
            // Every owner is missing from the caches: confirm with the apiserver.
            let mut any_alive = false;
            for r in &refs {
                if owner_exists(client, kinds, ns.as_deref(), r).await {
                    any_alive = true;
                    break;
                }
            }
            if any_alive {
                continue;
            }
            // Upstream: a dependent whose owner was deleted in the foreground goes the same way.
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            match api_for(client, &kinds[i], ns.as_deref())
                .delete(&name, &dp)
                .await
            {
                Ok(_) => {
                    tracing::info!(kind = %k.ar.kind, namespace = ns.as_deref().unwrap_or(""), %name, "garbage collected: owner gone")
                }
                Err(e) => tracing::debug!(error = %e, %name, "garbage collecting"),
            }
        }
    }
}
