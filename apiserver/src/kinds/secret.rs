//! ConfigMaps and Secrets as upstream's `ValidateConfigMap`/`ValidateSecret` (and their
//! updates) check them, and `stringData`, which upstream's conversion merges into `data`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

use super::{invalid, required, Cause};
use crate::meta::names;

/// Upstream's `MaxSecretSize`, also the limit on a ConfigMap's data.
const MAX_SIZE: usize = 1024 * 1024;

/// The `kubernetes.io/service-account.name` annotation a token Secret names its account by.
pub const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";

/// `stringData` is write-only: each of its keys replaces `data`'s, base64-encoded, and the
/// field itself is not kept (upstream's `Convert_v1_Secret_To_core_Secret`).
pub fn merge_string_data(obj: &mut Value) {
    let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    if !obj.get("data").is_some_and(Value::is_object) {
        obj["data"] = Value::Object(Map::new());
    }
    for (k, v) in strings {
        let text = v.as_str().unwrap_or_default();
        obj["data"][k] = Value::String(STANDARD.encode(text));
    }
}

fn too_long(field: &str) -> Cause {
    (
        field.to_string(),
        "FieldValueTooLong",
        format!("Too long: may not be more than {MAX_SIZE} bytes"),
    )
}

fn forbidden(field: &str, msg: &str) -> Cause {
    (
        field.to_string(),
        "FieldValueForbidden",
        format!("Forbidden: {msg}"),
    )
}

/// The bytes of `data[key]` (base64 in JSON).
fn bytes_of(obj: &Value, key: &str) -> Option<Vec<u8>> {
    obj.get("data")?
        .get(key)?
        .as_str()
        .and_then(|b64| STANDARD.decode(b64).ok())
}

/// Keys, total size, `immutable`, and a Secret's type's required keys.
pub fn validate(kind: &str, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let fields: &[&str] = if kind == "Secret" {
        &["data"]
    } else {
        &["data", "binaryData"]
    };
    let mut size = 0;
    for field in fields {
        for (k, v) in obj
            .get(*field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            causes.extend(names::invalid_causes(
                &format!("{field}[{k}]"),
                k,
                names::config_key(k),
            ));
            if *field == "binaryData" && obj.get("data").and_then(|d| d.get(k)).is_some() {
                causes.push(invalid(
                    &format!("data[{k}]"),
                    format!("Invalid value: {k:?}: duplicate of key present in binaryData"),
                ));
            }
            size += match (kind, *field) {
                ("ConfigMap", "data") => v.as_str().map_or(0, str::len),
                _ => v
                    .as_str()
                    .and_then(|b| STANDARD.decode(b).ok())
                    .map_or(0, |b| b.len()),
            };
        }
    }
    if size > MAX_SIZE {
        causes.push(too_long(if kind == "Secret" { "data" } else { "" }));
    }
    if kind == "Secret" {
        validate_type(obj, causes);
    }
    let Some(old) = old else {
        return;
    };
    if kind == "Secret" && old.get("type") != obj.get("type") {
        let shown = obj.get("type").and_then(Value::as_str).unwrap_or_default();
        causes.push(invalid(
            "type",
            format!("Invalid value: {shown:?}: field is immutable"),
        ));
    }
    if old.get("immutable") == Some(&Value::Bool(true)) {
        let msg = "field is immutable when `immutable` is set";
        if obj.get("immutable") != Some(&Value::Bool(true)) {
            causes.push(forbidden("immutable", msg));
        }
        for field in fields {
            if old.get(*field) != obj.get(*field) {
                causes.push(forbidden(field, msg));
            }
        }
    }
}

/// The keys each built-in Secret type requires (upstream's `ValidateSecret`).
fn validate_type(obj: &Value, causes: &mut Vec<Cause>) {
    let has = |key: &str| bytes_of(obj, key).is_some_and(|b| !b.is_empty());
    let ty = obj.get("type").and_then(Value::as_str).unwrap_or("Opaque");
    let json_key = |key: &str, causes: &mut Vec<Cause>| match bytes_of(obj, key) {
        None => causes.push(required(&format!("data[{key}]"))),
        Some(b) => {
            if let Err(e) = serde_json::from_slice::<Value>(&b) {
                causes.push(invalid(
                    &format!("data[{key}]"),
                    format!("Invalid value: \"<secret contents redacted>\": {e}"),
                ));
            }
        }
    };
    match ty {
        "kubernetes.io/service-account-token" => {
            let named = obj
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(SA_NAME_ANNOTATION))
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            if !named {
                causes.push(required(&format!(
                    "metadata.annotations[{SA_NAME_ANNOTATION}]"
                )));
            }
        }
        "kubernetes.io/dockercfg" => json_key(".dockercfg", causes),
        "kubernetes.io/dockerconfigjson" => json_key(".dockerconfigjson", causes),
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            causes.push(required("data[username]"));
            causes.push(required("data[password]"));
        }
        "kubernetes.io/ssh-auth" if !has("ssh-privatekey") => {
            causes.push(required("data[ssh-privatekey]"));
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if bytes_of(obj, key).is_none() {
                    causes.push(required(&format!("data[{key}]")));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn causes(kind: &str, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        let mut c = Vec::new();
        validate(kind, obj, old, &mut c);
        c
    }

    #[test]
    fn string_data_replaces_data_keys_and_is_not_kept() {
        let mut s =
            json!({"data": {"a": "eA==", "b": "eQ=="}, "stringData": {"b": "new", "c": "ü"}});
        merge_string_data(&mut s);
        assert_eq!(s, json!({"data": {"a": "eA==", "b": "bmV3", "c": "w7w="}}));
    }

    #[test]
    fn types_require_their_keys() {
        let tls = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}});
        let c = causes("Secret", &tls, None);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, "data[tls.key]");
        let token = json!({"type": "kubernetes.io/service-account-token"});
        assert_eq!(
            causes("Secret", &token, None)[0].0,
            "metadata.annotations[kubernetes.io/service-account.name]"
        );
        let docker = json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": STANDARD.encode("{not json")}});
        assert!(causes("Secret", &docker, None)[0].2.contains("redacted"));
        assert!(causes(
            "Secret",
            &json!({"type": "kubernetes.io/basic-auth", "data": {"password": "eA=="}}),
            None
        )
        .is_empty());
    }

    #[test]
    fn immutable_objects_keep_their_data_and_type() {
        let old = json!({"immutable": true, "data": {"a": "b"}});
        let edited = json!({"immutable": true, "data": {"a": "c"}});
        let c = causes("ConfigMap", &edited, Some(&old));
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].0, "data");
        assert_eq!(c[0].1, "FieldValueForbidden");
        let unset = json!({"immutable": false, "data": {"a": "b"}});
        assert_eq!(causes("ConfigMap", &unset, Some(&old))[0].0, "immutable");
        // labels may still change: only data and immutable are compared
        assert!(causes("ConfigMap", &old, Some(&old)).is_empty());
        let retyped = json!({"type": "kubernetes.io/basic-auth", "data": {"username": "eA=="}});
        let c = causes(
            "Secret",
            &retyped,
            Some(&json!({"type": "Opaque", "data": {"username": "eA=="}})),
        );
        assert_eq!(c[0].0, "type");
    }

    #[test]
    fn keys_and_size() {
        let c = causes(
            "Secret",
            &json!({"data": {"..x": "eA==", "a/b": "eA=="}}),
            None,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        let big = STANDARD.encode(vec![0u8; MAX_SIZE + 1]);
        let c = causes("Secret", &json!({"data": {"a": big}}), None);
        assert_eq!(c, vec![too_long("data")]);
    }
}
