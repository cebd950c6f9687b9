//! The runtime layer: pod sandboxes and containers on containerd, one containerd namespace
//! per node. A sandbox is a pause container in a pinned network namespace that CNI wired;
//! app containers join its network, IPC and UTS namespaces.
//!
//! What the runtime creates is labelled in containerd (`io.kaze.*`) and recorded in the pod
//! dir (`<root>/pods/<uid>/sandbox.json`), so teardown works from either after a restart.

mod adopt;
mod container;
mod exec;
mod sandbox;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use adopt::FoundContainer as AdoptedContainer;
pub use container::{ContainerConfig, ContainerState, ContainerStatus, ExitInfo};
pub use exec::{AttachInput, ExecOutput, ExecStreams, FoundContainer};
pub use sandbox::{netns_name, PodSandboxConfig, Sandbox};

use crate::cni::{Cni, NetworkConfig};
use crate::containerd::Containerd;
use crate::error::Result;
use crate::images;
use crate::logs::LogPump;

pub const LABEL_KIND: &str = "io.kaze.kind";
pub const LABEL_POD_NAMESPACE: &str = "io.kaze.pod.namespace";
pub const LABEL_POD_NAME: &str = "io.kaze.pod.name";
pub const LABEL_POD_UID: &str = "io.kaze.pod.uid";
pub const LABEL_SANDBOX_ID: &str = "io.kaze.sandbox.id";
pub const LABEL_CONTAINER_NAME: &str = "io.kaze.container.name";
pub const LABEL_ATTEMPT: &str = "io.kaze.container.attempt";
/// When the kubelet started the container (RFC 3339), so a restarted kubelet reports the
/// same `startedAt`.
pub const LABEL_STARTED_AT: &str = "io.kaze.container.started-at";
/// How the container ended (`<code> <reason> <finished at>`), written before its exited
/// task is deleted: the task held the only other record.
pub const LABEL_EXIT: &str = "io.kaze.container.exit";
pub const LABEL_LOG_PATH: &str = "io.kaze.log.path";
pub const LABEL_CGROUP: &str = "io.kaze.cgroup";
pub const KIND_SANDBOX: &str = "sandbox";
pub const KIND_CONTAINER: &str = "container";

/// How the node runs pods.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// containerd's socket (`--container-runtime-endpoint`).
    pub containerd_socket: PathBuf,
    /// The node name; also the containerd namespace.
    pub node_name: String,
    /// The kubelet's state dir (`--root-dir`): `pods/<uid>/` lives here.
    pub root_dir: PathBuf,
    /// Where container logs go (`/var/log/pods`).
    pub log_dir: PathBuf,
    /// When container logs rotate (`--container-log-max-size`, `--container-log-max-files`).
    pub log_rotation: crate::logs::Rotation,
    /// `--pod-infra-container-image`.
    pub pause_image: String,
    /// `--cluster-dns`.
    pub cluster_dns: Vec<IpAddr>,
    /// `--cluster-domain`.
    pub cluster_domain: String,
    pub network: NetworkConfig,
    /// The cgroup every pod of this node is created under (`/kaze/<node>` by default).
    pub cgroup_parent: String,
}

impl RuntimeConfig {
    /// Upstream-like defaults for `node` with pod CIDR `pod_cidr`.
    pub fn new(node: &str, pod_cidr: &str) -> RuntimeConfig {
        RuntimeConfig {
            containerd_socket: "/run/containerd/containerd.sock".into(),
            node_name: node.to_string(),
            root_dir: "/var/lib/kaze/kubelet".into(),
            log_dir: "/var/log/pods".into(),
            log_rotation: Default::default(),
            pause_image: "docker.io/kaze/pause:1".into(),
            cluster_dns: vec![IpAddr::from([10, 43, 0, 10])],
            cluster_domain: "cluster.local".into(),
            network: NetworkConfig::new(pod_cidr),
            cgroup_parent: format!("/kaze/{node}"),
        }
    }

    /// k3s's air-gap convention: image tarballs in `<root-dir>/agent/images/` are imported
    /// when the node starts.
    pub fn air_gap_images_dir(&self) -> PathBuf {
        self.root_dir.join("agent").join("images")
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root_dir.join("pods").join(uid)
    }
}

