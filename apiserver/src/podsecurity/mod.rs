//! Upstream's `PodSecurity` admission plugin (`k8s.io/pod-security-admission`): the Pod
//! Security Standards enforced per namespace, by its labels
//! `pod-security.kubernetes.io/{enforce,audit,warn}` (`privileged`, `baseline`,
//! `restricted`) and `...-version` (`latest` or `v1.x`).
//!
//! - Pods: a create, or an update that changes what the checks see (upstream's
//!   "significant" updates: containers added or removed, an image, seccomp annotations,
//!   ephemeral containers), violating the `enforce` level is a 403 (`pods "x" is forbidden:
//!   violates PodSecurity "restricted:latest": ...`); one admitted but violating the `warn`
//!   level gets a `Warning` header. Status and other metadata-only updates are not checked.
//! - Pod templates (Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs, CronJobs,
//!   ReplicationControllers, PodTemplates) only get the warning. As upstream, a namespace
//!   that sets `enforce` more strictly than `warn` warns at the `enforce` level, which is
//!   how workloads hear about the pods they will not be able to create.
//! - Namespaces: invalid labels are a 422 on create (and on update when they change); an
//!   update that tightens `enforce` warns about the existing pods that violate it.
//! - `audit`: a pod (or template) violating the `audit` level gets upstream's
//!   `pod-security.kubernetes.io/audit-violations` annotation on its request's audit event
//!   (`crate::audit`), and an evaluated pod `.../enforce-policy` (the enforced level).
//!
//! The cluster-wide defaults (for namespaces without labels) and the exempt namespaces and
//! runtime classes come from [`PodSecurity`]; the defaults are upstream's: everything
//! `privileged:latest`, nothing exempt.

pub mod checks;
pub mod config;

use std::fmt;
use std::future::Future;

use serde_json::{Map, Value};

use crate::meta;
use crate::registry::ResourceDef;
use crate::state::AppState;
use crate::status::ApiError;

const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";

/// How many existing pods a tightened `enforce` label is checked against (upstream's
/// `namespaceMaxPodsToCheck`).
const MAX_PODS_TO_CHECK: usize = 3000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        })
    }
}

/// A policy version: `v1.<minor>` or `latest` (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version(Option<u32>);

impl Version {
    pub const LATEST: Version = Version(None);

    pub fn v1(minor: u32) -> Version {
        Version(Some(minor))
    }

    /// Whether a check that is part of the standard since `v1.<since>` applies.
    pub fn includes(self, since: u32) -> bool {
        self.0.is_none_or(|m| m >= since)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("latest"),
            Some(m) => write!(f, "v1.{m}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LevelVersion {
    pub level: Level,
    pub version: Version,
}

impl fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level, self.version)
    }
}

/// What a namespace asks for in each mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub enforce: LevelVersion,
    pub audit: LevelVersion,
    pub warn: LevelVersion,
}

impl Default for Policy {
    fn default() -> Policy {
        let privileged = LevelVersion {
            level: Level::Privileged,
            version: Version::LATEST,
        };
        Policy {
            enforce: privileged,
            audit: privileged,
            warn: privileged,
        }
    }
}

/// The plugin's configuration (upstream's `PodSecurityConfiguration`).
#[derive(Debug, Clone, Default)]
pub struct PodSecurity {
    /// For namespaces (and modes) without labels.
    pub defaults: Policy,
    pub exempt_namespaces: Vec<String>,
    pub exempt_runtime_classes: Vec<String>,
    /// Requests by these users are not checked (their pods and workloads).
    pub exempt_usernames: Vec<String>,
}

tokio::task_local! {
    /// Who makes the request being handled, for the username exemptions.
    static USER: String;
}

/// Handle a request made by `user` (what the username exemptions look at).
pub async fn as_user<F: Future>(user: String, f: F) -> F::Output {
    USER.scope(user, f).await
}

fn user_exempt(config: &PodSecurity) -> bool {
    !config.exempt_usernames.is_empty()
        && USER
            .try_with(|u| config.exempt_usernames.contains(u))
            .unwrap_or(false)
}

