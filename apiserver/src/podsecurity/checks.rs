//! The Pod Security Standards' checks, as upstream's `pod-security-admission/policy`
//! package has them: each looks at a pod's metadata and spec (as JSON) and says why it is
//! forbidden, in upstream's words, so the messages built from them match upstream's.
//!
//! Checks run in upstream's order (its registration order: the checks' file names sorted),
//! baseline ones first. At `restricted`, the baseline checks that a restricted one
//! supersedes (capabilities, seccomp) are left out, as upstream's "overlapping" checks are.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Level, LevelVersion, Version};

/// Why a pod is refused by one check: `reason (detail)` in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub reason: String,
    pub detail: String,
}

fn violation(reason: impl Into<String>, detail: impl Into<String>) -> Option<Violation> {
    Some(Violation {
        reason: reason.into(),
        detail: detail.into(),
    })
}

type CheckFn = fn(&Value, &Value, Version) -> Option<Violation>;

struct Check {
    level: Level,
    /// A baseline check that the restricted level replaces with a stricter one.
    overlap: bool,
    /// The first policy version the check is part of.
    since: u32,
    run: CheckFn,
}

/// Upstream's checks in its order.
const CHECKS: &[Check] = &[
    restricted(8, allow_privilege_escalation),
    baseline(0, app_armor_profile),
    Check {
        level: Level::Baseline,
        overlap: true,
        since: 0,
        run: capabilities_baseline,
    },
    restricted(22, capabilities_restricted),
    baseline(0, host_namespaces),
    baseline(0, host_path_volumes),
    baseline(0, host_ports),
    baseline(34, host_probes_and_host_lifecycle),
    baseline(0, privileged),
    baseline(0, proc_mount),
    restricted(0, restricted_volumes),
    restricted(0, run_as_non_root),
    restricted(23, run_as_user),
    baseline(0, se_linux_options),
    Check {
        level: Level::Baseline,
        overlap: true,
        since: 0,
        run: seccomp_profile_baseline,
    },
    restricted(19, seccomp_profile_restricted),
    baseline(0, sysctls),
    baseline(0, windows_host_process),
];

const fn baseline(since: u32, run: CheckFn) -> Check {
    Check {
        level: Level::Baseline,
        overlap: false,
        since,
        run,
    }
}

const fn restricted(since: u32, run: CheckFn) -> Check {
    Check {
        level: Level::Restricted,
        overlap: false,
        since,
        run,
    }
}

/// Every violation of `lv` by a pod with `meta` and `spec`, in upstream's order.
pub fn evaluate(lv: LevelVersion, meta: &Value, spec: &Value) -> Vec<Violation> {
    if lv.level == Level::Privileged {
        return Vec::new();
    }
    let applies = |c: &&Check| {
        lv.version.includes(c.since)
            && match lv.level {
                Level::Baseline => c.level == Level::Baseline,
                _ => c.level == Level::Restricted || !c.overlap,
            }
    };
    // Baseline checks come before restricted ones, as upstream evaluates them.
    let (base, strict): (Vec<&Check>, Vec<&Check>) = CHECKS
        .iter()
        .filter(applies)
        .partition(|c| c.level == Level::Baseline);
    base.into_iter()
        .chain(strict)
        .filter_map(|c| (c.run)(meta, spec, lv.version))
        .collect()
}

/// Upstream's `ForbiddenDetail`: `reason (detail), reason (detail)`.
pub fn detail(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| {
            if v.detail.is_empty() {
                v.reason.clone()
            } else {
                format!("{} ({})", v.reason, v.detail)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Upstream's `ForbiddenReason`: the reasons alone.
pub fn reasons(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| v.reason.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

// === helpers, as upstream's ===

fn join_quote<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    items
        .into_iter()
        .map(|s| format!("\"{}\"", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pluralize<'a>(singular: &'a str, plural: &'a str, n: usize) -> &'a str {
    if n == 1 {
        singular
    } else {
        plural
    }
}

/// `containers "a", "b"` (or `container "a"`).
fn containers_phrase(names: &[String]) -> String {
    format!(
        "{} {}",
        pluralize("container", "containers", names.len()),
        join_quote(names)
    )
}

/// Init containers, containers and ephemeral containers, in upstream's visiting order.
fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |f| spec.get(f).and_then(Value::as_array).into_iter().flatten())
}

fn name(c: &Value) -> String {
    c.get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn sc<'a>(c: &'a Value, path: &str) -> Option<&'a Value> {
    c.pointer(&format!("/securityContext{path}"))
        .filter(|v| !v.is_null())
}

fn pod_sc<'a>(spec: &'a Value, path: &str) -> Option<&'a Value> {
    sc(spec, path)
}

fn annotations(meta: &Value) -> impl Iterator<Item = (&String, &str)> {
    meta.get("annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k, v.as_str().unwrap_or("")))
}

/// `hostUsers: false` pods run in a user namespace, where root and proc mounts are
/// harmless: upstream relaxes those checks for them from 1.34 on.
fn user_namespaced(spec: &Value, version: Version) -> bool {
    version.includes(34) && spec.get("hostUsers").and_then(Value::as_bool) == Some(false)
}

/// `"pod and containers "a""`-style setters list.
fn setters(pod: bool, containers: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if pod {
        out.push("pod".to_string());
    }
    if !containers.is_empty() {
        out.push(containers_phrase(containers));
    }
    out
}

// === baseline ===

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

fn added_capabilities(c: &Value) -> impl Iterator<Item = &str> {
    sc(c, "/capabilities/add")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or(""))
}

fn capabilities_baseline(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
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

fn app_armor_profile(meta: &Value, spec: &Value, _: Version) -> Option<Violation> {
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

fn host_namespaces(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
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

fn volumes(spec: &Value) -> impl Iterator<Item = &Value> {
    spec.get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn host_path_volumes(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
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

fn host_ports(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
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

fn host_probes_and_host_lifecycle(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
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

fn privileged(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
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

fn proc_mount(_: &Value, spec: &Value, version: Version) -> Option<Violation> {
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

fn se_linux_options(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
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

fn valid_seccomp(profile: &Value) -> bool {
    matches!(
        profile.get("type").and_then(Value::as_str),
        Some("RuntimeDefault" | "Localhost")
    )
}

fn seccomp_type(profile: &Value) -> String {
    profile
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Before 1.19 seccomp was set by annotations; from 1.19 by `seccompProfile`.
fn seccomp_profile_baseline(meta: &Value, spec: &Value, version: Version) -> Option<Violation> {
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

fn seccomp_annotations_baseline(meta: &Value, spec: &Value) -> Option<Violation> {
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

fn sysctls(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
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

fn windows_host_process(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
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

// === restricted ===

fn allow_privilege_escalation(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
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

fn capabilities_restricted(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
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

fn restricted_volumes(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
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

fn run_as_non_root(_: &Value, spec: &Value, version: Version) -> Option<Violation> {
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

fn run_as_user(_: &Value, spec: &Value, version: Version) -> Option<Violation> {
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

fn seccomp_profile_restricted(_: &Value, spec: &Value, _: Version) -> Option<Violation> {
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
