//! ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding
//! (admissionregistration.k8s.io/v1): in-process validation with CEL, as upstream's
//! `ValidatingAdmissionPolicy` admission plugin.
//!
//! Both kinds are kept in memory from the watch cache beside the webhook configurations
//! ([`super::Index`]). In the validating phase, before the validating webhooks, every
//! binding whose policy exists is tried: the policy's `matchConstraints` and the binding's
//! `matchResources` (rules with `resourceNames`, `excludeResourceRules`, namespace and object
//! selectors — the webhooks' matching code), `paramRef` (by name), the policy's
//! `matchConditions`, then its `variables` and `validations`. A failed validation is acted
//! on by the binding's `validationActions`: `Deny` refuses the request as upstream does
//! (`ValidatingAdmissionPolicy 'p' with binding 'b' denied request: ...`, code from the
//! validation's `reason`), `Warn` adds a `Warning:` header, `Audit` an audit annotation. An
//! expression that fails to evaluate follows the policy's `failurePolicy`.
//! `auditAnnotations` add `<policy>/<key>` annotations to the request's audit event (the
//! distinct values of all bindings, joined by `, `); `paramRef.selector` runs the policy once
//! per matching parameter object; expressions may use the `authorizer` variable
//! ([`crate::cel::authz`]). Not done: `status.typeChecking`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{json, Value};

use super::conditions::{self, Inputs, Verdict};
use super::{configurations_of, namespace, review, rules, selector, Matched, Request};
use crate::cel;
use crate::kinds::Cause;
use crate::meta;
use crate::state::AppState;
use crate::status::ApiError;

pub const POLICIES: &str = "validatingadmissionpolicies";
pub const BINDINGS: &str = "validatingadmissionpolicybindings";

/// The variables a policy's expressions see.
pub const VARS: &[&str] = &[
    "object",
    "oldObject",
    "request",
    "params",
    "namespaceObject",
    "authorizer",
    "variables",
];

pub(super) fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn items<'a>(v: &'a Value, p: &str) -> &'a [Value] {
    v.pointer(p)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

// === admission ===

/// One failed validation, acted on by the binding's actions.
struct Failure {
    message: String,
    reason: &'static str,
}

/// Apply every binding to the request (the validating phase; `obj` is `None` for deletes).
pub(super) async fn admit(
    state: &AppState,
    req: &Request<'_>,
    sub: &str,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let bindings = configurations_of(state, BINDINGS).await?;
    if bindings.is_empty() {
        return Ok(());
    }
    let policies: HashMap<String, Arc<Value>> = configurations_of(state, POLICIES)
        .await?
        .into_iter()
        .map(|p| (str_at(&p, "/metadata/name").to_string(), p))
        .collect();
    let name = obj
        .or(old)
        .and_then(|o| meta::meta_str(o, "name"))
        .unwrap_or("");
    let attrs = req.attrs(sub);
    let mut ns_object: Option<Value> = None;
    let mut denial: Option<ApiError> = None;
    // `auditAnnotations`: `<policy>/<key>` to the distinct values the bindings produced
    let mut annotations: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for b in &bindings {
        let Some(p) = policies.get(str_at(b, "/spec/policyName")) else {
            continue;
        };
        let pspec = &p["spec"];
        let mut target = Target {
            state,
            req,
            attrs: &attrs,
            name,
            obj,
            old,
            ns_object: &mut ns_object,
        };
        if !target.binding_matches(pspec, &b["spec"]).await? {
            continue;
        }
        let ns_value = target.namespace_object().await?;
        let pname = str_at(p, "/metadata/name");
        let failures = match params(state, req, pspec, &b["spec"]).await {
            Err(message) => vec![Failure {
                message,
                reason: "Invalid",
            }],
            Ok(None) => continue,
            Ok(Some(params)) => {
                let matched = Matched {
                    hook: json!({"admissionReviewVersions": ["v1"]}),
                    as_version: None,
                };
                let review = review(req, sub, &matched, obj, old);
                let authz = super::authorizer(state, req, sub, name);
                let mut failures = Vec::new();
                // with a paramRef.selector, every parameter object matched is a run
                for params in &params {
                    let inputs = Inputs {
                        object: obj,
                        old,
                        request: &review["request"],
                        params: params.as_ref(),
                        namespace: ns_value.as_ref(),
                        authorizer: authz.as_ref(),
                    };
                    let (f, notes) = evaluate(pspec, &inputs);
                    failures.extend(f);
                    for (key, value) in notes {
                        annotations
                            .entry(format!("{pname}/{key}"))
                            .or_default()
                            .insert(value);
                    }
                }
                failures
            }
        };
        let bname = str_at(b, "/metadata/name");
        let actions: Vec<&str> = items(b, "/spec/validationActions")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for (i, f) in failures.iter().enumerate() {
            let by = format!("ValidatingAdmissionPolicy '{pname}' with binding '{bname}'");
            if actions.contains(&"Warn") {
                crate::warning::add(format!("Validation failed for {by}: {}", f.message));
            }
            if actions.contains(&"Audit") {
                crate::audit::annotate(
                    "validation.policy.admission.k8s.io/validation_failure",
                    json!([{"message": f.message, "policy": pname, "binding": bname, "expressionIndex": i, "validationActions": actions}]).to_string(),
                );
            }
            if actions.contains(&"Deny") && denial.is_none() {
                denial = Some(denied(
                    req,
                    name,
                    &format!("{by} denied request: {}", f.message),
                    f.reason,
                ));
            }
        }
    }
    for (key, values) in annotations {
        let values: Vec<String> = values.into_iter().collect();
        crate::audit::annotate(&key, values.join(", "));
    }
    match denial {
        Some(d) => Err(d),
        None => Ok(()),
    }
}