/// A label that does not parse: (label, value, why).
type LabelError = (String, String, String);

/// Upstream's `ParseLevel`: a bad level counts as `restricted` (fail closed).
fn parse_level(s: &str) -> Result<Level, Level> {
    match s {
        "privileged" => Ok(Level::Privileged),
        "baseline" => Ok(Level::Baseline),
        "restricted" => Ok(Level::Restricted),
        _ => Err(Level::Restricted),
    }
}

/// Upstream's `ParseVersion` (`latest` or `v1.<n>`, no leading zeros): a bad one counts
/// as `latest`.
fn parse_version(s: &str) -> Result<Version, Version> {
    if s == "latest" {
        return Ok(Version::LATEST);
    }
    let minor = s.strip_prefix("v1.").ok_or(Version::LATEST)?;
    let canonical = minor == "0"
        || (!minor.is_empty()
            && !minor.starts_with('0')
            && minor.bytes().all(|b| b.is_ascii_digit()));
    match minor.parse::<u32>() {
        Ok(m) if canonical => Ok(Version::v1(m)),
        _ => Err(Version::LATEST),
    }
}

/// Upstream's `PolicyToEvaluate`: the namespace's labels over the defaults, with what is
/// wrong with them. `warn` follows an explicitly stricter `enforce` when not labelled.
pub fn policy(labels: Option<&Map<String, Value>>, defaults: &Policy) -> (Policy, Vec<LabelError>) {
    let mut p = *defaults;
    let mut errs = Vec::new();
    let Some(labels) = labels else {
        return (p, errs);
    };
    let label = |mode: &str, suffix: &str| {
        let key = format!("{LABEL_PREFIX}{mode}{suffix}");
        labels
            .get(&key)
            .map(|v| (key, v.as_str().unwrap_or("").to_string()))
    };
    let mut has_enforce_level = false;
    let (mut has_warn_level, mut has_warn_version) = (false, false);
    for (mode, lv) in [
        ("enforce", &mut p.enforce),
        ("audit", &mut p.audit),
        ("warn", &mut p.warn),
    ] {
        if let Some((key, value)) = label(mode, "") {
            match parse_level(&value) {
                Ok(l) => {
                    lv.level = l;
                    has_enforce_level |= mode == "enforce";
                }
                Err(l) => {
                    lv.level = l;
                    errs.push((
                        key,
                        value,
                        "must be one of privileged, baseline, restricted".into(),
                    ));
                }
            }
            has_warn_level |= mode == "warn";
        }
        if let Some((key, value)) = label(mode, "-version") {
            match parse_version(&value) {
                Ok(v) => lv.version = v,
                Err(v) => {
                    lv.version = v;
                    errs.push((key, value, r#"must be "latest" or "v1.x""#.into()));
                }
            }
            has_warn_version |= mode == "warn";
        }
    }
    if !has_warn_level && has_enforce_level && p.enforce.level > p.warn.level {
        p.warn.level = p.enforce.level;
        if !has_warn_version {
            p.warn.version = p.enforce.version;
        }
    }
    (p, errs)
}

/// Evaluate a pod (or a template's pod) against `policy`: the 403 when `enforce` refuses
/// it, else the warning for `warn`.
fn evaluate(
    policy: &Policy,
    pod_meta: &Value,
    spec: &Value,
    enforce: bool,
    refuse: impl FnOnce(String) -> ApiError,
) -> Result<(), ApiError> {
    if crate::audit::active() {
        audit_annotations(policy, pod_meta, spec, enforce);
    }
    if enforce {
        let v = checks::evaluate(policy.enforce, pod_meta, spec);
        if !v.is_empty() {
            return Err(refuse(format!(
                "violates PodSecurity \"{}\": {}",
                policy.enforce,
                checks::detail(&v)
            )));
        }
    }
    let v = checks::evaluate(policy.warn, pod_meta, spec);
    if !v.is_empty() {
        crate::warning::add(format!(
            "would violate PodSecurity \"{}\": {}",
            policy.warn,
            checks::detail(&v)
        ));
    }
    Ok(())
}

/// Upstream's audit annotations: the enforced policy (pods), the `audit` level's
/// violations (pods and templates, allowed or refused).
fn audit_annotations(policy: &Policy, pod_meta: &Value, spec: &Value, enforce: bool) {
    if enforce {
        crate::audit::annotate(
            "pod-security.kubernetes.io/enforce-policy",
            policy.enforce.to_string(),
        );
    }
    if policy.audit.level == Level::Privileged {
        return;
    }
    let v = checks::evaluate(policy.audit, pod_meta, spec);
    if !v.is_empty() {
        crate::audit::annotate(
            "pod-security.kubernetes.io/audit-violations",
            format!(
                "would violate PodSecurity \"{}\": {}",
                policy.audit,
                checks::detail(&v)
            ),
        );
    }
}

/// Where a workload kind keeps its pod template.
fn template_path(def: &ResourceDef) -> Option<&'static str> {
    match (def.group, def.plural) {
        ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets")
        | ("batch", "jobs")
        | ("", "replicationcontrollers") => Some("/spec/template"),
        ("batch", "cronjobs") => Some("/spec/jobTemplate/spec/template"),
        ("", "podtemplates") => Some("/template"),
        _ => None,
    }
}

/// The pod template a workload carries: its metadata and spec.
fn template<'a>(def: &ResourceDef, obj: &'a Value) -> Option<(&'a Value, &'a Value)> {
    let t = obj.pointer(template_path(def)?).filter(|t| !t.is_null())?;
    Some((field(t, "metadata"), field(t, "spec")))
}

