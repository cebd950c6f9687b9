//! The Node authorizer (upstream's `--authorization-mode=Node,RBAC`, evaluated before RBAC)
//! and NodeRestriction admission ([`restriction`]).
//!
//! A node is a user `system:node:<name>` in group `system:nodes` (what its client certificate
//! says). For a node, reads of Secrets, ConfigMaps, PersistentVolumeClaims and
//! PersistentVolumes and `serviceaccounts/token` creates are allowed only for objects a pod
//! bound to that node references (a graph kept from the pods' `spec.nodeName` and the
//! volumes, env, envFrom, imagePullSecrets, projected sources and `serviceAccountName` they
//! name, and from PVCs' `spec.volumeName`, followed through the watch cache as the RBAC
//! and namespace indexes are); Leases only in `kube-node-lease` and under its own name;
//! as a kaze extension, `get`, `update` and `patch` of the PersistentVolumes kaze's
//! local-path provisioner made on its disk (annotation `kaze.io/local-path-node: <node>`),
//! so its kubelet can remove a deleted volume's directory and then the volume's
//! `kaze.io/local-path-cleanup` finalizer after the claim is gone;
//! DRA: `get` of the ResourceClaims its pods name (`spec.resourceClaims[].resourceClaimName`
//! and `status.resourceClaimStatuses`), and its own ResourceSlices only (by the followed
//! slices' `spec.nodeName`; lists, watches and deletecollections with a
//! `spec.nodeName=<its name>` field selector; creates checked by NodeRestriction);
//! as upstream's `AuthorizeNodeWithSelectors` (on by default since 1.32): Node objects only
//! its own (get, or list/watch with `fieldSelector=metadata.name=<its name>`), pods listed
//! or watched only with a `spec.nodeName=<its name>` field selector and got only when bound
//! to it (the graph); everything else is upstream's `system:node` rules (`crate::rbac`'s
//! built-in ClusterRole of that name, which no group is bound to). What the Node authorizer does not allow goes
//! on to RBAC, so a node can still be granted more there explicitly. Its refusals give
//! their reason after upstream's 403 message (`...: no relationship found between node
//! 'b' and this object`).
//!
//! Like upstream's graph, this one follows the store: a pod created a moment ago may not be
//! in it yet, and the kubelet retries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::auth::UserInfo;
use crate::follow::Follower;
use crate::rbac::Attributes;
use crate::state::AppState;

pub mod restriction;

pub const NODES_GROUP: &str = "system:nodes";
pub const NODE_USER_PREFIX: &str = "system:node:";
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// Upstream's `NodeIdentity`: the node a user is, if it is one (name `system:node:<n>` in
/// group `system:nodes`).
pub fn node_name(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix(NODE_USER_PREFIX)?;
    user.groups.iter().any(|g| g == NODES_GROUP).then_some(name)
}

/// Authorize `attrs` for `user` as the apiserver does: the Node authorizer, then RBAC. The
/// reason is the Node authorizer's when it refused (empty when nobody had an opinion).
pub fn authorize(state: &AppState, user: &UserInfo, attrs: &Attributes) -> (bool, String) {
    authorize_with(&state.rbac, user, attrs)
}

/// [`authorize`] with the authorizers alone (what CEL's `authorizer` keeps).
pub fn authorize_with(
    rbac: &crate::rbac::Authorizer,
    user: &UserInfo,
    attrs: &Attributes,
) -> (bool, String) {
    let reason = match node_name(user) {
        Some(node) => match rbac.nodes.authorize(node, attrs) {
            Ok(()) => return (true, format!("node {node} is allowed")),
            Err(reason) => reason,
        },
        None => String::new(),
    };
    match rbac.authorize(user, attrs) {
        (true, why) => (true, why),
        (false, _) => (false, reason),
    }
}

/// What a pod references, by kind of the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Secret,
    ConfigMap,
    Pvc,
    ServiceAccount,
    /// resource.k8s.io ResourceClaims (its DRA drivers' devices).
    ResourceClaim,
}

/// (kind, namespace, name) of one referenced object.
type Ref = (Kind, String, String);

#[derive(Debug, Default)]
struct Graph {
    /// pod key (`<ns>/<name>`) -> (node, what it references)
    pods: HashMap<String, (String, Vec<Ref>)>,
    /// (node, reference) -> how many of the node's pods hold it
    edges: HashMap<(String, Ref), usize>,
    /// PVC (`<ns>/<name>`) -> the PersistentVolume it is bound to
    claims: HashMap<String, String>,
    /// local-path PersistentVolume -> the node whose disk holds it
    local_volumes: HashMap<String, String>,
    /// ResourceSlice -> its `spec.nodeName` (empty: not a node's)
    slices: HashMap<String, String>,
}

