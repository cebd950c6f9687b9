//! Defaults and validation of `APIService` (apiregistration.k8s.io/v1), as upstream's
//! `SetDefaults_ServiceReference`, `ValidateAPIService` and `ValidateAPIServiceStatus`.

use serde_json::{json, Value};

use crate::kinds::Cause;

/// Upstream's v1 defaults: a service reference's port is 443.
pub fn default(obj: &mut Value) {
    if let Some(svc) = obj
        .pointer_mut("/spec/service")
        .and_then(Value::as_object_mut)
    {
        if svc.get("port").is_none_or(Value::is_null) {
            svc.insert("port".into(), json!(443));
        }
    }
}

fn invalid(field: &str, shown: &str, msg: &str) -> Cause {
    (
        field.to_string(),
        "FieldValueInvalid",
        format!("Invalid value: {shown}: {msg}"),
    )
}

fn required(field: &str, msg: &str) -> Cause {
    let m = if msg.is_empty() {
        "Required value".to_string()
    } else {
        format!("Required value: {msg}")
    };
    (field.to_string(), "FieldValueRequired", m)
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// Upstream's `path.IsValidPathSegmentName`: what an object name may not be or hold.
fn path_segment_problem(name: &str) -> Option<String> {
    if name == "." || name == ".." {
        return Some(format!("may not be '{name}'"));
    }
    ["/", "%"]
        .iter()
        .find(|bad| name.contains(*bad))
        .map(|bad| format!("may not contain '{bad}'"))
}

/// Validate an APIService (after defaulting): the object as it will be stored.
pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    let name = str_at(obj, "/metadata/name");
    let group = str_at(obj, "/spec/group");
    let version = str_at(obj, "/spec/version");
    let wanted = format!("{version}.{group}");
    if let Some(problem) = path_segment_problem(name) {
        causes.push(invalid("metadata.name", &format!("{name:?}"), &problem));
    } else if name != wanted {
        causes.push(invalid(
            "metadata.name",
            &format!("{name:?}"),
            &format!("must be `spec.version+\".\"+spec.group`: {wanted:?}"),
        ));
    }
    if group.is_empty() && version != "v1" {
        causes.push(required(
            "spec.group",
            "only v1 may have an empty group and it better be legacy kube",
        ));
    }
    if !group.is_empty() {
        for msg in crate::meta::names::dns1123_subdomain(group) {
            causes.push(invalid("spec.group", &format!("{group:?}"), &msg));
        }
    }
    if let Some(msg) = crate::crd::validation::dns1035(version) {
        causes.push(invalid("spec.version", &format!("{version:?}"), &msg));
    }
    let number = |p: &str| obj.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let group_priority = number("/spec/groupPriorityMinimum");
    if !(1..=20000).contains(&group_priority) {
        causes.push(invalid(
            "spec.groupPriorityMinimum",
            &group_priority.to_string(),
            "must be positive and less than 20000",
        ));
    }
    let version_priority = number("/spec/versionPriority");
    if !(1..=1000).contains(&version_priority) {
        causes.push(invalid(
            "spec.versionPriority",
            &version_priority.to_string(),
            "must be positive and less than 1000",
        ));
    }
    let ca_bundle = ca_bundle_len(obj);
    let insecure = obj.pointer("/spec/insecureSkipTLSVerify") == Some(&Value::Bool(true));
    match obj.pointer("/spec/service").filter(|s| !s.is_null()) {
        None => {
            if ca_bundle > 0 {
                causes.push(invalid(
                    "spec.caBundle",
                    &format!("\"{ca_bundle} bytes\""),
                    "local APIServices may not have a caBundle",
                ));
            }
            if insecure {
                causes.push(invalid(
                    "spec.insecureSkipTLSVerify",
                    "true",
                    "local APIServices may not have insecureSkipTLSVerify",
                ));
            }
        }
        Some(svc) => {
            if str_at(svc, "/namespace").is_empty() {
                causes.push(required("spec.service.namespace", ""));
            }
            if str_at(svc, "/name").is_empty() {
                causes.push(required("spec.service.name", ""));
            }
            let port = svc.get("port").and_then(Value::as_i64).unwrap_or(0);
            if !(1..=65535).contains(&port) {
                causes.push(invalid(
                    "spec.service.port",
                    &port.to_string(),
                    "port is not valid: must be between 1 and 65535, inclusive",
                ));
            }
            if insecure && ca_bundle > 0 {
                causes.push(invalid(
                    "spec.insecureSkipTLSVerify",
                    "true",
                    "may not be true if caBundle is present",
                ));
            }
        }
    }
    validate_status(obj, causes);
}

/// The decoded length of `spec.caBundle` (base64 in JSON).
fn ca_bundle_len(obj: &Value) -> usize {
    use base64::Engine;
    let b64 = str_at(obj, "/spec/caBundle");
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_or(b64.len(), |b| b.len())
}