/// Upstream's denial: a Forbidden error whose reason and code are the validation's.
fn denied(req: &Request<'_>, name: &str, message: &str, reason: &'static str) -> ApiError {
    let resource = crate::status::qualified(req.def.plural, req.def.group);
    let code = match reason {
        "Unauthorized" => 401,
        "Forbidden" => 403,
        "RequestEntityTooLarge" => 413,
        _ => 422,
    };
    ApiError {
        code,
        reason,
        message: format!("{resource} \"{name}\" is forbidden: {message}"),
        details: Some(
            json!({"name": name, "group": req.def.group, "kind": req.def.plural,
            "causes": [{"message": message}]}),
        ),
    }
}

/// What matching needs about the request (shared with [`super::mutating_policy`]).
pub(super) struct Target<'a, 'r> {
    pub state: &'a AppState,
    pub req: &'a Request<'r>,
    pub attrs: &'a rules::Attrs<'a>,
    pub name: &'a str,
    pub obj: Option<&'a Value>,
    pub old: Option<&'a Value>,
    pub ns_object: &'a mut Option<Value>,
}

impl Target<'_, '_> {
    /// Whether a binding of a policy applies to the request: the policy's
    /// `matchConstraints` and the binding's `matchResources` (when it has any).
    pub async fn binding_matches(
        &mut self,
        pspec: &Value,
        bspec: &Value,
    ) -> Result<bool, ApiError> {
        if !self.matches(pspec.get("matchConstraints")).await? {
            return Ok(false);
        }
        match bspec.get("matchResources").filter(|m| !m.is_null()) {
            Some(m) => self.matches(Some(m)).await,
            None => Ok(true),
        }
    }

    /// The request's namespace object (`namespaceObject`; none for cluster-scoped requests).
    pub async fn namespace_object(&mut self) -> Result<Option<Value>, ApiError> {
        if let Some(ns) = self.req.ns.filter(|_| self.req.def.namespaced) {
            if self.ns_object.is_none() {
                *self.ns_object = Some(namespace(self.state, ns).await?);
            }
        }
        Ok(self.ns_object.clone())
    }

