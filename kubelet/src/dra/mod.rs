//! Dynamic Resource Allocation (resource.k8s.io/v1), the kubelet's part, as upstream's DRA
//! manager (pkg/kubelet/cm/dra) does it:
//! - DRA driver plugins register through the plugins registry dir ([`plugins`]);
//! - before a pod's sandbox is made, [`Manager::prepare`] reads each of its ResourceClaims,
//!   checks it is allocated and reserved for the pod, and calls each allocated driver's
//!   `NodePrepareResources` (once per claim, however many pods share it); what the drivers
//!   answer (CDI device ids per device) is kept in memory and in a checkpoint file
//!   (`<root-dir>/dra_manager_state`), so a restarted kubelet knows what is prepared;
//! - each container gets the CDI devices of the claims (and requests) it names in
//!   `resources.claims`, resolved from the CDI spec dirs and applied to its OCI spec
//!   ([`Manager::container_edits`], [`cdi`]);
//! - when a pod is terminal or gone from the node, [`Manager::unprepare`] calls
//!   `NodeUnprepareResources` for the claims no other pod on the node uses; failures are
//!   retried by [`Manager::run`].
//!
//! Errors are worded as upstream's (they reach the pod's `FailedPrepareDynamicResources`
//! events): `DRA driver gpu.example.com is not registered`, ...
//!
//! After a restart, the sync loop's first pod list names the pods deleted meanwhile
//! ([`Manager::pods_except`]): their claims are unprepared too.
//!
//! The node's ResourceSlices are deleted when the manager starts (no driver is registered
//! yet) and [`Config::wipe_delay`] after a driver's last plugin went away, if it did not
//! come back, as upstream's registration handler does.
//!
//! Not done: the plugins' health (`NodeWatchResources`) and `devices.config` (opaque
//! driver config is the driver's to read from the claim).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::api::resource::v1::ResourceClaim;
use serde::{Deserialize, Serialize};

pub mod cdi;
mod claims;
pub mod plugins;
pub mod proto;

pub use claims::claim_name;
use claims::{allocated_drivers, owned_by, pod_claims, reserved_for, serves};
pub use plugins::Plugins;

/// Upstream's name for the checkpoint, under the kubelet's root dir.
pub const CHECKPOINT_FILE: &str = "dra_manager_state";
/// The plugins registry dir under the kubelet's root dir (upstream's `plugins_registry`).
pub const PLUGINS_REGISTRY_DIR: &str = "plugins_registry";
/// How long a NodePrepareResources/NodeUnprepareResources call may take (upstream's
/// default client call timeout).
const CALL_TIMEOUT: Duration = Duration::from_secs(45);
/// How often unprepares that failed are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// Where the manager keeps and finds things.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watched for plugin registration sockets.
    pub plugins_registry_dir: PathBuf,
    /// The checkpoint of the prepared claims.
    pub checkpoint: PathBuf,
    /// CDI spec dirs, lowest priority first.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// The node whose ResourceSlices are wiped when their driver is not registered (empty:
    /// none are).
    pub node_name: String,
    /// How long a driver whose plugin went away has to come back before its slices go.
    pub wipe_delay: Duration,
}

/// Upstream's delay before the slices of a driver whose plugin went away are deleted.
pub const WIPE_DELAY: Duration = Duration::from_secs(30);

