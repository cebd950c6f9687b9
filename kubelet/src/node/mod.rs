//! The kubelet as an API client (`kaze kubelet`): register this machine's Node, wait for its
//! pod CIDR from node IPAM (or take `--pod-cidr`), keep its Lease in `kube-node-lease`
//! renewed, and run the pods bound to it ([`sync`]) and its static pods
//! ([`crate::static_pod`]) through the runtime and pod workers below, reporting their status.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::cni::NetworkConfig;
use crate::pod::NodeContext;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::spec::DnsConfig;

pub mod auth;
pub mod config_file;
pub mod info;
pub mod local_storage;
pub mod memory;
pub mod pids;
pub mod portforward;
pub mod pressure;
pub mod server;
pub mod spdy;
pub mod spdy_exec;
pub mod stream;
pub mod sync;

/// Upstream kubelet's flags, the subset kaze implements.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// A `KubeletConfiguration` file (`kubelet.config.k8s.io/v1beta1`, YAML or JSON):
    /// flags given on the command line override it (see [`config_file`]).
    #[arg(long = "config")]
    pub config: Option<PathBuf>,
    /// kubeconfig to reach the apiserver (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The node name (default: the host name).
    #[arg(long = "hostname-override")]
    pub hostname_override: Option<String>,
    /// The address other nodes and the apiserver reach this node on (default: the first
    /// global IPv4 address).
    #[arg(long = "node-ip")]
    pub node_ip: Option<IpAddr>,
    /// The node's public address, reported as its ExternalIP (a kaze extension, k3s's flag;
    /// kaze's servicelb gives LoadBalancer Services a node's ExternalIP before its
    /// InternalIP).
    #[arg(long = "node-external-ip")]
    pub node_external_ip: Option<IpAddr>,
    /// containerd's socket (`unix://` prefix accepted).
    #[arg(
        long = "container-runtime-endpoint",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub container_runtime_endpoint: String,
    /// The kubelet's state: pod dirs; `agent/images/*.tar` are imported at start (air gap).
    #[arg(long = "root-dir", default_value = "/var/lib/kaze/kubelet")]
    pub root_dir: PathBuf,
    /// Where container logs are written (`<ns>_<pod>_<uid>/<container>/<n>.log`).
    #[arg(long = "pod-log-dir", default_value = "/var/log/pods")]
    pub pod_log_dir: PathBuf,
    /// Cluster DNS servers written into pods' resolv.conf.
    #[arg(
        long = "cluster-dns",
        value_delimiter = ',',
        default_value = "10.43.0.10"
    )]
    pub cluster_dns: Vec<IpAddr>,
    #[arg(long = "cluster-domain", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The sandbox image holding each pod's namespaces.
    #[arg(
        long = "pod-infra-container-image",
        default_value = "docker.io/kaze/pause:1"
    )]
    pub pod_infra_container_image: String,
    #[arg(long = "cni-bin-dir", default_value = "/usr/lib/cni")]
    pub cni_bin_dir: PathBuf,
    /// The bridge pods attach to.
    #[arg(long = "cni-bridge", default_value = "kaze0")]
    pub cni_bridge: String,
    /// Masquerade traffic from pods leaving the pod CIDR.
    #[arg(long = "ip-masq", default_value_t = true, action = clap::ArgAction::Set)]
    pub ip_masq: bool,
    /// Labels added to the Node (`key=value,...`).
    #[arg(long = "node-labels", value_delimiter = ',')]
    pub node_labels: Vec<String>,
    #[arg(long = "max-pods", default_value_t = 110)]
    pub max_pods: u32,
    /// Parent cgroup of every pod (default `/kaze/<node>`).
    #[arg(long = "cgroup-root")]
    pub cgroup_root: Option<String>,
    /// Port of the kubelet's HTTPS server (logs, exec, attach, port-forward).
    #[arg(long = "port", default_value_t = 10250)]
    pub port: u16,
    /// The address the kubelet's HTTPS server listens on.
    #[arg(long = "address", default_value = "0.0.0.0")]
    pub address: IpAddr,
    /// CA that signs the client certificates of the server's callers (the cluster CA: the
    /// apiserver presents a certificate from it). Without it nobody can be authenticated,
    /// and exec, attach and port-forward are refused.
    #[arg(long = "client-ca-file")]
    pub client_ca_file: Option<PathBuf>,
    /// Serve callers without a client certificate, exec included (trusted networks only).
    #[arg(long = "anonymous-auth", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub anonymous_auth: bool,
    /// Unsafe sysctls (or `prefix.*` patterns) pods may set besides the safe ones, as
    /// upstream's flag; a pod asking for another is rejected (`SysctlForbidden`).
    #[arg(long = "allowed-unsafe-sysctls", value_delimiter = ',')]
    pub allowed_unsafe_sysctls: Vec<String>,
    /// Hard eviction thresholds (upstream's syntax and default): the Node's pressure
    /// conditions, and pods evicted under memory pressure.
    #[arg(long = "eviction-hard", default_value = pressure::DEFAULT_EVICTION_HARD)]
    pub eviction_hard: String,
    /// Soft eviction thresholds (`--eviction-hard`'s syntax, none by default): the pressure
    /// condition is reported at once, pods are evicted once the threshold has been met for
    /// its `--eviction-soft-grace-period`.
    #[arg(long = "eviction-soft", default_value = "")]
    pub eviction_soft: String,
    /// `signal=duration,...` (Go durations): how long each soft threshold must be met before
    /// pods are evicted; required for every soft threshold.
    #[arg(long = "eviction-soft-grace-period", default_value = "")]
    pub eviction_soft_grace_period: String,
    /// A container's log is rotated once it reaches this size (a quantity, as upstream's).
    #[arg(long = "container-log-max-size", default_value = "10Mi")]
    pub container_log_max_size: String,
    /// Log files kept per container, the one being written included (at least 2).
    #[arg(long = "container-log-max-files", default_value_t = 5)]
    pub container_log_max_files: u32,
    /// How often the node Lease is renewed.
    #[arg(long = "node-lease-renew-interval", default_value = "10s", value_parser = component::leader::parse_duration)]
    pub lease_renew_interval: Duration,
    /// This node's pod CIDR (or one of each family, comma-separated, for dual-stack pods),
    /// for running pods before (or without) an apiserver: static pods start at once, and the
    /// Node is registered with it. Without it the kubelet waits for the CIDRs node IPAM
    /// gives the Node (`spec.podCIDRs`).
    #[arg(long = "pod-cidr")]
    pub pod_cidr: Option<String>,
    /// Where kaze's local-path provisioner puts this node's volumes (a kaze flag): announced
    /// on the Node (annotation `kaze.io/local-storage-path`) for the provisioner, and where
    /// the kubelet removes deleted volumes' data. Without it no local-path volume is
    /// provisioned here.
    #[arg(long = "local-storage-path")]
    pub local_storage_path: Option<PathBuf>,
    #[command(flatten)]
    pub static_pods: crate::static_pod::Config,
    #[command(flatten)]
    pub image_gc: crate::images::gc::GcConfig,
    /// The ids of the flags given on the command line (set by the binary from clap's
    /// matches, [`Config::given_in`]): `--config`'s file does not override them.
    #[arg(skip)]
    pub given: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("connecting to the apiserver: {0}")]
    Client(#[from] component::ClientError),
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Runtime(#[from] crate::Error),
    #[error("invalid flag: {0}")]
    Flag(String),
    #[error(transparent)]
    ConfigFile(#[from] config_file::ConfigFileError),
}

fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> NodeError {
    let action = action.into();
    move |source| NodeError::Api { action, source }
}

impl Config {
    /// `--container-log-max-size` and `--container-log-max-files`, checked as upstream's
    /// `ValidateKubeletConfiguration` does.
    pub fn log_rotation(&self) -> Result<crate::logs::Rotation, String> {
        if self.container_log_max_files < 2 {
            return Err(format!(
                "--container-log-max-files ({}) must be greater than 1",
                self.container_log_max_files
            ));
        }
        let size = crate::pod::spec::parse_quantity(&self.container_log_max_size)
            .filter(|b| *b >= 1.0)
            .ok_or_else(|| {
                format!(
                    "--container-log-max-size {:?}: must be a positive quantity of bytes (10Mi)",
                    self.container_log_max_size
                )
            })?;
        Ok(crate::logs::Rotation {
            max_size: size as u64,
            max_files: self.container_log_max_files as usize,
        })
    }

    pub fn node_name(&self) -> String {
        self.hostname_override
            .clone()
            .unwrap_or_else(|| info::hostname().to_lowercase())
    }
}

/// Run the kubelet until `shutdown`. Pods keep running when it stops (as upstream's do): a
/// restarted kubelet finds them in containerd.
///
/// With `--pod-cidr` the runtime and the static pods start before the apiserver is reached
/// (registration is retried meanwhile); without a kubeconfig to be found and with static pod
/// sources, the kubelet runs standalone: static pods only, as upstream without
/// `--kubeconfig`.
pub async fn run(config: Config, shutdown: component::CancellationToken) -> Result<(), NodeError> {
    let config = config.with_config_file()?;
    config.image_gc.validate().map_err(NodeError::Flag)?;
    let log_rotation = config.log_rotation().map_err(NodeError::Flag)?;
    if config.static_pods.sync_frequency.is_zero() {
        return Err(NodeError::Flag("--sync-frequency must be above 0".into()));
    }
    let node_name = config.node_name();
    let node_ip = config.node_ip.unwrap_or_else(component::detect_node_ip);
    let labels = parse_labels(&config.node_labels)?;
    let thresholds = pressure::Thresholds::parse(&config.eviction_hard)
        .map_err(|e| NodeError::Flag(format!("--eviction-hard: {e}")))?;
    let soft = pressure::Soft::parse(&config.eviction_soft, &config.eviction_soft_grace_period)
        .map_err(|e| NodeError::Flag(format!("--eviction-soft: {e}")))?;
    let (evict_tx, evict_rx) = tokio::sync::mpsc::channel(4);
    // Before anything else: a bad --client-ca-file is a start-up error, not a server that
    // never comes up.
    let auth = auth::Auth::new(
        config.client_ca_file.as_deref(),
        config.anonymous_auth,
        config.port,
    )?;
    let agent = component::user_agent("kubelet", None);
    // HTTP/2 by ALPN: the watches of the pods' ConfigMaps and Secrets (one per object), of
    // the node's pods and of the Services share one connection, as client-go's. This
    // client makes no upgrades (exec and attach are served, not asked for).
    let client = match component::client_with(
        config.kubeconfig.as_deref(),
        &agent,
        component::Http::Alpn,
    )
    .await
    {
        Ok(c) => Some(c),
        Err(e) if config.kubeconfig.is_none() && config.static_pods.enabled() => {
            tracing::warn!(error = %e, "no kubeconfig found: running standalone (static pods only)");
            None
        }
        Err(e) => return Err(e.into()),
    };
    // With an apiserver, bearer tokens and callers outside system:masters are checked by
    // it (TokenReview, SubjectAccessReview), as upstream's webhook modes.
    let auth = std::sync::Arc::new(match &client {
        Some(c) => auth.with_webhook(c.clone(), &node_name),
        None => auth,
    });
    let socket = config
        .container_runtime_endpoint
        .trim_start_matches("unix://")
        .to_string();
    // One containerd connection for the kubelet's life: the Node's runtime version is asked
    // over it before registering, and the runtime takes it over once the pod CIDR is known.
    // A containerd that is not up is a start-up error, as upstream's (its runtime manager
    // asks the runtime's version when it is built).
    let containerd =
        crate::containerd::Containerd::connect(std::path::Path::new(&socket), &node_name).await?;
    let runtime_version = runtime_version(&containerd).await;
    let node_ips = info::NodeIps {
        internal: node_ip,
        external: config.node_external_ip,
    };
    let registration = Registration {
        runtime_version: runtime_version.clone(),
        name: node_name.clone(),
        ip: node_ips,
        labels,
        max_pods: config.max_pods,
        port: config.port,
        pod_cidr: config.pod_cidr.clone(),
        local_storage_path: config.local_storage_path.clone(),
    };
    let pod_cidr = match (&config.pod_cidr, &client) {
        (Some(cidr), _) => cidr.clone(),
        (None, Some(client)) => {
            registration.register(client).await?;
            tracing::info!(node = %node_name, ip = %node_ip, "registered node");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                c = wait_for_pod_cidr(client, &node_name) => c?,
            }
        }
        (None, None) => {
            return Err(NodeError::Flag(
                "running standalone (no kubeconfig) needs --pod-cidr".into(),
            ))
        }
    };
    tracing::info!(node = %node_name, %pod_cidr, "pod CIDR");
    let mut rc = RuntimeConfig::new(&node_name, &pod_cidr);
    rc.containerd_socket = socket.into();
    rc.root_dir = config.root_dir.clone();
    rc.log_dir = config.pod_log_dir.clone();
    rc.log_rotation = log_rotation;
    rc.pause_image = config.pod_infra_container_image.clone();
    rc.cluster_dns = config.cluster_dns.clone();
    rc.cluster_domain = config.cluster_domain.clone();
    if let Some(cg) = &config.cgroup_root {
        rc.cgroup_parent = cg.clone();
    }
    rc.network = NetworkConfig {
        bridge: config.cni_bridge.clone(),
        bin_dir: config.cni_bin_dir.clone(),
        ip_masq: config.ip_masq,
        ..NetworkConfig::new(&pod_cidr)
    };
    let rt = Runtime::with_containerd(containerd, rc)?;
    match rt.import_air_gap_images().await {
        Ok(imported) if !imported.is_empty() => {
            tracing::info!(images = ?imported, "imported air-gap images")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "importing air-gap images"),
    }
    if let Err(e) = rt.adopt().await {
        tracing::warn!(error = %e, "adopting running containers");
    }
    let node_ctx = NodeContext {
        node_name: node_name.clone(),
        host_ip: Some(node_ip),
        cluster_dns: config.cluster_dns.clone(),
        cluster_domain: config.cluster_domain.clone(),
        host_dns: host_dns(),
    };

    let uids: server::PodUids = Default::default();
    let active = crate::pod::ActivePods::new(
        config.allowed_unsafe_sysctls.clone(),
        Some(info::allocatable(config.max_pods)),
    );
    let mut tasks = tokio::task::JoinSet::new();
    let image_gc = std::sync::Arc::new(
        crate::images::gc::ImageGc::new(
            rt.containerd().clone(),
            config.image_gc.clone(),
            &config.pod_infra_container_image,
            config.root_dir.clone(),
        )
        .await?,
    );
    tracing::info!(image_fs = %image_gc.image_fs().display(), enabled = config.image_gc.enabled(), "image garbage collection");
    {
        let recorder = crate::pod::events::Recorder::for_node(client.clone(), &node_name);
        tasks.spawn(image_gc.clone().run(recorder, shutdown.clone()));
    }
    // Static pods first: they run whatever the apiserver does, and the sync loop must know
    // them before it looks for leftovers.
    // The cluster's Services, for containers' environment variables (upstream's kubelet
    // keeps the same informer).
    let services = client.clone().map(|c| {
        use futures::StreamExt;
        use kube::runtime::WatchStreamExt;
        let (store, writer) = kube::runtime::reflector::store();
        let stream = kube::runtime::reflector(
            writer,
            kube::runtime::watcher(
                kube::Api::<k8s_openapi::api::core::v1::Service>::all(c),
                kube::runtime::watcher::Config::default(),
            )
            .default_backoff(),
        )
        .touched_objects();
        let token = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = stream.for_each(|_| async {}) => {}
            }
        });
        store
    });
    // One for every pod, static ones included: one watch per ConfigMap/Secret for the node.
    let api_source = client
        .clone()
        .map(|c| {
            crate::volume::Source::api(
                c,
                Some(rt.metrics_handle()),
                config.static_pods.sync_frequency,
            )
            .with_services(services.clone())
        })
        .unwrap_or_default();
    // DRA: plugins register under the root dir, claims are prepared for API pods
    let dra = std::sync::Arc::new(
        crate::dra::Manager::new(
            crate::dra::Config {
                node_name: node_name.clone(),
                wipe_delay: config.static_pods.dra_slice_wipe_delay,
                ..crate::dra::Config::under_root(
                    &config.root_dir,
                    config.static_pods.cdi_spec_dirs.clone(),
                )
            },
            client.clone(),
        )
        .with_metrics(rt.metrics_handle()),
    );
    tasks.spawn(dra.clone().run(shutdown.clone()));
    // Device plugins register under the root dir too; the pods' devices are reported on
    // the pod-resources socket, with their DRA claims.
    let devices = std::sync::Arc::new(
        crate::deviceplugin::Manager::new(
            crate::deviceplugin::Config {
                grace_period: config.static_pods.device_plugin_grace_period,
                ..crate::deviceplugin::Config::under_root(
                    &config.root_dir,
                    config.static_pods.cdi_spec_dirs.clone(),
                )
            },
            active.clone(),
            shutdown.clone(),
        )
        .with_metrics(rt.metrics_handle()),
    );
    tasks.spawn(devices.clone().run(shutdown.clone()));
    tasks.spawn(crate::podresources::serve(
        config.root_dir.clone(),
        crate::podresources::Providers {
            active: active.clone(),
            devices: Some(devices.clone()),
            dra: Some(dra.clone()),
        },
        shutdown.clone(),
    ));
    let api_source = api_source.with_dra(dra).with_devices(devices.clone());
    let mut statics = crate::static_pod::Manager::new(
        config.static_pods.clone(),
        rt.clone(),
        node_ctx.clone(),
        uids.clone(),
        api_source.clone(),
        active.clone(),
    )
    .map_err(NodeError::Flag)?;
    statics.start().await;
    let static_pods = statics.static_pods();
    let server_pods = statics.server_pods();
    let mirror_pods = client
        .clone()
        .map(|c| statics.mirror_pods(c, shutdown.clone()));
    {
        let token = shutdown.clone();
        tasks.spawn(async move { statics.run(token).await });
    }
    {
        let addr = std::net::SocketAddr::new(config.address, config.port);
        let (log_dir, tls_dir, token) = (
            config.pod_log_dir.clone(),
            config.root_dir.join("pki"),
            shutdown.clone(),
        );
        let server_config = server::ServerConfig {
            addr,
            log_dir,
            uids: uids.clone(),
            rt: rt.clone(),
            tls_dir,
            names: vec![node_name.clone(), node_ip.to_string()],
            auth,
            active: active.clone(),
            server_pods,
            configz: config_file::configz(&config),
        };
        tasks.spawn(async move {
            if let Err(e) = server::serve(server_config, token).await {
                tracing::error!(error = %e, "kubelet server");
            }
        });
    }
    let Some(client) = client else {
        // standalone: the static pods are all the pods there are
        devices.set_ready();
        shutdown.cancelled().await;
        while tasks.join_next().await.is_some() {}
        return Ok(());
    };
    if config.pod_cidr.is_some() {
        // The pods are up; the apiserver may not be yet.
        tokio::select! {
            _ = shutdown.cancelled() => {
                while tasks.join_next().await.is_some() {}
                return Ok(());
            }
            () = registration.register_until_done(&client) => {}
        }
        tracing::info!(node = %node_name, ip = %node_ip, "registered node");
    }
    if let Some(mirror_pods) = mirror_pods {
        tasks.spawn(mirror_pods);
    }
    if let Some(storage) = config.local_storage_path.clone() {
        tasks.spawn(crate::volume::claim::run_cleanup(
            client.clone(),
            storage,
            shutdown.clone(),
        ));
    }
    {
        let (client, node, token, every) = (
            client.clone(),
            node_name.clone(),
            shutdown.clone(),
            config.lease_renew_interval,
        );
        tasks.spawn(async move { renew_lease(client, node, every, token).await });
    }
    {
        let (client, node, token, max_pods) = (
            client.clone(),
            node_name.clone(),
            shutdown.clone(),
            config.max_pods,
        );
        let port = config.port;
        let facts = StatusFacts {
            ip: node_ips,
            max_pods,
            port,
            runtime_version: runtime_version.clone(),
            thresholds: thresholds.clone(),
            soft: soft.clone(),
            rt: rt.clone(),
            active: active.clone(),
            evict: evict_tx,
            image_gc,
        };
        tasks.spawn(async move { post_status(client, node, facts, token).await });
    }
    tasks.spawn(post_device_capacity(
        client.clone(),
        node_name.clone(),
        devices,
        shutdown.clone(),
    ));
    let result = sync::run(
        client,
        api_source,
        rt,
        node_ctx,
        uids,
        static_pods,
        active,
        evict_rx,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    result
}

