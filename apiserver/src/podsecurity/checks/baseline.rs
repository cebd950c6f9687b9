//! The baseline level's checks.
use std::collections::BTreeSet;

use serde_json::Value;

use super::*;

const CAPABILITIES_ALLOWED_BASELINE: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

pub(super) fn added_capabilities(c: &Value) -> impl Iterator<Item = &str> {
    sc(c, "/capabilities/add")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or(""))
}

pub(super) fn capabilities_baseline(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut caps = BTreeSet::new();
    for c in containers(spec) {
        let mut valid = true;
        for cap in added_capabilities(c) {
            if !CAPABILITIES_ALLOWED_BASELINE.contains(&cap) {
                valid = false;
                caps.insert(cap.to_string());
            }
        }
        if !valid {
            bad.push(name(c));
        }
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad),
            join_quote(&caps)
        ),
    )
}

pub(super) fn app_armor_profile(meta: &Value, spec: &Value, _: Version) -> Option<Violation> {
    let allowed_type = |p: &Value| {
        matches!(
            p.get("type").and_then(Value::as_str),
            Some("RuntimeDefault" | "Localhost")
        )
    };
    let mut bad_values = BTreeSet::new();
    let pod_bad = match pod_sc(spec, "/appArmorProfile") {
        Some(p) if !allowed_type(p) => {
            bad_values.insert(
                p.get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            );
            true
        }
        _ => false,
    };
    let mut bad_containers = Vec::new();
    for c in containers(spec) {
        if let Some(p) = sc(c, "/appArmorProfile") {
            if !allowed_type(p) {
                bad_containers.push(name(c));
                bad_values.insert(
                    p.get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                );
            }
        }
    }
    let mut who = setters(pod_bad, &bad_containers);
    let mut forbidden_annotations: Vec<String> = annotations(meta)
        .filter(|(k, v)| {
            k.starts_with("container.apparmor.security.beta.kubernetes.io/")
                && !(v.is_empty() || *v == "runtime/default" || v.starts_with("localhost/"))
        })
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    forbidden_annotations.sort();
    let mut values: Vec<String> = bad_values.into_iter().collect();
    if !forbidden_annotations.is_empty() {
        who.push(pluralize("annotation", "annotations", forbidden_annotations.len()).to_string());
        values.extend(forbidden_annotations);
    }
    if who.is_empty() {
        return None;
    }
    violation(
        pluralize(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            values.len(),
        ),
        format!(
            "{} must not set AppArmor profile type to {}",
            who.join(" and "),
            join_quote(&values)
        ),
    )
}

pub(super) fn host_namespaces(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
    // Sorted, as upstream's string set lists them.
    let found: Vec<&str> = ["hostIPC", "hostNetwork", "hostPID"]
        .into_iter()
        .filter(|f| spec.get(*f).and_then(Value::as_bool) == Some(true))
        .collect();
    if found.is_empty() {
        return None;
    }
    violation("host namespaces", found.join(", "))
}

pub(super) fn volumes(spec: &Value) -> impl Iterator<Item = &Value> {
    spec.get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

pub(super) fn host_path_volumes(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
    let bad: Vec<String> = volumes(spec)
        .filter(|v| v.get("hostPath").is_some_and(|h| !h.is_null()))
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "hostPath volumes",
        format!(
            "{} {}",
            pluralize("volume", "volumes", bad.len()),
            join_quote(&bad)
        ),
    )
}

