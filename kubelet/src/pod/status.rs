//! The pod's `v1.PodStatus` from a worker's slots, as upstream's kubelet computes it:
//! phase, conditions (with the `ContainersNotInitialized`/`ContainersNotReady` reasons),
//! `initContainerStatuses`, `containerStatuses` and `ephemeralContainerStatuses`. kubectl derives its `Init:N/M`,
//! `PodInitializing` and `Init:Error` columns from these.

use k8s_openapi::api::core::v1::{
    Container, ContainerState as ApiState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus as ApiContainerStatus, PodCondition, PodIP, PodStatus,
    ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::worker::{Kind, Running, Slot, Worker};

pub(super) fn terminated(
    r: &Running,
    exit: Option<&crate::runtime::ExitInfo>,
) -> ContainerStateTerminated {
    ContainerStateTerminated {
        container_id: Some(format!("containerd://{}", r.id)),
        exit_code: exit.map_or(137, |e| e.exit_code),
        reason: Some(exit.map_or("Unknown".into(), |e| e.reason.clone())),
        started_at: Some(Time(r.started_at)),
        finished_at: Some(Time(
            exit.map_or_else(jiff::Timestamp::now, |e| e.finished_at),
        )),
        ..Default::default()
    }
}

fn condition(kind: &str, ok: bool, reason: &str, message: String) -> PodCondition {
    PodCondition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: Some(reason.to_string()).filter(|r| !r.is_empty()),
        message: Some(message).filter(|m| !m.is_empty()),
        ..Default::default()
    }
}

fn container_status(s: &Slot) -> ApiContainerStatus {
    let state = if let Some(r) = &s.running {
        ApiState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(r.started_at)),
            }),
            ..Default::default()
        }
    } else if let Some((reason, message)) = &s.waiting {
        ApiState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: Some(message.clone()).filter(|m| !m.is_empty()),
            }),
            ..Default::default()
        }
    } else if let Some(t) = &s.last {
        ApiState {
            terminated: Some(t.clone()),
            ..Default::default()
        }
    } else {
        ApiState::default()
    };
    // lastState is the previous run while a newer one runs or waits.
    let last_state = s
        .last
        .as_ref()
        .filter(|_| s.running.is_some() || s.waiting.is_some())
        .map(|t| ApiState {
            terminated: Some(t.clone()),
            ..Default::default()
        });
    // what a running app container or sidecar runs with (in-place resizes change it)
    let (resources, allocated) = match (&s.running, s.kind) {
        (Some(_), Kind::App | Kind::Sidecar) => running_resources(&s.spec),
        _ => (None, None),
    };
    ApiContainerStatus {
        resources,
        allocated_resources: allocated,
        name: s.spec.name.clone(),
        image: s.spec.image.clone().unwrap_or_default(),
        image_id: s.image_id.clone(),
        container_id: s.running.as_ref().map(|r| format!("containerd://{}", r.id)),
        ready: s.ready && s.running.is_some(),
        started: Some(s.started && s.running.is_some()),
        restart_count: s.restarts as i32,
        state: Some(state),
        last_state,
        ..Default::default()
    }
}

/// Resource name -> quantity, as the API writes requests and limits.
type ResourceList = std::collections::BTreeMap<String, Quantity>;

/// A container's cpu and memory requests and limits, as its status reports them
/// (`resources`, and the requests as `allocatedResources`); None without any.
fn running_resources(c: &Container) -> (Option<ResourceRequirements>, Option<ResourceList>) {
    let pick = |m: Option<&ResourceList>| {
        let out: ResourceList = m
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k == "cpu" || *k == "memory")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (!out.is_empty()).then_some(out)
    };
    let r = c.resources.as_ref();
    let limits = pick(r.and_then(|r| r.limits.as_ref()));
    let requests = pick(r.and_then(|r| r.requests.as_ref()));
    if limits.is_none() && requests.is_none() {
        return (None, None);
    }
    let resources = ResourceRequirements {
        limits,
        requests: requests.clone(),
        ..Default::default()
    };
    (Some(resources), requests)
}

impl Slot {
    /// A regular init container that exited 0 (and will not run again).
    pub(super) fn succeeded(&self) -> bool {
        self.done && self.running.is_none() && self.last.as_ref().is_some_and(|t| t.exit_code == 0)
    }

    /// A regular init container that failed for good (restartPolicy Never).
    pub(super) fn failed(&self) -> bool {
        self.done && self.running.is_none() && self.last.as_ref().is_some_and(|t| t.exit_code != 0)
    }
}

/// Why the pod's readiness gates do not all hold (upstream's messages), or None.
fn readiness_gates(w: &Worker) -> Option<String> {
    let gates = w.pod.spec.as_ref()?.readiness_gates.as_ref()?;
    let conditions = w.pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    let why: Vec<String> = gates
        .iter()
        .filter_map(|g| {
            let c = conditions
                .into_iter()
                .flatten()
                .find(|c| c.type_ == g.condition_type);
            match c {
                None => Some(format!(
                    "corresponding condition of pod readiness gate {:?} does not exist.",
                    g.condition_type
                )),
                Some(c) if c.status != "True" => Some(format!(
                    "the status of pod readiness gate {:?} is not \"True\", but {}",
                    g.condition_type, c.status
                )),
                Some(_) => None,
            }
        })
        .collect();
    (!why.is_empty()).then(|| why.join(", "))
}

/// `[a b]`, as Go prints a string slice in condition messages.
fn go_list(names: &[&str]) -> String {
    format!("[{}]", names.join(" "))
}

