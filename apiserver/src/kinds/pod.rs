//! Upstream's `ValidatePodSpec` (`pkg/apis/core/validation`) for pods and pod templates, the
//! checks clients meet in practice, with upstream's paths and messages: volumes (one source
//! each, names unique DNS labels, the common sources' required fields, item paths and
//! modes), containers and init containers (names unique across both, image, ports, env and
//! envFrom, volume mounts naming a volume, resources with requests within limits, probes and
//! lifecycle handlers with one handler each, pull and termination-message policies), and the
//! pod-level fields (restart and DNS policy, `dnsConfig`, node selector, tolerations, names,
//! `activeDeadlineSeconds`), security contexts (`security.rs`), affinity and topology spread
//! constraints (`scheduling.rs`). A volume with a problem is left out of the volumes mounts
//! may name, as upstream does. Not checked (accepted as sent): resource claims, hugepage
//! sizes, `sleep` handlers' length, Windows options.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::field::{self, list, set, text};
use super::Cause;
use crate::meta::names;

/// Whether the spec is a pod's own (checks upstream runs on pods only) or a template's.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Pod,
    Template,
}

/// The volume sources in upstream's order; the first one set is the volume's, each later
/// one is refused at the path named here (upstream's, `downwarAPI` typo included).
const SOURCES: [(&str, &str); 30] = [
    ("emptyDir", "emptyDir"),
    ("hostPath", "hostPath"),
    ("gitRepo", "gitRepo"),
    ("gcePersistentDisk", "gcePersistentDisk"),
    ("awsElasticBlockStore", "awsElasticBlockStore"),
    ("secret", "secret"),
    ("nfs", "nfs"),
    ("iscsi", "iscsi"),
    ("glusterfs", "glusterfs"),
    ("flocker", "flocker"),
    ("persistentVolumeClaim", "persistentVolumeClaim"),
    ("rbd", "rbd"),
    ("cinder", "cinder"),
    ("cephfs", "cephFS"),
    ("quobyte", "quobyte"),
    ("downwardAPI", "downwarAPI"),
    ("fc", "fc"),
    ("flexVolume", "flexVolume"),
    ("configMap", "configMap"),
    ("azureFile", "azureFile"),
    ("vsphereVolume", "vsphereVolume"),
    ("photonPersistentDisk", "photonPersistentDisk"),
    ("portworxVolume", "portworxVolume"),
    ("azureDisk", "azureDisk"),
    ("storageos", "storageos"),
    ("projected", "projected"),
    ("scaleIO", "scaleIO"),
    ("csi", "csi"),
    ("ephemeral", "ephemeral"),
    ("image", "image"),
];

/// Check `spec`; `claims` are the volumes the pods get besides the spec's own (a
/// StatefulSet's `volumeClaimTemplates`: its template mounts them without declaring them).
pub fn validate_spec(
    spec: &Value,
    path: &str,
    owner: Owner,
    claims: &[&str],
    causes: &mut Vec<Cause>,
) {
    let mut volumes = validate_volumes(spec, path, causes);
    volumes.extend(claims.iter().copied());
    let containers = list(spec, "containers");
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    let host_users = spec.get("hostUsers").and_then(Value::as_bool) != Some(false);
    if containers.is_empty() {
        causes.push(field::required(&format!("{path}.containers"), ""));
    } else {
        let mut names = HashSet::new();
        let mut host_ports = HashSet::new();
        for (i, c) in containers.iter().enumerate() {
            let at = format!("{path}.containers[{i}]");
            validate_container(c, &at, &volumes, causes);
            super::security::validate_container(c, &at, host_users, causes);
            let name = text(c, "name");
            if !names.insert(name) {
                causes.push(field::duplicate(&format!("{at}.name"), &json!(name)));
            }
            validate_lifecycle(c, &at, causes);
            validate_probes(c, &at, causes);
            host_port_clashes(c, &at, &mut host_ports, causes);
        }
    }
    let mut names: HashSet<&str> = containers.iter().map(|c| text(c, "name")).collect();
    for (i, c) in list(spec, "initContainers").iter().enumerate() {
        let at = format!("{path}.initContainers[{i}]");
        validate_container(c, &at, &volumes, causes);
        super::security::validate_container(c, &at, host_users, causes);
        let sidecar = match set(c, "restartPolicy") {
            None => false,
            Some(p) if p == "Always" => true,
            Some(p) => {
                causes.push(field::not_supported(
                    &format!("{at}.restartPolicy"),
                    p,
                    &["Always"],
                ));
                false
            }
        };
        let name = text(c, "name");
        if !names.insert(name) {
            causes.push(field::duplicate(&format!("{at}.name"), &json!(name)));
        }
        // upstream checks an init container's host ports on their own, at index 0
        host_port_clashes(
            c,
            &format!("{path}.initContainers[0]"),
            &mut HashSet::new(),
            causes,
        );
        if sidecar {
            validate_lifecycle(c, &at, causes);
            validate_probes(c, &at, causes);
        } else {
            for f in [
                "lifecycle",
                "livenessProbe",
                "readinessProbe",
                "startupProbe",
            ] {
                if set(c, f).is_some() {
                    causes.push(field::forbidden(
                        &format!("{at}.{f}"),
                        "may not be set for init containers without restartPolicy=Always",
                    ));
                }
            }
        }
    }
    if host_network {
        for (i, c) in containers.iter().enumerate() {
            for (j, p) in list(c, "ports").iter().enumerate() {
                let host = p.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
                let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if host != port && (owner == Owner::Pod || host != 0) {
                    causes.push(field::invalid(
                        &format!("{path}.containers[{i}].ports[{j}].hostPort"),
                        &json!(host),
                        "must match `containerPort` when `hostNetwork` is true",
                    ));
                }
            }
        }
    }
    const RESTART: [&str; 3] = ["Always", "OnFailure", "Never"];
    causes.extend(field::one_of(spec, "restartPolicy", path, &RESTART));
    const DNS: [&str; 4] = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
    causes.extend(field::one_of(spec, "dnsPolicy", path, &DNS));
    let dns_none = spec.get("dnsPolicy").is_some_and(|d| d == "None");
    if let Some(sel) = set(spec, "nodeSelector") {
        causes.extend(names::labels_causes(&format!("{path}.nodeSelector"), sel));
    }
    super::security::validate_pod(spec, path, causes);
    super::scheduling::validate_affinity(spec, path, causes);
    validate_dns_config(spec, path, dns_none, causes);
    super::scheduling::validate_spread(spec, path, causes);
    for key in [
        "serviceAccountName",
        "nodeName",
        "priorityClassName",
        "runtimeClassName",
    ] {
        let name = text(spec, key);
        if !name.is_empty() {
            let at = format!("{path}.{key}");
            causes.extend(field::invalid_each(
                &at,
                &json!(name),
                names::dns1123_subdomain(name),
            ));
        }
    }
    if let Some(d) = set(spec, "activeDeadlineSeconds") {
        if !d
            .as_i64()
            .is_some_and(|d| (1..=i64::from(i32::MAX)).contains(&d))
        {
            causes.push(field::invalid(
                &format!("{path}.activeDeadlineSeconds"),
                d,
                "must be between 1 and 2147483647, inclusive",
            ));
        }
    }
    for key in ["hostname", "subdomain"] {
        let name = text(spec, key);
        if !name.is_empty() {
            let at = format!("{path}.{key}");
            causes.extend(field::invalid_each(
                &at,
                &json!(name),
                names::dns1123_label(name),
            ));
        }
    }
    for (i, t) in list(spec, "tolerations").iter().enumerate() {
        validate_toleration(t, &format!("{path}.tolerations[{i}]"), causes);
    }
    validate_resource_claims(spec, path, causes);
    if owner == Owner::Pod {
        for kind in ["containers", "initContainers"] {
            for (i, c) in list(spec, kind).iter().enumerate() {
                let image = text(c, "image");
                if image.trim() != image {
                    causes.push(field::invalid(
                        &format!("{path}.{kind}[{i}].image"),
                        &json!(image),
                        "must not have leading or trailing whitespace",
                    ));
                }
            }
        }
    }
}

