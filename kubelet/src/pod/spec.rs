//! From a `v1.Pod` to what the runtime runs: the sandbox config (hostname, DNS policy,
//! hostPorts) and one container config per container (command, env with `$(VAR)`
//! expansion, downward-API fields and ConfigMap/Secret refs read beforehand, resources).
//! Pure functions, unit-tested.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::cni::PortMapping;
use crate::runtime::{ContainerConfig, PodSandboxConfig};
use crate::security::SecurityContext;
use crate::spec::{DnsConfig, Resources};

/// Why a spec cannot be run as written (reported as a pod event/status, never a panic).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("pod has no {0}")]
    Missing(&'static str),
    #[error("container {container}: env {name}: {reason}")]
    Env {
        container: String,
        name: String,
        reason: String,
    },
    #[error("container {container}: resource {resource}: cannot parse quantity {value:?}")]
    Quantity {
        container: String,
        resource: String,
        value: String,
    },
    #[error("container {container}: port {port}: {reason}")]
    Port {
        container: String,
        port: i32,
        reason: String,
    },
    #[error("dnsPolicy {0:?} is not supported")]
    DnsPolicy(String),
    /// A ConfigMap/Secret (or key) the env needs is absent (upstream's message).
    #[error("{0}")]
    EnvObject(String),
}

