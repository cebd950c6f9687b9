//! The scheduling algorithm as pure logic: a snapshot of nodes and the pods bound to them,
//! filter plugins that rule nodes out (each with upstream's reason text), score plugins that
//! rank the rest, and [`schedule`] that picks a node or explains why none fits.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm};

use crate::config::Profile;
use crate::quantity;
use crate::selectors::{self, Labels};

/// What a pod asks for or a node offers: CPU (millicores), memory and ephemeral storage
/// (bytes), pod count, and the scalar resources by name (extended resources such as
/// `nvidia.com/gpu`, `hugepages-<size>`, `attachable-volumes-*`), as upstream's
/// `framework.Resource`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_milli: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    pub scalar: BTreeMap<String, i64>,
}

/// Upstream's `IsScalarResourceName`: extended (domain-prefixed, not `kubernetes.io/`),
/// hugepages, prefixed native and attachable-volume resources.
fn is_scalar(name: &str) -> bool {
    name.contains('/') || name.starts_with("hugepages-") || name.starts_with("attachable-volumes-")
}

type ResourceList = BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>;

impl Resources {
    /// The resources of a `ResourceList` (unknown names and bad quantities count as 0).
    fn from_list(list: &ResourceList) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list {
            match name.as_str() {
                "cpu" => r.cpu_milli = quantity::cpu_millis(&q.0).unwrap_or(0),
                "memory" => r.memory = quantity::value(&q.0).unwrap_or(0),
                "ephemeral-storage" => r.ephemeral_storage = quantity::value(&q.0).unwrap_or(0),
                "pods" => r.pods = quantity::value(&q.0).unwrap_or(0),
                n if is_scalar(n) => {
                    r.scalar
                        .insert(n.to_string(), quantity::value(&q.0).unwrap_or(0));
                }
                _ => {}
            }
        }
        r
    }

    fn add(&mut self, o: &Resources) {
        self.cpu_milli += o.cpu_milli;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    fn sub(&mut self, o: &Resources) {
        self.cpu_milli -= o.cpu_milli;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
        for (k, v) in &o.scalar {
            let left = self.scalar.entry(k.clone()).or_default();
            *left -= v;
            if *left == 0 {
                self.scalar.remove(k);
            }
        }
    }

    /// Each resource the larger of the two (upstream's `maxResourceList`).
    fn max(&mut self, o: &Resources) {
        self.cpu_milli = self.cpu_milli.max(o.cpu_milli);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        self.pods = self.pods.max(o.pods);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// What a pod asks for, as upstream's `PodRequests` for the scheduler: its containers'
/// requests summed; restartable init containers (sidecars) added to them and to every later
/// init container, the largest init container (plus the sidecars before it) if that is
/// larger; pod-level `spec.resources.requests` for cpu and memory in place of the
/// containers' sum; plus the overhead. A container being resized in place counts with the
/// largest of its spec, its running resources and its allocation (without the spec when
/// the resize is infeasible).
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::default();
    };
    let status = pod.status.as_ref();
    let infeasible = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "PodResizePending" && c.reason.as_deref() == Some("Infeasible"))
        });
    let container_requests =
        |c: &k8s_openapi::api::core::v1::Container,
         statuses: Option<&Vec<k8s_openapi::api::core::v1::ContainerStatus>>|
         -> Resources {
            let own = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            let cs = statuses
                .and_then(|all| all.iter().find(|s| s.name == c.name))
                .filter(|s| s.resources.is_some());
            let Some(cs) = cs else {
                return own.map(Resources::from_list).unwrap_or_default();
            };
            let mut r = match (infeasible, own) {
                (false, Some(own)) => Resources::from_list(own),
                _ => Resources::default(),
            };
            if let Some(running) = cs.resources.as_ref().and_then(|r| r.requests.as_ref()) {
                r.max(&Resources::from_list(running));
            }
            if let Some(allocated) = &cs.allocated_resources {
                r.max(&Resources::from_list(allocated));
            }
            r
        };
    let mut reqs = Resources::default();
    for c in &spec.containers {
        reqs.add(&container_requests(
            c,
            status.and_then(|s| s.container_statuses.as_ref()),
        ));
    }
    let mut sidecars = Resources::default();
    let mut init = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        let statuses = status
            .and_then(|s| s.init_container_statuses.as_ref())
            .filter(|_| sidecar);
        let own = container_requests(c, statuses);
        if sidecar {
            reqs.add(&own);
            sidecars.add(&own);
            init.max(&sidecars);
        } else {
            let mut with_sidecars = own;
            with_sidecars.add(&sidecars);
            init.max(&with_sidecars);
        }
    }
    reqs.max(&init);
    if let Some(pod_level) = spec.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        let p = Resources::from_list(pod_level);
        if pod_level.contains_key("cpu") {
            reqs.cpu_milli = p.cpu_milli;
        }
        if pod_level.contains_key("memory") {
            reqs.memory = p.memory;
        }
    }
    if let Some(o) = &spec.overhead {
        reqs.add(&Resources::from_list(o));
    }
    reqs.pods = 1;
    reqs
}

