//! RoleBindings and ClusterRoleBindings as upstream's `SetDefaults_*Binding`/`Subject` and
//! `ValidateRoleBinding`/`ValidateClusterRoleBinding` (+`Update`) default and check them: the
//! role reference (API group, kind, a path-segment name, fixed once created: "cannot change
//! roleRef") and each subject (kind, API group, a ServiceAccount's name and namespace); and
//! Roles' and ClusterRoles' rules as `ValidatePolicyRule` checks them (verbs; API groups and
//! resources, or non-resource URLs, which namespaced rules may not name), with a
//! ClusterRole's aggregation rule naming at least one selector.

use serde_json::{json, Value};

use super::field::{self, go_strings, list, text};
use super::Cause;
use crate::meta::names;

const GROUP: &str = "rbac.authorization.k8s.io";

/// The role reference's and subjects' API groups when left out.
pub fn default_binding(obj: &mut Value) {
    if let Some(r) = obj.get_mut("roleRef").filter(|r| r.is_object()) {
        if text(r, "apiGroup").is_empty() {
            r["apiGroup"] = json!(GROUP);
        }
    }
    let subjects = obj.get_mut("subjects").and_then(Value::as_array_mut);
    for s in subjects.into_iter().flatten() {
        if text(s, "apiGroup").is_empty() && matches!(text(s, "kind"), "User" | "Group") {
            s["apiGroup"] = json!(GROUP);
        }
    }
}

/// How Go prints an `rbac.RoleRef` (three strings).
fn go_role_ref(r: &Value) -> String {
    format!(
        "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}",
        text(r, "apiGroup"),
        text(r, "kind"),
        text(r, "name")
    )
}