/// ConfigMaps and Secrets a container's env refers to, read from the API before it starts:
/// `("configmap" | "secret", name)` -> its keys, None when it does not exist.
pub type EnvObjects = HashMap<(&'static str, String), Option<BTreeMap<String, String>>>;

/// The ConfigMaps/Secrets `c`'s `env` and `envFrom` refer to.
pub fn env_object_refs(c: &Container) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for f in c.env_from.iter().flatten() {
        if let Some(r) = &f.config_map_ref {
            out.push(("configmap", r.name.clone()));
        }
        if let Some(r) = &f.secret_ref {
            out.push(("secret", r.name.clone()));
        }
    }
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else { continue };
        if let Some(r) = &from.config_map_key_ref {
            out.push(("configmap", r.name.clone()));
        }
        if let Some(r) = &from.secret_key_ref {
            out.push(("secret", r.name.clone()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Node-level inputs the pod model needs.
#[derive(Clone, Debug)]
pub struct NodeContext {
    pub node_name: String,
    pub host_ip: Option<IpAddr>,
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    /// The host's resolv.conf nameservers/searches, for dnsPolicy Default.
    pub host_dns: DnsConfig,
}

/// namespace, name, uid of a pod.
pub fn pod_identity(pod: &Pod) -> Result<(String, String, String), SpecError> {
    let m = &pod.metadata;
    let name = m.name.clone().ok_or(SpecError::Missing("metadata.name"))?;
    let ns = m.namespace.clone().unwrap_or_else(|| "default".into());
    let uid = m.uid.clone().ok_or(SpecError::Missing("metadata.uid"))?;
    Ok((ns, name, uid))
}

pub fn pod_spec(pod: &Pod) -> Result<&PodSpec, SpecError> {
    pod.spec.as_ref().ok_or(SpecError::Missing("spec"))
}

/// The pod's sandbox: hostname (`spec.hostname` or the name), DNS by `dnsPolicy`, hostPorts.
pub fn sandbox_config(pod: &Pod, node: &NodeContext) -> Result<PodSandboxConfig, SpecError> {
    let (namespace, name, uid) = pod_identity(pod)?;
    let spec = pod_spec(pod)?;
    let short = spec.hostname.clone().unwrap_or_else(|| name.clone());
    // With a subdomain the pod has a fully qualified name, `<hostname>.<subdomain>.<ns>.svc.
    // <cluster domain>` (a headless Service of that name resolves it), first on its hosts
    // line; `setHostnameAsFQDN` makes it the kernel hostname too.
    let fqdn = spec
        .subdomain
        .as_ref()
        .filter(|s| !s.is_empty())
        .map(|sub| format!("{short}.{sub}.{namespace}.svc.{}", node.cluster_domain));
    let hosts_names: Vec<String> = fqdn.iter().cloned().chain([short.clone()]).collect();
    let hostname = match (&fqdn, spec.set_hostname_as_fqdn) {
        (Some(f), Some(true)) => f.clone(),
        _ => short,
    };
    let host_aliases = spec
        .host_aliases
        .iter()
        .flatten()
        .map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default()))
        .collect();
    let policy = spec
        .dns_policy
        .clone()
        .unwrap_or_else(|| "ClusterFirst".into());
    let host_network = spec.host_network.unwrap_or(false);
    let mut dns = match policy.as_str() {
        "ClusterFirst" if !host_network => {
            DnsConfig::cluster_first(&node.cluster_dns, &namespace, &node.cluster_domain)
        }
        "ClusterFirstWithHostNet" => {
            DnsConfig::cluster_first(&node.cluster_dns, &namespace, &node.cluster_domain)
        }
        // ClusterFirst on the host network falls back to Default, as upstream does.
        "ClusterFirst" | "Default" => node.host_dns.clone(),
        "None" => DnsConfig {
            nameservers: vec![],
            searches: vec![],
            options: vec![],
        },
        other => return Err(SpecError::DnsPolicy(other.into())),
    };
    if let Some(extra) = &spec.dns_config {
        for ns in extra.nameservers.iter().flatten() {
            if let Ok(ip) = ns.parse() {
                if !dns.nameservers.contains(&ip) {
                    dns.nameservers.push(ip);
                }
            }
        }
        for s in extra.searches.iter().flatten() {
            if !dns.searches.contains(s) {
                dns.searches.push(s.clone());
            }
        }
        for o in extra.options.iter().flatten() {
            let Some(n) = &o.name else { continue };
            dns.options
                .retain(|existing| existing.split(':').next() != Some(n.as_str()));
            dns.options.push(match &o.value {
                Some(v) => format!("{n}:{v}"),
                None => n.clone(),
            });
        }
    }
    let mut port_mappings = Vec::new();
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            let Some(host_port) = p.host_port.filter(|h| *h > 0) else {
                continue;
            };
            let bad = |reason: &str| SpecError::Port {
                container: c.name.clone(),
                port: p.container_port,
                reason: reason.into(),
            };
            let host_port = u16::try_from(host_port).map_err(|_| bad("hostPort out of range"))?;
            let container_port =
                u16::try_from(p.container_port).map_err(|_| bad("containerPort out of range"))?;
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            if port_mappings
                .iter()
                .any(|m: &PortMapping| m.host_port == host_port && m.protocol == protocol)
            {
                return Err(bad("hostPort is used twice in this pod"));
            }
            port_mappings.push(PortMapping {
                host_port,
                container_port,
                protocol,
                host_ip: p.host_ip.clone(),
            });
        }
    }
    Ok(PodSandboxConfig {
        namespace,
        name,
        uid,
        hostname,
        hosts_names,
        host_aliases,
        dns,
        port_mappings,
        host_network: host_network.then(|| node.host_ip.into_iter().collect()),
        host_ipc: spec.host_ipc.unwrap_or(false),
        host_pid: spec.host_pid.unwrap_or(false),
        sysctls: spec
            .security_context
            .iter()
            .flat_map(|s| s.sysctls.iter().flatten())
            .map(|s| (s.name.replace('/', "."), s.value.clone()))
            .collect(),
    })
}

/// Parse a Kubernetes quantity to a number of base units (bytes, cores).
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let value: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some(value * mult)
}

fn quantity(
    container: &str,
    map: Option<&BTreeMap<String, Quantity>>,
    key: &str,
) -> Result<Option<f64>, SpecError> {
    match map.and_then(|m| m.get(key)) {
        None => Ok(None),
        Some(Quantity(v)) => parse_quantity(v)
            .map(Some)
            .ok_or_else(|| SpecError::Quantity {
                container: container.into(),
                resource: key.into(),
                value: v.clone(),
            }),
    }
}

