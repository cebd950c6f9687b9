//! Device plugins (deviceplugin v1beta1), the kubelet's part, as upstream's device manager
//! (pkg/kubelet/cm/devicemanager) does it:
//! - at start the kubelet removes the sockets in `<root-dir>/device-plugins` (the
//!   checkpoint stays) and serves `v1beta1.Registration` on `kubelet.sock` there: plugins
//!   watch that socket and register again when it is made anew ([`Manager::run`]);
//! - a plugin registers its resource (an extended resource name) and the name of its socket
//!   in that dir; the kubelet asks its options and follows its `ListAndWatch` stream
//!   ([`Manager::register`]): every device counts in the Node's `capacity`, the healthy
//!   ones in `allocatable` ([`Manager::capacity`]). When the stream ends the devices are
//!   unhealthy, and after the grace period (upstream's 5 minutes, `--device-plugin-grace-
//!   period`) the resource is dropped and reported as 0;
//! - a pod asking for such a resource gets devices at admission ([`Manager::allocate`]):
//!   per container, init containers first, devices an init container held reused by the
//!   later containers; the plugin's preferred allocation when it offers one, then free
//!   healthy devices in order; its `Allocate` answer per container is kept. Too few devices
//!   reject the pod as upstream (`UnexpectedAdmissionError`, [`rejection`]); then the
//!   pod's requests of these resources must fit beside the running pods' in the Node's
//!   allocatable (upstream's predicate admission, [`Manager::fits`]: `OutOf<resource>`);
//! - when a container is made ([`Manager::container_devices`]) the plugin's
//!   `PreStartContainer` is called if it asked for it, and the answer is applied: variables
//!   (the container's own win), mounts, device nodes (allowed in its devices cgroup),
//!   annotations and CDI devices (resolved as DRA's, [`crate::dra::cdi`]);
//! - what pods hold is kept in `kubelet_internal_checkpoint` ([`checkpoint`]), so a restarted
//!   kubelet keeps running pods' devices; devices of pods that finished or are gone are free
//!   again (checked every few seconds once the kubelet knows its pods, and before each
//!   allocation, as upstream's `UpdateAllocatedDevices`).
//!
//! Not done: topology alignment (no topology manager: devices' NUMA nodes are kept and
//! reported, not used to choose), device plugins registering through the plugins registry
//! dir (the deprecated `DevicePlugin` plugin type), devices health in pods'
//! `allocatedResourcesStatus`, and a host path that is a directory of device nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_client::tonic;
use k8s_openapi::api::core::v1::{Container, Pod};

pub mod checkpoint;
mod container;
pub mod proto;
mod registration;
pub mod state;

pub use container::{merge, ContainerDevices};
use registration::{create_dir, remove_sockets};
pub use registration::{is_extended_resource_name, validate};

use state::{Endpoint, State};

/// The dir under the kubelet's root dir (upstream's `/var/lib/kubelet/device-plugins`).
pub const DIR: &str = "device-plugins";
/// The registration socket in it.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// Upstream's `endpointStopGracePeriod`.
pub const GRACE_PERIOD: Duration = Duration::from_secs(5 * 60);
/// Connecting to a plugin and asking its options (upstream's dial timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// GetPreferredAllocation and Allocate (upstream gives them no deadline).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Upstream's `KubeletPreStartContainerRPCTimeoutInSecs`.
const PRE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often devices of pods no longer active are freed.
const GC_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Config {
    /// `<root-dir>/device-plugins`: the registration socket, plugins' sockets, checkpoint.
    pub dir: PathBuf,
    /// How long a resource whose plugin went away stays (its devices unhealthy).
    pub grace_period: Duration,
    /// Where the CDI devices plugins name are resolved from.
    pub cdi_spec_dirs: Vec<PathBuf>,
}

impl Config {
    pub fn under_root(root_dir: &Path, cdi_spec_dirs: Vec<PathBuf>) -> Config {
        Config {
            dir: root_dir.join(DIR),
            grace_period: GRACE_PERIOD,
            cdi_spec_dirs,
        }
    }
}