/// Upstream's `validatePodResourceClaims` and `validateResourceClaimNames`: the pod's claims
/// are named once (DNS labels) and come from exactly one of a claim or a template; each
/// container's `resources.claims` names one of them, once per request.
fn validate_resource_claims(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let mut names: HashSet<&str> = HashSet::new();
    for (i, c) in list(spec, "resourceClaims").iter().enumerate() {
        let at = format!("{path}.resourceClaims[{i}]");
        let name = text(c, "name");
        if name.is_empty() {
            causes.push(field::required(&format!("{at}.name"), ""));
        } else if !names.insert(name) {
            causes.push(field::duplicate(&format!("{at}.name"), &json!(name)));
        } else {
            field::label(&format!("{at}.name"), name, causes);
        }
        let claim = set(c, "resourceClaimName").and_then(Value::as_str);
        let template = set(c, "resourceClaimTemplateName").and_then(Value::as_str);
        match (claim, template) {
            (Some(_), Some(_)) => causes.push(field::invalid(
                &at,
                c,
                "at most one of `resourceClaimName` or `resourceClaimTemplateName` may be specified",
            )),
            (None, None) => causes.push(field::invalid(
                &at,
                c,
                "must specify one of: `resourceClaimName`, `resourceClaimTemplateName`",
            )),
            _ => {}
        }
        for (key, value) in [
            ("resourceClaimName", claim),
            ("resourceClaimTemplateName", template),
        ] {
            if let Some(v) = value {
                let msgs = names::dns1123_subdomain(v);
                causes.extend(field::invalid_each(&format!("{at}.{key}"), &json!(v), msgs));
            }
        }
    }
    let mut known: Vec<&str> = names.iter().copied().collect();
    known.sort_unstable();
    for kind in ["containers", "initContainers"] {
        for (i, c) in list(spec, kind).iter().enumerate() {
            let resources = c.get("resources").unwrap_or(&Value::Null);
            let mut seen = HashSet::new();
            for (j, rc) in list(resources, "claims").iter().enumerate() {
                let at = format!("{path}.{kind}[{i}].resources.claims[{j}]");
                let name = text(rc, "name");
                if name.is_empty() {
                    causes.push(field::required(&at, ""));
                    continue;
                }
                let key = match text(rc, "request") {
                    "" => name.to_string(),
                    request => format!("{name}/{request}"),
                };
                if !seen.insert(key) {
                    causes.push(field::duplicate(&at, &json!(name)));
                }
                if !names.contains(name) {
                    let mut cause = field::not_found(&at, &json!(name));
                    cause.2 += ": must be one of the names in pod.spec.resourceClaims";
                    if known.is_empty() {
                        cause.2 += " which is empty";
                    } else {
                        cause.2 += &format!(": {}", known.join(", "));
                    }
                    causes.push(cause);
                }
            }
        }
    }
}

/// The volumes and the names of those without a problem (the ones mounts may name).
fn validate_volumes<'a>(spec: &'a Value, path: &str, causes: &mut Vec<Cause>) -> HashSet<&'a str> {
    let mut valid = HashSet::new();
    let mut seen = HashSet::new();
    for (i, v) in list(spec, "volumes").iter().enumerate() {
        let at = format!("{path}.volumes[{i}]");
        let before = causes.len();
        let mut found = None;
        for (key, shown) in SOURCES {
            if let Some(s) = set(v, key) {
                if found.is_none() {
                    found = Some(key);
                    validate_source(key, s, &format!("{at}.{key}"), causes);
                } else {
                    causes.push(field::forbidden(
                        &format!("{at}.{shown}"),
                        "may not specify more than 1 volume type",
                    ));
                }
            }
        }
        if found.is_none() {
            causes.push(field::required(&at, "must specify a volume type"));
        }
        let name = text(v, "name");
        label_name(name, &at, causes);
        if seen.contains(name) {
            causes.push(field::duplicate(&format!("{at}.name"), &json!(name)));
        }
        if causes.len() == before {
            valid.insert(name);
            seen.insert(name);
        }
    }
    valid
}

const MODE_MSG: &str = "must be a number between 0 and 0777 (octal), both inclusive";

fn validate_mode(v: &Value, key: &str, at: &str, causes: &mut Vec<Cause>) {
    if let Some(m) = set(v, key) {
        if !m.as_i64().is_some_and(|m| (0..=0o777).contains(&m)) {
            causes.push(field::invalid(&format!("{at}.{key}"), m, MODE_MSG));
        }
    }
}

/// Upstream's `validateLocalDescendingPath` and, for file names, the `..` prefix rule.
fn relative_path_causes(p: &str, at: &str, no_dotdot_prefix: bool, causes: &mut Vec<Cause>) {
    let value = json!(p);
    if p.starts_with('/') {
        causes.push(field::invalid(at, &value, "must be a relative path"));
    }
    if p.split('/').any(|part| part == "..") {
        causes.push(field::invalid(at, &value, "must not contain '..'"));
    }
    if no_dotdot_prefix && p.starts_with("..") {
        causes.push(field::invalid(at, &value, "must not start with '..'"));
    }
}

fn validate_items(source: &Value, at: &str, causes: &mut Vec<Cause>) {
    for (k, item) in list(source, "items").iter().enumerate() {
        let at = format!("{at}.items[{k}]");
        if text(item, "key").is_empty() {
            causes.push(field::required(&format!("{at}.key"), ""));
        }
        let p = text(item, "path");
        if p.is_empty() {
            causes.push(field::required(&format!("{at}.path"), ""));
        }
        relative_path_causes(p, &format!("{at}.path"), true, causes);
        validate_mode(item, "mode", &at, causes);
    }
}

