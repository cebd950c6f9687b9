//! A StatefulSet's `volumeClaimTemplates`, as upstream's controller keeps them: pod
//! `<set>-<i>` gets, before it is created, a claim `<template>-<set>-<i>` per template
//! (the template's labels plus the set's `selector.matchLabels`), and its volume of the
//! template's name points at that claim; a claim that exists is reused, so a recreated pod
//! finds its data. `persistentVolumeClaimRetentionPolicy` decides the claims' owner
//! references, which the garbage collector acts on (upstream's
//! `updateClaimOwnerRefForSetAndPod`):
//!
//! | whenDeleted / whenScaled | pod in range | pod scaled away |
//! |---|---|---|
//! | Retain / Retain | none | none |
//! | Delete / Retain | the set | the set |
//! | Retain / Delete | none | its pod |
//! | Delete / Delete | the set | its pod |
//!
//! so `Delete` claims go with the set, or with their pod when the set is scaled below it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

/// `<template>-<set>-<ordinal>`.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// `persistentVolumeClaimRetentionPolicy`: (whenDeleted is Delete, whenScaled is Delete).
pub fn policy(sts: &StatefulSet) -> (bool, bool) {
    let p = sts.spec.persistent_volume_claim_retention_policy.as_ref();
    let delete = |v: Option<&String>| v.is_some_and(|v| v == "Delete");
    (
        delete(p.and_then(|p| p.when_deleted.as_ref())),
        delete(p.and_then(|p| p.when_scaled.as_ref())),
    )
}

/// A plain (not controller) reference to `owner`, as upstream's `setOwnerRef` makes.
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        ..Default::default()
    }
}

/// Which owners a claim of a pod should have: (the set, the pod).
pub fn wanted_owners(policy: (bool, bool), in_range: bool) -> (bool, bool) {
    let (with_set, on_scale) = policy;
    match (on_scale, in_range) {
        (true, false) => (false, true),
        _ => (with_set, false),
    }
}

/// The claim's owner references with `set` and `pod` present or absent as wanted; None when
/// nothing changes.
pub fn fixed_refs(
    claim: &PersistentVolumeClaim,
    set: &OwnerReference,
    pod: Option<&OwnerReference>,
    wanted: (bool, bool),
) -> Option<Vec<OwnerReference>> {
    let current = claim.metadata.owner_references.clone().unwrap_or_default();
    let mut refs = current.clone();
    let mut want = |r: &OwnerReference, on: bool| {
        let has = refs.iter().any(|x| x.uid == r.uid);
        if on && !has {
            refs.push(r.clone());
        } else if !on && has {
            refs.retain(|x| x.uid != r.uid);
        }
    };
    want(set, wanted.0);
    if let Some(pod) = pod {
        want(pod, wanted.1);
    }
    // a pod's earlier incarnation (another uid) is no owner either
    if let Some(pod) = pod {
        refs.retain(|x| !(x.kind == "Pod" && x.name == pod.name && x.uid != pod.uid));
    }
    (refs != current).then_some(refs)
}

/// The claim of `template` for ordinal `ordinal`, before any owner reference.
pub fn new_claim(
    sts: &StatefulSet,
    template: &PersistentVolumeClaim,
    ordinal: i32,
) -> PersistentVolumeClaim {
    let set = sts.name_any();
    let template_name = template.name_any();
    let mut claim = PersistentVolumeClaim {
        metadata: template.metadata.clone(),
        spec: template.spec.clone(),
        status: None,
    };
    let mut labels: BTreeMap<String, String> = claim.metadata.labels.take().unwrap_or_default();
    if let Some(sel) = sts.spec.selector.match_labels.as_ref() {
        labels.extend(sel.clone());
    }
    claim.metadata = kube::api::ObjectMeta {
        name: Some(claim_name(&template_name, &set, ordinal)),
        namespace: sts.namespace(),
        labels: Some(labels),
        annotations: claim.metadata.annotations.take(),
        ..Default::default()
    };
    claim
}

