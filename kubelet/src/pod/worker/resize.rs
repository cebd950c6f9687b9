//! In-place pod resize (KEP-1287, `pods/<name>/resize`): when the API's pod asks for other
//! cpu/memory resources than a container runs with, the worker applies them, as upstream's
//! kubelet does:
//!
//! - a pod whose requests would exceed what the node has (its CPUs, its memory) is not
//!   resized: the condition `PodResizePending` (reason `Infeasible`) says why, until the spec
//!   changes; one that fits the node but not beside the other pods' requests now waits
//!   (`Deferred`, tried again every tick, so it goes on once another pod is gone);
//! - a resource whose `resizePolicy` is `RestartContainer` restarts the container with the
//!   new value (its restart count goes up);
//! - otherwise the running container's cgroup is changed in place (`cpu.weight`/`cpu.shares`,
//!   `cpu.max`/`cpu.cfs_quota_us`, `memory.max`/`memory.limit_in_bytes`), what CRI's
//!   `UpdateContainerResources` makes runc do; a memory limit below what the container uses
//!   now is not applied: `PodResizeInProgress` (reason `Error`) says so, and it is tried again;
//! - the container's status reports what it runs with (`resources`, `allocatedResources`),
//!   and `status.observedGeneration` the pod generation acted on.
//!
//! What was applied is checkpointed in the pod's directory (`resized.json`), so a restarted
//! kubelet resumes a resize it had not finished (upstream's allocation checkpoint). Not as
//! upstream: the other pods count with their requests as last admitted or resized (upstream:
//! their allocated resources; the same once their resizes are done).

use k8s_openapi::api::core::v1::{Container, Pod};

use super::{Kind, Worker};

/// The file in the pod's directory that says what its containers run with.
const CHECKPOINT: &str = "resized.json";
use crate::pod::spec as podspec;

/// The resize the API asks for, and how the last attempt went.
#[derive(Debug, Default)]
pub(in crate::pod) struct Resize {
    /// The containers and init containers of the API's latest pod.
    target: Option<(Vec<Container>, Vec<Container>)>,
    generation: Option<i64>,
    /// `PodResizePending`: reason and message.
    pub(in crate::pod) pending: Option<(String, String)>,
    /// `PodResizeInProgress` with reason `Error`: the message.
    pub(in crate::pod) error: Option<String>,
    /// The generation the worker last acted on.
    pub(in crate::pod) observed: Option<i64>,
}

impl Resize {
    /// The API's pod changed.
    pub(in crate::pod) fn want(&mut self, pod: &Pod) {
        if let Some(spec) = pod.spec.as_ref() {
            self.target = Some((
                spec.containers.clone(),
                spec.init_containers.clone().unwrap_or_default(),
            ));
        }
        self.generation = pod.metadata.generation;
    }
}

/// A resource's policy: `RestartContainer` or (the default) `NotRequired`.
fn restarts_for(c: &Container, resource: &str) -> bool {
    c.resize_policy
        .iter()
        .flatten()
        .any(|p| p.resource_name == resource && p.restart_policy == "RestartContainer")
}

fn quantity(c: &Container, which: &str, resource: &str) -> Option<String> {
    let r = c.resources.as_ref()?;
    let map = if which == "limits" {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    }?;
    map.get(resource).map(|q| q.0.clone())
}

/// Whether `resource`'s request or limit differs between the two.
fn differs(a: &Container, b: &Container, resource: &str) -> bool {
    ["requests", "limits"]
        .iter()
        .any(|w| quantity(a, w, resource) != quantity(b, w, resource))
}