impl Graph {
    fn remove_pod(&mut self, key: &str) {
        if let Some((node, refs)) = self.pods.remove(key) {
            for r in refs {
                let k = (node.clone(), r);
                if let Some(n) = self.edges.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        self.edges.remove(&k);
                    }
                }
            }
        }
    }

    fn put_pod(&mut self, key: &str, pod: &Value) {
        self.remove_pod(key);
        let node = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if node.is_empty() {
            return;
        }
        let ns = key.split_once('/').map_or("", |(ns, _)| ns);
        let mut refs: Vec<Ref> = references(pod)
            .into_iter()
            .map(|(k, n)| (k, ns.to_string(), n))
            .collect();
        refs.sort_by(|a, b| (a.1.as_str(), a.2.as_str()).cmp(&(b.1.as_str(), b.2.as_str())));
        refs.dedup();
        for r in &refs {
            *self.edges.entry((node.to_string(), r.clone())).or_default() += 1;
        }
        self.pods.insert(key.to_string(), (node.to_string(), refs));
    }
}

/// What `pod` references (upstream's `VisitPodSecretNames`, `VisitPodConfigmapNames`, the
/// PVC volumes and the service account).
pub fn references(pod: &Value) -> Vec<(Kind, String)> {
    let mut out = Vec::new();
    let spec = &pod["spec"];
    let mut add = |kind: Kind, v: Option<&Value>| {
        if let Some(n) = v.and_then(Value::as_str).filter(|n| !n.is_empty()) {
            out.push((kind, n.to_string()));
        }
    };
    add(Kind::ServiceAccount, spec.get("serviceAccountName"));
    // DRA: the claims named in the spec, and those made from templates (upstream's graph
    // adds both, the latter from `status.resourceClaimStatuses`)
    for c in items(spec, "resourceClaims") {
        add(Kind::ResourceClaim, c.get("resourceClaimName"));
    }
    for c in items(&pod["status"], "resourceClaimStatuses") {
        add(Kind::ResourceClaim, c.get("resourceClaimName"));
    }
    for s in items(spec, "imagePullSecrets") {
        add(Kind::Secret, s.get("name"));
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in items(spec, list) {
            for e in items(c, "env") {
                add(Kind::Secret, e.pointer("/valueFrom/secretKeyRef/name"));
                add(
                    Kind::ConfigMap,
                    e.pointer("/valueFrom/configMapKeyRef/name"),
                );
            }
            for e in items(c, "envFrom") {
                add(Kind::Secret, e.pointer("/secretRef/name"));
                add(Kind::ConfigMap, e.pointer("/configMapRef/name"));
            }
        }
    }
    for v in items(spec, "volumes") {
        add(Kind::Secret, v.pointer("/secret/secretName"));
        add(Kind::ConfigMap, v.pointer("/configMap/name"));
        add(Kind::Pvc, v.pointer("/persistentVolumeClaim/claimName"));
        // a generic ephemeral volume's claim, `<pod>-<volume>` (upstream's graph adds it too)
        if v.get("ephemeral").is_some() {
            if let (Some(pod), Some(vol)) = (
                pod.pointer("/metadata/name").and_then(Value::as_str),
                v.get("name").and_then(Value::as_str),
            ) {
                add(Kind::Pvc, Some(&Value::String(format!("{pod}-{vol}"))));
            }
        }
        for s in items(&v["projected"], "sources") {
            add(Kind::Secret, s.pointer("/secret/name"));
            add(Kind::ConfigMap, s.pointer("/configMap/name"));
        }
        // volume plugins that take their credentials from a Secret
        for p in [
            "/azureFile/secretName",
            "/cephfs/secretRef/name",
            "/cinder/secretRef/name",
            "/flexVolume/secretRef/name",
            "/iscsi/secretRef/name",
            "/rbd/secretRef/name",
            "/scaleIO/secretRef/name",
            "/storageos/secretRef/name",
            "/csi/nodePublishSecretRef/name",
        ] {
            add(Kind::Secret, v.pointer(p));
        }
    }
    out
}

/// The elements of `obj[key]` (none unless it is an array).
fn items<'a>(obj: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    obj.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// The node graph and the Node authorizer over it.
#[derive(Debug, Default)]
pub struct NodeGraph {
    graph: RwLock<Graph>,
    /// Whether the pods, the claims, the volumes and the ResourceSlices are followed
    /// (until then nodes get no reads).
    synced: [AtomicBool; 4],
    /// `--disable-admission-plugins=NodeRestriction`.
    pub restriction_disabled: AtomicBool,
}

const NO_RELATIONSHIP: &str = "no relationship found between node";

impl NodeGraph {
    /// Whether a pod bound to `node` references `(kind, ns, name)`.
    pub fn references(&self, node: &str, kind: Kind, ns: &str, name: &str) -> bool {
        let g = self.graph.read().unwrap_or_else(|e| e.into_inner());
        g.edges
            .contains_key(&(node.to_string(), (kind, ns.to_string(), name.to_string())))
    }

    /// Whether pod `ns/name` is bound to `node`.
    fn runs_pod(&self, node: &str, ns: &str, name: &str) -> bool {
        let g = self.graph.read().unwrap_or_else(|e| e.into_inner());
        g.pods
            .get(&format!("{ns}/{name}"))
            .is_some_and(|(n, _)| n == node)
    }

