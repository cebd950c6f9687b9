//! MutatingAdmissionPolicy and MutatingAdmissionPolicyBinding
//! (admissionregistration.k8s.io/v1): in-process mutation with CEL, as upstream's
//! `MutatingAdmissionPolicy` admission plugin.
//!
//! Both kinds are kept in memory beside the webhook configurations ([`super::Index`]). They
//! run in the mutating phase of creates and updates, before the mutating webhooks (upstream's
//! plugin order: `MutatingAdmissionPolicy`, `MutatingAdmissionWebhook`,
//! `ValidatingAdmissionPolicy`, `ValidatingAdmissionWebhook`); the object is then defaulted
//! and validated as usual. Bindings are tried in the order of their policy's name, then
//! their own; matching (`matchConstraints`, the binding's `matchResources`) and parameters
//! (`paramRef` by name or selector) are the ValidatingAdmissionPolicy's ([`super::policy`]).
//! Per parameter object, after the policy's `matchConditions`, its `mutations` run in order,
//! each over the object as the previous one left it:
//! - `ApplyConfiguration`: the expression returns an `Object{...}` literal (kaze's CEL turns
//!   upstream's dynamic object types into maps, [`cel::compile_mutation`]), merged into the
//!   object as server-side apply merges (maps by key, keyed lists by their keys, other lists
//!   replaced); setting an atomic map or list is refused, as upstream's.
//! - `JSONPatch`: the expression returns a list of `JSONPatch{op, path, from, value}`
//!   applied as RFC 6902; a failed `test` leaves the object as it was.
//!
//! A mutation that fails (an expression error, a result of the wrong type, a patch that does
//! not apply, an object that no longer decodes as its kind) is skipped; under
//! `failurePolicy: Fail` the request is then refused as upstream does: a 403 with reason
//! `Invalid` and the message `policy '<p>' with binding '<b>' denied request: ...`.
//! `reinvocationPolicy: IfNeeded` invocations run once more when a later policy or a mutating
//! webhook changed the object after them. Deletes (no object) and CONNECT are not mutated.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::conditions::{self, Inputs, Verdict};
use super::policy::{self, items, str_at, Target, VARS};
use super::{configurations_of, review, Matched, Request};
use crate::cel;
use crate::meta;
use crate::state::AppState;
use crate::status::ApiError;

mod patch;
mod validation;

pub use validation::{default, validate};

pub const POLICIES: &str = "mutatingadmissionpolicies";
pub const BINDINGS: &str = "mutatingadmissionpolicybindings";

// === admission ===

/// A failed invocation, acted on by the policy's failurePolicy.
struct Failure {
    policy: String,
    binding: String,
    message: String,
    reason: &'static str,
}

/// An `IfNeeded` invocation that ran: its key and the object as it left it.
pub(super) type Invoked = (String, Value);

