//! PersistentVolumes and their claims: upstream's annotation names and the matching rules
//! its PV controller and the scheduler's VolumeBinding plugin share
//! (`component-helpers/storage/volume`), as pure functions over the API types.
//!
//! A volume satisfies a claim when it is not being deleted, its capacity is at least the
//! claim's `resources.requests.storage`, its class equals the claim's (the beta annotation
//! first, then `storageClassName`; unset and `""` are both "no class"), its `volumeMode`
//! equals the claim's (unset is `Filesystem`) and its access modes include every mode the
//! claim asks for. [`find_best_match`] picks among many as upstream's binder does: a volume
//! pre-bound to the claim (its `claimRef` names it) wins outright; otherwise only Available
//! volumes whose labels match the claim's `selector` count, the fewest access modes first,
//! then the smallest capacity.

use std::collections::{BTreeSet, HashSet};

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod, Volume};
use k8s_openapi::api::storage::v1::StorageClass;

use crate::quota::Quantity;
use crate::selectors::{label_selector_matches, node_selector_term_matches};

/// On a claim: the binding finished (upstream's `AnnBindCompleted`).
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// On a claim or volume: the controller (not the user) set the binding.
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// On a volume: which provisioner made it (upstream's `AnnDynamicallyProvisioned`).
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// On a claim of a `WaitForFirstConsumer` class: the node the scheduler chose.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// On a claim: the provisioner expected to provision it.
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// The class of a claim or volume, before `storageClassName` existed (still honoured).
pub const ANN_BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
/// On a StorageClass: `"true"` makes it the default.
pub const ANN_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
pub const ANN_BETA_DEFAULT_CLASS: &str = "storageclass.beta.kubernetes.io/is-default-class";

/// Finalizers upstream's StorageObjectInUseProtection admission and protection controllers
/// keep on claims and volumes.
pub const PVC_PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";
pub const PV_PROTECTION_FINALIZER: &str = "kubernetes.io/pv-protection";

/// kaze's built-in dynamic provisioner (k3s's `rancher.io/local-path`).
pub const LOCAL_PATH_PROVISIONER: &str = "kaze.io/local-path";
/// On a local-path volume: kept until the node's kubelet has removed the volume's directory.
pub const LOCAL_PATH_CLEANUP_FINALIZER: &str = "kaze.io/local-path-cleanup";
/// On a local-path volume: the node whose disk holds it.
pub const ANN_LOCAL_PATH_NODE: &str = "kaze.io/local-path-node";
/// On a Node: where its kubelet keeps local-path volumes (`--local-storage-path`).
pub const ANN_NODE_STORAGE_PATH: &str = "kaze.io/local-storage-path";

/// The `kubernetes.io/no-provisioner` of static local volumes' classes: nothing provisions.
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

fn annotation<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

pub fn has_annotation(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> bool {
    annotation(meta, key).is_some()
}

/// The claim's class: the beta annotation, else `spec.storageClassName`, else "".
pub fn claim_class(pvc: &PersistentVolumeClaim) -> String {
    class_of(
        &pvc.metadata,
        pvc.spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref()),
    )
}

/// The beta class annotation if set, else `spec_class`, else "".
fn class_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec_class: Option<&str>,
) -> String {
    annotation(meta, ANN_BETA_STORAGE_CLASS)
        .or(spec_class)
        .unwrap_or_default()
        .to_string()
}

/// Whether the claim names a class at all (`""` counts: it asks for no class).
pub fn claim_has_class(pvc: &PersistentVolumeClaim) -> bool {
    has_annotation(&pvc.metadata, ANN_BETA_STORAGE_CLASS)
        || pvc
            .spec
            .as_ref()
            .is_some_and(|s| s.storage_class_name.is_some())
}

/// The volume's class: the beta annotation, else `spec.storageClassName`, else "".
pub fn volume_class(pv: &PersistentVolume) -> String {
    class_of(
        &pv.metadata,
        pv.spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref()),
    )
}

/// `resources.requests.storage` of the claim (0 when unset).
pub fn claim_request(pvc: &PersistentVolumeClaim) -> Quantity {
    pvc.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| Quantity::parse(&q.0))
        .unwrap_or(Quantity::ZERO)
}

