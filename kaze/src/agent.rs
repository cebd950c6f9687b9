//! `kaze agent --server URL --token TOKEN`: join this machine to a cluster as a node. The
//! token (printed by `kaze server`, kept in `<data-dir>/server/token` there) pins the
//! cluster CA; the agent checks the server against it before sending the token's secret,
//! which is only a bootstrap credential: with it the agent gets this node's own client
//! certificate (`system:node:<name>` in `system:nodes`, `crate::bootstrap`), and runs this
//! machine's containerd and kubelet with a kubeconfig holding that certificate,
//! `<data-dir>/agent/kubeconfig.yaml` (the join token's is
//! `<data-dir>/agent/bootstrap-kubeconfig.yaml`). The Node authorizer and NodeRestriction
//! then limit the node to its own objects. Its Service proxy and pod routes, which read
//! every Node, run as upstream's kube-proxy, `system:kube-proxy`, with a certificate got
//! the same way (`<data-dir>/agent/kube-proxy-kubeconfig.yaml`). The CA it checked goes to
//! `<data-dir>/agent/ca.crt`, the kubelet's `--client-ca-file` (the apiserver's client
//! certificate comes from it). With `--rotate-certificates` (default) the certificates are
//! renewed while the agent runs (`crate::bootstrap::rotate`).

use std::path::PathBuf;

use anyhow::Context;

use crate::node::{self, NodeArgs};

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The server's apiserver URL (`https://host:6443`).
    #[arg(long)]
    server: String,
    /// The join token `kaze server` printed.
    #[arg(long, env = "KAZE_TOKEN")]
    token: String,
    /// Where this node keeps its state; air-gap images go in `<data-dir>/agent/images`.
    #[arg(long = "data-dir", default_value = "/var/lib/kaze")]
    data_dir: PathBuf,
    /// Renew this node's client certificate through a new CertificateSigningRequest once
    /// 70–90% of its lifetime has passed, while running (upstream kubelet's flag; the
    /// lifetime is the server's --cluster-signing-duration).
    #[arg(long = "rotate-certificates", default_value_t = true, action = clap::ArgAction::Set)]
    rotate_certificates: bool,
    #[command(flatten)]
    node: NodeArgs,
}

pub async fn run(args: AgentArgs, shutdown: component::CancellationToken) -> anyhow::Result<()> {
    let (ca_hash, secret) = crate::join::parse_token(&args.token)?;
    let ca_pem = crate::join::fetch_verified_ca(&args.server, &ca_hash)
        .await
        .with_context(|| format!("checking the server {}", args.server))?;
    let dir = args.data_dir.join("agent");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let server = args.server.trim_end_matches('/');
    let bootstrap = dir.join("bootstrap-kubeconfig.yaml");
    std::fs::write(
        &bootstrap,
        crate::join::kubeconfig(server, &ca_pem, &secret),
    )
    .with_context(|| format!("writing {}", bootstrap.display()))?;
    std::fs::set_permissions(
        &bootstrap,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .with_context(|| format!("restricting {}", bootstrap.display()))?;
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, &ca_pem).with_context(|| format!("writing {}", ca_file.display()))?;
    let node_name = args
        .node
        .node_name
        .clone()
        .unwrap_or_else(|| kubelet::node::info::hostname().to_lowercase());
    use crate::bootstrap::{Identity, Paths};
    let paths = Paths::new(&dir);
    let node = Identity::Node(node_name.clone());
    let kubeconfig = crate::bootstrap::kubeconfig(&paths, server, &ca_pem, &node, &bootstrap)
        .await
        .context("getting this node's client certificate")?;
    let proxy_paths = Paths::kube_proxy(&dir);
    let proxy_kubeconfig = if args.node.runs_node_proxier() {
        let kc = crate::bootstrap::kubeconfig(
            &proxy_paths,
            server,
            &ca_pem,
            &Identity::KubeProxy,
            &bootstrap,
        )
        .await
        .context("getting the kube-proxy client certificate")?;
        Some(kc)
    } else {
        None
    };
    tracing::info!(server = %args.server, "joined; starting this node");
    let mut components = node::Components::default();
    if args.rotate_certificates {
        let b = bootstrap.clone();
        components.spawn("client certificate rotation", &shutdown, |token| {
            crate::bootstrap::rotate(paths, node, b, token)
        });
        if proxy_kubeconfig.is_some() {
            components.spawn("kube-proxy certificate rotation", &shutdown, |token| {
                crate::bootstrap::rotate(proxy_paths, Identity::KubeProxy, bootstrap, token)
            });
        }
    }
    let own = node::start(
        &args.node,
        &args.data_dir,
        node::Kubeconfigs {
            node: &kubeconfig,
            proxy: proxy_kubeconfig.as_deref(),
        },
        &ca_file,
        Vec::new(),
        &mut components,
        &shutdown,
    )
    .await?;
    let result = node::supervise(&mut components, &shutdown)
        .await
        .context("kaze agent");
    drop(own);
    result
}
