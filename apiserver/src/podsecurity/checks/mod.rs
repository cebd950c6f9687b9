//! The Pod Security Standards' checks, as upstream's `pod-security-admission/policy`
//! package has them: each looks at a pod's metadata and spec (as JSON) and says why it is
//! forbidden, in upstream's words, so the messages built from them match upstream's.
//!
//! Checks run in upstream's order (its registration order: the checks' file names sorted),
//! baseline ones first. At `restricted`, the baseline checks that a restricted one
//! supersedes (capabilities, seccomp) are left out, as upstream's "overlapping" checks are.

use serde_json::Value;

use super::{Level, LevelVersion, Version};

mod baseline;
mod restricted;

use baseline::*;
use restricted::*;

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
