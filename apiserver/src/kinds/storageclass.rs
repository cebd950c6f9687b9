//! StorageClasses as upstream's `ValidateStorageClass`/`ValidateStorageClassUpdate`
//! (`pkg/apis/storage/validation`): a provisioner (a qualified name), known reclaim policy
//! and binding mode, and none of provisioner, parameters, reclaim policy or binding mode
//! changed once created.

use serde_json::{json, Value};

use super::field;
use super::Cause;
use crate::meta::names;

/// Upstream's `validateProvisioner`: field `key` of `obj` is set and, lower-cased, a
/// qualified name (StorageClasses' `provisioner`, VolumeAttributesClasses' `driverName`).
pub fn validate_provisioner(obj: &Value, key: &str, causes: &mut Vec<Cause>) {
    let provisioner = obj.get(key).and_then(Value::as_str).unwrap_or("");
    if provisioner.is_empty() {
        causes.push(field::required(key, ""));
    } else {
        let lower = provisioner.to_lowercase();
        causes.extend(field::invalid_each(
            key,
            &json!(provisioner),
            names::qualified_name(&lower),
        ));
    }
}

/// `Forbidden: updates to <key> are forbidden.` for each of `keys` that changed.
pub fn forbid_updates(obj: &Value, old: &Value, keys: &[&str], causes: &mut Vec<Cause>) {
    for key in keys {
        if obj.get(key) != old.get(key) {
            causes.push(field::forbidden(
                key,
                &format!("updates to {key} are forbidden."),
            ));
        }
    }
}

pub fn validate(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    validate_provisioner(obj, "provisioner", causes);
    if obj.get("reclaimPolicy").is_some_and(|p| !p.is_null()) {
        causes.extend(field::one_of(
            obj,
            "reclaimPolicy",
            "",
            &["Delete", "Retain"],
        ));
    }
    let modes = ["Immediate", "WaitForFirstConsumer"];
    causes.extend(field::one_of(obj, "volumeBindingMode", "", &modes));
    let Some(old) = old else { return };
    forbid_updates(
        obj,
        old,
        &["parameters", "provisioner", "reclaimPolicy"],
        causes,
    );
    if obj.get("volumeBindingMode") != old.get("volumeBindingMode") {
        let mode = obj.get("volumeBindingMode").unwrap_or(&Value::Null);
        causes.push(field::invalid(
            "volumeBindingMode",
            mode,
            "field is immutable",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(obj: Value, old: Option<Value>) -> Vec<String> {
        let mut causes = Vec::new();
        validate(&obj, old.as_ref(), &mut causes);
        field::render(causes)
    }

    #[test]
    fn classes_are_checked_and_fixed_as_upstream() {
        let ok = json!({"provisioner": "kaze.io/local-path", "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer", "parameters": {"a": "b"}});
        assert_eq!(messages(ok.clone(), None), Vec::<String>::new());
        let bad =
            json!({"provisioner": "", "reclaimPolicy": "Recycle", "volumeBindingMode": "Later"});
        assert_eq!(
            messages(bad, None),
            vec![
                "provisioner: Required value",
                r#"reclaimPolicy: Unsupported value: "Recycle": supported values: "Delete", "Retain""#,
                r#"volumeBindingMode: Unsupported value: "Later": supported values: "Immediate", "WaitForFirstConsumer""#,
            ]
        );
        let mut changed = ok.clone();
        changed["parameters"] = json!({"a": "c"});
        changed["reclaimPolicy"] = json!("Retain");
        changed["volumeBindingMode"] = json!("Immediate");
        assert_eq!(
            messages(changed, Some(ok)),
            vec![
                "parameters: Forbidden: updates to parameters are forbidden.",
                "reclaimPolicy: Forbidden: updates to reclaimPolicy are forbidden.",
                r#"volumeBindingMode: Invalid value: "Immediate": field is immutable"#,
            ]
        );
    }
}
