//! `kaze`: every kaze component in one binary, hyperkube-style. `kaze <component> ...`, or
//! the binary invoked through a symlink named after the upstream component
//! (`kube-apiserver`), or `kaze server` for a whole control plane.

use anyhow::Context;
use clap::{Parser, Subcommand};

mod containerd;

#[derive(Parser)]
#[command(
    name = "kaze",
    version,
    about = "kaze: a Kubernetes distribution with eBPF-first networking"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// The Kubernetes API server (also invoked as `kube-apiserver`).
    Apiserver(apiserver::Config),
    /// The scheduler (also invoked as `kube-scheduler`).
    Scheduler(scheduler::Config),
    /// The controller-manager (also invoked as `kube-controller-manager`).
    ControllerManager(controllers::Config),
    /// Cluster DNS for the cluster domain, fed by API watches (also invoked as `kube-dns`).
    Dns(dns::Config),
    /// The node agent: registers the node and runs its pods on containerd (also invoked as
    /// `kubelet`).
    Kubelet(kubelet::node::Config),
    /// A whole cluster on this machine: today the control plane (the apiserver on the
    /// embedded store, or etcd with --etcd-servers; the scheduler; the controller-manager).
    Server(ServerArgs),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Run only the control plane: no kubelet, containerd or DNS on this machine.
    #[arg(long)]
    disable_agent: bool,
    #[command(flatten)]
    apiserver: apiserver::Config,
    #[command(flatten)]
    leader: component::leader::LeaderElectionArgs,
    /// CIDR that node pod CIDRs are carved from.
    #[arg(long = "cluster-cidr", default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// The cluster DNS Service address (the `kube-dns` Service's ClusterIP).
    #[arg(long = "cluster-dns", default_value = "10.43.0.10")]
    cluster_dns: std::net::IpAddr,
    /// The cluster domain.
    #[arg(long = "cluster-domain", default_value = "cluster.local")]
    cluster_domain: String,
    /// This machine's address, where node components serve (default: the first global IPv4
    /// address).
    #[arg(long = "node-ip")]
    node_ip: Option<std::net::IpAddr>,
    /// Port the host DNS server listens on (the kube-dns Service maps 53 to it).
    #[arg(long = "dns-port", default_value_t = 10053)]
    dns_port: u16,
    /// Port of the DNS server's /health, /ready and /metrics.
    #[arg(long = "dns-http-port", default_value_t = 8181)]
    dns_http_port: u16,
    /// containerd socket to run pods with; without it kaze starts and supervises its own.
    #[arg(long = "container-runtime-endpoint")]
    container_runtime_endpoint: Option<String>,
    /// Where the containerd kaze starts keeps its socket and state (a tmpfs is right).
    #[arg(long = "containerd-run-dir", default_value = "/run/kaze/containerd")]
    containerd_run_dir: std::path::PathBuf,
    /// This node's name (default: the host name).
    #[arg(long = "node-name")]
    node_name: Option<String>,
    /// Port of this node's kubelet server (`kubectl logs` goes through it).
    #[arg(long = "kubelet-port", default_value_t = 10250)]
    kubelet_port: u16,
    /// The bridge this node's pods attach to.
    #[arg(long = "cni-bridge", default_value = "kaze0")]
    cni_bridge: String,
}

/// `kaze dns`'s flag defaults, for the DNS server `kaze server` runs.
#[derive(Parser)]
struct DnsDefaults {
    #[command(flatten)]
    config: dns::Config,
}

/// Create or update the `kube-system/kube-dns` Service and its EndpointSlice so the cluster
/// DNS address leads to this machine's DNS server.
async fn publish_kube_dns(
    kubeconfig: &std::path::Path,
    cluster_dns: std::net::IpAddr,
    node_ip: std::net::IpAddr,
    dns_port: u16,
    http_port: u16,
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, PostParams};
    let client = component::client(Some(kubeconfig)).await?;
    let (svc, slice) = dns::bootstrap::kube_dns_objects(cluster_dns, node_ip, dns_port, http_port);
    let ns = dns::bootstrap::NAMESPACE;
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    if svcs.get_opt(dns::bootstrap::NAME).await?.is_none() {
        svcs.create(&PostParams::default(), &svc)
            .await
            .context("creating the kube-dns Service")?;
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client, ns);
    let name = slice.metadata.name.clone().unwrap_or_default();
    match slices.get_opt(&name).await? {
        Some(cur) => {
            let mut next = slice;
            next.metadata.resource_version = cur.metadata.resource_version;
            slices
                .replace(&name, &PostParams::default(), &next)
                .await
                .context("updating the kube-dns EndpointSlice")?;
        }
        None => {
            slices
                .create(&PostParams::default(), &slice)
                .await
                .context("creating the kube-dns EndpointSlice")?;
        }
    }
    Ok(())
}

/// Upstream component names that select a subcommand when the binary is called by them.
const ALIASES: &[(&str, &str)] = &[
    ("kube-apiserver", "apiserver"),
    ("kube-scheduler", "scheduler"),
    ("kube-controller-manager", "controller-manager"),
    ("kube-dns", "dns"),
    ("kubelet", "kubelet"),
];

fn args() -> Vec<String> {
    let mut args: Vec<String> = std::env::args().collect();
    let called_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some((_, sub)) = ALIASES.iter().find(|(alias, _)| *alias == called_as) {
        args.insert(1, sub.to_string());
    }
    args
}

