//! `kaze`: every kaze component in one binary, hyperkube-style. `kaze <component> ...`, or
//! the binary invoked through a symlink named after the upstream component
//! (`kube-apiserver`), or `kaze server` for a whole control plane.

use anyhow::Context;
use clap::{Parser, Subcommand};

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

#[derive(Subcommand)]
enum Command {
    /// The Kubernetes API server (also invoked as `kube-apiserver`).
    Apiserver(apiserver::Config),
    /// The scheduler (also invoked as `kube-scheduler`).
    Scheduler(scheduler::Config),
    /// The controller-manager (also invoked as `kube-controller-manager`).
    ControllerManager(controllers::Config),
    /// A whole cluster on this machine: today the control plane (the apiserver on the
    /// embedded store, or etcd with --etcd-servers; the scheduler; the controller-manager).
    Server(ServerArgs),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Run only the control plane, no node components on this machine. The node components
    /// (kubelet, proxy, dns) are not part of `kaze server` yet, so today this changes nothing;
    /// it is accepted so scripts written now keep working.
    #[arg(long)]
    disable_agent: bool,
    #[command(flatten)]
    apiserver: apiserver::Config,
    #[command(flatten)]
    leader: component::leader::LeaderElectionArgs,
    /// CIDR that node pod CIDRs are carved from.
    #[arg(long = "cluster-cidr", default_value = "10.42.0.0/16")]
    cluster_cidr: String,
}

/// Upstream component names that select a subcommand when the binary is called by them.
const ALIASES: &[(&str, &str)] = &[
    ("kube-apiserver", "apiserver"),
    ("kube-scheduler", "scheduler"),
    ("kube-controller-manager", "controller-manager"),
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
    let api = apiserver::start(args.apiserver)
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
        leader: args.leader.clone(),
    };
    let mut tasks = tokio::task::JoinSet::new();
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
            Command::Server(args) => server(args, shutdown).await,
        }
    })
}
