//! One task per pod: make the runtime match the PodSpec and report a `v1.PodStatus`.
//! It sets up the pod's volumes (FailedMount events while one cannot be), starts the
//! sandbox, runs the init containers in order (each to success before the next; sidecars,
//! i.e. `restartPolicy: Always` init containers, only until started), then the app
//! containers; restarts exited containers per `restartPolicy` with CrashLoopBackOff, runs
//! startup/liveness/readiness probes, refreshes configMap/secret/downwardAPI volumes, and
//! on stop terminates gracefully and removes everything. The sync loop owns one per pod.
//! After a kubelet restart a worker first takes over what runs for its pod (`adopt.rs`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ContainerStateTerminated, Pod, PodStatus};
use tokio::sync::watch;
use tokio::time::Instant;

use super::events::Recorder;
use super::hooks;
use super::probe::{self, Action, ProbeResult, ProbeSpec, ProbeTracker};
use super::spec::{self as podspec, NodeContext};
use super::status::{pod_status, terminated};
use crate::runtime::{ContainerState, ExitInfo, Runtime, Sandbox};
use crate::security;
use crate::volume::objects::Registration;
use crate::volume::{PodVolumes, Source};

/// How long a container start waits for the kubelet's first list of the Services (its
/// environment needs them) before it is retried.
const SERVICES_SYNC: Duration = Duration::from_secs(10);
/// How long a static pod's waits before it starts without them (it may run before, or
/// without, an apiserver).
const STATIC_SERVICES_SYNC: Duration = Duration::from_secs(3);

mod adopt;
mod lifecycle;
mod resize;

/// Upstream's status message for a pod past its `activeDeadlineSeconds`.
pub(super) const DEADLINE_MESSAGE: &str =
    "Pod was active on the node longer than the specified deadline";

/// Restart timing. Upstream: 10 s doubling to 5 min.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How often the worker looks at its containers.
    pub tick: Duration,
    /// How often configMap/secret/downwardAPI/projected volumes are re-read and rewritten
    /// besides when one of the pod's objects changes (upstream relies on its sync period,
    /// 1 min; tokens are renewed here).
    pub volume_resync: Duration,
    /// The node's admitted pods: an in-place resize must fit beside the others' requests
    /// (`resize.rs`; None: only against the node's capacity).
    pub active: Option<super::ActivePods>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            tick: Duration::from_millis(500),
            volume_resync: Duration::from_secs(10),
            active: None,
        }
    }
}

impl WorkerConfig {
    /// Resizes are checked against the other pods `active` admitted.
    pub fn with_active(mut self, active: super::ActivePods) -> WorkerConfig {
        self.active = Some(active);
        self
    }

    /// Upstream's `--sync-frequency` is the longest a pod goes between syncs: the volumes
    /// are re-read at least that often (containers are looked at every `tick`).
    pub fn within_sync_frequency(mut self, sync: Option<Duration>) -> WorkerConfig {
        if let Some(sync) = sync {
            self.volume_resync = self.volume_resync.min(sync);
        }
        self
    }

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

pub(super) struct Running {
    pub(super) id: String,
    pub(super) started_at: jiff::Timestamp,
    startup: Option<ProbeTracker>,
    liveness: Option<ProbeTracker>,
    readiness: Option<ProbeTracker>,
}

impl Running {
    /// Container `id` of `spec`, started at `started_at` (`started`: the same on the
    /// monotonic clock, from which probes' initial delays count).
    fn new(id: String, spec: &Container, started_at: jiff::Timestamp, started: Instant) -> Running {
        let tracker = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .and_then(|p| ProbeSpec::from_api(spec, p).ok())
                .map(|s| ProbeTracker::new(s, started))
        };
        Running {
            id,
            started_at,
            startup: tracker(&spec.startup_probe),
            liveness: tracker(&spec.liveness_probe),
            readiness: tracker(&spec.readiness_probe),
        }
    }
}

/// Which list of the PodSpec a container comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A regular init container: runs once to success, in order.
    Init,
    /// An init container with `restartPolicy: Always`: started in order, then kept running
    /// beside the app containers.
    Sidecar,
    App,
    /// An ephemeral container (`kubectl debug`): added to a running pod, run once, never
    /// restarted, probed or counted for readiness.
    Ephemeral,
}

pub(super) struct Slot {
    pub(super) kind: Kind,
    pub(super) spec: Container,
    pub(super) restarts: u32,
    pub(super) running: Option<Running>,
    pub(super) last: Option<ContainerStateTerminated>,
    pub(super) waiting: Option<(String, String)>,
    next_start: Instant,
    pub(super) done: bool,
    pub(super) ready: bool,
    pub(super) started: bool,
    pub(super) image_id: String,
    pull_failures: u32,
    /// An ephemeral container's `targetContainerName`: it joins that container's process
    /// namespace.
    pub(super) target: Option<String>,
}

impl Slot {
    /// The container's place in the pod spec, as events name it.
    pub(super) fn field_path(&self) -> String {
        let list = match self.kind {
            Kind::App => "containers",
            Kind::Init | Kind::Sidecar => "initContainers",
            Kind::Ephemeral => "ephemeralContainers",
        };
        format!("spec.{list}{{{}}}", self.spec.name)
    }

    fn new(kind: Kind, spec: Container, waiting: &str) -> Slot {
        Slot {
            kind,
            spec,
            restarts: 0,
            running: None,
            last: None,
            waiting: Some((waiting.into(), String::new())),
            next_start: Instant::now(),
            done: false,
            ready: false,
            started: false,
            image_id: String::new(),
            pull_failures: 0,
            target: None,
        }
    }