/// Host ports a pod claims: (protocol, port, hostIP).
fn host_ports(pod: &Pod) -> Vec<(String, i32, String)> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let hp = p.host_port.filter(|hp| *hp > 0)?;
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                hp,
                p.host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".into()),
            ))
        })
        .collect()
}

/// The few facts about a bound pod that other pods' affinity rules look at.
#[derive(Debug, Clone)]
pub struct PodSummary {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
}

/// One node and what is already bound to it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub allocatable: Resources,
    pub requested: Resources,
    pub ports: HashSet<(String, i32, String)>,
    pub pods: Vec<PodSummary>,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> Self {
        let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let allocatable = alloc.map(Resources::from_list).unwrap_or_default();
        NodeInfo {
            node,
            allocatable,
            requested: Resources::default(),
            ports: HashSet::new(),
            pods: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    pub fn labels(&self) -> Labels {
        self.node.metadata.labels.clone().unwrap_or_default()
    }

    /// Account for a pod bound (or assumed bound) to this node.
    pub fn add_pod(&mut self, pod: &Pod) {
        self.requested.add(&pod_requests(pod));
        self.ports.extend(host_ports(pod));
        self.pods.push(PodSummary {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
        });
    }

    pub fn remove_pod(&mut self, pod: &Pod) {
        self.requested.sub(&pod_requests(pod));
        for p in host_ports(pod) {
            self.ports.remove(&p);
        }
        let (ns, name) = (
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or(""),
        );
        self.pods.retain(|p| !(p.namespace == ns && p.name == name));
    }
}

/// Why a node was ruled out, as upstream words it (these strings are what users grep for).
pub type Reason = String;

// === filters ===

fn filter_unschedulable(pod: &Pod, n: &NodeInfo) -> Option<Reason> {
    let unschedulable = n
        .node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    if !unschedulable {
        return None;
    }
    let taint = k8s_openapi::api::core::v1::Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    let tols = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    (!selectors::tolerated(&tols, &taint)).then(|| "node(s) were unschedulable".into())
}

fn filter_resources(pod: &Pod, n: &NodeInfo) -> Vec<Reason> {
    let r = pod_requests(pod);
    let mut out = Vec::new();
    if n.requested.pods + 1 > n.allocatable.pods {
        out.push("Too many pods".into());
    }
    if r.cpu_milli > 0 && n.requested.cpu_milli + r.cpu_milli > n.allocatable.cpu_milli {
        out.push("Insufficient cpu".into());
    }
    if r.memory > 0 && n.requested.memory + r.memory > n.allocatable.memory {
        out.push("Insufficient memory".into());
    }
    if r.ephemeral_storage > 0
        && n.requested.ephemeral_storage + r.ephemeral_storage > n.allocatable.ephemeral_storage
    {
        out.push("Insufficient ephemeral-storage".into());
    }
    for (name, want) in r.scalar.iter().filter(|(_, v)| **v > 0) {
        let free = n.allocatable.scalar.get(name).copied().unwrap_or(0)
            - n.requested.scalar.get(name).copied().unwrap_or(0);
        if *want > free {
            out.push(format!("Insufficient {name}"));
        }
    }
    out
}

fn filter_node_affinity(pod: &Pod, n: &NodeInfo) -> Option<Reason> {
    let spec = pod.spec.as_ref()?;
    let labels = n.labels();
    let selector_ok = spec
        .node_selector
        .as_ref()
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    // Terms are ORed.
    let affinity_ok = required.is_none_or(|r| {
        r.node_selector_terms
            .iter()
            .any(|t| selectors::node_selector_term_matches(t, &n.node))
    });
    (!(selector_ok && affinity_ok))
        .then(|| "node(s) didn't match Pod's node affinity/selector".into())
}

fn filter_taints(pod: &Pod, n: &NodeInfo) -> Option<Reason> {
    let tols = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let taints = n
        .node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let bad = taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !selectors::tolerated(&tols, t))?;
    Some(format!(
        "node(s) had untolerated taint {{{}: {}}}",
        bad.key,
        bad.value.as_deref().unwrap_or("")
    ))
}