/// `obj[key]`, null when absent.
fn field<'a>(obj: &'a Value, key: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    obj.get(key).unwrap_or(&NULL)
}

fn is_pods(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.plural == "pods"
}

fn is_namespaces(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.plural == "namespaces"
}

/// Which kinds the plugin looks at at all; everything else pays one match.
fn concerns(def: &ResourceDef) -> bool {
    is_pods(def) || is_namespaces(def) || template_path(def).is_some()
}

fn runtime_class_exempt(config: &PodSecurity, spec: &Value) -> bool {
    spec.get("runtimeClassName")
        .and_then(Value::as_str)
        .is_some_and(|r| !r.is_empty() && config.exempt_runtime_classes.iter().any(|e| e == r))
}

/// A namespace's labels: from the watch cache, else (one created a moment ago) the store.
pub(crate) async fn namespace_labels(
    state: &AppState,
    ns: &str,
) -> Result<Option<Map<String, Value>>, ApiError> {
    let def = state
        .registry
        .get("", "v1", "namespaces")
        .expect("namespaces are built in");
    let key = state.key(def, None, ns);
    if let Some(rc) = state.cache.resource(def) {
        // The first key under the namespace's own key is the namespace itself, if cached.
        if let Some(snap) = rc.list(&key, None, None, Some(1), &mut |_| true) {
            if let Some(obj) = snap.items.first() {
                // the cached selector fields hold the name and labels: no decoding
                let attrs = obj.attrs();
                if meta::meta_str(attrs, "name") == Some(ns) {
                    return Ok(meta::labels(attrs).cloned());
                }
            }
        }
    }
    let obj = crate::objects::get(state, def, None, ns).await?;
    Ok(meta::labels(&obj).cloned())
}

/// The policy of namespace `ns`, or None when nothing there is to be checked.
async fn namespace_policy(
    state: &AppState,
    config: &PodSecurity,
    ns: &str,
) -> Result<Option<Policy>, ApiError> {
    if config.exempt_namespaces.iter().any(|e| e == ns) {
        return Ok(None);
    }
    let labels = namespace_labels(state, ns).await?;
    let (p, _) = policy(labels.as_ref(), &config.defaults);
    if p.enforce.level == Level::Privileged
        && p.warn.level == Level::Privileged
        && p.audit.level == Level::Privileged
    {
        return Ok(None);
    }
    Ok(Some(p))
}