/// `spec.capacity.storage` of the volume (0 when unset).
pub fn volume_capacity(pv: &PersistentVolume) -> Quantity {
    pv.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| Quantity::parse(&q.0))
        .unwrap_or(Quantity::ZERO)
}

pub fn claim_modes(pvc: &PersistentVolumeClaim) -> BTreeSet<String> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

pub fn volume_modes(pv: &PersistentVolume) -> BTreeSet<String> {
    pv.spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Upstream's `CheckAccessModes`: the volume offers every mode the claim asks for.
pub fn access_modes_satisfied(pvc: &PersistentVolumeClaim, pv: &PersistentVolume) -> bool {
    claim_modes(pvc).is_subset(&volume_modes(pv))
}

/// Upstream's `CheckVolumeModeMismatches` (unset is `Filesystem` on both sides).
pub fn volume_mode_mismatch(pvc: &PersistentVolumeClaim, pv: &PersistentVolume) -> bool {
    let claim = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem");
    let volume = pv
        .spec
        .as_ref()
        .and_then(|s| s.volume_mode.as_deref())
        .unwrap_or("Filesystem");
    claim != volume
}

/// Upstream's `checkVolumeSatisfyClaim`, with its messages (used for a claim that names its
/// volume in `spec.volumeName`).
pub fn check_volume_satisfies_claim(
    pv: &PersistentVolume,
    pvc: &PersistentVolumeClaim,
) -> Result<(), String> {
    let name = pv.metadata.name.as_deref().unwrap_or("");
    if pv.metadata.deletion_timestamp.is_some() {
        return Err(format!("the volume is marked for deletion {name:?}"));
    }
    if volume_capacity(pv) < claim_request(pvc) {
        return Err("requested PV is too small".into());
    }
    if volume_class(pv) != claim_class(pvc) {
        return Err("storageClassName does not match".into());
    }
    if volume_mode_mismatch(pvc, pv) {
        return Err("incompatible volumeMode".into());
    }
    if !access_modes_satisfied(pvc, pv) {
        return Err("incompatible accessMode".into());
    }
    Ok(())
}

/// Upstream's `IsVolumeBoundToClaim`: the volume's `claimRef` names the claim (and its uid,
/// when the reference carries one).
pub fn is_volume_bound_to_claim(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    if r.name.as_deref() != pvc.metadata.name.as_deref()
        || r.namespace.as_deref().unwrap_or("") != pvc.metadata.namespace.as_deref().unwrap_or("")
    {
        return false;
    }
    match r.uid.as_deref().filter(|u| !u.is_empty()) {
        None => true,
        Some(uid) => pvc.metadata.uid.as_deref() == Some(uid),
    }
}

/// Upstream's `CheckNodeAffinity`: a volume without `nodeAffinity.required` fits every node;
/// otherwise one of its terms must match the node.
pub fn node_affinity_matches(pv: &PersistentVolume, node: &Node) -> bool {
    let Some(required) = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    required
        .node_selector_terms
        .iter()
        .any(|t| node_selector_term_matches(t, node))
}

pub fn volume_phase(pv: &PersistentVolume) -> &str {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn claim_phase(pvc: &PersistentVolumeClaim) -> &str {
    pvc.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The best volume for `claim` among `volumes`, as upstream's binder chooses (see the
/// module's text). `node`: the scheduler's path, where a volume's node affinity must match
/// and access modes are checked per volume; without it (the PV controller) a claim of a
/// `WaitForFirstConsumer` class (`delay_binding`) only gets a volume pre-bound to it — the
/// scheduler picks the others. `excluded`: volume names already chosen for other claims.
pub fn find_best_match<'a>(
    claim: &PersistentVolumeClaim,
    volumes: &[&'a PersistentVolume],
    node: Option<&Node>,
    delay_binding: bool,
    excluded: &HashSet<String>,
) -> Option<&'a PersistentVolume> {
    if node.is_some() {
        return find_matching_volume(claim, volumes, node, delay_binding, excluded);
    }
    // The controller's ordered index: volumes grouped by their access modes, groups that
    // include the claim's modes tried fewest modes first.
    let wanted = claim_modes(claim);
    let mut groups: Vec<BTreeSet<String>> = volumes
        .iter()
        .map(|v| volume_modes(v))
        .filter(|m| wanted.is_subset(m))
        .collect();
    groups.sort_by_key(|m| m.len());
    groups.dedup();
    for group in groups {
        let in_group: Vec<&'a PersistentVolume> = volumes
            .iter()
            .copied()
            .filter(|v| volume_modes(v) == group)
            .collect();
        if let Some(v) = find_matching_volume(claim, &in_group, None, delay_binding, excluded) {
            return Some(v);
        }
    }
    None
}

/// Upstream's `FindMatchingVolume` over one set of volumes.
fn find_matching_volume<'a>(
    claim: &PersistentVolumeClaim,
    volumes: &[&'a PersistentVolume],
    node: Option<&Node>,
    delay_binding: bool,
    excluded: &HashSet<String>,
) -> Option<&'a PersistentVolume> {
    let requested = claim_request(claim);
    let class = claim_class(claim);
    let selector = claim.spec.as_ref().and_then(|s| s.selector.as_ref());
    let mut smallest: Option<(&'a PersistentVolume, Quantity)> = None;
    for &volume in volumes {
        let name = volume.metadata.name.clone().unwrap_or_default();
        if excluded.contains(&name) {
            continue;
        }
        let claimed = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        let bound_here = is_volume_bound_to_claim(volume, claim);
        if claimed.is_some() && !bound_here {
            continue;
        }
        let size = volume_capacity(volume);
        if size < requested
            || volume_mode_mismatch(claim, volume)
            || volume.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let affinity_ok = node.is_none_or(|n| node_affinity_matches(volume, n));
        if bound_here {
            // a pre-bound volume is the claim's, or nothing on this node is
            return affinity_ok.then_some(volume);
        }
        if node.is_none() && delay_binding {
            continue;
        }
        if volume_phase(volume) != "Available" {
            continue;
        }
        if selector.is_some_and(|s| {
            !label_selector_matches(s, &volume.metadata.labels.clone().unwrap_or_default())
        }) {
            continue;
        }
        if volume_class(volume) != class || !affinity_ok {
            continue;
        }
        if node.is_some() && !access_modes_satisfied(claim, volume) {
            continue;
        }
        if smallest.as_ref().is_none_or(|(_, s)| *s > size) {
            smallest = Some((volume, size));
        }
    }
    smallest.map(|(v, _)| v)
}

/// Whether the class is annotated the default (`"true"`, either annotation).
pub fn is_default_class(sc: &StorageClass) -> bool {
    annotation(&sc.metadata, ANN_DEFAULT_CLASS) == Some("true")
        || annotation(&sc.metadata, ANN_BETA_DEFAULT_CLASS) == Some("true")
}

/// Upstream's `GetDefaultClass`: of the classes marked default, the newest (then the first
/// by name), so a second default added during a migration takes over at once.
pub fn default_class<'a>(
    classes: impl IntoIterator<Item = &'a StorageClass>,
) -> Option<&'a StorageClass> {
    classes
        .into_iter()
        .filter(|c| is_default_class(c))
        .max_by(|a, b| {
            let created = |c: &StorageClass| {
                c.metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(i128::MIN, |t| t.0.as_nanosecond())
            };
            created(a)
                .cmp(&created(b))
                .then_with(|| b.metadata.name.cmp(&a.metadata.name))
        })
}