    /// `MatchResources` (a policy's `matchConstraints`, a binding's `matchResources`).
    async fn matches(&mut self, m: Option<&Value>) -> Result<bool, ApiError> {
        let Some(m) = m.filter(|m| !m.is_null()) else {
            return Ok(false);
        };
        let any_version = m.get("matchPolicy").and_then(Value::as_str) != Some("Exact");
        let named = |r: &Value| {
            let names = items(r, "/resourceNames");
            names.is_empty() || names.iter().any(|n| n == self.name)
        };
        let hit = |list: &[Value]| {
            list.iter()
                .any(|r| rules::rule_matches(r, self.attrs, any_version) && named(r))
        };
        // a binding's matchResources without rules narrows by its selectors only (a policy's
        // matchConstraints must have rules)
        let rules = items(m, "/resourceRules");
        if !rules.is_empty() && !hit(rules) {
            return Ok(false);
        }
        if hit(items(m, "/excludeResourceRules")) {
            return Ok(false);
        }
        if !selector(m, "objectSelector").is_none_or(|s| {
            [self.obj, self.old]
                .into_iter()
                .flatten()
                .any(|o| s.matches(o))
        }) {
            return Ok(false);
        }
        if let Some(s) = selector(m, "namespaceSelector") {
            let def = self.req.def;
            let target = if def.group.is_empty() && def.plural == "namespaces" {
                self.obj.or(self.old).cloned()
            } else if let Some(ns) = self.req.ns.filter(|_| def.namespaced) {
                if self.ns_object.is_none() {
                    *self.ns_object = Some(namespace(self.state, ns).await?);
                }
                self.ns_object.clone()
            } else {
                None
            };
            if target.is_some_and(|t| !s.matches(&t)) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The binding's parameter objects: `Ok(Some([None]))` when the policy takes none, one
/// by `paramRef.name`, every match of `paramRef.selector`; `Ok(None)` when the binding does
/// not apply (no parameter, `parameterNotFoundAction: Allow`), `Err(message)` to deny.
pub(super) async fn params(
    state: &AppState,
    req: &Request<'_>,
    pspec: &Value,
    bspec: &Value,
) -> Result<Option<Vec<Option<Value>>>, String> {
    let Some(kind) = pspec.get("paramKind").filter(|k| !k.is_null()) else {
        return Ok(Some(vec![None]));
    };
    let Some(r) = bspec.get("paramRef").filter(|r| !r.is_null()) else {
        return Err(format!(
            "failed to configure binding: paramRef is required for a policy with paramKind {}",
            str_at(kind, "/kind")
        ));
    };
    let (group, version) = match str_at(kind, "/apiVersion").split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", str_at(kind, "/apiVersion")),
    };
    let served = state.crds.snapshot();
    let def = served
        .registry
        .all()
        .iter()
        .find(|d| d.group == group && d.version == version && d.kind == str_at(kind, "/kind"))
        .cloned();
    let not_found = |what: String| {
        if str_at(r, "/parameterNotFoundAction") == "Allow" {
            Ok(None)
        } else {
            Err(format!(
                "no params found for policy binding with `Deny` parameterNotFoundAction: {what}"
            ))
        }
    };
    let Some(def) = def else {
        return Err(format!(
            "failed to find resource referenced by paramKind: '{}'",
            str_at(kind, "/kind")
        ));
    };
    let name = str_at(r, "/name");
    let ns = match str_at(r, "/namespace") {
        "" if def.namespaced => req.ns.unwrap_or(""),
        ns => ns,
    };
    let ns = def.namespaced.then_some(ns);
    if name.is_empty() {
        let selector = r
            .get("selector")
            .map(crate::selector::LabelSelector::from_object)
            .transpose()
            .map_err(|e| format!("failed to configure binding: {e}"))?;
        let page = crate::objects::list(state, &def, ns, &Default::default())
            .await
            .map_err(|e| e.message)?;
        let found: Vec<Option<Value>> = page
            .items
            .into_iter()
            .filter(|o| selector.as_ref().is_none_or(|s| s.matches(o)))
            .map(Some)
            .collect();
        if found.is_empty() {
            return if str_at(r, "/parameterNotFoundAction") == "Allow" {
                Ok(None)
            } else {
                Err("no params found for policy binding with `Deny` parameterNotFoundAction".into())
            };
        }
        return Ok(Some(found));
    }
    match crate::objects::get(state, &def, ns, name).await {
        Ok(v) => Ok(Some(vec![Some(v)])),
        Err(e) if e.code == 404 => not_found(format!("{} {name:?} not found", def.kind)),
        Err(e) => Err(e.message),
    }
}

/// The policy's conditions, variables, validations and audit annotations over `inputs`:
/// the failures and the annotations (key, value) to record.
fn evaluate(pspec: &Value, inputs: &Inputs<'_>) -> (Vec<Failure>, Vec<(String, String)>) {
    let fail_closed = str_at(pspec, "/failurePolicy") != "Ignore";
    let error = |message: String| -> Vec<Failure> {
        if fail_closed {
            vec![Failure {
                message,
                reason: "Invalid",
            }]
        } else {
            tracing::warn!(error = %message, "ValidatingAdmissionPolicy failed, failing open");
            Vec::new()
        }
    };
    match conditions::evaluate(pspec.get("matchConditions"), VARS, inputs) {
        Verdict::Match => {}
        Verdict::NoMatch => return (Vec::new(), Vec::new()),
        Verdict::Error(e) => return (error(e), Vec::new()),
    }
    let mut budget = cel::RUNTIME_BUDGET;
    let bind = |variables: &HashMap<String, cel::CelValue>| bind(inputs, variables);
    let variables = variables(pspec, inputs, &mut budget);
    let mut out = Vec::new();
    for v in items(pspec, "/validations") {
        let expr = str_at(v, "/expression");
        let result = cel::compile(expr, VARS)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                cel::eval_bool(&p, bind(&variables), &mut budget).map_err(|e| e.to_string())
            });
        match result {
            Ok(true) => {}
            Ok(false) => {
                let message = message_expression(v, &variables, &bind, &mut budget)
                    .or_else(|| {
                        Some(str_at(v, "/message").trim().to_string()).filter(|m| !m.is_empty())
                    })
                    .unwrap_or_else(|| format!("failed expression: {}", expr.trim()));
                out.push(Failure {
                    message,
                    reason: reason(str_at(v, "/reason")),
                });
            }
            Err(e) => out.extend(error(format!("expression '{expr}' resulted in error: {e}"))),
        }
    }
    let mut notes = Vec::new();
    for a in items(pspec, "/auditAnnotations") {
        let expr = str_at(a, "/valueExpression");
        let result = cel::compile(expr, VARS)
            .map_err(|e| e.to_string())
            .and_then(|p| cel::eval(&p, bind(&variables), &mut budget).map_err(|e| e.to_string()));
        match result {
            // upstream truncates values at 10 KiB
            Ok(cel::CelValue::String(v)) => notes.push((
                str_at(a, "/key").to_string(),
                v.chars().take(10 * 1024).collect(),
            )),
            Ok(cel::CelValue::Null) => {}
            Ok(other) => out.extend(error(format!(
                "valueExpression '{expr}' resulted in unsupported return type: {}. Return type must be either string or null.",
                cel::type_name(&other)
            ))),
            Err(e) => out.extend(error(format!(
                "valueExpression '{expr}' resulted in error: {e}"
            ))),
        }
    }
    (out, notes)
}

