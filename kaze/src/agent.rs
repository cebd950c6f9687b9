//! `kaze agent --server URL --token TOKEN`: join this machine to a cluster as a node. The
//! token (printed by `kaze server`, kept in `<data-dir>/server/token` there) pins the
//! cluster CA; the agent checks the server against it before sending the token, then runs
//! this machine's containerd and kubelet with a kubeconfig it writes to
//! `<data-dir>/agent/kubeconfig.yaml`; the CA it checked goes to `<data-dir>/agent/ca.crt`,
//! the kubelet's `--client-ca-file` (the apiserver's client certificate comes from it).

use std::path::PathBuf;

use anyhow::{bail, Context};

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
    let kubeconfig = dir.join("kubeconfig.yaml");
    std::fs::write(
        &kubeconfig,
        crate::join::kubeconfig(args.server.trim_end_matches('/'), &ca_pem, &secret),
    )
    .with_context(|| format!("writing {}", kubeconfig.display()))?;
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, &ca_pem).with_context(|| format!("writing {}", ca_file.display()))?;
    // Prove the token before starting anything.
    let client = component::client(Some(&kubeconfig)).await?;
    let ns: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
    match ns.get("default").await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 401 => {
            bail!("the server refused the join token (401 Unauthorized): copy it again from <server data-dir>/server/token")
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context("talking to the server with the join token"))
        }
    }
    tracing::info!(server = %args.server, "joined; starting this node");
    let mut components = node::Components::default();
    let own = node::start(
        &args.node,
        &args.data_dir,
        &kubeconfig,
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
