//! Upstream's VolumeBinding plugin, its essentials: the claims a pod's volumes name decide
//! where it may go, and a claim of a `WaitForFirstConsumer` class is bound (or provisioned)
//! for the node the pod goes to before the pod is bound.
//!
//! - PreFilter ([`prefilter`]): a claim that does not exist (`persistentvolumeclaim "x" not
//!   found`; for a generic ephemeral volume, whose claim `<pod>-<volume>` the ephemeral
//!   volume controller makes, `waiting for ephemeral volume controller to create ...`), an
//!   ephemeral volume's claim the pod does not control (`PVC ns/x was not created for pod
//!   ns/p (pod is not owner)`), or a claim being deleted, or an unbound claim of an `Immediate` class (`pod has
//!   unbound immediate PersistentVolumeClaims`, the PV controller binds those on its own),
//!   makes the pod unschedulable everywhere (upstream's UnschedulableAndUnresolvable: no
//!   preemption helps).
//! - Filter ([`PodVolumes::filter`]): a bound claim's volume must exist and its
//!   `nodeAffinity` match the node; an unbound `WaitForFirstConsumer` claim needs on the
//!   node an Available volume that fits it (the binder's rules plus the node's affinity,
//!   no volume used twice by one pod) or a class that can provision there (a provisioner,
//!   not `kubernetes.io/no-provisioner`, whose `allowedTopologies` admit the node); a claim
//!   whose provisioning already named a node (`volume.kubernetes.io/selected-node`) fits
//!   only that node. Reasons are upstream's.
//! - PreBind ([`prebind`]): the chosen static volumes get the claim in their `claimRef`
//!   (with `pv.kubernetes.io/bound-by-controller`), claims to provision get the
//!   `volume.kubernetes.io/selected-node` annotation; then the pod is bound only once every
//!   claim is bound (upstream's `bindTimeoutSeconds`, 600 s, then the attempt fails and is
//!   retried). The PV controller finishes the bindings and its provisioner makes volumes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;

use component::volumes::{self as vol, ANN_BIND_COMPLETED, ANN_SELECTED_NODE};

pub const PLUGIN: &str = "VolumeBinding";

/// Upstream's reasons.
pub const NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
pub const PV_NOT_EXIST: &str =
    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";
pub const UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";

/// Upstream's default `bindTimeoutSeconds`.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(600);

/// The scheduler's view of claims, volumes and classes.
#[derive(Clone)]
pub struct Listers {
    pub claims: Store<PersistentVolumeClaim>,
    pub volumes: Store<PersistentVolume>,
    pub classes: Store<StorageClass>,
}

/// What a pod's claims ask of a node.
#[derive(Debug, Clone)]
pub struct PodVolumes {
    /// The volumes of bound claims (None: the claim names a volume that does not exist).
    bound: Vec<Option<Arc<PersistentVolume>>>,
    /// Unbound claims of `WaitForFirstConsumer` classes, with their class.
    delayed: Vec<(Arc<PersistentVolumeClaim>, Arc<StorageClass>)>,
    /// Every volume, for matching the delayed claims.
    volumes: Vec<Arc<PersistentVolume>>,
}

/// What PreBind does for a node: claims to bind to a chosen volume, claims to provision.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub bind: Vec<(Arc<PersistentVolumeClaim>, Arc<PersistentVolume>)>,
    pub provision: Vec<Arc<PersistentVolumeClaim>>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.bind.is_empty() && self.provision.is_empty()
    }
}

/// Whether the pod's volumes name any claim (only those pods need the listers).
pub fn uses_claims(pod: &Pod) -> bool {
    !vol::pod_claims(pod).is_empty()
}

/// Upstream's PreFilter: None when the pod names no claim; Err with the reason when it
/// cannot be scheduled anywhere.
pub fn prefilter(pod: &Pod, l: &Listers) -> Result<Option<PodVolumes>, String> {
    let claims = vol::pod_claims(pod);
    if claims.is_empty() {
        return Ok(None);
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = PodVolumes {
        bound: Vec::new(),
        delayed: Vec::new(),
        volumes: Vec::new(),
    };
    let mut immediate = false;
    for c in claims {
        let name = c.name;
        let claim = l
            .claims
            .get(&ObjectRef::new(&name).within(&ns))
            .ok_or_else(|| {
                // an ephemeral volume's claim is missing for a moment after every pod's create
                if c.ephemeral {
                    format!("waiting for ephemeral volume controller to create the persistentvolumeclaim {name:?}")
                } else {
                    format!("persistentvolumeclaim {name:?} not found")
                }
            })?;
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim {name:?} is being deleted"));
        }
        if c.ephemeral {
            vol::claim_is_for_pod(pod, &claim)?;
        }
        let volume = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .unwrap_or_default();
        if !volume.is_empty() {
            out.bound.push(l.volumes.get(&ObjectRef::new(&volume)));
            continue;
        }
        let class_name = vol::claim_class(&claim);
        let class = (!class_name.is_empty())
            .then(|| l.classes.get(&ObjectRef::new(&class_name)))
            .flatten();
        match class {
            Some(c) if vol::is_delay_binding(&c) => out.delayed.push((claim, c)),
            _ => immediate = true,
        }
    }
    if immediate {
        return Err(UNBOUND_IMMEDIATE.into());
    }
    if !out.delayed.is_empty() {
        out.volumes = l.volumes.state();
    }
    Ok(Some(out))
}