    /// The slots of `pod`'s ephemeral containers that `slots` does not have yet.
    fn ephemeral(pod: &Pod, slots: &[Slot]) -> Vec<Slot> {
        let spec = pod.spec.as_ref();
        spec.and_then(|s| s.ephemeral_containers.as_ref())
            .into_iter()
            .flatten()
            .filter(|e| !slots.iter().any(|s| s.spec.name == e.name))
            .filter_map(|e| {
                // The same fields as a Container (the API forbids the ones it must not use).
                let c: Container = serde_json::to_value(e)
                    .and_then(serde_json::from_value)
                    .ok()?;
                let mut slot = Slot::new(Kind::Ephemeral, c, "ContainerCreating");
                slot.target = e.target_container_name.clone();
                Some(slot)
            })
            .collect()
    }
}

/// A running pod worker: its status feed and its stop switch.
pub struct PodHandle {
    pub status: watch::Receiver<PodStatus>,
    stop: watch::Sender<bool>,
    evict: watch::Sender<Option<String>>,
    updates: watch::Sender<Option<Pod>>,
    task: tokio::task::JoinHandle<PodStatus>,
}

impl PodHandle {
    /// Evict the pod (node pressure): its containers are stopped and it fails with reason
    /// `Evicted` and `message`, staying in the API as upstream's evicted pods do.
    pub fn evict(&self, message: String) {
        self.evict.send_if_modified(|m| {
            let first = m.is_none();
            if first {
                *m = Some(message);
            }
            first
        });
    }

    /// A newer version of the pod from the API: its labels and annotations reach the
    /// downward-API volumes (the spec is immutable where it matters here).
    pub fn update(&self, pod: &Pod) {
        self.updates.send_replace(Some(pod.clone()));
    }

