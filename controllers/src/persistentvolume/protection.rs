//! Upstream's `pvc-protection` and `pv-protection` controllers: the finalizers
//! `kubernetes.io/pvc-protection` and `kubernetes.io/pv-protection` (put on new objects by
//! the apiserver's StorageObjectInUseProtection admission; added here to any without while
//! they are not being deleted) are removed from a deleted claim once no pod scheduled to a
//! node uses it (read from the API, not a cache, before removing, as upstream asks the
//! apiserver), and from a deleted volume once it is not Bound. Until then `kubectl get`
//! shows them Terminating.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use component::volumes::{
    claim_is_for_pod, pod_claims, pod_is_shut_down, volume_phase, PVC_PROTECTION_FINALIZER,
    PV_PROTECTION_FINALIZER,
};

use crate::informers::{wait_synced, Index};
use crate::{api_err, error_policy, Ctx, ReconcileError};

fn has(meta: &kube::api::ObjectMeta, finalizer: &str) -> bool {
    meta.finalizers.iter().flatten().any(|f| f == finalizer)
}

/// `meta` with `finalizer` added (or removed).
fn with_finalizer(meta: &mut kube::api::ObjectMeta, finalizer: &str, on: bool) {
    let list = meta.finalizers.get_or_insert_with(Vec::new);
    list.retain(|f| f != finalizer);
    if on {
        list.push(finalizer.to_string());
    }
}

/// The claims a pod's volumes name (generic ephemeral volumes' `<pod>-<volume>` included).
fn claims_of(pod: &Pod) -> Vec<String> {
    pod_claims(pod).into_iter().map(|c| c.name).collect()
}

/// Upstream's `podUsesPVC`: a pod scheduled to a node (the kubelet sees it from then on)
/// whose volumes name the claim; an ephemeral volume's claim only while the pod controls it
/// and is not shut down (deleted with no grace left: the claim must not outlive it through a
/// cycle of finalizers).
fn uses(pod: &Pod, claim: &PersistentVolumeClaim) -> bool {
    let name = claim.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
        && pod_claims(pod).iter().any(|c| {
            c.name == name
                && (!c.ephemeral
                    || (!pod_is_shut_down(pod) && claim_is_for_pod(pod, claim).is_ok()))
        })
}

