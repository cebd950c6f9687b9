//! `kaze server` as a user meets it: start the binary, drive it with the real kubectl 1.37,
//! stop it with SIGTERM, start it again on the same data dir and find the cluster as it was.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::{free_port, kubectl, ChildGuard};

fn start_server(data_dir: &Path, port: u16, run: u32, extra: &[String]) -> ChildGuard {
    let log = std::fs::File::create(data_dir.join(format!("server-{run}.log")))
        .expect("creating the server log");
    let child = Command::new(env!("CARGO_BIN_EXE_kaze"))
        .args([
            "server",
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &port.to_string(),
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("starting kaze server");
    ChildGuard::new(child)
}

fn kubectl_run(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(data_dir.join("kubeconfig.yaml"))
        .args(args)
        .output()
        .expect("running kubectl")
}

fn kubectl_ok(data_dir: &Path, args: &[&str]) -> String {
    let out = kubectl_run(data_dir, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_ready(data_dir: &Path, server: &mut ChildGuard) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(child) = server.0.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("kaze server exited during start-up with {status}");
            }
        }
        if data_dir.join("kubeconfig.yaml").exists()
            && kubectl_run(data_dir, &["get", "--raw", "/readyz"])
                .status
                .success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kaze server not ready within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn server_on_embedded_store_serves_kubectl_and_keeps_state_across_restart() {
    serves_kubectl_and_keeps_state(&[]);
}

#[test]
fn server_on_etcd_serves_kubectl_and_keeps_state_across_restart() {
    let etcd = testkit::Etcd::start();
    serves_kubectl_and_keeps_state(&["--etcd-servers".into(), etcd.url()]);
    // The objects really are in etcd, under upstream's key layout.
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.url()))
        .args([
            "get",
            "--prefix",
            "--keys-only",
            "/registry/configmaps/default/",
        ])
        .output()
        .expect("etcdctl");
    let keys = String::from_utf8_lossy(&out.stdout);
    assert!(
        keys.contains("/registry/configmaps/default/hello"),
        "keys in etcd: {keys}"
    );
}

#[test]
fn malformed_storage_flag_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_kaze"))
        .args([
            "server",
            "--secure-port",
            "0",
            "--etcd-servers",
            "http://127.0.0.1:1",
        ])
        .args(["--etcd-servers-overrides", "events-without-group"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("running kaze");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("events-without-group"),
        "the message names the bad value: {stderr}"
    );
}

fn serves_kubectl_and_keeps_state(extra: &[String]) {
    let dir = tempfile::Builder::new()
        .prefix("kaze-server-")
        .tempdir()
        .expect("temp dir");
    let data = dir.path();
    let port = free_port();

    let mut server = start_server(data, port, 1, extra);
    wait_ready(data, &mut server);

    let namespaces = kubectl_ok(data, &["get", "namespaces", "-o", "name"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            namespaces.contains(&format!("namespace/{ns}")),
            "missing {ns}: {namespaces}"
        );
    }
    kubectl_ok(
        data,
        &["create", "configmap", "hello", "--from-literal=greeting=hi"],
    );

    // Anonymous requests are refused.
    let anon = Command::new(kubectl())
        .args([
            "--server",
            &format!("https://127.0.0.1:{port}"),
            "--insecure-skip-tls-verify",
            "get",
            "configmaps",
        ])
        .env_remove("KUBECONFIG")
        .output()
        .expect("kubectl");
    assert!(!anon.status.success(), "anonymous request must fail");

    assert!(
        server.terminate(Duration::from_secs(15)),
        "SIGTERM must stop kaze server cleanly"
    );

    let mut server = start_server(data, port, 2, extra);
    wait_ready(data, &mut server);
    let greeting = kubectl_ok(
        data,
        &[
            "get",
            "configmap",
            "hello",
            "-o",
            "jsonpath={.data.greeting}",
        ],
    );
    assert_eq!(greeting, "hi", "state survives a restart");
    assert!(server.terminate(Duration::from_secs(15)));
}
