//! `/openapi/v3`: one document per group-version, built from k8s-openapi's JSON schemas (which
//! carry upstream's descriptions, so `kubectl explain` reads well). Operations carry
//! `x-kubernetes-group-version-kind` and list the patch media types and the
//! `fieldValidation`/`dryRun` parameters: kubectl looks for exactly these to choose strategic
//! merge patch and server-side field validation. List fields get upstream's patch merge keys.
//!
//! `/openapi/v2` is one Swagger 2.0 document converted from these (see [`v2`]).

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use crate::registry::{Registry, ResourceDef, Sub};

mod gnostic;
mod v2;

pub use v2::V2Format;

/// Built on first use: the documents are large and most servers never serve them.
#[derive(Debug, Default)]
pub struct Cache {
    v3: OnceLock<Docs>,
    v2: OnceLock<v2::Document>,
}

#[derive(Debug)]
struct Docs {
    index: Vec<u8>,
    /// "api/v1", "apis/apps/v1", ... -> document
    by_gv: BTreeMap<String, Vec<u8>>,
}

impl Cache {
    /// The `/openapi/v3` index.
    pub fn index(&self, reg: &Registry) -> &[u8] {
        &self.get(reg).index
    }

    /// The document for `gv_path` ("api/v1", "apis/apps/v1").
    pub fn document(&self, reg: &Registry, gv_path: &str) -> Option<&[u8]> {
        self.get(reg).by_gv.get(gv_path).map(Vec::as_slice)
    }

    /// The `/openapi/v2` document in `format`, and its ETag (quoted).
    pub fn v2(&self, reg: &Registry, format: V2Format) -> (&[u8], &str) {
        self.v2.get_or_init(|| v2::Document::build(reg)).get(format)
    }

    fn get(&self, reg: &Registry) -> &Docs {
        self.v3.get_or_init(|| build(reg))
    }
}

/// Every group-version: its path under `/openapi/v3` ("api/v1", "apis/apps/v1") and its v3
/// document.
fn gv_documents(reg: &Registry) -> impl Iterator<Item = (String, Value)> + '_ {
    reg.groups().into_iter().flat_map(move |(group, versions)| {
        versions.into_iter().map(move |version| {
            let path = if group.is_empty() {
                format!("api/{version}")
            } else {
                format!("apis/{group}/{version}")
            };
            (path, gv_document(reg, group, version))
        })
    })
}

fn hash_hex(bytes: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016X}", h.finish())
}

fn build(reg: &Registry) -> Docs {
    let mut by_gv = BTreeMap::new();
    let mut index = Map::new();
    for (path, doc) in gv_documents(reg) {
        let doc = serde_json::to_vec(&doc).unwrap_or_default();
        index.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", hash_hex(&doc))}),
        );
        by_gv.insert(path, doc);
    }
    Docs {
        index: serde_json::to_vec(&json!({ "paths": index })).unwrap_or_default(),
        by_gv,
    }
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn param(name: &str, location: &str, description: &str) -> Value {
    let mut p = json!({"name": name, "in": location, "description": description, "schema": {"type": "string", "uniqueItems": true}});
    if location == "path" {
        p["required"] = json!(true);
    }
    p
}