/// Run the policies' mutations on `obj` (a create, or an update of `old`). `only`: a
/// reinvocation, of these invocations alone. Returns the `IfNeeded` invocations that ran.
pub(super) async fn admit(
    state: &AppState,
    req: &Request<'_>,
    sub: &str,
    obj: &mut Value,
    old: Option<&Value>,
    only: Option<&[String]>,
) -> Result<Vec<Invoked>, ApiError> {
    let bindings = configurations_of(state, BINDINGS).await?;
    if bindings.is_empty() {
        return Ok(Vec::new());
    }
    let policies: HashMap<String, _> = configurations_of(state, POLICIES)
        .await?
        .into_iter()
        .map(|p| (str_at(&p, "/metadata/name").to_string(), p))
        .collect();
    let mut bindings: Vec<_> = bindings
        .into_iter()
        .filter(|b| policies.contains_key(str_at(b, "/spec/policyName")))
        .collect();
    bindings.sort_by(|a, b| {
        (str_at(a, "/spec/policyName"), str_at(a, "/metadata/name"))
            .cmp(&(str_at(b, "/spec/policyName"), str_at(b, "/metadata/name")))
    });
    let name = meta::meta_str(obj, "name").unwrap_or("").to_string();
    let attrs = req.attrs(sub);
    let mut ns_object: Option<Value> = None;
    let mut failures: Vec<Failure> = Vec::new();
    let mut invoked: Vec<Invoked> = Vec::new();
    for b in &bindings {
        let p = &policies[str_at(b, "/spec/policyName")];
        let (pname, bname) = (str_at(p, "/metadata/name"), str_at(b, "/metadata/name"));
        let pspec = &p["spec"];
        let current = obj.clone();
        let mut target = Target {
            state,
            req,
            attrs: &attrs,
            name: &name,
            obj: Some(&current),
            old,
            ns_object: &mut ns_object,
        };
        if !target.binding_matches(pspec, &b["spec"]).await? {
            continue;
        }
        let ns_value = target.namespace_object().await?;
        let fail = |message: String, reason| Failure {
            policy: pname.to_string(),
            binding: bname.to_string(),
            message,
            reason,
        };
        let params = match policy::params(state, req, pspec, &b["spec"]).await {
            Err(message) => {
                if fails_closed(pspec) {
                    failures.push(fail(message, "Forbidden"));
                }
                continue;
            }
            Ok(None) => continue,
            Ok(Some(params)) => params,
        };
        let authz = super::authorizer(state, req, sub, &name);
        for param in &params {
            let key = format!(
                "{pname}\0{bname}\0{}",
                param
                    .as_ref()
                    .map(|p| format!(
                        "{}/{}",
                        meta::meta_str(p, "namespace").unwrap_or(""),
                        meta::meta_str(p, "name").unwrap_or("")
                    ))
                    .unwrap_or_default()
            );
            if only.is_some_and(|keys| !keys.contains(&key)) {
                continue;
            }
            let current = obj.clone();
            let matched = Matched {
                hook: json!({"admissionReviewVersions": ["v1"]}),
                as_version: None,
            };
            let review = review(req, sub, &matched, Some(&current), old);
            let inputs = Inputs {
                object: Some(&current),
                old,
                request: &review["request"],
                params: param.as_ref(),
                namespace: ns_value.as_ref(),
                authorizer: authz.as_ref(),
            };
            let (mutated, errors) =
                match conditions::evaluate(pspec.get("matchConditions"), VARS, &inputs) {
                    Verdict::NoMatch => continue,
                    Verdict::Error(e) => (None, vec![e]),
                    Verdict::Match => {
                        let roundtrip = req.def.custom.is_none().then_some(req.def.roundtrip);
                        let shape = crate::managedfields::Shape::of(req.def);
                        mutate(pspec, &inputs, shape, roundtrip)
                    }
                };
            if let Some(m) = mutated {
                *obj = m;
            }
            for e in errors {
                if fails_closed(pspec) {
                    failures.push(fail(e, "Invalid"));
                } else {
                    tracing::warn!(policy = pname, binding = bname, error = %e, "MutatingAdmissionPolicy failed, failing open");
                }
            }
            if str_at(pspec, "/reinvocationPolicy") == "IfNeeded" {
                invoked.push((key, obj.clone()));
            }
        }
    }
    match failures.first() {
        None => Ok(invoked),
        Some(first) => Err(denied(req, &name, first, &failures)),
    }
}

fn fails_closed(pspec: &Value) -> bool {
    str_at(pspec, "/failurePolicy") != "Ignore"
}

/// Upstream's refusal: `admission.NewForbidden` with the first failure's message and
/// reason, every failure a cause.
fn denied(req: &Request<'_>, name: &str, first: &Failure, all: &[Failure]) -> ApiError {
    let message = |f: &Failure| {
        format!(
            "policy '{}' with binding '{}' denied request: {}",
            f.policy, f.binding, f.message
        )
    };
    let causes: Vec<Value> = all.iter().map(|f| json!({"message": message(f)})).collect();
    ApiError {
        code: 403,
        reason: first.reason,
        message: message(first),
        details: Some(
            json!({"name": name, "group": req.def.group, "kind": req.def.plural, "causes": causes}),
        ),
    }
}

/// A typed round trip of the kind: an object a mutation left that no longer decodes is
/// refused as upstream's type converter refuses it.
type Roundtrip = fn(&Value) -> Result<Value, String>;

/// The policy's mutations over `inputs.object`, in order: the object they left (`None`
/// when unchanged) and the errors of those that failed (and were skipped).
fn mutate(
    pspec: &Value,
    inputs: &Inputs<'_>,
    shape: crate::managedfields::Shape<'_>,
    roundtrip: Option<Roundtrip>,
) -> (Option<Value>, Vec<String>) {
    let Some(original) = inputs.object else {
        return (None, Vec::new());
    };
    let mut current = original.clone();
    let mut errors = Vec::new();
    let mut budget = cel::RUNTIME_BUDGET;
    for m in items(pspec, "/mutations") {
        let inputs = Inputs {
            object: Some(&current),
            ..*inputs
        };
        let variables = policy::variables(pspec, &inputs, &mut budget);
        let result = match str_at(m, "/patchType") {
            "ApplyConfiguration" => {
                let expr = str_at(m, "/applyConfiguration/expression");
                evaluate(expr, &inputs, &variables, &mut budget)
                    .and_then(|v| patch::apply_configuration(&current, &v, shape))
            }
            "JSONPatch" => {
                let expr = str_at(m, "/jsonPatch/expression");
                evaluate(expr, &inputs, &variables, &mut budget)
                    .and_then(|v| patch::json_patch(&current, &v))
            }
            other => Err(format!("unsupported patchType {other:?}")),
        };
        let result = result.and_then(|new| {
            if new.get("apiVersion") != current.get("apiVersion")
                || new.get("kind") != current.get("kind")
            {
                return Err(
                    "error applying patch: the patch may not change apiVersion or kind".into(),
                );
            }
            if !new.get("metadata").is_some_and(Value::is_object) {
                return Err("error applying patch: the patch may not remove metadata".into());
            }
            match roundtrip {
                Some(f) if new != current => f(&new)
                    .map(|_| new)
                    .map_err(|e| format!("failed to convert patch object to typed object: {e}")),
                _ => Ok(new),
            }
        });
        match result {
            Ok(new) => current = new,
            Err(e) => errors.push(e),
        }
    }
    ((current != *original).then_some(current), errors)
}