/// The pod's status from the worker's view (conditions without transition times, so an
/// unchanged pod gives an equal status and nothing is written).
pub(super) fn pod_status(w: &Worker) -> PodStatus {
    let apps: Vec<&Slot> = w.slots.iter().filter(|s| s.kind == Kind::App).collect();
    let inits: Vec<&Slot> = w
        .slots
        .iter()
        .filter(|s| matches!(s.kind, Kind::Init | Kind::Sidecar))
        .collect();
    let ephemeral: Vec<ApiContainerStatus> = w
        .slots
        .iter()
        .filter(|s| s.kind == Kind::Ephemeral)
        .map(container_status)
        .collect();
    let init_failed = inits.iter().any(|s| s.kind == Kind::Init && s.failed());
    let any_running = apps.iter().any(|s| s.running.is_some());
    let all_done = !apps.is_empty() && apps.iter().all(|s| s.done && s.running.is_none());
    let phase = if w.failure.is_some() || init_failed {
        "Failed"
    } else if all_done {
        let ok = apps
            .iter()
            .all(|s| s.last.as_ref().is_some_and(|t| t.exit_code == 0));
        if ok {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if !w.initialized {
        "Pending"
    } else if any_running || apps.iter().any(|s| s.last.is_some()) {
        "Running"
    } else {
        "Pending"
    };

    let incomplete: Vec<&str> = inits
        .iter()
        .filter(|s| match s.kind {
            // Sidecars count once started; after initialization they no longer matter.
            Kind::Sidecar => !(w.initialized || s.started && s.running.is_some()),
            _ => !s.succeeded(),
        })
        .map(|s| s.spec.name.as_str())
        .collect();
    let initialized = if phase == "Succeeded" {
        condition("Initialized", true, "PodCompleted", String::new())
    } else if w.initialized || incomplete.is_empty() {
        condition("Initialized", true, "", String::new())
    } else {
        condition(
            "Initialized",
            false,
            "ContainersNotInitialized",
            format!(
                "containers with incomplete status: {}",
                go_list(&incomplete)
            ),
        )
    };
    let statuses: Vec<ApiContainerStatus> = apps.iter().map(|s| container_status(s)).collect();
    let init_statuses: Vec<ApiContainerStatus> =
        inits.iter().map(|s| container_status(s)).collect();
    // Sidecars count for readiness, as upstream.
    let unready: Vec<&str> = apps
        .iter()
        .zip(&statuses)
        .filter(|(_, c)| !c.ready)
        .map(|(s, _)| s.spec.name.as_str())
        .chain(
            inits
                .iter()
                .zip(&init_statuses)
                .filter(|(s, c)| s.kind == Kind::Sidecar && !c.ready)
                .map(|(s, _)| s.spec.name.as_str()),
        )
        .collect();
    let all_ready = !statuses.is_empty() && unready.is_empty();
    let (reason, message) = if all_ready {
        ("", String::new())
    } else if phase == "Succeeded" || phase == "Failed" {
        ("PodCompleted", String::new())
    } else {
        (
            "ContainersNotReady",
            format!("containers with unready status: {}", go_list(&unready)),
        )
    };
    // The pod is Ready when its containers are and every readiness gate's condition (set
    // by someone else) is True, as upstream.
    let gates = readiness_gates(w);
    let (pod_ready, ready_reason, ready_message) = match (all_ready, gates) {
        (true, Some(why)) => (false, "ReadinessGatesNotReady", why),
        _ => (all_ready, reason, message.clone()),
    };
    let ips: Vec<String> = w
        .sandbox
        .iter()
        .flat_map(|s| s.ips.iter().map(|i| i.to_string()))
        .collect();
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some({
            let mut c = Vec::new();
            // upstream marks a pod the kubelet evicts as a disruption target
            if let Some(("Evicted", message)) = w.failure.as_ref().map(|(r, m)| (*r, m)) {
                c.push(condition(
                    "DisruptionTarget",
                    true,
                    "TerminationByKubelet",
                    message.clone(),
                ));
            }
            // upstream's kubelet conditions, in its order: the sandbox (with its network)
            // exists, initialized, ready, containers ready, scheduled
            c.extend([
                condition(
                    "PodReadyToStartContainers",
                    w.sandbox.is_some(),
                    "",
                    String::new(),
                ),
                initialized,
                condition("Ready", pod_ready, ready_reason, ready_message),
                condition("ContainersReady", all_ready, reason, message),
                condition("PodScheduled", true, "", String::new()),
            ]);
            // an in-place resize that cannot be done, or failed (`worker/resize.rs`)
            if let Some((reason, message)) = &w.resize.pending {
                c.push(condition("PodResizePending", true, reason, message.clone()));
            }
            if let Some(message) = &w.resize.error {
                c.push(condition(
                    "PodResizeInProgress",
                    true,
                    "Error",
                    message.clone(),
                ));
            }
            c
        }),
        observed_generation: w.resize.observed,
        message: match &w.failure {
            Some((_, message)) => Some(message.clone()),
            None => w.sandbox_error.clone(),
        },
        reason: w.failure.as_ref().map(|(reason, _)| reason.to_string()),
        container_statuses: Some(statuses),
        init_container_statuses: Some(init_statuses).filter(|v| !v.is_empty()),
        ephemeral_container_statuses: Some(ephemeral).filter(|v| !v.is_empty()),
        pod_ip: ips.first().cloned(),
        pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect())
            .filter(|v: &Vec<PodIP>| !v.is_empty()),
        host_ip: w.node.host_ip.map(|i| i.to_string()),
        host_ips: w
            .node
            .host_ip
            .map(|i| vec![k8s_openapi::api::core::v1::HostIP { ip: i.to_string() }]),
        start_time: Some(Time(w.start_time)),
        ..Default::default()
    }
}
