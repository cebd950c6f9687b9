//! RuntimeClass (`node.k8s.io/v1`): upstream's validation, and the `RuntimeClass` admission
//! plugin (`plugin/pkg/admission/runtimeclass`): a pod's `runtimeClassName` must name an
//! existing class; the class's `overhead.podFixed` becomes the pod's `spec.overhead` (a pod
//! setting a different one, or one without a class defining it, is refused) and its
//! `scheduling` is merged into the pod (nodeSelector, conflicts refused; tolerations added).

use serde_json::{json, Map, Value};

use crate::kinds::Cause;
use crate::meta;
use crate::state::AppState;
use crate::status::ApiError;

fn invalid(field: &str, msg: impl Into<String>) -> Cause {
    (field.to_string(), "FieldValueInvalid", msg.into())
}

/// Upstream's `ValidateRuntimeClass` (and `...Update`: the handler is immutable).
pub fn validate(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let handler = obj.get("handler").and_then(Value::as_str).unwrap_or("");
    if handler.is_empty() {
        causes.push((
            "handler".into(),
            "FieldValueRequired",
            "Required value".into(),
        ));
    } else if let Err(e) = meta::check_label(handler) {
        causes.push(invalid("handler", e));
    }
    if let Some(old) = old {
        if old.get("handler") != obj.get("handler") {
            let v = serde_json::to_string(&obj.get("handler").cloned().unwrap_or(json!("")))
                .unwrap_or_default();
            causes.push(invalid(
                "handler",
                format!("Invalid value: {v}: field is immutable"),
            ));
        }
    }
    if let Some(fixed) = obj.pointer("/overhead/podFixed").and_then(Value::as_object) {
        for (name, q) in fixed {
            let path = format!("overhead.podFixed[{name}]");
            let text = q
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| q.to_string());
            match component::quota::Quantity::parse(&text) {
                None => causes.push(invalid(
                    &path,
                    format!("Invalid value: {text:?}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
                )),
                Some(v) if v < component::quota::Quantity::ZERO => causes.push(invalid(
                    &path,
                    format!("Invalid value: {text:?}: must be greater than or equal to 0"),
                )),
                Some(_) => {}
            }
        }
    }
    if let Some(sel) = obj
        .pointer("/scheduling/nodeSelector")
        .and_then(Value::as_object)
    {
        for (k, v) in sel {
            let path = "scheduling.nodeSelector";
            if let Err(e) = check_qualified_name(k) {
                causes.push(invalid(path, format!("Invalid value: {k:?}: {e}")));
            }
            let v = v.as_str().unwrap_or("");
            if !v.is_empty() {
                if let Err(e) = check_label_value(v) {
                    causes.push(invalid(path, format!("Invalid value: {v:?}: {e}")));
                }
            }
        }
    }
    if let Some(tols) = obj
        .pointer("/scheduling/tolerations")
        .and_then(Value::as_array)
    {
        for (i, t) in tols.iter().enumerate() {
            validate_toleration(t, &format!("scheduling.tolerations[{i}]"), &mut causes);
        }
    }
    causes
}

/// Upstream's `IsValidLabelValue` ([`meta::names::label_value`]): its messages when invalid.
fn check_label_value(v: &str) -> Result<(), String> {
    joined(meta::names::label_value(v))
}

/// A label key (upstream's `IsQualifiedName`, [`meta::names::qualified_name`]): an optional
/// DNS-1123 subdomain prefix and `/`, then a name as label values but non-empty.
pub(crate) fn check_qualified_name(k: &str) -> Result<(), String> {
    joined(meta::names::qualified_name(k))
}

fn joined(msgs: Vec<String>) -> Result<(), String> {
    if msgs.is_empty() {
        Ok(())
    } else {
        Err(msgs.join(", "))
    }
}

/// Upstream's `ValidateTolerations` for one toleration.
fn validate_toleration(t: &Value, path: &str, causes: &mut Vec<Cause>) {
    let key = t.get("key").and_then(Value::as_str).unwrap_or("");
    let op = t.get("operator").and_then(Value::as_str).unwrap_or("");
    let value = t.get("value").and_then(Value::as_str).unwrap_or("");
    let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
    if !key.is_empty() {
        if let Err(e) = check_qualified_name(key) {
            causes.push(invalid(
                &format!("{path}.key"),
                format!("Invalid value: {key:?}: {e}"),
            ));
        }
    } else if op != "Exists" {
        causes.push(invalid(
            &format!("{path}.operator"),
            format!("Invalid value: {op:?}: operator must be Exists when `key` is empty, which means \"match all values and all keys\""),
        ));
    }
    if t.get("tolerationSeconds").is_some_and(|s| !s.is_null()) && effect != "NoExecute" {
        causes.push(invalid(
            &format!("{path}.effect"),
            format!("Invalid value: {effect:?}: effect must be 'NoExecute' when `tolerationSeconds` is set"),
        ));
    }
    match op {
        "" | "Equal" => {
            if !value.is_empty() {
                if let Err(e) = check_label_value(value) {
                    causes.push(invalid(
                        &format!("{path}.operator"),
                        format!("Invalid value: {value:?}: {e}"),
                    ));
                }
            }
        }
        "Exists" => {
            if !value.is_empty() {
                causes.push(invalid(
                    &format!("{path}.operator"),
                    format!("Invalid value: {t}: value must be empty when `operator` is 'Exists'"),
                ));
            }
        }
        other => causes.push((
            format!("{path}.operator"),
            "FieldValueNotSupported",
            format!("Unsupported value: {other:?}: supported values: \"Equal\", \"Exists\""),
        )),
    }
    if !effect.is_empty() && !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        causes.push((
            format!("{path}.effect"),
            "FieldValueNotSupported",
            format!("Unsupported value: {effect:?}: supported values: \"NoExecute\", \"NoSchedule\", \"PreferNoSchedule\""),
        ));
    }
}