fn write_params(patch: bool) -> Vec<Value> {
    let mut ps = vec![
        param("dryRun", "query", "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed"),
        param("fieldManager", "query", "fieldManager is a name associated with the actor or entity that is making these changes."),
        param("fieldValidation", "query", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore - Warn - Strict"),
    ];
    if patch {
        ps.push(json!({"name": "force", "in": "query", "description": "Force is going to \"force\" Apply requests.", "schema": {"type": "boolean", "uniqueItems": true}}));
    }
    ps
}

fn list_params() -> Vec<Value> {
    [
        ("labelSelector", "A selector to restrict the list of returned objects by their labels."),
        ("fieldSelector", "A selector to restrict the list of returned objects by their fields."),
        ("resourceVersion", "resourceVersion sets a constraint on what resource versions a request may be served from."),
        ("resourceVersionMatch", "resourceVersionMatch determines how resourceVersion is applied to list calls."),
        ("continue", "The continue option should be set when retrieving more results from the server."),
    ]
    .iter()
    .map(|(n, d)| param(n, "query", d))
    .chain([
        json!({"name": "limit", "in": "query", "description": "limit is a maximum number of responses to return for a list call.", "schema": {"type": "integer", "uniqueItems": true}}),
        json!({"name": "watch", "in": "query", "description": "Watch for changes to the described resources.", "schema": {"type": "boolean", "uniqueItems": true}}),
        json!({"name": "allowWatchBookmarks", "in": "query", "description": "allowWatchBookmarks requests watch events with type \"BOOKMARK\".", "schema": {"type": "boolean", "uniqueItems": true}}),
        json!({"name": "timeoutSeconds", "in": "query", "description": "Timeout for the list/watch call.", "schema": {"type": "integer", "uniqueItems": true}}),
    ])
    .collect()
}

fn content(schema: &Value) -> Value {
    json!({
        "application/json": {"schema": schema},
        "application/yaml": {"schema": schema},
    })
}

fn op(
    id: &str,
    action: &str,
    gvk: &Value,
    params: Vec<Value>,
    body: Option<Value>,
    response: &Value,
) -> Value {
    let mut o = json!({
        "operationId": id,
        "tags": [],
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": content(response)}, "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
    });
    if let Some(b) = body {
        o["requestBody"] = b;
    }
    o
}

fn patch_body() -> Value {
    let patch = schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch");
    json!({"required": true, "content": {
        "application/json-patch+json": {"schema": patch},
        "application/merge-patch+json": {"schema": patch},
        "application/strategic-merge-patch+json": {"schema": patch},
        "application/apply-patch+yaml": {"schema": patch},
    }})
}

fn op_id(verb: &str, d: &ResourceDef, namespaced_path: bool, suffix: &str) -> String {
    let group: String = d
        .group
        .split('.')
        .next()
        .map(|g| {
            let mut c = g.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let group = if group.is_empty() {
        "Core".to_string()
    } else {
        group
    };
    let version = {
        let mut c = d.version.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect::<String>())
            .unwrap_or_default()
    };
    let ns = if namespaced_path { "Namespaced" } else { "" };
    format!("{verb}{group}{version}{ns}{}{suffix}", d.kind)
}

fn add_paths(paths: &mut Map<String, Value>, d: &ResourceDef, kind_ref: &Value) {
    let gvk = json!({"group": d.group, "version": d.version, "kind": d.kind});
    let list_schema = json!({"type": "object", "description": format!("{} is a list of {}", d.list_kind(), d.kind)});
    let status_schema = schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Status");
    let body = |schema: &Value| json!({"required": true, "content": content(schema)});
    let base = if d.namespaced {
        format!("{}/namespaces/{{namespace}}/{}", d.path_prefix(), d.plural)
    } else {
        format!("{}/{}", d.path_prefix(), d.plural)
    };
    let scope_params = |with_name: bool| {
        let mut ps = Vec::new();
        if with_name {
            ps.push(param("name", "path", &format!("name of the {}", d.kind)));
        }
        if d.namespaced {
            ps.push(param(
                "namespace",
                "path",
                "object name and auth scope, such as for teams and projects",
            ));
        }
        ps.push(param(
            "pretty",
            "query",
            "If 'true', then the output is pretty printed.",
        ));
        ps
    };
    let ns = d.namespaced;
    if matches!(d.review, Some(crate::reviews::Review::ComponentStatus)) {
        paths.insert(
            base.clone(),
            json!({
                "get": op(&op_id("list", d, ns, ""), "list", &gvk, list_params(), None, &list_schema),
                "parameters": scope_params(false),
            }),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({
                "get": op(&op_id("read", d, ns, ""), "get", &gvk, vec![], None, kind_ref),
                "parameters": scope_params(true),
            }),
        );
        return;
    }
    if d.review.is_some() {
        paths.insert(
            base,
            json!({
                "post": op(&op_id("create", d, ns, ""), "post", &gvk, write_params(false), Some(body(kind_ref)), kind_ref),
                "parameters": scope_params(false),
            }),
        );
        return;
    }
    paths.insert(
        base.clone(),
        json!({
            "get": op(&op_id("list", d, ns, ""), "list", &gvk, list_params(), None, &list_schema),
            "post": op(&op_id("create", d, ns, ""), "post", &gvk, write_params(false), Some(body(kind_ref)), kind_ref),
            "delete": op(&op_id("deleteCollection", d, ns, ""), "deletecollection", &gvk, list_params(), None, &status_schema),
            "parameters": scope_params(false),
        }),
    );
    paths.insert(
        format!("{base}/{{name}}"),
        json!({
            "get": op(&op_id("read", d, ns, ""), "get", &gvk, vec![], None, kind_ref),
            "put": op(&op_id("replace", d, ns, ""), "put", &gvk, write_params(false), Some(body(kind_ref)), kind_ref),
            "patch": op(&op_id("patch", d, ns, ""), "patch", &gvk, write_params(true), Some(patch_body()), kind_ref),
            "delete": op(&op_id("delete", d, ns, ""), "delete", &gvk, vec![
                param("dryRun", "query", "When present, indicates that modifications should not be persisted."),
                json!({"name": "gracePeriodSeconds", "in": "query", "schema": {"type": "integer", "uniqueItems": true}}),
                param("propagationPolicy", "query", "Whether and how garbage collection will be performed."),
            ], Some(body(&schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"))), kind_ref),
            "parameters": scope_params(true),
        }),
    );
    if d.namespaced {
        paths.insert(
            format!("{}/{}", d.path_prefix(), d.plural),
            json!({
                "get": op(&op_id("list", d, false, "ForAllNamespaces"), "list", &gvk, list_params(), None, &list_schema),
                "parameters": [param("pretty", "query", "If 'true', then the output is pretty printed.")],
            }),
        );
    }
    for sub in d.subresources {
        let (sub_gvk, sub_ref) = match sub {
            Sub::Scale => (
                json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
                schema_ref("io.k8s.api.autoscaling.v1.Scale"),
            ),
            Sub::Status => (gvk.clone(), kind_ref.clone()),
            _ => continue,
        };
        let suffix = if *sub == Sub::Scale {
            "Scale"
        } else {
            "Status"
        };
        paths.insert(
            format!("{base}/{{name}}/{}", sub.name()),
            json!({
                "get": op(&op_id("read", d, ns, suffix), "get", &sub_gvk, vec![], None, &sub_ref),
                "put": op(&op_id("replace", d, ns, suffix), "put", &sub_gvk, write_params(false), Some(body(&sub_ref)), &sub_ref),
                "patch": op(&op_id("patch", d, ns, suffix), "patch", &sub_gvk, write_params(true), Some(patch_body()), &sub_ref),
                "parameters": scope_params(true),
            }),
        );
    }
}

fn gv_document(reg: &Registry, group: &str, version: &str) -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    let defs: Vec<_> = reg.in_group_version(group, version).collect();
    let mut kinds = Vec::new();
    for d in &defs {
        (d.schema)(&mut generator);
        let name = (d.schema_name)().into_owned();
        add_paths(&mut paths, d, &schema_ref(&name));
        kinds.push((name, d.group, d.version, d.kind));
    }
    generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
    generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
    generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Patch>();
    if defs.iter().any(|d| d.has(Sub::Scale)) {
        generator.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>();
        kinds.push((
            "io.k8s.api.autoscaling.v1.Scale".into(),
            "autoscaling",
            "v1",
            "Scale",
        ));
    }
    let mut schemas = generator.take_definitions(true);
    for (name, g, v, k) in kinds {
        if let Some(Value::Object(s)) = schemas.get_mut(&name) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": g, "version": v, "kind": k}]),
            );
        }
    }
    for (name, schema) in schemas.iter_mut() {
        add_patch_extensions(name, schema);
        unrequire_metadata(schema);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.37.0"},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}}},
        "security": [{"BearerToken": []}],
    })
}

/// The document of a custom resource group-version ([`crate::crd`]): `defs` with the names
/// of their kinds' schemas, which `schemas` holds. Patch operations do not offer strategic
/// merge patch, which custom resources do not take (so kubectl sends merge patches).
pub(crate) fn custom_gv_document(
    defs: &[(&ResourceDef, String)],
    mut schemas: Map<String, Value>,
) -> Value {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    for (d, name) in defs {
        add_paths(&mut paths, d, &schema_ref(name));
    }
    generator.subschema_for::<meta::ObjectMeta>();
    generator.subschema_for::<meta::ListMeta>();
    generator.subschema_for::<meta::Status>();
    generator.subschema_for::<meta::DeleteOptions>();
    generator.subschema_for::<meta::Patch>();
    let scale = defs.iter().any(|(d, _)| d.has(Sub::Scale));
    if scale {
        generator.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>();
    }
    for (name, schema) in generator.take_definitions(true) {
        schemas.entry(name).or_insert(schema);
    }
    if let Some(Value::Object(s)) = schemas.get_mut("io.k8s.api.autoscaling.v1.Scale") {
        s.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": "autoscaling", "version": "v1", "kind": "Scale"}]),
        );
    }
    for path in paths.values_mut() {
        if let Some(Value::Object(c)) = path.pointer_mut("/patch/requestBody/content") {
            c.remove("application/strategic-merge-patch+json");
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}}},
        "security": [{"BearerToken": []}],
    })
}

