//! `kaze agent` joins a machine to a `kaze server` with the token the server printed: it
//! checks the server's CA against the token before sending it, registers its node, and runs
//! the pods scheduled to it. A wrong secret or a wrong CA hash is refused with a message
//! saying so.
//!
//! Each test that runs a node (kubelet, pod routes, proxy) runs it, and every command it
//! drives it with, in a network namespace of its own (`testkit::Netns`): the node's
//! iptables chains, routes and sysctls never touch the host's namespace or a parallel test's.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use testkit::eventually;

use testkit::{free_port, kubectl, ChildGuard};

#[allow(dead_code, unreachable_pub)]
#[path = "../../xtask/src/images.rs"]
mod xtask_images;

fn kubectl_run(kc: &Path, args: &[&str]) -> Output {
    Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(kc)
        .args(args)
        .output()
        .expect("kubectl")
}

fn spawn(args: &[String], log: &Path) -> ChildGuard {
    let log = std::fs::File::create(log).expect("log file");
    ChildGuard::new(
        Command::new(env!("CARGO_BIN_EXE_kaze"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting kaze"),
    )
}

#[test]
fn agent_joins_with_the_token_and_runs_pods() {
    // the node's network state (proxy chains, pod masquerade, routes) stays in here
    let _netns = testkit::Netns::enter("kzt-agent");
    let dir = tempfile::Builder::new()
        .prefix("kaze-agent-")
        .tempdir()
        .expect("temp dir");
    let server_dir = dir.path().join("server");
    let agent_dir = dir.path().join("agent");
    let port = free_port();
    let server_args: Vec<String> = [
        "server",
        "--disable-agent",
        "--bind-address",
        "127.0.0.1",
        "--secure-port",
        &port.to_string(),
        "--node-ip",
        "127.0.0.1",
        "--cluster-cidr",
        "10.246.0.0/16",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--data-dir".to_string(), server_dir.display().to_string()])
    .collect();
    std::fs::create_dir_all(&server_dir).expect("server dir");
    let mut server = spawn(&server_args, &dir.path().join("server.log"));
    let kc = server_dir.join("kubeconfig.yaml");
    let token = eventually("the join token", Duration::from_secs(60), || {
        if let Some(c) = server.0.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                panic!(
                    "kaze server exited: {st}\n{}",
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
                );
            }
        }
        std::fs::read_to_string(server_dir.join("server/token"))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    });
    let url = format!("https://127.0.0.1:{port}");

    // A wrong secret is refused by the server; a wrong CA hash is refused by the agent.
    let (hash, _) = token.split_once("::").expect("token shape");
    for (bad, why) in [
        (format!("{hash}::not-the-secret"), "refused the join token"),
        (
            format!("K10{}::x", "0".repeat(64)),
            "does not match the token",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kaze"))
            .args(["agent", "--server", &url, "--token", &bad, "--data-dir"])
            .arg(dir.path().join("bad"))
            .output()
            .expect("kaze agent");
        assert!(!out.status.success(), "agent with a bad token must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "want {why:?} in: {stderr}");
    }

    // The real join.
    let containerd = testkit::Containerd::start();
    let images = agent_dir.join("agent/images");
    std::fs::create_dir_all(&images).expect("images dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .to_path_buf();
    for tar in xtask_images::build_images(&root).expect("images") {
        std::fs::copy(&tar, images.join(tar.file_name().expect("name"))).expect("copy image");
    }
    let pid = std::process::id();
    let node = format!("agent-{pid}");
    let _leftovers = testkit::NodeGuard {
        node: node.clone(),
        pod_ip_prefix: "10.246.".into(),
    };
    let bridge = format!("kzg{}", pid % 100_000);
    let _bridge = testkit::LinkGuard(bridge.clone());
    let agent_args: Vec<String> = vec![
        "agent".into(),
        "--server".into(),
        url.clone(),
        "--token".into(),
        token.clone(),
        "--data-dir".into(),
        agent_dir.display().to_string(),
        "--node-name".into(),
        node.clone(),
        "--node-ip".into(),
        "127.0.0.1".into(),
        "--container-runtime-endpoint".into(),
        containerd.socket().display().to_string(),
        // neither disk-pressure eviction nor image GC on a nearly full CI disk
        "--eviction-hard".into(),
        "memory.available<100Mi".into(),
        "--kubelet-arg".into(),
        "image-gc-high-threshold=100".into(),
        "--cni-bridge".into(),
        bridge.clone(),
        "--kubelet-port".into(),
        free_port().to_string(),
        "--proxy-metrics-port".into(),
        free_port().to_string(),
        // The server test programs the host's nat table; two proxies there would fight.
        "--disable-kube-proxy".into(),
    ];
    let mut agent = spawn(&agent_args, &dir.path().join("agent.log"));
    eventually(
        "the agent's node Ready with a pod CIDR",
        Duration::from_secs(60),
        || {
            let out = kubectl_run(
                &kc,
                &[
                    "get",
                    "node",
                    &node,
                    "-o",
                    "jsonpath={.spec.podCIDR} {.status.conditions[?(@.type==\"Ready\")].status}",
                ],
            );
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            (s == "10.246.0.0/24 True").then_some(s)
        },
    );
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: joined}}\nspec:\n  terminationGracePeriodSeconds: 1\n  nodeSelector: {{kubernetes.io/hostname: {node}}}\n  containers: [{{name: c, image: kaze/busybox:1, command: [sh, -c, 'echo from-agent; sleep 3600']}}]\n"
    );
    let mut apply = Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("apply");
    std::io::Write::write_all(&mut apply.stdin.take().expect("stdin"), pod.as_bytes())
        .expect("write");
    assert!(apply.wait().expect("apply").success());
    eventually(
        "the pod Running on the agent",
        Duration::from_secs(60),
        || {
            let out = kubectl_run(
                &kc,
                &[
                    "get",
                    "pod",
                    "joined",
                    "-o",
                    "jsonpath={.status.phase} {.spec.nodeName}",
                ],
            );
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            (s == format!("Running {node}")).then_some(s)
        },
    );
    let logs = eventually(
        "kubectl logs through the agent's kubelet",
        Duration::from_secs(20),
        || {
            let out = kubectl_run(&kc, &["logs", "joined"]);
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.contains("from-agent").then_some(s)
        },
    );
    assert_eq!(logs, "from-agent\n");

    // The agent runs as its own node, with a certificate the server signed for it
    let node_kc = agent_dir.join("agent/kubeconfig.yaml");
    let whoami = |kc: &Path| {
        let out = kubectl_run(
            kc,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        whoami(&node_kc),
        format!(r#"system:node:{node} ["system:nodes","system:authenticated"]"#)
    );
    // its pod routes (and Service proxy) run as upstream's kube-proxy, which may list every
    // Node; the node itself reads only its own (AuthorizeNodeWithSelectors)
    let proxy_kc = agent_dir.join("agent/kube-proxy-kubeconfig.yaml");
    assert_eq!(
        whoami(&proxy_kc),
        r#"system:kube-proxy ["system:authenticated"]"#
    );
    let out = kubectl_run(&proxy_kc, &["get", "nodes", "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("node/{node}"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl_run(&node_kc, &["get", "nodes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!(
                "node '{node}' cannot read all nodes, only its own Node object"
            )),
        "{stderr}"
    );
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    assert!(
        !log.contains("watching nodes for pod routes"),
        "the pod routes could not watch the Nodes:\n{log}"
    );
    use std::os::unix::fs::PermissionsExt;
    for f in [
        "client-kubelet.key",
        "kubeconfig.yaml",
        "bootstrap-kubeconfig.yaml",
        "client-kube-proxy.key",
        "kube-proxy-kubeconfig.yaml",
    ] {
        let mode = std::fs::metadata(agent_dir.join("agent").join(f))
            .expect(f)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // two requests, both made with the join token and auto-approved: the node's and the
    // kube-proxy's
    let csrs = kubectl_run(
        &kc,
        &[
            "get",
            "csr",
            "-o",
            "jsonpath={range .items[*]}{.spec.signerName} {.spec.username} {.status.conditions[0].reason}{\"\\n\"}{end}",
        ],
    );
    let csrs = String::from_utf8_lossy(&csrs.stdout).into_owned();
    let mut lines: Vec<&str> = csrs.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines.len(), 2, "{csrs}");
    for (line, signer) in lines.iter().zip([
        "kubernetes.io/kube-apiserver-client ",
        "kubernetes.io/kube-apiserver-client-kubelet ",
    ]) {
        assert!(
            line.starts_with(&format!("{signer}system:bootstrap:"))
                && line.ends_with(" AutoApproved"),
            "{csrs}"
        );
    }
    // ... which reads no Secret that no pod of its node uses
    let out = kubectl_run(
        &kc,
        &[
            "create",
            "secret",
            "generic",
            "not-for-agents",
            "--from-literal=k=v",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl_run(&node_kc, &["get", "secret", "not-for-agents"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "User \"system:node:{node}\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node '{node}' and this object"
        )),
        "{stderr}"
    );
    // and the join token alone only asks for certificates
    let out = kubectl_run(
        &agent_dir.join("agent/bootstrap-kubeconfig.yaml"),
        &["get", "pods"],
    );
    assert!(!out.status.success());
    kubectl_run(&kc, &["delete", "secret", "not-for-agents"]);

    let out = kubectl_run(&kc, &["delete", "pod", "joined"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(
        agent.terminate(Duration::from_secs(20)),
        "agent stops cleanly on SIGTERM"
    );
    // restarted, it keeps its certificates (no new request) and its node comes back
    let cert_before = std::fs::read(agent_dir.join("agent/client-kubelet.crt")).expect("cert");
    let proxy_cert_before =
        std::fs::read(agent_dir.join("agent/client-kube-proxy.crt")).expect("cert");
    let mut agent = spawn(&agent_args, &dir.path().join("agent-again.log"));
    eventually(
        "the restarted agent's kubelet heartbeat",
        Duration::from_secs(60),
        || {
            let log =
                std::fs::read_to_string(dir.path().join("agent-again.log")).unwrap_or_default();
            log.contains("using this node's client certificate")
                .then_some(())
        },
    );
    assert_eq!(
        std::fs::read(agent_dir.join("agent/client-kubelet.crt")).expect("cert"),
        cert_before
    );
    assert_eq!(
        std::fs::read(agent_dir.join("agent/client-kube-proxy.crt")).expect("cert"),
        proxy_cert_before
    );
    let count = kubectl_run(&kc, &["get", "csr", "-o", "name"]);
    assert_eq!(String::from_utf8_lossy(&count.stdout).lines().count(), 2);
    assert!(
        agent.terminate(Duration::from_secs(20)),
        "agent stops cleanly on SIGTERM"
    );
    assert!(
        server.terminate(Duration::from_secs(20)),
        "server stops cleanly on SIGTERM"
    );
    drop(containerd);
}

/// (serial, notAfter seconds) of the PEM certificate at `path`.
fn serial_and_expiry(path: &Path) -> (String, i64) {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let pem = std::fs::read(path).expect("certificate");
    let der = CertificateDer::from_pem_slice(&pem).expect("a PEM certificate");
    let (_, x) = x509_parser::parse_x509_certificate(&der).expect("X.509");
    (x.raw_serial_as_string(), x.validity().not_after.timestamp())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("now")
        .as_secs() as i64
}

/// With `--cluster-signing-duration 120s` on the server, the agent's client certificate is
/// renewed while it runs (a new serial on disk, through a CSR it makes as its own node) and
/// its kubelet keeps renewing the node's Lease after the first certificate has expired: its
/// API connections use the new certificate without a restart. The kube-proxy certificate of
/// its pod routes is renewed too (with the join token).
#[test]
fn agent_rotates_its_client_certificate_while_running() {
    // the node's network state (proxy chains, pod masquerade, routes) stays in here
    let _netns = testkit::Netns::enter("kzt-rot");
    let dir = tempfile::Builder::new()
        .prefix("kaze-rotate-")
        .tempdir()
        .expect("temp dir");
    let server_dir = dir.path().join("server");
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&server_dir).expect("server dir");
    let port = free_port();
    let server_args: Vec<String> = [
        "server",
        "--disable-agent",
        "--bind-address",
        "127.0.0.1",
        "--secure-port",
        &port.to_string(),
        "--node-ip",
        "127.0.0.1",
        "--cluster-cidr",
        "10.248.0.0/16",
        "--cluster-signing-duration",
        "120s",
        "--data-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([server_dir.display().to_string()])
    .collect();
    let server_log = dir.path().join("server.log");
    let mut server = spawn(&server_args, &server_log);
    let kc = server_dir.join("kubeconfig.yaml");
    let token = eventually("the join token", Duration::from_secs(60), || {
        if let Some(Ok(Some(st))) = server.0.as_mut().map(|c| c.try_wait()) {
            panic!(
                "kaze server exited: {st}\n{}",
                std::fs::read_to_string(&server_log).unwrap_or_default()
            );
        }
        std::fs::read_to_string(server_dir.join("server/token"))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    });
    let containerd = testkit::Containerd::start();
    let pid = std::process::id();
    let node = format!("rotate-{pid}");
    let _leftovers = testkit::NodeGuard {
        node: node.clone(),
        pod_ip_prefix: "10.248.".into(),
    };
    let bridge = format!("kzr{}", pid % 100_000);
    let _bridge = testkit::LinkGuard(bridge.clone());
    let agent_args: Vec<String> = [
        "agent",
        "--server",
        &format!("https://127.0.0.1:{port}"),
        "--token",
        &token,
        "--data-dir",
        &agent_dir.display().to_string(),
        "--node-name",
        &node,
        "--node-ip",
        "127.0.0.1",
        "--container-runtime-endpoint",
        &containerd.socket().display().to_string(),
        "--eviction-hard",
        "memory.available<100Mi",
        "--kubelet-arg",
        "image-gc-high-threshold=100",
        "--cni-bridge",
        &bridge,
        "--kubelet-port",
        &free_port().to_string(),
        "--proxy-metrics-port",
        &free_port().to_string(),
        "--disable-kube-proxy",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent_log = dir.path().join("agent.log");
    let mut agent = spawn(&agent_args, &agent_log);
    let cert = agent_dir.join("agent/client-kubelet.crt");
    let proxy_cert = agent_dir.join("agent/client-kube-proxy.crt");
    let ready = || {
        let out = kubectl_run(
            &kc,
            &[
                "get",
                "node",
                &node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        );
        String::from_utf8_lossy(&out.stdout) == "True"
    };
    eventually("the agent's node Ready", Duration::from_secs(60), || {
        ready().then_some(())
    });
    let (first_serial, first_expiry) = serial_and_expiry(&cert);
    let (first_proxy_serial, first_proxy_expiry) = serial_and_expiry(&proxy_cert);
    assert!(
        first_expiry - now_secs() <= 120,
        "the server's --cluster-signing-duration 120s bounds the certificate"
    );

    // renewed before it expires, by the node itself
    let (_, expiry) = eventually(
        "a new client certificate on disk",
        Duration::from_secs(130),
        || {
            if let Some(Ok(Some(st))) = agent.0.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "kaze agent exited: {st}\n{}",
                    std::fs::read_to_string(&agent_log).unwrap_or_default()
                );
            }
            let now = serial_and_expiry(&cert);
            (now.0 != first_serial).then_some(now)
        },
    );
    assert!(
        now_secs() < first_expiry,
        "renewed before the old one expired"
    );
    assert!(
        expiry >= first_expiry,
        "the new certificate outlives the old one"
    );
    eventually(
        "a new kube-proxy client certificate on disk",
        Duration::from_secs(130),
        || (serial_and_expiry(&proxy_cert).0 != first_proxy_serial).then_some(()),
    );
    assert!(
        now_secs() < first_proxy_expiry,
        "the kube-proxy certificate was renewed before the old one expired"
    );
    let users = kubectl_run(
        &kc,
        &["get", "csr", "-o", "jsonpath={.items[*].spec.username}"],
    );
    let users = String::from_utf8_lossy(&users.stdout).into_owned();
    assert!(
        users.contains(&format!("system:node:{node}")),
        "a renewal is requested with the node's own certificate: {users}"
    );

    // the kubelet keeps renewing its Lease after the first certificate expired
    let lease_renewed = || {
        let out = kubectl_run(
            &kc,
            &[
                "get",
                "lease",
                "-n",
                "kube-node-lease",
                &node,
                "-o",
                "jsonpath={.spec.renewTime}",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let at: Option<i64> = Command::new("date")
            .args(["-d", &text, "+%s"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok());
        at
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let renewed = loop {
        let at = lease_renewed();
        if let Some(t) = at.filter(|t| *t > first_expiry + 10) {
            break t;
        }
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
            let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
            panic!(
                "the node Lease was not renewed after the first certificate expired at {first_expiry} (last renewal {at:?}); the agent's warnings:\n{}",
                warnings.join("\n")
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(ready(), "the node stays Ready");
    let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
    assert!(
        log.contains("rotated a client certificate of this node")
            && log.contains("client certificate changed; new connections use it"),
        "{log}"
    );
    // the node's kubeconfig names the files, so kubectl with it is the node too
    let out = kubectl_run(
        &agent_dir.join("agent/kubeconfig.yaml"),
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("system:node:{node}"),
        "lease renewed at {renewed}; {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        agent.terminate(Duration::from_secs(20)),
        "agent stops cleanly on SIGTERM"
    );
    assert!(
        server.terminate(Duration::from_secs(20)),
        "server stops cleanly on SIGTERM"
    );
    drop(containerd);
}
