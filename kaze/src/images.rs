//! `kaze images import FILE...`: imports image tarballs (OCI image layouts, as `cargo xtask
//! images` writes them, or `docker save` archives) into the containerd namespace this
//! machine's kubelet runs pods in — its node name — as `k3s ctr images import` does. With
//! no registry this is how a new image reaches a running node. Images imported this way
//! are not pinned, so image garbage collection may remove them once unused; tarballs in
//! `<data-dir>/agent/images/` are imported (and pinned) at every start instead.

use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    command: ImagesCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ImagesCommand {
    /// Import image tarballs into the node's containerd namespace and print the names
    /// imported.
    Import(ImportArgs),
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    /// The containerd socket (default: the one `kaze server|agent` start under
    /// `--containerd-run-dir`).
    #[arg(
        long = "container-runtime-endpoint",
        default_value = "/run/kaze/containerd/containerd.sock"
    )]
    endpoint: PathBuf,
    /// The node whose pods use the images; its name is the containerd namespace (default:
    /// the host name, as `kaze server|agent` name the node).
    #[arg(long = "node-name")]
    node_name: Option<String>,
    /// Image tarballs.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub async fn run(args: ImagesArgs) -> anyhow::Result<()> {
    let ImagesCommand::Import(args) = args.command;
    let namespace = args
        .node_name
        .clone()
        .unwrap_or_else(|| kubelet::node::info::hostname().to_lowercase());
    if !args.endpoint.exists() {
        anyhow::bail!(
            "no containerd socket at {} (is `kaze server` or `kaze agent` running? \
             --container-runtime-endpoint names another)",
            args.endpoint.display()
        );
    }
    for file in &args.files {
        if !file.is_file() {
            anyhow::bail!("{}: no such image tarball", file.display());
        }
        let names = kubelet::images::import_file(&args.endpoint, &namespace, file)
            .await
            .with_context(|| {
                format!(
                    "importing {} into containerd namespace {namespace}",
                    file.display()
                )
            })?;
        for name in names {
            println!("{name}");
        }
    }
    Ok(())
}