    /// Whether a PVC a pod bound to `node` uses is bound to PersistentVolume `pv`.
    fn uses_volume(&self, node: &str, pv: &str) -> bool {
        let g = self.graph.read().unwrap_or_else(|e| e.into_inner());
        g.edges.keys().any(|(n, (kind, ns, name))| {
            n == node
                && *kind == Kind::Pvc
                && g.claims
                    .get(&format!("{ns}/{name}"))
                    .is_some_and(|v| v == pv)
        })
    }

    /// Whether ResourceSlice `name` is `node`'s (its `spec.nodeName`).
    fn holds_slice(&self, node: &str, name: &str) -> bool {
        let g = self.graph.read().unwrap_or_else(|e| e.into_inner());
        g.slices.get(name).is_some_and(|n| n == node)
    }

    /// Whether PersistentVolume `pv` is a local-path volume on `node`'s disk.
    fn holds_local_volume(&self, node: &str, pv: &str) -> bool {
        let g = self.graph.read().unwrap_or_else(|e| e.into_inner());
        g.local_volumes.get(pv).is_some_and(|n| n == node)
    }

    /// The Node authorizer's decision for node `node`: Ok to allow, else its reason (no
    /// opinion: RBAC decides next).
    pub fn authorize(&self, node: &str, attrs: &Attributes) -> Result<(), String> {
        let Attributes::Resource {
            verb,
            group,
            resource,
            namespace,
            name,
            ..
        } = attrs
        else {
            return rules_allow(attrs);
        };
        let (base, sub) = match resource.split_once('/') {
            Some((b, s)) => (b, Some(s)),
            None => (resource.as_str(), None),
        };
        let ns = namespace.as_deref().unwrap_or("");
        let name = name.as_deref().unwrap_or("");
        let related = |kind: Kind| {
            if name.is_empty() {
                return Err("No Object name found".to_string());
            }
            if self.references(node, kind, ns, name) {
                Ok(())
            } else {
                Err(format!("{NO_RELATIONSHIP} '{node}' and this object"))
            }
        };
        match (group.as_str(), base) {
            ("", "secrets" | "configmaps") => {
                if !matches!(verb.as_str(), "get" | "list" | "watch") {
                    return Err("can only read resources of this type".into());
                }
                if sub.is_some() {
                    return Err("cannot read subresource".into());
                }
                if ns.is_empty() {
                    return Err("can only read namespaced object of this type".into());
                }
                let kind = if base == "secrets" {
                    Kind::Secret
                } else {
                    Kind::ConfigMap
                };
                related(kind)
            }
            ("", "persistentvolumeclaims") => {
                if sub == Some("status") {
                    if !matches!(verb.as_str(), "get" | "update" | "patch") {
                        return Err(
                            "can only get, update, or patch status of objects of this type".into(),
                        );
                    }
                } else {
                    if verb != "get" {
                        return Err("can only get individual resources of this type".into());
                    }
                    if sub.is_some() {
                        return Err("cannot get subresource".into());
                    }
                }
                related(Kind::Pvc)
            }
            ("", "persistentvolumes") => {
                // kaze: a node cleans up the local-path volumes on its disk
                if matches!(verb.as_str(), "get" | "update" | "patch")
                    && sub.is_none()
                    && !name.is_empty()
                    && self.holds_local_volume(node, name)
                {
                    return Ok(());
                }
                if verb != "get" {
                    return Err("can only get individual resources of this type".into());
                }
                if sub.is_some() {
                    return Err("cannot get subresource".into());
                }
                if !name.is_empty() && self.uses_volume(node, name) {
                    Ok(())
                } else if name.is_empty() {
                    Err("No Object name found".into())
                } else {
                    Err(format!("{NO_RELATIONSHIP} '{node}' and this object"))
                }
            }
            ("", "serviceaccounts") => {
                if verb != "create" || name.is_empty() {
                    return Err("can only create tokens for individual service accounts".into());
                }
                if sub != Some("token") {
                    return Err("can only create token subresource of serviceaccount".into());
                }
                related(Kind::ServiceAccount)
            }
            ("", "nodes") => authorize_node(node, verb, sub, name),
            // upstream's `authorizeGet` of a claim vertex: the DRA manager reads the claims
            // of its pods
            ("resource.k8s.io", "resourceclaims") => {
                if verb != "get" {
                    return Err("can only get individual resources of this type".into());
                }
                if sub.is_some() {
                    return Err("cannot get subresource".into());
                }
                related(Kind::ResourceClaim)
            }
            ("resource.k8s.io", "resourceslices") => {
                self.authorize_slice(node, verb, sub, name, attrs)
            }
            ("", "pods") => {
                let graph = || {
                    if name.is_empty() {
                        Err("No Object name found".to_string())
                    } else if self.runs_pod(node, ns, name) {
                        Ok(())
                    } else {
                        Err(format!("{NO_RELATIONSHIP} '{node}' and this object"))
                    }
                };
                match (sub, verb.as_str()) {
                    (None, "get") => graph(),
                    (None, "list" | "watch") => {
                        if attrs.field_requires("spec.nodeName", node) {
                            Ok(())
                        } else if !name.is_empty() {
                            // one pod by `metadata.name`: a read of that pod
                            graph()
                        } else {
                            Err("can only list/watch pods with spec.nodeName field selector".into())
                        }
                    }
                    // mirror pods; NodeRestriction keeps them to the node's own
                    (None, "create" | "delete") => Ok(()),
                    (Some("status"), "update" | "patch") | (Some("eviction"), "create") => Ok(()),
                    _ => Err(String::new()),
                }
            }
            ("coordination.k8s.io", "leases") => {
                if !matches!(
                    verb.as_str(),
                    "get" | "create" | "update" | "patch" | "delete"
                ) {
                    return Err(
                        "can only get, create, update, patch, or delete a node lease".into(),
                    );
                }
                if ns != NODE_LEASE_NAMESPACE {
                    return Err(format!(
                        "can only access leases in the {NODE_LEASE_NAMESPACE:?} system namespace"
                    ));
                }
                // the name of a create is checked by NodeRestriction
                if verb != "create" && name != node {
                    return Err(
                        "can only access node lease with the same name as the requesting node"
                            .into(),
                    );
                }
                Ok(())
            }
            // upstream's `authorizeCSINode`: the node's own (a create's name is
            // NodeRestriction's to check)
            ("storage.k8s.io", "csinodes") => {
                if !matches!(
                    verb.as_str(),
                    "get" | "create" | "update" | "patch" | "delete"
                ) {
                    return Err("can only get, create, update, patch, or delete a CSINode".into());
                }
                if sub.is_some() {
                    return Err("cannot authorize CSINode subresources".into());
                }
                if verb != "create" && name != node {
                    return Err(
                        "can only access CSINode with the same name as the requesting node".into(),
                    );
                }
                Ok(())
            }
            _ => rules_allow(attrs),
        }
    }
}

