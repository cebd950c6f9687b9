//! `cargo xtask up`: from a fresh clone to a running single-node cluster in one command.
//! The cluster is `kaze server`: control plane on the embedded store, this machine's
//! kubelet on a containerd kaze starts, and cluster DNS; images come from the air-gap dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{cargo, kubectl_path, run_cmd, step};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the cluster keeps its state, certificates and kubeconfig.
    #[arg(long, default_value = "/var/lib/kaze")]
    data_dir: PathBuf,
    /// Extra arguments passed to `kaze server` (after `--`).
    #[arg(last = true)]
    server_args: Vec<String>,
}

pub fn run(root: &Path, args: Args) -> Result<()> {
    crate::setup::run(root).context("up: setup")?;
    step("build kaze");
    run_cmd(cargo(root).args(["build", "-p", "kaze"])).context("up: building kaze")?;
    step("images (air gap: no registry is needed)");
    let images = crate::images::build_images(root).context("up: building images")?;
    let air_gap = args.data_dir.join("agent").join("images");
    std::fs::create_dir_all(&air_gap)
        .with_context(|| format!("up: creating {}", air_gap.display()))?;
    for tar in &images {
        let dest = air_gap.join(tar.file_name().unwrap_or_default());
        std::fs::copy(tar, &dest).with_context(|| format!("up: copying {}", dest.display()))?;
    }
    let kaze = root.join("target/debug/kaze");
    step(&format!(
        "start kaze server --data-dir {}",
        args.data_dir.display()
    ));
    let mut server = Command::new(&kaze)
        .arg("server")
        .arg("--data-dir")
        .arg(&args.data_dir)
        .args(&args.server_args)
        .spawn()
        .with_context(|| format!("starting {}", kaze.display()))?;

    let kubeconfig = args.data_dir.join("kubeconfig.yaml");
    let kubectl = kubectl_path(root);
    let deadline = Instant::now() + Duration::from_secs(60);
    step("wait for the apiserver to be ready");
    loop {
        if let Some(status) = server.try_wait()? {
            bail!("kaze server exited during start-up with {status}; its log is above");
        }
        let ready = kubeconfig.exists()
            && Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["get", "--raw", "/readyz"])
                .output()
                .is_ok_and(|o| o.status.success());
        if ready {
            break;
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            bail!("the apiserver was not ready within 60 s");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    step("wait for this node to be Ready");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = server.try_wait()? {
            bail!("kaze server exited during start-up with {status}; its log is above");
        }
        let out = Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "get",
                "nodes",
                "-o",
                "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .output();
        if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("True")) {
            break;
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            bail!("no node became Ready within 120 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    step("wait for cluster DNS to answer");
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        if let Some(status) = server.try_wait()? {
            bail!("kaze server exited during start-up with {status}; its log is above");
        }
        if let Some(a) = dns_answer(&kubectl, &kubeconfig) {
            break a;
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            bail!("cluster DNS did not resolve kubernetes.default.svc.cluster.local within 60 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("kubernetes.default.svc.cluster.local resolves to {answer}");
    let venv_bin = kubectl.parent().map(Path::to_path_buf).unwrap_or_default();
    println!();
    println!("kaze is up. In another shell:");
    println!("    export KUBECONFIG={}", kubeconfig.display());
    println!(
        "    export PATH={}:$PATH   # the upstream kubectl 1.37 setup installed",
        venv_bin.display()
    );
    println!("Try:");
    println!("    kubectl get nodes -o wide");
    println!("    kubectl create deployment web --image=kaze/echo:1 --replicas=2");
    println!("    kubectl get pods -o wide -w");
    println!("Ctrl-C stops the cluster; `cargo xtask up` again picks it up where it was.");
    let status = server.wait()?;
    if !status.success() {
        bail!("kaze server exited with {status}");
    }
    Ok(())
}

/// Ask the cluster DNS server (found through the kube-dns EndpointSlice, i.e. where the
/// Service sends queries) for the `kubernetes` Service with `kdig` (setup installs it); the
/// answer once it equals that Service's ClusterIP.
fn dns_answer(kubectl: &Path, kubeconfig: &Path) -> Option<String> {
    let get = |args: &[&str]| -> Option<String> {
        let out = Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let endpoint = get(&[
        "get",
        "endpointslices",
        "-n",
        "kube-system",
        "-l",
        "kubernetes.io/service-name=kube-dns",
        "-o",
        "jsonpath={.items[0].endpoints[0].addresses[0]} {.items[0].ports[?(@.protocol==\"UDP\")].port}",
    ])?;
    let (addr, port) = endpoint.split_once(' ')?;
    let cluster_ip = get(&[
        "get",
        "service",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    let out = Command::new("kdig")
        .arg(format!("@{addr}"))
        .args(["-p", port, "+short", "+time=1", "+retry=0"])
        .arg("kubernetes.default.svc.cluster.local")
        .output()
        .ok()?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!cluster_ip.is_empty() && answer == cluster_ip).then_some(answer)
}
