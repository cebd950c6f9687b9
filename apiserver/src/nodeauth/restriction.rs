//! NodeRestriction admission (upstream's plugin, on by default in kaze; off with
//! `--disable-admission-plugins=NodeRestriction`): what the Node authorizer lets a node do
//! to pods, nodes, leases and service-account tokens, limited to its own:
//!
//! - pods: create only mirror pods (`kubernetes.io/config.mirror`) bound to itself, owned
//!   by its Node (one controller reference, its uid, no `blockOwnerDeletion`), referencing
//!   no service account, Secret, ConfigMap or PVC; delete, evict and update the status of
//!   pods bound to itself only, never changing their labels through the status;
//! - nodes: create, update and delete only its own Node, without setting or changing
//!   `node-restriction.kubernetes.io/` labels or `kubernetes.io`/`k8s.io` labels other than
//!   the kubelet's own, and without changing its taints after registration;
//! - leases: only `kube-node-lease/<its name>`;
//! - `serviceaccounts/<n>/token`: only tokens bound to a pod (by name and uid) bound to it;
//! - resourceslices (its DRA drivers publish them): created, and updated, only with
//!   `spec.nodeName` set to itself.
//!
//! Refusals are upstream's 403s (`pods "x" is forbidden: node "a" can only ...`).

use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::Value;

use super::{node_name, NODE_LEASE_NAMESPACE};
use crate::registry::ResourceDef;
use crate::state::AppState;
use crate::status::ApiError;

const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The node making the request being handled, if a node makes it and the plugin is on.
fn requesting_node(state: &AppState) -> Option<String> {
    if state
        .rbac
        .nodes
        .restriction_disabled
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return None;
    }
    let user = crate::requester::current()?;
    node_name(&user).map(String::from)
}

fn forbidden(def: &ResourceDef, name: &str, why: String) -> ApiError {
    ApiError::forbidden(def.plural, def.group, name, &why)
}

fn kind_of(def: &ResourceDef) -> Option<&'static str> {
    match (def.group, def.plural) {
        ("", "pods") => Some("pods"),
        ("", "nodes") => Some("nodes"),
        ("coordination.k8s.io", "leases") => Some("leases"),
        ("storage.k8s.io", "csinodes") => Some("csinodes"),
        ("resource.k8s.io", "resourceslices") => Some("resourceslices"),
        _ => None,
    }
}

fn str_at<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

async fn get(
    state: &AppState,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let def = state
        .registry
        .get("", "v1", plural)
        .expect("pods and nodes are built in");
    crate::objects::get(state, def, ns, name).await
}

