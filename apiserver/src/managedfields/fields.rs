//! Field sets and what a write changed: [`Fields`] is a `fieldsV1` tree, [`diff`] walks an
//! old and a new object once and returns the paths the write added or changed and those it
//! removed. What is a keyed list or an atomic value follows upstream's schemas for the
//! built-in kinds (list-map keys, `+mapType=atomic` selectors), looked up by field name.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::registry::ResourceDef;

// === Fields ===

/// A set of field paths as a `fieldsV1` tree: children keyed `f:<field>`, `k:<key json>` (an
/// item of a keyed list) or as upstream wrote them (`v:<value>`, `i:<index>`); `member` when
/// the node's own path is in the set (`.`, or a leaf `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    pub member: bool,
    pub children: BTreeMap<String, Fields>,
}

impl Fields {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    /// A stored `fieldsV1` (the root `{}` is the empty set).
    pub fn from_v1(v: &Value) -> Fields {
        let mut f = Fields::default();
        if let Some(m) = v.as_object() {
            f.read_children(m);
        }
        f
    }

    fn read_children(&mut self, m: &Map<String, Value>) {
        for (k, c) in m {
            if k == "." {
                self.member = true;
                continue;
            }
            let mut child = Fields::default();
            match c.as_object() {
                Some(cm) if !cm.is_empty() => child.read_children(cm),
                _ => child.member = true,
            }
            if !child.is_empty() {
                self.children.insert(k.clone(), child);
            }
        }
    }

    pub fn to_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_v1());
        }
        Value::Object(m)
    }

    pub fn union(&mut self, other: &Fields) {
        self.member |= other.member;
        for (k, c) in &other.children {
            self.children.entry(k.clone()).or_default().union(c);
        }
    }

    /// Remove `other`'s paths (each path alone, not what lies under it, as upstream's
    /// `Set.Difference`).
    pub fn subtract(&mut self, other: &Fields) {
        if other.member {
            self.member = false;
        }
        for (k, c) in &other.children {
            if let Some(mine) = self.children.get_mut(k) {
                mine.subtract(c);
                if mine.is_empty() {
                    self.children.remove(k);
                }
            }
        }
    }
}

// === Keyed lists and atomic values (upstream's schemas for the built-in kinds) ===

/// The list-map keys of a list field (`+listType=map`), as server-side apply keys items.
fn list_keys(field: &str, items: &[Value]) -> Option<&'static [&'static str]> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "secrets"
        | "resourceClaims"
        | "schedulingGates" => &["name"],
        "volumeMounts" => &["mountPath"],
        "volumeDevices" => &["devicePath"],
        "conditions" => &["type"],
        "ownerReferences" => &["uid"],
        "hostAliases" => &["ip"],
        "resizePolicy" => &["resourceName"],
        "topologySpreadConstraints" => &["topologyKey", "whenUnsatisfiable"],
        "ports" if items.iter().any(|i| i.get("containerPort").is_some()) => {
            &["containerPort", "protocol"]
        }
        "ports" => &["port", "protocol"],
        _ => return None,
    })
}

/// A key field's value in an item, with the schema default a key field has (`protocol`).
fn key_value<'a>(item: &'a Value, field: &str) -> Option<&'a Value> {
    static TCP: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| json!("TCP"));
    match item.get(field).filter(|v| !v.is_null()) {
        Some(v) => Some(v),
        None if field == "protocol" => Some(&TCP),
        None => None,
    }
}

fn item_key(item: &Value, keys: &[&str]) -> Option<String> {
    if !item.is_object() {
        return None;
    }
    let mut m = Map::new();
    for k in keys {
        m.insert((*k).to_string(), key_value(item, k)?.clone());
    }
    Some(Value::Object(m).to_string())
}

/// The items of a keyed list with their key JSON (`{"name":"nginx"}`), or None when the list
/// is atomic (no list-map keys, or an item without them).
pub fn keyed_items<'a>(field: &str, items: &'a [Value]) -> Option<Vec<(String, &'a Value)>> {
    let keys = list_keys(field, items)?;
    items
        .iter()
        .map(|i| Some((item_key(i, keys)?, i)))
        .collect()
}

/// Whether `item` is the one `key_json` names (defaults of key fields included).
pub fn matches_key(item: &Value, key_json: &str) -> bool {
    match serde_json::from_str::<Map<String, Value>>(key_json) {
        Ok(km) => km.iter().all(|(k, v)| key_value(item, k) == Some(v)),
        Err(_) => false,
    }
}