fn filter_ports(pod: &Pod, n: &NodeInfo) -> Option<Reason> {
    let clash = host_ports(pod).into_iter().any(|(proto, port, ip)| {
        n.ports.iter().any(|(p2, port2, ip2)| {
            *p2 == proto && *port2 == port && (ip == "0.0.0.0" || *ip2 == "0.0.0.0" || *ip2 == ip)
        })
    });
    clash.then(|| "node(s) didn't have free ports for the requested pod ports".into())
}

/// Pods in the topology domain of `node` (same value of `term.topology_key`) matching `term`.
fn term_matches_domain(
    term: &PodAffinityTerm,
    pod_ns: &str,
    node: &NodeInfo,
    all: &BTreeMap<String, NodeInfo>,
) -> bool {
    let Some(domain) = node.labels().get(&term.topology_key).cloned() else {
        return false;
    };
    let namespaces: Vec<String> = term
        .namespaces
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| vec![pod_ns.to_string()]);
    let sel = term.label_selector.clone().unwrap_or_default();
    all.values()
        .filter(|other| other.labels().get(&term.topology_key) == Some(&domain))
        .flat_map(|other| other.pods.iter())
        .any(|p| {
            namespaces.contains(&p.namespace) && selectors::label_selector_matches(&sel, &p.labels)
        })
}

