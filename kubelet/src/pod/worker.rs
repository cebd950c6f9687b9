//! One task per pod: make the runtime match the PodSpec and report a `v1.PodStatus`.
//! It starts the sandbox and containers, restarts exited containers per `restartPolicy`
//! with CrashLoopBackOff, runs startup/liveness/readiness probes, and on stop terminates
//! gracefully and removes everything. The API-driven sync loop will own one per pod.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState as ApiState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus as ApiContainerStatus, Pod, PodCondition, PodIP,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::watch;
use tokio::time::Instant;

use super::probe::{self, Action, ProbeResult, ProbeSpec, ProbeTracker};
use super::spec::{self as podspec, NodeContext};
use crate::runtime::{ContainerState, Runtime, Sandbox};

/// Restart timing. Upstream: 10 s doubling to 5 min.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How often the worker looks at its containers.
    pub tick: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            tick: Duration::from_millis(500),
        }
    }
}

impl WorkerConfig {
    /// Delay before restart number `restart` (1-based): the first restart is immediate,
    /// then initial, 2x, 4x ... capped at max.
    pub fn backoff(&self, restart: u32) -> Duration {
        if restart <= 1 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(restart.saturating_sub(2).min(16));
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// `restartPolicy` applied to an exit code.
pub fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

struct Running {
    id: String,
    started_at: jiff::Timestamp,
    startup: Option<ProbeTracker>,
    liveness: Option<ProbeTracker>,
    readiness: Option<ProbeTracker>,
}

struct Slot {
    spec: Container,
    restarts: u32,
    running: Option<Running>,
    last: Option<ContainerStateTerminated>,
    waiting: Option<(String, String)>,
    next_start: Instant,
    done: bool,
    ready: bool,
    started: bool,
    image_id: String,
    pull_failures: u32,
}

/// A running pod worker: its status feed and its stop switch.
pub struct PodHandle {
    pub status: watch::Receiver<PodStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<PodStatus>,
}

impl PodHandle {
    /// Terminate the pod gracefully, remove everything, and return its last status.
    pub async fn terminate(self) -> PodStatus {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// Start a worker for `pod` on this node.
pub fn spawn(rt: Runtime, pod: Pod, node: NodeContext, cfg: WorkerConfig) -> PodHandle {
    let slots = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| Slot {
            spec: c.clone(),
            restarts: 0,
            running: None,
            last: None,
            waiting: Some(("ContainerCreating".into(), String::new())),
            next_start: Instant::now(),
            done: false,
            ready: false,
            started: false,
            image_id: String::new(),
            pull_failures: 0,
        })
        .collect();
    let worker = Worker {
        rt,
        pod,
        node,
        cfg,
        sandbox: None,
        sandbox_error: None,
        sandbox_retry: Instant::now(),
        slots,
        start_time: jiff::Timestamp::now(),
    };
    // Readers see every container as waiting from the start, never an empty status.
    let (status_tx, status) = watch::channel(worker.status());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(worker.run(status_tx, stop_rx));
    PodHandle { status, stop, task }
}

struct Worker {
    rt: Runtime,
    pod: Pod,
    node: NodeContext,
    cfg: WorkerConfig,
    sandbox: Option<Sandbox>,
    sandbox_error: Option<String>,
    sandbox_retry: Instant,
    slots: Vec<Slot>,
    start_time: jiff::Timestamp,
}

impl Worker {
    fn name(&self) -> String {
        let m = &self.pod.metadata;
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or("default"),
            m.name.as_deref().unwrap_or("")
        )
    }

    async fn run(
        mut self,
        status: watch::Sender<PodStatus>,
        mut stop: watch::Receiver<bool>,
    ) -> PodStatus {
        loop {
            if *stop.borrow() {
                break;
            }
            self.step().await;
            let next = self.status();
            status.send_if_modified(|s| {
                let changed = *s != next;
                *s = next;
                changed
            });
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.tick) => {}
                changed = stop.changed() => {
                    // The handle was dropped (the kubelet is stopping): leave the pod running,
                    // as upstream's kubelet does, and stop managing it.
                    if changed.is_err() {
                        return self.status();
                    }
                }
            }
        }
        self.terminate().await;
        let last = self.status();
        status.send_replace(last.clone());
        last
    }