/// Evaluate one mutation expression.
fn evaluate(
    expr: &str,
    inputs: &Inputs<'_>,
    variables: &HashMap<String, cel::CelValue>,
    budget: &mut i64,
) -> Result<Value, String> {
    let program =
        cel::compile_mutation(expr, VARS).map_err(|e| format!("compilation failed: {e}"))?;
    let value = cel::eval(&program, policy::bind(inputs, variables), budget)
        .map_err(|e| format!("expression '{expr}' resulted in error: {e}"))?;
    cel::to_json(&value).map_err(|e| format!("expression '{expr}' resulted in error: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(spec: Value, obj: &Value) -> (Option<Value>, Vec<String>) {
        let req = json!({"operation": "CREATE"});
        let inputs = Inputs {
            object: Some(obj),
            old: None,
            request: &req,
            params: None,
            namespace: None,
            authorizer: None,
        };
        mutate(&spec, &inputs, crate::managedfields::Shape::Named(""), None)
    }

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "nginx", "args": ["-v"]}]}})
    }

    #[test]
    fn apply_configuration_merges_object_literals() {
        let spec = json!({"mutations": [
            {"patchType": "ApplyConfiguration", "applyConfiguration": {"expression":
                "Object{metadata: Object.metadata{labels: {'team': 'a', 'n': string(size(object.spec.containers))}}}"}},
            {"patchType": "ApplyConfiguration", "applyConfiguration": {"expression":
                "Object{spec: Object.spec{initContainers: [Object.spec.initContainers{name: 'mesh-proxy', image: 'mesh/proxy:v1.0.0', args: ['proxy', 'sidecar'], restartPolicy: 'Always'}], containers: [Object.spec.containers{name: 'app', image: 'nginx:2'}]}}"}}]});
        let (got, errors) = run(spec, &pod());
        assert!(errors.is_empty(), "{errors:?}");
        let got = got.expect("mutated");
        assert_eq!(
            got["metadata"]["labels"],
            json!({"app": "web", "team": "a", "n": "1"})
        );
        // keyed list merged by name: args kept, image replaced
        assert_eq!(
            got["spec"]["containers"],
            json!([{"name": "app", "image": "nginx:2", "args": ["-v"]}])
        );
        assert_eq!(
            got["spec"]["initContainers"][0]["args"],
            json!(["proxy", "sidecar"])
        );
        assert_eq!(got["spec"]["initContainers"][0]["restartPolicy"], "Always");
    }

    #[test]
    fn apply_configuration_refuses_atomics_and_mistyped_literals() {
        let (got, errors) = run(
            json!({"mutations": [{"patchType": "ApplyConfiguration", "applyConfiguration": {"expression":
                "Object{spec: Object.spec{containers: [Object.spec.containers{name: 'app', args: ['-x']}]}}"}}]}),
            &pod(),
        );
        assert_eq!(got, None);
        assert_eq!(
            errors,
            ["error applying patch: invalid ApplyConfiguration: may not mutate atomic arrays, maps or structs: .spec.containers[0].args"]
        );
        let err = cel::compile_mutation("Object{spec: Object.spec.wrong{}}", VARS).unwrap_err();
        assert!(
            err.0.contains(
                r#"type mismatch: unexpected type name "Object.spec.wrong", expected "Object.spec", which matches field name path from root Object type"#
            ),
            "{err}"
        );
        // outside mutations, struct literals are undeclared types
        let err = cel::compile("Object{}", VARS).unwrap_err();
        assert!(err.0.contains("undeclared reference to 'Object'"), "{err}");
        let (_, errors) = run(
            json!({"mutations": [{"patchType": "ApplyConfiguration", "applyConfiguration": {"expression": "[1]"}}]}),
            &pod(),
        );
        assert_eq!(
            errors,
            ["unsupported return type from ApplyConfiguration expression: must evaluate to Object but got list"]
        );
    }

    #[test]
    fn atomics_are_refused_only_over_existing_values() {
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"app": "d"}}}});
        let (got, errors) = run(
            json!({"mutations": [{"patchType": "ApplyConfiguration", "applyConfiguration": {"expression":
                "Object{spec: Object.spec{selector: Object.spec.selector{matchLabels: {'l': 'v'}}}}"}}]}),
            &deployment,
        );
        assert_eq!(got, None);
        assert_eq!(
            errors,
            ["error applying patch: invalid ApplyConfiguration: may not mutate atomic arrays, maps or structs: .spec.selector"]
        );
    }

    #[test]
    fn json_patch_ops_and_escaped_keys() {
        let spec = json!({"mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": r#"[
            JSONPatch{op: "add", path: "/metadata/labels/" + jsonpatch.escapeKey("example.com/owner"), value: "ops"},
            JSONPatch{op: "replace", path: "/spec/containers/0/image", value: "nginx:" + string(1 + 1)},
            JSONPatch{op: "add", path: "/spec/containers/0/env", value: [Object.spec.containers.env{name: "A", value: "b"}]}
        ]"#}}]});
        let (got, errors) = run(spec, &pod());
        assert!(errors.is_empty(), "{errors:?}");
        let got = got.expect("mutated");
        assert_eq!(got["metadata"]["labels"]["example.com/owner"], "ops");
        assert_eq!(got["spec"]["containers"][0]["image"], "nginx:2");
        assert_eq!(
            got["spec"]["containers"][0]["env"],
            json!([{"name": "A", "value": "b"}])
        );
        let escaped = cel::compile("jsonpatch.escapeKey('a/b~c')", VARS).unwrap();
        let mut budget = cel::RUNTIME_BUDGET;
        assert_eq!(
            cel::eval(&escaped, Vec::new(), &mut budget),
            Ok(cel::CelValue::String(std::sync::Arc::new("a~1b~0c".into())))
        );
    }

    #[test]
    fn json_patch_failures_skip_the_mutation() {
        // a failed test leaves the object as it was, without an error
        let (got, errors) = run(
            json!({"mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression":
                "[JSONPatch{op: 'test', path: '/metadata/name', value: 'other'}, JSONPatch{op: 'remove', path: '/metadata/labels'}]"}}]}),
            &pod(),
        );
        assert_eq!((got, errors.len()), (None, 0));
        let (got, errors) = run(
            json!({"mutations": [
                {"patchType": "JSONPatch", "jsonPatch": {"expression": "[JSONPatch{op: 'remove', path: '/spec/missing'}]"}},
                {"patchType": "JSONPatch", "jsonPatch": {"expression": "[JSONPatch{op: 'add', path: '/metadata/labels/x', value: object.spec.nope}]"}},
                {"patchType": "JSONPatch", "jsonPatch": {"expression": "[JSONPatch{op: 'add', path: '/metadata/labels/ok', value: 'yes'}]"}}]}),
            &pod(),
        );
        assert_eq!(
            got.expect("the last mutation applies")["metadata"]["labels"]["ok"],
            "yes"
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("JSONPath: "), "{}", errors[0]);
        assert_eq!(
            errors[1],
            "expression '[JSONPatch{op: 'add', path: '/metadata/labels/x', value: object.spec.nope}]' resulted in error: no such key: nope"
        );
    }

    #[test]
    fn policies_and_bindings_are_validated() {
        let mut p = json!({"spec": {"matchConstraints": {"resourceRules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]},
            "mutations": [
                {"patchType": "ApplyConfiguration", "applyConfiguration": {"expression": "Object{"}},
                {"patchType": "JSONPatch"},
                {"patchType": "Merge"}]}});
        default(&mut p, false);
        assert_eq!(p["spec"]["failurePolicy"], "Fail");
        let mut causes = Vec::new();
        validate(&p, false, &mut causes);
        let fields: Vec<&str> = causes.iter().map(|(f, _, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.reinvocationPolicy",
                "spec.mutations[0].applyConfiguration.expression",
                "spec.mutations[1].jsonPatch",
                "spec.mutations[2].patchType"
            ],
            "{causes:#?}"
        );
        let mut causes = Vec::new();
        validate(
            &json!({"spec": {"paramRef": {"name": "a", "selector": {}}}}),
            true,
            &mut causes,
        );
        let fields: Vec<&str> = causes.iter().map(|(f, _, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.policyName",
                "spec.paramRef.name",
                "spec.paramRef.parameterNotFoundAction"
            ]
        );
    }
}