/// Maps and structs owned as one value (`+mapType=atomic`, `+structType=atomic`).
pub fn is_atomic(field: &str) -> bool {
    matches!(
        field,
        "selector"
            | "nodeSelector"
            | "podSelector"
            | "namespaceSelector"
            | "labelSelector"
            | "objectSelector"
            | "configMapKeyRef"
            | "secretKeyRef"
            | "fieldRef"
            | "resourceFieldRef"
    )
}

/// Fields that exist in a built-in kind's empty object (Go struct fields that are not
/// pointers, and `containers`, which Go encodes as null): a create does not add them, only
/// what is under them.
fn in_empty_object(parent: &str, field: &str) -> bool {
    match parent {
        "" => matches!(field, "metadata" | "spec" | "status" | "roleRef"),
        "spec" => matches!(
            field,
            "template"
                | "strategy"
                | "updateStrategy"
                | "jobTemplate"
                | "resources"
                | "containers"
                | "scaleTargetRef"
        ),
        "template" | "jobTemplate" => matches!(field, "metadata" | "spec"),
        _ => false,
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Scalar fields that are pointers in Go, where a zero is a value someone set (`replicas: 0`).
fn is_pointer(field: &str) -> bool {
    matches!(
        field,
        "replicas"
            | "terminationGracePeriodSeconds"
            | "activeDeadlineSeconds"
            | "progressDeadlineSeconds"
            | "revisionHistoryLimit"
            | "automountServiceAccountToken"
            | "enableServiceLinks"
            | "shareProcessNamespace"
            | "setHostnameAsFQDN"
            | "hostUsers"
            | "backoffLimit"
            | "parallelism"
            | "completions"
            | "suspend"
            | "ttlSecondsAfterFinished"
            | "startingDeadlineSeconds"
            | "successfulJobsHistoryLimit"
            | "failedJobsHistoryLimit"
            | "allowPrivilegeEscalation"
            | "privileged"
            | "readOnlyRootFilesystem"
            | "runAsNonRoot"
            | "runAsUser"
            | "runAsGroup"
            | "fsGroup"
            | "defaultMode"
            | "optional"
            | "immutable"
            | "expirationSeconds"
    )
}

/// Metadata fields nobody owns (upstream's stripped fields).
fn stripped_metadata(field: &str) -> bool {
    matches!(
        field,
        "name"
            | "namespace"
            | "creationTimestamp"
            | "selfLink"
            | "uid"
            | "clusterName"
            | "generation"
            | "managedFields"
            | "resourceVersion"
    )
}

// === The changes of a write ===

/// What a write changed: `changed` (added or modified paths) and `removed`.
#[derive(Debug, Default)]
pub struct Changes {
    pub changed: Fields,
    pub removed: Fields,
}

struct Walk {
    empty_map: Value,
    empty_list: Value,
}

impl Walk {
    /// Compare one node. `zero`: the node's old value is the empty object's (a create).
    fn node(
        &self,
        field: &str,
        old: Option<&Value>,
        new: Option<&Value>,
        zero: bool,
        c: &mut Fields,
        r: &mut Fields,
    ) {
        let mut old = old.filter(|v| !v.is_null());
        let new = new.filter(|v| !v.is_null());
        if old.is_none() && zero {
            old = Some(if field == "containers" {
                &self.empty_list
            } else {
                &self.empty_map
            });
        }
        let objects = old.is_none_or(Value::is_object) && new.is_none_or(Value::is_object);
        if objects && !is_atomic(field) {
            let om = old.and_then(Value::as_object);
            let nm = new.and_then(Value::as_object);
            if om.is_none_or(Map::is_empty) && nm.is_none_or(Map::is_empty) {
                return leaf(old, new, c, r);
            }
            c.member |= old.is_none();
            r.member |= new.is_none();
            self.children(field, om, nm, zero, c, r);
            return;
        }
        let lists = old.is_none_or(Value::is_array) && new.is_none_or(Value::is_array);
        if lists {
            let ol = old.and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            let nl = new.and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            if ol.is_empty() && nl.is_empty() {
                return leaf(old, new, c, r);
            }
            if let (Some(ok), Some(nk)) = (keyed_items(field, ol), keyed_items(field, nl)) {
                c.member |= old.is_none();
                r.member |= new.is_none();
                for (k, item) in &nk {
                    let before = ok.iter().find(|(o, _)| o == k).map(|(_, v)| *v);
                    self.descend(format!("k:{k}"), "", before, Some(item), false, c, r);
                }
                for (k, item) in &ok {
                    if !nk.iter().any(|(n, _)| n == k) {
                        self.descend(format!("k:{k}"), "", Some(item), None, false, c, r);
                    }
                }
                return;
            }
        }
        if old.is_none() && new.is_some_and(is_zero) && !is_pointer(field) {
            // Go drops an omitempty zero when decoding (protobuf bodies carry them all):
            // upstream never sees it set
            return;
        }
        leaf(old, new, c, r)
    }

    #[allow(clippy::too_many_arguments)]
    fn descend(
        &self,
        key: String,
        field: &str,
        old: Option<&Value>,
        new: Option<&Value>,
        zero: bool,
        c: &mut Fields,
        r: &mut Fields,
    ) {
        let (mut cc, mut rc) = (Fields::default(), Fields::default());
        self.node(field, old, new, zero, &mut cc, &mut rc);
        if !cc.is_empty() {
            c.children.insert(key.clone(), cc);
        }
        if !rc.is_empty() {
            r.children.insert(key, rc);
        }
    }

    fn children(
        &self,
        parent: &str,
        old: Option<&Map<String, Value>>,
        new: Option<&Map<String, Value>>,
        zero: bool,
        c: &mut Fields,
        r: &mut Fields,
    ) {
        let zero_child = |k: &str| zero && in_empty_object(parent, k);
        if let Some(nm) = new {
            for (k, v) in nm {
                let before = old.and_then(|o| o.get(k));
                if before != Some(v) {
                    self.descend(format!("f:{k}"), k, before, Some(v), zero_child(k), c, r);
                }
            }
        }
        if let Some(om) = old {
            for (k, v) in om {
                if new.is_none_or(|n| !n.contains_key(k)) {
                    self.descend(format!("f:{k}"), k, Some(v), None, false, c, r);
                }
            }
        }
    }
}

fn leaf(old: Option<&Value>, new: Option<&Value>, c: &mut Fields, r: &mut Fields) {
    match (old, new) {
        (None, Some(_)) => c.member = true,
        (Some(a), Some(b)) if a != b => c.member = true,
        (Some(_), None) => r.member = true,
        _ => {}
    }
}

/// The changes from `old` (None: a create, compared with the kind's empty object) to `new`,
/// without what nobody owns (identity, the metadata the server sets) and without `status`
/// unless `with_status`.
pub fn diff(def: &ResourceDef, old: Option<&Value>, new: &Value, with_status: bool) -> Changes {
    let w = Walk {
        empty_map: Value::Object(Map::new()),
        empty_list: Value::Array(Vec::new()),
    };
    let mut out = Changes::default();
    let zero = old.is_none() && def.custom.is_none();
    let none = Map::new();
    let om = old.and_then(Value::as_object).unwrap_or(&none);
    let nm = new.as_object().unwrap_or(&none);
    let keys = nm.keys().chain(om.keys().filter(|k| !nm.contains_key(*k)));
    for k in keys {
        match k.as_str() {
            "apiVersion" | "kind" => continue,
            "status" if !with_status => continue,
            "metadata" => {
                let (mut c, mut r) = (Fields::default(), Fields::default());
                let empty = Map::new();
                let om = om.get(k).and_then(Value::as_object).unwrap_or(&empty);
                let nm = nm.get(k).and_then(Value::as_object).unwrap_or(&empty);
                for mk in nm
                    .keys()
                    .chain(om.keys().filter(|mk| !nm.contains_key(*mk)))
                {
                    if stripped_metadata(mk) || om.get(mk) == nm.get(mk) {
                        continue;
                    }
                    let key = format!("f:{mk}");
                    w.descend(key, mk, om.get(mk), nm.get(mk), false, &mut c, &mut r);
                }
                if !c.is_empty() {
                    out.changed.children.insert("f:metadata".into(), c);
                }
                if !r.is_empty() {
                    out.removed.children.insert("f:metadata".into(), r);
                }
            }
            _ => {
                let (before, after) = (om.get(k), nm.get(k));
                if before != after || zero {
                    let z = zero && in_empty_object("", k);
                    let key = format!("f:{k}");
                    w.descend(key, k, before, after, z, &mut out.changed, &mut out.removed);
                }
            }
        }
    }
    out
}