impl NodeGraph {
    /// Upstream's `authorizeResourceSlice`: the DRA drivers on a node publish their
    /// ResourceSlices with its credentials; a node writes and reads its own slices only
    /// (a create's `spec.nodeName` is NodeRestriction's to check), and lists, watches or
    /// deletes them in bulk only with a `spec.nodeName=<its name>` field selector.
    fn authorize_slice(
        &self,
        node: &str,
        verb: &str,
        sub: Option<&str>,
        name: &str,
        attrs: &Attributes,
    ) -> Result<(), String> {
        if sub.is_some() {
            return Err("cannot authorize ResourceSlice subresources".into());
        }
        match verb {
            "create" => rules_allow(attrs),
            "get" | "update" | "patch" | "delete" => {
                if name.is_empty() {
                    Err("No Object name found".into())
                } else if self.holds_slice(node, name) {
                    rules_allow(attrs)
                } else {
                    Err(format!("{NO_RELATIONSHIP} '{node}' and this object"))
                }
            }
            "list" | "watch" | "deletecollection" => {
                if attrs.field_requires("spec.nodeName", node) {
                    rules_allow(attrs)
                } else {
                    Err(format!(
                        "can only {verb} node resources with fieldSelector spec.nodeName={node}"
                    ))
                }
            }
            _ => Err(String::new()),
        }
    }
}

/// A node's requests for Node objects (upstream's `authorizeNode`, with
/// AuthorizeNodeWithSelectors, on by default since 1.32): its own Node only, compared by
/// name rather than through the graph so a kubelet can look for its Node before creating
/// it; a list or watch names one Node by a `metadata.name` field selector. Writes are
/// NodeRestriction's to limit.
fn authorize_node(node: &str, verb: &str, sub: Option<&str>, name: &str) -> Result<(), String> {
    match (sub, verb) {
        (None, "create" | "update" | "patch") | (Some("status"), "update" | "patch") => Ok(()),
        (None, "get" | "list" | "watch") => {
            if name == node {
                Ok(())
            } else if name.is_empty() {
                Err(format!(
                    "node '{node}' cannot read all nodes, only its own Node object"
                ))
            } else {
                Err(format!(
                    "node '{node}' cannot read '{name}', only its own Node object"
                ))
            }
        }
        _ => Err(String::new()),
    }
}

/// Upstream's static node rules: `system:node`'s.
fn rules_allow(attrs: &Attributes) -> Result<(), String> {
    if crate::rbac::builtin_role_allows("system:node", attrs) {
        Ok(())
    } else {
        Err(String::new())
    }
}

/// Keep `state.rbac.nodes` in step with the pods, PVCs and PVs until shutdown.
pub async fn run(state: Arc<AppState>) {
    let pods = crate::follow::run(
        state.clone(),
        ("", "v1", "pods"),
        Follow {
            state: state.clone(),
            kind: 0,
        },
    );
    let claims = crate::follow::run(
        state.clone(),
        ("", "v1", "persistentvolumeclaims"),
        Follow {
            state: state.clone(),
            kind: 1,
        },
    );
    let volumes = crate::follow::run(
        state.clone(),
        ("", "v1", "persistentvolumes"),
        Follow {
            state: state.clone(),
            kind: 2,
        },
    );
    let slices = crate::follow::run(
        state.clone(),
        ("resource.k8s.io", "v1", "resourceslices"),
        Follow {
            state: state.clone(),
            kind: 3,
        },
    );
    tokio::join!(pods, claims, volumes, slices);
}

