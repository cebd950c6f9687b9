//! ReplicaSet: keep `spec.replicas` active pods that match the selector and are controlled
//! by the ReplicaSet (adopting matching orphans), and report counts in status.

use std::sync::Arc;
use std::time::Duration;

use futures::{stream, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use crate::util::{
    controlled_by, controller_ref, has_controller, is_active, is_available, is_ready,
    selector_string, status_differs,
};
use crate::{api_err, error_policy, Ctx, ReconcileError};

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let client = ctx.client.clone();
    Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client), watcher::Config::default())
    .graceful_shutdown_on(shutdown.cancelled_owned())
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}

/// A pod built from an owner's template, named `<owner>-<random>` by the apiserver.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    ns: &str,
    prefix: &str,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{prefix}-")),
            namespace: Some(ns.to_string()),
            labels: meta.labels,
            annotations: meta.annotations,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Which pods go first when scaling down (upstream's ordering, simplified): unscheduled
/// before scheduled, pending before running, not ready before ready, newer before older.
fn deletion_rank(p: &Pod) -> (u8, u8, u8, i64) {
    let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| t.0.as_second());
    (u8::from(scheduled), phase, u8::from(is_ready(p)), -created)
}

/// What [`sync_replicas`] counted among the active pods it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaCounts {
    pub replicas: i32,
    pub ready: i32,
    pub available: i32,
    pub fully_labeled: i32,
}

/// The workload a [`sync_replicas`] call keeps pods for: a ReplicaSet or a
/// ReplicationController.
pub struct Owner<'a> {
    pub kind: &'static str,
    pub reference: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    pub namespace: &'a str,
    pub name: &'a str,
    pub selector: String,
    pub replicas: usize,
    pub template: &'a PodTemplateSpec,
    pub min_ready_seconds: i32,
}

/// The shared core of ReplicaSet and ReplicationController: adopt matching orphans, create
/// or delete pods until `replicas` are active, and count them.
pub async fn sync_replicas(ctx: &Ctx, o: &Owner<'_>) -> Result<ReplicaCounts, ReconcileError> {
    let (ns, name, kind) = (o.namespace, o.name, o.kind);
    let uid = o.reference.uid.clone();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    if o.selector.is_empty() {
        return Err(ReconcileError::Invalid(format!(
            "{kind} {ns}/{name} has an empty selector"
        )));
    }
    let listed = pods_api
        .list(&ListParams::default().labels(&o.selector))
        .await
        .map_err(api_err(format!("listing pods of {kind} {ns}/{name}")))?;

    let mut owned = Vec::new();
    for pod in listed.items {
        if controlled_by(&pod.metadata, &uid) {
            owned.push(pod);
        } else if !has_controller(&pod.metadata) && pod.metadata.deletion_timestamp.is_none() {
            // Adopt a matching orphan, as upstream does (the ownerReferences list is
            // replaced whole, guarded by the pod's resourceVersion).
            let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
            refs.push(o.reference.clone());
            let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": pod.metadata.resource_version}});
            if pods_api
                .patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .is_ok()
            {
                owned.push(pod);
            }
        }
    }
    let active: Vec<&Pod> = owned.iter().filter(|p| is_active(p)).collect();
    let want = o.replicas;
    if active.len() < want {
        let missing = want - active.len();
        tracing::info!(owner = %format!("{kind} {ns}/{name}"), have = active.len(), want, "creating {missing} pods");
        let results: Vec<Result<Pod, kube::Error>> = stream::iter(0..missing)
            .map(|_| {
                let pod = pod_from_template(o.template, ns, name, o.reference.clone());
                let api = pods_api.clone();
                async move { api.create(&PostParams::default(), &pod).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            return Err(ReconcileError::Api {
                action: format!("creating pods for {kind} {ns}/{name}"),
                source: e,
            });
        }
    } else if active.len() > want {
        tracing::info!(owner = %format!("{kind} {ns}/{name}"), have = active.len(), want, "deleting {} surplus pods", active.len() - want);
        let mut victims: Vec<&Pod> = active.clone();
        victims.sort_by_key(|p| deletion_rank(p));
        for pod in victims.into_iter().take(active.len() - want) {
            match pods_api
                .delete(&pod.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(api_err(format!(
                        "deleting a surplus pod of {kind} {ns}/{name}"
                    ))(e))
                }
            }
        }
    }
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let template_labels = o
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    Ok(ReplicaCounts {
        replicas: active.len() as i32,
        ready: active.iter().filter(|p| is_ready(p)).count() as i32,
        available: active
            .iter()
            .filter(|p| is_available(p, o.min_ready_seconds, now))
            .count() as i32,
        fully_labeled: active
            .iter()
            .filter(|p| {
                let labels = p.metadata.labels.clone().unwrap_or_default();
                template_labels
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v))
            })
            .count() as i32,
    })
}

/// The status both ReplicaSets and ReplicationControllers report.
pub fn status_patch(c: &ReplicaCounts, generation: Option<i64>) -> serde_json::Value {
    json!({"status": {
        "replicas": c.replicas,
        "readyReplicas": c.ready,
        "availableReplicas": c.available,
        "fullyLabeledReplicas": c.fully_labeled,
        "observedGeneration": generation,
    }})
}

/// Ready pods become available only after minReadySeconds: look again then.
pub fn requeue_after(c: &ReplicaCounts, min_ready: i32) -> Action {
    if c.ready > c.available && min_ready > 0 {
        return Action::requeue(Duration::from_secs(min_ready as u64));
    }
    Action::requeue(Duration::from_secs(300))
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let spec = rs.spec.clone();
    let template = spec.template.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let owner = Owner {
        kind: "replicaset",
        reference: controller_ref(rs.as_ref()),
        namespace: &ns,
        name: &name,
        selector: selector_string(&spec.selector),
        replicas: spec.replicas.unwrap_or(1).max(0) as usize,
        template: &template,
        min_ready_seconds: min_ready,
    };
    let c = sync_replicas(&ctx, &owner).await?;
    let patch = status_patch(&c, rs.metadata.generation);
    if status_differs(rs.status.as_ref(), &patch) {
        Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!(
                "updating status of replicaset {ns}/{name}"
            )))?;
    }
    Ok(requeue_after(&c, min_ready))
}
