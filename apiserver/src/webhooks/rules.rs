//! Which webhooks a request goes to: upstream's `rules.Matcher` (operations, API groups,
//! versions, resources with subresources, scope) plus the namespace and object selectors.

use serde_json::Value;

/// What a request is, as the rules see it.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    pub operation: &'a str,
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    /// `""` for the main resource.
    pub subresource: &'a str,
    pub namespaced: bool,
}

/// `pods/status` → (`pods`, `status`); `pods` → (`pods`, ``).
pub fn split_resource(r: &str) -> (&str, &str) {
    r.split_once('/').unwrap_or((r, ""))
}

fn list_has(rule: &Value, field: &str, want: &str) -> bool {
    rule.get(field)
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v == "*" || v == want))
}

/// One `RuleWithOperations` against a request. `any_version`: the webhook's `matchPolicy`
/// is `Equivalent` (kaze serves each group-resource in one version, except custom
/// resources with several; their versions hold the same object, so any version matches).
pub fn rule_matches(rule: &Value, a: &Attrs<'_>, any_version: bool) -> bool {
    let scope_ok = match rule.get("scope").and_then(Value::as_str).unwrap_or("*") {
        "Cluster" => !a.namespaced,
        "Namespaced" => a.namespaced,
        _ => true,
    };
    let resource_ok = rule
        .get("resources")
        .and_then(Value::as_array)
        .is_some_and(|rs| {
            rs.iter().filter_map(Value::as_str).any(|r| {
                let (res, sub) = split_resource(r);
                (res == "*" || res == a.resource) && (sub == "*" || sub == a.subresource)
            })
        });
    scope_ok
        && resource_ok
        && list_has(rule, "operations", a.operation)
        && list_has(rule, "apiGroups", a.group)
        && (any_version || list_has(rule, "apiVersions", a.version))
}

/// Whether a webhook's `rules` select the request: `Exact`, or also (with `matchPolicy:
/// Equivalent`) through another version of the same group and resource, which the caller
/// must find served ([`equivalent_versions`]).
pub fn hook_matches(hook: &Value, a: &Attrs<'_>) -> bool {
    let any_version = hook.get("matchPolicy").and_then(Value::as_str) != Some("Exact");
    rules(hook).any(|r| rule_matches(r, a, any_version))
}

/// Whether a rule names the request's own version.
pub fn matches_exactly(hook: &Value, a: &Attrs<'_>) -> bool {
    rules(hook).any(|r| rule_matches(r, a, false))
}

/// The versions the rules that select the request in any version name, in order.
pub fn equivalent_versions<'h>(hook: &'h Value, a: &Attrs<'_>) -> Vec<&'h str> {
    rules(hook)
        .filter(|r| rule_matches(r, a, true))
        .flat_map(|r| {
            r.get("apiVersions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(Value::as_str)
        .collect()
}

fn rules(hook: &Value) -> impl Iterator<Item = &Value> {
    hook.get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn attrs<'a>(op: &'a str, group: &'a str, resource: &'a str, sub: &'a str) -> Attrs<'a> {
        Attrs {
            operation: op,
            group,
            version: "v1",
            resource,
            subresource: sub,
            namespaced: true,
        }
    }

    fn rule(ops: &[&str], groups: &[&str], resources: &[&str]) -> Value {
        json!({"operations": ops, "apiGroups": groups, "apiVersions": ["v1"], "resources": resources, "scope": "*"})
    }

    #[test]
    fn operations_groups_and_resources() {
        let r = rule(&["CREATE"], &["apps"], &["deployments"]);
        assert!(rule_matches(
            &r,
            &attrs("CREATE", "apps", "deployments", ""),
            false
        ));
        assert!(!rule_matches(
            &r,
            &attrs("UPDATE", "apps", "deployments", ""),
            false
        ));
        assert!(!rule_matches(
            &r,
            &attrs("CREATE", "", "deployments", ""),
            false
        ));
        assert!(!rule_matches(
            &r,
            &attrs("CREATE", "apps", "replicasets", ""),
            false
        ));
        let any = rule(&["*"], &["*"], &["*"]);
        assert!(rule_matches(
            &any,
            &attrs("DELETE", "batch", "jobs", ""),
            false
        ));
    }

    #[test]
    fn subresources_match_only_when_named() {
        let main = rule(&["UPDATE"], &[""], &["pods"]);
        assert!(!rule_matches(
            &main,
            &attrs("UPDATE", "", "pods", "status"),
            false
        ));
        let star = rule(&["UPDATE"], &[""], &["*"]);
        assert!(!rule_matches(
            &star,
            &attrs("UPDATE", "", "pods", "status"),
            false
        ));
        let status = rule(&["UPDATE"], &[""], &["pods/status"]);
        assert!(rule_matches(
            &status,
            &attrs("UPDATE", "", "pods", "status"),
            false
        ));
        assert!(!rule_matches(
            &status,
            &attrs("UPDATE", "", "pods", ""),
            false
        ));
        let all = rule(&["UPDATE"], &[""], &["*/*"]);
        assert!(rule_matches(
            &all,
            &attrs("UPDATE", "", "pods", "status"),
            false
        ));
        assert!(rule_matches(&all, &attrs("UPDATE", "", "pods", ""), false));
        let any_status = rule(&["UPDATE"], &["*"], &["*/status"]);
        assert!(rule_matches(
            &any_status,
            &attrs("UPDATE", "apps", "deployments", "status"),
            false
        ));
        let pods_any = rule(&["UPDATE"], &[""], &["pods/*"]);
        assert!(rule_matches(
            &pods_any,
            &attrs("UPDATE", "", "pods", "ephemeralcontainers"),
            false
        ));
        assert!(rule_matches(
            &pods_any,
            &attrs("UPDATE", "", "pods", ""),
            false
        ));
    }

    #[test]
    fn scope_and_versions() {
        let mut r = rule(&["CREATE"], &[""], &["*"]);
        r["scope"] = json!("Cluster");
        assert!(!rule_matches(
            &r,
            &attrs("CREATE", "", "configmaps", ""),
            false
        ));
        let mut ns = attrs("CREATE", "", "namespaces", "");
        ns.namespaced = false;
        assert!(rule_matches(&r, &ns, false));
        r["scope"] = json!("Namespaced");
        assert!(!rule_matches(&r, &ns, false));

        let v2 = json!({"operations": ["CREATE"], "apiGroups": ["example.com"], "apiVersions": ["v2"], "resources": ["widgets"]});
        let req = attrs("CREATE", "example.com", "widgets", "");
        assert!(!rule_matches(&v2, &req, false), "Exact wants the version");
        assert!(
            rule_matches(&v2, &req, true),
            "Equivalent matches another version"
        );
        let hook = json!({"matchPolicy": "Exact", "rules": [v2.clone()]});
        assert!(!hook_matches(&hook, &req));
        let hook = json!({"rules": [v2]});
        assert!(hook_matches(&hook, &req) && !matches_exactly(&hook, &req));
        assert_eq!(equivalent_versions(&hook, &req), ["v2"]);
    }
}