impl PodVolumes {
    /// Upstream's Filter for one node: the plan for it, or why it does not fit.
    pub fn filter(&self, node: &Node) -> Result<Plan, String> {
        for v in &self.bound {
            let Some(v) = v else {
                return Err(PV_NOT_EXIST.into());
            };
            if !vol::node_affinity_matches(v, node) {
                return Err(NODE_CONFLICT.into());
            }
        }
        let name = node.metadata.name.as_deref().unwrap_or("");
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let mut plan = Plan::default();
        let mut chosen: HashSet<String> = HashSet::new();
        for (claim, class) in &self.delayed {
            if let Some(selected) = claim
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANN_SELECTED_NODE))
            {
                if selected != name {
                    return Err(BIND_CONFLICT.into());
                }
                plan.provision.push(claim.clone());
                continue;
            }
            let class_name = class.metadata.name.clone().unwrap_or_default();
            let candidates: Vec<&PersistentVolume> = self
                .volumes
                .iter()
                .map(|v| v.as_ref())
                .filter(|v| vol::volume_class(v) == class_name)
                .collect();
            if let Some(v) = vol::find_best_match(claim, &candidates, Some(node), true, &chosen) {
                let v = self
                    .volumes
                    .iter()
                    .find(|a| a.metadata.name == v.metadata.name)
                    .cloned()
                    .expect("matched among these volumes");
                chosen.insert(v.metadata.name.clone().unwrap_or_default());
                plan.bind.push((claim.clone(), v));
                continue;
            }
            let can_provision = !class.provisioner.is_empty()
                && class.provisioner != vol::NO_PROVISIONER
                && topology_allows(class, &labels);
            if !can_provision {
                return Err(BIND_CONFLICT.into());
            }
            plan.provision.push(claim.clone());
        }
        Ok(plan)
    }
}

/// Upstream's `MatchTopologySelectorTerms`: no terms admit every node; otherwise one term's
/// every expression must hold (the label's value among the expression's values).
fn topology_allows(
    class: &StorageClass,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let Some(terms) = class.allowed_topologies.as_ref().filter(|t| !t.is_empty()) else {
        return true;
    };
    terms.iter().any(|t| {
        t.match_label_expressions.iter().flatten().all(|e| {
            labels
                .get(&e.key)
                .is_some_and(|v| e.values.iter().any(|x| x == v))
        })
    })
}