/// Point the pod's volume of each template's name at the ordinal's claim (added when the
/// pod template has no such volume).
pub fn set_claim_volumes(spec: &mut PodSpec, sts: &StatefulSet, ordinal: i32) {
    let set = sts.name_any();
    let templates = sts.spec.volume_claim_templates.clone().unwrap_or_default();
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    for t in templates {
        let name = t.name_any();
        let volume = Volume {
            name: name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&name, &set, ordinal),
                read_only: None,
            }),
            ..Default::default()
        };
        match volumes.iter_mut().find(|v| v.name == name) {
            Some(v) => *v = volume,
            None => volumes.push(volume),
        }
    }
}

/// The reference a claim of `pod` gets when it is to go with the pod.
pub fn pod_ref(pod: &Pod) -> OwnerReference {
    owner_ref(pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(policy: serde_json::Value) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "ns", "uid": "set-uid"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}, "serviceName": "db",
                     "persistentVolumeClaimRetentionPolicy": policy,
                     "template": {"metadata": {"labels": {"app": "db"}},
                                  "spec": {"containers": [], "volumes": [{"name": "data", "emptyDir": {}}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": {"tier": "disk"}},
                         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}))
        .unwrap()
    }

    #[test]
    fn claims_are_named_labelled_and_mounted_per_ordinal() {
        let s = set(json!({"whenDeleted": "Retain", "whenScaled": "Retain"}));
        let t = s.spec.volume_claim_templates.as_ref().unwrap()[0].clone();
        let c = new_claim(&s, &t, 2);
        assert_eq!(c.metadata.name.as_deref(), Some("data-db-2"));
        assert_eq!(c.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(
            c.metadata.labels.unwrap(),
            [
                ("app".to_string(), "db".to_string()),
                ("tier".to_string(), "disk".to_string())
            ]
            .into()
        );
        let mut spec = s.spec.template.spec.clone().unwrap();
        set_claim_volumes(&mut spec, &s, 2);
        let volumes = spec.volumes.unwrap();
        assert_eq!(
            volumes.len(),
            1,
            "the template's volume of that name is replaced"
        );
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "data-db-2"
        );
    }

    #[test]
    fn retention_policies_choose_the_owners() {
        let policies = [
            (("Retain", "Retain"), (false, false), (false, false)),
            (("Delete", "Retain"), (true, false), (true, false)),
            (("Retain", "Delete"), (false, false), (false, true)),
            (("Delete", "Delete"), (true, false), (false, true)),
        ];
        for ((deleted, scaled), in_range, scaled_away) in policies {
            let s = set(json!({"whenDeleted": deleted, "whenScaled": scaled}));
            let p = policy(&s);
            assert_eq!(
                wanted_owners(p, true),
                in_range,
                "{deleted}/{scaled} in range"
            );
            assert_eq!(
                wanted_owners(p, false),
                scaled_away,
                "{deleted}/{scaled} scaled away"
            );
        }
        // unset is Retain
        assert_eq!(policy(&set(json!({}))), (false, false));
    }

    #[test]
    fn owner_references_are_added_and_removed_as_wanted() {
        let s = set(json!({}));
        let set_ref = owner_ref(&s);
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "db-0", "uid": "pod-2"}})).unwrap();
        let pod_ref = pod_ref(&pod);
        let mut claim: PersistentVolumeClaim = serde_json::from_value(json!({"metadata": {"name": "data-db-0",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "db-0", "uid": "pod-1"}]}}))
        .unwrap();
        // the old pod's reference goes, the set's comes
        let refs = fixed_refs(&claim, &set_ref, Some(&pod_ref), (true, false)).unwrap();
        assert_eq!(refs, vec![set_ref.clone()]);
        claim.metadata.owner_references = Some(refs);
        assert_eq!(
            fixed_refs(&claim, &set_ref, Some(&pod_ref), (true, false)),
            None
        );
        let refs = fixed_refs(&claim, &set_ref, Some(&pod_ref), (false, true)).unwrap();
        assert_eq!(refs, vec![pod_ref]);
    }
}