/// How a pod whose devices could not be allocated is rejected (upstream's admission
/// error: reason `UnexpectedAdmissionError`).
pub fn rejection(err: &str) -> crate::pod::admit::Rejection {
    crate::pod::admit::Rejection {
        reason: "UnexpectedAdmissionError".into(),
        message: format!("Allocate failed due to {err}, which is unexpected"),
    }
}

/// A device as the pod-resources API reports it: resource, id, NUMA nodes.
pub type DeviceRef = (String, String, Vec<i64>);

/// The node's device plugins and what pods hold of their devices.
pub struct Manager {
    config: Config,
    state: Mutex<State>,
    /// One allocation at a time (the plugin calls happen without the state lock).
    ops: tokio::sync::Mutex<()>,
    /// The Node's capacity may have changed.
    changed: tokio::sync::Notify,
    generation: AtomicU64,
    /// The pods the kubelet admitted; devices of others are freed.
    active: crate::pod::ActivePods,
    /// The kubelet has admitted the pods it runs (after a restart: a pod not admitted yet
    /// is not gone).
    ready: AtomicBool,
    shutdown: component::CancellationToken,
    /// `kubelet_device_plugin_*` metrics (see [`crate::metrics::devices`]).
    metrics: Option<Arc<crate::metrics::Counters>>,
}

