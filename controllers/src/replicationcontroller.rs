//! ReplicationController (upstream's "ReplicationManager"): the ReplicaSet logic with the
//! older equality-only selector (which defaults to the template's labels).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ReplicationController;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::ResourceExt;

use crate::informers::wait_synced;

use crate::replicaset::{requeue_after, status_patch, sync_replicas, Owner};
use crate::util::{controller_ref, status_differs};
use crate::{api_err, error_policy, Ctx, ReconcileError};

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let controllers = ctx.owners::<ReplicationController>();
    let pods = ctx.pods();
    if !wait_synced(&shutdown, async {
        controllers.synced().await;
        pods.synced().await;
    })
    .await
    {
        return;
    }
    Controller::for_shared_stream(controllers.subscribe(), controllers.store())
        .owns_shared_stream(pods.subscribe())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

async fn reconcile(
    rc: Arc<ReplicationController>,
    ctx: Arc<Ctx>,
) -> Result<Action, ReconcileError> {
    if rc.metadata.deletion_timestamp.is_some() {
        ctx.expectations
            .forget(rc.metadata.uid.as_deref().unwrap_or_default());
        return Ok(Action::await_change());
    }
    let ns = rc.namespace().unwrap_or_default();
    let name = rc.name_any();
    let spec = rc.spec.clone().unwrap_or_default();
    let template = spec.template.clone().unwrap_or_default();
    let selector_map = spec
        .selector
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| template.metadata.as_ref().and_then(|m| m.labels.clone()))
        .unwrap_or_default();
    let selector = LabelSelector {
        match_labels: Some(selector_map),
        match_expressions: None,
    };
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let owner = Owner {
        kind: "replicationcontroller",
        reference: controller_ref(rc.as_ref()),
        namespace: &ns,
        name: &name,
        selector,
        replicas: spec.replicas.unwrap_or(1).max(0) as usize,
        template: &template,
        min_ready_seconds: min_ready,
    };
    let c = sync_replicas(&ctx, &owner).await?;
    let patch = status_patch(&c, rc.metadata.generation);
    if status_differs(rc.status.as_ref(), &patch) {
        Api::<ReplicationController>::namespaced(ctx.client.clone(), &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!(
                "updating status of replicationcontroller {ns}/{name}"
            )))?;
    }
    Ok(requeue_after(&c, min_ready))
}
