//! The node half that `kaze server` (unless `--disable-agent`) and `kaze agent` share:
//! containerd (started and stopped here unless `--container-runtime-endpoint` names one; not
//! restarted if it dies)
//! and the kubelet, as API clients through a kubeconfig.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;

use crate::containerd::Containerd;

/// Node flags common to `kaze server` and `kaze agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// This node's name (default: the host name).
    #[arg(long = "node-name")]
    pub node_name: Option<String>,
    /// This machine's address, where node components serve (default: the first global IPv4
    /// address).
    #[arg(long = "node-ip")]
    pub node_ip: Option<IpAddr>,
    /// This node's public address, reported as its ExternalIP (k3s's flag): servicelb gives
    /// LoadBalancer Services a node's ExternalIP rather than its InternalIP, and the proxy
    /// serves NodePorts on it too.
    #[arg(long = "node-external-ip")]
    pub node_external_ip: Option<IpAddr>,
    /// containerd socket to run pods with; without it kaze starts (and stops) its own.
    #[arg(long = "container-runtime-endpoint")]
    pub container_runtime_endpoint: Option<String>,
    /// Where the containerd kaze starts keeps its socket and state (a tmpfs is right).
    #[arg(long = "containerd-run-dir", default_value = "/run/kaze/containerd")]
    pub containerd_run_dir: PathBuf,
    /// Port of this node's kubelet server (`kubectl logs` goes through it).
    #[arg(long = "kubelet-port", default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Unsafe sysctls (or `prefix.*` patterns) this node's pods may set (the kubelet's
    /// `--allowed-unsafe-sysctls`).
    #[arg(long = "allowed-unsafe-sysctls", value_delimiter = ',')]
    pub allowed_unsafe_sysctls: Vec<String>,
    /// Hard eviction thresholds of the node's kubelet (its `--eviction-hard`).
    #[arg(long = "eviction-hard", default_value = kubelet::node::pressure::DEFAULT_EVICTION_HARD)]
    pub eviction_hard: String,
    /// The bridge this node's pods attach to.
    #[arg(long = "cni-bridge", default_value = "kaze0")]
    pub cni_bridge: String,
    /// The cluster DNS Service address written into pods' resolv.conf.
    #[arg(long = "cluster-dns", default_value = "10.43.0.10")]
    pub cluster_dns: IpAddr,
    /// The cluster domain.
    #[arg(long = "cluster-domain", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// How this node load-balances Services: `ebpf` (tc programs on the pod bridge, each
    /// pod's veth and the uplink) or `iptables`.
    #[arg(long = "proxy-mode", value_enum, default_value_t = proxy::ProxyMode::Ebpf)]
    pub proxy_mode: proxy::ProxyMode,
    /// Where the eBPF proxy pins its maps and links (bpffs). One per node: several nodes
    /// simulated on one machine share the bpffs.
    #[arg(long = "bpf-pin-root", default_value = proxy::DEFAULT_PIN_ROOT)]
    pub bpf_pin_root: PathBuf,
    /// Do not run the Service proxy on this node (k3s's flag name).
    #[arg(long = "disable-kube-proxy")]
    pub disable_kube_proxy: bool,
    /// Do not enforce NetworkPolicies on this node (k3s's flag name). They are enforced by
    /// the Service proxy, so `--disable-kube-proxy` turns them off too.
    #[arg(long = "disable-network-policy")]
    pub disable_network_policy: bool,
    /// Do not route other nodes' pod CIDRs via their addresses (when another network
    /// layer does, or nodes do not share a link).
    #[arg(long = "disable-pod-routes")]
    pub disable_pod_routes: bool,
    /// Port of the proxy's /metrics and /healthz (on loopback).
    #[arg(long = "proxy-metrics-port", default_value_t = 10249)]
    pub proxy_metrics_port: u16,
    /// Port of the proxy's health server on all addresses (kube-proxy's 10256: `/healthz`,
    /// which cloud load balancers probe, and `/livez`); 0: off.
    #[arg(long = "proxy-healthz-port", default_value_t = 10256)]
    pub proxy_healthz_port: u16,
    /// Static pod manifests (a directory, or one file) this node's kubelet runs, with
    /// mirror pods in the API (default: `<data-dir>/agent/pod-manifests`, as k3s).
    #[arg(long = "pod-manifest-path")]
    pub pod_manifest_path: Option<PathBuf>,
    /// A URL (http://) answering static pods (a Pod or a PodList) for this node's kubelet.
    #[arg(long = "manifest-url")]
    pub manifest_url: Option<String>,
    /// Let this node's kubelet take Pod manifests over its HTTPS port (`POST /pods`, a
    /// kaze extension; callers need a client certificate of the cluster CA).
    #[arg(long = "pod-server")]
    pub pod_server: bool,
    /// Where this node keeps the volumes of the built-in `kaze.io/local-path` provisioner
    /// (k3s's flag; default `<data-dir>/storage`): each claim's volume is a directory
    /// `pvc-<uid>_<namespace>_<name>` in it.
    #[arg(long = "default-local-storage-path")]
    pub default_local_storage_path: Option<PathBuf>,
    /// A flag for this node's kubelet, `name=value` (k3s's `--kubelet-arg`; repeatable),
    /// applied over what kaze sets: e.g. `--kubelet-arg=config=/etc/kaze/kubelet.yaml`,
    /// `--kubelet-arg=image-gc-high-threshold=90`.
    #[arg(long = "kubelet-arg")]
    pub kubelet_arg: Vec<String>,
}

