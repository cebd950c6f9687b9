//! `/stats/summary`: upstream's Summary API ([`summary`]) for this node and its pods, read
//! where cadvisor would read it: each container's and pod's cgroup (the runtime places them
//! at `<cgroup-root>/pod<uid>/<container id>`; v1 controllers or the v2 tree, [`read`]), the
//! machine from /proc, a pod's network from `/proc/<pid>/net/dev` of a process in its
//! sandbox (so, in its network namespace), volumes and logs by walking their directories,
//! filesystems with statvfs.
//!
//! `usageNanoCores` is a rate: the CPU time used since the previous sample of the same
//! cgroup divided by the time between them. Samples are taken by every request and every
//! [`SAMPLE_EVERY`] in the background (so the first request has a rate), and a request
//! less than [`MIN_WINDOW`] after the last sample reuses its rate.

pub mod cadvisor;
pub mod read;
pub mod storage;
pub mod summary;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use containerd_client::services::v1::{Container, ListContainersRequest};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::time::Instant;

use self::read::{Interface, Usage};
use self::summary::*;
use crate::runtime::{
    Runtime, KIND_CONTAINER, KIND_SANDBOX, LABEL_ATTEMPT, LABEL_CGROUP, LABEL_CONTAINER_NAME,
    LABEL_KIND, LABEL_LOG_PATH, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID,
    LABEL_STARTED_AT,
};
use crate::sys;

/// How often the background sampler reads every cgroup.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The shortest interval a CPU rate is computed over.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// A cgroup not sampled for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(120);

struct CpuSample {
    at: Instant,
    usage_ns: u64,
    rate: Option<u64>,
}

/// Builds summaries; keeps the previous CPU sample of each cgroup.
pub struct Collector {
    rt: Runtime,
    cpu: Mutex<HashMap<String, CpuSample>>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("rt", &self.rt).finish()
    }
}

fn now() -> Option<Time> {
    Some(Time(jiff::Timestamp::now()))
}

fn time_of(t: &prost_types::Timestamp) -> Option<Time> {
    jiff::Timestamp::new(t.seconds, t.nanos).ok().map(Time)
}

impl Collector {
    pub fn new(rt: Runtime) -> Collector {
        Collector {
            rt,
            cpu: Mutex::new(HashMap::new()),
        }
    }