fn validate_source(kind: &str, s: &Value, at: &str, causes: &mut Vec<Cause>) {
    match kind {
        "secret" => {
            if text(s, "secretName").is_empty() {
                causes.push(field::required(&format!("{at}.secretName"), ""));
            }
            validate_mode(s, "defaultMode", at, causes);
            validate_items(s, at, causes);
        }
        "configMap" => {
            if text(s, "name").is_empty() {
                causes.push(field::required(&format!("{at}.name"), ""));
            }
            validate_mode(s, "defaultMode", at, causes);
            validate_items(s, at, causes);
        }
        "downwardAPI" | "projected" => validate_mode(s, "defaultMode", at, causes),
        "persistentVolumeClaim" if text(s, "claimName").is_empty() => {
            causes.push(field::required(&format!("{at}.claimName"), ""));
        }
        "hostPath" if super::volume::path_source(s, at, causes) => {
            super::volume::host_path_type(s, at, causes);
        }
        "nfs" => super::volume::nfs(s, at, causes),
        _ => {}
    }
}

/// A volume's or container's `name`: required, a DNS-1123 label.
fn label_name(name: &str, at: &str, causes: &mut Vec<Cause>) {
    let path = format!("{at}.name");
    if name.is_empty() {
        causes.push(field::required(&path, ""));
    } else {
        causes.extend(field::invalid_each(
            &path,
            &json!(name),
            names::dns1123_label(name),
        ));
    }
}

fn validate_container(c: &Value, at: &str, volumes: &HashSet<&str>, causes: &mut Vec<Cause>) {
    label_name(text(c, "name"), at, causes);
    if text(c, "image").is_empty() {
        causes.push(field::required(&format!("{at}.image"), ""));
    }
    let messages = ["File", "FallbackToLogsOnError"];
    causes.extend(field::one_of(c, "terminationMessagePolicy", at, &messages));
    validate_ports(c, at, causes);
    validate_env(c, at, causes);
    validate_mounts(c, at, volumes, causes);
    let pulls = ["Always", "IfNotPresent", "Never"];
    causes.extend(field::one_of(c, "imagePullPolicy", at, &pulls));
    if let Some(r) = set(c, "resources") {
        validate_resources(r, &format!("{at}.resources"), causes);
    }
}

fn validate_ports(c: &Value, at: &str, causes: &mut Vec<Cause>) {
    let mut names = HashSet::new();
    for (j, p) in list(c, "ports").iter().enumerate() {
        let at = format!("{at}.ports[{j}]");
        let name = text(p, "name");
        if !name.is_empty() {
            let msgs = field::port_name(name);
            if !msgs.is_empty() {
                causes.extend(field::invalid_each(
                    &format!("{at}.name"),
                    &json!(name),
                    msgs,
                ));
            } else if !names.insert(name) {
                causes.push(field::duplicate(&format!("{at}.name"), &json!(name)));
            }
        }
        match p.get("containerPort").and_then(Value::as_i64).unwrap_or(0) {
            0 => causes.push(field::required(&format!("{at}.containerPort"), "")),
            n => causes.extend(field::invalid_each(
                &format!("{at}.containerPort"),
                &json!(n),
                field::port_num(n),
            )),
        }
        let host = p.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
        if host != 0 {
            let path = format!("{at}.hostPort");
            causes.extend(field::invalid_each(
                &path,
                &json!(host),
                field::port_num(host),
            ));
        }
        const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];
        causes.extend(field::one_of(p, "protocol", &at, &PROTOCOLS));
    }
}

/// Upstream's `AccumulateUniqueHostPorts`: one `<protocol>/<hostIP>/<hostPort>` per pod.
fn host_port_clashes(c: &Value, at: &str, seen: &mut HashSet<String>, causes: &mut Vec<Cause>) {
    for (j, p) in list(c, "ports").iter().enumerate() {
        let port = p.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
        if port == 0 {
            continue;
        }
        let key = format!("{}/{}/{port}", text(p, "protocol"), text(p, "hostIP"));
        if !seen.insert(key.clone()) {
            causes.push(field::duplicate(
                &format!("{at}.ports[{j}].hostPort"),
                &json!(key),
            ));
        }
    }
}

/// Upstream's relaxed environment variable names (GA in 1.34).
fn env_name_causes(name: &str, at: &str, causes: &mut Vec<Cause>) {
    if name.is_empty() {
        causes.push(field::invalid(
            at,
            &json!(name),
            "environment variable name must be non-empty",
        ));
    } else if !name
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
    {
        causes.push(field::invalid(
            at,
            &json!(name),
            "a valid environment variable name must consist only of printable ASCII characters other than '='",
        ));
    }
}

/// The pod fields env `fieldRef` may name; `CONVERTIBLE` are those upstream's conversion
/// knows (so others are refused as not convertible).
const ENV_FIELDS: [&str; 9] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];
const CONVERTIBLE: [&str; 5] = [
    "metadata.annotations",
    "metadata.labels",
    "spec.restartPolicy",
    "spec.schedulerName",
    "status.phase",
];
const ENV_RESOURCES: [&str; 6] = [
    "limits.cpu",
    "limits.ephemeral-storage",
    "limits.memory",
    "requests.cpu",
    "requests.ephemeral-storage",
    "requests.memory",
];

fn validate_env(c: &Value, at: &str, causes: &mut Vec<Cause>) {
    for (i, e) in list(c, "env").iter().enumerate() {
        let at = format!("{at}.env[{i}]");
        let name = text(e, "name");
        if name.is_empty() {
            causes.push(field::required(&format!("{at}.name"), ""));
        } else {
            env_name_causes(name, &format!("{at}.name"), causes);
        }
        if let Some(from) = set(e, "valueFrom") {
            validate_value_from(
                from,
                !text(e, "value").is_empty(),
                &format!("{at}.valueFrom"),
                causes,
            );
        }
    }
    for (i, e) in list(c, "envFrom").iter().enumerate() {
        let at_i = format!("{at}.envFrom[{i}]");
        let prefix = text(e, "prefix");
        if !prefix.is_empty() {
            env_name_causes(prefix, &format!("{at_i}.prefix"), causes);
        }
        let mut sources = 0;
        for key in ["configMapRef", "secretRef"] {
            if let Some(r) = set(e, key) {
                sources += 1;
                let name = text(r, "name");
                let path = format!("{at_i}.{key}.name");
                if name.is_empty() {
                    causes.push(field::required(&path, ""));
                } else {
                    // a prefix may end in '-' (upstream's NameIsDNSSubdomain(name, true))
                    let masked = match name.strip_suffix('-') {
                        Some(rest) => format!("{rest}a"),
                        None => name.to_string(),
                    };
                    causes.extend(field::invalid_each(
                        &path,
                        &json!(name),
                        names::dns1123_subdomain(&masked),
                    ));
                }
            }
        }
        match sources {
            0 => causes.push(field::invalid(
                &format!("{at}.envFrom"),
                &json!(""),
                "must specify one of: `configMapRef` or `secretRef`",
            )),
            1 => {}
            _ => causes.push(field::invalid(
                &format!("{at}.envFrom"),
                &json!(""),
                "may not have more than one field specified at a time",
            )),
        }
    }
}