/// Admit the create of `obj` (of kind `def`) in `ns`.
pub async fn admit_create(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    obj: &Value,
) -> Result<(), ApiError> {
    let Some(config) = state.pod_security.as_ref() else {
        return Ok(());
    };
    if !concerns(def) {
        return Ok(());
    }
    if is_namespaces(def) {
        return check_labels(def, obj, None, config);
    }
    admit(state, config, def, ns, obj).await
}

/// Admit the update of `old` to `new`: pods only when the checked fields change, workloads
/// only when their template does, namespaces when their labels do.
pub async fn admit_update(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let Some(config) = state.pod_security.as_ref() else {
        return Ok(());
    };
    if !concerns(def) {
        return Ok(());
    }
    if is_namespaces(def) {
        check_labels(def, new, Some(old), config)?;
        return warn_existing_pods(state, config, old, new).await;
    }
    let significant = if is_pods(def) {
        significant_pod_update(new, old)
    } else {
        // Compared in place: workload status updates are frequent and change no template.
        template_path(def).is_some_and(|p| new.pointer(p) != old.pointer(p))
    };
    if !significant {
        return Ok(());
    }
    admit(state, config, def, ns, new).await
}

async fn admit(
    state: &AppState,
    config: &PodSecurity,
    def: &ResourceDef,
    ns: Option<&str>,
    obj: &Value,
) -> Result<(), ApiError> {
    let Some(ns) = ns else {
        return Ok(());
    };
    let (pod_meta, spec, enforce) = if is_pods(def) {
        (field(obj, "metadata"), field(obj, "spec"), true)
    } else {
        match template(def, obj) {
            Some((m, s)) => (m, s, false),
            None => return Ok(()),
        }
    };
    if runtime_class_exempt(config, spec) || user_exempt(config) {
        return Ok(());
    }
    let Some(policy) = namespace_policy(state, config, ns).await? else {
        return Ok(());
    };
    let name = meta::meta_str(obj, "name")
        .filter(|n| !n.is_empty())
        .or_else(|| meta::meta_str(obj, "generateName"))
        .unwrap_or("")
        .to_string();
    evaluate(&policy, pod_meta, spec, enforce, |why| {
        ApiError::forbidden(def.plural, def.group, &name, &why)
    })
}

/// Upstream's `isSignificantPodUpdate`: only what pod validation lets an update change and
/// the checks look at.
fn significant_pod_update(new: &Value, old: &Value) -> bool {
    const POD_SECCOMP: &str = "seccomp.security.alpha.kubernetes.io/pod";
    if annotation(new, POD_SECCOMP) != annotation(old, POD_SECCOMP) {
        return true;
    }
    let container_changed = |n: &Value, o: &Value| {
        let name = n.get("name").and_then(Value::as_str).unwrap_or("");
        let key = format!("container.seccomp.security.alpha.kubernetes.io/{name}");
        n.get("image") != o.get("image") || annotation(new, &key) != annotation(old, &key)
    };
    for f in ["containers", "initContainers"] {
        let (n, o) = (spec_list(new, f), spec_list(old, f));
        if n.len() != o.len() || n.iter().zip(o).any(|(n, o)| container_changed(n, o)) {
            return true;
        }
    }
    let old_eph = spec_list(old, "ephemeralContainers");
    spec_list(new, "ephemeralContainers").iter().any(|n| {
        match old_eph.iter().find(|o| o.get("name") == n.get("name")) {
            None => true,
            Some(o) => container_changed(n, o),
        }
    })
}

fn annotation<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn spec_list<'a>(obj: &'a Value, field: &str) -> &'a [Value] {
    obj.get("spec")
        .and_then(|s| s.get(field))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Labels that do not parse are a 422, on create and when an update changes what is wrong.