pub(super) fn host_ports(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
    let mut bad = Vec::new();
    let mut ports = BTreeSet::new();
    for c in containers(spec) {
        let mut valid = true;
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let hp = p.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
            if hp != 0 {
                valid = false;
                // Upstream sorts them as strings.
                ports.insert(hp.to_string());
            }
        }
        if !valid {
            bad.push(name(c));
        }
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

pub(super) fn host_probes_and_host_lifecycle(
    _: &Value,
    spec: &Value,
    _: Version,
) -> Option<Violation> {
    let mut bad = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for c in containers(spec) {
        for path in [
            "/livenessProbe",
            "/readinessProbe",
            "/startupProbe",
            "/lifecycle/postStart",
            "/lifecycle/preStop",
        ] {
            for handler in ["httpGet", "tcpSocket"] {
                let host = c
                    .pointer(&format!("{path}/{handler}/host"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !host.is_empty() {
                    bad.insert(name(c));
                    hosts.insert(host.to_string());
                }
            }
        }
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "probe or lifecycle host",
        format!(
            "{} {} {} {} {}",
            pluralize("container", "containers", bad.len()),
            join_quote(&bad),
            pluralize("uses", "use", bad.len()),
            pluralize(
                "probe or lifecycle host",
                "probe or lifecycle hosts",
                hosts.len()
            ),
            join_quote(&hosts)
        ),
    )
}

pub(super) fn privileged(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
    let bad: Vec<String> = containers(spec)
        .filter(|c| sc(c, "/privileged").and_then(Value::as_bool) == Some(true))
        .map(name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation(
        "privileged",
        format!(
            "{} must not set securityContext.privileged=true",
            containers_phrase(&bad)
        ),
    )
}

pub(super) fn proc_mount(_: &Value, spec: &Value, version: Version) -> Option<Violation> {
    if user_namespaced(spec, version) {
        return None;
    }
    let mut bad = Vec::new();
    let mut types = BTreeSet::new();
    for c in containers(spec) {
        if let Some(t) = sc(c, "/procMount").and_then(Value::as_str) {
            if t != "Default" {
                bad.push(name(c));
                types.insert(t.to_string());
            }
        }
    }
    if bad.is_empty() {
        return None;
    }
    violation(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(&bad),
            join_quote(&types)
        ),
    )
}

pub(super) fn se_linux_options(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
    let mut bad_types = BTreeSet::new();
    let (mut set_user, mut set_role) = (false, false);
    let mut valid = |o: &Value| {
        let field = |f: &str| o.get(f).and_then(Value::as_str).unwrap_or("").to_string();
        let mut ok = true;
        let ty = field("type");
        if !matches!(
            ty.as_str(),
            "" | "container_t" | "container_init_t" | "container_kvm_t"
        ) {
            ok = false;
            bad_types.insert(ty);
        }
        if !field("user").is_empty() {
            ok = false;
            set_user = true;
        }
        if !field("role").is_empty() {
            ok = false;
            set_role = true;
        }
        ok
    };
    let pod_bad = pod_sc(spec, "/seLinuxOptions").is_some_and(|o| !valid(o));
    let bad: Vec<String> = containers(spec)
        .filter(|c| sc(c, "/seLinuxOptions").is_some_and(|o| !valid(o)))
        .map(name)
        .collect();
    let who = setters(pod_bad, &bad);
    if who.is_empty() {
        return None;
    }
    // As upstream: user and role are only named alongside a bad type.
    let mut data = Vec::new();
    if !bad_types.is_empty() {
        data.push(format!(
            "{} {}",
            pluralize("type", "types", bad_types.len()),
            join_quote(&bad_types)
        ));
        if set_user {
            data.push("user may not be set".to_string());
        }
        if set_role {
            data.push("role may not be set".to_string());
        }
    }
    violation(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            who.join(" and "),
            data.join("; ")
        ),
    )
}

pub(super) fn valid_seccomp(profile: &Value) -> bool {
    matches!(
        profile.get("type").and_then(Value::as_str),
        Some("RuntimeDefault" | "Localhost")
    )
}

pub(super) fn seccomp_type(profile: &Value) -> String {
    profile
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Before 1.19 seccomp was set by annotations; from 1.19 by `seccompProfile`.
pub(super) fn seccomp_profile_baseline(
    meta: &Value,
    spec: &Value,
    version: Version,
) -> Option<Violation> {
    if !version.includes(19) {
        return seccomp_annotations_baseline(meta, spec);
    }
    let mut bad_values = BTreeSet::new();
    let pod_bad = match pod_sc(spec, "/seccompProfile") {
        Some(p) if !valid_seccomp(p) => {
            bad_values.insert(seccomp_type(p));
            true
        }
        _ => false,
    };
    let mut bad = Vec::new();
    for c in containers(spec) {
        if let Some(p) = sc(c, "/seccompProfile") {
            if !valid_seccomp(p) {
                bad.push(name(c));
                bad_values.insert(seccomp_type(p));
            }
        }
    }
    let who = setters(pod_bad, &bad);
    if who.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            who.join(" and "),
            join_quote(&bad_values)
        ),
    )
}

pub(super) fn seccomp_annotations_baseline(meta: &Value, spec: &Value) -> Option<Violation> {
    let valid =
        |v: &str| v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/");
    let annotation = |k: &str| meta.pointer(&format!("/annotations/{}", k.replace('/', "~1")));
    let mut forbidden = BTreeSet::new();
    let mut keys = vec!["seccomp.security.alpha.kubernetes.io/pod".to_string()];
    keys.extend(
        containers(spec)
            .map(|c| format!("container.seccomp.security.alpha.kubernetes.io/{}", name(c))),
    );
    for k in keys {
        if let Some(v) = annotation(&k).and_then(Value::as_str) {
            if !valid(v) {
                forbidden.insert(format!("{k}={v:?}"));
            }
        }
    }
    if forbidden.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            "forbidden {} {}",
            pluralize("annotation", "annotations", forbidden.len()),
            forbidden.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

const SYSCTLS_ALLOWED: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
];

pub(super) fn sysctls(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
    let bad: Vec<&str> = pod_sc(spec, "/sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .filter(|n| !SYSCTLS_ALLOWED.contains(n))
        .collect();
    if bad.is_empty() {
        return None;
    }
    violation("forbidden sysctls", bad.join(", "))
}

pub(super) fn windows_host_process(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
    let host_process = |v: Option<&Value>| v.and_then(Value::as_bool) == Some(true);
    let bad: Vec<String> = containers(spec)
        .filter(|c| host_process(sc(c, "/windowsOptions/hostProcess")))
        .map(name)
        .collect();
    let who = setters(
        host_process(pod_sc(spec, "/windowsOptions/hostProcess")),
        &bad,
    );
    if who.is_empty() {
        return None;
    }
    violation(
        "hostProcess",
        format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            who.join(" and ")
        ),
    )
}
