//! Subresources with their own shapes: `scale` (autoscaling/v1 Scale), pods' `binding` and
//! `eviction`. (`status` and `finalize` are partial updates handled in [`crate::objects`].)

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::meta;
use crate::negotiate::{self, Format};
use crate::objects::{self, DeleteOpts};
use crate::registry::ResourceDef;
use crate::selector::LabelSelector;
use crate::state::AppState;
use crate::status::ApiError;

/// Where a kind keeps its replicas: `/spec/replicas` and `/status/replicas`, or what a
/// CRD's scale subresource says (`crate::crd`).
fn replica_paths(def: &ResourceDef) -> (String, String) {
    match def.custom.as_ref().and_then(|c| c.scale.as_ref()) {
        Some(s) => (
            crate::crd::pointer(&s.spec_replicas),
            crate::crd::pointer(&s.status_replicas),
        ),
        None => ("/spec/replicas".into(), "/status/replicas".into()),
    }
}

/// `obj` with `replicas` at `pointer` (intermediate objects created).
fn set_replicas(mut obj: Value, pointer: &str, replicas: i64) -> Value {
    let mut cur = &mut obj;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        if i + 1 == parts.len() {
            cur[*p] = json!(replicas);
            break;
        }
        cur = cur
            .as_object_mut()
            .expect("an object")
            .entry(p.to_string())
            .or_insert_with(|| json!({}));
    }
    obj
}