fn filter_inter_pod(pod: &Pod, n: &NodeInfo, all: &BTreeMap<String, NodeInfo>) -> Option<Reason> {
    let aff = pod.spec.as_ref()?.affinity.as_ref()?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    if let Some(terms) = aff.pod_affinity.as_ref().and_then(|a| {
        a.required_during_scheduling_ignored_during_execution
            .as_ref()
    }) {
        for term in terms {
            if !term_matches_domain(term, ns, n, all) {
                // Upstream lets the first pod of a group that matches its own term schedule.
                let sel = term.label_selector.clone().unwrap_or_default();
                let own = pod.metadata.labels.clone().unwrap_or_default();
                let nobody_matches = !all
                    .values()
                    .flat_map(|o| o.pods.iter())
                    .any(|p| selectors::label_selector_matches(&sel, &p.labels));
                if !(nobody_matches && selectors::label_selector_matches(&sel, &own)) {
                    return Some("node(s) didn't match pod affinity rules".into());
                }
            }
        }
    }
    if let Some(terms) = aff.pod_anti_affinity.as_ref().and_then(|a| {
        a.required_during_scheduling_ignored_during_execution
            .as_ref()
    }) {
        if terms.iter().any(|t| term_matches_domain(t, ns, n, all)) {
            return Some("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    None
}

fn filter_topology_spread(
    pod: &Pod,
    n: &NodeInfo,
    all: &BTreeMap<String, NodeInfo>,
) -> Option<Reason> {
    let constraints = pod.spec.as_ref()?.topology_spread_constraints.as_ref()?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    for c in constraints
        .iter()
        .filter(|c| c.when_unsatisfiable == "DoNotSchedule")
    {
        let Some(domain) = n.labels().get(&c.topology_key).cloned() else {
            return Some(
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .into(),
            );
        };
        let sel = c.label_selector.clone().unwrap_or_default();
        let mut counts: BTreeMap<String, i32> = BTreeMap::new();
        for other in all.values() {
            if let Some(d) = other.labels().get(&c.topology_key) {
                let matching = other
                    .pods
                    .iter()
                    .filter(|p| {
                        p.namespace == ns && selectors::label_selector_matches(&sel, &p.labels)
                    })
                    .count() as i32;
                *counts.entry(d.clone()).or_default() += matching;
            }
        }
        let min = counts.values().copied().min().unwrap_or(0);
        let self_match = i32::from(selectors::label_selector_matches(
            &sel,
            &pod.metadata.labels.clone().unwrap_or_default(),
        ));
        let here = counts.get(&domain).copied().unwrap_or(0);
        if here + self_match - min > c.max_skew {
            return Some("node(s) didn't match pod topology spread constraints".into());
        }
    }
    None
}

/// What the VolumeBinding filter says of a node for the pod being scheduled (computed from
/// the pod's claims once per pod, [`crate::volumebinding`]): None when it fits.
pub type VolumeFilter<'a> = &'a (dyn Fn(&NodeInfo) -> Option<Reason> + Sync + 'a);

/// Why `node` cannot take `pod` (empty: it fits): the reasons of the first filter that
/// fails, in upstream's default plugin order. Upstream stops at the first failing plugin, so
/// a cordoned node reports "were unschedulable" once, not also the
/// `node.kubernetes.io/unschedulable` taint the node lifecycle controller adds for it.
pub fn filter(
    pod: &Pod,
    n: &NodeInfo,
    all: &BTreeMap<String, NodeInfo>,
    profile: &Profile,
) -> Vec<Reason> {
    filter_with(pod, n, all, profile, None)
}

/// [`filter`] with the pod's VolumeBinding verdicts (a pod naming no claim has none).
pub fn filter_with(
    pod: &Pod,
    n: &NodeInfo,
    all: &BTreeMap<String, NodeInfo>,
    profile: &Profile,
    volumes: Option<VolumeFilter<'_>>,
) -> Vec<Reason> {
    let on = |name: &str| profile.filter_enabled(name);
    let checks: [(&str, &dyn Fn() -> Vec<Reason>); 8] = [
        ("NodeUnschedulable", &|| {
            filter_unschedulable(pod, n).into_iter().collect()
        }),
        ("TaintToleration", &|| {
            filter_taints(pod, n).into_iter().collect()
        }),
        ("NodeAffinity", &|| {
            filter_node_affinity(pod, n).into_iter().collect()
        }),
        ("NodePorts", &|| filter_ports(pod, n).into_iter().collect()),
        ("NodeResourcesFit", &|| filter_resources(pod, n)),
        ("VolumeBinding", &|| {
            volumes.and_then(|check| check(n)).into_iter().collect()
        }),
        ("PodTopologySpread", &|| {
            filter_topology_spread(pod, n, all).into_iter().collect()
        }),
        ("InterPodAffinity", &|| {
            filter_inter_pod(pod, n, all).into_iter().collect()
        }),
    ];
    checks
        .iter()
        .filter(|(name, _)| on(name))
        .map(|(_, check)| check())
        .find(|r| !r.is_empty())
        .unwrap_or_default()
}

// === scores (each 0..=100, higher is better) ===

/// Upstream's defaults for pods without requests, so empty pods still spread.
const DEFAULT_CPU_MILLI: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 << 20;

fn non_zero(r: &Resources) -> (i64, i64) {
    (
        if r.cpu_milli == 0 {
            DEFAULT_CPU_MILLI
        } else {
            r.cpu_milli
        },
        if r.memory == 0 {
            DEFAULT_MEMORY
        } else {
            r.memory
        },
    )
}

fn fractions(pod: &Pod, n: &NodeInfo) -> (f64, f64) {
    let (pc, pm) = non_zero(&pod_requests(pod));
    let cpu = (n.requested.cpu_milli + pc) as f64 / n.allocatable.cpu_milli.max(1) as f64;
    let mem = (n.requested.memory + pm) as f64 / n.allocatable.memory.max(1) as f64;
    (cpu.min(1.0), mem.min(1.0))
}

fn score_least_allocated(pod: &Pod, n: &NodeInfo) -> f64 {
    let (c, m) = fractions(pod, n);
    ((1.0 - c) + (1.0 - m)) / 2.0 * 100.0
}

fn score_balanced(pod: &Pod, n: &NodeInfo) -> f64 {
    let (c, m) = fractions(pod, n);
    // Standard deviation of the two fractions is |c - m| / 2.
    (1.0 - (c - m).abs() / 2.0) * 100.0
}

fn raw_node_affinity(pod: &Pod, n: &NodeInfo) -> f64 {
    let preferred = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        });
    preferred.map_or(0.0, |terms| {
        terms
            .iter()
            .filter(|t| selectors::node_selector_term_matches(&t.preference, &n.node))
            .map(|t| f64::from(t.weight))
            .sum()
    })
}

fn raw_intolerable_prefer_no_schedule(pod: &Pod, n: &NodeInfo) -> f64 {
    let tols = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    n.node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map_or(0, |ts| {
            ts.iter()
                .filter(|t| t.effect == "PreferNoSchedule" && !selectors::tolerated(&tols, t))
                .count()
        }) as f64
}

fn raw_pod_affinity(pod: &Pod, n: &NodeInfo, all: &BTreeMap<String, NodeInfo>) -> f64 {
    let Some(aff) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
        return 0.0;
    };
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut score = 0.0;
    for w in aff
        .pod_affinity
        .as_ref()
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
    {
        if term_matches_domain(&w.pod_affinity_term, ns, n, all) {
            score += f64::from(w.weight);
        }
    }
    for w in aff
        .pod_anti_affinity
        .as_ref()
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
    {
        if term_matches_domain(&w.pod_affinity_term, ns, n, all) {
            score -= f64::from(w.weight);
        }
    }
    score
}

fn raw_spread(pod: &Pod, n: &NodeInfo, all: &BTreeMap<String, NodeInfo>) -> f64 {
    // Fewer matching pods in this node's domain is better: negative count.
    let Some(cs) = pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
    else {
        return 0.0;
    };
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut total = 0.0;
    for c in cs
        .iter()
        .filter(|c| c.when_unsatisfiable == "ScheduleAnyway")
    {
        let Some(domain) = n.labels().get(&c.topology_key).cloned() else {
            continue;
        };
        let sel = c.label_selector.clone().unwrap_or_default();
        let count = all
            .values()
            .filter(|o| o.labels().get(&c.topology_key) == Some(&domain))
            .flat_map(|o| o.pods.iter())
            .filter(|p| p.namespace == ns && selectors::label_selector_matches(&sel, &p.labels))
            .count();
        total -= count as f64;
    }
    total
}

/// Scale raw scores across the feasible nodes to 0..=100 (`reverse`: lower raw is better).
fn normalize(raw: &[f64], reverse: bool) -> Vec<f64> {
    let max = raw.iter().copied().fold(f64::MIN, f64::max);
    let min = raw.iter().copied().fold(f64::MAX, f64::min);
    if (max - min).abs() < f64::EPSILON {
        // All equal: nobody is better. Reverse scores (fewer is better) of all-equal nodes
        // are all best; forward scores are best only if any node scored at all.
        let v = if reverse || max > 0.0 { 100.0 } else { 0.0 };
        return vec![v; raw.len()];
    }
    raw.iter()
        .map(|r| {
            let x = (r - min) / (max - min) * 100.0;
            if reverse {
                100.0 - x
            } else {
                x
            }
        })
        .collect()
}

/// Weighted total score per feasible node, in `feasible` order.
pub fn score(
    pod: &Pod,
    feasible: &[&NodeInfo],
    all: &BTreeMap<String, NodeInfo>,
    profile: &Profile,
) -> Vec<f64> {
    let mut total = vec![0.0; feasible.len()];
    let mut add = |name: &str, values: Vec<f64>| {
        let w = profile.score_weight(name);
        if w > 0 {
            for (t, v) in total.iter_mut().zip(values) {
                *t += f64::from(w) * v;
            }
        }
    };
    add(
        "NodeResourcesFit",
        feasible
            .iter()
            .map(|n| score_least_allocated(pod, n))
            .collect(),
    );
    add(
        "NodeResourcesBalancedAllocation",
        feasible.iter().map(|n| score_balanced(pod, n)).collect(),
    );
    add(
        "NodeAffinity",
        normalize(
            &feasible
                .iter()
                .map(|n| raw_node_affinity(pod, n))
                .collect::<Vec<_>>(),
            false,
        ),
    );
    add(
        "TaintToleration",
        normalize(
            &feasible
                .iter()
                .map(|n| raw_intolerable_prefer_no_schedule(pod, n))
                .collect::<Vec<_>>(),
            true,
        ),
    );
    add(
        "InterPodAffinity",
        normalize(
            &feasible
                .iter()
                .map(|n| raw_pod_affinity(pod, n, all))
                .collect::<Vec<_>>(),
            false,
        ),
    );
    add(
        "PodTopologySpread",
        normalize(
            &feasible
                .iter()
                .map(|n| raw_spread(pod, n, all))
                .collect::<Vec<_>>(),
            false,
        ),
    );
    total
}

/// No node fits: how many nodes failed for each reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub num_nodes: usize,
    pub reasons: BTreeMap<Reason, usize>,
    /// What preemption (the PostFilter) said, appended as upstream's `PostFilterMsg`.
    pub post_filter: Option<String>,
    /// Why a PreFilter ruled every node out (upstream's `PreFilterMsg`): said instead of
    /// the per-node reasons.
    pub pre_filter: Option<String>,
}