fn validate_value_from(from: &Value, has_value: bool, at: &str, causes: &mut Vec<Cause>) {
    let mut sources = 0;
    if let Some(f) = set(from, "fieldRef") {
        sources += 1;
        validate_field_ref(f, &format!("{at}.fieldRef"), causes);
    }
    if let Some(r) = set(from, "resourceFieldRef") {
        sources += 1;
        let res = text(r, "resource");
        let path = format!("{at}.resourceFieldRef.resource");
        if res.is_empty() {
            causes.push(field::required(&path, ""));
        } else if !ENV_RESOURCES.contains(&res)
            && !res.starts_with("requests.hugepages-")
            && !res.starts_with("limits.hugepages-")
        {
            causes.push(field::not_supported(&path, &json!(res), &ENV_RESOURCES));
        }
    }
    for key in ["configMapKeyRef", "secretKeyRef"] {
        if let Some(r) = set(from, key) {
            sources += 1;
            let name = text(r, "name");
            let path = format!("{at}.{key}.name");
            causes.extend(field::invalid_each(
                &path,
                &json!(name),
                names::dns1123_subdomain(name),
            ));
            let k = text(r, "key");
            let path = format!("{at}.{key}.key");
            if k.is_empty() {
                causes.push(field::required(&path, ""));
            } else {
                causes.extend(field::invalid_each(&path, &json!(k), names::config_key(k)));
            }
        }
    }
    let problem = if sources == 0 {
        Some("must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`")
    } else if has_value {
        Some("may not be specified when `value` is not empty")
    } else if sources > 1 {
        Some("may not have more than one field specified at a time")
    } else {
        None
    };
    if let Some(p) = problem {
        causes.push(field::invalid(at, &json!(""), p));
    }
}

fn validate_field_ref(f: &Value, at: &str, causes: &mut Vec<Cause>) {
    let version = text(f, "apiVersion");
    if version.is_empty() {
        causes.push(field::required(&format!("{at}.apiVersion"), ""));
        return;
    }
    let path = text(f, "fieldPath");
    let path_at = format!("{at}.fieldPath");
    if path.is_empty() {
        causes.push(field::required(&path_at, ""));
        return;
    }
    let converting = |e: String| {
        field::invalid(
            &path_at,
            &json!(path),
            &format!("error converting fieldPath: {e}"),
        )
    };
    if version != "v1" {
        causes.push(converting(format!("unsupported pod version: {version}")));
        return;
    }
    // `metadata.labels['key']` and `metadata.annotations['key']`
    if let Some((label, rest)) = path.split_once('[') {
        let key = rest
            .strip_suffix(']')
            .and_then(|k| k.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')));
        match (label, key) {
            ("metadata.labels", Some(k)) => {
                causes.extend(field::invalid_each(at, &json!(k), names::qualified_name(k)))
            }
            ("metadata.annotations", Some(k)) => {
                let k = k.to_lowercase();
                causes.extend(field::invalid_each(
                    at,
                    &json!(k),
                    names::qualified_name(&k),
                ))
            }
            ("metadata.labels" | "metadata.annotations", None) => {
                causes.push(converting(format!("field label not supported: {path}")))
            }
            _ => causes.push(converting(format!(
                "field label does not support subscript: {label}"
            ))),
        }
        return;
    }
    // the legacy `spec.host` converts to `spec.nodeName`
    if !ENV_FIELDS.contains(&path) && path != "spec.host" {
        if CONVERTIBLE.contains(&path) {
            causes.push(field::not_supported(&path_at, &json!(path), &ENV_FIELDS));
        } else {
            causes.push(converting(format!("field label not supported: {path}")));
        }
    }
}

fn validate_mounts(c: &Value, at: &str, volumes: &HashSet<&str>, causes: &mut Vec<Cause>) {
    let privileged = c.pointer("/securityContext/privileged") == Some(&json!(true));
    let mut paths = HashSet::new();
    let mounts_at = format!("{at}.volumeMounts");
    for (k, m) in list(c, "volumeMounts").iter().enumerate() {
        let at = format!("{mounts_at}[{k}]");
        let name = text(m, "name");
        if name.is_empty() {
            causes.push(field::required(&format!("{at}.name"), ""));
        }
        if !volumes.contains(name) {
            causes.push(field::not_found(&format!("{at}.name"), &json!(name)));
        }
        let path = text(m, "mountPath");
        if path.is_empty() {
            causes.push(field::required(&format!("{at}.mountPath"), ""));
        }
        if !paths.insert(path) {
            causes.push(field::invalid(
                &format!("{at}.mountPath"),
                &json!(path),
                "must be unique",
            ));
        }
        let sub = text(m, "subPath");
        if !sub.is_empty() {
            relative_path_causes(sub, &format!("{mounts_at}.subPath"), false, causes);
        }
        let expr = text(m, "subPathExpr");
        if !expr.is_empty() {
            if !sub.is_empty() {
                causes.push(field::invalid(
                    &format!("{at}.subPathExpr"),
                    &json!(expr),
                    "subPathExpr and subPath are mutually exclusive",
                ));
            }
            relative_path_causes(expr, &format!("{mounts_at}.subPathExpr"), false, causes);
        }
        if let Some(p) = set(m, "mountPropagation") {
            const MODES: [&str; 3] = ["Bidirectional", "HostToContainer", "None"];
            let path = format!("{mounts_at}.mountPropagation");
            if !p.as_str().is_some_and(|p| MODES.contains(&p)) {
                causes.push(field::not_supported(&path, p, &MODES));
            } else if p == "Bidirectional" && !privileged {
                causes.push(field::forbidden(
                    &path,
                    "Bidirectional mount propagation is available only to privileged containers",
                ));
            }
        }
    }
}

pub(super) fn validate_resources(r: &Value, at: &str, causes: &mut Vec<Cause>) {
    use super::resources;
    let empty = serde_json::Map::new();
    let limits = r.get("limits").and_then(Value::as_object).unwrap_or(&empty);
    let requests = r
        .get("requests")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (which, map) in [("limits", limits), ("requests", requests)] {
        for (name, v) in map {
            let path = format!("{at}.{which}[{name}]");
            resources::name_causes(name, &path, causes);
            if !name.contains('/') && !resources::container(name) {
                causes.push(resources::invalid_shown(
                    &path,
                    name,
                    "must be a standard resource for containers",
                ));
            }
            if let Some(q) = resources::quantity(v) {
                resources::quantity_causes(name, q, &path, causes);
            }
        }
    }
    for (name, v) in requests {
        let Some(req) = resources::quantity(v) else {
            continue;
        };
        let extended = resources::extended(name);
        match limits.get(name).and_then(resources::quantity) {
            Some(limit) if extended && req != limit => causes.push(field::invalid(
                &format!("{at}.requests"),
                &json!(req.to_string()),
                &format!("must be equal to {name} limit of {limit}"),
            )),
            Some(limit) if req > limit => causes.push(field::invalid(
                &format!("{at}.requests"),
                &json!(req.to_string()),
                &format!("must be less than or equal to {name} limit of {limit}"),
            )),
            None if extended => causes.push(field::required(
                &format!("{at}.limits"),
                "Limit must be set for non overcommitable resources",
            )),
            _ => {}
        }
    }
}

/// Upstream's `validateHandler`: exactly one of the handlers `kinds` lists, each checked.
fn validate_handler(h: &Value, at: &str, kinds: &[&str], causes: &mut Vec<Cause>) {
    let mut found = false;
    for kind in kinds {
        let Some(x) = set(h, kind) else { continue };
        let path = format!("{at}.{kind}");
        if found {
            causes.push(field::forbidden(
                &path,
                "may not specify more than 1 handler type",
            ));
            continue;
        }
        found = true;
        match *kind {
            "exec" if list(x, "command").is_empty() => {
                causes.push(field::required(&format!("{path}.command"), ""));
            }
            "httpGet" => {
                if text(x, "path").is_empty() {
                    causes.push(field::required(&format!("{path}.path"), ""));
                }
                port_num_or_name(x.get("port"), &format!("{path}.port"), causes);
                if let Some(s) = set(x, "scheme") {
                    if !matches!(s.as_str(), Some("HTTP" | "HTTPS")) {
                        causes.push(field::not_supported(
                            &format!("{path}.scheme"),
                            s,
                            &["HTTP", "HTTPS"],
                        ));
                    }
                }
            }
            "tcpSocket" => port_num_or_name(x.get("port"), &format!("{path}.port"), causes),
            "grpc" => {
                let p = x.get("port").and_then(Value::as_i64).unwrap_or(0);
                causes.extend(field::invalid_each(
                    &format!("{path}.port"),
                    &json!(p),
                    field::port_num(p),
                ));
            }
            _ => {}
        }
    }
    if !found {
        causes.push(field::required(at, "must specify a handler type"));
    }
}

/// Upstream's `ValidatePortNumOrName`.
fn port_num_or_name(port: Option<&Value>, at: &str, causes: &mut Vec<Cause>) {
    match port {
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(0);
            causes.extend(field::invalid_each(at, &json!(n), field::port_num(n)));
        }
        Some(Value::String(s)) => {
            causes.extend(field::invalid_each(at, &json!(s), field::port_name(s)))
        }
        _ => causes.extend(field::invalid_each(at, &json!(0), field::port_num(0))),
    }
}

