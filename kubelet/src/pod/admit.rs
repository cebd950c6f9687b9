//! The pods this node has admitted (upstream's pod manager, as far as admission and the
//! server's `GET /pods` need it), and admission itself: the check upstream's kubelet re-runs
//! from the scheduler's filters that a node can fail on its own, two pods asking for one
//! `hostPort` (scheduled by hand, a static pod, or a race); requests beyond the node's
//! allocatable cpu, memory or pods (`OutOfcpu`, `OutOfmemory`, `OutOfpods`); and sysctls
//! that are neither safe nor allowed by `--allowed-unsafe-sysctls` (`SysctlForbidden`). A pod that does not fit is
//! rejected as upstream rejects it: phase Failed, reason `NodePorts`, message `Pod was
//! rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod
//! ports`, and a Warning event with that reason. Pods are admitted in creation order, so the
//! older of two wins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::sync::watch;

/// One `hostPort` a pod asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// `hostIP`, `0.0.0.0` when unset.
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

const ANY_IP: &str = "0.0.0.0";

impl HostPort {
    /// Upstream's `HostPortInfo.CheckConflict`: same protocol and port, and the same address
    /// or either on every address.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.protocol == other.protocol
            && self.port == other.port
            && (self.ip == other.ip || self.ip == ANY_IP || other.ip == ANY_IP)
    }
}

/// The hostPorts of `pod`'s containers and sidecars (they run beside each other).
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|h| *h > 0)?;
            Some(HostPort {
                ip: p
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| ANY_IP.into()),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port,
            })
        })
        .collect()
}

/// Why a pod was not admitted (upstream's reason and message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

impl Rejection {
    fn node_ports() -> Rejection {
        Rejection {
            reason: "NodePorts".into(),
            message: "Predicate NodePorts failed: node(s) didn't have free ports for the \
                      requested pod ports"
                .into(),
        }
    }

    /// The status upstream's `rejectPod` gives the pod.
    pub fn status(&self) -> PodStatus {
        PodStatus {
            phase: Some("Failed".into()),
            reason: Some(self.reason.clone()),
            message: Some(format!("Pod was rejected: {}", self.message)),
            ..Default::default()
        }
    }
}

struct Active {
    pod: Pod,
    ports: Vec<HostPort>,
    status: Option<watch::Receiver<PodStatus>>,
}

/// The admitted pods of this node, shared by the sync loop, the static pods and the server.
#[derive(Clone, Default)]
pub struct ActivePods {
    inner: Arc<Mutex<HashMap<String, Active>>>,
    /// `--allowed-unsafe-sysctls`.
    allowed_unsafe_sysctls: Arc<Vec<String>>,
    /// What the node offers pods (None: no resource check).
    allocatable: Option<Allocatable>,
}

/// A node's allocatable resources, as its Node status reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocatable {
    pub cpu_milli: i64,
    pub memory: i64,
    pub pods: i64,
}

/// Gives `pod`'s containers (and the pod) the resources they have in `held`, by name.
fn keep_allocated(pod: &mut Pod, held: &Pod) {
    fn copy(
        now: &mut [k8s_openapi::api::core::v1::Container],
        before: &[k8s_openapi::api::core::v1::Container],
    ) {
        for c in now {
            if let Some(b) = before.iter().find(|b| b.name == c.name) {
                c.resources.clone_from(&b.resources);
            }
        }
    }
    let (Some(spec), Some(was)) = (pod.spec.as_mut(), held.spec.as_ref()) else {
        return;
    };
    spec.resources.clone_from(&was.resources);
    copy(&mut spec.containers, &was.containers);
    if let (Some(now), Some(before)) = (spec.init_containers.as_mut(), was.init_containers.as_ref())
    {
        copy(now, before);
    }
}

