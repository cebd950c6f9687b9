//! The built-in `kaze.io/local-path` provisioner: k3s's local-path-provisioner
//! (`rancher.io/local-path`) inside the binder.
//!
//! A claim of a class with this provisioner is provisioned once the scheduler has chosen a
//! node for its first pod (`volume.kubernetes.io/selected-node`; the class must be
//! `WaitForFirstConsumer` — with `Immediate` there is no node and, as the upstream
//! provisioner does, it fails with `configuration error, no node was specified`). The
//! volume, named `pvc-<claim uid>` as upstream names provisioned volumes, is a `hostPath`
//! (type `DirectoryOrCreate`) at `<node's storage dir>/pvc-<uid>_<namespace>_<name>`, pinned
//! to the node by `nodeAffinity` on `kubernetes.io/hostname` (what k3s's provisioner makes),
//! pre-bound to the claim, with the class's reclaim policy and mount options and the
//! claim's request as capacity (a local directory has no size limit). The node's storage
//! dir is what its kubelet announces in the Node annotation `kaze.io/local-storage-path`
//! (`kaze server|agent --default-local-storage-path`, default `<data-dir>/storage`).
//!
//! Nothing is written on the node here: the kubelet makes the directory (0777, as k3s's
//! helper does) when it first mounts the volume, after putting the
//! `kaze.io/local-path-cleanup` finalizer on the volume; when a deleted volume's claim is
//! gone and its policy is Delete, that kubelet removes the directory and then the finalizer.
//! So data is never left behind by a deleted volume, and never removed while it is bound.
//! Only `ReadWriteOnce` and `ReadWriteOncePod` claims in `Filesystem` mode are provisioned,
//! as upstream's provisioner allows.

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::json;

use component::volumes::{self as vol, ANN_SELECTED_NODE};

use super::binder::Binder;
use crate::{api_err, ReconcileError};

/// The directory of a claim's volume under a node's storage dir (k3s's naming).
pub fn volume_dir(storage: &str, claim: &PersistentVolumeClaim) -> String {
    format!(
        "{}/pvc-{}_{}_{}",
        storage.trim_end_matches('/'),
        claim.metadata.uid.as_deref().unwrap_or(""),
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    )
}

/// The volume for `claim` on `node` (whose storage dir is `storage`), or why there is none.
pub fn volume_for(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &Node,
    storage: &str,
) -> Result<PersistentVolume, String> {
    let spec = claim.spec.clone().unwrap_or_default();
    for mode in spec.access_modes.iter().flatten() {
        if !matches!(mode.as_str(), "ReadWriteOnce" | "ReadWriteOncePod") {
            return Err(
                "NodePath only supports ReadWriteOnce and ReadWriteOncePod (1.22+) access modes"
                    .into(),
            );
        }
    }
    if spec.volume_mode.as_deref() == Some("Block") {
        return Err("local-path volumes support volumeMode Filesystem only".into());
    }
    let node_name = node.name_any();
    let hostname = node
        .labels()
        .get("kubernetes.io/hostname")
        .cloned()
        .unwrap_or_else(|| node_name.clone());
    let request = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map_or_else(|| json!("0"), |q| json!(q.0));
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": format!("pvc-{uid}"),
            "annotations": {
                vol::ANN_PROVISIONED_BY: vol::LOCAL_PATH_PROVISIONER,
                vol::ANN_LOCAL_PATH_NODE: node_name,
            },
        },
        "spec": {
            "capacity": {"storage": request},
            "accessModes": spec.access_modes.clone().unwrap_or_default(),
            "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            "storageClassName": class.metadata.name,
            "mountOptions": class.mount_options,
            "volumeMode": "Filesystem",
            "hostPath": {"path": volume_dir(storage, claim), "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]}]}]}},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": claim.namespace(),
                "name": claim.name_any(),
                "uid": uid,
                "resourceVersion": claim.resource_version(),
            },
        },
    });
    serde_json::from_value(pv).map_err(|e| format!("building the volume: {e}"))
}