fn validate_lifecycle(c: &Value, at: &str, causes: &mut Vec<Cause>) {
    let Some(l) = set(c, "lifecycle") else { return };
    for hook in ["postStart", "preStop"] {
        if let Some(h) = set(l, hook) {
            let kinds = ["exec", "httpGet", "tcpSocket", "sleep"];
            validate_handler(h, &format!("{at}.lifecycle.{hook}"), &kinds, causes);
        }
    }
}

fn validate_probes(c: &Value, at: &str, causes: &mut Vec<Cause>) {
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(p) = set(c, probe) else { continue };
        let at = format!("{at}.{probe}");
        validate_handler(p, &at, &["exec", "httpGet", "tcpSocket", "grpc"], causes);
        for key in [
            "initialDelaySeconds",
            "timeoutSeconds",
            "periodSeconds",
            "successThreshold",
            "failureThreshold",
        ] {
            if let Some(n) = p.get(key).and_then(Value::as_i64).filter(|n| *n < 0) {
                causes.push(field::invalid(
                    &format!("{at}.{key}"),
                    &json!(n),
                    "must be greater than or equal to 0",
                ));
            }
        }
        let grace = p
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64);
        if let Some(g) = grace.filter(|g| *g <= 0) {
            let path = format!("{at}.terminationGracePeriodSeconds");
            causes.push(field::invalid(&path, &json!(g), "must be greater than 0"));
        }
        if probe == "readinessProbe" {
            if let Some(g) = grace {
                let path = format!("{at}.terminationGracePeriodSeconds");
                causes.push(field::invalid(
                    &path,
                    &json!(g),
                    "must not be set for readinessProbes",
                ));
            }
        } else if let Some(n) = p
            .get("successThreshold")
            .and_then(Value::as_i64)
            .filter(|n| *n != 1)
        {
            causes.push(field::invalid(
                &format!("{at}.successThreshold"),
                &json!(n),
                "must be 1",
            ));
        }
    }
}