    /// Terminate the pod gracefully, remove everything, and return its last status.
    pub async fn terminate(self) -> PodStatus {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// Start a worker for `pod` on this node, without an apiserver: configMap and secret
/// volumes cannot be set up.
pub fn spawn(rt: Runtime, pod: Pod, node: NodeContext, cfg: WorkerConfig) -> PodHandle {
    spawn_with(rt, pod, node, cfg, Source::default())
}

/// Start a worker for `pod`, reading ConfigMaps/Secrets from (and posting events to) the
/// apiserver behind `source`.
pub fn spawn_with(
    rt: Runtime,
    pod: Pod,
    node: NodeContext,
    cfg: WorkerConfig,
    source: Source,
) -> PodHandle {
    let spec = pod.spec.clone().unwrap_or_default();
    let has_init = spec.init_containers.as_ref().is_some_and(|i| !i.is_empty());
    // With init containers, everything waits as PodInitializing first (upstream's default).
    let waiting = if has_init {
        "PodInitializing"
    } else {
        "ContainerCreating"
    };
    let inits = spec.init_containers.iter().flatten().map(|c| {
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        (if sidecar { Kind::Sidecar } else { Kind::Init }, c)
    });
    let apps = spec.containers.iter().map(|c| (Kind::App, c));
    let mut slots: Vec<Slot> = inits
        .chain(apps)
        .map(|(kind, c)| Slot::new(kind, c.clone(), waiting))
        .collect();
    slots.extend(Slot::ephemeral(&pod, &slots));
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let (updates, updates_rx) = watch::channel(None);
    let (stop, stop_rx) = watch::channel(false);
    let (evict, evict_rx) = watch::channel(None);
    let reported_conditions = pod
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .filter_map(|c| {
            let at = c.last_transition_time.as_ref()?.0;
            Some((c.type_.clone(), (c.status.clone(), at)))
        })
        .collect();
    // a pod an earlier kubelet started is not started again
    let already_started = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p != "Pending");
    let mut worker = Worker {
        stop: stop_rx.clone(),
        volumes: PodVolumes::new(&pod, &rt.config().pod_dir(&uid), source.clone()),
        objects: source.register(&pod),
        source: source.clone(),
        events: Recorder::new(source.client().cloned(), &pod, &node.node_name),
        volumes_retry: Instant::now(),
        volumes_refreshed: Instant::now(),
        dra_prepared: false,
        dra_released: false,
        dra_retry: Instant::now(),
        initialized: !has_init,
        updates: updates_rx,
        rt,
        pod,
        node,
        cfg,
        sandbox: None,
        sandbox_error: None,
        failure: None,
        evicted: evict_rx,
        sandbox_exit: None,
        first_seen: Instant::now(),
        start_reported: already_started,
        // a pod an earlier kubelet reported on keeps its conditions' transition times
        transitions: reported_conditions,
        sandbox_retry: Instant::now(),
        slots,
        start_time: jiff::Timestamp::now(),
        resize: Default::default(),
    };
    // the API's resources are the target; the checkpoint says what runs
    let api_pod = worker.pod.clone();
    worker.resize.want(&api_pod);
    worker.load_allocation();
    // Readers see every container as waiting from the start, never an empty status; a pod
    // an earlier kubelet reported on keeps that status until this worker has looked at what
    // runs (see `adopt`), so a restart does not flap its IP or readiness in the API.
    let reported = worker
        .pod
        .status
        .clone()
        .filter(|s| s.container_statuses.as_ref().is_some_and(|c| !c.is_empty()));
    let (status_tx, status) = watch::channel(reported.unwrap_or_else(|| worker.status()));
    let task = tokio::spawn(worker.run(status_tx, stop_rx));
    PodHandle {
        status,
        stop,
        evict,
        updates,
        task,
    }
}

pub(super) struct Worker {
    rt: Runtime,
    pub(super) pod: Pod,
    pub(super) node: NodeContext,
    cfg: WorkerConfig,
    pub(super) sandbox: Option<Sandbox>,
    pub(super) sandbox_error: Option<String>,
    /// Why the kubelet failed the pod for good (`DeadlineExceeded` past
    /// `activeDeadlineSeconds`, `Evicted` under node pressure): every container was
    /// stopped. The reason and message of its status.
    pub(super) failure: Option<(&'static str, String)>,
    /// Set by [`PodHandle::evict`].
    evicted: watch::Receiver<Option<String>>,
    /// Set when the sandbox's pause process exits.
    pub(super) sandbox_exit: Option<watch::Receiver<Option<ExitInfo>>>,
    /// When this worker started (the kubelet first saw the pod), and whether its start
    /// duration was recorded (`kubelet_pod_start_duration_seconds`).
    first_seen: Instant,
    start_reported: bool,
    /// Each condition's status and when it last changed (its `lastTransitionTime`).
    transitions: std::collections::HashMap<String, (String, jiff::Timestamp)>,
    sandbox_retry: Instant,
    pub(super) slots: Vec<Slot>,
    pub(super) start_time: jiff::Timestamp,
    volumes: PodVolumes,
    /// The pod's hold on the watches of its ConfigMaps and Secrets: released when the
    /// worker ends (the pod was stopped, or the kubelet stops managing it).
    objects: Registration,
    source: Source,
    volumes_retry: Instant,
    volumes_refreshed: Instant,
    /// The pod's ResourceClaims are prepared (see [`crate::dra`]); until then no sandbox.
    dra_prepared: bool,
    /// The pod finished and its claims were unprepared.
    dra_released: bool,
    dra_retry: Instant,
    events: Recorder,
    /// Every init container succeeded (sidecars: started); app containers may run.
    pub(super) initialized: bool,
    updates: watch::Receiver<Option<Pod>>,
    /// The stop switch, for what must give up when the pod is being stopped (a postStart
    /// hook that does not end).
    stop: watch::Receiver<bool>,
    /// In-place resizes the API asks for (`resize.rs`).
    pub(super) resize: resize::Resize,
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
        self.adopt().await;
        loop {
            if *stop.borrow() {
                break;
            }
            self.step().await;
            let next = self.status();
            // Terminal (every container stopped for good): the claims go back to their
            // drivers now, as upstream's SyncTerminatedPod releases them, not at deletion.
            if self.dra_prepared
                && !self.dra_released
                && matches!(next.phase.as_deref(), Some("Succeeded" | "Failed"))
            {
                self.dra_released = true;
                self.unprepare_dra().await;
            }
            if !self.start_reported && next.phase.as_deref() == Some("Running") {
                self.start_reported = true;
                self.rt
                    .metrics()
                    .pod_start_took(self.first_seen.elapsed().as_secs_f64());
            }
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
        self.unprepare_dra().await;
        let last = self.status();
        status.send_replace(last.clone());
        last
    }

    fn policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    /// Volumes first (as upstream: no sandbox before they are all set up), then refreshed
    /// every `volume_resync`. Returns whether the pod may go on.
    async fn step_volumes(&mut self) -> bool {
        let now = Instant::now();
        if self.updates.has_changed().unwrap_or(false) {
            if let Some(p) = self.updates.borrow_and_update().clone() {
                let changed = p.metadata.labels != self.pod.metadata.labels
                    || p.metadata.annotations != self.pod.metadata.annotations;
                // Conditions others set (readiness gates') count for Ready.
                self.pod.status = p.status.clone();
                // The spec fields an update may change that the worker acts on: the
                // deadline here, containers' resources through `step_resize`.
                if let (Some(mine), Some(theirs)) = (self.pod.spec.as_mut(), p.spec.as_ref()) {
                    mine.active_deadline_seconds = theirs.active_deadline_seconds;
                }
                self.resize.want(&p);
                // `kubectl debug` adds ephemeral containers to the running pod.
                let added = Slot::ephemeral(&p, &self.slots);
                if !added.is_empty() {
                    if let (Some(mine), Some(theirs)) = (self.pod.spec.as_mut(), p.spec.as_ref()) {
                        mine.ephemeral_containers = theirs.ephemeral_containers.clone();
                    }
                    self.slots.extend(added);
                    // their env may name objects the pod did not use yet
                    self.objects.update(&self.pod);
                }
                if changed {
                    self.pod.metadata.labels = p.metadata.labels.clone();
                    self.pod.metadata.annotations = p.metadata.annotations.clone();
                    self.volumes.update_pod(&p);
                    // Due now: rewrite the downward-API files on the next check.
                    self.volumes_refreshed = now
                        .checked_sub(self.cfg.volume_resync)
                        .unwrap_or(self.volumes_refreshed);
                }
            }
        }
        if !self.volumes.is_ready() {
            if now < self.volumes_retry {
                return false;
            }
            return match self.volumes.setup().await {
                Ok(()) => {
                    self.volumes_refreshed = now;
                    for s in &mut self.slots {
                        if let Some(w) = s.waiting.as_mut() {
                            w.1.clear();
                        }
                    }
                    true
                }
                Err(e) => {
                    let msg = e.to_string();
                    self.events.warn("FailedMount", &msg);
                    // The containers keep waiting (ContainerCreating/PodInitializing), and say why.
                    for s in &mut self.slots {
                        if let Some(w) = s.waiting.as_mut() {
                            w.1 = msg.clone();
                        }
                    }
                    self.volumes_retry = now + self.cfg.backoff_initial.min(Duration::from_secs(2));
                    false
                }
            };
        }
        // A ConfigMap or Secret the pod uses changed: its volumes now, not at the resync.
        let changed = self.objects.changed();
        if changed || now >= self.volumes_refreshed + self.cfg.volume_resync {
            self.volumes_refreshed = now;
            for e in self.volumes.refresh().await {
                self.events.warn("FailedMount", &e.to_string());
            }
        }
        true
    }

    /// The pod's ResourceClaims prepared by their DRA drivers before its sandbox is made
    /// (upstream's `PrepareDynamicResources` in SyncPod): until they are, the containers
    /// wait (ContainerCreating, saying why) and a `FailedPrepareDynamicResources` event is
    /// recorded at each retry. Returns whether the pod may go on.
    async fn step_dra(&mut self) -> bool {
        if self.dra_prepared {
            return true;
        }
        let has_claims = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.resource_claims.as_ref())
            .is_some_and(|c| !c.is_empty());
        if !has_claims {
            self.dra_prepared = true;
            return true;
        }
        let now = Instant::now();
        if now < self.dra_retry {
            return false;
        }
        let prepared = match self.source.dra() {
            Some(dra) => dra.prepare(&self.pod).await.map_err(|e| e.to_string()),
            None => Err("this kubelet has no DRA manager (no apiserver)".to_string()),
        };
        match prepared {
            Ok(()) => {
                self.dra_prepared = true;
                for s in &mut self.slots {
                    if let Some(w) = s.waiting.as_mut() {
                        w.1.clear();
                    }
                }
                true
            }
            Err(e) => {
                let msg = format!("Failed to prepare dynamic resources: {e}");
                tracing::info!(pod = %self.name(), error = %e, "preparing dynamic resources");
                self.events.warn("FailedPrepareDynamicResources", &msg);
                for s in &mut self.slots {
                    if let Some(w) = s.waiting.as_mut() {
                        w.1 = msg.clone();
                    }
                }
                self.dra_retry = now + self.cfg.backoff_initial.min(Duration::from_secs(2));
                false
            }
        }
    }