/// `kaze server`: the apiserver, then the control-plane components as its clients through
/// the kubeconfig it writes, all stopped together.
async fn server(args: ServerArgs, shutdown: component::CancellationToken) -> anyhow::Result<()> {
    if args.disable_agent {
        tracing::info!("--disable-agent: control plane only");
    }
    let data_dir = args.apiserver.data_dir.clone();
    let api = apiserver::start(args.apiserver.clone())
        .await
        .context("kaze server: starting the apiserver")?;
    tracing::info!(
        "apiserver ready at {}; export KUBECONFIG={}",
        api.url(),
        api.kubeconfig_path().display()
    );
    let sched = scheduler::Config {
        kubeconfig: Some(api.kubeconfig_path().to_path_buf()),
        scheduler_name: "default-scheduler".into(),
        config: None,
        policy_config_file: None,
        leader: args.leader.clone(),
        parallelism: 16,
    };
    let cm = controllers::Config {
        kubeconfig: Some(api.kubeconfig_path().to_path_buf()),
        controllers: vec!["*".into()],
        cluster_cidr: args.cluster_cidr.clone(),
        node_cidr_mask_size: 24,
        node_monitor_grace_period: std::time::Duration::from_secs(40),
        node_monitor_period: std::time::Duration::from_secs(5),
        leader: args.leader.clone(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut own_containerd = None;
    if !args.disable_agent {
        let node_ip = args.node_ip.unwrap_or_else(component::detect_node_ip);
        let dns_config = dns::Config {
            cluster_domain: args.cluster_domain.clone(),
            bind: vec![std::net::SocketAddr::new(node_ip, args.dns_port)],
            http_bind: std::net::SocketAddr::new(node_ip, args.dns_http_port),
            kubeconfig: Some(api.kubeconfig_path().to_path_buf()),
            ..DnsDefaults::parse_from(["dns"]).config
        };
        publish_kube_dns(
            api.kubeconfig_path(),
            args.cluster_dns,
            node_ip,
            args.dns_port,
            args.dns_http_port,
        )
        .await
        .context("kaze server: publishing the kube-dns Service")?;
        let token = shutdown.child_token();
        tasks.spawn(async move {
            dns::run(dns_config, token)
                .await
                .map_err(|e| anyhow::Error::new(e).context("kaze server: dns"))
        });

        let endpoint = match &args.container_runtime_endpoint {
            Some(e) => e.clone(),
            None => {
                let data_dir = data_dir.clone();
                let run_dir = args.containerd_run_dir.clone();
                let c = tokio::task::spawn_blocking(move || {
                    containerd::Containerd::start(&data_dir, &run_dir)
                })
                .await
                .context("kaze server: starting containerd")??;
                let socket = c.socket.display().to_string();
                own_containerd = Some(c);
                socket
            }
        };
        let kubelet = kubelet::node::Config {
            kubeconfig: Some(api.kubeconfig_path().to_path_buf()),
            hostname_override: args.node_name.clone(),
            node_ip: Some(node_ip),
            container_runtime_endpoint: endpoint,
            // <data-dir>/agent/images holds the air-gap image tarballs, as in k3s.
            root_dir: data_dir.clone(),
            pod_log_dir: "/var/log/pods".into(),
            cluster_dns: vec![args.cluster_dns],
            cluster_domain: args.cluster_domain.clone(),
            pod_infra_container_image: "docker.io/kaze/pause:1".into(),
            cni_bin_dir: "/usr/lib/cni".into(),
            cni_bridge: args.cni_bridge.clone(),
            ip_masq: true,
            node_labels: vec!["node-role.kubernetes.io/control-plane=true".into()],
            max_pods: 110,
            port: args.kubelet_port,
            cgroup_root: None,
            lease_renew_interval: std::time::Duration::from_secs(10),
        };
        let token = shutdown.child_token();
        tasks.spawn(async move {
            kubelet::node::run(kubelet, token)
                .await
                .map_err(|e| anyhow::Error::new(e).context("kaze server: kubelet"))
        });
    }
    let token = shutdown.child_token();
    tasks.spawn(async move {
        scheduler::run(sched, token)
            .await
            .map_err(|e| anyhow::Error::new(e).context("kaze server: scheduler"))
    });
    let token = shutdown.child_token();
    tasks.spawn(async move {
        controllers::run(cm, token)
            .await
            .map_err(|e| anyhow::Error::new(e).context("kaze server: controller-manager"))
    });
    // The first component to fail stops the others: a half-running control plane helps
    // nobody and hides the error.
    let result = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        Some(r) = tasks.join_next() => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("kaze server: component task: {e}")),
        },
    };
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    api.shutdown().await;
    // containerd goes last; the pods it started keep running under their shims.
    drop(own_containerd);
    result
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(args());
    component::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let shutdown = component::shutdown_on_signals();
        match cli.command {
            Command::Apiserver(config) => {
                apiserver::run(config, shutdown).await.context("apiserver")
            }
            Command::Scheduler(config) => {
                scheduler::run(config, shutdown).await.context("scheduler")
            }
            Command::ControllerManager(config) => controllers::run(config, shutdown)
                .await
                .context("controller-manager"),
            Command::Dns(config) => dns::run(config, shutdown).await.context("dns"),
            Command::Kubelet(config) => kubelet::node::run(config, shutdown)
                .await
                .context("kubelet"),
            Command::Server(args) => server(args, shutdown).await,
        }
    })
}