fn parse_labels(raw: &[String]) -> Result<Vec<(String, String)>, NodeError> {
    raw.iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    NodeError::Flag(format!("--node-labels entry {s:?} is not key=value"))
                })
        })
        .collect()
}

fn host_dns() -> DnsConfig {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut dns = DnsConfig {
        nameservers: Vec::new(),
        searches: Vec::new(),
        options: Vec::new(),
    };
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("nameserver") => dns
                .nameservers
                .extend(w.next().and_then(|a| a.parse::<IpAddr>().ok())),
            Some("search") => dns.searches.extend(w.map(String::from)),
            Some("options") => dns.options.extend(w.map(String::from)),
            _ => {}
        }
    }
    dns
}

/// The runtime's version as the Node reports it (`containerd://<version>`); a runtime that
/// does not answer is reported as `containerd://unknown`.
async fn runtime_version(containerd: &crate::containerd::Containerd) -> String {
    match tokio::time::timeout(Duration::from_secs(10), containerd.runtime_version()).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "asking containerd its version");
            "containerd://unknown".into()
        }
        Err(_) => {
            tracing::warn!(socket = %containerd.address().display(), "containerd did not say its version within 10 s");
            "containerd://unknown".into()
        }
    }
}

/// What the Node's status reports about this kubelet besides its name, and what measuring
/// its pressure needs.
struct StatusFacts {
    ip: info::NodeIps,
    max_pods: u32,
    port: u16,
    runtime_version: String,
    thresholds: pressure::Thresholds,
    /// `--eviction-soft` and its grace periods.
    soft: pressure::Soft,
    rt: Runtime,
    active: crate::pod::ActivePods,
    /// Pods to evict, to the sync loop.
    evict: tokio::sync::mpsc::Sender<(String, String)>,
    /// Node-level reclaim under disk pressure.
    image_gc: std::sync::Arc<crate::images::gc::ImageGc>,
}