/// Provision `claim` of `class` if its node is known; events say how it went.
pub async fn provision(
    b: &Binder,
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
) -> Result<(), ReconcileError> {
    let class_name = class.name_any();
    let failed =
        |why: String| format!("failed to provision volume with StorageClass {class_name:?}: {why}");
    let Some(node_name) = claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_SELECTED_NODE))
        .filter(|n| !n.is_empty())
        .cloned()
    else {
        let msg = failed("configuration error, no node was specified".into());
        b.provisioner_events
            .warn(claim, "ProvisioningFailed", &msg)
            .await;
        return Ok(());
    };
    let pv_name = format!("pvc-{}", claim.metadata.uid.as_deref().unwrap_or(""));
    let pvs = Api::<PersistentVolume>::all(b.client.clone());
    if pvs
        .get_opt(&pv_name)
        .await
        .map_err(api_err(format!("reading persistentvolume {pv_name}")))?
        .is_some()
    {
        // made by an earlier sync; the binder binds it
        return Ok(());
    }
    let Some(node) = Api::<Node>::all(b.client.clone())
        .get_opt(&node_name)
        .await
        .map_err(api_err(format!("reading node {node_name}")))?
    else {
        // the chosen node is gone: let the scheduler choose again (upstream's reschedule)
        let msg = failed(format!("nodes {node_name:?} not found"));
        b.provisioner_events
            .warn(claim, "ProvisioningFailed", &msg)
            .await;
        let patch = json!({"metadata": {"annotations": {ANN_SELECTED_NODE: null}}});
        Api::<PersistentVolumeClaim>::namespaced(
            b.client.clone(),
            &claim.namespace().unwrap_or_default(),
        )
        .patch(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(api_err("clearing the selected node of a claim"))?;
        return Ok(());
    };
    let Some(storage) = node
        .annotations()
        .get(vol::ANN_NODE_STORAGE_PATH)
        .filter(|p| p.starts_with('/'))
        .cloned()
    else {
        let msg = failed(format!(
            "node {node_name:?} announces no local storage path (annotation {}): its kubelet is not kaze's, or runs without --local-storage-path",
            vol::ANN_NODE_STORAGE_PATH
        ));
        b.provisioner_events
            .warn(claim, "ProvisioningFailed", &msg)
            .await;
        return Ok(());
    };
    let key = format!(
        "{}/{}",
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    );
    let pv = match volume_for(claim, class, &node, &storage) {
        Ok(pv) => pv,
        Err(why) => {
            b.provisioner_events
                .warn(claim, "ProvisioningFailed", &failed(why))
                .await;
            return Ok(());
        }
    };
    b.provisioner_events
        .normal(
            claim,
            "Provisioning",
            &format!("External provisioner is provisioning volume for claim {key:?}"),
        )
        .await;
    match pvs.create(&PostParams::default(), &pv).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
        Err(e) => {
            let msg = failed(e.to_string());
            b.provisioner_events
                .warn(claim, "ProvisioningFailed", &msg)
                .await;
            return Err(api_err(format!("creating persistentvolume {pv_name}"))(e));
        }
    }
    tracing::info!(claim = %key, volume = %pv_name, node = %node_name, "provisioned a local-path volume");
    b.provisioner_events
        .normal(
            claim,
            "ProvisioningSucceeded",
            &format!("Successfully provisioned volume {pv_name}"),
        )
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_is_a_host_path_pinned_to_the_node_and_pre_bound() {
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "ns", "uid": "u-1", "resourceVersion": "7"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}},
                     "storageClassName": "local-path"}}))
        .unwrap();
        let class: StorageClass = serde_json::from_value(json!({
            "metadata": {"name": "local-path"}, "provisioner": vol::LOCAL_PATH_PROVISIONER,
            "reclaimPolicy": "Retain", "volumeBindingMode": "WaitForFirstConsumer"}))
        .unwrap();
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "host-1"}}}))
        .unwrap();
        let pv = volume_for(&claim, &class, &node, "/var/lib/kaze/storage/").unwrap();
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-u-1"));
        let v = serde_json::to_value(&pv).unwrap();
        assert_eq!(
            v["spec"]["hostPath"],
            json!({"path": "/var/lib/kaze/storage/pvc-u-1_ns_data", "type": "DirectoryOrCreate"})
        );
        assert_eq!(
            v["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
                ["values"],
            json!(["host-1"])
        );
        assert_eq!(v["spec"]["capacity"]["storage"], "2Gi");
        assert_eq!(v["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(v["spec"]["claimRef"]["uid"], "u-1");
        assert_eq!(v["metadata"]["annotations"][vol::ANN_LOCAL_PATH_NODE], "n1");
        assert!(vol::is_volume_bound_to_claim(&pv, &claim));
        // what the upstream provisioner refuses
        let mut rwx = claim.clone();
        rwx.spec.as_mut().unwrap().access_modes = Some(vec!["ReadWriteMany".into()]);
        assert!(volume_for(&rwx, &class, &node, "/s")
            .unwrap_err()
            .contains("ReadWriteOnce"));
        let mut block = claim.clone();
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        assert!(volume_for(&block, &class, &node, "/s").is_err());
    }
}