    /// Sample every cgroup every [`SAMPLE_EVERY`] until `shutdown`.
    pub async fn sample(&self, shutdown: component::CancellationToken) {
        loop {
            self.summary(true).await;
            if let Ok(mut m) = self.cpu.lock() {
                m.retain(|_, s| s.at.elapsed() < FORGET_AFTER);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
        }
    }

    /// The CPU rate of `key` since its previous sample (None for its first).
    fn nano_cores(&self, key: &str, usage_ns: u64) -> Option<u64> {
        let now = Instant::now();
        let mut m = self.cpu.lock().ok()?;
        match m.get_mut(key) {
            Some(s) if now.duration_since(s.at) >= MIN_WINDOW => {
                let elapsed = now.duration_since(s.at).as_nanos();
                let used = u128::from(usage_ns.saturating_sub(s.usage_ns));
                let rate = u64::try_from(used * 1_000_000_000 / elapsed.max(1)).ok();
                *s = CpuSample {
                    at: now,
                    usage_ns,
                    rate,
                };
                rate
            }
            Some(s) => s.rate,
            None => {
                m.insert(
                    key.to_string(),
                    CpuSample {
                        at: now,
                        usage_ns,
                        rate: None,
                    },
                );
                None
            }
        }
    }

    fn cpu(&self, key: &str, u: &Usage) -> Option<CpuStats> {
        let ns = u.cpu_ns?;
        Some(CpuStats {
            time: now(),
            usage_nano_cores: self.nano_cores(key, ns),
            usage_core_nano_seconds: Some(ns),
        })
    }

    /// The summary; `only_cpu_and_memory` (upstream's query parameter) leaves out network,
    /// filesystems and volumes.
    pub async fn summary(&self, only_cpu_and_memory: bool) -> Summary {
        let full = !only_cpu_and_memory;
        let by_pod = self.by_pod().await;
        let mut pods = Vec::new();
        for (uid, cs) in &by_pod {
            // writable layers are measured by containerd's snapshotter
            let storage = if full {
                Some(storage::pod(&self.rt, uid).await)
            } else {
                None
            };
            pods.extend(self.pod(uid, cs, storage.as_ref()));
        }
        Summary {
            node: self.node(full),
            pods,
        }
    }

    /// The runtime's containers (sandboxes included) by pod uid; none when listing fails.
    async fn by_pod(&self) -> BTreeMap<String, Vec<Container>> {
        let containers = match self.containers().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "listing containers for stats");
                Vec::new()
            }
        };
        let mut by_pod: BTreeMap<String, Vec<Container>> = BTreeMap::new();
        for c in containers {
            if let Some(uid) = c.labels.get(LABEL_POD_UID) {
                by_pod.entry(uid.clone()).or_default().push(c);
            }
        }
        by_pod
    }

    async fn containers(&self) -> Result<Vec<Container>, String> {
        let cd = self.rt.containerd();
        let list = cd
            .containers()
            .list(cd.req(ListContainersRequest { filters: vec![] }, None))
            .await
            .map_err(|e| e.message().to_string())?;
        Ok(list.into_inner().containers)
    }

    fn node(&self, full: bool) -> NodeStats {
        let config = self.rt.config();
        let machine = read::machine();
        let start_time = sys::read_proc("stat")
            .and_then(|s| read::boot_time(&s))
            .and_then(|b| jiff::Timestamp::from_second(b).ok())
            .map(Time);
        let pods = read::cgroup(&config.cgroup_parent).map(|u| ContainerStats {
            name: "pods".into(),
            start_time: start_time.clone(),
            cpu: self.cpu(&config.cgroup_parent, &u),
            memory: u.memory.as_ref().map(memory),
            ..Default::default()
        });
        let mut node = NodeStats {
            node_name: config.node_name.clone(),
            system_containers: pods.into_iter().collect(),
            start_time,
            cpu: self.cpu("machine", &machine),
            memory: machine.memory.as_ref().map(memory),
            ..Default::default()
        };
        node.rlimit = Some(RlimitStats {
            time: now(),
            maxpid: sys::read_proc("sys/kernel/pid_max").and_then(|v| v.trim().parse().ok()),
            // Upstream: sysinfo's process count, which /proc/loadavg's "running/total" shows.
            curproc: sys::read_proc("loadavg")
                .and_then(|l| l.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok()),
        });
        if full {
            let interfaces: Vec<Interface> =
                read::net_dev(&sys::read_proc("net/dev").unwrap_or_default())
                    .into_iter()
                    .filter(|i| !i.name.starts_with("veth"))
                    .collect();
            let default =
                sys::read_proc("net/route").and_then(|r| read::default_route_interface(&r));
            node.network = network(interfaces, default.as_deref());
            node.fs = fs(&config.root_dir, None);
        }
        node
    }

    /// With `storage` (the full summary), filesystems and volumes too.
    fn pod(
        &self,
        uid: &str,
        containers: &[Container],
        storage: Option<&storage::PodStorage>,
    ) -> Option<PodStats> {
        let full = storage.is_some();
        let cgroups = PodCgroups::of(containers)?;
        let PodCgroups {
            sandbox,
            sandbox_cgroup,
            pod_cgroup,
            pod_usage,
            ..
        } = &cgroups;
        let mut stats = PodStats {
            pod_ref: PodReference {
                name: label(sandbox, LABEL_POD_NAME),
                namespace: label(sandbox, LABEL_POD_NAMESPACE),
                uid: uid.to_string(),
            },
            start_time: sandbox.created_at.as_ref().and_then(time_of),
            cpu: self.cpu(pod_cgroup, pod_usage),
            memory: pod_usage.memory.as_ref().map(memory),
            ..Default::default()
        };
        let config = self.rt.config();
        let mut processes = sys::cgroup_pids(sandbox_cgroup).len() as u64;
        for (name, (c, usage)) in &cgroups.containers {
            let cgroup = label(c, LABEL_CGROUP);
            processes += sys::cgroup_pids(&cgroup).len() as u64;
            let mut cs = ContainerStats {
                name: name.clone(),
                start_time: started_at(c).map(Time),
                cpu: self.cpu(&cgroup, usage),
                memory: usage.memory.as_ref().map(memory),
                ..Default::default()
            };
            if let Some(s) = storage.and_then(|s| s.containers.get(name)) {
                cs.rootfs = fs(&config.root_dir, Some(s.rootfs));
                let log = label(c, LABEL_LOG_PATH);
                if Path::new(&log).parent().is_some() && !log.is_empty() {
                    cs.logs = fs(&config.log_dir, Some(s.logs));
                }
            }
            stats.containers.push(cs);
        }
        stats.process_stats = Some(ProcessStats {
            process_count: Some(processes),
        });
        if full {
            stats.network = network(cgroups.network(), Some("eth0"));
            stats.volume = volumes(&config.pod_dir(uid));
            // upstream: writable layers + logs + disk-backed emptyDirs
            let used = storage.map_or((0, 0), |s| (s.bytes(), s.inodes()));
            stats.ephemeral_storage = fs(&config.root_dir, Some(used));
        }
        Some(stats)
    }
}

/// A runtime label of `c` (empty when unset).
fn label(c: &Container, key: &str) -> String {
    c.labels.get(key).cloned().unwrap_or_default()
}

/// When container `c` started: the runtime's label, else its creation.
fn started_at(c: &Container) -> Option<jiff::Timestamp> {
    label(c, LABEL_STARTED_AT)
        .parse()
        .ok()
        .or_else(|| jiff::Timestamp::new(c.created_at.as_ref()?.seconds, 0).ok())
}

