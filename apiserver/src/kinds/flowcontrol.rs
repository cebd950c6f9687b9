//! FlowSchemas and PriorityLevelConfigurations as upstream's
//! `pkg/apis/flowcontrol/validation` and v1 defaults have them. The objects' upkeep (the
//! mandatory ones, `Dangling`) is `crate::flowcontrol`.

use serde_json::{json, Value};

use super::field;
use super::Cause;
use crate::meta::names;

/// `SetDefaults_FlowSchemaSpec` and `SetDefaults_PriorityLevelConfiguration` (v1).
pub fn default(kind: &str, obj: &mut Value) {
    let spec = &mut obj["spec"];
    if !spec.is_object() {
        *spec = json!({});
    }
    let zero_or_unset = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || v == 0);
    if kind == "FlowSchema" {
        if zero_or_unset(spec.get("matchingPrecedence")) {
            spec["matchingPrecedence"] = json!(1000);
        }
        return;
    }
    for (key, ncs) in [("limited", 30), ("exempt", 0)] {
        let Some(part) = spec.get_mut(key).filter(|p| p.is_object()) else {
            continue;
        };
        if part
            .get("nominalConcurrencyShares")
            .is_none_or(Value::is_null)
        {
            part["nominalConcurrencyShares"] = json!(ncs);
        }
        if part.get("lendablePercent").is_none_or(Value::is_null) {
            part["lendablePercent"] = json!(0);
        }
        if let Some(q) = part
            .pointer_mut("/limitResponse/queuing")
            .filter(|q| q.is_object())
        {
            for (k, v) in [("queues", 64), ("handSize", 8), ("queueLengthLimit", 50)] {
                if zero_or_unset(q.get(k)) {
                    q[k] = json!(v);
                }
            }
        }
    }
}

