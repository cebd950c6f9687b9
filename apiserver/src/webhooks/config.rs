//! Defaults and validation of `MutatingWebhookConfiguration` and
//! `ValidatingWebhookConfiguration` (admissionregistration.k8s.io/v1), as upstream's
//! `SetDefaults_*` and `ValidateValidatingWebhookConfiguration`/`...Mutating...` for v1.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::kinds::Cause;
use crate::selector::LabelSelector;

fn set_default(obj: &mut Value, field: &str, value: Value) {
    if let Some(m) = obj.as_object_mut() {
        if m.get(field).is_none_or(Value::is_null) {
            m.insert(field.into(), value);
        }
    }
}

/// Upstream's v1 defaults, webhook by webhook.
pub fn default(obj: &mut Value, mutating: bool) {
    let Some(hooks) = obj.get_mut("webhooks").and_then(Value::as_array_mut) else {
        return;
    };
    for h in hooks {
        set_default(h, "failurePolicy", json!("Fail"));
        set_default(h, "matchPolicy", json!("Equivalent"));
        set_default(h, "namespaceSelector", json!({}));
        set_default(h, "objectSelector", json!({}));
        set_default(h, "timeoutSeconds", json!(10));
        if mutating {
            set_default(h, "reinvocationPolicy", json!("Never"));
        }
        if let Some(svc) = h
            .pointer_mut("/clientConfig/service")
            .filter(|s| s.is_object())
        {
            set_default(svc, "port", json!(443));
        }
        if let Some(rules) = h.get_mut("rules").and_then(Value::as_array_mut) {
            for r in rules {
                set_default(r, "scope", json!("*"));
            }
        }
    }
}

fn required(field: &str, msg: &str) -> Cause {
    let m = if msg.is_empty() {
        "Required value".to_string()
    } else {
        format!("Required value: {msg}")
    };
    (field.to_string(), "FieldValueRequired", m)
}

fn invalid(field: &str, value: &Value, msg: &str) -> Cause {
    (
        field.to_string(),
        "FieldValueInvalid",
        format!("Invalid value: {}: {msg}", value_str(value)),
    )
}

fn not_supported(field: &str, value: &str, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    (
        field.to_string(),
        "FieldValueNotSupported",
        format!(
            "Unsupported value: {value:?}: supported values: {}",
            list.join(", ")
        ),
    )
}