    /// The pod is gone from the node: its ResourceClaims no other pod uses are unprepared
    /// (what fails is retried by the DRA manager).
    async fn unprepare_dra(&self) {
        let (Some(dra), Some(uid)) = (self.source.dra(), self.pod.metadata.uid.as_deref()) else {
            return;
        };
        if let Err(e) = dra.unprepare(uid).await {
            tracing::warn!(pod = %self.name(), error = %e, "unpreparing dynamic resources");
        }
    }

    async fn step(&mut self) {
        if self.failure.is_some() || self.past_deadline().await || self.evict().await {
            return;
        }
        if !self.step_volumes().await {
            return;
        }
        if !self.step_dra().await {
            return;
        }
        self.step_resize().await;
        if self.sandbox.is_none() {
            if Instant::now() < self.sandbox_retry {
                return;
            }
            let class = self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.runtime_class_name.clone());
            let handler =
                super::runtimeclass::sandbox_handler(self.source.client(), class.as_deref()).await;
            let made = match (handler, podspec::sandbox_config(&self.pod, &self.node)) {
                (Err(e), _) => {
                    // as upstream's kubelet: the sandbox is never asked for
                    self.events.warn(
                        "FailedCreatePodSandBox",
                        &format!("Failed to create pod sandbox: {e}"),
                    );
                    Err(e)
                }
                (Ok(_), Err(e)) => Err(e.to_string()),
                (Ok(_), Ok(cfg)) => self.rt.run_sandbox(&cfg).await.map_err(|e| e.to_string()),
            };
            match made {
                Ok(s) => {
                    self.sandbox_exit = Some(self.rt.watch_sandbox(&s));
                    self.sandbox = Some(s);
                    self.sandbox_error = None;
                }
                Err(e) => {
                    tracing::warn!(pod = %self.name(), error = %e, "creating the pod sandbox");
                    self.sandbox_error = Some(e);
                    self.sandbox_retry = Instant::now() + self.cfg.backoff_initial;
                    // The failed sandbox's cleanup removed the pod dir, volumes included.
                    self.volumes.reset();
                    return;
                }
            }
        }
        if self
            .sandbox_exit
            .as_ref()
            .is_some_and(|rx| rx.borrow().is_some())
        {
            self.replace_dead_sandbox().await;
            return;
        }
        let policy = self.policy();
        let grace = podspec::grace_period(&self.pod);
        let just_initialized = !self.initialized;
        if !self.initialized {
            // Init containers, in order: each must succeed (a sidecar: be started) first.
            // A failing one is retried as OnFailure unless the pod's policy is Never.
            let init_policy = if policy == "Never" {
                "Never"
            } else {
                "OnFailure"
            };
            for i in 0..self.slots.len() {
                match self.slots[i].kind {
                    Kind::App | Kind::Ephemeral => continue,
                    Kind::Init => {
                        if self.slots[i].succeeded() {
                            continue;
                        }
                        self.step_container(i, init_policy, grace).await;
                        if !self.slots[i].succeeded() {
                            return;
                        }
                    }
                    Kind::Sidecar => {
                        self.step_container(i, "Always", grace).await;
                        let s = &self.slots[i];
                        if !(s.running.is_some() && s.started) {
                            return;
                        }
                    }
                }
            }
            self.initialized = true;
            for s in self.slots.iter_mut().filter(|s| s.kind == Kind::App) {
                if s.waiting.as_ref().is_some_and(|w| w.0 == "PodInitializing") {
                    s.waiting = Some(("ContainerCreating".into(), String::new()));
                }
            }
        }
        let apps_done = self
            .slots
            .iter()
            .filter(|s| s.kind == Kind::App)
            .all(|s| s.done && s.running.is_none());
        for i in 0..self.slots.len() {
            match self.slots[i].kind {
                Kind::Init => {}
                // Once every app container has finished, sidecars are stopped, as upstream.
                Kind::Sidecar if apps_done => self.stop_slot(i, grace).await,
                Kind::Sidecar if !just_initialized => self.step_container(i, "Always", grace).await,
                Kind::Sidecar => {}
                Kind::App => self.step_container(i, &policy, grace).await,
                Kind::Ephemeral => self.step_container(i, "Never", grace).await,
            }
        }
    }

