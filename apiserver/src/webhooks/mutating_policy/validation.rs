//! Upstream's defaults and validation of MutatingAdmissionPolicies and their bindings.

use serde_json::Value;

use crate::cel;
use crate::kinds::Cause;
use crate::webhooks::conditions;
use crate::webhooks::policy::{self, items, str_at, VARS};

/// Upstream's v1 defaults for a policy (`binding`: false) or a binding.
pub fn default(obj: &mut Value, binding: bool) {
    policy::default(obj, binding);
}

fn compiles(expr: &str, path: &str, causes: &mut Vec<Cause>) {
    if expr.trim().is_empty() {
        causes.push((
            path.to_string(),
            "FieldValueRequired",
            "Required value".into(),
        ));
    } else if let Err(e) = cel::compile_mutation(expr, VARS) {
        causes.push((
            path.to_string(),
            "FieldValueInvalid",
            format!("Invalid value: {expr:?}: compilation failed: {e}"),
        ));
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
        policy::validate_param_ref(&spec, causes);
        return;
    }
    policy::validate_policy_common(&spec, causes);
    match str_at(&spec, "/reinvocationPolicy") {
        "Never" | "IfNeeded" => {}
        "" => causes.push((
            "spec.reinvocationPolicy".into(),
            "FieldValueRequired",
            "Required value".into(),
        )),
        other => causes.push((
            "spec.reinvocationPolicy".into(),
            "FieldValueNotSupported",
            format!("Unsupported value: {other:?}: supported values: \"IfNeeded\", \"Never\""),
        )),
    }
    let mutations = items(&spec, "/mutations");
    if mutations.is_empty() {
        causes.push((
            "spec.mutations".into(),
            "FieldValueRequired",
            "Required value: mutations must contain at least one item".into(),
        ));
    }
    for (i, m) in mutations.iter().enumerate() {
        let p = format!("spec.mutations[{i}]");
        let has = |f: &str| m.get(f).is_some_and(|x| !x.is_null());
        match str_at(m, "/patchType") {
            "ApplyConfiguration" => {
                if has("jsonPatch") {
                    causes.push((
                        format!("{p}.jsonPatch"),
                        "FieldValueForbidden",
                        "Forbidden: must not be specified when patchType is ApplyConfiguration".into(),
                    ));
                }
                if has("applyConfiguration") {
                    compiles(
                        str_at(m, "/applyConfiguration/expression"),
                        &format!("{p}.applyConfiguration.expression"),
                        causes,
                    );
                } else {
                    causes.push((
                        format!("{p}.applyConfiguration"),
                        "FieldValueRequired",
                        "Required value: must be specified when patchType is ApplyConfiguration".into(),
                    ));
                }
            }
            "JSONPatch" => {
                if has("applyConfiguration") {
                    causes.push((
                        format!("{p}.applyConfiguration"),
                        "FieldValueForbidden",
                        "Forbidden: must not be specified when patchType is JSONPatch".into(),
                    ));
                }
                if has("jsonPatch") {
                    compiles(
                        str_at(m, "/jsonPatch/expression"),
                        &format!("{p}.jsonPatch.expression"),
                        causes,
                    );
                } else {
                    causes.push((
                        format!("{p}.jsonPatch"),
                        "FieldValueRequired",
                        "Required value: must be specified when patchType is JSONPatch".into(),
                    ));
                }
            }
            "" => causes.push((format!("{p}.patchType"), "FieldValueRequired", "Required value".into())),
            other => causes.push((
                format!("{p}.patchType"),
                "FieldValueNotSupported",
                format!("Unsupported value: {other:?}: supported values: \"ApplyConfiguration\", \"JSONPatch\""),
            )),
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
        compiles(str_at(v, "/expression"), &format!("{p}.expression"), causes);
    }
    conditions::validate(
        spec.get("matchConditions"),
        "spec.matchConditions",
        VARS,
        causes,
    );
}