/// Upstream's `ValidateAPIServiceStatus`: every condition has a type and a status of
/// True, False or Unknown.
fn validate_status(obj: &Value, causes: &mut Vec<Cause>) {
    let conditions = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, c) in conditions.iter().enumerate() {
        let status = str_at(c, "/status");
        if !matches!(status, "True" | "False" | "Unknown") {
            causes.push((
                format!("status.conditions[{i}].status"),
                "FieldValueNotSupported",
                format!("Unsupported value: {status:?}: supported values: \"False\", \"True\", \"Unknown\""),
            ));
        }
        if str_at(c, "/type").is_empty() {
            causes.push(required(&format!("status.conditions[{i}].type"), ""));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> Value {
        json!({"metadata": {"name": "v1alpha1.wardle.example.com"}, "spec": {
            "group": "wardle.example.com", "version": "v1alpha1",
            "groupPriorityMinimum": 1000, "versionPriority": 15,
            "service": {"namespace": "wardle", "name": "api"},
            "caBundle": "LS0tLS1CRUdJTg=="}})
    }

    fn problems(mut obj: Value) -> Vec<String> {
        default(&mut obj);
        let mut causes = Vec::new();
        validate(&obj, &mut causes);
        causes
            .into_iter()
            .map(|(f, _, m)| format!("{f}: {m}"))
            .collect()
    }

    #[test]
    fn a_valid_remote_and_local_pass_and_the_port_defaults_to_443() {
        let mut obj = remote();
        default(&mut obj);
        assert_eq!(obj.pointer("/spec/service/port"), Some(&json!(443)));
        assert_eq!(problems(remote()), Vec::<String>::new());
        let local = json!({"metadata": {"name": "v1."}, "spec": {"version": "v1",
            "groupPriorityMinimum": 18000, "versionPriority": 1}});
        assert_eq!(problems(local), Vec::<String>::new());
    }

    #[test]
    fn upstreams_messages() {
        let mut bad = remote();
        bad["metadata"]["name"] = json!("wardle");
        bad["spec"]["groupPriorityMinimum"] = json!(0);
        bad["spec"]["versionPriority"] = json!(1001);
        bad["spec"]["insecureSkipTLSVerify"] = json!(true);
        bad["spec"]["service"] = json!({"port": 70000});
        assert_eq!(
            problems(bad),
            [
                "metadata.name: Invalid value: \"wardle\": must be `spec.version+\".\"+spec.group`: \"v1alpha1.wardle.example.com\"",
                "spec.groupPriorityMinimum: Invalid value: 0: must be positive and less than 20000",
                "spec.versionPriority: Invalid value: 1001: must be positive and less than 1000",
                "spec.service.namespace: Required value",
                "spec.service.name: Required value",
                "spec.service.port: Invalid value: 70000: port is not valid: must be between 1 and 65535, inclusive",
                "spec.insecureSkipTLSVerify: Invalid value: true: may not be true if caBundle is present",
            ]
        );
        let versionless = json!({"metadata": {"name": "."}, "spec": {
            "groupPriorityMinimum": 20000, "versionPriority": 1}});
        let found = problems(versionless);
        assert_eq!(
            found[0],
            "metadata.name: Invalid value: \".\": may not be '.'"
        );
        assert_eq!(
            found[1],
            "spec.group: Required value: only v1 may have an empty group and it better be legacy kube"
        );
        assert!(
            found[2].starts_with("spec.version: Invalid value: \"\": a DNS-1035 label"),
            "{found:?}"
        );
        let local = json!({"metadata": {"name": "v1.Apps"}, "spec": {"group": "Apps", "version": "v1",
            "groupPriorityMinimum": 1, "versionPriority": 1, "caBundle": "YWJj", "insecureSkipTLSVerify": true}});
        let found = problems(local);
        assert!(
            found[0]
                .starts_with("spec.group: Invalid value: \"Apps\": a lowercase RFC 1123 subdomain"),
            "{found:?}"
        );
        assert_eq!(
            &found[1..],
            [
                "spec.caBundle: Invalid value: \"3 bytes\": local APIServices may not have a caBundle",
                "spec.insecureSkipTLSVerify: Invalid value: true: local APIServices may not have insecureSkipTLSVerify",
            ]
        );
    }

    #[test]
    fn neither_ca_bundle_nor_insecure_is_allowed_as_upstream() {
        let mut obj = remote();
        obj["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("caBundle");
        assert_eq!(problems(obj), Vec::<String>::new());
    }

    #[test]
    fn conditions_need_a_type_and_a_known_status() {
        let mut obj = remote();
        obj["status"] =
            json!({"conditions": [{"type": "Available", "status": "Maybe"}, {"status": "True"}]});
        assert_eq!(
            problems(obj),
            [
                "status.conditions[0].status: Unsupported value: \"Maybe\": supported values: \"False\", \"True\", \"Unknown\"",
                "status.conditions[1].type: Required value",
            ]
        );
    }
}