/// A class's binding mode is `WaitForFirstConsumer`.
pub fn is_delay_binding(sc: &StorageClass) -> bool {
    sc.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
}

// === A pod's claims ===

/// A claim one of a pod's volumes uses: a `persistentVolumeClaim` volume's `claimName`, or
/// for a generic ephemeral volume (`ephemeral.volumeClaimTemplate`) the claim upstream's
/// ephemeral volume controller creates, `<pod>-<volume>` (component-helpers'
/// `VolumeClaimName`), which the pod may use only when it controls it ([`claim_is_for_pod`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PodClaim<'a> {
    pub volume: &'a Volume,
    pub name: String,
    pub ephemeral: bool,
}

/// The claim of a generic ephemeral volume of `pod`.
pub fn ephemeral_claim_name(pod: &Pod, volume: &Volume) -> String {
    format!(
        "{}-{}",
        pod.metadata.name.as_deref().unwrap_or_default(),
        volume.name
    )
}

/// The claim `volume` uses, if any.
pub fn volume_claim<'a>(pod: &Pod, volume: &'a Volume) -> Option<PodClaim<'a>> {
    if let Some(c) = &volume.persistent_volume_claim {
        return Some(PodClaim {
            volume,
            name: c.claim_name.clone(),
            ephemeral: false,
        });
    }
    volume.ephemeral.as_ref().map(|_| PodClaim {
        volume,
        name: ephemeral_claim_name(pod, volume),
        ephemeral: true,
    })
}

