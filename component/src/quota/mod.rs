//! ResourceQuota accounting shared by the apiserver's quota admission and the
//! controller-manager's `resourcequota` controller, after upstream's `quota/v1` evaluators:
//! what an object charges (`pods`, `requests.cpu`, `count/deployments.apps`, ...), which
//! quotas it falls under (scopes), and the per-container requests a quota on cpu or memory
//! demands.
//!
//! Objects are read as JSON (`spec`/`status`), so the apiserver's stored form and a
//! controller's `DynamicObject` data use the same code.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ResourceQuotaSpec, ScopedResourceSelectorRequirement};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::serde_json::Value;

mod quantity;

pub use quantity::{Format, Quantity};

/// Resource name -> amount, ordered as upstream prints them.
pub type ResourceList = BTreeMap<String, Quantity>;

/// An object as quota sees it.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// API group (`""` for core) and plural resource name.
    pub group: &'a str,
    pub resource: &'a str,
    /// The object's JSON: at least its `spec` and `status`.
    pub body: &'a Value,
    /// See [`deletion_deadline`].
    pub deletion_deadline: Option<i64>,
}

/// When a deleted pod stops being charged (Unix seconds): its deletion timestamp plus its
/// grace period, as upstream's `QuotaV1Pod`, so pods stuck terminating on a lost node do
/// not block new ones.
pub fn deletion_deadline(meta: &ObjectMeta) -> Option<i64> {
    let at = meta.deletion_timestamp.as_ref()?.0.as_second();
    Some(at + meta.deletion_grace_period_seconds?)
}

/// The quota resource name that counts objects of a kind: `count/pods`,
/// `count/deployments.apps`.
pub fn count_name(group: &str, resource: &str) -> String {
    if group.is_empty() {
        format!("count/{resource}")
    } else {
        format!("count/{resource}.{group}")
    }
}

/// The (group, resource) whose objects a quota resource name is computed from, e.g.
/// `requests.cpu` -> pods, `services.nodeports` -> services, `count/jobs.batch` -> jobs.
pub fn kind_of(name: &str) -> Option<(String, String)> {
    if let Some(rest) = name.strip_prefix("count/") {
        return Some(match rest.split_once('.') {
            Some((resource, group)) => (group.to_string(), resource.to_string()),
            None => (String::new(), rest.to_string()),
        });
    }
    let core = |r: &str| Some((String::new(), r.to_string()));
    match name {
        "services" | "services.loadbalancers" | "services.nodeports" => core("services"),
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => core(name),
        "persistentvolumeclaims" | "requests.storage" => core("persistentvolumeclaims"),
        _ if name.contains(".storageclass.storage.k8s.io/") => core("persistentvolumeclaims"),
        _ if is_pod_resource(name) => core("pods"),
        _ => None,
    }
}

/// Whether objects of (group, resource) are charged for the quota resource `name`.
pub fn governs(group: &str, resource: &str, name: &str) -> bool {
    name == count_name(group, resource)
        || kind_of(name).is_some_and(|(g, r)| g == group && r == resource)
}

/// Compute resources a pod is charged for (upstream's pod evaluator).
fn is_pod_resource(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "pods",
        "cpu",
        "memory",
        "ephemeral-storage",
        "requests.cpu",
        "requests.memory",
        "requests.ephemeral-storage",
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
    ];
    if NAMES.contains(&name) || name.starts_with("hugepages-") {
        return true;
    }
    let Some(rest) = name
        .strip_prefix("requests.")
        .or_else(|| name.strip_prefix("limits."))
    else {
        return false;
    };
    // `requests.hugepages-2Mi`, and extended resources (`requests.nvidia.com/gpu`).
    rest.starts_with("hugepages-") || (rest.contains('/') && name.starts_with("requests."))
}

