//! ReplicaSet: keep `spec.replicas` active pods that match the selector and are controlled
//! by the ReplicaSet (adopting matching orphans), and report counts in status.

use std::sync::Arc;
use std::time::Duration;

use futures::{stream, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::ResourceExt;
use serde_json::json;

use crate::informers::{wait_synced, Index};
use crate::util::{
    controlled_by, controller_ref, is_active, is_available, is_ready, status_differs,
};
use crate::{api_err, error_policy, Ctx, ReconcileError};

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let sets = ctx.owners::<ReplicaSet>();
    let pods = ctx.pods();
    if !wait_synced(&shutdown, async {
        sets.synced().await;
        pods.synced().await;
    })
    .await
    {
        return;
    }
    Controller::for_shared_stream(sets.subscribe(), sets.store())
        .owns_shared_stream(pods.subscribe())
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
    pub selector: LabelSelector,
    pub replicas: usize,
    pub template: &'a PodTemplateSpec,
    pub min_ready_seconds: i32,
}

/// The shared core of ReplicaSet and ReplicationController: adopt matching orphans, create
/// or delete pods until `replicas` are active, and count them.
///
/// The pods come from the shared pod cache (the owner's own, by controller uid, and the
/// namespace's orphans), which lags the creates and deletes this function issues: while
/// any of them is not yet in the cache ([`crate::expectations::Expectations`], as upstream)
/// nothing more is created or deleted, or every reconcile woken by the first new pods
/// would count the rest as missing and create them again.
pub async fn sync_replicas(ctx: &Ctx, o: &Owner<'_>) -> Result<ReplicaCounts, ReconcileError> {
    let (ns, name, kind) = (o.namespace, o.name, o.kind);
    let uid = o.reference.uid.clone();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let selects = |p: &Pod| {
        component::selectors::label_selector_matches(
            &o.selector,
            p.metadata.labels.as_ref().unwrap_or(&Default::default()),
        )
    };
    if o.selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.is_empty())
        && o.selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
    {
        return Err(ReconcileError::Invalid(format!(
            "{kind} {ns}/{name} has an empty selector"
        )));
    }
    // Expectations first, then the cache (upstream's order): satisfied means every pod
    // they waited for is in the cache read below. Read the other way round, a pod arriving
    // between the two would be missing from the count yet satisfy the expectations, and
    // be created a second time.
    let settled = ctx.expectations.satisfied(&uid);
    let cache = ctx.pods();
    let mut owned: Vec<Arc<Pod>> = cache
        .by(Index::Controller, &uid)
        .into_iter()
        .filter(|p| controlled_by(&p.metadata, &uid) && selects(p))
        .collect();
    for pod in cache.by(Index::Orphan, ns) {
        if pod.metadata.deletion_timestamp.is_some() || !selects(&pod) {
            continue;
        }
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
    let active: Vec<&Pod> = owned
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| is_active(p))
        .collect();
    let want = o.replicas;
    if settled && active.len() < want {
        let missing = want - active.len();
        tracing::info!(owner = %format!("{kind} {ns}/{name}"), have = active.len(), want, "creating {missing} pods");
        ctx.expectations.expect_creations(&uid, missing);
        let results: Vec<Result<Pod, kube::Error>> = stream::iter(0..missing)
            .map(|_| {
                let pod = pod_from_template(o.template, ns, name, o.reference.clone());
                let api = pods_api.clone();
                async move { api.create(&PostParams::default(), &pod).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(pod) => event(
                    ctx,
                    o,
                    "Normal",
                    "SuccessfulCreate",
                    format!("Created pod: {}", pod.name_any()),
                ),
                Err(e) => {
                    // a create that failed never shows up in the cache
                    ctx.expectations.creation_observed(&uid);
                    event(
                        ctx,
                        o,
                        "Warning",
                        "FailedCreate",
                        format!("Error creating: {}", crate::events::error_text(&e)),
                    );
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(ReconcileError::Api {
                action: format!("creating pods for {kind} {ns}/{name}"),
                source: e,
            });
        }
    } else if settled && active.len() > want {
        tracing::info!(owner = %format!("{kind} {ns}/{name}"), have = active.len(), want, "deleting {} surplus pods", active.len() - want);
        let mut victims: Vec<&Pod> = active.clone();
        victims.sort_by_key(|p| deletion_rank(p));
        victims.truncate(active.len() - want);
        ctx.expectations
            .expect_deletions(&uid, victims.iter().map(|p| p.name_any()));
        for pod in victims {
            match pods_api
                .delete(&pod.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => event(
                    ctx,
                    o,
                    "Normal",
                    "SuccessfulDelete",
                    format!("Deleted pod: {}", pod.name_any()),
                ),
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    ctx.expectations.deletion_observed(&uid, &pod.name_any());
                }
                Err(e) => {
                    ctx.expectations.deletion_observed(&uid, &pod.name_any());
                    return Err(api_err(format!(
                        "deleting a surplus pod of {kind} {ns}/{name}"
                    ))(e));
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

/// An event about the owner, from upstream's `replicaset-controller` /
/// `replication-controller`.
fn event(ctx: &Ctx, o: &Owner<'_>, ty: &str, reason: &str, message: String) {
    let r = &o.reference;
    let component = match r.kind.as_str() {
        "ReplicationController" => "replication-controller",
        _ => "replicaset-controller",
    };
    let regarding = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(r.api_version.clone()),
        kind: Some(r.kind.clone()),
        name: Some(r.name.clone()),
        namespace: Some(o.namespace.to_string()),
        uid: Some(r.uid.clone()),
        ..Default::default()
    };
    crate::events::spawn_event(&ctx.client, component, regarding, ty, reason, message);
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
        ctx.expectations
            .forget(rs.metadata.uid.as_deref().unwrap_or_default());
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
        selector: spec.selector.clone(),
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