impl NodeArgs {
    pub fn ip(&self) -> IpAddr {
        self.node_ip.unwrap_or_else(component::detect_node_ip)
    }

    /// Whether this node runs the Service proxy or the pod routes, which run as
    /// `system:kube-proxy` (upstream's `system:node-proxier`).
    pub fn runs_node_proxier(&self) -> bool {
        !self.disable_kube_proxy || !self.disable_pod_routes
    }
}

/// The kubeconfigs a node's components run with.
pub struct Kubeconfigs<'a> {
    /// The kubelet's (`system:node:<name>`).
    pub node: &'a Path,
    /// The Service proxy's and pod routes' (`system:kube-proxy`); needed when
    /// [`NodeArgs::runs_node_proxier`].
    pub proxy: Option<&'a Path>,
}

/// Start containerd if needed and spawn the kubelet (and proxy) into `components`; the kubelet's server admits
/// callers with a client certificate from `client_ca` (the cluster CA: the apiserver's).
/// Returns the containerd kaze started (dropping it stops containerd; pods keep running
/// under their shims).
pub async fn start(
    args: &NodeArgs,
    data_dir: &Path,
    kubeconfigs: Kubeconfigs<'_>,
    client_ca: &Path,
    labels: Vec<String>,
    components: &mut Components,
    shutdown: &component::CancellationToken,
) -> anyhow::Result<Option<Containerd>> {
    let Kubeconfigs {
        node: kubeconfig,
        proxy: proxy_kubeconfig,
    } = kubeconfigs;
    if args.runs_node_proxier() && proxy_kubeconfig.is_none() {
        anyhow::bail!("no kube-proxy kubeconfig for the Service proxy and pod routes");
    }
    let mut own = None;
    let endpoint = match &args.container_runtime_endpoint {
        Some(e) => e.clone(),
        None => {
            let (data_dir, run_dir) = (data_dir.to_path_buf(), args.containerd_run_dir.clone());
            let c = tokio::task::spawn_blocking(move || Containerd::start(&data_dir, &run_dir))
                .await
                .context("starting containerd")??;
            let socket = c.socket.display().to_string();
            own = Some(c);
            socket
        }
    };
    let pod_manifest_path = args
        .pod_manifest_path
        .clone()
        .unwrap_or_else(|| data_dir.join("agent").join("pod-manifests"));
    if args.pod_manifest_path.is_none() {
        // Where to put a static pod should be plain to see, as in k3s.
        if let Err(e) = std::fs::create_dir_all(&pod_manifest_path) {
            tracing::warn!(path = %pod_manifest_path.display(), error = %e, "creating the static pod manifest dir");
        }
    }
    let mut kubelet = kubelet::node::Config {
        config: None,
        kubeconfig: Some(kubeconfig.to_path_buf()),
        hostname_override: args.node_name.clone(),
        node_ip: Some(args.ip()),
        node_external_ip: args.node_external_ip,
        container_runtime_endpoint: endpoint,
        // <data-dir>/agent/images holds the air-gap image tarballs, as in k3s.
        root_dir: data_dir.to_path_buf(),
        pod_log_dir: "/var/log/pods".into(),
        cluster_dns: vec![args.cluster_dns],
        cluster_domain: args.cluster_domain.clone(),
        pod_infra_container_image: "docker.io/kaze/pause:1".into(),
        cni_bin_dir: "/usr/lib/cni".into(),
        cni_bridge: args.cni_bridge.clone(),
        // the pod routes masquerade pods' traffic leaving the pod network and leave
        // pod-to-pod traffic alone; without them, the bridge masquerades all but its subnet
        ip_masq: args.disable_pod_routes || proxy_kubeconfig.is_none(),
        node_labels: labels,
        max_pods: 110,
        port: args.kubelet_port,
        address: std::net::Ipv4Addr::UNSPECIFIED.into(),
        cgroup_root: None,
        lease_renew_interval: std::time::Duration::from_secs(10),
        client_ca_file: Some(client_ca.to_path_buf()),
        anonymous_auth: false,
        allowed_unsafe_sysctls: args.allowed_unsafe_sysctls.clone(),
        eviction_hard: args.eviction_hard.clone(),
        eviction_soft: String::new(),
        eviction_soft_grace_period: String::new(),
        container_log_max_size: "10Mi".into(),
        container_log_max_files: 5,
        pod_cidr: None,
        // k3s's local-path-provisioner keeps volumes in <data-dir>/storage
        local_storage_path: Some(
            args.default_local_storage_path
                .clone()
                .unwrap_or_else(|| data_dir.join("storage")),
        ),
        static_pods: kubelet::static_pod::Config {
            pod_manifest_path: Some(pod_manifest_path),
            manifest_url: args.manifest_url.clone(),
            pod_server: args.pod_server,
            ..Default::default()
        },
        image_gc: Default::default(),
        given: Vec::new(),
    };
    kubelet
        .apply_args(&args.kubelet_arg)
        .map_err(|e| anyhow::anyhow!("--kubelet-arg: {e}"))?;
    components.spawn("kubelet", shutdown, |token| {
        kubelet::node::run(kubelet, token)
    });

    // Bridged pod-to-pod replies must pass netfilter so the NAT of a Service connection is
    // undone (kube-proxy on a bridge CNI needs the same; both families, for the IPv6 half of
    // dual-stack Services), and the node routes pod traffic. (IPv6 forwarding is turned on
    // by the bridge plugin once a pod has an IPv6 address.)
    for (key, value) in [
        ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
        ("/proc/sys/net/bridge/bridge-nf-call-ip6tables", "1"),
        ("/proc/sys/net/ipv4/ip_forward", "1"),
    ] {
        if let Err(e) = std::fs::write(key, value) {
            tracing::warn!(%key, error = %e, "setting a sysctl the Service dataplane needs");
        }
    }
    let node_name = args
        .node_name
        .clone()
        .unwrap_or_else(|| kubelet::node::info::hostname().to_lowercase());
    let Some(proxy_kubeconfig) = proxy_kubeconfig.map(Path::to_path_buf) else {
        return Ok(own);
    };
    if !args.disable_pod_routes {
        let (kubeconfig, name, ip) = (proxy_kubeconfig.clone(), node_name.clone(), args.ip());
        components.spawn("pod routes", shutdown, |token| {
            crate::routes::run(kubeconfig, name, ip, token)
        });
    }
    if args.disable_kube_proxy {
        return Ok(own);
    }
    let mut proxy = proxy::Config::new(Some(proxy_kubeconfig));
    proxy.hostname_override = Some(node_name);
    proxy.proxy_mode = args.proxy_mode;
    // eBPF: the pod bridge and every pod's veth (requests from pods, replies between pods
    // of this node, replies routed to pods), and the uplink: ingress for NodePorts from
    // outside, egress for their replies once netfilter has undone the masquerade.
    proxy.pod_bridge = Some(args.cni_bridge.clone());
    proxy.bpf_pin_root = args.bpf_pin_root.clone();
    // the node's own processes (and hostNetwork pods) reach Services at the socket
    proxy.bpf_cgroup = proxy::BpfCgroup::Auto;
    proxy.interfaces = uplink(args.ip()).into_iter().collect();
    proxy.metrics_bind_address =
        std::net::SocketAddr::from(([127, 0, 0, 1], args.proxy_metrics_port));
    proxy.network_policy = !args.disable_network_policy;
    proxy.healthz_bind_address = proxy::BindAddress(
        (args.proxy_healthz_port != 0)
            .then(|| std::net::SocketAddr::from(([0, 0, 0, 0], args.proxy_healthz_port))),
    );
    components.spawn("proxy", shutdown, |token| proxy::run(proxy, token));
    Ok(own)
}

