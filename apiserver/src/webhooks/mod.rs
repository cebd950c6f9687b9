//! Dynamic admission: upstream's `MutatingAdmissionWebhook` and `ValidatingAdmissionWebhook`
//! plugins over `MutatingWebhookConfiguration`s and `ValidatingWebhookConfiguration`s
//! (admissionregistration.k8s.io/v1).
//!
//! The configurations are kept in memory from the watch cache ([`run`], `crate::follow`), so
//! a request costs no store read to find its webhooks. Mutating webhooks run on creates and
//! updates before the built-in validating admission and validation (configurations sorted
//! by name, webhooks in order, each JSONPatch applied before the next call;
//! `reinvocationPolicy: IfNeeded` webhooks are called once more when a later one changed the
//! object); validating webhooks run, in parallel, on the validated object right before it
//! is stored. Deletes send both kinds the old object. The configuration kinds themselves
//! are never sent to webhooks, so a broken webhook can always be removed; nor is the
//! apiserver's own work (no requester), nor the subresources upstream sends as other kinds
//! (`binding`, `eviction`, `scale`, `token`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use base64::Engine;
use serde_json::{json, Value};

use crate::follow::Follower;
use crate::meta;
use crate::registry::ResourceDef;
use crate::selector::LabelSelector;
use crate::state::AppState;
use crate::status::ApiError;

mod client;
pub mod config;
pub mod rules;

pub const GROUP: &str = "admissionregistration.k8s.io";
const MUTATING: &str = "mutatingwebhookconfigurations";
const VALIDATING: &str = "validatingwebhookconfigurations";

// === impl Index ===

/// One kind's configurations by name, as the store has them.
#[derive(Debug, Default)]
struct Configs {
    by_name: RwLock<BTreeMap<String, Arc<Value>>>,
    synced: AtomicBool,
}

/// The webhook configurations, kept in step with the store.
#[derive(Debug, Default)]
pub struct Index {
    mutating: Configs,
    validating: Configs,
}

struct Follow(Arc<AppState>, bool);

impl Follow {
    fn configs(&self) -> &Configs {
        if self.1 {
            &self.0.webhooks.mutating
        } else {
            &self.0.webhooks.validating
        }
    }
}

fn parse(value: &[u8]) -> Option<Arc<Value>> {
    serde_json::from_slice(value).ok().map(Arc::new)
}

impl Follower for Follow {
    fn reset(&self, items: Vec<(&str, &[u8])>) {
        let map = items
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), parse(v)?)))
            .collect();
        *self
            .configs()
            .by_name
            .write()
            .unwrap_or_else(|e| e.into_inner()) = map;
    }

    fn apply(&self, key: &str, value: Option<&[u8]>) {
        let mut m = self
            .configs()
            .by_name
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match value.and_then(parse) {
            Some(v) => m.insert(key.to_string(), v),
            None => m.remove(key),
        };
    }

    fn set_synced(&self, synced: bool) {
        self.configs().synced.store(synced, Ordering::Release);
    }
}

/// Keep `state.webhooks` in step with the store until shutdown.
pub async fn run(state: Arc<AppState>) {
    tokio::join!(
        crate::follow::run(
            state.clone(),
            (GROUP, "v1", MUTATING),
            Follow(state.clone(), true)
        ),
        crate::follow::run(
            state.clone(),
            (GROUP, "v1", VALIDATING),
            Follow(state.clone(), false)
        ),
    );
}

/// Every configuration of one kind sorted by name: from memory, or from the store while the
/// index does not follow it (before its first list).
async fn configurations(state: &AppState, mutating: bool) -> Result<Vec<Arc<Value>>, ApiError> {
    let configs = if mutating {
        &state.webhooks.mutating
    } else {
        &state.webhooks.validating
    };
    if configs.synced.load(Ordering::Acquire) {
        let m = configs.by_name.read().unwrap_or_else(|e| e.into_inner());
        return Ok(m.values().cloned().collect());
    }
    let plural = if mutating { MUTATING } else { VALIDATING };
    let def = state
        .registry
        .get(GROUP, "v1", plural)
        .expect("webhook configurations are built in");
    let mut items = crate::list::list(state, def, None, &Default::default())
        .await?
        .items;
    items.sort_by(|a, b| meta::meta_str(a, "name").cmp(&meta::meta_str(b, "name")));
    Ok(items.into_iter().map(Arc::new).collect())
}