    fn namespace(&self) -> String {
        self.pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    }

    /// The ConfigMaps/Secrets `c`'s env refers to, read now (absent ones as None).
    async fn env_objects(&self, c: &Container) -> Result<podspec::EnvObjects, String> {
        let ns = self.namespace();
        let mut out = podspec::EnvObjects::new();
        for (kind, name) in podspec::env_object_refs(c) {
            let keys = if kind == "secret" {
                self.source.secret(&ns, &name).await?
            } else {
                self.source.config_map(&ns, &name).await?
            };
            let keys = keys.map(|k| {
                k.into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect()
            });
            out.insert((kind, name), keys);
        }
        Ok(out)
    }

    /// The Service variables of the pod's containers (see [`crate::pod::service_env`]), from
    /// the kubelet's Service reflector; none without an apiserver.
    /// Waits up to `wait` for the reflector's first list.
    async fn service_env(&self, wait: Duration) -> Result<BTreeMap<String, String>, String> {
        let Some(store) = self.source.services() else {
            return Ok(BTreeMap::new());
        };
        if tokio::time::timeout(wait, store.wait_until_ready())
            .await
            .is_err()
        {
            return Err(format!("the Services were not listed within {wait:?}"));
        }
        let links = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        let services = store.state();
        Ok(crate::pod::service_env::service_env(
            services.iter().map(|s| &**s),
            &self.namespace(),
            links,
        ))
    }