/// A pod's cgroups as the runtime placed them (`<cgroup-root>/pod<uid>/<container id>`):
/// the sandbox's (its processes hold the pod's network namespace), the pod's own with its
/// usage, and per container name the newest attempt whose cgroup exists (a running
/// container's) with its usage. What `/stats/summary` and `/metrics/cadvisor` report.
struct PodCgroups<'a> {
    sandbox: &'a Container,
    sandbox_cgroup: String,
    pod_cgroup: String,
    pod_usage: Usage,
    containers: BTreeMap<String, (&'a Container, Usage)>,
}

impl<'a> PodCgroups<'a> {
    /// None without a sandbox or a pod cgroup.
    fn of(containers: &'a [Container]) -> Option<PodCgroups<'a>> {
        let kind = |c: &Container, k: &str| c.labels.get(LABEL_KIND).is_some_and(|v| v == k);
        let sandbox = containers.iter().find(|c| kind(c, KIND_SANDBOX))?;
        let sandbox_cgroup = label(sandbox, LABEL_CGROUP);
        let pod_cgroup = sandbox_cgroup.rsplit_once('/')?.0.to_string();
        let pod_usage = read::cgroup(&pod_cgroup)?;
        let mut newest: BTreeMap<String, (u32, &Container, Usage)> = BTreeMap::new();
        for c in containers.iter().filter(|c| kind(c, KIND_CONTAINER)) {
            let Some(usage) = read::cgroup(&label(c, LABEL_CGROUP)) else {
                continue;
            };
            let attempt: u32 = label(c, LABEL_ATTEMPT).parse().unwrap_or(0);
            let name = label(c, LABEL_CONTAINER_NAME);
            if newest.get(&name).is_none_or(|(a, _, _)| *a <= attempt) {
                newest.insert(name, (attempt, c, usage));
            }
        }
        Some(PodCgroups {
            sandbox,
            sandbox_cgroup,
            pod_cgroup,
            pod_usage,
            containers: newest
                .into_iter()
                .map(|(n, (_, c, u))| (n, (c, u)))
                .collect(),
        })
    }

    /// The interfaces of the pod's network namespace (`/proc/<pid>/net/dev` of a process in
    /// the sandbox), `lo` left out.
    fn network(&self) -> Vec<Interface> {
        sys::cgroup_pids(&self.sandbox_cgroup)
            .first()
            .and_then(|p| sys::read_proc(&format!("{p}/net/dev")))
            .map(|t| read::net_dev(&t))
            .unwrap_or_default()
    }
}

fn memory(m: &read::Memory) -> MemoryStats {
    MemoryStats {
        time: now(),
        // Upstream: what is left below the limit, reported only when there is one.
        available_bytes: m.limit.map(|l| l.saturating_sub(m.working_set)),
        usage_bytes: Some(m.usage),
        working_set_bytes: Some(m.working_set),
        rss_bytes: Some(m.rss),
        page_faults: m.page_faults,
        major_page_faults: m.major_page_faults,
    }
}

fn interface(i: &Interface) -> InterfaceStats {
    InterfaceStats {
        name: i.name.clone(),
        rx_bytes: Some(i.rx_bytes),
        rx_errors: Some(i.rx_errors),
        tx_bytes: Some(i.tx_bytes),
        tx_errors: Some(i.tx_errors),
    }
}

/// Network stats with `default` (or the first interface) inline.
fn network(interfaces: Vec<Interface>, default: Option<&str>) -> Option<NetworkStats> {
    let first = interfaces
        .iter()
        .find(|i| Some(i.name.as_str()) == default)
        .or_else(|| interfaces.first())?;
    Some(NetworkStats {
        time: now(),
        default: interface(first),
        interfaces: interfaces.iter().map(interface).collect(),
    })
}

/// The filesystem holding `path`; with `used` (bytes, inodes) what one consumer takes of
/// it, else the whole filesystem's use.
fn fs(path: &Path, used: Option<(u64, u64)>) -> Option<FsStats> {
    let u = sys::statvfs(path)?;
    let (used_bytes, inodes_used) =
        used.unwrap_or((u.used, u.inodes.saturating_sub(u.inodes_free)));
    Some(FsStats {
        time: now(),
        available_bytes: Some(u.available),
        capacity_bytes: Some(u.capacity),
        used_bytes: Some(used_bytes),
        inodes_free: Some(u.inodes_free),
        inodes: Some(u.inodes),
        inodes_used: Some(inodes_used),
    })
}

/// Each volume of the pod dir (`volumes/<plugin>/<name>`).
fn volumes(pod_dir: &Path) -> Vec<VolumeStats> {
    let mut out = Vec::new();
    let plugins = std::fs::read_dir(pod_dir.join("volumes"))
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    for plugin in plugins {
        let Ok(dir) = std::fs::read_dir(&plugin) else {
            continue;
        };
        for v in dir.flatten() {
            let path = v.path();
            let used = sys::disk_usage(&path);
            let Some(fs) = fs(&path, used) else {
                continue;
            };
            out.push(VolumeStats {
                fs,
                name: v.file_name().to_string_lossy().into_owned(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