// === the request being admitted ===

tokio::task_local! {
    /// The subresource the request being handled names (`""`: none).
    static SUBRESOURCE: &'static str;
}

/// Handle a request for `subresource` of its resource.
pub async fn with_subresource<F: Future>(subresource: Option<&'static str>, f: F) -> F::Output {
    SUBRESOURCE.scope(subresource.unwrap_or(""), f).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }

    fn options_kind(self) -> &'static str {
        match self {
            Operation::Create => "CreateOptions",
            Operation::Update => "UpdateOptions",
            Operation::Delete => "DeleteOptions",
        }
    }
}

/// One admission request.
pub struct Request<'a> {
    pub def: &'a ResourceDef,
    pub ns: Option<&'a str>,
    pub operation: Operation,
    pub dry_run: bool,
}

/// Whether requests of this kind go to webhooks at all, and for which subresource.
fn admitted(def: &ResourceDef) -> Option<&'static str> {
    let sub = SUBRESOURCE.try_with(|s| *s).unwrap_or("");
    let excluded = def.group == GROUP
        || def.review.is_some()
        || matches!(sub, "binding" | "eviction" | "scale" | "token")
        || crate::requester::current().is_none();
    (!excluded).then_some(sub)
}

/// The webhooks of one kind that select the request, with the name of their configuration,
/// in calling order.
async fn matching(
    state: &AppState,
    req: &Request<'_>,
    sub: &str,
    mutating: bool,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Result<Vec<Value>, ApiError> {
    let configs = configurations(state, mutating).await?;
    if configs.is_empty() {
        return Ok(Vec::new());
    }
    let attrs = rules::Attrs {
        operation: req.operation.as_str(),
        group: req.def.group,
        version: req.def.version,
        resource: req.def.plural,
        subresource: sub,
        namespaced: req.def.namespaced,
    };
    let mut ns_labels: Option<Value> = None;
    let mut out = Vec::new();
    for c in configs {
        for hook in c
            .get("webhooks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !rules::hook_matches(hook, &attrs) {
                continue;
            }
            if !selector(hook, "objectSelector")
                .is_none_or(|s| [obj, old].into_iter().flatten().any(|o| s.matches(o)))
            {
                continue;
            }
            if let Some(s) = selector(hook, "namespaceSelector") {
                let is_namespace = req.def.group.is_empty() && req.def.plural == "namespaces";
                let target = if is_namespace {
                    obj.or(old).cloned()
                } else if let Some(ns) = req.ns.filter(|_| req.def.namespaced) {
                    if ns_labels.is_none() {
                        ns_labels = Some(namespace(state, ns).await?);
                    }
                    ns_labels.clone()
                } else {
                    // cluster-scoped objects other than namespaces: the selector does not apply
                    None
                };
                if target.is_some_and(|t| !s.matches(&t)) {
                    continue;
                }
            }
            out.push(hook.clone());
        }
    }
    Ok(out)
}

/// A webhook's label selector; `None` when it selects everything.
fn selector(hook: &Value, field: &str) -> Option<LabelSelector> {
    hook.get(field)
        .and_then(|s| LabelSelector::from_object(s).ok())
        .filter(|s| !s.is_empty())
}

async fn namespace(state: &AppState, ns: &str) -> Result<Value, ApiError> {
    let def = state
        .registry
        .get("", "v1", "namespaces")
        .expect("namespaces are built in");
    match crate::objects::get(state, def, None, ns).await {
        Ok(v) => Ok(v),
        // upstream: a namespace that does not exist (yet) has no labels
        Err(e) if e.code == 404 => Ok(json!({"metadata": {"name": ns}})),
        Err(e) => Err(e),
    }
}

fn hook_name(hook: &Value) -> &str {
    hook.get("name").and_then(Value::as_str).unwrap_or("")
}