/// The annotation kaze's local-path provisioner names a volume's node with.
const LOCAL_PATH_NODE: &str = "kaze.io/local-path-node";

/// The graph's part for pods (0), PVCs (1), PVs (2) or ResourceSlices (3) as a
/// [`Follower`].
struct Follow {
    state: Arc<AppState>,
    kind: usize,
}

impl Follow {
    fn graph(&self) -> std::sync::RwLockWriteGuard<'_, Graph> {
        self.state
            .rbac
            .nodes
            .graph
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// A followed object's value parsed for [`put`], before the graph is locked (None: not
/// JSON, ignored). A pod not bound to a node is parsed no further than its `spec.nodeName`
/// and comes back as `{}`: the graph holds bound pods only, and most of a pod's writes (its
/// create first) come before it is scheduled.
fn parse(kind: usize, value: &[u8]) -> Option<Value> {
    if kind == 0 {
        #[derive(serde::Deserialize)]
        struct Pod {
            spec: Option<Spec>,
        }
        #[derive(serde::Deserialize)]
        struct Spec {
            #[serde(rename = "nodeName")]
            node_name: Option<String>,
        }
        let pod: Pod = serde_json::from_slice(value).ok()?;
        if pod
            .spec
            .and_then(|s| s.node_name)
            .is_none_or(|n| n.is_empty())
        {
            return Some(Value::Object(Default::default()));
        }
    }
    serde_json::from_slice(value).ok()
}

fn put(g: &mut Graph, kind: usize, key: &str, obj: Option<Value>) {
    let Some(obj) = obj else {
        return;
    };
    if kind == 0 {
        g.put_pod(key, &obj);
    } else if kind == 3 {
        let node = obj.pointer("/spec/nodeName").and_then(Value::as_str);
        g.slices
            .insert(key.to_string(), node.unwrap_or_default().to_string());
    } else if kind == 2 {
        match obj
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(LOCAL_PATH_NODE))
            .and_then(Value::as_str)
        {
            Some(node) if !node.is_empty() => {
                g.local_volumes.insert(key.to_string(), node.to_string());
            }
            _ => {
                g.local_volumes.remove(key);
            }
        }
    } else {
        match obj.pointer("/spec/volumeName").and_then(Value::as_str) {
            Some(pv) if !pv.is_empty() => {
                g.claims.insert(key.to_string(), pv.to_string());
            }
            _ => {
                g.claims.remove(key);
            }
        }
    }
}

impl Follower for Follow {
    fn reset(&self, items: Vec<(&str, &[u8])>) {
        // parsed under the lock, one at a time: a relist holds every object
        let mut g = self.graph();
        match self.kind {
            0 => {
                g.pods.clear();
                g.edges.clear();
            }
            1 => g.claims.clear(),
            3 => g.slices.clear(),
            _ => g.local_volumes.clear(),
        }
        for (key, value) in items {
            put(&mut g, self.kind, key, parse(self.kind, value));
        }
    }

    fn apply(&self, key: &str, value: Option<&[u8]>) {
        let parsed = value.map(|v| parse(self.kind, v));
        let mut g = self.graph();
        match parsed {
            Some(obj) => put(&mut g, self.kind, key, obj),
            None if self.kind == 0 => g.remove_pod(key),
            None if self.kind == 2 => {
                g.local_volumes.remove(key);
            }
            None if self.kind == 3 => {
                g.slices.remove(key);
            }
            None => {
                g.claims.remove(key);
            }
        }
    }

    fn set_synced(&self, synced: bool) {
        self.state.rbac.nodes.synced[self.kind].store(synced, Ordering::Release);
    }
}

