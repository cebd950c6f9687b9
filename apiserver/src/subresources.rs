//! Subresources with their own shapes: `scale` (autoscaling/v1 Scale), pods' `binding` and
//! `eviction`. (`status` and `finalize` are partial updates handled in [`crate::objects`].)

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::negotiate::{self, Format};
use crate::objects::{self, DeleteOpts};
use crate::registry::ResourceDef;
use crate::selector::LabelSelector;
use crate::state::AppState;
use crate::status::ApiError;

fn to_scale(obj: &Value) -> Value {
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    let selector = obj
        .pointer("/spec/selector")
        .and_then(|s| LabelSelector::from_object(s).ok())
        .map(|s| s.to_string_form())
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.get("name"), "namespace": m.get("namespace"), "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"), "creationTimestamp": m.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {"replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0), "selector": selector},
    })
}

fn replicas_of(scale: &Value) -> Result<i64, ApiError> {
    match scale.pointer("/spec/replicas") {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v.as_i64().filter(|r| *r >= 0).ok_or_else(|| {
            ApiError::invalid(
                "Scale",
                "autoscaling",
                "",
                vec![(
                    "spec.replicas".into(),
                    "FieldValueInvalid",
                    format!("Invalid value: {v}: must be greater than or equal to 0"),
                )],
            )
        }),
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn scale(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    method: Method,
    headers: &HeaderMap,
    body: &Bytes,
    dry_run: bool,
) -> Result<Response, ApiError> {
    let updated = match method {
        Method::GET => objects::get(state, def, ns, name).await?,
        Method::PUT => {
            let s = negotiate::decode_object(body, negotiate::body_type(headers)?)?;
            let replicas = replicas_of(&s)?;
            let precondition = match s
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
            {
                Some(rv) if !rv.is_empty() => Some(objects::parse_rv(rv)?),
                _ => None,
            };
            objects::guaranteed_update(state, def, ns, name, precondition, dry_run, |cur| {
                let mut new = cur.clone();
                new["spec"]["replicas"] = json!(replicas);
                objects::prepare_update(def, cur, new, objects::Part::Main, false)
            })
            .await?
        }
        Method::PATCH => {
            let ty = negotiate::body_type(headers)?;
            let patch = crate::handlers::decode_patch(body, ty)?;
            objects::guaranteed_update(state, def, ns, name, None, dry_run, |cur| {
                let scaled = crate::patch::apply(ty, &to_scale(cur), &patch)?;
                crate::handlers::check_patched_rv(def, name, cur, &scaled)?;
                let mut new = cur.clone();
                new["spec"]["replicas"] = json!(replicas_of(&scaled)?);
                objects::prepare_update(def, cur, new, objects::Part::Main, false)
            })
            .await?
        }
        m => {
            return Err(ApiError::method_not_supported(
                &format!("{}/scale", def.plural),
                m.as_str(),
            ))
        }
    };
    Ok(negotiate::respond(
        StatusCode::OK,
        &to_scale(&updated),
        Format::Json,
    ))
}

fn success(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code})
}

/// `pods/<name>/binding`: the scheduler's way to place a pod, once.
pub async fn binding(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let b = negotiate::decode_object(body, negotiate::body_type(headers)?)?;
    let node = b
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "Binding",
                "",
                name,
                vec![(
                    "target.name".into(),
                    "FieldValueRequired",
                    "Required value".into(),
                )],
            )
        })?
        .to_string();
    objects::guaranteed_update(state, def, ns, name, None, false, |cur| {
        if let Some(existing) = cur.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict_message(def.plural, def.group, name, &format!("pod {name} is already assigned to node {existing:?}")));
        }
        if crate::meta::is_deleting(cur) {
            return Err(ApiError::conflict_message(def.plural, def.group, name, "pod is being deleted, cannot be assigned to a host"));
        }
        let mut new = cur.clone();
        new["spec"]["nodeName"] = json!(node);
        let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": crate::meta::now()});
        let conds = new["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let mut conds: Vec<Value> = conds.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
        conds.push(cond);
        new["status"]["conditions"] = json!(conds);
        // The binding writes spec and status together, bypassing the status split.
        Ok(new)
    })
    .await?;
    Ok(negotiate::respond(
        StatusCode::CREATED,
        &success(201),
        Format::Json,
    ))
}

/// `pods/<name>/eviction`: a delete that will respect disruption budgets once they exist.
pub async fn eviction(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let b = negotiate::decode_object(body, negotiate::body_type(headers)?)?;
    let opts = DeleteOpts {
        propagation: None,
        grace_period: b
            .pointer("/deleteOptions/gracePeriodSeconds")
            .and_then(Value::as_i64),
        precondition_uid: b
            .pointer("/deleteOptions/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from),
        precondition_rv: b
            .pointer("/deleteOptions/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from),
        dry_run: false,
    };
    objects::delete(state, def, ns, name, &opts).await?;
    Ok(negotiate::respond(
        StatusCode::CREATED,
        &success(201),
        Format::Json,
    ))
}