/// The policy's `variables`, in order, each seeing those before it (one that fails to
/// evaluate is missing: an expression using it fails with `no such key`).
pub(super) fn variables(
    pspec: &Value,
    inputs: &Inputs<'_>,
    budget: &mut i64,
) -> HashMap<String, cel::CelValue> {
    let mut variables: HashMap<String, cel::CelValue> = HashMap::new();
    for v in items(pspec, "/variables") {
        let expr = str_at(v, "/expression");
        if let Ok(p) = cel::compile(expr, VARS) {
            if let Ok(value) = cel::eval(&p, bind(inputs, &variables), budget) {
                variables.insert(str_at(v, "/name").to_string(), value);
            }
        }
    }
    variables
}

/// The policy variables bound for one evaluation, `variables` included.
pub(super) fn bind<'a>(
    inputs: &Inputs<'a>,
    variables: &HashMap<String, cel::CelValue>,
) -> Vec<cel::Var<'a>> {
    let mut vars = inputs.vars(&VARS[..6]);
    let map = cel::CelValue::from(variables.clone());
    if let Ok(boxed) = Box::<dyn ::cel::common::value::Val>::try_from(map) {
        vars.push(("variables", boxed));
    }
    vars
}

fn message_expression<'a>(
    v: &Value,
    variables: &HashMap<String, cel::CelValue>,
    bind: &dyn Fn(&HashMap<String, cel::CelValue>) -> Vec<cel::Var<'a>>,
    budget: &mut i64,
) -> Option<String> {
    let expr = str_at(v, "/messageExpression");
    if expr.is_empty() {
        return None;
    }
    let p = cel::compile(expr, VARS).ok()?;
    match cel::eval(&p, bind(variables), budget) {
        Ok(cel::CelValue::String(s)) if !s.trim().is_empty() && !s.contains('\n') => {
            Some(s.trim().to_string())
        }
        _ => None,
    }
}

fn reason(r: &str) -> &'static str {
    match r {
        "Unauthorized" => "Unauthorized",
        "Forbidden" => "Forbidden",
        "RequestEntityTooLarge" => "RequestEntityTooLarge",
        _ => "Invalid",
    }
}

