//! `kaze` as hyperkube: `kaze --help` lists every component, and the binary invoked through
//! a symlink named after an upstream component runs that component (busybox-style).

use std::process::Command;

const KAZE: &str = env!("CARGO_BIN_EXE_kaze");

fn help(program: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .arg("--help")
        .output()
        .expect("running kaze");
    assert!(
        out.status.success(),
        "{} {args:?} --help failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_lists_every_component() {
    let top = help(std::path::Path::new(KAZE), &[]);
    for sub in [
        "apiserver",
        "scheduler",
        "controller-manager",
        "dns",
        "kubelet",
        "proxy",
        "server",
        "agent",
    ] {
        assert!(
            top.lines().any(|l| l.trim_start().starts_with(sub)),
            "kaze --help does not list {sub}:\n{top}"
        );
    }
}

#[test]
fn symlinks_named_after_upstream_components_run_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    // a flag only that component has, so the right one answered
    for (alias, sub, flag) in [
        ("kube-apiserver", "apiserver", "--etcd-servers"),
        ("kube-scheduler", "scheduler", "--policy-config-file"),
        (
            "kube-controller-manager",
            "controller-manager",
            "--node-monitor-grace-period",
        ),
        ("kube-dns", "dns", "--cluster-domain"),
        ("kubelet", "kubelet", "--container-runtime-endpoint"),
        ("kube-proxy", "proxy", "--pod-bridge"),
    ] {
        let link = dir.path().join(alias);
        std::os::unix::fs::symlink(KAZE, &link).expect("symlink");
        let via_link = help(&link, &[]);
        assert!(
            via_link.contains(flag),
            "{alias} --help lacks {flag}:\n{via_link}"
        );
        assert_eq!(
            via_link,
            help(std::path::Path::new(KAZE), &[sub]),
            "{alias} must be `kaze {sub}`"
        );
    }
}
