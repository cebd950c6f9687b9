//! `persistentVolumeClaim` volumes, and the node's part of kaze's local-path provisioner.
//!
//! Setting up: the claim must exist, not be being deleted, and be Bound to a volume whose
//! `claimRef` is the claim (upstream's desired-state populator refuses the rest with the
//! messages below; the pod waits in ContainerCreating with a `FailedMount` event and is
//! retried). The volume's source is mounted as a hostPath would be: `hostPath` after its
//! `type` check, `local` when its path exists. Containers get it read-only when the pod's
//! volume says `readOnly`. Nothing is mounted on the host, so teardown has nothing to undo.
//!
//! A volume kaze's `kaze.io/local-path` provisioner made for this node gets the
//! `kaze.io/local-path-cleanup` finalizer before its directory is made (mode 0777, as k3s's
//! helper pod makes it), so a directory exists only while the volume object holds that
//! finalizer. [`run_cleanup`] then looks at the node's storage dir every
//! [`CLEANUP_PERIOD`]: for a `pvc-<uid>_<ns>_<name>` directory whose volume `pvc-<uid>` is
//! being deleted and not Bound, it removes the directory (reclaim policy `Delete`; a
//! `Retain` volume's data stays for its admin) and then the finalizer. The Node authorizer
//! lets a node read and change exactly these volumes; NodeRestriction lets it touch only
//! that finalizer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::sys::{self, FileKind};

const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const LOCAL_PATH: &str = "kaze.io/local-path";
const CLEANUP_FINALIZER: &str = "kaze.io/local-path-cleanup";

/// How often the node's storage dir is looked at for volumes to clean up.
pub const CLEANUP_PERIOD: Duration = Duration::from_secs(5);

/// Where a claim's volume is on this node. `owner`: the pod whose generic ephemeral volume
/// this claim is, which must control it (upstream's `VolumeIsForPod`).
pub async fn setup(
    client: &kube::Client,
    ns: &str,
    claim: &str,
    owner: Option<&Pod>,
) -> Result<PathBuf, String> {
    let processing = |why: String| format!("error processing PVC {ns}/{claim}: {why}");
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(claim)
        .await
        .map_err(|e| processing(format!("failed to fetch PVC from API server: {e}")))?
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
    if pvc.metadata.deletion_timestamp.is_some() {
        return Err(processing("PVC is being deleted".into()));
    }
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        return Err(processing("PVC is not bound".into()));
    }
    let pv_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| processing("PVC has empty pvc.Spec.VolumeName".into()))?;
    // after the claim's own checks, as upstream's populator
    if let Some(pod) = owner {
        component::volumes::claim_is_for_pod(pod, &pvc)?;
    }
    let pvs = Api::<PersistentVolume>::all(client.clone());
    let pv = pvs
        .get_opt(&pv_name)
        .await
        .map_err(|e| processing(format!("failed to fetch PV {pv_name} from API server: {e}")))?
        .ok_or_else(|| {
            processing(format!(
                "failed to fetch PV {pv_name} from API server: persistentvolumes {pv_name:?} not found"
            ))
        })?;
    let ref_uid = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .and_then(|r| r.uid.clone())
        .unwrap_or_default();
    if Some(&ref_uid) != pvc.metadata.uid.as_ref() {
        return Err(processing(format!(
            "found PV object {pv_name:?} but it has ClaimRef.UID {ref_uid:?} which does not point to the PVC's UID {:?}",
            pvc.metadata.uid.clone().unwrap_or_default()
        )));
    }
    let spec = pv.spec.clone().unwrap_or_default();
    if let Some(h) = &spec.host_path {
        let path = PathBuf::from(&h.path);
        if is_local_path(&pv) {
            hold_for_cleanup(&pvs, &pv).await?;
            if sys::file_kind(&path) == FileKind::Missing {
                sys::create_dir_all(&path).map_err(|e| e.to_string())?;
                sys::set_mode(&path, 0o777).map_err(|e| e.to_string())?;
            }
            return Ok(path);
        }
        super::check_host_path(&path, h.type_.as_deref().unwrap_or_default())?;
        return Ok(path);
    }
    if let Some(l) = &spec.local {
        let path = PathBuf::from(&l.path);
        if sys::file_kind(&path) == FileKind::Missing {
            return Err(format!(
                "path {:?} of local volume {pv_name} does not exist",
                l.path
            ));
        }
        return Ok(path);
    }
    Err(format!(
        "unsupported source of persistent volume {pv_name}: kaze's kubelet mounts hostPath and local volumes"
    ))
}