fn validate_dns_config(spec: &Value, path: &str, none: bool, causes: &mut Vec<Cause>) {
    let at = format!("{path}.dnsConfig");
    let config = set(spec, "dnsConfig");
    let servers = config.map(|c| list(c, "nameservers")).unwrap_or(&[]);
    if none {
        let Some(_) = config else {
            causes.push(field::required(
                &at,
                "must provide `dnsConfig` when `dnsPolicy` is None",
            ));
            return;
        };
        if servers.is_empty() {
            causes.push(field::required(
                &format!("{at}.nameservers"),
                "must provide at least one DNS nameserver when `dnsPolicy` is None",
            ));
            return;
        }
    }
    let Some(config) = config else { return };
    if servers.len() > 3 {
        causes.push(field::invalid(
            &format!("{at}.nameservers"),
            &Value::Array(servers.to_vec()),
            "must not have more than 3 nameservers",
        ));
    }
    for (i, s) in servers.iter().enumerate() {
        if s.as_str()
            .is_none_or(|s| s.parse::<std::net::IpAddr>().is_err())
        {
            causes.push(field::invalid(
                &format!("{at}.nameservers[{i}]"),
                s,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    let searches = list(config, "searches");
    if searches.len() > 32 {
        causes.push(field::invalid(
            &format!("{at}.searches"),
            &Value::Array(searches.to_vec()),
            "must not have more than 32 search paths",
        ));
    }
    for (i, s) in searches.iter().enumerate() {
        let name = s.as_str().unwrap_or("");
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        if trimmed.is_empty() {
            continue; // a bare "." is accepted
        }
        // upstream's relaxed search validation allows '_'
        let checked = trimmed.replace('_', "a");
        let at = format!("{at}.searches[{i}]");
        causes.extend(field::invalid_each(
            &at,
            s,
            names::dns1123_subdomain(&checked),
        ));
    }
    for (i, o) in list(config, "options").iter().enumerate() {
        if text(o, "name").is_empty() {
            causes.push(field::required(
                &format!("{at}.options[{i}]"),
                "must not be empty",
            ));
        }
    }
}

fn validate_toleration(t: &Value, at: &str, causes: &mut Vec<Cause>) {
    let key = text(t, "key");
    let op = text(t, "operator");
    let effect = text(t, "effect");
    let value = text(t, "value");
    if !key.is_empty() {
        causes.extend(field::invalid_each(
            &format!("{at}.key"),
            &json!(key),
            names::qualified_name(key),
        ));
    }
    let op_at = format!("{at}.operator");
    if key.is_empty() && op != "Exists" {
        causes.push(field::invalid(
            &op_at,
            &json!(op),
            "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
        ));
    }
    if set(t, "tolerationSeconds").is_some() && effect != "NoExecute" {
        causes.push(field::invalid(
            &format!("{at}.effect"),
            &json!(effect),
            "effect must be 'NoExecute' when `tolerationSeconds` is set",
        ));
    }
    match op {
        "Equal" | "" => {
            let msgs = names::label_value(value);
            if !msgs.is_empty() {
                causes.push(field::invalid(&op_at, &json!(value), &msgs.join(";")));
            }
        }
        "Exists" => {
            if !value.is_empty() {
                causes.push(field::invalid(
                    &op_at,
                    &json!(value),
                    "value must be empty when `operator` is 'Exists'",
                ));
            }
        }
        _ => causes.push(field::not_supported(
            &op_at,
            &json!(op),
            &["Equal", "Exists"],
        )),
    }
    const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];
    if !effect.is_empty() && !EFFECTS.contains(&effect) {
        causes.push(field::not_supported(
            &format!("{at}.effect"),
            &json!(effect),
            &EFFECTS,
        ));
    }
}

/// Upstream's `ValidatePodTemplateSpecForReplicaSet` and its siblings: a workload's pods
/// always restart, have no deadline, and a template carries no ephemeral containers.
pub fn validate_workload_template(kind: &str, spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let restart = spec.get("restartPolicy").cloned().unwrap_or(json!(""));
    if restart != "Always" {
        causes.push(field::not_supported(
            &format!("{path}.restartPolicy"),
            &restart,
            &["Always"],
        ));
    }
    if set(spec, "activeDeadlineSeconds").is_some() {
        // Deployments share the ReplicaSet's words, as upstream
        let kind = if kind == "Deployment" {
            "ReplicaSet"
        } else {
            kind
        };
        causes.push(field::forbidden(
            &format!("{path}.activeDeadlineSeconds"),
            &format!("activeDeadlineSeconds in {kind} is not Supported"),
        ));
    }
    ephemeral_in_template(spec, path, causes);
}

pub fn ephemeral_in_template(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    if !list(spec, "ephemeralContainers").is_empty() {
        causes.push(field::forbidden(
            &format!("{path}.ephemeralContainers"),
            "ephemeral containers not allowed in pod template",
        ));
    }
}

/// Upstream's `SetDefaults_Probe`, `SetDefaults_HTTPGetAction`, `SetDefaults_ObjectFieldSelector`
/// and `SetDefaults_Volume` (with the volume sources' `defaultMode`s) for one pod spec.
pub fn default_spec(spec: &mut Value) {
    for kind in ["containers", "initContainers", "ephemeralContainers"] {
        let Some(cs) = spec.get_mut(kind).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in cs {
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                if let Some(p) = c.get_mut(probe).filter(|p| p.is_object()) {
                    for (key, value) in [
                        ("timeoutSeconds", 1),
                        ("periodSeconds", 10),
                        ("successThreshold", 1),
                        ("failureThreshold", 3),
                    ] {
                        if p.get(key).and_then(Value::as_i64).unwrap_or(0) == 0 {
                            p[key] = json!(value);
                        }
                    }
                    default_http_get(p);
                }
            }
            if let Some(l) = c.get_mut("lifecycle").filter(|l| l.is_object()) {
                for hook in ["postStart", "preStop"] {
                    if let Some(h) = l.get_mut(hook).filter(|h| h.is_object()) {
                        default_http_get(h);
                    }
                }
            }
            if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
                for e in env {
                    if let Some(f) = e
                        .pointer_mut("/valueFrom/fieldRef")
                        .filter(|f| f.is_object())
                    {
                        if text(f, "apiVersion").is_empty() {
                            f["apiVersion"] = json!("v1");
                        }
                    }
                }
            }
        }
    }
    let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) else {
        return;
    };
    for v in volumes {
        let Some(m) = v.as_object_mut() else { continue };
        if !SOURCES
            .iter()
            .any(|(key, _)| m.get(*key).is_some_and(|s| !s.is_null()))
        {
            m.insert("emptyDir".into(), json!({}));
        }
        for source in ["secret", "configMap", "downwardAPI", "projected"] {
            if let Some(s) = m.get_mut(source).and_then(Value::as_object_mut) {
                s.entry("defaultMode").or_insert(json!(420));
            }
        }
        let items = m
            .get_mut("downwardAPI")
            .and_then(|d| d.get_mut("items"))
            .and_then(Value::as_array_mut);
        for item in items.into_iter().flatten() {
            if let Some(f) = item.get_mut("fieldRef").filter(|f| f.is_object()) {
                if text(f, "apiVersion").is_empty() {
                    f["apiVersion"] = json!("v1");
                }
            }
        }
    }
}

