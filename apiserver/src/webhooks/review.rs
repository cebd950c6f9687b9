//! The AdmissionReview a webhook is sent, and what its answer means: upstream's
//! `CreateAdmissionObjects`, `VerifyAdmissionResponse` and `ToStatusErr`.

use base64::Engine;
use serde_json::{json, Value};

use super::metrics::Outcome;
use super::{Matched, Request};
use crate::meta;
use crate::state::AppState;
use crate::status::ApiError;

pub(super) fn hook_name(hook: &Value) -> &str {
    hook.get("name").and_then(Value::as_str).unwrap_or("")
}

/// The AdmissionReview sent to `hook`.
pub(super) fn review(
    req: &Request<'_>,
    sub: &str,
    hook: &Matched,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Value {
    let name = obj
        .or(old)
        .and_then(|o| meta::meta_str(o, "name"))
        .unwrap_or("");
    review_named(req, sub, hook, name, obj, old)
}

/// The AdmissionReview for the object `name` (CONNECT's object, its options, has no name).
pub(super) fn review_named(
    req: &Request<'_>,
    sub: &str,
    hook: &Matched,
    name: &str,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Value {
    let d = req.def;
    let version = if hook
        .get("admissionReviewVersions")
        .and_then(Value::as_array)
        .is_some_and(|vs| vs.iter().any(|v| v == "v1"))
    {
        "v1"
    } else {
        "v1beta1"
    };
    // CONNECT's kind is its options' (PodExecOptions...), as upstream's connect handler says
    let kind = match super::connect::options_kind(req, sub) {
        Some(kind) => json!({"group": "", "version": "v1", "kind": kind}),
        None => json!({"group": d.group, "version": d.version, "kind": d.kind}),
    };
    let resource = json!({"group": d.group, "version": d.version, "resource": d.plural});
    // matched through an equivalent version: kind, resource and objects in that version
    let (request_kind, request_resource) = (kind.clone(), resource.clone());
    let (mut kind, mut resource) = (kind, resource);
    if let Some(v) = hook.as_version {
        kind["version"] = json!(v);
        resource["version"] = json!(v);
    }
    let obj = obj.map(|o| as_sent(req, hook, o));
    let old = old.map(|o| as_sent(req, hook, o));
    let user = crate::requester::current().map_or(
        json!({}),
        |u| json!({"username": u.name, "uid": u.uid, "groups": u.groups, "extra": u.extra}),
    );
    let mut options = match req.operation.options_kind() {
        Some(kind) => json!({"apiVersion": "meta.k8s.io/v1", "kind": kind}),
        None => Value::Null,
    };
    if req.dry_run {
        options["dryRun"] = json!(["All"]);
    }
    let mut r = json!({
        "uid": meta::new_uid(),
        "kind": kind, "resource": resource,
        "requestKind": request_kind, "requestResource": request_resource,
        "name": name,
        "operation": req.operation.as_str(),
        "userInfo": user,
        "object": obj.unwrap_or(Value::Null),
        "oldObject": old.unwrap_or(Value::Null),
        "dryRun": req.dry_run,
        "options": options,
    });
    if !sub.is_empty() {
        r["subResource"] = json!(sub);
        r["requestSubResource"] = json!(sub);
    }
    if let Some(ns) = req.ns.filter(|_| d.namespaced) {
        r["namespace"] = json!(ns);
    } else if d.group.is_empty() && d.plural == "namespaces" {
        // upstream's request attributes carry a namespace's own name as its namespace
        r["namespace"] = json!(name);
    }
    json!({
        "apiVersion": format!("admission.k8s.io/{version}"),
        "kind": "AdmissionReview",
        "request": r,
    })
}

/// `obj` as `hook` is sent it: in the version it matched through `Equivalent`, if any.
pub(super) fn as_sent(req: &Request<'_>, hook: &Matched, obj: &Value) -> Value {
    let mut o = obj.clone();
    if let (Some(v), Some(m)) = (hook.as_version, o.as_object_mut()) {
        m.insert("apiVersion".into(), json!(format!("{}/{v}", req.def.group)));
    }
    o
}

/// What a webhook answered.
pub(super) struct Answer {
    pub allowed: bool,
    pub status: Value,
    pub patch: Option<json_patch::Patch>,
}

/// Call `hook` and check its answer; `Err(text)` is a failed call (subject to the webhook's
/// `failurePolicy`).
pub(super) async fn ask(
    state: &AppState,
    hook: &Value,
    review: &Value,
    mutating: bool,
) -> Result<Answer, String> {
    let start = std::time::Instant::now();
    let answer = ask_inner(state, hook, review, mutating).await;
    let outcome = match &answer {
        Ok(a) if a.allowed => Outcome::Allowed,
        Ok(a) => Outcome::Denied(denied(hook, &a.status).code),
        Err(_) => Outcome::Failed(fails_closed(hook)),
    };
    let operation = review
        .pointer("/request/operation")
        .and_then(Value::as_str)
        .unwrap_or("");
    state.webhooks.metrics.observe(
        hook_name(hook),
        operation,
        mutating,
        outcome,
        start.elapsed().as_secs_f64(),
    );
    answer
}

async fn ask_inner(
    state: &AppState,
    hook: &Value,
    review: &Value,
    mutating: bool,
) -> Result<Answer, String> {
    let resp = super::client::call(state, hook, review).await?;
    let sent_av = review["apiVersion"].as_str().unwrap_or("");
    if resp.get("apiVersion").and_then(Value::as_str) != Some(sent_av)
        || resp.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err(format!(
            "received invalid webhook response: expected webhook response of {sent_av}, Kind=AdmissionReview, got {}, Kind={}",
            resp.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
            resp.get("kind").and_then(Value::as_str).unwrap_or("")
        ));
    }
    let r = resp
        .get("response")
        .filter(|r| r.is_object())
        .ok_or("received invalid webhook response: webhook response was absent")?;
    let want_uid = review
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    let uid = r.get("uid").and_then(Value::as_str).unwrap_or("");
    if uid != want_uid {
        return Err(format!(
            "received invalid webhook response: expected response.uid={want_uid:?}, got {uid:?}"
        ));
    }
    for w in r
        .get("warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        crate::warning::add(w);
    }
    let patch = match r
        .get("patch")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
    {
        None => None,
        Some(_) if !mutating => {
            return Err(
                "received invalid webhook response: validating webhooks may not return patches"
                    .into(),
            )
        }
        Some(b64) => {
            match r.get("patchType").and_then(Value::as_str) {
                Some("JSONPatch") => {}
                other => {
                    return Err(format!(
                        "received invalid webhook response: webhook returned response.patchType of {:?}; JSONPatch is the only supported type",
                        other.unwrap_or("")
                    ))
                }
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| {
                    format!("received invalid webhook response: decoding the patch: {e}")
                })?;
            Some(serde_json::from_slice(&bytes).map_err(|e| {
                format!("received invalid webhook response: decoding the patch: {e}")
            })?)
        }
    };
    Ok(Answer {
        allowed: r.get("allowed").and_then(Value::as_bool).unwrap_or(false),
        status: r.get("status").cloned().unwrap_or(Value::Null),
        patch,
    })
}

/// A failed call under `failurePolicy: Fail`: upstream's InternalError.
pub(super) fn call_failed(hook: &Value, err: &str) -> ApiError {
    ApiError::internal(format!(
        "Internal error occurred: failed calling webhook \"{}\": {err}",
        hook_name(hook)
    ))
}

pub(super) fn fails_closed(hook: &Value) -> bool {
    hook.get("failurePolicy").and_then(Value::as_str) != Some("Ignore")
}

/// Upstream's `ToStatusErr`: the webhook's status, at least a 400, with who denied it.
pub(super) fn denied(hook: &Value, status: &Value) -> ApiError {
    let by = format!(
        "admission webhook \"{}\" denied the request",
        hook_name(hook)
    );
    let s = |f: &str| status.get(f).and_then(Value::as_str).unwrap_or("");
    let message = match (s("message"), s("reason")) {
        ("", "") => format!("{by} without explanation"),
        ("", reason) => format!("{by}: {reason}"),
        (m, _) => format!("{by}: {m}"),
    };
    let code = status
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c >= 400 && *c < 600)
        .unwrap_or(400);
    ApiError {
        code,
        reason: known_reason(s("reason")),
        message,
        details: status.get("details").cloned().filter(|d| d.is_object()),
    }
}

/// `metav1.StatusReason`s kaze can name (`ApiError::reason` is static); others become "".
fn known_reason(r: &str) -> &'static str {
    const REASONS: &[&str] = &[
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "Gone",
        "Invalid",
        "ServerTimeout",
        "Timeout",
        "TooManyRequests",
        "BadRequest",
        "MethodNotAllowed",
        "NotAcceptable",
        "RequestEntityTooLarge",
        "UnsupportedMediaType",
        "InternalError",
        "Expired",
        "ServiceUnavailable",
    ];
    REASONS.iter().find(|x| **x == r).copied().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_carry_the_webhooks_status_and_name() {
        let hook = json!({"name": "deny.example.com"});
        let e = denied(
            &hook,
            &json!({"code": 403, "message": "no bad names", "reason": "Forbidden"}),
        );
        assert_eq!(e.code, 403);
        assert_eq!(e.reason, "Forbidden");
        assert_eq!(
            e.message,
            "admission webhook \"deny.example.com\" denied the request: no bad names"
        );
        let e = denied(&hook, &Value::Null);
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "admission webhook \"deny.example.com\" denied the request without explanation"
        );
        // a success code cannot come with a denial
        assert_eq!(denied(&hook, &json!({"code": 200})).code, 400);
    }
}
