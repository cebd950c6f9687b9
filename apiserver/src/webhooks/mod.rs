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
//! (`binding`, `eviction`, `scale`, `token`). A webhook's `matchConditions` (CEL,
//! [`conditions`]) are evaluated after its rules and selectors matched: all must be true; an
//! error fails the request or skips the webhook as its `failurePolicy` says.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::{json, Value};

use crate::follow::Follower;
use crate::meta;
use crate::registry::ResourceDef;
use crate::selector::LabelSelector;
use crate::state::AppState;
use crate::status::ApiError;

mod client;
pub mod conditions;
pub mod config;
mod connect;
mod metrics;
pub mod mutating_policy;
pub mod policy;
mod review;
pub mod rules;

pub use connect::admit_connect;
use review::{ask, call_failed, denied, fails_closed, hook_name, review};

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
    /// ValidatingAdmissionPolicies and their bindings ([`policy`]).
    policies: Configs,
    bindings: Configs,
    /// MutatingAdmissionPolicies and their bindings ([`mutating_policy`]).
    mutating_policies: Configs,
    mutating_bindings: Configs,
    /// Connections to webhooks kept for the next call.
    pool: crate::backend::Pool,
    metrics: metrics::Metrics,
}

impl Index {
    /// The webhook metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    /// Known to hold no configuration of this kind nor policy binding of its phase:
    /// requests skip webhook admission at once.
    fn known_empty(&self, mutating: bool) -> bool {
        let empty = |c: &Configs| {
            c.synced.load(Ordering::Acquire)
                && c.by_name
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
        };
        if mutating {
            empty(&self.mutating) && empty(&self.mutating_bindings)
        } else {
            empty(&self.validating) && empty(&self.bindings)
        }
    }
}

