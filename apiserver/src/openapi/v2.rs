//! `/openapi/v2`: one Swagger 2.0 document for the whole API, converted from the v3
//! documents (so the schemas, operations and extensions come from one builder).
//!
//! kubectl 1.37 reads it for kinds whose v3 document has no PATCH operation (the create-only
//! reviews, TokenRequest, ...): it decides from v2 whether the server validates fields and,
//! if not, validates the object itself against v2's definitions. client-go asks only for
//! gnostic's protobuf form (`Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf`)
//! and fails on anything else, a 406 included; JSON is served to whoever asks for it.
//!
//! kubectl's v2 parser (kube-openapi `pkg/util/proto`) is strict: a `$ref` must name a
//! definition and carry no type, a schema has at most one type, an array exactly one item
//! schema. The conversion keeps to that, and the tests check it over the whole document.

use serde_json::{json, Map, Value};

use super::{gnostic, gv_documents, hash_hex};
use crate::registry::Registry;

const V3_REF: &str = "#/components/schemas/";
const V2_REF: &str = "#/definitions/";
const GVK: &str = "x-kubernetes-group-version-kind";

/// gnostic's `openapi_v2.Document` in protobuf; upstream also answers the `.v1.0+` spelling.
const PROTOBUF_TYPES: [&str; 2] = [
    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V2Format {
    Json,
    Protobuf,
}

impl V2Format {
    /// The first acceptable form in `accept` (by q, then the client's order; no header means
    /// anything), as upstream's handler picks it; `None` is a 406.
    pub fn negotiate(accept: Option<&str>) -> Option<V2Format> {
        let accept = accept
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .unwrap_or("*/*");
        let mut clauses: Vec<(f32, String)> = accept
            .split(',')
            .filter_map(|clause| {
                let mut parts = clause.split(';').map(str::trim);
                let media = parts.next()?.to_ascii_lowercase();
                let q = parts
                    .filter_map(|p| p.split_once('='))
                    .find(|(k, _)| k.trim() == "q")
                    .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                (q > 0.0).then_some((q, media))
            })
            .collect();
        // stable: equal q keeps the client's order
        clauses.sort_by(|a, b| b.0.total_cmp(&a.0));
        clauses.iter().find_map(|(_, media)| match media.as_str() {
            "application/json" | "application/*" | "*/*" => Some(V2Format::Json),
            m if PROTOBUF_TYPES.contains(&m) => Some(V2Format::Protobuf),
            _ => None,
        })
    }

    /// What the answer says it is. Not the protobuf media type itself: client-go parses the
    /// Content-Type with Go's `mime.ParseMediaType`, which rejects its `@`, and upstream
    /// answers `application/octet-stream` too.
    pub fn content_type(self) -> &'static str {
        match self {
            V2Format::Json => "application/json",
            V2Format::Protobuf => "application/octet-stream",
        }
    }
}

/// The document in both forms, with their ETags.
#[derive(Debug)]
pub(super) struct Document {
    json: (Vec<u8>, String),
    protobuf: (Vec<u8>, String),
}

impl Document {
    pub(super) fn build(reg: &Registry) -> Document {
        let doc = swagger(reg);
        let with_etag = |bytes: Vec<u8>| {
            let etag = format!("\"{}\"", hash_hex(&bytes));
            (bytes, etag)
        };
        Document {
            json: with_etag(serde_json::to_vec(&doc).unwrap_or_default()),
            protobuf: with_etag(gnostic::encode(&doc)),
        }
    }

    pub(super) fn get(&self, format: V2Format) -> (&[u8], &str) {
        let (bytes, etag) = match format {
            V2Format::Json => &self.json,
            V2Format::Protobuf => &self.protobuf,
        };
        (bytes, etag)
    }
}