fn pod_name(pod: &Value) -> &str {
    meta::meta_str(pod, "name")
        .filter(|n| !n.is_empty())
        .or_else(|| meta::meta_str(pod, "generateName").filter(|n| !n.is_empty()))
        .unwrap_or("Unknown")
}

/// Two resource lists with the same names and equal quantities (upstream's semantic
/// equality of `ResourceList`s).
fn same_resources(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    let q = |v: &Value| v.as_str().and_then(component::quota::Quantity::parse);
    a.len() == b.len()
        && a.iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| q(v).is_some() && q(v) == q(w)))
}

/// The `RuntimeClass` admission plugin on a pod create (mutation, then validation).
pub async fn admit_pod(state: &AppState, pod: &mut Value) -> Result<(), ApiError> {
    let name = pod_name(pod).to_string();
    let forbidden = |why: String| ApiError::forbidden("pods", "", &name, &why);
    let class_name = pod
        .pointer("/spec/runtimeClassName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let class = if class_name.is_empty() {
        None
    } else {
        let def = state
            .registry
            .get("node.k8s.io", "v1", "runtimeclasses")
            .expect("built in")
            .clone();
        match crate::objects::get(state, &def, None, &class_name).await {
            Ok(c) => Some(c),
            Err(e) if e.code == 404 => {
                return Err(forbidden(format!(
                    "pod rejected: RuntimeClass {class_name:?} not found"
                )))
            }
            Err(e) => return Err(e),
        }
    };
    let spec_overhead = pod
        .pointer("/spec/overhead")
        .and_then(Value::as_object)
        .cloned();
    let class_overhead = class
        .as_ref()
        .and_then(|c| c.pointer("/overhead/podFixed"))
        .and_then(Value::as_object)
        .cloned();
    match (&class_overhead, &spec_overhead) {
        (Some(fixed), Some(given)) if !given.is_empty() && !same_resources(fixed, given) => {
            return Err(forbidden(
                "pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead".into(),
            ))
        }
        (Some(fixed), _) => pod["spec"]["overhead"] = Value::Object(fixed.clone()),
        (None, Some(_)) => return Err(forbidden(
            "pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead"
                .into(),
        )),
        (None, None) => {}
    }
    let Some(scheduling) = class.as_ref().and_then(|c| c.get("scheduling")) else {
        return Ok(());
    };
    if let Some(sel) = scheduling.get("nodeSelector").and_then(Value::as_object) {
        let mut merged = pod
            .pointer("/spec/nodeSelector")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (k, v) in sel {
            if let Some(pv) = merged.get(k).filter(|pv| *pv != v) {
                return Err(forbidden(format!(
                    "conflict: runtimeClass.scheduling.nodeSelector[{k}] = {}; pod.spec.nodeSelector[{k}] = {}",
                    v.as_str().unwrap_or(""),
                    pv.as_str().unwrap_or("")
                )));
            }
            merged.insert(k.clone(), v.clone());
        }
        pod["spec"]["nodeSelector"] = Value::Object(merged);
    }
    if let Some(tols) = scheduling.get("tolerations").and_then(Value::as_array) {
        let mut merged = pod
            .pointer("/spec/tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for t in tols {
            if !merged.contains(t) {
                merged.push(t.clone());
            }
        }
        pod["spec"]["tolerations"] = Value::Array(merged);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_as_upstream() {
        assert!(validate(&json!({"handler": "runc"}), None).is_empty());
        let bad = validate(&json!({"handler": "Bad_Handler"}), None);
        assert_eq!(bad[0].0, "handler");
        assert!(bad[0].2.contains("RFC 1123 label"), "{bad:?}");
        assert_eq!(validate(&json!({}), None)[0].1, "FieldValueRequired");
        let changed = validate(&json!({"handler": "b"}), Some(&json!({"handler": "a"})));
        assert_eq!(changed[0].2, "Invalid value: \"b\": field is immutable");
        let q = validate(
            &json!({"handler": "a", "overhead": {"podFixed": {"cpu": "x1", "memory": "-1Mi"}}}),
            None,
        );
        assert_eq!(q.len(), 2, "{q:?}");
        let t = validate(
            &json!({"handler": "a", "scheduling": {"nodeSelector": {"a/b/c": "x"},
                "tolerations": [{"operator": "Bogus"}, {"key": "k", "effect": "Never"}]}}),
            None,
        );
        assert_eq!(t.len(), 4, "{t:?}");
    }

    #[test]
    fn overheads_compare_as_quantities() {
        let a = json!({"cpu": "100m", "memory": "1Gi"});
        let b = json!({"cpu": "0.1", "memory": "1073741824"});
        let c = json!({"cpu": "200m", "memory": "1Gi"});
        let o = |v: &Value| v.as_object().cloned().unwrap_or_default();
        assert!(same_resources(&o(&a), &o(&b)));
        assert!(!same_resources(&o(&a), &o(&c)));
    }
}
