//! Dynamic resource allocation (`resource.k8s.io/v1`): the checks and defaults of upstream's
//! `pkg/apis/resource` that device drivers' manifests and claims meet first. kaze stores
//! and serves these kinds; its scheduler allocates claims (`scheduler/src/dra.rs`).

use serde_json::{json, Value};

use super::field;
use super::Cause;
use crate::meta::names;

/// `SetDefaults_ExactDeviceRequest` and its sub-request twin: `ExactCount` of one device.
pub fn default(kind: &str, obj: &mut Value) {
    let spec = match kind {
        "ResourceClaim" => obj.pointer_mut("/spec"),
        "ResourceClaimTemplate" => obj.pointer_mut("/spec/spec"),
        _ => None,
    };
    let Some(requests) = spec
        .and_then(|s| s.pointer_mut("/devices/requests"))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    let fill = |r: &mut Value| {
        if !r.is_object() {
            return;
        }
        if r.get("allocationMode")
            .is_none_or(|m| m.is_null() || m == "")
        {
            r["allocationMode"] = json!("ExactCount");
        }
        if r["allocationMode"] == "ExactCount"
            && r.get("count").is_none_or(|c| c.is_null() || c == 0)
        {
            r["count"] = json!(1);
        }
    };
    for r in requests {
        if let Some(exact) = r.get_mut("exactly").filter(|e| e.is_object()) {
            fill(exact);
        }
        for sub in r
            .get_mut("firstAvailable")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            fill(sub);
        }
    }
}

/// A claim's spec: named requests, each asking for devices of one class exactly one way.
fn validate_claim_spec(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    let mut seen = std::collections::HashSet::new();
    for (i, r) in field::list(spec.get("devices").unwrap_or(&Value::Null), "requests")
        .iter()
        .enumerate()
    {
        let at = format!("{at}.devices.requests[{i}]");
        let name = field::text(r, "name");
        if name.is_empty() {
            causes.push(field::required(&format!("{at}.name"), ""));
        } else {
            field::label(&format!("{at}.name"), name, causes);
            if !seen.insert(name) {
                causes.push(field::duplicate(&format!("{at}.name"), &json!(name)));
            }
        }
        let exact = field::set(r, "exactly");
        let first = field::list(r, "firstAvailable");
        match (exact, first.is_empty()) {
            (Some(e), true) => validate_exact(e, &format!("{at}.exactly"), causes),
            (None, false) => {
                for (j, sub) in first.iter().enumerate() {
                    let at = format!("{at}.firstAvailable[{j}]");
                    let name = field::text(sub, "name");
                    if name.is_empty() {
                        causes.push(field::required(&format!("{at}.name"), ""));
                    }
                    validate_exact(sub, &at, causes);
                }
            }
            _ => causes.push(field::invalid(
                &at,
                &json!(null),
                "exactly one of `exactly` or `firstAvailable` is required",
            )),
        }
    }
}

/// Each `selectors[i].cel.expression` compiles for the device environment
/// ([`crate::cel::device`]), as upstream's `validateSelector`.
fn validate_selectors(owner: &Value, at: &str, causes: &mut Vec<Cause>) {
    for (i, sel) in field::list(owner, "selectors").iter().enumerate() {
        let at = format!("{at}.selectors[{i}]");
        let Some(cel) = field::set(sel, "cel") else {
            causes.push(field::required(&format!("{at}.cel"), ""));
            continue;
        };
        let path = format!("{at}.cel.expression");
        let expr = field::text(cel, "expression");
        if expr.is_empty() {
            causes.push(field::required(&path, ""));
        } else if let Err(e) = crate::cel::device::compile(expr) {
            causes.push(field::invalid(
                &path,
                &json!(expr),
                &format!("compilation failed: {e}"),
            ));
        }
    }
}

fn validate_exact(r: &Value, at: &str, causes: &mut Vec<Cause>) {
    let class = field::text(r, "deviceClassName");
    let path = format!("{at}.deviceClassName");
    if class.is_empty() {
        causes.push(field::required(&path, ""));
    } else {
        field::subdomain(&path, class, causes);
    }
    validate_selectors(r, at, causes);
    let mode = r.get("allocationMode").cloned().unwrap_or(json!(""));
    match mode.as_str() {
        Some("ExactCount") => {
            let count = r.get("count").and_then(Value::as_i64).unwrap_or(0);
            if count <= 0 {
                causes.push(field::invalid(
                    &format!("{at}.count"),
                    &json!(count),
                    "must be greater than zero",
                ));
            }
        }
        Some("All") => {
            if let Some(c) = field::set(r, "count").filter(|c| *c != 0) {
                causes.push(field::invalid(
                    &format!("{at}.count"),
                    c,
                    "must not be specified when allocationMode is 'All'",
                ));
            }
        }
        _ => causes.push(field::not_supported(
            &format!("{at}.allocationMode"),
            &mode,
            &["All", "ExactCount"],
        )),
    }
}