/// A create by a node.
pub async fn admit_create(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    obj: &Value,
) -> Result<(), ApiError> {
    let Some(kind) = kind_of(def) else {
        return Ok(());
    };
    let Some(node) = requesting_node(state) else {
        return Ok(());
    };
    let name = crate::meta::meta_str(obj, "name").unwrap_or("");
    let deny = |why: String| Err(forbidden(def, name, why));
    match kind {
        "pods" => {
            let annotated = obj
                .pointer("/metadata/annotations")
                .and_then(Value::as_object)
                .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION));
            if !annotated {
                return deny(format!("pod does not have \"{MIRROR_ANNOTATION}\" annotation, node \"{node}\" can only create mirror pods"));
            }
            if str_at(obj, "/spec/nodeName") != node {
                return deny(format!(
                    "node \"{node}\" can only create pods with spec.nodeName set to itself"
                ));
            }
            let owners = obj
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match owners.as_slice() {
                [] => return deny(format!("node \"{node}\" can only create pods with an owner reference set to itself")),
                [owner] => {
                    if str_at(owner, "/apiVersion") != "v1"
                        || str_at(owner, "/kind") != "Node"
                        || str_at(owner, "/name") != node
                    {
                        return deny(format!("node \"{node}\" can only create pods with an owner reference set to itself"));
                    }
                    if owner.get("controller").and_then(Value::as_bool) != Some(true) {
                        return deny(format!("node \"{node}\" can only create pods with a controller owner reference set to itself"));
                    }
                    if owner.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true) {
                        return deny(format!(
                            "node \"{node}\" must not set blockOwnerDeletion on an owner reference"
                        ));
                    }
                    let node_obj = get(state, "nodes", None, &node).await?;
                    let (want, got) = (
                        crate::meta::meta_str(&node_obj, "uid").unwrap_or(""),
                        str_at(owner, "/uid"),
                    );
                    if want != got {
                        return deny(format!(
                            "node {node} UID mismatch: expected {want} got {got}"
                        ));
                    }
                }
                _ => return deny(format!("node \"{node}\" can only create pods with a single owner reference set to itself")),
            }
            let refs = super::references(obj);
            let uses = |k: super::Kind| refs.iter().any(|(kind, _)| *kind == k);
            if uses(super::Kind::ServiceAccount) {
                return deny(format!(
                    "node \"{node}\" can not create pods that reference a service account"
                ));
            }
            if uses(super::Kind::Secret) {
                return deny(format!(
                    "node \"{node}\" can not create pods that reference secrets"
                ));
            }
            if uses(super::Kind::ConfigMap) {
                return deny(format!(
                    "node \"{node}\" can not create pods that reference configmaps"
                ));
            }
            if uses(super::Kind::Pvc) {
                return deny(format!(
                    "node \"{node}\" can not create pods that reference persistentvolumeclaims"
                ));
            }
            let claims = obj
                .pointer("/spec/resourceClaims")
                .and_then(Value::as_array);
            if claims.is_some_and(|c| !c.is_empty()) {
                return deny(format!(
                    "node \"{node}\" can not create pods that reference resourceclaims"
                ));
            }
            Ok(())
        }
        "nodes" => {
            if name != node {
                return deny(format!(
                    "node \"{node}\" is not allowed to modify node \"{name}\""
                ));
            }
            let forbidden = forbidden_labels(&modified_labels(obj, None));
            if !forbidden.is_empty() {
                return deny(format!(
                    "node \"{node}\" is not allowed to set the following labels: {}",
                    forbidden.join(", ")
                ));
            }
            Ok(())
        }
        "resourceslices" => own_slice(def, name, &node, obj),
        _ => lease(def, ns, name, &node),
    }
}

/// Upstream's `admitResourceSlice`: the node authorizer cannot see a created slice's
/// content, so its `spec.nodeName` is checked here (an update's too: a slice stays the
/// node's).
fn own_slice(def: &ResourceDef, name: &str, node: &str, obj: &Value) -> Result<(), ApiError> {
    if str_at(obj, "/spec/nodeName") != node {
        let why = "can only create ResourceSlice with the same NodeName as the requesting node";
        return Err(forbidden(def, name, why.into()));
    }
    Ok(())
}

/// A node's own Lease, or its own CSINode (upstream's `admitLease`, `admitCSINode`).
fn lease(def: &ResourceDef, ns: Option<&str>, name: &str, node: &str) -> Result<(), ApiError> {
    if def.plural == "csinodes" {
        if name != node {
            let why = "can only access CSINode with the same name as the requesting node";
            return Err(forbidden(def, name, why.into()));
        }
        return Ok(());
    }
    if ns != Some(NODE_LEASE_NAMESPACE) {
        return Err(forbidden(
            def,
            name,
            format!("can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"),
        ));
    }
    if name != node {
        return Err(forbidden(
            def,
            name,
            "can only access node lease with the same name as the requesting node".into(),
        ));
    }
    Ok(())
}