/// What the runtime remembers about one pod on disk, written before anything is created
/// so a half-made sandbox can still be torn down.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PodRecord {
    pub sandbox_id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub netns: String,
    #[serde(default)]
    pub cni_result: Option<serde_json::Value>,
    #[serde(default)]
    pub port_mappings: Vec<(u16, u16, String, Option<String>)>,
    /// The CNI plugins the ADD runs (and so the DEL); absent in records of kubelets that
    /// ran every plugin of the conflist.
    #[serde(default)]
    pub cni_plugins: Option<Vec<String>>,
    /// A `hostNetwork` pod's IPs (the node's); `netns` is empty then.
    #[serde(default)]
    pub host_ips: Option<Vec<String>>,
}

#[derive(Default)]
struct Shared {
    /// Exit of each container this process watches (None while running).
    exits: HashMap<String, watch::Sender<Option<ExitInfo>>>,
    pumps: HashMap<String, LogPump>,
}

/// The node's runtime: containerd + CNI + the pod dirs.
#[derive(Clone)]
pub struct Runtime {
    cd: Containerd,
    cni: Cni,
    config: Arc<RuntimeConfig>,
    shared: Arc<Mutex<Shared>>,
    /// Every capability containers may get and the host's extra masked paths.
    host_security: Arc<crate::security::HostSecurity>,
    /// The kubelet's counters (`/metrics`).
    metrics: Arc<crate::metrics::Counters>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("node", &self.config.node_name)
            .finish()
    }
}

impl Runtime {
    pub async fn connect(config: RuntimeConfig) -> Result<Runtime> {
        let cd = Containerd::connect(&config.containerd_socket, &config.node_name).await?;
        Runtime::with_containerd(cd, config)
    }

    /// The runtime over a containerd connection already made (the kubelet's, opened before
    /// the pod CIDR is known to ask containerd's version for the Node): `cd` must be to
    /// `config.containerd_socket`, in namespace `config.node_name`.
    pub fn with_containerd(cd: Containerd, config: RuntimeConfig) -> Result<Runtime> {
        let cni = Cni::new(
            config.network.clone(),
            &format!("kaze-{}", config.node_name),
        )?;
        let host_security = crate::security::HostSecurity {
            all_caps: crate::security::caps_from_mask(crate::sys::bounding_caps()),
            extra_masked: crate::sys::thermal_throttle_paths(),
        };
        Ok(Runtime {
            cd,
            cni,
            config: Arc::new(config),
            shared: Arc::default(),
            host_security: Arc::new(host_security),
            metrics: Arc::default(),
        })
    }

    /// The kubelet's counters (`/metrics`).
    pub fn metrics(&self) -> &crate::metrics::Counters {
        &self.metrics
    }

    /// The same, shared (for what counts from outside the runtime).
    pub fn metrics_handle(&self) -> Arc<crate::metrics::Counters> {
        self.metrics.clone()
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub fn containerd(&self) -> &Containerd {
        &self.cd
    }

    pub fn cni(&self) -> &Cni {
        &self.cni
    }

    /// Import the air-gap image dir (`<root-dir>/agent/images/*.tar`, k3s's convention).
    pub async fn import_images_dir(&self, dir: &Path) -> Result<Vec<String>> {
        images::import_dir(&self.cd, dir).await
    }

    /// Import `<root-dir>/agent/images/*.tar` (what the kubelet does at start).
    pub async fn import_air_gap_images(&self) -> Result<Vec<String>> {
        images::import_dir(&self.cd, &self.config.air_gap_images_dir()).await
    }

    /// `kaze images import FILE`.
    pub async fn import_image(&self, tarball: &Path) -> Result<Vec<String>> {
        images::import_tarball(&self.cd, tarball).await
    }

    pub async fn resolve_image(&self, image: &str) -> Result<images::ResolvedImage> {
        images::resolve(&self.cd, image).await
    }

    pub(crate) fn cgroup_of_pod(&self, uid: &str) -> String {
        format!("{}/pod{uid}", self.config.cgroup_parent)
    }
}

/// A short stable id: the first 32 hex digits of sha256 over `parts`.
pub(crate) fn stable_id(parts: &[&str]) -> String {
    images::sha256_digest(parts.join("\0").as_bytes())[7..39].to_string()
}

/// The containerd filter for everything of one pod.
pub(crate) fn pod_filter(uid: &str) -> String {
    format!("labels.\"{LABEL_POD_UID}\"==\"{uid}\"")
}