pub fn validate(kind: &str, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    match kind {
        "ResourceClaim" => {
            let spec = obj.get("spec").unwrap_or(&Value::Null);
            validate_claim_spec(spec, "spec", causes);
            if old.is_some_and(|old| old.get("spec") != obj.get("spec")) {
                causes.push(field::invalid("spec", spec, "field is immutable"));
            }
            validate_claim_status(obj, old, causes);
        }
        "ResourceClaimTemplate" => {
            let spec = obj.pointer("/spec/spec").unwrap_or(&Value::Null);
            validate_claim_spec(spec, "spec.spec", causes);
            if old.is_some_and(|old| old.get("spec") != obj.get("spec")) {
                let spec = obj.get("spec").unwrap_or(&Value::Null);
                causes.push(field::invalid("spec", spec, "field is immutable"));
            }
        }
        "ResourceSlice" => validate_slice(obj, old, causes),
        "DeviceClass" => {
            validate_selectors(obj.get("spec").unwrap_or(&Value::Null), "spec", causes)
        }
        _ => {}
    }
}

/// Upstream's claim status rules: consumers only of an allocated claim, an allocation
/// fixed once made (it may only be removed, when no consumer is left), and no consumer
/// twice.
fn validate_claim_status(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let status = obj.get("status").unwrap_or(&Value::Null);
    let allocation = field::set(status, "allocation");
    let reserved = field::list(status, "reservedFor");
    if !reserved.is_empty() && allocation.is_none() {
        causes.push(field::forbidden(
            "status.reservedFor",
            "may not be specified when `allocated` is not set",
        ));
    }
    let mut uids = std::collections::HashSet::new();
    for (i, r) in reserved.iter().enumerate() {
        let uid = field::text(r, "uid");
        if !uid.is_empty() && !uids.insert(uid) {
            causes.push(field::duplicate(
                &format!("status.reservedFor[{i}].uid"),
                &json!(uid),
            ));
        }
    }
    let was = old
        .and_then(|o| o.pointer("/status/allocation"))
        .filter(|a| !a.is_null());
    if let (Some(was), Some(now)) = (was, allocation) {
        if was != now {
            causes.push(field::invalid(
                "status.allocation",
                now,
                "field is immutable",
            ));
        }
    }
}

/// Upstream's label a namespace needs for its claims to ask for admin access to devices.
pub const ADMIN_ACCESS_LABEL: &str = "resource.kubernetes.io/admin-access";

/// Whether a ResourceClaim or ResourceClaimTemplate asks for admin access in any request
/// (`exactly` or a `firstAvailable` sub-request).
pub fn requests_admin_access(kind: &str, obj: &Value) -> bool {
    let spec = match kind {
        "ResourceClaim" => obj.get("spec"),
        "ResourceClaimTemplate" => obj.pointer("/spec/spec"),
        _ => None,
    };
    let Some(devices) = spec.and_then(|s| s.get("devices")) else {
        return false;
    };
    field::list(devices, "requests").iter().any(|r| {
        let admin = |e: &Value| e.get("adminAccess").and_then(Value::as_bool) == Some(true);
        r.get("exactly").is_some_and(admin) || field::list(r, "firstAvailable").iter().any(admin)
    })
}

/// Upstream's `authorizedForAdmin`: admin access only in a namespace labelled
/// `resource.kubernetes.io/admin-access: "true"` (`labels`: the namespace's).
pub fn admin_access_denied(labels: Option<&serde_json::Map<String, Value>>) -> Option<Cause> {
    let allowed = labels
        .and_then(|l| l.get(ADMIN_ACCESS_LABEL))
        .and_then(Value::as_str)
        == Some("true");
    (!allowed).then(|| {
        field::forbidden(
            "",
            &format!("admin access to devices requires the `{ADMIN_ACCESS_LABEL}: true` label on the containing namespace"),
        )
    })
}