impl Config {
    /// Upstream's places under the kubelet's root dir, with these CDI spec dirs.
    pub fn under_root(root_dir: &Path, cdi_spec_dirs: Vec<PathBuf>) -> Config {
        Config {
            plugins_registry_dir: root_dir.join(PLUGINS_REGISTRY_DIR),
            checkpoint: root_dir.join(CHECKPOINT_FILE),
            cdi_spec_dirs,
            node_name: String::new(),
            wipe_delay: WIPE_DELAY,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DraError {
    /// The pod cannot use its claims yet (or at all); upstream's wording.
    #[error("{0}")]
    Claim(String),
    #[error("checkpointing the prepared ResourceClaims in {path}: {source}")]
    Checkpoint {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cdi(#[from] cdi::CdiError),
}

fn claim_err(msg: impl Into<String>) -> DraError {
    DraError::Claim(msg.into())
}

/// One device a driver prepared for a claim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedDevice {
    pub request_names: Vec<String>,
    pub pool_name: String,
    pub device_name: String,
    #[serde(rename = "cdiDeviceIDs")]
    pub cdi_device_ids: Vec<String>,
}

/// A claim the node knows: the pods using it and, per allocated driver, what it prepared
/// (None until its NodePrepareResources succeeded).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimState {
    #[serde(rename = "claimUID")]
    pub uid: String,
    #[serde(rename = "claimName")]
    pub name: String,
    pub namespace: String,
    #[serde(rename = "podUIDs")]
    pub pods: BTreeSet<String>,
    pub drivers: BTreeMap<String, Option<Vec<PreparedDevice>>>,
}

impl ClaimState {
    fn prepared(&self) -> bool {
        self.drivers.values().all(Option::is_some)
    }

    /// The drivers that prepared their part of the claim.
    fn prepared_by(&self) -> Vec<&String> {
        self.drivers
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(d, _)| d)
            .collect()
    }

    fn proto(&self) -> proto::Claim {
        proto::Claim {
            namespace: self.namespace.clone(),
            uid: self.uid.clone(),
            name: self.name.clone(),
        }
    }
}

/// A prepared claim a container uses, with the devices (by driver) that serve it.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerClaim {
    pub name: String,
    pub namespace: String,
    pub devices: Vec<(String, PreparedDevice)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    version: String,
    claims: Vec<ClaimState>,
}

const CHECKPOINT_VERSION: &str = "kaze/v1";

/// The node's DRA state: the registered plugins and the prepared claims.
pub struct Manager {
    config: Config,
    client: Option<kube::Client>,
    plugins: Arc<Plugins>,
    /// claim uid -> state
    claims: Mutex<BTreeMap<String, ClaimState>>,
    /// One prepare or unprepare at a time: two pods sharing a claim never both call
    /// NodePrepareResources for it.
    ops: tokio::sync::Mutex<()>,
    /// `dra_*` metrics (see [`crate::metrics::devices`]).
    metrics: Option<Arc<crate::metrics::Counters>>,
}

impl Manager {
    /// The manager with what the checkpoint says is prepared (an unreadable checkpoint is
    /// logged and started over, as upstream's would fail the kubelet).
    pub fn new(config: Config, client: Option<kube::Client>) -> Manager {
        let claims = match std::fs::read(&config.checkpoint) {
            Ok(bytes) => match serde_json::from_slice::<Checkpoint>(&bytes) {
                Ok(c) if c.version == CHECKPOINT_VERSION => {
                    c.claims.into_iter().map(|c| (c.uid.clone(), c)).collect()
                }
                Ok(c) => {
                    tracing::warn!(file = %config.checkpoint.display(), version = %c.version, "unknown DRA checkpoint version; starting empty");
                    BTreeMap::new()
                }
                Err(e) => {
                    tracing::warn!(file = %config.checkpoint.display(), error = %e, "unreadable DRA checkpoint; starting empty");
                    BTreeMap::new()
                }
            },
            Err(_) => BTreeMap::new(),
        };
        Manager {
            config,
            client,
            plugins: Arc::default(),
            claims: Mutex::new(claims),
            ops: tokio::sync::Mutex::new(()),
            metrics: None,
        }
    }

    /// Count operations, gRPC calls and claims in use in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Counters>) -> Manager {
        self.metrics = Some(metrics);
        let claims = self.lock().clone();
        self.publish_in_use(&claims);
        self
    }

    /// `dra_resource_claims_in_use`: prepared claims by driver and under `<any>`.
    fn publish_in_use(&self, claims: &BTreeMap<String, ClaimState>) {
        let Some(m) = &self.metrics else {
            return;
        };
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut any = 0;
        for c in claims.values() {
            let prepared = c.prepared_by();
            if prepared.is_empty() {
                continue;
            }
            any += 1;
            for d in prepared {
                *counts.entry(d.clone()).or_default() += 1;
            }
        }
        counts.insert("<any>".into(), any);
        m.devices.set_claims_in_use(counts);
    }