pub async fn run_pvc_protection(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
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
    Controller::for_shared_stream(claims.subscribe(), claims.store())
        .watches_shared_stream(pods.subscribe(), |pod: Arc<Pod>| {
            let ns = pod.namespace().unwrap_or_default();
            claims_of(&pod)
                .into_iter()
                .map(|c| ObjectRef::new(&c).within(&ns))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile_claim, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

async fn reconcile_claim(
    claim: Arc<PersistentVolumeClaim>,
    ctx: Arc<Ctx>,
) -> Result<Action, ReconcileError> {
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns);
    let deleting = claim.metadata.deletion_timestamp.is_some();
    let protected = has(&claim.metadata, PVC_PROTECTION_FINALIZER);
    if !deleting && !protected {
        let mut next = claim.as_ref().clone();
        with_finalizer(&mut next.metadata, PVC_PROTECTION_FINALIZER, true);
        api.replace(&name, &PostParams::default(), &next)
            .await
            .map_err(api_err(format!(
                "protecting persistentvolumeclaim {ns}/{name}"
            )))?;
        return Ok(Action::await_change());
    }
    if !(deleting && protected) {
        return Ok(Action::await_change());
    }
    if let Some(pod) = pod_using(&ctx, &claim).await? {
        tracing::debug!(claim = %format!("{ns}/{name}"), %pod, "claim still in use");
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    let mut next = claim.as_ref().clone();
    with_finalizer(&mut next.metadata, PVC_PROTECTION_FINALIZER, false);
    api.replace(&name, &PostParams::default(), &next)
        .await
        .map_err(api_err(format!(
            "releasing persistentvolumeclaim {ns}/{name}"
        )))?;
    tracing::info!(claim = %format!("{ns}/{name}"), "removed the pvc-protection finalizer");
    Ok(Action::await_change())
}

/// A pod of `ns` that uses claim `name`: the pod cache (indexed by claim) first; when it
/// knows none, the apiserver, as upstream asks it too: a pod created a moment ago and not
/// yet in the cache must keep its claim, and this runs only for a claim being deleted.
async fn pod_using(
    ctx: &Ctx,
    claim: &PersistentVolumeClaim,
) -> Result<Option<String>, ReconcileError> {
    let ns = claim.namespace().unwrap_or_default();
    let name = claim.name_any();
    if let Some(p) = ctx
        .pods()
        .by(Index::Claim, &format!("{ns}/{name}"))
        .iter()
        .find(|p| uses(p, claim))
    {
        return Ok(Some(p.name_any()));
    }
    Ok(Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(api_err(format!("listing pods of namespace {ns}")))?
        .items
        .iter()
        .find(|p| uses(p, claim))
        .map(|p| p.name_any()))
}

pub async fn run_pv_protection(ctx: Arc<Ctx>, shutdown: component::CancellationToken) {
    let volumes = ctx.informers.get::<PersistentVolume>();
    if !wait_synced(&shutdown, volumes.synced()).await {
        return;
    }
    Controller::for_shared_stream(volumes.subscribe(), volumes.store())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile_volume, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

async fn reconcile_volume(
    pv: Arc<PersistentVolume>,
    ctx: Arc<Ctx>,
) -> Result<Action, ReconcileError> {
    let name = pv.name_any();
    let api = Api::<PersistentVolume>::all(ctx.client.clone());
    let deleting = pv.metadata.deletion_timestamp.is_some();
    let protected = has(&pv.metadata, PV_PROTECTION_FINALIZER);
    let on = if !deleting && !protected {
        true
    } else if deleting && protected && volume_phase(&pv) != "Bound" {
        false
    } else {
        return Ok(Action::await_change());
    };
    let mut next = pv.as_ref().clone();
    with_finalizer(&mut next.metadata, PV_PROTECTION_FINALIZER, on);
    api.replace(&name, &PostParams::default(), &next)
        .await
        .map_err(api_err(format!(
            "updating the finalizers of persistentvolume {name}"
        )))?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_scheduled_pods_naming_the_claim_use_it() {
        let pod = |node: Option<&str>, claim: &str| -> Pod {
            let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [],
                "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}});
            if let Some(n) = node {
                p["spec"]["nodeName"] = json!(n);
            }
            serde_json::from_value(p).unwrap()
        };
        let data: PersistentVolumeClaim =
            serde_json::from_value(json!({"metadata": {"name": "data", "namespace": "ns"}}))
                .unwrap();
        assert!(uses(&pod(Some("n1"), "data"), &data));
        assert!(!uses(&pod(None, "data"), &data));
        assert!(!uses(&pod(Some("n1"), "other"), &data));
    }

    #[test]
    fn an_ephemeral_claim_is_used_by_the_running_pod_that_owns_it() {
        let pod = |deleted: Option<i64>| -> Pod {
            let mut p = json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
                "spec": {"containers": [], "nodeName": "n1",
                "volumes": [{"name": "v", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}]}});
            if let Some(grace) = deleted {
                p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                p["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            }
            serde_json::from_value(p).unwrap()
        };
        let claim = |uid: &str| -> PersistentVolumeClaim {
            serde_json::from_value(json!({"metadata": {"name": "p-v", "namespace": "ns",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": uid,
                    "controller": true}]}}))
            .unwrap()
        };
        assert!(uses(&pod(None), &claim("u1")));
        // terminating with grace left: the kubelet may still have it mounted
        assert!(uses(&pod(Some(30)), &claim("u1")));
        assert!(!uses(&pod(Some(0)), &claim("u1")));
        assert!(!uses(&pod(None), &claim("u0")));
    }
}