/// `resources` -> cgroup values. A request defaults to the limit, as the API server does.
pub fn resources(c: &Container) -> Result<Resources, SpecError> {
    let r = c.resources.as_ref();
    let limits = r.and_then(|r| r.limits.as_ref());
    let requests = r.and_then(|r| r.requests.as_ref());
    let mem = quantity(&c.name, limits, "memory")?;
    let cpu_limit = quantity(&c.name, limits, "cpu")?;
    let cpu_request = quantity(&c.name, requests, "cpu")?.or(cpu_limit);
    Ok(Resources {
        memory_limit: mem.map(|b| b.ceil() as i64),
        cpu_request_milli: cpu_request.map(|c| (c * 1000.0).round() as u64),
        cpu_limit_milli: cpu_limit.map(|c| (c * 1000.0).round() as u64),
    })
}

/// Expand `$(VAR)` from `vars`; `$$(VAR)` is an escaped literal; unknown stays as written.
pub fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("$(") {
            match t.find(')') {
                Some(end) => {
                    let name = &t[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&tail[..end + 3]),
                    }
                    rest = &t[end + 1..];
                }
                None => {
                    out.push_str(tail);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Downward API `fieldRef` values the kubelet knows without the API.
fn field_ref(pod: &Pod, path: &str, pod_ips: &[IpAddr], node: &NodeContext) -> Option<String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => Some(m.namespace.clone().unwrap_or_else(|| "default".into())),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => Some(
            spec.and_then(|s| s.node_name.clone())
                .unwrap_or_else(|| node.node_name.clone()),
        ),
        "spec.serviceAccountName" => Some(
            spec.and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
        ),
        "status.podIP" => Some(pod_ips.first().map(|i| i.to_string()).unwrap_or_default()),
        // every family's address, comma-separated, as upstream's
        "status.podIPs" => Some(
            pod_ips
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        "status.hostIP" | "status.hostIPs" => {
            Some(node.host_ip.map(|i| i.to_string()).unwrap_or_default())
        }
        _ => {
            let (kind, key) = path.split_once('[')?;
            let key = key.strip_suffix(']')?.trim_matches('\'').trim_matches('"');
            match kind {
                "metadata.labels" => m.labels.as_ref()?.get(key).cloned(),
                "metadata.annotations" => m.annotations.as_ref()?.get(key).cloned(),
                _ => None,
            }
        }
    }
}

/// `kind`/`name` from `objects`: Ok(None) when absent and `optional`, else upstream's error.
fn env_object<'a>(
    objects: &'a EnvObjects,
    kind: &'static str,
    name: &str,
    optional: bool,
) -> Result<Option<&'a BTreeMap<String, String>>, SpecError> {
    match objects.get(&(kind, name.to_string())) {
        Some(Some(keys)) => Ok(Some(keys)),
        _ if optional => Ok(None),
        _ => Err(SpecError::EnvObject(format!("{kind} {name:?} not found"))),
    }
}

