//! `kaze kubeconfig --user NAME [--group G]... --out FILE`: a kubeconfig for a user that
//! authenticates with a client certificate signed by the cluster CA in the data dir (as
//! `kubeadm kubeconfig user --client-name NAME --org G`). The apiserver takes it as user
//! NAME in groups G (x509 authentication, its default `--client-ca-file` being that CA); RBAC
//! decides what the user may do. Run it where the server's data dir is (it reads the CA key).

use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct KubeconfigArgs {
    /// The user: the certificate's common name.
    #[arg(long)]
    user: String,
    /// A group: one of the certificate's organizations (repeat for more).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Where to write the kubeconfig (`-`: standard output).
    #[arg(long)]
    out: PathBuf,
    /// The server's data dir (holds `server/tls/ca.key`).
    #[arg(long = "data-dir", default_value = "/var/lib/kaze")]
    data_dir: PathBuf,
    /// The server URL to put in (default: the one in the data dir's admin kubeconfig).
    #[arg(long)]
    server: Option<String>,
    /// How many days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

pub fn run(args: KubeconfigArgs) -> anyhow::Result<()> {
    let text = apiserver::user_kubeconfig(
        &args.data_dir,
        &args.user,
        &args.groups,
        args.days,
        args.server.as_deref(),
    )
    .context("kaze kubeconfig")?;
    if args.out.as_os_str() == "-" {
        print!("{text}");
        return Ok(());
    }
    write_private(&args.out, &text)
        .with_context(|| format!("kaze kubeconfig: writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} for user {:?} in groups {:?} (valid {} days)",
        args.out.display(),
        args.user,
        args.groups,
        args.days
    );
    Ok(())
}

/// The file holds a private key: only its owner may read it.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: KubeconfigArgs,
    }

    #[tokio::test]
    async fn writes_a_private_kubeconfig_with_a_client_certificate() {
        let dir = tempfile::tempdir().expect("dir");
        let server = apiserver::start(apiserver::Config::for_tests(dir.path()))
            .await
            .expect("apiserver");
        let out = dir.path().join("jane.kubeconfig");
        let cli = Cli::parse_from([
            "kubeconfig",
            "--user",
            "jane",
            "--group",
            "devs",
            "--group",
            "ops",
            "--out",
            out.to_str().expect("utf-8"),
            "--data-dir",
            dir.path().to_str().expect("utf-8"),
        ]);
        assert_eq!(cli.args.groups, vec!["devs", "ops"]);
        run(cli.args).expect("kaze kubeconfig");
        let text = std::fs::read_to_string(&out).expect("written");
        assert!(text.contains("client-certificate-data: "), "{text}");
        assert!(text.contains("user: \"jane\""), "{text}");
        assert!(
            text.contains(&format!("server: {}", server.url())),
            "the admin kubeconfig's server: {text}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // a data dir without a cluster CA
        let empty = tempfile::tempdir().expect("dir");
        let cli = Cli::parse_from([
            "kubeconfig",
            "--user",
            "jane",
            "--out",
            "-",
            "--data-dir",
            empty.path().to_str().expect("utf-8"),
        ]);
        let err = run(cli.args).expect_err("no CA");
        assert!(
            format!("{err:#}").contains("reading the cluster CA"),
            "{err:#}"
        );
        server.shutdown().await;
    }
}