// === defaults and validation of the two kinds ===

fn set_default(obj: &mut Value, field: &str, value: Value) {
    if let Some(m) = obj.as_object_mut() {
        if m.get(field).is_none_or(Value::is_null) {
            m.insert(field.into(), value);
        }
    }
}

fn default_match_resources(m: &mut Value) {
    set_default(m, "matchPolicy", json!("Equivalent"));
    set_default(m, "namespaceSelector", json!({}));
    set_default(m, "objectSelector", json!({}));
    for list in ["resourceRules", "excludeResourceRules"] {
        if let Some(rules) = m.get_mut(list).and_then(Value::as_array_mut) {
            for r in rules {
                set_default(r, "scope", json!("*"));
            }
        }
    }
}

/// Upstream's v1 defaults for a policy (`binding`: false) or a binding.
pub fn default(obj: &mut Value, binding: bool) {
    let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    if binding {
        if let Some(m) = spec.get_mut("matchResources").filter(|m| m.is_object()) {
            default_match_resources(m);
        }
        return;
    }
    set_default(spec, "failurePolicy", json!("Fail"));
    if let Some(m) = spec.get_mut("matchConstraints").filter(|m| m.is_object()) {
        default_match_resources(m);
    }
}

fn compiles(expr: &str, path: &str, what: &str, causes: &mut Vec<Cause>) {
    if expr.trim().is_empty() {
        causes.push((
            path.to_string(),
            "FieldValueRequired",
            "Required value".into(),
        ));
    } else if let Err(e) = cel::compile_checked(expr, VARS) {
        causes.push((
            path.to_string(),
            "FieldValueInvalid",
            format!("Invalid value: {expr:?}: {what}compilation failed: {e}"),
        ));
    }
}

/// What validating and mutating policies share: `failurePolicy` and `matchConstraints`.
pub(crate) fn validate_policy_common(spec: &Value, causes: &mut Vec<Cause>) {
    match str_at(spec, "/failurePolicy") {
        "Fail" | "Ignore" => {}
        other => causes.push((
            "spec.failurePolicy".into(),
            "FieldValueNotSupported",
            format!("Unsupported value: {other:?}: supported values: \"Fail\", \"Ignore\""),
        )),
    }
    if spec.get("matchConstraints").is_none_or(Value::is_null) {
        causes.push((
            "spec.matchConstraints".into(),
            "FieldValueRequired",
            "Required value".into(),
        ));
    } else if items(spec, "/matchConstraints/resourceRules").is_empty() {
        causes.push((
            "spec.matchConstraints.resourceRules".into(),
            "FieldValueRequired",
            "Required value".into(),
        ));
    }
}

/// A binding's `paramRef`, for both kinds of policy: a name or a selector (not both), and
/// `parameterNotFoundAction`.
pub(crate) fn validate_param_ref(spec: &Value, causes: &mut Vec<Cause>) {
    if let Some(r) = spec.get("paramRef").filter(|r| !r.is_null()) {
        let has_name = !str_at(r, "/name").is_empty();
        let has_selector = r.get("selector").is_some_and(|s| !s.is_null());
        if has_name && has_selector {
            causes.push((
                "spec.paramRef.name".into(),
                "FieldValueForbidden",
                "Forbidden: name and selector are mutually exclusive".into(),
            ));
        }
        if !has_name && !has_selector {
            causes.push((
                "spec.paramRef".into(),
                "FieldValueRequired",
                "Required value: one of name or selector must be specified".into(),
            ));
        }
        match str_at(r, "/parameterNotFoundAction") {
            "Allow" | "Deny" => {}
            "" => causes.push((
                "spec.paramRef.parameterNotFoundAction".into(),
                "FieldValueRequired",
                "Required value".into(),
            )),
            other => causes.push((
                "spec.paramRef.parameterNotFoundAction".into(),
                "FieldValueNotSupported",
                format!("Unsupported value: {other:?}: supported values: \"Allow\", \"Deny\""),
            )),
        }
    }
}