/// The pods bound to a node, by key: for tests.
#[cfg(test)]
fn pods_of(g: &NodeGraph, node: &str) -> std::collections::HashSet<String> {
    let g = g.graph.read().unwrap();
    g.pods
        .iter()
        .filter(|(_, (n, _))| n == node)
        .map(|(k, _)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(
        verb: &str,
        group: &str,
        resource: &str,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: ns.map(String::from),
            name: name.map(String::from),
            field_selector: None,
        }
    }

    #[test]
    fn a_node_gets_the_resource_claims_of_its_pods_and_writes_its_own_slices() {
        let g = NodeGraph::default();
        let pod = json!({"metadata": {"name": "web"}, "spec": {"nodeName": "a",
            "containers": [{"name": "c"}],
            "resourceClaims": [{"name": "gpu", "resourceClaimName": "shared"},
                               {"name": "tmp", "resourceClaimTemplateName": "t"}]},
            "status": {"resourceClaimStatuses": [{"name": "tmp", "resourceClaimName": "web-tmp-x1"}]}});
        {
            let mut w = g.graph.write().unwrap();
            w.put_pod("ns/web", &pod);
            w.slices.insert("a-gpu".into(), "a".into());
            w.slices.insert("b-gpu".into(), "b".into());
        }
        let claim = |verb: &str, node: &str, name: &str| {
            let group = "resource.k8s.io";
            g.authorize(
                node,
                &attrs(verb, group, "resourceclaims", Some("ns"), Some(name)),
            )
        };
        assert!(claim("get", "a", "shared").is_ok());
        assert!(claim("get", "a", "web-tmp-x1").is_ok());
        assert_eq!(
            claim("get", "b", "shared").unwrap_err(),
            "no relationship found between node 'b' and this object"
        );
        assert!(claim("get", "a", "other").is_err());
        assert!(claim("update", "a", "shared").is_err());
        assert!(claim("list", "a", "shared").is_err());
        let status = attrs(
            "get",
            "resource.k8s.io",
            "resourceclaims/status",
            Some("ns"),
            Some("shared"),
        );
        assert!(g.authorize("a", &status).is_err());

        let slice = |verb: &str, name: Option<&str>, selector: Option<&str>| {
            let mut a = attrs(verb, "resource.k8s.io", "resourceslices", None, name);
            if let Attributes::Resource { field_selector, .. } = &mut a {
                *field_selector = selector.map(String::from);
            }
            g.authorize("a", &a)
        };
        for verb in ["get", "update", "patch", "delete"] {
            assert!(slice(verb, Some("a-gpu"), None).is_ok(), "{verb}");
            assert!(slice(verb, Some("b-gpu"), None).is_err(), "{verb}");
        }
        // a create's nodeName is NodeRestriction's to check
        assert!(slice("create", Some("new"), None).is_ok());
        for verb in ["list", "watch", "deletecollection"] {
            assert!(slice(verb, None, Some("spec.nodeName=a")).is_ok(), "{verb}");
            assert!(
                slice(verb, None, Some("spec.nodeName=b")).is_err(),
                "{verb}"
            );
            assert!(slice(verb, None, None).is_err(), "{verb}");
        }
        // the role's rules alone (what RBAC would grant a node) cover both
        assert!(crate::rbac::builtin_role_allows(
            "system:node",
            &attrs(
                "get",
                "resource.k8s.io",
                "resourceclaims",
                Some("ns"),
                Some("x")
            )
        ));
        assert!(crate::rbac::builtin_role_allows(
            "system:node",
            &attrs(
                "deletecollection",
                "resource.k8s.io",
                "resourceslices",
                None,
                None
            )
        ));
    }

    #[test]
    fn a_generic_ephemeral_volume_gives_its_node_the_claim_pod_volume() {
        let g = NodeGraph::default();
        let pod = json!({"metadata": {"name": "web"}, "spec": {"nodeName": "a",
            "containers": [{"name": "c"}],
            "volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}]}});
        g.graph.write().unwrap().put_pod("ns/web", &pod);
        let get = |node: &str, claim: &str| {
            g.authorize(
                node,
                &attrs("get", "", "persistentvolumeclaims", Some("ns"), Some(claim)),
            )
        };
        assert!(get("a", "web-scratch").is_ok());
        assert!(get("b", "web-scratch").is_err());
        assert!(get("a", "scratch").is_err());
    }

    #[test]
    fn pods_give_their_node_their_references_and_nothing_else() {
        let g = NodeGraph::default();
        let pod = json!({"spec": {"nodeName": "a", "serviceAccountName": "sa",
            "imagePullSecrets": [{"name": "pull"}],
            "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}}],
                            "envFrom": [{"configMapRef": {"name": "env-cm"}}]}],
            "volumes": [{"name": "v", "secret": {"secretName": "vol-secret"}},
                        {"name": "p", "projected": {"sources": [{"configMap": {"name": "proj-cm"}}]}},
                        {"name": "c", "persistentVolumeClaim": {"claimName": "claim"}}]}});
        {
            let mut w = g.graph.write().unwrap();
            w.put_pod("ns/p1", &pod);
            w.put_pod("ns/p2", &pod);
            w.claims.insert("ns/claim".into(), "pv-1".into());
        }
        for s in ["pull", "env-secret", "vol-secret"] {
            assert!(
                g.authorize("a", &attrs("get", "", "secrets", Some("ns"), Some(s)))
                    .is_ok(),
                "{s}"
            );
            let err = g
                .authorize("b", &attrs("get", "", "secrets", Some("ns"), Some(s)))
                .unwrap_err();
            assert_eq!(
                err,
                "no relationship found between node 'b' and this object"
            );
        }
        assert!(g
            .authorize(
                "a",
                &attrs("get", "", "secrets", Some("other"), Some("pull"))
            )
            .is_err());
        assert!(g
            .authorize(
                "a",
                &attrs("get", "", "configmaps", Some("ns"), Some("proj-cm"))
            )
            .is_ok());
        assert!(g
            .authorize(
                "a",
                &attrs("get", "", "configmaps", Some("ns"), Some("env-cm"))
            )
            .is_ok());
        assert!(g
            .authorize("a", &attrs("list", "", "secrets", Some("ns"), None))
            .is_err());
        assert!(g
            .authorize(
                "a",
                &attrs("update", "", "secrets", Some("ns"), Some("pull"))
            )
            .is_err());
        assert!(g
            .authorize(
                "a",
                &attrs(
                    "create",
                    "",
                    "serviceaccounts/token",
                    Some("ns"),
                    Some("sa")
                )
            )
            .is_ok());
        assert!(g
            .authorize(
                "a",
                &attrs(
                    "create",
                    "",
                    "serviceaccounts/token",
                    Some("ns"),
                    Some("default")
                )
            )
            .is_err());
        assert!(g
            .authorize(
                "a",
                &attrs(
                    "get",
                    "",
                    "persistentvolumeclaims",
                    Some("ns"),
                    Some("claim")
                )
            )
            .is_ok());
        assert!(g
            .authorize(
                "a",
                &attrs("get", "", "persistentvolumes", None, Some("pv-1"))
            )
            .is_ok());
        assert!(g
            .authorize(
                "b",
                &attrs("get", "", "persistentvolumes", None, Some("pv-1"))
            )
            .is_err());
        // one of two pods goes: the references stay; both go: they are gone
        g.graph.write().unwrap().remove_pod("ns/p1");
        assert!(g
            .authorize("a", &attrs("get", "", "secrets", Some("ns"), Some("pull")))
            .is_ok());
        g.graph.write().unwrap().remove_pod("ns/p2");
        assert!(g
            .authorize("a", &attrs("get", "", "secrets", Some("ns"), Some("pull")))
            .is_err());
        assert!(pods_of(&g, "a").is_empty());
        // a pod moving to another node (a re-put) moves its references
        g.graph.write().unwrap().put_pod("ns/p3", &pod);
        let mut moved = pod.clone();
        moved["spec"]["nodeName"] = json!("b");
        g.graph.write().unwrap().put_pod("ns/p3", &moved);
        assert!(g
            .authorize("a", &attrs("get", "", "secrets", Some("ns"), Some("pull")))
            .is_err());
        assert!(g
            .authorize("b", &attrs("get", "", "secrets", Some("ns"), Some("pull")))
            .is_ok());
    }

    #[test]
    fn a_node_may_clean_up_the_local_path_volumes_on_its_disk_only() {
        let g = NodeGraph::default();
        let pv = |verb: &str, sub: &str, name: &str| {
            attrs(
                verb,
                "",
                &format!("persistentvolumes{sub}"),
                None,
                Some(name),
            )
        };
        put(
            &mut g.graph.write().unwrap(),
            2,
            "pvc-1",
            parse(
                2,
                br#"{"metadata": {"name": "pvc-1", "annotations": {"kaze.io/local-path-node": "a"}}}"#,
            ),
        );
        put(
            &mut g.graph.write().unwrap(),
            2,
            "static",
            parse(2, br#"{"metadata": {"name": "static"}}"#),
        );
        for verb in ["get", "update", "patch"] {
            assert!(g.authorize("a", &pv(verb, "", "pvc-1")).is_ok(), "{verb}");
            assert!(g.authorize("b", &pv(verb, "", "pvc-1")).is_err(), "{verb}");
            assert!(g.authorize("a", &pv(verb, "", "static")).is_err(), "{verb}");
        }
        assert!(g.authorize("a", &pv("delete", "", "pvc-1")).is_err());
        assert!(g.authorize("a", &pv("update", "/status", "pvc-1")).is_err());
        g.graph.write().unwrap().local_volumes.remove("pvc-1");
        assert!(g.authorize("a", &pv("get", "", "pvc-1")).is_err());
    }

    #[test]
    fn a_pod_leaves_the_graph_when_its_write_unbinds_it_and_stays_on_bad_json() {
        let g = NodeGraph::default();
        let secret = |node: &str| {
            g.authorize(
                node,
                &attrs("get", "", "secrets", Some("ns"), Some("token")),
            )
            .is_ok()
        };
        let apply = |value: &[u8]| put(&mut g.graph.write().unwrap(), 0, "ns/web", parse(0, value));
        let bound = br#"{"metadata": {"name": "web"}, "spec": {"nodeName": "a",
            "containers": [{"name": "c"}], "volumes": [{"name": "v", "secret": {"secretName": "token"}}]}}"#;
        apply(bound);
        assert!(secret("a") && !secret("b"));
        // not JSON: ignored, the pod keeps its place
        apply(b"{not json");
        assert!(secret("a"));
        // each way of being unbound removes it
        for unbound in [
            &br#"{"metadata": {"name": "web"}, "spec": {"nodeName": ""}}"#[..],
            br#"{"metadata": {"name": "web"}, "spec": {"nodeName": null}}"#,
            br#"{"metadata": {"name": "web"}, "spec": {"containers": []}}"#,
            br#"{"metadata": {"name": "web"}, "spec": null}"#,
            br#"{"metadata": {"name": "web"}}"#,
        ] {
            apply(bound);
            assert!(secret("a"));
            apply(unbound);
            assert!(!secret("a"), "{}", String::from_utf8_lossy(unbound));
        }
    }

    #[test]
    fn nodes_list_only_their_own_pods() {
        let g = NodeGraph::default();
        g.graph
            .write()
            .unwrap()
            .put_pod("ns/p", &json!({"spec": {"nodeName": "a"}}));
        let list = |verb: &str, selector: Option<&str>| Attributes::Resource {
            verb: verb.into(),
            group: String::new(),
            resource: "pods".into(),
            namespace: None,
            name: None,
            field_selector: selector.map(String::from),
        };
        for verb in ["list", "watch"] {
            for ok in [
                "spec.nodeName=a",
                "spec.nodeName==a",
                "status.phase!=Failed,spec.nodeName=a",
            ] {
                assert!(g.authorize("a", &list(verb, Some(ok))).is_ok(), "{ok}");
            }
            for refused in [
                None,
                Some("spec.nodeName=b"),
                Some("spec.nodeName!=a"),
                Some("spec.nodeName=ab"),
                Some("metadata.namespace=a"),
            ] {
                assert_eq!(
                    g.authorize("a", &list(verb, refused)),
                    Err("can only list/watch pods with spec.nodeName field selector".into()),
                    "{refused:?}"
                );
            }
        }
        // single pods: the graph
        let pod = |verb: &str, sub: &str, name: &str| {
            attrs(verb, "", &format!("pods{sub}"), Some("ns"), Some(name))
        };
        assert!(g.authorize("a", &pod("get", "", "p")).is_ok());
        assert!(g.authorize("a", &pod("list", "", "p")).is_ok());
        assert_eq!(
            g.authorize("b", &pod("get", "", "p")),
            Err("no relationship found between node 'b' and this object".into())
        );
        assert!(g.authorize("a", &pod("get", "", "other")).is_err());
        for (verb, sub) in [
            ("create", ""),
            ("delete", ""),
            ("patch", "/status"),
            ("create", "/eviction"),
        ] {
            assert!(
                g.authorize("b", &pod(verb, sub, "p")).is_ok(),
                "{verb}{sub}"
            );
        }
        assert!(g.authorize("a", &pod("update", "", "p")).is_err());
        assert!(g.authorize("a", &pod("get", "/log", "p")).is_err());
    }

    #[test]
    fn leases_and_the_static_rules() {
        let g = NodeGraph::default();
        let lease = |verb, ns, name| attrs(verb, "coordination.k8s.io", "leases", Some(ns), name);
        assert!(g
            .authorize("a", &lease("update", "kube-node-lease", Some("a")))
            .is_ok());
        assert!(g
            .authorize("a", &lease("create", "kube-node-lease", None))
            .is_ok());
        assert!(g
            .authorize("a", &lease("update", "kube-node-lease", Some("b")))
            .is_err());
        assert!(g
            .authorize("a", &lease("get", "kube-system", Some("a")))
            .is_err());
        assert_eq!(
            g.authorize("a", &attrs("list", "", "nodes", None, None)),
            Err("node 'a' cannot read all nodes, only its own Node object".into())
        );
        assert_eq!(
            g.authorize("a", &attrs("get", "", "nodes", None, Some("b"))),
            Err("node 'a' cannot read 'b', only its own Node object".into())
        );
        for verb in ["get", "list", "watch"] {
            // (a list or watch names its Node by a `metadata.name` field selector)
            assert!(g
                .authorize("a", &attrs(verb, "", "nodes", None, Some("a")))
                .is_ok());
        }
        for (verb, res) in [
            ("create", "nodes"),
            ("patch", "nodes"),
            ("update", "nodes/status"),
        ] {
            assert!(g
                .authorize("a", &attrs(verb, "", res, None, Some("a")))
                .is_ok());
        }
        assert!(g
            .authorize("a", &attrs("delete", "", "nodes", None, Some("a")))
            .is_err());
        assert!(g
            .authorize("a", &attrs("patch", "", "nodes/status", None, Some("a")))
            .is_ok());
        assert!(g
            .authorize(
                "a",
                &attrs("update", "", "pods/status", Some("x"), Some("p"))
            )
            .is_ok());
        assert!(g
            .authorize("a", &attrs("update", "", "pods", Some("x"), Some("p")))
            .is_err());
        assert!(g
            .authorize("a", &attrs("create", "", "namespaces", None, None))
            .is_err());
        assert!(g
            .authorize(
                "a",
                &attrs(
                    "create",
                    "certificates.k8s.io",
                    "certificatesigningrequests",
                    None,
                    None
                )
            )
            .is_ok());
        let node = UserInfo {
            name: "system:node:a".into(),
            uid: String::new(),
            groups: vec![NODES_GROUP.into()],
            extra: Default::default(),
        };
        assert_eq!(node_name(&node), Some("a"));
        let not_in_group = UserInfo {
            groups: vec![],
            ..node
        };
        assert_eq!(node_name(&not_in_group), None);
    }
}