/// An update (of the object or a subresource) by a node: `cur` is stored, `new` would be.
pub fn admit_update(
    state: &AppState,
    def: &ResourceDef,
    cur: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    if def.group.is_empty() && def.plural == "persistentvolumes" {
        return match requesting_node(state) {
            Some(node) => local_volume_cleanup(def, &node, cur, new),
            None => Ok(()),
        };
    }
    let Some(kind) = kind_of(def) else {
        return Ok(());
    };
    let Some(node) = requesting_node(state) else {
        return Ok(());
    };
    let name = crate::meta::meta_str(cur, "name").unwrap_or("");
    let deny = |why: String| Err(forbidden(def, name, why));
    match kind {
        "pods" => {
            if str_at(cur, "/spec/nodeName") != node {
                return deny(format!("node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"));
            }
            if cur.pointer("/metadata/labels") != new.pointer("/metadata/labels") {
                return deny(format!(
                    "node \"{node}\" cannot update labels through pod status"
                ));
            }
            Ok(())
        }
        "nodes" => {
            if name != node {
                return deny(format!(
                    "node \"{node}\" is not allowed to modify node \"{name}\""
                ));
            }
            let taints = |o: &Value| {
                o.pointer("/spec/taints")
                    .cloned()
                    .filter(|t| t.as_array().is_some_and(|a| !a.is_empty()))
            };
            if taints(cur) != taints(new) {
                return deny(format!("node \"{node}\" is not allowed to modify taints"));
            }
            let forbidden = forbidden_labels(&modified_labels(new, Some(cur)));
            if !forbidden.is_empty() {
                return deny(format!(
                    "is not allowed to modify labels: {}",
                    forbidden.join(", ")
                ));
            }
            Ok(())
        }
        "resourceslices" => own_slice(def, name, &node, new),
        _ => lease(def, crate::meta::meta_str(cur, "namespace"), name, &node),
    }
}

/// The finalizer a node's kubelet puts on a local-path volume before it makes the volume's
/// directory and removes once the directory is gone: all a node may change on a
/// PersistentVolume (the Node authorizer lets it update only the local-path volumes on its
/// disk).
const LOCAL_PATH_CLEANUP: &str = "kaze.io/local-path-cleanup";

fn local_volume_cleanup(
    def: &ResourceDef,
    node: &str,
    cur: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let strip = |o: &Value| {
        let mut o = o.clone();
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in ["finalizers", "managedFields", "resourceVersion"] {
                m.remove(f);
            }
        }
        o
    };
    let finalizers = |o: &Value| -> Vec<String> {
        crate::meta::finalizers(o)
            .into_iter()
            .filter(|f| f != LOCAL_PATH_CLEANUP)
            .collect()
    };
    if strip(cur) == strip(new) && finalizers(cur) == finalizers(new) {
        return Ok(());
    }
    let name = crate::meta::meta_str(cur, "name").unwrap_or("");
    Err(forbidden(
        def,
        name,
        format!("node \"{node}\" may only add or remove the {LOCAL_PATH_CLEANUP} finalizer of a persistentvolume"),
    ))
}

/// A delete by a node.
pub async fn admit_delete(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    let Some(kind) = kind_of(def) else {
        return Ok(());
    };
    let Some(node) = requesting_node(state) else {
        return Ok(());
    };
    match kind {
        "pods" => {
            let pod = get(state, "pods", ns, name).await?;
            if str_at(&pod, "/spec/nodeName") != node {
                return Err(forbidden(
                    def,
                    name,
                    format!(
                        "node \"{node}\" can only delete pods with spec.nodeName set to itself"
                    ),
                ));
            }
            Ok(())
        }
        "nodes" if name != node => Err(forbidden(
            def,
            name,
            format!("node \"{node}\" is not allowed to modify node \"{name}\""),
        )),
        "nodes" => Ok(()),
        // the node authorizer checked the stored slice is the node's
        "resourceslices" => Ok(()),
        _ => lease(def, ns, name, &node),
    }
}

/// `pods/<name>/eviction` by a node: only of pods bound to it.
pub async fn admit_eviction(
    state: &AppState,
    ns: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    let Some(node) = requesting_node(state) else {
        return Ok(());
    };
    let pod = get(state, "pods", ns, name).await?;
    if str_at(&pod, "/spec/nodeName") != node {
        return Err(ApiError::forbidden(
            "pods",
            "",
            name,
            &format!("node {node} can only evict pods with spec.nodeName set to itself"),
        ));
    }
    Ok(())
}

