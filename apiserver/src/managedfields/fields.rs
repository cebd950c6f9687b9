//! Field sets and what a write changed: [`Fields`] is a `fieldsV1` tree, [`diff`] walks an
//! old and a new object once and returns the paths the write added or changed and those it
//! removed. What is a keyed list, a set or an atomic value is a [`Shape`]: upstream's schemas
//! for the built-in kinds (list-map keys, `+mapType=atomic` selectors, `finalizers` a set),
//! looked up by field name, and a custom resource's structural schema
//! (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`, `x-kubernetes-map-type`).

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

/// What server-side apply makes of a list: one value, items keyed by their key fields
/// (`k:{...}`), or a set of scalars (`v:<value>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKind<'a> {
    Atomic,
    Map(Vec<&'a str>),
    Set,
}

/// Where a value sits in its kind's schema, as far as ownership and merging care.
#[derive(Clone, Copy, Debug)]
pub enum Shape<'a> {
    /// A built-in kind (or any object's `metadata`): upstream's schemas, by the field's name
    /// (`""` for the root and list items).
    Named(&'a str),
    /// A custom resource: its structural schema's node here (None: a field the schema does
    /// not describe, e.g. under `x-kubernetes-preserve-unknown-fields`: maps granular, lists
    /// atomic, as upstream deduces them).
    Schema(Option<&'a Value>),
}

impl<'a> Shape<'a> {
    /// The root of `def`'s objects.
    pub fn of(def: &'a ResourceDef) -> Shape<'a> {
        match &def.custom {
            Some(c) => Shape::Schema(Some(&c.schema).filter(|s| !s.is_null())),
            None => Shape::Named(""),
        }
    }

    /// The shape of the map field `name` under this one. A `metadata` field is the built-in
    /// `ObjectMeta` wherever it is (a custom resource's own, an embedded resource's),
    /// whatever a schema says of it (CRDs may not describe it beyond `name`).
    pub fn field(self, name: &'a str) -> Shape<'a> {
        match self {
            // `ObjectMeta.finalizers` is a set (`+listType=set`), a namespace's are not
            Shape::Named("metadata") if name == "finalizers" => Shape::Named("metadata.finalizers"),
            Shape::Named(_) => Shape::Named(name),
            Shape::Schema(_) if name == "metadata" => Shape::Named(name),
            Shape::Schema(s) => Shape::Schema(s.and_then(|s| {
                s.get("properties")
                    .and_then(|p| p.get(name))
                    .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
            })),
        }
    }

    /// The shape of a list's items.
    pub fn item(self) -> Shape<'a> {
        match self {
            Shape::Named(_) => Shape::Named(""),
            Shape::Schema(s) => Shape::Schema(s.and_then(|s| s.get("items"))),
        }
    }

    /// The field's name for a built-in kind (`""` otherwise).
    pub fn name(self) -> &'a str {
        match self {
            Shape::Named(n) => n,
            Shape::Schema(_) => "",
        }
    }

    /// What a list here is (`items`: built-in `ports` lists are keyed by their items' fields).
    pub fn list_kind(self, items: &[Value]) -> ListKind<'a> {
        match self {
            Shape::Named("metadata.finalizers") => ListKind::Set,
            Shape::Named(f) => match list_keys(f, items) {
                Some(keys) => ListKind::Map(keys.to_vec()),
                None => ListKind::Atomic,
            },
            Shape::Schema(s) => {
                let s = s.unwrap_or(&Value::Null);
                match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
                    Some("map") => ListKind::Map(
                        s.get("x-kubernetes-list-map-keys")
                            .and_then(Value::as_array)
                            .map(|k| k.iter().filter_map(Value::as_str).collect())
                            .unwrap_or_default(),
                    ),
                    Some("set") => ListKind::Set,
                    _ => ListKind::Atomic,
                }
            }
        }
    }

    /// A map or struct owned as one value (`+mapType=atomic`, `+structType=atomic`,
    /// `x-kubernetes-map-type: atomic`).
    pub fn is_atomic(self) -> bool {
        match self {
            Shape::Named(f) => is_atomic(f),
            Shape::Schema(s) => {
                s.and_then(|s| s.get("x-kubernetes-map-type"))
                    .and_then(Value::as_str)
                    == Some("atomic")
            }
        }
    }

    /// A key field's value in an item of a list of this shape, with the default the schema
    /// gives the key field (built-in `protocol`: TCP; a CRD's `default`).
    fn key_value(self, item: &Value, field: &str) -> Option<Value> {
        if let Some(v) = item.get(field).filter(|v| !v.is_null()) {
            return Some(v.clone());
        }
        match self {
            Shape::Named(_) => (field == "protocol").then(|| json!("TCP")),
            Shape::Schema(s) => s
                .and_then(|s| s.pointer("/items/properties"))
                .and_then(|p| p.get(field))
                .and_then(|f| f.get("default"))
                .cloned(),
        }
    }

    fn item_key(self, item: &Value, keys: &[&str]) -> Option<String> {
        if !item.is_object() {
            return None;
        }
        let mut m = Map::new();
        for k in keys {
            m.insert((*k).to_string(), self.key_value(item, k)?);
        }
        Some(Value::Object(m).to_string())
    }

    /// The items of a keyed list of this shape with their key JSON (`{"name":"nginx"}`), or
    /// None when the list is not keyed (or an item lacks a key).
    pub fn keyed_items(self, items: &[Value]) -> Option<Vec<(String, &Value)>> {
        let ListKind::Map(keys) = self.list_kind(items) else {
            return None;
        };
        if keys.is_empty() {
            return None;
        }
        items
            .iter()
            .map(|i| Some((self.item_key(i, &keys)?, i)))
            .collect()
    }

    /// Whether `item`, of a list of this shape, is the one `key_json` names (defaults of key
    /// fields included).
    pub fn matches_key(self, item: &Value, key_json: &str) -> bool {
        match serde_json::from_str::<Map<String, Value>>(key_json) {
            Ok(km) => km
                .iter()
                .all(|(k, v)| self.key_value(item, k).as_ref() == Some(v)),
            Err(_) => false,
        }
    }
}