impl Worker {
    /// See the module docs. Called every tick; cheap while nothing is asked.
    pub(super) async fn step_resize(&mut self) {
        let Some((apps, inits)) = self.resize.target.as_ref() else {
            return;
        };
        let wanted = |kind: Kind, name: &str| -> Option<&Container> {
            let list = match kind {
                Kind::App => apps,
                Kind::Sidecar => inits,
                _ => return None,
            };
            list.iter().find(|c| c.name == name)
        };
        let changes: Vec<(usize, Container)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let want = wanted(s.kind, &s.spec.name)?;
                (want.resources != s.spec.resources || want.resize_policy != s.spec.resize_policy)
                    .then(|| (i, want.clone()))
            })
            .collect();
        let generation = self.resize.generation;
        if changes.is_empty() {
            self.resize.pending = None;
            self.resize.error = None;
            self.resize.observed = generation;
            return;
        }
        // what the pod would request (upstream's accounting: containers and sidecars, the
        // init containers' peak, overhead)
        let mut resized = self.pod.clone();
        if let Some(spec) = resized.spec.as_mut() {
            let lists = std::iter::once(&mut spec.containers).chain(spec.init_containers.as_mut());
            for c in lists.flatten() {
                if let Some((_, want)) = changes
                    .iter()
                    .find(|(i, _)| self.slots[*i].spec.name == c.name)
                {
                    c.resources = want.resources.clone();
                }
            }
        }
        let (cpu, mem) = crate::pod::admit::pod_requests(&resized);
        // what the node offers pods (its status's allocatable)
        let node = self
            .cfg
            .active
            .as_ref()
            .and_then(|a| a.allocatable())
            .unwrap_or_else(|| crate::node::info::allocatable(0));
        let infeasible = [("cpu", cpu, node.cpu_milli), ("memory", mem, node.memory)]
            .into_iter()
            .find(|(_, asked, cap)| asked > cap);
        self.resize.observed = generation;
        if let Some((resource, asked, cap)) = infeasible {
            self.resize.pending = Some((
                "Infeasible".into(),
                format!("Node didn't have enough capacity: {resource}, requested: {asked}, capacity: {cap}"),
            ));
            return;
        }
        // it fits the node, but not beside the other pods now: deferred, tried every tick
        let uid = self.pod.metadata.uid.clone().unwrap_or_default();
        let deferred = self
            .cfg
            .active
            .as_ref()
            .and_then(|a| a.resize_fits(&uid, cpu, mem));
        if let Some((resource, asked, used, cap)) = deferred {
            self.resize.pending = Some((
                "Deferred".into(),
                format!("Node didn't have enough resource: {resource}, requested: {asked}, used: {used}, capacity: {cap}"),
            ));
            return;
        }
        self.resize.pending = None;
        let mut error = None;
        let grace = std::time::Duration::from_secs(
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64,
        );
        for (i, want) in changes {
            let had = self.slots[i].spec.clone();
            let restart = ["cpu", "memory"]
                .iter()
                .any(|r| differs(&had, &want, r) && restarts_for(&want, r));
            let running = self.slots[i].running.as_ref().map(|r| r.id.clone());
            match running {
                Some(id) if restart => {
                    self.apply(i, &want);
                    let exit = self.kill_slot(i, &id, grace).await;
                    if let Some(r) = self.slots[i].running.take() {
                        let policy = self.policy();
                        self.finished(i, r, exit.as_ref(), &policy).await;
                    }
                }
                Some(id) => {
                    let resources = match podspec::resources(&want) {
                        Ok(r) => r,
                        Err(e) => {
                            error = Some(e.to_string());
                            continue;
                        }
                    };
                    match self.rt.update_resources(&id, &resources).await {
                        Ok(()) => self.apply(i, &want),
                        Err(e) => error = Some(e.to_string()),
                    }
                }
                // not running: the next start takes the new values
                None => self.apply(i, &want),
            }
        }
        self.resize.error = error;
        self.save_allocation();
        if let Some(active) = self.cfg.active.as_ref() {
            active.update_pod(&self.pod);
        }
    }

    /// The checkpoint of what the pod's containers run with.
    fn checkpoint(&self) -> std::path::PathBuf {
        let uid = self.pod.metadata.uid.clone().unwrap_or_default();
        self.rt.config().pod_dir(&uid).join(CHECKPOINT)
    }

    /// At start: what the containers were last given (a restarted kubelet resumes a resize
    /// it had not finished), or, the first time, what they start with now.
    pub(super) fn load_allocation(&mut self) {
        let saved: Option<serde_json::Value> = crate::sys::read_file(&self.checkpoint())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(saved) = saved else {
            self.save_allocation();
            return;
        };
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if !matches!(s.kind, Kind::App | Kind::Sidecar) {
                continue;
            }
            let Some(entry) = saved.get(&s.spec.name) else {
                continue;
            };
            let mut had = s.spec.clone();
            had.resources = serde_json::from_value(entry["resources"].clone()).ok();
            had.resize_policy = serde_json::from_value(entry["resizePolicy"].clone()).ok();
            self.apply(i, &had);
        }
    }

    fn save_allocation(&self) {
        let entries: serde_json::Map<String, serde_json::Value> = self
            .slots
            .iter()
            .filter(|s| matches!(s.kind, Kind::App | Kind::Sidecar))
            .map(|s| {
                (
                    s.spec.name.clone(),
                    serde_json::json!({"resources": s.spec.resources, "resizePolicy": s.spec.resize_policy}),
                )
            })
            .collect();
        let body = serde_json::Value::Object(entries).to_string();
        if let Err(e) = crate::sys::write_file(&self.checkpoint(), body.as_bytes()) {
            tracing::warn!(error = %e, "writing the pod's resource checkpoint");
        }
    }

    /// Slot `i` now runs with `want`'s resources.
    fn apply(&mut self, i: usize, want: &Container) {
        let s = &mut self.slots[i];
        s.spec.resources = want.resources.clone();
        s.spec.resize_policy = want.resize_policy.clone();
        let name = s.spec.name.clone();
        // the worker's pod (what restarts and statuses read) follows
        if let Some(spec) = self.pod.spec.as_mut() {
            let lists = std::iter::once(&mut spec.containers).chain(spec.init_containers.as_mut());
            for c in lists.flatten().filter(|c| c.name == name) {
                c.resources = want.resources.clone();
                c.resize_policy = want.resize_policy.clone();
            }
        }
    }
}