fn is_local_path(pv: &PersistentVolume) -> bool {
    pv.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVISIONED_BY))
        .is_some_and(|p| p == LOCAL_PATH)
}

fn finalizers(pv: &PersistentVolume) -> &[String] {
    pv.metadata.finalizers.as_deref().unwrap_or_default()
}

/// A merge patch setting the volume's finalizers, conditional on the resourceVersion they
/// were read at (the protection controller changes them too).
fn conditional(pv: &PersistentVolume, finalizers: Vec<String>) -> Patch<serde_json::Value> {
    Patch::Merge(json!({"metadata": {
        "resourceVersion": pv.metadata.resource_version,
        "finalizers": finalizers,
    }}))
}

/// Put the cleanup finalizer on a local-path volume (before its directory is made).
async fn hold_for_cleanup(
    pvs: &Api<PersistentVolume>,
    pv: &PersistentVolume,
) -> Result<(), String> {
    let name = pv.metadata.name.clone().unwrap_or_default();
    if finalizers(pv).iter().any(|f| f == CLEANUP_FINALIZER) {
        return Ok(());
    }
    if pv.metadata.deletion_timestamp.is_some() {
        return Err(format!("persistent volume {name} is being deleted"));
    }
    let mut list = finalizers(pv).to_vec();
    list.push(CLEANUP_FINALIZER.into());
    pvs.patch(&name, &PatchParams::default(), &conditional(pv, list))
        .await
        .map_err(|e| format!("holding persistent volume {name} for cleanup: {e}"))?;
    Ok(())
}

/// Clean up the deleted local-path volumes in `storage` every [`CLEANUP_PERIOD`] until
/// `shutdown`.
pub async fn run_cleanup(
    client: kube::Client,
    storage: PathBuf,
    shutdown: component::CancellationToken,
) {
    tracing::info!(storage = %storage.display(), "cleaning up deleted local-path volumes");
    loop {
        cleanup_once(&client, &storage).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CLEANUP_PERIOD) => {}
        }
    }
}

/// The volume name a directory of the storage dir belongs to (`pvc-<uid>_<ns>_<name>`).
pub fn volume_of_dir(dir: &str) -> Option<&str> {
    let (pv, rest) = dir.split_once('_')?;
    (pv.starts_with("pvc-") && !rest.is_empty()).then_some(pv)
}

/// One look at the storage dir.
pub async fn cleanup_once(client: &kube::Client, storage: &Path) {
    let pvs = Api::<PersistentVolume>::all(client.clone());
    for dir in sys::dir_names(storage) {
        let Some(name) = volume_of_dir(&dir) else {
            continue;
        };
        let pv = match pvs.get_opt(name).await {
            Ok(Some(pv)) => pv,
            // gone (its finalizer was removed by hand) or not ours: nothing to go by
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(volume = name, error = %e, "reading a local-path volume");
                continue;
            }
        };
        let path = storage.join(&dir);
        let host_path = pv.spec.as_ref().and_then(|s| s.host_path.as_ref());
        let held = finalizers(&pv).iter().any(|f| f == CLEANUP_FINALIZER);
        let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
        if !is_local_path(&pv)
            || host_path.is_none_or(|h| Path::new(&h.path) != path)
            || pv.metadata.deletion_timestamp.is_none()
            || phase == Some("Bound")
            || !held
        {
            continue;
        }
        let policy = pv
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            .unwrap_or("Retain");
        if policy == "Delete" {
            if let Err(e) = sys::remove_dir_all(&path) {
                tracing::warn!(volume = name, error = %e, "removing a deleted local-path volume's data");
                continue;
            }
            tracing::info!(volume = name, path = %path.display(), "removed a deleted local-path volume's data");
        } else {
            tracing::info!(volume = name, path = %path.display(), policy, "a deleted local-path volume's data is kept");
        }
        let rest: Vec<String> = finalizers(&pv)
            .iter()
            .filter(|f| *f != CLEANUP_FINALIZER)
            .cloned()
            .collect();
        if let Err(e) = pvs
            .patch(name, &PatchParams::default(), &conditional(&pv, rest))
            .await
        {
            tracing::warn!(volume = name, error = %e, "releasing a cleaned-up local-path volume");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_name_their_volume() {
        assert_eq!(
            volume_of_dir("pvc-0b1c-22_default_data"),
            Some("pvc-0b1c-22")
        );
        assert_eq!(volume_of_dir("pvc-x"), None);
        assert_eq!(volume_of_dir("other_default_data"), None);
    }
}