/// Upstream's validation of a policy (`binding`: false) or a binding (after defaulting).
pub fn validate(obj: &Value, binding: bool, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    if binding {
        if str_at(&spec, "/policyName").is_empty() {
            causes.push((
                "spec.policyName".into(),
                "FieldValueRequired",
                "Required value".into(),
            ));
        }
        validate_param_ref(&spec, causes);
        let actions = items(&spec, "/validationActions");
        if actions.is_empty() {
            causes.push((
                "spec.validationActions".into(),
                "FieldValueRequired",
                "Required value: at least one validation action is required".into(),
            ));
        }
        for (i, a) in actions.iter().enumerate() {
            let a = a.as_str().unwrap_or("");
            if !matches!(a, "Deny" | "Warn" | "Audit") {
                causes.push((
                    format!("spec.validationActions[{i}]"),
                    "FieldValueNotSupported",
                    format!(
                        "Unsupported value: {a:?}: supported values: \"Audit\", \"Deny\", \"Warn\""
                    ),
                ));
            } else if actions[..i].iter().any(|x| x == a) {
                causes.push((
                    format!("spec.validationActions[{i}]"),
                    "FieldValueDuplicate",
                    format!("Duplicate value: {a:?}"),
                ));
            }
        }
        let has = |a: &str| actions.iter().any(|x| x == a);
        if has("Deny") && has("Warn") {
            causes.push((
                "spec.validationActions".into(),
                "FieldValueInvalid",
                format!("Invalid value: {}: must not contain both Deny and Warn (repeating the same validation failure information in the API response and headers serves no purpose)", json!(actions)),
            ));
        }
        return;
    }
    validate_policy_common(&spec, causes);
    let validations = items(&spec, "/validations");
    if validations.is_empty() && items(&spec, "/auditAnnotations").is_empty() {
        causes.push((
            "spec.validations".into(),
            "FieldValueRequired",
            "Required value: validations or auditAnnotations must contain at least one item".into(),
        ));
    }
    for (i, v) in validations.iter().enumerate() {
        let p = format!("spec.validations[{i}]");
        compiles(
            str_at(v, "/expression"),
            &format!("{p}.expression"),
            "",
            causes,
        );
        let me = str_at(v, "/messageExpression");
        if !me.is_empty() {
            compiles(
                me,
                &format!("{p}.messageExpression"),
                "messageExpression ",
                causes,
            );
        }
        let r = str_at(v, "/reason");
        if !r.is_empty() && reason(r) != r {
            causes.push((
                format!("{p}.reason"),
                "FieldValueNotSupported",
                format!("Unsupported value: {r:?}: supported values: \"Forbidden\", \"Invalid\", \"RequestEntityTooLarge\", \"Unauthorized\""),
            ));
        }
    }
    for (i, v) in items(&spec, "/variables").iter().enumerate() {
        let p = format!("spec.variables[{i}]");
        if str_at(v, "/name").is_empty() {
            causes.push((
                format!("{p}.name"),
                "FieldValueRequired",
                "Required value".into(),
            ));
        }
        compiles(
            str_at(v, "/expression"),
            &format!("{p}.expression"),
            "",
            causes,
        );
    }
    let mut keys = Vec::new();
    for (i, a) in items(&spec, "/auditAnnotations").iter().enumerate() {
        let p = format!("spec.auditAnnotations[{i}]");
        let key = str_at(a, "/key");
        if key.is_empty() {
            causes.push((
                format!("{p}.key"),
                "FieldValueRequired",
                "Required value".into(),
            ));
        } else if keys.contains(&key) {
            causes.push((
                format!("{p}.key"),
                "FieldValueDuplicate",
                format!("Duplicate value: {key:?}"),
            ));
        }
        keys.push(key);
        compiles(
            str_at(a, "/valueExpression"),
            &format!("{p}.valueExpression"),
            "",
            causes,
        );
    }
    conditions::validate(
        spec.get("matchConditions"),
        "spec.matchConditions",
        VARS,
        causes,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs_for<'a>(obj: &'a Value, req: &'a Value) -> Inputs<'a> {
        Inputs {
            object: Some(obj),
            old: None,
            request: req,
            params: None,
            namespace: None,
            authorizer: None,
        }
    }

    #[test]
    fn validations_variables_and_messages() {
        let spec = json!({"failurePolicy": "Fail",
            "variables": [{"name": "replicas", "expression": "object.spec.replicas"}],
            "validations": [
                {"expression": "variables.replicas <= 5"},
                {"expression": "object.metadata.name.startsWith('x')", "message": "names start with x", "reason": "Forbidden"},
                {"expression": "variables.replicas < 2", "messageExpression": "'too many: ' + string(variables.replicas)"},
                {"expression": "object.spec.missing == 1"}]});
        let obj = json!({"metadata": {"name": "web"}, "spec": {"replicas": 7}});
        let req = json!({"operation": "CREATE"});
        let got: Vec<(String, &str)> = evaluate(&spec, &inputs_for(&obj, &req))
            .0
            .into_iter()
            .map(|f| (f.message, f.reason))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "failed expression: variables.replicas <= 5".to_string(),
                    "Invalid"
                ),
                ("names start with x".to_string(), "Forbidden"),
                ("too many: 7".to_string(), "Invalid"),
                (
                    "expression 'object.spec.missing == 1' resulted in error: no such key: missing"
                        .to_string(),
                    "Invalid"
                ),
            ]
        );
        let mut ignore = spec.clone();
        ignore["failurePolicy"] = json!("Ignore");
        assert_eq!(
            evaluate(&ignore, &inputs_for(&obj, &req)).0.len(),
            3,
            "errors are ignored"
        );
        let mut unmatched = spec;
        unmatched["matchConditions"] =
            json!([{"name": "never", "expression": "request.operation == 'DELETE'"}]);
        assert!(evaluate(&unmatched, &inputs_for(&obj, &req)).0.is_empty());
    }

    #[test]
    fn audit_annotations_are_strings_or_nothing() {
        let spec = json!({"failurePolicy": "Fail", "auditAnnotations": [
            {"key": "high-replica-count", "valueExpression": "object.spec.replicas > 5 ? 'Deployment spec.replicas set to ' + string(object.spec.replicas) : null"},
            {"key": "quiet", "valueExpression": "null"},
            {"key": "broken", "valueExpression": "object.spec.missing"},
            {"key": "number", "valueExpression": "1"}]});
        let obj = json!({"metadata": {"name": "web"}, "spec": {"replicas": 7}});
        let req = json!({"operation": "CREATE"});
        let (failures, notes) = evaluate(&spec, &inputs_for(&obj, &req));
        assert_eq!(
            notes,
            [(
                "high-replica-count".to_string(),
                "Deployment spec.replicas set to 7".to_string()
            )]
        );
        let messages: Vec<String> = failures.into_iter().map(|f| f.message).collect();
        assert_eq!(
            messages,
            [
                "valueExpression 'object.spec.missing' resulted in error: no such key: missing",
                "valueExpression '1' resulted in unsupported return type: int. Return type must be either string or null."
            ]
        );
    }

    #[test]
    fn policies_and_bindings_are_validated() {
        let mut p = json!({"spec": {"matchConstraints": {"resourceRules": [{"operations": ["CREATE"], "apiGroups": ["apps"], "apiVersions": ["v1"], "resources": ["deployments"]}]},
            "validations": [{"expression": "object.spec.replicas <="}, {"expression": "true", "reason": "Teapot"}]}});
        default(&mut p, false);
        assert_eq!(p["spec"]["failurePolicy"], "Fail");
        assert_eq!(
            p["spec"]["matchConstraints"]["resourceRules"][0]["scope"],
            "*"
        );
        let mut causes = Vec::new();
        validate(&p, false, &mut causes);
        let got: Vec<String> = causes.iter().map(|(f, _, m)| format!("{f}: {m}")).collect();
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(got[0].starts_with("spec.validations[0].expression: Invalid value: \"object.spec.replicas <=\": compilation failed: ERROR: <input>:1:24: Syntax error"), "{}", got[0]);
        assert!(got[1].starts_with("spec.validations[1].reason: Unsupported value: \"Teapot\""));
        let mut causes = Vec::new();
        validate(
            &json!({"spec": {"validationActions": ["Deny", "Warn", "Deny"]}}),
            true,
            &mut causes,
        );
        let fields: Vec<&str> = causes.iter().map(|(f, _, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.policyName",
                "spec.validationActions[2]",
                "spec.validationActions"
            ]
        );
        // paramRef, as for MutatingAdmissionPolicy bindings (the shared check)
        let mut causes = Vec::new();
        validate(
            &json!({"spec": {"policyName": "p", "validationActions": ["Deny"],
                "paramRef": {"name": "x", "selector": {}, "parameterNotFoundAction": "Maybe"}}}),
            true,
            &mut causes,
        );
        let fields: Vec<&str> = causes.iter().map(|(f, _, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.paramRef.name",
                "spec.paramRef.parameterNotFoundAction"
            ]
        );
    }
}
