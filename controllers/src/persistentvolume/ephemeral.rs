//! Upstream's `ephemeral-volume-controller`: every pod with a generic ephemeral volume
//! (`spec.volumes[].ephemeral.volumeClaimTemplate`) gets the claim `<pod>-<volume>` in its
//! namespace, made from the template (its labels, annotations and spec) and controlled by
//! the pod (`controller` and `blockOwnerDeletion`), so the garbage collector deletes it with
//! the pod. A claim of that name the pod does not control is never touched: the pod gets a
//! `FailedBinding` warning (`ephemeral volume <v>: PVC ns/x was not created for pod ns/p
//! (pod is not owner)`) and stays Pending, as the scheduler refuses it with the same reason.
//! Pods being deleted are left alone; a deleted claim is made again for the pods that still
//! need it (the claim index of the pod cache finds them). The pod spec is immutable, so an
//! existing owned claim is never updated.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use component::volumes::{claim_is_for_pod, pod_claims};

use crate::events::Recorder;
use crate::informers::{wait_synced, Index, Informer};
use crate::{api_err, error_policy, Ctx, ReconcileError};

/// The component of its events, as upstream's.
const COMPONENT: &str = "ephemeral_volume";

struct Ephemeral {
    ctx: Arc<Ctx>,
    claims: Informer<PersistentVolumeClaim>,
    events: Recorder,
}

pub async fn run(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let claims = ctx.informers.get::<PersistentVolumeClaim>();
    let pods = ctx.pods();
    if !wait_synced(&shutdown, async {
        claims.synced().await;
        pods.synced().await;
    })
    .await
    {
        return;
    }
    let by_claim = pods.clone();
    let state = Arc::new(Ephemeral {
        events: Recorder::new(ctx.client.clone(), COMPONENT),
        claims: claims.clone(),
        ctx,
    });
    Controller::for_shared_stream(pods.subscribe(), pods.store())
        // a claim deleted (or changed hands): the pods whose ephemeral volume it is
        .watches_shared_stream(
            claims.subscribe(),
            move |pvc: Arc<PersistentVolumeClaim>| {
                let ns = pvc.namespace().unwrap_or_default();
                by_claim
                    .by(Index::Claim, &format!("{ns}/{}", pvc.name_any()))
                    .iter()
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, state)
        .for_each(|_| async {})
        .await;
}

/// The claim upstream's controller makes for `pod`'s ephemeral volume `volume`.
pub fn claim_for(pod: &Pod, volume: &k8s_openapi::api::core::v1::Volume) -> PersistentVolumeClaim {
    let template = volume
        .ephemeral
        .as_ref()
        .and_then(|e| e.volume_claim_template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(component::volumes::ephemeral_claim_name(pod, volume)),
            namespace: pod.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod.name_any(),
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(template.spec),
        status: None,
    }
}

async fn reconcile(pod: Arc<Pod>, e: Arc<Ephemeral>) -> Result<Action, ReconcileError> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pod.namespace().unwrap_or_default();
    for c in pod_claims(&pod).into_iter().filter(|c| c.ephemeral) {
        if let Some(existing) = e.claims.get(Some(&ns), &c.name) {
            if let Err(why) = claim_is_for_pod(&pod, &existing) {
                let msg = format!("ephemeral volume {}: {why}", c.volume.name);
                tracing::warn!(pod = %format!("{ns}/{}", pod.name_any()), %msg, "not using a claim");
                e.events.warn(pod.as_ref(), "FailedBinding", &msg).await;
                // the claim's deletion brings the pod back (see `run`)
                return Ok(Action::requeue(Duration::from_secs(300)));
            }
            continue;
        }
        let claim = claim_for(&pod, c.volume);
        match Api::<PersistentVolumeClaim>::namespaced(e.ctx.client.clone(), &ns)
            .create(&PostParams::default(), &claim)
            .await
        {
            Ok(_) => {
                tracing::info!(claim = %format!("{ns}/{}", c.name), "created the claim of an ephemeral volume")
            }
            // made a moment ago and not in the cache yet, or someone else's: look again
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(Duration::from_secs(1)))
            }
            Err(err) => {
                let msg = format!(
                    "ephemeral volume {}: create PVC {}: {err}",
                    c.volume.name, c.name
                );
                e.events.warn(pod.as_ref(), "FailedBinding", &msg).await;
                return Err(api_err(format!(
                    "creating persistentvolumeclaim {ns}/{}",
                    c.name
                ))(err));
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_claim_is_the_templates_owned_by_the_pod() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [], "volumes": [{"name": "scratch", "ephemeral": {
                "volumeClaimTemplate": {
                    "metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                             "resources": {"requests": {"storage": "1Gi"}}}}}}]}}))
        .unwrap();
        let volume = &pod.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0];
        let claim = serde_json::to_value(claim_for(&pod, volume)).unwrap();
        assert_eq!(
            claim,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "web-scratch", "namespace": "ns",
                "labels": {"app": "web"}, "annotations": {"a": "b"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": "u1",
                    "controller": true, "blockOwnerDeletion": true}]},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                         "resources": {"requests": {"storage": "1Gi"}}}})
        );
        assert_eq!(claim_is_for_pod(&pod, &claim_for(&pod, volume)), Ok(()));
    }
}
