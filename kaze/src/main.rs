//! `kaze`: every kaze component in one binary, hyperkube-style. `kaze <component> ...`, or
//! the binary invoked through a symlink named after the upstream component
//! (`kube-apiserver`, `kubelet`, ...), or `kaze server` for a whole cluster on this machine
//! and `kaze agent` to join another machine to it.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// mimalloc, not glibc's malloc: the apiserver's per-request JSON work allocates heavily from
/// both cores, and glibc's arenas contend (futex waits in `malloc`/`free` in a profile of
/// `cargo xtask bench apiserver`'s creates).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod agent;
mod bootstrap;
mod containerd;
mod images;
mod join;
mod kubeconfig;
mod node;
mod routes;
mod server;

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
    /// Service load-balancing: eBPF (default) or iptables (also invoked as `kube-proxy`).
    Proxy(proxy::Config),
    /// A whole cluster on this machine: apiserver (embedded store, or etcd with
    /// --etcd-servers), scheduler, controller-manager, and unless --disable-agent this
    /// machine's containerd, kubelet and cluster DNS.
    Server(server::ServerArgs),
    /// Join this machine to a cluster as a node: `kaze agent --server URL --token TOKEN`.
    Agent(agent::AgentArgs),
    /// Write a kubeconfig for a user with a client certificate from the cluster CA:
    /// `kaze kubeconfig --user jane --group devs --out jane.kubeconfig`.
    Kubeconfig(kubeconfig::KubeconfigArgs),
    /// Import image tarballs into this node's containerd (no registry needed):
    /// `kaze images import busybox.tar`.
    Images(images::ImagesArgs),
}

/// Upstream component names that select a subcommand when the binary is called by them.
const ALIASES: &[(&str, &str)] = &[
    ("kube-apiserver", "apiserver"),
    ("kube-scheduler", "scheduler"),
    ("kube-controller-manager", "controller-manager"),
    ("kube-dns", "dns"),
    ("kubelet", "kubelet"),
    ("kube-proxy", "proxy"),
];

fn args() -> Vec<String> {
    let mut args: Vec<String> = std::env::args().collect();
    let called_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some((_, sub)) = ALIASES.iter().find(|(alias, _)| *alias == called_as) {
        // help and errors then say `kaze <sub>`, the command this is
        args[0] = "kaze".to_string();
        args.insert(1, sub.to_string());
    }
    args
}

fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches_from(args());
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The kubelet's --config file must not override the flags given.
    if let (Command::Kubelet(config), Some(("kubelet", sub))) =
        (&mut cli.command, matches.subcommand())
    {
        config.given = kubelet::node::Config::given_in(sub);
    }
    if let Command::Kubeconfig(args) = cli.command {
        return kubeconfig::run(args);
    }
    component::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(async {
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
            Command::Proxy(config) => proxy::run(config, shutdown).await.context("proxy"),
            Command::Server(args) => server::run(args, shutdown).await,
            Command::Agent(args) => agent::run(args, shutdown).await,
            Command::Images(args) => images::run(args).await,
            Command::Kubeconfig(_) => unreachable!("handled before the runtime starts"),
        }
    });
    // A blocking task still running (a stuck read, a child's pipe) must not keep the
    // process alive once every component has stopped.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}