/// Maps and structs owned as one value (`+mapType=atomic`, `+structType=atomic`).
fn is_atomic(field: &str) -> bool {
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
        shape: Shape<'_>,
        old: Option<&Value>,
        new: Option<&Value>,
        zero: bool,
        c: &mut Fields,
        r: &mut Fields,
    ) {
        let mut old = old.filter(|v| !v.is_null());
        let new = new.filter(|v| !v.is_null());
        if old.is_none() && zero {
            old = Some(if shape.name() == "containers" {
                &self.empty_list
            } else {
                &self.empty_map
            });
        }
        let objects = old.is_none_or(Value::is_object) && new.is_none_or(Value::is_object);
        if objects && !shape.is_atomic() {
            let om = old.and_then(Value::as_object);
            let nm = new.and_then(Value::as_object);
            if om.is_none_or(Map::is_empty) && nm.is_none_or(Map::is_empty) {
                return leaf(old, new, c, r);
            }
            c.member |= old.is_none();
            r.member |= new.is_none();
            self.children(shape, om, nm, zero, c, r);
            return;
        }
        let lists = old.is_none_or(Value::is_array) && new.is_none_or(Value::is_array);
        if lists {
            let ol = old.and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            let nl = new.and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            if ol.is_empty() && nl.is_empty() {
                return leaf(old, new, c, r);
            }
            let item = shape.item();
            if let (Some(ok), Some(nk)) = (shape.keyed_items(ol), shape.keyed_items(nl)) {
                c.member |= old.is_none();
                r.member |= new.is_none();
                for (k, v) in &nk {
                    let before = ok.iter().find(|(o, _)| o == k).map(|(_, v)| *v);
                    self.descend(format!("k:{k}"), item, before, Some(v), false, c, r);
                }
                for (k, v) in &ok {
                    if !nk.iter().any(|(n, _)| n == k) {
                        self.descend(format!("k:{k}"), item, Some(v), None, false, c, r);
                    }
                }
                return;
            }
            let scalars = |l: &[Value]| l.iter().all(|v| !v.is_object() && !v.is_array());
            if shape.list_kind(nl) == ListKind::Set && scalars(ol) && scalars(nl) {
                c.member |= old.is_none();
                r.member |= new.is_none();
                for v in nl.iter().filter(|v| !ol.contains(v)) {
                    c.children.entry(format!("v:{v}")).or_default().member = true;
                }
                for v in ol.iter().filter(|v| !nl.contains(v)) {
                    r.children.entry(format!("v:{v}")).or_default().member = true;
                }
                return;
            }
        }
        let named = matches!(shape, Shape::Named(_));
        if named && old.is_none() && new.is_some_and(is_zero) && !is_pointer(shape.name()) {
            // Go drops an omitempty zero when decoding (protobuf bodies carry them all):
            // upstream never sees it set (a custom resource keeps what it was sent)
            return;
        }
        leaf(old, new, c, r)
    }

    #[allow(clippy::too_many_arguments)]
    fn descend(
        &self,
        key: String,
        shape: Shape<'_>,
        old: Option<&Value>,
        new: Option<&Value>,
        zero: bool,
        c: &mut Fields,
        r: &mut Fields,
    ) {
        let (mut cc, mut rc) = (Fields::default(), Fields::default());
        self.node(shape, old, new, zero, &mut cc, &mut rc);
        if !cc.is_empty() {
            c.children.insert(key.clone(), cc);
        }
        if !rc.is_empty() {
            r.children.insert(key, rc);
        }
    }

    fn children(
        &self,
        shape: Shape<'_>,
        old: Option<&Map<String, Value>>,
        new: Option<&Map<String, Value>>,
        zero: bool,
        c: &mut Fields,
        r: &mut Fields,
    ) {
        let zero_child = |k: &str| zero && in_empty_object(shape.name(), k);
        if let Some(nm) = new {
            for (k, v) in nm {
                let before = old.and_then(|o| o.get(k));
                if before != Some(v) {
                    let child = shape.field(k);
                    self.descend(
                        format!("f:{k}"),
                        child,
                        before,
                        Some(v),
                        zero_child(k),
                        c,
                        r,
                    );
                }
            }
        }
        if let Some(om) = old {
            for (k, v) in om {
                if new.is_none_or(|n| !n.contains_key(k)) {
                    self.descend(format!("f:{k}"), shape.field(k), Some(v), None, false, c, r);
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
    let root = Shape::of(def);
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
                    let shape = Shape::Named("metadata").field(mk);
                    w.descend(key, shape, om.get(mk), nm.get(mk), false, &mut c, &mut r);
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
                    let shape = root.field(k);
                    w.descend(
                        key,
                        shape,
                        before,
                        after,
                        z,
                        &mut out.changed,
                        &mut out.removed,
                    );
                }
            }
        }
    }
    out
}