    async fn terminate(&mut self) {
        let Ok((_, _, uid)) = podspec::pod_identity(&self.pod) else {
            return;
        };
        let grace = podspec::grace_period(&self.pod);
        if let Err(e) = self.rt.stop_pod(&uid, grace).await {
            tracing::warn!(pod = %self.name(), error = %e, "stopping the pod");
        }
        for slot in &mut self.slots {
            if let Some(r) = slot.running.take() {
                let exit = self
                    .rt
                    .wait_container(&r.id, Duration::from_millis(100))
                    .await;
                slot.last = Some(terminated(&r, exit.as_ref()));
            }
            slot.done = true;
            slot.ready = false;
            slot.waiting = None;
        }
        if let Err(e) = self.rt.remove_pod(&uid).await {
            tracing::warn!(pod = %self.name(), error = %e, "removing the pod");
        }
        self.sandbox = None;
    }

    fn policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    async fn step(&mut self) {
        if self.sandbox.is_none() {
            if Instant::now() < self.sandbox_retry {
                return;
            }
            let made = match podspec::sandbox_config(&self.pod, &self.node) {
                Err(e) => Err(e.to_string()),
                Ok(cfg) => self.rt.run_sandbox(&cfg).await.map_err(|e| e.to_string()),
            };
            match made {
                Ok(s) => {
                    self.sandbox = Some(s);
                    self.sandbox_error = None;
                }
                Err(e) => {
                    tracing::warn!(pod = %self.name(), error = %e, "creating the pod sandbox");
                    self.sandbox_error = Some(e);
                    self.sandbox_retry = Instant::now() + self.cfg.backoff_initial;
                    return;
                }
            }
        }
        let policy = self.policy();
        let grace = podspec::grace_period(&self.pod);
        for i in 0..self.slots.len() {
            self.step_container(i, &policy, grace).await;
        }
    }

