//! Custom resource objects: what differs from built-in kinds on create, on every write
//! (pruning, defaulting, validation against the schema) and on reads (see [`super`]).

use serde_json::{json, Value};

use super::{rules, schema, Custom};
use crate::meta;
use crate::registry::{ResourceDef, Sub};
use crate::status::ApiError;

fn cannot(def: &ResourceDef, why: String) -> ApiError {
    ApiError::bad_request(format!(
        "{} in version {:?} cannot be handled as a {}: {why}",
        def.kind, def.version, def.kind
    ))
}

/// Before a create: no new objects of a terminating CRD; the status of a kind with a
/// status subresource is not set by a create (upstream's strategy drops it).
pub fn prepare_create(def: &ResourceDef, c: &Custom, obj: &mut Value) -> Result<(), ApiError> {
    if c.terminating {
        return Err(ApiError {
            message: "create not allowed while custom resource definition is terminating".into(),
            ..ApiError::method_not_supported(def.plural, "create")
        });
    }
    if def.has(Sub::Status) {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    Ok(())
}

/// The object as it will be stored: metadata as ObjectMeta, unknown fields pruned (a 400
/// under `fieldValidation=Strict`, warnings under `Warn`), defaults filled in, then the
/// schema's field errors as a 422, then (when there are none) the `x-kubernetes-validations`
/// rules' failures, with `old` the stored object on updates.
pub fn check_object(
    def: &ResourceDef,
    c: &Custom,
    obj: &Value,
    old: Option<&Value>,
    strict: bool,
) -> Result<Value, ApiError> {
    let mut out = obj.clone();
    let name = meta::meta_str(obj, "name").unwrap_or("").to_string();
    // metadata: only ObjectMeta's fields, of the right types
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    let typed: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
        serde_json::from_value(m.clone()).map_err(|e| cannot(def, e.to_string()))?;
    let typed = serde_json::to_value(&typed).map_err(|e| cannot(def, e.to_string()))?;
    let mut unknown = Vec::new();
    if let (Some(a), Some(b)) = (m.as_object(), typed.as_object()) {
        let empty = |v: &Value| {
            v.is_null()
                || v.as_object().is_some_and(|m| m.is_empty())
                || v.as_array().is_some_and(|a| a.is_empty())
        };
        for k in a.keys().filter(|k| !b.contains_key(*k) && !empty(&a[*k])) {
            unknown.push(format!("metadata.{k}"));
        }
    }
    out["metadata"] = typed;
    if !c.schema.is_null() {
        unknown.extend(schema::prune(&mut out, &c.schema));
    }
    if !unknown.is_empty() {
        if strict {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            return Err(cannot(
                def,
                format!("strict decoding error: {}", list.join(", ")),
            ));
        }
        if crate::warning::warn_unknown_fields() {
            for f in &unknown {
                crate::warning::add(format!("unknown field {f:?}"));
            }
        }
    }
    if !c.schema.is_null() {
        schema::apply_defaults(&mut out, &c.schema);
        let mut causes = schema::validate(&out, &c.schema);
        if causes.is_empty() && c.has_rules {
            causes = rules::validate(&out, old, &c.schema);
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(def.kind, def.group, &name, causes));
        }
    }
    Ok(out)
}

/// A stored custom resource as `def`'s version serves it: its `apiVersion` (versions share
/// storage with `conversion.strategy: None`) and the schema's defaults.
pub fn from_storage(def: &ResourceDef, c: &Custom, obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(def.api_version()));
    }
    if !c.schema.is_null() {
        schema::apply_defaults(obj, &c.schema);
    }
}

/// The `apiVersion` objects of `def` are stored with.
pub fn storage_api_version(def: &ResourceDef, c: &Custom) -> String {
    format!("{}/{}", def.group, c.storage_version)
}

// === scale ===

/// `.spec.replicas` -> `/spec/replicas`.
pub fn pointer(json_path: &str) -> String {
    json_path.replace('.', "/")
}

/// 415 for a body custom resources are not served in (strategic merge patch, protobuf), with
/// upstream's list of what is.
pub fn unsupported_media_type(content_type: &str) -> ApiError {
    ApiError {
        message: format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"),
        ..ApiError::unsupported_media_type(content_type)
    }
}