pub fn validate_binding(cluster: bool, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let r = obj.get("roleRef").unwrap_or(&Value::Null);
    let group = json!(text(r, "apiGroup"));
    if group != GROUP {
        causes.push(field::not_supported("roleRef.apiGroup", &group, &[GROUP]));
    }
    let kinds: &[&str] = if cluster {
        &["ClusterRole"]
    } else {
        &["Role", "ClusterRole"]
    };
    let kind = text(r, "kind");
    if !kinds.contains(&kind) {
        causes.push(field::not_supported("roleRef.kind", &json!(kind), kinds));
    }
    let name = text(r, "name");
    if name.is_empty() {
        causes.push(field::required("roleRef.name", ""));
    } else {
        causes.extend(field::invalid_each(
            "roleRef.name",
            &json!(name),
            field::path_segment(name),
        ));
    }
    let subjects = obj.get("subjects").and_then(Value::as_array);
    for (i, s) in subjects.into_iter().flatten().enumerate() {
        let at = format!("subjects[{i}]");
        let name = text(s, "name");
        if name.is_empty() {
            causes.push(field::required(&format!("{at}.name"), ""));
        }
        let group = json!(text(s, "apiGroup"));
        match text(s, "kind") {
            "ServiceAccount" => {
                if !name.is_empty() {
                    let path = format!("{at}.name");
                    causes.extend(field::invalid_each(
                        &path,
                        &json!(name),
                        names::dns1123_subdomain(name),
                    ));
                }
                if group != "" {
                    causes.push(field::not_supported(
                        &format!("{at}.apiGroup"),
                        &group,
                        &[""],
                    ));
                }
                if cluster && text(s, "namespace").is_empty() {
                    causes.push(field::required(&format!("{at}.namespace"), ""));
                }
            }
            "User" | "Group" => {
                if group != GROUP {
                    causes.push(field::not_supported(
                        &format!("{at}.apiGroup"),
                        &group,
                        &[GROUP],
                    ));
                }
            }
            other => causes.push(field::not_supported(
                &format!("{at}.kind"),
                &json!(other),
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
    if let Some(old) = old {
        let was = old.get("roleRef").unwrap_or(&Value::Null);
        if ["apiGroup", "kind", "name"]
            .iter()
            .any(|k| text(was, k) != text(r, k))
        {
            causes.push((
                "roleRef".into(),
                "FieldValueInvalid",
                format!("Invalid value: {}: cannot change roleRef", go_role_ref(r)),
            ));
        }
    }
}

/// Upstream's `ValidateRole`/`ValidateClusterRole` past the metadata.
pub fn validate_role(cluster: bool, obj: &Value, causes: &mut Vec<Cause>) {
    for (i, rule) in list(obj, "rules").iter().enumerate() {
        let at = |key: &str| format!("rules[{i}].{key}");
        if list(rule, "verbs").is_empty() {
            causes.push(field::required(
                &at("verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = list(rule, "nonResourceURLs");
        if !urls.is_empty() {
            let invalid = |detail: &str| {
                (
                    at("nonResourceURLs"),
                    "FieldValueInvalid",
                    format!("Invalid value: {}: {detail}", go_strings(urls)),
                )
            };
            if !cluster {
                causes.push(invalid(
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if ["apiGroups", "resources", "resourceNames"]
                .iter()
                .any(|k| !list(rule, k).is_empty())
            {
                causes.push(invalid(
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if list(rule, "apiGroups").is_empty() {
            causes.push(field::required(
                &at("apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if list(rule, "resources").is_empty() {
            causes.push(field::required(
                &at("resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
    if let Some(agg) = obj.get("aggregationRule").filter(|a| a.is_object()) {
        if cluster && list(agg, "clusterRoleSelectors").is_empty() {
            causes.push(field::required(
                "aggregationRule.clusterRoleSelectors",
                "at least one clusterRoleSelector required if aggregationRule is non-nil",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(cluster: bool, obj: Value, old: Option<Value>) -> Vec<String> {
        let mut obj = obj;
        default_binding(&mut obj);
        let mut causes = Vec::new();
        validate_binding(cluster, &obj, old.as_ref(), &mut causes);
        field::render(causes)
    }

    #[test]
    fn bindings_are_defaulted_and_checked_as_upstream() {
        let ok = json!({"roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"},
                         {"kind": "ServiceAccount", "name": "bot", "namespace": "ci"}]});
        let mut defaulted = ok.clone();
        default_binding(&mut defaulted);
        assert_eq!(defaulted["roleRef"]["apiGroup"], GROUP);
        assert_eq!(defaulted["subjects"][0]["apiGroup"], GROUP);
        assert!(defaulted["subjects"][2].get("apiGroup").is_none());
        assert_eq!(messages(true, ok.clone(), None), Vec::<String>::new());
        let bad = json!({"roleRef": {"apiGroup": "example.com", "kind": "Role", "name": "a/b"},
            "subjects": [{"kind": "Robot", "name": "r"}, {"kind": "ServiceAccount", "name": "Bad_SA"},
                         {"kind": "User", "name": ""}]});
        let subdomain = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
        assert_eq!(
            messages(true, bad, None),
            vec![
                r#"roleRef.apiGroup: Unsupported value: "example.com": supported values: "rbac.authorization.k8s.io""#.to_string(),
                r#"roleRef.kind: Unsupported value: "Role": supported values: "ClusterRole""#.into(),
                r#"roleRef.name: Invalid value: "a/b": may not contain '/'"#.into(),
                r#"subjects[0].kind: Unsupported value: "Robot": supported values: "ServiceAccount", "User", "Group""#.into(),
                format!(r#"subjects[1].name: Invalid value: "Bad_SA": {subdomain}"#),
                "subjects[1].namespace: Required value".into(),
                "subjects[2].name: Required value".into(),
            ]
        );
        let mut other = ok.clone();
        other["roleRef"]["name"] = json!("edit");
        let mut stored = ok;
        default_binding(&mut stored);
        assert_eq!(
            messages(false, other, Some(stored)),
            vec![
                r#"roleRef: Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"ClusterRole", Name:"edit"}: cannot change roleRef"#
            ]
        );
    }

    fn role_messages(cluster: bool, obj: Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate_role(cluster, &obj, &mut causes);
        field::render(causes)
    }

    #[test]
    fn role_rules_are_checked_as_upstream() {
        let ok = json!({"rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["web"], "verbs": ["*"]}]});
        assert!(role_messages(false, ok).is_empty());
        let urls = json!({"rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]});
        assert!(role_messages(true, urls.clone()).is_empty());
        assert_eq!(
            role_messages(false, urls),
            vec![
                r#"rules[0].nonResourceURLs: Invalid value: []string{"/metrics"}: namespaced rules cannot apply to non-resource URLs"#
            ]
        );
        let bad = json!({"rules": [
            {"verbs": []},
            {"apiGroups": [""], "resources": ["nodes"], "nonResourceURLs": ["/x"], "verbs": ["get"]}],
            "aggregationRule": {}});
        assert_eq!(
            role_messages(true, bad),
            vec![
                "rules[0].verbs: Required value: verbs must contain at least one value",
                "rules[0].apiGroups: Required value: resource rules must supply at least one api group",
                "rules[0].resources: Required value: resource rules must supply at least one resource",
                r#"rules[1].nonResourceURLs: Invalid value: []string{"/x"}: rules cannot apply to both regular resources and non-resource URLs"#,
                "aggregationRule.clusterRoleSelectors: Required value: at least one clusterRoleSelector required if aggregationRule is non-nil",
            ]
        );
        // an aggregated ClusterRole has no rules of its own to check
        let agg =
            json!({"aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"a": "b"}}]}});
        assert!(role_messages(true, agg).is_empty());
    }
}