/// `ValidateFlowSchema` (the spec; names and metadata are checked for every kind).
pub fn validate_schema(obj: &Value, causes: &mut Vec<Cause>) {
    let name = crate::meta::meta_str(obj, "name").unwrap_or("");
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let precedence = spec
        .get("matchingPrecedence")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let at = "spec.matchingPrecedence";
    if precedence <= 0 {
        causes.push(field::invalid(
            at,
            &json!(precedence),
            "must be a positive value",
        ));
    }
    if precedence > 10000 {
        causes.push(field::invalid(
            at,
            &json!(precedence),
            "must not be greater than 10000",
        ));
    }
    if precedence == 1 && name != "exempt" {
        let detail = "only the schema named 'exempt' may have matchingPrecedence 1";
        causes.push(field::invalid(at, &json!(precedence), detail));
    }
    if let Some(method) = field::set(spec, "distinguisherMethod") {
        let ty = method.get("type").unwrap_or(&Value::Null);
        if !matches!(ty.as_str(), Some("ByUser" | "ByNamespace")) {
            causes.push(field::not_supported(
                "spec.distinguisherMethod.type",
                ty,
                &["ByNamespace", "ByUser"],
            ));
        }
    }
    let level = spec
        .pointer("/priorityLevelConfiguration/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let at = "spec.priorityLevelConfiguration.name";
    if level.is_empty() {
        causes.push(field::required(at, "must reference a priority level"));
    } else {
        causes.extend(field::invalid_each(
            at,
            &json!(level),
            names::dns1123_subdomain(level),
        ));
    }
    for (i, rule) in field::list(spec, "rules").iter().enumerate() {
        validate_rule(rule, &format!("spec.rules[{i}]"), causes);
    }
}

fn validate_rule(rule: &Value, at: &str, causes: &mut Vec<Cause>) {
    let subjects = field::list(rule, "subjects");
    if subjects.is_empty() {
        causes.push(field::required(
            &format!("{at}.subjects"),
            "subjects must contain at least one value",
        ));
    }
    for (i, s) in subjects.iter().enumerate() {
        let at = format!("{at}.subjects[{i}]");
        let named = |key: &str, causes: &mut Vec<Cause>| {
            if s.pointer(&format!("/{key}/name"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                causes.push(field::required(
                    &format!("{at}.{key}.name"),
                    &format!("{key} name must not be empty"),
                ));
            }
        };
        match field::text(s, "kind") {
            "User" => named("user", causes),
            "Group" => named("group", causes),
            "ServiceAccount" => {
                named("serviceAccount", causes);
                if s.pointer("/serviceAccount/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty()
                {
                    causes.push(field::required(
                        &format!("{at}.serviceAccount.namespace"),
                        "must specify namespace for service account",
                    ));
                }
            }
            "" => causes.push(field::required(&format!("{at}.kind"), "")),
            other => causes.push(field::not_supported(
                &format!("{at}.kind"),
                &json!(other),
                &["Group", "ServiceAccount", "User"],
            )),
        }
    }
    let resource = field::list(rule, "resourceRules");
    let non_resource = field::list(rule, "nonResourceRules");
    if resource.is_empty() && non_resource.is_empty() {
        causes.push(field::required(
            at,
            "at least one of resourceRules and nonResourceRules has to be non-empty",
        ));
    }
    for (i, r) in resource.iter().enumerate() {
        let at = format!("{at}.resourceRules[{i}]");
        for key in ["verbs", "apiGroups", "resources"] {
            listed(r, key, &at, causes);
        }
        let cluster = r
            .get("clusterScope")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if field::list(r, "namespaces").is_empty() && !cluster {
            causes.push(field::required(
                &format!("{at}.namespaces"),
                "resource rules that are not cluster scoped must supply at least one namespace",
            ));
        }
    }
    for (i, r) in non_resource.iter().enumerate() {
        let at = format!("{at}.nonResourceRules[{i}]");
        for key in ["verbs", "nonResourceURLs"] {
            listed(r, key, &at, causes);
        }
    }
}

/// A rule's list that needs a member, and `*` alone when it has `*`.
fn listed(rule: &Value, key: &str, at: &str, causes: &mut Vec<Cause>) {
    let items = field::list(rule, key);
    let path = format!("{at}.{key}");
    if items.is_empty() {
        causes.push(field::required(
            &path,
            &format!("{key} must contain at least one value"),
        ));
    } else if items.len() > 1 && items.iter().any(|v| v == "*") {
        let detail = format!("if '*' is present, must not specify other {key}");
        causes.push(field::invalid(&path, &json!(items), &detail));
    }
}

/// `ValidatePriorityLevelConfiguration` (the spec).
pub fn validate_level(obj: &Value, causes: &mut Vec<Cause>) {
    let name = crate::meta::meta_str(obj, "name").unwrap_or("");
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let ty = spec.get("type").cloned().unwrap_or(json!(""));
    if (name == "exempt") != (ty == "Exempt") {
        causes.push(field::invalid(
            "spec.type",
            &ty,
            "type must be 'Exempt' if and only if name is 'exempt'",
        ));
    }
    let limited = field::set(spec, "limited");
    let exempt = field::set(spec, "exempt");
    match ty.as_str() {
        Some("Exempt") => {
            if limited.is_some() {
                causes.push(field::forbidden(
                    "spec.limited",
                    "must be nil if the type is not Limited",
                ));
            }
            if let Some(e) = exempt {
                shares_and_lending(e, "spec.exempt", causes);
            }
        }
        Some("Limited") => {
            if exempt.is_some() {
                causes.push(field::forbidden(
                    "spec.exempt",
                    "must be nil if the type is Limited",
                ));
            }
            match limited {
                None => causes.push(field::required(
                    "spec.limited",
                    "must not be empty when type is Limited",
                )),
                Some(l) => validate_limited(l, causes),
            }
        }
        _ => causes.push(field::not_supported(
            "spec.type",
            &ty,
            &["Exempt", "Limited"],
        )),
    }
}

fn shares_and_lending(part: &Value, at: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = part
        .get("nominalConcurrencyShares")
        .and_then(Value::as_i64)
        .filter(|n| *n < 0)
    {
        let path = format!("{at}.nominalConcurrencyShares");
        causes.push(field::invalid(
            &path,
            &json!(n),
            "must be a non-negative integer",
        ));
    }
    if let Some(p) = part
        .get("lendablePercent")
        .and_then(Value::as_i64)
        .filter(|p| !(0..=100).contains(p))
    {
        let path = format!("{at}.lendablePercent");
        causes.push(field::invalid(
            &path,
            &json!(p),
            "must be between 0 and 100, inclusive",
        ));
    }
}

fn validate_limited(l: &Value, causes: &mut Vec<Cause>) {
    shares_and_lending(l, "spec.limited", causes);
    if let Some(b) = l
        .get("borrowingLimitPercent")
        .and_then(Value::as_i64)
        .filter(|b| *b < 0)
    {
        causes.push(field::invalid(
            "spec.limited.borrowingLimitPercent",
            &json!(b),
            "if specified, must be a non-negative integer",
        ));
    }
    let response = l.get("limitResponse").unwrap_or(&Value::Null);
    let queuing = field::set(response, "queuing");
    match field::text(response, "type") {
        "Queue" => match queuing {
            None => causes.push(field::required(
                "spec.limited.limitResponse.queuing",
                "must not be empty if limited.limitResponse.type is Queue",
            )),
            Some(q) => validate_queuing(q, causes),
        },
        "Reject" => {
            if queuing.is_some() {
                causes.push(field::forbidden(
                    "spec.limited.limitResponse.queuing",
                    "must be nil if limited.limitResponse.type is not Limited",
                ));
            }
        }
        other => causes.push(field::not_supported(
            "spec.limited.limitResponse.type",
            &json!(other),
            &["Queue", "Reject"],
        )),
    }
}

fn validate_queuing(q: &Value, causes: &mut Vec<Cause>) {
    let at = "spec.limited.limitResponse.queuing";
    let get = |k: &str| q.get(k).and_then(Value::as_i64).unwrap_or(0);
    let (queues, hand, limit) = (get("queues"), get("handSize"), get("queueLengthLimit"));
    for (key, v) in [
        ("queueLengthLimit", limit),
        ("queues", queues),
        ("handSize", hand),
    ] {
        if v <= 0 {
            causes.push(field::invalid(
                &format!("{at}.{key}"),
                &json!(v),
                "must be positive",
            ));
        }
    }
    if hand > queues {
        let detail = format!("should not be greater than queues ({queues})");
        causes.push(field::invalid(
            &format!("{at}.handSize"),
            &json!(hand),
            &detail,
        ));
    } else if queues > 0 && hand > 0 && (queues as f64).log2() * hand as f64 > 60.0 {
        let detail = format!(
            "required entropy bits of deckSize {queues} and handSize {hand} should not be greater than 60"
        );
        causes.push(field::invalid(
            &format!("{at}.handSize"),
            &json!(hand),
            &detail,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(check: fn(&Value, &mut Vec<Cause>), obj: Value) -> Vec<String> {
        let mut causes = Vec::new();
        check(&obj, &mut causes);
        field::render(causes)
    }

    #[test]
    fn levels_default_and_check_as_upstream() {
        let mut level = json!({"metadata": {"name": "gold"}, "spec": {"type": "Limited",
            "limited": {"limitResponse": {"type": "Queue", "queuing": {}}}}});
        default("PriorityLevelConfiguration", &mut level);
        assert_eq!(
            level["spec"]["limited"],
            json!({"nominalConcurrencyShares": 30, "lendablePercent": 0,
                "limitResponse": {"type": "Queue", "queuing": {"queues": 64, "handSize": 8, "queueLengthLimit": 50}}})
        );
        assert!(messages(validate_level, level.clone()).is_empty());
        level["spec"]["limited"]["limitResponse"]["queuing"]["handSize"] = json!(65);
        level["spec"]["limited"]["lendablePercent"] = json!(101);
        assert_eq!(
            messages(validate_level, level),
            [
                "spec.limited.lendablePercent: Invalid value: 101: must be between 0 and 100, inclusive",
                "spec.limited.limitResponse.queuing.handSize: Invalid value: 65: should not be greater than queues (64)",
            ]
        );
        let exempt_named_wrong = json!({"metadata": {"name": "gold"}, "spec": {"type": "Exempt"}});
        assert_eq!(
            messages(validate_level, exempt_named_wrong),
            [
                r#"spec.type: Invalid value: "Exempt": type must be 'Exempt' if and only if name is 'exempt'"#
            ]
        );
    }

    #[test]
    fn schemas_default_and_check_as_upstream() {
        let mut fs = json!({"metadata": {"name": "web"}, "spec": {"priorityLevelConfiguration": {"name": "gold"},
            "rules": [{"subjects": [{"kind": "User", "user": {"name": "alice"}}],
                       "resourceRules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "namespaces": ["*"]}]}]}});
        default("FlowSchema", &mut fs);
        assert_eq!(fs["spec"]["matchingPrecedence"], 1000);
        assert!(messages(validate_schema, fs.clone()).is_empty());
        fs["spec"]["matchingPrecedence"] = json!(1);
        fs["spec"]["distinguisherMethod"] = json!({"type": "ByGroup"});
        fs["spec"]["rules"][0]["resourceRules"][0]["verbs"] = json!(["*", "get"]);
        fs["spec"]["rules"][0]["resourceRules"][0]["namespaces"] = json!([]);
        assert_eq!(
            messages(validate_schema, fs),
            [
                "spec.matchingPrecedence: Invalid value: 1: only the schema named 'exempt' may have matchingPrecedence 1",
                r#"spec.distinguisherMethod.type: Unsupported value: "ByGroup": supported values: "ByNamespace", "ByUser""#,
                r#"spec.rules[0].resourceRules[0].verbs: Invalid value: ["*","get"]: if '*' is present, must not specify other verbs"#,
                "spec.rules[0].resourceRules[0].namespaces: Required value: resource rules that are not cluster scoped must supply at least one namespace",
            ]
        );
    }
}