/// What a pod requests of a node: cpu (millicores) and memory (bytes), as upstream's
/// `PodRequests` computes it (the quota accounting's, `component::quota::pod_requests`:
/// containers and sidecars, the init containers' peak, `overhead`, pod-level resources; a
/// request defaults to its limit).
pub fn pod_requests(pod: &Pod) -> (i64, i64) {
    let Ok(json) = serde_json::to_value(pod) else {
        return (0, 0);
    };
    let r = component::quota::pod_requests(&json);
    let units = |name: &str, per: i128| {
        r.get(name).map_or(0, |q| {
            let n = q.nanos / per + i128::from(q.nanos % per > 0);
            i64::try_from(n).unwrap_or(i64::MAX)
        })
    };
    (units("cpu", 1_000_000), units("memory", 1_000_000_000))
}

/// The sysctls upstream's kubelet lets every pod set (`pkg/kubelet/sysctl` safe set).
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// Which of the pod's namespaces a sysctl lives in (None: not namespaced, never allowed).
fn sysctl_namespace(name: &str) -> Option<&'static str> {
    if name.starts_with("net.") {
        Some("net")
    } else if name.starts_with("kernel.shm")
        || name.starts_with("kernel.msg")
        || name == "kernel.sem"
        || name.starts_with("fs.mqueue.")
    {
        Some("IPC")
    } else {
        None
    }
}

/// Upstream's sysctl admission: each of the pod's sysctls is safe or allowed by
/// `allowed` (names or `prefix.*` patterns), and not in a namespace the pod shares with the
/// host. Names may use `/` for `.`.
pub fn check_sysctls(pod: &Pod, allowed: &[String]) -> Result<(), Rejection> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let sysctls = spec
        .security_context
        .as_ref()
        .and_then(|s| s.sysctls.as_ref());
    for s in sysctls.into_iter().flatten() {
        let name = s.name.replace('/', ".");
        let forbidden = |why: String| Rejection {
            reason: "SysctlForbidden".into(),
            message: format!("forbidden sysctl: {why}"),
        };
        let allowed = SAFE_SYSCTLS.contains(&name.as_str())
            || allowed.iter().any(|a| match a.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => *a == name,
            });
        let ns = sysctl_namespace(&name);
        if !allowed || ns.is_none() {
            return Err(forbidden(format!("{name:?} not allowlisted")));
        }
        let host = match ns {
            Some("net") => spec.host_network == Some(true),
            _ => spec.host_ipc == Some(true),
        };
        if host {
            return Err(forbidden(format!(
                "{name:?} not allowed with host {} enabled",
                if ns == Some("net") { "net" } else { "ipc" }
            )));
        }
    }
    Ok(())
}

impl std::fmt::Debug for ActivePods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivePods")
            .field("pods", &self.lock().len())
            .finish()
    }
}

impl ActivePods {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Active>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admitted pods with `allowed_unsafe_sysctls` (`--allowed-unsafe-sysctls`), on a node
    /// offering `allocatable` (None: no resource check).
    pub fn new(
        allowed_unsafe_sysctls: Vec<String>,
        allocatable: Option<Allocatable>,
    ) -> ActivePods {
        ActivePods {
            allowed_unsafe_sysctls: Arc::new(allowed_unsafe_sysctls),
            allocatable,
            ..ActivePods::default()
        }
    }