impl Manager {
    /// The manager with what the checkpoint says pods hold; its resources are known with no
    /// devices until their plugins register again (upstream's `readCheckpoint`).
    pub fn new(
        config: Config,
        active: crate::pod::ActivePods,
        shutdown: component::CancellationToken,
    ) -> Manager {
        let mut state = State::default();
        let file = config.dir.join(checkpoint::FILE);
        match std::fs::read(&file) {
            Ok(bytes) => match checkpoint::Checkpoint::parse(&bytes) {
                Ok(data) => {
                    let (pods, registered) = data.pods();
                    state.pods = pods;
                    let now = Instant::now();
                    for r in registered {
                        state.healthy.insert(r.clone(), BTreeSet::new());
                        state.unhealthy.insert(r.clone(), BTreeSet::new());
                        state.endpoints.insert(
                            r,
                            Endpoint {
                                socket: PathBuf::new(),
                                options: Default::default(),
                                stopped: Some(now),
                                generation: 0,
                            },
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "unreadable device plugin checkpoint; starting empty")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "reading the device plugin checkpoint")
            }
        }
        Manager {
            config,
            state: Mutex::new(state),
            ops: tokio::sync::Mutex::new(()),
            changed: tokio::sync::Notify::new(),
            generation: AtomicU64::new(1),
            active,
            ready: AtomicBool::new(false),
            shutdown,
            metrics: None,
        }
    }

    /// Count registrations and `Allocate` calls in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Counters>) -> Manager {
        self.metrics = Some(metrics);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Write the checkpoint of `state` (errors are logged: the next change writes again).
    fn save(&self, state: &State) {
        let file = self.config.dir.join(checkpoint::FILE);
        let data = checkpoint::Data::new(&state.pods, &state.healthy);
        let body = match serde_json::to_vec(&checkpoint::Checkpoint::of(data)) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "encoding the device plugin checkpoint");
                return;
            }
        };
        let tmp = file.with_extension("tmp");
        let written = std::fs::create_dir_all(&self.config.dir)
            .and_then(|()| std::fs::write(&tmp, body))
            .and_then(|()| std::fs::rename(&tmp, &file));
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), error = %e, "writing the device plugin checkpoint");
        }
    }

    /// The kubelet has admitted the pods it runs: from now on devices of pods it does not
    /// run are freed.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Wait until the Node's capacity of device resources may have changed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The Node's `capacity` and `allocatable` of the device plugin resources.
    pub fn capacity(&self) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
        let mut state = self.lock();
        let (capacity, allocatable, dropped) =
            state.capacity(Instant::now(), self.config.grace_period);
        if dropped {
            self.save(&state);
        }
        (capacity, allocatable)
    }

    /// Free the devices of pod `uid` (not admitted after all).
    pub fn forget(&self, uid: &str) {
        let mut state = self.lock();
        if state.pods.remove(uid).is_some() {
            self.save(&state);
        }
    }

    /// Free the devices of pods the kubelet no longer runs (or that finished).
    pub fn free_inactive(&self) {
        if !self.ready.load(Ordering::SeqCst) {
            return;
        }
        let active: BTreeSet<String> = self
            .active
            .list()
            .into_iter()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .filter_map(|p| p.metadata.uid)
            .collect();
        let mut state = self.lock();
        if state.keep_pods(&active) {
            self.save(&state);
        }
    }

    /// Serve the registration socket and free devices of finished pods, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: component::CancellationToken) {
        let dir = &self.config.dir;
        if let Err(e) = create_dir(dir) {
            tracing::error!(dir = %dir.display(), error = %e, "creating the device plugin dir: no device plugin can register");
            return;
        }
        remove_sockets(dir);
        let listener = match crate::grpc::bind(&dir.join(KUBELET_SOCKET), None) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "listening on the device plugin registration socket");
                return;
            }
        };
        tracing::info!(socket = %dir.join(KUBELET_SOCKET).display(), "serving device plugin registration");
        let me = self.clone();
        let handler: crate::grpc::Handler = Arc::new(move |req| {
            let me = me.clone();
            Box::pin(async move {
                if req.uri().path() != proto::REGISTER {
                    return crate::grpc::unimplemented(&req);
                }
                crate::grpc::unary(req, move |r: proto::RegisterRequest| async move {
                    me.register(r)
                        .await
                        .map(|()| proto::Empty {})
                        .map_err(tonic::Status::unknown)
                })
                .await
            })
        });
        let gc = async {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(GC_EVERY) => {}
                }
                self.free_inactive();
                // a resource past its grace period is dropped when the capacity is read
                self.changed.notify_one();
            }
        };
        tokio::join!(crate::grpc::serve(listener, handler, shutdown.clone()), gc);
    }

    /// A plugin registers (upstream's `Register`): checked, asked its options, and its
    /// devices followed.
    pub async fn register(self: &Arc<Self>, req: proto::RegisterRequest) -> Result<(), String> {
        tracing::info!(resource = %req.resource_name, endpoint = %req.endpoint, "device plugin registration");
        if let Some(m) = &self.metrics {
            m.devices.plugin_registered(&req.resource_name);
        }
        validate(&req).inspect_err(|e| {
            tracing::warn!(resource = %req.resource_name, error = %e, "bad device plugin registration")
        })?;
        let socket = self.config.dir.join(&req.endpoint);
        let options: proto::DevicePluginOptions = crate::grpc::call(
            &socket,
            proto::GET_DEVICE_PLUGIN_OPTIONS,
            proto::Empty {},
            CONNECT_TIMEOUT,
        )
        .await
        .map_err(|e| format!("failed to get device plugin options: {e}"))?;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst);
        let resource = req.resource_name.clone();
        self.lock().connected(
            &resource,
            Endpoint {
                socket: socket.clone(),
                options,
                stopped: None,
                generation,
            },
        );
        tracing::info!(%resource, socket = %socket.display(), "device plugin connected");
        let me = self.clone();
        tokio::spawn(async move { me.list_and_watch(resource, socket, generation).await });
        Ok(())
    }

    /// Follow the plugin's ListAndWatch stream; when it ends the plugin is gone.
    async fn list_and_watch(self: Arc<Self>, resource: String, socket: PathBuf, generation: u64) {
        let stream = async {
            let channel =
                tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::connect(&socket))
                    .await
                    .map_err(|_| "connecting: timed out".to_string())?
                    .map_err(|e| format!("connecting: {e}"))?;
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.map_err(|e| e.to_string())?;
            let codec =
                tonic_prost::ProstCodec::<proto::Empty, proto::ListAndWatchResponse>::default();
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(proto::LIST_AND_WATCH);
            let mut stream = grpc
                .server_streaming(tonic::Request::new(proto::Empty {}), path, codec)
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            while let Some(resp) = stream.message().await.map_err(|e| e.to_string())? {
                tracing::info!(%resource, devices = resp.devices.len(), "device plugin listed its devices");
                let mut state = self.lock();
                if state.endpoints.get(&resource).map(|e| e.generation) != Some(generation) {
                    return Ok(());
                }
                state.update(&resource, resp.devices);
                self.save(&state);
                drop(state);
                self.changed.notify_one();
            }
            Ok::<(), String>(())
        };
        let outcome = tokio::select! {
            _ = self.shutdown.cancelled() => return,
            r = stream => r,
        };
        if let Err(e) = &outcome {
            tracing::warn!(%resource, error = %e, "ListAndWatch ended unexpectedly for device plugin");
        }
        if self
            .lock()
            .disconnected(&resource, generation, Instant::now())
        {
            tracing::info!(%resource, "device plugin disconnected: its devices are unhealthy");
            self.changed.notify_one();
        }
    }

    /// Allocate the devices `pod`'s containers ask for (upstream's allocate admit
    /// handler): Err is why it cannot run (see [`rejection`]). A pod that holds its devices
    /// already (a restarted kubelet's checkpoint) keeps them.
    pub async fn allocate(&self, pod: &Pod) -> Result<(), String> {
        let _op = self.ops.lock().await;
        self.free_inactive();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Some(spec) = pod.spec.as_ref() else {
            return Ok(());
        };
        let before = self.lock().pods.get(&uid).cloned();
        let mut reusable: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut outcome = Ok(());
        let inits = spec.init_containers.iter().flatten().map(|c| (c, true));
        for (c, init) in inits.chain(spec.containers.iter().map(|c| (c, false))) {
            if let Err(e) = self.allocate_container(&uid, c, &reusable).await {
                outcome = Err(e);
                break;
            }
            let held: Vec<(String, BTreeSet<String>)> = self
                .lock()
                .container(&uid, &c.name)
                .map(|r| r.iter().map(|(k, a)| (k.clone(), a.ids())).collect())
                .unwrap_or_default();
            let sidecar = c.restart_policy.as_deref() == Some("Always");
            for (resource, ids) in held {
                let set = reusable.entry(resource).or_default();
                if init && !sidecar {
                    set.extend(ids);
                } else {
                    set.retain(|d| !ids.contains(d));
                }
            }
        }
        if outcome.is_err() {
            let mut state = self.lock();
            match before {
                Some(b) => state.pods.insert(uid, b),
                None => state.pods.remove(&uid),
            };
            self.save(&state);
        }
        outcome
    }

    /// Upstream's resource fit (its predicate admission, after the allocation) for the
    /// device plugin resources on the Node: what `pod` requests of each (pod-level, as
    /// upstream's `PodRequests`) beside the `others` running, within its allocatable (at
    /// least what pods hold, as upstream's `sanitizeNodeAllocatable`). This is what
    /// refuses a pod asking for a resource whose plugin went for good (capacity 0) and
    /// that no pod holds any more: `OutOf<resource>`.
    pub fn fits(&self, pod: &Pod, others: &[Pod]) -> Result<(), crate::pod::admit::Rejection> {
        let requests = |p: &Pod| -> BTreeMap<String, i64> {
            let Ok(json) = serde_json::to_value(p) else {
                return BTreeMap::new();
            };
            component::quota::pod_requests(&json)
                .into_iter()
                .map(|(k, q)| {
                    let whole = q.nanos / 1_000_000_000 + i128::from(q.nanos % 1_000_000_000 > 0);
                    (k, i64::try_from(whole).unwrap_or(i64::MAX))
                })
                .collect()
        };
        let wanted = requests(pod);
        if wanted.is_empty() {
            return Ok(());
        }
        let (_, allocatable) = self.capacity();
        let uid = pod.metadata.uid.as_deref();
        let running: Vec<BTreeMap<String, i64>> = others
            .iter()
            .filter(|p| p.metadata.uid.as_deref() != uid)
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .map(requests)
            .collect();
        let state = self.lock();
        for (resource, node) in &allocatable {
            let requested = wanted.get(resource).copied().unwrap_or(0);
            if requested <= 0 {
                continue;
            }
            let held = state.allocated(resource).len() as i64;
            let capacity = (*node).max(held);
            let used: i64 = running.iter().filter_map(|r| r.get(resource)).sum();
            if used + requested > capacity {
                return Err(crate::pod::admit::Rejection {
                    reason: format!("OutOf{resource}"),
                    message: format!(
                        "Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The extended resources `c` asks for with their counts (limits, else requests: the
    /// apiserver keeps them equal), the device plugins' only.
    fn device_requests(&self, c: &Container) -> Vec<(String, usize)> {
        let r = c.resources.as_ref();
        let limits = r.and_then(|r| r.limits.as_ref());
        let requests = r.and_then(|r| r.requests.as_ref());
        let state = self.lock();
        let mut out: BTreeMap<String, usize> = BTreeMap::new();
        for (name, q) in requests
            .into_iter()
            .flatten()
            .chain(limits.into_iter().flatten())
        {
            if !state.is_device_resource(name) {
                continue;
            }
            let n = crate::pod::spec::parse_quantity(&q.0)
                .unwrap_or(0.0)
                .max(0.0) as usize;
            out.insert(name.clone(), n);
        }
        out.into_iter().filter(|(_, n)| *n > 0).collect()
    }

    async fn allocate_container(
        &self,
        pod: &str,
        c: &Container,
        reusable: &BTreeMap<String, BTreeSet<String>>,
    ) -> Result<(), String> {
        let none = BTreeSet::new();
        for (resource, needed) in self.device_requests(c) {
            let (plan, endpoint) = {
                let state = self.lock();
                let plan = state.plan(
                    pod,
                    &c.name,
                    &resource,
                    needed,
                    reusable.get(&resource).unwrap_or(&none),
                )?;
                (plan, state.endpoints.get(&resource).cloned())
            };
            let Some(plan) = plan else {
                continue;
            };
            let endpoint = endpoint.ok_or_else(|| format!("unknown Device Plugin {resource}"))?;
            if endpoint.stopped.is_some() {
                return Err(format!("endpoint {resource} has been stopped"));
            }
            let preferred =
                if plan.remaining > 0 && endpoint.options.get_preferred_allocation_available {
                    let mut offered: Vec<String> = plan.available.iter().cloned().collect();
                    offered.extend(plan.chosen.iter().cloned());
                    let resp: proto::PreferredAllocationResponse = crate::grpc::call(
                        &endpoint.socket,
                        proto::GET_PREFERRED_ALLOCATION,
                        proto::PreferredAllocationRequest {
                            container_requests: vec![proto::ContainerPreferredAllocationRequest {
                                available_device_ids: offered,
                                must_include_device_ids: plan.chosen.clone(),
                                allocation_size: needed as i32,
                            }],
                        },
                        CALL_TIMEOUT,
                    )
                    .await
                    .map_err(|e| {
                        format!("device plugin GetPreferredAllocation rpc failed with err: {e}")
                    })?;
                    resp.container_responses
                        .into_iter()
                        .next()
                        .map(|r| r.device_ids)
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
            let ids = plan.complete(&preferred);
            tracing::info!(%pod, container = %c.name, %resource, devices = ?ids, "allocating devices");
            let start = Instant::now();
            let resp: Result<proto::AllocateResponse, _> = crate::grpc::call(
                &endpoint.socket,
                proto::ALLOCATE,
                proto::AllocateRequest {
                    container_requests: vec![proto::ContainerAllocateRequest {
                        devices_ids: ids.clone(),
                    }],
                },
                CALL_TIMEOUT,
            )
            .await;
            if let Some(m) = &self.metrics {
                m.devices
                    .plugin_allocated(&resource, start.elapsed().as_secs_f64());
            }
            let resp = resp.map_err(|e| e.to_string())?;
            let Some(answer) = resp.container_responses.first().cloned() else {
                return Err(format!(
                    "no containers return in allocation response {resp:?}"
                ));
            };
            let mut state = self.lock();
            state.insert(pod, &c.name, &resource, &ids, answer);
            self.save(&state);
        }
        Ok(())
    }

    /// What container `c` of `pod` gets from its devices (None: it uses none), after the
    /// plugins' `PreStartContainer` where they ask for it (upstream's
    /// `GetDeviceRunContainerOptions`). A container without its devices yet (a static pod,
    /// or one admitted before its plugin came back) has them allocated now.
    pub async fn container_devices(
        &self,
        pod: &Pod,
        c: &Container,
    ) -> Result<Option<ContainerDevices>, String> {
        let requests = self.device_requests(c);
        if requests.is_empty() {
            return Ok(None);
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let missing = {
            let state = self.lock();
            let held = state.container(&uid, &c.name);
            requests
                .iter()
                .any(|(r, _)| held.is_none_or(|h| !h.contains_key(r)))
        };
        if missing {
            self.allocate(pod).await?;
        }
        let held = self
            .lock()
            .container(&uid, &c.name)
            .cloned()
            .unwrap_or_default();
        for (resource, a) in &held {
            let endpoint = self.lock().endpoints.get(resource).cloned();
            let Some(endpoint) = endpoint else {
                return Err(format!(
                    "endpoint not found in cache for a registered resource: {resource}"
                ));
            };
            if !endpoint.options.pre_start_required {
                continue;
            }
            if endpoint.stopped.is_some() {
                return Err(format!("endpoint {resource} has been stopped"));
            }
            let _: proto::PreStartContainerResponse = crate::grpc::call(
                &endpoint.socket,
                proto::PRE_START_CONTAINER,
                proto::PreStartContainerRequest {
                    devices_ids: a.ids().into_iter().collect(),
                },
                PRE_START_TIMEOUT,
            )
            .await
            .map_err(|e| format!("device plugin PreStartContainer rpc failed with err: {e}"))?;
        }
        let mut out = merge(held.values().map(|a| &a.response));
        let cdi_ids: Vec<String> = {
            let mut ids: Vec<String> = Vec::new();
            for a in held.values() {
                for d in &a.response.cdi_devices {
                    if !ids.contains(&d.name) {
                        ids.push(d.name.clone());
                    }
                }
            }
            ids
        };
        if !cdi_ids.is_empty() {
            let registry = crate::dra::cdi::Registry::load(&self.config.cdi_spec_dirs);
            let edits = registry.resolve(&cdi_ids).map_err(|e| e.to_string())?;
            out.edits.append(&edits);
        }
        out.edits = out.edits.with_host_info().map_err(|e| e.to_string())?;
        Ok(Some(out))
    }

    /// The devices container `container` of pod `pod_uid` holds (for the pod-resources
    /// API), by resource and id, with their NUMA nodes.
    pub fn container_device_refs(&self, pod_uid: &str, container: &str) -> Vec<DeviceRef> {
        let state = self.lock();
        let mut out = Vec::new();
        for (resource, a) in state.container(pod_uid, container).into_iter().flatten() {
            for (node, ids) in &a.devices {
                for id in ids {
                    let nodes = if *node == state::NO_TOPOLOGY {
                        vec![]
                    } else {
                        vec![*node]
                    };
                    out.push((resource.clone(), id.clone(), nodes));
                }
            }
        }
        out
    }

    /// Every healthy device, with its NUMA nodes (the pod-resources API's allocatable).
    pub fn allocatable_device_refs(&self) -> Vec<DeviceRef> {
        let state = self.lock();
        let mut out = Vec::new();
        for (resource, ids) in &state.healthy {
            for id in ids {
                let nodes = state.numa_nodes(resource, id);
                out.push((resource.clone(), id.clone(), nodes));
            }
        }
        out
    }

    /// Update the pods' devices from the runtime's point of view (upstream's List calls
    /// `UpdateAllocatedDevices` first).
    pub fn refresh(&self) {
        self.free_inactive();
    }
}

#[cfg(test)]
mod tests;
