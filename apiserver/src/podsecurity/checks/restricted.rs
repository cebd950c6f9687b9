//! The restricted level's checks (on top of the baseline ones they do not replace).
use std::collections::BTreeSet;

use serde_json::Value;

use super::*;

pub(super) fn allow_privilege_escalation(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
    let bad: Vec<String> = containers(spec)
        .filter(|c| sc(c, "/allowPrivilegeEscalation").and_then(Value::as_bool) != Some(false))
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "allowPrivilegeEscalation != false",
        format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_phrase(&bad)
        ),
    )
}

pub(super) fn capabilities_restricted(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
    let mut missing_drop_all = Vec::new();
    let mut adding = Vec::new();
    let mut caps = BTreeSet::new();
    for c in containers(spec) {
        if sc(c, "/capabilities").is_none() {
            missing_drop_all.push(name(c));
            continue;
        }
        let drops_all = sc(c, "/capabilities/drop")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|v| v == "ALL"));
        if !drops_all {
            missing_drop_all.push(name(c));
        }
        let mut forbidden = false;
        for cap in added_capabilities(c) {
            if cap != "NET_BIND_SERVICE" {
                forbidden = true;
                caps.insert(cap.to_string());
            }
        }
        if forbidden {
            adding.push(name(c));
        }
    }
    let mut details = Vec::new();
    if !missing_drop_all.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing_drop_all)
        ));
    }
    if !adding.is_empty() {
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            join_quote(&caps)
        ));
    }
    if details.is_empty() {
        return None;
    }
    violation("unrestricted capabilities", details.join("; "))
}

const RESTRICTED_VOLUME_SOURCES_ALLOWED: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

pub(super) fn restricted_volumes(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
    let bad: BTreeSet<String> = volumes(spec)
        .filter(|v| {
            !RESTRICTED_VOLUME_SOURCES_ALLOWED
                .iter()
                .any(|s| v.get(*s).is_some_and(|x| !x.is_null()))
        })
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    // Upstream prints the names with Go's %q of a slice: ["a" "b"].
    let quoted: Vec<String> = bad.iter().map(|n| format!("{n:?}")).collect();
    violation(
        "restricted volume types",
        format!("volumes [{}] have restricted types", quoted.join(" ")),
    )
}

pub(super) fn run_as_non_root(_: &Value, spec: &Value, version: Version) -> Option<Violation> {
    if user_namespaced(spec, version) {
        return None;
    }
    let pod = pod_sc(spec, "/runAsNonRoot").and_then(Value::as_bool);
    let pod_ok = pod == Some(true);
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in containers(spec) {
        match sc(c, "/runAsNonRoot").and_then(Value::as_bool) {
            Some(false) => explicit.push(name(c)),
            Some(true) => {}
            None if !pod_ok => implicit.push(name(c)),
            None => {}
        }
    }
    let who = setters(pod == Some(false), &explicit);
    if !who.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                who.join(" and ")
            ),
        );
    }
    if !implicit.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&implicit)
            ),
        );
    }
    None
}

pub(super) fn run_as_user(_: &Value, spec: &Value, version: Version) -> Option<Violation> {
    if user_namespaced(spec, version) {
        return None;
    }
    let root = |v: Option<&Value>| v.and_then(Value::as_i64) == Some(0);
    let bad: Vec<String> = containers(spec)
        .filter(|c| root(sc(c, "/runAsUser")))
        .map(name)
        .collect();
    let who = setters(root(pod_sc(spec, "/runAsUser")), &bad);
    if who.is_empty() {
        return None;
    }
    violation(
        "runAsUser=0",
        format!("{} must not set runAsUser=0", who.join(" and ")),
    )
}

pub(super) fn seccomp_profile_restricted(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
    let mut bad_values = BTreeSet::new();
    let (pod_bad, pod_set) = match pod_sc(spec, "/seccompProfile") {
        Some(p) if !valid_seccomp(p) => {
            bad_values.insert(seccomp_type(p));
            (true, false)
        }
        Some(_) => (false, true),
        None => (false, false),
    };
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in containers(spec) {
        match sc(c, "/seccompProfile") {
            Some(p) if !valid_seccomp(p) => {
                explicit.push(name(c));
                bad_values.insert(seccomp_type(p));
            }
            Some(_) => {}
            None if !pod_set => implicit.push(name(c)),
            None => {}
        }
    }
    let who = setters(pod_bad, &explicit);
    if !who.is_empty() {
        return violation(
            "seccompProfile",
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                who.join(" and "),
                join_quote(&bad_values)
            ),
        );
    }
    if !implicit.is_empty() {
        return violation(
            "seccompProfile",
            format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&implicit)
            ),
        );
    }
    None
}