    /// One call of `method` on `driver`'s plugin, timed (`dra_grpc_operations_duration_seconds`).
    async fn call_driver<Req, Resp>(
        &self,
        driver: &str,
        plugin: &plugins::Plugin,
        method: &str,
        req: Req,
    ) -> Result<Resp, proto::CallError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let path = plugin.method(method);
        let start = std::time::Instant::now();
        let result = proto::call(&plugin.endpoint, &path, req, CALL_TIMEOUT).await;
        if let Some(m) = &self.metrics {
            let code = match &result {
                Ok(_) => "OK".to_string(),
                Err(proto::CallError::Status { source, .. }) => {
                    crate::metrics::devices::grpc_code_name(source.code())
                }
                Err(proto::CallError::Connect { .. }) => "Unavailable".into(),
                Err(proto::CallError::Timeout { .. }) => "DeadlineExceeded".into(),
            };
            m.devices
                .dra_grpc(driver, &path, &code, start.elapsed().as_secs_f64());
        }
        result
    }

    /// `dra_operations_duration_seconds` of `operation` since `start`.
    fn observe(&self, operation: &'static str, is_error: bool, start: std::time::Instant) {
        if let Some(m) = &self.metrics {
            m.devices
                .dra_operation(operation, is_error, start.elapsed().as_secs_f64());
        }
    }

    pub fn plugins(&self) -> &Arc<Plugins> {
        &self.plugins
    }

    /// The claims known now (for tests and debugging).
    pub fn claims(&self) -> Vec<ClaimState> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ClaimState>> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watch the plugins registry dir and retry failed unprepares, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: component::CancellationToken) {
        // upstream's registration handler: no driver is registered at start, so none of the
        // node's devices are usable until its driver comes back (and publishes them again);
        // a driver whose plugin goes away for good takes its slices with it
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::timeout(CALL_TIMEOUT, self.wipe_slices(None)) => {}
        }
        let (gone_tx, mut gone_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let watch = plugins::watch(
            self.config.plugins_registry_dir.clone(),
            self.plugins.clone(),
            shutdown.clone(),
            gone_tx,
        );
        let wipe = async {
            loop {
                let driver = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    d = gone_rx.recv() => match d { Some(d) => d, None => return },
                };
                let me = self.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(me.config.wipe_delay) => {}
                    }
                    if me.plugins.get(&driver).is_err() {
                        me.wipe_slices(Some(&driver)).await;
                    }
                });
            }
        };
        let retry = async {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_EVERY) => {}
                }
                if let Err(e) = self.unprepare_unused().await {
                    tracing::warn!(error = %e, "unpreparing ResourceClaims no pod uses");
                }
            }
        };
        tokio::join!(watch, retry, wipe);
    }

    /// Delete this node's ResourceSlices (of `driver`, or all of them), as upstream's
    /// `wipeResourceSlices`.
    async fn wipe_slices(&self, driver: Option<&str>) {
        use k8s_openapi::api::resource::v1::ResourceSlice;
        let (Some(client), node) = (&self.client, &self.config.node_name) else {
            return;
        };
        if node.is_empty() {
            return;
        }
        let api: kube::Api<ResourceSlice> = kube::Api::all(client.clone());
        let fields = format!("spec.nodeName={node}");
        let slices = match api
            .list(&kube::api::ListParams::default().fields(&fields))
            .await
        {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing the node's ResourceSlices");
                return;
            }
        };
        for slice in slices {
            let d = &slice.spec.driver;
            if driver.is_some_and(|gone| d != gone) {
                continue;
            }
            let name = slice.metadata.name.clone().unwrap_or_default();
            match api.delete(&name, &kube::api::DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(slice = %name, driver = %d, "deleted the ResourceSlice of a DRA driver not registered")
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => tracing::warn!(slice = %name, error = %e, "deleting a ResourceSlice"),
            }
        }
    }

    fn save(&self, claims: &BTreeMap<String, ClaimState>) -> Result<(), DraError> {
        self.publish_in_use(claims);
        let path = &self.config.checkpoint;
        let err = |source| DraError::Checkpoint {
            path: path.display().to_string(),
            source,
        };
        let body = serde_json::to_vec_pretty(&Checkpoint {
            version: CHECKPOINT_VERSION.into(),
            claims: claims.values().cloned().collect(),
        })
        .map_err(|e| err(e.into()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, body).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Whether every claim `pod` names is prepared with the pod among its users (a pod a
    /// restarted kubelet adopts: nothing to ask the API or the drivers).
    fn prepared_for(&self, pod: &Pod) -> bool {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let claims = self.lock();
        pod_claims(pod).iter().all(|pc| match claim_name(pod, pc) {
            Ok(Some(name)) => claims.values().any(|c| {
                c.namespace == ns && c.name == name && c.pods.contains(uid) && c.prepared()
            }),
            Ok(None) => true,
            Err(_) => false,
        })
    }

    /// Prepare the ResourceClaims of `pod` (upstream's `PrepareResources`); Ok when there
    /// is nothing to prepare. An error leaves the pod waiting: call again later.
    pub async fn prepare(&self, pod: &Pod) -> Result<(), DraError> {
        if pod_claims(pod).is_empty() || self.prepared_for(pod) {
            return Ok(());
        }
        let start = std::time::Instant::now();
        let result = self.prepare_claims(pod).await;
        self.observe("PrepareResources", result.is_err(), start);
        result
    }

    async fn prepare_claims(&self, pod: &Pod) -> Result<(), DraError> {
        let _op = self.ops.lock().await;
        let client = self.client.as_ref().ok_or_else(|| {
            claim_err("no apiserver to read the pod's ResourceClaims from (static pod?)")
        })?;
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        let pod_uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let api: kube::Api<ResourceClaim> = kube::Api::namespaced(client.clone(), ns);
        // A pass that changes nothing: a pod that cannot be prepared leaves no state behind
        // (nothing to unprepare when it is deleted, even if its driver never came).
        let mut wanted = Vec::new();
        for pc in pod_claims(pod) {
            let Some(name) = claim_name(pod, pc)? else {
                continue;
            };
            let claim = api
                .get(&name)
                .await
                .map_err(|e| claim_err(format!("fetch ResourceClaim {name}: {e}")))?;
            let claim_uid = claim.metadata.uid.clone().unwrap_or_default();
            if pc.resource_claim_template_name.is_some() && !owned_by(&claim, pod_uid) {
                return Err(claim_err(format!(
                    "ResourceClaim {name} was not created for pod {ns}/{pod_name} (pod is not owner)"
                )));
            }
            if !reserved_for(&claim, pod_uid) {
                return Err(claim_err(format!(
                    "pod {pod_name} ({pod_uid}) is not allowed to use ResourceClaim {name} ({claim_uid})"
                )));
            }
            let drivers = allocated_drivers(&claim).ok_or_else(|| {
                claim_err(format!("ResourceClaim {name}: unallocated ResourceClaim"))
            })?;
            for d in &drivers {
                self.plugins.get(d).map_err(DraError::Claim)?;
            }
            wanted.push(ClaimState {
                uid: claim_uid,
                name,
                namespace: ns.to_string(),
                pods: BTreeSet::new(),
                drivers: drivers.into_iter().map(|d| (d, None)).collect(),
            });
        }
        // Now the pod holds its claims (saved first: a pod deleted before its drivers
        // answer still has them unprepared).
        let mut batches: BTreeMap<String, Vec<proto::Claim>> = BTreeMap::new();
        {
            let mut claims = self.lock();
            for want in wanted {
                if let Some(old) = claims.values().find(|c| {
                    c.namespace == want.namespace && c.name == want.name && c.uid != want.uid
                }) {
                    return Err(claim_err(format!(
                        "old ResourceClaim with same name {} and different UID {} still exists (previous pod force-deleted?!)",
                        want.name, old.uid
                    )));
                }
                let entry = claims.entry(want.uid.clone()).or_insert(want);
                entry.pods.insert(pod_uid.to_string());
                for (driver, prepared) in &entry.drivers {
                    if prepared.is_none() {
                        batches
                            .entry(driver.clone())
                            .or_default()
                            .push(entry.proto());
                    }
                }
            }
            self.save(&claims)?;
        }
        for (driver, batch) in batches {
            let plugin = self.plugins.get(&driver).map_err(DraError::Claim)?;
            let response: proto::NodePrepareResourcesResponse = self
                .call_driver(
                    &driver,
                    &plugin,
                    "NodePrepareResources",
                    proto::NodePrepareResourcesRequest {
                        claims: batch.clone(),
                    },
                )
                .await
                .map_err(|e| claim_err(format!("NodePrepareResources: {e}")))?;
            let mut claims = self.lock();
            for c in &batch {
                let result = response.claims.get(&c.uid).ok_or_else(|| {
                    claim_err(format!(
                        "NodePrepareResources skipped 1 ResourceClaims (ResourceClaim {})",
                        c.name
                    ))
                })?;
                if !result.error.is_empty() {
                    return Err(claim_err(format!(
                        "NodePrepareResources failed for ResourceClaim {}: {}",
                        c.name, result.error
                    )));
                }
                let devices = result
                    .devices
                    .iter()
                    .map(|d| PreparedDevice {
                        request_names: d.request_names.clone(),
                        pool_name: d.pool_name.clone(),
                        device_name: d.device_name.clone(),
                        cdi_device_ids: d.cdi_device_ids.clone(),
                    })
                    .collect();
                if let Some(state) = claims.get_mut(&c.uid) {
                    state.drivers.insert(driver.clone(), Some(devices));
                }
            }
            self.save(&claims)?;
        }
        Ok(())
    }

    /// The CDI edits for container `c` of `pod`: the devices of the claims (and requests)
    /// it names in `resources.claims`, resolved from the CDI spec dirs. The pod's claims
    /// must have been prepared.
    pub fn container_edits(
        &self,
        pod: &Pod,
        c: &Container,
    ) -> Result<cdi::ContainerEdits, DraError> {
        let uses = claims_used(c);
        if uses.is_empty() {
            return Ok(Default::default());
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut ids: Vec<String> = Vec::new();
        {
            let claims = self.lock();
            for used in uses {
                let pc = pod_claims(pod)
                    .iter()
                    .find(|pc| pc.name == used.name)
                    .ok_or_else(|| {
                        claim_err(format!(
                            "container {} uses claim {:?}, which the pod does not have",
                            c.name, used.name
                        ))
                    })?;
                let Some(name) = claim_name(pod, pc)? else {
                    continue;
                };
                let state = claims
                    .values()
                    .find(|s| s.namespace == ns && s.name == name && s.prepared())
                    .ok_or_else(|| claim_err(format!("ResourceClaim {name} is not prepared")))?;
                let devices = state.drivers.values().flatten().flatten();
                for d in devices.filter(|d| serves(d, used.request.as_deref())) {
                    for id in &d.cdi_device_ids {
                        if !ids.contains(id) {
                            ids.push(id.clone());
                        }
                    }
                }
            }
        }
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let registry = cdi::Registry::load(&self.config.cdi_spec_dirs);
        Ok(registry.resolve(&ids)?.with_host_info()?)
    }

    /// The prepared claims container `c` of `pod` uses, with the devices of each that
    /// serve it, by driver (the pod-resources API's `dynamic_resources`, as upstream's
    /// `GetContainerClaimInfos`); claims not prepared are left out.
    pub fn container_claims(&self, pod: &Pod, c: &Container) -> Vec<ContainerClaim> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let uses = claims_used(c);
        let claims = self.lock();
        let mut out = Vec::new();
        for used in uses {
            let Some(pc) = pod_claims(pod).iter().find(|pc| pc.name == used.name) else {
                continue;
            };
            let Ok(Some(name)) = claim_name(pod, pc) else {
                continue;
            };
            let Some(state) = claims
                .values()
                .find(|s| s.namespace == ns && s.name == name && s.prepared())
            else {
                continue;
            };
            let devices = state
                .drivers
                .iter()
                .flat_map(|(driver, devices)| {
                    devices
                        .iter()
                        .flatten()
                        .filter(|d| serves(d, used.request.as_deref()))
                        .map(move |d| (driver.clone(), d.clone()))
                })
                .collect();
            out.push(ContainerClaim {
                name,
                namespace: ns.to_string(),
                devices,
            });
        }
        out
    }

    /// The pods holding claims for which `keep` does not hold (after a restart: pods
    /// deleted while no kubelet ran, to [`Manager::unprepare`]).
    pub fn pods_except(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let claims = self.lock();
        let pods: BTreeSet<&String> = claims.values().flat_map(|c| &c.pods).collect();
        pods.into_iter().filter(|p| !keep(p)).cloned().collect()
    }

    /// Pod `pod_uid` is gone from the node (its containers removed): unprepare the claims
    /// no other pod uses (upstream's `UnprepareResources`). What fails stays, without
    /// users, and is retried by [`Manager::run`].
    pub async fn unprepare(&self, pod_uid: &str) -> Result<(), DraError> {
        {
            let mut claims = self.lock();
            let mut changed = false;
            for c in claims.values_mut() {
                changed |= c.pods.remove(pod_uid);
            }
            if !changed {
                return Ok(());
            }
            self.save(&claims)?;
        }
        let start = std::time::Instant::now();
        let result = self.unprepare_unused().await;
        self.observe("UnprepareResources", result.is_err(), start);
        result
    }

    /// Call NodeUnprepareResources for every claim no pod uses, per driver; forget those
    /// all of whose drivers unprepared them.
    async fn unprepare_unused(&self) -> Result<(), DraError> {
        let _op = self.ops.lock().await;
        let unused: Vec<ClaimState> = self
            .lock()
            .values()
            .filter(|c| c.pods.is_empty())
            .cloned()
            .collect();
        let mut first_error = None;
        let mut batches: BTreeMap<String, Vec<proto::Claim>> = BTreeMap::new();
        let mut done: BTreeSet<String> = BTreeSet::new();
        for c in &unused {
            let called = c.prepared_by();
            if called.is_empty() {
                // never prepared: nothing to undo
                done.insert(c.uid.clone());
            }
            for d in called {
                batches.entry(d.clone()).or_default().push(c.proto());
            }
        }
        // claim uid -> drivers that failed it
        let mut failed: BTreeSet<String> = BTreeSet::new();
        for (driver, batch) in batches {
            let outcome = match self.plugins.get(&driver) {
                Err(e) => Err(e),
                Ok(plugin) => self
                    .call_driver::<_, proto::NodeUnprepareResourcesResponse>(
                        &driver,
                        &plugin,
                        "NodeUnprepareResources",
                        proto::NodeUnprepareResourcesRequest {
                            claims: batch.clone(),
                        },
                    )
                    .await
                    .map_err(|e| format!("NodeUnprepareResources: {e}")),
            };
            for c in &batch {
                let error = match &outcome {
                    Err(e) => Some(e.clone()),
                    Ok(r) => match r.claims.get(&c.uid) {
                        None => Some(format!(
                            "NodeUnprepareResources skipped 1 ResourceClaims (ResourceClaim {})",
                            c.name
                        )),
                        Some(r) if !r.error.is_empty() => Some(format!(
                            "NodeUnprepareResources failed for ResourceClaim {}: {}",
                            c.name, r.error
                        )),
                        Some(_) => None,
                    },
                };
                match error {
                    Some(e) => {
                        failed.insert(c.uid.clone());
                        first_error.get_or_insert(e);
                    }
                    None => {
                        done.insert(c.uid.clone());
                    }
                }
            }
        }
        {
            let mut claims = self.lock();
            let before = claims.len();
            // a claim a new pod took meanwhile stays
            claims.retain(|uid, c| {
                !(done.contains(uid) && !failed.contains(uid) && c.pods.is_empty())
            });
            if claims.len() != before {
                self.save(&claims)?;
            }
        }
        match first_error {
            Some(e) => Err(claim_err(e)),
            None => Ok(()),
        }
    }
}

/// The pod claims container `c` names in `resources.claims`.
fn claims_used(c: &Container) -> &[k8s_openapi::api::core::v1::ResourceClaim] {
    c.resources
        .as_ref()
        .and_then(|r| r.claims.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
