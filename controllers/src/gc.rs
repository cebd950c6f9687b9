//! Garbage collector for ownerReferences, as upstream's: an object whose owners are all gone
//! is deleted (background cascading); an owner being deleted with the `foregroundDeletion`
//! finalizer keeps it until its dependents are gone; one with the `orphan` finalizer has its
//! dependents' references to it removed first.
//!
//! It keeps reflectors on the kinds that own or are owned, sweeps them every second, and
//! confirms an owner's absence with a live GET before deleting anything, because a cache can
//! lag behind a freshly created owner.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy,
};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;

use crate::Ctx;

/// (group, version, kind, plural, namespaced) of every kind the collector follows.
const KINDS: &[(&str, &str, &str, &str, bool)] = &[
    ("apps", "v1", "Deployment", "deployments", true),
    ("apps", "v1", "ReplicaSet", "replicasets", true),
    ("apps", "v1", "DaemonSet", "daemonsets", true),
    ("apps", "v1", "StatefulSet", "statefulsets", true),
    ("", "v1", "Pod", "pods", true),
    ("", "v1", "Service", "services", true),
    ("", "v1", "ConfigMap", "configmaps", true),
    ("", "v1", "Secret", "secrets", true),
    // StatefulSets' claims, owned by the set or a pod per their retention policy
    (
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
    ),
    ("", "v1", "Node", "nodes", false),
    (
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
    ),
    ("batch", "v1", "Job", "jobs", true),
    ("batch", "v1", "CronJob", "cronjobs", true),
];

struct Kind {
    ar: ApiResource,
    namespaced: bool,
    store: Store<DynamicObject>,
}

fn resource(g: &str, v: &str, k: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: g.into(),
        version: v.into(),
        api_version: if g.is_empty() {
            v.into()
        } else {
            format!("{g}/{v}")
        },
        kind: k.into(),
        plural: plural.into(),
    }
}

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let client = ctx.client.clone();
    let mut kinds = Vec::new();
    for (g, v, k, plural, namespaced) in KINDS {
        let ar = resource(g, v, k, plural);
        let writer = reflector::store::Writer::new(ar.clone());
        let store = writer.as_reader();
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let stream =
            reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
                .default_backoff()
                .for_each(|_| async {});
        let token = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = stream => {}
            }
        });
        kinds.push(Kind {
            ar,
            namespaced: *namespaced,
            store,
        });
    }
    for k in &kinds {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = k.store.wait_until_ready() => {}
        }
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

async fn remove_finalizer(client: &Client, kind: &Kind, obj: &DynamicObject, finalizer: &str) {
    let remaining: Vec<String> = obj
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": obj.metadata.resource_version}});
    let name = obj.metadata.name.clone().unwrap_or_default();
    if let Err(e) = api_for(client, kind, obj.metadata.namespace.as_deref())
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(error = %e, %name, finalizer, "removing finalizer; will retry");
    }
}

async fn sweep(client: &Client, kinds: &[Kind]) {
    // Every object we know, by uid.
    let mut by_uid: HashSet<String> = HashSet::new();
    let mut dependents: HashMap<String, Vec<(usize, Arc<DynamicObject>)>> = HashMap::new();
    for (i, k) in kinds.iter().enumerate() {
        for obj in k.store.state() {
            if let Some(uid) = &obj.metadata.uid {
                by_uid.insert(uid.clone());
            }
            for r in obj.metadata.owner_references.iter().flatten() {
                dependents
                    .entry(r.uid.clone())
                    .or_default()
                    .push((i, obj.clone()));
            }
        }
    }
    for (i, k) in kinds.iter().enumerate() {
        for obj in k.store.state() {
            let ns = obj.metadata.namespace.clone();
            let name = obj.metadata.name.clone().unwrap_or_default();
            let uid = obj.metadata.uid.clone().unwrap_or_default();
            let finalizers: Vec<String> = obj.metadata.finalizers.clone().unwrap_or_default();
            let deleting = obj.metadata.deletion_timestamp.is_some();

            if deleting && finalizers.iter().any(|f| f == "orphan") {
                for (di, dep) in dependents.get(&uid).into_iter().flatten() {
                    let refs: Vec<_> = dep
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .filter(|r| r.uid != uid)
                        .cloned()
                        .collect();
                    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": dep.metadata.resource_version}});
                    let dname = dep.metadata.name.clone().unwrap_or_default();
                    let _ = api_for(client, &kinds[*di], dep.metadata.namespace.as_deref())
                        .patch(&dname, &PatchParams::default(), &Patch::Merge(&patch))
                        .await;
                }
                if dependents.get(&uid).is_none_or(Vec::is_empty) {
                    remove_finalizer(client, k, &obj, "orphan").await;
                }
                continue;
            }
            if deleting && finalizers.iter().any(|f| f == "foregroundDeletion") {
                let deps = dependents.get(&uid).cloned().unwrap_or_default();
                for (di, dep) in &deps {
                    if dep.metadata.deletion_timestamp.is_none() {
                        let dname = dep.metadata.name.clone().unwrap_or_default();
                        let dp = DeleteParams {
                            propagation_policy: Some(PropagationPolicy::Foreground),
                            ..Default::default()
                        };
                        let _ = api_for(client, &kinds[*di], dep.metadata.namespace.as_deref())
                            .delete(&dname, &dp)
                            .await;
                    }
                }
                if deps.is_empty() {
                    remove_finalizer(client, k, &obj, "foregroundDeletion").await;
                }
                continue;
            }
            let refs = obj.metadata.owner_references.clone().unwrap_or_default();
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