    async fn step_container(&mut self, i: usize, policy: &str, grace: Duration) {
        let now = Instant::now();
        let Some(sandbox) = self.sandbox.clone() else {
            return;
        };
        if let Some(id) = self.slots[i].running.as_ref().map(|r| r.id.clone()) {
            let state = self.rt.container_state(&id).await;
            match state {
                Ok(ContainerState::Running { .. }) => self.probe(i, &id, sandbox.ip(), grace).await,
                Ok(ContainerState::Exited(exit)) => {
                    let slot = &mut self.slots[i];
                    let r = slot.running.take().expect("checked above");
                    slot.last = Some(terminated(&r, Some(&exit)));
                    slot.ready = false;
                    slot.started = false;
                    if let Err(e) = self.rt.remove_container(&id).await {
                        tracing::warn!(container = %id, error = %e, "removing an exited container");
                    }
                    let slot = &mut self.slots[i];
                    if should_restart(policy, exit.exit_code) {
                        let delay = self.cfg.backoff(slot.restarts + 1);
                        slot.next_start = now + delay;
                        if !delay.is_zero() {
                            let msg = format!(
                                "back-off {}s restarting failed container={} pod={}",
                                delay.as_secs(),
                                slot.spec.name,
                                self.pod.metadata.name.as_deref().unwrap_or("")
                            );
                            slot.waiting = Some(("CrashLoopBackOff".into(), msg));
                        }
                    } else {
                        slot.done = true;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(container = %id, error = %e, "reading container state"),
            }
            return;
        }
        let slot = &self.slots[i];
        if slot.done || now < slot.next_start {
            return;
        }
        let attempt = slot.restarts + u32::from(slot.last.is_some());
        let cfg = match podspec::container_config(
            &self.pod,
            &slot.spec,
            attempt,
            sandbox.ip(),
            &self.node,
        ) {
            Ok(c) => c,
            Err(e) => {
                let slot = &mut self.slots[i];
                slot.waiting = Some(("CreateContainerConfigError".into(), e.to_string()));
                slot.next_start = now + self.cfg.backoff_initial;
                return;
            }
        };
        match self.rt.run_container(&sandbox, &cfg).await {
            Ok(status) => {
                let started = Instant::now();
                let slot = &mut self.slots[i];
                let tracker = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
                    p.as_ref()
                        .and_then(|p| ProbeSpec::from_api(&slot.spec, p).ok())
                        .map(|s| ProbeTracker::new(s, started))
                };
                let running = Running {
                    id: status.id,
                    started_at: jiff::Timestamp::now(),
                    startup: tracker(&slot.spec.startup_probe),
                    liveness: tracker(&slot.spec.liveness_probe),
                    readiness: tracker(&slot.spec.readiness_probe),
                };
                slot.started = running.startup.is_none();
                slot.ready = running.readiness.is_none();
                slot.restarts = attempt;
                slot.image_id = self
                    .rt
                    .resolve_image(&cfg.image)
                    .await
                    .map(|i| i.digest)
                    .unwrap_or_default();
                slot.running = Some(running);
                slot.waiting = None;
                slot.pull_failures = 0;
            }
            Err(e) if e.is_image_not_present() => {
                let slot = &mut self.slots[i];
                slot.pull_failures += 1;
                let reason = if slot.pull_failures == 1 {
                    "ErrImagePull"
                } else {
                    "ImagePullBackOff"
                };
                slot.waiting = Some((reason.into(), e.to_string()));
                slot.next_start = now + self.cfg.backoff(slot.pull_failures + 1);
            }
            Err(e) => {
                let slot = &mut self.slots[i];
                slot.waiting = Some(("RunContainerError".into(), e.to_string()));
                slot.next_start = now + self.cfg.backoff_initial;
            }
        }
    }

    async fn probe(&mut self, i: usize, id: &str, pod_ip: Option<IpAddr>, grace: Duration) {
        let now = Instant::now();
        let Some(r) = self.slots[i].running.as_mut() else {
            return;
        };
        let mut kill = None;
        let mut ready = None;
        let mut started = None;
        let startup_done = r.startup.as_ref().is_none_or(|t| t.verdict == Some(true));
        let rt = self.rt.clone();
        if let Some(t) = r
            .startup
            .as_mut()
            .filter(|t| t.verdict != Some(true) && t.due(now))
        {
            let res = run(&rt, id, &t.spec, pod_ip).await;
            match t.record(&res, Instant::now()) {
                Some(true) => started = Some(true),
                Some(false) => {
                    kill = Some(format!(
                        "Startup probe failed: {}",
                        t.last_message.clone().unwrap_or_default()
                    ))
                }
                None => {}
            }
        }
        if startup_done {
            if let Some(t) = r.liveness.as_mut().filter(|t| t.due(now)) {
                let res = run(&rt, id, &t.spec, pod_ip).await;
                if t.record(&res, Instant::now()) == Some(false) {
                    kill = Some(format!(
                        "Liveness probe failed: {}",
                        t.last_message.clone().unwrap_or_default()
                    ));
                }
            }
            if let Some(t) = r.readiness.as_mut().filter(|t| t.due(now)) {
                let res = run(&rt, id, &t.spec, pod_ip).await;
                if let Some(v) = t.record(&res, Instant::now()) {
                    ready = Some(v);
                }
            }
        }
        let pod_name = self.name();
        let slot = &mut self.slots[i];
        if let Some(s) = started {
            slot.started = s;
        }
        if let Some(v) = ready {
            slot.ready = v;
        }
        if let Some(why) = kill {
            tracing::info!(pod = %pod_name, container = %slot.spec.name, reason = %why, "restarting the container");
            slot.ready = false;
            if let Err(e) = self.rt.stop_container(id, grace).await {
                tracing::warn!(container = %id, error = %e, "stopping a container that failed its probe");
            }
        }
    }

    fn status(&self) -> PodStatus {
        pod_status(self)
    }
}

async fn run(rt: &Runtime, id: &str, spec: &ProbeSpec, pod_ip: Option<IpAddr>) -> ProbeResult {
    match &spec.action {
        Action::Exec(cmd) => match rt.exec_sync(id, cmd, spec.timeout).await {
            Ok(out) if out.exit_code == Some(0) => ProbeResult::Success,
            Ok(out) => ProbeResult::Failure(match out.exit_code {
                None => format!("command {cmd:?} timed out"),
                Some(code) => format!(
                    "command {cmd:?} exited with {code}: {}",
                    String::from_utf8_lossy(&out.stdout).trim()
                ),
            }),
            Err(e) => ProbeResult::Failure(e.to_string()),
        },
        Action::Http { https: true, .. } => {
            ProbeResult::Failure("https probes are not supported yet".into())
        }
        Action::Http {
            host,
            port,
            path,
            headers,
            ..
        } => probe::run_http(host, *port, path, headers, pod_ip, spec.timeout).await,
        Action::Tcp { host, port } => probe::run_tcp(host, *port, pod_ip, spec.timeout).await,
    }
}

fn terminated(r: &Running, exit: Option<&crate::runtime::ExitInfo>) -> ContainerStateTerminated {
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

fn condition(kind: &str, ok: bool) -> PodCondition {
    PodCondition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        ..Default::default()
    }
}

/// The pod's status from the worker's view (conditions without transition times, so an
/// unchanged pod gives an equal status and nothing is written).
fn pod_status(w: &Worker) -> PodStatus {
    let containers: Vec<ApiContainerStatus> = w
        .slots
        .iter()
        .map(|s| {
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
            ApiContainerStatus {
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
        })
        .collect();
    let any_running = w.slots.iter().any(|s| s.running.is_some());
    let all_done = !w.slots.is_empty() && w.slots.iter().all(|s| s.done && s.running.is_none());
    let phase = if all_done {
        let ok = w
            .slots
            .iter()
            .all(|s| s.last.as_ref().is_some_and(|t| t.exit_code == 0));
        if ok {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if any_running || w.slots.iter().any(|s| s.last.is_some()) {
        "Running"
    } else {
        "Pending"
    };
    let all_ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
    let ips: Vec<String> = w
        .sandbox
        .iter()
        .flat_map(|s| s.ips.iter().map(|i| i.to_string()))
        .collect();
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(vec![
            condition("PodScheduled", true),
            condition("Initialized", true),
            condition("ContainersReady", all_ready),
            condition("Ready", all_ready),
        ]),
        message: w.sandbox_error.clone(),
        container_statuses: Some(containers),
        pod_ip: ips.first().cloned(),
        pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect())
            .filter(|v: &Vec<PodIP>| !v.is_empty()),
        host_ip: w.node.host_ip.map(|i| i.to_string()),
        start_time: Some(Time(w.start_time)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_second_restart_and_caps() {
        let c = WorkerConfig {
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            tick: Duration::from_millis(1),
        };
        let delays: Vec<u64> = (1..=8).map(|n| c.backoff(n).as_secs()).collect();
        assert_eq!(delays, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(c.backoff(1000).as_secs(), 300);
    }

    #[test]
    fn restart_policy_decides_on_the_exit_code() {
        assert!(should_restart("Always", 0));
        assert!(should_restart("Always", 1));
        assert!(!should_restart("OnFailure", 0));
        assert!(should_restart("OnFailure", 2));
        assert!(!should_restart("Never", 1));
    }
}