/// A value as upstream's field errors print it (strings quoted, numbers bare).
fn value_str(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn strs(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn one_of(h: &Value, field: &str, path: &str, allowed: &[&str], causes: &mut Vec<Cause>) {
    if let Some(v) = h.get(field).and_then(Value::as_str) {
        if !allowed.contains(&v) {
            causes.push(not_supported(&format!("{path}.{field}"), v, allowed));
        }
    }
}

/// Validate a configuration (after defaulting); `mutating` selects the kind.
pub fn validate(obj: &Value, mutating: bool, causes: &mut Vec<Cause>) {
    let hooks = obj
        .get("webhooks")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut names = HashSet::new();
    for (i, h) in hooks.iter().enumerate() {
        let path = format!("webhooks[{i}]");
        let name = h.get("name").and_then(Value::as_str).unwrap_or("");
        validate_name(name, &format!("{path}.name"), causes);
        if !name.is_empty() && !names.insert(name) {
            causes.push((
                format!("{path}.name"),
                "FieldValueDuplicate",
                format!("Duplicate value: {name:?}"),
            ));
        }
        validate_hook(h, &path, mutating, causes);
    }
}

/// Upstream's `IsFullyQualifiedName`.
fn validate_name(name: &str, path: &str, causes: &mut Vec<Cause>) {
    if name.is_empty() {
        causes.push(required(path, ""));
        return;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if let Err(msg) = crate::meta::check_subdomain(name) {
        causes.push(invalid(path, &json!(name), &msg));
    } else if name.split('.').count() < 3 {
        causes.push(invalid(
            path,
            &json!(name),
            "should be a domain with at least three segments separated by dots",
        ));
    }
}

fn validate_hook(h: &Value, path: &str, mutating: bool, causes: &mut Vec<Cause>) {
    let versions = strs(h.get("admissionReviewVersions"));
    let avp = format!("{path}.admissionReviewVersions");
    if versions.is_empty() {
        causes.push(required(&avp, "must specify one of v1, v1beta1"));
    } else {
        let mut seen = HashSet::new();
        for (j, v) in versions.iter().enumerate() {
            if !seen.insert(*v) {
                causes.push(invalid(
                    &format!("{avp}[{j}]"),
                    &json!(v),
                    "duplicate version",
                ));
            }
        }
        if !versions.iter().any(|v| matches!(*v, "v1" | "v1beta1")) {
            causes.push(invalid(
                &avp,
                &json!(versions),
                "must include at least one of v1, v1beta1",
            ));
        }
    }
    match h.get("sideEffects").and_then(Value::as_str).unwrap_or("") {
        "" => causes.push(required(
            &format!("{path}.sideEffects"),
            "must specify one of None, NoneOnDryRun",
        )),
        "None" | "NoneOnDryRun" => {}
        other => causes.push(not_supported(
            &format!("{path}.sideEffects"),
            other,
            &["None", "NoneOnDryRun"],
        )),
    }
    if let Some(t) = h.get("timeoutSeconds").and_then(Value::as_i64) {
        if !(1..=30).contains(&t) {
            causes.push(invalid(
                &format!("{path}.timeoutSeconds"),
                &json!(t),
                "the timeout value must be between 1 and 30 seconds",
            ));
        }
    }
    one_of(h, "failurePolicy", path, &["Fail", "Ignore"], causes);
    one_of(h, "matchPolicy", path, &["Equivalent", "Exact"], causes);
    if mutating {
        one_of(
            h,
            "reinvocationPolicy",
            path,
            &["IfNeeded", "Never"],
            causes,
        );
    }
    for sel in ["namespaceSelector", "objectSelector"] {
        if let Some(s) = h.get(sel).filter(|s| !s.is_null()) {
            if let Err(msg) = LabelSelector::from_object(s) {
                causes.push(invalid(&format!("{path}.{sel}"), s, &msg));
            }
        }
    }
    super::conditions::validate(
        h.get("matchConditions"),
        &format!("{path}.matchConditions"),
        super::conditions::WEBHOOK_VARS,
        causes,
    );
    validate_client_config(
        h.get("clientConfig"),
        &format!("{path}.clientConfig"),
        causes,
    );
    for (j, r) in h
        .get("rules")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        validate_rule(r, &format!("{path}.rules[{j}]"), causes);
    }
}

fn validate_client_config(cc: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let url = cc.and_then(|c| c.get("url")).and_then(Value::as_str);
    let service = cc.and_then(|c| c.get("service")).filter(|s| s.is_object());
    match (url, service) {
        (Some(url), None) => validate_url(url, &format!("{path}.url"), causes),
        (None, Some(svc)) => validate_service(svc, &format!("{path}.service"), causes),
        _ => causes.push(required(path, "exactly one of url or service is required")),
    }
}

/// Upstream's `ValidateWebhookURL` with `forceHttps`.
fn validate_url(url: &str, path: &str, causes: &mut Vec<Cause>) {
    let Ok(uri) = url.parse::<axum::http::Uri>() else {
        causes.push(invalid(path, &json!(url), "url must be a valid URL"));
        return;
    };
    let scheme = uri.scheme_str().unwrap_or("");
    if scheme != "https" {
        causes.push(invalid(
            path,
            &json!(scheme),
            "'https' is the only allowed URL scheme",
        ));
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    if let Some((user, _)) = authority.split_once('@') {
        causes.push(invalid(
            path,
            &json!(user),
            "user information is not permitted in the URL",
        ));
    }
    if uri.host().unwrap_or("").is_empty() {
        causes.push(invalid(path, &json!(""), "host must be specified"));
    }
    if let Some((_, fragment)) = url.split_once('#') {
        causes.push(invalid(
            path,
            &json!(fragment),
            "fragments are not permitted in the URL",
        ));
    }
    if let Some(q) = uri.query() {
        causes.push(invalid(
            path,
            &json!(q),
            "query parameters are not permitted in the URL",
        ));
    }
}

/// Upstream's `ValidateWebhookService`.
fn validate_service(svc: &Value, path: &str, causes: &mut Vec<Cause>) {
    for f in ["name", "namespace"] {
        if svc.get(f).and_then(Value::as_str).unwrap_or("").is_empty() {
            causes.push(required(
                &format!("{path}.{f}"),
                &format!("service {f} is required"),
            ));
        }
    }
    if let Some(port) = svc.get("port").and_then(Value::as_i64) {
        if !(1..=65535).contains(&port) {
            causes.push(invalid(
                &format!("{path}.port"),
                &json!(port),
                "port is not valid: must be between 1 and 65535, inclusive",
            ));
        }
    }
    if let Some(p) = svc.get("path").and_then(Value::as_str) {
        let pp = format!("{path}.path");
        if p.is_empty() || p == "/" {
            // upstream accepts both
        } else if !p.starts_with('/') {
            causes.push(invalid(&pp, &json!(p), "must start with a '/'"));
        } else if p.split('/').skip(1).any(str::is_empty) {
            causes.push(invalid(&pp, &json!(p), "segment[1] may not be empty"));
        }
    }
}

const OPERATIONS: &[&str] = &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"];

/// Upstream's `ValidateRuleWithOperations` and `validateRule` (with `allowSubResource`).
fn validate_rule(r: &Value, path: &str, causes: &mut Vec<Cause>) {
    let ops = strs(r.get("operations"));
    if ops.is_empty() {
        causes.push(required(&format!("{path}.operations"), ""));
    }
    if ops.len() > 1 && ops.contains(&"*") {
        causes.push(invalid(
            &format!("{path}.operations"),
            &json!(ops),
            "if '*' is present, must not specify other operations",
        ));
    }
    for (k, op) in ops.iter().enumerate() {
        if !OPERATIONS.contains(op) {
            causes.push(not_supported(
                &format!("{path}.operations[{k}]"),
                op,
                OPERATIONS,
            ));
        }
    }
    for (field, what) in [("apiGroups", "API groups"), ("apiVersions", "API versions")] {
        let list = strs(r.get(field));
        let fp = format!("{path}.{field}");
        if list.is_empty() {
            causes.push(required(&fp, ""));
        }
        if list.len() > 1 && list.contains(&"*") {
            causes.push(invalid(
                &fp,
                &json!(list),
                &format!("if '*' is present, must not specify other {what}"),
            ));
        }
        if field == "apiVersions" {
            for (k, v) in list.iter().enumerate() {
                if v.is_empty() {
                    causes.push(required(&format!("{fp}[{k}]"), ""));
                }
            }
        }
    }
    let resources = strs(r.get("resources"));
    let rp = format!("{path}.resources");
    if resources.is_empty() {
        causes.push(required(&rp, ""));
    }
    let mut seen = HashSet::new();
    for (k, res) in resources.iter().enumerate() {
        let (main, sub) = super::rules::split_resource(res);
        if main.is_empty() {
            causes.push(required(&format!("{rp}[{k}]"), ""));
        }
        if res.contains('/') && sub.is_empty() {
            causes.push(invalid(
                &format!("{rp}[{k}]"),
                &json!(res),
                "empty subresource",
            ));
        }
        if !seen.insert(*res) {
            causes.push(invalid(
                &format!("{rp}[{k}]"),
                &json!(res),
                "duplicate resource",
            ));
        }
    }
    let has = |r: &str| resources.contains(&r);
    if has("*/*") && resources.len() > 1 {
        causes.push(invalid(
            &rp,
            &json!(resources),
            "if '*/*' is present, must not specify other resources",
        ));
    } else if has("*") && resources.iter().any(|r| !r.contains('/') && *r != "*") {
        causes.push(invalid(
            &rp,
            &json!(resources),
            "if '*' is present, must not specify other resources without subresources",
        ));
    }
    if let Some(scope) = r.get("scope").and_then(Value::as_str) {
        let allowed = ["*", "Cluster", "Namespaced"];
        if !allowed.contains(&scope) {
            causes.push(not_supported(&format!("{path}.scope"), scope, &allowed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(extra: Value) -> Value {
        let mut h = json!({
            "name": "a.example.com", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"url": "https://127.0.0.1:8443/x"},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            h[k] = v;
        }
        h
    }

    fn errors(hooks: Vec<Value>) -> Vec<(String, String)> {
        let mut obj = json!({ "webhooks": hooks });
        default(&mut obj, true);
        let mut causes = Vec::new();
        validate(&obj, true, &mut causes);
        causes.into_iter().map(|(f, _, m)| (f, m)).collect()
    }

    #[test]
    fn defaults_are_upstreams() {
        let mut obj = json!({"webhooks": [hook(json!({"clientConfig": {"service": {"namespace": "n", "name": "s"}}}))]});
        default(&mut obj, true);
        let h = &obj["webhooks"][0];
        assert_eq!(h["failurePolicy"], "Fail");
        assert_eq!(h["matchPolicy"], "Equivalent");
        assert_eq!(h["namespaceSelector"], json!({}));
        assert_eq!(h["objectSelector"], json!({}));
        assert_eq!(h["timeoutSeconds"], 10);
        assert_eq!(h["reinvocationPolicy"], "Never");
        assert_eq!(h["clientConfig"]["service"]["port"], 443);
        assert_eq!(h["rules"][0]["scope"], "*");
    }

    #[test]
    fn a_good_webhook_is_valid() {
        assert_eq!(errors(vec![hook(json!({}))]), vec![]);
    }

    #[test]
    fn bad_fields_are_named_with_their_paths() {
        let got = errors(vec![
            hook(json!({"name": "short.name"})),
            hook(
                json!({"name": "a.example.com", "sideEffects": "Some", "timeoutSeconds": 31,
                        "admissionReviewVersions": ["v2"], "clientConfig": {"url": "http://x.example.com/a?b=c"}}),
            ),
            hook(json!({"name": "c.example.com", "clientConfig": {},
                        "rules": [{"operations": ["*", "CREATE"], "apiGroups": [], "apiVersions": ["v1"], "resources": ["*/*", "pods"], "scope": "Everywhere"}]})),
        ]);
        let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "webhooks[0].name",
                "webhooks[1].admissionReviewVersions",
                "webhooks[1].sideEffects",
                "webhooks[1].timeoutSeconds",
                "webhooks[1].clientConfig.url",
                "webhooks[1].clientConfig.url",
                "webhooks[2].clientConfig",
                "webhooks[2].rules[0].operations",
                "webhooks[2].rules[0].apiGroups",
                "webhooks[2].rules[0].resources",
                "webhooks[2].rules[0].scope",
            ],
            "{got:?}"
        );
        assert!(got[0]
            .1
            .contains("should be a domain with at least three segments separated by dots"));
        assert_eq!(
            got[3].1,
            "Invalid value: 31: the timeout value must be between 1 and 30 seconds"
        );
        assert!(got[4].1.contains("'https' is the only allowed URL scheme"));
        assert!(got[5].1.contains("query parameters are not permitted"));
        assert_eq!(
            got[6].1,
            "Required value: exactly one of url or service is required"
        );
    }

    #[test]
    fn duplicate_names_and_bad_match_conditions_are_refused() {
        let got = errors(vec![
            hook(json!({})),
            hook(
                json!({"matchConditions": [{"name": "x", "expression": "true"}, {"name": "y", "expression": "nope"}]}),
            ),
        ]);
        assert_eq!(
            got,
            [
                (
                    "webhooks[1].name".to_string(),
                    "Duplicate value: \"a.example.com\"".to_string()
                ),
                (
                    "webhooks[1].matchConditions[1].expression".to_string(),
                    "Invalid value: \"nope\": compilation failed: ERROR: <input>:1:1: undeclared reference to 'nope' (in container '')".to_string()
                ),
            ]
        );
    }
}