/// What one object charges. Every object charges its `count/<resource>.<group>`; pods that
/// have finished (or outlived their deletion grace) charge nothing else.
pub fn usage(item: &Item<'_>, now: i64) -> ResourceList {
    let mut out = ResourceList::new();
    out.insert(count_name(item.group, item.resource), Quantity::count(1));
    if !item.group.is_empty() {
        return out;
    }
    let body = item.body;
    match item.resource {
        "pods" if pod_is_charged(item, now) => pod_compute_usage(body, &mut out),
        "services" => {
            out.insert("services".into(), Quantity::count(1));
            let ty = body.pointer("/spec/type").and_then(Value::as_str);
            let ports = body
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            let node_ports = match ty {
                Some("NodePort") => ports.len(),
                Some("LoadBalancer") => {
                    if body.pointer("/spec/allocateLoadBalancerNodePorts")
                        == Some(&Value::Bool(false))
                    {
                        ports
                            .iter()
                            .filter(|p| p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0)
                            .count()
                    } else {
                        ports.len()
                    }
                }
                _ => 0,
            };
            out.insert(
                "services.nodeports".into(),
                Quantity::count(node_ports as i64),
            );
            let lb = i64::from(ty == Some("LoadBalancer"));
            out.insert("services.loadbalancers".into(), Quantity::count(lb));
        }
        "persistentvolumeclaims" => {
            out.insert("persistentvolumeclaims".into(), Quantity::count(1));
            let class = body
                .pointer("/spec/storageClassName")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty());
            if let Some(class) = class {
                out.insert(
                    format!("{class}.storageclass.storage.k8s.io/persistentvolumeclaims"),
                    Quantity::count(1),
                );
            }
            let storage = body
                .pointer("/spec/resources/requests/storage")
                .and_then(Value::as_str)
                .and_then(Quantity::parse)
                .filter(|q| !q.is_zero());
            if let Some(q) = storage {
                out.insert("requests.storage".into(), q);
                if let Some(class) = class {
                    out.insert(
                        format!("{class}.storageclass.storage.k8s.io/requests.storage"),
                        q,
                    );
                }
            }
        }
        r @ ("configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas") => {
            out.insert(r.to_string(), Quantity::count(1));
        }
        _ => {}
    }
    out
}

/// Upstream's `QuotaV1Pod`: not Succeeded/Failed, and not past its deletion grace.
fn pod_is_charged(item: &Item<'_>, now: i64) -> bool {
    if item.deletion_deadline.is_some_and(|d| now > d) {
        return false;
    }
    !matches!(
        item.body.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

fn resource_map(v: Option<&Value>) -> ResourceList {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), Quantity::parse(v.as_str()?)?)))
                .collect()
        })
        .unwrap_or_default()
}

/// A container's requests (a limit without a request requests the limit, as upstream's
/// defaulting makes it) and limits.
fn container_resources(c: &Value) -> (ResourceList, ResourceList) {
    let limits = resource_map(c.pointer("/resources/limits"));
    let mut requests = resource_map(c.pointer("/resources/requests"));
    for (k, v) in &limits {
        requests.entry(k.clone()).or_insert(*v);
    }
    (requests, limits)
}

fn add_all(into: &mut ResourceList, from: &ResourceList) {
    for (k, v) in from {
        into.entry(k.clone()).or_default().add(*v);
    }
}

fn max_all(into: &mut ResourceList, from: &ResourceList) {
    for (k, v) in from {
        let cur = into.entry(k.clone()).or_default();
        if *v > *cur {
            *cur = *v;
        }
    }
}

fn containers<'a>(body: &'a Value, field: &str) -> &'a [Value] {
    body.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
}

/// What `pod` (a Pod as JSON) requests of a node: upstream's `PodRequests` (see
/// [`pod_totals`]); also what the kubelet's admission and eviction rank by.
pub fn pod_requests(pod: &Value) -> ResourceList {
    pod_totals(pod).0
}