fn swagger(reg: &Registry) -> Value {
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for (_, doc) in gv_documents(reg) {
        let Value::Object(mut doc) = doc else {
            continue;
        };
        if let Some(Value::Object(ps)) = doc.remove("paths") {
            for (path, item) in ps {
                paths.insert(path, path_item(item));
            }
        }
        let schemas = doc
            .get_mut("components")
            .and_then(|c| c.get_mut("schemas"))
            .map(Value::take);
        if let Some(Value::Object(schemas)) = schemas {
            for (name, mut s) in schemas {
                schema(&mut s);
                add_definition(&mut definitions, name, s);
            }
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.37.0"},
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {"BearerToken": {
            "type": "apiKey", "name": "authorization", "in": "header",
            "description": "Bearer Token authentication",
        }},
        "security": [{"BearerToken": []}],
    })
}

/// Each group-version's document carries the shared types (ObjectMeta, Status, Scale, ...):
/// the same schema, except that only the documents serving a kind name its gvk.
fn add_definition(defs: &mut Map<String, Value>, name: String, s: Value) {
    let Some(existing) = defs.get_mut(&name) else {
        defs.insert(name, s);
        return;
    };
    let (Some(Value::Array(new)), Some(old)) = (s.get(GVK), existing.as_object_mut()) else {
        return;
    };
    let Value::Array(list) = old.entry(GVK).or_insert_with(|| json!([])) else {
        return;
    };
    for gvk in new {
        if !list.contains(gvk) {
            list.push(gvk.clone());
        }
    }
}

/// A v3 schema (schemars' OpenAPI 3 output) as a v2 one, in place.
fn schema(s: &mut Value) {
    let Value::Object(m) = s else {
        return;
    };
    // schemars describes a referenced type as `{description, allOf: [{$ref}]}`; v2 (and
    // upstream's document) has `{description, $ref}`: kube-openapi reads a schema with only
    // `allOf` as "anything" and would validate nothing below it.
    let single_ref = match m.get("allOf") {
        Some(Value::Array(all)) if all.len() == 1 && !m.contains_key("type") => {
            all[0].get("$ref").cloned()
        }
        _ => None,
    };
    if let Some(r) = single_ref {
        m.remove("allOf");
        m.insert("$ref".into(), r);
    }
    if let Some(Value::String(r)) = m.get_mut("$ref") {
        if let Some(name) = r.strip_prefix(V3_REF) {
            *r = format!("{V2_REF}{name}");
        }
    }
    // OpenAPI 3 only
    m.remove("nullable");
    for (k, v) in m.iter_mut() {
        match (k.as_str(), v) {
            ("properties", Value::Object(props)) => props.values_mut().for_each(schema),
            ("items" | "additionalProperties" | "not", v @ Value::Object(_)) => schema(v),
            ("items" | "allOf" | "anyOf" | "oneOf", Value::Array(list)) => {
                list.iter_mut().for_each(schema)
            }
            _ => {}
        }
    }
}

fn path_item(item: Value) -> Value {
    let Value::Object(item) = item else {
        return item;
    };
    let item = item
        .into_iter()
        .map(|(k, v)| {
            let v = match k.as_str() {
                "parameters" => parameters(v),
                "patch" => without_field_validation(operation(v)),
                "get" | "put" | "post" | "delete" | "head" | "options" => operation(v),
                _ => v,
            };
            (k, v)
        })
        .collect();
    Value::Object(item)
}

/// v2's PATCH operations do not list `fieldValidation` (v3's do, and kubectl 1.37 asks v3
/// first). For a kind with no PATCH operation kubectl takes the Namespace PATCH's
/// parameters as what CustomResourceDefinitions support and, when it lists
/// `fieldValidation`, lists CRDs to see whether the kind is one; kaze serves no
/// `apiextensions.k8s.io`, so that list fails and so would `kubectl create -f` of every
/// review. Without it kubectl validates those kinds itself, against `definitions`.
fn without_field_validation(mut op: Value) -> Value {
    if let Some(Value::Array(ps)) = op.get_mut("parameters") {
        ps.retain(|p| p["name"] != "fieldValidation");
    }
    op
}