/// `serviceaccounts/<n>/token` by a node: only bound to a pod (name and uid) bound to it.
pub async fn admit_token_request(
    state: &AppState,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(), ApiError> {
    let Some(node) = requesting_node(state) else {
        return Ok(());
    };
    let req = crate::negotiate::decode_object(body, crate::negotiate::body_type(headers)?)?;
    let deny = |why: String| Err(ApiError::forbidden("serviceaccounts", "", name, &why));
    let bound = req
        .pointer("/spec/boundObjectRef")
        .cloned()
        .unwrap_or(Value::Null);
    if str_at(&bound, "/apiVersion") != "v1"
        || str_at(&bound, "/kind") != "Pod"
        || str_at(&bound, "/name").is_empty()
    {
        return deny("node requested token not bound to a pod".into());
    }
    let uid = str_at(&bound, "/uid");
    if uid.is_empty() {
        return deny("node requested token with a pod binding without a uid".into());
    }
    let pod = get(state, "pods", Some(ns), str_at(&bound, "/name")).await?;
    if crate::meta::meta_str(&pod, "uid") != Some(uid) {
        return deny(format!("the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"));
    }
    if str_at(&pod, "/spec/nodeName") != node {
        return deny("node requested token bound to a pod scheduled on a different node".into());
    }
    Ok(())
}

/// Labels set or changed in `new` against `old` (upstream's `getModifiedLabels`).
fn modified_labels(new: &Value, old: Option<&Value>) -> Vec<String> {
    let labels = |o: Option<&Value>| {
        o.and_then(|o| o.pointer("/metadata/labels"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let (new, old) = (labels(Some(new)), labels(old));
    let mut out: Vec<String> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .chain(old.keys().filter(|k| !new.contains_key(*k)).cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Labels a node may not set (upstream's `getForbiddenLabels`): the
/// `node-restriction.kubernetes.io` namespace, and `kubernetes.io`/`k8s.io` labels that are
/// not the kubelet's own.
fn forbidden_labels(labels: &[String]) -> Vec<String> {
    labels
        .iter()
        .filter(|l| {
            let ns = l.split_once('/').map_or("", |(ns, _)| ns);
            let restricted = ns == "node-restriction.kubernetes.io"
                || ns.ends_with(".node-restriction.kubernetes.io");
            restricted || (is_kubernetes_label(ns) && !is_kubelet_label(l, ns))
        })
        .cloned()
        .collect()
}

fn is_kubernetes_label(ns: &str) -> bool {
    ns == "kubernetes.io"
        || ns.ends_with(".kubernetes.io")
        || ns == "k8s.io"
        || ns.ends_with(".k8s.io")
}

/// Upstream's `kubeletapis.IsKubeletLabel`.
fn is_kubelet_label(label: &str, ns: &str) -> bool {
    const LABELS: &[&str] = &[
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "node.kubernetes.io/instance-type",
        "beta.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
    ];
    LABELS.contains(&label)
        || ["kubelet.kubernetes.io", "node.kubernetes.io"]
            .iter()
            .any(|k| ns == *k || ns.ends_with(&format!(".{k}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nodes_may_set_only_the_kubelets_labels() {
        let node = json!({"metadata": {"labels": {
            "kubernetes.io/hostname": "a", "kubernetes.io/os": "linux", "team": "x",
            "node.kubernetes.io/exclude-from-external-load-balancers": "true",
            "node-restriction.kubernetes.io/secure": "yes",
            "node-role.kubernetes.io/control-plane": "true"}}});
        let changed = modified_labels(&node, None);
        assert_eq!(
            forbidden_labels(&changed),
            [
                "node-restriction.kubernetes.io/secure",
                "node-role.kubernetes.io/control-plane"
            ]
        );
        let same = modified_labels(&node, Some(&node));
        assert!(same.is_empty());
        let removed = modified_labels(&json!({"metadata": {}}), Some(&node));
        assert_eq!(removed.len(), 6);
    }
}