/// Upstream's `PodRequests`/`PodLimits`: the containers' sum plus sidecars (restartable init
/// containers), at least the peak of any init container running beside the sidecars
/// started before it, plus the pod overhead; pod-level resources win where set.
fn pod_totals(body: &Value) -> (ResourceList, ResourceList) {
    let mut totals = [ResourceList::new(), ResourceList::new()];
    let mut sidecars = [ResourceList::new(), ResourceList::new()];
    let mut init_peak = [ResourceList::new(), ResourceList::new()];
    for c in containers(body, "containers") {
        let (r, l) = container_resources(c);
        add_all(&mut totals[0], &r);
        add_all(&mut totals[1], &l);
    }
    for c in containers(body, "initContainers") {
        let (r, l) = container_resources(c);
        let restartable = c.get("restartPolicy").and_then(Value::as_str) == Some("Always");
        for (i, res) in [r, l].iter().enumerate() {
            if restartable {
                add_all(&mut sidecars[i], res);
                max_all(&mut init_peak[i], &sidecars[i]);
            } else {
                let mut running = sidecars[i].clone();
                add_all(&mut running, res);
                max_all(&mut init_peak[i], &running);
            }
        }
    }
    let overhead = resource_map(body.pointer("/spec/overhead"));
    let pod_level = [
        resource_map(body.pointer("/spec/resources/requests")),
        resource_map(body.pointer("/spec/resources/limits")),
    ];
    for i in 0..2 {
        let side = sidecars[i].clone();
        add_all(&mut totals[i], &side);
        let peak = init_peak[i].clone();
        max_all(&mut totals[i], &peak);
        for (k, v) in &pod_level[i] {
            if matches!(k.as_str(), "cpu" | "memory") {
                totals[i].insert(k.clone(), *v);
            }
        }
        add_all(&mut totals[i], &overhead);
    }
    let [requests, limits] = totals;
    (requests, limits)
}

/// Upstream's `podComputeUsageHelper`.
fn compute_usage(requests: &ResourceList, limits: &ResourceList, out: &mut ResourceList) {
    out.insert("pods".into(), Quantity::count(1));
    for r in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(q) = requests.get(r) {
            out.insert(r.into(), *q);
            out.insert(format!("requests.{r}"), *q);
        }
        if let Some(q) = limits.get(r) {
            out.insert(format!("limits.{r}"), *q);
        }
    }
    for (r, q) in requests {
        if r.starts_with("hugepages-") {
            out.insert(r.clone(), *q);
            out.insert(format!("requests.{r}"), *q);
        } else if r.contains('/') && !r.contains("kubernetes.io/") {
            out.insert(format!("requests.{r}"), *q);
        }
    }
}

fn pod_compute_usage(body: &Value, out: &mut ResourceList) {
    let (requests, limits) = pod_totals(body);
    compute_usage(&requests, &limits, out);
}

/// A quota's scopes and scope selector as selector requirements (a bare scope is `Exists`).
pub fn scopes(spec: &ResourceQuotaSpec) -> Vec<ScopedResourceSelectorRequirement> {
    let mut out: Vec<ScopedResourceSelectorRequirement> = spec
        .scopes
        .iter()
        .flatten()
        .map(|s| ScopedResourceSelectorRequirement {
            scope_name: s.clone(),
            operator: "Exists".into(),
            values: None,
        })
        .collect();
    if let Some(sel) = &spec.scope_selector {
        out.extend(sel.match_expressions.iter().flatten().cloned());
    }
    out
}

/// Whether `item` falls under a quota with these hard resource names and scopes: it must be
/// charged for one of the names, and match every scope. Scopes only ever match pods.
pub fn matches<'a>(
    hard: impl IntoIterator<Item = &'a String>,
    scopes: &[ScopedResourceSelectorRequirement],
    item: &Item<'_>,
) -> bool {
    if !hard
        .into_iter()
        .any(|n| governs(item.group, item.resource, n))
    {
        return false;
    }
    if scopes.is_empty() {
        return true;
    }
    item.group.is_empty()
        && item.resource == "pods"
        && scopes.iter().all(|s| pod_matches_scope(s, item.body))
}