/// The AdmissionReview sent to `hook`.
fn review(
    req: &Request<'_>,
    sub: &str,
    hook: &Value,
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
    let name = obj
        .or(old)
        .and_then(|o| meta::meta_str(o, "name"))
        .unwrap_or("");
    let kind = json!({"group": d.group, "version": d.version, "kind": d.kind});
    let resource = json!({"group": d.group, "version": d.version, "resource": d.plural});
    let user = crate::requester::current().map_or(
        json!({}),
        |u| json!({"username": u.name, "uid": u.uid, "groups": u.groups, "extra": u.extra}),
    );
    let mut options = json!({"apiVersion": "meta.k8s.io/v1", "kind": req.operation.options_kind()});
    if req.dry_run {
        options["dryRun"] = json!(["All"]);
    }
    let mut r = json!({
        "uid": meta::new_uid(),
        "kind": kind, "resource": resource,
        "requestKind": kind, "requestResource": resource,
        "name": name,
        "operation": req.operation.as_str(),
        "userInfo": user,
        "object": obj.cloned().unwrap_or(Value::Null),
        "oldObject": old.cloned().unwrap_or(Value::Null),
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

/// What a webhook answered.
struct Answer {
    allowed: bool,
    status: Value,
    patch: Option<json_patch::Patch>,
}

/// Call `hook` and check its answer; `Err(text)` is a failed call (subject to the webhook's
/// `failurePolicy`).
async fn ask(
    state: &AppState,
    hook: &Value,
    review: &Value,
    mutating: bool,
) -> Result<Answer, String> {
    let resp = client::call(state, hook, review).await?;
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
fn call_failed(hook: &Value, err: &str) -> ApiError {
    ApiError::internal(format!(
        "Internal error occurred: failed calling webhook \"{}\": {err}",
        hook_name(hook)
    ))
}

fn fails_closed(hook: &Value) -> bool {
    hook.get("failurePolicy").and_then(Value::as_str) != Some("Ignore")
}

/// Upstream's `ToStatusErr`: the webhook's status, at least a 400, with who denied it.
fn denied(hook: &Value, status: &Value) -> ApiError {
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

/// Upstream refuses a dry run that would reach a webhook with side effects.
fn check_dry_run(req: &Request<'_>, hook: &Value) -> Result<(), ApiError> {
    let side_effects = hook
        .get("sideEffects")
        .and_then(Value::as_str)
        .unwrap_or("");
    if req.dry_run && !matches!(side_effects, "None" | "NoneOnDryRun") {
        return Err(ApiError::bad_request(format!(
            "admission webhook \"{}\" does not support dry run",
            hook_name(hook)
        )));
    }
    Ok(())
}

/// Metadata a webhook may not change: the server's, and an existing object's identity.
const SERVER_OWNED: &[&str] = &[
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "resourceVersion",
    "namespace",
];

fn restore_server_fields(before: &Value, obj: &mut Value, keep_name: bool) {
    let was = before.get("metadata").cloned().unwrap_or(json!({}));
    let m = meta::metadata_mut(obj);
    let name = keep_name.then_some("name");
    for f in SERVER_OWNED.iter().copied().chain(name) {
        match was.get(f) {
            Some(v) => m.insert(f.into(), v.clone()),
            None => m.remove(f),
        };
    }
}

/// Run the mutating webhooks on `obj` (a create or an update of `old`). Returns whether any
/// of them changed it; the caller validates it again then.
pub async fn mutate(
    state: &AppState,
    req: &Request<'_>,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<bool, ApiError> {
    // boxed: the create and update paths' futures stay small (debug builds overflow the
    // worker's stack otherwise)
    Box::pin(mutate_inner(state, req, obj, old)).await
}

async fn mutate_inner(
    state: &AppState,
    req: &Request<'_>,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<bool, ApiError> {
    let Some(sub) = admitted(req.def) else {
        return Ok(false);
    };
    let hooks = matching(state, req, sub, true, Some(obj), old).await?;
    if hooks.is_empty() {
        return Ok(false);
    }
    let original = obj.clone();
    // (index of the hook, the object as it was when the hook was last called)
    let mut called: Vec<(usize, Value)> = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        if call_mutating(state, req, sub, hook, obj, old).await? {
            called.push((i, obj.clone()));
        }
    }
    // reinvocationPolicy IfNeeded: once more for those that saw an object changed after them
    let again: Vec<usize> = called
        .iter()
        .filter(|(i, seen)| {
            hooks[*i].get("reinvocationPolicy").and_then(Value::as_str) == Some("IfNeeded")
                && seen != obj
        })
        .map(|(i, _)| *i)
        .collect();
    for i in again {
        call_mutating(state, req, sub, &hooks[i], obj, old).await?;
    }
    restore_server_fields(&original, obj, old.is_some());
    Ok(*obj != original)
}

/// Call one mutating webhook and apply its patch. Returns whether it was called (a failure
/// it ignores counts as not called).
async fn call_mutating(
    state: &AppState,
    req: &Request<'_>,
    sub: &str,
    hook: &Value,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<bool, ApiError> {
    check_dry_run(req, hook)?;
    let review = review(req, sub, hook, Some(obj), old);
    let answer = match ask(state, hook, &review, true).await {
        Ok(a) => a,
        Err(e) if fails_closed(hook) => return Err(call_failed(hook, &e)),
        Err(e) => {
            tracing::warn!(webhook = hook_name(hook), error = %e, "failed calling webhook, failing open");
            return Ok(false);
        }
    };
    if !answer.allowed {
        return Err(denied(hook, &answer.status));
    }
    if let Some(patch) = answer.patch {
        let mut patched = obj.clone();
        json_patch::patch(&mut patched, &patch).map_err(|e| {
            ApiError::internal(format!(
                "Internal error occurred: applying the patch of admission webhook \"{}\": {e}",
                hook_name(hook)
            ))
        })?;
        for f in ["apiVersion", "kind"] {
            if patched.get(f) != obj.get(f) {
                return Err(ApiError::internal(format!(
                    "Internal error occurred: admission webhook \"{}\" changed the object's {f}",
                    hook_name(hook)
                )));
            }
        }
        if !patched.get("metadata").is_some_and(Value::is_object) {
            return Err(ApiError::internal(format!(
                "Internal error occurred: admission webhook \"{}\" removed the object's metadata",
                hook_name(hook)
            )));
        }
        *obj = patched;
    }
    Ok(true)
}

/// Run the validating webhooks (in parallel) on `obj` (`None` for deletes) and `old`.
pub async fn validate(
    state: &AppState,
    req: &Request<'_>,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    Box::pin(validate_inner(state, req, obj, old)).await
}

async fn validate_inner(
    state: &AppState,
    req: &Request<'_>,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(sub) = admitted(req.def) else {
        return Ok(());
    };
    let hooks = matching(state, req, sub, false, obj, old).await?;
    for hook in &hooks {
        check_dry_run(req, hook)?;
    }
    let answers = futures::future::join_all(hooks.iter().map(|hook| async move {
        let review = review(req, sub, hook, obj, old);
        (hook, ask(state, hook, &review, false).await)
    }))
    .await;
    for (hook, answer) in answers {
        match answer {
            Ok(a) if a.allowed => {}
            Ok(a) => return Err(denied(hook, &a.status)),
            Err(e) if fails_closed(hook) => return Err(call_failed(hook, &e)),
            Err(e) => {
                tracing::warn!(webhook = hook_name(hook), error = %e, "failed calling webhook, failing open")
            }
        }
    }
    Ok(())
}

/// A delete: both kinds of webhooks see the object being deleted as `oldObject` (mutating
/// webhooks cannot change anything here).
pub async fn admit_delete(
    state: &AppState,
    req: &Request<'_>,
    old: &Value,
) -> Result<(), ApiError> {
    Box::pin(admit_delete_inner(state, req, old)).await
}

async fn admit_delete_inner(
    state: &AppState,
    req: &Request<'_>,
    old: &Value,
) -> Result<(), ApiError> {
    let Some(sub) = admitted(req.def) else {
        return Ok(());
    };
    let hooks = matching(state, req, sub, true, None, Some(old)).await?;
    for hook in &hooks {
        check_dry_run(req, hook)?;
        let review = review(req, sub, hook, None, Some(old));
        match ask(state, hook, &review, true).await {
            Ok(a) if a.allowed => {}
            Ok(a) => return Err(denied(hook, &a.status)),
            Err(e) if fails_closed(hook) => return Err(call_failed(hook, &e)),
            Err(e) => {
                tracing::warn!(webhook = hook_name(hook), error = %e, "failed calling webhook, failing open")
            }
        }
    }
    validate_inner(state, req, None, Some(old)).await
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

    #[test]
    fn webhooks_cannot_change_what_the_server_owns() {
        let before = json!({"metadata": {"name": "a", "uid": "u1", "namespace": "n"}});
        let mut after = json!({"metadata": {"name": "b", "uid": "u2", "labels": {"x": "y"}}});
        restore_server_fields(&before, &mut after, true);
        assert_eq!(
            after,
            json!({"metadata": {"name": "a", "uid": "u1", "namespace": "n", "labels": {"x": "y"}}})
        );
    }
}