/// Upstream's PreBind: write the plan, then wait until every claim of it is bound (for
/// `node`), at most `timeout`. The error is what follows "binding volumes: ".
pub async fn prebind(
    client: &Client,
    plan: &Plan,
    node: &Node,
    timeout: Duration,
) -> Result<(), String> {
    let node_name = node.metadata.name.clone().unwrap_or_default();
    let pvs = Api::<PersistentVolume>::all(client.clone());
    for (claim, volume) in &plan.bind {
        let mut next = volume.as_ref().clone();
        if let Some(spec) = next.spec.as_mut() {
            spec.claim_ref = Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: claim.metadata.uid.clone(),
                resource_version: claim.metadata.resource_version.clone(),
                ..Default::default()
            });
        }
        next.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(vol::ANN_BOUND_BY_CONTROLLER.into(), "yes".into());
        let name = next.metadata.name.clone().unwrap_or_default();
        pvs.replace(&name, &PostParams::default(), &next)
            .await
            .map_err(|e| format!("binding volume {name:?}: {e}"))?;
    }
    for claim in &plan.provision {
        let selected = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANN_SELECTED_NODE));
        if selected == Some(&node_name) {
            continue;
        }
        let ns = claim.metadata.namespace.clone().unwrap_or_default();
        let name = claim.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({"metadata": {
            "resourceVersion": claim.metadata.resource_version,
            "annotations": {ANN_SELECTED_NODE: node_name},
        }});
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("selecting node {node_name:?} for claim \"{ns}/{name}\": {e}"))?;
    }
    let claims: Vec<&Arc<PersistentVolumeClaim>> = plan
        .bind
        .iter()
        .map(|(c, _)| c)
        .chain(plan.provision.iter())
        .collect();
    let deadline = Instant::now() + timeout;
    loop {
        let mut pending = false;
        for claim in &claims {
            if !claim_bound(client, claim, node, plan.provision.contains(claim)).await? {
                pending = true;
                break;
            }
        }
        if !pending {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err("timed out waiting for the condition".into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Upstream's `checkBindings` for one claim: bound (the PV controller has finished), its
/// volume fits the node; an error when waiting cannot help.
async fn claim_bound(
    client: &Client,
    claim: &PersistentVolumeClaim,
    node: &Node,
    provisioning: bool,
) -> Result<bool, String> {
    let ns = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let now = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .get_opt(&name)
        .await
        .map_err(|e| format!("reading claim \"{ns}/{name}\": {e}"))?
        .filter(|c| c.metadata.uid == claim.metadata.uid)
        .ok_or_else(|| format!("persistentvolumeclaim {name:?} was deleted"))?;
    let volume = now
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    if volume.is_empty() || !vol::has_annotation(&now.metadata, ANN_BIND_COMPLETED) {
        if provisioning && !vol::has_annotation(&now.metadata, ANN_SELECTED_NODE) {
            return Err(format!("selectedNode annotation reset for PVC {name:?}"));
        }
        return Ok(false);
    }
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get_opt(&volume)
        .await
        .map_err(|e| format!("reading volume {volume:?}: {e}"))?
        .ok_or_else(|| format!("persistentvolume {volume:?} not found"))?;
    if !vol::node_affinity_matches(&pv, node) {
        return Err(format!(
            "pv {volume:?} node affinity doesn't match node {:?}",
            node.metadata.name.clone().unwrap_or_default()
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    fn store<K>(items: Vec<serde_json::Value>) -> Store<K>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned,
    {
        let (reader, mut writer) = reflector::store();
        for v in items {
            let obj: K = serde_json::from_value(v).expect("object");
            writer.apply_watcher_event(&watcher::Event::Apply(obj));
        }
        reader
    }

    fn listers(claims: Vec<serde_json::Value>, volumes: Vec<serde_json::Value>) -> Listers {
        Listers {
            claims: store(claims),
            volumes: store(volumes),
            classes: store(vec![
                json!({"metadata": {"name": "wait"}, "provisioner": "kaze.io/local-path",
                       "volumeBindingMode": "WaitForFirstConsumer"}),
                json!({"metadata": {"name": "static"}, "provisioner": "kubernetes.io/no-provisioner",
                       "volumeBindingMode": "WaitForFirstConsumer"}),
                json!({"metadata": {"name": "zoned"}, "provisioner": "kaze.io/local-path",
                       "volumeBindingMode": "WaitForFirstConsumer",
                       "allowedTopologies": [{"matchLabelExpressions": [{"key": "zone", "values": ["a"]}]}]}),
                json!({"metadata": {"name": "now"}, "provisioner": "kaze.io/local-path",
                       "volumeBindingMode": "Immediate"}),
            ]),
        }
    }

    fn pod(claims: &[&str]) -> Pod {
        let volumes: Vec<serde_json::Value> = claims
            .iter()
            .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [], "volumes": volumes}}))
        .expect("pod")
    }

    fn claim(name: &str, class: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": "1Gi"}}}});
        if let (Some(m), serde_json::Value::Object(e)) = (c.as_object_mut(), extra) {
            for (k, v) in e {
                if let (Some(inner), Some(more)) =
                    (m.get_mut(&k).and_then(|x| x.as_object_mut()), v.as_object())
                {
                    inner.extend(more.clone());
                } else {
                    m.insert(k, v);
                }
            }
        }
        c
    }

    fn pinned(name: &str, class: &str, node: &str) -> serde_json::Value {
        json!({"metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": class, "hostPath": {"path": "/x"},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}},
            "status": {"phase": "Available"}})
    }

    fn node(name: &str, zone: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name,
            "labels": {"kubernetes.io/hostname": name, "zone": zone}}}))
        .expect("node")
    }

    #[test]
    fn prefilter_refuses_missing_deleted_and_unbound_immediate_claims() {
        let l = listers(
            vec![
                claim("now", "now", json!({})),
                claim(
                    "gone",
                    "wait",
                    json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["x"]}}),
                ),
                claim("wait", "wait", json!({})),
            ],
            vec![],
        );
        assert!(prefilter(&pod(&[]), &l).expect("no claims").is_none());
        assert_eq!(
            prefilter(&pod(&["missing"]), &l).unwrap_err(),
            "persistentvolumeclaim \"missing\" not found"
        );
        assert_eq!(
            prefilter(&pod(&["gone"]), &l).unwrap_err(),
            "persistentvolumeclaim \"gone\" is being deleted"
        );
        assert_eq!(
            prefilter(&pod(&["wait", "now"]), &l).unwrap_err(),
            UNBOUND_IMMEDIATE
        );
        assert!(prefilter(&pod(&["wait"]), &l).expect("delayed").is_some());
    }

    #[test]
    fn an_ephemeral_volume_waits_for_its_own_claim() {
        let eph: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "pod-uid"},
            "spec": {"containers": [], "volumes": [{"name": "scratch",
                "ephemeral": {"volumeClaimTemplate": {"spec": {"storageClassName": "wait"}}}}]}}))
        .expect("pod");
        assert!(uses_claims(&eph));
        assert_eq!(
            prefilter(&eph, &listers(vec![], vec![])).unwrap_err(),
            "waiting for ephemeral volume controller to create the persistentvolumeclaim \"p-scratch\""
        );
        let foreign = claim("p-scratch", "wait", json!({}));
        assert_eq!(
            prefilter(&eph, &listers(vec![foreign], vec![])).unwrap_err(),
            "PVC ns/p-scratch was not created for pod ns/p (pod is not owner)"
        );
        let owned = claim(
            "p-scratch",
            "wait",
            json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod",
                "name": "p", "uid": "pod-uid", "controller": true}]}}),
        );
        let v = prefilter(&eph, &listers(vec![owned], vec![]))
            .expect("its own claim")
            .expect("claims");
        assert_eq!(v.filter(&node("n1", "a")).expect("fits").provision.len(), 1);
    }

    #[test]
    fn bound_claims_follow_their_volumes_node_affinity() {
        let l = listers(
            vec![
                claim("data", "wait", json!({"spec": {"volumeName": "pv-n1"}})),
                claim("lost", "wait", json!({"spec": {"volumeName": "nowhere"}})),
            ],
            vec![pinned("pv-n1", "wait", "n1")],
        );
        let v = prefilter(&pod(&["data"]), &l).unwrap().unwrap();
        assert!(v.filter(&node("n1", "a")).expect("fits").is_empty());
        assert_eq!(v.filter(&node("n2", "a")).unwrap_err(), NODE_CONFLICT);
        let v = prefilter(&pod(&["lost"]), &l).unwrap().unwrap();
        assert_eq!(v.filter(&node("n1", "a")).unwrap_err(), PV_NOT_EXIST);
    }

    #[test]
    fn delayed_claims_take_a_static_volume_or_provision_where_they_can() {
        let l = listers(
            vec![
                claim("dyn", "wait", json!({})),
                claim("local", "static", json!({})),
                claim("local2", "static", json!({})),
                claim("zoned", "zoned", json!({})),
                claim(
                    "chosen",
                    "wait",
                    json!({"metadata": {"annotations": {ANN_SELECTED_NODE: "n2"}}}),
                ),
            ],
            vec![pinned("disk-n1", "static", "n1")],
        );
        // a provisioner that can provision anywhere
        let v = prefilter(&pod(&["dyn"]), &l).unwrap().unwrap();
        let plan = v.filter(&node("n1", "a")).expect("fits");
        assert_eq!(plan.provision.len(), 1);
        assert!(plan.bind.is_empty());
        // no provisioner: only the node holding a free volume fits, and it is chosen
        let v = prefilter(&pod(&["local"]), &l).unwrap().unwrap();
        let plan = v.filter(&node("n1", "a")).expect("n1 has the disk");
        assert_eq!(plan.bind[0].1.metadata.name.as_deref(), Some("disk-n1"));
        assert_eq!(v.filter(&node("n2", "a")).unwrap_err(), BIND_CONFLICT);
        // two claims cannot share the one volume
        let v = prefilter(&pod(&["local", "local2"]), &l).unwrap().unwrap();
        assert_eq!(v.filter(&node("n1", "a")).unwrap_err(), BIND_CONFLICT);
        // allowedTopologies
        let v = prefilter(&pod(&["zoned"]), &l).unwrap().unwrap();
        assert!(v.filter(&node("n1", "a")).is_ok());
        assert_eq!(v.filter(&node("n1", "b")).unwrap_err(), BIND_CONFLICT);
        // provisioning already asked of a node: only that node
        let v = prefilter(&pod(&["chosen"]), &l).unwrap().unwrap();
        assert_eq!(v.filter(&node("n1", "a")).unwrap_err(), BIND_CONFLICT);
        assert_eq!(v.filter(&node("n2", "a")).expect("n2").provision.len(), 1);
    }
}