fn pod_matches_scope(s: &ScopedResourceSelectorRequirement, body: &Value) -> bool {
    let spec = body.get("spec").unwrap_or(&Value::Null);
    match s.scope_name.as_str() {
        "Terminating" => spec
            .get("activeDeadlineSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|d| d >= 0),
        "NotTerminating" => !pod_matches_scope(
            &ScopedResourceSelectorRequirement {
                scope_name: "Terminating".into(),
                ..s.clone()
            },
            body,
        ),
        "BestEffort" => is_best_effort(body),
        "NotBestEffort" => !is_best_effort(body),
        "PriorityClass" => {
            // Matched as a label selector on {PriorityClass: <name>}: the key is always set.
            let class = spec
                .get("priorityClassName")
                .and_then(Value::as_str)
                .unwrap_or("");
            let values = s.values.as_deref().unwrap_or_default();
            match s.operator.as_str() {
                "Exists" => !class.is_empty(),
                "In" => values.iter().any(|v| v == class),
                "NotIn" => !values.iter().any(|v| v == class),
                _ => false,
            }
        }
        "CrossNamespacePodAffinity" => {
            let affinity = spec.get("affinity").unwrap_or(&Value::Null);
            ["podAffinity", "podAntiAffinity"].iter().any(|a| {
                let Some(a) = affinity.get(*a) else {
                    return false;
                };
                let required = a
                    .get("requiredDuringSchedulingIgnoredDuringExecution")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten();
                let preferred = a
                    .get("preferredDuringSchedulingIgnoredDuringExecution")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|w| w.get("podAffinityTerm"));
                required.chain(preferred).any(|t| {
                    t.get("namespaceSelector").is_some_and(|s| !s.is_null())
                        || t.get("namespaces")
                            .and_then(Value::as_array)
                            .is_some_and(|n| !n.is_empty())
                })
            })
        }
        _ => false,
    }
}

/// QoS BestEffort: no container and not the pod asks for or caps cpu or memory.
fn is_best_effort(body: &Value) -> bool {
    let sets = containers(body, "containers")
        .iter()
        .chain(containers(body, "initContainers"))
        .flat_map(|c| {
            [
                c.pointer("/resources/requests"),
                c.pointer("/resources/limits"),
            ]
        })
        .chain([
            body.pointer("/spec/resources/requests"),
            body.pointer("/spec/resources/limits"),
        ]);
    !sets.flatten().any(|m| {
        let list = resource_map(Some(m));
        ["cpu", "memory"]
            .iter()
            .any(|r| list.get(*r).is_some_and(|q| !q.is_zero()))
    })
}

/// Upstream's pod evaluator constraint: a quota on cpu or memory requests/limits demands
/// that every container (init containers too) states them. `Err` is "must specify ...".
pub fn pod_constraints(required: &BTreeSet<String>, body: &Value) -> Result<(), String> {
    const VALIDATED: &[&str] = &[
        "cpu",
        "memory",
        "requests.cpu",
        "requests.memory",
        "limits.cpu",
        "limits.memory",
    ];
    let required: Vec<&str> = VALIDATED
        .iter()
        .copied()
        .filter(|r| required.contains(*r))
        .collect();
    if required.is_empty() {
        return Ok(());
    }
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for c in containers(body, "containers")
        .iter()
        .chain(containers(body, "initContainers"))
    {
        let (requests, limits) = container_resources(c);
        let mut has = ResourceList::new();
        compute_usage(&requests, &limits, &mut has);
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        for r in &required {
            if !has.contains_key(*r) {
                missing.entry(r).or_default().insert(name.to_string());
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            format!(
                "{r} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Err(format!("must specify {}", parts.join("; ")))
}

/// A quota's amounts from its `hard`/`used` maps; amounts that do not parse are left out.
pub fn parse_list<'a>(m: impl IntoIterator<Item = (&'a String, &'a str)>) -> ResourceList {
    m.into_iter()
        .filter_map(|(k, v)| Some((k.clone(), Quantity::parse(v)?)))
        .collect()
}

/// `pods=1,requests.cpu=500m`, as upstream's admission messages print resource lists.
pub fn pretty(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests;