/// k8s-openapi's Rust objects always have `metadata` (not an `Option`), so their schemas list
/// it as required; upstream's never do. kubectl validating a review against v2 would refuse
/// one without `metadata`, and `kubectl explain` would call it required.
fn unrequire_metadata(schema: &mut Value) {
    if let Some(Value::Array(required)) = schema.get_mut("required") {
        required.retain(|r| r != "metadata");
    }
    if schema
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        if let Some(s) = schema.as_object_mut() {
            s.remove("required");
        }
    }
}

/// Upstream's `x-kubernetes-patch-merge-key`/`-strategy` for the lists strategic merge patch
/// merges (k8s-openapi's schemas leave them out).
fn add_patch_extensions(def_name: &str, schema: &mut Value) {
    let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for (field, prop) in props.iter_mut() {
        let key = match field.as_str() {
            "ports" if def_name.ends_with("ServiceSpec") => Some("port"),
            "ports"
                if def_name.ends_with(".Container")
                    || def_name.ends_with(".EphemeralContainer") =>
            {
                Some("containerPort")
            }
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "env"
            | "volumes"
            | "imagePullSecrets"
            | "resourceClaims"
            | "schedulingGates" => Some("name"),
            "volumeMounts" => Some("mountPath"),
            "volumeDevices" => Some("devicePath"),
            "conditions"
                if def_name.contains(".core.v1.")
                    || def_name.contains(".apps.v1.")
                    || def_name.contains(".batch.v1.") =>
            {
                Some("type")
            }
            "ownerReferences" => Some("uid"),
            "hostAliases" => Some("ip"),
            "topologySpreadConstraints" => Some("topologyKey"),
            "finalizers" if def_name.ends_with("ObjectMeta") => None,
            _ => continue,
        };
        let Some(p) = prop.as_object_mut() else {
            continue;
        };
        p.insert("x-kubernetes-patch-strategy".into(), json!("merge"));
        if let Some(k) = key {
            p.insert("x-kubernetes-patch-merge-key".into(), json!(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_document_has_pod_schema_gvk_and_patch_operation() {
        let reg = Registry::builtin();
        let doc = gv_document(&reg, "", "v1");
        let pod = &doc["components"]["schemas"]["io.k8s.api.core.v1.Pod"];
        assert_eq!(pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        assert!(pod["description"]
            .as_str()
            .expect("description")
            .contains("collection of containers"));
        assert!(pod.get("required").is_none(), "{}", pod["required"]);
        let sar = &gv_document(&reg, "authorization.k8s.io", "v1")["components"]["schemas"]
            ["io.k8s.api.authorization.v1.SubjectAccessReview"];
        assert_eq!(sar["required"], json!(["spec"]));
        let containers =
            &doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(
            patch["requestBody"]["content"]["application/strategic-merge-patch+json"].is_object()
        );
        let names: Vec<&str> = patch["parameters"]
            .as_array()
            .expect("params")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(
            names.contains(&"fieldValidation") && names.contains(&"dryRun"),
            "{names:?}"
        );
    }
}