fn to_scale(def: &ResourceDef, obj: &Value) -> Value {
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    let (spec_path, status_path) = replica_paths(def);
    let selector = match def.custom.as_ref().and_then(|c| c.scale.as_ref()) {
        // a CRD's labelSelectorPath holds the selector in string form
        Some(s) => s
            .label_selector
            .as_ref()
            .and_then(|p| obj.pointer(&crate::crd::pointer(p)))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        None => obj
            .pointer("/spec/selector")
            .and_then(|s| LabelSelector::from_object(s).ok())
            .map(|s| s.to_string_form())
            .unwrap_or_default(),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.get("name"), "namespace": m.get("namespace"), "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"), "creationTimestamp": m.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer(&spec_path).and_then(Value::as_i64).unwrap_or(0)},
        "status": {"replicas": obj.pointer(&status_path).and_then(Value::as_i64).unwrap_or(0), "selector": selector},
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
    writer: &crate::managedfields::Writer,
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
                let new = set_replicas(cur.clone(), &replica_paths(def).0, replicas);
                let mut out = objects::prepare_update(def, cur, new, objects::Part::Main, false)?;
                crate::managedfields::on_update(def, cur, &mut out, writer);
                Ok(out)
            })
            .await?
        }
        Method::PATCH => {
            let ty = negotiate::body_type(headers)?;
            let patch = crate::handlers::decode_patch(body, ty)?;
            objects::guaranteed_update(state, def, ns, name, None, dry_run, |cur| {
                let scaled = crate::patch::apply(ty, &to_scale(def, cur), &patch)?;
                crate::handlers::check_patched_rv(def, name, cur, &scaled)?;
                let new = set_replicas(cur.clone(), &replica_paths(def).0, replicas_of(&scaled)?);
                let mut out = objects::prepare_update(def, cur, new, objects::Part::Main, false)?;
                crate::managedfields::on_update(def, cur, &mut out, writer);
                Ok(out)
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
        &to_scale(def, &updated),
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

/// `pods/<name>/eviction` (with `?dryRun=All` as upstream's create options, or
/// `deleteOptions.dryRun`): a delete that respects the pod's PodDisruptionBudget, as upstream's:
/// pods already being deleted, finished or still Pending go at once; otherwise the one budget
/// selecting the pod (more than one is a 500, as upstream) must allow a disruption, which the
/// eviction consumes (`disruptionsAllowed - 1`, the pod recorded in `disruptedPods`, written
/// with the budget's resourceVersion so concurrent evictions cannot both spend the last one)
/// before the pod is deleted; when it allows none the answer is 429 TooManyRequests, which
/// `kubectl drain` retries. A pod that is not Ready goes without consuming the budget when
/// the budget says so (`unhealthyPodEvictionPolicy: AlwaysAllow`, or the default
/// `IfHealthyBudget` with enough healthy pods).
pub async fn eviction(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    dry_run_query: bool,
) -> Result<Response, ApiError> {
    let b = negotiate::decode_object(body, negotiate::body_type(headers)?)?;
    if let Some(named) = b.pointer("/metadata/name").and_then(Value::as_str) {
        if !named.is_empty() && named != name {
            return Err(ApiError::bad_request(
                "name in URL does not match name in Eviction object",
            ));
        }
    }
    // `?dryRun=All` (the eviction's create options) or the delete options' own
    let dry_run = dry_run_query
        || b.pointer("/deleteOptions/dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    let mut opts = DeleteOpts {
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
        dry_run,
    };
    let pod = objects::get(state, def, ns, name).await?;
    if !budgets_ignore(&pod) {
        if let Budget::SkippedUnhealthy = consume_budget(state, ns, name, &pod, dry_run).await? {
            // the pod must still be the unready one the budget let go
            if opts.precondition_rv.is_none() {
                opts.precondition_rv = meta::meta_str(&pod, "resourceVersion").map(String::from);
            }
        }
    }
    objects::delete(state, def, ns, name, &opts).await?;
    Ok(negotiate::respond(
        StatusCode::CREATED,
        &success(201),
        Format::Json,
    ))
}

/// Pods no budget protects (upstream's `canIgnorePDB`): already being deleted, finished, or
/// not yet running.
fn budgets_ignore(pod: &Value) -> bool {
    meta::is_deleting(pod)
        || matches!(
            pod.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed" | "Pending")
        )
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// How an eviction stood with the pod's budget.
enum Budget {
    /// No budget selects the pod, or one allowed the disruption and recorded it.
    Spent,
    /// The pod is not Ready and its budget lets such pods go without counting them.
    SkippedUnhealthy,
}

/// The most evictions a budget may have recorded and the controller not yet confirmed.
const MAX_DISRUPTED_PODS: usize = 2000;

async fn consume_budget(
    state: &AppState,
    ns: Option<&str>,
    name: &str,
    pod: &Value,
    dry_run: bool,
) -> Result<Budget, ApiError> {
    let pdb_def = state
        .registry
        .get("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(|| ApiError::internal("poddisruptionbudgets are not served"))?
        .clone();
    let budgets = crate::list::list(state, &pdb_def, ns, &Default::default())
        .await?
        .items;
    // policy/v1: an empty selector selects every pod of the namespace, none selects none
    let selecting: Vec<&Value> = budgets
        .iter()
        .filter(|b| {
            b.pointer("/spec/selector")
                .filter(|s| !s.is_null())
                .and_then(|s| LabelSelector::from_object(s).ok())
                .is_some_and(|sel| sel.matches(pod))
        })
        .collect();
    let pdb = match selecting.as_slice() {
        [] => return Ok(Budget::Spent),
        [one] => *one,
        _ => {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ))
        }
    };
    let status_n = |b: &Value, f: &str| {
        b.pointer(&format!("/status/{f}"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    if !is_ready(pod) {
        let policy = pdb
            .pointer("/spec/unhealthyPodEvictionPolicy")
            .and_then(Value::as_str)
            .unwrap_or("IfHealthyBudget");
        let healthy_budget = status_n(pdb, "currentHealthy") >= status_n(pdb, "desiredHealthy")
            && status_n(pdb, "desiredHealthy") > 0;
        if policy == "AlwaysAllow" || healthy_budget {
            return Ok(Budget::SkippedUnhealthy);
        }
    }
    let pdb_name = meta::meta_str(pdb, "name").unwrap_or("").to_string();
    let now = meta::now();
    objects::guaranteed_update(state, &pdb_def, ns, &pdb_name, None, dry_run, |cur| {
        let generation = cur.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
        let observed = cur
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if observed < generation {
            return Err(ApiError::too_many_requests(
                "Cannot evict pod as it would violate the pod's disruption budget.",
                vec![(
                    "DisruptionBudget",
                    format!("The disruption budget {pdb_name} is still being processed by the server."),
                )],
            ));
        }
        let allowed = status_n(cur, "disruptionsAllowed");
        if allowed < 0 {
            return Err(ApiError::forbidden(
                "pods",
                "",
                name,
                "pdb disruptions allowed is negative",
            ));
        }
        let disrupted = cur
            .pointer("/status/disruptedPods")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len());
        if disrupted > MAX_DISRUPTED_PODS {
            return Err(ApiError::forbidden(
                "pods",
                "",
                name,
                "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
            ));
        }
        if allowed == 0 {
            return Err(ApiError::too_many_requests(
                "Cannot evict pod as it would violate the pod's disruption budget.",
                vec![(
                    "DisruptionBudget",
                    format!(
                        "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                        status_n(cur, "desiredHealthy"),
                        status_n(cur, "currentHealthy")
                    ),
                )],
            ));
        }
        let mut new = cur.clone();
        new["status"]["disruptionsAllowed"] = json!(allowed - 1);
        if !new["status"]["disruptedPods"].is_object() {
            new["status"]["disruptedPods"] = json!({});
        }
        new["status"]["disruptedPods"][name] = json!(now);
        if allowed == 1 {
            // upstream flips the condition at once rather than waiting for the controller
            if let Some(conds) = new["status"]["conditions"].as_array_mut() {
                for c in conds.iter_mut().filter(|c| c["type"] == "DisruptionAllowed") {
                    if c["status"] != "False" {
                        c["status"] = json!("False");
                        c["reason"] = json!("InsufficientPods");
                        c["lastTransitionTime"] = json!(now);
                    }
                }
            }
        }
        Ok(new)
    })
    .await?;
    Ok(Budget::Spent)
}