struct Follow(Arc<AppState>, &'static str);

impl Follow {
    fn configs(&self) -> &Configs {
        self.0.webhooks.configs(self.1)
    }
}

impl Index {
    /// The configurations of one resource (`plural`).
    fn configs(&self, plural: &str) -> &Configs {
        match plural {
            MUTATING => &self.mutating,
            VALIDATING => &self.validating,
            policy::POLICIES => &self.policies,
            mutating_policy::POLICIES => &self.mutating_policies,
            mutating_policy::BINDINGS => &self.mutating_bindings,
            _ => &self.bindings,
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
    let follow = |plural: &'static str| {
        crate::follow::run(
            state.clone(),
            (GROUP, "v1", plural),
            Follow(state.clone(), plural),
        )
    };
    tokio::join!(
        follow(MUTATING),
        follow(VALIDATING),
        follow(policy::POLICIES),
        follow(policy::BINDINGS),
        follow(mutating_policy::POLICIES),
        follow(mutating_policy::BINDINGS),
    );
}

/// Every configuration of one kind sorted by name: from memory, or from the store while the
/// index does not follow it (before its first list).
async fn configurations(state: &AppState, mutating: bool) -> Result<Vec<Arc<Value>>, ApiError> {
    configurations_of(state, if mutating { MUTATING } else { VALIDATING }).await
}

/// Every object of `plural` (a configuration kind of this group) sorted by name.
async fn configurations_of(
    state: &AppState,
    plural: &'static str,
) -> Result<Vec<Arc<Value>>, ApiError> {
    let configs = state.webhooks.configs(plural);
    if configs.synced.load(Ordering::Acquire) {
        let m = configs.by_name.read().unwrap_or_else(|e| e.into_inner());
        return Ok(m.values().cloned().collect());
    }
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
    /// exec, attach, port-forward ([`admit_connect`]).
    Connect,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }

    /// The kind of the request's `options` (none for CONNECT, as upstream).
    fn options_kind(self) -> Option<&'static str> {
        match self {
            Operation::Create => Some("CreateOptions"),
            Operation::Update => Some("UpdateOptions"),
            Operation::Delete => Some("DeleteOptions"),
            Operation::Connect => None,
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

impl<'a> Request<'a> {
    /// What rules match against: this request on subresource `sub`.
    pub fn attrs(&self, sub: &'a str) -> rules::Attrs<'a> {
        rules::Attrs {
            operation: self.operation.as_str(),
            group: self.def.group,
            version: self.def.version,
            resource: self.def.plural,
            subresource: sub,
            namespaced: self.def.namespaced,
        }
    }
}

/// The CEL `authorizer` of a request: checks as its user, answered as the apiserver
/// authorizes requests (the Node authorizer, then RBAC).
pub(super) fn authorizer(
    state: &AppState,
    req: &Request<'_>,
    sub: &str,
    name: &str,
) -> Option<crate::cel::authz::Authz> {
    let user = crate::requester::current()?;
    let rbac = state.rbac.clone();
    Some(crate::cel::authz::Authz::new(
        user,
        std::sync::Arc::new(
            move |u: &crate::auth::UserInfo, a: &crate::rbac::Attributes| {
                crate::nodeauth::authorize_with(&rbac, u, a)
            },
        ),
        crate::cel::authz::RequestResource {
            group: req.def.group.to_string(),
            resource: req.def.plural.to_string(),
            subresource: sub.to_string(),
            namespace: req
                .ns
                .filter(|_| req.def.namespaced)
                .unwrap_or("")
                .to_string(),
            name: name.to_string(),
        },
    ))
}

/// Whether requests of this kind go to webhooks at all, and for which subresource.
fn admitted(state: &AppState, def: &ResourceDef, mutating: &[bool]) -> Option<&'static str> {
    if mutating.iter().all(|m| state.webhooks.known_empty(*m)) {
        return None;
    }
    let sub = SUBRESOURCE.try_with(|s| *s).unwrap_or("");
    let excluded = def.group == GROUP
        || def.review.is_some()
        || matches!(sub, "binding" | "eviction" | "scale" | "token")
        || crate::requester::current().is_none();
    (!excluded).then_some(sub)
}

/// A webhook that selects a request. `as_version`: selected through `matchPolicy:
/// Equivalent` by a rule naming another served version of the resource (a custom resource's),
/// which the object is sent as (kaze's custom resources convert by their `apiVersion` alone).
pub(super) struct Matched {
    hook: Value,
    as_version: Option<&'static str>,
}

impl std::ops::Deref for Matched {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.hook
    }
}

/// The served version of the request's resource a rule that matched it only through
/// `Equivalent` names; `None` when there is none (then the webhook does not apply).
fn equivalent_version(
    state: &AppState,
    hook: &Value,
    attrs: &rules::Attrs<'_>,
) -> Option<&'static str> {
    let served = state.crds.snapshot();
    rules::equivalent_versions(hook, attrs)
        .into_iter()
        .filter(|v| *v != "*")
        .find_map(|v| {
            served
                .registry
                .get(attrs.group, v, attrs.resource)
                .map(|d| d.version)
        })
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
) -> Result<Vec<Matched>, ApiError> {
    let configs = configurations(state, mutating).await?;
    if configs.is_empty() {
        return Ok(Vec::new());
    }
    let attrs = req.attrs(sub);
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
            let as_version = if rules::matches_exactly(hook, &attrs) {
                None
            } else {
                match equivalent_version(state, hook, &attrs) {
                    Some(v) => Some(v),
                    None => continue,
                }
            };
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
            let matched = Matched {
                hook: hook.clone(),
                as_version,
            };
            if hook.get("matchConditions").is_some_and(|c| !c.is_null()) {
                let review = review(req, sub, &matched, obj, old);
                let name = obj.or(old).and_then(|o| crate::meta::meta_str(o, "name"));
                let authz = authorizer(state, req, sub, name.unwrap_or(""));
                let inputs = conditions::Inputs {
                    object: obj,
                    old,
                    request: &review["request"],
                    params: None,
                    namespace: None,
                    authorizer: authz.as_ref(),
                };
                let conds = hook.get("matchConditions");
                match conditions::evaluate(conds, conditions::WEBHOOK_VARS, &inputs) {
                    conditions::Verdict::Match => {}
                    conditions::Verdict::NoMatch => continue,
                    conditions::Verdict::Error(e) if fails_closed(hook) => {
                        return Err(call_failed(hook, &e));
                    }
                    conditions::Verdict::Error(e) => {
                        tracing::warn!(webhook = hook_name(hook), error = %e, "failed evaluating match conditions, failing open");
                        continue;
                    }
                }
            }
            out.push(matched);
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

/// The namespace `ns` for its labels: from the watch cache, from the store when the cache
/// does not have it (yet).
async fn namespace(state: &AppState, ns: &str) -> Result<Value, ApiError> {
    let def = state
        .registry
        .get("", "v1", "namespaces")
        .expect("namespaces are built in");
    let by_name = format!("metadata.name={ns}");
    if let Some(found) = crate::backend::cached(state, def, None, (&by_name, ""))
        .await?
        .into_iter()
        .next()
    {
        return Ok(found);
    }
    match crate::objects::get(state, def, None, ns).await {
        Ok(v) => Ok(v),
        // upstream: a namespace that does not exist (yet) has no labels
        Err(e) if e.code == 404 => Ok(json!({"metadata": {"name": ns}})),
        Err(e) => Err(e),
    }
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
    let Some(sub) = admitted(state, req.def, &[true]) else {
        return Ok(false);
    };
    let original = obj.clone();
    // MutatingAdmissionPolicy runs before MutatingAdmissionWebhook, as upstream's order
    let invoked = mutating_policy::admit(state, req, sub, obj, old, None).await?;
    let hooks = matching(state, req, sub, true, Some(obj), old).await?;
    if hooks.is_empty() && *obj == original {
        return Ok(false);
    }
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
    // and the IfNeeded policies that saw an object a later policy or a webhook changed
    let again: Vec<String> = invoked
        .into_iter()
        .filter(|(_, seen)| seen != obj)
        .map(|(key, _)| key)
        .collect();
    if !again.is_empty() {
        mutating_policy::admit(state, req, sub, obj, old, Some(&again)).await?;
    }
    restore_server_fields(&original, obj, old.is_some());
    if *obj == original {
        return Ok(false);
    }
    // upstream decodes a patched object with the scheme's defaulting: an injected sidecar
    // gets its imagePullPolicy, terminationMessagePath... as one the client sent
    crate::kinds::default_object(req.def, obj);
    Ok(true)
}

/// Call one mutating webhook and apply its patch. Returns whether it was called (a failure
/// it ignores counts as not called).
async fn call_mutating(
    state: &AppState,
    req: &Request<'_>,
    sub: &str,
    hook: &Matched,
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
        // the patch is against the object as it was sent
        let sent = review::as_sent(req, hook, obj);
        let mut patched = sent.clone();
        json_patch::patch(&mut patched, &patch).map_err(|e| {
            ApiError::internal(format!(
                "Internal error occurred: applying the patch of admission webhook \"{}\": {e}",
                hook_name(hook)
            ))
        })?;
        for f in ["apiVersion", "kind"] {
            if patched.get(f) != sent.get(f) {
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
        if let Some(av) = obj.get("apiVersion") {
            patched["apiVersion"] = av.clone();
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
    let Some(sub) = admitted(state, req.def, &[false]) else {
        return Ok(());
    };
    // ValidatingAdmissionPolicy runs before ValidatingAdmissionWebhook, as upstream's order
    policy::admit(state, req, sub, obj, old).await?;
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
    let Some(sub) = admitted(state, req.def, &[true, false]) else {
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