fn default_http_get(handler: &mut Value) {
    if let Some(h) = handler.get_mut("httpGet").filter(|h| h.is_object()) {
        if text(h, "path").is_empty() {
            h["path"] = json!("/");
        }
        if text(h, "scheme").is_empty() {
            h["scheme"] = json!("HTTP");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The causes for a pod (`owner`) spec after upstream's defaulting, as kubectl prints them.
    fn messages(mut spec: Value, owner: Owner) -> Vec<String> {
        for (k, v) in [
            ("restartPolicy", json!("Always")),
            ("dnsPolicy", json!("ClusterFirst")),
        ] {
            if spec.get(k).is_none() {
                spec[k] = v;
            }
        }
        let mut all = Vec::new();
        if let Some(m) = spec.as_object_mut() {
            for (k, v) in m.iter_mut() {
                if k == "containers" || k == "initContainers" {
                    all.extend(v.as_array_mut().into_iter().flatten());
                }
            }
        }
        for c in all {
            for (k, v) in [
                ("imagePullPolicy", "IfNotPresent"),
                ("terminationMessagePolicy", "File"),
            ] {
                if c.get(k).is_none() {
                    c[k] = json!(v);
                }
            }
            for p in c
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if p.get("protocol").is_none() {
                    p["protocol"] = json!("TCP");
                }
            }
        }
        default_spec(&mut spec);
        let mut causes = Vec::new();
        validate_spec(&spec, "spec", owner, &[], &mut causes);
        field::render(causes)
    }

    #[test]
    fn resource_claims_come_from_one_source_and_containers_name_them() {
        let pod = |claims: Value, container_claims: Value| {
            json!({"resourceClaims": claims, "containers": [{"name": "c", "image": "i",
                "resources": {"claims": container_claims}}]})
        };
        let ok = pod(
            json!([{"name": "gpu", "resourceClaimTemplateName": "gpu-tpl"}]),
            json!([{"name": "gpu"}, {"name": "gpu", "request": "big"}]),
        );
        assert_eq!(messages(ok, Owner::Pod), Vec::<String>::new());
        let bad = pod(
            json!([{"name": "gpu"}, {"name": "gpu", "resourceClaimName": "a", "resourceClaimTemplateName": "b"},
                   {"name": "Bad_Name", "resourceClaimName": "Not_A_Name"}]),
            json!([{"name": "gpu"}, {"name": "gpu"}, {"name": "fpga"}]),
        );
        let msgs = messages(bad, Owner::Pod);
        for want in [
            r#"spec.resourceClaims[0]: Invalid value: {"name":"gpu"}: must specify one of: `resourceClaimName`, `resourceClaimTemplateName`"#,
            r#"spec.resourceClaims[1].name: Duplicate value: "gpu""#,
            "spec.resourceClaims[1]: Invalid value: {\"name\":\"gpu\",\"resourceClaimName\":\"a\",\"resourceClaimTemplateName\":\"b\"}: at most one of `resourceClaimName` or `resourceClaimTemplateName` may be specified",
            r#"spec.containers[0].resources.claims[1]: Duplicate value: "gpu""#,
            r#"spec.containers[0].resources.claims[2]: Not found: "fpga": must be one of the names in pod.spec.resourceClaims: Bad_Name, gpu"#,
        ] {
            assert!(msgs.iter().any(|m| m == want), "{want}\nin {msgs:#?}");
        }
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("spec.resourceClaims[2].name: Invalid value: \"Bad_Name\"")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter().any(|m| m.starts_with(
                "spec.resourceClaims[2].resourceClaimName: Invalid value: \"Not_A_Name\""
            )),
            "{msgs:#?}"
        );
        let none = pod(json!([]), json!([{"name": "gpu"}]));
        assert_eq!(
            messages(none, Owner::Pod),
            [
                r#"spec.containers[0].resources.claims[0]: Not found: "gpu": must be one of the names in pod.spec.resourceClaims which is empty"#
            ]
        );
    }

    #[test]
    fn a_pod_using_most_fields_is_valid() {
        let spec = json!({
            "volumes": [
                {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                {"name": "cfg", "configMap": {"name": "app", "items": [{"key": "a.conf", "path": "conf/a.conf", "mode": 0o600}]}},
                {"name": "sec", "secret": {"secretName": "app", "defaultMode": 0o400}},
                {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                {"name": "host", "hostPath": {"path": "/var/log", "type": "Directory"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "scratch"}
            ],
            "initContainers": [
                {"name": "setup", "image": "busybox", "command": ["true"]},
                {"name": "proxy", "image": "envoy:1", "restartPolicy": "Always",
                 "readinessProbe": {"tcpSocket": {"port": 9901}}}
            ],
            "containers": [{
                "name": "app", "image": "kaze/echo:1",
                "ports": [{"name": "http", "containerPort": 8080},
                          {"name": "dns", "containerPort": 53, "protocol": "UDP", "hostPort": 5353}],
                "env": [
                    {"name": "PLAIN", "value": "1"},
                    {"name": "my.dotted-name", "value": "2"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.host"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "CFG", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "a.conf"}}},
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "app", "key": "password", "optional": true}}}
                ],
                "envFrom": [{"configMapRef": {"name": "app"}, "prefix": "CFG_"}, {"secretRef": {"name": "app"}}],
                "volumeMounts": [
                    {"name": "cache", "mountPath": "/cache"},
                    {"name": "cfg", "mountPath": "/etc/app", "readOnly": true},
                    {"name": "cfg", "mountPath": "/etc/one", "subPath": "conf/a.conf"},
                    {"name": "data", "mountPath": "/data", "subPathExpr": "$(POD)"},
                    {"name": "scratch", "mountPath": "/scratch"}
                ],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi", "example.com/gpu": 1},
                              "limits": {"cpu": "1", "memory": "128Mi", "example.com/gpu": "1"}},
                "livenessProbe": {"httpGet": {"port": "http", "path": "/healthz"}, "initialDelaySeconds": 3},
                "readinessProbe": {"exec": {"command": ["true"]}, "successThreshold": 2},
                "startupProbe": {"grpc": {"port": 9090}, "failureThreshold": 30},
                "lifecycle": {"preStop": {"sleep": {"seconds": 2}}, "postStart": {"httpGet": {"port": 8080}}}
            }],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [
                {"operator": "Exists"},
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "dedicated", "value": "db", "effect": "NoSchedule"}
            ],
            "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["10.43.0.10"], "searches": ["svc.cluster.local", "_tcp.example."], "options": [{"name": "ndots", "value": "2"}]},
            "serviceAccountName": "app",
            "hostname": "app-0", "subdomain": "apps",
            "activeDeadlineSeconds": 600,
            "priorityClassName": "high"
        });
        assert_eq!(messages(spec.clone(), Owner::Pod), Vec::<String>::new());
        assert_eq!(messages(spec, Owner::Template), Vec::<String>::new());
    }

    #[test]
    fn defaults_are_upstreams() {
        let mut spec = json!({
            "volumes": [{"name": "v"}, {"name": "s", "secret": {"secretName": "s"}}],
            "containers": [{"name": "c", "image": "i",
                "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "livenessProbe": {"httpGet": {"port": 80}},
                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 5}}]
        });
        default_spec(&mut spec);
        assert_eq!(spec["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(spec["volumes"][1]["secret"]["defaultMode"], 420);
        let c = &spec["containers"][0];
        assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        assert_eq!(
            c["livenessProbe"],
            json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                   "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
        assert_eq!(c["readinessProbe"]["periodSeconds"], 5);
    }

    #[test]
    fn bad_containers_get_upstreams_causes() {
        let spec = json!({
            "volumes": [
                {"name": "cfg", "configMap": {"name": "app"}, "secret": {"secretName": "x"}},
                {"name": "Bad_Name", "emptyDir": {}},
                {"name": "ok", "emptyDir": {}},
                {"name": "ok", "emptyDir": {}}
            ],
            "containers": [{
                "name": "app", "image": "i",
                "ports": [{"name": "http", "containerPort": 0},
                          {"name": "http", "containerPort": 70000, "protocol": "ICMP"},
                          {"containerPort": 80, "hostPort": 80},
                          {"containerPort": 81, "hostPort": 80}],
                "env": [{"name": "A=B", "value": "x"},
                        {"name": "F", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}},
                        {"name": "G", "value": "v", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                        {"name": "H", "valueFrom": {}}],
                "envFrom": [{}],
                "volumeMounts": [{"name": "cfg", "mountPath": "/a"},
                                 {"name": "ok", "mountPath": "/a"},
                                 {"name": "ok", "mountPath": "/b", "subPath": "../up"}],
                "resources": {"requests": {"cpu": "2", "memory": "-1"}, "limits": {"cpu": "1", "foo": "1"}},
                "livenessProbe": {"exec": {"command": ["true"]}, "httpGet": {"port": 80}, "successThreshold": 2},
                "readinessProbe": {"periodSeconds": -1}
            }, {"name": "app", "image": "j", "imagePullPolicy": "Sometimes"}],
            "initContainers": [{"name": "app", "image": "k", "livenessProbe": {"exec": {"command": ["true"]}}}],
            "restartPolicy": "Sometimes",
            "tolerations": [{"value": "x"}, {"key": "k", "operator": "Exists", "value": "v"},
                            {"key": "k", "tolerationSeconds": 5, "effect": "NoSchedule"}],
            "activeDeadlineSeconds": 0
        });
        let want = [
            // upstream's source order puts secret before configMap
            "spec.volumes[0].configMap: Forbidden: may not specify more than 1 volume type",
            r#"spec.volumes[1].name: Invalid value: "Bad_Name": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#,
            r#"spec.volumes[3].name: Duplicate value: "ok""#,
            "spec.containers[0].ports[0].containerPort: Required value",
            r#"spec.containers[0].ports[1].name: Duplicate value: "http""#,
            "spec.containers[0].ports[1].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            r#"spec.containers[0].ports[1].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#,
            r#"spec.containers[0].env[0].name: Invalid value: "A=B": a valid environment variable name must consist only of printable ASCII characters other than '='"#,
            r#"spec.containers[0].env[1].valueFrom.fieldRef.fieldPath: Unsupported value: "status.phase": supported values: "metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName", "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs""#,
            r#"spec.containers[0].env[2].valueFrom: Invalid value: "": may not be specified when `value` is not empty"#,
            r#"spec.containers[0].env[3].valueFrom: Invalid value: "": must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"#,
            r#"spec.containers[0].envFrom: Invalid value: "": must specify one of: `configMapRef` or `secretRef`"#,
            r#"spec.containers[0].volumeMounts[0].name: Not found: "cfg""#,
            r#"spec.containers[0].volumeMounts[1].mountPath: Invalid value: "/a": must be unique"#,
            r#"spec.containers[0].volumeMounts.subPath: Invalid value: "../up": must not contain '..'"#,
            // (Go prints a ResourceName through its String(): unquoted)
            "spec.containers[0].resources.limits[foo]: Invalid value: foo: must be a standard resource type or fully qualified",
            "spec.containers[0].resources.limits[foo]: Invalid value: foo: must be a standard resource for containers",
            r#"spec.containers[0].resources.requests[memory]: Invalid value: "-1": must be greater than or equal to 0"#,
            r#"spec.containers[0].resources.requests: Invalid value: "2": must be less than or equal to cpu limit of 1"#,
            "spec.containers[0].livenessProbe.httpGet: Forbidden: may not specify more than 1 handler type",
            "spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1",
            "spec.containers[0].readinessProbe: Required value: must specify a handler type",
            "spec.containers[0].readinessProbe.periodSeconds: Invalid value: -1: must be greater than or equal to 0",
            r#"spec.containers[0].ports[3].hostPort: Duplicate value: "TCP//80""#,
            r#"spec.containers[1].imagePullPolicy: Unsupported value: "Sometimes": supported values: "Always", "IfNotPresent", "Never""#,
            r#"spec.containers[1].name: Duplicate value: "app""#,
            r#"spec.initContainers[0].name: Duplicate value: "app""#,
            "spec.initContainers[0].livenessProbe: Forbidden: may not be set for init containers without restartPolicy=Always",
            r#"spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never""#,
            "spec.activeDeadlineSeconds: Invalid value: 0: must be between 1 and 2147483647, inclusive",
            r#"spec.tolerations[0].operator: Invalid value: "": operator must be Exists when `key` is empty, which means "match all values and all keys""#,
            r#"spec.tolerations[1].operator: Invalid value: "v": value must be empty when `operator` is 'Exists'"#,
            r#"spec.tolerations[2].effect: Invalid value: "NoSchedule": effect must be 'NoExecute' when `tolerationSeconds` is set"#,
        ];
        assert_eq!(messages(spec, Owner::Pod), want);
    }

    #[test]
    fn pod_only_and_template_only_rules() {
        let host = json!({"hostNetwork": true, "containers": [{"name": "c", "image": " i ",
            "ports": [{"containerPort": 80, "hostPort": 81}, {"containerPort": 82}]}]});
        assert_eq!(
            messages(host.clone(), Owner::Pod),
            vec![
                "spec.containers[0].ports[0].hostPort: Invalid value: 81: must match `containerPort` when `hostNetwork` is true",
                "spec.containers[0].ports[1].hostPort: Invalid value: 0: must match `containerPort` when `hostNetwork` is true",
                r#"spec.containers[0].image: Invalid value: " i ": must not have leading or trailing whitespace"#,
            ]
        );
        assert_eq!(
            messages(host, Owner::Template),
            vec!["spec.containers[0].ports[0].hostPort: Invalid value: 81: must match `containerPort` when `hostNetwork` is true"]
        );
        let mut causes = Vec::new();
        let spec = json!({"restartPolicy": "Never", "activeDeadlineSeconds": 5, "ephemeralContainers": [{"name": "e"}]});
        validate_workload_template("Deployment", &spec, "spec.template.spec", &mut causes);
        let got: Vec<String> = field::render(causes);
        assert_eq!(
            got,
            vec![
                r#"spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always""#,
                "spec.template.spec.activeDeadlineSeconds: Forbidden: activeDeadlineSeconds in ReplicaSet is not Supported",
                "spec.template.spec.ephemeralContainers: Forbidden: ephemeral containers not allowed in pod template",
            ]
        );
        let none = json!({"dnsPolicy": "None", "containers": [{"name": "c", "image": "i"}]});
        assert_eq!(
            messages(none, Owner::Pod),
            vec![
                "spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None"
            ]
        );
    }
}