/// v3 `{name, in, description, schema: {type, ...}}` -> v2 `{name, in, description, type, ...}`.
fn parameters(ps: Value) -> Value {
    let Value::Array(ps) = ps else {
        return ps;
    };
    ps.into_iter()
        .map(|p| match p {
            Value::Object(mut p) => {
                if let Some(Value::Object(s)) = p.remove("schema") {
                    p.extend(s);
                }
                Value::Object(p)
            }
            other => other,
        })
        .collect()
}

/// The first media type's schema of a v3 `content` map, as v2, and the media types.
fn content(content: Option<Value>) -> (Option<Value>, Vec<Value>) {
    let Some(Value::Object(content)) = content else {
        return (None, Vec::new());
    };
    let types = content.keys().map(|k| json!(k)).collect();
    let mut first = content
        .into_iter()
        .next()
        .and_then(|(_, mut media)| media.get_mut("schema").map(Value::take));
    if let Some(s) = first.as_mut() {
        schema(s);
    }
    (first, types)
}

fn operation(op: Value) -> Value {
    let Value::Object(mut op) = op else {
        return op;
    };
    let mut params = match op.remove("parameters").map(parameters) {
        Some(Value::Array(ps)) => ps,
        _ => Vec::new(),
    };
    let mut consumes = Vec::new();
    if let Some(Value::Object(mut body)) = op.remove("requestBody") {
        let required = body.remove("required").unwrap_or(json!(false));
        let (s, types) = content(body.remove("content"));
        consumes = types;
        params.insert(
            0,
            json!({"name": "body", "in": "body", "required": required, "schema": s.unwrap_or(json!({}))}),
        );
    }
    let mut produces = Vec::new();
    if let Some(Value::Object(responses)) = op.remove("responses") {
        let responses: Map<String, Value> = responses
            .into_iter()
            .map(|(code, r)| {
                let Value::Object(mut r) = r else {
                    return (code, r);
                };
                let (s, types) = content(r.remove("content"));
                if let Some(s) = s {
                    r.insert("schema".into(), s);
                }
                if produces.is_empty() {
                    produces = types;
                }
                (code, Value::Object(r))
            })
            .collect();
        op.insert("responses".into(), Value::Object(responses));
    }
    op.insert("parameters".into(), Value::Array(params));
    if consumes.is_empty() {
        consumes.push(json!("*/*"));
    }
    op.insert("consumes".into(), Value::Array(consumes));
    op.insert("produces".into(), Value::Array(produces));
    op.insert("schemes".into(), json!(["https"]));
    Value::Object(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        swagger(&Registry::builtin())
    }

    #[test]
    fn negotiates_like_upstream() {
        let pb = PROTOBUF_TYPES[0];
        assert_eq!(V2Format::negotiate(Some(pb)), Some(V2Format::Protobuf));
        assert_eq!(
            V2Format::negotiate(Some(PROTOBUF_TYPES[1])),
            Some(V2Format::Protobuf)
        );
        assert_eq!(V2Format::negotiate(None), Some(V2Format::Json));
        assert_eq!(
            V2Format::negotiate(Some("application/json, */*")),
            Some(V2Format::Json)
        );
        assert_eq!(
            V2Format::negotiate(Some(&format!("application/json;q=0.5, {pb}"))),
            Some(V2Format::Protobuf)
        );
        assert_eq!(
            V2Format::negotiate(Some("application/vnd.kubernetes.protobuf")),
            None
        );
        assert_eq!(V2Format::negotiate(Some("application/json;q=0")), None);
    }

    #[test]
    fn pod_definition_and_patch_operation() {
        let d = doc();
        assert_eq!(d["swagger"], "2.0");
        let pod = &d["definitions"]["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod[GVK],
            json!([{"group": "", "version": "v1", "kind": "Pod"}])
        );
        assert_eq!(
            pod["properties"]["spec"]["$ref"],
            "#/definitions/io.k8s.api.core.v1.PodSpec"
        );
        assert!(pod["properties"]["spec"].get("allOf").is_none());
        let patch = &d["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(patch[GVK]["kind"], "Pod");
        assert_eq!(patch["x-kubernetes-action"], "patch");
        let body = &patch["parameters"][0];
        assert_eq!(
            (&body["in"], &body["schema"]["$ref"]),
            (
                &json!("body"),
                &json!("#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.Patch")
            )
        );
        assert!(patch["consumes"]
            .as_array()
            .expect("consumes")
            .contains(&json!("application/strategic-merge-patch+json")));
        let dry_run = patch["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == "dryRun")
            .expect("dryRun");
        assert_eq!(
            (&dry_run["in"], &dry_run["type"]),
            (&json!("query"), &json!("string"))
        );
        assert!(dry_run.get("schema").is_none());
        assert!(
            !patch["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .any(|p| p["name"] == "fieldValidation"),
            "kubectl would list CRDs, which kaze does not serve"
        );
        let get = &d["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["get"];
        assert_eq!(
            get["responses"]["200"]["schema"]["$ref"],
            "#/definitions/io.k8s.api.core.v1.Pod"
        );
        // the review kinds are in it: kubectl validates them with v2
        let sar = &d["definitions"]["io.k8s.api.authorization.v1.SubjectAccessReview"];
        assert_eq!(sar[GVK][0]["kind"], "SubjectAccessReview");
        // Scale is named by every group that serves a scale subresource, once each
        let scale = &d["definitions"]["io.k8s.api.autoscaling.v1.Scale"][GVK];
        assert_eq!(
            scale,
            &json!([{"group": "autoscaling", "version": "v1", "kind": "Scale"}])
        );
    }

    /// What kube-openapi's v2 parser refuses anywhere in a definition fails kubectl's
    /// validation of every kind.
    fn check(s: &Value, defs: &Map<String, Value>, at: &str, errors: &mut Vec<String>) {
        let Some(m) = s.as_object() else {
            errors.push(format!("{at}: not an object"));
            return;
        };
        if let Some(r) = m.get("$ref") {
            let target = r.as_str().and_then(|r| r.strip_prefix(V2_REF));
            if !target.is_some_and(|t| defs.contains_key(t)) {
                errors.push(format!("{at}: dangling $ref {r}"));
            }
            if m.contains_key("type") || m.contains_key("properties") {
                errors.push(format!("{at}: $ref with a type or properties"));
            }
            return;
        }
        match m.get("type") {
            None => {}
            Some(Value::String(t))
                if ["object", "array", "string", "integer", "number", "boolean"]
                    .contains(&t.as_str()) => {}
            Some(t) => errors.push(format!("{at}: type {t}")),
        }
        if m.get("type") == Some(&json!("array")) && !m.get("items").is_some_and(Value::is_object) {
            errors.push(format!("{at}: array without one item schema"));
        }
        if let Some(Value::Object(props)) = m.get("properties") {
            for (k, v) in props {
                check(v, defs, &format!("{at}.{k}"), errors);
            }
        }
        for k in ["items", "additionalProperties"] {
            if let Some(v @ Value::Object(_)) = m.get(k) {
                check(v, defs, &format!("{at}/{k}"), errors);
            }
        }
    }

    #[test]
    fn every_definition_parses_with_kubectls_v2_rules() {
        let d = doc();
        let defs = d["definitions"].as_object().expect("definitions");
        assert!(defs.len() > 300, "{}", defs.len());
        let mut errors = Vec::new();
        for (name, s) in defs {
            check(s, defs, name, &mut errors);
        }
        for (path, item) in d["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if let Some(s) = p.get("schema") {
                        check(s, defs, &format!("{method} {path} body"), &mut errors);
                    }
                }
            }
        }
        assert!(errors.is_empty(), "{errors:#?}");
        let text = d.to_string();
        assert!(!text.contains("#/components/"), "a v3 reference is left");
        assert!(!text.contains("requestBody"));
    }
}