/// What the Node is registered with.
struct Registration {
    runtime_version: String,
    name: String,
    ip: info::NodeIps,
    labels: Vec<(String, String)>,
    max_pods: u32,
    port: u16,
    /// `--pod-cidr`: set on a Node this kubelet creates (node IPAM keeps a CIDR it finds).
    pod_cidr: Option<String>,
    /// `--local-storage-path`, announced on the Node.
    local_storage_path: Option<PathBuf>,
}

impl Registration {
    /// [`Registration::register`] until it works (the apiserver may come up after the
    /// kubelet, as with a control plane of static pods).
    async fn register_until_done(&self, client: &Client) {
        let mut wait = Duration::from_millis(500);
        loop {
            match self.register(client).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::info!(node = %self.name, error = %e, "registering the node; retrying")
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// Create the Node, or refresh an existing one's labels; then post its status.
    async fn register(&self, client: &Client) -> Result<(), NodeError> {
        let name = &self.name;
        let nodes: Api<Node> = Api::all(client.clone());
        let mut labels = serde_json::Map::new();
        labels.insert("kubernetes.io/hostname".into(), json!(name));
        labels.insert("kubernetes.io/os".into(), json!("linux"));
        labels.insert("kubernetes.io/arch".into(), json!(info::arch()));
        for (k, v) in &self.labels {
            labels.insert(k.clone(), json!(v));
        }
        let mut annotations = serde_json::Map::new();
        if let Some(p) = &self.local_storage_path {
            annotations.insert(
                "kaze.io/local-storage-path".into(),
                json!(p.display().to_string()),
            );
        }
        match nodes
            .get_opt(name)
            .await
            .map_err(api(format!("reading node {name}")))?
        {
            None => {
                // Registered not-ready, as upstream's `TaintNodesByCondition` admission does
                // to new Nodes: nothing is scheduled here before the node lifecycle
                // controller has seen it report Ready and removed the taint.
                let mut node = json!({"metadata": {"name": name, "labels": labels, "annotations": annotations},
                    "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]}});
                if let Some(cidr) = &self.pod_cidr {
                    // one CIDR, or one of each family (`--pod-cidr=v4,v6`)
                    let all: Vec<&str> = cidr.split(',').map(str::trim).collect();
                    node["spec"]["podCIDR"] = json!(all[0]);
                    node["spec"]["podCIDRs"] = json!(all);
                }
                let node: Node = serde_json::from_value(node)
                    .map_err(|e| NodeError::Flag(format!("building node {name}: {e}")))?;
                match nodes.create(&PostParams::default(), &node).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => return Err(api(format!("registering node {name}"))(e)),
                }
            }
            Some(_) => {
                nodes
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(
                            &json!({"metadata": {"labels": labels, "annotations": annotations}}),
                        ),
                    )
                    .await
                    .map_err(api(format!("updating labels of node {name}")))?;
            }
        }
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&info::status(
                    name,
                    self.ip,
                    self.max_pods,
                    self.port,
                    &self.runtime_version,
                    pressure::conditions(pressure::Pressure::default(), &mut Default::default()),
                )),
            )
            .await
            .map_err(api(format!("posting the status of node {name}")))?;
        ensure_csi_node(client, name).await
    }
}