    /// Upstream's resource fit: the pod's requests on top of those of the admitted pods
    /// still running (finished ones hold nothing), and one more pod, within what the node
    /// offers; else `OutOf<resource>`.
    fn check_resources(&self, pods: &HashMap<String, Active>, pod: &Pod) -> Result<(), Rejection> {
        let Some(node) = self.allocatable else {
            return Ok(());
        };
        let running: Vec<&Active> = pods
            .values()
            .filter(|a| {
                let phase = a.status.as_ref().and_then(|s| s.borrow().phase.clone());
                !matches!(phase.as_deref(), Some("Succeeded" | "Failed"))
            })
            .collect();
        let used = running
            .iter()
            .map(|a| pod_requests(&a.pod))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let (cpu, memory) = pod_requests(pod);
        let out = |name: &str, requested: i64, used: i64, capacity: i64| {
            Rejection {
            reason: format!("OutOf{name}"),
            message: format!(
                "Node didn't have enough resource: {name}, requested: {requested}, used: {used}, capacity: {capacity}"
            ),
        }
        };
        let count = running.len() as i64;
        if count + 1 > node.pods {
            return Err(out("pods", 1, count, node.pods));
        }
        if cpu > 0 && used.0 + cpu > node.cpu_milli {
            return Err(out("cpu", cpu, used.0, node.cpu_milli));
        }
        if memory > 0 && used.1 + memory > node.memory {
            return Err(out("memory", memory, used.1, node.memory));
        }
        Ok(())
    }

    /// What the node offers pods, when resources are checked.
    pub fn allocatable(&self) -> Option<Allocatable> {
        self.allocatable
    }

    /// Whether pod `uid`, resized to request `cpu` millicores and `memory` bytes, fits beside
    /// the other admitted pods still running: None, or (resource, requested, used by the
    /// others, what the node offers). Without an allocatable: always.
    pub fn resize_fits(
        &self,
        uid: &str,
        cpu: i64,
        memory: i64,
    ) -> Option<(&'static str, i64, i64, i64)> {
        let node = self.allocatable?;
        let pods = self.lock();
        let used = pods
            .iter()
            .filter(|(u, _)| u.as_str() != uid)
            .filter(|(_, a)| {
                let phase = a.status.as_ref().and_then(|s| s.borrow().phase.clone());
                !matches!(phase.as_deref(), Some("Succeeded" | "Failed"))
            })
            .map(|(_, a)| pod_requests(&a.pod))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        if cpu > 0 && used.0 + cpu > node.cpu_milli {
            return Some(("cpu", cpu, used.0, node.cpu_milli));
        }
        if memory > 0 && used.1 + memory > node.memory {
            return Some(("memory", memory, used.1, node.memory));
        }
        None
    }

    /// Admitted pod `pod` now runs with other resources (an in-place resize was applied):
    /// what the next admissions and resizes count for it.
    pub fn update_pod(&self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some(a) = self.lock().get_mut(&uid) {
            a.pod = pod.clone();
        }
    }