/// How long the components get to stop after a shutdown before the process gives up on them.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// The components one `kaze server` or `kaze agent` process runs, each a task with a name.
#[derive(Default)]
pub struct Components {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Components {
    /// Run `component(token)` as the component `name`, with a child of `shutdown` to stop it.
    pub fn spawn<F, Fut, E>(
        &mut self,
        name: &'static str,
        shutdown: &component::CancellationToken,
        component: F,
    ) where
        F: FnOnce(component::CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<anyhow::Error>,
    {
        let run = component(shutdown.child_token());
        let handle = self
            .tasks
            .spawn(async move { run.await.map_err(|e| e.into().context(name)) });
        self.names.insert(handle.id(), name);
    }

    /// The next component to end, by name, with how it ended.
    async fn next(&mut self) -> Option<(&'static str, anyhow::Result<()>)> {
        let joined = self.tasks.join_next_with_id().await?;
        Some(match joined {
            Ok((id, result)) => (self.names.remove(&id).unwrap_or("component"), result),
            Err(e) => {
                let name = self.names.remove(&e.id()).unwrap_or("component");
                (name, Err(anyhow::anyhow!("{name} task: {e}")))
            }
        })
    }
}

/// Wait for the first component to end or for `shutdown`; then stop the rest. The first
/// component to fail stops the others: a half-running node helps nobody and hides the error.
/// Components get [`STOP_DEADLINE`] to stop; one that does not is named in the log and
/// abandoned, so SIGTERM always ends the process.
pub async fn supervise(
    components: &mut Components,
    shutdown: &component::CancellationToken,
) -> anyhow::Result<()> {
    let result = tokio::select! {
        biased;
        _ = shutdown.cancelled() => Ok(()),
        Some((name, r)) = components.next() => {
            if r.is_ok() {
                tracing::warn!(component = name, "component ended; stopping the others");
            }
            r
        }
    };
    shutdown.cancel();
    let drained = tokio::time::timeout(STOP_DEADLINE, async {
        while let Some((name, r)) = components.next().await {
            match r {
                Ok(()) => tracing::debug!(component = name, "stopped"),
                Err(e) => tracing::warn!(
                    component = name,
                    error = format!("{e:#}"),
                    "stopped with an error"
                ),
            }
        }
    })
    .await;
    if drained.is_err() {
        let mut left: Vec<&str> = components.names.values().copied().collect();
        left.sort_unstable();
        tracing::error!(
            components = left.join(", "),
            "still running {STOP_DEADLINE:?} after the shutdown; abandoning them"
        );
        components.tasks.abort_all();
    }
    result
}

/// The interface holding `ip` (none for loopback: there is no uplink to attach to).
fn uplink(ip: IpAddr) -> Option<String> {
    if ip.is_loopback() {
        return None;
    }
    let out = std::process::Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .ok()?;
    // "2: eth0    inet 192.0.2.1/24 brd ... scope global eth0 ..."
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        let addr = fields.get(3)?.split('/').next()?;
        (addr.parse::<IpAddr>().ok()? == ip).then(|| fields[1].to_string())
    })
}