impl std::fmt::Display for FitError {
    /// Upstream's wording: "0/3 nodes are available: 1 node(s) had untolerated taint {a: b},
    /// 2 Insufficient cpu." — reasons with counts, sorted as strings; with no node at all,
    /// "no nodes available to schedule pods".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.num_nodes == 0 {
            // upstream's ErrNoNodesAvailable
            return write!(f, "no nodes available to schedule pods");
        }
        write!(f, "0/{} nodes are available", self.num_nodes)?;
        if let Some(msg) = &self.pre_filter {
            write!(f, ": {msg}.")?;
            return match &self.post_filter {
                Some(post) => write!(f, " {post}"),
                None => Ok(()),
            };
        }
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, c)| format!("{c} {r}"))
            .collect();
        parts.sort();
        if parts.is_empty() {
            write!(f, ".")?;
        } else {
            write!(f, ": {}.", parts.join(", "))?;
        }
        match &self.post_filter {
            Some(msg) => write!(f, " {msg}"),
            None => Ok(()),
        }
    }
}

/// Pick a node for `pod`. Ties are broken by `tie_breaker` (a rotating counter), so equal
/// nodes take turns instead of one node taking every pod.
pub fn schedule(
    pod: &Pod,
    nodes: &BTreeMap<String, NodeInfo>,
    profile: &Profile,
    tie_breaker: usize,
) -> Result<String, FitError> {
    schedule_with(pod, nodes, profile, tie_breaker, None)
}

/// [`schedule`] with the pod's VolumeBinding verdicts.
pub fn schedule_with(
    pod: &Pod,
    nodes: &BTreeMap<String, NodeInfo>,
    profile: &Profile,
    tie_breaker: usize,
    volumes: Option<VolumeFilter<'_>>,
) -> Result<String, FitError> {
    let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
    let mut feasible = Vec::new();
    for n in nodes.values() {
        let r = filter_with(pod, n, nodes, profile, volumes);
        if r.is_empty() {
            feasible.push(n);
        } else {
            for reason in r {
                *reasons.entry(reason).or_default() += 1;
            }
        }
    }
    if feasible.is_empty() {
        return Err(FitError {
            num_nodes: nodes.len(),
            reasons,
            post_filter: None,
            pre_filter: None,
        });
    }
    let scores = score(pod, &feasible, nodes, profile);
    let best = scores.iter().copied().fold(f64::MIN, f64::max);
    let ties: Vec<&NodeInfo> = feasible
        .iter()
        .zip(&scores)
        .filter(|(_, s)| (best - **s).abs() < 1e-9)
        .map(|(n, _)| *n)
        .collect();
    Ok(ties[tie_breaker % ties.len()].name().to_string())
}