    /// Admit `pod` (again: a pod already admitted stays so), or say why not.
    pub fn admit(&self, pod: &Pod) -> Result<(), Rejection> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut pods = self.lock();
        if let Some(a) = pods.get_mut(&uid) {
            // it keeps holding what it was admitted or last resized with (upstream's
            // allocated resources): a resize the API asks for counts once it is applied
            // (`update_pod`), so a pending or deferred one does not crowd out the others
            let mut next = pod.clone();
            keep_allocated(&mut next, &a.pod);
            a.pod = next;
            return Ok(());
        }
        check_sysctls(pod, &self.allowed_unsafe_sysctls)?;
        self.check_resources(&pods, pod)?;
        let ports = host_ports(pod);
        let taken = pods
            .values()
            .flat_map(|a| &a.ports)
            .any(|p| ports.iter().any(|q| q.conflicts(p)));
        if taken {
            return Err(Rejection::node_ports());
        }
        pods.insert(
            uid,
            Active {
                pod: pod.clone(),
                ports,
                status: None,
            },
        );
        Ok(())
    }

    /// The status feed of admitted pod `uid` (its worker's).
    pub fn set_status(&self, uid: &str, status: watch::Receiver<PodStatus>) {
        if let Some(a) = self.lock().get_mut(uid) {
            a.status = Some(status);
        }
    }

    /// Pod `uid` has stopped: its ports are free again.
    pub fn remove(&self, uid: &str) {
        self.lock().remove(uid);
    }

    /// Every admitted pod with its current status, by namespace and name.
    pub fn list(&self) -> Vec<Pod> {
        let mut out: Vec<Pod> = self
            .lock()
            .values()
            .map(|a| {
                let mut pod = a.pod.clone();
                if let Some(s) = &a.status {
                    pod.status = Some(s.borrow().clone());
                }
                pod
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, ports: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": uid, "uid": uid},
            "spec": {"containers": [{"name": "c", "ports": ports}]}}))
        .unwrap()
    }

    #[test]
    fn sysctls_must_be_safe_or_allowed_and_not_in_a_host_namespace() {
        let with = |sysctls: serde_json::Value, host: serde_json::Value| -> Pod {
            let mut spec = json!({"containers": [{"name": "c"}],
                                  "securityContext": {"sysctls": sysctls}});
            if let (Some(s), Some(h)) = (spec.as_object_mut(), host.as_object()) {
                s.extend(h.clone());
            }
            serde_json::from_value(json!({"metadata": {"name": "p", "uid": "p"}, "spec": spec}))
                .unwrap()
        };
        let safe = json!([{"name": "net.ipv4.ip_local_port_range", "value": "20000 30000"},
                          {"name": "kernel/shm_rmid_forced", "value": "1"}]);
        assert_eq!(check_sysctls(&with(safe.clone(), json!({})), &[]), Ok(()));
        let unsafe_net = json!([{"name": "net.core.somaxconn", "value": "1024"}]);
        let err = check_sysctls(&with(unsafe_net.clone(), json!({})), &[]).unwrap_err();
        assert_eq!(err.reason, "SysctlForbidden");
        assert_eq!(
            err.message,
            "forbidden sysctl: \"net.core.somaxconn\" not allowlisted"
        );
        let allowed = vec!["net.core.*".to_string()];
        assert_eq!(
            check_sysctls(&with(unsafe_net, json!({})), &allowed),
            Ok(())
        );
        // never one that is not namespaced, allowed or not
        let global = json!([{"name": "vm.swappiness", "value": "1"}]);
        assert!(check_sysctls(&with(global, json!({})), &["vm.*".into()]).is_err());
        // a namespace shared with the host cannot be changed
        let err =
            check_sysctls(&with(safe.clone(), json!({"hostNetwork": true})), &[]).unwrap_err();
        assert_eq!(
            err.message,
            "forbidden sysctl: \"net.ipv4.ip_local_port_range\" not allowed with host net enabled"
        );
        let shm = json!([{"name": "kernel.shm_rmid_forced", "value": "1"}]);
        let err = check_sysctls(&with(shm, json!({"hostIPC": true})), &[]).unwrap_err();
        assert!(
            err.message.ends_with("not allowed with host ipc enabled"),
            "{}",
            err.message
        );
        // admission says the same
        let active = ActivePods::new(vec![], None);
        assert!(active
            .admit(&with(
                json!([{"name": "net.core.somaxconn", "value": "1"}]),
                json!({})
            ))
            .is_err());
    }

    #[test]
    fn requests_as_upstream_adds_them_and_admission_checks_them() {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "r", "uid": "r"}, "spec": {
            "initContainers": [
                {"name": "big-init", "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}},
                {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}}],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}}],
            "overhead": {"cpu": "10m"}}}))
        .unwrap();
        // cpu: max(100 + 250 + 500, 3000) + 10; memory: max(64Mi + 128Mi, 1Gi)
        assert_eq!(pod_requests(&p), (3010, 1 << 30));
        let node = Allocatable {
            cpu_milli: 4000,
            memory: 2 << 30,
            pods: 2,
        };
        let active = ActivePods::new(vec![], Some(node));
        active.admit(&p).unwrap();
        let mut second = p.clone();
        second.metadata.uid = Some("s".into());
        let err = active.admit(&second).unwrap_err();
        assert_eq!(err.reason, "OutOfcpu");
        assert_eq!(
            err.message,
            "Node didn't have enough resource: cpu, requested: 3010, used: 3010, capacity: 4000"
        );
        let small = pod("small", json!([]));
        active.admit(&small).unwrap();
        let err = active.admit(&pod("third", json!([]))).unwrap_err();
        assert_eq!(
            (err.reason.as_str(), err.message.as_str()),
            (
                "OutOfpods",
                "Node didn't have enough resource: pods, requested: 1, used: 2, capacity: 2"
            )
        );
        // a finished pod holds nothing
        let (tx, rx) = watch::channel(PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        active.set_status("r", rx);
        active.admit(&second).unwrap();
        drop(tx);
    }

    #[test]
    fn a_pending_resize_counts_once_applied() {
        let sized = |uid: &str, cpu: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": uid, "uid": uid}, "spec": {
                "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}))
            .unwrap()
        };
        let node = Allocatable {
            cpu_milli: 4000,
            memory: 1 << 30,
            pods: 10,
        };
        let active = ActivePods::new(vec![], Some(node));
        active.admit(&sized("a", "1")).unwrap();
        // the API asks for 3 CPUs for a; the kubelet has not resized it (deferred, say)
        active.admit(&sized("a", "3")).unwrap();
        // b's resize to 2.5 CPUs fits beside a's 1 CPU held, not beside the 3 asked
        active.admit(&sized("b", "500m")).unwrap();
        assert_eq!(active.resize_fits("b", 2500, 0), None);
        // once a's resize is applied, it holds 3 and b's does not fit
        active.update_pod(&sized("a", "3"));
        assert_eq!(
            active.resize_fits("b", 2500, 0),
            Some(("cpu", 2500, 3000, 4000))
        );
        // a new pod is admitted against what is held
        let err = active.admit(&sized("c", "1")).unwrap_err();
        assert_eq!(err.reason, "OutOfcpu");
    }

    #[test]
    fn one_host_port_one_pod() {
        let active = ActivePods::default();
        active
            .admit(&pod(
                "a",
                json!([{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]),
            ))
            .unwrap();
        let clash = active
            .admit(&pod("b", json!([{"containerPort": 90, "hostPort": 8080}])))
            .unwrap_err();
        assert_eq!(clash.reason, "NodePorts");
        assert_eq!(
            clash.status().message.as_deref(),
            Some("Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports")
        );
        assert_eq!(clash.status().phase.as_deref(), Some("Failed"));
        // Another protocol, another port, or an address of its own beside another address.
        for ok in [
            json!([{"containerPort": 1, "hostPort": 8080, "protocol": "UDP"}]),
            json!([{"containerPort": 1, "hostPort": 8081}]),
            json!([{"containerPort": 1}]),
        ] {
            let uid = format!("ok-{}", active.list().len());
            active.admit(&pod(&uid, ok)).unwrap();
        }
        active
            .admit(&pod(
                "ip1",
                json!([{"containerPort": 1, "hostPort": 9000, "hostIP": "10.0.0.1"}]),
            ))
            .unwrap();
        active
            .admit(&pod(
                "ip2",
                json!([{"containerPort": 1, "hostPort": 9000, "hostIP": "10.0.0.2"}]),
            ))
            .unwrap();
        assert!(active
            .admit(&pod("any", json!([{"containerPort": 1, "hostPort": 9000}])))
            .is_err());
        // Admitting again is fine; once the first pod is gone its port is free.
        active
            .admit(&pod("a", json!([{"containerPort": 80, "hostPort": 8080}])))
            .unwrap();
        active.remove("a");
        active
            .admit(&pod("b", json!([{"containerPort": 90, "hostPort": 8080}])))
            .unwrap();
        let (tx, rx) = watch::channel(PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        });
        active.set_status("b", rx);
        let listed = active.list();
        assert_eq!(listed.len(), 6);
        let b = listed
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("b"))
            .unwrap();
        assert_eq!(
            b.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Running")
        );
        drop(tx);
    }
}