/// The claims of `pod`'s volumes, in volume order.
pub fn pod_claims(pod: &Pod) -> Vec<PodClaim<'_>> {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| volume_claim(pod, v))
        .collect()
}

/// Upstream's `VolumeIsForPod`: an ephemeral volume's claim must be controlled by the pod
/// (a claim of that name made by someone else is never used), with upstream's error.
pub fn claim_is_for_pod(pod: &Pod, pvc: &PersistentVolumeClaim) -> Result<(), String> {
    let controlled = pvc
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && Some(&r.uid) == pod.metadata.uid.as_ref());
    if pvc.metadata.namespace == pod.metadata.namespace && controlled {
        return Ok(());
    }
    let ns = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default()
        )
    };
    Err(format!(
        "PVC {} was not created for pod {} (pod is not owner)",
        ns(&pvc.metadata),
        ns(&pod.metadata)
    ))
}

/// Upstream's `podIsShutDown` (PVC protection): deleted with a zero grace period, i.e. the
/// kubelet is done with it or it was force-deleted.
pub fn pod_is_shut_down(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        && pod.metadata.deletion_grace_period_seconds == Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(v: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(v).expect("pv")
    }

    fn pvc(v: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(v).expect("pvc")
    }

    fn volume(name: &str, size: &str, modes: &[&str], class: &str) -> PersistentVolume {
        pv(json!({"metadata": {"name": name, "labels": {"disk": name}},
            "spec": {"capacity": {"storage": size}, "accessModes": modes, "storageClassName": class},
            "status": {"phase": "Available"}}))
    }

    fn claim(size: &str, modes: &[&str], class: Option<&str>) -> PersistentVolumeClaim {
        let mut c = json!({"metadata": {"name": "data", "namespace": "ns", "uid": "u1"},
            "spec": {"accessModes": modes, "resources": {"requests": {"storage": size}}}});
        if let Some(class) = class {
            c["spec"]["storageClassName"] = json!(class);
        }
        pvc(c)
    }

    fn best<'a>(c: &PersistentVolumeClaim, vs: &'a [PersistentVolume]) -> Option<&'a str> {
        let refs: Vec<&PersistentVolume> = vs.iter().collect();
        find_best_match(c, &refs, None, false, &HashSet::new())
            .and_then(|v| v.metadata.name.as_deref())
    }

    #[test]
    fn the_smallest_volume_that_is_big_enough_wins() {
        let vs = [
            volume("big", "10Gi", &["ReadWriteOnce"], ""),
            volume("small", "1Gi", &["ReadWriteOnce"], ""),
            volume("fits", "2Gi", &["ReadWriteOnce"], ""),
        ];
        assert_eq!(
            best(&claim("1500Mi", &["ReadWriteOnce"], None), &vs),
            Some("fits")
        );
        assert_eq!(
            best(&claim("1Gi", &["ReadWriteOnce"], None), &vs),
            Some("small")
        );
        assert_eq!(best(&claim("11Gi", &["ReadWriteOnce"], None), &vs), None);
        // a request in another unit compares by value
        assert_eq!(
            best(&claim("2147483648", &["ReadWriteOnce"], None), &vs),
            Some("fits")
        );
    }

    #[test]
    fn access_modes_must_be_offered_and_fewer_modes_are_preferred() {
        let vs = [
            volume("rwx", "1Gi", &["ReadWriteOnce", "ReadWriteMany"], ""),
            volume("rwo-big", "5Gi", &["ReadWriteOnce"], ""),
            volume("rox", "1Gi", &["ReadOnlyMany"], ""),
        ];
        // RWO alone: the single-mode group first, even though it is larger
        assert_eq!(
            best(&claim("1Gi", &["ReadWriteOnce"], None), &vs),
            Some("rwo-big")
        );
        assert_eq!(
            best(&claim("1Gi", &["ReadWriteMany"], None), &vs),
            Some("rwx")
        );
        assert_eq!(
            best(&claim("1Gi", &["ReadOnlyMany"], None), &vs),
            Some("rox")
        );
        assert_eq!(
            best(&claim("1Gi", &["ReadWriteOncePod"], None), &vs),
            None,
            "nobody offers RWOP"
        );
    }

    #[test]
    fn classes_must_be_equal_and_unset_means_no_class() {
        let vs = [
            volume("fast", "1Gi", &["ReadWriteOnce"], "fast"),
            volume("none", "1Gi", &["ReadWriteOnce"], ""),
        ];
        assert_eq!(
            best(&claim("1Gi", &["ReadWriteOnce"], Some("fast")), &vs),
            Some("fast")
        );
        assert_eq!(
            best(&claim("1Gi", &["ReadWriteOnce"], Some("")), &vs),
            Some("none")
        );
        assert_eq!(
            best(&claim("1Gi", &["ReadWriteOnce"], None), &vs),
            Some("none")
        );
        assert_eq!(
            best(&claim("1Gi", &["ReadWriteOnce"], Some("slow")), &vs),
            None
        );
        // the beta annotation beats the field
        let mut c = claim("1Gi", &["ReadWriteOnce"], Some(""));
        c.metadata.annotations =
            Some([(ANN_BETA_STORAGE_CLASS.to_string(), "fast".to_string())].into());
        assert_eq!(claim_class(&c), "fast");
        assert_eq!(best(&c, &vs), Some("fast"));
    }

    #[test]
    fn selectors_volume_modes_phases_and_deletion_rule_volumes_out() {
        let mut vs = vec![
            volume("a", "1Gi", &["ReadWriteOnce"], ""),
            volume("b", "2Gi", &["ReadWriteOnce"], ""),
        ];
        let mut c = claim("1Gi", &["ReadWriteOnce"], None);
        c.spec.as_mut().unwrap().selector =
            Some(serde_json::from_value(json!({"matchLabels": {"disk": "b"}})).unwrap());
        assert_eq!(best(&c, &vs), Some("b"));
        // a Block claim takes no Filesystem volume
        let mut block = claim("1Gi", &["ReadWriteOnce"], None);
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        assert_eq!(best(&block, &vs), None);
        vs[1].spec.as_mut().unwrap().volume_mode = Some("Block".into());
        assert_eq!(best(&block, &vs), Some("b"));
        // Released, Bound or deleted volumes are not offered
        let plain = claim("1Gi", &["ReadWriteOnce"], None);
        vs[0].status.as_mut().unwrap().phase = Some("Released".into());
        assert_eq!(best(&plain, &vs), None);
        vs[0].status.as_mut().unwrap().phase = Some("Available".into());
        vs[0].metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(best(&plain, &vs), None);
    }

    #[test]
    fn a_volume_pre_bound_to_the_claim_wins_and_others_claimed_are_skipped() {
        let mut vs = vec![
            volume("other", "1Gi", &["ReadWriteOnce"], ""),
            volume("mine", "9Gi", &["ReadWriteOnce"], ""),
        ];
        vs[0].spec.as_mut().unwrap().claim_ref =
            Some(serde_json::from_value(json!({"namespace": "ns", "name": "someone"})).unwrap());
        vs[1].spec.as_mut().unwrap().claim_ref =
            Some(serde_json::from_value(json!({"namespace": "ns", "name": "data"})).unwrap());
        // pre-bound wins even though another class would not match and it is not Available
        vs[1].status.as_mut().unwrap().phase = Some("Bound".into());
        let c = claim("1Gi", &["ReadWriteOnce"], None);
        assert_eq!(best(&c, &vs), Some("mine"));
        // a uid in the reference must be the claim's
        vs[1].spec.as_mut().unwrap().claim_ref.as_mut().unwrap().uid = Some("other-uid".into());
        assert_eq!(best(&c, &vs), None);
        // delay binding: the controller binds only pre-bound volumes
        let free = [volume("free", "1Gi", &["ReadWriteOnce"], "")];
        let refs: Vec<&PersistentVolume> = free.iter().collect();
        assert!(find_best_match(&c, &refs, None, true, &HashSet::new()).is_none());
    }

    #[test]
    fn the_scheduler_path_checks_node_affinity_and_exclusions() {
        let node = |name: &str| -> Node {
            serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}),
            )
            .unwrap()
        };
        let mut pinned = volume("pinned", "1Gi", &["ReadWriteOnce"], "local");
        pinned.spec.as_mut().unwrap().node_affinity = Some(
            serde_json::from_value(
                json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}),
            )
            .unwrap(),
        );
        let vs = [pinned];
        let refs: Vec<&PersistentVolume> = vs.iter().collect();
        let c = claim("1Gi", &["ReadWriteOnce"], Some("local"));
        let none = HashSet::new();
        assert!(find_best_match(&c, &refs, Some(&node("n1")), true, &none).is_some());
        assert!(find_best_match(&c, &refs, Some(&node("n2")), true, &none).is_none());
        let taken: HashSet<String> = ["pinned".to_string()].into();
        assert!(find_best_match(&c, &refs, Some(&node("n1")), true, &taken).is_none());
        assert!(node_affinity_matches(
            &volume("free", "1Gi", &[], ""),
            &node("n2")
        ));
    }

    #[test]
    fn a_named_volume_is_checked_with_upstreams_messages() {
        let v = volume("v", "1Gi", &["ReadWriteOnce"], "fast");
        let check = |size: &str, modes: &[&str], class: &str| {
            check_volume_satisfies_claim(&v, &claim(size, modes, Some(class)))
        };
        assert_eq!(check("1Gi", &["ReadWriteOnce"], "fast"), Ok(()));
        assert_eq!(
            check("2Gi", &["ReadWriteOnce"], "fast"),
            Err("requested PV is too small".into())
        );
        assert_eq!(
            check("1Gi", &["ReadWriteOnce"], "slow"),
            Err("storageClassName does not match".into())
        );
        assert_eq!(
            check("1Gi", &["ReadWriteMany"], "fast"),
            Err("incompatible accessMode".into())
        );
    }

    #[test]
    fn the_newest_default_class_is_the_default() {
        let class = |name: &str, created: &str, default: Option<&str>| -> StorageClass {
            let mut c = json!({"metadata": {"name": name, "creationTimestamp": created}, "provisioner": "p"});
            if let Some(d) = default {
                c["metadata"]["annotations"] = json!({ANN_DEFAULT_CLASS: d});
            }
            serde_json::from_value(c).unwrap()
        };
        let cs = [
            class("old", "2026-01-01T00:00:00Z", Some("true")),
            class("new", "2026-02-01T00:00:00Z", Some("true")),
            class("newest-not-default", "2026-03-01T00:00:00Z", Some("false")),
            class("plain", "2026-03-01T00:00:00Z", None),
        ];
        assert_eq!(
            default_class(&cs).and_then(|c| c.metadata.name.as_deref()),
            Some("new")
        );
        assert!(default_class(&cs[2..]).is_none());
    }

    #[test]
    fn a_pods_claims_include_its_ephemeral_volumes_and_those_must_be_its_own() {
        let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
        "spec": {"containers": [], "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
        ]}}))
        .unwrap();
        let claims: Vec<(String, bool)> = pod_claims(&pod)
            .into_iter()
            .map(|c| (c.name, c.ephemeral))
            .collect();
        assert_eq!(
            claims,
            [
                ("shared".to_string(), false),
                ("web-scratch".to_string(), true)
            ]
        );
        let claim = |owner: serde_json::Value| -> PersistentVolumeClaim {
            serde_json::from_value(
                json!({"metadata": {"name": "web-scratch", "namespace": "ns",
                "ownerReferences": owner}}),
            )
            .unwrap()
        };
        let owned = claim(
            json!([{"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": "u1", "controller": true}]),
        );
        assert_eq!(claim_is_for_pod(&pod, &owned), Ok(()));
        let not_controller =
            claim(json!([{"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": "u1"}]));
        let other_pod = claim(
            json!([{"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": "u0", "controller": true}]),
        );
        for c in [not_controller, other_pod, claim(json!([]))] {
            assert_eq!(
                claim_is_for_pod(&pod, &c).unwrap_err(),
                "PVC ns/web-scratch was not created for pod ns/web (pod is not owner)"
            );
        }
    }
}
