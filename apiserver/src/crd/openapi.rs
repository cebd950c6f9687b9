//! `/openapi/v3/apis/<group>/<version>` of custom resources, from the CRDs' schemas (what
//! `kubectl explain` reads, and where kubectl looks for `fieldValidation` support), and
//! their entries in the `/openapi/v3` index. Built once per snapshot, on first request.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use serde_json::{json, Map, Value};

use super::Snapshot;
use crate::registry::ResourceDef;

/// `com.example.v1.Widget` for `example.com/v1` `Widget`, as upstream names them.
fn schema_name(d: &ResourceDef, kind: &str) -> String {
    let mut parts: Vec<&str> = d.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{kind}", parts.join("."), d.version)
}

fn kind_schema(d: &ResourceDef, schema: &Value) -> Value {
    let mut s = if schema.is_object() {
        schema.clone()
    } else {
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
    };
    let props = s
        .as_object_mut()
        .expect("an object")
        .entry("properties")
        .or_insert_with(|| json!({}));
    if let Some(p) = props.as_object_mut() {
        p.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"}));
        p.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"}));
        p.insert("metadata".into(), json!({"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}], "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}));
    }
    s["x-kubernetes-group-version-kind"] =
        json!([{"group": d.group, "version": d.version, "kind": d.kind}]);
    s
}

fn build(snapshot: &Snapshot) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (group, version) in &snapshot.custom_gvs {
        let defs: Vec<&ResourceDef> = snapshot
            .registry
            .in_group_version(group, version)
            .map(|d| d.as_ref())
            .filter(|d| d.custom.is_some())
            .collect();
        let mut schemas = Map::new();
        let mut named = Vec::new();
        for d in &defs {
            let c = d.custom.as_ref().expect("custom");
            let name = schema_name(d, d.kind);
            schemas.insert(name.clone(), kind_schema(d, &c.schema));
            let list = schema_name(d, &c.list_kind);
            schemas.insert(list, json!({
                "type": "object",
                "description": format!("{} is a list of {}", c.list_kind, d.kind),
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}},
                    "metadata": {"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"}]},
                },
                "x-kubernetes-group-version-kind": [{"group": d.group, "version": d.version, "kind": c.list_kind}],
            }));
            named.push((*d, name));
        }
        let doc = crate::openapi::custom_gv_document(&named, schemas);
        out.insert(
            format!("apis/{group}/{version}"),
            serde_json::to_vec(&doc).unwrap_or_default(),
        );
    }
    out
}

fn docs(snapshot: &Snapshot) -> &BTreeMap<String, Vec<u8>> {
    snapshot.docs.get_or_init(|| build(snapshot))
}

/// The document at `gv_path` (`apis/example.com/v1`), if a CRD serves it.
pub fn document(snapshot: &Snapshot, gv_path: &str) -> Option<Vec<u8>> {
    if snapshot.custom_gvs.is_empty() {
        return None;
    }
    docs(snapshot).get(gv_path).cloned()
}

/// The built-in `/openapi/v3` index with the custom group-versions added.
pub fn index(snapshot: &Snapshot, builtin: &[u8]) -> Vec<u8> {
    if snapshot.custom_gvs.is_empty() {
        return builtin.to_vec();
    }
    let mut index: Value = serde_json::from_slice(builtin).unwrap_or_else(|_| json!({"paths": {}}));
    for (path, doc) in docs(snapshot) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        doc.hash(&mut h);
        index["paths"][path] =
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={:016X}", h.finish())});
    }
    serde_json::to_vec(&index).unwrap_or_default()
}