/// The container's env in order (`envFrom` first, then `env`, as upstream), each value
/// expanded against the ones before it and the Service variables (`services`, see
/// [`super::service_env`]), which follow unless the container defines them itself.
/// ConfigMap/Secret values come from `objects`.
pub fn container_env(
    pod: &Pod,
    c: &Container,
    pod_ips: &[IpAddr],
    node: &NodeContext,
    objects: &EnvObjects,
    services: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, SpecError> {
    let mut out: Vec<(String, String)> = Vec::new();
    // `$(VAR)` finds the container's own variables first, then the Services'
    let mut vars: HashMap<String, String> = services
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // the limits must parse (a bad quantity is this container's error)
    resources(c)?;
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    for f in c.env_from.iter().flatten() {
        let prefix = f.prefix.clone().unwrap_or_default();
        let refs = [
            f.config_map_ref
                .as_ref()
                .map(|r| ("configmap", &r.name, r.optional)),
            f.secret_ref
                .as_ref()
                .map(|r| ("secret", &r.name, r.optional)),
        ];
        for (kind, name, optional) in refs.into_iter().flatten() {
            let Some(keys) = env_object(objects, kind, name, optional.unwrap_or(false))? else {
                continue;
            };
            for (k, v) in keys {
                let key = format!("{prefix}{k}");
                vars.insert(key.clone(), v.clone());
                match out.iter_mut().find(|(n, _)| *n == key) {
                    Some(slot) => slot.1 = v.clone(),
                    None => out.push((key, v.clone())),
                }
            }
        }
    }
    for e in c.env.iter().flatten() {
        let err = |reason: &str| SpecError::Env {
            container: c.name.clone(),
            name: e.name.clone(),
            reason: reason.into(),
        };
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => expand(v, &vars),
            (None, None) => String::new(),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    field_ref(pod, &f.field_path, pod_ips, node)
                        .ok_or_else(|| err(&format!("unsupported fieldRef {}", f.field_path)))?
                } else if let Some(r) = &from.resource_field_ref {
                    // upstream's containerResourceRuntimeValue: this container, or the one
                    // named; the divisor applied and rounded up; an unset limit is the node's
                    // allocatable
                    let named = r.container_name.as_deref().filter(|n| !n.is_empty());
                    let target = match named {
                        None => c,
                        Some(name) => crate::volume::payload::container_named(pod, name)
                            .ok_or_else(|| err(&format!("container {name:?} not found")))?,
                    };
                    let divisor = r.divisor.as_ref().map(|d| d.0.as_str());
                    let node = crate::volume::allocatable();
                    crate::volume::payload::resource_value(target, &r.resource, divisor, &node)
                        .map_err(|e| err(&e.to_string()))?
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    let Some(keys) = env_object(objects, "configmap", &r.name, optional)? else {
                        continue;
                    };
                    match keys.get(&r.key) {
                        Some(v) => v.clone(),
                        None if optional => continue,
                        None => {
                            return Err(SpecError::EnvObject(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            )));
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    let Some(keys) = env_object(objects, "secret", &r.name, optional)? else {
                        continue;
                    };
                    match keys.get(&r.key) {
                        Some(v) => v.clone(),
                        None if optional => continue,
                        None => {
                            return Err(SpecError::EnvObject(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            )));
                        }
                    }
                } else {
                    return Err(err("unsupported valueFrom"));
                }
            }
        };
        vars.insert(e.name.clone(), value.clone());
        match out.iter_mut().find(|(k, _)| *k == e.name) {
            Some(slot) => slot.1 = value,
            None => out.push((e.name.clone(), value)),
        }
    }
    for (k, v) in services {
        if !out.iter().any(|(n, _)| n == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    Ok(out)
}

/// One container's runtime config for restart `attempt` (no volume mounts yet: the worker
/// adds them from the pod's volumes).
pub fn container_config(
    pod: &Pod,
    c: &Container,
    attempt: u32,
    pod_ips: &[IpAddr],
    node: &NodeContext,
    objects: &EnvObjects,
    services: &BTreeMap<String, String>,
) -> Result<ContainerConfig, SpecError> {
    let env = container_env(pod, c, pod_ips, node, objects, services)?;
    let vars: HashMap<String, String> = env.iter().cloned().collect();
    let expand_all =
        |v: &Option<Vec<String>>| v.iter().flatten().map(|s| expand(s, &vars)).collect();
    Ok(ContainerConfig {
        name: c.name.clone(),
        image: c
            .image
            .clone()
            .ok_or(SpecError::Missing("container image"))?,
        command: expand_all(&c.command),
        args: expand_all(&c.args),
        env,
        working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
        resources: resources(c)?,
        mounts: Vec::new(),
        security: SecurityContext::effective(pod, c),
        attempt,
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        pid_namespace_of: None,
        host_pid: pod_spec(pod)?.host_pid.unwrap_or(false),
        // the API's default; static pods may come without it
        termination_message_path: Some(
            c.termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
        ),
        // the pod's DRA devices, added by the worker once its claims are prepared
        cdi: Default::default(),
        annotations: Vec::new(),
    })
}

/// Delete options that remove a pod from the API at once (grace period 0), and only if it
/// is still the pod with `uid` (a pod re-created under the same name is left alone).
pub fn delete_now(uid: String) -> kube::api::DeleteParams {
    kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    }
}

/// `terminationGracePeriodSeconds` (default 30 s).
pub fn grace_period(pod: &Pod) -> std::time::Duration {
    let secs = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    std::time::Duration::from_secs(secs.max(0) as u64)
}

#[cfg(test)]
mod tests;