/// `ValidateResourceSlice`: a driver, a pool with a positive slice count, and exactly one
/// way of saying which nodes reach the devices; driver and node fixed once created.
fn validate_slice(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let driver = field::text(spec, "driver");
    if driver.is_empty() {
        causes.push(field::required("spec.driver", ""));
    } else {
        let mut msgs = names::dns1123_subdomain(driver);
        if driver.len() > 63 {
            msgs.push(names::max_len(63));
        }
        causes.extend(field::invalid_each("spec.driver", &json!(driver), msgs));
    }
    let pool = spec.get("pool").unwrap_or(&Value::Null);
    if field::text(pool, "name").is_empty() {
        causes.push(field::required("spec.pool.name", ""));
    }
    if pool
        .get("resourceSliceCount")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        <= 0
    {
        let count = pool.get("resourceSliceCount").cloned().unwrap_or(json!(0));
        causes.push(field::invalid(
            "spec.pool.resourceSliceCount",
            &count,
            "must be greater than zero",
        ));
    }
    let ways = [
        field::set(spec, "nodeName").is_some_and(|n| n != ""),
        field::set(spec, "nodeSelector").is_some(),
        spec.get("allNodes")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        spec.get("perDeviceNodeSelection")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    ];
    if ways.iter().filter(|w| **w).count() != 1 {
        causes.push(field::required(
            "spec",
            "exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required",
        ));
    }
    let Some(old) = old else { return };
    for key in ["driver", "nodeName"] {
        let (now, was) = (spec.get(key), old.pointer(&format!("/spec/{key}")));
        if now != was {
            let shown = now.cloned().unwrap_or(Value::Null);
            causes.push(field::invalid(
                &format!("spec.{key}"),
                &shown,
                "field is immutable",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(kind: &str, obj: Value, old: Option<Value>) -> Vec<String> {
        let mut causes = Vec::new();
        validate(kind, &obj, old.as_ref(), &mut causes);
        field::render(causes)
    }

    #[test]
    fn claims_default_to_one_device_and_need_a_class() {
        let mut claim = json!({"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.example.com"}}]}}});
        default("ResourceClaim", &mut claim);
        assert_eq!(
            claim["spec"]["devices"]["requests"][0]["exactly"],
            json!({"deviceClassName": "gpu.example.com", "allocationMode": "ExactCount", "count": 1})
        );
        assert!(messages("ResourceClaim", claim.clone(), None).is_empty());
        let bad = json!({"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"allocationMode": "Some"}}, {"name": "gpu"}]}}});
        assert_eq!(
            messages("ResourceClaim", bad, None),
            [
                "spec.devices.requests[0].exactly.deviceClassName: Required value",
                r#"spec.devices.requests[0].exactly.allocationMode: Unsupported value: "Some": supported values: "All", "ExactCount""#,
                r#"spec.devices.requests[1].name: Duplicate value: "gpu""#,
                "spec.devices.requests[1]: Invalid value: null: exactly one of `exactly` or `firstAvailable` is required",
            ]
        );
        let mut more = claim.clone();
        more["spec"]["devices"]["requests"][0]["exactly"]["count"] = json!(2);
        let msgs = messages("ResourceClaim", more, Some(claim));
        assert_eq!(msgs.len(), 1);
        assert!(
            msgs[0].starts_with("spec: Invalid value: ") && msgs[0].ends_with("field is immutable")
        );
    }

    #[test]
    fn selectors_must_compile_for_the_device_environment() {
        let class = |e: &str| json!({"spec": {"selectors": [{"cel": {"expression": e}}]}});
        assert!(messages(
            "DeviceClass",
            class("device.driver == 'gpu.example.com'"),
            None
        )
        .is_empty());
        let msgs = messages("DeviceClass", class("pod.name == 'x'"), None);
        assert_eq!(msgs.len(), 1);
        assert!(
            msgs[0].starts_with(r#"spec.selectors[0].cel.expression: Invalid value: "pod.name == 'x'": compilation failed: "#)
                && msgs[0].contains("undeclared reference to 'pod'"),
            "{msgs:?}"
        );
        let claim = json!({"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
            "deviceClassName": "gpu.example.com", "allocationMode": "ExactCount", "count": 1,
            "selectors": [{"cel": {"expression": "device.driver =="}}, {}]}}]}}});
        let msgs = messages("ResourceClaim", claim, None);
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs[0].starts_with(
            "spec.devices.requests[0].exactly.selectors[0].cel.expression: Invalid value"
        ));
        assert_eq!(
            msgs[1],
            "spec.devices.requests[0].exactly.selectors[1].cel: Required value"
        );
    }

    #[test]
    fn claim_status_reserves_only_allocated_claims_and_keeps_the_allocation() {
        let spec = json!({"devices": {"requests": [{"name": "gpu", "exactly": {
            "deviceClassName": "gpu.example.com", "allocationMode": "ExactCount", "count": 1}}]}});
        let pod = json!({"resource": "pods", "name": "p", "uid": "u1"});
        let unallocated = json!({"spec": spec, "status": {"reservedFor": [pod]}});
        assert_eq!(
            messages("ResourceClaim", unallocated, None),
            ["status.reservedFor: Forbidden: may not be specified when `allocated` is not set"]
        );
        let alloc = |d: &str| json!({"devices": {"results": [{"request": "gpu", "driver": "gpu.example.com", "pool": "n1", "device": d}]}});
        let ok = json!({"spec": spec, "status": {"allocation": alloc("g0"), "reservedFor": [pod]}});
        assert!(messages("ResourceClaim", ok.clone(), None).is_empty());
        let twice =
            json!({"spec": spec, "status": {"allocation": alloc("g0"), "reservedFor": [pod, pod]}});
        assert_eq!(
            messages("ResourceClaim", twice, None),
            [r#"status.reservedFor[1].uid: Duplicate value: "u1""#]
        );
        let moved = json!({"spec": spec, "status": {"allocation": alloc("g1")}});
        let msgs = messages("ResourceClaim", moved, Some(ok.clone()));
        assert_eq!(msgs.len(), 1);
        assert!(
            msgs[0].starts_with("status.allocation: Invalid value")
                && msgs[0].ends_with("field is immutable")
        );
        // deallocation (no consumer left) is allowed
        assert!(messages(
            "ResourceClaim",
            json!({"spec": spec, "status": {}}),
            Some(ok)
        )
        .is_empty());
    }

    #[test]
    fn admin_access_needs_the_namespace_label() {
        let claim = |admin: bool| {
            json!({"spec": {"devices": {"requests": [{"name": "gpu", "firstAvailable": [
                {"name": "a", "deviceClassName": "c"},
                {"name": "b", "deviceClassName": "c", "adminAccess": admin}]}]}}})
        };
        assert!(requests_admin_access("ResourceClaim", &claim(true)));
        assert!(!requests_admin_access("ResourceClaim", &claim(false)));
        let template = json!({"spec": {"spec": {"devices": {"requests": [{"name": "gpu",
            "exactly": {"deviceClassName": "c", "adminAccess": true}}]}}}});
        assert!(requests_admin_access("ResourceClaimTemplate", &template));
        assert!(!requests_admin_access("DeviceClass", &template));
        let labels = |v: &str| json!({ADMIN_ACCESS_LABEL: v}).as_object().cloned();
        assert!(admin_access_denied(labels("true").as_ref()).is_none());
        let denied = admin_access_denied(labels("yes").as_ref()).expect("denied");
        assert_eq!(
            field::render(vec![denied]),
            [": Forbidden: admin access to devices requires the `resource.kubernetes.io/admin-access: true` label on the containing namespace"]
        );
        assert!(admin_access_denied(None).is_some());
    }

    #[test]
    fn slices_need_a_driver_a_pool_and_one_node_choice() {
        let ok = json!({"spec": {"driver": "gpu.example.com", "pool": {"name": "n1", "resourceSliceCount": 1}, "nodeName": "n1"}});
        assert!(messages("ResourceSlice", ok.clone(), None).is_empty());
        let bad = json!({"spec": {"driver": "", "pool": {"name": "n1"}, "nodeName": "n1", "allNodes": true}});
        assert_eq!(
            messages("ResourceSlice", bad, None),
            [
                "spec.driver: Required value",
                "spec.pool.resourceSliceCount: Invalid value: 0: must be greater than zero",
                "spec: Required value: exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required",
            ]
        );
        let mut moved = ok.clone();
        moved["spec"]["nodeName"] = json!("n2");
        assert_eq!(
            messages("ResourceSlice", moved, Some(ok)),
            [r#"spec.nodeName: Invalid value: "n2": field is immutable"#]
        );
    }
}