fn check_labels(
    def: &ResourceDef,
    new: &Value,
    old: Option<&Value>,
    config: &PodSecurity,
) -> Result<(), ApiError> {
    let (_, errs) = policy(meta::labels(new), &config.defaults);
    if errs.is_empty() {
        return Ok(());
    }
    if let Some(old) = old {
        if policy(meta::labels(old), &config.defaults).1 == errs {
            return Ok(());
        }
    }
    let causes = errs
        .into_iter()
        .map(|(key, value, why)| {
            (
                format!("metadata.labels[{key}]"),
                "FieldValueInvalid",
                format!("Invalid value: {value:?}: {why}"),
            )
        })
        .collect();
    Err(ApiError::invalid(
        def.kind,
        def.group,
        meta::meta_str(new, "name").unwrap_or(""),
        causes,
    ))
}

/// A namespace whose `enforce` label got stricter: warn about the pods already there that
/// the new level would refuse, grouped by their violations (upstream's
/// `EvaluatePodsInNamespace`).
async fn warn_existing_pods(
    state: &AppState,
    config: &PodSecurity,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let (new_p, _) = policy(meta::labels(new), &config.defaults);
    let (old_p, _) = policy(meta::labels(old), &config.defaults);
    let ns = meta::meta_str(new, "name").unwrap_or("");
    if new_p.enforce == old_p.enforce
        || new_p.enforce.level == Level::Privileged
        || (new_p.enforce.version == old_p.enforce.version
            && new_p.enforce.level <= old_p.enforce.level)
        || config.exempt_namespaces.iter().any(|e| e == ns)
    {
        return Ok(());
    }
    let pods_def = state
        .registry
        .get("", "v1", "pods")
        .expect("pods are built in");
    let opts = crate::list::ListOpts {
        resource_version: Some("0".into()),
        ..Default::default()
    };
    let pods = match crate::list::list(state, pods_def, Some(ns), &opts).await {
        Ok(page) => page.items,
        Err(_) => {
            crate::warning::add("failed to list pods while checking new PodSecurity enforce level");
            return Ok(());
        }
    };
    for w in existing_pod_warnings(config, ns, new_p.enforce, &pods) {
        crate::warning::add(w);
    }
    Ok(())
}

/// Upstream's warnings for existing pods: a headline, then one line per distinct set of
/// reasons, naming the lexically first pod and how many others share it; sorted.
fn existing_pod_warnings(
    config: &PodSecurity,
    ns: &str,
    enforce: LevelVersion,
    pods: &[Value],
) -> Vec<String> {
    let total = pods.len();
    let pods = &pods[..total.min(MAX_PODS_TO_CHECK)];
    // reasons -> (first pod name, count), in the order first seen
    let mut groups: Vec<(String, String, usize)> = Vec::new();
    for pod in pods {
        let spec = field(pod, "spec");
        if runtime_class_exempt(config, spec) {
            continue;
        }
        let v = checks::evaluate(enforce, field(pod, "metadata"), spec);
        if v.is_empty() {
            continue;
        }
        let reasons = checks::reasons(&v);
        let name = meta::meta_str(pod, "name").unwrap_or("").to_string();
        match groups.iter_mut().find(|g| g.0 == reasons) {
            Some(g) => {
                if name < g.1 {
                    g.1 = name;
                }
                g.2 += 1;
            }
            None => groups.push((reasons, name, 1)),
        }
    }
    let mut out = Vec::new();
    if pods.len() < total {
        out.push(format!(
            "new PodSecurity enforce level only checked against the first {} of {total} existing pods",
            pods.len()
        ));
    }
    if groups.is_empty() {
        return out;
    }
    out.push(format!(
        "existing pods in namespace \"{ns}\" violate the new PodSecurity enforce level \"{enforce}\""
    ));
    let mut lines: Vec<String> = groups
        .into_iter()
        .map(|(reasons, first, count)| match count {
            1 => format!("{first}: {reasons}"),
            2 => format!("{first} (and 1 other pod): {reasons}"),
            n => format!("{first} (and {} other pods): {reasons}", n - 1),
        })
        .collect();
    lines.sort();
    out.extend(lines);
    out
}

#[cfg(test)]
mod tests;