    /// [`Self::service_env`], except that a static pod (one that runs before or without an
    /// apiserver) starts without the variables when the apiserver cannot be read, as
    /// upstream's kubelet; an API pod waits (its container start is retried).
    async fn service_env_or_none(&self) -> Result<BTreeMap<String, String>, String> {
        use crate::static_pod::source::SOURCE_ANNOTATION;
        let static_pod = self
            .pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_ANNOTATION))
            .is_some_and(|s| s != "api");
        if !static_pod {
            return self.service_env(SERVICES_SYNC).await;
        }
        match self.service_env(STATIC_SERVICES_SYNC).await {
            Err(e) => {
                tracing::warn!(pod = %hooks::pod_desc(&self.pod), error = %e, "starting a static pod without the Service environment variables");
                Ok(BTreeMap::new())
            }
            ok => ok,
        }
    }

    /// The host pid of the process of this pod's running container `name`.
    async fn running_pid(&self, name: &str) -> Option<u32> {
        let slot = self.slots.iter().find(|s| s.spec.name == name)?;
        match self.rt.container_state(&slot.running.as_ref()?.id).await {
            Ok(ContainerState::Running { pid }) => Some(pid),
            _ => None,
        }
    }

    /// Slot `i`'s container `r` as it ended: with its termination message, which is what it
    /// wrote to its `terminationMessagePath` (at most 4 KiB) or, for `FallbackToLogsOnError`
    /// and a failure without one, the end of its log (80 lines, 2 KiB), as upstream's. Call
    /// it once the container is removed (its log drained).
    pub(super) fn exit_state(
        &self,
        i: usize,
        r: &Running,
        exit: Option<&ExitInfo>,
    ) -> ContainerStateTerminated {
        const MAX_MESSAGE: usize = 4096;
        const MAX_LOG_LINES: usize = 80;
        const MAX_LOG_BYTES: usize = 2048;
        let mut state = terminated(r, exit);
        let Ok((ns, name, uid)) = podspec::pod_identity(&self.pod) else {
            return state;
        };
        let slot = &self.slots[i];
        let file = self.rt.termination_log(&uid, &r.id);
        let written = std::fs::read(&file);
        // read once: the state is kept from now on (and reported; a restarted kubelet
        // has it from the API)
        let _ = std::fs::remove_file(&file);
        let mut message = written
            .map(|mut b| {
                b.truncate(MAX_MESSAGE);
                String::from_utf8_lossy(&b).into_owned()
            })
            .unwrap_or_default();
        let fallback =
            slot.spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        if message.is_empty() && fallback && state.exit_code != 0 {
            let log = crate::logs::container_log_path(
                &self.rt.config().log_dir,
                &ns,
                &name,
                &uid,
                &slot.spec.name,
                slot.restarts,
            );
            let text = std::fs::read(log).unwrap_or_default();
            let lines: Vec<&[u8]> = text
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .collect();
            let mut tail = Vec::new();
            for line in &lines[lines.len().saturating_sub(MAX_LOG_LINES)..] {
                // CRI format: `<time> <stream> <P|F> <content>`; a partial line continues
                let mut fields = line.splitn(4, |b| *b == b' ');
                let (_, _, tag, content) =
                    (fields.next(), fields.next(), fields.next(), fields.next());
                tail.extend_from_slice(content.unwrap_or_default());
                if tag != Some(b"P".as_slice()) {
                    tail.push(b'\n');
                }
            }
            let start = tail.len().saturating_sub(MAX_LOG_BYTES);
            message = String::from_utf8_lossy(&tail[start..]).into_owned();
        }
        state.message = Some(message).filter(|m| !m.is_empty());
        state
    }

    /// The pause process died (the pod's namespaces with it), as upstream's kubelet sees a
    /// sandbox that is not ready: a `SandboxChanged` event, every container stopped and gone
    /// through `restartPolicy` (their restart counts go up), the sandbox and its network
    /// removed, the pod's volumes kept; the next step makes a new sandbox, which runs the
    /// init containers again before the app containers.
    async fn replace_dead_sandbox(&mut self) {
        let Some(sandbox) = self.sandbox.clone() else {
            return;
        };
        tracing::warn!(pod = %self.name(), sandbox = %sandbox.id, "the pod's sandbox died; making a new one");
        self.events.normal(
            "SandboxChanged",
            "Pod sandbox changed, it will be killed and re-created.",
        );
        let policy = self.policy();
        let grace = podspec::grace_period(&self.pod);
        for i in 0..self.slots.len() {
            let Some(id) = self.slots[i].running.as_ref().map(|r| r.id.clone()) else {
                continue;
            };
            let exit = self.kill_slot(i, &id, grace).await;
            let Some(r) = self.slots[i].running.take() else {
                continue;
            };
            let policy = match self.slots[i].kind {
                Kind::Sidecar => "Always",
                Kind::Ephemeral => "Never",
                Kind::Init | Kind::App => policy.as_str(),
            };
            self.finished(i, r, exit.as_ref(), policy).await;
        }
        if let Err(e) = self.rt.remove_dead_sandbox(&sandbox.uid).await {
            tracing::warn!(pod = %self.name(), error = %e, "removing a dead sandbox");
        }
        self.sandbox = None;
        self.sandbox_exit = None;
        // Init containers run again in the new sandbox (unless the pod never restarts).
        if policy != "Never" && self.slots.iter().any(|s| s.kind == Kind::Init) {
            self.initialized = false;
            for s in self.slots.iter_mut().filter(|s| s.kind == Kind::Init) {
                s.done = false;
            }
        }
    }

    /// Whether the pod has run longer than its `activeDeadlineSeconds` (counted from its
    /// start time, as upstream); if so, it fails now: every container is stopped for good
    /// and a `DeadlineExceeded` event says why.
    async fn past_deadline(&mut self) -> bool {
        let Some(limit) = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.active_deadline_seconds)
        else {
            return false;
        };
        let active = jiff::Timestamp::now().duration_since(self.start_time);
        if active.as_secs() < limit {
            return false;
        }
        self.fail("DeadlineExceeded", DEADLINE_MESSAGE.into()).await;
        true
    }

    /// Whether the kubelet evicted the pod (node pressure); if so, it fails now.
    async fn evict(&mut self) -> bool {
        let Some(message) = self.evicted.borrow().clone() else {
            return false;
        };
        self.fail("Evicted", message).await;
        true
    }

    /// Fail the pod for good: a Warning event, every container stopped.
    async fn fail(&mut self, reason: &'static str, message: String) {
        self.events.warn(reason, &message);
        self.failure = Some((reason, message));
        let grace = podspec::grace_period(&self.pod);
        for i in 0..self.slots.len() {
            self.stop_slot(i, grace).await;
        }
    }

    /// Stop a container for good (a sidecar after the app containers ended).
    async fn stop_slot(&mut self, i: usize, grace: Duration) {
        if let Some(id) = self.slots[i].running.as_ref().map(|r| r.id.clone()) {
            let exit = self.kill_slot(i, &id, grace).await;
            let Some(r) = self.slots[i].running.take() else {
                return;
            };
            if let Err(e) = self.rt.remove_container(&r.id).await {
                tracing::warn!(container = %r.id, error = %e, "removing a stopped sidecar");
            }
            self.slots[i].last = Some(self.exit_state(i, &r, exit.as_ref()));
        }
        let s = &mut self.slots[i];
        s.done = true;
        s.ready = false;
        s.started = false;
        s.waiting = None;
    }

    /// Slot `i`'s container `r` has ended (`exit`, when known): remove it and apply the
    /// restart policy (with CrashLoopBackOff's back-off).
    async fn finished(&mut self, i: usize, r: Running, exit: Option<&ExitInfo>, policy: &str) {
        let now = Instant::now();
        // Removing it drains its log first: the message may come from the log's end.
        if let Err(e) = self.rt.remove_container(&r.id).await {
            tracing::warn!(container = %r.id, error = %e, "removing an exited container");
        }
        let last = self.exit_state(i, &r, exit);
        let slot = &mut self.slots[i];
        slot.last = Some(last);
        slot.ready = false;
        slot.started = false;
        let code = slot.last.as_ref().map_or(137, |t| t.exit_code);
        if should_restart(policy, code) {
            let delay = self.cfg.backoff(slot.restarts + 1);
            slot.next_start = now + delay;
            if !delay.is_zero() {
                let m = &self.pod.metadata;
                let msg = format!(
                    "back-off {}s restarting failed container={} pod={}",
                    delay.as_secs(),
                    slot.spec.name,
                    m.name.as_deref().unwrap_or("")
                );
                slot.waiting = Some(("CrashLoopBackOff".into(), msg));
                // upstream's event, pod as `<name>_<namespace>(<uid>)`
                let event = format!(
                    "Back-off restarting failed container {} in pod {}_{}({})",
                    slot.spec.name,
                    m.name.as_deref().unwrap_or(""),
                    m.namespace.as_deref().unwrap_or("default"),
                    m.uid.as_deref().unwrap_or("")
                );
                let field = slot.field_path();
                self.events.container_warning(field, "BackOff", &event);
            }
        } else {
            slot.done = true;
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
                    let r = self.slots[i].running.take().expect("checked above");
                    self.finished(i, r, Some(&exit), policy).await;
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
        let spec = slot.spec.clone();
        // Upstream's EnsureImageExists: a name that does not parse is InvalidImageName.
        let image = spec.image.clone().unwrap_or_default();
        if crate::images::normalize_reference(&image).is_err() {
            let msg = format!(
                "Failed to apply default image tag {image:?}: couldn't parse image name \
                 {image:?}: invalid reference format"
            );
            self.events.warn("InspectFailed", &msg);
            let slot = &mut self.slots[i];
            slot.waiting = Some(("InvalidImageName".into(), msg));
            slot.next_start = now + self.cfg.backoff_initial;
            return;
        }
        let objects = match self.env_objects(&spec).await {
            Ok(objects) => self
                .service_env_or_none()
                .await
                .map(|services| (objects, services)),
            Err(e) => Err(e),
        };
        // An ephemeral container's target: it joins the process namespace of that
        // container's running process (else it gets its own, as upstream without one).
        let target_pid = match self.slots[i].target.clone() {
            Some(t) => self.running_pid(&t).await,
            None => None,
        };
        // the device plugins' answers (and their PreStartContainer, when they ask for it)
        let devices = match self.source.devices() {
            Some(d) => d
                .container_devices(&self.pod, &spec)
                .await
                .map_err(|e| format!("applying the container's device plugin devices: {e}")),
            None => Ok(None),
        };
        let made = match objects {
            Err(e) => Err(e),
            Ok((objects, services)) => podspec::container_config(
                &self.pod,
                &spec,
                attempt,
                sandbox.ips(),
                &self.node,
                &objects,
                &services,
            )
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                c.mounts = self.volumes.mounts(&spec, &c.env)?;
                if let Some(dra) = self.source.dra() {
                    c.cdi = dra
                        .container_edits(&self.pod, &spec)
                        .map_err(|e| format!("applying the container's DRA devices: {e}"))?;
                }
                if let Some(d) = devices? {
                    // as upstream's: the device variables first, the container's own win
                    let mut env = d.env;
                    env.append(&mut c.env);
                    c.env = env;
                    c.cdi.append(&d.edits);
                    c.annotations = d.annotations;
                }
                // an ephemeral container's target, else the pause process's namespace
                // when the pod shares one
                let shared = self
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.share_process_namespace)
                    .unwrap_or(false);
                c.pid_namespace_of = target_pid.or(shared.then_some(sandbox.pid));
                Ok(c)
            }),
        };
        // The image as it is now (a missing one fails in run_container: ErrImagePull):
        // runAsNonRoot is checked against its user, and its digest is the imageID.
        let resolved = self.rt.resolve_image(&image).await.ok();
        let made = made.and_then(|c| match &resolved {
            Some(img) => security::verify_run_as_non_root(
                &c.security,
                &security::image_user(img.config.user.as_deref()),
                &hooks::pod_desc(&self.pod),
                &spec.name,
            )
            .map(|()| c),
            None => Ok(c),
        });
        let cfg = match made {
            Ok(c) => c,
            Err(e) => {
                let slot = &mut self.slots[i];
                slot.waiting = Some(("CreateContainerConfigError".into(), e.to_string()));
                slot.next_start = now + self.cfg.backoff_initial;
                self.events.warn("Failed", &format!("Error: {e}"));
                return;
            }
        };
        let container_type = match self.slots[i].kind {
            Kind::Init | Kind::Sidecar => "init_container",
            Kind::App => "container",
            Kind::Ephemeral => "ephemeral_container",
        };
        let ran = self.rt.run_container(&sandbox, &cfg).await;
        match &ran {
            Ok(_) => self.rt.metrics().container_started(container_type),
            Err(e) if e.is_image_not_present() => {
                let code = match spec.image_pull_policy.as_deref() {
                    Some("Never") => "ErrImageNeverPull",
                    _ => "ErrImagePull",
                };
                self.rt.metrics().container_failed(code, container_type)
            }
            Err(_) => self
                .rt
                .metrics()
                .container_failed("RunContainerError", container_type),
        }
        match ran {
            Ok(status) => {
                // upstream's words since 1.33 (the images here are imported, never pulled)
                let field = self.slots[i].field_path();
                self.events.container(
                    field.clone(),
                    "Pulled",
                    &format!(
                        "Container image {image:?} already present on machine and can be \
                         accessed by the pod"
                    ),
                );
                self.events
                    .container(field.clone(), "Created", "Container created");
                self.events.container(field, "Started", "Container started");
                let started = Instant::now();
                let running = Running::new(status.id.clone(), &spec, status.started_at, started);
                {
                    let slot = &mut self.slots[i];
                    slot.restarts = attempt;
                    slot.image_id = resolved.map(|i| i.digest).unwrap_or_default();
                    slot.pull_failures = 0;
                }
                // postStart runs before the container counts as running and started, as
                // upstream's SyncPod waits for it.
                if let Some(failure) = self.post_start(i, &status.id, &sandbox).await {
                    self.events
                        .warn("FailedPostStartHook", "PostStartHook failed");
                    tracing::warn!(pod = %self.name(), container = %spec.name, error = %failure, "postStart hook failed; killing the container");
                    self.slots[i].running = Some(running);
                    let exit = self.kill_slot(i, &status.id, grace).await;
                    let Some(r) = self.slots[i].running.take() else {
                        return;
                    };
                    self.finished(i, r, exit.as_ref(), policy).await;
                    // Until it runs again, say why it stopped (upstream's reason cache).
                    let slot = &mut self.slots[i];
                    if !slot.done && slot.waiting.is_none() {
                        slot.waiting = Some(("PostStartHookError".into(), failure));
                    }
                    return;
                }
                let slot = &mut self.slots[i];
                slot.started = running.startup.is_none();
                slot.ready = running.readiness.is_none();
                slot.running = Some(running);
                slot.waiting = None;
            }
            Err(e)
                if e.is_image_not_present()
                    && spec.image_pull_policy.as_deref() == Some("Never") =>
            {
                // upstream's words: the image is not there and may not be pulled
                let msg = format!(
                    "Container image {:?} is not present with pull policy of Never",
                    spec.image.clone().unwrap_or_default()
                );
                self.events.warn("ErrImageNeverPull", &msg);
                let slot = &mut self.slots[i];
                slot.waiting = Some(("ErrImageNeverPull".into(), msg));
                slot.next_start = now + self.cfg.backoff_initial;
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
        let m = &self.pod.metadata;
        let who = (
            m.uid.clone().unwrap_or_default(),
            m.namespace.clone().unwrap_or_else(|| "default".into()),
            m.name.clone().unwrap_or_default(),
            self.slots[i].spec.name.clone(),
        );
        let Some(r) = self.slots[i].running.as_mut() else {
            return;
        };
        let mut kill = None;
        let mut ready = None;
        let mut started = None;
        let startup_done = r.startup.as_ref().is_none_or(|t| t.verdict == Some(true));
        let rt = self.rt.clone();
        // every failed attempt is an `Unhealthy` event, as upstream's prober records them
        let mut unhealthy: Vec<String> = Vec::new();
        let mut failed = |kind: &'static str, res: &ProbeResult| {
            // upstream's prober_probe_total
            let ok = matches!(res, ProbeResult::Success);
            let (uid, ns, pod, container) = &who;
            rt.metrics().probed((uid, ns, pod, container), kind, ok);
            if let ProbeResult::Failure(msg) = res {
                unhealthy.push(format!("{kind} probe failed: {msg}"));
            }
        };
        if let Some(t) = r
            .startup
            .as_mut()
            .filter(|t| t.verdict != Some(true) && t.due(now))
        {
            let res = run(&rt, id, &t.spec, pod_ip).await;
            failed("Startup", &res);
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
                failed("Liveness", &res);
                if t.record(&res, Instant::now()) == Some(false) {
                    kill = Some(format!(
                        "Liveness probe failed: {}",
                        t.last_message.clone().unwrap_or_default()
                    ));
                }
            }
            if let Some(t) = r.readiness.as_mut().filter(|t| t.due(now)) {
                let res = run(&rt, id, &t.spec, pod_ip).await;
                failed("Readiness", &res);
                if let Some(v) = t.record(&res, Instant::now()) {
                    ready = Some(v);
                }
            }
        }
        let pod_name = self.name();
        for message in unhealthy {
            let field = self.slots[i].field_path();
            self.events.container_warning(field, "Unhealthy", &message);
        }
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
            // As upstream, with its preStop hook; the exit is picked up on the next step.
            self.kill_slot(i, id, grace).await;
        }
    }

    /// The pod status now, with each condition's `lastTransitionTime`: when its status
    /// last changed (so an unchanged pod still gives an equal status).
    fn status(&mut self) -> PodStatus {
        let mut status = pod_status(self);
        let now = jiff::Timestamp::now();
        for c in status.conditions.iter_mut().flatten() {
            let seen = self
                .transitions
                .entry(c.type_.clone())
                .or_insert_with(|| (c.status.clone(), now));
            if seen.0 != c.status {
                *seen = (c.status.clone(), now);
            }
            c.last_transition_time =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(seen.1));
        }
        status
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
        Action::Http {
            host,
            port,
            path,
            headers,
            https,
        } => probe::run_http(host, *port, path, headers, *https, pod_ip, spec.timeout).await,
        Action::Tcp { host, port } => probe::run_tcp(host, *port, pod_ip, spec.timeout).await,
        Action::Grpc { port, service } => {
            probe::run_grpc(*port, service, pod_ip, spec.timeout).await
        }
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
            volume_resync: Duration::from_secs(10),
            active: None,
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