/// The node's CSINode, as upstream's kubelet creates it when its CSI plugin starts: named
/// after the Node and owned by it (so it goes with it), no drivers until one registers.
async fn ensure_csi_node(client: &Client, name: &str) -> Result<(), NodeError> {
    use k8s_openapi::api::storage::v1::CSINode;
    let csi_nodes: Api<CSINode> = Api::all(client.clone());
    let what = || format!("creating the CSINode of node {name}");
    if csi_nodes
        .get_opt(name)
        .await
        .map_err(api(what()))?
        .is_some()
    {
        return Ok(());
    }
    let node = Api::<Node>::all(client.clone())
        .get(name)
        .await
        .map_err(api(what()))?;
    let owner = json!({"apiVersion": "v1", "kind": "Node", "name": name,
        "uid": node.metadata.uid.unwrap_or_default()});
    let csi_node: CSINode = serde_json::from_value(
        json!({"metadata": {"name": name, "ownerReferences": [owner]}, "spec": {"drivers": []}}),
    )
    .map_err(|e| NodeError::Flag(format!("building the CSINode of node {name}: {e}")))?;
    match csi_nodes.create(&PostParams::default(), &csi_node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(api(what())(e)),
    }
}

async fn wait_for_pod_cidr(client: &Client, name: &str) -> Result<String, NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut waited = 0u32;
    loop {
        let node = nodes
            .get(name)
            .await
            .map_err(api(format!("reading node {name}")))?;
        // all of a dual-stack node's ranges, comma-separated (podCIDR is the first)
        let spec = node.spec.unwrap_or_default();
        let cidrs = match spec.pod_cidrs.filter(|c| !c.is_empty()) {
            Some(all) => all.join(","),
            None => spec.pod_cidr.unwrap_or_default(),
        };
        if !cidrs.is_empty() {
            return Ok(cidrs);
        }
        if waited % 20 == 19 {
            tracing::info!(node = %name, "waiting for a pod CIDR (is the controller-manager's nodeipam running?)");
        }
        waited += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The node heartbeat: renew `kube-node-lease/<node>` every `every`.
async fn renew_lease(
    client: Client,
    node: String,
    every: Duration,
    shutdown: component::CancellationToken,
) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        let now = Timestamp::now().to_string();
        let spec = json!({"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now});
        let res = match leases.get_opt(&node).await {
            Ok(Some(_)) => leases
                .patch(
                    &node,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"spec": spec})),
                )
                .await
                .map(|_| ()),
            Ok(None) => {
                let lease: Lease = serde_json::from_value(json!({"metadata": {"name": node, "namespace": "kube-node-lease"}, "spec": spec}))
                    .unwrap_or_default();
                leases
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            tracing::warn!(node = %node, error = %e, "renewing the node lease");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Measure the node's pressure every 10 s and post its status when a condition changes, and
/// every minute (the Lease carries the frequent heartbeat, as upstream); under memory or disk
/// pressure, name one pod to evict to the sync loop (see [`pressure`], [`local_storage`]),
/// and any pod over its local storage limits.
async fn post_status(
    client: Client,
    node: String,
    facts: StatusFacts,
    shutdown: component::CancellationToken,
) {
    let StatusFacts {
        ip,
        max_pods,
        port,
        runtime_version,
        thresholds,
        mut soft,
        rt,
        active,
        evict,
        image_gc,
    } = facts;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut since = std::collections::HashMap::new();
    let mut posted: Option<(pressure::Pressure, tokio::time::Instant)> = None;
    // upstream's node events (`kubectl describe node`, `kubectl events`)
    let mut events = crate::pod::events::Recorder::for_node(Some(client), &node);
    events.normal("Starting", "Starting kubelet.");
    let mut reported = std::collections::HashMap::new();
    loop {
        let signals = pressure::observe(&rt.config().root_dir);
        // `now`: what the conditions say; `act`: the thresholds to evict by
        let (now, act) = soft.observe(&thresholds, &signals, std::time::Instant::now());
        for (uid, message) in pressure::over_size_limit(&rt, &active.list()) {
            tracing::warn!(node = %node, pod = %uid, %message, "evicting a pod over an emptyDir sizeLimit");
            let _ = evict.send((uid, message)).await;
        }
        for (uid, message) in local_storage::over_limits(&rt, &active.list()).await {
            tracing::warn!(node = %node, pod = %uid, %message, "evicting a pod over its ephemeral-storage limit");
            let _ = evict.send((uid, message)).await;
        }
        if act.pressure(&signals).disk {
            // Node-level resources first (upstream's reclaimNodeLevelResources): unused
            // images; pods are evicted only if that did not relieve the pressure.
            match image_gc.delete_unused().await {
                Ok(c) if !c.deleted.is_empty() => {
                    tracing::info!(node = %node, images = ?c.deleted, freed = c.freed, "disk pressure: deleted unused images")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "disk pressure: deleting unused images")
                }
            }
            let after = pressure::observe(&rt.config().root_dir);
            let (_, act) = soft.observe(&thresholds, &after, std::time::Instant::now());
            if let Some(shortage) = local_storage::DiskShortage::of(&act, &after) {
                if let Some((uid, message)) =
                    local_storage::disk_victim(&rt, &active.list(), &shortage).await
                {
                    tracing::warn!(node = %node, pod = %uid, %message, "evicting a pod under disk pressure");
                    let _ = evict.send((uid, message)).await;
                }
            }
        }
        if act.pressure(&signals).pid {
            let limit = act.pids.unwrap_or(pressure::Limit::Amount(0));
            if let Some((uid, message)) = pids::victim(&rt, &active.list(), limit, &signals) {
                tracing::warn!(node = %node, pod = %uid, %message, "evicting a pod under PID pressure");
                let _ = evict.send((uid, message)).await;
            }
        }
        if act.pressure(&signals).memory {
            let limit = act.memory.unwrap_or(pressure::Limit::Amount(0));
            if let Some((uid, message)) =
                pressure::memory_victim(&rt, &active.list(), limit, &signals)
            {
                tracing::warn!(node = %node, pod = %uid, %message, "evicting a pod under memory pressure");
                let _ = evict.send((uid, message)).await;
            }
        }
        let due = posted.is_none_or(|(p, at)| p != now || at.elapsed() >= Duration::from_secs(60));
        if due {
            let mut status = info::status(
                &node,
                ip,
                max_pods,
                port,
                &runtime_version,
                pressure::conditions(now, &mut since),
            );
            let root_fs = crate::sys::statvfs(&rt.config().root_dir).map(|fs| fs.capacity);
            info::add_allocatable(&mut status, root_fs, &thresholds);
            match nodes
                .patch_status(&node, &PatchParams::default(), &Patch::Merge(&status))
                .await
            {
                Ok(_) => {
                    posted = Some((now, tokio::time::Instant::now()));
                    let conditions = status.pointer("/status/conditions");
                    for reason in condition_events(conditions, &mut reported) {
                        events.normal(reason, &format!("Node {node} status is now: {reason}"));
                    }
                }
                Err(e) => tracing::warn!(node = %node, error = %e, "posting node status"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// Keep the Node's `capacity` and `allocatable` of device plugin resources as the device
/// manager counts them (upstream sets them in every status update): patched when they
/// change, looked at when a plugin's devices change and every few seconds (a resource
/// past its grace period goes then). Merge patches of these keys only: the other
/// resources are [`post_status`]'s.
async fn post_device_capacity(
    client: Client,
    node: String,
    devices: std::sync::Arc<crate::deviceplugin::Manager>,
    shutdown: component::CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client);
    let mut posted = None;
    loop {
        let now = devices.capacity();
        if posted.as_ref() != Some(&now) && !(now.0.is_empty() && posted.is_none()) {
            let quantities = |m: &std::collections::BTreeMap<String, i64>| -> serde_json::Map<String, serde_json::Value> {
                m.iter().map(|(k, v)| (k.clone(), json!(v.to_string()))).collect()
            };
            let patch = json!({"status": {"capacity": quantities(&now.0), "allocatable": quantities(&now.1)}});
            match nodes
                .patch_status(&node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(node = %node, capacity = ?now.0, allocatable = ?now.1, "device plugin resources");
                    posted = Some(now);
                }
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "posting the node's device plugin resources")
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = devices.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// The node status events upstream's kubelet records for conditions whose status is new
/// or changed since `reported` (`NodeHasSufficientMemory`, ..., `NodeReady`).
fn condition_events(
    conditions: Option<&serde_json::Value>,
    reported: &mut std::collections::HashMap<String, String>,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    for c in conditions.and_then(|c| c.as_array()).into_iter().flatten() {
        let (Some(kind), Some(status)) = (c["type"].as_str(), c["status"].as_str()) else {
            continue;
        };
        let reason = match (kind, status == "True") {
            ("MemoryPressure", false) => "NodeHasSufficientMemory",
            ("MemoryPressure", true) => "NodeHasInsufficientMemory",
            ("DiskPressure", false) => "NodeHasNoDiskPressure",
            ("DiskPressure", true) => "NodeHasDiskPressure",
            ("PIDPressure", false) => "NodeHasSufficientPID",
            ("PIDPressure", true) => "NodeHasInsufficientPID",
            ("Ready", true) => "NodeReady",
            ("Ready", false) => "NodeNotReady",
            _ => continue,
        };
        if reported
            .insert(kind.to_string(), status.to_string())
            .as_deref()
            != Some(status)
        {
            out.push(reason);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn node_condition_events_follow_changes() {
        let mut reported = Default::default();
        let conds = |mem: &str| serde_json::json!([{"type": "MemoryPressure", "status": mem}, {"type": "Ready", "status": "True"}]);
        assert_eq!(
            super::condition_events(Some(&conds("False")), &mut reported),
            ["NodeHasSufficientMemory", "NodeReady"]
        );
        assert!(super::condition_events(Some(&conds("False")), &mut reported).is_empty());
        assert_eq!(
            super::condition_events(Some(&conds("True")), &mut reported),
            ["NodeHasInsufficientMemory"]
        );
    }

    #[derive(Parser)]
    struct Kubelet {
        #[command(flatten)]
        config: super::Config,
    }

    #[test]
    fn static_pod_flags_parse_beside_the_others() {
        Kubelet::command().debug_assert();
        let c = Kubelet::parse_from([
            "kubelet",
            "--pod-manifest-path",
            "/etc/kubernetes/manifests",
            "--file-check-frequency",
            "5s",
            "--manifest-url",
            "http://example/pods",
            "--manifest-url-header",
            "a:b,c:d",
            "--pod-server",
            "--pod-cidr",
            "10.1.2.0/24",
        ])
        .config;
        let s = &c.static_pods;
        assert_eq!(
            s.pod_manifest_path.as_deref(),
            Some(std::path::Path::new("/etc/kubernetes/manifests"))
        );
        assert_eq!(s.file_check_frequency, std::time::Duration::from_secs(5));
        assert_eq!(s.http_check_frequency, std::time::Duration::from_secs(20));
        assert_eq!(s.manifest_url_header, vec!["a:b", "c:d"]);
        assert_eq!(c.pod_cidr.as_deref(), Some("10.1.2.0/24"));
        assert!(s.pod_server);
        assert!(!Kubelet::parse_from(["kubelet"])
            .config
            .static_pods
            .enabled());
    }
}
